r"""A PyTorch network, the mixture prior and a likelihood as one Pyro model.

The generative program (shapes in comments):

.. code-block:: text

    pi, mu, sigma ~ hyperpriors                       # sws.* sites, unscaled
    with poutine.scale(λ):
        for every selected parameter tensor W:        # one site per tensor
            W ~ MixtureOfGaussians(pi, mu, sigma)     # event_shape = W.shape
    with plate("data", N, subsample=idx):
        obs ~ likelihood(net(x[idx]; W))

so that under a point-mass (AutoDelta) guide the negative log joint is

.. math::

    E(w) + \lambda\Omega(w) - \log p(\pi,\mu,\sigma) + \text{const}    \qquad (5.139)

Parameters that carry no prior (biases by default) stay ordinary
``nn.Parameter``\ s of the network: :func:`bayes_sws.fit` optimises them as point
estimates, and MCMC keeps them fixed.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import pyro
import torch
from pyro import poutine
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils import parametrize

from ..validation import check_real
from .likelihoods import Likelihood, get_likelihood
from .priors import GroupedMixturePrior, Mixture, MixturePrior
from .sites import DATA_PLATE, PI, WEIGHT_PREFIX

__all__ = ["WEIGHT_PREFIX", "SWSModel"]


class SWSModel:
    r"""Soft weight-sharing model: ``model(x, y, subsample, num_data)`` is a Pyro model.

    Parameters
    ----------
    net : torch.nn.Module
        Any network; its current parameter values initialise inference.
    prior : MixturePrior
        The mixture prior and hyperpriors; it also chooses which tensors carry it.
    likelihood : {"categorical", "gaussian"} or Likelihood
        How outputs explain targets.
    prior_scale : float
        :math:`\lambda \ge 0` in :math:`E + \lambda\Omega`, applied with
        ``poutine.scale`` to the weight sites only.
    groups : None, "layer" or dict of str to list of str
        ``None`` (default): one mixture shared by all prior-carrying tensors.
        ``"layer"``: a separate mixture per layer (the tensors of one module,
        named after its path, e.g. ``"0"`` for ``0.weight``; a top-level
        parameter is its own group). A dict ``{group: [names or glob
        patterns]}``: a mixture per group of tensors, each tensor in the first
        group one of whose patterns (:func:`fnmatch.fnmatchcase`) it matches.
        Each group's mixture has its own hyperparameter sites, named after the
        group: ``sws.<group>.mixing``, ``sws.<group>.pi`` ...
        (:meth:`MixturePrior.for_group`). With one component per group, no zero
        component and fixed precisions this is PRML §5.5.1's layer-wise Gaussian
        prior :math:`\sum_l \frac{\alpha_l}{2}\|w_l\|^2`.
        With groups, ``prior`` may also be a dict ``{group: MixturePrior}``
        (a prior per group). Each group's prior is a copy made here
        (:attr:`group_priors`, change a group's settings there);
        :attr:`prior` is then a :class:`~bayes_sws.core.priors.GroupedMixturePrior`
        with the settings of ``prior`` (of the first, for a dict), all groups'
        sites, and as its mixture the groups' components side by side (what
        ``FitResult.mixture()`` and the trace's ``sws.pi``, ``sws.mu``,
        ``sws.sigma`` give); :meth:`mixtures` gives each group's own.
    tensor_scales : dict of str to float, optional
        Multipliers :math:`s_t > 0` of :math:`\lambda` for some prior-carrying
        tensors, keyed by name or glob pattern (each tensor takes the first
        pattern it matches; the others keep 1): the objective becomes
        :math:`E + \lambda \sum_t s_t \Omega_t(w_t)`, each tensor's weight sites
        under ``poutine.scale(λ·s_t)``. E.g. ``{"2.weight": 3.0}`` prunes a
        tensor that one λ leaves denser than its share of the stored bits
        warrants (LeNet-5's second convolution, BENCHMARKS.md). A pattern that
        matches no prior-carrying tensor is refused.

    Notes
    -----
    Each selected parameter ``name`` becomes the latent site ``"net." + name``
    (e.g. ``net.0.weight``). Observations are the site ``obs`` inside
    ``pyro.plate("data", len(x), subsample=subsample)``: pass a tensor of indices
    as ``subsample`` for a mini-batch and the likelihood is scaled by
    ``len(x) / len(subsample)``, keeping the ELBO unbiased for the full data.
    Given a batch alone (one batch of a ``DataLoader``), pass the size of the
    whole data set as ``num_data``: the plate is then ``pyro.plate("data",
    num_data, subsample=arange(len(x)))`` and the likelihood is scaled by
    ``num_data / len(x)``, the same scale as the indices of that batch into all
    the data would give.

    Which tensors carry the prior is the choice of ``prior`` (its ``params``,
    ``include_bias``); with a dict of priors, of the prior of the tensor's group.
    A tensor the prior selects must belong to a group.
    """

    def __init__(
        self,
        net: nn.Module,
        prior: MixturePrior | Mapping[str, MixturePrior],
        likelihood: str | Likelihood = "categorical",
        prior_scale: float = 1.0,
        groups: str | Mapping[str, Sequence[str]] | None = None,
        tensor_scales: Mapping[str, float] | None = None,
    ):
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        priors = _checked_priors(prior, groups)
        prior = next(iter(priors.values())) if isinstance(priors, dict) else priors
        prior_scale = check_real(
            "prior_scale (λ)",
            prior_scale,
            low=0,
            hint="λ = 1 is the plain Bayesian model, λ = 0 switches the prior off",
        )
        self.net = net
        self.likelihood = get_likelihood(likelihood)
        self.prior_scale = prior_scale
        named = list(net.named_parameters())
        _check_known(priors, named)
        #: The group of each prior-carrying tensor's mixture and that mixture's prior
        #: (``None``: one mixture shared by all, :attr:`prior`).
        self.group_priors: dict[str, MixturePrior] | None = None
        self.groups: dict[str, tuple[str, ...]] | None = None
        if groups is None:
            self.prior_param_names = tuple(n for n, p in named if prior.selects(n, p))
        else:
            self.groups, self.group_priors = _grouped(named, priors, groups)
            self.prior_param_names = tuple(
                n for n, _ in named if any(n in g for g in self.groups.values())
            )
        if not self.prior_param_names:
            available = ", ".join(f"{n} {tuple(p.shape)}" for n, p in named) or "none"
            raise ValueError(
                "no parameter of the network is selected for the prior (parameters: "
                f"{available}); pass MixturePrior(include_bias=True) or params=[names]"
            )
        if self.groups is not None and self.group_priors is not None:
            sizes = {n: p.numel() for n, p in named}
            prior = GroupedMixturePrior(
                prior,
                self.group_priors,
                {g: sum(sizes[n] for n in names) for g, names in self.groups.items()},
            )
        self.prior = prior
        self.free_param_names = tuple(n for n, _ in named if n not in self.prior_param_names)
        #: Each prior-carrying tensor's multiplier of λ where it is not 1 (``tensor_scales``).
        self.tensor_scales: dict[str, float] = _tensor_scales(tensor_scales, self.prior_param_names)

    def __repr__(self) -> str:
        groups = "" if self.groups is None else f", groups={list(self.groups)}"
        scales = f", tensor_scales={self.tensor_scales}" if self.tensor_scales else ""
        return (
            f"SWSModel(net={type(self.net).__name__}, prior={self.prior!r}, "
            f"likelihood={self.likelihood.name!r}, prior_scale={self.prior_scale}{groups}{scales})"
        )

    def tensor_scale(self, name: str) -> float:
        """The multiplier of λ on the prior of the tensor ``name`` (1 unless ``tensor_scales``
        gives another)."""
        return self.tensor_scales.get(name, 1.0)

    # ------------------------------------------------------------------ groups
    def mixture_groups(self) -> tuple[tuple[str | None, MixturePrior, tuple[str, ...]], ...]:
        """``(group, prior, parameter names)`` of every mixture of the model, in order.

        One entry ``(None, self.prior, self.prior_param_names)`` for the mixture
        shared by all layers (``groups=None``); else one per group.
        """
        if self.groups is None or self.group_priors is None:
            return ((None, self.prior, self.prior_param_names),)
        return tuple((g, self.group_priors[g], names) for g, names in self.groups.items())

    def mixtures(self, values: dict[str, Tensor]) -> dict[str | None, Mixture]:
        """Every group's mixture ``(pi, mu, sigma)`` from values of the latent sites.

        ``values`` as ``FitResult.median()`` gives them; keyed by group name
        (``None`` for the shared mixture). :meth:`MixturePrior.mixture` of each.
        """
        like = self.like_tensor()
        return {g: prior.mixture(values, like) for g, prior, _ in self.mixture_groups()}

    # ------------------------------------------------------------------ names
    def site_name(self, param_name: str) -> str:
        """The sample site of a network parameter, e.g. ``"0.weight" -> "net.0.weight"``."""
        return WEIGHT_PREFIX + param_name

    @property
    def weight_site_names(self) -> tuple[str, ...]:
        return tuple(self.site_name(n) for n in self.prior_param_names)

    @property
    def hyper_site_names(self) -> tuple[str, ...]:
        """Latent sites that are not network weights (mixture and likelihood parameters)."""
        names: tuple[str, ...] = ()
        for _, prior, _ in self.mixture_groups():
            names += prior.site_names
        return names + self.likelihood.site_names

    def parameters_with_prior(self) -> dict[str, nn.Parameter]:
        slots = self._slots()
        if slots is not None:
            return {n: p for n, (_, _, p) in slots.items()}
        params = dict(self.net.named_parameters())
        return {n: params[n] for n in self.prior_param_names}

    def _slots(self) -> dict[str, tuple[nn.Module, str, nn.Parameter]] | None:
        """Where each prior-carrying parameter lives: ``(module, key, parameter)``.

        Resolved once and re-checked on every call (the module still holds the same
        parameter object), so a parameter replaced on the network is picked up.
        ``None`` when the plain lookup must be used instead: parametrised modules
        or parameters tied under two names (``functional_call`` handles those).
        """
        slots = self.__dict__.get("_slot_cache")
        if slots is not None and all(m._parameters.get(k) is p for m, k, p in slots.values()):
            return slots
        self._slot_cache = None
        named = list(self.net.named_parameters(remove_duplicate=False))
        if len({id(p) for _, p in named}) != len(named) or any(
            parametrize.is_parametrized(m) for m in self.net.modules()
        ):
            return None
        slots = {}
        for name in self.prior_param_names:
            path, _, key = name.rpartition(".")
            module = self.net.get_submodule(path) if path else self.net
            slots[name] = (module, key, module._parameters[key])
        self._slot_cache = slots
        return slots

    def free_parameters(self) -> dict[str, nn.Parameter]:
        """Network parameters without the prior: point estimates trained alongside the guide."""
        params = dict(self.net.named_parameters())
        return {n: params[n] for n in self.free_param_names}

    def like_tensor(self) -> Tensor:
        """A parameter under the prior: the dtype and device the mixture's values take.

        The hyperparameters (π, μ, σ and their sites) are created like it, so a
        network moved with ``.to(device, dtype)`` carries its prior along.
        """
        return next(iter(self.parameters_with_prior().values()))

    def init_values(self) -> dict[str, Tensor]:
        """Initial values of every latent site: the network's current weights, the prior's init."""
        weights = self.parameters_with_prior()
        like = self.like_tensor()
        values = {self.site_name(n): w.detach().clone() for n, w in weights.items()}
        for _, prior, names in self.mixture_groups():
            values.update(prior.init_values(weights[n] for n in names))
        values.update(self.likelihood.init_values(like))
        return values

    # ------------------------------------------------------------------ program
    def __call__(
        self,
        x: Tensor,
        y: Tensor | None = None,
        subsample: Tensor | None = None,
        num_data: int | None = None,
    ) -> Tensor:
        weights, params = self.sample_latent()
        size, index = self.data_plate(x, subsample, num_data)
        with pyro.plate(DATA_PLATE, size, subsample=index, dim=-1):
            if subsample is not None:
                x = x[subsample]
                y = None if y is None else y[subsample]
            output = self.forward(weights, x)
            self.likelihood.observe(output, y, params)
        return output

    def sample_latent(self) -> tuple[dict[str, Tensor], Any]:
        """Sample every latent site of the program: the weights and the likelihood's parameters.

        The mixture first (the shared one, or every group's sites and the
        summary ``sws.pi``, ``sws.mu``, ``sws.sigma``), then the weights under it
        (:meth:`sample_weights`), then the likelihood's parameters; returns the
        last two. The model's program without its data (``__call__`` observes
        the data after it).
        """
        like = self.like_tensor()
        mixture: Mixture | dict[str, Mixture]
        if self.groups is None:
            mixture = self.prior.sample_mixture(like)
        else:
            mixture = cast(GroupedMixturePrior, self.prior).sample_mixtures(like)
        return self.sample_weights(mixture), self.likelihood.sample_parameters(like)

    @staticmethod
    def data_plate(
        x: Tensor, subsample: Tensor | None = None, num_data: int | None = None
    ) -> tuple[int, Tensor | None]:
        """Size and subsample of the data plate for the arguments of a call.

        All of ``x`` (``subsample`` and ``num_data`` ``None``), the points
        ``x[subsample]`` of ``len(x)``, or ``x`` as one batch of a data set of
        ``num_data`` points (a data loader's); the likelihood is scaled by
        ``size / len(subsample)``.
        """
        if num_data is None or num_data == x.shape[0]:
            return x.shape[0], subsample
        if subsample is not None:
            raise ValueError(
                "give subsample (indices into all the data x) or num_data (x is one batch "
                "of num_data points), not both"
            )
        return num_data, torch.arange(x.shape[0], device=x.device)

    def sample_weights(self, mixture: Mixture | Mapping[Any, Mixture]) -> dict[str, Tensor]:
        """One vectorised site per selected tensor, under ``poutine.scale(λ)``.

        ``mixture``: the shared mixture, or each group's (keyed as :meth:`mixtures`).
        """
        params = self.parameters_with_prior()
        of: dict[str, Mixture] = {}
        for group, _, names in self.mixture_groups():
            own = mixture if isinstance(mixture, Mixture) else mixture[group]
            of.update(dict.fromkeys(names, own))
        handler: poutine.messenger.Messenger
        if self.prior_scale > 0:
            handler = poutine.scale(scale=self.prior_scale)
        else:  # λ = 0: the weights keep their sites but the prior contributes nothing
            handler = poutine.mask(mask=False)
        weights = {}
        with handler:
            for name, p in params.items():
                scale = self.tensor_scale(name)
                with poutine.scale(scale=scale) if scale != 1.0 else contextlib.nullcontext():
                    weights[name] = pyro.sample(
                        self.site_name(name), self.prior.weight_distribution(of[name], p.shape)
                    )
        return weights

    def output_at(self, values: dict[str, Tensor], x: Tensor) -> Tensor:
        """The network's output at ``x`` with the weights of site ``values`` (one draw).

        ``values`` maps site names (``sws.w.<param>``, as a guide, a posterior draw
        or :meth:`init_values` name them) to values; other sites are ignored.
        """
        return self.forward({n: values[self.site_name(n)] for n in self.prior_param_names}, x)

    def forward(self, weights: dict[str, Tensor], x: Tensor) -> Tensor:
        """Network output with the given values of the prior-carrying parameters.

        Weights with extra leading (sample) dimensions, as drawn by
        ``Predictive(parallel=True)`` or vectorised particles, are mapped over with
        ``torch.func.vmap``; the output then has shape ``sample_shape + (batch, ...)``.
        """
        params = self.parameters_with_prior()
        first = next(iter(weights))
        extra = weights[first].dim() - params[first].dim()
        if extra <= 0:
            return self._call_with(weights, x)
        # the trailing batch dimension lines up with the data plate (size 1 here)
        batch_shape = weights[first].shape[:extra]
        if batch_shape[-1] == 1:
            batch_shape = batch_shape[:-1]
        flat = {
            name: w.reshape((-1,) + params[name].shape).expand(
                (math.prod(batch_shape),) + params[name].shape
            )
            for name, w in weights.items()
        }
        out = torch.func.vmap(lambda ws: functional_call(self.net, ws, (x,)))(flat)
        return out.reshape(batch_shape + out.shape[1:])

    def _call_with(self, weights: dict[str, Tensor], x: Tensor) -> Tensor:
        """``functional_call(self.net, weights, (x,))`` for unbatched weights, cheaply.

        The values are put in the parameters' slots of their modules for the
        call and the parameters put back afterwards, also on error: what
        ``functional_call`` does, without its per-call traversal of the module
        tree (a third of a small network's step). Falls back to it whenever the
        slots are not plain (see :meth:`_slots`) or a name is not a prior-carrying
        parameter.
        """
        slots = self._slots()
        if slots is None or not weights.keys() <= slots.keys():
            return functional_call(self.net, weights, (x,))
        saved = []
        try:
            for name, value in weights.items():
                module, key, param = slots[name]
                saved.append((module, key, param))
                # a plain tensor stands in for the Parameter; torch types the slot Parameter
                module._parameters[key] = value  # type: ignore[assignment]
            return self.net(x)
        finally:
            for module, key, param in saved:
                module._parameters[key] = param

    # ------------------------------------------------------------------ helpers
    def to(self, device: torch.device | str) -> SWSModel:
        """Move the network to ``device`` in place and return the model.

        The network's parameters are all the model's tensors: the prior and the
        likelihood build theirs on the device of the prior-carrying weights.
        """
        self.net.to(device)
        return self

    def network_with(self, weights: dict[str, Tensor]) -> nn.Module:
        """A copy of the network with site values (keyed by site name) loaded into it."""
        net = copy.deepcopy(self.net)
        state = dict(net.named_parameters())
        with torch.no_grad():
            for name in self.prior_param_names:
                state[name].copy_(weights[self.site_name(name)].reshape(state[name].shape))
        return net


def _checked_priors(prior: object, groups: object) -> MixturePrior | dict[str, MixturePrior]:
    """``prior`` checked: a :class:`MixturePrior`, or (with ``groups``) a dict of them."""
    if isinstance(prior, Mapping) and groups is not None:
        if not prior or not all(isinstance(p, MixturePrior) for p in prior.values()):
            raise TypeError("prior must be a MixturePrior or a non-empty dict of MixturePriors")
        return dict(prior)
    if not isinstance(prior, MixturePrior):
        hint = "" if groups is not None else " (a dict of priors needs groups=...)"
        raise TypeError(f"prior must be a bayes_sws.MixturePrior, got {type(prior).__name__}{hint}")
    if groups is not None and not (groups == "layer" or isinstance(groups, Mapping)):
        raise ValueError(
            f'groups must be None, "layer" or a dict {{group: [names]}}, got {groups!r}'
        )
    return prior


def _check_known(
    priors: MixturePrior | dict[str, MixturePrior], named: list[tuple[str, nn.Parameter]]
) -> None:
    """Every parameter a prior names explicitly (``params=[names]``) is one of the network's."""
    for each in priors.values() if isinstance(priors, dict) else (priors,):
        if isinstance(each.params, tuple):
            unknown = sorted(set(each.params) - {n for n, _ in named})
            if unknown:
                raise ValueError(
                    f"MixturePrior(params=...) names {unknown} that the network does not "
                    f"have; its parameters are {[n for n, _ in named]}"
                )


def _tensor_scales(given: object, names: Sequence[str]) -> dict[str, float]:
    """Each prior-carrying tensor's multiplier of λ other than 1, from ``tensor_scales``."""
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise TypeError(
            "tensor_scales must be a dict {tensor name or glob pattern: multiplier of λ}, "
            f"got {type(given).__name__}"
        )
    scales: dict[str, float] = {}
    for pattern, value in given.items():
        scale = check_real(
            f"tensor_scales[{pattern!r}]", value, low=0, low_open=True, hint="a multiplier of λ"
        )
        matched = [n for n in names if fnmatch.fnmatchcase(n, str(pattern))]
        if not matched:
            raise ValueError(
                f"tensor_scales names {pattern!r}, which matches no prior-carrying tensor; "
                f"they are {list(names)}"
            )
        for name in matched:
            scales.setdefault(name, scale)
    return {n: s for n, s in scales.items() if s != 1.0}


def _group_of(name: str, groups: str | Mapping[str, Sequence[str]]) -> str | None:
    """The group of the parameter ``name``: its module's path, or the first matching group."""
    if groups == "layer":
        path = name.rpartition(".")[0]
        return path or name
    assert isinstance(groups, Mapping)
    for group, patterns in groups.items():
        if isinstance(patterns, str):
            patterns = [patterns]
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            return group
    return None


def _grouped(
    named: list[tuple[str, nn.Parameter]],
    priors: MixturePrior | dict[str, MixturePrior],
    groups: str | Mapping[str, Sequence[str]],
) -> tuple[dict[str, tuple[str, ...]], dict[str, MixturePrior]]:
    """Each group's prior-carrying parameters and its prior (sites named after the group)."""
    members: dict[str, list[str]] = {}
    for name, param in named:
        group = _group_of(name, groups)
        if isinstance(priors, dict):
            chosen = priors.get(group) if group is not None else None
            if chosen is not None and chosen.selects(name, param):
                members.setdefault(cast(str, group), []).append(name)
        elif priors.selects(name, param):
            if group is None:
                raise ValueError(
                    f"parameter {name!r} carries the prior but matches no group of "
                    f"{list(cast(Mapping, groups))}; add it to a group"
                )
            members.setdefault(group, []).append(name)
    if isinstance(priors, dict):
        extra = sorted(set(priors) - set(members))
        if extra:
            raise ValueError(f"prior names groups {extra} that hold no prior-carrying tensor")
    group_priors = {
        g: (priors[g] if isinstance(priors, dict) else priors).for_group(g) for g in members
    }
    sites = [s for p in group_priors.values() for s in (*p.site_names, p.site(PI))]
    if len(set(sites)) != len(sites):
        raise ValueError(f"group names {list(members)} give clashing site names; rename them")
    return {g: tuple(n) for g, n in members.items()}, group_priors
