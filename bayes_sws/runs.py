"""Run directories: a fit you can stop, resume, reload and analyse later.

A run directory holds everything about one fit, each file written atomically
(:mod:`bayes_sws._io`: temporary file, flush, fsync, rename), so a process
killed at any moment leaves the previous complete version of every file:

.. code-block:: text

    DIR/
      config.json             every setting of the run, defaults filled in
      initial.ckpt            the network when SVI starts (after pretraining)
      checkpoints/
        step-00000500.ckpt    FitState every `checkpoint_every` steps (newest few kept)
      result.ckpt             the fitted result (save_result / load_result)
      result.json             a readable summary of result.ckpt (not needed to load it)
      metrics.json            test accuracy or RMSE, final loss, steps, wall time, versions
      losses.csv              step,loss for every SVI step
      compression.json        added by compress_run (plots/compression_*.png too)
      posterior.nc            added by diagnose_run (plots/*.png, posterior_summary.csv)

Checkpoint files (``*.ckpt``) are one self-checking container::

    line 1   b"bayes-sws checkpoint\\n"
    line 2   JSON header: format_version, kind, payload_bytes, sha256 (of the payload)
    rest     payload: ``torch.save`` of a dict of tensors, lists and numbers

and are read with ``torch.load(weights_only=True)`` only after the length and
the SHA-256 digest check out, so a truncated or corrupted file raises
:class:`CheckpointError` and is never loaded silently.

The command line (:mod:`bayes_sws.cli`) only parses arguments and calls
:func:`fit_run`, :func:`resume_run`, :func:`compress_run`,
:func:`diagnose_run` and :func:`report_run`.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import difflib
import hashlib
import inspect
import io
import json
import math
import os
import platform
import re
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ._io import atomic_write_bytes, atomic_write_json, atomic_write_text
from .guides import GUIDES
from .infer import (
    ON_NONFINITE,
    OPTIMIZERS,
    FitResult,
    FitState,
    fit,
    get_rng_state,
    local_params,
    set_rng_state,
)
from .likelihoods import LIKELIHOODS, Categorical, Gaussian, Likelihood
from .model import SWSModel
from .nets import ACTIVATIONS, NETWORKS, build_network
from .priors import MixturePrior

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "CheckpointError",
    "InterruptFlag",
    "RunConfig",
    "RunError",
    "RunInterrupted",
    "RunOutcome",
    "compress_run",
    "config_options",
    "diagnose_run",
    "fit_run",
    "format_outcome",
    "latest_checkpoint",
    "load_config_file",
    "load_result",
    "read_checkpoint",
    "report_run",
    "resolve_config",
    "resume_run",
    "save_result",
    "stop_on_interrupt",
    "write_checkpoint",
]

#: Version of the ``.ckpt`` container and of its payloads; files of a newer version are refused.
CHECKPOINT_FORMAT_VERSION = 1
_MAGIC = b"bayes-sws checkpoint\n"
_MAX_HEADER = 4096

CONFIG_FILE = "config.json"
INITIAL_FILE = "initial.ckpt"
CHECKPOINT_DIR = "checkpoints"
RESULT_FILE = "result.ckpt"
RESULT_SUMMARY_FILE = "result.json"
METRICS_FILE = "metrics.json"
LOSSES_FILE = "losses.csv"
COMPRESSION_FILE = "compression.json"
POSTERIOR_FILE = "posterior.nc"
POSTERIOR_SUMMARY_FILE = "posterior_summary.csv"
PLOTS_DIR = "plots"
_LOCK_FILE = ".lock"
_CHECKPOINT_NAME = re.compile(r"^step-(\d+)\.ckpt$")


class RunError(ValueError):
    """A run directory or run setting that cannot be used as asked (a user mistake)."""


class CheckpointError(ValueError):
    """A checkpoint or result file that is missing, truncated, corrupted or of an unknown format."""


class RunInterrupted(Exception):
    """Raised inside a run when a stop was requested (Ctrl-C) before SVI started."""


# ============================================================================ checkpoint files
def write_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any], *, kind: str) -> Path:
    """Write ``payload`` as a self-checking ``.ckpt`` container, atomically.

    Parameters
    ----------
    path : path-like
    payload : mapping
        Tensors, lists, tuples, dicts, strings and numbers (what
        ``torch.load(weights_only=True)`` reads back).
    kind : str
        What the file holds (``"checkpoint"``, ``"result"``, ``"network"``);
        :func:`read_checkpoint` can insist on it.
    """
    buffer = io.BytesIO()
    torch.save(dict(payload), buffer)
    body = buffer.getvalue()
    header = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "kind": kind,
        "payload_bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    data = _MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + body
    return atomic_write_bytes(path, data)


def read_checkpoint(path: str | os.PathLike, *, kind: str | None = None) -> dict[str, Any]:
    """Read a ``.ckpt`` container written by :func:`write_checkpoint`, after checking it.

    Raises
    ------
    CheckpointError
        When the file is missing, is not a bayes-sws checkpoint, has a newer
        format version, holds another ``kind``, is truncated (fewer bytes than
        its header announces) or corrupted (SHA-256 mismatch).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror or err}") from None
    if not data.startswith(_MAGIC):
        what = "is empty" if not data else "is not a bayes-sws checkpoint (wrong leading bytes)"
        raise CheckpointError(f"{path} {what}; it may have been truncated or overwritten")
    end = data.find(b"\n", len(_MAGIC), len(_MAGIC) + _MAX_HEADER)
    try:
        if end < 0:
            raise ValueError("no header line")
        header = json.loads(data[len(_MAGIC) : end])
        version = int(header["format_version"])
        size = int(header["payload_bytes"])
        digest = str(header["sha256"])
        found_kind = str(header["kind"])
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(
            f"{path} has a damaged header; the file is truncated or corrupted"
        ) from None
    if version > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {version}, newer than this bayes_sws understands "
            f"({CHECKPOINT_FORMAT_VERSION}); upgrade bayes_sws to read it"
        )
    if kind is not None and found_kind != kind:
        raise CheckpointError(f"{path} holds a {found_kind!r}, expected a {kind!r}")
    body = data[end + 1 :]
    if len(body) != size:
        raise CheckpointError(
            f"{path} is truncated or corrupted: {len(body)} payload bytes, header says {size}"
        )
    if hashlib.sha256(body).hexdigest() != digest:
        raise CheckpointError(
            f"{path} is corrupted: its SHA-256 checksum does not match the header"
        )
    try:
        payload = torch.load(io.BytesIO(body), weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - a checksum-valid but unreadable pickle is corrupt
        raise CheckpointError(
            f"{path} has a checksum-valid but unreadable payload: {err}"
        ) from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} holds a {type(payload).__name__}, expected a dict")
    return payload


# ============================================================================ save / load results
def versions() -> dict[str, str]:
    """Versions of Python, torch, Pyro, numpy and bayes_sws (recorded in every run)."""
    import pyro

    from . import __version__

    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "pyro": str(pyro.__version__),
        "numpy": str(np.__version__),
        "bayes_sws": str(__version__),
    }


def _init_kwargs(obj: Any, cls: type) -> dict[str, Any]:
    """Constructor arguments of ``obj`` read back from its attributes of the same names."""
    kwargs = {}
    for name in list(inspect.signature(cls.__init__).parameters)[1:]:
        if hasattr(obj, name):
            value = getattr(obj, name)
            kwargs[name] = list(value) if isinstance(value, tuple) else value
    return kwargs


def _same_attributes(a: Any, b: Any) -> bool:
    va, vb = vars(a), vars(b)
    if va.keys() != vb.keys():
        return False
    for key in va:
        x, y = va[key], vb[key]
        if torch.is_tensor(x) or torch.is_tensor(y):
            if not (torch.is_tensor(x) and torch.is_tensor(y) and torch.equal(x, y)):
                return False
        elif x != y:
            return False
    return True


def prior_spec(prior: MixturePrior) -> dict[str, Any]:
    """The constructor arguments that rebuild ``prior`` (checked by rebuilding it)."""
    if callable(prior.params):
        raise TypeError(
            "a MixturePrior(params=<predicate>) cannot be saved; give the parameter names "
            "instead, e.g. MixturePrior(params=['0.weight', '2.weight'])"
        )
    full = _init_kwargs(prior, MixturePrior)
    # Arguments defaulting to None may be derived from others (zero_precision_rate
    # defaults to precision_rate): leave them out unless the rebuilt prior differs.
    signature = inspect.signature(MixturePrior.__init__).parameters
    optional = [k for k in full if signature[k].default is None and full[k] is not None]
    spec = {k: v for k, v in full.items() if k not in optional}
    for _ in range(len(optional) + 1):
        try:
            rebuilt = _build_prior(spec)
        except (TypeError, ValueError):
            rebuilt = None
        if rebuilt is not None and _same_attributes(rebuilt, prior):
            return spec
        missing = [k for k in optional if k not in spec]
        if rebuilt is not None:
            missing = [k for k in missing if not _same_attributes_for(rebuilt, prior, k)] or missing
        if not missing:
            break
        spec[missing[0]] = full[missing[0]]
    raise ValueError(f"cannot record {prior!r} faithfully from its attributes; it was not saved")


def _same_attributes_for(a: Any, b: Any, name: str) -> bool:
    x, y = getattr(a, name, None), getattr(b, name, None)
    if torch.is_tensor(x) or torch.is_tensor(y):
        return torch.is_tensor(x) and torch.is_tensor(y) and torch.equal(x, y)
    return x == y


def likelihood_spec(likelihood: Likelihood) -> dict[str, Any]:
    """``{"name": ..., **constructor arguments}`` of a registered likelihood."""
    for name, cls in LIKELIHOODS.items():
        if type(likelihood) is cls:
            return {"name": name, **_init_kwargs(likelihood, cls)}
    raise ValueError(
        f"likelihood {type(likelihood).__name__} is not one of the registered "
        f"{sorted(LIKELIHOODS)}; pass likelihood=... to load_result to rebuild it"
    )


def build_likelihood(spec: Mapping[str, Any]) -> Likelihood:
    spec = dict(spec)
    cls = LIKELIHOODS[spec.pop("name")]
    if "precision_prior" in spec:
        spec["precision_prior"] = tuple(spec["precision_prior"])
    return cls(**spec)


def _build_prior(spec: Mapping[str, Any]) -> MixturePrior:
    spec = dict(spec)
    for key in ("pi_zero_prior",):
        if key in spec and spec[key] is not None:
            spec[key] = tuple(spec[key])
    if spec.get("params") is not None:
        spec["params"] = tuple(spec["params"])
    return MixturePrior(**spec)


@contextlib.contextmanager
def _rng_preserved() -> Iterator[None]:
    """Rebuilding a guide draws random numbers (AutoLowRank's factor); keep the caller's RNG."""
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def _rebuild_guide(
    name: str, model: SWSModel, config: Mapping[str, Any], state: Mapping[str, Tensor], builder
):
    """A guide of the saved kind, its lazily created parameters set up, then loaded."""
    from pyro.infer.autoguide import AutoMultivariateNormal, init_to_median, init_to_value

    from .guides import build_guide

    init_loc_fn = init_to_value(values=model.init_values(), fallback=init_to_median)
    like = model._like()
    x = torch.zeros((1, *config["input_shape"]), dtype=like.dtype, device=like.device)
    with torch.no_grad():  # any observed value will do: it only shapes the trace
        output = model.net(x)
        y = (
            output.argmax(-1)
            if isinstance(model.likelihood, Categorical)
            else model.likelihood.mean(output, {})
        )
    with _rng_preserved(), local_params():
        if name == "laplace":  # fit returns the Gaussian at the mode (AutoMultivariateNormal)
            guide = AutoMultivariateNormal(model, init_loc_fn=init_loc_fn)
            guide._setup_prototype(x, y)
            for key in ("loc", "scale", "scale_tril"):
                delattr(guide, key)
                guide.register_buffer(key, torch.empty_like(state[key]))
        else:
            source = builder if builder is not None else name
            if builder is None and name not in GUIDES:
                raise ValueError(
                    f"the result was fitted with a custom guide {name!r}; pass the same builder "
                    "as load_result(..., guide=builder)"
                )
            guide = build_guide(
                source,
                model,
                init_loc_fn=init_loc_fn,
                init_scale=config["init_scale"],
                hyper_sites=model.hyper_site_names,
            )
            with torch.no_grad():
                guide(x, y)  # creates the parameters
        try:
            guide.load_state_dict(dict(state))
        except RuntimeError as err:
            raise CheckpointError(
                f"the saved guide parameters do not fit the rebuilt guide: {err}"
            ) from None
    return guide


def save_result(
    result: FitResult,
    directory: str | os.PathLike,
    *,
    network_spec: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save a fitted result to ``directory/result.ckpt`` (+ a readable ``result.json``).

    Parameters
    ----------
    result : FitResult
    directory : path-like
        Created if missing.
    network_spec : mapping, optional
        Keyword arguments of :func:`bayes_sws.nets.build_network` that rebuild the
        architecture (``name``, ``input_shape``, ``num_classes``, ``hidden``,
        ``activation``). Without it, :func:`load_result` needs a network of the
        same architecture passed as ``network=``.
    extra : mapping, optional
        Further plain values stored with the result (e.g. data-set details).

    Returns
    -------
    pathlib.Path
        The path of ``result.ckpt``.
    """
    if not isinstance(result, FitResult):
        raise TypeError(f"result must be a FitResult, got {type(result).__name__}")
    model = result.model
    with local_params(), torch.no_grad():
        guide_state = {k: v.detach().clone() for k, v in result.guide.state_dict().items()}
    payload = {
        "network_spec": None if network_spec is None else _plain(dict(network_spec)),
        "network_state": {k: v.detach().clone() for k, v in model.net.state_dict().items()},
        "prior": prior_spec(model.prior),
        "likelihood": likelihood_spec(model.likelihood),
        "prior_scale": float(model.prior_scale),
        "guide_name": result.guide_name,
        "guide_state": guide_state,
        "losses": torch.as_tensor(np.asarray(result.losses, dtype=np.float64)),
        "config": _plain(dict(result.config)),
        "wall_time": float(result.wall_time),
        "versions": versions(),
        "extra": _plain(dict(extra or {})),
    }
    directory = Path(directory)
    path = write_checkpoint(directory / RESULT_FILE, payload, kind="result")
    mixture = result.mixture()
    summary = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "file": RESULT_FILE,
        "guide": result.guide_name,
        "num_steps": len(result.losses),
        "final_loss": float(result.losses[-1]) if len(result.losses) else None,
        "config": payload["config"],
        "network_spec": payload["network_spec"],
        "prior": _plain(payload["prior"]),
        "likelihood": _plain(payload["likelihood"]),
        "mixture": {k: getattr(mixture, k).tolist() for k in ("pi", "mu", "sigma")},
        "versions": payload["versions"],
    }
    atomic_write_json(directory / RESULT_SUMMARY_FILE, summary)
    return path


def load_result(
    directory: str | os.PathLike,
    *,
    network: nn.Module | None = None,
    guide: Callable | None = None,
    likelihood: Likelihood | None = None,
) -> FitResult:
    """Load what :func:`save_result` wrote: the same medians, mixture and predictions.

    The network is rebuilt from the saved spec (or ``network=``), the model from
    the saved prior and likelihood, and the guide by building it afresh, running
    it once so Pyro creates its parameters, then loading their saved values.

    Raises
    ------
    CheckpointError
        If ``result.ckpt`` is missing, truncated or corrupted.
    """
    directory = Path(directory)
    path = directory / RESULT_FILE if directory.is_dir() or not directory.suffix else directory
    payload = read_checkpoint(path, kind="result")
    spec = payload["network_spec"]
    if network is None:
        if spec is None:
            raise ValueError(
                f"{path} was saved without a network spec; pass a network of the same "
                "architecture as load_result(..., network=net)"
            )
        with _rng_preserved():  # initial weights are overwritten; keep the caller's RNG
            network = build_network(**_network_kwargs(spec))
    try:
        network.load_state_dict(payload["network_state"])
    except RuntimeError as err:
        raise ValueError(f"the saved network state does not fit the network: {err}") from None
    prior = _build_prior(payload["prior"])
    like = likelihood if likelihood is not None else build_likelihood(payload["likelihood"])
    model = SWSModel(network, prior, like, prior_scale=payload["prior_scale"])
    fitted = _rebuild_guide(
        payload["guide_name"], model, payload["config"], payload["guide_state"], guide
    )
    losses = payload["losses"].numpy().astype(np.float64)
    return FitResult(
        model, fitted, payload["guide_name"], losses, dict(payload["config"]), payload["wall_time"]
    )


def _network_kwargs(spec: Mapping[str, Any]) -> dict[str, Any]:
    kwargs = dict(spec)
    kwargs["input_shape"] = tuple(kwargs["input_shape"])
    if kwargs.get("hidden") is not None:
        kwargs["hidden"] = tuple(kwargs["hidden"])
    name = kwargs.pop("name")
    return {"name": name, **kwargs}


def _plain(value: Any) -> Any:
    """JSON-friendly copy: tuples to lists, tensors and numpy to lists/numbers."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if torch.is_tensor(value):
        return value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


# ============================================================================ configuration
def _positive(value) -> str | None:
    return None if value > 0 else "must be > 0"


def _non_negative(value) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _at_least_one(value) -> str | None:
    return None if value >= 1 else "must be >= 1"


def _open_unit(value) -> str | None:
    return None if 0 < value < 1 else "must lie strictly between 0 and 1"


def _pair_positive(value) -> str | None:
    return None if all(v > 0 for v in value) else "must be two numbers > 0"


def _widths(value) -> str | None:
    if not value:
        return "must list at least one hidden width"
    return None if all(v >= 1 for v in value) else "must be widths >= 1"


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
    split_seed: int = _opt(0, "seed of that train/test split", "int", _non_negative)
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
        _non_negative,
    )
    pretrain_lr: float = _opt(1e-3, "Adam learning rate of pretraining", "float", _positive)
    pretrain_batch_size: int = _opt(64, "batch size of pretraining", "int", _at_least_one)
    # prior
    components: int = _opt(
        16, "mixture components M (the zero component included)", "int", _at_least_one
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
    init_scale: float = _opt(1e-3, "initial std of variational guides", "float", _positive)
    num_particles: int = _opt(1, "ELBO particles per step", "int", _at_least_one)
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
        _at_least_one,
    )
    epochs: int | None = _opt(None, "SVI epochs instead of steps", "int?", _at_least_one)
    batch_size: int = _opt(128, "mini-batch size", "int", _at_least_one)
    seed: int = _opt(
        0, "seed of initialisation, pretraining, batches and the guide", "int", _non_negative
    )
    on_nonfinite: str = _opt(
        "raise",
        "on a non-finite loss or gradient: raise (stop, exit 1) or rollback (restore the last "
        "good state, lower the learning rates, go on)",
        "str",
        choices=ON_NONFINITE,
    )
    max_rollbacks: int = _opt(3, "rollbacks allowed with on_nonfinite=rollback", "int", _non_negative)
    checkpoint_every: int = _opt(100, "steps between checkpoints", "int", _at_least_one)
    keep_checkpoints: int = _opt(2, "number of newest checkpoints kept", "int", _at_least_one)

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
        return _plain(dataclasses.asdict(self))

    def num_steps(self, num_train: int) -> int:
        """SVI steps for a training set of ``num_train`` points."""
        if self.epochs is not None:
            per_epoch = max(1, num_train // min(self.batch_size, num_train))
            return self.epochs * per_epoch
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
        text = path.read_bytes()
    except FileNotFoundError:
        raise RunError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise RunError(f"config file {path} is a directory; give a .toml file") from None
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
                import tomli as tomllib
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
    sources = {k: file_name for k in file_values}
    sources.update({k: flag_names.get(k, "--" + k.replace("_", "-")) for k in flag_values})
    return RunConfig.from_dict(merged, sources=sources)


# ============================================================================ data and network
def _load_data(config: RunConfig):
    from .data import DataError, load_dataset

    flatten = config.network != "lenet-5"
    standardize = {"feature": True, "global": "global", "none": False}[config.standardize]
    try:
        return load_dataset(
            config.data,
            flatten=flatten,
            test_fraction=config.test_fraction,
            seed=config.split_seed,
            standardize=standardize,
        )
    except DataError:
        raise
    except (TypeError, ValueError, OSError, EOFError, KeyError, AttributeError) as err:
        # a file the loader does not expect (e.g. a .npy renamed .npz): name it, not numpy's internals
        raise RunError(
            f"data {config.data!r} cannot be read ({type(err).__name__}: {err}); give one of "
            "digits, fashion-mnist, mnist-5k, mnist or an .npz file saved with numpy.savez "
            "holding x, y (or x_train, y_train, x_test, y_test)"
        ) from None


def _network_spec(config: RunConfig, data) -> dict[str, Any]:
    if data.num_classes is None:
        outputs = 1 if data.y_train.dim() == 1 else int(data.y_train.shape[1])
    else:
        outputs = data.num_classes
    return {
        "name": config.network,
        "input_shape": list(data.input_shape),
        "num_classes": outputs,
        "hidden": None if config.hidden is None else list(config.hidden),
        "activation": config.activation,
    }


def _likelihood(config: RunConfig, data) -> Likelihood | str:
    if data.is_classification:
        return "categorical"
    return Gaussian(precision=config.noise_precision, learn_precision=config.learn_noise_precision)


def _prior(config: RunConfig) -> MixturePrior:
    return MixturePrior(
        config.components,
        zero_component=config.zero_component,
        pi_zero=config.pi_zero,
        pi_zero_prior=config.pi_zero_prior,
        init_pi_zero=config.init_pi_zero,
        mixing_concentration=config.mixing_concentration,
        mean_scale=config.mean_scale,
        ordered_means=config.ordered_means,
        precision_concentration=config.precision_prior[0],
        precision_rate=config.precision_prior[1],
        **(
            {}
            if config.zero_precision_prior is None
            else {
                "zero_precision_concentration": config.zero_precision_prior[0],
                "zero_precision_rate": config.zero_precision_prior[1],
            }
        ),
        flat=config.flat,
        include_bias=config.include_bias,
    )


def _evaluate_network(net: nn.Module, data) -> dict[str, float]:
    from .training import accuracy, rmse

    if data.is_classification:
        return {"test_accuracy": accuracy(net, data.x_test, data.y_test)}
    return {"test_rmse": rmse(net, data.x_test, data.y_test)}


# ============================================================================ run directories
@dataclass
class RunOutcome:
    """What :func:`fit_run` / :func:`resume_run` did.

    Attributes
    ----------
    status : {"complete", "interrupted", "already complete"}
    run_dir : pathlib.Path
    step, num_steps : int
        SVI steps completed and planned.
    metrics : dict or None
        ``metrics.json`` of a complete run.
    checkpoint : pathlib.Path or None
        The newest checkpoint (what ``fit --resume`` continues from).
    messages : list of str
        Warnings met on the way (e.g. a corrupted checkpoint skipped).
    """

    status: str
    run_dir: Path
    step: int = 0
    num_steps: int = 0
    metrics: dict | None = None
    checkpoint: Path | None = None
    messages: list[str] = field(default_factory=list)


def is_run_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    """One process per run directory (an OS lock: released even by ``kill -9``)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(run_dir / _LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"{run_dir} is in use by another bayes-sws process") from None
        yield


def _prepare_new_run_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} exists and is not a directory")
    # an OS lock file or a temporary file of a write killed early does not make a run
    leftovers = (_LOCK_FILE,)
    if out.is_dir() and any(
        p.name not in leftovers and not (p.name.startswith(".") and p.name.endswith(".tmp"))
        for p in out.iterdir()
    ):
        if not is_run_dir(out):
            raise RunError(
                f"{out} exists, is not empty and is not a bayes-sws run directory; "
                "choose another --out (nothing was changed)"
            )
        if not overwrite:
            raise RunError(
                f"{out} already holds a run; continue it with `fit --resume {out}`, or "
                "replace it with --overwrite"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def checkpoint_paths(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every checkpoint file, newest first (validity not checked)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = _CHECKPOINT_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry))
    return sorted(found, reverse=True)


def latest_checkpoint(run_dir: str | os.PathLike) -> tuple[FitState | None, Path | None, list[str]]:
    """The newest checkpoint that reads back intact, and warnings about the ones that did not.

    Truncated or corrupted files are reported (never loaded) and skipped, so a
    run continues from the last complete checkpoint.
    """
    messages = []
    for step, path in checkpoint_paths(run_dir):
        try:
            payload = read_checkpoint(path, kind="checkpoint")
            state = FitState.from_dict(payload["state"])
        except (CheckpointError, KeyError, ValueError) as err:
            messages.append(f"skipping damaged checkpoint: {err}")
            continue
        if state.step != step:
            messages.append(f"skipping {path}: it holds step {state.step}, its name says {step}")
            continue
        return state, path, messages
    return None, None, messages


def _checkpoint_writer(run_dir: Path, keep: int) -> Callable[[FitState], None]:
    """Write each state as ``checkpoints/step-XXXXXXXX.ckpt``; keep the newest ``keep``.

    A state with a non-finite parameter is refused (``FloatingPointError``), so
    the last good checkpoint stays the newest one and ``--resume`` starts there.
    """
    folder = run_dir / CHECKPOINT_DIR

    def write(state: FitState) -> None:
        for group in (state.guide_state, state.network_state):
            for name, value in group.items():
                if (
                    torch.is_tensor(value)
                    and value.is_floating_point()
                    and not torch.isfinite(value).all()
                ):
                    found = checkpoint_paths(run_dir)
                    kept = f"step {found[0][0]}" if found else "none yet"
                    raise FloatingPointError(
                        f"parameter {name!r} is not finite after step {state.step}; no checkpoint "
                        f"written (the newest good one: {kept}). Lower the learning rate or "
                        "strengthen the precision hyperprior"
                    )
        path = folder / f"step-{state.step:08d}.ckpt"
        write_checkpoint(path, {"state": state.to_dict()}, kind="checkpoint")
        for _, old in checkpoint_paths(run_dir)[keep:]:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()

    return write


def _remove_partial_files(run_dir: Path) -> list[str]:
    """Delete the temporary files of writes that a killed process left behind."""
    removed = []
    for folder in (run_dir, run_dir / CHECKPOINT_DIR):
        if folder.is_dir():
            for entry in folder.iterdir():
                if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                    with contextlib.suppress(FileNotFoundError):
                        entry.unlink()
                    removed.append(entry.name)
    return removed


def fit_run(
    config: RunConfig | Mapping[str, Any],
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: bool | None = None,
    should_stop: Callable[[], bool] | None = None,
    log: Callable[[str], None] | None = None,
) -> RunOutcome:
    """Start a run in the new directory ``out``: pretrain, fit with checkpoints, save, evaluate.

    Parameters
    ----------
    config : RunConfig or mapping
    out : path-like
        Must not exist, be empty, or (with ``overwrite=True``) hold an earlier run.
    overwrite : bool
        Replace an earlier run in ``out``.
    progress : bool, optional
        Progress bars (default: on a terminal).
    should_stop : callable, optional
        Polled after every step; when it returns true, a checkpoint is written
        and the run stops with status ``"interrupted"`` (see :func:`stop_on_interrupt`).
    log : callable, optional
        Receives one-line progress messages.
    """
    if not isinstance(config, RunConfig):
        config = RunConfig.from_dict(config)
    log = log or (lambda message: None)
    out = Path(out)
    data = _load_data(config)  # a bad data set fails before anything is written
    _prepare_new_run_dir(out, overwrite)
    log(f"run directory {out}")
    with _locked(out):
        atomic_write_json(out / CONFIG_FILE, config.to_dict())
        return _execute(
            config,
            out,
            resume=False,
            progress=progress,
            should_stop=should_stop,
            log=log,
            data=data,
        )


def resume_run(
    run_dir: str | os.PathLike,
    *,
    progress: bool | None = None,
    should_stop: Callable[[], bool] | None = None,
    log: Callable[[str], None] | None = None,
) -> RunOutcome:
    """Continue the run in ``run_dir`` from its newest intact checkpoint.

    The result is bit-identical to an uninterrupted run: the network at the
    start of SVI is read back (or the deterministic pretraining redone), and
    :func:`bayes_sws.fit` continues from the checkpointed optimiser and RNG states
    on the same mini-batches. A complete run is left alone.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"cannot resume {run_dir}: no such directory")
    if not is_run_dir(run_dir):
        raise RunError(
            f"cannot resume {run_dir}: it has no {CONFIG_FILE}, so it is not a bayes-sws run"
        )
    log = log or (lambda message: None)
    with _locked(run_dir):
        config = _read_config(run_dir)
        if (run_dir / METRICS_FILE).is_file() and (run_dir / RESULT_FILE).is_file():
            try:
                read_checkpoint(run_dir / RESULT_FILE, kind="result")
                metrics = json.loads((run_dir / METRICS_FILE).read_text())
            except (CheckpointError, ValueError) as err:
                log(f"warning: {err}; finishing the run again from its checkpoints")
            else:
                return RunOutcome(
                    "already complete",
                    run_dir,
                    metrics.get("steps", 0),
                    metrics.get("steps", 0),
                    metrics,
                )
        for name in _remove_partial_files(run_dir):
            log(f"removed {name}, left by an interrupted write")
        return _execute(
            config, run_dir, resume=True, progress=progress, should_stop=should_stop, log=log
        )


def _read_config(run_dir: Path) -> RunConfig:
    path = run_dir / CONFIG_FILE
    try:
        values = json.loads(path.read_text())
    except ValueError as err:
        raise RunError(f"{path} is not valid JSON ({err}); the run directory is damaged") from None
    return RunConfig.from_dict(values, sources={k: str(path) for k in values})


def _execute(
    config: RunConfig, run_dir: Path, *, resume: bool, progress, should_stop, log, data=None
) -> RunOutcome:
    start = time.perf_counter()
    should_stop = should_stop or (lambda: False)
    data = data if data is not None else _load_data(config)
    spec = _network_spec(config, data)
    messages: list[str] = []

    net, pretrained_metrics = None, None
    if resume and (run_dir / INITIAL_FILE).exists():
        try:
            payload = read_checkpoint(run_dir / INITIAL_FILE, kind="network")
            net = build_network(**_network_kwargs(payload["network_spec"]))
            net.load_state_dict(payload["network_state"])
            pretrained_metrics = dict(payload["metrics"])
        except CheckpointError as err:
            messages.append(f"warning: {err}; redoing the (deterministic) pretraining")
            log(messages[-1])
            net = None
    if net is None:
        net, pretrained_metrics = _pretrain(config, data, spec, progress, should_stop, log)
        if net is None:
            return RunOutcome(
                "interrupted",
                run_dir,
                0,
                config.num_steps(data.num_train),
                messages=messages + ["stopped during pretraining"],
            )
        write_checkpoint(
            run_dir / INITIAL_FILE,
            {
                "network_spec": spec,
                "network_state": net.state_dict(),
                "metrics": pretrained_metrics,
            },
            kind="network",
        )

    model = SWSModel(net, _prior(config), _likelihood(config, data), prior_scale=config.prior_scale)
    num_steps = config.num_steps(data.num_train)
    state = None
    if resume:
        state, path, found = latest_checkpoint(run_dir)
        for message in found:
            log(f"warning: {message}")
        messages += found
        if state is not None:
            log(f"resuming from {path.name} (step {state.step} of {num_steps})")
        elif checkpoint_paths(run_dir):
            log("warning: no intact checkpoint; starting SVI from step 0")

    stopped = False

    def callback(step: int, loss: float) -> bool:
        nonlocal stopped
        stopped = bool(should_stop())
        return stopped

    try:
        result = fit(
            model,
            data.x_train,
            data.y_train,
            guide=config.guide,
            num_steps=num_steps,
            optimizer=config.optimizer,
            lr=config.lr,
            mixture_lr=config.mixture_lr,
            batch_size=config.batch_size,
            num_particles=config.num_particles,
            init_scale=config.init_scale,
            seed=config.seed,
            progress=progress,
            callback=callback,
            checkpoint=_checkpoint_writer(run_dir, config.keep_checkpoints),
            checkpoint_every=config.checkpoint_every,
            initial_state=state,
            on_nonfinite=config.on_nonfinite,
            max_rollbacks=config.max_rollbacks,
        )
    except RuntimeError:
        if not stopped:  # e.g. a Laplace approximation at an interrupted, unconverged point
            raise
        result = None
    newest = checkpoint_paths(run_dir)
    newest_path = newest[0][1] if newest else None
    done = newest[0][0] if newest else 0
    if stopped and (done < num_steps or result is None):
        return RunOutcome(
            "interrupted", run_dir, done, num_steps, checkpoint=newest_path, messages=messages
        )
    metrics = _finish(
        config, run_dir, result, data, spec, pretrained_metrics, time.perf_counter() - start
    )
    return RunOutcome(
        "complete",
        run_dir,
        len(result.losses),
        num_steps,
        metrics,
        checkpoint=newest_path,
        messages=messages,
    )


def _pretrain(config: RunConfig, data, spec, progress, should_stop, log):
    from .training import train

    torch.manual_seed(config.seed)
    net = build_network(**_network_kwargs(spec))
    if config.pretrain_epochs > 0:
        log(f"pretraining {config.network} for {config.pretrain_epochs} epochs")

        def check_stop(_net: nn.Module) -> None:
            if should_stop():
                raise RunInterrupted

        try:
            train(
                net,
                data.x_train,
                data.y_train,
                loss="cross_entropy" if data.is_classification else "mse",
                num_epochs=config.pretrain_epochs,
                lr=config.pretrain_lr,
                batch_size=config.pretrain_batch_size,
                seed=config.seed,
                progress=progress,
                after_step=check_stop,
            )
        except RunInterrupted:
            return None, None
    return net, _evaluate_network(net, data)


def _finish(config, run_dir, result: FitResult, data, spec, pretrained_metrics, elapsed) -> dict:
    import pyro

    save_result(
        result,
        run_dir,
        network_spec=spec,
        extra={"data": data.name, "num_train": data.num_train, "num_test": data.num_test},
    )
    pyro.set_rng_seed(config.seed)  # posterior-predictive draws of variational guides
    prediction = result.predict(data.x_test)
    metrics: dict[str, Any] = {
        "data": data.name,
        "network": config.network,
        "guide": result.guide_name,
        "num_train": data.num_train,
        "num_test": data.num_test,
        "steps": len(result.losses),
        "final_loss": float(result.losses[-1]),
        "mean_loss_last_10pct": float(np.mean(result.losses[-max(1, len(result.losses) // 10) :])),
        "wall_time": float(result.wall_time),
        "total_wall_time": float(elapsed),
        "versions": versions(),
    }
    median_net = result.map_network()
    if data.is_classification:
        metrics["test_accuracy"] = float((prediction.argmax(-1) == data.y_test).double().mean())
        metrics["test_accuracy_median"] = _evaluate_network(median_net, data)["test_accuracy"]
        metrics["pretrained_test_accuracy"] = pretrained_metrics["test_accuracy"]
    else:
        target = data.y_test.reshape(prediction.shape).double()
        metrics["test_rmse"] = float(((prediction.double() - target) ** 2).mean().sqrt())
        metrics["test_rmse_median"] = _evaluate_network(median_net, data)["test_rmse"]
        metrics["pretrained_test_rmse"] = pretrained_metrics["test_rmse"]
    mixture = result.mixture()
    metrics["mixture"] = {k: getattr(mixture, k).tolist() for k in ("pi", "mu", "sigma")}
    lines = ["step,loss"] + [f"{i},{loss!r}" for i, loss in enumerate(result.losses.tolist())]
    atomic_write_text(run_dir / LOSSES_FILE, "\n".join(lines) + "\n")
    atomic_write_json(run_dir / METRICS_FILE, metrics)  # last: its presence marks a complete run
    return metrics


# ============================================================================ interrupts
class InterruptFlag:
    """Set by the first Ctrl-C (SIGINT) or SIGTERM; a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self) -> bool:
        return self.signal is not None

    def _handle(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum


@contextlib.contextmanager
def stop_on_interrupt() -> Iterator[InterruptFlag]:
    """Turn Ctrl-C into a polite stop request for :func:`fit_run`'s ``should_stop``.

    Inside the block the first SIGINT/SIGTERM only sets the flag, so the run
    finishes its step, writes a checkpoint and returns; outside the main thread
    the signal handlers are left alone.
    """
    flag = InterruptFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.signal(s, flag._handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# ============================================================================ later commands
def _open_complete_run(run_dir: str | os.PathLike) -> tuple[Path, RunConfig]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir} does not exist")
    if not is_run_dir(run_dir):
        raise RunError(f"{run_dir} is not a bayes-sws run directory (no {CONFIG_FILE})")
    if not (run_dir / RESULT_FILE).is_file():
        raise RunError(
            f"{run_dir} has no fitted result yet; finish it with `bayes-sws fit --resume {run_dir}`"
        )
    return run_dir, _read_config(run_dir)


def _save_figure(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return atomic_write_bytes(path, buffer.getvalue())


def compress_run(
    run_dir: str | os.PathLike,
    *,
    merge_threshold: float = 1e-2,
    plots: bool = True,
) -> dict[str, Any]:
    """Quantise the run's MAP (median) network with its learned mixture; write ``compression.json``.

    Each weight goes to its most responsible component, close components merge,
    the zero component prunes (:func:`bayes_sws.compress.quantize`), and storage
    is counted as Han et al. do (:func:`bayes_sws.compress.storage_report`); both
    through :func:`bayes_sws.pipeline.compress_result`. With ``plots``, the
    pretrained-versus-quantised scatter and the per-layer sparsity go to ``plots/``.
    """
    from .compress import plot_layer_sparsity, plot_weights_before_after
    from .pipeline import compress_result

    if isinstance(merge_threshold, bool) or not (
        isinstance(merge_threshold, (int, float))
        and math.isfinite(merge_threshold)
        and merge_threshold >= 0
    ):
        raise RunError(f"merge threshold must be a number >= 0, got {merge_threshold!r}")
    run_dir, config = _open_complete_run(run_dir)
    result = load_result(run_dir)
    data = _load_data(config)
    initial = read_checkpoint(run_dir / INITIAL_FILE, kind="network")
    compressed = compress_result(
        result,
        data.x_test,
        data.y_test,
        merge_threshold=float(merge_threshold),
        test_accuracy_pretrained=initial["metrics"].get("test_accuracy"),
    )
    summary = compressed.to_dict()
    summary["merge_threshold"] = float(merge_threshold)
    summary["num_components_after_merging"] = compressed.num_components
    if plots:
        names = result.model.prior_param_names
        before = {n: initial["network_state"][n] for n in names}
        after = {n: p for n, p in compressed.net.named_parameters() if n in names}
        assignments = {n: compressed.quantization.assignments[n] for n in names}
        figures = {
            "compression_weights": plot_weights_before_after(
                before, after, assignments, title="pretrained → quantised weights"
            ),
            "compression_layers": plot_layer_sparsity(compressed.storage),
        }
        summary["plots"] = [
            str(_save_figure(fig, run_dir / PLOTS_DIR / f"{name}.png").relative_to(run_dir))
            for name, fig in figures.items()
        ]
    summary = _plain(summary)
    atomic_write_json(run_dir / COMPRESSION_FILE, summary)
    return summary


def diagnose_run(
    run_dir: str | os.PathLike,
    *,
    num_samples: int = 200,
    max_points: int = 500,
    plots: bool = True,
) -> dict[str, Any]:
    """ArviZ view of the run's posterior: ``posterior.nc``, a summary table and plots.

    Converts with :func:`bayes_sws.diagnostics.to_inference_data` on (at most
    ``max_points`` of) the training data the posterior conditions on, writes the
    InferenceData as netCDF, the ``az.summary`` of the mixture (``sws.pi``,
    ``sws.mu``, ``sws.sigma``) as CSV, and the loss trace, the hyperparameter
    posterior and the learned mixture over the weights to ``plots/``.

    Returns
    -------
    dict
        ``posterior`` (path), ``summary`` (a pandas DataFrame), ``plots`` (paths
        relative to the run directory) and ``idata``.
    """
    for name, value in (("num_samples", num_samples), ("max_points", max_points)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RunError(f"{name} must be an integer >= 1, got {value!r}")
    run_dir, config = _open_complete_run(run_dir)
    from . import diagnostics  # imports ArviZ lazily, with an install hint if it is missing

    result = load_result(run_dir)
    data = _load_data(config)
    count = min(max_points, data.num_train)
    index = torch.randperm(data.num_train, generator=torch.Generator().manual_seed(config.seed))[
        :count
    ]
    idata = diagnostics.to_inference_data(
        result, data.x_train[index], data.y_train[index], num_samples=num_samples, seed=config.seed
    )
    path = run_dir / POSTERIOR_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # netCDF writes to a path: rename after
    try:
        idata.to_netcdf(str(tmp))
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    names = [v for v in diagnostics.MIXTURE_VARS if v in idata.posterior]
    if hasattr(diagnostics, "summary"):
        table = diagnostics.summary(idata, var_names=names)
    else:  # the summary through the module that owns ArviZ
        with warnings.catch_warnings():  # point estimates: R-hat of constant draws is undefined
            warnings.simplefilter("ignore")
            table = diagnostics._arviz().summary(idata, var_names=names)
    atomic_write_text(run_dir / POSTERIOR_SUMMARY_FILE, table.to_csv())
    written = []
    if plots:
        figures = {
            "loss": lambda: diagnostics.plot_loss(result),
            "hyperposterior": lambda: diagnostics.plot_hyperposterior(idata, var_names=names),
            "mixture": lambda: diagnostics.plot_mixture_over_histogram(result),
        }
        for name, make in figures.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fig = make()
            written.append(
                str(_save_figure(fig, run_dir / PLOTS_DIR / f"{name}.png").relative_to(run_dir))
            )
    return {"posterior": path, "summary": table, "plots": written, "idata": idata}


def report_run(run_dir: str | os.PathLike) -> str:
    """A short human summary of a run directory: settings, progress, metrics, compression."""
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise RunError(f"{run_dir} is not a bayes-sws run directory (no {CONFIG_FILE})")
    config = _read_config(run_dir)
    lines = [f"run {run_dir}"]
    hidden = "" if config.network != "mlp" else f" hidden={list(config.hidden or (100,))}"
    lines.append(
        f"  data {config.data}, network {config.network}{hidden}, {config.components} components"
        f"{' (zero component)' if config.zero_component else ''}, λ = {config.prior_scale}"
    )
    lines.append(
        f"  guide {config.guide}, {config.optimizer} lr {config.lr} (mixture {config.mixture_lr}), "
        f"batch {config.batch_size}, seed {config.seed}"
    )
    metrics = None
    if (run_dir / METRICS_FILE).is_file():
        metrics = json.loads((run_dir / METRICS_FILE).read_text())
        lines.append(
            f"  status: complete, {metrics['steps']} steps in {metrics['wall_time']:.1f} s "
            f"(final loss {metrics['final_loss']:.6g})"
        )
        if "test_accuracy" in metrics:
            lines.append(
                f"  test accuracy: pretrained {100 * metrics['pretrained_test_accuracy']:.2f} %, "
                f"after SVI {100 * metrics['test_accuracy']:.2f} % "
                f"(median network {100 * metrics['test_accuracy_median']:.2f} %)"
            )
        else:
            lines.append(
                f"  test RMSE: pretrained {metrics['pretrained_test_rmse']:.4g}, "
                f"after SVI {metrics['test_rmse']:.4g}"
            )
    else:
        found = checkpoint_paths(run_dir)
        where = f"newest checkpoint at step {found[0][0]}" if found else "no checkpoint yet"
        lines.append(
            f"  status: not finished ({where}); continue with `bayes-sws fit --resume {run_dir}`"
        )
    if metrics is not None and "mixture" in metrics:
        pi, mu, sigma = (np.asarray(metrics["mixture"][k]) for k in ("pi", "mu", "sigma"))
        order = np.argsort(mu)
        lines.append("  learned mixture (by mean):      pi         mu      sigma")
        for j in order:
            lines.append(
                f"    component {j:3d}          {pi[j]:9.4f} {mu[j]:+10.4f} {sigma[j]:10.4f}"
            )
    if (run_dir / COMPRESSION_FILE).is_file():
        c = json.loads((run_dir / COMPRESSION_FILE).read_text())
        score = (
            f"test accuracy {100 * c['test_accuracy_before']:.2f} % → {100 * c['test_accuracy_after']:.2f} %"
            if c.get("test_accuracy_before") is not None
            else f"test RMSE {c['test_rmse_before']:.4g} → {c['test_rmse_after']:.4g}"
        )
        lines.append(
            f"  compression: {c['compression_rate']:.1f}× at {100 * c['nonzero_fraction']:.2f} % "
            f"non-zero, {score}"
        )
    else:
        lines.append(f"  compression: not run (`bayes-sws compress {run_dir}`)")
    if (run_dir / POSTERIOR_FILE).is_file():
        lines.append(f"  posterior: {POSTERIOR_FILE} (summary in {POSTERIOR_SUMMARY_FILE})")
        summary = run_dir / POSTERIOR_SUMMARY_FILE
        if summary.is_file():
            rows = list(csv.reader(summary.read_text().splitlines()))
            if rows:
                header = rows[0]
                keep = [
                    i for i, h in enumerate(header) if h in ("", "mean", "sd", "r_hat", "ess_bulk")
                ]
                for row in rows[: min(len(rows), 9)]:
                    lines.append("    " + "  ".join(f"{row[i]:>14}" for i in keep if i < len(row)))
    else:
        lines.append(f"  posterior: not diagnosed (`bayes-sws diagnose {run_dir}`)")
    return "\n".join(lines)


def format_outcome(outcome: RunOutcome) -> str:
    """What ``bayes-sws fit`` prints about a run."""
    if outcome.status == "interrupted":
        where = (
            f"checkpoint {outcome.checkpoint} (step {outcome.step} of {outcome.num_steps})"
            if outcome.checkpoint
            else "no checkpoint yet"
        )
        return f"interrupted: {where}; continue with `bayes-sws fit --resume {outcome.run_dir}`"
    metrics = outcome.metrics or {}
    head = ("run already complete: " if outcome.status == "already complete" else "") + str(
        outcome.run_dir
    )
    lines = [head]
    if "test_accuracy" in metrics:
        lines.append(
            f"  test accuracy {100 * metrics['pretrained_test_accuracy']:.2f} % (pretrained) -> "
            f"{100 * metrics['test_accuracy']:.2f} % (after SVI, {metrics['guide']})"
        )
    elif "test_rmse" in metrics:
        lines.append(
            f"  test RMSE {metrics['pretrained_test_rmse']:.4g} (pretrained) -> "
            f"{metrics['test_rmse']:.4g} (after SVI)"
        )
    if metrics:
        lines.append(
            f"  {metrics['steps']} steps, final loss {metrics['final_loss']:.6g}, "
            f"{metrics['wall_time']:.1f} s"
        )
    return "\n".join(lines)
