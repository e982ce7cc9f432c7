"""Fine-tuning the shared values of a hard-shared network (Han, Mao & Dally 2016, Eq. 3).

Assignments stay fixed; the gradient of each shared value is the sum of its
weights' gradients. The training loop is :func:`bayes_sws.zoo.training.train`
with two hooks (share the gradients before each step, re-tie the weights after).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..validation import check_int
from ..zoo.training import train

__all__ = ["CodebookFinetune", "finetune_codebook"]


@dataclass(frozen=True)
class CodebookFinetune:
    """What :func:`finetune_codebook` returns.

    Attributes
    ----------
    codebooks : dict of str to torch.Tensor
        Per parameter, the shared value of every cluster index ``0 … K-1`` after
        fine-tuning (``0`` for an index no weight uses).
    training : TrainResult or None
        The losses (``None`` when ``num_epochs == 0``).
    """

    codebooks: dict[str, torch.Tensor]
    training: Any


def _kept_labels(
    assignments: Mapping[str, torch.Tensor], params: Mapping[str, nn.Parameter]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, int]]:
    """Per parameter, checked: the cluster index of each kept weight, the kept weights'
    flat positions, and the number of cluster indices (the largest plus one)."""
    unknown = sorted(set(assignments) - set(params))
    if unknown:
        raise ValueError(f"assignments name parameters the network does not have: {unknown}")
    labels: dict[str, torch.Tensor] = {}
    kept: dict[str, torch.Tensor] = {}
    sizes: dict[str, int] = {}
    for name, a in assignments.items():
        a = torch.as_tensor(a)
        if a.shape != params[name].shape or a.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                f"assignments[{name!r}] must be an integer tensor of shape "
                f"{tuple(params[name].shape)}, got {a.dtype} of shape {tuple(a.shape)}"
            )
        if a.numel() and int(a.min()) < -1:
            raise ValueError(f"assignments[{name!r}] holds {int(a.min())}; use -1 for pruned")
        flat = a.reshape(-1).to(device=params[name].device, dtype=torch.long)
        kept[name] = torch.nonzero(flat >= 0).squeeze(1)
        labels[name] = flat[kept[name]]
        sizes[name] = int(flat.max()) + 1 if flat.numel() else 0
    return labels, kept, sizes


def _scatter_into(tensor: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> None:
    """``tensor`` (in place, in any memory layout): ``values`` at flat ``index``, 0 elsewhere.

    ``index`` counts in the tensor's logical (row-major) order; a contiguous tensor is
    written through its flat view, any other layout (channels-last) through a copy.
    """
    if tensor.is_contiguous():
        flat = tensor.view(-1)
        flat.zero_()
        flat[index] = values.to(tensor.dtype)
        return
    flat = torch.zeros(tensor.numel(), dtype=tensor.dtype, device=tensor.device)
    flat[index] = values.to(tensor.dtype)
    tensor.copy_(flat.view(tensor.shape))


def finetune_codebook(
    net: nn.Module,
    assignments: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_epochs: int,
    lr: float = 1e-3,
    batch_size: int = 128,
    loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "cross_entropy",
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool | None = None,
) -> CodebookFinetune:
    """Fine-tune the shared values of a hard-shared network in place (Han et al. 2016, Eq. 3).

    Assignments are fixed: ``assignments[name]`` (same shape as the parameter)
    holds each weight's cluster index within that parameter, ``-1`` where the
    weight is pruned (held at exactly 0). The gradient of a shared value is the
    sum of the gradients of its weights; each step every weight receives its
    cluster's summed gradient, and Adam being element-wise, tied weights get
    identical updates, exactly Adam on the shared value itself. After each step
    the weights are re-tied to their cluster mean (against rounding) and pruned
    weights reset to 0. Parameters not in ``assignments`` (biases) train freely.
    The weights are tied to their cluster means before the first step, so a
    network that is not yet hard-shared becomes so.

    Used after k-means by :func:`bayes_sws.compress.baseline.deep_compression` and after
    :func:`quantize` by :func:`bayes_sws.compress.pipeline.soft_weight_sharing`.
    """
    num_epochs = check_int("num_epochs", num_epochs, low=0)
    params = dict(net.named_parameters())
    labels, kept, sizes = _kept_labels(assignments, params)

    def cluster_sum(name: str, values: torch.Tensor) -> torch.Tensor:
        sums = torch.zeros(sizes[name], dtype=torch.float64, device=values.device)
        return sums.index_add_(0, labels[name], values.to(torch.float64))

    def cluster_means(name: str) -> torch.Tensor:
        flat = params[name].detach().reshape(-1)
        counts = torch.bincount(labels[name], minlength=sizes[name]).to(torch.float64)
        return cluster_sum(name, flat[kept[name]]) / counts.clamp_min(1)

    def share_gradients(module: nn.Module) -> None:
        for name in labels:
            grad = params[name].grad
            if grad is None:
                continue
            summed = cluster_sum(name, grad.reshape(-1)[kept[name]])
            _scatter_into(grad, kept[name], summed[labels[name]])

    def retie(module: nn.Module) -> None:
        with torch.no_grad():
            for name in labels:
                means = cluster_means(name)
                _scatter_into(params[name], kept[name], means[labels[name]])

    retie(net)
    training = None
    if num_epochs > 0:
        training = train(
            net,
            x,
            y,
            loss=loss,
            num_epochs=num_epochs,
            lr=lr,
            batch_size=batch_size,
            weight_decay=weight_decay,
            seed=seed,
            progress=progress,
            before_step=share_gradients,
            after_step=retie,
        )
    codebooks = {name: cluster_means(name).to(params[name].dtype).cpu() for name in labels}
    return CodebookFinetune(codebooks=codebooks, training=training)
