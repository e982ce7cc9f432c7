"""``bayes-sws fit --likelihood mdn``: a mixture density network from the command line.

Oracle: the held-out log-likelihood recorded in metrics.json is recomputed here
with scipy from the saved network's outputs (softmax logits, means, exp scales).
"""

import json

import numpy as np
import pytest
import torch
from scipy.special import logsumexp, softmax
from scipy.stats import norm

from bayes_sws.runs import cli
from bayes_sws.runs import commands as runs
from bayes_sws.zoo.data import inverse_problem, load_dataset


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    x, t = inverse_problem(600, seed=0)
    path = tmp_path_factory.mktemp("mdn") / "inverse.npz"
    np.savez(path, x=x.numpy(), y=t.numpy())
    return path


def test_fit_and_compress_an_mdn_from_the_cli(npz, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "fit",
        "--data",
        npz,
        "--likelihood",
        "mdn",
        "--mdn-components",
        "3",
        "--hidden",
        "12",
        "--activation",
        "tanh",
        "--pretrain-epochs",
        "20",
        "--num-steps",
        "40",
        "--out",
        out,
    ]
    assert cli.main([str(a) for a in argv]) == cli.EXIT_OK
    text = capsys.readouterr().out
    assert "test log-likelihood" in text
    metrics = json.loads((out / "metrics.json").read_text())
    config = runs.resolve_config({}, {"data": str(npz), "likelihood": "mdn"})
    data = runs._load_data(config)
    result = runs.load_result(out)
    with torch.no_grad():
        output = result.map_network()(data.x_test).double().numpy()
    logits, means, log_scales = output[:, :3], output[:, 3:6], output[:, 6:9]
    t = data.y_test.double().numpy()[:, None]
    log_density = logsumexp(
        np.log(softmax(logits, axis=1)) + norm.logpdf(t, means, np.exp(log_scales)), axis=1
    )
    assert metrics["test_log_likelihood_median"] == pytest.approx(log_density.mean(), rel=1e-5)
    assert cli.main(["compress", str(out), "--no-plots"]) == cli.EXIT_OK
    assert "test log-likelihood" in capsys.readouterr().out
    summary = json.loads((out / "compression.json").read_text())
    assert summary["test_log_likelihood_before"] is not None


def test_a_likelihood_that_does_not_fit_the_data_is_refused_before_writing(npz, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["fit", "--data", "digits", "--likelihood", "mdn", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE and "--likelihood mdn does not fit digits" in err
    assert not out.exists()
    assert load_dataset("digits").is_classification
