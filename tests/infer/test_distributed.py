"""Data-parallel ``fit`` on ``torch.distributed`` (gloo, 2 CPU processes under ``torchrun``).

Oracle: the same fit in one process with the same global batch (``fit_worker.py``'s
problem, run here in-process).
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bayes_sws.infer import distributed

HERE = Path(__file__).parent


def torchrun(*args: str, nproc: int = 2, cwd=None, timeout: int = 600):
    """Run ``torchrun --standalone --nproc_per_node=nproc ARGS``; the completed process."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={nproc}", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module", params=["map", "normal"])
def ranks(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"ddp-{request.param}")
    torchrun(str(HERE / "fit_worker.py"), str(out), request.param, "24")
    docs = [json.loads((out / f"rank-{r}.json").read_text()) for r in range(2)]
    return request.param, docs


def test_two_processes_equal_one_process_with_the_same_global_batch(ranks):
    sys.path.insert(0, str(HERE))
    try:
        from fit_worker import fit
    finally:
        sys.path.remove(str(HERE))
    guide, docs = ranks
    single = fit(guide, 24)
    np.testing.assert_allclose(docs[0]["straight"]["losses"], single.losses, rtol=1e-10)
    for name, p in single.guide.named_parameters():
        np.testing.assert_allclose(
            docs[0]["straight"]["values"][name], p.detach().reshape(-1), rtol=1e-9, atol=1e-12
        )
    assert docs[0]["straight"]["config"]["num_processes"] == 2
    assert single.config["num_processes"] == 1


def test_every_rank_holds_the_same_bits(ranks):
    _, docs = ranks
    assert docs[0]["straight"]["bits"] == docs[1]["straight"]["bits"]
    assert docs[0]["straight"]["losses"] == docs[1]["straight"]["losses"]
    names = docs[0]["straight"]["bits"]
    assert any("sws.means" in n for n in names) and any("net.0.weight" in n for n in names)


def test_resume_in_a_process_group_is_exact(ranks):
    _, docs = ranks
    for doc in docs:
        assert doc["resumed"]["bits"] == doc["straight"]["bits"]
        assert doc["resumed"]["losses"] == doc["straight"]["losses"]


def _leave(tmp_path, mode: str, polled: bool) -> dict:
    args = [str(tmp_path), mode, *(["polled"] if polled else [])]
    torchrun(str(HERE / "leave_worker.py"), *args, timeout=120)
    return json.loads((tmp_path / "rank-0.json").read_text())


@pytest.mark.parametrize("polled", [False, True], ids=["monitored", "polled"])
def test_leave_waits_for_the_other_processes(tmp_path, polled):
    """Rank 1 writes a file two seconds in, then leaves: rank 0, leaving at once, returns
    only after it (without the barrier it would return before the file exists). Both
    barriers: gloo's monitored one, and the polled one other backends (NCCL) take."""
    doc = _leave(tmp_path, "meet", polled)
    assert doc["late_seen"] and doc["warnings"] == [] and not doc["initialized"]


@pytest.mark.parametrize("polled", [False, True], ids=["monitored", "polled"])
def test_leave_without_the_others_warns_and_still_destroys_the_group(tmp_path, polled):
    """Rank 1 never comes: rank 0 warns after its one-second timeout (gloo names rank 1,
    the polled barrier the number of processes) and destroys the group all the same."""
    doc = _leave(tmp_path, "absent", polled)
    assert not doc["late_seen"] and not doc["initialized"]
    assert len(doc["warnings"]) == 1 and "without the others" in doc["warnings"][0]
    said = doc["warnings"][0].split("without the others", 1)[1]
    assert ("not all 2 processes" in said) if polled else ("1" in said)  # who was missing


def test_shards_partition_the_batch():
    batch = torch.tensor([7, 3, 9, 1, 4])
    parts = [distributed.shard(batch, 10, distributed.ProcessGroup(r, 2)) for r in range(2)]
    assert torch.equal(torch.cat(parts), batch)
    assert [len(p) for p in parts] == [3, 2]
    full = [distributed.shard(None, 5, distributed.ProcessGroup(r, 3)) for r in range(3)]
    assert torch.equal(torch.cat(full), torch.arange(5))
    with pytest.raises(ValueError, match="batch_size >= 3"):
        distributed.shard(torch.tensor([1, 2]), 10, distributed.ProcessGroup(0, 3))


def test_no_process_group_is_one_writer():
    assert distributed.current() is None
    assert distributed.is_writer()
    assert distributed.init_from_environment("cpu") is None
