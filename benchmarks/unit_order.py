"""Benchmark: the unit-order search's swaps, counted incrementally against a recount.

:func:`bayes_sws.compress.storage_unit_orders` tries random exchanges of two hidden units
and keeps each that does not store the network in more bits. Counted incrementally (the
default), a swap costs work in proportion to the entries it moves; recounted, in
proportion to the tensors it touches. Both make the same decisions (the script checks
that the orders and bits agree), so this times the same search both ways, in one process,
one after the other on the same network, and prints the time per swap and the ratio. It
then runs the incremental search with larger budgets and prints the bits and the rate
each buys.

The networks: LeNet-300-100 and LeNet-5-Caffe, pruned by magnitude to a sparsity like
soft weight-sharing's after retraining (per layer, ``KEEP``) and their survivors rounded
to 16 shared values per layer, dead units removed, as :func:`~bayes_sws.compress.stored_network`
stores them. Weights from a pretrained state dict (``--weights NET=PATH``, e.g. the
benchmarks' cache) or, without one, a fresh initialisation (seed 0): the search's cost
and gains depend on where the survivors sit, so say which.

Usage::

    python benchmarks/unit_order.py --swaps 2000 20000 200000 --recount-swaps 2000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

import torch
from machine import cpu_model  # benchmarks/ is on sys.path: run as a script, or imported by name
from torch import nn

from bayes_sws.compress import permute_units, remove_dead_units, storage_report
from bayes_sws.compress.params import check_param_names
from bayes_sws.compress.storage import REORDER_SWAPS, _UnitOrderSearch
from bayes_sws.zoo.nets import lenet5_caffe, lenet_300_100

NETWORKS = {"lenet-300-100": lenet_300_100, "lenet-5": lenet5_caffe}
#: Fraction of each weight tensor kept: rough guesses at soft weight-sharing's Fashion-MNIST
#: networks (a few percent overall, the dense layers sparsest), not their measured sparsity.
KEEP = {
    "lenet-300-100": {"0.weight": 0.025, "2.weight": 0.08, "4.weight": 0.3},
    "lenet-5": {"0.weight": 0.5, "2.weight": 0.15, "5.weight": 0.007, "7.weight": 0.1},
}


def compressed_like(name: str, weights: Path | None) -> tuple[nn.Module, nn.Module, str]:
    """(the full network, the network as stored, where its weights came from)."""
    torch.manual_seed(0)
    net = NETWORKS[name]()
    source = "fresh initialisation (seed 0)"
    if weights is not None:
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        source = str(weights)
    with torch.no_grad():
        for param_name, p in net.named_parameters():
            keep = KEEP[name].get(param_name)
            if keep is None:
                continue
            flat = p.abs().reshape(-1)
            threshold = flat.kthvalue(max(1, int(flat.numel() * (1 - keep)))).values
            levels = torch.linspace(float(p.min()), float(p.max()), 16)
            snapped = levels[(p.unsqueeze(-1) - levels).abs().argmin(-1)]
            p.copy_(torch.where(p.abs() > threshold, snapped, torch.zeros_like(p)))
    return net, remove_dead_units(net).net, source


def search(stored: nn.Module, swaps: int, incremental: bool) -> tuple[dict, float, int]:
    """(orders, CPU seconds of the search, bits it counts) with the default settings."""
    names = check_param_names(stored, None)
    start = time.process_time()
    found = _UnitOrderSearch(
        stored, names, None, ("row", "column"), "fixed", incremental=incremental
    )
    orders = found.run(swaps, seed=0)
    return orders, time.process_time() - start, sum(found.bits.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", nargs="+", choices=sorted(NETWORKS), default=list(NETWORKS))
    parser.add_argument("--swaps", nargs="+", type=int, default=[REORDER_SWAPS, 20_000])
    parser.add_argument(
        "--recount-swaps",
        type=int,
        default=REORDER_SWAPS,
        help="swaps of the side-by-side run, incremental against recount",
    )
    parser.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="NET=PATH",
        help="a state dict to start from, per network (default: a fresh initialisation)",
    )
    args = parser.parse_args(argv)
    weights = {}
    for item in args.weights:
        key, sep, path = item.partition("=")
        if not sep or key not in NETWORKS or not Path(path).is_file():
            parser.error(
                f"--weights {item!r}: give NET=PATH with NET in {sorted(NETWORKS)} "
                "and PATH an existing state dict file"
            )
        weights[key] = Path(path)
    if min(args.swaps + [args.recount_swaps]) < 0:
        parser.error("--swaps and --recount-swaps must be >= 0")
    print(f"# {cpu_model()}, torch {torch.__version__}, 1 thread, CPU time")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(args.networks, args.swaps, args.recount_swaps, weights)
    finally:
        torch.set_num_threads(threads)


def _run(
    networks: list[str], budgets: list[int], recount_swaps: int, weights: dict[str, Path]
) -> int:
    for name in networks:
        net, stored, source = compressed_like(name, weights.get(name))
        base = storage_report(stored, reference=net)
        print(
            f"\n## {name}: weights from {source}; {base.num_nonzero} non-zeros, "
            f"{base.total_bits} bits in unit order ({base.compression_rate:.1f}x)"
        )
        times = {}
        for incremental in (True, False):  # the greedy start alone, then with the swaps
            _, start, _ = search(stored, 0, incremental)
            orders, seconds, bits = search(stored, recount_swaps, incremental)
            times[incremental] = (
                orders,
                seconds,
                max(seconds - start, 0.0) / max(recount_swaps, 1),
                bits,
            )
        (fast, t_fast, swap_fast, bits_fast), (slow, t_slow, swap_slow, bits_slow) = (
            times[True],
            times[False],
        )
        same = bits_fast == bits_slow and all(torch.equal(fast[k], slow[k]) for k in fast)
        print(
            f"{recount_swaps} swaps: recount {t_slow:.2f} s ({1e3 * swap_slow:.3f} ms a swap after the "
            f"greedy start), incremental {t_fast:.2f} s ({1e3 * swap_fast:.3f} ms a swap); "
            f"incremental / recount: whole search {t_fast / t_slow:.3f}, per swap "
            f"{swap_fast / swap_slow if swap_slow else float('nan'):.3f}; the same orders and "
            f"bits: {'yes' if same else 'NO'}"
        )
        if not same:
            print("ERROR: the incremental count disagrees with the recount", file=sys.stderr)
            return 1
        print("| swaps | CPU time | bits | compression × |\n|---:|---:|---:|---:|")
        for swaps in budgets:
            orders, seconds, bits = search(stored, swaps, incremental=True)
            report = storage_report(permute_units(stored, orders), reference=net)
            assert report.total_bits == bits + base.bias_bits + base.other_bits
            print(
                f"| {swaps} | {seconds:.1f} s | {report.total_bits} | "
                f"{report.compression_rate:.1f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
