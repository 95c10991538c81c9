"""How many compiled variants of mamba-suite's Triton kernels exist in this process.

Triton compiles one variant per specialisation of a kernel's arguments (constexprs, integer divisibility, pointer
alignment, integer width). A benchmark that sees this number grow during its timed calls measured compilation, not
the kernels; `core.scaling` records it per point so such a figure is flagged instead of reported as a time.
"""

from __future__ import annotations

import importlib


_MODULES = ("scan_kernels", "add_rms_norm", "causal_conv1d")


def _jit_kernels():
    from triton.runtime.jit import JITFunction

    for name in _MODULES:
        module = importlib.import_module(f"{__package__}.{name}")
        for value in vars(module).values():
            if isinstance(value, JITFunction):
                yield value


def compiled_variants() -> int:
    """Compiled variants of every Triton kernel of the package, over all devices (0 under the interpreter)."""
    total = 0
    for kernel in _jit_kernels():
        for entry in getattr(kernel, "device_caches", {}).values():
            total += len(entry[0])  # (kernel_cache, key cache, target, backend, binder)
    return total
