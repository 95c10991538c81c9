"""DNA data: FASTA (Biopython, indexed), BED intervals and CSV loaders, and Lightning data modules.

Both data modules read *files*. Without user paths they first write the embedded default (a generated
genome, `mambasuite.bio.synthetic`) into `cache_dir` and then read it back through the same loaders.

* `read_bed`: BED lines `chrom start end [label [split]]` (0-based, end-exclusive) -> `Interval`s; a split
  name in the 4th column (`chrom start end split`, the hg38 `sequences_human.bed` of Caduceus/HyenaDNA,
  with "valid" for val) is read as the split.
* `GenomeWindows`: fixed-length windows (centred on each interval, shifted back inside the contig),
  tokenised on access from a `Bio.SeqIO.index` of the FASTA; optional RC augmentation.
* `read_sequence_csv`: CSV with a header holding `sequence` and `label` (and optionally `split`).
* FASTQ reads and the Genomic Benchmarks folder layout come from `mambasuite.bio.formats`.

`kmer` (data modules) picks the tokenizer (`mambasuite.bio.tokenizer.make_tokenizer`); `seq_len` always
counts bases, so a window of seq_len bases gives `tokenizer.tokens_for_length(seq_len)` tokens.

Errors name the file and record (contig, BED line, CSV row) and the position of an invalid character.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from mambasuite.core.resumable import ResumableDataLoader

from .formats import read_fastq, read_genomic_benchmark
from .synthetic import generate_genome
from .tokenizer import N_ID, PAD_ID, DNATokenizer, make_tokenizer

__all__ = ["Interval", "FastaGenome", "read_bed", "read_sequence_csv", "GenomeWindows", "SequenceDataset",
           "DNAClassificationDataModule", "DNAPretrainDataModule"]

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"valid": "val", "validation": "val"}  # hg38 sequences_human.bed writes "valid"
_RC = str.maketrans("ACGTNacgtn", "TGCANtgcan")


@dataclass(frozen=True)
class Interval:
    """One BED record: 0-based [start, end) on `chrom`, an int label (-1 if none), split, and source line."""
    chrom: str
    start: int
    end: int
    label: int = -1
    split: str | None = None
    line: int = 0


class FastaGenome:
    """Random access to a FASTA file via `Bio.SeqIO.index` (records are parsed on demand).

    fetch(chrom, start, end) -> upper-case str; raises KeyError naming the file for unknown contigs and
    ValueError for empty records or coordinates outside the contig.
    """

    def __init__(self, path: str | Path) -> None:
        from Bio import SeqIO

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"FASTA file not found: {self.path}")
        try:
            self._index = SeqIO.index(str(self.path), "fasta")
        except (ValueError, UnicodeDecodeError, IndexError) as err:  # duplicate ids, binary data, empty '>' headers
            raise ValueError(f"{self.path}: not a readable FASTA file ({type(err).__name__}: {err})") from err
        self._names = list(self._index)  # record ids in file order (iterating does not parse records)
        if len(self._index) == 0:
            raise ValueError(f"{self.path}: no FASTA records found (is it a FASTA file?)")
        self._cache: dict[str, str] = {}

    def __contains__(self, chrom: str) -> bool:
        return chrom in self._names  # `in self._index` would parse (and decode) the record

    def names(self) -> list[str]:
        """Record ids in file order."""
        return list(self._names)

    def sequence(self, chrom: str) -> str:
        """The whole upper-cased record `chrom` (cached)."""
        if chrom not in self._cache:
            if chrom not in self._names:
                raise KeyError(f"{self.path}: no record named {chrom!r} (records: {self.names()[:10]})")
            try:
                seq = str(self._index[chrom].seq).upper()
            except (ValueError, UnicodeDecodeError) as err:
                raise ValueError(f"{self.path}: cannot read record {chrom!r} ({type(err).__name__}: {err})") from err
            if not seq:
                raise ValueError(f"{self.path}: record {chrom!r} is empty")
            self._cache[chrom] = seq
        return self._cache[chrom]

    def length(self, chrom: str) -> int:
        return len(self.sequence(chrom))

    def fetch(self, chrom: str, start: int, end: int) -> str:
        """Bases [start, end) of `chrom`."""
        n = self.length(chrom)
        if not 0 <= start < end <= n:
            raise ValueError(f"{self.path}: interval {chrom}:{start}-{end} lies outside the record (length {n})")
        return self.sequence(chrom)[start:end]


def read_bed(path: str | Path, genome: FastaGenome | None = None) -> list[Interval]:
    """Parse BED (`chrom start end [label [split]]`; '#', 'track', 'browser' lines skipped) -> Intervals.

    With `genome`, every interval must lie inside its contig. Errors name `path:line`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"BED file not found: {path}")
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a text BED file ({err})") from err
    out = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.startswith(("#", "track", "browser")):
            continue
        cols = raw.split("\t") if "\t" in raw else raw.split()
        where = f"{path}:{lineno}"
        if len(cols) < 3:
            raise ValueError(f"{where}: expected at least 3 columns (chrom start end), got {raw!r}")
        split = cols[4] if len(cols) > 4 else None
        if len(cols) == 4 and _SPLIT_ALIASES.get(cols[3], cols[3]) in SPLITS:
            cols, split = cols[:3], cols[3]  # `chrom start end split` (no label column)
        split = _SPLIT_ALIASES.get(split, split)
        try:
            start, end = int(cols[1]), int(cols[2])
            label = int(cols[3]) if len(cols) > 3 and cols[3] not in (".", "") else -1
        except ValueError:
            raise ValueError(f"{where}: start, end and label must be integers, got {raw!r}") from None
        if not 0 <= start < end:
            raise ValueError(f"{where}: need 0 <= start < end, got start={start} end={end}")
        if split is not None and split not in SPLITS:
            raise ValueError(f"{where}: split must be one of {SPLITS}, got {split!r}")
        if genome is not None:
            if cols[0] not in genome:
                raise ValueError(f"{where}: contig {cols[0]!r} is not in {genome.path}")
            n = genome.length(cols[0])
            if end > n:
                raise ValueError(f"{where}: interval {cols[0]}:{start}-{end} extends past the end of the "
                                 f"contig (length {n})")
        out.append(Interval(cols[0], start, end, label, split, lineno))
    if not out:
        raise ValueError(f"{path}: no intervals")
    return out


def read_sequence_csv(path: str | Path) -> list[tuple[str, int, str | None, int]]:
    """CSV with header columns `sequence`, `label` (int) and optional `split` -> [(seq, label, split, row)].

    Sequences are validated (ACGTN, any case); errors name `path` and the row (1 = first data row).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}")
    try:
        return _parse_sequence_csv(path)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a UTF-8 text CSV file ({err})") from err
    except csv.Error as err:
        raise ValueError(f"{path}: malformed CSV ({err})") from err


def _parse_sequence_csv(path: Path) -> list[tuple[str, int, str | None, int]]:
    tok = DNATokenizer()
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"sequence", "label"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}; header is {reader.fieldnames}")
        for i, rec in enumerate(reader, start=1):
            if None in rec:  # DictReader files surplus fields under the key None
                raise ValueError(f"{path}: row {i} has more fields than the header {reader.fieldnames}")
            seq = (rec["sequence"] or "").strip()
            if not seq:
                raise ValueError(f"{path}: row {i} has an empty sequence")
            tok.encode_tensor(seq, name=f"{path}: row {i}")
            try:
                label = int(rec["label"])
            except (TypeError, ValueError):
                raise ValueError(f"{path}: row {i} label must be an integer, got {rec['label']!r}") from None
            split = rec.get("split") or None
            if split is not None and split not in SPLITS:
                raise ValueError(f"{path}: row {i} split must be one of {SPLITS}, got {split!r}")
            rows.append((seq, label, split, i))
    if not rows:
        raise ValueError(f"{path}: no data rows")
    return rows


def _window(interval: Interval, seq_len: int, contig_len: int) -> tuple[int, int]:
    """[start, end) of length seq_len centred on the interval and shifted back inside the contig."""
    if seq_len > contig_len:
        raise ValueError(f"contig {interval.chrom!r} (length {contig_len}) is shorter than seq_len={seq_len}")
    start = (interval.start + interval.end) // 2 - seq_len // 2
    start = min(max(start, 0), contig_len - seq_len)
    return start, start + seq_len


class GenomeWindows(Dataset):
    """Fixed-length windows of a FASTA genome around BED intervals.

    Item i -> (input_ids (n_tokens,) int64, label () int64), n_tokens = tokenizer.tokens_for_length(seq_len)
    (= seq_len for the character tokenizer). `n_to_pad` maps N to [PAD] (ignored by the MLM loss, as Caduceus
    does); `rc_aug` reverse-complements each draw with probability 1/2 (on the bases, before tokenising).
    """

    def __init__(self, genome: FastaGenome, intervals: list[Interval], seq_len: int, rc_aug: bool = False,
                 n_to_pad: bool = False, tokenizer: DNATokenizer | None = None) -> None:
        self.genome, self.intervals, self.seq_len = genome, intervals, seq_len
        self.rc_aug, self.n_to_pad = rc_aug, n_to_pad
        self.tokenizer = tokenizer or DNATokenizer()

    def __len__(self) -> int:
        return len(self.intervals)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        iv = self.intervals[i]
        start, end = _window(iv, self.seq_len, self.genome.length(iv.chrom))
        seq, name = self.genome.fetch(iv.chrom, start, end), f"{self.genome.path} record {iv.chrom!r} window {start}-{end}"
        ids = self.tokenizer.encode_tensor(seq, name=name)
        if self.rc_aug and torch.rand(()) < 0.5:
            ids = self.tokenizer.encode_tensor(seq.translate(_RC)[::-1], name=name + " (reverse complement)")
        if self.n_to_pad:
            ids = ids.masked_fill(ids == N_ID, PAD_ID)
        return ids, torch.tensor(iv.label, dtype=torch.long)


class SequenceDataset(Dataset):
    """In-memory (sequence, label) pairs, tokenised on access and left-padded/truncated to the tokens of
    seq_len bases -> ((n_tokens,) int64, () int64). `rc_aug` reverse-complements the bases (padding stays
    on the left); `n_to_pad` maps N to [PAD]. `names` (one per sequence) are used in error messages."""

    def __init__(self, sequences: list[str], labels: list[int], seq_len: int, rc_aug: bool = False,
                 tokenizer: DNATokenizer | None = None, names: list[str] | None = None, n_to_pad: bool = False) -> None:
        if len(sequences) != len(labels):
            raise ValueError(f"got {len(sequences)} sequences but {len(labels)} labels")
        self.sequences, self.rc_aug, self.n_to_pad = list(sequences), rc_aug, n_to_pad
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.tokenizer = tokenizer or DNATokenizer()
        self.n_tokens = self.tokenizer.tokens_for_length(seq_len)
        self.names = names or [f"sequence {i}" for i in range(len(self.sequences))]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        seq = self.sequences[i]
        if self.rc_aug and torch.rand(()) < 0.5:
            seq = seq.translate(_RC)[::-1]
        ids = self.tokenizer([seq], max_length=self.n_tokens, names=[self.names[i]])["input_ids"][0]
        if self.n_to_pad:
            ids = ids.masked_fill(ids == N_ID, PAD_ID)
        return ids, self.labels[i]


class _DNADataModule(pl.LightningDataModule):
    def __init__(self, batch_size: int, num_workers: int, cache_dir: str, seed: int) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.num_workers, self.cache_dir, self.seed = batch_size, num_workers, cache_dir, seed
        self.datasets: dict[str, Dataset] = {}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            raise ValueError(f"no {split!r} data: call setup() first, or add {split} records to the inputs")
        if shuffle:  # training: order, position and per-item RC draws resume from checkpoints
            return ResumableDataLoader(self.datasets[split], batch_size=self.batch_size, shuffle=True, seed=self.seed,
                                       num_workers=self.num_workers,
                                       drop_last=len(self.datasets[split]) > self.batch_size)
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.datasets[split], batch_size=self.batch_size, shuffle=shuffle, generator=gen,
                          num_workers=self.num_workers, drop_last=shuffle and len(self.datasets[split]) > self.batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)


def _split_missing(items: list, seed: int, fractions=(0.8, 0.1, 0.1)) -> list[str]:
    """Deterministic random train/val/test assignment for records without a split."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(len(items), generator=g).tolist()
    return ["train" if x < fractions[0] else ("val" if x < fractions[0] + fractions[1] else "test") for x in u]


class DNAClassificationDataModule(_DNADataModule):
    """Sequence classification from FASTA + BED (label column), a CSV, or a Genomic Benchmarks folder;
    default: the generated genome.

    Batches: (input_ids (batch, n_tokens) int64, labels (batch,) int64), n_tokens = seq_len for the character
    tokenizer. FASTA/CSV records without a split column are split 80/10/10 at random (seeded); a Genomic
    Benchmarks folder has train/test, and `val_fraction` of train (seeded) becomes val, as Caduceus does.

    Args:
        fasta, bed: genome and labelled intervals (both or neither). csv: `sequence,label[,split]` file.
        gb_dir: a Genomic Benchmarks dataset folder (`train|test/<class>/<id>.txt`); labels = sorted class
            names, available as `classes` after setup.
        seq_len: window length in bases (FASTA) or left-pad/truncate length (CSV, Genomic Benchmarks).
        num_classes: expected number of labels (checked against the data).
        rc_aug: reverse-complement training items with probability 1/2.
        kmer: 1 = characters (Caduceus' ids); k > 1 = non-overlapping k-mers (`KmerTokenizer`).
        val_fraction: share of a Genomic Benchmarks train split held out for validation.
        cache_dir: where the default genome is generated. genome_kwargs: `generate_genome` arguments.
    """

    def __init__(self, fasta: str | None = None, bed: str | None = None, csv: str | None = None,
                 gb_dir: str | None = None, seq_len: int = 128, num_classes: int = 2, rc_aug: bool = False,
                 kmer: int = 1, val_fraction: float = 0.1, batch_size: int = 32, num_workers: int = 0,
                 cache_dir: str = "~/.cache/mambasuite/bio_synthetic", seed: int = 0,
                 genome_kwargs: dict | None = None) -> None:
        super().__init__(batch_size, num_workers, cache_dir, seed)
        if (fasta is None) != (bed is None):
            raise ValueError(f"pass fasta and bed together (got fasta={fasta!r}, bed={bed!r})")
        given = [name for name, v in (("csv", csv), ("fasta+bed", fasta), ("gb_dir", gb_dir)) if v is not None]
        if len(given) > 1:
            raise ValueError(f"pass one data source, got {' and '.join(given)}")
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        self.fasta, self.bed, self.csv, self.gb_dir = fasta, bed, csv, gb_dir
        self.seq_len, self.num_classes, self.rc_aug, self.val_fraction = seq_len, num_classes, rc_aug, val_fraction
        self.tokenizer = make_tokenizer(kmer)
        self.genome_kwargs = dict(genome_kwargs or {})
        self.classes: list[str] | None = None

    def prepare_data(self) -> None:
        if self.csv is None and self.fasta is None and self.gb_dir is None:
            generate_genome(self.cache_dir, window=self.seq_len, **self.genome_kwargs)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if self.gb_dir is not None:
            records, self.classes = read_genomic_benchmark(self.gb_dir)
            if len(self.classes) != self.num_classes:
                raise ValueError(f"{self.gb_dir}: {len(self.classes)} classes {self.classes} but num_classes="
                                 f"{self.num_classes}")
            train = [r for r in records if r.split == "train"]
            # exactly round(val_fraction * n) held out (at least one), by a seeded permutation
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.seed)).tolist()
            n_val = max(1, round(self.val_fraction * len(train))) if len(train) > 1 else 0
            by_split = {"train": [train[i] for i in sorted(order[n_val:])],
                        "val": [train[i] for i in sorted(order[:n_val])],
                        "test": [r for r in records if r.split == "test"]}
            for split, sel in by_split.items():
                if sel:
                    self.datasets[split] = SequenceDataset(
                        [r.sequence for r in sel], [r.label for r in sel], self.seq_len,
                        rc_aug=self.rc_aug and split == "train", tokenizer=self.tokenizer,
                        names=[f"{self.gb_dir}/{r.split}/{r.class_name}/{r.id}.txt" for r in sel])
            return
        if self.csv is not None:
            rows = read_sequence_csv(self.csv)
            auto = _split_missing(rows, self.seed)
            self._check_labels([r[1] for r in rows], self.csv)
            for split in SPLITS:
                sel = [r for r, a in zip(rows, auto) if (r[2] or a) == split]
                if sel:
                    self.datasets[split] = SequenceDataset([r[0] for r in sel], [r[1] for r in sel], self.seq_len,
                                                           rc_aug=self.rc_aug and split == "train",
                                                           tokenizer=self.tokenizer,
                                                           names=[f"{self.csv}: row {r[3]}" for r in sel])
            return
        fasta, bed = self.fasta, self.bed
        if fasta is None:
            paths = generate_genome(self.cache_dir, window=self.seq_len, **self.genome_kwargs)
            fasta, bed = paths["fasta"], paths["bed"]
        genome = FastaGenome(fasta)
        intervals = read_bed(bed, genome)
        unlabelled = [iv for iv in intervals if iv.label < 0]
        if unlabelled:
            raise ValueError(f"{bed}:{unlabelled[0].line}: classification needs a label column (4th)")
        self._check_labels([iv.label for iv in intervals], bed)
        auto = _split_missing(intervals, self.seed)
        for split in SPLITS:
            sel = [iv for iv, a in zip(intervals, auto) if (iv.split or a) == split]
            if sel:
                self.datasets[split] = GenomeWindows(genome, sel, self.seq_len, rc_aug=self.rc_aug and split == "train",
                                                     tokenizer=self.tokenizer)

    def _check_labels(self, labels: list[int], source) -> None:
        bad = sorted({y for y in labels if not 0 <= y < self.num_classes})
        if bad:
            raise ValueError(f"{source}: labels {bad[:5]} outside 0..{self.num_classes - 1} (num_classes="
                             f"{self.num_classes})")


def tile_intervals(intervals: list[Interval], extend_to: int, seq_len: int) -> list[Interval]:
    """Caduceus/HyenaDNA hg38 windows: extend each interval (centred) to `extend_to` bp and cut it into
    extend_to // seq_len consecutive windows (same split); windows are shifted inside the contig on access."""
    if extend_to < seq_len or extend_to % seq_len:
        raise ValueError(f"bed_extend={extend_to} must be a positive multiple of seq_len={seq_len}")
    out = []
    for iv in intervals:
        start = (iv.start + iv.end) // 2 - extend_to // 2
        out.extend(Interval(iv.chrom, max(start + j * seq_len, 0), max(start + (j + 1) * seq_len, 1), iv.label,
                            iv.split, iv.line) for j in range(extend_to // seq_len))
    return out


class DNAPretrainDataModule(_DNADataModule):
    """Unlabelled windows of a FASTA genome, or FASTQ reads, for (masked or causal) LM pretraining.

    Batches: (input_ids (batch, n_tokens) int64, dummy labels (batch,) = -1). Windows come from `bed` intervals
    (chrom start end [label [split]] or chrom start end split), optionally extended to `bed_extend` bp and
    tiled into seq_len windows (the Caduceus hg38 recipe: 2^20), else from tiling every contig with `stride`;
    without a split column the second-to-last contig is val and the last is test (whole contigs: no leakage).
    Windows with more than `max_n_fraction` N are dropped; remaining N become [PAD] (ignored by the loss).
    `fastq` reads are left-padded/truncated to seq_len and split 80/10/10 at random (seeded).
    Default data: the generated genome. `kmer` as in `DNAClassificationDataModule`.
    """

    def __init__(self, fasta: str | None = None, bed: str | None = None, fastq: str | None = None,
                 seq_len: int = 128, stride: int | None = None, bed_extend: int | None = None, rc_aug: bool = True,
                 max_n_fraction: float = 0.1, kmer: int = 1, batch_size: int = 32, num_workers: int = 0,
                 cache_dir: str = "~/.cache/mambasuite/bio_synthetic", seed: int = 0,
                 genome_kwargs: dict | None = None) -> None:
        super().__init__(batch_size, num_workers, cache_dir, seed)
        if fasta is None and bed is not None:
            raise ValueError("bed given without fasta")
        if fastq is not None and fasta is not None:
            raise ValueError("pass either fastq or fasta (+ bed), not both")
        if bed_extend is not None and bed is None:
            raise ValueError("bed_extend needs a bed file")
        self.fasta, self.bed, self.fastq, self.seq_len, self.bed_extend = fasta, bed, fastq, seq_len, bed_extend
        self.stride = stride or seq_len
        self.rc_aug, self.max_n_fraction = rc_aug, max_n_fraction
        self.tokenizer = make_tokenizer(kmer)
        self.genome_kwargs = dict(genome_kwargs or {})

    def prepare_data(self) -> None:
        if self.fasta is None and self.fastq is None:
            generate_genome(self.cache_dir, **self.genome_kwargs)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if self.fastq is not None:
            reads = [r for r in read_fastq(self.fastq) if r.sequence.count("N") <= self.max_n_fraction * len(r.sequence)]
            if not reads:
                raise ValueError(f"{self.fastq}: every read has more than max_n_fraction={self.max_n_fraction} N")
            auto = _split_missing(reads, self.seed)
            for split in SPLITS:
                sel = [r for r, a in zip(reads, auto) if a == split]
                if sel:
                    self.datasets[split] = SequenceDataset(
                        [r.sequence for r in sel], [-1] * len(sel), self.seq_len, rc_aug=self.rc_aug and split == "train",
                        tokenizer=self.tokenizer, names=[f"{self.fastq}: read {r.id!r}" for r in sel], n_to_pad=True)
            return
        fasta = self.fasta or generate_genome(self.cache_dir, **self.genome_kwargs)["fasta"]
        genome = FastaGenome(fasta)
        if self.bed is not None:
            intervals = read_bed(self.bed, genome)
            if self.bed_extend is not None:
                intervals = tile_intervals(intervals, self.bed_extend, self.seq_len)
        else:
            names = genome.names()
            if len(names) < 3 and not self.bed:
                raise ValueError(f"{fasta}: tiling needs >= 3 records (train, val, test contigs), found {len(names)}")
            intervals = []
            for k, name in enumerate(names):
                split = "train" if k < len(names) - 2 else ("val" if k == len(names) - 2 else "test")
                n = genome.length(name)
                for s in range(0, n - self.seq_len + 1, self.stride):
                    intervals.append(Interval(name, s, s + self.seq_len, -1, split))
        kept = [iv for iv in intervals if self._n_fraction(genome, iv) <= self.max_n_fraction]
        auto = _split_missing(kept, self.seed)
        for split in SPLITS:
            sel = [iv for iv, a in zip(kept, auto) if (iv.split or a) == split]
            if sel:
                self.datasets[split] = GenomeWindows(genome, sel, self.seq_len, n_to_pad=True,
                                                     rc_aug=self.rc_aug and split == "train", tokenizer=self.tokenizer)

    def _n_fraction(self, genome: FastaGenome, iv: Interval) -> float:
        if self.max_n_fraction >= 1:
            return 0.0  # keep everything without reading the windows (hg38 recipe)
        s, e = _window(iv, self.seq_len, genome.length(iv.chrom))
        return genome.fetch(iv.chrom, s, e).count("N") / self.seq_len
