"""The AutoDelta Trace_ELBO loss equals E(w) + λΩ(w) (− log p(π, μ, σ)) + const exactly.

Oracles: E from ``torch.nn.functional`` / numpy, Ω and the hyperprior log-densities
from scipy.stats, all in float64 and written independently of the package.
"""

import math

import numpy as np
import pyro
import pytest
import torch
from conftest import assert_close
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoDelta, init_to_value
from scenarios import N, perturbed_values, small_data, small_net
from scipy import stats
from scipy.special import logsumexp

import bayes_sws as sws
from bayes_sws.infer.svi import local_params


def _oracle(model, values, x, y, index, precision=1.0):
    """E(w) + λΩ(w) − log p(hyper) − log-likelihood constant, independently."""
    net = model.network_with(values)
    xb, yb = (x, y) if index is None else (x[index], y[index])
    scale = 1.0 if index is None else N / len(index)
    with torch.no_grad():
        out = net(xb)
    if model.likelihood.name == "gaussian":
        resid = (yb - out.squeeze(-1)).numpy()
        data = precision / 2 * (resid**2).sum() + len(resid) / 2 * math.log(2 * math.pi / precision)
    else:
        data = torch.nn.functional.cross_entropy(out, yb, reduction="sum").item()
    prior = model.prior
    v = {k: t.detach().numpy() for k, t in values.items()}
    sigma = v["sws.precisions"] ** -0.5
    if prior.zero_component:
        pi0 = prior.pi_zero if prior.pi_zero is not None else v["sws.pi_zero"]
        pi = np.concatenate([[pi0], (1 - pi0) * v["sws.mixing"]])
        mu = np.concatenate([[0.0], v["sws.means"]])
    else:
        pi, mu = v["sws.mixing"], v["sws.means"]
    w = np.concatenate([v[s].reshape(-1) for s in model.weight_site_names])
    omega = -logsumexp(np.log(pi) + stats.norm.logpdf(w[:, None], mu, sigma), axis=1).sum()
    log_hyper = 0.0
    if not prior.flat:
        if "sws.pi_zero" in v:
            log_hyper += stats.beta.logpdf(v["sws.pi_zero"], *prior.pi_zero_prior)
        log_hyper += stats.dirichlet.logpdf(
            v["sws.mixing"], np.full(len(v["sws.mixing"]), prior.mixing_concentration)
        )
        log_hyper += stats.norm.logpdf(v["sws.means"], prior.mean_loc, prior.mean_scale).sum()
        log_hyper += stats.gamma.logpdf(
            v["sws.precisions"], prior.precision_concentration, scale=1 / prior.precision_rate
        ).sum()
    return scale * data + model.prior_scale * omega - log_hyper


@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
@pytest.mark.parametrize("flat", [True, False])
@pytest.mark.parametrize("minibatch", [False, True])
@pytest.mark.parametrize("zero_component", [True, False])
def test_autodelta_loss_is_penalised_objective(kind, flat, minibatch, zero_component):
    net = small_net(1 if kind == "gaussian" else 4)
    prior = sws.MixturePrior(
        4,
        zero_component=zero_component,
        flat=flat,
        mixing_concentration=1.5,
        pi_zero_prior=(2.0, 3.0),
        precision_concentration=3.0,
        precision_rate=0.1,
    )
    model = sws.SWSModel(net, prior, likelihood=kind, prior_scale=0.7)
    x, y = small_data(kind)
    values = perturbed_values(model)
    index = torch.arange(5, 17) if minibatch else None
    with local_params():
        guide = AutoDelta(model, init_loc_fn=init_to_value(values=values))
        loss = Trace_ELBO().differentiable_loss(model, guide, x, y, index)
    assert_close(loss, _oracle(model, values, x, y, index), rtol=1e-10)


def test_fixed_pi_zero_and_learned_noise_precision():
    net = small_net(1)
    prior = sws.MixturePrior(3, pi_zero=0.9, flat=True)
    likelihood = sws.Gaussian(precision=2.5, learn_precision=True, precision_prior=(2.0, 0.5))
    model = sws.SWSModel(net, prior, likelihood=likelihood, prior_scale=2.0)
    x, y = small_data("gaussian")
    values = perturbed_values(model)
    with local_params():
        guide = AutoDelta(model, init_loc_fn=init_to_value(values=values))
        loss = Trace_ELBO().differentiable_loss(model, guide, x, y)
    precision = values["likelihood.precision"].item()  # the learned site's value, off its init 2.5
    expected = _oracle(model, values, x, y, None, precision=precision) - stats.gamma.logpdf(
        precision, 2.0, scale=2.0
    )
    assert_close(loss, expected, rtol=1e-10)


def test_trace_records_mixture_and_scales_weight_sites_only():
    net = small_net(4)
    model = sws.SWSModel(net, sws.MixturePrior(5, zero_component=True), prior_scale=0.25)
    x, y = small_data("categorical")
    trace = pyro.poutine.trace(model).get_trace(x, y)
    for name in ("sws.pi", "sws.mu", "sws.sigma"):
        assert trace.nodes[name]["type"] == "sample" and trace.nodes[name]["value"].shape == (5,)
    assert trace.nodes["sws.mu"]["value"][0] == 0.0
    assert_close(trace.nodes["sws.pi"]["value"].sum(), 1.0, rtol=1e-12)
    assert set(model.weight_site_names) == {"net.0.weight", "net.2.weight"}
    for name in model.weight_site_names:
        assert trace.nodes[name]["scale"] == 0.25
    for name in model.prior.site_names:
        assert trace.nodes[name]["scale"] == 1.0
    obs = trace.nodes["obs"]
    assert obs["is_observed"] and obs["cond_indep_stack"][0].name == "data"


def test_conv_network_and_bias_selection():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(3 * 6 * 6, 10),
    )
    model = sws.SWSModel(net, sws.MixturePrior(4, include_bias=True))
    assert model.weight_site_names == ("net.0.weight", "net.0.bias", "net.3.weight", "net.3.bias")
    x = torch.randn(8, 1, 8, 8)
    y = torch.randint(0, 10, (8,))
    trace = pyro.poutine.trace(model).get_trace(x, y)
    assert trace.nodes["net.0.weight"]["value"].shape == (3, 1, 3, 3)
    result = sws.fit(model, x, y, num_steps=3, lr=1e-3)
    assert result.predict(x).shape == (8, 10)


def test_predictive_parallel_draws_batched_weights():
    net = small_net(4)
    model = sws.SWSModel(net, sws.MixturePrior(3))
    x, y = small_data("categorical")
    result = sws.fit(model, x, y, guide="normal", num_steps=2)
    with local_params():
        pred = pyro.infer.Predictive(model, guide=result.guide, num_samples=6, parallel=True)(x)
    assert pred["obs"].shape == (6, N)
    assert pred["sws.pi"].shape[-1] == 3 and pred["sws.pi"].shape[0] == 6


# ---------------------------------------------------------------------- forward with given weights
def _manual_forward(net, weights, x):
    """The network written out by hand with the given weights (the oracle)."""
    w0 = weights.get("0.weight", net[0].weight)
    w2 = weights.get("2.weight", net[2].weight)
    return torch.tanh(x @ w0.T + net[0].bias) @ w2.T + net[2].bias


def _tanh_net():
    torch.manual_seed(3)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)
    ).double()


def test_forward_with_weights_matches_the_network_written_by_hand_and_restores_it():
    net = _tanh_net()
    model = sws.SWSModel(net, sws.MixturePrior(3))
    originals = dict(net.named_parameters())
    x = torch.randn(7, 4, dtype=torch.float64)
    weights = {
        n: torch.randn_like(p, requires_grad=True) for n, p in originals.items() if "weight" in n
    }
    out = model.forward(weights, x)
    assert_close(out, _manual_forward(net, weights, x), rtol=1e-14)
    out.sum().backward()  # gradients reach the given values, not the parameters
    assert all(w.grad is not None for w in weights.values())
    assert all(originals[n].grad is None for n in weights)
    assert all(p is originals[n] for n, p in net.named_parameters())
    # a parameter replaced on the network after the first call is seen
    net[0].weight = torch.nn.Parameter(torch.zeros(5, 4, dtype=torch.float64))
    assert model.parameters_with_prior()["0.weight"] is net[0].weight
    assert_close(
        model.forward({"2.weight": weights["2.weight"]}, x),
        _manual_forward(net, {"2.weight": weights["2.weight"]}, x),
        rtol=1e-14,
    )


def test_forward_restores_the_parameters_when_the_network_raises():
    net = _tanh_net()
    model = sws.SWSModel(net, sws.MixturePrior(3))
    before = dict(net.named_parameters())
    with pytest.raises(RuntimeError):
        model.forward(
            {"0.weight": torch.zeros(5, 4, dtype=torch.float64)}, torch.zeros(2, 9).double()
        )
    assert dict(net.named_parameters()) == before


def test_forward_with_tied_weights_sets_both_uses():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 3, bias=False).double(), torch.nn.Linear(3, 3, bias=False).double()
    b.weight = a.weight  # one parameter, two modules
    net = torch.nn.Sequential(a, torch.nn.Tanh(), b)
    model = sws.SWSModel(net, sws.MixturePrior(2))
    assert model.prior_param_names == ("0.weight",)
    w = torch.randn(3, 3, dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64)
    assert_close(model.forward({"0.weight": w}, x), torch.tanh(x @ w.T) @ w.T, rtol=1e-14)
