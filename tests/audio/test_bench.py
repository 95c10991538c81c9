"""`mamba-suite bench audio` runs on CPU at tiny sizes and writes the suite's benchmark JSON (no timing asserts)."""

import json

import pytest
import torch

from mambasuite.audio.bench import main as bench_main
from mambasuite.core.bench import main as bench_dispatch


def test_cpu_smoke_writes_wellformed_json(tmp_path, capsys):
    assert bench_dispatch(["audio", "--device", "cpu", "--smoke", "--out", str(tmp_path),
                           "--variants", "internal,external"]) == 0
    result = json.loads((tmp_path / "audio.json").read_text())
    assert result["benchmark"] == "audio" and {"torch", "torchaudio"} <= set(result["versions"])
    assert {"date", "device", "command", "cases", "ratios"} <= set(result)
    names = [c["name"] for c in result["cases"]]
    assert len(names) == len(set(names)) == 6  # 2 lengths x (2 ConMamba variants + Conformer)
    for case in result["cases"]:
        assert case["status"] == "ok" and case["impl"] in ("ours", "torchaudio.Conformer")
        assert case["fwd_ms"] > 0 and case["fwd_bwd_ms"] > 0 and case["peak_mem_mb"] is None  # no CUDA memory on CPU
        assert case["shape"]["encoder_frames"] == -(-case["shape"]["frames"] // 4)
    by_name = {c["name"]: c for c in result["cases"]}
    for r in result["ratios"]:
        assert r["ours"] in by_name and r["peer"] in by_name
        assert r["ratio"] == pytest.approx(by_name[r["peer"]][r["metric"]] / by_name[r["ours"]][r["metric"]])
    assert {r["metric"] for r in result["ratios"]} == {"fwd_ms", "fwd_bwd_ms"}
    table = (tmp_path / "audio.md").read_text()
    assert "| conformer |" in table and capsys.readouterr().out.rstrip().endswith(table.rstrip().splitlines()[-1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        bench_main(["--device", "cuda"])
    assert "no CUDA device is available" in capsys.readouterr().err


def test_bad_arguments(capsys):
    for args, message in ((["--seconds", "ten"], "--seconds"), (["--variants", "both"], "--variants"),
                          (["--d_model", "30", "--heads", "4"], "divisible")):
        with pytest.raises(SystemExit):
            bench_main(["--device", "cpu", *args])
        assert message in capsys.readouterr().err
