"""Self-checking checkpoint files and saved results.

A checkpoint file (``*.ckpt``) is one container::

    line 1   b"bayes-sws checkpoint\\n"
    line 2   JSON header: format_version, kind, payload_bytes, sha256 (of the payload)
    rest     payload: ``torch.save`` of a dict of tensors, lists and numbers

read with ``torch.load(weights_only=True)`` only after the length and the
SHA-256 digest check out, so a truncated or corrupted file raises
:class:`CheckpointError` and is never loaded silently. :func:`save_result` and
:func:`load_result` keep a whole fitted result (network, guide parameters,
mixture, config, losses) in such a file. Run directories (:mod:`bayes_sws.runs`)
are built on these.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import io
import json
import os
import platform
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._io import atomic_write_bytes, atomic_write_json
from ..core.likelihoods import LIKELIHOODS, Categorical, Likelihood
from ..core.model import SWSModel
from ..core.priors import MixturePrior
from ..devices import resolve_device
from ..infer.guides import GUIDES
from ..infer.svi import (
    FitResult,
    get_rng_state,
    local_params,
    set_rng_state,
)
from ..zoo.nets import build_network, is_factory_name

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "CheckpointError",
    "RunIdentity",
    "build_likelihood",
    "likelihood_spec",
    "load_result",
    "network_kwargs",
    "plain",
    "prior_spec",
    "read_checkpoint",
    "save_result",
    "settings_digest",
    "versions",
    "write_checkpoint",
]

#: Version of the ``.ckpt`` container and of its payloads; files of a newer version are refused.
CHECKPOINT_FORMAT_VERSION = 1
_MAGIC = b"bayes-sws checkpoint\n"
_MAX_HEADER = 4096
RESULT_FILE = "result.ckpt"
RESULT_SUMMARY_FILE = "result.json"


class CheckpointError(ValueError):
    """A checkpoint or result file that is missing, truncated, corrupted or of an unknown format."""


@dataclass(frozen=True)
class RunIdentity:
    """Which run a file belongs to: a random id and the digest of the run's settings."""

    run_id: str
    settings_sha256: str

    def to_dict(self) -> dict[str, str]:
        return {"run_id": self.run_id, "settings_sha256": self.settings_sha256}

    @classmethod
    def from_dict(cls, values: Any) -> RunIdentity | None:
        if not isinstance(values, Mapping):
            return None
        run_id, digest = values.get("run_id"), values.get("settings_sha256")
        if not (isinstance(run_id, str) and isinstance(digest, str)):
            return None
        return cls(run_id, digest)

    def mismatch(self, found: Any, what: str) -> str | None:
        """Why ``found`` (a header's ``run`` entry) is not this run, or ``None``."""
        other = RunIdentity.from_dict(found)
        if other is None:
            return f"{what} carries no run identity (written by another tool or version)"
        if other.run_id != self.run_id:
            return f"{what} belongs to run {other.run_id[:12]}, not to this run {self.run_id[:12]}"
        if other.settings_sha256 != self.settings_sha256:
            return f"{what} was written under other settings than this run's config.json"
        return None


def settings_digest(settings: Mapping[str, Any]) -> str:
    """SHA-256 of ``settings`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(plain(dict(settings)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# ============================================================================ checkpoint files
def write_checkpoint(
    path: str | os.PathLike,
    payload: Mapping[str, Any],
    *,
    kind: str,
    identity: RunIdentity | None = None,
) -> Path:
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
    identity : RunIdentity, optional
        The run the file belongs to, recorded in the header and checked on read.

    Raises
    ------
    TypeError
        When ``payload`` holds an object that :func:`read_checkpoint` could not
        load back (nothing is written then).
    """
    if not isinstance(payload, Mapping):
        raise TypeError(f"a checkpoint payload must be a dict, got {type(payload).__name__}")
    buffer = io.BytesIO()
    torch.save(dict(payload), buffer)
    body = buffer.getvalue()
    try:  # what could not be read back is never written
        torch.load(io.BytesIO(body), weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError and others
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TypeError(
            f"cannot write {path}: the payload holds an object a checkpoint cannot hold "
            f"({first[:200]}); store tensors, numbers, strings, lists and dicts only"
        ) from None
    header = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "kind": kind,
        "payload_bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    if identity is not None:
        header["run"] = identity.to_dict()
    data = _MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + body
    return atomic_write_bytes(path, data)


def read_checkpoint(
    path: str | os.PathLike, *, kind: str | None = None, identity: RunIdentity | None = None
) -> dict[str, Any]:
    """Read a ``.ckpt`` container written by :func:`write_checkpoint`, after checking it.

    Raises
    ------
    CheckpointError
        When the file is missing, is not a bayes-sws checkpoint, has a newer
        format version, holds another ``kind``, is truncated (fewer bytes than
        its header announces) or corrupted (SHA-256 mismatch), or, with
        ``identity``, when it belongs to another run.
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
    end, header = _read_header(path, data)
    version = int(header["format_version"])
    found_kind = str(header["kind"])
    if version > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {version}, newer than this bayes_sws understands "
            f"({CHECKPOINT_FORMAT_VERSION}); upgrade bayes_sws to read it"
        )
    if kind is not None and found_kind != kind:
        raise CheckpointError(f"{path} holds a {found_kind!r}, expected a {kind!r}")
    if identity is not None:
        problem = identity.mismatch(header.get("run"), str(path))
        if problem:
            raise CheckpointError(problem)
    body = data[end + 1 :]
    _check_body(path, body, int(header["payload_bytes"]), str(header["sha256"]))
    try:
        payload = torch.load(io.BytesIO(body), weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - a checksum-valid but unreadable pickle is corrupt
        raise CheckpointError(
            f"{path} has a checksum-valid but unreadable payload: {err}"
        ) from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} holds a {type(payload).__name__}, expected a dict")
    return payload


def _read_header(path: Path, data: bytes) -> tuple[int, dict[str, Any]]:
    """Where the JSON header line after the magic bytes ends, and the header (its fields checked)."""
    end = data.find(b"\n", len(_MAGIC), len(_MAGIC) + _MAX_HEADER)
    try:
        if end < 0:
            raise ValueError("no header line")
        header = json.loads(data[len(_MAGIC) : end])
        int(header["format_version"])
        int(header["payload_bytes"])
        str(header["sha256"])
        str(header["kind"])
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(
            f"{path} has a damaged header; the file is truncated or corrupted"
        ) from None
    return end, header


def _check_body(path: Path, body: bytes, size: int, digest: str) -> None:
    """The payload has the header's length and SHA-256 digest."""
    if len(body) != size:
        raise CheckpointError(
            f"{path} is truncated or corrupted: {len(body)} payload bytes, header says {size}"
        )
    if hashlib.sha256(body).hexdigest() != digest:
        raise CheckpointError(
            f"{path} is corrupted: its SHA-256 checksum does not match the header"
        )


# ============================================================================ save / load results
def versions() -> dict[str, str]:
    """Versions of Python, torch, Pyro, numpy and bayes_sws (recorded in every run)."""
    import pyro

    from .. import __version__

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
    for name in inspect.signature(cls).parameters:  # __init__'s, without self
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

    from ..infer.guides import build_guide

    init_loc_fn = init_to_value(values=model.init_values(), fallback=init_to_median)
    like = model.like_tensor()
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
                guide.register_buffer(key, torch.empty_like(state[key], device=like.device))
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
                rank=config.get("guide_rank") if builder is None else None,
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
    identity: RunIdentity | None = None,
) -> Path:
    """Save a fitted result to ``directory/result.ckpt`` (+ a readable ``result.json``).

    Parameters
    ----------
    result : FitResult
    directory : path-like
        Created if missing.
    network_spec : mapping, optional
        Keyword arguments of :func:`bayes_sws.zoo.nets.build_network` that rebuild the
        architecture (``name``, ``input_shape``, ``num_classes``, ``hidden``,
        ``activation``). Without it, :func:`load_result` needs a network of the
        same architecture passed as ``network=``.
    extra : mapping, optional
        Further plain values stored with the result (e.g. data-set details).
    identity : RunIdentity, optional
        The run directory's identity (:mod:`bayes_sws.runs.directory`), checked on load.

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
        "network_spec": None if network_spec is None else plain(dict(network_spec)),
        "network_state": {k: v.detach().clone() for k, v in model.net.state_dict().items()},
        **_prior_specs(model),
        "likelihood": likelihood_spec(model.likelihood),
        "prior_scale": float(model.prior_scale),
        **({"tensor_scales": dict(model.tensor_scales)} if model.tensor_scales else {}),
        "guide_name": result.guide_name,
        "guide_state": guide_state,
        "losses": torch.as_tensor(np.asarray(result.losses, dtype=np.float64)),
        "config": plain(dict(result.config)),
        "wall_time": float(result.wall_time),
        "versions": versions(),
        "extra": plain(dict(extra or {})),
    }
    directory = Path(directory)
    path = write_checkpoint(directory / RESULT_FILE, payload, kind="result", identity=identity)
    mixture = result.mixture()
    summary = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "file": RESULT_FILE,
        "guide": result.guide_name,
        "num_steps": len(result.losses),
        "final_loss": float(result.losses[-1]) if len(result.losses) else None,
        "config": payload["config"],
        "network_spec": payload["network_spec"],
        "prior": plain(payload["prior"]),
        "likelihood": plain(payload["likelihood"]),
        "mixture": {k: getattr(mixture, k).tolist() for k in ("pi", "mu", "sigma")},
        "versions": payload["versions"],
    }
    if identity is not None:
        summary["run"] = identity.to_dict()
    atomic_write_json(directory / RESULT_SUMMARY_FILE, summary)
    return path


def load_result(
    directory: str | os.PathLike,
    *,
    network: nn.Module | None = None,
    guide: Callable | None = None,
    likelihood: Likelihood | None = None,
    identity: RunIdentity | None = None,
    allow_import: bool = False,
    device: str | torch.device | None = None,
) -> FitResult:
    """Load what :func:`save_result` wrote: the same medians, mixture and predictions.

    Onto the CPU, or onto ``device`` (``"cuda"``, ``"auto"``, ...;
    :func:`bayes_sws.devices.resolve_device`) wherever the result was fitted.

    The network is rebuilt from the saved spec (or ``network=``), the model from
    the saved prior and likelihood, and the guide by building it afresh, running
    it once so Pyro creates its parameters, then loading their saved values.

    A spec naming your own network (``"package.module:factory"``) is rebuilt by
    importing that module, which runs its code: only with ``allow_import=True``
    (for a result you trust), else pass ``network=``.

    Raises
    ------
    CheckpointError
        If ``result.ckpt`` is missing, truncated or corrupted, or, with
        ``identity``, belongs to another run.
    """
    directory = Path(directory)
    path = directory / RESULT_FILE if directory.is_dir() or not directory.suffix else directory
    payload = read_checkpoint(path, kind="result", identity=identity)
    spec = payload["network_spec"]
    if network is None:
        if spec is None:
            raise ValueError(
                f"{path} was saved without a network spec; pass a network of the same "
                "architecture as load_result(..., network=net)"
            )
        if is_factory_name(spec.get("name")) and not allow_import:
            raise ValueError(
                f"{path} holds a network built by the factory {spec['name']!r}; rebuilding it "
                "imports that module, which runs its code: pass allow_import=True if you "
                "trust the file, or a network of the same architecture as network="
            )
        with _rng_preserved():  # initial weights are overwritten; keep the caller's RNG
            network = build_network(**network_kwargs(spec))
    try:
        network.load_state_dict(payload["network_state"])
    except RuntimeError as err:
        raise ValueError(f"the saved network state does not fit the network: {err}") from None
    like = likelihood if likelihood is not None else build_likelihood(payload["likelihood"])
    model = _model_of(payload, network, like)
    if device is not None:
        model.to(resolve_device(device))
    fitted = _rebuild_guide(
        payload["guide_name"], model, payload["config"], payload["guide_state"], guide
    )
    losses = payload["losses"].numpy().astype(np.float64)
    return FitResult(
        model, fitted, payload["guide_name"], losses, dict(payload["config"]), payload["wall_time"]
    )


def _prior_specs(model: SWSModel) -> dict[str, Any]:
    """``prior``: the spec of the model's prior; with groups also ``groups`` and ``group_priors``.

    A grouped model's ``prior`` is its first group's settings (the template of
    :class:`~bayes_sws.core.priors.GroupedMixturePrior`); ``groups`` its groups'
    parameter names, ``group_priors`` each group's prior.
    """
    if model.groups is None or model.group_priors is None:
        return {"prior": prior_spec(model.prior)}
    priors = {}
    for group, prior in model.group_priors.items():
        settings = copy.copy(prior)
        del settings.group  # the group's settings, unnamed: SWSModel names its sites again
        priors[group] = prior_spec(settings)
    return {
        "prior": next(iter(priors.values())),
        "groups": {g: list(names) for g, names in model.groups.items()},
        "group_priors": priors,
    }


def _model_of(payload: Mapping[str, Any], network: nn.Module, like: Likelihood) -> SWSModel:
    """The :class:`SWSModel` of a saved result: one mixture, or one per saved group, and the
    multipliers of λ it had."""
    common = {"prior_scale": payload["prior_scale"], "tensor_scales": payload.get("tensor_scales")}
    if payload.get("groups") is None:
        prior: Any = _build_prior(payload["prior"])
        return SWSModel(network, prior, like, **common)
    prior = {g: _build_prior(spec) for g, spec in payload["group_priors"].items()}
    return SWSModel(network, prior, like, groups=payload["groups"], **common)


def network_kwargs(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :func:`bayes_sws.zoo.nets.build_network` from a stored network spec."""
    kwargs = dict(spec)
    kwargs["input_shape"] = tuple(kwargs["input_shape"])
    if kwargs.get("hidden") is not None:
        kwargs["hidden"] = tuple(kwargs["hidden"])
    name = kwargs.pop("name")
    return {"name": name, **kwargs}


def plain(value: Any) -> Any:
    """JSON-friendly copy: tuples to lists, tensors and numpy to lists/numbers."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if torch.is_tensor(value):
        return value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
