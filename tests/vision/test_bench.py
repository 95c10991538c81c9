"""`mamba-suite bench vision` on CPU at smoke sizes: runs all four models, writes the benchmark JSON schema."""

import json

import pytest
import torch

from mambasuite.core import cli
from mambasuite.vision.bench import _sizes, main


def test_smoke_writes_schema_and_ratios(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["mamba-suite"])
    assert cli.main(["bench", "vision", "--device", "cpu", "--smoke", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "vision.json").read_text())
    assert result["benchmark"] == "vision" and {"date", "device", "versions", "command"} <= set(result)
    by_model = {c["model"]: c for c in result["cases"]}
    assert set(by_model) == {"vim_ti", "vmamba_t", "deit_ti", "mambaout_t"}
    assert [by_model[m]["impl"] for m in ("vim_ti", "vmamba_t", "deit_ti", "mambaout_t")] == [
        "ours", "ours", "deit", "mambaout"]
    for c in result["cases"]:
        assert c["status"] == "ok" and c["fwd_ms"] > 0 and c["step_ms"] > 0
        assert c["infer_img_s"] == pytest.approx(2 / c["fwd_ms"] * 1e3)
    ratio = next(r for r in result["ratios"] if r["ours"] == by_model["vim_ti"]["name"]
                 and r["peer"] == by_model["deit_ti"]["name"] and r["metric"] == "fwd_ms")
    assert ratio["ratio"] == pytest.approx(by_model["deit_ti"]["fwd_ms"] / by_model["vim_ti"]["fwd_ms"])
    assert "| ratio" in (tmp_path / "vision.md").read_text()


def test_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="RES:BATCH"):
        _sizes("224:0", "--sizes")
    with pytest.raises(SystemExit):
        main(["--device", "cpu", "--out", str(tmp_path)])  # CPU needs --smoke
    with pytest.raises(SystemExit):
        main(["--device", "cpu", "--smoke", "--models", "resnet", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["--device", "cpu", "--smoke", "--backends", "cudnn", "--out", str(tmp_path)])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path)])
