"""fit(): MAP on digits clusters the weights; repeatable; bad input is named."""

import math

import numpy as np
import pytest
import torch
from conftest import assert_close
from scipy.stats import norm
from sklearn.datasets import load_digits

import bayes_sws as sws
from bayes_sws.runs.demo import clustering_summary
from bayes_sws.zoo.nets import mlp
from bayes_sws.zoo.training import accuracy, train


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train_idx, test_idx = perm[:1400], perm[1400:]
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


@pytest.fixture(scope="module")
def pretrained(digits):
    x, y, _, _ = digits
    torch.manual_seed(0)
    net = mlp([64, 40, 10])
    train(net, x, y, num_epochs=40, lr=3e-3, batch_size=64, seed=0)
    return net


def _copy(net):
    import copy

    return copy.deepcopy(net)


def test_map_clusters_weights_and_keeps_accuracy(digits, pretrained):
    x, y, x_test, y_test = digits
    acc_before = accuracy(pretrained, x_test, y_test)
    model = sws.SWSModel(_copy(pretrained), sws.MixturePrior(8), prior_scale=0.1)
    result = sws.fit(model, x, y, num_steps=600, lr=1e-3, mixture_lr=3e-3, batch_size=128, seed=0)
    net = result.map_network()
    acc_after = accuracy(net, x_test, y_test)
    weights = torch.cat(
        [p.detach().reshape(-1) for n, p in net.named_parameters() if n.endswith("weight")]
    )
    pi, mu, sigma = (t.double().numpy() for t in result.mixture())
    # independent responsibilities from scipy
    w = weights.double().numpy()
    log_r = np.log(pi) + norm.logpdf(w[:, None], mu, sigma)
    owner = log_r.argmax(1)
    within = np.mean(np.abs(w - mu[owner]) <= 2 * sigma[owner])
    print(f"accuracy {acc_before:.4f} -> {acc_after:.4f}; within 2 sigma: {within:.4f}")
    assert within > 0.9
    assert acc_after >= acc_before - 0.02
    share, within_pkg = clustering_summary(weights, result.mixture())
    assert_close(within_pkg, within, rtol=1e-12)
    assert_close(share, np.bincount(owner, minlength=len(pi)) / len(w), rtol=1e-12)
    # the penalised objective went down
    assert result.losses[-50:].mean() < result.losses[:10].mean()


def test_same_seed_same_parameters(digits, pretrained):
    x, y, _, _ = digits
    medians = []
    for _ in range(2):
        model = sws.SWSModel(_copy(pretrained), sws.MixturePrior(4))
        result = sws.fit(model, x, y, guide="normal", num_steps=15, batch_size=100, seed=3)
        medians.append(result.median())
    for name in medians[0]:
        assert torch.equal(medians[0][name], medians[1][name]), name


def test_map_starts_from_the_network_weights(digits, pretrained):
    x, y, _, _ = digits
    model = sws.SWSModel(_copy(pretrained), sws.MixturePrior(4))
    result = sws.fit(model, x, y, num_steps=1, lr=1e-9)
    for name, param in pretrained.named_parameters():
        if name.endswith("weight"):
            assert_close(result.median()[f"net.{name}"], param, atol=1e-6)


def test_separate_learning_rates(digits, pretrained):
    """With mixture_lr tiny the mixture stays put while weights move."""
    x, y, _, _ = digits
    model = sws.SWSModel(_copy(pretrained), sws.MixturePrior(4))
    init = model.init_values()
    result = sws.fit(model, x, y, num_steps=20, lr=1e-2, mixture_lr=1e-12, batch_size=200)
    med = result.median()
    assert_close(med["sws.means"], init["sws.means"], atol=1e-8)
    assert (med["net.0.weight"] - init["net.0.weight"]).abs().max() > 1e-3


def test_lbfgs_decreases_the_objective(digits, pretrained):
    x, y, _, _ = digits
    model = sws.SWSModel(_copy(pretrained), sws.MixturePrior(4, flat=True), prior_scale=0.01)
    result = sws.fit(model, x[:300], y[:300], optimizer="lbfgs", lr=1.0, num_steps=10)
    assert result.losses[-1] < result.losses[0]


def _sine_problem():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(1, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1)
    ).double()
    prior = sws.MixturePrior(3, mean_scale=2.0, precision_rate=0.5)
    model = sws.SWSModel(net, prior, likelihood=sws.Gaussian(precision=4.0))
    g = torch.Generator().manual_seed(0)
    x = torch.linspace(-3, 3, 40, dtype=torch.float64)[:, None]
    y = (7 * torch.sin(0.75 * x) + 0.5 * x).squeeze(-1)
    return model, x, y + 0.5 * torch.randn(40, generator=g, dtype=torch.float64)


def test_lbfgs_keeps_descending_and_matches_a_long_adam_run():
    # Regression: with torch's default max_eval (= max_iter * 5 // 4 = 1 for one
    # iteration per step) the line search had no budget, returned t = 0 from the
    # second step on, and the loss stayed at its step-1 value (2420 here) forever.
    model, x, y = _sine_problem()
    lbfgs = sws.fit(model, x, y, optimizer="lbfgs", lr=0.1, num_steps=200).losses
    assert np.all(np.diff(lbfgs) <= 1e-9 * np.abs(lbfgs[1:]))  # a Wolfe search never ascends
    assert lbfgs[5] < 0.5 * lbfgs[1]
    # oracle: torch's Adam, 15× as many steps, from the same start
    model, x, y = _sine_problem()
    adam = sws.fit(model, x, y, optimizer="adam", lr=0.02, num_steps=3000).losses
    assert lbfgs[-1] <= adam[-1] + 1.0, (lbfgs[-1], adam[-1])


# ---------------------------------------------------------------------- bad input
def _model(**prior_kwargs):
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    return sws.SWSModel(net, sws.MixturePrior(3, **prior_kwargs))


def _soft_model():
    return sws.SWSModel(
        torch.nn.Sequential(torch.nn.Linear(4, 3)), sws.MixturePrior(3), "soft_categorical"
    )


X, Y = torch.randn(10, 4), torch.randint(0, 3, (10,))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: sws.MixturePrior(0), "num_components must be >= 1, got 0"),
        (lambda: sws.MixturePrior(2.5), "num_components must be an int"),
        (lambda: sws.MixturePrior(3, pi_zero=1.2), r"pi_zero must lie in \(0, 1\), got 1.2"),
        (
            lambda: sws.MixturePrior(3, mean_scale=-1.0),
            "mean_scale must be a finite number > 0, got -1.0",
        ),
        (
            lambda: sws.MixturePrior(3, precision_rate=0.0),
            "precision_rate must be a finite number > 0, got 0.0",
        ),
        (
            lambda: sws.MixturePrior(3, init_sigma=float("nan")),
            "init_sigma must be a finite number > 0, got nan",
        ),
        (
            lambda: sws.SWSModel(torch.nn.Linear(2, 2), sws.MixturePrior(2), prior_scale=-0.5),
            r"prior_scale \(λ\) must be a finite number >= 0, got -0.5",
        ),
        (
            lambda: sws.SWSModel(torch.nn.Linear(2, 2), sws.MixturePrior(2), likelihood="poisson"),
            "unknown likelihood 'poisson'",
        ),
        (
            lambda: sws.SWSModel(torch.nn.Sequential(torch.nn.BatchNorm1d(3)), sws.MixturePrior(2)),
            "no parameter of the network is selected for the prior",
        ),
        (
            lambda: sws.SWSModel(torch.nn.Linear(2, 2), sws.MixturePrior(2, params=["fc.weight"])),
            r"names \['fc.weight'\] that the network does not have",
        ),
        (lambda: sws.Gaussian(precision=0.0), "precision must be a finite number > 0, got 0.0"),
        (lambda: sws.fit(_model(), X, Y, guide="hmc"), "unknown guide 'hmc'"),
        (lambda: sws.fit(_model(), X, Y, optimizer="rmsprop"), "unknown optimizer 'rmsprop'"),
        (lambda: sws.fit(_model(), X, Y, lr=0.0), "lr must be a number > 0, got 0.0"),
        (lambda: sws.fit(_model(), X, Y, num_steps=0), "num_steps must be an integer > 0, got 0"),
        (
            lambda: sws.fit(_model(), X, Y, batch_size=-4),
            "batch_size must be an integer > 0, got -4",
        ),
        (
            lambda: sws.fit(_model(), X, Y, init_scale=-1.0),
            "init_scale must be a number > 0, got -1.0",
        ),
        (
            lambda: sws.fit(_model(mixing_concentration=0.5), X, Y),
            r"mixing_concentration \(Dirichlet α\) = 0.5 < 1",
        ),
        (lambda: sws.fit(_model(pi_zero_prior=(0.5, 2.0)), X, Y), r"pi_zero_prior \(Beta a, b\)"),
        (lambda: sws.fit(_model(), X[:9], Y), "same number of data points"),
        (lambda: sws.fit(_model(), X, Y[:, None]), "1-d tensor of class labels"),
        (
            lambda: sws.fit(_model(), X, torch.full((10,), 7)),
            "label 7 is outside the network's 3 classes",
        ),
        (
            lambda: sws.fit(_model(), torch.where(X > 1, float("nan"), X), Y),
            "x contains a non-finite value nan",
        ),
        (
            lambda: sws.fit(_model(), torch.randn(10, 5), Y),
            r"cannot process inputs of shape \(5,\)",
        ),
        (lambda: sws.fit(_model(), X[:0], Y[:0]), "x is empty"),
        (lambda: sws.fit(_model(), X, Y, optimizer="lbfgs", batch_size=5), "full-batch"),
        (lambda: sws.fit(torch.nn.Linear(2, 2), X, Y), "model must be a bayes_sws.SWSModel"),
        (
            lambda: sws.fit(_soft_model(), X, torch.full((10, 3), 0.5)),
            "every soft_categorical target row must sum to 1, found one off by 0.5",
        ),
        (
            lambda: sws.fit(_soft_model(), X, torch.full((10, 4), 0.25)),
            r"probabilities \(N, 3\), one for each of the network's 3 outputs; got shape \(10, 4\)",
        ),
        (
            lambda: sws.fit(_soft_model(), X, torch.tensor([[1.5, -0.5, 0.0]]).expand(10, 3)),
            "must be probabilities, got negative",
        ),
        (
            lambda: sws.fit(_soft_model(), X, torch.full((10,), 3)),
            "label 3 is outside the network's 3 classes",
        ),
    ],
)
def test_bad_input_is_named(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_variational_guide_allows_alpha_below_one():
    result = sws.fit(_model(mixing_concentration=0.5), X, Y, guide="normal", num_steps=2)
    assert math.isfinite(result.losses[-1])
