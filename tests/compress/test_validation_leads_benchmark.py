"""benchmarks/validation_leads.py: its points are the trials' means as recorded, by hand;
the goal column follows the hand rule; the figure is written; bad input is refused before
anything is written. (That it reads what ``compression_validated.py --json`` writes is
checked where that script runs, in ``test_groups_compress.py``.)"""

from __future__ import annotations

import json

import pytest
from conftest import benchmark_module

CASE = "fashion-mnist/lenet-5"


def _trial(scale, budget, before, after, se, rate):
    return {
        "prior_scale": scale,
        "settings": {"prior_scale": scale, "prune_units": budget},
        "validation_error_before": before,
        "validation_error_after": after,
        "increase_se": se,
        "compression_rate": rate,
    }


def _write(path, trials_by_group):
    path.write_text(json.dumps({CASE: {"trials": trials_by_group, "wall": {}}}))
    return path


def test_points_table_and_figure(tmp_path, capsys):
    leads = benchmark_module("validation_leads")
    shared = [
        _trial(0.05, 0.005, 0.089, 0.0934, 0.19, 112.7),  # +0.44 below the rate
        _trial(0.05, 0.01, 0.089, 0.0938, 0.19, 123.9),  # +0.48 at 123.9x: met
        _trial(0.06, 0.01, 0.089, 0.0956, 0.19, 125.0),  # +0.66, less 0.19 = +0.47: one s.e.
    ]
    layer = [_trial(0.085, 0.005, 0.089, 0.0985, 0.2, 130.0)]  # +0.95: neither
    first = _write(tmp_path / "a.json", {"None": shared, "layer": layer})
    points = leads.lead_points(first, "lead", CASE)
    assert [p["lead"] for p in points] == ["lead"] * 3 + ["lead, per layer"]
    for point, (before, after) in zip(points, [(8.9, 9.34), (8.9, 9.38), (8.9, 9.56), (8.9, 9.85)]):
        assert point["increase"] == pytest.approx(after - before, abs=1e-9)
    assert [p["se"] for p in points] == [0.19, 0.19, 0.19, 0.2]
    # a run that went on to read the test set lists its trials without the group key
    full = tmp_path / "full.json"
    full.write_text(json.dumps({CASE: {"trials": shared, "rows": [], "wall": 1.0}}))
    assert leads.lead_points(full, "lead", CASE) == points[:3]

    figure = tmp_path / "leads.png"
    argv = ["--case", CASE, "--run", str(first), "lead", "--figure", str(figure)]
    assert leads.main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    rows = [line for line in printed if line.startswith("| lead") and "| λ |" not in line]
    assert [row.rsplit("|", 2)[-2].strip() for row in rows] == ["", "met", "within one s.e.", ""]
    assert "| lead | 0.05 | 0.01 | +0.48 ± 0.19 | 123.9 | met |" in rows
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    leads = benchmark_module("validation_leads")
    good = _write(tmp_path / "a.json", {"None": [_trial(0.05, 0.01, 0.09, 0.1, 0.2, 120.0)]})
    figure = tmp_path / "out" / "leads.png"
    for argv in (
        ["--case", CASE, "--run", str(tmp_path / "missing.json"), "x", "--figure", str(figure)],
        ["--case", CASE, "--run", str(good), "x", "--figure", str(tmp_path / "leads.pdf")],
    ):
        with pytest.raises(SystemExit) as err:
            leads.main(argv)
        assert err.value.code == 2
    with pytest.raises(SystemExit, match="no trials of 'digits/lenet-5'"):
        leads.main(["--case", "digits/lenet-5", "--run", str(good), "x", "--figure", str(figure)])
    assert not figure.parent.exists()
