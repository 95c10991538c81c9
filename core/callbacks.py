"""Small Lightning callbacks the CLI attaches: a one-line result at the end of fit, prediction files.

Both files are written with :func:`~mambasuite.core.files.atomic_write` (temporary name, fsync, rename), so a run
killed while writing leaves the previous file or none, never a torn one.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter, Callback
from pytorch_lightning.utilities import rank_zero_only

from .files import atomic_write


def _as_float(value: Any) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


class FitSummary(Callback):
    """Prints one line when fit ends and writes it as ``summary.json`` into the run's log dir.

    Example: ``selective_copying: val/acc 99.7% (val/loss 0.0123) after 1200 steps (173 s, world size 1)``.
    Metrics whose name contains ``acc`` print as percentages.

    Args:
        name: label for the line (the CLI passes the config file's stem).
        metrics: logged metric names to report, in order; missing ones are skipped.
    """

    def __init__(self, name: str = "fit", metrics: Sequence[str] = ("val/acc", "val/loss", "train/loss_epoch")) -> None:
        self.name = name
        self.metrics = tuple(metrics)
        self._start: float | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        elapsed = time.perf_counter() - (self._start or time.perf_counter())
        values = {k: _as_float(trainer.callback_metrics.get(k)) for k in self.metrics}
        values = {k: v for k, v in values.items() if v is not None}
        # trainer.log_dir is a broadcast under DDP: every rank must ask, so ask here, outside rank_zero_only.
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)
        self._report(trainer, values, elapsed, log_dir)

    @rank_zero_only
    def _report(self, trainer: pl.Trainer, values: dict[str, float], elapsed: float, log_dir: Path) -> None:
        parts = [f"{k} {v:.1%}" if "acc" in k else f"{k} {v:.4g}" for k, v in values.items()]
        head, rest = (parts[0], parts[1:]) if parts else ("no metrics", [])
        extra = f" ({', '.join(rest)})" if rest else ""
        line = (
            f"{self.name}: {head}{extra} after {trainer.global_step} steps "
            f"({elapsed:.0f} s, world size {trainer.world_size})"
        )
        print(line, flush=True)
        if trainer.fast_dev_run:
            return
        summary = {
            "name": self.name,
            "metrics": values,
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "wall_time_s": round(elapsed, 2),
            "world_size": trainer.world_size,
            "line": line,
        }
        atomic_write(log_dir / "summary.json", json.dumps(summary, indent=2) + "\n")


class PredictionWriter(BasePredictionWriter):
    """Saves the predictions of ``predict`` as ``predictions.pt`` (``predictions_rank<r>.pt`` under DDP).

    The file holds ``{"predictions": list of per-batch outputs, "batch_indices": ...}`` in dataloader order.

    Args:
        output_dir: folder for the file; ``None`` uses the trainer's log dir.
    """

    def __init__(self, output_dir: str | os.PathLike | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir

    def write_on_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        out = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)
        name = "predictions.pt" if trainer.world_size == 1 else f"predictions_rank{trainer.global_rank}.pt"
        payload = {"predictions": list(predictions), "batch_indices": list(batch_indices)}
        atomic_write(out / name, lambda tmp: torch.save(payload, tmp))
        if trainer.is_global_zero:
            print(f"predictions written to {out}", flush=True)
