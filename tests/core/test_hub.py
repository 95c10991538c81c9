"""save_pretrained / from_pretrained: round trips, strictness, tied weights, offline hub ids."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
import torch
from safetensors import safe_open
from torch import nn

import mambasuite
from mambasuite.core import MambaBackbone, PretrainedMixin


class Tiny(PretrainedMixin, nn.Module):
    """A minimal PretrainedMixin model without **kwargs."""

    def __init__(self, dim: int, act=None, tie: bool = False):
        super().__init__()
        self.a = nn.Linear(dim, dim)
        self.b = nn.Linear(dim, dim)
        if tie:
            self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(self.a(x))


def backbone(**kwargs):
    torch.manual_seed(0)
    args = dict(d_model=16, n_layer=2, d_state=4, backend="reference")
    args.update(kwargs)
    return MambaBackbone(**args)


def test_round_trip_gives_equal_outputs_and_writes_config(tmp_path):
    model = backbone(mixer="bimamba", bimamba_combine="mean", dt_rank=3).eval()
    x = torch.randn(2, 5, 16)
    model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["architecture"] == "mambasuite.core.blocks.MambaBackbone"
    assert config["mambasuite_version"] == mambasuite.__version__
    assert config["init_args"]["dt_rank"] == 3  # **mixer_kwargs recorded flat
    assert config["init_args"]["bimamba_combine"] == "mean" and config["init_args"]["n_layer"] == 2
    assert config["init_args"]["drop_path_rate"] == 0.0  # defaults recorded too
    torch.manual_seed(99)  # loading must not depend on the init RNG
    loaded = MambaBackbone.from_pretrained(tmp_path / "ckpt")
    assert not loaded.training
    assert loaded.config == model.config
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)


def test_overrides_replace_saved_arguments(tmp_path):
    backbone().save_pretrained(tmp_path)
    loaded = MambaBackbone.from_pretrained(tmp_path, grad_checkpointing=True, backend="auto")
    assert loaded.grad_checkpointing and loaded.config["backend"] == "auto"
    Tiny(4).save_pretrained(tmp_path / "tiny")
    with pytest.raises(TypeError, match=r"unknown overrides \['dims'\]"):
        Tiny.from_pretrained(tmp_path / "tiny", dims=3)


def test_strict_mismatch_lists_missing_and_unexpected_keys(tmp_path):
    backbone(n_layer=2).save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    config = json.loads(config_file.read_text())
    config["init_args"]["n_layer"] = 3
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"missing keys \[.*'layers\.2\.mixer\.A_log'.*unexpected keys \[\]"):
        MambaBackbone.from_pretrained(tmp_path)
    config["init_args"].update(n_layer=1)
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"missing keys \[\], unexpected keys \[.*'layers\.1\.norm\.weight'"):
        MambaBackbone.from_pretrained(tmp_path)
    partial = MambaBackbone.from_pretrained(tmp_path, strict=False)
    saved = backbone(n_layer=2)
    torch.testing.assert_close(partial.layers[0].mixer.A_log, saved.layers[0].mixer.A_log)


def test_tied_weights_round_trip_and_stay_tied(tmp_path):
    model = backbone(mixer="bimamba_external", share_projections=True).eval()
    mixer = model.layers[0].mixer
    assert mixer.mamba_rev.in_proj.weight is mixer.mamba_fwd.in_proj.weight
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        stored = set(f.keys())
    tied_names = {"layers.0.mixer.mamba_fwd.in_proj.weight", "layers.0.mixer.mamba_rev.in_proj.weight"}
    assert len(stored & tied_names) == 1  # stored once
    loaded = MambaBackbone.from_pretrained(tmp_path)
    lm = loaded.layers[0].mixer
    assert lm.mamba_rev.in_proj.weight is lm.mamba_fwd.in_proj.weight
    assert lm.mamba_rev.out_proj.weight is lm.mamba_fwd.out_proj.weight
    torch.testing.assert_close(lm.mamba_fwd.in_proj.weight, mixer.mamba_fwd.in_proj.weight, rtol=0, atol=0)
    x = torch.randn(1, 5, 16)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_tied_weights_in_a_custom_model(tmp_path):
    torch.manual_seed(0)
    Tiny(4, tie=True).save_pretrained(tmp_path)
    loaded = Tiny.from_pretrained(tmp_path)
    assert loaded.a.weight is loaded.b.weight


def test_non_json_config_value_names_the_key(tmp_path):
    with pytest.raises(TypeError, match=r"constructor argument 'act' .*not JSON-serialisable"):
        Tiny(4, act=nn.GELU()).save_pretrained(tmp_path)


def test_architecture_mismatch_is_reported(tmp_path):
    Tiny(4).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"saved by architecture '.*Tiny'.*MambaBackbone"):
        MambaBackbone.from_pretrained(tmp_path)


def test_missing_directory_or_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        MambaBackbone.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="expected config.json"):
        MambaBackbone.from_pretrained(tmp_path / "empty")


def test_unknown_hub_id_offline_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo_id = "mambasuite-tests/no-such-model-7f3a9c"
    with pytest.raises(FileNotFoundError, match=r"not in the local Hugging Face cache.*hf download "
                                                 r"mambasuite-tests/no-such-model-7f3a9c"):
        MambaBackbone.from_pretrained(repo_id, cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a local directory nor a valid Hugging Face repo id"):
        MambaBackbone.from_pretrained("not a repo id!", cache_dir=tmp_path)


def test_hub_id_found_in_local_cache(tmp_path):
    """A repo already in the HF cache layout loads by its id, offline."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--mambasuite-tests--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    model = backbone().eval()
    model.save_pretrained(repo / "snapshots" / commit)
    loaded = MambaBackbone.from_pretrained("mambasuite-tests/tiny", cache_dir=tmp_path / "cache")
    x = torch.randn(1, 4, 16)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_config_survives_copy_and_pickle():
    model = backbone(n_layer=1)
    assert copy.deepcopy(model).config == model.config
    assert pickle.loads(pickle.dumps(model)).config == model.config
    assert model.config is not model.config  # a copy: callers cannot mutate the record


def test_init_signature_is_untouched_for_introspection():
    import inspect

    params = inspect.signature(MambaBackbone.__init__).parameters
    assert list(params)[:4] == ["self", "d_model", "n_layer", "d_state"]
    assert "mixer_kwargs" in params
