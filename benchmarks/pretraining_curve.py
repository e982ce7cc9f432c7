"""How settled the benchmark's pretrained network is: validation error along its pretraining.

Issue 16's goals measure the error a compressed network adds over *the pretrained network*
(``compression.py``'s pretraining: Adam at a constant learning rate for a fixed number of
epochs). This script pretrains each case's network on a validation split's training part
exactly as ``compression_validated.py`` does (same split, seed and settings, so at the case's
epochs it is the cached network) and reads its validation error every ``--every`` epochs;
``--schedules cosine`` also pretrains with the learning rate annealed to zero over the run
(``train(..., lr_scheduler="cosine")``). Where the constant-rate error still swings
by tenths of a point from one reading to the next, the baseline the goals are measured against
is a draw from that swing. Only the validation splits are read, never the test set.

Usage::

    python benchmarks/pretraining_curve.py --cases fashion-mnist/lenet-300-100 --splits 0 1 2 \
        --epochs 60 --schedules constant cosine --figure /tmp/curves.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing
sys.path.insert(0, str(HERE))

import compression as bench  # the cases, their data and networks
import torch

from bayes_sws.compress.tuning import validation_split
from bayes_sws.settings import steps_per_epoch
from bayes_sws.zoo.training import LR_SCHEDULES, accuracy, train


def curve(
    name: str, split: int, *, epochs: int, every: int, schedule: str, validation: float = 0.1
) -> tuple[dict[int, float], torch.nn.Module]:
    """Validation error (per cent) of case ``name``'s network after every ``every`` epochs
    of its pretraining on validation split ``split`` (``epochs`` in all, the learning rate
    constant or cosine-annealed to zero over them), and the network pretrained."""
    case = bench.CASES[name]
    tuning, _ = validation_split(bench.load(case), validation, seed=split)
    net = bench.initial_network(case, tuning, split)  # as compression.pretrained's
    settings = {**case.pretrain, "num_epochs": epochs}
    per_epoch = steps_per_epoch(len(tuning.x_train), settings["batch_size"])
    readings: dict[int, float] = {}
    steps = 0

    def read(trained: torch.nn.Module) -> None:
        nonlocal steps
        steps += 1
        if steps % (every * per_epoch) == 0 or steps == epochs * per_epoch:
            error = 1.0 - accuracy(trained, tuning.x_test, tuning.y_test)
            readings[steps // per_epoch] = 100.0 * error

    train(
        net,
        tuning.x_train,
        tuning.y_train,
        seed=split,
        progress=False,
        after_step=read,
        lr_scheduler=schedule,
        **settings,
    )
    return readings, net


def table(curves: list[dict]) -> str:
    """A markdown table: one row per case, split and schedule, a column per reading."""
    epochs = sorted({e for c in curves for e in c["errors"]})
    lines = [
        "| case | split | schedule | " + " | ".join(str(e) for e in epochs) + " |",
        "|---|---:|---|" + "---:|" * len(epochs),
    ]
    for c in curves:
        cells = [f"{c['errors'][e]:.2f}" if e in c["errors"] else "" for e in epochs]
        lines.append(
            f"| {c['case']} | {c['split']} | {c['schedule']} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def figure(curves: list[dict], path: Path) -> None:
    """Validation error against epochs, a panel per case, a colour per split, a line style
    per schedule; the case's pretraining epochs marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(c["case"] for c in curves))
    fig, axes = plt.subplots(1, len(cases), figsize=(5.5 * len(cases), 4), squeeze=False)
    for ax, name in zip(axes[0], cases, strict=True):
        for c in (c for c in curves if c["case"] == name):
            epochs = sorted(c["errors"])
            ax.plot(
                epochs,
                [c["errors"][e] for e in epochs],
                color=f"C{c['split']}",
                linestyle="-" if c["schedule"] == "constant" else "--",
                marker="o" if c["schedule"] == "constant" else "s",
                markersize=3,
                label=f"split {c['split']}, {c['schedule']}",
            )
        ax.axvline(bench.CASES[name].pretrain["num_epochs"], color="0.6", linewidth=0.8)
        ax.set_title(f"{name}: pretraining")
        ax.set_xlabel("epochs (grey: the benchmark's)")
        ax.set_ylabel("validation error (%)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _read(path: Path) -> list[dict]:
    """Curves a --json file holds (epochs back to ints)."""
    return [
        {**c, "errors": {int(e): v for e, v in c["errors"].items()}}
        for c in json.loads(path.read_text())
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(bench.CASES), default=[])
    parser.add_argument("--splits", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="constant-rate readings up to this many epochs (default: the case's); the cosine "
        "schedule always anneals over the case's epochs, the pretraining it would replace",
    )
    parser.add_argument("--every", type=int, default=5, help="epochs between readings")
    parser.add_argument("--schedules", nargs="+", choices=LR_SCHEDULES, default=["constant"])
    parser.add_argument("--validation", type=float, default=0.1, help="held-out share")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--figure", type=Path, default=None)
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="no training: the table and figure of these --json files together",
    )
    args = parser.parse_args(argv)
    if args.every < 1 or (args.epochs is not None and args.epochs < 1):
        parser.error(f"--epochs and --every must be at least 1; got {args.epochs}, {args.every}")
    if not args.cases and args.merge is None:
        parser.error("give --cases to pretrain, or --merge to draw saved curves")
    torch.set_num_threads(args.threads)
    curves = [] if args.merge is None else [c for p in args.merge for c in _read(p)]
    for name in args.cases if args.merge is None else ():
        for split in args.splits:
            for schedule in args.schedules:
                epochs = bench.CASES[name].pretrain["num_epochs"]
                if schedule == "constant":
                    epochs = args.epochs or epochs
                start = time.perf_counter()
                errors, _ = curve(
                    name, split, epochs=epochs, every=args.every, schedule=schedule,
                    validation=args.validation,
                )  # fmt: skip
                curves.append(
                    {"case": name, "split": split, "schedule": schedule, "errors": errors}
                )
                bench.say(
                    f"{name} split {split}, {schedule}: {errors[max(errors)]:.2f} % after "
                    f"{max(errors)} epochs ({time.perf_counter() - start:.0f} s)"
                )
    print(table(curves))
    if args.json is not None:
        args.json.write_text(json.dumps(curves, indent=1))
    if args.figure is not None:
        figure(curves, args.figure)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
