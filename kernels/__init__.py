"""mamba-suite kernels: the ops every model calls, with one backend dispatch.

Public ops (shapes in their docstrings):

* `selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
  return_last_state=False, *, reverse=False, initial_state=None, backend="auto")`
* `causal_conv1d(x, weight, bias=None, activation=None, *, reverse=False, initial_states=None,
  return_final_states=False, backend="auto")`
* `add_rms_norm(x, residual, weight, eps=1e-5, residual_in_fp32=True, *, backend="auto")`
* `bidirectional_scan(u, delta, A, B, C, D=None, delta_bias=None, z=None, *, combine="add", ...)`: pairs
  (forward, reverse) of scan inputs, both directions in one launch (multi_scan.py)
* `cross_scan_2d(x, delta, A, B, C, D=None, delta_bias=None, *, delta_softplus=False, backend="auto")`:
  VMamba's four routes over a 2D map in one launch, merged in one pass (multi_scan.py); delta, B and C in route order
  (`to_route_order(t, height)` puts per-pixel tensors in it)

`backend`:
  "auto"      -- Triton on CUDA tensors, the PyTorch reference elsewhere;
  "reference" -- the PyTorch reference (any device);
  "triton"    -- the Triton kernels (CUDA, or the CPU interpreter when TRITON_INTERPRET=1);
  "mamba_ssm" -- the peer's CUDA op, when installed (benchmarks and cross-checks): mamba-ssm's scan,
                 the causal-conv1d package's conv.
An explicit backend that cannot run raises; nothing silently falls back to another backend.
"""

from __future__ import annotations

import os

import torch

from ._checks import BACKENDS, check_add_rms_norm_args, check_causal_conv1d_args, check_selective_scan_args
from .reference import add_rms_norm_ref, causal_conv1d_ref, selective_scan_ref

__all__ = ["BACKENDS", "add_rms_norm", "bidirectional_scan", "causal_conv1d", "cross_scan_2d", "selective_scan",
           "to_route_order", "triton_available"]


_TRITON_IMPORTS: bool | None = None  # memoised: every op call asks (a plain global, which torch.compile traces)


def triton_available() -> bool:
    """True when the Triton package imports (it is a Linux-only dependency)."""
    global _TRITON_IMPORTS
    if _TRITON_IMPORTS is None:
        try:
            import triton  # noqa: F401

            _TRITON_IMPORTS = True
        except ImportError:
            _TRITON_IMPORTS = False
    return _TRITON_IMPORTS


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _resolve(backend: str, device: torch.device, op: str) -> str:
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "reference"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError(f"{op}: backend='triton' requested but the triton package is not importable")
        if device.type != "cuda" and not _interpreting():
            raise RuntimeError(
                f"{op}: backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 to run the Triton "
                f"interpreter on CPU); got tensors on {device}"
            )
    return backend


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, *, reverse=False, initial_state=None, backend="auto"):
    """Selective scan with mamba-ssm's `selective_scan_fn` semantics (see `selective_scan_ref`).

    Args:
        u, delta, z: (batch, dim, L); A: (dim, N) fp32; B, C: (dim, N), (batch, N, L) or
            (batch, G, N, L); D, delta_bias: (dim,) fp32; initial_state: (batch, dim, N).
        reverse: scan from the end of the sequence (no flip copies).
        backend: "auto" | "reference" | "triton" | "mamba_ssm".
    Returns:
        out (batch, dim, L) in u's dtype, or (out, last_state (batch, dim, N) fp32) when
        `return_last_state`.
    """
    check_selective_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state, backend)
    backend = _resolve(backend, u.device, "selective_scan")
    kwargs = dict(reverse=reverse, initial_state=initial_state)
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if backend == "reference":
        return selective_scan_ref(*args, **kwargs)
    if backend == "triton":
        from .triton.selective_scan import selective_scan_checked

        return selective_scan_checked(*args, **kwargs)
    from .peer import selective_scan_mamba_ssm

    return selective_scan_mamba_ssm(*args, **kwargs)


def causal_conv1d(x, weight, bias=None, activation=None, *, reverse=False, initial_states=None,
                  return_final_states=False, backend="auto"):
    """Depthwise causal conv1d with optional SiLU, causal-conv1d's `causal_conv1d_fn` semantics (see
    `causal_conv1d_ref` for the math).

    Args:
        x: (batch, dim, L), channel-first (L contiguous) or channel-last (a transposed (batch, L, dim)
            tensor); the Triton backend reads either in place and returns out in the same layout.
        weight: (dim, W), W in 2..4; bias: (dim,) or None.
        activation: None | "silu" | "swish".
        reverse: anti-causal (for the reverse direction of bidirectional mixers).
        initial_states: (batch, dim, W-1) in x's dtype: the inputs before t=0 (streaming; causal only).
        return_final_states: also return the last W-1 inputs (batch, dim, W-1), the next chunk's
            initial_states (causal only).
        backend: "auto" | "reference" | "triton" | "mamba_ssm" (the causal-conv1d package's CUDA op).
    Returns:
        out (batch, dim, L) in x's dtype, or (out, final_states) when `return_final_states`.
    The Triton backward adds the weight and bias gradients atomically, so they are not bitwise reproducible run to
    run unless deterministic mode is on (`torch.use_deterministic_algorithms(True)` or MAMBASUITE_DETERMINISTIC=1).
    """
    check_causal_conv1d_args(x, weight, bias, activation, backend, reverse=reverse, initial_states=initial_states,
                             return_final_states=return_final_states)
    backend = _resolve(backend, x.device, "causal_conv1d")
    kwargs = dict(reverse=reverse, initial_states=initial_states, return_final_states=return_final_states)
    if backend == "reference":
        return causal_conv1d_ref(x, weight, bias, activation, **kwargs)
    if backend == "triton":
        from .triton.causal_conv1d import causal_conv1d_triton

        return causal_conv1d_triton(x, weight, bias, activation, **kwargs)
    from .peer import causal_conv1d_peer

    return causal_conv1d_peer(x, weight, bias, activation, **kwargs)


def add_rms_norm(x, residual, weight, eps=1e-5, residual_in_fp32=True, *, backend="auto"):
    """Fused residual add + RMSNorm, the pre-norm step of a Mamba block (see `add_rms_norm_ref`).

    Args:
        x: (..., dim) the previous mixer's output (or the embeddings); residual: (..., dim) or None (first block);
        weight: (dim,); residual_in_fp32: keep the new residual in fp32.
        backend: "auto" | "reference" | "triton" | "mamba_ssm" (mamba-ssm's Triton rms_norm_fn, for the
            peer-block comparisons).
    Returns:
        (out (..., dim) in x's dtype, new_residual (..., dim)); gradients flow to x, residual and weight.
    """
    check_add_rms_norm_args(x, residual, weight, eps, backend)
    backend = _resolve(backend, x.device, "add_rms_norm")
    if backend == "reference":
        return add_rms_norm_ref(x, residual, weight, eps, residual_in_fp32)
    if backend == "triton":
        from .triton.add_rms_norm import add_rms_norm_triton

        return add_rms_norm_triton(x, residual, weight, eps, residual_in_fp32)
    from .peer import add_rms_norm_mamba_ssm

    return add_rms_norm_mamba_ssm(x, residual, weight, eps, residual_in_fp32)


# Multi-direction scans (they use _resolve above).
from .multi_scan import bidirectional_scan, cross_scan_2d, to_route_order  # noqa: E402
