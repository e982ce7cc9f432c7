"""Mixture density networks (PRML §5.6) against independent oracles.

scipy's normal densities for the log-likelihood (5.148/5.153), autograd in
float64 for the closed-form output gradients (5.155)–(5.157), trapezoid grid
integrals for the conditional density's normalisation and mean, hand-computed
NLL plus ``penalty.omega`` for the MAP objective E(w) + λΩ(w).
"""

import math

import numpy as np
import pytest
import torch
from conftest import assert_close
from pyro.infer import Trace_ELBO
from scipy import stats
from scipy.special import logsumexp, softmax

import bayes_sws as sws
from bayes_sws.core import mdn
from bayes_sws.infer.svi import local_params
from bayes_sws.runs.checkpoints import load_result, save_result
from bayes_sws.zoo.data import inverse_problem

K = 3


def _outputs(num_points, dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    output = torch.randn(num_points, K * (dim + 2), generator=g, dtype=torch.float64)
    target = torch.randn(num_points, dim, generator=g, dtype=torch.float64)
    return output, (target.squeeze(-1) if dim == 1 else target)


def _scipy_log_lik(output, target, dim):
    """ln Σ_k π_k Π_j N(t_j | μ_kj, σ_k²) from the raw layout, by scipy (5.148, 5.150–5.152)."""
    a = output.numpy()
    t = target.numpy().reshape(len(a), dim)
    pi = softmax(a[:, :K], axis=1)
    mu = a[:, K : K + K * dim].reshape(len(a), K, dim)
    sigma = np.exp(a[:, K + K * dim :])
    log_comp = stats.norm.logpdf(t[:, None, :], mu, sigma[:, :, None]).sum(-1)
    return logsumexp(np.log(pi) + log_comp, axis=1)


@pytest.mark.parametrize("dim", [1, 2])
def test_log_likelihood_matches_scipy_mixture(dim):
    output, target = _outputs(7, dim)
    likelihood = sws.MixtureDensity(num_components=K)
    log_lik = likelihood.distribution(output, {}).log_prob(target)
    assert log_lik.shape == (7,)
    assert_close(log_lik, _scipy_log_lik(output, target, dim), rtol=1e-12)
    assert_close(
        likelihood.mean_nll(output, target), -_scipy_log_lik(output, target, dim).mean(), rtol=1e-12
    )


@pytest.mark.parametrize("dim", [1, 3])
def test_output_gradients_match_autograd(dim):
    output, target = _outputs(5, dim, seed=3)
    output.requires_grad_(True)
    energy = -sws.MixtureDensity(K).distribution(output, {}).log_prob(target).sum()  # (5.153)
    (autograd,) = torch.autograd.grad(energy, output)
    closed = mdn.output_gradients(output.detach(), target, K)
    assert_close(closed, autograd, rtol=1e-10, atol=1e-13)
    # (5.155): the mixing gradients sum to zero per data point (π and γ both sum to one)
    assert_close(closed[:, :K].sum(-1), np.zeros(5), atol=1e-13)


def test_conditional_density_integrates_to_one_and_gives_the_mean():
    output, _ = _outputs(4, 1, seed=5)
    output[:, 2 * K :] -= 1.0  # scales ~ e^-1: a grid over ±12 covers all the mass
    grid = torch.linspace(-12, 12, 20001, dtype=torch.float64)
    density = mdn.conditional_density(output, grid, K)
    assert density.shape == (4, len(grid))
    assert_close(np.trapezoid(density.numpy(), grid.numpy(), axis=1), np.ones(4), rtol=1e-7)
    grid_mean = np.trapezoid(density.numpy() * grid.numpy(), grid.numpy(), axis=1)
    assert_close(mdn.conditional_mean(output, K), grid_mean, atol=1e-7)
    # posterior draws: the density averages the draws' densities, still normalised
    draws = torch.stack([output, output + 0.3])
    averaged = mdn.conditional_density(draws, grid, K)
    assert_close(
        averaged, 0.5 * (density + mdn.conditional_density(output + 0.3, grid, K)), rtol=1e-12
    )


def test_mode_follows_the_most_probable_component_and_samples_the_mixture():
    # one input, two components far apart: the mode is the heavier one's mean
    logits, loc, log_scale = [0.0, 2.0, -1.0], [-3.0, 4.0, 0.5], [-2.0, -2.0, -2.0]
    output = torch.tensor([logits + loc + log_scale], dtype=torch.float64)
    assert_close(mdn.conditional_mode(output, K), [4.0])
    draws = mdn.sample(output, K, num_samples=20000)
    assert draws.shape == (20000, 1)
    pi = softmax(logits)
    near = [(draws - m).abs().lt(0.6).double().mean().item() for m in loc]
    assert_close(near, pi, atol=0.015)  # each component's share within ~3 binomial s.e.


def test_bad_network_size_and_targets_are_named():
    with pytest.raises(ValueError, match="K\\*\\(D\\+2\\) outputs"):
        mdn.split_output(torch.zeros(2, 7), K)
    with pytest.raises(ValueError, match="num_components must be an integer >= 1"):
        sws.MixtureDensity(num_components=0)
    with pytest.raises(ValueError, match="MixtureDensity\\(num_components=K\\)"):
        sws.SWSModel(torch.nn.Linear(1, 9), sws.MixturePrior(2), likelihood="mdn")
    with pytest.raises(ValueError, match="expected targets of shape \\(4,\\)"):
        sws.MixtureDensity(K).check_targets(torch.zeros(4, 2), torch.zeros(4, 3 * K))


def _inverse_model(seed=0, flat=True):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3 * K)
    ).double()
    prior = sws.MixturePrior(3, zero_component=True, flat=flat)
    return sws.SWSModel(net, prior, likelihood=sws.MixtureDensity(K), prior_scale=0.5)


def _data(num_points=60):
    x, t = inverse_problem(num_points, seed=1)
    return x.double(), t.double()


def test_map_fit_loss_is_nll_plus_penalty():
    model = _inverse_model()
    x, t = _data()
    result = sws.fit(model, x, t, guide="map", num_steps=30, lr=1e-2, seed=0)
    values = result.median()
    with torch.no_grad():
        out = model.network_with(values)(x)
    nll = -_scipy_log_lik(out, t, 1).sum()
    pi, mu, sigma = result.mixture()
    weights = torch.cat([values[s].reshape(-1) for s in model.weight_site_names])
    omega = sws.penalty.omega(weights, pi, mu, sigma).item()
    with local_params(), torch.no_grad():
        loss = Trace_ELBO().differentiable_loss(model, result.guide, x, t)
    assert_close(loss, nll + model.prior_scale * omega, rtol=1e-12)
    assert result.losses[-1] < result.losses[0]


def test_normal_guide_fits_predicts_and_converts_to_arviz():
    model = _inverse_model(flat=False)
    x, t = _data(30)
    result = sws.fit(model, x, t, guide="normal", num_steps=20, lr=1e-2, seed=0)
    assert np.isfinite(result.losses).all()
    outputs = mdn.network_outputs(result, x, num_samples=6)
    assert outputs.shape == (6, 30, 3 * K)
    assert result.predict(x, num_samples=6).shape == (30,)
    from bayes_sws.diagnostics.posterior import to_inference_data

    idata = to_inference_data(result, x=x, y=t, num_samples=8, num_chains=2, seed=0)
    log_lik = idata.log_likelihood["obs"]
    assert log_lik.shape == (2, 4, 30)
    assert np.isfinite(log_lik.values).all()


def test_save_load_round_trip_gives_identical_predictions(tmp_path):
    model = _inverse_model()
    x, t = _data(30)
    result = sws.fit(model, x, t, guide="map", num_steps=10, lr=1e-2, seed=0)
    save_result(result, tmp_path / "run", network_spec=None)
    loaded = load_result(tmp_path / "run", network=_inverse_model(seed=5).net)
    assert isinstance(loaded.model.likelihood, sws.MixtureDensity)
    assert loaded.model.likelihood.num_components == K
    grid = torch.linspace(-0.5, 1.5, 101, dtype=torch.float64)
    before = mdn.conditional_density(mdn.network_outputs(result, x), grid, K)
    after = mdn.conditional_density(mdn.network_outputs(loaded, x), grid, K)
    assert torch.equal(before, after)
    assert torch.equal(result.predict(x), loaded.predict(x))


def test_inverse_problem_is_prml_forward_map():
    x, t = inverse_problem(500, seed=3, noise=0.0)
    assert_close(x.squeeze(-1), t + 0.3 * torch.sin(2 * math.pi * t), atol=1e-6)
    noisy, t2 = inverse_problem(500, seed=3, noise=0.1)
    assert torch.equal(t, t2)
    assert (noisy.squeeze(-1) - x.squeeze(-1)).abs().max() <= 0.1 + 1e-6


def test_nuts_draws_give_a_normalised_posterior_predictive_density():
    from bayes_sws.infer.mcmc import sample_nuts

    model = _inverse_model(flat=False)
    x, t = _data(20)
    result = sample_nuts(
        model,
        x,
        t,
        num_samples=6,
        warmup_steps=6,
        num_chains=1,
        max_tree_depth=3,
        init=model.init_values(),
        seed=0,
    )
    outputs = mdn.network_outputs(result, x[:3])
    assert outputs.shape == (6, 3, 3 * K)
    grid = torch.linspace(-6, 6, 12001, dtype=torch.float64)
    density = mdn.conditional_density(outputs, grid, K).numpy()
    assert_close(np.trapezoid(density, grid.numpy(), axis=1), np.ones(3), rtol=1e-4)


def test_compression_reports_held_out_log_likelihood():
    from bayes_sws.compress.pipeline import compress_result

    model = _inverse_model()
    x, t = _data(40)
    x_test, t_test = (v.double() for v in inverse_problem(25, seed=9))
    result = sws.fit(model, x, t, guide="map", num_steps=10, lr=1e-2, seed=0)
    compressed = compress_result(result, x_test, t_test, finetune_data=(x, t), finetune_epochs=1)
    with torch.no_grad():
        before = _scipy_log_lik(compressed.retrained_net(x_test), t_test, 1).mean()
        quantized = _scipy_log_lik(compressed.quantization.net(x_test), t_test, 1).mean()
        after = _scipy_log_lik(compressed.stored_net(x_test), t_test, 1).mean()
    assert_close(compressed.test_log_likelihood_before, before, rtol=1e-12)
    assert_close(compressed.test_log_likelihood_quantized, quantized, rtol=1e-12)
    assert_close(compressed.test_log_likelihood_after, after, rtol=1e-12)
    assert compressed.test_rmse_before is None and compressed.test_accuracy_before is None
    assert compressed.to_dict()["test_log_likelihood_after"] == compressed.test_log_likelihood_after


@pytest.mark.slow
def test_full_example_meets_its_stated_margins(monkeypatch):
    """The example at full budget (about a minute): MDN beats least squares on held-out
    log-likelihood by >= 0.5 nats/point; compression costs <= 0.1 nats/point."""
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "examples" / "mdn_inverse.py"
    namespace = runpy.run_path(str(script), run_name="mdn_inverse")
    monkeypatch.delenv("CI", raising=False)
    scores = namespace["main"](smoke=False, out=None)
    assert scores["mdn"] - scores["least_squares"] >= namespace["MIN_GAIN"]
    assert scores["mdn"] - scores["compressed_mdn"] <= namespace["MAX_COMPRESSION_LOSS"]
    assert scores["compression_rate"] > 4.0
