"""From soft to hard weight sharing: merge near-coincident components and quantise.

After retraining under the mixture prior (Ullrich, Meeds & Welling 2017), every
weight is sent to the mean of its most responsible component,

.. math::

    k(w) = \\arg\\max_j \\; \\log \\pi_j + \\log \\mathcal{N}(w \\mid \\mu_j, \\sigma_j^2)
    \\qquad \\text{(argmax of PRML 5.140)},

(:func:`bayes_sws.core.penalty.assign`, the one home of that argmax; or, with
``assignment="likelihood"``, the argmax without :math:`\\log \\pi_j`), components
whose distributions nearly coincide are merged first (:func:`merge_components`),
optionally components whose values nearly coincide after assignment
(``value_tolerance``), and the zero component (``mu_0 = 0``) prunes.
:func:`quantize` does this on a deep copy of an ordinary :class:`torch.nn.Module`
from plain tensors ``pi, mu, sigma``; it needs no Pyro. Its result tells the
components merged, those no weight went to, and the number of distinct values
the network really uses (:attr:`QuantizeResult.num_distinct_values`).

The rest of the compression lives beside this module: codebook fine-tuning
(:mod:`.codebook`), removing dead units (:mod:`.surgery`), Huffman coding
(:mod:`.coding`), storage accounting (:mod:`.storage`) and plots (:mod:`.plots`).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..core.penalty import assign
from ..settings import ASSIGNMENTS
from ..validation import check_names
from .params import check_param_names
from .storage import shared_values

__all__ = [
    "QuantizeResult",
    "merge_components",
    "quantize",
    "quantize_groups",
    "quantized_names",
]


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
        (``values[0] == 0`` with ``zero_component=True``). Components no weight
        was assigned to stay in it (see :attr:`num_empty`).
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
    keep_float : tuple of str
        Parameters left unquantised at their 32-bit float values (copied unchanged).
    groups : dict of str to QuantizeResult
        For a network quantised group by group, each with its own mixture
        (:func:`quantize_groups`): every group's own result, whose ``values``
        is that group's codebook. Empty for one shared mixture.
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
    keep_float: tuple[str, ...] = ()
    groups: dict[str, QuantizeResult] = field(default_factory=dict)

    @property
    def num_components(self) -> int:
        """Number of components after merging (empty ones included)."""
        return int(self.values.numel())

    @property
    def num_merged(self) -> int:
        """Original components merged into another: ``M - num_components``."""
        return int(self.component_map.numel()) - self.num_components

    @property
    def num_empty(self) -> int:
        """Components after merging that no weight of ``param_names`` was assigned to."""
        total = torch.zeros(self.num_components, dtype=torch.long)
        for count in self.counts.values():
            total += count
        return int((total == 0).sum())

    @property
    def num_distinct_values(self) -> int:
        """Distinct values the quantised tensors hold, zero included when a weight is pruned.

        What the network really uses: the components some weight went to (two
        components whose values coincide in the parameters' dtype count once).
        """
        return int(shared_values(self.net, self.param_names).size)

    @property
    def num_pruned(self) -> int:
        """Weights exactly zero after quantisation (all quantised parameters)."""
        return sum(int((dict(self.net.named_parameters())[n] == 0).sum()) for n in self.param_names)


def _quantized_names(
    net: nn.Module, param_names: Sequence[str] | None, keep_float: Sequence[str] | str
) -> tuple[list[str], tuple[str, ...]]:
    """The parameters to quantise (``param_names`` less ``keep_float``), and ``keep_float``, checked."""
    names = check_param_names(net, param_names)
    kept = tuple(check_names("keep_float", keep_float) or ())
    outside = [n for n in kept if n not in names]
    if outside:
        raise ValueError(
            f"keep_float {outside} are not among the parameters to quantise {names}; "
            "name quantised parameters (a parameter outside them stays at 32 bits anyway)"
        )
    if len(set(kept)) != len(kept):
        raise ValueError(f"keep_float has duplicates: {list(kept)}")
    quantized = [n for n in names if n not in kept]
    if names and not quantized:
        raise ValueError(f"keep_float {list(kept)} leaves no parameter to quantise")
    return quantized, kept


def quantized_names(
    net: nn.Module,
    param_names: Sequence[str] | None,
    keep_float: Sequence[str] | str,
    groups: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """The parameters :func:`quantize` (or, with ``groups``, :func:`quantize_groups`) would
    quantise: ``param_names`` (or every group's) less ``keep_float``, checked with the same
    errors, so that a caller can refuse a bad ``keep_float`` before any work (e.g. before
    retraining)."""
    if groups is None:
        return _quantized_names(net, param_names, keep_float)[0]
    kept = set(check_names("keep_float", keep_float) or ())
    grouped = [n for names in groups.values() for n in names]
    outside = sorted(kept - set(grouped))
    if outside:
        raise ValueError(f"keep_float {outside} are not in any group {dict(groups)}")
    quantized = [n for n in grouped if n not in kept]
    if not quantized:
        raise ValueError(f"keep_float {sorted(kept)} leaves no parameter to quantise")
    return quantized


def _check_options(assignment: str, value_tolerance: float) -> None:
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"assignment must be one of {ASSIGNMENTS}; got {assignment!r}")
    if not (isinstance(value_tolerance, (int, float)) and 0 <= value_tolerance < math.inf):
        raise ValueError(f"value_tolerance must be a finite number >= 0; got {value_tolerance!r}")


def _merge_close_values(
    pi: np.ndarray,
    mu: np.ndarray,
    sigma: np.ndarray,
    used: np.ndarray,
    tolerance: float,
    zero_component: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Merge used components whose values are within ``tolerance`` × the largest |used value|.

    The second merge of :func:`quantize`, after assignment: the used components
    (``used``; with a zero component, component 0 too, so that values near 0
    join it) go through :func:`merge_components` with the ``"mean"`` criterion
    and the threshold ``tolerance * max |mu[used]|``; the others keep their own
    index. Returns the merged ``pi, mu, sigma`` (``pi`` still summing to 1) and
    the merged index of every input component, groups in the order of their
    smallest input index. ``tolerance == 0`` returns the input unchanged.
    """
    scale = float(np.max(np.abs(mu[used]), initial=0.0))
    candidates = used.copy()
    if zero_component:
        candidates[0] = True
    sub = np.flatnonzero(candidates)
    if not (tolerance > 0 and scale > 0 and sub.size >= 2):
        return pi, mu, sigma, np.arange(mu.size)
    s_pi, s_mu, s_sigma, s_map = merge_components(
        pi[sub],
        mu[sub],
        sigma[sub],
        merge_threshold=tolerance * scale,
        merge_criterion="mean",
        zero_component=zero_component,
    )
    # each component's representative: the smallest index of its group
    first_of_group = sub[np.unique(s_map, return_index=True)[1]]
    owner = np.arange(mu.size)
    owner[sub] = first_of_group[s_map]
    groups = np.unique(owner)
    out_pi, out_mu, out_sigma = pi[groups].copy(), mu[groups].copy(), sigma[groups].copy()
    merged_at = np.searchsorted(groups, first_of_group)
    out_pi[merged_at] = s_pi * pi[sub].sum()
    out_mu[merged_at] = s_mu
    out_sigma[merged_at] = s_sigma
    return out_pi, out_mu, out_sigma, np.searchsorted(groups, owner)


def _assigned(
    params: dict[str, nn.Parameter],
    names: Sequence[str],
    mixture: tuple[np.ndarray, np.ndarray, np.ndarray],
    component_map: np.ndarray,
) -> dict[str, torch.Tensor]:
    """Merged component of every weight of the parameters ``names`` (checked finite).

    The argmax of ``log π_j + log N`` over the original ``mixture``
    (:func:`~bayes_sws.core.penalty.assign`), mapped through ``component_map``.
    """
    pi, mu, sigma = (torch.as_tensor(a) for a in mixture)
    map_t = torch.as_tensor(component_map)
    merged = {}
    for name in names:
        if not torch.all(torch.isfinite(params[name])):
            raise ValueError(f"parameter {name!r} has non-finite values; cannot quantise it")
        merged[name] = map_t[assign(params[name], pi, mu, sigma)]
    return merged


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
    value_tolerance: float = 0.0,
    assignment: Literal["responsibility", "likelihood"] = "responsibility",
    keep_float: Sequence[str] = (),
) -> QuantizeResult:
    """Hard-assign weights to the shared values of a learned mixture.

    Each weight ``w`` goes to its most responsible **original** component,
    ``argmax_j log π_j + log N(w | μ_j, σ_j²)`` (the argmax of γ_j(w), PRML
    5.140, computed in log space so tiny widths do not underflow), and then takes
    the mean of the merged component that one belongs to (see
    :func:`merge_components` for the merge rule;
    :func:`bayes_sws.core.penalty.assign` for the argmax). Assigning before merging
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
    value_tolerance : float
        A second merge after assignment, for components that overlap in value
        only (the symmetric KL keeps a broad and a tight component apart even at
        equal means): two components that weights were assigned to merge when
        their values differ by less than ``value_tolerance`` times the largest
        absolute value in use, nearest pair first (:func:`merge_components` with the
        ``"mean"`` criterion: π adds up, the value is the π-weighted mean), and a
        value that close to 0 joins the zero component (pruned). Empty
        components take no part. Default 0: off, the weights keep their
        component's mean.
    assignment : {"responsibility", "likelihood"}
        ``"responsibility"`` (default): the argmax above, with ``log π_j``.
        ``"likelihood"``: ``argmax_j log N(w | μ_j, σ_j²)``, without π (a
        component with ``π_j = 0`` still never wins). Without π the zero
        component keeps only the weights it explains best by its width.
    keep_float : sequence of str
        Parameters among ``param_names`` left unquantised: copied at their float
        values, absent from ``param_names``, ``assignments`` and ``counts`` of the
        result (and so stored at 32 bits by :func:`storage_report` given the
        result's ``param_names``). Default none.
    """
    names, kept = _quantized_names(net, param_names, keep_float)
    _check_options(assignment, value_tolerance)
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
    # assignment uses the original, unmerged mixture; a component with π = 0 never wins
    weighting = pi_ if assignment == "responsibility" else (pi_ > 0).astype(np.float64)
    quantized = copy.deepcopy(net)
    params = dict(quantized.named_parameters())
    merged = _assigned(params, names, (weighting, mu_, sigma_), component_map)
    used = np.zeros(m_mu.size, dtype=bool)
    for a in merged.values():
        used[torch.unique(a).numpy()] = True
    m_pi, m_mu, m_sigma, value_map = _merge_close_values(
        m_pi, m_mu, m_sigma, used, value_tolerance, zero_component
    )
    values, value_map_t = torch.as_tensor(m_mu), torch.as_tensor(value_map)
    assignments, counts = {}, {}
    with torch.no_grad():
        for name in names:
            p, a = params[name], value_map_t[merged[name]]
            p.copy_(values[a].to(p.dtype))
            assignments[name] = a
            counts[name] = torch.bincount(a.reshape(-1), minlength=values.numel())
    return QuantizeResult(
        net=quantized,
        param_names=tuple(names),
        values=values,
        pi=torch.as_tensor(m_pi),
        sigma=torch.as_tensor(m_sigma),
        component_map=torch.as_tensor(value_map[component_map]),
        assignments=assignments,
        counts=counts,
        zero_component=zero_component,
        keep_float=kept,
    )


def quantize_groups(
    net: nn.Module,
    mixtures: Mapping[str, tuple[Any, Any, Any]],
    groups: Mapping[str, Sequence[str]],
    *,
    zero_component: bool = True,
    keep_float: Sequence[str] = (),
    **options: Any,
) -> QuantizeResult:
    """:func:`quantize` each group of tensors with its own mixture (per-group codebooks).

    ``mixtures[g]`` is the ``(pi, mu, sigma)`` of group ``g``, whose parameters are
    ``groups[g]`` (as ``SWSModel.groups`` and ``SWSModel.mixtures`` give them);
    ``options`` go to :func:`quantize` for every group (merging, assignment,
    ``value_tolerance``). A group's weights take only the values of its own
    codebook, ``result.groups[g].values``.

    The combined result lists the groups' merged components side by side, group
    after group, with one zero component (index 0) for all groups when
    ``zero_component``: ``values`` is the concatenation of the groups' non-zero
    codebooks, each assignment is relabelled into it, ``pi`` is each group's
    ``pi`` times its share of the quantised weights, and ``component_map`` maps the
    groups' original components, concatenated, to it. So ``assignments``,
    ``counts``, :attr:`~QuantizeResult.num_pruned` and codebook fine-tuning work
    as for one mixture. ``result.groups[g].net`` is the network after the
    groups up to ``g``; ``result.net`` has every group quantised.
    """
    missing = sorted(set(groups) - set(mixtures))
    if missing:
        raise ValueError(f"no mixture for the groups {missing}; give one per group")
    quantized = set(quantized_names(net, None, keep_float, groups))  # keep_float checked
    current, results = net, {}
    for group, names in groups.items():
        if not any(n in quantized for n in names):
            continue  # every tensor of the group stays at 32 bits
        results[group] = quantize(
            current,
            *mixtures[group],
            param_names=list(names),
            zero_component=zero_component,
            keep_float=[n for n in names if n not in quantized],
            **options,
        )
        current = results[group].net
    return _combined(results, zero_component)


def _combined(results: dict[str, QuantizeResult], zero_component: bool) -> QuantizeResult:
    """One :class:`QuantizeResult` of the groups' results, components side by side."""
    sizes = {g: sum(int(c.sum()) for c in r.counts.values()) for g, r in results.items()}
    total = sum(sizes.values()) or 1
    start = int(zero_component)
    values, pi, sigma, maps = [], [], [], []
    relabel: dict[str, torch.Tensor] = {}
    for group, r in results.items():
        own = torch.arange(r.num_components) + start - int(zero_component)
        if zero_component:
            own[0] = 0
        relabel[group] = own
        skip = int(zero_component)
        values.append(r.values[skip:])
        pi.append(r.pi[skip:] * sizes[group] / total)
        sigma.append(r.sigma[skip:])
        maps.append(own[r.component_map])
        start += r.num_components - skip
    first = next(iter(results.values()))
    if zero_component:
        values.insert(0, first.values[:1])
        shares = [float(r.pi[0]) * sizes[g] / total for g, r in results.items()]
        pi.insert(0, torch.tensor([sum(shares)], dtype=first.pi.dtype))
        sigma.insert(0, first.sigma[:1])
    order = [n for n, _ in list(results.values())[-1].net.named_parameters()]
    relabelled = {n: relabel[g][a] for g, r in results.items() for n, a in r.assignments.items()}
    assignments = {n: relabelled[n] for n in order if n in relabelled}
    return QuantizeResult(
        net=list(results.values())[-1].net,
        param_names=tuple(assignments),
        values=torch.cat(values),
        pi=torch.cat(pi),
        sigma=torch.cat(sigma),
        component_map=torch.cat(maps),
        assignments=assignments,
        counts={n: torch.bincount(a.reshape(-1), minlength=start) for n, a in assignments.items()},
        zero_component=zero_component,
        keep_float=tuple(n for n in order if any(n in r.keep_float for r in results.values())),
        groups=results,
    )
