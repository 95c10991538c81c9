"""Triton multi-direction scans on the shared scan core: the bidirectional scan and the 2D cross-scan.

Both run every direction in one launch of the same kernels as the single scan (`scan_launch`):

* `bidirectional_scan_triton`: direction 0 scans forward in time, direction 1 in reverse, each reading its own
  tensors in place (no flipped copies); both outputs are gated by the shared z and written into one stacked
  (2, batch, dim, L) buffer, which one elementwise op combines ("add", "mean", "mul"; "stack" returns it).
* `cross_scan_2d_triton`: the four VMamba routes over a (batch, dim, H, W) map. delta, B and C come in route order
  (routes 1 and 3 column-major), so every route reads them in place. u is the map for the row routes and one
  column-major copy of it for the column routes (a column walk of the row-major map strides W pixels at every
  element); each route writes an fp32 slot in its scan order, and one pass (`map_layout.merge_layouts`) sums the
  four into the output, in x's dtype. The backward mirrors it: a column-major copy of the output gradient, a du slot
  per route, one merge.

Both are `torch.library.custom_op`s with fake implementations, with autograd attached; eager calls skip the
dispatcher (`eager.EagerOp`).
"""

from __future__ import annotations

import torch

from .._multi_checks import PAIRED, as_pair, check_bidirectional_args, check_cross_scan_args
from ..reference.multi_scan import combine_directions
from .eager import EagerOp, distinct_outputs
from .map_layout import column_major, merge_layouts
from .scan_launch import (Directions, ForwardState, ScanInputs, launch_backward, launch_forward, plan_for,
                          state_shapes)
from .scan_plan import deterministic_mode


# ------------------------------------------------------------------------------------------ bidirectional
def _bi_scan_fwd(u_f: torch.Tensor, u_b: torch.Tensor, delta_f: torch.Tensor, delta_b: torch.Tensor,
                 A_f: torch.Tensor, A_b: torch.Tensor, B_f: torch.Tensor, B_b: torch.Tensor, C_f: torch.Tensor,
                 C_b: torch.Tensor, D_f: torch.Tensor | None, D_b: torch.Tensor | None, bias_f: torch.Tensor | None,
                 bias_b: torch.Tensor | None, z: torch.Tensor | None, delta_softplus: bool, combine: str
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns out ((batch, dim, L), or (2, batch, dim, L) for "stack"), the stacked outputs kept for "mul"'s
    backward (else empty), checkpoints (2, batch, dim, n_tiles, N) and segment products."""
    plan = plan_for(u_f, A_f, B_f, C_f, 2)
    y2 = torch.empty((2, *u_f.shape), dtype=u_f.dtype, device=u_f.device)
    dirs = [ScanInputs(u_f, delta_f, A_f, B_f, C_f, D_f, bias_f), ScanInputs(u_b, delta_b, A_b, B_b, C_b, D_b, bias_b)]
    state = launch_forward(dirs, z, None, y2[0], u_f.numel(), plan=plan, softplus=delta_softplus)
    if combine == "stack":
        return y2, u_f.new_empty(0), state.ckpt, state.seg_p
    kept = y2 if combine == "mul" else u_f.new_empty(0)
    return combine_directions(y2[0], y2[1], combine), kept, state.ckpt, state.seg_p


_bi_fwd_op = torch.library.custom_op("mambasuite::bidirectional_scan_fwd", _bi_scan_fwd, mutates_args=())


@_bi_fwd_op.register_fake
def _(u_f, u_b, delta_f, delta_b, A_f, A_b, B_f, B_b, C_f, C_b, D_f, D_b, bias_f, bias_b, z, delta_softplus, combine):
    plan = plan_for(u_f, A_f, B_f, C_f, 2)
    ckpt_shape, seg_shape = state_shapes(u_f, A_f, plan, 2)
    out_shape = (2, *u_f.shape) if combine == "stack" else u_f.shape
    kept = (2, *u_f.shape) if combine == "mul" else (0,)
    return (u_f.new_empty(out_shape), u_f.new_empty(kept), u_f.new_empty(ckpt_shape, dtype=torch.float32),
            u_f.new_empty(seg_shape, dtype=torch.float32))


def _bi_scan_bwd(dout: torch.Tensor, y2: torch.Tensor, u_f: torch.Tensor, u_b: torch.Tensor, delta_f: torch.Tensor,
                 delta_b: torch.Tensor, A_f: torch.Tensor, A_b: torch.Tensor, B_f: torch.Tensor, B_b: torch.Tensor,
                 C_f: torch.Tensor, C_b: torch.Tensor, D_f: torch.Tensor | None, D_b: torch.Tensor | None,
                 bias_f: torch.Tensor | None, bias_b: torch.Tensor | None, z: torch.Tensor | None,
                 ckpt: torch.Tensor, seg_p: torch.Tensor, delta_softplus: bool, combine: str, deterministic: bool
                 ) -> list[torch.Tensor]:
    """Stacked gradients [du (2, ...), ddelta (2, ...), dA (2, dim, N), dB (2, *B.shape), dC, dD (2, dim),
    dbias (2, dim), dz]; absent ones are empty."""
    plan = plan_for(u_f, A_f, B_f, C_f, 2)
    if combine == "stack":  # one gradient per direction
        grads, step = dout.contiguous(), u_f.numel()
    elif combine == "mul":  # d(y_f * y_b): dout * y_b for the forward direction, dout * y_f for the reverse
        grads, step = torch.stack([dout * y2[1], dout * y2[0]]), u_f.numel()
    else:  # add / mean: both directions receive the same gradient
        grads = (dout * 0.5 if combine == "mean" else dout).contiguous()
        step = 0
    dirs = [ScanInputs(u_f, delta_f, A_f, B_f, C_f, D_f, bias_f), ScanInputs(u_b, delta_b, A_b, B_b, C_b, D_b, bias_b)]
    g = launch_backward(dirs, z, grads[0] if step else grads, step, None,
                        ForwardState(last=None, ckpt=ckpt, seg_p=seg_p), plan=plan, softplus=delta_softplus,
                        deterministic=deterministic)
    empty = u_f.new_empty(0)
    return [g.du, g.ddelta, g.dA, g.dB, g.dC, g.dD if g.dD is not None else empty.clone(),
            g.dbias if g.dbias is not None else empty.clone(),
            g.dz.to(z.dtype) if z is not None else empty.clone()]


_bi_bwd_op = torch.library.custom_op("mambasuite::bidirectional_scan_bwd", distinct_outputs(_bi_scan_bwd),
                                     mutates_args=())
_bi_bwd = EagerOp(_bi_bwd_op, _bi_scan_bwd)


@_bi_bwd_op.register_fake
def _(dout, y2, u_f, u_b, delta_f, delta_b, A_f, A_b, B_f, B_b, C_f, C_b, D_f, D_b, bias_f, bias_b, z, ckpt, seg_p,
      delta_softplus, combine, deterministic):
    stacked = lambda t: t.new_empty((2, *t.shape)) if t is not None else u_f.new_empty(0)  # noqa: E731
    return [stacked(u_f), stacked(delta_f), stacked(A_f), stacked(B_f), stacked(C_f), stacked(D_f),
            stacked(bias_f), torch.empty_like(z) if z is not None else u_f.new_empty(0)]


def _bi_setup(ctx, inputs, output):
    *tensors, delta_softplus, combine = inputs
    _, y2, ckpt, seg_p = output
    ctx.save_for_backward(y2, *tensors, ckpt, seg_p)
    ctx.mark_non_differentiable(y2, ckpt, seg_p)  # internal outputs: no zero gradients materialised for them
    ctx.set_materialize_grads(False)
    ctx.flags = (delta_softplus, combine, deterministic_mode())


def _bi_backward(ctx, dout, dy2, dckpt, dseg_p):
    y2, *tensors, ckpt, seg_p = ctx.saved_tensors
    delta_softplus, combine, deterministic = ctx.flags
    if dout is None:  # the output was not used
        dout = tensors[0].new_zeros((2, *tensors[0].shape) if combine == "stack" else tensors[0].shape)
    du, ddelta, dA, dB, dC, dD, dbias, dz = _bi_bwd(dout, y2, *tensors, ckpt, seg_p, delta_softplus, combine,
                                                    deterministic)
    has_d, has_bias, has_z = tensors[10] is not None, tensors[12] is not None, tensors[14] is not None
    pair = lambda t, keep: (t[0], t[1]) if keep else (None, None)  # noqa: E731
    return (*pair(du, True), *pair(ddelta, True), *pair(dA, True), *pair(dB, True), *pair(dC, True),
            *pair(dD, has_d), *pair(dbias, has_bias), dz if has_z else None, None, None)


_bi_fwd_op.register_autograd(_bi_backward, setup_context=_bi_setup)
_bi_fwd = EagerOp(_bi_fwd_op, _bi_scan_fwd, _bi_setup, _bi_backward)


def bidirectional_scan_triton(u, delta, A, B, C, D=None, delta_bias=None, z=None, *, combine="add",
                              delta_softplus=False):
    """Both directions in one launch; same contract as `bidirectional_scan_ref` (pairs (forward, reverse))."""
    pairs = {name: as_pair(name, value) for name, value in zip(PAIRED, (u, delta, A, B, C, D, delta_bias))}
    check_bidirectional_args(pairs, z, combine, "triton")
    return bidirectional_scan_checked(pairs, z, combine, delta_softplus)


def bidirectional_scan_checked(pairs: dict, z, combine: str, delta_softplus: bool) -> torch.Tensor:
    """`bidirectional_scan_triton` on pairs that `check_bidirectional_args` has passed (the dispatcher checks
    once at the public boundary; checking again would only add host time to every eager call)."""
    if pairs["u"][0].dtype == torch.float64:
        raise TypeError("backend='triton' computes in fp32 and does not take float64 inputs; "
                        "use backend='reference' for float64")
    flat = [pairs[name][k] for name in PAIRED for k in range(2)]
    out, _, _, _ = _bi_fwd(*flat, z, bool(delta_softplus), combine)
    return out


# --------------------------------------------------------------------------------------------- 2D routes
def _routes(u: torch.Tensor, u_cols: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
            C: torch.Tensor, D: torch.Tensor | None, delta_bias: torch.Tensor | None) -> Directions:
    """The four routes' inputs: the row routes read the map, the column routes its column-major copy (col_u); the
    per-route tensors are slices of (batch, 4, ...) / (4, ...) tensors in route order, so route k's start k strides
    along that axis after route 0's (what `Directions.of` would find from the 28 slices, without taking them)."""
    first = ScanInputs(u, delta[:, 0], A[0], B[:, 0], C[:, 0], None if D is None else D[0],
                       None if delta_bias is None else delta_bias[0])
    steps = dict(dir_u=0, col_u=_elements_between(u, u_cols), dir_dt=delta.stride(1), dir_A=A.stride(0),
                 dir_B=B.stride(1), dir_C=C.stride(1), dir_D=0 if D is None else D.stride(0),
                 dir_bias=0 if delta_bias is None else delta_bias.stride(0))
    return Directions(first, 4, steps)


def _elements_between(a: torch.Tensor, b: torch.Tensor) -> int:
    """Elements from a's data to b's (same dtype): how the kernels find a second tensor from the first's pointer."""
    return (b.data_ptr() - a.data_ptr()) // a.element_size()


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """(batch, dim, H, W) -> (batch, dim, H*W) contiguous, by pixel (a view when x is contiguous)."""
    return x.reshape(x.shape[0], x.shape[1], -1).contiguous()


def _x2d_scan_fwd(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                  D: torch.Tensor | None, delta_bias: torch.Tensor | None, delta_softplus: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (batch, dim, H, W); delta (batch, 4, dim, H*W), B, C (batch, 4, N, H*W) in route order; A (4, dim, N);
    D, delta_bias (4, dim). Returns the merged output (batch, dim, H, W) in x's dtype (summed in fp32), the
    column-major copy of the map (batch, dim, W*H) (kept for the backward), checkpoints and segment products. (The op
    takes and returns the map itself: reshaping around it would add two autograd nodes, host time in every step.)

    Every route writes its own fp32 slot, in its scan order, and one pass merges the four. (Adding the row routes
    into one zero-filled map and the column routes into another, atomically, was slower: H200 same call, forward
    1.405 against 1.345 ms at (64, 192, 56, 56) N=1, 0.710 against 0.663 at (64, 384, 28, 28).) So the output does not
    depend on deterministic mode (read for the backward in `_x2d_setup`), nor does anything in the op but dA, dB and dC
    (atomics unless deterministic)."""
    u = _pixels(x)
    batch, dim, length = u.shape
    height = x.shape[2]
    plan = plan_for(u, A[0], B[:, 0], C[:, 0], 4)
    u_cols = column_major(u, height)
    slots = torch.empty(4, batch, dim, length, dtype=torch.float32, device=u.device)
    state = launch_forward(_routes(u, u_cols, delta, A, B, C, D, delta_bias), None, None, slots[0], slots[0].numel(),
                           plan=plan, softplus=delta_softplus)
    out = merge_layouts(slots[0::2], slots[1::2], height, u.dtype)
    return out.view(x.shape), u_cols, state.ckpt, state.seg_p


_x2d_fwd_op = torch.library.custom_op("mambasuite::cross_scan_2d_fwd", _x2d_scan_fwd, mutates_args=())


@_x2d_fwd_op.register_fake
def _(x, delta, A, B, C, D, delta_bias, delta_softplus):
    u = x.new_empty(x.shape[0], x.shape[1], x.shape[2] * x.shape[3])
    plan = plan_for(u, A[0], B[:, 0], C[:, 0], 4)
    ckpt_shape, seg_shape = state_shapes(u, A[0], plan, 4)
    return (x.new_empty(x.shape), u, u.new_empty(ckpt_shape, dtype=torch.float32),
            u.new_empty(seg_shape, dtype=torch.float32))


def _x2d_scan_bwd(dout: torch.Tensor, x: torch.Tensor, u_cols: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                  B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None, delta_bias: torch.Tensor | None,
                  ckpt: torch.Tensor, seg_p: torch.Tensor, delta_softplus: bool, deterministic: bool
                  ) -> list[torch.Tensor]:
    """Gradients [dx (batch, dim, H, W) in x's dtype, ddelta (batch, 4, dim, H*W), dA (4, dim, N),
    dB, dC (batch, 4, N, H*W), dD (4, dim), dbias (4, dim)]; absent ones empty. The forward's column-major copy of the
    map is reused (one map held from forward to backward, against VMamba's four stacked copies: a copy here would cost
    a launch and its host time on every step)."""
    u = _pixels(x)
    height = x.shape[2]
    plan = plan_for(u, A[0], B[:, 0], C[:, 0], 4)
    dout = _pixels(dout)
    dout_cols = column_major(dout, height)  # (held until the launch: the kernels find it by its offset)
    g = launch_backward(_routes(u, u_cols, delta, A, B, C, D, delta_bias), None, dout, 0, None,
                        ForwardState(last=None, ckpt=ckpt, seg_p=seg_p), plan=plan, softplus=delta_softplus,
                        deterministic=deterministic, shared_u=True, dout_col=_elements_between(dout, dout_cols))
    empty = u.new_empty(0)
    dx = merge_layouts(g.du[0::2], g.du[1::2], height, u.dtype).view(x.shape)
    return [dx, g.ddelta, g.dA, g.dB, g.dC, g.dD if g.dD is not None else empty.clone(),
            g.dbias if g.dbias is not None else empty.clone()]


_x2d_bwd_op = torch.library.custom_op("mambasuite::cross_scan_2d_bwd", distinct_outputs(_x2d_scan_bwd),
                                      mutates_args=())
_x2d_bwd = EagerOp(_x2d_bwd_op, _x2d_scan_bwd)


@_x2d_bwd_op.register_fake
def _(dout, x, u_cols, delta, A, B, C, D, delta_bias, ckpt, seg_p, delta_softplus, deterministic):
    return [x.new_empty(x.shape), torch.empty_like(delta), torch.empty_like(A), torch.empty_like(B),
            torch.empty_like(C), torch.empty_like(D) if D is not None else x.new_empty(0),
            torch.empty_like(delta_bias) if delta_bias is not None else x.new_empty(0)]


def _x2d_setup(ctx, inputs, output):
    x, delta, A, B, C, D, delta_bias, delta_softplus = inputs
    _, u_cols, ckpt, seg_p = output
    ctx.save_for_backward(x, u_cols, delta, A, B, C, D, delta_bias, ckpt, seg_p)
    ctx.mark_non_differentiable(u_cols, ckpt, seg_p)  # internal outputs: no zero gradients materialised for them
    ctx.set_materialize_grads(False)
    ctx.flags = (delta_softplus, deterministic_mode())


def _x2d_backward(ctx, dout, du_cols, dckpt, dseg_p):
    x, u_cols, delta, A, B, C, D, delta_bias, ckpt, seg_p = ctx.saved_tensors
    delta_softplus, deterministic = ctx.flags
    if dout is None:  # the output was not used
        dout = torch.zeros_like(x)
    dx, ddelta, dA, dB, dC, dD, dbias = _x2d_bwd(dout, x, u_cols, delta, A, B, C, D, delta_bias, ckpt, seg_p,
                                                 delta_softplus, deterministic)
    return dx, ddelta, dA, dB, dC, dD if D is not None else None, dbias if delta_bias is not None else None, None


_x2d_fwd_op.register_autograd(_x2d_backward, setup_context=_x2d_setup)
_x2d_fwd = EagerOp(_x2d_fwd_op, _x2d_scan_fwd, _x2d_setup, _x2d_backward)


def cross_scan_2d_triton(x, delta, A, B, C, D=None, delta_bias=None, *, delta_softplus=False):
    """Four routes in one launch, merged in one pass after it; same contract as `cross_scan_2d_ref`. The column
    routes read a column-major copy of the map (one map, not VMamba's four) and write column-major outputs; every
    other tensor is read and written in place."""
    check_cross_scan_args(x, delta, A, B, C, D, delta_bias, "triton")
    return cross_scan_2d_checked(x, delta, A, B, C, D, delta_bias, delta_softplus)


def cross_scan_2d_checked(x, delta, A, B, C, D, delta_bias, delta_softplus: bool) -> torch.Tensor:
    """`cross_scan_2d_triton` on arguments that `check_cross_scan_args` has passed (the dispatcher checks once at the
    public boundary: the check validates all four routes, and repeating it was a third of the op's host time)."""
    if x.dtype == torch.float64:
        raise TypeError("backend='triton' computes in fp32 and does not take float64 inputs; "
                        "use backend='reference' for float64")
    out, _, _, _ = _x2d_fwd(x, delta, A, B, C, D, delta_bias, bool(delta_softplus))
    return out
