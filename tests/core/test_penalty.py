"""Closed forms (5.137)–(5.147) against scipy, scikit-learn and float64 autograd."""

import numpy as np
import pytest
import torch
from conftest import assert_close
from scipy.special import logsumexp
from scipy.stats import norm
from sklearn.mixture import GaussianMixture

from bayes_sws.core import penalty


def _mixture(num_components=5, seed=0):
    rng = np.random.default_rng(seed)
    pi = rng.dirichlet(np.ones(num_components))
    mu = rng.normal(0, 0.5, num_components)
    sigma = rng.uniform(0.05, 0.4, num_components)
    w = rng.normal(0, 0.6, (7, 9))
    return w, pi, mu, sigma


def _t(*arrays, grad=False):
    return [torch.tensor(a, dtype=torch.float64, requires_grad=grad) for a in arrays]


def test_omega_equals_scipy():
    w, pi, mu, sigma = _mixture()
    expected = -logsumexp(np.log(pi) + norm.logpdf(w.reshape(-1, 1), mu, sigma), axis=1).sum()
    assert_close(penalty.omega(*_t(w, pi, mu, sigma)), expected, rtol=1e-13)


def _sklearn_gmm(pi, mu, sigma):
    gmm = GaussianMixture(len(pi), covariance_type="spherical")
    gmm.weights_, gmm.means_ = pi, mu.reshape(-1, 1)
    gmm.covariances_ = sigma**2
    gmm.precisions_cholesky_ = 1.0 / sigma
    return gmm


def test_log_density_and_responsibilities_equal_sklearn():
    w, pi, mu, sigma = _mixture(seed=1)
    gmm = _sklearn_gmm(pi, mu, sigma)
    flat = w.reshape(-1, 1)
    args = _t(w, pi, mu, sigma)
    assert_close(penalty.log_mixture_density(*args), gmm.score_samples(flat), rtol=1e-12)
    gamma = penalty.responsibilities(*args)
    assert gamma.shape == (w.size, len(pi))
    assert_close(gamma, gmm.predict_proba(flat), rtol=1e-10, atol=1e-14)


def _autograd_reference(w, pi, mu, sigma, prior_scale):
    """λΩ written independently of the package, differentiated by torch."""
    w, mu = _t(w, mu, grad=True)
    xi = torch.tensor(np.log(sigma**2), requires_grad=True)
    eta = torch.tensor(np.log(pi), requires_grad=True)
    pi_t = torch.softmax(eta, 0)
    sigma_t = torch.exp(0.5 * xi)
    sigma_t.retain_grad()
    comp = torch.distributions.Normal(mu, sigma_t).log_prob(w.reshape(-1, 1)) + torch.log(pi_t)
    loss = -prior_scale * torch.logsumexp(comp, 1).sum()
    loss.backward()
    return {
        "w": w.grad,
        "mu": mu.grad,
        "sigma": sigma_t.grad,
        "log_variance": xi.grad,
        "logits": eta.grad,
    }


@pytest.mark.parametrize("prior_scale", [1.0, 0.37])
def test_gradients_equal_autograd(prior_scale):
    w, pi, mu, sigma = _mixture(seed=2)
    expected = _autograd_reference(w, pi, mu, sigma, prior_scale)
    args = _t(w, pi, mu, sigma)
    grads = penalty.gradients(*args, prior_scale=prior_scale)
    single = {
        "w": penalty.grad_w,
        "mu": penalty.grad_mu,
        "sigma": penalty.grad_sigma,
        "log_variance": penalty.grad_log_variance,
        "logits": penalty.grad_logits,
    }
    for name, fn in single.items():
        assert_close(getattr(grads, name), expected[name], atol=1e-10, msg=name)
        assert_close(fn(*args, prior_scale=prior_scale), expected[name], atol=1e-10, msg=name)
    assert grads.w.shape == w.shape


def test_one_component_at_zero_is_weight_decay():
    rng = np.random.default_rng(3)
    w = rng.normal(0, 1, 50)
    sigma = 0.3
    args = _t(w, np.ones(1), np.zeros(1), np.full(1, sigma))
    expected = (w**2).sum() / (2 * sigma**2) + w.size * 0.5 * np.log(2 * np.pi * sigma**2)
    assert_close(penalty.omega(*args), expected, rtol=1e-13)
    assert_close(penalty.grad_w(*args), w / sigma**2, rtol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extremes_stay_finite(dtype):
    w = torch.tensor([-1e4, -3.0, 0.0, 1e-7, 2.5, 1e4], dtype=dtype)
    pi = torch.tensor([0.5, 0.3, 0.2], dtype=dtype)
    mu = torch.tensor([0.0, 1.0, -1.0], dtype=dtype)
    sigma = torch.tensor([1e-6, 1e-3, 0.5], dtype=dtype)
    assert torch.isfinite(penalty.omega(w, pi, mu, sigma))
    gamma = penalty.responsibilities(w, pi, mu, sigma)
    assert torch.isfinite(gamma).all()
    assert_close(gamma.sum(-1), np.ones(len(w)), rtol=1e-6)
    for g in penalty.gradients(w, pi, mu, sigma):
        assert torch.isfinite(g).all()


def test_shape_errors_name_the_bad_value():
    w = torch.zeros(3)
    with pytest.raises(ValueError, match=r"pi must have shape \(M,\)"):
        penalty.omega(w, torch.ones(2, 2), torch.zeros(2), torch.ones(2))
    with pytest.raises(ValueError, match="same number of components"):
        penalty.omega(w, torch.ones(2) / 2, torch.zeros(3), torch.ones(2))
