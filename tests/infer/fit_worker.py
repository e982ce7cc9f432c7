"""Run by ``test_distributed.py`` under ``torchrun``: ``bayes_sws.fit`` in a process group.

``torchrun --nproc_per_node=K fit_worker.py OUT GUIDE NUM_STEPS``: every
process fits the same problem with a global batch of ``B`` (each evaluating its
shard), straight through and interrupted half-way and resumed from the state
its checkpoint callable got; each rank writes ``OUT/rank-R.json`` with the
losses and the exact bits (hex) of every fitted parameter.
"""

import json
import sys
from pathlib import Path

import torch.distributed as dist

import bayes_sws as sws
from bayes_sws.infer import distributed

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: scenarios
from scenarios import process_group_problem

N, B = 40, 8


def problem():
    """The shared problem (``scenarios.process_group_problem``) as a model."""
    x, y, net, prior = process_group_problem(N)
    return x, y, sws.SWSModel(net, prior, prior_scale=0.7)


def fit(guide: str, num_steps: int, **kwargs):
    x, y, model = problem()
    options = {"lr": 1e-2, "mixture_lr": 5e-3, "batch_size": B, "seed": 3, "progress": False}
    return sws.fit(model, x, y, guide, num_steps=num_steps, **options, **kwargs)


def record(result) -> dict:
    params = {name: p.detach() for name, p in result.guide.named_parameters()}
    return {
        "losses": result.losses.tolist(),
        "values": {k: v.reshape(-1).tolist() for k, v in params.items()},
        "bits": {k: v.numpy().tobytes().hex() for k, v in params.items()},
        "config": result.config,
    }


def main(out: str, guide: str, num_steps: int) -> None:
    dist.init_process_group("gloo")
    straight = fit(guide, num_steps)
    states = []
    fit(guide, num_steps // 2, checkpoint=states.append, checkpoint_every=num_steps)
    resumed = fit(guide, num_steps, initial_state=states[-1])
    rank = dist.get_rank()
    doc = {"straight": record(straight), "resumed": record(resumed), "rank": rank}
    Path(out, f"rank-{rank}.json").write_text(json.dumps(doc))
    distributed.leave()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
