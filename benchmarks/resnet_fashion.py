"""A residual network on Fashion-MNIST, trained and compressed through an augmented DataLoader.

1. holds out ``--validation`` (default 10 %) of the training set
   (:func:`bayes_sws.compress.tuning.validation_split`);
2. pretrains a CIFAR-style ResNet without batch normalisation
   (:func:`bayes_sws.zoo.nets.resnet`) by Adam on the rest, read through a
   ``DataLoader`` of :class:`bayes_sws.zoo.data.AugmentedImages` (random crops
   of the zero-padded image, horizontal flips);
3. retrains it under the soft weight-sharing prior on the same augmented loader
   (:func:`bayes_sws.compress.pipeline.soft_weight_sharing` with ``train_loader``): the
   ``"compression"`` preset with the LeNet-5 recipe's soft-to-hard precision anneal,
   one run per ``--prior-scales`` value;
4. quantises each with its learned mixture (codebook fine-tuning on the un-augmented
   training tensors only with ``--finetune-epochs``) and scores it on the
   validation set; the chosen λ is the highest compression rate within 0.5 points
   of the pretrained validation error (the smallest increase if none is);
5. reads the test set once: the pretrained and the chosen compressed network.

It prints the figures and writes them to ``--json`` (default
``benchmarks/results/resnet_fashion.json``): seconds per epoch of pretraining
and of retraining, validation and test error before and after, compression rate
and non-zero fraction.

Run from the repository root::

    python benchmarks/resnet_fashion.py --depth 8 --width 16 --pretrain-epochs 3 \\
        --retrain-epochs 3 --prior-scales 0.04

``--quick`` is a seconds-long smoke run on 512 training points (the tests run it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from machine import cpu_model  # benchmarks/ is on sys.path: run as a script, or imported by name
from torch.nn import functional as F
from torch.utils.data import DataLoader

from bayes_sws.compress.pipeline import (
    SHARING_PRECISION_PRIOR,
    SLAB_PRECISION_PRIOR,
    CompressionResult,
    soft_weight_sharing,
)
from bayes_sws.compress.tuning import validation_split
from bayes_sws.zoo.data import AugmentedImages, Dataset, load_dataset
from bayes_sws.zoo.nets import resnet
from bayes_sws.zoo.training import accuracy

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JSON = REPO / "benchmarks" / "results" / "resnet_fashion.json"
MARGIN = 0.5  # points of validation error a chosen λ may add (compression_validated.py's)
QUICK = {
    "depth": 8,
    "width": 4,
    "pretrain_epochs": 1,
    "retrain_epochs": 1,
    "batch_size": 64,
    "train_subset": 512,
    "prior_scales": [0.04],
}


def say(message: str) -> None:
    """A progress line on stderr, with the time."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def augmented_loader(data: Dataset, options: dict) -> DataLoader:
    """Shuffled mini-batches of augmented training images; the order from a seeded generator."""
    images = AugmentedImages(data.x_train, data.y_train, padding=options["padding"])
    order = torch.Generator().manual_seed(options["seed"])
    return DataLoader(
        images, batch_size=options["batch_size"], shuffle=True, drop_last=True, generator=order
    )


def pretrain(net: torch.nn.Module, loader: DataLoader, options: dict) -> list[float]:
    """Adam on cross-entropy over ``loader`` for the pretraining epochs; seconds per epoch."""
    torch.manual_seed(options["seed"])  # the augmentation draws from the global RNG
    optimizer = torch.optim.Adam(net.parameters(), lr=options["lr"])
    seconds = []
    for epoch in range(options["pretrain_epochs"]):
        start, total = time.perf_counter(), 0.0
        net.train()
        for x, y in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item()
        seconds.append(time.perf_counter() - start)
        say(f"pretrain epoch {epoch + 1}: mean loss {total / len(loader):.4f}, {seconds[-1]:.0f} s")
    net.eval()
    return seconds


def retraining_settings(prior_scale: float, options: dict) -> dict:
    """``soft_weight_sharing``'s settings: the ``"compression"`` preset with the LeNet-5 anneal,
    λ and this run's optimiser and epochs (of the loader)."""
    return {
        "prior_scale": prior_scale,
        "precision_prior": SLAB_PRECISION_PRIOR,
        "precision_prior_final": SHARING_PRECISION_PRIOR,
        "lr": options["lr"],
        "mixture_lr": options["mixture_lr"],
        "num_epochs": options["retrain_epochs"],
        "batch_size": options["batch_size"],  # codebook fine-tuning's; retraining reads the loader
        "finetune_epochs": options["finetune_epochs"],
        "seed": options["seed"],
    }


def retrain_and_compress(
    net: torch.nn.Module, loader: DataLoader, validation: Dataset, prior_scale: float, options: dict
) -> tuple[CompressionResult, float]:
    """Soft weight-sharing retrained on ``loader``, quantised, scored on validation.

    Returns the result and the retraining's seconds per epoch.
    """
    result = soft_weight_sharing(
        net,
        validation,
        train_loader=loader,
        progress=options["progress"],
        **retraining_settings(prior_scale, options),
    )
    assert result.fit is not None  # a retraining ran
    return result, result.fit.wall_time / options["retrain_epochs"]


def choose(trials: list[dict]) -> dict:
    """The highest rate within :data:`MARGIN` points of validation error, else the smallest loss."""
    within = [t for t in trials if t["validation_increase"] <= MARGIN]
    if within:
        return max(within, key=lambda t: t["compression_rate"])
    return min(trials, key=lambda t: t["validation_increase"])


def _trial(prior_scale: float, result: CompressionResult, seconds: float) -> dict:
    before = 1 - (result.test_accuracy_pretrained or 0.0)
    after = 1 - (result.test_accuracy_after or 0.0)
    return {
        "prior_scale": prior_scale,
        "validation_error_pretrained": before,
        "validation_error_retrained": 1 - (result.test_accuracy_before or 0.0),
        "validation_error_after": after,
        "validation_increase": 100 * (after - before),
        "compression_rate": result.compression_rate,
        "nonzero_fraction": result.nonzero_fraction,
        "num_components": result.num_components,
        "retrain_seconds_per_epoch": seconds,
    }


def load(options: dict) -> tuple[Dataset, Dataset]:
    """The validation split of Fashion-MNIST (images, pixels in [0, 1]); a subset with --quick."""
    data = load_dataset("fashion-mnist", standardize=False, flatten=False)
    subset = options["train_subset"]
    if subset:
        data = data.head(subset, subset // 2)
    return validation_split(data, options["validation"], seed=options["seed"])


def run(options: dict) -> dict:
    """The whole benchmark; its figures as a JSON-ready dict."""
    torch.set_num_threads(options["threads"])
    tuning, final = load(options)
    torch.manual_seed(options["seed"])
    net = resnet(options["depth"], options["width"], in_channels=1, num_classes=10)
    loader = augmented_loader(tuning, options)
    say(
        f"ResNet-{options['depth']} width {options['width']}: {len(tuning.x_train)} training, "
        f"{len(tuning.x_test)} validation points, {len(loader)} batches per epoch"
    )
    cache = options["pretrained"]
    if cache is not None and cache.is_file():
        net.load_state_dict(torch.load(cache, weights_only=True))
        say(f"pretrained network read from {cache} (its epoch times are not measured again)")
        pretrain_seconds = [float("nan")]
    else:
        pretrain_seconds = pretrain(net, loader, options)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(net.state_dict(), cache)
    trials = []
    for prior_scale in options["prior_scales"]:
        say(f"soft weight-sharing, λ = {prior_scale}")
        result, seconds = retrain_and_compress(net, loader, tuning, prior_scale, options)
        trials.append({**_trial(prior_scale, result, seconds), "result": result})
        say(f"λ = {prior_scale}: {json.dumps(_public(trials[-1]))}")
    chosen = choose(trials)
    stored = chosen["result"].stored_net
    return {
        "options": {k: v for k, v in options.items() if k != "json"},
        "num_parameters": sum(p.numel() for p in net.parameters()),
        "pretrain_seconds_per_epoch": sum(pretrain_seconds) / len(pretrain_seconds),
        "pretrain_seconds": pretrain_seconds,
        "trials": [_public(t) for t in trials],
        "chosen_prior_scale": chosen["prior_scale"],
        "chosen_within_margin": chosen["validation_increase"] <= MARGIN,
        "test_error_pretrained": 1 - accuracy(net, final.x_test, final.y_test),
        "test_error_after": 1 - accuracy(stored, final.x_test, final.y_test),
        "compression_rate": chosen["compression_rate"],
        "nonzero_fraction": chosen["nonzero_fraction"],
        "machine": machine(options["threads"]),
    }


def _public(trial: dict) -> dict:
    return {k: v for k, v in trial.items() if k != "result"}


def machine(threads: int) -> str:
    """CPU, torch threads and the load average when the run ended."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else ()
    shown = ", ".join(f"{v:.2f}" for v in load)
    return (
        f"{cpu_model()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__} with {threads} thread(s); load average {shown}"
    )


def parse(argv: list[str] | None) -> dict:
    """The options, ``--quick``'s small values filled in."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=8, help="6 n + 2: 8, 14, 20")
    parser.add_argument("--width", type=int, default=16, help="channels of the first stage")
    parser.add_argument("--padding", type=int, default=2, help="zero pixels around each crop")
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--retrain-epochs", type=float, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--mixture-lr", type=float, default=1e-2, help="raised for short runs")
    parser.add_argument("--prior-scales", type=float, nargs="+", default=[0.04], help="λ tried")
    parser.add_argument(
        "--finetune-epochs",
        type=int,
        default=0,
        help="codebook fine-tuning after quantisation (unaugmented data; 0: none, as for LeNet-5)",
    )
    parser.add_argument("--validation", type=float, default=0.1, help="held-out share")
    parser.add_argument("--train-subset", type=int, default=0, help="first N training points")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument(
        "--pretrained",
        type=Path,
        help="read the pretrained network's weights from this file if it exists, else save "
        "them there (same --depth, --width, --seed, data)",
    )
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False)
    options = vars(parser.parse_args(argv))
    if options["quick"]:
        options.update(QUICK)
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    figures = run(options)
    text = json.dumps(figures, indent=1, default=str)
    print(text)
    if options["json"]:
        options["json"].parent.mkdir(parents=True, exist_ok=True)
        options["json"].write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
