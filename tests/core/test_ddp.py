"""CPU DDP (gloo) through the console script, as users run it.

DDP re-launches `sys.argv` for rank 1, so it cannot run inside pytest's own process (the child would be a
second pytest): the CLI runs in a subprocess with a timeout, as the project research notes recommend.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mambasuite.core import cli

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "core" / "selective_copying.yaml"
N_TRAIN, N_VAL, BATCH = 512, 128, 32
DATA = [f"--data.init_args.n_train={N_TRAIN}", f"--data.init_args.n_val={N_VAL}", f"--data.init_args.batch_size={BATCH}"]


@pytest.mark.slow
@pytest.mark.distributed
def test_cli_ddp_two_cpu_ranks(tmp_path, monkeypatch):
    script = Path(sys.executable).parent / "mamba-suite"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "mambasuite.core.cli"]
    args = ["fit", "-c", str(CONFIG), "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
            "--trainer.max_epochs=1", "--trainer.max_steps=-1", "--trainer.val_check_interval=1.0",
            "--trainer.check_val_every_n_epoch=1", "--trainer.enable_progress_bar=false", *DATA]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]

    # Both ranks joined the gloo group ...
    assert "distributed_backend=gloo" in output
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output
    run_dir = tmp_path / "runs" / "selective_copying" / "version_0"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2
    # ... the sampler gave each rank half the data (one epoch = N_TRAIN / (2 * BATCH) optimizer steps) ...
    assert summary["global_step"] == N_TRAIN // (2 * BATCH)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()

    # ... and val/acc was reduced over both ranks' shards: re-validating the same weights in one process, on the
    # whole split, gives the same number (rank 0's half alone would almost surely differ).
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mamba-suite"])
    cli.main(["validate", "-c", str(CONFIG), *DATA, "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"),
              "--trainer.enable_progress_bar=false"])
    (metrics,) = (tmp_path / "runs" / "selective_copying").glob("version_1/metrics.csv")
    (row,) = [r for r in csv.DictReader(metrics.open()) if r.get("val/acc")]
    assert float(row["val/acc"]) == pytest.approx(summary["metrics"]["val/acc"], abs=1e-6)
