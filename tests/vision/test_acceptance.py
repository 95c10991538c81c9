"""Acceptance: the digits configs train to their accuracy targets within 5 minutes on CPU (slow)."""

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _best_val_acc(run_dir: Path) -> float:
    (metrics,) = run_dir.glob("version_*/metrics.csv")
    with metrics.open() as f:
        return max(float(row["val/acc"]) for row in csv.DictReader(f) if row.get("val/acc"))


@pytest.mark.slow
@pytest.mark.parametrize("config, target", [("vim_digits.yaml", 0.97), ("vmamba_digits.yaml", 0.95)])
def test_digits_acceptance(config, target, tmp_path):
    # One intra-op thread: these models are too small to gain from two, and on a shared runner
    # OpenMP's second thread can slow small ops down by orders of magnitude.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, "-m", "mambasuite.core.cli", "fit", "-c", str(ROOT / "configs" / "vision" / config),
           f"--trainer.default_root_dir={tmp_path / 'run'}", f"--data.init_args.cache_dir={tmp_path / 'digits'}",
           "--trainer.enable_progress_bar=false"]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=330)
    wall = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    acc = _best_val_acc(tmp_path / "run")
    print(f"{config}: best val/acc {acc:.4f} in {wall:.0f} s")
    assert acc >= target, f"{config}: best val/acc {acc:.4f} < {target}"
    assert wall < 300, f"{config}: took {wall:.0f} s"
