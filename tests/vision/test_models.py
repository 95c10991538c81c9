"""Vim and VMamba models: timm registration, sizes, shapes, gradients, hooks and pos-embed resampling."""

import pytest
import timm
import torch

import mambasuite.vision  # noqa: F401
from mambasuite.vision.models.vim import resample_pos_embed_midcls

# Published sizes at 1000 classes: Vim (vision.md §1.4), VMamba v2 (§2.4 rows vmambav2v_tiny,
# vmambav2_small, vmambav2_base; README 30M / 50M / 89M).
OFFICIAL_PARAMS = {"vim_tiny_patch16_224": 7.15e6, "vim_small_patch16_224": 25.8e6, "vim_base_patch16_224": 97.6e6,
                   "vmamba_tiny": 30.2e6, "vmamba_small": 50.1e6, "vmamba_base": 88.6e6}


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_official_parameter_counts(name):
    model = timm.create_model(name)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - OFFICIAL_PARAMS[name]) / OFFICIAL_PARAMS[name] < 0.005, n


def test_vim_stride8_has_729_tokens():
    model = timm.create_model("vim_tiny_patch16_stride8_224", depth=1)
    assert model.grid_size == (27, 27) and model.pos_embed.shape == (1, 730, 192)


@pytest.mark.parametrize("name", ["test_vim", "test_vmamba"])
def test_forward_backward_and_hooks(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7)
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters()), \
        [n for n, p in model.named_parameters() if p.grad is None]
    feats = model.forward_features(x)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.get_classifier().out_features == 3
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)


def test_vim_features_are_unpooled_with_middle_cls():
    model = timm.create_model("test_vim", num_classes=5).eval()
    x = torch.randn(1, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (1, 8 * 8 + 1, 32)
    # the head reads the middle token (index 32 of 65)
    torch.testing.assert_close(model.forward_head(feats), model.head(feats[:, 32]))


@pytest.mark.parametrize("name", ["test_vim", "test_vmamba"])
def test_no_weight_decay_lists_every_ssm_parameter(name):
    model = timm.create_model(name)
    nwd = model.no_weight_decay()
    names = dict(model.named_parameters())
    assert nwd <= set(names)
    for n in names:
        if n.rsplit(".", 1)[-1] in ("A_log", "A_b_log", "D", "D_b", "A_logs", "Ds", "pos_embed", "cls_token"):
            assert n in nwd, n
    if name == "test_vim":
        assert {"pos_embed", "cls_token", "layers.0.mixer.A_b_log", "layers.2.mixer.D_b"} <= nwd


@pytest.mark.parametrize("name", ["test_vim", "test_vmamba"])
def test_layer_decay_groups_cover_all_parameters(name):
    from timm.optim import param_groups_layer_decay

    model = timm.create_model(name)
    groups = param_groups_layer_decay(model, weight_decay=0.05, no_weight_decay_list=model.no_weight_decay(),
                                      layer_decay=0.75)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    scales = sorted({g["lr_scale"] for g in groups})
    assert len(scales) >= 3 and scales[-1] == 1.0  # stem decayed most, head undecayed


def test_vim_pos_embed_resampled_for_other_sizes():
    model = timm.create_model("test_vim", num_classes=4).eval()
    for size in (32, 36, 48, 28):  # grids 8, 9 (odd), 12, 7
        assert model(torch.randn(1, 3, size, size)).shape == (1, 4)
    created = timm.create_model("test_vim", img_size=48)
    assert created.pos_embed.shape == (1, 12 * 12 + 1, 32)


@pytest.mark.parametrize("old, new", [(8, 8), (8, 9), (9, 8), (7, 12)])
def test_resample_keeps_cls_slot_in_the_middle(old, new):
    pos = torch.randn(1, old * old + 1, 6)
    out = resample_pos_embed_midcls(pos, (new, new))
    assert out.shape == (1, new * new + 1, 6)
    torch.testing.assert_close(out[:, (new * new) // 2], pos[:, (old * old) // 2])
    if old == new:
        torch.testing.assert_close(out, pos)
    # a constant patch embedding stays constant: the cls slot never leaks into the patch grid
    pos = torch.ones(1, old * old + 1, 2)
    pos[:, (old * old) // 2] = 100.0
    out = resample_pos_embed_midcls(pos, (new, new))
    patches = torch.cat([out[:, : new * new // 2], out[:, new * new // 2 + 1:]], dim=1)
    torch.testing.assert_close(patches, torch.ones_like(patches))


def test_resample_rejects_non_square_without_grid():
    with pytest.raises(ValueError, match="not a square grid"):
        resample_pos_embed_midcls(torch.randn(1, 11, 4), (3, 3))


def test_vim_rejects_wrong_channels():
    model = timm.create_model("test_vim")
    with pytest.raises(ValueError, match="input must be"):
        model(torch.randn(1, 1, 32, 32))


def test_vim_drop_path_schedule():
    model = timm.create_model("vim_tiny_patch16_224", drop_path_rate=0.1, depth=4)
    rates = [layer.drop_path.p for layer in model.layers]
    assert rates[0] == 0.0 and rates[1] == 0.0 and rates[-1] == pytest.approx(0.1 * 2 / 3)
    assert model.drop_path_f.p == pytest.approx(0.1)


@pytest.mark.parametrize("name, n_out", [("test_vim", 3), ("test_vmamba", 4)])
def test_features_only(name, n_out):
    model = timm.create_model(name, features_only=True)
    feats = model(torch.randn(2, 3, 32, 32))
    assert len(feats) == n_out
    for f, info in zip(feats, model.feature_info.get_dicts()):
        assert f.shape[1] == info["num_chs"] and f.shape[-1] == 32 // info["reduction"]


def test_grad_checkpointing_matches():
    torch.manual_seed(0)
    for name in ("test_vim", "test_vmamba"):
        model = timm.create_model(name).train()
        x = torch.randn(2, 3, 32, 32)
        torch.manual_seed(1)
        ref = model(x)
        model.set_grad_checkpointing(True)
        torch.manual_seed(1)
        out = model(x)
        out.sum().backward()
        torch.testing.assert_close(out, ref)


def test_vmamba_channel_last_features_and_odd_sizes():
    model = timm.create_model("test_vmamba", num_classes=3).eval()
    assert model.forward_features(torch.randn(1, 3, 64, 48)).shape == (1, 2, 2, 128)
    assert model(torch.randn(1, 3, 33, 45)).shape == (1, 3)


def test_vmamba_layer_decay_order_follows_depth():
    from timm.optim import param_groups_layer_decay

    model = timm.create_model("test_vmamba")
    groups = param_groups_layer_decay(model, weight_decay=0.0, layer_decay=0.5)
    ids = {id(p): n for n, p in model.named_parameters()}
    scale = {ids[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    order = ["patch_embed.0.weight", "layers.0.blocks.0.op.in_proj.weight", "layers.0.downsample.1.weight",
             "layers.1.blocks.0.op.in_proj.weight", "layers.3.blocks.0.op.in_proj.weight", "classifier.head.weight"]
    values = [scale[n] for n in order]
    assert values == sorted(values) and len(set(values)) >= 5, values  # a downsample may share its stage's scale


def test_vim_forward_intermediates():
    model = timm.create_model("test_vim").eval()
    x = torch.randn(2, 3, 32, 32)
    final, feats = model.forward_intermediates(x, indices=[0, -1], norm=True)
    torch.testing.assert_close(final, model.forward_features(x))
    assert [f.shape for f in feats] == [(2, 32, 8, 8)] * 2
    # the last tap with norm=True is the final feature map without the middle class token
    tokens = torch.cat([final[:, :32], final[:, 33:]], dim=1)
    torch.testing.assert_close(feats[-1], tokens.transpose(1, 2).reshape(2, 32, 8, 8))
    nlc = model.forward_intermediates(x, indices=1, output_fmt="NLC", intermediates_only=True)
    assert len(nlc) == 1 and nlc[0].shape == (2, 64, 32)
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")


def test_vmamba_forward_intermediates_and_prune():
    model = timm.create_model("test_vmamba").eval()
    x = torch.randn(1, 3, 64, 64)
    feats = model.forward_intermediates(x, intermediates_only=True)
    assert [tuple(f.shape) for f in feats] == [(1, 16, 16, 16), (1, 32, 8, 8), (1, 64, 4, 4), (1, 128, 2, 2)]
    assert model.prune_intermediate_layers([0, 1]) == [0, 1]
    assert len(model.layers) == 2 and model(x).shape == (1, 8, 8, 32)  # head and pooling pruned
