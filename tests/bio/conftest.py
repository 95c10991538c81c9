"""Fixture files for the bio tests: a Genomic Benchmarks folder, an hg38-like FASTA + 4-column BED, FASTQ."""

from __future__ import annotations

import random
from pathlib import Path

import pytest


def write_genomic_benchmark(root: Path, n_per_class: int = 6, length: int = 30,
                            classes: tuple[str, ...] = ("positive", "negative")) -> Path:
    """`root/{train,test}/<class>/<i>.txt`; class "positive" sequences contain TATAAA, the others do not."""
    rng = random.Random(0)
    for split in ("train", "test"):
        for c in classes:
            folder = root / split / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n_per_class):
                seq = "".join(rng.choice("CG") for _ in range(length))
                if c == "positive":
                    seq = seq[:10] + "TATAAA" + seq[16:]
                (folder / f"{i}.txt").write_text(seq.lower() + "\n")
    return root


def write_hg38_like(root: Path, contig_length: int = 3000) -> tuple[Path, Path]:
    """A 3-contig FASTA with an N gap, and a `chrom start end split` BED (with "valid"), like sequences_human.bed."""
    rng = random.Random(1)
    root.mkdir(parents=True, exist_ok=True)
    fasta = root / "hg38_like.fa"
    lines = []
    for c in ("chr1", "chr2", "chrX"):
        seq = "N" * 100 + "".join(rng.choice("ACGT") for _ in range(contig_length - 100))
        lines.append(f">{c}")
        lines += [seq[i:i + 60] for i in range(0, len(seq), 60)]
    fasta.write_text("\n".join(lines) + "\n")
    bed = root / "sequences.bed"
    bed.write_text("chr1\t500\t900\ttrain\nchr1\t1500\t1900\ttrain\nchr2\t1000\t1400\tvalid\nchrX\t2000\t2400\ttest\n")
    return fasta, bed


@pytest.fixture()
def gb_folder(tmp_path) -> Path:
    return write_genomic_benchmark(tmp_path / "gb")


@pytest.fixture()
def hg38_like(tmp_path) -> tuple[Path, Path]:
    return write_hg38_like(tmp_path / "hg38")
