"""`mamba-suite bench seg3d`: the CPU smoke run writes well-formed JSON and markdown (no timing assertions)."""

import json

import pytest

from mambasuite.core.bench import main as bench_main
from mambasuite.vision.medseg.bench import NETWORKS, build_network


def test_smoke_run_writes_the_schema(tmp_path):
    assert bench_main(["seg3d", "--device", "cpu", "--smoke", "--networks", "umamba_bot_3d,segresnet",
                       "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "seg3d.json").read_text())
    assert result["benchmark"] == "seg3d" and {"date", "device", "versions", "command"} <= set(result)
    assert result["versions"]["torch"] and result["versions"]["monai"]
    names = [c["name"] for c in result["cases"]]
    assert names == ["umamba_bot_3d@64^3xb1", "segresnet@64^3xb1"] and len(set(names)) == len(names)
    for case in result["cases"]:
        assert case["status"] == "ok" and case["shape"]["patch"] == [64, 64, 64]
        assert case["step_ms"] > 0 and case["fwd_bwd_ms"] > 0 and case["fwd_ms"] > 0 and case["params_m"] > 0
        assert case["peak_mem_mb"] is None  # CUDA-only measurement
    assert [c["impl"] for c in result["cases"]] == ["ours", "segresnet"]
    (ratio,) = result["ratios"]
    assert ratio["metric"] == "step_ms" and ratio["ours"] == names[0] and ratio["peer"] == names[1]
    assert ratio["ratio"] == pytest.approx(result["cases"][1]["step_ms"] / result["cases"][0]["step_ms"])
    assert "| umamba_bot_3d | ours | 64^3 |" in (tmp_path / "seg3d.md").read_text()


def test_full_size_peers_have_comparable_parameter_counts():
    counts = {name: sum(p.numel() for p in build_network(name).parameters()) / 1e6 for name in NETWORKS}
    assert 40 < min(counts.values()) and max(counts.values()) < 65, counts


@pytest.mark.parametrize("argv, message", [(["--device", "cuda:0"], "CUDA is not available"),
                                           (["--networks", "unet"], "unknown"),
                                           (["--sizes", "100"], "multiples of 32")])
def test_bad_arguments_exit_with_a_message(argv, message, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        bench_main(["seg3d", "--device", "cpu", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
