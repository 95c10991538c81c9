"""`mamba-suite evaluate`: report files from a checkpoint written by `fit`."""

import json
from pathlib import Path

import pytest

from mambasuite.core.cli import main as cli_main

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "vision" / "vmamba_digits.yaml")


def test_evaluate_writes_report(tmp_path):
    cache = f"--data.init_args.cache_dir={tmp_path / 'digits'}"
    assert cli_main(["fit", "-c", CONFIG, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                     "--trainer.limit_val_batches=1",
                     f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.enable_progress_bar=false",
                     "--trainer.enable_model_summary=false", cache]) == 0
    (ckpt,) = (tmp_path / "run").glob("version_*/checkpoints/last.ckpt")
    out = tmp_path / "eval"
    assert cli_main(["evaluate", "-c", CONFIG, f"--ckpt_path={ckpt}", f"--out={out}", "--max_batches=2", cache]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["n_images"] == 128 and len(report["per_class_accuracy"]) == 10
    assert sum(map(sum, report["confusion"])) == 128
    assert 0 <= report["top1"] <= report["top5"] <= 1 and report["images_per_second"] > 0
    assert report["peak_memory_mb"] > 0
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    assert "top-1" in (out / "report.md").read_text()


def test_evaluate_missing_checkpoint_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["evaluate", "-c", CONFIG, f"--ckpt_path={tmp_path / 'nope.ckpt'}"])
    assert "nope.ckpt" in capsys.readouterr().err
