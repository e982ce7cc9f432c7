"""Compression benchmark: soft weight-sharing against Deep Compression, same storage accounting.

For each case (a data set and a network) the script pretrains the network
(cached on disk), then compresses it

* by soft weight-sharing (:func:`bayes_sws.compress.pipeline.soft_weight_sharing`:
  retrain under the mixture prior, quantise, count bits), and
* by Deep Compression (:func:`bayes_sws.compress.baseline.deep_compression`: magnitude
  pruning, k-means weight sharing, centroid fine-tuning), twice: with Han et
  al.'s published per-layer pruning rates and bit widths ("dc-han"), and with
  the per-layer sparsity soft weight-sharing found and as many shared values per
  layer ("dc-matched"), which compares the two at (nearly) equal storage,

and reports test error before/after compression, the non-zero share of the
weights, the compression rate (:func:`bayes_sws.compress.storage.storage_report`, Han
et al.'s accounting) and wall time. ``--write`` replaces the "## Compression"
section of ``BENCHMARKS.md`` with the table, the exact command and the machine,
and the short table between the ``compression-summary`` markers of its "Current
figures" (every row labelled with where its settings come from); the
section it replaces moves to ``benchmarks/results/history.md``, and
``benchmarks/results/tables.json`` is remade (``benchmarks/results_tables.py``).

Cases: Fashion-MNIST (``dataset-fashion-mnist`` Debian package) with
LeNet-300-100 and LeNet-5-Caffe, and scikit-learn's digits with the same two
networks (``--quick`` runs only these, in a few minutes). Inputs are raw pixels in [0, 1] as in Ullrich et al.

Run from the repository root::

    python benchmarks/compression.py --quick            # digits only, a few minutes
    python benchmarks/compression.py --write --jobs 2   # all cases, about 24 min on 2 cores

Pretrained networks are cached under ``benchmarks/cache/`` (git-ignored); delete
it to pretrain afresh. ``--threads`` defaults to 1: on a shared 2-core machine
one torch thread per process was about 10x faster than two (oversubscription).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import hashlib
import json
import math
import multiprocessing
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from machine import cpu_model  # benchmarks/ is on sys.path: run as a script, or imported by name

from bayes_sws.compress.baseline import deep_compression
from bayes_sws.compress.pipeline import RECIPES, Recipe, soft_weight_sharing
from bayes_sws.compress.storage import storage_report, stored_network
from bayes_sws.zoo.data import load_dataset
from bayes_sws.zoo.nets import lenet5_caffe, lenet_300_100
from bayes_sws.zoo.training import accuracy, train

SECTION = "## Compression"
# the short table in BENCHMARKS.md's "Current figures", replaced by --write
SUMMARY_START = "<!-- compression-summary: written by benchmarks/compression.py --write -->"
SUMMARY_END = "<!-- /compression-summary -->"
HISTORY = REPO / "benchmarks" / "results" / "history.md"
DEFAULT_CACHE = REPO / "benchmarks" / "cache"

# Han et al. (2016), Tables 2-3: share of weights pruned per layer, and bits per shared value
# (LeNet-300-100: 6 bits everywhere; LeNet-5: 8 bits for convolutions, 5 for dense layers).
HAN_LENET_300_100 = {
    "prune_fraction": {"0.weight": 0.92, "2.weight": 0.91, "4.weight": 0.74},
    "num_clusters": {"0.weight": 64, "2.weight": 64, "4.weight": 64},
}
HAN_LENET5 = {
    "prune_fraction": {"0.weight": 0.34, "2.weight": 0.88, "5.weight": 0.92, "7.weight": 0.81},
    "num_clusters": {"0.weight": 256, "2.weight": 256, "5.weight": 32, "7.weight": 32},
}

# Soft weight-sharing: the library's recipes (pipeline.RECIPES), every setting chosen on a
# validation split of the training set (compression_validated.py; BENCHMARKS.md "Compression:
# chosen on validation"). The Fashion-MNIST ones retrain under a soft-to-hard anneal of the
# non-zero components' precision hyperprior, from a broad slab (Gamma(250, 1), σ ≈ 0.063) that
# decides which weights survive to tight shared values (Gamma(250, 0.01), σ ≈ 0.0063); without
# it, the broad Gamma(250, 0.1) of an earlier benchmark lost 2-2.5 points at quantisation.
# LeNet-300-100: the weights' lr 1e-3, the anneal from epoch 28 to 38 of 40 (+0.66 against
# +0.81 points with the default 20 -> 36, three seeds at λ = 0.13), a zero component twice as
# wide (σ₀ ≈ 1e-3; on validation as good as the default's) with its weight fixed at
# π₀ = 0.999 (+0.30 at 80.1× against +0.34 at 76.9× with 0.99, three seeds), no fine-tuning
# (+0.66 with and without over three seeds); the rows are the chosen λ and its neighbours.
# LeNet-5: the default window of 30 epochs, π₀ = 0.999 (+0.41 at 105.2× against +0.48 at 94.4×
# with 0.99, three seeds), then one epoch of codebook fine-tuning at lr 1e-4 (its quantisation
# loss is the first convolution's: +0.93 -> +0.32 on validation); the rows are the λ validated
# on three splits, the refit's and split 0's choice, to show what the last stretch towards
# 120× costs. A row's label and settings carry λ as chosen, at the split's size; the grid
# retrains on the whole training set, so run_sws scales it (Recipe.scaled).


def recipe_rows(name: str, scales: tuple[float, ...] | None = None) -> dict[str, dict]:
    """Row label -> soft_weight_sharing keyword arguments: the recipe at each λ of ``scales``
    (default: the grid λ was chosen from), λ as at the validation split's size."""
    recipe = RECIPES[name]
    return {f"sws λ={scale:g}": recipe.kwargs(scale) for scale in scales or recipe.grid}


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark row group: data, network, pretraining and both methods' settings."""

    name: str
    dataset: str
    network: str  # "lenet-300-100" or "lenet-5"
    pretrain: dict
    sws: dict  # label -> soft_weight_sharing keyword arguments (defaults for the rest)
    dc: dict  # shared Deep Compression settings (epochs, lr, batch size)
    han: dict  # Han et al.'s per-layer pruning and clusters
    goal: tuple[float, float]  # the target: (compression rate, max error increase in points)
    goal_issue: int  # the issue that set the target

    @property
    def recipe(self) -> Recipe:
        """The settings chosen on validation (``pipeline.RECIPES``)."""
        return RECIPES[self.name]

    @property
    def chosen(self) -> str:
        """The row whose λ was chosen on validation; the other rows trace a front around it.
        Where the recipe has a λ calibrated for the refit on the whole training set (the λ at
        which the refit reaches the validated rate, ``calibrate_refit.py``), that one."""
        recipe = self.recipe  # the grid refits on the whole training set: refit_num_train
        return f"sws λ={recipe.refit_scale(recipe.refit_num_train or recipe.num_train):g}"


FASHION_LENET_300_100, FASHION_LENET5 = "fashion-mnist/lenet-300-100", "fashion-mnist/lenet-5"
CASES: dict[str, Case] = {
    FASHION_LENET_300_100: Case(
        name=FASHION_LENET_300_100,
        dataset="fashion-mnist",
        network="lenet-300-100",
        pretrain=dict(RECIPES[FASHION_LENET_300_100].pretrain),
        sws=recipe_rows(FASHION_LENET_300_100, (0.07, 0.075, 0.085, 0.095)),
        dc={"finetune_epochs": 10, "centroid_epochs": 5, "lr": 1e-3, "batch_size": 128},
        han=HAN_LENET_300_100,
        goal=(80.0, 0.5),
        goal_issue=16,
    ),
    FASHION_LENET5: Case(
        name=FASHION_LENET5,
        dataset="fashion-mnist",
        network="lenet-5",
        pretrain=dict(RECIPES[FASHION_LENET5].pretrain),
        sws=recipe_rows(FASHION_LENET5, (0.075, 0.08, 0.095)),
        dc={"finetune_epochs": 5, "centroid_epochs": 3, "lr": 1e-3, "batch_size": 128},
        han=HAN_LENET5,
        goal=(120.0, 0.5),
        goal_issue=16,
    ),
    "digits/lenet-300-100": Case(
        name="digits/lenet-300-100",
        dataset="digits",
        network="lenet-300-100",
        pretrain=dict(RECIPES["digits/lenet-300-100"].pretrain),
        sws=recipe_rows("digits/lenet-300-100"),
        dc={"finetune_epochs": 20, "centroid_epochs": 10, "lr": 1e-3, "batch_size": 64},
        han=HAN_LENET_300_100,
        goal=(10.0, 2.0),
        goal_issue=4,
    ),
    "digits/lenet-5": Case(
        name="digits/lenet-5",
        dataset="digits",
        network="lenet-5",
        pretrain=dict(RECIPES["digits/lenet-5"].pretrain),
        sws=recipe_rows("digits/lenet-5"),
        dc={"finetune_epochs": 10, "centroid_epochs": 5, "lr": 1e-3, "batch_size": 64},
        han=HAN_LENET5,
        goal=(10.0, 2.0),
        goal_issue=4,
    ),
}


def check_chosen_rows(cases: dict[str, Case]) -> None:
    """The row judged must be one the grid runs: each case's rows include its recipe's λ
    (``Case.chosen``). Checked on :data:`CASES` at import."""
    for case in cases.values():
        if case.chosen not in case.sws:
            raise ValueError(
                f"case {case.name!r}: its chosen row {case.chosen!r} (the recipe's λ) is not "
                f"among its rows {list(case.sws)}; add that λ to the case's sws rows"
            )


check_chosen_rows(CASES)

QUICK = ("digits/lenet-300-100", "digits/lenet-5")
FULL = ("fashion-mnist/lenet-300-100", "fashion-mnist/lenet-5", *QUICK)


# --------------------------------------------------------------------------- data and nets


def load(case: Case):
    return load_dataset(case.dataset, standardize=False, flatten=case.network != "lenet-5")


def build(case: Case, data) -> torch.nn.Module:
    if case.network == "lenet-300-100":
        return lenet_300_100(data.num_features, data.num_classes)
    channels, height, width = data.input_shape
    return lenet5_caffe(channels, data.num_classes, (height, width))


def initial_network(case: Case, data, seed: int) -> torch.nn.Module:
    """The network ``case``'s pretraining starts from, its weights drawn under ``seed``."""
    torch.manual_seed(seed)
    return build(case, data)


def pretrained(
    case: Case, data, *, seed: int, cache: Path | None, progress
) -> tuple[torch.nn.Module, dict]:
    """The pretrained network of ``case``: from the cache, or trained and cached."""
    key = json.dumps({"case": case.name, "pretrain": case.pretrain, "seed": seed}, sort_keys=True)
    stem = case.name.replace("/", "_") + "-" + hashlib.sha1(key.encode()).hexdigest()[:10]
    net = initial_network(case, data, seed)
    if cache is not None and (cache / f"{stem}.pt").is_file():
        net.load_state_dict(torch.load(cache / f"{stem}.pt", weights_only=True))
        info = json.loads((cache / f"{stem}.json").read_text())
        info["cached"] = True
        return net, info
    start = time.perf_counter()
    train(net, data.x_train, data.y_train, seed=seed, progress=progress, **case.pretrain)
    info = {
        "key": json.loads(key),
        "wall_time": time.perf_counter() - start,
        "test_accuracy": accuracy(net, data.x_test, data.y_test),
        "torch": torch.__version__,
        "cpu": cpu_model(),
    }
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), cache / f"{stem}.pt")
        (cache / f"{stem}.json").write_text(json.dumps(info, indent=1))
    info["cached"] = False
    return net, info


# --------------------------------------------------------------------------- methods


def other_rates(net, names, settings: dict) -> dict[str, float]:
    """The rates of the same quantised network ``net`` stored otherwise, for comparison:
    every hidden unit in its order (``_all_units``: no dead-unit removal, no reordering),
    the units in their order (``_unit_order``: dead units removed as ``settings`` say, not
    reordered), and Golomb-Rice-coded positions where smaller (``_rice``: stored as
    ``settings`` say; the headline rate uses Han et al.'s fixed-width indices)."""

    def rate(**options) -> float:
        return stored_network(net, param_names=names, **options)[1].compression_rate

    remove_dead = settings["remove_dead_units"]
    return {
        "compression_rate_all_units": storage_report(net, param_names=names).compression_rate,
        "compression_rate_unit_order": rate(remove_dead=remove_dead),
        "compression_rate_rice": rate(
            remove_dead=remove_dead,
            position_coding="rice",
            reorder_units=settings["reorder_units"],
        ),
    }


def run_sws(
    case: Case,
    label: str,
    net,
    data,
    *,
    seed: int,
    progress,
    overrides: dict,
    dc_overrides: dict,
    remove_dead_units: bool,
    reorder_units: bool,
) -> dict:
    # the same codebook fine-tuning as Deep Compression's last stage: epochs and learning rate
    # from the case's (possibly overridden) Deep Compression settings
    dc = {**case.dc, **dc_overrides}
    settings = {
        "finetune_epochs": dc["centroid_epochs"],
        "finetune_lr": dc["lr"],
        **case.sws[label],
        "remove_dead_units": remove_dead_units,
        "reorder_units": reorder_units,
        **overrides,
    }
    # λ was chosen at the validation split's size; the same trade-off per training image
    settings["prior_scale"] = case.recipe.scaled(settings["prior_scale"], data.num_train)
    if settings["finetune_epochs"] and settings.get("batch_size", 128) != dc["batch_size"]:
        raise ValueError(
            f"{case.name}, {label}: batch size {settings.get('batch_size', 128)} differs from "
            f"Deep Compression's {dc['batch_size']}; codebook fine-tuning must match"
        )
    result = soft_weight_sharing(net, data, seed=seed, progress=progress, **settings)
    shown = (
        "prior_scale",
        "num_components",
        "pi_zero",
        "precision_prior_used",
        "prior_scale_warmup",
        "precision_prior_final_used",
        "anneal_epochs",
        "zero_precision_prior_used",
        "lr",
        "mixture_lr",
        "num_epochs",
        "num_steps",
        "batch_size",
        "merge_threshold",
        "finetune_epochs",
        "finetune_lr",
        "remove_dead_units",
        "reorder_units",
        "prune_units",
    )
    pruned = (
        {"units_pruned": result.config["units_pruned"]} if "units_pruned" in result.config else {}
    )
    return {
        "method": label,
        "settings": {**{key: result.config[key] for key in shown}, **pruned},
        "accuracy_before": result.test_accuracy_before,
        "accuracy_quantized": result.test_accuracy_quantized,
        "accuracy_after": result.test_accuracy_after,
        "nonzero_fraction": result.nonzero_fraction,
        "compression_rate": result.compression_rate,
        "compression_rate_entropy": result.compression_rate_entropy,
        **other_rates(result.net, result.config["param_names"], result.config),
        "num_values": result.num_components,
        "wall_time": result.wall_time,
        "layers": result.layers,
        "layer_table": result.format_table(),
        "result": result,  # replaced by result.to_dict() once the case is done (run_case)
    }


def run_dc(
    case: Case,
    net,
    data,
    *,
    name: str,
    prune_fraction,
    num_clusters,
    seed: int,
    progress,
    overrides: dict,
    remove_dead_units: bool,
    reorder_units: bool,
) -> dict:
    settings = {
        **case.dc,
        "remove_dead_units": remove_dead_units,
        "reorder_units": reorder_units,
        **overrides,
    }
    start = time.perf_counter()
    result = deep_compression(
        net,
        data.x_train,
        data.y_train,
        prune_fraction=prune_fraction,
        num_clusters=num_clusters,
        seed=seed,
        progress=progress,
        **settings,
    )
    wall = time.perf_counter() - start
    storage = result.storage
    return {
        "method": name,
        "settings": {**settings, "prune_fraction": prune_fraction, "num_clusters": num_clusters},
        "accuracy_before": None,
        "accuracy_quantized": None,
        "accuracy_after": accuracy(result.stored_net, data.x_test, data.y_test),
        "nonzero_fraction": storage.nonzero_fraction,
        "compression_rate": storage.compression_rate,
        "compression_rate_entropy": storage.compression_rate_entropy,
        **other_rates(result.net, result.param_names, settings),
        "num_values": max(len(c) for c in result.codebooks.values()) + 1,
        "wall_time": wall,
        "layers": storage.to_dict()["layers"],
    }


def save_figures(case_name: str, row: dict, pretrained_net, directory: Path) -> list[Path]:
    """Weights before/after, the mixture over the histogram, per-layer sparsity (PNG)."""
    from bayes_sws.compress.plots import plot_layer_sparsity, plot_weights_before_after
    from bayes_sws.diagnostics.posterior import plot_mixture_over_histogram

    result = row["result"]
    stem = (
        f"{case_name}-{row['method']}".replace("/", "_")
        .replace(" ", "_")
        .replace("=", "")
        .replace("λ", "lambda")
    )
    names = result.config["param_names"]
    before = {n: p.detach() for n, p in pretrained_net.named_parameters() if n in names}
    after = {n: p.detach() for n, p in result.net.named_parameters() if n in names}
    figures = {
        "weights": plot_weights_before_after(
            before, after, result.quantization.assignments, title=f"{case_name}, {row['method']}"
        ),
        "mixture": plot_mixture_over_histogram(result.fit, title=f"{case_name}, retrained"),
        "sparsity": plot_layer_sparsity(result.storage),
    }
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind, fig in figures.items():
        path = directory / f"{stem}-{kind}.png"
        fig.savefig(path, dpi=FIGURE_DPI)
        paths.append(path)
    return paths


#: Marker and colour of each family of points in the rate-against-error figures.
FAMILY_STYLE = {
    "soft weight-sharing": ("o", "tab:blue"),
    "chosen": ("*", "tab:red"),
    "dc-han": ("s", "tab:green"),
    "dc-matched": ("D", "tab:orange"),
}


def row_point(row: dict) -> dict:
    """A benchmark row as a point: its family, label, compression rate and Δ test error (points)."""
    method = row["method"]
    family = next(
        (f for f in ("dc-han", "dc-matched") if method.startswith(f)), "soft weight-sharing"
    )
    case = CASES.get(row["case"])
    if family == "soft weight-sharing" and (
        "chosen" in method or (case is not None and method == case.chosen)
    ):
        family = "chosen"
    # the label without its parenthesis ("(chosen on validation)"), keeping what follows it
    label = re.sub(r" \([^)]*\)", "", method.replace("dc-matched to ", "dc-matched, "))
    # one setting's rows over several validation splits: the split alone tells them apart
    split = re.search(r", (split \d+|mean over splits [\d, ]+)$", label)
    if split and family == "chosen":
        label = split.group(1)
    error = 100 * (row["pretrained_accuracy"] - row["accuracy_after"])
    return {"family": family, "label": label, "rate": row["compression_rate"], "error": error}


#: dots per inch of the saved figures; the rate-error plot also places its labels at it (text
#: widths do not scale exactly with the dpi, so a label checked at another could overflow)
FIGURE_DPI = 110


def plot_rate_against_error(
    points: list[dict],
    *,
    title: str,
    ylabel: str,
    fronts: dict[str, tuple[str, ...]] | None = None,
    margin: tuple[float, str] = (0.5, "goal"),
):
    """Compression rate (log x) against Δ error, one marker per family, each point labelled.

    ``points``: dicts with ``family`` (a key of :data:`FAMILY_STYLE`), ``label``,
    ``rate`` and ``error`` (points of error over the pretrained network). The
    dashed line is ``margin``: (points, what they are), e.g. the case's goal. ``fronts`` names
    groups of families, e.g. one method's; each is drawn as a solid line through
    its points that no other point of the group beats on both rate and error
    (:func:`pareto_front`), in the colour of the group's first family.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator

    size = (7.6 if fronts else 6.4, 4.6 if fronts else 4.2)
    fig = Figure(figsize=size, dpi=FIGURE_DPI, layout="constrained")
    ax = fig.add_subplot()
    for front, families in (fronts or {}).items():
        best = pareto_front([p for p in points if p["family"] in families])
        ax.plot(
            [p["rate"] for p in best],
            [p["error"] for p in best],
            "-",
            color=FAMILY_STYLE[families[0]][1],
            lw=1.2,
            alpha=0.6,
            label=f"{front} front",
        )
    for family, (marker, colour) in FAMILY_STYLE.items():
        mine = [p for p in points if p["family"] == family]
        if mine:
            ax.plot(
                [p["rate"] for p in mine],
                [p["error"] for p in mine],
                marker,
                color=colour,
                ms=7 if marker != "*" else 12,
                ls="none",
                label="chosen on validation" if family == "chosen" else family,
            )
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.axhline(
        margin[0], color="0.5", lw=0.8, ls="--", label=f"+{margin[0]:g} points ({margin[1]})"
    )
    ax.set_xscale("log")
    ax.margins(x=0.12, y=0.1)  # room for the labels of the outermost points
    low, high = ax.get_xlim()  # more room on the right: the labels run rightwards
    ax.set_xlim(low, high * (high / low) ** (0.08 if fronts else 0.1))
    plain = FuncFormatter(lambda x, _: f"{x:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 3.0, 5.0)))
    ax.xaxis.set_minor_formatter(plain)
    ax.set_xlabel("compression rate (×, log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if fronts:
        fig.legend(fontsize=8, loc="outside right upper")
    else:
        ax.legend(fontsize=8, loc="best")
    _label_points(fig, ax, points)
    return fig


def _box_gap(box, xy) -> float:
    """Distance in pixels from the point ``xy`` to the nearest point of ``box`` (0 inside)."""
    x, y = xy
    return math.hypot(max(box.x0 - x, 0.0, x - box.x1), max(box.y0 - y, 0.0, y - box.y1))


def _label_points(fig, ax, points: list[dict]) -> None:
    """Each point's label beside it, at the first of a few offsets where it stays in the axes,
    overlaps no other label and no other point's marker, and lies clearly nearer its own point
    than any other (the gap to any other at least 1.5 times the gap to its own: a label between
    two markers reads as the nearer one's)."""
    from matplotlib.transforms import Bbox

    # beside the point (right, then left), then further above or below it
    tiers = ((4, -11), (13, -20), (22, -29))
    offsets = [(dx, dy) for pair in tiers for dx in (4, -4) for dy in pair]
    fig.draw_without_rendering()  # the layout, so that the labels' boxes are where they'll be
    half = 5 * fig.dpi / 72  # a marker's half width, pixels
    centres = ax.transData.transform([(p["rate"], p["error"]) for p in points])
    markers = [Bbox.from_extents(x - half, y - half, x + half, y + half) for x, y in centres]
    inner = ax.bbox.padded(-4)  # a few pixels inside the frame: text widths vary with the dpi
    placed = []
    for i, p in enumerate(points):
        blocked = placed + markers[:i] + markers[i + 1 :]
        others = [c for j, c in enumerate(centres) if j != i]
        # (overlaps something, nearer another point, offset number): a free and unambiguous
        # one, else the best inside the axes
        candidates: list[tuple[bool, bool, int]] = []
        for k, (dx, dy) in enumerate(offsets):
            text = _point_label(ax, p, dx, dy)
            box = text.get_window_extent()
            text.remove()
            if inner.contains(box.x0, box.y0) and inner.contains(box.x1, box.y1):
                own = _box_gap(box, centres[i])
                ambiguous = any(_box_gap(box, xy) < 1.5 * own for xy in others)
                candidates.append((any(box.overlaps(b) for b in blocked), ambiguous, k))
                if candidates[-1][:2] == (False, False):
                    break
        *_, k = min(candidates, default=(True, True, 0))
        text = _point_label(ax, p, *offsets[k])
        placed.append(text.get_window_extent())


def _point_label(ax, point: dict, dx: float, dy: float):
    """``point``'s label at (dx, dy) points from it, kept out of the layout engine (the
    placement above checks the axes as laid out; a label must not move them)."""
    text = ax.annotate(
        point["label"],
        (point["rate"], point["error"]),
        xytext=(dx, dy),
        textcoords="offset points",
        fontsize=7,
        ha="left" if dx > 0 else "right",
    )
    text.set_in_layout(False)
    return text


def pareto_front(points: list[dict]) -> list[dict]:
    """The points no other beats on both rate (higher) and error (lower), by rising rate."""
    best = [
        p
        for p in points
        if not any(
            q["rate"] >= p["rate"]
            and q["error"] <= p["error"]
            and (q["rate"], q["error"]) != (p["rate"], p["error"])
            for q in points
        )
    ]
    return sorted(best, key=lambda p: p["rate"])


def save_rate_figures(rows: list[dict], directory: Path) -> list[Path]:
    """``<case>-rate-vs-error.png`` per case of ``rows``: every method's rate against Δ test error."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for case in dict.fromkeys(row["case"] for row in rows):
        fig = plot_rate_against_error(
            [row_point(row) for row in rows if row["case"] == case],
            title=f"{case}: compression against test error",
            ylabel="Δ test error over pretrained (points)",
            margin=(CASES[case].goal[1], "goal") if case in CASES else (0.5, "goal"),
        )
        path = directory / f"{case.replace('/', '_')}-rate-vs-error.png"
        fig.savefig(path, dpi=FIGURE_DPI)
        paths.append(path)
    return paths


def matched_dc_settings(sws_row: dict) -> tuple[dict, dict]:
    """Per-layer pruning and cluster counts of the soft weight-sharing result."""
    prune, clusters = {}, {}
    for layer in sws_row["layers"]:
        fraction = 1.0 - layer["nonzero_fraction"]
        prune[layer["name"]] = round(min(fraction, 0.999), 6)
        clusters[layer["name"]] = max(1, layer["num_distinct"])
    return prune, clusters


# --------------------------------------------------------------------------- report


def machine_line(threads: int) -> str:
    return (
        f"{cpu_model()}, {os.cpu_count()} CPU cores visible "
        f"(shared), {threads} torch thread(s), torch {torch.__version__}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _time(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _delta(row: dict) -> str:
    """Error after minus pretrained error, in points: ``100 (acc_pre - acc_after)``."""
    return f"{100 * (row['pretrained_accuracy'] - row['accuracy_after']):+.2f}"


def markdown(rows: list[dict]) -> str:
    lines = [
        (
            "| case | method | error pretrained % | error before % | error quantised % "
            "| error after % | Δ error (points) | non-zero % | shared values | compression × "
            "| (entropy-coded ×) | (all units ×) | wall time |"
        ),
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        pre = row["pretrained_accuracy"]
        before = row["accuracy_before"]
        quantized = row.get("accuracy_quantized")
        after = row["accuracy_after"]
        lines.append(
            f"| {row['case']} | {row['method']} | {_pct(1 - pre)} | "
            f"{_pct(None if before is None else 1 - before)} | "
            f"{_pct(None if quantized is None else 1 - quantized)} | {_pct(1 - after)} | "
            f"{_delta(row)} | {_pct(row['nonzero_fraction'])} | {row['num_values']} | "
            f"**{row['compression_rate']:.1f}** | {row['compression_rate_entropy']:.1f} | "
            f"{row['compression_rate_all_units']:.1f} | {_time(row['wall_time'])} |"
        )
    return "\n".join(lines)


def _error(row: dict) -> float:
    return 100 * (1 - row["accuracy_after"])


def goal_lines(rows: list[dict]) -> list[str]:
    """Per case: is its target met (``Case.goal``), and which Deep Compression rows are beaten?

    The target is a compression rate of at least ``goal[0]`` with the error at most
    ``goal[1]`` points above the pretrained network. The row whose λ was chosen on validation
    (``Case.chosen``) is the one judged: taking the best of its λ front by test error would
    be choosing on test. A Deep Compression row is beaten when some soft weight-sharing row
    has a higher rate at equal or lower error.
    """
    out = []
    for name in dict.fromkeys(row["case"] for row in rows):
        case_rows = [r for r in rows if r["case"] == name]
        rate, budget = CASES[name].goal
        pre = 100 * (1 - case_rows[0]["pretrained_accuracy"])
        sws_rows = [r for r in case_rows if "layer_table" in r]
        dc_rows = [r for r in case_rows if "layer_table" not in r]
        chosen = CASES[name].chosen
        judged = next((r for r in sws_rows if r["method"] == chosen), None)
        head = (
            f"- {name}: ≥ {rate:g}× within {budget:g} points of the pretrained error "
            f"(issue {CASES[name].goal_issue})"
        )
        if judged is None:
            text = f"{head}: not judged (the row chosen on validation, {chosen}, did not run)."
        else:
            delta = _error(judged) - pre
            met = judged["compression_rate"] >= rate and delta <= budget + 1e-9
            all_units = judged.get("compression_rate_all_units")
            kept = (
                ""
                if all_units is None or all_units == judged["compression_rate"]
                else f"; {all_units:.1f}× with every unit stored"
            )
            text = (
                f"{head}: **{'met' if met else 'not met'}** (the row chosen on validation, "
                f"{chosen}, {judged['compression_rate']:.1f}× at {delta:+.2f} points{kept})."
            )
        verdicts = []
        for dc in dc_rows:
            winners = [
                r
                for r in sws_rows
                if r["compression_rate"] > dc["compression_rate"] and _error(r) <= _error(dc)
            ]
            if winners:
                w = max(winners, key=lambda r: r["compression_rate"])
                verdicts.append(
                    f"{dc['method']} ({dc['compression_rate']:.1f}×, {_error(dc):.2f} %) is beaten "
                    f"by {w['method']} ({w['compression_rate']:.1f}×, {_error(w):.2f} %)"
                )
            else:
                verdicts.append(
                    f"{dc['method']} ({dc['compression_rate']:.1f}×, {_error(dc):.2f} %) is "
                    "**not** beaten (no soft weight-sharing row has a higher rate at equal or "
                    "lower error)"
                )
        if verdicts:
            text += " Against Deep Compression: " + "; ".join(verdicts) + "."
        out.append(text)
    return out


def layer_tables(rows: list[dict]) -> str:
    out = []
    for row in rows:
        if "layer_table" in row:
            out.append(f"Per layer, {row['method']} on {row['case']}:\n")
            out.append(row["layer_table"])
            out.append("")
    return "\n".join(out)


def pretrained_origin(info: dict) -> str:
    """Whether a pretrained network was trained in this run or loaded, and where it was made.

    A cache on a new machine holds nothing, so a run there pretrains afresh and its Δ errors
    are measured from other networks than the previous run's: the table says which.
    """
    made = f"on {info['cpu']}" if "cpu" in info else "on a CPU the cache did not record"
    made += f", torch {info['torch']}" if "torch" in info else ""
    return (
        f"loaded from the cache (trained {made})"
        if info["cached"]
        else f"trained in this run ({made})"
    )


def section(rows: list[dict], pretrain: dict, command: str, threads: int, total: float) -> str:
    pre_lines = [
        f"- {name}: pretrained {info['key']['pretrain']['num_epochs']} epochs (Adam, lr "
        f"{info['key']['pretrain']['lr']}, batch {info['key']['pretrain']['batch_size']}) in "
        f"{_time(info['wall_time'])}, test error {100 * (1 - info['test_accuracy']):.2f} %; "
        f"{pretrained_origin(info)}"
        for name, info in pretrain.items()
    ]
    settings = []
    for row in rows:
        shown = dict(row["settings"])
        settings.append(f"- {row['case']}, {row['method']}: `{json.dumps(shown, sort_keys=True)}`")
    return "\n".join(
        [
            SECTION,
            "",
            (
                "Soft weight-sharing (`bayes_sws.compress.pipeline.soft_weight_sharing`) against Deep "
                "Compression (`bayes_sws.compress.baseline.deep_compression`), both counted by "
                "`bayes_sws.compress.storage.storage_report` (sparse relative indices of 5 bits for "
                "dense and 8 bits for convolutional layers, row by row (CSR) or column by "
                "column (CSC), whichever is smaller per layer, Huffman-coded cluster indices, "
                "32-bit codebooks and biases). Unless the command has `--keep-dead-units`, "
                "both methods store their network without the hidden units pruning left "
                "unused (`bayes_sws.compress.surgery.remove_dead_units`: a unit nothing reads, or "
                "one without inputs whose constant output is folded into the next layer's "
                "bias; the function is unchanged and the error after is measured on the "
                "smaller network); the rate stays relative to the full 32-bit network, and "
                "*all units ×* is the rate with every unit stored. Unless it has "
                "`--keep-unit-order`, both also store the hidden units in the order that takes "
                "the fewest bits (`bayes_sws.compress.storage_unit_orders`, a local search "
                "over the same count: fewer filler entries, the same function). "
                "For soft weight-sharing, "
                "*error before* is the "
                "retrained network, *error quantised* the network right after quantisation, "
                "*error after* the final network. Where a row's settings have "
                "`finetune_epochs` > 0 (the digits and LeNet-5 rows), that is after the centroid "
                "fine-tuning step Deep Compression ends with "
                "(`bayes_sws.compress.codebook.finetune_codebook`, Han et al.'s Eq. 3: assignments and "
                "pruned weights fixed, shared values and biases trained by Adam), for the same "
                "number of epochs at the same learning rate and batch size, unless the row "
                "sets its own `finetune_lr`. Every soft weight-sharing setting was chosen on "
                "a validation split of the training set (`bayes_sws.compress.pipeline.RECIPES`); "
                "a row's label shows λ as chosen there, and the retraining on the whole "
                "training set uses λ times the training set's size over the split's (the same "
                "trade-off per image; the settings list the λ used). The Fashion-MNIST rows "
                "retrain under the soft-to-hard anneal of the precision prior "
                "(`precision_prior_final`), then fine-tune their codebooks for one epoch at lr "
                "10⁻⁴ (LeNet-5: it gives back the first convolution's quantisation loss; "
                "LeNet-5 also prunes whole hidden units, fine-tuning before and after). "
                "*Δ error* is error "
                "after minus the pretrained error. *dc-han* "
                "uses Han et al.'s per-layer pruning rates and bit widths, *dc-matched* the "
                "per-layer sparsity and number of shared values that soft weight-sharing "
                "found (so both sit at nearly the same compression rate). *Shared values* "
                "counts zero; for Deep Compression it is the largest per-layer codebook. "
                "Wall time excludes pretraining."
            ),
            "",
            f"Command: `{command}`  ",
            f"Machine: {machine_line(threads)}  ",
            f"Total wall time: {_time(total)} (pretraining excluded when cached)",
            "",
            markdown(rows),
            "",
            "Targets, checked on the rows above:",
            "",
            *goal_lines(rows),
            "",
            "Pretrained networks (cached in `benchmarks/cache/`):",
            "",
            *pre_lines,
            "",
            "Settings:",
            "",
            *settings,
            "",
            layer_tables(rows),
            (
                "For reference, Ullrich et al. (2017, Table 1) on MNIST: LeNet-300-100 "
                "1.89 % → 1.94 % error, 4.3 % non-zero, 64×; LeNet-5-Caffe 0.88 % → 0.97 %, "
                "0.5 %, 162×; Deep Compression 40× and 39×. Fashion-MNIST is a harder task "
                "for the same networks (about 10 % error instead of 2 %), and it leaves "
                "fewer weights idle: its garments fill the frame where MNIST digits leave a "
                "blank border."
            ),
            "",
        ]
    )


def _section_lines(lines: list[str], section: str = SECTION) -> tuple[int, int] | None:
    """First and one-past-last line of the ``section`` (a heading), None if there is none."""
    marks = [line.rstrip() for line in lines]
    if section not in marks:
        return None
    start = marks.index(section)
    end = next((i for i in range(start + 1, len(marks)) if marks[i].startswith("## ")), len(marks))
    return start, end


def write_section(path: Path, text: str, section: str = SECTION) -> None:
    """Replace a benchmark's section of BENCHMARKS.md (or append it), keep the rest."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = old.splitlines(keepends=True)
    span = _section_lines(lines, section)
    if span is None:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        start, end = span
        new = (
            "".join(lines[:start])
            + text
            + ("\n" if end < len(lines) else "")
            + "".join(lines[end:])
        )
    path.write_text(new.rstrip("\n") + "\n")


def tuning(row: dict) -> str:
    """Where a row's settings come from: Han et al., or a validation split."""
    case = CASES[row["case"]]
    if row["method"].removeprefix("dc-matched to ") == case.chosen:
        origin, matched = "**chosen on validation**", "matched to a row chosen on validation"
        if case.recipe.refit_prior_scale is not None:
            origin += f" (λ={case.recipe.prior_scale:g} there; refit at its {case.recipe.rate:g}×)"
        budget = case.recipe.settings.get("prune_units")
        if budget is not None:
            origin += f"; units pruned within {budget:g} nats a point"
    else:
        origin, matched = "λ front, settings chosen on validation", "matched to a λ front row"
    if "layer_table" in row:
        return origin
    return matched if row["method"].startswith("dc-matched") else "Han et al.'s published rates"


def code_version() -> str:
    """The checkout's commit (``git rev-parse --short HEAD``), noting uncommitted changes."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], check=False, cwd=REPO, capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown commit (not a git checkout)"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{commit} with uncommitted changes" if dirty else commit


def summary(
    rows: list[dict], command: str, threads: int, recorded: str, pretrain: dict | None = None
) -> str:
    """The short table of BENCHMARKS.md's "Current figures", between the summary markers.

    ``recorded`` says when and at which code the run was made (date, commit); ``pretrain``
    (case name to :func:`pretrained`'s info) where each pretrained network came from.
    """
    origins = "; ".join(
        f"{name} {pretrained_origin(info)}" for name, info in (pretrain or {}).items()
    )
    lines = [
        SUMMARY_START,
        f"Command: `{command}`  ",
        f"Run: {recorded}  ",
        f"Machine: {machine_line(threads)}" + ("  " if origins else ""),
        *([f"Pretrained networks: {origins}"] if origins else []),
        "",
        (
            "| case | method | error % pretrained → after | Δ error (points) | compression × "
            "| (all units ×) | settings |"
        ),
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['case']} | {row['method']} | {_pct(1 - row['pretrained_accuracy'])} → "
            f"{_pct(1 - row['accuracy_after'])} | {_delta(row)} | "
            f"**{row['compression_rate']:.1f}** | {row['compression_rate_all_units']:.1f} | "
            f"{tuning(row)} |"
        )
    lines += [
        "",
        (
            "*Chosen on validation*: λ and every other setting were chosen on a validation split "
            "carved from the training set (`benchmarks/compression_validated.py`, "
            "`bayes_sws.compress.pipeline.RECIPES`); this run pretrains and retrains on the "
            "whole training set with them, λ scaled by the training set's size over the split's "
            "(the same trade-off per image; a row's label shows λ as chosen), and reads the "
            "test set once. Where a recipe says so, the chosen row refits at the λ (on the same "
            "scale) at which the refit reaches the rate chosen on validation, found on the "
            "training set alone (`benchmarks/calibrate_refit.py`). The other λ of a case trace "
            "its front with the same settings."
        ),
        SUMMARY_END,
    ]
    return "\n".join(lines) + "\n"


def write_summary(path: Path, text: str) -> bool:
    """Replace the lines from SUMMARY_START to SUMMARY_END with ``text``; False if absent."""
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    marks = [line.rstrip() for line in lines]
    if SUMMARY_START not in marks or SUMMARY_END not in marks[marks.index(SUMMARY_START) :]:
        return False
    start = marks.index(SUMMARY_START)
    end = marks.index(SUMMARY_END, start)
    path.write_text("".join(lines[:start]) + text + "".join(lines[end + 1 :]))
    return True


def archive_section(path: Path, history: Path) -> bool:
    """Copy the Compression section of ``path`` into ``history``, before its older runs.

    The entry is headed by the run line of the summary block (date, commit) and the
    command, as the other entries are; False when ``path`` has no Compression section.
    """
    lines = path.read_text().splitlines() if path.exists() else []
    span = _section_lines(lines)
    if span is None:
        return False
    body = lines[span[0] + 1 : span[1]]
    while body and not body[0].strip():
        body.pop(0)
    runs = [
        line[len("Run: ") :].strip()
        for line in lines
        if line.startswith("Run: ") and "code at" in line
    ]
    commands = [
        line[len("Command: `") :].strip().rstrip("`")
        for line in body
        if line.startswith("Command: `")
    ]
    entry = [
        f"## Compression: run of {runs[0] if runs else 'unknown date'}",
        "",
        "Command(s):",
        "",
        *(f"    {command}" for command in commands),
        "",
        *("#" + line if line.startswith("### ") else line for line in body),
    ]
    old = history.read_text().splitlines() if history.exists() else ["# Benchmark history", ""]
    at = next((i for i, line in enumerate(old) if line.startswith("## Compression")), len(old))
    while entry[-1] == "":
        entry.pop()
    history.parent.mkdir(parents=True, exist_ok=True)
    history.write_text("\n".join([*old[:at], *entry, "", *old[at:]]).rstrip("\n") + "\n")
    return True


# --------------------------------------------------------------------------- main


def add_set_option(parser: argparse.ArgumentParser, help: str) -> None:
    """``--set METHOD.NAME=VALUE`` (repeatable), read by :func:`_parse_overrides`."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="METHOD.NAME=VALUE",
        help=help,
    )


def _parse_overrides(items: list[str], methods: tuple[str, ...] = ("sws", "dc")) -> dict[str, dict]:
    """``{method: {NAME: VALUE}}`` for every ``--set METHOD.NAME=VALUE`` (VALUE read as JSON
    where it is, else kept as the string), one key per name of ``methods``."""
    out: dict[str, dict] = {method: {} for method in methods}
    for item in items:
        key, _, value = item.partition("=")
        method, _, name = key.partition(".")
        if method not in out or not name or not value:
            expected = " or ".join(f"{m}.NAME=VALUE" for m in methods)
            raise SystemExit(f"--set expects {expected}, got {item!r}")
        try:
            out[method][name] = json.loads(value)
        except json.JSONDecodeError:
            out[method][name] = value
    return out


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class Task:
    """One row to compute: a soft weight-sharing λ, Han's Deep Compression, or Deep
    Compression matched to a soft weight-sharing row (``label``, whose per-layer sparsity
    and codebook sizes ``matched`` carries once that row is done)."""

    case: str
    method: str  # "sws", "dc-han" or "dc-matched"
    label: str = ""
    matched: tuple = ()  # dc-matched: matched_dc_settings of the sws row, as (prune, clusters)

    @property
    def name(self) -> str:
        return {"sws": self.label, "dc-han": "dc-han"}.get(
            self.method, f"dc-matched to {self.label}"
        )


def sws_labels(name: str, chosen_only: bool = False) -> list[str]:
    """Case ``name``'s soft weight-sharing rows, in table order: every λ of its front, or with
    ``chosen_only`` just the one chosen on validation (replicates with ``--seed``)."""
    case = CASES[name]
    return [case.chosen] if chosen_only else list(case.sws)


def _row_order(
    names: list[str], methods: list[str], chosen_only: bool = False
) -> list[tuple[str, str]]:
    """(case, row name) in the order the tables list them: per case its soft
    weight-sharing rows, Han's Deep Compression, then the matched ones."""
    order = []
    for name in names:
        labels = sws_labels(name, chosen_only) if "sws" in methods else []
        order += [(name, label) for label in labels]
        order += [(name, "dc-han")] if "dc-han" in methods else []
        matched = labels if "dc-matched" in methods else []
        order += [(name, f"dc-matched to {label}") for label in matched]
    return order


@functools.lru_cache(maxsize=2)
def case_data(name: str):
    """Case ``name``'s data, loaded once per process (every task of a case reads it)."""
    return load(CASES[name])


def prepare_case(name: str, options: dict) -> dict:
    """The pretrained network of case ``name`` (its state), its record and test accuracy."""
    torch.set_num_threads(options["threads"])
    case = CASES[name]
    data = case_data(name)
    say(f"{name}: pretraining (or loading from cache)")
    net, info = pretrained(
        case, data, seed=options["seed"], cache=options["cache"], progress=options["progress"]
    )
    pre_acc = accuracy(net, data.x_test, data.y_test)
    say(
        f"{name}: pretrained test error {100 * (1 - pre_acc):.2f} %"
        + (" (cached)" if info["cached"] else f" in {_time(info['wall_time'])}")
    )
    return {"state": net.state_dict(), "info": info, "accuracy": pre_acc}


def run_task(task: Task, options: dict, prepared: dict) -> dict:
    """One row (JSON-ready: a soft weight-sharing result as its ``to_dict()``).

    Runs in a worker process with ``--jobs > 1``, so it takes plain options and data.
    Every row seeds its own retraining, so it is the same whichever process runs it and
    in whichever order.
    """
    torch.set_num_threads(options["threads"])
    case = CASES[task.case]
    data = case_data(task.case)
    net = build(case, data)
    net.load_state_dict(prepared["state"])
    say(f"{task.case}: {task.name}: started")
    common = {
        "seed": options["seed"],
        "progress": options["progress"],
        "remove_dead_units": options["remove_dead_units"],
        "reorder_units": options["reorder_units"],
    }
    if task.method == "sws":
        row = run_sws(
            case,
            task.label,
            copy.deepcopy(net),
            data,
            overrides=options["overrides"]["sws"],
            dc_overrides=options["overrides"]["dc"],
            **common,
        )
        for path in (
            save_figures(task.case, row, net, options["figures"]) if options["figures"] else ()
        ):
            say(f"{task.case}: wrote {path}")
        row["result"] = row["result"].to_dict()
    else:
        prune, clusters = task.matched or (case.han["prune_fraction"], case.han["num_clusters"])
        row = run_dc(
            case,
            net,
            data,
            name=task.name,
            overrides=options["overrides"]["dc"],
            prune_fraction=prune,
            num_clusters=clusters,
            **common,
        )
    row["case"] = task.case
    row["pretrained_accuracy"] = prepared["accuracy"]
    say(
        f"{task.case}: {row['method']}: error {100 * (1 - row['accuracy_after']):.2f} % "
        f"(pretrained {100 * (1 - prepared['accuracy']):.2f} %), non-zero "
        f"{100 * row['nonzero_fraction']:.2f} %, {row['compression_rate']:.1f}x, "
        f"{_time(row['wall_time'])}"
    )
    return row


def estimated_cost(task: Task, options: dict, info: dict) -> float:
    """Rough seconds a task takes: its training epochs at the pretraining's time per epoch
    (soft weight-sharing's prior about 1.5x that), to start the longest rows first."""
    case = CASES[task.case]
    per_epoch = info.get("wall_time", 1.0) / info["key"]["pretrain"]["num_epochs"]
    if task.method == "sws":
        settings = {**case.sws[task.label], **options["overrides"]["sws"]}
        return 1.5 * per_epoch * float(settings.get("num_epochs") or 1)
    dc = {**case.dc, **options["overrides"]["dc"]}
    return per_epoch * (dc["finetune_epochs"] + dc["centroid_epochs"])


class _Inline:
    """An executor that runs each call at once, in this process (``--jobs 1``)."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc) -> None:
        return None


def run_grid(names: list[str], options: dict, jobs: int) -> tuple[list[dict], dict]:
    """Every row of every case, ``jobs`` rows at a time: the rows in table order, and each
    case's pretraining record.

    A list scheduler: whenever a process is free it takes the next case to pretrain (or
    load), else the longest row whose case is ready (:func:`estimated_cost`), so rows of a
    case start while another case still pretrains, and a Deep Compression row matched to a
    soft weight-sharing row joins the queue as soon as that row is done. Only ``jobs`` tasks
    are in the pool at a time, so the choice is made when a process frees, not at
    submission. With ``jobs == 1`` all of it runs in this process, in the same order.
    """
    if jobs == 1:
        pool = _Inline()
    else:
        say(f"running {len(names)} cases in {jobs} processes, {options['threads']} thread(s) each")
        pool = ProcessPoolExecutor(
            max_workers=jobs, mp_context=multiprocessing.get_context("spawn")
        )
    methods = options["methods"]
    rows: dict[tuple[str, str], dict] = {}
    prepared: dict[str, dict] = {}
    to_prepare = list(names)
    ready: list[Task] = []  # rows whose case is prepared, not yet started
    running: dict[Future, str | Task] = {}  # a case name while it is prepared

    def cost(task: Task) -> float:
        return estimated_cost(task, options, prepared[task.case]["info"])

    with pool:
        while to_prepare or ready or running:
            while len(running) < jobs and (to_prepare or ready):
                if to_prepare:
                    name = to_prepare.pop(0)
                    running[pool.submit(prepare_case, name, options)] = name
                else:
                    task = max(ready, key=cost)  # the first of equals: table order
                    ready.remove(task)
                    running[pool.submit(run_task, task, options, prepared[task.case])] = task
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in sorted(finished, key=lambda f: str(running[f])):
                item = running.pop(future)
                if isinstance(item, str):
                    prepared[item] = future.result()
                    ready += [
                        Task(item, method, label)
                        for method, label in [
                            ("sws", label) for label in sws_labels(item, options["chosen_only"])
                        ]
                        + [("dc-han", "")]
                        if method in methods
                    ]
                    continue
                row = rows[item.case, item.name] = future.result()
                if item.method == "sws" and "dc-matched" in methods:
                    ready.append(
                        Task(item.case, "dc-matched", item.label, matched_dc_settings(row))
                    )
    ordered = [rows[key] for key in _row_order(names, options["methods"], options["chosen_only"])]
    return ordered, {name: prepared[name]["info"] for name in names}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits cases only (about a minute)")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), help="run these cases")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["sws", "dc-han", "dc-matched"],
        choices=["sws", "dc-han", "dc-matched"],
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of pretraining and of every row (default 0, the recorded grid's); another "
        "seed replicates the whole pipeline",
    )
    parser.add_argument(
        "--chosen-only",
        action="store_true",
        help="of each case's soft weight-sharing rows only the λ chosen on validation (and "
        "Deep Compression matched to it): the rows to replicate with other seeds",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="rows (each λ, each Deep Compression run) computed in this many processes at once, "
        "longest first (default 1)",
    )
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help="directory for pretrained networks"
    )
    parser.add_argument("--no-cache", action="store_true")
    add_set_option(
        parser,
        "override a setting, e.g. sws.prior_scale=0.005 (tuning only; λ as at the validation "
        "split's size, scaled to the training set's like the rows')",
    )
    parser.add_argument(
        "--keep-dead-units",
        action="store_true",
        help="store every hidden unit (by default both methods drop the units pruning left "
        "unused, an exact clean-up; the table shows the rate without it either way)",
    )
    parser.add_argument(
        "--keep-unit-order",
        action="store_true",
        help="store the hidden units in their order (by default both methods store them in "
        "the order that takes the fewest bits, bayes_sws.compress.storage_unit_orders; the "
        "same function)",
    )
    parser.add_argument("--json", type=Path, help="also write all numbers to this JSON file")
    parser.add_argument(
        "--figures",
        type=Path,
        help="save the plots of every soft weight-sharing run here, and per case the "
        "compression rate against test error of every method",
    )
    parser.add_argument(
        "--write",
        action="store_true",
        help=f"replace the '{SECTION}' section of BENCHMARKS.md and its Current-figures table",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: on a terminal)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    names = args.cases or (QUICK if args.quick else FULL)
    overrides = _parse_overrides(args.overrides)
    if "dc-matched" in args.methods and "sws" not in args.methods:
        parser.error("dc-matched needs the sws method (it copies its per-layer sparsity)")
    command = "python benchmarks/compression.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    cache = None if args.no_cache else args.cache

    if args.jobs < 1:
        parser.error(f"--jobs must be a positive number of processes, got {args.jobs}")
    pruning = [
        n
        for n in names
        if any(
            {**kw, **overrides["sws"]}.get("prune_units") is not None
            for kw in CASES[n].sws.values()
        )
    ]
    if args.keep_dead_units and "sws" in args.methods and pruning:
        parser.error(
            f"--keep-dead-units: soft weight-sharing prunes hidden units in {pruning} "
            "(prune_units), which removes them; drop --keep-dead-units, or add "
            "--set sws.prune_units=null"
        )
    if args.jobs > 1 and args.progress:
        parser.error("--progress needs --jobs 1 (bars of parallel rows would interleave)")
    options = {
        "methods": args.methods,
        "seed": args.seed,
        "threads": args.threads,
        "cache": cache,
        "overrides": overrides,
        "figures": args.figures,
        "progress": args.progress if args.jobs == 1 else False,
        "remove_dead_units": not args.keep_dead_units,
        "reorder_units": not args.keep_unit_order,
        "chosen_only": args.chosen_only,
    }
    version = code_version()  # the code that runs, before --write changes the tree
    start = time.perf_counter()
    rows, pretrain_info = run_grid(list(names), options, args.jobs)
    total = time.perf_counter() - start

    print(markdown(rows))
    print()
    for path in save_rate_figures(rows, args.figures) if args.figures else ():
        say(f"wrote {path}")
    print(layer_tables(rows))
    if args.json:
        payload = rows
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "command": command,
                    "machine": machine_line(args.threads),
                    "total_wall_time": total,
                    "pretrained": pretrain_info,
                    "rows": payload,
                },
                indent=1,
                default=str,
            )
        )
    if args.write:
        if any(overrides.values()):
            say("note: --set overrides are recorded in the command line written to BENCHMARKS.md")
        path = REPO / "BENCHMARKS.md"
        if archive_section(path, HISTORY):
            say(f"moved the previous Compression section to {HISTORY.relative_to(REPO)}")
        write_section(path, section(rows, pretrain_info, command, args.threads, total))
        say("wrote the Compression section of BENCHMARKS.md")
        recorded = f"{time.strftime('%Y-%m-%d', time.gmtime())}, code at {version}"
        if write_summary(path, summary(rows, command, args.threads, recorded, pretrain_info)):
            say("wrote the compression table of BENCHMARKS.md's Current figures")
        else:
            say(f"note: no '{SUMMARY_START}' ... '{SUMMARY_END}' block in BENCHMARKS.md to update")
        import results_tables  # benchmarks/ is on sys.path: run as a script, or imported by name

        results_tables.main([str(REPO)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
