"""A pre-norm Transformer encoder of a given width and depth: the peer of `MambaBackbone` in the scaling study.

The block is the ViT / DeiT one (timm's `Block` without layer scale): x + attn(LN(x)), then x + mlp(LN(x)), with a
fused qkv projection (with bias), attention through `torch.nn.functional.scaled_dot_product_attention` (which picks
FlashAttention / memory-efficient kernels on a GPU when dtype and head size allow), and a GELU MLP of ratio 4.

Parameters per block: 12 d^2 + 13 d (attention 4 d^2 + 4 d, MLP 8 d^2 + 5 d, two LayerNorms 4 d). A Mamba block
with expand 2 holds about 6 d^2 (in_proj 4 d^2, out_proj 2 d^2) plus O(d * (N + dt_rank)) for the SSM, so at equal
width and depth the Transformer has roughly twice the parameters (the Mamba paper pairs two Mamba blocks per
Transformer block for that reason); `count_parameters` gives the exact numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .mixers import check_channel_last, check_positive_int

__all__ = ["SelfAttention", "TransformerBackbone", "TransformerBlock", "count_parameters"]


def count_parameters(module: nn.Module) -> int:
    """Number of distinct parameters (shared tensors counted once)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


class SelfAttention(nn.Module):
    """Multi-head self-attention through SDPA; x (batch, L, d_model) -> (batch, L, d_model).

    Args:
        d_model: width; n_head: heads (d_model must be divisible by n_head); causal: mask future positions.
    """

    def __init__(self, d_model: int, n_head: int, causal: bool = False) -> None:
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("n_head", n_head)
        if d_model % n_head:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_head ({n_head})")
        self.n_head, self.causal = n_head, bool(causal)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        # (batch, L, 3, heads, head_dim) -> three (batch, heads, L, head_dim) views, SDPA's layout.
        q, k, v = self.qkv(x).view(batch, length, 3, self.n_head, width // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(y.transpose(1, 2).reshape(batch, length, width))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(LN(x)), then x + MLP(LN(x)); (batch, L, d_model) -> same shape."""

    def __init__(self, d_model: int, n_head: int, mlp_ratio: float = 4.0, causal: bool = False) -> None:
        super().__init__()
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio!r}")
        hidden = int(d_model * mlp_ratio)
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_head, causal)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TransformerBackbone(nn.Module):
    """`n_layer` pre-norm Transformer blocks and a final LayerNorm, without embedding or head.

    Args:
        d_model: width; n_layer: depth; n_head: attention heads; mlp_ratio: MLP hidden / d_model;
        causal: causal attention (for comparisons with unidirectional Mamba).

    Shapes: forward (batch, L, d_model) -> (batch, L, d_model).
    """

    def __init__(self, d_model: int, n_layer: int, n_head: int, mlp_ratio: float = 4.0,
                 causal: bool = False) -> None:
        super().__init__()
        self.d_model = check_positive_int("d_model", d_model)
        self.n_layer = check_positive_int("n_layer", n_layer)
        self.layers = nn.ModuleList(TransformerBlock(d_model, n_head, mlp_ratio, causal) for _ in range(n_layer))
        self.norm_f = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, L, d_model) -> (batch, L, d_model)."""
        check_channel_last(x, self.d_model, type(self).__name__)
        for layer in self.layers:
            x = layer(x)
        return self.norm_f(x)
