"""Routing of the Triton ops' calls (kernels/triton/eager.py): eager calls skip the dispatcher, traced calls do
not, and both routes compute the same bits (Triton's interpreter on CPU, small shapes)."""

from __future__ import annotations

import os

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

pytest.importorskip("triton")

from mambasuite.kernels import bidirectional_scan, causal_conv1d, selective_scan  # noqa: E402

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU tensors: interpreter only")


def _scan_inputs(seed=0, length=12):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(u=r(2, 4, length).requires_grad_(), delta=r(2, 4, length).requires_grad_(),
                A=(-torch.rand(4, 3, generator=g)).requires_grad_(), B=r(2, 3, length).requires_grad_(),
                C=r(2, 3, length).requires_grad_(), D=r(4).requires_grad_(), z=r(2, 4, length).requires_grad_(),
                delta_bias=r(4).requires_grad_())


def _grads(inputs):
    return [t.grad.clone() for t in inputs.values()]


def test_eager_route_matches_the_custom_op_bitwise():
    from mambasuite.kernels.triton import selective_scan as ss

    inputs = _scan_inputs()
    out = selective_scan(**inputs, delta_softplus=True, backend="triton")
    assert type(out.grad_fn).__name__.startswith("Eager")  # no dispatcher in between
    out.square().sum().backward()
    eager_grads = _grads(inputs)
    for t in inputs.values():
        t.grad = None
    i = inputs
    op_out = ss._fwd_op(i["u"], i["delta"], i["A"], i["B"], i["C"], i["D"], i["z"], i["delta_bias"], None, True,
                        False)[0]
    assert "GeneratedBackwardFor_mambasuite_selective_scan_fwd" in type(op_out.grad_fn).__name__
    op_out.square().sum().backward()
    assert torch.equal(out, op_out)
    for name, a, b in zip(inputs, eager_grads, _grads(inputs)):
        assert torch.equal(a, b), name


def test_no_grad_calls_build_no_graph():
    inputs = _scan_inputs()
    with torch.no_grad():
        out = selective_scan(**inputs, delta_softplus=True, backend="triton")
    assert out.grad_fn is None and not out.requires_grad


def test_compiled_graph_holds_the_custom_ops_and_matches_eager():
    inputs = _scan_inputs(seed=1)
    x = torch.randn(2, 4, 12)
    weight = torch.randn(4, 4)
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def block(u):
        v = causal_conv1d(u, weight, None, "silu", backend="triton")
        return selective_scan(v, inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["D"], inputs["z"],
                              inputs["delta_bias"], delta_softplus=True, backend="triton")

    compiled = torch.compile(block, backend=capture, fullgraph=True)(x)
    targets = {str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == "call_function"}
    assert {"mambasuite.selective_scan_fwd.default", "mambasuite.causal_conv1d_fwd.default"} <= targets
    torch._dynamo.reset()
    assert torch.equal(compiled, block(x))


def test_fake_tensors_go_through_the_fake_implementation():
    inputs = {k: v.detach() for k, v in _scan_inputs().items()}
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = {k: mode.from_tensor(v) for k, v in inputs.items()}
        out = selective_scan(**fake, delta_softplus=True, backend="triton")
        pair = lambda t: (t, t)  # noqa: E731
        both = bidirectional_scan(*(pair(fake[k]) for k in ("u", "delta", "A", "B", "C", "D", "delta_bias")),
                                  z=fake["z"], combine="stack", delta_softplus=True, backend="triton")
    assert out.shape == (2, 4, 12) and both.shape == (2, 2, 4, 12)
