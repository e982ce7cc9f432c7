"""Leads tried for a case's goal, side by side on validation: one figure and one table.

Each ``--run FILE LABEL`` is the ``--json`` of one ``compression_validated.py`` run (a lead: a
change of the recipe's settings, tried at one or more λ and unit-pruning budgets on the same
validation splits; only its validation trials are read, ``--tune-only`` or not). Every trial of the case becomes a point at its mean
compression rate and mean validation increase over the pretrained networks, with one paired
standard error either side; a lead's points are joined in order of rate. The goal (``--rate``
and ``--margin``) is the shaded corner: a lead whose error bar does not reach it is out of
reach by more than its noise. Trials of a grouped mixture (``--groups layer``) are labelled
"LABEL, per layer". Nothing is trained and no test label is read: the JSONs hold validation
numbers only.

Usage::

    python benchmarks/validation_leads.py --case fashion-mnist/lenet-5 \
        --run /tmp/val075.json "recipe settings" --run /tmp/anneal.json "anneal 21-28" \
        --rate 120 --margin 0.5 --figure benchmarks/figures/leads.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing
sys.path.insert(0, str(HERE))

from compression import FIGURE_DPI  # the benchmarks' figures share one resolution


def lead_points(path: Path, label: str, case: str) -> list[dict]:
    """The trials of ``case`` in ``compression_validated.py``'s JSON ``path`` as points:
    ``label`` (", per layer" added for a grouped mixture), λ, the unit-pruning budget,
    the mean increase and its standard error (points) and the mean rate."""
    runs = json.loads(path.read_text())
    if case not in runs:
        raise SystemExit(f"{path}: no trials of {case!r} (it has {', '.join(runs) or 'none'})")
    trials_by_group = runs[case]["trials"]
    if isinstance(trials_by_group, list):  # a run that went on to the test set: one mixture's
        trials_by_group = {"None": trials_by_group}
    points = []
    for group, trials in trials_by_group.items():
        name = label if group == "None" else f"{label}, per {group}"  # JSON keys: "None", "layer"
        for trial in trials:
            points.append(
                {
                    "lead": name,
                    "prior_scale": trial["prior_scale"],
                    "prune_units": trial["settings"].get("prune_units"),
                    "increase": 100.0
                    * (trial["validation_error_after"] - trial["validation_error_before"]),
                    "se": trial["increase_se"],  # points already
                    "rate": trial["compression_rate"],
                }
            )
    return points


def table(points: list[dict], rate: float, margin: float) -> str:
    """A markdown row per point; the goal's column marks where the mean (and the mean
    less one standard error) is within the margin at the rate."""
    lines = [
        "| lead | λ | B | Δ validation ± s.e. | compression × | goal, on validation |",
        "|---|---:|---|---:|---:|---|",
    ]
    for p in points:
        at_rate = p["rate"] >= rate
        goal = (
            "met"
            if at_rate and p["increase"] <= margin
            else "within one s.e."
            if at_rate and p["increase"] - p["se"] <= margin
            else ""
        )
        lines.append(
            f"| {p['lead']} | {p['prior_scale']:g} | {p['prune_units']} | "
            f"{p['increase']:+.2f} ± {p['se']:.2f} | {p['rate']:.1f} | {goal} |"
        )
    return "\n".join(lines)


#: Colours of the leads after matplotlib's ten (``C0``-``C9``), none of them a shade of those
MORE_COLOURS = ("black", "darkgoldenrod", "teal", "navy", "maroon", "darkolivegreen")


def plot(points: list[dict], *, rate: float, margin: float, title: str):
    """Mean validation increase against mean rate (log x), a marker and colour per lead."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator

    fig = Figure(figsize=(8.2, 5.0), dpi=FIGURE_DPI, layout="constrained")
    ax = fig.add_subplot()
    leads = list(dict.fromkeys(p["lead"] for p in points))
    markers = "osD^v<>pPhX*"
    low = min(p["rate"] for p in points) * 0.95
    high = max(max(p["rate"] for p in points) * 1.05, rate * 1.1)
    ax.fill_between([rate, high], -10, margin, color="tab:green", alpha=0.12, lw=0)
    ax.text(rate * 1.01, margin, f" goal: ≥ {rate:g}×, ≤ +{margin:g}", va="bottom", fontsize=8)
    for i, lead in enumerate(leads):
        mine = sorted((p for p in points if p["lead"] == lead), key=lambda p: p["rate"])
        ax.errorbar(
            [p["rate"] for p in mine],
            [p["increase"] for p in mine],
            yerr=[p["se"] for p in mine],
            marker=markers[i % len(markers)],
            color=f"C{i}" if i < 10 else MORE_COLOURS[(i - 10) % len(MORE_COLOURS)],
            ls="-" if i < 10 else "--",  # past matplotlib's ten colours: dark ones, dashed
            ms=6,
            lw=1.0,
            capsize=3,
            label=lead,
        )
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.axhline(margin, color="0.5", lw=0.8, ls="--")
    ax.axvline(rate, color="0.5", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_minor_locator(LogLocator(subs=(1.2, 1.4, 1.6, 1.8, 3.0, 4.0)))
    times = FuncFormatter(lambda v, _: f"{v:g}×")
    ax.xaxis.set_major_formatter(times)
    ax.xaxis.set_minor_formatter(times)
    ax.tick_params(axis="x", which="minor", labelsize=8)
    ax.set_xlim(low, high)
    top = max(p["increase"] + p["se"] for p in points)
    ax.set_ylim(min(-0.1, min(p["increase"] - p["se"] for p in points)) - 0.05, top + 0.1)
    ax.set_xlabel("compression rate (mean over the splits)")
    ax.set_ylabel("validation error over the pretrained network (points)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", ncols=2)
    ax.grid(alpha=0.3, which="both")
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", required=True, help="e.g. fashion-mnist/lenet-5")
    parser.add_argument(
        "--run",
        nargs=2,
        action="append",
        metavar=("JSON", "LABEL"),
        required=True,
        help="a compression_validated.py --json file and the lead it tried",
    )
    parser.add_argument("--rate", type=float, default=120.0, help="the goal's rate")
    parser.add_argument("--margin", type=float, default=0.5, help="the goal's margin (points)")
    parser.add_argument("--title", default=None)
    parser.add_argument("--figure", type=Path, help="write the figure here (PNG)")
    args = parser.parse_args(argv)
    for path, _ in args.run:
        if not Path(path).is_file():
            parser.error(f"--run {path}: no such file (a compression_validated.py --json)")
    if args.figure is not None and args.figure.suffix.lower() != ".png":
        parser.error(f"--figure {args.figure}: give a .png path")
    points = [p for path, label in args.run for p in lead_points(Path(path), label, args.case)]
    print(table(points, args.rate, args.margin))
    if args.figure is not None:
        title = args.title or f"{args.case}: leads on validation (mean of the splits ± 1 s.e.)"
        fig = plot(points, rate=args.rate, margin=args.margin, title=title)
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.figure, dpi=FIGURE_DPI)
        print(f"wrote {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
