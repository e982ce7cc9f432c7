"""Network definitions: the architectures soft weight-sharing is benchmarked on.

All networks are plain :class:`torch.nn.Sequential` stacks, so their parameter
names are ``"0.weight"``, ``"0.bias"``, ... and map one-to-one onto the weight
sample sites of the Pyro model.

``lenet_300_100``
    LeCun et al. (1998)'s 784-300-100-10 perceptron, 266,610 parameters.
``lenet5_caffe``
    The LeNet-5 of Caffe's MNIST example (``examples/mnist/lenet.prototxt``):
    conv 20@5x5, max-pool 2, conv 50@5x5, max-pool 2, dense 500, ReLU, dense
    10; 431,080 parameters on 28x28 inputs. As in Caffe there is no
    non-linearity after the convolutions. These are the two networks of
    Ullrich, Meeds & Welling (ICLR 2017), Table 1, and of Han et al. (2016).
``resnet``
    A CIFAR-style residual network (He et al. 2016, section 4.2) without batch
    normalisation: a SkipInit scalar gain on each residual branch
    (:class:`ResidualBlock`). Not a name of :func:`build_network` (runs flatten
    the inputs of the built-in names other than ``"lenet-5"``); name it
    ``"bayes_sws.zoo.nets:resnet"`` as your own network (depth 20, width 16).

Your own network: :func:`build_network` also takes ``"package.module:factory"``,
a callable returning an :class:`torch.nn.Module` (called with ``input_shape``
and ``num_outputs`` if it has parameters of those names). Naming one imports
its module, which runs that module's code (:func:`import_factory`).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "ACTIVATIONS",
    "NETWORKS",
    "NetworkFactoryError",
    "ResidualBlock",
    "build_network",
    "factory_name_problem",
    "import_factory",
    "is_factory_name",
    "lenet5_caffe",
    "lenet_300_100",
    "mlp",
    "resnet",
    "same_memory_format",
]

#: Activation names accepted by :func:`mlp`.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
}

#: Names accepted by :func:`build_network`.
NETWORKS: tuple[str, ...] = ("mlp", "lenet-300-100", "lenet-5")

_DEFAULT_MLP_HIDDEN: tuple[int, ...] = (100,)


def _check_positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


def _activation_factory(activation: str | Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    if isinstance(activation, str):
        key = activation.strip().lower().replace("-", "_")
        if key not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; accepted names are "
                f"{', '.join(repr(a) for a in ACTIVATIONS)}, or pass a callable returning "
                "an nn.Module"
            )
        return ACTIVATIONS[key]
    if callable(activation):
        return activation
    raise TypeError(
        f"activation must be a name or a callable returning an nn.Module, got {activation!r}"
    )


def mlp(sizes: Sequence[int], activation: str | Callable[[], nn.Module] = "relu") -> nn.Sequential:
    """A fully connected network: Linear layers with an activation between them.

    Parameters
    ----------
    sizes : sequence of int
        Layer widths from input to output, e.g. ``(64, 100, 10)``; at least two.
    activation : str or callable, default "relu"
        A name from :data:`ACTIVATIONS` or a zero-argument callable returning
        a module (e.g. ``nn.Tanh``). No activation follows the last layer, so
        the outputs are logits (classification) or means (regression).

    Returns
    -------
    torch.nn.Sequential
        ``Linear, act, Linear, act, ..., Linear``; the i-th Linear layer's
        parameters are named ``f"{2 * i}.weight"`` and ``f"{2 * i}.bias"``.

    Examples
    --------
    >>> net = mlp([784, 300, 100, 10])
    >>> sum(p.numel() for p in net.parameters())
    266610
    """
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
        raise TypeError(f"sizes must be a sequence of layer widths, got {sizes!r}")
    sizes = list(sizes)
    if len(sizes) < 2:
        raise ValueError(
            f"sizes must list at least an input and an output width, got {sizes!r}; "
            "e.g. mlp([64, 100, 10])"
        )
    for position, size in enumerate(sizes):
        _check_positive_int(size, f"sizes[{position}]")
    make_activation = _activation_factory(activation)
    layers: list[nn.Module] = []
    for position, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        if position > 0:
            layers.append(make_activation())
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers)


def lenet_300_100(input_dim: int = 784, num_classes: int = 10) -> nn.Sequential:
    """LeNet-300-100: ``input_dim``-300-100-``num_classes`` with ReLUs.

    266,610 parameters for MNIST (784 inputs, 10 classes).
    """
    _check_positive_int(input_dim, "input_dim")
    _check_positive_int(num_classes, "num_classes")
    return mlp([input_dim, 300, 100, num_classes], activation="relu")


def _pair(size: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        return _check_positive_int(size, what), size
    if isinstance(size, Sequence) and len(size) == 2:
        height = _check_positive_int(size[0], f"{what}[0]")
        return height, _check_positive_int(size[1], f"{what}[1]")
    raise ValueError(f"{what} must be an int or a (height, width) pair, got {size!r}")


def _conv_pool_size(size: int, padding: int) -> int:
    """Side length after a 5x5 convolution (stride 1) and a 2x2 max-pool."""
    return (size + 2 * padding - 5 + 1) // 2


def lenet5_caffe(
    in_channels: int = 1,
    num_classes: int = 10,
    input_size: int | Sequence[int] = 28,
    *,
    padding: int | None = None,
) -> nn.Sequential:
    """Caffe's LeNet-5: conv 20@5x5, pool 2, conv 50@5x5, pool 2, dense 500, ReLU, dense.

    Parameters
    ----------
    in_channels : int, default 1
        Input channels.
    num_classes : int, default 10
        Outputs (logits).
    input_size : int or (int, int), default 28
        Input height and width; the flattened size after the second pool is
        computed from it.
    padding : int, optional
        Zero padding of both convolutions. By default 0 (Caffe's network) for
        inputs of at least 16 pixels a side, and 2 ("same" convolutions) for
        smaller inputs such as the 8x8 digits, which would otherwise shrink to
        nothing.

    Returns
    -------
    torch.nn.Sequential
        ``Conv2d, MaxPool2d, Conv2d, MaxPool2d, Flatten, Linear, ReLU, Linear``;
        parameters are named ``0.*``, ``2.*``, ``5.*`` and ``7.*``.
        431,080 parameters for 28x28 grey images and 10 classes.

    Notes
    -----
    The convolutions' weights are stored channels-last
    (``memory_format=torch.channels_last``), so that the convolutions and pools run in
    oneDNN's channels-last kernels: on one CPU thread a training step (batch 128,
    28x28) takes about 0.6x the time it takes in the default layout (the 2x2 max-pool
    after the first convolution 0.2x). The values and names are the same in both
    layouts; ``load_state_dict`` keeps the layout. Results differ from the default
    layout's by float rounding.
    """
    _check_positive_int(in_channels, "in_channels")
    _check_positive_int(num_classes, "num_classes")
    height, width = _pair(input_size, "input_size")
    if padding is None:
        padding = 0 if min(height, width) >= 16 else 2
    elif isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a non-negative integer or None, got {padding!r}")
    out_height = _conv_pool_size(_conv_pool_size(height, padding), padding)
    out_width = _conv_pool_size(_conv_pool_size(width, padding), padding)
    if out_height < 1 or out_width < 1:
        raise ValueError(
            f"input_size {height}x{width} with padding={padding} is too small for LeNet-5's "
            "two 5x5 convolutions and 2x2 pools; use larger inputs or more padding"
        )
    net = nn.Sequential(
        nn.Conv2d(in_channels, 20, kernel_size=5, padding=padding),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, kernel_size=5, padding=padding),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(50 * out_height * out_width, 500),
        nn.ReLU(),
        nn.Linear(500, num_classes),
    )
    # (torch documents memory_format for Module.to; its type stubs lack the keyword)
    return net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def same_memory_format(value: Tensor, like: Tensor) -> Tensor:
    """``value`` in ``like``'s memory format: channels-last if ``like`` is stored so.

    Where a parameter is replaced (a smaller layer, a decoded file), the new one keeps
    the layout the network was built with, so that the network computes as before
    (oneDNN's convolutions round differently in the two layouts) and as fast.

    A size-1 dimension makes both layouts "contiguous" to ``is_contiguous``, yet oneDNN
    picks its kernels by the strides themselves (a one-channel kernel stored (25, 1, 5, 1)
    and (25, 25, 5, 1) rounds differently), so the layout is judged, and made, by the
    canonical channels-last strides.
    """
    if like.dim() != 4 or value.dim() != 4:
        return value
    if like.stride() != _channels_last_strides(like.shape):
        return value
    out = torch.empty(
        value.shape, dtype=value.dtype, device=value.device, memory_format=torch.channels_last
    )
    return out.copy_(value)


def _channels_last_strides(shape: torch.Size) -> tuple[int, ...]:
    """The strides of a channels-last (N, C, H, W) tensor of ``shape``."""
    _, c, h, w = shape
    return (c * h * w, 1, w * c, c)


class ResidualBlock(nn.Module):
    r"""A basic residual block without normalisation: ``relu(shortcut(x) + g * branch(x))``.

    ``branch`` is ``conv1`` (3x3, ``stride``), ReLU, ``conv2`` (3x3); ``g`` is
    the scalar :attr:`gain`, zero at initialisation (SkipInit, De & Smith 2020),
    so that every block starts as its shortcut and a deep network trains
    without normalisation. The shortcut is the identity, or, where the block
    changes the shape, He et al.'s parameter-free option A: every ``stride``-th
    pixel, its channels zero-padded to ``out_channels``.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels in and out (``out_channels >= in_channels``).
    stride : int, default 1
        Stride of the first convolution and of the shortcut's subsampling.

    Notes
    -----
    Why no batch normalisation: :class:`~bayes_sws.core.model.SWSModel` runs
    the network with its prior-carrying weights passed in (``functional_call``),
    and MCMC and ``Predictive`` run it many times per data batch, so the running
    statistics of ``BatchNorm`` would be updated by every one of those calls and
    the train/eval switch would change the function being sampled. The gain
    and the biases are 0- and 1-dimensional, so the default prior selection
    (tensors of two or more dimensions) leaves them free parameters: only the
    convolution kernels and the dense weights carry the mixture prior and are
    quantised, as in LeNet-5.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        _check_positive_int(in_channels, "in_channels")
        _check_positive_int(out_channels, "out_channels")
        _check_positive_int(stride, "stride")
        if out_channels < in_channels:
            raise ValueError(
                f"out_channels ({out_channels}) must be at least in_channels ({in_channels}): "
                "the shortcut zero-pads channels"
            )
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.gain = nn.Parameter(torch.zeros(()))

    def shortcut(self, x: Tensor) -> Tensor:
        """The identity, or every ``stride``-th pixel with zero channels appended."""
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_channels - self.in_channels
        return F.pad(x, (0, 0, 0, 0, 0, extra)) if extra else x

    def branch(self, x: Tensor) -> Tensor:
        """The residual branch ``conv2(relu(conv1(x)))``, before the gain."""
        return self.conv2(F.relu(self.conv1(x)))

    def forward(self, x: Tensor) -> Tensor:
        """``relu(shortcut(x) + gain * branch(x))``."""
        return F.relu(self.shortcut(x) + self.gain * self.branch(x))


def resnet(
    depth: int = 20, width: int = 16, in_channels: int = 1, num_classes: int = 10
) -> nn.Sequential:
    r"""A CIFAR-style residual network (He et al. 2016, section 4.2) for small images.

    A 3x3 convolution to ``width`` channels and a ReLU, then three stages of
    ``n = (depth - 2) / 6`` :class:`ResidualBlock`\ s with ``width``,
    ``2 * width`` and ``4 * width`` channels (the first block of stages two and
    three halves the resolution: 28x28 inputs are seen at 28, 14 and 7 pixels),
    a global average pool and a dense layer to the logits. ``depth`` counts the
    convolutions and the dense layer: ResNet-20 has 3 blocks per stage.

    Parameters
    ----------
    depth : int, default 20
        ``6 n + 2`` for ``n >= 1``: 8, 14, 20, 32, ...
    width : int, default 16
        Channels of the first stage.
    in_channels : int, default 1
        Input channels (1 for Fashion-MNIST).
    num_classes : int, default 10
        Outputs (logits).

    Returns
    -------
    torch.nn.Sequential
        ``Conv2d, ReLU, stage 1, stage 2, stage 3, AdaptiveAvgPool2d, Flatten,
        Linear``; each stage is an ``nn.Sequential`` of blocks, so parameters are
        named ``"0.weight"``, ``"2.0.conv1.weight"``, ``"2.0.gain"``, ...,
        ``"7.weight"``. Any input size works (the pool is global).

    Notes
    -----
    There is no batch normalisation (see :class:`ResidualBlock` for why); each
    block's scalar gain starts at zero, so the network starts as its stem,
    pool and head, and the blocks are switched on by training. The gains and
    the biases are free parameters under the default prior selection; the
    kernels and the dense weight carry the prior. ResNet-20 of width 16 has
    268,755 parameters for 1-channel inputs and 10 classes (ResNet-8: 74,765).

    Examples
    --------
    >>> net = resnet(depth=8, width=4)
    >>> net(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """
    for value, what in ((depth, "depth"), (width, "width")):
        _check_positive_int(value, what)
    _check_positive_int(in_channels, "in_channels")
    _check_positive_int(num_classes, "num_classes")
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6 n + 2 with n >= 1 (8, 14, 20, ...), got {depth}")
    blocks = (depth - 2) // 6
    stages: list[nn.Module] = []
    channels = width
    for stage in range(3):
        out = width * 2**stage
        stride = 1 if stage == 0 else 2
        stages.append(
            nn.Sequential(
                *(
                    ResidualBlock(channels if i == 0 else out, out, stride if i == 0 else 1)
                    for i in range(blocks)
                )
            )
        )
        channels = out
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.ReLU(),
        *stages,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, num_classes),
    )


def build_network(
    name: str,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    hidden: Sequence[int] | None = None,
    activation: str | Callable[[], nn.Module] = "relu",
) -> nn.Module:
    """Build a network by name, sized for the data.

    Parameters
    ----------
    name : str
        One of :data:`NETWORKS`: ``"mlp"``, ``"lenet-300-100"``, ``"lenet-5"``
        (``_`` and ``-`` are interchangeable, case is ignored); or your own
        network as ``"package.module:factory"``: a callable returning an
        ``nn.Module``, called with the keyword arguments ``input_shape`` (a
        tuple) and ``num_outputs`` (``num_classes``) for those of its parameters
        that carry these names (none: called without arguments). Importing the
        module runs its code (:func:`import_factory`); ``activation`` is ignored.
    input_shape : sequence of int
        Per-example input shape, e.g. ``Dataset.input_shape``: ``(D,)`` or
        ``(C, H, W)``. ``"lenet-5"`` needs ``(C, H, W)`` (load the data with
        ``flatten=False``); the MLPs flatten image inputs with a leading
        ``nn.Flatten``, which shifts their parameter names by one
        (``"1.weight"``, ...).
    num_classes : int
        Number of outputs: classes, or target dimensions for regression.
    hidden : sequence of int, optional
        Hidden widths of ``"mlp"`` (default ``(100,)``). The LeNets have fixed
        architectures and reject it.
    activation : str or callable, default "relu"
        Activation of ``"mlp"`` (see :func:`mlp`).

    Returns
    -------
    torch.nn.Module
    """
    if is_factory_name(name):
        if hidden is not None:
            raise ValueError(
                f"network {name!r} is built by its factory and takes no hidden sizes "
                f"(got hidden={tuple(hidden)!r}); give the widths in the factory"
            )
        outputs = _check_positive_int(num_classes, "num_classes")
        return _build_from_factory(name, _check_input_shape(input_shape), outputs)
    key = _network_key(name)
    input_shape = _check_input_shape(input_shape)
    _check_positive_int(num_classes, "num_classes")
    if key != "mlp" and hidden is not None:
        raise ValueError(
            f"network {key!r} has a fixed architecture and takes no hidden sizes "
            f"(got hidden={tuple(hidden)!r}); use name='mlp' to choose them"
        )

    if key == "lenet-5":
        if len(input_shape) != 3:
            raise ValueError(
                f"'lenet-5' needs image inputs of shape (channels, height, width), got "
                f"input_shape={input_shape}; load the data with flatten=False"
            )
        channels, height, width = input_shape
        return lenet5_caffe(channels, num_classes, (height, width))

    num_features = math.prod(input_shape)
    if key == "lenet-300-100":
        body = lenet_300_100(num_features, num_classes)
    else:
        hidden = _check_hidden(_DEFAULT_MLP_HIDDEN if hidden is None else hidden)
        body = mlp([num_features, *hidden, num_classes], activation=activation)
    if len(input_shape) == 1:
        return body
    return nn.Sequential(nn.Flatten(), *body)


def _network_key(name: str) -> str:
    """The registry key of a network name (``_`` and ``-`` alike, case ignored); checked."""
    if not isinstance(name, str):
        raise TypeError(f"network name must be a string, got {name!r}")
    key = name.strip().lower().replace("_", "-")
    if key not in NETWORKS:
        raise ValueError(
            f"unknown network {name!r}; accepted names are {', '.join(repr(n) for n in NETWORKS)}"
        )
    return key


def _check_input_shape(input_shape: Sequence[int] | int) -> tuple[int, ...]:
    """A per-example input shape as a non-empty tuple of positive ints (one int: ``(D,)``)."""
    if isinstance(input_shape, int) and not isinstance(input_shape, bool):
        input_shape = (input_shape,)
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise TypeError(f"input_shape must be a sequence of ints, got {input_shape!r}")
    shape = tuple(input_shape)
    if not shape:
        raise ValueError("input_shape is empty; give the per-example shape, e.g. (64,)")
    for position, size in enumerate(shape):
        _check_positive_int(size, f"input_shape[{position}]")
    return shape


def _check_hidden(hidden: Sequence[int] | int) -> Sequence[int]:
    """Hidden widths of an MLP as a sequence of positive ints (one int: one layer)."""
    if isinstance(hidden, int) and not isinstance(hidden, bool):
        hidden = (hidden,)
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise TypeError(f"hidden must be a sequence of layer widths, got {hidden!r}")
    for position, size in enumerate(hidden):
        _check_positive_int(size, f"hidden[{position}]")
    return hidden


# ----------------------------------------------------------------------------- own networks
class NetworkFactoryError(ValueError):
    """A ``package.module:factory`` network that cannot be imported, called or used."""


def is_factory_name(name: object) -> bool:
    """Whether ``name`` names a network factory (``"package.module:factory"``), not a built-in."""
    return isinstance(name, str) and ":" in name


def factory_name_problem(name: str) -> str | None:
    """Why ``name`` is not ``package.module:factory`` (dotted Python names), or ``None``."""
    module, _, attribute = name.partition(":")
    parts = [*module.split("."), *attribute.split(".")]
    if name.count(":") != 1 or not all(part.isidentifier() for part in parts):
        return (
            "must be package.module:factory, dotted Python names around one colon "
            "(e.g. mynets:make_cnn)"
        )
    return None


def import_factory(name: str) -> Callable[..., nn.Module]:
    """The callable that ``name`` (``"package.module:factory"``) names, imported.

    Importing a module runs its code: name only modules you trust. Every failure
    is a :class:`NetworkFactoryError` that names ``name`` and how to fix it (module
    not importable, attribute missing, not callable).
    """
    problem = factory_name_problem(name)
    if problem:
        raise NetworkFactoryError(f"network {name!r} {problem}")
    module_name, _, attribute = name.partition(":")
    try:
        target: object = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise NetworkFactoryError(
            f"network {name!r}: module {module_name!r} cannot be imported ({err}); put the "
            "folder that holds it on PYTHONPATH (e.g. PYTHONPATH=. bayes-sws ...) or install "
            "its package"
        ) from None
    except Exception as err:  # noqa: BLE001 - the module's own code failed on import
        raise NetworkFactoryError(
            f"network {name!r}: importing module {module_name!r} raised "
            f"{type(err).__name__}: {err}; fix the module"
        ) from None
    owner = module_name
    for part in attribute.split("."):
        if not hasattr(target, part):
            known = [n for n in dir(target) if not n.startswith("_")]
            close = difflib.get_close_matches(part, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "check the name after the colon"
            raise NetworkFactoryError(
                f"network {name!r}: {owner!r} has no attribute {part!r}; {hint}"
            )
        target, owner = getattr(target, part), f"{owner}.{part}"
    if not callable(target):
        raise NetworkFactoryError(
            f"network {name!r} names an object of type {type(target).__name__}, not a callable; "
            "name a function or class that returns an nn.Module"
        )
    return target


def _factory_arguments(factory: Callable, offered: dict[str, object]) -> dict[str, object]:
    """The entries of ``offered`` that ``factory`` has a named parameter for."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: call it bare
        return {}
    named = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in offered.items() if k in named}


def _build_from_factory(name: str, input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """The network that the factory ``name`` returns (checked to be an ``nn.Module``)."""
    factory = import_factory(name)
    arguments = _factory_arguments(
        factory, {"input_shape": input_shape, "num_outputs": num_outputs}
    )
    call = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
    try:
        net = factory(**arguments)
    except Exception as err:  # noqa: BLE001 - the user's factory failed
        raise NetworkFactoryError(
            f"network {name!r} raised {type(err).__name__} when called as "
            f"{name.partition(':')[2]}({call}): {err}"
        ) from None
    if not isinstance(net, nn.Module):
        raise NetworkFactoryError(
            f"network {name!r} returned a {type(net).__name__}, not an nn.Module; return the "
            "network itself (e.g. nn.Sequential(...))"
        )
    return net
