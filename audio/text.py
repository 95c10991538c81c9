"""Transcript tokenizers for CTC: characters (default) and SentencePiece BPE trained on the training transcripts.

Both reserve id 0 for the CTC blank and share one interface: `normalize`, `encode` (raises
`OutOfVocabularyError`, a ValueError, for characters they cannot represent), `decode`, `vocab_size` and
`ctc_tokens` (the token strings torchaudio's `ctc_decoder` needs, "-" for the blank and "|" for the word
boundary). Transcripts are normalised to lower case with single spaces.
"""

from __future__ import annotations

import hashlib
import os
import re
import string
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["BLANK_ID", "BPETokenizer", "CharTokenizer", "OutOfVocabularyError", "build_tokenizer", "normalize_text"]

BLANK_ID = 0
DEFAULT_ALPHABET = " '" + string.ascii_lowercase  # LibriSpeech's characters (after lower-casing)
_SPACES = re.compile(r"\s+")


class OutOfVocabularyError(ValueError):
    """A transcript holds characters the tokenizer cannot represent."""


def normalize_text(text: str) -> str:
    """Lower-case, collapse whitespace runs to one space, strip the ends."""
    if not isinstance(text, str):
        raise TypeError(f"transcript must be a str, got {type(text).__name__}")
    return _SPACES.sub(" ", text.lower()).strip()


class CharTokenizer:
    """Character tokenizer: id 0 = blank, ids 1.. = the characters of `alphabet` in order (space first by default).

    encode("go left") -> [ids]; decode(ids) -> text (blank ids are dropped, spaces collapsed).
    `ctc_tokens` spells the space as "|" (flashlight's word boundary), so a lexicon spells words with the
    same characters and ends each spelling with "|".
    """

    kind = "char"

    def __init__(self, alphabet: str = DEFAULT_ALPHABET) -> None:
        if not isinstance(alphabet, str) or not alphabet:
            raise ValueError(f"alphabet must be a non-empty str, got {alphabet!r}")
        if len(set(alphabet)) != len(alphabet):
            raise ValueError(f"alphabet has repeated characters: {alphabet!r}")
        if " " not in alphabet:
            raise ValueError("alphabet must contain the space (the word boundary)")
        if any(c in "|-" for c in alphabet):
            raise ValueError("alphabet must not contain '|' or '-' (the decoder's boundary and blank symbols)")
        self.alphabet = alphabet
        self._ids = {c: i + 1 for i, c in enumerate(alphabet)}
        self.space_id = self._ids[" "]

    @property
    def vocab_size(self) -> int:
        """Outputs of the CTC head: characters + blank."""
        return len(self.alphabet) + 1

    @property
    def ctc_tokens(self) -> list[str]:
        """Token strings by id for torchaudio's ctc_decoder ("-" blank, "|" space)."""
        return ["-"] + ["|" if c == " " else c for c in self.alphabet]

    def normalize(self, text: str) -> str:
        return normalize_text(text)

    def oov_chars(self, text: str) -> set[str]:
        """Characters of the normalised `text` outside the alphabet."""
        return set(self.normalize(text)) - set(self.alphabet)

    def encode(self, text: str) -> list[int]:
        """Normalised `text` -> ids; OutOfVocabularyError naming the unknown characters."""
        text = self.normalize(text)
        bad = set(text) - set(self.alphabet)
        if bad:
            raise OutOfVocabularyError(f"characters {sorted(bad)} of {text!r} are not in the alphabet "
                                       f"{self.alphabet!r}")
        return [self._ids[c] for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        """ids (blank-free or not) -> text; ids outside the vocabulary raise ValueError."""
        chars = []
        for i in ids:
            i = int(i)
            if i == BLANK_ID:
                continue
            if not 0 < i <= len(self.alphabet):
                raise ValueError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
            chars.append(self.alphabet[i - 1])
        return normalize_text("".join(chars))

    def spell(self, word: str) -> list[str]:
        """A lexicon spelling: the word's token strings followed by the boundary "|"."""
        return [self.ctc_tokens[i] for i in self.encode(word)] + ["|"]


class BPETokenizer:
    """SentencePiece BPE: id 0 = blank, id k + 1 = SentencePiece piece k (piece 0 is <unk>).

    Load a trained model with `BPETokenizer(model_file)`, or train one with `BPETokenizer.train(...)`.
    encode raises OutOfVocabularyError when a transcript needs <unk> (a character unseen in training).
    `ctc_tokens` are the pieces; "|" stands for the unused <unk> slot so the decoder has a boundary token.
    """

    kind = "bpe"

    def __init__(self, model_file: str | os.PathLike) -> None:
        import sentencepiece as spm

        self.model_file = Path(model_file)
        if not self.model_file.is_file():
            raise FileNotFoundError(f"SentencePiece model not found: {self.model_file}")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.model_file))
        except (RuntimeError, OSError) as err:
            raise ValueError(f"cannot load SentencePiece model {self.model_file}: {err}") from err
        self.unk_piece_id = self.sp.unk_id()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, model_file: str | os.PathLike) -> "BPETokenizer":
        """Train a BPE model (full character coverage) on normalised `texts`, write it to `model_file`."""
        import sentencepiece as spm

        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
            raise ValueError(f"bpe_vocab_size must be an int >= 2, got {vocab_size!r}")
        texts = [normalize_text(t) for t in texts]
        if not any(texts):
            raise ValueError("cannot train a BPE tokenizer: all training transcripts are empty")
        model_file = Path(model_file)
        model_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = model_file.with_name(model_file.name + f".tmp{os.getpid()}")
        with open(tmp, "wb") as out:
            # Only <unk> as a special piece: CTC needs neither BOS/EOS nor padding.
            spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=out, vocab_size=vocab_size,
                                           model_type="bpe", character_coverage=1.0, bos_id=-1, eos_id=-1,
                                           unk_id=0, pad_id=-1, hard_vocab_limit=False, minloglevel=2,
                                           num_threads=1)
        tmp.replace(model_file)  # atomic: concurrent trainers never see a partial file
        return cls(model_file)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size() + 1

    @property
    def ctc_tokens(self) -> list[str]:
        pieces = [self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())]
        pieces[self.unk_piece_id] = "|"
        return ["-"] + pieces

    def normalize(self, text: str) -> str:
        return normalize_text(text)

    def oov_chars(self, text: str) -> set[str]:
        text = self.normalize(text)
        return {c for c in set(text) - {" "} if self.sp.piece_to_id(c) == self.unk_piece_id}

    def encode(self, text: str) -> list[int]:
        text = self.normalize(text)
        ids = self.sp.encode(text)
        if self.unk_piece_id in ids:
            raise OutOfVocabularyError(f"characters {sorted(self.oov_chars(text))} of {text!r} are unknown to the "
                                       f"BPE model {self.model_file}")
        return [i + 1 for i in ids]

    def decode(self, ids: Iterable[int]) -> str:
        pieces = []
        for i in ids:
            i = int(i)
            if i == BLANK_ID or i - 1 == self.unk_piece_id:
                continue
            if not 0 < i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
            pieces.append(i - 1)
        return normalize_text(self.sp.decode(pieces))

    def spell(self, word: str) -> list[str]:
        """A lexicon spelling: the word's pieces (the leading "▁" of the first one marks the boundary)."""
        return [self.ctc_tokens[i] for i in self.encode(word)]


def build_tokenizer(kind: str, train_texts: Sequence[str] | None = None, bpe_vocab_size: int = 256,
                    cache_dir: str | os.PathLike | None = None, alphabet: str = DEFAULT_ALPHABET):
    """"char" -> CharTokenizer(alphabet); "bpe" -> a BPETokenizer trained on `train_texts`, cached in
    `cache_dir` under a name derived from the transcripts and vocabulary size (re-used when present)."""
    if kind == "char":
        return CharTokenizer(alphabet)
    if kind != "bpe":
        raise ValueError(f"tokenizer must be 'char' or 'bpe', got {kind!r}")
    if train_texts is None or cache_dir is None:
        raise ValueError("tokenizer='bpe' needs the training transcripts and a cache_dir to store the model")
    digest = hashlib.sha1("\n".join(normalize_text(t) for t in train_texts).encode()).hexdigest()[:12]
    model_file = Path(cache_dir).expanduser() / f"bpe{bpe_vocab_size}_{digest}.model"
    if model_file.is_file():
        return BPETokenizer(model_file)
    return BPETokenizer.train(train_texts, bpe_vocab_size, model_file)
