"""Public multi-direction scans: `bidirectional_scan` and `cross_scan_2d` (dispatch over backends).

backend "reference" runs the PyTorch compositions in `reference/multi_scan.py`; "triton" runs every direction in
one launch of the shared scan kernels (`triton/multi_scan.py`); "mamba_ssm" runs the peer's CUDA scan the way Vim,
Caduceus and VMamba call it (flipped copies for reverse directions, a stacked cross-scan copy for 2D) -- the
baseline the fused ops are benchmarked against. "auto" is Triton on CUDA tensors, the reference elsewhere.
"""

from __future__ import annotations

import torch

from ._multi_checks import PAIRED, as_pair, check_bidirectional_args, check_cross_scan_args
from .reference.multi_scan import (bidirectional_scan_ref, combine_directions, cross_scan_2d_ref, route_order,
                                   to_route_order)


def _resolve(backend: str, device: torch.device, op: str) -> str:
    from . import _resolve as resolve_backend

    return resolve_backend(backend, device, op)


def bidirectional_scan(u, delta, A, B, C, D=None, delta_bias=None, z=None, *, combine="add", delta_softplus=False,
                       backend="auto"):
    """A forward and a reverse selective scan with their own inputs, sharing the z gate, combined into one output.

    Args:
        u, delta, A, B, C, D, delta_bias: pairs (forward, reverse) of `selective_scan` inputs: u, delta
            (batch, dim, L); A (dim, N) fp32; B, C (dim, N), (batch, N, L) or (batch, G, N, L); D, delta_bias
            (dim,) fp32, or None for both directions.
        z: (batch, dim, L) or None, gates each direction's output (out_dir * silu(z)) before combining.
        combine: "add" | "mean" (Vim v2's divide-out) | "mul" | "stack" (returns both, (2, batch, dim, L)).
        backend: "auto" | "reference" | "triton" (one launch for both directions) | "mamba_ssm" (two peer calls,
            the reverse one on flipped copies, as Vim and Caduceus run it).
    Returns:
        (batch, dim, L) in u's dtype, or (2, batch, dim, L) for "stack".
    """
    pairs = {name: as_pair(name, value) for name, value in zip(PAIRED, (u, delta, A, B, C, D, delta_bias))}
    check_bidirectional_args(pairs, z, combine, backend)
    backend = _resolve(backend, pairs["u"][0].device, "bidirectional_scan")
    args = tuple(pairs[name] for name in PAIRED)
    if backend == "reference":
        return bidirectional_scan_ref(*args, z=z, combine=combine, delta_softplus=delta_softplus)
    if backend == "triton":
        from .triton.multi_scan import bidirectional_scan_checked

        return bidirectional_scan_checked(pairs, z, combine, delta_softplus)
    from . import selective_scan

    ys = [selective_scan(*(pairs[name][k] for name in ("u", "delta", "A", "B", "C", "D")), z=z,
                         delta_bias=pairs["delta_bias"][k], delta_softplus=delta_softplus, reverse=k == 1,
                         backend="mamba_ssm") for k in range(2)]
    return combine_directions(ys[0], ys[1], combine)


def cross_scan_2d(x, delta, A, B, C, D=None, delta_bias=None, *, delta_softplus=False, backend="auto"):
    """VMamba's 2D selective scan: four routes over a (batch, dim, H, W) map, summed per pixel.

    Routes: 0 row-major, 1 column-major, 2 row-major reversed, 3 column-major reversed. The per-route tensors are
    in route order: routes 0 and 2 indexed by pixel (row-major), routes 1 and 3 column-major (the order of each
    route's forward walk; the reversed routes walk it backwards). VMamba computes them from its cross-scanned copies,
    which are in that order; per-pixel projections of the map can be put in it with `to_route_order`.

    Args:
        x: (batch, dim, H, W); delta: (batch, 4, dim, H*W); A: (4, dim, N) fp32; B, C: (batch, 4, N, H*W);
        D, delta_bias: (4, dim) fp32 or None.
        backend: "auto" | "reference" | "triton" (one launch, no stacked copy of the map, one merging pass) |
            "mamba_ssm" (VMamba's pipeline: a stacked (batch, 4, dim, H*W) cross-scan copy, one peer call, a merge).
    Returns:
        (batch, dim, H, W) in x's dtype (the four routes summed in fp32, float64 for float64).
    """
    batch, dim, height, width, n = check_cross_scan_args(x, delta, A, B, C, D, delta_bias, backend)
    backend = _resolve(backend, x.device, "cross_scan_2d")
    if backend == "reference":
        return cross_scan_2d_ref(x, delta, A, B, C, D, delta_bias, delta_softplus=delta_softplus)
    if backend == "triton":
        from .triton.multi_scan import cross_scan_2d_checked

        return cross_scan_2d_checked(x, delta, A, B, C, D, delta_bias, delta_softplus)
    return _cross_scan_2d_peer(x, delta, A, B, C, D, delta_bias, delta_softplus)


def _cross_scan_2d_peer(x, delta, A, B, C, D, delta_bias, delta_softplus):
    """VMamba's way: gather the four route orders into a (batch, 4*dim, H*W) copy, one mamba-ssm call with
    B/C grouped by route, scatter back and sum."""
    from . import selective_scan

    batch, dim, height, width = x.shape
    orders = [route_order(height, width, k, x.device) for k in range(4)]
    u = x.reshape(batch, dim, -1)
    # route order -> each route's scan order (the reversed routes flipped: the peer scans forward only)
    gather = lambda t: torch.stack([t[:, k] if k < 2 else t[:, k].flip(-1) for k in range(4)], dim=1)  # noqa: E731
    ys = selective_scan(torch.stack([u[..., o] for o in orders], dim=1).flatten(1, 2),
                        gather(delta).flatten(1, 2), A.flatten(0, 1), gather(B), gather(C),
                        None if D is None else D.flatten(), delta_bias=None if delta_bias is None else
                        delta_bias.flatten(), delta_softplus=delta_softplus, backend="mamba_ssm")
    ys = ys.view(batch, 4, dim, -1).float()
    out = torch.zeros(batch, dim, height * width, dtype=torch.float32, device=x.device)
    for k in range(4):
        out[..., orders[k]] += ys[:, k]
    return out.view(batch, dim, height, width).to(x.dtype)


__all__ = ["bidirectional_scan", "cross_scan_2d", "to_route_order"]
