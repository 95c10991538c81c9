"""Validation of the multi-direction scan ops (`bidirectional_scan`, `cross_scan_2d`).

Each direction is checked with `check_selective_scan_args`, so a bad tensor's error names the direction.
"""

from __future__ import annotations

import torch

from ._checks import BACKENDS, check_selective_scan_args

COMBINES = ("add", "mean", "mul", "stack")
PAIRED = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def as_pair(name: str, value):
    """A (forward, reverse) pair from a 2-sequence, or (None, None) for None."""
    if value is None:
        return None, None
    if isinstance(value, torch.Tensor) or not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"bidirectional_scan: {name} must be a pair (forward, reverse) of tensors, got "
                        f"{type(value).__name__}")
    return tuple(value)


def check_bidirectional_args(pairs: dict, z, combine: str, backend: str) -> None:
    """pairs: name -> (forward, reverse). Raises naming the direction and the tensor."""
    if combine not in COMBINES:
        raise ValueError(f"bidirectional_scan: combine must be one of {COMBINES}, got {combine!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    for k, direction in enumerate(("forward", "reverse")):
        args = {name: pairs[name][k] for name in PAIRED}
        try:
            check_selective_scan_args(args["u"], args["delta"], args["A"], args["B"], args["C"], args["D"], z,
                                      args["delta_bias"], None, backend)
        except (TypeError, ValueError) as err:
            raise type(err)(f"bidirectional_scan, {direction} direction: {err}") from None
    u_f, u_b = pairs["u"]
    if u_f.shape != u_b.shape or u_f.dtype != u_b.dtype:
        raise ValueError(f"bidirectional_scan: both directions' u must have one shape and dtype, got "
                         f"{tuple(u_f.shape)} {u_f.dtype} and {tuple(u_b.shape)} {u_b.dtype}")
    for name in ("D", "delta_bias"):
        if (pairs[name][0] is None) != (pairs[name][1] is None):
            raise ValueError(f"bidirectional_scan: {name} must be given for both directions or for neither")


def check_cross_scan_args(x, delta, A, B, C, D, delta_bias, backend: str) -> tuple[int, int, int, int, int]:
    """Validate `cross_scan_2d`'s arguments; returns (batch, dim, H, W, N)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"cross_scan_2d: x must be a (batch, dim, H, W) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    batch, dim, height, width = x.shape
    hw = height * width
    if not isinstance(A, torch.Tensor) or A.dim() != 3 or A.shape[:2] != (4, dim):
        raise ValueError(f"cross_scan_2d: A must have shape (4, dim, N) = (4, {dim}, N), got "
                         f"{tuple(A.shape) if isinstance(A, torch.Tensor) else A!r}")
    n = A.shape[2]
    want = {"delta": (batch, 4, dim, hw), "B": (batch, 4, n, hw), "C": (batch, 4, n, hw)}
    got = {"delta": delta, "B": B, "C": C}
    for name, t in got.items():
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != want[name]:
            raise ValueError(f"cross_scan_2d: {name} must have shape {want[name][:3]} + (H*W,) = {want[name]}, in "
                             f"route order (see to_route_order), got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else t!r}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and (not isinstance(t, torch.Tensor) or tuple(t.shape) != (4, dim)):
            raise ValueError(f"cross_scan_2d: {name} must have shape (4, dim) = (4, {dim}), got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else t!r}")
    # The routes' tensors are slices of the same stacked tensors (same dtype, device and shape), so route 0's check
    # covers all four; checking each was a third of the op's host time.
    try:
        check_selective_scan_args(x.reshape(batch, dim, hw), delta[:, 0], A[0], B[:, 0], C[:, 0],
                                  None if D is None else D[0], None, None if delta_bias is None else delta_bias[0],
                                  None, backend)
    except (TypeError, ValueError) as err:
        raise type(err)(f"cross_scan_2d (every route): {err}") from None
    return batch, dim, height, width, n
