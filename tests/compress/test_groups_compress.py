"""Compression with a mixture per group of tensors: per-group codebooks, in memory and in the file.

Oracles: the argmax of log π_j + log N(w | μ_j, σ_j²) of each group's own mixture
computed here with scipy, a hand count of each layer's codebook bits (32 per
distinct non-zero value), and the in-memory network for the file round trip
(``torch.equal``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import bayes_sws as sws
from bayes_sws.compress import (
    decode_compressed,
    encode_compressed,
    quantize,
    quantize_groups,
)
from bayes_sws.compress.pipeline import compress_result
from bayes_sws.compress.storage import BITS_PER_FLOAT
from bayes_sws.zoo.data import load_dataset
from bayes_sws.zoo.nets import build_network

SPEC = {"name": "mlp", "input_shape": [64], "num_classes": 10, "hidden": [24]}


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_network(**SPEC)


def _mixtures(net: torch.nn.Module) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """A different 4-component mixture per layer, on the scale of that layer's weights."""
    out = {}
    for k, (name, p) in enumerate(n for n in net.named_parameters() if n[1].ndim >= 2):
        s = float(p.detach().std())
        out[name.rpartition(".")[0]] = (
            [0.6, 0.15, 0.15, 0.1],
            [0.0, -(1.2 + 0.3 * k) * s, (1.0 + 0.2 * k) * s, (2.0 + 0.5 * k) * s],
            [0.5 * s, 0.3 * s, 0.3 * s, 0.3 * s],
        )
    return out


def _groups(net: torch.nn.Module) -> dict[str, list[str]]:
    return {n.rpartition(".")[0]: [n] for n, p in net.named_parameters() if p.ndim >= 2}


def test_each_group_is_quantised_with_its_own_mixture():
    net = _net()
    mixtures, groups = _mixtures(net), _groups(net)
    result = quantize_groups(net, mixtures, groups, merge_threshold=0)
    params = dict(result.net.named_parameters())
    assert result.param_names == tuple(n for names in groups.values() for n in names)
    pruned = 0
    for group, (name,) in groups.items():
        pi, mu, sigma = (np.asarray(v) for v in mixtures[group])
        w = dict(net.named_parameters())[name].detach().double().numpy().ravel()
        best = np.argmax(np.log(pi) + stats.norm(mu, sigma).logpdf(w[:, None]), axis=1)
        expected = mu[best].astype(np.float32).reshape(params[name].shape)
        np.testing.assert_array_equal(params[name].detach().numpy(), expected)
        # the layer holds only values of its own codebook
        own = result.groups[group].values.float()
        assert set(params[name].detach().unique().tolist()) <= set(own.tolist())
        pruned += int((best == 0).sum())
    assert result.num_pruned == pruned
    # the combined view: one zero component, the groups' codebooks side by side
    assert result.values[0] == 0 and result.values.numel() == 1 + 3 * len(groups)
    for name in result.param_names:
        values = result.values[result.assignments[name]].float()
        assert torch.equal(values, params[name].detach())
    assert float(result.pi.sum()) == pytest.approx(1.0, abs=1e-12)
    # biases untouched
    assert torch.equal(params["0.bias"], dict(net.named_parameters())["0.bias"])


def test_one_group_is_quantize():
    net = _net()
    mixture = _mixtures(net)["0"]
    names = [n for n, p in net.named_parameters() if p.ndim >= 2]
    grouped = quantize_groups(net, {"all": mixture}, {"all": names})
    shared = quantize(net, *mixture, param_names=names)
    for (_, a), (_, b) in zip(grouped.net.named_parameters(), shared.net.named_parameters()):
        assert torch.equal(a, b)
    assert torch.equal(grouped.values, shared.values)
    assert all(torch.equal(grouped.assignments[n], shared.assignments[n]) for n in names)


@pytest.fixture(scope="module")
def compressed():
    data = load_dataset("digits")
    net = _net()
    model = sws.SWSModel(
        net, sws.MixturePrior(5, precision_prior=(2.0, 2e-3)), groups="layer", prior_scale=0.05
    )
    x, y = data.x_train[:400], data.y_train[:400]
    fitted = sws.fit(model, x, y, guide="map", num_steps=60, lr=3e-3, seed=0)
    return fitted, compress_result(fitted, data.x_test, data.y_test, merge_threshold=0), data


def test_per_layer_codebooks_in_compression_and_in_the_file(compressed):
    fitted, result, data = compressed
    model = fitted.model
    assert list(result.quantization.groups) == ["0", "2"]
    assert result.config["groups"] == {"0": ["0.weight"], "2": ["2.weight"]}
    mixtures = model.mixtures(fitted.median())
    params = dict(result.net.named_parameters())
    for group, (name,) in model.groups.items():
        codebook = result.quantization.groups[group].values
        # the group's codebook is its own mixture's means (merge_threshold=0), zero first
        means = mixtures[group].mu.detach().double().cpu()
        assert torch.equal(codebook, means)
        used = set(params[name].detach().unique().tolist())
        assert used <= set(codebook.float().tolist())
    first, second = (result.quantization.groups[g].values for g in ("0", "2"))
    assert not torch.equal(first, second)  # two mixtures, learned apart
    # storage: each layer stores its own codebook, 32 bits per distinct non-zero value
    for row in result.storage.layers:
        if row.name in model.prior_param_names:
            distinct = params[row.name].detach().unique()
            assert row.codebook_bits == BITS_PER_FLOAT * int((distinct != 0).sum())
    # the file: each layer's codebook read back, the network bit for bit
    names = result.config["param_names"]
    blob, saved = encode_compressed(result.stored_net, architecture=SPEC, param_names=names)
    assert saved.payload_bits == result.storage.total_bits
    back = decode_compressed(blob)
    for (name, a), (_, b) in zip(
        result.stored_net.named_parameters(), back.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
    with torch.no_grad():
        assert torch.equal(back(data.x_test), result.stored_net(data.x_test))


def test_validated_benchmark_lists_the_per_layer_trials(monkeypatch):
    """``--groups both``: a second trial table for the per-layer mixtures (hand arithmetic)."""
    repo = __import__("pathlib").Path(__file__).resolve().parents[2]
    monkeypatch.syspath_prepend(str(repo / "benchmarks"))
    import compression_validated as validated

    def trial(scale, after, rate, chosen):
        return {
            "prior_scale": scale,
            "validation_error_before": 0.1,
            "validation_error_after": after,
            "compression_rate": rate,
            "chosen": chosen,
        }

    row = {
        "case": "c",
        "method": "sws per-layer λ=0.3 (chosen on validation)",
        "pretrained_accuracy": 0.9,
        "accuracy_after": 0.895,
        "compression_rate": 60.0,
        "compression_rate_all_units": 50.0,
        "compression_rate_rice": 75.0,
    }
    result = {
        "rows": [row],
        "trials": [trial(0.1, 0.102, 50.0, True)],
        "trials_per_layer": [trial(0.3, 0.104, 60.0, True)],
        "within_margin": True,
        "wall": 60.0,
        "wall_per_layer": 120.0,
    }
    text = validated.section({"c": result}, "cmd", {"validation": 0.1, "seed": 0, "threads": 1}, "")
    assert "Validation trials, c (tuning took" in text
    assert "Validation trials, c, per-layer (tuning took" in text
    assert "| 0.3 | 10.00 → 10.40 | +0.40 | n/a | 60.0 | **chosen** |" in text
    assert "sws per-layer λ=0.3" in text


def test_validated_benchmark_epochs_override_reaches_both_methods(monkeypatch):
    """``--epochs 80`` on Fashion-MNIST LeNet-300-100: every λ retrains 80 epochs and
    fine-tunes its codebook for 1 before unit pruning and 1 after, so Deep Compression's
    equal-epochs row fine-tunes 80 + 2 × 1 − 5 centroid epochs = 77 (hand arithmetic);
    without it 40 + 2 − 5 = 37."""
    repo = __import__("pathlib").Path(__file__).resolve().parents[2]
    monkeypatch.syspath_prepend(str(repo / "benchmarks"))
    import compression as bench
    import compression_validated as validated

    case = bench.CASES["fashion-mnist/lenet-300-100"]
    longer = validated.with_settings(case, 80)
    assert {s["num_epochs"] for s in longer.sws.values()} == {80}
    # the case's own anneal window, epochs 28 to 38 of 40, scales to 56 to 76 of 80 (by hand)
    assert {tuple(s["anneal_epochs"]) for s in case.sws.values()} == {(28, 38)}
    assert {tuple(s["anneal_epochs"]) for s in longer.sws.values()} == {(56, 76)}
    pinned = validated.with_settings(case, 80, {"sws": {"anneal_epochs": [30, 70]}})
    assert {tuple(s["anneal_epochs"]) for s in pinned.sws.values()} == {(30, 70)}
    assert validated.equal_epochs(longer) == {"finetune_epochs": 77}
    assert validated.equal_epochs(validated.with_settings(case, None)) == {"finetune_epochs": 37}
    assert {s["num_epochs"] for s in case.sws.values()} == {40}  # the case itself unchanged
    # LeNet-5 prunes units, fine-tuning its codebook before and after: 30 + 2 × 1 − 3 = 29
    lenet5 = bench.CASES["fashion-mnist/lenet-5"]
    assert validated.equal_epochs(validated.with_settings(lenet5, None)) == {"finetune_epochs": 29}


def test_validated_benchmark_tune_only_never_reads_the_test_set(monkeypatch, tmp_path):
    """``--tune-only --set sws.NAME=VALUE``: the override reaches every candidate, the trials
    (with the retrained network's validation error beside the compressed one's) are written,
    and the test set, poisoned with NaN here, is never read (a read would give NaN logits)."""
    import dataclasses
    import json

    repo = __import__("pathlib").Path(__file__).resolve().parents[2]
    monkeypatch.syspath_prepend(str(repo / "benchmarks"))
    import compression as bench
    import compression_validated as validated

    case = bench.CASES["digits/lenet-300-100"]
    overrides = {"sws": {"num_components": 5}, "dc": {"lr": 2e-3}, "pretrain": {"lr": 5e-4}}
    changed = validated.with_settings(case, 3, overrides)
    assert changed.pretrain == {**case.pretrain, "lr": 5e-4} and case.pretrain["lr"] == 1e-3
    assert {s["num_components"] for s in changed.sws.values()} == {5}
    assert {s["num_epochs"] for s in changed.sws.values()} == {3}
    assert changed.dc["lr"] == 2e-3 and case.dc["lr"] == 1e-3  # the case itself unchanged
    assert "num_components" not in next(iter(case.sws.values()))

    load = bench.load

    def poisoned(c):
        data = load(c)
        return dataclasses.replace(data, x_test=torch.full_like(data.x_test, float("nan")))

    monkeypatch.setattr(bench, "load", poisoned)
    monkeypatch.setattr(bench, "CASES", {**bench.CASES, case.name: dataclasses.replace(
        case, pretrain={**case.pretrain, "num_epochs": 2})})  # fmt: skip
    out = tmp_path / "trials.json"
    argv = ["--cases", case.name, "--prior-scales", "0.03", "--epochs", "2", "--tune-only"]
    argv += ["--set", "sws.num_components=5", "--cache", str(tmp_path), "--json", str(out)]
    argv += ["--no-progress"]
    assert validated.main(argv) == 0
    (trial,) = json.loads(out.read_text())[case.name]["trials"]["None"]
    assert trial["settings"] == {"prior_scale": 0.03}
    assert trial["config"]["num_components"] == 5 and trial["config"]["num_epochs"] == 2
    for key in ("validation_error_before", "validation_error_retrained", "validation_error_after"):
        assert 0.0 <= trial[key] <= 1.0, key  # finite: scored on the validation split
    import validation_leads  # reads these files: the trial's point, by hand

    (point,) = validation_leads.lead_points(out, "lead", case.name)
    increase = 100 * (trial["validation_error_after"] - trial["validation_error_before"])
    assert point["increase"] == pytest.approx(increase, abs=1e-12)
    assert (point["se"], point["rate"]) == (trial["increase_se"], trial["compression_rate"])
    with pytest.raises(SystemExit):
        validated.main(["--tune-only", "--write"])


def test_validated_benchmark_budget_off_overrides_the_recipes_budget(monkeypatch):
    """``--prune-units off 0.01`` on a case whose recipe prunes units: "off" is a candidate
    without unit pruning (it overrides the recipe's budget), not the recipe's budget again;
    without ``--prune-units`` every candidate keeps the recipe's."""
    repo = __import__("pathlib").Path(__file__).resolve().parents[2]
    monkeypatch.syspath_prepend(str(repo / "benchmarks"))
    import compression as bench
    import compression_validated as validated

    seen = []

    class Found:
        def table(self):
            return ""

    def fake(net, tuning, candidates, **settings):
        seen.append([{**settings, **c}.get("prune_units") for c in candidates])
        return Found()

    monkeypatch.setattr(validated, "tune_soft_weight_sharing", fake)
    name = "fashion-mnist/lenet-5"  # a recipe that prunes units
    case = bench.CASES[name]
    recipe_budget = case.recipe.settings["prune_units"]
    options = {"prior_scales": [0.095], "progress": False, "seed": 0}
    validated._tune(name, None, None, case, {**options, "prune_units": [None, 0.02]}, None)
    validated._tune(name, None, None, case, options, None)
    assert seen == [[None, 0.02], [recipe_budget]]


@pytest.mark.parametrize(
    "item, message",
    [
        ("pretrain.seed=3", "--set pretrain.seed: not a pretraining setting"),  # the split's
        ("pretrain.epochs=3", "--set pretrain.epochs: not a pretraining setting"),  # a typo
        ("prior.lr=3", "--set expects sws.NAME=VALUE or dc.NAME=VALUE or pretrain.NAME=VALUE"),
    ],
)
def test_validated_benchmark_refuses_a_pretraining_setting_it_cannot_change(
    monkeypatch, capsys, item, message
):
    """``--set pretrain.NAME=VALUE`` takes train's keywords only, less those the benchmark sets
    itself; anything else stops before any data is read, naming the setting."""
    repo = __import__("pathlib").Path(__file__).resolve().parents[2]
    monkeypatch.syspath_prepend(str(repo / "benchmarks"))
    import compression_validated as validated

    argv = ["--cases", "digits/lenet-5", "--tune-only", "--set", item, "--no-progress"]
    with pytest.raises(SystemExit) as stop:
        validated.main(argv)
    assert message in capsys.readouterr().err + str(stop.value.code)
