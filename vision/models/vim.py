"""Vision Mamba (Vim; Zhu et al. 2024, hustvl/Vim), timm style, on the core bidirectional mixer.

Patch embedding (conv, separate kernel and stride) -> a class token inserted in the *middle* of the
patch sequence -> learned absolute position embedding (resampled on the fly for other grids) ->
`depth` pre-norm blocks of core `BiMamba` (Vim "bimamba v2": shared in/out projections, separate
per-direction conv/x_proj/dt_proj/A/D, outputs averaged) with a running fp32 residual -> final
add + RMSNorm -> linear head on the class token.

Parameter names equal the official checkpoints' (`layers.{i}.mixer.A_b_log`, `norm_f.weight`, ...),
so `checkpoint_filter_fn` only unwraps the file and resamples `pos_embed`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint

from mambasuite.core.blocks import Block, DropPath, RMSNorm
from mambasuite.core.mixers import BiMamba

from ._helpers import load_pretrained_into, unwrap_state_dict, use_own_loader

__all__ = ["VisionMamba", "checkpoint_filter_fn", "resample_pos_embed_midcls"]


class PatchEmbed(nn.Module):
    """Conv patch embedding with separate kernel (`patch_size`) and `stride` (Vim "+" uses 16 / 8).

    (batch, in_chans, H, W) -> (batch, gh * gw, embed_dim), gh = (H - patch) // stride + 1 (same for W).
    """

    def __init__(self, patch_size: int, stride: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size, self.stride, self.in_chans = to_2tuple(patch_size), to_2tuple(stride), in_chans
        self.proj = nn.Conv2d(in_chans, embed_dim, self.patch_size, self.stride)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid (gh, gw) for an H x W input."""
        return tuple((s - p) // st + 1 for s, p, st in zip((height, width), self.patch_size, self.stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"PatchEmbed: input must be (batch, {self.in_chans}, H, W), got {tuple(x.shape)}")
        if x.shape[2] < self.patch_size[0] or x.shape[3] < self.patch_size[1]:
            raise ValueError(f"PatchEmbed: input {tuple(x.shape[2:])} is smaller than one patch {self.patch_size}")
        return self.proj(x).flatten(2).transpose(1, 2)


def resample_pos_embed_midcls(pos_embed: torch.Tensor, new_grid: tuple[int, int],
                              old_grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Resample a middle-class-token position embedding to another patch grid.

    pos_embed: (1, M + 1, D) with the class token's slot at index M // 2 (Vim's layout, M = gh * gw).
    The class slot is taken out, the M patch slots are bicubically resized as an image from
    `old_grid` (default: square) to `new_grid`, and the class slot goes back in at the new middle
    N // 2. Returns (1, N + 1, D). Odd and even M are both handled by the M // 2 rule.
    """
    m = pos_embed.shape[1] - 1
    if old_grid is None:
        side = math.isqrt(m)
        if side * side != m:
            raise ValueError(f"pos_embed has {m} patch slots, not a square grid; pass old_grid")
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != m:
        raise ValueError(f"old_grid {old_grid} does not hold the {m} patch slots of pos_embed {tuple(pos_embed.shape)}")
    new_grid = tuple(new_grid)
    cls_slot = pos_embed[:, m // 2: m // 2 + 1]
    patches = torch.cat([pos_embed[:, : m // 2], pos_embed[:, m // 2 + 1:]], dim=1)
    if tuple(old_grid) != new_grid:
        dtype = patches.dtype
        img = patches.reshape(1, *old_grid, -1).permute(0, 3, 1, 2).float()
        img = F.interpolate(img, size=new_grid, mode="bicubic", align_corners=False)
        patches = img.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], -1).to(dtype)
    n = patches.shape[1]
    return torch.cat([patches[:, : n // 2], cls_slot, patches[:, n // 2:]], dim=1)


class VisionMamba(nn.Module):
    """Vim classifier. forward: (batch, in_chans, H, W) -> logits (batch, num_classes).

    Args:
        img_size: size the position embedding is laid out for (other sizes are resampled on the fly).
        patch_size, stride: patch conv kernel and stride (stride < patch gives overlapping patches).
        in_chans, num_classes: input channels; classes (0 = no head, forward returns pooled features).
        embed_dim, depth: width D and number of blocks.
        d_state, d_conv, expand: BiMamba sizes (d_inner = expand * D, dt_rank = ceil(D / 16)).
        drop_rate: dropout before the head; pos_drop_rate: dropout after adding pos_embed.
        drop_path_rate: stochastic depth; block i drops the previous mixer's output with rate
            dpr[i - 1], dpr = linspace(0, rate, depth), and the final add uses `rate` (Vim's schedule).
        global_pool: "token" (class token, Vim's), "avg" (mean of patch tokens) or "" (none).
        norm_eps: RMSNorm epsilon. backend: selective-scan backend of every mixer.
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, stride: int = 16,
                 in_chans: int = 3, num_classes: int = 1000, embed_dim: int = 192, depth: int = 24,
                 d_state: int = 16, d_conv: int = 4, expand: int = 2, drop_rate: float = 0.0,
                 pos_drop_rate: float = 0.0, drop_path_rate: float = 0.0, global_pool: str = "token",
                 norm_eps: float = 1e-5, backend: str = "auto") -> None:
        super().__init__()
        if global_pool not in ("token", "avg", ""):
            raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
        self.num_classes, self.global_pool = num_classes, global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens, self.grad_checkpointing = 1, False
        self.img_size = to_2tuple(img_size)
        self.patch_embed = PatchEmbed(patch_size, stride, in_chans, embed_dim)
        self.grid_size = self.patch_embed.grid(*self.img_size)
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.layers = nn.ModuleList(
            Block(embed_dim, BiMamba(embed_dim, d_state, d_conv, expand, variant="internal", combine="mean",
                                     backend=backend),
                  norm="rms", drop_path=dpr[i - 1] if i > 0 else 0.0, residual_in_fp32=True, norm_eps=norm_eps)
            for i in range(depth)
        )
        self.drop_path_f = DropPath(drop_path_rate)
        self.norm_f = RMSNorm(embed_dim, eps=norm_eps)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        r = self.patch_embed.stride[0]
        self.feature_info = [dict(num_chs=embed_dim, reduction=r, module=f"layers.{i}") for i in range(depth)]
        self._init_weights(depth)

    def _init_weights(self, depth: int) -> None:
        # Vim: ViT-style truncated normals for the embeddings and head; mamba-ssm's GPT-2 rescale of
        # each residual branch's out_proj by 1/sqrt(depth) so the residual stream does not grow with depth.
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        for layer in self.layers:
            nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
            with torch.no_grad():
                layer.mixer.out_proj.weight /= math.sqrt(depth)

    # ---- timm hooks ------------------------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Exact names never weight-decayed: pos_embed, cls_token and every A_log / A_b_log / D / D_b."""
        flagged = {n for n, p in self.named_parameters() if getattr(p, "_no_weight_decay", False)}
        return {"pos_embed", "cls_token"} | flagged

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Regexes grouping parameters into stem / blocks (for layer-wise lr decay)."""
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed",
                    blocks=[(r"^layers\.(\d+)", None), (r"^norm_f", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh Linear(D, num_classes) (Identity for 0)."""
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("token", "avg", ""):
                raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def load_pretrained(self, path: str) -> None:
        """Load an official Vim `.pth` or a converted `.safetensors` (timm calls this for cfg `file`)."""
        load_pretrained_into(self, path, checkpoint_filter_fn, ("head.weight", "head.bias"))

    # ---- forward ---------------------------------------------------------------------------------

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C, H, W) -> tokens (B, M + 1, D) with the class token at M // 2, and the grid (gh, gw)."""
        grid = self.patch_embed.grid(x.shape[2], x.shape[3])
        x = self.patch_embed(x)
        m = x.shape[1]
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([x[:, : m // 2], cls, x[:, m // 2:]], dim=1)
        pos = self.pos_embed if grid == self.grid_size else resample_pos_embed_midcls(self.pos_embed, grid,
                                                                                       self.grid_size)
        return self.pos_drop(x + pos), grid

    def _run_layer(self, layer: nn.Module, hidden, residual):
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(layer, hidden, residual, use_reentrant=False)
        return layer(hidden, residual)

    def _final(self, hidden: torch.Tensor, residual: torch.Tensor | None, in_dtype) -> torch.Tensor:
        residual = hidden if residual is None else residual + self.drop_path_f(hidden)
        return self.norm_f(residual.float()).to(in_dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> normalised tokens (B, M + 1, D), class token at index M // 2 (unpooled)."""
        x, _ = self._embed(x)
        in_dtype, residual = x.dtype, None
        for layer in self.layers:
            x, residual = self._run_layer(layer, x, residual)
        return self._final(x, residual, in_dtype)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, M + 1, D) -> logits (B, num_classes), or the pooled (B, D) with pre_logits=True."""
        if self.global_pool == "token":
            x = x[:, (x.shape[1] - 1) // 2]
        elif self.global_pool == "avg":
            mid = (x.shape[1] - 1) // 2
            x = torch.cat([x[:, :mid], x[:, mid + 1:]], dim=1).mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Per-block features for dense tasks (timm's API).

        Block i's feature is the residual stream after it (residual + mixer output), class token
        removed, as (B, D, gh, gw) for output_fmt "NCHW" or (B, gh * gw, D) for "NLC"; norm=True
        applies norm_f to each. Returns the list, or (forward_features output, list).
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.layers), indices)
        x, (gh, gw) = self._embed(x)
        in_dtype, residual, feats = x.dtype, None, []
        layers = self.layers[: max_index + 1] if (stop_early or intermediates_only) else self.layers
        for i, layer in enumerate(layers):
            x, residual = self._run_layer(layer, x, residual)
            if i in take:
                f = (residual + x).to(in_dtype)
                f = self.norm_f(f) if norm else f
                mid = (f.shape[1] - 1) // 2
                f = torch.cat([f[:, :mid], f[:, mid + 1:]], dim=1)
                feats.append(f.transpose(1, 2).reshape(f.shape[0], -1, gh, gw) if output_fmt == "NCHW" else f)
        if intermediates_only:
            return feats
        return self._final(x, residual, in_dtype), feats

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop blocks after the last tapped index (and optionally norm_f / the head)."""
        take, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[: max_index + 1]
        if prune_norm:
            self.norm_f = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take


def checkpoint_filter_fn(state_dict: dict, model: VisionMamba) -> dict[str, torch.Tensor]:
    """Official Vim checkpoint (or ours) -> this model's state dict.

    Unwraps `model` / `model_ema` (EMA preferred when present, as timm does), strips `module.`, and
    resamples `pos_embed` around its middle class slot when the token grid differs (stride-8 or
    other resolutions). Official and our key names are otherwise identical.
    """
    use_ema = isinstance(state_dict, dict) and isinstance(state_dict.get("model_ema"), dict)
    sd = unwrap_state_dict(state_dict, use_ema=use_ema)
    pos = sd.get("pos_embed")
    if pos is not None and pos.shape[1] != model.pos_embed.shape[1]:
        sd["pos_embed"] = resample_pos_embed_midcls(pos, model.grid_size)
    return sd


def _cfg(**kwargs) -> dict:
    cfg = dict(num_classes=1000, input_size=(3, 224, 224), pool_size=None, crop_pct=0.875,
               interpolation="bicubic", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
               first_conv="patch_embed.proj", classifier="head", license="apache-2.0",
               custom_load="hf")  # "hf": timm hands hub and file loads to model.load_pretrained
    return {**cfg, **kwargs}


# Official weights (hustvl, Feb 2024 middle-class-token release); never fetched by the tests.
default_cfgs = generate_default_cfgs({
    "vim_tiny_patch16_224.in1k": _cfg(hf_hub_id="hustvl/Vim-tiny-midclstok",
                                      hf_hub_filename="vim_t_midclstok_76p1acc.pth"),
    "vim_tiny_patch16_stride8_224.in1k": _cfg(hf_hub_id="hustvl/Vim-tiny-midclstok",
                                              hf_hub_filename="vim_t_midclstok_ft_78p3acc.pth"),
    "vim_small_patch16_224.in1k": _cfg(hf_hub_id="hustvl/Vim-small-midclstok",
                                       hf_hub_filename="vim_s_midclstok_80p5acc.pth"),
    "vim_small_patch16_stride8_224.in1k": _cfg(hf_hub_id="hustvl/Vim-small-midclstok",
                                               hf_hub_filename="vim_s_midclstok_ft_81p6acc.pth"),
    "vim_base_patch16_224.in1k": _cfg(hf_hub_id="hustvl/Vim-base-midclstok",
                                      hf_hub_filename="vim_b_midclstok_81p9acc.pth"),
    "test_vim.untrained": _cfg(input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.5,) * 3),
})


def _create(variant: str, pretrained: bool = False, **kwargs) -> VisionMamba:
    depth = kwargs.get("depth", 24)
    out_indices = kwargs.pop("out_indices", min(3, depth))
    return build_model_with_cfg(VisionMamba, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(feature_cls="getter", out_indices=out_indices),
                                **use_own_loader(kwargs))


@register_model
def vim_tiny_patch16_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-Ti: D 192, depth 24, patch 16 (7.15M params at 1000 classes; 76.1% IN-1k)."""
    return _create("vim_tiny_patch16_224", pretrained, **dict(dict(embed_dim=192, depth=24), **kwargs))


@register_model
def vim_tiny_patch16_stride8_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-Ti+ : Vim-Ti with stride-8 patches (729 tokens at 224; 78.3% IN-1k after fine-tuning)."""
    return _create("vim_tiny_patch16_stride8_224", pretrained,
                   **dict(dict(embed_dim=192, depth=24, stride=8), **kwargs))


@register_model
def vim_small_patch16_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-S: D 384, depth 24, patch 16 (25.8M params; 80.5% IN-1k)."""
    return _create("vim_small_patch16_224", pretrained, **dict(dict(embed_dim=384, depth=24), **kwargs))


@register_model
def vim_small_patch16_stride8_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-S+ : Vim-S with stride-8 patches (81.6% IN-1k after fine-tuning)."""
    return _create("vim_small_patch16_stride8_224", pretrained,
                   **dict(dict(embed_dim=384, depth=24, stride=8), **kwargs))


@register_model
def vim_base_patch16_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-B: D 768, depth 24, patch 16 (97.6M params; 81.9% IN-1k)."""
    return _create("vim_base_patch16_224", pretrained, **dict(dict(embed_dim=768, depth=24), **kwargs))


@register_model
def test_vim(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Tiny Vim for tests and small images: 32 px, patch 4, D 32, depth 3, d_state 8."""
    args = dict(img_size=32, patch_size=4, stride=4, embed_dim=32, depth=3, d_state=8)
    return _create("test_vim", pretrained, **dict(args, **kwargs))
