"""Segmentation networks: scan orders, the tri-orientated mixer, shapes (3D and 2D), gradients, precision, bad input."""

import itertools

import pytest
import timm
import torch
from einops import rearrange

import mambasuite.vision  # noqa: F401  (registers the timm factories)
from mambasuite.vision.models.umamba import MambaLayer, TriOrientedMamba, UMamba, VMambaUNet, inter_slice_order


def _slice_order_by_loops(shape, slice_axis):
    """Row-major token ids listed with `slice_axis` varying fastest, the other axes in their order."""
    others = [a for a in range(len(shape)) if a != slice_axis]
    strides = [1] * len(shape)
    for a in range(len(shape) - 2, -1, -1):
        strides[a] = strides[a + 1] * shape[a + 1]
    order = []
    for outer in itertools.product(*(range(shape[a]) for a in others)):
        for k in range(shape[slice_axis]):
            index = {**dict(zip(others, outer)), slice_axis: k}
            order.append(sum(index[a] * strides[a] for a in range(len(shape))))
    return order


@pytest.mark.parametrize("shape, axis", [((4, 3, 5), 0), ((4, 3, 5), 1), ((4, 3, 5), 2), ((2, 6, 3), -1),
                                         ((5, 7), 0), ((6, 4), 1), ((1, 3, 2), 0)])
def test_inter_slice_order_is_a_permutation_matching_a_loop_construction(shape, axis):
    perm, inverse = inter_slice_order(shape, axis)
    n = torch.tensor(shape).prod().item()
    assert sorted(perm.tolist()) == list(range(n))
    assert perm.tolist() == _slice_order_by_loops(shape, axis % len(shape))
    tokens = torch.randn(2, n, 3)
    torch.testing.assert_close(tokens[:, perm][:, inverse], tokens, rtol=0, atol=0)
    assert torch.equal(inverse[perm], torch.arange(n))


def test_inter_slice_order_steps_across_slices():
    # 3 slices of 2x2: the order visits voxel (0,0) of slices 0,1,2, then voxel (0,1) of each, ...
    perm, _ = inter_slice_order((3, 2, 2), slice_axis=0)
    assert perm.tolist()[:6] == [0, 4, 8, 1, 5, 9]


@pytest.mark.parametrize("bad", [(), (0, 3), (2, -1)])
def test_inter_slice_order_rejects_bad_shapes(bad):
    with pytest.raises(ValueError, match="spatial_shape"):
        inter_slice_order(bad)


def test_inter_slice_order_rejects_bad_axis():
    with pytest.raises(ValueError, match="slice_axis"):
        inter_slice_order((2, 3), slice_axis=2)


def test_tri_mixer_is_bimamba_plus_slice_scan_in_einops_order():
    torch.manual_seed(0)
    shape = (3, 4, 5)
    mixer = TriOrientedMamba(8, d_state=4, backend="reference").double()
    x = torch.randn(2, 60, 8, dtype=torch.float64)
    # Independent construction of the inter-slice sequence: first spatial axis moved innermost.
    seq = rearrange(x, "b (d h w) c -> b (h w d) c", d=3, h=4, w=5)
    slice_out = rearrange(mixer.slice_mamba(seq), "b (h w d) c -> b (d h w) c", d=3, h=4, w=5)
    torch.testing.assert_close(mixer(x, shape), mixer.bimamba(x) + slice_out)


def test_tri_mixer_slice_branch_is_causal_in_slice_order():
    torch.manual_seed(0)
    shape = (3, 2, 4)
    mixer = TriOrientedMamba(4, d_state=4, backend="reference").double()
    with torch.no_grad():
        mixer.bimamba.out_proj.weight.zero_()  # keep only the inter-slice branch
    order = _slice_order_by_loops(shape, 0)
    position = {token: p for p, token in enumerate(order)}
    x = torch.randn(1, 24, 4, dtype=torch.float64, requires_grad=True)
    target = order[10]  # the 11th token of the slice order
    mixer(x, shape)[0, target].sum().backward()
    depends = x.grad[0].abs().sum(-1) > 0
    assert all(depends[t] == (position[t] <= 10) for t in range(24))


def test_tri_mixer_rejects_wrong_token_count():
    with pytest.raises(ValueError, match="TriOrientedMamba"):
        TriOrientedMamba(4)(torch.randn(1, 10, 4), (2, 2, 2))


@pytest.mark.parametrize("mixer", ["mamba", "bimamba", "tri"])
def test_mamba_layer_runs_fp32_under_autocast_and_keeps_dtype(mixer):
    layer = MambaLayer(8, mixer=mixer, d_state=4)
    seen = []
    layer.mixer.register_forward_pre_hook(
        lambda m, args: seen.append((args[0].dtype, torch.is_autocast_enabled("cpu"))))
    x = torch.randn(1, 8, 4, 4, 2, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert seen == [(torch.float32, False)]
    assert y.dtype == torch.bfloat16 and y.shape == x.shape


def test_mamba_layer_rejects_bad_input():
    layer = MambaLayer(8)
    with pytest.raises(ValueError, match="MambaLayer"):
        layer(torch.randn(1, 4, 4, 4))
    with pytest.raises(ValueError, match="mixer"):
        MambaLayer(8, mixer="attention")


def _tiny(spatial_dims=3, **kw):
    args = dict(spatial_dims=spatial_dims, in_chans=1, num_classes=3, widths=(4, 8, 8), strides=(1, 2, 2),
                placement="encoder", mixer="tri", d_state=4)
    args.update(kw)
    return UMamba(**args)


@pytest.mark.parametrize("size", [(64, 64, 64), (96, 96, 64), (128, 128, 128)])
def test_3d_forward_shapes_at_patch_sizes(size):
    torch.manual_seed(0)
    net = timm.create_model("test_umamba_3d", in_chans=1, num_classes=4, widths=(4, 8, 8, 16)).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, *size))
    assert out.shape == (1, 4, *size) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["test_umamba_2d", "umamba_enc_2d"])
def test_2d_forward_shapes(name):
    kwargs = {"widths": (4, 8, 8, 16, 16, 16)} if name == "umamba_enc_2d" else {}
    net = timm.create_model(name, in_chans=2, num_classes=5, **kwargs).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 2, 64, 96))
    assert out.shape == (2, 5, 64, 96)


@pytest.mark.parametrize("mixer", ["mamba", "bimamba", "tri"])
def test_gradients_reach_every_parameter(mixer):
    torch.manual_seed(0)
    net = _tiny(mixer=mixer)
    net(torch.randn(2, 1, 8, 8, 12)).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert all(p.grad.abs().sum() > 0 for n, p in net.named_parameters() if ".mixer." in n and "out_proj" in n)


def test_deep_supervision_returns_every_decoder_scale_in_training_only():
    net = _tiny(widths=(4, 8, 8, 8), strides=(1, 2, 2, 2), deep_supervision=True)
    outs = net(torch.randn(1, 1, 16, 16, 8))
    assert [tuple(o.shape) for o in outs] == [(1, 3, 16, 16, 8), (1, 3, 8, 8, 4), (1, 3, 4, 4, 2)]
    assert net.eval()(torch.randn(1, 1, 16, 16, 8)).shape == (1, 3, 16, 16, 8)


def test_anisotropic_strides():
    net = _tiny(strides=(1, (2, 2, 1), 2)).eval()
    assert net.divisor == (4, 4, 2)
    assert net(torch.randn(1, 1, 8, 8, 6)).shape == (1, 3, 8, 8, 6)


def test_placement_puts_mamba_layers_where_asked():
    def count(net):
        return [any(isinstance(m, MambaLayer) for m in stage) for stage in net.encoder]

    assert count(_tiny(placement="bottleneck")) == [False, False, True]
    assert count(_tiny(placement="encoder")) == [True, True, True]
    assert count(_tiny(placement=[1])) == [False, True, False]


def test_same_seed_same_output():
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        net = _tiny().eval()
        torch.manual_seed(4)
        outs.append(net(torch.randn(1, 1, 8, 8, 8)))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_no_weight_decay_lists_ssm_parameters():
    net = _tiny(mixer="tri")
    nwd = net.no_weight_decay()
    names = {n for n, _ in net.named_parameters()}
    assert nwd <= names
    assert {n for n in names if n.rsplit(".", 1)[-1] in ("A_log", "A_b_log", "D", "D_b")} == nwd


@pytest.mark.parametrize("shape, match", [((1, 1, 10, 8, 8), "divisible"), ((1, 2, 8, 8, 8), r"\(batch, 1"),
                                          ((1, 1, 8, 8), r"\(batch, 1")])
def test_bad_input_is_named(shape, match):
    with pytest.raises(ValueError, match=match):
        _tiny()(torch.randn(*shape))


def test_non_tensor_input_is_a_type_error():
    with pytest.raises(TypeError, match="torch.Tensor"):
        _tiny()([1, 2, 3])


@pytest.mark.parametrize("kwargs, match", [
    (dict(spatial_dims=4), "spatial_dims"), (dict(placement="decoder"), "placement"),
    (dict(placement=[5]), "placement"), (dict(strides=(1, 2)), "strides"), (dict(widths=(4,)), "widths"),
    (dict(strides=(1, 0, 2)), "stride"), (dict(mixer="gru"), "mixer"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _tiny(**kwargs)


def test_factories_and_pretrained_flag():
    assert timm.create_model("umamba_bot_3d", in_chans=1, num_classes=14).mamba_stages == (5,)
    assert timm.create_model("umamba_enc_3d", num_classes=3).mamba_stages == tuple(range(6))
    seg = timm.create_model("segmamba_3d", num_classes=3)
    assert seg.mamba_stages == (1, 2, 3, 4, 5) and isinstance(seg.encoder[1][-1].mixer, TriOrientedMamba)
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("umamba_bot_3d", pretrained=True)


def test_vmamba_unet_shapes_and_pretrained_encoder(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("test_vmamba")
    torch.save({"model": source.state_dict()}, tmp_path / "vmamba.pth")
    net = VMambaUNet("test_vmamba", in_chans=1, num_classes=3, pretrained_file=str(tmp_path / "vmamba.pth"),
                     deep_supervision=True)
    for key, value in source.state_dict().items():
        if not key.startswith("classifier.head"):
            torch.testing.assert_close(net.encoder.state_dict()[key], value)
    outs = net(torch.randn(2, 1, 64, 32))
    assert [o.shape[-2:] for o in outs] == [(64, 32), (32, 16), (16, 8), (8, 4), (4, 2)]
    outs[0].mean().backward()
    assert net.encoder.patch_embed[0].weight.grad is not None
    assert net.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 1, 48, 40))
