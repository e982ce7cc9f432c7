"""The one registry of guides: a name (or a builder) to a Pyro guide for a model.

======== ============================================================ =====================
name     guide                                                        kind
======== ============================================================ =====================
map      ``AutoDelta``: MAP in constrained space                     point
normal   ``AutoNormal``: mean-field Gaussian                          variational
lowrank  ``AutoLowRankMultivariateNormal``                            variational
laplace  ``AutoLaplaceApproximation``: MAP, then a Gaussian from the  variational (after fit)
         Hessian at the mode
mixed    ``AutoGuideList``: ``AutoDelta`` on the hyperparameter sites, variational
         ``AutoNormal`` on the weights
======== ============================================================ =====================

Any callable ``builder(model)`` returning a Pyro guide is accepted too, e.g.
``functools.partial(AutoNormal, init_scale=1e-2)``; if it takes an
``init_loc_fn`` keyword, it receives one that starts from the network's weights.

This module needs only Pyro and the hyperparameter site names, not the model class.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from pyro import poutine
from pyro.infer import autoguide

__all__ = ["GUIDES", "POINT_GUIDES", "build_guide", "guide_name"]

POINT_GUIDES = ("map",)


def _map(model, init_loc_fn, init_scale, hyper_sites):
    return autoguide.AutoDelta(model, init_loc_fn=init_loc_fn)


def _normal(model, init_loc_fn, init_scale, hyper_sites):
    return autoguide.AutoNormal(model, init_loc_fn=init_loc_fn, init_scale=init_scale)


def _lowrank(model, init_loc_fn, init_scale, hyper_sites):
    return autoguide.AutoLowRankMultivariateNormal(
        model, init_loc_fn=init_loc_fn, init_scale=init_scale
    )


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


def build_guide(
    guide: str | Callable,
    model: Callable,
    *,
    init_loc_fn: Callable,
    init_scale: float,
    hyper_sites: Sequence[str] = (),
):
    """Build the guide named ``guide`` (see the table above) or call a builder.

    Raises
    ------
    ValueError
        For an unknown name, listing the accepted ones.
    """
    if isinstance(guide, str):
        if guide not in GUIDES:
            raise ValueError(
                f"unknown guide {guide!r}; use one of {sorted(GUIDES)} or a callable "
                "that builds a Pyro guide from the model"
            )
        return GUIDES[guide](model, init_loc_fn, init_scale, hyper_sites)
    if not callable(guide):
        raise TypeError(f"guide must be a name {sorted(GUIDES)} or a callable, got {guide!r}")
    try:
        accepts_init = "init_loc_fn" in inspect.signature(guide).parameters
    except (TypeError, ValueError):
        accepts_init = False
    return guide(model, init_loc_fn=init_loc_fn) if accepts_init else guide(model)
