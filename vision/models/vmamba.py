"""VMamba v2 (Liu et al. 2024, MzeroMiko/VMamba; the released "v05_noz" models), timm style.

Stem v2 (two 3x3 stride-2 convs with LayerNorm + GELU, /4) -> 4 stages of VSS blocks
(x + DropPath(SS2D(LN(x))), then x + DropPath(MLP(LN(x)))) with a 3x3 stride-2 conv + LN
("downsample v3") at the end of stages 0-2 -> classifier: LN -> global average pool -> Linear.

Activations are channel-last (B, H, W, C) inside (core SS2D's layout); the official models run
channel-first with Linear2d / LayerNorm2d, whose checkpoints store the same 2-D Linear weights, so
the parameter names and shapes here equal the official ones (`patch_embed.0/2/5/7`,
`layers.{s}.blocks.{j}.op.x_proj_weight`, `layers.{s}.downsample.1/3`, `classifier.norm/head`).
"""

from __future__ import annotations

import re

import torch
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint

from mambasuite.core.blocks import DropPath
from mambasuite.core.mixers import SS2D

from ._helpers import load_pretrained_into, unwrap_state_dict, use_own_loader

__all__ = ["VMamba", "checkpoint_filter_fn", "rename_legacy_keys"]


class _ToChannelsLast(nn.Module):
    """(B, C, H, W) -> (B, H, W, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class _ToChannelsFirst(nn.Module):
    """(B, H, W, C) -> (B, C, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


def _stem(in_chans: int, dim: int, eps: float) -> nn.Sequential:
    """Stem v2, (B, in_chans, H, W) -> (B, H/4, W/4, dim). Indices 0/2/5/7 hold the official weights."""
    return nn.Sequential(nn.Conv2d(in_chans, dim // 2, 3, 2, 1), _ToChannelsLast(), nn.LayerNorm(dim // 2, eps=eps),
                         _ToChannelsFirst(), nn.GELU(), nn.Conv2d(dim // 2, dim, 3, 2, 1), _ToChannelsLast(),
                         nn.LayerNorm(dim, eps=eps))


def _downsample(dim: int, out_dim: int, eps: float) -> nn.Sequential:
    """Downsample v3, (B, H, W, dim) -> (B, ceil(H/2), ceil(W/2), out_dim): 3x3 stride-2 conv + LN (indices 1, 3)."""
    return nn.Sequential(_ToChannelsFirst(), nn.Conv2d(dim, out_dim, 3, 2, 1), _ToChannelsLast(),
                         nn.LayerNorm(out_dim, eps=eps))


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout over the last dim: (..., dim) -> (..., dim)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1, self.act = nn.Linear(dim, hidden), nn.GELU()
        self.fc2, self.drop = nn.Linear(hidden, dim), nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class VSSBlock(nn.Module):
    """VMamba v2 block, (B, H, W, dim) -> same: x + DropPath(SS2D(LN(x))); x + DropPath(MLP(LN(x)))."""

    def __init__(self, dim: int, drop_path: float, mlp_ratio: float, eps: float, **ss2d_kwargs) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.op = SS2D(dim, **ss2d_kwargs)
        self.drop_path = DropPath(drop_path)
        self.mlp_ratio = mlp_ratio
        if mlp_ratio > 0:
            self.norm2 = nn.LayerNorm(dim, eps=eps)
            self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        if self.mlp_ratio > 0:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class VMambaStage(nn.Module):
    """`blocks` (a Sequential of VSSBlocks) then `downsample` (Identity in the last stage), channel-last."""

    def __init__(self, blocks: list[nn.Module], downsample: nn.Module) -> None:
        super().__init__()
        self.blocks, self.downsample, self.grad_checkpointing = nn.Sequential(*blocks), downsample, False

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            use_ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
            x = checkpoint(blk, x, use_reentrant=False) if use_ckpt else blk(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.forward_blocks(x))


class VMambaHead(nn.Module):
    """Classifier parts: `norm` (LayerNorm over C of (B, h, w, C), applied in forward_features), dropout
    and `head` (Linear C -> num_classes) applied to the pooled (B, C) in forward_head."""

    def __init__(self, dim: int, num_classes: int, drop: float, eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.drop = nn.Dropout(drop)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()


class VMamba(nn.Module):
    """VMamba v2 classifier. forward: (batch, in_chans, H, W) -> logits (batch, num_classes).

    Any H, W work (no position embedding; odd sizes round up in each stride-2 conv).

    Args:
        img_size: accepted for timm compatibility (unused). in_chans, num_classes: as usual (0 = no head).
        depths: blocks per stage; dims: width of stage 0 (doubled per stage) or one width per stage.
        d_state, ssm_ratio, dt_rank, d_conv: SS2D sizes (v2: N = 1, 3x3 dwconv without bias, no gate).
        mlp_ratio: MLP hidden / dim (0 = no MLP). drop_rate: dropout before the head.
        drop_path_rate: stochastic depth, linear from 0 over all blocks.
        global_pool: "avg" or "" (none). norm_eps: LayerNorm epsilon. backend: scan backend.
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, in_chans: int = 3, num_classes: int = 1000,
                 depths: tuple[int, ...] = (2, 2, 8, 2), dims: int | tuple[int, ...] = 96, d_state: int = 1,
                 ssm_ratio: float = 1.0, dt_rank: int | str = "auto", d_conv: int = 3, mlp_ratio: float = 4.0,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.1, global_pool: str = "avg",
                 norm_eps: float = 1e-5, backend: str = "auto") -> None:
        super().__init__()
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        depths = tuple(depths)
        dims = tuple(dims) if isinstance(dims, (list, tuple)) else tuple(dims * 2 ** i for i in range(len(depths)))
        if len(dims) != len(depths):
            raise ValueError(f"dims {dims} and depths {depths} must have the same length")
        self.num_classes, self.global_pool, self.output_fmt = num_classes, global_pool, "NHWC"
        self.num_features = self.head_hidden_size = dims[-1]
        self.patch_embed = _stem(in_chans, dims[0], norm_eps)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        ss2d = dict(d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=d_conv, backend=backend)
        self.layers = nn.ModuleList()
        self.feature_info = []
        for s, (depth, dim) in enumerate(zip(depths, dims)):
            start = sum(depths[:s])
            blocks = [VSSBlock(dim, dpr[start + j], mlp_ratio, norm_eps, **ss2d) for j in range(depth)]
            down = _downsample(dim, dims[s + 1], norm_eps) if s < len(depths) - 1 else nn.Identity()
            self.layers.append(VMambaStage(blocks, down))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** s, module=f"layers.{s}.blocks"))
        self.classifier = VMambaHead(dims[-1], num_classes, drop_rate, norm_eps)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # VMamba's init: truncated-normal Linear weights, zero biases (SS2D's stacked tensors keep theirs).
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # ---- timm hooks ------------------------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Exact names never weight-decayed: every SS2D A_logs, Ds and dt_projs_bias (2-D, so timm's
        ndim rule would decay them)."""
        return {n for n, _ in self.named_parameters() if n.endswith((".A_logs", ".Ds", ".dt_projs_bias"))}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Regexes grouping parameters into stem / blocks (for layer-wise lr decay)."""
        blocks = r"^layers\.(\d+)" if coarse else [(r"^layers\.(\d+)\.downsample", (99999,)),
                                                   (r"^layers\.(\d+)\.blocks\.(\d+)", None),
                                                   (r"^classifier\.norm", (99999,))]
        return dict(stem=r"^patch_embed", blocks=blocks)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.layers:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head Linear (Identity for num_classes=0); global_pool "avg" or ""."""
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.classifier.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def load_pretrained(self, path: str) -> None:
        """Load an official VMamba `.pth` (new or legacy key names) or a converted `.safetensors`."""
        load_pretrained_into(self, path, checkpoint_filter_fn, ("classifier.head.weight", "classifier.head.bias"))

    # ---- forward ---------------------------------------------------------------------------------

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> normalised, unpooled (B, H/32, W/32, num_features) (channel-last)."""
        if x.dim() != 4:
            raise ValueError(f"VMamba: input must be (batch, channels, H, W), got {tuple(x.shape)}")
        x = self.patch_embed(x)
        for stage in self.layers:
            x = stage(x)
        return self.classifier.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, h, w, C) -> logits (B, num_classes), or pooled (B, C) with pre_logits=True."""
        if self.global_pool == "avg":
            x = x.mean(dim=(1, 2))
        x = self.classifier.drop(x)
        return x if pre_logits else self.classifier.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Per-stage features before each downsample: stage s gives (B, dims[s], H/4/2^s, W/4/2^s)
        ("NCHW") or channel-last ("NHWC"). norm=True applies the final norm to the last stage's.
        Returns the list, or (forward_features output, list)."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.layers), indices)
        x = self.patch_embed(x)
        feats = []
        stages = self.layers[: max_index + 1] if (stop_early or intermediates_only) else self.layers
        for s, stage in enumerate(stages):
            x = stage.forward_blocks(x)
            if s in take:
                f = self.classifier.norm(x) if norm and s == len(self.layers) - 1 else x
                feats.append(f.permute(0, 3, 1, 2) if output_fmt == "NCHW" else f)
            x = stage.downsample(x)
        if intermediates_only:
            return feats
        return self.classifier.norm(x), feats

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop stages after the last tapped index (and optionally the final norm / head)."""
        take, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[: max_index + 1]
        if max_index < len(self.feature_info) - 1:
            self.layers[-1].downsample = nn.Identity()
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            self.classifier.norm = nn.LayerNorm(self.num_features)
        if prune_norm:
            self.classifier.norm = nn.Identity()
        if prune_head or max_index < len(self.feature_info) - 1:
            self.reset_classifier(0, "")
        return take


# Renames applied by the official VSSM._load_from_state_dict for its early releases (old -> new).
_LEGACY_RENAMES = [
    (r"^patch_embed\.proj\.", "patch_embed.0."),
    (r"^patch_embed\.norm\.", "patch_embed.2."),
    (r"\.ln_1\.", ".norm."),
    (r"\.self_attention\.", ".op."),
    (r"^norm\.", "classifier.norm."),
    (r"^head\.", "classifier.head."),
]


def checkpoint_filter_fn(state_dict: dict, model: VMamba) -> dict[str, torch.Tensor]:
    """Official VMamba checkpoint (or ours) -> this model's state dict.

    Unwraps `model` / `model_ema` (EMA preferred when present), strips `module.`, applies the legacy
    renames (patch_embed.proj/norm, ln_1, self_attention, top-level norm/head) and squeezes
    Linear2d-style (out, in, 1, 1) weights to the 2-D shape this model's Linear layers use.
    """
    use_ema = isinstance(state_dict, dict) and isinstance(state_dict.get("model_ema"), dict)
    sd = rename_legacy_keys(unwrap_state_dict(state_dict, use_ema=use_ema))
    own = model.state_dict()
    for key, value in sd.items():
        if key in own and value.dim() == 4 and own[key].dim() == 2 and value.shape[2:] == (1, 1):
            sd[key] = value.flatten(1)
    return sd


def rename_legacy_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Early-release VMamba key names -> current ones (same tensors, new dict)."""
    out = {}
    for key, value in sd.items():
        for pattern, repl in _LEGACY_RENAMES:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def _cfg(url: str = "", **kwargs) -> dict:
    cfg = dict(url=url, num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
               interpolation="bicubic", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
               first_conv="patch_embed.0", classifier="classifier.head", license="mit",
               custom_load=True)  # timm hands url and file loads to model.load_pretrained
    return {**cfg, **kwargs}


_RELEASE = "https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/"
# Official v2 ImageNet-1k weights (GitHub release assets); never fetched by the tests.
default_cfgs = generate_default_cfgs({
    "vmamba_tiny.in1k": _cfg(_RELEASE + "vssm1_tiny_0230s_ckpt_epoch_264.pth"),    # s1l8, 82.6
    "vmamba_small.in1k": _cfg(_RELEASE + "vssm_small_0229_ckpt_epoch_222.pth"),    # s2l15, 83.6
    "vmamba_base.in1k": _cfg(_RELEASE + "vssm_base_0229_ckpt_epoch_237.pth"),      # s2l15, 83.9
    "test_vmamba.untrained": _cfg(input_size=(3, 32, 32), pool_size=(1, 1), mean=(0.5,) * 3, std=(0.5,) * 3),
})


def _create(variant: str, pretrained: bool = False, **kwargs) -> VMamba:
    out_indices = kwargs.pop("out_indices", tuple(range(len(kwargs.get("depths", (2, 2, 8, 2))))))
    return build_model_with_cfg(VMamba, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(feature_cls="getter", out_indices=out_indices),
                                **use_own_loader(kwargs))


@register_model
def vmamba_tiny(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-T [s1l8] (`vmambav2v_tiny`): dims 96, depths 2-2-8-2, ssm_ratio 1, d_state 1, drop path 0.2."""
    args = dict(dims=96, depths=(2, 2, 8, 2), ssm_ratio=1.0, d_state=1, mlp_ratio=4.0, drop_path_rate=0.2)
    return _create("vmamba_tiny", pretrained, **dict(args, **kwargs))


@register_model
def vmamba_small(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-S [s2l15] (`vmambav2_small`): dims 96, depths 2-2-15-2, ssm_ratio 2, d_state 1, drop path 0.3."""
    args = dict(dims=96, depths=(2, 2, 15, 2), ssm_ratio=2.0, d_state=1, mlp_ratio=4.0, drop_path_rate=0.3)
    return _create("vmamba_small", pretrained, **dict(args, **kwargs))


@register_model
def vmamba_base(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-B [s2l15] (`vmambav2_base`): dims 128, depths 2-2-15-2, ssm_ratio 2, d_state 1, drop path 0.6."""
    args = dict(dims=128, depths=(2, 2, 15, 2), ssm_ratio=2.0, d_state=1, mlp_ratio=4.0, drop_path_rate=0.6)
    return _create("vmamba_base", pretrained, **dict(args, **kwargs))


@register_model
def test_vmamba(pretrained: bool = False, **kwargs) -> VMamba:
    """Tiny VMamba for tests and small images: dims 16-32-64-128, depths 1-1-2-1, mlp_ratio 2."""
    args = dict(dims=16, depths=(1, 1, 2, 1), ssm_ratio=1.0, d_state=1, mlp_ratio=2.0, drop_path_rate=0.0)
    return _create("test_vmamba", pretrained, **dict(args, **kwargs))
