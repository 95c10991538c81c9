"""CTC decoding: greedy (best path) and beam search with torchaudio's flashlight-text `ctc_decoder`.

Beam search runs lexicon-free (any token sequence), or with a lexicon (only listed words; `write_lexicon`
builds one from a word list, e.g. the training transcripts) and optionally a KenLM language model.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable

import torch

from .text import BLANK_ID

__all__ = ["CTCBeamSearch", "greedy_ctc", "write_lexicon"]


def _check_emissions(log_probs: torch.Tensor, lengths: torch.Tensor, owner: str) -> None:
    if not isinstance(log_probs, torch.Tensor) or log_probs.dim() != 3 or not log_probs.is_floating_point():
        got = tuple(log_probs.shape) if isinstance(log_probs, torch.Tensor) else type(log_probs).__name__
        raise ValueError(f"{owner}: log_probs must be a float tensor (batch, T, vocab), got {got}")
    if (not isinstance(lengths, torch.Tensor) or lengths.dim() != 1 or lengths.shape[0] != log_probs.shape[0]
            or lengths.is_floating_point()):
        got = tuple(lengths.shape) if isinstance(lengths, torch.Tensor) else type(lengths).__name__
        raise ValueError(f"{owner}: lengths must be an int tensor (batch={log_probs.shape[0]},), got {got}")
    if (lengths < 0).any() or (lengths > log_probs.shape[1]).any():
        raise ValueError(f"{owner}: lengths must lie in [0, T={log_probs.shape[1]}], got {lengths.tolist()}")


def greedy_ctc(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = BLANK_ID) -> list[list[int]]:
    """Best-path decoding: per frame argmax, merge repeats, drop blanks.

    log_probs: (batch, T, vocab) scores (log-probabilities or logits); lengths: (batch,) valid frames.
    Returns one token-id list per utterance.
    """
    _check_emissions(log_probs, lengths, "greedy_ctc")
    best = log_probs.argmax(dim=-1).cpu()
    out = []
    for path, n in zip(best, lengths.cpu().tolist()):
        path = path[:n]
        keep = torch.ones_like(path, dtype=torch.bool)
        keep[1:] = path[1:] != path[:-1]
        out.append([int(t) for t in path[keep & (path != blank)]])
    return out


def write_lexicon(words: Iterable[str], tokenizer, path: str | os.PathLike) -> Path:
    """Write a flashlight lexicon (`word<TAB>t o k e n s`) for the distinct `words`, spelled by `tokenizer`.

    Words the tokenizer cannot spell raise OutOfVocabularyError. Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    words = sorted({w for w in words if w})
    if not words:
        raise ValueError("write_lexicon: no words given")
    lines = [f"{w}\t{' '.join(tokenizer.spell(w))}" for w in words]
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


class CTCBeamSearch:
    """CTC prefix beam search (torchaudio `ctc_decoder`, flashlight-text) returning transcripts.

    Args:
        tokenizer: a `CharTokenizer` / `BPETokenizer` (gives the token strings and the text decoding).
        beam_size: hypotheses kept per frame. beam_threshold: prune hypotheses this far below the best.
        lexicon: path of a lexicon file (words the decoder may emit) or None for lexicon-free decoding.
        lm: path of a KenLM model (`.arpa` / `.bin`) or None. lm_weight, word_score, sil_score: the
            decoder's score weights (LM weight, per-word bonus, per-boundary score).
    __call__(log_probs (batch, T, vocab) log-softmax scores, lengths (batch,)) -> list of transcripts.
    """

    def __init__(self, tokenizer, beam_size: int = 50, lexicon: str | os.PathLike | None = None,
                 lm: str | os.PathLike | None = None, lm_weight: float = 2.0, word_score: float = 0.0,
                 sil_score: float = 0.0, beam_threshold: float = 50.0) -> None:
        try:
            from torchaudio.models.decoder import ctc_decoder
        except ImportError as err:  # pragma: no cover - torchaudio is a dependency
            raise ImportError(f"beam search needs torchaudio's ctc_decoder: {err}") from err
        if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
            raise ValueError(f"beam_size must be a positive int, got {beam_size!r}")
        for name, value in (("lexicon", lexicon), ("lm", lm)):
            if value is not None and not Path(value).is_file():
                raise FileNotFoundError(f"{name} file not found: {value}")
        self.tokenizer = tokenizer
        self.lexicon = None if lexicon is None else str(lexicon)
        try:
            self.decoder = ctc_decoder(lexicon=self.lexicon, tokens=tokenizer.ctc_tokens,
                                       lm=None if lm is None else str(lm), beam_size=beam_size,
                                       beam_threshold=beam_threshold, lm_weight=lm_weight, word_score=word_score,
                                       sil_score=sil_score, blank_token="-", sil_token="|",
                                       unk_score=-math.inf)
        except RuntimeError as err:
            if "flashlight-text" in str(err):
                raise ImportError("beam search needs the flashlight-text package (pip install flashlight-text)") \
                    from err
            raise ValueError(f"cannot build the CTC beam-search decoder (lexicon={lexicon}, lm={lm}): {err}") from err

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        _check_emissions(log_probs, lengths, type(self).__name__)
        emissions = log_probs.detach().float().cpu().contiguous()
        results = self.decoder(emissions, lengths.detach().cpu().to(torch.int32))
        texts = []
        for nbest in results:
            if not nbest:
                texts.append("")
            elif self.lexicon is not None:
                texts.append(" ".join(w for w in nbest[0].words if w))
            else:
                texts.append(self.tokenizer.decode(nbest[0].tokens.tolist()))
        return texts
