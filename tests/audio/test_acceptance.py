"""Acceptance (slow): asr_espeak.yaml from scratch reaches greedy CER <= 10% on held-out voices on CPU within
10 minutes (corpus synthesis included), beam search is no worse than greedy, and evaluate writes its report."""

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import needs_espeak

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "audio" / "asr_espeak.yaml"


def _best_val_cer(run_dir: Path) -> float:
    (metrics,) = run_dir.glob("version_*/metrics.csv")
    with metrics.open() as f:
        return min(float(row["val/cer"]) for row in csv.DictReader(f) if row.get("val/cer"))


def _evaluate(env, tmp_path, ckpt: Path, decoder: str) -> dict:
    out = tmp_path / f"eval_{decoder}"
    cmd = [sys.executable, "-m", "mambasuite.core.cli", "evaluate", "-c", str(CONFIG), "--ckpt_path", str(ckpt),
           f"--data.init_args.cache_dir={tmp_path / 'cache'}", "--decoder", decoder, "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "report.md").is_file() and (out / "hypotheses.jsonl").is_file()
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
@needs_espeak
def test_asr_espeak_acceptance(tmp_path):
    # One intra-op thread: the model is small, and on a shared runner a second OpenMP thread slows small ops a lot.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, "-m", "mambasuite.core.cli", "fit", "-c", str(CONFIG),
           f"--trainer.default_root_dir={tmp_path / 'run'}", f"--data.init_args.cache_dir={tmp_path / 'cache'}",
           "--trainer.enable_progress_bar=false"]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=660)
    wall = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    cer = _best_val_cer(tmp_path / "run")
    print(f"asr_espeak: best val/cer {cer:.4f} after {wall:.0f} s (corpus synthesis included)")
    assert cer <= 0.10, f"greedy CER on held-out voices {cer:.4f} > 0.10"
    assert wall < 600, f"fit took {wall:.0f} s"

    (best,) = [p for p in (tmp_path / "run").glob("version_*/checkpoints/*.ckpt") if p.name != "last.ckpt"]
    greedy = _evaluate(env, tmp_path, best, "greedy")
    beam = _evaluate(env, tmp_path, best, "beam")
    print(f"evaluate: greedy CER {greedy['cer']:.4f} WER {greedy['wer']:.4f}; "
          f"beam CER {beam['cer']:.4f} WER {beam['wer']:.4f}")
    assert greedy["cer"] == pytest.approx(cer, abs=1e-4)  # the report re-computes the logged metric
    assert greedy["n_utterances"] == beam["n_utterances"] == 200
    assert beam["cer"] <= greedy["cer"] and beam["wer"] <= greedy["wer"]
