"""Triton depthwise causal conv1d (W = 2..4), forward and backward, as torch.library custom ops.

Math (DIR = +1 causal, -1 anti-causal; xs = x with `initial_states` h0 at t = -(W-1)..-1, zeros elsewhere):
    pre[t] = bias + sum_k w[k] * xs[t + DIR*(k - (W-1))];   out[t] = silu(pre[t]) or pre[t]
    dpre[t] = dout[t] * silu'(pre[t]);  dx[t] = sum_s w[W-1-s] * dpre[t + DIR*s]  (+ d final_states)
    dw[k] = sum_{b,t} dpre[t] * xs[t + DIR*(k - (W-1))];  dbias = sum_{b,t} dpre[t];  dh0 = dx at t < 0.

Tiles: one program per (batch, BLOCK_D channels, BLOCK_L steps) in the forward, per (batch, BLOCK_D
channels, a group of consecutive BLOCK_L tiles) in the backward. x is read in place through its strides (no
copy); outputs (out, dx, final_states) follow x's layout: channel-last in, channel-last out.

Runs: each thread owns runs of RUN consecutive steps (8; 4 in the channel-last forward). A tap k of output t
reads xs[t + DIR*(k - (W-1))], so the outputs of a run need xs from at most one run before and one after it;
the backward also needs dout one run ahead (causal) or back. Those runs are loaded whole and the shifted values
picked in registers, instead of one shifted (misaligned) load per tap and output:
  * channel-first x (L contiguous): one (BLOCK_D, BLOCK_L) load per set of runs (the tile's own, the one
    before, the one after), RUN steps per thread as vector loads, split in registers into RUN per-step
    tensors by reshape + split (no shuffles or shared memory when rows are 16-byte aligned, checked in the
    sm_90 SASS; unaligned rows, e.g. L = 197 in bf16, load scalars and pay a layout conversion);
  * channel-last x (dim contiguous): RUN row loads per run, each coalesced along dim.
The backward recomputes pre where it needs it (it stores nothing between forward and backward but x);
repeated terms are the same expressions, which the compiler merges.
dweight/dbias: each backward program sums its tiles in registers, then adds that sum atomically into one zeroed
(dim, W) + (dim,) fp32 buffer: no partials and no reduction launches (on the H200 the two reductions took 37 us of
GPU time per step at (8, 1536, 2048) channel-last, more than the forward kernel). Atomic float sums are not bitwise
reproducible; in deterministic mode (`torch.use_deterministic_algorithms(True)` or MAMBASUITE_DETERMINISTIC=1,
as for the scan) each program writes one partial per (batch, group) and the partials are summed in a fixed order.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl

from .eager import EagerOp, distinct_outputs
from .host import cdiv, env_reader, next_pow2
from .launcher import launch
from .scan_plan import deterministic_mode

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
    """The W taps of channels d1 as a 4-tuple of (BLOCK_D, 1) fp32 columns (zeros for k >= W): one
    (BLOCK_D, 4) load (a row of taps is contiguous), split in registers."""
    k = tl.arange(0, 4)[None, :]
    blk = tl.load(w_ptr + d1[:, None] * s_wd + k * s_wk, mask=(d1[:, None] < dim) & (k < W), other=0.0)
    blk = blk.to(tl.float32)
    w0 = tl.sum(tl.where(k == 0, blk, 0.0), axis=1)[:, None]
    w1 = tl.sum(tl.where(k == 1, blk, 0.0), axis=1)[:, None]
    w2 = tl.sum(tl.where(k == 2, blk, 0.0), axis=1)[:, None]
    w3 = tl.sum(tl.where(k == 3, blk, 0.0), axis=1)[:, None]
    return (w0, w1, w2, w3)


@triton.jit
def _split4(v, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr):
    """(BLOCK_D, 4*BLOCK_R) -> 4-tuple of (BLOCK_D, BLOCK_R): column 4r + k goes to element k of the tuple.

    The reshapes keep element order and each split takes an in-thread pair, so a vector load of four (or
    more) steps per thread becomes four registers without shuffles or shared memory (sm_90 SASS)."""
    even, odd = tl.split(tl.reshape(v, (BLOCK_D, 2 * BLOCK_R, 2)))
    c0, c2 = tl.split(tl.reshape(even, (BLOCK_D, BLOCK_R, 2)))
    c1, c3 = tl.split(tl.reshape(odd, (BLOCK_D, BLOCK_R, 2)))
    return (c0, c1, c2, c3)


@triton.jit
def _join4(c, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr):
    """The inverse of `_split4`: a 4-tuple of (BLOCK_D, BLOCK_R) -> (BLOCK_D, 4*BLOCK_R)."""
    even = tl.reshape(tl.join(c[0], c[2]), (BLOCK_D, 2 * BLOCK_R))
    odd = tl.reshape(tl.join(c[1], c[3]), (BLOCK_D, 2 * BLOCK_R))
    return tl.reshape(tl.join(even, odd), (BLOCK_D, 4 * BLOCK_R))


@triton.jit
def _split_runs(v, RUN: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr):
    """(BLOCK_D, RUN*BLOCK_R) -> RUN-tuple of (BLOCK_D, BLOCK_R): column RUN*r + k goes to element k (RUN 4 or 8:
    an 8-run is split into its even and odd steps first)."""
    # (an if/else, not an early return: the compiler also builds the code after a constexpr-true return)
    if RUN == 4:
        runs = _split4(v, BLOCK_D, BLOCK_R)
    else:
        even, odd = tl.split(tl.reshape(v, (BLOCK_D, 4 * BLOCK_R, 2)))
        e = _split4(even, BLOCK_D, BLOCK_R)
        o = _split4(odd, BLOCK_D, BLOCK_R)
        runs = (e[0], o[0], e[1], o[1], e[2], o[2], e[3], o[3])
    return runs


@triton.jit
def _join_runs(c, RUN: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr):
    """The inverse of `_split_runs`."""
    if RUN == 4:
        v = _join4(c, BLOCK_D, BLOCK_R)
    else:
        even = _join4((c[0], c[2], c[4], c[6]), BLOCK_D, BLOCK_R)
        odd = _join4((c[1], c[3], c[5], c[7]), BLOCK_D, BLOCK_R)
        v = tl.reshape(tl.join(even, odd), (BLOCK_D, 8 * BLOCK_R))
    return v


@triton.jit
def _runs(ptr, h0_ptr, base, h0_base, d, lo, dim, L, s_d, s_l, s_hd, s_hl, W: tl.constexpr, HAS_H0: tl.constexpr,
            VEC: tl.constexpr, RUN: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr):
    """xs at positions lo + RUN*r + k, r < BLOCK_R, as a RUN-tuple (k < RUN) of (BLOCK_D, BLOCK_R) fp32 runs.

    VEC (L is the unit-stride axis): one (BLOCK_D, RUN*BLOCK_R) load, RUN steps per thread, split in registers.
    Otherwise (channel-last: dim is the unit-stride axis) RUN loads, each a set of whole rows."""
    if VEC:
        t = lo + tl.arange(0, RUN * BLOCK_R)[None, :]
        runs = _split_runs(_tap(ptr, h0_ptr, base, h0_base, d, t, lo, dim, L, s_d, s_l, s_hd, s_hl, W, HAS_H0),
                           RUN, BLOCK_D, BLOCK_R)
    else:
        t = lo + RUN * tl.arange(0, BLOCK_R)[None, :]
        runs = ()
        for k in tl.static_range(RUN):
            runs = runs + (_tap(ptr, h0_ptr, base, h0_base, d, t + k, lo + k, dim, L, s_d, s_l, s_hd, s_hl, W,
                                HAS_H0),)
    return runs


@triton.jit
def _neighbour_runs(ptr, h0_ptr, base, h0_base, d, t_lo, dim, L, s_d, s_l, s_hd, s_hl, W: tl.constexpr,
                    HAS_H0: tl.constexpr, VEC: tl.constexpr, RUN: tl.constexpr, BLOCK_D: tl.constexpr,
                    BLOCK_R: tl.constexpr):
    """`_runs` one run back, here and one run ahead of a tile starting at t_lo: (prev, cur, next). A direction
    reads only one of the neighbours; the compiler drops the loads of the other."""
    prev = _runs(ptr, h0_ptr, base, h0_base, d, t_lo - RUN, dim, L, s_d, s_l, s_hd, s_hl, W, HAS_H0, VEC, RUN,
                 BLOCK_D, BLOCK_R)
    cur = _runs(ptr, h0_ptr, base, h0_base, d, t_lo, dim, L, s_d, s_l, s_hd, s_hl, W, HAS_H0, VEC, RUN,
                BLOCK_D, BLOCK_R)
    nxt = _runs(ptr, h0_ptr, base, h0_base, d, t_lo + RUN, dim, L, s_d, s_l, s_hd, s_hl, W, HAS_H0, VEC, RUN,
                BLOCK_D, BLOCK_R)
    return prev, cur, nxt


@triton.jit
def _store_runs(ptr, base, d, lo, vals, dim, hi, s_d, s_l, add_ptr, add_base, add_lo, s_ad, s_al,
                HAS_ADD: tl.constexpr, W: tl.constexpr, VEC: tl.constexpr, RUN: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr):
    """Store vals[k] (RUN-tuple of (BLOCK_D, BLOCK_R) fp32) at positions p = lo + RUN*r + k, 0 <= p < hi.

    HAS_ADD: first add add_ptr[p - add_lo] where 0 <= p - add_lo < W-1 (the gradient of the final states,
    which are copies of the last W-1 inputs)."""
    dm = d < dim
    if VEC:
        p = lo + tl.arange(0, RUN * BLOCK_R)[None, :]
        v = _join_runs(vals, RUN, BLOCK_D, BLOCK_R)
        if HAS_ADD:
            i = p - add_lo
            v += tl.load(add_ptr + add_base + d * s_ad + i * s_al, mask=dm & (i >= 0) & (i < W - 1) & (p < hi),
                         other=0.0).to(tl.float32)
        tl.store(ptr + base + d * s_d + p * s_l, v.to(ptr.dtype.element_ty), mask=dm & (p >= 0) & (p < hi))
    else:
        p0 = lo + RUN * tl.arange(0, BLOCK_R)[None, :]
        for k in tl.static_range(RUN):
            p = p0 + k
            v = vals[k]
            if HAS_ADD:
                i = p - add_lo
                v += tl.load(add_ptr + add_base + d * s_ad + i * s_al,
                             mask=dm & (i >= 0) & (i < W - 1) & (p < hi), other=0.0).to(tl.float32)
            tl.store(ptr + base + d * s_d + p * s_l, v.to(ptr.dtype.element_ty), mask=dm & (p >= 0) & (p < hi))


@triton.jit
def _at(j: tl.constexpr, prev, cur, nxt, RUN: tl.constexpr):
    """The value at offset j (-RUN <= j < 2*RUN) from a run's first step, from the previous / this / next run."""
    if j < 0:
        return prev[j + RUN]
    elif j < RUN:
        return cur[j]
    else:
        return nxt[j - RUN]


@triton.jit
def _pre(j: tl.constexpr, xp, xc, xn, wt, bias, W: tl.constexpr, DIR: tl.constexpr, RUN: tl.constexpr):
    """The pre-activation at offset j: bias + sum_k w[k] * xs[j + DIR*(k - (W-1))]."""
    acc = bias + wt[0] * _at(j + DIR * (0 - (W - 1)), xp, xc, xn, RUN)
    for k in tl.static_range(1, W):
        acc += wt[k] * _at(j + DIR * (k - (W - 1)), xp, xc, xn, RUN)
    return acc


@triton.jit
def _dpre(j: tl.constexpr, xp, xc, xn, gp, gc, gn, wt, bias, W: tl.constexpr, DIR: tl.constexpr,
          SILU: tl.constexpr, RUN: tl.constexpr):
    """d pre at offset j = dout * silu'(pre) (dout is 0 past L, so dpre is too). Each offset is asked for by
    up to W outputs; the compiler merges the identical computations."""
    g = _at(j, gp, gc, gn, RUN)
    if SILU:
        pre = _pre(j, xp, xc, xn, wt, bias, W, DIR, RUN)
        sg = _sigmoid(pre)
        g = g * sg * (1.0 + pre * (1.0 - sg))
    return g


# ---------------------------------------------------------------------------------------------- kernels
@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, b_ptr, h0_ptr, out_ptr, hn_ptr, dim, L, n_dt, n_lt,
                     s_xb, s_xd, s_xl, s_wd, s_wk, s_b, s_hb, s_hd, s_hl, s_ob, s_od, s_ol, s_nb, s_nd, s_nl,
                     W: tl.constexpr, DIR: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
                     HAS_HN: tl.constexpr, SILU: tl.constexpr, VEC: tl.constexpr, RUN: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr):
    pid = tl.program_id(0)
    pid_l = pid % n_lt
    pid_d = (pid // n_lt) % n_dt
    pid_b = (pid // n_lt) // n_dt
    d1 = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d = d1[:, None]
    t_lo = pid_l * (RUN * BLOCK_R)
    x_base = pid_b.to(tl.int64) * s_xb
    h0_base = pid_b.to(tl.int64) * s_hb
    bias = tl.zeros([BLOCK_D, 1], tl.float32)
    if HAS_BIAS:
        bias = _column(b_ptr, d1, dim, s_b)
    wt = _weights(w_ptr, d1, dim, s_wd, s_wk, W)
    # the run before (causal taps) and after (anti-causal taps) this one
    xp, xc, xn = _neighbour_runs(x_ptr, h0_ptr, x_base, h0_base, d, t_lo, dim, L, s_xd, s_xl, s_hd, s_hl, W, HAS_H0,
                                 VEC, RUN, BLOCK_D, BLOCK_R)
    outs = ()
    for i in tl.static_range(RUN):
        o = _pre(i, xp, xc, xn, wt, bias, W, DIR, RUN)
        if SILU:
            o = o * _sigmoid(o)
        outs = outs + (o,)
    _store_runs(out_ptr, pid_b.to(tl.int64) * s_ob, d, t_lo, outs, dim, L, s_od, s_ol,
                out_ptr, 0, 0, 0, 0, False, W, VEC, RUN, BLOCK_D, BLOCK_R)
    if HAS_HN:
        if pid_l == n_lt - 1:  # the last W-1 inputs of xs: the next chunk's initial_states
            j = tl.arange(0, 4)[None, :]
            v = _tap(x_ptr, h0_ptr, x_base, h0_base, d, L - (W - 1) + j, L - (W - 1), dim, L, s_xd, s_xl, s_hd, s_hl,
                     W, HAS_H0)
            tl.store(hn_ptr + pid_b.to(tl.int64) * s_nb + d * s_nd + j * s_nl, v.to(hn_ptr.dtype.element_ty),
                     mask=(d < dim) & (j < W - 1))


@triton.jit
def _bwd_inputs(x_ptr, h0_ptr, g_ptr, x_base, h0_base, g_base, d, t_lo, dim, L, s_xd, s_xl, s_hd, s_hl, s_gd, s_gl,
                W: tl.constexpr, HAS_H0: tl.constexpr, VEC: tl.constexpr, BLOCK_D: tl.constexpr,
                BLOCK_R: tl.constexpr, RUN: tl.constexpr):
    """x and dout one run back, here and one run ahead of a tile starting at t_lo: (xp, xc, xn, gp, gc, gn).

    pre at the W positions that reach each output needs x one run back and one ahead, dout one run ahead
    (causal) or back (anti-causal)."""
    xp, xc, xn = _neighbour_runs(x_ptr, h0_ptr, x_base, h0_base, d, t_lo, dim, L, s_xd, s_xl, s_hd, s_hl, W, HAS_H0,
                                 VEC, RUN, BLOCK_D, BLOCK_R)
    gp, gc, gn = _neighbour_runs(g_ptr, g_ptr, g_base, 0, d, t_lo, dim, L, s_gd, s_gl, 0, 0, W, False, VEC, RUN,
                                 BLOCK_D, BLOCK_R)
    return xp, xc, xn, gp, gc, gn


@triton.jit
def _dx_at(i: tl.constexpr, xp, xc, xn, gp, gc, gn, wt, bias, W: tl.constexpr, DIR: tl.constexpr,
           SILU: tl.constexpr, RUN: tl.constexpr):
    """dx at offset i of a run: sum_s w[W-1-s] * dpre[i + DIR*s]."""
    acc = wt[W - 1] * _dpre(i, xp, xc, xn, gp, gc, gn, wt, bias, W, DIR, SILU, RUN)
    for s in tl.static_range(1, W):
        acc += wt[W - 1 - s] * _dpre(i + DIR * s, xp, xc, xn, gp, gc, gn, wt, bias, W, DIR, SILU, RUN)
    return acc


@triton.jit
def _dw_at(k: tl.constexpr, xp, xc, xn, gp, gc, gn, wt, bias, W: tl.constexpr, DIR: tl.constexpr,
           SILU: tl.constexpr, RUN: tl.constexpr):
    """Per-run sum over its RUN positions of dpre * tap k (the dweight[k] contribution), or of dpre alone
    (dbias) for k = W."""
    acc = tl.zeros_like(xc[0])
    for i in tl.static_range(RUN):
        if k == W:
            acc += _dpre(i, xp, xc, xn, gp, gc, gn, wt, bias, W, DIR, SILU, RUN)
        else:
            acc += (_dpre(i, xp, xc, xn, gp, gc, gn, wt, bias, W, DIR, SILU, RUN)
                    * _at(i + DIR * (k - (W - 1)), xp, xc, xn, RUN))
    return acc


@triton.jit
def _add_to(ptr, v, mask, ATOMIC: tl.constexpr):
    """ptr += v across programs (relaxed atomic add), or ptr = v (a program's own partial)."""
    if ATOMIC:
        tl.atomic_add(ptr, v, mask=mask, sem="relaxed")
    else:
        tl.store(ptr, v, mask=mask)


@triton.jit
def _conv_bwd_kernel(x_ptr, w_ptr, b_ptr, h0_ptr, g_ptr, dhn_ptr, dx_ptr, dh0_ptr, dw_ptr, db_ptr,
                     dim, L, n_dt, n_lg, tiles,
                     s_xb, s_xd, s_xl, s_wd, s_wk, s_b, s_hb, s_hd, s_hl, s_gb, s_gd, s_gl, s_nb, s_nd, s_nl,
                     s_dxb, s_dxd, s_dxl, s_db0, s_dd0, s_dl0,
                     W: tl.constexpr, DIR: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
                     HAS_DHN: tl.constexpr, NEED_DH0: tl.constexpr, SILU: tl.constexpr, VEC: tl.constexpr,
                     RUN: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr, ATOMIC: tl.constexpr):
    """One program per (batch, BLOCK_D channels, group of `tiles` consecutive L tiles): dx of every tile, and the
    group's sum of dweight / dbias (a group, not a tile: fewer atomics, or smaller partials), added atomically into
    dw (dim, W) / db (dim,) (ATOMIC) or written as the group's partial row."""
    pid = tl.program_id(0)
    pid_g = pid % n_lg
    pid_d = (pid // n_lg) % n_dt
    pid_b = (pid // n_lg) // n_dt
    d1 = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d = d1[:, None]
    x_base = pid_b.to(tl.int64) * s_xb
    h0_base = pid_b.to(tl.int64) * s_hb
    g_base = pid_b.to(tl.int64) * s_gb
    n_base = pid_b.to(tl.int64) * s_nb
    wt = _weights(w_ptr, d1, dim, s_wd, s_wk, W)
    bias = tl.zeros([BLOCK_D, 1], tl.float32)
    if HAS_BIAS:
        bias = _column(b_ptr, d1, dim, s_b)
    acc0 = tl.zeros([BLOCK_D, BLOCK_R], tl.float32)
    acc1 = acc0
    acc2 = acc0
    acc3 = acc0
    accb = acc0
    for it in range(tiles):
        t_lo = (pid_g * tiles + it) * (RUN * BLOCK_R)  # tiles past L are all masked
        xp, xc, xn, gp, gc, gn = _bwd_inputs(x_ptr, h0_ptr, g_ptr, x_base, h0_base, g_base, d, t_lo, dim, L,
                                             s_xd, s_xl, s_hd, s_hl, s_gd, s_gl, W, HAS_H0, VEC, BLOCK_D, BLOCK_R, RUN)
        dx = ()
        for i in tl.static_range(RUN):
            dx = dx + (_dx_at(i, xp, xc, xn, gp, gc, gn, wt, bias, W, DIR, SILU, RUN),)
        _store_runs(dx_ptr, pid_b.to(tl.int64) * s_dxb, d, t_lo, dx, dim, L, s_dxd, s_dxl,
                    dhn_ptr, n_base, L - (W - 1), s_nd, s_nl, HAS_DHN, W, VEC, RUN, BLOCK_D, BLOCK_R)
        acc0 += _dw_at(0, xp, xc, xn, gp, gc, gn, wt, bias, W, DIR, SILU, RUN)
        acc1 += _dw_at(1, xp, xc, xn, gp, gc, gn, wt, bias, W, DIR, SILU, RUN)
        if W >= 3:
            acc2 += _dw_at(2, xp, xc, xn, gp, gc, gn, wt, bias, W, DIR, SILU, RUN)
        if W >= 4:
            acc3 += _dw_at(3, xp, xc, xn, gp, gc, gn, wt, bias, W, DIR, SILU, RUN)
        if HAS_BIAS:
            accb += _dw_at(W, xp, xc, xn, gp, gc, gn, wt, bias, W, DIR, SILU, RUN)
    # this program's sums of dweight and dbias: added into row 0, the (dim, W) / (dim,) totals (ATOMIC), or
    # written as its own row of the (batch * n_lg, dim, W) / (batch * n_lg, dim) partials
    if ATOMIC:
        row = pid_b.to(tl.int64) * 0
    else:
        row = (pid_b * n_lg + pid_g).to(tl.int64)
    dm1 = d1 < dim
    part = dw_ptr + row * dim * W + d1 * W
    _add_to(part, tl.sum(acc0, axis=1), dm1, ATOMIC)
    _add_to(part + 1, tl.sum(acc1, axis=1), dm1, ATOMIC)
    if W >= 3:
        _add_to(part + 2, tl.sum(acc2, axis=1), dm1, ATOMIC)
    if W >= 4:
        _add_to(part + 3, tl.sum(acc3, axis=1), dm1, ATOMIC)
    if HAS_BIAS:
        _add_to(db_ptr + row * dim + d1, tl.sum(accb, axis=1), dm1, ATOMIC)
    if NEED_DH0:  # causal only: d initial_states[j] = d xs at -(W-1) + j, from the first run of tile 0
        if pid_g == 0:
            xp, xc, xn, gp, gc, gn = _bwd_inputs(x_ptr, h0_ptr, g_ptr, x_base, h0_base, g_base, d, 0, dim, L,
                                                 s_xd, s_xl, s_hd, s_hl, s_gd, s_gl, W, HAS_H0, VEC, BLOCK_D,
                                                 BLOCK_R, RUN)
            dh = ()  # the W-1 initial states, then zeros to fill the run (stored only below W-1)
            for j in tl.static_range(RUN):
                if j < W - 1:
                    dh = dh + (_dh0_at(j, xp, xc, xn, gp, gc, gn, wt, bias, W, SILU, RUN),)
                else:
                    dh = dh + (tl.zeros_like(acc0),)
            _store_runs(dh0_ptr, pid_b.to(tl.int64) * s_db0, d, 0, dh, dim, W - 1,
                        s_dd0, s_dl0, dhn_ptr, n_base, L, s_nd, s_nl, HAS_DHN, W, VEC, RUN, BLOCK_D, BLOCK_R)


@triton.jit
def _dh0_at(j: tl.constexpr, xp, xc, xn, gp, gc, gn, wt, bias, W: tl.constexpr, SILU: tl.constexpr,
            RUN: tl.constexpr):
    """d xs at position j - (W-1) < 0 of a run starting at t = 0 (causal): sum over the outputs it reaches,
    t = j - (W-1) + s >= 0, of w[W-1-s] * dpre[t]."""
    acc = tl.zeros_like(xc[0])
    for s in tl.static_range(W):
        if j - (W - 1) + s >= 0:
            acc += wt[W - 1 - s] * _dpre(j - (W - 1) + s, xp, xc, xn, gp, gc, gn, wt, bias, W, 1, SILU, RUN)
    return acc


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


_ENV_KEYS = ("BLOCK_D", "BLOCK_L", "WARPS", "RUN", "BWD_BLOCK_D", "BWD_BLOCK_L", "BWD_WARPS", "BWD_TILES")
_read_env = env_reader(*(f"MAMBASUITE_CONV_{k}" for k in _ENV_KEYS))


def _env_block(name: str, text: str | None, default: int, minimum: int) -> int:
    """The tile override `text` of variable `name` (a power of two >= minimum), or `default` when unset."""
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r}: expected an integer") from None
    if value < minimum or value & (value - 1):
        raise ValueError(f"{name}={value}: expected a power of two >= {minimum}")
    return value


def _plan(x: torch.Tensor, backward: bool) -> tuple[int, int, int, int, int, int]:
    """(BLOCK_D, BLOCK_L, n_d_tiles, n_l_tiles, num_warps, RUN) for x's layout and pass.

    Channel-first tiles are long along L (runs of 8 steps per thread, 16-byte loads in bf16); channel-last tiles
    are wide along dim (rows of 64-128 channels). Defaults from H200 sweeps at (8, 1536, 2048) and
    (2, 1024, 131072), bf16 (BENCHMARKS.md, session 8): 2048-element tiles; 4 warps, 8 in the channel-first
    backward; runs of 8 steps, except the channel-last forward (4: with 8 it was slower).
    MAMBASUITE_CONV_BLOCK_D / _BLOCK_L / _WARPS / _RUN override them (tests; sweeps on a GPU),
    MAMBASUITE_CONV_BWD_BLOCK_D / _BLOCK_L / _WARPS the backward's alone. BLOCK_L is a multiple of RUN; a run
    longer than a short sequence's tile is cut to the tile unless it was asked for explicitly (then refused)."""
    _, dim, length = x.shape
    return _plan_for(is_channel_last(x), dim, length, backward, _read_env())


@functools.lru_cache(maxsize=1024)
def _plan_for(channel_last: bool, dim: int, length: int, backward: bool, env: tuple[str | None, ...]):
    """`_plan` for a layout, shape and pass, memoised (host time per call): env holds the override variables'
    values, so a changed override is a new key."""
    overrides = dict(zip(_ENV_KEYS, env))
    if channel_last:
        block_d = min(128 if backward else 64, next_pow2(dim))
        block_l = min(max(4, next_pow2(length)), 2048 // block_d)
        warps, run = 4, (8 if backward else 4)
    else:
        block_l = min(256 if backward else 512, max(4, next_pow2(length)))
        block_d = min(next_pow2(dim), max(1, 2048 // block_l))
        warps, run = (8 if backward else 4), 8
    # both passes read the plain names; the backward's MAMBASUITE_CONV_BWD_* take precedence over them
    for prefix in ("", "BWD_") if backward else ("",):
        block_d = _env_block(f"MAMBASUITE_CONV_{prefix}BLOCK_D", overrides[prefix + "BLOCK_D"], block_d, 1)
        block_l = _env_block(f"MAMBASUITE_CONV_{prefix}BLOCK_L", overrides[prefix + "BLOCK_L"], block_l, 4)
        warps = _env_block(f"MAMBASUITE_CONV_{prefix}WARPS", overrides[prefix + "WARPS"], warps, 1)
    if overrides["RUN"]:
        run = _env_block("MAMBASUITE_CONV_RUN", overrides["RUN"], run, 4)
        if run > 8 or run > block_l:
            raise ValueError(f"MAMBASUITE_CONV_RUN={run}: expected 4 or 8, at most the tile's {block_l} steps")
    run = min(run, block_l)
    return block_d, block_l, cdiv(dim, block_d), cdiv(length, block_l), warps, run


def _tiles_per_program(n_lt: int) -> int:
    """L tiles per backward program (MAMBASUITE_CONV_BWD_TILES overrides): up to 16 while >= 64 programs remain
    along L, so the dweight/dbias partials (one per program) stay a few MB instead of one per tile: with 16-step
    channel-last tiles at (2, 1024, 131072) they were 335 MB."""
    tiles = 1
    while tiles < 16 and n_lt // (2 * tiles) >= 64:
        tiles *= 2
    return _env_block("MAMBASUITE_CONV_BWD_TILES", _read_env()[-1], tiles, 1)


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
    block_d, block_l, n_dt, n_lt, warps, run = _plan(x, backward=False)
    with _on_device(x):
        launch(
            _conv_fwd_kernel, (batch * n_dt * n_lt,),
            x, weight, bias if bias is not None else weight, initial_states if initial_states is not None else x,
            out, final if return_final_states else out, dim, length, n_dt, n_lt,
            *x.stride(), *weight.stride(), bias.stride(0) if bias is not None else 0, *_strides(initial_states, 3),
            *out.stride(), *_strides(final if return_final_states else None, 3),
            W=width, DIR=-1 if reverse else 1, HAS_BIAS=bias is not None, HAS_H0=initial_states is not None,
            HAS_HN=return_final_states, SILU=silu, VEC=not is_channel_last(x), RUN=run, BLOCK_D=block_d,
            BLOCK_R=block_l // run, num_warps=warps)
    return out, final


_fwd_op = torch.library.custom_op("mambasuite::causal_conv1d_fwd", _conv_fwd, mutates_args=())


@_fwd_op.register_fake
def _(x, weight, bias, initial_states, silu, reverse, return_final_states):
    batch, dim, _ = x.shape
    final = _empty_in_layout(x, (batch, dim, weight.shape[1] - 1)) if return_final_states else x.new_empty(0)
    return _empty_in_layout(x), final


def _conv_bwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, initial_states: torch.Tensor | None,
              dout: torch.Tensor, dfinal: torch.Tensor | None, silu: bool, reverse: bool, deterministic: bool
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> dx (x's layout and dtype), dweight (weight's dtype), dbias, d initial_states (each an empty
    tensor of its own when the input was None). Outside `deterministic` mode dweight and dbias are atomic sums and
    may be views of one buffer (`distinct_outputs` separates them for the registered op)."""
    batch, dim, length = x.shape
    width = weight.shape[1]
    block_d, block_l, n_dt, n_lt, warps, run = _plan(x, backward=True)
    tiles = _tiles_per_program(n_lt)
    n_lg = cdiv(n_lt, tiles)
    dx = _empty_in_layout(x)
    dh0 = _empty_in_layout(initial_states) if initial_states is not None else x.new_empty(0)
    if deterministic:  # one partial row per program (batch, group of L tiles)
        dw_part = torch.empty(batch * n_lg, dim, width, dtype=torch.float32, device=x.device)
        db_part = torch.empty(batch * n_lg, dim, dtype=torch.float32, device=x.device) if bias is not None else dw_part
    else:  # the one row every program adds into: both totals from one fill launch
        sums = torch.zeros(dim * (width + 1), dtype=torch.float32, device=x.device)
        dw_part, db_part = sums[:dim * width].view(1, dim, width), sums[dim * width:].view(1, dim)
    with _on_device(x):
        launch(
            _conv_bwd_kernel, (batch * n_dt * n_lg,),
            x, weight, bias if bias is not None else weight, initial_states if initial_states is not None else x,
            dout, dfinal if dfinal is not None else dout, dx, dh0 if initial_states is not None else dx,
            dw_part, db_part, dim, length, n_dt, n_lg, tiles,
            *x.stride(), *weight.stride(), bias.stride(0) if bias is not None else 0, *_strides(initial_states, 3),
            *dout.stride(), *_strides(dfinal, 3), *dx.stride(),
            *_strides(dh0 if initial_states is not None else None, 3),
            W=width, DIR=-1 if reverse else 1, HAS_BIAS=bias is not None, HAS_H0=initial_states is not None,
            HAS_DHN=dfinal is not None, NEED_DH0=initial_states is not None, SILU=silu,
            VEC=not is_channel_last(x), RUN=run, BLOCK_D=block_d, BLOCK_R=block_l // run, ATOMIC=not deterministic,
            num_warps=warps)
    if deterministic:  # a fixed-order reduction of the partials
        dw_part, db_part = dw_part.sum(0, keepdim=True), db_part.sum(0, keepdim=True) if bias is not None else None
    dweight = dw_part[0].to(weight.dtype)
    dbias = db_part[0].to(bias.dtype) if bias is not None else x.new_empty(0)
    return dx, dweight, dbias, dh0


_bwd_op = torch.library.custom_op("mambasuite::causal_conv1d_bwd", distinct_outputs(_conv_bwd), mutates_args=())
_bwd = EagerOp(_bwd_op, _conv_bwd)


@_bwd_op.register_fake
def _(x, weight, bias, initial_states, dout, dfinal, silu, reverse, deterministic):
    dbias = torch.empty_like(bias, memory_format=torch.contiguous_format) if bias is not None else x.new_empty(0)
    dh0 = _empty_in_layout(initial_states) if initial_states is not None else x.new_empty(0)
    return _empty_in_layout(x), weight.new_empty(weight.shape), dbias, dh0


def _setup_context(ctx, inputs, output):
    x, weight, bias, initial_states, silu, reverse, return_final_states = inputs
    ctx.save_for_backward(x, weight, bias, initial_states)
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None (no zeros allocated and read)
    ctx.silu, ctx.reverse, ctx.return_final_states = silu, reverse, return_final_states
    ctx.deterministic = deterministic_mode()  # read when the graph is built, as the scan ops do


def _backward(ctx, dout, dfinal):
    x, weight, bias, initial_states = ctx.saved_tensors
    channel_last = is_channel_last(x)
    dout = _in_layout(dout, channel_last) if dout is not None else torch.zeros_like(x)
    dfinal = dfinal if ctx.return_final_states else None
    dx, dweight, dbias, dh0 = _bwd(x, weight, bias, initial_states, dout, dfinal, ctx.silu, ctx.reverse,
                                   ctx.deterministic)
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
