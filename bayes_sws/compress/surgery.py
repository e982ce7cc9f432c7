"""Network surgery: remove the hidden units a pruned network no longer uses.

An exact, function-preserving clean-up (:func:`remove_dead_units`): a unit nobody
reads goes, and a unit with no inputs left has its constant output folded into the
next layer's bias first. :func:`bayes_sws.compress.storage.stored_network` counts
the smaller network against the full one's size.

:func:`permute_units` puts the hidden units of a network in another order (the
same function: each unit's weights and bias move with it, and the next layer
reads it where it now is). :func:`hidden_unit_layers` lists the layers whose
units can be so permuted or removed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from ..zoo.nets import ACTIVATIONS, same_memory_format

__all__ = [
    "DeadUnitRemoval",
    "HiddenUnits",
    "hidden_unit_layers",
    "permute_units",
    "remove_dead_units",
]


_Index = TypeVar("_Index", torch.Tensor, np.ndarray)  # an index of units, torch or numpy

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
