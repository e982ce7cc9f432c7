"""Health checks speak up on useless results and stay quiet on healthy ones.

Oracles: synthetic loss curves whose trend is known by construction, hand counts
of predicted classes, and the issue's silent cases reproduced end to end.
"""

import json
import re
import warnings

import numpy as np
import pytest

import bayes_sws as sws
from bayes_sws import health
from bayes_sws.runs import cli
from bayes_sws.runs import commands as runs


def _curve(kind, n=1000, seed=0):
    rng = np.random.default_rng(seed)
    steps = np.arange(n)
    base = {
        "falling line": 2000.0 - 1.0 * steps,  # still falling 10 % over the last 200 steps
        "plateau": 1000.0 + 0.0 * steps,
        "converged decay": 1000.0 + 4000.0 * np.exp(-steps / 50.0),
    }[kind]
    return base + rng.normal(scale=20.0, size=n)


@pytest.mark.parametrize(
    ("kind", "flagged"), [("falling line", True), ("plateau", False), ("converged decay", False)]
)
def test_convergence_trend_test(kind, flagged):
    findings = health.check_converged(_curve(kind), warn=False)
    assert bool(findings) is flagged
    if flagged:
        assert "has not converged" in findings[0].message


@pytest.mark.parametrize("level", [0.0, -1000.0])  # -1000: the tail near zero
def test_convergence_message_states_the_fall_not_a_share_of_the_level(level):
    # a straight fall of 1 per step from 2000 + level: over the last 200 of 1000 steps it fell
    # 199, about 900 below its first 200 steps' median (1900) over the whole run
    (finding,) = health.check_converged(_curve("falling line") + level, warn=False)
    fell, share = re.search(
        r"fell (\S+) over the last 200 steps \((\d+) %", finding.message
    ).groups()
    assert float(fell) == pytest.approx(199, rel=0.05)
    assert int(share) == pytest.approx(100 * 199 / 900, abs=2)
    assert "in all" not in finding.message


def test_short_runs_are_not_judged():
    assert health.check_converged(np.linspace(100, 1, 79), warn=False) == []
    assert health.check_converged(np.linspace(100, 1, 80), warn=False)


def test_majority_class_against_a_hand_count():
    labels = np.array([3] * 99 + [1])
    (finding,) = health.check_prediction(labels, warn=False)
    assert "class 3 for 99.0 %" in finding.message
    assert health.check_prediction(np.array([3] * 98 + [1, 2]), warn=False) == []


def test_collapsed_means_and_healthy_means():
    weights = np.random.default_rng(0).normal(scale=0.1, size=1000)
    assert health.check_mixture([0.0, 1e-4, -2e-4], weights, warn=False)
    assert health.check_mixture([0.0, 1e-4, 0.05], weights, warn=False) == []


def test_compression_thresholds_are_stated_and_configurable():
    before, after = {"accuracy": 0.90}, {"accuracy": 0.84}
    (finding,) = health.check_compression(before, after, warn=False)
    assert "lost 6.0 accuracy points" in finding.message and "more than 5" in finding.message
    assert health.check_compression(before, after, accuracy_drop=0.1, warn=False) == []
    assert health.check_compression({"rmse": 1.0}, {"rmse": 1.3}, warn=False)
    assert health.check_compression({"rmse": 1.0}, {"rmse": 1.2}, warn=False) == []


def test_nuts_divergences_tree_depth_rhat_and_ess():
    stats = {
        "diverging": np.array([[False, True], [False, False]]),
        "tree_depth": np.full((2, 2), 10),
    }
    findings = health.check_nuts(
        stats, max_tree_depth=10, r_hat={"mu": 1.97}, ess_bulk={"mu": 12.0}, warn=False
    )
    text = " | ".join(f.message for f in findings)
    assert "1 of 4 NUTS transitions diverged" in text
    assert "100 % of NUTS transitions hit the maximum tree depth 10" in text
    assert "worst mu: 1.97" in text and "lowest mu: 12" in text
    calm = {"diverging": np.zeros((2, 2), bool), "tree_depth": np.full((2, 2), 3)}
    assert health.check_nuts(calm, max_tree_depth=10, r_hat={"mu": 1.0}, warn=False) == []


def test_findings_are_warnings_users_can_filter():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        health.check_prediction(np.zeros(10))
    assert [w.category for w in caught] == [sws.HealthWarning]
    with warnings.catch_warnings():
        warnings.simplefilter("error", sws.HealthWarning)
        with pytest.raises(sws.HealthWarning):
            health.check_prediction(np.zeros(10))


def test_a_useless_compressed_network_is_flagged_at_the_cli(tmp_path, capsys):
    # 60 steps from random weights: the compressed net falls to one class (issue 17's
    # breast-cancer case: "352.7x ... 96.49 % -> 63.16 %" reported as a success)
    run = tmp_path / "run"
    config = {"hidden": [8], "num_components": 3, "pretrain_epochs": 0, "num_steps": 60}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sws.HealthWarning)
        runs.fit_run(config, run)
    assert cli.main(["compress", str(run), "--no-plots"]) == cli.EXIT_OK
    err = capsys.readouterr().err
    summary = json.loads((run / "compression.json").read_text())
    drop = summary["test_accuracy_before"] - summary["test_accuracy_after"]
    checks = {f["check"] for f in summary["health"]}
    assert ("compression" in checks) is (drop > health.COMPRESSION_ACCURACY_DROP)
    warned = [line for line in err.splitlines() if line.startswith("bayes-sws: warning: ")]
    assert len(warned) == len(summary["health"]) >= 1


def test_the_message_names_the_slope():
    # a straight line of slope -0.5 per step, no noise: the least-squares slope is -0.5
    (finding,) = health.check_converged(1000.0 - 0.5 * np.arange(400), warn=False)
    assert "slope -0.5 per step; it fell 39.5 over the last 80 steps" in finding.message
    assert "run more steps" in finding.message


def _regression(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3))
    return x, x @ np.array([1.0, -0.5, 0.3]) + 0.1 * rng.standard_normal(n)


def _linear_model():
    import torch

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1, bias=False).double()
    prior = sws.MixturePrior(1, zero_component=True, fixed_precision=2.0)
    return sws.SWSModel(net, prior, likelihood=sws.Gaussian(precision=100.0))


def test_fit_warns_once_when_stopped_early_and_not_when_converged():
    x, y = _regression()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sws.fit(_linear_model(), x, y, guide="normal", num_steps=200, lr=1e-3)
    (warning,) = [w for w in caught if issubclass(w.category, sws.HealthWarning)]
    assert "has not converged" in str(warning.message) and "slope -" in str(warning.message)
    assert "\n" not in str(warning.message)
    assert warning.filename == __file__  # points at the caller of fit
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sws.fit(_linear_model(), x, y, guide="map", num_steps=400, lr=0.05)
        # stopped by the callback: not judged, whatever the trend
        sws.fit(
            _linear_model(),
            x,
            y,
            guide="normal",
            num_steps=300,
            lr=1e-3,
            callback=lambda step, loss: step >= 199,
        )
    assert not [w for w in caught if issubclass(w.category, sws.HealthWarning)]


def test_only_the_steps_after_the_callback_last_changed_the_objective_are_judged():
    # λ falls from 50 to 0 over the first 900 of 1,000 MAP steps: the loss falls with
    # it (the whole run's last 200 steps fail the trend test), but that is the objective
    # changing, not SVI unconverged; the 100 steps after its last change are flat
    x, y = _regression()
    model = _linear_model()

    def schedule(step, loss):
        model.prior_scale = 50.0 * max(0.0, 1.0 - (step + 1) / 900)

    model.prior_scale = 50.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = sws.fit(model, x, y, guide="map", num_steps=1000, lr=0.05, callback=schedule)
    assert health.check_converged(result.losses, warn=False)  # the whole run: "falling"
    assert result.config["objective_changed_at"] == 900  # λ last changed after step 899
    assert not [w for w in caught if issubclass(w.category, sws.HealthWarning)]
    assert result.convergence_findings() == []
    # a hyperprior schedule (the prior's precision, as the anneal of a run directory),
    # resumed from a checkpoint taken after its last change: the step travels with it
    states = []
    model = _linear_model()

    def anneal(step, loss=None):
        model.prior.fixed_precision = 2.0 + 200.0 * max(0.0, 1.0 - (step + 1) / 900)

    anneal(-1)
    sws.fit(
        model, x, y, guide="map", num_steps=950, lr=0.05, callback=anneal,
        checkpoint=states.append, checkpoint_every=950,
    )  # fmt: skip
    assert states[-1].step == 950
    anneal(states[-1].step - 1)  # the prior in force at the resumed step, as runs do
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = sws.fit(
            model, x, y, guide="map", num_steps=1000, lr=0.05, callback=anneal,
            initial_state=states[-1],
        )  # fmt: skip
    assert resumed.config["objective_changed_at"] == 900
    assert health.check_converged(resumed.losses, warn=False)  # the whole run: "falling"
    assert not [w for w in caught if issubclass(w.category, sws.HealthWarning)]
    # a callback that sets an unchanged λ changes nothing; a run still falling after the
    # schedule's end is still flagged
    model = _linear_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = sws.fit(
            model,
            x,
            y,
            guide="normal",
            num_steps=400,
            lr=1e-3,
            callback=lambda step, loss: setattr(model, "prior_scale", model.prior_scale),
        )
    assert result.config["objective_changed_at"] == 0
    (warning,) = [w for w in caught if issubclass(w.category, sws.HealthWarning)]
    assert "has not converged" in str(warning.message)


def test_the_cli_says_it_once_and_records_it(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["fit", "--guide", "normal", "--steps", "120", "--pretrain-epochs", "0"]
    assert cli.main([*args, "--out", str(run)]) == cli.EXIT_OK
    err = capsys.readouterr().err
    metrics = json.loads((run / "metrics.json").read_text())
    recorded = [f["message"] for f in metrics["health"] if f["check"] == "converged"]
    warned = [line for line in err.splitlines() if "has not converged" in line]
    assert len(recorded) == 1 and len(warned) == 1
    assert warned[0] == f"bayes-sws: warning: {recorded[0]}"


def test_chain_convergence_knows_agreeing_and_disagreeing_chains():
    rng = np.random.default_rng(0)
    iid = rng.standard_normal((2, 1000))
    apart = np.stack([rng.standard_normal(1000), 3.0 + rng.standard_normal(1000)])
    r_hat, ess = health.chain_convergence({"iid": iid, "apart": apart, "short": iid[:, :3]})
    assert set(r_hat) == set(ess) == {"iid", "apart"}  # 3 draws a chain: not defined
    # known answers: independent draws of one distribution give R-hat ~ 1 and ESS ~ the count;
    # chains 3 standard deviations apart give R-hat ~ sqrt(1 + 3^2 / 4 / 1) ~ 1.8 (BDA3 11.4)
    assert r_hat["iid"] < 1.01 and 0.8 * 2000 < ess["iid"] < 1.2 * 2000
    assert 1.5 < r_hat["apart"] < 2.2
    # AR(1) chains, x_t = 0.9 x_{t-1} + e_t: ESS = S (1 - 0.9) / (1 + 0.9) in closed form
    noise = rng.standard_normal((4, 2000))
    ar = np.zeros_like(noise)
    for t in range(1, 2000):
        ar[:, t] = 0.9 * ar[:, t - 1] + noise[:, t]
    _, ar_ess = health.chain_convergence({"ar": ar})
    assert 0.75 * 8000 * 0.1 / 1.9 < ar_ess["ar"] < 1.3 * 8000 * 0.1 / 1.9
    # and an independent implementation (ArviZ's bulk ESS and bulk split R-hat) agrees
    import arviz as az

    for name, draws in (("iid", iid), ("apart", apart)):
        assert ess[name] == pytest.approx(float(az.ess(draws, method="bulk")), rel=0.05)
    assert r_hat["apart"] == pytest.approx(float(az.rhat(apart, method="rank")), rel=1e-6)
    findings = health.check_nuts(
        {"diverging": np.zeros((2, 1000), bool), "tree_depth": np.ones((2, 1000))},
        max_tree_depth=10,
        r_hat=r_hat,
        ess_bulk=ess,
        min_ess=200,
        warn=False,
    )
    (finding,) = [f for f in findings if "R-hat" in f.message]
    assert "R-hat of 1 quantities" in finding.message and "apart" in finding.message


def test_sample_nuts_says_when_its_chains_are_too_short():
    from bayes_sws.infer.mcmc import sample_nuts

    x, y = _regression(n=32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sample_nuts(_linear_model(), x, y, num_samples=8, warmup_steps=8, num_chains=2, seed=0)
    messages = [str(w.message) for w in caught if issubclass(w.category, sws.HealthWarning)]
    # 16 draws cannot carry a bulk ESS of 100 per chain: the energy's ESS is below 200
    assert any("bulk ESS" in m and "below 200" in m for m in messages), messages
