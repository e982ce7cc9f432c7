"""plot_mixture_evolution draws what the history holds: checked against numpy and scipy."""

import numpy as np
import pytest
from matplotlib.patches import StepPatch
from scipy.stats import norm

from bayes_sws.compress.plots import plot_mixture_evolution
from bayes_sws.diagnostics.posterior import mixture_bin_mass


def _history(num_records=5, seed=0):
    rng = np.random.default_rng(seed)
    edges = np.linspace(-0.5, 0.5, 41)
    snapshots = []
    for k in range(num_records):
        weights = np.concatenate([rng.normal(0, 0.15 / (k + 1), 300), rng.normal(0.25, 0.02, 50)])
        counts, _ = np.histogram(np.clip(weights, edges[0], edges[-1]), bins=edges)
        snapshots.append(
            {
                "step": 10 * k,
                "counts": counts.tolist(),
                "pi": [0.8, 0.2],
                "mu": [0.0, 0.25],
                "sigma": [0.15 / (k + 1), 0.02],
            }
        )
    return {"edges": edges.tolist(), "num_steps": 10 * (num_records - 1), "snapshots": snapshots}


def test_mixture_bin_mass_is_the_cdf_difference():
    edges = np.linspace(-1, 1, 9)
    pi, mu, sigma = np.array([0.3, 0.7]), np.array([-0.2, 0.4]), np.array([0.1, 0.5])
    expected = pi * (norm.cdf(edges[1:, None], mu, sigma) - norm.cdf(edges[:-1, None], mu, sigma))
    np.testing.assert_allclose(
        mixture_bin_mass(pi, mu, sigma, edges), expected, rtol=1e-12, atol=1e-15
    )


def test_each_panel_draws_the_counts_and_the_expected_counts(tmp_path):
    history = _history()
    fig = plot_mixture_evolution(history)
    fig.savefig(tmp_path / "mixture_evolution.png")  # renders without error
    edges = np.asarray(history["edges"])
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == len(history["snapshots"])
    for ax, snapshot in zip(panels, history["snapshots"]):
        bars, steps = [p for p in ax.patches if isinstance(p, StepPatch)]
        counts = np.asarray(snapshot["counts"], dtype=float)
        np.testing.assert_array_equal(bars.get_data().values, counts)
        np.testing.assert_array_equal(bars.get_data().edges, edges)
        pi, mu, sigma = (np.asarray(snapshot[k]) for k in ("pi", "mu", "sigma"))
        oracle = counts.sum() * (
            pi * (norm.cdf(edges[1:, None], mu, sigma) - norm.cdf(edges[:-1, None], mu, sigma))
        ).sum(-1)
        np.testing.assert_allclose(steps.get_data().values, oracle, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(ax.lines[0].get_xdata(), mu)
        assert ax.get_title().startswith(f"step {snapshot['step']}")
        assert ax.get_yscale() == "log"


def test_an_empty_history_is_refused():
    with pytest.raises(ValueError, match="no records"):
        plot_mixture_evolution({"edges": [0.0, 1.0], "snapshots": []})
