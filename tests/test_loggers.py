"""bayes_sws.loggers: the CSV and TensorBoard logs of a fit hold the losses fit returns."""

import builtins
import csv

import numpy as np
import pytest
import torch

import bayes_sws as sws
from bayes_sws.loggers import CSVLogger, TensorBoardLogger, callbacks


def _tiny_fit(callback, num_steps=30):
    torch.manual_seed(0)
    x = torch.randn(40, 3)
    y = (x[:, 0] > 0).long()
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    model = sws.SWSModel(net, sws.MixturePrior(3), prior_scale=0.1)
    return sws.fit(model, x, y, num_steps=num_steps, lr=1e-2, seed=0, callback=callback)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_csv_log_holds_the_losses_fit_returns(tmp_path):
    path = tmp_path / "logs" / "losses.csv"
    with CSVLogger(path) as log:
        result = _tiny_fit(log)
    rows = _rows(path)
    assert rows[0] == ["step", "loss", "seconds"]
    steps = [int(r[0]) for r in rows[1:]]
    losses = [float(r[1]) for r in rows[1:]]
    seconds = [float(r[2]) for r in rows[1:]]
    assert steps == list(range(len(result.losses)))
    assert losses == result.losses.tolist()  # repr round-trips the float exactly
    assert all(b >= a >= 0 for a, b in zip(seconds, seconds[1:], strict=False))
    assert log.closed


def test_csv_log_is_readable_while_the_run_goes(tmp_path):
    path = tmp_path / "losses.csv"
    seen = []
    with CSVLogger(path) as log:

        def reader(step, loss):
            seen.append(len(_rows(path)) - 1)  # data rows on disk after this step's write
            return False

        _tiny_fit(callbacks(log, reader), num_steps=5)
    assert seen == [1, 2, 3, 4, 5]


def test_csv_log_appends_to_its_own_file_and_refuses_another(tmp_path):
    path = tmp_path / "losses.csv"
    with CSVLogger(path) as log:
        log(0, 2.5)
    with CSVLogger(path) as log:
        log(1, 1.25)
    rows = _rows(path)
    assert [row[:2] for row in rows] == [["step", "loss"], ["0", "2.5"], ["1", "1.25"]]
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a loss log"):
        CSVLogger(other)
    with pytest.raises(ValueError, match="flush_every"):
        CSVLogger(tmp_path / "x.csv", flush_every=0)


def test_callbacks_calls_all_and_stops_when_any_asks():
    calls = []
    joint = callbacks(
        lambda step, loss: calls.append(("a", step)),
        None,
        lambda step, loss: calls.append(("b", step)) or step == 2,
    )
    result = _tiny_fit(joint, num_steps=10)
    assert len(result.losses) == 3  # stopped after step 2
    assert calls == [(name, step) for step in range(3) for name in ("a", "b")]
    with pytest.raises(TypeError, match="callable"):
        callbacks(3)


def test_tensorboard_scalars_are_the_losses_fit_returns(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with TensorBoardLogger(tmp_path / "tb") as log:
        result = _tiny_fit(log)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    scalars = events.Scalars("loss")
    assert [e.step for e in scalars] == list(range(len(result.losses)))
    # TensorBoard stores 32-bit floats: the losses rounded to float32
    np.testing.assert_array_equal(
        np.array([e.value for e in scalars], dtype=np.float32), result.losses.astype(np.float32)
    )


def test_tensorboard_missing_names_the_extra(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ImportError, match=r"pip install 'bayes-sws\[tensorboard\]'"):
        TensorBoardLogger(tmp_path / "tb")
