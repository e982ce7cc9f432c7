"""Deep Compression (Han, Mao & Dally, ICLR 2016): the baseline soft weight-sharing beats.

The three-stage pipeline users would pick instead of a learned prior:

1. **Magnitude pruning**: in every chosen layer the given fraction of weights
   with the smallest ``|w|`` is set to zero, then the network is retrained with
   the pruned weights held at zero (their gradients masked before each step,
   the mask re-applied after it).
2. **Weight sharing**: the remaining weights of each layer are clustered by 1-D
   k-means with *linear* initialisation, centroids evenly spaced over
   ``[min w, max w]`` (Han et al., Sec. 3.2: it keeps the rare large weights,
   which matter most, better than density-based or random initialisation), and
   every weight takes its centroid's value.
3. **Centroid fine-tuning** (:func:`bayes_sws.compress.finetune_codebook`): the
   gradient of a centroid is the sum of the gradients of its weights (Han et
   al., Eq. 3), assignments and the pruning mask fixed. Soft weight-sharing's
   pipeline can run the same step after quantisation (``finetune_epochs``).

The result is stored and counted by :func:`bayes_sws.compress.storage_report`,
the same accounting as soft weight-sharing, so the two compare on equal terms.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from ..validation import check_int
from ..zoo.training import TrainResult, train
from . import surgery
from .codebook import finetune_codebook
from .params import check_param_names
from .storage import StorageReport, stored_network
from .surgery import UnitPruning, check_prune_units

if TYPE_CHECKING:
    from .pipeline import CompressionResult

__all__ = [
    "BaselineResult",
    "deep_compression",
    "kmeans_1d_linear_init",
    "kmeans_after_pruning",
    "magnitude_prune_masks",
]


@dataclass(frozen=True)
class BaselineResult:
    """What :func:`deep_compression` returns.

    Attributes
    ----------
    net : nn.Module
        The pruned, weight-shared and fine-tuned copy of the input network.
    param_names : tuple of str
        The compressed parameters.
    masks : dict of str to torch.BoolTensor
        ``True`` where a weight survived pruning (same shape as the parameter).
    prune_fractions : dict of str to float
        Fraction of each parameter's entries pruned (``round(f * n) / n``).
    codebooks : dict of str to torch.Tensor
        Fine-tuned centroids of each layer, shape ``(K,)`` with ``K <= num_clusters``.
    assignments : dict of str to torch.LongTensor
        Centroid index of every weight, ``-1`` where pruned.
    prune_training, share_training : TrainResult or None
        Losses of the two fine-tuning stages (``None`` when given 0 epochs).
    storage : StorageReport
        :func:`~bayes_sws.compress.storage_report` of ``stored_net``.
    unit_pruning : UnitPruning or None
        With ``prune_units``: the hidden units held at their mean output after k-means.
    stored_net : nn.Module or None
        The network as stored and counted: ``net``, or ``net`` without its dead
        hidden units (``remove_dead_units=True``), its hidden units in the order that
        takes the fewest bits (``reorder_units=True``).
    """

    net: nn.Module
    param_names: tuple[str, ...]
    masks: dict[str, torch.Tensor]
    prune_fractions: dict[str, float]
    codebooks: dict[str, torch.Tensor]
    assignments: dict[str, torch.Tensor]
    prune_training: TrainResult | None
    share_training: TrainResult | None
    storage: StorageReport
    stored_net: nn.Module | None = None
    unit_pruning: UnitPruning | None = None


def _per_layer(value, names: Sequence[str], label: str) -> dict:
    if isinstance(value, Mapping):
        missing = [n for n in names if n not in value]
        unknown = sorted(set(value) - set(names))
        if missing or unknown:
            raise ValueError(
                f"{label} as a mapping needs exactly the compressed parameters {list(names)}; "
                f"missing {missing}, unknown {unknown}"
            )
        return {n: value[n] for n in names}
    return dict.fromkeys(names, value)


def magnitude_prune_masks(
    net: nn.Module, prune_fraction: float | Mapping[str, float], param_names: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Keep-masks that prune exactly ``round(f * n)`` smallest-magnitude entries per layer.

    Ties in ``|w|`` are broken by position (a stable sort), so the count is exact
    even when many weights are equal (e.g. already zero).
    """
    fractions = _per_layer(prune_fraction, param_names, "prune_fraction")
    params = dict(net.named_parameters())
    masks = {}
    for name, fraction in fractions.items():
        if not (isinstance(fraction, (int, float)) and 0.0 <= fraction < 1.0):
            raise ValueError(
                f"prune fraction of {name!r} must be a number in [0, 1); got {fraction!r}"
            )
        flat = params[name].detach().cpu().reshape(-1).abs().numpy()
        num_pruned = math.floor(fraction * flat.size + 0.5)
        order = np.argsort(flat, kind="stable")
        keep = np.ones(flat.size, dtype=bool)
        keep[order[:num_pruned]] = False
        masks[name] = torch.from_numpy(keep).reshape(params[name].shape)
    return masks


def kmeans_1d_linear_init(
    values: np.ndarray, num_clusters: int, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """1-D k-means with Han et al.'s linear initialisation.

    Centroids start evenly spaced over ``[min, max]`` of ``values``; Lloyd
    iterations by :class:`sklearn.cluster.KMeans` (one run, no random restarts).
    At most as many clusters as there are distinct values.

    Returns
    -------
    centroids : np.ndarray, shape (K,)
        Sorted ascending.
    labels : np.ndarray of int, shape (len(values),)
        Index into ``centroids`` of each value.
    """
    from sklearn.cluster import KMeans

    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    num_clusters = min(int(num_clusters), np.unique(values).size)
    if num_clusters == 1:
        return np.array([values.mean()]), np.zeros(values.size, dtype=np.int64)
    init = np.linspace(values.min(), values.max(), num_clusters)[:, None]
    kmeans = KMeans(n_clusters=num_clusters, init=init, n_init=1, random_state=seed)
    labels = kmeans.fit_predict(values[:, None])
    # keep only used clusters, in ascending order of their centroid
    used = np.unique(labels)
    centroids = np.array([values[labels == k].mean() for k in used])
    order = np.argsort(centroids)
    relabel = np.empty(used.max() + 1, dtype=np.int64)
    relabel[used[order]] = np.arange(used.size)
    return centroids[order], relabel[labels]


def _masked_retraining(
    net: nn.Module,
    masks: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    num_epochs: int,
    train_kwargs: dict[str, Any],
) -> TrainResult | None:
    """Stage 1: zero the pruned weights, then retrain with them held at zero.

    ``masks`` are on the parameters' device; the pruned weights' gradients are
    masked before each step and the mask re-applied after it. ``None`` for 0 epochs.
    """
    params = dict(net.named_parameters())

    def apply_masks(module: nn.Module) -> None:
        with torch.no_grad():
            for n, mask in masks.items():
                params[n].mul_(mask)

    def mask_gradients(module: nn.Module) -> None:
        for n, mask in masks.items():
            grad = params[n].grad
            if grad is not None:
                grad.mul_(mask)

    apply_masks(net)
    if num_epochs == 0:
        return None
    return train(
        net,
        x,
        y,
        num_epochs=num_epochs,
        before_step=mask_gradients,
        after_step=apply_masks,
        **train_kwargs,
    )


def _kmeans_assignments(
    net: nn.Module,
    masks: Mapping[str, torch.Tensor],
    clusters: Mapping[str, int],
    seed: int,
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Stage 2: k-means over each layer's surviving weights (``masks`` on their device).

    Returns each weight's centroid index (``-1`` where pruned) and each layer's
    number of centroids.
    """
    params = dict(net.named_parameters())
    assign: dict[str, torch.Tensor] = {}
    num_centroids: dict[str, int] = {}
    with torch.no_grad():
        for n, num in clusters.items():
            flat = params[n].reshape(-1)
            keep = torch.nonzero(masks[n].reshape(-1)).squeeze(1)
            centroids, lab = kmeans_1d_linear_init(
                flat[keep].detach().cpu().numpy(), num, seed=seed
            )
            full = torch.full((flat.numel(),), -1, dtype=torch.long, device=flat.device)
            full[keep] = torch.as_tensor(lab, device=flat.device)
            assign[n] = full.reshape(params[n].shape)
            num_centroids[n] = len(centroids)
    return assign, num_centroids


def _cluster_counts(num_clusters: int | Mapping[str, int], names: Sequence[str]) -> dict:
    """Shared values per compressed parameter, each checked to be a positive integer."""
    return {
        name: check_int(f"num_clusters of {name!r}", k, low=1, noun="a positive integer")
        for name, k in _per_layer(num_clusters, names, "num_clusters").items()
    }


def deep_compression(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    prune_fraction: float | Mapping[str, float],
    num_clusters: int | Mapping[str, int] = 32,
    finetune_epochs: int = 5,
    centroid_epochs: int | None = None,
    lr: float = 1e-3,
    batch_size: int = 128,
    weight_decay: float = 0.0,
    loss: str = "cross_entropy",
    seed: int = 0,
    param_names: Sequence[str] | None = None,
    index_bits: int | Mapping[str, int] | None = None,
    remove_dead_units: bool = False,
    progress: bool | None = None,
    position_coding: Literal["fixed", "rice"] = "fixed",
    reorder_units: bool = False,
    prune_units: float | None = None,
) -> BaselineResult:
    """Prune, share weights by k-means, fine-tune the centroids; count the bits.

    Parameters
    ----------
    net : nn.Module
        A trained network; deep-copied, never modified.
    x, y : torch.Tensor
        Training data for the fine-tuning (see :func:`bayes_sws.zoo.training.train`).
    prune_fraction : float or mapping name -> float
        Share of each layer's weights pruned, in ``[0, 1)``: one number for every
        layer or one per compressed parameter. Exactly ``round(f * n)`` entries.
    num_clusters : int or mapping name -> int, default 32
        Shared values per layer (Han et al. used 32 = 5 bits for dense layers,
        256 for convolutions).
    finetune_epochs : int, default 5
        Epochs of masked retraining after pruning (0 skips it).
    centroid_epochs : int, optional
        Epochs of centroid fine-tuning; defaults to ``finetune_epochs`` (0 skips it).
    lr, batch_size, weight_decay, loss, seed, progress
        Passed to :func:`bayes_sws.zoo.training.train` for both stages.
    param_names : sequence of str, optional
        Parameters to compress; default: all with ``ndim >= 2`` (the weights).
        Others (biases) train freely and are stored at 32 bits.
    index_bits, position_coding
        Passed to :func:`~bayes_sws.compress.storage_report`.
    remove_dead_units, reorder_units : bool
        Store the network without the hidden units pruning left unused
        (:func:`~bayes_sws.compress.remove_dead_units`), and its hidden units in the
        order that takes the fewest bits (:func:`~bayes_sws.compress.storage_unit_orders`),
        as soft weight-sharing's pipeline can; off by default.
    prune_units : float, optional
        After the centroids are fine-tuned: hold the hidden units the training loss
        needs least at their mean output, within this budget (nats a point;
        :func:`~bayes_sws.compress.prune_units`), then fine-tune the centroids again,
        as soft weight-sharing's pipeline does; needs ``remove_dead_units``. Default
        ``None``: off.
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    check_prune_units(prune_units, remove_dead_units)
    names = check_param_names(net, param_names)
    clusters = _cluster_counts(num_clusters, names)
    centroid_epochs = finetune_epochs if centroid_epochs is None else centroid_epochs
    finetune_epochs = check_int("finetune_epochs", finetune_epochs, low=0)
    centroid_epochs = check_int("centroid_epochs", centroid_epochs, low=0)
    train_kwargs: dict[str, Any] = {
        "loss": loss,
        "lr": lr,
        "batch_size": batch_size,
        "weight_decay": weight_decay,
        "seed": seed,
        "progress": progress,
    }

    compressed = copy.deepcopy(net)
    masks = magnitude_prune_masks(compressed, prune_fraction, names)
    device = next(iter(compressed.parameters())).device
    dev_masks = {n: m.to(device) for n, m in masks.items()}
    # 1. prune and retrain with the mask held; 2. k-means weight sharing on the survivors
    prune_training = _masked_retraining(compressed, dev_masks, x, y, finetune_epochs, train_kwargs)
    assign, num_centroids = _kmeans_assignments(compressed, dev_masks, clusters, seed)
    # 3. tie every kept weight to its centroid and fine-tune the centroids
    # (Han et al., Eq. 3; the same step soft weight-sharing's pipeline uses)
    tuned = finetune_codebook(compressed, assign, x, y, num_epochs=centroid_epochs, **train_kwargs)
    pruning = None
    if prune_units is not None:  # as the pipeline: the units least needed go, then tune again
        pruning = surgery.prune_units(compressed, x, y, max_loss_increase=prune_units, loss=loss)
        compressed, assign = pruning.net, pruning.prune_assignments(assign)
        tuned = finetune_codebook(
            compressed, assign, x, y, num_epochs=centroid_epochs, **train_kwargs
        )
    codebooks = {n: tuned.codebooks[n][: num_centroids[n]] for n in names}
    stored, storage = stored_network(
        compressed,
        param_names=names,
        index_bits=index_bits,
        remove_dead=remove_dead_units,
        position_coding=position_coding,
        reorder_units=reorder_units,
    )

    return BaselineResult(
        net=compressed,
        param_names=tuple(names),
        masks=masks,
        prune_fractions={n: float((~m).sum()) / m.numel() for n, m in masks.items()},
        codebooks=codebooks,
        assignments={n: assign[n].cpu() for n in names},
        prune_training=prune_training,
        share_training=tuned.training,
        storage=storage,
        stored_net=stored,
        unit_pruning=pruning,
    )


def kmeans_after_pruning(
    result: CompressionResult,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_clusters: int | Mapping[str, int] = 8,
    centroid_epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 128,
    loss: str = "cross_entropy",
    seed: int = 0,
    remove_dead_units: bool = False,
    progress: bool | None = None,
    position_coding: Literal["fixed", "rice"] = "fixed",
    reorder_units: bool = False,
) -> BaselineResult:
    """Soft weight-sharing prunes, Deep Compression shares: its stages 2 and 3 on ``result``.

    ``result`` is a :func:`~bayes_sws.compress.pipeline.soft_weight_sharing` result. Its
    retrained network (before the mixture's quantisation) is pruned by magnitude to the
    per-layer sparsity of ``result``'s stored network (``result.layers``: the weights the zero
    component took, and with ``remove_dead_units`` also those of the hidden units that left
    unused); each layer's survivors are shared by k-means (``num_clusters`` centroids per
    layer, linear initialisation) and the centroids fine-tuned for ``centroid_epochs``
    (Han et al.'s Eq. 3). There is no masked retraining: the prior has already trained the
    network around its zeros. Counted and stored as :func:`deep_compression` does.

    Why: a mixture of few components prunes harder at the same λ, but its few shared
    values quantise badly; per-layer k-means keeps the pruning and quantises finely.
    Fashion-MNIST LeNet-300-100 with 5 components and 8 values a layer: 0.3 points better
    than the 17-component recipe at 87× on the validation split, but not on test
    (``benchmarks/kmeans_after_pruning.py``, BENCHMARKS.md).
    """
    names = list(result.config["param_names"])
    params = dict(result.net.named_parameters())
    stored = {layer["name"]: layer["nonzero_fraction"] for layer in result.layers}
    prune = {}
    for name in names:
        numel = params[name].numel()
        zeros = numel - round(stored[name] * numel)
        prune[name] = min(zeros, numel - 1) / numel  # keep one weight of a layer pruned whole
    return deep_compression(
        result.retrained_net,
        x,
        y,
        prune_fraction=prune,
        num_clusters=num_clusters,
        finetune_epochs=0,
        centroid_epochs=centroid_epochs,
        lr=lr,
        batch_size=batch_size,
        loss=loss,
        seed=seed,
        param_names=names,
        remove_dead_units=remove_dead_units,
        progress=progress,
        position_coding=position_coding,
        reorder_units=reorder_units,
    )
