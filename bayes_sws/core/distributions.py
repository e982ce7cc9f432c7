r"""Distributions for the soft weight-sharing prior.

Torch's ``MixtureSameFamily`` cannot be used: on torch 2.13 its support is a
``MixtureSameFamilyConstraint`` that Pyro's autoguides cannot transform, and it
materialises ``N × M`` temporaries. :class:`MixtureOfGaussians` declares
``support = real`` and evaluates the log-density with one ``logsumexp``.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution, constraints
from torch import Tensor

from .kernel import mixture_log_prob
from .penalty import log_joint_densities, log_mixture_density

__all__ = [
    "IsotropicGaussianMixture",
    "MixtureOfGaussians",
    "OrderedNormal",
    "SoftTargetCategorical",
]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _fast_log_prob(value: Tensor, pi: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    """Sum of log-densities of all elements of ``value`` under one (M,) mixture."""
    if torch.jit.is_tracing():  # custom autograd Functions do not trace (NUTS jit_compile)
        return log_mixture_density(value, pi, mu, sigma).sum()
    return mixture_log_prob(value, pi, mu, sigma)


class MixtureOfGaussians(TorchDistribution):
    r"""A mixture of univariate Gaussians shared by every element of a tensor.

    .. math::

        p(w) = \prod_i \sum_j \pi_j \mathcal N(w_i \mid \mu_j, \sigma_j^2)   \qquad (5.137)

    Parameters
    ----------
    pi, mu, sigma : Tensor
        Mixing proportions, means and standard deviations with the component
        dimension last: shape ``batch_shape + (M,)``.
    event_shape : tuple of int, optional
        Shape of the tensor the mixture is a prior for (e.g. a weight matrix's
        shape). Its elements are independent draws; ``log_prob`` sums over them,
        so one sample site covers a whole parameter tensor.

    Notes
    -----
    ``support`` is ``real`` (event dimension ``len(event_shape)``), so every
    Pyro autoguide can use the site. With unbatched (``(M,)``) parameters and an
    unbatched value, ``log_prob`` uses the chunked kernel of
    :mod:`bayes_sws.core.kernel` (memory O(N + M)); otherwise it broadcasts, which
    keeps :class:`pyro.infer.Predictive` with ``parallel=True`` working.
    """

    arg_constraints = {
        "pi": constraints.simplex,
        "mu": constraints.real_vector,
        "sigma": constraints.independent(constraints.positive, 1),
    }
    has_rsample = False

    def __init__(
        self,
        pi: Tensor,
        mu: Tensor,
        sigma: Tensor,
        event_shape: tuple[int, ...] | torch.Size = (),
        validate_args: bool | None = None,
    ):
        if pi.dim() < 1 or mu.dim() < 1 or sigma.dim() < 1:
            raise ValueError("pi, mu and sigma need a trailing component dimension of size M")
        num_components = pi.shape[-1]
        if mu.shape[-1] != num_components or sigma.shape[-1] != num_components:
            raise ValueError(
                "pi, mu and sigma must have the same number of components (last dimension), "
                f"got {pi.shape[-1]}, {mu.shape[-1]}, {sigma.shape[-1]}"
            )
        batch_shape = torch.broadcast_shapes(pi.shape[:-1], mu.shape[:-1], sigma.shape[:-1])
        shape = batch_shape + (num_components,)
        self.pi, self.mu, self.sigma = pi.expand(shape), mu.expand(shape), sigma.expand(shape)
        super().__init__(batch_shape, torch.Size(event_shape), validate_args=validate_args)

    @property
    def num_components(self) -> int:
        return self.pi.shape[-1]

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.independent(constraints.real, len(self.event_shape))

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(MixtureOfGaussians, _instance)
        batch_shape = torch.Size(batch_shape)
        shape = batch_shape + (self.num_components,)
        new.pi, new.mu, new.sigma = (t.expand(shape) for t in (self.pi, self.mu, self.sigma))
        super(MixtureOfGaussians, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _params_for(self, extra_dims: int) -> tuple[Tensor, Tensor, Tensor]:
        # batch + (1,)*E + (M,): broadcasts against sample + batch + event values
        view = self.batch_shape + (1,) * extra_dims + (self.num_components,)
        pi, mu, sigma = (t.reshape(view) for t in (self.pi, self.mu, self.sigma))
        return pi, mu, sigma

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        num_event = len(self.event_shape)
        if not self.batch_shape and value.shape == self.event_shape:
            return _fast_log_prob(value, self.pi, self.mu, self.sigma)
        value_batch = value.shape[: value.dim() - num_event]
        if (
            len(value_batch) < len(self.batch_shape)
            and value_batch.numel() == self.batch_shape.numel()
        ):
            # Predictive(parallel=True) drops plate singletons of event sites: put them back
            value = value.reshape(self.batch_shape + self.event_shape)
        pi, mu, sigma = self._params_for(num_event)
        log_p = torch.logsumexp(log_joint_densities(value, torch.log(pi), mu, sigma), dim=-1)
        return log_p.sum(tuple(range(-num_event, 0))) if num_event else log_p

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        pi, mu, sigma = self._params_for(len(self.event_shape))
        full = self.batch_shape + self.event_shape + (self.num_components,)
        with torch.no_grad():
            index = torch.distributions.Categorical(probs=pi.expand(full)).sample(sample_shape)
            index = index.unsqueeze(-1)
            grow = shape + (self.num_components,)
            loc = mu.expand(grow).gather(-1, index).squeeze(-1)
            scale = sigma.expand(grow).gather(-1, index).squeeze(-1)
            return torch.normal(loc, scale)


class OrderedNormal(TorchDistribution):
    r"""Independent Normals restricted to increasing order, :math:`\mu_1 < \dots < \mu_K`.

    The density is :math:`K! \prod_k \mathcal N(\mu_k \mid m, s^2)` on the ordered
    cone (the joint density of the order statistics), so it is proper and
    normalised. Used for the component means when identifiability across MCMC
    chains matters (label switching).
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.ordered_vector
    has_rsample = True

    def __init__(self, loc: Tensor, scale: Tensor, size: int, validate_args: bool | None = None):
        self.loc, self.scale = torch.as_tensor(loc), torch.as_tensor(scale)
        self.size = int(size)
        batch_shape = torch.broadcast_shapes(self.loc.shape, self.scale.shape)
        super().__init__(batch_shape, torch.Size([self.size]), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(OrderedNormal, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc, new.scale, new.size = (
            self.loc.expand(batch_shape),
            self.scale.expand(batch_shape),
            self.size,
        )
        super(OrderedNormal, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        draws = self.loc.unsqueeze(-1) + self.scale.unsqueeze(-1) * eps
        return draws.sort(dim=-1).values

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        loc, scale = self.loc.unsqueeze(-1), self.scale.unsqueeze(-1)
        log_p = torch.distributions.Normal(loc, scale).log_prob(value).sum(-1)
        return log_p + math.lgamma(self.size + 1)


class SoftTargetCategorical(TorchDistribution):
    r"""A categorical over ``K`` classes observed through class probabilities.

    ``log_prob(t)`` is :math:`\sum_k t_k \log \mathrm{softmax}(\ell)_k` for a target
    :math:`t` on the simplex (the negative cross-entropy of the predicted distribution
    against :math:`t`), which is ``Categorical(logits).log_prob(y)`` when :math:`t` is the
    one-hot row of ``y``. Soft targets enter a model as a tempered likelihood: a target
    :math:`(1 - \alpha)\,\mathrm{onehot}(y) + \alpha q` weighs the labels'
    log-likelihood by :math:`1 - \alpha` and that of a teacher's probabilities :math:`q`
    by :math:`\alpha` (knowledge distillation, Hinton et al. 2015). It is not normalised
    over the simplex; draws are one-hot rows of class draws.
    """

    arg_constraints = {"logits": constraints.real_vector}
    support = constraints.simplex

    def __init__(self, logits: Tensor, validate_args: bool | None = None):
        self.logits = logits
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(SoftTargetCategorical, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.event_shape)
        super(SoftTargetCategorical, new).__init__(
            batch_shape, self.event_shape, validate_args=False
        )
        new._validate_args = self._validate_args
        return new

    @property
    def probs(self) -> Tensor:
        return self.logits.softmax(-1)

    @property
    def mean(self) -> Tensor:
        return self.probs

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        index = torch.distributions.Categorical(logits=self.logits).sample(sample_shape)
        return torch.nn.functional.one_hot(index, self.event_shape[0]).to(self.logits.dtype)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return (value * self.logits.log_softmax(-1)).sum(-1)


class IsotropicGaussianMixture(TorchDistribution):
    r"""A mixture of isotropic Gaussians over a target, one mixture per batch element.

    .. math::

        p(t) = \sum_{k=1}^K \pi_k\, \mathcal N(t \mid \mu_k, \sigma_k^2 I_D)   \qquad (5.148)

    The observation distribution of a mixture density network (PRML §5.6), whose
    parameters vary with the input. Like :class:`MixtureOfGaussians` it declares a
    plain real support (torch's ``MixtureSameFamily`` breaks Pyro's autoguides).

    Parameters
    ----------
    logits : Tensor
        Unnormalised mixing log-weights, ``batch_shape + (K,)``;
        :math:`\pi = \mathrm{softmax}(\text{logits})` (5.150).
    loc : Tensor
        Component means, ``batch_shape + (K, D)``, or ``batch_shape + (K,)`` for
        scalar targets (then ``event_shape`` is ``()``).
    scale : Tensor
        Component standard deviations :math:`\sigma_k > 0`, ``batch_shape + (K,)``.
    """

    arg_constraints = {
        "logits": constraints.real_vector,
        "scale": constraints.independent(constraints.positive, 1),
    }
    has_rsample = False

    def __init__(
        self, logits: Tensor, loc: Tensor, scale: Tensor, validate_args: bool | None = None
    ):
        num_components = logits.shape[-1]
        vector = loc.dim() == logits.dim() + 1
        if loc.shape[-1 - vector] != num_components or scale.shape[-1] != num_components:
            raise ValueError(
                "logits, loc and scale need the same number of components K, got shapes "
                f"{tuple(logits.shape)}, {tuple(loc.shape)}, {tuple(scale.shape)}"
            )
        event_shape = loc.shape[-1:] if vector else torch.Size()
        batch_shape = torch.broadcast_shapes(
            logits.shape[:-1], loc.shape[: loc.dim() - 1 - vector], scale.shape[:-1]
        )
        self.logits = logits.expand(batch_shape + (num_components,))
        self.loc = loc.expand(batch_shape + (num_components,) + event_shape)
        self.scale = scale.expand(batch_shape + (num_components,))
        super().__init__(batch_shape, event_shape, validate_args=validate_args)

    @property
    def num_components(self) -> int:
        return self.logits.shape[-1]

    @property
    def mixing(self) -> Tensor:
        r"""Mixing coefficients :math:`\pi_k`, ``batch_shape + (K,)`` (5.150)."""
        return torch.softmax(self.logits, dim=-1)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.independent(constraints.real, len(self.event_shape))

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(IsotropicGaussianMixture, _instance)
        batch_shape = torch.Size(batch_shape)
        k = (self.num_components,)
        new.logits = self.logits.expand(batch_shape + k)
        new.loc = self.loc.expand(batch_shape + k + self.event_shape)
        new.scale = self.scale.expand(batch_shape + k)
        super(IsotropicGaussianMixture, new).__init__(
            batch_shape, self.event_shape, validate_args=False
        )
        new._validate_args = self._validate_args
        return new

    def component_log_prob(self, value: Tensor) -> Tensor:
        r""":math:`\ln \pi_k + \ln \mathcal N(t \mid \mu_k, \sigma_k^2 I)`, shape ``... + (K,)``."""
        dim = self.event_shape.numel()
        diff = value.unsqueeze(-1 - len(self.event_shape)) - self.loc  # ... K [D]
        squared = diff.pow(2).sum(-1) if self.event_shape else diff.pow(2)  # ... K
        log_normal = -0.5 * squared / self.scale.pow(2) - dim * (
            torch.log(self.scale) + _LOG_SQRT_2PI
        )
        return torch.log_softmax(self.logits, dim=-1) + log_normal

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return torch.logsumexp(self.component_log_prob(value), dim=-1)

    @property
    def mean(self) -> Tensor:
        r""":math:`E[t] = \sum_k \pi_k \mu_k` (5.158)."""
        pi = self.mixing
        return (
            (pi.unsqueeze(-1) * self.loc).sum(-2) if self.event_shape else (pi * self.loc).sum(-1)
        )

    @property
    def variance(self) -> Tensor:
        r"""Per-coordinate variance :math:`\sum_k \pi_k (\sigma_k^2 + (\mu_k - E[t])^2)` (5.160)."""
        pi, spread = self.mixing, self.scale.pow(2)
        if self.event_shape:
            centred = self.loc - self.mean.unsqueeze(-2)
            return (pi.unsqueeze(-1) * (spread.unsqueeze(-1) + centred.pow(2))).sum(-2)
        return (pi * (spread + (self.loc - self.mean.unsqueeze(-1)).pow(2))).sum(-1)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        with torch.no_grad():
            index = torch.distributions.Categorical(logits=self.logits).sample(sample_shape)  # S B
            grow = tuple(sample_shape) + tuple(self.logits.shape)
            scale = self.scale.expand(grow).gather(-1, index.unsqueeze(-1)).squeeze(-1)
            if self.event_shape:
                loc_full = self.loc.expand(grow + tuple(self.event_shape))
                gather = index[..., None, None].expand(index.shape + (1,) + tuple(self.event_shape))
                loc = loc_full.gather(-2, gather).squeeze(-2)
                scale = scale.unsqueeze(-1)
            else:
                loc = self.loc.expand(grow).gather(-1, index.unsqueeze(-1)).squeeze(-1)
            return torch.normal(loc, scale.expand(loc.shape))
