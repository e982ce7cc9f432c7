"""``fit --device``: where a run computes, checked before anything is written, not its identity.

The oracles: a run without the flag (bit for bit), an uninterrupted run (for a
resume on another device), the files on disk (nothing written on a refusal) and
the value named in the one error line.
"""

import json
from pathlib import Path

import pytest
import torch
from conftest import cli_exit, small_fit_flags

from bayes_sws.runs import cli
from bayes_sws.runs import commands as runs
from bayes_sws.runs.settings import RESUME_SETTINGS, RunConfig, resolve_config

FLAGS = small_fit_flags(num_steps=6, checkpoint_every=2)
#: A CUDA device no machine running the tests has (checked in the tests that use it).
ABSENT = "cuda:7"


def run_cli(capsys, *argv):
    return cli_exit(capsys, *argv)


def assert_one_error_line(code, err, *named):
    assert code == cli.EXIT_USAGE, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("bayes-sws: error: "), err
    assert all(part in lines[0] for part in named), err


def result_tensors(run: Path) -> dict[str, torch.Tensor]:
    payload = runs.read_checkpoint(run / "result.ckpt", kind="result")
    found = {"losses": torch.as_tensor(payload["losses"])}
    for part in ("guide_state", "network_state"):
        found.update({f"{part}.{k}": v for k, v in payload[part].items()})
    return found


def assert_bitwise_equal(a: Path, b: Path) -> None:
    first, second = result_tensors(a), result_tensors(b)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def skip_if_absent_device_exists():
    if torch.cuda.is_available() and torch.cuda.device_count() > int(ABSENT.split(":")[1]):
        pytest.skip(f"this machine has {ABSENT}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A run without ``--device`` (the oracle of the runs with it)."""
    out = tmp_path_factory.mktemp("device") / "reference"
    assert cli.main(["fit", "--out", str(out), *FLAGS]) == cli.EXIT_OK
    return out


def test_device_cpu_gives_the_run_without_the_flag_bit_for_bit(tmp_path, reference, capsys):
    out = tmp_path / "cpu"
    code, _, err = run_cli(capsys, "fit", "--out", out, "--device", "cpu", *FLAGS)
    assert code == cli.EXIT_OK, err
    assert_bitwise_equal(reference, out)
    assert json.loads((out / "config.json").read_text())["device"] == "cpu"
    # the device is no part of the run's identity: both runs are the same run
    same = [json.loads((r / "bayes-sws-run.json").read_text()) for r in (out, reference)]
    assert same[0]["settings_sha256"] == same[1]["settings_sha256"]


@pytest.mark.parametrize("value", [ABSENT, "gpu", "cuda:x"])
def test_a_device_this_machine_lacks_is_one_error_line_before_anything_is_written(
    tmp_path, capsys, value
):
    skip_if_absent_device_exists()
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "fit", "--out", out, "--device", value, *FLAGS)
    assert_one_error_line(code, err, "--device: device ", repr(value))
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_config_file_device_is_checked_and_named(tmp_path, capsys):
    skip_if_absent_device_exists()
    config = tmp_path / "run.toml"
    config.write_text(f'device = "{ABSENT}"\n')
    code, _, err = run_cli(capsys, "fit", "--config", config, "--out", tmp_path / "run", *FLAGS)
    assert_one_error_line(code, err, f"{config}: device {ABSENT!r}")
    assert not (tmp_path / "run").exists()


def test_the_device_is_a_resume_setting_outside_the_identity():
    assert "device" in RESUME_SETTINGS
    cpu, auto = resolve_config({}, {"device": "cpu"}), resolve_config({}, {"device": "auto"})
    assert cpu.identity_settings() == auto.identity_settings() == RunConfig().identity_settings()
    assert "device" not in cpu.identity_settings()


def _interrupted(out: Path) -> Path:
    seen = {"n": 0}

    def stop():
        seen["n"] += 1
        return seen["n"] >= 2

    config = resolve_config({}, cli_settings())
    assert runs.fit_run(config, out, should_stop=stop).status == "interrupted"
    return out


def cli_settings() -> dict:
    """FLAGS as settings (``--hidden 8`` as ``hidden=[8]``)."""
    pairs = dict(zip(FLAGS[::2], FLAGS[1::2], strict=True))
    values = {k[2:].replace("-", "_"): int(v) for k, v in pairs.items()}
    values["hidden"] = [values["hidden"]]
    return values


def test_a_run_may_resume_on_another_device(tmp_path, reference, capsys):
    """A run started "on a GPU" (its config.json says cuda:7) continues on the CPU, exactly."""
    skip_if_absent_device_exists()
    run = _interrupted(tmp_path / "run")
    config_path = run / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "device": ABSENT}))
    before = config_path.read_bytes()
    # without --device the stored device is refused, before the run is touched
    code, _, err = run_cli(capsys, "fit", "--resume", run)
    assert_one_error_line(code, err, f"device {ABSENT!r} is not available")
    assert "--device" in err
    assert config_path.read_bytes() == before
    # another absent device given on resume: refused the same way
    code, _, err = run_cli(capsys, "fit", "--resume", run, "--device", "cuda:9")
    assert_one_error_line(code, err, "--device: device 'cuda:9'")
    assert config_path.read_bytes() == before
    code, _, err = run_cli(capsys, "fit", "--resume", run, "--device", "auto")
    assert code == cli.EXIT_OK, err
    assert json.loads(config_path.read_text())["device"] == "auto"
    assert_bitwise_equal(reference, run)


def snapshot(run: Path) -> dict[str, float]:
    """Every file of a run with its modification time (what a refused command must not touch)."""
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.rglob("*")}


@pytest.mark.parametrize("command", ["compress", "diagnose"])
def test_compress_and_diagnose_refuse_an_absent_device_before_writing(reference, capsys, command):
    skip_if_absent_device_exists()
    before = snapshot(reference)
    code, _, err = run_cli(capsys, command, reference, "--device", ABSENT, "--no-plots")
    assert_one_error_line(code, err, "--device: device ", repr(ABSENT))
    assert snapshot(reference) == before


def test_compress_on_device_cpu_writes_the_files_of_the_default(tmp_path, reference, capsys):
    import shutil

    runs_ = [tmp_path / "default", tmp_path / "cpu"]
    for run, extra in zip(runs_, ([], ["--device", "cpu"])):
        shutil.copytree(reference, run)
        code, _, err = run_cli(capsys, "compress", run, "--no-plots", *extra)
        assert code == cli.EXIT_OK, err
    for name in ("model.sws", "model_quantized.pt"):
        assert (runs_[0] / name).read_bytes() == (runs_[1] / name).read_bytes(), name
    first, second = (json.loads((r / "compression.json").read_text()) for r in runs_)
    assert first["compression_rate"] == second["compression_rate"]


def test_load_result_onto_a_device(reference):
    on_cpu = runs.load_result(reference)
    moved = runs.load_result(reference, device="cpu")
    assert next(moved.model.net.parameters()).device.type == "cpu"
    x = torch.randn(5, 64)
    assert torch.equal(on_cpu.predict(x), moved.predict(x))
    skip_if_absent_device_exists()
    with pytest.raises(ValueError, match="not available"):
        runs.load_result(reference, device=ABSENT)
