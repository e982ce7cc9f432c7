"""Where a compressed network's error comes from: one retraining, many quantisations.

Retrains one case of ``compression.py`` once by soft weight-sharing (on the training
set less the validation split of ``compression_validated.py``, the same pretrained
network) and then quantises that one retrained network several ways, each scored on
the validation split only (the test set is never read):

- the case's settings as they are;
- assignment by likelihood instead of responsibility; no merging of components;
- every prior-carrying tensor in turn kept unquantised (``keep_float``), which
  shows the layer whose quantisation costs the most;
- codebook fine-tuning (:func:`bayes_sws.compress.finetune_codebook`) for each
  ``--finetune-epochs`` × ``--finetune-lrs``.

Each row gives the validation error added to the pretrained network's (points)
by the retrained network before quantisation, right after quantisation, and at
the end, and the compression rate. Run from the repository root::

    python benchmarks/quantisation_loss.py --case fashion-mnist/lenet-5 --prior-scale 0.15
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compression as bench
import compression_validated as validated

from bayes_sws.compress.pipeline import compress_result, soft_weight_sharing


def variants(param_names: list[str], epochs: list[int], lrs: list[float]) -> list[tuple]:
    """``(label, compress_result keywords)`` of every quantisation tried."""
    rows: list[tuple] = [
        ("as set", {}),
        ("assignment by likelihood", {"assignment": "likelihood"}),
        ("no merging", {"merge_threshold": 0.0}),
    ]
    rows += [(f"{name} unquantised", {"keep_float": [name]}) for name in param_names]
    rows += [
        (
            f"codebook fine-tuning {e} epoch(s) at lr {lr:g}",
            {"finetune_epochs": e, "finetune_lr": lr},
        )
        for e in epochs
        for lr in lrs
    ]
    return rows


def run(options: dict) -> list[dict]:
    """The retraining and every variant's validation scores (:func:`variants`)."""
    torch.set_num_threads(options["threads"])
    name = options["case"]
    case, tuning, _, net = validated.held_out_pretrained(name, options)
    settings = validated._settings(case)
    fixed = {k: settings.pop(k) for k in ("finetune_epochs", "finetune_lr")}
    bench.say(
        f"{name}: retraining at λ = {options['prior_scale']:g}, seed {options['retrain_seed']}"
    )
    retrained = soft_weight_sharing(
        net,
        tuning,
        progress=options["progress"],
        **{**settings, "prior_scale": options["prior_scale"], "seed": options["retrain_seed"]},
    )
    pretrained_error = 1.0 - retrained.test_accuracy_pretrained  # on the validation split
    common = {
        "remove_dead_units": settings.get("remove_dead_units", True),
        "reorder_units": settings.get("reorder_units", True),
        "finetune_data": (tuning.x_train, tuning.y_train),
        "finetune_batch_size": settings.get("batch_size", 128),
        "seed": options["retrain_seed"],
        **fixed,
    }
    rows = []
    names = list(retrained.config["param_names"])
    for label, change in variants(names, options["finetune_epochs"], options["finetune_lrs"]):
        result = compress_result(
            retrained.fit, tuning.x_test, tuning.y_test, **{**common, **change}
        )
        rows.append(
            {
                "variant": label,
                **{
                    f"delta_{stage}": 100
                    * (1.0 - getattr(result, f"test_accuracy_{when}") - pretrained_error)
                    for stage, when in (
                        ("retrained", "before"),
                        ("quantised", "quantized"),
                        ("final", "after"),
                    )
                },
                "compression_rate": result.compression_rate,
            }
        )
        bench.say(json.dumps(rows[-1]))
    return rows


def table(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    lines = [
        "| variant | Δ validation, retrained | Δ quantised | Δ final | compression × |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['variant']} | {r['delta_retrained']:+.2f} | {r['delta_quantised']:+.2f} | "
        f"{r['delta_final']:+.2f} | {r['compression_rate']:.1f} |"
        for r in rows
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(bench.CASES), default="fashion-mnist/lenet-5")
    parser.add_argument("--prior-scale", type=float, required=True, metavar="λ")
    parser.add_argument("--validation", type=float, default=0.1, help="held-out share")
    parser.add_argument("--seed", type=int, default=0, help="the split's and pretraining's seed")
    parser.add_argument("--retrain-seed", type=int, default=0)
    parser.add_argument("--finetune-epochs", type=int, nargs="*", default=[1, 3])
    parser.add_argument("--finetune-lrs", type=float, nargs="*", default=[1e-4, 3e-4, 1e-3])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=bench.DEFAULT_CACHE)
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    bench.add_set_option(parser, "change a soft weight-sharing setting, e.g. sws.lr=0.001")
    args = parser.parse_args(argv)
    if args.prior_scale < 0:
        parser.error(f"--prior-scale must be λ ≥ 0, got {args.prior_scale}")
    if any(e < 1 for e in args.finetune_epochs) or any(lr <= 0 for lr in args.finetune_lrs):
        parser.error("--finetune-epochs must be ≥ 1 and --finetune-lrs > 0")
    options = vars(args)
    options["overrides"] = bench._parse_overrides(args.overrides)
    rows = run(options)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
