"""Every shipped bio config parses and runs as shipped, shrunk: fit configs `fast_dev_run` (the recipes on fixture
files), predict configs write their outputs, and `evaluate` writes its reports."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mambasuite.bio.models import Caduceus
from mambasuite.core import cli

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "bio"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
SMALL_GENOME = '--data.init_args.genome_kwargs={"n_contigs": 3, "contig_length": 3000}'
CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mamba-suite"])


def _run(command: str, config: str, *extra: str) -> None:
    assert cli.main([command, "-c", str(CONFIGS / config), *QUIET, *extra]) == 0


def test_all_configs_are_covered():
    assert {p.name for p in CONFIGS.glob("*.yaml")} == {
        "dna_synthetic_mlm.yaml", "dna_synthetic_cls.yaml", "dna_synthetic_clm.yaml", "caduceus_hg38_131k.yaml",
        "genomic_benchmarks.yaml", "dna_embeddings.yaml", "variant_effect.yaml",
        "caduceus_hg38_131k_fsdp.yaml"}  # run by tests/bio/test_ddp.py


@pytest.mark.parametrize("config", ["dna_synthetic_mlm.yaml", "dna_synthetic_cls.yaml", "dna_synthetic_clm.yaml"])
def test_synthetic_fit_configs(config, tmp_path):
    extra = [f"--data.init_args.cache_dir={tmp_path / 'cache'}", SMALL_GENOME, "--trainer.fast_dev_run=2"]
    if config != "dna_synthetic_cls.yaml":
        extra.append(f"--model.init_args.export_dir={tmp_path / 'bb'}")
    _run("fit", config, *extra)
    assert len(list((tmp_path / "cache").glob("genome_*/genome.fa"))) == 1
    if config != "dna_synthetic_cls.yaml":
        bb = Caduceus.from_pretrained(tmp_path / "bb")
        assert bb.bidirectional is (config == "dna_synthetic_mlm.yaml")


def test_hg38_recipe_on_fixture_files(hg38_like, tmp_path):
    fasta, bed = hg38_like
    _run("fit", "caduceus_hg38_131k.yaml", *CPU, "--trainer.strategy=auto", "--trainer.fast_dev_run=2",
         f"--data.init_args.fasta={fasta}", f"--data.init_args.bed={bed}", "--data.init_args.seq_len=64",
         "--data.init_args.bed_extend=256", "--data.init_args.num_workers=0", "--model.init_args.d_model=8",
         "--model.init_args.n_layer=2", f"--model.init_args.export_dir={tmp_path / 'bb'}")
    bb = Caduceus.from_pretrained(tmp_path / "bb")
    assert bb.rcps and bb.config["grad_checkpointing"]


def test_genomic_benchmarks_recipe_and_evaluate(gb_folder, tmp_path):
    args = [*CPU, f"--data.init_args.gb_dir={gb_folder}", "--data.init_args.seq_len=30",
            "--data.init_args.batch_size=4", "--data.init_args.num_workers=0", "--model.init_args.d_model=8",
            "--model.init_args.n_layer=1", "--trainer.default_root_dir=run"]
    _run("fit", "genomic_benchmarks.yaml", *args, "--trainer.max_epochs=1", "--trainer.logger=false")
    (ckpt,) = Path("run").glob("**/last.ckpt")
    argv = ["evaluate", "-c", str(CONFIGS / "genomic_benchmarks.yaml"), f"--ckpt_path={ckpt}", "--out=eval",
            "--device=cpu", *[a for a in args if a.startswith(("--data", "--model"))]]
    assert cli.main(argv) == 0
    report = json.loads(Path("eval/report.json").read_text())
    assert report["n_sequences"] == 12 and report["classes"] == ["negative", "positive"]
    assert report["rc_consistency"] == 1.0  # conjoin: true makes the Ph classifier RC-invariant
    assert sum(map(sum, report["confusion"])) == 12 and Path("eval/confusion_matrix.png").is_file()


def _tiny_backbone(path: Path, **kwargs) -> Path:
    return Caduceus(d_model=8, n_layer=1, **kwargs).save_pretrained(path)


def test_embeddings_config(tmp_path):
    bb = _tiny_backbone(tmp_path / "bb")
    _run("predict", "dna_embeddings.yaml", "--trainer.accelerator=cpu", f"--model.init_args.pretrained={bb}",
         f"--data.init_args.cache_dir={tmp_path / 'cache'}", SMALL_GENOME)
    emb = np.load("runs/dna_embeddings/embeddings.npy")
    with open("runs/dna_embeddings/index.csv") as f:
        index = list(csv.DictReader(f))
    assert emb.shape == (len(index), 8) and len(index) > 5 and np.isfinite(emb).all()
    assert index[0]["id"].startswith("chr3:") and index[0]["length"] == "128"


def test_variant_effect_config(tmp_path):
    bb = _tiny_backbone(tmp_path / "bb")
    _run("predict", "variant_effect.yaml", "--trainer.accelerator=cpu", f"--model.init_args.pretrained={bb}",
         f"--data.init_args.cache_dir={tmp_path / 'cache'}", SMALL_GENOME, "--data.init_args.n_variants=20")
    lines = Path("runs/variant_effect/variant_scores.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["chrom", "pos", "ref", "alt", "label", "llr", "ref_ll", "alt_ll"]
    assert len(lines) == 21
    summary = json.loads(Path("runs/variant_effect/variant_summary.json").read_text())
    assert summary["n"] == 20 and 0 <= summary["auroc"] <= 1


def test_lm_evaluate_report(tmp_path):
    common = [f"--data.init_args.cache_dir={tmp_path / 'cache'}", SMALL_GENOME, "--model.init_args.d_model=8",
              "--model.init_args.n_layer=1", f"--model.init_args.export_dir={tmp_path / 'bb'}"]
    _run("fit", "dna_synthetic_clm.yaml", *common, "--trainer.max_steps=2", "--trainer.default_root_dir=run",
         "--trainer.logger=false", "--trainer.val_check_interval=1", "--trainer.limit_val_batches=1")
    (ckpt,) = Path("run").glob("**/last.ckpt")
    assert cli.main(["evaluate", "-c", str(CONFIGS / "dna_synthetic_clm.yaml"), f"--ckpt_path={ckpt}", "--out=eval",
                     "--device=cpu", "--max_batches=2", *common]) == 0
    report = json.loads(Path("eval/report.json").read_text())
    assert report["task"] == "DNACausalLM" and report["perplexity"] == pytest.approx(np.exp(report["loss"]))
    assert 1.0 < report["perplexity"] < 40 and report["scored_tokens"] % 127 == 0  # next tokens of 128-token windows
