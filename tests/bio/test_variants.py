"""Variant-effect scoring: TSV parsing and errors, windows, the LLR arithmetic against direct computations
(masked-marginal, causal by prefix loop, conjoined strands), planted variants, and the writer's summary."""

import re

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from mambasuite.bio.data import FastaGenome
from mambasuite.bio.synthetic import MOTIFS, generate_genome, plant_variants
from mambasuite.bio.tokenizer import MASK_ID, VOCAB
from mambasuite.bio.variants import (VariantDataModule, VariantEffectScorer, VariantScoreWriter, VariantWindows,
                                     read_variants)

RC = str.maketrans("ACGT", "TGCA")


@pytest.fixture()
def genome(tmp_path):
    rng = np.random.default_rng(0)
    fa = tmp_path / "g.fa"
    seqs = {"chrA": "".join(rng.choice(list("ACGT"), 60)), "chrB": "".join(rng.choice(list("ACGT"), 40))}
    fa.write_text("".join(f">{k}\n{v}\n" for k, v in seqs.items()))
    return fa, seqs


def _tsv(tmp_path, text):
    f = tmp_path / "v.tsv"
    f.write_text(text)
    return f


def test_read_variants(tmp_path):
    f = _tsv(tmp_path, "##comment\nchrom\tpos\tref\talt\tlabel\nchrA\t5\ta\tG\t1\nchrB 7 CT GA\n")
    v = read_variants(f)
    assert [(x.chrom, x.pos, x.ref, x.alt, x.label, x.line) for x in v] == [
        ("chrA", 5, "A", "G", 1, 3), ("chrB", 7, "CT", "GA", -1, 4)]


@pytest.mark.parametrize("line,match", [
    ("chrA\t5\tA\n", "expected 4 or 5 columns"),
    ("chrA\tfive\tA\tG\n", "pos and label must be integers"),
    ("chrA\t0\tA\tG\n", "pos is 1-based"),
    ("chrA\t5\tA\tR\n", "ref and alt must be non-empty A/C/G/T"),
    ("chrA\t5\tA\tGG\n", "only substitutions are supported"),
    ("chrA\t5\tA\tA\n", "alt equals ref"),
])
def test_read_variants_errors_name_the_line(tmp_path, line, match):
    f = _tsv(tmp_path, "chrA\t1\tA\tC\n" + line)
    with pytest.raises(ValueError, match=f"v.tsv:2: {match}"):
        read_variants(f)


def test_windows_and_reference_checks(tmp_path, genome):
    fa, seqs = genome
    g = FastaGenome(fa)
    ref = seqs["chrA"][2]
    alt = "ACGT"[("ACGT".index(ref) + 1) % 4]
    edge = [v for v in read_variants(_tsv(tmp_path, f"chrA\t3\t{ref}\t{alt}\n"))]
    ds = VariantWindows(g, edge, window=16)
    ref_ids, alt_ids, offset, length, row = ds[0]
    assert offset.item() == 2 and length.item() == 1  # window shifted inside the contig: [0, 16)
    assert (ref_ids != alt_ids).nonzero().flatten().tolist() == [2] and alt_ids[2].item() == VOCAB[alt]
    wrong = "ACGT"[("ACGT".index(ref) + 2) % 4]
    with pytest.raises(ValueError, match=rf"v.tsv:1: ref '{wrong}' does not match the genome at chrA:3 \('{ref}'\)"):
        VariantWindows(g, read_variants(_tsv(tmp_path, f"chrA\t3\t{wrong}\t{alt}\n")), 16, source=str(tmp_path / "v.tsv"))
    with pytest.raises(ValueError, match="lies outside the contig"):
        VariantWindows(g, read_variants(_tsv(tmp_path, "chrB\t41\tA\tC\n")), 16)
    with pytest.raises(ValueError, match="contig 'chrZ' is not in"):
        VariantWindows(g, read_variants(_tsv(tmp_path, "chrZ\t4\tA\tC\n")), 16)
    b_ref = seqs["chrB"][3]
    b_alt = "ACGT"[("ACGT".index(b_ref) + 1) % 4]
    with pytest.raises(ValueError, match="longer than contig 'chrB'"):
        VariantWindows(g, read_variants(_tsv(tmp_path, f"chrB\t4\t{b_ref}\t{b_alt}\n")), 50)


def _scorer(bidirectional: bool, **kw) -> VariantEffectScorer:
    torch.manual_seed(0)
    scorer = VariantEffectScorer(d_model=8, n_layer=2, bidirectional=bidirectional, **kw).eval()
    with torch.no_grad():
        for p in scorer.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return scorer


def _variants(tmp_path, seqs):
    rows, rng = [], np.random.default_rng(3)
    for chrom, pos in (("chrA", 30), ("chrA", 58), ("chrB", 1), ("chrB", 20)):
        ref = seqs[chrom][pos - 1]
        rows.append(f"{chrom}\t{pos}\t{ref}\t{'ACGT'[('ACGT'.index(ref) + int(rng.integers(1, 4))) % 4]}\t{pos % 2}")
    return read_variants(_tsv(tmp_path, "\n".join(rows) + "\n"))


def _ids(text: str) -> torch.Tensor:
    return torch.tensor([[VOCAB[c] for c in text]])


def _window_strings(seqs, v, window):
    n = len(seqs[v.chrom])
    start = min(max(v.pos - 1 - window // 2, 0), n - window)
    ref = seqs[v.chrom][start:start + window]
    off = v.pos - 1 - start
    return ref, ref[:off] + v.alt + ref[off + 1:], off


def _batch(ds):
    return [torch.stack(x) for x in zip(*(ds[i] for i in range(len(ds))))]


def test_masked_llr_matches_direct_computation(tmp_path, genome):
    fa, seqs = genome
    variants = _variants(tmp_path, seqs)
    ds = VariantWindows(FastaGenome(fa), variants, window=20)
    for conjoin in (False, True):
        scorer = _scorer(True, conjoin=conjoin)
        with torch.no_grad():
            out = scorer.predict_step(_batch(ds), 0)
        for i, v in enumerate(variants):
            ref, alt, off = _window_strings(seqs, v, 20)
            strands = [(ref, off)] + ([(ref.translate(RC)[::-1], 19 - off)] if conjoin else [])
            llrs = []
            for text, o in strands:
                ids = _ids(text)
                ids[0, o] = MASK_ID
                with torch.no_grad():
                    lp = scorer.model(ids)[0, o].log_softmax(-1)
                base_ref = text[o]
                base_alt = alt[off] if o == off else alt[off].translate(RC)
                llrs.append((lp[VOCAB[base_alt]] - lp[VOCAB[base_ref]]).item())
            assert out["llr"][i].item() == pytest.approx(np.mean(llrs), abs=1e-5), (i, conjoin)
        assert out["row"].tolist() == [0, 1, 2, 3]


def test_causal_llr_matches_prefix_loop(tmp_path, genome):
    fa, seqs = genome
    variants = _variants(tmp_path, seqs)[:2]
    ds = VariantWindows(FastaGenome(fa), variants, window=12)
    scorer = _scorer(False)
    assert scorer.objective == "causal"
    with torch.no_grad():
        out = scorer.predict_step(_batch(ds), 0)

        def loglik(text):  # one forward per prefix: uses only causality, not the batched shift
            ids = _ids(text)
            return sum(scorer.model(ids[:, :t])[0, -1].log_softmax(-1)[ids[0, t]].item() for t in range(1, len(text)))

        for i, v in enumerate(variants):
            ref, alt, _ = _window_strings(seqs, v, 12)
            assert out["llr"][i].item() == pytest.approx(loglik(alt) - loglik(ref), abs=1e-4)
    with pytest.raises(ValueError, match="needs a bidirectional model"):
        VariantEffectScorer(d_model=8, n_layer=1, bidirectional=False, objective="masked")


def test_planted_variants_break_motifs(tmp_path):
    paths = generate_genome(tmp_path, n_contigs=3, contig_length=4000, window=100, seed=1)
    variants = read_variants(plant_variants(paths, n_variants=40))
    genome = FastaGenome(paths["fasta"])
    patterns = [m.replace("N", ".") for m in MOTIFS.values()]
    patterns += [m.translate(str.maketrans("ACGTN", "TGCAN"))[::-1].replace("N", ".") for m in MOTIFS.values()]
    any_motif = re.compile("|".join(patterns))
    assert sum(v.label == 1 for v in variants) == sum(v.label == 0 for v in variants) == 20
    for v in variants:
        lo = max(v.pos - 1 - 20, 0)
        before = genome.fetch(v.chrom, lo, v.pos + 20)
        k = v.pos - 1 - lo
        after = before[:k] + v.alt + before[k + 1:]
        hits_before = {(m.start(), m.group()) for p in patterns for m in re.finditer(f"(?=({p}))", before)
                       if m.start() <= k < m.start() + len(m.group(1))}
        if v.label == 1:
            assert hits_before, v  # the changed base lies in a motif occurrence ...
            assert not any(re.fullmatch(p, after[s:s + len(t)]) for s, t in hits_before for p in patterns), v
        else:
            assert not any_motif.search(after), v  # ... or the change creates none


def test_writer_files_and_auroc(tmp_path):
    from sklearn.metrics import roc_auc_score

    dm = VariantDataModule(window=64, n_variants=20, cache_dir=str(tmp_path / "cache"),
                           genome_kwargs=dict(n_contigs=3, contig_length=3000))
    scorer = _scorer(True)
    pl.Trainer(logger=False, enable_progress_bar=False, accelerator="cpu", devices=1,
               callbacks=[VariantScoreWriter(str(tmp_path / "out"))]).predict(scorer, datamodule=dm)
    lines = [line.split("\t") for line in (tmp_path / "out" / "variant_scores.tsv").read_text().splitlines()[1:]]
    assert [(c[0], int(c[1])) for c in lines] == [(v.chrom, v.pos) for v in dm.records]
    labels, llr = [int(c[4]) for c in lines], [float(c[5]) for c in lines]
    assert all(abs(float(c[5]) - (float(c[7]) - float(c[6]))) < 1e-4 for c in lines)
    summary = __import__("json").loads((tmp_path / "out" / "variant_summary.json").read_text())
    assert summary["auroc"] == pytest.approx(roc_auc_score(labels, [-x for x in llr]), abs=1e-3)
