"""Embedding export: `mamba-suite predict -c configs/bio/dna_embeddings.yaml` -> embeddings.npy + index.csv.

* `load_records`: sequences to embed from FASTA (+ BED windows), FASTQ, CSV or a Genomic Benchmarks folder.
* `DNAPredictDataModule`: predict batches (input_ids (batch, n_tokens) int64, row (batch,) int64).
* `DNAEmbedder`: a Caduceus backbone (a `save_pretrained` directory, or the weights of an LM / classifier
  Lightning checkpoint via `--ckpt_path`) whose `predict_step` returns RC-aware pooled embeddings.
* `EmbeddingWriter`: the writer callback: `embeddings.npy` (n_sequences, d_model) float32 in input order
  and `index.csv` (row, id, label, length), one line per row of the array.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from ..core.files import atomic_write
from .data import FastaGenome, _window, read_bed, read_sequence_csv
from .formats import read_fastq, read_genomic_benchmark
from .models.caduceus import CaduceusForMaskedLM
from .synthetic import generate_genome
from .tasks import backbone_args
from .tokenizer import DNATokenizer, make_tokenizer

__all__ = ["SequenceRecord", "load_records", "DNAPredictDataModule", "DNAEmbedder", "EmbeddingWriter"]


@dataclass(frozen=True)
class SequenceRecord:
    """One sequence to embed: an id for the index, the bases, and a label (-1 if none)."""
    id: str
    sequence: str
    label: int = -1


def load_records(fasta: str | None = None, bed: str | None = None, fastq: str | None = None, csv_path: str | None = None,
                 gb_dir: str | None = None, split: str | None = None, seq_len: int = 128) -> list[SequenceRecord]:
    """Read one source into `SequenceRecord`s (errors name the file and record, as the loaders do).

    fasta + bed: the seq_len window centred on each interval (id "chrom:start-end" of the window, label from
    the BED); fasta alone: each record whole (id = record id); fastq: each read; csv_path: each row (id "row N");
    gb_dir: each .txt file (id "split/class/file stem"). `split` keeps only that split (BED split column, CSV
    split column, Genomic Benchmarks train/test).
    """
    given = [n for n, v in (("fasta", fasta), ("fastq", fastq), ("csv", csv_path), ("gb_dir", gb_dir)) if v]
    if len(given) != 1:
        raise ValueError(f"pass exactly one of fasta (+ bed), fastq, csv, gb_dir; got {given or 'none'}")
    if bed is not None and fasta is None:
        raise ValueError("bed given without fasta")
    if fasta is not None:
        genome = FastaGenome(fasta)
        if bed is None:
            return [SequenceRecord(name, genome.sequence(name)) for name in genome.names()]
        records = []
        for iv in read_bed(bed, genome):
            if split is None or iv.split == split:
                s, e = _window(iv, seq_len, genome.length(iv.chrom))
                records.append(SequenceRecord(f"{iv.chrom}:{s}-{e}", genome.fetch(iv.chrom, s, e), iv.label))
        return records
    if fastq is not None:
        return [SequenceRecord(r.id, r.sequence) for r in read_fastq(fastq)]
    if csv_path is not None:
        return [SequenceRecord(f"row {row}", seq, label) for seq, label, sp, row in read_sequence_csv(csv_path)
                if split is None or sp == split]
    records, _ = read_genomic_benchmark(gb_dir)
    return [SequenceRecord(f"{r.split}/{r.class_name}/{r.id}", r.sequence, r.label) for r in records
            if split is None or r.split == split]


class _RecordDataset(Dataset):
    """Records -> (input_ids (n_tokens,) int64 left-padded/truncated, row () int64)."""

    def __init__(self, records: list[SequenceRecord], n_tokens: int, tokenizer: DNATokenizer) -> None:
        self.records, self.n_tokens, self.tokenizer = records, n_tokens, tokenizer

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rec = self.records[i]
        ids = self.tokenizer([rec.sequence], max_length=self.n_tokens, names=[rec.id])["input_ids"][0]
        return ids, torch.tensor(i)


class DNAPredictDataModule(pl.LightningDataModule):
    """Sequences for `predict` (embedding export), from one source of `load_records`; default: the test-split
    windows of the generated genome.

    Batches: (input_ids (batch, n_tokens) int64, row (batch,) int64); `records[row]` names each sequence.
    Sequences are left-padded / left-truncated to the tokens of seq_len bases (`kmer` as in training).
    """

    def __init__(self, fasta: str | None = None, bed: str | None = None, fastq: str | None = None,
                 csv: str | None = None, gb_dir: str | None = None, split: str | None = None, seq_len: int = 128,
                 kmer: int = 1, batch_size: int = 64, num_workers: int = 0,
                 cache_dir: str = "~/.cache/mambasuite/bio_synthetic", genome_kwargs: dict | None = None) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sources = dict(fasta=fasta, bed=bed, fastq=fastq, csv_path=csv, gb_dir=gb_dir)
        self.default = not any(v for v in (fasta, fastq, csv, gb_dir))
        self.split = "test" if self.default and split is None else split
        self.seq_len, self.batch_size, self.num_workers = seq_len, batch_size, num_workers
        self.cache_dir, self.genome_kwargs = cache_dir, dict(genome_kwargs or {})
        self.tokenizer = make_tokenizer(kmer)
        self.records: list[SequenceRecord] = []

    def prepare_data(self) -> None:
        if self.default:
            generate_genome(self.cache_dir, window=self.seq_len, **self.genome_kwargs)

    def setup(self, stage: str | None = None) -> None:
        if self.records:
            return
        sources = dict(self.sources)
        if self.default:
            paths = generate_genome(self.cache_dir, window=self.seq_len, **self.genome_kwargs)
            sources.update(fasta=str(paths["fasta"]), bed=str(paths["bed"]))
        self.records = load_records(**sources, split=self.split, seq_len=self.seq_len)
        if not self.records:
            raise ValueError(f"no sequences to embed (split={self.split!r} selected none)")

    def predict_dataloader(self) -> DataLoader:
        if not self.records:
            raise ValueError("no records: call setup() first")
        dataset = _RecordDataset(self.records, self.tokenizer.tokens_for_length(self.seq_len), self.tokenizer)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)


class DNAEmbedder(pl.LightningModule):
    """Predict-only task: per-sequence embeddings (batch, d_model) from a Caduceus backbone.

    `predict_step((input_ids, row))` -> {"embedding": (batch, d_model) float32, "row": (batch,)}: mean (or
    max) pooling over non-[PAD] tokens, RC-invariant for PS models (both strands pooled and averaged) and, with
    `conjoin`, for Ph models (a second pass on the reverse complement). Weights: `pretrained` (a
    `save_pretrained` directory, e.g. an LM's export_dir or converted Hugging Face weights), or the
    architecture arguments plus `mamba-suite predict --ckpt_path` of a DNAMaskedLM / DNACausalLM /
    DNASequenceClassifier checkpoint (its classification head is not used).
    """

    def __init__(self, pretrained: str | None = None, d_model: int = 64, n_layer: int = 2, rcps: bool = False,
                 bidirectional: bool = True, d_state: int = 16, expand: int = 2, kmer: int = 1, pooling: str = "mean",
                 conjoin: bool = False, backend: str = "auto") -> None:
        super().__init__()
        self.save_hyperparameters()
        if pooling not in ("mean", "max"):
            raise ValueError(f"pooling must be 'mean' or 'max', got {pooling!r}")
        args, source = backbone_args(pretrained, kmer, backend, d_model=d_model, n_layer=n_layer, rcps=rcps,
                                     bidirectional=bidirectional, d_state=d_state, expand=expand)
        self.model = CaduceusForMaskedLM(**args)  # same keys as the LM tasks' checkpoints: model.caduceus.*
        if source is not None:
            self.model.caduceus.load_state_dict(source.state_dict(), strict=True)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        tok = getattr(dm, "tokenizer", None)
        if tok is not None and tok.vocab_size != self.model.caduceus.vocab_size:
            raise ValueError(f"the data's tokenizer (kmer={tok.k}) has vocab_size {tok.vocab_size}, the backbone "
                             f"{self.model.caduceus.vocab_size}: set the kmer the backbone was trained with")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # A classifier checkpoint carries model.score.* on top of the backbone: not part of an embedder.
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("model.score.")]:
            del state[key]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch, L) int64 -> (batch, d_model) pooled embeddings."""
        return self.model.caduceus.pool(input_ids, self.hparams.pooling, self.hparams.conjoin)

    def predict_step(self, batch, batch_idx):
        ids, rows = batch
        return {"embedding": self(ids).float(), "row": rows}


class EmbeddingWriter(BasePredictionWriter):
    """Writes `embeddings.npy` (n, d) float32 and `index.csv` (row, id, label, length) into `output_dir`
    (default: the trainer's log dir) at the end of predict; rows follow the data module's record order.
    Under DDP each rank writes `embeddings_rank<r>.npy` / `index_rank<r>.csv` for the rows it saw."""

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self._chunks: list[tuple[np.ndarray, np.ndarray]] = []

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self._chunks = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        if not isinstance(prediction, dict) or "embedding" not in prediction or "row" not in prediction:
            raise TypeError(f"EmbeddingWriter needs predict_step to return {{'embedding', 'row'}} (DNAEmbedder); "
                            f"got {type(prediction).__name__}")
        self._chunks.append((prediction["embedding"].detach().float().cpu().numpy(),
                             prediction["row"].detach().cpu().numpy()))

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        if not self._chunks:
            raise ValueError("EmbeddingWriter: predict produced no batches")
        emb = np.concatenate([c[0] for c in self._chunks])
        rows = np.concatenate([c[1] for c in self._chunks])
        order = np.argsort(rows, kind="stable")
        emb, rows = emb[order], rows[order]
        records = getattr(getattr(trainer, "datamodule", None), "records", None) or []
        out = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)
        suffix = "" if trainer.world_size == 1 else f"_rank{trainer.global_rank}"
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["row", "id", "label", "length"])
        for r in rows.tolist():
            rec = records[r] if r < len(records) else None
            writer.writerow([r, rec.id if rec else r, rec.label if rec else "", len(rec.sequence) if rec else ""])
        atomic_write(out / f"embeddings{suffix}.npy", lambda tmp: np.save(tmp, emb))
        atomic_write(out / f"index{suffix}.csv", buf.getvalue())
        if trainer.is_global_zero:
            print(f"embeddings {emb.shape} written to {out / f'embeddings{suffix}.npy'} (index: index{suffix}.csv)",
                  flush=True)
