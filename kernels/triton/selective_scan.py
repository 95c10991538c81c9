"""Triton selective scan: launch logic, torch.library custom ops and autograd.

`selective_scan_triton` has the signature of `selective_scan_ref`. The forward and backward are
registered as `torch.library.custom_op`s (with fake implementations), so `torch.compile` traces
through them, and autograd is attached with `register_autograd`; eager calls skip the dispatcher
(`eager.EagerOp`).

Determinism: by default the gradients summed across programs are accumulated with fp32 atomics:
time-variable dB/dC (one atomic per (batch, group, n, t) and channel tile, after a register reduction
over the tile) and the per-channel dA, dD, ddelta_bias and time-invariant dB/dC (one atomic per
channel and program). With `torch.use_deterministic_algorithms(True)` (Lightning's
`deterministic=True`) or `MAMBASUITE_DETERMINISTIC=1`, each program writes its own partial and the
partials are summed in a fixed order, so gradients are bitwise reproducible.
"""

from __future__ import annotations

import torch

from .._checks import check_selective_scan_args
from . import scan_plan
from .eager import EagerOp, distinct_outputs
from .scan_launch import ForwardState, ScanInputs, launch_backward, launch_forward, plan_for, state_shapes
from .scan_plan import KernelTile, LaunchPlan, deterministic_mode, plan_launch


# ----------------------------------------------------------------------------------------- forward
def _scan_fwd(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
              D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
              initial_state: torch.Tensor | None, delta_softplus: bool, reverse: bool
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns out (batch, dim, L), last_state (batch, dim, N) fp32, checkpoints (1, batch, dim, n_tiles, N)
    fp32 and the segments' decay products (1, batch, n_seg, dim, N) fp32 (empty with one segment)."""
    plan = plan_for(u, A, B, C)
    out = torch.empty(u.shape, dtype=u.dtype, device=u.device)
    h0 = initial_state.float().contiguous()[None] if initial_state is not None else None
    state = launch_forward([ScanInputs(u, delta, A, B, C, D, delta_bias)], z, h0, out, 0, plan=plan,
                           softplus=delta_softplus, reverse=reverse)
    return out, state.last[0], state.ckpt, state.seg_p


_fwd_op = torch.library.custom_op("mambasuite::selective_scan_fwd", _scan_fwd, mutates_args=())


@_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, reverse):
    plan = plan_for(u, A, B, C)
    ckpt_shape, seg_shape = state_shapes(u, A, plan)
    f32 = torch.float32
    return (u.new_empty(u.shape), u.new_empty(u.shape[0], u.shape[1], A.shape[1], dtype=f32),
            u.new_empty(ckpt_shape, dtype=f32), u.new_empty(seg_shape, dtype=f32))


# ---------------------------------------------------------------------------------------- backward
def _scan_bwd(dout: torch.Tensor, dlast: torch.Tensor | None, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
              B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None,
              delta_bias: torch.Tensor | None, ckpt: torch.Tensor, seg_p: torch.Tensor, delta_softplus: bool,
              reverse: bool, deterministic: bool, need_dh0: bool) -> list[torch.Tensor]:
    """Gradients [du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state]; absent inputs (and the initial
    state's unless need_dh0) get empty tensors."""
    plan = plan_for(u, A, B, C)
    dout = dout.contiguous() if dout.stride(-1) != 1 else dout
    dlast = dlast.float().contiguous()[None] if dlast is not None else None
    g = launch_backward([ScanInputs(u, delta, A, B, C, D, delta_bias)], z, dout, 0, dlast,
                        ForwardState(last=None, ckpt=ckpt, seg_p=seg_p), plan=plan, softplus=delta_softplus,
                        deterministic=deterministic, reverse=reverse, need_dh0=need_dh0)
    # A custom op's outputs may not alias each other: every absent gradient gets its own empty tensor.
    return [
        g.du[0], g.ddelta[0], g.dA[0], g.dB[0], g.dC[0],
        g.dD[0] if D is not None else u.new_empty(0),
        g.dz if z is not None else u.new_empty(0),
        g.dbias[0] if delta_bias is not None else u.new_empty(0),
        g.dh0[0] if need_dh0 else u.new_empty(0),
    ]


_bwd_op = torch.library.custom_op("mambasuite::selective_scan_bwd", distinct_outputs(_scan_bwd),
                                  mutates_args=())
_bwd = EagerOp(_bwd_op, _scan_bwd)


@_bwd_op.register_fake
def _(dout, dlast, u, delta, A, B, C, D, z, delta_bias, ckpt, seg_p, delta_softplus, reverse, deterministic, need_dh0):
    return [torch.empty_like(u), torch.empty_like(delta), torch.empty_like(A), torch.empty_like(B),
            torch.empty_like(C), torch.empty_like(D) if D is not None else u.new_empty(0),
            torch.empty_like(z) if z is not None else u.new_empty(0),
            torch.empty_like(delta_bias) if delta_bias is not None else u.new_empty(0),
            u.new_empty(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float32) if need_dh0 else u.new_empty(0)]


# ---------------------------------------------------------------------------------------- autograd
def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, reverse = inputs
    _, _, ckpt, seg_p = output
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt, seg_p)
    # The checkpoints are internal: no gradient flows into them, and gradients of unused outputs stay None
    # instead of being materialised as zeros (at (64, 768, 197, 16) those zeros were 9 % of peak memory).
    ctx.mark_non_differentiable(ckpt, seg_p)
    ctx.set_materialize_grads(False)
    ctx.flags = (delta_softplus, reverse, deterministic_mode())
    ctx.has_h0 = initial_state is not None
    ctx.h0_dtype = initial_state.dtype if initial_state is not None else None


def _backward(ctx, dout, dlast, dckpt, dseg_p):  # dout / dlast: None when that output was not used
    u, delta, A, B, C, D, z, delta_bias, ckpt, seg_p = ctx.saved_tensors
    delta_softplus, reverse, deterministic = ctx.flags
    if dout is None:
        dout = torch.zeros_like(u)
    du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = _bwd(
        dout, dlast, u, delta, A, B, C, D, z, delta_bias, ckpt, seg_p, delta_softplus, reverse, deterministic,
        ctx.has_h0)
    return (du, ddelta, dA, dB, dC, dD if D is not None else None, dz if z is not None else None,
            dbias if delta_bias is not None else None, dh0.to(ctx.h0_dtype) if ctx.has_h0 else None, None, None)


_fwd_op.register_autograd(_backward, setup_context=_setup_context)
_fwd = EagerOp(_fwd_op, _scan_fwd, _setup_context, _backward)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False, *, reverse=False, initial_state=None):
    """Selective scan on the Triton kernels; same contract as `selective_scan_ref`.

    Inputs may be fp32/bf16/fp16 (state and accumulation in fp32) with any strides; float64 is
    refused (use backend="reference" for float64). last_state has a gradient, as does initial_state.
    """
    check_selective_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state, "triton")
    return selective_scan_checked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                                  reverse=reverse, initial_state=initial_state)


def selective_scan_checked(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           return_last_state=False, *, reverse=False, initial_state=None):
    """`selective_scan_triton` on arguments that `check_selective_scan_args` has passed (the dispatcher checks
    once at the public boundary; checking again would only add host time to every eager call)."""
    if u.dtype == torch.float64:
        raise TypeError("backend='triton' computes in fp32 and does not take float64 inputs; "
                        "use backend='reference' for float64")
    out, last_state, _, _ = _fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, bool(delta_softplus),
                                 bool(reverse))
    return (out, last_state) if return_last_state else out


__all__ = ["KernelTile", "LaunchPlan", "deterministic_mode", "plan_launch", "scan_plan", "selective_scan_triton"]
