"""Readers for sequence files beyond FASTA/BED/CSV (those live in `mambasuite.bio.data`).

* `read_fastq`: FASTQ reads (plain or .gz) through `Bio.SeqIO.parse(..., "fastq")` -> `Read`s.
* `read_genomic_benchmark`: the Genomic Benchmarks "full-seq" folder layout
  `<root>/{train,test}/<class>/<id>.txt` (one raw sequence per file), labels from the *sorted* class names.

Every sequence is validated with the tokenizer's alphabet (A C G T N, any case); errors name the file and
the record (read id and number, or the .txt path) and the position of an invalid character.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

from .tokenizer import DNATokenizer

__all__ = ["Read", "read_fastq", "GBRecord", "read_genomic_benchmark"]


@dataclass(frozen=True)
class Read:
    """One FASTQ record: id, upper-case sequence, Phred qualities (one int per base), 1-based record number."""
    id: str
    sequence: str
    qualities: tuple[int, ...]
    number: int


def _open_text(path: Path):
    return gzip.open(path, "rt") if path.suffix == ".gz" else path.open()


def read_fastq(path: str | Path, min_length: int = 1) -> list[Read]:
    """Parse a FASTQ file (Sanger / Phred+33 qualities; `.gz` is decompressed) into `Read`s.

    Raises FileNotFoundError for a missing file and ValueError naming the file and the record for malformed
    FASTQ, reads shorter than `min_length` (empty reads with the default), invalid bases, or a file
    without records.
    """
    from Bio import SeqIO

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FASTQ file not found: {path}")
    tok, reads = DNATokenizer(), []
    with _open_text(path) as handle:
        records = SeqIO.parse(handle, "fastq")
        while True:
            number = len(reads) + 1
            try:
                rec = next(records)
            except StopIteration:
                break
            except (ValueError, UnicodeDecodeError, OSError, EOFError) as err:  # Biopython: ValueError; gzip: OSError/EOF
                raise ValueError(f"{path}: malformed FASTQ at record {number}: {err}") from None
            seq = str(rec.seq).upper()
            where = f"{path}: read {rec.id!r} (record {number})"
            if len(seq) < min_length:
                raise ValueError(f"{where} has {len(seq)} bases, fewer than min_length={min_length}"
                                 + (" (empty read)" if not seq else ""))
            tok.encode_tensor(seq, name=where)
            reads.append(Read(rec.id, seq, tuple(rec.letter_annotations["phred_quality"]), number))
    if not reads:
        raise ValueError(f"{path}: no FASTQ records found (is it a FASTQ file?)")
    return reads


@dataclass(frozen=True)
class GBRecord:
    """One Genomic Benchmarks sequence: file stem as id, upper-case sequence, class index, class name, split."""
    id: str
    sequence: str
    label: int
    class_name: str
    split: str


def read_genomic_benchmark(root: str | Path) -> tuple[list[GBRecord], list[str]]:
    """Read `<root>/{train,test}/<class>/*.txt` -> (records, sorted class names).

    The class folders must be the same in both splits; labels are indices into the sorted names (the
    reference loader uses directory order, which is not stable across file systems).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Genomic Benchmarks folder not found: {root}")
    classes: dict[str, list[str]] = {}
    for split in ("train", "test"):
        folder = root / split
        if not folder.is_dir():
            raise FileNotFoundError(f"{root}: missing the {split}/ folder (expected {split}/<class>/<id>.txt)")
        classes[split] = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if not classes[split]:
            raise ValueError(f"{folder}: no class folders")
    if classes["train"] != classes["test"]:
        raise ValueError(f"{root}: train classes {classes['train']} differ from test classes {classes['test']}")
    names, tok, records = classes["train"], DNATokenizer(), []
    for split in ("train", "test"):
        for label, name in enumerate(names):
            files = sorted((root / split / name).glob("*.txt"))
            if not files:
                raise ValueError(f"{root / split / name}: no .txt sequence files")
            for f in files:
                try:
                    seq = "".join(f.read_text().split()).upper()
                except UnicodeDecodeError as err:
                    raise ValueError(f"{f}: not a text sequence file ({err})") from None
                if not seq:
                    raise ValueError(f"{f}: empty sequence file")
                tok.encode_tensor(seq, name=str(f))
                records.append(GBRecord(f.stem, seq, label, name, split))
    return records, names
