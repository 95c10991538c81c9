"""FASTQ reads and the Genomic Benchmarks folder layout: parsing, labels, and errors that name the record."""

import gzip

import pytest

from mambasuite.bio.formats import read_fastq, read_genomic_benchmark

FASTQ = "@r1 first\nACGTN\n+\nIIIII\n@r2\nggca\n+\n!#%I\n"


def test_fastq_reads_and_qualities(tmp_path):
    f = tmp_path / "reads.fastq"
    f.write_text(FASTQ)
    reads = read_fastq(f)
    assert [(r.id, r.sequence, r.number) for r in reads] == [("r1", "ACGTN", 1), ("r2", "GGCA", 2)]
    assert reads[0].qualities == (40,) * 5 and reads[1].qualities == (0, 2, 4, 40)  # Phred+33
    gz = tmp_path / "reads.fastq.gz"
    with gzip.open(gz, "wt") as handle:
        handle.write(FASTQ)
    assert [r.sequence for r in read_fastq(gz)] == ["ACGTN", "GGCA"]


@pytest.mark.parametrize("text,match", [
    ("@r1\nACGT\n+\nIII\n", r"malformed FASTQ at record 1"),                  # quality length differs
    ("@r1\nACGT\n+\nIIII\n@r2\n\n+\n\n", r"read 'r2' \(record 2\) has 0 bases.*empty read"),
    ("@r1\nACGT\n+\nIIII\n@r2\nACXT\n+\nIIII\n", r"read 'r2' \(record 2\): invalid character 'X' at position 2"),
    ("", "no FASTQ records"),
    ("ACGT\n", r"malformed FASTQ at record 1"),                                # no @ header
])
def test_fastq_errors_name_the_record(tmp_path, text, match):
    f = tmp_path / "bad.fastq"
    f.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_fastq(f)


def test_fastq_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="FASTQ file not found"):
        read_fastq(tmp_path / "nope.fastq")


def test_genomic_benchmark_layout(gb_folder):
    records, classes = read_genomic_benchmark(gb_folder)
    assert classes == ["negative", "positive"]  # sorted, whatever the directory order
    assert len(records) == 24 and {r.split for r in records} == {"train", "test"}
    pos = [r for r in records if r.class_name == "positive"]
    assert all(r.label == 1 and "TATAAA" in r.sequence for r in pos)
    assert all(r.sequence.isupper() and len(r.sequence) == 30 for r in records)


def test_genomic_benchmark_errors(gb_folder):
    (gb_folder / "test" / "positive").rename(gb_folder / "test" / "other")
    with pytest.raises(ValueError, match=r"train classes \['negative', 'positive'\] differ from test classes"):
        read_genomic_benchmark(gb_folder)
    (gb_folder / "test" / "other").rename(gb_folder / "test" / "positive")
    (gb_folder / "train" / "negative" / "3.txt").write_text("ACGU\n")
    with pytest.raises(ValueError, match=r"negative/3.txt: invalid character 'U' at position 3"):
        read_genomic_benchmark(gb_folder)
    (gb_folder / "train" / "negative" / "3.txt").write_text("\n")
    with pytest.raises(ValueError, match=r"3.txt: empty sequence file"):
        read_genomic_benchmark(gb_folder)
    with pytest.raises(FileNotFoundError, match="missing the test/ folder"):
        (gb_folder / "solo" / "train" / "a").mkdir(parents=True)
        read_genomic_benchmark(gb_folder / "solo")


def test_corrupt_files_give_value_errors(tmp_path, gb_folder):
    gz = tmp_path / "r.fastq.gz"
    gz.write_bytes(gzip.compress(FASTQ.encode())[:-12])  # truncated archive
    with pytest.raises(ValueError, match="malformed FASTQ"):
        read_fastq(gz)
    (tmp_path / "bin.fastq").write_bytes(b"@r\xff\xfe\nAC\n+\nII\n")
    with pytest.raises(ValueError, match="bin.fastq"):
        read_fastq(tmp_path / "bin.fastq")
    (gb_folder / "train" / "negative" / "0.txt").write_bytes(b"\xff\xfeAC")
    with pytest.raises(ValueError, match="0.txt: not a text sequence file"):
        read_genomic_benchmark(gb_folder)
