"""The PyTorch reference against the independent float64 loop, gradients, and bad input."""

from __future__ import annotations

import itertools

import pytest
import torch

from mambasuite.kernels import selective_scan
from scan_oracle import selective_scan_loop

F64 = torch.float64


def make_inputs(batch, dim, length, n, bc_form, *, groups=1, dtype=F64, with_d=True, with_z=True, with_bias=True,
                with_h0=False, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, dt=dtype):
        return torch.randn(*shape, generator=g, dtype=F64).to(dt)

    wdt = F64 if dtype == F64 else torch.float32
    A = -torch.rand(dim, n, generator=g, dtype=F64).add(0.1).to(wdt)
    shapes = {"invariant": (dim, n), "variable": (batch, n, length), "grouped": (batch, groups, n, length)}
    bc_dt = wdt if bc_form == "invariant" else dtype
    return dict(
        u=rnd(batch, dim, length), delta=rnd(batch, dim, length) * 0.5, A=A,
        B=rnd(*shapes[bc_form], dt=bc_dt), C=rnd(*shapes[bc_form], dt=bc_dt),
        D=rnd(dim, dt=wdt) if with_d else None, z=rnd(batch, dim, length) if with_z else None,
        delta_bias=rnd(dim, dt=wdt) * 0.5 if with_bias else None,
        initial_state=rnd(batch, dim, n, dt=torch.float32 if dtype != F64 else F64) if with_h0 else None,
    )


def rel_err(a, b):
    return ((a.to(F64) - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


CASES = list(itertools.product([1, 2, 7, 33, 101], [1, 4, 16, 64], ["invariant", "variable", "grouped"]))


@pytest.mark.parametrize("length,n,bc_form", CASES)
@pytest.mark.parametrize("reverse", [False, True])
def test_reference_matches_float64_loop(length, n, bc_form, reverse):
    seed = hash((length, n, bc_form, reverse)) % 1000
    flags = dict(with_d=seed % 2 == 0, with_z=seed % 3 != 0, with_bias=seed % 5 != 0, with_h0=seed % 4 == 1)
    inp = make_inputs(2, 4, length, n, bc_form, groups=2, seed=seed, **flags)
    softplus = seed % 2 == 1
    out, last = selective_scan(**inp, delta_softplus=softplus, return_last_state=True, reverse=reverse,
                               backend="reference")
    ref_out, ref_last = selective_scan_loop(**inp, delta_softplus=softplus, return_last_state=True, reverse=reverse)
    assert out.dtype == F64 and last.dtype == F64
    assert out.shape == (2, 4, length) and last.shape == (2, 4, n)
    assert rel_err(out, ref_out) <= 1e-10
    assert rel_err(last, ref_last) <= 1e-10


@pytest.mark.parametrize("bc_form", ["invariant", "variable", "grouped"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("length", [1, 5])
def test_reference_gradcheck(bc_form, reverse, length):
    inp = make_inputs(2, 4, length, 3, bc_form, groups=2, with_h0=True, seed=length)
    names = list(inp)
    tensors = [inp[k].clone().requires_grad_() for k in names]

    def fn(*ts):
        kw = dict(zip(names, ts))
        return selective_scan(**kw, delta_softplus=True, return_last_state=True, reverse=reverse, backend="reference")

    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-7)


def test_gradients_match_autograd_through_the_loop():
    """Hand-written backward vs autograd through the float64 loop, at a length that spans several chunks."""
    inp = make_inputs(2, 3, 40, 4, "variable", with_h0=True, seed=3)
    names = list(inp)
    a = {k: v.clone().requires_grad_() for k, v in inp.items()}
    b = {k: v.clone().requires_grad_() for k, v in inp.items()}
    out, last = selective_scan(**a, delta_softplus=True, return_last_state=True, backend="reference")
    ref, ref_last = selective_scan_loop(**b, delta_softplus=True, return_last_state=True)
    w, wl = torch.randn_like(out), torch.randn_like(last)
    ((out * w).sum() + (last * wl).sum()).backward()
    ((ref * w).sum() + (ref_last * wl).sum()).backward()
    for k in names:
        assert rel_err(a[k].grad, b[k].grad) <= 1e-10, k


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_inputs_compute_in_fp32(dtype):
    inp = make_inputs(2, 4, 19, 8, "variable", dtype=dtype, seed=1)
    out, last = selective_scan(**inp, delta_softplus=True, return_last_state=True, backend="reference")
    ref, ref_last = selective_scan_loop(**inp, delta_softplus=True, return_last_state=True)
    assert out.dtype == dtype and last.dtype == torch.float32
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    assert rel_err(out, ref) <= tol
    assert rel_err(last, ref_last) <= 1e-5


def test_non_contiguous_inputs():
    inp = make_inputs(2, 4, 12, 4, "variable", seed=5)
    strided = {k: (v.transpose(-1, -2).contiguous().transpose(-1, -2) if v is not None and v.dim() == 3 else v)
               for k, v in inp.items()}
    assert not strided["u"].is_contiguous()
    out = selective_scan(**strided, backend="reference")
    assert rel_err(out, selective_scan_loop(**inp)) <= 1e-12


def test_row_blocking_is_exact(monkeypatch):
    """Force many small row blocks (the path large inputs take) and compare with one block."""
    import mambasuite.kernels.reference.selective_scan as ref_mod

    inp = make_inputs(3, 6, 9, 4, "grouped", groups=3, with_h0=True, seed=7)
    whole = selective_scan(**inp, backend="reference")
    monkeypatch.setattr(ref_mod, "_BLOCK_ELEMS", 4 * 9 * 2)  # 2 channels per block
    assert rel_err(selective_scan(**inp, backend="reference"), whole.to(F64)) <= 1e-14


BAD = [
    (lambda i: i.update(u=i["u"][0]), ValueError, "u must have 3 dimensions"),
    (lambda i: i.update(delta=i["delta"][:, :, :-1]), ValueError, "delta must have u's shape"),
    (lambda i: i.update(A=i["A"].to(torch.int64)), TypeError, "A must be float32"),
    (lambda i: i.update(A=i["A"][:-1]), ValueError, "A must have shape"),
    (lambda i: i.update(A=torch.zeros(4, 257, dtype=F64)), ValueError, "N=257"),
    (lambda i: i.update(B=i["B"][:, :, :-1]), ValueError, r"B \(variable\)"),
    (lambda i: i.update(C=torch.zeros(2, 3, 4, 6, dtype=F64)), ValueError, "G=3 groups"),
    (lambda i: i.update(D=torch.zeros(5, dtype=F64)), ValueError, "D must have shape"),
    (lambda i: i.update(z=i["z"][:1]), ValueError, "z must have u's shape"),
    (lambda i: i.update(delta=i["delta"].float()), TypeError, "delta must have u's dtype"),
    (lambda i: i.update(u=i["u"].long()), TypeError, "u must be a float16"),
    (lambda i: i.update(D=torch.zeros(4, dtype=F64, device="meta")), ValueError, "one device"),
]


@pytest.mark.parametrize("mutate,exc,msg", BAD)
def test_bad_inputs_raise_clear_errors(mutate, exc, msg):
    inp = make_inputs(2, 4, 6, 4, "variable", seed=2)
    mutate(inp)
    with pytest.raises(exc, match=msg):
        selective_scan(**inp)


def test_explicit_backend_is_refused_not_swapped():
    inp = make_inputs(1, 2, 3, 2, "variable")
    with pytest.raises(ValueError, match="backend must be one of"):
        selective_scan(**inp, backend="cuda")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="mamba_ssm"):
            selective_scan(**inp, backend="mamba_ssm")
