"""`mamba-suite bench conv` on CPU at tiny sizes: it runs and writes well-formed JSON (not a timing test)."""

import json
import math

import pytest

from mambasuite.kernels.bench_conv import main, parse_shapes

pytest.importorskip("triton")


def test_smoke_run_writes_bench_schema(tmp_path, capsys):
    assert main(["--device", "cpu", "--smoke", "--shapes", "2x8x9", "--check", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    data = json.loads((tmp_path / "conv.json").read_text())
    assert data["benchmark"] == "conv" and data["command"].startswith("mamba-suite bench conv")
    assert set(data["versions"]) >= {"torch", "triton", "causal_conv1d"}
    cases = {c["name"]: c for c in data["cases"]}
    assert len(cases) == len(data["cases"]) == 6  # 2 layouts x 3 impls, unique names
    for layout in ("channel_first", "channel_last"):
        for impl in ("ours", "torch"):
            case = cases[f"2x8x9/{layout}/{impl}"]
            assert case["status"] == "ok" and case["shape"] == {"batch": 2, "dim": 8, "L": 9, "W": 4}
            for field in ("fwd_ms", "fwd_bwd_ms", "fwd_bytes_per_s", "fwd_bwd_bytes_per_s"):
                assert isinstance(case[field], float) and math.isfinite(case[field]) and case[field] > 0
            assert case["peak_mem_mb"] is None  # not tracked on CPU
            assert max(case["max_rel_err"].values()) < 2e-2  # bf16 output rounding
        peer = cases[f"2x8x9/{layout}/causal_conv1d"]  # CUDA only: an error entry, not a crash
        assert peer["status"] == "error" and "CUDA" in peer["error"] and peer["fwd_ms"] is None
    ratios = {r["name"]: r for r in data["ratios"]}
    assert set(ratios) == {f"2x8x9/{lay}/torch:{m}" for lay in ("channel_first", "channel_last")
                           for m in ("fwd_ms", "fwd_bwd_ms")}
    for r in ratios.values():
        ours, peer = cases[r["ours"]], cases[r["peer"]]
        assert r["ratio"] == pytest.approx(peer[r["metric"]] / ours[r["metric"]])
    table = (tmp_path / "conv.md").read_text()
    assert table.startswith(data["device"]) and "| (2, 8, 9) | channel_last | torch |" in table
    assert printed.rstrip().endswith(table.rstrip())  # the table is printed last


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(ValueError, match="BATCHxDIMxL"):
        parse_shapes("2x8")
    for argv, message in ((["--impls", "ours,cudnn"], "--impls: expected a comma-separated subset"),
                          (["--layouts", "nhwc"], "--layouts: expected a comma-separated subset"),
                          (["--device", "cpu", "--smoke", "--repeats", "0"], "--repeats must be >= 1"),
                          (["--device", "cpu"], "pass --smoke")):
        with pytest.raises(SystemExit):
            main(argv)
        assert message in capsys.readouterr().err
