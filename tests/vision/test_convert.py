"""Official checkpoint conversion: synthetic files with the official key names load strictly."""

import argparse

import pytest
import timm
import torch
from safetensors.torch import load_file

import mambasuite.vision  # noqa: F401
from mambasuite.core.cli import main as cli_main
from mambasuite.vision.convert import convert
from mambasuite.vision.models._helpers import read_checkpoint

from .conftest import official_vim_state_dict, official_vmamba_state_dict

# test_vim: D 32, depth 3, patch 4 on 32 px (8x8 grid); test_vmamba: dims 16, depths 1-1-2-1, ssm_ratio 1, mlp 2.
VIM = dict(dim=32, depth=3, grid=8, d_state=8, patch=4)
VMAMBA = dict(dim=16, depths=(1, 1, 2, 1), ssm_ratio=1.0, mlp_ratio=2.0)


def _official_vim_file(path, num_classes=1000, grid=8):
    model = official_vim_state_dict(**{**VIM, "grid": grid}, num_classes=num_classes)
    ema = {k: v + 1 for k, v in model.items()}
    args = argparse.Namespace(model="vim_tiny", lr=5e-4, data_path="/data/imagenet")
    torch.save({"model": model, "model_ema": ema, "optimizer": {}, "epoch": 299, "args": args}, path)
    return model, ema


def test_vim_official_file_loads_strictly_through_timm(tmp_path):
    model_sd, ema_sd = _official_vim_file(tmp_path / "vim.pth")
    model = timm.create_model("test_vim", pretrained=True, num_classes=1000,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "vim.pth")))
    # EMA weights are preferred when the file has them (timm's convention)
    torch.testing.assert_close(model.layers[1].mixer.A_b_log, ema_sd["layers.1.mixer.A_b_log"])
    torch.testing.assert_close(model.head.weight, ema_sd["head.weight"])


def test_vim_other_num_classes_keeps_fresh_head_and_resamples_pos(tmp_path):
    _official_vim_file(tmp_path / "vim.pth", grid=8)
    model = timm.create_model("test_vim", pretrained=True, num_classes=10, img_size=36,  # 9x9 grid
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "vim.pth")))
    assert model.head.weight.shape == (10, 32) and model.pos_embed.shape == (1, 82, 32)
    assert model(torch.randn(1, 3, 36, 36)).shape == (1, 10)


def test_vim_missing_key_is_reported(tmp_path):
    sd = official_vim_state_dict(**VIM)
    del sd["layers.2.mixer.D_b"]
    torch.save({"model": sd}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="layers.2.mixer.D_b"):
        timm.create_model("test_vim", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "bad.pth")))


def test_unlisted_pickle_globals_are_refused(tmp_path):
    torch.save({"model": {}, "args": torch.nn.Linear(1, 1)}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="evil.pth"):
        read_checkpoint(tmp_path / "evil.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_checkpoint(tmp_path / "nope.pth")


@pytest.mark.parametrize("legacy", [False, True])
def test_vmamba_official_file_loads_strictly(tmp_path, legacy):
    sd = official_vmamba_state_dict(**VMAMBA, legacy=legacy)
    # Linear2d checkpoints may carry (out, in, 1, 1) linear weights
    sd["layers.0.blocks.0.mlp.fc1.weight"] = sd["layers.0.blocks.0.mlp.fc1.weight"][:, :, None, None]
    torch.save({"model": sd, "epoch": 3, "max_accuracy": 0.5}, tmp_path / "vmamba.pth")
    model = timm.create_model("test_vmamba", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "vmamba.pth")))
    head = "head.weight" if legacy else "classifier.head.weight"
    torch.testing.assert_close(model.classifier.head.weight, sd[head])
    op = "self_attention" if legacy else "op"
    torch.testing.assert_close(model.layers[2].blocks[1].op.x_proj_weight, sd[f"layers.2.blocks.1.{op}.x_proj_weight"])


def test_vmamba_yacs_config_entry_is_readable_without_yacs(tmp_path, monkeypatch):
    # Official VMamba files pickle a yacs CfgNode under "config"; build one under that module name.
    import sys
    import types

    yacs = types.ModuleType("yacs")
    config = types.ModuleType("yacs.config")

    class CfgNode(dict):
        pass

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    config.CfgNode = CfgNode
    monkeypatch.setitem(sys.modules, "yacs", yacs)
    monkeypatch.setitem(sys.modules, "yacs.config", config)
    node = CfgNode(MODEL=CfgNode(NAME="vssm1_tiny"))
    torch.save({"model": official_vmamba_state_dict(**VMAMBA), "config": node}, tmp_path / "v.pth")
    monkeypatch.delitem(sys.modules, "yacs.config")
    ckpt = read_checkpoint(tmp_path / "v.pth")
    assert ckpt["config"]["MODEL"]["NAME"] == "vssm1_tiny"


def test_convert_cli_vim_roundtrip(tmp_path, capsys):
    _official_vim_file(tmp_path / "vim.pth")
    dst = tmp_path / "out" / "vim.safetensors"
    assert cli_main(["convert", "vim", str(tmp_path / "vim.pth"), str(dst), "--model", "test_vim"]) == 0
    assert "test_vim" in capsys.readouterr().out
    weights = load_file(str(dst))
    model = timm.create_model("test_vim", pretrained=True, num_classes=1000,
                              pretrained_cfg_overlay=dict(file=str(dst)))
    torch.testing.assert_close(model.state_dict()["norm_f.weight"], weights["norm_f.weight"])


@pytest.mark.parametrize("grid, name", [(14, "vim_tiny_patch16_224"), (27, "vim_tiny_patch16_stride8_224")])
def test_convert_infers_official_vim_sizes(tmp_path, grid, name):
    sd = official_vim_state_dict(dim=192, depth=24, grid=grid)
    torch.save({"model": sd, "args": argparse.Namespace(model="x")}, tmp_path / "t.pth")
    assert convert("vim", tmp_path / "t.pth", tmp_path / "t.safetensors") == name
    assert load_file(str(tmp_path / "t.safetensors"))["pos_embed"].shape == (1, grid * grid + 1, 192)


def test_convert_infers_official_vmamba_tiny(tmp_path):
    sd = official_vmamba_state_dict(dim=96, depths=(2, 2, 8, 2), ssm_ratio=1.0, mlp_ratio=4.0)
    torch.save({"model": sd}, tmp_path / "t.pth")
    assert convert("vmamba", tmp_path / "t.pth", tmp_path / "t.safetensors") == "vmamba_tiny"


def test_convert_vmamba_and_errors(tmp_path):
    torch.save({"model": official_vmamba_state_dict(**VMAMBA, legacy=True)}, tmp_path / "v.pth")
    assert convert("vmamba", tmp_path / "v.pth", tmp_path / "v.safetensors", model_name="test_vmamba") == "test_vmamba"
    with pytest.raises(ValueError, match="no registered VMamba"):
        convert("vmamba", tmp_path / "v.pth", tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match=r"as vim_tiny_patch16_224.*shape mismatches"):
        convert("vim", tmp_path / "v.pth", tmp_path / "w.safetensors", model_name="vim_tiny_patch16_224")
    with pytest.raises(SystemExit):
        cli_main(["convert", "vim", str(tmp_path / "missing.pth"), str(tmp_path / "x.safetensors")])
