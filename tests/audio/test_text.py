"""Tokenizers: character and SentencePiece BPE (blank = 0), normalisation, out-of-vocabulary errors."""

import pytest

from mambasuite.audio.text import (BLANK_ID, BPETokenizer, CharTokenizer, OutOfVocabularyError, build_tokenizer,
                                   normalize_text)

TEXTS = ["go left", "three four five", "stop", "yes no up down", "turn on the light", "it's off", "seven eight"] * 5


def test_char_roundtrip_and_ids():
    tok = CharTokenizer()
    assert tok.vocab_size == 29 and BLANK_ID == 0
    ids = tok.encode("  Go   LEFT ")
    assert ids == [tok.alphabet.index(c) + 1 for c in "go left"]
    assert BLANK_ID not in ids
    assert tok.decode([0] + ids + [0]) == "go left"
    assert tok.ctc_tokens[0] == "-" and tok.ctc_tokens[tok.space_id] == "|"
    assert tok.spell("it's") == ["i", "t", "'", "s", "|"]


def test_char_out_of_vocabulary_names_the_characters():
    with pytest.raises(OutOfVocabularyError, match=r"\['!', '3'\]"):
        CharTokenizer().encode("go 3 times!")
    assert isinstance(OutOfVocabularyError("x"), ValueError)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        CharTokenizer().decode([99])


def test_char_alphabet_validation():
    with pytest.raises(ValueError, match="space"):
        CharTokenizer("abc")
    with pytest.raises(ValueError, match="repeated"):
        CharTokenizer(" aab")
    with pytest.raises(ValueError, match=r"'\|' or '-'"):
        CharTokenizer(" ab-")


def test_normalize_text():
    assert normalize_text("  Hello\tWORLD \n") == "hello world"
    with pytest.raises(TypeError, match="str"):
        normalize_text(3)


def test_bpe_trains_roundtrips_and_is_cached(tmp_path):
    tok = build_tokenizer("bpe", TEXTS, 40, tmp_path)
    assert isinstance(tok, BPETokenizer) and tok.vocab_size >= 30
    for text in ("go left", "seven eight", "it's off"):
        ids = tok.encode(text)
        assert min(ids) >= 1 and max(ids) < tok.vocab_size
        assert tok.decode(ids) == text
        assert tok.decode([0] + ids + [0]) == text
    assert len(tok.encode("three four five")) < len("three four five")  # merges happened
    assert len(tok.ctc_tokens) == tok.vocab_size and tok.ctc_tokens[0] == "-" and "|" in tok.ctc_tokens
    models = list(tmp_path.glob("*.model"))
    assert len(models) == 1
    mtime = models[0].stat().st_mtime_ns
    again = build_tokenizer("bpe", TEXTS, 40, tmp_path)
    assert again.model_file == models[0] and models[0].stat().st_mtime_ns == mtime
    with pytest.raises(OutOfVocabularyError, match=r"\['q'\]"):
        tok.encode("quiet")


def test_build_tokenizer_errors(tmp_path):
    with pytest.raises(ValueError, match="'char' or 'bpe'"):
        build_tokenizer("word")
    with pytest.raises(ValueError, match="training transcripts"):
        build_tokenizer("bpe")
    with pytest.raises(ValueError, match="all training transcripts are empty"):
        build_tokenizer("bpe", ["", "  "], 10, tmp_path)
    with pytest.raises(FileNotFoundError, match="SentencePiece model not found"):
        BPETokenizer(tmp_path / "missing.model")
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="cannot load SentencePiece model"):
        BPETokenizer(tmp_path / "bad.model")
