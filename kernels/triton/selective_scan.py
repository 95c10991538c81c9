"""Triton selective scan: launch logic, torch.library custom ops and autograd.

`selective_scan_triton` has the signature of `selective_scan_ref`. The forward and backward are
registered as `torch.library.custom_op`s (with fake implementations), so `torch.compile` traces
through them, and autograd is attached with `register_autograd`.

Determinism: time-variable dB/dC are accumulated with fp32 atomics by default (one atomic per
(batch, group, n, t) and channel tile, after a register reduction over the tile). With
`torch.use_deterministic_algorithms(True)` (Lightning's `deterministic=True`) or
`MAMBASUITE_DETERMINISTIC=1`, each channel tile writes its own partial and the partials are summed
in a fixed order, so gradients are bitwise reproducible.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .._checks import check_selective_scan_args
from .scan_kernels import selective_scan_bwd_kernel, selective_scan_fwd_kernel

# Tile shapes (time steps, channels, warps), forward and backward separately, from the H200 sweeps of 2026-11-29
# (BENCHMARKS.md). One-warp programs make the forward fastest (no cross-warp barriers in the scans and
# reductions); the backward keeps more live tiles and wants fewer elements per thread. A backward tile is a
# whole number of forward tiles, because it starts from the forward's tile-entry checkpoints.
TILE_PLANS = (
    # (max L, max rows or None, forward (T, D, W), backward (T, D, W))
    (256, None, (256, 4, 1), (256, 8, 4)),          # short sequences (Vim at 224 px: L = 197)
    (16384, 8192, (1024, 1, 1), (1024, 2, 4)),      # mid lengths with few rows
    (None, None, (1024, 1, 1), (1024, 2, 4)),       # long sequences (segments give the parallelism)
)


def deterministic_mode() -> bool:
    """True when backward must be bitwise reproducible (torch flag or MAMBASUITE_DETERMINISTIC=1)."""
    return torch.are_deterministic_algorithms_enabled() or os.environ.get("MAMBASUITE_DETERMINISTIC") == "1"


@dataclass(frozen=True)
class KernelTile:
    """One kernel's program shape: block_d channels x block_t steps, num_warps warps, n_dtiles channel tiles."""

    block_t: int
    block_d: int
    num_warps: int
    n_dtiles: int


@dataclass(frozen=True)
class LaunchPlan:
    """How one call is cut into programs.

    fwd / bwd: the two kernels' tiles (bwd.block_t = ckpt_ratio x fwd.block_t). n_tiles: forward tiles
    per row (= checkpoints per row). Segments of seg_len steps (a multiple of bwd.block_t) run in parallel.
    """

    fwd: KernelTile
    bwd: KernelTile
    ckpt_ratio: int
    n_tiles: int
    seg_len: int
    n_seg: int
    n_pad: int


def _default_tiles(rows: int, length: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    for max_len, max_rows, fwd, bwd in TILE_PLANS:
        if (max_len is None or length <= max_len) and (max_rows is None or rows <= max_rows):
            return fwd, bwd
    raise AssertionError("TILE_PLANS must end with a catch-all row")


def _largest_pow2_divisor(n: int, cap: int) -> int:
    p = 1
    while p * 2 <= cap and n % (p * 2) == 0:
        p *= 2
    return p


def _target_programs(device: torch.device) -> int:
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # interpreter: segments only when a test forces them


# Tests force small segments through this hook; None = choose from the device's size.
FORCE_SEG_LEN: int | None = None


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _env_tile(prefix: str, default: tuple[int, int, int]) -> tuple[int, int, int]:
    env = os.environ.get
    keys = ("BLOCK_T", "BLOCK_D", "WARPS")
    return tuple(int(env(f"{prefix}{k}", 0)) or d for k, d in zip(keys, default))


def plan_launch(batch: int, dim: int, length: int, d_state: int, groups: int, device: torch.device) -> LaunchPlan:
    """Pick both kernels' tiles, the segment length and warps for a call (deterministic in the shapes).

    Tiles come from TILE_PLANS (H200 sweeps). Overrides: MAMBASUITE_SCAN_BLOCK_T / _BLOCK_D / _WARPS set the
    forward tile (and the backward's, unless MAMBASUITE_SCAN_BWD_BLOCK_T / _BWD_BLOCK_D / _BWD_WARPS are set);
    `mamba-suite bench scan --configs` sweeps them.
    """
    fwd_default, bwd_default = _default_tiles(batch * dim, length)
    env_fwd = any(os.environ.get(f"MAMBASUITE_SCAN_{k}") for k in ("BLOCK_T", "BLOCK_D", "WARPS"))
    fwd_t, fwd_d, fwd_w = _env_tile("MAMBASUITE_SCAN_", fwd_default)
    bwd_t, bwd_d, bwd_w = _env_tile("MAMBASUITE_SCAN_BWD_", (fwd_t, fwd_d, fwd_w) if env_fwd else bwd_default)
    cap = max(16, _next_pow2(length))
    if FORCE_SEG_LEN is not None:  # tests: segments shorter than a tile need shorter tiles
        cap = min(cap, _next_pow2(FORCE_SEG_LEN))
    fwd_t, bwd_t = min(fwd_t, cap), min(bwd_t, cap)
    if bwd_t % fwd_t:
        raise ValueError(f"selective scan tiles: the backward's {bwd_t} steps must be a multiple of the "
                         f"forward's {fwd_t}")
    if groups > 1:  # a tile must not straddle two groups of B/C
        fwd_d = _largest_pow2_divisor(dim // groups, fwd_d)
        bwd_d = _largest_pow2_divisor(dim // groups, bwd_d)
    n_tiles = -(-length // fwd_t)
    bwd_tiles = -(-length // bwd_t)
    if FORCE_SEG_LEN is not None:
        seg_tiles = max(1, FORCE_SEG_LEN // bwd_t)
    else:
        # Enough programs to fill the GPU; each segment costs a state pass, so keep them >= 4096 steps.
        rows = batch * -(-dim // bwd_d)
        wanted = max(1, -(-_target_programs(device) // rows))
        seg_tiles = max(-(-4096 // bwd_t), -(-bwd_tiles // wanted))
    seg_tiles = min(seg_tiles, bwd_tiles)
    n_seg = -(-bwd_tiles // seg_tiles)
    return LaunchPlan(
        fwd=KernelTile(fwd_t, fwd_d, fwd_w, -(-dim // fwd_d)), bwd=KernelTile(bwd_t, bwd_d, bwd_w, -(-dim // bwd_d)),
        ckpt_ratio=bwd_t // fwd_t, n_tiles=n_tiles, seg_len=seg_tiles * bwd_t, n_seg=n_seg,
        n_pad=max(2, _next_pow2(d_state)))


def _bc_view(t: torch.Tensor) -> tuple[torch.Tensor, bool, int, tuple[int, int, int, int]]:
    """(tensor, is_variable, groups, strides s0..s3) in the layout the kernels index."""
    if t.dim() == 2:  # (dim, N): channel stride in s1, state stride in s2
        return t, False, 1, (0, t.stride(0), t.stride(1), 0)
    if t.dim() == 3:
        t = t.unsqueeze(1)
    return t, True, t.shape[1], tuple(t.stride())


def _strides3(t: torch.Tensor | None) -> tuple[int, int, int]:
    return tuple(t.stride()) if t is not None else (0, 0, 0)


# ----------------------------------------------------------------------------------------- forward
@torch.library.custom_op("mambasuite::selective_scan_fwd", mutates_args=())
def _fwd_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
            D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
            initial_state: torch.Tensor | None, delta_softplus: bool, reverse: bool
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns out (batch, dim, L), last_state (batch, dim, N) fp32, checkpoints (batch, dim, n_tiles, N)
    fp32 and the segments' decay products (batch, n_seg, dim, N) fp32 (empty with one segment)."""
    batch, dim, length = u.shape
    d_state = A.shape[1]
    Bv, b_var, b_groups, sb = _bc_view(B)
    Cv, c_var, c_groups, sc = _bc_view(C)
    plan = plan_launch(batch, dim, length, d_state, max(b_groups, c_groups), u.device)
    f32 = dict(dtype=torch.float32, device=u.device)
    out = torch.empty(batch, dim, length, dtype=u.dtype, device=u.device)
    ckpt = torch.empty(batch, dim, plan.n_tiles, d_state, **f32)
    last_state = torch.empty(batch, dim, d_state, **f32)
    seg_shape = (batch, plan.n_seg, dim, d_state) if plan.n_seg > 1 else (0,)
    seg_h = torch.empty(seg_shape, **f32)
    seg_p = torch.empty(seg_shape, **f32)
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    dummy = out  # placeholder pointer for absent optional tensors (never read: the flag is off)
    tile = plan.fwd
    grid = (batch * tile.n_dtiles, plan.n_seg)
    common = (
        dim, length, d_state, dim // b_groups, dim // c_groups, plan.seg_len, plan.n_seg, tile.n_dtiles,
        plan.n_tiles, *u.stride(), *delta.stride(), *_strides3(z), *out.stride(), *A.stride(), *sb, *sc,
    )
    flags = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                 SOFTPLUS=delta_softplus, B_VAR=b_var, C_VAR=c_var, REVERSE=reverse,
                 BLOCK_D=tile.block_d, BLOCK_T=tile.block_t, N_PAD=plan.n_pad, num_warps=tile.num_warps)
    ptrs = [u, delta, A, Bv, Cv, D if D is not None else dummy, z if z is not None else dummy,
            delta_bias if delta_bias is not None else dummy]
    if plan.n_seg > 1:  # pass 1: each segment's end state from a zero start, and its decay product
        selective_scan_fwd_kernel[grid](*ptrs, dummy, out, ckpt, last_state, seg_h, seg_p, *common,
                                        HAS_H0=False, STATE_ONLY=True, SEG_MODE=0, **flags)
    selective_scan_fwd_kernel[grid](*ptrs, h0 if h0 is not None else dummy, out, ckpt, last_state, seg_h, seg_p,
                                    *common, HAS_H0=h0 is not None, STATE_ONLY=False,
                                    SEG_MODE=1 if plan.n_seg > 1 else 0, **flags)
    return out, last_state, ckpt, seg_p


@_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, reverse):
    batch, dim, length = u.shape
    d_state = A.shape[1]
    groups = max(B.shape[1] if B.dim() == 4 else 1, C.shape[1] if C.dim() == 4 else 1)
    plan = plan_launch(batch, dim, length, d_state, groups, u.device)
    seg_shape = (batch, plan.n_seg, dim, d_state) if plan.n_seg > 1 else (0,)
    return (u.new_empty(batch, dim, length), u.new_empty(batch, dim, d_state, dtype=torch.float32),
            u.new_empty(batch, dim, plan.n_tiles, d_state, dtype=torch.float32),
            u.new_empty(seg_shape, dtype=torch.float32))


# ---------------------------------------------------------------------------------------- backward
@torch.library.custom_op("mambasuite::selective_scan_bwd", mutates_args=())
def _bwd_op(dout: torch.Tensor, dlast: torch.Tensor | None, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
            B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None,
            delta_bias: torch.Tensor | None, ckpt: torch.Tensor, seg_p: torch.Tensor, delta_softplus: bool,
            reverse: bool, deterministic: bool) -> list[torch.Tensor]:
    """Gradients [du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state]; absent inputs get
    empty tensors."""
    batch, dim, length = u.shape
    d_state = A.shape[1]
    Bv, b_var, b_groups, sb = _bc_view(B)
    Cv, c_var, c_groups, sc = _bc_view(C)
    plan = plan_launch(batch, dim, length, d_state, max(b_groups, c_groups), u.device)
    dev = u.device
    f32 = dict(dtype=torch.float32, device=dev)
    dout = dout.contiguous() if dout.stride(-1) != 1 else dout
    du = torch.empty(batch, dim, length, dtype=u.dtype, device=dev)
    ddelta = torch.empty(batch, dim, length, dtype=delta.dtype, device=dev)
    dz = torch.empty(batch, dim, length, dtype=z.dtype, device=dev) if z is not None else du
    parts = batch * plan.n_seg
    dA_part = torch.empty(parts, dim, d_state, **f32)
    dD_part = torch.empty(parts, dim, **f32)
    dbias_part = torch.empty(parts, dim, **f32)
    dh0 = torch.empty(batch, dim, d_state, **f32)
    atomic = not deterministic

    def bc_grad_buffer(var: bool, groups: int):
        if not var:
            return torch.empty(parts, dim, d_state, **f32), 0
        rows = groups if atomic else plan.bwd.n_dtiles
        alloc = torch.zeros if atomic else torch.empty
        return alloc(batch, rows, d_state, length, **f32), rows

    dB_buf, db_rows = bc_grad_buffer(b_var, b_groups)
    dC_buf, dc_rows = bc_grad_buffer(c_var, c_groups)
    seg_e = torch.empty((batch, plan.n_seg, dim, d_state) if plan.n_seg > 1 else (0,), **f32)
    tile = plan.bwd
    grid = (batch * tile.n_dtiles, plan.n_seg)
    common = (
        dim, length, d_state, dim // b_groups, dim // c_groups, db_rows, dc_rows, plan.seg_len, plan.n_seg,
        tile.n_dtiles, plan.n_tiles, *u.stride(), *delta.stride(), *_strides3(z), *dout.stride(), *A.stride(),
        *sb, *sc,
    )
    flags = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                 SOFTPLUS=delta_softplus, B_VAR=b_var, C_VAR=c_var, REVERSE=reverse, CARRY_FROM_LATER=not reverse,
                 ATOMIC_BC=atomic, BLOCK_D=tile.block_d, BLOCK_T=tile.block_t, N_PAD=plan.n_pad,
                 CKPT_RATIO=plan.ckpt_ratio, num_warps=tile.num_warps)
    dummy = du
    ptrs = [u, delta, A, Bv, Cv, D if D is not None else dummy, z if z is not None else dummy,
            delta_bias if delta_bias is not None else dummy, dout]
    dlast_c = dlast.float().contiguous() if dlast is not None else None
    outs = [du, ddelta, dz, dA_part, dB_buf, dC_buf, dD_part, dbias_part, dh0]
    if plan.n_seg > 1:  # pass 1: each segment's dh carry from a zero carry
        selective_scan_bwd_kernel[grid](*ptrs, dummy, ckpt, seg_e, seg_p, *outs, *common,
                                        HAS_DLAST=False, CARRY_ONLY=True, SEG_MODE=0, **flags)
    selective_scan_bwd_kernel[grid](*ptrs, dlast_c if dlast_c is not None else dummy, ckpt, seg_e, seg_p, *outs,
                                    *common, HAS_DLAST=dlast_c is not None, CARRY_ONLY=False,
                                    SEG_MODE=1 if plan.n_seg > 1 else 0, **flags)

    def finish_bc(buf, var, groups, like):
        if not var:
            return buf.sum(0).to(like.dtype)
        if not atomic:  # fixed-order sum of the channel-tile partials of each group
            buf = buf.view(batch, groups, plan.bwd.n_dtiles // groups, d_state, length).sum(2)
        return buf.view(like.shape).to(like.dtype)

    # A custom op's outputs may not alias each other: every absent gradient gets its own empty tensor.
    return [
        du, ddelta, dA_part.sum(0).to(A.dtype),
        finish_bc(dB_buf, b_var, b_groups, B), finish_bc(dC_buf, c_var, c_groups, C),
        dD_part.sum(0).to(D.dtype) if D is not None else u.new_empty(0),
        dz if z is not None else u.new_empty(0),
        dbias_part.sum(0).to(delta_bias.dtype) if delta_bias is not None else u.new_empty(0),
        dh0,
    ]


@_bwd_op.register_fake
def _(dout, dlast, u, delta, A, B, C, D, z, delta_bias, ckpt, seg_p, delta_softplus, reverse, deterministic):
    return [torch.empty_like(u), torch.empty_like(delta), torch.empty_like(A), torch.empty_like(B),
            torch.empty_like(C), torch.empty_like(D) if D is not None else u.new_empty(0),
            torch.empty_like(z) if z is not None else u.new_empty(0),
            torch.empty_like(delta_bias) if delta_bias is not None else u.new_empty(0),
            u.new_empty(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float32)]


# ---------------------------------------------------------------------------------------- autograd
def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, reverse = inputs
    _, _, ckpt, seg_p = output
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt, seg_p)
    ctx.flags = (delta_softplus, reverse, deterministic_mode())
    ctx.has_h0 = initial_state is not None
    ctx.h0_dtype = initial_state.dtype if initial_state is not None else None


def _backward(ctx, dout, dlast, dckpt, dseg_p):
    u, delta, A, B, C, D, z, delta_bias, ckpt, seg_p = ctx.saved_tensors
    delta_softplus, reverse, deterministic = ctx.flags
    if dout is None:
        dout = torch.zeros_like(u)
    du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = _bwd_op(
        dout, dlast, u, delta, A, B, C, D, z, delta_bias, ckpt, seg_p, delta_softplus, reverse, deterministic)
    return (du, ddelta, dA, dB, dC, dD if D is not None else None, dz if z is not None else None,
            dbias if delta_bias is not None else None, dh0.to(ctx.h0_dtype) if ctx.has_h0 else None, None, None)


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False, *, reverse=False, initial_state=None):
    """Selective scan on the Triton kernels; same contract as `selective_scan_ref`.

    Inputs may be fp32/bf16/fp16 (state and accumulation in fp32) with any strides; float64 is
    refused (use backend="reference" for float64). last_state has a gradient, as does initial_state.
    """
    check_selective_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state, "triton")
    if u.dtype == torch.float64:
        raise TypeError("backend='triton' computes in fp32 and does not take float64 inputs; "
                        "use backend='reference' for float64")
    out, last_state, _, _ = _fwd_op(u, delta, A, B, C, D, z, delta_bias, initial_state,
                                    bool(delta_softplus), bool(reverse))
    return (out, last_state) if return_last_state else out


__all__ = ["KernelTile", "LaunchPlan", "deterministic_mode", "plan_launch", "selective_scan_triton"]
