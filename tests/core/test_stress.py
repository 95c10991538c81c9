"""The 1M-token stress script, as a CPU smoke test at a tiny size (the real run is on the H200)."""

from __future__ import annotations

import json

import pytest

from mambasuite.core.stress import main, run_stress


def test_stress_script_writes_well_formed_json(tmp_path):
    code = main(["--device", "cpu", "--tokens", "96", "--d_model", "16", "--n_layer", "2", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "stress.json").read_text())
    assert code == 0 and report["passed"] and report["benchmark"] == "stress"
    assert all(report["finite"].values())
    assert report["config"]["tokens"] == 96 and report["config"]["mixer"] == "bimamba"
    # output, input gradient and every parameter gradient are compared
    assert "out" in report["errors"] and "grad:input" in report["errors"]
    assert sum(k.startswith("grad:layers.") for k in report["errors"]) >= 10
    assert all(0 <= e["norm_rel"] < 0.05 for e in report["errors"].values())
    assert [c["status"] for c in report["cases"]] == ["ok", "ok"]
    assert (tmp_path / "stress.md").read_text().startswith("# Stress")


def test_stress_reports_failure_on_a_tight_tolerance(tmp_path):
    report = run_stress(64, 8, 1, device="cpu", tolerance=1e-9)
    assert not report["passed"] and report["worst"]["norm_rel"] > 1e-9


def test_stress_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="tokens"):
        run_stress(0, 8, 1, device="cpu")
