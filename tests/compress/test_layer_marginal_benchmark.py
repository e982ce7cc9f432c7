"""benchmarks/layer_marginal.py: on a stored run, the network as stored counts the bits
``bayes-sws compress`` reported, a tensor's smallest non-zeros go and its closest values
merge by hand count, and bad input is refused before the data are read."""

from __future__ import annotations

import pytest
import torch
from conftest import benchmark_module
from torch import nn

from bayes_sws.runs import commands as runs


def _module():
    return benchmark_module("layer_marginal")


@pytest.mark.filterwarnings("ignore::bayes_sws.health.HealthWarning")  # 20 steps: a poor network
def test_a_stored_run_is_read_as_compress_counted_it(tmp_path, capsys):
    out = tmp_path / "run"
    config = runs.resolve_config({}, {"num_steps": 20, "pretrain_epochs": 2, "hidden": [16]})
    runs.fit_run(config, out=out, progress=False)
    summary = runs.compress_run(out, plots=False)
    assert _module().main([str(out), "--fractions", "0.5", "--merges", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"as stored: {summary['total_bits']} bits" in printed
    for name in ("0.weight", "2.weight"):  # the MLP's two weights, half their non-zeros each
        assert f"| {name} | 50% smallest zeroed | " in printed
        assert f"| {name} | 1 value(s) merged | " in printed


def test_the_smallest_nonzeros_go_by_hand_count():
    net = nn.Linear(5, 1, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[0.5, -0.1, 0.0, 0.3, -0.2]]))
    smaller, zeroed = _module().pruned(net, "weight", 0.5)  # 4 non-zeros: the 2 smallest go
    assert zeroed == 2
    assert torch.equal(smaller.weight, torch.tensor([[0.5, 0.0, 0.0, 0.3, 0.0]]))
    assert net.weight[0, 1] == -0.1  # the original is left alone


def test_the_closest_values_merge_into_their_weighted_mean_by_hand():
    """Ward's costs by hand: (-0.5, 0.25) 3/4 · 0.75² = 0.42, (0.25, 0.375) 3/4 · 0.125² =
    0.0117, (0.375, 1) 1/2 · 0.625² = 0.195: the three 0.25s and the 0.375 become
    (3 · 0.25 + 0.375) / 4 = 0.28125."""
    net = nn.Linear(7, 1, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[-0.5, 0.25, 0.0, 0.25, 0.375, 1.0, 0.25]]))
    fewer, moved = _module().merged(net, "weight", 1)
    assert moved == 4
    expected = torch.tensor([[-0.5, 0.28125, 0.0, 0.28125, 0.28125, 1.0, 0.28125]])
    assert torch.equal(fewer.weight, expected)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{run}", "--fractions", "1.5"], "strictly between 0 and 1"),
        (["{run}", "--merges", "0"], "counts >= 1"),
        (["{missing}"], "holds no model.sws"),
    ],
)
def test_bad_input_is_refused_with_the_value_named(tmp_path, argv, message, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.sws").write_bytes(b"")
    argv = [a.format(run=run, missing=tmp_path / "none") for a in argv]
    with pytest.raises(SystemExit):
        _module().main(argv)
    assert message in capsys.readouterr().err
