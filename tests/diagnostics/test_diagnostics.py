"""ArviZ conversion and plots.

Oracles: log-likelihoods and posterior-predictive noise are recomputed in numpy /
scipy from the weights stored in the InferenceData itself; dimension names and
sizes are read off the network's layers.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings

import numpy as np
import pytest
import torch
from conftest import assert_close
from scipy import stats

import bayes_sws as sws
from bayes_sws.diagnostics import posterior as diagnostics
from bayes_sws.infer.mcmc import sample_nuts

az = diagnostics.load_arviz()

NUM_DATA, BETA = 24, 25.0
# what "a warning about shapes" looks like in ArviZ / xarray (not Pareto k's "shape parameter")
SHAPE_WARNING = re.compile(
    r"shape validation|input_shape|dims|dimension|shape mismatch|broadcast", re.IGNORECASE
)


def _problem():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)
    ).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(NUM_DATA, 2, generator=g, dtype=torch.float64)
    y = torch.sin(2 * x[:, 0]) + 0.2 * torch.randn(NUM_DATA, generator=g, dtype=torch.float64)
    prior = sws.MixturePrior(3, zero_component=True, ordered_means=True, precision_rate=0.5)
    model = sws.SWSModel(net, prior, likelihood=sws.Gaussian(precision=BETA))
    return model, x, y


@pytest.fixture(scope="module")
def fits():
    model, x, y = _problem()
    svi = sws.fit(model, x, y, guide="normal", num_steps=60, lr=0.02, init_scale=0.01)
    nuts = sample_nuts(
        model, x, y, num_samples=30, warmup_steps=15, num_chains=2, max_tree_depth=4, seed=0
    )
    return model, x, y, svi, nuts


@pytest.fixture(scope="module")
def idatas(fits):
    _, x, y, svi, nuts = fits
    return (
        diagnostics.to_inference_data(svi, x, y, weights="all"),
        diagnostics.to_inference_data(nuts, x, y, weights=["0.weight", "net.2.weight"]),
    )


def _network_output(model, idata, chain, draw, x):
    """f(x) in numpy from the weights stored in idata and the network's (fixed) biases."""
    post = idata.posterior
    w0 = post["net.0.weight"].values[chain, draw]
    w2 = post["net.2.weight"].values[chain, draw]
    b0, b2 = (model.net[i].bias.detach().numpy() for i in (0, 2))
    return (np.tanh(x @ w0.T + b0) @ w2.T + b2)[:, 0]


# ---------------------------------------------------------------------- groups and dims
@pytest.mark.parametrize("kind", ["svi", "nuts"])
def test_groups_dims_and_coords(idatas, kind):
    idata = idatas[0] if kind == "svi" else idatas[1]
    expected = {
        "posterior",
        "posterior_predictive",
        "log_likelihood",
        "observed_data",
        "constant_data",
    }
    if kind == "nuts":
        expected.add("sample_stats")
    assert set(idata.groups()) == expected
    post = idata.posterior
    num_chains, num_draws = (4, 50) if kind == "svi" else (2, 30)
    assert (post.sizes["chain"], post.sizes["draw"]) == (num_chains, num_draws)
    for name in ("sws.pi", "sws.mu", "sws.sigma", "sws.precisions"):
        assert post[name].dims == ("chain", "draw", "component"), name
    for name in ("sws.means", "sws.mixing"):
        assert post[name].dims == ("chain", "draw", "nonzero_component"), name
    assert post["sws.pi_zero"].dims == ("chain", "draw")
    assert list(post["component"].values) == [0, 1, 2]
    assert list(post["nonzero_component"].values) == [1, 2]
    assert post["net.0.weight"].dims == ("chain", "draw", "net.0.out_features", "net.0.in_features")
    assert post["net.0.weight"].shape[2:] == (4, 2)
    assert post["net.2.weight"].dims == ("chain", "draw", "net.2.out_features", "net.2.in_features")
    for group in ("posterior_predictive", "log_likelihood"):
        assert idata[group]["obs"].dims == ("chain", "draw", "data")
        assert idata[group]["obs"].shape[2] == NUM_DATA
    assert idata.observed_data["obs"].dims == ("data",)
    assert idata.constant_data["x"].dims == ("data", "feature")
    assert idata.posterior.attrs["inference_library"] == "pyro"
    assert idata.attrs["method"] == ("NUTS" if kind == "nuts" else "SVI guide=normal")


def test_mixture_variables_are_consistent(idatas):
    """sws.pi = (π₀, (1 − π₀)·mixing), sws.mu = (0, means), sws.sigma = precisions^-½."""
    for idata in idatas:
        post = idata.posterior
        pi0 = post["sws.pi_zero"].values
        assert_close(post["sws.pi"].values[..., 0], pi0, rtol=1e-12)
        assert_close(
            post["sws.pi"].values[..., 1:],
            (1 - pi0)[..., None] * post["sws.mixing"].values,
            rtol=1e-12,
        )
        assert np.all(post["sws.mu"].values[..., 0] == 0)
        assert np.all(np.diff(post["sws.means"].values, axis=-1) > 0)  # ordered_means=True
        assert_close(post["sws.sigma"].values, post["sws.precisions"].values ** -0.5, rtol=1e-12)


def test_nuts_posterior_and_sample_stats_are_the_chains(fits, idatas):
    _, _, _, _, nuts = fits
    idata = idatas[1]
    assert_close(
        idata.posterior["net.0.weight"].values, nuts.samples["net.0.weight"].numpy(), rtol=0
    )
    stats_ = idata.sample_stats
    for name in (
        "diverging",
        "tree_depth",
        "n_steps",
        "acceptance_rate",
        "energy",
        "lp",
        "step_size",
    ):
        assert stats_[name].dims == ("chain", "draw"), name
        assert_close(stats_[name].values, nuts.sample_stats[name], rtol=0)
    assert stats_["diverging"].dtype == bool


@pytest.mark.parametrize("kind", ["svi", "nuts"])
def test_log_likelihood_and_predictive_match_numpy(fits, idatas, kind):
    model, x, y, _, _ = fits
    idata = idatas[0] if kind == "svi" else idatas[1]
    x_np, y_np = x.numpy(), y.numpy()
    noise = []
    for chain in range(idata.posterior.sizes["chain"]):
        for draw in (0, idata.posterior.sizes["draw"] - 1):
            f = _network_output(model, idata, chain, draw, x_np)
            expected = stats.norm(f, BETA**-0.5).logpdf(y_np)
            assert_close(idata.log_likelihood["obs"].values[chain, draw], expected, rtol=1e-10)
        f_all = np.stack(
            [
                _network_output(model, idata, chain, d, x_np)
                for d in range(idata.posterior.sizes["draw"])
            ]
        )
        noise.append((idata.posterior_predictive["obs"].values[chain] - f_all) * BETA**0.5)
    z = np.concatenate(noise).ravel()  # standard normal if obs ~ N(f, 1/β)
    assert abs(z.mean()) <= 4 / np.sqrt(z.size)
    assert abs(z.var() - 1) <= 4 * np.sqrt(2 / z.size)
    assert_close(idata.observed_data["obs"].values, y_np, rtol=0)


def test_svi_draws_split_into_pseudo_chains_and_seeded(fits):
    _, x, y, svi, _ = fits
    a = diagnostics.to_inference_data(svi, x, y, num_samples=30, num_chains=3, seed=5)
    b = diagnostics.to_inference_data(svi, x, y, num_samples=30, num_chains=3, seed=5)
    assert (a.posterior.sizes["chain"], a.posterior.sizes["draw"]) == (3, 10)
    assert a.posterior.equals(b.posterior) and a.posterior_predictive.equals(b.posterior_predictive)
    one = diagnostics.to_inference_data(svi, num_samples=8, num_chains=1)
    assert set(one.groups()) == {"posterior"} and one.posterior.sizes["chain"] == 1
    with pytest.raises(ValueError, match="multiple of num_chains"):
        diagnostics.to_inference_data(svi, num_samples=10, num_chains=4)


def test_predictive_mean_and_predictive_draws(fits):
    _, x, y, svi, nuts = fits
    idata = diagnostics.to_inference_data(nuts, x, y, predictive_mean=True)
    assert idata.posterior["predictive_mean"].dims == ("chain", "draw", "data")
    f = diagnostics.predictive_draws(nuts, x)
    assert f.shape == (2, 30, NUM_DATA)
    assert_close(idata.posterior["predictive_mean"].values, f, rtol=1e-12)
    assert_close(f.mean(axis=(0, 1)), nuts.predict(x), rtol=1e-10)
    assert diagnostics.predictive_draws(svi, x[:5], num_samples=8, num_chains=2).shape == (2, 4, 5)


def test_weight_dims_for_conv_layers_and_biases():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4, 3)
    ).double()
    model = sws.SWSModel(net, sws.MixturePrior(3, include_bias=True))
    x = torch.randn(6, 1, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (6,))
    result = sws.fit(model, x, y, guide="normal", num_steps=2)
    idata = diagnostics.to_inference_data(result, x, y, num_samples=8, num_chains=2, weights="all")
    post = idata.posterior
    assert post["net.0.weight"].dims[2:] == (
        "net.0.out_channels",
        "net.0.in_channels",
        "net.0.kernel_height",
        "net.0.kernel_width",
    )
    assert post["net.0.bias"].dims[2:] == ("net.0.out_channels",)
    assert post["net.3.bias"].dims[2:] == ("net.3.out_features",)
    assert idata.constant_data["x"].dims == ("data", "x_dim_1", "x_dim_2", "x_dim_3")
    assert idata.log_likelihood["obs"].dims == ("chain", "draw", "data")


def test_bad_arguments(fits):
    model, x, y, svi, _ = fits
    with pytest.raises(TypeError, match="FitResult"):
        diagnostics.to_inference_data(model, x, y)
    with pytest.raises(ValueError, match="without x"):
        diagnostics.to_inference_data(svi, y=y)
    with pytest.raises(ValueError, match="not a parameter with the prior"):
        diagnostics.to_inference_data(svi, weights=["0.bias"])
    with pytest.raises(ValueError, match="mixture is required"):
        diagnostics.plot_mixture_over_histogram(model.net)
    with pytest.raises(ValueError, match="kind"):
        diagnostics.plot_hyperposterior(
            diagnostics.to_inference_data(svi, num_samples=8, num_chains=2), kind="trace"
        )


# ---------------------------------------------------------------------- ArviZ functions
def test_arviz_summary_loo_waic_compare_without_shape_warnings(idatas, caplog):
    svi, nuts = idatas
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for idata in (svi, nuts):
            summary = az.summary(idata, var_names=["sws.pi", "sws.mu", "sws.sigma"])
            assert len(summary) == 9 and summary["r_hat"].notna().sum() >= 8  # μ₀ = 0 is constant
            loo, waic = az.loo(idata, pointwise=True), az.waic(idata, pointwise=True)
            assert loo.loo_i.shape == (NUM_DATA,) and np.isfinite(loo.elpd_loo)
            assert np.isfinite(waic.elpd_waic)
        comparison = az.compare({"normal guide": svi, "NUTS": nuts})
        assert set(comparison.index) == {"normal guide", "NUTS"}
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if SHAPE_WARNING.search(m)], messages


def test_netcdf_round_trip_is_identical(idatas, tmp_path):
    for i, idata in enumerate(idatas):
        path = tmp_path / f"posterior{i}.nc"
        idata.to_netcdf(str(path))
        loaded = az.from_netcdf(str(path))
        assert set(loaded.groups()) == set(idata.groups())
        for group in idata.groups():
            assert loaded[group].equals(idata[group]), group
            assert {k: v.dtype for k, v in loaded[group].data_vars.items()} == {
                k: v.dtype for k, v in idata[group].data_vars.items()
            }
        assert loaded.attrs["config"] == idata.attrs["config"]
        assert loaded.posterior.attrs == idata.posterior.attrs


# ---------------------------------------------------------------------- plots
def _saved(fig, tmp_path, name):
    from matplotlib.figure import Figure

    assert isinstance(fig, Figure)
    path = tmp_path / f"{name}.png"
    fig.savefig(path, dpi=30)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return fig


def test_every_plot_returns_a_figure_and_saves_png(fits, idatas, tmp_path):
    model, _, _, svi, nuts = fits
    fig = _saved(diagnostics.plot_mixture_over_histogram(svi), tmp_path, "mix_svi")
    assert sum(ax.get_visible() for ax in fig.axes) == 3  # pooled + two layers
    assert fig.axes[0].get_yscale() == "log"
    _saved(diagnostics.plot_mixture_over_histogram(nuts, per_layer=False), tmp_path, "mix_nuts")
    mixture = svi.mixture()
    _saved(diagnostics.plot_mixture_over_histogram(model.net, tuple(mixture)), tmp_path, "mix_net")
    _saved(
        diagnostics.plot_mixture_over_histogram({"w": np.linspace(-1, 1, 50)}, mixture._asdict()),
        tmp_path,
        "mix_dict",
    )
    _saved(diagnostics.plot_loss(svi), tmp_path, "loss_svi")
    _saved(diagnostics.plot_loss(nuts), tmp_path, "loss_nuts")
    _saved(diagnostics.plot_loss(np.linspace(10, 1, 200)), tmp_path, "loss_array")
    for kind in ("forest", "posterior"):
        _saved(diagnostics.plot_hyperposterior(idatas[1], kind=kind), tmp_path, f"hyper_{kind}")
    before = {n: p.detach() for n, p in model.parameters_with_prior().items()}
    after = {n: svi.median()[model.site_name(n)] for n in model.prior_param_names}
    _saved(diagnostics.plot_weights_before_after(before, after), tmp_path, "before_after")


def test_mixture_curve_is_expected_counts(tmp_path):
    """The drawn curve is n·Δ·p(w): its area over the bins equals the number of weights."""
    weights = np.random.default_rng(0).normal(0, 0.3, 400)
    fig = diagnostics.plot_mixture_over_histogram(
        {"w": weights},
        (np.array([1.0]), np.array([0.0]), np.array([0.3])),
        components=False,
        bins=40,
    )
    ax = fig.axes[0]
    curve = next(line for line in ax.get_lines() if line.get_label() == "mixture")
    grid, counts = curve.get_data()
    width = ax.patches[0].get_width()
    assert_close(np.trapezoid(counts, grid) / width, 400, rtol=0.01)


# ---------------------------------------------------------------------- lazy import
def test_only_diagnostics_imports_arviz_and_only_lazily(monkeypatch):
    import ast
    import pathlib

    for path in pathlib.Path(sws.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        imports = [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            and any(a.name.split(".")[0] == "arviz" for a in node.names)
            or isinstance(node, ast.ImportFrom)
            and (node.module or "").split(".")[0] == "arviz"
        ]
        if path.name != "diagnostics.py":
            assert not imports, f"{path.name} imports arviz"
        top_level = [node for node in tree.body if node in imports]
        assert not top_level, f"{path.name} imports arviz at module level"
    monkeypatch.setitem(sys.modules, "arviz", None)
    with pytest.raises(ImportError, match="pip install"):
        diagnostics.load_arviz()


def test_vector_targets_and_class_probabilities_get_named_dims():
    torch.manual_seed(0)
    x = torch.randn(10, 3, dtype=torch.float64)
    regression = sws.SWSModel(
        torch.nn.Linear(3, 2).double(), sws.MixturePrior(2), likelihood="gaussian"
    )
    fit = sws.fit(
        regression, x, torch.randn(10, 2, dtype=torch.float64), guide="normal", num_steps=2
    )
    idata = diagnostics.to_inference_data(
        fit,
        x,
        torch.randn(10, 2, dtype=torch.float64),
        num_samples=8,
        num_chains=2,
        predictive_mean=True,
    )
    assert idata.posterior_predictive["obs"].dims == ("chain", "draw", "data", "output")
    assert idata.log_likelihood["obs"].dims == ("chain", "draw", "data")
    assert idata.posterior["predictive_mean"].dims == ("chain", "draw", "data", "output")
    classifier = sws.SWSModel(torch.nn.Linear(3, 4).double(), sws.MixturePrior(2))
    fit = sws.fit(classifier, x, torch.arange(10) % 4, guide="normal", num_steps=2)
    idata = diagnostics.to_inference_data(
        fit, x, torch.arange(10) % 4, num_samples=8, num_chains=2, predictive_mean=True
    )
    assert idata.posterior["predictive_mean"].dims == ("chain", "draw", "data", "class")
    assert_close(
        idata.posterior["predictive_mean"].sum("class").values, np.ones((2, 4, 10)), rtol=1e-12
    )
    assert idata.posterior_predictive["obs"].dtype.kind == "i"
