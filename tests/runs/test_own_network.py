"""``bayes-sws fit --network package.module:factory``: your own network on the command line.

The factories live in a small module written to a temporary folder put on
``sys.path``. Oracles: the network the factory builds with the state dict the
run wrote (``model_quantized.pt``), evaluated here; and, for every mistake, the
one-line message and exit code 2 before anything is written.
"""

import importlib
import json
import textwrap

import pytest
import torch

from bayes_sws.compress import CompressedFileError, describe_compressed, load_compressed
from bayes_sws.runs import cli
from bayes_sws.runs import commands as runs
from bayes_sws.zoo.data import load_dataset
from bayes_sws.zoo.nets import NetworkFactoryError, build_network

MODULE = "sws_test_own_nets"
SOURCE = """
from torch import nn


def small_cnn(input_shape, num_outputs):
    channels, height, width = input_shape
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * (height // 2) * (width // 2), num_outputs),
    )


def fixed():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def wrong_outputs(num_outputs):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_outputs + 1))


def flat_only(num_outputs):
    return nn.Linear(64, num_outputs)


def not_a_module():
    return "a string"


def broken(input_shape):
    raise RuntimeError("this factory is broken")


NOT_CALLABLE = 3
"""


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("own_nets")
    (folder / f"{MODULE}.py").write_text(textwrap.dedent(SOURCE))
    (folder / "sws_test_fails_on_import.py").write_text("raise OSError('no GPU here')\n")
    return folder


@pytest.fixture
def on_path(module_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(module_dir))
    return module_dir


@pytest.fixture(scope="module")
def cnn_run(module_dir, tmp_path_factory):
    """A fitted and compressed run of the CNN factory on digits (8x8 images)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(module_dir))
        out = tmp_path_factory.mktemp("cnn") / "run"
        argv = ["fit", "--network", f"{MODULE}:small_cnn", "--out", out]
        argv += ["--pretrain-epochs", "3", "--num-steps", "30", "--num-components", "4"]
        assert cli.main([str(a) for a in argv]) == cli.EXIT_OK
        assert cli.main(["compress", str(out), "--no-plots"]) == cli.EXIT_OK
        yield out


def _quantised(out):
    """The network the factory builds, with the parameters the run stored (the oracle)."""
    net = importlib.import_module(MODULE).small_cnn((1, 8, 8), 10)
    net.load_state_dict(torch.load(out / "model_quantized.pt", weights_only=True))
    return net


def test_fit_compress_load_round_trip(cnn_run, on_path):
    config = json.loads((cnn_run / "config.json").read_text())
    assert config["network"] == f"{MODULE}:small_cnn"
    digits = load_dataset("digits", flatten=False)
    quantised = _quantised(cnn_run)
    with pytest.raises(CompressedFileError, match="allow_import=True"):
        load_compressed(cnn_run / "model.sws")
    described = describe_compressed(cnn_run / "model.sws")  # imports nothing
    assert described.architecture["name"] == f"{MODULE}:small_cnn"
    assert [t.name for t in described.tensors] == [n for n, _ in quantised.named_parameters()]
    loaded = load_compressed(cnn_run / "model.sws", allow_import=True)
    with torch.no_grad():
        expected, got = quantised(digits.x_test), loaded(digits.x_test)
    assert torch.equal(got, expected)
    summary = json.loads((cnn_run / "compression.json").read_text())
    accuracy = float((expected.argmax(-1) == digits.y_test).double().mean())
    assert summary["test_accuracy_after"] == pytest.approx(accuracy, abs=1e-12)


def test_the_saved_result_rebuilds_only_on_request(cnn_run, on_path):
    with pytest.raises(ValueError, match="allow_import=True"):
        runs.load_result(cnn_run)
    result = runs.load_result(cnn_run, allow_import=True)
    assert [n for n, _ in result.model.net.named_parameters()] == [
        n for n, _ in _quantised(cnn_run).named_parameters()
    ]
    code = cli.main(["report", str(cnn_run)])
    assert code == cli.EXIT_OK


def test_a_factory_without_parameters_is_called_bare(on_path):
    net = build_network(f"{MODULE}:fixed", input_shape=(1, 8, 8), num_classes=10)
    assert [tuple(p.shape) for p in net.parameters()] == [(10, 64), (10,)]
    with pytest.raises(ValueError, match="takes no hidden sizes"):
        build_network(f"{MODULE}:fixed", input_shape=(64,), num_classes=10, hidden=(3,))
    with pytest.raises(NetworkFactoryError, match="returned a str, not an nn.Module"):
        build_network(f"{MODULE}:not_a_module", input_shape=(64,), num_classes=10)


MISTAKES = [
    ("sws_no_such_module:make", "module 'sws_no_such_module' cannot be imported"),
    ("sws_test_fails_on_import:make", "raised OSError: no GPU here"),
    (f"{MODULE}:smal_cnn", "has no attribute 'smal_cnn'; did you mean 'small_cnn'?"),
    (f"{MODULE}:NOT_CALLABLE", "names an object of type int, not a callable"),
    (f"{MODULE}:not_a_module", "returned a str, not an nn.Module"),
    (f"{MODULE}:broken", "raised RuntimeError when called as broken(input_shape=(1, 8, 8))"),
    (f"{MODULE}:wrong_outputs", "gives outputs of shape (2, 11) for 2 examples"),
    (f"{MODULE}:flat_only", "fails on inputs of shape (2, 1, 8, 8)"),
    ("two:colons:here", "must be package.module:factory"),
    ("no-dash:allowed", "must be package.module:factory"),
]


@pytest.mark.parametrize(("network", "named"), MISTAKES)
def test_a_bad_factory_is_one_line_exit_2_before_writing(network, named, on_path, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["fit", "--network", network, "--out", str(out), "--pretrain-epochs", "0"])
    stdout, err = capsys.readouterr()
    assert code == cli.EXIT_USAGE, err
    assert stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("bayes-sws: error: "), err
    assert network in lines[0] and named in lines[0], err
    assert not out.exists()


def test_hidden_widths_belong_to_the_factory(on_path, tmp_path, capsys):
    argv = [
        "fit",
        "--network",
        f"{MODULE}:small_cnn",
        "--hidden",
        "8",
        "--out",
        str(tmp_path / "r"),
    ]
    assert cli.main(argv) == cli.EXIT_USAGE
    assert "hidden sizes apply to network 'mlp' only" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_an_interrupted_run_of_a_factory_network_resumes_bit_identically(on_path, tmp_path):
    config = {
        "network": f"{MODULE}:small_cnn",
        "pretrain_epochs": 0,  # should_stop counts SVI steps only
        "num_steps": 12,
        "checkpoint_every": 4,
        "num_components": 3,
    }
    whole = runs.fit_run(config, tmp_path / "whole")
    polls = iter(range(100))
    stopped = runs.fit_run(config, tmp_path / "cut", should_stop=lambda: next(polls) >= 5)
    assert stopped.status == "interrupted" and 0 < stopped.step < 12
    assert runs.resume_run(tmp_path / "cut").status == "complete"
    states = [
        runs.read_checkpoint(run / "result.ckpt", kind="result")["network_state"]
        for run in (whole.run_dir, tmp_path / "cut")
    ]
    assert states[0].keys() == states[1].keys()
    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), name
