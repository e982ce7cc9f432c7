r"""Posterior recovery against closed forms, and the NUTS front end.

The oracle: with no hidden layer (``nn.Linear(d, 1, bias=False)``), a Gaussian
likelihood of known precision :math:`\beta` and a single fixed zero-mean Gaussian
prior component of precision :math:`\alpha` raised to :math:`\lambda`
(``poutine.scale``), the posterior is exactly Gaussian (PRML 3.53–3.54 with
:math:`\alpha \to \lambda\alpha`):

.. math::

    S^{-1} = \lambda\alpha I + \beta X^\top X, \qquad m = \beta S X^\top y.

It is computed here in numpy, independently of the package. The slow tests at the
end sample a tiny tanh regression network with NUTS and check R-hat / ESS on
identifiable quantities, for ordered and unordered component means.
"""

from __future__ import annotations

import functools
import math
import time

import numpy as np
import pyro
import pytest
import torch
from conftest import assert_close
from pyro.infer.autoguide import AutoNormal
from scipy import stats

import bayes_sws as sws
from bayes_sws.infer.mcmc import MCMCResult, sample_nuts
from bayes_sws.infer.svi import local_params

ALPHA, BETA, LAMBDA = 2.0, 4.0, 0.5
D, N = 3, 40
Z_MC = 4.0  # Monte Carlo tolerance in standard errors: two-sided P(|Z| > 4) = 6e-5 per check


def _design(kind: str, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets in float64: correlated inputs, or exactly orthogonal columns."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((N, D))
    if kind == "orthogonal":  # X^T X diagonal: the exact posterior factorises
        q, _ = np.linalg.qr(z)
        x = q * np.sqrt(N) * np.array([1.0, 0.7, 1.3])
    else:  # strongly correlated columns: mean field is visibly wrong
        x = z @ np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.5, 0.3, 0.8]]).T
    y = x @ np.array([1.0, -0.5, 0.3]) + rng.standard_normal(N) / math.sqrt(BETA)
    return x, y


def _exact_posterior(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    precision = LAMBDA * ALPHA * np.eye(D) + BETA * x.T @ x
    cov = np.linalg.inv(precision)
    return BETA * cov @ x.T @ y, cov


def _linear_model(seed: int = 0) -> sws.SWSModel:
    torch.manual_seed(seed)
    net = torch.nn.Linear(D, 1, bias=False).double()
    prior = sws.MixturePrior(1, zero_component=True, fixed_precision=ALPHA)
    return sws.SWSModel(net, prior, likelihood=sws.Gaussian(precision=BETA), prior_scale=LAMBDA)


def _tensors(x, y):
    return torch.as_tensor(x), torch.as_tensor(y)


def _mean_and_cov(guide) -> tuple[np.ndarray, np.ndarray]:
    with local_params(), torch.no_grad():
        posterior = guide.get_posterior()
        return posterior.mean.numpy(), posterior.covariance_matrix.numpy()


# ---------------------------------------------------------------------- the oracle itself
def test_fixed_precision_prior_has_no_hyper_sites_and_fixed_sigma():
    prior = sws.MixturePrior(3, zero_component=True, fixed_precision=4.0)
    assert "sws.precisions" not in prior.site_names
    model = sws.SWSModel(torch.nn.Linear(2, 1, bias=False).double(), prior)
    assert "sws.precisions" not in model.init_values()
    trace = pyro.poutine.trace(model).get_trace(torch.zeros(3, 2, dtype=torch.float64))
    assert_close(trace.nodes["sws.sigma"]["value"], [0.5, 0.5, 0.5], rtol=1e-15)
    single = _linear_model()
    assert single.hyper_site_names == ()
    with pytest.raises(ValueError, match="fixed_precision"):
        sws.MixturePrior(1, fixed_precision=-1.0)


def test_model_log_joint_is_the_closed_form_gaussian():
    """log p(w, y) − log N(w | m, S) is the same constant at any w: the oracle is this model."""
    x, y = _design("correlated")
    mean, cov = _exact_posterior(x, y)
    model = _linear_model()
    xt, yt = _tensors(x, y)
    rng = np.random.default_rng(3)
    gaps = []
    for _ in range(4):
        w = mean + rng.standard_normal(D)
        conditioned = pyro.poutine.condition(
            model, data={"net.weight": torch.as_tensor(w[None, :])}
        )
        trace = pyro.poutine.trace(conditioned).get_trace(xt, yt)
        gaps.append(trace.log_prob_sum().item() - stats.multivariate_normal(mean, cov).logpdf(w))
    assert_close(gaps, np.full(4, gaps[0]), rtol=1e-12)


# ---------------------------------------------------------------------- point and Laplace
def test_laplace_with_lbfgs_is_exact():
    """The Laplace approximation of a Gaussian posterior is the posterior itself."""
    x, y = _design("correlated")
    mean, cov = _exact_posterior(x, y)
    result = sws.fit(
        _linear_model(), x, y, guide="laplace", optimizer="lbfgs", lr=1.0, num_steps=30
    )
    got_mean, got_cov = _mean_and_cov(result.guide)
    assert_close(got_mean, mean, atol=_lbfgs_atol(cov))
    assert_close(got_cov, cov, rtol=1e-9)  # the Hessian of a quadratic is the same everywhere


def _lbfgs_atol(cov):
    """torch's L-BFGS stops once the loss moves by < 1e-9 (``tolerance_change``): the
    mode is then known to ‖w − m‖ ≤ √(2·1e-9·λ_max(S)) in the worst direction."""
    return math.sqrt(2e-9 * np.linalg.eigvalsh(cov).max())


def _closed_form_loss(x, y, w):
    """−log p(y | w) − λ log N(w | 0, α⁻¹ I): what AutoDelta's loss is at w."""
    nll = -stats.norm(x @ w, 1 / math.sqrt(BETA)).logpdf(y).sum()
    return nll - LAMBDA * stats.norm(0.0, 1 / math.sqrt(ALPHA)).logpdf(w).sum()


@pytest.mark.parametrize("optimizer, lr, num_steps", [("lbfgs", 1.0, 20), ("adam", 0.05, 400)])
def test_map_with_lbfgs_and_adam_reach_the_closed_form_mode(optimizer, lr, num_steps):
    """Both optimisers reach the posterior mode m; the loss there is the closed form's."""
    x, y = _design("correlated")
    mean, cov = _exact_posterior(x, y)
    result = sws.fit(
        _linear_model(), x, y, guide="map", optimizer=optimizer, lr=lr, num_steps=num_steps
    )
    w = result.median()["net.weight"].reshape(-1).numpy()
    assert_close(w, mean, atol=_lbfgs_atol(cov))
    assert_close(result.losses[-1], _closed_form_loss(x, y, mean), rtol=1e-9)
    if optimizer == "lbfgs":  # quasi-Newton on a d-dimensional quadratic: a few steps
        first = np.flatnonzero(
            result.losses - result.losses.min() < 1e-9 * abs(result.losses.min())
        )
        assert first[0] <= 4 * D


# ---------------------------------------------------------------------- variational guides
# SVI's error is the optimiser's, not Monte Carlo's: "recovers" is fixed in advance
# as every mean within 0.1 posterior sd and every sd within 10 %. Mean field on the
# correlated design misses the sds by ~50 %, so the check has power.
MEAN_TOL_SD, SD_RTOL = 0.1, 0.10
SVI = {"num_steps": 1200, "lr": 5e-3, "num_particles": 16, "init_scale": 0.05}


def _check_recovery(got_mean, got_sd, mean, sd):
    assert np.all(np.abs(got_mean - mean) <= MEAN_TOL_SD * sd), (got_mean - mean) / sd
    assert_close(got_sd, sd, rtol=SD_RTOL)


def test_normal_guide_recovers_factorised_posterior():
    x, y = _design("orthogonal")
    mean, cov = _exact_posterior(x, y)
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 1e-12  # mean field is exact here
    result = sws.fit(_linear_model(), x, y, guide="normal", **{**SVI, "num_steps": 800})
    with local_params(), torch.no_grad():
        q = result.guide.quantiles([stats.norm.cdf(-1.0), 0.5, stats.norm.cdf(1.0)])["net.weight"]
    q = q.reshape(3, D).numpy()
    _check_recovery(q[1], (q[2] - q[0]) / 2, mean, np.sqrt(np.diag(cov)))


def test_lowrank_guide_recovers_correlated_posterior():
    """Default rank round(√3) = 2 represents any 3×3 covariance (D = λ_min I, W from the top 2)."""
    x, y = _design("correlated")
    mean, cov = _exact_posterior(x, y)
    sd = np.sqrt(np.diag(cov))
    mean_field_sd = 1 / np.sqrt(np.diag(np.linalg.inv(cov)))
    assert np.all(np.abs(mean_field_sd / sd - 1) > 2 * SD_RTOL)  # the design has power
    result = sws.fit(_linear_model(), x, y, guide="lowrank", **SVI)
    got_mean, got_cov = _mean_and_cov(result.guide)
    _check_recovery(got_mean, np.sqrt(np.diag(got_cov)), mean, sd)
    got_corr = got_cov / np.outer(np.sqrt(np.diag(got_cov)), np.sqrt(np.diag(got_cov)))
    assert_close(got_corr, cov / np.outer(sd, sd), atol=0.05)


@pytest.mark.slow
def test_normal_guide_finds_the_mean_field_optimum_on_correlated_posterior():
    """KL(q‖p) over factorised Gaussians: means m, variances 1 / diag(S⁻¹) (PRML §10.1.2)."""
    x, y = _design("correlated")
    mean, cov = _exact_posterior(x, y)
    result = sws.fit(_linear_model(), x, y, guide="normal", **SVI)
    with local_params(), torch.no_grad():
        q = result.guide.quantiles([stats.norm.cdf(-1.0), 0.5, stats.norm.cdf(1.0)])["net.weight"]
    q = q.reshape(3, D).numpy()
    _check_recovery(q[1], (q[2] - q[0]) / 2, mean, 1 / np.sqrt(np.diag(np.linalg.inv(cov))))


def _small_mixture_problem():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)
    ).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 2, generator=g, dtype=torch.float64)
    y = torch.sin(x[:, 0]) + 0.1 * torch.randn(20, generator=g, dtype=torch.float64)
    model = sws.SWSModel(net, sws.MixturePrior(3, precision_rate=0.5), likelihood="gaussian")
    return model, x, y


@pytest.mark.parametrize(
    "guide",
    [
        "map",
        "normal",
        "lowrank",
        "laplace",
        "mixed",
        functools.partial(AutoNormal, init_scale=0.01),
    ],
)
def test_guides_swap_with_one_argument_and_return_the_same_record(guide):
    if guide == "laplace":  # needs a mode (positive definite Hessian): the linear model, L-BFGS
        model, (x, y) = _linear_model(), _tensors(*_design("correlated"))
        result = sws.fit(model, x, y, guide=guide, optimizer="lbfgs", lr=1.0, num_steps=5)
    else:
        model, x, y = _small_mixture_problem()
        result = sws.fit(model, x, y, guide=guide, num_steps=5, lr=1e-3)
    assert type(result) is sws.FitResult
    assert np.all(np.isfinite(result.losses)) and 1 <= len(result.losses) <= 5
    assert result.predict(x, num_samples=3).shape == (len(x),)
    num_components = model.prior.num_components
    assert [t.shape for t in result.mixture()] == [(num_components,)] * 3
    draws = result.sample_posterior(2)
    assert set(model.weight_site_names) | set(model.hyper_site_names) <= set(draws)
    for site, value in model.init_values().items():
        assert draws[site].shape == (2,) + value.shape


# ---------------------------------------------------------------------- NUTS
@pytest.fixture(scope="module")
def linear_nuts():
    x, y = _design("correlated")
    start = time.perf_counter()
    result = sample_nuts(
        _linear_model(),
        x,
        y,
        num_samples=400,
        warmup_steps=100,
        num_chains=2,
        jit_compile=True,
        seed=0,
    )
    return x, y, result, time.perf_counter() - start


def test_nuts_recovers_mean_and_sd_within_monte_carlo_error(linear_nuts):
    """|estimate − truth| ≤ 4 MCSE, the MCSE from ArviZ's ESS of these draws.

    Mean: MCSE = sd / √ESS_mean. Standard deviation: ArviZ's ``mcse(method="sd")``
    (the delta method on the ESS of the first and second moments).
    """
    import arviz as az

    x, y, result, _ = linear_nuts
    mean, cov = _exact_posterior(x, y)
    sd = np.sqrt(np.diag(cov))
    draws = result.samples["net.weight"].reshape(2, 400, D).numpy()
    data = az.convert_to_dataset({"w": draws})
    ess_mean = az.ess(data, method="mean")["w"].values
    mcse_sd = az.mcse(data, method="sd")["w"].values
    est_mean = draws.mean(axis=(0, 1))
    est_sd = draws.reshape(-1, D).std(axis=0, ddof=1)
    assert np.all(ess_mean > 200), ess_mean  # enough draws for the normal approximation
    assert np.all(np.abs(est_mean - mean) <= Z_MC * sd / np.sqrt(ess_mean)), (est_mean - mean) / sd
    assert np.all(np.abs(est_sd - sd) <= Z_MC * mcse_sd), (est_sd - sd) / mcse_sd
    assert result.num_divergences == 0


def test_nuts_result_record(linear_nuts):
    x, y, result, _ = linear_nuts
    assert isinstance(result, MCMCResult)
    assert (result.num_chains, result.num_samples) == (2, 400)
    assert result.samples["net.weight"].shape == (2, 400, 1, D)
    for name in ("sws.pi", "sws.mu", "sws.sigma"):
        assert result.samples[name].shape == (2, 400, 1)
    assert_close(result.samples["sws.sigma"], np.full((2, 400, 1), ALPHA**-0.5), rtol=1e-15)
    stats_ = result.sample_stats
    assert set(stats_) == {
        "diverging",
        "tree_depth",
        "n_steps",
        "acceptance_rate",
        "energy",
        "lp",
        "step_size",
    }
    assert all(v.shape == (2, 400) for v in stats_.values())
    assert stats_["diverging"].dtype == bool
    depth, steps = stats_["tree_depth"], stats_["n_steps"]
    # the trajectory doubles until it turns: 2^(depth-1) <= steps <= 2^depth - 1
    assert np.all(steps <= 2**depth - 1) and np.all(steps >= 2 ** (depth - 1))
    assert np.all((stats_["acceptance_rate"] >= 0) & (stats_["acceptance_rate"] <= 1))
    # lp is the log joint at the draw (no constrained sites here, so no Jacobian)
    model = result.model
    xt, yt = _tensors(x, y)
    w = result.samples["net.weight"][1, 7]
    trace = pyro.poutine.trace(pyro.poutine.condition(model, data={"net.weight": w})).get_trace(
        xt, yt
    )
    assert_close(stats_["lp"][1, 7], trace.log_prob_sum().item(), rtol=1e-10)
    # predict: the average of X w over all draws
    expected = (x @ result.samples["net.weight"].reshape(-1, D).numpy().T).mean(axis=1)
    assert_close(result.predict(x), expected, rtol=1e-10)
    assert result.config["num_chains"] == 2 and result.wall_time > 0


def test_nuts_jit_and_eager_agree_and_seeds_repeat():
    x, y = _design("correlated")
    kwargs = {"num_samples": 10, "warmup_steps": 10, "num_chains": 2, "seed": 3}
    eager = sample_nuts(_linear_model(), x, y, **kwargs)
    jit = sample_nuts(_linear_model(), x, y, jit_compile=True, **kwargs)
    again = sample_nuts(_linear_model(), x, y, **kwargs)
    assert_close(jit.samples["net.weight"], eager.samples["net.weight"], rtol=1e-9)
    assert torch.equal(again.samples["net.weight"], eager.samples["net.weight"])
    assert not torch.equal(eager.samples["net.weight"][0], eager.samples["net.weight"][1])
    for name, p in eager.model.net.named_parameters():  # restored after sampling
        assert p.requires_grad, name


def test_nuts_init_options():
    model, x, y = _small_mixture_problem()
    fitted = sws.fit(model, x, y, guide="map", num_steps=3)
    kwargs = {"num_samples": 2, "warmup_steps": 2, "num_chains": 2, "max_tree_depth": 3}
    for init in (
        "map",
        "prior",
        fitted,
        {"sws.means": torch.tensor([-0.5, 0.5], dtype=torch.float64)},
        [{"sws.pi_zero": torch.tensor(0.3, dtype=torch.float64)}, {}],
    ):
        result = sample_nuts(model, x, y, init=init, **kwargs)
        assert result.samples["net.0.weight"].shape == (2, 2, 4, 2)
        assert result.samples["sws.pi"].shape == (2, 2, 3)
    assert result.predict(x).shape == (20,)
    mixture = result.mixture()
    assert_close(mixture.pi.sum(), 1.0, rtol=1e-12)
    assert result.median()["net.2.weight"].shape == (1, 4)


def test_nuts_prior_init_draws_hyperparameters_per_chain():
    from bayes_sws.infer.mcmc import _chain_inits

    model, x, _ = _small_mixture_problem()
    inits = _chain_inits(model, "prior", x, [11, 12])
    assert not torch.equal(inits[0]["sws.precisions"], inits[1]["sws.precisions"])
    assert torch.equal(inits[0]["net.0.weight"], model.net[0].weight.detach())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_chains": 0}, ValueError, "num_chains"),
        ({"num_samples": 2.5}, TypeError, "num_samples"),
        ({"warmup_steps": -1}, ValueError, "warmup_steps"),
        ({"max_tree_depth": 0}, ValueError, "max_tree_depth"),
        ({"target_accept_prob": 1.0}, ValueError, "target_accept_prob"),
        ({"seed": "0"}, TypeError, "seed"),
        ({"init": "random"}, ValueError, "unknown init"),
        ({"init": 3}, TypeError, "init"),
        ({"init": {"net.bogus": torch.zeros(1)}}, ValueError, "not latent sites"),
        ({"init": {"net.weight": torch.zeros(2)}}, ValueError, "shape"),
        ({"init": [{}, {}, {}]}, ValueError, "3 dicts"),
    ],
)
def test_sample_nuts_rejects_bad_arguments(kwargs, error, match):
    x, y = _design("correlated")
    with pytest.raises(error, match=match):
        sample_nuts(_linear_model(), x, y, **{"num_chains": 2, **kwargs})


def test_sample_nuts_rejects_non_models():
    with pytest.raises(TypeError, match="SWSModel"):
        sample_nuts(torch.nn.Linear(2, 1), np.zeros((3, 2)), np.zeros(3))


# ---------------------------------------------------------------------- slow: a tiny network
# The tiny regression problem both slow tests sample. Chosen to be well conditioned
# for NUTS, as one would for a reference posterior: a 1-3-1 tanh net (6 weights
# carry the prior; biases stay at their MAP values), float64, 40 points of
# f(x) = 7 sin(0.75 x) + 0.5 x on [-3, 3] with noise of standard deviation 0.5 and
# the matching Gaussian likelihood, so the data pin the weights and the funnel
# between the component precisions and their weights is mild. Three tanh units fit
# f on [-3, 3] to the noise level (MAP residual rms 0.48); on [-4, 4] the MAP is a
# staircase that misses the turn-downs (rms 1.33, 2.7 noise sds), a local mode
# that R-hat from chains started there would not reveal. A dense mass matrix absorbs the
# correlations between input and output weights; a target acceptance of 0.95 keeps
# the runs free of divergences (at 0.9 one of four runs had 26). Sampled from the
# MAP weights.
NOISE_SD = 0.5
HIDDEN = 3
NUTS_OPTIONS = {
    "max_tree_depth": 8,
    "target_accept_prob": 0.95,
    "full_mass": True,
    "jit_compile": True,
}


def _sine_data(num_data: int = 40, seed: int = 0):
    """f(x) = 7 sin(0.75 x) + 0.5 x plus Gaussian noise (sd NOISE_SD), x evenly spaced on [-3, 3]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(-3, 3, num_data, dtype=torch.float64)[:, None]
    y = (7 * torch.sin(0.75 * x) + 0.5 * x).squeeze(-1) + NOISE_SD * torch.randn(
        num_data, generator=g, dtype=torch.float64
    )
    return x, y


def _tiny_net_map(ordered: bool):
    """The tiny model, its data and its MAP (Adam; the network is left at the MAP weights)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(1, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, 1)
    ).double()
    prior = sws.MixturePrior(
        3, zero_component=True, ordered_means=ordered, mean_scale=2.0, precision_rate=0.5
    )
    model = sws.SWSModel(net, prior, likelihood=sws.Gaussian(precision=NOISE_SD**-2))
    x, y = _sine_data()
    fitted = sws.fit(model, x, y, guide="map", optimizer="adam", lr=0.02, num_steps=3000)
    net.load_state_dict(fitted.map_network().state_dict())  # MCMC starts from the MAP weights
    return model, x, y, fitted


def _rhat_ess(draws: np.ndarray, dim: str) -> tuple[np.ndarray, np.ndarray]:
    """ArviZ's rank-normalised split R-hat and bulk ESS of ``draws`` (chain, draw, dim)."""
    import arviz as az

    data = az.convert_to_dataset({"q": draws}, dims={"q": [dim]})
    return az.rhat(data)["q"].values, az.ess(data, method="bulk")["q"].values


@pytest.mark.slow
def test_tiny_net_nuts_predictive_mean_converges():
    """4 chains: R-hat ≤ 1.01 and bulk ESS ≥ 400 for f(x) at five inputs (the issue's thresholds).

    The chains start from the MAP weights with hyperparameters drawn independently
    from their hyperpriors (``init="prior"``: overdispersed mixtures, as R-hat
    assumes). f(x) is identifiable, unlike the raw weights; the inputs lie inside
    the data range [-3, 3]. Oracle: ArviZ's R-hat and ESS (Vehtari et al. 2021),
    an implementation independent of the sampler. Measured: R-hat ≤ 1.0023, bulk
    ESS ≥ 2333, no divergences, 392 s of sampling (4 chains × 1250 iterations).
    """
    from bayes_sws.diagnostics.posterior import predictive_draws

    model, x, y, _ = _tiny_net_map(ordered=True)
    result = sample_nuts(
        model,
        x,
        y,
        num_samples=750,
        warmup_steps=500,
        num_chains=4,
        init="prior",
        seed=1,
        **NUTS_OPTIONS,
    )
    grid = np.array([-2.5, -1.25, 0.0, 1.25, 2.5])[:, None]
    rhat, ess = _rhat_ess(predictive_draws(result, grid), "x")
    print(
        f"\npredictive mean at {grid.ravel()}: R-hat {np.round(rhat, 4)}, bulk ESS {np.round(ess)}, "
        f"{result.num_divergences} divergences, {result.wall_time:.0f} s"
    )
    assert result.num_chains == 4
    assert np.all(rhat <= 1.01), rhat
    assert np.all(ess >= 400), ess


def _permuted_mixture_inits(fitted, num_chains: int, ordered: bool) -> list[dict]:
    """MAP values for every chain; the two non-zero components swap labels in odd chains.

    Each start is the MAP mixture. Unordered, half the chains start in the other
    labelling of it (what random starts do by chance, made deterministic here);
    ordered, only the sorted labelling is allowed, so every chain gets that one.
    """
    latent = (*fitted.model.hyper_site_names, *fitted.model.weight_site_names)
    base = {k: v.clone() for k, v in fitted.median().items() if k in latent}
    order = torch.argsort(base["sws.means"])
    swap = order.flip(0)
    inits = []
    for chain in range(num_chains):
        perm = order if ordered or chain % 2 == 0 else swap
        values = dict(base)
        values["sws.means"] = base["sws.means"][perm]
        values["sws.mixing"] = base["sws.mixing"][perm]
        values["sws.precisions"] = torch.cat(
            [base["sws.precisions"][:1], base["sws.precisions"][1:][perm]]
        )
        inits.append(values)
    return inits


@pytest.mark.slow
def test_ordered_means_make_mu_identifiable_across_chains():
    """Unordered means: chains in different labellings disagree on μ (R-hat ≫ 1); ordered: they agree.

    Both runs start from the same MAP mixture, with its two non-zero components
    in both labellings where the prior allows it, and have the same budget.
    R-hat on μ₁, μ₂ (μ₀ = 0 is fixed) from ArviZ. Unordered, two chains per
    labelling sit on clusters of weights at about −2.2 and +2.6 (σ ≈ 0.5): their
    μ draws barely overlap, and the rank-normalised R-hat of two fully separated
    pairs of chains is about 1.7 (it saturates there however far apart the pairs
    are). Only label switches inside the chains, i.e. the unordered posterior
    being explored after all, would bring it down. The line between the two is
    the classic R-hat < 1.1 for chains that agree (Gelman et al., BDA3 §11.4),
    not the issue's 1.01: ordered, μ₂ still mixes slowly (its component holds
    two of the six weights and now and then empties, letting μ₂ wander), so at
    this budget its R-hat varied between runs — 1.005 and 1.065 with 300 draws
    per chain — while the labelling itself is fixed.
    Measured (500 + 500 per chain): unordered 1.59 / 1.51 (bulk ESS 7 / 7), ordered
    1.002 / 1.004 (bulk ESS 1029 / 439), no divergences; 195 s + 324 s of sampling.
    """
    rhats = {}
    for ordered in (False, True):
        model, x, y, fitted = _tiny_net_map(ordered=ordered)
        result = sample_nuts(
            model,
            x,
            y,
            num_samples=500,
            warmup_steps=500,
            num_chains=4,
            seed=2,
            init=_permuted_mixture_inits(fitted, 4, ordered),
            **NUTS_OPTIONS,
        )
        mu = result.samples["sws.mu"][..., 1:].numpy()  # the zero component's mean is fixed
        rhats[ordered], ess = _rhat_ess(mu, "component")
        print(
            f"\nordered_means={ordered}: R-hat on mu_1, mu_2 {np.round(rhats[ordered], 4)}, "
            f"bulk ESS {np.round(ess)}, {result.num_divergences} divergences, {result.wall_time:.0f} s"
        )
    assert rhats[True].max() < 1.1, rhats[True]
    assert rhats[False].min() > 1.1, rhats[False]
