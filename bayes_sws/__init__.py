"""bayes_sws: soft weight-sharing for PyTorch networks as a Pyro probabilistic program.

A learned mixture-of-Gaussians prior over network weights (Nowlan & Hinton 1992;
Bishop, PRML §5.5.7; Ullrich, Meeds & Welling 2017), with hyperpriors on the
mixing proportions, means and precisions. MAP by SVI with an ``AutoDelta`` guide
minimises exactly E(w) + λΩ(w); other guides give a posterior view.

With your network ``net`` and data ``x``, ``y`` (so not run as a doctest; the
README's quick start, which the tests run, is a whole program):

>>> import bayes_sws as sws  # doctest: +SKIP
>>> prior = sws.MixturePrior(num_components=16, zero_component=True)  # doctest: +SKIP
>>> model = sws.SWSModel(net, prior, likelihood="categorical", prior_scale=1.0)  # doctest: +SKIP
>>> result = sws.fit(model, x, y, guide="map", num_steps=1000, seed=0)  # doctest: +SKIP

Settings have one vocabulary (:mod:`bayes_sws.settings`):

>>> prior = sws.MixturePrior.from_settings(sws.PRESETS["ullrich2017"].prior)  # doctest: +SKIP
>>> result = sws.fit(model, x, y, settings=sws.FitSettings(num_steps=1000, seed=0))  # doctest: +SKIP
"""

from . import health
from .core import mdn, penalty
from .core.distributions import MixtureOfGaussians, OrderedNormal
from .core.likelihoods import Categorical, Gaussian, Likelihood, MixtureDensity
from .core.model import SWSModel
from .core.priors import Mixture, MixturePrior
from .devices import resolve_device
from .health import HealthWarning
from .infer.loaders import ReplayWarning
from .infer.penalty_module import SoftWeightSharing
from .infer.svi import FitResult, fit
from .settings import PRESETS, CompressSettings, FitSettings, PriorSettings

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "Categorical",
    "CompressSettings",
    "FitResult",
    "FitSettings",
    "Gaussian",
    "HealthWarning",
    "Likelihood",
    "Mixture",
    "MixtureDensity",
    "MixtureOfGaussians",
    "MixturePrior",
    "OrderedNormal",
    "PriorSettings",
    "ReplayWarning",
    "SWSModel",
    "SoftWeightSharing",
    "__version__",
    "fit",
    "health",
    "mdn",
    "penalty",
    "resolve_device",
]
