"""``fastmap.map_loss`` is ``Trace_ELBO``'s AutoDelta loss, in value and gradients.

The oracle is Pyro itself: ``Trace_ELBO().differentiable_loss(model, guide, x, y,
subsample)`` on the same model and guide, in float64, at site values away from
the initialisation. Values agree to 1e-10 relative, gradients with respect to
the guide's unconstrained parameters and the network's free parameters to 1e-8.
"""

import math
import runpy
import sys

import pyro
import pytest
import torch
from conftest import BENCHMARKS, assert_close, benchmark_module
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal, init_to_value
from scenarios import N, perturbed_values, small_data, small_net

import bayes_sws as sws
from bayes_sws.infer import fastmap
from bayes_sws.infer.fastmap import map_loss, supports_fast_map, unsupported_reason
from bayes_sws.infer.svi import local_params


def _guide(model, values=None):
    values = perturbed_values(model) if values is None else values
    return AutoDelta(model, init_loc_fn=init_to_value(values=values))


def _trainable(model, guide):
    """The guide's unconstrained parameters and the network's free parameters."""
    return list(guide.parameters()) + list(model.free_parameters().values())


def _check_same(model, guide, x, y, index):
    """Value to 1e-10 and every gradient to 1e-8 relative (of the largest entry)."""
    if guide.prototype_trace is None:
        guide(x, y, index)  # creates its parameters
    params = _trainable(model, guide)
    assert len(params) >= len(model.hyper_site_names) + len(model.weight_site_names)
    expected = Trace_ELBO().differentiable_loss(model, guide, x, y, index)
    expected_grads = torch.autograd.grad(expected, params, allow_unused=True)
    actual = map_loss(model, guide, x, y, index)
    actual_grads = torch.autograd.grad(actual, params, allow_unused=True)
    assert actual.dtype == torch.float64 and actual.shape == ()
    assert_close(actual, expected, rtol=1e-10)
    for p, a, e in zip(params, actual_grads, expected_grads):
        a = torch.zeros_like(p) if a is None else a
        e = torch.zeros_like(p) if e is None else e
        scale = float(e.abs().max()) or 1.0
        assert_close(a / scale, e / scale, rtol=0, atol=1e-8, msg=f"gradient of shape {p.shape}")


@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
@pytest.mark.parametrize("flat", [True, False], ids=["flat", "proper"])
@pytest.mark.parametrize("minibatch", [False, True], ids=["full", "minibatch"])
@pytest.mark.parametrize("zero", ["learned_pi0", "fixed_pi0", "none"])
def test_loss_and_gradients_equal_trace_elbo(kind, flat, minibatch, zero):
    net = small_net(1 if kind == "gaussian" else 4)
    prior = sws.MixturePrior(
        4,
        zero_component=zero != "none",
        pi_zero=0.8 if zero == "fixed_pi0" else None,
        flat=flat,
        mixing_concentration=1.5,
        pi_zero_prior=(2.0, 3.0),
        precision_concentration=3.0,
        precision_rate=0.1,
    )
    model = sws.SWSModel(net, prior, likelihood=kind, prior_scale=0.7)
    x, y = small_data(kind)
    index = torch.arange(5, 17) if minibatch else None
    with local_params():
        _check_same(model, _guide(model), x, y, index)


@pytest.mark.parametrize("minibatch", [False, True], ids=["full", "minibatch"])
def test_soft_targets_equal_trace_elbo_and_one_hot_rows_the_labels(minibatch):
    """Class probabilities as targets (SoftCategorical, the fused cross-entropy) against Pyro's
    ELBO of the same model; with one-hot rows, the categorical model on the labels."""
    prior = sws.MixturePrior(4, mixing_concentration=1.5, precision_concentration=3.0)
    model = sws.SWSModel(small_net(4), prior, likelihood="soft_categorical", prior_scale=0.7)
    x, labels = small_data("categorical")
    g = torch.Generator().manual_seed(3)
    soft = torch.softmax(torch.randn(len(labels), 4, generator=g, dtype=torch.float64), -1)
    index = torch.arange(5, 17) if minibatch else None
    with local_params():
        guide = _guide(model)
        _check_same(model, guide, x, soft, index)
        hard = sws.SWSModel(model.net, prior, likelihood="categorical", prior_scale=0.7)
        one_hot = torch.nn.functional.one_hot(labels, 4).double()
        expected = Trace_ELBO().differentiable_loss(hard, guide, x, labels, index)
        assert_close(map_loss(model, guide, x, one_hot, index), expected, rtol=1e-10)


@pytest.mark.parametrize("flat", [True, False], ids=["flat", "proper"])
@pytest.mark.parametrize("minibatch", [False, True], ids=["full", "minibatch"])
def test_learned_gaussian_precision(flat, minibatch):
    likelihood = sws.Gaussian(precision=2.5, learn_precision=True, precision_prior=(2.0, 0.5))
    model = sws.SWSModel(small_net(1), sws.MixturePrior(3, flat=flat), likelihood, prior_scale=2.0)
    x, y = small_data("gaussian")
    index = torch.tensor([3, 1, 4, 15, 9, 26, 5]) if minibatch else None
    with local_params():
        _check_same(model, _guide(model), x, y, index)


@pytest.mark.parametrize(
    "options",
    [
        {"num_components": 2},  # one free component: no mixing site
        {"num_components": 1, "zero_component": False},  # a single Gaussian
        {"ordered_means": True},  # ordered_vector support, OrderedNormal hyperprior
        {"fixed_precision": 4.0},  # no precision site
        {"include_bias": True},  # 1-d tensors under the prior, no free parameters
        {"zero_precision_concentration": 5.0, "zero_precision_rate": 1e-4},
    ],
    ids=["two_components", "one_gaussian", "ordered", "fixed_precision", "bias", "zero_gamma"],
)
def test_other_priors(options):
    options = {"num_components": 5, **options}
    model = sws.SWSModel(small_net(4), sws.MixturePrior(**options), prior_scale=0.3)
    x, y = small_data("categorical")
    with local_params():
        _check_same(model, _guide(model), x, y, torch.arange(0, 40, 3))


def test_prior_scale_zero_drops_the_weight_prior():
    model = sws.SWSModel(small_net(4), sws.MixturePrior(4), prior_scale=0.0)
    x, y = small_data("categorical")
    with local_params():
        _check_same(model, _guide(model), x, y, torch.arange(10))


def test_float32_network():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    model = sws.SWSModel(net, sws.MixturePrior(6), prior_scale=1.0)
    x, y = small_data("categorical")
    x = x.float()
    with local_params():
        guide = AutoDelta(model, init_loc_fn=init_to_value(values=model.init_values()))
        expected = Trace_ELBO().differentiable_loss(model, guide, x, y, torch.arange(12))
        actual = map_loss(model, guide, x, y, torch.arange(12))
    assert actual.dtype == torch.float32
    assert_close(actual, expected, rtol=1e-5)


def test_equals_the_elbo_with_several_vectorised_particles():
    """fit's ELBO for num_particles > 1: an AutoDelta's particles are all equal."""
    model = sws.SWSModel(small_net(4), sws.MixturePrior(4), prior_scale=0.5)
    x, y = small_data("categorical")
    index = torch.arange(3, 30, 2)
    with local_params():
        guide = _guide(model)
        elbo = Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
        expected = elbo.differentiable_loss(model, guide, x, y, index)
        assert_close(map_loss(model, guide, x, y, index), expected, rtol=1e-10)


def test_reading_the_guide_through_its_attributes_gives_the_same(monkeypatch):
    """The fallback when PyroModule keeps its parameters elsewhere."""
    monkeypatch.setattr(fastmap, "_param_locations", lambda guide, names: None)
    model = sws.SWSModel(small_net(4), sws.MixturePrior(4), prior_scale=0.5)
    x, y = small_data("categorical")
    with local_params():
        _check_same(model, _guide(model), x, y, torch.arange(7))


def test_unused_guide_is_set_up_like_the_first_elbo_call():
    model = sws.SWSModel(small_net(4), sws.MixturePrior(4), prior_scale=0.5)
    x, y = small_data("categorical")
    with local_params():
        guide = _guide(model)
        assert guide.prototype_trace is None
        loss = map_loss(model, guide, x, y)
        assert guide.prototype_trace is not None
        assert_close(loss, Trace_ELBO().differentiable_loss(model, guide, x, y), rtol=1e-10)


def test_follows_changes_to_model_prior_and_guide():
    """Cached per-guide work never goes stale: λ, hyperprior settings, loaded states."""
    model = sws.SWSModel(small_net(4), sws.MixturePrior(4), prior_scale=0.5)
    x, y = small_data("categorical")
    with local_params():
        guide = _guide(model)
        _check_same(model, guide, x, y, None)
        model.prior_scale = 1.5
        _check_same(model, guide, x, y, None)
        model.prior.mixing_concentration = 3.0
        model.prior.flat = True
        _check_same(model, guide, x, y, None)
        other = _guide(model, perturbed_values(model, seed=7))
        other(x, y)
        guide.load_state_dict(other.state_dict())
        _check_same(model, guide, x, y, None)
        model.likelihood = sws.Categorical()
        _check_same(model, guide, x, y, None)


def test_same_parameters_as_pyro_after_adam_steps():
    """A fit-style loop with map_loss follows the Trace_ELBO loop step for step."""
    x, y = small_data("categorical")
    finals = []
    for use_fast in (False, True):
        model = sws.SWSModel(small_net(4), sws.MixturePrior(4), prior_scale=0.5)
        with local_params():
            guide = _guide(model)
            elbo = Trace_ELBO(max_plate_nesting=1)
            elbo.differentiable_loss(model, guide, x, y)
            optim = torch.optim.Adam(_trainable(model, guide), lr=1e-2)
            for step in range(20):
                index = torch.arange(step % 4, N, 4)
                optim.zero_grad()
                if use_fast:
                    loss = map_loss(model, guide, x, y, index)
                else:
                    loss = elbo.differentiable_loss(model, guide, x, y, index)
                loss.backward()
                optim.step()
            finals.append([p.detach().clone() for p in _trainable(model, guide)])
    for slow, fast in zip(*finals):
        assert_close(fast, slow, rtol=1e-9, atol=1e-12)


def test_non_finite_loss_goes_to_pyro_for_its_error():
    model = sws.SWSModel(small_net(4), sws.MixturePrior(4), prior_scale=0.5)
    x, y = small_data("categorical")
    with local_params():
        guide = _guide(model)
        map_loss(model, guide, x, y)
        with torch.no_grad():
            getattr(guide.net, "0").weight_unconstrained[0, 0] = math.nan
        with pytest.raises(ValueError) as pyro_error:
            Trace_ELBO().differentiable_loss(model, guide, x, y)
        with pytest.raises(ValueError) as our_error:
            map_loss(model, guide, x, y)
        assert str(our_error.value) == str(pyro_error.value)
        with pyro.validation_enabled(False):
            assert math.isnan(float(map_loss(model, guide, x, y).detach()))


class _OwnProgram(sws.SWSModel):
    def __call__(self, x, y=None, subsample=None):
        return super().__call__(x, y, subsample)


def test_supports_fast_map_only_where_it_is_exact():
    x, y = small_data("categorical")
    model = sws.SWSModel(small_net(4), sws.MixturePrior(4), prior_scale=0.5)
    with local_params():
        guide = _guide(model)
        assert supports_fast_map(model, guide)
        guide(x, y)
        assert supports_fast_map(model, guide)
        assert "AutoNormal" in unsupported_reason(model, AutoNormal(model))
        own = _OwnProgram(model.net, model.prior, prior_scale=0.5)
        assert "overrides SWSModel.__call__" in unsupported_reason(own, _guide(own))
        other = sws.SWSModel(small_net(4), sws.MixturePrior(4, include_bias=True))
        assert "latent sites" in unsupported_reason(other, guide)
        assert "not a bayes_sws.SWSModel" in unsupported_reason(lambda x, y: None, guide)
        with pytest.raises(ValueError, match="AutoNormal.*Trace_ELBO"):
            map_loss(model, AutoNormal(model), x, y)
    with pyro.settings.context(module_local_params=False):
        assert "global param store" in unsupported_reason(model, guide)


def _run_script(name, *args):
    """Run a benchmark script as ``__main__``, its directory on ``sys.path`` as ``python
    benchmarks/NAME`` has it (the scripts import each other; without it this test passed only
    after another had imported a benchmark); its global settings are restored after."""
    script = BENCHMARKS / name
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    old_argv, old_threads = sys.argv, torch.get_num_threads()
    sys.argv = [str(script), *args]
    try:
        local = pyro.settings.get("module_local_params")
        with pyro.settings.context(module_local_params=local), pytest.raises(SystemExit) as done:
            runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = old_argv
        torch.set_num_threads(old_threads)
    assert done.value.code == 0


def test_benchmark_runs_with_a_small_budget(capsys):
    _run_script("svi_step.py", "--quick", "--networks", "digits-mlp", "--threads", "1")
    out = capsys.readouterr().out
    for label in ("pyro_map", "fast_map", "pyro_normal", "hand", "plain", "(c) hand / (d) plain"):
        assert label in out


def test_lowrank_variants_run(capsys):
    _run_script(
        "svi_step.py", "--quick", "--networks", "digits-mlp", "--threads", "1", "--rank", "3",
        "--variants", "plain", "pyro_lowrank", "fast_lowrank",
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "(f) pyro_lowrank / (f') fast_lowrank" in out
    losses = [line for line in out.splitlines() if "fast_lowrank" in line and "first" in line]
    assert losses, out


def _svi_step_module():
    return benchmark_module("svi_step")


def test_benchmark_step_memory_counts_tensors_by_hand():
    """svi_step's step-memory count against a hand count of the tensors a call makes."""
    svi_step = _svi_step_module()

    def call():
        a = torch.ones(1000)  # 4,000 bytes live
        b = a * 2  # 8,000
        del a  # 4,000
        view = b.view(10, 100)  # a view: no new bytes
        b.add_(1)  # in place: none
        both = torch.cat([b, b])  # 12,000
        return float(both.sum()) + float(view[0, 0])  # the sum's 4 bytes: 12,004

    assert svi_step.step_peak_bytes(call) == 12_004
    kept = []
    assert svi_step.step_peak_bytes(lambda: kept.append(torch.zeros(10, dtype=torch.float64))) == 80
    # the 1,000 bytes are freed before the call ends, and seen with the sum's 4
    assert svi_step.step_peak_bytes(lambda: float(torch.zeros(250).sum())) == 1_004


def test_benchmark_measures_step_memory(capsys):
    _run_script(
        "svi_step.py", "--quick", "--networks", "lenet-300-100", "--threads", "1",
        "--variants", "plain", "fast_map", "--memory",
    )  # fmt: skip
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "extra memory of the MAP step" in line]
    assert len(lines) == 1 and "B/weight)" in lines[0], out


def test_conv_layout_benchmark_runs_with_a_small_budget(capsys):
    _run_script("conv_layout.py", "--data", "random", "--rounds", "1", "--steps", "1")
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "ms" not in line]
    assert [row.split("|")[1].strip() for row in rows[1:]] == ["plain", "fast_map", "fit_map"]


def test_demo_benchmark_runs_with_a_small_budget(capsys):
    _run_script("demo_time.py", "--quick", "--threads", "1")
    out = capsys.readouterr().out
    assert "pyro path" in out and "SVI loop" in out
