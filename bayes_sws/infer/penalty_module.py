r"""Soft weight-sharing as a drop-in penalty for a hand-written PyTorch training loop.

:class:`SoftWeightSharing` is an ``nn.Module`` that owns the mixture parameters
:math:`(\pi, \mu, \sigma)` of an :class:`~bayes_sws.core.model.SWSModel` and
returns, as one differentiable scalar,

.. math::

    \text{penalty}(w) = \lambda\,\Omega(w) - \log p(\pi, \mu, \sigma)
                      = -\lambda \sum_i \ln \sum_j \pi_j \mathcal N(w_i \mid \mu_j, \sigma_j^2)
                        - \log p(\pi, \mu, \sigma)          \qquad (5.138, 5.139)

over the network's own prior-carrying parameters; with ``groups`` (one mixture
per group of tensors, as :class:`~bayes_sws.core.model.SWSModel`'s), :math:`\Omega`
and the hyperprior are summed over the groups' mixtures. Adding it to the data term
scaled to the full data set,

.. code-block:: python

    loss = F.cross_entropy(net(xb), yb, reduction="sum") * N / len(xb) + penalty()

gives exactly the loss :func:`bayes_sws.fit` minimises with ``guide="map"``
(the ``AutoDelta`` negative log joint, :func:`bayes_sws.infer.fastmap.map_loss`):
the mixture parameters are kept in the same unconstrained coordinates as that
guide's (``transform_to(support)`` of each hyperparameter site, e.g. the
softmax of logits for :math:`\pi`, the exponential of log-precisions), so the
gradients agree to float precision and Adam follows the same path. Dividing
the whole loss by :math:`N`,

.. code-block:: python

    loss = F.cross_entropy(net(xb), yb) + penalty() / N

is the Ullrich et al. per-batch form (mean cross-entropy plus :math:`(\tau/N)\Omega`):
the same minimiser and, for Adam (invariant to a constant factor up to its
``eps``), practically the same path.

:func:`latent_program` is the model's latent sites without data; a guide built
on it has the sites of the full model, which is how :meth:`SoftWeightSharing.to_result`
turns the trained values into a :class:`~bayes_sws.infer.svi.FitResult` for
:func:`bayes_sws.compress.compress_result` and
:func:`bayes_sws.diagnostics.to_inference_data`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer.autoguide import init_to_median, init_to_value
from torch import Tensor, nn
from torch.distributions import transform_to

from ..core.model import SWSModel
from ..core.priors import Mixture
from .fastmap import weight_log_prior
from .guides import build_guide
from .svi import FitResult, local_params, model_record

__all__ = ["LatentProgram", "SoftWeightSharing", "latent_program"]


def latent_program(model: SWSModel) -> LatentProgram:
    """The latent part of ``model``: hyperparameter and weight sites, no data.

    ``latent_program(model)()`` samples the sites ``model(x, y)`` samples before
    its data plate (the mixture's ``sws.*`` sites and deterministic records,
    every ``net.<name>`` weight site under ``poutine.scale(λ)``, and the
    likelihood's parameters), with the same distributions and supports. A Pyro
    guide built on it has exactly the latent sites of the full model and needs
    no data to create its parameters; it can then be used with the full model.
    """
    if not isinstance(model, SWSModel):
        raise TypeError(f"model must be a bayes_sws.SWSModel, got {type(model).__name__}")
    return LatentProgram(model)


class LatentProgram:
    """See :func:`latent_program`; a class rather than a closure so that it pickles
    (``torch.save`` of a guide, Lightning's ``ddp_spawn``)."""

    def __init__(self, model: SWSModel):
        self.model = model

    def __call__(self, *args, **kwargs) -> None:
        self.model.sample_latent()


def _site_supports(model: SWSModel) -> dict[str, object]:
    """The support of every hyperparameter site, read from one trace of the program.

    The trace runs at the initial values (nothing is sampled, so improper flat
    hyperpriors are fine).
    """
    with torch.no_grad():
        program = poutine.condition(latent_program(model), data=model.init_values())
        trace = poutine.trace(program).get_trace()
    distributions: dict[str, Any] = {s: trace.nodes[s]["fn"] for s in model.prior.site_names}
    return {name: d.support for name, d in distributions.items()}


class SoftWeightSharing(nn.Module):
    r"""The soft weight-sharing penalty :math:`\lambda\Omega(w) - \log p(\pi,\mu,\sigma)` of a network.

    Parameters
    ----------
    net : torch.nn.Module
        The network you train; its prior-carrying parameters (chosen by
        ``prior``) are read, never copied, so gradients reach them.
    prior : MixturePrior or dict of str to MixturePrior
        The mixture prior and hyperpriors (as for :class:`~bayes_sws.SWSModel`;
        a dict ``{group: MixturePrior}`` with ``groups``).
    prior_scale : float
        :math:`\lambda \ge 0`.
    likelihood : str or Likelihood
        Recorded for :meth:`to_result` (accuracies, predictions); it must not
        have latent parameters of its own (a learned noise precision): the
        data term is yours to compute.
    groups : None, "layer" or dict of str to list of str
        One mixture per group of tensors, as :class:`~bayes_sws.SWSModel`'s
        ``groups``: the module then owns every group's mixture parameters
        (sites ``sws.<group>.*``), the penalty sums :math:`\lambda\Omega_g(w_g)
        - \log p(\pi_g, \mu_g, \sigma_g)` over the groups, and
        :meth:`to_result` carries the groups (per-group codebooks in
        :func:`bayes_sws.compress.compress_result`). Default: one shared mixture.
    tensor_scales : dict of str to float, optional
        Multipliers of :math:`\lambda` per tensor (name or glob pattern), as
        :class:`~bayes_sws.SWSModel`'s: the penalty is then
        :math:`\lambda\sum_t s_t\Omega(w_t) - \log p(\pi,\mu,\sigma)`.

    Attributes
    ----------
    model : SWSModel
        The model this penalty belongs to (sharing ``net``).
    unconstrained : torch.nn.ParameterDict
        One parameter per hyperparameter site (``sws.means`` is stored as
        ``sws_means``), in the guide's unconstrained coordinates.

    Examples
    --------
    Inside your own loop over batches ``xb``, ``yb`` of ``N`` points (not run as a
    doctest; the README's own-loop example is run whole by the tests):

    >>> penalty = sws.SoftWeightSharing(net, sws.MixturePrior(16), prior_scale=1.0)  # doctest: +SKIP
    >>> optimizer = torch.optim.Adam(penalty.parameter_groups(lr=1e-3, mixture_lr=5e-4))  # doctest: +SKIP
    >>> loss = F.cross_entropy(net(xb), yb, reduction="sum") * N / len(xb) + penalty()  # doctest: +SKIP
    """

    def __init__(
        self,
        net: nn.Module,
        prior,
        prior_scale: float = 1.0,
        likelihood="categorical",
        groups=None,
        tensor_scales=None,
    ):
        super().__init__()
        model = SWSModel(
            net,
            prior,
            likelihood=likelihood,
            prior_scale=prior_scale,
            groups=groups,
            tensor_scales=tensor_scales,
        )
        if model.likelihood.site_names:
            raise ValueError(
                f"the likelihood {model.likelihood!r} has latent parameters "
                f"{list(model.likelihood.site_names)}; SoftWeightSharing penalises the weights "
                "only. Use a likelihood without them (e.g. Gaussian(precision=...)) or bayes_sws.fit"
            )
        self.net = net
        self.model = model  # an SWSModel is not an nn.Module: net is registered once, above
        self._transforms = {s: transform_to(c) for s, c in _site_supports(model).items()}
        init = model.init_values()
        self.unconstrained = nn.ParameterDict(
            {
                _key(site): nn.Parameter(transform.inv(init[site]).detach().clone())
                for site, transform in self._transforms.items()
            }
        )

    @property
    def prior_scale(self) -> float:
        return self.model.prior_scale

    def extra_repr(self) -> str:
        groups = "" if self.model.groups is None else f", groups={list(self.model.groups)}"
        scales = self.model.tensor_scales
        scales_text = f", tensor_scales={scales}" if scales else ""
        return f"prior={self.model.prior!r}, prior_scale={self.prior_scale}{groups}{scales_text}"

    # ------------------------------------------------------------------ values
    def site_values(self) -> dict[str, Tensor]:
        """Constrained value of every hyperparameter site (``sws.mixing`` on the simplex, ...)."""
        return {s: t(self.unconstrained[_key(s)]) for s, t in self._transforms.items()}

    def mixture(self) -> Mixture:
        """The full mixture ``(pi, mu, sigma)``, zero component first; differentiable.

        With ``groups``, the summary of the groups' mixtures (see
        :class:`~bayes_sws.core.priors.GroupedMixturePrior`); each group's own is
        :meth:`mixtures`.
        """
        return self.model.prior.mixture(self.site_values(), self.model.like_tensor())

    def mixtures(self) -> dict[str | None, Mixture]:
        """Every group's mixture ``(pi, mu, sigma)`` (``None``: the shared one); differentiable."""
        return self.model.mixtures(self.site_values())

    def forward(self) -> Tensor:
        r""":math:`\lambda\Omega(w) - \log p(\pi, \mu, \sigma)` (5.138, 5.139), a 0-dim tensor.

        :math:`\Omega` is the full negative log-density of the weights (the
        Gaussian normalisers included), as in the Pyro model, summed over the
        groups' mixtures (``groups``), so the sum with
        the full-data negative log-likelihood is ``fit(guide="map")``'s loss.
        """
        values = self.site_values()
        like = self.model.like_tensor()
        with pyro.validation_enabled(False):  # the prior's settings were checked when made
            total = -self.model.prior.log_hyperprior(values, like)
        if self.prior_scale > 0:  # every group's mixture over its own tensors
            model = self.model
            for name, w in model.parameters_with_prior().items():
                values[model.site_name(name)] = w
            total = total - self.prior_scale * weight_log_prior(model, values, like)
        return total

    # ------------------------------------------------------------------ optimiser
    def parameter_groups(self, lr: float, mixture_lr: float | None = None) -> list[dict]:
        """Optimiser parameter groups as :func:`bayes_sws.fit` forms them.

        The network's trainable parameters at ``lr`` and the mixture's at
        ``mixture_lr`` (default ``lr``): ``torch.optim.Adam(penalty.parameter_groups(...))``.
        """
        for name, value in (("lr", lr), ("mixture_lr", mixture_lr)):
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        weights = [p for p in self.net.parameters() if p.requires_grad]
        groups = [{"params": weights, "lr": float(lr)}]
        if len(self.unconstrained):
            rate = float(lr if mixture_lr is None else mixture_lr)
            groups.append({"params": list(self.unconstrained.values()), "lr": rate})
        return groups

    # ------------------------------------------------------------------ results
    def to_result(self, losses=None, config: dict | None = None) -> FitResult:
        """A :class:`~bayes_sws.infer.svi.FitResult` (``guide_name="map"``) at the current values.

        Its guide is an ``AutoDelta`` holding copies of the network's
        prior-carrying weights and the mixture's values, so
        :func:`bayes_sws.compress.compress_result`,
        :func:`bayes_sws.diagnostics.to_inference_data`, :meth:`FitResult.mixture`
        and :meth:`FitResult.map_network` work as after :func:`bayes_sws.fit`.

        Parameters
        ----------
        losses : sequence of float, optional
            Your loss per step, kept as :attr:`FitResult.losses`.
        config : dict, optional
            Settings to record (``lr``, ``batch_size``, ...).
        """
        model = self.model
        with torch.no_grad():
            values = {s: v.detach().clone() for s, v in self.site_values().items()}
            for name, w in model.parameters_with_prior().items():
                values[model.site_name(name)] = w.detach().clone()
        with local_params():
            guide = build_guide(
                "map",
                latent_program(model),
                init_loc_fn=init_to_value(values=values, fallback=init_to_median),
                init_scale=1.0,
            )
            guide()  # creates its parameters at those values
        record = {"guide": "map", **model_record(model), "source": "SoftWeightSharing"}
        record.update(config or {})
        losses = np.asarray([] if losses is None else losses, dtype=np.float64)
        return FitResult(model, guide, "map", losses, record)


def _key(site: str) -> str:
    return site.replace(".", "_")
