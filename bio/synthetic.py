"""The embedded default data set: a generated genome with planted transcription-factor motifs.

Background: an order-2 Markov chain over ACGT with a fixed, seeded, non-uniform transition table (so
there is context to learn beyond base frequencies), scrubbed of every motif occurrence on either strand.
Positive windows get one or two planted consensus motifs (random strand and position); negative windows
stay background. The genome is written as FASTA + BED (chrom, start, end, label, split) and read back by
the same loaders users' files go through (`mambasuite.bio.data`).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from mambasuite.core.files import atomic_write

__all__ = ["MOTIFS", "generate_genome", "markov2_entropy", "plant_variants", "unigram_entropy"]

# Real consensus sites (N = any base, drawn at planting time).
MOTIFS = {
    "TATA_box": "TATAAA",
    "CAAT_box": "GGCCAATCT",
    "GC_box": "GGGCGG",
    "E_box": "CACGTG",
    "CTCF_core": "CCGCGNGGNGGCAG",
}
_BASES = np.frombuffer(b"ACGT", dtype=np.uint8)
_RC = str.maketrans("ACGTN", "TGCAN")


def _motif_regex() -> re.Pattern:
    pats = set()
    for m in MOTIFS.values():
        pats.add(m.replace("N", "."))
        pats.add(m.translate(_RC)[::-1].replace("N", "."))
    return re.compile("(?=(" + "|".join(sorted(pats)) + "))")


def _markov_background(length: int, rng: np.random.Generator, table: np.ndarray) -> str:
    """Order-2 Markov sequence; table (16, 4) gives P(next | previous two bases)."""
    cum = table.cumsum(1)
    u = rng.random(length)
    out = np.empty(length, dtype=np.int64)
    out[:2] = rng.integers(0, 4, 2)
    for i in range(2, length):  # ~1 us per base; the default genome is 0.4 Mb
        out[i] = np.searchsorted(cum[out[i - 2] * 4 + out[i - 1]], u[i], side="right")
    return _BASES[np.minimum(out, 3)].tobytes().decode()


def _scrub(seq: str, rng: np.random.Generator) -> str:
    """Mutate one base inside every motif hit (either strand) until none is left."""
    pattern, chars = _motif_regex(), list(seq)
    while True:
        hits = [m.start() for m in pattern.finditer("".join(chars))]
        if not hits:
            return "".join(chars)
        for start in hits:
            pos = start + int(rng.integers(0, 6))
            chars[pos] = "ACGT"[(("ACGT".index(chars[pos])) + int(rng.integers(1, 4))) % 4]


def _plant(chars: list[str], start: int, window: int, rng: np.random.Generator) -> None:
    for _ in range(int(rng.integers(1, 3))):
        motif = list(MOTIFS.values())[int(rng.integers(0, len(MOTIFS)))]
        motif = "".join("ACGT"[int(rng.integers(0, 4))] if c == "N" else c for c in motif)
        if rng.random() < 0.5:
            motif = motif.translate(_RC)[::-1]
        pos = start + int(rng.integers(0, window - len(motif) + 1))
        chars[pos:pos + len(motif)] = list(motif)


def unigram_entropy(sequence: str) -> float:
    """Entropy in nats of the A/C/G/T frequencies of `sequence` (other characters ignored)."""
    counts = np.array([sequence.count(b) for b in "ACGT"], dtype=np.float64)
    p = counts / counts.sum()
    return float(-(p[p > 0] * np.log(p[p > 0])).sum())


def markov2_entropy(sequence: str) -> float:
    """Empirical conditional entropy H(x_t | x_{t-2}, x_{t-1}) in nats over A/C/G/T (the background's rate)."""
    idx = np.frombuffer(sequence.encode(), dtype=np.uint8)
    code = np.full(256, -1, dtype=np.int64)
    code[list(b"ACGT")] = np.arange(4)
    c = code[idx]
    ok = (c[:-2] >= 0) & (c[1:-1] >= 0) & (c[2:] >= 0)
    counts = np.bincount((c[:-2] * 16 + c[1:-1] * 4 + c[2:])[ok], minlength=64).reshape(16, 4).astype(float)
    p_ctx = counts.sum(1) / counts.sum()
    p_next = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.nansum(np.where(p_next > 0, p_next * np.log(p_next), 0.0), axis=1)
    return float((p_ctx * h).sum())


def generate_genome(out_dir: str | Path, n_contigs: int = 8, contig_length: int = 100_000, window: int = 128,
                    seed: int = 0) -> dict[str, Path]:
    """Write genome.fa, regions.bed and stats.json into a parameter-named sub-folder of out_dir, once
    (a complete earlier set is reused).

    Each contig is tiled with non-overlapping windows of `window` bp, each positive (label 1,
    motifs planted) with probability 1/2, else negative (label 0); the first contigs are train, the second to
    last val, the last test. A 200 bp run of N at each contig start mimics assembly gaps (not in any
    interval). Returns {"fasta": ..., "bed": ..., "stats": ...}.
    """
    # One sub-folder per parameter set, so configs with different windows never overwrite each other.
    out = Path(out_dir).expanduser() / f"genome_c{n_contigs}_len{contig_length}_w{window}_seed{seed}"
    paths = {"fasta": out / "genome.fa", "bed": out / "regions.bed", "stats": out / "stats.json"}
    tag = dict(n_contigs=n_contigs, contig_length=contig_length, window=window, seed=seed, version=1)
    if paths["stats"].is_file() and all(p.is_file() for p in paths.values()):
        if json.loads(paths["stats"].read_text()).get("params") == tag:
            return paths
    if n_contigs < 3:
        raise ValueError(f"n_contigs must be >= 3 (train, val and test contigs), got {n_contigs}")
    rng = np.random.default_rng(seed)
    table = rng.dirichlet(np.full(4, 0.7), size=16)  # peaked transitions: ~1.2 nats conditional entropy
    out.mkdir(parents=True, exist_ok=True)
    gap = 200
    fasta_lines, bed_lines, background = [], [], []
    for c in range(n_contigs):
        name = f"chr{c + 1}"
        split = "train" if c < n_contigs - 2 else ("val" if c == n_contigs - 2 else "test")
        seq = _scrub(_markov_background(contig_length - gap, rng, table), rng)
        background.append(seq)
        chars = list("N" * gap + seq)
        for start in range(gap, contig_length - window + 1, window):
            label = int(rng.random() < 0.5)
            if label:
                _plant(chars, start, window, rng)
            bed_lines.append(f"{name}\t{start}\t{start + window}\t{label}\t{split}")
        seq = "".join(chars)
        fasta_lines.append(f">{name} synthetic contig {c + 1}")
        fasta_lines.extend(seq[i:i + 80] for i in range(0, len(seq), 80))
    # Each file appears whole or not at all (concurrent DDP ranks write identical bytes); stats.json last,
    # since it marks the set complete.
    atomic_write(paths["fasta"], "\n".join(fasta_lines) + "\n")
    atomic_write(paths["bed"], "\n".join(bed_lines) + "\n")
    bg = "".join(background)
    atomic_write(paths["stats"], json.dumps({"params": tag, "unigram_entropy_nats": unigram_entropy(bg),
                                             "markov2_entropy_nats": markov2_entropy(bg),
                                             "uniform_entropy_nats": math.log(4)}, indent=2))
    return paths


def _read_own_fasta(path: Path) -> dict[str, str]:
    """The generated genome.fa (well-formed by construction) -> {record id: sequence}."""
    records, name, lines = {}, None, []
    for line in path.read_text().splitlines():
        if line.startswith(">"):
            if name is not None:
                records[name] = "".join(lines)
            name, lines = line[1:].split()[0], []
        else:
            lines.append(line.strip())
    if name is not None:
        records[name] = "".join(lines)
    return records


def plant_variants(genome_paths: dict[str, Path], n_variants: int = 200, split: str = "test", seed: int = 0) -> Path:
    """Write SNVs for the generated genome (`generate_genome`'s return value) as a VCF-like TSV, once.

    Half of them (label 1) change a fixed (non-N) base of a planted motif inside a positive window of `split`,
    destroying that motif; the other half (label 0) change a base of a negative window, checked not to create
    a motif. Columns: chrom, pos (1-based, as VCF), ref, alt, label. Returns the path
    (`variants_n<n>_<split>_seed<seed>.tsv` next to genome.fa).
    """
    if n_variants < 2:
        raise ValueError(f"n_variants must be >= 2 (both labels), got {n_variants}")
    out = Path(genome_paths["fasta"]).parent / f"variants_n{n_variants}_{split}_seed{seed}.tsv"
    if out.is_file():
        return out
    genome = _read_own_fasta(Path(genome_paths["fasta"]))
    windows = {0: [], 1: []}
    for line in Path(genome_paths["bed"]).read_text().splitlines():
        chrom, start, end, label, sp = line.split("\t")
        if sp == split:
            windows[int(label)].append((chrom, int(start), int(end)))
    if not windows[0] or not windows[1]:
        raise ValueError(f"{genome_paths['bed']}: split {split!r} needs positive and negative windows")
    rng = np.random.default_rng(seed)
    pattern = _motif_regex()
    fixed = [m.replace("N", ".") for m in MOTIFS.values()]
    fixed += [m.translate(_RC)[::-1].replace("N", ".") for m in MOTIFS.values()]
    rows, seen, attempts = [], set(), 0
    while len(rows) < n_variants:
        attempts += 1
        if attempts > 100 * n_variants:
            raise ValueError(f"could not place {n_variants} distinct variants in the {split} windows; ask for fewer")
        label = len(rows) % 2  # alternate: label 0, 1, 0, 1, ...
        chrom, start, end = windows[label][int(rng.integers(len(windows[label])))]
        seq = genome[chrom]
        if label:
            hits = [m for m in pattern.finditer(seq, start, end) if m.start() + len(m.group(1)) <= end]
            if not hits:
                continue
            hit = hits[int(rng.integers(len(hits)))]
            text = hit.group(1)
            motif = next(p for p in fixed if len(p) == len(text) and re.fullmatch(p, text))
            positions = [i for i, c in enumerate(motif) if c != "."]
            pos = hit.start() + positions[int(rng.integers(len(positions)))]
        else:
            pos = int(rng.integers(start, end))
        ref = seq[pos]
        alt = "ACGT"[("ACGT".index(ref) + int(rng.integers(1, 4))) % 4]
        context = seq[max(pos - 20, 0):pos] + alt + seq[pos + 1:pos + 21]
        if (chrom, pos) in seen or (not label and pattern.search(context)):
            continue
        seen.add((chrom, pos))
        rows.append(f"{chrom}\t{pos + 1}\t{ref}\t{alt}\t{label}")
    atomic_write(out, "#chrom\tpos\tref\talt\tlabel\n" + "\n".join(rows) + "\n")
    return out
