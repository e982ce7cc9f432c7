"""Benchmark: wall time of ``bayes-sws demo``, and where it goes.

Two measurements, in this order:

1. **The command**: ``bayes-sws demo`` run as a subprocess, as a user runs it
   (Python start, imports, data, 60 pretraining epochs, 2000 SVI steps,
   evaluation and report), timed by the wall clock; the child's CPU time
   (user + system) is shown next to it. Goal (issue 6): under 60 s on 2 cores.
2. **The split**: :func:`bayes_sws.runs.demo.run_demo` in this process, with the
   demo's own ``load_dataset``, ``train`` (pretraining), ``fit`` (SVI) and
   ``accuracy`` wrapped in timers, plus the import time of ``bayes_sws.runs.demo``
   in a fresh interpreter. ``fit`` is further split into its set-up (data
   checks, guide construction, first ELBO call) and its optimisation loop
   (``FitResult.wall_time``), reported per step.

``--fast-map`` previews ``fit`` with the fast MAP loss
(:func:`bayes_sws.infer.fastmap.map_loss`) before it is wired into ``fit``: the run
replaces ``Trace_ELBO`` in ``bayes_sws.infer`` by a subclass whose
``differentiable_loss`` calls ``map_loss`` whenever
:func:`bayes_sws.infer.fastmap.supports_fast_map` holds — the same switch ``fit``
will make — and falls back to Pyro otherwise. ``--compare`` runs both (Pyro
path first, then the fast path, alternating ``--repeats`` times).

Usage::

    python benchmarks/demo_time.py                      # as fit is now
    python benchmarks/demo_time.py --compare --repeats 2
    python benchmarks/demo_time.py --quick              # smoke test (tiny budget)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing


def install_fast_map() -> None:
    """Make ``bayes_sws.fit`` use :func:`map_loss` where it is exact (benchmark only)."""
    from pyro.infer import Trace_ELBO

    from bayes_sws.infer import svi as infer
    from bayes_sws.infer.fastmap import map_loss, supports_fast_map

    class FastMapELBO(Trace_ELBO):
        def differentiable_loss(self, model, guide, *args, **kwargs):
            if supports_fast_map(model, guide):
                return map_loss(model, guide, *args, **kwargs)
            return super().differentiable_loss(model, guide, *args, **kwargs)

    infer.Trace_ELBO = FastMapELBO


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def time_command(fast_map: bool, extra: list[str], threads: int | None = None) -> dict:
    """``bayes-sws demo`` in a subprocess: wall clock, child CPU time, reported wall time."""
    if fast_map:
        code = (
            f"import sys; sys.path.insert(0, {str(HERE)!r}); import demo_time; "
            "demo_time.install_fast_map(); from bayes_sws.runs.cli import main; "
            f"sys.exit(main(['demo', *{extra!r}]))"
        )
        command = [sys.executable, "-c", code]
    else:
        command = [sys.executable, "-m", "bayes_sws", "demo", *extra]
    env = dict(os.environ)
    env.pop("CI", None)
    if threads:  # torch reads these at start-up
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    before = os.times()
    start = time.perf_counter()
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    after = os.times()
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
    reported = None
    for line in done.stdout.splitlines():
        if "wall time:" in line:
            reported = float(line.split("wall time:")[1].split("s")[0])
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return {"wall_s": wall, "cpu_s": cpu, "reported_s": reported, "stdout": done.stdout}


def time_import() -> float:
    code = "import time; t = time.perf_counter(); import bayes_sws.runs.demo; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


@contextmanager
def _timed(module, name: str, into: dict):
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            into[name] = into.get(name, 0.0) + time.perf_counter() - start

    setattr(module, name, wrapper)
    try:
        yield
    finally:
        setattr(module, name, original)


def time_split(fast_map: bool, overrides: dict) -> dict:
    """``run_demo`` in this process with its stages timed."""
    from bayes_sws.infer import svi as infer
    from bayes_sws.runs import demo

    original_elbo = infer.Trace_ELBO
    if fast_map:
        install_fast_map()
    stages: dict[str, float] = {}
    try:
        with (
            _timed(demo, "load_dataset", stages),
            _timed(demo, "train", stages),
            _timed(demo, "fit", stages),
            _timed(demo, "accuracy", stages),
        ):
            start = time.perf_counter()
            result = demo.run_demo(progress=False, **overrides)
            total = time.perf_counter() - start
    finally:
        infer.Trace_ELBO = original_elbo
    fit = result.fit
    num_steps = len(fit.losses)
    return {
        "total_s": total,
        "data_s": stages.get("load_dataset", 0.0),
        "pretrain_s": stages.get("train", 0.0),
        "fit_s": stages.get("fit", 0.0),
        "fit_loop_s": fit.wall_time,
        "fit_setup_s": stages.get("fit", 0.0) - fit.wall_time,
        "ms_per_step": 1e3 * fit.wall_time / max(num_steps, 1),
        "accuracy_s": stages.get("accuracy", 0.0),
        "other_s": total - sum(stages.values()),
        "num_steps": num_steps,
        "accuracy_before": result.accuracy_pretrained,
        "accuracy_after": result.accuracy_retrained,
        "final_loss": float(fit.losses[-1]),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast-map", action="store_true", help="fit through fastmap.map_loss")
    parser.add_argument(
        "--compare", action="store_true", help="Pyro path and fast path, alternating"
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs of each (default 1)")
    parser.add_argument("--skip-command", action="store_true", help="only the in-process split")
    parser.add_argument("--skip-split", action="store_true", help="only the subprocess command")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads (OMP_NUM_THREADS for the command); default torch's own",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 5 SVI steps, 1 pretraining epoch, split only",
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    if args.quick or ("CI" in os.environ and argv is None):
        args.quick, args.skip_command, args.repeats = True, True, 1
    overrides = {"num_steps": 5, "pretrain_epochs": 1} if args.quick else {}

    import pyro
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    modes = [False, True] if args.compare else [args.fast_map]
    print(
        f"# demo_time: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), pyro {pyro.__version__}, "
        f"Python {platform.python_version()}, load average {_load()}"
    )
    results = []
    if not args.skip_command:
        print("\n## bayes-sws demo (subprocess, wall clock)")
        for _ in range(args.repeats):
            for fast in modes:
                res = time_command(fast, [], args.threads)
                res.update(mode="fast path" if fast else "pyro path", kind="command", load=_load())
                results.append(res)
                print(
                    f"  {res['mode']:<10} wall {res['wall_s']:6.1f} s   child CPU {res['cpu_s']:6.1f} s"
                    f"   (demo reports {res['reported_s']} s)   load {res['load']}"
                )
    if not args.skip_split:
        print(f"\n## split (in process; import of bayes_sws.runs.demo: {time_import():.2f} s)")
        header = (
            f"  {'mode':<10} {'total':>7} {'data':>6} {'pretrain':>9} {'fit setup':>9} "
            f"{'SVI loop':>9} {'ms/step':>8} {'eval+rest':>9}  accuracy before → after"
        )
        print(header)
        for _ in range(args.repeats):
            for fast in modes:
                res = time_split(fast, overrides)
                res.update(mode="fast path" if fast else "pyro path", kind="split", load=_load())
                results.append(res)
                print(
                    f"  {res['mode']:<10} {res['total_s']:6.1f}s {res['data_s']:5.2f}s "
                    f"{res['pretrain_s']:8.1f}s {res['fit_setup_s']:8.2f}s {res['fit_loop_s']:8.1f}s "
                    f"{res['ms_per_step']:8.2f} {res['accuracy_s'] + res['other_s']:8.2f}s  "
                    f"{100 * res['accuracy_before']:.2f} % → {100 * res['accuracy_after']:.2f} %"
                    f"   (load {res['load']})"
                )
        for fast in modes:
            runs = [
                r for r in results if r["kind"] == "split" and (r["mode"] == "fast path") == fast
            ]
            if len(runs) > 1:
                print(
                    f"  median {runs[0]['mode']}: total "
                    f"{statistics.median(r['total_s'] for r in runs):.1f} s, SVI "
                    f"{statistics.median(r['ms_per_step'] for r in runs):.2f} ms/step"
                )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
