r"""The learned mixture-of-Gaussians prior and its hyperpriors.

Soft weight-sharing (Nowlan & Hinton 1992; PRML §5.5.7; Ullrich, Meeds & Welling
2017) places on every selected weight the mixture

.. math::

    p(w_i \mid \pi, \mu, \sigma) = \sum_{j} \pi_j \mathcal N(w_i \mid \mu_j, \sigma_j^2)  \qquad (5.137)

and learns :math:`\pi, \mu, \sigma` jointly with the weights. The hyperpriors are

- :math:`\pi \sim \mathrm{Dirichlet}(\alpha)` over the non-zero components
  (:math:`\alpha \ge 1` keeps the MAP inside the simplex);
- with a zero component: :math:`\mu_0 = 0` fixed and :math:`\pi_0` either fixed
  or :math:`\sim \mathrm{Beta}(a, b)`, the remaining mass
  :math:`(1 - \pi_0)` split by the Dirichlet;
- :math:`\mu_j \sim \mathcal N(m, s^2)`, optionally ordered
  (:class:`~bayes_sws.core.distributions.OrderedNormal`) for identifiability;
- :math:`\tau_j = 1/\sigma_j^2 \sim \mathrm{Gamma}(a_\tau, b_\tau)`: without a
  proper prior on the precisions a component can collapse onto a few weights
  (the singularity PRML notes after eq. 5.144).

With ``flat=True`` every hyperprior is an improper uniform on its support, and
MAP estimation minimises exactly :math:`E(w) + \lambda\Omega(w)` (5.139).

Every model trace records the full mixture (zero component included) as the
deterministic sites ``sws.pi``, ``sws.mu``, ``sws.sigma`` of shape ``(M,)``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

from ..settings import PriorSettings
from ..validation import check_bool, check_finite_tensor, check_int, check_names, check_real
from .distributions import MixtureOfGaussians, OrderedNormal
from .sites import MEANS, MIXING, MU, PI, PI_ZERO, PRECISIONS, SIGMA, SITE_PREFIX, group_site

__all__ = ["SITE_PREFIX", "GroupedMixturePrior", "Mixture", "MixturePrior"]


_EVENT_DIMS = {PI_ZERO: 0, MIXING: 1, MEANS: 1, PRECISIONS: 1}
#: PriorSettings fields used by the training loop, not by MixturePrior itself.
_TRAINING_LOOP_SETTINGS = (
    "precision_prior",
    "zero_precision_prior",
    "temper_hyperprior",
    "precision_prior_final",
    "anneal_epochs",
    "prior_scale",
)


def _strip_ones(shape: torch.Size) -> torch.Size:
    while shape and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _align_batches(values: dict[str, Tensor], event_dims: dict[str, int]) -> dict[str, Tensor]:
    """Give batched hyperparameter draws one batch shape ``sample + (1,)``.

    The hyperparameters sit outside the data plate, so vectorised draws (ELBO
    particles, ``Predictive(parallel=True)``) carry sample dimensions followed by
    a singleton for the data plate. ``Predictive`` drops that singleton for sites
    with an event dimension; this restores it, so every draw lines up.
    """
    if not values:  # every hyperparameter fixed (torch.broadcast_shapes() fails under jit)
        return {}
    if all(v.dim() == event_dims[s] for s, v in values.items()):  # one draw: nothing to align
        return values
    core = {}
    for site, value in values.items():
        event = value.shape[value.dim() - event_dims[site] :]
        core[site] = value.reshape(
            _strip_ones(value.shape[: value.dim() - event_dims[site]]) + event
        )
    sample = torch.broadcast_shapes(*(v.shape[: v.dim() - event_dims[s]] for s, v in core.items()))
    batch = sample + (1,) if sample else sample
    return {
        s: v.expand(sample + v.shape[v.dim() - event_dims[s] :]).reshape(
            batch + v.shape[v.dim() - event_dims[s] :]
        )
        for s, v in core.items()
    }


class Mixture(NamedTuple):
    """The full mixture, zero component first when there is one; each of shape ``(..., M)``."""

    pi: Tensor
    mu: Tensor
    sigma: Tensor

    def __repr__(self) -> str:
        """A table of π, μ, σ per component, 4 significant digits (a batch: its shape only)."""
        if self.pi.dim() != 1:
            return f"Mixture(batch of shape {tuple(self.pi.shape)}: pi, mu, sigma per component)"
        rows = [
            f"Mixture({self.pi.numel()} components)",
            f"{'j':>4} {'pi':>11} {'mu':>11} {'sigma':>11}",
        ]
        values = zip(*(v.detach().cpu().tolist() for v in self))
        for j, (pi, mu, sigma) in enumerate(values):
            rows.append(f"{j:>4} {pi:>11.4g} {mu:>11.4g} {sigma:>11.4g}")
        return "\n".join(rows)


def _positive(name: str, value: object) -> float:
    return check_real(name, value, low=0, low_open=True)


_DEFAULT = PriorSettings()


def _gamma_pairs(pair, zero_pair, conc, rate, zero_conc, zero_rate):
    """``((shape, rate), (zero shape, zero rate))`` from the pairs or the split names, not both.

    ``precision_prior=(a, b)`` is the settings' name (:class:`~bayes_sws.settings.PriorSettings`);
    ``precision_concentration=a, precision_rate=b`` the older spelling, still accepted.
    """
    for name, value, split in (
        ("precision_prior", pair, (conc, rate)),
        ("zero_precision_prior", zero_pair, (zero_conc, zero_rate)),
    ):
        if value is not None and any(v is not None for v in split):
            raise ValueError(
                f"{name} was given together with its split form ({name.replace('prior', '')}"
                "concentration/rate); give one of them"
            )
        if value is not None and (not isinstance(value, (tuple, list)) or len(value) != 2):
            raise ValueError(f"{name} must be a Gamma (shape, rate) pair, got {value!r}")
    default_conc, default_rate = _DEFAULT.precision_prior
    conc, rate = pair if pair is not None else (conc, rate)
    conc = default_conc if conc is None else conc
    rate = default_rate if rate is None else rate
    zero_conc, zero_rate = zero_pair if zero_pair is not None else (zero_conc, zero_rate)
    return (conc, rate), (zero_conc, zero_rate)


def _fixed_vector(name: str, value, size: int) -> Tensor | None:
    """A fixed part of the mixture as a float64 vector of ``size`` finite values."""
    if value is None:
        return None
    vector = check_finite_tensor(name, torch.as_tensor(value, dtype=torch.float64)).flatten()
    if vector.numel() != size:
        raise ValueError(
            f"{name} must hold num_components = {size} values (zero component first), "
            f"got {vector.numel()}"
        )
    return vector


class MixturePrior:
    r"""Mixture-of-Gaussians prior over network weights, with hyperpriors.

    Parameters
    ----------
    num_components : int
        Total number of components :math:`M`, the zero component included.
    zero_component : bool
        Fix :math:`\mu_0 = 0` (the pruning component). Default ``True``.
    pi_zero : float, optional
        Fix :math:`\pi_0` to this value in (0, 1). If ``None`` (default),
        :math:`\pi_0 \sim \mathrm{Beta}(\text{pi\_zero\_prior})`.
    pi_zero_prior : (float, float)
        Beta concentrations :math:`(a, b)` for :math:`\pi_0`; the mean is
        :math:`a / (a + b)`. Default ``(1, 1)`` (uniform).
    init_pi_zero : float
        Initial :math:`\pi_0` when it is learned. Default 0.5.
    mixing_concentration : float
        Dirichlet :math:`\alpha` for the non-zero components' mixing proportions.
        Must be :math:`\ge 1` for MAP (checked by :func:`bayes_sws.fit`).
    mean_loc, mean_scale : float
        Normal hyperprior on the non-zero means.
    ordered_means : bool
        Constrain :math:`\mu_1 < \dots < \mu_K` (identifiable under MCMC).
    precision_prior : (float, float)
        Gamma hyperprior (shape, rate) on each precision :math:`1/\sigma_j^2`;
        the name :class:`~bayes_sws.settings.PriorSettings` uses. Default ``(2, 2e-3)``.
    zero_precision_prior : (float, float), optional
        The zero component's Gamma hyperprior; default as the others.
    precision_concentration, precision_rate : float
        The same as ``precision_prior``, split (the older spelling; give one form).
        The defaults ``(2, 2e-3)`` put the mode at :math:`\sigma \approx 0.045`
        and stop variances collapsing without pulling on well-supported
        components.
    zero_precision_concentration, zero_precision_rate : float, optional
        A separate Gamma hyperprior (shape, rate) for the zero component's
        precision; ``None`` (default) uses ``precision_concentration`` resp.
        ``precision_rate``. Ullrich et al. made it much stronger than the
        others, keeping the pruning spike narrow. Needs ``zero_component=True``.
    flat : bool
        Improper flat hyperpriors: MAP is then exactly :math:`E + \lambda\Omega`.
    include_bias : bool
        Also place the prior on biases (1-d parameters). Default: weights only
        (parameters with two or more dimensions).
    params : str, iterable of str or callable, optional
        Explicit choice of parameters: names as in ``net.named_parameters()``
        (one string is one name), or a predicate ``(name, parameter) -> bool``.
        Overrides ``include_bias``.
    init_means : tensor, optional
        Initial non-zero means; default evenly spaced over the range of the
        network's current weights (Ullrich et al.).
    init_sigma : float, optional
        Initial standard deviation of every component; default the spacing of
        the initial means.
    fixed_precision : float, optional
        Fix every component's precision :math:`1/\sigma_j^2` to this value: no
        ``sws.precisions`` site. ``MixturePrior(1, fixed_precision=a)`` is the
        fixed Gaussian prior :math:`\mathcal N(0, 1/a)` (weight decay
        :math:`\lambda a/2 \, \|w\|^2`), whose linear-Gaussian posterior is
        known in closed form.
    fixed_pi, fixed_mu, fixed_sigma : sequence of float, optional
        Fix the mixing proportions, the means or the standard deviations of all
        ``M`` components (zero component first; ``fixed_mu[0] = 0`` with a zero
        component): no latent site for them, the deterministic ``sws.pi``,
        ``sws.mu``, ``sws.sigma`` still recorded. All three fixed is Nowlan &
        Hinton's setting: MAP minimises :math:`E(w) + \lambda\Omega(w)` (5.139)
        with :math:`\Omega` (5.138) at these values.

    Notes
    -----
    A prior for one group of tensors (:meth:`for_group`, what
    ``SWSModel(..., groups=...)`` builds) names its sites ``sws.<group>.mixing``,
    ``sws.<group>.pi`` and so on instead of ``sws.mixing``, ``sws.pi``
    (:attr:`group`; ``None`` for the mixture shared by all layers).

    All defaults are those of :class:`~bayes_sws.settings.PriorSettings`;
    :meth:`from_settings` builds a prior from such a record and :attr:`settings`
    gives it back.
    """

    #: The group of tensors this prior is for; ``None``: the mixture shared by all layers.
    group: str | None = None

    def __init__(
        self,
        num_components: int = _DEFAULT.num_components,
        *,
        zero_component: bool = _DEFAULT.zero_component,
        pi_zero: float | None = _DEFAULT.pi_zero,
        pi_zero_prior: tuple[float, float] = _DEFAULT.pi_zero_prior,
        init_pi_zero: float = _DEFAULT.init_pi_zero,
        mixing_concentration: float = _DEFAULT.mixing_concentration,
        mean_loc: float = _DEFAULT.mean_loc,
        mean_scale: float = _DEFAULT.mean_scale,
        ordered_means: bool = _DEFAULT.ordered_means,
        precision_prior: tuple[float, float] | None = None,
        zero_precision_prior: tuple[float, float] | None = _DEFAULT.zero_precision_prior,
        precision_concentration: float | None = None,
        precision_rate: float | None = None,
        zero_precision_concentration: float | None = None,
        zero_precision_rate: float | None = None,
        flat: bool = _DEFAULT.flat,
        include_bias: bool = _DEFAULT.include_bias,
        params: str | Iterable[str] | Callable[[str, Tensor], bool] | None = _DEFAULT.params,
        init_means: Tensor | Sequence[float] | None = _DEFAULT.init_means,
        init_sigma: float | None = _DEFAULT.init_sigma,
        fixed_precision: float | None = _DEFAULT.fixed_precision,
        fixed_pi: Sequence[float] | Tensor | None = _DEFAULT.fixed_pi,
        fixed_mu: Sequence[float] | Tensor | None = _DEFAULT.fixed_mu,
        fixed_sigma: Sequence[float] | Tensor | None = _DEFAULT.fixed_sigma,
    ):
        (precision_concentration, precision_rate), zero_pair = _gamma_pairs(
            precision_prior,
            zero_precision_prior,
            precision_concentration,
            precision_rate,
            zero_precision_concentration,
            zero_precision_rate,
        )
        self._check_components(num_components, zero_component)
        self._check_pi_zero(pi_zero, pi_zero_prior, init_pi_zero)
        self.mixing_concentration = _positive("mixing_concentration", mixing_concentration)
        self.mean_loc = check_real("mean_loc", mean_loc)
        self.mean_scale = _positive("mean_scale", mean_scale)
        self.ordered_means = check_bool("ordered_means", ordered_means)
        self._check_precision_priors(precision_concentration, precision_rate, *zero_pair)
        self.flat = check_bool("flat", flat)
        self.include_bias = check_bool("include_bias", include_bias)
        # one string is one parameter name (a predicate is any callable)
        self.params = params if callable(params) else check_names("params", params)
        self._check_init(init_means, init_sigma)
        self.fixed_precision = check_real(
            "fixed_precision", fixed_precision, low=0, low_open=True, allow_none=True
        )
        self._check_fixed_mixture(fixed_pi, fixed_mu, fixed_sigma)

    def _check_components(self, num_components, zero_component) -> None:
        """Check and keep ``num_components`` and ``zero_component``; set ``num_free``."""
        num_components = check_int("num_components", num_components, noun="an int >= 1")
        if num_components < 1:  # wording pinned by tests/test_fit.py
            raise ValueError(
                f"num_components must be >= 1, got {num_components}; use e.g. 16 components"
            )
        self.num_components = num_components
        self.zero_component = check_bool("zero_component", zero_component)
        self.num_free = num_components - int(self.zero_component)

    def _check_pi_zero(self, pi_zero, pi_zero_prior, init_pi_zero) -> None:
        """Check and keep the zero component's mixing settings (after ``zero_component``)."""
        if pi_zero is not None:
            pi_zero = check_real("pi_zero", pi_zero)
            if not 0.0 < pi_zero < 1.0:
                raise ValueError(f"pi_zero must lie in (0, 1), got {pi_zero!r}")
            if not self.zero_component:
                raise ValueError(
                    "pi_zero was given but zero_component=False; set zero_component=True"
                )
        self.pi_zero = pi_zero
        if not isinstance(pi_zero_prior, (tuple, list)):
            raise TypeError(
                f"pi_zero_prior must be two Beta concentrations (a, b), got {pi_zero_prior!r}"
            )
        self.pi_zero_prior = tuple(
            _positive(f"pi_zero_prior[{i}]", v) for i, v in enumerate(pi_zero_prior)
        )
        if len(self.pi_zero_prior) != 2:
            raise ValueError(
                f"pi_zero_prior must be two Beta concentrations (a, b), got {pi_zero_prior!r}"
            )
        init_pi_zero = check_real("init_pi_zero", init_pi_zero)
        if not 0.0 < init_pi_zero < 1.0:
            raise ValueError(f"init_pi_zero must lie in (0, 1), got {init_pi_zero!r}")
        self.init_pi_zero = init_pi_zero

    def _check_precision_priors(self, conc, rate, zero_conc, zero_rate) -> None:
        """Check and keep the Gamma hyperpriors on the precisions (zero's defaults to the rest)."""
        self.precision_concentration = _positive("precision_concentration", conc)
        self.precision_rate = _positive("precision_rate", rate)
        if not self.zero_component and (zero_conc is not None or zero_rate is not None):
            raise ValueError(
                "zero_precision_concentration/zero_precision_rate were given but "
                "zero_component=False; set zero_component=True or drop them"
            )
        self.zero_precision_concentration = (
            self.precision_concentration
            if zero_conc is None
            else _positive("zero_precision_concentration", zero_conc)
        )
        self.zero_precision_rate = (
            self.precision_rate
            if zero_rate is None
            else _positive("zero_precision_rate", zero_rate)
        )

    def _check_init(self, init_means, init_sigma) -> None:
        """Check and keep the initial means (one per non-zero component) and sigma."""
        self.init_means = (
            None if init_means is None else check_finite_tensor("init_means", init_means).flatten()
        )
        if self.init_means is not None and self.init_means.numel() != self.num_free:
            raise ValueError(
                f"init_means must hold {self.num_free} values (one per non-zero component), "
                f"got {self.init_means.numel()}"
            )
        self.init_sigma = check_real(
            "init_sigma", init_sigma, low=0, low_open=True, allow_none=True
        )

    def _check_fixed_mixture(self, fixed_pi, fixed_mu, fixed_sigma) -> None:
        """Check and keep the fixed parts of the mixture (each ``None`` or ``M`` values)."""
        size = self.num_components
        self.fixed_pi = _fixed_vector("fixed_pi", fixed_pi, size)
        self.fixed_mu = _fixed_vector("fixed_mu", fixed_mu, size)
        self.fixed_sigma = _fixed_vector("fixed_sigma", fixed_sigma, size)
        pi, mu, sigma = self.fixed_pi, self.fixed_mu, self.fixed_sigma
        if pi is not None:
            if not bool((pi > 0).all()) or abs(float(pi.sum()) - 1.0) > 1e-6:
                raise ValueError(
                    f"fixed_pi must be positive and sum to 1, got {pi.tolist()}; normalise it"
                )
            if self.pi_zero is not None:
                raise ValueError("give pi_zero or fixed_pi, not both (fixed_pi[0] is π0)")
        if mu is not None and self.zero_component and float(mu[0]) != 0.0:
            raise ValueError(
                f"fixed_mu[0] must be 0 with zero_component=True, got {float(mu[0])!r}; "
                "set it to 0 or use zero_component=False"
            )
        if sigma is not None:
            if not bool((sigma > 0).all()):
                raise ValueError(f"fixed_sigma must be > 0, got {sigma.tolist()}")
            if self.fixed_precision is not None:
                raise ValueError("give fixed_precision or fixed_sigma, not both")

    @classmethod
    def from_settings(cls, settings: PriorSettings) -> MixturePrior:
        """The prior described by a :class:`~bayes_sws.settings.PriorSettings` record.

        The precision priors are those in force at the start of training
        (:meth:`PriorSettings.used_precision_priors`: tempered by λ when
        ``temper_hyperprior``); the anneal is applied by the training loop.
        """
        if not isinstance(settings, PriorSettings):
            raise TypeError(
                f"settings must be a bayes_sws.settings.PriorSettings, got {type(settings).__name__}"
            )
        prior, zero, _ = settings.used_precision_priors()
        return cls(
            settings.num_components,
            **{
                name: getattr(settings, name)
                for name in PriorSettings.names()
                if name not in _TRAINING_LOOP_SETTINGS and name != "num_components"
            },
            precision_prior=prior,
            zero_precision_prior=zero,
        )

    @property
    def settings(self) -> PriorSettings:
        """This prior, as it is now, as a :class:`~bayes_sws.settings.PriorSettings` record.

        Read from the attributes: the precision priors in force (tempered, or moved
        by an anneal), ``temper_hyperprior=False`` and the default ``prior_scale``
        (λ belongs to the model).
        """
        zero = (self.zero_precision_concentration, self.zero_precision_rate)
        same = zero == (self.precision_concentration, self.precision_rate)

        def plain(v):
            return None if v is None else tuple(float(x) for x in v.tolist())

        return PriorSettings(
            num_components=self.num_components,
            zero_component=self.zero_component,
            pi_zero=self.pi_zero,
            pi_zero_prior=(self.pi_zero_prior[0], self.pi_zero_prior[1]),
            init_pi_zero=self.init_pi_zero,
            mixing_concentration=self.mixing_concentration,
            mean_loc=self.mean_loc,
            mean_scale=self.mean_scale,
            ordered_means=self.ordered_means,
            precision_prior=(self.precision_concentration, self.precision_rate),
            zero_precision_prior=None if same else zero,
            flat=self.flat,
            include_bias=self.include_bias,
            init_sigma=self.init_sigma,
            fixed_precision=self.fixed_precision,
            fixed_pi=plain(self.fixed_pi),
            fixed_mu=plain(self.fixed_mu),
            fixed_sigma=plain(self.fixed_sigma),
            params=self.params,
            init_means=None if self.init_means is None else plain(self.init_means),
        )

    def __repr__(self) -> str:
        return (
            f"MixturePrior(num_components={self.num_components}, zero_component={self.zero_component}, "
            f"pi_zero={self.pi_zero}, flat={self.flat}, ordered_means={self.ordered_means})"
        )

    # ----------------------------------------------------------------- selection
    def selects(self, name: str, param: Tensor) -> bool:
        """Whether the parameter called ``name`` carries the prior."""
        if callable(self.params):
            return bool(self.params(name, param))
        if self.params is not None:
            return name in self.params
        return param.dim() >= 2 or self.include_bias

    def for_group(self, group: str) -> MixturePrior:
        """A copy of this prior (same settings) for the group of tensors ``group``.

        Its sites are named after the group, ``sws.<group>.mixing``,
        ``sws.<group>.pi`` ... (:func:`~bayes_sws.core.sites.group_site`), so
        that the mixtures of several groups are separate sites of one model.
        """
        if not isinstance(group, str) or not group or group.startswith(".") or group.endswith("."):
            raise ValueError(
                f"a group name must be a non-empty string not starting or ending with '.', "
                f"got {group!r}"
            )
        prior = copy.copy(self)
        prior.group = group
        return prior

    def site(self, base: str) -> str:
        """This prior's name of the site ``base`` (e.g. ``sws.mixing``; see :attr:`group`)."""
        return group_site(base, self.group)

    def base_site(self, site: str) -> str:
        """The shared mixture's name (``sws.mixing``) of one of this prior's sites."""
        if self.group is None:
            return site
        return next((b for b in _EVENT_DIMS if self.site(b) == site), site)

    # ----------------------------------------------------------------- sites
    @property
    def site_names(self) -> tuple[str, ...]:
        """Names of the latent hyperparameter sites, in sampling order."""
        return tuple(self.site(b) for b in self._base_site_names())

    def _base_site_names(self) -> tuple[str, ...]:
        """:attr:`site_names` as the shared mixture names them (``sws.mixing``, ...)."""
        names = []
        learn_pi = self.fixed_pi is None
        if learn_pi and self.zero_component and self.pi_zero is None and self.num_free >= 1:
            names.append(PI_ZERO)
        if learn_pi and self.num_free >= 2:
            names.append(MIXING)
        if self.fixed_mu is None and self.num_free >= 1:
            names.append(MEANS)
        if self.fixed_precision is None and self.fixed_sigma is None:
            names.append(PRECISIONS)
        return tuple(names)

    def _hyperprior(self, site: str, like: Tensor):
        opts: dict[str, Any] = {"dtype": like.dtype, "device": like.device}
        site = self.base_site(site)
        if site == PI_ZERO:
            if self.flat:
                return dist.ImproperUniform(constraints.unit_interval, (), ())
            a, b = self.pi_zero_prior
            return dist.Beta(torch.tensor(a, **opts), torch.tensor(b, **opts))
        if site == MIXING:
            if self.flat:
                return dist.ImproperUniform(constraints.simplex, (), (self.num_free,))
            return dist.Dirichlet(torch.full((self.num_free,), self.mixing_concentration, **opts))
        if site == MEANS:
            if self.flat:
                support = (
                    constraints.ordered_vector if self.ordered_means else constraints.real_vector
                )
                return dist.ImproperUniform(support, (), (self.num_free,))
            loc, scale = torch.tensor(self.mean_loc, **opts), torch.tensor(self.mean_scale, **opts)
            if self.ordered_means:
                return OrderedNormal(loc, scale, self.num_free)
            return dist.Normal(loc, scale).expand([self.num_free]).to_event(1)
        if site == PRECISIONS:
            if self.flat:
                return dist.ImproperUniform(constraints.positive, (), (self.num_components,))
            conc = torch.full((self.num_components,), self.precision_concentration, **opts)
            rate = torch.full((self.num_components,), self.precision_rate, **opts)
            if self.zero_component:  # component 0 may have its own (Ullrich et al.: stronger) prior
                conc[0], rate[0] = self.zero_precision_concentration, self.zero_precision_rate
            return dist.Gamma(conc, rate).to_event(1)
        raise KeyError(site)

    def mixture(self, values: dict[str, Tensor], like: Tensor) -> Mixture:
        """The full mixture ``(pi, mu, sigma)`` from values of the latent sites.

        This is the one place the site values are turned into the mixture, used
        while sampling and when reading a fitted guide.
        """
        opts: dict[str, Any] = {"dtype": like.dtype, "device": like.device}
        bases = self._base_site_names()
        values = _align_batches(
            {s: values[self.site(s)] for s in bases}, {s: _EVENT_DIMS[s] for s in bases}
        )
        batch = next((v.shape[: v.dim() - _EVENT_DIMS[s]] for s, v in values.items()), torch.Size())

        def fixed(vector: Tensor) -> Tensor:
            return vector.to(**opts).expand(batch + vector.shape)

        if self.fixed_sigma is not None:
            sigma = fixed(self.fixed_sigma)
        elif self.fixed_precision is None:
            sigma = values[PRECISIONS].rsqrt()
        else:
            sigma = torch.full(batch + (self.num_components,), self.fixed_precision**-0.5, **opts)
        if self.fixed_mu is not None:
            mu = fixed(self.fixed_mu)
        else:
            rest_mu = values[MEANS] if self.num_free >= 1 else torch.zeros(batch + (0,), **opts)
            mu = rest_mu
            if self.zero_component:
                rest = rest_mu.expand(batch + rest_mu.shape[-1:])
                mu = torch.cat([torch.zeros(batch + (1,), **opts), rest], -1)
        pi = (
            fixed(self.fixed_pi) if self.fixed_pi is not None else self._mixing(values, batch, opts)
        )
        return Mixture(pi, mu, sigma)

    def _mixing(self, values: dict[str, Tensor], batch: torch.Size, opts: dict) -> Tensor:
        """The mixing proportions ``pi`` (zero component first) from the latent sites."""
        if self.num_free >= 2:
            rest_pi = values[MIXING]
        else:
            rest_pi = torch.ones(batch + (self.num_free,), **opts)
        if not self.zero_component:
            return rest_pi
        if self.num_free == 0:
            pi0 = torch.ones(batch + (1,), **opts)
        elif self.pi_zero is None:
            pi0 = values[PI_ZERO].unsqueeze(-1)
        else:
            pi0 = torch.full(batch + (1,), self.pi_zero, **opts)
        return torch.cat([pi0, (1.0 - pi0) * rest_pi.expand(batch + rest_pi.shape[-1:])], dim=-1)

    def sample_mixture(self, like: Tensor) -> Mixture:
        """Sample the hyperparameter sites and record ``sws.pi``, ``sws.mu``, ``sws.sigma``.

        (``sws.<group>.pi`` ... for a group's prior, :attr:`group`.)
        """
        values = {site: pyro.sample(site, self._hyperprior(site, like)) for site in self.site_names}
        mixture = self.mixture(values, like)
        pyro.deterministic(self.site(PI), mixture.pi, event_dim=1)
        pyro.deterministic(self.site(MU), mixture.mu, event_dim=1)
        pyro.deterministic(self.site(SIGMA), mixture.sigma, event_dim=1)
        return mixture

    def weight_distribution(self, mixture: Mixture, shape: torch.Size) -> MixtureOfGaussians:
        """The prior of one parameter tensor of the given shape (one vectorised site)."""
        return MixtureOfGaussians(mixture.pi, mixture.mu, mixture.sigma, event_shape=shape)

    def log_hyperprior(self, values: dict[str, Tensor], like: Tensor) -> Tensor:
        """:math:`\\log p(\\pi, \\mu, \\sigma)` at the given site values (0 when flat)."""
        total = torch.zeros((), dtype=like.dtype, device=like.device)
        for site in self.site_names:
            total = total + self._hyperprior(site, like).log_prob(values[site])
        return total

    # ----------------------------------------------------------------- init
    def init_values(self, weights: Iterable[Tensor]) -> dict[str, Tensor]:
        """Initial site values from the network's current weights.

        Non-zero means are spread evenly over the range of the weights (Ullrich
        et al.); sigmas equal the spacing of those means; mixing proportions are
        uniform over the non-zero components.
        """
        flat = torch.cat([w.detach().reshape(-1) for w in weights])
        opts: dict[str, Any] = {"dtype": flat.dtype, "device": flat.device}
        lo, hi = flat.min().item(), flat.max().item()
        if not hi > lo:
            lo, hi = lo - 1.0, hi + 1.0
        if self.init_means is not None:
            means = self.init_means.to(**opts)
        else:
            means = torch.linspace(lo, hi, self.num_free + 2, **opts)[1:-1]
        spacing = (hi - lo) / (self.num_free + 1)
        sigma = self.init_sigma if self.init_sigma is not None else spacing
        values = {}
        bases = self._base_site_names()
        if PRECISIONS in bases:
            values[PRECISIONS] = torch.full((self.num_components,), sigma**-2, **opts)
        if PI_ZERO in bases:
            values[PI_ZERO] = torch.tensor(self.init_pi_zero, **opts)
        if MIXING in bases:
            values[MIXING] = torch.full((self.num_free,), 1.0 / self.num_free, **opts)
        if MEANS in bases:
            values[MEANS] = means.sort().values if self.ordered_means else means
        return {self.site(s): v for s, v in values.items()}


class GroupedMixturePrior(MixturePrior):
    r"""The mixtures of several groups of tensors seen as one prior: ``SWSModel.prior`` with groups.

    Each group ``g`` of :math:`N_g` weights has its own mixture (``members[g]``, a
    :class:`MixturePrior` whose sites are named after the group). This view
    carries the settings of ``template`` (``zero_component``, ``selects``,
    :attr:`settings` ...), the sites of all groups (:attr:`site_names`,
    :meth:`log_hyperprior`), and as :meth:`mixture` the mixture of a weight drawn
    at random from the whole network,

    .. math::

        p(w) = \sum_g \frac{N_g}{N} \sum_j \pi_{gj} \mathcal N(w \mid \mu_{gj}, \sigma_{gj}^2),

    the groups' components side by side (group after group, :attr:`members`'
    order). It is a summary: each tensor's prior is its own group's mixture
    (:meth:`bayes_sws.SWSModel.mixtures`).
    """

    def __init__(
        self, template: MixturePrior, members: dict[str, MixturePrior], sizes: dict[str, int]
    ):
        self.__dict__.update(vars(template))
        self.members = dict(members)
        total = sum(sizes[g] for g in self.members)
        self.fractions = {g: sizes[g] / total for g in self.members}

    def __repr__(self) -> str:
        return f"GroupedMixturePrior(groups={list(self.members)}, template={super().__repr__()})"

    @property
    def site_names(self) -> tuple[str, ...]:
        """Every group's hyperparameter sites, group after group."""
        return tuple(s for prior in self.members.values() for s in prior.site_names)

    def _owner(self, site: str) -> MixturePrior:
        for prior in self.members.values():
            if site in prior.site_names:
                return prior
        raise KeyError(site)

    def _hyperprior(self, site: str, like: Tensor):
        return self._owner(site)._hyperprior(site, like)

    def mixture(self, values: dict[str, Tensor], like: Tensor) -> Mixture:
        """The groups' mixtures side by side, each group's π times its share of the weights."""
        return self.combine({g: p.mixture(values, like) for g, p in self.members.items()})

    def combine(self, mixtures: dict[str, Mixture]) -> Mixture:
        """The summary mixture (see the class) of the groups' mixtures."""
        parts = [(self.fractions[g], mixtures[g]) for g in self.members]
        return Mixture(
            torch.cat([share * m.pi for share, m in parts], -1),
            torch.cat([m.mu for _, m in parts], -1),
            torch.cat([m.sigma for _, m in parts], -1),
        )

    def sample_mixtures(self, like: Tensor) -> dict[str, Mixture]:
        """Sample every group's sites (recording ``sws.<group>.pi`` ...); each group's mixture.

        The summary mixture is recorded as ``sws.pi``, ``sws.mu``, ``sws.sigma``
        (shape ``(G·M,)``), so that what reads those sites of a trace (MCMC
        samples, ArviZ conversion) sees every group's components.
        """
        mixtures = {g: p.sample_mixture(like) for g, p in self.members.items()}
        summary = self.combine(mixtures)
        pyro.deterministic(PI, summary.pi, event_dim=1)
        pyro.deterministic(MU, summary.mu, event_dim=1)
        pyro.deterministic(SIGMA, summary.sigma, event_dim=1)
        return mixtures

    def init_values(self, weights: Iterable[Tensor]) -> dict[str, Tensor]:
        raise TypeError(
            "a grouped prior initialises each group from its own weights: use "
            "SWSModel.init_values()"
        )
