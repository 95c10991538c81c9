"""PyTorch reference of the selective scan, fast enough to be the CPU path.

Recurrence, per batch b, channel d and state n (forward direction)::

    dt_t  = softplus(delta_t + delta_bias)            (if delta_softplus, threshold 20)
    h_t   = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t  (h_{-1} = initial_state or 0)
    y_t   = sum_n C_t[n] * h_t[n] + D * u_t
    out_t = y_t * silu(z_t)                           (if z is given)

With ``reverse=True`` the recurrence runs from t = L-1 down to 0 (h_t depends on t..L-1).

Design (why it is fast without materialising (batch, dim, L, N) for a whole layer):

* Rows (b, d) are processed in blocks whose (rows, L, N) working set stays below ``_BLOCK_ELEMS``;
  nothing of size (batch, dim, L, N) is kept between forward and backward: backward recomputes the
  block from the inputs (as mamba-ssm's kernels do from chunk checkpoints).
* Inside a block, the linear recurrence h_t = a_t h_{t-1} + x_t is solved by a two-level chunked
  scan: L is cut into ~sqrt(L) chunks of ~sqrt(L) steps; one vectorised pass scans all chunks in
  parallel from a zero state (a Python loop over the ~sqrt(L) positions of a chunk), a second pass
  carries the chunk-end states across chunks (loop over ~sqrt(L) chunks), and one broadcast op adds
  each carried state times the in-chunk decay products. That is O(sqrt(L)) Python steps instead of
  O(L), and the arithmetic is the plain recurrence (no exp of cumulative sums), so it is stable for
  any A and exact to rounding in float64.
* The backward pass is written by hand (a reverse scan of the same kind for dh), so autograd never
  records per-step graphs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._checks import ScanShapes, check_selective_scan_args

# Upper bound on elements of one (rows, L, N) working tensor; ~7 such tensors live at once in backward.
# Small on CPU (cache-friendly, little memory); large on GPUs, where each op is a kernel launch.
_BLOCK_ELEMS = 1 << 21
_BLOCK_ELEMS_CUDA = 1 << 26


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16/fp32 inputs are computed in fp32; float64 in float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def linear_scan(a: torch.Tensor, x: torch.Tensor, h0: torch.Tensor | None, reverse: bool) -> torch.Tensor:
    """Solve h_t = a_t * h_{t-1} + x_t along dim -2 (or from the end if `reverse`).

    Args:
        a, x: (..., L, N) decays and inputs (same shape, contiguous is fastest).
        h0: (..., N) state before the first step (position 0, or L-1 if reverse), or None for zeros.
    Returns:
        h: (..., L, N), a new tensor.
    """
    length, n = x.shape[-2], x.shape[-1]
    lead = x.shape[:-2]
    chunk = max(1, math.isqrt(length - 1) + 1) if length > 1 else 1
    n_chunks = -(-length // chunk)
    padded = n_chunks * chunk
    # Pad with the identity step (a=1, x=0): padded steps never change the state, so outputs and the
    # state entering the reverse scan at L-1 are exact.
    h = x.new_zeros(*lead, padded, n)
    h[..., :length, :] = x
    prod = a.new_ones(*lead, padded, n)
    prod[..., :length, :] = a
    h = h.view(*lead, n_chunks, chunk, n)
    prod = prod.view(*lead, n_chunks, chunk, n)

    # 1) every chunk scanned in parallel from a zero state; prod becomes the in-chunk decay products.
    steps = range(1, chunk) if not reverse else range(chunk - 2, -1, -1)
    for t in steps:
        prev = t - 1 if not reverse else t + 1
        h[..., t, :].addcmul_(prod[..., t, :], h[..., prev, :])
        prod[..., t, :].mul_(prod[..., prev, :])

    # 2) carry chunk-end states across chunks: start[c] is the state entering chunk c.
    last = chunk - 1 if not reverse else 0
    start = h.new_empty(*lead, n_chunks, n)
    carry = h0.to(h.dtype) if h0 is not None else h.new_zeros(*lead, n)
    chunk_order = range(n_chunks) if not reverse else range(n_chunks - 1, -1, -1)
    for c in chunk_order:
        start[..., c, :] = carry
        carry = torch.addcmul(h[..., c, last, :], prod[..., c, last, :], carry)

    # 3) fix-up: h += (decay product from the chunk start) * (state entering the chunk)
    h.addcmul_(prod, start.unsqueeze(-2))
    return h.view(*lead, padded, n)[..., :length, :]


def _bc_rows(t: torch.Tensor, form: str, b_sl: slice, d_sl: slice, dim: int, cdt: torch.dtype) -> torch.Tensor:
    """B or C for a block of rows, broadcastable to (rows_b, rows_d, L, N)."""
    if form == "invariant":  # (dim, N) -> (1, dd, 1, N)
        return t[d_sl].to(cdt)[None, :, None, :]
    if form == "variable":  # (batch, N, L) -> (bb, 1, L, N)
        return t[b_sl].to(cdt).transpose(-1, -2)[:, None]
    groups = t.shape[1]  # (batch, G, N, L) -> (bb, dd, L, N): channel d uses group d // (dim // G)
    group_of = torch.arange(d_sl.start, d_sl.stop, device=t.device) // (dim // groups)
    return t[b_sl].index_select(1, group_of).to(cdt).transpose(-1, -2)


def _reduce_bc_grad(g: torch.Tensor, form: str, ref: torch.Tensor, d_sl: slice, dim: int, out: torch.Tensor,
                    b_sl: slice) -> None:
    """Accumulate a per-row gradient g (bb, dd, L, N) into the gradient buffer `out` shaped like B/C."""
    if form == "invariant":
        out[d_sl] += g.sum(dim=(0, 2))
    elif form == "variable":
        out[b_sl] += g.sum(dim=1).transpose(-1, -2)
    else:
        groups = ref.shape[1]
        per_group = dim // groups
        g0, g1 = d_sl.start // per_group, -(-d_sl.stop // per_group)
        for gi in range(g0, g1):  # channels of this block that belong to group gi
            lo, hi = max(gi * per_group, d_sl.start), min((gi + 1) * per_group, d_sl.stop)
            out[b_sl, gi] += g[:, lo - d_sl.start:hi - d_sl.start].sum(dim=1).transpose(-1, -2)


def _row_blocks(shapes: ScanShapes, on_cuda: bool = False):
    """Yield (batch slice, dim slice) blocks whose (rows, L, N) tensors stay under _BLOCK_ELEMS."""
    per_row = shapes.length * shapes.d_state
    rows = max(1, (_BLOCK_ELEMS_CUDA if on_cuda else _BLOCK_ELEMS) // per_row)
    if rows >= shapes.dim:
        bb = max(1, rows // shapes.dim)
        for b0 in range(0, shapes.batch, bb):
            yield slice(b0, min(b0 + bb, shapes.batch)), slice(0, shapes.dim)
    else:
        for b0 in range(shapes.batch):
            for d0 in range(0, shapes.dim, rows):
                yield slice(b0, b0 + 1), slice(d0, min(d0 + rows, shapes.dim))


class _Block:
    """Recomputable forward quantities of one row block (shared by forward and backward)."""

    def __init__(self, inp: dict, shapes: ScanShapes, b_sl: slice, d_sl: slice, reverse: bool):
        cdt = compute_dtype(inp["u"].dtype)
        self.u = inp["u"][b_sl, d_sl].to(cdt)
        self.delta_in = inp["delta"][b_sl, d_sl].to(cdt)
        if inp["delta_bias"] is not None:
            self.delta_in = self.delta_in + inp["delta_bias"][d_sl].to(cdt)[:, None]
        self.dt = F.softplus(self.delta_in, threshold=20.0) if inp["delta_softplus"] else self.delta_in
        self.A = inp["A"][d_sl].to(cdt)
        self.B = _bc_rows(inp["B"], shapes.b_form, b_sl, d_sl, shapes.dim, cdt)
        self.C = _bc_rows(inp["C"], shapes.c_form, b_sl, d_sl, shapes.dim, cdt)
        self.a = torch.exp(self.dt[..., None] * self.A[:, None, :])  # (bb, dd, L, N)
        self.x = (self.dt * self.u)[..., None] * self.B  # (bb, dd, L, N)
        h0 = inp["initial_state"]
        self.h0 = h0[b_sl, d_sl].to(cdt) if h0 is not None else None
        self.h = linear_scan(self.a, self.x, self.h0, reverse)
        self.y = torch.einsum("bdln,bdln->bdl", self.h, self.C.expand_as(self.h))
        if inp["D"] is not None:
            self.y = self.y + inp["D"][d_sl].to(cdt)[:, None] * self.u


def _forward(inp: dict, shapes: ScanShapes, reverse: bool):
    u = inp["u"]
    out = torch.empty_like(u, memory_format=torch.contiguous_format)
    cdt = compute_dtype(u.dtype)
    last_state = u.new_empty(shapes.batch, shapes.dim, shapes.d_state, dtype=cdt)
    last_pos = 0 if reverse else shapes.length - 1
    for b_sl, d_sl in _row_blocks(shapes, u.is_cuda):
        blk = _Block(inp, shapes, b_sl, d_sl, reverse)
        y = blk.y
        if inp["z"] is not None:
            y = y * F.silu(inp["z"][b_sl, d_sl].to(cdt))
        out[b_sl, d_sl] = y.to(u.dtype)
        last_state[b_sl, d_sl] = blk.h[..., last_pos, :]
    return out, last_state


def _backward(inp: dict, shapes: ScanShapes, reverse: bool, dout: torch.Tensor, dlast: torch.Tensor | None):
    u = inp["u"]
    cdt = compute_dtype(u.dtype)
    grads = {
        "u": torch.zeros(u.shape, dtype=cdt, device=u.device),
        "delta": torch.zeros(u.shape, dtype=cdt, device=u.device),
        "A": torch.zeros(inp["A"].shape, dtype=cdt, device=u.device),
        "B": torch.zeros(inp["B"].shape, dtype=cdt, device=u.device),
        "C": torch.zeros(inp["C"].shape, dtype=cdt, device=u.device),
    }
    for name in ("D", "delta_bias", "z", "initial_state"):
        if inp[name] is not None:
            grads[name] = torch.zeros(inp[name].shape, dtype=cdt, device=u.device)
    first_pos = shapes.length - 1 if reverse else 0
    last_pos = 0 if reverse else shapes.length - 1
    for b_sl, d_sl in _row_blocks(shapes, u.is_cuda):
        blk = _Block(inp, shapes, b_sl, d_sl, reverse)
        dy = dout[b_sl, d_sl].to(cdt)
        if inp["z"] is not None:
            z = inp["z"][b_sl, d_sl].to(cdt)
            sig = torch.sigmoid(z)
            grads["z"][b_sl, d_sl] = dy * blk.y * sig * (1 + z * (1 - sig))
            dy = dy * z * sig
        du = torch.zeros_like(blk.u)
        if inp["D"] is not None:
            grads["D"][d_sl] += (dy * blk.u).sum(dim=(0, 2))
            du += dy * inp["D"][d_sl].to(cdt)[:, None]
        # y_t = <C_t, h_t>: gradient to C, and dh's direct input g_t = dy_t * C_t
        _reduce_bc_grad(dy[..., None] * blk.h, shapes.c_form, inp["C"], d_sl, shapes.dim, grads["C"], b_sl)
        g = dy[..., None] * blk.C
        if dlast is not None:
            g[..., last_pos, :] += dlast[b_sl, d_sl].to(cdt)
        # dh_t = g_t + a_{t+1} dh_{t+1}: a scan in the opposite direction with the decays shifted by one.
        a_next = torch.zeros_like(blk.a)
        if reverse:
            a_next[..., 1:, :] = blk.a[..., :-1, :]
        else:
            a_next[..., :-1, :] = blk.a[..., 1:, :]
        dh = linear_scan(a_next, g, None, not reverse)
        if blk.h0 is not None:
            grads["initial_state"][b_sl, d_sl] = dh[..., first_pos, :] * blk.a[..., first_pos, :]
        # d(dt*A)_t = dh_t * a_t * h_{t-1} = dh_t * (h_t - x_t)
        q = dh * (blk.h - blk.x)
        ddt = torch.einsum("bdln,dn->bdl", q, blk.A)
        grads["A"][d_sl] += torch.einsum("bdln,bdl->dn", q, blk.dt)
        # x_t = dt_t * u_t * B_t
        dhB = torch.einsum("bdln,bdln->bdl", dh, blk.B.expand_as(dh))
        ddt += dhB * blk.u
        du += dhB * blk.dt
        _reduce_bc_grad(dh * (blk.dt * blk.u)[..., None], shapes.b_form, inp["B"], d_sl, shapes.dim, grads["B"],
                        b_sl)
        if inp["delta_softplus"]:
            # softplus with threshold 20 is the identity above 20
            ddt = torch.where(blk.delta_in > 20.0, ddt, ddt * torch.sigmoid(blk.delta_in))
        grads["delta"][b_sl, d_sl] = ddt
        grads["u"][b_sl, d_sl] = du
        if inp["delta_bias"] is not None:
            grads["delta_bias"][d_sl] += ddt.sum(dim=(0, 2))
    return grads


_ORDER = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


class _SelectiveScanRef(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, reverse, shapes):
        inp = dict(zip(_ORDER, (u, delta, A, B, C, D, z, delta_bias, initial_state)))
        inp["delta_softplus"] = delta_softplus
        out, last_state = _forward(inp, shapes, reverse)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state)
        ctx.meta = (delta_softplus, reverse, shapes)
        return out, last_state

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dlast):
        delta_softplus, reverse, shapes = ctx.meta
        saved = ctx.saved_tensors
        inp = dict(zip(_ORDER, saved))
        inp["delta_softplus"] = delta_softplus
        if dout is None:
            dout = torch.zeros_like(inp["u"])
        grads = _backward(inp, shapes, reverse, dout, dlast)
        result = []
        for name, t in zip(_ORDER, saved):
            g = grads.get(name)
            result.append(None if t is None or g is None else g.to(t.dtype))
        return (*result, None, None, None)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, *, reverse=False, initial_state=None):
    """Selective scan in PyTorch (any device), with mamba-ssm's `selective_scan_fn` semantics.

    Args:
        u, delta: (batch, dim, L), fp16/bf16/fp32/fp64 (same dtype).
        A: (dim, N) float32 (float64 allowed for float64 inputs).
        B, C: (dim, N) time-invariant, (batch, N, L) variable, or (batch, G, N, L) grouped (dim % G == 0).
        D, delta_bias: (dim,) or None.
        z: (batch, dim, L) or None; the output is multiplied by silu(z).
        delta_softplus: apply softplus (threshold 20) to delta + delta_bias.
        return_last_state: also return the final state (batch, dim, N) in the compute dtype.
        reverse: scan from t = L-1 down to 0.
        initial_state: (batch, dim, N) state before the first step, or None for zeros.
    Returns:
        out (batch, dim, L) in u's dtype, or (out, last_state). Gradients flow to every tensor
        input, including initial_state, and from last_state.
    """
    shapes = check_selective_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state, "reference")
    out, last_state = _SelectiveScanRef.apply(u, delta, A, B, C, D, z, delta_bias, initial_state,
                                              bool(delta_softplus), bool(reverse), shapes)
    return (out, last_state) if return_last_state else out
