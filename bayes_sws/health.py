"""Health checks: a result that is useless says so, in one line each.

Every check returns a list of :class:`Finding` (empty when healthy) and, with
``warn=True`` (the default), also issues each as a :class:`HealthWarning`, a
``UserWarning`` subclass users can filter::

    import warnings, bayes_sws as sws
    warnings.simplefilter("error", sws.HealthWarning)   # make useless results fatal

The command line prints each as one ``bayes-sws: warning: ...`` line and records
them under ``"health"`` in ``metrics.json`` / ``compression.json``.

========================= ====================================================
check                     flags
========================= ====================================================
:func:`check_converged`   SVI loss still falling at the end (trend test)
:func:`check_prediction`  a classifier that predicts (almost) a single class
:func:`check_mixture`     a prior scale that pulled every mean onto zero
:func:`check_compression` accuracy or RMSE after compression much worse
:func:`check_nuts`        divergences, tree-depth saturation, R-hat / ESS
========================= ====================================================
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "chain_convergence",
    "COMPRESSION_ACCURACY_DROP",
    "COMPRESSION_RMSE_RATIO",
    "Finding",
    "HealthWarning",
    "check_compression",
    "check_converged",
    "check_mixture",
    "check_nuts",
    "check_prediction",
]

#: Accuracy lost by compression (absolute, 0.05 = 5 points) above which it is flagged.
COMPRESSION_ACCURACY_DROP = 0.05
#: RMSE after / before compression above which it is flagged.
COMPRESSION_RMSE_RATIO = 1.25


class HealthWarning(UserWarning):
    """A result that is technically valid but practically useless (see :mod:`.health`)."""


@dataclass(frozen=True)
class Finding:
    """One health problem: which check, and the one-line message with its remedy."""

    check: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"check": self.check, "message": self.message}


def _report(findings: list[Finding], warn: bool) -> list[Finding]:
    if warn:
        for finding in findings:
            warnings.warn(finding.message, HealthWarning, stacklevel=3)
    return findings


# ---------------------------------------------------------------------- SVI
def check_converged(
    losses: Sequence[float] | np.ndarray,
    *,
    window: float = 0.2,
    tolerance: float = 0.01,
    warn: bool = True,
) -> list[Finding]:
    r"""Flag a loss that is still falling at the end of the run.

    A least-squares line is fitted to the last ``window`` share of the losses
    (at least 40 steps; runs shorter than 80 steps are not judged). The run has
    not converged when the line predicts a relative decrease over that window
    larger than ``tolerance`` *and* the slope is significantly negative
    (:math:`t < -4` against its standard error, so mini-batch noise around a
    plateau does not count). The message names the slope (loss per step), the fall over
    the window and its share of the whole run's (from the median of its first window).
    :func:`bayes_sws.fit` runs this check on every run that reaches its
    ``num_steps``.
    """
    values = np.asarray(losses, dtype=np.float64)
    values = values[np.isfinite(values)]
    count = max(40, int(len(values) * window))
    if len(values) < 2 * count:
        return []
    tail = values[-count:]
    steps = np.arange(count, dtype=np.float64)
    slope, intercept = np.polyfit(steps, tail, 1)
    residual = tail - (slope * steps + intercept)
    spread = np.sqrt(np.sum(residual**2) / (count - 2) / np.sum((steps - steps.mean()) ** 2))
    drop = -slope * (count - 1)
    scale = max(abs(float(np.median(tail))), 1e-12)
    t_stat = slope / spread if spread > 0 else -math.inf if slope < 0 else 0.0
    if drop / scale > tolerance and t_stat < -4:
        # the fall as a share of the whole run's, not of the loss's level (near zero, or
        # crossing it, for a MAP loss, a percentage of the level says nothing)
        whole = float(np.median(values[:count])) - (slope * (count - 1) + intercept)
        share = f" ({100 * drop / whole:.0f} % of the run's whole fall)" if whole > 0 else ""
        return _report(
            [
                Finding(
                    "converged",
                    f"SVI has not converged: the loss is still falling, slope {slope:.3g} per "
                    f"step; it fell {drop:.4g} over the last {count} steps{share}; "
                    "run more steps (or raise the lr)",
                )
            ],
            warn,
        )
    return []


# ---------------------------------------------------------------------- predictions
def check_prediction(
    predicted: Any, *, num_classes: int | None = None, share: float = 0.99, warn: bool = True
) -> list[Finding]:
    """Flag a classifier whose predictions are (almost, ``share``) all one class."""
    labels = np.asarray(predicted).reshape(-1)
    if labels.size == 0:
        return []
    values, counts = np.unique(labels, return_counts=True)
    top = counts.argmax()
    if counts[top] / labels.size >= share and (num_classes is None or num_classes > 1):
        return _report(
            [
                Finding(
                    "prediction",
                    f"the network predicts class {values[top]} for "
                    f"{100 * counts[top] / labels.size:.1f} % of inputs: a majority-class "
                    "predictor; lower the prior scale or check the data",
                )
            ],
            warn,
        )
    return []


def check_mixture(
    mu: Any,
    weights: Any,
    *,
    zero_component: bool = True,
    tolerance: float = 0.02,
    warn: bool = True,
) -> list[Finding]:
    """Flag a mixture whose non-zero means all collapsed onto 0.

    That happens when the prior scale λ overwhelms the data term: every weight is
    pulled into the zero spike. Flagged when every free mean lies within
    ``tolerance`` times the weights' standard deviation of 0.
    """
    means = np.asarray(mu, dtype=np.float64).reshape(-1)
    free = means[1:] if zero_component else means
    spread = float(np.std(np.asarray(weights, dtype=np.float64)))
    if free.size == 0 or spread == 0:
        return []
    if np.all(np.abs(free) <= tolerance * spread):
        return _report(
            [
                Finding(
                    "mixture",
                    f"every component mean is within {tolerance:g} weight standard deviations "
                    "of 0: the prior scale pulled the weights onto zero; lower --prior-scale",
                )
            ],
            warn,
        )
    return []


def check_compression(
    before: Mapping[str, float | None],
    after: Mapping[str, float | None],
    *,
    accuracy_drop: float = COMPRESSION_ACCURACY_DROP,
    rmse_ratio: float = COMPRESSION_RMSE_RATIO,
    warn: bool = True,
) -> list[Finding]:
    """Flag compression that cost much accuracy (or RMSE): thresholds stated and configurable.

    ``before`` and ``after`` hold ``accuracy`` or ``rmse`` (``None`` when not measured).
    """
    findings = []
    a0, a1 = before.get("accuracy"), after.get("accuracy")
    if a0 is not None and a1 is not None and a0 - a1 > accuracy_drop:
        findings.append(
            Finding(
                "compression",
                f"compression lost {100 * (a0 - a1):.1f} accuracy points ({100 * a0:.2f} % -> "
                f"{100 * a1:.2f} %, more than {100 * accuracy_drop:g}); the compressed network "
                "is much worse: lower the prior scale or the merge threshold",
            )
        )
    r0, r1 = before.get("rmse"), after.get("rmse")
    if r0 is not None and r1 is not None and r0 > 0 and r1 / r0 > rmse_ratio:
        findings.append(
            Finding(
                "compression",
                f"compression raised the RMSE {r1 / r0:.2f}-fold ({r0:.4g} -> {r1:.4g}, more "
                f"than {rmse_ratio:g}); lower the prior scale or the merge threshold",
            )
        )
    return _report(findings, warn)


# ---------------------------------------------------------------------- NUTS
def _split_chains(values: np.ndarray) -> np.ndarray:
    """Each chain cut into its first and second half (the middle draw of an odd count dropped)."""
    half = values.shape[1] // 2
    return np.concatenate([values[:, :half], values[:, -half:]], axis=0)


def _rank_normalised(values: np.ndarray) -> np.ndarray:
    """Draws replaced by normal scores of their pooled ranks (Vehtari et al. 2021, eq. 14)."""
    from scipy.special import ndtri
    from scipy.stats import rankdata

    ranks = rankdata(values, method="average").reshape(values.shape)
    return ndtri((ranks - 0.375) / (values.size + 0.25))


def _r_hat(chains: np.ndarray) -> float:
    """Potential scale reduction of ``(chain, draw)`` draws (BDA3 eq. 11.4)."""
    n = chains.shape[1]
    within = float(np.mean(np.var(chains, axis=1, ddof=1)))
    between = n * float(np.var(np.mean(chains, axis=1), ddof=1))
    return math.sqrt(((n - 1) / n * within + between / n) / within)


def _ess(chains: np.ndarray) -> float:
    """Effective sample size of ``(chain, draw)`` draws: Geyer's initial monotone sequence.

    Autocorrelations are pooled over chains as in BDA3 eq. 11.7 (Stan's estimator).
    """
    m, n = chains.shape
    centred = chains - chains.mean(axis=1, keepdims=True)
    size = 1 << (2 * n - 1).bit_length()
    spectrum = np.fft.rfft(centred, size, axis=1)
    autocov = np.fft.irfft(spectrum * np.conj(spectrum), size, axis=1)[:, :n] / n
    within = float(np.mean(autocov[:, 0])) * n / (n - 1)
    var_plus = within * (n - 1) / n
    if m > 1:
        var_plus += float(np.var(chains.mean(axis=1), ddof=1))
    rho = 1.0 - (within - autocov.mean(axis=0)) / var_plus
    rho[0] = 1.0
    total, previous = 0.0, math.inf
    for t in range(0, n - 1, 2):  # pairs (rho_t, rho_t+1) while positive, kept monotone
        pair = float(rho[t] + rho[t + 1])
        if pair <= 0.0:
            break
        pair = min(pair, previous)
        total, previous = total + pair, pair
    tau = max(-1.0 + 2.0 * total, 1.0 / math.log10(m * n))
    return m * n / tau


def chain_convergence(
    quantities: Mapping[str, Any],
) -> tuple[dict[str, float], dict[str, float]]:
    """Rank-normalised split R-hat and bulk ESS (Vehtari et al. 2021) per quantity.

    ``quantities`` maps names to draws shaped ``(chain, draw)``; give identifiable
    ones (the Hamiltonian's energy, sorted means), not label-switching components.
    Empty dicts with fewer than 2 chains or 4 draws per chain, where neither is defined;
    a quantity constant over all draws is left out.
    """
    r_hat: dict[str, float] = {}
    ess: dict[str, float] = {}
    for name, draws in quantities.items():
        values = np.asarray(draws, dtype=float)
        if values.ndim != 2 or values.shape[0] < 2 or values.shape[1] < 4:
            continue
        if not np.all(np.isfinite(values)) or np.ptp(values) == 0:
            continue
        split = _rank_normalised(_split_chains(values))
        r_hat[name] = _r_hat(split)
        ess[name] = _ess(split)
    return r_hat, ess


def check_nuts(
    sample_stats: Mapping[str, Any],
    *,
    max_tree_depth: int,
    r_hat: Mapping[str, float] | None = None,
    ess_bulk: Mapping[str, float] | None = None,
    max_r_hat: float = 1.01,
    min_ess: float = 400.0,
    warn: bool = True,
) -> list[Finding]:
    """Flag divergences, saturated trees and R-hat / ESS of identifiable quantities out of bounds.

    ``sample_stats`` are the per-draw statistics of
    :class:`bayes_sws.infer.mcmc.MCMCResult` (``diverging``, ``tree_depth``).
    ``r_hat`` / ``ess_bulk`` map quantity names to values (pass identifiable
    ones: e.g. predictions or ordered means, not label-switching components).
    """
    findings = []
    diverging = np.asarray(sample_stats["diverging"], dtype=bool)
    if diverging.any():
        findings.append(
            Finding(
                "nuts",
                f"{int(diverging.sum())} of {diverging.size} NUTS transitions diverged: "
                "lengthen the warm-up, raise target_accept_prob (smaller steps), use "
                "full_mass=True, or sample fewer weights",
            )
        )
    depth = np.asarray(sample_stats["tree_depth"])
    saturated = float(np.mean(depth >= max_tree_depth))
    if saturated > 0.1:
        findings.append(
            Finding(
                "nuts",
                f"{100 * saturated:.0f} % of NUTS transitions hit the maximum tree depth "
                f"{max_tree_depth}: the sampler is crawling; use full_mass=True, a longer "
                "warm-up, or fewer weights (raise max_tree_depth only as a last resort)",
            )
        )
    bad_r_hat = {k: v for k, v in (r_hat or {}).items() if not v <= max_r_hat}
    if bad_r_hat:
        worst = max(bad_r_hat, key=lambda k: bad_r_hat[k])
        findings.append(
            Finding(
                "nuts",
                f"R-hat of {len(bad_r_hat)} quantities above {max_r_hat} (worst {worst}: "
                f"{bad_r_hat[worst]:.2f}): the chains disagree; run longer or more chains",
            )
        )
    low_ess = {k: v for k, v in (ess_bulk or {}).items() if not v >= min_ess}
    if low_ess:
        worst = min(low_ess, key=lambda k: low_ess[k])
        findings.append(
            Finding(
                "nuts",
                f"bulk ESS of {len(low_ess)} quantities below {min_ess:g} (lowest {worst}: "
                f"{low_ess[worst]:.0f}): draw more samples",
            )
        )
    return _report(findings, warn)
