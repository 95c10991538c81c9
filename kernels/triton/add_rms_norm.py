"""Triton fused residual add + RMSNorm, forward and backward, as torch.library custom ops.

Forward, one program per BLOCK_M rows (a row = the last dim, held whole in registers):
    r = x + residual (stored once, in the residual dtype); rstd = 1 / sqrt(mean(r^2) + eps); out = r * rstd * w.
Backward (g = d out, gr = d new_residual from the rest of the residual stream):
    xhat = r * rstd; dxhat = g * w; dr = rstd * (dxhat - xhat * mean(dxhat * xhat)) + gr;
    d x = d residual = dr; d w = sum over rows of g * xhat (a partial per program, summed in a fixed order,
    so the op is deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .eager import EagerOp
from .host import cdiv, next_pow2
from .launcher import launch


@triton.jit
def _add_rms_norm_fwd_kernel(x_ptr, res_ptr, w_ptr, out_ptr, newres_ptr, rstd_ptr, M, N, eps,
                             HAS_RES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    offs = rows[:, None] * N + cols[None, :]
    r = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        r += tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    r_stored = r.to(newres_ptr.dtype.element_ty)
    tl.store(newres_ptr + offs, r_stored, mask=mask)
    r = r_stored.to(tl.float32)  # normalise exactly what the residual stream carries on
    rstd = 1.0 / tl.sqrt(tl.sum(r * r, axis=1) / N + eps)
    tl.store(rstd_ptr + rows, rstd, mask=rows < M)
    w = tl.load(w_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, (r * rstd[:, None] * w[None, :]).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _add_rms_norm_bwd_kernel(g_ptr, gr_ptr, r_ptr, rstd_ptr, w_ptr, dx_ptr, dres_ptr, dw_ptr, M, N,
                             HAS_GR: tl.constexpr, HAS_RES: tl.constexpr, BLOCK_M: tl.constexpr,
                             BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    offs = rows[:, None] * N + cols[None, :]
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.load(rstd_ptr + rows, mask=rows < M, other=0.0)
    xhat = tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32) * rstd[:, None]
    w = tl.load(w_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    dxhat = g * w[None, :]
    dr = rstd[:, None] * (dxhat - xhat * (tl.sum(dxhat * xhat, axis=1) / N)[:, None])
    if HAS_GR:
        dr += tl.load(gr_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(dx_ptr + offs, dr.to(dx_ptr.dtype.element_ty), mask=mask)
    if HAS_RES:
        tl.store(dres_ptr + offs, dr.to(dres_ptr.dtype.element_ty), mask=mask)
    tl.store(dw_ptr + pid * N + cols, tl.sum(g * xhat, axis=0), mask=cols < N)


def _blocks(dim: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps): whole rows per program, ~4K elements per program."""
    block_n = next_pow2(dim)
    block_m = max(1, min(16, 4096 // block_n))
    return block_m, block_n, 4 if block_n * block_m <= 4096 else 8


def _norm_fwd(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
              res_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x, residual (M, N) contiguous -> out (M, N) x.dtype, new_residual (M, N) res_dtype, rstd (M,) fp32."""
    m, n = x.shape
    out = torch.empty_like(x)
    new_res = torch.empty(m, n, dtype=res_dtype, device=x.device)
    rstd = torch.empty(m, dtype=torch.float32, device=x.device)
    block_m, block_n, warps = _blocks(n)
    launch(
        _add_rms_norm_fwd_kernel, (cdiv(m, block_m),),
        x, residual if residual is not None else x, weight, out, new_res, rstd, m, n, eps,
        HAS_RES=residual is not None, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps)
    return out, new_res, rstd


_fwd_op = torch.library.custom_op("mambasuite::add_rms_norm_fwd", _norm_fwd, mutates_args=())


@_fwd_op.register_fake
def _(x, residual, weight, eps, res_dtype):
    return torch.empty_like(x), x.new_empty(x.shape, dtype=res_dtype), x.new_empty(x.shape[0], dtype=torch.float32)


def _norm_bwd(g: torch.Tensor, gr: torch.Tensor | None, new_res: torch.Tensor, rstd: torch.Tensor,
              weight: torch.Tensor, x_dtype: torch.dtype, res_dtype: torch.dtype | None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns d x (M, N) x_dtype, d residual (M, N) res_dtype (empty when there was no residual), d weight."""
    m, n = g.shape
    block_m, block_n, warps = _blocks(n)
    grid = cdiv(m, block_m)
    dx = torch.empty(m, n, dtype=x_dtype, device=g.device)
    dres = torch.empty(m, n, dtype=res_dtype, device=g.device) if res_dtype is not None else dx.new_empty(0)
    dw_part = torch.empty(grid, n, dtype=torch.float32, device=g.device)
    launch(
        _add_rms_norm_bwd_kernel, (grid,),
        g, gr if gr is not None else g, new_res, rstd, weight, dx, dres if res_dtype is not None else dx, dw_part,
        m, n, HAS_GR=gr is not None, HAS_RES=res_dtype is not None, BLOCK_M=block_m, BLOCK_N=block_n,
        num_warps=warps)
    return dx, dres, dw_part.sum(0).to(weight.dtype)


_bwd_op = torch.library.custom_op("mambasuite::add_rms_norm_bwd", _norm_bwd, mutates_args=())
_bwd = EagerOp(_bwd_op, _norm_bwd)


@_bwd_op.register_fake
def _(g, gr, new_res, rstd, weight, x_dtype, res_dtype):
    dres = g.new_empty(g.shape, dtype=res_dtype) if res_dtype is not None else g.new_empty(0)
    return g.new_empty(g.shape, dtype=x_dtype), dres, torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    x, residual, weight, eps, res_dtype = inputs
    _, new_res, rstd = output
    ctx.save_for_backward(new_res, rstd, weight)
    # rstd is internal; an unused output's gradient stays None (the kernel then skips it) instead of zeros
    ctx.mark_non_differentiable(rstd)
    ctx.set_materialize_grads(False)
    ctx.x_dtype = x.dtype
    ctx.res_in_dtype = residual.dtype if residual is not None else None


def _backward(ctx, g, gr, _grstd):
    new_res, rstd, weight = ctx.saved_tensors
    g = g.contiguous() if g is not None else torch.zeros_like(new_res, dtype=ctx.x_dtype)
    gr = gr.contiguous() if gr is not None else None
    dx, dres, dw = _bwd(g, gr, new_res, rstd, weight, ctx.x_dtype, ctx.res_in_dtype)
    return dx, (dres if ctx.res_in_dtype is not None else None), dw, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)
_fwd = EagerOp(_fwd_op, _norm_fwd, _setup_context, _backward)


def add_rms_norm_triton(x, residual, weight, eps=1e-5, residual_in_fp32=True):
    """Triton fused add + RMSNorm; same contract as `add_rms_norm_ref` (float64 refused)."""
    from ..reference.add_rms_norm import residual_dtype

    if x.dtype == torch.float64:
        raise TypeError("add_rms_norm: backend='triton' computes in fp32 and does not take float64; "
                        "use backend='reference'")
    res_dtype = residual_dtype(x, residual, residual_in_fp32)
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).contiguous()
    r2 = residual.reshape(-1, shape[-1]).contiguous() if residual is not None else None
    out, new_res, _ = _fwd(x2, r2, weight, float(eps), res_dtype)
    return out.view(shape), new_res.view(shape)


__all__ = ["add_rms_norm_triton"]
