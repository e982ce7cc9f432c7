"""Build and load the fused C prior kernel (``mixture.c``) on first use.

The C source ships with the package and is compiled at run time with the
system C compiler (``$BAYES_SWS_CC``, else ``$CC``, else ``cc``) into a
per-user cache directory (``$BAYES_SWS_CACHE_DIR``, else
``$XDG_CACHE_HOME/bayes_sws/native``, else ``~/.cache/bayes_sws/native``).
The file name carries a hash of the source, the flags, the compiler's version
and target and this machine's CPU, so a changed source, compiler or CPU builds
afresh. Building is atomic: compile to a private temporary file in the cache
directory, then ``os.replace`` it into place — two processes building at once
each produce a complete library and the last rename wins.

Nothing here imports torch; :mod:`bayes_sws.core.kernel` calls :func:`load` and the
functions ``bsws_mixture_f32`` / ``bsws_mixture_f64`` through :mod:`ctypes`.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SOURCE = Path(__file__).resolve().with_name("mixture.c")
#: Every file the build reads (hashed into the library's name).
SOURCES = (SOURCE, SOURCE.with_name("mixture_body.h"))
#: IEEE-preserving optimisation only: no -ffast-math (NaN/inf must propagate).
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=c11", "-fno-math-errno")
ABI_VERSION = 2


class BuildError(RuntimeError):
    """The C compiler is missing or failed."""


_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_error: BuildError | None = None
#: Seconds the last :func:`load` spent compiling (0.0 when the cache was hit).
last_build_seconds: float | None = None


def compiler() -> list[str]:
    """The C compiler command, as a list (``$BAYES_SWS_CC``, ``$CC`` or ``cc``)."""
    return shlex.split(os.environ.get("BAYES_SWS_CC") or os.environ.get("CC") or "cc")


def cache_dir() -> Path:
    explicit = os.environ.get("BAYES_SWS_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bayes_sws" / "native"


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU model and feature flags."""
    text = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    text += line
                if line.strip() == "":  # first processor is enough
                    break
    except OSError:
        pass
    return text


def _compiler_identity(cc: list[str]) -> str:
    try:
        out = subprocess.run(
            [*cc, "--version"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
        target = subprocess.run(
            [*cc, "-dumpmachine"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise BuildError(f"C compiler {shlex.join(cc)!r} is not usable: {error}") from error
    return out.strip().splitlines()[0] + " " + target.strip()


def library_path() -> Path:
    """Where the library for the current source, flags, compiler and CPU lives."""
    cc = compiler()
    key = hashlib.sha256()
    for part in (
        *(source.read_bytes() for source in SOURCES),
        " ".join(FLAGS).encode(),
        shlex.join(cc).encode(),
        _compiler_identity(cc).encode(),
        _cpu_signature().encode(),
        sys.platform.encode(),
    ):
        key.update(part)
        key.update(b"\0")
    return cache_dir() / f"mixture-{key.hexdigest()[:20]}.so"


def build(path: Path) -> float:
    """Compile ``mixture.c`` to ``path`` atomically; return the seconds it took."""
    cc = compiler()
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp.so", dir=path.parent)
    os.close(fd)
    try:
        try:
            result = subprocess.run(
                [*cc, *FLAGS, "-o", tmp, str(SOURCE), "-lm"],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as error:
            raise BuildError(f"could not run {shlex.join(cc)!r}: {error}") from error
        if result.returncode != 0:
            raise BuildError(
                f"{shlex.join(cc)} failed (exit {result.returncode}):\n{result.stderr[-2000:]}"
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return time.perf_counter() - start


def _declare(lib: ctypes.CDLL) -> None:
    for name in ("bsws_mixture_f32", "bsws_mixture_f64"):
        fn = getattr(lib, name)
        ptr = ctypes.c_void_p
        fn.argtypes = [
            ptr, ctypes.c_int64, ptr, ptr, ptr, ctypes.c_int64, ctypes.c_int,
            ptr, ptr, ptr, ptr, ptr, ctypes.c_int, ptr,
        ]  # fmt: skip
        fn.restype = ctypes.c_int
    for name in ("bsws_prune_mask_f32", "bsws_prune_mask_f64"):
        fn = getattr(lib, name)
        ptr = ctypes.c_void_p
        fn.argtypes = [ptr, ctypes.c_int64, ptr, ptr, ptr, ctypes.c_int64, ptr]
        fn.restype = ctypes.c_int
    lib.bsws_abi_version.restype = ctypes.c_int
    if lib.bsws_abi_version() != ABI_VERSION:
        raise BuildError("stale native library (ABI version mismatch)")


def load() -> ctypes.CDLL:
    """The loaded library, building it on first use; raises :class:`BuildError`.

    A failure is remembered for the life of the process (call :func:`reset`
    to try again).
    """
    global _library, _error, last_build_seconds
    if _library is not None:
        return _library
    if _error is not None:
        raise _error
    with _lock:
        if _library is not None:
            return _library
        if _error is not None:
            raise _error
        try:
            path = library_path()
            seconds = 0.0
            if not path.exists():
                try:
                    seconds = build(path)
                except OSError:  # cache dir not writable: build privately
                    path = Path(tempfile.mkdtemp(prefix="bayes_sws_native_")) / path.name
                    seconds = build(path)
            try:
                lib = ctypes.CDLL(str(path))
                _declare(lib)
            except (OSError, AttributeError, BuildError):  # corrupt or stale file
                path.unlink(missing_ok=True)
                seconds = build(path)
                lib = ctypes.CDLL(str(path))
                _declare(lib)
        except BuildError as error:
            _error = error
            raise
        except Exception as error:
            _error = BuildError(f"{type(error).__name__}: {error}")
            raise _error from error
        last_build_seconds = seconds
        _library = lib
        return lib


def reset() -> None:
    """Forget the loaded library and any remembered failure (for tests)."""
    global _library, _error, last_build_seconds
    with _lock:
        _library = None
        _error = None
        last_build_seconds = None
