"""The posterior view: ArviZ conversion (the one place importing arviz) and plots."""

from ..health import HealthWarning, check_nuts  # noqa: F401
from .posterior import (  # noqa: F401
    MIXTURE_VARS,
    load_arviz,
    plot_hyperposterior,
    plot_loss,
    plot_mixture_over_histogram,
    plot_weights_before_after,
    predictive_draws,
    summary,
    to_inference_data,
)

__all__ = [
    "MIXTURE_VARS",
    "load_arviz",
    "plot_hyperposterior",
    "plot_loss",
    "plot_mixture_over_histogram",
    "plot_weights_before_after",
    "predictive_draws",
    "summary",
    "to_inference_data",
]
