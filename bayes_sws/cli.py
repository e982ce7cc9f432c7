"""Command line: parse, call the library, print. No logic lives here."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from .demo import format_demo, run_demo

    result = run_demo(num_steps=args.steps, prior_scale=args.prior_scale, seed=args.seed)
    print(format_demo(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bayes-sws", description="Soft weight-sharing for PyTorch networks as a Pyro program."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="pretrain an MLP on digits, retrain with the mixture prior, report"
    )
    demo.add_argument("--steps", type=int, default=2000, help="SVI steps of the retraining")
    demo.add_argument("--prior-scale", type=float, default=0.1, help="λ in E + λΩ")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, OSError) as err:
        print(f"bayes-sws: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
