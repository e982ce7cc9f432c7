r"""The MAP (``AutoDelta``) loss of an :class:`~bayes_sws.core.model.SWSModel` without Pyro tracing.

Under a point-mass guide the negative ELBO of the model is its negative log
joint at the guide's values (PRML §5.5.7, eq. 5.139, plus the hyperpriors):

.. math::

    \mathcal L = -\frac{N}{B}\sum_{n \in \text{batch}} \log p(y_n \mid f(x_n, w), \beta)
                 + \lambda\,\Omega(w) - \log p(\pi, \mu, \sigma) - \log p(\beta),

with :math:`\Omega` the mixture penalty (5.138) over every prior-carrying
tensor, :math:`\lambda` = ``model.prior_scale``, and :math:`\beta` a learned
likelihood parameter if there is one. :func:`map_loss` computes exactly what
``Trace_ELBO().differentiable_loss(model, guide, x, y, subsample)`` computes for
an ``AutoDelta`` guide — the same value (to rounding) and the same gradients
with respect to the guide's unconstrained parameters and the network's free
parameters — but evaluates the terms directly instead of tracing the model and
the guide. Every term reuses the model's own code: the guide's values are its
``PyroParam``\ s through ``transform_to(support)`` as the guide applies them,
the mixture comes from :meth:`MixturePrior.mixture`, the hyperpriors from the
prior's own distributions, the network output from :meth:`SWSModel.forward`,
the data term from the likelihood's ``distribution``; the weight prior is the
fused kernel :func:`bayes_sws.core.kernel.mixture_log_prob`, as in
:class:`~bayes_sws.core.distributions.MixtureOfGaussians`.

What the Pyro path spends and this one does not (profile in
``benchmarks/results/history.md``, "SVI step: Before the native kernel"): two traces per step with a message through the handler
stack per site, ``Delta`` and deterministic sites, a distribution object per
site with argument and support validation (each a host sync), ``warn_if_nan``
/ ``warn_if_inf`` and ``torch_item`` per site, and one kernel call per weight
tensor. Here the per-(model, guide) work — checks, hyperprior distributions,
where the guide keeps each parameter — is done once and cached; per step the
weights go through the kernel in one call, and distributions are evaluated with
validation off. Instead, when validation is on (Pyro's default), a loss that is
not finite is handed to ``Trace_ELBO`` itself, so a diverging fit fails with
Pyro's own message naming the site.

In a training loop (``bayes_sws.fit`` for ``guide="map"``)::

    loss_fn = map_loss if supports_fast_map(model, guide) else elbo.differentiable_loss
    loss = loss_fn(model, guide, x, y, index)
"""

from __future__ import annotations

import math
import weakref
from typing import cast

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoDelta
from pyro.nn import PyroModule
from torch import Tensor, nn
from torch.distributions import transform_to

from ..core.kernel import mixture_log_prob
from ..core.likelihoods import Categorical as CategoricalLikelihood
from ..core.likelihoods import Likelihood, SoftCategorical
from ..core.model import SWSModel
from ..core.priors import MixturePrior

__all__ = [
    "ModelTerms",
    "ParamReader",
    "Validation",
    "direct_transform",
    "latent_sites_reason",
    "map_loss",
    "model_unsupported_reason",
    "negative_log_joint",
    "pyro_loss",
    "supports_fast_map",
    "unsupported_reason",
    "weight_log_prior",
]


# --------------------------------------------------------------------------- #
# When the fast path applies
# --------------------------------------------------------------------------- #


def unsupported_reason(model, guide) -> str | None:
    """Why :func:`map_loss` cannot stand in for ``Trace_ELBO`` here, or ``None`` if it can.

    It needs a :class:`~bayes_sws.core.model.SWSModel` whose program, weight sites and
    observation site are the library's (``__call__``, ``sample_weights``,
    ``Likelihood.observe`` not overridden), a :class:`~bayes_sws.core.priors.MixturePrior`
    whose mixture, hyperpriors and weight distribution are the library's, a plain
    ``AutoDelta`` guide built for that model (same latent sites), and module-local
    Pyro parameters (``pyro.settings.set(module_local_params=True)``, as
    :func:`bayes_sws.fit` uses), so the guide's values are its own ``PyroParam``\\ s
    and not entries of the global param store.
    """
    if not isinstance(model, SWSModel):
        return f"the model is a {type(model).__name__}, not a bayes_sws.SWSModel"
    if type(guide) is not AutoDelta:
        return f"the guide is a {type(guide).__name__}, not a pyro AutoDelta"
    reason = model_unsupported_reason(model)
    if reason is None and guide.prototype_trace is not None:
        found = {name for name, _ in guide.prototype_trace.iter_stochastic_nodes()}
        reason = latent_sites_reason(model, found)
    return reason


def model_unsupported_reason(model) -> str | None:
    """The model's and the settings' part of :func:`unsupported_reason` (any guide).

    ``None`` when ``model`` is an :class:`~bayes_sws.core.model.SWSModel` running the
    library's program (nothing overridden, see :func:`unsupported_reason`) and Pyro
    parameters are module-local; else why not. Shared with
    :mod:`bayes_sws.infer.fastvi`.
    """
    if not isinstance(model, SWSModel):
        return f"the model is a {type(model).__name__}, not a bayes_sws.SWSModel"
    if not pyro.settings.get("module_local_params"):
        return (
            "Pyro parameters are in the global param store; use "
            "pyro.settings.context(module_local_params=True) (bayes_sws.infer.local_params)"
        )
    prior_methods = ("sample_mixture", "weight_distribution", "log_hyperprior", "_hyperprior")
    for cls, base, methods in (
        (type(model), SWSModel, ("__call__", "sample_weights", "mixture_groups")),
        *((type(prior), MixturePrior, prior_methods) for _, prior, _ in model.mixture_groups()),
    ):
        for method in methods:
            if getattr(cls, method) is not getattr(base, method):
                return f"{cls.__name__} overrides {base.__name__}.{method}"
    if type(model.likelihood).observe is not Likelihood.observe:
        return f"{type(model.likelihood).__name__} overrides Likelihood.observe"
    return None


def latent_sites_reason(model: SWSModel, found: set[str]) -> str | None:
    """Why a guide with latent sites ``found`` is not one built for ``model``, or ``None``."""
    expected = set(model.hyper_site_names) | set(model.weight_site_names)
    if found != expected:
        return (
            f"the guide's latent sites {sorted(found)} are not the model's "
            f"{sorted(expected)}; build the guide from this model"
        )
    return None


def supports_fast_map(model, guide) -> bool:
    """Whether :func:`map_loss` computes ``Trace_ELBO``'s loss for this model and guide.

    See :func:`unsupported_reason` for the conditions. With more than one ELBO
    particle the loss of an ``AutoDelta`` guide is the same (its particles are
    all equal), so :func:`map_loss` stands in for any ``num_particles``.
    """
    return unsupported_reason(model, guide) is None


# --------------------------------------------------------------------------- #
# Per-(model, guide) work, done once
# --------------------------------------------------------------------------- #


class Validation:
    """Torch/Pyro distribution validation on or off inside a ``with`` (restored after)."""

    __slots__ = ("before", "enabled")

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self):
        self.before = dist.is_validation_enabled()
        dist.enable_validation(self.enabled)

    def __exit__(self, *exc):
        dist.enable_validation(self.before)


def _closed_form(d: dist.Distribution):
    """``d.log_prob`` as a few torch ops with the value-free terms precomputed, or ``None``.

    For the hyperprior families :class:`MixturePrior` uses (Beta, Dirichlet,
    Normal and Gamma, the last two possibly ``Independent``), with parameters
    that are constants (the prior's settings): the same formulas as torch's
    ``log_prob``, minus the work that does not depend on the value (``lgamma``
    of the parameters, broadcasting, validation) — about 4× less per step.
    """
    event_dims = 0
    base = d
    if type(base) is dist.Independent:
        event_dims = base.reinterpreted_batch_ndims
        base = base.base_dist
    params = [p for p in vars(base).values() if isinstance(p, Tensor)]
    if any(p.requires_grad for p in params):
        return None

    def total(log_p):
        return log_p.sum(tuple(range(-event_dims, 0))) if event_dims else log_p

    if type(base) is dist.Normal:
        loc, scale = base.loc, base.scale
        const = -scale.log() - 0.5 * math.log(2 * math.pi)
        half_inv_var = 0.5 / scale**2
        return lambda x: total(const - half_inv_var * (x - loc) ** 2)
    if type(base) is dist.Gamma:
        conc, rate = base.concentration, base.rate
        const = torch.xlogy(conc, rate) - torch.lgamma(conc)
        return lambda x: total(const + torch.xlogy(conc - 1, x) - rate * x)
    if type(base) is dist.Dirichlet and event_dims == 0:
        conc = base.concentration
        const = torch.lgamma(conc.sum(-1)) - torch.lgamma(conc).sum(-1)
        return lambda x: torch.xlogy(conc - 1, x).sum(-1) + const
    if type(base) is dist.Beta and event_dims == 0:
        a, b = base.concentration1, base.concentration0
        const = torch.lgamma(a + b) - torch.lgamma(a) - torch.lgamma(b)
        return lambda x: torch.xlogy(a - 1, x) + torch.xlogy(b - 1, 1 - x) + const
    return None


def _prior_key(prior: MixturePrior) -> tuple:
    """The prior's settings (numbers, flags, names), to notice a changed prior."""
    return tuple(
        (k, v)
        for k, v in sorted(vars(prior).items())
        if v is None or isinstance(v, (bool, int, float, str, tuple))
    )


def priors_key(model: SWSModel) -> tuple:
    """:func:`_prior_key` of every mixture of the model (one per group), with its tensors."""
    return tuple(
        (group, id(prior), names, _prior_key(prior))
        for group, prior, names in model.mixture_groups()
    )


class ModelTerms:
    """What the negative log joint of a model needs, resolved once per (model, dtype, device).

    The hyperprior distributions and their log-densities (closed forms where
    possible), and whether the likelihood is a plain categorical (one fused
    cross-entropy). Shared by :func:`map_loss` and
    :func:`bayes_sws.infer.fastvi.elbo_loss`; :meth:`matches` tells whether it
    still fits the model (same prior, likelihood and settings).
    """

    def __init__(self, model: SWSModel, like: Tensor):
        self.model = model
        self.prior = model.prior
        self.likelihood = model.likelihood
        self.like_key = (like.dtype, like.device)
        self.prior_key = priors_key(model)
        # the hyperprior distributions do not depend on the values: built once
        # (with validation off; their arguments are the prior's checked settings)
        with Validation(False):
            self.hyperpriors = {
                site: prior._hyperprior(site, like)
                for _, prior, _ in model.mixture_groups()
                for site in prior.site_names
            }
            self.hyper_log_probs = {
                site: _closed_form(d) or d.log_prob for site, d in self.hyperpriors.items()
            }
        # -cross_entropy is Categorical(logits).log_prob summed, in one fused op (also
        # against class probabilities: SoftTargetCategorical's log_prob)
        self.cross_entropy = type(self.likelihood) in (CategoricalLikelihood, SoftCategorical)

    def matches(self, model: SWSModel, like: Tensor) -> bool:
        """Whether these terms are still those of ``model`` for a network like ``like``."""
        return (
            self.model is model
            and self.prior is model.prior
            and self.likelihood is model.likelihood
            and self.like_key == (like.dtype, like.device)
            and self.prior_key == priors_key(model)
        )


class ParamReader:
    """The constrained values of named ``PyroParam``\\ s of a Pyro module, read directly.

    ``names`` are dotted paths from ``root`` (a guide's site names, or those
    under an ``AutoNormal``'s ``locs`` / ``scales``). Where each parameter lives
    is resolved once; a call returns ``transform_to(constraint)`` of each
    unconstrained parameter, which is what reading the attribute returns with
    module-local parameters, without ``PyroModule.__getattr__``. Holds no
    reference to ``root``: pass it (or an equal-structured module) to each call.
    """

    def __init__(self, root: nn.Module, names):
        self.names = tuple(names)
        self.sites = _param_locations(root, self.names)

    def __call__(self, root: nn.Module) -> dict[str, Tensor]:
        if self.sites is None:
            return {name: _deep_getattr(root, name) for name in self.names}
        values = {}
        for name, (path, key, transform) in self.sites.items():
            module = _submodule(root, path)
            values[name] = transform(module._parameters[key])
        return values


class _Plan(ModelTerms):
    """What :func:`map_loss` needs from one (model, guide) pair, resolved once.

    Holds no reference to the guide (the key of a weak cache): each call finds
    the guide's parameters again by their module path, a few dict look-ups.
    """

    def __init__(self, model: SWSModel, guide: AutoDelta, like: Tensor):
        super().__init__(model, like)
        self.prototype = weakref.ref(guide.prototype_trace)
        self.reader = ParamReader(guide, model.hyper_site_names + model.weight_site_names)

    def matches_guide(self, model: SWSModel, guide: AutoDelta, like: Tensor) -> bool:
        return self.matches(model, like) and self.prototype() is guide.prototype_trace

    def site_values(self, guide: AutoDelta) -> dict[str, Tensor]:
        """The guide's constrained value of every latent site, as the guide computes it."""
        return self.reader(guide)


def _param_locations(root: nn.Module, site_names) -> dict | None:
    """Sub-module path, parameter key and transform of each named ``PyroParam``.

    ``None`` if ``root`` does not keep them where Pyro 1.x's ``PyroModule``
    does (``_pyro_params`` and ``<name>_unconstrained``): then every call reads
    the attributes through ``PyroModule.__getattr__`` instead, slower but the same.
    """
    sites = {}
    try:
        for name in site_names:
            *path, leaf = name.split(".")
            module = _submodule(root, path)
            constraint, _ = cast(PyroModule, module)._pyro_params[leaf]  # AttributeError if not
            key = leaf + "_unconstrained"
            if key not in module._parameters:
                return None
            sites[name] = (tuple(path), key, direct_transform(transform_to(constraint)))
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    return sites


def _submodule(module: nn.Module, path) -> nn.Module:
    """The sub-module at ``path`` (names of children), read from ``_modules`` directly."""
    for part in path:
        child = module._modules[part]
        if child is None:
            raise AttributeError(f"sub-module {part!r} is None")
        module = child
    return module


def _identity(x: Tensor) -> Tensor:
    return x


def _clipped_sigmoid(x: Tensor) -> Tensor:
    finfo = torch.finfo(x.dtype)  # as torch's SigmoidTransform: kept inside (0, 1)
    return torch.sigmoid(x).clamp(min=finfo.tiny, max=1.0 - finfo.eps)


def _softmax(x: Tensor) -> Tensor:
    return torch.softmax(x, -1)


#: transforms without parameters, as plain functions (softplus: an AutoNormal's scales)
_ELEMENTARY = {
    dist.transforms.ExpTransform: torch.exp,
    dist.transforms.SigmoidTransform: _clipped_sigmoid,
    dist.transforms.SoftmaxTransform: _softmax,
    dist.transforms.SoftplusTransform: F.softplus,
}


def direct_transform(transform):
    """``transform`` as a plain function of the tensor: the same maths, without
    ``Transform.__call__``'s wrappers (caching, ``Independent``/``Compose`` layers).

    Covers what ``transform_to`` gives for the supports of :class:`MixturePrior`
    and the likelihoods (real, unit interval, simplex, positive) and an
    ``AutoNormal``'s scales (softplus-positive); any other
    transform is returned as it is. Worth about half the hyperparameter cost of
    a small network's step (``BENCHMARKS.md``, "SVI step").
    """
    kind = type(transform)
    if kind is dist.transforms.IndependentTransform:
        return direct_transform(transform.base_transform)
    if kind is dist.transforms.ComposeTransform:
        parts = [direct_transform(t) for t in transform.parts]
        parts = [f for f in parts if f is not _identity]
        if not parts:
            return _identity
        if len(parts) == 1:
            return parts[0]

        def composed(x: Tensor) -> Tensor:
            for f in parts:
                x = f(x)
            return x

        return composed
    if kind in _ELEMENTARY:
        return _ELEMENTARY[kind]
    if kind is dist.transforms.AffineTransform and all(
        isinstance(v, (int, float)) for v in (transform.loc, transform.scale)
    ):
        loc, scale = transform.loc, transform.scale
        if loc == 0 and scale == 1:
            return _identity
        return lambda x: loc + scale * x
    return transform


def _deep_getattr(obj, name: str):
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _plan(model, guide, like, x, y, subsample) -> _Plan:
    """The cached plan of this (model, guide), checked still to fit; built when needed."""
    try:
        plan = _PLANS.get(guide)
    except TypeError:  # not weak-referenceable, so not an AutoDelta either
        plan = None
    if (
        plan is not None
        and plan.matches_guide(model, guide, like)
        and pyro.settings.get("module_local_params")
    ):
        return plan
    reason = unsupported_reason(model, guide)
    if reason is None and guide.prototype_trace is None:
        guide(x, y, subsample)  # creates the guide's parameters, as a first ELBO call would
        reason = unsupported_reason(model, guide)
    if reason is not None:
        raise ValueError(
            f"map_loss cannot evaluate this model and guide: {reason}. "
            "Use pyro.infer.Trace_ELBO().differentiable_loss instead"
        )
    plan = _PLANS[guide] = _Plan(model, guide, like)
    return plan


# --------------------------------------------------------------------------- #
# The loss
# --------------------------------------------------------------------------- #


def _likelihood_parameters(
    likelihood: Likelihood, values: dict[str, Tensor], like: Tensor
) -> tuple[dict[str, Tensor], Tensor | None]:
    """The likelihood's latent parameters at the guide's values, and their log-prior.

    Runs the likelihood's own ``sample_parameters`` with its sites fixed to the
    guide's values, so its hyperpriors are used as written. Only likelihoods
    with latent sites (a learned noise precision) pay for this one small trace.
    """
    if not likelihood.site_names:
        return {}, None
    data = {name: values[name] for name in likelihood.site_names}
    conditioned = poutine.condition(likelihood.sample_parameters, data=data)
    trace = poutine.trace(conditioned).get_trace(like)
    params = cast(dict[str, Tensor], trace.nodes["_RETURN"]["value"])
    return params, cast(Tensor, trace.log_prob_sum())  # a tensor: the sites are tensors


def map_loss(
    model: SWSModel,
    guide: AutoDelta,
    x: Tensor,
    y: Tensor,
    subsample: Tensor | None = None,
    num_data: int | None = None,
) -> Tensor:
    r"""Negative log joint of ``model`` at the ``AutoDelta`` guide's values: the MAP loss.

    Equal to ``Trace_ELBO().differentiable_loss(model, guide, x, y, subsample)``
    in value and gradients (tested in float64 to 1e-10 and 1e-8 relative), without
    tracing the model or the guide:

    .. math::

        \mathcal L = -\frac{N}{B}\sum_{n \in \text{batch}} \log p(y_n \mid f(x_n, w), \beta)
                     - \lambda \sum_i \ln \sum_j \pi_j \mathcal N(w_i \mid \mu_j, \sigma_j^2)
                     - \log p(\pi, \mu, \sigma) - \log p(\beta)

    (5.139 with 5.137–5.138). The weight term is left out when
    :math:`\lambda` = ``model.prior_scale`` is 0, as ``poutine.mask(False)``
    does in the model.

    Parameters
    ----------
    model : SWSModel
        The model the guide was built for; :func:`supports_fast_map` must hold.
    guide : pyro.infer.autoguide.AutoDelta
        Its parameters are read, not copied, so gradients reach them. If it has
        never run, it runs once here to create them, as the first ELBO call would.
    x, y : Tensor
        All inputs and targets, already checked (as :func:`bayes_sws.infer.as_data` does).
    subsample : Tensor, optional
        Indices of the mini-batch; the likelihood is scaled by
        ``len(x) / len(subsample)``, the ``pyro.plate`` scaling of the model.
    num_data : int, optional
        ``x, y`` are one batch (a data loader's) of a data set of ``num_data``
        points: the likelihood is scaled by ``num_data / len(x)``
        (:meth:`SWSModel.data_plate`, as the model does).

    Returns
    -------
    Tensor
        0-dim loss in the network's dtype, differentiable.

    Raises
    ------
    ValueError
        When :func:`supports_fast_map` does not hold, with the reason.

    Notes
    -----
    What does not depend on the step (checks, hyperprior distributions, where
    the guide keeps each value) is cached per guide and rebuilt when the model,
    its prior or likelihood, the guide's parameters, or the network's dtype or
    device change.
    """
    like = model.like_tensor() if isinstance(model, SWSModel) else None
    plan = _plan(model, guide, like, x, y, subsample)
    validate = dist.is_validation_enabled()
    with Validation(False):  # torch reads the flag when log_prob runs, not at construction
        values = plan.site_values(guide)
        loss = negative_log_joint(plan, values, like, x, y, subsample, num_data)
    if validate and not math.isfinite(loss.item()):
        # the slow path validates every site: Pyro's own error naming the site, or its warning
        return pyro_loss(model, guide, x, y, subsample, num_data)
    return loss


def pyro_loss(
    model,
    guide,
    x: Tensor,
    y: Tensor,
    subsample: Tensor | None = None,
    num_data: int | None = None,
    num_particles: int = 1,
    vectorize_particles: bool = False,
) -> Tensor:
    """``Trace_ELBO(...).differentiable_loss`` on the same arguments: the slow path.

    What the fast paths hand a non-finite loss to when validation is on, so that
    Pyro validates every site and fails (or warns) with its own message.
    """
    elbo = Trace_ELBO(
        num_particles=num_particles,
        vectorize_particles=vectorize_particles and num_particles > 1,
        max_plate_nesting=1,
    )
    if num_data is None:
        return elbo.differentiable_loss(model, guide, x, y, subsample)
    return elbo.differentiable_loss(model, guide, x, y, subsample, num_data=num_data)


def weight_log_prior(model: SWSModel, values: dict[str, Tensor], like: Tensor) -> Tensor:
    r""":math:`-\Omega(w) = \sum_i \ln p(w_i)` of the weights in ``values``, every group's.

    Each mixture (the shared one, or one per group, :meth:`SWSModel.mixture_groups`)
    from :meth:`MixturePrior.mixture` at the site ``values``; the tensors of a
    mixture go through the kernel :func:`~bayes_sws.core.kernel.mixture_log_prob`
    in one call, as a list (so no concatenated copy of them waits for backward), and
    the groups' sums are added in order. With ``model.tensor_scales`` each multiplier's
    tensors go through the kernel together and their sum is weighed by it:
    :math:`\sum_t s_t \ln p(w_t)`.
    """
    total: Tensor | None = None
    for _, prior, names in model.mixture_groups():
        mixture = prior.mixture(values, like)
        by_scale: dict[float, list[Tensor]] = {}
        for name in names:
            by_scale.setdefault(model.tensor_scale(name), []).append(values[model.site_name(name)])
        for scale, pieces in by_scale.items():
            log_prior = mixture_log_prob(pieces, *mixture, validate_args=False)
            log_prior = log_prior if scale == 1.0 else scale * log_prior
            total = log_prior if total is None else total + log_prior
    assert total is not None  # a model has at least one mixture
    return total


def negative_log_joint(
    terms: ModelTerms,
    values: dict[str, Tensor],
    like: Tensor,
    x: Tensor,
    y: Tensor,
    subsample: Tensor | None,
    num_data: int | None,
) -> Tensor:
    """:math:`-\\log p(y_\\text{batch}, w, \\pi, \\mu, \\sigma, \\beta \\mid x)` at the site ``values``.

    The model's log joint with the likelihood scaled to the data set as its
    ``pyro.plate`` does (the formula in :func:`map_loss`), given the constrained
    value of every latent site (unbatched: one particle). ``terms`` are the
    model's (:class:`ModelTerms`); call it with distribution validation off
    (:class:`Validation`). Shared by :func:`map_loss` and
    :func:`bayes_sws.infer.fastvi.elbo_loss`.
    """
    model = terms.model
    # hyperpriors: unscaled sites
    log_joint = sum(log_prob(values[site]) for site, log_prob in terms.hyper_log_probs.items())

    # the weight prior under poutine.scale(λ): all tensors of a mixture in one kernel pass
    weights = {name: values[model.site_name(name)] for name in model.prior_param_names}
    if model.prior_scale > 0:
        log_prior = weight_log_prior(model, values, like)
        log_joint = log_joint + model.prior_scale * log_prior

    # the likelihood, inside pyro.plate("data", N, subsample=...)
    params, log_params = _likelihood_parameters(terms.likelihood, values, like)
    if log_params is not None:
        log_joint = log_joint + log_params
    size, index = model.data_plate(x, subsample, num_data)
    batch_x, batch_y = (x, y) if subsample is None else (x[subsample], y[subsample])
    output = model.forward(weights, batch_x)
    scale = 1.0 if index is None else 1.0 * size / batch_x.shape[0]
    if terms.cross_entropy and output.dim() == 2 and batch_y.dim() in (1, 2):
        return -(log_joint - scale * F.cross_entropy(output, batch_y, reduction="sum"))
    log_lik = terms.likelihood.distribution(output, params).log_prob(batch_y)
    if log_lik.shape != (batch_x.shape[0],):
        raise ValueError(
            f"the likelihood's log_prob has shape {tuple(log_lik.shape)}, expected one value "
            f"per data point {(batch_x.shape[0],)}; use Trace_ELBO for this likelihood"
        )
    return -(log_joint + scale * log_lik.sum())
