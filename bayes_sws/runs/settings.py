"""Run settings: :class:`RunConfig`, read from TOML files and ``bayes-sws fit`` flags.

Every field of :class:`RunConfig` is at once a key of a TOML config file and a
``fit`` flag (the parser is generated from :func:`config_options`, so the two
cannot drift). :func:`resolve_config` applies defaults, then the file, then the
flags, and every bad value is a :class:`RunError` that names the key, the value
and what is accepted.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import stat
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

from ..compress.pipeline import RECIPES, check_anneal
from ..devices import DEVICE_CHOICES, resolve_device
from ..infer.guides import GUIDES, check_guide_rank
from ..settings import (
    KIND_WORDS,
    POINT_GUIDES,
    PRESETS,
    RETRAINING_SETTINGS,
    CompressSettings,
    FitSettings,
    PriorSettings,
    at_least_one,
    at_most,
    map_hyperprior_error,
    non_negative,
    open_unit,
    option,
    positive,
    seed_check,
)
from ..zoo.nets import ACTIVATIONS, NETWORKS, factory_name_problem, is_factory_name
from ..zoo.training import LR_SCHEDULES
from .checkpoints import plain

__all__ = [
    "LEGACY_NAMES",
    "LEGACY_VALUES",
    "RESUME_SETTINGS",
    "RunConfig",
    "RunError",
    "check_device",
    "compress_options",
    "compress_settings",
    "config_options",
    "load_config_file",
    "resolve_config",
]


class RunError(ValueError):
    """A run directory or run setting that cannot be used as asked (a user mistake)."""


# ============================================================================ configuration
#: Largest magnitude a float setting may have: the networks compute in float32.
FLOAT32_MAX = 3.4028234663852886e38
#: Largest config file read (a settings file is a few hundred bytes).
MAX_CONFIG_BYTES = 1 << 20
#: Seeds must be accepted by Python's, NumPy's and torch's generators alike.
SEED_MAX = 2**32 - 1
#: Settings that may change when a run is resumed (fault handling, the device: a
#: run started on a GPU may continue on the CPU, and the TensorBoard log); the
#: others fix the run's results and are part of its identity.
RESUME_SETTINGS = ("on_nonfinite", "max_rollbacks", "rollback_lr_factor", "device", "tensorboard")
#: Names of earlier versions, still read from TOML files, ``config.json`` and flags
#: (with a FutureWarning, except from an existing run's ``config.json``).
LEGACY_NAMES = {"components": "num_components", "steps": "num_steps", "epochs": "num_epochs"}
#: Settings added after run directories existed: left out of a run's identity at their
#: defaults, so that runs started before keep their identity.
_ADDED_SETTINGS = (
    "mean_loc",
    "temper_hyperprior",
    "init_sigma",
    "fixed_precision",
    "collapse_threshold",
    "lbfgs_tolerance",
    "preset",
    "mixture_groups",
    "recipe",
    "pretrain_schedule",
    "tensor_scales",
)
#: Settings added after run directories existed whose default differs from how the
#: runs before them behaved: a ``config.json`` without them means this value, and a
#: run at this value leaves them out of its identity.
LEGACY_VALUES: dict[str, Any] = {"standardize_targets": False}


def _widths(value) -> str | None:
    if not value:
        return "must list at least one hidden width"
    if len(value) > 100:
        return "must list at most 100 hidden widths"
    if not all(v >= 1 for v in value):
        return "must be widths >= 1"
    return None if all(v <= 10**5 for v in value) else "must be widths <= 100000"


@dataclass(frozen=True)
class _RunData:
    """Settings of a run only (data and network); the rest come from bayes_sws.settings."""

    preset: str | None = option(
        None,
        "named settings to start from (a config file and flags override them)",
        "str?",
        choices=tuple(PRESETS),
    )
    recipe: str | None = option(
        None,
        "settings chosen on validation for a data set and network "
        f"(bayes_sws.compress.pipeline.RECIPES: {', '.join(RECIPES)}): its data, network, "
        "pretraining, retraining and λ scaled to this training set, and the compress "
        "command's settings (a config file and flags override them)",
        "str?",
        choices=tuple(RECIPES),
        metavar="NAME",
    )
    data: str = option(
        "digits",
        "data set: digits, fashion-mnist, mnist-5k, mnist, or a .npz "
        "file with x, y (or x_train, y_train, x_test, y_test)",
        "str",
        metavar="NAME",
    )
    standardize: str = option(
        "feature",
        "input scaling: per feature, one global mean/std, or none",
        "str",
        choices=("feature", "global", "none"),
    )
    standardize_targets: bool = option(
        True,
        "standardise real targets of a Gaussian likelihood by the training mean/std (RMSEs "
        "are reported in the original units)",
        "bool",
    )
    test_fraction: float = option(
        0.2, "test share for data without an official split", "float", open_unit
    )
    split_seed: int = option(0, "seed of that train/test split", "int", seed_check)
    network: str = option(
        "mlp",
        f"architecture: {', '.join(NETWORKS)}, or your own as package.module:factory, a "
        "callable returning an nn.Module (given input_shape, num_outputs if it takes them; "
        "images come unflattened; the module must be importable, e.g. PYTHONPATH=.)",
        "str",
        choices=NETWORKS,
        metavar="NAME",
    )
    hidden: tuple[int, ...] | None = option(
        None, "hidden widths of the mlp (default: 100)", "ints", _widths, metavar="WIDTH"
    )
    activation: str = option("relu", "activation of the mlp", "str", choices=tuple(ACTIVATIONS))
    pretrain_epochs: int = option(
        60,
        "epochs of plain training before SVI (0: start from random weights)",
        "int",
        at_most(10**6, "a million epochs", non_negative),
    )
    pretrain_lr: float = option(1e-3, "Adam learning rate of pretraining", "float", positive)
    pretrain_batch_size: int = option(
        64, "batch size of pretraining", "int", at_most(2**31 - 1, "int32", at_least_one)
    )
    pretrain_schedule: str = option(
        "constant",
        "learning rate of pretraining: constant, or cosine (annealed to zero over its epochs: "
        "a network whose error no longer swings with the last epochs, BENCHMARKS.md)",
        "str",
        choices=LR_SCHEDULES,
    )


@dataclass(frozen=True)
class _RunLikelihood:
    likelihood: str = option(
        "auto",
        "auto (categorical for class labels, gaussian for real targets), or mdn: a "
        "mixture density network over real targets (PRML 5.6)",
        "str",
        choices=("auto", "categorical", "gaussian", "mdn"),
    )
    mdn_components: int = option(
        3,
        "mixture components K of --likelihood mdn",
        "int",
        at_most(64, "K mixing logits, K*D means and K scales per output", at_least_one),
    )
    noise_precision: float = option(
        1.0, "Gaussian noise precision β (regression data)", "float", positive
    )
    learn_noise_precision: bool = option(
        False, "learn β with a Gamma prior (regression data)", "bool"
    )


@dataclass(frozen=True)
class _RunGroups:
    mixture_groups: str = option(
        "shared",
        "shared: one mixture for all layers; layer: one per layer, with its own π, μ, σ "
        "(sites sws.<layer>.*) and codebook (PRML 5.5.1's layer-wise priors)",
        "str",
        choices=("shared", "layer"),
    )
    tensor_scales: dict[str, float] | None = option(
        None,
        "multipliers of λ for some prior-carrying tensors, as NAME=X (a parameter name or glob "
        "pattern; e.g. 2.weight=3 weighs that tensor's prior 3x; SWSModel's tensor_scales)",
        "scales?",
        metavar="NAME=X",
    )


@dataclass(frozen=True)
class _RunLength:
    """How a run is cut into steps, batches and checkpoints (steps or epochs; files kept).

    The settings where a run directory differs from ``fit()`` on purpose: a run
    checkpoints every 100 steps (``fit()`` writes no files unless given a
    ``checkpoint`` callable) and takes mini-batches of 128 (``fit()``'s full batch
    would hold Fashion-MNIST's 60,000 images in one step).
    """

    num_steps: int | None = option(
        None,
        f"SVI steps, one mini-batch each (default: {FitSettings().num_steps} unless --num-epochs)",
        "int?",
        at_most(10**9, "a billion steps", at_least_one),
    )
    num_epochs: int | None = option(
        None,
        "SVI epochs (passes over the data) instead of steps",
        "int?",
        at_most(10**6, "a million epochs", at_least_one),
    )
    batch_size: int | None = option(
        128,
        "mini-batch size (none: full batch)",
        "int?",
        at_most(2**31 - 1, "int32", at_least_one),
    )
    checkpoint_every: int | None = option(
        100,
        "steps between checkpoints (none: at the end only)",
        "int?",
        at_most(10**9, "a billion", at_least_one),
    )
    keep_checkpoints: int = option(
        2,
        "number of newest checkpoints kept",
        "int",
        at_most(10**4, "ten thousand", at_least_one),
    )


@dataclass(frozen=True)
class _RunDevice:
    """Where the run computes: not part of its identity (see :data:`RESUME_SETTINGS`)."""

    device: str = option(
        "cpu",
        f"where SVI runs: {', '.join(DEVICE_CHOICES)} (auto: cuda if available, else mps, "
        "else cpu); a resumed run may change it",
        "str",
        metavar="DEVICE",
    )


@dataclass(frozen=True)
class _RunLog:
    """Where the run logs besides its directory: not part of its identity either."""

    tensorboard: str | None = option(
        None,
        "also log the SVI loss to TensorBoard in this folder (needs pip install "
        "'bayes-sws[tensorboard]'); a resumed run may change it",
        "str?",
        metavar="LOG_DIR",
    )


def check_device(device: Any, where: str = "device") -> None:
    """Refuse a ``device`` setting this machine cannot run as a :class:`RunError`.

    ``where`` names the setting in the message (``"--device"``, a config file).
    Called where a run is about to compute, not where a stored ``config.json`` is
    read: a run started on a GPU stays readable on a machine without one.
    """
    try:
        resolve_device(device)
    except (ValueError, TypeError) as err:
        raise RunError(f"{where}: {err}") from None


def _cli_fields(cls, skip=(), choices=None) -> list[tuple[str, Any, Any]]:
    """``(name, type, field)`` of the fields of ``cls`` that have a command-line kind."""
    made = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("kind") is None or f.name in skip:
            continue
        metadata = dict(f.metadata)
        if choices and f.name in choices:
            metadata["choices"] = choices[f.name]
        made.append((f.name, f.type, field(default=f.default, metadata=metadata)))
    return made


def _run_fields() -> list[tuple[str, Any, Any]]:
    """RunConfig's fields: the run's own, then PriorSettings' and FitSettings' (same names)."""
    length = {f.name: f for f in dataclasses.fields(_RunLength)}
    fit_fields = _cli_fields(FitSettings, choices={"guide": tuple(GUIDES)})
    fit_fields = [
        (n, length[n].type, field(default=length[n].default, metadata=dict(length[n].metadata)))
        if n in length
        else (n, t, f)
        for n, t, f in fit_fields
    ]
    keep = length["keep_checkpoints"]
    return [
        *_cli_fields(_RunData),
        *_cli_fields(PriorSettings),
        *_cli_fields(_RunGroups),
        *_cli_fields(_RunLikelihood),
        *fit_fields,
        ("keep_checkpoints", keep.type, field(default=keep.default, metadata=dict(keep.metadata))),
        *_cli_fields(_RunDevice),
        *_cli_fields(_RunLog),
    ]


class _RunConfigMethods:
    """Every setting of a run; the keys of a TOML config file and the ``fit`` flags.

    Its fields are generated: the run's own (data, network, pretraining), every
    :class:`~bayes_sws.settings.PriorSettings` and
    :class:`~bayes_sws.settings.FitSettings` setting that a file can hold, with
    the same names and defaults, and ``keep_checkpoints``. ``num_steps`` and
    ``num_epochs`` are alternatives (one SVI step is one mini-batch; an epoch is
    ``num_train // batch_size`` steps). ``preset`` starts from named settings
    (:data:`bayes_sws.settings.PRESETS`). Build one with :meth:`from_dict`
    (validates) or :func:`resolve_config`; :meth:`prior_settings` and
    :meth:`fit_settings` give the records the library takes.
    """

    if TYPE_CHECKING:  # the fields are generated (see RunConfig below)

        def __getattr__(self, name: str) -> Any: ...

    # ------------------------------------------------------------------ building
    @classmethod
    def from_dict(
        cls,
        values: Mapping[str, Any],
        *,
        sources: Mapping[str, str] | None = None,
        warn_legacy: bool = True,
    ) -> RunConfig:
        """Validate ``values`` (names as the fields, ``-`` or ``_``) into a config.

        ``sources`` maps keys to where they came from (``"--lr"``, ``"run.toml"``)
        for the error messages. A ``preset`` fills the settings not in ``values``.
        The names of :data:`LEGACY_NAMES` are read as their new names (a
        FutureWarning when ``warn_legacy``). Raises :class:`RunError` naming the
        key, the value and what is accepted.
        """
        if not isinstance(values, Mapping):
            raise RunError(
                f"a run configuration must be a table of settings, got {type(values).__name__}"
            )
        sources = dict(sources or {})
        known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        clean: dict[str, Any] = {}
        for raw_key, value in values.items():
            given = str(raw_key).replace("-", "_")
            key = _current_name(given, sources, warn_legacy)
            where = sources.get(given, sources.get(str(raw_key), sources.get(key, "config")))
            if key not in known:
                close = difflib.get_close_matches(key, [*known, *LEGACY_NAMES], n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise RunError(
                    f"{where}: unknown setting {raw_key!r}{hint} (accepted: {', '.join(known)})"
                )
            if key in clean:
                raise RunError(f"{where}: {given!r} given twice (as {key!r} too); give it once")
            clean[key] = _coerce(known[key], value, where, given)
            sources.setdefault(key, where)
        if clean.get("num_steps") is not None and clean.get("num_epochs") is not None:
            raise RunError(
                f"give either num_steps ({sources.get('num_steps', 'config')}) or num_epochs "
                f"({sources.get('num_epochs', 'config')}), not both (either steps or epochs)"
            )
        if clean.get("recipe") is not None and clean.get("preset") is not None:
            raise RunError(
                f"{sources.get('recipe', 'config')}: recipe {clean['recipe']!r} and "
                f"{sources.get('preset', 'config')}: preset {clean['preset']!r} both name the "
                "settings to start from (a recipe starts from preset 'compression'); give one"
            )
        clean = {**_recipe_values(clean), **clean}
        clean = {**_preset_values(clean.get("preset"), clean), **clean}
        config = cls(**clean)
        config._check_combinations(sources)
        return cast("RunConfig", config)

    def _check_combinations(self, sources: Mapping[str, str]) -> None:
        if self.hidden is not None and self.network != "mlp":
            why = "its factory sets them" if is_factory_name(self.network) else "it is fixed"
            raise RunError(
                f"{sources.get('hidden', 'config')}: hidden sizes apply to network 'mlp' only, "
                f"not {self.network!r} ({why})"
            )
        if self.zero_precision_prior is not None and not self.zero_component:
            raise RunError(
                "zero_precision_prior needs the zero component; drop it or keep zero_component"
            )
        try:
            check_anneal(self.precision_prior_final, self.anneal_epochs)
        except ValueError as err:
            raise RunError(str(err)) from None
        if self.precision_prior_final is not None and self.flat:
            raise RunError("precision_prior_final anneals a Gamma hyperprior; drop it or drop flat")
        if self.pi_zero is not None and not self.zero_component:
            raise RunError("pi_zero needs the zero component; drop pi_zero or keep zero_component")
        if self.optimizer == "lbfgs" and self.guide not in ("map", "laplace"):
            raise RunError(f"optimizer 'lbfgs' needs guide 'map' or 'laplace', not {self.guide!r}")
        try:
            check_guide_rank(self.guide, self.guide_rank)
        except ValueError as err:
            raise RunError(str(err)) from None
        if self.guide in POINT_GUIDES:
            prior = self.prior_settings()
            problems = prior.map_problems()
            if problems:
                given = ", ".join(
                    f"{n} = {plain(getattr(prior, n))}" for n, *_ in prior.low_concentrations()
                )
                raise RunError(f"{map_hyperprior_error(self.guide, problems)} (settings: {given})")

    # ------------------------------------------------------------------ the library's records
    def prior_settings(self) -> PriorSettings:
        """The :class:`~bayes_sws.settings.PriorSettings` of this run (same names)."""
        return PriorSettings(**{n: getattr(self, n) for n in _shared(PriorSettings)})

    def fit_settings(self, num_train: int | None = None) -> FitSettings:
        """The :class:`~bayes_sws.settings.FitSettings` of this run (same names).

        With ``num_train``, ``num_steps`` is the run's total (:meth:`total_steps`).
        """
        values = {n: getattr(self, n) for n in _shared(FitSettings)}
        values["num_steps"] = FitSettings().num_steps if self.num_steps is None else self.num_steps
        settings = FitSettings(**values)
        if num_train is not None:
            settings = settings.replace(num_steps=settings.total_steps(num_train), num_epochs=None)
        return settings

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready settings (what ``config.json`` holds)."""
        return plain(dataclasses.asdict(self))  # type: ignore[call-overload]

    def identity_settings(self) -> dict[str, Any]:
        """The settings a run's results depend on (all but :data:`RESUME_SETTINGS`).

        Keyed by the names of the first run directories (:data:`LEGACY_NAMES`), and
        without the settings added since while they are at their defaults (or, for
        :data:`LEGACY_VALUES`, at the behaviour of the runs before them), so a run
        keeps its identity across versions.
        """
        old = {new: legacy for legacy, new in LEGACY_NAMES.items()}
        defaults = {f.name: f.default for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        return {
            old.get(k, k): v
            for k, v in self.to_dict().items()
            if k not in RESUME_SETTINGS
            and not (k in _ADDED_SETTINGS and v == plain(defaults[k]))
            and not (k in LEGACY_VALUES and v == LEGACY_VALUES[k])
        }

    def total_steps(self, num_train: int) -> int:
        """SVI steps for a training set of ``num_train`` points."""
        return self.fit_settings().total_steps(num_train)


if TYPE_CHECKING:  # the fields are generated: to the type checker every one is Any

    class RunConfig(_RunConfigMethods):
        __dataclass_fields__: ClassVar[dict[str, Any]]

        def __init__(self, **values: Any) -> None: ...

else:
    RunConfig = dataclasses.make_dataclass(
        "RunConfig",
        _run_fields(),
        bases=(_RunConfigMethods,),
        frozen=True,
    )
    RunConfig.__module__ = __name__
    RunConfig.__doc__ = _RunConfigMethods.__doc__


def _shared(cls) -> list[str]:
    """The names ``cls`` (a settings record) shares with :class:`RunConfig`."""
    run = {f.name for f in dataclasses.fields(RunConfig)}
    return [n for n in cls.names() if n in run]


def _current_name(given: str, sources: dict[str, str], warn: bool) -> str:
    """The current name of a setting given as ``given`` (a legacy name warns once)."""
    if given not in LEGACY_NAMES:
        return given
    new = LEGACY_NAMES[given]
    if warn:
        where = sources.get(given, "config")
        shown = (
            f"{where} is now --{new.replace('_', '-')}"
            if where.startswith("--")
            else f"{where}: {given!r} is now {new!r}"
        )
        warnings.warn(f"{shown}; the old name will be removed", FutureWarning, stacklevel=4)
    return new


def _preset_values(name: str | None, given: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a preset sets (run fields only), less the run length if ``given`` has one."""
    if name is None:
        return {}
    return _run_values(PRESETS[name].differences(), given)


def _run_values(settings: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` (a :class:`~bayes_sws.settings.Preset`'s, by name) that are run fields, less
    the run length if ``given`` has one; a whole number of epochs as a run counts them."""
    run = {f.name for f in dataclasses.fields(RunConfig)}
    values = {k: v for k, v in settings.items() if k in run}
    if "num_steps" in given or "num_epochs" in given:
        values.pop("num_steps", None)
        values.pop("num_epochs", None)
    if isinstance(values.get("num_epochs"), float):
        values["num_epochs"] = round(values["num_epochs"])
    return values


#: a recipe's pretraining (:attr:`Recipe.pretrain <bayes_sws.compress.pipeline.Recipe>`) as
#: run settings
_PRETRAIN_NAMES = {
    "num_epochs": "pretrain_epochs",
    "lr": "pretrain_lr",
    "batch_size": "pretrain_batch_size",
    "lr_scheduler": "pretrain_schedule",
}


def _recipe_values(given: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a ``recipe`` in ``given`` sets (run fields only), less those ``given`` has.

    Its data and network (from its name), raw pixels (``standardize = "none"``, as it was
    chosen on), its pretraining, and every retraining setting of
    :meth:`Recipe.preset <bayes_sws.compress.pipeline.Recipe.preset>` that departs from the
    defaults, with λ scaled to the training set of the data the run will load (given or the
    recipe's: its size is read once, here). Its storing settings are the compress command's
    (:func:`recipe_compress_settings`). A recipe retraining with a setting no run has
    (:data:`~bayes_sws.settings.RETRAINING_SETTINGS`: λ's warm-up, distillation) is refused.
    """
    name = given.get("recipe")
    if name is None:
        return {}
    recipe = RECIPES[name]
    data, network = name.split("/")
    values: dict[str, Any] = {
        "data": data,
        "network": network,
        "standardize": "none",
        **{_PRETRAIN_NAMES[k]: v for k, v in recipe.pretrain.items()},
    }
    values = {**values, **{k: v for k, v in given.items() if k in values}}
    num_train = None if "prior_scale" in given else _train_size({**values, **given})
    chosen = recipe.preset(num_train)
    differences = chosen.differences()
    unreproduced = {k: v for k, v in differences.items() if k in RETRAINING_SETTINGS}
    if unreproduced:  # a retraining a run cannot give; silently dropped it would be another
        listed = ", ".join(f"{k}={v!r}" for k, v in sorted(unreproduced.items()))
        raise RunError(
            f"recipe {name!r} retrains with {listed}, which bayes-sws fit does not reproduce; "
            f"retrain it in Python: soft_weight_sharing(net, data, "
            f"**RECIPES[{name!r}].kwargs(num_train=N))"
        )
    retraining = _run_values({**differences, "guide": chosen.fit.guide}, given)
    values = {**retraining, **values}
    return {k: v for k, v in values.items() if k not in given}


#: what reading a data set a run names can raise besides :class:`~bayes_sws.zoo.data.DataError`
#: (a file the loader does not expect, e.g. a .npy renamed .npz), each reported as a RunError
DATA_READ_ERRORS = (TypeError, ValueError, OSError, EOFError, KeyError, AttributeError)


def _train_size(values: Mapping[str, Any]) -> int:
    """The number of training points of the data ``values`` name (their split settings or
    the defaults), as a run would load them."""
    from ..zoo.data import load_dataset

    defaults = {f.name: f.default for f in dataclasses.fields(_RunData)}
    pick = {**defaults, **{k: v for k, v in values.items() if k in defaults}}
    try:
        data = load_dataset(  # unscaled: only its size is wanted (1.8 s -> 0.3 s on Fashion-MNIST)
            pick["data"],
            test_fraction=pick["test_fraction"],
            seed=pick["split_seed"],
            standardize=False,
        )
    except DATA_READ_ERRORS as err:
        raise RunError(
            f"recipe {values['recipe']!r} scales λ to the training set, but data "
            f"{pick['data']!r} cannot be read ({type(err).__name__}: {err}); give readable "
            "data or prior_scale"
        ) from None
    return data.num_train


def recipe_compress_settings(name: str) -> CompressSettings:
    """The storing settings of recipe ``name`` (:attr:`Preset.compress
    <bayes_sws.settings.Preset>` of :meth:`Recipe.preset
    <bayes_sws.compress.pipeline.Recipe.preset>`): the compress command's defaults for a run
    fitted with that recipe."""
    return RECIPES[name].preset().compress


def _options(fields, aliases: Mapping[str, str]) -> list[dict[str, Any]]:
    """One entry per field (name, default, kind, help, choices, metavar, check, aliases)."""
    keys = ("kind", "help", "choices", "metavar", "check")
    return [
        {
            "name": f.name,
            "default": f.default,
            "aliases": (aliases[f.name],) if f.name in aliases else (),
            **{k: f.metadata[k] for k in keys},
        }
        for f in fields
    ]


def config_options() -> list[dict[str, Any]]:
    """One entry per setting (name, default, kind, help, choices, aliases) for building a parser.

    ``network`` lists no choices: a ``package.module:factory`` is accepted too
    (checked by :meth:`RunConfig.from_dict`).
    """
    old = {new: legacy for legacy, new in LEGACY_NAMES.items()}
    options = _options(dataclasses.fields(RunConfig), old)
    for entry in options:
        if entry["name"] == "network":
            entry["choices"] = None
    return options


def _compress_fields() -> dict[str, dataclasses.Field]:
    return {
        f.name: f
        for f in dataclasses.fields(CompressSettings)
        if f.metadata.get("kind") is not None and f.name not in RETRAINING_SETTINGS
    }


def compress_options() -> list[dict[str, Any]]:
    """The ``compress`` command's settings, as :func:`config_options` gives ``fit``'s."""
    return _options(_compress_fields().values(), {})


def compress_settings(
    values: Mapping[str, Any],
    *,
    base: CompressSettings | None = None,
    sources: Mapping[str, str] | None = None,
) -> CompressSettings:
    """``base`` (default :class:`~bayes_sws.settings.CompressSettings`) with ``values``, validated.

    The keys are the settings ``compress`` takes (:func:`compress_options`);
    ``sources`` maps a key to where it came from (``"--merge-threshold"``).
    Raises :class:`RunError` naming the key, the value and what is accepted.
    """
    known = _compress_fields()
    sources = dict(sources or {})
    clean: dict[str, Any] = {}
    for key, value in values.items():
        where = sources.get(key, "compress")
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise RunError(
                f"{where}: unknown compression setting {key!r}{hint} (accepted: {', '.join(known)})"
            )
        clean[key] = _coerce(known[key], value, where, key)
    return (base or CompressSettings()).replace(**clean)


class _Coercion:
    """Reads one given value as a setting of kind ``kind``; ``bad`` words its refusal."""

    def __init__(self, spec: dataclasses.Field, value: Any, where: str, name: str):
        self.kind: str = spec.metadata["kind"]
        self.choices = spec.metadata["choices"]
        self.value, self.where, self.name = value, where, name

    def bad(self, what: str) -> RunError:
        subject = self.where if self.where.startswith("--") else f"{self.where}: {self.name}"
        return RunError(f"{subject} {what}, got {self.value!r}")

    def number(self, v: Any, integer: bool) -> int | float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.bad(f"must be {KIND_WORDS[self.kind]}")
        if integer and not isinstance(v, int):
            if not (isinstance(v, float) and v.is_integer()):
                raise self.bad("must be an integer")
            v = int(v)
        if not math.isfinite(v):
            raise self.bad("must be finite")
        if not integer and abs(v) > FLOAT32_MAX:
            raise self.bad(
                f"must be at most {FLOAT32_MAX:.4g} in size (the networks compute in float32)"
            )
        return v if integer else float(v)

    def string(self) -> str:
        value = self.value
        if not isinstance(value, str):
            raise self.bad("must be a string")
        if self.choices is None:
            if not value:
                raise self.bad("must not be empty")
            return value
        if self.name == "network" and is_factory_name(value):
            problem = factory_name_problem(value.strip())
            if problem:
                raise self.bad(problem)
            return value.strip()
        normal = value.strip().lower()
        if self.name == "network":
            normal = normal.replace("_", "-")
        if self.name == "activation":
            normal = normal.replace("-", "_")
        if normal not in self.choices:
            error = self.bad(f"must be one of {', '.join(self.choices)}")
            if self.name == "network":
                error.args = (f"{error} (or your own network as package.module:factory)",)
            raise error
        return normal

    def boolean(self) -> bool:
        if not isinstance(self.value, bool):
            raise self.bad("must be true or false")
        return self.value

    def scalar(self) -> int | float:
        return self.number(self.value, integer=self.kind.startswith("int"))

    def ints(self) -> tuple[int | float, ...]:
        value = self.value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = self.value = [value]
        if not isinstance(value, (list, tuple)):
            raise self.bad("must be a list of integers")
        return tuple(self.number(v, integer=True) for v in value)

    def scales(self) -> dict[str, float]:
        """``{name: multiplier}`` from a table (a config file) or ``NAME=X`` words (flags)."""
        value = self.value
        if isinstance(value, (list, tuple)):
            pairs = [str(v).partition("=") for v in value]
            if any(not name or not sep for name, sep, _ in pairs):
                raise self.bad("must be NAME=X words (a tensor name or glob pattern, a number)")
            try:
                value = {name: float(x) for name, _, x in pairs}
            except ValueError:
                raise self.bad("must be NAME=X words with X a number") from None
        if not isinstance(value, Mapping) or not value:
            raise self.bad(f"must be {KIND_WORDS[self.kind]}")
        # finite numbers here; > 0, and a name under the prior, where the model is built
        return {str(name): self.number(x, integer=False) for name, x in value.items()}

    def pair(self) -> tuple[int | float, ...]:
        if not isinstance(self.value, (list, tuple)) or len(self.value) != 2:
            raise self.bad("must be two numbers [a, b]")
        return tuple(self.number(v, integer=False) for v in self.value)


_COERCIONS: dict[str, Callable[[_Coercion], Any]] = {
    "str": _Coercion.string,
    "str?": _Coercion.string,
    "bool": _Coercion.boolean,
    "int": _Coercion.scalar,
    "int?": _Coercion.scalar,
    "float": _Coercion.scalar,
    "float?": _Coercion.scalar,
    "ints": _Coercion.ints,
    "pair": _Coercion.pair,
    "pair?": _Coercion.pair,
    "scales?": _Coercion.scales,
}


def _coerce(spec: dataclasses.Field, value: Any, where: str, name: str | None = None) -> Any:
    """``value`` read as the setting ``spec`` (called ``name`` where it was given)."""
    coercion = _Coercion(spec, value, where, name or spec.name)
    if value is None:
        if coercion.kind.endswith("?") or spec.default is None:
            return None
        raise coercion.bad(f"must be {KIND_WORDS[coercion.kind]}")
    value = coercion.value = _COERCIONS[coercion.kind](coercion)
    if coercion.kind in ("str", "str?", "bool"):
        return value
    check = spec.metadata["check"]
    problem = check(value) if check is not None else None
    if problem:
        raise coercion.bad(problem)
    return value


def _read_config_bytes(path: Path) -> bytes:
    """The bytes of a config file, refused unless it is a regular file of settings' size."""
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise RunError(f"config file {path} is a directory; give a .toml file")
        if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
            raise RunError(f"config file {path} is not a regular file; give a .toml file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise RunError(
                f"config file {path} is {info.st_size} bytes, more than a settings file needs "
                f"(at most {MAX_CONFIG_BYTES} bytes)"
            )
        return path.read_bytes()[: MAX_CONFIG_BYTES + 1]
    except FileNotFoundError:
        raise RunError(f"config file {path} does not exist") from None
    except OSError as err:
        raise RunError(f"cannot read config file {path}: {err.strerror or err}") from None


def _parse_toml(path: Path, text: bytes) -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]  # the same API
        except ModuleNotFoundError:
            raise RunError(
                "reading TOML config files needs Python >= 3.11 or `pip install tomli`"
            ) from None
    try:
        return tomllib.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise RunError(f"config file {path} is not valid TOML: {err}") from None


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML (or JSON) config file into a dict of settings (not yet validated)."""
    path = Path(path)
    text = _read_config_bytes(path)
    if path.suffix.lower() == ".json":
        try:
            values = json.loads(text)
        except ValueError as err:
            raise RunError(f"config file {path} is not valid JSON: {err}") from None
    else:
        values = _parse_toml(path, text)
    if not isinstance(values, dict):
        raise RunError(f"config file {path} must hold a table of settings")
    for key, value in values.items():
        if isinstance(value, dict):
            raise RunError(
                f"config file {path}: [{key}] is a table; write settings as top-level keys "
                f"(e.g. lr = 0.001)"
            )
    return values


def resolve_config(
    file_values: Mapping[str, Any] | None = None,
    flag_values: Mapping[str, Any] | None = None,
    *,
    file_name: str = "config file",
    flag_names: Mapping[str, str] | None = None,
    warn_legacy: bool = True,
) -> RunConfig:
    """Defaults (or a ``preset``), overridden by a config file, overridden by flags; validated.

    Giving ``num_steps`` or ``num_epochs`` on the command line replaces either of
    them in the file. ``flag_names`` maps a setting to the flag that gave it. An old
    name (:data:`LEGACY_NAMES`, e.g. ``components``, or a flag such as ``--components``)
    is read as the new one, with a FutureWarning when ``warn_legacy`` (the command
    line marks the old flags in ``--help`` instead, so that its errors stay one line).
    """
    file_values = {str(k).replace("-", "_"): v for k, v in (file_values or {}).items()}
    flag_names = dict(flag_names or {})
    # by current name: (the name as given, its value, where it came from)
    merged = {LEGACY_NAMES.get(k, k): (k, v, file_name) for k, v in file_values.items()}
    flags = {LEGACY_NAMES.get(k, k) for k in flag_values or {}}
    if "num_steps" in flags or "num_epochs" in flags:
        merged.pop("num_steps", None)
        merged.pop("num_epochs", None)
    for key, value in (flag_values or {}).items():
        flag = flag_names.get(key, "--" + key.replace("_", "-"))
        canonical = "--" + LEGACY_NAMES.get(key, key).replace("_", "-")
        if warn_legacy and flag != canonical and flag[2:].replace("-", "_") in LEGACY_NAMES:
            warnings.warn(
                f"{flag} is now {canonical}; the old flag will be removed", FutureWarning, 2
            )
        merged[LEGACY_NAMES.get(key, key)] = (key, value, flag)
    values = {given: value for given, value, _ in merged.values()}
    sources = {given: where for given, _, where in merged.values()}
    config = RunConfig.from_dict(values, sources=sources, warn_legacy=warn_legacy)
    check_device(config.device, sources.get("device", "device"))
    return config
