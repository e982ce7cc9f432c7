"""Benchmark: ``bayes_sws.fit`` under ``torchrun`` on 2 processes against 1, same global batch.

LeNet-300-100 (784-300-100-10, 266,200 weights under a 16-component prior,
``guide="map"``) on Fashion-MNIST-sized random data (the time of a step does
not depend on the values). Each side is a fresh ``torchrun --standalone
--nproc_per_node=k`` of this script with ``--worker``: every process fits
``--steps`` steps with the global batch ``--batch-size`` (each of the ``k``
processes evaluates its shard, then one ``all_reduce``;
:mod:`bayes_sws.infer.distributed`), with ``--threads`` torch threads
(default 1, so 2 processes use twice the cores of 1, as two devices would).
Rank 0 reports :attr:`FitResult.wall_time` (the optimisation loop); the
throughput is ``batch_size * steps / wall_time`` and the figure is the
2-process throughput over the 1-process one, the median over ``--rounds``
paired rounds (the order alternating, so a busy neighbour slows both sides).

Usage::

    python benchmarks/data_parallel.py            # 3 rounds of 300 steps
    python benchmarks/data_parallel.py --quick    # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    import bayes_sws as sws
    from bayes_sws.infer import distributed
    from bayes_sws.zoo.nets import lenet_300_100

    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.num_data, 784, generator=gen)
    y = torch.randint(0, 10, (args.num_data,), generator=gen)
    torch.manual_seed(0)
    model = sws.SWSModel(lenet_300_100(), sws.MixturePrior(16), prior_scale=1.0)
    result = sws.fit(
        model, x, y, num_steps=args.steps, batch_size=args.batch_size, progress=False, seed=0
    )
    if dist.get_rank() == 0:
        Path(args.out).write_text(json.dumps({"wall_time": result.wall_time}))
    distributed.leave()  # the ranks meet first: none closes connections another still uses


def run_side(nproc: int, args: argparse.Namespace) -> float:
    """Samples per second of one fresh ``torchrun`` with ``nproc`` processes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "time.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += [f"--nproc_per_node={nproc}", __file__, "--worker", "--out", str(out)]
        command += [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in _SHARED]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"torchrun with {nproc} processes failed:\n{done.stderr[-3000:]}")
        wall = json.loads(out.read_text())["wall_time"]
    return args.batch_size * args.steps / wall


_SHARED = ("steps", "batch_size", "num_data", "threads")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-data", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 round of 20 steps")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.steps, args.rounds = 20, 1
    ratios = []
    for r in range(args.rounds):
        order = (1, 2) if r % 2 == 0 else (2, 1)
        speed = {k: run_side(k, args) for k in order}
        ratios.append(speed[2] / speed[1])
        print(
            f"round {r + 1}: 1 process {speed[1]:.0f} samples/s, 2 processes {speed[2]:.0f} "
            f"samples/s, ratio {ratios[-1]:.2f}x",
            flush=True,
        )
    print(
        f"data parallel (torchrun, gloo, global batch {args.batch_size}, {args.steps} steps): "
        f"2 processes / 1 process throughput = {statistics.median(ratios):.2f}x "
        f"(median of {len(ratios)} rounds; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    main()
