"""Run by ``test_distributed.py`` under ``torchrun``: ``distributed.leave`` with two processes.

``torchrun --nproc_per_node=2 leave_worker.py OUT MODE [polled]``. ``meet``: rank 1 sleeps,
writes ``OUT/late``, then leaves; rank 0 leaves at once and records whether ``late`` was
there when its ``leave`` returned. ``absent``: rank 1 never comes to the barrier (it sleeps
past rank 0's one-second timeout, then leaves as a process with an error does, without
waiting); rank 0 records the warnings its ``leave`` gave and whether the group was
destroyed all the same. ``polled``: both ranks take the barrier of backends without
``monitored_barrier`` (NCCL's path), here on gloo.
"""

import json
import sys
import time
import warnings
from pathlib import Path

import torch.distributed as dist

from bayes_sws.infer import distributed


def main(out: str, mode: str, polled: bool) -> None:
    dist.init_process_group("gloo")
    if polled:
        distributed._MONITORED_BACKENDS = frozenset()
    rank = dist.get_rank()
    late = Path(out, "late")
    if rank == 1:
        time.sleep(2.0 if mode == "meet" else 4.0)
        if mode == "meet":
            late.write_text("rank 1 came")
        distributed.leave(wait=mode == "meet")
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        distributed.leave(timeout=1.0 if mode == "absent" else 600.0)
    doc = {
        "late_seen": late.exists(),
        "warnings": [str(w.message) for w in caught],
        "initialized": dist.is_initialized(),
    }
    Path(out, "rank-0.json").write_text(json.dumps(doc))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:] == ["polled"])
