r"""NUTS for small networks: the reference posterior the guides are compared with.

:func:`sample_nuts` runs Pyro's No-U-Turn sampler (Hoffman & Gelman 2014) on an
:class:`~bayes_sws.core.model.SWSModel` and returns an :class:`MCMCResult` whose draws
keep their chain dimension, ``(num_chains, num_samples, *site_shape)``, with
per-draw sampler statistics (divergences, tree depth, leapfrog steps, acceptance
probability, energy, log density) that :mod:`bayes_sws.diagnostics` turns into
ArviZ's ``sample_stats`` group.

Chains run one after another in this process, one ``pyro.infer.MCMC`` per chain
with its own seed (from ``numpy.random.SeedSequence(seed).spawn``). Pyro's own
multi-chain mode forks worker processes: it falls back to sequential chains
anyway when ``num_chains`` exceeds the CPU count minus one, its per-draw hooks
run in the workers (so the statistics above would be lost), and forked workers
fight over the few cores of a laptop or CI runner. Sequential chains are
reproducible from ``seed`` alone and cost the same CPU time.

Which quantities to diagnose
----------------------------
A network's weights are not identifiable: permuting hidden units, flipping the
signs around odd activations, or relabelling mixture components leaves the
likelihood unchanged, so chains that explore different copies of the same
posterior give large R-hat on raw weights while agreeing on everything that
matters. Diagnose identifiable quantities instead: predictions and the
pointwise log-likelihood (in :func:`bayes_sws.diagnostics.to_inference_data`),
and the mixture with ordered means (``MixturePrior(ordered_means=True)``, so
that :math:`\mu_1 < \dots < \mu_K` fixes the component labels).

Settings that converge
----------------------
On the 1-3-1 tanh regression net of ``tests/test_posterior.py`` (6 weights under a
3-component prior, 40 points on [-3, 3], noise sd 0.5) ``full_mass=True``,
``target_accept_prob=0.95``, ``max_tree_depth=8``, ``jit_compile=True`` and 500
warm-up + 750 draws per chain give R-hat ≤ 1.01 and bulk ESS > 2000 on the
predictive mean with 4 chains and no divergences, in about 6.5 minutes on one
core. With ``target_accept_prob=0.9`` one of four such runs had 26 divergences.
With noise sd 1 (data on [-4, 4]) the chains did not agree (R-hat 1.1–1.9 on the
predictive mean: 1-3-1 and 1-5-1 with a dense mass matrix in short runs, 2 chains
after 150–200 warm-up steps; 1-10-1 with a diagonal one after 400): the weights
are then less pinned by the data, the posterior less Gaussian, and the
hyperparameters see several clusterings of the weights. Check the fit as well as
R-hat: chains started at a poor local optimum (a 1-3-1 net on [-4, 4] settles in
a staircase missing the sine's turn-downs) can agree perfectly on the wrong mode.

Parameters that carry no prior (biases by default) are not latent: they stay at
the network's current values during sampling. Use
``MixturePrior(include_bias=True)`` to sample them too.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide import init_to_value
from torch import Tensor, nn

from .. import health
from .._progress import progress_enabled
from ..core.model import SWSModel
from ..core.priors import Mixture
from ..core.sites import MIXTURE_SITES, MU
from ..validation import check_bool, check_int, check_real, check_seed
from .svi import (
    FitResult,
    Predictive,
    as_data,
    network_output,
    predictive_of_draws,
    seeded,
)

__all__ = ["INITS", "SAMPLE_STATS", "MCMCResult", "sample_nuts"]

INITS = ("map", "prior")
#: Per-draw statistics recorded for every chain, shape ``(num_chains, num_samples)``.
SAMPLE_STATS = (
    "diverging",
    "tree_depth",
    "n_steps",
    "acceptance_rate",
    "energy",
    "lp",
    "step_size",
)


# ---------------------------------------------------------------------- result
@dataclass
class MCMCResult:
    """What :func:`sample_nuts` returns.

    Attributes
    ----------
    model : SWSModel
    samples : dict of str to Tensor
        Every latent site (constrained values) and the mixture ``sws.pi``,
        ``sws.mu``, ``sws.sigma``, each of shape ``(num_chains, num_samples, *shape)``.
    sample_stats : dict of str to numpy.ndarray
        Per-draw sampler statistics of shape ``(num_chains, num_samples)``:
        ``diverging`` (bool), ``tree_depth`` (number of trajectory doublings;
        ``n_steps`` ≤ 2**tree_depth − 1), ``n_steps`` (leapfrog steps),
        ``acceptance_rate`` (mean Metropolis acceptance probability over the
        trajectory), ``energy`` (the Hamiltonian after the momentum refresh at
        the start of the transition; what E-BFMI measures), ``lp`` (log joint
        density in unconstrained space, Jacobians included, as Stan's
        ``lp__``), ``step_size`` (the adapted step size).
    config : dict
        The settings of the run.
    wall_time : float
        Seconds spent sampling (warm-up included), all chains.
    """

    model: SWSModel
    samples: dict[str, Tensor]
    sample_stats: dict[str, np.ndarray]
    config: dict = field(default_factory=dict)
    wall_time: float = 0.0

    def __repr__(self) -> str:
        """Chains, draws, divergences and wall time; never the draws themselves."""
        diverging = self.sample_stats.get("diverging")
        divergences = "" if diverging is None else f", {int(np.sum(diverging))} divergent"
        return (
            f"MCMCResult(NUTS, {self.num_chains} chains x {self.num_samples} draws of "
            f"{len(self.samples)} sites{divergences}, wall time {self.wall_time:.3g} s)"
        )

    @property
    def num_chains(self) -> int:
        return int(next(iter(self.samples.values())).shape[0])

    @property
    def num_samples(self) -> int:
        return int(next(iter(self.samples.values())).shape[1])

    @property
    def num_divergences(self) -> int:
        return int(np.sum(self.sample_stats["diverging"]))

    def sample_posterior(self, num_samples: int | None = None) -> dict[str, Tensor]:
        """Draws with the chains pooled: each site with a leading ``num_chains·num_samples`` dim.

        With ``num_samples``, that many draws evenly spaced over the pooled draws
        (thinning, not resampling).
        """
        flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in self.samples.items()}
        total = self.num_chains * self.num_samples
        if num_samples is None or num_samples >= total:
            return flat
        num_samples = check_int("num_samples", num_samples, low=1)
        index = torch.linspace(0, total - 1, num_samples).round().long()
        return {k: v[index] for k, v in flat.items()}

    def median(self) -> dict[str, Tensor]:
        """Element-wise posterior median of every latent site over all chains and draws."""
        latent = [*self.model.weight_site_names, *self.model.hyper_site_names]
        flat = self.sample_posterior()
        return {k: flat[k].median(dim=0).values for k in latent if k in flat}

    def mixture(self) -> Mixture:
        """Posterior mean of the mixture ``(pi, mu, sigma)``, each of shape ``(M,)``.

        Means rather than medians so that ``pi`` stays on the simplex. Label
        switching between chains blurs the means unless the prior orders them
        (``MixturePrior(ordered_means=True)``).
        """
        flat = self.sample_posterior()
        return Mixture(*(flat[name].mean(dim=0) for name in MIXTURE_SITES))

    def mean_network(self) -> nn.Module:
        """A copy of the network with the element-wise posterior median weights.

        A summary for plots only: because of hidden-unit and sign symmetries
        the median of weights need not be a good network.
        """
        return self.model.network_with(self.median())

    def predict(self, x: Any, num_samples: int | None = None) -> Tensor:
        """Posterior predictive mean: the likelihood's mean averaged over the draws.

        Class probabilities for classification, the regression mean otherwise;
        ``num_samples`` thins the pooled draws (default: all of them).
        """
        like = self.model.like_tensor()
        x = torch.as_tensor(x).to(device=like.device, dtype=like.dtype)
        draws = self.sample_posterior(num_samples)
        num = next(iter(draws.values())).shape[0]
        total = None
        with torch.no_grad():
            for s in range(num):
                values = {k: v[s] for k, v in draws.items()}
                output = network_output(self.model, values, x)
                mean = self.model.likelihood.mean(output, values)
                total = mean if total is None else total + mean
        assert total is not None  # num >= 1 (sample_posterior checks it)
        return total / num

    def predictive(
        self,
        x: Any,
        num_samples: int | None = None,
        noise: bool = True,
        seed: int | None = None,
    ) -> Predictive:
        """Posterior predictive draws at ``x`` with their summaries (:class:`~bayes_sws.infer.svi.Predictive`).

        One observation from the likelihood per posterior draw (chains pooled;
        ``num_samples`` thins them as :meth:`sample_posterior` does, default all);
        ``noise=False``: the likelihood's mean per draw. ``seed`` makes the noise
        repeat and leaves the global RNGs as they were; ``None`` draws from them.
        """
        noise = check_bool("noise", noise)
        draws = self.sample_posterior(num_samples)
        with seeded(seed):
            return predictive_of_draws(
                self.model, draws, x, num_samples=next(iter(draws.values())).shape[0], noise=noise
            )


# ---------------------------------------------------------------------- recording kernel
class _RecordingNUTS(NUTS):
    """Pyro's NUTS, recording per-transition statistics Pyro keeps in local variables.

    ``NUTS.sample`` grows the trajectory by calling ``_build_tree`` once per
    doubling; the top-level calls (recursion depth 0) see the energy at the
    start of the transition and return each subtree's acceptance sums and
    divergence flag. Leapfrog steps are counted in ``_build_basetree``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.records: list[dict[str, float]] = []
        self._recursion = 0
        self._current: dict[str, float] = {}

    def _build_basetree(self, *args, **kwargs):
        self._current["n_steps"] += 1
        return super()._build_basetree(*args, **kwargs)

    def _build_tree(self, z, r, z_grads, log_slice, direction, tree_depth, energy_current):
        top = self._recursion == 0
        self._recursion += 1
        try:
            tree = super()._build_tree(
                z, r, z_grads, log_slice, direction, tree_depth, energy_current
            )
        finally:
            self._recursion -= 1
        if top:
            rec = self._current
            rec["energy"] = float(energy_current)
            rec["tree_depth"] = tree_depth + 1
            rec["sum_accept"] += float(tree.sum_accept_probs)
            rec["num_proposals"] += int(tree.num_proposals)
            rec["diverging"] = rec["diverging"] or bool(tree.diverging)
        return tree

    def sample(self, params):
        self._current = {
            "n_steps": 0,
            "energy": math.nan,
            "tree_depth": 0,
            "sum_accept": 0.0,
            "num_proposals": 0,
            "diverging": False,
        }
        self._recursion = 0
        z = super().sample(params)
        if self._t > self._warmup_steps:  # keep post-warm-up transitions only
            rec = self._current
            _, potential_energy, _ = self._fetch_from_cache()
            self.records.append(
                {
                    "diverging": rec["diverging"],
                    "tree_depth": rec["tree_depth"],
                    "n_steps": rec["n_steps"],
                    "acceptance_rate": (
                        rec["sum_accept"] / rec["num_proposals"]
                        if rec["num_proposals"]
                        else math.nan
                    ),
                    "energy": rec["energy"],
                    "lp": -float(potential_energy) if potential_energy is not None else math.nan,
                    "step_size": float(self.step_size),
                }
            )
        return z


# ---------------------------------------------------------------------- helpers
def _call_with_parameters(net: nn.Module, weights: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """``net(x)`` with some parameters replaced by tensors, usable under ``torch.jit.trace``.

    ``torch.func.functional_call`` refuses to run while tracing, so the
    parameters are swapped in by hand and always restored.
    """
    saved = []
    try:
        for name, value in weights.items():
            owner, _, leaf = name.rpartition(".")
            module = net.get_submodule(owner)
            saved.append((module, leaf, module._parameters.pop(leaf)))
            setattr(module, leaf, value)
        return net(x)
    finally:
        for module, leaf, param in reversed(saved):
            if leaf in module.__dict__:
                delattr(module, leaf)
            module._parameters[leaf] = param


def _traceable(model: SWSModel) -> SWSModel:
    """A shallow copy of ``model`` whose forward pass also works under JIT tracing."""
    clone = copy.copy(model)
    base_forward = model.forward

    def forward(weights, x):
        if torch.jit.is_tracing():
            return _call_with_parameters(model.net, weights, x)
        return base_forward(weights, x)

    clone.forward = forward  # type: ignore[method-assign]  # this instance's forward only
    return clone


def _check_nuts_options(
    num_samples, warmup_steps, num_chains, max_tree_depth, target_accept_prob, seed
) -> tuple[int, int, int, int, float, int]:
    """:func:`sample_nuts`'s numeric options, checked one after the other in this order."""
    num_samples = check_int("num_samples", num_samples, low=1)
    warmup_steps = check_int("warmup_steps", warmup_steps, low=0)
    num_chains = check_int("num_chains", num_chains, low=1)
    max_tree_depth = check_int("max_tree_depth", max_tree_depth, low=1)
    target_accept_prob = check_real(
        "target_accept_prob",
        target_accept_prob,
        low=0,
        high=1,
        low_open=True,
        high_open=True,
        hint="0.8 is the default, 0.9-0.99 for posteriors with divergences",
    )
    seed = check_seed("seed", seed)
    return num_samples, warmup_steps, num_chains, max_tree_depth, target_accept_prob, seed


def _run_chain(
    sampled_model,
    values: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    *,
    num_samples: int,
    warmup_steps: int,
    max_tree_depth: int,
    target_accept_prob: float,
    full_mass: bool,
    jit_compile: bool,
    progress: bool | None,
) -> tuple[dict[str, Tensor], list[dict[str, float]]]:
    """One NUTS chain from ``values``: its draws of every site and the per-draw records."""
    kernel = _RecordingNUTS(
        sampled_model,
        init_strategy=init_to_value(values=values),
        max_tree_depth=max_tree_depth,
        target_accept_prob=target_accept_prob,
        full_mass=full_mass,
        jit_compile=jit_compile,
        ignore_jit_warnings=True,
        max_plate_nesting=1,
    )
    mcmc = MCMC(
        kernel,
        num_samples=num_samples,
        warmup_steps=warmup_steps,
        num_chains=1,
        disable_progbar=not progress_enabled(progress),
    )
    with warnings.catch_warnings():
        # torch 2.x deprecates torch.jit.trace, which Pyro's jit_compile uses
        warnings.filterwarnings(
            "ignore", message=r".*torch\.jit\.trace", category=DeprecationWarning
        )
        mcmc.run(x, y)
    return {k: v.detach() for k, v in mcmc.get_samples().items()}, kernel.records


def _chain_seeds(seed: int, num_chains: int) -> list[int]:
    """One seed per chain, from independent streams of ``numpy.random.SeedSequence(seed)``."""
    return [
        int(s.generate_state(1)[0]) for s in np.random.SeedSequence(int(seed)).spawn(num_chains)
    ]


def _run_chains(
    model: SWSModel,
    seeds: Sequence[int],
    inits: Sequence[dict[str, Tensor]],
    x: Tensor,
    y: Tensor,
    *,
    jit_compile: bool,
    **chain_options: Any,
) -> tuple[list[dict[str, Tensor]], list[list[dict[str, float]]], float]:
    """Every chain in turn, each with its own seed: :func:`_run_chain`'s draws and records,
    and the seconds they took.

    The network's parameters do not require grad while the chains run, and get
    their flags back afterwards.
    """
    sampled_model = _traceable(model) if jit_compile else model
    chains: list[dict[str, Tensor]] = []
    stats: list[list[dict[str, float]]] = []
    # parameters without prior are constants here; no gradients for them (and JIT
    # tracing refuses to bake in tensors that require grad)
    requires_grad = {name: p.requires_grad for name, p in model.net.named_parameters()}
    start = time.perf_counter()
    try:
        model.net.requires_grad_(False)
        for chain_seed, values in zip(seeds, inits):
            pyro.set_rng_seed(chain_seed)
            chain, records = _run_chain(
                sampled_model, values, x, y, jit_compile=jit_compile, **chain_options
            )
            chains.append(chain)
            stats.append(records)
    finally:
        for name, p in model.net.named_parameters():
            p.requires_grad_(requires_grad[name])
    return chains, stats, time.perf_counter() - start


def _identifiable(samples: Mapping[str, Tensor], stats: Mapping[str, np.ndarray]) -> dict:
    """Quantities whose R-hat means something: the energy and the sorted mixture means."""
    quantities: dict[str, np.ndarray] = {"energy": np.asarray(stats["energy"])}
    means = samples[MU].detach().double().sort(dim=-1).values.numpy()
    for j in range(means.shape[-1]):
        if np.ptp(means[..., j]) > 0:  # a fixed mean (the zero component) has no R-hat
            quantities[f"sorted mu[{j}]"] = means[..., j]
    return quantities


def _stack_records(stats: Sequence[Sequence[Mapping[str, float]]]) -> dict[str, np.ndarray]:
    """Per-chain lists of per-draw records as arrays ``(num_chains, num_samples)``, one per statistic."""
    return {
        key: np.array(
            [[rec[key] for rec in chain] for chain in stats],
            dtype=bool if key == "diverging" else None,
        )
        for key in SAMPLE_STATS
    }


def _with_mixture_sites(
    model: SWSModel, chains: list[dict[str, Tensor]], num_chains: int, num_samples: int
) -> dict[str, Tensor]:
    """The chains' draws stacked (chain, draw, ...), with the mixture's ``π, μ, σ`` per draw."""
    samples = {name: torch.stack([c[name] for c in chains]) for name in chains[0]}
    like = model.like_tensor()
    hyper = {
        name: samples[name].reshape((-1,) + samples[name].shape[2:])
        for name in model.prior.site_names
    }
    with torch.no_grad():
        mixture = model.prior.mixture(hyper, like)
    for name, value in zip(MIXTURE_SITES, mixture):
        value = (
            value.expand((num_chains * num_samples,) + value.shape[-1:])
            if value.dim() == 1
            else value
        )
        samples[name] = value.reshape(num_chains, num_samples, -1)
    return samples


def _latent_sites(model: SWSModel) -> tuple[str, ...]:
    return (*model.hyper_site_names, *model.weight_site_names)


def _hyperprior_draw(model: SWSModel, x: Tensor, seed: int) -> dict[str, Tensor]:
    """The hyperparameter sites of one forward run of the model with ``seed`` (a prior draw)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.no_grad():
            trace = poutine.trace(model).get_trace(x[:1])
    return {
        name: cast(Tensor, trace.nodes[name]["value"]).detach() for name in model.hyper_site_names
    }


def _check_init_values(model: SWSModel, values: Mapping[str, Any], what: str) -> dict[str, Tensor]:
    latent = _latent_sites(model)
    unknown = sorted(set(values) - set(latent))
    if unknown:
        raise ValueError(
            f"{what} has values for {unknown}, which are not latent sites of the model; "
            f"its latent sites are {list(latent)}"
        )
    base = model.init_values()
    out = dict(base)
    for name, value in values.items():
        value = torch.as_tensor(value).to(dtype=base[name].dtype, device=base[name].device)
        if value.shape != base[name].shape:
            raise ValueError(
                f"{what}[{name!r}] has shape {tuple(value.shape)}; the site has shape "
                f"{tuple(base[name].shape)}"
            )
        out[name] = value
    return out


def _chain_inits(
    model: SWSModel, init: Any, x: Tensor, seeds: Sequence[int]
) -> list[dict[str, Tensor]]:
    num_chains = len(seeds)
    if isinstance(init, str):
        if init not in INITS:
            raise ValueError(
                f"unknown init {init!r}; use one of {list(INITS)}, a FitResult, a dict of site "
                "values or a list of such dicts (one per chain)"
            )
        base = model.init_values()
        if init == "map":
            return [dict(base) for _ in range(num_chains)]
        return [{**base, **_hyperprior_draw(model, x, s)} for s in seeds]
    if isinstance(init, FitResult):
        if init.model is not model:
            raise ValueError(
                "init is a FitResult of another model; pass the FitResult of this model"
            )
        median = init.median()
        values = {k: v for k, v in median.items() if k in _latent_sites(model)}
        return [_check_init_values(model, values, "init") for _ in range(num_chains)]
    if isinstance(init, Mapping):
        return [_check_init_values(model, init, "init") for _ in range(num_chains)]
    if isinstance(init, Sequence) and all(isinstance(v, Mapping) for v in init):
        if len(init) != num_chains:
            raise ValueError(f"init holds {len(init)} dicts of values for {num_chains} chains")
        return [_check_init_values(model, v, f"init[{c}]") for c, v in enumerate(init)]
    raise TypeError(
        f"init must be one of {list(INITS)}, a FitResult, a dict of site values or a list of "
        f"dicts (one per chain), got {type(init).__name__}"
    )


# ---------------------------------------------------------------------- sample_nuts
def sample_nuts(
    model: SWSModel,
    x: Any,
    y: Any,
    *,
    num_samples: int = 500,
    warmup_steps: int = 500,
    num_chains: int = 4,
    max_tree_depth: int = 10,
    target_accept_prob: float = 0.8,
    full_mass: bool = False,
    jit_compile: bool = False,
    seed: int = 0,
    init: str | FitResult | Mapping[str, Any] | Sequence[Mapping[str, Any]] = "map",
    progress: bool | None = None,
) -> MCMCResult:
    r"""Sample the posterior of ``model`` given ``(x, y)`` with NUTS.

    Parameters
    ----------
    model : SWSModel
        Small networks only: every selected weight is one dimension of the sampler.
    x, y : tensor or array
        Inputs and targets, full batch.
    num_samples, warmup_steps : int
        Kept draws and warm-up (step-size and diagonal mass-matrix adaptation)
        iterations per chain.
    num_chains : int
        Chains, run one after another (see the module notes).
    max_tree_depth : int
        At most ``2**max_tree_depth - 1`` leapfrog steps per transition.
    target_accept_prob : float
        Target of the step-size adaptation, in (0, 1); raise it (0.9–0.99)
        when there are divergences.
    full_mass : bool
        Adapt a dense mass matrix during warm-up instead of a diagonal one:
        worth it when weights are strongly correlated and there are at most a
        few hundred latent dimensions.
    jit_compile : bool
        Compile the potential energy with ``torch.jit.trace`` (about 3× faster
        per gradient for small models; each chain pays a compile once).
    seed : int
        Seeds every chain (independent streams from ``SeedSequence(seed)``).
    init : {"map", "prior"}, FitResult, dict or list of dicts
        Starting point of every chain:

        - ``"map"``: :meth:`SWSModel.init_values`, i.e. the network's current
          weights (train it or take ``fit(...).map_network()`` first) and the
          prior's initial mixture, the same for all chains;
        - ``"prior"``: weights as for ``"map"``, hyperparameters drawn from
          their hyperpriors independently per chain (overdispersed mixtures,
          which is what R-hat on the mixture assumes);
        - a :class:`~bayes_sws.infer.FitResult` of this model: its posterior
          median (the MAP of ``guide="map"``), hyperparameters included;
        - a dict ``site -> value``: those values, the rest as ``"map"``;
          a list of such dicts gives one per chain.
    progress : bool, optional
        Pyro's progress bar; default on a terminal only.

    Returns
    -------
    MCMCResult
    """
    if not isinstance(model, SWSModel):
        raise TypeError(f"model must be a bayes_sws.SWSModel, got {type(model).__name__}")
    num_samples, warmup_steps, num_chains, max_tree_depth, target_accept_prob, seed = (
        _check_nuts_options(
            num_samples, warmup_steps, num_chains, max_tree_depth, target_accept_prob, seed
        )
    )
    x, y = as_data(x, y, model)
    seeds = _chain_seeds(seed, num_chains)
    inits = _chain_inits(model, init, x, seeds)
    chains, stats, wall_time = _run_chains(
        model,
        seeds,
        inits,
        x,
        y,
        num_samples=num_samples,
        warmup_steps=warmup_steps,
        max_tree_depth=max_tree_depth,
        target_accept_prob=float(target_accept_prob),
        full_mass=bool(full_mass),
        jit_compile=bool(jit_compile),
        progress=progress,
    )
    samples = _with_mixture_sites(model, chains, num_chains, num_samples)
    sample_stats = _stack_records(stats)
    config = {
        "sampler": "NUTS",
        "num_samples": num_samples,
        "warmup_steps": warmup_steps,
        "num_chains": num_chains,
        "max_tree_depth": max_tree_depth,
        "target_accept_prob": float(target_accept_prob),
        "full_mass": bool(full_mass),
        "jit_compile": bool(jit_compile),
        "seed": int(seed),
        "chain_seeds": seeds,
        "init": init if isinstance(init, str) else type(init).__name__,
        "num_data": int(x.shape[0]),
        "prior_scale": model.prior_scale,
    }
    # divergences, saturated trees and chains that disagree say so
    r_hat, ess = health.chain_convergence(_identifiable(samples, sample_stats))
    health.check_nuts(
        sample_stats,
        max_tree_depth=max_tree_depth,
        r_hat=r_hat,
        ess_bulk=ess,
        min_ess=100.0 * num_chains,
    )
    return MCMCResult(model, samples, sample_stats, config, wall_time)
