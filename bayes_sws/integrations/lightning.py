r"""PyTorch Lightning: train an :class:`~bayes_sws.core.model.SWSModel` with any guide.

``SWSLightningModule(model, guide="map", num_data=N)`` is a
``lightning.pytorch.LightningModule`` whose ``training_step`` is one SVI step
on a mini-batch ``(x, y)`` from your ``DataLoader``: the negative ELBO
(``Trace_ELBO``) of the model with the likelihood scaled to the full data set,

.. math::

    \mathcal L = -\frac{N}{B}\sum_{n \in \text{batch}} \mathbb E_q \log p(y_n \mid x_n, w)
                 + \mathrm{KL}\big(q(w, \pi, \mu, \sigma) \,\|\, p\big)       \qquad (5.139)

(for ``guide="map"`` exactly ``E(w) + λΩ(w) − log p(π, μ, σ)``, the loss of
:func:`bayes_sws.fit`). The pattern is Pyro's ``examples/svi_lightning.py``:
Pyro inside a ``LightningModule``, a plain ``torch.optim`` optimiser, module-local
Pyro parameters.

The batch goes through the model's own data plate, as in :func:`bayes_sws.fit`
on a ``DataLoader``: ``model(x, y, num_data=N)`` is a ``pyro.plate`` of size
:math:`N` subsampled to the :math:`B` points of the batch
(:meth:`~bayes_sws.core.model.SWSModel.data_plate`), which scales the likelihood
by :math:`N/B`. For ``guide="map"`` the loss is :func:`bayes_sws.infer.fastmap.map_loss`
where :func:`~bayes_sws.infer.fastmap.supports_fast_map` holds (the negative log
joint without Pyro's tracing; the same value and gradients as ``Trace_ELBO``), and
for the ``"normal"``, ``"mixed"`` and ``"lowrank"`` guides
:func:`bayes_sws.infer.fastvi.elbo_loss` (the same draws), again as
:func:`bayes_sws.fit` computes it.

Several processes (``Trainer(strategy="ddp", devices=k)``). Each process sees
its own batch of :math:`B` points from a ``DistributedSampler`` and scales its
likelihood by :math:`N/B`, with :math:`N` the size of the whole data set (not
of the process's shard) and :math:`B` the size of this process's batch; each
process's loss is then an unbiased estimate of the full objective, and DDP's
average of the gradients over processes is one too (with an effective batch of
:math:`kB`). The prior and hyperprior terms are computed whole on every
process, so the average counts them once. The mixture parameters are ordinary
parameters of the module and are all-reduced like the weights.

:class:`scale_data` is the same :math:`N/B` scaling as a Pyro handler, for your
own Pyro models whose data plate is named ``"data"`` and which are given only
the batch (an :class:`~bayes_sws.core.model.SWSModel` needs it not: pass it
``num_data``).

Lightning is an optional dependency (``pip install 'bayes-sws[lightning]'``),
imported when :class:`SWSLightningModule` is first used.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import init_to_median, init_to_value
from pyro.poutine.messenger import Messenger

from ..core.model import SWSModel
from ..core.sites import DATA_PLATE
from ..infer.fastmap import map_loss
from ..infer.fastvi import elbo_loss, fast_path
from ..infer.guides import (
    build_guide,
    guide_name,
    split_guide_parameters,
    warn_default_rank_cost,
)
from ..infer.penalty_module import latent_program
from ..infer.svi import FitResult, local_params, model_record
from ..optim import adam_for
from ..validation import check_int, check_real

__all__ = ["DATA_PLATE", "SWSLightningModule", "scale_data"]  # noqa: F822 (module __getattr__)

_INSTALL = "pip install 'bayes-sws[lightning]'"


def _lightning():
    try:
        import lightning.pytorch as pl
    except ImportError as err:
        raise ImportError(
            f"bayes_sws.integrations.lightning needs PyTorch Lightning ({err}); "
            f"install it with {_INSTALL}"
        ) from None
    return pl


class scale_data(Messenger):
    """Multiply the log-density of every site inside the data plate by ``scale``.

    ``N / B`` for a batch of ``B`` of ``N`` points: what ``pyro.plate(size=N,
    subsample=...)`` does when the model is given all the data and the indices,
    for a model given the batch alone. Sites outside the plate (the prior) are
    untouched.

    Public for your own Pyro models with a plate named :data:`~bayes_sws.core.sites.DATA_PLATE`
    (``"data"``) that are given one batch at a time: ``scale_data(N / B)(model)``.
    :class:`SWSLightningModule` does not use it: an
    :class:`~bayes_sws.core.model.SWSModel` scales itself when called with
    ``num_data=N`` (:meth:`~bayes_sws.core.model.SWSModel.data_plate`).
    """

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def _process_message(self, msg):
        if any(frame.name == DATA_PLATE for frame in msg["cond_indep_stack"]):
            msg["scale"] = self.scale * msg["scale"]


class _SWSLightningMixin:
    """The methods of :class:`SWSLightningModule`, which :func:`_build_class` puts before
    ``lightning.pytorch.LightningModule`` in its bases (Lightning is imported only then)."""

    log: Any  # LightningModule.log

    def __init__(
        self,
        model: SWSModel,
        guide: Any = "map",
        *,
        num_data: int | None = None,
        lr: float = 1e-3,
        mixture_lr: float | None = None,
        init_scale: float = 1e-3,
        num_particles: int = 1,
        guide_rank: int | None = None,
    ):
        super().__init__()
        if not isinstance(model, SWSModel):
            raise TypeError(f"model must be a bayes_sws.SWSModel, got {type(model).__name__}")
        self.model = model
        self.num_data = check_int("num_data", num_data, low=1, allow_none=True)
        self.lr = check_real("lr", lr, low=0, low_open=True)
        self.mixture_lr = check_real(
            "mixture_lr", lr if mixture_lr is None else mixture_lr, low=0, low_open=True
        )
        self.guide_name = guide_name(guide)
        warn_default_rank_cost(guide, guide_rank, model.parameters_with_prior().values(), 2)
        self.net = model.net
        # the guide holds the weights; the network's copies are only its starting point
        for param in model.parameters_with_prior().values():
            param.requires_grad_(False)
        with local_params():
            self.guide = build_guide(
                guide,
                latent_program(model),
                init_loc_fn=init_to_value(values=model.init_values(), fallback=init_to_median),
                init_scale=check_real("init_scale", init_scale, low=0, low_open=True),
                hyper_sites=model.hyper_site_names,
                rank=guide_rank,
            )
            self.guide()  # its parameters exist before configure_optimizers
        num_particles = check_int("num_particles", num_particles, low=1)
        self.elbo = Trace_ELBO(
            num_particles=num_particles,
            vectorize_particles=num_particles > 1,
            max_plate_nesting=1,
        )
        self.num_particles, self.guide_rank = num_particles, guide_rank
        with local_params():
            # the loss without Pyro's tracing, as fit computes it (same value, gradients):
            # AutoDelta's negative log joint, or the normal / mixed / lowrank guides' ELBO draw
            fast = fast_path(model, self.guide)
            self.fast_map, self.fast_elbo = fast == "map", fast == "elbo"
        self.losses: list[float] = []

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Negative ELBO of the batch ``(x, y)``, the likelihood scaled by ``num_data / len(x)``.

        ``model(x, y, num_data=N)``: the batch is the subsample of the model's
        data plate of size :math:`N` (``Trace_ELBO``, or :func:`~bayes_sws.infer.fastmap.map_loss`
        for an ``AutoDelta`` guide and :func:`~bayes_sws.infer.fastvi.elbo_loss` for the
        ``"normal"``, ``"mixed"`` and ``"lowrank"`` guides: the same values and gradients).
        """
        num_data = self._resolve_num_data()
        if x.shape[0] > num_data:
            raise ValueError(
                f"the batch holds {x.shape[0]} data points, more than num_data={num_data}, "
                "the size of the whole data set"
            )
        with local_params():
            if self.fast_map:
                return map_loss(self.model, self.guide, x, y, None, num_data)
            if self.fast_elbo:
                particles = self.num_particles
                return elbo_loss(self.model, self.guide, x, y, None, num_data, particles, True)
            program = functools.partial(self.model, num_data=num_data)
            return self.elbo.differentiable_loss(program, self.guide, x, y)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss(x, y)
        self.losses.append(float(loss.detach()))
        self.log("loss", loss.detach(), on_step=True, prog_bar=True, batch_size=x.shape[0])
        return loss

    def configure_optimizers(self):
        named_weights, named_hyper = split_guide_parameters(self.guide, self.model.hyper_site_names)
        weights = [p for _, p in named_weights]
        weights += [p for p in self.model.free_parameters().values() if p.requires_grad]
        hyper = [p for _, p in named_hyper]
        return adam_for(weights, hyper, lr=self.lr, mixture_lr=self.mixture_lr)

    def to_result(self) -> FitResult:
        """The fit as a :class:`~bayes_sws.infer.svi.FitResult` (this process's losses)."""
        config = {
            "guide": self.guide_name,
            "guide_rank": self.guide_rank,
            "lr": self.lr,
            "mixture_lr": self.mixture_lr,
            "num_data": self.num_data,
            **model_record(self.model),
            "source": "SWSLightningModule",
        }
        losses = np.asarray(self.losses, dtype=np.float64)
        return FitResult(self.model, self.guide, self.guide_name, losses, config)

    def _resolve_num_data(self) -> int:
        if self.num_data is None:
            loader = getattr(getattr(self, "_trainer", None), "train_dataloader", None)
            dataset: Any = getattr(loader, "dataset", None)
            if not hasattr(dataset, "__len__"):
                raise ValueError(
                    "num_data is None and the training DataLoader's dataset has no length; "
                    "pass SWSLightningModule(..., num_data=N), the size of the whole data set"
                )
            self.num_data = len(dataset)
        return self.num_data


def _build_class():
    pl = _lightning()

    class SWSLightningModule(_SWSLightningMixin, pl.LightningModule):
        __doc__ = _DOC

    # found by pickle through the module's __getattr__ (ddp_spawn, torch.save)
    SWSLightningModule.__qualname__ = "SWSLightningModule"
    return SWSLightningModule


_DOC = r"""A ``LightningModule`` training an :class:`~bayes_sws.core.model.SWSModel` by SVI.

Parameters
----------
model : SWSModel
    The model; its network's prior-carrying parameters start the guide and are
    then frozen (the guide holds the weights, as in :func:`bayes_sws.fit`);
    the other parameters (biases) are trained in place.
guide : str or callable
    Any guide of :mod:`bayes_sws.infer.guides` (``"map"``, ``"normal"``,
    ``"lowrank"``, ``"mixed"``; ``"laplace"`` trains its MAP) or a builder.
num_data : int, optional
    :math:`N`, the size of the whole training set; default the length of the
    training ``DataLoader``'s dataset. The likelihood of a batch of :math:`B`
    is scaled by :math:`N/B` on every process.
lr, mixture_lr : float
    Adam learning rates of the weights and of the mixture hyperparameters
    (``mixture_lr`` defaults to ``lr``), the parameter groups of :func:`bayes_sws.fit`.
init_scale : float
    Initial standard deviation of variational guides.
num_particles : int
    ELBO particles per step.
guide_rank : int, optional
    ``guide="lowrank"`` only: its covariance factor's rank (default Pyro's, the
    square root of the number of latent dimensions), as ``fit(guide_rank=...)``.

Attributes
----------
guide : pyro guide
    Built at construction (its parameters exist before ``configure_optimizers``).
losses : list of float
    The loss of every training step on this process.

Examples
--------
With your ``model`` and ``dataset`` (not run as a doctest; the README's Lightning
example is run whole by the tests):

>>> module = SWSLightningModule(model, guide="normal", num_data=len(dataset), lr=1e-3)  # doctest: +SKIP
>>> lightning.pytorch.Trainer(max_epochs=5).fit(module, DataLoader(dataset, batch_size=64))  # doctest: +SKIP
>>> result = module.to_result()     # a FitResult: compress_result, to_inference_data  # doctest: +SKIP
"""


@functools.cache
def _module_class():
    return _build_class()


def __getattr__(name: str):
    if name == "SWSLightningModule":
        return _module_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
