"""`mamba-suite convert caduceus`: HF Caduceus-Ph and -PS key layouts -> our backbone, strict load, re-tying,
the PS fused-path half swap, refusals."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mambasuite.bio.convert import convert, convert_state_dict
from mambasuite.bio.models import Caduceus
from mambasuite.bio.tokenizer import COMPLEMENT_MAP, reverse_complement_ids
from mambasuite.core import cli

HF_CMAP = {str(i): c for i, c in enumerate([0, 1, 2, 3, 4, 5, 6, 10, 9, 8, 7, 11, 12, 13, 14, 15])}


def _hf_state_dict(model: Caduceus, prefix: str = "caduceus.backbone.") -> dict[str, torch.Tensor]:
    """Our Ph weights written in the Hugging Face CaduceusForMaskedLM layout, with the tied copies HF may store."""
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


def _perturbed(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _model():
    torch.manual_seed(0)
    return _perturbed(Caduceus(d_model=16, n_layer=2, d_state=8))


def _official_ps_keys(d: int, n_layer: int, n: int, fused: bool) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a released-style CaduceusForMaskedLM (rcps) file, written from the official module tree
    (genomics.md 1.7), with the tied tensors (mamba_rev in/out_proj, lm_head weight) stored once."""
    e, r = 2 * d, math.ceil(d / 16)
    b = "caduceus.backbone."
    keys = {b + "embeddings.word_embeddings.embedding.weight": (16, d),
            b + "embeddings.word_embeddings.complement_map": (16,), "lm_head.complement_map": (16,),
            b + ("norm_f.weight" if fused else "norm_f.submodule.weight"): (d,)}
    for i in range(n_layer):
        keys[f"{b}layers.{i}.norm.{'' if fused else 'submodule.'}weight"] = (d,)
        for direction in ("mamba_fwd", "mamba_rev"):
            m = f"{b}layers.{i}.mixer.submodule.{direction}."
            keys.update({m + "conv1d.weight": (e, 1, 4), m + "conv1d.bias": (e,), m + "x_proj.weight": (r + 2 * n, e),
                         m + "dt_proj.weight": (e, r), m + "dt_proj.bias": (e,), m + "A_log": (e, n), m + "D": (e,)})
            if direction == "mamba_fwd":
                keys.update({m + "in_proj.weight": (2 * e, d), m + "out_proj.weight": (d, e)})
    return keys


def _to_official_ps(model: Caduceus, fused: bool) -> dict[str, torch.Tensor]:
    """Our PS backbone's weights renamed into the official layout (tied tensors once)."""
    sd = {}
    for k, v in model.state_dict().items():
        if ".mamba_rev.in_proj" in k or ".mamba_rev.out_proj" in k:
            continue
        if k.startswith("backbone."):
            k = k[len("backbone."):]
            if fused:
                k = k.replace("norm.submodule.weight", "norm.weight").replace("norm_f.submodule.", "norm_f.")
        sd["caduceus.backbone." + k] = v.clone()
    sd["lm_head.complement_map"] = sd["caduceus.backbone.embeddings.word_embeddings.complement_map"].clone()
    return sd


def test_cli_converts_hf_dir_and_outputs_match(tmp_path, monkeypatch):
    model = _model()
    src = tmp_path / "hf"
    src.mkdir()
    sd = _hf_state_dict(model)
    # safetensors refuses shared storage; the clones above are separate tensors with equal values
    save_file({k: v.contiguous() for k, v in sd.items()}, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps({"rcps": False, "bidirectional_strategy": "add", "d_model": 16,
                                                 "complement_map": HF_CMAP, "norm_epsilon": 1e-5}))
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
    assert kwargs == dict(d_model=16, n_layer=2, vocab_size=16, rcps=False, bidirectional=True,
                          bidirectional_weight_tie=True, d_state=8, expand=2, d_conv=4, swap_halves=False)
    assert "embeddings.word_embeddings.weight" in ours and "backbone.norm_f.weight" in ours
    assert not any("mamba_rev.in_proj" in k for k in ours)


def test_official_ps_layout_loads_strictly(tmp_path):
    """A synthetic file with exactly the official PS key set and shapes (listed independently of our model)."""
    d, n_layer, n = 16, 3, 8
    torch.manual_seed(0)
    shapes = _official_ps_keys(d, n_layer, n, fused=True)
    sd = {k: torch.randn(s) for k, s in shapes.items()}
    for k in sd:
        if k.endswith("complement_map"):
            sd[k] = torch.tensor(COMPLEMENT_MAP)
    src = tmp_path / "ps"
    src.mkdir()
    save_file(sd, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps({"rcps": True, "fused_add_norm": True, "rms_norm": True,
                                                 "bidirectional_weight_tie": True, "complement_map": HF_CMAP}))
    loaded = Caduceus.from_pretrained(convert(src, tmp_path / "ours"))  # from_pretrained is strict too
    assert loaded.rcps and loaded.swap_halves and loaded.config["n_layer"] == n_layer
    assert loaded.config["d_state"] == n and loaded.hidden_size == 2 * d
    mixer = loaded.backbone.layers[2].mixer.submodule
    assert mixer.mamba_rev.in_proj.weight is mixer.mamba_fwd.in_proj.weight
    torch.testing.assert_close(mixer.mamba_rev.A_log,
                               sd["caduceus.backbone.layers.2.mixer.submodule.mamba_rev.A_log"], rtol=0, atol=0)
    torch.testing.assert_close(loaded.backbone.layers[1].norm.submodule.weight,
                               sd["caduceus.backbone.layers.1.norm.weight"], rtol=0, atol=0)


@pytest.mark.parametrize("fused", [True, False])
def test_ps_round_trip_reproduces_outputs_and_stays_equivariant(tmp_path, fused):
    torch.manual_seed(1)
    model = _perturbed(Caduceus(d_model=16, n_layer=3, d_state=8, rcps=True, swap_halves=fused))
    sd = _to_official_ps(model, fused)
    assert set(sd) == set(_official_ps_keys(16, 3, 8, fused))
    src = tmp_path / "ps"
    src.mkdir()
    save_file(sd, str(src / "model.safetensors"))
    loaded = Caduceus.from_pretrained(convert(src, tmp_path / "ours"))  # no config.json: layout decides
    assert loaded.swap_halves is fused
    x = torch.randint(7, 12, (2, 19))
    with torch.no_grad():
        out, out_rc = loaded(x), loaded(reverse_complement_ids(x))
        assert torch.equal(out, model(x))
    assert (out_rc - out.flip(-2, -1)).abs().max() < 1e-5


def test_ps_config_must_agree_with_keys(tmp_path):
    model = _perturbed(Caduceus(d_model=16, n_layer=2, d_state=8, rcps=True, swap_halves=True))
    src = tmp_path / "ps"
    src.mkdir()
    save_file(_to_official_ps(model, fused=True), str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps({"rcps": True, "fused_add_norm": False}))
    with pytest.raises(ValueError, match="fused_add_norm=False but the weights' keys say fused_add_norm=True"):
        convert(src, tmp_path / "ours")
    (src / "config.json").write_text(json.dumps({"rcps": True, "rms_norm": False}))
    with pytest.raises(ValueError, match="rms_norm=false"):
        convert(src, tmp_path / "ours")


def test_refusals_name_the_problem():
    sd = _hf_state_dict(_model())
    bad = dict(sd)
    bad["caduceus.backbone.layers.1.mixer.mamba_rev.in_proj.weight"] = bad[
        "caduceus.backbone.layers.1.mixer.mamba_rev.in_proj.weight"] + 1
    with pytest.raises(ValueError, match=r"some mamba_rev projections .*layers\.1\.mixer\.mamba_rev\.in_proj"):
        convert_state_dict(bad)
    with pytest.raises(ValueError, match=r"unexpected keys .*'decoder.weight'"):
        convert_state_dict({**sd, "decoder.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="lm_head.weight is stored separately and differs"):
        convert_state_dict({**sd, "lm_head.weight": sd["lm_head.weight"] + 1})
    ps = _to_official_ps(_perturbed(Caduceus(d_model=16, n_layer=2, d_state=8, rcps=True)), fused=True)
    mixed = {k.replace("layers.1.norm.weight", "layers.1.norm.submodule.weight"): v for k, v in ps.items()}
    with pytest.raises(ValueError, match="mix the fused"):
        convert_state_dict(mixed)
    with pytest.raises(ValueError, match="lm_head.complement_map is stored separately"):
        convert_state_dict({**ps, "lm_head.complement_map": torch.arange(16)})
    with pytest.raises(ValueError, match="LayerNorm"):
        convert_state_dict({**ps, "caduceus.backbone.norm_f.bias": torch.zeros(16)})


def test_untied_reverse_projections_are_kept():
    sd = _hf_state_dict(_model())
    for i in range(2):
        for name in ("in_proj.weight", "out_proj.weight"):
            key = f"caduceus.backbone.layers.{i}.mixer.mamba_rev.{name}"
            sd[key] = sd[key] + 0.5
    ours, kwargs = convert_state_dict(sd)
    assert kwargs["bidirectional_weight_tie"] is False
    model = Caduceus(**kwargs)
    model.load_state_dict(ours, strict=True)
    assert model.backbone.layers[0].mixer.mamba_rev.in_proj.weight is not model.backbone.layers[0].mixer.mamba_fwd.in_proj.weight


def test_unidirectional_checkpoint():
    torch.manual_seed(0)
    causal = _perturbed(Caduceus(d_model=16, n_layer=2, d_state=8, bidirectional=False))
    sd = {"backbone." + k.replace("backbone.", "").replace(".mixer.", ".mixer.mamba_fwd."): v
          for k, v in causal.state_dict().items()}
    ours, kwargs = convert_state_dict(sd)
    assert kwargs["bidirectional"] is False
    again = Caduceus(**kwargs)
    again.load_state_dict(ours, strict=True)
    x = torch.randint(7, 12, (1, 9))
    with torch.no_grad():
        assert torch.equal(again.eval()(x), causal(x))


class _RunsCode:
    """A pickle payload whose __reduce__ would create a marker file (a harmless stand-in for os.system)."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("variant", ["payload", "truncated", "bad safetensors", "bad config.json"])
def test_convert_refuses_malicious_and_corrupt_files_naming_them(tmp_path, monkeypatch, capsys, variant):
    """`convert caduceus` reads pickles weights-only: a payload is refused (never run); every error names the file."""
    marker = tmp_path / "pwned"
    src = tmp_path / "evil.pt"
    torch.save({"state_dict": _hf_state_dict(_model()), "hyper_parameters": {"x": _RunsCode(marker)}}, src)
    named = "evil.pt"
    if variant == "truncated":
        src.write_bytes(src.read_bytes()[:500])
    elif variant == "bad safetensors":
        src = tmp_path / "hf"
        src.mkdir()
        (src / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{truncated")
        named = "model.safetensors"
    elif variant == "bad config.json":
        src = tmp_path / "hf"
        src.mkdir()
        save_file({k: v.contiguous() for k, v in _hf_state_dict(_model()).items()}, str(src / "model.safetensors"))
        (src / "config.json").write_bytes(b"{\"rcps\": tru")
        named = "config.json"
    monkeypatch.setattr(sys, "argv", ["mamba-suite"])
    with pytest.raises(SystemExit) as exc:
        cli.main(["convert", "caduceus", str(src), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and named in err, err
    if variant == "payload":
        assert "not a weights-only checkpoint" in err
    assert not marker.exists() and not (tmp_path / "out").exists()
