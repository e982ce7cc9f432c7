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
      mixture_history.json    weight histogram and mixture at 0, 25, 50, 75, 100 % of SVI
                              (compress_run draws plots/mixture_evolution.png from it)
      compression.json        added by compress_run (plots/compression_*.png too)
      posterior.nc            added by diagnose_run (plots/*.png, posterior_summary.csv)

Checkpoint files (``*.ckpt``) are one self-checking container::

    line 1   b"bayes-sws checkpoint\\n"
    line 2   JSON header: format_version, kind, payload_bytes, sha256 (of the payload)
    rest     payload: ``torch.save`` of a dict of tensors, lists and numbers

and are read with ``torch.load(weights_only=True)`` only after the length and
the SHA-256 digest check out, so a truncated or corrupted file raises
:class:`CheckpointError` and is never loaded silently. That container, and
:func:`save_result` / :func:`load_result`, live in :mod:`bayes_sws.runs.checkpoints`;
the settings (:class:`RunConfig`, TOML files, flags) in :mod:`bayes_sws.runs.settings`.
Both are re-exported here.

The command line (:mod:`bayes_sws.runs.cli`) only parses arguments and calls
:func:`fit_run`, :func:`resume_run`, :func:`compress_run`,
:func:`diagnose_run` and :func:`report_run`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
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
from torch import nn

from .. import health
from .._io import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..compress.pipeline import default_anneal_epochs, precision_anneal
from ..compress.surgery import check_prune_units
from ..core.likelihoods import Gaussian, Likelihood, MixtureDensity
from ..core.model import SWSModel
from ..core.priors import MixturePrior
from ..infer import distributed
from ..infer.svi import FitResult, FitState, fit, steps_per_epoch
from ..settings import CompressSettings
from ..zoo.nets import NetworkFactoryError, build_network, is_factory_name
from . import directory as rundir
from .checkpoints import (
    CHECKPOINT_FORMAT_VERSION,
    RESULT_FILE,
    RESULT_SUMMARY_FILE,  # noqa: F401  (re-exported: the file next to RESULT_FILE)
    CheckpointError,
    RunIdentity,
    load_result,
    network_kwargs,
    plain,
    read_checkpoint,
    save_result,
    versions,
    write_checkpoint,
)
from .history import HISTORY_FILE, MixtureHistory
from .settings import (
    DATA_READ_ERRORS,
    LEGACY_VALUES,
    RESUME_SETTINGS,
    RunConfig,
    RunError,
    check_device,
    compress_options,
    compress_settings,
    config_options,
    load_config_file,
    recipe_compress_settings,
    resolve_config,
)

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "RESUME_SETTINGS",
    "CheckpointError",
    "InterruptFlag",
    "RunConfig",
    "RunError",
    "RunInterrupted",
    "RunOutcome",
    "compress_run",
    "compression_score",
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
    "run_device",
    "save_result",
    "stop_on_interrupt",
    "storing_settings",
    "write_checkpoint",
]


CONFIG_FILE = rundir.CONFIG_FILE
INITIAL_FILE = "initial.ckpt"
CHECKPOINT_DIR = rundir.CHECKPOINT_DIR
METRICS_FILE = "metrics.json"
LOSSES_FILE = "losses.csv"
COMPRESSION_FILE = "compression.json"
#: a recipe's storing settings as they were when the run was fitted (``compress`` reads them)
RECIPE_FILE = "recipe.json"
#: ``compression.json``'s ``settings_base`` when the flags were applied to the defaults
_DEFAULT_BASE = "the defaults"
MODEL_FILE = "model.sws"
STATE_DICT_FILE = "model_quantized.pt"
POSTERIOR_FILE = "posterior.nc"
POSTERIOR_SUMMARY_FILE = "posterior_summary.csv"
PLOTS_DIR = rundir.PLOTS_DIR
is_run_dir = rundir.is_run_dir
#: Largest JSON file of a run that is read (metrics, compression, config).
_MAX_JSON_BYTES = 16 << 20


class RunInterrupted(Exception):
    """Raised inside a run when a stop was requested (Ctrl-C) before SVI started."""


# ============================================================================ data and network
def _load_data(config: RunConfig):
    from ..zoo.data import DataError, load_dataset

    flatten = config.network != "lenet-5" and not is_factory_name(config.network)
    choices: dict[str, bool | str] = {"feature": True, "global": "global", "none": False}
    standardize = choices[config.standardize]
    try:
        return load_dataset(
            config.data,
            flatten=flatten,
            test_fraction=config.test_fraction,
            seed=config.split_seed,
            standardize=standardize,
            # a Gaussian likelihood's fixed noise precision assumes targets of unit scale
            standardize_targets=config.standardize_targets and config.likelihood != "mdn",
        )
    except DataError:
        raise
    except DATA_READ_ERRORS as err:
        # a file the loader does not expect (e.g. a .npy renamed .npz): name it, not numpy's internals
        raise RunError(
            f"data {config.data!r} cannot be read ({type(err).__name__}: {err}); give one of "
            "digits, fashion-mnist, mnist-5k, mnist or an .npz file saved with numpy.savez "
            "holding x, y (or x_train, y_train, x_test, y_test)"
        ) from None


def _network_spec(config: RunConfig, data) -> dict[str, Any]:
    """The keyword arguments of ``build_network`` for the run's network on ``data``."""
    if data.num_classes is None:
        outputs = 1 if data.y_train.dim() == 1 else int(data.y_train.shape[1])
        if config.likelihood == "mdn":  # K logits, K x D means, K log-scales (5.150-5.152)
            outputs = config.mdn_components * (outputs + 2)
    else:
        outputs = data.num_classes
    if is_factory_name(config.network):  # the factory sets the rest
        return {
            "name": config.network,
            "input_shape": list(data.input_shape),
            "num_classes": outputs,
        }
    return {
        "name": config.network,
        "input_shape": list(data.input_shape),
        "num_classes": outputs,
        "hidden": None if config.hidden is None else list(config.hidden),
        "activation": config.activation,
    }


def _check_network(config: RunConfig, data) -> None:
    """Build a ``package.module:factory`` network and run it on two training examples, and
    the run's model of it (or of a built-in network, when ``tensor_scales`` name tensors).

    Every failure (import, attribute, call, not an ``nn.Module``, an error or the
    wrong output shape on the data, a pattern of ``tensor_scales`` that names no tensor
    under the prior) is a :class:`RunError` naming the network and the fix; the caller's
    random state is untouched.
    """
    if not is_factory_name(config.network):
        if config.tensor_scales:
            with torch.random.fork_rng(devices=[]):
                net = build_network(**network_kwargs(_network_spec(config, data)))
            _check_model(config, net, data)
        return
    spec = _network_spec(config, data)
    name, outputs, x = config.network, spec["num_classes"], data.x_train[:2]
    with torch.random.fork_rng(devices=[]):
        try:
            net = build_network(**network_kwargs(spec))
            with torch.no_grad():
                output = net(x)
        except NetworkFactoryError as err:
            raise RunError(str(err)) from None
        except Exception as err:  # noqa: BLE001 - the user's forward pass failed
            raise RunError(
                f"network {name!r} fails on inputs of shape {tuple(x.shape)} "
                f"({type(err).__name__}: {' '.join(str(err).split())[:300]}); {data.name} "
                f"examples have shape {data.input_shape} (unflattened: start a dense network "
                "with nn.Flatten())"
            ) from None
    if not torch.is_tensor(output) or tuple(output.shape) != (len(x), outputs):
        got = tuple(output.shape) if torch.is_tensor(output) else type(output).__name__
        needs = "class logits" if data.is_classification else "outputs for the likelihood"
        raise RunError(
            f"network {name!r} gives outputs of shape {got} for {len(x)} examples, but "
            f"{data.name} needs ({len(x)}, {outputs}): {outputs} {needs}; make its last layer "
            f"give {outputs} (the factory is given num_outputs={outputs} if it takes it)"
        )
    _check_model(config, net, data)


def _check_model(config: RunConfig, net: nn.Module, data) -> None:
    """The run's :class:`SWSModel` of ``net`` can be built (a :class:`RunError` if not)."""
    try:
        _model(config, net, data)
    except (TypeError, ValueError) as err:
        raise RunError(f"network {config.network!r}: {err}") from None


def _likelihood(config: RunConfig, data) -> Likelihood | str:
    kind = config.likelihood
    if kind == "auto":
        kind = "categorical" if data.is_classification else "gaussian"
    if (kind == "categorical") != data.is_classification:
        targets = "class labels" if data.is_classification else "real-valued targets"
        raise RunError(
            f"--likelihood {kind} does not fit {data.name}, whose targets are {targets}; "
            "use --likelihood auto"
        )
    if kind == "categorical":
        return "categorical"
    if kind == "mdn":
        return MixtureDensity(num_components=config.mdn_components)
    return Gaussian(precision=config.noise_precision, learn_precision=config.learn_noise_precision)


def _prior(config: RunConfig) -> MixturePrior:
    return MixturePrior.from_settings(config.prior_settings())


def _model(config: RunConfig, net: nn.Module, data) -> SWSModel:
    """The run's :class:`SWSModel` of ``net``: its prior (one, or one per layer) and likelihood."""
    groups = None if config.mixture_groups == "shared" else config.mixture_groups
    return SWSModel(
        net,
        _prior(config),
        _likelihood(config, data),
        prior_scale=config.prior_scale,
        groups=groups,
        tensor_scales=config.tensor_scales,
    )


def _precision_anneal(config: RunConfig, model: SWSModel, num_train: int, num_steps: int):
    """``set(step)`` putting the annealed precision prior in force, or ``None`` (no anneal)."""
    final = config.prior_settings().used_precision_priors()[2]  # tempered like the others
    if final is None:
        return None
    per_epoch = steps_per_epoch(num_train, config.batch_size)
    epochs = config.anneal_epochs or default_anneal_epochs(num_steps, per_epoch)
    setters = [
        precision_anneal(prior, final, epochs, per_epoch) for _, prior, _ in model.mixture_groups()
    ]

    def set_priors(step: int) -> None:  # every group's prior (one without groups)
        for set_prior in setters:
            set_prior(step)

    return set_priors


def _evaluate_network(net: nn.Module, data, likelihood: Likelihood | str) -> dict[str, float]:
    """Test accuracy, or RMSE (of the conditional mean) and, for an MDN, mean log-likelihood."""
    from ..zoo.training import accuracy, rmse

    if data.is_classification:
        return {"test_accuracy": accuracy(net, data.x_test, data.y_test)}
    if not isinstance(likelihood, MixtureDensity):
        return _in_target_units({"test_rmse": rmse(net, data.x_test, data.y_test)}, data)
    with torch.no_grad():
        output = net(data.x_test)
        mean = likelihood.mean(output, {}).double()
        log_likelihood = -float(likelihood.mean_nll(output, data.y_test))
    error = mean - data.y_test.reshape(mean.shape).double()
    return {"test_rmse": float(error.pow(2).mean().sqrt()), "test_log_likelihood": log_likelihood}


def _in_target_units(scores: Mapping[str, Any], data) -> dict[str, Any]:
    """``scores`` with every RMSE (``*rmse*`` keys) in the targets' original units.

    An RMSE of standardised targets times their training std is the RMSE of the
    predictions mapped back (:meth:`~bayes_sws.zoo.data.Dataset.to_target_units`):
    the mean cancels in the error. Unchanged when the targets were not standardised.
    """
    scale = data.target_std
    return {
        k: v * scale if scale is not None and "rmse" in k and v is not None else v
        for k, v in scores.items()
    }


def _target_scaling(config: RunConfig, data) -> dict[str, Any] | None:
    """How the run treated real targets (``metrics.json``, ``compression.json``); ``None`` for labels."""
    if data.is_classification:
        return None
    return {
        "standardize_targets": config.standardize_targets,
        "standardized": data.target_std is not None,
        "mean": data.target_mean,
        "std": data.target_std,
        "rmse_units": "original",
    }


# ============================================================================ run directories
@dataclass
class RunOutcome:
    """What :func:`fit_run` / :func:`resume_run` did.

    Attributes
    ----------
    status : {"complete", "interrupted", "already complete", "follower", "ended"}
        The last two only for a process of a ``torchrun`` other than rank 0
        (:func:`follow_run`): it took its part of the fit; rank 0 sent nothing to fit.
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


def checkpoint_paths(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every checkpoint file, newest first (validity not checked)."""
    folder = rundir.safe_path(Path(run_dir), CHECKPOINT_DIR)
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = rundir.CHECKPOINT_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry))
    return sorted(found, reverse=True)


def latest_checkpoint(
    run_dir: str | os.PathLike, identity: RunIdentity | None = None
) -> tuple[FitState | None, Path | None, list[str]]:
    """The newest checkpoint that reads back intact, and warnings about the ones that did not.

    Truncated or corrupted files, files of another run (with ``identity``) and
    states holding non-finite values are reported (never loaded) and skipped, so
    a run continues from the last complete, finite checkpoint of its own.
    """
    messages = []
    for step, path in checkpoint_paths(run_dir):
        try:
            payload = read_checkpoint(path, kind="checkpoint", identity=identity)
            state = FitState.from_dict(payload["state"])
        except (CheckpointError, KeyError, ValueError) as err:
            messages.append(f"skipping damaged checkpoint: {err}")
            continue
        if state.step != step:
            messages.append(f"skipping {path}: it holds step {state.step}, its name says {step}")
            continue
        bad = _first_nonfinite(state)
        if bad is not None:
            messages.append(f"skipping {path}: parameter {bad!r} is not finite")
            continue
        return state, path, messages
    return None, None, messages


def _write_losses(run_dir: Path, losses) -> None:
    """``losses.csv``: ``step,loss`` for every step so far (rewritten at each checkpoint)."""
    lines = ["step,loss"] + [f"{i},{loss!r}" for i, loss in enumerate(np.asarray(losses).tolist())]
    atomic_write_text(rundir.safe_path(run_dir, LOSSES_FILE), "\n".join(lines) + "\n")


def _first_nonfinite(state: FitState) -> str | None:
    """The name of the first parameter of ``state`` holding NaN or inf, or ``None``."""
    for group in (state.guide_state, state.network_state):
        for name, value in group.items():
            if (
                torch.is_tensor(value)
                and value.is_floating_point()
                and not torch.isfinite(value).all()
            ):
                return name
    return None


def _checkpoint_writer(
    run_dir: Path,
    keep: int,
    identity: RunIdentity | None = None,
    lock: rundir.RunLock | None = None,
) -> Callable[[FitState], None]:
    """Write each state as ``checkpoints/step-XXXXXXXX.ckpt``; keep the newest ``keep``.

    A state with a non-finite parameter is refused (``FloatingPointError``), so
    the last good checkpoint stays the newest one and ``--resume`` starts there.
    A run directory removed under the run stops it (:class:`RunError`).
    """

    def write(state: FitState) -> None:
        name = _first_nonfinite(state)
        if name is not None:
            found = checkpoint_paths(run_dir)
            kept = f"step {found[0][0]}" if found else "none yet"
            raise FloatingPointError(
                f"parameter {name!r} is not finite after step {state.step}; no checkpoint "
                f"written (the newest good one: {kept}). Lower the learning rate or "
                "strengthen the precision hyperprior"
            )
        if lock is not None:
            lock.verify()
        path = rundir.safe_path(run_dir, CHECKPOINT_DIR, f"step-{state.step:08d}.ckpt")
        write_checkpoint(path, {"state": state.to_dict()}, kind="checkpoint", identity=identity)
        if identity is not None:  # a run directory: the losses so far, to follow the run live
            _write_losses(run_dir, state.losses[: state.step])
        for _, old in checkpoint_paths(run_dir)[keep:]:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()

    return write


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
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be True or False, got {overwrite!r}")
    if not distributed.is_writer():
        return follow_run(should_stop=should_stop)
    with _Followers() as followers:
        return _start_run(config, out, overwrite, progress, should_stop, log, followers)


def _start_run(config, out, overwrite, progress, should_stop, log, followers) -> RunOutcome:
    log = log or (lambda message: None)
    if not str(out).strip():
        raise RunError("--out is empty; give the run directory to create")
    out = Path(out)
    replacing = _check_new_run_dir(out, overwrite)
    check_device(config.device)  # a device this machine lacks fails before anything is written
    _check_run_log(config)  # and so does --tensorboard without its package
    data = _load_data(config)  # and so does a bad data set
    _likelihood(config, data)  # and so does a likelihood that does not fit it
    _check_network(config, data)  # and a network of your own that does not, or its model
    if not replacing:
        identity = rundir.create_run(out, config.to_dict(), config.identity_settings())
    log(f"run directory {out}")
    with rundir.locked(out, "fit") as lock:
        if replacing:
            kept = rundir.clear_run(out)
            if kept:
                log(f"--overwrite kept what bayes-sws did not write: {', '.join(kept)}")
            identity = rundir.renew_run(out, config.to_dict(), config.identity_settings())
        run = _RunContext(out, identity, lock)
        _pin_recipe(run, config)
        return _execute(
            config,
            run,
            resume=False,
            progress=progress,
            should_stop=should_stop,
            log=log,
            data=data,
            followers=followers,
        )


def _pin_recipe(run: _RunContext, config: RunConfig) -> None:
    """Record the storing settings of the run's recipe (``compress``'s defaults for it) as the
    installed library has them now, so that a later release's recipe does not change how
    this run is stored (:data:`RECIPE_FILE`)."""
    if config.recipe is None:
        return
    storing = recipe_compress_settings(config.recipe)
    pinned = {o["name"]: getattr(storing, o["name"]) for o in compress_options()}
    run.verify_lock()
    atomic_write_json(
        rundir.safe_path(run.dir, RECIPE_FILE),
        plain({"recipe": config.recipe, "compress": pinned, "run": run.identity.to_dict()}),
    )


def _recipe_storing(run: _RunContext, name: str) -> tuple[CompressSettings, str]:
    """The storing settings of recipe ``name`` as the run recorded them when it was fitted
    (:func:`_pin_recipe`); for a run fitted before they were recorded, the installed
    library's (:func:`~bayes_sws.runs.settings.recipe_compress_settings`). And which."""
    current = recipe_compress_settings(name)
    path = rundir.safe_path(run.dir, RECIPE_FILE)
    if not path.exists():
        return current, f"recipe {name} as installed: the run has no {RECIPE_FILE}"
    values = _read_run_json(run, RECIPE_FILE, required=("recipe", "compress"))
    pinned = values["compress"]
    if values["recipe"] != name:
        raise RunError(
            f"{path} records recipe {values['recipe']!r} but config.json names {name!r}; "
            "the run directory is damaged"
        )
    if not isinstance(pinned, dict):
        raise RunError(f"{path}: compress must be a table of settings; the run is damaged")
    chosen = compress_settings(pinned, base=current, sources={k: str(path) for k in pinned})
    return chosen, f"recipe {name} as {RECIPE_FILE} recorded it at fit time"


@dataclass(frozen=True)
class _RunContext:
    """The run directory a command works in, its identity, and the lock it holds."""

    dir: Path
    identity: RunIdentity
    lock: rundir.RunLock | None  # None: a read-only command (report)

    def verify_lock(self) -> None:
        """Check the run's lock is still held before a write (:meth:`RunLock.verify`)."""
        if self.lock is None:
            raise RunError(f"{self.dir}: a read-only command does not write to its run")
        self.lock.verify()


def _check_run_log(config: RunConfig) -> None:
    """Refuse ``--tensorboard`` without the tensorboard package (a :class:`RunError`)."""
    if config.tensorboard:
        from ..loggers import require_tensorboard

        try:
            require_tensorboard()
        except ImportError as err:
            raise RunError(f"--tensorboard {config.tensorboard}: {err}") from None


def _check_new_run_dir(out: Path, overwrite: bool) -> bool:
    """Whether ``out`` holds a run to replace; refuse what may not be touched (nothing written)."""
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} exists and is not a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return False
    if not is_run_dir(out):
        raise RunError(
            f"{out} exists, is not empty and is not a bayes-sws run directory (no "
            f"{rundir.MARKER_FILE}); choose another --out (nothing was changed)"
        )
    if not overwrite:
        raise RunError(
            f"{out} already holds a run; continue it with `fit --resume {out}`, or "
            "replace it with --overwrite"
        )
    rundir.read_marker(out)  # a damaged marker proves nothing: refuse before deleting
    return True


def resume_run(
    run_dir: str | os.PathLike,
    *,
    progress: bool | None = None,
    should_stop: Callable[[], bool] | None = None,
    log: Callable[[str], None] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> RunOutcome:
    """Continue the run in ``run_dir`` from its newest intact checkpoint.

    The result is bit-identical to an uninterrupted run: the network at the
    start of SVI is read back (or the deterministic pretraining redone), and
    :func:`bayes_sws.fit` continues from the checkpointed optimiser and RNG states
    on the same mini-batches. A complete run is left alone.

    ``settings`` may change the fault handling (``on_nonfinite``,
    ``max_rollbacks``) and the ``device``; the run's other settings are fixed by
    its identity.
    """
    if not distributed.is_writer():
        return follow_run(should_stop=should_stop)
    with _Followers() as followers:
        return _resume(Path(run_dir), progress, should_stop, log, settings, followers)


def _resume(run_dir: Path, progress, should_stop, log, settings, followers) -> RunOutcome:
    if not run_dir.is_dir():
        raise RunError(f"cannot resume {run_dir}: no such directory")
    if not is_run_dir(run_dir):
        raise RunError(
            f"cannot resume {run_dir}: it has no {rundir.MARKER_FILE}, so it is not a bayes-sws run"
        )
    changes = dict(settings or {})
    fixed = sorted(set(changes) - set(RESUME_SETTINGS))
    if fixed:
        raise RunError(
            f"a resumed run keeps its settings; only {', '.join(RESUME_SETTINGS)} may change "
            f"(drop {', '.join(fixed)})"
        )
    log = log or (lambda message: None)
    with rundir.locked(run_dir, "fit --resume") as lock:
        config = _read_config(run_dir)
        identity = rundir.read_identity(run_dir, config.identity_settings())
        if changes:
            config = RunConfig.from_dict({**config.to_dict(), **changes})
        check_device(config.device, "device (change it with --device)")
        _check_run_log(config)
        if changes:
            rundir.update_config(run_dir, config.to_dict())
        for name in rundir.remove_partial_files(run_dir):
            log(f"removed {name}, left by an interrupted write")
        run = _RunContext(run_dir, identity, lock)
        metrics = _complete_metrics(run, log)
        if metrics is not None:
            steps = metrics.get("steps", 0)
            return RunOutcome("already complete", run_dir, steps, steps, metrics)
        return _execute(
            config,
            run,
            resume=True,
            progress=progress,
            should_stop=should_stop,
            log=log,
            followers=followers,
        )


def _complete_metrics(run: _RunContext, log) -> dict | None:
    """``metrics.json`` of a run that finished (its result intact and its own), else ``None``."""
    if not (run.dir / METRICS_FILE).is_file() or not (run.dir / RESULT_FILE).is_file():
        return None
    try:
        read_checkpoint(
            rundir.safe_path(run.dir, RESULT_FILE), kind="result", identity=run.identity
        )
        metrics = _read_run_json(run, METRICS_FILE)
    except (CheckpointError, RunError) as err:
        log(f"warning: {err}; finishing the run again from its checkpoints")
        return None
    return metrics


def _read_json_file(path: Path) -> Any:
    """A JSON file of a run, size-checked first; errors name the file."""
    try:
        if not path.is_file():
            raise RunError(f"{path} is missing or not a regular file")
        if path.stat().st_size > _MAX_JSON_BYTES:
            raise RunError(
                f"{path} is larger than {_MAX_JSON_BYTES >> 20} MiB; not a file bayes-sws wrote"
            )
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise RunError(f"{path} is not valid JSON ({err}); the run directory is damaged") from None


def _read_run_json(run: _RunContext, name: str, required: tuple[str, ...] = ()) -> dict:
    """A JSON result of the run (``metrics.json``...), checked to be this run's and complete."""
    path = rundir.safe_path(run.dir, name)
    values = _read_json_file(path)
    if not isinstance(values, dict):
        raise RunError(f"{path} must hold a JSON object; the run directory is damaged")
    problem = run.identity.mismatch(values.get("run"), str(path))
    if problem:
        raise RunError(problem)
    missing = [k for k in required if k not in values]
    if missing:
        raise RunError(f"{path} lacks {', '.join(missing)}; the run directory is damaged")
    return values


def _read_config(run_dir: Path) -> RunConfig:
    """The run's settings from ``config.json`` (a setting it predates: :data:`LEGACY_VALUES`)."""
    path = rundir.safe_path(run_dir, CONFIG_FILE)
    values = _read_json_file(path)
    if not isinstance(values, dict):
        raise RunError(f"{path} must hold a JSON object of settings; the run directory is damaged")
    values = {**LEGACY_VALUES, **values}
    return RunConfig.from_dict(values, sources={k: str(path) for k in values}, warn_legacy=False)


def run_device(run_dir: str | os.PathLike) -> str | None:
    """The ``device`` setting of the run in ``run_dir``; ``None`` when its ``config.json``
    cannot be read (resuming it then says why)."""
    try:
        return str(_read_config(Path(run_dir)).device)
    except (RunError, OSError, ValueError):
        return None


def _execute(
    config: RunConfig,
    run: _RunContext,
    *,
    resume: bool,
    progress,
    should_stop,
    log,
    data=None,
    followers: _Followers | None = None,
) -> RunOutcome:
    start = time.perf_counter()
    should_stop = should_stop or (lambda: False)
    data = data if data is not None else _load_data(config)
    spec = _network_spec(config, data)
    messages: list[str] = []
    num_steps = config.total_steps(data.num_train)
    net, pretrained_metrics = _initial_network(
        config,
        run,
        data,
        spec,
        resume,
        messages,
        progress=progress,
        should_stop=should_stop,
        log=log,
    )
    if net is None:
        messages.append("stopped during pretraining")
        return RunOutcome("interrupted", run.dir, 0, num_steps, messages=messages)
    model = _model(config, net, data)
    state = None
    if resume:
        state, path, found = latest_checkpoint(run.dir, run.identity)
        for message in found:
            log(f"warning: {message}")
        messages += found
        if state is not None and path is not None:  # found together
            log(f"resuming from {path.name} (step {state.step} of {num_steps})")
        elif checkpoint_paths(run.dir):
            log("warning: no intact checkpoint of this run; starting SVI from step 0")
    if followers is not None:
        followers.send(config, spec, net, state)
    result, stopped = _fit_with_checkpoints(
        config, run, model, data, num_steps, state, progress=progress, should_stop=should_stop
    )
    newest = checkpoint_paths(run.dir)
    newest_path = newest[0][1] if newest else None
    done = newest[0][0] if newest else 0
    if stopped and (done < num_steps or result is None):
        return RunOutcome(
            "interrupted", run.dir, done, num_steps, checkpoint=newest_path, messages=messages
        )
    elapsed = time.perf_counter() - start
    metrics = _finish(config, run, result, data, spec, pretrained_metrics, elapsed)
    return RunOutcome(
        "complete",
        run.dir,
        len(result.losses),
        num_steps,
        metrics,
        checkpoint=newest_path,
        messages=messages,
    )


def _initial_network(config, run: _RunContext, data, spec, resume, messages, **pretraining):
    """The network SVI starts from: read back from ``initial.ckpt``, or (re)pretrained and saved.

    Returns ``(None, None)`` when a stop was requested during pretraining.
    """
    path = rundir.safe_path(run.dir, INITIAL_FILE)
    if resume and path.exists():
        try:
            payload = read_checkpoint(path, kind="network", identity=run.identity)
            net = build_network(**network_kwargs(payload["network_spec"]))
            net.load_state_dict(payload["network_state"])
            return net, dict(payload["metrics"])
        except CheckpointError as err:
            messages.append(f"warning: {err}; redoing the (deterministic) pretraining")
            pretraining["log"](messages[-1])
    net, pretrained_metrics = _pretrain(config, data, spec, **pretraining)
    if net is not None:
        run.verify_lock()
        payload = {
            "network_spec": spec,
            "network_state": net.state_dict(),
            "metrics": pretrained_metrics,
        }
        write_checkpoint(path, payload, kind="network", identity=run.identity)
    return net, pretrained_metrics


def _fit_with_checkpoints(
    config, run: _RunContext | None, model, data, num_steps, state, *, progress, should_stop
):
    """SVI under the run's settings, checkpointing into the run; ``(result, stopped)``.

    ``run`` ``None``: a process of a ``torchrun`` other than rank 0, which writes nothing.
    """
    anneal = _precision_anneal(config, model, data.num_train, num_steps)
    if anneal is not None:  # the prior in force at the first step (of a resumed run, too)
        anneal(0 if state is None else state.step)
    stopped = False

    def callback(step: int, loss: float) -> bool:
        nonlocal stopped
        if anneal is not None:
            anneal(step + 1)
        stopped = bool(should_stop())
        return stopped

    settings = config.fit_settings().replace(num_steps=num_steps, num_epochs=None)
    checkpoint = None if run is None else _run_checkpoint(config, run, model, data, settings, state)
    from ..loggers import TensorBoardLogger, callbacks

    # the loss to TensorBoard (rank 0 of a torchrun only)
    board = TensorBoardLogger(config.tensorboard) if config.tensorboard and run else None
    try:
        result = fit(
            model,
            data.x_train,
            data.y_train,
            settings=settings,
            progress=progress,
            callback=callbacks(callback, board),
            checkpoint=checkpoint,
            initial_state=state,
            device=config.device,
        )
    except RuntimeError:
        if not stopped:  # e.g. a Laplace approximation at an interrupted, unconverged point
            raise
        result = None
    finally:
        if board is not None:
            board.close()
    return result, stopped or (result is not None and len(result.losses) < num_steps)


def _run_checkpoint(config, run: _RunContext, model, data, settings, state):
    """The ``checkpoint`` callable of a run's fit: the mixture history, then the checkpoint."""
    history = MixtureHistory(
        rundir.safe_path(run.dir, HISTORY_FILE),
        model,
        data.x_train,
        data.y_train,
        settings,
        settings.num_steps,
        state,
        run.verify_lock,
    )
    write_checkpoint_file = _checkpoint_writer(
        run.dir, config.keep_checkpoints, run.identity, run.lock
    )

    def checkpoint(fit_state: FitState) -> None:
        # the record first: a record without its checkpoint is dropped by the resume
        history.record(fit_state)
        write_checkpoint_file(fit_state)

    return checkpoint


class _Followers:
    """Rank 0's word to the other processes of a ``torchrun``: what to fit, or nothing.

    A context manager around rank 0's command: :meth:`send` hands the run's
    settings, network and checkpoint state to every other process
    (:func:`follow_run`) just before SVI; leaving without having sent (an
    error, a complete run, a stop during pretraining) sends ``None``, so the
    others end too instead of waiting. A no-op in a single process.
    """

    def __init__(self):
        self.group = distributed.current()
        self.sent = False

    def __enter__(self) -> _Followers:
        return self

    def __exit__(self, *exc) -> None:
        if self.group is not None and not self.sent:
            distributed.broadcast_object(None)

    def send(self, config: RunConfig, spec, net: nn.Module, state: FitState | None) -> None:
        if self.group is None:
            return
        message = {
            "config": config.to_dict(),
            "network_spec": spec,
            "network_state": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            "state": None if state is None else state.to_dict(),
        }
        distributed.broadcast_object(message)
        self.sent = True


def follow_run(*, should_stop: Callable[[], bool] | None = None) -> RunOutcome:
    """A process of ``torchrun ... bayes-sws fit`` other than rank 0: rank 0's fit, writing nothing.

    Waits for rank 0 (:class:`_Followers`), then takes the same SVI steps on its
    shard of every batch (:mod:`bayes_sws.infer.distributed`); rank 0 writes
    the run. Returns the outcome with this process's count of steps (status
    ``"follower"``, or ``"interrupted"``; ``"ended"`` when rank 0 sent nothing).
    """
    message = distributed.broadcast_object(None)
    if message is None:
        return RunOutcome("ended", Path("."), 0, 0)
    config = RunConfig.from_dict(message["config"])
    data = _load_data(config)
    net = build_network(**network_kwargs(message["network_spec"]))
    net.load_state_dict(message["network_state"])
    model = _model(config, net, data)
    state = None if message["state"] is None else FitState.from_dict(message["state"])
    num_steps = config.total_steps(data.num_train)
    result, stopped = _fit_with_checkpoints(
        config,
        None,
        model,
        data,
        num_steps,
        state,
        progress=False,
        should_stop=should_stop or (lambda: False),
    )
    done = 0 if result is None else len(result.losses)
    return RunOutcome("interrupted" if stopped else "follower", Path("."), done, num_steps)


def _compression_health(compressed, summary: dict, data) -> list[health.Finding]:
    """The health checks of a compressed network (each also issued as a HealthWarning)."""
    scores = [
        {"accuracy": summary.get(f"test_accuracy_{when}"), "rmse": summary.get(f"test_rmse_{when}")}
        for when in ("before", "after")
    ]
    findings = health.check_compression(*scores)
    if data.is_classification:
        with torch.no_grad():
            device = next(compressed.stored_net.parameters()).device
            predicted = compressed.stored_net(data.x_test.to(device)).argmax(-1).cpu()
        findings += health.check_prediction(predicted.numpy(), num_classes=data.num_classes)
    return findings


def _fit_health(
    result: FitResult, prediction, data, mixture, median_net: nn.Module
) -> list[health.Finding]:
    """The health checks of a finished fit (each also issued as a HealthWarning).

    :func:`bayes_sws.fit` has issued the convergence warning already: it is only recorded here.
    """
    findings = result.convergence_findings()
    if data.is_classification:
        findings += health.check_prediction(
            prediction.argmax(-1).numpy(), num_classes=data.num_classes
        )
    weights = torch.cat([p.detach().reshape(-1) for p in median_net.parameters()])
    findings += health.check_mixture(
        mixture.mu.numpy(), weights.numpy(), zero_component=result.model.prior.zero_component
    )
    return findings


def _pretrain(config: RunConfig, data, spec, progress, should_stop, log):
    from ..zoo.training import train

    torch.manual_seed(config.seed)
    net = build_network(**network_kwargs(spec))
    likelihood = _likelihood(config, data)
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
                loss=_pretraining_loss(likelihood, data),
                num_epochs=config.pretrain_epochs,
                lr=config.pretrain_lr,
                batch_size=config.pretrain_batch_size,
                lr_scheduler=config.pretrain_schedule,
                seed=config.seed,
                progress=progress,
                after_step=check_stop,
            )
        except RunInterrupted:
            return None, None
    return net, _evaluate_network(net, data, likelihood)


def _pretraining_loss(likelihood: Likelihood | str, data):
    """Plain training's loss for the run's likelihood (an MDN trains on its own NLL)."""
    if isinstance(likelihood, MixtureDensity):
        return likelihood.mean_nll
    return "cross_entropy" if data.is_classification else "mse"


def _finish(config, run: _RunContext, result: FitResult, data, spec, pretrained_metrics, elapsed):
    import pyro

    run.verify_lock()
    save_result(
        result,
        run.dir,
        network_spec=spec,
        extra={
            "data": data.name,
            "num_train": data.num_train,
            "num_test": data.num_test,
            "targets": _target_scaling(config, data),
        },
        identity=run.identity,
    )
    pyro.set_rng_seed(config.seed)  # posterior-predictive draws of variational guides
    # scored on the CPU, where the data live (a fit on --device cuda predicts there)
    prediction = result.predict(data.x_test).cpu()
    metrics: dict[str, Any] = {
        "run": run.identity.to_dict(),
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
    median_net = result.map_network().cpu()
    if data.is_classification:
        metrics["test_accuracy"] = float((prediction.argmax(-1) == data.y_test).double().mean())
        metrics["test_accuracy_median"] = _evaluate_network(median_net, data, "categorical")[
            "test_accuracy"
        ]
        metrics["pretrained_test_accuracy"] = pretrained_metrics["test_accuracy"]
    else:
        target = data.y_test.reshape(prediction.shape).double()
        error = float(((prediction.double() - target) ** 2).mean().sqrt())
        metrics.update(_in_target_units({"test_rmse": error}, data))
        metrics["targets"] = _target_scaling(config, data)
        median_scores = _evaluate_network(median_net, data, result.model.likelihood)
        metrics["test_rmse_median"] = median_scores["test_rmse"]
        metrics["pretrained_test_rmse"] = pretrained_metrics["test_rmse"]
        if "test_log_likelihood" in median_scores:
            metrics["test_log_likelihood_median"] = median_scores["test_log_likelihood"]
            metrics["pretrained_test_log_likelihood"] = pretrained_metrics["test_log_likelihood"]
    mixture = result.mixture()
    metrics["mixture"] = {k: getattr(mixture, k).tolist() for k in ("pi", "mu", "sigma")}
    metrics["health"] = [
        f.to_dict() for f in _fit_health(result, prediction, data, mixture, median_net)
    ]
    _write_losses(run.dir, result.losses)
    run.verify_lock()
    # last: its presence marks a complete run
    atomic_write_json(rundir.safe_path(run.dir, METRICS_FILE), metrics)
    run.verify_lock()  # a directory removed meanwhile: the run did not succeed
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
@contextlib.contextmanager
def _complete_run(
    run_dir: str | os.PathLike, command: str
) -> Iterator[tuple[_RunContext, RunConfig]]:
    """Lock a fitted run for ``command``; its settings, identity and a clean slate of temporaries."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir} does not exist")
    if not is_run_dir(run_dir):
        raise RunError(f"{run_dir} is not a bayes-sws run directory (no {rundir.MARKER_FILE})")
    with rundir.locked(run_dir, command) as lock:
        config = _read_config(run_dir)
        identity = rundir.read_identity(run_dir, config.identity_settings())
        if not (run_dir / RESULT_FILE).is_file():
            raise RunError(
                f"{run_dir} has no fitted result yet; finish it with "
                f"`bayes-sws fit --resume {run_dir}`"
            )
        rundir.remove_partial_files(run_dir)
        yield _RunContext(run_dir, identity, lock), config


def _save_figure(fig, run: _RunContext, name: str) -> str:
    """Write ``fig`` as ``plots/<name>.png`` (never through a link); its path in the run."""
    if f"{name}.png" not in rundir.PLOT_FILES:
        raise ValueError(f"{name}.png is not one of the plots a run holds ({rundir.PLOT_FILES})")
    folder = rundir.safe_path(run.dir, PLOTS_DIR)
    folder.mkdir(exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(rundir.safe_path(run.dir, PLOTS_DIR, f"{name}.png"), buffer.getvalue())
    return f"{PLOTS_DIR}/{name}.png"


def _mixture_evolution_figure(run: _RunContext) -> dict[str, Any]:
    """``{"mixture_evolution": figure}`` from the run's ``mixture_history.json`` (none without one)."""
    from ..compress.plots import plot_mixture_evolution

    path = rundir.safe_path(run.dir, HISTORY_FILE)
    if not path.exists():  # a run fitted before the history was recorded
        return {}
    history = _read_json_file(path)
    return {"mixture_evolution": plot_mixture_evolution(history)}


def compress_run(
    run_dir: str | os.PathLike,
    *,
    settings: CompressSettings | None = None,
    plots: bool = True,
    sources: Mapping[str, str] | None = None,
    device: str | None = None,
    **changes: Any,
) -> dict[str, Any]:
    """Quantise the run's MAP (median) network with its learned mixture; write ``compression.json``.

    Each weight goes to its most responsible component, close components merge,
    the zero component prunes (:func:`bayes_sws.compress.quantize`), and storage
    is counted as Han et al. do (:func:`bayes_sws.compress.storage_report`); both
    through :func:`bayes_sws.compress.pipeline.compress_result`. The settings are
    a :class:`~bayes_sws.settings.CompressSettings` (``settings``, default the
    defaults) with ``changes`` by name (``merge_threshold=0``,
    ``remove_dead_units=True``, ``finetune_epochs=2``: codebook fine-tuning on
    the run's training data with its batch size and seed); ``sources`` names
    where each change came from, for the error messages. With ``plots``, the
    pretrained-versus-quantised scatter and the per-layer sparsity go to ``plots/``.
    A run fitted with a ``recipe`` starts from that recipe's storing settings instead of the
    defaults (:func:`~bayes_sws.runs.settings.recipe_compress_settings`: unit pruning, codebook
    fine-tuning and unit order as the benchmark stored it), unless ``settings`` is given:
    those the recipe had when the run was fitted (``recipe.json``), so a later release that
    changes the recipe stores the run as before.
    With ``remove_dead_units`` the hidden units pruning left unused are dropped
    before counting (:func:`bayes_sws.compress.remove_dead_units`; exact);
    ``stored_shapes`` gives the shape of every stored parameter either way.
    The stored network is written as ``model.sws``
    (:func:`bayes_sws.compress.save_compressed`; its payload is exactly the
    counted bits) and as a torch state dict ``model_quantized.pt``; ``files``
    gives their sizes. ``device`` (default the CPU) is where the network is
    quantised, fine-tuned and scored; the files are the same from any device.
    """
    if settings is not None and not isinstance(settings, CompressSettings):
        raise TypeError(f"settings must be a CompressSettings, got {type(settings).__name__}")
    compress_settings(changes, base=settings, sources=sources)  # each value, before the run
    if not isinstance(plots, bool):
        raise TypeError(f"plots must be True or False, got {plots!r}")
    if device is not None:
        check_device(device, "--device")
    with _complete_run(run_dir, "compress") as (run, config):
        base = _DEFAULT_BASE if settings is None else "the settings given"
        if settings is None and config.recipe is not None:  # a recipe's run: its settings
            settings, base = _recipe_storing(run, config.recipe)
        chosen = compress_settings(changes, base=settings, sources=sources)
        check_prune_units(chosen.prune_units, chosen.remove_dead_units)
        return _compress_run(run, config, chosen, base, plots, device)


def _compress_run(
    run: _RunContext, config, chosen: CompressSettings, base: str, plots: bool, device
) -> dict:
    from ..compress import plot_layer_sparsity, plot_weights_before_after
    from ..compress.pipeline import compress_result, compress_result_kwargs

    result = load_result(
        rundir.safe_path(run.dir, RESULT_FILE),
        identity=run.identity,
        allow_import=True,
        device=device,
    )
    data = _load_data(config)
    initial = read_checkpoint(
        rundir.safe_path(run.dir, INITIAL_FILE), kind="network", identity=run.identity
    )
    compressed = compress_result(
        result,
        data.x_test,
        data.y_test,
        test_accuracy_pretrained=initial["metrics"].get("test_accuracy"),
        finetune_data=(data.x_train, data.y_train)
        if chosen.finetune_epochs or chosen.prune_units is not None
        else None,
        finetune_batch_size=config.batch_size or len(data.x_train),
        seed=config.seed,
        **compress_result_kwargs(chosen),
    )
    summary = _in_target_units(compressed.to_dict(), data)
    summary["targets"] = _target_scaling(config, data)
    summary["settings"] = chosen.to_dict()
    summary["settings_base"] = base  # what the changes given apply to
    summary["remove_dead_units"] = chosen.remove_dead_units
    stored_net = compressed.stored_net
    assert stored_net is not None  # compress_pipeline always sets it
    summary["stored_shapes"] = {name: list(p.shape) for name, p in stored_net.named_parameters()}
    summary["merge_threshold"] = chosen.merge_threshold
    summary["run"] = run.identity.to_dict()
    summary["num_components_after_merging"] = compressed.num_components
    summary["health"] = [f.to_dict() for f in _compression_health(compressed, summary, data)]
    summary["files"] = _write_models(run, compressed, _network_spec(config, data))
    if plots:
        names = result.model.prior_param_names
        before = {n: initial["network_state"][n] for n in names}
        after = {n: p.cpu() for n, p in compressed.net.named_parameters() if n in names}
        assignments = {n: compressed.quantization.assignments[n].cpu() for n in names}
        figures = {
            "compression_weights": plot_weights_before_after(
                before, after, assignments, title="pretrained → quantised weights"
            ),
            "compression_layers": plot_layer_sparsity(compressed.storage),
            **_mixture_evolution_figure(run),
        }
        summary["plots"] = [_save_figure(fig, run, name) for name, fig in figures.items()]
    summary = plain(summary)
    run.verify_lock()
    atomic_write_json(rundir.safe_path(run.dir, COMPRESSION_FILE), summary)
    return summary


def _write_models(run: _RunContext, compressed, spec: dict[str, Any]) -> dict[str, Any]:
    """The stored network as ``model.sws`` and as a plain state dict; their sizes."""
    from ..compress import save_compressed

    run.verify_lock()
    compressed.stored_net.cpu()  # written from the CPU, whatever device compressed it
    saved = save_compressed(
        compressed.stored_net,
        rundir.safe_path(run.dir, MODEL_FILE),
        architecture=spec,
        param_names=compressed.config["param_names"],
        index_bits=compressed.config["index_bits"],
        position_coding=compressed.config.get("position_coding", "fixed"),
    )
    buffer = io.BytesIO()
    torch.save(compressed.stored_net.state_dict(), buffer)
    atomic_write_bytes(rundir.safe_path(run.dir, STATE_DICT_FILE), buffer.getvalue())
    return {
        MODEL_FILE: saved.to_dict(),
        STATE_DICT_FILE: {"file": STATE_DICT_FILE, "num_bytes": len(buffer.getvalue())},
    }


def diagnose_run(
    run_dir: str | os.PathLike,
    *,
    num_samples: int = 200,
    max_points: int = 500,
    plots: bool = True,
    device: str | None = None,
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
        relative to the run directory), ``idata``, ``targets`` (how real targets
        were scaled, as in ``metrics.json``; ``None`` for class labels) and
        ``notes`` (lines for the user: standardised targets are recorded as
        ``target_mean`` / ``target_std`` attributes of the observed-data and
        predictive groups).
    """
    for name, value in (("num_samples", num_samples), ("max_points", max_points)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RunError(f"{name} must be an integer >= 1, got {value!r}")
    if not isinstance(plots, bool):
        raise TypeError(f"plots must be True or False, got {plots!r}")
    if device is not None:
        check_device(device, "--device")
    with _complete_run(run_dir, "diagnose") as (run, config):
        return _diagnose_run(run, config, num_samples, max_points, plots, device)


def _diagnose_run(
    run: _RunContext, config, num_samples, max_points, plots, device
) -> dict[str, Any]:
    from ..diagnostics import (
        posterior as diagnostics,  # imports ArviZ lazily, with an install hint if it is missing
    )

    result = load_result(
        rundir.safe_path(run.dir, RESULT_FILE),
        identity=run.identity,
        allow_import=True,
        device=device,
    )
    data = _load_data(config)
    count = min(max_points, data.num_train)
    index = torch.randperm(data.num_train, generator=torch.Generator().manual_seed(config.seed))[
        :count
    ]
    idata = diagnostics.to_inference_data(
        result, data.x_train[index], data.y_train[index], num_samples=num_samples, seed=config.seed
    )
    notes = _mark_target_units(idata, data)
    path = rundir.safe_path(run.dir, POSTERIOR_FILE)
    run.verify_lock()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # netCDF writes to a path: rename after
    try:
        idata.to_netcdf(str(tmp))
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    names = [v for v in diagnostics.MIXTURE_VARS if v in idata.posterior]
    table = diagnostics.summary(idata, var_names=names)
    atomic_write_text(rundir.safe_path(run.dir, POSTERIOR_SUMMARY_FILE), table.to_csv())
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
            written.append(_save_figure(fig, run, name))
    return {
        "posterior": path,
        "summary": table,
        "plots": written,
        "idata": idata,
        "targets": _target_scaling(config, data),
        "notes": notes,
    }


def _mark_target_units(idata, data) -> list[str]:
    """Record standardised targets on the InferenceData's target groups; a note saying so."""
    if data.target_std is None:
        return []
    units = {"target_mean": data.target_mean, "target_std": data.target_std}
    for group in ("observed_data", "posterior_predictive"):
        if group in idata.groups():
            getattr(idata, group).attrs.update(units)
    return [
        f"targets in {POSTERIOR_FILE} (observed data, predictive draws) are standardised: "
        f"y * {data.target_std:.6g} + {data.target_mean:.6g} gives the original units"
    ]


_METRICS_KEYS = ("steps", "wall_time", "final_loss")
_COMPRESSION_KEYS = ("compression_rate", "nonzero_fraction")


def report_run(run_dir: str | os.PathLike) -> str:
    """A short human summary of a run directory: settings, progress, metrics, compression.

    Every file read is checked to belong to the run; control characters in it
    are shown escaped, never sent to the terminal.
    """
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise RunError(f"{run_dir} is not a bayes-sws run directory (no {rundir.MARKER_FILE})")
    config = _read_config(run_dir)
    run = _RunContext(run_dir, rundir.read_identity(run_dir, config.identity_settings()), None)
    hidden = "" if config.network != "mlp" else f" hidden={list(config.hidden or (100,))}"
    zero = " (zero component)" if config.zero_component else ""
    recipe = "" if config.recipe is None else f" (recipe {config.recipe})"
    lines = [
        f"run {run_dir}",
        f"  data {config.data}, network {config.network}{hidden}, {config.num_components} components"
        + f"{zero}, λ = {config.prior_scale:.4g}{recipe}{_scales_text(config)}",  # json: all digits
        f"  guide {config.guide}, {config.optimizer} lr {config.lr} (mixture {config.mixture_lr}), "
        + f"batch {config.batch_size}, seed {config.seed}",
    ]
    lines += _report_metrics(run)
    lines += _report_compression(run)
    lines += _report_posterior(run)
    return "\n".join(_printable(line) for line in lines)


def _scales_text(config: RunConfig) -> str:
    """``, × 3 on 2.weight`` for each of the run's multipliers of λ, as given; empty without."""
    scales = config.tensor_scales or {}
    return "".join(f", × {x:.4g} on {name}" for name, x in scales.items())


def _printable(text: str) -> str:
    """``text`` with control characters (terminal escapes) shown as escapes."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _report_metrics(run: _RunContext) -> list[str]:
    if not (run.dir / METRICS_FILE).is_file():
        found = checkpoint_paths(run.dir)
        where = f"newest checkpoint at step {found[0][0]}" if found else "no checkpoint yet"
        return [
            f"  status: not finished ({where}); continue with `bayes-sws fit --resume {run.dir}`"
        ]
    metrics = _read_run_json(run, METRICS_FILE, _METRICS_KEYS)
    wall, final = _number(metrics, "wall_time", ".1f"), _number(metrics, "final_loss", ".6g")
    lines = [f"  status: complete, {metrics['steps']} steps in {wall} s (final loss {final})"]
    if "test_accuracy" in metrics:
        lines.append(
            f"  test accuracy: pretrained {_number(metrics, 'pretrained_test_accuracy', '.2%')}, "
            f"after SVI {_number(metrics, 'test_accuracy', '.2%')} "
            f"(median network {_number(metrics, 'test_accuracy_median', '.2%')})"
        )
    elif "test_rmse" in metrics:
        lines.append(
            f"  test RMSE: pretrained {_number(metrics, 'pretrained_test_rmse', '.4g')}, "
            f"after SVI {_number(metrics, 'test_rmse', '.4g')}"
        )
    note = _targets_note(metrics.get("targets"))
    if note:
        lines.append(f"  {note}")
    if "test_log_likelihood_median" in metrics:
        lines.append(
            "  test log-likelihood: pretrained "
            f"{_number(metrics, 'pretrained_test_log_likelihood', '.4g')}, after SVI "
            f"{_number(metrics, 'test_log_likelihood_median', '.4g')} nats/point"
        )
    mixture = metrics.get("mixture")
    if not isinstance(mixture, dict):
        return lines
    try:
        pi, mu, sigma = (np.asarray(mixture[k], dtype=np.float64) for k in ("pi", "mu", "sigma"))
    except (TypeError, KeyError, ValueError):
        return lines
    lines.append("  learned mixture (by mean):      pi         mu      sigma")
    for j in np.argsort(mu):
        lines.append(f"    component {j:3d}          {pi[j]:9.4f} {mu[j]:+10.4f} {sigma[j]:10.4f}")
    return lines


def _targets_note(targets: Any) -> str | None:
    """One line on how a regression run treated its targets (``metrics.json``'s ``targets``)."""
    if not isinstance(targets, Mapping):
        return None
    if targets.get("standardized"):
        return (
            f"targets standardised for training (training mean {_number(targets, 'mean', '.4g')}, "
            f"std {_number(targets, 'std', '.4g')}); RMSEs in the original units"
        )
    if targets.get("standardize_targets"):
        return "targets as given (a mixture density network learns its own scales)"
    return "targets as given (standardize_targets = false)"


def _number(values: Mapping[str, Any], key: str, spec: str) -> str:
    """``values[key]`` formatted by ``spec``, or ``?`` when it is missing or not a number."""
    value = values.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "?"
    text = format(value, spec)
    return text.replace("%", " %") if spec.endswith("%") else text


def compression_score(summary: Mapping[str, Any]) -> str:
    """``test accuracy 97.50 % -> 96.94 %`` (or log-likelihood, or RMSE) of ``compression.json``."""
    for key, name, spec in (
        ("test_accuracy", "test accuracy", ".2%"),
        ("test_log_likelihood", "test log-likelihood", ".4g"),
        ("test_rmse", "test RMSE", ".4g"),
    ):
        if summary.get(f"{key}_before") is not None:
            before, after = (_number(summary, f"{key}_{w}", spec) for w in ("before", "after"))
            return f"{name} {before} -> {after}"
    return "no test score"


def storing_settings(summary: Mapping[str, Any]) -> str:
    """The line saying which storing settings a ``compression.json`` used.

    The settings that depart from the defaults
    (:class:`~bayes_sws.settings.CompressSettings`), and what the flags given were applied to
    when that was not the defaults, e.g. ``storing settings: prune_units 0.005, ... (from
    recipe NAME as recipe.json recorded it at fit time)``."""
    defaults = plain(CompressSettings().to_dict())
    settings = summary.get("settings") or {}
    changed = [f"{k} {json.dumps(v)}" for k, v in settings.items() if v != defaults.get(k)]
    base = summary.get("settings_base")
    shown = ", ".join(changed) if changed else "the defaults"
    return f"storing settings: {shown}" + (
        "" if base in (None, _DEFAULT_BASE) else f" (from {base})"
    )


def _report_compression(run: _RunContext) -> list[str]:
    if not (run.dir / COMPRESSION_FILE).is_file():
        return [f"  compression: not run (`bayes-sws compress {run.dir}`)"]
    c = _read_run_json(run, COMPRESSION_FILE, _COMPRESSION_KEYS)
    score = compression_score(c)
    rate = _number(c, "compression_rate", ".1f")
    lines = [
        f"  compression: {rate}× at {_number(c, 'nonzero_fraction', '.2%')} non-zero, {score}",
        f"    {storing_settings(c)}",
    ]
    model = (c.get("files") or {}).get(MODEL_FILE)
    if isinstance(model, dict) and {"num_bytes", "payload_bits", "header_bytes"} <= set(model):
        lines.append(
            f"    {MODEL_FILE}: {model['num_bytes']} bytes ({model['payload_bits']} bits of "
            f"weights + {model['header_bytes']} bytes of header; per parameter: "
            f"`bayes-sws inspect {run.dir}`)"
        )
    return lines


def _report_posterior(run: _RunContext) -> list[str]:
    if not (run.dir / POSTERIOR_FILE).is_file():
        return [f"  posterior: not diagnosed (`bayes-sws diagnose {run.dir}`)"]
    lines = [f"  posterior: {POSTERIOR_FILE} (summary in {POSTERIOR_SUMMARY_FILE})"]
    summary = rundir.safe_path(run.dir, POSTERIOR_SUMMARY_FILE)
    if summary.is_file() and summary.stat().st_size <= _MAX_JSON_BYTES:
        rows = list(csv.reader(summary.read_text(errors="replace").splitlines()))
        if rows:
            header = rows[0]
            keep = [i for i, h in enumerate(header) if h in ("", "mean", "sd", "r_hat", "ess_bulk")]
            for row in rows[: min(len(rows), 9)]:
                lines.append("    " + "  ".join(f"{row[i]:>14}" for i in keep if i < len(row)))
    return lines


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
    note = _targets_note(metrics.get("targets"))
    if note:
        lines.append(f"  {note}")
    if "test_log_likelihood_median" in metrics:
        lines.append(
            f"  test log-likelihood {metrics['pretrained_test_log_likelihood']:.4g} (pretrained) "
            f"-> {metrics['test_log_likelihood_median']:.4g} nats/point (after SVI)"
        )
    if metrics:
        lines.append(
            f"  {metrics['steps']} steps, final loss {metrics['final_loss']:.6g}, "
            f"{metrics['wall_time']:.1f} s"
        )
    return "\n".join(lines)
