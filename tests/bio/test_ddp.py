"""Multi-process training of Caduceus: DDP through `mamba-suite fit` on 2 CPU ranks (gloo), and the FSDP config's
per-block sharding (FSDP2 on CPU; Lightning's FSDPStrategy itself needs GPUs)."""

from __future__ import annotations

import json
import pydoc
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mambasuite.bio.models import Caduceus
from mambasuite.bio.tokenizer import NUCLEOTIDE_IDS
from mambasuite.core import cli
from mambasuite.core.blocks import Block

from ..core.ddp_helpers import fit_ddp_and_single, max_abs_diff, run_fsdp_worker
from ..core.fsdp_worker import strategy_policies

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "bio"
FSDP_CONFIG = CONFIGS / "caduceus_hg38_131k_fsdp.yaml"
TINY = ["--model.init_args.d_model=8", "--model.init_args.n_layer=2", "--model.init_args.d_state=4"]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.mark.slow
@pytest.mark.distributed
def test_caduceus_ddp_matches_one_process_with_the_global_batch(tmp_path):
    # No warmup, so that both optimizer steps move the weights by ~lr (8e-3) and a missing all-reduce shows.
    args = [*TINY, "--model.init_args.warmup_steps=0", f"--data.init_args.cache_dir={tmp_path / 'cache'}",
            '--data.init_args.genome_kwargs={"n_contigs": 3, "contig_length": 3000}', "--trainer.max_steps=2",
            "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1", *QUIET]
    output, ranks, single = fit_ddp_and_single(CONFIGS / "dna_synthetic_cls.yaml", args, per_rank_batch=8,
                                               tmp_path=tmp_path)

    assert "distributed_backend=gloo" in output and "GLOBAL_RANK: 1, MEMBER: 2/2" in output
    summary = json.loads((tmp_path / "ddp/runs/dna_synthetic_cls/version_0/summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 2
    assert [r["world_size"] for r in ranks] == [2, 2] and single["world_size"] == 1
    assert [r["global_step"] for r in ranks] == [2, 2] == [single["global_step"]] * 2
    # Each rank saw different windows, so equal weights mean the gradients were all-reduced ...
    assert max_abs_diff(ranks[0]["final"], ranks[1]["final"]) == 0.0
    # ... and the samplers split the one-process batch: same weights (up to fp32 summation order) as 16 at once.
    assert max_abs_diff(ranks[0]["initial"], single["initial"]) == 0.0
    assert max_abs_diff(ranks[0]["final"], single["final"]) < 1e-5
    assert max_abs_diff(single["initial"], single["final"]) > 1e-3  # training moved them far beyond that tolerance


@pytest.mark.slow
@pytest.mark.distributed
def test_caduceus_fsdp_shards_per_block_and_matches_unsharded(tmp_path):
    """The config's wrap and activation-checkpointing policies, applied with FSDP2 on 2 gloo ranks to a tiny
    Caduceus-PS masked LM (tied, RC-equivariant head) whose scans run the Triton custom op (CPU interpreter)."""
    overrides = {"d_model": 8, "n_layer": 2, "d_state": 4, "backend": "triton", "export_dir": None}
    gen = torch.Generator().manual_seed(0)
    bases = torch.tensor(NUCLEOTIDE_IDS)
    ids = bases[torch.randint(0, 4, (4, 16), generator=gen)]
    targets = bases[torch.randint(0, 4, (4, 16), generator=gen)]
    result = run_fsdp_worker(FSDP_CONFIG, overrides, (ids, targets), tmp_path)

    assert result["world_size"] == 2 and result["wrap_classes"] == ["mambasuite.core.blocks.Block"]
    assert result["units"] == 2 and result["checkpointed"] == 2  # one unit and one recompute per block
    assert result["sharded_params"] > 0  # the weights really were split between the ranks
    assert result["missing_grads"] == []  # every weight reached the custom ops as an autograd input
    assert result["loss"] == pytest.approx(result["ref_loss"], abs=1e-5)
    assert result["grad_err"] <= 1e-4 * result["grad_scale"] + 1e-6
    assert result["param_err"] < 1e-6 < 1e-2 < result["param_change"]  # SGD, lr 0.1


def test_caduceus_fsdp_config_wraps_each_block(tmp_path, monkeypatch, capsys):
    assert strategy_policies(FSDP_CONFIG) == {"auto_wrap_policy": {Block}, "activation_checkpointing_policy": {Block}}
    # The config the CLI saves next to a run (--print_config prints the same) keeps the policies importable.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mamba-suite"])
    with pytest.raises(SystemExit) as stop:
        cli.main(["fit", "-c", str(FSDP_CONFIG), "--print_config"])
    assert stop.value.code in (0, None)
    init_args = yaml.safe_load(capsys.readouterr().out)["trainer"]["strategy"]["init_args"]
    for key in ("auto_wrap_policy", "activation_checkpointing_policy"):
        assert [pydoc.locate(name) for name in init_args[key]] == [Block]


def test_caduceus_fsdp_recipe_runs_on_one_cpu(hg38_like, tmp_path, monkeypatch):
    """Everything but the strategy, as shipped and shrunk (FSDP needs GPUs), on fixture hg38-like files."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mamba-suite"])
    fasta, bed = hg38_like
    assert cli.main(["fit", "-c", str(FSDP_CONFIG), *QUIET, "--trainer.accelerator=cpu", "--trainer.devices=1",
                     "--trainer.strategy=auto", "--trainer.precision=32-true", "--trainer.fast_dev_run=2",
                     f"--data.init_args.fasta={fasta}", f"--data.init_args.bed={bed}", "--data.init_args.seq_len=64",
                     "--data.init_args.bed_extend=256", "--data.init_args.num_workers=0", *TINY,
                     f"--model.init_args.export_dir={tmp_path / 'bb'}"]) == 0
    backbone = Caduceus.from_pretrained(tmp_path / "bb")
    assert backbone.rcps and not backbone.config["grad_checkpointing"]  # the strategy checkpoints, not the model
