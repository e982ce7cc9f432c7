"""Shared test setup: quiet, repeatable, no global Pyro state between tests."""

import importlib
import os
import sys
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

os.environ.setdefault("CI", "1")  # no progress bars
torch.set_num_threads(int(os.environ.get("BAYES_SWS_TEST_THREADS", "1")))


def pytest_collection_modifyitems(config, items):
    """Examples, notebooks and benchmark scripts carry the ``artifacts`` marker.

    They run in the default tier like every test (``-m artifacts`` selects them,
    ``-m "not artifacts"`` leaves them out for a quick library-only run).
    """
    for item in items:
        if "artifacts" in item.path.parts or "benchmark" in item.name:
            item.add_marker(pytest.mark.artifacts)


@pytest.fixture(autouse=True)
def _fresh_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def benchmark_module(name: str):
    """The script ``benchmarks/NAME.py`` imported as a module. ``benchmarks/`` stays on
    ``sys.path``: the scripts import each other, and workers started by spawn import the
    module again by name to unpickle its functions."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


def assert_close(actual, expected, *, rtol=1e-7, atol=0.0, msg=""):
    """The one closeness check: numbers, arrays or tensors, compared in float64."""
    a = np.asarray(actual.detach().cpu() if torch.is_tensor(actual) else actual, dtype=np.float64)
    e = np.asarray(
        expected.detach().cpu() if torch.is_tensor(expected) else expected, dtype=np.float64
    )
    np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=msg)


def small_fit_flags(num_steps: int, checkpoint_every: int) -> list[str]:
    """``bayes-sws fit`` flags for a run of a few seconds (8 hidden units, 3 components)."""
    return [
        "--hidden", "8", "--num-components", "3", "--pretrain-epochs", "1",
        "--num-steps", str(num_steps), "--batch-size", "64",
        "--checkpoint-every", str(checkpoint_every),
    ]  # fmt: skip


def cli_exit(capsys, *argv):
    """``bayes-sws ARGV`` in process: (exit code, stdout, stderr), argparse's exits included."""
    from bayes_sws.runs import cli

    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exit_info:  # argparse's own errors
        code = exit_info.code
    out, err = capsys.readouterr()
    return code, out, err
