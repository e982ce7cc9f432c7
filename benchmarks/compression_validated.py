"""Compression benchmark with settings chosen on a validation split; the test set read once.

For each case of ``compression.py`` (same data, networks, pretraining and Deep
Compression settings) this script

1. holds out ``--validation`` (default 10 %) of the *training* set
   (:func:`bayes_sws.compress.tuning.validation_split`) and pretrains on the rest;
2. compresses by soft weight-sharing with every λ of the case's grid and scores
   each on the validation set only
   (:func:`bayes_sws.compress.tuning.tune_soft_weight_sharing`): the chosen λ has
   the highest compression rate whose validation error is at most 0.5 points
   above the pretrained network's (the goal's margin);
3. reads the test set once: the chosen network, the pretrained network, and
   Deep Compression with Han et al.'s rates and at the chosen row's per-layer
   sparsity ("dc-matched"; once with the case's fine-tuning epochs and once with
   as many retraining epochs as soft weight-sharing had, :func:`equal_epochs`),
   all trained on the same reduced training set;
4. runs Deep Compression on the validation split, scored on it only: at each λ
   trial's per-layer sparsity ("dc-matched") and at Han et al.'s rates with the
   kept share of every layer scaled by :data:`HAN_KEEP_SCALES`, so that
   ``--figures`` draws the two methods' fronts side by side (nothing is chosen
   from these; they run last because they take longest).

``--groups layer`` gives every layer its own mixture (``soft_weight_sharing(...,
groups="layer")``: per-layer π, μ, σ and codebooks) instead of one shared by all
layers; ``--groups both`` tunes both and reports the two chosen rows side by side
(Deep Compression matched to the shared row).

``--set sws.NAME=VALUE`` (or ``dc.NAME=VALUE``) changes a setting of every soft
weight-sharing candidate (or of Deep Compression), as in ``compression.py``;
``--tune-only`` stops after step 2: it prints the validation trials (with each
retrained network's validation error before quantisation beside the compressed
one's) and never reads the test set, for exploring settings honestly. ``--jobs N`` runs N
retrainings of the tuning at a time in their own processes, over seeds and splits alike
(``tune_soft_weight_sharing(..., jobs=N)``; the same trials). ``--splits S1 S2 ...``
validates on several splits, each held out with its seed and with its own network pretrained
on the rest (seeded alike), and chooses by the means over all of them: one validation set's
luck, and one pretrained network's, moves a setting's increase by about as much as the margin
(BENCHMARKS.md). The test set then reads the chosen setting's network of every split (a row
each, and their mean); Deep Compression runs on the first split's network.

``--write`` replaces the "## Compression, chosen on validation" section of
BENCHMARKS.md.

Run from the repository root::

    python benchmarks/compression_validated.py --cases fashion-mnist/lenet-300-100 --write
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import inspect
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import compression as bench  # the cases, pretraining and Deep Compression runs

from bayes_sws.compress.tuning import Trial, Tuning, tune_soft_weight_sharing, validation_split
from bayes_sws.zoo.training import accuracy, train

SECTION = "## Compression, chosen on validation"
MARGIN = 0.5  # points of validation error a chosen λ may add (the goal's margin)

#: Deep Compression on validation: Han et al.'s kept share of every layer times these
HAN_KEEP_SCALES = (2.0, 1.0, 0.5, 0.25)
#: the validation figure's two fronts and the point families each joins
FRONTS = {
    "soft weight-sharing": ("soft weight-sharing", "chosen"),
    "Deep Compression": ("dc-han", "dc-matched"),
}


def _settings(case: bench.Case) -> dict:
    """The case's soft weight-sharing settings less λ, with Deep Compression's fine-tuning."""
    base = dict(next(iter(case.sws.values())))
    base.pop("prior_scale")
    return {
        "finetune_epochs": case.dc["centroid_epochs"],
        "finetune_lr": case.dc["lr"],
        "remove_dead_units": True,
        **base,
    }


def with_settings(
    case: bench.Case, epochs: int | None, overrides: dict[str, dict] | None = None
) -> bench.Case:
    """``case`` with every soft weight-sharing retraining ``epochs`` long (``None``: as is)
    and ``overrides`` (``compression._parse_overrides``: ``{"sws": {...}, "dc": {...},
    "pretrain": {...}}``, the last ``train``'s keyword arguments for the pretraining).

    A row's own ``anneal_epochs`` window scales with its epochs (an override's does not)."""
    sws = dict((overrides or {}).get("sws", {}))
    dc = (overrides or {}).get("dc", {})
    pretrain = (overrides or {}).get("pretrain", {})
    if epochs is None and not sws and not dc and not pretrain:
        return case

    def changed(settings: dict) -> dict:
        out = {**settings, **sws}
        if epochs is not None:
            out["num_epochs"] = epochs
            if "anneal_epochs" in settings and "anneal_epochs" not in sws:
                factor = epochs / settings["num_epochs"]
                out["anneal_epochs"] = [e * factor for e in settings["anneal_epochs"]]
        return out

    return dataclasses.replace(
        case,
        pretrain={**case.pretrain, **pretrain},
        sws={label: changed(s) for label, s in case.sws.items()},
        dc={**case.dc, **dc},
    )


def _row(name: str, method: str, pre_acc: float, net, final, result) -> dict:
    """A test-set row in compression.py's format (markdown and summary read it)."""
    return {
        "case": name,
        "method": method,
        "pretrained_accuracy": pre_acc,
        "accuracy_after": accuracy(net, final.x_test, final.y_test),
        "nonzero_fraction": result.nonzero_fraction,
        "compression_rate": result.compression_rate,
        **bench.other_rates(result.net, result.config["param_names"], result.config),
        "layers": result.layers,
    }


def held_out_pretrained(name: str, options: dict) -> tuple[bench.Case, Any, Any, torch.nn.Module]:
    """``(case, tuning, final, net)``: the case ``name`` with ``options``' epochs and
    overrides, its data split into ``tuning`` (training less the validation share, whose
    test part is the validation set) and ``final`` (the test set), and the network
    pretrained on ``tuning`` (or loaded from ``options["cache"]``)."""
    case = with_settings(bench.CASES[name], options.get("epochs"), options.get("overrides"))
    tuning, final = validation_split(bench.load(case), options["validation"], seed=options["seed"])
    held_out = dataclasses.replace(case, name=f"{name}+validation{options['validation']:g}")
    bench.say(f"{name}: pretraining on {len(tuning.x_train)} points (or loading from cache)")
    net, _ = bench.pretrained(
        held_out, tuning, seed=options["seed"], cache=options["cache"], progress=options["progress"]
    )
    return case, tuning, final, net


def run_case(name: str, options: dict) -> dict:
    """Tune on validation, then read the test set once; the rows and the trial table."""
    torch.set_num_threads(options["threads"])
    case, tuning, final, net = held_out_pretrained(name, options)
    nets, splits = [net], [tuning]
    for split in (options.get("splits") or [])[1:]:  # more validation splits, each its network
        _, more, _, more_net = held_out_pretrained(name, {**options, "seed": split})
        nets.append(more_net)
        splits.append(more)
    modes = {"shared": [None], "layer": ["layer"], "both": [None, "layer"]}
    found, walls = {}, {}
    for groups in modes[options.get("groups") or "shared"]:
        found[groups], walls[groups] = _tune(name, nets, splits, case, options, groups)
    if options.get("tune_only"):  # the test set is never read
        return {
            "trials": {str(g): _trials(f) for g, f in found.items()},
            "wall": {str(g): w for g, w in walls.items()},
        }
    # --- the test set, read once (each row logged as it comes: the slow parts follow)
    pre_acc = accuracy(net, final.x_test, final.y_test)
    rows = []
    for groups, each in found.items():
        kind = "" if groups is None else " per-layer"
        label = f"sws{kind} {_setting_label(each.chosen.settings)} (chosen on validation)"
        rows += _chosen_rows(name, label, nets, each.chosen, final, options, pre_acc)
    label = rows[0]["method"]
    prune, clusters = bench.matched_dc_settings(rows[0])
    matched = f"dc-matched to {label.split(' (')[0]}"
    for method, prune_fraction, num_clusters, overrides in (
        ("dc-han", case.han["prune_fraction"], case.han["num_clusters"], {}),
        (matched, prune, clusters, {}),
        (f"{matched}, equal epochs", prune, clusters, equal_epochs(case)),
    ):
        bench.say(f"{name}: {method}")
        row = bench.run_dc(
            case,
            copy.deepcopy(net),
            final,
            name=method,
            prune_fraction=prune_fraction,
            num_clusters=num_clusters,
            seed=options["seed"],
            progress=options["progress"],
            overrides=overrides,
            remove_dead_units=True,
            reorder_units=True,
        )
        rows.append({**row, "case": name, "pretrained_accuracy": pre_acc})
        _say_row(rows[-1])
    # Deep Compression's fronts on validation, for the figure (no choice depends on them)
    dc_trials = _validation_dc(name, net, tuning, case, options, next(iter(found.values())))
    first = next(iter(found))
    out = {
        "rows": rows,
        "trials": _trials(found[first]),
        "dc_trials": dc_trials,
        "within_margin": found[first].within_margin,
        "wall": walls[first],
    }
    if "layer" in found and first is None:  # --groups both: the per-layer trials too
        out["trials_per_layer"] = _trials(found["layer"])
        out["wall_per_layer"] = walls["layer"]
    return out


def _chosen_rows(
    name: str, label: str, nets: list, chosen: Trial, final, options: dict, pre_acc: float
) -> list[dict]:
    """The chosen setting's test rows: its (first seed's) network on the test set, one per
    validation split's network with several splits (``, split S``), then their mean."""
    results = chosen.split_results or (chosen.result,)
    seeds = options.get("splits") or [options["seed"]]
    rows = []
    for i, (net, result, seed) in enumerate(zip(nets, results, seeds, strict=True)):
        before = pre_acc if i == 0 else accuracy(net, final.x_test, final.y_test)
        method = label if len(results) == 1 else f"{label}, split {seed}"
        rows.append(_row(name, method, before, result.stored_net, final, result))
        _say_row(rows[-1])
    if len(rows) > 1:
        keys = [k for k, v in rows[0].items() if isinstance(v, float)]
        mean = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
        splits = ", ".join(map(str, seeds))
        rows.append({**rows[0], **mean, "method": f"{label}, mean over splits {splits}"})
        rows[-1]["layers"] = []  # a mean of networks has no layers of its own
        _say_row(rows[-1])
    return rows


def _setting_label(settings: dict) -> str:
    """``λ=0.095`` and, with unit pruning, ``λ=0.095, units pruned within 0.005``."""
    label = f"λ={settings['prior_scale']:g}"
    if settings.get("prune_units") is not None:
        label += f", units pruned within {settings['prune_units']:g}"
    return label


def _say_row(row: dict) -> None:
    bench.say(
        f"{row['case']}: test set, {row['method']}: error "
        f"{100 * (1 - row['pretrained_accuracy']):.2f} % → {100 * (1 - row['accuracy_after']):.2f} %"
        f" at {row['compression_rate']:.1f}x"
    )


def _tune(name: str, net, tuning, case: bench.Case, options: dict, groups: str | None):
    """λ chosen on validation for one kind of mixture (shared, or one per layer), and seconds."""
    grid = options.get("prior_scales") or case.recipe.grid
    # a unit-pruning budget acts after retraining: each λ (and seed) is retrained once. Given
    # budgets replace the recipe's, "off" (None) included; without them the recipe's applies
    budgets = options.get("prune_units")
    candidates = [
        {"prior_scale": s, **({} if budgets is None else {"prune_units": b})}
        for s in grid
        for b in budgets or [None]
    ]
    kind = "shared mixture" if groups is None else "a mixture per layer"
    bench.say(f"{name}: soft weight-sharing ({kind}) at λ = {', '.join(map(str, grid))}")
    start = time.perf_counter()
    extra = {} if groups is None else {"groups": groups}
    seeds = options.get("seeds")
    extra.update({"seeds": seeds} if seeds else {"seed": options["seed"]})
    found = tune_soft_weight_sharing(
        net,
        tuning,
        candidates,
        max_error_increase=MARGIN,
        standard_errors=options.get("standard_errors") or 0.0,
        target_rate=options.get("target_rate"),
        progress=options["progress"],
        jobs=options.get("jobs") or 1,
        **_settings(case),
        **extra,
    )
    wall = time.perf_counter() - start
    bench.say(f"{name}: validation trials ({kind})\n{found.table()}")
    return found, wall


def equal_epochs(case: bench.Case) -> dict:
    """Deep Compression's fine-tuning stretched to soft weight-sharing's retraining epochs.

    Soft weight-sharing retrains ``num_epochs`` under the prior and then fine-tunes the
    codebook for ``finetune_epochs`` (:func:`_settings`), twice where it prunes whole units
    (before they go and after); Deep Compression fine-tunes after pruning, then trains the
    centroids for ``centroid_epochs``. The override gives pruning's fine-tuning the
    difference, so both see the same number of epochs.
    """
    settings = _settings(case)
    tunings = 2 if settings.get("prune_units") is not None else 1
    total = settings["num_epochs"] + tunings * settings["finetune_epochs"]
    return {"finetune_epochs": max(total - case.dc["centroid_epochs"], case.dc["finetune_epochs"])}


def han_scaled(han: dict, scale: float) -> dict:
    """Han et al.'s per-layer pruning fractions with each layer's kept share times ``scale``."""
    return {
        layer: round(min(max(1.0 - (1.0 - fraction) * scale, 0.0), 0.999), 6)
        for layer, fraction in han["prune_fraction"].items()
    }


def _validation_dc(name: str, net, tuning, case: bench.Case, options: dict, found: Tuning):
    """Deep Compression matched to each λ trial and at Han's rates scaled, scored on validation
    (``net`` and ``tuning``: with several splits, the first split's network and split)."""
    runs = [
        (
            f"matched {_setting_label(t.settings)}",
            "dc-matched",
            *bench.matched_dc_settings({"layers": t.result.layers}),
        )
        for t in found.trials
    ]
    runs += [
        ("Han" if s == 1 else f"Han, keep ×{s:g}", "dc-han", han_scaled(case.han, s), None)
        for s in HAN_KEEP_SCALES
    ]
    # the pretrained net's on this split (a trial's is the mean over the splits, when several)
    before = 1.0 - accuracy(net, tuning.x_test, tuning.y_test)
    out = []
    for label, family, prune, clusters in runs:
        bench.say(f"{name}: Deep Compression on validation, {label}")
        row = bench.run_dc(
            case,
            copy.deepcopy(net),
            tuning,  # its test set is the validation split
            name=label,
            prune_fraction=prune,
            num_clusters=case.han["num_clusters"] if clusters is None else clusters,
            seed=options["seed"],
            progress=options["progress"],
            overrides={},
            remove_dead_units=True,
            reorder_units=True,
        )
        out.append(
            {
                "label": label,
                "family": family,
                "prune_fraction": prune,
                "validation_error_before": before,
                "validation_error_after": 1.0 - row["accuracy_after"],
                "compression_rate": row["compression_rate"],
            }
        )
    return out


def _trials(found: Tuning) -> list[dict]:
    return [
        {
            "prior_scale": t.settings["prior_scale"],
            "settings": t.settings,
            "config": t.result.config,  # every setting of the (first seed's) retraining
            "validation_error_before": t.validation_error_before,
            "validation_error_retrained": t.validation_error_retrained,
            "validation_error_after": t.validation_error_after,
            "increase_se": t.increase_se,
            "compression_rate": t.compression_rate,
            # each retraining's (over splits, then seeds); "before" only with several splits
            "seed_errors_before": t.seed_errors_before,
            "seed_errors_retrained": t.seed_errors_retrained,
            "seed_errors_after": t.seed_errors_after,
            "seed_rates": t.seed_rates,
            "chosen": t is found.chosen,
        }
        for t in found.trials
    ]


def trial_points(trials: list[dict], dc_trials: list[dict] = ()) -> list[dict]:
    """The validation trials (λ, then Deep Compression) as points of the rate figure."""
    sws = [
        {
            "family": "chosen" if t["chosen"] else "soft weight-sharing",
            "label": _setting_label(t.get("settings") or t),
            "rate": t["compression_rate"],
            "error": 100 * (t["validation_error_after"] - t["validation_error_before"]),
        }
        for t in trials
    ]
    return sws + [
        {
            "family": t["family"],
            "label": t["label"],
            "rate": t["compression_rate"],
            "error": 100 * (t["validation_error_after"] - t["validation_error_before"]),
        }
        for t in dc_trials
    ]


def save_figures(results: dict[str, dict], directory: Path) -> list[Path]:
    """Per case: the validation trials, and the test rows, as rate against Δ error."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, result in results.items():
        stem = name.replace("/", "_")
        fig = bench.plot_rate_against_error(
            trial_points(result["trials"], result.get("dc_trials", [])),
            title=f"{name}: compression against validation error",
            ylabel="Δ validation error over pretrained (points)",
            fronts=FRONTS,
            margin=(MARGIN, "the choice's margin"),
        )
        paths.append(directory / f"{stem}-validation-trials.png")
        fig.savefig(paths[-1], dpi=bench.FIGURE_DPI)
        paths += bench.save_rate_figures(result["rows"], directory)
    return paths


def _table(rows: list[dict]) -> list[str]:
    lines = [
        "| case | method | test error % pretrained → after | Δ error (points) | compression × "
        "| (all units ×) | (Rice-coded positions ×) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['case']} | {row['method']} | {bench._pct(1 - row['pretrained_accuracy'])} → "
            f"{bench._pct(1 - row['accuracy_after'])} | {bench._delta(row)} | "
            f"**{row['compression_rate']:.1f}** | {row['compression_rate_all_units']:.1f} | "
            f"{row['compression_rate_rice']:.1f} |"
        )
    return lines


def rule_text(options: dict) -> str:
    """How the settings were chosen (``--standard-errors``, ``--target-rate``), in words."""
    k = options.get("standard_errors") or 0
    bound = f" plus {k:g} standard error{'' if k == 1 else 's'}" if k else ""
    within = (
        f"whose validation increase{bound} is within {MARGIN} points of the pretrained "
        "validation error"
    )
    if options.get("target_rate"):
        return (
            f"Settings chosen as the least increase among those {within} and whose mean rate "
            f"reaches {options['target_rate']:g}× (else the highest compression rate among them)"
        )
    return f"Settings chosen as the highest compression rate among those {within}"


def _split_words(options: dict) -> str:
    """Which validation split(s) the choice was made on, in words."""
    splits = options.get("splits") or []
    if len(splits) > 1:
        return f"{len(splits)} splits, seeds {', '.join(map(str, splits))}, a network pretrained on each"
    return f"seed {options['seed']}"


def section(results: dict[str, dict], command: str, options: dict, recorded: str) -> str:
    lines = [
        SECTION,
        "",
        f"Command: `{command}`  ",
        f"Run: {recorded}  ",
        f"Machine: {bench.machine_line(options['threads'])}",
        "",
        f"{100 * options['validation']:g} % of the training set held out for validation "
        f"({_split_words(options)}); every network here, pretrained and compressed, trained on "
        f"the rest. {rule_text(options)}; the test set was read once, for the rows below.",
        "",
        *_table([row for result in results.values() for row in result["rows"]]),
    ]
    for name, result in results.items():
        blocks = [(name, result["trials"], result["wall"])]
        if "trials_per_layer" in result:
            blocks.append(
                (f"{name}, per-layer", result["trials_per_layer"], result["wall_per_layer"])
            )
        for title, trials, wall in blocks:
            lines += _trial_table(title, trials, wall)
        lines += _dc_trial_table(name, result.get("dc_trials", []), options.get("splits"))
        if not result["within_margin"]:
            lines += ["", f"No λ stayed within {MARGIN} points on validation; the smallest loss."]
    return "\n".join(lines) + "\n"


def _trial_table(title: str, trials: list[dict], wall: float) -> list[str]:
    """The markdown table of one tuning's validation trials."""
    lines = ["", f"Validation trials, {title} (tuning took {bench._time(wall)}):", ""]
    lines += [
        "| λ | validation error % pretrained → after | Δ (points) | standard error | "
        "compression × | |",
        "| ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for t in trials:
        se = t.get("increase_se")  # runs before the standard error was recorded: n/a
        lines.append(
            f"| {_setting_label(t.get('settings') or t).removeprefix('λ=')} | "
            f"{100 * t['validation_error_before']:.2f} → "
            f"{100 * t['validation_error_after']:.2f} | "
            f"{100 * (t['validation_error_after'] - t['validation_error_before']):+.2f} | "
            + ("n/a" if se is None else f"{se:.2f}")
            + f" | {t['compression_rate']:.1f} | {'**chosen**' if t['chosen'] else ''} |"
        )
    return lines


def _dc_trial_table(name: str, dc_trials: list[dict], splits: list[int] | None) -> list[str]:
    """The markdown table of Deep Compression's validation runs (none: no lines); with
    several ``splits``, it ran on the first one's network and is scored on that split."""
    if not dc_trials:
        return []
    where = "the validation split"
    if splits and len(splits) > 1:
        where = f"validation split {splits[0]} (split {splits[0]}'s network)"
    lines = ["", f"Deep Compression on {where}, {name}:", ""]
    lines += [
        "| settings | validation error % pretrained → after | Δ (points) | compression × |",
        "| --- | ---: | ---: | ---: |",
    ]
    for t in dc_trials:
        lines.append(
            f"| {t['label']} | {100 * t['validation_error_before']:.2f} → "
            f"{100 * t['validation_error_after']:.2f} | "
            f"{100 * (t['validation_error_after'] - t['validation_error_before']):+.2f} | "
            f"{t['compression_rate']:.1f} |"
        )
    return lines


def _budget(text: str) -> float | None:
    """A ``--prune-units`` value: ``off`` (no pruning) or a budget >= 0."""
    if text == "off":
        return None
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"a budget must be >= 0 or 'off', got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(bench.CASES), default=[bench.FULL[0]])
    parser.add_argument("--validation", type=float, default=0.1, help="held-out share")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=bench.DEFAULT_CACHE)
    parser.add_argument("--json", type=Path, help="also write all numbers to this JSON file")
    parser.add_argument(
        "--figures", type=Path, help="save the rate-against-error plots of each case here"
    )
    parser.add_argument(
        "--write", action="store_true", help=f"replace '{SECTION}' of BENCHMARKS.md"
    )
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument(
        "--groups",
        choices=("shared", "layer", "both"),
        default="shared",
        help="one mixture shared by all layers, one per layer, or both side by side",
    )
    parser.add_argument(
        "--prior-scales",
        nargs="+",
        type=float,
        metavar="λ",
        help="the λ grid to choose from (default: the case's recipe's, pipeline.RECIPES)",
    )
    parser.add_argument(
        "--prune-units",
        nargs="+",
        type=_budget,
        metavar="B",
        help="also choose among unit-pruning budgets (prune_units: training loss a point the "
        "pruning may add; 'off' for none), each scored on every λ's retraining",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        help="soft weight-sharing's retraining epochs (default: the case's; Deep Compression's "
        "equal-epochs row follows)",
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        help="retrain every λ once per seed and choose by the means (default: one retraining "
        "at --seed); the test row is the first seed's",
    )
    bench.add_set_option(
        parser,
        "change a setting of every soft weight-sharing candidate (sws.NAME), of Deep "
        "Compression (dc.NAME) or of the pretraining (pretrain.NAME, a keyword of "
        "bayes_sws.zoo.training.train; a network of its own, cached apart), e.g. "
        "sws.num_components=9, pretrain.lr_scheduler=cosine",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="retrainings of the tuning run at a time (over seeds and splits), each in its "
        "own process with --threads torch threads (the trials are those of --jobs 1)",
    )
    parser.add_argument(
        "--standard-errors",
        type=float,
        default=0.0,
        metavar="K",
        help="choose the highest rate whose validation increase plus K paired standard errors "
        "is within the margin (tune_soft_weight_sharing(standard_errors=K); default 0)",
    )
    parser.add_argument(
        "--target-rate",
        type=float,
        metavar="R",
        help="choose the least validation increase (plus K standard errors) among the "
        "settings within the margin whose mean rate reaches R×, e.g. a case's goal "
        "(tune_soft_weight_sharing(target_rate=R)); default: the highest rate within the margin",
    )
    parser.add_argument(
        "--splits",
        nargs="+",
        type=int,
        metavar="S",
        help="validate on several splits (repeated hold-out): one per seed S, each with its "
        "own network pretrained on its training part (seeded S), every candidate retrained "
        "on each and chosen by the means over all (tune_soft_weight_sharing with a network "
        "and a split each); the chosen setting's network of every split is read on the "
        "test set (a row each, and their mean; Deep Compression on the first split's "
        "network). Default: one split, at --seed",
    )
    parser.add_argument(
        "--tune-only",
        action="store_true",
        help="stop after the validation trials (print them; the test set is never read)",
    )
    return parser


#: train's arguments the benchmark sets itself (the network, data, seed and progress), which
#: ``--set pretrain.NAME`` may not change.
_PRETRAIN_FIXED = ("net", "x", "y", "seed", "progress", "before_step", "after_step")


def _checked(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The parsed arguments; a parser error for any that cannot run, before anything does."""
    args = parser.parse_args(argv)
    if args.tune_only and (args.write or args.figures):
        parser.error("--tune-only writes no rows: drop --write and --figures")
    if args.splits and len(set(args.splits)) != len(args.splits):
        parser.error(f"--splits must be distinct seeds, got {args.splits}")
    if args.splits:
        args.seed = args.splits[0]
    if not args.standard_errors >= 0:
        parser.error(f"--standard-errors must be >= 0, got {args.standard_errors}")
    if args.target_rate is not None and not args.target_rate >= 1:
        parser.error(f"--target-rate must be a compression rate ≥ 1 (×), got {args.target_rate}")
    if args.jobs < 1:
        parser.error(f"--jobs must be a positive number of processes, got {args.jobs}")
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be a positive number of epochs, got {args.epochs}")
    if args.prior_scales and min(args.prior_scales) < 0:
        parser.error(f"--prior-scales must be λ ≥ 0, got {args.prior_scales}")
    args.overrides = bench._parse_overrides(args.overrides, ("sws", "dc", "pretrain"))
    settable = [k for k in inspect.signature(train).parameters if k not in _PRETRAIN_FIXED]
    for name in args.overrides["pretrain"]:
        if name not in settable:
            parser.error(
                f"--set pretrain.{name}: not a pretraining setting one can change; "
                f"train's settings are {', '.join(settable)}"
            )
    return args


def main(argv: list[str] | None = None) -> int:
    args = _checked(_parser(), argv)
    options = vars(args)
    version = bench.code_version()  # the code that runs, before anything is written
    results = {name: run_case(name, options) for name in args.cases}
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    if args.tune_only:
        return 0
    command = "python benchmarks/compression_validated.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    recorded = f"{time.strftime('%Y-%m-%d')}, code at {version}"
    text = section(results, command.strip(), options, recorded)
    print(text)
    for path in save_figures(results, args.figures) if args.figures else ():
        bench.say(f"wrote {path}")
    if args.write:
        bench.write_section(bench.REPO / "BENCHMARKS.md", text, section=SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
