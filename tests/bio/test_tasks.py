"""DNA tasks: MLM masking statistics, pretrained-backbone init, config smoke runs, and (slow) acceptance runs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mambasuite.bio.models import Caduceus
from mambasuite.bio.tasks import DNACausalLM, DNAMaskedLM, DNASequenceClassifier, mask_tokens
from mambasuite.bio.tokenizer import MASK_ID, PAD_ID
from mambasuite.core import cli

REPO = Path(__file__).resolve().parents[2]


def test_mask_tokens_80_10_10():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(7, 11, (200, 500), generator=g)
    ids[:, :50] = PAD_ID  # never masked
    masked, targets = mask_tokens(ids, 0.15, torch.Generator().manual_seed(1))
    sel = targets != -100
    assert not sel[:, :50].any()
    assert sel[:, 50:].float().mean().item() == pytest.approx(0.15, abs=0.005)
    assert torch.equal(targets[sel], ids[sel])
    frac_mask = (masked[sel] == MASK_ID).float().mean().item()
    changed = (masked[sel] != MASK_ID) & (masked[sel] != ids[sel])
    kept = (masked[sel] == ids[sel]).float().mean().item()
    assert frac_mask == pytest.approx(0.8, abs=0.01)
    # 10% random base, a quarter of which hits the original base: 7.5% changed, 12.5% kept
    assert changed.float().mean().item() == pytest.approx(0.075, abs=0.01)
    assert kept == pytest.approx(0.125, abs=0.01)
    assert torch.equal(masked[~sel], ids[~sel])


def test_classifier_init_from_pretrained_backbone(tmp_path):
    torch.manual_seed(0)
    bb = Caduceus(d_model=8, n_layer=2, rcps=True)
    with torch.no_grad():
        for p in bb.parameters():
            p.add_(0.05)
    bb.save_pretrained(tmp_path / "bb")
    task = DNASequenceClassifier(num_classes=3, d_model=99, pretrained=str(tmp_path / "bb"))
    assert task.model.caduceus.d_model == 8 and task.model.caduceus.rcps
    for (k, a), b in zip(bb.state_dict().items(), task.model.caduceus.state_dict().values()):
        assert torch.equal(a, b), k
    assert task(torch.randint(7, 11, (2, 10))).shape == (2, 3)


def test_causal_lm_loss_is_next_token_cross_entropy():
    torch.manual_seed(0)
    task = DNACausalLM(d_model=8, n_layer=1)
    ids = torch.randint(7, 11, (3, 12))
    ids[0, :4] = PAD_ID  # left padding: never a target
    logits, targets = task.logits_and_targets(ids)
    assert logits.shape == (3, 11, 16) and (targets[0, :3] == -100).all()
    full = task(ids[:, :-1]).log_softmax(-1)
    direct = [-full[b, t, ids[b, t + 1]] for b in range(3) for t in range(11) if ids[b, t + 1] != PAD_ID]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 16), targets.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(loss, torch.stack(direct).mean())


def test_kmer_masked_lm_masks_kmer_ids():
    task = DNAMaskedLM(d_model=8, n_layer=1, kmer=3, mlm_probability=0.5)
    assert task.model.caduceus.vocab_size == 80
    ids = torch.randint(12, 76, (4, 50))
    ids[:, :5] = PAD_ID
    logits, targets = task.logits_and_targets(ids, torch.Generator().manual_seed(0))
    sel = targets != -100
    assert logits.shape == (4, 50, 80) and not sel[:, :5].any() and sel.float().mean() > 0.3
    masked, _ = mask_tokens(ids, 0.5, torch.Generator().manual_seed(0), (7, 75), (12, 75))
    swapped = (masked != ids) & (masked != MASK_ID)
    assert ((masked[swapped] >= 12) & (masked[swapped] <= 75)).all()  # random replacements are k-mers


def test_pretrained_backbone_arguments_pass_through(tmp_path):
    Caduceus(d_model=8, n_layer=2, rcps=True, swap_halves=True, norm_eps=1e-6).save_pretrained(tmp_path / "ps")
    task = DNASequenceClassifier(num_classes=2, pretrained=str(tmp_path / "ps"))
    assert task.model.caduceus.swap_halves and task.model.caduceus.backbone.norm_f.submodule.eps == 1e-6
    with pytest.raises(ValueError, match="vocab_size 16, but kmer=2 needs 32"):
        DNASequenceClassifier(pretrained=str(tmp_path / "ps"), kmer=2)
    Caduceus(d_model=8, n_layer=1, bidirectional=False).save_pretrained(tmp_path / "causal")
    with pytest.raises(ValueError, match="use DNACausalLM"):
        DNAMaskedLM(pretrained=str(tmp_path / "causal"))
    with pytest.raises(ValueError, match="causal LM needs bidirectional=False"):
        DNACausalLM(pretrained=str(tmp_path / "ps"))
    assert DNACausalLM(pretrained=str(tmp_path / "causal")).model.caduceus.bidirectional is False


def test_model_and_data_kmer_must_agree(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mamba-suite"])
    with pytest.raises(ValueError, match=r"kmer=2\) has vocab_size 32, the model has 16"):
        cli.main(["fit", "-c", str(REPO / "configs/bio/dna_synthetic_mlm.yaml"), "--trainer.fast_dev_run=1",
                  "--trainer.enable_progress_bar=false", "--data.init_args.kmer=2",
                  f"--data.init_args.cache_dir={tmp_path}", '--data.init_args.genome_kwargs={"n_contigs": 3, '
                  '"contig_length": 3000}', "--model.init_args.export_dir=null"])


def _run_cli(args: list[str], cwd: Path, timeout: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mambasuite.core.cli", *args, "--trainer.enable_progress_bar=false"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return time.perf_counter() - start


def _metrics(run_dir: Path) -> list[dict]:
    (path,) = run_dir.glob("version_*/metrics.csv")
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_mlm_loss_drops_below_unigram_entropy(tmp_path):
    cache = tmp_path / "cache"
    _run_cli(["fit", "-c", str(REPO / "configs/bio/dna_synthetic_mlm.yaml"), f"--data.init_args.cache_dir={cache}",
              f"--model.init_args.export_dir={tmp_path / 'bb'}"], tmp_path, timeout=360)
    (stats_file,) = cache.glob("genome_*/stats.json")
    stats = json.loads(stats_file.read_text())
    val = [float(r["val/loss"]) for r in _metrics(tmp_path / "runs" / "dna_synthetic_mlm") if r.get("val/loss")]
    print(f"unigram entropy {stats['unigram_entropy_nats']:.4f} nats, order-2 conditional "
          f"{stats['markov2_entropy_nats']:.4f}, val/loss {val}")
    assert val[-1] < stats["unigram_entropy_nats"] - 0.1
    assert val[-1] < val[0]
    assert (tmp_path / "bb" / "model.safetensors").is_file()


@pytest.mark.slow
def test_cls_reaches_95_percent_test_accuracy_in_5_minutes(tmp_path):
    cfg = str(REPO / "configs/bio/dna_synthetic_cls.yaml")
    cache = f"--data.init_args.cache_dir={tmp_path / 'cache'}"
    fit_s = _run_cli(["fit", "-c", cfg, cache], tmp_path, timeout=330)
    run = tmp_path / "runs" / "dna_synthetic_cls"
    (ckpt,) = run.glob("version_0/checkpoints/last.ckpt")
    _run_cli(["test", "-c", cfg, cache, f"--ckpt_path={ckpt}"], tmp_path, timeout=120)
    (test_metrics,) = run.glob("version_1/metrics.csv")
    with test_metrics.open() as f:
        acc = float(next(r for r in csv.DictReader(f) if r.get("test/acc"))["test/acc"])
    print(f"fit wall time {fit_s:.0f} s, test/acc {acc:.4f}")
    assert fit_s < 300
    assert acc >= 0.95
