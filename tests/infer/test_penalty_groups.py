"""Per-layer / grouped mixtures in the drop-in penalty, ``FitResult.mixtures`` and Lightning.

Oracles: Pyro's ``Trace_ELBO`` loss of the ``AutoDelta`` guide of the same
grouped model (values and gradients, as ``tests/infer/test_penalty_module.py``
for the shared mixture), PRML §5.5.1's layer-wise Gaussian prior in closed form
(numpy), the mixture written out by hand from each group's site values
(:math:`\\pi = (\\pi_0, (1-\\pi_0)\\,\\text{mixing})`, :math:`\\mu = (0, \\text{means})`,
:math:`\\sigma = \\text{precisions}^{-1/2}`), each group's own prior, and a hand
count of the per-group codebooks.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close
from pyro.infer import Trace_ELBO

import bayes_sws as sws
from bayes_sws.core.sites import group_site
from bayes_sws.infer import SVIEngine, batch_indices, local_params
from bayes_sws.infer.penalty_module import SoftWeightSharing

N, B = 48, 16


def _data(dtype=torch.float64):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, 5, generator=gen, dtype=dtype)
    return x, torch.randint(0, 3, (N,), generator=gen)


def _net(dtype=torch.float64):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    return net.to(dtype)


CASES = {
    # one mixture per layer, the same settings in each
    "layer": {
        "prior": lambda: sws.MixturePrior(4, pi_zero_prior=(2.0, 3.0), mixing_concentration=1.5),
        "groups": "layer",
        "sites": 8,  # pi_zero, mixing, means, precisions per layer (hand count)
    },
    # named groups by glob pattern, a prior of their own each (the biases in one group)
    "dict": {
        "prior": lambda: {
            "hidden": sws.MixturePrior(3, pi_zero_prior=(2.0, 3.0), include_bias=True),
            "out": sws.MixturePrior(4, pi_zero=0.6, ordered_means=True),
        },
        "groups": {"hidden": ["0.*"], "out": ["2.weight"]},
        "sites": 7,  # hidden: pi_zero, mixing, means, precisions; out: mixing, means, precisions
    },
}


def _move(params):
    """Move parameters by the same arbitrary amount (a deterministic 'step')."""
    with torch.no_grad():
        for p in params:
            p.add_(0.01 * torch.sin(torch.arange(p.numel(), dtype=p.dtype)).reshape(p.shape))


@pytest.mark.parametrize("case", list(CASES))
def test_grouped_loss_and_gradients_equal_the_autodelta_elbo(case):
    spec = CASES[case]
    x, y = _data()
    net = _net()
    model = sws.SWSModel(
        copy.deepcopy(net), spec["prior"](), prior_scale=0.7, groups=spec["groups"]
    )
    engine = SVIEngine(model, x, y, "map", batch_size=B, seed=2)
    engine.init()
    penalty = SoftWeightSharing(net, spec["prior"](), prior_scale=0.7, groups=spec["groups"])
    hyper_sites = model.hyper_site_names
    assert len(hyper_sites) == spec["sites"]
    assert all(site.split(".")[1] in model.groups for site in hyper_sites)  # sws.<group>.*
    assert sorted(penalty.unconstrained) == sorted(s.replace(".", "_") for s in hyper_sites)
    for step in range(3):  # different batches, parameters moved between them
        index = batch_indices(N, B, step, 2)
        with local_params():
            engine.optimizer.zero_grad()
            expected = Trace_ELBO(max_plate_nesting=1).differentiable_loss(
                model, engine.guide, x, y, index
            )
            expected.backward()
            guide_grads = {n: p.grad for n, p in engine.guide.named_parameters()}
        penalty.zero_grad()
        loss = F.cross_entropy(net(x[index]), y[index], reduction="sum") * N / B + penalty()
        loss.backward()
        assert_close(loss, expected, rtol=1e-12)
        for name, p in net.named_parameters():
            site = f"net.{name}_unconstrained"
            other = (
                guide_grads[site]
                if site in guide_grads
                else dict(model.net.named_parameters())[name].grad
            )
            assert_close(p.grad, other, rtol=1e-10, atol=1e-12, msg=name)
        for site in hyper_sites:
            mine = penalty.unconstrained[site.replace(".", "_")].grad
            assert_close(mine, guide_grads[f"{site}_unconstrained"], rtol=1e-10, atol=1e-12)
        _move(list(net.parameters()) + list(penalty.unconstrained.values()))
        _move(list(engine.guide.parameters()) + list(model.free_parameters().values()))


def test_parameter_groups_hold_every_groups_mixture_at_its_rate():
    net = _net()
    spec = CASES["layer"]
    penalty = SoftWeightSharing(net, spec["prior"](), groups="layer")
    weights, mixture = penalty.parameter_groups(lr=0.1, mixture_lr=0.02)
    assert (weights["lr"], mixture["lr"]) == (0.1, 0.02)
    assert {id(p) for p in weights["params"]} == {id(p) for p in net.parameters()}
    assert len(mixture["params"]) == 8  # 4 sites per layer, 2 layers (hand count)
    assert {id(p) for p in mixture["params"]} == {id(p) for p in penalty.unconstrained.values()}
    assert "groups=['0', '2']" in repr(penalty)


def test_one_gaussian_per_layer_is_the_prml_weight_decay():
    """PRML §5.5.1: penalty = λ Σ_l [α_l/2 ||w_l||² + N_l/2 ln(2π/α_l)], gradient λ α_l w_l."""
    alphas = {"0": 3.0, "2": 0.25}
    priors = {
        g: sws.MixturePrior(1, zero_component=False, fixed_mu=[0.0], fixed_precision=a)
        for g, a in alphas.items()
    }
    net = _net()
    penalty = SoftWeightSharing(net, priors, prior_scale=0.7, groups="layer")
    assert len(penalty.unconstrained) == 0 and len(penalty.parameter_groups(lr=0.1)) == 1
    value = penalty()
    value.backward()
    expected = 0.0
    for group, alpha in alphas.items():
        w = getattr(net, group).weight.detach().numpy()
        expected += alpha / 2 * np.sum(w**2) + w.size / 2 * math.log(2 * math.pi / alpha)
    assert_close(float(value.detach()), 0.7 * expected, rtol=1e-12)
    for group, alpha in alphas.items():
        layer = getattr(net, group)
        w = layer.weight.detach().numpy()
        np.testing.assert_allclose(layer.weight.grad.numpy(), 0.7 * alpha * w, rtol=1e-12)
        assert layer.bias.grad is None  # the biases carry no prior


def _hand_mixture(values, group):
    """π, μ, σ of a zero-component prior written out from the group's site values (numpy)."""
    site = {b: group_site(f"sws.{b}", group) for b in ("pi_zero", "mixing", "means", "precisions")}
    pi0 = values[site["pi_zero"]].detach().numpy()
    mixing = values[site["mixing"]].detach().numpy()
    pi = np.concatenate([[pi0], (1 - pi0) * mixing])
    mu = np.concatenate([[0.0], values[site["means"]].detach().numpy()])
    sigma = values[site["precisions"]].detach().numpy() ** -0.5
    return pi, mu, sigma


def test_fit_result_mixtures_are_each_groups_own_mixture():
    x, y = _data()
    prior = CASES["layer"]["prior"]()
    model = sws.SWSModel(_net(), prior, prior_scale=0.7, groups="layer")
    result = sws.fit(model, x, y, "map", num_steps=5, lr=1e-2, seed=0, collapse_threshold=None)
    mixtures = result.mixtures()
    assert list(mixtures) == ["0", "2"]
    median = result.median()
    like = next(iter(model.parameters_with_prior().values()))
    for group, mixture in mixtures.items():
        own = model.group_priors[group].mixture(median, like)
        for mine, theirs in zip(mixture, own):
            assert_close(mine, theirs, rtol=0, atol=0)
        for mine, hand in zip(mixture, _hand_mixture(median, group)):
            assert_close(mine.detach().numpy(), hand, rtol=1e-12)
    assert_close(sum(float(m.pi.sum()) for m in mixtures.values()), 2.0, rtol=1e-12)
    # without groups: one entry, None, the shared mixture
    shared = sws.fit(sws.SWSModel(_net(), prior, prior_scale=0.7), x, y, "map", num_steps=2, seed=0)
    ((key, mixture),) = shared.mixtures().items()
    assert key is None
    for mine, theirs in zip(mixture, shared.mixture()):
        assert_close(mine, theirs, rtol=0, atol=0)


def test_to_result_carries_the_groups_to_compression():
    from bayes_sws.compress.pipeline import compress_result

    x, y = _data()
    net = _net()
    penalty = SoftWeightSharing(net, CASES["layer"]["prior"](), prior_scale=0.5, groups="layer")
    _move(penalty.unconstrained.values())  # away from the init
    result = penalty.to_result(losses=[2.0])
    assert result.model.groups == {"0": ("0.weight",), "2": ("2.weight",)}
    values = {k: v.detach() for k, v in penalty.site_values().items()}
    for group, mixture in result.mixtures().items():
        for mine, hand in zip(mixture, _hand_mixture(values, group)):
            assert_close(mine.detach().numpy(), hand, rtol=1e-12)
        for mine, theirs in zip(mixture, penalty.mixtures()[group]):
            assert_close(mine, theirs.detach(), rtol=1e-12)
    compressed = compress_result(result, x, y, merge_threshold=0)
    assert list(compressed.quantization.groups) == ["0", "2"]
    assert compressed.config["groups"] == {"0": ["0.weight"], "2": ["2.weight"]}
    params = dict(compressed.net.named_parameters())
    for group in ("0", "2"):
        codebook = compressed.quantization.groups[group].values
        _, mu, _ = _hand_mixture(values, group)  # merge_threshold=0: the group's own means
        assert_close(codebook.numpy(), mu, rtol=1e-12)
        used = set(params[f"{group}.weight"].detach().unique().tolist())
        assert used <= set(codebook.tolist())


@pytest.mark.parametrize("guide", ["map", "normal"])
def test_lightning_loss_equals_trace_elbo_for_a_grouped_model(guide):
    """The batch loss and gradients of ``SWSLightningModule``: Pyro's ELBO on the subsampled plate."""
    pytest.importorskip("lightning.pytorch")
    from bayes_sws.integrations.lightning import SWSLightningModule

    x, y = _data()
    spec = CASES["dict"]
    model = sws.SWSModel(_net(), spec["prior"](), prior_scale=0.7, groups=spec["groups"])
    module = SWSLightningModule(model, guide, num_data=N)
    index = batch_indices(N, B, 1, 3)
    _move(list(module.guide.parameters()))  # away from the init
    state = torch.get_rng_state()
    module.zero_grad()
    with local_params():
        expected = Trace_ELBO(max_plate_nesting=1).differentiable_loss(
            module.model, module.guide, x, y, index
        )
    expected.backward()
    expected_grads = [p.grad.clone() for p in module.parameters() if p.grad is not None]
    torch.set_rng_state(state)  # the same draw of the variational guide's weights
    module.zero_grad()
    loss = module.loss(x[index], y[index])
    loss.backward()
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    assert_close(float(loss.detach()), float(expected.detach()), rtol=1e-12)
    assert len(grads) == len(expected_grads) > 0
    for mine, theirs in zip(grads, expected_grads):
        assert_close(mine, theirs, rtol=1e-10, atol=1e-12)
