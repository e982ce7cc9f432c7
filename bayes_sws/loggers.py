"""Metric loggers for :func:`bayes_sws.fit`: follow a run live in a CSV file or TensorBoard.

Each logger is a ``fit`` callback, ``logger(step, loss)``, that records the
step's loss and the seconds since the logger was made, and flushes every
``flush_every`` steps and when closed so another program (``tail -f``, a
spreadsheet, ``tensorboard --logdir``) sees the run while it goes. Use it as a
context manager so the file is closed however the fit ends; :func:`callbacks`
joins several callbacks (loggers, a stop rule) into the one ``fit`` takes.

>>> from bayes_sws import fit
>>> from bayes_sws.loggers import CSVLogger
>>> with CSVLogger("run/losses.csv") as log:  # doctest: +SKIP
...     result = fit(model, x, y, num_steps=2000, callback=log)

(not run as a doctest: it needs a model and data). A step undone by
``on_nonfinite="rollback"`` and run again is logged again, with its new loss.
A run directory of the command line writes ``losses.csv`` itself
(:mod:`bayes_sws.runs.commands`); its ``tensorboard`` setting adds a
:class:`TensorBoardLogger`.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from typing_extensions import Self

__all__ = ["CSVLogger", "TensorBoardLogger", "callbacks", "require_tensorboard"]

Callback = Callable[[int, float], "bool | None"]

#: The CSV logger's columns.
CSV_COLUMNS = ("step", "loss", "seconds")


def callbacks(*fns: Callback | None) -> Callback:
    """One ``fit`` callback calling each of ``fns`` in order (``None`` skipped).

    Every callback is called at every step, even after one asked to stop; the
    joint callback stops the fit when any of them returned true.

    >>> seen = []
    >>> both = callbacks(lambda step, loss: seen.append(step), lambda step, loss: step >= 1)
    >>> both(0, 1.5), both(1, 1.2), seen
    (False, True, [0, 1])
    """
    chosen = [fn for fn in fns if fn is not None]
    for fn in chosen:
        if not callable(fn):
            raise TypeError(f"a callback must be a callable (step, loss) -> bool, got {fn!r}")

    def joint(step: int, loss: float) -> bool:
        stops = [bool(fn(step, loss)) for fn in chosen]
        return any(stops)

    return joint


class _Logger:
    """The shared part: the clock, the flush schedule, closing and the context manager."""

    def __init__(self, flush_every: int) -> None:
        if isinstance(flush_every, bool) or not isinstance(flush_every, int) or flush_every < 1:
            raise ValueError(f"flush_every must be a positive integer, got {flush_every!r}")
        self.flush_every = flush_every
        self.start = time.monotonic()
        self.closed = False
        self._pending = 0

    def __call__(self, step: int, loss: float) -> bool:
        if self.closed:
            raise ValueError(f"{type(self).__name__} is closed")
        self._write(int(step), float(loss), time.monotonic() - self.start)
        self._pending += 1
        if self._pending >= self.flush_every:
            self.flush()
        return False

    def _write(self, step: int, loss: float, seconds: float) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Write what is buffered, so a reader sees every step logged so far."""
        self._pending = 0

    def close(self) -> None:
        """Flush and close (again: nothing)."""
        if not self.closed:
            self.flush()
            self.closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CSVLogger(_Logger):
    """Append ``step,loss,seconds`` rows to a CSV file while a fit runs.

    The loss is written with ``repr`` so the file holds the exact float the fit
    returned (:attr:`~bayes_sws.infer.FitResult.losses`); ``seconds`` counts from
    the logger's creation.

    Parameters
    ----------
    path : path-like
        The file; its folder is created. A new or empty file gets the header
        ``step,loss,seconds``; an existing one with that header is appended to
        (a resumed run continues its file), any other file is refused.
    flush_every : int
        Steps between flushes to disk (default every step; the cost is a
        system call per step, small beside an SVI step).
    """

    def __init__(self, path: str | os.PathLike, *, flush_every: int = 1) -> None:
        super().__init__(flush_every)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = ",".join(CSV_COLUMNS)
        if self.path.is_file() and self.path.stat().st_size > 0:
            with self.path.open(newline="") as f:
                first = f.readline().strip()
            if first != header:
                raise ValueError(
                    f"{self.path} exists and is not a loss log (its first line is {first!r}, "
                    f"expected {header!r}); give a new path"
                )
            self._file = self.path.open("a", newline="")
            self._writer = csv.writer(self._file)
        else:
            self._file = self.path.open("w", newline="")
            self._writer = csv.writer(self._file)
            self._writer.writerow(CSV_COLUMNS)
        self._file.flush()

    def _write(self, step: int, loss: float, seconds: float) -> None:
        self._writer.writerow([step, repr(loss), f"{seconds:.3f}"])

    def flush(self) -> None:
        super().flush()
        self._file.flush()

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._file.close()


def require_tensorboard() -> type:
    """``torch.utils.tensorboard.SummaryWriter``, or an ImportError saying what to install.

    Raises
    ------
    ImportError
        The ``tensorboard`` package is missing (``pip install 'bayes-sws[tensorboard]'``).
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # torch raises this when the tensorboard package is missing
        raise ImportError(
            "TensorBoardLogger needs the tensorboard package: "
            "pip install 'bayes-sws[tensorboard]' (or pip install tensorboard)"
        ) from err
    return SummaryWriter


def _summary_writer(log_dir: str, flush_secs: int) -> Any:
    """``SummaryWriter(log_dir)`` (:func:`require_tensorboard`)."""
    return require_tensorboard()(log_dir=log_dir, flush_secs=flush_secs)


class TensorBoardLogger(_Logger):
    """Write each step's loss as the TensorBoard scalar ``tag`` while a fit runs.

    Parameters
    ----------
    log_dir : path-like
        The folder of the event file (``tensorboard --logdir`` it, or a parent).
    tag : str
        The scalar's name (default ``"loss"``); the seconds since the logger's
        creation are the events' wall time offsets, so TensorBoard's "relative"
        axis shows them.
    flush_every : int
        Steps between flushes (default 50); the writer also flushes every 10 s.

    Needs the ``tensorboard`` package (``pip install 'bayes-sws[tensorboard]'``);
    without it the constructor raises an ImportError saying so. TensorBoard
    stores scalars as 32-bit floats.
    """

    def __init__(
        self, log_dir: str | os.PathLike, *, tag: str = "loss", flush_every: int = 50
    ) -> None:
        super().__init__(flush_every)
        self.log_dir = Path(log_dir)
        self.tag = tag
        self._wall_start = time.time()
        self._writer = _summary_writer(str(self.log_dir), flush_secs=10)

    def _write(self, step: int, loss: float, seconds: float) -> None:
        self._writer.add_scalar(self.tag, loss, step, walltime=self._wall_start + seconds)

    def flush(self) -> None:
        super().flush()
        self._writer.flush()

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._writer.close()
