"""The Pyro site names of the model, in one place.

Every module that builds, reads or converts a trace of
:class:`bayes_sws.core.model.SoftWeightSharingModel` names its sites with these
constants, never with string literals:

==========================  =====================================================
``sws.pi_zero``             π₀ of the zero component, ``Beta`` prior (:data:`PI_ZERO`)
``sws.mixing``              mixing proportions, ``Dirichlet`` prior (:data:`MIXING`)
``sws.means``               component means μ, ``Normal`` prior (:data:`MEANS`)
``sws.precisions``          precisions 1/σ², ``Gamma`` prior (:data:`PRECISIONS`)
``sws.pi``, ``sws.mu``,     the assembled mixture, deterministic sites of shape
``sws.sigma``               ``(M,)`` (:data:`PI`, :data:`MU`, :data:`SIGMA`)
``sws.<group>.<name>``      the same sites of one group's own mixture
                            (``SWSModel(..., groups=...)``), e.g.
                            ``sws.fc1.mixing``, ``sws.fc1.pi`` (:func:`group_site`)
``net.<parameter name>``    one weight site per network parameter tensor
                            (:data:`WEIGHT_PREFIX`)
``likelihood.precision``    a learned Gaussian noise precision (:data:`NOISE_PRECISION`)
``obs``                     the observations, inside the plate ``data``
                            (:data:`OBS`, :data:`DATA_PLATE`)
==========================  =====================================================
"""

from __future__ import annotations

__all__ = [
    "DATA_PLATE",
    "HYPER_PREFIXES",
    "LIKELIHOOD_PREFIX",
    "MEANS",
    "MIXING",
    "MIXTURE_SITES",
    "MU",
    "NOISE_PRECISION",
    "OBS",
    "PI",
    "PI_ZERO",
    "PRECISIONS",
    "SIGMA",
    "SITE_PREFIX",
    "WEIGHT_PREFIX",
    "group_site",
]

#: Prefix of every site of the mixture prior.
SITE_PREFIX = "sws."
PI_ZERO = SITE_PREFIX + "pi_zero"
MIXING = SITE_PREFIX + "mixing"
MEANS = SITE_PREFIX + "means"
PRECISIONS = SITE_PREFIX + "precisions"
PI = SITE_PREFIX + "pi"
MU = SITE_PREFIX + "mu"
SIGMA = SITE_PREFIX + "sigma"
#: The deterministic sites of the assembled mixture, in the order (π, μ, σ).
MIXTURE_SITES = (PI, MU, SIGMA)

#: Prefix of the weight sites: parameter ``"0.weight"`` is site ``"net.0.weight"``.
WEIGHT_PREFIX = "net."

#: Prefix of the likelihood's own latent sites.
LIKELIHOOD_PREFIX = "likelihood."
NOISE_PRECISION = LIKELIHOOD_PREFIX + "precision"
#: Prefixes of the hyperparameter sites (everything latent that is not a weight).
HYPER_PREFIXES = (SITE_PREFIX, LIKELIHOOD_PREFIX)

#: The observation site and the plate around it.
OBS = "obs"
DATA_PLATE = "data"


def group_site(site: str, group: str | None) -> str:
    """The name of a mixture site for one group of tensors.

    ``group_site("sws.mixing", None)`` is ``"sws.mixing"`` (the mixture shared by
    all layers); ``group_site("sws.mixing", "fc1")`` is ``"sws.fc1.mixing"``.
    """
    if group is None:
        return site
    return SITE_PREFIX + group + "." + site[len(SITE_PREFIX) :]
