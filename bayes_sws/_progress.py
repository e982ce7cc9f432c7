"""One home for progress display: a bar on a terminal, log lines elsewhere, silence in CI.

On an interactive terminal long work draws a ``tqdm`` bar. Elsewhere (a script
whose output goes to a file or a pipe, a job log) it logs a line through the
``bayes_sws`` logger about every :data:`LOG_EVERY_SECONDS` and at the end; that
logger prints to standard error at INFO unless the application configured
logging itself (then its handlers decide). ``CI`` or ``PYTEST_CURRENT_TEST`` in
the environment silences both, and ``progress=False`` always does.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from typing_extensions import Self

__all__ = ["LOG_EVERY_SECONDS", "logger", "progress_bar", "progress_enabled"]

#: Seconds between progress log lines when not on a terminal.
LOG_EVERY_SECONDS = 10.0

logger = logging.getLogger("bayes_sws")


def _ensure_handler() -> None:
    """Print the library's INFO lines to stderr unless the application set up logging."""
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("bayes-sws: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _quiet_environment() -> bool:
    return "CI" in os.environ or "PYTEST_CURRENT_TEST" in os.environ


def _on_terminal() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress_enabled(progress: bool | None = None) -> bool:
    """Whether to draw a progress bar.

    ``progress=None`` means automatic: on when standard error is a terminal and
    neither ``CI`` nor ``PYTEST_CURRENT_TEST`` is set in the environment.
    """
    if progress is not None:
        return bool(progress)
    return not _quiet_environment() and _on_terminal()


class _NoBar:
    """Stand-in with tqdm's small API used here, doing nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _LogBar(_NoBar):
    """tqdm's small API as INFO log lines, about every ``every`` seconds and at the end."""

    def __init__(
        self, total: int | None, desc: str, initial: int = 0, every: float = LOG_EVERY_SECONDS
    ):
        _ensure_handler()
        self.total, self.desc, self.count, self.every = total, desc or "progress", initial, every
        self.start = self.last = time.monotonic()
        self.postfix = ""

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._log(now)

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in kwargs.items())

    def _log(self, now: float) -> None:
        of = f"/{self.total} ({100 * self.count / self.total:.0f} %)" if self.total else ""
        extra = f", {self.postfix}" if self.postfix else ""
        logger.info("%s: %d%s%s, %.1f s", self.desc, self.count, of, extra, now - self.start)

    def close(self) -> None:
        now = time.monotonic()
        if self.last != self.start or now - self.start >= self.every:  # long work: a last line
            self._log(now)


def progress_bar(total: int | None, desc: str = "", progress: bool | None = None, **kwargs: Any):
    """A ``tqdm`` bar on a terminal, log lines elsewhere, or a silent stand-in (see module)."""
    if progress is None and not _quiet_environment() and not _on_terminal():
        return _LogBar(total, desc, initial=int(kwargs.get("initial", 0)))
    if not progress_enabled(progress):
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False, **kwargs)
