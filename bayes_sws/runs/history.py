"""``mixture_history.json``: the weights' histogram and the mixture at a few points of a fit.

A run records, at the start of SVI and at the first checkpoint at or after each
of :data:`FRACTIONS` of its steps, the counts of the (posterior median) weights
that carry the prior in fixed bins over the pretrained weights' range (widened
by a tenth on each side; a weight that leaves it is counted in the outermost
bin, so the counts always sum to the number of weights), and the
mixture ``(pi, mu, sigma)`` at the posterior median. The file is small (counts,
not weights) and rewritten atomically at each record; ``bayes-sws compress``
draws ``plots/mixture_evolution.png`` from it, with the other plots
(:func:`bayes_sws.compress.plots.plot_mixture_evolution`).

A resumed run keeps the records up to the step it resumes from and drops any
later one (written before a checkpoint that did not survive), so its history is
the uninterrupted run's: the records are taken from the checkpointed state
itself, on a schedule that does not depend on when the run stopped.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write_json
from ..core.model import SWSModel
from ..infer.rng import rng_preserved
from ..infer.svi import FitResult, FitSettings, FitState, SVIEngine, local_params

__all__ = [
    "FORMAT_VERSION",
    "FRACTIONS",
    "HISTORY_FILE",
    "NUM_BINS",
    "MixtureHistory",
    "record_steps",
]

HISTORY_FILE = "mixture_history.json"
FORMAT_VERSION = 1
#: Fractions of the run's steps after which the weights and the mixture are recorded.
FRACTIONS = (0.25, 0.5, 0.75, 1.0)
NUM_BINS = 100
_PROBE_POINTS = 8  # data points the probe engine builds its guide on (only the shapes matter)


def record_steps(num_steps: int, every: int | None) -> list[int]:
    """Steps recorded: 0 and, per fraction, the first scheduled checkpoint at or after it."""
    steps = {0, num_steps}
    for fraction in FRACTIONS:
        target = math.ceil(fraction * num_steps)
        steps.add(num_steps if not every else min(num_steps, -(-target // every) * every))
    return sorted(steps)


def _prior_weights(result: FitResult) -> np.ndarray:
    """The posterior median of every weight carrying the prior, pooled."""
    model, median = result.model, result.median()
    return np.concatenate(
        [
            median[model.site_name(n)].detach().cpu().double().reshape(-1).numpy()
            for n in model.prior_param_names
        ]
    )


def _edges(weights: np.ndarray) -> np.ndarray:
    """:data:`NUM_BINS` equal bins over the weights' range widened by a tenth on each side."""
    lo, hi = float(weights.min()), float(weights.max())
    pad = 0.1 * (hi - lo) if hi > lo else 1.0
    return np.linspace(lo - pad, hi + pad, NUM_BINS + 1)


class MixtureHistory:
    """Records of a run's fit, taken from the states passed to its checkpoint writer.

    Parameters
    ----------
    path : pathlib.Path
        The file to (re)write.
    model : SWSModel
        The run's model before SVI (its weights are the pretrained ones; the bins
        span their range).
    x, y : Tensor
        The training data (a few points build the probe's guide).
    settings : FitSettings
        The fit's settings (guide, init scale, seed, checkpoint_every).
    num_steps : int
    state : FitState or None
        The state the fit resumes from; ``None`` for a fresh start.
    before_write : callable
        Called before each write (the run's lock check).
    """

    def __init__(
        self,
        path: Path,
        model: SWSModel,
        x: torch.Tensor,
        y: torch.Tensor,
        settings: FitSettings,
        num_steps: int,
        state: FitState | None,
        before_write: Callable[[], None],
    ) -> None:
        self.path, self._before_write = path, before_write
        with rng_preserved():  # the probe's init seeds the RNGs: the fit must not notice
            self._probe = SVIEngine(
                copy.deepcopy(model),
                x[:_PROBE_POINTS],
                y[:_PROBE_POINTS],
                settings=settings.replace(batch_size=None, num_epochs=None),
            )
            self._probe.init()  # the guide at step 0 of the fit (same seed, same init values)
        start = self._result()
        self.edges = _edges(_prior_weights(start))
        self.steps = record_steps(num_steps, settings.checkpoint_every)
        self.num_steps = num_steps
        resumed = 0 if state is None else state.step
        self.snapshots = [s for s in self._read() if s["step"] <= resumed]
        if not self.snapshots or self.snapshots[0]["step"] != 0:
            self.snapshots.insert(0, self._snapshot(0, start))
        self._write()

    def _result(self) -> FitResult:
        probe = self._probe
        return FitResult(probe.model, probe.guide, probe.config["guide"], np.empty(0))

    def _snapshot(self, step: int, result: FitResult) -> dict[str, Any]:
        clipped = np.clip(_prior_weights(result), self.edges[0], self.edges[-1])
        counts, _ = np.histogram(clipped, bins=self.edges)
        mixture = result.mixture()
        return {
            "step": int(step),
            "counts": counts.tolist(),
            **{
                k: getattr(mixture, k).detach().cpu().double().tolist()
                for k in ("pi", "mu", "sigma")
            },
        }

    def _read(self) -> list[dict[str, Any]]:
        """The records in the file, if it is this run's (same bins and schedule); else none."""
        try:
            found = json.loads(self.path.read_text())
            same = (
                found["format"] == FORMAT_VERSION
                and found["edges"] == self.edges.tolist()
                and found["num_steps"] == self.num_steps
            )
            return list(found["snapshots"]) if same else []
        except (OSError, ValueError, KeyError, TypeError):
            return []

    def _write(self) -> None:
        self._before_write()
        atomic_write_json(
            self.path,
            {
                "format": FORMAT_VERSION,
                "num_steps": self.num_steps,
                "edges": self.edges.tolist(),
                "num_weights": int(sum(self.snapshots[0]["counts"])),
                "snapshots": self.snapshots,
            },
        )

    def record(self, state: FitState) -> None:
        """Record ``state`` if its step is on the schedule (a rewritten step replaces its record)."""
        if state.step not in self.steps:
            return
        with local_params():
            self._probe.guide.load_state_dict(state.guide_state)
        snapshot = self._snapshot(state.step, self._result())
        self.snapshots = [s for s in self.snapshots if s["step"] < state.step] + [snapshot]
        self._write()
