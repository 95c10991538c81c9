"""Adapters to the peer library mamba-ssm (optional; for benchmarks and cross-checks only).

mamba-ssm is never vendored: when it is importable, `backend="mamba_ssm"` calls its CUDA
`selective_scan_fn`; otherwise the call raises. Its op has no reverse or initial-state option, so
reverse scans are run the way Vim and Caduceus run them (flip, scan, flip back).
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
