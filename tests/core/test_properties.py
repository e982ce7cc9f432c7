"""Properties of the closed forms (``bayes_sws.core.penalty``) and of the prior's ``log_prob``,
checked with hypothesis against numpy/scipy formulas written here; and determinism of ``fit``.

- finite for |w| <= 1e4 and sigma >= 1e-6;
- invariant under a permutation of the components;
- one component at mean 0 is weight decay: Omega = sum w^2 / (2 sigma^2) + N log(sigma sqrt(2 pi)).
"""

import math

import numpy as np
import pytest
import torch
from conftest import assert_close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp, softmax

import bayes_sws as sws
from bayes_sws.core import penalty
from bayes_sws.core.distributions import MixtureOfGaussians

F64 = torch.float64
PROPERTY = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

weights = st.lists(st.floats(-1e4, 1e4), min_size=1, max_size=30)
components = st.lists(
    st.tuples(st.floats(1e-3, 1.0), st.floats(-1e4, 1e4), st.floats(1e-6, 1e3)),
    min_size=1,
    max_size=6,
)


def _mixture(params):
    pi, mu, sigma = (np.array(column, dtype=np.float64) for column in zip(*params))
    return pi / pi.sum(), mu, sigma


def _numpy_log_terms(w, pi, mu, sigma):
    z = (w[:, None] - mu) / sigma
    return np.log(pi) - 0.5 * z**2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)


def _t(*arrays):
    return tuple(torch.tensor(a, dtype=F64) for a in arrays)


@PROPERTY
@given(w=weights, params=components)
def test_closed_forms_are_finite_and_match_numpy(w, params):
    w = np.array(w)
    pi, mu, sigma = _mixture(params)
    tw, tpi, tmu, tsigma = _t(w, pi, mu, sigma)
    omega = penalty.omega(tw, tpi, tmu, tsigma)
    gamma = penalty.responsibilities(tw, tpi, tmu, tsigma)
    grads = penalty.gradients(tw, tpi, tmu, tsigma)
    log_prob = MixtureOfGaussians(tpi, tmu, tsigma, event_shape=tw.shape).log_prob(tw)
    assert torch.isfinite(omega) and torch.isfinite(log_prob) and torch.isfinite(gamma).all()
    for name, g in zip(grads._fields, grads):
        assert torch.isfinite(g).all(), name
    terms = _numpy_log_terms(w, pi, mu, sigma)
    expected = -logsumexp(terms, axis=1).sum()
    assert_close(omega, expected, rtol=1e-10, atol=1e-8)
    assert_close(log_prob, -expected, rtol=1e-10, atol=1e-8)
    assert_close(gamma, softmax(terms, axis=1), rtol=1e-8, atol=1e-12)
    assert_close(gamma.sum(-1), np.ones(len(w)), rtol=1e-12)


@PROPERTY
@given(w=weights, params=components, data=st.data())
def test_permuting_components_changes_nothing(w, params, data):
    pi, mu, sigma = _t(*_mixture(params))
    w = torch.tensor(w, dtype=F64)
    order = torch.tensor(data.draw(st.permutations(range(len(pi)))))
    permuted = (pi[order], mu[order], sigma[order])
    assert_close(penalty.omega(w, *permuted), penalty.omega(w, pi, mu, sigma), rtol=1e-12)
    assert_close(
        penalty.responsibilities(w, *permuted),
        penalty.responsibilities(w, pi, mu, sigma)[:, order],
        rtol=1e-10,
        atol=1e-300,
    )
    a = MixtureOfGaussians(*permuted, event_shape=w.shape).log_prob(w)
    b = MixtureOfGaussians(pi, mu, sigma, event_shape=w.shape).log_prob(w)
    assert_close(a, b, rtol=1e-12)
    g, g_p = penalty.gradients(w, pi, mu, sigma), penalty.gradients(w, *permuted)
    assert_close(g_p.w, g.w, rtol=1e-9, atol=1e-9)
    for name in ("mu", "sigma", "log_variance", "logits"):
        assert_close(getattr(g_p, name), getattr(g, name)[order], rtol=1e-9, atol=1e-9)


@PROPERTY
@given(w=st.lists(st.floats(-1e4, 1e4), min_size=1, max_size=30), sigma=st.floats(1e-6, 1e3))
def test_one_component_at_zero_is_weight_decay(w, sigma):
    w = np.array(w)
    tw, tpi, tmu, tsigma = _t(w, [1.0], [0.0], [sigma])
    decay = np.sum(w**2) / (2 * sigma**2) + len(w) * np.log(sigma * np.sqrt(2 * np.pi))
    assert_close(penalty.omega(tw, tpi, tmu, tsigma), decay, rtol=1e-12, atol=1e-9)
    log_prob = MixtureOfGaussians(tpi, tmu, tsigma, event_shape=tw.shape).log_prob(tw)
    assert_close(log_prob, -decay, rtol=1e-12, atol=1e-9)
    grads = penalty.gradients(tw, tpi, tmu, tsigma, prior_scale=0.3)
    assert_close(grads.w, 0.3 * w / sigma**2, rtol=1e-12, atol=1e-300)  # λ ∂(|w|²/2σ²)/∂w
    assert_close(grads.logits, [0.0], atol=1e-9)


# ---------------------------------------------------------------------------- determinism
def _fit(guide):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(80, 6, generator=g), torch.randint(0, 3, (80,), generator=g)
    model = sws.SWSModel(net, sws.MixturePrior(4), prior_scale=0.5)
    result = sws.fit(model, x, y, guide=guide, num_steps=25, batch_size=32, lr=1e-2, seed=11)
    state = {k: v.detach().clone() for k, v in result.guide.state_dict().items()}
    state.update({f"net.{k}": v.detach().clone() for k, v in net.state_dict().items()})
    return state, result.losses


@pytest.mark.parametrize("guide", ["map", "normal"])
def test_same_seed_data_and_config_give_bitwise_identical_parameters(guide):
    (first, losses_a), (second, losses_b) = _fit(guide), _fit(guide)
    assert first.keys() == second.keys() and first
    for name in first:
        assert torch.equal(first[name], second[name]), name
    np.testing.assert_array_equal(losses_a, losses_b)
    assert math.isfinite(losses_a[-1])
