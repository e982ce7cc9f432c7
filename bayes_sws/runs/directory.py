"""What a run directory is, and the rules for touching one.

A run directory is a directory that this tool created and marked: it holds
``bayes-sws-run.json``, written when the run was created, with the tool's name,
the marker's format version, a random run id and the SHA-256 of the settings the
run's results depend on. Nothing else makes a directory a run (a ``config.json``
of somebody else's project does not). The rules every command follows:

- **Creation is atomic.** A new run is assembled in a temporary sibling
  directory (``.NAME.<pid>.<random>.tmp``: marker and ``config.json``) and renamed
  into place, so a kill at any moment leaves either no run or a whole one.
  Temporary siblings of killed processes are removed on the next use of ``NAME``.
- **Every file proves it belongs.** Checkpoints and results carry the run's
  identity (:class:`RunIdentity`) in their header and are refused when it is
  another run's; ``config.json`` must hash to the marker's settings digest.
- **One process at a time** (:func:`locked`), ``fit --overwrite`` included.
- **Only the tool's own files are deleted** (:func:`clear_run`): the names listed
  in :data:`TOOL_FILES`, checkpoints named ``step-XXXXXXXX.ckpt``, the plots the
  tool draws and temporary files of its atomic writes. Anything else stays.
- **Links are never followed** inside a run directory: a symbolic link where the
  tool would write, read state or delete is refused with an error naming it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .._io import atomic_write_json
from .checkpoints import RunIdentity, settings_digest
from .settings import RunError

__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "MARKER_FILE",
    "PLOTS_DIR",
    "RunIdentity",
    "RunLock",
    "clear_run",
    "create_run",
    "is_run_dir",
    "locked",
    "read_identity",
    "read_marker",
    "remove_partial_files",
    "safe_path",
    "settings_digest",
]

MARKER_FILE = "bayes-sws-run.json"
MARKER_TOOL = "bayes-sws"
MARKER_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
PLOTS_DIR = "plots"
LOCK_FILE = ".lock"
#: Every file name the tool writes at the top of a run directory.
TOOL_FILES = (
    CONFIG_FILE,
    "initial.ckpt",
    "result.ckpt",
    "result.json",
    "metrics.json",
    "losses.csv",
    "mixture_history.json",
    "compression.json",
    "recipe.json",
    "model.sws",
    "model_quantized.pt",
    "posterior.nc",
    "posterior_summary.csv",
)
#: The plots the tool draws into ``plots/``.
PLOT_FILES = (
    "compression_weights.png",
    "compression_layers.png",
    "loss.png",
    "hyperposterior.png",
    "mixture.png",
    "mixture_evolution.png",
)
CHECKPOINT_NAME = re.compile(r"^step-(\d+)\.ckpt$")
_TEMPORARY = re.compile(r"^\..+\.tmp$")
_MAX_MARKER_BYTES = 1 << 20


# ============================================================================ paths
def safe_path(run_dir: Path, *parts: str) -> Path:
    """``run_dir / parts``, refusing any symbolic link on the way (the run directory excepted)."""
    current = Path(run_dir)
    for part in parts:
        current = current / part
        if current.is_symlink():
            raise RunError(
                f"{current} is a symbolic link; bayes-sws never writes, reads state or deletes "
                "through links inside a run directory (remove the link and retry)"
            )
    return current


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds this tool's run marker (a plain file, not a link)."""
    marker = Path(path) / MARKER_FILE
    return marker.is_file() and not marker.is_symlink()


def read_marker(run_dir: Path) -> dict[str, Any]:
    """The run marker of ``run_dir``, checked (tool, format version, run id)."""
    path = safe_path(run_dir, MARKER_FILE)
    try:
        if not path.is_file() or path.stat().st_size > _MAX_MARKER_BYTES:
            raise ValueError("not a small regular file")
        marker = json.loads(path.read_text())
        if marker.get("tool") != MARKER_TOOL:
            raise ValueError(f"tool is {marker.get('tool')!r}")
        version = marker.get("format_version")
        if type(version) is not int:
            raise ValueError("no format version")
    except (OSError, ValueError, AttributeError) as err:
        raise RunError(
            f"{path} is not a valid bayes-sws run marker ({err}); nothing in {run_dir} was "
            "touched, check the directory by hand"
        ) from None
    if version > MARKER_FORMAT_VERSION:
        raise RunError(
            f"{path} has format version {version}, newer than this bayes_sws understands "
            f"({MARKER_FORMAT_VERSION}); upgrade bayes_sws"
        )
    if RunIdentity.from_dict(marker) is None:
        raise RunError(f"{path} has no run id; nothing in {run_dir} was touched")
    return marker


def read_identity(run_dir: Path, config: Mapping[str, Any]) -> RunIdentity:
    """The run's identity, after checking that ``config`` (from ``config.json``) is its own.

    Raises :class:`RunError` when the directory is not a run, or when the settings
    were edited after the run started (naming the keys that differ).
    """
    if not is_run_dir(run_dir):
        raise RunError(f"{run_dir} is not a bayes-sws run directory (no {MARKER_FILE})")
    marker = read_marker(run_dir)
    identity = RunIdentity.from_dict(marker)
    assert identity is not None  # checked by _read_marker
    if settings_digest(config) != identity.settings_sha256:
        settings = marker.get("settings")
        recorded = settings if isinstance(settings, dict) else {}
        changed = sorted(k for k in set(recorded) | set(config) if recorded.get(k) != config.get(k))
        raise RunError(
            f"{run_dir / CONFIG_FILE} differs from the settings the run was started with "
            f"({', '.join(changed) or 'edited'}); a run's settings cannot change: restore them, "
            "or start a new run in another --out"
        )
    return identity


# ============================================================================ creation
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale_siblings(out: Path) -> Iterator[Path]:
    """Temporary run directories for ``out`` whose creating process is gone."""
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(\d+)\.[0-9a-f]+\.tmp$")
    if not out.parent.is_dir():
        return
    for entry in out.parent.iterdir():
        match = pattern.match(entry.name)
        alive = match is None or _pid_alive(int(match.group(1)))
        if not alive and not entry.is_symlink() and entry.is_dir():
            yield entry


def _remove_stale_creation(entry: Path) -> None:
    """Delete a half-made run directory, but only files the tool puts there."""
    for child in list(entry.iterdir()):
        ours = child.name in (MARKER_FILE, CONFIG_FILE) or _TEMPORARY.match(child.name)
        if ours and child.is_file() and not child.is_symlink():
            child.unlink()
    with contextlib.suppress(OSError):  # anything else in it: leave it
        entry.rmdir()


def _marker(identity: RunIdentity, settings: Mapping[str, Any]) -> dict[str, Any]:
    from .. import __version__

    return {
        "tool": MARKER_TOOL,
        "format_version": MARKER_FORMAT_VERSION,
        "bayes_sws_version": __version__,
        **identity.to_dict(),
        "settings": dict(settings),
    }


def create_run(out: Path, config: Mapping[str, Any], digest_of: Mapping[str, Any]) -> RunIdentity:
    """Create the run directory ``out`` atomically with ``config.json`` and the marker.

    ``out`` must not exist or be an empty directory. ``digest_of`` are the settings
    the run's identity hashes (``config`` less what may change on resume).
    """
    for stale in _stale_siblings(out):
        _remove_stale_creation(stale)
    identity = RunIdentity(secrets.token_hex(16), settings_digest(digest_of))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        atomic_write_json(tmp / CONFIG_FILE, dict(config))
        atomic_write_json(tmp / MARKER_FILE, _marker(identity, digest_of))
        os.rename(tmp, out)  # replaces an empty directory; fails on a non-empty one
    except OSError as err:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise RunError(f"{out} was filled by another process; nothing was written") from None
        raise
    return identity


def renew_run(
    run_dir: Path, config: Mapping[str, Any], digest_of: Mapping[str, Any]
) -> RunIdentity:
    """Give a cleared run directory (:func:`clear_run`) new settings and a new identity.

    The marker is written last: a kill in between leaves the old marker, whose
    digest then no longer matches ``config.json`` (refused on resume; ``--overwrite``
    still recognises the directory as a run).
    """
    identity = RunIdentity(secrets.token_hex(16), settings_digest(digest_of))
    atomic_write_json(safe_path(run_dir, CONFIG_FILE), dict(config))
    atomic_write_json(safe_path(run_dir, MARKER_FILE), _marker(identity, digest_of))
    return identity


def update_config(run_dir: Path, config: Mapping[str, Any]) -> None:
    """Rewrite ``config.json`` (settings that may change on resume; the digest must still hold)."""
    atomic_write_json(safe_path(run_dir, CONFIG_FILE), dict(config))


# ============================================================================ deletion
def _tool_files(run_dir: Path) -> Iterator[Path]:
    """Every file of ``run_dir`` that the tool wrote (links refused, never followed)."""
    for name in TOOL_FILES:
        path = safe_path(run_dir, name)
        if path.exists():
            yield path
    for folder, keep in (
        (CHECKPOINT_DIR, CHECKPOINT_NAME.match),
        (PLOTS_DIR, PLOT_FILES.__contains__),
    ):
        directory = safe_path(run_dir, folder)
        if directory.is_dir():
            for entry in directory.iterdir():
                if keep(entry.name) or _TEMPORARY.match(entry.name):
                    yield safe_path(run_dir, folder, entry.name)


def clear_run(run_dir: Path) -> list[str]:
    """Delete the tool's files from ``run_dir`` (marker last); return what stays.

    Call with the run's lock held. Files the tool did not write, and folders that
    still hold them, are left where they are.
    """
    doomed = list(_tool_files(run_dir))
    doomed += list(_temporary_files(run_dir))
    for path in doomed:
        if path.is_dir():  # a directory named like a tool file: not ours
            raise RunError(f"{path} is a directory, not a file bayes-sws wrote; remove it by hand")
    for path in doomed:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    for folder in (CHECKPOINT_DIR, PLOTS_DIR):
        with contextlib.suppress(OSError):  # only if empty
            safe_path(run_dir, folder).rmdir()
    return sorted(p.name for p in run_dir.iterdir() if p.name not in (MARKER_FILE, LOCK_FILE))


def _temporary_files(run_dir: Path) -> Iterable[Path]:
    for parts in ((), (CHECKPOINT_DIR,), (PLOTS_DIR,)):
        folder = safe_path(run_dir, *parts)
        if folder.is_dir():
            for entry in folder.iterdir():
                if _TEMPORARY.match(entry.name) and entry.is_file() and not entry.is_symlink():
                    yield entry


def remove_partial_files(run_dir: Path) -> list[str]:
    """Delete the temporary files of writes that a killed process left (lock held)."""
    removed = []
    for entry in _temporary_files(run_dir):
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
        removed.append(entry.name)
    return removed


# ============================================================================ the lock
class RunLock:
    """An OS lock on ``run_dir/.lock`` (released even by ``kill -9``)."""

    def __init__(self, run_dir: Path, command: str) -> None:
        self.run_dir = Path(run_dir)
        self.command = command
        self._fd: int | None = None
        self._inode: tuple[int, int] | None = None

    def acquire(self) -> None:
        import fcntl

        path = safe_path(self.run_dir, LOCK_FILE)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except FileNotFoundError:
            raise RunError(f"{self.run_dir} does not exist (it was removed)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            os.close(fd)
            raise RunError(
                f"{self.run_dir} is in use by another bayes-sws process"
                f"{f' ({holder})' if holder else ''}; wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"bayes-sws {self.command}, pid {os.getpid()}\n".encode(), 0)
        stat = os.fstat(fd)
        self._fd, self._inode = fd, (stat.st_dev, stat.st_ino)

    def verify(self) -> None:
        """Raise :class:`RunError` if the run directory vanished or was replaced while locked."""
        try:
            stat = os.stat(self.run_dir / LOCK_FILE, follow_symlinks=False)
        except FileNotFoundError:
            stat = None
        if stat is None or (stat.st_dev, stat.st_ino) != self._inode:
            raise RunError(
                f"{self.run_dir} was removed or replaced by another process while this "
                f"{self.command} ran; its results were not kept"
            )

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@contextlib.contextmanager
def locked(run_dir: Path, command: str) -> Iterator[RunLock]:
    """Hold ``run_dir``'s lock for the block; refuse at once when another process holds it."""
    lock = RunLock(run_dir, command)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()
