"""U-Mamba and SegMamba-style segmentation networks (2D and 3D), timm style, on core's Mamba mixers.

A U-shaped encoder-decoder of residual conv blocks (nnU-Net's residual encoder: conv-IN-LeakyReLU,
conv-IN, projected skip, LeakyReLU) with Mamba layers over the flattened feature map:

* placement "bottleneck" (U-Mamba_Bot): one Mamba layer after the deepest encoder stage;
* placement "encoder" (U-Mamba_Enc): a Mamba layer after every encoder stage (or a list of stage ids);
* mixer "mamba" (U-Mamba: one forward scan), "bimamba" (core `BiMamba`: forward + reverse) or
  "tri" (SegMamba's tri-orientated Mamba: forward, reverse and an inter-slice order).

Scan orders are index maps built from the feature map's shape at run time, so any input whose sides
are divisible by the product of the strides works (sliding-window ROIs are free). The Mamba layers
run in fp32 with autocast off (U-Mamba reports NaNs under AMP otherwise); the conv path follows autocast.

`VMambaUNet` is the 2D variant with an (optionally ImageNet-pretrained) VMamba encoder from
`mambasuite.vision.models.vmamba`, as in Swin-UMamba, and the same residual decoder.

Layout: (batch, channels, *spatial) with spatial = (H, W) or (H, W, D) -- MONAI's order. Deep
supervision (training only) returns [full-resolution logits, 1/2, 1/4, ...], as MONAI's
`DeepSupervisionLoss` expects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from timm.models import register_model
from torch import nn

from mambasuite.core.mixers import BiMamba, Mamba

__all__ = ["MambaLayer", "ResidualBlock", "TriOrientedMamba", "UMamba", "UNetDecoder", "VMambaUNet",
           "inter_slice_order"]

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
MIXERS = ("mamba", "bimamba", "tri")


def _check_spatial_dims(spatial_dims) -> int:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return spatial_dims


def _per_stage(name: str, value, n_stages: int) -> tuple:
    """An int (or tuple for every stage) -> a tuple with one entry per stage."""
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,) * n_stages
    if len(values) != n_stages:
        raise ValueError(f"{name} must have one entry per stage ({n_stages}), got {value!r}")
    return values


def _as_stride(stride, spatial_dims: int) -> tuple[int, ...]:
    """An int or a per-axis tuple -> a per-axis tuple of positive ints."""
    s = tuple(stride) if isinstance(stride, (list, tuple)) else (stride,) * spatial_dims
    if len(s) != spatial_dims or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in s):
        raise ValueError(f"a stride must be a positive int or {spatial_dims} positive ints, got {stride!r}")
    return s


# ----------------------------------------------------------------------------------------------
# Scan orders and the Mamba layer over a feature map.
# ----------------------------------------------------------------------------------------------

def inter_slice_order(spatial_shape: Sequence[int], slice_axis: int = 0,
                      device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Index maps of SegMamba's inter-slice scan over a row-major flattened feature map.

    Tokens are flattened row-major (the last axis varies fastest), token i = feature[unravel(i)].
    The inter-slice order visits them with `slice_axis` varying fastest: it steps across the slices
    at a fixed in-plane position, then moves on (SegMamba's `nslices` = shape[slice_axis], taken from
    the shape at run time).

    Returns (perm, inverse), int64 (N,), N = prod(spatial_shape): `tokens[:, perm]` is the sequence
    in inter-slice order and `ordered[:, inverse]` restores row-major order (inverse[perm] = arange(N)).
    """
    shape = tuple(int(s) for s in spatial_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"spatial_shape must be positive sizes, got {tuple(spatial_shape)}")
    if not -len(shape) <= slice_axis < len(shape):
        raise ValueError(f"slice_axis={slice_axis} is out of range for a {len(shape)}-D shape {shape}")
    n = math.prod(shape)
    perm = torch.arange(n, device=device).view(shape).movedim(slice_axis, -1).reshape(-1)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(n, device=device)
    return perm, inverse


class TriOrientedMamba(nn.Module):
    """SegMamba's tri-orientated Mamba (ToM) from core mixers: forward + reverse + inter-slice.

    The forward and reverse orientations are core `BiMamba` (internal variant, outputs added; the
    reverse branch scans anti-causally, the same as scanning the flipped order). The inter-slice
    orientation is a core `Mamba` run over the tokens permuted by `inter_slice_order` and permuted
    back. The two results are summed. (SegMamba shares one in/out projection between its three
    scans; composing core mixers gives the slice branch its own projections.)

    Shapes: forward(x (batch, N, d_model), spatial_shape with prod = N) -> (batch, N, d_model).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, slice_axis: int = 0,
                 backend: str = "auto") -> None:
        super().__init__()
        self.bimamba = BiMamba(d_model, d_state, d_conv, expand, variant="internal", combine="add", backend=backend)
        self.slice_mamba = Mamba(d_model, d_state, d_conv, expand, backend=backend)
        self.d_model, self.slice_axis = d_model, slice_axis
        self._orders: dict = {}  # (shape, device) -> (perm, inverse); a few entries per ROI size

    def _order(self, spatial_shape: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (spatial_shape, str(device))
        if key not in self._orders:
            self._orders[key] = inter_slice_order(spatial_shape, self.slice_axis, device)
        return self._orders[key]

    def forward(self, x: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
        spatial_shape = tuple(int(s) for s in spatial_shape)
        if x.dim() != 3 or x.shape[1] != math.prod(spatial_shape):
            raise ValueError(f"TriOrientedMamba: x must be (batch, N={math.prod(spatial_shape)}, d_model) for "
                             f"spatial_shape {spatial_shape}, got {tuple(x.shape)}")
        perm, inverse = self._order(spatial_shape, x.device)
        return self.bimamba(x) + self.slice_mamba(x[:, perm])[:, inverse]


class MambaLayer(nn.Module):
    """x + mixer(LayerNorm(tokens)) over the flattened feature map, computed in fp32 with autocast off.

    U-Mamba's layer (flatten -> LayerNorm -> Mamba -> reshape) with a residual add (SegMamba adds one;
    U-Mamba's replaces the features) so that a freshly initialised layer starts near identity.

    Args:
        dim: channels; mixer: "mamba" | "bimamba" | "tri"; d_state, d_conv, expand: mixer sizes;
        slice_axis: the tri mixer's inter-slice axis; backend: selective-scan backend.
    Shapes: (batch, dim, *spatial) -> same shape and dtype.
    """

    def __init__(self, dim: int, mixer: str = "mamba", d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 slice_axis: int = 0, backend: str = "auto") -> None:
        super().__init__()
        if mixer not in MIXERS:
            raise ValueError(f"mixer must be one of {MIXERS}, got {mixer!r}")
        self.dim, self.mixer_name = dim, mixer
        self.norm = nn.LayerNorm(dim)
        if mixer == "mamba":
            self.mixer = Mamba(dim, d_state, d_conv, expand, backend=backend)
        elif mixer == "bimamba":
            self.mixer = BiMamba(dim, d_state, d_conv, expand, variant="internal", combine="add", backend=backend)
        else:
            self.mixer = TriOrientedMamba(dim, d_state, d_conv, expand, slice_axis=slice_axis, backend=backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or x.shape[1] != self.dim:
            raise ValueError(f"MambaLayer: input must be (batch, {self.dim}, *spatial), got {tuple(x.shape)}")
        spatial = tuple(x.shape[2:])
        # Parameter dtype = compute dtype: fp32 for a normal model under autocast, bf16 for a model cast to bf16.
        dtype = self.norm.weight.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            tokens = self.norm(x.flatten(2).transpose(1, 2).to(dtype))  # (batch, N, dim)
            y = self.mixer(tokens, spatial) if self.mixer_name == "tri" else self.mixer(tokens)
        return x + y.transpose(1, 2).reshape(x.shape).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# Conv blocks, encoder, decoder.
# ----------------------------------------------------------------------------------------------

class ResidualBlock(nn.Module):
    """nnU-Net's residual block: conv3(stride)-IN-LeakyReLU-conv3-IN + skip, then LeakyReLU.

    The skip is identity, or a strided 1x1 conv + IN when the width or resolution changes.
    Shapes: (batch, in_ch, *S) -> (batch, out_ch, *S / stride).
    """

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, stride: int | Sequence[int] = 1) -> None:
        super().__init__()
        conv, norm = _CONV[spatial_dims], _NORM[spatial_dims]
        stride = _as_stride(stride, spatial_dims)
        # No conv bias: the instance norm right after removes it.
        self.conv1 = conv(in_ch, out_ch, 3, stride, 1, bias=False)
        self.norm1 = norm(out_ch, affine=True)
        self.conv2 = conv(out_ch, out_ch, 3, 1, 1, bias=False)
        self.norm2 = norm(out_ch, affine=True)
        self.act = nn.LeakyReLU(0.01, inplace=True)
        self.skip = (nn.Identity() if in_ch == out_ch and set(stride) == {1}
                     else nn.Sequential(conv(in_ch, out_ch, 1, stride, bias=False), norm(out_ch, affine=True)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        return self.act(self.norm2(self.conv2(y)) + self.skip(x))


class UNetDecoder(nn.Module):
    """Residual U-Net decoder: from the deepest skip up, transposed conv -> concat skip -> residual blocks.

    Args:
        spatial_dims: 2 or 3. skip_widths: channels of the skips, shallow to deep.
        up_strides: for each skip but the deepest, the stride between it and the next deeper one.
        num_classes: output channels. blocks: residual blocks per decoder stage.
        deep_supervision: in training, also return logits of every decoder stage.
    Shapes: forward(skips: [(B, skip_widths[i], *S_i)]) -> (B, num_classes, *S_0), or in training with
        deep supervision a list [(B, num_classes, *S_0), (B, num_classes, *S_1), ...] (one per decoder stage).
    """

    def __init__(self, spatial_dims: int, skip_widths: Sequence[int], up_strides: Sequence, num_classes: int,
                 blocks: int = 1, deep_supervision: bool = False) -> None:
        super().__init__()
        if len(up_strides) != len(skip_widths) - 1:
            raise ValueError(f"up_strides needs {len(skip_widths) - 1} entries, got {len(up_strides)}")
        conv, conv_t = _CONV[spatial_dims], _CONV_T[spatial_dims]
        self.deep_supervision = deep_supervision
        self.ups, self.stages, self.heads = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        # Index i decodes into skip level i (0 = full resolution), built deepest first.
        for i in reversed(range(len(skip_widths) - 1)):
            stride = _as_stride(up_strides[i], spatial_dims)
            self.ups.append(conv_t(skip_widths[i + 1], skip_widths[i], stride, stride))
            width = skip_widths[i]
            self.stages.append(nn.Sequential(ResidualBlock(spatial_dims, 2 * width, width),
                                             *(ResidualBlock(spatial_dims, width, width) for _ in range(blocks - 1))))
            # One head per stage with deep supervision; otherwise only the last (no unused parameters under DDP).
            if deep_supervision or i == 0:
                self.heads.append(conv(width, num_classes, 1))

    def forward(self, skips: Sequence[torch.Tensor]):
        x, outputs = skips[-1], []
        supervise = self.deep_supervision and self.training
        for j, (up, stage, skip) in enumerate(zip(self.ups, self.stages, reversed(skips[:-1]))):
            x = stage(torch.cat([up(x), skip], dim=1))
            if supervise:
                outputs.append(self.heads[j](x))
        if outputs:
            return outputs[::-1]  # full resolution first
        return self.heads[-1](x)


def _check_input(x: torch.Tensor, spatial_dims: int, in_chans: int, divisor: tuple[int, ...], owner: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner}: input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != spatial_dims + 2 or x.shape[1] != in_chans:
        axes = ", ".join(["H", "W", "D"][:spatial_dims])
        raise ValueError(f"{owner}: input must be (batch, {in_chans}, {axes}), got {tuple(x.shape)}")
    if any(s % d for s, d in zip(x.shape[2:], divisor)):
        raise ValueError(f"{owner}: spatial size {tuple(x.shape[2:])} must be divisible by {divisor} "
                         f"(the product of the strides)")


class UMamba(nn.Module):
    """U-Mamba (Ma et al. 2024) / SegMamba-style network: residual conv U-Net with Mamba layers.

    Encoder stage s: `encoder_blocks[s]` residual blocks (the first with `strides[s]`), then a
    `MambaLayer` if s is a Mamba stage. Decoder: `UNetDecoder` with `decoder_blocks` per stage.

    Args:
        spatial_dims: 2 or 3. in_chans, num_classes: input channels, output classes (incl. background).
        widths: channels per encoder stage. strides: per stage, an int or per-axis tuple (stage 0
            usually 1). encoder_blocks: an int or one per stage. decoder_blocks: blocks per decoder stage.
        placement: "bottleneck" (last stage), "encoder" (every stage) or a list of stage indices.
        mixer: "mamba" | "bimamba" | "tri". d_state, d_conv, expand: mixer sizes.
        slice_axis: inter-slice axis of the "tri" mixer (0 = first spatial axis, SegMamba's).
        deep_supervision: in training return logits of every decoder stage (full resolution first).
        backend: selective-scan backend of every mixer.
    Shapes: (B, in_chans, *S) -> (B, num_classes, *S); every side of S divisible by the strides' product.
    """

    def __init__(self, spatial_dims: int = 3, in_chans: int = 1, num_classes: int = 2,
                 widths: Sequence[int] = (16, 32, 64, 128, 256), strides: Sequence = (1, 2, 2, 2, 2),
                 encoder_blocks: int | Sequence[int] = 1, decoder_blocks: int = 1,
                 placement: str | Sequence[int] = "bottleneck", mixer: str = "mamba", d_state: int = 16,
                 d_conv: int = 4, expand: int = 2, slice_axis: int = 0, deep_supervision: bool = False,
                 backend: str = "auto") -> None:
        super().__init__()
        self.spatial_dims = _check_spatial_dims(spatial_dims)
        widths = tuple(widths)
        n = len(widths)
        if n < 2 or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths must be at least two positive ints, got {widths!r}")
        strides = tuple(_as_stride(s, spatial_dims) for s in _per_stage("strides", strides, n))
        encoder_blocks = _per_stage("encoder_blocks", encoder_blocks, n)
        if isinstance(placement, str):
            if placement not in ("bottleneck", "encoder"):
                raise ValueError(f"placement must be 'bottleneck', 'encoder' or a list of stage indices, "
                                 f"got {placement!r}")
            mamba_stages = (n - 1,) if placement == "bottleneck" else tuple(range(n))
        else:
            mamba_stages = tuple(sorted(set(placement)))
            if any(not 0 <= s < n for s in mamba_stages):
                raise ValueError(f"placement stage indices must be in 0..{n - 1}, got {list(placement)}")
        self.in_chans, self.num_classes, self.mamba_stages = in_chans, num_classes, mamba_stages
        self.divisor = tuple(math.prod(s[a] for s in strides) for a in range(spatial_dims))
        mamba = dict(mixer=mixer, d_state=d_state, d_conv=d_conv, expand=expand, slice_axis=slice_axis,
                     backend=backend)
        self.encoder = nn.ModuleList()
        prev = in_chans
        for s, (width, stride, blocks) in enumerate(zip(widths, strides, encoder_blocks)):
            layers = [ResidualBlock(spatial_dims, prev, width, stride),
                      *(ResidualBlock(spatial_dims, width, width) for _ in range(blocks - 1))]
            if s in mamba_stages:
                layers.append(MambaLayer(width, **mamba))
            self.encoder.append(nn.Sequential(*layers))
            prev = width
        self.decoder = UNetDecoder(spatial_dims, widths, strides[1:], num_classes, decoder_blocks, deep_supervision)
        self.apply(_init_conv)

    @property
    def deep_supervision(self) -> bool:
        return self.decoder.deep_supervision

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Names of the SSM parameters never weight-decayed (A_log, D of every mixer branch)."""
        return {n for n, p in self.named_parameters() if getattr(p, "_no_weight_decay", False)}

    def forward(self, x: torch.Tensor):
        _check_input(x, self.spatial_dims, self.in_chans, self.divisor, type(self).__name__)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        return self.decoder(skips)


def _init_conv(m: nn.Module) -> None:
    # nnU-Net's init for LeakyReLU nets: He normal (a = 0.01) on convs, zero biases.
    if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(m.weight, a=0.01)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class VMambaUNet(nn.Module):
    """2D segmentation with a VMamba encoder (Swin-UMamba style) and the residual U-Net decoder.

    Skips: two residual conv stages on the input (full resolution and 1/2, `stem_widths`), then
    VMamba's four stage outputs (1/4 ... 1/32) from `forward_intermediates`. With `pretrained_file`
    (an official VMamba `.pth` or a converted `.safetensors`) the encoder starts from those weights.
    The encoder reads 3 channels; other `in_chans` go through a learned 1x1 conv to 3.

    Args:
        encoder: a timm VMamba name ("vmamba_tiny", "test_vmamba", ...). in_chans, num_classes: as usual.
        pretrained_file: local encoder weights or None. encoder_kwargs: more timm.create_model args.
        stem_widths: channels of the full- and half-resolution conv skips. decoder_blocks,
        deep_supervision: as in `UMamba`. backend: the encoder's scan backend.
    Shapes: (B, in_chans, H, W) -> (B, num_classes, H, W); H, W divisible by 32.
    """

    def __init__(self, encoder: str = "test_vmamba", in_chans: int = 3, num_classes: int = 2,
                 pretrained_file: str | None = None, encoder_kwargs: dict | None = None,
                 stem_widths: Sequence[int] = (16, 32), decoder_blocks: int = 1, deep_supervision: bool = False,
                 backend: str = "auto") -> None:
        super().__init__()
        import timm

        from . import vmamba  # noqa: F401  (registers the VMamba names with timm)

        kwargs = dict(encoder_kwargs or {}, backend=backend)
        if pretrained_file is not None:
            kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(pretrained_file)))
        self.encoder = timm.create_model(encoder, num_classes=0, **kwargs)
        if not hasattr(self.encoder, "forward_intermediates") or len(self.encoder.feature_info) != 4:
            raise ValueError(f"encoder={encoder!r} must be a VMamba model with four stages")
        self.in_chans, self.num_classes, self.spatial_dims, self.divisor = in_chans, num_classes, 2, (32, 32)
        self.adapter = nn.Identity() if in_chans == 3 else nn.Conv2d(in_chans, 3, 1)
        w0, w1 = stem_widths
        self.stem = nn.ModuleList([ResidualBlock(2, in_chans, w0), ResidualBlock(2, w0, w1, stride=2)])
        dims = [info["num_chs"] for info in self.encoder.feature_info]
        self.decoder = UNetDecoder(2, [w0, w1, *dims], [2] * 5, num_classes, decoder_blocks, deep_supervision)
        for module in (self.adapter, self.stem, self.decoder):
            module.apply(_init_conv)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()}

    def forward(self, x: torch.Tensor):
        _check_input(x, 2, self.in_chans, self.divisor, type(self).__name__)
        full = self.stem[0](x)
        skips = [full, self.stem[1](full)]
        skips += self.encoder.forward_intermediates(self.adapter(x), output_fmt="NCHW", intermediates_only=True)
        return self.decoder(skips)


# ----------------------------------------------------------------------------------------------
# timm registration.
# ----------------------------------------------------------------------------------------------

# Keyword arguments timm's create_model adds for its pretrained machinery; these nets have no
# published weights, so they are dropped (and `pretrained=True` is an error).
_TIMM_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def _create(variant: str, pretrained: bool, defaults: dict, kwargs: dict, cls=UMamba) -> nn.Module:
    if pretrained:
        raise ValueError(f"{variant}: no pretrained weights are published; train it or load a checkpoint "
                         f"(VMambaUNet takes pretrained_file= for its encoder)")
    for key in _TIMM_KWARGS:
        kwargs.pop(key, None)
    return cls(**dict(defaults, **kwargs))


# nnU-Net-like 3D widths capped at 320, six stages (stride 32) for 128^3-class patches.
_NNUNET_3D = dict(spatial_dims=3, widths=(32, 64, 128, 256, 320, 320), strides=(1, 2, 2, 2, 2, 2),
                  encoder_blocks=(1, 2, 2, 2, 2, 2), decoder_blocks=1)
_NNUNET_2D = dict(spatial_dims=2, widths=(32, 64, 128, 256, 512, 512), strides=(1, 2, 2, 2, 2, 2),
                  encoder_blocks=(1, 2, 2, 2, 2, 2), decoder_blocks=1)


@register_model
def umamba_bot_3d(pretrained: bool = False, **kwargs) -> UMamba:
    """U-Mamba_Bot 3D: nnU-Net residual U-Net (32..320, 6 stages), one forward Mamba at the bottleneck."""
    return _create("umamba_bot_3d", pretrained, dict(_NNUNET_3D, placement="bottleneck", mixer="mamba"), kwargs)


@register_model
def umamba_enc_3d(pretrained: bool = False, **kwargs) -> UMamba:
    """U-Mamba_Enc 3D: the same U-Net with a forward Mamba layer after every encoder stage."""
    return _create("umamba_enc_3d", pretrained, dict(_NNUNET_3D, placement="encoder", mixer="mamba"), kwargs)


@register_model
def segmamba_3d(pretrained: bool = False, **kwargs) -> UMamba:
    """SegMamba-style 3D: tri-orientated Mamba after encoder stages 1-5 (not at full resolution,
    where SegMamba has its stride-2 stem)."""
    return _create("segmamba_3d", pretrained, dict(_NNUNET_3D, placement=[1, 2, 3, 4, 5], mixer="tri"), kwargs)


@register_model
def umamba_bot_2d(pretrained: bool = False, **kwargs) -> UMamba:
    """U-Mamba_Bot 2D: residual U-Net (32..512, 6 stages), forward Mamba at the bottleneck."""
    return _create("umamba_bot_2d", pretrained, dict(_NNUNET_2D, placement="bottleneck", mixer="mamba"), kwargs)


@register_model
def umamba_enc_2d(pretrained: bool = False, **kwargs) -> UMamba:
    """U-Mamba_Enc 2D: forward Mamba after every encoder stage."""
    return _create("umamba_enc_2d", pretrained, dict(_NNUNET_2D, placement="encoder", mixer="mamba"), kwargs)


@register_model
def test_umamba_3d(pretrained: bool = False, **kwargs) -> UMamba:
    """Tiny 3D net for tests and CPU: widths 8-16-32-64, stride 8, tri mixer at the last two stages."""
    args = dict(spatial_dims=3, widths=(8, 16, 32, 64), strides=(1, 2, 2, 2), placement=[2, 3], mixer="tri",
                d_state=8)
    return _create("test_umamba_3d", pretrained, args, kwargs)


@register_model
def test_umamba_2d(pretrained: bool = False, **kwargs) -> UMamba:
    """Tiny 2D net for tests and CPU: widths 8-16-32-64, stride 8, tri mixer at the last two stages."""
    args = dict(spatial_dims=2, widths=(8, 16, 32, 64), strides=(1, 2, 2, 2), placement=[2, 3], mixer="tri",
                d_state=8)
    return _create("test_umamba_2d", pretrained, args, kwargs)


@register_model
def vmamba_unet_tiny(pretrained: bool = False, **kwargs) -> VMambaUNet:
    """Swin-UMamba-style 2D net on VMamba-T; pass pretrained_file=<VMamba-T .pth> to fine-tune from ImageNet."""
    return _create("vmamba_unet_tiny", pretrained, dict(encoder="vmamba_tiny", stem_widths=(32, 64)), kwargs,
                   cls=VMambaUNet)
