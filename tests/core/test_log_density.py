"""The one mixture log-density (eq. 5.137) against scipy, and every caller against it.

Oracle: ``scipy.special.logsumexp(log π + scipy.stats.norm.logpdf(w, μ, σ))`` in
float64, for mixtures with a wide (σ = 10³) and a collapsed (σ = 10⁻⁶) component
and weights from 0 to 10⁴ away from the means.
"""

import numpy as np
import pytest
import torch
from conftest import assert_close
from scipy.special import logsumexp, softmax
from scipy.stats import norm

from bayes_sws.core import kernel, penalty
from bayes_sws.core.distributions import MixtureOfGaussians

F64 = torch.float64

CASES = {
    # a collapsed spike at zero and a wide slab
    "spike_and_slab": ([0.9, 0.1], [0.0, 0.0], [1e-6, 1e3]),
    # collapsed components away from zero, one wide and one ordinary
    "collapsed_and_wide": ([0.5, 0.2, 0.2, 0.1], [-0.3, 0.0, 0.25, 5.0], [1e-6, 2e-6, 1e3, 0.1]),
}


def _weights():
    rng = np.random.default_rng(7)
    fixed = [0.0, -0.3, 0.25, 1e-6, -2e-6, 5.0, 1e4, -1e4, 3.3e3]
    return np.concatenate([fixed, rng.normal(0, 0.5, 40), rng.uniform(-1e4, 1e4, 11)])


def _scipy_terms(w, pi, mu, sigma):
    return np.log(pi) + norm.logpdf(np.asarray(w).reshape(-1, 1), mu, sigma)  # N M


def _scipy_log_density(w, pi, mu, sigma):
    return logsumexp(_scipy_terms(w, pi, mu, sigma), axis=1)  # N


def _case(name):
    pi, mu, sigma = (np.array(v, dtype=np.float64) for v in CASES[name])
    w = _weights()
    tensors = [torch.tensor(a, dtype=F64) for a in (w, pi, mu, sigma)]
    return (w, pi, mu, sigma), tensors


@pytest.mark.parametrize("name", sorted(CASES))
def test_log_joint_densities_equal_scipy(name):
    arrays, (w, pi, mu, sigma) = _case(name)
    terms = penalty.log_joint_densities(w, torch.log(pi), mu, sigma)
    assert terms.shape == (w.numel(), pi.numel())
    assert_close(terms, _scipy_terms(*arrays), rtol=1e-13)
    log_p = torch.logsumexp(terms, dim=-1)
    assert torch.isfinite(log_p).all()
    assert_close(log_p, _scipy_log_density(*arrays), rtol=1e-13)


def test_log_joint_densities_broadcast_batched_parameters():
    """Value ``S`` against parameters ``B + (1,)*len(S) + (M,)``, as the distribution uses it."""
    rng = np.random.default_rng(3)
    w = rng.normal(0, 1, (3, 4))
    pi = rng.dirichlet(np.ones(5), size=2)  # B M
    mu, sigma = rng.normal(0, 1, (2, 5)), rng.uniform(1e-6, 2.0, (2, 5))
    t = [torch.tensor(a, dtype=F64) for a in (w, pi, mu, sigma)]
    view = (2, 1, 1, 5)
    got = penalty.log_joint_densities(t[0], *(a.reshape(view) for a in (t[1].log(), t[2], t[3])))
    assert got.shape == (2, 3, 4, 5)
    for b in range(2):
        want = _scipy_terms(w, pi[b], mu[b], sigma[b]).reshape(3, 4, 5)
        assert_close(got[b], want, rtol=1e-13)


@pytest.mark.parametrize("name", sorted(CASES))
def test_penalty_callers_agree(name):
    arrays, tensors = _case(name)
    expected = _scipy_log_density(*arrays)
    assert_close(penalty.log_mixture_density(*tensors), expected, rtol=1e-13)
    assert_close(penalty.omega(*tensors), -expected.sum(), rtol=1e-13)
    gamma = softmax(_scipy_terms(*arrays), axis=1)
    assert_close(penalty.responsibilities(*tensors), gamma, rtol=1e-10, atol=1e-300)


@pytest.mark.parametrize("which_kernel", ["native", "torch"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_and_distribution_agree(monkeypatch, name, which_kernel):
    if which_kernel == "native" and not kernel.native_available():
        pytest.skip("no C compiler on this machine")
    monkeypatch.setattr(kernel, "_kernel", which_kernel)
    arrays, (w, pi, mu, sigma) = _case(name)
    expected = _scipy_log_density(*arrays).sum()
    assert_close(kernel.mixture_log_prob(w, pi, mu, sigma), expected, rtol=1e-12)
    shaped = w.reshape(6, 10)
    prior = MixtureOfGaussians(pi, mu, sigma, event_shape=shaped.shape)  # the kernel path
    assert_close(prior.log_prob(shaped), expected, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
def test_batched_distribution_path_agrees(name):
    """The broadcasting branch (e.g. ``Predictive(parallel=True)``): two mixtures at once."""
    arrays, (w, pi, mu, sigma) = _case(name)
    w_np, pi_np, mu_np, sigma_np = arrays
    mu2 = mu_np + 0.5
    prior = MixtureOfGaussians(
        pi.expand(2, -1), torch.stack([mu, mu + 0.5]), sigma.expand(2, -1), event_shape=(60,)
    )
    got = prior.log_prob(torch.stack([w, w]))
    want = [
        _scipy_log_density(w_np, pi_np, mu_np, sigma_np).sum(),
        _scipy_log_density(w_np, pi_np, mu2, sigma_np).sum(),
    ]
    assert got.shape == (2,)
    assert_close(got, want, rtol=1e-12)


def test_double_backward_path_agrees():
    """``create_graph=True`` takes the kernel's (N, M) differentiable path; its ∂ln p/∂w."""
    arrays, (w, pi, mu, sigma) = _case("collapsed_and_wide")
    w_np, _, mu_np, sigma_np = arrays
    gamma = softmax(_scipy_terms(*arrays), axis=1)
    want = -(gamma * (w_np[:, None] - mu_np) / sigma_np**2).sum(1)  # (5.141) for +ln p
    w = w.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(kernel.mixture_log_prob(w, pi, mu, sigma), w, create_graph=True)
    assert grad.requires_grad
    assert_close(grad, want, rtol=1e-9, atol=1e-300)


def test_plotted_mixture_curve_agrees():
    """The diagnostics plot's curve: n Δ Σ_j π_j N(grid | μ_j, σ_j²) against scipy."""
    from bayes_sws.diagnostics import plot_mixture_over_histogram

    pi, mu, sigma = np.array([0.7, 0.3]), np.array([0.0, 0.4]), np.array([1e-3, 0.2])
    net = torch.nn.Linear(8, 4)
    fig = plot_mixture_over_histogram(net, (pi, mu, sigma), per_layer=False, bins=20)
    ax = fig.axes[0]
    line = next(ln for ln in ax.lines if ln.get_label() == "mixture")
    grid, expected_counts = line.get_xdata(), line.get_ydata()
    values = net.weight.detach().numpy().reshape(-1)  # the prior covers weights, not biases
    lo = min(values.min(), (mu - 3 * sigma).min())
    hi = max(values.max(), (mu + 3 * sigma).max())
    scale = values.size * (hi - lo) / 20
    want = scale * np.exp(_scipy_log_density(grid, pi, mu, sigma))
    assert_close(expected_counts, want, rtol=1e-12, atol=1e-300)
