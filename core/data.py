"""Synthetic sequence data for the core tasks.

Selective copying (Mamba paper, Gu & Dao 2023, §4.1 / Fig. 2): a region of ``seq_len`` noise tokens holds
``n_tokens`` data tokens at random positions (kept in order); it is followed by ``n_tokens`` marker tokens,
and at the k-th marker the model must emit the k-th data token. Solving it needs *content-aware* memory:
where the data sits varies per sequence, so a time-invariant (LTI) convolution cannot pick it out.

Token ids: data symbols are ``0 .. vocab_size-1``; ``NOISE = vocab_size``; ``MARKER = vocab_size + 1``.
Targets use the data ids directly and ``IGNORE_INDEX`` (-100, as in ``F.cross_entropy``) everywhere that is
not an output position, so losses and metrics only see the ``n_tokens`` answers.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from mambasuite.core.resumable import ResumableDataLoader

IGNORE_INDEX = -100

# One independent random stream per split, so changing n_train does not change the validation set.
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def _check_int(name: str, value: int, minimum: int) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an int ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_selective_copying_args(seq_len: int, n_tokens: int, vocab_size: int) -> None:
    """Validate the task size; raises ``ValueError`` naming the offending argument."""
    _check_int("seq_len", seq_len, 1)
    _check_int("n_tokens", n_tokens, 1)
    _check_int("vocab_size", vocab_size, 2)  # one symbol would make copying trivial
    if n_tokens > seq_len:
        raise ValueError(f"n_tokens ({n_tokens}) must be <= seq_len ({seq_len}): each data token needs its own slot")


def make_selective_copying(
    n_samples: int, seq_len: int, n_tokens: int, vocab_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate selective-copying sequences in one vectorised pass.

    Args:
        n_samples: number of sequences ``n``.
        seq_len: length of the noise region holding the data tokens.
        n_tokens: data tokens per sequence (and markers after the region).
        vocab_size: number of data symbols ``V`` (noise is ``V``, marker is ``V + 1``).
        generator: source of randomness; the output is a pure function of its state.

    Returns:
        ``tokens``: ``(n, seq_len + n_tokens)`` int64 model input.
        ``targets``: ``(n, seq_len + n_tokens)`` int64, the data tokens in order at the marker positions and
        ``IGNORE_INDEX`` elsewhere.
    """
    check_selective_copying_args(seq_len, n_tokens, vocab_size)
    _check_int("n_samples", n_samples, 1)
    total = seq_len + n_tokens
    # Random distinct positions per row (argsort of uniform noise), sorted so data keeps its order.
    positions = torch.rand(n_samples, seq_len, generator=generator).argsort(dim=1)[:, :n_tokens]
    positions = positions.sort(dim=1).values
    data = torch.randint(0, vocab_size, (n_samples, n_tokens), generator=generator)

    tokens = torch.full((n_samples, total), vocab_size, dtype=torch.long)
    tokens.scatter_(1, positions, data)
    tokens[:, seq_len:] = vocab_size + 1
    targets = torch.full((n_samples, total), IGNORE_INDEX, dtype=torch.long)
    targets[:, seq_len:] = data
    return tokens, targets


class SelectiveCopyingDataset(Dataset):
    """A fixed set of selective-copying sequences, generated once at construction.

    Items are ``(tokens, targets)``, each ``(seq_len + n_tokens,)`` int64; see :func:`make_selective_copying`.
    """

    def __init__(self, n_samples: int, seq_len: int, n_tokens: int, vocab_size: int, seed: int = 0) -> None:
        _check_int("seed", seed, 0)
        generator = torch.Generator().manual_seed(seed)
        self.tokens, self.targets = make_selective_copying(n_samples, seq_len, n_tokens, vocab_size, generator)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens[index], self.targets[index]


class SelectiveCopyingDataModule(pl.LightningDataModule):
    """Train/val/test splits of the selective-copying task, deterministic in ``seed``.

    Batches are ``(tokens, targets)`` of shape ``(batch_size, seq_len + n_tokens)``. The model needs an input
    vocabulary of :attr:`num_input_tokens` and :attr:`num_classes` output classes. ``predict`` serves the test
    split. Every rank generates the same tensors from the seed; Lightning's distributed sampler shards them.

    Args:
        seq_len: length of the noise region that holds the data tokens.
        n_tokens: number of data tokens to copy (``<= seq_len``).
        vocab_size: number of data symbols (``>= 2``).
        n_train: training sequences.
        n_val: validation sequences.
        n_test: test (and predict) sequences.
        batch_size: sequences per batch (per device).
        seed: base seed; each split draws from its own stream derived from it.
        num_workers: DataLoader workers (0 is right for in-memory tensors).
    """

    def __init__(
        self,
        seq_len: int = 64,
        n_tokens: int = 8,
        vocab_size: int = 8,
        n_train: int = 20_000,
        n_val: int = 1_000,
        n_test: int = 1_000,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        check_selective_copying_args(seq_len, n_tokens, vocab_size)
        for name, value, minimum in (
            ("n_train", n_train, 1),
            ("n_val", n_val, 1),
            ("n_test", n_test, 1),
            ("batch_size", batch_size, 1),
            ("seed", seed, 0),
            ("num_workers", num_workers, 0),
        ):
            _check_int(name, value, minimum)
        self.save_hyperparameters()
        self.datasets: dict[str, SelectiveCopyingDataset] = {}

    @property
    def num_input_tokens(self) -> int:
        """Input vocabulary: the data symbols plus the noise and marker tokens."""
        return self.hparams.vocab_size + 2

    @property
    def num_classes(self) -> int:
        """Output classes: the data symbols."""
        return self.hparams.vocab_size

    def _split(self, name: str) -> SelectiveCopyingDataset:
        if name not in self.datasets:
            hp = self.hparams
            size = {"train": hp.n_train, "val": hp.n_val, "test": hp.n_test}[name]
            # Distinct streams per split: seed*3 + split id never collides across (seed, split) pairs.
            seed = hp.seed * len(_SPLIT_IDS) + _SPLIT_IDS[name]
            self.datasets[name] = SelectiveCopyingDataset(size, hp.seq_len, hp.n_tokens, hp.vocab_size, seed)
        return self.datasets[name]

    def setup(self, stage: str | None = None) -> None:
        """Generate the splits the stage needs (cheap and deterministic, so every rank does it)."""
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for name in needed.get(stage, tuple(_SPLIT_IDS)):
            self._split(name)

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self._split(name),
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        # Resumable: the shuffled order (from the run's seed) and the position in it are saved in checkpoints.
        return ResumableDataLoader(
            self._split("train"),
            batch_size=self.hparams.batch_size,
            shuffle=True,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
