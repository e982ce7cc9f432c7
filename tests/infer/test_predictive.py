r"""Predictive draws with observation noise, against closed forms.

The oracle (as in ``test_posterior.py``): a linear model ``y = x^T w + ε``,
``ε ~ N(0, 1/β)``, under a fixed zero-mean Gaussian prior of precision
:math:`\lambda\alpha`, has the Gaussian posterior :math:`S^{-1} = \lambda\alpha I +
\beta X^\top X`, :math:`m = \beta S X^\top y` (PRML 3.53–3.54), which Laplace
recovers exactly, and the predictive (PRML 3.58–3.59)
:math:`y^* \sim \mathcal N(x^{*\top} m,\ x^{*\top} S x^* + 1/\beta)`.
Computed here in numpy.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch
from conftest import assert_close
from scipy import special, stats

import bayes_sws as sws
from bayes_sws.infer.mcmc import MCMCResult
from bayes_sws.infer.svi import Predictive

ALPHA, BETA, LAMBDA = 2.0, 4.0, 0.5
D, N = 3, 40
Z_MC = 4.0  # Monte Carlo tolerance in standard errors


def _data(seed: int = 1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, D))
    y = x @ np.array([1.0, -0.5, 0.3]) + rng.standard_normal(N) / math.sqrt(BETA)
    return x, y


def _posterior(x, y):
    cov = np.linalg.inv(LAMBDA * ALPHA * np.eye(D) + BETA * x.T @ x)
    return BETA * cov @ x.T @ y, cov


def _model(likelihood=None, out: int = 1) -> sws.SWSModel:
    torch.manual_seed(0)
    net = torch.nn.Linear(D, out, bias=False).double()
    prior = sws.MixturePrior(1, zero_component=True, fixed_precision=ALPHA)
    likelihood = likelihood or sws.Gaussian(precision=BETA)
    return sws.SWSModel(net, prior, likelihood=likelihood, prior_scale=LAMBDA)


X_NEW = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, -1.0], [3.0, -1.0, 0.5]])


def test_laplace_predictive_variance_is_the_closed_form():
    """Var y* = x*ᵀ S x* + 1/β and E y* = x*ᵀ m, within Monte Carlo error."""
    x, y = _data()
    m, cov = _posterior(x, y)
    result = sws.fit(_model(), x, y, guide="laplace", optimizer="lbfgs", lr=1.0, num_steps=30)
    num = 4000
    pred = result.predictive(X_NEW, num_samples=num, seed=0)
    assert isinstance(pred, Predictive) and not pred.point_estimate and pred.noise
    assert pred.draws.shape == (num, len(X_NEW))
    var = np.einsum("nd,de,ne->n", X_NEW, cov, X_NEW) + 1 / BETA
    mean = X_NEW @ m
    assert np.all(np.abs(pred.mean.numpy() - mean) <= Z_MC * np.sqrt(var / num))
    # the sample variance of n normal draws has standard error var * sqrt(2 / (n - 1))
    got = pred.std.numpy() ** 2
    assert np.all(np.abs(got - var) <= Z_MC * var * math.sqrt(2 / (num - 1)))
    # the interval is the equal-tailed quantile of the draws
    lower, upper = pred.interval(0.9)
    assert_close(lower, np.quantile(pred.draws.numpy(), 0.05, axis=0), rtol=1e-12)
    assert_close(upper, np.quantile(pred.draws.numpy(), 0.95, axis=0), rtol=1e-12)
    # without noise: the epistemic part alone, x*ᵀ S x*
    epistemic = result.predictive(X_NEW, num_samples=num, noise=False, seed=0)
    expected = np.einsum("nd,de,ne->n", X_NEW[1:], cov, X_NEW[1:])
    got = epistemic.std.numpy()[1:] ** 2
    assert np.all(np.abs(got - expected) <= Z_MC * expected * math.sqrt(2 / (num - 1)))
    assert float(epistemic.std[0]) == 0.0  # x* = 0: w does not matter


def test_map_predictive_is_a_point_with_observation_noise_only():
    x, y = _data()
    m, _ = _posterior(x, y)
    result = sws.fit(_model(), x, y, guide="map", optimizer="lbfgs", lr=1.0, num_steps=20)
    num = 4000
    pred = result.predictive(X_NEW, num_samples=num, seed=0)
    assert pred.point_estimate and pred.draws.shape == (num, len(X_NEW))
    assert pred.draw_means.shape == (1, len(X_NEW))
    assert_close(pred.draw_means[0], X_NEW @ m, atol=1e-4)
    sd = 1 / math.sqrt(BETA)
    assert np.all(np.abs(pred.std.numpy() ** 2 - sd**2) <= Z_MC * sd**2 * math.sqrt(2 / (num - 1)))
    assert np.all(np.abs(pred.mean.numpy() - X_NEW @ m) <= Z_MC * sd / math.sqrt(num) + 1e-4)
    # no identical copies: without noise the MAP gives its mean once
    bare = result.predictive(X_NEW, num_samples=num, noise=False)
    assert bare.draws.shape == (1, len(X_NEW)) and bare.point_estimate
    assert_close(bare.std, np.zeros(len(X_NEW)))
    assert "point estimate" in repr(bare)


def test_seed_repeats_the_draws_and_leaves_the_global_rng_alone():
    x, y = _data()
    result = sws.fit(_model(), x, y, guide="normal", num_steps=50, lr=0.05)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    a = result.predictive(X_NEW, num_samples=30, seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    b = result.predictive(X_NEW, num_samples=30, seed=3)
    assert torch.equal(a.draws, b.draws)
    c = result.predictive(X_NEW, num_samples=30, seed=4)
    assert not torch.equal(a.draws, c.draws)
    with pytest.raises(ValueError, match="num_samples"):
        result.predictive(X_NEW, num_samples=0)


def test_classification_probs_are_the_softmax_average_and_entropy_is_scipys():
    rng = np.random.default_rng(2)
    classes = 3
    x = rng.standard_normal((60, D))
    labels = (x @ rng.standard_normal((D, classes))).argmax(axis=1)
    model = _model(sws.Categorical(), out=classes)
    result = sws.fit(model, x, labels, guide="normal", num_steps=100, lr=0.05)
    num = 40
    pred = result.predictive(X_NEW, num_samples=num, seed=7)
    pyro.set_rng_seed(7)  # the same guide draws, by hand
    weights = result.sample_posterior(num)["net.weight"].numpy()  # (num, classes, D)
    probs = special.softmax(np.einsum("nd,scd->snc", X_NEW, weights), axis=-1)
    assert pred.classification and pred.draws.shape == (num, len(X_NEW))
    assert pred.draws.dtype == torch.int64 and int(pred.draws.max()) < classes
    assert_close(pred.probs, probs.mean(axis=0), rtol=1e-10)
    assert_close(pred.mean, probs.mean(axis=0), rtol=1e-10)
    assert_close(pred.std, probs.std(axis=0, ddof=1), rtol=1e-8, atol=1e-15)
    assert_close(pred.entropy, stats.entropy(probs.mean(axis=0), axis=-1), rtol=1e-10)
    lower, _ = pred.interval(0.5)
    assert_close(lower, np.quantile(probs, 0.25, axis=0), rtol=1e-10)
    with pytest.raises(AttributeError, match="categorical"):
        _ = sws.fit(_model(), *_data(), guide="map", num_steps=2).predictive(X_NEW).probs


def test_map_classification_gives_the_probabilities_once_and_sampled_labels():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, D))
    labels = (x[:, 0] > 0).astype(np.int64)
    result = sws.fit(_model(sws.Categorical(), out=2), x, labels, guide="map", num_steps=50)
    num = 4000
    pred = result.predictive(X_NEW, num_samples=num, seed=0)
    w = result.median()["net.weight"].numpy()
    probs = special.softmax(X_NEW @ w.T, axis=-1)
    assert pred.point_estimate and pred.draw_means.shape == (1, len(X_NEW), 2)
    assert_close(pred.probs, probs, rtol=1e-12)
    # label frequencies estimate the probabilities: binomial standard error
    share = (pred.draws == 1).double().mean(dim=0).numpy()
    assert np.all(np.abs(share - probs[:, 1]) <= Z_MC * np.sqrt(probs[:, 1] * probs[:, 0] / num))


def test_mcmc_result_predictive_pools_chains_and_adds_noise():
    """A hand-made MCMCResult: 2 chains x 3 draws of known weights."""
    model = _model()
    weights = torch.arange(18, dtype=torch.float64).reshape(2, 3, 1, D) / 10
    result = MCMCResult(model, {"net.weight": weights}, {})
    bare = result.predictive(X_NEW, noise=False)
    expected = np.einsum("nd,sd->sn", X_NEW, weights.reshape(6, D).numpy())
    assert not bare.point_estimate and bare.draws.shape == (6, len(X_NEW))
    assert_close(bare.draws, expected, rtol=1e-12)
    noisy = result.predictive(X_NEW, seed=1)
    residual = (noisy.draws - bare.draws).numpy()
    assert residual.shape == (6, len(X_NEW)) and np.all(residual != 0)
    # the noise is N(0, 1/β): |ε| < 6 sd for all 18 draws
    assert np.all(np.abs(residual) < 6 / math.sqrt(BETA))
    assert result.predictive(X_NEW, num_samples=2, noise=False).draws.shape == (2, len(X_NEW))


def test_mixture_density_predictive_samples_the_mixture():
    """A one-component MDN with output [a^π, μ, log σ]: draws ~ N(μ, σ²)."""
    torch.manual_seed(0)
    net = torch.nn.Linear(1, 3).double()
    with torch.no_grad():
        net.weight.zero_()
        net.bias.copy_(torch.tensor([0.0, 2.0, math.log(0.5)]))
    prior = sws.MixturePrior(1, zero_component=True, fixed_precision=ALPHA)
    model = sws.SWSModel(net, prior, likelihood=sws.MixtureDensity(1))
    draws = {"net.weight": net.weight.detach().clone().unsqueeze(0)}
    result = MCMCResult(
        model, {k: v.unsqueeze(0).expand(1, 4000, 3, 1) for k, v in draws.items()}, {}
    )
    pred = result.predictive(np.zeros((2, 1)), seed=0)
    num = 4000
    assert_close(pred.draw_means[0], [2.0, 2.0], rtol=1e-12)
    assert np.all(np.abs(pred.mean.numpy() - 2.0) <= Z_MC * 0.5 / math.sqrt(num))
    assert np.all(np.abs(pred.std.numpy() ** 2 - 0.25) <= Z_MC * 0.25 * math.sqrt(2 / (num - 1)))


# ---------------------------------------------------------------------- reprs
def _numbers(text: str) -> list[float]:
    import re

    return [float(v) for v in re.findall(r"-?\d+\.?\d*(?:e[-+]?\d+)?", text)]


def test_fit_result_repr_names_guide_steps_loss_time_device_and_not_the_guide():
    x, y = _data()
    result = sws.fit(_model(), x, y, guide="normal", num_steps=30, lr=0.01)
    text = repr(result)
    assert text.startswith("FitResult(guide='normal', steps=30, final loss ")
    assert "device cpu" in text and "AutoNormal" not in text and "\n" not in text
    final, wall = _numbers(text.split("final loss ")[1])[:2]
    assert abs(final - result.losses[-1]) <= 5e-6 * abs(result.losses[-1])
    assert abs(wall - result.wall_time) <= 5e-3 * result.wall_time


def test_mcmc_result_and_predictive_reprs():
    model = _model()
    weights = torch.zeros(2, 3, 1, D, dtype=torch.float64)
    stats_ = {"diverging": np.array([[True, False, False], [True, True, False]])}
    result = MCMCResult(model, {"net.weight": weights}, stats_, wall_time=1.234)
    text = repr(result)
    assert "2 chains x 3 draws of 1 sites, 3 divergent, wall time 1.23 s" in text
    pred = result.predictive(X_NEW, noise=False)
    text = repr(pred)
    assert "regression, 6 draws of the mean, inputs (3,)" in text and "point" not in text
    assert _numbers(text.split("mean [")[1])[:3] == [0.0, 0.0, 0.0]
    noisy = result.predictive(X_NEW, seed=0)
    shown = _numbers(repr(noisy).split("std [")[1])[:3]
    assert_close(shown, noisy.std, rtol=5e-4)
