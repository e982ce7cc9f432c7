"""Run from a script (output to pipes, not a terminal), the command line and the
quick start print progress as log lines on standard error.

One real process with both ends piped and ``CI`` / ``PYTEST_CURRENT_TEST``
removed from its environment, as a user's script or job would have it. The log
interval (10 s) is set to 0 in that process, so a run of a few steps logs every
step; the expected lines are counted by hand from the steps run (pretraining:
``n_train // batch_size`` full batches per epoch; SVI: ``--num-steps``).
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from bayes_sws.zoo.data import load_dataset

ROOT = Path(__file__).resolve().parents[2]
MARK = "---- the quick start ----"

SCRIPT = textwrap.dedent(
    f"""
    import functools, sys
    from bayes_sws import _progress

    # a log line at every update instead of every 10 s (the lines' format unchanged)
    _progress._LogBar.__init__ = functools.partialmethod(_progress._LogBar.__init__, every=0.0)

    from bayes_sws.runs.cli import main

    code = main(sys.argv[1:])
    print({MARK!r}, file=sys.stderr, flush=True)

    import bayes_sws as sws
    from bayes_sws.zoo.data import load_dataset
    from bayes_sws.zoo.nets import mlp
    from bayes_sws.zoo.training import train

    data = load_dataset("digits")
    x, y = data.x_train[:256], data.y_train[:256]
    net = mlp([64, 8, 10]); train(net, x, y, num_epochs=1, batch_size=64)
    model = sws.SWSModel(net, sws.MixturePrior(3), likelihood="categorical", prior_scale=0.1)
    sws.fit(model, x, y, guide="map", num_steps=6, batch_size=128)
    sys.exit(code)
    """
)


def _lines(text, prefix):
    return [line for line in text.splitlines() if line.startswith(prefix)]


def test_cli_and_quick_start_log_progress_when_not_on_a_terminal(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_CURRENT_TEST")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    argv = ["fit", "--out", tmp_path / "run", "--hidden", "8", "--components", "3"]
    argv += ["--pretrain-epochs", "1", "--pretrain-batch-size", "512"]
    argv += ["--num-steps", "5", "--batch-size", "256"]
    process = subprocess.run(
        [sys.executable, "-c", SCRIPT, *map(str, argv)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,  # both ends pipes, not a terminal
        text=True,
        timeout=300,
        check=False,
    )
    assert process.returncode == 0, process.stderr
    cli_err, script_err = process.stderr.split(MARK)
    assert "test accuracy" in process.stdout  # the summary on stdout, the progress on stderr
    assert "bayes-sws:" not in process.stdout

    batches = len(load_dataset("digits").x_train) // 512  # pretraining: one epoch
    train = _lines(cli_err, "bayes-sws: train: ")
    fit = _lines(cli_err, "bayes-sws: fit (map): ")
    assert [line.split()[2] for line in train[:batches]] == [
        f"{i}/{batches}" for i in range(1, batches + 1)
    ]
    assert train[-1].startswith(f"bayes-sws: train: {batches}/{batches} (100 %)")
    assert [line.split()[3] for line in fit[:5]] == [f"{i}/5" for i in range(1, 6)]
    assert fit[-1].startswith("bayes-sws: fit (map): 5/5 (100 %), loss ")

    assert _lines(script_err, "bayes-sws: train: ")[-1].startswith("bayes-sws: train: 4/4 (100 %)")
    fit = _lines(script_err, "bayes-sws: fit (map): ")
    assert [line.split()[3] for line in fit[:6]] == [f"{i}/6" for i in range(1, 7)]
    assert fit[-1].startswith("bayes-sws: fit (map): 6/6 (100 %), loss ")
