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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..compress.pipeline import check_anneal
from ..infer.guides import GUIDES
from ..infer.svi import (
    ON_NONFINITE,
    OPTIMIZERS,
    steps_per_epoch,
)
from ..zoo.nets import ACTIVATIONS, NETWORKS
from .checkpoints import plain

__all__ = [
    "RESUME_SETTINGS",
    "RunConfig",
    "RunError",
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
#: Settings that may change when a run is resumed (fault handling); the others
#: fix the run's results and are part of its identity.
RESUME_SETTINGS = ("on_nonfinite", "max_rollbacks")


def _positive(value) -> str | None:
    return None if value > 0 else "must be > 0"


def _non_negative(value) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _at_least_one(value) -> str | None:
    return None if value >= 1 else "must be >= 1"


def _at_most(limit, why: str, check=None):
    """``check``, and the value no larger than ``limit`` (``why`` says why)."""

    def bounded(value) -> str | None:
        problem = check(value) if check is not None else None
        if problem is None and value > limit:
            problem = (
                f"must be <= {limit if isinstance(limit, int) else format(limit, 'g')} ({why})"
            )
        return problem

    return bounded


_seed = _at_most(SEED_MAX, "2**32 - 1, what NumPy's seeding accepts", _non_negative)


def _open_unit(value) -> str | None:
    return None if 0 < value < 1 else "must lie strictly between 0 and 1"


def _pair_positive(value) -> str | None:
    return None if all(v > 0 for v in value) else "must be two numbers > 0"


def _pair_non_negative(value) -> str | None:
    return None if all(v >= 0 for v in value) else "must be two numbers >= 0"


def _widths(value) -> str | None:
    if not value:
        return "must list at least one hidden width"
    if len(value) > 100:
        return "must list at most 100 hidden widths"
    if not all(v >= 1 for v in value):
        return "must be widths >= 1"
    return None if all(v <= 10**5 for v in value) else "must be widths <= 100000"


def _opt(default, help: str, kind: str, check=None, choices=None, metavar=None):
    return field(
        default=default,
        metadata={
            "help": help,
            "kind": kind,
            "check": check,
            "choices": choices,
            "metavar": metavar,
        },
    )


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run; the keys of a TOML config file and the ``fit`` flags.

    ``steps`` and ``epochs`` are alternatives (one SVI step is one mini-batch;
    an epoch is ``num_train // batch_size`` steps); with neither, 2000 steps.
    Build one with :meth:`from_dict` (validates) or :func:`resolve_config`.
    """

    # data
    data: str = _opt(
        "digits",
        "data set: digits, fashion-mnist, mnist-5k, mnist, or a .npz "
        "file with x, y (or x_train, y_train, x_test, y_test)",
        "str",
        metavar="NAME",
    )
    standardize: str = _opt(
        "feature",
        "input scaling: per feature, one global mean/std, or none",
        "str",
        choices=("feature", "global", "none"),
    )
    test_fraction: float = _opt(
        0.2, "test share for data without an official split", "float", _open_unit
    )
    split_seed: int = _opt(0, "seed of that train/test split", "int", _seed)
    # network
    network: str = _opt("mlp", "architecture", "str", choices=NETWORKS)
    hidden: tuple[int, ...] | None = _opt(
        None, "hidden widths of the mlp (default: 100)", "ints", _widths, metavar="WIDTH"
    )
    activation: str = _opt("relu", "activation of the mlp", "str", choices=tuple(ACTIVATIONS))
    pretrain_epochs: int = _opt(
        60,
        "epochs of plain training before SVI (0: start from random weights)",
        "int",
        _at_most(10**6, "a million epochs", _non_negative),
    )
    pretrain_lr: float = _opt(1e-3, "Adam learning rate of pretraining", "float", _positive)
    pretrain_batch_size: int = _opt(
        64, "batch size of pretraining", "int", _at_most(2**31 - 1, "int32", _at_least_one)
    )
    # prior
    components: int = _opt(
        16,
        "mixture components M (the zero component included)",
        "int",
        _at_most(1024, "one shared value per component; more cannot compress", _at_least_one),
    )
    zero_component: bool = _opt(True, "component 0 fixed at mean 0 (the pruning component)", "bool")
    pi_zero: float | None = _opt(
        None,
        "fix the zero component's weight π0 (default: learned, with a Beta prior)",
        "float?",
        _open_unit,
        metavar="P",
    )
    pi_zero_prior: tuple[float, float] = _opt(
        (1.0, 1.0), "Beta(a, b) prior on π0", "pair", _pair_positive, metavar=("A", "B")
    )
    init_pi_zero: float = _opt(0.5, "initial π0 when learned", "float", _open_unit)
    mixing_concentration: float = _opt(
        1.0, "Dirichlet α of the other mixing proportions (>= 1 for MAP)", "float", _positive
    )
    mean_scale: float = _opt(
        1.0, "scale of the Normal prior on the component means", "float", _positive
    )
    ordered_means: bool = _opt(False, "order the component means (identifiable under MCMC)", "bool")
    precision_prior: tuple[float, float] = _opt(
        (2.0, 2e-3),
        "Gamma(shape, rate) prior on each precision 1/σ²",
        "pair",
        _pair_positive,
        metavar=("SHAPE", "RATE"),
    )
    zero_precision_prior: tuple[float, float] | None = _opt(
        None,
        "Gamma(shape, rate) prior on the zero component's precision (default: as the others)",
        "pair?",
        _pair_positive,
        metavar=("SHAPE", "RATE"),
    )
    precision_prior_final: tuple[float, float] | None = _opt(
        None,
        "soft-to-hard anneal: Gamma(shape, rate) the non-zero precision prior moves to, "
        "e.g. 250 0.01 from a slab --precision-prior 250 1",
        "pair?",
        _pair_positive,
        metavar=("SHAPE", "RATE"),
    )
    anneal_epochs: tuple[float, float] | None = _opt(
        None,
        "first and last epoch of the anneal; none: from half-way to 0.9 of training",
        "pair?",
        _pair_non_negative,
        metavar=("START", "END"),
    )
    flat: bool = _opt(False, "flat hyperpriors: MAP is exactly E + λΩ", "bool")
    include_bias: bool = _opt(False, "put the prior on biases too", "bool")
    prior_scale: float = _opt(
        0.1, "λ in E + λΩ (1 is the plain Bayesian model)", "float", _non_negative, metavar="LAMBDA"
    )
    # likelihood (regression data only)
    noise_precision: float = _opt(
        1.0, "Gaussian noise precision β (regression data)", "float", _positive
    )
    learn_noise_precision: bool = _opt(
        False, "learn β with a Gamma prior (regression data)", "bool"
    )
    # inference
    guide: str = _opt(
        "map",
        "posterior: map (AutoDelta), normal, lowrank, laplace, mixed",
        "str",
        choices=tuple(GUIDES),
    )
    init_scale: float = _opt(
        1e-3,
        "initial std of variational guides",
        "float",
        _at_most(10.0, "the initial posterior std of each weight", _positive),
    )
    num_particles: int = _opt(
        1,
        "ELBO particles per step",
        "int",
        _at_most(10**4, "each particle is a forward pass", _at_least_one),
    )
    optimizer: str = _opt(
        "adam", "optimiser (lbfgs: full batch, map/laplace only)", "str", choices=OPTIMIZERS
    )
    lr: float = _opt(1e-3, "learning rate of the weights", "float", _positive)
    mixture_lr: float | None = _opt(
        3e-3, "learning rate of the mixture hyperparameters", "float?", _positive
    )
    steps: int | None = _opt(
        None,
        "SVI steps, one mini-batch each (default: 2000 unless --epochs)",
        "int?",
        _at_most(10**9, "a billion steps", _at_least_one),
    )
    epochs: int | None = _opt(
        None,
        "SVI epochs instead of steps",
        "int?",
        _at_most(10**6, "a million epochs", _at_least_one),
    )
    batch_size: int = _opt(
        128, "mini-batch size", "int", _at_most(2**31 - 1, "int32", _at_least_one)
    )
    seed: int = _opt(0, "seed of initialisation, pretraining, batches and the guide", "int", _seed)
    on_nonfinite: str = _opt(
        "raise",
        "on a non-finite loss or gradient: raise (stop, exit 1) or rollback (restore the last "
        "good state, lower the learning rates, go on)",
        "str",
        choices=ON_NONFINITE,
    )
    max_rollbacks: int = _opt(
        3,
        "rollbacks allowed with on_nonfinite=rollback",
        "int",
        _at_most(1000, "each halves the learning rates", _non_negative),
    )
    checkpoint_every: int = _opt(
        100, "steps between checkpoints", "int", _at_most(10**9, "a billion", _at_least_one)
    )
    keep_checkpoints: int = _opt(
        2,
        "number of newest checkpoints kept",
        "int",
        _at_most(10**4, "ten thousand", _at_least_one),
    )

    # ------------------------------------------------------------------ building
    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any], *, sources: Mapping[str, str] | None = None
    ) -> RunConfig:
        """Validate ``values`` (names as the fields, ``-`` or ``_``) into a config.

        ``sources`` maps keys to where they came from (``"--lr"``, ``"run.toml"``)
        for the error messages. Raises :class:`RunError` naming the key, the value
        and what is accepted.
        """
        if not isinstance(values, Mapping):
            raise RunError(
                f"a run configuration must be a table of settings, got {type(values).__name__}"
            )
        sources = dict(sources or {})
        known = {f.name: f for f in dataclasses.fields(cls)}
        clean: dict[str, Any] = {}
        for raw_key, value in values.items():
            key = str(raw_key).replace("-", "_")
            where = sources.get(key, sources.get(raw_key, "config"))
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise RunError(
                    f"{where}: unknown setting {raw_key!r}{hint} (accepted: {', '.join(known)})"
                )
            clean[key] = _coerce(known[key], value, where)
        if clean.get("steps") is not None and clean.get("epochs") is not None:
            raise RunError(
                f"give either steps ({sources.get('steps', 'config')}) or epochs "
                f"({sources.get('epochs', 'config')}), not both"
            )
        config = cls(**clean)
        config._check_combinations(sources)
        return config

    def _check_combinations(self, sources: Mapping[str, str]) -> None:
        if self.hidden is not None and self.network != "mlp":
            raise RunError(
                f"{sources.get('hidden', 'config')}: hidden sizes apply to network 'mlp' only, "
                f"not {self.network!r} (its architecture is fixed)"
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
        if self.guide in ("map", "laplace", "mixed") and not self.flat:
            low = [
                f"{name} = {value}"
                for name, value in (
                    ("mixing_concentration", self.mixing_concentration),
                    ("pi_zero_prior[0]", self.pi_zero_prior[0]),
                    ("pi_zero_prior[1]", self.pi_zero_prior[1]),
                    ("precision_prior shape", self.precision_prior[0]),
                    ("zero_precision_prior shape", (self.zero_precision_prior or (1.0,))[0]),
                    ("precision_prior_final shape", (self.precision_prior_final or (1.0,))[0]),
                )
                if value < 1
            ]
            if low:
                raise RunError(
                    f"guide {self.guide!r} needs hyperprior concentrations >= 1 (the MAP does not "
                    f"exist otherwise): {', '.join(low)}; raise them or use guide 'normal'"
                )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready settings (what ``config.json`` holds)."""
        return plain(dataclasses.asdict(self))

    def identity_settings(self) -> dict[str, Any]:
        """The settings a run's results depend on (all but :data:`RESUME_SETTINGS`)."""
        return {k: v for k, v in self.to_dict().items() if k not in RESUME_SETTINGS}

    def num_steps(self, num_train: int) -> int:
        """SVI steps for a training set of ``num_train`` points."""
        if self.epochs is not None:
            return self.epochs * steps_per_epoch(num_train, self.batch_size)
        return self.steps if self.steps is not None else 2000


def config_options() -> list[dict[str, Any]]:
    """One entry per setting (name, default, kind, help, choices) for building a parser."""
    return [
        {
            "name": f.name,
            "default": f.default,
            **{k: f.metadata[k] for k in ("kind", "help", "choices", "metavar")},
        }
        for f in dataclasses.fields(RunConfig)
    ]


_KIND_WORDS = {
    "str": "a string",
    "int": "an integer",
    "int?": "an integer",
    "float": "a number",
    "float?": "a number",
    "bool": "true or false",
    "ints": "a list of integers",
    "pair": "two numbers",
    "pair?": "two numbers",
}


def _coerce(option: dataclasses.Field, value: Any, where: str) -> Any:
    kind, check, choices = (
        option.metadata["kind"],
        option.metadata["check"],
        option.metadata["choices"],
    )
    name = option.name

    def bad(what: str) -> RunError:
        subject = where if where.startswith("--") else f"{where}: {name}"
        return RunError(f"{subject} {what}, got {value!r}")

    def number(v: Any, integer: bool) -> int | float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise bad(f"must be {_KIND_WORDS[kind]}")
        if integer and not isinstance(v, int):
            if not (isinstance(v, float) and v.is_integer()):
                raise bad("must be an integer")
            v = int(v)
        if not math.isfinite(v):
            raise bad("must be finite")
        if not integer and abs(v) > FLOAT32_MAX:
            raise bad(
                f"must be at most {FLOAT32_MAX:.4g} in size (the networks compute in float32)"
            )
        return v if integer else float(v)

    if value is None:
        if kind.endswith("?") or option.default is None:
            return None
        raise bad(f"must be {_KIND_WORDS[kind]}")
    if kind == "str":
        if not isinstance(value, str):
            raise bad("must be a string")
        if choices is not None:
            normal = (
                value.strip().lower().replace("_", "-")
                if name == "network"
                else value.strip().lower()
            )
            if name == "activation":
                normal = normal.replace("-", "_")
            if normal not in choices:
                raise bad(f"must be one of {', '.join(choices)}")
            value = normal
        elif not value:
            raise bad("must not be empty")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("must be true or false")
        return value
    if kind in ("int", "int?", "float", "float?"):
        value = number(value, integer=kind.startswith("int"))
    elif kind == "ints":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise bad("must be a list of integers")
        value = tuple(number(v, integer=True) for v in value)
    elif kind in ("pair", "pair?"):
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise bad("must be two numbers [a, b]")
        value = tuple(number(v, integer=False) for v in value)
    problem = check(value) if check is not None else None
    if problem:
        raise bad(problem)
    return value


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML (or JSON) config file into a dict of settings (not yet validated)."""
    path = Path(path)
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
        text = path.read_bytes()[: MAX_CONFIG_BYTES + 1]
    except FileNotFoundError:
        raise RunError(f"config file {path} does not exist") from None
    except OSError as err:
        raise RunError(f"cannot read config file {path}: {err.strerror or err}") from None
    if path.suffix.lower() == ".json":
        try:
            values = json.loads(text)
        except ValueError as err:
            raise RunError(f"config file {path} is not valid JSON: {err}") from None
    else:
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
            values = tomllib.loads(text.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise RunError(f"config file {path} is not valid TOML: {err}") from None
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
) -> RunConfig:
    """Defaults, overridden by a config file, overridden by flags; validated.

    Giving ``steps`` or ``epochs`` on the command line replaces either of them in the file.
    """
    file_values = {str(k).replace("-", "_"): v for k, v in (file_values or {}).items()}
    flag_values = dict(flag_values or {})
    flag_names = dict(flag_names or {})
    if "steps" in flag_values or "epochs" in flag_values:
        file_values.pop("steps", None)
        file_values.pop("epochs", None)
    merged = {**file_values, **flag_values}
    sources = dict.fromkeys(file_values, file_name)
    sources.update({k: flag_names.get(k, "--" + k.replace("_", "-")) for k in flag_values})
    return RunConfig.from_dict(merged, sources=sources)
