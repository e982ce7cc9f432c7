"""From soft to hard weight sharing: quantise, merge, prune, and count the bits.

After retraining under the mixture prior (Ullrich, Meeds & Welling 2017), every
weight is sent to the mean of its most responsible component,

.. math::

    k(w) = \\arg\\max_j \\; \\log \\pi_j + \\log \\mathcal{N}(w \\mid \\mu_j, \\sigma_j^2)
    \\qquad \\text{(argmax of PRML 5.140)},

components whose distributions nearly coincide are merged first, and the zero
component (``mu_0 = 0``) prunes. :func:`quantize` does this on a deep copy of an
ordinary :class:`torch.nn.Module` from plain tensors ``pi, mu, sigma``; it needs
no Pyro.

:func:`storage_report` counts the bits of any network the way Han, Mao & Dally
(ICLR 2016, "Deep Compression") do and Ullrich et al. report: per layer, sparse
storage with fixed-width relative indices (5 bits for dense layers, 8 for
convolutions, with filler entries for gaps that do not fit; row by row or column
by column, whichever is smaller), cluster indices under a real Huffman code
(with the entropy bound beside it), a 32-bit codebook per layer and biases at 32
bits. See :func:`storage_report` for the exact rules.

:func:`remove_dead_units` drops the hidden units pruning left unused (an exact,
function-preserving clean-up), and :func:`stored_network` counts the smaller
network against the full one's size.

The module is pure torch/numpy; the plots use :class:`matplotlib.figure.Figure`
directly (no pyplot state, safe under any backend).
"""

from __future__ import annotations

import copy
import heapq
import itertools
import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..validation import check_int, check_names
from ..zoo.nets import ACTIVATIONS

__all__ = [
    "QuantizeResult",
    "LayerStorage",
    "StorageReport",
    "default_param_names",
    "merge_components",
    "quantize",
    "finetune_codebook",
    "CodebookFinetune",
    "storage_report",
    "remove_dead_units",
    "stored_network",
    "DeadUnitRemoval",
    "huffman_code",
    "huffman_code_lengths",
    "entropy_bits",
    "relative_index_fillers",
    "layer_kind",
    "plot_weights_before_after",
    "plot_layer_sparsity",
    "BITS_PER_FLOAT",
    "DEFAULT_INDEX_BITS",
]

#: Bits of one uncompressed parameter, one codebook entry, one bias.
BITS_PER_FLOAT = 32
#: Relative-index width by layer kind (Han et al. 2016, Sec. 3; Ullrich et al. 2017, App.).
DEFAULT_INDEX_BITS: dict[str, int] = {"dense": 5, "conv": 8}

_CHUNK = 1 << 18  # weights per block when computing responsibilities (bounds N x M memory)


# --------------------------------------------------------------------------- helpers


def default_param_names(net: nn.Module) -> list[str]:
    """Names of the parameters compressed by default: every tensor with ``ndim >= 2``.

    That is the weight matrices of ``Linear`` layers and the kernels of ``Conv``
    layers; biases and normalisation scales (1-D) are left at 32 bits.
    """
    return [name for name, p in net.named_parameters() if p.ndim >= 2]


def _check_param_names(net: nn.Module, param_names: Iterable[str] | None) -> list[str]:
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


def _owner(name: str) -> str:
    """Module name owning parameter ``name`` ('' for the root)."""
    return name.rsplit(".", 1)[0] if "." in name else ""


def layer_kind(net: nn.Module, name: str) -> Literal["dense", "conv"]:
    """Whether parameter ``name`` belongs to a convolution or a dense layer.

    The owning module decides: any ``torch.nn`` convolution (``Conv1d/2d/3d`` and the
    transposed ones) is ``"conv"``, ``nn.Linear`` (and its subclasses) is
    ``"dense"``. For other modules the shape decides: a tensor with more than two
    dimensions is a convolution kernel, anything else is dense.
    """
    module = net.get_submodule(_owner(name))
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, nn.Linear):
        return "dense"
    param = dict(net.named_parameters())[name]
    return "conv" if param.ndim > 2 else "dense"


def _as_mixture(pi: Any, mu: Any, sigma: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    arrays = []
    for label, value in (("pi", pi), ("mu", mu), ("sigma", sigma)):
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().double().numpy()
        arr = np.asarray(value, dtype=np.float64)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(
                f"{label} must be a non-empty 1-D tensor of shape (M,); got shape {arr.shape}"
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{label} has non-finite entries: {arr}")
        arrays.append(arr)
    pi_, mu_, sigma_ = arrays
    if not (pi_.shape == mu_.shape == sigma_.shape):
        raise ValueError(
            "pi, mu and sigma must have the same shape (M,); "
            f"got {pi_.shape}, {mu_.shape}, {sigma_.shape}"
        )
    if np.any(pi_ < 0) or pi_.sum() <= 0:
        raise ValueError(f"pi must be non-negative with a positive sum; got {pi_}")
    if np.any(sigma_ <= 0):
        raise ValueError(f"sigma must be positive (a standard deviation, not a log); got {sigma_}")
    return pi_ / pi_.sum(), mu_, sigma_


# --------------------------------------------------------------------------- merging


def _symmetric_kl(mu_a: float, var_a: float, mu_b: float, var_b: float) -> float:
    """½ [KL(a‖b) + KL(b‖a)] between two univariate Gaussians (nats)."""
    d2 = (mu_a - mu_b) ** 2
    return 0.25 * (var_a / var_b + var_b / var_a) - 0.5 + 0.25 * d2 * (1.0 / var_a + 1.0 / var_b)


def merge_components(
    pi: Any,
    mu: Any,
    sigma: Any,
    *,
    merge_threshold: float = 1e-2,
    merge_criterion: Literal["kl", "mean"] = "kl",
    zero_component: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Greedily merge mixture components whose distributions nearly coincide.

    Criterion (``merge_criterion``):

    * ``"kl"`` (default): the symmetrised Kullback–Leibler divergence in nats,

      .. math::

          D(a, b) = \\tfrac12[\\mathrm{KL}(a\\|b) + \\mathrm{KL}(b\\|a)]
                  = \\tfrac14 (r + 1/r) - \\tfrac12
                    + \\tfrac14 (\\mu_a - \\mu_b)^2 (\\sigma_a^{-2} + \\sigma_b^{-2}),
          \\qquad r = \\sigma_a^2 / \\sigma_b^2,

      which is scale free (two equal-width components merge when their means are
      closer than ``sqrt(2 * merge_threshold)`` widths);
    * ``"mean"``: the distance of the means, ``|mu_a - mu_b|``.

    A pair qualifies when its distance is strictly below ``merge_threshold``
    (so ``merge_threshold=0`` never merges). While any pair qualifies, the pair
    with the smallest distance is merged: π adds up, the mean is the π-weighted
    mean, and the variance moment-matches the two-component mixture,
    ``σ² = Σ π_k (σ_k² + (μ_k − μ)²) / Σ π_k``. Distances are then recomputed.
    With ``zero_component=True`` component 0 keeps its index and the mean exactly
    0, and absorbs whatever is merged into it (its variance is matched about 0).

    Returns
    -------
    pi, mu, sigma : np.ndarray, shape (K,)
        Merged mixture, in the order of each group's smallest original index.
    component_map : np.ndarray of int, shape (M,)
        Merged index of every original component.
    """
    pi_, mu_, sigma_ = _as_mixture(pi, mu, sigma)
    if merge_criterion not in ("kl", "mean"):
        raise ValueError(f"merge_criterion must be 'kl' or 'mean'; got {merge_criterion!r}")
    if not (merge_threshold >= 0):
        raise ValueError(f"merge_threshold must be >= 0; got {merge_threshold}")
    if zero_component and mu_[0] != 0.0:
        raise ValueError(
            "zero_component=True needs mu[0] == 0 exactly (the pruning component); "
            f"got mu[0]={mu_[0]}. "
            "Pass zero_component=False if the mixture has no fixed zero component."
        )
    groups = [[j] for j in range(mu_.size)]
    g_pi, g_mu, g_var = list(pi_), list(mu_), list(sigma_**2)

    def distance(a: int, b: int) -> float:
        if merge_criterion == "mean":
            return abs(g_mu[a] - g_mu[b])
        return _symmetric_kl(g_mu[a], g_var[a], g_mu[b], g_var[b])

    while len(groups) > 1:
        best, pair = math.inf, None
        for a, b in itertools.combinations(range(len(groups)), 2):
            d = distance(a, b)
            if d < best:
                best, pair = d, (a, b)
        if pair is None or not best < merge_threshold:
            break
        a, b = pair  # a < b, so the zero component (group 0) always survives as `a`
        weights = np.array([g_pi[a], g_pi[b]])
        weights = weights / weights.sum() if weights.sum() > 0 else np.full(2, 0.5)
        means = np.array([g_mu[a], g_mu[b]])
        variances = np.array([g_var[a], g_var[b]])
        mean = 0.0 if (zero_component and a == 0) else float(weights @ means)
        var = float(weights @ (variances + (means - mean) ** 2))
        g_pi[a], g_mu[a], g_var[a] = g_pi[a] + g_pi[b], mean, var
        groups[a] = sorted(groups[a] + groups[b])
        del groups[b], g_pi[b], g_mu[b], g_var[b]

    component_map = np.empty(mu_.size, dtype=np.int64)
    for k, members in enumerate(groups):
        component_map[members] = k
    return np.array(g_pi), np.array(g_mu), np.sqrt(np.array(g_var)), component_map


# --------------------------------------------------------------------------- quantisation


@dataclass(frozen=True)
class QuantizeResult:
    """Hard weight sharing of a network (returned by :func:`quantize`).

    Attributes
    ----------
    net : nn.Module
        Deep copy of the input network; every parameter in ``param_names`` takes
        only the values in ``values`` (pruned weights are exactly 0).
    param_names : tuple of str
        The quantised parameters.
    values : torch.Tensor, shape (K,)
        Codebook after merging: the shared value of each merged component
        (``values[0] == 0`` with ``zero_component=True``).
    pi, sigma : torch.Tensor, shape (K,)
        Mixing proportions (summing to 1) and widths of the merged components.
    component_map : torch.Tensor of long, shape (M,)
        Merged index of each original component.
    assignments : dict of str to torch.Tensor of long
        Merged component of each weight, same shape as the parameter.
    counts : dict of str to torch.Tensor of long, shape (K,)
        Number of weights of each parameter assigned to each merged component.
    zero_component : bool
        Whether component 0 is the pruning component.
    """

    net: nn.Module
    param_names: tuple[str, ...]
    values: torch.Tensor
    pi: torch.Tensor
    sigma: torch.Tensor
    component_map: torch.Tensor
    assignments: dict[str, torch.Tensor]
    counts: dict[str, torch.Tensor]
    zero_component: bool

    @property
    def num_components(self) -> int:
        """Number of components after merging."""
        return int(self.values.numel())

    @property
    def num_pruned(self) -> int:
        """Weights exactly zero after quantisation (all quantised parameters)."""
        return sum(int((dict(self.net.named_parameters())[n] == 0).sum()) for n in self.param_names)


def _most_responsible(
    w: torch.Tensor, log_pi: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """argmax_j log π_j + log N(w | μ_j, σ_j²) per weight, in float64 blocks."""
    flat = w.detach().reshape(-1).to(torch.float64)
    out = torch.empty(flat.numel(), dtype=torch.long)
    # the -½ log 2π constant is common to every component and dropped
    offset = log_pi - torch.log(sigma)  # M
    for start in range(0, flat.numel(), _CHUNK):
        block = flat[start : start + _CHUNK, None]  # B 1
        log_joint = offset - 0.5 * ((block - mu) / sigma) ** 2  # B M
        out[start : start + _CHUNK] = torch.argmax(log_joint, dim=1)
    return out.reshape(w.shape)


def quantize(
    net: nn.Module,
    pi: Any,
    mu: Any,
    sigma: Any,
    *,
    param_names: Sequence[str] | None = None,
    merge_threshold: float = 1e-2,
    merge_criterion: Literal["kl", "mean"] = "kl",
    zero_component: bool = True,
) -> QuantizeResult:
    """Hard-assign weights to the shared values of a learned mixture.

    Each weight ``w`` goes to its most responsible **original** component,
    ``argmax_j log π_j + log N(w | μ_j, σ_j²)`` (the argmax of γ_j(w), PRML
    5.140, computed in log space so tiny widths do not underflow), and then takes
    the mean of the merged component that one belongs to (see
    :func:`merge_components` for the merge rule). Assigning before merging
    means merging only relabels: it never moves a weight between components that
    stay separate. With ``zero_component=True`` weights of component 0, and of
    every component merged into it, are set to exactly 0 (pruned).

    Parameters
    ----------
    net : nn.Module
        Trained network; it is deep-copied, never modified.
    pi, mu, sigma : tensor of shape (M,)
        Mixing proportions (normalised here), means and standard deviations.
    param_names : str or sequence of str, optional
        Parameters to quantise (one string is one name); default
        :func:`default_param_names` (all tensors with ``ndim >= 2``). Others are
        copied unchanged.
    merge_threshold, merge_criterion
        Passed to :func:`merge_components`; ``merge_threshold=0`` disables merging.
    zero_component : bool
        Component 0 is the pruning component with ``mu[0] == 0``.
    """
    names = _check_param_names(net, param_names)
    pi_, mu_, sigma_ = _as_mixture(pi, mu, sigma)
    m_pi, m_mu, m_sigma, component_map = merge_components(
        pi_,
        mu_,
        sigma_,
        merge_threshold=merge_threshold,
        merge_criterion=merge_criterion,
        zero_component=zero_component,
    )
    if zero_component:
        m_mu[0] = 0.0
    log_pi = torch.log(torch.as_tensor(pi_))  # log 0 = -inf: such a component never wins
    mu_t, sigma_t = torch.as_tensor(mu_), torch.as_tensor(sigma_)
    map_t = torch.as_tensor(component_map)
    values = torch.as_tensor(m_mu)

    quantized = copy.deepcopy(net)
    params = dict(quantized.named_parameters())
    assignments, counts = {}, {}
    with torch.no_grad():
        for name in names:
            p = params[name]
            if not torch.all(torch.isfinite(p)):
                raise ValueError(f"parameter {name!r} has non-finite values; cannot quantise it")
            merged = map_t[_most_responsible(p, log_pi, mu_t, sigma_t)]
            p.copy_(values[merged].to(p.dtype))
            assignments[name] = merged
            counts[name] = torch.bincount(merged.reshape(-1), minlength=values.numel())
    return QuantizeResult(
        net=quantized,
        param_names=tuple(names),
        values=values,
        pi=torch.as_tensor(m_pi),
        sigma=torch.as_tensor(m_sigma),
        component_map=map_t,
        assignments=assignments,
        counts=counts,
        zero_component=zero_component,
    )


# --------------------------------------------------------------------------- codebook fine-tuning


@dataclass(frozen=True)
class CodebookFinetune:
    """What :func:`finetune_codebook` returns.

    Attributes
    ----------
    codebooks : dict of str to torch.Tensor
        Per parameter, the shared value of every cluster index ``0 … K-1`` after
        fine-tuning (``0`` for an index no weight uses).
    training : TrainResult or None
        The losses (``None`` when ``num_epochs == 0``).
    """

    codebooks: dict[str, torch.Tensor]
    training: Any


def finetune_codebook(
    net: nn.Module,
    assignments: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_epochs: int,
    lr: float = 1e-3,
    batch_size: int = 128,
    loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "cross_entropy",
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool | None = None,
) -> CodebookFinetune:
    """Fine-tune the shared values of a hard-shared network in place (Han et al. 2016, Eq. 3).

    Assignments are fixed: ``assignments[name]`` (same shape as the parameter)
    holds each weight's cluster index within that parameter, ``-1`` where the
    weight is pruned (held at exactly 0). The gradient of a shared value is the
    sum of the gradients of its weights; each step every weight receives its
    cluster's summed gradient, and Adam being element-wise, tied weights get
    identical updates, exactly Adam on the shared value itself. After each step
    the weights are re-tied to their cluster mean (against rounding) and pruned
    weights reset to 0. Parameters not in ``assignments`` (biases) train freely.
    The weights are tied to their cluster means before the first step, so a
    network that is not yet hard-shared becomes so.

    Used after k-means by :func:`bayes_sws.compress.baseline.deep_compression` and after
    :func:`quantize` by :func:`bayes_sws.compress.pipeline.soft_weight_sharing`.
    """
    from ..zoo.training import (
        train,  # training is pure torch; imported here to keep this module light
    )

    num_epochs = check_int("num_epochs", num_epochs, low=0)
    params = dict(net.named_parameters())
    unknown = sorted(set(assignments) - set(params))
    if unknown:
        raise ValueError(f"assignments name parameters the network does not have: {unknown}")
    labels: dict[str, torch.Tensor] = {}  # cluster index of each kept weight
    kept: dict[str, torch.Tensor] = {}  # flat positions of the kept weights
    sizes: dict[str, int] = {}
    for name, a in assignments.items():
        a = torch.as_tensor(a)
        if a.shape != params[name].shape or a.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                f"assignments[{name!r}] must be an integer tensor of shape "
                f"{tuple(params[name].shape)}, got {a.dtype} of shape {tuple(a.shape)}"
            )
        if a.numel() and int(a.min()) < -1:
            raise ValueError(f"assignments[{name!r}] holds {int(a.min())}; use -1 for pruned")
        flat = a.reshape(-1).to(device=params[name].device, dtype=torch.long)
        kept[name] = torch.nonzero(flat >= 0).squeeze(1)
        labels[name] = flat[kept[name]]
        sizes[name] = int(flat.max()) + 1 if flat.numel() else 0

    def cluster_sum(name: str, values: torch.Tensor) -> torch.Tensor:
        sums = torch.zeros(sizes[name], dtype=torch.float64, device=values.device)
        return sums.index_add_(0, labels[name], values.to(torch.float64))

    def cluster_means(name: str) -> torch.Tensor:
        flat = params[name].detach().reshape(-1)
        counts = torch.bincount(labels[name], minlength=sizes[name]).to(torch.float64)
        return cluster_sum(name, flat[kept[name]]) / counts.clamp_min(1)

    def share_gradients(module: nn.Module) -> None:
        for name in labels:
            grad = params[name].grad
            if grad is None:
                continue
            flat = grad.view(-1)
            summed = cluster_sum(name, flat[kept[name]])
            flat.zero_()
            flat[kept[name]] = summed[labels[name]].to(flat.dtype)

    def retie(module: nn.Module) -> None:
        with torch.no_grad():
            for name in labels:
                flat = params[name].view(-1)
                means = cluster_means(name)
                flat.zero_()
                flat[kept[name]] = means[labels[name]].to(flat.dtype)

    retie(net)
    training = None
    if num_epochs > 0:
        training = train(
            net,
            x,
            y,
            loss=loss,
            num_epochs=num_epochs,
            lr=lr,
            batch_size=batch_size,
            weight_decay=weight_decay,
            seed=seed,
            progress=progress,
            before_step=share_gradients,
            after_step=retie,
        )
    codebooks = {name: cluster_means(name).to(params[name].dtype).cpu() for name in labels}
    return CodebookFinetune(codebooks=codebooks, training=training)


# --------------------------------------------------------------------------- dead units

#: Parameter-free element-wise modules a dead unit's constant output passes through: the
#: activations :func:`bayes_sws.zoo.nets.mlp` builds, and a few more.
_ELEMENTWISE = (*ACTIVATIONS.values(), nn.ReLU6, nn.Hardtanh, nn.Identity)


@dataclass(frozen=True)
class DeadUnitRemoval:
    """What :func:`remove_dead_units` returns.

    Attributes
    ----------
    net : nn.Sequential
        The smaller network; it computes the same function (up to float rounding
        of the folded biases) and keeps the parameter names of the original.
    kept : dict of str to torch.Tensor
        Per producing module (``"0"``), the indices of the output units kept.
    removed : dict of str to int
        Per producing module, how many output units were removed.
    """

    net: nn.Sequential
    kept: dict[str, torch.Tensor]
    removed: dict[str, int]

    @property
    def num_removed(self) -> int:
        return sum(self.removed.values())


@dataclass
class _UnitPair:
    """A module whose output units feed the next weighted module, through ``chain``."""

    name: str
    producer: nn.Linear | nn.Conv2d
    chain: list[nn.Module]
    consumer: nn.Linear | nn.Conv2d
    block: int  # consumer input columns per producer unit (> 1 after a Flatten)

    def consumer_weights(self) -> torch.Tensor:
        """Consumer weights grouped by producer unit: (units, consumer outputs, rest)."""
        w = self.consumer.weight
        units = self.producer.weight.shape[0]
        if isinstance(self.consumer, nn.Linear):
            return w.reshape(w.shape[0], units, self.block).transpose(0, 1)
        return w.transpose(0, 1).reshape(units, w.shape[0], -1)

    def consumer_columns(self, units: torch.Tensor) -> torch.Tensor:
        """Indices along the consumer weight's second axis read from these producer units."""
        if isinstance(self.consumer, nn.Linear):
            block = torch.arange(self.block, device=units.device)
            return (units[:, None] * self.block + block).reshape(-1)
        return units

    def can_fold(self) -> bool:
        """A constant input map stays constant through the consumer (no zero padding)."""
        if self.consumer.bias is None:
            return False
        return isinstance(self.consumer, nn.Linear) or all(
            p == 0 for p in _as_tuple(self.consumer.padding)
        )

    def constant_outputs(self) -> torch.Tensor:
        """Each unit's output when all its weights are zero: the chain applied to its bias."""
        bias = self.producer.bias
        x = (
            self.producer.weight.new_zeros(self.producer.weight.shape[0])
            if bias is None
            else bias.detach().clone()
        )
        x = x.reshape(1, -1)
        for module in self.chain:
            if isinstance(module, _ELEMENTWISE):
                x = module(x)
        return x.reshape(-1)


def _as_tuple(value: Any) -> tuple:
    return tuple(value) if isinstance(value, tuple | list) else (value,)


def _unit_pairs(net: nn.Sequential) -> list[_UnitPair]:
    modules = list(net.named_children())
    pairs = []
    for i, (name, producer) in enumerate(modules):
        if not isinstance(producer, nn.Linear | nn.Conv2d):
            continue
        if isinstance(producer, nn.Conv2d) and producer.groups != 1:
            continue
        chain: list[nn.Module] = []
        flatten = False
        for _, module in modules[i + 1 :]:
            if isinstance(module, nn.Linear | nn.Conv2d):
                if isinstance(module, nn.Conv2d) and (
                    module.groups != 1 or isinstance(producer, nn.Linear) or flatten
                ):
                    break
                if (
                    isinstance(module, nn.Linear)
                    and isinstance(producer, nn.Conv2d)
                    and not flatten
                ):
                    break
                units = producer.weight.shape[0]
                fan_in = module.weight.shape[1]
                block = fan_in // units if flatten else 1
                if block * units == fan_in:
                    pairs.append(_UnitPair(name, producer, chain, module, block))
                break
            if isinstance(module, _ELEMENTWISE):
                chain.append(module)
            elif isinstance(module, nn.MaxPool2d) and isinstance(producer, nn.Conv2d):
                chain.append(module)  # the max of a constant map is that constant
            elif (
                isinstance(module, nn.AvgPool2d)
                and isinstance(producer, nn.Conv2d)
                and all(p == 0 for p in _as_tuple(module.padding))
            ):
                chain.append(module)
            elif (
                isinstance(module, nn.Flatten)
                and isinstance(producer, nn.Conv2d)
                and module.start_dim == 1
                and module.end_dim == -1
                and not flatten
            ):
                flatten = True
                chain.append(module)
            else:
                break  # anything else (normalisation, dropout, ...) ends the search
    return pairs


def _keep_units(pair: _UnitPair, keep: torch.Tensor) -> None:
    """Drop the producer's output units not in ``keep`` and the consumer's matching inputs."""
    producer, consumer = pair.producer, pair.consumer
    producer.weight = nn.Parameter(producer.weight.detach()[keep].clone())
    if producer.bias is not None:
        producer.bias = nn.Parameter(producer.bias.detach()[keep].clone())
    columns = pair.consumer_columns(keep)
    consumer.weight = nn.Parameter(consumer.weight.detach()[:, columns].clone())
    if isinstance(consumer, nn.Linear):
        consumer.in_features = int(columns.numel())
    else:
        consumer.in_channels = int(keep.numel())
    if isinstance(producer, nn.Linear):
        producer.out_features = int(keep.numel())
    else:
        producer.out_channels = int(keep.numel())


def remove_dead_units(net: nn.Module) -> DeadUnitRemoval:
    """Remove hidden units a pruned network no longer uses; the function stays the same.

    In a :class:`torch.nn.Sequential` of ``Linear``/``Conv2d`` layers joined by
    element-wise activations (and, between convolutions, pooling or a
    ``Flatten`` before a dense layer), a hidden unit is **dead**

    * when every weight reading it in the next layer is zero: its output is
      never used, so the unit (its weights and bias) goes; or
    * when all of its own weights are zero: its output is the constant
      ``activation(bias)``, which is added to the next layer's bias (exact
      for a dense next layer or an unpadded convolution), after which the unit
      is unused and goes.

    Removing units can kill others, so the rules repeat until nothing changes; at
    least one unit per layer is kept. Pruning by soft weight-sharing leaves many
    such units (whole rows of the first dense layer), which cost filler entries
    in the sparse layout; this is the structured clean-up a user would apply
    before deployment. Count the smaller network's bits with
    ``storage_report(removal.net, reference=net)`` so its rate is still relative
    to the original network.

    Parameters
    ----------
    net : nn.Sequential
        A (pruned) network; it is deep-copied, never modified.
    """
    if not isinstance(net, nn.Sequential):
        raise TypeError(
            f"remove_dead_units needs an nn.Sequential network, got {type(net).__name__}"
        )
    out = copy.deepcopy(net)
    pairs = _unit_pairs(out)
    sizes = {pair.name: int(pair.producer.weight.shape[0]) for pair in pairs}
    kept = {name: torch.arange(size) for name, size in sizes.items()}
    changed = True
    with torch.no_grad():
        while changed:
            changed = False
            for pair in pairs:
                reads = pair.consumer_weights()  # units, consumer outputs, rest
                units = reads.shape[0]
                unused = (reads == 0).flatten(1).all(1)
                no_inputs = (pair.producer.weight == 0).reshape(units, -1).all(1)
                fold = no_inputs & ~unused
                if fold.any() and pair.can_fold():
                    constant = pair.constant_outputs()
                    shift = (reads.sum(-1) * constant[:, None])[fold].sum(0)
                    bias = pair.consumer.bias
                    assert bias is not None  # can_fold()
                    bias += shift.to(bias.dtype)
                    pair.consumer.weight[
                        :, pair.consumer_columns(torch.nonzero(fold).reshape(-1))
                    ] = 0.0
                    unused = unused | fold
                keep = torch.nonzero(~unused).reshape(-1)
                if keep.numel() == 0:
                    keep = torch.zeros(1, dtype=torch.long, device=unused.device)
                if keep.numel() < units:
                    _keep_units(pair, keep)
                    kept[pair.name] = kept[pair.name][keep.cpu()]
                    changed = True
    return DeadUnitRemoval(
        net=out,
        kept=kept,
        removed={pair.name: sizes[pair.name] - int(kept[pair.name].numel()) for pair in pairs},
    )


# --------------------------------------------------------------------------- coding


def _huffman_lengths(counts: Sequence[int]) -> list[int]:
    """Huffman codeword lengths for positive ``counts`` (heap of (count, node id))."""
    n = len(counts)
    if n == 1:
        return [1]
    # leaves are nodes 0..n-1, internal nodes n..2n-2 in creation order; ties go to
    # the lower node id, so the result is deterministic
    # a heap entry is the int count * stride + node id: ordered by (count, id) and
    # several times faster to compare than tuples
    stride = 2 * n
    heap = [int(c) * stride + i for i, c in enumerate(counts)]
    heapq.heapify(heap)
    parent = [0] * (2 * n - 1)
    for node in range(n, 2 * n - 1):
        a = heapq.heappop(heap)
        b = heapq.heappop(heap)
        parent[a % stride] = parent[b % stride] = node
        heapq.heappush(heap, (a // stride + b // stride) * stride + node)
    depth = [0] * (2 * n - 1)  # the root, node 2n-2, has depth 0
    for child in range(2 * n - 3, -1, -1):  # parents are created after their children
        depth[child] = depth[parent[child]] + 1
    return depth[:n]


def _positive_items(frequencies: Mapping[Hashable, int] | Sequence[int]) -> list[tuple[Any, int]]:
    if not isinstance(frequencies, Mapping):
        frequencies = dict(enumerate(frequencies))
    items = [(sym, int(c)) for sym, c in frequencies.items()]
    negative = {sym: c for sym, c in items if c < 0}
    if negative:
        raise ValueError(f"frequencies must be non-negative; got {negative}")
    return [(sym, c) for sym, c in items if c > 0]


def huffman_code_lengths(
    frequencies: Mapping[Hashable, int] | Sequence[int],
) -> dict[Hashable, int]:
    """Codeword length of each symbol in a binary Huffman code (Huffman 1952).

    Parameters
    ----------
    frequencies : mapping symbol -> count, or a sequence of counts (symbols 0..n-1)
        Symbols with count 0 get no codeword.

    Returns
    -------
    dict symbol -> length in bits. The lengths minimise ``Σ count · length``
    over all prefix codes. A lone symbol gets length 1 (a convention: a decoder
    still reads one bit per symbol to count them off); no symbols, an empty dict.
    """
    items = _positive_items(frequencies)
    if not items:
        return {}
    lengths = _huffman_lengths([c for _, c in items])
    return {sym: length for (sym, _), length in zip(items, lengths, strict=True)}


def huffman_code(frequencies: Mapping[Hashable, int] | Sequence[int]) -> dict[Hashable, str]:
    """A binary Huffman code: the canonical code with :func:`huffman_code_lengths`.

    Codewords (strings of ``'0'``/``'1'``) are assigned in canonical order
    (shorter first, then in the order given), as DEFLATE does; any code with the
    Huffman lengths is optimal, and the canonical one is prefix free because the
    lengths meet Kraft's inequality with equality.
    """
    lengths = huffman_code_lengths(frequencies)
    code: dict[Hashable, str] = {}
    value, previous = 0, 0
    ordered = sorted(enumerate(lengths.items()), key=lambda item: (item[1][1], item[0]))
    for _, (sym, length) in ordered:
        value <<= length - previous
        code[sym] = format(value, f"0{length}b")
        value, previous = value + 1, length
    return code


def entropy_bits(counts: Sequence[int] | np.ndarray) -> float:
    """Entropy bound on the bits of a message with these symbol counts.

    ``Σ_s n_s · (−log2 (n_s / n))``: ``n`` times the empirical entropy in bits;
    no prefix code does better, Huffman does at most ``n`` bits worse.
    """
    counts = np.asarray(counts, dtype=np.float64)
    counts = counts[counts > 0]
    if counts.size == 0:
        return 0.0
    total = counts.sum()
    return float(-(counts * np.log2(counts / total)).sum())


def relative_index_fillers(positions: Sequence[int] | np.ndarray, index_bits: int) -> int:
    """Filler entries needed to store sorted non-zero ``positions`` with relative indices.

    Each stored entry carries the number of zeros skipped since the previous
    stored entry (the first counts from the start of the tensor), an integer in
    ``[0, 2**index_bits - 1]``. A run of ``z`` zeros before a non-zero that does
    not fit is broken by filler entries, each a stored zero placed after
    ``2**index_bits - 1`` skipped zeros, so the run costs ``z // 2**index_bits``
    fillers. (Equivalently, Han et al.'s position difference ``d = z + 1`` may be
    at most ``2**index_bits``.) Zeros after the last non-zero cost nothing.
    """
    positions = np.asarray(positions, dtype=np.int64)
    if positions.size == 0:
        return 0
    if index_bits < 1:
        raise ValueError(f"index_bits must be >= 1; got {index_bits}")
    skips = np.diff(positions, prepend=-1) - 1
    if np.any(skips < 0):
        raise ValueError("positions must be strictly increasing and non-negative")
    return int((skips >> index_bits).sum())


# --------------------------------------------------------------------------- storage


@dataclass(frozen=True)
class LayerStorage:
    """Storage of one compressed parameter tensor (one row of a :class:`StorageReport`).

    Attributes
    ----------
    name, module : str
        Parameter name (``"fc1.weight"``) and the name of its module (``"fc1"``).
    kind : {"dense", "conv"}
        Layer kind (:func:`layer_kind`), which sets the default ``index_bits``.
    shape : tuple of int
    num_params, num_nonzero : int
        Entries of the tensor (of the reference's tensor, before
        :func:`remove_dead_units`, when :func:`storage_report` had one), and how
        many are non-zero.
    nonzero_fraction : float
        ``num_nonzero / num_params``.
    num_distinct : int
        Distinct non-zero values (the codebook size).
    storage_format : {"sparse", "full", "raw"}
        The cheapest layout (see :func:`storage_report`).
    order : {"row", "column"}
        Traversal order of the sparse layout: ``"row"`` runs along the rows of
        the tensor viewed as ``(shape[0], -1)`` (CSR), ``"column"`` along its
        columns (CSC). Always ``"row"`` for the full and raw layouts.
    index_bits : int
        Width of one relative index.
    num_fillers, num_stored : int
        Filler zeros added, and entries stored (sparse: non-zeros + fillers;
        full and raw: all entries).
    relative_index_bits, cluster_index_bits, codebook_bits, raw_bits : int
        Bits of the relative indices, the Huffman-coded cluster indices, the
        codebook (32 per distinct non-zero value) and, for the raw layout only,
        the 32-bit values. Zero where the layout has no such part.
    entropy_bits : float
        Entropy bound for the cluster indices of the same layout.
    weight_bits : int
        Sum of the four parts above.
    num_bias, bias_bits : int
        Parameters of the same module not compressed (the bias, typically),
        stored at 32 bits each.
    total_bits : int
        ``weight_bits + bias_bits``.
    total_bits_entropy : float
        ``total_bits`` with the cluster indices at their entropy bound.
    original_bits : int
        ``32 * (num_params + num_bias)``.
    compression_rate, compression_rate_entropy : float
        ``original_bits / total_bits`` (resp. ``/ total_bits_entropy``).
    sparse_bits, full_bits : int
        Weight bits of the two coded layouts, for comparison (raw is ``32 * num_params``).
    """

    name: str
    module: str
    kind: str
    shape: tuple[int, ...]
    num_params: int
    num_nonzero: int
    nonzero_fraction: float
    num_distinct: int
    storage_format: str
    order: str
    index_bits: int
    num_fillers: int
    num_stored: int
    relative_index_bits: int
    cluster_index_bits: int
    entropy_bits: float
    codebook_bits: int
    raw_bits: int
    weight_bits: int
    num_bias: int
    bias_bits: int
    total_bits: int
    total_bits_entropy: float
    original_bits: int
    compression_rate: float
    compression_rate_entropy: float
    sparse_bits: int
    full_bits: int


@dataclass(frozen=True)
class StorageReport:
    """Storage of a whole network (returned by :func:`storage_report`).

    Attributes
    ----------
    layers : tuple of LayerStorage
        One row per compressed parameter tensor, in ``named_parameters`` order.
    num_params : int
        All parameters of the network (of the reference network, if given),
        biases included.
    num_compressed_params, num_nonzero : int
        Entries of the compressed tensors, and their non-zeros.
    nonzero_fraction : float
        ``num_nonzero / num_compressed_params`` (Ullrich et al.'s ``|W≠0|/|W|``).
    bias_bits : int
        Bits of the uncompressed parameters attributed to a row (their module has a
        compressed tensor).
    other_params, other_bits : int
        Uncompressed parameters of modules without a compressed tensor (32 bits each).
    total_bits, total_bits_entropy : int, float
        Sum over rows plus ``other_bits``.
    original_bits : int
        ``32 * num_params``.
    compression_rate, compression_rate_entropy : float
        ``original_bits / total_bits`` (resp. ``/ total_bits_entropy``).
    """

    layers: tuple[LayerStorage, ...]
    num_params: int
    num_compressed_params: int
    num_nonzero: int
    nonzero_fraction: float
    bias_bits: int
    other_params: int
    other_bits: int
    total_bits: int
    total_bits_entropy: float
    original_bits: int
    compression_rate: float
    compression_rate_entropy: float

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (rows under ``"layers"``)."""
        out = asdict(self)
        out["layers"] = [asdict(layer) for layer in self.layers]
        for layer in out["layers"]:
            layer["shape"] = list(layer["shape"])
        return out

    def format_table(self) -> str:
        """A Markdown table: one row per layer and a total."""
        lines = [
            "| layer | kind | params | non-zero % | distinct | format | index | Huffman "
            "| codebook | bias | total bits | rate |",
            "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in self.layers:
            lines.append(
                f"| {r.name} | {r.kind} | {r.num_params} | {100 * r.nonzero_fraction:.2f} | "
                f"{r.num_distinct} | {r.storage_format}{' by column' if r.order == 'column' else ''} | "
                f"{r.relative_index_bits} | "
                f"{r.cluster_index_bits} | {r.codebook_bits} | {r.bias_bits} | {r.total_bits} | "
                f"{r.compression_rate:.1f} |"
            )
        lines.append(
            f"| **total** | | {self.num_params} | {100 * self.nonzero_fraction:.2f} | | | | | | "
            f"{self.bias_bits + self.other_bits} | {self.total_bits} "
            f"| {self.compression_rate:.1f} |"
        )
        return "\n".join(lines)


def _coded_bits(symbol_counts: np.ndarray) -> tuple[int, float]:
    """Huffman bits and entropy bound of a message with these symbol counts."""
    counts = [int(c) for c in symbol_counts if c > 0]
    huffman = (
        sum(c * n for c, n in zip(counts, _huffman_lengths(counts), strict=True)) if counts else 0
    )
    return huffman, entropy_bits(symbol_counts)


def _sparse_layout(
    matrix: np.ndarray, order: str, value_counts: np.ndarray, index_bits: int, codebook_bits: int
) -> tuple[int, int, int, float, int, int]:
    """Sparse layout of ``matrix`` traversed in ``order``: (bits, index bits,
    Huffman bits, entropy bits, fillers, stored entries)."""
    flat = (matrix if order == "row" else matrix.T).reshape(-1)
    positions = np.flatnonzero(flat)
    # (relative index, cluster index) per non-zero and per filler zero
    num_fillers = relative_index_fillers(positions, index_bits)
    huffman, entropy = _coded_bits(np.append(value_counts, num_fillers))
    num_stored = int(positions.size) + num_fillers
    index = index_bits * num_stored
    return index + huffman + codebook_bits, index, huffman, entropy, num_fillers, num_stored


def _layer_storage(
    name: str,
    module: str,
    kind: str,
    tensor: torch.Tensor,
    index_bits: int,
    num_bias: int,
    orders: Sequence[str],
    original: tuple[int, int],
) -> LayerStorage:
    array = tensor.detach().cpu().numpy()
    matrix = array.reshape(array.shape[0] if array.ndim else 1, -1)
    flat = matrix.reshape(-1)
    if not np.all(np.isfinite(flat)):
        raise ValueError(f"parameter {name!r} has non-finite values")
    num_entries = int(flat.size)
    # sizes before remove_dead_units: what the rate and the non-zero fraction refer to
    num_params, num_original_bias = original
    nonzero = flat[flat != 0]
    num_nonzero = int(nonzero.size)
    values, value_counts = np.unique(nonzero, return_counts=True)
    num_distinct = int(values.size)
    codebook_bits = BITS_PER_FLOAT * num_distinct

    # sparse: the cheaper traversal order; ties go to the first (row)
    sparse = {
        order: _sparse_layout(matrix, order, value_counts, index_bits, codebook_bits)
        for order in orders
    }
    order = min(sparse, key=lambda o: sparse[o][0])
    sparse_bits, sparse_index, sparse_huffman, sparse_entropy, num_fillers, num_sparse_stored = (
        sparse[order]
    )

    # full: one cluster index per entry, zero as its own symbol; no positions
    full_symbols = np.append(value_counts, num_entries - num_nonzero)
    full_huffman, full_entropy = _coded_bits(full_symbols)
    full_bits = full_huffman + codebook_bits

    raw_bits = BITS_PER_FLOAT * num_entries

    # cheapest layout; ties go to the first (sparse, then full)
    layouts = [
        (
            "sparse",
            sparse_bits,
            sparse_index,
            sparse_huffman,
            sparse_entropy,
            codebook_bits,
            0,
            num_fillers,
            num_sparse_stored,
        ),
        ("full", full_bits, 0, full_huffman, full_entropy, codebook_bits, 0, 0, num_entries),
        ("raw", raw_bits, 0, 0, 0.0, 0, raw_bits, 0, num_entries),
    ]
    fmt, weight_bits, rel_bits, huff_bits, ent_bits, cb_bits, raw_part, fillers, stored = min(
        layouts, key=lambda layout: layout[1]
    )
    if fmt != "sparse":
        order = "row"
    bias_bits = BITS_PER_FLOAT * num_bias
    total_bits = weight_bits + bias_bits
    total_bits_entropy = rel_bits + ent_bits + cb_bits + raw_part + bias_bits
    original_bits = BITS_PER_FLOAT * (num_params + num_original_bias)
    return LayerStorage(
        name=name,
        module=module,
        kind=kind,
        shape=tuple(tensor.shape),
        num_params=num_params,
        num_nonzero=num_nonzero,
        nonzero_fraction=num_nonzero / num_params if num_params else 0.0,
        num_distinct=num_distinct,
        storage_format=fmt,
        order=order,
        index_bits=int(index_bits),
        num_fillers=fillers,
        num_stored=stored,
        relative_index_bits=rel_bits,
        cluster_index_bits=huff_bits,
        entropy_bits=ent_bits,
        codebook_bits=cb_bits,
        raw_bits=raw_part,
        weight_bits=weight_bits,
        num_bias=num_bias,
        bias_bits=bias_bits,
        total_bits=total_bits,
        total_bits_entropy=total_bits_entropy,
        original_bits=original_bits,
        compression_rate=_rate(original_bits, total_bits),
        compression_rate_entropy=_rate(original_bits, total_bits_entropy),
        sparse_bits=sparse_bits,
        full_bits=full_bits,
    )


_STORAGE_ORDERS: dict[str, tuple[str, ...]] = {
    "best": ("row", "column"),
    "row": ("row",),
    "column": ("column",),
}


def _uncompressed_counts(
    params: Mapping[str, torch.Tensor], names: Sequence[str]
) -> tuple[dict[str, int], int]:
    """Parameters stored at 32 bits: per compressed row (the rest of its module), and others."""
    name_set = set(names)
    first_row_of_module: dict[str, str] = {}
    for name in params:  # named_parameters order, so the weight (defined first) owns the bias
        if name in name_set:
            first_row_of_module.setdefault(_owner(name), name)
    num_bias = dict.fromkeys(names, 0)
    other_params = 0
    for name, p in params.items():
        if name in name_set:
            continue
        row = first_row_of_module.get(_owner(name))
        if row is None:
            other_params += p.numel()
        else:
            num_bias[row] += p.numel()
    return num_bias, other_params


def _rate(original_bits: int, bits: float) -> float:
    """Compression rate: the 32-bit dense size over the compressed size."""
    return original_bits / bits if bits else math.inf


def storage_report(
    net: nn.Module,
    *,
    param_names: Sequence[str] | None = None,
    index_bits: int | Mapping[str, int] | None = None,
    order: Literal["best", "row", "column"] = "best",
    reference: nn.Module | None = None,
) -> StorageReport:
    """Count the bits to store ``net`` after pruning and weight sharing.

    Rules (Han, Mao & Dally 2016; as reported by Ullrich et al. 2017):

    * Every tensor in ``param_names`` (default :func:`default_param_names`) is one
      row of the report, viewed as a matrix ``(shape[0], -1)`` (output units by
      inputs). Its codebook holds its distinct non-zero values at 32 bits each;
      zero is implicit (cluster index "zero").
    * **sparse** layout (CSR- or CSC-style over the flattened matrix, no row
      pointers), traversed row by row (``order="row"``: each output unit's
      inputs, the row-major order of the tensor) or column by column
      (``"column"``: each input's output units, the layout of Han et al.'s EIE
      accelerator); ``"best"`` (default) takes the cheaper per tensor:
      each non-zero stores a relative index of ``index_bits`` bits, the number of
      zeros skipped since the previous stored entry, at most
      ``2**index_bits - 1``; a longer run of zeros adds filler entries (stored
      zeros, :func:`relative_index_fillers`), and every stored entry, filler or
      not, costs an index *and* a cluster index. Cluster indices are
      Huffman-coded (:func:`huffman_code`) over the stored entries' symbols,
      fillers counting as the zero symbol. Trailing zeros cost nothing.
    * **full** layout: a Huffman-coded cluster index for every entry (zeros as
      one more symbol) and the codebook; no indices.
    * **raw** layout: 32 bits per entry (an unquantised tensor).
    * The row uses the cheapest of the three; a quantised sparse layer is sparse,
      a quantised layer with few zeros is full, an unquantised one is raw. (At
      about 20 % non-zeros and a handful of shared values the full layout already
      rivals 5-bit relative indices: a zero costs one Huffman bit there.)
    * ``index_bits``: ``None`` uses 8 for convolutions and 5 for dense layers
      (:func:`layer_kind`); an int applies to every row; a mapping from parameter
      name gives per-row widths (missing names use the default).
    * Parameters not in ``param_names`` are stored at 32 bits: in the row of the
      compressed tensor of the same module (``bias_bits``) or, for modules with
      none, in ``other_bits``. Buffers (e.g. batch-norm statistics) are not counted.
    * Compression rate = 32 × (all parameters, biases included) ÷ total bits.
      The few bits a decoder needs to tell the layout, order and shape of each
      tensor are not counted (nor are they by Han et al.).
    * ``reference``: the network ``net`` was made from by
      :func:`remove_dead_units` (same parameter names, larger shapes). Its
      sizes are the uncompressed ones: ``original_bits``, ``num_params`` and the
      non-zero fractions refer to it, so rates stay comparable.

    Example: a dense 1×40 weight with non-zeros ``a`` at positions 0 and 35 and
    ``b`` at 39, 5-bit indices: skips 0, 34, 3, so one filler (34 ≥ 32) and 4
    stored entries: 20 index bits; symbols a:2, zero:1, b:1 give Huffman lengths
    1, 2, 2 = 6 bits; codebook 64 bits; 90 bits for the weight.
    """
    names = _check_param_names(net, param_names)
    orders = _STORAGE_ORDERS.get(order)
    if orders is None:
        raise ValueError(f"order must be one of {sorted(_STORAGE_ORDERS)}; got {order!r}")
    if (
        index_bits is not None
        and not isinstance(index_bits, Mapping)
        and (int(index_bits) != index_bits or index_bits < 1)
    ):
        raise ValueError(f"index_bits must be a positive integer; got {index_bits!r}")
    if isinstance(index_bits, Mapping):
        unknown = sorted(set(index_bits) - set(names))
        if unknown:
            raise ValueError(f"index_bits names {unknown} are not compressed parameters {names}")
    params = dict(net.named_parameters())
    num_bias, other_params = _uncompressed_counts(params, names)
    # the uncompressed sizes: of the reference (the network before remove_dead_units), or net's
    ref_params = params if reference is None else dict(reference.named_parameters())
    if list(ref_params) != list(params):
        raise ValueError(
            "reference must have the same parameter names as net (the network "
            f"remove_dead_units started from); got {list(ref_params)} and {list(params)}"
        )
    ref_bias = num_bias if reference is None else _uncompressed_counts(ref_params, names)[0]
    originals = {name: (ref_params[name].numel(), ref_bias[name]) for name in names}
    num_params = sum(p.numel() for p in ref_params.values())

    name_set = set(names)
    layers = []
    for name in params:
        if name not in name_set:
            continue
        kind = layer_kind(net, name)
        if index_bits is None:
            bits = DEFAULT_INDEX_BITS[kind]
        elif isinstance(index_bits, Mapping):
            bits = int(index_bits.get(name, DEFAULT_INDEX_BITS[kind]))
        else:
            bits = int(index_bits)
        layers.append(
            _layer_storage(
                name,
                _owner(name),
                kind,
                params[name],
                bits,
                num_bias[name],
                orders,
                originals[name],
            )
        )

    num_compressed = sum(r.num_params for r in layers)
    num_nonzero = sum(r.num_nonzero for r in layers)
    other_bits = BITS_PER_FLOAT * other_params
    total_bits = sum(r.total_bits for r in layers) + other_bits
    total_bits_entropy = sum(r.total_bits_entropy for r in layers) + other_bits
    original_bits = BITS_PER_FLOAT * num_params
    return StorageReport(
        layers=tuple(layers),
        num_params=num_params,
        num_compressed_params=num_compressed,
        num_nonzero=num_nonzero,
        nonzero_fraction=num_nonzero / num_compressed if num_compressed else 0.0,
        bias_bits=sum(r.bias_bits for r in layers),
        other_params=other_params,
        other_bits=other_bits,
        total_bits=total_bits,
        total_bits_entropy=total_bits_entropy,
        original_bits=original_bits,
        compression_rate=_rate(original_bits, total_bits),
        compression_rate_entropy=_rate(original_bits, total_bits_entropy),
    )


def stored_network(
    net: nn.Module,
    *,
    param_names: Sequence[str] | None = None,
    index_bits: int | Mapping[str, int] | None = None,
    remove_dead: bool = False,
) -> tuple[nn.Module, StorageReport]:
    """The network as it would be stored, and its :func:`storage_report`.

    With ``remove_dead=True`` that is :func:`remove_dead_units`'s smaller
    network, counted against ``net``'s sizes (``reference=net``); otherwise
    ``net`` itself. The one place both soft weight-sharing's pipeline and the
    Deep Compression baseline count their bits, so they stay comparable.
    """
    stored = remove_dead_units(net).net if remove_dead else net
    report = storage_report(
        stored,
        param_names=param_names,
        index_bits=index_bits,
        reference=net if remove_dead else None,
    )
    return stored, report


# --------------------------------------------------------------------------- plots


def _to_named_arrays(obj: Any, label: str) -> dict[str, np.ndarray]:
    if isinstance(obj, nn.Module):
        return {
            n: p.detach().cpu().numpy().ravel() for n, p in obj.named_parameters() if p.ndim >= 2
        }
    if isinstance(obj, Mapping):
        return {
            n: np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v).ravel()
            for n, v in obj.items()
        }
    if isinstance(obj, torch.Tensor):
        return {label: obj.detach().cpu().numpy().ravel()}
    return {label: np.asarray(obj).ravel()}


def plot_weights_before_after(
    before: Any,
    after: Any,
    assignments: Any = None,
    *,
    max_points: int = 20_000,
    seed: int = 0,
    title: str | None = None,
):
    """Scatter each weight before against after retraining (Ullrich et al. 2017, Fig. 1).

    Parameters
    ----------
    before, after : Tensor, array, dict name -> Tensor, or nn.Module
        Weights before (e.g. pretrained) and after (retrained or quantised).
        Dicts are matched by key (the keys of ``before``); a module contributes
        its parameters with ``ndim >= 2``.
    assignments : same form as ``after``, optional
        Component of each weight (e.g. :attr:`QuantizeResult.assignments`),
        used for the colours; by default each distinct value of ``after`` is
        one colour class.
    max_points : int
        At most this many weights are drawn (a fixed random subset); the
        marginal histograms use all of them.

    Returns
    -------
    matplotlib.figure.Figure
        Scatter with histograms of ``before`` (top, log counts) and ``after``
        (right, log counts).
    """
    from matplotlib.figure import Figure

    b, a = _to_named_arrays(before, "weights"), _to_named_arrays(after, "weights")
    missing = [k for k in b if k not in a]
    if missing:
        raise ValueError(f"`after` has no weights for {missing}; keys of `after`: {sorted(a)}")
    x = np.concatenate([b[k] for k in b]).astype(np.float64)
    y = np.concatenate([a[k] for k in b]).astype(np.float64)
    if x.shape != y.shape:
        raise ValueError(f"before and after hold {x.size} and {y.size} weights; they must match")
    if assignments is None:
        _, classes = np.unique(y, return_inverse=True)
    else:
        c = _to_named_arrays(assignments, "weights")
        missing = [k for k in b if k not in c]
        if missing:
            raise ValueError(f"`assignments` has no entries for {missing}; keys: {sorted(c)}")
        classes = np.concatenate([c[k] for k in b])
        if classes.shape != x.shape:
            raise ValueError(f"assignments hold {classes.size} entries for {x.size} weights")
    classes = np.asarray(classes).astype(np.int64).ravel()

    rng = np.random.default_rng(seed)
    shown = (
        rng.choice(x.size, size=max_points, replace=False)
        if x.size > max_points
        else np.arange(x.size)
    )

    fig = Figure(figsize=(6.5, 6.0), layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=(4, 1), height_ratios=(1, 4))
    ax = fig.add_subplot(grid[1, 0])
    ax_top = fig.add_subplot(grid[0, 0], sharex=ax)
    ax_right = fig.add_subplot(grid[1, 1], sharey=ax)
    ax.scatter(
        x[shown],
        y[shown],
        c=classes[shown] % 20,
        cmap="tab20",
        vmin=0,
        vmax=19,
        s=4,
        alpha=0.6,
        linewidths=0,
    )
    ax.axhline(0.0, color="0.6", lw=0.5, zorder=0)
    ax.set_xlabel("weight before")
    ax.set_ylabel("weight after")
    bins = 100
    ax_top.hist(x, bins=bins, color="0.4", log=True)
    ax_right.hist(y, bins=bins, color="0.4", log=True, orientation="horizontal")
    ax_top.tick_params(labelbottom=False)
    ax_right.tick_params(labelleft=False)
    ax_top.set_ylabel("count")
    ax_right.set_xlabel("count")
    if title:
        fig.suptitle(title)
    return fig


def plot_layer_sparsity(report: StorageReport, *, title: str | None = None):
    """Bar chart of the non-zero share of each compressed layer.

    Each bar is annotated with the layer's compression rate; the figure title
    carries the totals.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    names = [r.name for r in report.layers]
    shares = [100.0 * r.nonzero_fraction for r in report.layers]
    fig = Figure(figsize=(max(4.0, 1.0 + 0.9 * len(names)), 3.5), layout="constrained")
    ax = fig.add_subplot()
    bars = ax.bar(range(len(names)), shares, color="tab:blue")
    for bar, row in zip(bars, report.layers, strict=True):
        ax.annotate(
            f"{row.compression_rate:.0f}×",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("non-zero weights (%)")
    ax.set_ylim(0, max([*shares, 1.0]) * 1.15)
    totals = (
        f"{100 * report.nonzero_fraction:.2f}% non-zero, compression {report.compression_rate:.1f}×"
    )
    fig.suptitle(title or totals)
    return fig
