"""From soft to hard weight sharing: merge near-coincident components and quantise.

After retraining under the mixture prior (Ullrich, Meeds & Welling 2017), every
weight is sent to the mean of its most responsible component,

.. math::

    k(w) = \\arg\\max_j \\; \\log \\pi_j + \\log \\mathcal{N}(w \\mid \\mu_j, \\sigma_j^2)
    \\qquad \\text{(argmax of PRML 5.140)},

(:func:`bayes_sws.core.penalty.assign`, the one home of that argmax), components
whose distributions nearly coincide are merged first (:func:`merge_components`),
and the zero component (``mu_0 = 0``) prunes. :func:`quantize` does this on a deep
copy of an ordinary :class:`torch.nn.Module` from plain tensors ``pi, mu, sigma``;
it needs no Pyro.

The rest of the compression lives beside this module: codebook fine-tuning
(:mod:`.codebook`), removing dead units (:mod:`.surgery`), Huffman coding
(:mod:`.coding`), storage accounting (:mod:`.storage`) and plots (:mod:`.plots`).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..core.penalty import assign
from .params import check_param_names

__all__ = ["QuantizeResult", "merge_components", "quantize"]


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
    """
    names = check_param_names(net, param_names)
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
    mixture = tuple(torch.as_tensor(a) for a in (pi_, mu_, sigma_))
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
            merged = map_t[assign(p, *mixture)]
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
