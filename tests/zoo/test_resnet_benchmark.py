"""``benchmarks/resnet_fashion.py --quick``: the documented command runs end to end.

The figures of a 512-point smoke run mean nothing; checked are their kinds and
ranges, and that the JSON written is what was printed. The choice of λ is
checked against a hand-made list of trials.
"""

from __future__ import annotations

import json

import pytest
from conftest import benchmark_module

from bayes_sws.zoo.data import DataError


def _benchmark():
    return benchmark_module("resnet_fashion")


def test_choose_takes_the_highest_rate_within_the_margin():
    bench = _benchmark()
    trials = [
        {"prior_scale": 0.04, "validation_increase": 0.1, "compression_rate": 20.0},
        {"prior_scale": 0.1, "validation_increase": 0.5, "compression_rate": 40.0},
        {"prior_scale": 0.2, "validation_increase": 0.6, "compression_rate": 80.0},
    ]
    assert bench.choose(trials)["prior_scale"] == 0.1
    worse = [{**t, "validation_increase": t["validation_increase"] + 1} for t in trials]
    assert bench.choose(worse)["prior_scale"] == 0.04  # none within: the smallest increase


@pytest.mark.artifacts
def test_quick_run_writes_its_figures(tmp_path, capsys):
    path = tmp_path / "resnet.json"
    try:
        assert _benchmark().main(["--quick", "--json", str(path)]) == 0
    except DataError:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    figures = json.loads(path.read_text())
    assert figures == json.loads(capsys.readouterr().out)
    assert figures["options"]["depth"] == 8 and figures["options"]["width"] == 4
    assert figures["pretrain_seconds_per_epoch"] > 0
    trial = figures["trials"][0]
    assert trial["retrain_seconds_per_epoch"] > 0
    for key in ("validation_error_pretrained", "validation_error_after"):
        assert 0.0 <= trial[key] <= 1.0
    for key in ("test_error_pretrained", "test_error_after"):
        assert 0.0 <= figures[key] <= 1.0
    assert figures["compression_rate"] > 1.0
    assert 0.0 < figures["nonzero_fraction"] <= 1.0
