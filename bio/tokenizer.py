"""Character-level DNA tokenizer with Caduceus' vocabulary and ids.

Ids (Caduceus `tokenization_caduceus.py`): [CLS]=0 [SEP]=1 [BOS]=2 [MASK]=3 [PAD]=4 [RESERVED]=5 [UNK]=6,
then A=7 C=8 G=9 T=10 N=11; the model vocabulary is padded to 16 (ids 12-15 unused). `complement_map`
sends A<->T, C<->G, N->N and every other id to itself, so reverse-complementing a tokenised sequence is
`complement_map[ids.flip(-1)]` (see `reverse_complement_ids`).

`KmerTokenizer` is the k-mer option: the same 12 ids, then one id per k-mer over A/C/G/T.
`make_tokenizer(kmer)` returns the right one; data modules and tasks take a `kmer` argument.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

__all__ = [
    "CLS_ID", "SEP_ID", "BOS_ID", "MASK_ID", "PAD_ID", "RESERVED_ID", "UNK_ID", "NUCLEOTIDE_IDS", "N_ID",
    "VOCAB", "VOCAB_SIZE", "COMPLEMENT_MAP", "DNATokenizer", "KmerTokenizer", "make_tokenizer",
    "reverse_complement_ids",
]

SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]")
CLS_ID, SEP_ID, BOS_ID, MASK_ID, PAD_ID, RESERVED_ID, UNK_ID = range(7)
CHARACTERS = "ACGTN"
VOCAB: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + tuple(CHARACTERS))}
N_ID = VOCAB["N"]
NUCLEOTIDE_IDS = tuple(VOCAB[c] for c in "ACGT")  # 7, 8, 9, 10
VOCAB_SIZE = 16  # 12 tokens padded to a multiple of 8, as the released models do
_COMPLEMENT = {"A": "T", "C": "G", "G": "C", "T": "A", "N": "N"}
COMPLEMENT_MAP: tuple[int, ...] = tuple(
    VOCAB[_COMPLEMENT[tok]] if tok in _COMPLEMENT else i
    for i, tok in enumerate(SPECIAL_TOKENS + tuple(CHARACTERS) + ("",) * (VOCAB_SIZE - len(VOCAB)))
)


def reverse_complement_ids(ids: torch.Tensor, complement_map: torch.Tensor | None = None) -> torch.Tensor:
    """Reverse complement of token ids: ids (..., L) int64 -> (..., L), reversed along L and complemented."""
    cmap = torch.tensor(COMPLEMENT_MAP, device=ids.device) if complement_map is None else complement_map
    return cmap.to(ids.device)[ids.flip(-1)]


class DNATokenizer:
    """Upper-cases DNA text and maps A C G T N to ids 7-11; pads on the left with [PAD] (id 4).

    Args:
        unknown: "error" (default) raises ValueError naming the record and 0-based position of the first
            character outside ACGTN (any case); "unk" maps it to [UNK] like Caduceus does.
        add_sep: append [SEP] (= Caduceus' eos) to every encoded sequence.
    """

    vocab = VOCAB
    vocab_size = VOCAB_SIZE
    pad_token_id, mask_token_id, unk_token_id, sep_token_id = PAD_ID, MASK_ID, UNK_ID, SEP_ID
    complement_map = COMPLEMENT_MAP
    k = 1
    # Inclusive id ranges: tokens that carry sequence (MLM may select them) and the ones MLM draws
    # random replacements from.
    sequence_id_range = (NUCLEOTIDE_IDS[0], N_ID)
    random_id_range = (NUCLEOTIDE_IDS[0], NUCLEOTIDE_IDS[-1])

    def tokens_for_length(self, n_bases: int) -> int:
        """Number of tokens (without [SEP]) that encode a sequence of n_bases characters."""
        return n_bases

    def __init__(self, unknown: str = "error", add_sep: bool = False) -> None:
        if unknown not in ("error", "unk"):
            raise ValueError(f"unknown must be 'error' or 'unk', got {unknown!r}")
        self.unknown, self.add_sep = unknown, add_sep
        # 256-entry byte lookup; -1 marks invalid bytes.
        table = torch.full((256,), -1, dtype=torch.long)
        for ch in CHARACTERS:
            table[ord(ch)] = table[ord(ch.lower())] = VOCAB[ch]
        self._table = table

    def encode(self, sequence: str, name: str = "<sequence>") -> list[int]:
        """DNA string -> list of ids (length L, +1 with add_sep). `name` is used in error messages."""
        return self.encode_tensor(sequence, name).tolist()

    def encode_tensor(self, sequence: str, name: str = "<sequence>") -> torch.Tensor:
        """DNA string -> (L,) int64 ids (+[SEP] with add_sep); raises ValueError for invalid characters."""
        if not isinstance(sequence, str):
            raise TypeError(f"{name}: sequence must be a str, got {type(sequence).__name__}")
        try:
            raw = sequence.encode("ascii")
        except UnicodeEncodeError as err:
            raise ValueError(f"{name}: non-ASCII character {sequence[err.start]!r} at position {err.start}") from None
        ids = self._table[torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()] if raw else \
            torch.empty(0, dtype=torch.long)
        bad = (ids < 0).nonzero()
        if len(bad):
            pos = int(bad[0])
            if self.unknown == "error":
                raise ValueError(f"{name}: invalid character {sequence[pos]!r} at position {pos} "
                                 f"(expected one of A, C, G, T, N in any case)")
            ids = ids.masked_fill(ids < 0, UNK_ID)
        ids = self._group(ids, name)
        if self.add_sep:
            ids = torch.cat([ids, torch.tensor([SEP_ID])])
        return ids

    def _group(self, ids: torch.Tensor, name: str) -> torch.Tensor:
        """Character ids (L,) -> token ids; the identity here, k-mers in `KmerTokenizer`."""
        return ids

    def __call__(self, sequences: Sequence[str], max_length: int | None = None,
                 names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """Batch-encode with left padding (and left truncation to the last max_length tokens).

        Returns {"input_ids": (batch, L) int64, "attention_mask": (batch, L) bool}, L = max_length or the
        longest encoded sequence.
        """
        names = list(names) if names is not None else [f"sequence {i}" for i in range(len(sequences))]
        encoded = [self.encode_tensor(s, n) for s, n in zip(sequences, names)]
        length = max_length if max_length is not None else max((len(e) for e in encoded), default=0)
        ids = torch.full((len(encoded), length), PAD_ID, dtype=torch.long)
        for row, e in enumerate(encoded):
            e = e[-length:] if length else e[:0]
            if len(e):
                ids[row, length - len(e):] = e
        return {"input_ids": ids, "attention_mask": ids != PAD_ID}

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special: bool = True) -> str:
        """Ids -> string; special tokens are dropped (skip_special) or written as e.g. "[PAD]"."""
        inverse = {i: t for t, i in VOCAB.items()}
        out = []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            tok = inverse.get(int(i), "[UNK]")
            if tok.startswith("[") and skip_special:
                continue
            out.append(tok)
        return "".join(out)


class KmerTokenizer(DNATokenizer):
    """k-mer DNA tokenizer on Caduceus' ids: 0-11 as `DNATokenizer`, then 12 + index of each k-mer over ACGT
    in lexicographic order (AA..A = 12, AA..C = 13, ...); the vocabulary is padded to a multiple of 8.

    stride=k (default): non-overlapping k-mers (Nucleotide Transformer style); the last len % k bases
    become single-character tokens. stride=1: overlapping k-mers (DNABERT style), len - k + 1 tokens.
    A k-mer containing N becomes N (id 11); with unknown="unk" one containing another character becomes [UNK].

    `complement_map` sends each k-mer to its reverse complement, so `complement_map[ids.flip(-1)]` is
    the tokenisation of the reverse-complement strand whenever len % stride == 0 (always for stride 1).
    """

    def __init__(self, k: int = 3, stride: int | None = None, unknown: str = "error", add_sep: bool = False) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 8:
            raise ValueError(f"k must be an int in 1..8, got {k!r}")
        stride = k if stride is None else stride
        if stride not in (1, k):
            raise ValueError(f"stride must be 1 (overlapping) or k={k} (non-overlapping), got {stride!r}")
        super().__init__(unknown=unknown, add_sep=add_sep)
        self.k, self.stride = k, stride
        self.first_kmer_id = len(VOCAB)
        n_kmers = 4 ** k
        self.vocab_size = -(-(self.first_kmer_id + n_kmers) // 8) * 8
        self.sequence_id_range = (NUCLEOTIDE_IDS[0], self.first_kmer_id + n_kmers - 1)
        self.random_id_range = (self.first_kmer_id, self.first_kmer_id + n_kmers - 1)
        self.kmers = ["".join("ACGT"[(i // 4 ** (k - 1 - j)) % 4] for j in range(k)) for i in range(n_kmers)]
        index = {kmer: i for i, kmer in enumerate(self.kmers)}
        rc = str.maketrans("ACGT", "TGCA")
        cmap = list(COMPLEMENT_MAP[:len(VOCAB)])
        cmap += [self.first_kmer_id + index[kmer.translate(rc)[::-1]] for kmer in self.kmers]
        self.complement_map = tuple(cmap + list(range(len(cmap), self.vocab_size)))
        self._powers = 4 ** torch.arange(k - 1, -1, -1)

    def tokens_for_length(self, n_bases: int) -> int:
        if self.stride == 1:
            return max(n_bases - self.k + 1, 0)
        return n_bases // self.k + n_bases % self.k

    def _group(self, ids: torch.Tensor, name: str) -> torch.Tensor:
        """Character ids (L,) -> k-mer ids (tokens_for_length(L),)."""
        if self.stride == 1 and len(ids) < self.k:
            raise ValueError(f"{name}: sequence of length {len(ids)} is shorter than k={self.k}")
        n_full = len(ids) // self.k * self.k if self.stride == self.k else len(ids)
        windows = ids[:n_full].unfold(0, self.k, self.stride)  # (n_tokens, k)
        code = windows - NUCLEOTIDE_IDS[0]  # A C G T -> 0..3, N -> 4, [UNK] < 0
        kmer_ids = self.first_kmer_id + (code.clamp(0, 3) * self._powers).sum(-1)
        kmer_ids = kmer_ids.masked_fill((code == 4).any(-1), N_ID).masked_fill((code < 0).any(-1), UNK_ID)
        return torch.cat([kmer_ids, ids[n_full:]]) if self.stride == self.k else kmer_ids

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special: bool = True) -> str:
        """Ids -> string. Overlapping k-mers are merged (each adds its last base); an N token gives one "N"
        (the other bases of a k-mer containing N are not recoverable); special tokens as in `DNATokenizer`."""
        out, first = [], True
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            i = int(i)
            if i >= self.first_kmer_id and i - self.first_kmer_id < len(self.kmers):
                kmer = self.kmers[i - self.first_kmer_id]
                out.append(kmer if self.stride == self.k or first else kmer[-1])
                first = False
            else:
                out.append(super().decode([i], skip_special))
        return "".join(out)


def make_tokenizer(kmer: int = 1, stride: int | None = None, **kwargs) -> DNATokenizer:
    """kmer=1: the character tokenizer (`DNATokenizer`); kmer > 1: `KmerTokenizer(kmer, stride)`."""
    if kmer == 1:
        if stride not in (None, 1):
            raise ValueError(f"stride={stride!r} needs kmer > 1")
        return DNATokenizer(**kwargs)
    return KmerTokenizer(kmer, stride, **kwargs)
