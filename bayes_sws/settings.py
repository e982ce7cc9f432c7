r"""One vocabulary of settings: :class:`PriorSettings`, :class:`FitSettings`, :class:`CompressSettings`.

Every setting has one name and one default, used alike by the Python API
(:class:`~bayes_sws.core.priors.MixturePrior`, :func:`~bayes_sws.infer.fit`,
:func:`~bayes_sws.compress.soft_weight_sharing`), by the run configuration
(:class:`~bayes_sws.runs.settings.RunConfig`, whose fields, TOML keys and
``bayes-sws fit`` flags are generated from these classes) and by the named
:data:`PRESETS` (the paper's settings among them).

Each field carries metadata for the command line and the config file:
``help``, ``kind`` (how a value is read: ``"int"``, ``"float?"``, ``"pair"``, ...),
``check`` (returns what is wrong with a value, or ``None``), ``choices`` and
``metavar``. Fields without a ``kind`` (tensors, callables) exist in the API only.

The rule that point estimates of the hyperparameters need hyperprior
concentrations :math:`\ge 1` (the MAP does not exist otherwise: the density is
unbounded at the edge of its support) lives here once, in
:func:`map_hyperprior_problems` and :func:`map_hyperprior_error`.

This module imports nothing of the package but :mod:`bayes_sws.validation`, so
every layer may use it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

from .validation import SEED_MAX

__all__ = [
    "ASSIGNMENTS",
    "KIND_WORDS",
    "ON_NONFINITE",
    "OPTIMIZERS",
    "POINT_GUIDES",
    "POSITION_CODINGS",
    "PRESETS",
    "RETRAINING_SETTINGS",
    "CompressSettings",
    "FitSettings",
    "Preset",
    "PriorSettings",
    "epochs_to_steps",
    "map_hyperprior_error",
    "map_hyperprior_problems",
    "split_settings",
    "steps_per_epoch",
    "tempered_gamma",
]

#: Optimisers of :func:`~bayes_sws.infer.fit`.
OPTIMIZERS = ("adam", "lbfgs")
#: What :func:`~bayes_sws.infer.fit` does on a non-finite loss or gradient.
ON_NONFINITE = ("raise", "rollback")
#: Guides that take point estimates of the hyperparameters (the MAP rule applies).
POINT_GUIDES = ("map", "laplace", "mixed")


# ------------------------------------------------------------------------ value checks
# Each returns what is wrong with a value (the end of "NAME must ..."), or None.
def positive(value) -> str | None:
    return None if value > 0 else "must be > 0"


def non_negative(value) -> str | None:
    return None if value >= 0 else "must be >= 0"


def at_least_one(value) -> str | None:
    return None if value >= 1 else "must be >= 1"


def open_unit(value) -> str | None:
    return None if 0 < value < 1 else "must lie strictly between 0 and 1"


def pair_positive(value) -> str | None:
    return None if all(v > 0 for v in value) else "must be two numbers > 0"


def pair_non_negative(value) -> str | None:
    return None if all(v >= 0 for v in value) else "must be two numbers >= 0"


def at_most(limit, why: str, check=None):
    """``check``, and the value no larger than ``limit`` (``why`` says why)."""

    def bounded(value) -> str | None:
        problem = check(value) if check is not None else None
        if problem is None and value > limit:
            shown = limit if isinstance(limit, int) else format(limit, "g")
            problem = f"must be <= {shown} ({why})"
        return problem

    return bounded


seed_check = at_most(SEED_MAX, "2**32 - 1, what NumPy's seeding accepts", non_negative)


#: how an error names what a field's command-line ``kind`` holds ("must be ...")
KIND_WORDS = {
    "str": "a string",
    "str?": "a string",
    "int": "an integer",
    "int?": "an integer",
    "float": "a number",
    "float?": "a number",
    "bool": "true or false",
    "ints": "a list of integers",
    "pair": "two numbers",
    "pair?": "two numbers",
    "scales?": "a table of tensor names or patterns and multipliers (NAME=X)",
}


def option_metadata(
    help: str, kind: str | None = None, check=None, choices=None, metavar=None
) -> dict:
    """A field's metadata: its help, how the command line reads it (``kind=None``: API only)."""
    return {"help": help, "kind": kind, "check": check, "choices": choices, "metavar": metavar}


def option(default, help: str, kind: str | None = None, check=None, choices=None, metavar=None):
    """A settings field with its command-line metadata (``kind=None``: API only)."""
    metadata = option_metadata(help, kind, check, choices, metavar)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


class _Settings:
    """Shared behaviour of the settings records (frozen dataclasses)."""

    def replace(self, **changes: Any):
        """A copy with ``changes`` (unknown names are a ``TypeError`` naming them)."""
        unknown = sorted(set(changes) - set(self.names()))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} has no setting {', '.join(map(repr, unknown))}; "
                f"accepted: {', '.join(self.names())}"
            )
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The setting names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (tuples kept; see ``runs`` for JSON)."""
        return {name: getattr(self, name) for name in self.names()}

    def check_values(self, where: str) -> None:
        """Refuse a value its field's metadata rules out, naming it: a number where the field
        reads one (``kind`` ``int``, ``float`` or ``float?``; else ``TypeError``), a bool for
        ``bool``, one of its ``choices`` and what its ``check`` allows (else ``ValueError``).
        For callers that run minutes of work before they use the value."""
        wanted = {"int": Integral, "float": Real, "float?": Real, "bool": bool}
        for spec in dataclasses.fields(self):  # type: ignore[arg-type]
            value, kind = getattr(self, spec.name), spec.metadata.get("kind")
            if value is None or kind is None:
                continue
            bool_for_number = kind != "bool" and isinstance(value, bool)  # True is an int
            if kind in wanted and (bool_for_number or not isinstance(value, wanted[kind])):
                raise TypeError(f"{where}: {spec.name} must be {KIND_WORDS[kind]}; got {value!r}")
            choices, check = spec.metadata.get("choices"), spec.metadata.get("check")
            problem = None
            if choices is not None and value not in choices:
                problem = f"must be one of {list(choices)}"
            elif check is not None:
                problem = check(value)
            if problem:
                raise ValueError(f"{where}: {spec.name} {problem}; got {value!r}")


# ------------------------------------------------------------------------ the MAP rule
def map_hyperprior_problems(concentrations: Iterable[tuple[str, float]]) -> list[str]:
    """``"label = value"`` for each hyperprior concentration below 1 (the MAP rule).

    A Dirichlet or Beta concentration, or a Gamma shape, below 1 makes the
    density unbounded at the edge of its support, so a point estimate (MAP)
    of that hyperparameter does not exist.
    """
    return [f"{label} = {value:g} < 1" for label, value in concentrations if value < 1]


def map_hyperprior_error(guide: str, problems: list[str]) -> ValueError:
    """The one error for a point-estimate guide under concentrations < 1."""
    return ValueError(
        f"guide {guide!r} takes point estimates of the hyperparameters and needs "
        f"hyperprior concentrations >= 1 (the MAP does not exist otherwise; a Gamma shape < 1 "
        f"has no MAP): {'; '.join(problems)}. Raise them or use guide 'normal'"
    )


def tempered_gamma(shape: float, rate: float, power: float) -> tuple[float, float]:
    r"""Shape and rate of :math:`\mathrm{Gamma}(a, b)^p`, renormalised: :math:`(1 + p(a-1), pb)`.

    The mode :math:`(a-1)/b` is kept; ``power < 1`` flattens the density.
    """
    if not (shape > 0 and rate > 0 and power > 0):
        raise ValueError(
            f"tempered_gamma needs shape, rate and power > 0, got {shape!r}, {rate!r}, {power!r}"
        )
    return 1.0 + power * (shape - 1.0), power * rate


def steps_per_epoch(num_data: int, batch_size: int | None) -> int:
    r"""Optimiser steps in one epoch: the one definition for :func:`train` and ``fit``.

    .. math::

        \text{steps} = \max\big(1, \lfloor N / \min(B, N) \rfloor\big)

    An epoch is one pass over a fresh permutation of the ``N`` data points cut
    into full batches of ``B``; the last ``N mod B`` points of the permutation
    are left out of that epoch (PyTorch's ``DataLoader(drop_last=True)``), so
    every step sees the same batch size. ``None`` or ``B >= N`` is one full batch.
    E.g. N = 1,437, B = 128: 11 steps of 128 points, 29 left out each epoch.

    Parameters
    ----------
    num_data : int
        Data points ``N`` (at least 1).
    batch_size : int or None
        Points per step ``B``.

    Returns
    -------
    int
        At least 1.
    """
    return max(1, num_data // min(batch_size or num_data, num_data))


def epochs_to_steps(num_epochs: float, per_epoch: int) -> int:
    """Steps of ``num_epochs`` passes of ``per_epoch`` steps each: at least 1, rounded.

    The one conversion for tensors (``per_epoch`` from :func:`steps_per_epoch`) and for data
    loaders (``len(loader)``).
    """
    return max(1, round(num_epochs * per_epoch))


# ------------------------------------------------------------------------ the prior
_GAMMA = ("SHAPE", "RATE")


@dataclass(frozen=True)
class PriorSettings(_Settings):
    r"""The mixture prior (PRML 5.137) and its hyperpriors; the λ it enters with (5.139).

    :class:`~bayes_sws.core.priors.MixturePrior` is built from these
    (``MixturePrior.from_settings(s)``). ``prior_scale``, ``temper_hyperprior``,
    ``precision_prior_final`` and ``anneal_epochs`` concern the training loop
    (:func:`~bayes_sws.compress.soft_weight_sharing`, ``bayes-sws fit``): λ of
    the model, Ullrich et al.'s tempered hyperpriors, and the soft-to-hard
    anneal. ``fixed_pi``, ``fixed_mu``, ``fixed_sigma`` fix parts of the
    mixture (all three: Nowlan & Hinton's fixed mixture, a plain
    :math:`E + \lambda\Omega` penalty).
    """

    num_components: int = option(
        16,
        "mixture components M (the zero component included)",
        "int",
        at_most(1024, "one shared value per component; more cannot compress", at_least_one),
    )
    zero_component: bool = option(
        True, "component 0 fixed at mean 0 (the pruning component)", "bool"
    )
    pi_zero: float | None = option(
        None,
        "fix the zero component's weight π0 (default: learned, with a Beta prior)",
        "float?",
        open_unit,
        metavar="P",
    )
    pi_zero_prior: tuple[float, float] = option(
        (1.0, 1.0), "Beta(a, b) prior on π0", "pair", pair_positive, metavar=("A", "B")
    )
    init_pi_zero: float = option(0.5, "initial π0 when learned", "float", open_unit)
    mixing_concentration: float = option(
        1.0, "Dirichlet α of the other mixing proportions (>= 1 for MAP)", "float", positive
    )
    mean_loc: float = option(0.0, "centre of the Normal prior on the component means", "float")
    mean_scale: float = option(
        1.0, "scale of the Normal prior on the component means", "float", positive
    )
    ordered_means: bool = option(
        False, "order the component means (identifiable under MCMC)", "bool"
    )
    precision_prior: tuple[float, float] = option(
        (2.0, 2e-3),
        "Gamma(shape, rate) prior on each precision 1/σ²",
        "pair",
        pair_positive,
        metavar=_GAMMA,
    )
    zero_precision_prior: tuple[float, float] | None = option(
        None,
        "Gamma(shape, rate) prior on the zero component's precision (default: as the others)",
        "pair?",
        pair_positive,
        metavar=_GAMMA,
    )
    temper_hyperprior: bool = option(
        False,
        "read the Gamma priors in Ullrich et al.'s units (multiplied by λ too)",
        "bool",
    )
    precision_prior_final: tuple[float, float] | None = option(
        None,
        "soft-to-hard anneal: Gamma(shape, rate) the non-zero precision prior moves to, "
        "e.g. 250 0.01 from a slab --precision-prior 250 1",
        "pair?",
        pair_positive,
        metavar=_GAMMA,
    )
    anneal_epochs: tuple[float, float] | None = option(
        None,
        "first and last epoch of the anneal; none: from half-way to 0.9 of training",
        "pair?",
        pair_non_negative,
        metavar=("START", "END"),
    )
    flat: bool = option(False, "flat hyperpriors: MAP is exactly E + λΩ", "bool")
    include_bias: bool = option(False, "put the prior on biases too", "bool")
    prior_scale: float = option(
        0.1, "λ in E + λΩ (1 is the plain Bayesian model)", "float", non_negative, metavar="LAMBDA"
    )
    init_sigma: float | None = option(
        None,
        "initial σ of every component (default: the spacing of the initial means)",
        "float?",
        positive,
    )
    fixed_precision: float | None = option(
        None, "fix every precision 1/σ² to this value (no precision site)", "float?", positive
    )
    fixed_pi: tuple[float, ...] | None = option(
        None, "fixed mixing proportions, M values summing to 1 (zero component first)"
    )
    fixed_mu: tuple[float, ...] | None = option(
        None, "fixed component means, M values (zero component first, at 0)"
    )
    fixed_sigma: tuple[float, ...] | None = option(
        None, "fixed component standard deviations, M values > 0"
    )
    params: str | tuple[str, ...] | Callable[..., bool] | None = field(
        default=None,
        metadata=option_metadata(
            "the prior-carrying parameters: names or a predicate (default: all weights)"
        ),
    )
    init_means: Sequence[float] | None = option(
        None, "initial non-zero means (default: spread over the weights)"
    )

    def used_precision_priors(
        self,
    ) -> tuple[tuple[float, float], tuple[float, float] | None, tuple[float, float] | None]:
        """``(precision_prior, zero_precision_prior, precision_prior_final)`` as the model uses them.

        With ``temper_hyperprior`` each Gamma(a, b) is raised to the power λ
        (:func:`tempered_gamma`), Ullrich et al.'s units; otherwise as given.
        """
        pairs = (self.precision_prior, self.zero_precision_prior, self.precision_prior_final)
        if not self.temper_hyperprior or self.prior_scale <= 0:
            return pairs
        return tuple(  # type: ignore[return-value]
            None if p is None else tempered_gamma(*p, self.prior_scale) for p in pairs
        )

    def low_concentrations(self) -> list[tuple[str, str, float]]:
        """``(setting, what it is, value)`` of each hyperprior concentration below 1."""
        if self.flat:
            return []
        prior, zero, final = self.used_precision_priors()
        num_free = self.num_components - int(self.zero_component)
        checked = []
        if self.fixed_pi is None and num_free >= 2:
            checked.append(("mixing_concentration", "(Dirichlet α)", self.mixing_concentration))
        if self.zero_component and self.pi_zero is None and self.fixed_pi is None and num_free:
            checked.append(("pi_zero_prior", "(Beta a, b) entry", min(self.pi_zero_prior)))
        if self.fixed_precision is None and self.fixed_sigma is None:
            shape = "= precision_concentration (Gamma shape)"
            checked.append(("precision_prior", f"[0] {shape}", prior[0]))
            if zero is not None:
                checked.append(("zero_precision_prior", f"[0] = zero_{shape[2:]}", zero[0]))
            if final is not None:
                checked.append(("precision_prior_final", "[0] (Gamma shape)", final[0]))
        return [(name, what, value) for name, what, value in checked if value < 1]

    def map_problems(self) -> list[str]:
        """The concentrations below 1 that forbid a point estimate (see :func:`map_hyperprior_problems`)."""
        low = self.low_concentrations()
        return map_hyperprior_problems(
            (f"{name} {what}".replace(" [", "["), v) for name, what, v in low
        )


# ------------------------------------------------------------------------ the fit
@dataclass(frozen=True)
class FitSettings(_Settings):
    """How :func:`~bayes_sws.infer.fit` runs SVI; ``fit(model, x, y, settings=FitSettings(...))``.

    The same names are :func:`~bayes_sws.infer.fit`'s keyword arguments, so
    ``fit(model, x, y, guide="normal", num_steps=500)`` is the short path.
    ``num_epochs`` (passes over the data) replaces ``num_steps`` when given.
    """

    guide: str | Callable[..., Any] = field(
        default="map",
        metadata=option_metadata(
            "posterior: map (AutoDelta), normal, lowrank, laplace, mixed", "str"
        ),
    )
    num_steps: int = option(
        1000,
        "SVI steps, one mini-batch each",
        "int",
        at_most(10**9, "a billion steps", at_least_one),
    )
    num_epochs: float | None = option(
        None,
        "SVI epochs (passes over the data) instead of steps",
        "float?",
        at_most(10**6, "a million epochs", positive),
    )
    optimizer: str = option(
        "adam", "optimiser (lbfgs: full batch, map/laplace only)", "str", choices=OPTIMIZERS
    )
    lr: float = option(1e-3, "learning rate of the weights", "float", positive)
    mixture_lr: float | None = option(
        3e-3,
        "learning rate of the mixture hyperparameters (none: lr)",
        "float?",
        positive,
    )
    batch_size: int | None = option(
        None,
        "mini-batch size (default: the full data set)",
        "int?",
        at_most(2**31 - 1, "int32", at_least_one),
    )
    num_particles: int = option(
        1,
        "ELBO particles per step",
        "int",
        at_most(10**4, "each particle is a forward pass", at_least_one),
    )
    init_scale: float = option(
        1e-3,
        "initial std of variational guides",
        "float",
        at_most(10.0, "the initial posterior std of each weight", positive),
    )
    guide_rank: int | None = option(
        None,
        "rank of the lowrank guide's covariance factor (none: Pyro's, the square root of the "
        "number of latent dimensions; a step costs about dimensions x rank^2)",
        "int?",
        at_most(10**5, "the covariance factor holds dimensions x rank numbers", at_least_one),
    )
    seed: int = option(
        0, "seed of initialisation, pretraining, batches and the guide", "int", seed_check
    )
    on_nonfinite: str = option(
        "raise",
        "on a non-finite loss or gradient: raise (stop, exit 1) or rollback (restore the last "
        "good state, lower the learning rates, go on)",
        "str",
        choices=ON_NONFINITE,
    )
    max_rollbacks: int = option(
        3,
        "rollbacks allowed with on_nonfinite=rollback",
        "int",
        at_most(1000, "each halves the learning rates", non_negative),
    )
    rollback_lr_factor: float = option(
        0.5, "factor in (0, 1) on the learning rates at every rollback", "float", open_unit
    )
    checkpoint_every: int | None = option(
        None,
        "steps between checkpoints (default: at the end only)",
        "int?",
        at_most(10**9, "a billion", at_least_one),
    )
    collapse_threshold: float | None = option(
        1e-4,
        "warn when a component's σ falls below this times the weights' std (none: no check)",
        "float?",
        positive,
    )
    lbfgs_tolerance: float = option(
        1e-7, "L-BFGS stops moving below this largest gradient entry", "float", positive
    )

    def total_steps(self, num_data: int) -> int:
        """Steps of the run: ``num_steps``, or ``num_epochs`` passes over ``num_data`` points."""
        if self.num_epochs is None:
            return self.num_steps
        return epochs_to_steps(self.num_epochs, steps_per_epoch(num_data, self.batch_size))


# ------------------------------------------------------------------------ compression
#: How :func:`~bayes_sws.compress.quantize` picks a weight's component: by posterior
#: responsibility (``log π_j + log N``, the default) or by likelihood (``log N`` alone).
ASSIGNMENTS = ("responsibility", "likelihood")
#: The :class:`CompressSettings` that shape the pipeline's retraining rather than what is done
#: with its result: λ's warm-up and distillation. :func:`~bayes_sws.compress.compress_result`
#: takes every other one, and ``bayes-sws compress`` (on a fitted run) has no flag for these.
RETRAINING_SETTINGS = ("prior_scale_warmup", "distill", "distill_temperature")
#: How the sparse layout may store positions: Han et al.'s fixed-width relative indices
#: only, or also Golomb-Rice-coded runs of zeros
#: (:func:`~bayes_sws.compress.storage_report`'s ``position_coding``).
POSITION_CODINGS = ("fixed", "rice")


@dataclass(frozen=True)
class CompressSettings(_Settings):
    """Quantisation, accounting and codebook fine-tuning after retraining (the pipeline's step 2-3)."""

    merge_threshold: float = option(
        1e-2, "merge components closer than this (symmetric KL in nats)", "float", non_negative
    )
    merge_criterion: str = option(
        "kl", "distance used for merging components", "str", choices=("kl", "mean")
    )
    value_tolerance: float = option(
        0.0,
        "after assignment, merge shared values closer than this fraction of the largest |value| "
        "in use, and values that close to 0 into zero (0: off)",
        "float",
        non_negative,
    )
    assignment: str = option(
        "responsibility",
        "each weight to its most responsible component (with π) or its most likely (without π)",
        "str",
        choices=ASSIGNMENTS,
    )
    keep_float: tuple[str, ...] = option(
        (), "prior-carrying parameters left unquantised at 32-bit float, e.g. the last weight"
    )
    index_bits: int | dict[str, int] | None = field(
        default=None,
        metadata=option_metadata("relative-index width (default: 5 dense, 8 convolutions)"),
    )
    position_coding: str = option(
        "fixed",
        "positions of the sparse layout: fixed-width relative indices (Han et al.; the published "
        "rates) or also Golomb-Rice-coded runs of zeros where smaller (a smaller file)",
        "str",
        choices=POSITION_CODINGS,
    )
    finetune_epochs: int = option(
        0, "epochs of codebook fine-tuning after quantisation", "int", non_negative
    )
    finetune_lr: float = option(
        1e-3, "Adam learning rate of codebook fine-tuning", "float", positive
    )
    remove_dead_units: bool = option(False, "store the network without unused hidden units", "bool")
    prune_units: float | None = option(
        None,
        "after quantisation, replace the hidden units that matter least by their mean output, "
        "while the training loss rises by at most this (nats a point); needs remove_dead_units",
        "float?",
        non_negative,
    )
    reorder_units: bool = option(
        False,
        "store the hidden units in the order that takes the fewest bits (same function)",
        "bool",
    )
    prior_scale_warmup: float = option(
        0.0, "epochs over which λ rises to prior_scale (0: full strength)", "float", non_negative
    )
    distill: float = option(
        0.0,
        "share of the pretrained network's class probabilities in the targets of retraining, "
        "fine-tuning and unit pruning (knowledge distillation; 0: the labels alone)",
        "float",
        at_most(1, "the labels' and the teacher's shares sum to 1", non_negative),
    )
    distill_temperature: float = option(
        1.0, "temperature of the pretrained network's probabilities for distill", "float", positive
    )


# ------------------------------------------------------------------------ presets
@dataclass(frozen=True)
class Preset:
    """Named settings: a prior, a fit and a compression record, and what they reproduce."""

    prior: PriorSettings
    fit: FitSettings
    compress: CompressSettings
    description: str

    def to_dict(self) -> dict[str, Any]:
        """Every setting of the preset in one flat dict (the names are distinct)."""
        return {**self.prior.to_dict(), **self.fit.to_dict(), **self.compress.to_dict()}

    def differences(self) -> dict[str, Any]:
        """The settings where the preset departs from the defaults (what a TOML file would hold)."""
        plain = Preset(PriorSettings(), FitSettings(), CompressSettings(), "")
        default = plain.to_dict()
        return {k: v for k, v in self.to_dict().items() if default[k] != v}


_COMPRESSION_PRIOR = PriorSettings(
    num_components=17,
    pi_zero=0.99,
    pi_zero_prior=(99.0, 1.0),
    precision_prior=(250.0, 1e-3),
    zero_precision_prior=(5000.0, 1.25e-3),
    prior_scale=0.1,
)
_COMPRESSION_FIT = FitSettings(lr=5e-4, mixture_lr=1e-3, batch_size=128, num_epochs=30)

#: Named settings. ``"compression"`` is :func:`~bayes_sws.compress.soft_weight_sharing`'s
#: default (this package's tuned pruning setting); ``"ullrich2017"`` is the paper's
#: (Ullrich, Meeds & Welling 2017: 17 components, π0 = 0.99, tempered Gamma hyperpriors
#: Gamma(250, 0.1) and, for the zero component, Gamma(5000, 2), multiplied by τ = λ).
PRESETS: Mapping[str, Preset] = {
    "default": Preset(PriorSettings(), FitSettings(), CompressSettings(), "the package defaults"),
    "compression": Preset(
        _COMPRESSION_PRIOR,
        _COMPRESSION_FIT,
        CompressSettings(),
        "soft_weight_sharing's tuned pruning setting: strong Gamma priors, σ0 ≈ 5e-4, σ ≈ 2e-3",
    ),
    "ullrich2017": Preset(
        dataclasses.replace(
            _COMPRESSION_PRIOR,
            precision_prior=(250.0, 0.1),
            zero_precision_prior=(5000.0, 2.0),
            temper_hyperprior=True,
        ),
        _COMPRESSION_FIT,
        CompressSettings(),
        "Ullrich, Meeds & Welling (ICLR 2017): tempered hyperpriors Gamma(250, 0.1), "
        "Gamma(5000, 2) for the zero component, 17 components, π0 = 0.99",
    ),
}


def split_settings(
    values: Mapping[str, Any], *, base: Preset | None = None, where: str = "settings"
) -> Preset:
    """Sort flat ``name=value`` settings into the three records, starting from ``base``.

    Unknown names are a ``TypeError`` that lists the accepted ones.
    """
    base = base if base is not None else PRESETS["default"]
    parts: dict[str, dict[str, Any]] = {"prior": {}, "fit": {}, "compress": {}}
    owners = {
        **dict.fromkeys(PriorSettings.names(), "prior"),
        **dict.fromkeys(FitSettings.names(), "fit"),
        **dict.fromkeys(CompressSettings.names(), "compress"),
    }
    unknown = sorted(set(values) - set(owners))
    if unknown:
        raise TypeError(f"{where}: unknown setting {', '.join(map(repr, unknown))}")
    for name, value in values.items():
        parts[owners[name]][name] = value
    return Preset(
        base.prior.replace(**parts["prior"]),
        base.fit.replace(**parts["fit"]),
        base.compress.replace(**parts["compress"]),
        base.description,
    )
