"""The benchmarks' rate-against-error figures draw exactly the rows' (rate, Δ error) values."""

import numpy as np
from conftest import benchmark_module


def _module(name):
    return benchmark_module(name)


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
        goal = bench.CASES[case].goal[1]  # digits: 2 points (issue 4), Fashion-MNIST: 0.5
        fig = bench.plot_rate_against_error(
            [bench.row_point(r) for r in mine], title=case, ylabel="Δ", margin=(goal, "goal")
        )
        # the row chosen on validation is marked apart (digits LeNet-300-100's λ = 0.03)
        chosen = bench.CASES[case].chosen
        expected = {
            (
                "chosen on validation" if r["method"] == chosen else families[r["method"]],
                r["compression_rate"],
            ): 100 * (r["pretrained_accuracy"] - r["accuracy_after"])
            for r in mine
        }
        drawn = _drawn(fig)
        assert drawn.keys() == expected.keys()
        for key, value in expected.items():
            np.testing.assert_allclose(drawn[key], value, rtol=1e-12)
        (ax,) = fig.axes
        assert ax.get_xscale() == "log"
        (dashed,) = [line for line in ax.lines if line.get_linestyle() == "--"]
        assert list(dashed.get_ydata()) == [goal, goal]
        assert dashed.get_label() == f"+{goal:g} points (goal)"
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
        ("chosen on validation", 70.0),
        ("soft weight-sharing", 90.0),
    }
    for s, d, r in ((0.15, 0.001, 50.0), (0.22, 0.004, 70.0), (0.33, 0.009, 90.0)):
        family = "chosen on validation" if s == 0.22 else "soft weight-sharing"
        np.testing.assert_allclose(drawn[(family, r)], 100 * d, rtol=1e-9)
    assert {t.get_text() for t in fig.axes[0].texts} == {"λ=0.15", "λ=0.22", "λ=0.33"}


def _fronts_fixture():
    """λ trials and Deep Compression validation runs with hand-set errors and rates."""
    before = 0.05
    trials = [
        {
            "prior_scale": s,
            "validation_error_before": before,
            "validation_error_after": before + d,
            "compression_rate": r,
            "chosen": s == 0.03,
        }
        for s, d, r in ((0.01, 0.000, 20.0), (0.03, 0.004, 45.0), (0.1, 0.020, 120.0))
    ]
    dc = [
        {
            "label": label,
            "family": family,
            "validation_error_before": before,
            "validation_error_after": before + d,
            "compression_rate": r,
        }
        for label, family, d, r in (
            ("matched λ=0.01", "dc-matched", 0.002, 18.0),
            ("matched λ=0.03", "dc-matched", 0.010, 40.0),
            ("matched λ=0.1", "dc-matched", 0.060, 110.0),
            ("Han, keep ×2", "dc-han", 0.001, 6.0),
            ("Han", "dc-han", 0.0015, 12.0),
            ("Han, keep ×0.5", "dc-han", 0.012, 22.0),  # beaten by matched λ=0.03
        )
    ]
    return trials, dc


def _label_boxes_overlap(fig, labels) -> bool:
    """Whether any two of the drawn text objects' boxes overlap on the rendered canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    boxes = [t.get_window_extent() for t in labels if t.get_visible() and t.get_text()]
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


def test_validation_figure_draws_both_fronts(tmp_path):
    validated = _module("compression_validated")
    trials, dc = _fronts_fixture()
    validated.save_figures(
        {"digits/lenet-5": {"trials": trials, "dc_trials": dc, "rows": []}}, tmp_path
    )
    assert (tmp_path / "digits_lenet-5-validation-trials.png").exists()
    fig = _module("compression").plot_rate_against_error(
        validated.trial_points(trials, dc), title="t", ylabel="Δ", fronts=validated.FRONTS
    )
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"
    # every marker: (family, rate) -> 100 × (after − before), from the records by hand
    expected = {
        ("soft weight-sharing", 20.0): 0.0,
        ("chosen on validation", 45.0): 0.4,
        ("soft weight-sharing", 120.0): 2.0,
        ("dc-matched", 18.0): 0.2,
        ("dc-matched", 40.0): 1.0,
        ("dc-matched", 110.0): 6.0,
        ("dc-han", 6.0): 0.1,
        ("dc-han", 12.0): 0.15,
        ("dc-han", 22.0): 1.2,
    }
    drawn = _drawn(fig)
    assert drawn.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_allclose(drawn[key], value, atol=1e-9)
    # the two fronts: the non-dominated points of each method, by rising rate (by hand)
    fronts = {
        line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
        for line in ax.lines
        if line.get_linestyle() == "-" and line.get_label().endswith(" front")
    }
    assert fronts.keys() == {"soft weight-sharing front", "Deep Compression front"}
    np.testing.assert_allclose(fronts["soft weight-sharing front"][0], [20.0, 45.0, 120.0])
    np.testing.assert_allclose(fronts["soft weight-sharing front"][1], [0.0, 0.4, 2.0], atol=1e-9)
    np.testing.assert_allclose(fronts["Deep Compression front"][0], [6.0, 12.0, 18.0, 40.0, 110.0])
    np.testing.assert_allclose(
        fronts["Deep Compression front"][1], [0.1, 0.15, 0.2, 1.0, 6.0], atol=1e-9
    )
    assert {t.get_text() for t in ax.texts} == {f"λ={t['prior_scale']:g}" for t in trials} | {
        t["label"] for t in dc
    }
    legend = {t.get_text() for t in fig.legends[0].get_texts()}
    assert {"soft weight-sharing front", "Deep Compression front", "chosen on validation"} <= legend
    assert not _label_boxes_overlap(fig, ax.get_xticklabels(which="both"))
    assert not _label_boxes_overlap(fig, ax.get_yticklabels(which="both"))
    assert not _label_boxes_overlap(fig, ax.texts)  # the points' labels


def test_each_label_is_nearer_its_own_point_than_any_other():
    """Fashion-MNIST LeNet-5's grid of 2026-12-06: a label once sat between the chosen row's
    star and the λ = 0.12 point, about as near the star (11 px) as its own point (10 px).
    Geometry, in pixels: every label's box is at least 1.5 times nearer its own marker than
    any other marker."""
    import math

    bench = _module("compression")
    rows = [  # (label, family, rate, Δ error in points), as in that grid
        ("sws λ=0.095", "soft weight-sharing", 101.0, 0.21),
        ("sws λ=0.105", "chosen", 106.8, 0.88),
        ("sws λ=0.12", "soft weight-sharing", 117.4, 0.86),
        ("dc-han", "dc-han", 35.7, -0.18),
        ("dc-matched, sws λ=0.095", "dc-matched", 91.6, 1.32),
        ("dc-matched, sws λ=0.105", "dc-matched", 96.6, 1.49),
        ("dc-matched, sws λ=0.12", "dc-matched", 107.4, 1.85),
    ]
    points = [{"label": a, "family": f, "rate": r, "error": e} for a, f, r, e in rows]
    fig = bench.plot_rate_against_error(points, title="t", ylabel="Δ")
    fig.draw_without_rendering()  # drawn at bench.FIGURE_DPI, where the labels were placed
    ax = fig.axes[0]
    centres = {p["label"]: ax.transData.transform((p["rate"], p["error"])) for p in points}

    def gap(box, xy):
        x, y = xy
        return math.hypot(max(box.x0 - x, 0, x - box.x1), max(box.y0 - y, 0, y - box.y1))

    texts = {t.get_text(): t.get_window_extent() for t in ax.texts}
    assert texts.keys() == centres.keys()
    for label, box in texts.items():
        own = gap(box, centres[label])
        nearest_other = min(gap(box, xy) for other, xy in centres.items() if other != label)
        assert 1.5 * own <= nearest_other, (label, own, nearest_other)


def test_point_labels_name_the_split_of_a_chosen_settings_rows():
    """One chosen setting read on several splits: each point is labelled by its split (the
    long common name would stack the labels on one another); other rows keep their name."""
    bench = _module("compression")
    label = "sws λ=0.07, units pruned within 0.005 (chosen on validation)"
    row = {"case": "c", "compression_rate": 80.0, "accuracy_after": 0.9, "pretrained_accuracy": 0.9}
    names = {
        f"{label}, split 1": "split 1",
        f"{label}, mean over splits 0, 1, 2": "mean over splits 0, 1, 2",
        label: "sws λ=0.07, units pruned within 0.005",
        "dc-matched to sws λ=0.07, units pruned within 0.005": "dc-matched, sws λ=0.07, "
        "units pruned within 0.005",
    }
    for method, expected in names.items():
        assert bench.row_point({**row, "method": method})["label"] == expected
