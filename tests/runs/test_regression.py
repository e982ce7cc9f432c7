"""Regression runs work by default: targets standardised on the way in, RMSEs in original units.

Data: scikit-learn's bundled diabetes set (y in the hundreds; no download),
split here with numpy and written as an ``.npz``. Oracles: the training mean and
standard deviation computed with numpy, and every RMSE recomputed here from the
saved networks' outputs mapped back to the original units by hand.
"""

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_diabetes

from bayes_sws.runs import cli
from bayes_sws.runs import commands as runs
from bayes_sws.runs.checkpoints import network_kwargs, read_checkpoint
from bayes_sws.runs.settings import RunConfig
from bayes_sws.zoo.nets import build_network


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory):
    x, y = load_diabetes(return_X_y=True, scaled=False)
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:353], order[353:]
    arrays = {
        "x_train": x[train].astype(np.float32),
        "y_train": y[train].astype(np.float32),
        "x_test": x[test].astype(np.float32),
        "y_test": y[test].astype(np.float32),
    }
    path = tmp_path_factory.mktemp("diabetes") / "diabetes.npz"
    np.savez(path, **arrays)
    return path, arrays


def _scaled_inputs(arrays):
    """The run's per-feature input scaling, by hand (float64 statistics, float32 arrays)."""
    mean = arrays["x_train"].mean(0, dtype=np.float64).astype(np.float32)
    std = arrays["x_train"].std(0, dtype=np.float64).astype(np.float32)
    return torch.from_numpy((arrays["x_test"] - mean) / std)


def _rmse_in_original_units(net, arrays):
    """RMSE of ``net``'s test predictions mapped back with numpy's training mean and std."""
    y_train = arrays["y_train"].astype(np.float64)
    with torch.no_grad():
        output = net(_scaled_inputs(arrays)).double().numpy().reshape(-1)
    predicted = output * y_train.std() + y_train.mean()
    return float(np.sqrt(np.mean((predicted - arrays["y_test"].astype(np.float64)) ** 2)))


@pytest.fixture(scope="module")
def diabetes_run(diabetes, tmp_path_factory):
    path, _ = diabetes
    out = tmp_path_factory.mktemp("diabetes_run") / "run"
    assert cli.main(["fit", "--data", str(path), "--out", str(out), "--num-steps", "300"]) == 0
    return out


def test_diabetes_from_an_npz_fits_well_by_default(diabetes, diabetes_run):
    _, arrays = diabetes
    config = json.loads((diabetes_run / "config.json").read_text())
    assert config["standardize_targets"] is True
    metrics = json.loads((diabetes_run / "metrics.json").read_text())
    y_train = arrays["y_train"].astype(np.float64)
    assert metrics["targets"]["standardized"] is True
    assert metrics["targets"]["mean"] == pytest.approx(y_train.mean(), rel=1e-12)
    assert metrics["targets"]["std"] == pytest.approx(y_train.std(), rel=1e-12)
    rmse = _rmse_in_original_units(runs.load_result(diabetes_run).map_network(), arrays)
    assert metrics["test_rmse_median"] == pytest.approx(rmse, rel=1e-5)
    assert metrics["test_rmse"] == pytest.approx(rmse, rel=1e-5)  # MAP: the same network
    # raw targets under the same settings: 128 after pretraining, 81 after SVI (std 70)
    assert rmse < 0.85 * np.std(arrays["y_test"].astype(np.float64))
    initial = read_checkpoint(diabetes_run / "initial.ckpt", kind="network")
    pretrained = build_network(**network_kwargs(initial["network_spec"]))
    pretrained.load_state_dict(initial["network_state"])
    assert metrics["pretrained_test_rmse"] == pytest.approx(
        _rmse_in_original_units(pretrained, arrays), rel=1e-5
    )


def test_compression_and_report_speak_original_units(diabetes, diabetes_run, capsys):
    _, arrays = diabetes
    assert cli.main(["compress", str(diabetes_run), "--no-plots"]) == cli.EXIT_OK
    summary = json.loads((diabetes_run / "compression.json").read_text())
    net = runs.load_result(diabetes_run).map_network()
    assert summary["test_rmse_before"] == pytest.approx(_rmse_in_original_units(net, arrays), 1e-5)
    net.load_state_dict(torch.load(diabetes_run / "model_quantized.pt", weights_only=True))
    assert summary["test_rmse_after"] == pytest.approx(_rmse_in_original_units(net, arrays), 1e-5)
    assert summary["targets"]["standardized"] is True
    capsys.readouterr()
    assert cli.main(["report", str(diabetes_run)]) == cli.EXIT_OK
    assert "targets standardised for training (training mean 15" in capsys.readouterr().out


def test_a_run_from_before_the_setting_keeps_its_identity_and_raw_targets(tmp_path, capsys):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 2)).astype(np.float32)
    np.savez(tmp_path / "line.npz", x=x, y=(100 + 30 * x[:, 0]).astype(np.float32))
    out = tmp_path / "run"
    argv = ["fit", "--data", tmp_path / "line.npz", "--out", out, "--no-standardize-targets"]
    argv += ["--hidden", "4", "--pretrain-epochs", "1", "--num-steps", "3"]
    assert cli.main([str(a) for a in argv]) == cli.EXIT_OK
    config = json.loads((out / "config.json").read_text())
    del config["standardize_targets"]  # as written before the setting existed
    (out / "config.json").write_text(json.dumps(config))
    assert cli.main(["compress", str(out), "--no-plots"]) == cli.EXIT_OK
    summary = json.loads((out / "compression.json").read_text())
    assert summary["targets"]["standardized"] is False
    capsys.readouterr()
    assert cli.main(["report", str(out)]) == cli.EXIT_OK
    assert "targets as given (standardize_targets = false)" in capsys.readouterr().out


def test_the_setting_is_in_a_new_runs_identity_only_when_it_changes_behaviour():
    assert RunConfig.from_dict({}).identity_settings()["standardize_targets"] is True
    assert "standardize_targets" not in (
        RunConfig.from_dict({"standardize_targets": False}).identity_settings()
    )


def test_diagnose_marks_the_standardised_targets(diabetes, diabetes_run, capsys):
    import arviz as az

    _, arrays = diabetes
    argv = ["diagnose", str(diabetes_run), "--num-samples", "20", "--max-points", "40"]
    assert cli.main([*argv, "--no-plots"]) == cli.EXIT_OK
    assert "are standardised: y * 7" in capsys.readouterr().out
    idata = az.from_netcdf(diabetes_run / "posterior.nc")
    y_train = arrays["y_train"].astype(np.float64)
    attrs = idata.observed_data.attrs
    assert attrs["target_mean"] == pytest.approx(y_train.mean(), rel=1e-12)
    assert attrs["target_std"] == pytest.approx(y_train.std(), rel=1e-12)
    observed = idata.observed_data["obs"].values.reshape(-1)
    original = observed * attrs["target_std"] + attrs["target_mean"]
    # every observed target mapped back is one of the training targets
    assert np.isin(np.round(original, 3), np.round(y_train, 3)).all()
