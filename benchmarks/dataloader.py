"""Benchmark: ``fit`` on a ``DataLoader`` against ``fit`` on tensors; 2 DDP processes against 1.

Two measurements (issue 15), on LeNet-300-100 (784-300-100-10, 266,200 weights
under a 16-component prior, ``guide="map"``) and Fashion-MNIST-sized inputs
(random 784-pixel images and 10 labels, seeded: the time of a step does not
depend on the values):

0. **Reading alone**: microseconds per batch of ``fit``'s stream over each
   loader variant below, without the step (the median of 15 epochs, interleaved).
1. **Loader overhead**: the time per step of :func:`bayes_sws.fit` on tensors
   ``fit(model, x, y, batch_size=B)`` and on a ``DataLoader`` over the same data
   ``fit(model, DataLoader(TensorDataset(x, y), batch_size=B, shuffle=True))``
   (default collate, ``num_workers=0``), from :attr:`FitResult.wall_time` (the
   optimisation loop, set-up excluded). The two are interleaved (one round runs
   ``--steps`` steps of each, in an order that alternates every round) and each
   round's loader time is divided by the same round's tensor time, so every
   ratio is paired and a busy neighbour slows both sides alike; the median ratio
   over rounds is the figure. Goal: at most 1.05x per step. ``fit`` reads a
   ``DataLoader`` over a ``TensorDataset`` with the default collate by one
   gather per batch (:mod:`bayes_sws.infer.loaders`, "Whole batches"); two more
   variants show what that saves. ``collated`` is the same loader with
   ``collate_fn=`` a function of one's own calling ``default_collate``, which
   ``fit`` reads as the ``DataLoader`` gives it: B calls of ``dataset[i]`` and
   a ``torch.stack`` per batch, what every ``DataLoader`` cost before (the
   "before" figure, measured in the same run). ``batched`` gives whole batches
   itself, the documented form for other datasets: ``DataLoader(dataset,
   batch_size=None, sampler=BatchSampler(RandomSampler(dataset), B, False))``
   indexes the ``TensorDataset`` with the batch's index list.
2. **Data parallel** (``--ddp``): :class:`~bayes_sws.integrations.lightning.SWSLightningModule`
   under ``Trainer(strategy="ddp", accelerator="cpu")`` with 1 and with 2
   processes (gloo) on the same global batch ``G`` (``G/k`` per process), each
   a fresh ``python benchmarks/dataloader.py --ddp-worker ...`` that Lightning
   re-runs for its other rank. Rank 0 times every step (a callback); the median
   step time after ``--warmup`` steps gives the throughput ``G / time``; the
   figure is the 2-process throughput over the 1-process one.

Every process computes with ``--threads`` torch threads (default 1: on a shared
2-core machine more threads than free cores make the timings noise), so the
2-process run uses twice the cores of the 1-process run, as data parallelism
over two devices does.

Usage::

    python benchmarks/dataloader.py                     # loader vs tensors
    python benchmarks/dataloader.py --ddp               # and 2 processes vs 1
    python benchmarks/dataloader.py --quick             # smoke test (tiny budget)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

import torch

import bayes_sws as sws
from bayes_sws.zoo.nets import lenet_300_100

NUM_CLASSES, INPUT_DIM, COMPONENTS, PRIOR_SCALE = 10, 784, 16, 1e-3


def problem(num_data: int) -> tuple[torch.Tensor, torch.Tensor, torch.nn.Module]:
    """Seeded Fashion-MNIST-sized data and a LeNet-300-100 (the same in every process)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(num_data, INPUT_DIM, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (num_data,), generator=gen)
    torch.manual_seed(0)
    return x, y, lenet_300_100(INPUT_DIM, NUM_CLASSES)


def _model(net: torch.nn.Module) -> sws.SWSModel:
    return sws.SWSModel(net, sws.MixturePrior(COMPONENTS), prior_scale=PRIOR_SCALE)


VARIANTS = ("tensors", "loader", "batched", "collated")


def _collate(points):
    """The default collate, as a function ``fit`` does not know (read batch by batch)."""
    return torch.utils.data.default_collate(points)


def _loader(dataset, kind: str, batch_size: int) -> torch.utils.data.DataLoader:
    data = torch.utils.data
    if kind == "loader":
        return data.DataLoader(dataset, batch_size=batch_size, shuffle=True)
    if kind == "collated":
        return data.DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=_collate)
    whole = data.BatchSampler(data.RandomSampler(dataset), batch_size, drop_last=False)
    return data.DataLoader(dataset, batch_size=None, sampler=whole)


def loader_round(x, y, net, batch_size: int, steps: int, shift: int) -> dict[str, float]:
    """Seconds per step of ``fit`` on tensors and on DataLoaders of the same data."""
    dataset = torch.utils.data.TensorDataset(x, y)
    times = {}
    shift %= len(VARIANTS)
    for kind in VARIANTS[shift:] + VARIANTS[:shift]:
        model = _model(net)
        if kind != "tensors":
            loader = _loader(dataset, kind, batch_size)
            result = sws.fit(model, loader, num_steps=steps, copy_model=True, progress=False)
        else:
            result = sws.fit(
                model, x, y, num_steps=steps, batch_size=batch_size, copy_model=True, progress=False
            )
        times[kind] = result.wall_time / steps
    return times


def measure_loader(args) -> dict[str, float]:
    x, y, net = problem(args.num_data)
    loader_round(x, y, net, args.batch_size, 3, 0)  # warm-up: imports, allocator, kernel
    ms: dict[str, list[float]] = {k: [] for k in VARIANTS}
    ratios: dict[str, list[float]] = {k: [] for k in VARIANTS[1:]}
    for r in range(args.rounds):
        t = loader_round(x, y, net, args.batch_size, args.steps, shift=r)
        for kind in VARIANTS:
            ms[kind].append(1e3 * t[kind])
        for kind in ratios:
            ratios[kind].append(t[kind] / t["tensors"])
        print(
            f"  round {r + 1}: "
            + ", ".join(f"{k} {ms[k][-1]:.2f} ms/step" for k in VARIANTS)
            + "; ratios "
            + ", ".join(f"{k} {ratios[k][-1]:.3f}" for k in ratios),
            flush=True,
        )
    found = {f"{k}_ms_per_step": statistics.median(v) for k, v in ms.items()}
    for kind, values in ratios.items():
        found[f"{kind}_ratio"] = statistics.median(values)
        found[f"{kind}_range"] = (min(values), max(values))  # type: ignore[assignment]
    return found


def measure_reads(args, repeats: int = 15) -> dict[str, float]:
    """Microseconds per batch of reading each loader through ``fit``'s stream alone.

    The loaders' own cost without the step around it (which the neighbours' load
    makes noisy): ``BatchStream.next`` over one epoch, the variants interleaved,
    the median over ``repeats`` epochs.
    """
    from bayes_sws.infer.loaders import BatchStream

    x, y, _ = problem(args.num_data)
    dataset = torch.utils.data.TensorDataset(x, y)
    times: dict[str, list[float]] = {k: [] for k in VARIANTS[1:]}
    for r in range(repeats):
        for kind in VARIANTS[1:][r % 3 :] + VARIANTS[1:][: r % 3]:
            stream = BatchStream(_loader(dataset, kind, args.batch_size))
            count = stream.steps_per_epoch or 1
            start = time.perf_counter()
            for _ in range(count):
                stream.next()
            times[kind].append(1e6 * (time.perf_counter() - start) / count)
    return {kind: statistics.median(values) for kind, values in times.items()}


# ---------------------------------------------------------------------------- DDP
def ddp_worker(out: str, processes: int, global_batch: int, steps: int, num_data: int) -> None:
    """One Lightning run (Lightning re-runs this script for the other ranks)."""
    import lightning.pytorch as pl

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

    from bayes_sws.integrations.lightning import SWSLightningModule

    x, y, net = problem(num_data)
    module = SWSLightningModule(_model(net), "map", lr=1e-3)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=global_batch // processes, shuffle=True
    )

    class StepTimer(pl.Callback):
        def __init__(self):
            self.stamps: list[float] = []

        def on_train_batch_end(self, *args, **kwargs):
            self.stamps.append(time.perf_counter())

    timer = StepTimer()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=processes,
        strategy="ddp",
        max_steps=steps,
        callbacks=[timer],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)
    if trainer.global_rank == 0:
        record = {"stamps": timer.stamps, "threads": torch.get_num_threads()}
        Path(out).write_text(json.dumps(record))


def _ddp_run(processes: int, args) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "times.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--ddp-worker", str(out)]
        command += [str(processes), str(args.global_batch), str(args.ddp_steps)]
        command += [str(args.num_data)]
        env = dict(os.environ, PYTHONPATH=str(HERE.parent), OMP_NUM_THREADS=str(args.threads))
        done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the {processes}-process run failed:\n{done.stderr[-3000:]}")
        record = json.loads(out.read_text())
    stamps = record["stamps"][args.warmup :]
    step = statistics.median(b - a for a, b in zip(stamps, stamps[1:], strict=False))
    return {"ms_per_step": 1e3 * step, "points_per_s": args.global_batch / step, **record}


def measure_ddp(args) -> dict[str, float]:
    ratios, runs = [], []
    for r in range(args.ddp_rounds):
        order = (1, 2) if r % 2 == 0 else (2, 1)
        found = {k: _ddp_run(k, args) for k in order}
        ratios.append(found[2]["points_per_s"] / found[1]["points_per_s"])
        runs.append(found)
        print(
            f"  round {r + 1}: 1 process {found[1]['ms_per_step']:.1f} ms/step "
            f"({found[1]['threads']} threads), 2 processes {found[2]['ms_per_step']:.1f} "
            f"ms/step ({found[2]['threads']} threads each), throughput ratio {ratios[-1]:.3f}",
            flush=True,
        )
    return {
        "one_ms_per_step": statistics.median(f[1]["ms_per_step"] for f in runs),
        "two_ms_per_step": statistics.median(f[2]["ms_per_step"] for f in runs),
        "median_throughput_ratio": statistics.median(ratios),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-data", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60, help="steps per variant and round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--ddp", action="store_true", help="also 2 processes against 1")
    parser.add_argument("--global-batch", type=int, default=128)
    parser.add_argument("--ddp-steps", type=int, default=40)
    parser.add_argument("--ddp-rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5, help="DDP steps left out of the timing")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny budget")
    parser.add_argument("--ddp-worker", nargs=5, metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ddp_worker:
        out, *numbers = args.ddp_worker
        ddp_worker(out, *map(int, numbers))
        return
    torch.set_num_threads(args.threads)
    if args.quick:
        args.num_data, args.steps, args.rounds = 1024, 5, 2
        args.ddp_steps, args.ddp_rounds, args.warmup = 8, 1, 2
    print(
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
        f"{args.threads} torch thread(s) per process; torch {torch.__version__}"
    )
    print(
        f"loader vs tensors: N={args.num_data}, B={args.batch_size}, {args.steps} steps x {args.rounds} rounds"
    )
    reads = measure_reads(args)
    print(
        "read per batch (the loader through fit's stream, no step): "
        + ", ".join(f"{k} {v:.0f} us" for k, v in reads.items())
    )
    loader = measure_loader(args)
    for kind in VARIANTS[1:]:
        low, high = loader[f"{kind}_range"]
        print(
            f"fit per step: tensors {loader['tensors_ms_per_step']:.2f} ms, {kind} "
            f"{loader[f'{kind}_ms_per_step']:.2f} ms; median ratio {loader[f'{kind}_ratio']:.3f}x "
            f"(range {low:.3f}-{high:.3f}; goal <= 1.05x)"
        )
    if args.ddp:
        print(f"DDP (gloo, CPU): global batch {args.global_batch}, {args.ddp_steps} steps")
        ddp = measure_ddp(args)
        print(
            f"per step: 1 process {ddp['one_ms_per_step']:.1f} ms, 2 processes "
            f"{ddp['two_ms_per_step']:.1f} ms; median throughput ratio (2 / 1) "
            f"{ddp['median_throughput_ratio']:.3f}x"
        )
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
