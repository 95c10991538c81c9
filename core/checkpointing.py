"""Lightning side of crash safety: the atomic, weights-only ``CheckpointIO`` plugin and the ``last`` checkpoint.

* :class:`AtomicCheckpointIO` writes checkpoints with :func:`~mambasuite.core.files.atomic_write` (temporary
  name, fsync, ``os.replace``) and reads them with :func:`~mambasuite.core.files.safe_torch_load`
  (``weights_only=True`` plus an explicit allow-list).
* :class:`LastCheckpoint` saves ``last.ckpt`` every N optimizer steps and at the end of ``fit``, so a killed
  run resumes with ``--ckpt_path last`` (the data order resumes through :mod:`mambasuite.core.resumable`).

``atomic_write`` and ``safe_torch_load`` are re-exported here; modules that must not import Lightning take
them from :mod:`mambasuite.core.files`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

from .files import UnsafeCheckpointError, import_global, atomic_write, safe_torch_load

__all__ = ["AtomicCheckpointIO", "LastCheckpoint", "UnsafeCheckpointError", "atomic_write", "safe_torch_load"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` that writes with :func:`atomic_write` and reads with :func:`safe_torch_load`.

    ``torch.save`` streams straight into the temporary file (no second in-memory copy of the checkpoint, unlike
    Lightning's default), and a kill at any point leaves the previous checkpoint of that name loadable.

    Args:
        safe_globals: dotted names of extra classes a checkpoint may contain (an explicit allow-list; Lightning
            checkpoints written by mamba-suite need none).
    """

    def __init__(self, safe_globals: list[str] | None = None) -> None:
        super().__init__()
        self.safe_globals = list(safe_globals or [])
        for name in self.safe_globals:
            import_global(name)  # fail at construction, not at the first resume

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        """Atomically write ``checkpoint`` (a dict) to ``path``."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options, got {storage_options!r}")
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Read a checkpoint weights-only; ``weights_only=False`` is refused (extend ``safe_globals`` instead)."""
        if weights_only is False:
            raise ValueError(
                f"{type(self).__name__} loads checkpoints with weights_only=True only (asked to load {path} with "
                f"weights_only=False); list the extra classes in AtomicCheckpointIO(safe_globals=[...]) instead")
        return safe_torch_load(path, safe_globals=self.safe_globals, map_location=map_location)

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        """Delete a checkpoint file (missing files are ignored)."""
        Path(path).unlink(missing_ok=True)


class LastCheckpoint(ModelCheckpoint):
    """Writes ``<checkpoint dir>/last.ckpt`` every ``every_n_train_steps`` optimizer steps and when ``fit`` ends.

    The step interval is what makes a killed run resumable with little lost work; the metric-monitoring
    :class:`~pytorch_lightning.callbacks.ModelCheckpoint` keeps the best checkpoints. When a validation run
    follows the step (``val_check_interval``, epoch end), the save waits until it has finished: Lightning does
    not repeat a validation that was pending when a checkpoint was written, so saving first would lose its
    metrics (and EarlyStopping's view of them) on resume. After each save the loggers are flushed, so
    ``metrics.csv`` holds every row logged before the checkpoint.

    Args:
        dirpath: folder of ``last.ckpt``; ``None`` = the run's ``checkpoints/`` folder (as ModelCheckpoint).
        every_n_train_steps: save interval in optimizer steps; ``0`` saves only at the end of ``fit``.
        verbose: print each save.
    """

    def __init__(self, dirpath: str | None = None, every_n_train_steps: int = 100, verbose: bool = False) -> None:
        if isinstance(every_n_train_steps, bool) or not isinstance(every_n_train_steps, int) or every_n_train_steps < 0:
            raise ValueError(f"every_n_train_steps must be an integer >= 0, got {every_n_train_steps!r}")
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0, every_n_train_steps=every_n_train_steps,
                         every_n_epochs=0, verbose=verbose,
                         enable_version_counter=False)  # always the one file `last.ckpt`, never last-v1.ckpt
        self._save_after_validation = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Save (or, if a validation follows this step, schedule a save) every ``every_n_train_steps`` steps."""
        n = self._every_n_train_steps
        if n < 1 or trainer.global_step % n != 0 or self._should_skip_saving_checkpoint(trainer):
            return
        loop = trainer.fit_loop.epoch_loop
        if loop._should_check_val_fx(trainer.fit_loop._data_fetcher):
            self._save_after_validation = True
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer, pl_module) -> None:
        """Perform a save scheduled by :meth:`on_train_batch_end`."""
        if self._save_after_validation and not trainer.sanity_checking:
            self._save_after_validation = False
            if not self._should_skip_saving_checkpoint(trainer):
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        """No epoch-based saves (the base class would save last.ckpt again for the same step)."""

    def on_train_end(self, trainer, pl_module) -> None:
        """Save the final state (unless it was just saved at this step)."""
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        for logger in trainer.loggers:
            logger.save()
