"""The PS half swap: our `swap_halves` stack vs a numpy transcription of the official RCPS forward passes.

The numpy model follows the official code's data flow (modeling_rcps.RCPSMambaBlock and
CaduceusMixerModel, genomics.md 1.2) with a toy mixer in place of BiMamba:
* fused add+norm path: the "forward" norm gets the *second* half of hidden + residual, the "RC" norm gets the
  flipped *first* half, and both the normalised output and the residual are concatenated [fwd, flip(rc)];
* unfused path (RCPSAddNormWrapper): first half forward, flipped second half RC, in order;
* the final norm keeps the halves in order on both paths.
"""

import numpy as np
import pytest
import torch
from torch import nn

from mambasuite.bio.models import Caduceus
from mambasuite.bio.tokenizer import COMPLEMENT_MAP, reverse_complement_ids

EPS = 1e-5
CMAP = np.array(COMPLEMENT_MAP)


def flip_lc(x):
    return x[..., ::-1, ::-1]


def rms(x, w):
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + EPS) * w


def toy_mixer(x, w):
    """Direction-dependent, channel-mixing toy mixer: running mean over positions of x @ w.T; x (b, L, d)."""
    y = x @ w.T
    return np.cumsum(y, axis=-2) / np.arange(1, x.shape[-2] + 1)[:, None]


class ToyMixer(nn.Module):
    def __init__(self, w: np.ndarray) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))

    def forward(self, x):
        return (x @ self.w.T).cumsum(-2) / torch.arange(1, x.shape[-2] + 1, dtype=x.dtype)[:, None]


def official_forward(ids, emb, mixer_ws, norm_ws, norm_f_w, fused):
    d = emb.shape[1]
    rc_ids = CMAP[ids[:, ::-1]]
    h = np.concatenate([emb[ids], flip_lc(emb[rc_ids])], -1)  # RCPSEmbedding
    res = None
    for mw, nw in zip(mixer_ws, norm_ws):
        if fused:
            r_fwd = h[..., d:] + (0 if res is None else res[..., d:])
            r_rc = flip_lc(h[..., :d]) + (0 if res is None else flip_lc(res[..., :d]))
            h = np.concatenate([rms(r_fwd, nw), flip_lc(rms(r_rc, nw))], -1)
            res = np.concatenate([r_fwd, flip_lc(r_rc)], -1)
        else:
            res = h if res is None else h + res
            h = np.concatenate([rms(res[..., :d], nw), flip_lc(rms(flip_lc(res[..., d:]), nw))], -1)
        # RCPSWrapper(mixer)
        h = np.concatenate([toy_mixer(h[..., :d], mw), flip_lc(toy_mixer(flip_lc(h[..., d:]), mw))], -1)
    r = h + res
    return np.concatenate([rms(r[..., :d], norm_f_w), flip_lc(rms(flip_lc(r[..., d:]), norm_f_w))], -1)


def _ours_with_toy_mixers(swap: bool, d: int, n_layer: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    model = Caduceus(d_model=d, n_layer=n_layer, rcps=True, swap_halves=swap).double().eval()
    mixer_ws = [rng.normal(size=(d, d)) * 0.5 for _ in range(n_layer)]
    norm_ws = [1 + 0.3 * rng.normal(size=d) for _ in range(n_layer)]
    norm_f_w = 1 + 0.3 * rng.normal(size=d)
    emb = rng.normal(size=(16, d))
    with torch.no_grad():
        model.word_embedding_weight.copy_(torch.tensor(emb))
        for layer, mw, nw in zip(model.backbone.layers, mixer_ws, norm_ws):
            layer.mixer.submodule = ToyMixer(mw)
            layer.norm.submodule.weight.copy_(torch.tensor(nw))
        model.backbone.norm_f.submodule.weight.copy_(torch.tensor(norm_f_w))
    return model, (emb, mixer_ws, norm_ws, norm_f_w)


@pytest.mark.parametrize("swap", [True, False])
def test_matches_official_data_flow(swap):
    d, n_layer = 6, 3
    model, weights = _ours_with_toy_mixers(swap, d, n_layer)
    ids = np.random.default_rng(1).integers(7, 12, size=(2, 11))
    with torch.no_grad():
        ours = model(torch.tensor(ids)).numpy()
    np.testing.assert_allclose(ours, official_forward(ids, *weights, fused=swap), rtol=1e-12, atol=1e-12)
    # and the other official path is a different function of the same weights
    assert np.abs(ours - official_forward(ids, *weights, fused=not swap)).max() > 1e-3


@pytest.mark.parametrize("swap", [True, False])
def test_both_orderings_are_rc_equivariant(swap):
    model, _ = _ours_with_toy_mixers(swap, 6, 3)
    x = torch.randint(7, 12, (2, 13), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        h, h_rc = model(x), model(reverse_complement_ids(x))
    torch.testing.assert_close(h_rc, h.flip(-2, -1), rtol=0, atol=1e-12)


def test_swap_with_real_mixers_fp32_equivariant_and_differs():
    torch.manual_seed(0)
    swapped = Caduceus(d_model=16, n_layer=3, rcps=True, swap_halves=True).eval()
    plain = Caduceus(d_model=16, n_layer=3, rcps=True).eval()
    with torch.no_grad():
        for p in swapped.parameters():
            p.add_(0.1 * torch.randn_like(p))
        plain.load_state_dict(swapped.state_dict())
    x = torch.randint(7, 12, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        h, h_rc = swapped(x), swapped(reverse_complement_ids(x))
        assert (h_rc - h.flip(-2, -1)).abs().max() < 1e-5
        assert (h - plain(x)).abs().max() > 1e-3


def test_swap_needs_rcps():
    with pytest.raises(ValueError, match="swap_halves=True needs rcps=True"):
        Caduceus(d_model=8, n_layer=1, swap_halves=True)


def test_grad_checkpointing_same_gradients():
    torch.manual_seed(0)
    a = Caduceus(d_model=8, n_layer=2, rcps=True, swap_halves=True)
    b = Caduceus(d_model=8, n_layer=2, rcps=True, swap_halves=True, grad_checkpointing=True)
    b.load_state_dict(a.state_dict())
    x = torch.randint(7, 12, (2, 10))
    for m in (a, b):
        m.train()
        m(x).square().mean().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-5, atol=1e-6, msg=name)
