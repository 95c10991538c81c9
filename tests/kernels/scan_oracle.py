"""Independent float64 oracle for the selective scan: a plain sequential loop over L.

Deliberately naive (one time step at a time, no chunking, no shared code with the package) so that it
checks the package's chunked reference and the Triton kernels rather than repeating them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _at(t: torch.Tensor, step: int, dim: int) -> torch.Tensor:
    """B or C at one time step, as (batch or 1, dim, N)."""
    if t.dim() == 2:  # (dim, N)
        return t[None]
    if t.dim() == 3:  # (batch, N, L)
        return t[:, None, :, step]
    groups = t.shape[1]  # (batch, G, N, L)
    return t[:, :, :, step].repeat_interleave(dim // groups, dim=1)


def selective_scan_loop(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                        return_last_state=False, *, reverse=False, initial_state=None):
    """float64 sequential selective scan; returns float64 tensors."""
    f64 = torch.float64
    u, delta, A, B, C = (t.to(f64) for t in (u, delta, A, B, C))
    batch, dim, length = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias.to(f64)[:, None]
    if delta_softplus:
        delta = torch.where(delta > 20, delta, torch.log1p(torch.exp(delta)))
    h = initial_state.to(f64) if initial_state is not None else u.new_zeros(batch, dim, A.shape[1])
    ys = [None] * length
    for t in (reversed(range(length)) if reverse else range(length)):
        dt = delta[:, :, t, None]
        h = torch.exp(dt * A) * h + dt * _at(B, t, dim) * u[:, :, t, None]
        ys[t] = (h * _at(C, t, dim)).sum(-1)
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.to(f64)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(f64))
    return (y, h) if return_last_state else y
