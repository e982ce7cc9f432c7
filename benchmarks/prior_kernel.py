"""Benchmark: the mixture prior's forward + backward, ours against the obvious alternatives.

For every (implementation, N, M) the case runs in a fresh Python subprocess so
timings and memory do not leak between cases:

1. build ``w`` (N weights, requires grad) and π, μ, σ (M components, require grad);
2. warm up with one call on a small slice (loads kernels; timed separately as
   "first call");
3. **memory**: reset the kernel's peak-RSS counter (``/proc/self/clear_refs``),
   run one forward + backward, and report ``VmHWM − VmRSS(before)`` — the extra
   peak resident memory of the call, including the N-element gradient of ``w``
   that any prior produces (4 bytes per float32 weight). Without
   ``clear_refs`` (not Linux) we fall back to ``ru_maxrss`` growth.
4. **time**: repeat forward + backward, gradients reset to ``None`` each time
   as an optimiser's ``zero_grad`` would; report the minimum (and the median in
   ``--json``). ``--clock wall`` (default) times by ``perf_counter``;
   ``--clock cpu`` by this process's CPU time, which is what to use with
   ``--threads 1`` on a machine shared with other jobs: there a 2-thread
   wall clock mostly measures the neighbours (every OpenMP parallel region can
   wait a scheduler tick for its second thread).

Implementations:

``ours``           ``bayes_sws.core.kernel.mixture_log_prob`` on the torch-ops path, eager
                   (``set_kernel("torch")``): the
                   kernel before the native loop, and the path GPU tensors take.
``ours_native``    the same function with ``set_kernel("native")``: the fused C
                   loop (``bayes_sws/core/_native/mixture.c``), the library default on
                   CPU, skipping far components where that pays (``BAYES_SWS_PRUNE``:
                   ``auto`` by default; ``off`` times the loop over every pair).
                   Its one-off build (C compiler, ~2 s) is timed separately
                   into a fresh cache directory and printed before the table; the
                   "first call" column of the workers is a load from the cache.
``native_loop``    the C loop alone: ``bsws_mixture_f32/f64`` called through ctypes
                   into preallocated outputs (log-density and all four gradients),
                   no autograd, no allocation — what the loop itself costs (with
                   the same pruning choice).
``recompute``      same chunked forward, but saves only ``log p(w_i)`` and
                   recomputes responsibilities chunk by chunk in backward.
``store``          same chunked forward, but stores the (M, N) responsibilities
                   and uses them in backward (N·M memory).
``mixture_same_family``  ``MixtureSameFamily(Categorical(pi), Normal(mu, sigma))``.
``naive``          ``logsumexp(log pi + Normal(mu, sigma).log_prob(w[:, None]), 1)``.
``weight_decay``   ``-0.5 * (w**2).sum() / s**2``: the floor, a prior with M = 1 term.

Baselines whose predicted N·M memory exceeds ``--memory-budget-gb`` are skipped
(marked "skipped" in the table) so the run cannot exhaust a shared machine.
Extra memory is per weight, so at N = 10⁴ it is dominated by constant buffers
(and may read 0 when they were already resident from the warm-up).

Usage::

    python benchmarks/prior_kernel.py            # full grid, N in 1e4..1e7, M in {2, 16, 64}
    python benchmarks/prior_kernel.py --quick    # small grid for a smoke test
    python benchmarks/prior_kernel.py --threads 1 --clock cpu   # on a shared machine
    python benchmarks/prior_kernel.py --weights clustered   # after retraining (or: init)
    BAYES_SWS_PRUNE=off python benchmarks/prior_kernel.py   # the native loop over every pair

``--weights`` chooses the weights and mixture (see ``_inputs``): ``spread`` (the
default, as in earlier rounds), ``init`` (the mixture as initialised) or
``clustered`` (after retraining).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

ALL_IMPLS = (
    "ours",
    "ours_native",
    "native_loop",
    "recompute",
    "store",
    "mixture_same_family",
    "naive",
    "weight_decay",
)
# Bytes of (N, M) temporaries alive at the peak, per (weight, component), per
# byte of dtype — measured at N = 1e6 and rounded up; used only to skip cases.
_NM_FACTOR = {"store": 1, "mixture_same_family": 12, "naive": 12}


# --------------------------------------------------------------------------- #
# Implementations (imported lazily inside the worker)
# --------------------------------------------------------------------------- #


def _kernel_module():
    """``bayes_sws.core.kernel`` (the checkout's; the script puts it on ``sys.path``)."""
    import importlib

    return importlib.import_module("bayes_sws.core.kernel")


def _native_module():
    """``bayes_sws.core._native`` (the C loop's builder/loader)."""
    import importlib

    return importlib.import_module("bayes_sws.core._native")


def native_build_seconds() -> float:
    """Compile the C loop into a fresh temporary directory: the first-use build time."""
    import tempfile

    native = _native_module()
    with tempfile.TemporaryDirectory() as tmp:
        return native.build(Path(tmp) / native.library_path().name)


def _make_impl(name: str):
    import torch

    kernel = _kernel_module()

    if name in ("ours", "ours_native"):
        kernel.set_kernel("native" if name == "ours_native" else "torch")
        return lambda w, pi, mu, sigma: kernel.mixture_log_prob(w, pi, mu, sigma)
    if name == "native_loop":
        import ctypes

        lib = _native_module().load()

        def native_loop(w, pi, mu, sigma):
            w, pi, mu, sigma = (t.detach().contiguous() for t in (w, pi, mu, sigma))
            out = native_loop.buffers
            if out is None or out[0].shape != w.shape or out[0].dtype != w.dtype:
                out = native_loop.buffers = (
                    torch.empty_like(w),
                    *torch.empty(3, pi.shape[0], dtype=w.dtype).unbind(0),
                    ctypes.c_double(),
                )
            fn = lib.bsws_mixture_f32 if w.dtype == torch.float32 else lib.bsws_mixture_f64
            status = fn(
                w.data_ptr(),
                w.shape[0],
                pi.data_ptr(),
                mu.data_ptr(),
                sigma.data_ptr(),
                pi.shape[0],
                torch.get_num_threads(),
                ctypes.byref(out[4]),
                *(t.data_ptr() for t in out[:4]),
                kernel.PRUNING.index(kernel.get_pruning()),
                None,
            )
            assert status == 0
            return torch.tensor(out[4].value, dtype=w.dtype)

        native_loop.buffers = None
        native_loop.no_backward = True
        return native_loop
    if name == "mixture_same_family":
        dist = torch.distributions

        def msf(w, pi, mu, sigma):
            mixture = dist.MixtureSameFamily(
                dist.Categorical(probs=pi, validate_args=False),
                dist.Normal(mu, sigma, validate_args=False),
                validate_args=False,
            )
            return mixture.log_prob(w.reshape(-1)).sum()

        return msf
    if name == "naive":

        def naive(w, pi, mu, sigma):
            normal = torch.distributions.Normal(mu, sigma, validate_args=False)
            return torch.logsumexp(torch.log(pi) + normal.log_prob(w.reshape(-1, 1)), 1).sum()

        return naive
    if name == "weight_decay":
        return lambda w, pi, mu, sigma: -0.5 * (w * w).sum() / (sigma[0] * sigma[0])
    if name in ("recompute", "store"):
        return _alternative_strategy(name)
    raise ValueError(f"unknown implementation {name!r}; choose from {ALL_IMPLS}")


def _alternative_strategy(name: str):
    """The two strategies the kernel did not choose, built from its own chunk maths."""
    import torch

    k = _kernel_module()

    def chunk_u_logits(w_chunk, coef, work):
        num_components, n = coef.mu.shape[0], w_chunk.shape[0]
        u, logits = work[: 2 * num_components * n].view(2, num_components, n)
        torch.sub(w_chunk, coef.mu, out=u).mul_(coef.inv_sigma)
        torch.addcmul(coef.log2_coef, u, u, value=-k._HALF_LOG2E, out=logits)
        return u, logits

    def grads_from_gamma(gamma, u, coef, grad_w_out, sums):
        sums[0] += gamma.sum(1)
        gu = gamma.mul_(u)
        torch.mv(gu.t(), coef.neg_inv_sigma, out=grad_w_out)
        sums[1] += gu.sum(1)
        sums[2] += gu.mul_(u).sum(1)

    def finish(sums, pi, sigma, grad_w, grad_output):
        inv_sigma = sigma.reciprocal()
        return (
            grad_w * grad_output,
            sums[0] / pi * grad_output,
            sums[1] * inv_sigma * grad_output,
            (sums[2] - sums[0]) * inv_sigma * grad_output,
        )

    class Recompute(torch.autograd.Function):
        @staticmethod
        def forward(ctx, w, pi, mu, sigma):
            num_components = mu.shape[0]
            chunk = max(1, k.CHUNK_ELEMENTS // num_components)
            coef = k._coefficients(pi, mu, sigma)
            work = k._workspace(w, num_components, chunk)
            lse2 = torch.empty_like(w)
            for start in range(0, w.shape[0], chunk):
                _, logits = chunk_u_logits(w[start : start + chunk], coef, work)
                top = logits.amax(0)
                total = logits.sub_(top).clamp_(min=coef.floor).exp2_().sum(0)
                torch.add(total.log_().mul_(k._LOG2E), top, out=lse2[start : start + chunk])
            ctx.save_for_backward(w, pi, mu, sigma, lse2)
            return lse2.sum() * k._LN2

        @staticmethod
        def backward(ctx, grad_output):
            w, pi, mu, sigma, lse2 = ctx.saved_tensors
            num_components = mu.shape[0]
            chunk = max(1, k.CHUNK_ELEMENTS // num_components)
            coef = k._coefficients(pi, mu, sigma)
            work = k._workspace(w, num_components, chunk)
            grad_w = torch.empty_like(w)
            sums = w.new_zeros(3, num_components)
            for start in range(0, w.shape[0], chunk):
                stop = min(start + chunk, w.shape[0])
                u, logits = chunk_u_logits(w[start:stop], coef, work)
                gamma = logits.sub_(lse2[start:stop]).clamp_(min=coef.floor).exp2_()
                grads_from_gamma(gamma, u, coef, grad_w[start:stop], sums)
            return finish(sums, pi, sigma, grad_w, grad_output)

    class Store(torch.autograd.Function):
        @staticmethod
        def forward(ctx, w, pi, mu, sigma):
            num_components = mu.shape[0]
            chunk = max(1, k.CHUNK_ELEMENTS // num_components)
            coef = k._coefficients(pi, mu, sigma)
            work = k._workspace(w, num_components, chunk)
            gamma = w.new_empty(num_components, w.shape[0])
            value = w.new_zeros(())
            for start in range(0, w.shape[0], chunk):
                stop = min(start + chunk, w.shape[0])
                _, logits = chunk_u_logits(w[start:stop], coef, work)
                top = logits.amax(0)
                e = torch.exp2(logits.sub_(top).clamp_(min=coef.floor), out=gamma[:, start:stop])
                total = e.sum(0)
                e.div_(total)
                value += total.log_().mul_(k._LOG2E).add_(top).sum()
            ctx.save_for_backward(w, pi, mu, sigma, gamma)
            return value * k._LN2

        @staticmethod
        def backward(ctx, grad_output):
            w, pi, mu, sigma, gamma = ctx.saved_tensors
            num_components = mu.shape[0]
            chunk = max(1, k.CHUNK_ELEMENTS // num_components)
            coef = k._coefficients(pi, mu, sigma)
            work = k._workspace(w, num_components, chunk)
            grad_w = torch.empty_like(w)
            sums = w.new_zeros(3, num_components)
            for start in range(0, w.shape[0], chunk):
                stop = min(start + chunk, w.shape[0])
                u, scratch = chunk_u_logits(w[start:stop], coef, work)
                g = scratch.copy_(gamma[:, start:stop])
                grads_from_gamma(g, u, coef, grad_w[start:stop], sums)
            return finish(sums, pi, sigma, grad_w, grad_output)

    function = Recompute if name == "recompute" else Store
    return lambda w, pi, mu, sigma: function.apply(w.reshape(-1), pi, mu, sigma)


# --------------------------------------------------------------------------- #
# Worker: one case in this process
# --------------------------------------------------------------------------- #


def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


WEIGHTS = ("spread", "init", "clustered")


def _inputs(num_weights: int, num_components: int, dtype, seed: int = 0, weights: str = "spread"):
    """Weights and a mixture of ``num_components`` components, in one of three configurations.

    ``spread`` (the default, the figures of earlier rounds): w ~ N(0, 0.1²), a narrow
    zero component (σ = 0.005) holding half the mass, the others at σ = 0.02 spread
    evenly over [−0.3, 0.3]. ``init``: the mixture as ``MixturePrior.init_values``
    starts it on pretrained-like weights w ~ N(0, 0.05²): the non-zero means evenly
    over the weights' range, every σ equal to their spacing, π₀ = 0.5 (as
    ``benchmarks/svi_step.py``). ``clustered``: after retraining — the non-zero
    means evenly spaced over [−0.4, 0.4] on both sides of zero, σ = spacing / 8
    (clusters eight widths apart; 0.006 at M = 16, as the retrained LeNet-300-100's
    precision prior of BENCHMARKS.md settles), a zero component six times narrower
    holding 90 % of the mass, and the weights drawn from the mixture itself.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    free = max(num_components - 1, 1)
    pi = torch.full((num_components,), 0.5 / free, dtype=dtype)
    pi[0] = 0.5 if num_components > 1 else 1.0
    if weights == "spread":
        w = torch.randn(num_weights, generator=generator, dtype=dtype) * 0.1
        mu = torch.linspace(-0.3, 0.3, num_components, dtype=dtype)
        mu[0] = 0.0
        sigma = torch.full((num_components,), 0.02, dtype=dtype)
        sigma[0] = 0.005
    elif weights == "init":
        w = torch.randn(num_weights, generator=generator, dtype=dtype) * 0.05
        lo, hi = w.min().item(), w.max().item()
        mu = torch.linspace(lo, hi, num_components + 1, dtype=dtype)
        mu[0] = 0.0  # the zero component, then the num_components - 1 free means
        sigma = torch.full((num_components,), (hi - lo) / num_components, dtype=dtype)
    elif weights == "clustered":
        half = (free + 1) // 2
        spacing = 0.4 / half
        steps = torch.cat([-torch.arange(half, 0, -1), torch.arange(1, half + 1)])[:free]
        mu = torch.cat([torch.zeros(1), steps * spacing]).to(dtype)
        sigma = torch.full((num_components + 1,), spacing / 8, dtype=dtype)
        sigma[0] = spacing / 48
        if num_components > 1:
            pi.fill_(0.1 / free)
            pi[0] = 0.9
        mu, sigma = mu[:num_components], sigma[:num_components]
        member = torch.multinomial(pi, num_weights, replacement=True, generator=generator)
        noise = torch.randn(num_weights, generator=generator, dtype=dtype)
        w = mu[member] + sigma[member] * noise
    else:
        raise ValueError(f"unknown weights {weights!r}; choose from {WEIGHTS}")
    mu = mu[:num_components]
    sigma = sigma[:num_components]
    return (
        w.requires_grad_(),
        pi.requires_grad_(),
        mu.requires_grad_(),
        sigma.requires_grad_(),
    )


def _step(fn, w, pi, mu, sigma):
    for tensor in (w, pi, mu, sigma):
        tensor.grad = None
    if getattr(fn, "no_backward", False):  # computes its gradients in the call
        fn(w, pi, mu, sigma)
        return
    fn(w, pi, mu, sigma).backward()


def worker(
    impl: str,
    num_weights: int,
    num_components: int,
    dtype_name: str,
    threads: int,
    repeats: int,
    time_budget: float,
    clock: str = "wall",
    weights: str = "spread",
) -> dict:
    """Run one case here; ``clock`` is "wall" (perf_counter) or "cpu" (process_time).

    ``weights``: the configuration of weights and mixture (:data:`WEIGHTS`).
    """
    import gc

    import torch

    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    fn = _make_impl(impl)
    w, pi, mu, sigma = _inputs(num_weights, num_components, dtype, weights=weights)
    now = time.perf_counter if clock == "wall" else time.process_time

    # Warm-up on a slice large enough to hold one full chunk (triggers compilation;
    # timed on the wall clock, since the C++ compiler runs in other processes).
    kernel = _kernel_module()
    warm_n = min(num_weights, max(4096, 2 * kernel.CHUNK_ELEMENTS // num_components))
    w_warm = w.detach()[:warm_n].clone().requires_grad_()
    start = time.perf_counter()
    _step(fn, w_warm, pi, mu, sigma)
    first_call = time.perf_counter() - start
    del w_warm
    gc.collect()

    # Memory of one full-size forward + backward.
    peak_ok = _reset_peak()
    before = _rss_kib("VmRSS") if peak_ok else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = now()
    _step(fn, w, pi, mu, sigma)
    times = [now() - start]
    after = _rss_kib("VmHWM") if peak_ok else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    extra_bytes = max(0, (after - before)) * 1024

    budget_end = time.perf_counter() + time_budget
    for _ in range(repeats - 1):
        if time.perf_counter() > budget_end:
            break
        start = now()
        _step(fn, w, pi, mu, sigma)
        times.append(now() - start)
    return {
        "impl": impl,
        "num_weights": num_weights,
        "num_components": num_components,
        "dtype": dtype_name,
        "threads": threads,
        "clock": clock,
        "weights": weights,
        "first_call_s": first_call,
        "time_min_s": min(times),
        "time_median_s": statistics.median(times),
        "repeats": len(times),
        "extra_peak_bytes": extra_bytes,
        "memory_method": "VmHWM-reset" if peak_ok else "ru_maxrss",
    }


# --------------------------------------------------------------------------- #
# Driver
# --------------------------------------------------------------------------- #


def _run_case(args, impl, num_weights, num_components) -> dict:
    dtype_bytes = 8 if args.dtype == "float64" else 4
    factor = _NM_FACTOR.get(impl)
    if factor is not None:
        predicted = factor * num_weights * num_components * dtype_bytes
        if predicted > args.memory_budget_gb * 2**30:
            return {
                "impl": impl,
                "num_weights": num_weights,
                "num_components": num_components,
                "skipped": f"predicted {predicted / 2**30:.1f} GiB > budget",
            }
    command = [
        sys.executable,
        __file__,
        "--worker",
        impl,
        str(num_weights),
        str(num_components),
        "--dtype",
        args.dtype,
        "--threads",
        str(args.threads),
        "--repeats",
        str(args.repeats),
        "--time-budget",
        str(args.time_budget),
        "--clock",
        args.clock,
        "--weights",
        args.weights,
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        return {
            "impl": impl,
            "num_weights": num_weights,
            "num_components": num_components,
            "skipped": f"failed: {tail[0][:80]}",
        }
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def markdown_table(results: list[dict]) -> str:
    by_case = {}
    for row in results:
        by_case.setdefault((row["num_weights"], row["num_components"]), {})[row["impl"]] = row
    lines = [
        (
            "| N | M | implementation | time (min of fwd+bwd) | ns / weight | × ours | "
            "extra peak B / weight | first call |"
        ),
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for (num_weights, num_components), rows in sorted(by_case.items()):
        ours = rows.get("ours")
        for impl in ALL_IMPLS:
            row = rows.get(impl)
            if row is None:
                continue
            head = f"| {num_weights:.0e} | {num_components} | {impl} |"
            if "skipped" in row:
                lines.append(head + f" {row['skipped']} | | | | |")
                continue
            ratio = (
                f"{row['time_min_s'] / ours['time_min_s']:.2f}"
                if ours and "skipped" not in ours
                else "–"
            )
            lines.append(
                head
                + f" {_fmt_time(row['time_min_s'])} | {row['time_min_s'] / num_weights * 1e9:.1f} |"
                f" {ratio} | {row['extra_peak_bytes'] / num_weights:.1f} |"
                f" {_fmt_time(row['first_call_s'])} |"
            )
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    markers = {2: "o", 16: "s", 64: "^"}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, impl in enumerate(ALL_IMPLS):
        rows = [r for r in results if r["impl"] == impl and "skipped" not in r]
        color = colors[index % len(colors)]
        for num_components in sorted({r["num_components"] for r in rows}):
            line = sorted(
                (r for r in rows if r["num_components"] == num_components),
                key=lambda r: r["num_weights"],
            )
            ax.plot(
                [r["num_weights"] * num_components for r in line],
                [r["time_min_s"] for r in line],
                (":" if impl == "weight_decay" else "-") + markers.get(num_components, "x"),
                color=color,
                alpha=0.8,
                label=impl if num_components == min(r["num_components"] for r in rows) else None,
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("N · M  (weight × component pairs)")
    ax.set_ylabel("forward + backward time (s)")
    ax.set_title(
        "Mixture prior cost (markers: ○ M=2, □ M=16, △ M=64;\n"
        "weight_decay, dotted, costs O(N) and is the floor)",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine_line(threads: int) -> str:
    import torch
    from machine import cpu_model  # benchmarks/ is on sys.path: run as a script

    return (
        f"{cpu_model()}, {os.cpu_count()} CPU cores visible, "
        f"{threads} torch threads, torch {torch.__version__}, Python {platform.python_version()}"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grid (smoke test)")
    parser.add_argument("--sizes", type=float, nargs="+", help="values of N (default 1e4..1e7)")
    parser.add_argument("--components", type=int, nargs="+", help="values of M (default 2 16 64)")
    parser.add_argument("--impls", nargs="+", default=list(ALL_IMPLS), choices=ALL_IMPLS)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--time-budget",
        type=float,
        default=5.0,
        help="seconds of timed repeats per case (at least one call)",
    )
    parser.add_argument(
        "--clock",
        default="wall",
        choices=("wall", "cpu"),
        help="time forward+backward by wall clock or by this process's CPU "
        "time (robust on a shared machine; use with --threads 1)",
    )
    parser.add_argument(
        "--weights",
        default="spread",
        choices=WEIGHTS,
        help="weights and mixture: 'spread' (default, as in earlier rounds), 'init' (the "
        "mixture as initialised on pretrained-like weights) or 'clustered' (after retraining)",
    )
    parser.add_argument(
        "--memory-budget-gb",
        type=float,
        default=4.0,
        help="skip baselines predicted to need more memory than this",
    )
    parser.add_argument(
        "--plot",
        default=str(HERE / "prior_kernel.png"),
        help="where to write the plot; '' for none",
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--worker", nargs=3, metavar=("IMPL", "N", "M"), help=argparse.SUPPRESS)
    return parser


def _status(row: dict, num_weights: int) -> str:
    """One case's line of progress: its reason for a skip, or time and memory per weight."""
    if "skipped" in row:
        return row["skipped"]
    return (
        f"{row['time_min_s'] / num_weights * 1e9:8.1f} ns/weight  "
        f"{row['extra_peak_bytes'] / num_weights:7.1f} B/weight  "
        f"first {row['first_call_s']:.2f} s"
    )


def main(argv=None) -> int:
    args = _parser().parse_args(argv)

    if args.worker:
        impl, num_weights, num_components = args.worker
        result = worker(
            impl,
            int(float(num_weights)),
            int(num_components),
            args.dtype,
            args.threads,
            args.repeats,
            args.time_budget,
            args.clock,
            args.weights,
        )
        print(json.dumps(result))
        return 0

    if args.quick:
        sizes = args.sizes or [1e4, 1e5]
        components = args.components or [2, 16]
        args.repeats = min(args.repeats, 3)
        args.time_budget = min(args.time_budget, 2.0)
    else:
        sizes = args.sizes or [1e4, 1e5, 1e6, 1e7]
        components = args.components or [2, 16, 64]
    results = []
    started = time.perf_counter()
    build_s = None
    if "ours_native" in args.impls:
        build_s = native_build_seconds()
        print(
            f"# ours_native: first-use build of the C loop (fresh cache dir): {build_s:.2f} s",
            flush=True,
        )
    for num_weights in (int(s) for s in sizes):
        for num_components in components:
            for impl in args.impls:
                row = _run_case(args, impl, num_weights, num_components)
                results.append(row)
                status = _status(row, num_weights)
                print(f"N={num_weights:.0e} M={num_components:3d} {impl:20s} {status}", flush=True)
    print()
    print(
        f"Machine: {machine_line(args.threads)}; dtype {args.dtype}; {args.clock} clock; "
        f"weights {args.weights}; "
        f"wall time {time.perf_counter() - started:.0f} s"
    )
    if build_s is not None:
        print(f"ours_native first-use build (C compiler, fresh cache): {build_s:.2f} s")
    print()
    print(markdown_table(results))
    if args.json:
        args.json.write_text(
            json.dumps({"native_build_s": build_s, "results": results}, indent=1)
            if build_s is not None
            else json.dumps(results, indent=1)
        )
    if args.plot:
        plot(results, Path(args.plot))
        print(f"\nplot written to {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
