"""`mamba-suite bench bio` on CPU at smoke sizes: runs, writes the suite's benchmark JSON schema and markdown."""

import json

import pytest
import torch

from mambasuite.bio.bench import main
from mambasuite.core import cli


def test_smoke_writes_schema(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["mamba-suite"])
    assert cli.main(["bench", "bio", "--device", "cpu", "--smoke", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bio.json").read_text())
    assert result["benchmark"] == "bio" and {"date", "device", "versions", "command", "cases", "ratios"} <= set(result)
    names = [c["name"] for c in result["cases"]]
    assert len(names) == len(set(names)) == 5  # batches 1 and 2, then lengths 64, 128, 256 at batch 1
    for case in result["cases"]:
        assert case["status"] == "ok" and case["impl"] == "ours" and case["step_ms"] > 0
        assert case["tokens_per_s"] == pytest.approx(case["shape"]["batch"] * case["shape"]["length"]
                                                     / case["step_ms"] * 1e3)
    assert result["max_trained_length"] == 256
    assert (tmp_path / "bio.md").read_text().startswith(result["device"])
    assert "Longest sequence that trains at batch 1: 256 tokens" in capsys.readouterr().out


def test_time_budget_skips_and_bad_arguments(tmp_path):
    assert main(["--device", "cpu", "--smoke", "--time_budget", "0", "--out", str(tmp_path)]) == 0
    cases = json.loads((tmp_path / "bio.json").read_text())["cases"]
    assert cases[0]["error"] == "skipped: time budget" and cases[0]["step_ms"] is None
    with pytest.raises(SystemExit):
        main(["--device", "cpu", "--out", str(tmp_path)])  # CPU needs --smoke
    with pytest.raises(SystemExit):
        main(["--device", "cpu", "--smoke", "--backends", "cuda_magic", "--out", str(tmp_path)])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path)])  # default device cuda: a clear error, not a crash
