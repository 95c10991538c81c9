"""The direct launcher (kernels/triton/launcher.py): its key must separate every pair of arguments that Triton
compiles differently, and a cached launch must pass every parameter, in the kernel's order, to the compiled kernel."""

from __future__ import annotations

import itertools

import pytest
import torch
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import BaseBackend
from triton.runtime.jit import JITFunction

from mambasuite.kernels.triton import launcher

INTS = [0, 1, 2, 3, 15, 16, 17, 32, 48, -1, -15, -16, -17, 2**31 - 16, 2**31 - 1, 2**31, 2**31 + 16, -2**31,
        -2**31 - 1, -2**31 - 16, 2**62, 2**63 - 16, 2**63 - 1, 2**63, 2**63 + 16, 2**64 - 16]


def triton_spec(value):
    """Triton's own specialisation of a runtime argument (type and attribute), as its binder computes it."""
    return native_specialize_impl(BaseBackend, value, False, True, True)


@pytest.mark.parametrize("a, b", list(itertools.combinations(INTS, 2)))
def test_int_key_separates_what_triton_specialises_apart(a, b):
    if triton_spec(a) != triton_spec(b):
        assert launcher.int_key(a) != launcher.int_key(b), (a, b, triton_spec(a), triton_spec(b))


def test_int_key_groups_values_triton_compiles_alike():
    # the scan's per-direction offsets change with every allocation: values alike for Triton share a key
    assert launcher.int_key(32) == launcher.int_key(4096) and triton_spec(32) == triton_spec(4096)
    assert launcher.int_key(5) == launcher.int_key(7)
    assert launcher.int_key(1) != launcher.int_key(17)


def _tensor_key(t):
    """The key part `launch_key` gives a leading tensor argument (of the fake kernel below)."""
    pattern = launcher._Pattern(_FakeKernel(), (t, 100), ("step", "BLOCK"))
    return launcher.launch_key(pattern, 0, (t, 100), dict(step=16, BLOCK=16))[1]


def test_tensor_key_separates_dtype_and_alignment():
    base = torch.zeros(64, dtype=torch.float32)
    tensors = [base, base[1:], base[2:], base[4:], base.view(torch.bfloat16), base.view(torch.bfloat16)[1:],
               base.view(torch.bfloat16)[8:], base.view(torch.float16), base.view(torch.int32)]
    for a, b in itertools.combinations(tensors, 2):
        if triton_spec(a) != triton_spec(b):
            assert _tensor_key(a) != _tensor_key(b)
    assert _tensor_key(base[4:]) == _tensor_key(base)  # 16 bytes on: aligned alike
    assert _tensor_key(base[1:]) != _tensor_key(base)


class _FakeCompiled:
    function, packed_metadata = "fn", "meta"

    def __init__(self):
        self.runs = []

    def run(self, *args):
        self.runs.append(args)


class _FakeKernel(JITFunction):
    """A JITFunction stand-in: parameters (x, n, step, BLOCK: constexpr); `kernel[grid](...)` counts the calls that
    go through Triton's binding and returns a fresh compiled kernel each time."""

    def __init__(self):  # no JITFunction.__init__: nothing to compile
        self.arg_names = ["x", "n", "step", "BLOCK"]
        self.constexprs = [3]
        self.__name__ = "fake_kernel"
        self.bound_calls = []
        self.compiled = []

    def __getitem__(self, grid):
        def bind(*args, **kwargs):
            self.bound_calls.append((grid, args, kwargs))
            self.compiled.append(_FakeCompiled())
            return self.compiled[-1]
        return bind


class _FakeDriver:
    class active:
        get_current_device = staticmethod(lambda: 0)
        get_current_stream = staticmethod(lambda device: 1234)


def test_launch_binds_once_per_key_then_runs_the_compiled_kernel(monkeypatch):
    monkeypatch.setattr(launcher, "driver", _FakeDriver)
    monkeypatch.setattr(launcher, "_PATTERNS", {})
    monkeypatch.setattr(launcher, "_COMPILED", {})
    kernel = _FakeKernel()
    x = torch.zeros(64)
    launcher.launch(kernel, (4, 2), x, 100, step=32, BLOCK=16, num_warps=1)
    assert len(kernel.bound_calls) == 1  # first call: through Triton
    # same key (another aligned tensor, another step divisible by 16): the compiled kernel's launcher, every
    # parameter positionally in the kernel's order, grid padded to three axes, the current stream
    launcher.launch(kernel, (4, 2), x[4:], 100, step=4096, BLOCK=16, num_warps=1)
    assert len(kernel.bound_calls) == 1
    (run,) = kernel.compiled[0].runs
    assert run[:9] == (4, 2, 1, 1234, "fn", "meta", None, None, None) and run[10:] == (100, 4096, 16)
    assert run[9].data_ptr() == x[4:].data_ptr()
    # each change Triton compiles apart goes back through Triton: alignment, a step of 1 or not divisible by 16,
    # a constexpr, a positional integer, a launch option
    for args, kwargs in [((x[1:], 100), dict(step=32, BLOCK=16, num_warps=1)),
                         ((x, 100), dict(step=1, BLOCK=16, num_warps=1)),
                         ((x, 100), dict(step=33, BLOCK=16, num_warps=1)),
                         ((x, 100), dict(step=32, BLOCK=32, num_warps=1)),
                         ((x, 101), dict(step=32, BLOCK=16, num_warps=1)),
                         ((x, 100), dict(step=32, BLOCK=16, num_warps=2))]:
        calls = len(kernel.bound_calls)
        launcher.launch(kernel, (4,), *args, **kwargs)
        assert len(kernel.bound_calls) == calls + 1, (args, kwargs)


def test_a_tensor_where_a_pattern_had_a_value_is_never_cached(monkeypatch):
    monkeypatch.setattr(launcher, "driver", _FakeDriver)
    monkeypatch.setattr(launcher, "_PATTERNS", {})
    monkeypatch.setattr(launcher, "_COMPILED", {})
    kernel = _FakeKernel()
    launcher.launch(kernel, (1,), torch.zeros(4), 7, step=2, BLOCK=16)
    for _ in range(2):  # keyed by identity it could never hit again, and the cache would keep the tensor alive
        launcher.launch(kernel, (1,), torch.zeros(4), torch.zeros(4), step=2, BLOCK=16)
    assert len(kernel.bound_calls) == 3 and len(launcher._COMPILED) == 1


def test_launch_refuses_arguments_the_kernel_does_not_take(monkeypatch):
    monkeypatch.setattr(launcher, "_PATTERNS", {})
    kernel = _FakeKernel()
    with pytest.raises(TypeError, match="fake_kernel.*unknown keywords: \\['STEP'\\]"):
        launcher.launch(kernel, (1,), torch.zeros(4), 1, STEP=2, BLOCK=16)
    with pytest.raises(TypeError, match="fake_kernel.*2 positional \\+ 1 keyword for 4 parameters"):
        launcher.launch(kernel, (1,), torch.zeros(4), 1, BLOCK=16)
    assert kernel.bound_calls == []


def test_launch_goes_through_triton_while_a_launch_hook_is_set(monkeypatch):
    monkeypatch.setattr(launcher, "driver", _FakeDriver)
    monkeypatch.setattr(launcher, "_PATTERNS", {})
    monkeypatch.setattr(launcher, "_COMPILED", {})
    monkeypatch.setattr(launcher.knobs.runtime, "launch_enter_hook", lambda *a: None)
    kernel = _FakeKernel()
    for _ in range(3):
        launcher.launch(kernel, (1,), torch.zeros(4), 1, step=2, BLOCK=16)
    assert len(kernel.bound_calls) == 3 and not any(c.runs for c in kernel.compiled)
