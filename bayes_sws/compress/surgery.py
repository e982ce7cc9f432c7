"""Network surgery: remove the hidden units a pruned network no longer uses.

An exact, function-preserving clean-up (:func:`remove_dead_units`): a unit nobody
reads goes, and a unit with no inputs left has its constant output folded into the
next layer's bias first. :func:`bayes_sws.compress.storage.stored_network` counts
the smaller network against the full one's size.

:func:`permute_units` puts the hidden units of a network in another order (the
same function: each unit's weights and bias move with it, and the next layer
reads it where it now is). :func:`hidden_unit_layers` lists the layers whose
units can be so permuted or removed.

:func:`prune_units` is not exact: it holds the hidden units the training loss needs
least at their mean output (mean replacement), within a loss budget, so that
:func:`remove_dead_units` can then remove them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from ..validation import check_int, check_real, check_seed
from ..zoo.nets import ACTIVATIONS, same_memory_format

__all__ = [
    "DeadUnitRemoval",
    "HiddenUnits",
    "UnitPruning",
    "hidden_unit_layers",
    "permute_units",
    "prune_units",
    "remove_dead_units",
]


_Index = TypeVar("_Index", torch.Tensor, np.ndarray)  # an index of units, torch or numpy
_Unit = TypeVar("_Unit")  # a unit as the greedy search sees it

#: Parameter-free element-wise modules a dead unit's constant output passes through: the
#: activations :func:`bayes_sws.zoo.nets.mlp` builds, and a few more.
_ELEMENTWISE = (*ACTIVATIONS.values(), nn.ReLU6, nn.Hardtanh, nn.Identity)


@dataclass(frozen=True)
class DeadUnitRemoval:
    """What :func:`remove_dead_units` returns.

    Attributes
    ----------
    net : nn.Sequential
        The smaller network; it computes the same function (up to float rounding
        of the folded biases) and keeps the parameter names of the original.
    kept : dict of str to torch.Tensor
        Per producing module (``"0"``), the indices of the output units kept.
    removed : dict of str to int
        Per producing module, how many output units were removed.
    """

    net: nn.Sequential
    kept: dict[str, torch.Tensor]
    removed: dict[str, int]

    @property
    def num_removed(self) -> int:
        return sum(self.removed.values())


def unit_columns(units: _Index, per_unit: int) -> _Index:
    """The columns that read ``units`` (a torch or numpy index) when each unit is read by
    ``per_unit`` consecutive columns: unit ``u``'s are ``u * per_unit ... u * per_unit +
    per_unit - 1``, unit after unit, in the order of ``units``."""
    if isinstance(units, torch.Tensor):
        offsets: Any = torch.arange(per_unit, device=units.device)
    else:
        offsets = np.arange(per_unit)
    return (units[:, None] * per_unit + offsets).reshape(-1)


@dataclass
class _UnitPair:
    """A module whose output units feed the next weighted module, through ``chain``."""

    name: str
    producer: nn.Linear | nn.Conv2d
    chain: list[nn.Module]
    consumer: nn.Linear | nn.Conv2d
    block: int  # consumer input columns per producer unit (> 1 after a Flatten)

    def consumer_weights(self) -> torch.Tensor:
        """Consumer weights grouped by producer unit: (units, consumer outputs, rest)."""
        w = self.consumer.weight
        units = self.producer.weight.shape[0]
        if isinstance(self.consumer, nn.Linear):
            return w.reshape(w.shape[0], units, self.block).transpose(0, 1)
        return w.transpose(0, 1).reshape(units, w.shape[0], -1)

    def consumer_columns(self, units: torch.Tensor) -> torch.Tensor:
        """Indices along the consumer weight's second axis read from these producer units."""
        return unit_columns(units, self.block) if isinstance(self.consumer, nn.Linear) else units

    def can_fold(self) -> bool:
        """A constant input map stays constant through the consumer (no zero padding)."""
        if self.consumer.bias is None:
            return False
        return isinstance(self.consumer, nn.Linear) or all(
            p == 0 for p in _as_tuple(self.consumer.padding)
        )

    def constant_outputs(self) -> torch.Tensor:
        """Each unit's output when all its weights are zero: the chain applied to its bias."""
        bias = self.producer.bias
        x = (
            self.producer.weight.new_zeros(self.producer.weight.shape[0])
            if bias is None
            else bias.detach().clone()
        )
        x = x.reshape(1, -1)
        for module in self.chain:
            if isinstance(module, _ELEMENTWISE):
                x = module(x)
        return x.reshape(-1)


def _as_tuple(value: Any) -> tuple:
    return tuple(value) if isinstance(value, tuple | list) else (value,)


def _passes_constants(module: nn.Module, producer: nn.Module, flatten: bool) -> bool:
    """Whether ``module`` may stand between ``producer`` and the next weighted module.

    An element-wise module always; after a convolution, max pooling (the max of a
    constant map is that constant), unpadded average pooling, and one full ``Flatten``
    (``flatten``: one came already). Anything else (normalisation, dropout, ...) does not.
    """
    if isinstance(module, _ELEMENTWISE):
        return True
    if not isinstance(producer, nn.Conv2d):
        return False
    if isinstance(module, nn.MaxPool2d):
        return True
    if isinstance(module, nn.AvgPool2d):
        return all(p == 0 for p in _as_tuple(module.padding))
    return (
        isinstance(module, nn.Flatten)
        and module.start_dim == 1
        and module.end_dim == -1
        and not flatten
    )


def _paired(
    name: str,
    producer: nn.Linear | nn.Conv2d,
    chain: list[nn.Module],
    consumer: nn.Linear | nn.Conv2d,
    flatten: bool,
) -> _UnitPair | None:
    """The pair of ``producer`` and the next weighted module, or ``None`` where units do not
    map onto the consumer's inputs (grouped convolution, a dense producer before a
    convolution, a convolution before a dense layer without a ``Flatten``)."""
    if isinstance(consumer, nn.Conv2d) and (
        consumer.groups != 1 or isinstance(producer, nn.Linear) or flatten
    ):
        return None
    if isinstance(consumer, nn.Linear) and isinstance(producer, nn.Conv2d) and not flatten:
        return None
    units = producer.weight.shape[0]
    fan_in = consumer.weight.shape[1]
    block = fan_in // units if flatten else 1
    if block * units != fan_in:
        return None
    return _UnitPair(name, producer, chain, consumer, block)


def _unit_pairs(net: nn.Sequential) -> list[_UnitPair]:
    modules = list(net.named_children())
    pairs = []
    for i, (name, producer) in enumerate(modules):
        if not isinstance(producer, nn.Linear | nn.Conv2d):
            continue
        if isinstance(producer, nn.Conv2d) and producer.groups != 1:
            continue
        chain: list[nn.Module] = []
        flatten = False
        for _, module in modules[i + 1 :]:
            if isinstance(module, nn.Linear | nn.Conv2d):
                pair = _paired(name, producer, chain, module, flatten)
                if pair is not None:
                    pairs.append(pair)
                break
            if not _passes_constants(module, producer, flatten):
                break
            flatten = flatten or isinstance(module, nn.Flatten)
            chain.append(module)
    return pairs


def _keep_units(pair: _UnitPair, keep: torch.Tensor) -> None:
    """Drop the producer's output units not in ``keep`` and the consumer's matching inputs."""
    producer, consumer = pair.producer, pair.consumer
    producer.weight = nn.Parameter(
        same_memory_format(producer.weight.detach()[keep].clone(), producer.weight)
    )
    if producer.bias is not None:
        producer.bias = nn.Parameter(producer.bias.detach()[keep].clone())
    columns = pair.consumer_columns(keep)
    consumer.weight = nn.Parameter(
        same_memory_format(consumer.weight.detach()[:, columns].clone(), consumer.weight)
    )
    if isinstance(consumer, nn.Linear):
        consumer.in_features = int(columns.numel())
    else:
        consumer.in_channels = int(keep.numel())
    if isinstance(producer, nn.Linear):
        producer.out_features = int(keep.numel())
    else:
        producer.out_channels = int(keep.numel())


def remove_dead_units(net: nn.Module) -> DeadUnitRemoval:
    """Remove hidden units a pruned network no longer uses; the function stays the same.

    In a :class:`torch.nn.Sequential` of ``Linear``/``Conv2d`` layers joined by
    element-wise activations (and, between convolutions, pooling or a
    ``Flatten`` before a dense layer), a hidden unit is **dead**

    * when every weight reading it in the next layer is zero: its output is
      never used, so the unit (its weights and bias) goes; or
    * when all of its own weights are zero: its output is the constant
      ``activation(bias)``, which is added to the next layer's bias (exact
      for a dense next layer or an unpadded convolution), after which the unit
      is unused and goes.

    Removing units can kill others, so the rules repeat until nothing changes; at
    least one unit per layer is kept. Pruning by soft weight-sharing leaves many
    such units (whole rows of the first dense layer), which cost filler entries
    in the sparse layout; this is the structured clean-up a user would apply
    before deployment. Count the smaller network's bits with
    ``storage_report(removal.net, reference=net)`` so its rate is still relative
    to the original network.

    Parameters
    ----------
    net : nn.Sequential
        A (pruned) network; it is deep-copied, never modified.
    """
    if not isinstance(net, nn.Sequential):
        raise TypeError(
            f"remove_dead_units needs an nn.Sequential network, got {type(net).__name__}"
        )
    out = copy.deepcopy(net)
    pairs = _unit_pairs(out)
    kept = {pair.name: torch.arange(pair.producer.weight.shape[0]) for pair in pairs}
    sizes = {pair.name: int(pair.producer.weight.shape[0]) for pair in pairs}
    changed = True
    with torch.no_grad():
        while changed:
            changed = False
            for pair in pairs:
                reads = pair.consumer_weights()  # units, consumer outputs, rest
                units = reads.shape[0]
                unused = (reads == 0).flatten(1).all(1)
                no_inputs = (pair.producer.weight == 0).reshape(units, -1).all(1)
                fold = no_inputs & ~unused
                if fold.any() and pair.can_fold():
                    constant = pair.constant_outputs()
                    shift = (reads.sum(-1) * constant[:, None])[fold].sum(0)
                    bias = pair.consumer.bias
                    assert bias is not None  # can_fold() needs a consumer bias
                    bias += shift.to(bias.dtype)
                    pair.consumer.weight[
                        :, pair.consumer_columns(torch.nonzero(fold).reshape(-1))
                    ] = 0.0
                    unused = unused | fold
                keep = torch.nonzero(~unused).reshape(-1)
                if keep.numel() == 0:
                    keep = torch.zeros(1, dtype=torch.long, device=unused.device)
                if keep.numel() < units:
                    _keep_units(pair, keep)
                    kept[pair.name] = kept[pair.name][keep.cpu()]
                    changed = True
    return DeadUnitRemoval(
        net=out,
        kept=kept,
        removed={pair.name: sizes[pair.name] - int(kept[pair.name].numel()) for pair in pairs},
    )


@dataclass(frozen=True)
class HiddenUnits:
    """A layer whose output units feed the next weighted layer (:func:`hidden_unit_layers`).

    Attributes
    ----------
    name : str
        The producing module (``"0"``).
    consumer : str
        The module that reads its units.
    units : int
        Output units (rows of the producer's weight viewed as ``(shape[0], -1)``).
    columns_per_unit : int
        Consecutive columns of the consumer's weight viewed as ``(shape[0], -1)`` that
        read one unit: 1 between dense layers, ``kh * kw`` before a convolution, the
        flattened map's size before a dense layer after a ``Flatten``.
    """

    name: str
    consumer: str
    units: int
    columns_per_unit: int


def _module_names(net: nn.Module) -> dict[int, str]:
    return {id(module): name for name, module in net.named_children()}


def hidden_unit_layers(net: nn.Module) -> list[HiddenUnits]:
    """The layers of ``net`` whose hidden units :func:`permute_units` can reorder (and
    :func:`remove_dead_units` remove): in an ``nn.Sequential``, each ``Linear``/``Conv2d``
    whose outputs reach the next weighted module through element-wise modules (or,
    after a convolution, pooling and one ``Flatten``). Any other network: none."""
    if not isinstance(net, nn.Sequential):
        return []
    names = _module_names(net)
    out = []
    for pair in _unit_pairs(net):
        units = int(pair.producer.weight.shape[0])
        fan_in = pair.consumer.weight[0].numel()
        out.append(HiddenUnits(pair.name, names[id(pair.consumer)], units, fan_in // units))
    return out


def permute_units(net: nn.Module, orders: Mapping[str, torch.Tensor | Sequence[int]]) -> nn.Module:
    """A copy of ``net`` with the output units of some hidden layers in a new order.

    ``orders[name]`` is, for the producing module ``name`` (a
    :func:`hidden_unit_layers` entry), the old index of the unit at each new position:
    a permutation of ``range(units)``. The unit's weights and bias move with it and
    the next layer's weights follow, so the network computes the same function
    (exactly, up to the order in which the next layer sums its inputs). Layers not
    in ``orders`` keep their order; ``net`` is not modified.
    """
    layers = {h.name: h for h in hidden_unit_layers(net)}
    unknown = sorted(set(orders) - set(layers))
    if unknown:
        raise ValueError(
            f"permute_units: {unknown} are not layers with reorderable hidden units; "
            f"those of this network are {sorted(layers)}"
        )
    checked = {}
    for name, order in orders.items():
        index = torch.as_tensor(order, dtype=torch.long).reshape(-1).cpu()
        units = layers[name].units
        if not torch.equal(torch.sort(index).values, torch.arange(units)):
            raise ValueError(
                f"permute_units: the order for layer {name!r} must be a permutation of "
                f"range({units}); got {index.tolist()[:10]}{' ...' if index.numel() > 10 else ''}"
            )
        checked[name] = index
    out = copy.deepcopy(net)
    if not checked:
        return out
    assert isinstance(out, nn.Sequential)  # hidden_unit_layers found the layers
    with torch.no_grad():
        for pair in _unit_pairs(out):
            if pair.name in checked:
                _keep_units(pair, checked[pair.name].to(pair.producer.weight.device))
    return out


# --------------------------------------------------------------------------- unit pruning
@dataclass(frozen=True)
class UnitPruning:
    """What :func:`prune_units` returns.

    Attributes
    ----------
    net : nn.Sequential
        A copy of the network in which every pruned unit is read by nobody: the
        weights that read it are 0 and its mean contribution is in the reading
        layer's bias. :func:`remove_dead_units` (``remove_dead_units=True`` in the
        pipeline) then removes the unit with its own weights.
    pruned : dict of str to torch.Tensor
        Per producing module (``"5"``), the indices of its pruned units, ascending.
    saliency : dict of str to torch.Tensor
        Per producing module, the increase of the mean loss on the points scored
        when that unit alone is replaced by its mean (negative: the loss falls).
    zeroed : dict of str to torch.Tensor
        Per reading weight (``"7.weight"``), a boolean mask of the weights set to 0.
    loss_before, loss_after : float
        Mean loss on the points scored, of the input network and of ``net``.
    """

    net: nn.Sequential
    pruned: dict[str, torch.Tensor]
    saliency: dict[str, torch.Tensor]
    zeroed: dict[str, torch.Tensor]
    loss_before: float
    loss_after: float

    @property
    def num_pruned(self) -> int:
        return sum(int(units.numel()) for units in self.pruned.values())

    def prune_assignments(self, assignments: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Cluster assignments (``-1``: pruned, as :func:`~bayes_sws.compress.finetune_codebook`
        reads them) with the weights that read a pruned unit pruned too, so that fine-tuning
        keeps them at 0.

        A reading weight not in ``assignments`` (a tensor left unquantised, ``keep_float``) is
        added with every weight its own cluster: fine-tuning trains it as freely as before
        (Adam is element-wise) but holds its zeroed weights at 0, so no pruned unit is read
        again. Other parameters not in ``assignments`` are left out."""
        out = dict(assignments)
        for name, mask in self.zeroed.items():
            if name in out:
                out[name] = out[name].masked_fill(mask.to(out[name].device), -1)
            else:
                own = torch.arange(mask.numel(), device=mask.device).reshape(mask.shape)
                out[name] = own.masked_fill(mask, -1)
        return out


def _reading_means(pair: _UnitPair, inputs: torch.Tensor) -> torch.Tensor:
    """Sum over points of what the consumer reads: per column of a dense consumer, per
    channel (averaged over positions) of a convolution."""
    if isinstance(pair.consumer, nn.Linear):
        return inputs.flatten(1).double().sum(0)
    return inputs.double().sum((0, 2, 3)) / (inputs.shape[2] * inputs.shape[3])


def _reading_shift(pair: _UnitPair, units: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """What the consumer's output gains from ``units`` held at their ``means``: its bias shift."""
    w = pair.consumer.weight
    if isinstance(pair.consumer, nn.Linear):
        columns = pair.consumer_columns(units)
        return w[:, columns] @ means[columns].to(w.dtype)
    return (w[:, units].sum((2, 3)) * means[units].to(w.dtype)).sum(1)


def _units_delta(pair: _UnitPair, units: torch.Tensor, inputs: torch.Tensor, means: torch.Tensor):
    """The change of the consumer's output on ``inputs`` when each of ``units`` alone reads as
    its mean: shape ``(points, len(units), *output)``."""
    w = pair.consumer.weight
    count = len(units)
    if isinstance(pair.consumer, nn.Linear):
        columns = pair.consumer_columns(units)
        gap = means[columns].to(inputs.dtype) - inputs.flatten(1)[:, columns]
        gap = gap.reshape(len(inputs), count, -1)
        return torch.einsum("pun,oun->puo", gap, w[:, columns].reshape(w.shape[0], count, -1))
    conv = pair.consumer
    assert isinstance(conv, nn.Conv2d)  # a paired consumer is dense or a convolution
    gap = means[units].to(inputs.dtype).reshape(1, -1, 1, 1) - inputs[:, units]
    kernels = w[:, units].transpose(0, 1).reshape(count * w.shape[0], 1, *w.shape[2:])
    delta = nn.functional.conv2d(
        gap, kernels, stride=conv.stride, dilation=conv.dilation, groups=count
    )
    return delta.reshape(len(inputs), count, w.shape[0], *delta.shape[2:])


def _per_unit_loss(loss: Any, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    """``(outputs, y) -> (units,)``: the mean loss of each unit's outputs ``outputs[:, u]``;
    cross-entropy in one call, any other loss a unit at a time."""
    if loss == "cross_entropy":

        def per_unit(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            points, units = outputs.shape[:2]
            each = nn.functional.cross_entropy(
                outputs.flatten(0, 1), y.repeat_interleave(units, dim=0), reduction="none"
            )
            return each.reshape(points, units, -1).mean((0, 2))

        return per_unit
    return lambda outputs, y: torch.stack(
        [loss_fn(outputs[:, u], y) for u in range(outputs.shape[1])]
    )


def _hold_at_means(pairs: Sequence[_UnitPair], chosen: Mapping[str, torch.Tensor], means) -> None:
    """In place: each chosen unit read by nobody, its mean folded into the consumer's bias."""
    with torch.no_grad():
        for pair in pairs:
            units = chosen.get(pair.name)
            if units is None or units.numel() == 0:
                continue
            bias = pair.consumer.bias
            assert bias is not None  # only pairs that can_fold() are pruned
            bias += _reading_shift(pair, units, means[pair.name])
            pair.consumer.weight[:, pair.consumer_columns(units)] = 0.0


def prune_units(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    max_loss_increase: float,
    loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "cross_entropy",
    layers: Sequence[str] | None = None,
    num_points: int | None = None,
    batch_size: int = 1_000,
    seed: int = 0,
) -> UnitPruning:
    """Prune whole hidden units whose loss is small, each replaced by its mean output.

    A sparse layer of a network compressed by soft weight-sharing keeps many hidden
    units alive on one or two surviving weights; each costs its bias, the weights
    that read it and, in the sparse layout, the fillers of a whole row. Replacing
    unit :math:`j`'s output by its mean :math:`\\bar h_j` over the training points
    ("mean replacement": the reading weights set to 0, :math:`W_{:,j}\\bar h_j`
    added to the reading layer's bias) leaves a unit nobody reads, which
    :func:`remove_dead_units` removes exactly.

    Every unit of the chosen layers is scored alone: the increase of the mean
    ``loss`` over the training points (or a seeded random subset of ``num_points``) when it
    alone is replaced. Units are then taken greedily in order of increasing score: a unit
    is held when the joint replacement of it and the units held before raises the mean
    loss by at most ``max_loss_increase``, and left out otherwise (:func:`_greedy_units`:
    runs of units are tried at once, a failing run halved down to the unit that breaks
    the budget); the search stops at the first unit whose score alone exceeds what is
    left of the budget, and the units left out are tried again until none fits. Units
    interact: on a Fashion-MNIST LeNet-300-100, 18 units that each *lower* the loss when
    held alone raised it by 0.09 nats held together, and a search for the longest
    affordable prefix of the order stopped there, before 150 dead units (BENCHMARKS.md).
    At least one unit of every layer stays. The means are those of the input network.

    Parameters
    ----------
    net : nn.Sequential
        The network (deep-copied, never modified); its hidden-unit layers are those
        of :func:`hidden_unit_layers` whose reading layer has a bias and no padding.
    x, y : torch.Tensor
        Training points and targets (never the validation or test set).
    max_loss_increase : float
        Mean loss (nats a point for cross-entropy) the pruning may add, >= 0;
        ``0`` prunes only units whose joint removal does not raise it. Choose it
        on a validation split.
    loss : {"cross_entropy", "mse"} or callable
        As :func:`bayes_sws.zoo.train`'s: a batch's mean loss.
    layers : sequence of str, optional
        Producing modules whose units may go (default: every prunable layer).
    num_points : int, optional
        Score a seeded random subset of this many points (default all: on Fashion-MNIST
        LeNet-5 a subset of 10,000 ranked the units worse, pruning fewer for more
        validation error).
    batch_size, seed : int
        Points a forward pass; seed of the subset.
    """
    from ..zoo.training import _resolve_loss  # the loss names train() accepts

    if not isinstance(net, nn.Sequential):
        raise TypeError(f"prune_units needs an nn.Sequential network, got {type(net).__name__}")
    check_real("max_loss_increase", max_loss_increase, low=0.0)
    if num_points is not None:
        num_points = check_int("num_points", num_points, low=1)
    batch_size = check_int("batch_size", batch_size, low=1)
    seed = check_seed("seed", seed)
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or len(x) != len(y):
        raise ValueError(
            "prune_units needs tensors x and y with the same number of points; got "
            f"{type(x).__name__} of length {len(x)} and {type(y).__name__} of length {len(y)}"
        )
    loss_fn = _resolve_loss(loss, y)
    out = copy.deepcopy(net)
    pairs = _prunable_pairs(out, layers)
    batches = _scored_batches(out, x, y, num_points, batch_size, seed)
    training = out.training
    out.eval()
    if not pairs:  # nothing to prune: the network as it is
        with torch.no_grad():
            loss_now = _mean_loss(out, batches, loss_fn)
        out.train(training)
        return UnitPruning(out, {}, {}, {}, loss_now, loss_now)
    with torch.no_grad():
        per_unit = _per_unit_loss(loss, loss_fn)
        saliency, means, cached, unchanged = _unit_saliency(out, pairs, batches, loss_fn, per_unit)
        position = {pair.name: _consumer_position(out, pair) for pair in pairs}
        first = min(position, key=position.__getitem__)
        order = _pruning_order(pairs, saliency)

        def pruned_by(units: Sequence[tuple[str, int]]):
            chosen = _units_by_layer(units)
            trial = copy.deepcopy(out)
            _hold_at_means(_prunable_pairs(trial, [p.name for p in pairs]), chosen, means)
            return trial, chosen

        def loss_of(trial: nn.Sequential, start: str = first) -> float:
            """From the reader of ``start``'s units on (the layers before it are unchanged),
            on what the input network gives it."""
            return _mean_loss(trial[position[start] :], cached[start], loss_fn)

        def increase(units: list[tuple[str, int]]) -> float:
            start = min((name for name, _ in units), key=position.__getitem__, default=first)
            return loss_of(pruned_by(units)[0], start) - unchanged[start]

        held = _greedy_units(
            order, lambda unit: float(saliency[unit[0]][unit[1]]), increase, max_loss_increase
        )
        final, chosen = pruned_by(held)
        before, after = unchanged[first], loss_of(final)
    final.train(training)
    return UnitPruning(
        net=final,
        pruned={p.name: chosen.get(p.name, torch.zeros(0, dtype=torch.long)) for p in pairs},
        saliency={name: s.cpu() for name, s in saliency.items()},
        zeroed=_zeroed(final, chosen),
        loss_before=before,
        loss_after=after,
    )


def _scored_batches(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    num_points: int | None,
    batch_size: int,
    seed: int,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The points :func:`prune_units` scores on (all, or a seeded random subset of
    ``num_points`` in their order), on ``net``'s device and dtype, in batches."""
    param = next(net.parameters())
    if num_points is not None and len(x) > num_points:
        subset = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        keep = subset[:num_points].sort().values
        x, y = x[keep], y[keep]
    x = x.to(param.device, param.dtype) if x.is_floating_point() else x.to(param.device)
    y = y.to(param.device)
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]


def _zeroed(net: nn.Sequential, chosen: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per reading weight (``"7.weight"``), the mask of the weights that read a chosen unit."""
    pairs = {pair.name: pair for pair in _unit_pairs(net)}
    names = _module_names(net)
    zeroed = {}
    for name, units in chosen.items():
        pair = pairs[name]
        mask = torch.zeros(pair.consumer.weight.shape, dtype=torch.bool)
        mask[:, pair.consumer_columns(units.cpu())] = True
        zeroed[f"{names[id(pair.consumer)]}.weight"] = mask
    return zeroed


def check_prune_units(prune: Any, remove_dead: bool) -> None:
    """``prune_units`` is ``None`` or a budget >= 0, and set only with ``remove_dead_units``."""
    if prune is None:
        return
    check_real("prune_units", prune, low=0.0)
    if not remove_dead:
        raise ValueError(
            f"prune_units={prune} leaves the pruned units unread, and only removing them "
            "saves their bits: set remove_dead_units=True too (--remove-dead-units)"
        )


def _prunable_pairs(net: nn.Sequential, layers: Sequence[str] | None) -> list[_UnitPair]:
    """The unit pairs whose units :func:`prune_units` may hold at their means."""
    pairs = {pair.name: pair for pair in _unit_pairs(net)}
    if layers is None:
        return [pair for pair in pairs.values() if pair.can_fold()]
    if isinstance(layers, str):
        raise TypeError(f"layers must be a sequence of module names, got the string {layers!r}")
    wanted = list(layers)
    unknown = [name for name in wanted if name not in pairs or not pairs[name].can_fold()]
    if unknown:
        usable = [name for name, pair in pairs.items() if pair.can_fold()]
        raise ValueError(
            f"prune_units: {unknown} are not layers whose units can be pruned (hidden units "
            f"read by a layer with a bias and no padding); this network's are {usable}"
        )
    return [pairs[name] for name in wanted]


def _consumer_position(net: nn.Sequential, pair: _UnitPair) -> int:
    return next(i for i, module in enumerate(net) if module is pair.consumer)


def _mean_loss(net: nn.Module, batches, loss_fn) -> float:
    total = sum(float(loss_fn(net(xb), yb)) * len(xb) for xb, yb in batches)
    return total / sum(len(xb) for xb, _ in batches)


def _reader_inputs(net: nn.Sequential, pairs: Sequence[_UnitPair], x: torch.Tensor):
    """What each pair's consumer reads on ``x``, by pair: one forward pass."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        pair.consumer.register_forward_pre_hook(
            lambda _m, args, name=pair.name: seen.__setitem__(name, args[0])
        )
        for pair in pairs
    ]
    try:
        net(x)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _unit_saliency(net: nn.Sequential, pairs: Sequence[_UnitPair], batches, loss_fn, per_unit):
    """Per layer, each unit's loss increase when it alone reads as its mean; the means; per
    layer what its reader reads on every batch (the part of the network that holding that
    layer's units leaves alone, computed once, in one forward pass a batch); and per layer the
    mean loss from its reader on, unpruned (each score's base)."""
    num = sum(len(xb) for xb, _ in batches)
    reads = [(_reader_inputs(net, pairs, xb), yb) for xb, yb in batches]
    sums: dict[str, torch.Tensor] = {}
    for read, _ in reads:
        for pair in pairs:
            total = _reading_means(pair, read[pair.name])
            sums[pair.name] = total if pair.name not in sums else sums[pair.name] + total
    means = {name: total / num for name, total in sums.items()}
    increase = {
        p.name: torch.zeros(int(p.producer.weight.shape[0]), dtype=torch.float64) for p in pairs
    }
    tails = {pair.name: net[_consumer_position(net, pair) + 1 :] for pair in pairs}
    cached = {pair.name: [(read[pair.name], yb) for read, yb in reads] for pair in pairs}
    bases: dict[str, list[float]] = {pair.name: [] for pair in pairs}
    for read, yb in reads:
        for pair in pairs:
            tail = tails[pair.name]
            output = pair.consumer(read[pair.name])
            base = float(loss_fn(tail(output), yb))
            bases[pair.name].append(base * len(yb))
            units = len(increase[pair.name])
            chunk = max(1, (1 << 22) // (len(yb) * output[0].numel()))  # units scored at once
            for start in range(0, units, chunk):
                each = torch.arange(start, min(units, start + chunk), device=output.device)
                varied = output.unsqueeze(1) + _units_delta(
                    pair, each, read[pair.name], means[pair.name]
                )
                outputs = tail(varied.flatten(0, 1))
                outputs = outputs.reshape(len(yb), len(each), *outputs.shape[1:])
                losses = per_unit(outputs, yb).double().cpu()
                increase[pair.name][start : start + len(each)] += (losses - base) * len(yb)
    saliency = {name: total / num for name, total in increase.items()}
    unpruned = {name: sum(each) / num for name, each in bases.items()}  # as _mean_loss sums
    return saliency, means, cached, unpruned


def _pruning_order(pairs: Sequence[_UnitPair], saliency) -> list[tuple[str, int]]:
    """Every prunable unit by increasing saliency, at most all but one of each layer."""
    ranked = sorted(
        (float(s), pair.name, unit)
        for pair in pairs
        for unit, s in enumerate(saliency[pair.name].tolist())
    )
    left = {pair.name: int(pair.producer.weight.shape[0]) - 1 for pair in pairs}
    order = []
    for _, name, unit in ranked:
        if left[name] > 0:
            left[name] -= 1
            order.append((name, unit))
    return order


def _greedy_units(
    order: Sequence[_Unit],
    alone: Callable[[_Unit], float],
    cost: Callable[[list[_Unit]], float],
    budget: float,
) -> list[_Unit]:
    """The units of ``order`` held by :func:`prune_units`' greedy search.

    ``alone(u)`` is a unit's own score, ``cost(units)`` the loss increase of holding
    ``units`` together. In order, a unit is held when ``cost`` of it with the units held
    so far is at most ``budget``, else left out; runs of units are tried at once (doubling
    after a success, halving after a failure down to one unit), and the search stops at the
    first unit whose score alone exceeds what is left of the budget (the order rises in
    score). Then every unit left out whose score is within what is left is tried again,
    until none fits: no single unit left out can be added within the budget.
    """
    held: list[_Unit] = []
    spent, i, run = 0.0, 0, 1
    while i < len(order) and alone(order[i]) <= budget - spent:
        trial = list(order[i : i + run])
        increase = cost(held + trial)
        if increase <= budget:
            held, spent, i, run = held + trial, increase, i + len(trial), 2 * run
        elif len(trial) > 1:
            run = len(trial) // 2
        else:  # this unit breaks the budget with those held: left out
            i += 1
    added = True
    while added:
        added = False
        for unit in order:
            if unit in held or alone(unit) > budget - spent:
                continue
            increase = cost(held + [unit])
            if increase <= budget:
                held, spent, added = held + [unit], increase, True
    return held


def _units_by_layer(units: Sequence[tuple[str, int]]) -> dict[str, torch.Tensor]:
    chosen: dict[str, list[int]] = {}
    for name, unit in units:
        chosen.setdefault(name, []).append(unit)
    return {name: torch.tensor(sorted(units), dtype=torch.long) for name, units in chosen.items()}
