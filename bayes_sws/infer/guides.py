"""The one registry of guides: a name (or a builder) to a Pyro guide for a model.

======== ============================================================ =====================
name     guide                                                        kind
======== ============================================================ =====================
map      ``AutoDelta``: MAP in constrained space                      point
normal   ``AutoNormal``: mean-field Gaussian                          variational
lowrank  ``AutoLowRankMultivariateNormal`` (:class:`LowRankGuide`)    variational
laplace  ``AutoLaplaceApproximation``: MAP, then a Gaussian from the  variational (after fit)
         Hessian at the mode
mixed    ``AutoGuideList``: ``AutoDelta`` on the hyperparameter       variational
         sites, ``AutoNormal`` on the weights
======== ============================================================ =====================

Any callable ``builder(model)`` returning a Pyro guide is accepted too, e.g.
``functools.partial(AutoNormal, init_scale=1e-2)``; if it takes an
``init_loc_fn`` keyword, it receives one that starts from the network's weights.

:func:`guide_moments` reads any of these guides' Gaussian moments through one public
call (Pyro keeps them in guide-specific places, some private).

This module needs only Pyro and the hyperparameter site names, not the model class.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import autoguide
from torch import Tensor
from torch.distributions import biject_to

from ..validation import check_int

__all__ = [
    "GUIDES",
    "LowRankGuide",
    "POINT_GUIDES",
    "SiteMoments",
    "build_guide",
    "check_guide_rank",
    "default_rank_cost",
    "warn_default_rank_cost",
    "guide_moments",
    "guide_name",
    "local_params",
    "split_guide_parameters",
]

POINT_GUIDES = ("map",)


def split_guide_parameters(
    guide: torch.nn.Module, hyper_sites: Sequence[str]
) -> tuple[list[tuple[str, Tensor]], list[tuple[str, Tensor]]]:
    """``guide``'s named parameters as ``(weights, hyperparameters)``, for two Adam groups.

    A parameter is a hyperparameter's when its name holds one of ``hyper_sites`` (an
    :class:`~bayes_sws.SWSModel`'s ``hyper_site_names``: its mixtures' and likelihood's
    sites), as autoguides name theirs (``"locs.sws.mixing"``, ``"scales.sws.means"``);
    every other parameter, including one joint over all sites (the ``loc`` of
    ``AutoLowRankMultivariateNormal``), goes with the weights.
    """
    weights: list[tuple[str, Tensor]] = []
    hyper: list[tuple[str, Tensor]] = []
    for name, param in guide.named_parameters():
        (hyper if any(site in name for site in hyper_sites) else weights).append((name, param))
    return weights, hyper


def local_params():
    """Context in which Pyro modules keep their parameters to themselves (no global store)."""
    return pyro.settings.context(module_local_params=True)


def _map(model, init_loc_fn, init_scale, hyper_sites):
    return autoguide.AutoDelta(model, init_loc_fn=init_loc_fn)


def _normal(model, init_loc_fn, init_scale, hyper_sites):
    return autoguide.AutoNormal(model, init_loc_fn=init_loc_fn, init_scale=init_scale)


class LowRankGuide(autoguide.AutoLowRankMultivariateNormal):
    """``AutoLowRankMultivariateNormal`` with its factor stored column by column.

    The same guide, parameters, initial values and random draws; only the memory
    layout of ``cov_factor`` (D × r) differs: column-major (strides ``(1, D)``, the
    transpose of a contiguous r × D tensor) instead of row-major. The products
    with it that dominate a step of the fast ELBO (:mod:`bayes_sws.infer.fastvi`:
    ``CᵀC``, ``C S``, ``vᵀC``) then run on a contiguous r × D operand, 2–4× faster
    on CPU for small r than on the tall, skinny row-major factor, and its gradient
    needs no transposed copy. Adam keeps its state in the same layout. Pyro's own
    code (``Trace_ELBO``, ``get_posterior``) works on either layout.
    """

    def _setup_prototype(self, *args, **kwargs):
        super()._setup_prototype(*args, **kwargs)
        factor = self.cov_factor.detach()
        self.cov_factor = torch.nn.Parameter(factor.T.contiguous().T)


def _lowrank(model, init_loc_fn, init_scale, hyper_sites, rank=None):
    return LowRankGuide(model, init_loc_fn=init_loc_fn, init_scale=init_scale, rank=rank)


def _laplace(model, init_loc_fn, init_scale, hyper_sites):
    return autoguide.AutoLaplaceApproximation(model, init_loc_fn=init_loc_fn)


def _mixed(model, init_loc_fn, init_scale, hyper_sites):
    guide = autoguide.AutoGuideList(model)
    guide.append(
        autoguide.AutoDelta(poutine.block(model, expose=list(hyper_sites)), init_loc_fn=init_loc_fn)
    )
    guide.append(
        autoguide.AutoNormal(
            poutine.block(model, hide=list(hyper_sites)),
            init_loc_fn=init_loc_fn,
            init_scale=init_scale,
        )
    )
    return guide


GUIDES: dict[str, Callable[..., Any]] = {
    "map": _map,
    "normal": _normal,
    "lowrank": _lowrank,
    "laplace": _laplace,
    "mixed": _mixed,
}


def guide_name(guide: str | Callable) -> str:
    """A readable name for a guide argument (the registry name or the builder's name)."""
    if isinstance(guide, str):
        return guide
    name = getattr(guide, "__name__", None) or getattr(
        getattr(guide, "func", None), "__name__", "custom"
    )
    return str(name)


def check_guide_rank(guide: str | Callable, rank: Any) -> int | None:
    """``rank`` checked: ``None``, or an integer ≥ 1 for ``guide="lowrank"`` (its factor's rank).

    Raises
    ------
    ValueError
        For a rank below 1, or a rank with any other guide (naming it).
    """
    if rank is None:
        return None
    rank = check_int("guide_rank", rank, low=1)
    if guide != "lowrank":
        raise ValueError(
            f"guide_rank={rank} sets the rank of guide='lowrank' only, but the guide is "
            f"{guide_name(guide)!r}: drop guide_rank (a custom builder takes its own options)"
        )
    return rank


#: multiply-adds a step above which Pyro's default lowrank rank is flagged (about a second here)
DEFAULT_RANK_WARN_COST = 1e10


def default_rank_cost(guide: str | Callable, rank: int | None, num_latent: int) -> str | None:
    """A warning when ``"lowrank"`` at Pyro's default rank would make every step slow, or ``None``.

    Pyro's default rank is :math:`r = \\sqrt{D}` rounded, for :math:`D` latent dimensions;
    a step of its ELBO costs about :math:`D r^2 \\approx D^2` multiply-adds (the capacitance
    :math:`C^\\top C`, :mod:`bayes_sws.infer.fastvi`) and the factor holds :math:`D r` numbers.
    Flagged above :data:`DEFAULT_RANK_WARN_COST`, with the remedy.
    """
    if guide != "lowrank" or rank is not None:
        return None
    default = round(num_latent**0.5)
    cost = num_latent * default**2
    if cost <= DEFAULT_RANK_WARN_COST:
        return None
    return (
        f"guide='lowrank' at Pyro's default rank {default} (the square root of about "
        f"{num_latent:,} latent dimensions): a covariance factor of {num_latent * default:,} "
        f"numbers and about {cost:.1e} multiply-adds a step; pass guide_rank (e.g. 10) for a "
        "cheaper one"
    )


def warn_default_rank_cost(
    guide: str | Callable, rank: int | None, weights: Iterable[Tensor], stacklevel: int
) -> None:
    """Warn (``UserWarning``) with :func:`default_rank_cost`'s message for the tensors
    ``weights`` under the prior (the guide's latent dimensions, less the few of the mixture);
    nothing when there is none. ``stacklevel`` as for :func:`warnings.warn`, plus one."""
    message = default_rank_cost(guide, rank, sum(w.numel() for w in weights))
    if message is not None:
        warnings.warn(message, UserWarning, stacklevel=stacklevel + 1)


def build_guide(
    guide: str | Callable,
    model: Callable,
    *,
    init_loc_fn: Callable,
    init_scale: float,
    hyper_sites: Sequence[str] = (),
    rank: int | None = None,
):
    """Build the guide named ``guide`` (see the table above) or call a builder.

    ``rank`` is the covariance factor's rank of ``"lowrank"`` (``None``: Pyro's
    default, the square root of the number of latent dimensions) and is refused
    with any other guide (:func:`check_guide_rank`).

    Raises
    ------
    ValueError
        For an unknown name, listing the accepted ones, or a misplaced ``rank``.
    """
    rank = check_guide_rank(guide, rank)
    if isinstance(guide, str):
        if guide not in GUIDES:
            raise ValueError(
                f"unknown guide {guide!r}; use one of {sorted(GUIDES)} or a callable "
                "that builds a Pyro guide from the model"
            )
        options = {} if rank is None else {"rank": rank}
        return GUIDES[guide](model, init_loc_fn, init_scale, hyper_sites, **options)
    if not callable(guide):
        raise TypeError(f"guide must be a name {sorted(GUIDES)} or a callable, got {guide!r}")
    try:
        accepts_init = "init_loc_fn" in inspect.signature(guide).parameters
    except (TypeError, ValueError):
        accepts_init = False
    return guide(model, init_loc_fn=init_loc_fn) if accepts_init else guide(model)


# ---------------------------------------------------------------------- moments
@dataclass(frozen=True)
class SiteMoments:
    """A latent site's Gaussian moments in the guide's unconstrained space, and its median.

    Every guide here is a Gaussian (a point mass for ``"map"``) on the site's
    unconstrained value :math:`u = T^{-1}(z)`, with :math:`T` = ``biject_to(support)``:
    ``loc`` is its mean, ``scale`` its marginal standard deviation (zeros for a point
    mass), both shaped as ``u``. ``median`` is :math:`T(\text{loc})`, the constrained
    posterior median (for the simplex of ``sws.mixing``, ``u`` has one entry fewer).
    """

    loc: Tensor
    scale: Tensor
    median: Tensor


def guide_moments(guide: Any) -> dict[str, SiteMoments]:
    """The :class:`SiteMoments` of every latent site of a fitted guide, detached.

    Works for the guides of :data:`GUIDES` (``AutoDelta``, ``AutoNormal``, the
    multivariate ``AutoContinuous`` guides of ``"lowrank"`` and ``"laplace"``'s
    posterior, and ``AutoGuideList`` of these). Call it where the guide's
    parameters live: the guides ``fit`` returns keep them to themselves
    (:func:`local_params`, entered here).

    Raises
    ------
    TypeError
        For another kind of guide, naming it.
    """
    if isinstance(guide, autoguide.AutoGuideList):
        found: dict[str, SiteMoments] = {}
        for part in guide:
            found.update(guide_moments(part))
        return found
    with local_params(), torch.no_grad():
        if isinstance(guide, autoguide.AutoDelta):
            locs = {
                name: _unconstrained(guide, name, value) for name, value in guide.median().items()
            }
            scales = {name: torch.zeros_like(loc) for name, loc in locs.items()}
        elif isinstance(guide, autoguide.AutoNormal):
            names = [name for name, _ in guide.prototype_trace.iter_stochastic_nodes()]
            locs = {name: attrgetter(name)(guide.locs) for name in names}
            scales = {name: attrgetter(name)(guide.scales) for name in names}
        elif isinstance(guide, autoguide.AutoContinuous):
            posterior = guide.get_posterior()
            locs = _unpacked(guide, posterior.mean)
            scales = _unpacked(guide, posterior.variance.sqrt())
        else:
            raise TypeError(
                f"guide_moments reads the guides of bayes_sws.infer.guides.GUIDES "
                f"(AutoDelta, AutoNormal, AutoContinuous and lists of them), "
                f"not {type(guide).__name__}"
            )
        return {
            name: SiteMoments(
                loc.detach().clone(),
                scales[name].detach().clone(),
                _constrained(guide, name, loc).detach().clone(),
            )
            for name, loc in locs.items()
        }


def _support_transform(guide: Any, name: str):
    return biject_to(guide.prototype_trace.nodes[name]["fn"].support)


def _unconstrained(guide: Any, name: str, value: Tensor) -> Tensor:
    return _support_transform(guide, name).inv(value)


def _constrained(guide: Any, name: str, value: Tensor) -> Tensor:
    return _support_transform(guide, name)(value)


def _unpacked(guide: autoguide.AutoContinuous, latent: Tensor) -> dict[str, Tensor]:
    """A flat latent vector cut into its sites' unconstrained values (Pyro's layout)."""
    return {site["name"]: value for site, value in guide._unpack_latent(latent)}
