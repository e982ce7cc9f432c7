"""Command line: parse, call the library, print. No logic lives here.

``bayes-sws fit``       start a run in a directory (or ``--resume`` one)
``bayes-sws compress``  quantise a fitted run, write ``DIR/compression.json``, ``DIR/model.sws``
``bayes-sws diagnose``  ArviZ view of the posterior, ``DIR/posterior.nc`` and plots
``bayes-sws report``    a short human summary of a run
``bayes-sws inspect``   what a compressed network file (``.sws``) holds, per parameter
``bayes-sws demo``      the README's main job on the bundled digits

Exit codes: 0 success, 1 a numerical or internal failure, 2 a usage mistake
(one line ``bayes-sws: error: ...``), 130 interrupted (a checkpoint was written).
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from ..settings import FitSettings, PriorSettings

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line and exit code 2; a mistyped flag gets a suggestion."""

    def error(self, message: str):
        hint = _did_you_mean(self, message)
        self.exit(EXIT_USAGE, f"bayes-sws: error: {message}{hint} (see `{self.prog} --help`)\n")


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every ``--flag`` of ``parser`` and of its subcommands."""
    found: set[str] = set()
    for action in parser._actions:  # argparse has no public walk over its actions
        found.update(s for s in action.option_strings if s.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _option_strings(sub)
    return found


def _did_you_mean(parser: argparse.ArgumentParser, message: str) -> str:
    """``; did you mean --hidden?`` for ``unrecognized arguments: --hiden`` (else ``""``)."""
    if not message.startswith("unrecognized arguments:"):
        return ""
    known = _option_strings(parser)
    hints = []
    for token in message.split(":", 1)[1].split():
        flag = token.split("=", 1)[0]
        if flag.startswith("--"):
            close = difflib.get_close_matches(flag, known, n=1, cutoff=0.75)
            if close:
                hints.append(f"{close[0]} for {flag}")
    return f"; did you mean {', '.join(hints)}?" if hints else ""


def _note(message: str) -> None:
    print(f"bayes-sws: {' '.join(message.split())}", file=sys.stderr)


# ------------------------------------------------------------------------ commands
def _fit(args: argparse.Namespace) -> int:
    from ..infer import distributed
    from . import commands as runs

    settings = {
        o["name"]: getattr(args, o["name"])
        for o in runs.config_options()
        if hasattr(args, o["name"])
    }
    leader = _join_torchrun(args, settings.get("device"))
    try:
        if not leader:  # another process of a torchrun
            with runs.stop_on_interrupt() as stop:
                outcome = runs.follow_run(should_stop=stop)
            code = EXIT_INTERRUPTED if outcome.status == "interrupted" else EXIT_OK
        else:
            code = _lead_fit(args, settings)
    except BaseException:
        distributed.leave(wait=False)  # the others may be waiting elsewhere, or gone
        raise
    distributed.leave()  # meet the others first: none closes connections another still uses
    return code


def _lead_fit(args: argparse.Namespace, settings: dict) -> int:
    """``fit`` in the one process, or rank 0 of a ``torchrun``: create or resume the run."""
    from . import commands as runs

    if args.resume is not None:
        changes = {k: settings.pop(k) for k in runs.RESUME_SETTINGS if k in settings}
        extra = sorted("--" + k.replace("_", "-") for k in settings)
        extra += [
            flag
            for flag, given in (
                ("--config", args.config),
                ("--out", args.out),
                ("--overwrite", args.overwrite),
            )
            if given
        ]
        if extra:
            raise runs.RunError(
                f"fit --resume continues with the settings in {args.resume}/config.json "
                f"(only {', '.join('--' + k.replace('_', '-') for k in runs.RESUME_SETTINGS)} "
                f"may change); drop {', '.join(extra)}"
            )
        if changes:  # checked like any flag before the run is touched
            runs.resolve_config({}, changes)
        with runs.stop_on_interrupt() as stop:
            outcome = runs.resume_run(
                args.resume, progress=args.progress, should_stop=stop, log=_note, settings=changes
            )
    else:
        file_values = runs.load_config_file(args.config) if args.config else {}
        config = runs.resolve_config(
            file_values,
            settings,
            file_name=str(args.config),
            flag_names=getattr(args, "_flag_names", {}),
            warn_legacy=False,
        )
        out = (
            args.out
            or Path("runs")
            / f"{Path(config.data).stem}-{config.guide}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        with runs.stop_on_interrupt() as stop:
            outcome = runs.fit_run(
                config,
                out,
                overwrite=args.overwrite,
                progress=args.progress,
                should_stop=stop,
                log=_note,
            )
    if outcome.status == "interrupted":
        _note(runs.format_outcome(outcome))
        return EXIT_INTERRUPTED
    print(runs.format_outcome(outcome))
    return EXIT_OK


def _join_torchrun(args: argparse.Namespace, device: str | None) -> bool:
    """Under ``torchrun``, join its process group; whether this process is rank 0 (or alone).

    Only rank 0 speaks and writes; the others keep their warnings to themselves
    (rank 0 gives the same ones).
    """
    from ..infer import distributed

    if device is None and args.resume is not None:
        from .commands import run_device

        device = run_device(args.resume)
    group = distributed.init_from_environment(device)
    if group is None or group.rank == 0:
        return True
    warnings.simplefilter("ignore")
    return False


def _compress(args: argparse.Namespace) -> int:
    from .commands import compress_run, compression_score, storing_settings
    from .settings import compress_options

    given = {o["name"]: vars(args)[o["name"]] for o in compress_options() if o["name"] in args}
    flags = getattr(args, "_flag_names", {})
    summary = compress_run(
        args.run_dir,
        plots=args.plots,
        device=args.device,
        sources={name: flags.get(name, "--" + name.replace("_", "-")) for name in given},
        **given,
    )
    score = compression_score(summary)
    print(storing_settings(summary))
    print(
        f"compression {summary['compression_rate']:.1f}x, "
        f"{100 * summary['nonzero_fraction']:.2f} % non-zero, "
        f"{summary['num_distinct_values']} distinct values in use "
        f"({summary['num_components_after_merging']} components after merging), {score}"
    )
    model = summary["files"]["model.sws"]
    print(
        f"wrote {Path(args.run_dir) / model['file']} ({model['num_bytes']} bytes: "
        f"{model['payload_bits']} bits of weights + {model['header_bytes']} bytes of header), "
        f"{Path(args.run_dir) / 'model_quantized.pt'} and {Path(args.run_dir) / 'compression.json'}"
    )
    return EXIT_OK


def _diagnose(args: argparse.Namespace) -> int:
    from .commands import diagnose_run

    out = diagnose_run(
        args.run_dir,
        num_samples=args.num_samples,
        max_points=args.max_points,
        plots=args.plots,
        device=args.device,
    )
    print(out["summary"].to_string())
    for note in out["notes"]:
        print(note)
    print(f"wrote {out['posterior']}" + (f" and {len(out['plots'])} plots" if out["plots"] else ""))
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from .commands import report_run

    print(report_run(args.run_dir))
    return EXIT_OK


def _inspect(args: argparse.Namespace) -> int:
    from ..compress import describe_compressed
    from .commands import MODEL_FILE

    path = args.file / MODEL_FILE if args.file.is_dir() else args.file  # a run directory
    info = describe_compressed(path)
    print(json.dumps(info.to_dict(), indent=2) if args.json else info.format_table())
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from .demo import format_demo, run_demo

    result = run_demo(num_steps=args.steps, prior_scale=args.prior_scale, seed=args.seed)
    print(format_demo(result))
    return EXIT_OK


# ------------------------------------------------------------------------ parser
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _directory(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; give a directory")
    return Path(text)


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _checked_number(option: dict) -> Callable[[str], int | float]:
    """An argparse type that reads a number and applies the setting's own check."""
    integer = option["kind"].startswith("int")
    check = option["check"]

    def parse(text: str) -> int | float:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            word = "an integer" if integer else "a number"
            raise argparse.ArgumentTypeError(f"expected {word}, got {text!r}") from None
        problem = None if math.isfinite(value) else "must be finite"
        problem = problem or (check(value) if check is not None else None)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {text!r}")
        return value

    return parse


def _add_setting(group: argparse._ArgumentGroup, option: dict, *, checked: bool = False) -> None:
    """A flag for the setting ``option``; ``checked`` numbers are checked as argparse reads them."""
    name, kind = option["name"], option["kind"]
    flags = ["--" + n.replace("_", "-") for n in (name, *option.get("aliases", ()))]
    default = option["default"]
    shown = (
        "none" if default is None else (list(default) if isinstance(default, tuple) else default)
    )
    text = (
        option["help"] if "default:" in option["help"] else f"{option['help']} (default: {shown})"
    )
    kwargs: dict = {"dest": name, "default": argparse.SUPPRESS, "help": text}
    if option["metavar"] is not None:
        kwargs["metavar"] = option["metavar"]
    elif option["choices"] is None and kind != "bool":
        kwargs["metavar"] = {"int": "N", "int?": "N", "float": "X", "float?": "X"}.get(
            kind, "VALUE"
        )
    if kind == "bool":
        group.add_argument(*flags, action=argparse.BooleanOptionalAction, **kwargs)
        return
    kwargs["action"] = _Recorded
    if len(flags) > 1:
        kwargs["help"] += f" ({', '.join(flags[1:])}: deprecated old name)"
    if option["choices"] is not None:
        kwargs["choices"] = list(option["choices"])
    if checked and kind in ("int", "int?", "float", "float?"):
        kwargs["type"] = _checked_number(option)
    elif kind in ("int", "int?"):
        kwargs["type"] = int
    elif kind in ("float", "float?"):
        kwargs["type"] = float
    elif kind == "ints":
        kwargs.update(type=int, nargs="+")
    elif kind in ("pair", "pair?"):
        kwargs.update(type=float, nargs=2)
    elif kind == "scales?":
        kwargs.update(nargs="+")
    group.add_argument(*flags, **kwargs)


_GROUPS = {
    "data": ("preset", "recipe", "data", "standardize", "test_fraction", "split_seed"),
    "network and pretraining": (
        "network",
        "hidden",
        "activation",
        "pretrain_epochs",
        "pretrain_lr",
        "pretrain_batch_size",
        "pretrain_schedule",
    ),
    "prior (PRML 5.137, Ullrich et al. hyperpriors; bayes_sws.settings.PriorSettings)": (
        PriorSettings.names()
    ),
    "likelihood (regression data)": (
        "standardize_targets",
        "noise_precision",
        "learn_noise_precision",
    ),
    "inference (bayes_sws.settings.FitSettings)": (*FitSettings.names(), "keep_checkpoints"),
}


class _Recorded(argparse.Action):
    """Stores the value and which of the setting's flags gave it (for error messages)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        flags = dict(getattr(namespace, "_flag_names", {}))
        flags[self.dest] = option_string
        namespace._flag_names = flags


def _run_dir_command(
    commands,
    name: str,
    run,
    *,
    help: str,
    description: str,
    run_dir_help: str = "a fitted run directory",
    plots: str | None = None,
) -> argparse.ArgumentParser:
    """A subcommand that works on one run directory (and optionally writes plots)."""
    command = commands.add_parser(name, help=help, description=description)
    command.add_argument("run_dir", type=_directory, metavar="DIR", help=run_dir_help)
    if plots is not None:
        command.add_argument(
            "--plots", action=argparse.BooleanOptionalAction, default=True, help=plots
        )
        command.add_argument(
            "--device",
            metavar="DEVICE",
            help="where to compute: cpu, cuda, cuda:N, mps or auto (default: cpu); "
            "the files written are the same",
        )
    command.set_defaults(run=run)
    return command


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(
        prog="bayes-sws",
        description="Soft weight-sharing for PyTorch networks as a Pyro program: fit, resume, "
        "compress and diagnose runs kept in directories.",
    )
    parser.add_argument("--version", action="version", version=f"bayes-sws {__version__}")
    parser.add_argument(
        "--traceback",
        action="store_true",
        help="show the full Python traceback of an error (for bug reports)",
    )
    # not required=True: argparse would then report a missing command before an unknown flag
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    _add_fit(commands)
    _add_compress(commands)
    _add_diagnose(commands)
    _run_dir_command(
        commands,
        "report",
        _report,
        help="a short human summary of a run",
        description="Settings, status, metrics, learned mixture, "
        "compression and posterior summary of a run directory.",
        run_dir_help="a run directory",
    )
    inspect = commands.add_parser(
        "inspect",
        help="what a compressed network file (.sws) holds, per parameter",
        description="Check a .sws file (checksum, lengths, every record decoded) and print its "
        "format version, architecture, sizes and, per parameter, its layout, entries, shared "
        "values and bits; imports nothing and builds no network (docs/file-format.md).",
    )
    inspect.add_argument(
        "file", type=Path, metavar="FILE", help="a .sws file, or a run directory (its model.sws)"
    )
    inspect.add_argument("--json", action="store_true", help="print it as JSON instead")
    inspect.set_defaults(run=_inspect)
    _add_demo(commands)
    return parser


def _add_fit(commands) -> None:
    """The ``fit`` command: run-directory flags, then one flag per run setting, grouped."""
    fit = commands.add_parser(
        "fit",
        help="start a run (pretrain, SVI with checkpoints, evaluate) or resume one",
        description="Fit the soft weight-sharing model and keep everything in a run directory "
        "(config.json, metrics.json, losses.csv, checkpoints/, result.ckpt). Settings come from "
        "the defaults, then --config FILE (TOML keys named like the flags: prior_scale = 0.1), "
        "then the flags. Ctrl-C writes a checkpoint; `fit --resume DIR` continues bit-identically.",
    )
    fit.add_argument(
        "--out",
        type=_directory,
        metavar="DIR",
        help="run directory to create (default: runs/<data>-<guide>-<time>)",
    )
    fit.add_argument("--config", type=Path, metavar="FILE", help="TOML file of settings")
    fit.add_argument(
        "--resume",
        type=_directory,
        metavar="DIR",
        help="continue the interrupted run in DIR from its last checkpoint",
    )
    fit.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    fit.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: on a terminal)",
    )
    from .commands import config_options

    options = {o["name"]: o for o in config_options()}
    for title, names in _GROUPS.items():
        group = fit.add_argument_group(title)
        for name in names:
            if name in options:
                _add_setting(group, options.pop(name))
    if options:  # settings added to RunConfig later still get a flag
        group = fit.add_argument_group("other settings")
        for option in options.values():
            _add_setting(group, option)
    fit.set_defaults(run=_fit)


def _add_compress(commands) -> None:
    compress = _run_dir_command(
        commands,
        "compress",
        _compress,
        help="quantise a fitted run; write DIR/compression.json and DIR/model.sws",
        description="Assign each weight of the MAP (median) network to its most responsible "
        "component of the learned mixture, merge close components, prune the zero component, "
        "and count storage as Han et al. (2016). Writes DIR/compression.json, the compressed "
        "network DIR/model.sws (docs/file-format.md; read it with "
        "bayes_sws.compress.load_compressed), the same network as a torch state dict "
        "DIR/model_quantized.pt, and plots.",
        plots="write before/after plots to DIR/plots/ (default: yes)",
    )
    from .settings import compress_options

    group = compress.add_argument_group("compression settings (bayes_sws.CompressSettings)")
    for option in compress_options():
        _add_setting(group, option, checked=True)


def _add_diagnose(commands) -> None:
    diagnose = _run_dir_command(
        commands,
        "diagnose",
        _diagnose,
        help="ArviZ InferenceData to DIR/posterior.nc, summary, plots",
        description="Draw from the fitted posterior, convert to ArviZ InferenceData (posterior, "
        "posterior_predictive, log_likelihood, observed_data), write DIR/posterior.nc, print "
        "az.summary of the mixture and save plots to DIR/plots/.",
        plots="write plots to DIR/plots/ (default: yes)",
    )
    diagnose.add_argument(
        "--num-samples", type=_positive_int, default=200, help="posterior draws (default: 200)"
    )
    diagnose.add_argument(
        "--max-points",
        type=_positive_int,
        default=500,
        help="training points in the log-likelihood and predictive groups (default: 500)",
    )


def _add_demo(commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="pretrain an MLP on digits, retrain with the mixture prior, report",
        description="The main job on scikit-learn's bundled digits: pretrain an MLP, retrain "
        "it under the learned mixture prior (MAP), print accuracy before/after and the mixture.",
    )
    demo.add_argument(
        "--steps",
        type=_positive_int,
        default=2000,
        help="SVI steps of the retraining (default: 2000)",
    )
    demo.add_argument(
        "--prior-scale", type=_non_negative_float, default=0.1, help="λ in E + λΩ (default: 0.1)"
    )
    demo.add_argument("--seed", type=int, default=0, help="(default: 0)")
    demo.set_defaults(run=_demo)


def _one_line(err: BaseException) -> str:
    """The message of ``err`` on one line, without the trace tables Pyro appends."""
    text = str(err)
    for marker in ("Trace Shapes:", "\n\n"):  # Pyro: "<message>\n Trace Shapes: ..."
        text = text.split(marker, 1)[0]
    return " ".join(text.split()) or type(err).__name__


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings at the command line: one line each, no source excerpt."""
    _note(f"warning: {_one_line(Warning(str(message)))}")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("choose a command: fit, compress, diagnose, report, inspect or demo")
    with warnings.catch_warnings():  # restores the caller's showwarning afterwards
        warnings.showwarning = _warning_line
        return _run_command(args)


def _run_command(args: argparse.Namespace) -> int:
    """Run the parsed command; every failure becomes one line and an exit code."""
    from ..zoo.data import DataError
    from .commands import CheckpointError, RunError

    try:
        return args.run(args)
    except KeyboardInterrupt:
        if args.traceback:
            raise
        print("bayes-sws: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (RunError, CheckpointError, DataError, ValueError, TypeError, OSError) as err:
        if args.traceback:
            raise
        print(f"bayes-sws: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except (FloatingPointError, RuntimeError, ImportError) as err:
        if args.traceback:
            raise
        print(
            f"bayes-sws: failed: {_one_line(err)} (rerun with --traceback for details)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    except Exception as err:  # a bug still gets one line, never a traceback
        if args.traceback:
            raise
        print(
            f"bayes-sws: failed: internal error {type(err).__name__}: {_one_line(err)} "
            "(rerun with --traceback and report it)",
            file=sys.stderr,
        )
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
