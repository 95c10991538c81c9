"""Resource tracking during training: step time, throughput, and GPU memory / utilisation, logged by a callback.

Every `every_n_steps` training batches `ResourceMonitor` logs, at the trainer's global step:

* `resources/step_ms`: mean wall time per training batch over the interval (batch end to batch end, so data
  loading, forward, backward and optimizer all count; without CUDA synchronisation the host can run ahead by the
  queue depth, which averages out over an interval);
* `resources/samples_per_s`, and `resources/tokens_per_s` when inputs are integer token ids (batch, L)
  (tokens = batch * L; samples = the batch size, e.g. images);
* with CUDA: `resources/gpu_mem_alloc_mb` (allocated now), `resources/gpu_mem_peak_mb` (peak over the interval;
  the peak counter is reset after each log) and `resources/gpu_util_pct` (`torch.cuda.utilization`, which needs
  the NVML bindings -- the `nvidia-ml-py` package; without them a warning is shown once and the figure is left out).
"""

from __future__ import annotations

import time
import warnings

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

__all__ = ["ResourceMonitor", "batch_size_and_tokens"]

_TOKEN_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8)


def _first_tensor(batch):
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (tuple, list)):
        for item in batch:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def batch_size_and_tokens(batch) -> tuple[int, int | None]:
    """(samples, tokens or None) of a batch: from its first tensor (batch, ...); tokens only for integer ids
    shaped (batch, L). Raises TypeError when the batch holds no tensor."""
    first = _first_tensor(batch)
    if first is None or first.dim() == 0:
        raise TypeError(f"ResourceMonitor: cannot find a (batch, ...) tensor in a batch of type {type(batch).__name__}")
    tokens = first.numel() if first.dtype in _TOKEN_DTYPES and first.dim() == 2 else None
    return int(first.shape[0]), tokens


class ResourceMonitor(Callback):
    """Logs step time, samples (tokens) per second and CUDA memory / utilisation every `every_n_steps` batches.

    Args:
        every_n_steps: logging stride in training batches.
        gpu_utilization: also log `torch.cuda.utilization()` (needs NVML; see the module docstring).
    """

    def __init__(self, every_n_steps: int = 50, gpu_utilization: bool = True) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive int, got {every_n_steps!r}")
        self.every_n_steps, self.gpu_utilization = every_n_steps, gpu_utilization
        self.history: list[dict] = []
        self._reset()

    def _reset(self) -> None:
        self._last: float | None = None
        self._batches = self._samples = self._tokens = 0
        self._elapsed = 0.0
        self._counts_tokens = True

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = time.perf_counter()  # an interval never spans validation or the epoch boundary
        self._batches = self._samples = self._tokens = 0
        self._elapsed = 0.0

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = time.perf_counter()  # mid-epoch validation is not training time

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last is None:
            self._last = now
            return
        samples, tokens = batch_size_and_tokens(batch)
        self._elapsed += now - self._last
        self._last = now
        self._batches += 1
        self._samples += samples
        self._counts_tokens = self._counts_tokens and tokens is not None
        self._tokens += tokens or 0
        if self._batches >= self.every_n_steps:
            self._log(trainer, pl_module.device)

    def _log(self, trainer: pl.Trainer, device: torch.device) -> None:
        metrics = {"resources/step_ms": self._elapsed / self._batches * 1e3,
                   "resources/samples_per_s": self._samples / self._elapsed}
        if self._counts_tokens:
            metrics["resources/tokens_per_s"] = self._tokens / self._elapsed
        if device.type == "cuda":
            metrics["resources/gpu_mem_alloc_mb"] = torch.cuda.memory_allocated(device) / 2**20
            metrics["resources/gpu_mem_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            torch.cuda.reset_peak_memory_stats(device)
            if self.gpu_utilization:
                try:
                    metrics["resources/gpu_util_pct"] = float(torch.cuda.utilization(device))
                except (ModuleNotFoundError, RuntimeError) as err:
                    warnings.warn(f"ResourceMonitor: GPU utilisation is not logged ({err}); install nvidia-ml-py "
                                  "or pass gpu_utilization=False", stacklevel=2)
                    self.gpu_utilization = False
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self.history.append({"step": trainer.global_step, **metrics})
        self._batches = self._samples = self._tokens = 0
        self._elapsed = 0.0
        self._counts_tokens = True
