"""Tests for bayes_sws.zoo.training.

Oracles: scikit-learn's LogisticRegression on the same split, numpy least
squares, numpy forward passes and counts.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from conftest import assert_close
from torch import nn

from bayes_sws.zoo.data import load_dataset
from bayes_sws.zoo.nets import mlp
from bayes_sws.zoo.training import TrainResult, accuracy, predict, rmse, train


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def make_net(sizes, seed=0):
    torch.manual_seed(seed)
    return mlp(sizes)


def test_training_reduces_loss_and_matches_logistic_regression(digits):
    from sklearn.linear_model import LogisticRegression

    oracle = LogisticRegression(max_iter=2000).fit(digits.x_train.numpy(), digits.y_train.numpy())
    oracle_accuracy = oracle.score(digits.x_test.numpy(), digits.y_test.numpy())

    net = make_net([64, 64, 10])
    result = train(net, digits.x_train, digits.y_train, num_epochs=20, lr=3e-3, batch_size=64)
    assert isinstance(result, TrainResult)
    steps_per_epoch = digits.num_train // 64  # full batches only (1,437 // 64 = 22)
    assert result.num_steps == len(result.losses) == 20 * steps_per_epoch
    assert all(isinstance(value, float) for value in result.losses)
    first_epoch = np.mean(result.losses[:steps_per_epoch])
    last_epoch = np.mean(result.losses[-steps_per_epoch:])
    assert result.losses[0] == pytest.approx(math.log(10), rel=0.15)  # near-uniform start
    assert last_epoch < 0.1 * first_epoch
    net_accuracy = accuracy(net, digits.x_test, digits.y_test)
    assert net_accuracy >= oracle_accuracy - 0.05
    assert net.training  # mode restored


def test_mse_training_recovers_least_squares():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = x @ np.array([1.5, -2.0, 0.5]) + 0.3 + 0.1 * rng.normal(size=200)
    design = np.column_stack([x, np.ones(len(x))])
    coefficients, *_ = np.linalg.lstsq(design, y, rcond=None)
    oracle_rmse = np.sqrt(np.mean((design @ coefficients - y) ** 2))

    net = make_net([3, 1])
    x_t, y_t = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    train(net, x_t, y_t, loss="mse", num_epochs=400, lr=0.05, batch_size=200)
    assert_close(
        net[0].weight.detach().double().squeeze(0),
        torch.tensor(coefficients[:3]),
        atol=2e-3,
        rtol=0,
    )
    assert float(net[0].bias.detach()) == pytest.approx(coefficients[3], abs=2e-3)
    assert rmse(net, x_t, y_t) == pytest.approx(oracle_rmse, rel=1e-3)


def test_same_seed_is_deterministic_and_leaves_global_rng_alone(digits):
    x, y = digits.x_train[:300], digits.y_train[:300]
    base = make_net([64, 16, 10])
    first, second, other = copy.deepcopy(base), copy.deepcopy(base), copy.deepcopy(base)
    state = torch.get_rng_state()
    result_1 = train(first, x, y, num_epochs=3, batch_size=32, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    result_2 = train(second, x, y, num_epochs=3, batch_size=32, seed=7)
    result_3 = train(other, x, y, num_epochs=3, batch_size=32, seed=8)
    assert result_1.losses == result_2.losses
    for p, q in zip(first.parameters(), second.parameters()):
        assert torch.equal(p, q)
    assert result_1.losses != result_3.losses


def test_full_batch_with_one_epoch_visits_each_example_once():
    # With batch_size >= N every epoch is a single full-batch step whatever the order,
    # so the first loss equals the full-data cross-entropy computed by hand in numpy.
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.normal(size=(30, 4)), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, 3, size=30))
    net = make_net([4, 3])
    weight = net[0].weight.detach().double().numpy()
    bias = net[0].bias.detach().double().numpy()
    logits = x.double().numpy() @ weight.T + bias
    log_z = np.log(np.exp(logits).sum(axis=1))
    expected = np.mean(log_z - logits[np.arange(30), y.numpy()])
    result = train(net, x, y, num_epochs=2, batch_size=1000)
    assert result.num_steps == 2
    assert result.losses[0] == pytest.approx(expected, rel=1e-5)


def test_hooks_run_in_order_and_keep_a_mask(digits):
    x, y = digits.x_train[:256], digits.y_train[:256]
    net = make_net([64, 10])
    mask = torch.rand(net[0].weight.shape, generator=torch.Generator().manual_seed(0)) > 0.5
    with torch.no_grad():
        net[0].weight[~mask] = 0.0
    events = []
    snapshots = {}

    def before_step(model):
        # after backward(): gradients exist; before step(): weights not yet moved
        assert model[0].weight.grad is not None
        if "after" in snapshots:
            assert torch.equal(model[0].weight, snapshots["after"])
        events.append("before")
        model[0].weight.grad[~mask] = 0.0

    def after_step(model):
        events.append("after")
        with torch.no_grad():
            model[0].weight[~mask] = 0.0
        snapshots["after"] = model[0].weight.detach().clone()

    result = train(
        net,
        x,
        y,
        num_epochs=2,
        batch_size=64,
        lr=1e-2,
        before_step=before_step,
        after_step=after_step,
    )
    assert events == ["before", "after"] * result.num_steps
    assert result.num_steps == 8
    assert torch.all(net[0].weight[~mask] == 0.0)
    assert torch.any(net[0].weight[mask] != 0.0)


def test_accuracy_and_predict_agree_with_numpy(digits):
    net = make_net([64, 10])
    net.train()
    weight = net[0].weight.detach().double().numpy()
    bias = net[0].bias.detach().double().numpy()
    x, y = digits.x_test.numpy().astype(np.float64), digits.y_test.numpy()
    logits = x @ weight.T + bias
    expected = np.count_nonzero(logits.argmax(axis=1) == y) / len(y)
    assert accuracy(net, digits.x_test, digits.y_test, batch_size=100) == pytest.approx(expected)
    outputs = predict(net, digits.x_test, batch_size=7)
    assert_close(outputs.numpy(), logits, atol=1e-5)
    assert not outputs.requires_grad
    assert net.training  # eval mode was temporary


def test_predict_uses_eval_mode():
    net = nn.Sequential(nn.Dropout(p=0.9), nn.Linear(3, 2))
    x = torch.ones(50, 3)
    expected = x @ net[1].weight.detach().T + net[1].bias.detach()
    assert_close(predict(net, x), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"lr": 0.0}, ValueError, "lr must be a finite number > 0, got 0.0"),
        ({"lr": float("nan")}, ValueError, "got nan"),
        ({"num_epochs": 0}, ValueError, "num_epochs must be an integer >= 1, got 0"),
        ({"batch_size": 0}, ValueError, "batch_size must be an integer >= 1, got 0"),
        ({"weight_decay": -1.0}, ValueError, "weight_decay must be a finite number >= 0"),
        ({"loss": "hinge"}, ValueError, "unknown loss 'hinge'.*'cross_entropy', 'mse'"),
        ({"before_step": 3}, TypeError, "before_step must be a callable"),
        ({"lr_scheduler": 3}, TypeError, "lr_scheduler must be a callable optimizer -> "),
        ({"lr_scheduler": lambda opt: 3}, TypeError, "must return a torch.optim.lr_scheduler"),
    ],
)
def test_train_rejects_bad_arguments(kwargs, error, message):
    x, y = torch.zeros(4, 2), torch.tensor([0, 1, 0, 1])
    with pytest.raises(error, match=message):
        train(mlp([2, 2]), x, y, **kwargs)


def _torch_rates(make, lr, losses):
    """The rate each step uses under torch's scheduler ``make`` on a plain SGD optimiser,
    stepped after every step (``ReduceLROnPlateau`` with that step's loss)."""
    optim = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = make(optim)
    rates = []
    for loss in losses:
        rates.append(optim.param_groups[0]["lr"])
        optim.step()
        plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        scheduler.step(loss) if plateau else scheduler.step()
    return rates


@pytest.mark.parametrize(
    "make",
    [
        lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=12),
        lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5),
        lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0),
    ],
    ids=["cosine", "step", "plateau"],
)
def test_lr_scheduler_sets_the_rates_torch_sets(digits, make):
    """Every step of ``train`` runs at the rate torch's own scheduler gives a bare optimiser
    over as many steps (the plateau one fed the same losses); a constant schedule trains
    the same network as none, bit for bit."""
    seen, rates = [], []

    def capture(optimizer):
        seen.append(optimizer)
        return make(optimizer)

    net = make_net([64, 16, 10])
    x, y = digits.x_train[:256], digits.y_train[:256]
    kwargs = {"num_epochs": 3, "batch_size": 64, "lr": 1e-2, "progress": False}
    result = train(
        net,
        x,
        y,
        lr_scheduler=capture,
        after_step=lambda n: rates.append(seen[0].param_groups[0]["lr"]),
        **kwargs,
    )
    assert len(seen) == 1 and result.num_steps == 12
    assert rates == pytest.approx(_torch_rates(make, 1e-2, result.losses), rel=1e-12)
    assert len(set(rates)) > 1  # the schedule moved the rate (what this checks)

    plain, constant = make_net([64, 16, 10]), make_net([64, 16, 10])
    train(plain, x, y, **kwargs)
    train(
        constant,
        x,
        y,
        lr_scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda k: 1.0),
        **kwargs,
    )
    for a, b in zip(plain.parameters(), constant.parameters(), strict=True):
        assert torch.equal(a, b)


def test_cosine_is_torchs_cosine_annealing_over_the_whole_run(digits):
    """``lr_scheduler="cosine"`` trains the network ``CosineAnnealingLR(T_max=all the steps)``
    does, bit for bit; a schedule it does not know is refused before training."""
    x, y = digits.x_train[:256], digits.y_train[:256]
    kwargs = {"num_epochs": 3, "batch_size": 64, "lr": 1e-2, "progress": False}
    named, given = make_net([64, 16, 10]), make_net([64, 16, 10])
    train(named, x, y, lr_scheduler="cosine", **kwargs)
    steps = 3 * 4  # 256 examples in batches of 64, three epochs
    train(
        given,
        x,
        y,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps),
        **kwargs,
    )
    plain, constant = make_net([64, 16, 10]), make_net([64, 16, 10])
    train(plain, x, y, **kwargs)
    train(constant, x, y, lr_scheduler="constant", **kwargs)
    for a, b, c, d in zip(
        named.parameters(), given.parameters(), plain.parameters(), constant.parameters()
    ):
        assert torch.equal(a, b) and not torch.equal(a, c) and torch.equal(c, d)
    untouched = make_net([64, 16, 10])
    with pytest.raises(
        ValueError,
        match=r"'cos' is not a schedule train knows; give one of \['constant', 'cosine'\]",
    ):
        train(untouched, x, y, lr_scheduler="cos", **kwargs)
    for a, b in zip(untouched.parameters(), make_net([64, 16, 10]).parameters(), strict=True):
        assert torch.equal(a, b)


def test_train_rejects_bad_data():
    net = mlp([2, 2])
    with pytest.raises(ValueError, match="x has 4 examples but y has shape"):
        train(net, torch.zeros(4, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="x has 1 non-finite"):
        train(net, torch.tensor([[0.0, float("inf")]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="integer class labels.*torch.float32"):
        train(net, torch.zeros(2, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="class label 5 needs at least 6 outputs"):
        train(net, torch.zeros(2, 2), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="x has shape \\(0, 2\\)"):
        train(net, torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))


def test_train_reports_divergence():
    x = torch.tensor([[1.0e30, 1.0e30]])
    with pytest.raises(FloatingPointError, match="lower lr"):
        train(mlp([2, 1]), x, torch.tensor([1.0e30]), loss="mse")


def test_an_epoch_is_full_batches_of_a_permutation_as_in_fit():
    """N = 100, B = 32: by hand 3 steps of 32 distinct points per epoch, 4 left out."""
    from bayes_sws import infer
    from bayes_sws.zoo.training import steps_per_epoch

    assert infer.steps_per_epoch is steps_per_epoch  # one definition for fit and train
    assert steps_per_epoch(1437, 128) == 11
    assert steps_per_epoch(100, 32) == 3
    assert steps_per_epoch(100, None) == steps_per_epoch(100, 500) == 1
    x = torch.randn(100, 2)
    y = torch.arange(100, dtype=torch.float32)
    seen = []

    def record(output, target):
        seen.append(target.clone())
        return output.sum() * 0.0  # the weights need not move

    result = train(nn.Linear(2, 1), x, y, loss=record, num_epochs=2, batch_size=32)
    assert result.num_steps == len(seen) == 6
    assert all(batch.shape == (32,) for batch in seen)
    for epoch in (seen[:3], seen[3:]):
        points = torch.cat(epoch)
        assert points.unique().numel() == 96  # no point twice within an epoch
