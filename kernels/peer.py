"""Adapters to the peer libraries mamba-ssm and causal-conv1d (optional; for benchmarks and cross-checks only).

Neither is vendored: when importable, `backend="mamba_ssm"` calls mamba-ssm's CUDA `selective_scan_fn`
or causal-conv1d's CUDA `causal_conv1d_fn` (the conv mamba-ssm's Mamba block uses); otherwise the call
raises. Neither op has a reverse mode, so reverse runs the way Vim and Caduceus run it (flip, op, flip
back); the scan op has no initial state either.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types


def _import_selective_scan_fn():
    """mamba-ssm's `selective_scan_fn`, importing only its ops package.

    mamba_ssm/__init__ imports every model (and transformers), so the top package is stubbed with
    just its path before the ops module is imported.
    """
    if "mamba_ssm" not in sys.modules:
        spec = importlib.util.find_spec("mamba_ssm")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(
                "backend='mamba_ssm' needs the mamba-ssm package with its CUDA extension "
                "(pip install mamba-ssm --no-build-isolation); it is not importable here"
            )
        pkg = types.ModuleType("mamba_ssm")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["mamba_ssm"] = pkg
    try:
        module = importlib.import_module("mamba_ssm.ops.selective_scan_interface")
    except ImportError as err:
        raise RuntimeError(f"backend='mamba_ssm': mamba-ssm is installed but its ops do not import: {err}") from err
    return module.selective_scan_fn


def selective_scan_mamba_ssm(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                             return_last_state=False, *, reverse=False, initial_state=None):
    """Same contract as `selective_scan_ref`, computed by mamba-ssm's CUDA kernel."""
    if not u.is_cuda:
        raise RuntimeError(f"backend='mamba_ssm' runs on CUDA tensors only; u is on {u.device}")
    if initial_state is not None:
        raise ValueError("backend='mamba_ssm' does not support initial_state; use backend='triton' or 'reference'")
    fn = _import_selective_scan_fn()
    if not reverse:
        return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)

    def flip(t):
        return None if t is None or t.dim() < 3 else t.flip(-1)

    res = fn(flip(u), flip(delta), A, flip(B) if B.dim() >= 3 else B, flip(C) if C.dim() >= 3 else C, D,
             flip(z), delta_bias, delta_softplus, return_last_state)
    if return_last_state:
        return res[0].flip(-1), res[1]
    return res.flip(-1)


def _import_causal_conv1d_fn():
    """causal-conv1d's `causal_conv1d_fn` (the package mamba-ssm imports for its conv)."""
    try:
        module = importlib.import_module("causal_conv1d")
    except ImportError as err:
        raise RuntimeError(
            "causal_conv1d backend='mamba_ssm' needs the causal-conv1d package with its CUDA extension "
            f"(pip install causal-conv1d --no-build-isolation); it is not importable here: {err}"
        ) from err
    return module.causal_conv1d_fn


def _channel_last(t):
    """`t` (batch, C, T) as a channel-last view (a copy unless it already is one)."""
    return t if t.stride(1) == 1 else t.transpose(1, 2).contiguous().transpose(1, 2)


def causal_conv1d_peer(x, weight, bias=None, activation=None, *, reverse=False, initial_states=None,
                       return_final_states=False):
    """Same contract as `causal_conv1d_ref`, computed by causal-conv1d's CUDA kernel.

    Its streaming states exist only for channel-last x, so with initial_states / return_final_states a
    channel-first x (and initial_states) is copied to channel-last first; its bias must have the weight's
    dtype, so bias is cast (both are adapter costs, not part of the peer's kernel).
    """
    if not x.is_cuda:
        raise RuntimeError(f"causal_conv1d backend='mamba_ssm' runs on CUDA tensors only; x is on {x.device}")
    fn = _import_causal_conv1d_fn()
    bias = bias.to(weight.dtype) if bias is not None else None
    if reverse:  # the checks refuse streaming states with reverse
        return fn(x.flip(-1), weight, bias, activation=activation).flip(-1)
    if initial_states is None and not return_final_states:
        return fn(x, weight, bias, activation=activation)
    x = _channel_last(x)
    initial_states = _channel_last(initial_states) if initial_states is not None else None
    return fn(x, weight, bias, initial_states=initial_states, return_final_states=return_final_states,
              activation=activation)


def add_rms_norm_mamba_ssm(x, residual, weight, eps=1e-5, residual_in_fp32=True):
    """Same contract as `add_rms_norm_ref`, computed by mamba-ssm's Triton fused add + RMSNorm (`rms_norm_fn`
    with prenorm=True), the norm its own Mamba blocks use."""
    _import_selective_scan_fn()  # stubs the top package and reports a missing mamba-ssm clearly
    try:
        from mamba_ssm.ops.triton.layer_norm import rms_norm_fn
    except ImportError as err:
        raise RuntimeError(f"add_rms_norm backend='mamba_ssm': mamba-ssm's layer_norm does not import: {err}") from err
    out, new_residual = rms_norm_fn(x, weight, None, residual=residual, eps=eps, prenorm=True,
                                    residual_in_fp32=residual_in_fp32)
    return out, new_residual
