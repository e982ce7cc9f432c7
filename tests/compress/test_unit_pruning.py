"""Unit pruning by mean replacement (``prune_units``) against brute force.

The oracle holds a unit at its mean the plain way: a forward pre-hook on the layer
that reads it overwrites the unit's inputs (its columns of a dense reader, its
channel of a convolution) with their mean over the points, computed here with
numpy, and the loss is ``F.cross_entropy`` on the hooked network.
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayes_sws.compress import prune_units, remove_dead_units


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3)
    ).double()


def _convnet() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 12),
        nn.ReLU(),
        nn.Linear(12, 3),
    ).double()


def _data(net: nn.Sequential, n: int = 240):
    """Points whose class a fixed linear map of the input decides, and ``net`` trained on
    them a little (so that some units matter and others do not)."""
    gen = torch.Generator().manual_seed(2)
    shape = (n, 8) if isinstance(net[0], nn.Linear) else (n, 1, 8, 8)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    y = (x.flatten(1) @ torch.randn(x[0].numel(), 3, generator=gen, dtype=torch.float64)).argmax(1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(40):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return x, y


# (producer, reader, columns a unit has in the reader's input: 1 per unit, or a channel)
LAYERS = {
    "mlp": [("0", "2"), ("2", "4")],
    "conv": [("0", "2"), ("2", "5"), ("5", "7")],
}
NETS = {"mlp": _mlp, "conv": _convnet}


def _reader_inputs(net: nn.Sequential, reader: str, x: torch.Tensor) -> np.ndarray:
    seen = {}
    hook = net.get_submodule(reader).register_forward_pre_hook(
        lambda _m, args: seen.setdefault("x", args[0].detach().clone())
    )
    with torch.no_grad():
        net(x)
    hook.remove()
    return seen["x"].numpy()


def _held(net: nn.Sequential, held: dict[str, list[int]], x: torch.Tensor, kind: str):
    """A copy of ``net`` whose readers see each held unit as its mean over ``x``."""
    out = copy.deepcopy(net)
    for producer, reader in LAYERS[kind]:
        units = held.get(producer, [])
        if not units:
            continue
        inputs = _reader_inputs(net, reader, x)
        if inputs.ndim == 4:  # a convolution reads channels: the mean over points and positions
            means = {u: float(inputs[:, u].mean()) for u in units}

            def hook(_m, args, means=means):
                z = args[0].clone()
                for u, m in means.items():
                    z[:, u] = m
                return (z,)
        else:  # a dense reader: each column's mean (a channel's block after a Flatten)
            block = inputs.shape[1] // net.get_submodule(producer).weight.shape[0]
            cols = [c for u in units for c in range(u * block, (u + 1) * block)]
            col_means = torch.from_numpy(inputs[:, cols].mean(0))

            def hook(_m, args, cols=cols, col_means=col_means):
                z = args[0].clone()
                z[:, cols] = col_means
                return (z,)

        out.get_submodule(reader).register_forward_pre_hook(hook)
    return out


def _loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(net(x), y))


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_each_units_saliency_is_the_loss_increase_with_it_alone_at_its_mean(kind):
    net = NETS[kind]()
    x, y = _data(net)
    result = prune_units(net, x, y, max_loss_increase=0.0, batch_size=64)
    base = _loss(net, x, y)
    assert result.loss_before == pytest.approx(base, rel=1e-12)
    for producer, _ in LAYERS[kind]:
        units = net.get_submodule(producer).weight.shape[0]
        expected = [_loss(_held(net, {producer: [u]}, x, kind), x, y) - base for u in range(units)]
        np.testing.assert_allclose(result.saliency[producer].numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("budget", [0.0, 0.02, 0.1, 0.3])
def test_the_pruned_net_holds_units_within_the_budget_and_no_unit_left_out_fits(kind, budget):
    net = NETS[kind]()
    x, y = _data(net)
    result = prune_units(net, x, y, max_loss_increase=budget)
    held = {name: units.tolist() for name, units in result.pruned.items()}
    oracle = _held(net, held, x, kind)
    with torch.no_grad():
        torch.testing.assert_close(result.net(x), oracle(x), rtol=1e-10, atol=1e-10)
    base = _loss(net, x, y)
    assert result.loss_after == pytest.approx(_loss(oracle, x, y), rel=1e-10)
    assert result.loss_after - base <= budget + 1e-12
    # no unit left out fits: each candidate (all but the most salient unit of each layer)
    # not pruned either scores alone more than what is left of the budget, or breaks it
    # held with the pruned ones (by the hooked network)
    kept = {  # the most salient unit of each layer always stays (ties: the later one)
        (name, max(range(len(sal)), key=lambda u, sal=sal: (float(sal[u]), u)))
        for name, sal in result.saliency.items()
    }
    candidates = {(name, u) for name, sal in result.saliency.items() for u in range(len(sal))}
    candidates -= kept
    left = budget - (result.loss_after - base)
    pruned = {(name, u) for name, us in held.items() for u in us}
    assert pruned <= candidates
    for name, u in sorted(candidates - pruned):
        if float(result.saliency[name][u]) > left + 1e-12:
            continue
        more = {k: list(v) for k, v in held.items()}
        more.setdefault(name, []).append(u)
        assert _loss(_held(net, more, x, kind), x, y) - base > budget - 1e-12
    # the weights that read a pruned unit are exactly 0, and nothing else changed there
    for mask_name, mask in result.zeroed.items():
        after = result.net.get_parameter(mask_name).detach()
        before = net.get_parameter(mask_name).detach()
        assert torch.all(after[mask] == 0)
        torch.testing.assert_close(after[~mask], before[~mask], rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_pruned_units_are_then_removed_exactly(kind):
    net = NETS[kind]()
    x, y = _data(net)
    result = prune_units(net, x, y, max_loss_increase=0.05)
    assert result.num_pruned > 0
    removal = remove_dead_units(result.net)
    with torch.no_grad():
        torch.testing.assert_close(removal.net(x), result.net(x), rtol=1e-10, atol=1e-10)
    for name, units in result.pruned.items():
        assert removal.removed[name] >= len(units)
        assert not set(units.tolist()) & set(removal.kept[name].tolist())


def test_an_unbounded_budget_keeps_one_unit_a_layer():
    net = _convnet()
    x, y = _data(net)
    result = prune_units(net, x, y, max_loss_increase=1e9)
    assert {n: len(u) for n, u in result.pruned.items()} == {"0": 5, "2": 7, "5": 11}
    assert prune_units(net, x, y, max_loss_increase=1e9, layers=["5"]).num_pruned == 11


def test_a_subset_of_points_is_scored_when_asked():
    net = _mlp()
    x, y = _data(net)
    result = prune_units(net, x, y, max_loss_increase=0.0, num_points=100, seed=3)
    keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(3))[:100].sort().values
    assert result.loss_before == pytest.approx(_loss(net, x[keep], y[keep]), rel=1e-12)


def test_a_network_without_hidden_units_is_returned_as_it_is():
    net = nn.Sequential(nn.Linear(8, 3)).double()
    x, y = _data(net)
    result = prune_units(net, x, y, max_loss_increase=1.0)
    assert result.num_pruned == 0 and result.pruned == {} and result.zeroed == {}
    assert result.loss_before == result.loss_after == pytest.approx(_loss(net, x, y), rel=1e-12)
    assert torch.equal(result.net[0].weight, net[0].weight)


def test_bad_input_is_refused_by_name():
    net = _convnet()
    x, y = _data(net)
    with pytest.raises(ValueError, match="max_loss_increase"):
        prune_units(net, x, y, max_loss_increase=-0.1)
    with pytest.raises(ValueError, match="same number of points"):
        prune_units(net, x, y[:-1], max_loss_increase=0.0)
    with pytest.raises(ValueError, match=r"\['7'\].*\['0', '2', '5'\]"):
        prune_units(net, x, y, max_loss_increase=0.0, layers=["7"])
    with pytest.raises(TypeError, match="nn.Sequential"):
        prune_units(nn.Linear(3, 2), x, y, max_loss_increase=0.0)
    padded = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3, padding=1)).double()
    with pytest.raises(ValueError, match=r"\['0'\]"):
        prune_units(padded, x, y, max_loss_increase=0.0, layers=["0"])
    with pytest.raises(ValueError, match="num_points"):
        prune_units(net, x, y, max_loss_increase=0.0, num_points=0)


def test_the_greedy_search_skips_units_that_break_the_budget_together_and_retries_them():
    """``_greedy_units`` on costs made by hand (the oracle: the search traced by hand)."""
    from bayes_sws.compress.surgery import _greedy_units

    alone = {"a": -0.01, "b": -0.01, "c": 0.0, "d": 0.0, "e": 0.02, "f": 0.5}

    def cost(units):  # additive, but a and b held together cost 0.2 more
        return sum(alone[u] for u in units) + (0.2 if {"a", "b"} <= set(units) else 0.0)

    calls = []
    traced = _greedy_units(list(alone), alone.get, lambda u: calls.append(u) or cost(u), 0.05)
    # a held; a run [b, c] over (0.18), then b alone over: b left out; c, then a run [d, e]
    # (0.01) held; f alone (0.5) exceeds what is left (0.04): stop; b tried again: still over
    assert traced == ["a", "c", "d", "e"]
    assert calls == [["a"], ["a", "b", "c"], ["a", "b"], ["a", "c"], ["a", "c", "d", "e"]] + [
        ["a", "c", "d", "e", "b"]
    ]
    # a unit left out that fits once a later one is held is taken in the second pass
    pair = {"u": 0.0, "v": 0.01}

    def paired(units):  # u costs 0.1 unless v is held too
        return sum(pair[x] for x in units) + (0.1 if "u" in units and "v" not in units else 0.0)

    assert _greedy_units(["u", "v"], pair.get, paired, 0.05) == ["v", "u"]
    assert _greedy_units(["u", "v"], pair.get, paired, 0.0) == []  # v alone is over 0
