"""Benchmark: the mixture prior on a CUDA GPU, the Triton kernel against the chunked torch path.

For ``--weights`` weights (default 10⁷) and ``--components`` M (default 16), per
implementation (``triton``: :mod:`bayes_sws.core.triton_kernel`; ``torch``: the
chunked torch ops of :mod:`bayes_sws.core.kernel`):

``pass``      ``mixture_log_prob_and_grad`` (value and all four gradients, one pass),
              launched eagerly;
``graph``     the same pass (gradients wrt w, μ, σ: ∂/∂π's check for π = 0 syncs
              with the host) captured in a CUDA graph and replayed, i.e. the GPU's
              time without the Python launch overhead;
``autograd``  ``mixture_log_prob(...)`` then ``.backward()`` with all four inputs
              requiring gradients (the backward scales ∂/∂w by the incoming
              gradient: one more read and write of N numbers);
``kernel``    Triton only: the fused kernel's own time per call, from
              ``torch.profiler`` (CUDA activity, kernels named ``_prior_kernel``).

Each is timed with ``torch.cuda.Event`` pairs (warm-up, then the median of
``--repeats``) and reported in µs per call, ns per (weight, component) pair, and
as a multiple of the memory baseline: ``g.copy_(w)``, one read of N weights and
one write of N gradients — the least any fused forward + backward must move.
The goal for the Triton kernel is at most 2× that baseline.

Then one training step of LeNet-300-100 (266,200 weights under the prior, batch
128, random data on the GPU, Adam): cross-entropy scaled to the data set, minus
the mixture log-prior of all weights with learned π (softmax), μ and σ
(exp), i.e. the MAP objective of ``fit(guide="map")`` without the hyperpriors;
with and without the prior term, interleaved, median over rounds of the step's
wall-clock time (``float(loss)`` each step, as ``fit`` does), and their ratio.

``--sweep`` also times the Triton pass for several tile sizes
(``triton_kernel.PAIRS_PER_TILE``) and warps per program (``NUM_WARPS``).

Without CUDA the script prints one line and exits 0; ``--interpret`` instead runs
a tiny smoke test of the Triton kernel on CPU through Triton's interpreter
(correctness only: no timing). Results are written to
``benchmarks/results/gpu_prior.json`` only when run on a GPU.

Usage::

    python benchmarks/gpu_prior.py                     # on a machine with CUDA
    python benchmarks/gpu_prior.py --sweep --dtype float64
    python benchmarks/gpu_prior.py --interpret         # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "gpu_prior.json"


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=int, default=10**7)
    parser.add_argument("--components", type=int, default=16)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--sweep", action="store_true", help="also try tile sizes and warps")
    parser.add_argument("--interpret", action="store_true", help="CPU smoke test, no GPU")
    parser.add_argument("--no-write", action="store_true", help="do not write the JSON")
    return parser.parse_args(argv)


def mixture(num_weights, num_components, dtype, device):
    """Weights like a trained layer's, and a mixture spread over them."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(0)
    w = (0.05 * torch.randn(num_weights, generator=gen)).to(device=device, dtype=dtype)
    mu = torch.linspace(-0.2, 0.2, num_components, dtype=dtype, device=device)
    sigma = torch.full_like(mu, 0.4 / num_components)
    pi = torch.full_like(mu, 1.0 / num_components)
    return w, pi, mu, sigma


def cuda_time(fn, *, warmup, repeats) -> float:
    """Median seconds of ``fn()`` between CUDA events (one pair per call)."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)
    return statistics.median(times)


def graph_of(fn):
    """``fn`` captured in a CUDA graph (after a warm-up on a side stream): its replay."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def kernel_seconds(fn, name="_prior_kernel", calls=20) -> float | None:
    """Mean CUDA time of the kernels called ``name`` per ``fn()``, from torch.profiler."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
    except (RuntimeError, OSError) as error:  # CUPTI missing or refused
        print(f"# profiler unavailable: {error}", file=sys.stderr)
        return None
    total_us = 0.0
    for event in prof.key_averages():
        if name in event.key:
            device_us = getattr(event, "device_time_total", None)
            total_us += device_us if device_us is not None else event.cuda_time_total
    return total_us / calls / 1e6 if total_us else None


def time_prior(args, kernel_mod, w, pi, mu, sigma, choice) -> dict:
    """pass / graph / autograd (and kernel, for Triton) seconds for one implementation."""
    from bayes_sws.core.kernel import mixture_log_prob, mixture_log_prob_and_grad

    kernel_mod.set_kernel(choice)
    timing = {"warmup": args.warmup, "repeats": args.repeats}
    out = {}

    def full_pass():
        mixture_log_prob_and_grad(w, pi, mu, sigma, validate_args=False)

    def graph_pass():
        mixture_log_prob_and_grad(w, pi, mu, sigma, wrt=("w", "mu", "sigma"), validate_args=False)

    inputs = [t.clone().requires_grad_() for t in (w, pi, mu, sigma)]

    def autograd_step():
        for t in inputs:
            t.grad = None
        mixture_log_prob(*inputs, validate_args=False).backward()

    out["pass"] = cuda_time(full_pass, **timing)
    out["graph"] = cuda_time(graph_of(graph_pass), **timing)
    out["autograd"] = cuda_time(autograd_step, **timing)
    if choice == "triton":
        out["kernel"] = kernel_seconds(full_pass)
    return out


def sweep(args, kernel_mod, w, pi, mu, sigma) -> list[dict]:
    """The Triton pass (graph replay) over tile sizes and warps per program."""
    from bayes_sws.core import triton_kernel
    from bayes_sws.core.kernel import mixture_log_prob_and_grad

    kernel_mod.set_kernel("triton")
    saved = triton_kernel.PAIRS_PER_TILE, triton_kernel.NUM_WARPS
    rows = []
    try:
        for pairs in (1024, 2048, 4096, 8192, 16384):
            for warps in (2, 4, 8):
                triton_kernel.PAIRS_PER_TILE, triton_kernel.NUM_WARPS = pairs, warps

                def graph_pass():
                    mixture_log_prob_and_grad(
                        w, pi, mu, sigma, wrt=("w", "mu", "sigma"), validate_args=False
                    )

                seconds = cuda_time(graph_of(graph_pass), warmup=args.warmup, repeats=args.repeats)
                rows.append({"pairs_per_tile": pairs, "num_warps": warps, "graph_s": seconds})
                print(f"  sweep pairs/tile {pairs:6d} warps {warps}: {seconds * 1e6:9.1f} µs")
    finally:
        triton_kernel.PAIRS_PER_TILE, triton_kernel.NUM_WARPS = saved
    return rows


def lenet_step(x, y, num_components, with_prior: bool):
    """``step()``: one Adam step of a fresh LeNet-300-100 on a random batch of 128."""
    import torch
    import torch.nn.functional as F

    from bayes_sws.core.kernel import mixture_log_prob
    from bayes_sws.zoo.nets import lenet_300_100

    device, num_data, batch = x.device, x.shape[0], 128
    net = lenet_300_100().to(device)
    weights = [p for name, p in net.named_parameters() if name.endswith("weight")]
    logits = torch.zeros(num_components, device=device, requires_grad=True)
    means = torch.linspace(-0.2, 0.2, num_components, device=device).requires_grad_()
    log_sigma = torch.full((num_components,), -3.0, device=device, requires_grad=True)
    optim = torch.optim.Adam([*net.parameters(), logits, means, log_sigma], lr=1e-3)

    def step():
        index = torch.randint(0, num_data, (batch,), device=device)
        optim.zero_grad()
        loss = num_data / batch * F.cross_entropy(net(x[index]), y[index], reduction="sum")
        if with_prior:
            w = torch.cat([p.reshape(-1) for p in weights])
            pi, sigma = torch.softmax(logits, 0), torch.exp(log_sigma)
            loss = loss - mixture_log_prob(w, pi, means, sigma, validate_args=False)
        loss.backward()
        optim.step()
        return float(loss.detach())

    return step


def lenet_steps(args, kernel_mod, choice) -> dict:
    """Seconds per LeNet-300-100 training step with and without the prior (medians)."""
    import torch

    kernel_mod.set_kernel(choice)
    torch.manual_seed(0)
    x = torch.randn(60000, 784, device="cuda")
    y = torch.randint(0, 10, (60000,), device="cuda")
    steps = {flag: lenet_step(x, y, args.components, flag) for flag in (False, True)}
    rounds: dict[bool, list[float]] = {False: [], True: []}
    for round_index in range(args.rounds + 1):  # round 0 warms up
        for with_prior in (round_index % 2 == 0, round_index % 2 == 1):
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[with_prior]()
            torch.cuda.synchronize()
            if round_index:
                rounds[with_prior].append((time.perf_counter() - start) / args.steps)
    without, with_prior_s = statistics.median(rounds[False]), statistics.median(rounds[True])
    return {"without_s": without, "with_s": with_prior_s, "ratio": with_prior_s / without}


def _report_prior(name, seconds, pairs, baseline) -> dict:
    row = {"seconds": seconds}
    if seconds is None:
        print(f"  {name:18s}          n/a")
        return row
    row.update(ns_per_pair=seconds * 1e9 / pairs, x_memory=seconds / baseline)
    print(
        f"  {name:18s} {seconds * 1e6:9.1f} µs  {row['ns_per_pair']:9.3g} ns/pair"
        f"  {row['x_memory']:6.2f}× memory"
    )
    return row


def run_gpu(args) -> dict:
    import torch

    from bayes_sws.core import kernel as kernel_mod
    from bayes_sws.core import triton_kernel

    dtype = getattr(torch, args.dtype)
    w, pi, mu, sigma = mixture(args.weights, args.components, dtype, torch.device("cuda"))
    pairs = args.weights * args.components
    g = torch.empty_like(w)
    baseline = cuda_time(lambda: g.copy_(w), warmup=args.warmup, repeats=args.repeats)
    gbps = 2 * w.numel() * w.element_size() / baseline / 1e9
    print(f"# {torch.cuda.get_device_name()}, N = {args.weights}, M = {args.components}, {dtype}")
    print(f"  memory baseline g.copy_(w) {baseline * 1e6:9.1f} µs  ({gbps:.0f} GB/s)")
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "weights": args.weights,
        "components": args.components,
        "dtype": args.dtype,
        "memory_baseline_s": baseline,
        "memory_gbps": gbps,
        "prior": {},
        "lenet_300_100_step": {},
    }
    choices = ["torch"] + (["triton"] if triton_kernel.triton_importable() else [])
    if "triton" not in choices:
        print("  triton does not import: the torch path only")
    else:
        result["triton"] = __import__("triton").__version__
    for choice in choices:
        times = time_prior(args, kernel_mod, w, pi, mu, sigma, choice)
        result["prior"][choice] = {
            key: _report_prior(f"{choice} {key}", value, pairs, baseline)
            for key, value in times.items()
        }
    if args.sweep and "triton" in choices:
        result["sweep"] = sweep(args, kernel_mod, w, pi, mu, sigma)
    for choice in choices:
        step = lenet_steps(args, kernel_mod, choice)
        result["lenet_300_100_step"][choice] = step
        print(
            f"  LeNet-300-100 step ({choice}): {step['without_s'] * 1e3:.3f} ms without prior, "
            f"{step['with_s'] * 1e3:.3f} ms with, ratio {step['ratio']:.3f}"
        )
    return result


def run_interpreter_smoke() -> int:
    """The Triton kernel through the CPU interpreter against the torch path, tiny sizes."""
    import torch

    from bayes_sws.core import kernel as kernel_mod
    from bayes_sws.core import triton_kernel

    if not triton_kernel.triton_importable():
        print("gpu_prior.py --interpret: triton is not installed (pip install triton)")
        return 0
    worst = 0.0
    for dtype in (torch.float32, torch.float64):
        w, pi, mu, sigma = mixture(3001, 16, dtype, torch.device("cpu"))
        results = {}
        for choice in ("triton", "torch"):
            kernel_mod.set_kernel(choice)
            results[choice] = kernel_mod.mixture_log_prob_and_grad(w, pi, mu, sigma)
        for a, b in zip(results["triton"], results["torch"]):
            worst = max(worst, float((a - b).abs().max() / b.abs().max().clamp(min=1e-30)))
    print(
        f"gpu_prior.py --interpret: Triton (interpreter) vs torch path, worst rel. diff {worst:.2e}"
    )
    return 0 if worst < 1e-4 else 1


def main(argv=None) -> int:
    args = _parse(argv)
    if args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported
        return run_interpreter_smoke()
    import torch

    if not torch.cuda.is_available():
        print("gpu_prior.py needs a CUDA GPU (none found); --interpret runs a CPU smoke test")
        return 0
    result = run_gpu(args)
    if not args.no_write:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(f"# wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
