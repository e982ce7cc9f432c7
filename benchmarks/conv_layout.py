"""Benchmark: LeNet-5 training steps with its kernels channels-last against contiguous.

:func:`bayes_sws.zoo.nets.lenet5_caffe` stores its convolution kernels channels-last
(``memory_format=torch.channels_last``) so that oneDNN runs the convolutions and pools
in its channels-last kernels. This times one training step of the same network in both
layouts, side by side in one process, variants and layouts interleaved round by round
(``svi_step.py``'s machinery):

``plain``     forward, backward and Adam without any prior (as pretraining and Deep
              Compression's fine-tuning);
``fast_map``  the MAP step with the mixture prior (M = 16, the step ``fit`` takes);
``fit_map``   ``bayes_sws.fit(guide="map")`` itself, its loop from the first step's
              callback to the last.

It prints each variant's median time per step in both layouts and the ratio
channels-last / contiguous (median of the per-round ratios). Fashion-MNIST images
(Debian's ``dataset-fashion-mnist``), or random images of that shape with ``--data random``.

Usage::

    python benchmarks/conv_layout.py --threads 1 --clock cpu --rounds 9 --steps 10
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing
sys.path.insert(0, str(HERE))

import pyro
import svi_step  # the step variants and the interleaved timer
import torch
from machine import cpu_model  # benchmarks/ is on sys.path: run as a script, or imported by name

from bayes_sws.zoo.nets import lenet5_caffe

LAYOUTS = {"contiguous": torch.contiguous_format, "channels-last": torch.channels_last}
VARIANTS = ("plain", "fast_map", "fit_map")


def load_images(data: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Fashion-MNIST's training images as (N, 1, 28, 28), or random ones of that shape."""
    if data == "real":
        from bayes_sws.zoo.data import DataError, load_dataset

        try:
            d = load_dataset("fashion-mnist", standardize=False, flatten=False)
            return d.x_train.float(), d.y_train.long(), "fashion-mnist"
        except DataError as err:
            print(f"# fashion-mnist unavailable ({err}); using random data", file=sys.stderr)
    g = torch.Generator().manual_seed(seed)
    return (
        torch.rand(6000, 1, 28, 28, generator=g),
        torch.randint(0, 10, (6000,), generator=g),
        "random",
    )


def build_steps(net0, x, y, args) -> dict:
    """``{(variant, layout): step}``, every step on its own copy of ``net0`` in that layout."""
    settings = {
        "batch_size": args.batch_size,
        "prior_scale": args.prior_scale,
        "num_components": args.components,
        "lr": 1e-3,
        "mixture_lr": 1e-3,
    }
    steps = {}
    for layout, memory_format in LAYOUTS.items():
        net = copy.deepcopy(net0).to(memory_format=memory_format)
        for variant in args.variants:
            if variant == "fit_map":
                fit_run = svi_step.make_fit_run("map", net, x, y, **settings)
                steps[variant, layout] = type("FitRun", (), {"run": staticmethod(fit_run)})()
            else:
                steps[variant, layout] = svi_step.make_step(variant, net, x, y, **settings)
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--data", default="real", choices=("real", "random"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--clock", default="cpu", choices=("wall", "cpu"))
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=10, help="steps per variant per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--components", type=int, default=16)
    parser.add_argument("--prior-scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    for name in ("rounds", "steps", "batch_size", "components", "threads"):
        if getattr(args, name) < 1:
            parser.error(
                f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}"
            )
    torch.set_num_threads(args.threads)
    pyro.settings.set(module_local_params=True)  # as bayes_sws.fit does
    torch.manual_seed(0)
    x, y, source = load_images(args.data)
    steps = build_steps(lenet5_caffe(), x, y, args)
    print(
        f"# conv_layout: LeNet-5 on {source}, batch {args.batch_size}, M = {args.components}, "
        f"{cpu_model()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {args.threads} thread(s), clock {args.clock}, load "
        f"{svi_step._load()}, {args.rounds} rounds x {args.steps} steps"
    )
    per_round = svi_step.time_interleaved(
        steps,
        rounds=args.rounds,
        steps_per_round=args.steps,
        warmup=args.warmup,
        clock=args.clock,
    )
    print("\n| variant | contiguous | channels-last | channels-last / contiguous |")
    print("|---|---:|---:|---:|")
    for variant in args.variants:
        before, after = per_round[variant, "contiguous"], per_round[variant, "channels-last"]
        ratio = statistics.median(a / b for a, b in zip(after, before, strict=True))
        print(
            f"| {variant} | {svi_step._ms(statistics.median(before))} | "
            f"{svi_step._ms(statistics.median(after))} | {ratio:.3f} |"
        )
    print(f"\n# load after: {svi_step._load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
