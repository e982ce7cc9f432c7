r"""Mixture density networks (Bishop, PRML §5.6): the maths on network outputs.

A network with :math:`K(D + 2)` outputs per input parameterises a mixture of
:math:`K` isotropic Gaussians over a :math:`D`-dimensional target:

.. math::

    p(t \mid x) &= \sum_k \pi_k(x)\, \mathcal N(t \mid \mu_k(x), \sigma_k^2(x) I)   &(5.148) \\
    \pi_k &= \exp(a^\pi_k) / \textstyle\sum_l \exp(a^\pi_l)                            &(5.150) \\
    \sigma_k &= \exp(a^\sigma_k)                                                        &(5.151) \\
    \mu_{kj} &= a^\mu_{kj}                                                              &(5.152) \\
    E(w) &= -\textstyle\sum_n \ln \sum_k \pi_k \mathcal N(t_n \mid \mu_k, \sigma_k^2 I) &(5.153)

The output layout is ``[a^π (K) | a^μ (K × D, component-major) | a^σ (K)]``.
The likelihood itself is :class:`bayes_sws.core.likelihoods.MixtureDensity`; this
module holds what works on raw outputs: splitting them, the closed-form output
gradients (5.154)–(5.157), and predictions that respect multi-valued answers
(the conditional density on a grid, mean, approximate mode, samples).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from .distributions import IsotropicGaussianMixture

__all__ = [
    "MDNOutput",
    "conditional_density",
    "conditional_mean",
    "conditional_mode",
    "mixture_from_output",
    "network_outputs",
    "output_gradients",
    "plot_conditional_density",
    "sample",
    "split_output",
]


class MDNOutput(NamedTuple):
    """Network outputs split into the mixture's activations (shapes for ``(..., K(D+2))`` input)."""

    logits: Tensor  # ... K       a^π
    loc: Tensor  # ... K D        a^μ = μ
    log_scale: Tensor  # ... K    a^σ = ln σ


def check_num_components(num_components: Any) -> int:
    """``num_components`` as an int ≥ 1, or a one-line error naming the value."""
    if (
        isinstance(num_components, bool)
        or not isinstance(num_components, int)
        or num_components < 1
    ):
        raise ValueError(
            f"num_components must be an integer >= 1 (mixture components K), got {num_components!r}"
        )
    return num_components


def target_dim(num_outputs: int, num_components: int) -> int:
    """D from the network's output size ``K(D + 2)``; a clear error if it does not divide."""
    per, rest = divmod(num_outputs, num_components)
    if rest or per < 3:
        raise ValueError(
            f"a mixture density network with K={num_components} components needs K*(D+2) outputs "
            f"({3 * num_components} for scalar targets), got {num_outputs}; "
            "size the network's last layer to K*(D+2)"
        )
    return per - 2


def split_output(output: Tensor, num_components: int) -> MDNOutput:
    """Split ``(..., K(D+2))`` outputs into logits ``(..., K)``, means ``(..., K, D)``, log-scales."""
    k = num_components
    dim = target_dim(output.shape[-1], k)
    logits = output[..., :k]
    loc = output[..., k : k + k * dim].reshape(output.shape[:-1] + (k, dim))
    return MDNOutput(logits, loc, output[..., k + k * dim :])


def mixture_from_output(output: Tensor, num_components: int, vector: bool | None = None):
    """The mixture (5.148) that ``output`` parameterises.

    ``vector=False`` gives scalar targets (event shape ``()``, only for D = 1);
    the default is scalar targets exactly when D = 1.
    """
    parts = split_output(output, num_components)
    loc = parts.loc
    if vector is None:
        vector = loc.shape[-1] != 1
    if not vector:
        loc = loc.squeeze(-1)
    return IsotropicGaussianMixture(parts.logits, loc, torch.exp(parts.log_scale))


def output_gradients(output: Tensor, target: Tensor, num_components: int) -> Tensor:
    r"""Closed-form :math:`\partial E_n / \partial a` for each output activation.

    With responsibilities :math:`\gamma_{nk} = \pi_k \mathcal N_{nk} / \sum_l \pi_l
    \mathcal N_{nl}` (5.154):

    .. math::

        \partial E_n / \partial a^\pi_k &= \pi_k - \gamma_{nk}                     &(5.155) \\
        \partial E_n / \partial a^\mu_{kj} &= \gamma_{nk} (\mu_{kj} - t_{nj}) / \sigma_k^2  &(5.156) \\
        \partial E_n / \partial a^\sigma_k &= \gamma_{nk} (D - \|t_n - \mu_k\|^2 / \sigma_k^2)  &(5.157)

    Parameters
    ----------
    output : Tensor
        Network outputs ``(N, K(D+2))``.
    target : Tensor
        Targets ``(N,)`` (D = 1) or ``(N, D)``.

    Returns
    -------
    Tensor
        ``(N, K(D+2))`` in the output's layout.
    """
    parts = split_output(output, num_components)
    dim = parts.loc.shape[-1]
    mixture = mixture_from_output(output, num_components, vector=True)
    target = target.reshape(output.shape[:-1] + (dim,))
    gamma = torch.softmax(mixture.component_log_prob(target), dim=-1)  # N K   (5.154)
    variance = torch.exp(2 * parts.log_scale)
    diff = parts.loc - target.unsqueeze(-2)  # N K D
    grad_pi = torch.softmax(parts.logits, dim=-1) - gamma
    grad_mu = gamma.unsqueeze(-1) * diff / variance.unsqueeze(-1)
    grad_sigma = gamma * (dim - diff.pow(2).sum(-1) / variance)
    return torch.cat([grad_pi, grad_mu.flatten(-2), grad_sigma], dim=-1)


def conditional_density(output: Tensor, grid: Tensor, num_components: int) -> Tensor:
    r"""The conditional density :math:`p(t \mid x)` (5.148) of scalar targets on a grid.

    Parameters
    ----------
    output : Tensor
        Outputs ``(N, 3K)``, or ``(S, N, 3K)`` for ``S`` posterior draws, whose
        densities are averaged (the posterior predictive density).
    grid : Tensor
        Target values ``(G,)``.

    Returns
    -------
    Tensor
        ``(N, G)``: the density of each grid value at each input.
    """
    mixture = mixture_from_output(output.unsqueeze(-2), num_components, vector=False)  # ... N 1
    if mixture.event_shape:
        raise ValueError(
            "conditional_density on a grid needs scalar targets (D = 1); for D > 1 use log_prob"
        )
    density = mixture.log_prob(grid.to(output.dtype)).exp()  # ... N G
    return density.mean(0) if output.dim() == 3 else density


def conditional_mean(output: Tensor, num_components: int) -> Tensor:
    r""":math:`E[t \mid x] = \sum_k \pi_k(x) \mu_k(x)` (5.158): ``(N,)`` or ``(N, D)``.

    For multi-valued inverses this averages the branches (what least squares
    returns); the mode picks one.
    """
    return mixture_from_output(output, num_components).mean


def conditional_mode(output: Tensor, num_components: int) -> Tensor:
    r"""The approximate conditional mode: the mean of the component with the largest
    :math:`\pi_k(x)` (PRML §5.6, Fig. 5.21d), ``(N,)`` or ``(N, D)``.

    It follows the most probable branch of a multi-valued inverse and jumps where
    the branches swap rank.
    """
    parts = split_output(output, num_components)
    best = parts.logits.argmax(-1)  # N
    index = best[..., None, None].expand(best.shape + (1, parts.loc.shape[-1]))
    mode = parts.loc.gather(-2, index).squeeze(-2)
    return mode.squeeze(-1) if mode.shape[-1] == 1 else mode


def sample(output: Tensor, num_components: int, num_samples: int = 1) -> Tensor:
    """Draws from :math:`p(t \\mid x)`: shape ``(num_samples, N)`` or ``(num_samples, N, D)``."""
    return mixture_from_output(output, num_components).sample((num_samples,))


def network_outputs(result: Any, x: Tensor, num_samples: int = 100) -> Tensor:
    """Network outputs at ``x`` under a fitted result (no gradients).

    A point estimate (``guide="map"``) gives ``(N, K(D+2))`` from the MAP weights;
    another guide or an MCMC result gives ``(S, N, K(D+2))`` for ``S`` posterior
    draws, ready for :func:`conditional_density`'s posterior average.
    """
    model = result.model
    like = model.like_tensor()
    x = torch.as_tensor(x).to(device=like.device, dtype=like.dtype)
    with torch.no_grad():
        if getattr(result, "is_point_estimate", False):
            return model.output_at(result.median(), x)
        if hasattr(result, "sample_posterior"):
            draws = result.sample_posterior(num_samples)
        else:  # MCMC: (chain, draw, ...) flattened to one draw dimension
            draws = {k: v.reshape((-1,) + v.shape[2:]) for k, v in result.samples.items()}
        count = next(iter(draws.values())).shape[0]
        outputs = [model.output_at({k: v[s] for k, v in draws.items()}, x) for s in range(count)]
        return torch.stack(outputs)


def plot_conditional_density(
    output: Tensor,
    x: Tensor,
    grid: Tensor,
    num_components: int,
    *,
    data: tuple[Tensor, Tensor] | None = None,
    mode: bool = True,
    mean: bool = True,
    title: str | None = None,
    ax: Any = None,
):
    r"""PRML Fig. 5.21-style plot: :math:`p(t \mid x)` as an image, with data, mean and mode.

    For a point estimate the mode is :func:`conditional_mode` (PRML's approximate
    mode); for posterior draws it is the grid maximum of the averaged density.

    Parameters
    ----------
    output : Tensor
        Outputs at ``x`` (``(N, 3K)`` or ``(S, N, 3K)``), ``x`` sorted, 1-d inputs.
    x, grid : Tensor
        Inputs ``(N,)`` or ``(N, 1)`` and target grid ``(G,)``.
    data : (x, t), optional
        Points to overlay.
    ax : matplotlib.axes.Axes, optional
        Draw into these axes (e.g. one panel of a comparison); default a new figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.colors import PowerNorm
    from matplotlib.figure import Figure

    x_plot = x.reshape(-1).cpu().numpy()
    density = conditional_density(output, grid, num_components).cpu().numpy()  # N G
    if ax is None:
        ax = Figure(figsize=(6, 4.5)).subplots()
    fig = ax.figure
    # a square-root colour scale: the narrow ends would otherwise wash out the branches
    image = ax.pcolormesh(
        x_plot, grid.cpu().numpy(), density.T, shading="auto", cmap="Blues", norm=PowerNorm(0.5)
    )
    fig.colorbar(image, ax=ax, label=r"$p(t \mid x)$")
    if data is not None:
        ax.scatter(
            data[0].reshape(-1).cpu(),
            data[1].reshape(-1).cpu(),
            s=4,
            c="0.4",
            alpha=0.5,
            label="data",
        )
    if mean:  # over posterior draws, the predictive mean averages the draws' means
        average = conditional_mean(output, num_components)
        average = average.mean(0) if output.dim() == 3 else average
        ax.plot(x_plot, average.cpu(), c="tab:orange", label="conditional mean")
    if mode:  # over draws, the mode of the averaged density on the grid
        peak = (
            grid.cpu()[density.argmax(-1)]
            if output.dim() == 3
            else conditional_mode(output, num_components).cpu()
        )
        ax.scatter(x_plot, peak, s=3, c="tab:red", label="mode")
    ax.set(xlabel="x", ylabel="t", title=title or "conditional density (PRML Fig. 5.21)")
    ax.legend(loc="upper left", fontsize=8, markerscale=2)
    return fig
