"""Run directories never destroy what is not theirs, and every file proves it belongs.

Issue 13's fault campaign, case by case: data loss first (``--overwrite`` of a
foreign folder, of a locked run, links inside a run), then state from another
run, non-finite checkpoints, interrupted creation, values refused before
anything is written, and the CLI's one-line errors. The oracles are the files
on disk (hand-written bytes that must survive), an uninterrupted reference run
(bit for bit), and the flag or file named in the one error line.
"""

import contextlib
import errno
import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import cli_exit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bayes_sws import _io
from bayes_sws.runs import cli
from bayes_sws.runs import commands as runs
from bayes_sws.runs import directory as run_dir
from bayes_sws.runs.checkpoints import RunIdentity, write_checkpoint

TINY = {
    "hidden": [8],
    "num_components": 3,
    "pretrain_epochs": 0,
    "num_steps": 6,
    "batch_size": 64,
    "checkpoint_every": 2,
    "keep_checkpoints": 3,
}
TINY_FLAGS = [
    "--hidden",
    "8",
    "--num-components",
    "3",
    "--pretrain-epochs",
    "0",
    "--num-steps",
    "2",
]


def _cli(argv, capsys):
    return cli_exit(capsys, *argv)


def _one_error_line(code, err, named):
    assert code == cli.EXIT_USAGE, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("bayes-sws: error: "), err
    assert named in lines[0], err
    assert "Traceback" not in err


def _state(run):
    payload = runs.read_checkpoint(Path(run) / "result.ckpt", kind="result")
    return payload["guide_state"], payload["network_state"], payload["losses"]


def _assert_same_result(a, b):
    for x, y in zip(_state(a), _state(b)):
        if isinstance(x, dict):
            assert x.keys() == y.keys()
            for key in x:
                assert torch.equal(x[key], y[key]), key
        else:
            assert torch.equal(x, y)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    assert runs.fit_run(TINY, out).status == "complete"
    return out


def _interrupted(out, after=2):
    """A run stopped after ``after`` steps (checkpoints every 2 steps)."""
    seen = {"n": 0}

    def stop():
        seen["n"] += 1
        return seen["n"] >= after

    outcome = runs.fit_run(TINY, out, should_stop=stop)
    assert outcome.status == "interrupted"
    return out


# ============================================================================ data loss
def test_overwrite_never_deletes_a_project_folder_with_a_config_json(tmp_path, capsys):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "config.json").write_text('{"mine": true}')
    (project / "src" / "main.py").write_text("print('mine')")
    (project / "notes.md").write_text("notes")
    code, _, err = _cli(["fit", "--out", project, "--overwrite", *TINY_FLAGS], capsys)
    _one_error_line(code, err, "not a bayes-sws run directory")
    assert (project / "src" / "main.py").read_text() == "print('mine')"
    assert (project / "notes.md").read_text() == "notes"
    assert (project / "config.json").read_text() == '{"mine": true}'
    assert sorted(p.name for p in project.iterdir()) == ["config.json", "notes.md", "src"]


def test_overwrite_deletes_only_the_files_the_tool_wrote(tmp_path, reference):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "my-notes.txt").write_text("keep me")
    (run / "checkpoints" / "my.ckpt").write_text("keep me too")
    (run / "plots").mkdir()
    (run / "plots" / "my-figure.png").write_bytes(b"mine")
    old_checkpoints = {p.name for p in (run / "checkpoints").glob("step-*.ckpt")}
    old_id = json.loads((run / run_dir.MARKER_FILE).read_text())["run_id"]
    outcome = runs.fit_run({**TINY, "num_steps": 2, "seed": 1}, run, overwrite=True)
    assert outcome.status == "complete"
    assert (run / "my-notes.txt").read_text() == "keep me"
    assert (run / "checkpoints" / "my.ckpt").read_text() == "keep me too"
    assert (run / "plots" / "my-figure.png").read_bytes() == b"mine"
    new_checkpoints = {p.name for p in (run / "checkpoints").glob("step-*.ckpt")}
    assert new_checkpoints == {"step-00000002.ckpt"} != old_checkpoints
    assert json.loads((run / run_dir.MARKER_FILE).read_text())["run_id"] != old_id
    assert json.loads((run / "config.json").read_text())["seed"] == 1


def test_overwrite_refuses_a_run_another_process_holds(tmp_path, reference):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with run_dir.locked(run, "fit"):  # what a running fit holds
        with pytest.raises(runs.RunError, match="in use by another bayes-sws process.*fit"):
            runs.fit_run(TINY, run, overwrite=True)
        with pytest.raises(runs.RunError, match="in use by another bayes-sws process"):
            runs.compress_run(run, plots=False)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"} == {
        k: v for k, v in before.items() if k != ".lock"
    }


def test_a_run_whose_directory_vanished_fails(tmp_path):
    run = tmp_path / "run"
    calls = {"n": 0}

    def remove_midway():
        calls["n"] += 1
        if calls["n"] == 3:
            shutil.rmtree(run)  # what the old --overwrite did to a running fit
        return False

    with pytest.raises(runs.RunError, match="removed or replaced"):
        runs.fit_run(TINY, run, should_stop=remove_midway)
    assert not (run / "metrics.json").exists()


@pytest.mark.parametrize("link", ["plots", "checkpoints", ".lock"])
def test_links_inside_a_run_are_refused_not_followed(tmp_path, reference, link):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("mine")
    target = elsewhere / "lockfile" if link == ".lock" else elsewhere
    if (run / link).is_dir():
        shutil.rmtree(run / link)
    elif (run / link).exists():
        (run / link).unlink()
    (run / link).symlink_to(target)
    (run / "metrics.json").unlink()  # so that resume does work in checkpoints/
    with pytest.raises(runs.RunError, match="symbolic link"):
        runs.resume_run(run)
    (run / "metrics.json").write_text("{}")
    with pytest.raises(runs.RunError, match="symbolic link"):
        runs.compress_run(run)
    with pytest.raises(runs.RunError, match="symbolic link"):
        runs.fit_run(TINY, run, overwrite=True)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["precious.txt"]
    assert (elsewhere / "precious.txt").read_text() == "mine"


# ============================================================================ state that proves it belongs
def test_result_of_another_run_is_refused(tmp_path, reference):
    other = tmp_path / "other"
    assert runs.fit_run({**TINY, "num_steps": 2}, other).status == "complete"
    shutil.copy(reference / "result.ckpt", other / "result.ckpt")
    with pytest.raises(runs.CheckpointError, match="result.ckpt belongs to run"):
        runs.compress_run(other, plots=False)
    shutil.copy(reference / "metrics.json", other / "metrics.json")
    with pytest.raises(runs.RunError, match="metrics.json belongs to run"):
        runs.report_run(other)


@pytest.mark.parametrize(
    ("key", "value"), [("hidden", [9]), ("precision_prior", [3.0, 1e-3]), ("lr", 0.5)]
)
def test_resume_with_an_edited_config_is_refused_naming_the_setting(tmp_path, key, value):
    run = _interrupted(tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(runs.RunError, match=f"differs from the settings.*{key}"):
        runs.resume_run(run)
    assert not (run / "metrics.json").exists()


def test_initial_network_of_another_run_is_not_used(tmp_path, reference):
    run = _interrupted(tmp_path / "run")
    other = _interrupted(tmp_path / "other")
    shutil.copy(other / "initial.ckpt", run / "initial.ckpt")
    log = []
    assert runs.resume_run(run, log=log.append).status == "complete"
    assert any("initial.ckpt belongs to run" in m for m in log), log
    _assert_same_result(reference, run)


def _newest_with(run, mutate, step, identity=None):
    """Write an intact checkpoint at ``step``: the newest good state, changed by ``mutate``."""
    state, _, _ = runs.latest_checkpoint(run)
    values = state.to_dict()
    mutate(values)
    values["step"] = step
    path = run / "checkpoints" / f"step-{step:08d}.ckpt"
    if identity is None:
        marker = json.loads((run / run_dir.MARKER_FILE).read_text())
        identity = RunIdentity.from_dict(marker)
    write_checkpoint(path, {"state": values}, kind="checkpoint", identity=identity)
    return path


def _poison(values):
    name = next(iter(values["guide_state"]))
    values["guide_state"][name] = torch.full_like(values["guide_state"][name], float("nan"))


def test_resume_skips_intact_but_non_finite_and_foreign_checkpoints(tmp_path, reference):
    run = _interrupted(tmp_path / "run", after=2)
    nan_path = _newest_with(run, _poison, step=4)
    foreign = _newest_with(run, lambda v: None, step=6, identity=RunIdentity("f" * 32, "0" * 64))
    log = []
    assert runs.resume_run(run, log=log.append).status == "complete"
    assert any(nan_path.name in m and "not finite" in m for m in log), log
    assert any(foreign.name in m and "belongs to run" in m for m in log), log
    _assert_same_result(reference, run)


def test_fault_handling_may_change_on_resume(tmp_path, reference, capsys):
    run = _interrupted(tmp_path / "run")
    argv = ["fit", "--resume", run, "--on-nonfinite", "rollback", "--max-rollbacks", "5"]
    code, _, err = _cli(argv, capsys)
    assert code == cli.EXIT_OK, err
    config = json.loads((run / "config.json").read_text())
    assert (config["on_nonfinite"], config["max_rollbacks"]) == ("rollback", 5)
    _assert_same_result(reference, run)
    code, _, err = _cli(["fit", "--resume", run, "--lr", "0.1"], capsys)
    _one_error_line(code, err, "drop --lr")


# ============================================================================ interrupted creation
def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_creation_is_atomic_and_leftovers_of_a_killed_creation_are_cleaned(tmp_path, reference):
    out = tmp_path / "run"
    stale = tmp_path / f".run.{_dead_pid()}.abcd.tmp"  # a creation killed before its rename
    stale.mkdir()
    (stale / "config.json").write_text("{")
    (stale / ".config.json.x1y2.tmp").write_text("partial")
    busy = tmp_path / f".run.{os.getpid()}.beef.tmp"  # a creation still under way: left alone
    busy.mkdir()
    assert not out.exists()
    assert runs.fit_run(TINY, out).status == "complete"
    assert not stale.exists() and busy.exists()
    _assert_same_result(reference, out)


def test_stale_temporary_files_are_removed_by_the_next_command(tmp_path, reference):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "plots").mkdir(exist_ok=True)
    for where in (run, run / "checkpoints", run / "plots"):
        (where / ".compression.json.k1ll.tmp").write_text("partial")
    runs.compress_run(run, plots=False)
    assert not list(run.rglob("*.tmp"))


# ============================================================================ refused before writing
HUGE = [
    (["--seed", "99999999999999999999"], "--seed"),
    (["--seed", "4294967296"], "--seed"),
    (["--split-seed", "4294967296"], "--split-seed"),
    (["--num-components", "1e25"], "--num-components"),
    (["--num-components", "100000"], "--num-components"),
    (["--num-steps", "1e25"], "--num-steps"),
    (["--num-steps", "10000000000000"], "--num-steps"),
    (["--num-epochs", "1e25"], "--num-epochs"),
    (["--num-particles", "1e25"], "--num-particles"),
    (["--num-particles", "1000000"], "--num-particles"),
    (["--lr", "1e300"], "--lr"),
    (["--guide", "normal", "--init-scale", "1e30"], "--init-scale"),
    (["--hidden", "8", "10000000"], "--hidden"),
]


@pytest.mark.parametrize(
    ("flags", "named"), HUGE, ids=lambda v: " ".join(v) if isinstance(v, list) else v
)
def test_extreme_values_are_refused_before_the_run_directory_exists(flags, named, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["fit", "--out", out, "--hidden", "8", "--pretrain-epochs", "0", *flags]
    code, _, err = _cli(argv, capsys)
    _one_error_line(code, err, named)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_toml_seed_out_of_range_is_refused(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text("seed = 1e20\n")
    code, _, err = _cli(["fit", "--config", config, "--out", tmp_path / "run"], capsys)
    _one_error_line(code, err, "seed must be <= 4294967295")
    assert not (tmp_path / "run").exists()


def test_empty_out_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _cli(["fit", "--out", "", *TINY_FLAGS], capsys)
    _one_error_line(code, err, "--out")
    assert list(tmp_path.iterdir()) == []


def test_config_from_a_device_or_a_fifo_is_refused_without_reading(tmp_path):
    fifo = tmp_path / "settings.toml"
    os.mkfifo(fifo)
    for path in ("/dev/zero", fifo):
        process = subprocess.run(
            [
                sys.executable,
                "-m",
                "bayes_sws",
                "fit",
                "--config",
                str(path),
                "--out",
                str(tmp_path / "r"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert process.returncode == cli.EXIT_USAGE, process.stderr
        assert process.stderr.strip().splitlines() == [
            f"bayes-sws: error: config file {path} is not a regular file; give a .toml file"
        ]
    assert not (tmp_path / "r").exists()


def test_large_config_file_is_refused_by_its_size(tmp_path, capsys):
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * (2 << 20) + "\n")
    code, _, err = _cli(["fit", "--config", big, "--out", tmp_path / "r"], capsys)
    _one_error_line(code, err, "big.toml is 2097155 bytes")


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("{}", "metrics.json carries no run identity"),
        ("{not json", "metrics.json is not valid JSON"),
    ],
)
def test_report_on_a_damaged_metrics_file_names_it(tmp_path, reference, capsys, content, named):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "metrics.json").write_text(content)
    code, _, err = _cli(["report", run], capsys)
    _one_error_line(code, err, named)


def test_report_escapes_terminal_control_sequences(tmp_path, capsys):
    import numpy as np

    data = tmp_path / "evil\x1b[2J\x1b[31mdata.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.normal(size=(60, 4)), y=rng.integers(0, 2, size=60))
    run = tmp_path / "run"
    runs.fit_run({**TINY, "num_steps": 2, "data": str(data)}, run)
    code, out, err = _cli(["report", run], capsys)
    assert code == cli.EXIT_OK, err
    assert "\x1b" not in out
    assert "\\x1b[2J\\x1b[31mdata.npz" in out


def test_compress_on_a_running_fit_says_it_is_running(tmp_path, reference, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "result.ckpt").unlink()
    with run_dir.locked(run, "fit"):
        code, _, err = _cli(["compress", run], capsys)
    _one_error_line(code, err, "in use by another bayes-sws process (bayes-sws fit, pid")


def test_a_full_disk_names_the_file(tmp_path, monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_io.os, "fsync", no_space)
    target = tmp_path / "metrics.json"
    with pytest.raises(OSError, match=f"cannot write {target}: No space left on device"):
        _io.atomic_write_json(target, {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_write_checkpoint_refuses_what_it_cannot_read_back(tmp_path):
    path = tmp_path / "x.ckpt"
    with pytest.raises(TypeError, match="cannot write .*x.ckpt"):
        write_checkpoint(path, {"f": shutil.copy}, kind="checkpoint")
    assert list(tmp_path.iterdir()) == []


def test_pyro_trace_dumps_are_cut_to_one_line():
    err = ValueError("Expected value argument to be finite\nTrace Shapes:\n Param Sites:\n  w 3")
    assert cli._one_line(err) == "Expected value argument to be finite"


# ============================================================================ kill -9 (slow tier)
def _cli_process(*argv):
    env = {**os.environ, "CI": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "bayes_sws", *map(str, argv)]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_when_seen(process, folder, pattern, timeout=120.0):
    """SIGKILL ``process`` as soon as an entry matching ``pattern`` shows in ``folder``."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            if any(fnmatch.fnmatch(name, pattern) for name in os.listdir(folder)):
                process.send_signal(signal.SIGKILL)
                break
        time.sleep(0.0002)
    process.wait()
    return process.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_kill_9_during_the_first_write_leaves_nothing_a_rerun_trips_over(tmp_path):
    """Kill ``fit`` while it assembles the new run directory; a plain re-run then succeeds."""
    landed = 0
    for attempt in range(8):
        parent = tmp_path / f"attempt-{attempt}"
        parent.mkdir()
        out = parent / "run"
        process = _cli_process("fit", "--out", out, *TINY_FLAGS)
        if _kill_when_seen(process, parent, ".run.*.tmp"):
            landed += 1
            # either no run at all, or a whole one (marker and config.json together)
            assert not out.exists() or {"config.json", run_dir.MARKER_FILE} <= {
                p.name for p in out.iterdir()
            }
            if not out.exists():
                rerun = _cli_process("fit", "--out", out, *TINY_FLAGS)
                assert rerun.wait() == 0
                assert (out / "metrics.json").is_file()
                assert not [p for p in parent.iterdir() if p.name.endswith(".tmp")]
        if landed >= 2:
            break
    assert landed, "no kill landed while the run directory was being created"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "pattern", "written"),
    [
        ("compress", ".compression*.tmp", "compression.json"),
        ("diagnose", ".posterior.nc.*.tmp", "posterior.nc"),
    ],
)
def test_kill_9_during_compress_and_diagnose_then_the_next_command_cleans_up(
    tmp_path, reference, command, pattern, written
):
    landed = False
    for attempt in range(8):
        run = tmp_path / f"run-{attempt}"
        shutil.copytree(reference, run)
        folder = run / "plots" if command == "compress" else run
        folder.mkdir(exist_ok=True)
        pattern_here = "*.png.*.tmp" if command == "compress" else pattern
        if _kill_when_seen(_cli_process(command, run), folder, pattern_here):
            landed = landed or any(p.name.endswith(".tmp") for p in run.rglob("*"))
            assert _cli_process(command, run).wait() == 0
            assert (run / written).is_file()
            assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
        if landed:
            break
    assert landed, f"no kill landed inside a write of {command} in 8 attempts"


# ============================================================================ fuzz
_INT_FLAGS = [
    "--num-components",
    "--num-steps",
    "--num-epochs",
    "--batch-size",
    "--seed",
    "--num-particles",
    "--split-seed",
    "--pretrain-epochs",
    "--checkpoint-every",
    "--keep-checkpoints",
    "--max-rollbacks",
    "--pretrain-batch-size",
]
_FLOAT_FLAGS = [
    "--lr",
    "--mixture-lr",
    "--prior-scale",
    "--pretrain-lr",
    "--init-scale",
    "--mean-scale",
    "--mixing-concentration",
    "--noise-precision",
    "--test-fraction",
    "--init-pi-zero",
]
_CHOICE_FLAGS = [
    "--guide",
    "--optimizer",
    "--network",
    "--activation",
    "--standardize",
    "--on-nonfinite",
]
_BAD_INTS = st.one_of(
    st.integers(max_value=-1).map(str),
    st.integers(min_value=2**63).map(str),
    st.sampled_from(["1.5", "nan", "inf", "1e400", "x", "", "0x10"]),
)
_BAD_FLOATS = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "1e400", "-1e400", "1e39", "abc", "", "--"]),
    st.floats(max_value=-1e-9, allow_nan=False).map(repr),
)


@st.composite
def _bad_flag(draw):
    kind = draw(st.sampled_from(["int", "float", "choice"]))
    if kind == "int":
        return draw(st.sampled_from(_INT_FLAGS)), draw(_BAD_INTS)
    if kind == "float":
        flag = draw(st.sampled_from(_FLOAT_FLAGS))
        value = draw(_BAD_FLOATS)
        if flag == "--prior-scale" and value.startswith("-0.0"):
            value = "-1"
        return flag, value
    flag = draw(st.sampled_from(_CHOICE_FLAGS))
    return flag, draw(st.text(st.characters(codec="ascii"), max_size=8).filter(_not_a_choice))


_CHOICES = {
    str(c).lower() for o in runs.config_options() if o["choices"] is not None for c in o["choices"]
}


def _not_a_choice(text: str) -> bool:
    normal = text.strip().lower()
    return all(normal.replace(a, b) not in _CHOICES for a, b in (("_", "-"), ("-", "_")))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(_bad_flag())
def test_fuzzed_bad_flags_are_one_line_exit_2_and_create_nothing(tmp_path_factory, capsys, bad):
    flag, value = bad
    where = tmp_path_factory.mktemp("fuzz")
    argv = ["fit", "--out", str(where / "run"), *TINY_FLAGS, f"{flag}={value}"]
    code, out, err = _cli(argv, capsys)
    assert code == cli.EXIT_USAGE, (argv, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bayes-sws: error: "), (argv, err)
    assert flag in lines[0], (argv, err)
    assert out == ""
    assert list(where.iterdir()) == []


# ============================================================================ divergence
def test_a_diverging_fit_is_a_fault_in_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["fit", "--out", out, "--hidden", "8", "--num-components", "3", "--pretrain-epochs", "0"]
    code, _, err = _cli([*argv, "--num-steps", "50", "--lr", "1e4"], capsys)
    assert code == cli.EXIT_FAILURE, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("bayes-sws: failed: the loss diverged at step"), err
    assert len([line for line in err.splitlines() if "warning" in line]) == 0
    assert not (out / "metrics.json").exists()


def test_divergence_rule_against_a_hand_count():
    from bayes_sws.infer.svi import FaultPolicy

    # best so far: 100, 80, 80, 50, 50; the rule: loss - best > 1e4 * max(|best|, 1)
    policy = FaultPolicy()
    assert [policy.diverged(v) for v in (100.0, 80.0, 90.0, 50.0, 50.0 + 5e5)] == [False] * 5
    assert policy.diverged(50.0 + 5e5 + 1.0)
    assert not FaultPolicy(divergence_factor=None).diverged(1e30)
    negative = FaultPolicy()
    assert not negative.diverged(-1e5)
    assert not negative.diverged(1e3)  # 1.01e5 above -1e5: about once its size
    assert negative.diverged(-1e5 + 1e4 * 1e5 + 1.0)
    tiny = FaultPolicy()
    assert not tiny.diverged(1e-3)
    assert tiny.diverged(1e-3 + 1e4 + 1.0)  # the scale is at least 1


def test_a_mistyped_flag_gets_a_suggestion(tmp_path, capsys):
    code, _, err = _cli(["fit", "--out", tmp_path / "r", "--hiden", "8", "--xyzzy", "1"], capsys)
    _one_error_line(code, err, "unrecognized arguments: --hiden 8 --xyzzy 1")
    assert "did you mean --hidden for --hiden?" in err
    assert not (tmp_path / "r").exists()


def test_losses_csv_follows_the_run_at_each_checkpoint(tmp_path, reference):
    run = _interrupted(tmp_path / "run", after=4)
    rows = (run / "losses.csv").read_text().splitlines()
    assert rows[0] == "step,loss" and len(rows) == 1 + 4  # steps 0-3, checkpointed at step 4
    final = (reference / "losses.csv").read_text().splitlines()
    assert rows == final[:5]  # the same numbers the finished run records
