"""PyTorch reference of the fused residual add + RMSNorm (the pre-norm step of every Mamba block)."""

from __future__ import annotations

import torch


def residual_dtype(x: torch.Tensor, residual: torch.Tensor | None, residual_in_fp32: bool) -> torch.dtype:
    """dtype of the new residual stream: fp32 when `residual_in_fp32` (float64 stays float64), else the
    promoted dtype of x and residual."""
    promoted = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    if promoted == torch.float64:
        return torch.float64
    return torch.float32 if residual_in_fp32 else promoted


def add_rms_norm_ref(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float = 1e-5,
                     residual_in_fp32: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """new_residual = x + residual (or x when residual is None), in `residual_dtype(...)`;
    out = new_residual / sqrt(mean(new_residual^2, -1) + eps) * weight, computed in fp32 (float64 for
    float64 inputs) and returned in x's dtype.

    Shapes: x, residual (..., dim); weight (dim,). Returns (out (..., dim) x.dtype, new_residual (..., dim)).
    """
    res_dtype = residual_dtype(x, residual, residual_in_fp32)
    new_residual = x.to(res_dtype) if residual is None else residual.to(res_dtype) + x.to(res_dtype)
    acc = torch.float64 if res_dtype == torch.float64 else torch.float32
    r = new_residual.to(acc)
    out = r * torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + eps) * weight.to(acc)
    return out.to(x.dtype), new_residual
