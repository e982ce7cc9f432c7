"""Run by ``test_lightning.py``: SWSLightningModule under ``strategy="ddp"`` on CPU processes.

``python ddp_worker.py OUT.json NUM_PROCESSES NUM_STEPS``: Lightning starts the
other processes by re-running this script; rank 0 writes the fitted mixture and
its per-step losses. Each process reads its batches with an unshuffled
``DistributedSampler``, so step ``s`` covers the points ``[s·kB, (s+1)·kB)`` over all
``k`` processes together.
"""

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

import bayes_sws as sws
from bayes_sws.integrations.lightning import SWSLightningModule

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: scenarios
from scenarios import process_group_problem

N, B = 48, 8


def problem():
    """The shared problem (``scenarios.process_group_problem``)."""
    return process_group_problem(N)


def main(out: str, num_processes: int, num_steps: int) -> None:
    x, y, net, prior = problem()
    model = sws.SWSModel(net, prior, prior_scale=0.7)
    module = SWSLightningModule(model, "map", lr=1e-2, mixture_lr=5e-3)
    dataset = torch.utils.data.TensorDataset(x, y)

    class Data(pl.LightningDataModule):
        def train_dataloader(self):
            sampler = torch.utils.data.DistributedSampler(
                dataset, self.trainer.world_size, self.trainer.global_rank, shuffle=False
            )
            return torch.utils.data.DataLoader(dataset, batch_size=B, sampler=sampler)

    trainer = pl.Trainer(
        accelerator="cpu",
        devices=num_processes,
        strategy="ddp",
        use_distributed_sampler=False,  # ours, unshuffled: rank r reads points r, r + k, ...
        max_steps=num_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=Data())
    if trainer.global_rank == 0:
        mixture = module.to_result().mixture()
        record = {name: value.tolist() for name, value in zip(("pi", "mu", "sigma"), mixture)}
        record["losses"] = module.losses
        record["world_size"] = trainer.world_size
        with open(out, "w") as f:
            json.dump(record, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
