"""CTC decoding: greedy best path, flashlight beam search (lexicon-free and with a lexicon), lexicon files."""

import pytest
import torch

from mambasuite.audio.decoding import CTCBeamSearch, greedy_ctc, write_lexicon
from mambasuite.audio.text import CharTokenizer


def emissions(path: list[int], vocab: int, second: dict[int, int] | None = None, margin: float = 4.0):
    """Log-probs (1, T, vocab) peaked on `path`; `second[t] = k` makes token k a close runner-up at frame t."""
    scores = torch.full((1, len(path), vocab), -margin)
    for t, k in enumerate(path):
        scores[0, t, k] = 0.0
        if second and t in second:
            scores[0, t, second[t]] = -0.3
    return scores.log_softmax(-1)


def spell_path(tok, text, repeat=2):
    path = []
    for i in tok.encode(text):
        path += [i] * repeat + [0]
    return path


def test_greedy_merges_repeats_and_drops_blanks():
    lp = torch.full((2, 6, 5), -5.0)
    for t, k in enumerate([1, 1, 0, 1, 2, 2]):
        lp[0, t, k] = 0.0
    for t, k in enumerate([3, 0, 3, 4, 0, 0]):
        lp[1, t, k] = 0.0
    assert greedy_ctc(lp, torch.tensor([6, 4])) == [[1, 1, 2], [3, 3, 4]]
    assert greedy_ctc(lp, torch.tensor([0, 1])) == [[], [3]]


def test_beam_search_lexicon_free_agrees_with_greedy_on_clear_emissions():
    tok = CharTokenizer()
    lp = emissions(spell_path(tok, "go left"), tok.vocab_size)
    assert tok.decode(greedy_ctc(lp, torch.tensor([lp.shape[1]]))[0]) == "go left"
    assert CTCBeamSearch(tok, beam_size=8)(lp, torch.tensor([lp.shape[1]])) == ["go left"]


def test_lexicon_fixes_a_misspelling(tmp_path):
    tok = CharTokenizer()
    path = spell_path(tok, "go lefd")
    d_frame = len(spell_path(tok, "go lef"))  # first frame of the final "d"
    t_id = tok.encode("t")[0]
    lp = emissions(path, tok.vocab_size, second={d_frame: t_id, d_frame + 1: t_id})
    n = torch.tensor([lp.shape[1]])
    assert tok.decode(greedy_ctc(lp, n)[0]) == "go lefd"
    lexicon = write_lexicon(["go", "left", "right", "go"], tok, tmp_path / "lex.txt")
    assert lexicon.read_text() == "go\tg o |\nleft\tl e f t |\nright\tr i g h t |\n"
    assert CTCBeamSearch(tok, beam_size=16, lexicon=lexicon)(lp, n) == ["go left"]


def test_decoding_bad_inputs(tmp_path):
    tok = CharTokenizer()
    with pytest.raises(ValueError, match=r"\(batch, T, vocab\)"):
        greedy_ctc(torch.randn(5, 3), torch.tensor([5]))
    with pytest.raises(ValueError, match=r"lie in \[0, T=5\]"):
        greedy_ctc(torch.randn(1, 5, 3), torch.tensor([6]))
    with pytest.raises(ValueError, match="lengths must be an int tensor"):
        greedy_ctc(torch.randn(2, 5, 3), torch.tensor([5]))
    with pytest.raises(FileNotFoundError, match="lexicon file not found"):
        CTCBeamSearch(tok, lexicon=tmp_path / "none.txt")
    with pytest.raises(ValueError, match="beam_size must be a positive int"):
        CTCBeamSearch(tok, beam_size=0)
    with pytest.raises(ValueError, match="no words given"):
        write_lexicon([], tok, tmp_path / "l.txt")
