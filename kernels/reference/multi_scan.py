"""PyTorch references of the multi-direction scans: the bidirectional scan and VMamba's 2D cross-scan.

Both are written as plain compositions of `selective_scan_ref`, with explicit index permutations for the 2D
routes, so they check the fused kernels' direction handling independently of them.
"""

from __future__ import annotations

import torch

from .._multi_checks import PAIRED, as_pair, check_bidirectional_args, check_cross_scan_args
from .selective_scan import selective_scan_ref


def combine_directions(y_f: torch.Tensor, y_b: torch.Tensor, combine: str) -> torch.Tensor:
    """'add' y_f + y_b; 'mean' their average; 'mul' y_f * y_b; 'stack' (2, *y_f.shape)."""
    if combine == "add":
        return y_f + y_b
    if combine == "mean":
        return (y_f + y_b) * 0.5
    if combine == "mul":
        return y_f * y_b
    return torch.stack([y_f, y_b])


def bidirectional_scan_ref(u, delta, A, B, C, D=None, delta_bias=None, z=None, *, combine="add",
                           delta_softplus=False):
    """A forward-in-time and a reverse-in-time selective scan, each with its own inputs, sharing z.

    Args:
        u, delta, A, B, C, D, delta_bias: pairs (forward, reverse) of `selective_scan` inputs (D and delta_bias
            may be None for both): u, delta (batch, dim, L); A (dim, N); B, C (dim, N), (batch, N, L) or
            (batch, G, N, L); D, delta_bias (dim,).
        z: (batch, dim, L) gate shared by both directions (each output is gated before combining).
        combine: "add" | "mean" | "mul" | "stack".
    Returns:
        (batch, dim, L) in u's dtype, or (2, batch, dim, L) for "stack".
    """
    pairs = {name: as_pair(name, value) for name, value in zip(PAIRED, (u, delta, A, B, C, D, delta_bias))}
    check_bidirectional_args(pairs, z, combine, "reference")
    ys = [selective_scan_ref(*(pairs[name][k] for name in ("u", "delta", "A", "B", "C", "D")), z=z,
                             delta_bias=pairs["delta_bias"][k], delta_softplus=delta_softplus, reverse=k == 1)
          for k in range(2)]
    return combine_directions(ys[0], ys[1], combine)


def route_order(height: int, width: int, route: int, device=None) -> torch.Tensor:
    """Pixel index (row-major over H x W) of each step of a 2D route, in scan order.

    Route 0: row-major; 1: column-major; 2: row-major reversed; 3: column-major reversed.
    """
    pixels = torch.arange(height * width, device=device)
    order = pixels if route % 2 == 0 else pixels.view(height, width).t().reshape(-1)
    return order.flip(0) if route >= 2 else order


def to_route_order(t: torch.Tensor, height: int) -> torch.Tensor:
    """A per-route (batch, 4, C, H*W) tensor indexed by pixel (row-major) -> route order: the row routes (0 and 2)
    as they are, the column routes (1 and 3) column-major. A new contiguous tensor, differentiable.

    Route order is the order of each route's forward walk (the reversed routes walk it backwards), and the layout
    `cross_scan_2d` takes delta, B and C in. For per-pixel projections of the map, reordering their small low-rank
    output (VMamba's dt rank + 2N channels) before the dt projection costs less than reordering delta itself.
    """
    if t.dim() != 4 or t.shape[1] != 4 or t.shape[-1] % height:
        raise ValueError(f"to_route_order: expected a (batch, 4, C, H*W) tensor with H = {height} dividing H*W, "
                         f"got {tuple(t.shape)}")
    cols = t[:, 1::2].unflatten(-1, (height, t.shape[-1] // height)).transpose(-1, -2).flatten(-2)
    return torch.stack((t[:, 0], cols[:, 0], t[:, 2], cols[:, 1]), dim=1)


def cross_scan_2d_ref(x, delta, A, B, C, D=None, delta_bias=None, *, delta_softplus=False):
    """VMamba's four-route selective scan over a 2D map, merged by summing the routes per pixel.

    Args:
        x: (batch, dim, H, W) the map every route reads.
        delta: (batch, 4, dim, H*W) per-route steps in route order (`to_route_order`: routes 0 and 2 by pixel,
            routes 1 and 3 column-major).
        A: (4, dim, N) fp32; B, C: (batch, 4, N, H*W) per route, in route order; D, delta_bias: (4, dim) or None.
    Returns:
        (batch, dim, H, W) in x's dtype: sum over routes (in fp32, float64 for float64) of each route's output
        placed back at its pixels.
    """
    batch, dim, height, width, _ = check_cross_scan_args(x, delta, A, B, C, D, delta_bias, "reference")
    length = height * width
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    # Routes 0 and 1 scan the row-major and column-major orders forward, routes 2 and 3 the same orders in reverse
    # mode (the reversed routes are the forward orders read backwards). Each pair is one scan over the two orders
    # stacked along channels, with B and C grouped by route: one loop over the steps per pair instead of one per
    # route (the CPU path's cost), and transposes rather than index gathers and scatters.
    by_column = x.transpose(-1, -2).reshape(batch, dim, length)  # column-major pixel order
    pair_u = torch.cat([x.reshape(batch, dim, length), by_column], dim=1)  # (batch, 2 * dim, H*W)
    out = torch.zeros(batch, dim, height, width, dtype=acc, device=x.device)
    for routes, reverse in ((slice(0, 2), False), (slice(2, 4), True)):
        y = selective_scan_ref(pair_u, delta[:, routes].flatten(1, 2), A[routes].flatten(0, 1), B[:, routes],
                               C[:, routes], None if D is None else D[routes].flatten(),
                               delta_bias=None if delta_bias is None else delta_bias[routes].flatten(),
                               delta_softplus=delta_softplus, reverse=reverse)
        y = y.view(batch, 2, dim, length).to(acc)
        out = out + y[:, 0].view(batch, dim, height, width) + y[:, 1].view(batch, dim, width, height).transpose(-1, -2)
    return out.to(x.dtype)
