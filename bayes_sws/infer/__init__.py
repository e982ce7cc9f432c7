"""Inference: the guide registry, the SVI engine (fit), the fast MAP path and NUTS."""

from .guides import GUIDES, POINT_GUIDES, SiteMoments, build_guide, guide_moments
from .mcmc import (
    INITS,
    SAMPLE_STATS,
    MCMCResult,
    sample_nuts,
)
from .svi import (
    ON_NONFINITE,
    OPTIMIZERS,
    FaultPolicy,
    FitResult,
    FitState,
    NumericalFault,
    SVIEngine,
    VarianceCollapseWarning,
    as_data,
    batch_indices,
    fit,
    get_rng_state,
    local_params,
    set_rng_state,
    steps_per_epoch,
)

__all__ = [
    "FaultPolicy",
    "FitResult",
    "FitState",
    "GUIDES",
    "INITS",
    "MCMCResult",
    "NumericalFault",
    "ON_NONFINITE",
    "OPTIMIZERS",
    "POINT_GUIDES",
    "SAMPLE_STATS",
    "SVIEngine",
    "SiteMoments",
    "VarianceCollapseWarning",
    "as_data",
    "batch_indices",
    "build_guide",
    "fit",
    "get_rng_state",
    "guide_moments",
    "local_params",
    "sample_nuts",
    "set_rng_state",
    "steps_per_epoch",
]
