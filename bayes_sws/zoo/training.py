"""Plain PyTorch training and evaluation (no Pyro).

Used to pretrain a network before soft weight-sharing (Ullrich et al. 2017
start from a pretrained net) and by the Deep Compression baseline, which
fine-tunes with masked and shared gradients through the ``before_step`` and
``after_step`` hooks of :func:`train`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._progress import progress_bar
from ..optim import adam, make_scheduler, step_scheduler
from ..settings import steps_per_epoch
from ..validation import check_int, check_lr_scheduler, check_real, check_seed

__all__ = [
    "LOSSES",
    "LR_SCHEDULES",
    "TrainResult",
    "accuracy",
    "correct",
    "predict",
    "rmse",
    "steps_per_epoch",
    "train",
]

#: Loss names accepted by :func:`train`; both average over the mini-batch.
LOSSES: tuple[str, ...] = ("cross_entropy", "mse")
#: Learning-rate schedules :func:`train` knows by name (its ``lr_scheduler``).
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")

Hook = Callable[[nn.Module], None]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    losses : list of float
        Mini-batch loss at every optimiser step, in order.
    num_steps : int
        Number of optimiser steps taken (``num_epochs * steps_per_epoch(N, batch_size)``).
    """

    losses: list[float]
    num_steps: int


def _check_data(x: object, y: object | None = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"x has shape {tuple(x.shape)}; it needs at least one example")
    if x.is_floating_point() and not torch.isfinite(x).all():
        num_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"x has {num_bad} non-finite values (NaN or Inf); clean the data first")
    if y is None:
        return
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if y.dim() == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"x has {x.shape[0]} examples but y has shape {tuple(y.shape)}; "
            "they need the same first dimension"
        )
    if y.is_floating_point() and not torch.isfinite(y).all():
        num_bad = int((~torch.isfinite(y)).sum())
        raise ValueError(f"y has {num_bad} non-finite values (NaN or Inf); clean the data first")


def _check_batch_size(batch_size: object) -> int:
    return check_int("batch_size", batch_size, low=1)


def _device(net: nn.Module) -> torch.device:
    for tensor in net.parameters():
        return tensor.device
    return torch.device("cpu")


def _match_target(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targets ``(B,)`` for single-output regression nets ``(B, 1)``."""
    target = target.to(output.dtype)
    if output.dim() == 2 and output.shape[1] == 1 and target.dim() == 1:
        target = target.unsqueeze(1)
    if output.shape != target.shape:
        raise ValueError(
            f"network outputs have shape {tuple(output.shape)} but targets have "
            f"{tuple(target.shape)}; for the 'mse' loss they must match"
        )
    return target


def _resolve_loss(loss: str | LossFn, y: torch.Tensor) -> LossFn:
    if callable(loss):
        return loss
    if loss == "cross_entropy":
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(
                f"loss='cross_entropy' needs integer class labels, got y of dtype {y.dtype}; "
                "convert with y.long() or use loss='mse' for regression"
            )
        if y.dim() != 1:
            raise ValueError(
                f"loss='cross_entropy' needs labels of shape (N,), got {tuple(y.shape)}"
            )
        if int(y.min()) < 0:
            raise ValueError(
                f"class labels must be >= 0, got {int(y.min())}; relabel as 0 .. num_classes - 1"
            )
        return F.cross_entropy
    if loss == "mse":
        return lambda output, target: F.mse_loss(output, _match_target(output, target))
    raise ValueError(
        f"unknown loss {loss!r}; accepted names are {', '.join(repr(n) for n in LOSSES)}, "
        "or pass a callable (output, target) -> scalar"
    )


def train(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    loss: str | LossFn = "cross_entropy",
    num_epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 128,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool | None = None,
    before_step: Hook | None = None,
    after_step: Hook | None = None,
    lr_scheduler: Callable[[torch.optim.Optimizer], Any] | str | None = None,
) -> TrainResult:
    """Train ``net`` in place with Adam on mini-batches.

    Each epoch cuts a permutation of the examples, drawn from a local
    ``torch.Generator`` seeded with ``seed`` (the global RNG is neither used
    nor changed), into :func:`steps_per_epoch` full batches, as ``fit`` does:
    the last ``N mod batch_size`` examples of that permutation sit the epoch
    out. A run is reproducible from the seed and the network's initial weights.

    Parameters
    ----------
    net : torch.nn.Module
        The network; trained in place and returned to its previous
        train/eval mode afterwards.
    x, y : torch.Tensor
        Inputs ``(N, ...)`` and targets: integer labels ``(N,)`` for
        ``"cross_entropy"``, floats ``(N,)`` or ``(N, K)`` for ``"mse"``.
    loss : {"cross_entropy", "mse"} or callable, default "cross_entropy"
        Mean over the batch; a callable gets ``(output, target)``.
    num_epochs : int, default 10
        Passes over the data (at least 1).
    lr : float, default 1e-3
        Adam learning rate (> 0).
    batch_size : int, default 128
        Examples per step (at least 1; capped at N).
    weight_decay : float, default 0.0
        Adam's L2 penalty coefficient (>= 0).
    seed : int, default 0
        Seed of the mini-batch order.
    progress : bool, optional
        Show a progress bar; by default only on an interactive terminal.
    before_step : callable, optional
        ``before_step(net)`` runs after ``loss.backward()`` and before
        ``optimizer.step()``: the place to mask or share gradients.
    after_step : callable, optional
        ``after_step(net)`` runs after ``optimizer.step()``: the place to
        re-apply pruning masks or shared values.
    lr_scheduler : callable or {"constant", "cosine"}, optional
        ``lr_scheduler(optimizer)`` returning a ``torch.optim.lr_scheduler``
        scheduler, stepped after every optimiser step (``ReduceLROnPlateau`` with
        that step's loss), as in :func:`bayes_sws.fit`; or a name of
        :data:`LR_SCHEDULES`: ``"constant"`` (as ``None``), ``"cosine"``
        (``CosineAnnealingLR`` over all the steps of the run, ``lr`` annealed to zero).
        A rate that decays to the end leaves a network whose held-out error no
        longer swings with the last epochs' noise, as it does at a constant rate
        (BENCHMARKS.md, "what retraining alone gives").

    Returns
    -------
    TrainResult
        The loss of every step.

    Raises
    ------
    TypeError
        For an argument of the wrong type (``lr="0.1"``, ``seed=1.5``).
    ValueError
        For invalid values or data, and ``FloatingPointError`` when the
        loss becomes NaN or infinite (lower ``lr``).
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    _check_data(x, y)
    num_epochs = check_int("num_epochs", num_epochs, low=1)
    batch_size = _check_batch_size(batch_size)
    lr = check_real("lr", lr, low=0, low_open=True)
    weight_decay = check_real("weight_decay", weight_decay, low=0)
    seed = check_seed("seed", seed)
    _check_hooks(before_step, after_step, lr_scheduler)
    parameters = [p for p in net.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("net has no trainable parameters (none with requires_grad=True)")
    loss_fn = _resolve_loss(loss, y)
    checked_labels = loss != "cross_entropy"

    num_examples = x.shape[0]
    batch_size = min(batch_size, num_examples)
    per_epoch = steps_per_epoch(num_examples, batch_size)
    num_steps = num_epochs * per_epoch
    device = _device(net)
    optimizer = adam(parameters, lr=lr, weight_decay=weight_decay)
    scheduler = _scheduler(lr_scheduler, optimizer, num_steps)
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    was_training = net.training
    net.train()
    try:
        with progress_bar(num_steps, desc="train", progress=progress) as bar:
            for epoch in range(num_epochs):
                order = torch.randperm(num_examples, generator=generator)
                for start in range(0, per_epoch * batch_size, batch_size):
                    index = order[start : start + batch_size]
                    x_batch = x[index].to(device)
                    y_batch = y[index].to(device)
                    optimizer.zero_grad(set_to_none=True)
                    output = net(x_batch)
                    if not checked_labels:
                        _check_output_classes(y, output)
                        checked_labels = True
                    batch_loss = loss_fn(output, y_batch)
                    value = float(batch_loss.detach())
                    if not math.isfinite(value):
                        raise FloatingPointError(
                            f"training loss became {value} at step {len(losses)} "
                            f"(epoch {epoch}); lower lr (now {lr}) or check the data"
                        )
                    _backward_and_step(net, optimizer, batch_loss, before_step, after_step)
                    step_scheduler(scheduler, value)  # after every step, as fit's
                    losses.append(value)
                    bar.update(1)
                    if len(losses) % 10 == 0:
                        bar.set_postfix(loss=f"{value:.4g}", epoch=epoch)
    finally:
        net.train(was_training)
    return TrainResult(losses=losses, num_steps=len(losses))


def _check_hooks(before_step: Hook | None, after_step: Hook | None, lr_scheduler: Any) -> None:
    for hook_name, hook in (("before_step", before_step), ("after_step", after_step)):
        if hook is not None and not callable(hook):
            raise TypeError(f"{hook_name} must be a callable taking the net, got {hook!r}")
    if isinstance(lr_scheduler, str):
        if lr_scheduler not in LR_SCHEDULES:
            raise ValueError(
                f"lr_scheduler {lr_scheduler!r} is not a schedule train knows; give one of "
                f"{list(LR_SCHEDULES)} or a callable optimizer -> torch.optim.lr_scheduler "
                "scheduler"
            )
    else:
        check_lr_scheduler(lr_scheduler)


def _scheduler(lr_scheduler: Any, optimizer: torch.optim.Optimizer, num_steps: int) -> Any:
    """The scheduler :func:`train` steps (``None``: a constant rate)."""
    if lr_scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=num_steps)
    return make_scheduler(None if lr_scheduler == "constant" else lr_scheduler, optimizer)


def _check_output_classes(y: torch.Tensor, output: torch.Tensor) -> None:
    """The network has an output for every class label in ``y`` (checked on the first batch)."""
    largest = int(y.max())
    if output.dim() != 2 or largest >= output.shape[1]:
        raise ValueError(
            f"class label {largest} needs at least {largest + 1} outputs, "
            f"but the network's outputs have shape {tuple(output.shape)}"
        )


def _backward_and_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch_loss: torch.Tensor,
    before_step: Hook | None,
    after_step: Hook | None,
) -> None:
    """Backpropagate ``batch_loss`` and take one optimiser step, with the hooks around it."""
    batch_loss.backward()
    if before_step is not None:
        before_step(net)
    optimizer.step()
    if after_step is not None:
        after_step(net)


@torch.no_grad()
def predict(net: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Network outputs (logits or regression means) for ``x``, in eval mode, without gradients.

    Parameters
    ----------
    net : torch.nn.Module
        The network; its train/eval mode is restored afterwards.
    x : torch.Tensor
        Inputs ``(N, ...)``.
    batch_size : int, default 1024
        Examples per forward pass (bounds memory only).

    Returns
    -------
    torch.Tensor
        Outputs ``(N, ...)`` on the network's device.
    """
    _check_data(x)
    batch_size = _check_batch_size(batch_size)
    device = _device(net)
    was_training = net.training
    net.eval()
    try:
        outputs = [
            net(x[start : start + batch_size].to(device))
            for start in range(0, x.shape[0], batch_size)
        ]
    finally:
        net.train(was_training)
    return torch.cat(outputs)


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Fraction of examples whose largest output is the true class.

    Parameters
    ----------
    net : torch.nn.Module
        A classifier returning logits ``(N, num_classes)``.
    x : torch.Tensor
        Inputs ``(N, ...)``.
    y : torch.Tensor
        Integer labels ``(N,)``.
    batch_size : int, default 1024
        Examples per forward pass.

    Returns
    -------
    float
        Accuracy in ``[0, 1]``.
    """
    return float(correct(net, x, y, batch_size).sum()) / y.shape[0]


def correct(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024
) -> torch.Tensor:
    """Per example, whether its largest output is the true class (bool, on the CPU); the
    arguments as :func:`accuracy`'s, which is their mean."""
    _check_data(x, y)
    if y.is_floating_point() or y.dim() != 1:
        raise ValueError(
            f"accuracy needs integer labels of shape (N,), got dtype {y.dtype} and shape "
            f"{tuple(y.shape)}"
        )
    logits = predict(net, x, batch_size=batch_size)
    if logits.dim() != 2:
        raise ValueError(
            f"accuracy needs network outputs of shape (N, num_classes), got {tuple(logits.shape)}"
        )
    return logits.argmax(dim=1).cpu() == y.cpu()


def rmse(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Root mean squared error of the network outputs against ``y``.

    A single-output network ``(N, 1)`` is compared with targets ``(N,)``;
    otherwise shapes must match and the mean runs over all entries.
    """
    _check_data(x, y)
    output = predict(net, x, batch_size=batch_size).cpu()
    target = _match_target(output, y.cpu())
    return float(torch.sqrt(torch.mean((output.double() - target.double()) ** 2)))
