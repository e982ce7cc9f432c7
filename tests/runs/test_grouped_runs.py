"""Per-layer mixtures in saved results and run directories (``--mixture-groups layer``).

Oracles: the fitted result in memory (its mixtures and predictions are what a
saved one must give back), and the prior settings of each group as given.
"""

import json

import torch
from conftest import cli_exit

import bayes_sws as sws
from bayes_sws.compress import load_compressed
from bayes_sws.runs import commands as runs
from bayes_sws.runs.checkpoints import load_result, save_result


def small_problem():
    torch.manual_seed(0)
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    return x, y, net


def test_a_grouped_result_loads_back_with_its_groups(tmp_path):
    x, y, net = small_problem()
    priors = {"a": sws.MixturePrior(3), "b": sws.MixturePrior(4, zero_component=False)}
    model = sws.SWSModel(net, priors, prior_scale=0.5, groups={"a": ["0.*"], "b": ["2.*"]})
    result = sws.fit(model, x, y, "map", num_steps=5, progress=False)
    save_result(result, tmp_path)
    fresh = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    loaded = load_result(tmp_path, network=fresh)
    assert loaded.model.groups == {"a": ("0.weight",), "b": ("2.weight",)}
    assert loaded.model.group_priors["b"].num_components == 4
    assert not loaded.model.group_priors["b"].zero_component
    saved, back = result.model.mixtures(result.median()), loaded.model.mixtures(loaded.median())
    for group in ("a", "b"):
        for a, b in zip(saved[group], back[group]):
            assert torch.equal(a, b), group
    assert torch.equal(result.predict(x), loaded.predict(x))


def test_cli_fits_compresses_and_reports_one_mixture_per_layer(tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--hidden", "8", "--num-components", "3", "--pretrain-epochs", "1"]
    flags += ["--num-steps", "8", "--batch-size", "64", "--mixture-groups", "layer"]
    code, _, err = cli_exit(capsys, "fit", "--out", out, *flags)
    assert code == 0, err
    result = load_result(out)
    assert set(result.model.groups) == {"0", "2"}  # the mlp's two Linear layers
    sites = set(result.model.hyper_site_names)
    assert {"sws.0.means", "sws.2.means"} <= sites
    code, _, err = cli_exit(capsys, "compress", out, "--no-plots")
    assert code == 0, err
    summary = json.loads((out / "compression.json").read_text())
    assert summary["config"]["groups"] == {"0": ["0.weight"], "2": ["2.weight"]}
    stored = load_compressed(out / "model.sws")
    state = torch.load(out / "model_quantized.pt")
    for name, value in stored.state_dict().items():
        assert torch.equal(value, state[name]), name
    code, _, err = cli_exit(capsys, "fit", "--out", tmp_path / "bad", "--mixture-groups", "each")
    assert code == 2 and "mixture-groups" in err and "layer" in err


def test_cli_weighs_a_tensors_prior_by_its_multiplier(tmp_path, capsys):
    """``--tensor-scales NAME=X ...``: the run's model carries the multipliers (saved with the
    result, recorded in config.json), its losses are not the unweighed run's from the same
    seed, and a run resumed reads them back. Bad words, multipliers and patterns that name
    no tensor under the prior are refused before anything is written."""
    flags = ["--hidden", "8", "--num-components", "3", "--pretrain-epochs", "1"]
    flags += ["--num-steps", "8", "--batch-size", "64", "--seed", "0"]
    out, plain = tmp_path / "run", tmp_path / "plain"
    scales = ["--tensor-scales", "0.weight=3", "2.*=0.5"]
    code, _, err = cli_exit(capsys, "fit", "--out", out, *flags, *scales)
    assert code == 0, err
    result = load_result(out)
    assert result.model.tensor_scales == {"0.weight": 3.0, "2.weight": 0.5}
    config = json.loads((out / "config.json").read_text())
    assert config["tensor_scales"] == {"0.weight": 3.0, "2.*": 0.5}
    code, reported, _ = cli_exit(capsys, "report", out)
    assert code == 0 and "λ = 0.1, × 3 on 0.weight, × 0.5 on 2.*" in reported
    assert cli_exit(capsys, "fit", "--out", plain, *flags)[0] == 0
    assert load_result(plain).losses[-1] != result.losses[-1]
    assert json.loads((plain / "config.json").read_text())["tensor_scales"] is None
    # a run stopped before its first step (settings as a dict, as a config file gives them)
    stopped = tmp_path / "stopped"
    config = {"hidden": [8], "num_components": 3, "pretrain_epochs": 0, "num_steps": 5}
    config["tensor_scales"] = {"0.*": 2.0}
    assert runs.fit_run(config, stopped, should_stop=lambda: True).status == "interrupted"
    code, _, err = cli_exit(capsys, "fit", "--resume", stopped)
    assert code == 0, err
    assert load_result(stopped).model.tensor_scales == {"0.weight": 2.0}
    for words, named in [
        (["9.*=2"], "'9.*', which matches no prior-carrying tensor"),
        (["0.weight=-1"], "tensor_scales['0.weight'] must be a finite number > 0, got -1.0"),
        (["0.weight=inf"], "must be finite"),
        (["0.weight"], "NAME=X"),
        (["0.weight=big"], "X a number"),
    ]:
        bad = tmp_path / "bad"
        code, _, err = cli_exit(capsys, "fit", "--out", bad, *flags, "--tensor-scales", *words)
        assert code == 2 and named in err, err
        assert not bad.exists()
