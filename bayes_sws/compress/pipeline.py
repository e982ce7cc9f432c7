r"""The compression pipeline of Ullrich, Meeds & Welling (ICLR 2017), as one call.

Starting from a pretrained network:

1. **retrain with the prior**: MAP of :math:`E(w) + \lambda\Omega(w) - \log p(\pi, \mu, \sigma)`
   (PRML 5.139 plus the hyperpriors) by SVI with ``AutoDelta``, under a mixture of
   ``num_components`` Gaussians whose component 0 sits at zero with mixing
   proportion :math:`\pi_0` fixed near 0.99 (or under a Beta prior), and Gamma
   hyperpriors on the precisions, much stronger for the zero component;
2. **quantise**: each weight takes the mean of its most responsible component
   (argmax of PRML 5.140), near-coincident components are merged, the zero
   component prunes (:func:`bayes_sws.compress.quantize`);
3. **account**: sparse storage with relative indices, Huffman-coded cluster
   indices, 32-bit codebooks and biases (:func:`bayes_sws.compress.storage_report`),
   and test accuracy before and after quantisation.

Optionally (``finetune_epochs > 0``) the shared values are then fine-tuned with
assignments and zeros fixed (:func:`bayes_sws.compress.finetune_codebook`), the
same last step as the Deep Compression baseline.

Soft-to-hard anneal
-------------------
Broad non-zero components keep the retrained network accurate but quantise
badly; tight ones quantise losslessly but cost accuracy from the start. With
``precision_prior_final`` the non-zero components' Gamma hyperprior moves
during retraining from ``precision_prior`` to ``precision_prior_final``
(geometrically, over ``anneal_epochs``): start with a broad slab
(:data:`SLAB_PRECISION_PRIOR`, σ ≈ 0.063) under which the zero component
decides which weights survive, end with tight shared values
(:data:`SHARING_PRECISION_PRIOR`, σ ≈ 0.0063) that the network then learns to
live on. In tuning runs on Fashion-MNIST LeNet-300-100 at λ = 0.2 this took
the error after quantisation from 13.58 % (broad Gamma(250, 0.1), no anneal)
to 11.11 % at the same 4.2 % non-zero weights, and codebook fine-tuning no
longer helped (``BENCHMARKS.md`` has the benchmark's rows).

:func:`soft_weight_sharing` runs all three; :func:`compress_result` runs steps 2
and 3 on an existing :class:`~bayes_sws.infer.FitResult` (what ``bayes-sws
compress DIR`` needs). Both return a :class:`CompressionResult`.

Hyperpriors
-----------
The defaults put strong Gamma priors on the precisions, with modes at
:math:`\sigma_0 = 5\cdot10^{-4}` for the zero component and :math:`\sigma_j = 2\cdot10^{-3}`
for the others. Every component starts broad (at the spacing of the initial
means) and Adam moves its log-precision by at most about ``mixture_lr`` per
step, so the narrowing is gradual: weights are first gathered by broad
components, then pulled tight onto their means while the network adapts. A
tight zero component matters most: on Fashion-MNIST (``BENCHMARKS.md``) the
prunable weights otherwise stay spread around zero, each tiny but together
carrying information, and setting them to zero cost up to 58 points of accuracy.

Ullrich et al. minimise, per example, ``mean CE + (τ/N) · (Ω − log p(σ))``: their
Gamma hyperpriors (:data:`ULLRICH_PRECISION_PRIOR`,
:data:`ULLRICH_ZERO_PRECISION_PRIOR`) are multiplied by the same
:math:`\tau = \lambda` as the mixture term. In this package hyperpriors are not
scaled, so ``temper_hyperprior=True`` reads the given Gamma(a, b) in their units:
it enters the model as :math:`\mathrm{Gamma}(a, b)^\lambda \propto
\mathrm{Gamma}(1 + \lambda(a - 1), \lambda b)`, same mode, the paper's strength.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..core.likelihoods import (
    Categorical,
    Likelihood,
    MixtureDensity,
    SoftCategorical,
    get_likelihood,
)
from ..core.model import SWSModel
from ..core.priors import Mixture, MixturePrior
from ..infer.loaders import BatchStream, dataset_size, is_batches
from ..infer.svi import FitResult, fit
from ..settings import (
    PRESETS,
    RETRAINING_SETTINGS,
    CompressSettings,
    Preset,
    epochs_to_steps,
    map_hyperprior_error,
    split_settings,
    steps_per_epoch,
    tempered_gamma,
)
from ..validation import check_int, check_real
from ..zoo.training import LR_SCHEDULES, accuracy, predict, rmse
from .codebook import finetune_codebook
from .quantize import QuantizeResult, quantize, quantize_groups, quantized_names
from .storage import StorageReport, check_index_bits, stored_network
from .surgery import UnitPruning, check_prune_units, prune_units

__all__ = [
    "DEFAULT_PRECISION_PRIOR",
    "DEFAULT_ZERO_PRECISION_PRIOR",
    "RECIPES",
    "RECIPE_PRETRAIN",
    "SHARING_PRECISION_PRIOR",
    "SLAB_PRECISION_PRIOR",
    "ULLRICH_PRECISION_PRIOR",
    "ULLRICH_ZERO_PRECISION_PRIOR",
    "CompressionResult",
    "Recipe",
    "anneal_schedule",
    "check_anneal",
    "compress_result",
    "compress_result_kwargs",
    "default_anneal_epochs",
    "distillation_targets",
    "precision_anneal",
    "soft_weight_sharing",
    "tempered_gamma",
]

#: Gamma (shape, rate) on the precision of the non-zero components, Ullrich et al.'s code
#: (``PRESETS["ullrich2017"]``).
ULLRICH_PRECISION_PRIOR: tuple[float, float] = PRESETS["ullrich2017"].prior.precision_prior
#: Gamma (shape, rate) on the zero component's precision: mode 2500 (σ₀ = 0.02), 20× stronger.
ULLRICH_ZERO_PRECISION_PRIOR: tuple[float, float] = PRESETS[  # type: ignore[assignment]
    "ullrich2017"
].prior.zero_precision_prior
#: :func:`soft_weight_sharing`'s Gamma (shape, rate) on the non-zero precisions: mode 2.49e5,
#: σ ≈ 0.002 (``PRESETS["compression"]``).
DEFAULT_PRECISION_PRIOR: tuple[float, float] = PRESETS["compression"].prior.precision_prior
#: Its Gamma (shape, rate) on the zero component's precision: mode 4.0e6, σ₀ ≈ 0.0005.
DEFAULT_ZERO_PRECISION_PRIOR: tuple[float, float] = PRESETS[  # type: ignore[assignment]
    "compression"
].prior.zero_precision_prior
#: Start of a soft-to-hard anneal: a broad slab, mode 249 (σ ≈ 0.063).
SLAB_PRECISION_PRIOR: tuple[float, float] = (250.0, 1.0)
#: End of a soft-to-hard anneal: tight shared values, mode 2.49e4 (σ ≈ 0.0063).
SHARING_PRECISION_PRIOR: tuple[float, float] = (250.0, 1e-2)
#: What a :class:`Recipe` may record of its pretraining: the keywords of
#: :func:`~bayes_sws.zoo.training.train` that a run reproduces (``bayes-sws fit --recipe``),
#: ``lr_scheduler`` by its name in :data:`~bayes_sws.zoo.training.LR_SCHEDULES`.
RECIPE_PRETRAIN: tuple[str, ...] = ("num_epochs", "lr", "batch_size", "lr_scheduler")


@dataclass(frozen=True)
class Recipe:
    """:func:`soft_weight_sharing` settings chosen on a validation split, λ among them.

    ``prior_scale`` (λ) was chosen from ``grid`` by the validation error of networks retrained
    on ``num_train`` training images (``benchmarks/compression_validated.py``, or
    :func:`~bayes_sws.compress.tuning.tune_soft_weight_sharing` in
    ``examples/choose_lambda.py``); ``settings`` are the other keyword arguments.

    The objective is ``E(w) + λΩ(w)``: the data term ``E`` sums over the training images, the
    prior ``Ω`` is counted once. On a training set of a different size the same λ weighs
    differently against the data (on the whole Fashion-MNIST training set, 60,000 images
    against the 54,000 λ was chosen at, LeNet-300-100 pruned to 65.8× at the same λ and to
    72.6× at λ scaled, where the split gave 76.9×; BENCHMARKS.md). :meth:`kwargs` with ``num_train`` keeps the trade-off per image:
    ``λ · num_train / self.num_train``, so ``E/N + (λ/N)·Ω`` is the objective that was chosen.

    Even so, the refit on the whole training set need not prune as hard as the split's
    retrainings did (a network pretrained on more images; Fashion-MNIST LeNet-300-100: 74.8×
    over three replicates where the split gave 80.1× over three seeds). ``rate`` is the mean compression rate of the
    chosen setting on validation, and ``refit_prior_scale`` (with ``refit_num_train``) the λ,
    on the same per-image scale, at which the refit on ``refit_num_train`` images reaches that
    rate (:func:`~bayes_sws.compress.tuning.calibrate_refit_scale`, which reads no test or
    validation label): :meth:`kwargs` uses it for a refit on that many images. Where the
    settings prune hidden units (``prune_units``, a budget in nats a training point, which
    acts after retraining), ``rate`` is the retraining's without that step: the refit is
    calibrated to what retraining prunes, and the units go after it at the same budget.

    ``pretrain`` is how the networks it was chosen for were pretrained
    (:func:`~bayes_sws.zoo.training.train`'s keywords of :data:`RECIPE_PRETRAIN`; empty
    when not recorded): ``benchmarks/compression.py`` pretrains so, and ``bayes-sws fit
    --recipe NAME`` too.
    """

    prior_scale: float
    grid: tuple[float, ...]
    num_train: int
    settings: Mapping[str, Any]
    rate: float | None = None
    refit_prior_scale: float | None = None
    refit_num_train: int | None = None
    pretrain: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:  # read-only: a recipe is a record of what was chosen
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))
        object.__setattr__(self, "pretrain", MappingProxyType(dict(self.pretrain)))
        if (self.refit_prior_scale is None) != (self.refit_num_train is None):
            raise ValueError(
                "Recipe: give refit_prior_scale and refit_num_train together (the λ the refit "
                f"on that many images reaches the validated rate at); got {self.refit_prior_scale!r} "
                f"and {self.refit_num_train!r}"
            )
        unknown = sorted(set(self.pretrain) - set(RECIPE_PRETRAIN))
        if unknown:
            raise ValueError(
                f"Recipe: pretrain has {', '.join(map(repr, unknown))}, which a run cannot "
                f"reproduce; record only {', '.join(RECIPE_PRETRAIN)} (train's keywords)"
            )
        schedule = self.pretrain.get("lr_scheduler", LR_SCHEDULES[0])
        if schedule not in LR_SCHEDULES:
            raise ValueError(
                f"Recipe: pretrain's lr_scheduler is {schedule!r}; a recipe records a schedule "
                f"by name, one of {', '.join(LR_SCHEDULES)}"
            )

    def __reduce__(self) -> tuple[Any, ...]:  # pickle and deepcopy (a mappingproxy cannot)
        fields = (self.prior_scale, self.grid, self.num_train, dict(self.settings))
        refit = (self.rate, self.refit_prior_scale, self.refit_num_train)
        return (Recipe, (*fields, *refit, dict(self.pretrain)))

    def refit_scale(self, num_train: int) -> float:
        """λ (on this recipe's per-image scale, as chosen) for a refit on ``num_train``
        images: ``refit_prior_scale`` when calibrated for that many, else ``prior_scale``."""
        if self.refit_prior_scale is not None and num_train == self.refit_num_train:
            return self.refit_prior_scale
        return self.prior_scale

    def scaled(self, prior_scale: float, num_train: int) -> float:
        """λ for ``num_train`` training images with the trade-off per image ``prior_scale``
        made at this recipe's ``num_train``: ``prior_scale · num_train / self.num_train``."""
        check_real("prior_scale", prior_scale, low=0.0)
        check_int("num_train", num_train, low=1)
        return prior_scale * num_train / self.num_train

    def kwargs(
        self, prior_scale: float | None = None, *, num_train: int | None = None
    ) -> dict[str, Any]:
        """Keyword arguments for :func:`soft_weight_sharing` (a new dict).

        ``prior_scale`` replaces the chosen λ (to trace a front with the same settings);
        ``num_train``, the size of the training set the network will be retrained on, scales
        λ by ``num_train / self.num_train`` (:meth:`scaled`), and without ``prior_scale``
        takes the λ calibrated for a refit on that many images (:meth:`refit_scale`).
        """
        scale = prior_scale
        if scale is None:
            scale = self.prior_scale if num_train is None else self.refit_scale(num_train)
        if num_train is not None:
            scale = self.scaled(scale, num_train)
        return {"prior_scale": scale, **self.settings}

    def preset(self, num_train: int | None = None) -> Preset:
        """Every setting :func:`soft_weight_sharing` runs this recipe with, as a
        :class:`~bayes_sws.settings.Preset` (``PRESETS["compression"]`` with
        :meth:`kwargs`, λ for ``num_train`` training images): how ``bayes-sws fit --recipe``
        retrains and ``bayes-sws compress`` stores such a run."""
        return _pipeline_settings("compression", self.kwargs(num_train=num_train))


#: Recipes per ``"data/network"`` (the networks of :mod:`bayes_sws.zoo.nets` on raw pixels in
#: [0, 1]), every setting chosen on a validation split (10 % of the training set, seed 0;
#: BENCHMARKS.md, "Compression: chosen on validation"). Fashion-MNIST LeNet-300-100: the anneal
#: from a broad slab to tight shared values over epochs 28-38 of 40 at the weights' lr 1e-3,
#: a zero component σ₀ ≈ 1e-3 with its weight fixed at π₀ = 0.999 (Ullrich et al.'s; at 0.99
#: the front lay about 0.2 points higher: its best within the margin was 76.9× at +0.34,
#: against 80.1× at +0.30), then one epoch of codebook fine-tuning at lr 1e-4 (before and after
#: any unit pruning; it lets a unit-pruning budget take more units for less error: at 0.01,
#: 107.1x at -0.04 against 98.7x at +0.07 without it). Fashion-MNIST LeNet-5-Caffe: the
#: anneal over the default window of 30 epochs, π₀ = 0.999 too (on split 0: 105.2x at +0.41
#: at λ = 0.095, where 0.99's best within the margin was 94.4x at +0.48 at λ = 0.15), then
#: one epoch of codebook fine-tuning at lr 1e-4 (it gives back the first convolution's
#: quantisation loss). Digits: the mixture's lr 1e-2, then Deep Compression's codebook
#: fine-tuning (10 and 5 epochs at lr 1e-3). λ by the mean over retraining seeds 0-2:
#: the largest whose validation error stays within 0.5 points of the pretrained network's.
#: Fashion-MNIST LeNet-300-100's refit on all 60,000 images at the chosen λ = 0.07 (scaled)
#: falls short of the rate its retrainings reached on the validation splits (67.5x before unit
#: pruning, the mean over splits 0-2): it refits at 0.075, the smallest of 0.075, 0.08 and
#: 0.085 whose refits reach it (67.9x over seeds 0-2, benchmarks/calibrate_refit.py, training
#: set only). LeNet-5's choice on three splits, λ = 0.075, reached 89.3x before unit pruning;
#: its refit at 0.075 falls short (87.5x), at 0.08 it reaches 91.4x (seeds 0-2, the same
#: calibration, units reordered as on validation).
#: Both then prune whole hidden units after quantisation (``prune_units``, nats of training
#: loss a point): the Fashion-MNIST budgets (off, 0.005, 0.01, 0.02) and λ are chosen towards
#: issue 16's goals, the least validation increase plus one paired standard error among the
#: settings within 0.5 points that reach the goal's rate
#: (``tune_soft_weight_sharing(standard_errors=1, target_rate=80 / 120)``). LeNet-300-100 on
#: three validation splits (seeds 0-2, one network pretrained on each; λ 0.07 and 0.085):
#: λ = 0.07 with 0.005, 81.5x at -0.02 +- 0.19 (λ = 0.085 unpruned, the single split's
#: choice, reaches only 79.7x there); LeNet-5 on the same three splits (λ 0.075 and 0.085):
#: none reaches 120x within the margin, and the highest rate within it is λ = 0.075 with
#: 0.005, 109.7x at +0.26 +- 0.20 (0.01: 117.9x at +0.31, over the margin with its standard
#: error; split 0 alone had chosen λ = 0.095 with 0.005, 128.4x at +0.10, its network reading
#: every setting 0.8-1.2 points better than the other splits'). ``rate`` stays the
#: retraining's before unit pruning, what the refit is calibrated to (BENCHMARKS.md).
#: Use one as ``soft_weight_sharing(net, data, **RECIPES[name].kwargs(num_train=N))``.
_ANNEAL = {  # Fashion-MNIST: retrain under the anneal from a broad slab to tight shared values
    "precision_prior": SLAB_PRECISION_PRIOR,
    "precision_prior_final": SHARING_PRECISION_PRIOR,
    "remove_dead_units": True,
    "reorder_units": True,
}
_DIGITS = {  # digits: small batches, a fast mixture, Deep Compression's codebook fine-tuning
    "batch_size": 64,
    "mixture_lr": 1e-2,
    "finetune_lr": 1e-3,
    "remove_dead_units": True,
    "reorder_units": True,
}
RECIPES: dict[str, Recipe] = {
    "fashion-mnist/lenet-300-100": Recipe(
        prior_scale=0.07,
        grid=(0.06, 0.07, 0.08, 0.085, 0.09, 0.1, 0.11, 0.13),
        num_train=54_000,
        settings={
            **_ANNEAL,
            "pi_zero": 0.999,
            "zero_precision_prior": (5000.0, 5e-3),
            "lr": 1e-3,
            "num_epochs": 40,
            "anneal_epochs": (28, 38),
            "finetune_epochs": 1,
            "finetune_lr": 1e-4,
            "prune_units": 0.005,
        },
        rate=67.5,
        refit_prior_scale=0.075,
        refit_num_train=60_000,
        pretrain={"num_epochs": 30, "lr": 1e-3, "batch_size": 128},
    ),
    "fashion-mnist/lenet-5": Recipe(
        prior_scale=0.075,
        grid=(0.075, 0.085, 0.095, 0.1),
        num_train=54_000,
        settings={
            **_ANNEAL,
            "pi_zero": 0.999,
            "num_epochs": 30,
            "finetune_epochs": 1,
            "finetune_lr": 1e-4,
            "prune_units": 0.005,
        },
        rate=89.3,
        refit_prior_scale=0.08,
        refit_num_train=60_000,
        pretrain={"num_epochs": 20, "lr": 1e-3, "batch_size": 128},
    ),
    "digits/lenet-300-100": Recipe(
        prior_scale=0.03,
        grid=(0.01, 0.03, 0.1),
        num_train=1293,
        settings={**_DIGITS, "num_epochs": 100, "finetune_epochs": 10},
        pretrain={"num_epochs": 60, "lr": 1e-3, "batch_size": 64},
    ),
    "digits/lenet-5": Recipe(
        prior_scale=0.003,
        grid=(0.003, 0.01, 0.03),
        num_train=1293,
        settings={**_DIGITS, "num_epochs": 60, "finetune_epochs": 5},
        pretrain={"num_epochs": 30, "lr": 1e-3, "batch_size": 64},
    ),
}


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class CompressionResult:
    """A network compressed by soft weight-sharing, with its storage and accuracy.

    Attributes
    ----------
    net : nn.Module
        The quantised network: prior-carrying tensors take only the shared
        values (pruned weights exactly 0); other parameters as retrained. After
        codebook fine-tuning (``finetune_epochs > 0``) each layer's shared
        values (and the biases) are fine-tuned, assignments unchanged.
    retrained_net : nn.Module
        The network after retraining with the prior, before quantisation.
    quantization : QuantizeResult
        Assignments, merged codebook and counts (:func:`~bayes_sws.compress.quantize`).
    storage : StorageReport
        Bits per layer and in total of ``stored_net``
        (:func:`~bayes_sws.compress.storage_report`).
    mixture : Mixture
        The learned mixture ``(pi, mu, sigma)`` before merging, zero component first.
    test_accuracy_pretrained : float or None
        Accuracy of the network before retraining, when known.
    test_accuracy_before, test_accuracy_after : float or None
        Test accuracy of the retrained network before and after quantisation
        (``None`` for regression targets).
    test_rmse_before, test_rmse_after : float or None
        Test root mean squared error, for regression targets (else ``None``).
    test_accuracy_quantized, test_rmse_quantized : float or None
        The same right after quantisation, before codebook fine-tuning (equal
        to the *after* values when there was no fine-tuning).
    test_log_likelihood_before, test_log_likelihood_after, test_log_likelihood_quantized : float or None
        For a mixture density likelihood (where accuracy and RMSE do not
        apply): the mean held-out log-likelihood per test point (5.148), at the same three
        stages; ``None`` otherwise.
    fit : FitResult or None
        The retraining run (``None`` only if the result was built without one).
    wall_time : float
        Seconds: retraining (when run here) plus quantisation and accounting.
    config : dict
        Settings of the run, JSON-ready.
    stored_net : nn.Module or None
        The network as stored and counted: ``net`` itself, or with
        ``remove_dead_units=True`` ``net`` without its dead hidden units
        (:func:`~bayes_sws.compress.remove_dead_units`; same function, smaller
        shapes). The *after* accuracies are measured on it.
    unit_pruning : UnitPruning or None
        With ``prune_units``: which hidden units were held at their mean output
        after quantisation (:func:`~bayes_sws.compress.prune_units`), and the
        training loss before and after.
    """

    net: nn.Module
    retrained_net: nn.Module
    quantization: QuantizeResult
    storage: StorageReport
    mixture: Mixture
    test_accuracy_pretrained: float | None
    test_accuracy_before: float | None
    test_accuracy_after: float | None
    test_rmse_before: float | None = None
    test_rmse_after: float | None = None
    test_accuracy_quantized: float | None = None
    test_rmse_quantized: float | None = None
    test_log_likelihood_before: float | None = None
    test_log_likelihood_after: float | None = None
    test_log_likelihood_quantized: float | None = None
    fit: FitResult | None = None
    wall_time: float = 0.0
    config: dict = field(default_factory=dict)
    stored_net: nn.Module | None = None
    unit_pruning: UnitPruning | None = None

    @property
    def compression_rate(self) -> float:
        """32-bit dense size ÷ compressed size (Huffman-coded cluster indices)."""
        return self.storage.compression_rate

    @property
    def compression_rate_entropy(self) -> float:
        """Compression rate with cluster indices at their entropy bound."""
        return self.storage.compression_rate_entropy

    @property
    def nonzero_fraction(self) -> float:
        """Non-zero share of the compressed tensors (Ullrich et al.'s ``|W≠0|/|W|``)."""
        return self.storage.nonzero_fraction

    @property
    def num_components(self) -> int:
        """Components after merging, zero included (empty ones too: see :attr:`num_distinct_values`)."""
        return self.quantization.num_components

    @property
    def num_distinct_values(self) -> int:
        """Distinct values of the quantised tensors as quantised, zero included when a weight is pruned.

        The shared values the network really uses (:attr:`QuantizeResult.num_distinct_values`):
        components no weight went to are not counted. Each layer stores its own
        among them (``LayerStorage.num_distinct``, non-zero ones).
        """
        return self.quantization.num_distinct_values

    @property
    def num_merged(self) -> int:
        """Learned components merged into another before quantising (``merge_threshold``,
        ``value_tolerance``)."""
        return self.quantization.num_merged

    @property
    def num_empty(self) -> int:
        """Components after merging that no weight was assigned to."""
        return self.quantization.num_empty

    @property
    def layers(self) -> list[dict[str, Any]]:
        """The per-layer table: one JSON-ready dict per compressed tensor."""
        return self.storage.to_dict()["layers"]

    def format_table(self) -> str:
        """Markdown table of the storage per layer and in total."""
        return self.storage.format_table()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: the headline numbers, the mixture, the per-layer table."""
        m = self.quantization
        return {
            "compression_rate": self.compression_rate,
            "compression_rate_entropy": self.compression_rate_entropy,
            "nonzero_fraction": self.nonzero_fraction,
            "test_accuracy_pretrained": self.test_accuracy_pretrained,
            "test_accuracy_before": self.test_accuracy_before,
            "test_accuracy_after": self.test_accuracy_after,
            "test_rmse_before": self.test_rmse_before,
            "test_rmse_after": self.test_rmse_after,
            "test_accuracy_quantized": self.test_accuracy_quantized,
            "test_rmse_quantized": self.test_rmse_quantized,
            "test_log_likelihood_before": self.test_log_likelihood_before,
            "test_log_likelihood_after": self.test_log_likelihood_after,
            "test_log_likelihood_quantized": self.test_log_likelihood_quantized,
            "num_components": self.num_components,
            "num_distinct_values": self.num_distinct_values,
            "num_merged": self.num_merged,
            "num_empty": self.num_empty,
            "codebook": m.values.tolist(),
            "mixture": {
                "pi": self.mixture.pi.tolist(),
                "mu": self.mixture.mu.tolist(),
                "sigma": self.mixture.sigma.tolist(),
            },
            "num_params": self.storage.num_params,
            "num_compressed_params": self.storage.num_compressed_params,
            "num_nonzero": self.storage.num_nonzero,
            "total_bits": self.storage.total_bits,
            "original_bits": self.storage.original_bits,
            "layers": self.layers,
            "wall_time": self.wall_time,
            "config": dict(self.config),
        }


# --------------------------------------------------------------------------- helpers


class _Scores(NamedTuple):
    accuracy: float | None
    rmse: float | None
    log_likelihood: float | None


def _scores(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, likelihood: Likelihood | None = None
) -> _Scores:
    """Accuracy for integer class labels, RMSE for real targets; for a mixture
    density likelihood, whose mean can sit between branches, the mean held-out
    log-likelihood per point instead."""
    if isinstance(likelihood, MixtureDensity):
        output = predict(net, x)
        log_lik = likelihood.distribution(output, {}).log_prob(y.to(output.device, output.dtype))
        return _Scores(None, None, float(log_lik.double().mean()))
    if y.is_floating_point():
        return _Scores(None, rmse(net, x, y), None)
    return _Scores(accuracy(net, x, y), None, None)


def _finetune_loss(likelihood: Likelihood, y: torch.Tensor):
    """Codebook fine-tuning's loss: the likelihood's mean NLL for an MDN, CE against labels
    or class probabilities (:class:`~bayes_sws.core.likelihoods.SoftCategorical`), else CE
    or MSE."""
    if isinstance(likelihood, MixtureDensity):
        return likelihood.mean_nll
    if isinstance(likelihood, SoftCategorical):
        return F.cross_entropy  # torch's takes labels (N,) and probabilities (N, K) alike
    return "mse" if y.is_floating_point() else "cross_entropy"


def distillation_targets(
    teacher: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    weight: float,
    temperature: float = 1.0,
) -> torch.Tensor:
    r"""Soft targets for retraining against ``teacher`` (knowledge distillation).

    Row :math:`n` is :math:`(1 - \alpha)\,\mathrm{onehot}(y_n) + \alpha\,
    \mathrm{softmax}(f(x_n) / T)` with :math:`\alpha` = ``weight`` and :math:`T` =
    ``temperature``, :math:`f` the teacher's logits: under a
    :class:`~bayes_sws.core.likelihoods.SoftCategorical` likelihood the data term is the
    labels' cross-entropy weighted by :math:`1 - \alpha` plus the teacher's by
    :math:`\alpha` (Hinton et al. 2015, here with the student at temperature 1).

    Parameters
    ----------
    teacher : nn.Module
        A classifier (logits ``(N, K)``); run in eval mode, without gradients.
    x : Tensor
        Inputs, in the teacher's dtype.
    y : Tensor
        Class labels ``(N,)`` in ``0 .. K-1``.
    weight : float
        :math:`\alpha` in [0, 1].
    temperature : float
        :math:`T > 0`; above 1 softens the teacher's probabilities.

    Returns
    -------
    Tensor
        ``(N, K)`` rows on the simplex, in the teacher's dtype and on its device.
    """
    weight = check_real("distill", weight, low=0.0, high=1.0)
    temperature = check_real("distill_temperature", temperature, low=0.0, low_open=True)
    logits = predict(teacher, x)
    if logits.dim() != 2:
        raise ValueError(
            f"distillation needs a classifier's logits (N, num_classes), got {tuple(logits.shape)}"
        )
    labels = get_likelihood("categorical").check_targets(torch.as_tensor(y), logits)
    one_hot = F.one_hot(labels.to(logits.device), logits.shape[-1]).to(logits.dtype)
    return (1 - weight) * one_hot + weight * torch.softmax(logits / temperature, dim=-1)


def _distilled_likelihood(likelihood: str | Likelihood) -> Likelihood:
    """The likelihood that retrains against distillation's soft targets: categorical only."""
    resolved = get_likelihood(likelihood)
    if not isinstance(resolved, Categorical):
        raise ValueError(
            f"distill needs a classifier (the categorical likelihood), got the "
            f"{resolved.name!r} likelihood; set distill=0"
        )
    return resolved if isinstance(resolved, SoftCategorical) else SoftCategorical()


def _as_tensor(value: Any, name: str) -> torch.Tensor:
    if value is None:
        raise ValueError(f"{name} is None; compression needs test inputs and targets")
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"{name} must be a tensor or array, got {type(value).__name__}: {err}"
        ) from None


def _unpack_data(data: Any) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_test, y_test)`` from a :class:`~bayes_sws.zoo.data.Dataset` or a 4-tuple."""
    names = ("x_train", "y_train", "x_test", "y_test")
    if all(hasattr(data, n) for n in names):
        parts = [getattr(data, n) for n in names]
    elif isinstance(data, (tuple, list)) and len(data) == 4:
        parts = list(data)
    else:
        raise TypeError(
            "data must be a bayes_sws.zoo.data.Dataset (e.g. load_dataset('digits')) or a tuple "
            f"(x_train, y_train, x_test, y_test); got {type(data).__name__}"
        )
    return tuple(_as_tensor(p, n) for p, n in zip(parts, names, strict=True))


# --------------------------------------------------------------------------- public API
#: CompressSettings passed on to :func:`compress_result` as they are: all but those that shape
#: the retraining (:data:`~bayes_sws.settings.RETRAINING_SETTINGS`).
_COMPRESS_RESULT_SETTINGS = tuple(
    name for name in CompressSettings.names() if name not in RETRAINING_SETTINGS
)


def compress_result_kwargs(settings: CompressSettings) -> dict[str, Any]:
    """The keyword arguments of :func:`compress_result` that ``settings`` gives.

    Every :class:`~bayes_sws.settings.CompressSettings` field but those that shape the
    retraining (:data:`~bayes_sws.settings.RETRAINING_SETTINGS`), by name:
    ``compress_result(fit, x, y, **compress_result_kwargs(settings))``.
    """
    if not isinstance(settings, CompressSettings):
        raise TypeError(f"settings must be a CompressSettings, got {type(settings).__name__}")
    return {name: getattr(settings, name) for name in _COMPRESS_RESULT_SETTINGS}


def _listed(pair: tuple[float, float] | None) -> list[float] | None:
    return None if pair is None else list(pair)


def _pipeline_settings(preset: str | Preset, overrides: dict[str, Any]) -> Preset:
    """The preset with ``overrides`` applied: what :func:`soft_weight_sharing` runs with."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    elif not isinstance(preset, Preset):
        raise TypeError(
            f"preset must be a name in bayes_sws.settings.PRESETS or a Preset, got {preset!r}"
        )
    overrides, where = dict(overrides), "soft_weight_sharing"
    if "num_steps" in overrides and "num_epochs" not in overrides:
        overrides["num_epochs"] = None  # steps given: the preset's epochs do not apply
    try:
        chosen = split_settings(overrides, base=preset, where=where)
    except TypeError as err:
        raise TypeError(
            f"{err}; accepted: the names of PriorSettings, FitSettings and CompressSettings"
        ) from None
    chosen.compress.check_values(where)  # before minutes of retraining, not after
    if chosen.fit.guide != "map" or not chosen.prior.zero_component:
        raise ValueError(
            "soft_weight_sharing retrains by MAP with a zero component; drop guide and "
            "zero_component (use bayes_sws.fit for other guides)"
        )
    prior = chosen.prior
    if prior.pi_zero is None and "init_pi_zero" not in overrides:
        a, b = prior.pi_zero_prior
        prior = prior.replace(init_pi_zero=a / (a + b))  # π0 starts at its Beta mean
    return dataclasses.replace(chosen, prior=prior)


def _warmup(prior_scale: float, epochs: float, steps_per_epoch: int):
    """λ at each step: a linear ramp over ``epochs`` epochs to ``prior_scale``, then constant."""
    epochs = check_real("prior_scale_warmup", epochs, low=0, hint="it counts epochs")
    ramp_steps = max(1, round(epochs * steps_per_epoch))
    return lambda step: prior_scale * min(1.0, (step + 1) / ramp_steps)


#: Piecewise-constant stages of the precision anneal (the fast MAP loss rebuilds its
#: hyperprior densities when the prior changes, so not at every step).
ANNEAL_STAGES = 100


def check_anneal(final: tuple[float, float] | None, epochs: tuple[float, float] | None) -> None:
    """The anneal's settings make sense together: epochs only with a final prior, start <= end.

    Raises ``ValueError`` naming the bad value (``RunConfig`` reports it as a ``RunError``).
    """
    if epochs is None:
        return
    if final is None:
        raise ValueError(
            "anneal_epochs needs precision_prior_final (the Gamma (shape, rate) to anneal to), "
            f"got anneal_epochs={epochs!r} alone; give both or neither"
        )
    if len(tuple(epochs)) != 2 or not 0 <= epochs[0] <= epochs[1]:
        raise ValueError(
            f"anneal_epochs must be (start, end) epochs with 0 <= start <= end, got {epochs!r}"
        )


def anneal_schedule(
    start: tuple[float, float],
    final: tuple[float, float] | None,
    epochs: tuple[float, float] | None,
    steps_per_epoch: int,
):
    """The non-zero precisions' Gamma (shape, rate) at each step, or ``None`` for no anneal.

    Geometric interpolation from ``start`` to ``final`` between the two epochs of
    ``epochs``, in :data:`ANNEAL_STAGES` equal steps of the log-parameters.
    """
    check_anneal(final, epochs)
    if final is None:
        return None
    if epochs is None:
        raise ValueError("anneal_schedule needs anneal_epochs (see default_anneal_epochs)")
    first, last = (round(e * steps_per_epoch) for e in epochs)
    log_start = torch.tensor(start, dtype=torch.float64).log()
    log_final = torch.tensor(final, dtype=torch.float64).log()

    def at(step: int) -> tuple[float, float]:
        done = 1.0 if step >= last else max(0, step - first) / max(1, last - first)
        stage = int(done * ANNEAL_STAGES) / ANNEAL_STAGES
        shape, rate = (log_start + stage * (log_final - log_start)).exp().tolist()
        return shape, rate

    return at


def precision_anneal(
    prior: MixturePrior,
    final: tuple[float, float] | None,
    epochs: tuple[float, float] | None,
    steps_per_epoch: int,
):
    """``set(step)``: put the annealed precision prior of ``step`` in force on ``prior``.

    The anneal starts from the prior's own precision hyperprior. Used by
    :func:`soft_weight_sharing` and by ``bayes-sws fit`` (run directories): the
    prior is a function of the step, so a resumed run sets the prior of its
    first step from it. ``None`` when ``final`` is ``None`` (no anneal).
    """
    start = (prior.precision_concentration, prior.precision_rate)
    at = anneal_schedule(start, final, epochs, steps_per_epoch)
    if at is None:
        return None

    def set_prior(step: int) -> None:
        prior.precision_concentration, prior.precision_rate = at(step)

    return set_prior


def default_anneal_epochs(num_steps: int, steps_per_epoch: int) -> tuple[float, float]:
    """The default anneal window: from half-way to 90 % of ``num_steps``, in epochs."""
    total_epochs = num_steps / steps_per_epoch
    return 0.5 * total_epochs, 0.9 * total_epochs


def _on_model(
    like: torch.Tensor, x: Any, y: Any, names: tuple[str, str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets as tensors on the device of ``like`` (a model tensor), inputs in its dtype."""
    x = _as_tensor(x, names[0]).to(device=like.device, dtype=like.dtype)
    y = _as_tensor(y, names[1]).to(like.device)
    return x, y


def _checked_inputs(
    fit_result: Any,
    x_test: Any,
    y_test: Any,
    finetune_epochs: Any,
    finetune_data: Any,
    prune: Any = None,
    remove_dead: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """:func:`compress_result`'s inputs checked: the test data on the model's device, the epochs."""
    if not isinstance(fit_result, FitResult):
        raise TypeError(
            f"fit_result must be the FitResult returned by bayes_sws.fit, got {type(fit_result).__name__}"
        )
    x_test, y_test = _on_model(fit_result.model.like_tensor(), x_test, y_test, ("x_test", "y_test"))
    if x_test.dim() == 0 or y_test.dim() == 0 or x_test.shape[0] != y_test.shape[0]:
        raise ValueError(
            "x_test and y_test must hold the same number of examples, got shapes "
            f"{tuple(x_test.shape)} and {tuple(y_test.shape)}"
        )
    finetune_epochs = check_int("finetune_epochs", finetune_epochs, low=0)
    if finetune_epochs > 0 and finetune_data is None:
        raise ValueError(
            f"finetune_epochs={finetune_epochs} needs finetune_data=(x_train, y_train)"
        )
    check_prune_units(prune, remove_dead)
    if prune is not None and finetune_data is None:
        raise ValueError(
            f"prune_units={prune} scores the units on training data: give "
            "finetune_data=(x_train, y_train)"
        )
    return x_test, y_test, finetune_epochs


def _quantize_fit(
    fit_result: FitResult, **options: Any
) -> tuple[nn.Module, Mixture, QuantizeResult]:
    """The retrained (median) network, the learned mixture, and the network quantised with it.

    ``options`` go to :func:`~bayes_sws.compress.quantize` (merging, assignment, ``keep_float``).
    """
    model = fit_result.model
    retrained = fit_result.map_network()
    mixture = Mixture(*(t.detach().reshape(-1).cpu() for t in fit_result.mixture()))
    if model.groups is not None:  # a mixture per group: per-group codebooks
        mixtures = {
            g: Mixture(*(t.detach().reshape(-1).cpu() for t in m))
            for g, m in model.mixtures(fit_result.median()).items()
            if g is not None
        }
        grouped = quantize_groups(
            retrained,
            mixtures,
            model.groups,
            zero_component=model.prior.zero_component,
            **options,
        )
        return retrained, mixture, grouped
    quantized = quantize(
        retrained,
        mixture.pi,
        mixture.mu,
        mixture.sigma,
        param_names=list(model.prior_param_names),
        zero_component=model.prior.zero_component,
        **options,
    )
    return retrained, mixture, quantized


def _pruned(
    net: nn.Module, model: SWSModel, data: tuple[Any, Any], max_loss_increase: float
) -> UnitPruning:
    """``net`` with its least needed hidden units held at their mean output
    (:func:`~bayes_sws.compress.prune_units` on the training ``data``)."""
    x, y = _on_model(model.like_tensor(), *data, ("x_train", "y_train"))
    return prune_units(
        net,
        x,
        y,
        max_loss_increase=max_loss_increase,
        loss=_finetune_loss(model.likelihood, y),
    )


def _finetuned_copy(
    quantized: QuantizeResult,
    model: SWSModel,
    finetune_data: tuple[Any, Any],
    pruning: UnitPruning | None = None,
    **options: Any,
) -> nn.Module:
    """A copy of the quantised (and pruned) network with its codebook fine-tuned on
    ``finetune_data``; the weights pruning zeroed stay 0.

    ``options`` go to :func:`~bayes_sws.compress.finetune_codebook` (epochs, learning rate, ...).
    """
    x_ft, y_ft = _on_model(model.like_tensor(), *finetune_data, ("x_train", "y_train"))
    tuned = copy.deepcopy(quantized.net if pruning is None else pruning.net)
    zero = model.prior.zero_component
    # per-layer cluster index: the merged component, pruned (-1) for the zero component
    assignments = {n: (a - 1 if zero else a) for n, a in quantized.assignments.items()}
    if pruning is not None:
        assignments = pruning.prune_assignments(assignments)
    finetune_codebook(
        tuned,
        assignments,
        x_ft,
        y_ft,
        loss=_finetune_loss(model.likelihood, y_ft),
        **options,
    )
    return tuned


def _final_and_stored(
    quantized: QuantizeResult,
    model: SWSModel,
    finetune_data: tuple[Any, Any] | None,
    prune: float | None,
    *,
    index_bits: int | dict[str, int] | None,
    position_coding: Literal["fixed", "rice"],
    remove_dead_units: bool,
    reorder_units: bool,
    **finetune: Any,
) -> tuple[nn.Module, nn.Module, StorageReport, UnitPruning | None]:
    """The final network, the network as stored, its storage report, and the unit pruning.

    The final network is the quantised one, or a copy with its codebook fine-tuned when
    ``finetune["num_epochs"] > 0`` (``finetune`` goes to :func:`_finetuned_copy`). With
    ``prune`` (``prune_units``) its least needed hidden units are then held at their mean
    output on ``finetune_data`` (:func:`_pruned`; scored on the fine-tuned network: on
    Fashion-MNIST LeNet-5 at a budget of 0.005, 52 units went before fine-tuning and 275
    after, dead ones included, 115x against 129x), and the codebook is fine-tuned once more
    without them. It is stored by :func:`~bayes_sws.compress.stored_network` with the quantised
    parameters compressed.
    """
    final, pruning = quantized.net, None
    tune = finetune["num_epochs"] > 0
    if finetune_data is not None:  # required by fine-tuning and pruning: checked before
        if tune:
            final = _finetuned_copy(quantized, model, finetune_data, **finetune)
        if prune is not None:
            pruning = _pruned(final, model, finetune_data, prune)
            final = pruning.net
            if tune:  # the biases and shared values settle without the pruned units
                final = _finetuned_copy(quantized, model, finetune_data, pruning, **finetune)
    stored, storage = stored_network(
        final,
        param_names=list(quantized.param_names),
        index_bits=index_bits,
        remove_dead=remove_dead_units,
        position_coding=position_coding,
        reorder_units=reorder_units,
    )
    return final, stored, storage, pruning


def _model_config(model: SWSModel) -> dict[str, Any]:
    """``{"groups": {group: [parameter names]}}`` for a model with grouped mixtures and
    ``{"tensor_scales": {name: multiplier of λ}}`` for one with them; else ``{}``."""
    config: dict[str, Any] = {}
    if model.groups is not None:
        config["groups"] = {g: list(names) for g, names in model.groups.items()}
    if model.tensor_scales:
        config["tensor_scales"] = dict(model.tensor_scales)
    return config


def _compression_config(
    fit_result: FitResult, quantized: QuantizeResult, mixture, **settings: Any
) -> dict[str, Any]:
    """:attr:`CompressionResult.config`: the fit's config, the compression ``settings`` as
    given, and what quantisation found (the tensors quantised, the components learned)."""
    model = fit_result.model
    return {
        **fit_result.config,
        **settings,
        "keep_float": list(quantized.keep_float),
        "param_names": list(quantized.param_names),
        "num_components_learned": int(mixture.pi.numel()),
        "zero_component": model.prior.zero_component,
        **_model_config(model),
    }


def _pruning_config(prune: float | None, pruning: UnitPruning | None) -> dict[str, Any]:
    """``prune_units`` as given and, when it ran, the units it pruned per layer."""
    config: dict[str, Any] = {"prune_units": None if prune is None else float(prune)}
    if pruning is not None:
        config["units_pruned"] = {name: int(u.numel()) for name, u in pruning.pruned.items()}
        config["prune_loss_increase"] = pruning.loss_after - pruning.loss_before
    return config


def _stage_scores(**stages: _Scores) -> dict[str, float | None]:
    """``test_{accuracy,rmse,log_likelihood}_{stage}`` fields of a :class:`CompressionResult`."""
    return {
        f"test_{metric}_{stage}": value
        for stage, scores in stages.items()
        for metric, value in scores._asdict().items()
    }


def compress_result(
    fit_result: FitResult,
    x_test: Any,
    y_test: Any,
    *,
    merge_threshold: float = 1e-2,
    merge_criterion: Literal["kl", "mean"] = "kl",
    value_tolerance: float = 0.0,
    assignment: Literal["responsibility", "likelihood"] = "responsibility",
    keep_float: Sequence[str] = (),
    index_bits: int | dict[str, int] | None = None,
    position_coding: Literal["fixed", "rice"] = "fixed",
    test_accuracy_pretrained: float | None = None,
    finetune_data: tuple[Any, Any] | None = None,
    finetune_epochs: int = 0,
    finetune_lr: float = 1e-3,
    finetune_batch_size: int = 128,
    remove_dead_units: bool = False,
    prune_units: float | None = None,
    reorder_units: bool = False,
    seed: int = 0,
    progress: bool | None = None,
) -> CompressionResult:
    """Quantise a fitted model with its learned mixture and count the bits.

    The retrained network is the posterior median (the MAP for ``guide="map"``,
    :meth:`FitResult.map_network`); its prior-carrying tensors are quantised with
    the learned mixture (:meth:`FitResult.mixture`) by
    :func:`~bayes_sws.compress.quantize`, other parameters (biases) stay as
    fitted and are stored at 32 bits.

    Parameters
    ----------
    fit_result : FitResult
        What :func:`bayes_sws.fit` returned.
    x_test, y_test : tensor or array
        Test data: class labels give accuracies, real targets give RMSEs; under a
        :class:`~bayes_sws.core.likelihoods.MixtureDensity` likelihood the mean held-out
        log-likelihood per point.
    merge_threshold, merge_criterion
        Passed to :func:`~bayes_sws.compress.merge_components`
        (symmetric KL in nats by default; ``0`` never merges).
    value_tolerance : float
        After assignment, merge components whose values differ by less than
        this fraction of the largest absolute value in use, and join values that close
        to 0 to the zero component (:func:`~bayes_sws.compress.quantize`).
        Default 0: off.
    assignment : {"responsibility", "likelihood"}
        Each weight to its most responsible component (with π, default) or to
        its most likely one (without π); see :func:`~bayes_sws.compress.quantize`.
    keep_float : sequence of str
        Prior-carrying parameters left unquantised (e.g. the last layer's
        weight): kept as retrained (with codebook fine-tuning they train
        freely, as the biases do), stored at 32 bits each
        (``StorageReport.other_bits``, or ``bias_bits`` beside a compressed
        tensor of the same module) and written as plain float32 in the
        ``.sws`` file; ``config["param_names"]`` leaves them out. The
        non-zero fraction is over the quantised tensors. Default none.
    index_bits : int or dict, optional
        Relative-index width (default 5 for dense, 8 for convolutions).
    position_coding : {"fixed", "rice"}
        ``"fixed"`` (default): Han et al.'s fixed-width relative indices, the
        accounting of published rates; ``"rice"``: also Golomb-Rice-coded runs of
        zeros where smaller (a smaller ``.sws`` file; see
        :func:`~bayes_sws.compress.storage_report`).
    test_accuracy_pretrained : float, optional
        Recorded as is (the accuracy of the network before retraining).
    finetune_data : (x_train, y_train), optional
        Training data for codebook fine-tuning; required when ``finetune_epochs > 0``.
    finetune_epochs, finetune_lr, finetune_batch_size, seed, progress
        Codebook fine-tuning after quantisation
        (:func:`~bayes_sws.compress.finetune_codebook`, Han et al.'s centroid
        step, the one :func:`bayes_sws.compress.baseline.deep_compression` ends with):
        assignments and pruned weights fixed, each layer's shared values and
        the biases trained by Adam. ``0`` epochs (default) skips it.
    remove_dead_units : bool
        Store the network without the hidden units pruning left unused
        (:func:`~bayes_sws.compress.remove_dead_units`: exact, function-preserving;
        rates still relative to the full network). Off by default, so
        ``stored_net`` has the input network's shapes.
    prune_units : float, optional
        After quantisation (and codebook fine-tuning, which then runs again
        without them): hold the hidden units the training loss needs least at
        their mean output, while that loss (the mean over ``finetune_data``)
        rises by at most this many nats a point
        (:func:`~bayes_sws.compress.prune_units`); with ``remove_dead_units``
        they are then removed with their weights. A structured step soft
        weight-sharing's prior does not take: units left with one or two
        weights cost a bias and a row of fillers each. Choose it on a
        validation split. Default ``None``: off.
    reorder_units : bool
        Store the hidden units in the order in which the network takes the fewest
        bits that :func:`~bayes_sws.compress.storage_unit_orders` finds (a local
        search; the function is the same, the fillers of the sparse layout fewer).
        Off by default, so ``stored_net`` keeps the units' order.

    Returns
    -------
    CompressionResult
        ``fit`` is ``fit_result``; ``wall_time`` covers quantisation, fine-tuning
        and accounting.
    """
    start = time.perf_counter()
    x_test, y_test, finetune_epochs = _checked_inputs(
        fit_result, x_test, y_test, finetune_epochs, finetune_data, prune_units, remove_dead_units
    )
    model = fit_result.model
    quantizing = {
        "merge_threshold": float(merge_threshold),
        "merge_criterion": merge_criterion,
        "value_tolerance": float(value_tolerance),
        "assignment": assignment,
    }
    retrained, mixture, quantized = _quantize_fit(fit_result, keep_float=keep_float, **quantizing)
    before = _scores(retrained, x_test, y_test, model.likelihood)
    quantized_scores = _scores(quantized.net, x_test, y_test, model.likelihood)
    storing: dict[str, Any] = {"index_bits": index_bits, "position_coding": position_coding}
    storing |= {"remove_dead_units": bool(remove_dead_units), "reorder_units": bool(reorder_units)}
    final, stored, storage, pruning = _final_and_stored(
        quantized,
        model,
        finetune_data,
        prune_units,
        **storing,
        num_epochs=finetune_epochs,
        lr=finetune_lr,
        batch_size=finetune_batch_size,
        seed=seed,
        progress=progress,
    )
    changed = finetune_epochs > 0 or stored is not final  # pruning removes: stored is new
    after = _scores(stored, x_test, y_test, model.likelihood) if changed else quantized_scores
    config = _compression_config(
        fit_result,
        quantized,
        mixture,
        **quantizing,
        **storing,
        finetune_epochs=finetune_epochs,
        finetune_lr=float(finetune_lr),
        **_pruning_config(prune_units, pruning),
    )
    return CompressionResult(
        net=final,
        retrained_net=retrained,
        quantization=quantized,
        storage=storage,
        mixture=mixture,
        test_accuracy_pretrained=test_accuracy_pretrained,
        **_stage_scores(before=before, quantized=quantized_scores, after=after),
        fit=fit_result,
        wall_time=time.perf_counter() - start,
        config=config,
        stored_net=stored,
        unit_pruning=pruning,
    )


class _Retraining(NamedTuple):
    """:func:`soft_weight_sharing`'s retraining, checked: its length, λ and precision schedule."""

    batch_size: int
    prior_scale: float
    per_epoch: int
    num_steps: int
    precision_prior: tuple[float, float]  # as used (tempered by λ with temper_hyperprior)
    zero_precision_prior: tuple[float, float]  # as used
    final: tuple[float, float] | None  # the anneal's end, as used; None: no anneal
    anneal_epochs: tuple[float, float] | None


def _retraining_length(
    chosen: Preset, settings: dict[str, Any], num_train: int, per_epoch: int | None
) -> tuple[int, float, int, int]:
    """``(batch_size, prior_scale, steps_per_epoch, num_steps)``, checked; ``per_epoch`` a
    data loader's batches per epoch (else ``num_train`` points in batches of ``batch_size``)."""
    fit_settings = chosen.fit
    batch_size = check_int("batch_size", fit_settings.batch_size, low=1)
    prior_scale = check_real(
        "prior_scale (λ)",
        chosen.prior.prior_scale,
        low=0,
        hint="λ = 1 is the plain Bayesian model, λ = 0 switches the prior off",
    )
    if per_epoch is None:
        per_epoch = steps_per_epoch(num_train, batch_size)
    num_steps = check_int(
        "num_steps", settings.get("num_steps"), low=0, low_open=True, allow_none=True
    )
    if num_steps is None:
        num_epochs = check_real(
            "num_epochs",
            fit_settings.num_epochs,
            low=0,
            low_open=True,
            hint="or give num_steps instead",
        )
        num_steps = epochs_to_steps(num_epochs, per_epoch)
    return batch_size, prior_scale, per_epoch, num_steps


def _retraining(
    chosen: Preset, settings: dict[str, Any], num_train: int, per_epoch: int | None = None
) -> _Retraining:
    """The checked retraining of :func:`soft_weight_sharing`, its anneal window defaulted."""
    batch_size, prior_scale, per_epoch, num_steps = _retraining_length(
        chosen, settings, num_train, per_epoch
    )
    prior_settings = chosen.prior
    for label in ("precision_prior", "zero_precision_prior", "precision_prior_final"):
        pair = getattr(prior_settings, label) or (1.0, 1.0)
        if len(tuple(pair)) != 2 or not all(v > 0 for v in pair):
            raise ValueError(f"{label} must be a Gamma (shape, rate) with both > 0, got {pair!r}")
    (conc, rate), zero_pair, final = prior_settings.used_precision_priors()
    zero_conc, zero_rate = zero_pair if zero_pair is not None else (conc, rate)
    anneal_epochs = prior_settings.anneal_epochs
    check_anneal(final, anneal_epochs)
    if final is not None and anneal_epochs is None:
        anneal_epochs = default_anneal_epochs(num_steps, per_epoch)
    problems = prior_settings.map_problems()
    if problems:
        raise map_hyperprior_error("map", problems)
    return _Retraining(
        batch_size,
        prior_scale,
        per_epoch,
        num_steps,
        (conc, rate),
        (zero_conc, zero_rate),
        final,
        anneal_epochs,
    )


def _train_stream(train_loader: Any, num_train: int) -> BatchStream:
    """``soft_weight_sharing``'s ``train_loader``, checked before anything runs: re-iterable
    batches with a length (epochs count its passes); :math:`N` its dataset's length, else
    ``num_train`` (``data``'s training points)."""
    if not is_batches(train_loader, None):
        raise TypeError(
            "train_loader must be a torch.utils.data.DataLoader (or a list of (x, y) batches), "
            f"got {type(train_loader).__name__}; give tensors in data instead"
        )
    stream = BatchStream(train_loader, None if dataset_size(train_loader) else num_train)
    if stream.steps_per_epoch is None:
        raise TypeError(
            f"train_loader ({type(train_loader).__name__}) has no len(): soft_weight_sharing "
            "counts num_epochs and anneal_epochs in passes of it; give a DataLoader over a "
            "map-style dataset (or one whose dataset has a length)"
        )
    return stream


def _retrain(
    net: nn.Module,
    prior: MixturePrior,
    likelihood: str | Likelihood,
    train_data: tuple[torch.Tensor, torch.Tensor] | BatchStream,
    chosen: Preset,
    plan: _Retraining,
    progress: bool | None,
    groups: str | dict[str, list[str]] | None = None,
    tensor_scales: Mapping[str, float] | None = None,
) -> FitResult:
    """Retrain ``net`` in place under ``prior`` by MAP: λ's warm-up and the precision anneal.

    ``train_data`` is the training tensors, or the checked stream of a data loader
    (:func:`_train_stream`; its batches, its :math:`N`). With ``groups``, every group's prior
    follows the anneal; ``tensor_scales`` multiply the warmed-up λ.
    """
    warmup = _warmup(plan.prior_scale, chosen.compress.prior_scale_warmup, plan.per_epoch)
    model = SWSModel(
        net, prior, likelihood, prior_scale=warmup(0), groups=groups, tensor_scales=tensor_scales
    )
    # the storing settings that name parameters, checked before the minutes of retraining
    names = list(model.prior_param_names)
    quantized = quantized_names(net, names, chosen.compress.keep_float, model.groups)
    check_index_bits(chosen.compress.index_bits, quantized)

    anneals = [
        precision_anneal(each, plan.final, plan.anneal_epochs, plan.per_epoch)
        for _, each, _ in model.mixture_groups()
    ]
    anneal = None if anneals[0] is None else anneals

    def schedule(step: int, loss: float) -> None:  # λ and the precision prior for the next step
        model.prior_scale = warmup(step + 1)
        for set_prior in anneal or ():
            set_prior(step + 1)

    for set_prior in anneal or ():
        set_prior(0)

    run = chosen.fit.replace(num_steps=int(plan.num_steps), num_epochs=None)
    if isinstance(train_data, BatchStream):  # the loader makes its own batches
        data: tuple[Any, Any] = (train_data.batches, None)
        num_data: int | None = train_data.num_data
        run = run.replace(batch_size=None)
    else:
        data, num_data = train_data, None
    fitted = fit(
        model,
        *data,
        settings=run,
        num_data=num_data,
        progress=progress,
        callback=schedule if chosen.compress.prior_scale_warmup or anneal is not None else None,
    )
    model.prior_scale = plan.prior_scale
    return fitted


def _sws_config(
    preset: str | Preset, chosen: Preset, settings: dict[str, Any], plan: _Retraining
) -> dict[str, Any]:
    """What :func:`soft_weight_sharing` adds to :func:`compress_result`'s config."""
    prior_settings = chosen.prior
    num_epochs = chosen.fit.num_epochs if "num_steps" not in settings else None
    pi_zero = prior_settings.pi_zero
    return {
        "preset": preset if isinstance(preset, str) else None,
        "num_components": prior_settings.num_components,
        "pi_zero": pi_zero,
        "pi_zero_prior": list(prior_settings.pi_zero_prior) if pi_zero is None else None,
        "precision_prior": list(prior_settings.precision_prior),
        "zero_precision_prior": _listed(prior_settings.zero_precision_prior),
        "temper_hyperprior": bool(prior_settings.temper_hyperprior),
        "precision_prior_used": list(plan.precision_prior),
        "zero_precision_prior_used": list(plan.zero_precision_prior),
        "mixing_concentration": prior_settings.mixing_concentration,
        "init_sigma": prior_settings.init_sigma,
        "num_epochs": None if num_epochs is None else float(num_epochs),
        "prior_scale": float(plan.prior_scale),
        "prior_scale_warmup": float(chosen.compress.prior_scale_warmup),
        "precision_prior_final": _listed(prior_settings.precision_prior_final),
        "precision_prior_final_used": _listed(plan.final),
        "anneal_epochs": _listed(plan.anneal_epochs) if plan.final is not None else None,
    }


def soft_weight_sharing(
    net: nn.Module,
    data: Any,
    *,
    preset: str | Preset = "compression",
    likelihood: str | Likelihood = "categorical",
    progress: bool | None = None,
    groups: str | dict[str, list[str]] | None = None,
    tensor_scales: Mapping[str, float] | None = None,
    train_loader: Any = None,
    **settings: Any,
) -> CompressionResult:
    r"""Compress a pretrained network by soft weight-sharing (Ullrich et al. 2017).

    Retrains a copy of ``net`` under a mixture prior with a zero component (MAP by
    SVI, :func:`bayes_sws.fit` with ``guide="map"``), then quantises and counts
    the bits with :func:`compress_result`. ``net`` itself is not modified.

    Parameters
    ----------
    net : nn.Module
        A pretrained network (its current weights initialise retraining and the
        mixture's means, spread evenly over their range).
    data : Dataset or tuple
        A :class:`~bayes_sws.zoo.data.Dataset` or ``(x_train, y_train, x_test, y_test)``.
    preset : str or Preset
        The settings to start from: a name in :data:`bayes_sws.settings.PRESETS`
        (default ``"compression"``, this package's tuned pruning setting, whose
        values are the defaults listed below; ``"ullrich2017"`` is the paper's)
        or a :class:`~bayes_sws.settings.Preset`.
    **settings
        Any setting of :class:`~bayes_sws.settings.PriorSettings`,
        :class:`~bayes_sws.settings.FitSettings` or
        :class:`~bayes_sws.settings.CompressSettings` by name, overriding the
        preset; the most used ones follow. The component 0 is always the zero
        component and the guide always ``"map"``. With ``pi_zero=None`` and no
        ``init_pi_zero``, :math:`\pi_0` starts at the mean of its Beta prior.
    num_components : int
        Components :math:`M`, the zero component included (the paper: 17).
    pi_zero : float or None
        Fixed :math:`\pi_0` in (0, 1); ``None`` learns it under
        :math:`\mathrm{Beta}(\text{pi\_zero\_prior})`, starting at its mean.
    pi_zero_prior : (float, float)
        Beta concentrations for a learned :math:`\pi_0` (both :math:`\ge 1` for MAP).
    prior_scale_warmup : float
        Epochs (of ``batch_size`` mini-batches) over which :math:`\lambda` rises
        linearly from ``prior_scale / steps`` to ``prior_scale``, so the network
        adapts to the prior gradually; 0 (default) starts at full strength. On
        Fashion-MNIST LeNet-300-100 (λ = 0.2, 30 epochs) a 10-epoch warm-up left
        8.2 % of the weights non-zero instead of 4.1 % and did not lower the error
        at that sparsity (measured once; not used by the benchmark).
    precision_prior_final : (float, float), optional
        Soft-to-hard annealing: the non-zero components' Gamma hyperprior moves
        from ``precision_prior`` to this (shape, rate), geometrically in
        :data:`ANNEAL_STAGES` stages, during ``anneal_epochs``. Start with a broad
        slab that decides which weights survive without pulling them onto
        shared values (:data:`SLAB_PRECISION_PRIOR`), end with tight components
        (:data:`SHARING_PRECISION_PRIOR`) so that quantisation loses little. Read
        in Ullrich et al.'s units too when ``temper_hyperprior``. Default: no
        anneal.
    anneal_epochs : (float, float), optional
        First and last epoch of the anneal; default half-way and 90 % through
        retraining.
    prior_scale : float
        :math:`\lambda` in :math:`E + \lambda\Omega` (Ullrich et al.'s :math:`\tau`). It
        sets the sparsity: 0.1 prunes LeNet-300-100 on Fashion-MNIST to about
        8 % non-zero weights, 0.05 to about 13 % (60,000 training images;
        smaller data sets need relatively more, e.g. 0.03-0.1 on digits).
    precision_prior, zero_precision_prior : (float, float)
        Gamma (shape, rate) on the precisions :math:`1/\sigma_j^2` of the non-zero
        components and of the zero component: :data:`DEFAULT_PRECISION_PRIOR`
        and :data:`DEFAULT_ZERO_PRECISION_PRIOR` (see the module docstring).
    temper_hyperprior : bool
        Read the Gamma parameters in Ullrich et al.'s units, where the
        hyperprior is multiplied by :math:`\lambda` too; with
        :data:`ULLRICH_PRECISION_PRIOR` and :data:`ULLRICH_ZERO_PRECISION_PRIOR`
        this is the paper's setting. Default ``False``: used as given.
    mixing_concentration : float
        Dirichlet :math:`\alpha \ge 1` on the non-zero mixing proportions.
    init_sigma : float, optional
        Initial standard deviation of every component; default the spacing of
        the initial means (:meth:`MixturePrior.init_values`).
    likelihood : str or Likelihood
        ``"categorical"`` (class labels), ``"gaussian"``, or an instance such as
        ``MixtureDensity(num_components=K)`` (then scored by held-out log-likelihood).
    lr, mixture_lr : float
        Adam learning rates of the weights and of the mixture. ``mixture_lr``
        also sets how fast the components narrow (see the module docstring):
        about ``8 / mixture_lr`` steps from the initial width to the prior's
        mode, so raise it for short runs (e.g. 1e-2 for 2,000 steps).
    num_epochs : float, optional
        Passes over the training data; ignored when ``num_steps`` is given.
    num_steps : int, optional
        Optimisation steps (mini-batches).
    batch_size : int
        Mini-batch size.
    merge_threshold, merge_criterion, value_tolerance, assignment, keep_float, index_bits
        Passed to :func:`compress_result`: merging before and after assignment
        (``value_tolerance`` default 0, off), assignment by responsibility
        (default) or likelihood, parameters left at 32-bit float (default none).
    finetune_epochs, finetune_lr
        Codebook fine-tuning after quantisation on the training data (see
        :func:`compress_result`; mini-batches of ``batch_size``). Default 0: none,
        as in Ullrich et al.
    remove_dead_units, reorder_units : bool
        Store the network without its unused hidden units, and its hidden units in
        the order that takes the fewest bits (see :func:`compress_result`); off by
        default.
    distill, distill_temperature : float
        Knowledge distillation from ``net``: retraining, codebook fine-tuning and unit
        pruning fit the targets of :func:`distillation_targets` (the labels mixed with
        ``net``'s class probabilities at temperature ``distill_temperature``, weight
        ``distill``) under the :class:`~bayes_sws.core.likelihoods.SoftCategorical`
        likelihood. Default 0: the labels alone. Softer targets weaken the data term, so
        the same λ prunes more (on Fashion-MNIST at 0.5 and 2 the front was no better
        than the labels'; ``BENCHMARKS.md``).
    params : sequence of str, optional
        Names of the parameters carrying the prior (and compressed); default all
        weights (tensors with two or more dimensions), biases stay at 32 bits.
    seed : int
        Seeds the retraining (Pyro's RNG and the mini-batch order).
    progress : bool, optional
        Progress bar while retraining; default on a terminal only.
    groups : None, "layer" or dict, optional
        A separate mixture per layer or per group of tensors
        (:class:`~bayes_sws.SWSModel`'s ``groups``), each group quantised with
        its own (:func:`~bayes_sws.compress.quantize_groups`); default one
        mixture shared by all layers.
    tensor_scales : dict of str to float, optional
        Multipliers of λ per tensor (name or glob pattern; :class:`~bayes_sws.SWSModel`'s
        ``tensor_scales``): a tensor that one λ leaves denser than its share of the stored
        bits warrants can be pruned harder than the others (e.g. ``{"2.weight": 3.0}``,
        Fashion-MNIST LeNet-5's second convolution: 19 % of its weights kept, 35 % of the
        bits, BENCHMARKS.md).
    train_loader : DataLoader, optional
        Retrain on this loader's batches (:func:`bayes_sws.fit` with a data loader: one batch
        per step, ``len(train_loader)`` steps an epoch, each batch's likelihood scaled by
        :math:`N / B` with :math:`N` = ``len(train_loader.dataset)``, else the number of
        ``data``'s training points) instead of mini-batches of ``batch_size`` drawn from
        ``data``'s training tensors: your own sampler, augmentation, or a data set read from
        disk. ``num_epochs`` and ``anneal_epochs`` count passes of the loader. ``data`` still
        gives the test data, and the training tensors that codebook fine-tuning and unit
        pruning read (in batches of ``batch_size``; a subset will do). Not with ``distill``,
        whose targets are computed once for ``data``'s training tensors.

    Returns
    -------
    CompressionResult
        With ``test_accuracy_pretrained`` measured on ``net`` and ``wall_time``
        covering retraining, quantisation and accounting.

    Examples
    --------
    Not run as a doctest (minutes of training; ``examples/compress_lenet300.py`` runs
    the pipeline with a small budget in the tests):

    >>> data = load_dataset("digits", standardize=False)  # doctest: +SKIP
    >>> net = mlp([64, 100, 10]); train(net, data.x_train, data.y_train, num_epochs=60)  # doctest: +SKIP
    >>> result = soft_weight_sharing(net, data, num_epochs=100, batch_size=64, mixture_lr=1e-2)  # doctest: +SKIP
    >>> result.compression_rate, result.test_accuracy_after  # doctest: +SKIP
    """
    return _soft_weight_sharing(
        net,
        data,
        None,
        preset=preset,
        likelihood=likelihood,
        progress=progress,
        groups=groups,
        tensor_scales=tensor_scales,
        train_loader=train_loader,
        **settings,
    )


#: CompressSettings that act after retraining: runs that differ in nothing else can share one
#: retraining (:func:`_soft_weight_sharing`'s ``fitted``)
AFTER_RETRAINING = frozenset(_COMPRESS_RESULT_SETTINGS)


def _soft_weight_sharing(
    net: nn.Module,
    data: Any,
    fitted: FitResult | None,
    *,
    preset: str | Preset = "compression",
    likelihood: str | Likelihood = "categorical",
    progress: bool | None = None,
    groups: str | dict[str, list[str]] | None = None,
    tensor_scales: Mapping[str, float] | None = None,
    train_loader: Any = None,
    **settings: Any,
) -> CompressionResult:
    """:func:`soft_weight_sharing`; with ``fitted``, the retraining of an earlier call on the
    same data whose settings differed only in :data:`AFTER_RETRAINING` (not retrained again)."""
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    x_train, y_train, x_test, y_test = _unpack_data(data)
    chosen = _pipeline_settings(preset, settings)
    stream = None if train_loader is None else _train_stream(train_loader, x_train.shape[0])
    if stream is not None and chosen.compress.distill > 0:
        raise ValueError(
            f"distill={chosen.compress.distill!r} with a train_loader: the distillation targets "
            "are computed once for data's training tensors, not for the loader's batches; "
            "retrain on data (no train_loader) or set distill=0"
        )
    plan = _retraining(
        chosen, settings, x_train.shape[0], None if stream is None else stream.steps_per_epoch
    )
    prior = MixturePrior.from_settings(chosen.prior)

    start = time.perf_counter()
    pretrained = copy.deepcopy(net)
    acc_pretrained = _scores(
        pretrained, x_test.to(next(net.parameters()).dtype), y_test, get_likelihood(likelihood)
    ).accuracy
    if chosen.compress.distill > 0:  # the labels mixed with the pretrained network's output
        likelihood = _distilled_likelihood(likelihood)
        y_train = distillation_targets(
            pretrained,
            x_train.to(next(net.parameters()).dtype),
            y_train,
            chosen.compress.distill,
            chosen.compress.distill_temperature,
        )
    if fitted is None:
        fitted = _retrain(
            pretrained,
            prior,
            likelihood,
            (x_train, y_train) if stream is None else stream,
            chosen,
            plan,
            progress,
            groups,
            tensor_scales,
        )
    result = compress_result(
        fitted,
        x_test,
        y_test,
        **compress_result_kwargs(chosen.compress),
        test_accuracy_pretrained=acc_pretrained,
        finetune_data=(x_train, y_train),
        finetune_batch_size=plan.batch_size,
        seed=chosen.fit.seed,
        progress=progress,
    )
    config = {**result.config, **_sws_config(preset, chosen, settings, plan)}
    return dataclasses.replace(result, wall_time=time.perf_counter() - start, config=config)
