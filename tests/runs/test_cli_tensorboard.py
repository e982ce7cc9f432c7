"""``bayes-sws fit --tensorboard DIR``: the run's SVI losses as TensorBoard scalars."""

import json

import numpy as np
import pytest

from bayes_sws.runs import cli
from bayes_sws.runs import commands as runs
from bayes_sws.runs.settings import RESUME_SETTINGS, RunConfig

TINY = ["--hidden", "8", "--components", "3", "--pretrain-epochs", "0"]
TINY += ["--num-steps", "12", "--batch-size", "256", "--checkpoint-every", "4"]


def test_tensorboard_scalars_are_the_runs_losses(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = tmp_path / "tb" / "run"
    out = tmp_path / "run"
    assert cli.main(["fit", "--out", str(out), "--tensorboard", str(board), *TINY]) == 0
    capsys.readouterr()
    losses = runs.load_result(out).losses  # the oracle: what the fit returned and saved
    events = EventAccumulator(str(board))
    events.Reload()
    scalars = events.Scalars("loss")
    assert [e.step for e in scalars] == list(range(12))
    np.testing.assert_array_equal(
        np.array([e.value for e in scalars], dtype=np.float32), np.asarray(losses, np.float32)
    )
    # a log folder is not part of the run's identity: a resume may change it
    assert json.loads((out / "config.json").read_text())["tensorboard"] == str(board)
    assert "tensorboard" in RESUME_SETTINGS


def test_tensorboard_setting_is_optional_and_checked():
    assert RunConfig.from_dict({}).tensorboard is None
    assert "tensorboard" not in RunConfig.from_dict({"tensorboard": "tb"}).identity_settings()
    with pytest.raises(runs.RunError, match="tensorboard must not be empty"):
        RunConfig.from_dict({"tensorboard": ""})


def test_a_resumed_run_may_start_logging_to_tensorboard(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, board = tmp_path / "run", tmp_path / "tb"
    config = {"hidden": [8], "num_components": 3, "pretrain_epochs": 0, "num_steps": 12}
    config.update(batch_size=256, checkpoint_every=4)
    polls = iter(range(100))
    stopped = runs.fit_run(config, out, should_stop=lambda: next(polls) == 5)  # after step 5
    assert stopped.status == "interrupted" and not board.exists()
    assert cli.main(["fit", "--resume", str(out), "--tensorboard", str(board)]) == 0
    capsys.readouterr()
    losses = runs.load_result(out).losses
    events = EventAccumulator(str(board))
    events.Reload()
    scalars = events.Scalars("loss")
    assert [e.step for e in scalars] == list(range(6, 12))  # the steps run after the resume
    np.testing.assert_array_equal(
        np.array([e.value for e in scalars], dtype=np.float32),
        np.asarray(losses[6:], np.float32),
    )


def test_tensorboard_without_its_package_is_refused_before_anything_is_written(
    tmp_path, capsys, monkeypatch
):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    out = tmp_path / "run"
    code = cli.main(["fit", "--out", str(out), "--tensorboard", str(tmp_path / "tb"), *TINY])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--tensorboard" in lines[0], err
    assert "pip install 'bayes-sws[tensorboard]'" in lines[0]
    assert list(tmp_path.iterdir()) == []
