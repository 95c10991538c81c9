"""`mamba-suite bench bidir` / `bench cross2d` run end to end on CPU (--smoke: Triton's interpreter, tiny shapes).

The timings mean nothing here; the test checks that every implementation ran (or that the missing CUDA peer is
reported as an error, not a crash) and that the JSON has the schema `--compare` reads.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

pytest.importorskip("triton")

from mambasuite.kernels.bench_multi import main_bidir, main_cross2d  # noqa: E402

PEER = importlib.util.find_spec("mamba_ssm") is not None


@pytest.mark.parametrize("main,name,impls", [
    (main_bidir, "bidir", ("ours-fused", "ours-two-calls", "mamba_ssm-flip")),
    (main_cross2d, "cross2d", ("ours-fused", "mamba_ssm-pipe", "ours-pipe")),
])
def test_smoke_run_writes_cases_and_ratios(tmp_path, main, name, impls):
    assert main(["--device", "cpu", "--smoke", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / f"{name}.json").read_text())
    assert result["benchmark"] == name and (tmp_path / f"{name}.md").exists()
    by_impl = {c["impl"]: c for c in result["cases"]}
    assert set(by_impl) == set(impls)
    for impl, case in by_impl.items():
        if impl.startswith("mamba_ssm") and not PEER:
            assert case["status"] == "error" and "mamba" in case["error"]
            # the markdown table names the cause as well
            row = next(line for line in (tmp_path / f"{name}.md").read_text().splitlines() if f"| {impl} |" in line)
            assert "error: " in row and "mamba" in row.split("error: ", 1)[1]
        else:
            assert case["status"] == "ok" and case["fwd_ms"] > 0 and case["fwd_bwd_ms"] > 0
    ours_peers = {r["peer"].split("/")[-1] for r in result["ratios"]}
    assert impls[-1] in ours_peers or impls[1] in ours_peers
    assert all(r["ratio"] > 0 and r["metric"] in ("fwd_ms", "fwd_bwd_ms") for r in result["ratios"])


def test_cpu_needs_smoke_and_shapes_are_checked(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main_bidir(["--device", "cpu", "--out", str(tmp_path)])
    assert "only with --smoke" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main_cross2d(["--device", "cpu", "--smoke", "--shapes", "2x8x5x6", "--out", str(tmp_path)])
    assert "BxDxHxWxN" in capsys.readouterr().err


@pytest.mark.parametrize("main,name", [(main_bidir, "bidir"), (main_cross2d, "cross2d")])
def test_check_compares_the_fused_op_with_the_reference(tmp_path, main, name):
    """--check records the fused op's errors against the fp32 reference (output and every input gradient)."""
    assert main(["--device", "cpu", "--smoke", "--check", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / f"{name}.json").read_text())
    (check,) = result["checks"]
    assert check["pass"] and check["max_rel_err"][check["worst"]] <= check["tolerance"] == 3e-2
    expected = {"out", "du_fwd", "du_rev", "dz", "dB_rev"} if name == "bidir" else {"out", "dx", "ddelta", "dA", "dC"}
    assert expected <= set(check["max_rel_err"])
    assert "pass (worst" in (tmp_path / f"{name}.md").read_text()


def test_check_fails_a_wrong_fused_output(tmp_path, monkeypatch):
    """A fused op 5% off the reference fails the check, and the command exits non-zero."""
    from mambasuite.kernels import bench_multi

    real = bench_multi.bidirectional_scan

    def off_by_5_percent(*args, backend="auto", **kwargs):
        out = real(*args, backend=backend, **kwargs)
        return out * 1.05 if backend == "triton" else out

    monkeypatch.setattr(bench_multi, "bidirectional_scan", off_by_5_percent)
    assert main_bidir(["--device", "cpu", "--smoke", "--check", "--out", str(tmp_path)]) == 1
    (check,) = json.loads((tmp_path / "bidir.json").read_text())["checks"]
    assert not check["pass"] and check["max_rel_err"]["out"] > 3e-2
    assert "FAIL" in (tmp_path / "bidir.md").read_text()
