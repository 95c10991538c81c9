"""Training data order and randomness that survive a crash: resume mid-epoch with the same batches.

A run killed at step k and resumed from its checkpoint must see exactly the batches (and the random
augmentations, dropout masks) that the uninterrupted run saw. Three pieces make every random draw a pure
function of the seed and the position in training, never of the process's history:

* :class:`ResumableSampler`: a ``DistributedSampler`` (so Lightning keeps it under DDP instead of swapping in
  its own) whose permutation depends on ``(seed, epoch)`` only; it can start an epoch at a sample offset,
  and it yields ``(index, sample_seed)`` with ``sample_seed = mix_seed(seed, epoch, index)``.
* :class:`ResumableDataLoader`: a ``DataLoader`` over that sampler that counts the batches it has handed out
  and exposes ``state_dict()``/``load_state_dict()``. Lightning 2.6 stores the state of every train loader
  with that interface in the checkpoint (``loops.fit_loop.state_dict.combined_loader``) and loads it back
  before the first batch of a resumed fit. Each item is fetched with the CPU random generators (torch,
  ``random``, NumPy) seeded from its ``sample_seed``, in the main process or in a worker alike, so
  augmentations do not depend on worker count, prefetching or restarts.
* :class:`StepSeeder`: a callback that reseeds the global generators (CPU and CUDA) from
  ``(seed, epoch, batch_idx, rank)`` before each training batch, so dropout / drop-path / masking in the
  model are reproducible across a restart too.
"""

from __future__ import annotations

import itertools
import os
import random
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from pytorch_lightning.callbacks import Callback
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

__all__ = ["ResumableDataLoader", "ResumableSampler", "StepSeeder", "mix_seed", "resolve_seed"]

_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """A 63-bit seed that depends on every value (SplitMix64 finaliser chained over ``values``).

    Neighbouring inputs (index 7 vs 8, epoch 0 vs 1) give unrelated seeds, unlike ``seed + index``.
    """
    state = 0x9E3779B97F4A7C15
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"mix_seed takes integers, got {value!r} ({type(value).__name__})")
        state = (state ^ (int(value) & _MASK64)) & _MASK64
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        state = z ^ (z >> 31)
    return state >> 1


def resolve_seed(seed: int | None) -> int:
    """``seed`` itself, or the run's global seed (``PL_GLOBAL_SEED``, set by ``seed_everything``), or 0."""
    if seed is None:
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0 or None, got {seed!r}")
    return seed


@contextmanager
def seeded_cpu_rngs(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator, ``random`` and NumPy's global generator from ``seed``; restore them after.

    CUDA generators are left alone: this runs around data loading, which is CPU work.
    """
    torch_state = torch.random.default_generator.get_state()
    py_state = random.getstate()
    np_state = np.random.get_state()
    torch.random.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    try:
        yield
    finally:
        torch.random.default_generator.set_state(torch_state)
        random.setstate(py_state)
        np.random.set_state(np_state)


class ResumableSampler(DistributedSampler):
    """Shuffled (or ordered) indices of one rank, deterministic in ``(seed, epoch)``, that can start mid-epoch.

    Yields ``(index, sample_seed)`` pairs (see the module docstring); ``len()`` is the full epoch of this rank
    (``ceil(len(dataset) / num_replicas)`` samples; short ranks repeat a few indices, as ``DistributedSampler``).

    Args:
        dataset: a sized map-style dataset.
        shuffle: permute the indices each epoch.
        seed: base seed of the permutation and of the per-sample seeds.
        num_replicas, rank: data-parallel world; ``None`` = from ``torch.distributed`` when it is initialised,
            else a single process.
    """

    def __init__(self, dataset: Dataset, *, shuffle: bool = True, seed: int = 0, num_replicas: int | None = None,
                 rank: int | None = None) -> None:
        if num_replicas is None or rank is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            num_replicas = num_replicas if num_replicas is not None else (
                torch.distributed.get_world_size() if distributed else 1)
            rank = rank if rank is not None else (torch.distributed.get_rank() if distributed else 0)
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=resolve_seed(seed))
        self._start: tuple[int, int] | None = None  # (epoch, samples to skip) for the next iteration

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (Lightning calls this at every epoch start)."""
        super().set_epoch(epoch)

    def start_at(self, epoch: int, samples: int) -> None:
        """Make the next iteration over ``epoch`` skip its first ``samples`` samples (a resumed epoch)."""
        if samples < 0 or samples > self.num_samples:
            raise ValueError(f"cannot start epoch {epoch} at sample {samples}: this rank's epoch has "
                             f"{self.num_samples} samples")
        self.set_epoch(epoch)
        self._start = (epoch, samples)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())
        skip = 0
        if self._start is not None:
            epoch, samples = self._start
            self._start = None  # applies once, and only to the epoch it was saved in
            skip = samples if epoch == self.epoch else 0
        for index in indices[skip:]:
            yield index, mix_seed(self.seed, self.epoch, index)


class _ResumableBatches(Sampler):
    """Wraps a custom batch sampler (deterministic given ``set_epoch``) so an epoch can start at batch k.

    Yields each batch as ``[(index, sample_seed), ...]``. ``sampler`` points back at the wrapper so that
    Lightning's per-epoch ``set_epoch`` (which looks at ``loader.batch_sampler.sampler``) reaches it.
    """

    def __init__(self, batches: Sampler, seed: int) -> None:
        self.batches, self.seed, self.epoch = batches, seed, 0
        self._start: tuple[int, int] | None = None  # (epoch, batches to skip)

    @property
    def sampler(self) -> "_ResumableBatches":
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.batches.set_epoch(epoch)

    def start_at(self, epoch: int, batches: int) -> None:
        self.set_epoch(epoch)
        self._start = (epoch, batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        skip = 0
        if self._start is not None:
            epoch, batches = self._start
            self._start = None
            skip = batches if epoch == self.epoch else 0
        for batch in itertools.islice(iter(self.batches), skip, None):  # skipping costs index lists only
            yield [(int(i), mix_seed(self.seed, self.epoch, int(i))) for i in batch]


class _SeededItems(Dataset):
    """Wraps a dataset so that ``[(index, seed)]`` fetches ``dataset[index]`` under :func:`seeded_cpu_rngs`."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with seeded_cpu_rngs(seed):
            return self.dataset[index]

    def __getitems__(self, keys: Sequence[tuple[int, int]]) -> list[Any]:
        # One save/restore of the generators per batch; each item is still seeded by itself.
        items = []
        with seeded_cpu_rngs(0):
            for index, seed in keys:
                torch.random.default_generator.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed % (1 << 32))
                items.append(self.dataset[index])
        return items

    def __getattr__(self, name: str) -> Any:
        # Forward attributes such as `classes`; `dataset` itself is guarded for unpickling in workers.
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ResumableDataLoader(DataLoader):
    """A training ``DataLoader`` whose position and shuffling are saved in, and restored from, checkpoints.

    Batches are what ``DataLoader(dataset, batch_size, shuffle=...)`` would give (``collate_fn`` etc. pass
    through ``**kwargs``), drawn in the order of a :class:`ResumableSampler`. ``state_dict()`` records the
    epoch and the batches handed out so far; ``load_state_dict()`` makes the next iteration continue from
    there. ``loader.dataset`` is a thin wrapper that forwards attributes to the original dataset.

    A custom batch sampler (length buckets, ...) can be given instead of ``batch_size``/``shuffle``: it must be
    deterministic in its own seed and ``set_epoch(epoch)`` (then a resumed epoch skips its first k batches) and
    shard itself under DDP; ``state_dict`` then records ``batch_size`` 0.

    Args:
        dataset: a sized map-style dataset.
        batch_size: samples per batch (per rank).
        shuffle: reshuffle every epoch (deterministic in ``seed`` and the epoch).
        seed: base seed; ``None`` = the run's global seed (``PL_GLOBAL_SEED``) or 0.
        drop_last: drop the last incomplete batch.
        num_replicas, rank: data-parallel world (default: from ``torch.distributed``).
        batch_sampler: a custom batch sampler with ``set_epoch`` (replaces batch_size, shuffle, drop_last).
        **kwargs: other ``DataLoader`` arguments (``num_workers``, ``collate_fn``, ``pin_memory``, ...); ``sampler``
            and ``generator`` are chosen by this class and refused.
    """

    def __init__(self, dataset: Dataset, batch_size: int = 1, *, shuffle: bool = True, seed: int | None = None,
                 drop_last: bool = False, num_replicas: int | None = None, rank: int | None = None,
                 batch_sampler: Sampler | None = None, **kwargs: Any) -> None:
        for name in ("sampler", "generator"):
            if kwargs.get(name) is not None:
                raise TypeError(f"ResumableDataLoader chooses its own {name}; got {name}={kwargs[name]!r}")
            kwargs.pop(name, None)
        seed = resolve_seed(seed)
        if batch_sampler is not None:
            if not callable(getattr(batch_sampler, "set_epoch", None)):
                raise TypeError(f"batch_sampler must have set_epoch(epoch) and be deterministic in it; "
                                f"{type(batch_sampler).__name__} has no set_epoch")
            self._resume_unit = 1  # positions are counted in batches
            super().__init__(_SeededItems(dataset), batch_sampler=_ResumableBatches(batch_sampler, seed), **kwargs)
        else:
            if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
                raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
            self._resume_unit = batch_size  # positions are counted in samples of this rank's permutation
            sampler = ResumableSampler(dataset, shuffle=shuffle, seed=seed, num_replicas=num_replicas, rank=rank)
            super().__init__(_SeededItems(dataset), batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                             **kwargs)
        self._seed = seed
        self._batches_served = 0

    @property
    def _position(self):
        """The object that orders an epoch and can start it late (ResumableSampler or _ResumableBatches)."""
        return self.sampler if isinstance(self.sampler, ResumableSampler) else self.batch_sampler

    def __iter__(self) -> Iterator[Any]:
        # A generator, so nothing (not even a worker start) happens until the first batch is asked for:
        # Lightning may create an iterator before it loads the saved state.
        return self._counted()

    def _counted(self) -> Iterator[Any]:
        position = self._position
        start = position._start
        resumed = start is not None and start[0] == position.epoch
        self._batches_served = -(-start[1] // self._resume_unit) if resumed else 0
        for batch in super().__iter__():
            self._batches_served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batches", "batch_size", "seed", "num_replicas", "dataset_len"}``: where this rank's epoch is."""
        sampler = self.sampler
        custom = not isinstance(sampler, ResumableSampler)
        return {"epoch": int(self._position.epoch), "batches": int(self._batches_served),
                "batch_size": 0 if custom else int(self.batch_size), "seed": int(self._seed),
                "num_replicas": 1 if custom else int(sampler.num_replicas), "dataset_len": len(self.dataset)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved :meth:`state_dict`; raises ``ValueError`` naming any setting that changed."""
        missing = {"epoch", "batches", "batch_size", "seed", "num_replicas", "dataset_len"} - set(state)
        if missing:
            raise ValueError(f"dataloader state from the checkpoint lacks {sorted(missing)}: got {sorted(state)}")
        now = self.state_dict()
        changed = {k: (state[k], now[k]) for k in ("batch_size", "seed", "num_replicas", "dataset_len")
                   if state[k] != now[k]}
        if changed:
            text = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
            raise ValueError(f"cannot resume the training data order mid-epoch: {text} since the checkpoint was "
                             f"written (keep them as they were, or resume from an end-of-epoch checkpoint)")
        if not 0 <= state["batches"] <= len(self):
            raise ValueError(f"dataloader state says {state['batches']} batches were served, but an epoch has "
                             f"{len(self)}")
        if isinstance(self.sampler, ResumableSampler):
            # The last batch of an epoch may be partial: never skip past the epoch's end.
            self.sampler.start_at(state["epoch"], min(state["batches"] * self.batch_size, self.sampler.num_samples))
        else:
            self.batch_sampler.start_at(state["epoch"], state["batches"])
        self._batches_served = state["batches"]


class StepSeeder(Callback):
    """Reseeds torch (CPU and CUDA), ``random`` and NumPy before every training batch.

    The seed is ``mix_seed(seed, epoch, batch_idx, global_rank)``, so random ops in ``training_step`` (dropout,
    drop-path, MLM masking, Mixup) draw the same numbers in a resumed run as in an uninterrupted one, whatever
    happened in between (validation, restarts, extra dataloader iterators).

    Args:
        seed: base seed; ``None`` = the run's global seed (``PL_GLOBAL_SEED``) or 0.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        step_seed = mix_seed(resolve_seed(self.seed), trainer.current_epoch, batch_idx, trainer.global_rank)
        torch.manual_seed(step_seed)  # also seeds every CUDA device
        random.seed(step_seed)
        np.random.seed(step_seed % (1 << 32))
