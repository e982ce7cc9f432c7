"""The benchmarks' rate-against-error figures draw exactly the rows' (rate, Δ error) values."""

import importlib
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def _module(name):
    if str(REPO / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO / "benchmarks"))
    return importlib.import_module(name)


def _rows():
    """Fabricated rows of two cases in compression.py's format."""
    rows = []
    for case, pre in (("digits/lenet-300-100", 0.97), ("fashion-mnist/lenet-5", 0.91)):
        for k, (method, rate, after) in enumerate(
            [
                ("sws λ=0.01", 40.0, 0.965),
                ("sws λ=0.03", 70.0, 0.955),
                ("dc-han", 35.0, 0.968),
                ("dc-matched to sws λ=0.03", 66.0, 0.940),
            ]
        ):
            rows.append(
                {
                    "case": case,
                    "method": method,
                    "compression_rate": rate + k + (case[0] == "f"),
                    "accuracy_after": after - 0.01 * (case[0] == "f"),
                    "pretrained_accuracy": pre,
                }
            )
    return rows


def _drawn(fig) -> dict[tuple[str, float], float]:
    """Every plotted marker as ``(legend label, x) -> y``, read back from the axes."""
    (ax,) = fig.axes
    points = {}
    for line in ax.lines:
        if line.get_linestyle() == "None":
            for x, y in zip(line.get_xdata(), line.get_ydata()):
                points[(line.get_label(), float(x))] = float(y)
    return points


def test_each_case_figure_draws_its_rows(tmp_path):
    bench = _module("compression")
    rows = _rows()
    paths = bench.save_rate_figures(rows, tmp_path)
    assert [p.name for p in paths] == [
        "digits_lenet-300-100-rate-vs-error.png",
        "fashion-mnist_lenet-5-rate-vs-error.png",
    ]
    families = {
        "sws λ=0.01": "soft weight-sharing",
        "sws λ=0.03": "soft weight-sharing",
        "dc-han": "dc-han",
        "dc-matched to sws λ=0.03": "dc-matched",
    }
    for case in ("digits/lenet-300-100", "fashion-mnist/lenet-5"):
        mine = [r for r in rows if r["case"] == case]
        fig = bench.plot_rate_against_error(
            [bench.row_point(r) for r in mine], title=case, ylabel="Δ"
        )
        expected = {
            (families[r["method"]], r["compression_rate"]): 100
            * (r["pretrained_accuracy"] - r["accuracy_after"])
            for r in mine
        }
        drawn = _drawn(fig)
        assert drawn.keys() == expected.keys()
        for key, value in expected.items():
            np.testing.assert_allclose(drawn[key], value, rtol=1e-12)
        (ax,) = fig.axes
        assert ax.get_xscale() == "log"
        labels = {t.get_text() for t in ax.texts}
        assert labels == {"sws λ=0.01", "sws λ=0.03", "dc-han", "dc-matched, sws λ=0.03"}


def test_validated_trials_are_drawn_the_same_way(tmp_path):
    validated = _module("compression_validated")
    trials = [
        {
            "prior_scale": s,
            "validation_error_before": 0.10,
            "validation_error_after": 0.10 + d,
            "compression_rate": r,
            "chosen": s == 0.22,
        }
        for s, d, r in ((0.15, 0.001, 50.0), (0.22, 0.004, 70.0), (0.33, 0.009, 90.0))
    ]
    rows = [r for r in _rows() if r["case"].startswith("digits")]
    paths = validated.save_figures(
        {"digits/lenet-300-100": {"trials": trials, "rows": rows}}, tmp_path
    )
    assert [p.name for p in paths] == [
        "digits_lenet-300-100-validation-trials.png",
        "digits_lenet-300-100-rate-vs-error.png",
    ]
    fig = _module("compression").plot_rate_against_error(
        validated.trial_points(trials), title="t", ylabel="Δ"
    )
    drawn = _drawn(fig)
    assert drawn.keys() == {
        ("soft weight-sharing", 50.0),
        ("chosen", 70.0),
        ("soft weight-sharing", 90.0),
    }
    for s, d, r in ((0.15, 0.001, 50.0), (0.22, 0.004, 70.0), (0.33, 0.009, 90.0)):
        family = "chosen" if s == 0.22 else "soft weight-sharing"
        np.testing.assert_allclose(drawn[(family, r)], 100 * d, rtol=1e-9)
    assert {t.get_text() for t in fig.axes[0].texts} == {"λ=0.15", "λ=0.22", "λ=0.33"}
