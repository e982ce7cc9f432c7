"""Benchmark: one training step with the mixture prior, through Pyro and without it.

On LeNet-300-100 (Fashion-MNIST, 266,200 weights under the prior) and the
digits MLP 64-100-10 (7,400 weights), batch 128, M = 16 components (zero
component, learned π₀, proper hyperpriors, as ``bayes-sws demo``), every
variant runs the same loop body as :func:`bayes_sws.fit`: ``zero_grad``, loss,
``backward``, ``Adam.step`` (:func:`bayes_sws.optim.adam`, multi-tensor, as ``fit`` builds
it; one parameter group for the weights, one for the
hyperparameters), ``float(loss)``.

Variants (letters as in issue 6):

``pyro_map``    (a) ``Trace_ELBO().differentiable_loss`` with ``AutoDelta``:
                what ``fit(guide="map")`` runs today ("before").
``fast_map``    (a') :func:`bayes_sws.infer.fastmap.map_loss` with the same
                ``AutoDelta`` guide: the same loss and gradients ("after").
``pyro_normal`` (b) ``Trace_ELBO`` with ``AutoNormal``: what ``fit(guide="normal")``
                ran before :mod:`bayes_sws.infer.fastvi` ("before").
``fast_normal`` (b') :func:`bayes_sws.infer.fastvi.elbo_loss` with the same
                ``AutoNormal`` guide: the same draws, loss and gradients, what
                ``fit(guide="normal")`` runs now ("after").
``hand``        (c) a hand-written PyTorch loop: ``(N/B)·CE_sum − λ·
                mixture_log_prob(all weights) − log p(π, μ, σ)`` with the same
                kernel (one call on the concatenated weights; ``fast_map`` hands
                it the weight tensors as a list, which keeps no concatenated copy
                for backward), hyperparameters as plain unconstrained tensors (sigmoid,
                softmax, exp) and the hyperprior densities in closed form.
``plain``       (d) ``(N/B)·CE_sum`` only: training without a prior.
``fast_map_cat`` (a'c) ``fast_map`` with the weight tensors concatenated into one
                before the kernel, as the fast path did before the kernel took a
                list (its autograd node then keeps the copy until backward).
``hyper_map``   (a'') ``fast_map`` with λ = 0: the mixture's sites, their
                hyperpriors and their optimiser group, without the weight prior.
                It splits (a') − (d): (a') − (a'') is what the weight prior costs
                (kernel, concatenating the weights, merging its gradient with the
                network's), (a'') − (d) what the hyperparameters cost (their
                transforms, densities and autograd nodes, Adam's second group).
``hand_normal`` (e) a hand-written mean-field loop, the ELBO of (b) written out:
                every weight and (unconstrained) hyperparameter tensor drawn as
                ``loc + softplus(ρ)·ε``, the network run with the drawn weights
                (``F.linear`` per layer), the same kernel, the hyperprior densities
                in closed form, ``log q`` as ``−½Σε² − Σ log scale`` plus the log-
                Jacobians of sigmoid / additive-logistic / exp. The baseline of (b').
``pyro_lowrank`` (f) ``Trace_ELBO`` with Pyro's ``AutoLowRankMultivariateNormal`` of
                rank ``--rank`` (default Pyro's, √D rounded, for D latent dimensions):
                what ``fit(guide="lowrank")`` ran before its fast path ("before").
``fast_lowrank`` (f') :func:`bayes_sws.infer.fastvi.elbo_loss` with the registry's
                ``"lowrank"`` guide (:class:`~bayes_sws.infer.guides.LowRankGuide`, the
                same guide with its factor column-major): the same draws, loss and
                gradients, what ``fit`` runs now ("after").
``fast_lowrank_rows`` (f'') the same fast path on Pyro's row-major factor, as (f):
                what ``fit`` ran before the factor was stored column-major.

Timing: the variants are interleaved (one round runs ``--steps`` steps of each,
in an order that rotates every round), and each round's time per step is
divided by the same round's ``hand`` (or ``plain``) time, so every ratio is
paired and a busy neighbour slows both sides of it alike; the table shows
medians over rounds. ``--clock cpu`` reports this process's CPU time instead
of wall-clock time (use it with ``--threads 1`` on a shared machine). All
variants draw the same mini-batches (a fresh permutation per epoch); the cost
of ``fit``'s own per-step batch selection (``bayes_sws.infer.svi.batch_indices``)
is timed separately, as it is the same for every guide.

``--profile`` adds a cProfile of ``pyro_map`` and ``fast_map`` steps, grouped
by where the time goes (Pyro's tracing and messengers, distributions and their
validation, the kernel, the network and autograd, the optimiser) and the top
functions by own time.

``--kernel`` chooses the prior kernel's implementation for every variant
(``bayes_sws.core.kernel.set_kernel``): ``auto`` (default: the fused C loop on CPU
when it builds), ``native`` or ``torch`` (the chunked torch-ops pass, i.e. the
kernel before the native loop existed). The native library's first-call build
time is printed (0 when it came from the cache).

``--memory`` also measures each variant's peak memory over one step: the most
bytes of tensors allocated during the step that are alive at once
(:class:`TensorBytes`, every tensor op's new storages until freed), the
minimum over ``--memory-repeats`` steps, in bytes per weight under the prior, and
the extra over the plain step: issue 19's "extra memory stays ≤ 4 B per weight"
through a whole step, where ``prior_kernel.py`` measures the kernel alone (its
C loop's own scratch, outside torch's allocator, is not seen here).

Usage::

    python benchmarks/svi_step.py --threads 2            # both networks, 2 threads
    python benchmarks/svi_step.py --threads 1 --clock cpu --profile
    python benchmarks/svi_step.py --quick                # smoke test (random data)

Issue 19's goals in one run (LeNet-300-100, at initialisation and on clustered
weights, the kernel's pruning off and auto interleaved, ``fit`` itself timed too);
it prints each goal's ratio per pruning mode, met or not::

    python benchmarks/svi_step.py --networks lenet-300-100 --weights init clustered \\
        --pruning off auto --through-fit --memory \\
        --variants fast_map hyper_map hand plain fast_normal hand_normal --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import json
import math
import os
import platform
import pstats
import statistics
import sys
import time
import weakref
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

import pyro
import torch
import torch.nn.functional as F
from machine import cpu_model  # benchmarks/ is on sys.path: run as a script, or imported by name
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoLowRankMultivariateNormal, init_to_median, init_to_value
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import bayes_sws as sws
from bayes_sws.core import kernel as sws_kernel
from bayes_sws.core.kernel import mixture_log_prob
from bayes_sws.infer.guides import build_guide

try:
    from bayes_sws.infer.fastmap import map_loss
except ImportError:  # the "before" state of the repository
    map_loss = None
try:
    from bayes_sws.optim import adam_for
except ImportError:  # before fit's optimiser was multi-tensor: its two groups, single-tensor

    def adam_for(weights, hyper, *, lr, mixture_lr):
        groups = [{"params": weights, "lr": lr}]
        if hyper:
            groups.append({"params": hyper, "lr": mixture_lr})
        return torch.optim.Adam(groups)


try:
    from bayes_sws.infer.fastvi import elbo_loss
except ImportError:  # before the fast ELBO
    elbo_loss = None

VARIANTS = (
    "pyro_map",
    "fast_map",
    "fast_map_cat",
    "hyper_map",
    "pyro_normal",
    "fast_normal",
    "hand",
    "hand_normal",
    "plain",
    "pyro_lowrank",
    "fast_lowrank",
    "fast_lowrank_rows",
)
#: the lowrank variants on Pyro's ``AutoLowRankMultivariateNormal`` (factor row-major)
_ROW_MAJOR = ("pyro_lowrank", "fast_lowrank_rows")
#: variants that never call the prior kernel: one run, whatever the pruning mode
_NO_KERNEL = ("plain", "hyper_map")
_FAST = {
    "fast_map": map_loss,
    "fast_map_cat": map_loss,
    "hyper_map": map_loss,
    "fast_normal": elbo_loss,
    "fast_lowrank": elbo_loss,
    "fast_lowrank_rows": elbo_loss,
}  # None: not in this checkout
NETWORKS = ("lenet-300-100", "digits-mlp")
#: rank of the lowrank variants' guide (``--rank``; None: Pyro's default, √D rounded)
LOWRANK_RANK: int | None = None
_HYPER_PREFIXES = ("sws.", "likelihood.")  # as bayes_sws.infer groups parameters


# --------------------------------------------------------------------------- #
# Problems
# --------------------------------------------------------------------------- #


def load_problem(network: str, data: str, seed: int = 0):
    """Network, inputs and labels; Fashion-MNIST / digits, or random data of that shape."""
    torch.manual_seed(seed)
    if network == "lenet-300-100":
        from bayes_sws.zoo.nets import lenet_300_100

        net = lenet_300_100()
        name, shape, num_classes, num_data = "fashion-mnist", 784, 10, 60000
    else:
        from bayes_sws.zoo.nets import mlp

        net = mlp([64, 100, 10])
        name, shape, num_classes, num_data = "digits", 64, 10, 1437
    source = "random"
    if data != "random":
        from bayes_sws.zoo.data import DataError, load_dataset

        try:
            dataset = load_dataset(name, standardize="global" if name != "digits" else True)
            x, y = dataset.x_train.float(), dataset.y_train.long()
            source = name
        except DataError as err:
            print(f"# {name} unavailable ({err}); using random data", file=sys.stderr)
            data = "random"
    if data == "random":
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(num_data, shape, generator=g)
        y = torch.randint(0, num_classes, (num_data,), generator=g)
    return net, x, y, source


def make_model(net, prior_scale: float, num_components: int):
    """The model of every variant; a clustered network (:func:`cluster_weights`) keeps its mixture."""
    prior = sws.MixturePrior(num_components, zero_component=True, init_pi_zero=0.5)
    clustered = getattr(net, "clustered_mixture", None)
    if clustered is not None:
        prior.init_values = lambda weights: {k: v.clone() for k, v in clustered.items()}
    return sws.SWSModel(net, prior, likelihood="categorical", prior_scale=prior_scale)


WEIGHT_STATES = ("init", "clustered")


def cluster_weights(net0, num_components: int, seed: int = 0):
    """A copy of ``net0`` as after retraining: every weight matrix drawn from a tight mixture.

    The mixture is ``benchmarks/prior_kernel.py --weights clustered``'s: the non-zero
    means evenly spaced over [−0.4, 0.4] on both sides of zero, σ = spacing / 8, a
    zero component six times narrower holding 90 % of the mass. The copy carries it
    as ``clustered_mixture`` (the prior's site values), which :func:`make_model`
    starts every variant's mixture from instead of ``MixturePrior.init_values``.
    """
    free = num_components - 1
    half = (free + 1) // 2
    spacing = 0.4 / half
    steps = torch.cat([-torch.arange(half, 0, -1), torch.arange(1, half + 1)])[:free]
    mu = torch.cat([torch.zeros(1), steps * spacing])
    sigma = torch.full((num_components,), spacing / 8)
    sigma[0] = spacing / 48
    pi = torch.full((num_components,), 0.1 / free)
    pi[0] = 0.9
    net = copy.deepcopy(net0)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() >= 2:
                member = torch.multinomial(pi, p.numel(), replacement=True, generator=generator)
                noise = torch.randn(p.numel(), generator=generator)
                p.copy_((mu[member] + sigma[member] * noise).reshape(p.shape))
    net.clustered_mixture = {
        "sws.pi_zero": pi[0].clone(),
        "sws.mixing": torch.full((free,), 1.0 / free),
        "sws.means": mu[1:].clone(),
        "sws.precisions": sigma**-2,
    }
    return net


class Batches:
    """Mini-batch indices: a fresh permutation per epoch, the same for every variant."""

    def __init__(self, num_data: int, batch_size: int, seed: int = 0):
        self.num_data, self.batch_size = num_data, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.per_epoch = num_data // batch_size
        self.position = self.per_epoch

    def __next__(self):
        if self.position == self.per_epoch:
            self.perm = torch.randperm(self.num_data, generator=self.generator)
            self.position = 0
        start = self.position * self.batch_size
        self.position += 1
        return self.perm[start : start + self.batch_size]


def _adam(weights, hyper, lr, mixture_lr):
    """The optimiser ``fit`` builds (:func:`bayes_sws.optim.adam_for`): one group per kind."""
    return adam_for(weights, hyper, lr=lr, mixture_lr=mixture_lr)


def _split_guide_params(guide, model):
    named = list(guide.named_parameters())
    hyper = [p for n, p in named if any(s in n for s in _HYPER_PREFIXES)]
    weights = [p for n, p in named if not any(s in n for s in _HYPER_PREFIXES)]
    weights += [p for p in model.free_parameters().values() if p.requires_grad]
    return weights, hyper


def make_step(variant, net0, x, y, *, batch_size, prior_scale, num_components, lr, mixture_lr):
    """A ``step()`` closure doing one fit-style step of ``variant`` on its own network copy."""
    net = copy.deepcopy(net0)
    num_data = x.shape[0]
    batches = Batches(num_data, batch_size)

    if variant == "hyper_map":
        return _pyro_step("fast_map", net, x, y, batches, 0.0, num_components, lr, mixture_lr)
    if variant == "fast_map_cat":
        step = _pyro_step(
            "fast_map", net, x, y, batches, prior_scale, num_components, lr, mixture_lr
        )
        return None if step is None else _concatenating(step)
    if variant in (
        "pyro_map",
        "fast_map",
        "pyro_normal",
        "fast_normal",
        "pyro_lowrank",
        "fast_lowrank",
        "fast_lowrank_rows",
    ):
        return _pyro_step(variant, net, x, y, batches, prior_scale, num_components, lr, mixture_lr)
    if variant in ("hand", "hand_normal"):
        make = _hand_loss if variant == "hand" else _hand_normal_loss
        optim, loss_fn = make(
            net, x, y, num_data / batch_size, prior_scale, num_components, lr, mixture_lr
        )
    elif variant == "plain":
        optim = _adam(list(net.parameters()), [], lr, mixture_lr)
        scale = num_data / batch_size

        def loss_fn(index):
            return scale * F.cross_entropy(net(x[index]), y[index], reduction="sum")

    else:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    step = _step_fn(optim, batches, loss_fn)
    step.loss_fn = loss_fn
    return step


def _kernel_on_one_tensor(w, *args, **kwargs):
    """The prior kernel with a list of weight tensors concatenated into one first."""
    if isinstance(w, (list, tuple)):
        w = sws_kernel._flat(tuple(w))  # the kernel's own concatenation, kept to backward
    return mixture_log_prob(w, *args, **kwargs)


def _concatenating(step):
    """``step`` with ``fastmap`` handing the kernel one concatenated tensor (``fast_map_cat``):
    the fast path as it was before the kernel took a list, whose autograd node then kept
    the concatenated copy until backward."""
    from bayes_sws.infer import fastmap

    def concatenated():
        fastmap.mixture_log_prob = _kernel_on_one_tensor
        try:
            return step()
        finally:
            fastmap.mixture_log_prob = mixture_log_prob

    return concatenated


def _step_fn(optim, batches, loss_fn):
    """``step()``: the loop body of fit, one optimiser step on the next mini-batch."""

    def step():
        index = next(batches)

        def closure():
            optim.zero_grad()
            loss = loss_fn(index)
            loss.backward()
            return loss

        return float(optim.step(closure).detach())

    return step


def _pyro_step(variant, net, x, y, batches, prior_scale, num_components, lr, mixture_lr):
    """The Pyro variants' ``step()`` (``None`` for a fast variant without its fast path)."""
    model = make_model(net, prior_scale, num_components)
    init_loc_fn = init_to_value(values=model.init_values(), fallback=init_to_median)
    kind = "lowrank" if "lowrank" in variant else variant.rpartition("_")[2]
    if variant in _ROW_MAJOR:  # Pyro's own guide: its factor row-major
        guide = AutoLowRankMultivariateNormal(
            model, init_loc_fn=init_loc_fn, init_scale=1e-3, rank=LOWRANK_RANK
        )
    else:
        guide = build_guide(
            kind,
            model,
            init_loc_fn=init_loc_fn,
            init_scale=1e-3,
            hyper_sites=model.hyper_site_names,
            rank=LOWRANK_RANK if kind == "lowrank" else None,
        )
    elbo = Trace_ELBO(num_particles=1, vectorize_particles=False, max_plate_nesting=1)
    elbo.differentiable_loss(model, guide, x, y, next(batches))  # builds the guide's params
    optim = _adam(*_split_guide_params(guide, model), lr, mixture_lr)
    if variant in _FAST:
        fast_loss = _FAST[variant]
        if fast_loss is None:
            return None

        def loss_fn(index):
            return fast_loss(model, guide, x, y, index)

    else:

        def loss_fn(index):
            return elbo.differentiable_loss(model, guide, x, y, index)

    step = _step_fn(optim, batches, loss_fn)
    step.model, step.guide, step.loss_fn = model, guide, loss_fn
    return step


def _hand_loss(net, x, y, scale, prior_scale, num_components, lr, mixture_lr):
    """The hand-written MAP objective (no Pyro) and its optimiser: ``(optim, loss_fn)``."""
    model = make_model(net, prior_scale, num_components)  # for selection and init only
    prior = model.prior
    init = prior.init_values(model.parameters_with_prior().values())
    weights = list(model.parameters_with_prior().values())
    pi0 = init["sws.pi_zero"]
    pi0_logit = torch.log(pi0 / (1 - pi0)).requires_grad_()
    mixing_logits = torch.log(init["sws.mixing"]).requires_grad_()
    means = init["sws.means"].clone().requires_grad_()
    log_precisions = torch.log(init["sws.precisions"]).requires_grad_()
    log_hyperprior = _hyperprior_log_density(prior)
    optim = _adam(
        list(net.parameters()),
        [pi0_logit, mixing_logits, means, log_precisions],
        lr,
        mixture_lr,
    )
    zero = torch.zeros(1)

    def loss_fn(index):
        data = scale * F.cross_entropy(net(x[index]), y[index], reduction="sum")
        pi_zero = torch.sigmoid(pi0_logit)
        mixing = torch.softmax(mixing_logits, 0)
        pi = torch.cat([pi_zero[None], (1 - pi_zero) * mixing])
        mu = torch.cat([zero, means])
        sigma = torch.exp(-0.5 * log_precisions)
        log_prior = mixture_log_prob(torch.cat([w.reshape(-1) for w in weights]), pi, mu, sigma)
        precisions = torch.exp(log_precisions)
        log_hyper = log_hyperprior(pi_zero, mixing, means, log_precisions, precisions)
        return data - prior_scale * log_prior - log_hyper

    return optim, loss_fn


def _hyperprior_log_density(prior):
    """``log p(π₀, mixing, means, precisions)`` of the demo's prior in closed form."""
    a_pi0, b_pi0 = prior.pi_zero_prior
    alpha = prior.mixing_concentration
    k_free = prior.num_free
    log_norm_beta = math.lgamma(a_pi0) + math.lgamma(b_pi0) - math.lgamma(a_pi0 + b_pi0)
    log_norm_dirichlet = math.lgamma(k_free * alpha) - k_free * math.lgamma(alpha)
    conc, rate = prior.precision_concentration, prior.precision_rate
    log_norm_gamma = conc * math.log(rate) - math.lgamma(conc)
    log_norm_normal = -0.5 * math.log(2 * math.pi) - math.log(prior.mean_scale)

    def log_density(pi_zero, mixing, means, log_precisions, precisions):
        return (
            (a_pi0 - 1) * torch.log(pi_zero)
            + (b_pi0 - 1) * torch.log1p(-pi_zero)
            - log_norm_beta
            + (alpha - 1) * torch.log(mixing).sum()
            + log_norm_dirichlet
            + (log_norm_normal - 0.5 * ((means - prior.mean_loc) / prior.mean_scale) ** 2).sum()
            + (log_norm_gamma + (conc - 1) * log_precisions - rate * precisions).sum()
        )

    return log_density


def _hand_normal_loss(net, x, y, scale, prior_scale, num_components, lr, mixture_lr):
    """The hand-written mean-field ELBO (no Pyro) and its optimiser: ``(optim, loss_fn)``.

    Unconstrained hyperparameters: logit π₀, additive-logistic mixing (K − 1 free
    logits and a 0), means, log precisions; their log-Jacobians enter ``log q``.
    """
    model = make_model(net, prior_scale, num_components)  # for selection and init only
    prior = model.prior
    init = prior.init_values(model.parameters_with_prior().values())
    named = model.parameters_with_prior()
    pi0, mixing0 = init["sws.pi_zero"], init["sws.mixing"]
    locs = {n: w.detach().clone() for n, w in named.items()}
    locs["pi0"] = torch.log(pi0 / (1 - pi0))
    locs["mixing"] = torch.log(mixing0[:-1] / mixing0[-1])
    locs["means"] = init["sws.means"].clone()
    locs["log_prec"] = torch.log(init["sws.precisions"])
    rho0 = math.log(math.expm1(1e-3))  # softplus(ρ) = init_scale, as AutoNormal
    rhos = {n: torch.full_like(v, rho0).requires_grad_() for n, v in locs.items()}
    for v in locs.values():
        v.requires_grad_()
    stack = [  # the network's forward with drawn weights: F.linear for its Linear layers
        (m, f"{n}.weight" if isinstance(m, torch.nn.Linear) else None)
        for n, m in net.named_children()
    ]
    biases = [m.bias for m, weight in stack if weight is not None and m.bias is not None]
    hyper = ("pi0", "mixing", "means", "log_prec")
    optim = _adam(
        [locs[n] for n in named] + [rhos[n] for n in named] + biases,
        [locs[n] for n in hyper] + [rhos[n] for n in hyper],
        lr,
        mixture_lr,
    )
    log_hyperprior = _hyperprior_log_density(prior)
    size = sum(v.numel() for v in locs.values())
    zero = torch.zeros(1)

    def loss_fn(index):
        scales = {n: F.softplus(r) for n, r in rhos.items()}
        eps = {n: torch.randn_like(v) for n, v in locs.items()}
        u = {n: locs[n] + eps[n] * scales[n] for n in locs}
        h = x[index]
        for module, weight in stack:
            h = module(h) if weight is None else F.linear(h, u[weight], module.bias)
        data = scale * F.cross_entropy(h, y[index], reduction="sum")
        pi_zero = torch.sigmoid(u["pi0"])
        mixing = torch.softmax(torch.cat([u["mixing"], zero]), 0)
        pi = torch.cat([pi_zero[None], (1 - pi_zero) * mixing])
        precisions = torch.exp(u["log_prec"])
        mu = torch.cat([zero, u["means"]])
        sigma = torch.exp(-0.5 * u["log_prec"])
        log_prior = mixture_log_prob(torch.cat([u[n].reshape(-1) for n in named]), pi, mu, sigma)
        log_hyper = log_hyperprior(pi_zero, mixing, u["means"], u["log_prec"], precisions)
        log_jacobian = (
            F.logsigmoid(u["pi0"]) + F.logsigmoid(-u["pi0"]) + torch.log(mixing).sum()
        ) + u["log_prec"].sum()
        log_q = (
            -0.5 * sum((e * e).sum() for e in eps.values())
            - sum(s.log().sum() for s in scales.values())
            - size * 0.5 * math.log(2 * math.pi)
            - log_jacobian
        )
        return data - prior_scale * log_prior - log_hyper + log_q

    return optim, loss_fn


# --------------------------------------------------------------------------- #
# Timing and profiling
# --------------------------------------------------------------------------- #


def _clock(kind: str):
    return time.process_time if kind == "cpu" else time.perf_counter


def time_interleaved(steps: dict, *, rounds: int, steps_per_round: int, warmup: int, clock: str):
    """Seconds per step of every variant in every round (variants interleaved, order rotating)."""
    now = _clock(clock)
    names = list(steps)
    for name in names:
        if hasattr(steps[name], "run"):  # a fit: times its own loop
            steps[name].run(max(warmup, 2), clock)
        for _ in range(warmup if not hasattr(steps[name], "run") else 0):
            steps[name]()
    per_round = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            step = steps[name]
            if hasattr(step, "run"):
                per_round[name].append(step.run(steps_per_round, clock))
                continue
            start = now()
            for _ in range(steps_per_round):
                step()
            per_round[name].append((now() - start) / steps_per_round)
    return per_round


def timebatch_indices(num_data: int, batch_size: int, repeats: int = 200) -> float | None:
    """Seconds per call of ``fit``'s mini-batch selection (same for every guide)."""
    try:
        from bayes_sws.infer.svi import batch_indices
    except ImportError:
        return None
    times = []
    for step in range(repeats):
        start = time.perf_counter()
        batch_indices(num_data, batch_size, step, 0, torch.device("cpu"))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


_GROUPS = (
    ("kernel (bayes_sws/kernel.py)", ("bayes_sws/kernel.py",)),
    (
        "pyro: traces, messengers, ELBO, PyroModule",
        (
            "pyro/poutine",
            "pyro/infer",
            "pyro/nn",
            "pyro/primitives",
            "pyro/util",
            "pyro/ops",
            "pyro/settings",
            "pyro/params",
        ),
    ),
    (
        "distributions (construction, validation, log_prob)",
        ("pyro/distributions", "torch/distributions", "bayes_sws/distributions.py"),
    ),
    (
        "bayes_sws model/prior/likelihood/fastmap",
        (
            "bayes_sws/model.py",
            "bayes_sws/priors.py",
            "bayes_sws/likelihoods.py",
            "bayes_sws/fastmap.py",
        ),
    ),
    ("optimiser (torch/optim)", ("torch/optim",)),
    ("network forward (torch/nn, functional_call)", ("torch/nn", "torch/_functorch")),
    (
        "autograd backward (engine, hooks)",
        ("run_backward", "torch/autograd", "torch/_tensor.py", "torch/utils/hooks.py"),
    ),
    ("benchmark loop", ("benchmarks/svi_step.py",)),
)


def _group_of(func: tuple) -> str | None:
    """The component of a function; ``None`` for builtins, C functions and the stdlib.

    Those have no component of their own: their time goes to their callers.
    """
    filename, _, name = func
    where = f"{filename}:{name}".replace("\\", "/")
    if filename == "~" and "run_backward" not in name:
        return None
    if filename.startswith("<") or ("/lib/python3" in where and "site-packages" not in where):
        return None
    for label, keys in _GROUPS:
        if any(k in where for k in keys):
            return label
    return "other"


def _grouped(stats: pstats.Stats) -> dict[str, float]:
    """Own time per component, with torch ops, builtins and stdlib counted for their caller.

    cProfile books a torch op's time on the op itself; here it goes to the
    component of the Python function that called it, split over the call
    edges by their time, going up through callers without a component.
    """
    owners: dict[tuple, dict[str, float]] = {}

    def owner(func, depth=0) -> dict[str, float]:
        if func in owners:
            return owners[func]
        label = _group_of(func)
        if label is not None:
            return {label: 1.0}
        callers = stats.stats.get(func, (0, 0, 0, 0, {}))[4]
        edge_total = sum(edge[2] for edge in callers.values())
        if depth > 20 or not callers or edge_total <= 0:
            return {"other": 1.0}
        owners[func] = {}  # a cycle resolves to nothing rather than recursing
        shares: dict[str, float] = {}
        for caller, edge in callers.items():
            for label, fraction in owner(caller, depth + 1).items():
                shares[label] = shares.get(label, 0.0) + fraction * edge[2] / edge_total
        owners[func] = shares
        return shares

    groups: dict[str, float] = {}
    for func, (_, _, tottime, _, _) in stats.stats.items():
        for label, fraction in owner(func).items():
            groups[label] = groups.get(label, 0.0) + tottime * fraction
    return groups


def profile_steps(step, num_steps: int, top: int = 20, clock: str = "wall") -> tuple[str, dict]:
    """cProfile ``num_steps`` steps: own time grouped by component, and the top functions."""
    profiler = cProfile.Profile(_clock(clock))
    profiler.enable()
    for _ in range(num_steps):
        step()
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt
    groups = _grouped(stats)
    lines = [
        (
            f"  total {1e3 * total / num_steps:.3f} ms/step (under cProfile, {clock} clock, "
            f"{num_steps} steps); own time incl. the torch ops each component calls:"
        )
    ]
    for label, seconds in sorted(groups.items(), key=lambda kv: -kv[1]):
        lines.append(
            f"    {100 * seconds / total:5.1f} %  {1e3 * seconds / num_steps:7.3f} ms  {label}"
        )
    buffer = io.StringIO()
    pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(top)
    body = buffer.getvalue()
    body = body[body.find("   ncalls") :] if "   ncalls" in body else body
    lines.append("  top functions by own time:")
    lines.extend("    " + line for line in body.strip().splitlines())
    return "\n".join(lines), {k: v / num_steps for k, v in groups.items()}


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:8.3f}"


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _print_first_step_losses(steps, net0, x, y, settings) -> None:
    """Each Pyro variant's first loss next to its fast path's: same start, batch and draw."""
    pairs = (("pyro_map", "fast_map"), ("pyro_normal", "fast_normal"))
    for slow, fast in (*pairs, ("pyro_lowrank", "fast_lowrank")):
        names = {name.split("@")[0] for name in steps}
        if slow in names and fast in names:
            torch.manual_seed(1)  # the lowrank guide's cov_factor starts random
            a = make_step(slow, net0, x, y, **settings)
            torch.manual_seed(1)
            b = make_step(fast, net0, x, y, **settings)
            torch.manual_seed(0)
            la = a()
            torch.manual_seed(0)
            lb = b()
            print(
                f"# first-step loss: {slow} {la:.6f}, {fast} {lb:.6f} "
                f"(relative difference {abs(la - lb) / abs(la):.1e})"
            )


_RATIOS = (
    ("(a) pyro_map / (c) hand", "pyro_map", "hand"),
    ("(a') fast_map / (c) hand", "fast_map", "hand"),
    ("(b) pyro_normal / (c) hand", "pyro_normal", "hand"),
    ("(b') fast_normal / (c) hand", "fast_normal", "hand"),
    ("(b) pyro_normal / (e) hand_normal", "pyro_normal", "hand_normal"),
    ("(b') fast_normal / (e) hand_normal", "fast_normal", "hand_normal"),
    ("(b) pyro_normal / (b') fast_normal", "pyro_normal", "fast_normal"),
    ("(e) hand_normal / (c) hand", "hand_normal", "hand"),
    ("(c) hand / (d) plain", "hand", "plain"),
    ("(a) pyro_map / (d) plain", "pyro_map", "plain"),
    ("(a') fast_map / (d) plain", "fast_map", "plain"),
    ("(a) pyro_map / (a') fast_map", "pyro_map", "fast_map"),
    ("(a') fast_map / (a'c) fast_map_cat", "fast_map", "fast_map_cat"),
    ("(a'') hyper_map / (d) plain", "hyper_map", "plain"),
    ("(a') fast_map / (a'') hyper_map", "fast_map", "hyper_map"),
    ("fit_map / (d) plain", "fit_map", "plain"),
    ("fit_map / (a') fast_map", "fit_map", "fast_map"),
    ("fit_normal / (e) hand_normal", "fit_normal", "hand_normal"),
    ("(f) pyro_lowrank / (f') fast_lowrank", "pyro_lowrank", "fast_lowrank"),
    ("(f'') fast_lowrank_rows / (f') fast_lowrank", "fast_lowrank_rows", "fast_lowrank"),
    ("(f') fast_lowrank / (b') fast_normal", "fast_lowrank", "fast_normal"),
    ("(f') fast_lowrank / (e) hand_normal", "fast_lowrank", "hand_normal"),
)
FIT_GUIDES = {"fit_map": "map", "fit_normal": "normal"}  # --through-fit
#: The issue's goals: (label, numerator, denominator, goal); "@" marks a pruning mode.
GOALS = (
    ("with prior / without: (a') fast_map / (d) plain", "fast_map@", "plain", 1.3),
    ("with prior / without, through fit: fit_map / (d) plain", "fit_map@", "plain", 1.3),
    ("MAP / hand: (a') fast_map / (c) hand", "fast_map@", "hand@", 1.05),
    (
        "normal / hand mean-field: (b') fast_normal / (e) hand_normal",
        "fast_normal@",
        "hand_normal@",
        1.2,
    ),
    ("through fit: fit_normal / (e) hand_normal", "fit_normal@", "hand_normal@", 1.2),
)


def make_fit_run(guide, net0, x, y, *, batch_size, prior_scale, num_components, lr, mixture_lr):
    """``run(n, clock)``: CPU/wall seconds of ``n`` steps of one ``bayes_sws.fit`` call.

    Each call fits a fresh copy of the model from ``net0`` for ``n + 1`` steps; the
    time runs from the first step's callback to the last one's, so the guide's
    set-up (and first step) is left out and what remains is ``fit``'s own loop.
    """

    def run(n: int, clock: str) -> float:
        now = _clock(clock)
        model = make_model(copy.deepcopy(net0), prior_scale, num_components)
        marks: list[float] = []
        sws.fit(
            model, x, y, guide=guide, num_steps=n + 1, lr=lr, mixture_lr=mixture_lr,
            batch_size=batch_size, progress=False, callback=lambda step, loss: marks.append(now()),
        )  # fmt: skip
        return (marks[-1] - marks[0]) / (len(marks) - 1)

    return run


def _with_pruning(step, mode: str):
    """``step`` run under ``set_pruning(mode)`` (so variants of both modes can interleave)."""

    def pruned():
        sws_kernel.set_pruning(mode)
        return step()

    if hasattr(step, "run"):
        pruned.run = lambda n, clock: (sws_kernel.set_pruning(mode), step.run(n, clock))[1]
    return pruned


def _build_steps(variants, modes, net, x, y, settings) -> dict:
    """Every variant's step, one per pruning mode for the variants that call the kernel."""
    steps = {}
    for v in variants:
        for mode in modes if v not in _NO_KERNEL else ("",):
            name = f"{v}@{mode}" if mode else v
            if v in FIT_GUIDES:
                step = lambda: None  # noqa: E731  (timed through .run only)
                step.run = make_fit_run(FIT_GUIDES[v], net, x, y, **settings)
            else:
                step = make_step(v, net, x, y, **settings)
            steps[name] = _with_pruning(step, mode) if mode else step
    return steps


def _goal_ratios(paired, modes) -> dict:
    """Each goal's paired ratio per pruning mode: ``{label: {mode: (ratio, goal)}}``."""
    out: dict = {}
    for label, num, den, goal in GOALS:
        for mode in modes:
            value = paired(num.replace("@", f"@{mode}"), den.replace("@", f"@{mode}"))
            if value is not None:
                out.setdefault(label, {})[mode] = (value, goal)
    return out


def run_network(network: str, args) -> list[dict]:
    """The timings of ``network``, one result per weight state (``--weights``)."""
    net0, x, y, source = load_problem(network, args.data)
    if args.quick:
        x, y = x[:1024], y[:1024]
    results = []
    for state in args.weights:
        net = net0 if state == "init" else cluster_weights(net0, args.components)
        results.append(run_state(network, state, net, x, y, source, args))
    return results


def run_state(network: str, state: str, net0, x, y, source: str, args) -> dict:
    num_prior = sum(p.numel() for p in net0.parameters() if p.dim() >= 2)
    settings = {
        "batch_size": args.batch_size,
        "prior_scale": args.prior_scale,
        "num_components": args.components,
        "lr": 1e-3,
        "mixture_lr": 3e-3,
    }
    variants = [v for v in args.variants if not (v in _FAST and _FAST[v] is None)]
    if args.through_fit:
        variants += [v for v in FIT_GUIDES if v.replace("fit", "fast") in variants]
    modes = args.pruning if len(args.pruning) > 1 else ("",)
    if len(args.pruning) == 1:
        sws_kernel.set_pruning(args.pruning[0])
    steps = _build_steps(variants, modes, net0, x, y, settings)
    print(
        f"\n## {network}, {state} weights: {source} data, N = {x.shape[0]}, batch "
        f"{args.batch_size}, M = {args.components}, {num_prior:,} weights under the prior, "
        f"λ = {args.prior_scale}, pruning {'/'.join(args.pruning)}"
    )
    _print_first_step_losses(steps, net0, x, y, settings)
    load_before = _load()
    per_round = time_interleaved(
        steps, rounds=args.rounds, steps_per_round=args.steps, warmup=args.warmup, clock=args.clock
    )
    load_after = _load()
    result = _report(per_round, modes, args, load_before, load_after)
    result.update(network=network, weights=state, data=source, num_data=int(x.shape[0]))
    result["num_prior_weights"] = num_prior
    batch_cost = timebatch_indices(x.shape[0], args.batch_size)
    if batch_cost is not None:
        print(
            f"# fit's per-step batch selection (batch_indices): {_ms(batch_cost).strip()} ms/step "
            "(not in the times above, except fit_*)"
        )
    result["batch_indices_s"] = batch_cost
    if args.memory:
        stepped = {n: st for n, st in steps.items() if n.split("@")[0] not in FIT_GUIDES}
        peaks = step_peak_memory(stepped, num_prior, args.memory_repeats)
        result["peak_memory_b_per_weight"] = peaks
        result["extra_memory_b_per_weight"] = _report_memory(peaks, modes)
    if args.profile:
        result["profile"] = {}
        for v in args.profile_variants:
            for name in [n for n in steps if n.split("@")[0] == v]:
                text, groups = profile_steps(
                    steps[name], args.profile_steps, top=args.profile_top, clock=args.clock
                )
                print(f"\nprofile of {name} ({network}, {state}):\n{text}")
                result["profile"][name] = groups
    return result


#: the issue's memory goal: extra peak bytes per weight of (a') fast_map over (d) plain
MEMORY_GOAL = 4.0


class TensorBytes(TorchDispatchMode):
    """Inside ``with``: bytes of the tensors created since, alive at once (``peak``).

    Every tensor op's outputs whose storage is none of its inputs' is new; its bytes
    count until torch frees the storage (a finalizer on the storage's Python object,
    which torch keeps as long as the storage lives). Views and in-place results share
    a storage and add nothing. Memory allocated outside torch's operators is not seen.
    """

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage()._cdata
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if storage._cdata not in inputs:
                    inputs.add(storage._cdata)
                    self.live += storage.nbytes()
                    weakref.finalize(storage, self._free, storage.nbytes())
        self.peak = max(self.peak, self.live)
        return out


def step_peak_bytes(step) -> int:
    """:class:`TensorBytes`' peak over one call of ``step``."""
    with TensorBytes() as counter:
        step()
    return counter.peak


def step_peak_memory(steps: dict, num_prior: int, repeats: int) -> dict[str, float]:
    """Each step's peak memory (:func:`step_peak_bytes`), bytes per weight under the prior.

    Every step runs ``repeats`` times, interleaved with the others; the minimum is kept.
    """
    peaks: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            peaks[name].append(step_peak_bytes(step) / num_prior)
    return {name: min(values) for name, values in peaks.items()}


def _report_memory(peaks: dict, modes) -> dict:
    """Print each variant's peak memory and the goal; the extra over plain per variant."""
    plain = peaks.get("plain")
    print("peak memory over one step, bytes per weight under the prior (min over steps):")
    extra = {}
    for name, value in peaks.items():
        line = f"  {name:<17} {value:6.2f}"
        if plain is not None:
            extra[name] = value - plain
            line += f"  extra over plain {extra[name]:6.2f}"
        print(line)
    for mode in modes:
        name = f"fast_map@{mode}" if mode else "fast_map"
        if name in extra:
            met = "met" if extra[name] <= MEMORY_GOAL else "NOT met"
            print(
                f"  extra memory of the MAP step{f' [{mode}]' if mode else ''}: (a') fast_map − "
                f"(d) plain (goal ≤ {MEMORY_GOAL:g} B/weight): {extra[name]:.2f} {met}"
            )
    return extra


def _overhead_split(medians: dict, modes) -> dict:
    """Per pruning mode, the prior's extra seconds per step: (weight prior, hyperparameters)."""
    if "hyper_map" not in medians or "plain" not in medians:
        return {}
    hyper = medians["hyper_map"] - medians["plain"]
    split = {}
    for mode in modes:
        name = f"fast_map@{mode}" if mode else "fast_map"
        if name in medians:
            split[mode] = (medians[name] - medians["hyper_map"], hyper)
    return split


def _report(per_round, modes, args, load_before, load_after) -> dict:
    """Print the table, the paired ratios and the goals; the result's timing fields."""
    medians = {v: statistics.median(t) for v, t in per_round.items()}

    def paired(num, den):
        if num not in per_round or den not in per_round:
            return None
        return statistics.median(a / b for a, b in zip(per_round[num], per_round[den]))

    print(
        f"# load average before/after: {load_before} / {load_after}; "
        f"{args.rounds} rounds × {args.steps} steps, clock {args.clock}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'variant':<17} {'ms/step':>8} {'min':>8} {'max':>8}  {'/hand':>6} {'/plain':>6}")
    for v, t in per_round.items():
        mode = v.partition("@")[2]
        rh, rp = paired(v, f"hand@{mode}" if mode else "hand"), paired(v, "plain")
        print(
            f"{v:<17} {_ms(medians[v])} {_ms(min(t))} {_ms(max(t))}  "
            f"{'' if rh is None else f'{rh:6.3f}'} {'' if rp is None else f'{rp:6.3f}'}"
        )
    ratios = {}
    for mode in modes:
        at = f"@{mode}" if mode else ""
        for label, num, den in _RATIOS:
            value = paired(
                num + ("" if num in _NO_KERNEL else at), den + ("" if den in _NO_KERNEL else at)
            )
            if value is not None:
                ratios[label + (f" [{mode}]" if mode else "")] = value
    print("ratios (median of per-round ratios):")
    for label, value in ratios.items():
        print(f"  {label:<44} {value:6.3f}")
    goals = _goal_ratios(paired, modes)
    print("goals (median of per-round ratios; pruning modes side by side):")
    for label, by_mode in goals.items():
        cells = ", ".join(
            f"{m or sws_kernel.get_pruning()} {r:.3f} {'met' if r <= g else 'NOT met'}"
            for m, (r, g) in by_mode.items()
        )
        print(f"  {label} (goal ≤ {next(iter(by_mode.values()))[1]}): {cells}")
    split = _overhead_split(medians, modes)
    for mode, (weights, hyper) in split.items():
        print(
            f"  the prior's extra time per step{f' [{mode}]' if mode else ''}: weight prior "
            f"{1e3 * weights:.3f} ms (fast_map − hyper_map), hyperparameters "
            f"{1e3 * hyper:.3f} ms (hyper_map − plain)"
        )
    return {
        "overhead_split_s": split,
        "per_round": per_round,
        "median": medians,
        "ratios": ratios,
        "goals": {k: {m: r for m, (r, _) in v.items()} for k, v in goals.items()},
        "load": [load_before, load_after],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=[v for v in VARIANTS if "lowrank" not in v],
        choices=VARIANTS,
        help="default: all but the lowrank ones (seconds a step on LeNet-300-100)",
    )
    parser.add_argument(
        "--data",
        default="real",
        choices=("real", "random"),
        help="Fashion-MNIST / digits (default) or random data of that shape",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--clock", default="wall", choices=("wall", "cpu"))
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    parser.add_argument("--steps", type=int, default=20, help="steps per variant per round")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per variant first")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--components", type=int, default=16)
    parser.add_argument("--prior-scale", type=float, default=1.0, help="λ (default 1)")
    parser.add_argument("--profile", action="store_true", help="cProfile some variants (below)")
    parser.add_argument(
        "--profile-variants",
        nargs="+",
        default=["pyro_map", "fast_map"],
        choices=VARIANTS,
        help="variants to profile (default pyro_map fast_map)",
    )
    parser.add_argument("--profile-steps", type=int, default=100)
    parser.add_argument("--profile-top", type=int, default=20)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: random data, 1024 points, 2 rounds of 2 steps",
    )
    parser.add_argument(
        "--kernel",
        default=os.environ.get("BAYES_SWS_KERNEL", "auto"),
        choices=sws_kernel.KERNELS,
        help="prior kernel implementation (default: $BAYES_SWS_KERNEL or auto)",
    )
    parser.add_argument(
        "--weights",
        nargs="+",
        default=["init"],
        choices=WEIGHT_STATES,
        help="network and mixture at initialisation (default) and/or 'clustered' (as after "
        "retraining: weights drawn tightly around the M means, see cluster_weights)",
    )
    parser.add_argument(
        "--pruning",
        nargs="+",
        default=[sws_kernel.get_pruning()],
        choices=sws_kernel.PRUNING,
        help="native kernel pruning mode(s); with two or more, every variant that calls the "
        "kernel runs once per mode, interleaved (default: $BAYES_SWS_PRUNE or auto)",
    )
    parser.add_argument(
        "--through-fit",
        action="store_true",
        help="also time bayes_sws.fit itself (fit_map, and fit_normal with fast_normal): "
        "its loop from the first step's callback to the last, --steps steps per round",
    )
    parser.add_argument(
        "--rank",
        type=int,
        help="rank of the lowrank variants' guide (default: Pyro's, the square root of the "
        "number of latent dimensions rounded)",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="also measure each variant's peak memory over a step (bytes of tensors alive at "
        "once, per weight under the prior, and the extra over the plain step)",
    )
    parser.add_argument(
        "--memory-repeats", type=int, default=9, help="steps measured per variant (default 9)"
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    global LOWRANK_RANK
    LOWRANK_RANK = args.rank
    if args.quick or ("CI" in os.environ and argv is None):
        args.quick = True
        args.data, args.rounds, args.steps, args.warmup = "random", 2, 2, 1
        args.profile_steps, args.memory_repeats = 2, 2
    torch.set_num_threads(args.threads)
    pyro.settings.set(module_local_params=True)  # as bayes_sws.fit does
    sws_kernel.set_kernel(args.kernel)
    native = "not used"
    if args.kernel != "torch":
        from bayes_sws.core import _native

        start = time.perf_counter()
        if sws_kernel.native_available():
            native = (
                f"native loop loaded in {time.perf_counter() - start:.2f} s "
                f"(of which build {_native.last_build_seconds:.2f} s)"
            )
        else:
            native = "native loop unavailable (torch fallback)"
    print(
        f"# svi_step: {cpu_model()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, pyro {pyro.__version__}, Python {platform.python_version()}, "
        f"{args.threads} torch threads, clock {args.clock}, kernel {args.kernel} ({native}), "
        f"fast MAP {'present' if map_loss is not None else 'absent'}, "
        f"fast ELBO {'present' if elbo_loss is not None else 'absent'}, load average {_load()}"
    )
    results = [r for network in args.networks for r in run_network(network, args)]
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
