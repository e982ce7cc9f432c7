"""One vocabulary of settings: PriorSettings, FitSettings, CompressSettings, presets.

Oracles: the objects built the other way (keywords vs records) and compared by
what they record; the parser's own help text; a TOML file written by hand;
closed forms (the tempered Gamma keeps its mode); and, for Nowlan & Hinton's
fixed mixture, E(w) + λΩ(w) with Ω from scipy (PRML 5.138, 5.139).
"""

import copy
import dataclasses
import json
import math
import warnings

import numpy as np
import pytest
import torch
from conftest import assert_close
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoDelta, init_to_value
from scenarios import perturbed_values, small_data, small_net
from scipy import stats
from scipy.special import logsumexp

import bayes_sws as sws
from bayes_sws.compress.pipeline import soft_weight_sharing
from bayes_sws.infer.svi import SVIEngine, local_params
from bayes_sws.runs import cli
from bayes_sws.runs.settings import RunConfig, load_config_file, resolve_config
from bayes_sws.settings import (
    PRESETS,
    CompressSettings,
    FitSettings,
    PriorSettings,
)

FIXED_PI = [0.6, 0.25, 0.15]
FIXED_MU = [0.0, -0.4, 0.3]
FIXED_SIGMA = [0.05, 0.2, 0.3]


# --------------------------------------------------------------------------- defaults
def test_mixture_prior_defaults_are_prior_settings():
    by_keywords, by_record = sws.MixturePrior(), sws.MixturePrior.from_settings(PriorSettings())
    assert by_keywords.settings == by_record.settings == PriorSettings()
    net = small_net(4)
    values = sws.SWSModel(net, by_keywords).init_values()
    like = torch.zeros((), dtype=torch.float64)
    assert by_keywords.site_names == by_record.site_names
    assert_close(
        by_keywords.log_hyperprior(values, like), by_record.log_hyperprior(values, like), rtol=0
    )


def test_fit_defaults_are_fit_settings():
    x, y = small_data("categorical")
    results = []
    for kwargs in ({"num_steps": 3}, {"settings": FitSettings(num_steps=3)}):
        model = sws.SWSModel(small_net(4), sws.MixturePrior(3))
        results.append(sws.fit(model, x, y, **kwargs))
    assert results[0].config == results[1].config
    assert_close(results[0].losses, results[1].losses, rtol=0)
    defaults = FitSettings()
    for name in ("optimizer", "lr", "num_particles", "init_scale", "seed", "lbfgs_tolerance"):
        assert results[0].config[name] == getattr(defaults, name), name
    assert defaults.batch_size is None and results[0].config["batch_size"] == len(x)  # full batch


def test_fit_takes_settings_or_keywords_not_both():
    x, y = small_data("categorical")
    model = sws.SWSModel(small_net(4), sws.MixturePrior(3))
    with pytest.raises(TypeError, match=r"keywords lr, not both; e.g. settings.replace\(lr="):
        sws.fit(model, x, y, settings=FitSettings(num_steps=2), lr=0.1)
    with pytest.raises(TypeError, match="FitSettings has no setting 'steps'"):
        FitSettings().replace(steps=3)


def test_num_epochs_counts_passes_over_the_data():
    x, y = small_data("categorical")  # 40 points, batches of 16: 2 per epoch
    model = sws.SWSModel(small_net(4), sws.MixturePrior(3))
    result = sws.fit(model, x, y, num_epochs=3, batch_size=16)
    assert len(result.losses) == 3 * (40 // 16)


def test_run_config_defaults_are_the_settings_defaults():
    config = RunConfig()
    assert config.prior_settings() == PriorSettings()
    # a run directory's two documented own settings (runs/settings.py _RunLength); all else shared
    assert (config.batch_size, config.checkpoint_every) == (128, 100)
    assert config.fit_settings() == FitSettings(batch_size=128, checkpoint_every=100)
    assert config.total_steps(1000) == FitSettings().num_steps


def _tiny_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 8, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    return x[:48], y[:48], x[48:], y[48:]


def test_soft_weight_sharing_defaults_are_the_compression_preset():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    data = _tiny_data()
    by_default = soft_weight_sharing(copy.deepcopy(net), data, num_steps=2)
    by_name = soft_weight_sharing(
        copy.deepcopy(net), data, preset=PRESETS["compression"], num_steps=2
    )
    assert {k: v for k, v in by_default.config.items() if k != "preset"} == {
        k: v for k, v in by_name.config.items() if k != "preset"
    }
    preset = PRESETS["compression"]
    config = by_default.config
    for name in ("num_components", "pi_zero", "mixing_concentration", "prior_scale"):
        assert config[name] == getattr(preset.prior, name), name
    assert config["precision_prior"] == list(preset.prior.precision_prior)
    assert config["zero_precision_prior"] == list(preset.prior.zero_precision_prior)
    for name in ("lr", "mixture_lr"):
        assert config[name] == getattr(preset.fit, name), name
    assert config["batch_size"] == min(preset.fit.batch_size, 48)  # never more than the data
    for name in ("merge_threshold", "merge_criterion", "finetune_epochs", "remove_dead_units"):
        assert config[name] == getattr(preset.compress, name), name
    assert preset.compress == CompressSettings()


# --------------------------------------------------------------------------- command line
def _help_text(capsys) -> str:
    with pytest.raises(SystemExit):
        cli.main(["fit", "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_every_setting_has_a_flag(capsys):
    text = _help_text(capsys)
    flags = set(text.replace(",", " ").replace("[", " ").replace("]", " ").split())
    names = [f.name for f in dataclasses.fields(RunConfig)]
    names += [
        f.name
        for cls in (PriorSettings, FitSettings)
        for f in dataclasses.fields(cls)
        if f.metadata["kind"] is not None
    ]
    missing = sorted(n for n in set(names) if "--" + n.replace("_", "-") not in flags)
    assert not missing
    for old in ("--components", "--steps", "--epochs"):  # old names kept as aliases
        assert old in flags
    assert "--preset {default,compression,ullrich2017}" in text


def _toml(values: dict) -> str:
    """A TOML document written by hand (None values left out, as TOML has no null)."""
    lines = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, (list, tuple)):
            lines.append(f"{key} = [{', '.join(repr(v) for v in value)}]")
        elif isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        else:
            lines.append(f"{key} = {value!r}")
    return "\n".join(lines) + "\n"


def test_toml_round_trip(tmp_path):
    config = RunConfig.from_dict(
        {
            "num_components": 5,
            "precision_prior": [3.0, 0.1],
            "zero_precision_prior": [4.0, 0.01],
            "lr": 0.01,
            "mixture_lr": 0.02,
            "num_epochs": 3,
            "hidden": [12, 7],
            "ordered_means": True,
            "guide": "normal",
            "collapse_threshold": 1e-3,
        }
    )
    path = tmp_path / "run.toml"
    path.write_text(_toml(config.to_dict()))
    assert resolve_config(load_config_file(path), file_name=str(path)) == config
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_old_names_are_read_with_a_warning(tmp_path):
    path = tmp_path / "old.toml"
    path.write_text("components = 4\nsteps = 10\n")
    with pytest.warns(FutureWarning, match="'components' is now 'num_components'"):
        config = resolve_config(load_config_file(path), file_name=str(path))
    assert config.num_components == 4 and config.num_steps == 10
    with pytest.warns(FutureWarning, match="--components is now --num-components"):
        flagged = resolve_config(
            {}, {"num_components": 4}, flag_names={"num_components": "--components"}
        )
    assert flagged.num_components == 4
    # an existing run's identity keeps the names it was digested under
    identity = config.identity_settings()
    assert identity["components"] == 4 and identity["steps"] == 10 and "num_steps" not in identity
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reading a run's own config.json does not warn
        assert RunConfig.from_dict({"components": 4}, warn_legacy=False).num_components == 4


# --------------------------------------------------------------------------- presets
def test_ullrich_preset_tempers_the_papers_hyperpriors():
    preset = PRESETS["ullrich2017"]
    lam = 0.003
    prior = sws.MixturePrior.from_settings(preset.prior.replace(prior_scale=lam))
    shape, rate = preset.prior.precision_prior
    # Gamma(a, b)^λ renormalised: the mode (a - 1)/b is kept and the log-density scales by λ
    assert_close(
        (prior.precision_concentration - 1) / prior.precision_rate, (shape - 1) / rate, rtol=1e-12
    )
    grid = np.array([100.0, 2000.0, 9000.0])
    tempered = stats.gamma.logpdf(
        grid, prior.precision_concentration, scale=1 / prior.precision_rate
    )
    paper = lam * stats.gamma.logpdf(grid, shape, scale=1 / rate)
    assert_close(np.diff(tempered), np.diff(paper), rtol=1e-9)  # equal up to the normaliser
    assert prior.num_components == 17 and prior.pi_zero == 0.99


def test_preset_from_the_command_line_and_toml(tmp_path):
    by_flag = resolve_config({}, {"preset": "ullrich2017", "num_steps": 5})
    expected = PRESETS["ullrich2017"].prior
    assert by_flag.prior_settings() == expected.replace(init_pi_zero=by_flag.init_pi_zero)
    assert by_flag.num_steps == 5 and by_flag.num_epochs is None  # the flag's length wins
    path = tmp_path / "paper.toml"
    path.write_text('preset = "ullrich2017"\nnum_components = 9\n')
    by_file = resolve_config(load_config_file(path), file_name=str(path))
    assert by_file.num_components == 9 and by_file.temper_hyperprior
    assert by_file.num_epochs == PRESETS["ullrich2017"].fit.num_epochs


# --------------------------------------------------------------------------- the MAP rule
def test_the_map_rule_is_one_rule_everywhere():
    low = PriorSettings(precision_prior=(0.5, 1.0))
    assert low.map_problems() == [
        "precision_prior[0] = precision_concentration (Gamma shape) = 0.5 < 1"
    ]
    x, y = small_data("categorical")
    model = sws.SWSModel(small_net(4), sws.MixturePrior.from_settings(low))
    messages = []
    with pytest.raises(ValueError) as err:
        sws.fit(model, x, y, num_steps=1)
    messages.append(str(err.value))
    with pytest.raises(ValueError) as err:
        RunConfig.from_dict({"precision_prior": [0.5, 1.0]})
    messages.append(str(err.value))
    assert messages[1].startswith(messages[0])  # the run adds its settings: (settings: ...)
    assert "and needs hyperprior concentrations >= 1" in messages[0]  # phrased once


# --------------------------------------------------------------------------- fixed mixture
def _fixed_model(**fixed):
    prior = sws.MixturePrior(3, **fixed)
    return sws.SWSModel(small_net(1), prior, likelihood="gaussian", prior_scale=0.7)


def test_nowlan_hinton_fixed_mixture_loss_is_e_plus_lambda_omega():
    model = _fixed_model(fixed_pi=FIXED_PI, fixed_mu=FIXED_MU, fixed_sigma=FIXED_SIGMA)
    assert model.prior.site_names == ()  # no latent hyperparameters at all
    x, y = small_data("gaussian")
    values = perturbed_values(model)
    with local_params():
        guide = AutoDelta(model, init_loc_fn=init_to_value(values=values))
        loss = Trace_ELBO().differentiable_loss(model, guide, x, y)
    net = model.network_with(values)
    with torch.no_grad():
        resid = (y - net(x).squeeze(-1)).numpy()
    data = 0.5 * (resid**2).sum() + len(resid) / 2 * math.log(2 * math.pi)  # E(w) + const
    w = np.concatenate([values[s].detach().numpy().reshape(-1) for s in model.weight_site_names])
    log_mix = np.log(FIXED_PI) + stats.norm.logpdf(w[:, None], FIXED_MU, FIXED_SIGMA)
    omega = -logsumexp(log_mix, axis=1).sum()  # (5.138)
    assert_close(loss, data + 0.7 * omega, rtol=1e-10)  # (5.139)
    # the engine (and its fast MAP path) computes the same objective
    engine = SVIEngine(model, x, y, guide="map", batch_size=None)
    engine.init()
    start = engine.guide.median()
    w0 = np.concatenate([start[s].detach().numpy().reshape(-1) for s in model.weight_site_names])
    with torch.no_grad():
        r0 = (y - model.network_with(start)(x).squeeze(-1)).numpy()
    omega0 = -logsumexp(
        np.log(FIXED_PI) + stats.norm.logpdf(w0[:, None], FIXED_MU, FIXED_SIGMA), axis=1
    ).sum()
    expected0 = 0.5 * (r0**2).sum() + len(r0) / 2 * math.log(2 * math.pi) + 0.7 * omega0
    assert_close(engine.loss(), expected0, rtol=1e-10)


def test_fixed_mixture_is_recorded_in_the_trace():
    import pyro

    model = _fixed_model(fixed_pi=FIXED_PI, fixed_mu=FIXED_MU, fixed_sigma=FIXED_SIGMA)
    x, y = small_data("gaussian")
    trace = pyro.poutine.trace(model).get_trace(x, y)
    latent = [n for n, s in trace.nodes.items() if n.startswith("sws.") and s["type"] == "sample"]
    assert sorted(latent) == ["sws.mu", "sws.pi", "sws.sigma"]  # the deterministic sites only
    for name, expected in (("sws.pi", FIXED_PI), ("sws.mu", FIXED_MU), ("sws.sigma", FIXED_SIGMA)):
        assert_close(trace.nodes[name]["value"], expected, rtol=1e-15)


def test_partly_fixed_mixture_keeps_the_other_sites():
    model = _fixed_model(fixed_mu=FIXED_MU)
    assert model.prior.site_names == ("sws.pi_zero", "sws.mixing", "sws.precisions")
    mixture = model.prior.mixture(model.init_values(), torch.zeros((), dtype=torch.float64))
    assert_close(mixture.mu, FIXED_MU, rtol=0)
    model = _fixed_model(fixed_pi=FIXED_PI, fixed_sigma=FIXED_SIGMA)
    assert model.prior.site_names == ("sws.means",)


@pytest.mark.parametrize(
    ("fixed", "message"),
    [
        ({"fixed_pi": [0.5, 0.3, 0.3]}, "fixed_pi must be positive and sum to 1"),
        ({"fixed_pi": [0.5, 0.5]}, "fixed_pi must hold num_components = 3 values"),
        ({"fixed_mu": [0.1, 0.0, 0.2]}, r"fixed_mu\[0\] must be 0 with zero_component=True"),
        ({"fixed_sigma": [0.1, 0.0, 0.2]}, "fixed_sigma must be > 0"),
        ({"fixed_sigma": [0.1] * 3, "fixed_precision": 4.0}, "fixed_precision or fixed_sigma"),
        ({"fixed_pi": FIXED_PI, "pi_zero": 0.5}, "pi_zero or fixed_pi"),
    ],
)
def test_bad_fixed_mixture_is_named(fixed, message):
    with pytest.raises(ValueError, match=message):
        sws.MixturePrior(3, **fixed)
