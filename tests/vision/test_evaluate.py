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
    png = (out / "confusion_matrix.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000  # savefig saw ".png" on the temporary name
    assert "top-1" in (out / "report.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["confusion_matrix.png", "report.json", "report.md"]  # no temps
    # A second run into the same folder is refused before any work, unless --overwrite=true.
    before = (out / "report.json").read_bytes()
    with pytest.raises(SystemExit) as exc:
        cli_main(["evaluate", "-c", CONFIG, f"--ckpt_path={ckpt}", f"--out={out}", "--max_batches=1", cache])
    assert exc.value.code == 2 and (out / "report.json").read_bytes() == before
    assert cli_main(["evaluate", "-c", CONFIG, f"--ckpt_path={ckpt}", f"--out={out}", "--max_batches=1", cache,
                     "--overwrite=true"]) == 0
    assert json.loads((out / "report.json").read_text())["n_images"] == 64


def test_evaluate_missing_checkpoint_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["evaluate", "-c", CONFIG, f"--ckpt_path={tmp_path / 'nope.ckpt'}"])
    assert "nope.ckpt" in capsys.readouterr().err


def test_evaluate_refuses_existing_report_naming_its_files(tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "report.md").write_text("an earlier report\n")
    with pytest.raises(SystemExit) as exc:
        cli_main(["evaluate", "-c", CONFIG, f"--ckpt_path={CONFIG}", f"--out={out}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "already holds a report (report.md)" in err and "--overwrite=true" in err
    assert (out / "report.md").read_text() == "an earlier report\n"


class _RunsCode:
    """A pickle payload whose __reduce__ would create a marker file (a harmless stand-in for os.system)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_evaluate_refuses_a_malicious_checkpoint_naming_it(tmp_path, capsys):
    import torch

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": _RunsCode(marker)}}, evil)
    with pytest.raises(SystemExit) as exc:
        cli_main(["evaluate", "-c", CONFIG, f"--ckpt_path={evil}", f"--out={tmp_path / 'eval'}",
                  f"--data.init_args.cache_dir={tmp_path / 'digits'}"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "evil.ckpt" in err and "not a weights-only checkpoint" in err
    assert not marker.exists() and not (tmp_path / "eval").exists() and not (tmp_path / "digits").exists()
