"""Bad and hostile FASTA / BED / CSV files give a ValueError naming the file; a bounded hypothesis fuzz of the text
parsers checks that any input either parses into well-formed records or fails that way (never another exception)."""

from __future__ import annotations

import os
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mambasuite.bio.data import SPLITS, FastaGenome, GenomeWindows, read_bed, read_sequence_csv

FASTA_CASES = {
    "binary.fa": os.urandom(400) + b"\xff\xfe",
    "duplicate.fa": b">chr1\nACGT\n>chr1\nACGT\n",
    "empty_id.fa": b">\nACGT\n",
    "latin1.fa": ">chr1\nACGT\xe9\n".encode("latin-1"),
    "empty.fa": b"",
    "header_only.fa": b">chr1\n",
    "not_fasta.fa": b"just some words\n",
}


@pytest.mark.parametrize("name", sorted(FASTA_CASES))
def test_bad_fasta_files_name_the_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(FASTA_CASES[name])
    with pytest.raises(ValueError, match=name):
        genome = FastaGenome(path)
        for chrom in genome.names():
            genome.sequence(chrom)


def test_invalid_bases_fail_at_fetch_naming_file_and_record(tmp_path):
    path = tmp_path / "nul.fa"
    path.write_bytes(b">chr1\nACGT\x00ACGTACGT\n")
    genome = FastaGenome(path)
    windows = GenomeWindows(genome, read_bed_text(tmp_path, "chr1\t0\t8\t1\n"), seq_len=8)
    with pytest.raises(ValueError, match=r"nul\.fa.*chr1"):
        windows[0]


def read_bed_text(tmp_path, text: str):
    path = tmp_path / "x.bed"
    path.write_text(text)
    return read_bed(path)


@pytest.mark.parametrize("content", [os.urandom(300) + b"\xff", b"chr1\t0\t10\xff\n"], ids=["binary", "bad-utf8"])
def test_binary_bed_names_the_file(tmp_path, content):
    path = tmp_path / "bad.bed"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="bad.bed"):
        read_bed(path)


@pytest.mark.parametrize(("content", "match"), [
    (os.urandom(300) + b"\xff", "bad.csv: not a UTF-8"),
    (b"sequence,label\nACGT,1,5,6\n", "row 1 has more fields"),
    (b'sequence,label\n"ACGT\n', "bad.csv"),
    (b"", "missing column"),
])
def test_bad_csv_names_the_file(tmp_path, content, match):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        read_sequence_csv(path)


# --------------------------------------------------------------------------------------------- fuzzing
FUZZ = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
_TOKENS = st.sampled_from([">", ">chr1", ">chr2 description", "ACGT", "acgtn", "NNNN", "\n", "\r\n", " ", "\t",
                           "X", "\x00", "é", ";comment", ">>", "0", "-1", "1", "train", "val", "#", "track"])
_TEXT = st.one_of(st.lists(_TOKENS, max_size=40).map("".join), st.text(max_size=200))


@FUZZ
@given(text=_TEXT)
def test_fuzz_fasta(tmp_path, text):
    path = tmp_path / "fuzz.fa"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        genome = FastaGenome(path)
        for chrom in genome.names():
            seq = genome.sequence(chrom)
            assert seq and seq == seq.upper()
    except ValueError as err:
        assert str(path) in str(err)


@FUZZ
@given(lines=st.lists(st.one_of(
    st.builds(lambda c, s, e, rest: "\t".join([c, str(s), str(e), *rest]),
              st.sampled_from(["chr1", "chr2", "chrX", ""]), st.integers(-5, 50), st.integers(-5, 60),
              st.lists(st.sampled_from(["0", "1", ".", "train", "val", "test", "junk", "2.5"]), max_size=3)),
    st.text(alphabet=string.printable, max_size=30)), max_size=12))
def test_fuzz_bed(tmp_path, lines):
    path = tmp_path / "fuzz.bed"
    path.write_text("\n".join(lines))
    try:
        intervals = read_bed(path)
    except ValueError as err:
        assert str(path) in str(err)
    else:
        assert intervals and all(0 <= iv.start < iv.end and iv.split in (None, *SPLITS) and iv.line >= 1
                                 for iv in intervals)


@FUZZ
@given(rows=st.lists(st.lists(st.one_of(st.sampled_from(["ACGT", "acgtn", "", "1", "0", "x", "train", "val",
                                                          '"', ",", "\n"]),
                                        st.text(max_size=6)), min_size=1, max_size=4), max_size=8),
       header=st.sampled_from(["sequence,label", "sequence,label,split", "label,sequence", "seq,label"]))
def test_fuzz_csv(tmp_path, rows, header):
    path = tmp_path / "fuzz.csv"
    path.write_text(header + "\n" + "\n".join(",".join(r) for r in rows), encoding="utf-8", errors="surrogatepass")
    try:
        records = read_sequence_csv(path)
    except ValueError as err:
        assert str(path) in str(err)
    else:
        assert records and all(seq and isinstance(label, int) and split in (None, *SPLITS)
                               for seq, label, split, _ in records)
