"""One home for progress display: a bar on an interactive terminal, silence in CI and tests."""

from __future__ import annotations

import os
import sys
from typing import Any

from typing_extensions import Self

__all__ = ["progress_bar", "progress_enabled"]


def progress_enabled(progress: bool | None = None) -> bool:
    """Whether to draw a progress bar.

    ``progress=None`` means automatic: on when standard error is a terminal and
    neither ``CI`` nor ``PYTEST_CURRENT_TEST`` is set in the environment.
    """
    if progress is not None:
        return bool(progress)
    if "CI" in os.environ or "PYTEST_CURRENT_TEST" in os.environ:
        return False
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


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


def progress_bar(total: int | None, desc: str = "", progress: bool | None = None, **kwargs: Any):
    """A ``tqdm`` bar when :func:`progress_enabled`, otherwise a silent stand-in."""
    if not progress_enabled(progress):
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False, **kwargs)
