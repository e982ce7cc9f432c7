r"""Inference: ``fit`` runs SVI on an :class:`~bayes_sws.model.SWSModel`.

With ``guide="map"`` (``AutoDelta``) and flat hyperpriors the loss minimised is
exactly :math:`E(w) + \lambda\Omega(w) + \text{const}` (5.139); with proper
hyperpriors it adds :math:`-\log p(\pi, \mu, \sigma)`. Other guides (see
:mod:`bayes_sws.guides`) give a posterior instead of a point, with the same call
and the same result record.

The loop is written with a plain ``torch.optim`` optimiser over the guide's and
the network's parameters (no global param store): parameter groups give the
mixture its own learning rate, and full-batch L-BFGS is one option away.
"""

from __future__ import annotations

import copy
import functools
import math
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoLaplaceApproximation, init_to_median, init_to_value
from torch import Tensor, nn

from ._progress import progress_bar
from .fastmap import map_loss, supports_fast_map
from .guides import POINT_GUIDES, build_guide, guide_name
from .model import SWSModel
from .priors import Mixture
from .validation import check_int, check_real, check_seed

__all__ = [
    "ON_NONFINITE",
    "OPTIMIZERS",
    "FitResult",
    "FitState",
    "NumericalFault",
    "VarianceCollapseWarning",
    "as_data",
    "fit",
    "get_rng_state",
    "local_params",
    "set_rng_state",
]

OPTIMIZERS = ("adam", "lbfgs")
#: What :func:`fit` does when a loss or gradient goes non-finite.
ON_NONFINITE = ("raise", "rollback")
_CHECK_GRADIENTS = True  # the per-step check (off only to measure its cost)
# torch.distributions' validation message for a NaN parameter or value of a distribution
_INVALID_VALUES = "found invalid values"
_HYPER_PREFIXES = ("sws.", "likelihood.")


def local_params():
    """Context in which Pyro modules keep their parameters to themselves (no global store)."""
    return pyro.settings.context(module_local_params=True)


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
    like = model._like()
    tensors = []
    for name, value in (("x", x), ("y", y)):
        if value is None:
            raise ValueError(f"{name} is None; fit needs inputs x and targets y")
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name} must be a tensor or array, got {type(value).__name__}: {err}") from None
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
    except Exception as err:  # the network's own error, reworded at the boundary
        raise ValueError(
            f"the network cannot process inputs of shape {tuple(x.shape[1:])} per data point: {err}"
        ) from None
    y = model.likelihood.check_targets(y, output)
    return x, y


def _check_map_hyperpriors(model: SWSModel, guide: str) -> None:
    """Point estimates of the hyperparameters need densities bounded on their support."""
    prior = model.prior
    if prior.flat:
        return
    problems = []
    if "sws.mixing" in prior.site_names and prior.mixing_concentration < 1:
        problems.append(f"mixing_concentration (Dirichlet α) = {prior.mixing_concentration} < 1")
    if "sws.pi_zero" in prior.site_names and min(prior.pi_zero_prior) < 1:
        problems.append(f"pi_zero_prior (Beta a, b) = {prior.pi_zero_prior} has an entry < 1")
    if prior.precision_concentration < 1:
        problems.append(f"precision_concentration (Gamma shape) = {prior.precision_concentration} < 1")
    if problems:
        raise ValueError(
            f"guide={guide!r} takes point estimates of the hyperparameters, but "
            + "; ".join(problems)
            + ": the density is unbounded at the edge of its support so the MAP does not exist. "
            "Use values >= 1 or a variational guide such as 'normal'."
        )


# ---------------------------------------------------------------------- numerical faults
class NumericalFault(FloatingPointError):
    """A non-finite loss, gradient or parameter met by :func:`fit`.

    Attributes
    ----------
    step : int
        The (0-based) step at which it was detected, as passed to ``callback``.
    name : str or None
        The first parameter (guide or network) or model site that went non-finite.
    kind : {"loss", "gradient", "parameter"}
        What was found non-finite first.
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
        norms = [g.norm() for g in grads]
    return torch.stack(norms).sum()


def _site_of(param_name: str) -> str:
    """``locs.net.0.weight`` -> ``net.0.weight`` (the Pyro site an autoguide parameter belongs to)."""
    for prefix in ("locs.", "scales.", "loc.", "scale."):
        if param_name.startswith(prefix):
            return param_name[len(prefix):]
    return param_name


def _diagnose_fault(model, guide, x, y, index, named_params, kind) -> tuple[str | None, str, str]:
    """Name the first parameter or site that went non-finite: ``(name, kind, description)``."""
    with torch.no_grad():
        values = [(n, p.detach()) for n, p in named_params]
        bad = _first_non_finite(values)
    if bad is not None:
        site = _site_of(bad)
        where = f" (site {site!r})" if site != bad else ""
        return bad, "parameter", f"parameter {bad!r}{where} is not finite"
    bad_grad = _first_non_finite([(n, p.grad) for n, p in named_params])
    site = None
    try:  # which site's log-density is non-finite (only on a fault, so its cost does not matter)
        with torch.no_grad(), pyro.validation_enabled(False):
            guide_trace = poutine.trace(guide).get_trace(x, y, index)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                x, y, index
            )
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


# ---------------------------------------------------------------------- result
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

    @property
    def is_point_estimate(self) -> bool:
        return self.guide_name in POINT_GUIDES

    def median(self) -> dict[str, Tensor]:
        """Posterior median (MAP for point guides) of every latent site, detached."""
        with local_params(), torch.no_grad():
            return {k: v.detach() for k, v in self.guide.median().items()}

    def mixture(self) -> Mixture:
        """The learned mixture ``(pi, mu, sigma)`` at the posterior median."""
        values = self.median()
        return self.model.prior.mixture(values, self.model._like())

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
        like = self.model._like()
        x = torch.as_tensor(x).to(device=like.device, dtype=like.dtype)
        likelihood = self.model.likelihood
        with torch.no_grad():
            if self.is_point_estimate:
                values = self.median()
                output = self.model.forward(
                    {n: values[self.model.site_name(n)] for n in self.model.prior_param_names}, x
                )
                return likelihood.mean(output, values)
            draws = self.sample_posterior(num_samples)
            total = None
            for s in range(num_samples):
                values = {k: v[s] for k, v in draws.items()}
                output = self.model.forward(
                    {n: values[self.model.site_name(n)] for n in self.model.prior_param_names}, x
                )
                mean = likelihood.mean(output, values)
                total = mean if total is None else total + mean
            return total / num_samples


# ---------------------------------------------------------------------- checkpoints
#: Settings that must agree between a checkpoint and the run continuing from it.
RESUME_KEYS = (
    "guide", "optimizer", "lr", "mixture_lr", "batch_size", "num_particles", "init_scale",
    "seed", "num_data", "prior_scale",
)


def get_rng_state() -> dict[str, Any]:
    """The state of every RNG Pyro draws from, as tensors and plain Python values.

    Plain values (no numpy arrays) so ``torch.load(weights_only=True)`` can read it back.
    """
    version, mt_state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "random": [int(version), list(mt_state), gauss],
        "numpy": [str(name), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos),
                  int(has_gauss), float(cached)],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    version, mt_state, gauss = state["random"]
    random.setstate((version, tuple(mt_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


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
    """

    step: int
    losses: np.ndarray
    guide_state: dict[str, Tensor]
    network_state: dict[str, Tensor]
    optimizer_state: dict[str, Any]
    rng_state: dict[str, Any]
    config: dict[str, Any]
    wall_time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain tensors, lists and numbers (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "step": int(self.step),
            "losses": torch.as_tensor(np.asarray(self.losses, dtype=np.float64)),
            "guide_state": dict(self.guide_state),
            "network_state": dict(self.network_state),
            "optimizer_state": self.optimizer_state,
            "rng_state": self.rng_state,
            "config": dict(self.config),
            "wall_time": float(self.wall_time),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitState:
        missing = sorted({f for f in cls.__dataclass_fields__} - set(data))
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
        )


def _check_initial_state(state: Any, config: dict[str, Any], num_steps: int) -> FitState:
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
            "initial_state comes from a run with other settings: " + "; ".join(different)
            + ". Resume with the settings of the checkpointed run"
        )
    if not 0 <= state.step <= num_steps or len(state.losses) != state.step:
        raise ValueError(
            f"initial_state is at step {state.step} with {len(state.losses)} losses; "
            f"it must have one loss per completed step and at most num_steps={num_steps} steps"
        )
    return state


# ---------------------------------------------------------------------- fit
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


def steps_per_epoch(num_data: int, batch_size: int | None) -> int:
    """Mini-batches per pass over ``num_data`` points, as :func:`fit` draws them (1 for full batch)."""
    return max(1, num_data // min(batch_size or num_data, num_data))


def _batch_indices(num_data: int, batch_size: int, step: int, seed: int, device) -> Tensor | None:
    """Indices of the mini-batch at ``step``: a fresh permutation per epoch, derived from the seed.

    Derived rather than stored, so an interrupted run resumes on the same batches.
    """
    if batch_size >= num_data:
        return None
    epoch, position = divmod(step, steps_per_epoch(num_data, batch_size))
    perm = _epoch_permutation(num_data, seed, epoch)
    return perm[position * batch_size : (position + 1) * batch_size].to(device)


@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_data: int, seed: int, epoch: int) -> Tensor:
    """The data order of one epoch; cached so it is drawn once per epoch, not per step."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_data, generator=generator)


def fit(
    model: SWSModel,
    x: Any,
    y: Any,
    guide: str | Callable = "map",
    *,
    num_steps: int = 1000,
    optimizer: str = "adam",
    lr: float = 1e-3,
    mixture_lr: float | None = None,
    batch_size: int | None = None,
    num_particles: int = 1,
    init_scale: float = 1e-3,
    seed: int = 0,
    progress: bool | None = None,
    callback: Callable[[int, float], bool | None] | None = None,
    checkpoint: Callable[[FitState], None] | None = None,
    checkpoint_every: int | None = None,
    initial_state: FitState | dict | None = None,
    on_nonfinite: str = "raise",
    max_rollbacks: int = 3,
    rollback_lr_factor: float = 0.5,
    collapse_threshold: float | None = 1e-4,
) -> FitResult:
    r"""Fit ``model`` to ``(x, y)`` by stochastic variational inference.

    Parameters
    ----------
    model : SWSModel
    x, y : tensor or array
        Inputs and targets (class labels or regression targets).
    guide : str or callable
        ``"map"`` (AutoDelta), ``"normal"``, ``"lowrank"``, ``"laplace"``,
        ``"mixed"``, or a builder ``guide(model) -> pyro guide``; see
        :mod:`bayes_sws.guides`. Guides start from the network's current weights.
    num_steps : int
        Optimisation steps (mini-batches).
    optimizer : {"adam", "lbfgs"}
        ``"lbfgs"`` is full-batch quasi-Newton (strong Wolfe line search), for
        point-estimate guides.
    lr, mixture_lr : float
        Learning rates of the weights and of the mixture (and likelihood)
        hyperparameters; ``mixture_lr`` defaults to ``lr``.
    batch_size : int, optional
        Mini-batch size; default full batch. The likelihood is scaled by
        ``N / batch_size`` so the loss estimates the full-data objective.
    num_particles : int
        ELBO particles per step (vectorised).
    init_scale : float
        Initial standard deviation of variational guides.
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
        restored and the mini-batch order is a function of ``(seed, step)``.
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
    max_rollbacks : int
        Rollbacks allowed in one call (``on_nonfinite="rollback"``).
    rollback_lr_factor : float
        Factor in (0, 1) applied to the learning rates at every rollback.
    collapse_threshold : float, optional
        After fitting, warn (:class:`VarianceCollapseWarning`) about every
        component with :math:`\sigma_j` below ``collapse_threshold`` times the
        standard deviation of the prior-carrying weights: the collapse PRML warns
        of after eq. (5.144). ``None`` skips the check.

    Returns
    -------
    FitResult

    Raises
    ------
    NumericalFault
        A non-finite loss, gradient or parameter (see ``on_nonfinite``).
    """
    if not isinstance(model, SWSModel):
        raise TypeError(f"model must be a bayes_sws.SWSModel, got {type(model).__name__}")
    name = guide_name(guide)
    num_steps = _positive_number("num_steps", num_steps, integer=True)
    lr = _positive_number("lr", lr)
    mixture_lr = _positive_number("mixture_lr", mixture_lr, allow_none=True) or lr
    num_particles = _positive_number("num_particles", num_particles, integer=True)
    init_scale = _positive_number("init_scale", init_scale)
    seed = check_seed("seed", seed)
    checkpoint_every = _positive_number(
        "checkpoint_every", checkpoint_every, integer=True, allow_none=True
    )
    if checkpoint is not None and not callable(checkpoint):
        raise TypeError(f"checkpoint must be a callable taking a FitState, got {checkpoint!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be a callable (step, loss) -> bool, got {callback!r}")
    if on_nonfinite not in ON_NONFINITE:
        raise ValueError(f"on_nonfinite must be one of {list(ON_NONFINITE)}, got {on_nonfinite!r}")
    max_rollbacks = check_int("max_rollbacks", max_rollbacks, low=0)
    rollback_lr_factor = _positive_number("rollback_lr_factor", rollback_lr_factor)
    if rollback_lr_factor >= 1:
        raise ValueError(f"rollback_lr_factor must lie in (0, 1), got {rollback_lr_factor!r}")
    collapse_threshold = _positive_number("collapse_threshold", collapse_threshold, allow_none=True)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; use one of {list(OPTIMIZERS)}")
    x, y = as_data(x, y, model)
    num_data = x.shape[0]
    batch_size = _positive_number("batch_size", batch_size, integer=True, allow_none=True)
    batch_size = min(batch_size or num_data, num_data)
    if isinstance(guide, str) and guide in ("map", "laplace", "mixed"):
        _check_map_hyperpriors(model, guide)
    if optimizer == "lbfgs":
        if batch_size < num_data:
            raise ValueError(
                f"optimizer='lbfgs' is full-batch; got batch_size={batch_size} < {num_data} data points. "
                "Drop batch_size or use optimizer='adam'"
            )
        if name not in ("map", "laplace"):
            raise ValueError(f"optimizer='lbfgs' needs a point-estimate guide ('map'), got guide={name!r}")

    config = {
        "guide": name,
        "num_steps": num_steps,
        "optimizer": optimizer,
        "lr": lr,
        "mixture_lr": mixture_lr,
        "batch_size": batch_size,
        "num_particles": num_particles,
        "init_scale": init_scale,
        "seed": int(seed),
        "num_data": num_data,
        "prior_scale": model.prior_scale,
        "input_shape": [int(d) for d in x.shape[1:]],
    }
    if initial_state is not None:
        initial_state = _check_initial_state(initial_state, config, num_steps)

    pyro.set_rng_seed(seed)
    init_loc_fn = init_to_value(values=model.init_values(), fallback=init_to_median)
    with local_params():
        fitted_guide = build_guide(
            guide, model, init_loc_fn=init_loc_fn, init_scale=init_scale,
            hyper_sites=model.hyper_site_names,
        )
        elbo = Trace_ELBO(
            num_particles=num_particles,
            vectorize_particles=num_particles > 1,
            max_plate_nesting=1,
        )
        first_batch = _batch_indices(num_data, batch_size, 0, seed, x.device)
        elbo.differentiable_loss(model, fitted_guide, x, y, first_batch)  # builds guide params
        # AutoDelta's loss is the negative log joint: evaluate it without Pyro's tracing
        # (same value and gradients, tested in tests/test_fastmap.py; BENCHMARKS.md "SVI step")
        loss_fn = map_loss if supports_fast_map(model, fitted_guide) else elbo.differentiable_loss
        guide_params = list(fitted_guide.named_parameters())
        hyper = [p for n, p in guide_params if any(s in n for s in _HYPER_PREFIXES)]
        weights = [p for n, p in guide_params if not any(s in n for s in _HYPER_PREFIXES)]
        free_params = {n: p for n, p in model.free_parameters().items() if p.requires_grad}
        weights += list(free_params.values())
        groups = [{"params": weights, "lr": lr}]
        if hyper:
            groups.append({"params": hyper, "lr": mixture_lr})
        if optimizer == "lbfgs":
            # one iteration per step; max_eval must leave the line search its budget
            # (torch's default, max_iter * 5 // 4 = 1, leaves it none: t = 0 from step 2 on)
            optim = torch.optim.LBFGS(
                weights + hyper, lr=lr, max_iter=1, max_eval=1 + _LBFGS_LINE_SEARCH_EVALS,
                line_search_fn="strong_wolfe", history_size=20,
            )
        else:
            optim = torch.optim.Adam(groups)

        losses = np.empty(num_steps)
        completed = 0  # steps done so far
        previous_time = 0.0
        if initial_state is not None:
            _restore(initial_state, fitted_guide, free_params, optim)
            completed = initial_state.step
            losses[:completed] = initial_state.losses
            previous_time = initial_state.wall_time
        start = time.perf_counter()

        def snapshot() -> FitState:
            with torch.no_grad():
                return FitState(
                    step=completed,
                    losses=losses[:completed].copy(),
                    guide_state={
                        k: v.detach().clone() for k, v in fitted_guide.state_dict().items()
                    },
                    network_state={n: p.detach().clone() for n, p in free_params.items()},
                    optimizer_state=copy.deepcopy(optim.state_dict()),
                    rng_state=get_rng_state(),
                    config=dict(config),
                    wall_time=previous_time + time.perf_counter() - start,
                )

        # Numerical faults: the loss and one fused reduction of the gradients are
        # checked inside the closure, before the optimiser applies the update, so the
        # parameters are still those of the last good step when a fault is raised.
        all_params = [p for group in optim.param_groups for p in group["params"]]
        named_params = list(guide_params) + [(f"net.{n}", p) for n, p in free_params.items()]
        base_lrs = [group["lr"] for group in optim.param_groups]
        rollback = on_nonfinite == "rollback"
        faults: list[NumericalFault] = []
        lr_scale = 1.0
        good: dict | None = None  # state at the start of the last step that passed the checks
        pending: dict | None = None  # state at the start of the current step

        def light_snapshot(at: int) -> dict:
            with torch.no_grad():
                return {
                    "step": at,
                    "guide": {k: v.detach().clone() for k, v in fitted_guide.state_dict().items()},
                    "network": {n: p.detach().clone() for n, p in free_params.items()},
                    "optimizer": copy.deepcopy(optim.state_dict()),
                    "rng": get_rng_state(),
                }

        def fault_at(
            at: int, kind: str, index: Tensor | None, value: float | None
        ) -> NumericalFault:
            what = {
                "loss": f"the loss is {value}",
                "gradient": f"the loss is {value} but a gradient is not finite",
                "parameter": "a parameter is not finite",
            }[kind]
            bad, kind, text = _diagnose_fault(model, fitted_guide, x, y, index, named_params, kind)
            kept = (
                f" The last checkpoint passed to `checkpoint` (step {last_checkpoint}) is intact."
                if checkpoint is not None and last_checkpoint > 0
                else ""
            )
            return NumericalFault(
                f"non-finite values at step {at} ({what}): {text}. Lower the learning rate "
                f"(lr={optim.param_groups[0]['lr']:g}), strengthen the Gamma hyperprior on the "
                "precisions" + ("." if rollback else ", or pass on_nonfinite='rollback'.") + kept,
                step=at, name=bad, kind=kind,
            )

        def recover(error: NumericalFault) -> int:
            """Raise, or roll back to the last good state with lower learning rates."""
            nonlocal lr_scale, completed, last_checkpoint, pending
            if not rollback:
                raise error
            if len(faults) >= max_rollbacks:
                raise NumericalFault(
                    f"{error} Gave up after {max_rollbacks} rollbacks (learning rates scaled by "
                    f"{lr_scale:g}).",
                    step=error.step, name=error.name, kind=error.kind,
                ) from None
            faults.append(error)
            target = good if good is not None else pending
            fitted_guide.load_state_dict(target["guide"])
            with torch.no_grad():
                for n, p in free_params.items():
                    p.copy_(target["network"][n])
            optim.load_state_dict(copy.deepcopy(target["optimizer"]))  # the state is updated in place
            set_rng_state(target["rng"])
            lr_scale *= rollback_lr_factor
            for group, base in zip(optim.param_groups, base_lrs):
                group["lr"] = base * lr_scale
            completed = target["step"]
            pending = target
            if last_checkpoint > completed:
                last_checkpoint = -1  # rewrite the checkpoint the rolled-back steps will reach
            warnings.warn(
                f"rolled back to step {completed} after non-finite values at step {error.step} "
                f"({error.name or 'unnamed'}); learning rates scaled by {lr_scale:g}",
                RuntimeWarning, stacklevel=3,
            )
            return completed

        last_checkpoint = completed
        bar = progress_bar(num_steps, desc=f"fit ({name})", progress=progress, initial=completed)
        with bar:
            step = completed
            while True:
                stop = False
                while step < num_steps:
                    if rollback and (pending is None or pending["step"] != step):
                        pending = light_snapshot(step)
                    index = _batch_indices(num_data, batch_size, step, seed, x.device)

                    def closure():
                        optim.zero_grad()
                        try:
                            loss = loss_fn(model, fitted_guide, x, y, index)
                        except ValueError as err:  # Pyro's validation meets a NaN first
                            if _INVALID_VALUES not in str(err):
                                raise
                            raise _NonFinite("loss", math.nan) from None
                        loss.backward()
                        if _CHECK_GRADIENTS:
                            total = loss.detach() + _gradient_norms(all_params)
                            if not bool(torch.isfinite(total)):
                                value = float(loss.detach())
                                kind = "gradient" if math.isfinite(value) else "loss"
                                raise _NonFinite(kind, value)
                        return loss

                    try:
                        loss = optim.step(closure)
                        if _lbfgs_stalled(optim):
                            optim.state.clear()  # restart from steepest descent next step
                        value = float(loss.detach())
                        if not math.isfinite(value):
                            raise _NonFinite("loss", value)
                    except _NonFinite as err:
                        step = recover(fault_at(step, err.kind, index, err.value))
                        continue
                    losses[step] = value
                    completed = step + 1
                    if rollback:
                        good = pending
                    bar.update()
                    if step % 25 == 0:
                        bar.set_postfix(loss=f"{losses[step]:.4g}")
                    stop = callback is not None and callback(step, losses[step])
                    due = checkpoint_every and completed % checkpoint_every == 0
                    if checkpoint is not None and due:
                        if _first_non_finite([(n, p.detach()) for n, p in named_params]):
                            step = recover(fault_at(step, "parameter", index, None))
                            continue
                        checkpoint(snapshot())
                        last_checkpoint = completed
                    if stop:
                        break
                    step += 1
                # the parameters after the last update have not been used yet: check them once
                if _first_non_finite([(n, p.detach()) for n, p in named_params]):
                    at = max(completed - 1, 0)
                    index = _batch_indices(num_data, batch_size, at, seed, x.device)
                    step = recover(fault_at(at, "parameter", index, None))
                    continue
                break
            if checkpoint is not None and last_checkpoint != completed:
                checkpoint(snapshot())
        losses = losses[:completed]
        wall_time = previous_time + time.perf_counter() - start
        if isinstance(fitted_guide, AutoLaplaceApproximation):
            try:
                fitted_guide = fitted_guide.laplace_approximation(x, y)
            except RuntimeError as err:  # torch.linalg.LinAlgError subclasses RuntimeError
                raise RuntimeError(
                    "guide='laplace': the Hessian at the end of optimisation is not positive "
                    f"definite ({err}); the optimiser has not reached a mode. Run more steps, "
                    "use optimizer='lbfgs', or a variational guide such as 'normal'"
                ) from None

    result = FitResult(model, fitted_guide, name, losses, config, wall_time, faults)
    if collapse_threshold is not None:
        _warn_variance_collapse(result, collapse_threshold)
    return result


def _warn_variance_collapse(result: FitResult, threshold: float) -> None:
    """Warn about components whose σ_j fell below ``threshold · std(w)`` (PRML after eq. 5.144)."""
    model = result.model
    if model.prior.fixed_precision is not None or not hasattr(result.guide, "median"):
        return
    values = result.median()
    if not all(s in values for s in model.weight_site_names):
        return
    mixture = model.prior.mixture(values, model._like())
    sigma = mixture.sigma.detach().reshape(-1)
    weights = torch.cat([values[s].detach().reshape(-1) for s in model.weight_site_names])
    scale = float(weights.double().std()) if weights.numel() > 1 else float(weights.abs().sum())
    if not math.isfinite(scale) or scale == 0.0:
        return
    collapsed = [j for j in range(sigma.numel()) if not float(sigma[j]) >= threshold * scale]
    if not collapsed:
        return
    from .penalty import responsibilities

    owner = None
    if bool((torch.isfinite(sigma) & (sigma > 0)).all()):
        with torch.no_grad():
            owner = responsibilities(weights, mixture.pi, mixture.mu, sigma).argmax(-1)
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


def _restore(state: FitState, guide: Any, free_params: dict[str, Tensor], optim) -> None:
    """Load a :class:`FitState` into freshly built guide, network and optimiser (in place)."""
    try:
        guide.load_state_dict(state.guide_state)
    except RuntimeError as err:
        raise ValueError(
            f"initial_state does not fit this model and guide: {err}. Resume with the "
            "network, prior and guide of the checkpointed run"
        ) from None
    if set(state.network_state) != set(free_params):
        raise ValueError(
            f"initial_state holds network parameters {sorted(state.network_state)} but this "
            f"model trains {sorted(free_params)}"
        )
    with torch.no_grad():
        for n, p in free_params.items():
            p.copy_(state.network_state[n])
    optim.load_state_dict(state.optimizer_state)
    set_rng_state(state.rng_state)
