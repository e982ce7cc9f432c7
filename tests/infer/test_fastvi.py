"""``fastvi.elbo_loss`` is ``Trace_ELBO``'s loss for the ``"normal"``, ``"mixed"`` and ``"lowrank"`` guides.

The oracle is Pyro itself: ``Trace_ELBO(num_particles, vectorize_particles,
max_plate_nesting=1).differentiable_loss(model, guide, x, y, subsample)`` run from the
same state of torch's RNG (so it draws the same ε), at guide parameters moved away from
their initialisation. In float64 values agree to 1e-10 relative and gradients with
respect to every guide parameter and the network's free parameters to 1e-8 (of the
largest entry); in float32 to 1e-5. Both leave the RNG in the same state.
"""

import functools
import math
import warnings

import numpy as np
import pyro
import pytest
import torch
from conftest import assert_close
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import (
    AutoDelta,
    AutoGuideList,
    AutoLowRankMultivariateNormal,
    AutoNormal,
    init_to_median,
    init_to_value,
)
from scenarios import N, perturbed_values, small_data, small_net

import bayes_sws as sws
from bayes_sws.infer import fastvi
from bayes_sws.infer.fastvi import elbo_loss, supports_fast_elbo, unsupported_reason
from bayes_sws.infer.guides import build_guide
from bayes_sws.infer.svi import SVIEngine, local_params

GUIDE_NAMES = ["normal", "mixed", "lowrank"]


def _guide(model, name="normal", values=None):
    values = perturbed_values(model) if values is None else values
    init = init_to_value(values=values, fallback=init_to_median)
    return build_guide(
        name, model, init_loc_fn=init, init_scale=0.1, hyper_sites=model.hyper_site_names
    )


def _set_up(model, guide, x, y, index=None, seed=3):
    """Run the guide once (creates its parameters), then move every parameter off its init."""
    guide(x, y, index)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return guide


def _trainable(model, guide):
    return list(guide.parameters()) + list(model.free_parameters().values())


def _loss_grads_and_rng(loss_fn, params, seed=11):
    torch.manual_seed(seed)
    loss = loss_fn()
    state = torch.get_rng_state()
    return loss, torch.autograd.grad(loss, params, allow_unused=True), state


def _check_same(
    model,
    guide,
    x,
    y,
    index=None,
    num_data=None,
    *,
    particles=1,
    vectorize=True,
    rtol=1e-10,
    grad_tol=1e-8,
):
    params = _trainable(model, guide)
    assert sum(p.numel() for p in params) >= sum(p.numel() for p in model.net.parameters())
    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=vectorize, max_plate_nesting=1)
    program = model if num_data is None else functools.partial(model, num_data=num_data)
    expected, expected_grads, expected_rng = _loss_grads_and_rng(
        lambda: elbo.differentiable_loss(program, guide, x, y, index), params
    )
    actual, actual_grads, actual_rng = _loss_grads_and_rng(
        lambda: elbo_loss(model, guide, x, y, index, num_data, particles, vectorize), params
    )
    assert actual.shape == () and actual.dtype == expected.dtype
    assert_close(actual, expected, rtol=rtol)
    assert torch.equal(actual_rng, expected_rng), "not the same number of draws"
    for p, a, e in zip(params, actual_grads, expected_grads):
        a = torch.zeros_like(p) if a is None else a
        e = torch.zeros_like(p) if e is None else e
        scale = float(e.abs().max()) or 1.0
        assert_close(a / scale, e / scale, rtol=0, atol=grad_tol, msg=f"gradient of {p.shape}")


def _model(kind, **prior):
    prior = {"mixing_concentration": 1.5, "pi_zero_prior": (2.0, 3.0), **prior}
    if kind == "gaussian":  # a learned noise precision: one more latent site
        likelihood = sws.Gaussian(precision=2.5, learn_precision=True, precision_prior=(2.0, 0.5))
    else:
        likelihood = sws.Categorical()
    net = small_net(1 if kind == "gaussian" else 4)
    return sws.SWSModel(net, sws.MixturePrior(4, **prior), likelihood, prior_scale=0.7)


@pytest.mark.parametrize("guide_name", GUIDE_NAMES)
@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
@pytest.mark.parametrize("minibatch", [False, True], ids=["full", "minibatch"])
@pytest.mark.parametrize(
    "particles, vectorize", [(1, True), (3, True), (3, False)], ids=["1", "3vec", "3seq"]
)
def test_loss_and_gradients_equal_trace_elbo(guide_name, kind, minibatch, particles, vectorize):
    model = _model(kind)
    x, y = small_data(kind)
    index = torch.tensor([3, 1, 4, 15, 9, 26, 5, 35]) if minibatch else None
    with local_params():
        guide = _set_up(model, _guide(model, guide_name), x, y, index)
        _check_same(model, guide, x, y, index, particles=particles, vectorize=vectorize)


@pytest.mark.parametrize("guide_name", GUIDE_NAMES)
def test_loss_and_gradients_equal_trace_elbo_with_a_multiplier_of_lambda_per_tensor(guide_name):
    """Each tensor's prior weighed by its own multiplier (Pyro: a ``poutine.scale`` per site)."""
    model = _model("categorical")
    model = sws.SWSModel(
        model.net, model.prior, model.likelihood, prior_scale=0.7, tensor_scales={"0.*": 2.5}
    )
    x, y = small_data("categorical")
    with local_params():
        guide = _set_up(model, _guide(model, guide_name), x, y)
        _check_same(model, guide, x, y, particles=3)


def test_lowrank_guide_is_pyros_with_its_factor_column_major():
    """The registry's "lowrank" guide: Pyro's parameters and values, the factor's layout
    transposed, and its gradient from the fast path already in that layout (no copy)."""
    model = _model("categorical")
    x, y = small_data("categorical")
    values = perturbed_values(model)
    init = init_to_value(values=values, fallback=init_to_median)
    with local_params():
        torch.manual_seed(5)
        ours = _guide(model, "lowrank", values)
        ours(x, y)
        torch.manual_seed(5)
        pyros = AutoLowRankMultivariateNormal(model, init_loc_fn=init, init_scale=0.1)
        pyros(x, y)
        size, rank = pyros.cov_factor.shape
        assert pyros.cov_factor.stride() == (rank, 1)
        assert ours.cov_factor.stride() == (1, size)  # column-major D × r
        for (name, a), (other, e) in zip(
            ours.named_parameters(), pyros.named_parameters(), strict=True
        ):
            assert name == other and torch.equal(a, e), name
        elbo_loss(model, ours, x, y).backward()
        assert ours.cov_factor.grad.stride() == (1, size)


@pytest.mark.parametrize("particles", [1, 3])
def test_pyros_own_row_major_lowrank_guide_too(particles):
    """A plain ``AutoLowRankMultivariateNormal`` (row-major factor) takes the fast path too."""
    model = _model("gaussian")
    x, y = small_data("gaussian")
    init = init_to_value(values=perturbed_values(model), fallback=init_to_median)
    with local_params():
        guide = AutoLowRankMultivariateNormal(model, init_loc_fn=init, init_scale=0.1)
        assert supports_fast_elbo(model, guide)
        _check_same(model, _set_up(model, guide, x, y), x, y, particles=particles)


@pytest.mark.parametrize("guide_name", GUIDE_NAMES)
def test_a_loaders_batch_scaled_to_the_data_set(guide_name):
    model = _model("gaussian")
    x, y = small_data("gaussian")
    with local_params():
        guide = _set_up(model, _guide(model, guide_name), x, y)
        _check_same(model, guide, x[:12], y[:12], num_data=N)


@pytest.mark.parametrize(
    "options",
    [
        {"flat": True},  # improper hyperpriors
        {"ordered_means": True},  # ordered_vector support: a non-trivial bijection
        {"zero_component": False},  # no pi_zero site
        {"pi_zero": 0.8},  # fixed pi_zero
        {"fixed_precision": 4.0},  # no precision site
        {"include_bias": True},  # every tensor under the prior, no free parameters
    ],
    ids=["flat", "ordered", "no_zero", "fixed_pi0", "fixed_precision", "bias"],
)
@pytest.mark.parametrize("guide_name", ["normal", "lowrank"])
def test_other_priors(options, guide_name):
    model = _model("categorical", **options)
    x, y = small_data("categorical")
    with local_params():
        guide = _set_up(model, _guide(model, guide_name), x, y)
        _check_same(model, guide, x, y, torch.arange(0, 40, 3), particles=2)


def test_prior_scale_zero_keeps_the_guides_entropy():
    """λ = 0 masks the weight prior in the model, not the guide's log-density."""
    model = _model("categorical")
    model.prior_scale = 0.0
    x, y = small_data("categorical")
    with local_params():
        guide = _set_up(model, _guide(model), x, y)
        _check_same(model, guide, x, y)


@pytest.mark.parametrize("guide_name", GUIDE_NAMES)
def test_float32_network(guide_name):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 30), torch.nn.ReLU(), torch.nn.Linear(30, 4))
    model = sws.SWSModel(net, sws.MixturePrior(6), prior_scale=1.0)
    x, y = small_data("categorical")
    x = x.float()
    with local_params():
        guide = _set_up(model, _guide(model, guide_name, model.init_values()), x, y)
        assert next(guide.parameters()).dtype == torch.float32
        _check_same(model, guide, x, y, torch.arange(12), rtol=1e-5, grad_tol=1e-5)


def test_unused_guide_is_set_up_by_trace_elbo():
    """The first call of a guide that never ran is Trace_ELBO's: same draws, same setup."""
    model = _model("categorical")
    x, y = small_data("categorical")
    with local_params():
        guides = [_guide(model), _guide(model)]
        torch.manual_seed(5)
        expected = Trace_ELBO().differentiable_loss(model, guides[0], x, y)
        torch.manual_seed(5)
        assert guides[1].prototype_trace is None
        actual = elbo_loss(model, guides[1], x, y)
        assert guides[1].prototype_trace is not None
    assert_close(actual, expected, rtol=1e-10)


def test_follows_changes_to_model_prior_and_guide():
    """Cached per-guide work never goes stale: λ, hyperprior settings, loaded states."""
    model = _model("categorical")
    x, y = small_data("categorical")
    with local_params():
        guide = _set_up(model, _guide(model), x, y)
        _check_same(model, guide, x, y)
        model.prior_scale = 1.5
        model.prior.mixing_concentration = 3.0
        _check_same(model, guide, x, y)
        other = _set_up(model, _guide(model), x, y, seed=8)
        guide.load_state_dict(other.state_dict())
        _check_same(model, guide, x, y)
        model.likelihood = sws.Categorical()
        _check_same(model, guide, x, y)


def test_non_finite_loss_goes_to_pyro_for_its_error():
    model = _model("categorical")
    x, y = small_data("categorical")
    with local_params():
        guide = _set_up(model, _guide(model), x, y)
        with torch.no_grad():
            getattr(guide.scales.net, "0").weight_unconstrained[0, 0] = -math.inf
        with pytest.raises(ValueError) as pyro_error:
            Trace_ELBO().differentiable_loss(model, guide, x, y)
        with pytest.raises(ValueError) as our_error:
            elbo_loss(model, guide, x, y)
        assert str(our_error.value) == str(pyro_error.value)
        with pyro.validation_enabled(False):
            assert not math.isfinite(float(elbo_loss(model, guide, x, y).detach()))


class _OwnProgram(sws.SWSModel):
    def __call__(self, x, y=None, subsample=None):
        return super().__call__(x, y, subsample)


def test_supports_fast_elbo_only_where_it_is_exact():
    x, y = small_data("categorical")
    model = _model("categorical")
    with local_params():
        for name in GUIDE_NAMES:
            guide = _guide(model, name)
            assert supports_fast_elbo(model, guide)
            guide(x, y)
            assert supports_fast_elbo(model, guide)
        assert "AutoDelta" in unsupported_reason(model, AutoDelta(model))
        within = AutoGuideList(model)
        within.append(AutoLowRankMultivariateNormal(model))
        assert "AutoGuideList of AutoNormal" in unsupported_reason(model, within)
        plated = AutoNormal(model, create_plates=lambda *args: [])
        assert "create_plates" in unsupported_reason(model, plated)
        own = _OwnProgram(model.net, model.prior, prior_scale=0.5)
        assert "overrides SWSModel.__call__" in unsupported_reason(own, _guide(own))
        partial = AutoGuideList(model)
        partial.append(AutoNormal(poutine.block(model, hide=list(model.hyper_site_names))))
        partial(x, y)
        assert "latent sites" in unsupported_reason(model, partial)
        with pytest.raises(ValueError, match="AutoDelta.*Trace_ELBO"):
            elbo_loss(model, AutoDelta(model), x, y)
    with pyro.settings.context(module_local_params=False):
        assert "global param store" in unsupported_reason(model, _guide(model))


@pytest.mark.parametrize(
    "guide_name, particles", [("normal", 1), ("mixed", 2), ("lowrank", 1), ("lowrank", 2)]
)
def test_fit_uses_it_and_follows_the_pyro_path(guide_name, particles, monkeypatch):
    """fit with the fast ELBO and with BAYES_SWS_FAST_ELBO=0 (Trace_ELBO): the same run."""
    x, y = small_data("gaussian")
    settings = {
        "guide": guide_name,
        "batch_size": 10,
        "lr": 1e-2,
        "num_particles": particles,
        "seed": 4,
    }
    model = _model("gaussian")
    engine = SVIEngine(model, x, y, **settings)
    engine.init()
    assert engine._fast == "elbo"
    results = []
    for flag in ("1", "0"):
        monkeypatch.setenv(fastvi.FAST_ELBO_ENV, flag)
        assert fastvi.fast_elbo_enabled() == (flag == "1")
        results.append(sws.fit(_model("gaussian"), x, y, num_steps=12, **settings))
    fast, slow = results
    assert_close(fast.losses, slow.losses, rtol=1e-9)
    with local_params():
        for (name, a), (_, e) in zip(
            fast.guide.named_parameters(), slow.guide.named_parameters(), strict=True
        ):
            np.testing.assert_allclose(a.detach(), e.detach(), rtol=1e-8, atol=1e-11, err_msg=name)


@pytest.mark.parametrize("guide_name", GUIDE_NAMES)
def test_one_mixture_per_layer(guide_name):
    """``SWSModel(groups="layer")``: each layer's sites ``sws.<layer>.*`` (and a prior per group)."""
    net = small_net(4)
    names = [n for n, p in net.named_parameters() if p.dim() > 1]
    priors = {n.rsplit(".", 1)[0]: sws.MixturePrior(3 + i) for i, n in enumerate(names)}
    model = sws.SWSModel(net, priors, prior_scale=0.7, groups="layer")
    assert len(model.group_priors) == len(names) >= 2
    x, y = small_data("categorical")
    with local_params():
        guide = _set_up(model, _guide(model, guide_name), x, y)
        _check_same(model, guide, x, y, torch.arange(0, 40, 3), particles=2)


def test_pyros_default_lowrank_rank_is_flagged_where_a_step_gets_slow():
    """D·round(√D)² multiply-adds against 1e10, counted by hand; fit warns before building it."""
    from bayes_sws.infer.guides import default_rank_cost

    assert default_rank_cost("lowrank", None, 100_000) is None  # 100,000 · 316² = 9.99e9
    message = default_rank_cost("lowrank", None, 266_200)  # 516² · 266,200 = 7.09e10
    assert message is not None
    assert "rank 516" in message and "137,359,200 numbers" in message and "7.1e+10" in message
    assert default_rank_cost("lowrank", 10, 266_200) is None
    assert default_rank_cost("normal", None, 266_200) is None
    net = torch.nn.Sequential(torch.nn.Linear(400, 300), torch.nn.ReLU(), torch.nn.Linear(300, 2))
    model = sws.SWSModel(net, sws.MixturePrior(3), prior_scale=1.0)
    x, y = torch.randn(8, 400), torch.randint(0, 2, (8,))
    with pytest.warns(UserWarning, match="pass guide_rank"):
        SVIEngine(model, x, y, guide="lowrank")  # 120,600 weights: warned at construction
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SVIEngine(model, x, y, guide="lowrank", guide_rank=4)
