r"""Likelihoods: the data term :math:`E(w) = -\log p(D \mid w) + \text{const}`.

- :class:`Categorical`: cross-entropy, :math:`E(w) = -\sum_n \log \mathrm{softmax}(f(x_n, w))_{y_n}`.
- :class:`SoftCategorical`: cross-entropy against class probabilities,
  :math:`E(w) = -\sum_n \sum_k t_{nk} \log \mathrm{softmax}(f(x_n, w))_k` (soft targets,
  e.g. a teacher network's probabilities mixed with the labels); labels are its one-hot case.
- :class:`Gaussian`: :math:`E(w) = \tfrac{\beta}{2}\sum_n (y_n - f(x_n, w))^2`, with the
  noise precision :math:`\beta` fixed or learned (Gamma prior, site
  ``likelihood.precision``). The constant is :math:`\tfrac N2 \log(2\pi/\beta)`.
- :class:`MixtureDensity`: a mixture density network (PRML §5.6), the outputs
  parameterising a mixture of :math:`K` Gaussians over the targets,
  :math:`E(w) = -\sum_n \ln \sum_k \pi_k(x_n) \mathcal N(t_n \mid \mu_k(x_n),
  \sigma_k^2(x_n) I)` (5.153), with no constant.

The model places the observation site ``obs`` inside ``pyro.plate("data", N,
subsample=...)``, so a mini-batch's log-likelihood is scaled to the data-set size.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from ..validation import check_bool, check_real
from . import mdn
from .distributions import SoftTargetCategorical
from .sites import NOISE_PRECISION, OBS

__all__ = [
    "LIKELIHOODS",
    "Categorical",
    "Gaussian",
    "Likelihood",
    "MixtureDensity",
    "SoftCategorical",
    "get_likelihood",
]


class Likelihood:
    """Base class: how network outputs explain the targets.

    Subclasses define :meth:`distribution`; those with latent parameters also
    define :attr:`site_names`, :meth:`sample_parameters` and :meth:`init_values`.
    """

    name = "likelihood"
    site_names: tuple[str, ...] = ()

    def sample_parameters(self, like: Tensor) -> dict[str, Tensor]:
        return {}

    def init_values(self, like: Tensor) -> dict[str, Tensor]:
        return {}

    def distribution(self, output: Tensor, params: dict[str, Tensor]) -> dist.TorchDistribution:
        raise NotImplementedError

    def check_targets(self, y: Tensor, output: Tensor) -> Tensor:
        """Validate targets against one network output; return them in the dtype used."""
        return y

    def mean(self, output: Tensor, params: dict[str, Tensor]) -> Tensor:
        """The predictive mean given one network output (probabilities for classification)."""
        raise NotImplementedError

    def sample(
        self, output: Tensor, params: dict[str, Tensor], num_samples: int | None = None
    ) -> Tensor:
        """Observations drawn from :math:`p(y \\mid f(x, w))` given one network output.

        The one place that draws observation noise: class labels (categorical),
        the mean plus :math:`\\mathcal N(0, 1/\\beta)` noise (Gaussian), draws from the
        mixture (mixture density). Shape of the targets, with a leading
        ``num_samples`` dim when given. Uses torch's global RNG.
        """
        shape = torch.Size() if num_samples is None else torch.Size((num_samples,))
        return self.distribution(output, params).sample(shape)

    def observe(self, output: Tensor, y: Tensor | None, params: dict[str, Tensor]) -> Tensor:
        return pyro.sample(OBS, self.distribution(output, params), obs=y)


class Categorical(Likelihood):
    """Classification: the network outputs logits of shape ``(batch, num_classes)``."""

    name = "categorical"

    def distribution(self, output, params):
        return dist.Categorical(logits=output)

    def mean(self, output, params):
        return torch.softmax(output, dim=-1)

    def check_targets(self, y, output):
        if y.dim() != 1:
            raise ValueError(
                f"categorical targets must be a 1-d tensor of class labels, got shape {tuple(y.shape)}"
            )
        if y.is_floating_point():
            if not torch.equal(y, y.round()):
                raise ValueError(
                    "categorical targets must be integer class labels, got fractional values"
                )
            y = y.long()
        if output.dim() != 2:
            raise ValueError(
                "a categorical likelihood needs network outputs of shape (batch, num_classes), "
                f"got {tuple(output.shape)}"
            )
        num_classes = output.shape[-1]
        bad = (y < 0) | (y >= num_classes)
        if bad.any():
            value = y[bad][0].item()
            raise ValueError(
                f"label {value} is outside the network's {num_classes} classes [0, {num_classes - 1}]; "
                "check the labels or the size of the network's last layer"
            )
        return y.long()


class SoftCategorical(Categorical):
    r"""Classification against class probabilities: targets of shape ``(batch, num_classes)``,
    each row on the simplex (:class:`~bayes_sws.core.distributions.SoftTargetCategorical`),
    or class labels, read as their one-hot rows (then it is :class:`Categorical`).

    What knowledge distillation retrains with: :func:`~bayes_sws.compress.soft_weight_sharing`'s
    ``distill`` mixes the pretrained network's probabilities into the labels.
    """

    name = "soft_categorical"

    def distribution(self, output, params):
        return SoftTargetCategorical(logits=output)

    def sample(self, output, params, num_samples=None):
        """Class labels, as :class:`Categorical` draws them: the predictive is the same."""
        return Categorical().sample(output, params, num_samples)

    def check_targets(self, y, output):
        if y.dim() == 1:
            labels = super().check_targets(y, output)
            return torch.nn.functional.one_hot(labels, output.shape[-1]).to(output.dtype)
        if y.dim() != 2 or output.dim() != 2 or y.shape[-1] != output.shape[-1]:
            raise ValueError(
                "soft_categorical targets are class labels (N,) or class probabilities "
                f"(N, {output.shape[-1]}), one for each of the network's {output.shape[-1]} "
                f"outputs; got shape {tuple(y.shape)}"
            )
        y = y.to(output.dtype)
        if not torch.isfinite(y).all() or (y < 0).any():
            raise ValueError(
                "soft_categorical targets must be probabilities, got negative or non-finite values"
            )
        worst = float((y.sum(-1) - 1).abs().max())
        if worst > 1e-4:
            raise ValueError(
                f"every soft_categorical target row must sum to 1, found one off by {worst:.3g}; "
                "normalise the rows (y / y.sum(-1, keepdim=True))"
            )
        return y


class Gaussian(Likelihood):
    r"""Regression with Gaussian noise of precision :math:`\beta`.

    Parameters
    ----------
    precision : float
        The noise precision :math:`\beta` (fixed), or the initial value when learned.
    learn_precision : bool
        Treat :math:`\beta` as latent with a ``Gamma(*precision_prior)`` prior.
    precision_prior : (float, float)
        Gamma shape and rate for a learned precision.
    """

    name = "gaussian"

    def __init__(
        self,
        precision: float = 1.0,
        learn_precision: bool = False,
        precision_prior: tuple[float, float] = (1.0, 1e-2),
    ):
        precision = check_real("precision", precision, low=0, low_open=True)
        for value in precision_prior:
            if not math.isfinite(float(value)) or float(value) <= 0:
                raise ValueError(f"precision_prior entries must be > 0, got {precision_prior!r}")
        self.precision = precision
        self.learn_precision = check_bool("learn_precision", learn_precision)
        self.precision_prior = tuple(float(v) for v in precision_prior)
        self.site_names = (NOISE_PRECISION,) if self.learn_precision else ()

    def __repr__(self) -> str:
        return f"Gaussian(precision={self.precision}, learn_precision={self.learn_precision})"

    def sample_parameters(self, like):
        if not self.learn_precision:
            return {}
        conc, rate = (
            torch.tensor(v, dtype=like.dtype, device=like.device) for v in self.precision_prior
        )
        return {NOISE_PRECISION: pyro.sample(NOISE_PRECISION, dist.Gamma(conc, rate))}

    def init_values(self, like):
        if not self.learn_precision:
            return {}
        return {NOISE_PRECISION: torch.tensor(self.precision, dtype=like.dtype, device=like.device)}

    def _precision(self, params, like):
        if self.learn_precision:
            return params[NOISE_PRECISION]
        return torch.tensor(self.precision, dtype=like.dtype, device=like.device)

    def distribution(self, output, params):
        scale = self._precision(params, output).rsqrt()
        if self._squeeze(output) or output.dim() == 1:
            loc = output.squeeze(-1) if self._squeeze(output) else output
            return dist.Normal(loc, scale)
        # vector targets: one event of size D per data point
        scale = scale.unsqueeze(-1) if scale.dim() else scale
        return dist.Normal(output, scale).to_event(1)

    @staticmethod
    def _squeeze(output: Tensor) -> bool:
        return output.dim() >= 2 and output.shape[-1] == 1

    def mean(self, output, params):
        return output.squeeze(-1) if self._squeeze(output) else output

    def check_targets(self, y, output):
        if not y.is_floating_point():
            y = y.to(output.dtype)
        # compare per data point: ``output`` may come from a few inputs only
        point = output.shape[1:-1] if self._squeeze(output) else output.shape[1:]
        if y.dim() == 0 or y.shape[1:] != point:
            raise ValueError(
                f"gaussian targets of shape {tuple(y.shape)} do not fit network outputs of shape "
                f"{tuple(output.shape)}; expected targets of shape {(len(y) if y.dim() else 'N',) + tuple(point)}"
            )
        return y.to(output.dtype)


class MixtureDensity(Likelihood):
    r"""Mixture density network (PRML §5.6): the outputs are a Gaussian mixture over targets.

    The network's output per input holds ``[a^π (K) | a^μ (K×D) | a^σ (K)]``:
    mixing coefficients :math:`\pi = \mathrm{softmax}(a^\pi)` (5.150), means
    :math:`\mu_{kj} = a^\mu_{kj}` (5.152), standard deviations
    :math:`\sigma_k = \exp(a^\sigma_k)` (5.151); ``obs`` is distributed as the
    mixture (5.148), so :math:`E(w)` is its negative log-likelihood (5.153).
    Scalar targets are ``(N,)`` (D = 1), vector targets ``(N, D)``; a network for
    them has ``K*(D+2)`` outputs. Predictions: :mod:`bayes_sws.core.mdn`.

    Parameters
    ----------
    num_components : int
        :math:`K`, the number of mixture components.
    """

    name = "mdn"

    def __init__(self, num_components: int):
        self.num_components = mdn.check_num_components(num_components)

    def __repr__(self) -> str:
        return f"MixtureDensity(num_components={self.num_components})"

    def distribution(self, output, params):
        return mdn.mixture_from_output(output, self.num_components)

    def mean_nll(self, output: Tensor, target: Tensor) -> Tensor:
        r""":math:`E(w) / N`, the mean of (5.153) over a batch: a plain-torch training loss
        (``bayes_sws.zoo.training.train(net, x, t, loss=likelihood.mean_nll)``)."""
        return -self.distribution(output, {}).log_prob(target).mean()

    def mean(self, output, params):
        r"""The conditional mean :math:`\sum_k \pi_k \mu_k` (5.158)."""
        return mdn.conditional_mean(output, self.num_components)

    def check_targets(self, y, output):
        if not y.is_floating_point():
            y = y.to(output.dtype)
        dim = mdn.target_dim(output.shape[-1], self.num_components)
        point = () if dim == 1 else (dim,)
        if y.dim() == 0 or tuple(y.shape[1:]) != point:
            raise ValueError(
                f"mixture density targets of shape {tuple(y.shape)} do not fit {output.shape[-1]} "
                f"network outputs with K={self.num_components} (D={dim}); expected targets of "
                f"shape {(len(y) if y.dim() else 'N',) + point}"
            )
        return y.to(output.dtype)


LIKELIHOODS = {
    "categorical": Categorical,
    "soft_categorical": SoftCategorical,
    "gaussian": Gaussian,
    "mdn": MixtureDensity,
}


def get_likelihood(likelihood: str | Likelihood) -> Likelihood:
    """A :class:`Likelihood` from a name (``"categorical"``, ``"gaussian"``) or an instance.

    ``"mdn"`` needs its number of components: pass ``MixtureDensity(num_components=K)``.
    """
    if isinstance(likelihood, Likelihood):
        return likelihood
    if isinstance(likelihood, str) and likelihood.lower() == "mdn":
        raise ValueError(
            'likelihood="mdn" needs the number of components; pass '
            "bayes_sws.MixtureDensity(num_components=K) instead"
        )
    if isinstance(likelihood, str) and likelihood.lower() in LIKELIHOODS:
        return LIKELIHOODS[likelihood.lower()]()
    raise ValueError(
        f"unknown likelihood {likelihood!r}; use one of {sorted(LIKELIHOODS)} "
        "or an instance of bayes_sws.core.likelihoods.Likelihood"
    )
