"""The optimiser every training loop of the package builds: Adam, multi-tensor.

:func:`adam` is ``torch.optim.Adam`` with ``foreach=True``: one call per operation
over all the tensors of a group instead of one per tensor (torch picks that only
for CUDA tensors by default, and the single-tensor loop elsewhere). On CPU the
update is the same, bit for bit (the multi-tensor and single-tensor
implementations perform the same elementwise operations in the same order;
``tests/test_optim.py`` checks it against torch's single-tensor Adam), and
somewhat faster. Measured on LeNet-300-100 (1 thread, CPU time, the two
optimisers interleaved in one process, median of 15 rounds of 20 steps, the
machine's other core busy): a plain training step 3.76 → 3.54 ms (0.94×); a
``fit``-style MAP step with the prior 9.21 → 9.26 ms (no difference within the
noise). Adam alone on synthetic gradients (LeNet-300-100's six tensors plus the
mixture's four) took 2.0 ms single-tensor and 0.9 ms multi-tensor, but inside a
step most of that gap does not show. ``fused=True`` rounds differently, so a run
would no longer repeat one made with the default optimiser; it is not used.

:func:`bayes_sws.fit` (``optimizer="adam"``), :func:`bayes_sws.zoo.training.train`
(pretraining, Deep Compression's fine-tuning) and the Lightning module use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = ["adam", "adam_for", "make_scheduler", "step_scheduler"]


def adam(params: Iterable[Any], **options: Any) -> torch.optim.Adam:
    """``torch.optim.Adam(params, foreach=True, **options)``.

    Parameters
    ----------
    params : iterable
        Tensors or parameter groups (dicts), as for ``torch.optim.Adam``.
    **options
        Any other ``torch.optim.Adam`` argument (``lr``, ``weight_decay``, ...);
        an explicit ``foreach`` or ``fused`` is respected.

    Returns
    -------
    torch.optim.Adam
    """
    if not options.get("fused"):
        options.setdefault("foreach", True)
    return torch.optim.Adam(params, **options)


def adam_for(
    weights: list[torch.Tensor], hyper: list[torch.Tensor], *, lr: float, mixture_lr: float
) -> torch.optim.Adam:
    """:func:`adam` over a fit's two parameter groups, as ``fit`` and Lightning split them.

    The weights (and free network parameters) at ``lr``, the mixture's
    hyperparameters at ``mixture_lr``; no second group when ``hyper`` is empty.
    """
    groups: list[dict[str, Any]] = [{"params": weights, "lr": lr}]
    if hyper:
        groups.append({"params": hyper, "lr": mixture_lr})
    return adam(groups)


def make_scheduler(
    make: Callable[[torch.optim.Optimizer], Any] | None, optimizer: torch.optim.Optimizer
) -> Any:
    """``make(optimizer)``, checked to be a ``torch.optim.lr_scheduler`` scheduler (a
    ``step`` and a ``state_dict``): the ``lr_scheduler`` argument of :func:`bayes_sws.fit`
    and :func:`bayes_sws.zoo.training.train`, built for their optimiser (``None``: none)."""
    if make is None:
        return None
    scheduler = make(optimizer)
    if not (callable(getattr(scheduler, "step", None)) and hasattr(scheduler, "state_dict")):
        raise TypeError(
            "lr_scheduler must return a torch.optim.lr_scheduler scheduler of the optimizer "
            f"it is given, got {type(scheduler).__name__}"
        )
    return scheduler


def step_scheduler(scheduler: Any, loss: float) -> None:
    """Advance ``scheduler`` after an optimiser step: ``ReduceLROnPlateau`` with that
    step's ``loss``, any other scheduler with no argument; ``None`` does nothing."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(loss)
    elif scheduler is not None:
        scheduler.step()
