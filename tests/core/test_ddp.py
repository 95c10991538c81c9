"""CPU DDP (gloo) through the console script, as users run it, and the FSDP wrap policy of every shipped config.

DDP re-launches `sys.argv` for rank 1, so it cannot run inside pytest's own process (the child would be a
second pytest): the CLI runs in a subprocess with a timeout (`ddp_helpers.run_cli`), as the project research notes
recommend. The Vim and Caduceus DDP/FSDP runs are in tests/vision/test_ddp.py and tests/bio/test_ddp.py.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import yaml

from mambasuite.core import cli
from mambasuite.core.blocks import Block

from .ddp_helpers import HELPERS_DIR, run_cli, run_command
from .fsdp_worker import strategy_policies

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "core" / "selective_copying.yaml"
N_TRAIN, N_VAL, BATCH = 512, 128, 32
DATA = [f"--data.init_args.n_train={N_TRAIN}", f"--data.init_args.n_val={N_VAL}", f"--data.init_args.batch_size={BATCH}"]
FSDP = "pytorch_lightning.strategies.FSDPStrategy"


def _fsdp_configs() -> list[Path]:
    found = []
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        strategy = (yaml.safe_load(path.read_text()) or {}).get("trainer", {}).get("strategy")
        if isinstance(strategy, dict) and strategy.get("class_path") in (FSDP, "FSDPStrategy"):
            found.append(path)
    return found


def test_fsdp_configs_exist_for_vim_and_caduceus():
    assert {p.name for p in _fsdp_configs()} >= {"vim_small_fsdp.yaml", "caduceus_hg38_131k_fsdp.yaml"}


@pytest.mark.parametrize("config", _fsdp_configs(), ids=lambda p: p.name)
def test_fsdp_configs_wrap_each_mamba_block(config):
    # One FSDP unit per residual block: its weights are gathered before it runs. Smaller units would break the
    # mixers, which read in_proj.weight, conv1d.weight and dt_proj.weight directly instead of calling those modules.
    policies = strategy_policies(config)
    assert policies["auto_wrap_policy"] == {Block}
    assert policies["activation_checkpointing_policy"] <= {Block}
    # Lightning's FSDPPrecision raises at the first optimizer step for clip-by-norm (the default algorithm), and a
    # task that saves from rank 0 alone (export_dir) would call FSDP's state-dict collectives on one rank.
    config_dict = yaml.safe_load(config.read_text())
    trainer = config_dict["trainer"]
    assert trainer.get("gradient_clip_val") is None or trainer.get("gradient_clip_algorithm") == "value"
    assert config_dict["model"].get("init_args", {}).get("export_dir") is None


@pytest.mark.slow
@pytest.mark.distributed
def test_cli_ddp_two_cpu_ranks(tmp_path, monkeypatch):
    output = run_cli(["fit", "-c", str(CONFIG), "--trainer.strategy=ddp", "--trainer.devices=2",
                      "--trainer.accelerator=cpu", "--trainer.max_epochs=1", "--trainer.max_steps=-1",
                      "--trainer.val_check_interval=1.0", "--trainer.check_val_every_n_epoch=1",
                      "--trainer.enable_progress_bar=false", *DATA], tmp_path)

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


@pytest.mark.slow
@pytest.mark.distributed
def test_cli_under_torchrun(tmp_path):
    """The README's launcher path: torchrun starts both ranks (Lightning must not re-launch them), and only rank 0
    reserves a run folder. (Each rank runs the CLI through `ddp_helpers`, which only adds a clean exit.)"""
    output = run_command([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(HELPERS_DIR / "ddp_helpers.py"), "fit", "-c", str(CONFIG), "--trainer.accelerator=cpu",
                          "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.max_steps=3",
                          "--trainer.enable_progress_bar=false", "--data.init_args.n_train=256",
                          "--data.init_args.n_val=64"], tmp_path)
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output
    runs = tmp_path / "runs" / "selective_copying"
    assert [p.name for p in runs.iterdir()] == ["version_0"]
    summary = json.loads((runs / "version_0" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 3
