"""Bidirectional and 2D cross-scan ops: Triton (one launch, interpreter on CPU) against float64 references.

The references themselves are checked against independent formulations: the bidirectional one against the
float64 loop oracle on flipped copies (what Vim/Caduceus compute), the 2D one against VMamba's cross-scan
written with transposes and flips.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

import mambasuite.kernels.triton.scan_plan as scan_plan  # noqa: E402
from mambasuite.kernels import bidirectional_scan, cross_scan_2d, to_route_order  # noqa: E402
from mambasuite.kernels.reference.multi_scan import route_order  # noqa: E402
from scan_oracle import selective_scan_loop  # noqa: E402

F64 = torch.float64
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 6e-4, torch.bfloat16: 3e-2, torch.float16: 3e-3}


def _direction(batch, dim, length, n, g, *, form="variable", groups=1, dtype=torch.float32):
    def rnd(*shape, dt=dtype, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dt).to(DEVICE)

    bc = {"variable": (batch, n, length), "grouped": (batch, groups, n, length), "invariant": (dim, n)}[form]
    bc_dt = torch.float32 if form == "invariant" else dtype
    return dict(u=rnd(batch, dim, length), delta=rnd(batch, dim, length, scale=0.5),
                A=(-torch.rand(dim, n, generator=g) - 0.1).to(DEVICE), B=rnd(*bc, dt=bc_dt), C=rnd(*bc, dt=bc_dt),
                D=rnd(dim, dt=torch.float32), delta_bias=rnd(dim, dt=torch.float32, scale=0.5))


def _err(a, b):
    """Max error relative to the reference's scale, floored at 1e-2 (an exactly-zero float64 gradient, such as dA
    at L = 1, is fp32 rounding noise on the GPU)."""
    return ((a.to(F64) - b.to(F64)).abs().max() / b.to(F64).abs().max().clamp_min(1e-2)).item()


def _run_bidirectional(fwd, rev, z, combine, backend, cast=None):
    leaves = {k: (fwd[k].detach().clone(), rev[k].detach().clone()) for k in fwd}
    if cast is not None:
        leaves = {k: tuple(t.to(cast) for t in v) for k, v in leaves.items()}
    for pair in leaves.values():
        for t in pair:
            t.requires_grad_()
    zz = z.detach().clone().to(cast or z.dtype).requires_grad_()
    out = bidirectional_scan(**leaves, z=zz, combine=combine, delta_softplus=True, backend=backend)
    return out, leaves, zz


def _bidirectional_errors(fwd, rev, z, combine, g, prefix=""):
    """Errors of the Triton bidirectional scan's output and every gradient (both directions, shared z) against the
    float64 reference, under one random weighting of the output drawn from g."""
    out, leaves, zz = _run_bidirectional(fwd, rev, z, combine, "triton")
    ref, ref_leaves, ref_z = _run_bidirectional(fwd, rev, z, combine, "reference", cast=F64)
    w = torch.randn(out.shape, dtype=F64, generator=g).to(DEVICE)
    (out.to(F64) * w).sum().backward()
    (ref * w).sum().backward()
    errors = {f"{prefix}out": _err(out, ref), f"{prefix}dz": _err(zz.grad, ref_z.grad)}
    for k in leaves:
        for d in range(2):
            errors[f"{prefix}d{k}[{d}]"] = _err(leaves[k][d].grad, ref_leaves[k][d].grad)
    return errors


@pytest.mark.parametrize("combine,form,length", [
    ("add", "variable", 37), ("mean", "grouped", 70), ("mul", "variable", 1), ("stack", "invariant", 19),
])
def test_bidirectional_triton_matches_float64_reference(combine, form, length):
    g = torch.Generator().manual_seed(length)
    fwd = _direction(2, 8, length, 4, g, form=form, groups=2)
    rev = _direction(2, 8, length, 4, g, form=form, groups=2)
    z = torch.randn(2, 8, length, generator=g).to(DEVICE)
    errors = _bidirectional_errors(fwd, rev, z, combine, g)
    bad = {k: v for k, v in errors.items() if v > TOL[torch.float32]}
    assert not bad, bad


def test_bidirectional_reference_equals_flipped_copies():
    """The reverse direction = the float64 loop oracle on flipped copies, flipped back (Vim's formulation)."""
    g = torch.Generator().manual_seed(1)
    fwd = {k: v.to(F64) for k, v in _direction(2, 6, 23, 3, g).items()}
    rev = {k: v.to(F64) for k, v in _direction(2, 6, 23, 3, g).items()}
    z = torch.randn(2, 6, 23, generator=g, dtype=F64).to(DEVICE)
    pairs = {k: (fwd[k], rev[k]) for k in fwd}
    got = bidirectional_scan(**pairs, z=z, combine="stack", delta_softplus=True, backend="reference")
    y_f = selective_scan_loop(**fwd, z=z, delta_softplus=True)
    flip = lambda t: t.flip(-1) if t.dim() == 3 else t  # noqa: E731
    y_b = selective_scan_loop(**{k: flip(v) for k, v in rev.items()}, z=z.flip(-1), delta_softplus=True).flip(-1)
    assert _err(got[0], y_f) < 1e-12 and _err(got[1], y_b) < 1e-12


def test_bidirectional_segments_and_bf16(monkeypatch):
    monkeypatch.setattr(scan_plan, "FORCE_SEG_LEN", 64)
    g = torch.Generator().manual_seed(3)
    fwd = _direction(2, 4, 150, 4, g, dtype=torch.bfloat16)
    rev = _direction(2, 4, 150, 4, g, dtype=torch.bfloat16)
    z = torch.randn(2, 4, 150, generator=g).to(torch.bfloat16).to(DEVICE)
    out, leaves, zz = _run_bidirectional(fwd, rev, z, "mean", "triton")
    ref, ref_leaves, ref_z = _run_bidirectional(fwd, rev, z, "mean", "reference", cast=F64)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    ref.sum().backward()
    assert _err(out, ref) < TOL[torch.bfloat16]
    assert _err(zz.grad, ref_z.grad) < TOL[torch.bfloat16]
    assert _err(leaves["u"][1].grad, ref_leaves["u"][1].grad) < TOL[torch.bfloat16]


def test_bidirectional_deterministic_mode_is_bitwise_reproducible(monkeypatch):
    monkeypatch.setenv("MAMBASUITE_DETERMINISTIC", "1")
    g = torch.Generator().manual_seed(4)
    fwd, rev = _direction(2, 8, 40, 4, g, form="grouped", groups=2), _direction(2, 8, 40, 4, g, form="grouped", groups=2)
    z = torch.randn(2, 8, 40, generator=g).to(DEVICE)
    grads = []
    for _ in range(2):
        out, leaves, zz = _run_bidirectional(fwd, rev, z, "add", "triton")
        out.sum().backward()
        grads.append([zz.grad] + [t.grad for pair in leaves.values() for t in pair])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_bidirectional_bad_inputs_name_the_direction():
    g = torch.Generator().manual_seed(5)
    fwd, rev = _direction(1, 4, 9, 2, g), _direction(1, 4, 9, 2, g)
    pairs = {k: (fwd[k], rev[k]) for k in fwd}
    with pytest.raises(ValueError, match="combine must be one of"):
        bidirectional_scan(**pairs, combine="max")
    bad = dict(pairs, delta=(fwd["delta"], rev["delta"][..., :5]))
    with pytest.raises(ValueError, match="reverse direction: delta must have u's shape"):
        bidirectional_scan(**bad)
    with pytest.raises(TypeError, match="must be a pair"):
        bidirectional_scan(**dict(pairs, u=fwd["u"]))
    with pytest.raises(ValueError, match="D must be given for both directions or for neither"):
        bidirectional_scan(**dict(pairs, D=(fwd["D"], None)))


# ------------------------------------------------------------------------------------------------------ 2D
def _map_inputs(batch, dim, height, width, n, g, dtype=torch.float32):
    hw = height * width

    def rnd(*shape, dt=dtype, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dt).to(DEVICE)

    return dict(x=rnd(batch, dim, height, width), delta=rnd(batch, 4, dim, hw, scale=0.5),
                A=(-torch.rand(4, dim, n, generator=g) - 0.1).to(DEVICE), B=rnd(batch, 4, n, hw), C=rnd(batch, 4, n, hw),
                D=rnd(4, dim, dt=torch.float32), delta_bias=rnd(4, dim, dt=torch.float32, scale=0.5))


def _vmamba_style(x, delta, A, B, C, D, delta_bias):
    """VMamba's cross-scan written with transposes and flips, scanned by the float64 loop oracle, merged. delta, B
    and C arrive in route order (routes 1 and 3 column-major), as VMamba's projections of its copies produce them."""
    batch, dim, height, width = x.shape
    to_cols = lambda t: t.unflatten(-1, (height, width)).transpose(-1, -2).flatten(-2)  # noqa: E731
    from_cols = lambda t: t.unflatten(-1, (width, height)).transpose(-1, -2).flatten(-2)  # noqa: E731
    u = x.flatten(-2)
    out = 0
    for k in range(4):
        tr = (lambda t: t) if k % 2 == 0 else to_cols
        fl = (lambda t: t.flip(-1)) if k >= 2 else (lambda t: t)
        y = selective_scan_loop(fl(tr(u)), fl(delta[:, k]), A[k], fl(B[:, k]), fl(C[:, k]), D[k],
                                delta_bias=delta_bias[k], delta_softplus=True)
        y = fl(y)
        out = out + (y if k % 2 == 0 else from_cols(y))
    return out.view(batch, dim, height, width)


def test_route_order_is_row_and_column_major():
    assert route_order(2, 3, 1).tolist() == [0, 3, 1, 4, 2, 5]
    assert route_order(2, 3, 2).tolist() == [5, 4, 3, 2, 1, 0]


def test_cross_scan_reference_equals_vmamba_transposes_and_flips():
    g = torch.Generator().manual_seed(6)
    ins = {k: v.to(F64) for k, v in _map_inputs(2, 5, 3, 4, 3, g).items()}
    got = cross_scan_2d(**ins, delta_softplus=True, backend="reference")
    assert got.dtype == F64 and got.shape == (2, 5, 3, 4)
    assert _err(got, _vmamba_style(**ins)) < 1e-12


def test_to_route_order_reindexes_the_column_routes_column_major():
    """Routes 0 and 2 stay by pixel, routes 1 and 3 are re-indexed column-major; gradients go back to pixel order."""
    height, width = 3, 5
    t = torch.randn(2, 4, 6, height * width, dtype=F64, requires_grad=True)
    ordered = to_route_order(t, height)
    assert ordered.is_contiguous() and ordered.shape == t.shape
    steps = torch.arange(height * width)
    column_major = (steps % height) * width + steps // height
    for k in range(4):
        expected = t[:, k, :, column_major] if k % 2 else t[:, k]
        assert torch.equal(ordered[:, k], expected), k
    weight = torch.randn(t.shape, dtype=F64)
    (ordered * weight).sum().backward()
    back = weight.clone()
    back[:, 1::2][..., column_major] = weight[:, 1::2]
    assert torch.equal(t.grad, back)
    with pytest.raises(ValueError, match=r"to_route_order: expected a \(batch, 4, C, H\*W\) tensor with H = 4"):
        to_route_order(t, 4)
    with pytest.raises(ValueError, match="to_route_order: expected"):
        to_route_order(t[:, :3], height)


def test_cross_scan_per_pixel_projections_put_in_route_order_match_vmamba_on_its_copies():
    """What SS2D does: per-pixel projections of the map, reordered with to_route_order, are the tensors VMamba
    computes from its cross-scanned copies, so both give one output."""
    g = torch.Generator().manual_seed(12)
    height, width, dim, n = 3, 4, 5, 2
    x = torch.randn(2, dim, height, width, generator=g, dtype=F64)
    weight = torch.randn(4, 2 * n + dim, dim, generator=g, dtype=F64) * 0.3
    per_pixel = to_route_order(torch.einsum("bdl,kcd->bkcl", x.flatten(-2), weight), height)
    to_cols = lambda t: t.unflatten(-1, (height, width)).transpose(-1, -2).flatten(-2)  # noqa: E731
    copies = [x.flatten(-2), to_cols(x.flatten(-2))]
    vmamba = torch.stack([torch.einsum("bdl,cd->bcl", copies[k % 2], weight[k]) for k in range(4)], dim=1)
    assert torch.allclose(per_pixel, vmamba, atol=1e-12)
    delta, B, C = torch.split(per_pixel, [dim, n, n], dim=2)
    A = -torch.rand(4, dim, n, generator=g, dtype=F64) - 0.1
    D, bias = torch.randn(4, dim, generator=g, dtype=F64), torch.randn(4, dim, generator=g, dtype=F64)
    got = cross_scan_2d(x, delta, A, B, C, D, bias, delta_softplus=True, backend="reference")
    assert _err(got, _vmamba_style(x, delta, A, B, C, D, bias)) < 1e-12


def _cross_scan_errors(ins, g, prefix=""):
    """(output, errors): the Triton 2D cross-scan's output, and the errors of it and of every input's gradient against
    the float64 reference, under one random weighting of the output drawn from g."""
    ours = {k: v.clone().requires_grad_() for k, v in ins.items()}
    ref = {k: v.to(F64).requires_grad_() for k, v in ins.items()}
    out = cross_scan_2d(**ours, delta_softplus=True, backend="triton")
    expected = cross_scan_2d(**ref, delta_softplus=True, backend="reference")
    w = torch.randn(out.shape, dtype=F64, generator=g).to(DEVICE)
    (out.to(F64) * w).sum().backward()
    (expected * w).sum().backward()
    return out, {f"{prefix}out": _err(out, expected), **{f"{prefix}d{k}": _err(ours[k].grad, ref[k].grad) for k in ins}}


@pytest.mark.parametrize("height,width,n,seg", [(5, 7, 1, None), (6, 4, 16, None), (9, 11, 4, 32)])
def test_cross_scan_triton_matches_float64_reference(monkeypatch, height, width, n, seg):
    monkeypatch.setattr(scan_plan, "FORCE_SEG_LEN", seg)
    g = torch.Generator().manual_seed(height * width)
    ins = _map_inputs(1 if seg else 2, 8, height, width, n, g)
    out, errors = _cross_scan_errors(ins, g)
    assert out.dtype == torch.float32 and out.shape == (1 if seg else 2, 8, height, width)
    bad = {k: v for k, v in errors.items() if v > TOL[torch.float32]}
    assert not bad, bad


@pytest.mark.parametrize("fwd_warps,bwd_warps", [(1, 1), (2, 1), (1, 2)])
def test_multi_direction_forward_tile_longer_than_backward_tile(monkeypatch, fwd_warps, bwd_warps):
    """The 2D launch at mid lengths runs a forward tile four times the backward's (checkpoints inside the forward
    tile, the ones past the map masked), on all four routes; one-warp programs reverse the right-to-left routes
    with tl.gather. Also the bidirectional launch under the same tiles."""
    for key, value in dict(BLOCK_T=64, BLOCK_D=2, WARPS=fwd_warps, BWD_BLOCK_T=16, BWD_BLOCK_D=2,
                           BWD_WARPS=bwd_warps).items():
        monkeypatch.setenv(f"MAMBASUITE_SCAN_{key}", str(value))
    g = torch.Generator().manual_seed(17)
    ins = _map_inputs(1, 4, 9, 11, 4, g)  # 99 steps per route: two forward tiles, seven checkpoints
    _, errors = _cross_scan_errors(ins, g)
    fwd, rev = _direction(1, 4, 99, 4, g), _direction(1, 4, 99, 4, g)
    z = torch.randn(1, 4, 99, generator=g).to(DEVICE)
    errors.update(_bidirectional_errors(fwd, rev, z, "add", g, prefix="bidir "))
    bad = {k: v for k, v in errors.items() if v > TOL[torch.float32]}
    assert not bad, bad


@pytest.mark.parametrize("seg", [None, 512])
def test_multi_direction_long_tiles_of_bf16(monkeypatch, seg):
    """The long-row tiles under both fused ops, bf16: 256-step one-warp backward tiles take a_{t+1} and the dh carry
    by gathers; a 512-step forward tile takes its intervals' exit states by a gather (routes forward in time) or a
    masked sum (reversed routes). Outputs and every gradient against the float64 reference, with masked tails, both
    directions / all four routes and (seg) segments."""
    for key, value in dict(BLOCK_T=512, BLOCK_D=1, WARPS=1, BWD_BLOCK_T=256, BWD_BLOCK_D=2, BWD_WARPS=1).items():
        monkeypatch.setenv(f"MAMBASUITE_SCAN_{key}", str(value))
    monkeypatch.setattr(scan_plan, "FORCE_SEG_LEN", seg)
    bf16 = torch.bfloat16
    g = torch.Generator().manual_seed(31)
    fwd, rev = _direction(1, 4, 600, 4, g, dtype=bf16), _direction(1, 4, 600, 4, g, dtype=bf16)
    z = torch.randn(1, 4, 600, generator=g).to(bf16).to(DEVICE)
    errors = _bidirectional_errors(fwd, rev, z, "add", g, prefix="bidir ")
    ins = _map_inputs(1, 4, 20, 17, 4, g, dtype=bf16)  # 340 steps per route
    errors.update(_cross_scan_errors(ins, g, prefix="2d ")[1])
    bad = {k: v for k, v in errors.items() if v > TOL[bf16]}
    assert not bad, bad


def test_cross_scan_bf16_map():
    g = torch.Generator().manual_seed(8)
    ins = _map_inputs(1, 8, 6, 5, 4, g, dtype=torch.bfloat16)
    out = cross_scan_2d(**ins, delta_softplus=True, backend="triton")
    expected = cross_scan_2d(**{k: v.to(F64) for k, v in ins.items()}, delta_softplus=True, backend="reference")
    assert out.dtype == torch.bfloat16  # x's dtype; the routes are summed in fp32 before the one rounding
    assert _err(out, expected) < TOL[torch.bfloat16]


def test_cross_scan_deterministic_mode_is_bitwise_reproducible_and_matches_the_reference(monkeypatch):
    monkeypatch.setenv("MAMBASUITE_DETERMINISTIC", "1")
    g = torch.Generator().manual_seed(9)
    ins = _map_inputs(2, 8, 5, 6, 4, g)
    runs = []
    for _ in range(2):
        leaves = {k: v.clone().requires_grad_() for k, v in ins.items()}
        out = cross_scan_2d(**leaves, delta_softplus=True, backend="triton")
        out.sum().backward()
        runs.append([out.detach()] + [leaves[k].grad for k in sorted(leaves)])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    ref = {k: v.to(F64).requires_grad_() for k, v in ins.items()}
    expected = cross_scan_2d(**ref, delta_softplus=True, backend="reference")
    expected.sum().backward()
    errors = {"out": _err(runs[0][0], expected),
              **{f"d{k}": _err(grad, ref[k].grad) for k, grad in zip(sorted(ins), runs[0][1:])}}
    assert all(e < TOL[torch.float32] for e in errors.values()), errors


def test_cross_scan_bad_inputs_are_named():
    g = torch.Generator().manual_seed(10)
    ins = _map_inputs(1, 4, 3, 3, 2, g)
    with pytest.raises(ValueError, match="x must be a"):
        cross_scan_2d(**dict(ins, x=ins["x"].flatten(-2)))
    with pytest.raises(ValueError, match=r"A must have shape \(4, dim, N\)"):
        cross_scan_2d(**dict(ins, A=ins["A"][:2]))
    with pytest.raises(ValueError, match="delta must have shape"):
        cross_scan_2d(**dict(ins, delta=ins["delta"][:, :3]))
    route_order_shape = r"B must have shape \(1, 4, 2\) \+ \(H\*W,\) = \(1, 4, 2, 9\), in route order"
    with pytest.raises(ValueError, match=route_order_shape):
        cross_scan_2d(**dict(ins, B=ins["B"].unflatten(-1, (3, 3))))
    with pytest.raises(ValueError, match=r"D must have shape \(4, dim\)"):
        cross_scan_2d(**dict(ins, D=ins["D"][0]))
    with pytest.raises(TypeError, match=r"\(every route\): delta must have u's dtype"):
        cross_scan_2d(**dict(ins, delta=ins["delta"].double()))


def test_launcher_rejects_arguments_the_compiled_kernel_would_reject():
    """The interpreter ignores unknown launch keywords; compiled Triton raises. The launcher checks first."""
    from mambasuite.kernels.triton.launcher import launch
    from mambasuite.kernels.triton.scan_kernels import selective_scan_fwd_kernel

    with pytest.raises(TypeError, match=r"unknown keywords: \['CARRY_FROM_LATER'\]"):
        launch(selective_scan_fwd_kernel, (1,), CARRY_FROM_LATER=True)
    with pytest.raises(TypeError, match="positional"):
        launch(selective_scan_fwd_kernel, (1,), 1, 2, 3)


def test_direction_offsets_are_scaled_only_when_every_one_is_a_multiple_of_16():
    from mambasuite.kernels.triton.scan_launch import _scaled_steps

    assert _scaled_steps({"dir_u": 592, "dir_A": -32, "dir_D": 0}) == {"dir_u": 37, "dir_A": -2, "dir_D": 0,
                                                                      "DIR_SCALE": 16}
    assert _scaled_steps({"dir_u": 592, "dir_D": 8}) == {"dir_u": 592, "dir_D": 8, "DIR_SCALE": 1}


@pytest.mark.parametrize("misalign", [0, 3])
def test_bidirectional_reads_directions_at_aligned_and_unaligned_offsets(monkeypatch, misalign):
    """Each direction's tensors are read at a fixed element offset from direction 0's; offsets that are all multiples
    of 16 reach the kernels divided by 16 (an alignment hint), others unscaled. Both give the reference's numbers,
    gradients included (here both directions' tensors are views into one buffer per input). L = 48 keeps the
    launcher's own stacked buffers (outputs, gradients, dB/dC partials) at multiples of 16 too."""
    from mambasuite.kernels.triton import scan_launch

    scales = []
    real = scan_launch._scaled_steps
    monkeypatch.setattr(scan_launch, "_scaled_steps", lambda steps: scales.append(real(steps)["DIR_SCALE"]) or
                        real(steps))
    g = torch.Generator().manual_seed(9)
    fwd, rev = _direction(2, 8, 48, 4, g), _direction(2, 8, 48, 4, g)
    z = torch.randn(2, 8, 48, generator=g).to(DEVICE)
    buffers, pairs = {}, {}
    for k in fwd:  # direction 1 starts at the first multiple of 16 after direction 0's end, plus `misalign`
        n = fwd[k].numel()
        start = -(-n // 16) * 16 + misalign
        buf = torch.zeros(start + n, dtype=fwd[k].dtype, device=DEVICE)
        buf[:n] = fwd[k].flatten()
        buf[start:] = rev[k].flatten()
        buffers[k] = buf.requires_grad_()
        pairs[k] = (buf[:n].view(fwd[k].shape), buf[start:].view(rev[k].shape))
    zz = z.clone().requires_grad_()
    out = bidirectional_scan(**pairs, z=zz, combine="add", delta_softplus=True, backend="triton")
    ref, ref_leaves, ref_z = _run_bidirectional(fwd, rev, z, "add", "reference", cast=F64)
    w = torch.randn(out.shape, dtype=F64, generator=g).to(DEVICE)
    (out.to(F64) * w).sum().backward()
    (ref * w).sum().backward()
    assert set(scales) == {16 if misalign == 0 else 1}
    errors = {"out": _err(out, ref), "dz": _err(zz.grad, ref_z.grad)}
    for k, buf in buffers.items():
        n = fwd[k].numel()
        start = buf.numel() - n
        errors[f"d{k}[0]"] = _err(buf.grad[:n].view(fwd[k].shape), ref_leaves[k][0].grad)
        errors[f"d{k}[1]"] = _err(buf.grad[start:].view(rev[k].shape), ref_leaves[k][1].grad)
    bad = {k: v for k, v in errors.items() if v > TOL[torch.float32]}
    assert not bad, bad


def test_bidirectional_internal_outputs_carry_no_gradient():
    """The stacked outputs kept for "mul", the checkpoints and the segment products are non-differentiable, so
    autograd allocates no zero gradients for them."""
    import mambasuite.kernels.triton.multi_scan as triton_multi

    g = torch.Generator().manual_seed(5)
    fwd, rev = _direction(1, 4, 12, 2, g), _direction(1, 4, 12, 2, g)
    flat = [t.requires_grad_() for name in ("u", "delta", "A", "B", "C", "D", "delta_bias")
            for t in (fwd[name], rev[name])]
    out, kept, ckpt, seg_p = triton_multi._bi_fwd(*flat, None, True, "mul")
    assert out.requires_grad and kept.numel() > 0
    assert not (kept.requires_grad or ckpt.requires_grad or seg_p.requires_grad)


def test_direction_offsets_of_two_layouts_and_refusals():
    """Four routes whose u alternates between a map and its column-major copy get (step 0, col = the copy's offset);
    slices of one stacked tensor get (their spacing, col 0); anything else is refused by name."""
    from mambasuite.kernels.triton.scan_launch import direction_offsets, direction_step

    u, u_cols = torch.zeros(2, 3, 8), torch.zeros(2, 3, 8)
    col = (u_cols.data_ptr() - u.data_ptr()) // u.element_size()
    assert direction_offsets([u, u_cols, u, u_cols], "u") == (0, col)
    stacked = torch.zeros(2, 4, 3, 8)
    assert direction_offsets([stacked[:, k] for k in range(4)], "delta") == (24, 0)
    assert direction_step([stacked[:, k] for k in range(2)], "delta") == 24
    with pytest.raises(ValueError, match="delta: the 4 directions' tensors must be evenly spaced"):
        direction_step([u, u_cols, u, u_cols], "delta")
    with pytest.raises(ValueError, match="u: the 4 directions' tensors must be laid out as slices"):
        direction_offsets([u, u_cols, u_cols, u], "u")
    with pytest.raises(ValueError, match="u: every direction's tensor must have the same dtype"):
        direction_offsets([u, u_cols.double(), u, u_cols], "u")
