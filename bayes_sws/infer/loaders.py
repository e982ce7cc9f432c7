r"""Data given as batches: a ``torch.utils.data.DataLoader``, or any re-iterable of ``(x, y)``.

:func:`bayes_sws.fit` reads such data through a :class:`BatchStream`: one batch
per step, in the loader's own order, one pass of the loader per epoch (so
``len(loader)`` steps), nothing held beyond the current batch. Each batch is
one draw of the mini-batch estimate of the full-data objective: its likelihood
is scaled by :math:`N / B` with :math:`N` the size of the whole data set
(``len(loader.dataset)`` or ``num_data``) and :math:`B` the batch's size
(:meth:`~bayes_sws.core.model.SWSModel.data_plate`).

Whole batches. A ``DataLoader(dataset, batch_size=B)`` builds each batch from
:math:`B` single points (``dataset[i]`` then the default collate's
``torch.stack``), which on a small network costs a few per cent of a step. Over
a ``TensorDataset`` with the default collate and no workers, :class:`BatchStream`
reads the same batches with one gather per tensor (``index_select`` of the
batch's indices; the same sampler, generator and values). For another dataset that can be indexed with a list of
indices, give ``fit`` whole batches yourself::

    sampler = BatchSampler(RandomSampler(dataset), batch_size=B, drop_last=False)
    fit(model, DataLoader(dataset, batch_size=None, sampler=sampler))

The sampler inside the ``BatchSampler`` is found like a loader's own: its
generator is recorded for resuming and its ``set_epoch`` called every epoch.

Resuming exactly. The stream's :meth:`~BatchStream.state` is the epoch, the
batches of it read so far, and what decides the epoch's order: the global RNGs
(:mod:`.rng`) and the states of the loader's ``torch.Generator``\ s (the
``DataLoader``'s ``generator``, a sampler's ``generator``) as they were when the
epoch began. :meth:`~BatchStream.restore` puts those back, reads the epoch again
up to the same batch, and then puts the RNGs back as they were, so the run goes
on with the batches an uninterrupted run would have had. Samplers with a
``set_epoch`` method (``DistributedSampler``) are told the epoch before every
pass. A shuffling ``DataLoader`` without a generator of its own draws its order
from torch's global RNG, which :func:`bayes_sws.fit` seeds and records, so it
resumes exactly too. What cannot be replayed (an ``IterableDataset``, persistent
workers, a sampler of unknown kind, an iterable that is not a ``DataLoader`` or
a list) is read again all the same, with one :class:`ReplayWarning`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
    default_collate,
)

from ..settings import epochs_to_steps
from ..validation import check_int
from .rng import get_rng_state, rng_preserved, set_rng_state

__all__ = ["BatchStream", "ReplayWarning", "dataset_size", "is_batches", "replay_problem"]

#: Samplers whose order is a function of their generator (or the global RNG) and the epoch.
_REPLAYABLE_SAMPLERS = (
    BatchSampler,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)


class ReplayWarning(UserWarning):
    """A resumed fit reads a data loader whose order cannot be replayed exactly."""


def is_batches(x: Any, y: Any) -> bool:
    """Whether ``fit(model, x, y)`` was given batches (``y`` is ``None``, ``x`` a loader).

    Tensors and arrays are data; any other iterable (a ``DataLoader``, a list of
    ``(x, y)`` pairs) given without ``y`` is a source of batches.
    """
    if isinstance(x, DataLoader):
        if y is not None:
            raise TypeError(
                "x is a DataLoader, whose batches hold the targets; call fit(model, loader) "
                "without y"
            )
        return True
    if y is not None or isinstance(x, (Tensor, np.ndarray, str, bytes, Mapping)):
        return False
    return isinstance(x, Iterable)


def _samplers(loader: DataLoader) -> list[Any]:
    """The loader's batch sampler, its sampler, and the samplers inside them, each once.

    A ``BatchSampler`` given as the ``sampler`` of a loader with ``batch_size=None``
    (whole batches) is opened too: its own sampler is the one with the generator
    and the ``set_epoch``.
    """
    found: list[Any] = []
    for sampler in (loader.batch_sampler, loader.sampler):
        while sampler is not None and all(sampler is not s for s in found):
            found.append(sampler)
            sampler = getattr(sampler, "sampler", None)
    return found


def replay_problem(batches: Iterable) -> str | None:
    """Why ``batches`` cannot be read again in the same order from a recorded state, or ``None``."""
    if isinstance(batches, Sequence):
        return None
    if not isinstance(batches, DataLoader):
        return (
            f"a {type(batches).__name__} is neither a DataLoader nor a list of batches, so its "
            "order when read again cannot be checked"
        )
    if isinstance(batches.dataset, IterableDataset):
        return "the DataLoader reads an IterableDataset, whose order cannot be replayed"
    if batches.persistent_workers and batches.num_workers > 0:
        return "the DataLoader keeps persistent workers, whose seeds are not drawn again per epoch"
    for sampler in _samplers(batches):
        if not isinstance(sampler, _REPLAYABLE_SAMPLERS) and not callable(
            getattr(sampler, "set_epoch", None)
        ):
            return (
                f"its sampler {type(sampler).__name__} is none of torch's and has no "
                "set_epoch(epoch) method"
            )
    return None


def _generators(batches: Iterable) -> tuple[torch.Generator, ...]:
    """The ``torch.Generator``\\ s that decide a ``DataLoader``'s order, each once."""
    if not isinstance(batches, DataLoader):
        return ()
    found: list[torch.Generator] = []
    for owner in (batches, *_samplers(batches)):
        generator = getattr(owner, "generator", None)
        if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
            found.append(generator)
    return tuple(found)


class _Rows(Dataset):
    """The tensors of a ``TensorDataset``, indexed by a whole batch of indices at once."""

    def __init__(self, tensors: Sequence[Tensor]):
        self.tensors = tuple(tensors)

    def __len__(self) -> int:
        return self.tensors[0].size(0)

    def __getitem__(self, indices: Any) -> tuple[Tensor, ...]:
        index = torch.as_tensor(indices, dtype=torch.long)
        if bool((index < 0).any()):  # from the end, as dataset[i] reads them
            index = index + len(self) * (index < 0)
        return tuple(t.index_select(0, index.to(t.device)) for t in self.tensors)


def _whole_batches(batches: Iterable) -> Iterable:
    """A loader reading the same batches as ``batches`` with one gather each, or ``batches``.

    A ``DataLoader`` over a ``TensorDataset`` with the default collate and no
    worker processes collates each batch from :math:`B` single items
    (``dataset[i]`` and ``torch.stack``). The loader returned gathers the rows of
    the batch sampler's whole index list from each tensor at once
    (``index_select``: the same values in the same dtypes and shapes), through
    the same batch sampler and ``generator`` (building its iterator draws the same
    base seed), so the batches, the order and the RNG streams are those of
    ``batches``. It is ``DataLoader(rows, batch_size=None, sampler=BatchSampler(...))``,
    the form to give ``fit`` for any dataset that can be indexed with a list of indices.
    """
    if not (
        isinstance(batches, DataLoader)
        and type(batches.dataset) is TensorDataset
        and batches.batch_sampler is not None
        and batches.collate_fn is default_collate
        and batches.num_workers == 0
    ):
        return batches
    return DataLoader(
        _Rows(batches.dataset.tensors),
        batch_size=None,
        sampler=batches.batch_sampler,
        generator=batches.generator,
        pin_memory=batches.pin_memory,
    )


def _pair(batch: Any, where: str) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    size = f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""
    raise TypeError(
        f"{where} of the data loader is a {type(batch).__name__}{size}; each batch must be a "
        "pair (x, y) of inputs and targets"
    )


def dataset_size(batches: Iterable) -> int | None:
    """``len(batches.dataset)``: the number of data points behind a loader's batches, or
    ``None`` where it has no dataset (a list of batches), an unsized one or an empty one."""
    dataset = getattr(batches, "dataset", None)
    try:
        size = len(dataset) if dataset is not None else 0
    except TypeError:
        size = 0
    return size if size >= 1 else None


def _num_data(batches: Iterable, num_data: Any) -> int:
    if num_data is not None:
        return check_int("num_data", num_data, low=1)
    size = dataset_size(batches)
    if size is None:
        raise ValueError(
            f"num_data is None and the data ({type(batches).__name__}) has no dataset with a "
            "length to take it from; pass fit(..., num_data=N) with N the number of data points "
            "in the whole data set (each batch's likelihood is scaled by N / its size)"
        )
    return size


class BatchStream:
    """The batches of a data loader, one per step, with an exact record of where it stands.

    Parameters
    ----------
    batches : DataLoader or re-iterable of (x, y)
        Read again from the start for every epoch; an iterator that can be read
        only once is refused.
    num_data : int, optional
        The size :math:`N` of the whole data set; default ``len(batches.dataset)``.
    warn : callable, optional
        ``warn(message)`` for a replay that may not be exact (at most once).

    Attributes
    ----------
    num_data : int
    steps_per_epoch : int or None
        ``len(batches)``: the steps of one epoch (``None`` if it has no length;
        an epoch then ends when the loader does).
    batch_size : int or None
        The loader's ``batch_size`` attribute, if any (for the record only).
    epoch, position : int
        The epoch being read and the batches of it read so far.
    last_read : str
        Where the last batch :meth:`next` returned was (``"batch 3 of epoch 1"``).
    """

    def __init__(
        self,
        batches: Iterable,
        num_data: int | None = None,
        *,
        warn: Callable[[str], None] | None = None,
    ):
        if isinstance(batches, Iterator):
            raise TypeError(
                f"the data is an iterator ({type(batches).__name__}), which can be read only "
                "once; pass a re-iterable: a DataLoader, or a list of (x, y) batches"
            )
        self.batches = batches
        self._reader = _whole_batches(batches)  # what is read: the same batches
        self.num_data = _num_data(batches, num_data)
        try:
            self.steps_per_epoch: int | None = len(batches)  # type: ignore[arg-type]
        except TypeError:
            self.steps_per_epoch = None
        if self.steps_per_epoch == 0:
            raise ValueError("the data loader has no batches (len(loader) == 0)")
        self.batch_size = getattr(batches, "batch_size", None)
        self.replay_problem = replay_problem(batches)
        self._generators = _generators(batches)
        self._warn, self._warned = warn, False
        self.epoch, self.position = 0, 0
        self._iterator: Iterator | None = None
        self._epoch_start: dict[str, Any] | None = None
        self._target: dict[str, Any] | None = None
        self.last_read = "no batch"  # where the last batch returned by next() was

    # ------------------------------------------------------------------ reading
    def probe(self) -> tuple[Any, Any]:
        """A first ``(x, y)`` to check the data with, read without moving the stream or any RNG.

        For a ``DataLoader`` over a map-style dataset, its first two points
        collated; otherwise the first batch of a fresh pass.
        """
        batches = self.batches
        with rng_preserved(self._generators):
            if isinstance(batches, Sequence):
                if not batches:
                    raise ValueError("the data loader has no batches (an empty sequence)")
                return _pair(batches[0], "batch 0")
            dataset = getattr(batches, "dataset", None)
            if (
                isinstance(batches, DataLoader)
                and batches.batch_sampler is not None
                and not isinstance(dataset, IterableDataset)
            ):
                count = min(2, self.num_data, len(dataset))  # type: ignore[arg-type]
                points = [dataset[i] for i in range(count)]  # type: ignore[index]
                return _pair(batches.collate_fn(points), "the first data points")
            for batch in batches:
                return _pair(batch, "batch 0")
        raise ValueError("the data loader yielded no batches")

    def next(self) -> tuple[Any, Any]:
        """The next batch ``(x, y)`` as the loader gives it; a new epoch begins where one ends."""
        if self._target is not None:
            self._catch_up()
        while True:
            if self._iterator is None:
                self._begin_epoch()
            try:
                batch = next(self._iterator)  # type: ignore[arg-type]
            except StopIteration:
                if self.position == 0:
                    raise ValueError(
                        f"the data loader yielded no batches in epoch {self.epoch}"
                    ) from None
                self._end_epoch()
                continue
            self.last_read = f"batch {self.position} of epoch {self.epoch}"
            self.position += 1
            if self.position == self.steps_per_epoch:
                self._end_epoch()
            return _pair(batch, self.last_read)

    def total_steps(self, num_epochs: float) -> int:
        """Steps of ``num_epochs`` passes: ``max(1, round(num_epochs * len(loader)))``."""
        if self.steps_per_epoch is None:
            raise ValueError(
                f"num_epochs needs the number of batches per epoch, but the data loader "
                f"({type(self.batches).__name__}) has no len(); give num_steps instead"
            )
        return epochs_to_steps(num_epochs, self.steps_per_epoch)

    def _set_epoch(self, epoch: int) -> None:
        if isinstance(self.batches, DataLoader):
            for sampler in _samplers(self.batches):
                if callable(getattr(sampler, "set_epoch", None)):
                    sampler.set_epoch(epoch)

    def _begin_epoch(self) -> None:
        self._set_epoch(self.epoch)
        self._epoch_start = {
            "rng": get_rng_state(),
            "generators": [g.get_state() for g in self._generators],
        }
        self._iterator = iter(self._reader)

    def _end_epoch(self) -> None:
        self.epoch, self.position = self.epoch + 1, 0
        self._iterator, self._epoch_start = None, None

    # ------------------------------------------------------------------ the record
    def state(self) -> dict[str, Any]:
        """Where the stream stands: plain tensors, lists and numbers (``weights_only``-loadable).

        ``epoch`` and ``position`` (batches of it read); while an epoch is being
        read, ``epoch_rng`` and ``epoch_generators``, the RNG and generator
        states it began with; ``generators``, their states now.
        """
        if self._target is not None:
            return self._target
        start = self._epoch_start
        return {
            "epoch": self.epoch,
            "position": self.position,
            "epoch_rng": None if start is None else start["rng"],
            "epoch_generators": None if start is None else start["generators"],
            "generators": [g.get_state() for g in self._generators],
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` (from :meth:`state`); the loader is read on the next batch."""
        missing = {"epoch", "position", "epoch_rng", "epoch_generators", "generators"} - set(state)
        if missing:
            raise ValueError(f"a data loader state needs the entries {sorted(missing)}")
        if len(state["generators"]) != len(self._generators):
            raise ValueError(
                f"the data loader has {len(self._generators)} torch.Generator(s) deciding its "
                f"order but the checkpoint recorded {len(state['generators'])}; resume with a "
                "loader built as the checkpointed run's was"
            )
        self._target = dict(state)

    def _is_live(self, target: Mapping[str, Any]) -> bool:
        """Whether the stream already stands where ``target`` does (nothing to read again)."""
        start = self._epoch_start
        if target["epoch_rng"] is None:
            return self._iterator is None and self.epoch == target["epoch"]
        return (
            start is not None
            and start["rng"] is target["epoch_rng"]
            and (self.epoch, self.position) == (target["epoch"], target["position"])
        )

    def _catch_up(self) -> None:
        """Reach the restored state: between epochs, the generators as they were; inside one,
        its pass begun again from its recorded RNG states and read up to its position."""
        target, self._target = self._target, None
        assert target is not None
        live = self._is_live(target)
        if not live and self.replay_problem is not None and self._warn and not self._warned:
            self._warned = True
            self._warn(
                f"resuming at batch {target['position']} of epoch {target['epoch']}: "
                f"{self.replay_problem}, so the batches from here on may differ from those of "
                "an uninterrupted run"
            )
        if target["epoch_rng"] is None:
            self._iterator, self._epoch_start = None, None
            self.epoch, self.position = int(target["epoch"]), 0
            for generator, generator_state in zip(self._generators, target["generators"]):
                generator.set_state(generator_state)
        elif not live:
            self._replay(target)

    def _replay(self, target: Mapping[str, Any]) -> None:
        now = get_rng_state()
        set_rng_state(target["epoch_rng"])
        for generator, generator_state in zip(self._generators, target["epoch_generators"]):
            generator.set_state(generator_state)
        self.epoch, self.position = int(target["epoch"]), 0
        self._begin_epoch()
        self._epoch_start = {"rng": target["epoch_rng"], "generators": target["epoch_generators"]}
        iterator = self._iterator
        assert iterator is not None
        for _ in range(int(target["position"])):
            if next(iterator, None) is None:
                raise ValueError(
                    f"the data loader yielded only {self.position} batches of epoch "
                    f"{self.epoch} when read again up to batch {target['position']}; it is not "
                    "the loader of the checkpointed run"
                )
            self.position += 1
        set_rng_state(now)
