"""The ``bayes-sws`` command end to end on digits, and its handling of user mistakes.

Commands run in-process through :func:`bayes_sws.runs.cli.main` (the console script's
entry point) except where a real process is needed: ``python -m bayes_sws``
and Ctrl-C. Numbers the CLI writes are checked against independent
computations (scipy responsibilities, numpy accuracies), not against itself.
"""

import dataclasses
import json
import os
import signal
import struct
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm

from bayes_sws.compress import load_compressed, storage_report
from bayes_sws.compress.pipeline import compress_result
from bayes_sws.runs import cli
from bayes_sws.runs import commands as runs
from bayes_sws.settings import CompressSettings
from bayes_sws.zoo.data import load_dataset

SMALL = [
    "--hidden",
    "16",
    "--components",
    "4",
    "--pretrain-epochs",
    "2",
    "--steps",
    "80",
    "--batch-size",
    "64",
    "--checkpoint-every",
    "2",
]


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def map_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "map"
    assert cli.main(["fit", "--out", str(out), *SMALL]) == 0
    return out


def _payload(run_dir):
    return runs.read_checkpoint(Path(run_dir) / "result.ckpt", kind="result")


# ---------------------------------------------------------------------------- entry points
def test_help_on_every_subcommand(capsys):
    parser = cli.build_parser()
    names = sorted(parser._subparsers._group_actions[0].choices)
    assert names == ["compress", "demo", "diagnose", "fit", "inspect", "report"]
    for name in [None, *names]:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(([name] if name else []) + ["--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: bayes-sws {name or ''}".rstrip())
    # every run setting is a fit flag, described in its help
    with pytest.raises(SystemExit):
        cli.main(["fit", "--help"])
    help_text = capsys.readouterr().out
    for option in runs.config_options():
        assert "--" + option["name"].replace("_", "-") in help_text, option["name"]


def test_console_script_entry_point():
    # `python -m bayes_sws` runs as a real process in the Ctrl-C test below
    scripts = {
        e.name: e.value for e in entry_points(group="console_scripts") if e.name == "bayes-sws"
    }
    assert scripts == {"bayes-sws": "bayes_sws.runs.cli:main"}


# ---------------------------------------------------------------------------- end to end
def test_fit_writes_metrics_that_match_an_independent_evaluation(map_run, digits):
    metrics = json.loads((map_run / "metrics.json").read_text())
    assert metrics["steps"] == 80 and metrics["guide"] == "map"
    assert {"python", "torch", "pyro"} <= set(metrics["versions"])
    config = json.loads((map_run / "config.json").read_text())
    assert (
        config["hidden"] == [16] and config["num_components"] == 4 and config["prior_scale"] == 0.1
    )
    net = runs.load_result(map_run).map_network()
    with torch.no_grad():
        predicted = net(digits.x_test).numpy().argmax(1)
    assert metrics["test_accuracy"] == pytest.approx(
        np.mean(predicted == digits.y_test.numpy()), abs=0
    )
    losses = np.loadtxt(map_run / "losses.csv", delimiter=",", skiprows=1)
    assert losses.shape == (80, 2) and metrics["final_loss"] == losses[-1, 1]


def test_compress_numbers_match_an_independent_quantisation(map_run, digits, capsys):
    code, out, err = run_cli(capsys, "compress", map_run, "--merge-threshold", "0")
    assert code == 0, err
    summary = json.loads((map_run / "compression.json").read_text())
    for key in (
        "compression_rate",
        "nonzero_fraction",
        "test_accuracy_before",
        "test_accuracy_after",
    ):
        assert key in summary
    assert f"{summary['compression_rate']:.1f}x" in out
    assert "storing settings: merge_threshold 0.0\n" in out  # the one flag; defaults otherwise
    code, reported, err = run_cli(capsys, "report", map_run)
    model = summary["files"]["model.sws"]
    assert "storing settings: merge_threshold 0.0\n" in reported
    assert (
        f"model.sws: {model['num_bytes']} bytes ({model['payload_bits']} bits of weights + "
        f"{model['header_bytes']} bytes of header"
    ) in reported
    code, shown, err = run_cli(capsys, "inspect", map_run / "model.sws")
    assert code == 0, err
    model = summary["files"]["model.sws"]
    assert shown.startswith(
        f".sws format version 1: {model['num_bytes']} bytes = {model['payload_bits']} bits of "
        f"parameters + {model['header_bytes']} bytes of header"
    )
    for row in summary["layers"]:  # each weight's row: its layout and bits as counted
        assert f"| {row['storage_format']} |" in shown and f"| {row['weight_bits']} |" in shown
    code, shown, err = run_cli(capsys, "inspect", map_run, "--json")  # the run's model.sws
    assert code == 0, err
    described = json.loads(shown)
    assert described["payload_bits"] == model["payload_bits"]
    bits = {t["name"]: t["bits"] for t in described["tensors"]}
    assert [bits[row["name"]] for row in summary["layers"]] == [
        row["weight_bits"] for row in summary["layers"]
    ]
    # oracle: responsibilities from scipy, argmax, replace, evaluate with numpy
    result = runs.load_result(map_run)
    pi, mu, sigma = (t.double().numpy() for t in result.mixture())
    state = {k: v.detach().double().numpy() for k, v in result.map_network().state_dict().items()}
    quantised, zeros, total = {}, 0, 0
    for name in result.model.prior_param_names:
        w = state[name]
        owner = np.argmax(np.log(pi) + norm.logpdf(w[..., None], mu, sigma), axis=-1)
        quantised[name] = np.where(owner == 0, 0.0, mu[owner])
        zeros += int(np.sum(owner == 0))
        total += w.size
    assert summary["nonzero_fraction"] == pytest.approx(1 - zeros / total, abs=1e-12)

    def accuracy(weights):
        h = digits.x_test.double().numpy()
        h = np.maximum(h @ weights["0.weight"].T + state["0.bias"], 0)
        logits = h @ weights["2.weight"].T + state["2.bias"]
        return np.mean(logits.argmax(1) == digits.y_test.numpy())

    assert summary["test_accuracy_before"] == pytest.approx(accuracy(state), abs=1e-12)
    assert summary["test_accuracy_after"] == pytest.approx(accuracy(quantised), abs=1e-12)
    assert summary["compression_rate"] > 1
    assert (map_run / "plots" / "compression_weights.png").stat().st_size > 1000
    assert summary["remove_dead_units"] is False
    assert summary["stored_shapes"]["0.weight"] == list(state["0.weight"].shape)
    # without the hidden units no output weight reads: the same predictions, fewer bits
    unread = int(np.all(quantised["2.weight"] == 0, axis=0).sum())
    code, _, err = run_cli(
        capsys, "compress", map_run, "--merge-threshold", "0", "--remove-dead-units"
    )
    assert code == 0, err
    smaller = json.loads((map_run / "compression.json").read_text())
    assert smaller["stored_shapes"]["0.weight"][0] <= max(1, state["0.weight"].shape[0] - unread)
    assert smaller["test_accuracy_after"] == pytest.approx(accuracy(quantised), abs=1e-12)
    assert smaller["compression_rate"] >= summary["compression_rate"]


def test_every_compression_setting_is_a_compress_flag(capsys):
    # oracle: the CompressSettings record's own fields, less those that shape the retraining
    # (λ's warm-up, distillation), which a fitted run can no longer take
    retraining = ("prior_scale_warmup", "distill", "distill_temperature")
    with pytest.raises(SystemExit):
        cli.main(["compress", "--help"])
    help_text = capsys.readouterr().out
    names = [
        f.name
        for f in dataclasses.fields(CompressSettings)
        if f.metadata["kind"] is not None and f.name not in retraining
    ]
    assert names  # the record has command-line settings at all
    for name in names:
        assert "--" + name.replace("_", "-") in help_text, name
    for name in retraining:
        assert f"--{name.replace('_', '-')} " not in help_text, name


def test_compress_flags_reach_the_pipeline(map_run, digits, capsys):
    argv = ["--merge-criterion", "mean", "--merge-threshold", "0.05", "--finetune-epochs", "1"]
    argv += ["--assignment", "likelihood", "--value-tolerance", "0.02"]
    code, _, err = run_cli(
        capsys, "compress", map_run, *argv, "--finetune-lr", "0.01", "--no-plots"
    )
    assert code == 0, err
    summary = json.loads((map_run / "compression.json").read_text())
    assert summary["settings"]["merge_criterion"] == "mean"
    assert summary["settings"]["finetune_epochs"] == 1
    assert summary["settings"]["finetune_lr"] == 0.01
    assert summary["settings"]["assignment"] == "likelihood"
    assert summary["config"]["value_tolerance"] == 0.02
    # oracle: the library's compress_result called by hand with the run's data and settings
    config = json.loads((map_run / "config.json").read_text())
    by_hand = compress_result(
        runs.load_result(map_run),
        digits.x_test,
        digits.y_test,
        merge_threshold=0.05,
        merge_criterion="mean",
        finetune_data=(digits.x_train, digits.y_train),
        finetune_epochs=1,
        finetune_lr=0.01,
        finetune_batch_size=config["batch_size"],
        seed=config["seed"],
        assignment="likelihood",
        value_tolerance=0.02,
    )
    assert summary["compression_rate"] == by_hand.compression_rate
    assert summary["test_accuracy_after"] == by_hand.test_accuracy_after
    assert summary["num_distinct_values"] == by_hand.num_distinct_values
    # the same settings as a record through the Python API
    record = CompressSettings(merge_threshold=0.0)
    with pytest.raises(runs.RunError, match="merge_threshold must be >= 0, got -1.0"):
        runs.compress_run(map_run, settings=record, merge_threshold=-1)
    with pytest.raises(runs.RunError, match="did you mean 'merge_threshold'"):
        runs.compress_run(map_run, merge_treshold=0.0)


def test_compress_writes_the_network_it_counted(map_run, digits, capsys):
    code, out, err = run_cli(capsys, "compress", map_run, "--remove-dead-units", "--no-plots")
    assert code == 0, err
    summary = json.loads((map_run / "compression.json").read_text())
    files = summary["files"]
    sws, pt = map_run / "model.sws", map_run / "model_quantized.pt"
    assert files["model.sws"]["num_bytes"] == sws.stat().st_size
    assert files["model_quantized.pt"]["num_bytes"] == pt.stat().st_size
    assert f"wrote {sws} ({sws.stat().st_size} bytes" in out
    # the payload is the counted bits; the rest is the header (docs/file-format.md)
    assert files["model.sws"]["payload_bits"] == summary["total_bits"]
    assert sws.stat().st_size == -(-summary["total_bits"] // 8) + files["model.sws"]["header_bytes"]
    net = load_compressed(sws)
    assert {n: list(p.shape) for n, p in net.named_parameters()} == summary["stored_shapes"]
    state = torch.load(pt, weights_only=True)
    for name, p in net.named_parameters():
        assert torch.equal(p, state[name]), name
    # oracle: the test accuracy after compression, evaluated here with numpy
    w = {k: v.double().numpy() for k, v in state.items()}
    h = np.maximum(digits.x_test.double().numpy() @ w["0.weight"].T + w["0.bias"], 0)
    predicted = (h @ w["2.weight"].T + w["2.bias"]).argmax(1)
    assert summary["test_accuracy_after"] == pytest.approx(
        np.mean(predicted == digits.y_test.numpy()), abs=1e-12
    )


def test_compress_with_rice_positions_writes_the_same_network_smaller(map_run, capsys):
    sws = map_run / "model.sws"
    code, _, err = run_cli(capsys, "compress", map_run, "--remove-dead-units", "--no-plots")
    assert code == 0, err
    fixed, fixed_net = json.loads((map_run / "compression.json").read_text()), load_compressed(sws)
    argv = ["--remove-dead-units", "--no-plots", "--position-coding", "rice"]
    code, _, err = run_cli(capsys, "compress", map_run, *argv)
    assert code == 0, err
    rice = json.loads((map_run / "compression.json").read_text())
    assert rice["settings"]["position_coding"] == "rice"
    # oracle: the storage report of the fixed run's network, recounted with Rice positions
    recount = storage_report(fixed_net, position_coding="rice")
    assert rice["files"]["model.sws"]["payload_bits"] == rice["total_bits"] == recount.total_bits
    assert rice["total_bits"] <= fixed["total_bits"]
    assert (
        sws.stat().st_size
        == -(-rice["total_bits"] // 8) + rice["files"]["model.sws"]["header_bytes"]
    )
    version = struct.unpack_from("<H", sws.read_bytes(), 8)[0]
    uses_rice = any(row.position_coding == "rice" for row in recount.layers)
    assert version == (2 if uses_rice else 1)
    for a, b in zip(fixed_net.parameters(), load_compressed(sws).parameters(), strict=True):
        assert torch.equal(a, b)


def test_compress_with_reordered_units_writes_the_same_function_in_fewer_bits(
    map_run, digits, capsys
):
    sws = map_run / "model.sws"
    code, _, err = run_cli(capsys, "compress", map_run, "--remove-dead-units", "--no-plots")
    assert code == 0, err
    plain, plain_net = json.loads((map_run / "compression.json").read_text()), load_compressed(sws)
    argv = ["--remove-dead-units", "--no-plots", "--reorder-units"]
    code, _, err = run_cli(capsys, "compress", map_run, *argv)
    assert code == 0, err
    ordered = json.loads((map_run / "compression.json").read_text())
    assert ordered["settings"]["reorder_units"] is True
    net = load_compressed(sws)
    # oracle: the storage report of the file's own network, and the first file's outputs
    assert ordered["files"]["model.sws"]["payload_bits"] == storage_report(net).total_bits
    assert ordered["total_bits"] == storage_report(net).total_bits <= plain["total_bits"]
    assert ordered["stored_shapes"] == plain["stored_shapes"]
    x = digits.x_test.to(next(net.parameters()).dtype)
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain_net(x), rtol=1e-5, atol=1e-5)
    assert ordered["test_accuracy_after"] == pytest.approx(plain["test_accuracy_after"], abs=0.01)


def test_report_summarises_the_run(map_run, capsys):
    code, out, _ = run_cli(capsys, "report", map_run)
    assert code == 0
    metrics = json.loads((map_run / "metrics.json").read_text())
    assert f"after SVI {100 * metrics['test_accuracy']:.2f} %" in out
    assert "status: complete, 80 steps" in out
    assert "learned mixture" in out


def test_fit_normal_guide_from_a_toml_config_with_flag_overrides(tmp_path, capsys, digits):
    config = tmp_path / "run.toml"
    config.write_text(
        'guide = "normal"\nprior_scale = 0.5\nsteps = 1000\nhidden = [16]\n'
        "components = 4\npretrain_epochs = 2\nbatch_size = 64\ninit_scale = 0.01\n"
    )
    out = tmp_path / "normal"
    code, _, err = run_cli(
        capsys, "fit", "--config", config, "--out", out, "--steps", "40", "--prior-scale", "0.2"
    )
    assert code == 0, err
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["guide"] == "normal" and resolved["init_scale"] == 0.01  # from the file
    assert resolved["num_steps"] == 40 and resolved["prior_scale"] == 0.2  # flags win
    result = runs.load_result(out)
    assert result.guide_name == "normal" and len(result.losses) == 40
    scales = [v for k, v in result.guide.state_dict().items() if k.startswith("scales.")]
    assert scales  # a real posterior: every site has a scale
    code, report, _ = run_cli(capsys, "report", out)
    assert "guide normal" in report


def test_diagnose_writes_inference_data(map_run, capsys):
    pytest.importorskip("bayes_sws.diagnostics")
    import arviz as az
    import pandas as pd

    code, out, err = run_cli(
        capsys, "diagnose", map_run, "--num-samples", "20", "--max-points", "50"
    )
    assert code == 0, err
    idata = az.from_netcdf(map_run / "posterior.nc")
    assert {"posterior", "log_likelihood", "posterior_predictive", "observed_data"} <= set(
        idata.groups()
    )
    assert idata.posterior["sws.pi"].dims == ("chain", "draw", "component")
    assert idata.posterior.sizes["component"] == 4
    assert idata.log_likelihood["obs"].sizes["data"] == 50
    # a MAP posterior is a point: every draw equals the learned mixture
    pi = runs.load_result(map_run).mixture().pi.numpy()
    np.testing.assert_allclose(
        idata.posterior["sws.pi"].values.reshape(-1, 4), np.tile(pi, (20, 1)), rtol=1e-6
    )
    table = pd.read_csv(map_run / "posterior_summary.csv", index_col=0)
    assert "sws.pi[0]" in table.index and "sws.sigma[3]" in table.index
    assert "sws.pi[0]" in out
    for name in ("loss", "hyperposterior", "mixture"):
        assert (map_run / "plots" / f"{name}.png").stat().st_size > 1000
    code, report, _ = run_cli(capsys, "report", map_run)
    assert "posterior: posterior.nc" in report


def test_regression_npz_end_to_end(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=300)).astype(np.float32)
    np.savez(tmp_path / "line.npz", x=x, y=y)
    out = tmp_path / "regression"
    code, _, err = run_cli(
        capsys,
        "fit",
        "--data",
        tmp_path / "line.npz",
        "--out",
        out,
        "--hidden",
        "8",
        "--components",
        "3",
        "--pretrain-epochs",
        "5",
        "--steps",
        "30",
        "--batch-size",
        "64",
        "--no-standardize-targets",  # the targets as given (the default standardises them)
    )
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    net = runs.load_result(out).map_network()
    data = load_dataset(tmp_path / "line.npz")
    with torch.no_grad():
        rmse = float(((net(data.x_test).squeeze(-1) - data.y_test) ** 2).mean().sqrt())
    assert metrics["test_rmse_median"] == pytest.approx(rmse, rel=1e-6)
    code, out_text, err = run_cli(capsys, "compress", out, "--no-plots")
    assert code == 0, err
    assert "test RMSE" in out_text


def test_ctrl_c_writes_a_checkpoint_and_resume_matches_the_uninterrupted_run(
    tmp_path, map_run, capsys
):
    out = tmp_path / "interrupted"
    process = subprocess.Popen(
        [sys.executable, "-m", "bayes_sws", "fit", "--out", str(out), *SMALL],
        env={**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    target = out / "checkpoints" / "step-00000010.ckpt"
    deadline = time.monotonic() + 120
    while not target.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and f"fit --resume {out}" in stderr
    assert "Traceback" not in stderr
    steps = [step for step, _ in runs.checkpoint_paths(out)]
    assert steps and 10 <= steps[0] < 80
    assert not (out / "metrics.json").exists()
    code, _, err = run_cli(capsys, "fit", "--resume", out)
    assert code == 0, err
    a, b = _payload(map_run), _payload(out)
    for group in ("guide_state", "network_state"):
        for key in a[group]:
            assert torch.equal(a[group][key], b[group][key]), key
    assert torch.equal(a["losses"], b["losses"])


def test_demo_runs(capsys):
    code, out, _ = run_cli(capsys, "demo", "--steps", "30")
    assert code == 0
    assert "test accuracy retrained" in out and "learned mixture" in out


# ---------------------------------------------------------------------------- user mistakes
@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "unknown_key.toml").write_text("lerning_rate = 0.1\n")
    (root / "wrong_type.toml").write_text('components = "many"\n')
    (root / "broken.toml").write_text("lr = = 3\n")
    (root / "table.toml").write_text("[prior]\ncomponents = 3\n")
    (root / "not_npz.npz").write_text("hello")
    np.savez(root / "nan.npz", x=np.array([[np.nan, 1.0], [0.0, 1.0]] * 10), y=np.arange(20) % 2)
    (root / "not_a_run").mkdir()
    (root / "not_a_run" / "notes.txt").write_text("mine")
    return root


def _unfinished_run(tmp_path):
    """A real run stopped before its first SVI step (so it has no result)."""
    run = tmp_path / "unfinished"
    config = {"hidden": [8], "components": 3, "pretrain_epochs": 0, "steps": 5}
    assert runs.fit_run(config, run, should_stop=lambda: True).status == "interrupted"
    return run


BAD = [
    (["fit", "--lr", "-1"], "--lr must be > 0, got -1.0"),
    (["fit", "--lr", "abc"], "'abc'"),
    (["fit", "--lr", "nan"], "--lr must be finite, got nan"),
    (["fit", "--mixture-lr", "0"], "--mixture-lr must be > 0, got 0.0"),
    (["fit", "--components", "0"], "--components must be >= 1, got 0"),
    (["fit", "--components", "2.5"], "'2.5'"),
    (["fit", "--prior-scale", "-0.1"], "--prior-scale must be >= 0, got -0.1"),
    (["fit", "--pi-zero", "1.5"], "--pi-zero must lie strictly between 0 and 1, got 1.5"),
    (
        ["fit", "--pi-zero-prior", "0", "1"],
        "--pi-zero-prior must be two numbers > 0, got (0.0, 1.0)",
    ),
    (
        ["fit", "--precision-prior", "2", "-1"],
        "--precision-prior must be two numbers > 0, got (2.0, -1.0)",
    ),
    (["fit", "--mixing-concentration", "0.5"], "mixing_concentration = 0.5"),
    (["fit", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["fit", "--steps", "0"], "--steps must be >= 1, got 0"),
    (["fit", "--steps", "10", "--epochs", "2"], "either steps"),
    (["fit", "--hidden", "0"], "--hidden must be widths >= 1, got (0,)"),
    (["fit", "--network", "lenet-5", "--hidden", "10"], "'mlp' only"),
    (["fit", "--network", "resnet"], "'resnet'"),
    (["fit", "--guide", "exact"], "'exact'"),
    (["fit", "--optimizer", "sgd"], "'sgd'"),
    (["fit", "--optimizer", "lbfgs", "--guide", "normal"], "'normal'"),
    (["fit", "--guide-rank", "5"], "guide_rank=5 sets the rank of guide='lowrank' only"),
    (["fit", "--guide", "lowrank", "--guide-rank", "0"], "--guide-rank must be >= 1, got 0"),
    (["fit", "--activation", "swish"], "'swish'"),
    (["fit", "--standardize", "maybe"], "'maybe'"),
    (
        ["fit", "--test-fraction", "1.5"],
        "--test-fraction must lie strictly between 0 and 1, got 1.5",
    ),
    (["fit", "--data", "imagenet"], "'imagenet'"),
    (["fit", "--data", "{files}/missing.npz"], "missing.npz"),
    (["fit", "--data", "{files}/not_npz.npz"], "not_npz.npz"),
    (["fit", "--data", "{files}/nan.npz"], "non-finite"),
    (["fit", "--config", "{files}/missing.toml"], "missing.toml does not exist"),
    (["fit", "--config", "{files}/unknown_key.toml"], "unknown setting 'lerning_rate'"),
    (["fit", "--config", "{files}/wrong_type.toml"], "components must be an integer, got 'many'"),
    (["fit", "--config", "{files}/broken.toml"], "not valid TOML"),
    (["fit", "--config", "{files}/table.toml"], "[prior] is a table"),
    (["fit", "--out", "{files}/not_a_run"], "not a bayes-sws run directory"),
    (["fit", "--out", "{map_run}"], "already holds a run"),
    (["fit", "--resume", "{files}/nowhere"], "nowhere: no such directory"),
    (["fit", "--resume", "{files}/not_a_run"], "not a bayes-sws run"),
    (["fit", "--resume", "{map_run}", "--lr", "0.1"], "drop --lr"),
    (["fit", "--no-such-flag"], "--no-such-flag"),
    (["compress", "{files}/not_a_run"], "not a bayes-sws run directory"),
    (["compress", "{unfinished}"], "no fitted result yet"),
    (["compress", "{map_run}", "--merge-threshold", "-1"], "'-1'"),
    (["diagnose", "{map_run}", "--num-samples", "0"], "'0'"),
    (["report", "{files}/nowhere"], "not a bayes-sws run directory"),
    (["explode"], "'explode'"),
]


@pytest.mark.parametrize("argv, named", BAD, ids=[" ".join(a[:3]) for a, _ in BAD])
def test_user_mistakes_are_one_line_and_exit_2(argv, named, bad_files, map_run, tmp_path, capsys):
    places = {"files": bad_files, "map_run": map_run}
    if any("{unfinished}" in a for a in argv):
        places["unfinished"] = _unfinished_run(tmp_path)
    argv = [a.format(**places) for a in argv]
    named = named.format(**places)
    before = sorted(p.name for p in bad_files.iterdir())
    code = _exit_code(argv)
    out, err = capsys.readouterr()
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("bayes-sws: error: ")
    assert named in lines[0]
    assert "Traceback" not in err and out == ""
    assert sorted(p.name for p in bad_files.iterdir()) == before  # nothing created


def _exit_code(argv):
    try:
        return cli.main(argv)
    except SystemExit as exit_info:  # argparse's own errors
        return exit_info.code


def test_corrupted_result_is_reported_not_loaded(map_run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(map_run, copy)
    path = copy / "result.ckpt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    code, _, err = run_cli(capsys, "compress", copy)
    assert code == 2 and "result.ckpt is corrupted" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------- numerical faults
@pytest.mark.parametrize(
    ("policy", "named"),
    [
        (["--on-nonfinite", "raise"], "non-finite"),
        (["--on-nonfinite", "rollback", "--max-rollbacks", "2"], "Gave up after 2 rollbacks"),
    ],
)
def test_diverging_fit_fails_in_one_line_under_either_policy(policy, named, tmp_path, capsys):
    # Adam moves every weight by about lr per step, so lr = 1e30 overflows the logits at
    # once; halving it twice on rollback cannot rescue that, so both policies must stop.
    out = tmp_path / "diverged"
    argv = ["fit", "--out", out, *SMALL, "--lr", "1e30", "--mixture-lr", "1e30", *policy]
    code, _stdout, err = run_cli(capsys, *argv)
    assert code == cli.EXIT_FAILURE
    last = err.strip().splitlines()[-1]  # progress notes come first, then one error line
    assert last.startswith("bayes-sws: failed: non-finite values at step") and named in last, err
    assert "Traceback" not in err
    config = json.loads((out / "config.json").read_text())
    assert config["on_nonfinite"] == policy[1]
    assert not (out / "metrics.json").exists()  # a failed run never looks complete


def test_compress_with_unit_pruning_writes_the_pruned_network(map_run, digits, capsys):
    code, _, err = run_cli(capsys, "compress", map_run, "--prune-units", "0.01", "--no-plots")
    assert code == 2 and "--remove-dead-units" in err  # refused before anything is done
    argv = ["--prune-units", "0.01", "--remove-dead-units", "--no-plots"]
    code, _, err = run_cli(capsys, "compress", map_run, *argv)
    assert code == 0, err
    summary = json.loads((map_run / "compression.json").read_text())
    # oracle: the library's compress_result called by hand with the run's data and settings
    config = json.loads((map_run / "config.json").read_text())
    by_hand = compress_result(
        runs.load_result(map_run),
        digits.x_test,
        digits.y_test,
        finetune_data=(digits.x_train, digits.y_train),
        finetune_batch_size=config["batch_size"],
        seed=config["seed"],
        prune_units=0.01,
        remove_dead_units=True,
    )
    assert by_hand.unit_pruning is not None and by_hand.unit_pruning.num_pruned > 0
    assert summary["config"]["units_pruned"] == {"0": by_hand.unit_pruning.num_pruned}
    assert summary["compression_rate"] == by_hand.compression_rate
    assert summary["test_accuracy_after"] == by_hand.test_accuracy_after
    net = load_compressed(map_run / "model.sws")
    assert net[0].weight.shape[0] == by_hand.stored_net[0].weight.shape[0]
