r"""Choosing soft weight-sharing's settings on a validation split; the test set is read once.

The headline trade-off of compression (rate against error) depends on the prior
scale :math:`\lambda` and the zero component's width. Choosing them by test error
makes the reported margin optimistic. The honest protocol:

1. :func:`validation_split` carves a validation set out of the *training* data;
2. pretrain on what is left (``tuning.x_train``);
3. :func:`tune_soft_weight_sharing` compresses with each candidate setting and
   scores it on the validation set only, choosing the highest compression rate
   whose validation error is at most ``max_error_increase`` points above the
   pretrained network's;
4. the caller evaluates the chosen network on the test set, once.

>>> tuning, final = validation_split(data, fraction=0.1, seed=0)  # doctest: +SKIP
>>> net = pretrain(tuning.x_train, tuning.y_train)  # doctest: +SKIP
>>> found = tune_soft_weight_sharing(net, tuning, [{"prior_scale": s} for s in (0.1, 0.2)])
... # doctest: +SKIP
>>> found.chosen.result.net  # evaluate on final.x_test, final.y_test once  # doctest: +SKIP

(The example is not run as a doctest: it needs a data set and minutes of training.)
"""

from __future__ import annotations

import dataclasses
import math
import pickle
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from ..validation import check_int, check_real, check_seed
from ..zoo.data import Dataset
from ..zoo.training import correct
from .pipeline import AFTER_RETRAINING, CompressionResult, Recipe, _soft_weight_sharing

__all__ = [
    "RateCalibration",
    "Trial",
    "Tuning",
    "calibrate_refit_scale",
    "choose_within_margin",
    "paired_standard_error",
    "point_errors",
    "tune_soft_weight_sharing",
    "validation_split",
]

T = TypeVar("T")


def validation_split(data: Dataset, fraction: float, *, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Split ``data``'s training set into training and validation parts.

    Parameters
    ----------
    data : Dataset
        A train/test split (:func:`bayes_sws.zoo.data.load_dataset`).
    fraction : float
        Share of the training points held out for validation, in (0, 1); at
        least one point stays on each side.
    seed : int
        Seed of the random permutation that chooses the validation points.

    Returns
    -------
    tuning, final : Dataset
        Both train on the same remaining points; ``tuning``'s test set is the
        validation set, ``final``'s is ``data``'s test set (read it once).
    """
    if not isinstance(data, Dataset):
        raise TypeError(f"validation_split needs a Dataset, got {type(data).__name__}")
    fraction = check_real("fraction", fraction, low=0.0, high=1.0, low_open=True, high_open=True)
    seed = check_seed("seed", seed)
    num = len(data.x_train)
    if num < 2:
        raise ValueError(f"validation_split needs at least 2 training points, got {num}")
    held = min(num - 1, max(1, round(fraction * num)))
    order = torch.randperm(num, generator=torch.Generator().manual_seed(seed))
    keep, val = order[held:].sort().values, order[:held].sort().values
    x_train, y_train = data.x_train[keep], data.y_train[keep]
    tuning = dataclasses.replace(
        data, x_train=x_train, y_train=y_train, x_test=data.x_train[val], y_test=data.y_train[val]
    )
    final = dataclasses.replace(data, x_train=x_train, y_train=y_train)
    return tuning, final


@dataclasses.dataclass(frozen=True)
class Trial:
    """One candidate setting and its validation score.

    ``validation_error_before`` is the pretrained network's, ``validation_error_retrained``
    the retrained network's before quantisation (so the two parts of the increase,
    retraining under the prior and quantising, can be told apart), and
    ``validation_error_after`` the compressed network's. With several retraining
    seeds, ``validation_error_retrained``, ``validation_error_after`` and
    ``compression_rate`` are their means, ``seed_errors_after`` and ``seed_rates`` each
    seed's (in the order of ``seeds``), and ``result`` is the first seed's compression.
    With several validation splits (each with its own pretrained network), the means run
    over every split's retrainings (split by split, seeds within), ``validation_error_before``
    is the mean of the pretrained networks' errors on their own splits, and
    ``seed_errors_before`` gives each retraining's; ``result`` is the first split's, and
    ``split_results`` each split's (its first seed's), to read each split's network on a
    test set once a trial is chosen.
    ``increase_se`` is the standard error of the increase that the choice of validation
    points alone makes (each point's change, paired).
    """

    settings: dict[str, Any]
    validation_error_before: float
    validation_error_after: float
    compression_rate: float
    result: CompressionResult
    seed_errors_after: tuple[float, ...] = ()
    seed_rates: tuple[float, ...] = ()
    validation_error_retrained: float | None = None
    #: the standard error of :attr:`increase` over the validation points, in points: the
    #: paired one (:func:`paired_standard_error`), of each point's error after (the mean over
    #: the seeds) minus before
    increase_se: float | None = None
    #: with several validation splits, the pretrained network's validation error that each
    #: entry of ``seed_errors_after`` is compared with (its split's); empty with one split
    seed_errors_before: tuple[float, ...] = ()
    #: with several validation splits, each split's compression (its first seed's), in the
    #: order of the splits (``result`` is the first); empty with one split
    split_results: tuple[CompressionResult, ...] = ()
    #: each retraining's validation error before quantisation, in the order of
    #: ``seed_errors_after`` (their mean is ``validation_error_retrained``)
    seed_errors_retrained: tuple[float, ...] = ()

    @property
    def increase(self) -> float:
        """Validation error after compression minus before retraining, in points."""
        return 100.0 * (self.validation_error_after - self.validation_error_before)

    def upper_increase(self, standard_errors: float) -> float:
        """:attr:`increase` plus ``standard_errors`` times :attr:`increase_se` (points)."""
        if not standard_errors:
            return self.increase
        if self.increase_se is None:
            raise ValueError(
                f"standard_errors={standard_errors} needs the trial's increase_se, which "
                "tune_soft_weight_sharing records; this trial has none"
            )
        return self.increase + standard_errors * self.increase_se

    @property
    def retraining_increase(self) -> float | None:
        """Validation error of the retrained network, before quantisation, minus before
        retraining, in points (the part of :attr:`increase` that retraining made)."""
        if self.validation_error_retrained is None:
            return None
        return 100.0 * (self.validation_error_retrained - self.validation_error_before)


@dataclasses.dataclass(frozen=True)
class Tuning:
    """What :func:`tune_soft_weight_sharing` tried and chose.

    ``chosen`` is the trial of highest compression rate within the margin, or, when
    no trial is within it, the one of smallest error increase (``within_margin``
    then is False and the caller should say so). With ``standard_errors`` > 0 a trial is
    within the margin when its increase plus that many standard errors is
    (:meth:`Trial.upper_increase`). With ``target_rate``, the trial of smallest increase
    among those within the margin that reach it (:func:`choose_within_margin`).
    """

    trials: list[Trial]
    chosen: Trial
    max_error_increase: float
    within_margin: bool
    #: training images the candidates were retrained on (the tuning split's)
    num_train: int | None = None
    #: the settings every candidate shared (``tune_soft_weight_sharing``'s ``**settings``)
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: standard errors of the increase added before comparing it with the margin
    standard_errors: float = 0.0
    #: the rate the least increase was sought at, when given (``tune_soft_weight_sharing``)
    target_rate: float | None = None

    def recipe(self) -> Recipe:
        """The chosen setting as a :class:`~bayes_sws.compress.pipeline.Recipe`: its λ, the
        λ tried, the split's training set size and every other setting (seeds and progress
        left out), so that ``recipe().kwargs(num_train=N)`` retrains on ``N`` images (the
        whole training set, say) at the trade-off per image that was chosen."""
        if self.num_train is None or "prior_scale" not in self.chosen.settings:
            raise ValueError(
                "recipe() needs candidates that set prior_scale, as tune_soft_weight_sharing "
                f"records them; the chosen one set {sorted(self.chosen.settings)}"
            )
        merged = {**self.settings, **self.chosen.settings}
        tried = {t.settings["prior_scale"] for t in self.trials if "prior_scale" in t.settings}
        return Recipe(
            prior_scale=merged.pop("prior_scale"),
            grid=tuple(sorted(tried)),
            num_train=self.num_train,
            settings={k: v for k, v in merged.items() if k not in ("seed", "seeds", "progress")},
            rate=self._retraining_rate(),
        )

    def _retraining_rate(self) -> float | None:
        """The chosen trial's rate; where it prunes units (which acts after retraining), the
        rate of the trial with its settings but no unit pruning (what a refit is calibrated
        to, :attr:`Recipe.rate`), or ``None`` when there was none."""

        def others(trial: Trial) -> dict[str, Any]:
            return {k: v for k, v in trial.settings.items() if k != "prune_units"}

        if {**self.settings, **self.chosen.settings}.get("prune_units") is None:
            return self.chosen.compression_rate
        unpruned = [
            t
            for t in self.trials
            if {**self.settings, **t.settings}.get("prune_units") is None
            and others(t) == others(self.chosen)
        ]
        return unpruned[0].compression_rate if unpruned else None

    def table(self) -> str:
        """The trials as a Markdown table, the chosen one marked."""
        seeded = any(len(t.seed_errors_after) > 1 for t in self.trials)
        label = "split and seed" if any(t.seed_errors_before for t in self.trials) else "seed"
        lines = [
            "| settings | validation error % before → after | Δ (points) | standard error "
            "| Δ retrained, unquantised | compression × | |"
            + (f" Δ per {label} |" if seeded else ""),
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |" + (" --- |" if seeded else ""),
        ]
        for trial in self.trials:
            shown = ", ".join(f"{k}={v}" for k, v in trial.settings.items())
            mark = "**chosen**" if trial is self.chosen else ""
            befores = trial.seed_errors_before or [trial.validation_error_before] * len(
                trial.seed_errors_after
            )
            per_seed = ", ".join(
                f"{100 * (e - b):+.2f}" for e, b in zip(trial.seed_errors_after, befores)
            )
            retrained, se = trial.retraining_increase, trial.increase_se
            lines.append(
                f"| {shown} | {100 * trial.validation_error_before:.2f} → "
                f"{100 * trial.validation_error_after:.2f} | {trial.increase:+.2f} | "
                + ("n/a" if se is None else f"{se:.2f}")
                + " | "
                + ("n/a" if retrained is None else f"{retrained:+.2f}")
                + f" | {trial.compression_rate:.1f} | {mark} |"
                + (f" {per_seed} |" if seeded else "")
            )
        return "\n".join(lines)


def _seed_settings(seeds: Sequence[int] | None, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The settings of each retraining of a candidate: one per seed, checked."""
    if seeds is None:
        return [settings]
    if "seed" in settings:
        raise ValueError(f"give seed={settings['seed']!r} or seeds={seeds!r}, not both")
    checked = [check_seed(f"seeds[{i}]", s) for i, s in enumerate(seeds)]
    if not checked or len(set(checked)) != len(checked):
        raise ValueError(f"seeds must be distinct integer seeds, at least one; got {list(seeds)}")
    return [{**settings, "seed": s} for s in checked]


#: the worker process's networks and data, one per validation split (:func:`_worker_start`),
#: sent once per process
_WORKER: dict[str, Any] = {}


def _worker_start(threads: int, nets: list[nn.Module], tunings: list[Dataset]) -> None:
    torch.set_num_threads(threads)
    _WORKER.update(nets=nets, tunings=tunings)


def _share_retraining(net: nn.Module, tuning: Dataset, calls: list[dict[str, Any]]):
    """:func:`~bayes_sws.compress.pipeline.soft_weight_sharing` for calls that differ only in
    settings that act after retraining: the first retrains, the others reuse its fit."""
    first = _soft_weight_sharing(net, tuning, None, **calls[0])
    return [first] + [_soft_weight_sharing(net, tuning, first.fit, **call) for call in calls[1:]]


def _worker_compress(task: tuple[int, list[dict[str, Any]]]) -> bytes:
    split, calls = task
    # plain pickle: multiprocessing's own refuses the tensors in autograd graphs a result
    # keeps (e.g. the fit's guide), which need no sharing here, only their values
    return pickle.dumps(_share_retraining(_WORKER["nets"][split], _WORKER["tunings"][split], calls))


def _retraining_groups(calls: list[dict[str, Any]]) -> list[list[int]]:
    """Indices of ``calls`` grouped by their retraining (the settings outside
    :data:`~bayes_sws.compress.pipeline.AFTER_RETRAINING`), in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, call in enumerate(calls):
        key = repr(sorted((k, v) for k, v in call.items() if k not in AFTER_RETRAINING))
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _compress_all(
    nets: Sequence[nn.Module], tunings: Sequence[Dataset], calls: list[dict[str, Any]], jobs: int
) -> list[list[CompressionResult]]:
    """Per validation split (a network and its data each), :func:`soft_weight_sharing` for
    every call, in order; ``jobs`` processes at a time over all splits' retrainings. Calls
    that differ only in what acts after retraining (unit pruning, fine-tuning, how the
    network is stored) share one retraining (per split)."""
    groups = _retraining_groups(calls)
    tasks = [(split, group) for split in range(len(nets)) for group in groups]
    results: list[list[Any]] = [[None] * len(calls) for _ in nets]
    if jobs == 1 or len(tasks) == 1:
        for split, group in tasks:
            done = _share_retraining(nets[split], tunings[split], [calls[i] for i in group])
            for i, result in zip(group, done):
                results[split][i] = result
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    quiet = [
        (split, [{**calls[i], "progress": calls[i].get("progress") is True} for i in group])
        for split, group in tasks
    ]
    with ProcessPoolExecutor(
        max_workers=min(jobs, len(tasks)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_start,
        initargs=(torch.get_num_threads(), list(nets), list(tunings)),
    ) as pool:
        for (split, group), done in zip(tasks, pool.map(_worker_compress, quiet)):
            for i, result in zip(group, pickle.loads(done)):
                results[split][i] = result
    return results


def point_errors(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per point, 1.0 where the largest of ``net``'s outputs is not the label ``y``, else 0.0
    (float64, on the CPU)."""
    dtype = next(net.parameters()).dtype
    return (~correct(net, x.to(dtype), y)).double()


def _final(result: CompressionResult) -> nn.Module:
    """The network the *after* scores were measured on (the stored one, when kept)."""
    return result.stored_net if result.stored_net is not None else result.net


def paired_standard_error(
    before: torch.Tensor | Sequence[torch.Tensor],
    after: Sequence[torch.Tensor] | Sequence[Sequence[torch.Tensor]],
) -> float:
    """The standard error, in points, of the mean error increase from per-point errors
    ``before`` to ``after`` (one per retraining seed, averaged per point): the sample
    standard deviation of each point's change over the square root of the points.

    Over several validation splits, ``before`` is a sequence (one per split) and ``after``
    one sequence per split: each split's points' changes are pooled, as if one validation
    set held them all (points two random splits share count twice; with 10 % splits, about
    a tenth of them)."""
    pairs: list[tuple[Any, Any]] = (
        [(before, after)]
        if isinstance(before, torch.Tensor)
        else list(zip(before, after, strict=True))
    )
    change = torch.cat([torch.stack(list(a)).mean(0) - b for b, a in pairs])
    if change.numel() < 2:
        return math.nan
    return 100.0 * float(change.std(correction=1)) / math.sqrt(change.numel())


def _trial(
    candidate: Mapping[str, Any],
    results: list[CompressionResult],
    se: float | None = None,
    split_results: Sequence[CompressionResult] = (),
) -> Trial:
    """``candidate`` scored by the means over its retrainings ``results`` (one per seed, or
    per split and seed, with ``split_results`` each split's first, when there are several);
    ``se`` the standard error of the increase."""
    # soft_weight_sharing measures the pretrained net on the same (validation) set
    befores = [r.test_accuracy_pretrained for r in results]
    after = [r.test_accuracy_after for r in results]
    retrained = [r.test_accuracy_before for r in results]
    # classification scores all three
    assert None not in befores and None not in after and None not in retrained
    before_errors = tuple(1.0 - a for a in befores if a is not None)
    errors = tuple(1.0 - a for a in after if a is not None)
    retrained_errors = tuple(1.0 - a for a in retrained if a is not None)
    rates = tuple(r.compression_rate for r in results)
    return Trial(
        dict(candidate),
        sum(before_errors) / len(before_errors),
        sum(errors) / len(errors),
        sum(rates) / len(rates),
        results[0],
        errors,
        rates,
        sum(retrained_errors) / len(retrained_errors),
        se,
        before_errors if split_results else (),
        tuple(split_results),
        retrained_errors,
    )


def choose_within_margin(
    candidates: Sequence[T],
    increase: Callable[[T], float],
    rate: Callable[[T], float],
    margin: float,
    target_rate: float | None = None,
) -> tuple[T, bool]:
    """The selection rule: the highest ``rate`` among the candidates whose ``increase``
    (points of error) is within ``margin``, else the smallest increase (ties: the higher
    rate); and whether any candidate was within.

    With ``target_rate``: among the candidates within the margin whose rate reaches it, the
    smallest increase (ties: the higher rate); when none within reaches it, the rule above.
    """

    def least(candidate: T) -> tuple[float, float]:  # the smallest increase, then the higher rate
        return increase(candidate), -rate(candidate)

    within = [c for c in candidates if increase(c) <= margin + 1e-9]
    if target_rate is not None:
        reaching = [c for c in within if rate(c) >= target_rate]
        if reaching:
            return min(reaching, key=least), True
    if within:
        return max(within, key=rate), True
    return min(candidates, key=least), False


def _splits(
    net: nn.Module | Sequence[nn.Module], tuning: Dataset | Sequence[Dataset]
) -> tuple[list[nn.Module], list[Dataset]]:
    """``tune_soft_weight_sharing``'s networks and validation splits as two lists, checked."""
    nets = [net] if isinstance(net, nn.Module) else list(net)
    splits = [tuning] if isinstance(tuning, Dataset) else list(tuning)
    if len(nets) != len(splits) or not nets:
        raise ValueError(
            f"tune_soft_weight_sharing needs one pretrained network per validation split; got "
            f"{len(nets)} network(s) and {len(splits)} split(s)"
        )
    for i, split in enumerate(splits):
        if not isinstance(split, Dataset) or split.num_classes is None:
            raise ValueError(
                "tune_soft_weight_sharing scores classification error: give the tuning Dataset "
                f"of validation_split for a classification data set (split {i}: "
                f"{type(split).__name__})"
            )
    sizes = sorted({split.num_train for split in splits})
    if len(sizes) > 1:
        raise ValueError(
            f"the validation splits train on different numbers of images ({sizes}); a recipe "
            "records one training-set size: split with the same fraction"
        )
    return nets, splits


def tune_soft_weight_sharing(
    net: nn.Module | Sequence[nn.Module],
    tuning: Dataset | Sequence[Dataset],
    candidates: Sequence[Mapping[str, Any]],
    *,
    max_error_increase: float = 0.5,
    seeds: Sequence[int] | None = None,
    jobs: int = 1,
    standard_errors: float = 0.0,
    target_rate: float | None = None,
    **settings: Any,
) -> Tuning:
    """Compress ``net`` with each candidate setting; choose on the validation set.

    Parameters
    ----------
    net : nn.Module or sequence of nn.Module
        Pretrained on ``tuning.x_train`` only (never on its validation points); or one
        network per validation split, each pretrained on its own split's training part.
    tuning : Dataset or sequence of Dataset
        The first part of :func:`validation_split`: its test set is the validation set; or
        several splits (e.g. ``validation_split(data, 0.1, seed=s)[0]`` for ``s`` in 0, 1, 2:
        repeated hold-out), one per network, of equal training size. Every candidate is then
        retrained once per split (and seed) from that split's network and scored on that
        split's validation set, and trials take the means over all of them: one validation
        set of 6,000 images reads a setting's increase with a standard error of about 0.3
        points, and the same networks' increase on test differed from it by 0.4-0.5 points
        on Fashion-MNIST's split 0 while on split 1 by 0.1 (``BENCHMARKS.md``). Averaging over
        splits also averages over the pretrained networks, whose own luck moves the increase.
    candidates : sequence of dict
        Settings of :func:`~bayes_sws.compress.pipeline.soft_weight_sharing` tried
        in turn (e.g. ``{"prior_scale": 0.15}``), on top of ``settings``. Candidates
        that differ only in settings acting after retraining
        (:data:`~bayes_sws.compress.pipeline.AFTER_RETRAINING`: ``prune_units``,
        codebook fine-tuning, how the network is stored) share one retraining (per seed).
    max_error_increase : float
        Points of validation error a chosen setting may add (default 0.5).
    seeds : sequence of int, optional
        Retrain every candidate once per seed and score it by the means of the
        validation error and the compression rate over them. One retraining's
        validation error can move by more than the margin between two settings
        (Fashion-MNIST LeNet-300-100: 0.6 points between λ = 0.15 and 0.18, the
        wrong way round; ``BENCHMARKS.md``). Default: one retraining, at
        ``settings["seed"]`` or the pipeline's default.
    jobs : int
        Retrainings run at a time, each in its own process (``spawn``; every split's
        network and data are sent to each process once, and each uses as many torch
        threads as this one), over all seeds and splits alike. Every retraining seeds
        itself, so the trials are those of ``jobs=1`` (tested). Default 1: all in this
        process. Progress bars are off in the worker processes unless ``progress=True``.
    standard_errors : float
        A candidate is within the margin when its validation increase plus this many
        standard errors of it is (:func:`paired_standard_error` over the validation points,
        :attr:`Trial.increase_se`). Default 0: the increase itself. The highest rate within
        a margin is the largest of noisy estimates near the margin's edge, so it tends to
        sit over it on new data; 1 asks the increase to be within the margin by one standard
        error (an upper bound of about 84 % one-sided confidence), in the spirit of the
        one-standard-error rule (Hastie, Tibshirani and Friedman, *The Elements of
        Statistical Learning*, §7.10).
    target_rate : float, optional
        Compress to at least this rate as accurately as possible: among the candidates within
        the margin whose mean compression rate reaches it, the one of smallest increase (plus
        ``standard_errors`` standard errors; ties: the higher rate). Without it (the default),
        or when no candidate within the margin reaches it, the highest rate within the
        margin. The highest rate within a margin spends the whole margin on rate; a goal
        stated as a rate *and* a margin ("≥ 80× within 0.5 points") is more likely met on
        new data by the setting that reaches the rate with the least error.
    **settings
        Passed to every :func:`~bayes_sws.compress.pipeline.soft_weight_sharing` call.

    Returns
    -------
    Tuning
        Every trial and the chosen one. Classification only: the score is the
        validation error.
    """
    nets, splits = _splits(net, tuning)
    margin = check_real("max_error_increase", max_error_increase, low=0.0)
    spread = check_real("standard_errors", standard_errors, low=0.0)
    if target_rate is not None:
        target_rate = check_real(
            "target_rate", target_rate, low=1.0, hint="a compression rate (×), e.g. 80"
        )
    if not candidates:
        raise ValueError("tune_soft_weight_sharing needs at least one candidate setting")
    jobs = check_int("jobs", jobs, low=1)
    runs = _seed_settings(seeds, settings)
    calls = [{**each, **candidate} for candidate in candidates for each in runs]
    per_split = _compress_all(nets, splits, calls, jobs)
    befores = [point_errors(n, split.x_test, split.y_test) for n, split in zip(nets, splits)]
    trials = []
    for i, candidate in enumerate(candidates):
        seeded = [results[i * len(runs) : (i + 1) * len(runs)] for results in per_split]
        after = [
            [point_errors(_final(r), split.x_test, split.y_test) for r in each]
            for each, split in zip(seeded, splits)
        ]
        flat = [r for each in seeded for r in each]
        se = paired_standard_error(befores, after)
        firsts = [each[0] for each in seeded] if len(splits) > 1 else []
        trials.append(_trial(candidate, flat, se, split_results=firsts))
    chosen, within = choose_within_margin(
        trials,
        lambda t: t.upper_increase(spread),
        lambda t: t.compression_rate,
        margin,
        target_rate,
    )
    return Tuning(
        trials,
        chosen,
        margin,
        within and math.isfinite(chosen.increase),
        num_train=splits[0].num_train,
        settings=dict(settings),
        standard_errors=spread,
        target_rate=target_rate,
    )


@dataclasses.dataclass(frozen=True)
class RateCalibration:
    """What :func:`calibrate_refit_scale` tried and chose.

    ``rates`` maps each λ tried (on the recipe's per-image scale) to the compression rate of
    each seed's refit, in the order of ``seeds``; ``prior_scale`` is the smallest λ whose mean
    rate reaches ``target_rate``, or ``None`` when none did (try larger ones).
    """

    target_rate: float
    num_train: int
    seeds: tuple[int, ...]
    rates: dict[float, tuple[float, ...]]
    prior_scale: float | None

    def mean_rate(self, prior_scale: float) -> float:
        """The mean over the seeds of the rate at ``prior_scale`` (a λ tried)."""
        rates = self.rates[prior_scale]
        return sum(rates) / len(rates)

    def recipe(self, recipe: Recipe) -> Recipe:
        """``recipe`` with this calibration as its ``refit_prior_scale`` (and the target as
        its ``rate``), for a refit on ``num_train`` images."""
        if self.prior_scale is None:
            raise ValueError(
                f"no λ tried ({sorted(self.rates)}) reached the rate {self.target_rate:g} on "
                "average; calibrate with larger ones before making a recipe of it"
            )
        return dataclasses.replace(
            recipe,
            rate=self.target_rate,
            refit_prior_scale=self.prior_scale,
            refit_num_train=self.num_train,
        )


def calibrate_refit_scale(
    net: nn.Module,
    data: Dataset,
    recipe: Recipe,
    prior_scales: Sequence[float],
    *,
    target_rate: float | None = None,
    seeds: Sequence[int] = (0,),
    jobs: int = 1,
    **settings: Any,
) -> RateCalibration:
    """The λ at which the refit on the whole training set prunes as hard as validation did.

    :meth:`Recipe.kwargs <bayes_sws.compress.pipeline.Recipe.kwargs>` carries λ to a larger
    training set at the same trade-off per image, but a network pretrained on more images may
    keep more weights at that trade-off (on Fashion-MNIST LeNet-300-100 the refit reached
    74.8× over three replicates where the split's retrainings gave 80.1× over three seeds).
    This refits ``net`` on ``data``'s training set at each λ of ``prior_scales`` in rising
    order (``recipe.kwargs(λ, num_train=N)``, once per seed, without unit pruning: like
    ``recipe.rate``, the rate is what retraining prunes, ``prune_units`` acts after it)
    and stops at the first whose mean compression rate reaches ``target_rate`` (default the
    recipe's validated ``rate``). A rate needs only the training data: ``data``'s test set is
    never read (each refit is scored on the first training images instead, a score nobody
    uses), so the test set stays unread until the chosen setting is evaluated once.

    Parameters
    ----------
    net : nn.Module
        Pretrained on ``data.x_train``, the network the refit starts from.
    data : Dataset
        The whole training set (``x_train``, ``y_train``); its test part is dropped.
    recipe : Recipe
        The settings chosen on validation.
    prior_scales : sequence of float
        Candidate λ on the recipe's per-image scale (as chosen at ``recipe.num_train``).
    target_rate : float, optional
        Compression rate to reach; default ``recipe.rate``.
    seeds, jobs, **settings
        Retraining seeds (the mean over them is compared), processes at a time, and settings
        that replace the recipe's (e.g. ``reorder_units=False`` to count the rate as the
        validation trials did), as for :func:`tune_soft_weight_sharing`.

    Returns
    -------
    RateCalibration
        The rates of every λ tried and the chosen one; :meth:`RateCalibration.recipe` makes
        the recipe that refits at it.
    """
    target = recipe.rate if target_rate is None else target_rate
    if target is None:
        raise ValueError(
            "calibrate_refit_scale needs target_rate= or a recipe with its validated rate "
            "(Tuning.recipe() records it)"
        )
    target = check_real("target_rate", target, low=1.0)
    scales = sorted(
        check_real(f"prior_scales[{i}]", v, low=0.0) for i, v in enumerate(prior_scales)
    )
    if not scales:
        raise ValueError("calibrate_refit_scale needs at least one λ in prior_scales")
    jobs = check_int("jobs", jobs, low=1)
    runs = _seed_settings(list(seeds), dict(settings))  # the settings once per seed
    stand_in = min(1000, data.num_train)  # scores nobody reads, on training images
    train_only = dataclasses.replace(
        data, x_test=data.x_train[:stand_in], y_test=data.y_train[:stand_in]
    )
    found = RateCalibration(target, data.num_train, tuple(r["seed"] for r in runs), {}, None)
    for scale in scales:
        calls = [
            {**recipe.kwargs(scale, num_train=data.num_train), "prune_units": None, **run}
            for run in runs
        ]
        found.rates[scale] = tuple(
            r.compression_rate for r in _compress_all([net], [train_only], calls, jobs)[0]
        )
        if found.mean_rate(scale) >= target:  # the first, so the smallest, to reach it
            return dataclasses.replace(found, prior_scale=scale)
    return found
