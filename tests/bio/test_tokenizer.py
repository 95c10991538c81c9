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
