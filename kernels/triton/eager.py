"""Eager calls of the kernels' custom ops, without the dispatcher in between.

Every Triton op is a `torch.library.custom_op` (with a fake implementation and `register_autograd`) so that
`torch.compile` and `torch.export` trace through it. In eager mode that registration costs each call the
dispatcher's layers and, when autograd records the call, a walk over the op's schema. Measured on the 2-core dev
machine with the kernel launches stubbed out: one scan forward+backward took 230 us through the custom op and
157 us through this route; a BiMamba layer (d 192) 1.73 ms and 1.45 ms. At small batches that host time is
what a step waits for (BENCHMARKS.md, "Host time"; the H200's host is slower still).

`EagerOp` keeps one implementation and one autograd formula and chooses the route per call:

* traced (torch.compile / export, a fake tensor, or any TorchDispatchMode active): the custom op, so the
  tracer sees one opaque node with its fake implementation;
* eager with autograd recording: an `autograd.Function` that runs the implementation, the op's
  `setup_context` and its `backward` -- the same three functions `register_autograd` was given;
* eager without autograd (no_grad, inference, no input requiring grad): the implementation itself.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import _get_current_dispatch_mode


def tracing(args: tuple) -> bool:
    """True when a call must go through the dispatcher: compiling, exporting, fake tensors or a dispatch mode."""
    return (torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None
            or any(isinstance(a, FakeTensor) for a in args))


def distinct_outputs(impl: Callable) -> Callable:
    """`impl` for registering as a custom op: a custom op's outputs may not share storage with each other or with its
    inputs (torch checks this when the op runs), while the backward implementations return small gradients cut from
    one buffer (one fill launch for all the atomic sums). So every output whose storage was already seen is cloned
    here; `EagerOp`'s eager route calls `impl` itself and keeps the views. Same signature (the op's schema is read
    from impl's annotations through functools.wraps)."""
    @functools.wraps(impl)
    def wrapper(*args):
        out = impl(*args)
        seen = {a.untyped_storage()._cdata for a in args if isinstance(a, torch.Tensor)}
        distinct = []
        for t in out:
            key = t.untyped_storage()._cdata
            distinct.append(t.clone() if key in seen else t)
            seen.add(key)
        return type(out)(distinct)
    return wrapper


class EagerOp:
    """Call a custom op's implementation directly in eager mode and through the op when traced.

    op: the `torch.library.custom_op`; impl: the function it was built from. setup_context / backward: the
    functions given to `op.register_autograd` (None for an op without autograd, e.g. a backward op). Call it
    with the op's arguments, positionally.
    """

    def __init__(self, op, impl: Callable, setup_context: Callable | None = None,
                 backward: Callable | None = None) -> None:
        self.op = op
        self.impl = impl
        self.function = None
        if backward is not None:
            # Same formula as the op's registered autograd: setup_context saves what backward needs.
            def forward(ctx, *args):
                output = impl(*args)
                setup_context(ctx, args, output)
                return output

            self.function = type(f"Eager_{impl.__name__.strip('_')}", (torch.autograd.Function,),
                                 {"forward": staticmethod(forward), "backward": staticmethod(backward)})

    def __call__(self, *args):
        if tracing(args):
            return self.op(*args)
        if self.function is not None and torch.is_grad_enabled() and any(
                isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            return self.function.apply(*args)
        return self.impl(*args)


__all__ = ["EagerOp", "distinct_outputs", "tracing"]
