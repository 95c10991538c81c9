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


def _same_bits(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("deterministic", [False, True])
def test_backward_ops_return_distinct_tensors_with_the_implementations_bits(deterministic):
    """The backward implementations cut their small gradient sums (dA, dD, dbias) from one zero-filled buffer; called as
    custom ops, whose outputs torch refuses to let share storage, they must hand back separate tensors with the same
    bits (distinct_outputs). Called directly, once through each route, for the single, bidirectional and 2D scans."""
    from mambasuite.kernels.triton import multi_scan as ms
    from mambasuite.kernels.triton import selective_scan as ss

    i = {k: v.detach() for k, v in _scan_inputs(seed=3).items()}
    dout = torch.randn(2, 4, 12, generator=torch.Generator().manual_seed(4))
    _, _, ckpt, seg_p = ss._scan_fwd(i["u"], i["delta"], i["A"], i["B"], i["C"], i["D"], i["z"], i["delta_bias"],
                                     None, True, False)
    args = (dout, None, i["u"], i["delta"], i["A"], i["B"], i["C"], i["D"], i["z"], i["delta_bias"], ckpt, seg_p,
            True, False, deterministic, False)
    direct, via_op = ss._scan_bwd(*args), ss._bwd_op(*args)
    assert direct[2].untyped_storage().data_ptr() == direct[5].untyped_storage().data_ptr() or deterministic
    storages = {t.untyped_storage().data_ptr() for t in via_op if t.numel()}
    assert len(storages) == sum(1 for t in via_op if t.numel())
    assert all(_same_bits(a, b) for a, b in zip(direct, via_op))

    pair = [i[k] for k in ("u", "delta", "A", "B", "C", "D", "delta_bias") for _ in range(2)]
    _, y2, ckpt2, seg2 = ms._bi_scan_fwd(*pair, i["z"], True, "add")
    args = (dout, y2, *pair, i["z"], ckpt2, seg2, True, "add", deterministic)
    assert all(_same_bits(a, b) for a, b in zip(ms._bi_scan_bwd(*args), ms._bi_bwd_op(*args)))

    g = torch.Generator().manual_seed(5)
    h, w, n = 3, 4, 2
    x = torch.randn(2, 4, h, w, generator=g)
    x2d = dict(delta=torch.randn(2, 4, 4, h * w, generator=g), A=-torch.rand(4, 4, n, generator=g),
               B=torch.randn(2, 4, n, h * w, generator=g), C=torch.randn(2, 4, n, h * w, generator=g),
               D=torch.randn(4, 4, generator=g), delta_bias=torch.randn(4, 4, generator=g))
    _, u_cols, ckpt4, seg4 = ms._x2d_scan_fwd(x, *x2d.values(), True)
    args = (torch.randn(2, 4, h, w, generator=g), x, u_cols, *x2d.values(), ckpt4, seg4, True, deterministic)
    assert all(_same_bits(a, b) for a, b in zip(ms._x2d_scan_bwd(*args), ms._x2d_bwd_op(*args)))


def test_distinct_outputs_clones_only_what_shares_storage():
    from mambasuite.kernels.triton.eager import distinct_outputs

    def impl(x: torch.Tensor) -> list[torch.Tensor]:
        flat = torch.arange(6.0)
        return [flat[:2], flat[2:], x * 2, x]

    x = torch.ones(3)
    out = distinct_outputs(impl)(x)
    assert [t.tolist() for t in out] == [[0.0, 1.0], [2.0, 3.0, 4.0, 5.0], [2.0] * 3, [1.0] * 3]
    ptrs = [t.untyped_storage().data_ptr() for t in out]
    assert len(set(ptrs)) == 4 and x.untyped_storage().data_ptr() not in ptrs


def test_zeroed_direction_views_are_zero_aligned_and_disjoint():
    from mambasuite.kernels.triton.scan_launch import _zeroed_direction_views

    shapes = {"dA": (8, 3), "dD": (8,), "gone": None, "dB": (5, 2), "dC": (2, 1, 3, 5)}
    flat, views = _zeroed_direction_views(4, shapes, "cpu")
    assert list(views) == ["dA", "dD", "dB", "dC"]  # in the dict's order (dB and dC neighbours: one cast)
    assert views["dA"].shape == (4, 8, 3) and views["dA"].stride() == (32, 3, 1)
    assert views["dD"].shape == (4, 8) and views["dD"].stride() == (32, 1)
    assert views["dC"].shape == (4, 2, 1, 3, 5) and views["dC"].stride() == (32, 15, 15, 5, 1)  # rows of dB/dC
    for t in views.values():  # every direction's row starts 128-byte aligned
        assert t.stride(0) % 32 == 0 and t.storage_offset() % 32 == 0 and not t.any()
        assert t.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
    for t in views.values():
        t.fill_(1.0)
    assert flat.numel() == 4 * 4 * 32  # four padded rows per direction
    assert int(flat.sum()) == sum(t.numel() for t in views.values())  # disjoint views; the padding stays 0
