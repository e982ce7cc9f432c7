"""Bad input everywhere a user can reach it: the Python API, every ``bayes-sws`` option,
config files (TOML/JSON keys and types) and data files. Each mistake gets one error of a
known type whose message names the offending value; the command line prints it as one
line ``bayes-sws: error: ...`` with exit code 2 and never a traceback.

Complements (does not repeat) the cases in test_fit.py, test_cli.py and test_runs.py.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import bayes_sws as sws
from bayes_sws.core import penalty
from bayes_sws.runs import cli
from bayes_sws.runs import commands as runs
from bayes_sws.zoo.data import DataError, load_dataset

X, Y = torch.randn(10, 4), torch.randint(0, 3, (10,))
INF = float("inf")


def _model(**prior):
    return sws.SWSModel(torch.nn.Sequential(torch.nn.Linear(4, 3)), sws.MixturePrior(3, **prior))


def _regression(outputs):
    net = torch.nn.Linear(4, outputs)
    return sws.SWSModel(net, sws.MixturePrior(2), likelihood="gaussian")


# ---------------------------------------------------------------------------- Python API
API = [
    (lambda: sws.fit(_model(), X, Y, lr="fast"), TypeError, "lr must be a number > 0, got 'fast'"),
    (lambda: sws.fit(_model(), X, Y, lr=INF), ValueError, "lr must be a number > 0, got inf"),
    (
        lambda: sws.fit(_model(), X, Y, mixture_lr=-1e-3),
        ValueError,
        "mixture_lr must be a number > 0, got -0.001",
    ),
    (
        lambda: sws.fit(_model(), X, Y, num_particles=0),
        ValueError,
        "num_particles must be an integer > 0, got 0",
    ),
    (
        lambda: sws.fit(_model(), X, Y, num_steps=2.5),
        TypeError,
        "num_steps must be an integer > 0, got 2.5",
    ),
    (lambda: sws.fit(_model(), X, Y, seed=1.5), TypeError, "seed must be an integer, got 1.5"),
    (
        lambda: sws.fit(_model(), X, Y, checkpoint=3),
        TypeError,
        "checkpoint must be a callable taking a FitState, got 3",
    ),
    (
        lambda: sws.fit(_model(), X, Y, checkpoint_every=0),
        ValueError,
        "checkpoint_every must be an integer > 0, got 0",
    ),
    (
        lambda: sws.fit(_model(), X, Y, callback="print"),
        TypeError,
        "callback must be a callable (step, loss) -> bool, got 'print'",
    ),
    (lambda: sws.fit(_model(), X, Y, guide=3), TypeError, "or a callable, got 3"),
    (lambda: sws.fit(_model(), None, Y), ValueError, "x is None"),
    (lambda: sws.fit(_model(), "abc", Y), TypeError, "x must be a tensor or array, got str"),
    (
        lambda: sws.fit(_model(), [[1.0, 2.0], [3.0]], Y),
        TypeError,
        "x must be a tensor or array, got list",
    ),
    (
        lambda: sws.fit(_regression(1), X, torch.full((10,), INF)),
        ValueError,
        "y contains a non-finite value inf at index [0]",
    ),
    (
        lambda: sws.fit(_regression(3), X, torch.randn(10)),
        ValueError,
        "gaussian targets of shape (10,) do not fit network outputs of shape (2, 3)",
    ),
    (
        lambda: sws.fit(
            sws.SWSModel(
                torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Unflatten(1, (3, 1))),
                sws.MixturePrior(2),
            ),
            X,
            Y,
        ),
        ValueError,
        "outputs of shape (batch, num_classes), got (2, 3, 1)",
    ),
    (
        lambda: sws.fit(_model(), X, Y.double() + 0.5),
        ValueError,
        "integer class labels, got fractional values",
    ),
    (lambda: sws.fit(_model(), X, Y - 5), ValueError, "label -"),
    (
        lambda: sws.fit(_model(), X, Y, optimizer="lbfgs", guide="normal"),
        ValueError,
        "got guide='normal'",
    ),
    (
        lambda: sws.fit(_model(), X, Y, guide="mixed", guide_rank=2),
        ValueError,
        "guide_rank=2 sets the rank of guide='lowrank' only, but the guide is 'mixed'",
    ),
    (
        lambda: sws.fit(_model(precision_concentration=0.5), X, Y, guide="laplace"),
        ValueError,
        "precision_concentration (Gamma shape) = 0.5 < 1",
    ),
    (
        lambda: sws.fit(_model(), X, Y, initial_state="run.ckpt"),
        TypeError,
        "initial_state must be a FitState (as passed to fit's checkpoint callable), got str",
    ),
    (lambda: sws.fit(_model(), X, Y, initial_state={"step": 1}), ValueError, "got ['step']"),
    (
        lambda: sws.fit(_model(), X, Y, num_steps=1).sample_posterior(0),
        ValueError,
        "num_samples must be an integer > 0, got 0",
    ),
    (lambda: sws.MixturePrior(3, pi_zero=0.0), ValueError, "pi_zero must lie in (0, 1), got 0.0"),
    (
        lambda: sws.MixturePrior(3, init_pi_zero=1.0),
        ValueError,
        "init_pi_zero must lie in (0, 1), got 1.0",
    ),
    (
        lambda: sws.MixturePrior(3, mixing_concentration=-1),
        ValueError,
        "mixing_concentration must be a finite number > 0, got -1.0",
    ),
    (lambda: sws.MixturePrior(3, mean_loc=INF), ValueError, "mean_loc must be finite, got inf"),
    (lambda: sws.MixturePrior(3, pi_zero_prior=(1, 1, 1)), ValueError, "got (1, 1, 1)"),
    (
        lambda: sws.MixturePrior(3, zero_component=False, pi_zero=0.3),
        ValueError,
        "pi_zero was given but zero_component=False",
    ),
    (lambda: sws.MixturePrior(3, params=[1, 2]), TypeError, "got (1, 2)"),
    (
        lambda: sws.MixturePrior(3, init_means=torch.zeros(5)),
        ValueError,
        "init_means must hold 2 values (one per non-zero component), got 5",
    ),
    (
        lambda: sws.MixturePrior(3, fixed_precision=-1),
        ValueError,
        "fixed_precision must be a finite number > 0, got -1.0",
    ),
    (lambda: sws.MixturePrior("3"), TypeError, "num_components must be an int >= 1, got '3'"),
    (
        lambda: sws.SWSModel("net", sws.MixturePrior(2)),
        TypeError,
        "net must be a torch.nn.Module, got str",
    ),
    (
        lambda: sws.SWSModel(torch.nn.Linear(2, 2), {"M": 2}),
        TypeError,
        "prior must be a bayes_sws.MixturePrior, got dict",
    ),
    (
        lambda: sws.SWSModel(torch.nn.Linear(2, 2), sws.MixturePrior(2), prior_scale="big"),
        TypeError,
        "got 'big'",
    ),
    (
        lambda: sws.SWSModel(torch.nn.Linear(2, 2), sws.MixturePrior(2), prior_scale=float("nan")),
        ValueError,
        "got nan",
    ),
    (
        lambda: sws.SWSModel(torch.nn.Linear(2, 2), sws.MixturePrior(2), likelihood=3),
        ValueError,
        "unknown likelihood 3",
    ),
    (
        lambda: sws.Gaussian(precision_prior=(1, -1)),
        ValueError,
        "precision_prior entries must be > 0, got (1, -1)",
    ),
    (
        lambda: load_dataset("digits", flatten="yes"),
        DataError,
        "flatten must be True or False, got 'yes'",
    ),
    (lambda: load_dataset("digits", standardize="max"), DataError, "got 'max'"),
    (lambda: load_dataset("digits", seed=0.5), DataError, "seed must be an integer, got 0.5"),
    (
        lambda: load_dataset("digits", test_fraction=0),
        DataError,
        "test_fraction must lie strictly between 0 and 1, got 0",
    ),
    (lambda: load_dataset("cifar-10"), DataError, "unknown data set 'cifar-10'"),
    (
        lambda: penalty.omega(torch.randn(5), torch.ones(1, 2), torch.zeros(2), torch.ones(2)),
        ValueError,
        "got shape (1, 2)",
    ),
    (
        lambda: penalty.omega(torch.randn(5), torch.ones(3) / 3, torch.zeros(2), torch.ones(2)),
        ValueError,
        "got shapes (3,), (2,), (2,)",
    ),
    (lambda: runs.RunConfig.from_dict([("lr", 1)]), runs.RunError, "got list"),
    (
        lambda: runs.load_result("/nonexistent/run"),
        runs.CheckpointError,
        "/nonexistent/run/result.ckpt does not exist",
    ),
]


@pytest.mark.parametrize("make, error, named", API, ids=[f"api{i}" for i in range(len(API))])
def test_api_mistakes_raise_one_named_error(make, error, named):
    with pytest.raises(error) as info:
        make()
    assert named in str(info.value), str(info.value)


# ---------------------------------------------------------------------------- data files
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    rng = np.random.default_rng(0)
    np.savez(root / "negative.npz", x=rng.random((20, 3)), y=-(np.arange(20) % 2))
    np.savez(root / "keys.npz", a=rng.random((20, 3)), b=np.arange(20) % 2)
    np.savez(root / "empty.npz", x=np.zeros((0, 3)), y=np.zeros(0, dtype=int))
    np.savez(root / "length.npz", x=rng.random((20, 3)), y=np.arange(19) % 2)
    np.savez(root / "flat.npz", x=rng.random(20), y=np.arange(20) % 2)
    np.savez(root / "text.npz", x=np.array([["a", "b"]] * 20), y=np.arange(20) % 2)
    np.savez(
        root / "kinds.npz",
        x_train=rng.random((20, 3)),
        y_train=np.arange(20) % 2,
        x_test=rng.random((5, 3)),
        y_test=rng.random(5),
    )
    np.savez(
        root / "widths.npz",
        x_train=rng.random((20, 3)),
        y_train=np.arange(20) % 2,
        x_test=rng.random((5, 4)),
        y_test=np.arange(5) % 2,
    )
    np.savez(root / "inf_target.npz", x=rng.random((20, 3)), y=np.r_[rng.random(19), np.inf])
    np.savez(root / "tiny.npz", x=rng.random((2, 3)), y=np.arange(2))
    with open(root / "array.npz", "wb") as handle:  # a .npy file under an .npz name
        np.save(handle, np.zeros(3))
    (root / "table.csv").write_text("1,2\n3,4\n")
    (root / "afile").write_text("not a directory")
    (root / "config_dir").mkdir()
    configs = {
        "lr_string.toml": 'lr = "0.1"\n',
        "lr_bool.toml": "lr = true\n",
        "hidden_string.toml": 'hidden = "wide"\n',
        "hidden_zero.toml": "hidden = [10, 0]\n",
        "steps_float.toml": "steps = 1.5\n",
        "data_number.toml": "data = 3\n",
        "flat_int.toml": "flat = 1\n",
        "triple.toml": "precision_prior = [1, 2, 3]\n",
        "seed_negative.toml": "seed = -1\n",
        "guide_unknown.toml": 'guide = "mcmc"\n',
        "typo.toml": 'optimiser = "adam"\n',
        "pi_zero.toml": "pi_zero = 0\n",
        "lr_nan.toml": "lr = nan\n",
        "lambda_inf.toml": "prior_scale = -inf\n",
        "likelihood.toml": 'likelihood = "poisson"\n',
        "network.toml": 'network = "vgg"\n',
        "dataset.toml": 'data = "cifar"\n',
        "mixture_lr.toml": "mixture_lr = 0\n",
        "huge.toml": "components = 1e9999\n",
        "list.toml": "batch_size = [64]\n",
        "broken.json": '{"lr": ',
        "list.json": "[1, 2]",
        "unknown.json": '{"learning_rate": 0.1}',
    }
    for name, text in configs.items():
        (root / name).write_text(text)
    (root / "binary.toml").write_bytes(b"\xff\xfe lr = 1")
    return root


DATA = [
    ("negative.npz", "negative class label -1"),
    ("keys.npz", "holds keys ['a', 'b']"),
    ("empty.npz", "x is empty (shape (0, 3))"),
    ("length.npz", "y has 19 entries but the inputs have 20 rows"),
    ("flat.npz", "x has shape (20,)"),
    ("text.npz", "x has dtype <U1; expected numbers"),
    ("kinds.npz", "y_train has dtype int64 but y_test has float"),
    ("widths.npz", "x_train examples have shape (3,) but x_test examples have (4,)"),
    ("inf_target.npz", "y has 1 non-finite values (first inf at index 19)"),
    ("tiny.npz", "cannot split 2 examples with test_fraction=0.2"),
    ("table.csv", "table.csv' (is not an .npz file)"),
]


@pytest.mark.parametrize("name, named", DATA, ids=[d[0] for d in DATA])
def test_bad_data_files_through_the_api_and_the_cli(name, named, files, tmp_path, capsys):
    with pytest.raises(DataError) as info:
        load_dataset(files / name)
    assert named in str(info.value)
    code, err = _cli(["fit", "--data", str(files / name), "--out", str(tmp_path / "run")], capsys)
    _assert_one_line_usage_error(code, err, named)
    assert not (tmp_path / "run").exists()  # nothing written for bad data


def test_a_npy_file_named_npz_is_named_at_the_cli(files, tmp_path, capsys):
    code, err = _cli(
        ["fit", "--data", str(files / "array.npz"), "--out", str(tmp_path / "r")], capsys
    )
    _assert_one_line_usage_error(code, err, "array.npz' cannot be read")


# ---------------------------------------------------------------------------- command line
def _cli(argv, capsys):
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exit_info:  # argparse's own errors
        code = exit_info.code
    out, err = capsys.readouterr()
    assert out == ""
    return code, err


def _assert_one_line_usage_error(code, err, named):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("bayes-sws: error: "), err
    assert named in lines[0], err
    assert "Traceback" not in err


CLI = [
    (["fit", "--split-seed", "-1"], "--split-seed must be >= 0, got -1"),
    (["fit", "--pretrain-epochs", "-1"], "--pretrain-epochs must be >= 0, got -1"),
    (["fit", "--pretrain-lr", "0"], "--pretrain-lr must be > 0, got 0.0"),
    (["fit", "--pretrain-batch-size", "0"], "--pretrain-batch-size must be >= 1, got 0"),
    (["fit", "--init-pi-zero", "0"], "--init-pi-zero must lie strictly between 0 and 1, got 0.0"),
    (["fit", "--pi-zero", "0"], "--pi-zero must lie strictly between 0 and 1, got 0.0"),
    (["fit", "--mean-scale", "0"], "--mean-scale must be > 0, got 0.0"),
    (
        ["fit", "--zero-precision-prior", "0", "1"],
        "--zero-precision-prior must be two numbers > 0, got (0.0, 1.0)",
    ),
    (
        ["fit", "--no-zero-component", "--zero-precision-prior", "2", "1"],
        "zero_precision_prior needs the zero component",
    ),
    (["fit", "--no-zero-component", "--pi-zero", "0.5"], "pi_zero needs the zero component"),
    (["fit", "--noise-precision", "0"], "--noise-precision must be > 0, got 0.0"),
    (["fit", "--init-scale", "0"], "--init-scale must be > 0, got 0.0"),
    (["fit", "--num-particles", "0"], "--num-particles must be >= 1, got 0"),
    (["fit", "--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["fit", "--seed", "-1"], "--seed must be >= 0, got -1"),
    (["fit", "--checkpoint-every", "0"], "--checkpoint-every must be >= 1, got 0"),
    (["fit", "--keep-checkpoints", "0"], "--keep-checkpoints must be >= 1, got 0"),
    (["fit", "--components", "abc"], "invalid int value: 'abc'"),
    (["fit", "--precision-prior", "2"], "--precision-prior: expected 2 arguments"),
    (["fit", "--lr", "inf"], "--lr must be finite, got inf"),
    (["fit", "--lr"], "--lr: expected one argument"),
    (["fit", "--data", ""], "--data must not be empty, got ''"),
    (["fit", "--data", "cifar"], "unknown data set 'cifar'"),
    (["fit", "--out", "{files}/afile"], "afile exists and is not a directory"),
    (["fit", "--flat", "--no-flat", "--bogus"], "unrecognized arguments: --bogus"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    ([], "choose a command"),
    (["compress", "{files}/afile", "--merge-threshold", "nan"], "got 'nan'"),
    (["diagnose", "{files}/afile", "--max-points", "0"], "got '0'"),
    (["diagnose", "{files}/missing_run"], "missing_run does not exist"),
    (["inspect", "{files}/missing.sws"], "cannot read"),
    (["inspect", "{files}/afile"], "afile: not a bayes_sws compressed network"),
    (["demo", "--steps", "0"], "--steps: expected an integer >= 1, got '0'"),
    (["demo", "--prior-scale", "-1"], "--prior-scale: expected a finite number >= 0, got '-1'"),
    (["demo", "--seed", "abc"], "invalid int value: 'abc'"),
]


@pytest.mark.parametrize("argv, named", CLI, ids=[" ".join(a[:3]) or "none" for a, _ in CLI])
def test_cli_option_mistakes_are_one_named_line(argv, named, files, capsys):
    code, err = _cli([a.format(files=files) for a in argv], capsys)
    _assert_one_line_usage_error(code, err, named)


CONFIG = [
    ("lr_string.toml", "lr must be a number, got '0.1'"),
    ("lr_bool.toml", "lr must be a number, got True"),
    ("hidden_string.toml", "hidden must be a list of integers, got 'wide'"),
    ("hidden_zero.toml", "hidden must be widths >= 1, got (10, 0)"),
    ("steps_float.toml", "steps must be an integer, got 1.5"),
    ("data_number.toml", "data must be a string, got 3"),
    ("flat_int.toml", "flat must be true or false, got 1"),
    ("triple.toml", "precision_prior must be two numbers [a, b], got [1, 2, 3]"),
    ("seed_negative.toml", "seed must be >= 0, got -1"),
    ("guide_unknown.toml", "guide must be one of map, normal, lowrank, laplace, mixed, got 'mcmc'"),
    ("typo.toml", "unknown setting 'optimiser'; did you mean 'optimizer'?"),
    ("pi_zero.toml", "pi_zero must lie strictly between 0 and 1, got 0"),
    ("lr_nan.toml", "lr must be finite, got nan"),
    ("lambda_inf.toml", "prior_scale must be finite, got -inf"),
    (
        "likelihood.toml",
        "likelihood must be one of auto, categorical, gaussian, mdn, got 'poisson'",
    ),
    ("network.toml", "network must be one of mlp, lenet-300-100, lenet-5, got 'vgg'"),
    ("dataset.toml", "unknown data set 'cifar'"),
    ("mixture_lr.toml", "mixture_lr must be > 0, got 0"),
    ("huge.toml", "components must be an integer, got inf"),
    ("list.toml", "batch_size must be an integer, got [64]"),
    ("broken.json", "broken.json is not valid JSON"),
    ("list.json", "list.json must hold a table of settings"),
    ("unknown.json", "unknown setting 'learning_rate'"),
    ("binary.toml", "binary.toml is not valid TOML"),
    ("config_dir", "config_dir is a directory"),
]


@pytest.mark.parametrize("name, named", CONFIG, ids=[c[0] for c in CONFIG])
def test_config_file_mistakes_are_one_named_line(name, named, files, capsys):
    code, err = _cli(["fit", "--config", files / name], capsys)
    _assert_one_line_usage_error(code, err, named)


def test_config_values_checked_without_the_cli(files):
    for name, named in CONFIG[:10]:
        with pytest.raises(runs.RunError) as info:
            runs.resolve_config(runs.load_config_file(files / name), {}, file_name=name)
        assert named in str(info.value) and name in str(info.value)


def test_damaged_config_of_a_run_is_named_on_resume(tmp_path, capsys):
    run = tmp_path / "run"
    config = {"hidden": [8], "components": 3, "pretrain_epochs": 0, "steps": 2}
    assert runs.fit_run(config, run, should_stop=lambda: True).status == "interrupted"
    (run / "config.json").write_text('{"lr": -1}')
    code, err = _cli(["fit", "--resume", run], capsys)
    _assert_one_line_usage_error(code, err, "lr must be > 0, got -1")
    (run / "config.json").write_text("{not json")
    code, err = _cli(["fit", "--resume", run], capsys)
    _assert_one_line_usage_error(code, err, "config.json is not valid JSON")


def test_unexpected_internal_errors_are_still_one_line(monkeypatch, capsys):
    def broken(args):
        raise KeyError("surprise")

    monkeypatch.setattr(cli, "_report", broken)
    code, err = _cli(["report", "anything"], capsys)
    assert code == 1 and err.count("\n") == 1 and "KeyError" in err and "Traceback" not in err


# ---------------------------------------------------------------------------- real processes
@pytest.mark.parametrize(
    "argv, named",
    [
        (["fit", "--lr", "0", "--components", "4"], "--lr must be > 0, got 0.0"),
        (["fit", "--data", "{files}/negative.npz"], "negative class label -1"),
    ],
)
def test_console_process_prints_no_traceback(argv, named, files):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "bayes_sws", *[a.format(files=files) for a in argv]],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bayes-sws: error: ") and named in lines[0], (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr


def test_numerical_fault_at_the_cli_is_one_line_exit_1(tmp_path, capsys, monkeypatch):
    from bayes_sws.infer.svi import NumericalFault

    def fault(*args, **kwargs):
        raise NumericalFault(
            "non-finite values at step 3: parameter 'locs.net.0.weight'",
            step=3,
            name="locs.net.0.weight",
            kind="parameter",
        )

    monkeypatch.setattr(runs, "fit", fault)
    code, err = _cli(
        [
            "fit",
            "--out",
            tmp_path / "run",
            "--pretrain-epochs",
            "0",
            "--hidden",
            "4",
            "--components",
            "2",
        ],
        capsys,
    )
    assert code == 1 and len(err.strip().splitlines()) >= 1
    last = err.strip().splitlines()[-1]
    assert (
        last.startswith("bayes-sws: failed: non-finite values at step 3") and "Traceback" not in err
    )
    json.dumps(err)  # plain text


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: sws.MixturePrior(3, pi_zero="abc"), "pi_zero must be a number, got 'abc'"),
        (
            lambda: sws.MixturePrior(3, pi_zero_prior=5),
            r"pi_zero_prior must be two Beta concentrations \(a, b\), got 5",
        ),
        (lambda: sws.MixturePrior(3, mean_loc="left"), "mean_loc must be a number, got 'left'"),
        (lambda: sws.Gaussian(precision="x"), "precision must be a number > 0, got 'x'"),
    ],
)
def test_wrong_types_name_the_argument(make, match):
    with pytest.raises(TypeError, match=match):
        make()
