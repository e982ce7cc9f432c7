"""Inference: the guide registry, the SVI engine (fit), the fast MAP path and NUTS."""

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
    "INITS",
    "MCMCResult",
    "NumericalFault",
    "ON_NONFINITE",
    "OPTIMIZERS",
    "SAMPLE_STATS",
    "SVIEngine",
    "VarianceCollapseWarning",
    "as_data",
    "batch_indices",
    "fit",
    "get_rng_state",
    "local_params",
    "sample_nuts",
    "set_rng_state",
    "steps_per_epoch",
]
