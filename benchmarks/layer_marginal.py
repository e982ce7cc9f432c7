"""Where a compressed network's next bits would come from: bits against training loss.

Reads a run that ``bayes-sws compress`` has stored (``RUN/model.sws``, and its
``config.json`` for the data) and, for every prior-carrying tensor in turn, zeroes the given
fractions of its smallest non-zero weights (by magnitude), or merges the given numbers of
pairs of its shared values (the closest by Ward's criterion); no retraining or fine-tuning
either way. Each row gives the bits the network is then stored in
(:func:`bayes_sws.compress.storage_report`, the benchmark's counting) against the mean
training cross-entropy and the training error the change adds. "Bits a millinat" is the bits
saved per 0.001 nats of training loss a point: where it is larger, that change buys more rate
for the same loss (a shared λ that leaves one layer far cheaper to prune than another leaves
rate there). Only the training set is read: what it informs is a setting's choice.

Usage::

    bayes-sws fit --recipe fashion-mnist/lenet-5 --out runs/ln5 && bayes-sws compress runs/ln5
    python benchmarks/layer_marginal.py runs/ln5 --fractions 0.1 0.2 0.3 --merges 2 4 8
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

import torch
import torch.nn.functional as F
from torch import nn

from bayes_sws.compress import load_compressed, storage_report
from bayes_sws.compress.params import check_param_names
from bayes_sws.runs.commands import MODEL_FILE, _load_data, _read_config


def scores(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 5000):
    """(mean cross-entropy in nats, error in per cent) of ``net`` on ``(x, y)``."""
    loss, wrong = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = net(x[i : i + batch])
            loss += F.cross_entropy(out, y[i : i + batch], reduction="sum").item()
            wrong += int((out.argmax(1) != y[i : i + batch]).sum())
    return loss / len(x), 100.0 * wrong / len(x)


def pruned(net: nn.Module, name: str, fraction: float) -> tuple[nn.Module, int]:
    """A copy of ``net`` with the smallest ``fraction`` of tensor ``name``'s non-zeros set to
    zero (ties at the threshold go too: a shared value goes whole), and how many it zeroed."""
    out = copy.deepcopy(net)
    param = dict(out.named_parameters())[name]
    with torch.no_grad():
        magnitudes = param.abs()[param != 0]
        count = int(fraction * magnitudes.numel())
        if count == 0:
            return out, 0
        threshold = magnitudes.kthvalue(count).values
        drop = (param != 0) & (param.abs() <= threshold)
        param[drop] = 0.0
    return out, int(drop.sum())


def merged(net: nn.Module, name: str, merges: int) -> tuple[nn.Module, int]:
    """A copy of ``net`` with ``merges`` pairs of tensor ``name``'s shared non-zero values
    merged, one after another, each into its weighted mean: every time the two neighbours
    whose merge adds the least squared error, ``n1 n2 / (n1 + n2) · gap²`` (Ward's criterion);
    and how many weights it changed."""
    out = copy.deepcopy(net)
    param = dict(out.named_parameters())[name]
    original = param.detach().clone()
    with torch.no_grad():
        for _ in range(merges):
            values, counts = torch.unique(param[param != 0], return_counts=True)
            if len(values) < 2:
                break
            n1, n2 = counts[:-1].double(), counts[1:].double()
            i = int((n1 * n2 / (n1 + n2) * (values[1:] - values[:-1]).double() ** 2).argmin())
            pair = (param == values[i]) | (param == values[i + 1])
            mean = (values[i] * n1[i] + values[i + 1] * n2[i]) / (n1[i] + n2[i])
            param[pair] = mean.to(param.dtype)
    return out, int((param != original).sum())


def run(
    run_dir: Path, fractions: list[float], merges: list[int], names: list[str] | None
) -> list[dict]:
    """The stored network's row, then one row per tensor and change (each fraction of its
    smallest non-zeros zeroed, each number of its shared values merged)."""
    net = load_compressed(run_dir / MODEL_FILE, allow_import=True)
    names = list(check_param_names(net, names))  # unknown names refused before the data load
    data = _load_data(_read_config(run_dir))

    def row(change: str, candidate: nn.Module, weights: int, tensor: str = "") -> dict:
        loss, error = scores(candidate, data.x_train, data.y_train)
        bits = storage_report(candidate, param_names=names).total_bits
        values = (tensor, change, weights, bits, loss, error)
        return dict(zip(("tensor", "change", "weights", "bits", "loss", "error"), values))

    rows = [row("as stored", net, 0)]
    changes = [(f"{f:.0%} smallest zeroed", pruned, f) for f in fractions]
    changes += [(f"{k} value(s) merged", merged, k) for k in merges]
    for name in names:
        for label, change, amount in changes:
            candidate, weights = change(net, name, amount)
            rows.append(row(label, candidate, weights, name))
            print(_line(rows[0], rows[-1]), flush=True)
    return rows


def _line(base: dict, row: dict) -> str:
    saved = base["bits"] - row["bits"]
    added = row["loss"] - base["loss"]
    per = f"{saved / (1000 * added):.0f}" if added > 0 else "-"
    return (
        f"| {row['tensor']} | {row['change']} | {row['weights']} | {saved} | "
        f"{100 * saved / base['bits']:.1f} | {added:+.4f} | {row['error'] - base['error']:+.2f} "
        f"| {per} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a run directory `bayes-sws compress` has stored")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--merges", type=int, nargs="*", default=[2, 4, 8])
    parser.add_argument("--tensors", nargs="+", default=None, help="default: every weight")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if not (args.run / MODEL_FILE).is_file():
        parser.error(f"{args.run} holds no {MODEL_FILE}; run `bayes-sws compress {args.run}`")
    bad = [f for f in args.fractions if not 0 < f < 1]
    if bad:
        parser.error(f"--fractions must lie strictly between 0 and 1, got {bad}")
    if any(k < 1 for k in args.merges):
        parser.error(f"--merges must be counts >= 1, got {args.merges}")
    torch.set_num_threads(args.threads)
    print(
        "| tensor | change | weights changed | bits saved | % of the bits | training loss "
        "(nats a point) | training error (points) | bits a millinat |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = run(args.run, args.fractions, args.merges, args.tensors)
    base = rows[0]
    print(
        f"\nas stored: {base['bits']} bits, training loss {base['loss']:.4f}, "
        f"training error {base['error']:.2f} %"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
