"""FASTA/BED/CSV loaders, windows, RC augmentation, N handling, errors, and the generated default genome."""

import json
import math

import pytest
import torch

from mambasuite.bio.data import (DNAClassificationDataModule, DNAPretrainDataModule, FastaGenome, GenomeWindows,
                                 Interval, read_bed, read_sequence_csv)
from mambasuite.bio.synthetic import MOTIFS, generate_genome, markov2_entropy, unigram_entropy
from mambasuite.bio.tokenizer import PAD_ID, DNATokenizer


@pytest.fixture()
def genome_files(tmp_path):
    fa = tmp_path / "g.fa"
    fa.write_text(">chrA first\nACGTACGTAC\nGTNNacgt\n>chrB\nTTTTGGGGCCCCAAAA\n>chrC\nACGTACGTACGTACGT\n")
    bed = tmp_path / "r.bed"
    bed.write_text("# comment\nchrA\t0\t4\t1\ttrain\nchrB\t8\t16\t0\tval\nchrC 2 6 1 test\n")
    return fa, bed


def test_fasta_fetch_and_bed(genome_files):
    fa, bed = genome_files
    g = FastaGenome(fa)
    assert g.names() == ["chrA", "chrB", "chrC"]
    assert g.length("chrA") == 18 and g.fetch("chrA", 10, 18) == "GTNNACGT"  # upper-cased, lines joined
    ivs = read_bed(bed, g)
    assert ivs[0] == Interval("chrA", 0, 4, 1, "train", 2)
    assert [iv.split for iv in ivs] == ["train", "val", "test"]


def test_windows_centre_shift_and_rc_aug(genome_files):
    fa, bed = genome_files
    g = FastaGenome(fa)
    ivs = read_bed(bed, g)
    ds = GenomeWindows(g, ivs, seq_len=6)
    ids, label = ds[1]  # chrB 8-16 centred at 12 -> 9..15
    assert DNATokenizer().decode(ids) == "CCCAAA" and label.item() == 0
    ids0, _ = ds[0]  # chrA 0-4 centred at 2 -> shifted to 0..6
    assert DNATokenizer().decode(ids0) == "ACGTAC"
    torch.manual_seed(0)
    aug = GenomeWindows(g, ivs, seq_len=6, rc_aug=True)
    seen = {DNATokenizer().decode(aug[1][0]) for _ in range(40)}
    assert seen == {"CCCAAA", "TTTGGG"}


def test_n_becomes_pad_for_pretraining(genome_files):
    fa, _ = genome_files
    g = FastaGenome(fa)
    ids, _ = GenomeWindows(g, [Interval("chrA", 10, 18)], seq_len=8, n_to_pad=True)[0]
    assert ids.tolist()[2:4] == [PAD_ID, PAD_ID]


def test_bed_errors_name_the_line(genome_files, tmp_path):
    fa, _ = genome_files
    g = FastaGenome(fa)
    bad = tmp_path / "bad.bed"
    bad.write_text("chrA\t0\t4\t1\nchrB\t10\t17\t0\n")
    with pytest.raises(ValueError, match=r"bad.bed:2: interval chrB:10-17 extends past the end .*length 16"):
        read_bed(bad, g)
    bad.write_text("chrZ\t0\t4\n")
    with pytest.raises(ValueError, match=r"bad.bed:1: contig 'chrZ'"):
        read_bed(bad, g)
    bad.write_text("chrA\t5\t2\n")
    with pytest.raises(ValueError, match=r"bad.bed:1: need 0 <= start < end"):
        read_bed(bad)


def test_fasta_errors(tmp_path):
    fa = tmp_path / "e.fa"
    fa.write_text(">empty\n>ok\nACGT\n")
    g = FastaGenome(fa)
    with pytest.raises(ValueError, match="record 'empty' is empty"):
        g.sequence("empty")
    with pytest.raises(FileNotFoundError, match="FASTA file not found"):
        FastaGenome(tmp_path / "missing.fa")
    fa.write_text(">chrX\nACGTRYACGT\n")
    ds = GenomeWindows(FastaGenome(fa), [Interval("chrX", 0, 10)], seq_len=10)
    with pytest.raises(ValueError, match=r"record 'chrX' window 0-10: invalid character 'R' at position 4"):
        ds[0]


def test_csv_loader_and_errors(tmp_path):
    f = tmp_path / "s.csv"
    f.write_text("sequence,label\nACGT,1\nggaa,0\n")
    assert [(r[0], r[1]) for r in read_sequence_csv(f)] == [("ACGT", 1), ("ggaa", 0)]
    f.write_text("sequence,label\nACGT,1\nACXT,0\n")
    with pytest.raises(ValueError, match=r"row 2: invalid character 'X' at position 2"):
        read_sequence_csv(f)
    f.write_text("sequence,label\n,1\n")
    with pytest.raises(ValueError, match="row 1 has an empty sequence"):
        read_sequence_csv(f)
    f.write_text("seq,label\nACGT,1\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['sequence'\]"):
        read_sequence_csv(f)


def test_csv_datamodule_pads_left_and_splits(tmp_path):
    f = tmp_path / "s.csv"
    f.write_text("sequence,label,split\n" + "".join(f"{'ACGT' * (1 + i % 3)},{i % 2},{('train', 'val', 'test')[i % 3]}\n"
                                                    for i in range(12)))
    dm = DNAClassificationDataModule(csv=str(f), seq_len=10, batch_size=4)
    dm.setup()
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 4, "val": 4, "test": 4}
    ids, labels = next(iter(dm.val_dataloader()))
    # first val row is 'ACGT' * 2: 8 bases left-padded to 10
    assert ids.shape == (4, 10) and ids[0, :2].eq(PAD_ID).all() and ids[0, 2:].ne(PAD_ID).all()
    with pytest.raises(ValueError, match=r"labels \[2\] outside 0..1"):
        f.write_text("sequence,label\nACGT,2\n")
        DNAClassificationDataModule(csv=str(f), seq_len=4).setup()


def test_generated_genome_read_back(tmp_path):
    paths = generate_genome(tmp_path, n_contigs=3, contig_length=3000, window=100, seed=3)
    stats = json.loads(paths["stats"].read_text())
    assert 1.2 < stats["unigram_entropy_nats"] < math.log(4)
    assert stats["markov2_entropy_nats"] < stats["unigram_entropy_nats"] - 0.1
    g = FastaGenome(paths["fasta"])
    ivs = read_bed(paths["bed"], g)
    assert {iv.split for iv in ivs} == {"train", "val", "test"}
    motif_re = __import__("re").compile("|".join(m.replace("N", ".") for m in MOTIFS.values()) + "|" +
                                        "|".join(m.translate(str.maketrans("ACGTN", "TGCAN"))[::-1].replace("N", ".")
                                                 for m in MOTIFS.values()))
    pos = [bool(motif_re.search(g.fetch(iv.chrom, iv.start, iv.end))) for iv in ivs if iv.label == 1]
    neg = [bool(motif_re.search(g.fetch(iv.chrom, iv.start, iv.end))) for iv in ivs if iv.label == 0]
    assert all(pos) and not any(neg) and len(pos) > 5 and len(neg) > 5
    # idempotent: a second call reuses the files
    mtime = paths["fasta"].stat().st_mtime_ns
    assert generate_genome(tmp_path, n_contigs=3, contig_length=3000, window=100, seed=3)["fasta"].stat().st_mtime_ns == mtime


def test_pretrain_datamodule_on_default_genome(tmp_path):
    dm = DNAPretrainDataModule(cache_dir=str(tmp_path), seq_len=64, batch_size=8,
                               genome_kwargs=dict(n_contigs=3, contig_length=2000))
    dm.prepare_data()
    dm.setup()
    # chr1 train, chr2 val, chr3 test; 31 windows per contig, of which the 200 bp N gap drops 4
    # (3 all-N windows and one with 8/64 = 12.5% N > max_n_fraction 10%)
    assert len(dm.datasets["train"]) == len(dm.datasets["val"]) == len(dm.datasets["test"]) == 27
    ids, _ = next(iter(dm.train_dataloader()))
    assert ids.shape == (8, 64) and ((ids >= 7) & (ids <= 10) | (ids == PAD_ID)).all()


def test_entropy_helpers():
    assert unigram_entropy("ACGT" * 10) == pytest.approx(math.log(4))
    assert markov2_entropy("ACGT" * 50) == pytest.approx(0.0, abs=1e-9)


# ---- hg38-style BED, interval tiling, Genomic Benchmarks / FASTQ / k-mer data modules -----------------------

from mambasuite.bio.data import tile_intervals  # noqa: E402
from mambasuite.bio.tokenizer import KmerTokenizer  # noqa: E402


def test_bed_with_split_in_fourth_column(hg38_like):
    fasta, bed = hg38_like
    ivs = read_bed(bed, FastaGenome(fasta))
    assert [(iv.label, iv.split) for iv in ivs] == [(-1, "train"), (-1, "train"), (-1, "val"), (-1, "test")]


def test_tile_intervals_extends_and_cuts():
    tiles = tile_intervals([Interval("c", 1000, 1100, -1, "val", 3)], extend_to=400, seq_len=100)
    assert [(t.start, t.end) for t in tiles] == [(850, 950), (950, 1050), (1050, 1150), (1150, 1250)]
    assert {t.split for t in tiles} == {"val"}
    with pytest.raises(ValueError, match="multiple of seq_len"):
        tile_intervals([], extend_to=150, seq_len=100)


def test_pretrain_windows_from_hg38_style_bed(hg38_like):
    fasta, bed = hg38_like
    dm = DNAPretrainDataModule(fasta=str(fasta), bed=str(bed), seq_len=64, bed_extend=256, rc_aug=False,
                               max_n_fraction=1.0, batch_size=4)
    dm.setup()
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 8, "val": 4, "test": 4}
    genome = FastaGenome(fasta)
    ids, label = dm.datasets["val"][0]  # chr2 1000-1400, centre 1200 -> tiles from 1072
    assert DNATokenizer().decode(ids) == genome.fetch("chr2", 1072, 1136) and label.item() == -1


def test_classification_from_genomic_benchmark(gb_folder):
    dm = DNAClassificationDataModule(gb_dir=str(gb_folder), seq_len=40, batch_size=4, val_fraction=0.25, rc_aug=True)
    dm.setup()
    assert dm.classes == ["negative", "positive"]
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 9, "val": 3, "test": 12}
    ids, labels = next(iter(dm.test_dataloader()))
    assert ids.shape == (4, 40) and ids[:, :10].eq(PAD_ID).all()  # 30 bases left-padded to 40
    with pytest.raises(ValueError, match="2 classes .* but num_classes=3"):
        DNAClassificationDataModule(gb_dir=str(gb_folder), num_classes=3).setup()
    with pytest.raises(ValueError, match="pass one data source, got csv and gb_dir"):
        DNAClassificationDataModule(csv="x.csv", gb_dir=str(gb_folder))


def test_pretrain_from_fastq(tmp_path):
    f = tmp_path / "r.fastq"
    f.write_text("".join(f"@read{i}\n{'ACGTN'[i % 5] * 3}ACGTACGT\n+\n{'I' * 11}\n" for i in range(20)))
    dm = DNAPretrainDataModule(fastq=str(f), seq_len=12, batch_size=4, max_n_fraction=0.5)
    dm.setup()
    assert sum(len(d) for d in dm.datasets.values()) == 20
    ids, _ = dm.datasets["train"][0]
    assert ids.shape == (12,) and ids[0] == PAD_ID and not (ids == 11).any()  # N -> [PAD]
    with pytest.raises(ValueError, match="either fastq or fasta"):
        DNAPretrainDataModule(fastq=str(f), fasta="g.fa")


def test_kmer_windows_and_rc_on_bases(genome_files):
    fa, bed = genome_files
    g = FastaGenome(fa)
    tok = KmerTokenizer(2)
    ds = GenomeWindows(g, read_bed(bed, g), seq_len=6, tokenizer=tok)
    assert tok.decode(ds[1][0]) == "CCCAAA" and ds[1][0].shape == (3,)
    torch.manual_seed(0)
    aug = GenomeWindows(g, read_bed(bed, g), seq_len=6, rc_aug=True, tokenizer=tok)
    assert {tok.decode(aug[1][0]) for _ in range(30)} == {"CCCAAA", "TTTGGG"}
