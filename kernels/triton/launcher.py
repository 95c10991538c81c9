"""Triton kernel launches that bind and specialise their arguments once per argument pattern, not on every call.

`kernel[grid](*args, **kwargs)` binds every argument by name and specialises it (a pointer on its dtype and 16-byte
alignment, an integer on being 1, on divisibility by 16 and on its width) to find the compiled kernel, on every call.
For the scan kernels' 79 and 98 parameters that took 45 and 67 us on the H200's host, against 9 and 11 us for the
compiled kernel's own launcher (session 17, `launchprof.py`), and at small shapes a training step waits for host time.

`launch` keys the compiled kernel on at least the facts Triton specialises on, so a key never maps two of Triton's
specialisations to one kernel:

* a leading positional tensor (the launchers pass their tensors first): its dtype and whether its address is a
  multiple of 16 bytes;
* a runtime integer passed by keyword (the scan's per-direction offsets, which change with every allocation):
  whether it is 1, whether it is a multiple of 16, and its width class (i32 / i64 / u64);
* any other argument (positional shapes and strides, constexpr keywords, launch options): its value.

The first call of a key goes through Triton (which compiles or finds the kernel, and launches it); later calls run
the compiled kernel's launcher directly (so Triton's debug and instrumentation settings are read at a key's first
call). Under the CPU interpreter, or while a Triton launch hook is set (a profiler), every call goes through Triton.
Keyword arguments that are not compiled in must be integers (or bools); tensors go positionally.
"""

from __future__ import annotations

import operator

import torch
from triton import knobs
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction

_LAUNCH_OPTIONS = frozenset({"num_warps", "num_stages", "num_ctas", "maxnreg"})
_MAX_ENTRIES = 4096  # compiled-kernel keys kept (every distinct shape adds one); cleared when full


def int_key(value: int) -> tuple[bool, bool, int]:
    """What Triton specialises a runtime integer on: == 1, divisible by 16, and its type (0: i32, 1: i64, 2: u64)."""
    width = 0 if -2**31 <= value < 2**31 else 1 if -2**63 <= value < 2**63 else 2
    return value == 1, value % 16 == 0, width


def _getter(keys: tuple):
    """A function returning the tuple of `keys`' items of a dict or tuple, at C speed (operator.itemgetter)."""
    if not keys:
        return lambda _: ()
    get = operator.itemgetter(*keys)
    return get if len(keys) > 1 else (lambda items: (get(items),))


class _Pattern:
    """What one call pattern (kernel, number of positional arguments, keyword names in call order) needs per call:
    how many positional arguments lead as tensors, which keywords are runtime values (specialised, not compiled in)
    and which are compiled in, and the keyword parameters in the kernel's order (its launcher takes every parameter
    positionally)."""

    def __init__(self, kernel, args: tuple, names: tuple[str, ...]) -> None:
        params = kernel.arg_names
        unknown = set(names) - set(params) - _LAUNCH_OPTIONS
        given = len(args) + len([n for n in names if n not in _LAUNCH_OPTIONS])
        if unknown or given != len(params):
            # Triton's CPU interpreter ignores unknown keywords that compiled Triton rejects: checking here keeps
            # CI honest about the GPU launch.
            raise TypeError(f"{kernel.__name__}: launch arguments do not match its parameters (unknown keywords: "
                            f"{sorted(unknown)}; {len(args)} positional + {given - len(args)} keyword for "
                            f"{len(params)} parameters)")
        constexpr = {params[i] for i in getattr(kernel, "constexprs", ())}
        runtime = [i for i, n in enumerate(names) if n not in constexpr and n not in _LAUNCH_OPTIONS]
        self.kernel = kernel
        self.direct = isinstance(kernel, JITFunction)
        # The launchers pass their tensors first: those positions are keyed by dtype and alignment, the rest by value.
        self.n_tensors = next((i for i, a in enumerate(args) if not isinstance(a, torch.Tensor)), len(args))
        self.runtime = _getter(tuple(runtime))
        self.compiled_in = _getter(tuple(i for i in range(len(names)) if i not in runtime))
        self.ordered = _getter(tuple(params[len(args):]))


def _hooks_set() -> bool:
    """Whether a Triton launch hook is registered (Triton 3.6 keeps them in HookChains; older code sets a function)."""
    enter, leave = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
    return bool(getattr(enter, "calls", enter)) or bool(getattr(leave, "calls", leave))


_PATTERNS: dict[tuple, _Pattern] = {}
_COMPILED: dict[tuple, object] = {}


def launch_key(pattern: _Pattern, device: int, args: tuple, kwargs: dict) -> tuple:
    """The compiled-kernel key of one call (see the module docstring)."""
    values = tuple(kwargs.values())
    return (device, tuple([(t.dtype, t.data_ptr() % 16 == 0) for t in args[:pattern.n_tensors]]),
            args[pattern.n_tensors:], tuple([int_key(v) for v in pattern.runtime(values)]), pattern.compiled_in(values))


def launch(kernel, grid: tuple[int, ...], *args, **kwargs) -> None:
    """`kernel[grid](*args, **kwargs)`, with the binding done once per argument pattern (see the module docstring).

    The keywords must be given in the same order on every call of a pattern (they are matched by position)."""
    # id(kernel), not the kernel: a JITFunction's hash takes a lock and hashes its source
    pattern_id = (id(kernel), len(args), tuple(kwargs))
    pattern = _PATTERNS.get(pattern_id)
    if pattern is None or pattern.kernel is not kernel:
        pattern = _PATTERNS[pattern_id] = _Pattern(kernel, args, pattern_id[2])
    if not pattern.direct or _hooks_set():
        kernel[grid](*args, **kwargs)
        return
    device = driver.active.get_current_device()
    key = (pattern_id, *launch_key(pattern, device, args, kwargs))
    compiled = _COMPILED.get(key)
    if compiled is None:
        compiled = kernel[grid](*args, **kwargs)  # compiles (or finds) the kernel and launches it
        if any(isinstance(a, torch.Tensor) for a in key[3]):
            return  # a tensor where this pattern first had a value: never cache a key that holds a tensor
        if len(_COMPILED) >= _MAX_ENTRIES:
            _COMPILED.clear()
        _COMPILED[key] = compiled
        return
    grid_y = grid[1] if len(grid) > 1 else 1
    grid_z = grid[2] if len(grid) > 2 else 1
    compiled.run(grid[0], grid_y, grid_z, driver.active.get_current_stream(device), compiled.function,
                 compiled.packed_metadata, None, None, None, *args, *pattern.ordered(kwargs))


__all__ = ["int_key", "launch", "launch_key"]
