"""RMSNorm, DropPath, Block (add + norm residual convention) and MambaBackbone."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mambasuite.core import BiMamba, Block, DropPath, Mamba, MambaBackbone, RMSNorm


class Scale(nn.Module):
    """A tiny deterministic mixer: x -> 2x + 1 (records the dtype it was called with)."""

    def forward(self, x):
        self.seen_dtype = x.dtype
        return 2 * x + 1


def tiny_backbone(**kwargs):
    torch.manual_seed(0)
    args = dict(d_model=16, n_layer=3, d_state=4, backend="reference")
    args.update(kwargs)
    return MambaBackbone(**args)


# ----------------------------------------------------------------------------------------------
# Norms and DropPath
# ----------------------------------------------------------------------------------------------

def test_rmsnorm_math_weight_only_and_dtype():
    norm = RMSNorm(8, eps=1e-5)
    assert [n for n, _ in norm.named_parameters()] == ["weight"]
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 9.0))
    x = torch.randn(3, 4, 8)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * torch.arange(1.0, 9.0)
    torch.testing.assert_close(norm(x), expected)
    assert norm(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_drop_path_train_and_eval():
    torch.manual_seed(0)
    dp = DropPath(0.5)
    x = torch.ones(400, 3, 2)
    out = dp(x)
    per_sample = out.flatten(1)
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}  # dropped, or kept and scaled by 1/(1-p)
    assert (per_sample == per_sample[:, :1]).all()  # one decision per sample
    assert 0.35 < (per_sample[:, 0] == 0).float().mean() < 0.65
    dp.eval()
    assert torch.equal(dp(x), x)
    with pytest.raises(ValueError, match="p must be in"):
        DropPath(1.0)


# ----------------------------------------------------------------------------------------------
# Block
# ----------------------------------------------------------------------------------------------

def test_block_residual_semantics():
    block = Block(8, Scale(), norm="rms")
    norm = RMSNorm(8)
    h0 = torch.randn(2, 5, 8)
    hidden, residual = block(h0)  # first block: residual = input
    torch.testing.assert_close(residual, h0)
    torch.testing.assert_close(hidden, 2 * norm(h0) + 1)
    h1 = torch.randn(2, 5, 8)
    hidden2, residual2 = block(h1, residual)  # later blocks: residual += incoming hidden
    torch.testing.assert_close(residual2, h0 + h1)
    torch.testing.assert_close(hidden2, 2 * norm(h0 + h1) + 1)


@pytest.mark.parametrize("norm", ["rms", "layer"])
def test_block_keeps_fp32_residual_under_bf16(norm):
    mixer = Scale()
    block = Block(8, mixer, norm=norm).to(torch.bfloat16)
    h = torch.randn(2, 5, 8, dtype=torch.bfloat16)
    hidden, residual = block(h)
    assert residual.dtype == torch.float32 and hidden.dtype == torch.bfloat16
    assert mixer.seen_dtype == torch.bfloat16  # the mixer runs in the input dtype
    hidden, residual = block(hidden, residual)
    assert residual.dtype == torch.float32
    plain = Block(8, Scale(), norm=norm, residual_in_fp32=False).to(torch.bfloat16)
    assert plain(h)[1].dtype == torch.bfloat16


def test_block_layer_norm_option():
    block = Block(8, Scale(), norm="layer")
    assert isinstance(block.norm, nn.LayerNorm)
    h = torch.randn(2, 3, 8)
    torch.testing.assert_close(block(h)[0], 2 * nn.functional.layer_norm(h, (8,)) + 1)


def test_block_validation():
    with pytest.raises(ValueError, match=r"norm must be one of \('rms', 'layer'\), got 'batch'"):
        Block(8, Scale(), norm="batch")
    with pytest.raises(TypeError, match="mixer must be an nn.Module"):
        Block(8, lambda x: x)


# ----------------------------------------------------------------------------------------------
# MambaBackbone
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mixer", ["mamba", "bimamba", "bimamba_external"])
def test_backbone_shapes_and_mixer_types(mixer):
    model = tiny_backbone(mixer=mixer)
    out = model(torch.randn(2, 7, 16))
    assert out.shape == (2, 7, 16)
    expected = Mamba if mixer == "mamba" else BiMamba
    assert all(type(layer.mixer) is expected for layer in model.layers)
    if mixer != "mamba":
        assert model.layers[0].mixer.variant == ("internal" if mixer == "bimamba" else "external")


def test_backbone_equals_manual_add_norm_composition():
    model = tiny_backbone(n_layer=2).eval()
    x = torch.randn(2, 6, 16)
    l0, l1 = model.layers
    m0 = l0.mixer(l0.norm(x))
    r1 = x + m0
    m1 = l1.mixer(l1.norm(r1))
    expected = model.norm_f(r1 + m1)
    torch.testing.assert_close(model(x), expected)


def test_backbone_return_all_hf_convention():
    model = tiny_backbone(n_layer=3).eval()
    x = torch.randn(2, 6, 16)
    states = model(x, return_all=True)
    assert len(states) == 4 and states[0] is x
    torch.testing.assert_close(states[-1], model(x))
    # states[1] = input + first mixer output (the residual stream after block 0).
    l0 = model.layers[0]
    torch.testing.assert_close(states[1], x + l0.mixer(l0.norm(x)))


def test_backbone_bf16_keeps_fp32_residual_and_returns_bf16():
    model = tiny_backbone(mixer="bimamba").to(torch.bfloat16).eval()
    x = torch.randn(2, 6, 16)
    seen = {}
    model.layers[1].register_forward_hook(lambda mod, args, out: seen.update(residual=out[1].dtype))
    out = model(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and seen["residual"] == torch.float32
    ref = tiny_backbone(mixer="bimamba").eval()(x)
    torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.1)


def test_backbone_drop_path_schedule_and_eval_determinism():
    model = tiny_backbone(n_layer=4, drop_path_rate=0.3)
    rates = [layer.drop_path.p for layer in model.layers]
    # Block i drops mixer i-1's output at 0.3 * (i-1) / 3; the final add drops the last mixer's at 0.3.
    assert rates == pytest.approx([0.0, 0.0, 0.1, 0.2]) and model.drop_path_f.p == pytest.approx(0.3)
    x = torch.randn(4, 6, 16)
    model.eval()
    no_drop = tiny_backbone(n_layer=4, drop_path_rate=0.0).eval()
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    torch.testing.assert_close(model(x), no_drop(x), rtol=0, atol=0)  # same seed -> same weights
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    b = model(x)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("mixer", ["mamba", "bimamba"])
def test_grad_checkpointing_gives_same_gradients(mixer):
    x = torch.randn(2, 6, 16)
    grads = []
    for ckpt in (False, True):
        model = tiny_backbone(mixer=mixer, drop_path_rate=0.2, grad_checkpointing=ckpt).train()
        torch.manual_seed(7)  # same drop-path draws; checkpoint replays the RNG state in recompute
        model(x).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6, msg=name)


def test_grad_checkpointing_is_used():
    model = tiny_backbone(grad_checkpointing=True).train()
    calls = []
    model.layers[0].mixer.register_forward_pre_hook(lambda *a: calls.append(1))
    model(torch.randn(1, 4, 16)).sum().backward()
    assert len(calls) == 2  # forward + recompute in backward
    model.set_grad_checkpointing(False)
    calls.clear()
    model(torch.randn(1, 4, 16)).sum().backward()
    assert len(calls) == 1


def test_backbone_lm_init():
    n_layer = 4
    model = tiny_backbone(n_layer=n_layer, bias=True)
    d_inner = 32
    bound = 1 / math.sqrt(d_inner) / math.sqrt(n_layer)  # kaiming_uniform(a=sqrt 5) bound / sqrt(n_layer)
    for layer in model.layers:
        mixer = layer.mixer
        w = mixer.out_proj.weight
        assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound
        assert mixer.in_proj.bias.abs().max() == 0 and mixer.out_proj.bias.abs().max() == 0
        dt = nn.functional.softplus(mixer.dt_proj.bias)  # _no_reinit: not zeroed
        assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    plain = tiny_backbone(n_layer=n_layer, rescale_prenorm_residual=False)
    assert plain.layers[0].mixer.out_proj.weight.abs().max() > bound * 1.2


def test_backbone_no_weight_decay_lists_A_and_D():
    names = tiny_backbone(n_layer=2, mixer="bimamba").no_weight_decay()
    assert names == {f"layers.{i}.mixer.{p}" for i in range(2) for p in ("A_log", "A_b_log", "D", "D_b")}


def test_backbone_passes_options_to_mixers():
    model = tiny_backbone(mixer="bimamba", bimamba_combine="mean", selective=False, dt_rank=3, norm="layer")
    mixer = model.layers[0].mixer
    assert mixer.combine == "mean" and not mixer.selective and mixer.dt_rank == 3
    assert isinstance(model.norm_f, nn.LayerNorm)
    ext = tiny_backbone(mixer="bimamba_external", share_projections=True)
    assert ext.layers[0].mixer.combine == "concat"
    assert ext.layers[0].mixer.mamba_rev.in_proj.weight is ext.layers[0].mixer.mamba_fwd.in_proj.weight


def test_backbone_validation():
    with pytest.raises(ValueError, match=r"mixer must be one of \('mamba', 'bimamba', 'bimamba_external'\), "
                                         r"got 'attention'"):
        tiny_backbone(mixer="attention")
    with pytest.raises(ValueError, match="bimamba_combine='add' only applies"):
        tiny_backbone(mixer="mamba", bimamba_combine="add")
    with pytest.raises(ValueError, match="n_layer must be a positive int, got 0"):
        tiny_backbone(n_layer=0)
    with pytest.raises(ValueError, match="norm must be one of"):
        tiny_backbone(norm="group")
    with pytest.raises(ValueError, match="drop_path_rate"):
        tiny_backbone(drop_path_rate=1.5)
    with pytest.raises(ValueError, match=r"MambaBackbone: input must have shape \(batch, L, d_model=16\), "
                                         r"got \(2, 6, 8\)"):
        tiny_backbone()(torch.randn(2, 6, 8))
