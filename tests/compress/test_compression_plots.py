"""What the compression plots draw, read back from the figure.

Oracles: the scatter's points and colours from the inputs in the order of the
keys of ``before``; histogram counts from ``np.histogram``; non-zero shares by a
hand count of the network's weights; tick labels by their rendered boxes (no two
may overlap).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from conftest import assert_close
from matplotlib.backends.backend_agg import FigureCanvasAgg
from torch import nn

from bayes_sws.compress.plots import plot_layer_sparsity, plot_weights_before_after
from bayes_sws.compress.quantize import quantize
from bayes_sws.compress.storage import storage_report


def _quantised_pair():
    """Issue 17's case: 21,000 weights quantised to three values (log counts in one decade)."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(200, 100), nn.Linear(100, 10))
    pi, mu = torch.tensor([0.8, 0.1, 0.1]), torch.tensor([0.0, -0.05, 0.05])
    result = quantize(net, pi, mu, torch.full((3,), 0.01))
    return net, result


def _overlaps(labels, renderer):
    boxes = [t.get_window_extent(renderer) for t in labels if t.get_visible() and t.get_text()]
    return [(a, b) for a, b in itertools.combinations(boxes, 2) if a.overlaps(b)]


def test_tick_labels_of_every_panel_do_not_overlap():
    """Issue 17: overlapping log-count tick labels on the compression scatter."""
    net, result = _quantised_pair()
    fig = plot_weights_before_after(net, result.net, result.assignments)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            labels = axis.get_majorticklabels() + axis.get_minorticklabels()
            assert not _overlaps(labels, renderer), (ax, axis)
    ax, ax_top, ax_right = fig.axes
    for count_axis in (ax_top.yaxis, ax_right.xaxis):  # the log counts keep a label or more
        assert [t.get_text() for t in count_axis.get_majorticklabels() if t.get_text()]
        assert not [t.get_text() for t in count_axis.get_minorticklabels() if t.get_text()]


def test_scatter_and_histograms_show_every_weight():
    net, result = _quantised_pair()
    before = {n: p.detach() for n, p in net.named_parameters() if p.ndim == 2}
    after = {n: p.detach() for n, p in result.net.named_parameters() if p.ndim == 2}
    fig = plot_weights_before_after(before, after, result.assignments, max_points=30_000)
    ax, ax_top, ax_right = fig.axes
    x = np.concatenate([before[k].numpy().ravel() for k in before]).astype(np.float64)
    y = np.concatenate([after[k].numpy().ravel() for k in before]).astype(np.float64)
    classes = np.concatenate([result.assignments[k].numpy().ravel() for k in before])
    (points,) = ax.collections
    assert_close(points.get_offsets(), np.column_stack([x, y]), rtol=1e-6)
    assert_close(points.get_array(), classes % 20)
    # past max_points: a subset of distinct pairs is drawn, the histograms still count all
    sub = plot_weights_before_after(before, after, result.assignments, max_points=5_000)
    shown = np.asarray(sub.axes[0].collections[0].get_offsets())
    pairs = {(float(a), float(b)) for a, b in zip(x.astype(np.float32), y.astype(np.float32))}
    assert len(shown) == 5_000 and len(np.unique(shown, axis=0)) == 5_000
    assert all((float(a), float(b)) in pairs for a, b in shown.astype(np.float32))
    assert_close([p.get_height() for p in sub.axes[1].patches], np.histogram(x, bins=100)[0])
    assert_close([p.get_height() for p in ax_top.patches], np.histogram(x, bins=100)[0])
    assert_close([p.get_width() for p in ax_right.patches], np.histogram(y, bins=100)[0])
    assert ax_top.get_yscale() == "log" and ax_right.get_xscale() == "log"
    assert ax_top.get_ylim()[0] < 1 and ax_right.get_xlim()[0] < 1  # single counts show


def test_layer_sparsity_bars_and_an_all_pruned_layer():
    """Issue 17: a layer with every weight pruned was labelled "992×", a rate of nothing."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 10), nn.Linear(10, 2))
    with torch.no_grad():
        net[0].weight.mul_(torch.rand_like(net[0].weight) < 0.1)
        net[2].weight.zero_()
        net[3].weight.copy_(torch.round(net[3].weight * 4) / 4)
    report = storage_report(net)
    fig = plot_layer_sparsity(report)
    (ax,) = fig.axes
    weights = [net[i].weight.detach().numpy() for i in (0, 2, 3)]
    shares = [100 * np.count_nonzero(w) / w.size for w in weights]
    assert_close([bar.get_height() for bar in ax.patches], shares)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.weight", "2.weight", "3.weight"]
    labels = [t.get_text() for t in ax.texts]
    rates = [row.compression_rate for row in report.layers]
    assert labels == [f"{rates[0]:.0f}×", "all pruned", f"{rates[2]:.0f}×"]
    assert shares[1] == 0 and min(shares[0], shares[2]) > 0
