"""Grouped mixtures: a separate mixture (π, μ, σ and hyperpriors) per layer or group.

Oracles: PRML §5.5.1's layer-wise Gaussian prior in closed form (numpy), scipy's
densities for every term of a two-group model's log joint, the shared model
itself for one group holding every tensor (the same operations, bit for bit),
and Pyro's ``Trace_ELBO`` for the fast MAP loss.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch
from conftest import assert_close
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoDelta, init_to_value
from scenarios import small_data, small_net
from scipy import special, stats

import bayes_sws as sws
from bayes_sws.core.sites import group_site
from bayes_sws.infer import fastvi
from bayes_sws.infer.fastmap import map_loss, supports_fast_map, weight_log_prior
from bayes_sws.infer.svi import local_params


def _values(model, seed=3):
    """Site values away from the init: weights, means, precisions and mixing moved."""
    g = torch.Generator().manual_seed(seed)
    values = model.init_values()
    for name, value in values.items():
        noise = torch.rand(value.shape, generator=g, dtype=torch.float64)
        if name.startswith("net."):
            values[name] = value + 0.1 * (noise - 0.5)
        elif name.endswith(".means"):
            values[name] = value + 0.05 * noise
        elif name.endswith(".precisions"):
            values[name] = value * (0.5 + noise)
        elif name.endswith(".mixing"):
            values[name] = (value + noise) / (value + noise).sum()
        elif name.endswith(".pi_zero"):
            values[name] = torch.tensor(0.7, dtype=torch.float64)
    return values


def _log_joint_without_obs(model, values, x, y):
    trace = poutine.trace(poutine.condition(model, data=values)).get_trace(x, y)
    trace.compute_log_prob()
    obs = float(trace.nodes["obs"]["log_prob_sum"])
    return float(trace.log_prob_sum()) - obs, obs


# --------------------------------------------------------------------------- PRML §5.5.1


def _layerwise_gaussian(alphas, **options):
    """One zero-mean Gaussian per layer with precision α_l: PRML §5.5.1's prior."""
    net = small_net(4)
    priors = {
        g: sws.MixturePrior(1, zero_component=False, fixed_mu=[0.0], fixed_precision=a, **options)
        for g, a in alphas.items()
    }
    return sws.SWSModel(net, priors, groups="layer", prior_scale=0.7)


def test_one_component_per_layer_is_the_layerwise_gaussian_prior():
    """−λ log p(w) = λ Σ_l [α_l/2 ||w_l||² + N_l/2 ln(2π/α_l)], gradient λ α_l w_l."""
    alphas = {"0": 3.0, "2": 0.25}
    model = _layerwise_gaussian(alphas)
    assert model.hyper_site_names == ()  # π = 1, μ = 0, α fixed: no hyperparameter sites
    x, y = small_data("categorical")
    values = {k: v.requires_grad_() for k, v in _values(model).items()}
    log_prior = weight_log_prior(model, values, model.like_tensor())
    expected = 0.0
    for group, alpha in alphas.items():
        w = values[f"net.{group}.weight"].detach().numpy()
        expected += alpha / 2 * np.sum(w**2) + w.size / 2 * math.log(2 * math.pi / alpha)
    assert_close(-float(log_prior.detach()), expected, rtol=1e-12)
    grads = torch.autograd.grad(-log_prior, [values["net.0.weight"], values["net.2.weight"]])
    for grad, group in zip(grads, alphas):
        w = values[f"net.{group}.weight"].detach().numpy()
        np.testing.assert_allclose(grad.numpy(), alphas[group] * w, rtol=1e-12, atol=0)
    # the model's log joint without the likelihood: λ times the same
    prior_part, _ = _log_joint_without_obs(model, values, x, y)
    assert_close(-prior_part, 0.7 * expected, rtol=1e-12)


def test_layerwise_gaussian_map_loss_is_cross_entropy_plus_weight_decay():
    """map_loss = Σ_n CE (numpy forward pass) + λ Σ_l α_l/2 ||w_l||² + const."""
    alphas = {"0": 2.0, "2": 0.5}
    model = _layerwise_gaussian(alphas)
    x, y = small_data("categorical")
    values = _values(model)
    with local_params():
        guide = AutoDelta(model, init_loc_fn=init_to_value(values=values))
        loss = float(map_loss(model, guide, x, y))
    net = dict(model.net.named_parameters())
    w0, w2 = values["net.0.weight"].numpy(), values["net.2.weight"].numpy()
    b0, b2 = net["0.bias"].detach().numpy(), net["2.bias"].detach().numpy()
    logits = np.tanh(x.numpy() @ w0.T + b0) @ w2.T + b2
    cross_entropy = -np.sum(special.log_softmax(logits, axis=1)[np.arange(len(y)), y.numpy()])
    penalty = sum(
        a / 2 * np.sum(w**2) + w.size / 2 * math.log(2 * math.pi / a)
        for a, w in zip(alphas.values(), (w0, w2))
    )
    assert_close(loss, cross_entropy + 0.7 * penalty, rtol=1e-12)


# --------------------------------------------------------------------------- the shared case


def test_one_group_of_all_tensors_is_the_shared_mixture_bit_for_bit():
    """groups={"all": ["*"]} computes today's shared loss with the same operations."""
    x, y = small_data("categorical")
    shared = sws.SWSModel(small_net(4), sws.MixturePrior(4), prior_scale=0.3)
    grouped = sws.SWSModel(
        small_net(4), sws.MixturePrior(4), prior_scale=0.3, groups={"all": ["*"]}
    )
    values = _values(shared)
    renamed = {(group_site(k, "all") if k.startswith("sws.") else k): v for k, v in values.items()}
    assert set(renamed) == set(grouped.init_values())
    losses = []
    with local_params():
        for model, vals in ((shared, values), (grouped, renamed)):
            guide = AutoDelta(model, init_loc_fn=init_to_value(values=vals))
            assert supports_fast_map(model, guide)
            losses.append(map_loss(model, guide, x, y))
    assert torch.equal(losses[0], losses[1])
    assert shared.groups is None and shared.hyper_site_names == sws.MixturePrior(4).site_names


# --------------------------------------------------------------------------- two groups


def _scipy_mixture_prior(prior, values, group, weights):
    """log p(π, μ, σ) (scipy) and Σ_i log Σ_j π_j N(w_i | μ_j, σ_j) of one group."""
    pi0 = float(values[f"sws.{group}.pi_zero"])
    mixing = values[f"sws.{group}.mixing"].numpy()
    means = values[f"sws.{group}.means"].numpy()
    tau = values[f"sws.{group}.precisions"].numpy()
    a, b = prior.pi_zero_prior
    hyper = stats.beta(a, b).logpdf(pi0)
    hyper += stats.dirichlet(np.full(mixing.size, prior.mixing_concentration)).logpdf(mixing)
    hyper += stats.norm(prior.mean_loc, prior.mean_scale).logpdf(means).sum()
    conc, rate = prior.precision_concentration, prior.precision_rate
    hyper += stats.gamma(conc, scale=1 / rate).logpdf(tau).sum()
    pi = np.concatenate([[pi0], (1 - pi0) * mixing])
    mu = np.concatenate([[0.0], means])
    sigma = tau**-0.5
    w = np.concatenate([v.numpy().ravel() for v in weights])
    dens = stats.norm(mu[None, :], sigma[None, :]).logpdf(w[:, None]) + np.log(pi)[None, :]
    return hyper, special.logsumexp(dens, axis=1).sum()


@pytest.mark.parametrize("groups", ["layer", {"first": ["0.*"], "second": ["2.weight"]}])
def test_two_groups_log_joint_is_the_sum_of_independent_mixtures(groups):
    prior = sws.MixturePrior(4, precision_prior=(3.0, 0.5))
    model = sws.SWSModel(small_net(4), prior, prior_scale=0.4, groups=groups)
    names = ["0", "2"] if groups == "layer" else ["first", "second"]
    assert list(model.groups) == names
    assert model.groups[names[0]] == ("0.weight",)
    assert model.hyper_site_names == tuple(
        f"sws.{g}.{s}" for g in names for s in ("pi_zero", "mixing", "means", "precisions")
    )
    x, y = small_data("categorical")
    values = _values(model)
    expected = 0.0
    for group, layer in zip(names, ("0", "2")):
        hyper, weights = _scipy_mixture_prior(prior, values, group, [values[f"net.{layer}.weight"]])
        expected += hyper + 0.4 * weights
    prior_part, obs = _log_joint_without_obs(model, values, x, y)
    assert_close(prior_part, expected, rtol=1e-11)
    with local_params():
        guide = AutoDelta(model, init_loc_fn=init_to_value(values=values))
        assert supports_fast_map(model, guide)
        assert_close(float(map_loss(model, guide, x, y)), -(expected + obs), rtol=1e-11)
        elbo = Trace_ELBO().differentiable_loss(model, guide, x, y)
    assert_close(float(elbo), -(expected + obs), rtol=1e-11)
    # the deterministic sites of each group's mixture
    trace = poutine.trace(poutine.condition(model, data=values)).get_trace(x, y)
    mixtures = model.mixtures(values)
    for group in names:
        for site, part in zip(("pi", "mu", "sigma"), mixtures[group]):
            assert torch.equal(trace.nodes[f"sws.{group}.{site}"]["value"], part)
    # sws.pi, sws.mu, sws.sigma: the groups' components side by side, π by share of weights
    first, second = (mixtures[g] for g in names)
    pi = torch.cat([first.pi * 18 / 42, second.pi * 24 / 42])
    assert_close(trace.nodes["sws.pi"]["value"], pi, rtol=1e-15)
    assert torch.equal(trace.nodes["sws.mu"]["value"], torch.cat([first.mu, second.mu]))
    assert torch.equal(trace.nodes["sws.sigma"]["value"], torch.cat([first.sigma, second.sigma]))


def test_map_loss_equals_trace_elbo_in_value_and_gradients_with_layer_groups():
    model = sws.SWSModel(small_net(1), sws.MixturePrior(3), likelihood="gaussian", groups="layer")
    x, y = small_data("gaussian")
    with local_params():
        guide = AutoDelta(model, init_loc_fn=init_to_value(values=_values(model)))
        guide(x, y)
        params = list(guide.parameters()) + list(model.free_parameters().values())
        expected = Trace_ELBO().differentiable_loss(model, guide, x, y)
        expected_grads = torch.autograd.grad(expected, params)
        actual = map_loss(model, guide, x, y)
        actual_grads = torch.autograd.grad(actual, params)
    assert_close(actual, expected, rtol=1e-10)
    for a, e in zip(actual_grads, expected_grads):
        scale = float(e.abs().max()) or 1.0
        assert_close(a / scale, e / scale, rtol=0, atol=1e-8)


def test_fit_map_with_layer_groups_fast_and_pyro_paths_agree(monkeypatch):
    x, y = small_data("categorical")
    results = []
    for fast in (True, False):
        model = sws.SWSModel(small_net(4), sws.MixturePrior(3), groups="layer")
        if not fast:  # fit takes Pyro's Trace_ELBO
            monkeypatch.setattr(fastvi, "supports_fast_map", lambda model, guide: False)
        results.append(sws.fit(model, x, y, guide="map", num_steps=30, lr=0.01, seed=0))
    np.testing.assert_allclose(results[0].losses, results[1].losses, rtol=1e-9)
    fast_mix, slow_mix = (r.model.mixtures(r.median()) for r in results)
    for group in ("0", "2"):
        for a, b in zip(fast_mix[group], slow_mix[group]):
            assert_close(a, b, rtol=1e-8, atol=1e-12)
    # FitResult.mixture(): the groups' components side by side, π by share of the weights
    summary = results[0].mixture()
    sizes = {"0": 18, "2": 24}
    assert summary.pi.shape == (6,)
    for k, group in enumerate(("0", "2")):
        part = fast_mix[group]
        assert_close(summary.pi[3 * k : 3 * k + 3], part.pi * sizes[group] / 42, rtol=1e-12)
        assert torch.equal(summary.mu[3 * k : 3 * k + 3], part.mu)


def test_group_errors():
    net = small_net(4)
    with pytest.raises(ValueError, match="matches no group"):
        sws.SWSModel(net, sws.MixturePrior(3), groups={"first": ["0.weight"]})
    with pytest.raises(ValueError, match="groups must be"):
        sws.SWSModel(net, sws.MixturePrior(3), groups="module")
    with pytest.raises(TypeError, match="needs groups"):
        sws.SWSModel(net, {"0": sws.MixturePrior(3)})
    with pytest.raises(ValueError, match="hold no prior-carrying tensor"):
        sws.SWSModel(net, {"0": sws.MixturePrior(3), "9": sws.MixturePrior(3)}, groups="layer")
    with pytest.raises(ValueError, match="non-empty string"):
        sws.MixturePrior(3).for_group("")
    pyro.clear_param_store()


def test_arviz_posterior_names_every_group_site():
    """Each group's sites are posterior variables with component dimensions; the summary too."""
    from bayes_sws.diagnostics import to_inference_data

    x, y = small_data("categorical")
    model = sws.SWSModel(small_net(4), sws.MixturePrior(3), groups="layer")
    result = sws.fit(model, x, y, guide="normal", num_steps=5, seed=0)
    posterior = to_inference_data(result, num_samples=4, num_chains=2).posterior
    for group in ("0", "2"):
        assert posterior[f"sws.{group}.means"].dims == ("chain", "draw", "nonzero_component")
        assert posterior[f"sws.{group}.precisions"].dims == ("chain", "draw", "component")
    assert posterior["sws.pi"].shape == (2, 2, 6)
    np.testing.assert_allclose(posterior["sws.pi"].values.sum(-1), 1.0, rtol=1e-12)


# --------------------------------------------------------------------------- λ per tensor


def test_tensor_scales_weigh_each_tensors_layerwise_gaussian_penalty():
    """One fixed zero-mean Gaussian shared by both layers, the second's prior weighed 3×:
    map_loss = Σ_n CE (numpy forward pass) + λ Σ_t s_t [α/2 ||w_t||² + N_t/2 ln(2π/α)], the
    Pyro model's prior part −λ times the same, and the penalty module's value and gradient
    λ s_t α w_t (the biases carry no prior)."""
    alpha, lam, scales = 2.0, 0.7, {"0.weight": 1.0, "2.weight": 3.0}
    prior = sws.MixturePrior(1, zero_component=False, fixed_mu=[0.0], fixed_precision=alpha)
    model = sws.SWSModel(small_net(4), prior, prior_scale=lam, tensor_scales={"2.*": 3.0})
    assert model.tensor_scales == {"2.weight": 3.0} and "tensor_scales" in repr(model)
    x, y = small_data("categorical")
    values = _values(model)
    w = {n: values[f"net.{n}"].numpy() for n in scales}
    penalty = sum(
        s * (alpha / 2 * np.sum(w[n] ** 2) + w[n].size / 2 * math.log(2 * math.pi / alpha))
        for n, s in scales.items()
    )
    with local_params():
        guide = AutoDelta(model, init_loc_fn=init_to_value(values=values))
        assert supports_fast_map(model, guide)
        loss = float(map_loss(model, guide, x, y))
    net = dict(model.net.named_parameters())
    b0, b2 = net["0.bias"].detach().numpy(), net["2.bias"].detach().numpy()
    logits = np.tanh(x.numpy() @ w["0.weight"].T + b0) @ w["2.weight"].T + b2
    cross_entropy = -np.sum(special.log_softmax(logits, axis=1)[np.arange(len(y)), y.numpy()])
    assert_close(loss, cross_entropy + lam * penalty, rtol=1e-12)
    prior_part, _ = _log_joint_without_obs(model, values, x, y)
    assert_close(-prior_part, lam * penalty, rtol=1e-12)

    layers = small_net(4)
    module = sws.SoftWeightSharing(layers, prior, prior_scale=lam, tensor_scales={"2.*": 3.0})
    assert "tensor_scales={'2.weight': 3.0}" in repr(module)
    value = module()
    value.backward()
    at = {n: p.detach().numpy() for n, p in layers.named_parameters()}
    expected = sum(
        s * (alpha / 2 * np.sum(at[n] ** 2) + at[n].size / 2 * math.log(2 * math.pi / alpha))
        for n, s in scales.items()
    )
    assert_close(float(value.detach()), lam * expected, rtol=1e-12)
    for name, scale in scales.items():
        grad = dict(layers.named_parameters())[name].grad.numpy()
        np.testing.assert_allclose(grad, lam * scale * alpha * at[name], rtol=1e-12)
    assert module.to_result().config["tensor_scales"] == {"2.weight": 3.0}


@pytest.mark.parametrize("groups", [None, "layer"])
def test_tensor_scales_log_joint_and_fast_loss_against_scipy(groups):
    """A learned mixture (shared, or one per layer) with each tensor's prior weighed by its
    own multiplier: the Pyro model's log joint is the hyperpriors plus λ Σ_t s_t Σ_i log p(w_ti)
    (scipy's densities, the hyperpriors unweighed); the fast MAP loss and Trace_ELBO equal it,
    and their gradients agree."""
    prior = sws.MixturePrior(4, precision_prior=(3.0, 0.5))
    scales = {"0.weight": 0.5, "2.weight": 2.5}
    model = sws.SWSModel(small_net(4), prior, prior_scale=0.4, groups=groups, tensor_scales=scales)
    x, y = small_data("categorical")
    values = _values(model)
    if groups is None:  # the shared sites under a group's names, for the helper
        named = {group_site(k, "all") if k.startswith("sws.") else k: v for k, v in values.items()}
        hyper, _ = _scipy_mixture_prior(prior, named, "all", [values["net.0.weight"]])
        expected = hyper + sum(
            0.4 * s * _scipy_mixture_prior(prior, named, "all", [values[f"net.{n}"]])[1]
            for n, s in scales.items()
        )
    else:
        expected = 0.0
        for name, scale in scales.items():
            group = name.split(".")[0]
            hyper, weights = _scipy_mixture_prior(prior, values, group, [values[f"net.{name}"]])
            expected += hyper + 0.4 * scale * weights
    prior_part, obs = _log_joint_without_obs(model, values, x, y)
    assert_close(prior_part, expected, rtol=1e-11)
    with local_params():
        guide = AutoDelta(model, init_loc_fn=init_to_value(values=values))
        guide(x, y)
        params = list(guide.parameters())
        actual = map_loss(model, guide, x, y)
        elbo = Trace_ELBO().differentiable_loss(model, guide, x, y)
        grads = torch.autograd.grad(actual, params)
        elbo_grads = torch.autograd.grad(elbo, params)
    assert_close(float(actual), -(expected + obs), rtol=1e-11)
    assert_close(float(elbo), -(expected + obs), rtol=1e-11)
    for a, e in zip(grads, elbo_grads):
        scale = float(e.abs().max()) or 1.0
        assert_close(a / scale, e / scale, rtol=0, atol=1e-9)


def test_fit_with_tensor_scales_fast_and_pyro_paths_agree(monkeypatch):
    x, y = small_data("categorical")
    results, states = [], []
    for fast in (True, False):
        model = sws.SWSModel(small_net(4), sws.MixturePrior(3), tensor_scales={"0.weight": 4.0})
        if not fast:  # fit takes Pyro's Trace_ELBO
            monkeypatch.setattr(fastvi, "supports_fast_map", lambda model, guide: False)
        settings = {"guide": "map", "num_steps": 30, "lr": 0.01, "seed": 0}
        results.append(sws.fit(model, x, y, checkpoint=states.append, **settings))
    np.testing.assert_allclose(results[0].losses, results[1].losses, rtol=1e-9)
    assert results[0].config["tensor_scales"] == {"0.weight": 4.0}
    # a run continues only under the multipliers it was started with
    state = states[-1]
    model = sws.SWSModel(small_net(4), sws.MixturePrior(3))
    with pytest.raises(ValueError, match=r"tensor_scales=\{'0.weight': 4.0\} in the checkpoint"):
        sws.fit(model, x, y, guide="map", num_steps=40, lr=0.01, seed=0, initial_state=state)


def test_tensor_scales_errors():
    net, prior = small_net(4), sws.MixturePrior(3)
    with pytest.raises(ValueError, match=r"'3\.\*', which matches no prior-carrying tensor"):
        sws.SWSModel(net, prior, tensor_scales={"3.*": 2.0})
    with pytest.raises(ValueError, match=r"tensor_scales\['0.weight'\]"):
        sws.SWSModel(net, prior, tensor_scales={"0.weight": 0.0})
    with pytest.raises(ValueError, match=r"tensor_scales\['0.weight'\]"):
        sws.SWSModel(net, prior, tensor_scales={"0.weight": float("nan")})
    with pytest.raises(TypeError, match="tensor_scales must be a dict"):
        sws.SWSModel(net, prior, tensor_scales=2.0)
    # a pattern that only matches a tensor without the prior (a bias) is refused too
    with pytest.raises(ValueError, match="matches no prior-carrying tensor"):
        sws.SWSModel(net, prior, tensor_scales={"0.bias": 2.0})
