r"""Data-parallel SVI over ``torch.distributed`` processes (``torchrun``).

When :func:`bayes_sws.fit` runs in a process group of :math:`k > 1` processes
(``torch.distributed`` initialised, e.g. by ``torchrun --nproc_per_node=k -m
bayes_sws fit ...`` or by your own ``init_process_group``), every process
builds the same model and guide from the same seed and takes the same steps:

* **Tensor data.** Step :math:`s`'s global mini-batch :math:`S` of
  ``batch_size`` points (:func:`~bayes_sws.infer.svi.batch_indices`, the same
  on every process) is cut into :math:`k` consecutive shards
  :math:`S_1, \dots, S_k` (``torch.tensor_split``); process :math:`r` evaluates
  the loss :math:`\mathcal L_r` of its shard, the likelihood scaled by
  :math:`N / |S_r|`.
* **Data loaders.** Each process reads its own loader (give it a
  ``DistributedSampler``); its batch is its shard.

After the backward pass the loss and the gradients are averaged over the
processes with weights :math:`|S_r| / |S|` in one ``all_reduce`` of a flat
buffer (:func:`reduce_step`):

.. math::

    \sum_r \frac{|S_r|}{|S|}\,\nabla\mathcal L_r
      = \frac{N}{|S|}\sum_{n \in S} \nabla\big(-\log p(y_n \mid x_n, w)\big)
        + \nabla\big(\lambda\Omega(w) - \log p(\pi, \mu, \sigma)\big),

the gradient of one process on the whole batch :math:`S` (eq. 5.139 with its
mini-batch scale): the prior and hyperprior terms, whole on every process,
count once because the weights sum to one. Every process then holds the same
gradients (``all_reduce`` hands each the same sum), so the optimisers take
the same step and the weights and the mixture :math:`(\pi, \mu, \sigma)` stay
identical on every process, bit for bit. Losses, stop requests (Ctrl-C on any
process) and fault decisions use the reduced values, so every process makes
the same decisions. Only rank 0 writes checkpoints and results
(:func:`is_writer`).

This is the arithmetic of ``torch.nn.parallel.DistributedDataParallel``
(average of the processes' gradients) done with ``torch.distributed``'s own
collective on the parameters the optimiser steps, which live in Pyro's guide
rather than in one ``nn.Module``. With PyTorch Lightning use
:class:`bayes_sws.integrations.lightning.SWSLightningModule` and
``strategy="ddp"`` instead.
"""

from __future__ import annotations

import datetime
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "ProcessGroup",
    "any_process",
    "broadcast_module",
    "broadcast_object",
    "current",
    "init_from_environment",
    "is_writer",
    "leave",
    "reduce_step",
    "shard",
]

#: How long a process waits for the others at a collective (rank 0 may pretrain meanwhile).
TIMEOUT = datetime.timedelta(hours=6)
#: Backends whose ``monitored_barrier`` names the ranks that did not come (:func:`leave`);
#: the others wait at an asynchronous barrier polled until its deadline.
_MONITORED_BACKENDS = frozenset({"gloo"})


@dataclass(frozen=True)
class ProcessGroup:
    """This process's ``rank`` among ``size`` processes of the default ``torch.distributed`` group."""

    rank: int
    size: int


def current() -> ProcessGroup | None:
    """The default process group when ``torch.distributed`` runs more than one process, else ``None``."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    size = dist.get_world_size()
    return ProcessGroup(dist.get_rank(), size) if size > 1 else None


def is_writer() -> bool:
    """Whether this process writes files: a single process, or rank 0 of several."""
    group = current()
    return group is None or group.rank == 0


def init_from_environment(device: str | None = None) -> ProcessGroup | None:
    """Join the process group that ``torchrun`` describes in the environment.

    With ``WORLD_SIZE`` unset or 1 nothing happens (``None``). Otherwise the
    default group is initialised (once) from ``MASTER_ADDR``, ``MASTER_PORT``,
    ``RANK`` and ``WORLD_SIZE``: backend ``nccl`` for a CUDA ``device``
    (``"cuda"``, or ``"auto"`` where CUDA is available; each process then takes
    the GPU of its ``LOCAL_RANK`` as its current device, which ``"cuda"``
    means) and ``gloo`` otherwise.

    Parameters
    ----------
    device : str, optional
        The run's ``--device``.

    Raises
    ------
    ValueError
        ``device`` names one GPU (``"cuda:1"``) for several processes.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return None
    device = "cpu" if device is None else device.strip()
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if device not in ("cuda", "auto"):
            raise ValueError(
                f"--device {device} names one GPU, but torchrun starts {size} processes; "
                "give --device cuda and each process takes the GPU of its LOCAL_RANK"
            )
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return current()


def leave(*, wait: bool = True, timeout: float = 600.0) -> None:
    """Leave the process group joined by :func:`init_from_environment`, if any.

    Every process of a ``torchrun`` calls it on its way out, after its last
    collective: the group's connections and threads are closed while the
    interpreter is still whole. (Left to interpreter shutdown, gloo's threads
    could be destroyed while still joinable, and a process that had finished
    its work then died with ``terminate called without an active exception``.)
    With ``wait`` (the way out of a run that went well), the processes first
    meet at a barrier, so that none closes its connections while another is
    still using them (a follower that left while the leader was still writing
    the run died the same way, now and then, on a loaded machine). The
    barrier waits at most ``timeout`` seconds (long enough for the leader to
    write a run's files and plots), then warns and the group is destroyed all
    the same: under gloo a ``monitored_barrier``, whose warning names the ranks
    that did not come; under other backends (NCCL) an asynchronous barrier
    polled until the deadline, whose warning gives the number of processes.
    ``wait=False`` is for a process on its way out with an error: the others
    may never arrive. A no-op without a group.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if wait and dist.get_world_size() > 1:
            if dist.get_backend() in _MONITORED_BACKENDS:
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=timeout))
            else:
                _polled_barrier(timeout)
    except RuntimeError as error:  # a process that never came: say so, leave anyway
        warnings.warn(f"leaving the process group without the others: {error}", stacklevel=2)
    finally:
        dist.destroy_process_group()


def _polled_barrier(timeout: float, poll: float = 0.05) -> None:
    """A barrier that waits at most ``timeout`` seconds on any backend: started
    asynchronously and polled (``Work.is_completed`` does not block, where NCCL's
    ``wait`` only orders the GPU stream); a ``RuntimeError`` past the deadline."""
    work = dist.barrier(async_op=True)
    if work is None:  # torch's contract: a process outside the group has nothing to wait for
        return
    deadline = time.monotonic() + timeout
    while not work.is_completed():
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"rank {dist.get_rank()}: not all {dist.get_world_size()} processes reached "
                f"the barrier within {timeout:g} s"
            )
        time.sleep(poll)


def shard(indices: Tensor | None, num_data: int, group: ProcessGroup, device=None) -> Tensor:
    """This process's consecutive part of a global batch (``None``: all ``num_data`` points).

    Raises
    ------
    ValueError
        The batch has fewer points than there are processes.
    """
    full = torch.arange(num_data, device=device) if indices is None else indices
    if full.shape[0] < group.size:
        raise ValueError(
            f"a batch of {full.shape[0]} data points cannot be shared by {group.size} "
            f"processes; use batch_size >= {group.size}"
        )
    return torch.tensor_split(full, group.size)[group.rank]


def reduce_step(loss: Tensor, params: list[Tensor], count: int) -> Tensor:
    """Average ``loss`` and the gradients of ``params`` over the processes, weighted by ``count``.

    ``count`` is the number of data points in this process's batch; the
    gradients are replaced in place by :math:`\\sum_r c_r g_r / \\sum_r c_r`
    and the same average of the losses is returned (one ``all_reduce`` of one
    flat buffer). Parameters without a gradient are left out (the same ones on
    every process, which run the same program).
    """
    grads = [p.grad for p in params if p.grad is not None]
    dtype = loss.dtype
    for grad in grads:
        dtype = torch.promote_types(dtype, grad.dtype)
    parts = [g.reshape(-1).to(dtype) for g in grads]
    flat = torch.cat([*parts, loss.detach().reshape(1).to(dtype), loss.new_ones(1, dtype=dtype)])
    flat.mul_(count)
    dist.all_reduce(flat)
    flat = flat[:-1] / flat[-1]
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()
    return flat[-1].to(loss.dtype)


def any_process(flag: bool, device=None) -> bool:
    """Whether ``flag`` is true on any process (e.g. a stop request on one of them)."""
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def broadcast_object(value: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``value`` on every process (pickled; e.g. a checkpoint's state)."""
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Overwrite ``module``'s parameters and buffers in place with rank ``src``'s."""
    with torch.no_grad():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=src)
