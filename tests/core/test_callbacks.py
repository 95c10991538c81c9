"""FitSummary and PredictionWriter write their files atomically: complete files only, nothing left half-written."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from mambasuite.core.callbacks import FitSummary, PredictionWriter
from mambasuite.core.files import safe_torch_load


def _trainer(log_dir, **extra) -> SimpleNamespace:
    return SimpleNamespace(log_dir=str(log_dir), default_root_dir=str(log_dir), global_step=12, current_epoch=1,
                           world_size=1, global_rank=0, is_global_zero=True, fast_dev_run=False,
                           callback_metrics={"val/acc": torch.tensor(0.75), "val/loss": torch.tensor(0.5)}, **extra)


def test_fit_summary_is_written_atomically(tmp_path, capsys):
    summary = FitSummary(name="demo")
    trainer = _trainer(tmp_path / "run")
    summary.on_fit_start(trainer, None)
    summary.on_fit_end(trainer, None)
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["metrics"] == {"val/acc": 0.75, "val/loss": 0.5} and written["global_step"] == 12
    assert "demo: val/acc 75.0% (val/loss 0.5) after 12 steps" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["summary.json"]  # no temporary files


def test_predictions_survive_a_failed_rewrite(tmp_path, monkeypatch):
    writer = PredictionWriter(output_dir=str(tmp_path / "pred"))
    trainer = _trainer(tmp_path)
    writer.write_on_epoch_end(trainer, None, [torch.arange(3), torch.arange(3, 5)], [[0, 1, 2], [3, 4]])
    saved = safe_torch_load(tmp_path / "pred" / "predictions.pt")  # weights-only readable: tensors and lists
    assert torch.equal(torch.cat(saved["predictions"]), torch.arange(5)) and saved["batch_indices"][1] == [3, 4]

    def dies_half_way(obj, path, *args, **kwargs):
        open(path, "wb").write(b"PK\x03\x04 half a zip")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        writer.write_on_epoch_end(trainer, None, [torch.zeros(2)], [[0, 1]])
    assert torch.equal(torch.cat(safe_torch_load(tmp_path / "pred" / "predictions.pt")["predictions"]),
                       torch.arange(5))  # the previous file is intact
    assert [p.name for p in (tmp_path / "pred").iterdir()] == ["predictions.pt"]  # the torn temporary is gone
