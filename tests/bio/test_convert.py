"""`mamba-suite convert caduceus`: HF Caduceus-Ph key layout -> our backbone, strict load, re-tying, refusals."""

import json
import sys

import pytest
import torch
from safetensors.torch import save_file

from mambasuite.bio.convert import convert_state_dict
from mambasuite.bio.models import Caduceus
from mambasuite.core import cli


def _hf_state_dict(model: Caduceus, prefix: str = "caduceus.backbone.") -> dict[str, torch.Tensor]:
    """Our weights written in the Hugging Face CaduceusForMaskedLM layout, with the tied copies that HF may store."""
    sd = {}
    for k, v in model.state_dict().items():
        if k.startswith("backbone."):
            k = k[len("backbone."):]
        sd[prefix + k] = v.clone()
    for i in range(model.backbone.n_layer):
        for name in ("in_proj.weight", "out_proj.weight"):
            sd[f"{prefix}layers.{i}.mixer.mamba_rev.{name}"] = sd[f"{prefix}layers.{i}.mixer.mamba_fwd.{name}"].clone()
    sd["lm_head.weight"] = sd[prefix + "embeddings.word_embeddings.weight"].clone()
    return sd


def _model():
    torch.manual_seed(0)
    m = Caduceus(d_model=16, n_layer=2, d_state=8)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def test_cli_converts_hf_dir_and_outputs_match(tmp_path, monkeypatch):
    model = _model()
    src = tmp_path / "hf"
    src.mkdir()
    sd = _hf_state_dict(model)
    # safetensors refuses shared storage; the clones above are separate tensors with equal values
    save_file({k: v.contiguous() for k, v in sd.items()}, str(src / "model.safetensors"))
    cmap = {str(i): c for i, c in enumerate([0, 1, 2, 3, 4, 5, 6, 10, 9, 8, 7, 11, 12, 13, 14, 15])}
    (src / "config.json").write_text(json.dumps({"rcps": False, "bidirectional_strategy": "add", "d_model": 16,
                                                 "complement_map": cmap, "norm_epsilon": 1e-5}))
    monkeypatch.setattr(sys, "argv", ["mamba-suite"])
    assert cli.main(["convert", "caduceus", str(src), str(tmp_path / "ours")]) == 0
    loaded = Caduceus.from_pretrained(tmp_path / "ours")
    assert (loaded.d_model, loaded.backbone.n_layer, loaded.config["d_state"]) == (16, 2, 8)
    x = torch.randint(7, 12, (2, 21))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    mixer = loaded.backbone.layers[1].mixer
    assert mixer.mamba_rev.out_proj.weight is mixer.mamba_fwd.out_proj.weight  # re-tied


def test_bare_backbone_prefix_and_sizes():
    sd = _hf_state_dict(_model(), prefix="backbone.")
    del sd["lm_head.weight"]
    ours, kwargs = convert_state_dict(sd)
    assert kwargs == dict(d_model=16, n_layer=2, vocab_size=16, rcps=False, d_state=8, expand=2, d_conv=4)
    assert "embeddings.word_embeddings.weight" in ours and "backbone.norm_f.weight" in ours
    assert not any("mamba_rev.in_proj" in k for k in ours)


def test_refusals_name_the_problem():
    sd = _hf_state_dict(_model())
    bad = dict(sd)
    bad["caduceus.backbone.layers.1.mixer.mamba_rev.in_proj.weight"] = bad[
        "caduceus.backbone.layers.1.mixer.mamba_rev.in_proj.weight"] + 1
    with pytest.raises(ValueError, match=r"layers\.1\.mixer\.mamba_rev\.in_proj\.weight is stored separately"):
        convert_state_dict(bad)
    with pytest.raises(ValueError, match=r"unexpected keys .*'decoder.weight'"):
        convert_state_dict({**sd, "decoder.weight": torch.zeros(1)})
    ps = {k.replace("mixer.", "mixer.submodule."): v for k, v in sd.items()}
    with pytest.raises(ValueError, match="Caduceus-PS"):
        convert_state_dict(ps)
