"""``bayes-sws fit --recipe NAME``: a run with the settings chosen on validation
(``bayes_sws.compress.pipeline.RECIPES``), compressed as the benchmark compresses.

The oracle is the library's pipeline, :func:`~bayes_sws.compress.pipeline.soft_weight_sharing`
with the recipe's keyword arguments, from the same pretrained network: a different code path
(no run directory, checkpoints or command settings) that must give the same network.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from bayes_sws.compress import load_compressed
from bayes_sws.compress.pipeline import RECIPE_PRETRAIN, RECIPES, soft_weight_sharing
from bayes_sws.runs import cli
from bayes_sws.runs import commands as runs
from bayes_sws.runs.checkpoints import network_kwargs
from bayes_sws.zoo.data import load_dataset
from bayes_sws.zoo.nets import build_network

DIGITS = "digits/lenet-300-100"


def _pretrained(run_dir):
    """The run's pretrained network, rebuilt from its initial checkpoint."""
    initial = runs.read_checkpoint(run_dir / runs.INITIAL_FILE, kind="network")
    net = build_network(**network_kwargs(initial["network_spec"]))
    net.load_state_dict(initial["network_state"])
    return net


def test_a_recipe_run_retrains_and_stores_as_the_pipeline_does(tmp_path, capsys):
    """The command line with ``--recipe`` (a short run, the anneal switched on by flags to
    cover it too) against ``soft_weight_sharing(net, data, **recipe.kwargs(num_train=N))``
    from the run's own pretrained network: the same compression rate and accuracy, and the
    written ``model.sws`` computes what the pipeline's stored network does, bit for bit. The
    compress command took the recipe's storing settings (codebook fine-tuning, dead units
    removed, units reordered), not the defaults."""
    out = tmp_path / "run"
    anneal = ["--precision-prior", "250", "1", "--precision-prior-final", "250", "0.01"]
    argv = ["fit", "--recipe", DIGITS, "--num-steps", "60", "--pretrain-epochs", "2"]
    assert cli.main([*argv, *anneal, "--anneal-epochs", "0.5", "1.5", "--out", str(out)]) == 0
    assert cli.main(["compress", str(out), "--no-plots"]) == 0
    assert (  # the digits recipe's departures from the defaults, as its record kept them
        "storing settings: finetune_epochs 10, remove_dead_units true, reorder_units true "
        f"(from recipe {DIGITS} as recipe.json recorded it at fit time)"
    ) in capsys.readouterr().out
    assert cli.main(["report", str(out)]) == 0
    reported = capsys.readouterr().out
    assert f"λ = 0.03334 (recipe {DIGITS})" in reported  # 0.03 · 1,437 / 1,293, 4 digits
    assert "storing settings: finetune_epochs 10, remove_dead_units true" in reported
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"] == DIGITS and config["standardize"] == "none"
    data = load_dataset("digits", flatten=True, test_fraction=0.2, seed=0, standardize=False)
    recipe = RECIPES[DIGITS]
    # λ chosen on 1,293 images, scaled to this training set's 1,437 (by hand)
    assert data.num_train == 1437 and recipe.num_train == 1293
    assert config["prior_scale"] == pytest.approx(0.03 * 1437 / 1293, rel=1e-12)
    assert config["pretrain_batch_size"] == recipe.pretrain["batch_size"]
    extra = {
        "precision_prior": (250.0, 1.0),
        "precision_prior_final": (250.0, 0.01),
        "anneal_epochs": (0.5, 1.5),
    }
    settings = {**recipe.kwargs(num_train=data.num_train), **extra}
    ref = soft_weight_sharing(_pretrained(out), data, num_steps=60, progress=False, **settings)
    summary = json.loads((out / "compression.json").read_text())
    assert summary["compression_rate"] == ref.compression_rate
    assert summary["test_accuracy_after"] == ref.test_accuracy_after
    stored = summary["settings"]
    assert stored["finetune_epochs"] == 10 and stored["finetune_lr"] == 1e-3
    assert stored["remove_dead_units"] and stored["reorder_units"]
    loaded = load_compressed(out / "model.sws")
    with torch.no_grad():
        assert torch.equal(loaded(data.x_test), ref.stored_net(data.x_test))


@pytest.mark.filterwarnings("ignore::bayes_sws.health.HealthWarning")  # 5 steps: a poor network
def test_recipe_settings_yield_to_flags_and_refuse_a_preset(tmp_path):
    """A flag replaces the recipe's value (λ given: taken as is; steps given: the recipe's
    epochs dropped); a recipe and a preset together, or a recipe nobody made, are refused
    with the names to choose from. The compress command's flags replace the recipe's
    storing settings the same way."""
    given = runs.resolve_config({}, {"recipe": DIGITS, "prior_scale": 0.5, "num_steps": 7})
    assert given.prior_scale == 0.5 and given.num_steps == 7 and given.num_epochs is None
    assert given.network == "lenet-300-100" and given.mixture_lr == 1e-2
    default = runs.resolve_config({}, {"recipe": DIGITS})
    assert default.num_epochs == RECIPES[DIGITS].settings["num_epochs"]
    with pytest.raises(runs.RunError, match="give one"):
        runs.resolve_config({}, {"recipe": DIGITS, "preset": "ullrich2017"})
    with pytest.raises(runs.RunError, match="fashion-mnist/lenet-5"):
        runs.resolve_config({}, {"recipe": "mnist/resnet"})
    out = tmp_path / "run"
    config = runs.resolve_config({}, {"recipe": DIGITS, "num_steps": 5, "pretrain_epochs": 1})
    runs.fit_run(config, out=out, progress=False)
    summary = runs.compress_run(out, plots=False, reorder_units=False, finetune_epochs=0)
    assert summary["settings"]["reorder_units"] is False
    assert summary["settings"]["finetune_epochs"] == 0
    assert summary["settings"]["remove_dead_units"] is True  # the recipe's, not given


@pytest.mark.filterwarnings("ignore::bayes_sws.health.HealthWarning")  # 5 steps: a poor network
def test_a_recipe_run_keeps_the_storing_settings_it_was_fitted_with(tmp_path, monkeypatch):
    """``fit --recipe`` records the recipe's storing settings in ``recipe.json``: when a later
    release changes the recipe, ``compress`` still stores the run with the settings it had
    (read from the recipe record taken before the change), while a run without the record
    (fitted before it existed) takes the installed recipe's. A record altered to a value no
    setting accepts, or copied from another run, is refused naming the file."""
    config = runs.resolve_config({}, {"recipe": DIGITS, "num_steps": 5, "pretrain_epochs": 1})
    out, other = tmp_path / "run", tmp_path / "other"
    runs.fit_run(config, out=out, progress=False)
    runs.fit_run(config, out=other, progress=False)
    before = RECIPES[DIGITS].preset().compress
    assert (before.finetune_epochs, before.remove_dead_units) == (10, True)
    changed = {**RECIPES[DIGITS].settings, "finetune_epochs": 0, "remove_dead_units": False}
    monkeypatch.setitem(RECIPES, DIGITS, dataclasses.replace(RECIPES[DIGITS], settings=changed))
    stored = runs.compress_run(out, plots=False, reorder_units=False)["settings"]
    assert stored["finetune_epochs"] == before.finetune_epochs == 10
    assert stored["finetune_lr"] == before.finetune_lr
    assert stored["remove_dead_units"] is True and stored["reorder_units"] is False  # the flag
    record = out / runs.RECIPE_FILE
    pinned = json.loads(record.read_text())
    assert pinned["recipe"] == DIGITS and pinned["compress"]["finetune_epochs"] == 10
    (other / runs.RECIPE_FILE).write_text(record.read_text())  # another run's record
    with pytest.raises(runs.RunError, match="recipe.json belongs to run"):
        runs.compress_run(other, plots=False)
    record.write_text(json.dumps({**pinned, "compress": {"finetune_epochs": -1}}))
    with pytest.raises(runs.RunError, match="recipe.json: finetune_epochs"):
        runs.compress_run(out, plots=False)
    record.unlink()  # a run fitted before the record: the installed recipe's settings
    stored = runs.compress_run(out, plots=False, reorder_units=False)["settings"]
    assert stored["finetune_epochs"] == 0 and stored["remove_dead_units"] is False


def test_a_recipes_pretraining_becomes_the_runs_and_nothing_else_is_recorded(monkeypatch):
    """Every pretraining setting a recipe may record becomes the run's own: a recipe whose
    networks were pretrained under the cosine schedule gives its runs ``pretrain_schedule``
    cosine. A recipe recording a setting no run reproduces, or a schedule other than by
    name, is refused when it is made, naming it."""
    pretrain = {"num_epochs": 3, "lr": 2e-3, "batch_size": 32, "lr_scheduler": "cosine"}
    assert set(pretrain) == set(RECIPE_PRETRAIN)
    recipe = dataclasses.replace(RECIPES[DIGITS], pretrain=pretrain)
    monkeypatch.setitem(RECIPES, DIGITS, recipe)
    config = runs.resolve_config({}, {"recipe": DIGITS})
    assert (config.pretrain_epochs, config.pretrain_lr, config.pretrain_batch_size) == (3, 2e-3, 32)
    assert config.pretrain_schedule == "cosine"
    assert runs.resolve_config({}, {"recipe": DIGITS, "pretrain_schedule": "constant"}) != config
    with pytest.raises(ValueError, match="'weight_decay'.*num_epochs, lr, batch_size"):
        dataclasses.replace(recipe, pretrain={"weight_decay": 1e-4})
    with pytest.raises(ValueError, match="by name, one of constant, cosine"):
        dataclasses.replace(recipe, pretrain={"lr_scheduler": "step"})


@pytest.mark.parametrize("setting", [{"distill": 0.5}, {"prior_scale_warmup": 2.0}])
def test_a_recipe_whose_retraining_a_run_cannot_give_is_refused(tmp_path, monkeypatch, setting):
    """A recipe retraining with distillation or λ's warm-up (settings of the Python pipeline
    only) is refused by ``fit --recipe`` before anything is written, naming the setting,
    rather than fitted without it."""
    changed = {**RECIPES[DIGITS].settings, **setting}
    monkeypatch.setitem(RECIPES, DIGITS, dataclasses.replace(RECIPES[DIGITS], settings=changed))
    out = tmp_path / "run"
    code = cli.main(["fit", "--recipe", DIGITS, "--out", str(out), "--no-progress"])
    assert code == 2 and not out.exists()
    name, value = next(iter(setting.items()))
    with pytest.raises(runs.RunError, match=f"{name}={value!r}.*does not reproduce"):
        runs.resolve_config({}, {"recipe": DIGITS})


def test_fashion_recipe_scales_its_refit_lambda_to_the_training_set():
    """Fashion-MNIST's official 60,000 training images: the recipe's λ calibrated for a refit
    on that many (0.08 on the 54,000-image scale), times 60,000 / 54,000 (by hand), and the
    network pretrained as the benchmark did."""
    from bayes_sws.zoo import data as data_module

    try:
        data_module._find_idx_dir("fashion-mnist", None)
    except data_module.DataError:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    config = runs.resolve_config({}, {"recipe": "fashion-mnist/lenet-5"})
    assert config.data == "fashion-mnist" and config.network == "lenet-5"
    assert config.prior_scale == pytest.approx(0.08 * 60_000 / 54_000, rel=1e-12)
    assert (config.pretrain_epochs, config.pretrain_batch_size) == (20, 128)
    assert config.precision_prior_final == (250.0, 0.01) and config.pi_zero == 0.999
