"""The random-number state a fit draws from, captured and restored as one record.

Pyro, torch and a ``DataLoader``'s sampler draw from torch's global generator
(and those of the CUDA devices, for tensors there); Pyro seeds numpy and
Python's ``random`` as well. :func:`get_rng_state` captures all of them as plain
tensors and lists, so ``torch.load(weights_only=True)`` reads a checkpoint back.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

__all__ = ["get_rng_state", "rng_preserved", "set_rng_state"]


def get_rng_state() -> dict[str, Any]:
    """The state of every RNG Pyro draws from, as tensors and plain Python values.

    Plain values (no numpy arrays) so ``torch.load(weights_only=True)`` can read it back.
    The CUDA generators are included once CUDA is in use (``"cuda"``: one state per device).
    """
    version, mt_state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "random": [int(version), list(mt_state), gauss],
        "numpy": [
            str(name),
            torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned.

    CUDA states are restored where this machine has as many CUDA devices as the
    one that saved them (a checkpoint moved to a CPU machine leaves them out).
    """
    torch.set_rng_state(state["torch"])
    version, mt_state, gauss = state["random"]
    random.setstate((version, tuple(mt_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def rng_preserved(generators: tuple[torch.Generator, ...] = ()) -> Iterator[None]:
    """Whatever runs inside leaves the global RNGs and ``generators`` as they were."""
    state = get_rng_state()
    saved = [g.get_state() for g in generators]
    try:
        yield
    finally:
        set_rng_state(state)
        for generator, generator_state in zip(generators, saved):
            generator.set_state(generator_state)
