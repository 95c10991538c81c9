"""ResourceMonitor: batch accounting, logged values on a tiny CPU training, bad inputs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mambasuite.core.resources import ResourceMonitor, batch_size_and_tokens


def test_batch_accounting():
    assert batch_size_and_tokens((torch.zeros(4, 10, dtype=torch.long), torch.zeros(4))) == (4, 40)
    assert batch_size_and_tokens(torch.zeros(3, 3, 32, 32)) == (3, None)  # images: samples only
    assert batch_size_and_tokens({"x": torch.zeros(5, 7, dtype=torch.int32)}) == (5, 35)
    assert batch_size_and_tokens([torch.zeros(2, 16000)]) == (2, None)  # float waveforms are not tokens
    with pytest.raises(TypeError, match="cannot find"):
        batch_size_and_tokens(("a", 1))
    with pytest.raises(ValueError, match="every_n_steps"):
        ResourceMonitor(every_n_steps=0)


class _Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(5, 8)
        self.head = nn.Linear(8, 5)

    def training_step(self, batch, batch_idx):
        tokens, = batch
        return F.cross_entropy(self.head(self.embedding(tokens)).flatten(0, 1), tokens.flatten())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_monitor_logs_step_time_and_throughput(tmp_path):
    tokens = torch.randint(0, 5, (24, 6))
    monitor = ResourceMonitor(every_n_steps=2)
    trainer = pl.Trainer(max_steps=9, accelerator="cpu", logger=pl.loggers.CSVLogger(tmp_path, name="run"),
                         callbacks=[monitor], enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(_Tiny(), DataLoader(TensorDataset(tokens), batch_size=4))
    # the clock starts with the epoch: 9 batches -> logs after batches 2, 4, 6, 8 (the 9th is still pending)
    assert [h["step"] for h in monitor.history] == [2, 4, 6, 8]
    for h in monitor.history:
        assert h["resources/step_ms"] > 0
        assert h["resources/samples_per_s"] == pytest.approx(4 / (h["resources/step_ms"] / 1e3), rel=1e-6)
        assert h["resources/tokens_per_s"] == pytest.approx(6 * h["resources/samples_per_s"])
        assert "resources/gpu_mem_peak_mb" not in h  # CPU run: no CUDA figures
    rows = [r for r in csv.DictReader((Path(trainer.logger.log_dir) / "metrics.csv").open())
            if r.get("resources/step_ms")]
    assert [float(r["resources/step_ms"]) for r in rows] == pytest.approx(
        [h["resources/step_ms"] for h in monitor.history])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_monitor_reports_cuda_memory(tmp_path):
    tokens = torch.randint(0, 5, (16, 6))
    monitor = ResourceMonitor(every_n_steps=2, gpu_utilization=False)
    trainer = pl.Trainer(max_steps=5, accelerator="gpu", devices=1, logger=False, callbacks=[monitor],
                         enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(_Tiny(), DataLoader(TensorDataset(tokens), batch_size=4))
    h = monitor.history[-1]
    assert h["resources/gpu_mem_peak_mb"] >= h["resources/gpu_mem_alloc_mb"] > 0
