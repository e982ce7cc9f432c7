"""The main job on the bundled default data: soft weight-sharing of a digits MLP.

Pretrain an MLP on scikit-learn's 8×8 digits, retrain it under the learned
mixture prior (MAP by SVI with ``AutoDelta``), and report accuracy before and
after, the learned mixture and how the weights are shared among components.
``bayes-sws demo`` runs it from the shell.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..core import penalty
from ..core.model import SWSModel
from ..core.priors import Mixture, MixturePrior
from ..infer.svi import FitResult, fit
from ..validation import check_int, check_seed
from ..zoo.data import load_dataset
from ..zoo.nets import mlp
from ..zoo.training import accuracy, train

__all__ = ["DemoResult", "clustering_summary", "format_demo", "run_demo"]


@dataclass(frozen=True)
class DemoResult:
    """Outcome of :func:`run_demo`."""

    accuracy_pretrained: float
    accuracy_retrained: float
    mixture: Mixture
    component_share: np.ndarray
    within_two_sigma: float
    num_weights: int
    wall_time: float
    fit: FitResult


def clustering_summary(weights: torch.Tensor, mixture: Mixture) -> tuple[np.ndarray, float]:
    """Share of weights per component (argmax responsibility) and the fraction within 2σ of it."""
    w = weights.detach().reshape(-1).double()
    pi, mu, sigma = (t.detach().double() for t in mixture)
    owner = penalty.assign(w, pi, mu, sigma)
    share = torch.bincount(owner, minlength=len(pi)).double() / len(w)
    within = ((w - mu[owner]).abs() <= 2 * sigma[owner]).double().mean()
    return share.numpy(), float(within)


def run_demo(
    *,
    hidden: int = 100,
    num_components: int = 16,
    prior_scale: float = 0.1,
    pretrain_epochs: int = 60,
    num_steps: int = 2000,
    batch_size: int = 128,
    lr: float = 1e-3,
    mixture_lr: float = 3e-3,
    seed: int = 0,
    progress: bool | None = None,
    num_threads: int | None = 1,
) -> DemoResult:
    """Pretrain, retrain with the mixture prior, and summarise (see module docstring).

    ``num_threads=1`` (default) runs torch on one thread for the run and restores the
    setting after: for a network this small a second OpenMP thread only adds waiting
    (BENCHMARKS.md, "Demo wall time"). ``None`` keeps torch's setting.
    """
    seed = check_seed("seed", seed)
    num_threads = check_int("num_threads", num_threads, low=1, allow_none=True)
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _run_demo(
            hidden,
            num_components,
            prior_scale,
            pretrain_epochs,
            num_steps,
            batch_size,
            lr,
            mixture_lr,
            seed,
            progress,
        )
    finally:
        torch.set_num_threads(previous)


def _run_demo(
    hidden,
    num_components,
    prior_scale,
    pretrain_epochs,
    num_steps,
    batch_size,
    lr,
    mixture_lr,
    seed,
    progress,
) -> DemoResult:
    start = time.perf_counter()
    torch.manual_seed(seed)
    data = load_dataset("digits", seed=seed)
    net = mlp([data.num_features, hidden, data.num_classes])
    train(
        net,
        data.x_train,
        data.y_train,
        num_epochs=pretrain_epochs,
        lr=1e-3,
        batch_size=64,
        seed=seed,
        progress=progress,
    )
    acc_before = accuracy(net, data.x_test, data.y_test)

    prior = MixturePrior(num_components, zero_component=True, init_pi_zero=0.5)
    model = SWSModel(net, prior, likelihood="categorical", prior_scale=prior_scale)
    result = fit(
        model,
        data.x_train,
        data.y_train,
        guide="map",
        num_steps=num_steps,
        lr=lr,
        mixture_lr=mixture_lr,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
    )
    retrained = result.map_network()
    acc_after = accuracy(retrained, data.x_test, data.y_test)
    mixture = result.mixture()
    weights = torch.cat(
        [
            p.detach().reshape(-1)
            for n, p in retrained.named_parameters()
            if n in model.prior_param_names
        ]
    )
    share, within = clustering_summary(weights, mixture)
    return DemoResult(
        acc_before,
        acc_after,
        mixture,
        share,
        within,
        weights.numel(),
        time.perf_counter() - start,
        result,
    )


def format_demo(result: DemoResult) -> str:
    """A short human-readable report of :func:`run_demo`."""
    lines = [
        "soft weight-sharing on scikit-learn digits (MLP, MAP by SVI + AutoDelta)",
        f"  test accuracy pretrained : {100 * result.accuracy_pretrained:6.2f} %",
        f"  test accuracy retrained  : {100 * result.accuracy_retrained:6.2f} %",
        (
            f"  weights within 2σ of their component mean: {100 * result.within_two_sigma:.1f} % "
            f"of {result.num_weights}"
        ),
        "  learned mixture (component 0 is the fixed zero component):",
        "     j       pi         mu      sigma   share of weights",
    ]
    pi, mu, sigma = (t.detach().numpy() for t in result.mixture)
    for j in np.argsort(mu):
        lines.append(
            f"  {j:4d} {pi[j]:8.4f} {mu[j]:+10.4f} {sigma[j]:10.4f}   {100 * result.component_share[j]:6.2f} %"
        )
    lines.append(f"  wall time: {result.wall_time:.1f} s")
    return "\n".join(lines)
