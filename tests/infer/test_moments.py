"""The public read-out of a guide's moments (issue 14, item 11): ``guide_moments``.

Oracles: the closed-form Gaussian posterior of a linear model (the Laplace guide is
exact there), and Monte Carlo moments of the guide's own draws mapped to the
unconstrained space with torch's ``biject_to``.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch
from conftest import assert_close
from pyro.poutine.util import site_is_subsample
from scenarios import small_data, small_net
from torch.distributions import biject_to

import bayes_sws as sws
from bayes_sws.infer.guides import guide_moments

N, D = 50, 3
DRAWS = 2000
ALPHA, BETA, LAMBDA = 2.0, 4.0, 1.0


def _linear_problem():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, D)) @ np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.5, 0.3, 0.8]])
    y = x @ np.array([1.0, -0.5, 0.3]) + rng.standard_normal(N) / math.sqrt(BETA)
    torch.manual_seed(0)
    net = torch.nn.Linear(D, 1, bias=False).double()
    prior = sws.MixturePrior(1, zero_component=True, fixed_precision=ALPHA)
    model = sws.SWSModel(net, prior, likelihood=sws.Gaussian(precision=BETA), prior_scale=LAMBDA)
    return model, x, y


def _moments(result):
    return result.moments()  # guide_moments(result.guide): no context needed


def test_laplace_moments_are_the_closed_form_posterior():
    model, x, y = _linear_problem()
    precision = LAMBDA * ALPHA * np.eye(D) + BETA * x.T @ x
    cov = np.linalg.inv(precision)
    mean = BETA * cov @ x.T @ y
    result = sws.fit(model, x, y, guide="laplace", optimizer="lbfgs", lr=1.0, num_steps=30)
    (site,) = _moments(result).values()
    assert_close(site.loc.reshape(-1), mean, rtol=1e-8)
    assert_close(site.scale.reshape(-1), np.sqrt(np.diag(cov)), rtol=1e-8)
    assert_close(site.median, site.loc, rtol=0)  # a real-valued site: T is the identity


@pytest.mark.parametrize("guide", ["map", "normal", "lowrank", "mixed"])
def test_moments_match_the_guides_own_draws(guide):
    x, y = small_data("gaussian")
    model = sws.SWSModel(small_net(1), sws.MixturePrior(3), likelihood=sws.Gaussian(4.0))
    result = sws.fit(model, x, y, guide=guide, num_steps=30, lr=1e-2, seed=0)
    moments = _moments(result)
    trace = pyro.poutine.trace(model).get_trace(x, y)
    latent = {
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    }
    assert set(moments) == latent
    draws = result.sample_posterior(DRAWS)
    spread_seen = 0
    for name, site in moments.items():
        transform = biject_to(trace.nodes[name]["fn"].support)
        u = transform.inv(draws[name]).reshape(DRAWS, -1)
        loc, scale = site.loc.reshape(-1), site.scale.reshape(-1)
        assert_close(transform(site.loc), site.median, rtol=1e-12)
        if float(scale.max()) == 0.0:  # a point mass: every draw is the loc
            assert_close(u.mean(0), loc, rtol=1e-9, atol=1e-12)
            continue
        # five standard errors of a mean of 2,000 draws; 10 % on the standard deviation
        assert float(((u.mean(0) - loc).abs() / scale).max()) <= 5 / math.sqrt(DRAWS)
        assert_close(u.std(0), scale, rtol=0.1)
        spread_seen += 1
    assert spread_seen == (0 if guide == "map" else len(latent) - (4 if guide == "mixed" else 0))


def test_an_unknown_guide_is_named():
    with pytest.raises(TypeError, match="not function"):
        guide_moments(lambda *args: None)
