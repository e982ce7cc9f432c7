"""benchmarks/kmeans_after_pruning.py: its choice rule by hand, and a run at a small budget."""

from __future__ import annotations

import json

import pytest
from conftest import benchmark_module


def _module():
    return benchmark_module("kmeans_after_pruning")


def _trial(scale, seed, after, rate, pre=0.10, retrained=0.105):
    return {
        "prior_scale": scale,
        "seed": seed,
        "error_pretrained": pre,
        "error_retrained": retrained,
        "error_after": after,
        "rate": rate,
    }


def test_choice_by_the_means_over_seeds():
    script = _module()
    trials = [
        _trial(0.1, 0, 0.103, 80.0),  # λ 0.1: +0.30 and +0.50, mean +0.40 at 82
        _trial(0.1, 1, 0.105, 84.0),
        _trial(0.2, 0, 0.104, 100.0),  # λ 0.2: +0.40 and +0.80, mean +0.60: over 0.5
        _trial(0.2, 1, 0.108, 104.0),
    ]
    chosen, means = script.choose(trials, 0.5)
    assert chosen == 0.1
    assert means[0.1]["delta"] == pytest.approx(0.4) and means[0.1]["rate"] == pytest.approx(82.0)
    assert means[0.2]["per_seed"] == pytest.approx([0.4, 0.8])
    assert means[0.2]["delta_retrained"] == pytest.approx(0.5)
    # within a wider margin the higher rate wins; within none, the smallest loss
    assert script.choose(trials, 0.7)[0] == 0.2
    assert script.choose(trials, 0.1)[0] == 0.1


def test_runs_at_a_small_budget_and_reads_the_test_set_once(tmp_path, capsys):
    script = _module()
    out = tmp_path / "out.json"
    flags = ["--case", "digits/lenet-300-100", "--prior-scales", "0.03", "0.1", "--seeds", "0"]
    flags += ["--set", "sws.num_epochs=2", "--centroid-epochs", "1", "--num-components", "9"]
    assert script.main([*flags, "--cache", str(tmp_path / "cache"), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [(t["prior_scale"], t["seed"]) for t in result["trials"]] == [(0.03, 0), (0.1, 0)]
    test = result["test"]
    assert test["prior_scale"] == result["chosen"]
    # λ as chosen on the 1,293-image split, retrained on all 1,437 training images
    assert test["prior_scale_used"] == pytest.approx(result["chosen"] * 1437 / 1293, rel=1e-12)
    assert test["rate"] > 1.0 and test["dc_rate"] > 1.0
    assert "test set, read once" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        script.main([*flags, "--jobs", "0"])
