"""Triton depthwise causal conv1d (W = 2..4), forward and backward, as torch.library custom ops.

Math (DIR = +1 causal, -1 anti-causal; xs = x with `initial_states` h0 at t = -(W-1)..-1, zeros elsewhere):
    pre[t] = bias + sum_k w[k] * xs[t + DIR*(k - (W-1))];   out[t] = silu(pre[t]) or pre[t]
    dpre[t] = dout[t] * silu'(pre[t]);  dx[t] = sum_s w[W-1-s] * dpre[t + DIR*s]  (+ d final_states)
    dw[k] = sum_{b,t} dpre[t] * xs[t + DIR*(k - (W-1))];  dbias = sum_{b,t} dpre[t];  dh0 = dx at t < 0.

Tiles: one program per (batch, BLOCK_D channels, BLOCK_L steps). x is read in place through its strides
(no copy): for channel-first x (L contiguous) the tile is long along L; for channel-last x (a transposed
(batch, L, dim) tensor, dim contiguous) it is wide along dim, so every load of the W shifted taps is a
contiguous row segment. Outputs (out, dx, final_states) follow x's layout: channel-last in, channel-last out.

Shifted taps are re-loaded (L1/L2 hits) rather than shuffled in registers; the backward recomputes pre at
the W positions t..t+DIR*(W-1) it needs, so it stores nothing between forward and backward but x.
dweight/dbias: each program reduces its tile in registers and writes one partial per (batch, L tile);
the partials are summed in a fixed order (deterministic, no atomics).
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

from .eager import EagerOp

_MAX_EXTENT = 2**31 - 1


# --------------------------------------------------------------------------------------------- helpers
@triton.jit
def _sigmoid(p):
    # exp2 maps to the ex2 unit and the non-IEEE division to one reciprocal; the clamp keeps 1 + e far
    # below the range where the fast division flushes (sigmoid is 0 to fp32 precision there anyway).
    e = tl.exp2(tl.minimum(-p * 1.4426950408889634, 120.0))
    return tl.fdiv(tl.full(p.shape, 1.0, tl.float32), 1.0 + e)


@triton.jit
def _tap(x_ptr, h0_ptr, x_base, h0_base, d, t, t_lo, dim, L, s_xd, s_xl, s_hd, s_hl,
         W: tl.constexpr, HAS_H0: tl.constexpr):
    """xs at positions t (fp32): x for 0 <= t < L, h0[t + W-1] for -(W-1) <= t < 0, else 0.

    `t_lo` (a scalar <= every t) confines the initial-state load to the tiles that reach t < 0.
    """
    dm = d < dim
    v = tl.load(x_ptr + x_base + d * s_xd + t * s_xl, mask=dm & (t >= 0) & (t < L), other=0.0).to(tl.float32)
    if HAS_H0:
        if t_lo < 0:
            v += tl.load(h0_ptr + h0_base + d * s_hd + (t + (W - 1)) * s_hl, mask=dm & (t < 0) & (t > -W),
                         other=0.0).to(tl.float32)
    return v


@triton.jit
def _column(ptr, d1, dim, stride):
    """ptr[d1 * stride] (d1: (BLOCK_D,) channels) as a (BLOCK_D, 1) fp32 column. Loaded as a vector, then
    broadcast: a (BLOCK_D, 1) load would be issued once per element of the tile a thread holds."""
    return tl.load(ptr + d1 * stride, mask=d1 < dim, other=0.0).to(tl.float32)[:, None]


@triton.jit
def _weights(w_ptr, d1, dim, s_wd, s_wk, W: tl.constexpr):
    """The W taps of channels d1 as four (BLOCK_D, 1) fp32 columns (zeros for k >= W): one (BLOCK_D, 4)
    load (a row of taps is contiguous), split in registers."""
    k = tl.arange(0, 4)[None, :]
    blk = tl.load(w_ptr + d1[:, None] * s_wd + k * s_wk, mask=(d1[:, None] < dim) & (k < W), other=0.0)
    blk = blk.to(tl.float32)
    w0 = tl.sum(tl.where(k == 0, blk, 0.0), axis=1)[:, None]
    w1 = tl.sum(tl.where(k == 1, blk, 0.0), axis=1)[:, None]
    w2 = tl.sum(tl.where(k == 2, blk, 0.0), axis=1)[:, None]
    w3 = tl.sum(tl.where(k == 3, blk, 0.0), axis=1)[:, None]
    return w0, w1, w2, w3


@triton.jit
def _pick(a, b, c, e, i: tl.constexpr):
    """The i-th of four values, i a compile-time constant (tap k of w0..w3)."""
    if i == 0:
        return a
    if i == 1:
        return b
    if i == 2:
        return c
    return e


@triton.jit
def _bwd_tile(x_ptr, h0_ptr, g_ptr, x_base, h0_base, g_base, d, t, t_lo, dim, L,
              s_xd, s_xl, s_hd, s_hl, s_gd, s_gl, bias, w0, w1, w2, w3,
              W: tl.constexpr, DIR: tl.constexpr, HAS_H0: tl.constexpr, SILU: tl.constexpr):
    """dx at positions t (without the d final_states term), and this tile's sums over t of dpre (dbias)
    and of dpre * tap k (dweight), each a (BLOCK_D, 1) column. bias, w0..w3: (BLOCK_D, 1) fp32 columns.

    Walks s = 0..W-1 over the positions t + DIR*s that reach t through the taps, keeping a sliding window
    of W inputs: pre at t + DIR*s needs xs[t + DIR*(s + k - (W-1))], k = 0..W-1.
    """
    dm = d < dim
    # the window at s = 0: taps k = 0..W-1 at offsets DIR*(k - (W-1))
    xa = _tap(x_ptr, h0_ptr, x_base, h0_base, d, t + DIR * (0 - (W - 1)), t_lo + DIR * (0 - (W - 1)), dim, L,
              s_xd, s_xl, s_hd, s_hl, W, HAS_H0)
    xb = _tap(x_ptr, h0_ptr, x_base, h0_base, d, t + DIR * (1 - (W - 1)), t_lo + DIR * (1 - (W - 1)), dim, L,
              s_xd, s_xl, s_hd, s_hl, W, HAS_H0)
    xc = tl.zeros_like(xa)
    xd = tl.zeros_like(xa)
    if W >= 3:
        xc = _tap(x_ptr, h0_ptr, x_base, h0_base, d, t + DIR * (2 - (W - 1)), t_lo + DIR * (2 - (W - 1)), dim, L,
                  s_xd, s_xl, s_hd, s_hl, W, HAS_H0)
    if W >= 4:
        xd = _tap(x_ptr, h0_ptr, x_base, h0_base, d, t + DIR * (3 - (W - 1)), t_lo + DIR * (3 - (W - 1)), dim, L,
                  s_xd, s_xl, s_hd, s_hl, W, HAS_H0)
    dx = tl.zeros_like(xa)
    db = tl.zeros(d.shape, tl.float32)
    dw0 = db
    dw1 = db
    dw2 = db
    dw3 = db
    for s in tl.static_range(W):
        if s > 0:  # slide: drop tap 0, tap W-1 is the input at t + DIR*s
            new = _tap(x_ptr, h0_ptr, x_base, h0_base, d, t + DIR * s, t_lo + DIR * s, dim, L,
                       s_xd, s_xl, s_hd, s_hl, W, HAS_H0)
            xa = xb
            if W == 2:
                xb = new
            elif W == 3:
                xb = xc
                xc = new
            else:
                xb = xc
                xc = xd
                xd = new
        pre = bias + w0 * xa + w1 * xb
        if W >= 3:
            pre += w2 * xc
        if W >= 4:
            pre += w3 * xd
        p = t + DIR * s
        g = tl.load(g_ptr + g_base + d * s_gd + p * s_gl, mask=dm & (p >= 0) & (p < L), other=0.0).to(tl.float32)
        if SILU:
            sg = _sigmoid(pre)
            g = g * sg * (1.0 + pre * (1.0 - sg))
        dx += _pick(w0, w1, w2, w3, W - 1 - s) * g
        if s == 0:  # reduce now so that the taps of t need not stay live (g is 0 past L)
            db = tl.sum(g, axis=1)[:, None]
            dw0 = tl.sum(g * xa, axis=1)[:, None]
            dw1 = tl.sum(g * xb, axis=1)[:, None]
            if W >= 3:
                dw2 = tl.sum(g * xc, axis=1)[:, None]
            if W >= 4:
                dw3 = tl.sum(g * xd, axis=1)[:, None]
    return dx, db, dw0, dw1, dw2, dw3


# ---------------------------------------------------------------------------------------------- kernels
@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, b_ptr, h0_ptr, out_ptr, hn_ptr, dim, L, n_dt, n_lt,
                     s_xb, s_xd, s_xl, s_wd, s_wk, s_b, s_hb, s_hd, s_hl, s_ob, s_od, s_ol, s_nb, s_nd, s_nl,
                     W: tl.constexpr, DIR: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
                     HAS_HN: tl.constexpr, SILU: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    pid = tl.program_id(0)
    pid_l = pid % n_lt
    pid_d = (pid // n_lt) % n_dt
    pid_b = (pid // n_lt) // n_dt
    d1 = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d = d1[:, None]
    t_lo = pid_l * BLOCK_L
    t = (t_lo + tl.arange(0, BLOCK_L))[None, :]
    dm = d < dim
    x_base = pid_b.to(tl.int64) * s_xb
    h0_base = pid_b.to(tl.int64) * s_hb
    acc = tl.zeros([BLOCK_D, BLOCK_L], tl.float32)
    if HAS_BIAS:
        acc += _column(b_ptr, d1, dim, s_b)
    w0, w1, w2, w3 = _weights(w_ptr, d1, dim, s_wd, s_wk, W)
    for k in tl.static_range(W):
        off = DIR * (k - (W - 1))  # tap k of position t reads xs[t + off]
        acc += _pick(w0, w1, w2, w3, k) * _tap(x_ptr, h0_ptr, x_base, h0_base, d, t + off, t_lo + off, dim, L,
                                               s_xd, s_xl, s_hd, s_hl, W, HAS_H0)
    if SILU:
        acc = acc * _sigmoid(acc)
    tl.store(out_ptr + pid_b.to(tl.int64) * s_ob + d * s_od + t * s_ol, acc.to(out_ptr.dtype.element_ty),
             mask=dm & (t < L))
    if HAS_HN:
        if pid_l == n_lt - 1:  # the last W-1 inputs of xs: the next chunk's initial_states
            j = tl.arange(0, 4)[None, :]
            v = _tap(x_ptr, h0_ptr, x_base, h0_base, d, L - (W - 1) + j, L - (W - 1), dim, L, s_xd, s_xl, s_hd, s_hl,
                     W, HAS_H0)
            tl.store(hn_ptr + pid_b.to(tl.int64) * s_nb + d * s_nd + j * s_nl, v.to(hn_ptr.dtype.element_ty),
                     mask=dm & (j < W - 1))


@triton.jit
def _conv_bwd_kernel(x_ptr, w_ptr, b_ptr, h0_ptr, g_ptr, dhn_ptr, dx_ptr, dh0_ptr, dw_ptr, db_ptr,
                     dim, L, n_dt, n_lt,
                     s_xb, s_xd, s_xl, s_wd, s_wk, s_b, s_hb, s_hd, s_hl, s_gb, s_gd, s_gl, s_nb, s_nd, s_nl,
                     s_dxb, s_dxd, s_dxl, s_db0, s_dd0, s_dl0,
                     W: tl.constexpr, DIR: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
                     HAS_DHN: tl.constexpr, NEED_DH0: tl.constexpr, SILU: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    pid = tl.program_id(0)
    pid_l = pid % n_lt
    pid_d = (pid // n_lt) % n_dt
    pid_b = (pid // n_lt) // n_dt
    d1 = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d = d1[:, None]
    t_lo = pid_l * BLOCK_L
    t = (t_lo + tl.arange(0, BLOCK_L))[None, :]
    dm = d < dim
    x_base = pid_b.to(tl.int64) * s_xb
    h0_base = pid_b.to(tl.int64) * s_hb
    g_base = pid_b.to(tl.int64) * s_gb
    w0, w1, w2, w3 = _weights(w_ptr, d1, dim, s_wd, s_wk, W)
    bias = tl.zeros([BLOCK_D, 1], tl.float32)
    if HAS_BIAS:
        bias = _column(b_ptr, d1, dim, s_b)
    dx, db, dw0, dw1, dw2, dw3 = _bwd_tile(x_ptr, h0_ptr, g_ptr, x_base, h0_base, g_base, d, t, t_lo, dim, L,
                                           s_xd, s_xl, s_hd, s_hl, s_gd, s_gl, bias, w0, w1, w2, w3,
                                           W, DIR, HAS_H0, SILU)
    if HAS_DHN:  # final_states[i] is xs at L-(W-1)+i: its gradient flows back to those inputs
        i = t - (L - (W - 1))
        dx += tl.load(dhn_ptr + pid_b.to(tl.int64) * s_nb + d * s_nd + i * s_nl,
                      mask=dm & (i >= 0) & (t < L), other=0.0).to(tl.float32)
    tl.store(dx_ptr + pid_b.to(tl.int64) * s_dxb + d * s_dxd + t * s_dxl, dx.to(dx_ptr.dtype.element_ty),
             mask=dm & (t < L))
    # this program's partials of dweight (batch * n_lt, dim, W) and dbias (batch * n_lt, dim)
    row = (pid_b * n_lt + pid_l).to(tl.int64)
    part = dw_ptr + row * dim * W + d * W
    tl.store(part, dw0, mask=dm)
    tl.store(part + 1, dw1, mask=dm)
    if W >= 3:
        tl.store(part + 2, dw2, mask=dm)
    if W >= 4:
        tl.store(part + 3, dw3, mask=dm)
    if HAS_BIAS:
        tl.store(db_ptr + row * dim + d, db, mask=dm)
    if NEED_DH0:
        if pid_l == 0:  # d initial_states: the same sum at the positions -(W-1)..-1
            j = tl.arange(0, 4)[None, :]
            dh0, _, _, _, _, _ = _bwd_tile(x_ptr, h0_ptr, g_ptr, x_base, h0_base, g_base, d, j - (W - 1), 1 - W,
                                           dim, L, s_xd, s_xl, s_hd, s_hl, s_gd, s_gl, bias, w0, w1, w2, w3,
                                           W, DIR, HAS_H0, SILU)
            if HAS_DHN:  # when L < W-1 some final states are initial states
                dh0 += tl.load(dhn_ptr + pid_b.to(tl.int64) * s_nb + d * s_nd + (j - L) * s_nl,
                               mask=dm & (j >= L) & (j < W - 1), other=0.0).to(tl.float32)
            tl.store(dh0_ptr + pid_b.to(tl.int64) * s_db0 + d * s_dd0 + j * s_dl0, dh0.to(dh0_ptr.dtype.element_ty),
                     mask=dm & (j < W - 1))


# ------------------------------------------------------------------------------------------------- host
def is_channel_last(t: torch.Tensor) -> bool:
    """True for a (batch, dim, L) view of a (batch, L, dim)-contiguous tensor (dim is the unit-stride axis)."""
    return t.stride(1) == 1 and t.stride(2) != 1


def _empty_in_layout(like: torch.Tensor, shape=None, dtype=None) -> torch.Tensor:
    """A new (batch, C, T) tensor in `like`'s layout: channel-last if `like` is, else contiguous."""
    b, c, n = shape if shape is not None else like.shape
    dtype = dtype or like.dtype
    if is_channel_last(like):
        return torch.empty(b, n, c, dtype=dtype, device=like.device).transpose(1, 2)
    return torch.empty(b, c, n, dtype=dtype, device=like.device)


def _in_layout(t: torch.Tensor, channel_last: bool) -> torch.Tensor:
    """`t` with the unit stride on the same axis as x (a copy only when it is not already so)."""
    if channel_last:
        return t if t.stride(1) == 1 else t.transpose(1, 2).contiguous().transpose(1, 2)
    return t if t.stride(2) == 1 else t.contiguous()


def _check_extent(name: str, t: torch.Tensor) -> None:
    """In-batch offsets are int32 in the kernels (the batch offset is int64)."""
    extent = sum((s - 1) * abs(st) for s, st in zip(t.shape[1:], t.stride()[1:]))
    if extent > _MAX_EXTENT:
        raise ValueError(f"causal_conv1d (triton): {name} spans {extent} elements per batch row, more than int32 "
                         f"offsets reach; split the batch row or use backend='reference'")


def _plan(x: torch.Tensor, backward: bool) -> tuple[int, int, int, int, int]:
    """(BLOCK_D, BLOCK_L, n_d_tiles, n_l_tiles, num_warps) for x's layout: 2048-element tiles, 8 warps in the
    backward (it holds W taps and W dout values live; 4 warps would need ~250 registers a thread at W=4).
    MAMBASUITE_CONV_BLOCK_D / _BLOCK_L / _WARPS override them (tests; sweeps on a GPU)."""
    _, dim, length = x.shape
    if is_channel_last(x):  # contiguous along dim: 64 channels = 128 B rows in bf16
        block_d = min(64, triton.next_power_of_2(dim))
        block_l = min(triton.next_power_of_2(length), max(16, 2048 // block_d))
    else:
        block_l = min(256, triton.next_power_of_2(length))
        block_d = min(triton.next_power_of_2(dim), max(1, 2048 // block_l))
    env = os.environ.get
    block_d = int(env("MAMBASUITE_CONV_BLOCK_D", 0)) or block_d
    block_l = int(env("MAMBASUITE_CONV_BLOCK_L", 0)) or block_l
    warps = int(env("MAMBASUITE_CONV_WARPS", 0)) or (8 if backward and block_d * block_l >= 2048 else 4)
    return block_d, block_l, triton.cdiv(dim, block_d), triton.cdiv(length, block_l), warps


def _on_device(x: torch.Tensor):
    """Triton launches on the current CUDA device: make it x's (a no-op on CPU)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _strides(t: torch.Tensor | None, n: int) -> tuple[int, ...]:
    return tuple(t.stride()) if t is not None else (0,) * n


def _conv_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, initial_states: torch.Tensor | None,
              silu: bool, reverse: bool, return_final_states: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x (batch, dim, L) any strides -> out (batch, dim, L) in x's layout, final_states (batch, dim, W-1)
    (an empty tensor of its own unless `return_final_states`)."""
    batch, dim, length = x.shape
    width = weight.shape[1]
    out = _empty_in_layout(x)
    final = _empty_in_layout(x, (batch, dim, width - 1)) if return_final_states else x.new_empty(0)
    block_d, block_l, n_dt, n_lt, warps = _plan(x, backward=False)
    with _on_device(x):
        _conv_fwd_kernel[(batch * n_dt * n_lt,)](
            x, weight, bias if bias is not None else weight, initial_states if initial_states is not None else x,
            out, final if return_final_states else out, dim, length, n_dt, n_lt,
            *x.stride(), *weight.stride(), bias.stride(0) if bias is not None else 0, *_strides(initial_states, 3),
            *out.stride(), *_strides(final if return_final_states else None, 3),
            W=width, DIR=-1 if reverse else 1, HAS_BIAS=bias is not None, HAS_H0=initial_states is not None,
            HAS_HN=return_final_states, SILU=silu, BLOCK_D=block_d, BLOCK_L=block_l, num_warps=warps)
    return out, final


_fwd_op = torch.library.custom_op("mambasuite::causal_conv1d_fwd", _conv_fwd, mutates_args=())


@_fwd_op.register_fake
def _(x, weight, bias, initial_states, silu, reverse, return_final_states):
    batch, dim, _ = x.shape
    final = _empty_in_layout(x, (batch, dim, weight.shape[1] - 1)) if return_final_states else x.new_empty(0)
    return _empty_in_layout(x), final


def _conv_bwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, initial_states: torch.Tensor | None,
              dout: torch.Tensor, dfinal: torch.Tensor | None, silu: bool, reverse: bool
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> dx (x's layout and dtype), dweight (weight's dtype), dbias, d initial_states (each an empty
    tensor of its own when the input was None)."""
    batch, dim, length = x.shape
    width = weight.shape[1]
    block_d, block_l, n_dt, n_lt, warps = _plan(x, backward=True)
    dx = _empty_in_layout(x)
    dh0 = _empty_in_layout(initial_states) if initial_states is not None else x.new_empty(0)
    dw_part = torch.empty(batch * n_lt, dim, width, dtype=torch.float32, device=x.device)
    db_part = torch.empty(batch * n_lt, dim, dtype=torch.float32, device=x.device) if bias is not None else dw_part
    with _on_device(x):
        _conv_bwd_kernel[(batch * n_dt * n_lt,)](
            x, weight, bias if bias is not None else weight, initial_states if initial_states is not None else x,
            dout, dfinal if dfinal is not None else dout, dx, dh0 if initial_states is not None else dx,
            dw_part, db_part, dim, length, n_dt, n_lt,
            *x.stride(), *weight.stride(), bias.stride(0) if bias is not None else 0, *_strides(initial_states, 3),
            *dout.stride(), *_strides(dfinal, 3), *dx.stride(),
            *_strides(dh0 if initial_states is not None else None, 3),
            W=width, DIR=-1 if reverse else 1, HAS_BIAS=bias is not None, HAS_H0=initial_states is not None,
            HAS_DHN=dfinal is not None, NEED_DH0=initial_states is not None, SILU=silu,
            BLOCK_D=block_d, BLOCK_L=block_l, num_warps=warps)
    dweight = dw_part.sum(0).to(weight.dtype)  # a fixed-order reduction: deterministic
    dbias = db_part.sum(0).to(bias.dtype) if bias is not None else x.new_empty(0)
    return dx, dweight, dbias, dh0


_bwd_op = torch.library.custom_op("mambasuite::causal_conv1d_bwd", _conv_bwd, mutates_args=())
_bwd = EagerOp(_bwd_op, _conv_bwd)


@_bwd_op.register_fake
def _(x, weight, bias, initial_states, dout, dfinal, silu, reverse):
    dbias = torch.empty_like(bias, memory_format=torch.contiguous_format) if bias is not None else x.new_empty(0)
    dh0 = _empty_in_layout(initial_states) if initial_states is not None else x.new_empty(0)
    return _empty_in_layout(x), weight.new_empty(weight.shape), dbias, dh0


def _setup_context(ctx, inputs, output):
    x, weight, bias, initial_states, silu, reverse, return_final_states = inputs
    ctx.save_for_backward(x, weight, bias, initial_states)
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None (no zeros allocated and read)
    ctx.silu, ctx.reverse, ctx.return_final_states = silu, reverse, return_final_states


def _backward(ctx, dout, dfinal):
    x, weight, bias, initial_states = ctx.saved_tensors
    channel_last = is_channel_last(x)
    dout = _in_layout(dout, channel_last) if dout is not None else torch.zeros_like(x)
    dfinal = dfinal if ctx.return_final_states else None
    dx, dweight, dbias, dh0 = _bwd(x, weight, bias, initial_states, dout, dfinal, ctx.silu, ctx.reverse)
    return (dx, dweight, dbias if bias is not None else None, dh0 if initial_states is not None else None,
            None, None, None)


_fwd_op.register_autograd(_backward, setup_context=_setup_context)
_fwd = EagerOp(_fwd_op, _conv_fwd, _setup_context, _backward)


def causal_conv1d_triton(x, weight, bias=None, activation=None, *, reverse=False, initial_states=None,
                         return_final_states=False):
    """Triton causal conv1d; same contract as `causal_conv1d_ref` (float64 refused), output in x's layout."""
    if x.dtype == torch.float64:
        raise TypeError("causal_conv1d: backend='triton' computes in fp32 and does not take float64; "
                        "use backend='reference'")
    for name, t in (("x", x), ("initial_states", initial_states)):
        if t is not None:
            _check_extent(name, t)
    out, final = _fwd(x, weight, bias, initial_states, activation in ("silu", "swish"), reverse,
                      return_final_states)
    return (out, final) if return_final_states else out


__all__ = ["causal_conv1d_triton", "is_channel_last"]
