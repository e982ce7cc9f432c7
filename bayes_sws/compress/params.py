"""Which parameters of a network are compressed, and what kind of layer owns each.

Shared by quantisation (:mod:`.quantize`), storage accounting (:mod:`.storage`) and
the Deep Compression baseline (:mod:`.baseline`): every tensor with ``ndim >= 2``
by default, checked names otherwise, and the dense/convolution kind that sets a
tensor's relative-index width (Han et al. 2016, Sec. 3).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from torch import nn

from ..validation import check_names

__all__ = ["check_param_names", "default_param_names", "layer_kind", "owner_module"]


def default_param_names(net: nn.Module) -> list[str]:
    """Names of the parameters compressed by default: every tensor with ``ndim >= 2``.

    That is the weight matrices of ``Linear`` layers and the kernels of ``Conv``
    layers; biases and normalisation scales (1-D) are left at 32 bits.
    """
    return [name for name, p in net.named_parameters() if p.ndim >= 2]


def check_param_names(net: nn.Module, param_names: Iterable[str] | None) -> list[str]:
    """``param_names`` as a checked list of parameter names of ``net``.

    ``None`` gives :func:`default_param_names`; one string is one name. Names that
    are not parameters of ``net``, or repeated names, raise a ``ValueError``
    listing them.
    """
    params = dict(net.named_parameters())
    if param_names is None:
        return default_param_names(net)
    names = list(check_names("param_names", param_names) or ())  # one string is one name
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(
            f"param_names {missing} are not parameters of the network; available: {sorted(params)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"param_names has duplicates: {names}")
    return names


def owner_module(name: str) -> str:
    """Module name owning parameter ``name`` (``"fc1"`` for ``"fc1.weight"``, ``""`` for the root)."""
    return name.rsplit(".", 1)[0] if "." in name else ""


def layer_kind(net: nn.Module, name: str) -> Literal["dense", "conv"]:
    """Whether parameter ``name`` belongs to a convolution or a dense layer.

    The owning module decides: any ``torch.nn`` convolution (``Conv1d/2d/3d`` and the
    transposed ones) is ``"conv"``, ``nn.Linear`` (and its subclasses) is
    ``"dense"``. For other modules the shape decides: a tensor with more than two
    dimensions is a convolution kernel, anything else is dense.
    """
    module = net.get_submodule(owner_module(name))
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, nn.Linear):
        return "dense"
    param = dict(net.named_parameters())[name]
    return "conv" if param.ndim > 2 else "dense"
