r"""Closed forms of soft weight-sharing (Bishop, PRML §5.5.7; Nowlan & Hinton 1992).

Pure torch, no Pyro. These are the reference formulas every faster path and every
Pyro loss is tested against. With weights :math:`w = (w_1, \dots, w_N)` and a
mixture of :math:`M` Gaussians with mixing proportions :math:`\pi`, means
:math:`\mu` and standard deviations :math:`\sigma`:

.. math::

    p(w_i) &= \sum_j \pi_j \mathcal N(w_i \mid \mu_j, \sigma_j^2)          && (5.137) \\
    \Omega(w) &= -\sum_i \ln \sum_j \pi_j \mathcal N(w_i \mid \mu_j, \sigma_j^2) && (5.138) \\
    \gamma_j(w) &= \frac{\pi_j \mathcal N(w \mid \mu_j, \sigma_j^2)}
                      {\sum_k \pi_k \mathcal N(w \mid \mu_k, \sigma_k^2)}   && (5.140)

The gradient functions return the gradients of :math:`\lambda\Omega` (the prior
part of :math:`\tilde E = E + \lambda\Omega`, eq. 5.139); the data term's
gradient is the user's. All computations go through ``logsumexp`` so they stay
finite for :math:`|w|` up to :math:`10^4` and :math:`\sigma` down to
:math:`10^{-6}`.

Shapes: ``w`` is any shape and is flattened to ``(N,)``; ``pi``, ``mu``,
``sigma`` have shape ``(M,)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "OmegaGradients",
    "grad_log_variance",
    "grad_logits",
    "grad_mu",
    "grad_sigma",
    "grad_w",
    "gradients",
    "log_component_densities",
    "log_joint_densities",
    "log_mixture_density",
    "omega",
    "responsibilities",
]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _check(w: Tensor, pi: Tensor, mu: Tensor, sigma: Tensor) -> tuple[Tensor, ...]:
    for name, value in (("pi", pi), ("mu", mu), ("sigma", sigma)):
        if value.dim() != 1:
            raise ValueError(
                f"{name} must have shape (M,) with one entry per component, got shape "
                f"{tuple(value.shape)}"
            )
    if not (pi.shape == mu.shape == sigma.shape):
        raise ValueError(
            "pi, mu and sigma must have the same number of components, got shapes "
            f"{tuple(pi.shape)}, {tuple(mu.shape)}, {tuple(sigma.shape)}"
        )
    return w.reshape(-1), pi, mu, sigma


def log_joint_densities(value: Tensor, log_pi: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    r"""The terms of eq. (5.137) in log space, broadcast: the one home of the mixture maths.

    .. math::

        \ln \pi_j + \ln \mathcal N(v \mid \mu_j, \sigma_j^2)
            = \ln \pi_j - \tfrac12 \Big(\frac{v - \mu_j}{\sigma_j}\Big)^2
              - \ln \sigma_j - \tfrac12 \ln 2\pi          \qquad (5.137)

    ``torch.logsumexp(·, -1)`` of the result is :math:`\ln p(v)`; ``softmax`` is
    :math:`\gamma_j(v)` (5.140). :math:`v - \mu_j` is formed before dividing by
    :math:`\sigma_j`, so the terms stay finite for :math:`|v|` up to :math:`10^4`
    and :math:`\sigma` down to :math:`10^{-6}`.

    Parameters
    ----------
    value : Tensor
        Any shape ``S``; every element is one point.
    log_pi, mu, sigma : Tensor
        :math:`\ln \pi_j`, :math:`\mu_j`, :math:`\sigma_j` with the component
        dimension last, broadcastable against ``S + (M,)``. ``log_pi = -inf``
        removes a component; zeros give the plain :math:`\ln \mathcal N`.

    Returns
    -------
    Tensor
        Shape ``broadcast(S + (1,), params)``: ``S + (M,)`` for ``(M,)`` parameters.
        It materialises that many elements; the chunked, O(N + M) memory sum over
        all weights is :func:`bayes_sws.core.kernel.mixture_log_prob`.
    """
    z = (value.unsqueeze(-1) - mu) / sigma  # S M
    return log_pi - 0.5 * z * z - torch.log(sigma) - _LOG_SQRT_2PI


def log_component_densities(w: Tensor, pi: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    r"""``log π_j + log N(w_i | μ_j, σ_j²)`` for every weight and component, shape (N, M).

    :func:`log_joint_densities` of the flattened weights, with shapes checked.
    """
    w, pi, mu, sigma = _check(w, pi, mu, sigma)
    return log_joint_densities(w, torch.log(pi), mu, sigma)


def log_mixture_density(w: Tensor, pi: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    r"""``ln p(w_i)`` of eq. (5.137) for every weight, shape (N,)."""
    return torch.logsumexp(log_component_densities(w, pi, mu, sigma), dim=-1)


def omega(w: Tensor, pi: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    r"""The regulariser :math:`\Omega(w)` of eq. (5.138), a 0-dim tensor."""
    return -log_mixture_density(w, pi, mu, sigma).sum()


def responsibilities(w: Tensor, pi: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    r"""The responsibilities :math:`\gamma_j(w_i)` of eq. (5.140), shape (N, M); rows sum to 1."""
    return torch.softmax(log_component_densities(w, pi, mu, sigma), dim=-1)


def grad_w(w: Tensor, pi: Tensor, mu: Tensor, sigma: Tensor, prior_scale: float = 1.0) -> Tensor:
    r"""Prior part of (5.141): :math:`\lambda \sum_j \gamma_j(w_i)(w_i - \mu_j)/\sigma_j^2`, shaped like ``w``."""
    return gradients(w, pi, mu, sigma, prior_scale).w


def grad_mu(w: Tensor, pi: Tensor, mu: Tensor, sigma: Tensor, prior_scale: float = 1.0) -> Tensor:
    r"""(5.142): :math:`\partial\tilde E/\partial\mu_j = \lambda\sum_i \gamma_j(w_i)(\mu_j - w_i)/\sigma_j^2`."""
    return gradients(w, pi, mu, sigma, prior_scale).mu


def grad_sigma(
    w: Tensor, pi: Tensor, mu: Tensor, sigma: Tensor, prior_scale: float = 1.0
) -> Tensor:
    r"""(5.143): :math:`\partial\tilde E/\partial\sigma_j = \lambda\sum_i \gamma_j(w_i)(1/\sigma_j - (w_i-\mu_j)^2/\sigma_j^3)`."""
    return gradients(w, pi, mu, sigma, prior_scale).sigma


def grad_log_variance(
    w: Tensor, pi: Tensor, mu: Tensor, sigma: Tensor, prior_scale: float = 1.0
) -> Tensor:
    r"""(5.144), with :math:`\sigma_j^2 = e^{\xi_j}`:
    :math:`\partial\tilde E/\partial\xi_j = (\lambda/2)\sum_i \gamma_j(w_i)(1 - (w_i-\mu_j)^2/\sigma_j^2)`."""
    return gradients(w, pi, mu, sigma, prior_scale).log_variance


def grad_logits(
    w: Tensor, pi: Tensor, mu: Tensor, sigma: Tensor, prior_scale: float = 1.0
) -> Tensor:
    r"""(5.146–5.147), with :math:`\pi = \mathrm{softmax}(\eta)`:
    :math:`\partial\tilde E/\partial\eta_j = \lambda\sum_i (\pi_j - \gamma_j(w_i))`."""
    return gradients(w, pi, mu, sigma, prior_scale).logits


class OmegaGradients(NamedTuple):
    """Gradients of :math:`\\lambda\\Omega` in every parameterisation of (5.141)–(5.147)."""

    w: Tensor
    mu: Tensor
    sigma: Tensor
    log_variance: Tensor
    logits: Tensor


def gradients(
    w: Tensor, pi: Tensor, mu: Tensor, sigma: Tensor, prior_scale: float = 1.0
) -> OmegaGradients:
    """All closed-form gradients at once, sharing one responsibility computation."""
    flat, pi, mu, sigma = _check(w, pi, mu, sigma)
    gamma = responsibilities(flat, pi, mu, sigma)
    diff = flat[:, None] - mu  # N M
    var = sigma**2
    g_w = (gamma * diff / var).sum(-1).reshape(w.shape)
    g_mu = -(gamma * diff).sum(0) / var
    g_sigma = (gamma * (1.0 / sigma - diff**2 / sigma**3)).sum(0)
    g_xi = 0.5 * (gamma * (1.0 - diff**2 / var)).sum(0)
    g_eta = gamma.shape[0] * pi - gamma.sum(0)
    return OmegaGradients(*(prior_scale * g for g in (g_w, g_mu, g_sigma, g_xi, g_eta)))


#: Weights per block in :func:`assign`: a (chunk, M) float64 block stays a few tens of MB.
ASSIGN_CHUNK_SIZE = 1 << 18


def assign(
    w: Tensor, pi: Tensor, mu: Tensor, sigma: Tensor, *, chunk_size: int = ASSIGN_CHUNK_SIZE
) -> Tensor:
    r"""The most responsible component of every weight, :math:`\arg\max_j \gamma_j(w_i)`.

    .. math::

        k(w_i) = \arg\max_j \; \ln \pi_j + \ln \mathcal N(w_i \mid \mu_j, \sigma_j^2)
        \qquad \text{(argmax of eq. 5.140)},

    since the normaliser of (5.140) is common to every component. It is the argmax
    of :func:`log_component_densities`, computed in float64 over blocks of
    ``chunk_size`` weights, so memory stays ``chunk_size × M`` however many weights
    there are (the full ``(N, M)`` :func:`responsibilities` is never built). Ties go
    to the lowest index; a component with ``π_j = 0`` never wins.

    Parameters
    ----------
    w : Tensor
        Weights, any shape.
    pi, mu, sigma : Tensor, shape (M,)
        Mixing proportions (need not be normalised), means and standard deviations.
    chunk_size : int
        Weights per block (a positive integer).

    Returns
    -------
    Tensor of long, shaped like ``w``
        Index of each weight's most responsible component.
    """
    from ..validation import check_int

    chunk_size = check_int("chunk_size", chunk_size, low=1)
    flat, pi, mu, sigma = _check(w.detach(), pi.detach(), mu.detach(), sigma.detach())
    flat, pi, mu, sigma = (t.to(torch.float64) for t in (flat, pi, mu, sigma))
    out = torch.empty(flat.numel(), dtype=torch.long, device=flat.device)
    for start in range(0, flat.numel(), chunk_size):
        block = flat[start : start + chunk_size]
        out[start : start + chunk_size] = log_component_densities(block, pi, mu, sigma).argmax(-1)
    return out.reshape(w.shape)


__all__ += ["ASSIGN_CHUNK_SIZE", "assign"]
