r"""The ELBO of the variational guides ``"normal"``, ``"mixed"`` and ``"lowrank"`` without Pyro tracing.

For a guide :math:`q` on the latent sites :math:`z` (weights and hyperparameters)
``Trace_ELBO`` estimates the negative ELBO with reparameterised draws,

.. math::

    \mathcal L = \frac1P \sum_{p=1}^{P} \bigl[\log q(z_p) - \log p(y, z_p \mid x)\bigr],
    \qquad z_p = T(\mathrm{loc} + \mathrm{scale} \odot \varepsilon_p),
    \quad \varepsilon_p \sim \mathcal N(0, I),

with :math:`T` = ``biject_to(support)`` of each site and
:math:`\log q(z) = \log \mathcal N(u \mid \mathrm{loc}, \mathrm{scale}^2) - \log|\det J_T(u)|`
for an ``AutoNormal`` site (a point mass, :math:`\log q = 0`, for an ``AutoDelta`` site).
:func:`elbo_loss` computes what
``Trace_ELBO(num_particles=P, vectorize_particles=True).differentiable_loss(model, guide,
x, y, subsample)`` computes for an ``AutoNormal`` guide, or an ``AutoGuideList`` of
``AutoNormal`` and ``AutoDelta`` parts (``"mixed"``: point estimates of the
hyperparameters), directly: it draws the same :math:`\varepsilon` from torch's RNG in
the same order and shapes as the guide does (site by site in the guide's order; all
particles of a site in one draw when they are vectorised, particle by particle when
not), so with the same seed the loss and its gradients are ``Trace_ELBO``'s to rounding
(``tests/infer/test_fastvi.py``). The log joint is :mod:`bayes_sws.infer.fastmap`'s
(:func:`~bayes_sws.infer.fastmap.negative_log_joint`: the fused prior kernel for
every weight tensor in one call). The Gaussian term is written with
:math:`(u - \mathrm{loc}) / \mathrm{scale} = \varepsilon`,

.. math::

    \log \mathcal N(u \mid \mathrm{loc}, \mathrm{scale}^2) = -\tfrac12 \textstyle\sum \varepsilon^2
    - \sum \log \mathrm{scale} - n \log\sqrt{2\pi},

the same value and gradients as torch's ``Normal.log_prob`` of the draw (whose path
derivatives through :math:`u` cancel), without its rounding of :math:`u - \mathrm{loc}`.

``"lowrank"`` (``AutoLowRankMultivariateNormal``) is one Gaussian on all sites' packed
unconstrained values, :math:`u = \mathrm{loc} + W\varepsilon_W + s\odot\varepsilon_D` with
:math:`W = C\,\mathrm{diag}(s)` (the guide's ``cov_factor`` :math:`C`, D × r, scaled row by
row by its ``scale`` :math:`s`) and covariance :math:`\Sigma = WW^\top + \mathrm{diag}(s^2)`.
Torch's ``LowRankMultivariateNormal.log_prob`` forms :math:`W^\top\mathrm{diag}(s^{-2})W`
from strided copies; here, with :math:`v = C\varepsilon_W + \varepsilon_D` (so
:math:`u - \mathrm{loc} = s\odot v`) and :math:`L` the Cholesky factor of
:math:`I_r + C^\top C` (the same capacitance, since
:math:`W^\top\mathrm{diag}(s^{-2})W = C^\top C`), the Woodbury identity and the matrix
determinant lemma give

.. math::

    \log q(u) = -\tfrac12\lVert v\rVert^2 + \tfrac12\lVert L^{-1}C^\top v\rVert^2
    - \textstyle\sum\log s - \sum\log\mathrm{diag}\,L - D\log\sqrt{2\pi},

the same function of :math:`(\varepsilon, \mathrm{loc}, s, C)` in D·r² operations on
contiguous arrays (on LeNet-300-100's 266,246 dimensions at r = 10, torch's distribution
alone took 107 ms a step, mostly strided copies, and a whole step of this path 49 ms;
``BENCHMARKS.md``). Each site's slice of :math:`u` then goes through its bijection as for
``AutoNormal``.

When validation is on (Pyro's default) a loss that is not finite is handed to
``Trace_ELBO`` with torch's RNG put back as it was, so Pyro draws the same
:math:`\varepsilon` and fails (or warns) with its own message naming the site.

``bayes_sws.fit`` uses it for the guides :func:`supports_fast_elbo` accepts; set the
environment variable ``BAYES_SWS_FAST_ELBO=0`` to make it use ``Trace_ELBO`` instead
(:func:`fast_elbo_enabled`). In a training loop::

    loss_fn = elbo_loss if supports_fast_elbo(model, guide) else elbo.differentiable_loss
    loss = loss_fn(model, guide, x, y, index)
"""

from __future__ import annotations

import math
import os
import weakref
from typing import Any, NamedTuple

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer.autoguide import AutoDelta, AutoGuideList, AutoLowRankMultivariateNormal, AutoNormal
from torch import Tensor
from torch.distributions import biject_to
from torch.distributions.transforms import (
    ComposeTransform,
    ExpTransform,
    IndependentTransform,
    SigmoidTransform,
)

from ..core.model import SWSModel
from .fastmap import (
    ModelTerms,
    ParamReader,
    Validation,
    direct_transform,
    latent_sites_reason,
    model_unsupported_reason,
    negative_log_joint,
    pyro_loss,
    supports_fast_map,
)
from .guides import LowRankGuide

__all__ = [
    "FAST_ELBO_ENV",
    "elbo_loss",
    "fast_elbo_enabled",
    "fast_path",
    "supports_fast_elbo",
    "unsupported_reason",
]

#: Environment variable: ``0`` makes ``fit`` evaluate variational guides with ``Trace_ELBO``.
FAST_ELBO_ENV = "BAYES_SWS_FAST_ELBO"

_HALF_LOG_2PI = math.log(math.sqrt(2 * math.pi))  # as torch's Normal.log_prob


def fast_elbo_enabled() -> bool:
    """Whether ``fit`` may use :func:`elbo_loss` (``BAYES_SWS_FAST_ELBO`` is not ``0``)."""
    return os.environ.get(FAST_ELBO_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


# --------------------------------------------------------------------------- #
# When the fast path applies
# --------------------------------------------------------------------------- #


#: the lowrank guides the fast path knows: Pyro's, and the registry's column-major one
_LOWRANK = (AutoLowRankMultivariateNormal, LowRankGuide)


def _parts(guide) -> list | None:
    """The guide's ``AutoNormal`` / ``AutoDelta`` parts in the order they run (or the
    ``AutoLowRankMultivariateNormal`` itself), or ``None``."""
    if type(guide) is AutoNormal or type(guide) in _LOWRANK:
        return [guide]
    if type(guide) is AutoGuideList and len(guide) > 0:
        parts = list(guide)
        if all(type(part) in (AutoNormal, AutoDelta) for part in parts):
            return parts
    return None


def unsupported_reason(model, guide) -> str | None:
    """Why :func:`elbo_loss` cannot stand in for ``Trace_ELBO`` here, or ``None`` if it can.

    The model and settings as for :func:`bayes_sws.infer.fastmap.unsupported_reason`
    (an :class:`~bayes_sws.core.model.SWSModel` running the library's program,
    module-local Pyro parameters); the guide a plain ``AutoNormal``, a plain
    ``AutoLowRankMultivariateNormal`` or an ``AutoGuideList`` of plain ``AutoNormal``
    and ``AutoDelta`` guides (``"normal"``, ``"lowrank"`` and ``"mixed"`` of
    :data:`bayes_sws.infer.guides.GUIDES`), without
    ``create_plates``, whose latent sites are the model's, each in one part and
    outside any plate.
    """
    reason = model_unsupported_reason(model)
    if reason is not None:
        return reason
    parts = _parts(guide)
    if parts is None:
        return (
            f"the guide is a {type(guide).__name__}, not a pyro AutoNormal, an "
            "AutoLowRankMultivariateNormal or an AutoGuideList of AutoNormal and AutoDelta guides"
        )
    found: set[str] = set()
    for part in [guide, *parts]:
        if part.create_plates is not None:
            return "the guide has create_plates"
    for part in parts:
        if part.prototype_trace is None:
            return None  # set up by the first call (Trace_ELBO's), then checked
        for name, site in part.prototype_trace.iter_stochastic_nodes():
            if any(frame.vectorized for frame in site["cond_indep_stack"]):
                return f"the guide's site {name!r} is inside a plate"
            if name in found:
                return f"the guide's site {name!r} is in two of its parts"
            found.add(name)
    return latent_sites_reason(model, found)


def supports_fast_elbo(model, guide) -> bool:
    """Whether :func:`elbo_loss` computes ``Trace_ELBO``'s loss for this model and guide.

    See :func:`unsupported_reason` for the conditions.
    """
    return unsupported_reason(model, guide) is None


def fast_path(model, guide) -> str | None:
    """Which untraced loss stands in for ``Trace_ELBO`` here, as ``fit`` and Lightning choose:
    ``"map"`` (:func:`~bayes_sws.infer.fastmap.map_loss`, where
    :func:`~bayes_sws.infer.fastmap.supports_fast_map` holds), ``"elbo"`` (:func:`elbo_loss`,
    where :func:`supports_fast_elbo` holds and :func:`fast_elbo_enabled`), else ``None``."""
    if supports_fast_map(model, guide):
        return "map"
    if fast_elbo_enabled() and supports_fast_elbo(model, guide):
        return "elbo"
    return None


# --------------------------------------------------------------------------- #
# Per-(model, guide) work, done once
# --------------------------------------------------------------------------- #


def _base(transform):
    while type(transform) is IndependentTransform:
        transform = transform.base_transform
    return transform


def _is_identity(transform) -> bool:
    """``biject_to(real)`` (possibly ``Independent``): an empty composition."""
    base = _base(transform)
    return type(base) is ComposeTransform and not base.parts


def _neg(u: Tensor) -> Tensor:
    return -u


def _sigmoid_log_density(u: Tensor) -> Tensor:
    return F.softplus(-u) + F.softplus(u)


#: ``transform.inv.log_abs_det_jacobian(transform(u), u)`` as a function of ``u`` alone,
#: torch's own formulas (exp: ``-u``; sigmoid: ``softplus(-u) + softplus(u)``)
_LOG_DENSITY = {ExpTransform: _neg, SigmoidTransform: _sigmoid_log_density}


class _Bijection(NamedTuple):
    """A Gaussian site's ``biject_to(support)``: the map, and ``log|det J|`` of its inverse."""

    forward: Any
    log_density: Any  # (z, u) -> Tensor


def _bijection(transform) -> _Bijection:
    """The map as a plain function, and the log-density term of the guide's Delta site
    (summed over every dimension by the caller): a closed form where torch's is one."""
    closed = _LOG_DENSITY.get(type(_base(transform)))
    if closed is not None:
        return _Bijection(direct_transform(transform), lambda z, u: closed(u))
    return _Bijection(direct_transform(transform), transform.inv.log_abs_det_jacobian)


def _site_bijection(site) -> _Bijection | None:
    """A guide site's map from its unconstrained value (``None``: the identity)."""
    transform = biject_to(site["fn"].support)
    return None if _is_identity(transform) else _bijection(transform)


class _Part:
    """Where one part of the guide keeps its parameters, and its sites' transforms."""

    def __init__(self, index: int | None, part):
        self.index = index
        self.normal = type(part) is AutoNormal
        names = [name for name, _ in part.prototype_trace.iter_stochastic_nodes()]
        if self.normal:
            self.locs = ParamReader(part.locs, names)
            self.scales = ParamReader(part.scales, names)
            self.transforms = {
                name: _site_bijection(site)
                for name, site in part.prototype_trace.iter_stochastic_nodes()
            }
        else:
            self.values = ParamReader(part, names)

    def module(self, guide):
        return guide if self.index is None else guide[self.index]


class _LowRank:
    """An ``AutoLowRankMultivariateNormal``'s packed latent: each site's slice, shape and map."""

    def __init__(self, guide):
        self.sites: list[tuple[str, int, int, tuple[int, ...], _Bijection | None]] = []
        start = 0
        for name, site in guide.prototype_trace.iter_stochastic_nodes():
            shape = tuple(guide._unconstrained_shapes[name])
            stop = start + math.prod(shape)
            self.sites.append((name, start, stop, shape, _site_bijection(site)))
            start = stop
        self.size = start


class _Plan(ModelTerms):
    """What :func:`elbo_loss` needs from one (model, guide) pair, resolved once.

    Holds no reference to the guide (the key of a weak cache), only weak ones
    to its parts' prototype traces, to notice a guide set up again.
    """

    def __init__(self, model: SWSModel, guide, like: Tensor):
        super().__init__(model, like)
        parts = _parts(guide)
        assert parts is not None
        self.lowrank = _LowRank(guide) if type(guide) in _LOWRANK else None
        single = type(guide) is AutoNormal
        self.parts = (
            [_Part(None if single else i, part) for i, part in enumerate(parts)]
            if self.lowrank is None
            else []
        )
        self.prototypes = [weakref.ref(part.prototype_trace) for part in parts]

    def matches_guide(self, model: SWSModel, guide, like: Tensor) -> bool:
        if not self.matches(model, like):
            return False
        parts = _parts(guide)
        return (
            parts is not None
            and len(parts) == len(self.prototypes)
            and all(p.prototype_trace is ref() for p, ref in zip(parts, self.prototypes))
        )

    def read(self, guide) -> tuple[dict[str, Tensor], list[tuple[str, Tensor, Tensor, Any]]]:
        """The point-mass sites' values, and ``(name, loc, scale, transform)`` of the
        Gaussian sites in the order the guide samples them."""
        fixed: dict[str, Tensor] = {}
        normals = []
        for part in self.parts:
            module = part.module(guide)
            if not part.normal:
                fixed.update(part.values(module))
                continue
            locs, scales = part.locs(module.locs), part.scales(module.scales)
            normals += [(name, locs[name], scales[name], t) for name, t in part.transforms.items()]
        return fixed, normals


_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _plan(model, guide, like) -> _Plan | None:
    """The cached plan of this (model, guide), checked still to fit; ``None`` while the
    guide has not run yet (its first call is ``Trace_ELBO``'s, which sets it up)."""
    try:
        plan = _PLANS.get(guide)
    except TypeError:  # not weak-referenceable, so not a Pyro guide either
        plan = None
    if (
        plan is not None
        and plan.matches_guide(model, guide, like)
        and pyro.settings.get("module_local_params")
    ):
        return plan
    reason = unsupported_reason(model, guide)
    if reason is not None:
        raise ValueError(
            f"elbo_loss cannot evaluate this model and guide: {reason}. "
            "Use pyro.infer.Trace_ELBO().differentiable_loss instead"
        )
    parts = _parts(guide)
    if guide.prototype_trace is None or any(p.prototype_trace is None for p in parts or ()):
        return None
    plan = _PLANS[guide] = _Plan(model, guide, like)
    return plan


# --------------------------------------------------------------------------- #
# The loss
# --------------------------------------------------------------------------- #


def _standard_normal(shape, like: Tensor) -> Tensor:
    """ε as ``Normal.rsample`` draws it (torch's ``_standard_normal``, outside jit tracing)."""
    return torch.empty(shape, dtype=like.dtype, device=like.device).normal_()


def _draws(normals, num_particles: int, vectorize: bool) -> list[list[Tensor]]:
    """ε of every Gaussian site for every particle, drawn as the guide under
    ``Trace_ELBO`` draws them: per site in the guide's order, the particles of a site in
    one ``(P, 1, *shape)`` draw when vectorised (the particle plate at dim -2), else
    one guide run (every site) per particle."""
    if vectorize and num_particles > 1:
        blocks = [_standard_normal((num_particles, 1) + loc.shape, loc) for _, loc, _, _ in normals]
        return [[block[p, 0] for block in blocks] for p in range(num_particles)]
    return [
        [_standard_normal(loc.shape, loc) for _, loc, _, _ in normals] for _ in range(num_particles)
    ]


def _particle(plan: _Plan, fixed, normals, eps, base_log_q, like, x, y, subsample, num_data):
    """:math:`\\log q(z) - \\log p(y, z \\mid x)` for one particle's ε."""
    values = dict(fixed)
    log_q = base_log_q
    for (name, loc, scale, transform), e in zip(normals, eps):
        u = loc + e * scale  # as Normal.rsample
        log_q = log_q - 0.5 * (e * e).sum()
        if transform is None:
            values[name] = u
        else:  # the Delta site of AutoNormal: log_density = log|det J| of the inverse
            z = transform.forward(u)
            values[name] = z
            log_q = log_q + transform.log_density(z, u).sum()
    return negative_log_joint(plan, values, like, x, y, subsample, num_data) + log_q


class _LowRankTerms(torch.autograd.Function):
    r"""The lowrank guide's draws and their log-density terms, with hand-written gradients.

    For the factor :math:`C` (D × r) and the particles' standard normal draws
    :math:`E_W` (P × r) and :math:`E_D` (P × D), returns
    :math:`V = E_D + E_W C^\top` (row p: :math:`v_p = C\varepsilon_{W,p} + \varepsilon_{D,p}`)
    and :math:`t_p = \tfrac12 a_p^\top K^{-1} a_p - \tfrac12\log\det K` with
    :math:`a_p = C^\top v_p` and :math:`K = I + C^\top C`, so that
    :math:`\log q = -\tfrac12\lVert v_p\rVert^2 + t_p - \sum\log s - D\log\sqrt{2\pi}`.
    With :math:`b_p = K^{-1}a_p`, upstream gradients :math:`g_V, g_t` and
    :math:`\tilde g_{V,p} = g_{V,p} + g_{t,p} C b_p`,

    .. math::

        \frac{\partial}{\partial C} = \tilde g_V^\top E_W + V^\top (g_t \odot B)
        - C\,\bigl(B^\top \mathrm{diag}(g_t) B + (\textstyle\sum_p g_{t,p}) K^{-1}\bigr),

    one product of C with an r × r matrix instead of autograd's two and their transposed
    copies (``tests/infer/test_fastvi.py`` checks it against ``Trace_ELBO``). Every
    product takes :math:`C^\top` (r × D) as its operand and the gradient is formed as its
    r × D transpose: with :class:`~bayes_sws.infer.guides.LowRankGuide`'s column-major
    factor these are contiguous, and the gradient arrives in the parameter's own layout.
    """

    @staticmethod
    def forward(ctx, factor, eps_w, eps_d):
        rank = factor.shape[-1]
        ct = factor.T  # r × D: contiguous for LowRankGuide's column-major factor
        identity = torch.eye(rank, dtype=factor.dtype, device=factor.device)
        chol = torch.linalg.cholesky(torch.addmm(identity, ct, ct.T))
        draws = torch.addmm(eps_d, eps_w, ct)  # V
        projected = draws @ ct.T  # A
        solved = torch.cholesky_solve(projected.T, chol).T  # B
        terms = 0.5 * (projected * solved).sum(-1) - chol.diagonal().log().sum()
        ctx.save_for_backward(factor, eps_w, draws, solved, chol)
        return draws, terms

    @staticmethod
    def backward(ctx, grad_draws, grad_terms):
        factor, eps_w, draws, solved, chol = ctx.saved_tensors
        ct = factor.T
        if grad_draws is None:
            grad_draws = torch.zeros_like(draws)
        if grad_terms is None:
            grad_terms = draws.new_zeros(draws.shape[0])
        weighted = solved * grad_terms[:, None]  # g_t ⊙ B
        total = torch.addmm(grad_draws, weighted, ct)  # g̃_V
        inner = weighted.T @ solved + grad_terms.sum() * torch.cholesky_inverse(chol)
        # the gradient's transpose, r × D, laid out as ct is: (-C S)ᵀ + E_Wᵀ g̃_V + (g_t ⊙ B)ᵀ V
        grad_t = torch.mm(-inner.T, ct)
        grad_t.addmm_(eps_w.T, total).addmm_(weighted.T, draws)
        return grad_t.T, None, None


def _lowrank_losses(plan: _Plan, guide, like, x, y, subsample, num_data, particles, vectorize):
    """Every particle's :math:`\\log q(z) - \\log p(y, z \\mid x)` for the lowrank guide,
    with ε drawn as ``LowRankMultivariateNormal.rsample`` draws them (``ε_W`` then ``ε_D``;
    all particles in one ``(P, 1, ·)`` draw each when vectorised)."""
    layout = plan.lowrank
    assert layout is not None
    loc, scale, factor = guide.loc, guide.scale, guide.cov_factor
    rank, size = factor.shape[-1], layout.size
    if vectorize and particles > 1:
        eps_w = _standard_normal((particles, 1, rank), loc).view(particles, rank)
        eps_d = _standard_normal((particles, 1, size), loc).view(particles, size)
    else:
        pairs = [
            (_standard_normal((rank,), loc), _standard_normal((size,), loc))
            for _ in range(particles)
        ]
        eps_w = torch.stack([w for w, _ in pairs])
        eps_d = torch.stack([d for _, d in pairs])
    draws, terms = _LowRankTerms.apply(factor, eps_w, eps_d)
    base = -scale.log().sum() - size * _HALF_LOG_2PI
    losses = []
    for v, term in zip(draws, terms):  # v = Σ_D^{-1/2} (u - loc)
        log_q = base - 0.5 * v.dot(v) + term
        u_all = loc + scale * v
        values = {}
        for name, start, stop, shape, bijection in layout.sites:
            u = u_all[start:stop].view(shape)
            if bijection is None:
                values[name] = u
            else:  # the Delta site of AutoContinuous: log|det J| of the inverse
                values[name] = z = bijection.forward(u)
                log_q = log_q + bijection.log_density(z, u).sum()
        losses.append(negative_log_joint(plan, values, like, x, y, subsample, num_data) + log_q)
    return losses


def _rng_state(device: torch.device) -> Tensor:
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    return torch.get_rng_state()


def _set_rng_state(device: torch.device, state: Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def elbo_loss(
    model: SWSModel,
    guide,
    x: Tensor,
    y: Tensor,
    subsample: Tensor | None = None,
    num_data: int | None = None,
    num_particles: int = 1,
    vectorize_particles: bool = True,
) -> Tensor:
    r"""The negative ELBO estimate of ``Trace_ELBO`` for an ``AutoNormal`` or ``"mixed"`` guide.

    Equal to ``Trace_ELBO(num_particles=num_particles, vectorize_particles=
    vectorize_particles, max_plate_nesting=1).differentiable_loss(model, guide, x, y,
    subsample)`` run from the same state of torch's RNG, in value and gradients
    (tested to 1e-10 in float64 and 1e-5 in float32), and it leaves the RNG in the
    same state; without tracing the model or the guide (formulas in the module's
    documentation).

    Parameters
    ----------
    model : SWSModel
        The model the guide was built for; :func:`supports_fast_elbo` must hold.
    guide : AutoNormal or AutoGuideList
        Its parameters are read, not copied, so gradients reach them. If it has
        never run, this call is ``Trace_ELBO``'s, which sets it up.
    x, y, subsample, num_data
        As for :func:`bayes_sws.infer.fastmap.map_loss`.
    num_particles : int
        Draws averaged (``Trace_ELBO``'s ``num_particles``).
    vectorize_particles : bool
        Draw them as ``Trace_ELBO(vectorize_particles=True)`` does (``fit``'s ELBO),
        or one guide run after another (``False``). No effect for one particle.

    Returns
    -------
    Tensor
        0-dim loss in the network's dtype, differentiable.

    Raises
    ------
    ValueError
        When :func:`supports_fast_elbo` does not hold, with the reason.
    """
    like = model.like_tensor() if isinstance(model, SWSModel) else None
    plan = _plan(model, guide, like)
    args = (x, y, subsample, num_data, num_particles, vectorize_particles)
    if plan is None:
        return pyro_loss(model, guide, *args)
    assert like is not None
    validate = dist.is_validation_enabled()
    state = _rng_state(like.device) if validate else None
    with Validation(False):
        if plan.lowrank is not None:
            losses = _lowrank_losses(plan, guide, like, *args)
        else:
            losses = _mean_field_losses(plan, guide, like, *args)
    loss = losses[0] if num_particles == 1 else sum(losses) / num_particles
    if validate and not math.isfinite(loss.item()):
        # the slow path validates every site: Pyro's own error naming the site, or its warning
        assert state is not None
        _set_rng_state(like.device, state)  # Pyro draws the same ε
        return pyro_loss(model, guide, *args)
    return loss


def _mean_field_losses(plan: _Plan, guide, like, x, y, subsample, num_data, particles, vectorize):
    """Every particle's loss for the ``"normal"`` and ``"mixed"`` guides."""
    fixed, normals = plan.read(guide)
    size = sum(loc.numel() for _, loc, _, _ in normals)
    base_log_q = -sum(scale.log().sum() for _, _, scale, _ in normals) - size * _HALF_LOG_2PI
    return [
        _particle(plan, fixed, normals, eps, base_log_q, like, x, y, subsample, num_data)
        for eps in _draws(normals, particles, vectorize)
    ]
