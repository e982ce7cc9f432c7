"""MixtureOfGaussians, OrderedNormal and SoftTargetCategorical against scipy and closed forms."""

import numpy as np
import pyro
import pytest
import torch
from conftest import assert_close
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoDelta, AutoLowRankMultivariateNormal, AutoNormal
from scipy import integrate
from scipy.special import log_softmax, logsumexp
from scipy.stats import norm

from bayes_sws import MixtureOfGaussians, OrderedNormal
from bayes_sws.core.distributions import SoftTargetCategorical
from bayes_sws.core.likelihoods import SoftCategorical

PI = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
MU = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64)
SIGMA = torch.tensor([0.3, 0.1, 0.7], dtype=torch.float64)


def _scipy_log_density(w):
    return logsumexp(
        np.log(PI.numpy()) + norm.logpdf(np.asarray(w)[..., None], MU.numpy(), SIGMA.numpy()),
        axis=-1,
    )


def test_log_prob_sums_over_the_tensor_event():
    value = torch.randn(4, 5, dtype=torch.float64)
    d = MixtureOfGaussians(PI, MU, SIGMA, event_shape=(4, 5))
    assert d.batch_shape == () and d.event_shape == (4, 5)
    assert_close(d.log_prob(value), _scipy_log_density(value.numpy()).sum(), rtol=1e-12)


def test_batched_parameters_broadcast():
    # a batch of 3 mixtures (e.g. Predictive draws), each a prior over a (2,) tensor
    pi = PI.expand(3, 3)
    mu = MU + torch.arange(3.0, dtype=torch.float64)[:, None]
    d = MixtureOfGaussians(pi, mu, SIGMA, event_shape=(2,))
    value = torch.randn(3, 2, dtype=torch.float64)
    expected = [
        logsumexp(
            np.log(PI.numpy())
            + norm.logpdf(value[b].numpy()[:, None], mu[b].numpy(), SIGMA.numpy()),
            axis=1,
        ).sum()
        for b in range(3)
    ]
    assert d.batch_shape == (3,)
    assert_close(d.log_prob(value), expected, rtol=1e-12)
    assert d.expand((2, 3)).log_prob(value).shape == (2, 3)


def test_samples_match_mixture_moments():
    torch.manual_seed(0)
    d = MixtureOfGaussians(PI, MU, SIGMA, event_shape=(200,))
    draws = d.sample((500,))
    assert draws.shape == (500, 200)
    mean = (PI * MU).sum()
    var = (PI * (SIGMA**2 + MU**2)).sum() - mean**2
    n = draws.numel()
    # 5 standard errors of the mean and of the variance (4th central moment bound)
    assert abs(draws.mean() - mean) < 5 * (var / n).sqrt()
    fourth = (PI * ((MU - mean) ** 4 + 6 * (MU - mean) ** 2 * SIGMA**2 + 3 * SIGMA**4)).sum()
    assert abs(draws.var() - var) < 5 * ((fourth - var**2) / n).sqrt()


def test_support_is_real_and_autoguides_accept_it():
    d = MixtureOfGaussians(PI.float(), MU.float(), SIGMA.float(), event_shape=(3, 2))
    assert d.support.event_dim == 2 and d.support.base_constraint is constraints.real

    def model():
        pyro.sample("w", d)

    for guide_cls in (AutoDelta, AutoNormal, AutoLowRankMultivariateNormal):
        guide = guide_cls(model)
        trace = pyro.poutine.trace(guide).get_trace()
        assert trace.nodes["w"]["value"].shape == (3, 2)


def test_mismatched_components_are_rejected():
    with pytest.raises(ValueError, match="same number of components"):
        MixtureOfGaussians(PI, MU[:2], SIGMA)


@pytest.mark.parametrize("size", [2, 3])
def test_ordered_normal_is_ordered_order_statistics(size):
    loc, scale = torch.tensor(0.3, dtype=torch.float64), torch.tensor(1.2, dtype=torch.float64)
    d = OrderedNormal(loc, scale, size)
    assert d.support is constraints.ordered_vector
    torch.manual_seed(0)
    draws = d.sample((1000,))
    assert (draws[:, 1:] > draws[:, :-1]).all()
    # density of the order statistics of iid normals: K! prod phi
    value = torch.sort(torch.randn(size, dtype=torch.float64)).values
    expected = (
        np.log(float(np.prod(range(1, size + 1)))) + norm.logpdf(value.numpy(), 0.3, 1.2).sum()
    )
    assert_close(d.log_prob(value), expected, rtol=1e-12)


def test_ordered_normal_integrates_to_one():
    d = OrderedNormal(
        torch.tensor(0.3, dtype=torch.float64), torch.tensor(1.2, dtype=torch.float64), 2
    )

    def density(a, b):
        return float(torch.exp(d.log_prob(torch.tensor([a, b], dtype=torch.float64))))

    total, _ = integrate.dblquad(lambda b, a: density(a, b), -8.0, 8.0, lambda a: a, lambda a: 8.0)
    assert abs(total - 1.0) < 1e-6


def test_soft_target_categorical_is_the_cross_entropy_against_the_target_rows():
    """log_prob(t) = Σ_k t_k log softmax(ℓ)_k (scipy's log_softmax), one value per row; a
    one-hot row is torch's Categorical.log_prob of its label."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64)
    targets = torch.distributions.Dirichlet(torch.ones(4, dtype=torch.float64)).sample((6,))
    d = SoftTargetCategorical(logits)
    assert d.batch_shape == (6,) and d.event_shape == (4,)
    expected = (targets.numpy() * log_softmax(logits.numpy(), axis=-1)).sum(-1)
    assert_close(d.log_prob(targets), expected, rtol=1e-12)
    labels = torch.tensor([0, 3, 1, 2, 2, 0])
    one_hot = torch.nn.functional.one_hot(labels, 4).double()
    assert_close(
        d.log_prob(one_hot), torch.distributions.Categorical(logits=logits).log_prob(labels)
    )
    wide = d.expand((2, 6))  # a plate over the rows, as pyro.plate broadcasts
    assert wide.batch_shape == (2, 6) and wide.log_prob(targets).shape == (2, 6)
    draws = d.sample((50,))
    assert draws.shape == (50, 6, 4) and torch.equal(draws.sum(-1), torch.ones(50, 6).double())
    labels = SoftCategorical().sample(logits, {}, 50)  # the likelihood's predictive: labels
    assert labels.shape == (50, 6) and labels.dtype == torch.long
    with pytest.raises(ValueError, match="support"):
        SoftTargetCategorical(logits, validate_args=True).log_prob(targets * 2)
