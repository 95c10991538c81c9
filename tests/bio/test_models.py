"""Caduceus-Ph / PS / causal Mamba DNA: RC equivariance, invariance, shapes, gradients, sizes, save/load."""

import pytest
import torch

from mambasuite.bio.models import (Caduceus, CaduceusForMaskedLM, CaduceusForSequenceClassification,
                                   caduceus_ph_118_4l, caduceus_ph_256_16l, caduceus_ps_256_16l, caduceus_ps_256_4l,
                                   caduceus_ps_tiny, mamba_dna_tiny, caduceus_ph_tiny)
from mambasuite.bio.tokenizer import COMPLEMENT_MAP, PAD_ID, reverse_complement_ids

CMAP = torch.tensor(COMPLEMENT_MAP)


def _ids(batch=2, length=33, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(7, 12, (batch, length), generator=g)


def _perturb(model):
    """Move every parameter off its init (norm weights are all ones, D is ones) to test a generic point."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def test_ps_lm_is_rc_equivariant():
    torch.manual_seed(0)
    model = _perturb(caduceus_ps_tiny()).eval()
    x = _ids()
    with torch.no_grad():
        out, out_rc = model(x), model(reverse_complement_ids(x))
    assert out.shape == (2, 33, 16)
    assert (out_rc - out.flip(1)[..., CMAP]).abs().max() < 1e-5
    assert out.abs().max() > 0.1  # not trivially zero


def test_ph_lm_is_not_rc_equivariant():
    # The property above is a real constraint: the plain BiMamba model breaks it.
    torch.manual_seed(0)
    model = _perturb(caduceus_ph_tiny()).eval()
    x = _ids()
    with torch.no_grad():
        out, out_rc = model(x), model(reverse_complement_ids(x))
    assert (out_rc - out.flip(1)[..., CMAP]).abs().max() > 1e-2


def test_ps_backbone_hidden_is_equivariant():
    torch.manual_seed(0)
    bb = _perturb(Caduceus(d_model=8, n_layer=3, rcps=True)).eval()
    x = _ids(length=20)
    with torch.no_grad():
        h, h_rc = bb(x), bb(reverse_complement_ids(x))
    assert h.shape == (2, 20, 16)
    assert (h_rc - h.flip(-2, -1)).abs().max() < 1e-5


@pytest.mark.parametrize("rcps,conjoin", [(True, False), (False, True)])
def test_classifier_rc_invariant(rcps, conjoin):
    torch.manual_seed(0)
    clf = _perturb(CaduceusForSequenceClassification(num_labels=3, d_model=16, n_layer=2, rcps=rcps,
                                                     conjoin=conjoin)).eval()
    x = _ids(length=25)
    x[0, :5] = PAD_ID  # left padding: pooled over real tokens only
    with torch.no_grad():
        y, y_rc = clf(x), clf(reverse_complement_ids(x))
    assert y.shape == (2, 3)
    assert (y - y_rc).abs().max() < 1e-5


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    for model in (caduceus_ps_tiny(), caduceus_ph_tiny(), mamba_dna_tiny()):
        x = _ids(length=16)
        model(x).logsumexp(-1).mean().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name


def test_causal_lm_is_causal():
    torch.manual_seed(0)
    model = mamba_dna_tiny().eval()
    x = _ids(length=20)
    x2 = x.clone()
    x2[:, 12:] = 7 + (x2[:, 12:] - 6) % 4
    with torch.no_grad():
        a, b = model(x), model(x2)
    assert torch.allclose(a[:, :12], b[:, :12], atol=1e-6)
    assert not torch.allclose(a[:, 12:], b[:, 12:], atol=1e-4)


def test_released_sizes_and_weight_tying():
    # Released checkpoints: 30.9 MB fp32 for d256 x 16 = 7,725,312 parameters; d118 x 4 ~ 0.47M.
    assert sum(p.numel() for p in caduceus_ph_256_16l().parameters()) == 7_725_312
    assert sum(p.numel() for p in caduceus_ps_256_16l().parameters()) == 7_725_312
    assert 460_000 < sum(p.numel() for p in caduceus_ph_118_4l().parameters()) < 480_000
    m = caduceus_ps_256_4l()
    mixer = m.caduceus.backbone.layers[0].mixer.submodule
    assert mixer.mamba_rev.in_proj.weight is mixer.mamba_fwd.in_proj.weight
    assert mixer.mamba_rev.conv1d.weight is not mixer.mamba_fwd.conv1d.weight
    assert m.caduceus.hidden_size == 512


def test_state_dict_uses_caduceus_names():
    keys = set(caduceus_ps_tiny().state_dict())
    assert "caduceus.embeddings.word_embeddings.embedding.weight" in keys
    assert "caduceus.embeddings.word_embeddings.complement_map" in keys
    assert "caduceus.backbone.layers.1.mixer.submodule.mamba_rev.A_log" in keys
    ph = set(caduceus_ph_tiny().state_dict())
    assert "caduceus.backbone.layers.0.mixer.mamba_fwd.in_proj.weight" in ph
    assert "caduceus.embeddings.word_embeddings.weight" in ph


def test_save_and_load_pretrained_roundtrip(tmp_path):
    torch.manual_seed(0)
    bb = _perturb(Caduceus(d_model=8, n_layer=2, rcps=True)).eval()
    bb.save_pretrained(tmp_path)
    again = Caduceus.from_pretrained(tmp_path)
    x = _ids(length=12)
    with torch.no_grad():
        assert torch.equal(bb(x), again(x))


def test_bad_arguments():
    with pytest.raises(ValueError, match="rcps=True needs bidirectional=True"):
        Caduceus(d_model=8, n_layer=1, rcps=True, bidirectional=False)
    with pytest.raises(ValueError, match="complement_map"):
        Caduceus(d_model=8, n_layer=1, complement_map=[0] * 16)
    with pytest.raises(ValueError, match="input_ids must be"):
        Caduceus(d_model=8, n_layer=1)(torch.zeros(2, 3, 4, dtype=torch.long))
