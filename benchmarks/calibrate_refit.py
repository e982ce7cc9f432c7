"""The λ at which the refit on the whole training set reaches the rate chosen on validation.

A recipe's λ was chosen on a validation split (``compression_validated.py``) at a mean
compression rate (``Recipe.rate``). ``compression.py`` refits on the whole training set at
λ · N / N_split, the same trade-off per image, but that refit may prune less than the split's
retrainings did. This script refits the grid's pretrained network (the same cache and seed as
``compression.py``) at each ``--prior-scales`` λ in rising order, once per ``--seeds`` seed,
and stops at the first whose mean rate reaches ``--target-rate`` (default the recipe's)
(:func:`bayes_sws.compress.tuning.calibrate_refit_scale`). It reads no test label: each refit
is scored on training images, a score nobody uses. The result goes into the recipe as
``refit_prior_scale`` and ``refit_num_train``.

Run from the repository root::

    python benchmarks/calibrate_refit.py --case fashion-mnist/lenet-300-100 \\
        --prior-scales 0.09 0.095 0.1 --seeds 0 1 2 --jobs 2 --set sws.reorder_units=false
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import compression as bench

from bayes_sws.compress.tuning import calibrate_refit_scale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(bench.CASES), default=bench.FULL[0])
    parser.add_argument("--prior-scales", nargs="+", type=float, required=True, metavar="λ")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--target-rate", type=float, help="rate to reach (default: the recipe's validated rate)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="refits at a time, one process each")
    parser.add_argument("--threads", type=int, default=1, help="torch threads a process")
    parser.add_argument("--cache", type=Path, default=bench.DEFAULT_CACHE)
    parser.add_argument("--json", type=Path, help="also write the rates to this file")
    bench.add_set_option(parser, "change a soft weight-sharing setting (sws.NAME=VALUE)")
    args = parser.parse_args(argv)
    overrides = bench._parse_overrides(args.overrides)
    if overrides["dc"]:
        parser.error("only sws.NAME=VALUE settings apply here (no Deep Compression runs)")

    torch.set_num_threads(args.threads)
    case = bench.CASES[args.case]
    data = bench.load(case)
    net, _ = bench.pretrained(case, data, seed=0, cache=args.cache, progress=False)
    start = time.perf_counter()
    found = calibrate_refit_scale(
        net,
        data,
        case.recipe,
        args.prior_scales,
        target_rate=args.target_rate,
        seeds=args.seeds,
        jobs=args.jobs,
        progress=False,
        **overrides["sws"],
    )
    minutes = (time.perf_counter() - start) / 60
    print(f"{args.case}: refit on {found.num_train} images, target rate {found.target_rate:g}")
    print("| λ (as chosen) | per seed " + str(found.seeds) + " | mean | reached |")
    print("| ---: | --- | ---: | --- |")
    for scale, rates in found.rates.items():
        mean = found.mean_rate(scale)
        shown = ", ".join(f"{r:.1f}" for r in rates)
        print(
            f"| {scale:g} | {shown} | {mean:.1f} | {'yes' if mean >= found.target_rate else ''} |"
        )
    if found.prior_scale is None:
        print(f"no λ reached {found.target_rate:g}: try larger ones ({minutes:.1f} min)")
    else:
        print(
            f"chosen: refit_prior_scale={found.prior_scale:g}, refit_num_train={found.num_train} "
            f"({minutes:.1f} min)"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "command": "python benchmarks/calibrate_refit.py " + " ".join(sys.argv[1:]),
            "case": args.case,
            "target_rate": found.target_rate,
            "seeds": found.seeds,
            "rates": {str(k): v for k, v in found.rates.items()},
            "prior_scale": found.prior_scale,
            "minutes": minutes,
        }
        args.json.write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
