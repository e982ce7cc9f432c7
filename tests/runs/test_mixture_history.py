"""mixture_history.json: what a run records of its weights and mixture, and that resume keeps it.

Oracles: an uninterrupted run with the same seed (bit-identical records), and
``numpy.histogram`` of the weights read back from the run's own files.
"""

import json
from pathlib import Path

import numpy as np
import torch

from bayes_sws.runs import commands as runs
from bayes_sws.runs import directory as rundir
from bayes_sws.runs.history import HISTORY_FILE, record_steps

TINY = {
    "hidden": [16],
    "num_components": 4,
    "pretrain_epochs": 1,
    "num_steps": 40,
    "batch_size": 64,
    "checkpoint_every": 2,
    "keep_checkpoints": 2,
}


def _history(run_dir) -> dict:
    return json.loads((Path(run_dir) / HISTORY_FILE).read_text())


def _checkpoint_exists(run_dir, step):
    return (Path(run_dir) / "checkpoints" / f"step-{step:08d}.ckpt").exists


def _counts(weights: np.ndarray, edges: np.ndarray) -> list[int]:
    counts, _ = np.histogram(np.clip(weights, edges[0], edges[-1]), bins=edges)
    return counts.tolist()


def test_record_steps_follow_the_checkpoint_schedule():
    assert record_steps(40, 2) == [0, 10, 20, 30, 40]
    assert record_steps(100, 30) == [0, 30, 60, 90, 100]  # first checkpoint at or after 25 %...
    assert record_steps(7, None) == [0, 7]


def test_history_records_the_run_and_survives_an_interruption(tmp_path):
    reference = tmp_path / "reference"
    assert runs.fit_run(TINY, reference).status == "complete"
    history = _history(reference)
    assert [s["step"] for s in history["snapshots"]] == [0, 10, 20, 30, 40]
    edges = np.asarray(history["edges"])
    # start: the pretrained weights, binned over their own range widened by a tenth
    initial = runs.read_checkpoint(reference / "initial.ckpt", kind="network")["network_state"]
    pretrained = np.concatenate(
        [v.double().reshape(-1).numpy() for k, v in initial.items() if k.endswith("weight")]
    )
    span = pretrained.max() - pretrained.min()
    np.testing.assert_allclose(
        edges[[0, -1]], [pretrained.min() - span / 10, pretrained.max() + span / 10]
    )
    assert history["snapshots"][0]["counts"] == _counts(pretrained, edges)
    # end: the fitted result's median weights and mixture
    result = runs.load_result(reference)
    median = result.median()
    fitted = np.concatenate(
        [
            median[result.model.site_name(n)].double().reshape(-1).numpy()
            for n in result.model.prior_param_names
        ]
    )
    last = history["snapshots"][-1]
    assert last["counts"] == _counts(fitted, edges) and sum(last["counts"]) == pretrained.size
    assert last["mu"] == result.mixture().mu.double().tolist()
    assert HISTORY_FILE in rundir.TOOL_FILES  # --overwrite knows the file is the tool's

    # stopped after step 15 (off the schedule): records 0 and 10 only
    run = tmp_path / "run"
    outcome = runs.fit_run(TINY, run, should_stop=_checkpoint_exists(run, 14))
    assert outcome.status == "interrupted" and outcome.step == 15
    assert [s["step"] for s in _history(run)["snapshots"]] == [0, 10]
    # a record whose checkpoint never made it (killed in between) is dropped on resume
    stale = _history(run)
    stale["snapshots"].append(
        {**stale["snapshots"][-1], "step": 20, "counts": [0] * (len(edges) - 1)}
    )
    (run / HISTORY_FILE).write_text(json.dumps(stale))
    assert runs.resume_run(run).status == "complete"
    assert _history(run) == history
    assert torch.equal(
        runs.load_result(run).median()[result.model.site_name(result.model.prior_param_names[0])],
        median[result.model.site_name(result.model.prior_param_names[0])],
    )

    # compress draws it with the other plots
    summary = runs.compress_run(run)
    assert "plots/mixture_evolution.png" in summary["plots"]
    assert (run / "plots" / "mixture_evolution.png").stat().st_size > 1000
