"""Validation of the public kernel arguments.

Every op checks its inputs here, at the public boundary, so that the backends can assume well-formed
tensors. Errors name the argument, the shape or dtype seen, and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_D_STATE = 256
BACKENDS = ("auto", "reference", "triton", "mamba_ssm")


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def check_tensor(name: str, t, *, ndim: int | tuple[int, ...], float_only: bool = True) -> None:
    """Raise TypeError/ValueError unless `t` is a floating tensor of one of the allowed ranks."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    ranks = (ndim,) if isinstance(ndim, int) else ndim
    if t.dim() not in ranks:
        raise ValueError(f"{name} must have {' or '.join(map(str, ranks))} dimensions, got shape {_shape(t)}")
    if float_only and t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float16/bfloat16/float32/float64 tensor, got {t.dtype}")


@dataclass(frozen=True)
class ScanShapes:
    """Sizes of one selective-scan call, derived from validated arguments.

    `b_form`/`c_form` are "invariant" for (dim, N), "variable" for (batch, N, L) and "grouped" for
    (batch, G, N, L); `groups` is G for grouped forms (1 otherwise).
    """

    batch: int
    dim: int
    length: int
    d_state: int
    b_form: str
    c_form: str
    b_groups: int
    c_groups: int


def _bc_form(name: str, t: torch.Tensor, batch: int, dim: int, length: int, d_state: int) -> tuple[str, int]:
    check_tensor(name, t, ndim=(2, 3, 4))
    if t.dim() == 2:
        if tuple(t.shape) != (dim, d_state):
            raise ValueError(f"{name} (time-invariant) must have shape (dim, N) = ({dim}, {d_state}), got {_shape(t)}")
        return "invariant", 1
    if t.dim() == 3:
        if tuple(t.shape) != (batch, d_state, length):
            raise ValueError(
                f"{name} (variable) must have shape (batch, N, L) = ({batch}, {d_state}, {length}), got {_shape(t)}"
            )
        return "variable", 1
    groups = t.shape[1]
    if t.shape[0] != batch or t.shape[2] != d_state or t.shape[3] != length:
        raise ValueError(
            f"{name} (grouped) must have shape (batch, G, N, L) = ({batch}, G, {d_state}, {length}), got {_shape(t)}"
        )
    if groups < 1 or dim % groups != 0:
        raise ValueError(f"{name} has G={groups} groups, which must divide dim={dim}")
    return "grouped", groups


def check_selective_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state, backend: str) -> ScanShapes:
    """Validate the arguments of `selective_scan` and return the sizes of the call."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    check_tensor("u", u, ndim=3)
    batch, dim, length = u.shape
    if length < 1:
        raise ValueError(f"u must have a sequence length L >= 1, got shape {_shape(u)}")
    check_tensor("delta", delta, ndim=3)
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape (batch, dim, L) = {_shape(u)}, got {_shape(delta)}")
    if delta.dtype != u.dtype:
        raise TypeError(f"delta must have u's dtype {u.dtype}, got {delta.dtype}")
    if not isinstance(A, torch.Tensor):
        raise TypeError(f"A must be a torch.Tensor, got {type(A).__name__}")
    if A.is_complex():
        raise TypeError("A must be real (float32, or float64 with float64 inputs); complex A is not supported")
    if A.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"A must be float32 (or float64), got {A.dtype}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must have shape (dim, N) with dim={dim}, got {_shape(A)}")
    d_state = A.shape[1]
    if not 1 <= d_state <= MAX_D_STATE:
        raise ValueError(f"A's d_state N={d_state} is out of range: 1 <= N <= {MAX_D_STATE}")
    b_form, b_groups = _bc_form("B", B, batch, dim, length, d_state)
    c_form, c_groups = _bc_form("C", C, batch, dim, length, d_state)
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is None:
            continue
        check_tensor(name, t, ndim=1)
        if t.shape[0] != dim:
            raise ValueError(f"{name} must have shape (dim,) = ({dim},), got {_shape(t)}")
    if z is not None:
        check_tensor("z", z, ndim=3)
        if z.shape != u.shape:
            raise ValueError(f"z must have u's shape (batch, dim, L) = {_shape(u)}, got {_shape(z)}")
    if initial_state is not None:
        check_tensor("initial_state", initial_state, ndim=3)
        if tuple(initial_state.shape) != (batch, dim, d_state):
            raise ValueError(
                f"initial_state must have shape (batch, dim, N) = ({batch}, {dim}, {d_state}), "
                f"got {_shape(initial_state)}"
            )
    named = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias,
             "initial_state": initial_state}
    devices = {n: t.device for n, t in named.items() if t is not None}
    if len(set(devices.values())) > 1:
        seen = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all selective_scan tensors must be on one device; got {seen}")
    return ScanShapes(batch, dim, length, d_state, b_form, c_form, b_groups, c_groups)


def check_causal_conv1d_args(x, weight, bias, activation, backend: str, *, reverse: bool = False,
                             initial_states=None, return_final_states: bool = False) -> None:
    """Validate the arguments of `causal_conv1d` (x (batch, dim, L), weight (dim, W), bias (dim,),
    initial_states (batch, dim, W-1) in x's dtype)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    check_tensor("x", x, ndim=3)
    batch, dim, length = x.shape
    if length < 1:
        raise ValueError(f"x must have a sequence length L >= 1, got shape {_shape(x)}")
    check_tensor("weight", weight, ndim=2)
    if weight.shape[0] != dim:
        raise ValueError(f"weight must have shape (dim, width) with dim={dim}, got {_shape(weight)}")
    width = weight.shape[1]
    if not 2 <= width <= 4:
        raise ValueError(f"weight width must be in 2..4, got {width} (shape {_shape(weight)})")
    if bias is not None:
        check_tensor("bias", bias, ndim=1)
        if bias.shape[0] != dim:
            raise ValueError(f"bias must have shape (dim,) = ({dim},), got {_shape(bias)}")
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
    if not isinstance(reverse, bool) or not isinstance(return_final_states, bool):
        raise TypeError(f"reverse and return_final_states must be bools, got {reverse!r} and {return_final_states!r}")
    if reverse and (initial_states is not None or return_final_states):
        raise ValueError("causal_conv1d: initial_states / return_final_states stream a causal conv chunk by chunk; "
                         "they are not supported with reverse=True (the anti-causal conv reads future inputs)")
    if initial_states is not None:
        check_tensor("initial_states", initial_states, ndim=3)
        if tuple(initial_states.shape) != (batch, dim, width - 1):
            raise ValueError(f"initial_states must have shape (batch, dim, W-1) = ({batch}, {dim}, {width - 1}), "
                             f"got {_shape(initial_states)}")
        if initial_states.dtype != x.dtype:
            raise TypeError(f"initial_states must have x's dtype {x.dtype}, got {initial_states.dtype}")
    named = {"x": x, "weight": weight, "bias": bias, "initial_states": initial_states}
    devices = {n: t.device for n, t in named.items() if t is not None}
    if len(set(devices.values())) > 1:
        seen = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all causal_conv1d tensors must be on one device; got {seen}")


def check_add_rms_norm_args(x, residual, weight, eps, backend: str) -> None:
    """Validate `add_rms_norm` arguments (see `mambasuite.kernels.add_rms_norm`)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    check_tensor("x", x, ndim=tuple(range(1, 9)))
    dim = x.shape[-1]
    if residual is not None:
        check_tensor("residual", residual, ndim=x.dim())
        if residual.shape != x.shape:
            raise ValueError(f"residual must have x's shape {_shape(x)}, got {_shape(residual)}")
    check_tensor("weight", weight, ndim=1)
    if weight.shape[0] != dim:
        raise ValueError(f"weight must have shape (dim,) = ({dim},) (x's last dim), got {_shape(weight)}")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    devices = {t.device for t in (x, residual, weight) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"all add_rms_norm tensors must be on one device; got {sorted(map(str, devices))}")
