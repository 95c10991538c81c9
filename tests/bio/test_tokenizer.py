"""DNA tokenizer: Caduceus ids, round trip, padding, complement map, errors."""

import pytest
import torch

from mambasuite.bio.tokenizer import COMPLEMENT_MAP, PAD_ID, VOCAB, VOCAB_SIZE, DNATokenizer, reverse_complement_ids


def test_caduceus_ids():
    assert [VOCAB[t] for t in ("[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]")] == list(range(7))
    assert [VOCAB[c] for c in "ACGTN"] == [7, 8, 9, 10, 11]
    assert VOCAB_SIZE == 16 and len(COMPLEMENT_MAP) == 16
    assert COMPLEMENT_MAP[7] == 10 and COMPLEMENT_MAP[8] == 9 and COMPLEMENT_MAP[11] == 11
    assert all(COMPLEMENT_MAP[i] == i for i in (*range(7), *range(12, 16)))


def test_round_trip_upper_cases():
    tok = DNATokenizer()
    seq = "acgtNNACGTtgca"
    assert tok.decode(tok.encode(seq)) == seq.upper()


def test_left_padding_and_truncation():
    out = DNATokenizer()(["ACGT", "GA"], max_length=3)
    assert out["input_ids"].tolist() == [[8, 9, 10], [PAD_ID, 9, 7]]
    assert out["attention_mask"].tolist() == [[True] * 3, [False, True, True]]


def test_reverse_complement_ids_matches_strings():
    tok = DNATokenizer()
    seq = "AACGTNGGT"
    rc = seq[::-1].translate(str.maketrans("ACGTN", "TGCAN"))
    assert reverse_complement_ids(tok.encode_tensor(seq)).tolist() == tok.encode(rc)


def test_sep_and_unk_modes():
    assert DNATokenizer(add_sep=True).encode("AC") == [7, 8, 1]
    assert DNATokenizer(unknown="unk").encode("AXC") == [7, 6, 8]


def test_invalid_character_names_record_and_position():
    with pytest.raises(ValueError, match=r"chr7: invalid character 'R' at position 3"):
        DNATokenizer().encode("ACGRT", name="chr7")
    with pytest.raises(ValueError, match="position 1"):
        DNATokenizer().encode("Aé", name="x")


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet="ACGTNacgtn", max_size=64))
def test_round_trip_and_rc_involution_property(seq):
    tok = DNATokenizer()
    ids = tok.encode_tensor(seq)
    assert tok.decode(ids) == seq.upper()
    assert torch.equal(reverse_complement_ids(reverse_complement_ids(ids)), ids)
    rc = seq.upper()[::-1].translate(str.maketrans("ACGTN", "TGCAN"))
    assert tok.decode(reverse_complement_ids(ids)) == rc


# ---- k-mer option -------------------------------------------------------------------------------------------

from mambasuite.bio.tokenizer import KmerTokenizer, make_tokenizer  # noqa: E402

RC = str.maketrans("ACGTN", "TGCAN")


def _kmer_id(kmer: str) -> int:
    """Independent reference: 12 + base-4 number of the k-mer (A=0, C=1, G=2, T=3)."""
    return 12 + sum("ACGT".index(c) * 4 ** (len(kmer) - 1 - i) for i, c in enumerate(kmer))


def test_kmer_ids_remainder_and_n():
    tok = KmerTokenizer(3)
    assert tok.vocab_size == 80 and tok.tokens_for_length(10) == 4  # 12 + 64 ids, padded to 80
    assert tok.encode("ACGtacGTNA") == [_kmer_id("ACG"), _kmer_id("TAC"), VOCAB["N"], VOCAB["A"]]
    assert tok.encode("AAA") == [12] and tok.encode("TTT") == [12 + 63]
    overlapping = KmerTokenizer(3, stride=1)
    assert overlapping.encode("ACGTA") == [_kmer_id("ACG"), _kmer_id("CGT"), _kmer_id("GTA")]
    assert overlapping.decode(overlapping.encode("ACGTA")) == "ACGTA"
    assert tok.decode(tok.encode("ACGTACGTA")) == "ACGTACGTA"


def test_kmer_errors_and_factory():
    with pytest.raises(ValueError, match="k must be an int in 1..8"):
        KmerTokenizer(0)
    with pytest.raises(ValueError, match="stride must be 1"):
        KmerTokenizer(3, stride=2)
    with pytest.raises(ValueError, match="read7: invalid character 'X' at position 4"):
        KmerTokenizer(2).encode("ACGTX", name="read7")
    with pytest.raises(ValueError, match="shorter than k=3"):
        KmerTokenizer(3, stride=1).encode("AC")
    assert type(make_tokenizer(1)) is DNATokenizer and make_tokenizer(4).k == 4
    with pytest.raises(ValueError, match="needs kmer > 1"):
        make_tokenizer(1, stride=2)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.booleans(), st.integers(0, 8), st.data())
def test_kmer_reverse_complement_property(k, overlapping, n_kmers, data):
    """complement_map[ids.flip()] tokenises the reverse-complement strand (whole k-mers, or any overlapping)."""
    tok = KmerTokenizer(k, stride=1 if overlapping else k)
    length = max(k, n_kmers * k + (data.draw(st.integers(0, 3)) if overlapping else 0))
    seq = data.draw(st.text(alphabet="ACGTN", min_size=length, max_size=length))
    cmap = torch.tensor(tok.complement_map)
    assert torch.equal(cmap[cmap], torch.arange(tok.vocab_size))  # an involution
    assert torch.equal(reverse_complement_ids(tok.encode_tensor(seq), cmap), tok.encode_tensor(seq.translate(RC)[::-1]))


def test_kmer_batch_padding():
    out = KmerTokenizer(2)(["ACGTAC", "GT"], max_length=3)
    assert out["input_ids"].tolist() == [[_kmer_id("AC"), _kmer_id("GT"), _kmer_id("AC")],
                                         [PAD_ID, PAD_ID, _kmer_id("GT")]]
