"""The SVI engine behind ``fit``: init / update / run, the state record, the loss at
given parameters, the public mini-batch, learning-rate schedulers, the L-BFGS
tolerance and ``copy_model`` — each against an independent oracle."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close
from torch.func import functional_call

import bayes_sws as sws
from bayes_sws.infer import fastmap
from bayes_sws.infer.svi import (
    FaultPolicy,
    NumericalFault,
    SVIEngine,
    batch_indices,
    local_params,
    steps_per_epoch,
)
from bayes_sws.runs import commands as runs

X = torch.randn(60, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
Y = torch.randint(0, 3, (60,), generator=torch.Generator().manual_seed(2))


class RecordingNet(torch.nn.Module):
    """A small MLP that keeps the inputs of every forward pass."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.hidden = torch.nn.Linear(4, 6)
        self.out = torch.nn.Linear(6, 3)
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.out(torch.tanh(self.hidden(x)))


def _model(prior_scale=0.5, **prior):
    prior = {"zero_component": False, "flat": True, **prior}
    net = RecordingNet().double()
    return sws.SWSModel(net, sws.MixturePrior(3, **prior), prior_scale=prior_scale)


def _hand_batches(num_data, batch_size, seed, num_epochs):
    """The documented order: one seeded permutation per epoch, cut into whole batches."""
    batches = []
    for epoch in range(num_epochs):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(num_data, generator=generator)
        for j in range(num_data // batch_size):
            batches.append(perm[j * batch_size : (j + 1) * batch_size])
    return batches


def _hand_loss(model, values, network_state, index=None):
    """E(w) + λΩ(w) (5.139) with flat hyperpriors: cross-entropy by torch, Ω by penalty.omega."""
    weights = {n: values[f"net.{n}"] for n in ("hidden.weight", "out.weight")}
    x, y = (X, Y) if index is None else (X[index], Y[index])
    scale = 1.0 if index is None else len(X) / len(index)
    with torch.no_grad():
        output = functional_call(model.net, {**network_state, **weights}, (x,))
        data = F.cross_entropy(output, y, reduction="sum")
        w = torch.cat([v.reshape(-1) for v in weights.values()])
        sigma = values["sws.precisions"] ** -0.5
        omega = sws.penalty.omega(w, values["sws.mixing"], values["sws.means"], sigma)
    return float(scale * data + model.prior_scale * omega)


# ---------------------------------------------------------------------------- mini-batches
def test_public_batch_is_the_hand_written_seeded_loop():
    expected = _hand_batches(50, 8, seed=3, num_epochs=3)  # 6 batches per epoch, 2 points left out
    assert steps_per_epoch(50, 8) == 6
    for step, batch in enumerate(expected):
        assert torch.equal(batch_indices(50, 8, step, 3), batch)
    assert batch_indices(50, None, 4, 3) is None and batch_indices(50, 50, 4, 3) is None


def test_update_uses_the_batch_of_its_step_and_the_loss_there_is_the_objective():
    model = _model()
    engine = SVIEngine(model, X, Y, lr=1e-2, batch_size=16, seed=5)
    engine.init()
    expected = _hand_batches(60, 16, seed=5, num_epochs=3)  # 3 batches per epoch
    for step in range(8):
        assert torch.equal(engine.batch(step), expected[step])
        with local_params():
            values = {k: v.detach().clone() for k, v in engine.guide.median().items()}
        network = {n: p.detach().clone() for n, p in model.net.named_parameters() if "bias" in n}
        oracle = _hand_loss(model, values, network, expected[step])
        assert_close(engine.loss(step=step), oracle, rtol=1e-10)
        loss = engine.update()
        assert torch.equal(model.net.seen[-1], X[expected[step]])  # the data the step saw
        assert_close(loss, oracle, rtol=1e-10)  # the loss before the update, on that batch
    assert engine.step == 8 and len(engine.losses) == 8


# ---------------------------------------------------------------------------- loss at a state
def test_loss_at_a_given_state_is_the_penalised_objective_and_changes_nothing():
    model = _model()
    engine = SVIEngine(model, X, Y, lr=2e-2, seed=1)
    engine.init()
    for _ in range(10):
        engine.update()
    state = engine.state()
    with local_params():
        values = {k: v.detach().clone() for k, v in engine.guide.median().items()}
    for _ in range(5):  # move on: the engine's parameters are no longer the state's
        engine.update()
    before = engine.state()
    torch_rng = torch.get_rng_state()

    assert_close(engine.loss(state), _hand_loss(model, values, state.network_state), rtol=1e-10)
    after = engine.state()
    assert after.step == 15 and np.array_equal(after.losses, before.losses)
    for group in ("guide_state", "network_state"):
        for k, v in getattr(before, group).items():
            assert torch.equal(getattr(after, group)[k], v)
    assert torch.equal(torch.get_rng_state(), torch_rng)
    # and the next step continues as if loss() had never been called
    again = SVIEngine(_model(), X, Y, lr=2e-2, seed=1)
    again.init()
    for _ in range(16):
        again.update()
    engine.update()
    assert np.array_equal(engine.losses, again.losses)


# ---------------------------------------------------------------------------- init / update / run
def test_update_loop_run_and_fit_agree_bit_for_bit_and_resume_from_a_state():
    settings = {"lr": 1e-2, "batch_size": 20, "seed": 7}
    fitted = sws.fit(_model(flat=False), X, Y, num_steps=24, **settings)

    stepped = SVIEngine(_model(flat=False), X, Y, **settings)
    stepped.init()
    by_update = [stepped.update() for _ in range(24)]

    ran = SVIEngine(_model(flat=False), X, Y, **settings)
    ran.init()
    ran.run(10)
    half = ran.state()
    by_run = ran.run(24)

    resumed = SVIEngine(_model(flat=False), X, Y, **settings)
    resumed.init(half)
    assert resumed.step == 10
    by_resume = resumed.run(24)

    for losses in (by_update, by_run, by_resume):
        np.testing.assert_array_equal(np.asarray(losses), fitted.losses)
    with local_params():
        for engine in (stepped, ran, resumed):
            median = engine.guide.median()
            for name, value in fitted.median().items():
                assert torch.equal(median[name], value), name


def test_update_raises_a_named_fault_and_does_not_apply_the_step():
    model = _model()
    engine = SVIEngine(model, X, Y, seed=0)
    engine.init()
    engine.update()
    with torch.no_grad():
        model.net.hidden.bias[0] = float("nan")
    with pytest.raises(NumericalFault, match="step 1 .*'net.hidden.bias'") as info:
        engine.update()
    assert info.value.step == 1 and engine.step == 1


def test_engine_methods_need_init_and_options_are_checked():
    engine = SVIEngine(_model(), X, Y)
    with pytest.raises(RuntimeError, match=r"call engine.init\(\) first"):
        engine.update()
    with pytest.raises(ValueError, match="lbfgs_tolerance must be a number > 0, got 0"):
        SVIEngine(_model(), X, Y, lbfgs_tolerance=0)
    with pytest.raises(TypeError, match="lr_scheduler must be a callable optimizer -> "):
        sws.fit(_model(), X, Y, num_steps=2, lr_scheduler=5)
    with pytest.raises(ValueError, match=r"on_nonfinite must be one of \['raise', 'rollback'\]"):
        FaultPolicy("ignore")


# ---------------------------------------------------------------------------- schedulers
def _torch_schedule(make, lrs, num_steps):
    """The learning rates torch's scheduler gives a plain SGD optimiser, after every step."""
    params = [torch.zeros(1, requires_grad=True) for _ in lrs]
    optim = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, lrs)])
    scheduler = make(optim)
    rates = []
    for _ in range(num_steps):
        optim.step()
        scheduler.step()
        rates.append([group["lr"] for group in optim.param_groups])
    return rates


@pytest.mark.parametrize(
    "make",
    [
        lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5),
        lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (1 + k)),
    ],
    ids=["StepLR", "LambdaLR"],
)
def test_lr_scheduler_sets_the_rates_torch_sets_and_resumes_exactly(make, tmp_path):
    states = []
    settings = {"num_steps": 10, "lr": 1e-2, "mixture_lr": 3e-2, "seed": 2, "lr_scheduler": make}
    fitted = sws.fit(_model(), X, Y, checkpoint=states.append, checkpoint_every=1, **settings)
    rates = [[g["lr"] for g in s.optimizer_state["param_groups"]] for s in states]
    assert rates == _torch_schedule(make, [1e-2, 3e-2], 10)

    # a checkpoint file with the scheduler's state resumes bit-identically
    write = runs._checkpoint_writer(tmp_path, keep=1)
    write(states[5])
    state, _, messages = runs.latest_checkpoint(tmp_path)
    assert state.step == 6 and not messages
    resumed = sws.fit(_model(), X, Y, initial_state=state, **settings)
    np.testing.assert_array_equal(resumed.losses, fitted.losses)
    no_scheduler = {k: v for k, v in settings.items() if k != "lr_scheduler"}
    with pytest.raises(ValueError, match="has an lr_scheduler state but this run has no"):
        sws.fit(_model(), X, Y, initial_state=state, **no_scheduler)


@pytest.mark.parametrize(
    "make",
    [
        lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5),
        lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (1 + k)),
    ],
    ids=["StepLR", "LambdaLR"],
)
def test_rollback_scales_the_scheduled_rates(make):
    model = _model()

    def poison(step, loss):
        if step == 7 and not poison.done:
            poison.done = True
            with torch.no_grad():
                model.net.hidden.bias.fill_(float("nan"))

    poison.done = False
    states = []
    with pytest.warns(RuntimeWarning, match="rolled back to step 7 .*scaled by 0.5"):
        result = sws.fit(
            model,
            X,
            Y,
            num_steps=10,
            lr=1e-2,
            mixture_lr=3e-2,
            lr_scheduler=make,
            callback=poison,
            on_nonfinite="rollback",
            checkpoint=states.append,
            checkpoint_every=1,
        )
    assert [f.step for f in result.faults] == [7]
    torch_rates = _torch_schedule(make, [1e-2, 3e-2], 10)
    after = [s for s in states if s.step >= 8]
    assert [s.step for s in after] == [8, 9, 10]
    for state in after:
        rates = [g["lr"] for g in state.optimizer_state["param_groups"]]
        assert rates == pytest.approx([0.5 * r for r in torch_rates[state.step - 1]], rel=1e-12)


def test_fit_without_a_scheduler_keeps_the_checkpoint_format():
    states = []
    sws.fit(_model(), X, Y, num_steps=3, checkpoint=states.append)
    assert "scheduler_state" not in states[-1].to_dict()
    assert sws.infer.FitState.from_dict(states[-1].to_dict()).scheduler_state is None


# ---------------------------------------------------------------------------- L-BFGS tolerance
def test_lbfgs_tolerance_above_the_initial_gradient_leaves_the_parameters_alone():
    model = _model()
    engine = SVIEngine(model, X, Y, optimizer="lbfgs", lr=1.0)
    engine.init()
    # the largest absolute gradient entry over what L-BFGS optimises, by autograd
    with local_params():
        engine.optimizer.zero_grad()
        torch.autograd.backward(fastmap.map_loss(model, engine.guide, X, Y))
    largest = max(float(p.grad.abs().max()) for p in engine.optimizer.param_groups[0]["params"])
    start = engine.loss()

    for tolerance, moves in ((largest * 1.01, False), (largest * 0.99, True)):
        result = sws.fit(
            _model(), X, Y, optimizer="lbfgs", lr=1.0, num_steps=3, lbfgs_tolerance=tolerance
        )
        assert_close(result.losses[0], start, rtol=1e-12)
        assert (result.losses[-1] < start) == moves
        if not moves:
            np.testing.assert_array_equal(result.losses, np.full(3, result.losses[0]))


# ---------------------------------------------------------------------------- copy_model
def test_copy_model_leaves_the_network_alone_and_fits_a_deep_copy():
    model = _model()
    before = {n: p.detach().clone() for n, p in model.net.named_parameters()}
    result = sws.fit(model, X, Y, num_steps=12, lr=1e-2, copy_model=True)
    for n, p in model.net.named_parameters():
        assert torch.equal(p, before[n]), n
    assert result.model is not model and result.model.net is not model.net
    oracle = sws.fit(copy.deepcopy(model), X, Y, num_steps=12, lr=1e-2)
    np.testing.assert_array_equal(result.losses, oracle.losses)
    # the default trains the network in place: its bias (no prior) moved
    sws.fit(model, X, Y, num_steps=12, lr=1e-2)
    assert not torch.equal(model.net.hidden.bias, before["hidden.bias"])
