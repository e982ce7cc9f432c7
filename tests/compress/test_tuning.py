"""Choosing compression settings on a validation split (issue 16 item 4).

Oracles: hand counts of the split; a test set of NaNs that any read would turn
into NaN scores; the selection rule applied by hand to the returned trials.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle

import numpy as np
import pytest
import scipy.stats
import torch

from bayes_sws.compress.pipeline import RECIPES, Recipe, soft_weight_sharing
from bayes_sws.compress.tuning import (
    calibrate_refit_scale,
    choose_within_margin,
    tune_soft_weight_sharing,
    validation_split,
)
from bayes_sws.zoo.data import load_dataset
from bayes_sws.zoo.training import accuracy, train


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _chosen_by_hand(trials, pre: float):
    """The rule by hand: the highest rate among trials within 0.5 points of ``pre``, else the
    smallest error; and whether any trial was within."""
    within = [t for t in trials if 100 * (t.validation_error_after - pre) <= 0.5]
    if within:
        return max(within, key=lambda t: t.compression_rate), True
    return min(trials, key=lambda t: t.validation_error_after), False


def _numpy_errors(net, x, y):
    """Per point, 1.0 where a Linear/ReLU stack's largest output is not the label (numpy)."""
    out = x.astype(np.float64)
    for module in net:
        if isinstance(module, torch.nn.Linear):
            out = (
                out @ module.weight.detach().double().numpy().T
                + module.bias.detach().double().numpy()
            )
        else:
            out = np.maximum(out, 0.0)
    return (out.argmax(1) != y).astype(np.float64)


def test_validation_split_carves_the_training_set_only(digits):
    num = len(digits.x_train)
    index = torch.arange(num, dtype=torch.float32)[:, None].expand(-1, 64).contiguous()
    labelled = dataclasses.replace(digits, x_train=index)  # row i holds the number i
    tuning, final = validation_split(labelled, 0.1, seed=3)
    held = round(0.1 * num)
    assert len(tuning.x_test) == held and len(tuning.x_train) == num - held  # hand count
    assert torch.equal(tuning.x_train, final.x_train) and torch.equal(tuning.y_train, final.y_train)
    assert final.x_test is digits.x_test and final.y_test is digits.y_test
    kept, val = tuning.x_train[:, 0].long(), tuning.x_test[:, 0].long()
    assert sorted(kept.tolist() + val.tolist()) == list(range(num))  # disjoint, all rows
    assert torch.equal(tuning.y_test, digits.y_train[val])  # labels travel with their rows
    again, _ = validation_split(labelled, 0.1, seed=3)
    assert torch.equal(again.x_test, tuning.x_test)
    other, _ = validation_split(labelled, 0.1, seed=4)
    assert not torch.equal(other.x_test, tuning.x_test)


def test_recipes_scale_lambda_by_the_training_set_size(digits):
    """λ · N / N_split by hand; every recipe's λ is one of its grid's; the digits recipes'
    N_split is what validation_split leaves of the training set (10 %, the benchmark's)."""
    fashion = RECIPES["fashion-mnist/lenet-300-100"]
    assert fashion.num_train == 60_000 - 6_000  # Fashion-MNIST's training set less 10 %
    full = fashion.kwargs(num_train=60_000)  # the refit λ, calibrated for 60,000 images
    assert fashion.refit_num_train == 60_000
    assert full["prior_scale"] == pytest.approx(0.075 * 60_000 / 54_000, rel=1e-15)
    half = fashion.kwargs(num_train=27_000)  # any other size: the validated λ, scaled
    assert half["prior_scale"] == pytest.approx(0.07 / 2, rel=1e-15)
    assert {k: v for k, v in full.items() if k != "prior_scale"} == dict(fashion.settings)
    assert fashion.kwargs()["prior_scale"] == 0.07  # as chosen, at the split's size
    assert fashion.kwargs(0.14)["prior_scale"] == 0.14  # a front row, unscaled
    assert fashion.kwargs(0.14, num_train=27_000)["prior_scale"] == pytest.approx(0.07)
    tuning, _ = validation_split(digits, 0.1, seed=0)
    for name, recipe in RECIPES.items():
        assert recipe.prior_scale in recipe.grid, name
        if name.startswith("digits/"):
            assert recipe.num_train == tuning.num_train, name
    # a recipe is a record: its settings cannot be changed through it, and kwargs is a copy
    with pytest.raises(TypeError):
        fashion.settings["lr"] = 1.0  # type: ignore[index]
    full["lr"] = 1.0
    assert fashion.settings["lr"] == 1e-3
    # and it travels: pickled (to worker processes) and deep-copied, equal and still read-only
    for copied in (pickle.loads(pickle.dumps(fashion)), copy.deepcopy(fashion)):
        assert copied == fashion and copied.kwargs(num_train=60_000) == fashion.kwargs(
            num_train=60_000
        )
        with pytest.raises(TypeError):
            copied.settings["lr"] = 1.0  # type: ignore[index]
        assert dict(copied.pretrain) == dict(fashion.pretrain) != {}
        with pytest.raises(TypeError):
            copied.pretrain["lr"] = 1.0  # type: ignore[index]
    with pytest.raises(ValueError, match="num_train"):
        fashion.kwargs(num_train=0)
    with pytest.raises(ValueError, match="prior_scale"):
        fashion.scaled(-0.1, 100)


def test_refit_calibration_reads_no_test_set_and_stops_at_the_first_rate_reached(digits):
    """``calibrate_refit_scale``: each seed's rate is that of a single ``soft_weight_sharing``
    call at λ · N / N_split (the oracle, one process); λ are tried in rising order and the
    first whose mean rate reaches the target is chosen (rule by hand); a test set of the wrong
    width, which any read would refuse, is never read; the recipe it makes refits at the
    chosen λ on N images and at the validated λ on any other number."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 24), torch.nn.ReLU(), torch.nn.Linear(24, 10))
    train(net, digits.x_train, digits.y_train, num_epochs=15, batch_size=64, progress=False)
    recipe = Recipe(0.01, (0.01,), 1000, {"num_steps": 40, "batch_size": 64, "progress": False})
    scales, seeds = (0.3, 0.01, 0.03), (0, 1)  # given unsorted: tried 0.01, 0.03, 0.3
    num = len(digits.x_train)
    oracle = {
        s: [
            soft_weight_sharing(
                net, digits, **{**recipe.kwargs(s), "prior_scale": s * num / 1000}, seed=seed
            ).compression_rate
            for seed in seeds
        ]
        for s in sorted(scales)
    }
    means = {s: sum(r) / len(r) for s, r in oracle.items()}
    assert means[0.01] < means[0.3]  # the network prunes harder at the larger λ
    target = (means[0.01] + means[0.3]) / 2 if means[0.03] < means[0.01] else means[0.03]
    first = next(s for s in sorted(scales) if means[s] >= target)  # the rule by hand
    wrong_width = dataclasses.replace(digits, x_test=torch.zeros(len(digits.x_test), 3))
    found = calibrate_refit_scale(net, wrong_width, recipe, scales, target_rate=target, seeds=seeds)
    assert found.prior_scale == first and found.target_rate == target
    assert list(found.rates) == [s for s in sorted(scales) if s <= first]  # stopped there
    for s, rates in found.rates.items():
        assert rates == pytest.approx(oracle[s], rel=1e-12)
    refit = found.recipe(recipe)
    assert refit.rate == target and refit.refit_num_train == num
    assert refit.kwargs(num_train=num)["prior_scale"] == pytest.approx(first * num / 1000)
    assert refit.kwargs(num_train=500)["prior_scale"] == pytest.approx(0.01 * 500 / 1000)
    assert refit.kwargs()["prior_scale"] == 0.01  # as chosen, at the split's size
    assert pickle.loads(pickle.dumps(refit)) == refit
    # no λ reaches an unreachable rate: said, and no recipe made of it
    none = calibrate_refit_scale(net, wrong_width, recipe, [0.01], target_rate=1e9)
    assert none.prior_scale is None and list(none.rates) == [0.01]
    with pytest.raises(ValueError, match="reached the rate"):
        none.recipe(recipe)
    with pytest.raises(ValueError, match="target_rate"):
        calibrate_refit_scale(net, wrong_width, recipe, [0.01])  # the recipe has no rate
    with pytest.raises(ValueError, match="together"):
        Recipe(0.01, (0.01,), 1000, {}, refit_prior_scale=0.02)
    # a recipe that prunes units is calibrated on its retraining's rate, without the pruning
    pruning = Recipe(0.01, (0.01,), 1000, {**recipe.settings, "remove_dead_units": True})
    pruning = Recipe(0.01, (0.01,), 1000, {**pruning.settings, "prune_units": 0.05})
    kwargs = {**pruning.kwargs(num_train=num), "seed": 0}
    unpruned = soft_weight_sharing(net, digits, **{**kwargs, "prune_units": None})
    assert soft_weight_sharing(net, digits, **kwargs).compression_rate > unpruned.compression_rate
    alone = calibrate_refit_scale(net, wrong_width, pruning, [0.01], target_rate=1e9)
    assert alone.rates[0.01] == pytest.approx((unpruned.compression_rate,), rel=1e-12)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, float("nan")])
def test_validation_split_refuses_a_fraction_outside_zero_one(digits, fraction):
    with pytest.raises(ValueError, match="fraction"):
        validation_split(digits, fraction)


def test_tuning_reads_only_the_validation_set_and_applies_its_rule(digits):
    poisoned = dataclasses.replace(
        digits, x_test=torch.full_like(digits.x_test, float("nan"))
    )  # any read of the test set would give NaN logits and a wrong accuracy
    tuning, final = validation_split(poisoned, 0.2, seed=0)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 24), torch.nn.ReLU(), torch.nn.Linear(24, 10))
    train(net, tuning.x_train, tuning.y_train, num_epochs=15, batch_size=64, progress=False)
    candidates = [{"prior_scale": 0.003}, {"prior_scale": 0.03}, {"prior_scale": 3.0}]
    found = tune_soft_weight_sharing(
        net, tuning, candidates, num_steps=60, batch_size=64, progress=False
    )
    assert [t.settings for t in found.trials] == candidates
    pre = 1 - accuracy(net, tuning.x_test, tuning.y_test)  # the validation error, by hand
    for trial in found.trials:
        assert trial.validation_error_before == pytest.approx(pre, abs=1e-12)
        after = 1 - accuracy(trial.result.net, tuning.x_test, tuning.y_test)
        assert trial.validation_error_after == pytest.approx(after, abs=1e-12)
        retrained = 1 - accuracy(trial.result.retrained_net, tuning.x_test, tuning.y_test)
        assert trial.validation_error_retrained == pytest.approx(retrained, abs=1e-12)
        assert trial.retraining_increase == pytest.approx(100 * (retrained - pre), abs=1e-9)
    expected, within = _chosen_by_hand(found.trials, pre)
    assert found.chosen is expected and found.within_margin == within
    assert "**chosen**" in found.table()
    # the choice as a recipe: λ at the split's size, scaled by hand to the whole training set
    recipe = found.recipe()
    assert recipe.prior_scale == expected.settings["prior_scale"]
    assert recipe.grid == (0.003, 0.03, 3.0) and recipe.num_train == len(tuning.x_train)
    assert dict(recipe.settings) == {"num_steps": 60, "batch_size": 64}  # progress left out
    full = recipe.kwargs(num_train=len(poisoned.x_train))  # the whole training set
    assert len(poisoned.x_train) / len(tuning.x_train) == pytest.approx(1.25, abs=0.01)
    assert full["prior_scale"] == pytest.approx(
        expected.settings["prior_scale"] * len(poisoned.x_train) / len(tuning.x_train), rel=1e-15
    )
    # the final network, evaluated once on the real test set, is a number (here NaN inputs)
    assert torch.isnan(final.x_test).all()


def _split_and_net(digits, num_epochs: int, seed: int = 0):
    """Digits' validation split (20 %, ``seed``) and a 64-24-10 network trained on its
    training part for ``num_epochs`` (seeded by ``seed``)."""
    tuning, _ = validation_split(digits, 0.2, seed=seed)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(64, 24), torch.nn.ReLU(), torch.nn.Linear(24, 10))
    train(net, tuning.x_train, tuning.y_train, num_epochs=num_epochs, batch_size=64, progress=False)
    return tuning, net


def test_tuning_over_seeds_scores_the_mean_of_single_retrainings(digits):
    """``seeds=[0, 1]``: each trial's error and rate are the means of two separate
    ``soft_weight_sharing`` calls at those seeds (the oracle), and the rule picks by them."""
    from bayes_sws.compress.pipeline import soft_weight_sharing

    tuning, net = _split_and_net(digits, num_epochs=15)
    candidates = [{"prior_scale": 0.003}, {"prior_scale": 0.3}]
    common = {"num_steps": 40, "batch_size": 64, "progress": False}
    found = tune_soft_weight_sharing(net, tuning, candidates, seeds=[0, 1], **common)
    pre = 1 - accuracy(net, tuning.x_test, tuning.y_test)
    for trial, candidate in zip(found.trials, candidates, strict=True):
        single = [
            soft_weight_sharing(net, tuning, seed=seed, **common, **candidate) for seed in (0, 1)
        ]
        errors = [1 - accuracy(r.net, tuning.x_test, tuning.y_test) for r in single]
        retrained = [1 - accuracy(r.retrained_net, tuning.x_test, tuning.y_test) for r in single]
        assert trial.validation_error_retrained == pytest.approx(sum(retrained) / 2, abs=1e-12)
        assert trial.seed_errors_retrained == pytest.approx(retrained, abs=1e-12)
        rates = [r.compression_rate for r in single]
        assert trial.seed_errors_after == pytest.approx(errors, abs=1e-12)
        assert trial.seed_rates == pytest.approx(rates, rel=1e-12)
        assert trial.validation_error_after == pytest.approx(sum(errors) / 2, abs=1e-12)
        assert trial.compression_rate == pytest.approx(sum(rates) / 2, rel=1e-12)
        assert trial.validation_error_before == pytest.approx(pre, abs=1e-12)
    assert found.chosen is _chosen_by_hand(found.trials, pre)[0]
    assert "Δ per seed" in found.table()
    # the paired standard error of the increase, by numpy and scipy from each network's
    # per-point errors; and the rule with one standard error, by hand
    x, y = tuning.x_test.numpy(), tuning.y_test.numpy()
    before = _numpy_errors(net, x, y)
    ses = []
    for candidate in candidates:
        after = [
            _numpy_errors(soft_weight_sharing(net, tuning, seed=s, **common, **candidate).net, x, y)
            for s in (0, 1)
        ]
        ses.append(100 * scipy.stats.sem(np.mean(after, axis=0) - before))
    # a margin that the highest-rate trial meets by its increase but not by one standard error
    top = max(range(len(candidates)), key=lambda i: found.trials[i].compression_rate)
    margin = found.trials[top].increase + ses[top] / 2
    assert ses[top] > 0 and margin >= 0  # the setting this check needs
    bounded = tune_soft_weight_sharing(
        net,
        tuning,
        candidates,
        seeds=[0, 1],
        max_error_increase=margin,
        standard_errors=1.0,
        **common,
    )
    assert [t.increase_se for t in bounded.trials] == pytest.approx(ses, rel=1e-9)
    assert [t.increase for t in bounded.trials] == pytest.approx([t.increase for t in found.trials])
    within = [t for t, se in zip(bounded.trials, ses) if t.increase + se <= margin]
    assert bounded.trials[top] not in within
    if within:
        assert bounded.within_margin and bounded.chosen is max(
            within, key=lambda t: t.compression_rate
        )
    else:
        assert not bounded.within_margin
        bounds = [(t.increase + se, -t.compression_rate) for t, se in zip(bounded.trials, ses)]
        assert bounded.chosen is bounded.trials[bounds.index(min(bounds))]
    with pytest.raises(ValueError, match="standard_errors"):
        tune_soft_weight_sharing(net, tuning, candidates, standard_errors=-1.0, **common)
    with pytest.raises(ValueError, match="not both"):
        tune_soft_weight_sharing(net, tuning, candidates, seeds=[0], seed=1, **common)
    with pytest.raises(ValueError, match="distinct"):
        tune_soft_weight_sharing(net, tuning, candidates, seeds=[2, 2], **common)


def test_tuning_over_several_validation_splits_pools_them(digits):
    """Two validation splits, each with its own pretrained network: a trial's errors are the
    means over both splits' retrainings, each scored on its own split (separate
    ``soft_weight_sharing`` calls, the oracle), and the standard error is scipy's over both
    splits' per-point changes pooled (numpy forward passes). In two processes (``jobs=2``,
    the splits' retrainings spread over both) every split's retraining is the same."""
    pairs = [_split_and_net(digits, num_epochs=15, seed=s) for s in (0, 1)]
    splits, nets = [t for t, _ in pairs], [n for _, n in pairs]
    candidates = [{"prior_scale": 0.003}, {"prior_scale": 0.3}]
    common = {"num_steps": 40, "batch_size": 64, "progress": False, "seed": 0}
    found = tune_soft_weight_sharing(nets, splits, candidates, **common)
    two = tune_soft_weight_sharing(nets, splits, candidates, jobs=2, **common)
    pre = [1 - accuracy(n, t.x_test, t.y_test) for t, n in pairs]
    assert pre[0] != pre[1]  # the two splits' pretrained networks differ (what this checks)
    for trial, twin, candidate in zip(found.trials, two.trials, candidates, strict=True):
        single = [soft_weight_sharing(n, t, **common, **candidate) for t, n in pairs]
        errors = [1 - accuracy(r.net, t.x_test, t.y_test) for r, t in zip(single, splits)]
        assert trial.seed_errors_after == pytest.approx(errors, abs=1e-12)
        assert twin.seed_errors_after == pytest.approx(errors, abs=1e-12)
        retrained = [
            1 - accuracy(r.retrained_net, t.x_test, t.y_test) for r, t in zip(single, splits)
        ]
        assert trial.seed_errors_retrained == pytest.approx(retrained, abs=1e-12)
        assert twin.seed_errors_retrained == pytest.approx(retrained, abs=1e-12)
        for kept, r in zip(twin.split_results, single, strict=True):
            for a, b in zip(kept.net.parameters(), r.net.parameters(), strict=True):
                assert torch.equal(a, b)
        assert trial.seed_errors_before == pytest.approx(pre, abs=1e-12)
        assert trial.result is trial.split_results[0] and len(trial.split_results) == 2
        for kept, r in zip(trial.split_results, single, strict=True):  # each split's network
            for a, b in zip(kept.net.parameters(), r.net.parameters(), strict=True):
                assert torch.equal(a, b)
        assert trial.validation_error_before == pytest.approx(sum(pre) / 2, abs=1e-12)
        assert trial.validation_error_after == pytest.approx(sum(errors) / 2, abs=1e-12)
        assert trial.increase == pytest.approx(
            50 * ((errors[0] - pre[0]) + (errors[1] - pre[1])), abs=1e-9
        )
        rates = [r.compression_rate for r in single]
        assert trial.compression_rate == pytest.approx(sum(rates) / 2, rel=1e-12)
        changes = np.concatenate(
            [
                _numpy_errors(r.net, t.x_test.numpy(), t.y_test.numpy())
                - _numpy_errors(n, t.x_test.numpy(), t.y_test.numpy())
                for r, (t, n) in zip(single, pairs)
            ]
        )
        assert trial.increase_se == pytest.approx(100 * scipy.stats.sem(changes), rel=1e-9)
    assert found.num_train == splits[0].num_train
    # each retraining's increase over its own split's pretrained network, in the table
    first = found.trials[0]
    shown = [100 * (e - b) for e, b in zip(first.seed_errors_after, pre)]
    assert ", ".join(f"{d:+.2f}" for d in shown) in found.table()
    assert "Δ per split and seed" in found.table()
    with pytest.raises(ValueError, match="one pretrained network per validation split"):
        tune_soft_weight_sharing(nets[:1], splits, candidates, **common)
    smaller, _ = validation_split(digits, 0.3, seed=0)
    with pytest.raises(ValueError, match="different numbers of images"):
        tune_soft_weight_sharing(nets, [splits[0], smaller], candidates, **common)


def test_tuning_at_a_target_rate_takes_the_least_increase_that_reaches_it(digits):
    """``target_rate``: of the trials (each scored as without it, the same seeded
    retrainings), the least increase among those reaching the rate; a rate none reaches
    leaves the plain rule's choice. A rate below 1× is refused, naming it."""
    tuning, net = _split_and_net(digits, num_epochs=15)
    candidates = [{"prior_scale": 0.3}, {"prior_scale": 3.0}]
    common = {"num_steps": 40, "batch_size": 64, "progress": False, "seeds": [0, 1]}
    found = tune_soft_weight_sharing(net, tuning, candidates, max_error_increase=100.0, **common)
    increases = [t.increase for t in found.trials]
    rates = [t.compression_rate for t in found.trials]
    # the setting this check needs: the plain rule (highest rate) would choose the other one
    assert increases.index(min(increases)) != rates.index(max(rates))
    low = min(rates)
    reached = tune_soft_weight_sharing(
        net, tuning, candidates, max_error_increase=100.0, target_rate=low, **common
    )
    assert reached.target_rate == low and reached.within_margin
    assert [t.increase for t in reached.trials] == increases
    assert reached.chosen.settings == candidates[increases.index(min(increases))]
    beyond = tune_soft_weight_sharing(
        net, tuning, candidates, max_error_increase=100.0, target_rate=1e6, **common
    )
    assert beyond.chosen.settings == max(found.trials, key=lambda t: t.compression_rate).settings
    with pytest.raises(ValueError, match="target_rate"):
        tune_soft_weight_sharing(net, tuning, candidates, target_rate=0.5, **common)


def test_tuning_in_two_processes_equals_one_process(digits):
    """``jobs=2``: every retraining in a worker process; the trials are those of ``jobs=1``
    (the single-process run is the oracle), in the same order."""
    tuning, net = _split_and_net(digits, num_epochs=10)
    candidates = [{"prior_scale": 0.003}, {"prior_scale": 0.3}]
    common = {"num_steps": 30, "batch_size": 64, "progress": False, "seeds": [0, 1]}
    one = tune_soft_weight_sharing(net, tuning, candidates, **common)
    two = tune_soft_weight_sharing(net, tuning, candidates, jobs=2, **common)
    for a, b in zip(one.trials, two.trials, strict=True):
        assert a.settings == b.settings
        assert a.seed_errors_after == b.seed_errors_after and a.seed_rates == b.seed_rates
        assert a.validation_error_retrained == b.validation_error_retrained
        for p, q in zip(a.result.net.parameters(), b.result.net.parameters(), strict=True):
            assert torch.equal(p, q)
    assert one.trials.index(one.chosen) == two.trials.index(two.chosen)
    with pytest.raises(ValueError, match="jobs"):
        tune_soft_weight_sharing(net, tuning, candidates, jobs=0, **common)


def test_candidates_that_differ_only_after_retraining_share_one_retraining(digits):
    """Unit pruning and fine-tuning act after retraining: candidates that differ only there
    are scored on one retraining, in one process or two; each trial equals a separate
    ``soft_weight_sharing`` call with its settings (the oracle: retraining is seeded)."""
    from bayes_sws.compress.pipeline import soft_weight_sharing

    tuning, net = _split_and_net(digits, num_epochs=10)
    candidates = [
        {"prior_scale": 0.03},
        {"prior_scale": 0.3},
        {"prior_scale": 0.03, "prune_units": 0.02, "finetune_epochs": 1},
    ]
    common = {"num_steps": 30, "batch_size": 64, "progress": False, "remove_dead_units": True}
    singles = [soft_weight_sharing(net, tuning, **common, **c) for c in candidates]
    assert singles[2].unit_pruning is not None and singles[2].unit_pruning.num_pruned > 0
    for jobs in (1, 2):
        found = tune_soft_weight_sharing(net, tuning, candidates, jobs=jobs, **common)
        if jobs == 1:
            assert found.trials[2].result.fit is found.trials[0].result.fit
            assert found.trials[1].result.fit is not found.trials[0].result.fit
        for trial, single in zip(found.trials, singles, strict=True):
            error = 1 - accuracy(single.stored_net, tuning.x_test, tuning.y_test)
            assert trial.validation_error_after == pytest.approx(error, abs=1e-12)
            assert trial.compression_rate == pytest.approx(single.compression_rate, rel=1e-12)
    # a recipe that prunes units records the rate of its retraining without the pruning (what
    # a refit is calibrated to): the trial with the same settings and no pruning, else none
    chosen = dataclasses.replace(found, chosen=found.trials[2])
    assert chosen.recipe().settings["prune_units"] == 0.02
    assert chosen.recipe().rate is None  # trial 0 lacks its fine-tuning epoch
    twin = dataclasses.replace(
        found.trials[1], settings={"prior_scale": 0.03, "prune_units": None, "finetune_epochs": 1}
    )
    assert dataclasses.replace(chosen, trials=[*found.trials, twin]).recipe().rate == (
        twin.compression_rate
    )
    assert found.trials[1].compression_rate != found.trials[2].compression_rate


def test_tuning_refuses_regression_and_empty_candidates(digits):
    net = torch.nn.Linear(64, 10)
    regression = dataclasses.replace(digits, num_classes=None)
    with pytest.raises(ValueError, match="classification"):
        tune_soft_weight_sharing(net, regression, [{"prior_scale": 0.1}])
    with pytest.raises(ValueError, match="at least one candidate"):
        tune_soft_weight_sharing(net, digits, [])


def test_validated_benchmark_refuses_a_split_twice(monkeypatch, capsys):
    """A split twice would count its retrainings twice: refused before anything runs."""
    repo = __import__("pathlib").Path(__file__).resolve().parents[2]
    monkeypatch.syspath_prepend(str(repo / "benchmarks"))
    import compression_validated as validated

    monkeypatch.setattr(validated, "run_case", lambda *a, **k: pytest.fail("ran a case"))
    with pytest.raises(SystemExit):
        validated.main(["--cases", "digits/lenet-300-100", "--splits", "1", "1", "--tune-only"])
    assert "distinct" in capsys.readouterr().err


def test_validated_benchmark_reads_every_splits_network_on_test(monkeypatch, tmp_path):
    """``--splits 0 1`` without ``--tune-only``: the chosen setting's network of each split
    on the test set (its pretrained network's error there by a numpy forward pass), their
    mean by hand, and Deep Compression once, matched to the first split's network."""
    import json

    repo = __import__("pathlib").Path(__file__).resolve().parents[2]
    monkeypatch.syspath_prepend(str(repo / "benchmarks"))
    import compression as bench
    import compression_validated as validated

    name = "digits/lenet-300-100"
    case = bench.CASES[name]
    monkeypatch.setattr(bench, "CASES", {**bench.CASES, name: dataclasses.replace(
        case, pretrain={**case.pretrain, "num_epochs": 2})})  # fmt: skip
    out = tmp_path / "rows.json"
    argv = ["--cases", name, "--prior-scales", "0.03", "--epochs", "2", "--splits", "0", "1"]
    argv += ["--cache", str(tmp_path), "--json", str(out), "--no-progress"]
    assert validated.main(argv) == 0
    result = json.loads(out.read_text())[name]
    rows = result["rows"]
    label = "sws λ=0.03 (chosen on validation)"
    assert [r["method"] for r in rows[:3]] == [
        f"{label}, split 0",
        f"{label}, split 1",
        f"{label}, mean over splits 0, 1",
    ]
    options = {"validation": 0.1, "cache": tmp_path, "progress": False, "epochs": 2}
    _, _, final, net = validated.held_out_pretrained(name, {**options, "seed": 1})
    errors = _numpy_errors(net, final.x_test.numpy(), final.y_test.numpy())
    assert rows[1]["pretrained_accuracy"] == pytest.approx(1 - errors.mean(), abs=1e-12)
    # Deep Compression on validation runs on split 0's network: its error there is the baseline
    _, tuning, _, first = validated.held_out_pretrained(name, {**options, "seed": 0})
    own = _numpy_errors(first, tuning.x_test.numpy(), tuning.y_test.numpy()).mean()
    for trial in result["dc_trials"]:
        assert trial["validation_error_before"] == pytest.approx(own, abs=1e-12)
    text = validated.section({name: result}, "cmd", {**options, "splits": [0, 1], "threads": 1,
                             "validation": 0.1}, "today")  # fmt: skip
    assert f"Deep Compression on validation split 0 (split 0's network), {name}:" in text
    assert rows[0]["pretrained_accuracy"] != rows[1]["pretrained_accuracy"]  # two networks
    for key in ("pretrained_accuracy", "accuracy_after", "compression_rate"):
        assert rows[2][key] == pytest.approx((rows[0][key] + rows[1][key]) / 2, rel=1e-12)
    dc = [r["method"] for r in rows[3:]]
    assert dc == [
        "dc-han",
        "dc-matched to sws λ=0.03",
        "dc-matched to sws λ=0.03, equal epochs",
    ]


def test_validated_benchmark_section_marks_the_choice_and_its_margins(monkeypatch):
    repo = __import__("pathlib").Path(__file__).resolve().parents[2]
    monkeypatch.syspath_prepend(str(repo / "benchmarks"))
    import compression_validated as validated

    trials = [
        {
            "prior_scale": 0.1,
            "validation_error_before": 0.1,
            "validation_error_after": 0.102,
            "increase_se": 0.125,
            "compression_rate": 50.0,
            "chosen": True,
        },
        {
            "prior_scale": 0.3,
            "validation_error_before": 0.1,
            "validation_error_after": 0.112,
            "compression_rate": 90.0,
            "chosen": False,
        },
    ]
    row = {
        "case": "c",
        "method": "sws λ=0.1 (chosen on validation)",
        "pretrained_accuracy": 0.9,
        "accuracy_after": 0.895,
        "compression_rate": 50.0,
        "compression_rate_all_units": 40.0,
        "compression_rate_rice": 65.0,
    }
    results = {"c": {"rows": [row], "trials": trials, "within_margin": True, "wall": 60.0}}
    text = validated.section(results, "cmd", {"validation": 0.1, "seed": 0, "threads": 1}, "now")
    assert text.startswith(validated.SECTION)
    assert "| 0.1 | 10.00 → 10.20 | +0.20 | 0.12 | 50.0 | **chosen** |" in text  # by hand
    assert "| 0.3 | 10.00 → 11.20 | +1.20 | n/a | 90.0 |  |" in text  # no standard error
    assert "| 10.00 → 10.50 | +0.50 | **50.0** | 40.0 | 65.0 |" in text
    assert "No λ stayed within" not in text
    assert "Settings chosen as the highest compression rate among those whose validation " in text
    # the rule as run, in words: one standard error, the least increase at a target rate
    options = {"validation": 0.1, "seed": 0, "threads": 1, "standard_errors": 1.0}
    text = validated.section(results, "cmd", {**options, "target_rate": 80.0}, "now")
    assert (
        "Settings chosen as the least increase among those whose validation increase plus 1 "
        "standard error is within 0.5 points of the pretrained validation error and whose "
        "mean rate reaches 80×" in text
    )
    with pytest.raises(SystemExit):
        validated.main(["--target-rate", "0.5", "--tune-only"])


def test_quantisation_loss_benchmark_scores_what_the_pipeline_does(monkeypatch, tmp_path):
    # the script quantises one retraining several ways; its "as set" row must be what
    # soft_weight_sharing gives in one call with the same settings on the same split
    # (oracle: that call, scored here on the validation split)
    repo = __import__("pathlib").Path(__file__).resolve().parents[2]
    monkeypatch.syspath_prepend(str(repo / "benchmarks"))
    import compression_validated as validated
    import quantisation_loss as script

    from bayes_sws.compress.pipeline import soft_weight_sharing

    options = {
        "case": "digits/lenet-300-100",
        "prior_scale": 0.03,
        "validation": 0.1,
        "seed": 0,
        "retrain_seed": 0,
        "finetune_epochs": [1],
        "finetune_lrs": [1e-4],
        "threads": 1,
        "cache": tmp_path,
        "progress": False,
        "overrides": {"sws": {"num_epochs": 2}, "dc": {}},
    }
    rows = script.run(options)
    case, tuning, _, net = validated.held_out_pretrained(options["case"], options)
    once = soft_weight_sharing(
        net, tuning, progress=False, **{**validated._settings(case), "prior_scale": 0.03, "seed": 0}
    )
    pretrained = 1.0 - once.test_accuracy_pretrained
    (as_set,) = [r for r in rows if r["variant"] == "as set"]
    assert as_set["compression_rate"] == pytest.approx(once.compression_rate, rel=1e-12)
    assert as_set["delta_final"] == pytest.approx(100 * (1 - once.test_accuracy_after - pretrained))
    labels = [r["variant"] for r in rows]
    names = once.config["param_names"]
    assert labels[3 : 3 + len(names)] == [f"{n} unquantised" for n in names]
    assert labels[-1] == "codebook fine-tuning 1 epoch(s) at lr 0.0001"


def test_choosing_at_a_target_rate_by_hand():
    """``choose_within_margin(..., target_rate)`` on trials given as (increase, rate): the
    least increase among those within the margin that reach the rate (ties: the higher
    rate); none reaching it, the highest rate within; none within, the least increase."""
    trials = [(0.45, 120.0), (0.10, 85.0), (0.10, 90.0), (-0.20, 70.0), (0.70, 200.0)]

    def choose(margin, target=None):
        return choose_within_margin(trials, lambda t: t[0], lambda t: t[1], margin, target)

    assert choose(0.5) == ((0.45, 120.0), True)  # the plain rule: highest rate within
    assert choose(0.5, 80.0) == ((0.10, 90.0), True)  # least increase at ≥ 80×, tie → rate
    assert choose(0.5, 100.0) == ((0.45, 120.0), True)  # only one within reaches 100×
    assert choose(0.5, 150.0) == ((0.45, 120.0), True)  # 200× is over the margin: plain rule
    assert choose(0.05, 80.0) == ((-0.20, 70.0), True)  # none within reaches it: plain rule
    assert choose(-0.5, 80.0) == ((-0.20, 70.0), False)  # none within: the least increase
