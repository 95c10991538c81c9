"""`mamba-suite bench block` runs end to end on CPU (--smoke: Triton's interpreter, a tiny Vim block)."""

from __future__ import annotations

import importlib.util
import json

import pytest

pytest.importorskip("triton")

from mambasuite.core.bench_block import main  # noqa: E402


def test_smoke_run_times_our_block_and_reports_the_missing_peer(tmp_path):
    assert main(["--device", "cpu", "--smoke", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "block.json").read_text())
    ours, peer = result["cases"]
    assert ours["impl"] == "ours" and ours["status"] == "ok" and ours["fwd_ms"] > 0 and ours["fwd_bwd_ms"] > 0
    if importlib.util.find_spec("mamba_ssm") is None:
        assert peer["status"] == "error" and "mamba" in peer["error"] and result["ratios"] == []
    assert "Vim v2 block" in (tmp_path / "block.md").read_text()


def test_cpu_without_smoke_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--device", "cpu", "--out", str(tmp_path)])
    assert "only with --smoke" in capsys.readouterr().err
