r"""Inference: ``fit`` runs SVI on an :class:`~bayes_sws.core.model.SWSModel`.

With ``guide="map"`` (``AutoDelta``) and flat hyperpriors the loss minimised is
exactly :math:`E(w) + \lambda\Omega(w) + \text{const}` (5.139); with proper
hyperpriors it adds :math:`-\log p(\pi, \mu, \sigma)`. Other guides (see
:mod:`bayes_sws.infer.guides`) give a posterior instead of a point, with the same call
and the same result record.

The loop is written with a plain ``torch.optim`` optimiser over the guide's and
the network's parameters (no global param store): parameter groups give the
mixture its own learning rate, and full-batch L-BFGS is one option away.

:func:`fit` is :class:`SVIEngine` split as NumPyro's ``SVI`` is: ``init``
builds the guide and the optimiser (or resumes), ``update`` is one checked step,
``run`` is the step loop with checkpoints and a :class:`FaultPolicy`; one record,
:class:`FitState`, holds the state for checkpoints, rollback and resume alike.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoLaplaceApproximation, init_to_median, init_to_value
from torch import Tensor, nn

from .. import health
from .._progress import progress_bar
from ..core.likelihoods import Categorical
from ..core.model import SWSModel
from ..core.priors import Mixture
from ..core.sites import WEIGHT_PREFIX
from ..devices import resolve_device
from ..optim import adam_for, make_scheduler, step_scheduler
from ..settings import (
    ON_NONFINITE,
    OPTIMIZERS,
    FitSettings,
    map_hyperprior_error,
    steps_per_epoch,
)
from ..validation import check_bool, check_int, check_lr_scheduler, check_real, check_seed
from . import distributed, loaders
from .fastmap import map_loss, priors_key
from .fastvi import elbo_loss, fast_path
from .guides import (
    POINT_GUIDES,
    SiteMoments,
    build_guide,
    check_guide_rank,
    guide_moments,
    guide_name,
    local_params,
    split_guide_parameters,
    warn_default_rank_cost,
)
from .loaders import BatchStream, ReplayWarning, is_batches
from .rng import get_rng_state, rng_preserved, set_rng_state

__all__ = [
    "ON_NONFINITE",
    "OPTIMIZERS",
    "FaultPolicy",
    "FitResult",
    "FitState",
    "NumericalFault",
    "Predictive",
    "ReplayWarning",
    "SVIEngine",
    "VarianceCollapseWarning",
    "as_data",
    "batch_indices",
    "fit",
    "get_rng_state",
    "local_params",
    "network_output",
    "predictive_of_draws",
    "seeded",
    "set_rng_state",
    "steps_per_epoch",
]

#: What :func:`fit` does when a loss or gradient goes non-finite.
# torch.distributions' validation message for a NaN parameter or value of a distribution
_INVALID_VALUES = "found invalid values"


# ---------------------------------------------------------------------- validation
def _positive_number(name: str, value: Any, *, integer: bool = False, allow_none: bool = False):
    """A number (or integer) > 0, in fit's wording ("a number > 0"), through :mod:`.validation`."""
    if integer:
        return check_int(name, value, low=0, low_open=True, allow_none=allow_none)
    return check_real(name, value, low=0, low_open=True, allow_none=allow_none, noun="a number")


def as_data(x: Any, y: Any, model: SWSModel) -> tuple[Tensor, Tensor]:
    """Check and convert inputs and targets for ``model``; errors name the bad value.

    Inputs take the dtype and device of the network's parameters; targets are
    checked against one network output (class range, regression shape).
    """
    like = model.like_tensor()
    tensors = []
    for name, value in (("x", x), ("y", y)):
        if value is None:
            raise ValueError(f"{name} is None; fit needs inputs x and targets y")
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(
                f"{name} must be a tensor or array, got {type(value).__name__}: {err}"
            ) from None
        tensors.append(value.to(like.device))
    x, y = tensors
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"x is empty (shape {tuple(x.shape)}); fit needs at least one data point")
    if y.dim() == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"x and y must have the same number of data points, got x of shape {tuple(x.shape)} "
            f"and y of shape {tuple(y.shape)}"
        )
    x = x.to(like.dtype)
    for name, value in (("x", x), ("y", y)):
        if value.is_floating_point() and not torch.isfinite(value).all():
            bad = (~torch.isfinite(value)).nonzero()[0].tolist()
            raise ValueError(
                f"{name} contains a non-finite value {value[tuple(bad)].item()} at index {bad}; "
                "remove or impute NaN/Inf before fitting"
            )
    try:
        with torch.no_grad():
            output = model.net(x[:2])
    except Exception as err:  # noqa: BLE001 - the network's own error, reworded at the boundary
        raise ValueError(
            f"the network cannot process inputs of shape {tuple(x.shape[1:])} per data point: {err}"
        ) from None
    y = model.likelihood.check_targets(y, output)
    return x, y


class _Batch(NamedTuple):
    """The data of one loss evaluation.

    All the data ``x, y`` with the indices of a mini-batch (``None``: all of it),
    or one batch of a data loader (``subsample`` ``None``) of a data set of ``num_data`` points.
    """

    x: Tensor
    y: Tensor
    subsample: Tensor | None = None
    num_data: int | None = None

    def program(self, model: SWSModel) -> Callable:
        """``model``, told the data-set size when the batch is a loader's."""
        if self.num_data is None:
            return model
        return functools.partial(model, num_data=self.num_data)


def _check_map_hyperpriors(model: SWSModel, guide: str) -> None:
    """Point estimates of the hyperparameters need densities bounded on their support."""
    problems = model.prior.settings.map_problems()
    if problems:
        raise map_hyperprior_error(guide, problems)


# ---------------------------------------------------------------------- numerical faults
#: A loss this many times (its size, at least 1) above the best so far is a divergence.
DIVERGENCE_FACTOR = 1e4


class NumericalFault(FloatingPointError):
    """A non-finite loss, gradient or parameter met by :func:`fit`.

    Attributes
    ----------
    step : int
        The (0-based) step at which it was detected, as passed to ``callback``.
    name : str or None
        The first parameter (guide or network) or model site that went non-finite.
    kind : {"loss", "gradient", "parameter", "divergence"}
        What was found non-finite first, or ``"divergence"``: a finite loss that grew
        by orders of magnitude (:meth:`FaultPolicy.diverged`).
    """

    def __init__(self, message: str, *, step: int, name: str | None, kind: str):
        super().__init__(message)
        self.step, self.name, self.kind = step, name, kind


class VarianceCollapseWarning(UserWarning):
    """A mixture component's σ fell far below the scale of the weights (PRML after eq. 5.144)."""


class _NonFinite(Exception):
    """Raised inside the step closure before the optimiser applies a non-finite update."""

    def __init__(self, kind: str, value: float):
        super().__init__(kind)
        self.kind, self.value = kind, value


def _first_non_finite(named: list[tuple[str, Tensor | None]]) -> str | None:
    for name, value in named:
        if value is not None and value.is_floating_point() and not torch.isfinite(value).all():
            return name
    return None


def _gradient_norms(params: list[Tensor]) -> Tensor:
    """One fused reduction of every gradient: finite iff every gradient is (NaN and Inf propagate)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    try:
        norms = torch._foreach_norm(grads)
    except (AttributeError, RuntimeError):  # pragma: no cover - very old torch
        norms = tuple(g.norm() for g in grads)
    return torch.stack(norms).sum()


def _site_of(param_name: str) -> str:
    """``locs.net.0.weight`` -> ``net.0.weight`` (the Pyro site an autoguide parameter belongs to)."""
    for prefix in ("locs.", "scales.", "loc.", "scale."):
        if param_name.startswith(prefix):
            return param_name[len(prefix) :]
    return param_name


def _diagnose_fault(model, guide, batch: _Batch, named_params, kind) -> tuple[str | None, str, str]:
    """Name the first parameter or site that went non-finite: ``(name, kind, description)``."""
    with torch.no_grad():
        values = [(n, p.detach()) for n, p in named_params]
        bad = _first_non_finite(values)
    if bad is not None:
        param_site = _site_of(bad)
        where = f" (site {param_site!r})" if param_site != bad else ""
        return bad, "parameter", f"parameter {bad!r}{where} is not finite"
    bad_grad = _first_non_finite([(n, p.grad) for n, p in named_params])
    site: str | None = None
    try:  # which site's log-density is non-finite (only on a fault, so its cost does not matter)
        with torch.no_grad(), pyro.validation_enabled(False):
            x, y, index = batch.x, batch.y, batch.subsample
            guide_trace = poutine.trace(guide).get_trace(x, y, index)
            program = poutine.replay(batch.program(model), trace=guide_trace)
            model_trace = poutine.trace(program).get_trace(x, y, index)
            for trace in (model_trace, guide_trace):
                trace.compute_log_prob()
                for name, node in trace.nodes.items():
                    if node["type"] == "sample" and not torch.isfinite(node["log_prob_sum"]).all():
                        site = name
                        break
                if site is not None:
                    break
    except Exception:  # noqa: BLE001 - a diagnosis must not hide the fault it describes
        site = None
    if site is not None:
        text = f"site {site!r} has a non-finite log-density"
        if bad_grad is not None:
            text += f" (first non-finite gradient: parameter {bad_grad!r})"
        return site, kind, text
    if bad_grad is not None:
        return bad_grad, "gradient", f"the gradient of parameter {bad_grad!r} is not finite"
    return None, kind, "no single parameter or site could be named"


# ---------------------------------------------------------------------- predictive
@dataclass(frozen=True, repr=False)
class Predictive:
    r"""Posterior predictive draws at some inputs and their summaries.

    What :meth:`FitResult.predictive` and :meth:`MCMCResult.predictive
    <bayes_sws.infer.mcmc.MCMCResult.predictive>` return.

    Attributes
    ----------
    draws : Tensor
        ``(num_samples, N, ...)`` draws of :math:`y^*`: for every posterior draw
        of the weights one observation from the likelihood
        (:meth:`Likelihood.sample <bayes_sws.core.likelihoods.Likelihood.sample>`:
        class labels, or the mean plus :math:`\mathcal N(0, 1/\beta)` noise, or a
        draw from the mixture density). With ``noise=False`` the likelihood's
        mean per posterior draw instead (class probabilities for classification).
    draw_means : Tensor
        ``(num_draws, N, ...)`` the likelihood's mean per posterior draw (class
        probabilities for classification); ``num_draws`` is 1 for a point estimate.
    point_estimate : bool
        The posterior is a single point (MAP): the draws carry observation noise
        only, and the epistemic uncertainty is not represented.
    classification : bool
        The likelihood is categorical: ``draws`` are labels, see :attr:`probs`.
    noise : bool
        Whether ``draws`` include observation noise.
    """

    draws: Tensor
    draw_means: Tensor
    point_estimate: bool
    classification: bool
    noise: bool = True

    @property
    def num_samples(self) -> int:
        return int(self.draws.shape[0])

    def _values(self) -> Tensor:
        """What ``mean``, ``std`` and ``interval`` summarise: labels say little, probabilities do."""
        return self.draw_means if self.classification else self.draws

    @property
    def mean(self) -> Tensor:
        """Predictive mean per input: of the draws, or the class probabilities :attr:`probs`."""
        return self._values().mean(dim=0)

    @property
    def std(self) -> Tensor:
        """Standard deviation (``n - 1``) of the draws per input; for classification,
        of the class probabilities over posterior draws (0 for a point estimate)."""
        values = self._values()
        if values.shape[0] < 2:
            return torch.zeros_like(values[0])
        return values.std(dim=0)

    def interval(self, prob: float = 0.9) -> tuple[Tensor, Tensor]:
        """Equal-tailed interval holding ``prob`` of the draws per input: the
        ``(1 - prob) / 2`` and ``(1 + prob) / 2`` quantiles (linear interpolation);
        for classification, of the class probabilities over posterior draws."""
        prob = check_real("prob", prob, low=0, high=1, low_open=True, high_open=True)
        values = self._values()
        levels = torch.tensor(
            [(1 - prob) / 2, (1 + prob) / 2], dtype=values.dtype, device=values.device
        )
        lower, upper = torch.quantile(values, levels, dim=0)
        return lower, upper

    @property
    def probs(self) -> Tensor:
        """Classification: the predictive class probabilities, the mean over posterior draws."""
        if not self.classification:
            raise AttributeError("probs is defined for a categorical likelihood only")
        return self.draw_means.mean(dim=0)

    @property
    def entropy(self) -> Tensor:
        r"""Classification: entropy :math:`-\sum_c p_c \ln p_c` (nats) of :attr:`probs` per input."""
        probs = self.probs
        return -torch.special.xlogy(probs, probs).sum(dim=-1)

    def __repr__(self) -> str:
        kind = "classification" if self.classification else "regression"
        what = "with observation noise" if self.noise else "of the mean"
        point = ", point estimate (no epistemic spread)" if self.point_estimate else ""
        shape = tuple(self.draws.shape[1:])
        return (
            f"Predictive({kind}, {self.num_samples} draws {what}, inputs {shape}{point}; "
            f"mean {_preview(self.mean)}, std {_preview(self.std)})"
        )


def _preview(value: Tensor, count: int = 4) -> str:
    """The first ``count`` entries of ``value``, rounded to 4 significant digits."""
    flat = value.detach().reshape(-1).cpu().tolist()
    text = ", ".join(f"{v:.4g}" for v in flat[:count])
    return f"[{text}{', ...' if len(flat) > count else ''}]"


def network_output(model: SWSModel, values: dict[str, Tensor], x: Tensor) -> Tensor:
    """The network's output at ``x`` with the weights of one posterior draw ``values``.

    :meth:`SWSModel.output_at <bayes_sws.core.model.SWSModel.output_at>`.
    """
    return model.output_at(values, x)


def predictive_of_draws(
    model: SWSModel,
    draws: dict[str, Tensor],
    x: Any,
    *,
    num_samples: int,
    noise: bool = True,
    point_estimate: bool = False,
) -> Predictive:
    """A :class:`Predictive` from posterior draws (each site with a leading draw dim).

    One observation per posterior draw; a point estimate (one draw) gives
    ``num_samples`` observations from its single output. Uses torch's global RNG.
    """
    like = model.like_tensor()
    x = torch.as_tensor(x).to(device=like.device, dtype=like.dtype)
    likelihood = model.likelihood
    num_draws = next(iter(draws.values())).shape[0] if draws else 1
    means, samples = [], []
    with torch.no_grad():
        for s in range(num_draws):
            values = {k: v[s] for k, v in draws.items()}
            output = network_output(model, values, x)
            means.append(likelihood.mean(output, values))
            if noise:
                count = num_samples if point_estimate else None
                samples.append(likelihood.sample(output, values, count))
    draw_means = torch.stack(means)
    observed = draw_means  # without noise (a point estimate: its one mean, not copies)
    if noise:
        observed = samples[0] if point_estimate else torch.stack(samples)
    return Predictive(
        observed,
        draw_means,
        point_estimate,
        isinstance(likelihood, Categorical),
        noise,
    )


def seeded(seed: int | None) -> contextlib.AbstractContextManager:
    """Run under ``pyro.set_rng_seed(seed)``, leaving the global RNGs as they were;
    ``None``: draw from the global RNGs as they are."""
    if seed is None:
        return contextlib.nullcontext()
    seed = check_seed("seed", seed)

    @contextlib.contextmanager
    def run():
        with rng_preserved():
            pyro.set_rng_seed(seed)
            yield

    return run()


# ---------------------------------------------------------------------- result
def model_record(model: SWSModel) -> dict[str, Any]:
    """The model's settings a fit records in :attr:`FitResult.config`: ``prior_scale`` (λ)
    and ``tensor_scales`` (λ's multipliers by tensor; ``None`` without them, as in
    checkpoints written before they existed)."""
    return {"prior_scale": model.prior_scale, "tensor_scales": dict(model.tensor_scales) or None}


@dataclass
class FitResult:
    """What :func:`fit` returns: the fitted guide, the loss per step and helpers.

    Attributes
    ----------
    model : SWSModel
        The model; its network holds the fitted values of parameters without prior.
    guide : pyro guide
        The fitted guide (for ``"laplace"``, the Gaussian built at the mode).
    guide_name : str
    losses : numpy.ndarray
        Loss (negative ELBO; for MAP the penalised objective) at every step.
    config : dict
        The settings of the run.
    wall_time : float
        Seconds spent optimising.
    faults : list of NumericalFault
        Non-finite steps rolled back (``on_nonfinite="rollback"``), in order.
    """

    model: SWSModel
    guide: Any
    guide_name: str
    losses: np.ndarray
    config: dict = field(default_factory=dict)
    wall_time: float = 0.0
    faults: list = field(default_factory=list)

    def __repr__(self) -> str:
        """Guide, steps, final loss, wall time and device; never the guide itself."""
        final = f"{float(self.losses[-1]):.6g}" if len(self.losses) else "none"
        faults = f", {len(self.faults)} rolled-back faults" if self.faults else ""
        return (
            f"FitResult(guide={self.guide_name!r}, steps={len(self.losses)}, final loss "
            f"{final}, wall time {self.wall_time:.3g} s, device {self.model.like_tensor().device}"
            f"{faults})"
        )

    @property
    def is_point_estimate(self) -> bool:
        return self.guide_name in POINT_GUIDES

    def convergence_findings(self, *, warn: bool = False) -> list[health.Finding]:
        """:func:`bayes_sws.health.check_converged` on the losses the final objective made.

        A ``callback`` that changes the objective during the run (λ, or a mixture's
        hyperprior, as a warm-up or the precision anneal of
        :func:`~bayes_sws.compress.soft_weight_sharing` do) makes the loss fall for that
        reason alone; only the steps after its last change
        (``config["objective_changed_at"]``, 0 when it never changed) are judged.
        """
        start = int(self.config.get("objective_changed_at", 0))
        return health.check_converged(self.losses[start:], warn=warn)

    def median(self) -> dict[str, Tensor]:
        """Posterior median (MAP for point guides) of every latent site, detached."""
        with local_params(), torch.no_grad():
            return {k: v.detach() for k, v in self.guide.median().items()}

    def mixture(self) -> Mixture:
        """The learned mixture ``(pi, mu, sigma)`` at the posterior median."""
        values = self.median()
        return self.model.prior.mixture(values, self.model.like_tensor())

    def mixtures(self) -> dict[str | None, Mixture]:
        """Every group's learned mixture ``(pi, mu, sigma)`` at the posterior median.

        Keyed by group name as :meth:`bayes_sws.SWSModel.mixtures` (``{None: ...}``,
        the same mixture as :meth:`mixture`, for a model without ``groups``); with
        groups, :meth:`mixture` is their summary and these are each tensor's prior.
        """
        return self.model.mixtures(self.median())

    def moments(self) -> dict[str, SiteMoments]:
        """Every latent site's ``loc`` and marginal ``scale`` (unconstrained) and ``median``.

        :func:`bayes_sws.infer.guides.guide_moments` of the fitted guide: the same
        call for every guide (zeros as the scale of a point estimate).
        """
        return guide_moments(self.guide)

    def map_network(self) -> nn.Module:
        """A plain ``nn.Module`` with the median (MAP) weights, ready for ``torch`` use."""
        return self.model.network_with(self.median())

    def sample_posterior(self, num_samples: int) -> dict[str, Tensor]:
        """Draws of every latent site from the guide, each with a leading ``num_samples`` dim."""
        num_samples = _positive_number("num_samples", num_samples, integer=True)
        draws: dict[str, list[Tensor]] = {}
        with local_params(), torch.no_grad():
            for _ in range(num_samples):
                trace = poutine.trace(self.guide).get_trace()
                for name, site in trace.nodes.items():
                    if site["type"] == "sample" and not site["is_observed"]:
                        if name.startswith("_"):  # internal sites of multivariate guides
                            continue
                        draws.setdefault(name, []).append(site["value"].detach())
        return {name: torch.stack(values) for name, values in draws.items()}

    def predict(self, x: Any, num_samples: int = 100) -> Tensor:
        """Predictive mean: class probabilities (categorical) or the regression mean.

        Point guides use one forward pass of the MAP network; other guides average
        the likelihood's mean over ``num_samples`` posterior draws.
        """
        like = self.model.like_tensor()
        x = torch.as_tensor(x).to(device=like.device, dtype=like.dtype)
        likelihood = self.model.likelihood
        with torch.no_grad():
            if self.is_point_estimate:
                values = self.median()
                return likelihood.mean(network_output(self.model, values, x), values)
            draws = self.sample_posterior(num_samples)
            total = None
            for s in range(num_samples):
                values = {k: v[s] for k, v in draws.items()}
                mean = likelihood.mean(network_output(self.model, values, x), values)
                total = mean if total is None else total + mean
            assert total is not None  # num_samples >= 1 (sample_posterior checks it)
            return total / num_samples

    def predictive(
        self, x: Any, num_samples: int = 100, noise: bool = True, seed: int | None = None
    ) -> Predictive:
        """Posterior predictive draws at ``x`` with their summaries (:class:`Predictive`).

        ``num_samples`` posterior draws from the guide, one observation from the
        likelihood each (``noise=False``: the likelihood's mean per draw). A point
        guide (MAP) has no epistemic spread: its one network gives
        ``num_samples`` observations (``noise=False``: its mean once) and the
        record says ``point_estimate=True``. ``seed`` makes the draws repeat and
        leaves the global RNGs as they were; ``None`` draws from them.
        """
        num_samples = _positive_number("num_samples", num_samples, integer=True)
        noise = check_bool("noise", noise)
        with seeded(seed):
            if self.is_point_estimate:
                draws = {k: v.unsqueeze(0) for k, v in self.median().items()}
            else:
                draws = self.sample_posterior(num_samples)
            return predictive_of_draws(
                self.model,
                draws,
                x,
                num_samples=num_samples,
                noise=noise,
                point_estimate=self.is_point_estimate,
            )


# ---------------------------------------------------------------------- checkpoints
#: Settings that must agree between a checkpoint and the run continuing from it.
RESUME_KEYS = (
    "guide",
    "optimizer",
    "lr",
    "mixture_lr",
    "batch_size",
    "num_particles",
    "init_scale",
    "guide_rank",
    "seed",
    "num_data",
    "prior_scale",
    "tensor_scales",
)


@dataclass
class FitState:
    """Everything :func:`fit` needs to continue a run exactly where it stopped.

    Passed to ``fit(checkpoint=...)`` every ``checkpoint_every`` steps and at the
    end; ``fit(initial_state=state)`` continues from it and reaches bit-identical
    parameters to an uninterrupted run with the same seed (the mini-batch order is
    derived from ``(seed, step)``, and the RNG and optimiser states are restored).

    Attributes
    ----------
    step : int
        Steps completed; the run continues with step ``step``.
    losses : numpy.ndarray
        Loss of each completed step, shape ``(step,)``.
    guide_state : dict
        ``guide.state_dict()`` (the guide's parameters, unconstrained).
    network_state : dict
        Values of the network's parameters without prior (trained as point estimates).
    optimizer_state : dict
        ``optimizer.state_dict()``.
    rng_state : dict
        :func:`get_rng_state` after the last completed step.
    config : dict
        The run's settings (the same dict as :attr:`FitResult.config`).
    wall_time : float
        Seconds spent optimising so far.
    scheduler_state : dict or None
        ``lr_scheduler.state_dict()`` of a run with a learning-rate scheduler
        (stored only then, so checkpoints without one keep their format).
    data_state : dict or None
        Where a run on a data loader stands in it (:meth:`BatchStream.state
        <bayes_sws.infer.loaders.BatchStream.state>`): the epoch, the batches of
        it read, and the RNG and ``torch.Generator`` states the epoch began with,
        so a resumed run reads the same batches. Stored only for such runs.
    """

    step: int
    losses: np.ndarray
    guide_state: dict[str, Tensor]
    network_state: dict[str, Tensor]
    optimizer_state: dict[str, Any]
    rng_state: dict[str, Any]
    config: dict[str, Any]
    wall_time: float = 0.0
    scheduler_state: dict[str, Any] | None = None
    data_state: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain tensors, lists and numbers (loadable with ``torch.load(weights_only=True)``)."""
        data = {
            "step": int(self.step),
            "losses": torch.as_tensor(np.asarray(self.losses, dtype=np.float64)),
            "guide_state": dict(self.guide_state),
            "network_state": dict(self.network_state),
            "optimizer_state": self.optimizer_state,
            "rng_state": self.rng_state,
            "config": dict(self.config),
            "wall_time": float(self.wall_time),
        }
        if self.scheduler_state is not None:
            data["scheduler_state"] = self.scheduler_state
        if self.data_state is not None:
            data["data_state"] = self.data_state
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitState:
        optional = {"scheduler_state", "data_state"}
        missing = sorted(set(cls.__dataclass_fields__) - set(data) - optional)
        if missing:
            raise ValueError(f"a fit state needs the entries {missing}; got {sorted(data)}")
        losses = data["losses"]
        losses = losses.numpy() if torch.is_tensor(losses) else np.asarray(losses, dtype=np.float64)
        return cls(
            step=int(data["step"]),
            losses=np.asarray(losses, dtype=np.float64),
            guide_state=dict(data["guide_state"]),
            network_state=dict(data["network_state"]),
            optimizer_state=data["optimizer_state"],
            rng_state=data["rng_state"],
            config=dict(data["config"]),
            wall_time=float(data["wall_time"]),
            scheduler_state=data.get("scheduler_state"),
            data_state=data.get("data_state"),
        )


def _check_initial_state(state: Any, config: dict[str, Any], num_steps: int | None) -> FitState:
    if isinstance(state, dict):
        state = FitState.from_dict(state)
    if not isinstance(state, FitState):
        raise TypeError(
            f"initial_state must be a FitState (as passed to fit's checkpoint callable), "
            f"got {type(state).__name__}"
        )
    different = [
        f"{key}={state.config.get(key)!r} in the checkpoint but {config[key]!r} now"
        for key in RESUME_KEYS
        if state.config.get(key) != config[key]
    ]
    if different:
        raise ValueError(
            "initial_state comes from a run with other settings: "
            + "; ".join(different)
            + ". Resume with the settings of the checkpointed run"
        )
    too_far = num_steps is not None and state.step > num_steps
    if state.step < 0 or too_far or len(state.losses) != state.step:
        raise ValueError(
            f"initial_state is at step {state.step} with {len(state.losses)} losses; "
            f"it must have one loss per completed step and at most num_steps={num_steps} steps"
        )
    return state


# ---------------------------------------------------------------------- mini-batches
#: Loss evaluations allowed to one L-BFGS line search (strong Wolfe).
_LBFGS_LINE_SEARCH_EVALS = 25


def _lbfgs_stalled(optim: torch.optim.Optimizer) -> bool:
    """Whether L-BFGS's last line search found no step (``t == 0``).

    Its history then never changes again (the step ``s = t·d`` is zero), so every
    later call would repeat the same failed search. Clearing the state restarts
    from steepest descent.
    """
    if not isinstance(optim, torch.optim.LBFGS):
        return False
    state = optim.state.get(optim.param_groups[0]["params"][0], {})
    t = state.get("t")
    return t is not None and float(t) == 0.0


def batch_indices(
    num_data: int, batch_size: int | None, step: int, seed: int, device=None
) -> Tensor | None:
    """Indices of the data points in the mini-batch of ``step``, as :func:`fit` draws them.

    Epoch ``e = step // steps_per_epoch(num_data, batch_size)`` visits the data in
    the order ``torch.randperm(num_data, generator=torch.Generator().manual_seed(
    seed * 1_000_003 + e))``, cut into consecutive batches of ``batch_size`` (a
    last, shorter batch is skipped). Derived rather than stored, so an interrupted
    run resumes on the same batches.

    Parameters
    ----------
    num_data : int
        Data points N.
    batch_size : int or None
        Points per batch; ``None`` or ``>= num_data`` is full batch.
    step : int
        The (0-based) optimisation step.
    seed : int
        The run's seed.
    device : torch.device, optional
        Where the indices go (default: CPU).

    Returns
    -------
    Tensor or None
        ``int64`` indices of shape ``(batch_size,)``; ``None`` for full batch.
    """
    if batch_size is None or batch_size >= num_data:
        return None
    epoch, position = divmod(step, steps_per_epoch(num_data, batch_size))
    perm = _epoch_permutation(num_data, seed, epoch)
    batch = perm[position * batch_size : (position + 1) * batch_size]
    return batch if device is None else batch.to(device)


@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_data: int, seed: int, epoch: int) -> Tensor:
    """The data order of one epoch; cached so it is drawn once per epoch, not per step."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_data, generator=generator)


# ---------------------------------------------------------------------- argument checks
_FIT = FitSettings()


def fit_settings(settings: FitSettings | None, given: dict[str, Any]) -> FitSettings:
    """The :class:`FitSettings` of a call: ``settings``, or the keywords ``given``.

    A keyword given with a value other than its default alongside ``settings``
    is an error (which one should win is not clear), naming the keyword.
    """
    if settings is None:
        return _FIT.replace(**given)
    if not isinstance(settings, FitSettings):
        raise TypeError(
            f"settings must be a bayes_sws.settings.FitSettings, got {type(settings).__name__}"
        )
    both = sorted(
        k for k, v in given.items() if v is not getattr(_FIT, k) and v != getattr(_FIT, k)
    )
    if both:
        raise TypeError(
            f"give settings=FitSettings(...) or the keywords {', '.join(both)}, not both; "
            f"e.g. settings.replace({both[0]}=...)"
        )
    return settings


def _check_run_options(num_steps, callback, checkpoint, checkpoint_every) -> tuple[int, int | None]:
    """Checked ``(num_steps, checkpoint_every)`` of :meth:`SVIEngine.run`."""
    num_steps = _positive_number("num_steps", num_steps, integer=True)
    checkpoint_every = _positive_number(
        "checkpoint_every", checkpoint_every, integer=True, allow_none=True
    )
    if checkpoint is not None and not callable(checkpoint):
        raise TypeError(f"checkpoint must be a callable taking a FitState, got {checkpoint!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be a callable (step, loss) -> bool, got {callback!r}")
    return num_steps, checkpoint_every


def _check_fault_options(on_nonfinite, max_rollbacks, rollback_lr_factor) -> float:
    """Checked ``rollback_lr_factor`` of :class:`FaultPolicy` (the other two are checked only)."""
    if on_nonfinite not in ON_NONFINITE:
        raise ValueError(f"on_nonfinite must be one of {list(ON_NONFINITE)}, got {on_nonfinite!r}")
    check_int("max_rollbacks", max_rollbacks, low=0)
    rollback_lr_factor = _positive_number("rollback_lr_factor", rollback_lr_factor)
    if rollback_lr_factor >= 1:
        raise ValueError(f"rollback_lr_factor must lie in (0, 1), got {rollback_lr_factor!r}")
    return rollback_lr_factor


def _check_engine_options(
    model,
    guide,
    optimizer,
    lr,
    mixture_lr,
    num_particles,
    init_scale,
    guide_rank,
    seed,
    lbfgs_tolerance,
    lr_scheduler,
) -> dict[str, Any]:
    """The checked settings of :class:`SVIEngine` that do not depend on the data."""
    if not isinstance(model, SWSModel):
        raise TypeError(f"model must be a bayes_sws.SWSModel, got {type(model).__name__}")
    name = guide_name(guide)
    lr = _positive_number("lr", lr)
    mixture_lr = _positive_number("mixture_lr", mixture_lr, allow_none=True) or lr
    num_particles = _positive_number("num_particles", num_particles, integer=True)
    init_scale = _positive_number("init_scale", init_scale)
    guide_rank = check_guide_rank(guide, guide_rank)
    seed = check_seed("seed", seed)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; use one of {list(OPTIMIZERS)}")
    lbfgs_tolerance = _positive_number("lbfgs_tolerance", lbfgs_tolerance)
    check_lr_scheduler(lr_scheduler)
    return {
        "guide": name,
        "optimizer": optimizer,
        "lr": lr,
        "mixture_lr": mixture_lr,
        "num_particles": num_particles,
        "init_scale": init_scale,
        "guide_rank": guide_rank,
        "seed": seed,
        "lbfgs_tolerance": lbfgs_tolerance,
    }


class _EngineData(NamedTuple):
    """The checked data of an :class:`SVIEngine`: tensors, or a stream of batches and a probe."""

    x: Tensor | None
    y: Tensor | None
    stream: BatchStream | None
    probe: _Batch  # the data the guide is built on: all of x, y or a loader's first points
    batch_size: int | None
    num_data: int


def _check_engine_data(
    model, guide, name, optimizer, x, y, batch_size, num_data, warn
) -> _EngineData:
    """Checked data of :class:`SVIEngine` (tensors or a loader); the guide's fit to the prior."""
    if is_batches(x, y):
        data = _check_loader_data(model, name, optimizer, x, batch_size, num_data, warn)
    else:
        x, y = as_data(x, y, model)
        size = x.shape[0]
        if num_data is not None and num_data != size:
            raise ValueError(
                f"num_data={num_data!r} but x holds {size} data points; num_data is the size "
                "of the whole data set behind a data loader's batches. Drop it for tensors x, y"
            )
        batch_size = _positive_number("batch_size", batch_size, integer=True, allow_none=True)
        batch_size = min(batch_size or size, size)
        data = _EngineData(x, y, None, _Batch(x, y), batch_size, size)
    if isinstance(guide, str) and guide in ("map", "laplace", "mixed"):
        _check_map_hyperpriors(model, guide)
    if optimizer == "lbfgs":
        if data.batch_size is not None and data.batch_size < data.num_data:
            raise ValueError(
                f"optimizer='lbfgs' is full-batch; got batch_size={data.batch_size} < "
                f"{data.num_data} data points. Drop batch_size or use optimizer='adam'"
            )
        if name not in ("map", "laplace"):
            raise ValueError(
                f"optimizer='lbfgs' needs a point-estimate guide ('map'), got guide={name!r}"
            )
    return data


def _check_loader_data(model, name, optimizer, batches, batch_size, num_data, warn) -> _EngineData:
    """A :class:`BatchStream` over ``batches``, its first data points checked by :func:`as_data`."""
    stream = BatchStream(batches, num_data, warn=warn)
    if batch_size is not None and batch_size != stream.batch_size:
        raise ValueError(
            f"batch_size={batch_size!r} but the data loader makes its own batches (of "
            f"{stream.batch_size}); drop batch_size"
        )
    if optimizer == "lbfgs":
        raise ValueError(
            "optimizer='lbfgs' is full-batch; it needs the data as tensors x, y, not a data "
            "loader. Use optimizer='adam'"
        )
    if name == "laplace":
        raise ValueError(
            "guide='laplace' takes the Hessian of the full-data loss, which needs the data as "
            "tensors x, y; with a data loader use guide='normal', 'lowrank' or 'mixed'"
        )
    x, y = as_data(*stream.probe(), model)
    probe = _Batch(x, y, None, stream.num_data)
    return _EngineData(None, None, stream, probe, stream.batch_size, stream.num_data)


def _stacklevel_outside() -> int:
    """``stacklevel`` for a ``warnings.warn`` in the caller: the first frame outside this
    module (and :mod:`.loaders`, whose replay warnings this module issues)."""
    frame: Any = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename in (__file__, loaders.__file__):
        frame, level = frame.f_back, level + 1
    return level


# ---------------------------------------------------------------------- fault policy
class FaultPolicy:
    """What :meth:`SVIEngine.run` does about a non-finite loss, gradient or parameter.

    ``"raise"`` stops with a :class:`NumericalFault`; ``"rollback"`` keeps the
    state at the start of the current and of the last good step (one
    :class:`FitState` each), and on a fault restores the latter, multiplies the
    learning rates by ``rollback_lr_factor`` and continues, at most
    ``max_rollbacks`` times. See :func:`fit` for the meaning of each option.

    Attributes
    ----------
    faults : list of NumericalFault
        The faults rolled back so far, in order.
    lr_scale : float
        The product of the rollback factors applied so far.
    """

    def __init__(
        self,
        on_nonfinite: str = "raise",
        max_rollbacks: int = 3,
        rollback_lr_factor: float = 0.5,
        divergence_factor: float | None = DIVERGENCE_FACTOR,
    ):
        self.rollback_lr_factor = _check_fault_options(
            on_nonfinite, max_rollbacks, rollback_lr_factor
        )
        if divergence_factor is not None and (
            isinstance(divergence_factor, bool)
            or not isinstance(divergence_factor, (int, float))
            or not divergence_factor > 1
            or not math.isfinite(divergence_factor)
        ):
            raise ValueError(
                f"divergence_factor must be a finite number > 1 or None, got {divergence_factor!r}"
            )
        self.divergence_factor = divergence_factor
        self._best: float | None = None
        self.on_nonfinite, self.max_rollbacks = on_nonfinite, int(max_rollbacks)
        self.faults: list[NumericalFault] = []
        self.lr_scale = 1.0
        self._base_lrs: list[float] | None = None
        # (state, lr_scale when captured): at the start of the current / the last good step
        self._pending: tuple[FitState, float] | None = None
        self._good: tuple[FitState, float] | None = None

    @property
    def rollback(self) -> bool:
        return self.on_nonfinite == "rollback"

    def start(self, engine: SVIEngine) -> None:
        """Take the learning rates the rollback factors scale (once, at the first run)."""
        if self._base_lrs is None:
            self._base_lrs = [group["lr"] for group in engine.optimizer.param_groups]
        if self._best is None and engine.step > 0:  # a resumed run: its losses so far
            self._best = float(np.min(engine.losses[: engine.step]))

    def diverged(self, loss: float) -> bool:
        r"""Whether ``loss`` has grown by orders of magnitude over the best loss so far.

        Divergence is :math:`L_t - \min_{s<t} L_s > f \cdot \max(|\min_{s<t} L_s|, 1)`
        with ``f = divergence_factor`` (default :data:`DIVERGENCE_FACTOR`): mini-batch
        noise and the prior's anneals move the loss by a few times its size, an
        exploding step by many orders of magnitude (``--lr 1e4`` reaches 1e12).
        """
        best = self._best
        if self.divergence_factor is None or best is None:
            self._best = loss if best is None else best
            return False
        if loss - best > self.divergence_factor * max(abs(best), 1.0):
            return True
        self._best = min(best, loss)
        return False

    def before_step(self, engine: SVIEngine) -> None:
        if self.rollback and (self._pending is None or self._pending[0].step != engine.step):
            self._pending = (engine.state(), self.lr_scale)

    def after_step(self) -> None:
        if self.rollback:
            self._good = self._pending

    def describe(
        self,
        engine: SVIEngine,
        at: int,
        kind: str,
        batch: _Batch,
        value: float | None,
        note: str = "",
    ) -> NumericalFault:
        """The :class:`NumericalFault` of step ``at`` on ``batch``, naming the first bad
        parameter or site."""
        if kind == "divergence":
            return NumericalFault(
                f"the loss diverged at step {at}: {value:.4g}, more than "
                f"{self.divergence_factor:g} times the best loss so far ({self._best:.4g}) above "
                f"it. Lower the learning rate (lr={engine.optimizer.param_groups[0]['lr']:g})"
                + ("." if self.rollback else ", or pass on_nonfinite='rollback'.")
                + note,
                step=at,
                name=None,
                kind=kind,
            )
        what = {
            "loss": f"the loss is {value}",
            "gradient": f"the loss is {value} but a gradient is not finite",
            "parameter": "a parameter is not finite",
        }[kind]
        bad, kind, text = _diagnose_fault(
            engine.model, engine.guide, batch, engine._named_params, kind
        )
        return NumericalFault(
            f"non-finite values at step {at} ({what}): {text}. Lower the learning rate "
            f"(lr={engine.optimizer.param_groups[0]['lr']:g}), strengthen the Gamma hyperprior on the "
            "precisions" + ("." if self.rollback else ", or pass on_nonfinite='rollback'.") + note,
            step=at,
            name=bad,
            kind=kind,
        )

    def recover(self, engine: SVIEngine, error: NumericalFault) -> None:
        """Raise ``error``, or roll ``engine`` back to the last good state, with lower rates."""
        if not self.rollback:
            raise error
        if len(self.faults) >= self.max_rollbacks:
            raise NumericalFault(
                f"{error} Gave up after {self.max_rollbacks} rollbacks (learning rates scaled by "
                f"{self.lr_scale:g}).",
                step=error.step,
                name=error.name,
                kind=error.kind,
            ) from None
        self.faults.append(error)
        target = self._good if self._good is not None else self._pending
        assert target is not None, "a rollback policy captures a state before every step"
        engine.restore(target[0])
        self.lr_scale *= self.rollback_lr_factor
        self._scale_learning_rates(engine, target[1])
        self._pending = target
        warnings.warn(
            f"rolled back to step {engine.step} after "
            + (
                f"a divergence at step {error.step}"
                if error.kind == "divergence"
                else f"non-finite values at step {error.step} ({error.name or 'unnamed'})"
            )
            + f"; learning rates scaled by {self.lr_scale:g}",
            RuntimeWarning,
            stacklevel=_stacklevel_outside(),
        )

    def _scale_learning_rates(self, engine: SVIEngine, captured_scale: float) -> None:
        """Rates ``lr_scale`` times the unscaled ones (with a scheduler: its schedule's)."""
        if engine.scheduler is None:
            for group, base in zip(engine.optimizer.param_groups, self._base_lrs or []):
                group["lr"] = base * self.lr_scale
            return
        ratio = self.lr_scale / captured_scale  # the restored state holds captured_scale
        for group in engine.optimizer.param_groups:
            group["lr"] *= ratio
        if getattr(engine.scheduler, "base_lrs", None) is not None:
            engine.scheduler.base_lrs = [base * ratio for base in engine.scheduler.base_lrs]


class _Checkpoints:
    """When the ``checkpoint`` callable of :meth:`SVIEngine.run` is due, and what it last got."""

    def __init__(self, write: Callable[[FitState], None] | None, every: int | None, start: int):
        self.write_fn, self.every, self.last = write, every, start

    def due(self, completed: int) -> bool:
        return self.write_fn is not None and self.every is not None and completed % self.every == 0

    def write(self, state: FitState) -> None:
        assert self.write_fn is not None
        self.write_fn(state)
        self.last = state.step

    def note(self) -> str:
        """The sentence a :class:`NumericalFault` adds about the last checkpoint written."""
        if self.write_fn is not None and self.last > 0:
            return f" The last checkpoint passed to `checkpoint` (step {self.last}) is intact."
        return ""

    def rolled_back(self, step: int) -> None:
        if self.last > step:
            self.last = -1  # rewrite the checkpoint the rolled-back steps will reach

    def finish(self, engine: SVIEngine) -> None:
        if self.write_fn is not None and self.last != engine.step:
            self.write(engine.state())


# ---------------------------------------------------------------------- the engine
class SVIEngine:
    r"""SVI on one :class:`~bayes_sws.core.model.SWSModel` and data set: ``init`` / ``update`` / ``run``.

    The live state is the guide's and the network's parameters, the optimiser
    (and learning-rate scheduler), the RNGs, the step and the losses; one record,
    :class:`FitState`, captures it (:meth:`state`) and loads it back
    (:meth:`restore`), for checkpoints, rollback and resume alike. :func:`fit` is
    ``SVIEngine(...)``, :meth:`init`, :meth:`run` and the result record.

    Parameters
    ----------
    model, x, y, guide
        As for :func:`fit`; ``x`` and ``y`` are checked and converted here
        (``x`` a data loader and ``y`` ``None``: its first data points).
    optimizer, lr, mixture_lr, batch_size, num_particles, init_scale, guide_rank, seed
        As for :func:`fit`.
    num_data, device
        As for :func:`fit`; ``device`` moves ``model`` there now.
    lbfgs_tolerance : float
        ``optimizer="lbfgs"``: a step does not move once the largest absolute
        gradient entry is at most this (``torch.optim.LBFGS``'s ``tolerance_grad``).
    lr_scheduler : callable, optional
        ``lr_scheduler(optimizer)`` returning a ``torch.optim.lr_scheduler``
        scheduler, stepped once after every completed step (``ReduceLROnPlateau``
        with that step's loss); e.g. ``lambda opt: StepLR(opt, step_size=100)``.

    Attributes
    ----------
    model : SWSModel
    x, y : Tensor or None
        The checked data (``None`` for a data loader).
    loader : BatchStream or None
        A data loader's batches, read one per step (:mod:`bayes_sws.infer.loaders`).
    device : torch.device
        Where the model, the guide and every batch are.
    guide : pyro guide
        Built by :meth:`init`.
    optimizer : torch.optim.Optimizer
        Built by :meth:`init`: Adam with a parameter group for the weights (``lr``)
        and one for the mixture and likelihood hyperparameters (``mixture_lr``), or
        full-batch L-BFGS.
    scheduler : torch.optim.lr_scheduler.LRScheduler or None
    config : dict
        The settings (:attr:`FitResult.config`); ``num_steps`` is set by :meth:`run`.
    step : int
        Steps completed.

    Examples
    --------
    With your ``model`` and data ``x``, ``y`` (not run as a doctest):

    >>> engine = SVIEngine(model, x, y, guide="map", lr=1e-3, batch_size=64, seed=0)  # doctest: +SKIP
    >>> engine.init()  # doctest: +SKIP
    >>> losses = [engine.update() for _ in range(100)]  # doctest: +SKIP
    >>> state = engine.state()                # a checkpoint; engine.init(state) resumes  # doctest: +SKIP
    >>> engine.loss(state)                    # E(w) + λΩ(w) − log p(π, μ, σ) (5.139)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: SWSModel,
        x: Any,
        y: Any = None,
        guide: str | Callable = _FIT.guide,
        *,
        settings: FitSettings | None = None,
        optimizer: str = _FIT.optimizer,
        lr: float = _FIT.lr,
        mixture_lr: float | None = _FIT.mixture_lr,
        batch_size: int | None = _FIT.batch_size,
        num_particles: int = _FIT.num_particles,
        init_scale: float = _FIT.init_scale,
        guide_rank: int | None = _FIT.guide_rank,
        seed: int = _FIT.seed,
        lbfgs_tolerance: float = _FIT.lbfgs_tolerance,
        lr_scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        num_data: int | None = None,
        device: str | torch.device | None = None,
    ):
        given = {k: v for k, v in locals().items() if k in FitSettings.names()}
        s = fit_settings(settings, given)
        guide, optimizer = s.guide, s.optimizer
        options = _check_engine_options(
            model,
            guide,
            optimizer,
            s.lr,
            s.mixture_lr,
            s.num_particles,
            s.init_scale,
            s.guide_rank,
            s.seed,
            s.lbfgs_tolerance,
            lr_scheduler,
        )
        weights = model.parameters_with_prior().values()
        warn_default_rank_cost(guide, options["guide_rank"], weights, _stacklevel_outside())
        if device is not None:
            model.to(resolve_device(device))
        data = _check_engine_data(
            model, guide, options["guide"], optimizer, x, y, s.batch_size, num_data, self._warn
        )
        self.x, self.y, self.loader, self._probe = data.x, data.y, data.stream, data.probe
        self._group = distributed.current()  # several processes: bayes_sws.infer.distributed
        self.model, self._guide_spec, self._make_scheduler = model, guide, lr_scheduler
        like = model.like_tensor()
        self.device, self._dtype, self._target_dtype = like.device, like.dtype, data.probe.y.dtype
        self.config = {
            "guide": options["guide"],
            "num_steps": None,
            "optimizer": optimizer,
            "lr": options["lr"],
            "mixture_lr": options["mixture_lr"],
            "batch_size": data.batch_size,
            "num_particles": options["num_particles"],
            "init_scale": options["init_scale"],
            "guide_rank": options["guide_rank"],
            "seed": options["seed"],
            "num_data": data.num_data,
            **model_record(model),
            "input_shape": [int(d) for d in data.probe.x.shape[1:]],
            "lbfgs_tolerance": options["lbfgs_tolerance"],
            "device": str(self.device),
            "num_processes": 1 if self._group is None else self._group.size,
        }
        # built by init(); None until then
        self.guide: Any = None
        self.optimizer: Any = None
        self.scheduler: Any = None
        self.step = 0
        self._losses = np.empty(0)
        self._elapsed, self._running_since = 0.0, None
        self._last_batch: _Batch | None = None

    # ------------------------------------------------------------------ the state record
    @property
    def losses(self) -> np.ndarray:
        """Loss of each completed step, shape ``(step,)`` (a view: copy it to keep it)."""
        return self._losses[: self.step]

    @property
    def wall_time(self) -> float:
        """Seconds spent in :meth:`update` and :meth:`run` (and in the run resumed from)."""
        running = 0.0 if self._running_since is None else time.perf_counter() - self._running_since
        return self._elapsed + running

    def batch(self, step: int) -> Tensor | None:
        """The mini-batch of ``step`` (:func:`batch_indices`); ``None`` for full batch.

        Tensor data only: a data loader's batches are read in its own order.
        """
        if self.loader is not None:
            raise TypeError(
                "the engine reads a data loader, whose batches come in its own order; "
                "engine.batch(step) gives the indices of tensor data x, y"
            )
        config = self.config
        return batch_indices(
            config["num_data"], config["batch_size"], step, config["seed"], self.device
        )

    def state(self) -> FitState:
        """A copy of everything needed to continue exactly from here (see :class:`FitState`)."""
        self._require_init()
        with local_params(), torch.no_grad():
            return FitState(
                step=self.step,
                losses=self.losses.copy(),
                guide_state={k: v.detach().clone() for k, v in self.guide.state_dict().items()},
                network_state={n: p.detach().clone() for n, p in self._free_params.items()},
                optimizer_state=copy.deepcopy(self.optimizer.state_dict()),
                rng_state=get_rng_state(),
                config=dict(self.config),
                wall_time=self.wall_time,
                scheduler_state=(
                    None if self.scheduler is None else copy.deepcopy(self.scheduler.state_dict())
                ),
                data_state=None if self.loader is None else self.loader.state(),
            )

    def restore(self, state: FitState) -> None:
        """Load ``state`` (from :meth:`state`) in place.

        Parameters, optimiser, scheduler, RNGs, step and losses, and the place in
        a data loader; not the wall time.
        """
        self._require_init()
        self._check_data_state(state)
        if (state.scheduler_state is None) != (self.scheduler is None):
            has = "has no" if state.scheduler_state is None else "has an"
            raise ValueError(
                f"initial_state {has} lr_scheduler state but this run "
                f"{'has an' if self.scheduler is not None else 'has no'} lr_scheduler. Resume "
                "with the lr_scheduler of the checkpointed run"
            )
        with local_params():
            try:
                self.guide.load_state_dict(state.guide_state)
            except RuntimeError as err:
                raise ValueError(
                    f"initial_state does not fit this model and guide: {err}. Resume with the "
                    "network, prior and guide of the checkpointed run"
                ) from None
        if set(state.network_state) != set(self._free_params):
            raise ValueError(
                f"initial_state holds network parameters {sorted(state.network_state)} but this "
                f"model trains {sorted(self._free_params)}"
            )
        with torch.no_grad():
            for n, p in self._free_params.items():
                p.copy_(state.network_state[n])
        # copies: the optimiser updates its state tensors in place
        self.optimizer.load_state_dict(copy.deepcopy(state.optimizer_state))
        if self.scheduler is not None:
            self.scheduler.load_state_dict(copy.deepcopy(state.scheduler_state))
        set_rng_state(state.rng_state)
        if self.loader is not None and state.data_state is not None:
            self.loader.restore(state.data_state)
        self._losses = np.array(state.losses, dtype=np.float64)
        self.step = int(state.step)

    def _check_data_state(self, state: FitState) -> None:
        """A state of a run on tensors resumes only on tensors, one on a loader only on a loader."""
        if state.data_state is not None and self.loader is None:
            raise ValueError(
                "initial_state comes from a fit on a data loader but this run has tensors x, y; "
                "resume with the data loader of the checkpointed run"
            )
        if state.data_state is None and self.loader is not None and state.step > 0:
            raise ValueError(
                "initial_state comes from a fit on tensors x, y but this run reads a data "
                "loader; resume with the tensors of the checkpointed run"
            )

    # ------------------------------------------------------------------ init / update / run
    def init(self, initial_state: FitState | dict | None = None) -> FitState:
        """Seed the RNGs, build the guide and the optimiser; resume from ``initial_state``.

        Returns the state after initialisation (:meth:`state`).
        """
        if initial_state is not None:
            initial_state = _check_initial_state(initial_state, self.config, None)
        config, model = self.config, self.model
        pyro.set_rng_seed(config["seed"])
        init_loc_fn = init_to_value(values=model.init_values(), fallback=init_to_median)
        with local_params():
            self.guide = build_guide(
                self._guide_spec,
                model,
                init_loc_fn=init_loc_fn,
                init_scale=config["init_scale"],
                hyper_sites=model.hyper_site_names,
                rank=config["guide_rank"],
            )
            elbo = Trace_ELBO(
                num_particles=config["num_particles"],
                vectorize_particles=config["num_particles"] > 1,
                max_plate_nesting=1,
            )
            # builds the guide's parameters (on the first points of a data loader)
            first = self._probe if self.loader is not None else self._tensor_batch(0)
            elbo.differentiable_loss(
                first.program(model), self.guide, first.x, first.y, first.subsample
            )
            # AutoDelta's loss is the negative log joint: evaluate it without Pyro's tracing
            # (same value and gradients, tested in tests/test_fastmap.py; BENCHMARKS.md "SVI step")
            # likewise the "normal", "mixed" and "lowrank" guides: the same ELBO draw, untraced
            # (tests/infer/test_fastvi.py; BAYES_SWS_FAST_ELBO=0 turns it off)
            self._fast = fast_path(model, self.guide)
            self._elbo = elbo
            self.optimizer = self._build_optimizer()
        self.scheduler = make_scheduler(self._make_scheduler, self.optimizer)
        self.step, self._losses, self._elapsed = 0, np.empty(0), 0.0
        if initial_state is not None:
            self.restore(initial_state)
            self._elapsed = initial_state.wall_time
        return self.state()

    def update(self) -> float:
        """One optimisation step on the mini-batch of :attr:`step`; returns its loss.

        Raises
        ------
        NumericalFault
            The loss or a gradient is not finite; the update is then not applied.
        """
        self._require_init()
        with self._active():
            batch = self._next_batch(self.step)
            try:
                return self._step(batch)
            except _NonFinite as err:
                raise FaultPolicy().describe(self, self.step, err.kind, batch, err.value) from None

    def run(
        self,
        num_steps: int,
        *,
        callback: Callable[[int, float], bool | None] | None = None,
        checkpoint: Callable[[FitState], None] | None = None,
        checkpoint_every: int | None = None,
        faults: FaultPolicy | None = None,
        progress: bool | None = None,
    ) -> np.ndarray:
        """Steps until :attr:`step` is ``num_steps`` or ``callback`` returns ``True``; the losses.

        ``callback``, ``checkpoint``, ``checkpoint_every`` and ``progress`` are
        those of :func:`fit`; ``faults`` (default: raise) decides what a
        non-finite loss, gradient or parameter does.
        """
        num_steps, checkpoint_every = _check_run_options(
            num_steps, callback, checkpoint, checkpoint_every
        )
        self._require_init()
        policy = FaultPolicy() if faults is None else faults
        policy.start(self)
        self.config["num_steps"] = num_steps
        checkpoints = _Checkpoints(checkpoint, checkpoint_every, self.step)
        if len(self._losses) < num_steps:
            self._losses = np.concatenate([self.losses, np.empty(num_steps - self.step)])
        if self._group is not None and self._group.rank > 0:
            progress = False  # one bar, on rank 0
        bar = progress_bar(
            num_steps, desc=f"fit ({self.config['guide']})", progress=progress, initial=self.step
        )
        with self._active(), bar:
            while True:
                self._run_steps(num_steps, callback, checkpoints, policy, bar)
                if self._parameters_finite():
                    break
                # the parameters after the last update have not been used yet: checked once
                at = max(self.step - 1, 0)
                self._recover(policy, checkpoints, at, "parameter", self._batch_of(at), None)
            checkpoints.finish(self)
        return self.losses.copy()

    def loss(self, state: FitState | None = None, *, step: int | None = None) -> float:
        r"""The loss at the current parameters, or at those of ``state``; nothing is updated.

        For ``guide="map"`` it is :math:`E(w) + \lambda\Omega(w) - \log p(\pi, \mu, \sigma)`
        (5.139; the last term is 0 with flat hyperpriors), for other guides one
        ``num_particles`` estimate of the negative ELBO.

        Parameters
        ----------
        state : FitState, optional
            Parameters to evaluate at; the engine's own state is put back after.
        step : int, optional
            Evaluate on the mini-batch of this step (the likelihood scaled by
            ``N / batch_size``); default all the data. Tensor data only.
        """
        self._require_init()
        if self.loader is not None:
            raise TypeError(
                "engine.loss evaluates on all of tensor data x, y or on the batch of a step; "
                "with a data loader read the loss of each step from engine.losses"
            )
        saved = None if state is None else self.state()
        rng = get_rng_state()
        try:
            if state is not None:
                self.restore(state)
            with local_params(), torch.no_grad():
                return float(self._evaluate(self._tensor_batch(step)))
        finally:
            if saved is not None:
                self.restore(saved)
            set_rng_state(rng)

    # ------------------------------------------------------------------ internals
    def _require_init(self) -> None:
        if self.optimizer is None:
            raise RuntimeError(
                "the engine has no guide and optimiser yet; call engine.init() first"
            )

    @contextlib.contextmanager
    def _active(self):
        """Module-local Pyro parameters, and the clock of :attr:`wall_time` (outermost only)."""
        with local_params():
            if self._running_since is not None:
                yield
                return
            self._running_since = time.perf_counter()
            try:
                yield
            finally:
                self._elapsed += time.perf_counter() - self._running_since
                self._running_since = None

    def _build_optimizer(self) -> torch.optim.Optimizer:
        config = self.config
        named_weights, named_hyper = split_guide_parameters(self.guide, self.model.hyper_site_names)
        guide_params = list(self.guide.named_parameters())
        hyper = [p for _, p in named_hyper]
        weights = [p for _, p in named_weights]
        free = {n: p for n, p in self.model.free_parameters().items() if p.requires_grad}
        weights += list(free.values())
        self._free_params = free
        self._named_params = guide_params + [(WEIGHT_PREFIX + n, p) for n, p in free.items()]
        optim: torch.optim.Optimizer
        if config["optimizer"] == "lbfgs":
            # one iteration per step; max_eval must leave the line search its budget
            # (torch's default, max_iter * 5 // 4 = 1, leaves it none: t = 0 from step 2 on)
            optim = torch.optim.LBFGS(
                weights + hyper,
                lr=config["lr"],
                max_iter=1,
                max_eval=1 + _LBFGS_LINE_SEARCH_EVALS,
                tolerance_grad=config["lbfgs_tolerance"],
                line_search_fn="strong_wolfe",
                history_size=20,
            )
        else:
            optim = adam_for(weights, hyper, lr=config["lr"], mixture_lr=config["mixture_lr"])
        self._all_params = [p for group in optim.param_groups for p in group["params"]]
        return optim

    def _evaluate(self, batch: _Batch) -> Tensor:
        """The loss on ``batch``: :func:`map_loss` or :func:`elbo_loss` where they apply,
        else the ELBO's."""
        if self._fast == "elbo":
            return elbo_loss(
                self.model,
                self.guide,
                batch.x,
                batch.y,
                batch.subsample,
                batch.num_data,
                num_particles=self.config["num_particles"],
            )
        if self._fast == "map":
            return map_loss(
                self.model, self.guide, batch.x, batch.y, batch.subsample, batch.num_data
            )
        return self._elbo.differentiable_loss(
            batch.program(self.model), self.guide, batch.x, batch.y, batch.subsample
        )

    def _tensor_batch(self, step: int | None) -> _Batch:
        """All of ``x, y`` with the indices of the mini-batch of ``step`` (``None``: all).

        Under several processes, the indices of this process's shard of it (``step``
        not ``None``).
        """
        assert self.x is not None and self.y is not None, "tensor data only"
        if step is None:
            return _Batch(self.x, self.y, None)
        indices = self.batch(step)
        if self._group is not None:
            num_data = self.config["num_data"]
            indices = distributed.shard(indices, num_data, self._group, self.device)
        return _Batch(self.x, self.y, indices)

    def _next_batch(self, step: int) -> _Batch:
        """The data of ``step``: the indices into ``x, y``, or the loader's next batch."""
        if self.loader is None:
            return self._tensor_batch(step)
        x, y = self.loader.next()
        x = torch.as_tensor(x).to(device=self.device, dtype=self._dtype)
        y = torch.as_tensor(y).to(device=self.device, dtype=self._target_dtype)
        if x.dim() == 0 or y.dim() == 0 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError(
                f"{self.loader.last_read} of the data loader has x of shape "
                f"{tuple(x.shape)} and y of shape {tuple(y.shape)}; each batch needs the same "
                "number (at least 1) of inputs and targets"
            )
        if x.shape[0] > self.config["num_data"]:
            raise ValueError(
                f"{self.loader.last_read} of the data loader holds {x.shape[0]} data points, "
                f"more than num_data={self.config['num_data']}, the size of the whole data set"
            )
        self._last_batch = _Batch(x, y, None, self.config["num_data"])
        return self._last_batch

    def _batch_of(self, step: int) -> _Batch:
        """The data step ``step`` used (for a loader: the last batch read)."""
        if self.loader is None:
            return self._tensor_batch(step)
        return self._probe if self._last_batch is None else self._last_batch

    def _warn(self, message: str) -> None:
        warnings.warn(message, ReplayWarning, stacklevel=_stacklevel_outside())

    def _closure(self, batch: _Batch) -> Tensor:
        """Loss and gradients; :class:`_NonFinite` before the optimiser applies a bad update."""
        self.optimizer.zero_grad()
        try:
            loss = self._evaluate(batch)
        except ValueError as err:  # Pyro's validation meets a NaN first
            if _INVALID_VALUES not in str(err):
                raise
            raise _NonFinite("loss", math.nan) from None
        loss.backward()
        if self._group is not None:  # the average over the processes (one all_reduce)
            count = batch.x.shape[0] if batch.subsample is None else batch.subsample.shape[0]
            loss = distributed.reduce_step(loss, self._all_params, count)
        total = loss.detach() + _gradient_norms(self._all_params)
        if not bool(torch.isfinite(total)):
            value = float(loss.detach())
            kind = "gradient" if math.isfinite(value) else "loss"
            raise _NonFinite(kind, value)
        return loss

    def _step(self, batch: _Batch) -> float:
        """One checked update on ``batch``; records the loss and steps the scheduler."""
        loss = self.optimizer.step(functools.partial(self._closure, batch))
        if _lbfgs_stalled(self.optimizer):
            self.optimizer.state.clear()  # restart from steepest descent next step
        value = float(loss.detach())
        if not math.isfinite(value):
            raise _NonFinite("loss", value)
        if self.step >= len(self._losses):
            self._losses = np.concatenate([self._losses, np.empty(max(self.step, 64))])
        self._losses[self.step] = value
        self.step += 1
        step_scheduler(self.scheduler, value)
        return value

    def _parameters_finite(self) -> bool:
        return _first_non_finite([(n, p.detach()) for n, p in self._named_params]) is None

    def _run_steps(self, num_steps, callback, checkpoints: _Checkpoints, policy: FaultPolicy, bar):
        """The step loop of :meth:`run`: returns at ``num_steps`` or when ``callback`` says stop."""
        while self.step < num_steps:
            step = self.step
            policy.before_step(self)
            batch = self._next_batch(step)
            try:
                self._step(batch)
            except _NonFinite as err:
                self._recover(policy, checkpoints, step, err.kind, batch, err.value)
                continue
            loss = self._losses[step]
            if policy.diverged(float(loss)):
                self._recover(policy, checkpoints, step, "divergence", batch, float(loss))
                continue
            policy.after_step()
            bar.update()
            if step % 25 == 0:
                bar.set_postfix(loss=f"{loss:.4g}")
            stop = callback is not None and bool(callback(step, loss))
            if self._group is not None:  # a stop on any process stops them all
                stop = distributed.any_process(stop)
            if checkpoints.due(self.step):
                if not self._parameters_finite():
                    self._recover(policy, checkpoints, step, "parameter", batch, None)
                    continue
                checkpoints.write(self.state())
            if stop:
                return

    def _recover(
        self,
        policy: FaultPolicy,
        checkpoints: _Checkpoints,
        at: int,
        kind: str,
        batch: _Batch,
        value: float | None,
    ) -> None:
        error = policy.describe(self, at, kind, batch, value, checkpoints.note())
        policy.recover(self, error)
        checkpoints.rolled_back(self.step)


# ---------------------------------------------------------------------- fit
def fit(
    model: SWSModel,
    x: Any,
    y: Any = None,
    guide: str | Callable = _FIT.guide,
    *,
    settings: FitSettings | None = None,
    num_steps: int = _FIT.num_steps,
    num_epochs: float | None = _FIT.num_epochs,
    optimizer: str = _FIT.optimizer,
    lr: float = _FIT.lr,
    mixture_lr: float | None = _FIT.mixture_lr,
    batch_size: int | None = _FIT.batch_size,
    num_particles: int = _FIT.num_particles,
    init_scale: float = _FIT.init_scale,
    guide_rank: int | None = _FIT.guide_rank,
    seed: int = _FIT.seed,
    progress: bool | None = None,
    callback: Callable[[int, float], bool | None] | None = None,
    checkpoint: Callable[[FitState], None] | None = None,
    checkpoint_every: int | None = _FIT.checkpoint_every,
    initial_state: FitState | dict | None = None,
    on_nonfinite: str = _FIT.on_nonfinite,
    max_rollbacks: int = _FIT.max_rollbacks,
    rollback_lr_factor: float = _FIT.rollback_lr_factor,
    collapse_threshold: float | None = _FIT.collapse_threshold,
    lbfgs_tolerance: float = _FIT.lbfgs_tolerance,
    lr_scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    copy_model: bool = False,
    num_data: int | None = None,
    device: str | torch.device | None = None,
) -> FitResult:
    r"""Fit ``model`` to ``(x, y)`` by stochastic variational inference.

    The network's parameters are trained in place: after the call ``model.net``
    holds the fitted values of its parameters without prior (and, for point
    guides, is what :meth:`FitResult.map_network` starts from). Pass
    ``copy_model=True`` to leave ``model`` as it was and fit a copy
    (:attr:`FitResult.model`); otherwise a second fit of the same ``model``
    starts from the first one's end.

    Parameters
    ----------
    model : SWSModel
    x, y : tensor or array
        Inputs and targets (class labels or regression targets). Or ``x`` a
        ``torch.utils.data.DataLoader`` (or any re-iterable of ``(x, y)`` batches,
        such as a list) and ``y`` ``None``: one batch per step in the loader's
        order, ``len(loader)`` steps per epoch, each batch's likelihood scaled by
        ``num_data / len(batch)``; nothing beyond the current batch is held in
        memory. Its first data points are checked as tensors would be. See
        :mod:`bayes_sws.infer.loaders` for resuming such a run exactly.
    guide : str or callable
        ``"map"`` (AutoDelta), ``"normal"``, ``"lowrank"``, ``"laplace"``,
        ``"mixed"``, or a builder ``guide(model) -> pyro guide``; see
        :mod:`bayes_sws.infer.guides`. Guides start from the network's current weights.
    settings : FitSettings, optional
        Every setting below in one record (:class:`bayes_sws.settings.FitSettings`,
        whose defaults are these keywords' defaults). Give either ``settings``
        or the keywords it holds, not both (``settings.replace(lr=...)`` changes one).
    num_steps : int
        Optimisation steps (mini-batches).
    num_epochs : float, optional
        Passes over the data instead of ``num_steps``
        (:meth:`FitSettings.total_steps`: ``round(num_epochs * steps_per_epoch)``;
        for a data loader ``round(num_epochs * len(loader))``).
    optimizer : {"adam", "lbfgs"}
        ``"lbfgs"`` is full-batch quasi-Newton (strong Wolfe line search), for
        point-estimate guides.
    lr, mixture_lr : float
        Learning rates of the weights and of the mixture (and likelihood)
        hyperparameters (default 3e-3, :class:`~bayes_sws.settings.FitSettings`;
        ``None`` follows ``lr``).
    batch_size : int, optional
        Mini-batch size; default full batch. The likelihood is scaled by
        ``N / batch_size`` so the loss estimates the full-data objective. The
        batch of each step is :func:`batch_indices`. A data loader makes its
        own batches: leave it ``None`` then.
    num_particles : int
        ELBO particles per step (vectorised).
    init_scale : float
        Initial standard deviation of variational guides.
    guide_rank : int, optional
        ``guide="lowrank"`` only: the rank r of its covariance factor (``None``: Pyro's
        default, the square root of the number D of latent dimensions). A step costs
        about D·r² multiply-adds, so on a network of 10⁵ weights or more pass a small
        rank (e.g. 10).
    seed : int
        Seeds Pyro's RNG and the mini-batch order: same seed, same result.
    progress : bool, optional
        Progress bar; default on a terminal only (off in CI and tests).
    callback : callable, optional
        ``callback(step, loss)`` after every step; returning ``True`` stops.
    checkpoint : callable, optional
        ``checkpoint(state)`` with a :class:`FitState` every ``checkpoint_every``
        steps and once when the loop ends (finished or stopped by ``callback``).
        The state holds copies, so the callable may keep or write it later.
    checkpoint_every : int, optional
        Steps between checkpoints; default only at the end.
    initial_state : FitState or dict, optional
        Continue from a checkpoint of a run with the same model, data and
        settings (``num_steps`` may be larger). The result is bit-identical to
        the uninterrupted run's: the guide, network, optimiser and RNG states are
        restored and the mini-batch order is a function of ``(seed, step)``. On a
        data loader the epoch is read again up to the checkpoint's batch from the
        RNG and generator states it began with (:mod:`bayes_sws.infer.loaders`;
        a loader that cannot be replayed so gives one :class:`ReplayWarning`).
    on_nonfinite : {"raise", "rollback"}
        What to do when the loss or a gradient is non-finite (checked every step,
        before the optimiser applies the update), or a parameter is non-finite
        when a checkpoint is due or the loop ends. ``"raise"`` (default) stops
        with a :class:`NumericalFault` naming the step and the first parameter
        or site that went bad; the ``checkpoint`` callable is never given a
        non-finite state, so the last checkpoint written stays the last good one.
        ``"rollback"`` restores the state before the last good step (parameters,
        optimiser, RNG), multiplies every learning rate by
        ``rollback_lr_factor`` and continues; after ``max_rollbacks`` rollbacks
        it raises. The rolled-back faults are listed in :attr:`FitResult.faults`.
        Rollback keeps a copy of the state of every step, which costs about
        10-25 % per step on small MLPs; the checks of ``"raise"`` cost < 1 %.
        (:class:`FaultPolicy` holds these three settings.)
    max_rollbacks : int
        Rollbacks allowed in one call (``on_nonfinite="rollback"``).
    rollback_lr_factor : float
        Factor in (0, 1) applied to the learning rates at every rollback (with
        ``lr_scheduler``, to the scheduled rates and the scheduler's ``base_lrs``).
    collapse_threshold : float, optional
        After fitting, warn (:class:`VarianceCollapseWarning`) about every
        component with :math:`\sigma_j` below ``collapse_threshold`` times the
        standard deviation of the prior-carrying weights: the collapse PRML warns
        of after eq. (5.144). ``None`` skips the check.
    lbfgs_tolerance : float
        ``optimizer="lbfgs"``: steps stop moving once the largest absolute
        gradient entry is at most this (``torch.optim.LBFGS(tolerance_grad=...)``).
    lr_scheduler : callable, optional
        ``lr_scheduler(optimizer)`` returning a ``torch.optim.lr_scheduler``
        scheduler, e.g. ``lambda opt: torch.optim.lr_scheduler.StepLR(opt, 100)``;
        stepped after every completed step (``ReduceLROnPlateau`` with the step's
        loss) and saved in checkpoints (a run with a scheduler resumes only with one).
    copy_model : bool
        Fit ``copy.deepcopy(model)`` (network, prior and likelihood) instead of
        ``model`` itself, so ``model.net`` keeps its values; default ``False``.
    num_data : int, optional
        With a data loader: the number :math:`N` of data points in the whole data
        set, by which each batch's likelihood is scaled (:math:`N / B`); default
        ``len(loader.dataset)``. Required when the loader has no sized dataset.
    device : str or torch.device, optional
        Where to fit: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``, ``"auto"``
        (CUDA, else MPS, else CPU) or a ``torch.device``
        (:func:`bayes_sws.devices.resolve_device`). The model's network is moved
        there (in place, as it is trained in place; with ``copy_model=True`` the
        copy is), the guide is built there and every batch is moved there; the
        result's tensors live there. Default: where the network already is.
        The prior kernel's C loop serves CPU tensors; other devices use its
        chunked torch path.

    Returns
    -------
    FitResult

    Warns
    -----
    HealthWarning
        The loss was still falling at the end of a run that reached ``num_steps``
        (:func:`bayes_sws.health.check_converged`; runs under 80 steps are not judged).
        Where ``callback`` changed λ or a hyperprior, only the steps after its last
        change are judged (:meth:`FitResult.convergence_findings`).
    VarianceCollapseWarning
        See ``collapse_threshold``.

    Raises
    ------
    NumericalFault
        A non-finite loss, gradient or parameter (see ``on_nonfinite``).

    See Also
    --------
    SVIEngine : the same run step by step (``init`` / ``update`` / ``run``), and
        the loss at given parameters (:meth:`SVIEngine.loss`).
    """
    given = {k: v for k, v in locals().items() if k in FitSettings.names()}
    s = fit_settings(settings, given)
    num_steps, checkpoint_every = _check_run_options(
        s.num_steps, callback, checkpoint, s.checkpoint_every
    )
    faults = FaultPolicy(s.on_nonfinite, s.max_rollbacks, s.rollback_lr_factor)
    collapse_threshold = _positive_number(
        "collapse_threshold", s.collapse_threshold, allow_none=True
    )
    if copy_model and isinstance(model, SWSModel):
        model = copy.deepcopy(model)
    engine = SVIEngine(
        model, x, y, settings=s, lr_scheduler=lr_scheduler, num_data=num_data, device=device
    )
    if s.num_epochs is not None:
        _positive_number("num_epochs", s.num_epochs)
        if engine.loader is None:
            num_steps = s.total_steps(engine.config["num_data"])
        else:
            num_steps = engine.loader.total_steps(s.num_epochs)
    engine.config["num_steps"] = num_steps
    if initial_state is not None:
        initial_state = _check_initial_state(initial_state, engine.config, num_steps)
    engine.init(initial_state)
    watch = _ObjectiveWatch.around(callback, engine, initial_state)
    engine.run(
        num_steps,
        callback=watch,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        faults=faults,
        progress=progress,
    )
    result = FitResult(
        engine.model,
        _posterior_guide(engine),
        engine.config["guide"],
        engine.losses.copy(),
        dict(engine.config),
        engine.wall_time,
        faults.faults,
    )
    # a run stopped early by its callback is not judged for convergence
    _warn_health(result, collapse_threshold, judge_convergence=engine.step >= num_steps)
    return result


def _warn_health(
    result: FitResult, collapse_threshold: float | None, *, judge_convergence: bool
) -> None:
    """:func:`fit`'s warnings on its result: collapsed variances, an unconverged loss."""
    if collapse_threshold is not None:
        _warn_variance_collapse(result, collapse_threshold)
    if judge_convergence:
        for finding in result.convergence_findings():
            warnings.warn(finding.message, health.HealthWarning, stacklevel=_stacklevel_outside())


class _ObjectiveWatch:
    """``callback`` of :func:`fit`, noting in ``config["objective_changed_at"]`` the last
    step after which it changed the objective: λ or a mixture's hyperprior
    (:func:`~bayes_sws.infer.fastmap.priors_key`). The engine's config travels in its
    checkpoints, so a resumed run keeps the step its first part noted."""

    def __init__(self, callback: Callable[[int, float], bool | None], engine: SVIEngine):
        self.model, self.callback, self.config = engine.model, callback, engine.config
        self.key = self._key()

    @classmethod
    def around(
        cls, callback: Callable | None, engine: SVIEngine, initial_state: FitState | None
    ) -> _ObjectiveWatch | None:
        """The watch of ``callback`` (``None`` without one), its step resumed from the state."""
        before = {} if initial_state is None else initial_state.config
        engine.config["objective_changed_at"] = int(before.get("objective_changed_at", 0))
        return None if callback is None else cls(callback, engine)

    def _key(self) -> tuple:
        scales = tuple(sorted(self.model.tensor_scales.items()))
        return (self.model.prior_scale, scales, priors_key(self.model))

    def __call__(self, step: int, loss: float) -> bool | None:
        stop = self.callback(step, loss)
        key = self._key()
        if key != self.key:
            self.key = key
            self.config["objective_changed_at"] = step + 1
        return stop


def _posterior_guide(engine: SVIEngine) -> Any:
    """The fitted guide; for ``"laplace"``, the Gaussian at the mode (Hessian of the loss)."""
    if not isinstance(engine.guide, AutoLaplaceApproximation):
        return engine.guide
    with local_params():
        try:
            return engine.guide.laplace_approximation(engine.x, engine.y)
        except RuntimeError as err:  # torch.linalg.LinAlgError subclasses RuntimeError
            raise RuntimeError(
                "guide='laplace': the Hessian at the end of optimisation is not positive "
                f"definite ({err}); the optimiser has not reached a mode. Run more steps, "
                "use optimizer='lbfgs', or a variational guide such as 'normal'"
            ) from None


def _warn_variance_collapse(result: FitResult, threshold: float) -> None:
    """Warn about components whose σ_j fell below ``threshold · std(w)`` (PRML after eq. 5.144)."""
    model = result.model
    if model.prior.fixed_precision is not None or not hasattr(result.guide, "median"):
        return
    values = result.median()
    if not all(s in values for s in model.weight_site_names):
        return
    mixture = model.prior.mixture(values, model.like_tensor())
    sigma = mixture.sigma.detach().reshape(-1)
    weights = torch.cat([values[s].detach().reshape(-1) for s in model.weight_site_names])
    scale = float(weights.double().std()) if weights.numel() > 1 else float(weights.abs().sum())
    if not math.isfinite(scale) or scale == 0.0:
        return
    collapsed = [j for j in range(sigma.numel()) if not float(sigma[j]) >= threshold * scale]
    if not collapsed:
        return
    from ..core.penalty import assign

    owner = None
    if bool((torch.isfinite(sigma) & (sigma > 0)).all()):
        owner = assign(weights, mixture.pi, mixture.mu, sigma)
    prior = model.prior
    for j in collapsed:
        value = float(sigma[j])
        count = "" if owner is None else f", {int((owner == j).sum())} weights assigned to it"
        what = "the zero component (0)" if prior.zero_component and j == 0 else f"component {j}"
        if prior.flat:
            remedy = "use flat=False (proper Gamma hyperpriors on the precisions)"
        else:
            remedy = (
                "strengthen the Gamma hyperprior on the precisions (raise precision_rate, now "
                f"{prior.precision_rate:g}, or lower precision_concentration, now "
                f"{prior.precision_concentration:g}"
                + ("; or zero_precision_rate" if prior.zero_component and j == 0 else "")
                + ")"
            )
        precision = value**-2 if value > 0 else math.inf
        warnings.warn(
            f"variance collapse: {what} has sigma = {value:.3g} < {threshold:g} x std of the "
            f"weights ({scale:.3g}), precision 1/sigma^2 = {precision:.3g}{count}. "
            f"Remedy: {remedy}, or use fewer components",
            VarianceCollapseWarning,
            stacklevel=3,
        )
