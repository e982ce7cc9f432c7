"""benchmarks/pretraining_curve.py: at the case's epochs it has pretrained, bit for bit, the
network ``compression_validated.py`` pretrains on the same split (a separate call of the
benchmark's own pretraining, scored by a numpy count); bad input is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import benchmark_module

NAME = "digits/lenet-300-100"


def test_the_last_reading_is_the_benchmarks_pretrained_network(tmp_path, capsys):
    curves = benchmark_module("pretraining_curve")
    bench = benchmark_module("compression")
    validated = benchmark_module("compression_validated")
    epochs = bench.CASES[NAME].pretrain["num_epochs"]
    options = {"validation": 0.1, "seed": 1, "cache": None, "progress": False}
    _, tuning, _, net = validated.held_out_pretrained(NAME, options)
    with torch.no_grad():
        predicted = net(tuning.x_test).argmax(1).numpy()
    expected = 100.0 * np.mean(predicted != tuning.y_test.numpy())
    readings, pretrained = curves.curve(
        NAME, 1, epochs=epochs, every=epochs // 3, schedule="constant"
    )
    assert sorted(readings) == [epochs // 3, 2 * (epochs // 3), epochs]
    assert readings[epochs] == pytest.approx(expected, abs=1e-9)
    for a, b in zip(pretrained.parameters(), net.parameters(), strict=True):
        assert torch.equal(a, b)  # the same network, not only the same score

    figure, saved = tmp_path / "curves.png", tmp_path / "curves.json"
    argv = ["--cases", NAME, "--splits", "1", "--epochs", "4", "--every", "2"]
    schedules = ["--schedules", "constant", "cosine"]
    assert curves.main([*argv, *schedules, "--figure", str(figure), "--json", str(saved)]) == 0
    printed = capsys.readouterr().out
    assert f"| {NAME} | 1 | constant | " in printed and f"| {NAME} | 1 | cosine | " in printed
    assert figure.stat().st_size > 0
    # constant to --epochs, cosine over the case's own epochs; a merge prints the same table
    constant, cosine = curves._read(saved)
    assert sorted(constant["errors"]) == [2, 4] and max(cosine["errors"]) == epochs
    assert curves.main(["--merge", str(saved)]) == 0
    assert capsys.readouterr().out == printed


def test_bad_epochs_are_refused_before_training(capsys):
    with pytest.raises(SystemExit):
        benchmark_module("pretraining_curve").main(["--cases", NAME, "--every", "0"])
    assert "--epochs and --every must be at least 1; got None, 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        benchmark_module("pretraining_curve").main([])
    assert "give --cases to pretrain, or --merge" in capsys.readouterr().err
