"""What the diagnostics plots draw, read back from the figure and checked against numpy / scipy.

Oracles: bar heights from ``np.histogram``; mixture curves and expected counts per
bin from ``scipy.stats.norm`` (pdf and cdf); highest-density intervals from a
direct search over the sorted draws (the shortest window holding
``floor(p·n)`` steps); clipped-step counts by comparing the losses with the
axis limits read off the figure.
"""

from __future__ import annotations

import re

import numpy as np
import pyro
import pytest
import torch
from conftest import assert_close
from matplotlib.backends.backend_agg import FigureCanvasAgg
from scipy import stats

import bayes_sws as sws
from bayes_sws.diagnostics import posterior as diagnostics
from bayes_sws.infer.mcmc import MCMCResult

az = diagnostics.load_arviz()
NUMBER = r"-?\d+(?:\.\d*)?(?:e[+-]?\d+)?"


def _line(ax, label):
    return next(line for line in ax.get_lines() if line.get_label() == label)


def _steps(ax):
    """The expected counts per bin: the one StepPatch (``ax.stairs``) of the panel."""
    (patch,) = [p for p in ax.patches if p.get_label() == "expected count per bin"]
    values, edges, _ = patch.get_data()
    return np.asarray(values), np.asarray(edges)


def _bars(ax):
    return np.array(
        [p.get_height() for p in ax.patches if p.get_label() != "expected count per bin"]
    )


def _mixture_counts(grid, edges, num, pi, mu, sigma):
    """n·Δ·p̄(grid) and n·P̄(bin) of the draw-averaged mixture; rows of pi, mu, sigma are draws."""
    pi, mu, sigma = (np.atleast_2d(a) for a in (pi, mu, sigma))
    width = edges[1] - edges[0]
    pdf = stats.norm.pdf(grid[:, None, None], mu, sigma)  # grid S M
    curve = num * width * (pi * pdf).sum(-1).mean(-1)
    cdf = stats.norm.cdf(edges[:, None, None], mu, sigma)
    per_bin = num * (pi * np.diff(cdf, axis=0)).sum(-1).mean(-1)
    return curve, per_bin


# ---------------------------------------------------------------------- mixture over histogram
def _narrow_problem():
    rng = np.random.default_rng(1)
    weights = np.concatenate(
        [rng.normal(0, 0.001, 2400), rng.normal(-0.3, 0.05, 800), rng.normal(0.3, 0.05, 800)]
    )
    mixture = (np.array([0.6, 0.2, 0.2]), np.array([0.0, -0.3, 0.3]), np.array([1e-3, 0.05, 0.05]))
    return weights, mixture


def test_mixture_is_drawn_in_counts_per_bin_and_a_narrow_peak_is_clipped_with_its_height():
    """Issue 17: a narrow component's peak of ~8700 over a bar of ~2400 read as an over-prediction."""
    weights, (pi, mu, sigma) = _narrow_problem()
    fig = diagnostics.plot_mixture_over_histogram({"w": weights}, (pi, mu, sigma), bins=100)
    ax = fig.axes[0]
    per_bin, edges = _steps(ax)
    counts, want_edges = np.histogram(weights, bins=100, range=(edges[0], edges[-1]))
    assert_close(edges, want_edges, rtol=1e-12)
    assert_close(_bars(ax), counts)
    grid, curve = _line(ax, "mixture").get_data()
    want_curve, want_per_bin = _mixture_counts(grid, edges, weights.size, pi, mu, sigma)
    assert_close(curve, want_curve, rtol=1e-9)
    assert_close(per_bin, want_per_bin, rtol=1e-9, atol=1e-9)
    zero_bin = np.searchsorted(edges, 0.0) - 1
    assert abs(per_bin[zero_bin] - counts[zero_bin]) < 0.05 * counts[zero_bin]  # step meets bar
    # the y-axis stops at 3x the highest bar or step; the smooth peak above it is labelled
    top = ax.get_ylim()[1]
    assert_close(top, 3 * max(counts.max(), want_per_bin.max()), rtol=1e-12)
    peak = weights.size * (edges[1] - edges[0]) * pi[0] * stats.norm.pdf(0.0, 0.0, 1e-3)
    assert peak > top  # the case of the issue: the smooth peak leaves the axes
    labels = [t for t in ax.texts if t.get_text().startswith("peak")]
    assert len(labels) == 1
    (value,) = re.findall(NUMBER, labels[0].get_text())
    assert_close(float(value), peak, rtol=1e-3)
    assert_close(labels[0].xy, (0.0, top), atol=1e-12)
    assert ax.get_yscale() == "log" and "log" in ax.get_ylabel()


def _tiny_model():
    torch.manual_seed(0)
    return sws.SWSModel(torch.nn.Linear(5, 3, bias=False).double(), sws.MixturePrior(3))


def _mixture_draws(rng, num):
    pi = rng.dirichlet([4.0, 2.0, 2.0], size=num)
    mu = np.stack([np.zeros(num), rng.normal(-0.5, 0.2, num), rng.normal(0.5, 0.2, num)], -1)
    sigma = np.exp(rng.normal(np.log([0.05, 0.1, 0.1]), 0.3, size=(num, 3)))
    return pi, mu, sigma


def test_nuts_mixture_is_the_posterior_averaged_density_and_says_so():
    """Issue 17: the plot drew the mixture at averaged parameters without saying which summary."""
    rng = np.random.default_rng(2)
    model = _tiny_model()
    chains, draws = 3, 7  # 21 draws: an odd count, so the median is one of them
    pi, mu, sigma = _mixture_draws(rng, chains * draws)
    weight_draws = rng.normal(0, 0.5, size=(chains * draws, 3, 5))
    samples = {
        "net.weight": torch.as_tensor(weight_draws.reshape(chains, draws, 3, 5)),
        "sws.pi": torch.as_tensor(pi.reshape(chains, draws, 3)),
        "sws.mu": torch.as_tensor(mu.reshape(chains, draws, 3)),
        "sws.sigma": torch.as_tensor(sigma.reshape(chains, draws, 3)),
    }
    result = MCMCResult(model=model, samples=samples, sample_stats={})
    fig = diagnostics.plot_mixture_over_histogram(result, bins=12)
    ax = fig.axes[0]
    median_weights = np.median(weight_draws, axis=0).reshape(-1)
    per_bin, edges = _steps(ax)
    assert_close(_bars(ax), np.histogram(median_weights, bins=edges)[0])
    grid, curve = _line(ax, "mixture").get_data()
    want_curve, want_per_bin = _mixture_counts(grid, edges, 15, pi, mu, sigma)
    assert_close(curve, want_curve, rtol=1e-9)
    assert_close(per_bin, want_per_bin, rtol=1e-9, atol=1e-12)
    marks = _line(ax, "means").get_xdata()
    assert_close(marks, np.median(mu, axis=0), rtol=1e-12)
    (legend,) = fig.legends
    words = " | ".join(t.get_text() for t in legend.get_texts())
    assert "weights (posterior median)" in words
    assert "density averaged over 21 NUTS draws" in words
    assert "means (median over draws)" in words


def test_guide_mixture_averages_the_guides_draws_and_leaves_the_generators_alone():
    model = _tiny_model()
    x = torch.randn(20, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    result = sws.fit(model, x, y, guide="normal", num_steps=3)
    # the same draws through the ArviZ conversion: both seed Pyro and trace the guide in turn
    post = diagnostics.to_inference_data(result, num_samples=6, num_chains=1, seed=5).posterior
    pi, mu, sigma = (post[name].values[0] for name in ("sws.pi", "sws.mu", "sws.sigma"))
    pyro.set_rng_seed(123)
    before = torch.get_rng_state()
    fig = diagnostics.plot_mixture_over_histogram(result, num_draws=6, seed=5, bins=10)
    assert torch.equal(torch.get_rng_state(), before)
    ax = fig.axes[0]
    grid, curve = _line(ax, "mixture").get_data()
    _, edges = _steps(ax)
    assert_close(curve, _mixture_counts(grid, edges, 15, pi, mu, sigma)[0], rtol=1e-9)
    words = " | ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "density averaged over 6 draws of the normal guide" in words


def test_given_draws_are_averaged_as_draws():
    rng = np.random.default_rng(3)
    pi, mu, sigma = _mixture_draws(rng, 4)
    weights = rng.normal(0, 0.4, 300)
    fig = diagnostics.plot_mixture_over_histogram({"w": weights}, (pi, mu, sigma), bins=30)
    ax = fig.axes[0]
    grid, curve = _line(ax, "mixture").get_data()
    per_bin, edges = _steps(ax)
    want_curve, want_per_bin = _mixture_counts(grid, edges, 300, pi, mu, sigma)
    assert_close(curve, want_curve, rtol=1e-9)
    assert_close(per_bin, want_per_bin, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------- hyperposterior forest
def _shortest_interval(draws, prob):
    """The narrowest window of the sorted draws holding floor(prob·n) steps."""
    ordered = np.sort(draws)
    steps = int(np.floor(prob * ordered.size))
    start = int(np.argmin(ordered[steps:] - ordered[: ordered.size - steps]))
    return ordered[start], ordered[start + steps]


def _hyper_idata(num_components, rng, chains=4, draws=100):
    mu = np.sort(rng.normal(0, 0.5, num_components))
    mu[0] = 0.0
    sigma = 10 ** rng.uniform(-3, -1, num_components)
    pi = rng.dirichlet(np.full(num_components, 5.0))
    shape = (chains, draws, num_components)
    posterior = {  # intervals far narrower than the spread of the components, as in issue 17
        "sws.pi": pi + 0.002 * rng.normal(size=shape),
        "sws.mu": mu + 0.003 * rng.normal(size=shape) * (np.arange(num_components) > 0),
        "sws.sigma": sigma * np.exp(0.05 * rng.normal(size=shape)),
    }
    dims = {name: ["component"] for name in posterior}
    return az.from_dict(
        posterior=posterior, dims=dims, coords={"component": np.arange(num_components)}
    )


def test_forest_at_16_components_is_compact_with_every_interval_visible():
    """Issue 17: a 1188×2596 image, mostly white, with intervals too small to see."""
    rng = np.random.default_rng(4)
    idata = _hyper_idata(16, rng)
    fig = diagnostics.plot_hyperposterior(idata, hdi_prob=0.9)
    width, height = fig.get_size_inches()
    assert width <= 12 and height <= 6
    taller = diagnostics.plot_hyperposterior(_hyper_idata(32, rng)).get_size_inches()[1]
    assert height < taller < 1.8 * height  # grows with the components, gently
    FigureCanvasAgg(fig).draw()
    for ax, name in zip(fig.axes, ("sws.pi", "sws.mu", "sws.sigma"), strict=True):
        assert ax.get_title() == name
        assert [t.get_text() for t in ax.get_yticklabels()] == [str(j) for j in range(16)]
        lines = {line.get_gid(): line for line in ax.get_lines() if line.get_gid()}
        values = idata.posterior[name].values
        for j in range(16):
            pooled = values[:, :, j].reshape(-1)
            median, sd = np.median(pooled), pooled.std()
            lo, hi = _shortest_interval(pooled, 0.9)
            (text,) = [t for t in ax.texts if t.get_position()[1] == j]
            if sd == 0:  # the zero component's mean
                assert text.get_text() == "0 (fixed)" and f"{name}[{j}] fixed" in lines
                continue
            printed = [float(v) for v in re.findall(NUMBER, text.get_text())]
            assert_close(printed, [median, lo, hi], atol=0.05 * (hi - lo))
            assert_close(
                lines[f"{name}[{j}] all"].get_xdata(), [(lo - median) / sd, (hi - median) / sd]
            )
            for c in range(values.shape[0]):
                chain_lo, chain_hi = _shortest_interval(values[c, :, j], 0.9)
                line = lines[f"{name}[{j}] chain {c}"]
                assert_close(line.get_xdata(), [(chain_lo - median) / sd, (chain_hi - median) / sd])
                pixels = ax.transData.transform(np.column_stack(line.get_data()))
                assert pixels[1, 0] - pixels[0, 0] > 15  # visible: more than 15 px wide


def test_forest_of_a_scalar_variable_has_one_row():
    rng = np.random.default_rng(5)
    draws = 3.0 + 0.1 * rng.normal(size=(2, 50))
    idata = az.from_dict(posterior={"likelihood.precision": draws})
    fig = diagnostics.plot_hyperposterior(idata, var_names=["likelihood.precision"])
    (ax,) = fig.axes
    lo, hi = _shortest_interval(draws.reshape(-1), 0.94)
    (text,) = ax.texts
    printed = [float(v) for v in re.findall(NUMBER, text.get_text())]
    assert_close(printed, [np.median(draws), lo, hi], atol=0.05 * (hi - lo))


def test_posterior_densities_at_16_components_fit_a_page():
    """Issue 17: ``kind="posterior"`` was 45 inches wide at 16 components (one row per variable)."""
    rng = np.random.default_rng(7)
    idata = _hyper_idata(16, rng)
    fig = diagnostics.plot_hyperposterior(idata, kind="posterior", hdi_prob=0.9)
    width, height = fig.get_size_inches()
    assert width <= 14 and height <= 10
    FigureCanvasAgg(fig).draw()
    panels = [ax for ax in fig.axes if ax.get_visible()]
    expected = [
        (name, j)
        for name in ("sws.pi", "sws.mu", "sws.sigma")
        for j in range(16)
        if not (name == "sws.mu" and j == 0)  # the zero component's fixed mean: no density
    ]
    assert [ax.get_title() for ax in panels] == [f"{name}[{j}]" for name, j in expected]
    for ax, (name, j) in zip(panels, expected, strict=True):
        pooled = idata.posterior[name].values[:, :, j].reshape(-1)
        lines = ax.get_lines()
        (hdi_line,) = [line for line in lines if len(line.get_xdata()) == 2]
        assert_close(hdi_line.get_xdata(), _shortest_interval(pooled, 0.9), rtol=1e-12)
        (density,) = [line for line in lines if len(line.get_xdata()) > 2]
        grid, values = (np.asarray(v, dtype=float) for v in density.get_data())
        spread = pooled.max() - pooled.min()  # the KDE's grid: the draws' range, to its spacing
        assert_close([grid[0], grid[-1]], [pooled.min(), pooled.max()], atol=0.01 * spread)
        assert_close(np.trapezoid(values, grid), 1.0, atol=0.05)  # a density over the draws
        (mean_text,) = [t for t in ax.texts if t.get_text().startswith("mean=")]
        printed = float(mean_text.get_text().removeprefix("mean="))
        assert_close(printed, pooled.mean(), rtol=0.05)  # printed to two significant digits
        left, right = ax.get_window_extent().x0, ax.get_window_extent().x1
        assert right - left > 80  # a panel wide enough to read: more than 80 px at 100 dpi


# ---------------------------------------------------------------------- loss
def _clip_note(fig):
    match = re.search(rf"(\d+) steps above \(max ({NUMBER})\)", fig.get_suptitle())
    assert match, fig.get_suptitle()
    return int(match.group(1)), float(match.group(2))


def test_loss_plot_says_how_much_of_the_start_it_clips_and_shows_the_whole_run():
    """Issue 17: the loss plot clipped the start of the curve without saying so."""
    rng = np.random.default_rng(6)
    steps = np.arange(2000)
    losses = 5e6 * np.exp(-steps / 30) + 300 - 0.02 * steps + 3 * rng.normal(size=steps.size)
    fig = diagnostics.plot_loss(losses)
    top, main = fig.axes
    low, high = main.get_ylim()
    tail = losses[1000:]
    assert low <= np.percentile(tail, 0.5) and np.percentile(tail, 99.5) <= high
    count, largest = _clip_note(fig)
    assert count == int((losses > high).sum()) and count > 0
    assert_close(largest, losses.max(), rtol=1e-3)
    assert "below" not in fig.get_suptitle() and not (losses < low).any()
    # the top panel: every step, on a log axis, with the zoomed range shaded
    assert_close(top.get_lines()[0].get_ydata(), losses)
    assert top.get_yscale() == "log"
    (band,) = top.patches
    assert_close([band.get_y(), band.get_y() + band.get_height()], [low, high], rtol=1e-12)


def test_loss_plot_with_negative_losses_uses_symlog_and_names_both_sides():
    steps = np.arange(400)
    losses = -50.0 + 5e4 * np.exp(-steps / 10)
    losses[300] = -400.0  # one spike below the range
    fig = diagnostics.plot_loss(losses)
    top, main = fig.axes
    low, high = main.get_ylim()
    assert top.get_yscale() == "symlog"
    match = re.search(rf"(\d+) steps below \(min ({NUMBER})\)", fig.get_suptitle())
    assert match and int(match.group(1)) == int((losses < low).sum()) == 1
    assert_close(float(match.group(2)), -400.0)
    assert _clip_note(fig)[0] == int((losses > high).sum())


def test_loss_plot_without_clipping_is_one_panel_and_says_nothing():
    losses = 50 + np.sin(np.linspace(0, 40 * np.pi, 1000))
    fig = diagnostics.plot_loss(losses)
    (ax,) = fig.axes
    low, high = ax.get_ylim()
    assert low < losses.min() and losses.max() < high
    assert fig.get_suptitle() == "" and ax.get_title() == "loss"
    assert_close(ax.get_lines()[0].get_ydata(), losses)
    window = 1000 // 50
    smooth = np.array([losses[i - window + 1 : i + 1].mean() for i in range(window - 1, 1000)])
    assert_close(_line(ax, f"moving average ({window})").get_ydata(), smooth, rtol=1e-12)


def test_nuts_loss_plot_draws_minus_lp_per_chain():
    lp = np.random.default_rng(7).normal(-20, 2, size=(3, 40))
    result = MCMCResult(model=_tiny_model(), samples={}, sample_stats={"lp": lp})
    fig = diagnostics.plot_loss(result)
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["chain 0", "chain 1", "chain 2"]
    for line, chain in zip(lines, lp, strict=True):
        assert_close(line.get_ydata(), -chain)


@pytest.mark.parametrize("bad", [[], np.array([])])
def test_loss_plot_refuses_an_empty_trace(bad):
    with pytest.raises(ValueError, match="no losses"):
        diagnostics.plot_loss(bad)
