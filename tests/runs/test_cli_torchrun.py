"""``torchrun --nproc_per_node=2 -m bayes_sws fit``: two gloo processes write one run.

Oracles: the same command in one process (its result to float precision, its
list of files), and an uninterrupted run for a resume.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import small_fit_flags
from test_cli_device import result_tensors

FLAGS = small_fit_flags(num_steps=12, checkpoint_every=4)

pytestmark = pytest.mark.slow


def bayes_sws(*argv: str, nproc: int = 1) -> subprocess.CompletedProcess:
    command = [sys.executable]
    if nproc > 1:
        command += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    command += ["-m", "bayes_sws", *argv]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*"))


def assert_close_runs(a: Path, b: Path) -> None:
    first, second = result_tensors(a), result_tensors(b)
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_allclose(first[key], second[key], rtol=2e-4, atol=1e-6, err_msg=key)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchrun")
    bayes_sws("fit", *FLAGS, "--out", str(root / "one"))
    two = bayes_sws("fit", *FLAGS, "--out", str(root / "two"), nproc=2)
    return root, two


def test_two_processes_write_the_run_of_one(runs):
    root, two = runs
    assert files(root / "two") == files(root / "one")
    assert_close_runs(root / "one", root / "two")
    assert two.stdout.count("test accuracy") == 1  # rank 0 alone reports


def test_resume_under_torchrun_equals_the_uninterrupted_run(runs):
    root, _ = runs
    crashed = root / "crashed"
    shutil.copytree(root / "one", crashed)
    # a crash after the checkpoint of step 8: no result, no later checkpoints
    assert (crashed / "checkpoints" / "step-00000008.ckpt").is_file()
    for name in ("result.ckpt", "result.json", "metrics.json"):
        (crashed / name).unlink()
    for path in (crashed / "checkpoints").iterdir():
        if path.name != "step-00000008.ckpt":
            path.unlink()
    resumed = bayes_sws("fit", "--resume", str(crashed), nproc=2)
    assert "resuming from step-00000008.ckpt" in resumed.stderr
    assert_close_runs(root / "one", crashed)
    again = bayes_sws("fit", "--resume", str(crashed), nproc=2)  # complete: all end
    assert "already complete" in again.stdout + again.stderr


def test_the_readme_torchrun_command_runs_verbatim(tmp_path):
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = re.search(r"<!-- torchrun-fit -->\n```bash\n(.*?)```", readme, re.DOTALL)
    assert block, "README.md lost its '<!-- torchrun-fit -->' bash block"
    command = block.group(1).strip()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "runs" / "ddp" / "result.json").read_text())
    assert result["config"]["num_processes"] == 2
    assert (tmp_path / "runs" / "ddp" / "metrics.json").is_file()
