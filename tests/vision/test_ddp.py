"""Multi-process training of Vim: DDP through `mamba-suite fit` on 2 CPU ranks (gloo), and the FSDP config's
per-block sharding (FSDP2 on CPU; Lightning's FSDPStrategy itself needs GPUs)."""

from __future__ import annotations

import json
import pydoc
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mambasuite.core import cli
from mambasuite.core.blocks import Block

from ..core.ddp_helpers import fit_ddp_and_single, max_abs_diff, run_fsdp_worker
from ..core.fsdp_worker import strategy_policies
from .conftest import write_image_folder

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "vision"
FSDP_CONFIG = CONFIGS / "vim_small_fsdp.yaml"
TINY_VIM = {"img_size": 16, "patch_size": 4, "stride": 4, "embed_dim": 16, "depth": 2, "d_state": 4}
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.mark.slow
@pytest.mark.distributed
def test_vim_ddp_matches_one_process_with_the_global_batch(tmp_path):
    # No warmup, so that both optimizer steps move the weights by ~lr (3e-3) and a missing all-reduce shows.
    args = [f"--model.init_args.model_kwargs={json.dumps(TINY_VIM)}", "--model.init_args.warmup_epochs=0",
            f"--data.init_args.cache_dir={tmp_path / 'digits'}", "--trainer.max_steps=2",
            "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1", *QUIET]
    output, ranks, single = fit_ddp_and_single(CONFIGS / "vim_digits.yaml", args, per_rank_batch=8, tmp_path=tmp_path)

    assert "distributed_backend=gloo" in output and "GLOBAL_RANK: 1, MEMBER: 2/2" in output
    summary = json.loads((tmp_path / "ddp/runs/vim_digits/version_0/summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 2
    assert [r["world_size"] for r in ranks] == [2, 2] and single["world_size"] == 1
    assert [r["global_step"] for r in ranks] == [2, 2] == [single["global_step"]] * 2
    # Each rank saw different images, so equal weights mean the gradients were all-reduced ...
    assert max_abs_diff(ranks[0]["final"], ranks[1]["final"]) == 0.0
    # ... and the samplers split the one-process batch: same weights (up to fp32 summation order) as 16 images at once.
    assert max_abs_diff(ranks[0]["initial"], single["initial"]) == 0.0
    assert max_abs_diff(ranks[0]["final"], single["final"]) < 1e-5
    assert max_abs_diff(single["initial"], single["final"]) > 1e-3  # training moved them far beyond that tolerance


@pytest.mark.slow
@pytest.mark.distributed
def test_vim_fsdp_shards_per_block_and_matches_unsharded(tmp_path):
    """The config's wrap policy, applied with FSDP2 on 2 gloo ranks to a tiny Vim whose scan and add + RMSNorm run
    the Triton custom ops (CPU interpreter) with activation checkpointing off (the config leaves it off)."""
    overrides = {"model_name": "test_vim", "num_classes": 10, "model_kwargs": {**TINY_VIM, "backend": "triton"}}
    gen = torch.Generator().manual_seed(0)
    batch = (torch.randn(8, 3, 16, 16, generator=gen), torch.randint(0, 10, (8,), generator=gen))
    result = run_fsdp_worker(FSDP_CONFIG, overrides, batch, tmp_path)

    assert result["world_size"] == 2 and result["wrap_classes"] == ["mambasuite.core.blocks.Block"]
    assert result["units"] == TINY_VIM["depth"] and result["checkpointed"] == 0
    assert result["sharded_params"] > 0  # the weights really were split between the ranks
    assert result["missing_grads"] == []  # every weight reached the custom ops as an autograd input
    assert result["loss"] == pytest.approx(result["ref_loss"], abs=1e-5)
    assert result["grad_err"] <= 1e-4 * result["grad_scale"] + 1e-6
    assert result["param_err"] < 1e-6 < 1e-2 < result["param_change"]  # SGD, lr 0.1


def test_vim_small_fsdp_config_wraps_each_block(tmp_path, monkeypatch, capsys):
    assert strategy_policies(FSDP_CONFIG) == {"auto_wrap_policy": {Block}, "activation_checkpointing_policy": set()}
    # The config the CLI saves next to a run (--print_config prints the same) keeps the policy importable.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mamba-suite"])
    with pytest.raises(SystemExit) as stop:
        cli.main(["fit", "-c", str(FSDP_CONFIG), "--print_config"])
    assert stop.value.code in (0, None)
    strategy = yaml.safe_load(capsys.readouterr().out)["trainer"]["strategy"]
    assert strategy["class_path"] == "pytorch_lightning.strategies.FSDPStrategy"
    assert [pydoc.locate(name) for name in strategy["init_args"]["auto_wrap_policy"]] == [Block]
    assert strategy["init_args"]["mixed_precision"]["param_dtype"] == "torch.float32"


def test_vim_small_fsdp_recipe_runs_on_one_cpu(tmp_path, monkeypatch):
    """Everything but the strategy, as shipped and shrunk (FSDP needs GPUs): Vim-S's recipe on a fixture folder."""
    monkeypatch.setattr(sys, "argv", ["mamba-suite"])
    write_image_folder(tmp_path / "imagenet", classes=("n01", "n02", "n03"))
    kwargs = {**TINY_VIM, "drop_path_rate": 0.05}
    assert cli.main(["fit", "-c", str(FSDP_CONFIG), "--trainer.fast_dev_run=2", *QUIET,
                     f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.accelerator=cpu",
                     "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.precision=32-true",
                     f"--data.init_args.data_dir={tmp_path / 'imagenet'}", "--model.init_args.model_name=test_vim",
                     "--model.init_args.num_classes=3", f"--model.init_args.model_kwargs={json.dumps(kwargs)}",
                     "--data.init_args.img_size=16", "--data.init_args.batch_size=4",
                     "--data.init_args.num_workers=0"]) == 0
