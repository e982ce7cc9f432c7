"""Plots of a compressed network: weights before against after, sparsity per layer, and
the mixture over the weights' histogram at several points of retraining.

Figures use :class:`matplotlib.figure.Figure` directly (no pyplot state, safe
under any backend); matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from .storage import StorageReport

__all__ = ["plot_layer_sparsity", "plot_mixture_evolution", "plot_weights_before_after"]


def _to_named_arrays(obj: Any, label: str) -> dict[str, np.ndarray]:
    if isinstance(obj, nn.Module):
        return {
            n: p.detach().cpu().numpy().ravel() for n, p in obj.named_parameters() if p.ndim >= 2
        }
    if isinstance(obj, Mapping):
        return {
            n: np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v).ravel()
            for n, v in obj.items()
        }
    if isinstance(obj, torch.Tensor):
        return {label: obj.detach().cpu().numpy().ravel()}
    return {label: np.asarray(obj).ravel()}


def _paired_weights(
    before: Any, after: Any, assignments: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights before and after, flattened in the order of ``before``'s keys, and a colour class each."""
    b, a = _to_named_arrays(before, "weights"), _to_named_arrays(after, "weights")
    missing = [k for k in b if k not in a]
    if missing:
        raise ValueError(f"`after` has no weights for {missing}; keys of `after`: {sorted(a)}")
    x = np.concatenate([b[k] for k in b]).astype(np.float64)
    y = np.concatenate([a[k] for k in b]).astype(np.float64)
    if x.shape != y.shape:
        raise ValueError(f"before and after hold {x.size} and {y.size} weights; they must match")
    if assignments is None:
        _, classes = np.unique(y, return_inverse=True)
    else:
        c = _to_named_arrays(assignments, "weights")
        missing = [k for k in b if k not in c]
        if missing:
            raise ValueError(f"`assignments` has no entries for {missing}; keys: {sorted(c)}")
        classes = np.concatenate([c[k] for k in b])
        if classes.shape != x.shape:
            raise ValueError(f"assignments hold {classes.size} entries for {x.size} weights")
    return x, y, np.asarray(classes).astype(np.int64).ravel()


def _count_histogram(ax: Any, values: np.ndarray, *, horizontal: bool) -> None:
    """A 100-bin histogram on a log count axis with a few decade labels that do not collide."""
    from matplotlib.ticker import LogLocator, NullFormatter

    orientation = "horizontal" if horizontal else "vertical"
    counts, _, _ = ax.hist(values, bins=100, color="0.4", log=True, orientation=orientation)
    count_axis = ax.xaxis if horizontal else ax.yaxis
    count_axis.set_major_locator(LogLocator(base=10, numticks=3))
    count_axis.set_minor_formatter(NullFormatter())
    limits = (0.5, 2.0 * max(counts.max(), 1.0))  # 10^0 always labelled
    if horizontal:
        ax.set_xlim(*limits)
        ax.set_xlabel("count (log)")
        ax.tick_params(labelleft=False)
    else:
        ax.set_ylim(*limits)
        ax.set_ylabel("count (log)")
        ax.tick_params(labelbottom=False)


def plot_weights_before_after(
    before: Any,
    after: Any,
    assignments: Any = None,
    *,
    max_points: int = 20_000,
    seed: int = 0,
    title: str | None = None,
):
    """Scatter each weight before against after retraining (Ullrich et al. 2017, Fig. 1).

    Parameters
    ----------
    before, after : Tensor, array, dict name -> Tensor, or nn.Module
        Weights before (e.g. pretrained) and after (retrained or quantised).
        Dicts are matched by key (the keys of ``before``); a module contributes
        its parameters with ``ndim >= 2``.
    assignments : same form as ``after``, optional
        Component of each weight (e.g. :attr:`QuantizeResult.assignments`),
        used for the colours; by default each distinct value of ``after`` is
        one colour class.
    max_points : int
        At most this many weights are drawn (a fixed random subset); the
        marginal histograms use all of them.

    Returns
    -------
    matplotlib.figure.Figure
        Scatter with histograms of ``before`` (top, log counts) and ``after``
        (right, log counts).
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    x, y, classes = _paired_weights(before, after, assignments)
    rng = np.random.default_rng(seed)
    shown = (
        rng.choice(x.size, size=max_points, replace=False)
        if x.size > max_points
        else np.arange(x.size)
    )

    fig = Figure(figsize=(6.5, 6.0), layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=(4, 1), height_ratios=(1, 4))
    ax = fig.add_subplot(grid[1, 0])
    ax_top = fig.add_subplot(grid[0, 0], sharex=ax)
    ax_right = fig.add_subplot(grid[1, 1], sharey=ax)
    ax.scatter(
        x[shown],
        y[shown],
        c=classes[shown] % 20,
        cmap="tab20",
        vmin=0,
        vmax=19,
        s=4,
        alpha=0.6,
        linewidths=0,
    )
    ax.axhline(0.0, color="0.6", lw=0.5, zorder=0)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
    ax.set_xlabel("weight before")
    ax.set_ylabel("weight after")
    _count_histogram(ax_top, x, horizontal=False)
    _count_histogram(ax_right, y, horizontal=True)
    if title:
        fig.suptitle(title)
    return fig


def plot_layer_sparsity(report: StorageReport, *, title: str | None = None):
    """Bar chart of the non-zero share of each compressed layer.

    Each bar is annotated with the layer's compression rate, or "all pruned"
    for a layer without a non-zero weight (its rate only measures what is left
    to store, its bias and the empty index); the figure title carries the totals.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    names = [r.name for r in report.layers]
    shares = [100.0 * r.nonzero_fraction for r in report.layers]
    fig = Figure(figsize=(max(4.0, 1.0 + 0.9 * len(names)), 3.5), layout="constrained")
    ax = fig.add_subplot()
    bars = ax.bar(range(len(names)), shares, color="tab:blue")
    for bar, row in zip(bars, report.layers, strict=True):
        ax.annotate(
            f"{row.compression_rate:.0f}×" if row.num_nonzero else "all pruned",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("non-zero weights (%)")
    ax.set_ylim(0, max([*shares, 1.0]) * 1.15)
    totals = (
        f"{100 * report.nonzero_fraction:.2f}% non-zero, compression {report.compression_rate:.1f}×"
    )
    fig.suptitle(title or totals)
    return fig


def _evolution_panel(ax: Any, snapshot: Mapping[str, Any], edges: np.ndarray) -> tuple[list, float]:
    """One record: the weights' counts as bars, the mixture's expected count per bin as steps.

    Returns the artists for the legend and the highest bar or step.
    """
    from ..diagnostics.posterior import mixture_bin_mass

    counts = np.asarray(snapshot["counts"], dtype=np.float64)
    pi, mu, sigma = (np.asarray(snapshot[k], dtype=np.float64) for k in ("pi", "mu", "sigma"))
    expected = counts.sum() * mixture_bin_mass(pi, mu, sigma, edges).sum(-1)
    handles = [
        ax.stairs(counts, edges, fill=True, color="0.75", label="weights"),
        ax.stairs(expected, edges, color="tab:red", lw=1.0, label="mixture"),
    ]
    shown = mu[(mu > edges[0]) & (mu < edges[-1])]
    handles += ax.plot(shown, np.full_like(shown, 0.7), "v", color="tab:blue", ms=4, label="means")
    return handles, float(max(counts.max(), expected.max(), 1.0))


def plot_mixture_evolution(history: Mapping[str, Any], *, title: str | None = None):
    r"""The mixture over the weights' histogram at several points of retraining (small multiples).

    One panel per record of ``history`` (what a run writes to
    ``mixture_history.json``): the counts of the weights in fixed bins (bars)
    and the mixture's expected count of each bin,
    :math:`n \sum_j \pi_j [\Phi((e_{k+1} - \mu_j)/\sigma_j) - \Phi((e_k - \mu_j)/\sigma_j)]`
    for :math:`n` weights (steps; the convention of
    :func:`bayes_sws.diagnostics.plot_mixture_over_histogram`), with the means
    marked; all panels share the bins and the log count axis.

    Parameters
    ----------
    history : mapping
        ``edges`` (bins + 1 floats), ``snapshots``: records with ``step``,
        ``counts`` (one per bin), ``pi``, ``mu``, ``sigma``; optionally
        ``num_steps`` (for the share of the run in each panel's title).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import math

    from matplotlib.figure import Figure

    edges = np.asarray(history["edges"], dtype=np.float64)
    snapshots = list(history["snapshots"])
    if not snapshots:
        raise ValueError("the history holds no records to plot")
    num_steps = history.get("num_steps")
    ncols = min(len(snapshots), 5)
    nrows = math.ceil(len(snapshots) / ncols)
    fig = Figure(figsize=(3.0 * ncols, 2.6 * nrows + 0.5), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).reshape(-1)
    handles: list = []
    top = 1.0
    for ax, snapshot in zip(axes, snapshots):
        handles, highest = _evolution_panel(ax, snapshot, edges)
        top = max(top, highest)
        share = f" ({100 * snapshot['step'] / num_steps:.0f} %)" if num_steps else ""
        ax.set_title(f"step {snapshot['step']}{share}", fontsize=9)
        ax.set_xlabel("weight")
    axes[0].set_yscale("log")  # shared by all panels, as are the limits
    axes[0].set_ylim(0.5, 3 * top)
    axes[0].set_xlim(edges[0], edges[-1])
    for ax in axes[::ncols]:
        ax.set_ylabel("count per bin (log)")
    for ax in axes[len(snapshots) :]:
        ax.set_visible(False)
    labels = ["weights (posterior median)", "mixture: expected count per bin", "component means"]
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=8)
    fig.suptitle(title or "the mixture over the weights during retraining")
    return fig
