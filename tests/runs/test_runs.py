"""Run directories: checkpoints are self-checking, results reload identically, resume is exact.

The oracle for every resume test is an uninterrupted run with the same seed:
parameters must agree bit for bit (``torch.equal``), not approximately.
"""

import copy
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import bayes_sws as sws
from bayes_sws.infer.fastmap import map_loss
from bayes_sws.infer.svi import FitState
from bayes_sws.runs import commands as runs
from bayes_sws.zoo.data import load_dataset
from bayes_sws.zoo.nets import mlp
from bayes_sws.zoo.training import accuracy, train

# A run small enough for the fast tier: ~1 s of SVI on the bundled digits.
SMALL = {
    "hidden": [16],
    "components": 4,
    "pretrain_epochs": 2,
    "steps": 120,
    "batch_size": 64,
    "checkpoint_every": 2,
    "keep_checkpoints": 3,
}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run every resume is compared with."""
    out = tmp_path_factory.mktemp("reference") / "run"
    runs.fit_run(SMALL, out)
    return out


@pytest.fixture(scope="module")
def pretrained(digits):
    torch.manual_seed(0)
    net = mlp([64, 16, 10])
    train(net, digits.x_train, digits.y_train, num_epochs=3, seed=0)
    return net


def _model(net, **prior):
    return sws.SWSModel(copy.deepcopy(net), sws.MixturePrior(4, **prior), prior_scale=0.1)


def _fit(digits, pretrained, **kwargs):
    """``fit`` of a fresh copy of the pretrained digits MLP under a 4-component prior."""
    return sws.fit(_model(pretrained), digits.x_train, digits.y_train, **kwargs)


def _assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def _result_payload(run_dir):
    return runs.read_checkpoint(Path(run_dir) / runs.RESULT_FILE, kind="result")


def _assert_same_run(a_dir, b_dir):
    a, b = _result_payload(a_dir), _result_payload(b_dir)
    _assert_same_state(a["guide_state"], b["guide_state"])
    _assert_same_state(a["network_state"], b["network_state"])
    assert torch.equal(a["losses"], b["losses"])


# ---------------------------------------------------------------------------- the container
def test_checkpoint_container_round_trip(tmp_path):
    payload = {
        "w": torch.randn(3, 4, dtype=torch.float64),
        "step": 7,
        "names": ["a", "b"],
        "nested": {"x": torch.arange(5)},
    }
    path = runs.write_checkpoint(tmp_path / "a.ckpt", payload, kind="checkpoint")
    back = runs.read_checkpoint(path, kind="checkpoint")
    assert torch.equal(back["w"], payload["w"]) and back["step"] == 7
    assert back["names"] == ["a", "b"] and torch.equal(back["nested"]["x"], torch.arange(5))
    with pytest.raises(runs.CheckpointError, match="expected a 'result'"):
        runs.read_checkpoint(path, kind="result")
    # no temporary file is left next to it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt"]


@pytest.mark.parametrize("cut", [0, 5, 30, 60, -200, -1])
def test_truncated_checkpoint_is_reported(tmp_path, cut):
    path = runs.write_checkpoint(tmp_path / "a.ckpt", {"w": torch.randn(100)}, kind="checkpoint")
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(runs.CheckpointError, match="a.ckpt"):
        runs.read_checkpoint(path)


def test_corrupted_checkpoint_is_reported(tmp_path):
    path = runs.write_checkpoint(tmp_path / "a.ckpt", {"w": torch.randn(100)}, kind="checkpoint")
    data = bytearray(path.read_bytes())
    data[-50] ^= 0x01  # one flipped bit inside the tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(runs.CheckpointError, match="checksum"):
        runs.read_checkpoint(path)


def test_newer_format_version_is_refused(tmp_path):
    path = runs.write_checkpoint(tmp_path / "a.ckpt", {"w": 1}, kind="checkpoint")
    data = path.read_bytes().replace(b'"format_version": 1', b'"format_version": 99', 1)
    path.write_bytes(data)
    with pytest.raises(runs.CheckpointError, match="format version 99"):
        runs.read_checkpoint(path)


def test_missing_and_foreign_files_are_reported(tmp_path):
    with pytest.raises(runs.CheckpointError, match="does not exist"):
        runs.read_checkpoint(tmp_path / "nope.ckpt")
    foreign = tmp_path / "model.pt"
    torch.save({"w": torch.ones(2)}, foreign)
    with pytest.raises(runs.CheckpointError, match="not a bayes-sws checkpoint"):
        runs.read_checkpoint(foreign)


# ---------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("guide", ["map", "normal", "lowrank", "mixed"])
def test_saved_result_loads_identically(tmp_path, digits, pretrained, guide):
    model = _model(pretrained)
    result = sws.fit(
        model, digits.x_train, digits.y_train, guide=guide, num_steps=15, batch_size=64, seed=2
    )
    spec = {"name": "mlp", "input_shape": [64], "num_classes": 10, "hidden": [16]}
    runs.save_result(result, tmp_path, network_spec=spec)
    loaded = runs.load_result(tmp_path)
    assert loaded.guide_name == guide
    _assert_same_state(result.median(), loaded.median())
    for a, b in zip(result.mixture(), loaded.mixture()):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(result.losses, loaded.losses)
    assert loaded.config == result.config
    # predictions: the MAP network, and posterior draws under the same seed
    x = digits.x_test[:50]
    assert torch.equal(result.map_network()(x), loaded.map_network()(x))
    torch.manual_seed(5)
    expected = result.predict(x, num_samples=4)
    torch.manual_seed(5)
    assert torch.equal(expected, loaded.predict(x, num_samples=4))
    summary = json.loads((tmp_path / runs.RESULT_SUMMARY_FILE).read_text())
    assert summary["guide"] == guide and len(summary["mixture"]["pi"]) == 4


def test_saved_result_keeps_its_multipliers_of_lambda(tmp_path, digits, pretrained):
    """A model whose first layer's prior is weighed 3×: saved and loaded, its model has the
    same multipliers, so its loss at the saved values is the fitted model's (a result of a
    model without them: the loss differs, which is what the record is for)."""
    net = copy.deepcopy(pretrained)
    model = sws.SWSModel(net, sws.MixturePrior(4), prior_scale=0.1, tensor_scales={"0.*": 3.0})
    result = sws.fit(model, digits.x_train, digits.y_train, guide="map", num_steps=5, seed=2)
    spec = {"name": "mlp", "input_shape": [64], "num_classes": 10, "hidden": [16]}
    runs.save_result(result, tmp_path, network_spec=spec)
    loaded = runs.load_result(tmp_path)
    assert loaded.model.tensor_scales == {"0.weight": 3.0}
    x, y = digits.x_train, digits.y_train
    with sws.infer.local_params():
        losses = [float(map_loss(r.model, r.guide, x, y)) for r in (result, loaded)]
        plain = sws.SWSModel(copy.deepcopy(pretrained), sws.MixturePrior(4), prior_scale=0.1)
        unscaled = float(map_loss(plain, loaded.guide, x, y))
    assert losses[0] == losses[1] and unscaled != losses[0]


def test_lowrank_rank_is_fitted_saved_and_rebuilt(tmp_path, digits, pretrained):
    """``guide_rank`` gives the factor that many columns, one row per latent dimension (hand
    count: the weights under the prior and the mixture's sites, the simplex ``sws.mixing``
    one entry fewer unconstrained), and survives a save."""
    model = _model(pretrained)
    result = sws.fit(
        model, digits.x_train, digits.y_train, guide="lowrank", guide_rank=3, num_steps=4, seed=1
    )
    with sws.infer.local_params():
        factor = result.guide.cov_factor
    latent = sum(p.numel() for p in model.parameters_with_prior().values())
    latent += sum(v.numel() for k, v in result.guide.median().items() if k.startswith("sws."))
    latent -= 1  # sws.mixing: K weights on the simplex, K - 1 free
    assert factor.shape == (latent, 3) and result.config["guide_rank"] == 3
    spec = {"name": "mlp", "input_shape": [64], "num_classes": 10, "hidden": [16]}
    runs.save_result(result, tmp_path, network_spec=spec)
    loaded = runs.load_result(tmp_path)
    with sws.infer.local_params():
        assert torch.equal(loaded.guide.cov_factor, factor)


def test_laplace_result_loads_identically(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(300, 2)
    y = (x[:, 0] - x[:, 1] > 0).long()
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    prior = sws.MixturePrior(1, zero_component=False, precision_rate=1.0)
    model = sws.SWSModel(net, prior, likelihood="categorical", prior_scale=1.0)
    result = sws.fit(model, x, y, guide="laplace", optimizer="lbfgs", num_steps=200, lr=0.5)
    runs.save_result(result, tmp_path)  # no spec: the caller supplies the architecture
    with pytest.raises(ValueError, match="network="):
        runs.load_result(tmp_path)
    loaded = runs.load_result(tmp_path, network=torch.nn.Sequential(torch.nn.Linear(2, 2)))
    _assert_same_state(result.median(), loaded.median())
    torch.manual_seed(1)
    a = result.sample_posterior(5)
    torch.manual_seed(1)
    _assert_same_state(a, loaded.sample_posterior(5))


def test_loading_does_not_disturb_the_global_rng(tmp_path, digits, pretrained):
    result = _fit(
        digits,
        pretrained,
        guide="lowrank",
        num_steps=3,
        batch_size=64,
    )
    runs.save_result(
        result,
        tmp_path,
        network_spec={"name": "mlp", "input_shape": [64], "num_classes": 10, "hidden": [16]},
    )
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    runs.load_result(tmp_path)
    assert torch.equal(torch.rand(3), expected)


def test_corrupted_result_is_never_loaded(tmp_path, digits, pretrained):
    result = _fit(digits, pretrained, num_steps=3)
    path = runs.save_result(
        result,
        tmp_path,
        network_spec={"name": "mlp", "input_shape": [64], "num_classes": 10, "hidden": [16]},
    )
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(runs.CheckpointError, match="truncated"):
        runs.load_result(tmp_path)


# ---------------------------------------------------------------------------- fit(initial_state=)
@pytest.mark.parametrize(
    "guide, optimizer, batch_size",
    [("map", "adam", 64), ("normal", "adam", 64), ("lowrank", "adam", 100), ("map", "lbfgs", None)],
)
def test_fit_resumed_from_any_checkpoint_is_bit_identical(
    tmp_path, digits, pretrained, guide, optimizer, batch_size
):
    kwargs = {
        "guide": guide,
        "optimizer": optimizer,
        "num_steps": 24,
        "batch_size": batch_size,
        "seed": 4,
        "lr": 1e-3 if optimizer == "adam" else 0.1,
    }
    states = []
    model = _model(pretrained)
    full = sws.fit(
        model,
        digits.x_train,
        digits.y_train,
        checkpoint=states.append,
        checkpoint_every=5,
        **kwargs,
    )
    assert [s.step for s in states] == [5, 10, 15, 20, 24]  # periodic and at the end
    with sws.infer.local_params():
        expected = full.guide.state_dict()
    for state in states[1:3]:
        torch.manual_seed(999)  # whatever the RNG did meanwhile, the state restores it
        # the state survives serialisation in a checkpoint file
        path = runs.write_checkpoint(
            tmp_path / "s.ckpt", {"state": state.to_dict()}, kind="checkpoint"
        )
        state = FitState.from_dict(runs.read_checkpoint(path)["state"])
        resumed_model = _model(pretrained)
        resumed = sws.fit(
            resumed_model, digits.x_train, digits.y_train, initial_state=state, **kwargs
        )
        with sws.infer.local_params():
            _assert_same_state(expected, resumed.guide.state_dict())
        _assert_same_state(
            dict(model.net.named_parameters()), dict(resumed_model.net.named_parameters())
        )
        np.testing.assert_array_equal(full.losses, resumed.losses)


def test_stopping_early_checkpoints_the_last_step(digits, pretrained):
    states = []
    result = _fit(
        digits,
        pretrained,
        num_steps=50,
        batch_size=64,
        checkpoint=states.append,
        checkpoint_every=20,
        callback=lambda step, loss: step == 26,
    )
    assert len(result.losses) == 27
    assert [s.step for s in states] == [20, 27]
    np.testing.assert_array_equal(states[-1].losses, result.losses)


def test_initial_state_from_other_settings_is_refused(digits, pretrained):
    states = []
    _fit(
        digits,
        pretrained,
        num_steps=4,
        batch_size=64,
        checkpoint=states.append,
    )
    with pytest.raises(ValueError, match="lr=0.001 in the checkpoint but 0.01 now"):
        _fit(
            digits,
            pretrained,
            num_steps=4,
            batch_size=64,
            lr=1e-2,
            initial_state=states[-1],
        )
    with pytest.raises(ValueError, match="at most num_steps=3"):
        _fit(
            digits,
            pretrained,
            num_steps=3,
            batch_size=64,
            initial_state=states[-1],
        )
    with pytest.raises(TypeError, match="FitState"):
        _fit(digits, pretrained, num_steps=3, initial_state=[1])


def test_a_non_finite_state_never_replaces_the_last_good_checkpoint(tmp_path, digits, pretrained):
    states = []
    _fit(
        digits,
        pretrained,
        num_steps=4,
        batch_size=64,
        checkpoint=states.append,
        checkpoint_every=2,
    )
    write = runs._checkpoint_writer(tmp_path, keep=2)
    write(states[0])
    bad = copy.deepcopy(states[1])
    name = next(iter(bad.guide_state))
    bad.guide_state[name] = bad.guide_state[name].clone().fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=f"{name}.*not finite after step 4.*step 2"):
        write(bad)
    assert [step for step, _ in runs.checkpoint_paths(tmp_path)] == [2]
    state, _, messages = runs.latest_checkpoint(tmp_path)
    assert state.step == 2 and not messages


# ---------------------------------------------------------------------------- configuration
def test_config_validation_names_key_and_value():
    cases = [
        ({"lr": -1.0}, "lr must be > 0, got -1.0"),
        ({"components": 0}, "components must be >= 1, got 0"),
        ({"components": 2.5}, "components must be an integer, got 2.5"),
        ({"prior_scale": "big"}, "prior_scale must be a number, got 'big'"),
        ({"guide": "exact"}, "guide must be one of map, normal, lowrank, laplace, mixed"),
        ({"pi_zero": 1.5}, "pi_zero must lie strictly between 0 and 1, got 1.5"),
        ({"zero_component": "yes"}, "zero_component must be true or false, got 'yes'"),
        ({"lerning_rate": 1}, "unknown setting 'lerning_rate'"),
        ({"priorscale": 1}, "did you mean 'prior_scale'"),
        ({"steps": 10, "epochs": 2}, "either steps"),
        ({"hidden": [10], "network": "lenet-5"}, "hidden sizes apply to network 'mlp' only"),
        ({"precision_prior": [0.5, 1.0]}, "needs hyperprior concentrations >= 1"),
        ({"optimizer": "lbfgs", "guide": "normal"}, "needs guide 'map' or 'laplace'"),
        ({"guide_rank": 4}, "guide_rank=4 sets the rank of guide='lowrank' only"),
        ({"guide": "lowrank", "guide_rank": 0}, "guide_rank must be >= 1, got 0"),
        ({"pi_zero_prior": [1.0]}, "pi_zero_prior must be two numbers"),
    ]
    for values, message in cases:
        with pytest.raises(runs.RunError, match=message.replace("(", r"\(").replace(")", r"\)")):
            runs.RunConfig.from_dict(values)


def test_toml_file_values_are_overridden_by_flags(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'data = "digits"\nprior-scale = 0.5\nhidden = [32, 16]\nsteps = 40\nguide = "normal"\n'
    )
    config = runs.resolve_config(
        runs.load_config_file(path), {"prior_scale": 0.25, "epochs": 2}, file_name=str(path)
    )
    assert config.prior_scale == 0.25 and config.hidden == (32, 16) and config.guide == "normal"
    assert (
        config.num_steps is None and config.num_epochs == 2
    )  # a flag's epochs replaces the file's steps
    assert config.total_steps(1437) == 2 * (1437 // 128)  # a run's mini-batch of 128
    # the resolved config round-trips through config.json
    assert runs.RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    path.write_text("lr = 'fast'\n")
    with pytest.raises(runs.RunError, match=f"{path}: lr must be a number, got 'fast'"):
        runs.resolve_config(runs.load_config_file(path), {}, file_name=str(path))
    path.write_text("lr = \n")
    with pytest.raises(runs.RunError, match="not valid TOML"):
        runs.load_config_file(path)
    with pytest.raises(runs.RunError, match="does not exist"):
        runs.load_config_file(tmp_path / "missing.toml")


# ---------------------------------------------------------------------------- run directories
def test_fit_run_writes_the_run_directory(reference, digits):
    out = reference
    assert runs.resume_run(out).status == "already complete"
    for name in (
        "config.json",
        "initial.ckpt",
        "result.ckpt",
        "result.json",
        "metrics.json",
        "losses.csv",
    ):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 120 and set(metrics["versions"]) >= {"python", "torch", "pyro"}
    # metrics agree with an independent evaluation of the saved result
    loaded = runs.load_result(out)
    assert metrics["test_accuracy_median"] == accuracy(
        loaded.map_network(), digits.x_test, digits.y_test
    )
    losses = np.loadtxt(out / "losses.csv", delimiter=",", skiprows=1)
    np.testing.assert_array_equal(losses[:, 1], loaded.losses)
    assert metrics["final_loss"] == losses[-1, 1]
    kept = runs.checkpoint_paths(out)
    assert [step for step, _ in kept] == [120, 118, 116]  # keep_checkpoints=3
    assert not list(out.rglob("*.tmp"))


def test_existing_run_directory_is_never_overwritten_silently(tmp_path):
    out = tmp_path / "run"
    runs.fit_run({**SMALL, "steps": 5}, out)
    before = (out / "result.ckpt").read_bytes()
    with pytest.raises(runs.RunError, match="--resume"):
        runs.fit_run({**SMALL, "steps": 5, "seed": 1}, out)
    assert (out / "result.ckpt").read_bytes() == before
    runs.fit_run({**SMALL, "steps": 5, "seed": 1}, out, overwrite=True)
    assert (out / "result.ckpt").read_bytes() != before
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(runs.RunError, match="not a bayes-sws run directory"):
        runs.fit_run(SMALL, other, overwrite=True)
    assert (other / "thesis.tex").read_text() == "precious"
    assert runs.resume_run(out).status == "already complete"


def _checkpoint_exists(run_dir, step):
    path = Path(run_dir) / "checkpoints" / f"step-{step:08d}.ckpt"
    return path.exists


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, reference):
    # like Ctrl-C right after the checkpoint of step 36: the run stops after step 37
    outcome = runs.fit_run(
        SMALL, tmp_path / "run", should_stop=_checkpoint_exists(tmp_path / "run", 36)
    )
    assert outcome.status == "interrupted" and outcome.step == 37
    assert outcome.checkpoint.name == "step-00000037.ckpt"
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert "newest checkpoint at step 37" in runs.report_run(tmp_path / "run")
    outcome = runs.resume_run(tmp_path / "run")
    assert outcome.status == "complete" and outcome.step == 120
    _assert_same_run(reference, tmp_path / "run")


def test_damaged_newest_checkpoint_is_reported_and_skipped(tmp_path, reference):
    run = tmp_path / "run"
    outcome = runs.fit_run(SMALL, run, should_stop=_checkpoint_exists(run, 50))
    assert outcome.step == 51
    # what a non-atomic writer killed mid-write would leave: a truncated newest
    # checkpoint, and a stray temporary file
    newest = run / "checkpoints" / "step-00000055.ckpt"
    newest.write_bytes(outcome.checkpoint.read_bytes()[:1000])
    (run / "checkpoints" / ".step-00000060.ckpt.abc.tmp").write_bytes(b"partial")
    state, path, messages = runs.latest_checkpoint(run)
    assert state.step == 51 and path == outcome.checkpoint
    assert any("step-00000055.ckpt is truncated" in m for m in messages)
    log = []
    runs.resume_run(run, log=log.append)
    assert any("skipping damaged checkpoint" in m for m in log)
    assert any(".step-00000060.ckpt.abc.tmp" in m for m in log)
    _assert_same_run(reference, run)


def test_resume_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(runs.RunError, match="no such directory"):
        runs.resume_run(tmp_path / "nothing")
    with pytest.raises(runs.RunError, match="not a bayes-sws run"):
        runs.resume_run(tmp_path)


# ---------------------------------------------------------------------------- kill -9
def _cli_env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1", "PYTHONUNBUFFERED": "1"}


def _flags(config):
    flags = []
    for key, value in config.items():
        flags.append("--" + key.replace("_", "-"))
        flags += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return flags


def _start_fit(out, config):
    return subprocess.Popen(
        [sys.executable, "-m", "bayes_sws", "fit", "--out", str(out), *_flags(config)],
        env=_cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _kill_when(process, ready, timeout=120.0):
    """SIGKILL ``process`` as soon as ``ready()`` is true (polled every half millisecond)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if ready():
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.0005)
    process.wait()
    return process.returncode


def _writing_checkpoint(run_dir):
    """True while a checkpoint is being written: its temporary file exists."""
    folder = Path(run_dir) / "checkpoints"

    def ready():
        try:
            return any(name.endswith(".tmp") for name in os.listdir(folder))
        except FileNotFoundError:
            return False

    return ready


def _at_checkpoint_step(run_dir, step):
    """True once a checkpoint of step ``step`` or later exists (older ones may be pruned)."""
    return lambda: any(found >= step for found, _ in runs.checkpoint_paths(run_dir))


def _after_delay(start, delay):
    """A kill condition: ``delay`` seconds have passed since ``start`` (time.monotonic)."""
    return lambda: time.monotonic() - start >= delay


def _after_first_checkpoint(run_dir, delay):
    folder = Path(run_dir) / "checkpoints"
    seen = {}

    def ready():
        if "t" not in seen:
            if folder.is_dir() and any(n.endswith(".ckpt") for n in os.listdir(folder)):
                seen["t"] = time.monotonic()
            return False
        return time.monotonic() - seen["t"] >= delay

    return ready


def test_kill_9_during_a_checkpoint_write_or_at_random_then_resume(tmp_path, reference):
    """SIGKILL two runs, one while a checkpoint is being written, one at a random moment of SVI.

    Both run at once (two subprocesses, one polling loop). The first kill is sent
    while a checkpoint's temporary file exists; it may land just after the rename,
    so that trial is repeated (up to 4 times) until a temporary file is still there
    afterwards, proof that the write was cut. The random kill comes once SVI has
    passed a random step (checkpoints every 2 of 120 steps): a step, not a wall-clock
    delay, so that on a fast, quiet machine it still lands inside SVI, not after the
    run has written its results. Each run is then resumed in-process and must end
    with exactly the parameters of the uninterrupted reference run.
    """
    step = random.Random().randrange(2, 92, 2)
    trials = {"random": _at_checkpoint_step(tmp_path / "random", step)}
    processes = {"random": _start_fit(tmp_path / "random", SMALL)}
    cut_mid_write = False
    for attempt in range(4):
        name = f"write-{attempt}"
        trials[name] = _writing_checkpoint(tmp_path / name)
        processes[name] = _start_fit(tmp_path / name, SMALL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any(p.poll() is None for p in processes.values()):
            for key, process in processes.items():
                if process.poll() is None and trials[key]():
                    process.send_signal(signal.SIGKILL)
                    process.wait()
            time.sleep(0.0005)
        for key, process in processes.items():
            process.wait()
            assert process.returncode == -signal.SIGKILL, (
                f"{key}: the run ended before it was killed"
            )
        cut_mid_write = any(
            p.name.endswith(".tmp") for p in (tmp_path / name / "checkpoints").iterdir()
        )
        processes = {}
        if cut_mid_write:
            break
    assert cut_mid_write, "no kill landed inside a checkpoint write in 4 attempts"
    for key in trials:
        run = tmp_path / key
        assert not (run / "metrics.json").exists()
        outcome = runs.resume_run(run)
        assert outcome.status == "complete", key
        _assert_same_run(reference, run)


@pytest.mark.slow
def test_repeated_kill_9_at_random_times_including_pretraining(tmp_path):
    """Five trials, each killed up to three times at random wall-clock moments.

    Kills land anywhere: while importing, pretraining, fitting, writing a
    checkpoint or writing the results; each time the run is continued with
    ``bayes-sws fit --resume`` (or started again if no run directory exists yet).
    """
    config = {**SMALL, "steps": 400, "checkpoint_every": 3, "pretrain_epochs": 5}
    reference = tmp_path / "reference"
    runs.fit_run(config, reference)
    rng = random.Random()
    for trial in range(5):
        run = tmp_path / f"trial-{trial}"
        process = _start_fit(run, config)
        for _ in range(3):
            if rng.random() < 0.5:  # anywhere: start-up, pretraining, SVI, results
                ready = _after_delay(time.monotonic(), rng.uniform(1.0, 10.0))
            else:  # somewhere in SVI, once checkpoints are being written
                ready = _after_first_checkpoint(run, rng.uniform(0.0, 3.0))
            _kill_when(process, ready)
            if process.returncode == 0:
                break
            if (run / "config.json").exists():
                process = subprocess.Popen(
                    [sys.executable, "-m", "bayes_sws", "fit", "--resume", str(run)],
                    env=_cli_env(),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            else:  # killed before the run directory was written: start again
                process = _start_fit(run, config)
        process.wait()
        if process.returncode != 0:
            runs.resume_run(run)
        _assert_same_run(reference, run)


ANNEALED = {
    **SMALL,
    "precision_prior": [250.0, 1.0],
    "precision_prior_final": [250.0, 0.01],
    "anneal_epochs": [1.0, 3.0],  # steps 22 .. 66 of 120 (22 mini-batches of 64 per epoch)
}


def test_annealed_run_resumes_mid_anneal_to_the_uninterrupted_result(tmp_path, reference):
    """The prior in force at the resumed step comes from the schedule, so the runs agree bit for bit.

    The anneal changes the run (it differs from the reference without one) and the
    saved result carries the final prior.
    """
    full = tmp_path / "full"
    assert runs.fit_run(ANNEALED, full).status == "complete"
    part = tmp_path / "part"
    outcome = runs.fit_run(ANNEALED, part, should_stop=_checkpoint_exists(part, 40))
    assert outcome.status == "interrupted" and outcome.step == 41
    assert runs.resume_run(part).status == "complete"
    _assert_same_run(full, part)
    slab = tmp_path / "slab"  # the same run without the anneal
    runs.fit_run(
        {k: v for k, v in ANNEALED.items() if "final" not in k and "anneal" not in k}, slab
    )
    result = runs.load_result(full)
    sigma = result.mixture()[2].reshape(-1)[1:]
    sigma_slab = runs.load_result(slab).mixture()[2].reshape(-1)[1:]
    assert torch.all(sigma < sigma_slab)  # a stronger pull towards high precision
    assert (result.model.prior.precision_concentration, result.model.prior.precision_rate) == (
        pytest.approx(250.0),
        pytest.approx(0.01),
    )


def test_anneal_settings_are_checked(tmp_path):
    with pytest.raises(runs.RunError, match="anneal_epochs needs precision_prior_final"):
        runs.fit_run({**SMALL, "anneal_epochs": [1, 2]}, tmp_path / "a")
    with pytest.raises(runs.RunError, match="start <= end"):
        runs.fit_run({**ANNEALED, "anneal_epochs": [3, 1]}, tmp_path / "b")


def test_run_device_reads_the_config_and_refuses_what_it_did_not_write(reference, tmp_path):
    """The device the run was written with (config.json by hand); None for no run, a
    damaged config, or a config.json that is a link (never followed)."""
    written = json.loads((reference / "config.json").read_text())["device"]
    assert runs.run_device(reference) == written == "cpu"
    assert runs.run_device(tmp_path / "nothing here") is None
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_text("[1, 2]")
    assert runs.run_device(damaged) is None
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "config.json").symlink_to(reference / "config.json")
    assert runs.run_device(linked) is None


def test_cosine_pretraining_is_train_with_torchs_cosine_annealing(tmp_path):
    """``pretrain_schedule = "cosine"`` pretrains the network that ``train`` with torch's own
    ``CosineAnnealingLR`` over all the steps gives from the same initial weights, bit for bit
    (and not the constant rate's)."""
    from bayes_sws.runs.checkpoints import network_kwargs
    from bayes_sws.settings import steps_per_epoch
    from bayes_sws.zoo.nets import build_network

    settings = {"num_steps": 5, "pretrain_epochs": 2, "hidden": [16], "standardize": "none"}
    out = tmp_path / "run"
    config = runs.resolve_config({}, {**settings, "pretrain_schedule": "cosine"})
    runs.fit_run(config, out=out, progress=False)
    initial = runs.read_checkpoint(out / runs.INITIAL_FILE, kind="network")
    data = load_dataset("digits", flatten=True, test_fraction=0.2, seed=0, standardize=False)
    steps = 2 * steps_per_epoch(data.num_train, config.pretrain_batch_size)
    nets = {}
    for name, schedule in (
        ("cosine", lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)),
        ("constant", None),
    ):
        torch.manual_seed(config.seed)
        nets[name] = build_network(**network_kwargs(initial["network_spec"]))
        train(
            nets[name],
            data.x_train,
            data.y_train,
            num_epochs=2,
            lr=config.pretrain_lr,
            batch_size=config.pretrain_batch_size,
            seed=config.seed,
            progress=False,
            lr_scheduler=schedule,
        )
    state = initial["network_state"]
    for key, value in nets["cosine"].state_dict().items():
        assert torch.equal(state[key], value)
    assert not all(torch.equal(state[k], v) for k, v in nets["constant"].state_dict().items())
