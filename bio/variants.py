"""Variant-effect scoring: log-likelihood ratio of the alt vs the ref allele under a DNA language model.

`mamba-suite predict -c configs/bio/variant_effect.yaml` reads a VCF-like TSV (chrom, pos, ref, alt[, label];
pos 1-based as in VCF) and a FASTA, cuts the `window` bp around each variant and scores it:

* masked LM (Caduceus, bidirectional): masked-marginal score. The variant's positions are replaced by [MASK]
  in the reference window and LLR = sum_i log p(alt_i | context) - log p(ref_i | context).
* causal LM (`bidirectional=False`): LLR = log p(alt window) - log p(ref window), each the sum of next-token
  log-probabilities over the window.

Negative LLR: the model finds the alt allele less likely than the reference (e.g. a variant that breaks a
motif it learned). `conjoin` averages the score with the one on the reverse-complement windows (Ph models;
a PS model is strand-symmetric by construction). `VariantScoreWriter` writes `variant_scores.tsv` and, when
labels are given, `variant_summary.json` with the AUROC of -LLR for label 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from ..core.files import atomic_write
from .data import FastaGenome
from .models.caduceus import CaduceusForMaskedLM
from .synthetic import generate_genome, plant_variants
from .tasks import backbone_args
from .tokenizer import COMPLEMENT_MAP, MASK_ID, DNATokenizer

__all__ = ["Variant", "read_variants", "VariantWindows", "VariantDataModule", "VariantEffectScorer",
           "VariantScoreWriter", "masked_llr", "causal_log_likelihood"]

_BASES = set("ACGT")


@dataclass(frozen=True)
class Variant:
    """One substitution: chrom, 1-based pos, ref and alt (same length, A/C/G/T), label (-1 if none), TSV line."""
    chrom: str
    pos: int
    ref: str
    alt: str
    label: int = -1
    line: int = 0


def read_variants(path: str | Path) -> list[Variant]:
    """Parse a VCF-like TSV: `chrom pos ref alt [label]` (tab or space separated; '#' lines and a header line
    starting with "chrom" skipped). Errors name `path:line`. Only equal-length substitutions (SNVs, MNVs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"variants file not found: {path}")
    out = []
    for lineno, raw in enumerate(path.read_text().splitlines(), start=1):
        if not raw.strip() or raw.startswith("#") or raw.lower().startswith("chrom"):
            continue
        cols = raw.split("\t") if "\t" in raw else raw.split()
        where = f"{path}:{lineno}"
        if len(cols) not in (4, 5):
            raise ValueError(f"{where}: expected 4 or 5 columns (chrom pos ref alt [label]), got {len(cols)}: {raw!r}")
        chrom, pos, ref, alt = cols[0], cols[1], cols[2].upper(), cols[3].upper()
        try:
            pos = int(pos)
            label = int(cols[4]) if len(cols) == 5 and cols[4] not in (".", "") else -1
        except ValueError:
            raise ValueError(f"{where}: pos and label must be integers, got {raw!r}") from None
        if pos < 1:
            raise ValueError(f"{where}: pos is 1-based and must be >= 1, got {pos}")
        if not ref or not alt or not set(ref + alt) <= _BASES:
            raise ValueError(f"{where}: ref and alt must be non-empty A/C/G/T strings, got ref={ref!r} alt={alt!r}")
        if len(ref) != len(alt):
            raise ValueError(f"{where}: only substitutions are supported (ref and alt of equal length), got "
                             f"ref={ref!r} alt={alt!r}")
        if ref == alt:
            raise ValueError(f"{where}: alt equals ref ({ref!r})")
        out.append(Variant(chrom, pos, ref, alt, label, lineno))
    if not out:
        raise ValueError(f"{path}: no variants")
    return out


class VariantWindows(Dataset):
    """The `window` bp around each variant (centred, shifted inside the contig), as ref and alt token ids.

    Item i -> (ref_ids (window,) int64, alt_ids (window,) int64, offset () int64 = index of the variant's
    first base in the window, length () int64 = len(ref), row () int64). Checks at construction that each variant lies inside its
    contig and that `ref` matches the genome (errors name the TSV line and the bases found).
    """

    def __init__(self, genome: FastaGenome, variants: list[Variant], window: int, source: str = "variants") -> None:
        if window < 2:
            raise ValueError(f"window must be >= 2, got {window}")
        self.genome, self.variants, self.window = genome, variants, window
        self.tokenizer = DNATokenizer()
        self.starts = []
        for v in variants:
            where = f"{source}:{v.line}"
            if v.chrom not in genome:
                raise ValueError(f"{where}: contig {v.chrom!r} is not in {genome.path}")
            n = genome.length(v.chrom)
            p0 = v.pos - 1
            if p0 + len(v.ref) > n:
                raise ValueError(f"{where}: {v.chrom}:{v.pos} lies outside the contig (length {n})")
            found = genome.fetch(v.chrom, p0, p0 + len(v.ref))
            if found != v.ref:
                raise ValueError(f"{where}: ref {v.ref!r} does not match the genome at {v.chrom}:{v.pos} ({found!r})")
            if window > n:
                raise ValueError(f"{where}: window={window} is longer than contig {v.chrom!r} (length {n})")
            self.starts.append(min(max(p0 + len(v.ref) // 2 - window // 2, 0), n - window))

    def __len__(self) -> int:
        return len(self.variants)

    def __getitem__(self, i: int):
        v, start = self.variants[i], self.starts[i]
        seq = self.genome.fetch(v.chrom, start, start + self.window)
        offset = v.pos - 1 - start
        alt_seq = seq[:offset] + v.alt + seq[offset + len(v.alt):]
        name = f"{self.genome.path} {v.chrom}:{start}-{start + self.window}"
        return (self.tokenizer.encode_tensor(seq, name), self.tokenizer.encode_tensor(alt_seq, name),
                torch.tensor(offset), torch.tensor(len(v.ref)), torch.tensor(i))


class VariantDataModule(pl.LightningDataModule):
    """Predict batches of `VariantWindows` (ref_ids, alt_ids, offset, length, row), all (batch, ...) int64.

    Default (no fasta/variants): the generated genome with `plant_variants` (motif-breaking SNVs labelled 1,
    background SNVs labelled 0). Variants must have one length per batch (SNVs: always).
    """

    def __init__(self, fasta: str | None = None, variants: str | None = None, window: int = 128,
                 batch_size: int = 32, num_workers: int = 0, cache_dir: str = "~/.cache/mambasuite/bio_synthetic",
                 genome_kwargs: dict | None = None, n_variants: int = 200) -> None:
        super().__init__()
        if (fasta is None) != (variants is None):
            raise ValueError(f"pass fasta and variants together (got fasta={fasta!r}, variants={variants!r})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.fasta, self.variants_path, self.window = fasta, variants, window
        self.batch_size, self.num_workers, self.cache_dir = batch_size, num_workers, cache_dir
        self.genome_kwargs, self.n_variants = dict(genome_kwargs or {}), n_variants
        self.dataset: VariantWindows | None = None

    def _paths(self) -> tuple[str, str]:
        if self.fasta is not None:
            return self.fasta, self.variants_path
        paths = generate_genome(self.cache_dir, window=self.window, **self.genome_kwargs)
        return str(paths["fasta"]), str(plant_variants(paths, self.n_variants))

    def prepare_data(self) -> None:
        self._paths()

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            fasta, variants = self._paths()
            self.dataset = VariantWindows(FastaGenome(fasta), read_variants(variants), self.window, source=variants)

    @property
    def records(self) -> list[Variant]:
        """The variants, indexed by the `row` of each batch item."""
        return self.dataset.variants if self.dataset is not None else []

    def predict_dataloader(self) -> DataLoader:
        if self.dataset is None:
            raise ValueError("call setup() first")
        lengths = {len(v.ref) for v in self.dataset.variants}
        if len(lengths) > 1 and self.batch_size > 1:
            raise ValueError(f"variants of several lengths {sorted(lengths)}: use batch_size=1")
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)


def masked_llr(logits: torch.Tensor, ref_ids: torch.Tensor, alt_ids: torch.Tensor, offset: torch.Tensor,
               length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked-marginal log-likelihoods of ref and alt at positions offset..offset+length-1.

    logits (batch, L, V) from the ref window with those positions masked; ref_ids, alt_ids (batch, L);
    offset (batch,). Returns (ref_ll, alt_ll), each (batch,) float32; LLR = alt_ll - ref_ll.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    pos = offset[:, None] + torch.arange(length, device=offset.device)  # (batch, length)
    lp = logp.gather(1, pos[..., None].expand(-1, -1, logp.shape[-1]))  # (batch, length, V)
    ref_ll = lp.gather(2, ref_ids.gather(1, pos)[..., None]).squeeze(-1).sum(1)
    alt_ll = lp.gather(2, alt_ids.gather(1, pos)[..., None]).squeeze(-1).sum(1)
    return ref_ll, alt_ll


def causal_log_likelihood(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Sum of next-token log-probabilities: logits (batch, L-1, V) from ids[:, :-1], ids (batch, L) -> (batch,)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return logp.gather(2, ids[:, 1:, None]).squeeze(-1).sum(1)


class VariantEffectScorer(pl.LightningModule):
    """Predict-only task: LLR of alt vs ref for batches of `VariantDataModule`.

    predict_step -> {"row", "llr", "ref_ll", "alt_ll"} (each (batch,)). `objective`: "auto" (masked for a
    bidirectional model, causal otherwise), "masked" or "causal". Weights: `pretrained` (a `save_pretrained`
    directory: an LM's export_dir or converted Caduceus weights; the LM head is the tied embedding), or the
    architecture arguments plus `--ckpt_path` of a DNAMaskedLM / DNACausalLM checkpoint.
    """

    def __init__(self, pretrained: str | None = None, d_model: int = 64, n_layer: int = 2, rcps: bool = False,
                 bidirectional: bool = True, d_state: int = 16, expand: int = 2, objective: str = "auto",
                 conjoin: bool = False, backend: str = "auto") -> None:
        super().__init__()
        self.save_hyperparameters()
        if objective not in ("auto", "masked", "causal"):
            raise ValueError(f"objective must be 'auto', 'masked' or 'causal', got {objective!r}")
        args, source = backbone_args(pretrained, 1, backend, d_model=d_model, n_layer=n_layer, rcps=rcps,
                                     bidirectional=bidirectional, d_state=d_state, expand=expand)
        self.model = CaduceusForMaskedLM(**args)
        if source is not None:
            self.model.caduceus.load_state_dict(source.state_dict(), strict=True)
        causal_model = not self.model.caduceus.bidirectional
        self.objective = ("causal" if causal_model else "masked") if objective == "auto" else objective
        if self.objective == "masked" and causal_model:
            raise ValueError("objective='masked' needs a bidirectional model; this one is causal")

    def score(self, ref_ids: torch.Tensor, alt_ids: torch.Tensor, offset: torch.Tensor,
              length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ref_ll, alt_ll), each (batch,), on one strand (see the module docs)."""
        if self.objective == "causal":
            return (causal_log_likelihood(self.model(ref_ids[:, :-1]), ref_ids),
                    causal_log_likelihood(self.model(alt_ids[:, :-1]), alt_ids))
        pos = offset[:, None] + torch.arange(length, device=offset.device)
        masked = ref_ids.scatter(1, pos, MASK_ID)
        return masked_llr(self.model(masked), ref_ids, alt_ids, offset, length)

    def predict_step(self, batch, batch_idx):
        ref_ids, alt_ids, offset, lengths, rows = batch
        if (lengths != lengths[0]).any():
            raise ValueError(f"a batch mixes variant lengths {sorted(set(lengths.tolist()))}; use batch_size=1")
        length = int(lengths[0])
        ref_ll, alt_ll = self.score(ref_ids, alt_ids, offset, length)
        if self.hparams.conjoin:
            cmap = torch.tensor(COMPLEMENT_MAP, device=ref_ids.device)
            rc_offset = ref_ids.shape[1] - offset - length
            rc_ref, rc_alt = self.score(cmap[ref_ids.flip(1)], cmap[alt_ids.flip(1)], rc_offset, length)
            ref_ll, alt_ll = (ref_ll + rc_ref) / 2, (alt_ll + rc_alt) / 2
        return {"row": rows, "llr": alt_ll - ref_ll, "ref_ll": ref_ll, "alt_ll": alt_ll}


class VariantScoreWriter(BasePredictionWriter):
    """Writes `variant_scores.tsv` (chrom pos ref alt label llr ref_ll alt_ll, in input order) and, when the
    variants carry both labels 0 and 1, `variant_summary.json` (n, mean LLR per label, AUROC of -LLR for
    label 1) into `output_dir` (default: the trainer's log dir)."""

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self._rows: dict[int, tuple[float, float, float]] = {}

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self._rows = {}

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        if not isinstance(prediction, dict) or "llr" not in prediction:
            raise TypeError("VariantScoreWriter needs predict_step to return {'row', 'llr', ...} (VariantEffectScorer)")
        for r, llr, ref_ll, alt_ll in zip(*(prediction[k].detach().cpu().tolist()
                                            for k in ("row", "llr", "ref_ll", "alt_ll"))):
            self._rows[int(r)] = (llr, ref_ll, alt_ll)

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        records = getattr(getattr(trainer, "datamodule", None), "records", None)
        if not records:
            raise ValueError("VariantScoreWriter needs a data module with `records` (VariantDataModule)")
        out = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)
        suffix = "" if trainer.world_size == 1 else f"_rank{trainer.global_rank}"
        lines = ["chrom\tpos\tref\talt\tlabel\tllr\tref_ll\talt_ll"]
        for r in sorted(self._rows):
            v, (llr, ref_ll, alt_ll) = records[r], self._rows[r]
            lines.append(f"{v.chrom}\t{v.pos}\t{v.ref}\t{v.alt}\t{v.label}\t{llr:.6g}\t{ref_ll:.6g}\t{alt_ll:.6g}")
        atomic_write(out / f"variant_scores{suffix}.tsv", "\n".join(lines) + "\n")
        summary = summarize(records, self._rows)
        if summary is not None:
            atomic_write(out / f"variant_summary{suffix}.json", json.dumps(summary, indent=2) + "\n")
        if trainer.is_global_zero:
            extra = f", AUROC(-LLR, label 1) {summary['auroc']:.3f}" if summary else ""
            print(f"{len(self._rows)} variants scored -> {out / f'variant_scores{suffix}.tsv'}{extra}", flush=True)


def summarize(records: list[Variant], scores: dict[int, tuple[float, float, float]]) -> dict | None:
    """n, mean LLR per label and AUROC of -LLR for label 1 (None without both labels 0 and 1)."""
    labelled = [(records[r].label, s[0]) for r, s in scores.items() if records[r].label in (0, 1)]
    if {y for y, _ in labelled} != {0, 1}:
        return None
    from sklearn.metrics import roc_auc_score

    y, llr = zip(*labelled)
    mean = {str(k): sum(s for lab, s in labelled if lab == k) / sum(lab == k for lab, _ in labelled) for k in (0, 1)}
    return {"n": len(labelled), "mean_llr_by_label": mean, "auroc": float(roc_auc_score(y, [-s for s in llr]))}
