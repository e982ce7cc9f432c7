"""Hidden units stored in the order that takes the fewest bits: the same function (the
original network is the oracle), bit counts by hand, and the search against brute force
over every order of a small network."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from bayes_sws.compress import (
    hidden_unit_layers,
    permute_units,
    storage_report,
    storage_unit_orders,
    stored_network,
)


def _sparse_(module: nn.Module, keep: float, seed: int) -> None:
    """Zero all but about ``keep`` of each weight, the rest snapped to four shared values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("weight"):
                values = torch.tensor([-0.5, -0.2, 0.2, 0.5])[
                    torch.randint(4, p.shape, generator=g)
                ]
                p.copy_(values * (torch.rand(p.shape, generator=g) < keep))


def _lenet_like() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(5 * 4 * 4, 6),
        nn.ReLU(),
        nn.Linear(6, 3),
    )


def test_hidden_unit_layers_name_producers_consumers_and_column_blocks():
    mlp = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2))
    found = [(h.name, h.consumer, h.units, h.columns_per_unit) for h in hidden_unit_layers(mlp)]
    assert found == [("0", "2", 5, 1), ("2", "4", 3, 1)]
    found = [
        (h.name, h.consumer, h.units, h.columns_per_unit) for h in hidden_unit_layers(_lenet_like())
    ]
    # conv 0 -> conv 3 reads 3 x 3 kernel columns a channel; conv 3 -> dense 6 a 4 x 4 map
    assert found == [("0", "3", 4, 9), ("3", "6", 5, 16), ("6", "8", 6, 1)]
    assert hidden_unit_layers(nn.ModuleList([nn.Linear(2, 2)])) == []


@pytest.mark.parametrize("network", ["mlp", "conv"])
def test_permute_units_moves_each_unit_with_its_weights_and_keeps_the_function(network):
    torch.manual_seed(0)
    if network == "mlp":
        net = nn.Sequential(nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 3))
        x = torch.randn(32, 6)
    else:
        net = _lenet_like()
        x = torch.randn(16, 1, 14, 14)
    net = net.double()
    # rotated by one: no unit stays where it was
    orders = {h.name: torch.arange(h.units).roll(1) for h in hidden_unit_layers(net)}
    out = permute_units(net, orders)
    torch.testing.assert_close(out(x.double()), net(x.double()), rtol=1e-12, atol=1e-12)
    # the unit at new position i is old unit orders[name][i], its bias with it
    first = hidden_unit_layers(net)[0]
    order = orders[first.name]
    assert torch.equal(out[int(first.name)].weight, net[int(first.name)].weight[order])
    assert torch.equal(out[int(first.name)].bias, net[int(first.name)].bias[order])
    assert net is not out and not torch.equal(out[0].weight, net[0].weight)  # input untouched


def test_permute_units_refuses_what_is_not_a_permutation_of_a_hidden_layer():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"layer '0' must be a permutation of range\(4\)"):
        permute_units(net, {"0": [0, 1, 1, 3]})
    with pytest.raises(ValueError, match=r"\['2'\] are not layers with reorderable"):
        permute_units(net, {"2": [1, 0]})
    with pytest.raises(ValueError, match="swaps must be >= 0"):
        storage_unit_orders(net, swaps=-1)


def test_two_far_apart_units_brought_together_by_hand():
    # 40 hidden units, only 0 and 39 used: in either layer 38 zeros lie between them, one
    # filler with 5-bit indices. Next to each other there is none.
    net = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 1))
    with torch.no_grad():
        for layer in (net[0], net[2]):
            layer.weight.zero_()
        net[0].weight[[0, 39], 0] = 0.5
        net[2].weight[0, [0, 39]] = 0.25
    before = storage_report(net)
    # 3 stored entries (2 + a filler): 15 index bits; symbols 0.5:2, zero:1 -> 1 bit each;
    # codebook 32
    assert [layer.weight_bits for layer in before.layers] == [15 + 3 + 32] * 2
    stored, after = stored_network(net, reorder_units=True)
    # 2 entries: 10 index bits; one symbol, 1 bit each; codebook 32
    assert [(layer.num_fillers, layer.weight_bits) for layer in after.layers] == [(0, 44)] * 2
    assert after.total_bits == before.total_bits - 12
    x = torch.randn(8, 1)
    torch.testing.assert_close(stored(x), net(x))


def _brute_force_least_bits(net: nn.Module, **kwargs) -> int:
    layers = hidden_unit_layers(net)
    best = None
    for orders in itertools.product(*(itertools.permutations(range(h.units)) for h in layers)):
        permuted = permute_units(
            net, {h.name: list(o) for h, o in zip(layers, orders, strict=True)}
        )
        bits = storage_report(permuted, **kwargs).total_bits
        best = bits if best is None else min(best, bits)
    assert best is not None
    return best


@pytest.mark.parametrize("seed", range(4))
def test_the_search_finds_the_least_bits_of_a_small_network(seed):
    # 1-bit indices make every run of two zeros cost a filler, so the order matters a lot;
    # 6 hidden units have 720 orders, all counted by storage_report
    net = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4))
    _sparse_(net, keep=0.3, seed=seed)
    identity = storage_report(net, index_bits=1).total_bits
    least = _brute_force_least_bits(net, index_bits=1)
    orders = storage_unit_orders(net, index_bits=1)
    found = storage_report(permute_units(net, orders), index_bits=1).total_bits
    assert found == least
    assert least < identity  # the case is not trivial


def test_stored_network_reorders_after_removing_dead_units():
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Linear(30, 50), nn.ReLU(), nn.Linear(50, 40), nn.ReLU(), nn.Linear(40, 5)
    )
    _sparse_(net, keep=0.05, seed=3)
    kept, plain = stored_network(net, remove_dead=True)
    stored, report = stored_network(net, remove_dead=True, reorder_units=True)
    # the same smaller shapes, counted against the full network, in fewer bits
    assert [p.shape for p in stored.parameters()] == [p.shape for p in kept.parameters()]
    assert report.original_bits == plain.original_bits
    assert report.total_bits < plain.total_bits
    assert report.total_bits == storage_report(stored, reference=net).total_bits
    x = torch.randn(64, 30)
    torch.testing.assert_close(stored(x), net(x), rtol=1e-5, atol=1e-6)
    # a network with no reorderable layers is stored as it is
    single = nn.Sequential(nn.Linear(4, 3))
    same, _ = stored_network(single, reorder_units=True)
    assert torch.equal(same[0].weight, single[0].weight)


def test_the_search_never_stores_in_more_bits():
    for seed in range(3):
        net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 10))
        _sparse_(net, keep=0.04 * (seed + 1), seed=seed)
        for coding in ("fixed", "rice"):
            orders = storage_unit_orders(net, position_coding=coding, swaps=50, seed=seed)
            assert sorted(orders["0"].tolist()) == list(range(64))
            before = storage_report(net, position_coding=coding).total_bits
            after = storage_report(permute_units(net, orders), position_coding=coding).total_bits
            assert after <= before


@pytest.mark.parametrize("network", ["mlp", "conv"])
@pytest.mark.parametrize("layout", ["best", "row", "column"])
def test_each_swap_counted_incrementally_equals_a_recount_by_storage_report(network, layout):
    # oracle: storage_report of the network permuted to the search's orders, recounted from
    # scratch after every swap; dense and sparse tensors, 1-bit to default index widths
    from bayes_sws.compress.params import check_param_names
    from bayes_sws.compress.storage import _STORAGE_ORDERS, _UnitOrderSearch

    kept = rejected = 0
    for seed, index_bits in ((0, None), (1, 1), (2, 2)):
        if network == "mlp":
            net = nn.Sequential(
                nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 9), nn.ReLU(), nn.Linear(9, 4)
            )
        else:
            net = _lenet_like()
        _sparse_(net, keep=0.1 * (seed + 1), seed=seed)
        names = check_param_names(net, None)
        search = _UnitOrderSearch(net, names, index_bits, _STORAGE_ORDERS[layout], "fixed")
        layers = [h for h in search.layers if h.units > 1]
        rng = torch.Generator().manual_seed(seed)
        bits = storage_report(net, index_bits=index_bits, order=layout)
        previous = sum(row.weight_bits for row in bits.layers)
        for _ in range(60):
            h = layers[int(torch.randint(len(layers), (1,), generator=rng))]
            a, b = torch.randperm(h.units, generator=rng)[:2].tolist()
            before = {k: v.copy() for k, v in search.orders.items()}
            saved = search.try_swap(h, a, b)
            swapped = before[h.name].copy()
            swapped[[a, b]] = swapped[[b, a]]
            report = storage_report(
                permute_units(
                    net,
                    {
                        h.name: torch.from_numpy(swapped),
                        **{k: torch.from_numpy(v) for k, v in before.items() if k != h.name},
                    },
                ),
                index_bits=index_bits,
                order=layout,
            )
            recount = sum(row.weight_bits for row in report.layers)
            assert saved == previous - recount
            if saved >= 0:  # kept: the search's order is the swapped one
                kept += 1
                assert (search.orders[h.name] == swapped).all()
                previous = recount
            else:
                rejected += 1
                assert (search.orders[h.name] == before[h.name]).all()
            assert sum(search.bits.values()) == previous
    assert kept > 0 and rejected > 0  # both branches ran
