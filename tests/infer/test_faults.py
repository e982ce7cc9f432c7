"""Numerical faults in ``fit``: a NaN injected mid-run is caught at its step and named,
the last good checkpoint stays intact and loadable, rollback finishes finite with a
lower learning rate, and collapsing variances (PRML after eq. 5.144) are reported."""

import math
import warnings

import numpy as np
import pytest
import torch

import bayes_sws as sws
from bayes_sws.core.likelihoods import Categorical
from bayes_sws.infer.svi import NumericalFault, VarianceCollapseWarning
from bayes_sws.runs import commands as runs

X = torch.randn(60, 4, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 3, (60,), generator=torch.Generator().manual_seed(2))


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _model(likelihood="categorical", **prior):
    return sws.SWSModel(_net(), sws.MixturePrior(3, **prior), likelihood)


def _poison_bias_at(model, at, times=1):
    """A callback writing NaN into a network parameter after step ``at`` (``times`` times)."""
    fired = []

    def callback(step, loss):
        if step == at and len(fired) < times:
            fired.append(step)
            with torch.no_grad():
                model.net[0].bias.fill_(float("nan"))

    return callback


class PoisonedData(Categorical):
    """Categorical likelihood whose logits turn NaN while ``poisoned`` is set (bad data)."""

    poisoned = False

    def distribution(self, output, params):
        if self.poisoned:
            output = output + float("nan")
        return super().distribution(output, params)


def test_nan_parameter_raises_naming_step_and_parameter_and_keeps_the_checkpoint(tmp_path):
    model = _model()
    write = runs._checkpoint_writer(tmp_path, keep=3)
    given = []

    def checkpoint(state):
        given.append(state)
        write(state)

    with pytest.raises(
        NumericalFault, match=r"step 8 .*'net\.0\.bias'.*checkpoint.*step 5"
    ) as info:
        sws.fit(
            model,
            X,
            Y,
            num_steps=20,
            lr=1e-2,
            callback=_poison_bias_at(model, 7),
            checkpoint=checkpoint,
            checkpoint_every=5,
        )
    assert isinstance(info.value, FloatingPointError)
    assert (info.value.step, info.value.name, info.value.kind) == (8, "net.0.bias", "parameter")
    # only finite states reached the checkpoint callable; the file reads back and resumes
    assert [s.step for s in given] == [5]
    for state in given:
        for group in (state.guide_state, state.network_state):
            assert all(torch.isfinite(v).all() for v in group.values())
    state, path, messages = runs.latest_checkpoint(tmp_path)
    assert state.step == 5 and path.name == "step-00000005.ckpt" and not messages
    resumed = sws.fit(_model(), X, Y, num_steps=20, lr=1e-2, initial_state=state)
    assert np.isfinite(resumed.losses).all() and len(resumed.losses) == 20


def test_poison_right_before_a_checkpoint_is_not_written(tmp_path):
    model = _model()
    given = []
    with pytest.raises(NumericalFault, match="step 9 .*parameter 'net.0.bias'"):
        sws.fit(
            model,
            X,
            Y,
            num_steps=20,
            callback=_poison_bias_at(model, 9),
            checkpoint=given.append,
            checkpoint_every=5,
        )
    assert [s.step for s in given] == [5]


def test_nan_in_the_data_names_the_observation_site():
    likelihood = PoisonedData()

    def callback(step, loss):
        likelihood.poisoned = step == 6

    with pytest.raises(NumericalFault, match=r"step 7 \(the loss is nan\): site 'obs'") as info:
        sws.fit(_model(likelihood), X, Y, num_steps=12, callback=callback)
    assert info.value.name == "obs" and info.value.step == 7


def test_non_finite_gradient_with_finite_loss_is_caught_before_the_update():
    """sqrt at 0 has an infinite derivative: the loss is finite, the gradient is not."""

    class SqrtNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)
            self.shift = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            return self.lin(x) + self.shift.clamp(min=0).sqrt()

    net = SqrtNet()
    model = sws.SWSModel(net, sws.MixturePrior(3))
    before = {}

    def callback(step, loss):
        if step == 3:
            with torch.no_grad():
                net.shift.zero_()
            before.update({n: p.detach().clone() for n, p in net.named_parameters()})

    with pytest.raises(NumericalFault, match=r"step 4 .*gradient of parameter 'net.shift'") as info:
        sws.fit(model, X, Y, num_steps=10, callback=callback)
    assert info.value.kind == "gradient"
    assert torch.equal(net.shift.detach(), before["shift"])  # the update was not applied


def test_rollback_restores_lowers_the_learning_rate_and_finishes_finite():
    model = _model()
    given = []
    with pytest.warns(RuntimeWarning, match="rolled back to step 7 .*step 8.*scaled by 0.5"):
        result = sws.fit(
            model,
            X,
            Y,
            num_steps=20,
            lr=1e-2,
            mixture_lr=2e-2,
            callback=_poison_bias_at(model, 7),
            on_nonfinite="rollback",
            checkpoint=given.append,
            checkpoint_every=5,
        )
    assert len(result.losses) == 20 and np.isfinite(result.losses).all()
    assert [(f.step, f.name) for f in result.faults] == [(8, "net.0.bias")]
    assert all(torch.isfinite(v).all() for v in result.median().values())
    assert torch.isfinite(model.net[0].bias).all()
    assert [s.step for s in given] == [5, 10, 15, 20]
    lrs = [g["lr"] for g in given[-1].optimizer_state["param_groups"]]
    assert lrs == pytest.approx([5e-3, 1e-2])  # both groups halved


def test_rollback_gives_up_after_max_rollbacks():
    likelihood = PoisonedData()

    def callback(step, loss):
        likelihood.poisoned = step >= 4  # the data stay bad: no learning rate helps

    with (
        pytest.warns(RuntimeWarning, match="rolled back"),
        pytest.raises(NumericalFault, match="site 'obs'.*Gave up after 2 rollbacks"),
    ):
        sws.fit(
            _model(likelihood),
            X,
            Y,
            num_steps=10,
            callback=callback,
            on_nonfinite="rollback",
            max_rollbacks=2,
        )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"on_nonfinite": "ignore"},
            r"on_nonfinite must be one of \['raise', 'rollback'\], got 'ignore'",
        ),
        ({"max_rollbacks": -1}, "max_rollbacks must be an integer >= 0, got -1"),
        ({"rollback_lr_factor": 1.5}, r"rollback_lr_factor must lie in \(0, 1\), got 1.5"),
        ({"collapse_threshold": 0.0}, "collapse_threshold must be a number > 0, got 0.0"),
    ],
)
def test_fault_options_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sws.fit(_model(), X, Y, num_steps=2, **kwargs)


def test_a_clean_run_is_unchanged_by_the_checks():
    result = sws.fit(_model(), X, Y, num_steps=15, batch_size=20, seed=4)
    again = sws.fit(_model(), X, Y, num_steps=15, batch_size=20, seed=4, on_nonfinite="rollback")
    assert result.faults == [] and again.faults == []
    np.testing.assert_array_equal(result.losses, again.losses)


# ---------------------------------------------------------------------------- variance collapse
def _collapsing_model(flat):
    """Most weights sit exactly at zero, so the zero component's σ can shrink without bound."""
    net = torch.nn.Sequential(torch.nn.Linear(20, 3))
    with torch.no_grad():
        values = torch.zeros(3, 20)
        values[:, :4] = torch.tensor([-1.0, -0.6, 0.6, 1.0]).repeat(3, 1)
        net[0].weight.copy_(values)
    prior = sws.MixturePrior(3, flat=flat, init_sigma=0.3)
    return sws.SWSModel(net, prior, prior_scale=1.0)


def test_variance_collapse_is_reported_with_the_component_and_the_remedy():
    x = torch.zeros(30, 20)  # no data gradient: only the prior moves the weights
    y = torch.zeros(30, dtype=torch.long)
    model = _collapsing_model(flat=True)
    with pytest.warns(VarianceCollapseWarning) as record:
        result = sws.fit(model, x, y, num_steps=100, lr=1e-9, mixture_lr=0.3)
    messages = [str(w.message) for w in record]
    assert any("zero component (0) has sigma" in m and "use flat=False" in m for m in messages)
    sigma = result.mixture().sigma
    weights = result.median()["net.0.weight"]
    assert sigma[0] < 1e-4 * weights.std()
    assert issubclass(VarianceCollapseWarning, UserWarning)


def test_proper_hyperprior_prevents_the_collapse_and_the_warning():
    x = torch.zeros(30, 20)
    y = torch.zeros(30, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("error", VarianceCollapseWarning)
        result = sws.fit(
            _collapsing_model(flat=False), x, y, num_steps=100, lr=1e-9, mixture_lr=0.3
        )
    assert math.isfinite(result.losses[-1])
