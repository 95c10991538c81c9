"""Embedding export: record loading from every source, predict_step values vs a direct computation, RC
invariance, the writer's files and order, and loading a classifier checkpoint's backbone."""

import csv

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from mambasuite.bio.embeddings import DNAEmbedder, DNAPredictDataModule, EmbeddingWriter, load_records
from mambasuite.bio.models import Caduceus
from mambasuite.bio.tasks import DNASequenceClassifier
from mambasuite.bio.tokenizer import DNATokenizer, reverse_complement_ids

QUIET = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)


@pytest.fixture()
def seq_csv(tmp_path):
    rng = np.random.default_rng(0)
    f = tmp_path / "seqs.csv"
    rows = ["".join(rng.choice(list("ACGT"), 24)) for _ in range(7)]
    f.write_text("sequence,label,split\n" + "".join(f"{s},{i % 2},{'test' if i < 5 else 'train'}\n"
                                                    for i, s in enumerate(rows)))
    return f, rows


def test_load_records_from_each_source(tmp_path, seq_csv, gb_folder, hg38_like):
    f, rows = seq_csv
    recs = load_records(csv_path=str(f), split="test")
    assert [r.id for r in recs] == [f"row {i}" for i in range(1, 6)] and recs[0].sequence == rows[0]
    fasta, bed = hg38_like
    windows = load_records(fasta=str(fasta), bed=str(bed), split="val", seq_len=50)
    assert [r.id for r in windows] == ["chr2:1175-1225"] and len(windows[0].sequence) == 50
    assert [r.id for r in load_records(fasta=str(fasta))] == ["chr1", "chr2", "chrX"]
    gb = load_records(gb_dir=str(gb_folder), split="train")
    assert len(gb) == 12 and gb[0].id == "train/negative/0" and gb[-1].label == 1
    fq = tmp_path / "r.fastq"
    fq.write_text("@a\nACGT\n+\nIIII\n")
    assert [(r.id, r.sequence) for r in load_records(fastq=str(fq))] == [("a", "ACGT")]
    with pytest.raises(ValueError, match="exactly one of"):
        load_records(csv_path=str(f), fastq=str(fq))


def test_predict_writes_embeddings_in_input_order(tmp_path, seq_csv):
    f, rows = seq_csv
    torch.manual_seed(0)
    bb = Caduceus(d_model=8, n_layer=2, rcps=True)
    with torch.no_grad():
        for p in bb.parameters():
            p.add_(0.1 * torch.randn_like(p))
    bb.save_pretrained(tmp_path / "bb")
    model = DNAEmbedder(pretrained=str(tmp_path / "bb"))
    dm = DNAPredictDataModule(csv=str(f), seq_len=24, batch_size=3)
    pl.Trainer(callbacks=[EmbeddingWriter(str(tmp_path / "out"))], **QUIET).predict(model, datamodule=dm)
    emb = np.load(tmp_path / "out" / "embeddings.npy")
    with open(tmp_path / "out" / "index.csv") as fh:
        index = list(csv.DictReader(fh))
    assert emb.shape == (7, 8) and [r["id"] for r in index] == [f"row {i}" for i in range(1, 8)]
    assert [r["label"] for r in index] == [str(i % 2) for i in range(7)]
    ids = DNATokenizer()(rows)["input_ids"]
    with torch.no_grad():
        direct = bb.eval().pool(ids).numpy()
        rc = bb.pool(reverse_complement_ids(ids)).numpy()
    np.testing.assert_allclose(emb, direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rc, direct, rtol=1e-4, atol=1e-5)  # PS: the embedding is RC-invariant


def test_embedder_loads_a_classifier_checkpoint(tmp_path, seq_csv):
    f, rows = seq_csv
    clf = DNASequenceClassifier(num_classes=2, d_model=8, n_layer=1, conjoin=True)
    with torch.no_grad():
        for p in clf.parameters():
            p.add_(0.1)
    torch.save({"state_dict": clf.state_dict(), "pytorch-lightning_version": pl.__version__,
                "hyper_parameters": {}}, tmp_path / "clf.ckpt")
    model = DNAEmbedder(d_model=8, n_layer=1, conjoin=True)
    dm = DNAPredictDataModule(csv=str(f), seq_len=24, batch_size=4)
    pl.Trainer(callbacks=[EmbeddingWriter(str(tmp_path / "out"))], **QUIET).predict(
        model, datamodule=dm, ckpt_path=str(tmp_path / "clf.ckpt"))
    ids = DNATokenizer()(rows)["input_ids"]
    with torch.no_grad():
        direct = clf.model.caduceus.eval().pool(ids, "mean", conjoin=True).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "out" / "embeddings.npy"), direct, rtol=1e-5, atol=1e-6)


def test_writer_rejects_other_predictions(tmp_path):
    writer = EmbeddingWriter(str(tmp_path))
    with pytest.raises(TypeError, match="EmbeddingWriter needs predict_step to return"):
        writer.write_on_batch_end(None, None, torch.zeros(2, 3), None, None, 0)


def test_kmer_of_data_and_backbone_must_agree(tmp_path, seq_csv):
    f, _ = seq_csv
    dm = DNAPredictDataModule(csv=str(f), seq_len=24, kmer=3)
    with pytest.raises(ValueError, match=r"kmer=3\) has vocab_size 80, the backbone 16"):
        pl.Trainer(callbacks=[EmbeddingWriter(str(tmp_path))], **QUIET).predict(DNAEmbedder(d_model=8, n_layer=1),
                                                                                  datamodule=dm)
    emb = DNAEmbedder(d_model=8, n_layer=1, kmer=3)
    pl.Trainer(callbacks=[EmbeddingWriter(str(tmp_path))], **QUIET).predict(emb, datamodule=dm)
    assert np.load(tmp_path / "embeddings.npy").shape == (7, 8)
