"""Fused residual add + RMSNorm: Triton (interpreter on CPU) and reference vs a float64 formula, grads, errors."""

import importlib.util

import pytest
import torch

from mambasuite.kernels import add_rms_norm

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # compiled Triton on a GPU, the interpreter on CPU


def _formula64(x, residual, weight, eps):
    r = x.double() + (residual.double() if residual is not None else 0.0)
    return r * torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + eps) * weight.double(), r


def _inputs(shape, dtype, with_res, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g).to(DEVICE, dtype).requires_grad_()
    res = torch.randn(*shape, generator=g).to(DEVICE).requires_grad_() if with_res else None
    w = (1 + 0.1 * torch.randn(shape[-1], generator=g)).to(DEVICE).requires_grad_()
    return x, res, w


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("shape,with_res", [((3, 5, 48), True), ((7, 100), False), ((2, 1, 192), True)])
def test_matches_float64_formula_with_gradients(backend, shape, with_res):
    x, res, w = _inputs(shape, torch.float32, with_res, seed=len(shape))
    out, new_res = add_rms_norm(x, res, w, 1e-5, backend=backend)
    x64, res64, w64 = (t.detach().double().requires_grad_() if t is not None else None for t in (x, res, w))
    ref_out, ref_res = _formula64(x64, res64, w64, 1e-5)
    assert out.dtype == x.dtype and new_res.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(new_res.double(), ref_res, rtol=1e-6, atol=1e-6)
    g_out, g_res = torch.randn_like(ref_out), torch.randn_like(ref_res)
    (out.double() * g_out).sum().add((new_res.double() * g_res).sum()).backward()
    (ref_out * g_out).sum().add((ref_res * g_res).sum()).backward()
    for ours, ref in ((x, x64), (w, w64)) + (((res, res64),) if with_res else ()):
        torch.testing.assert_close(ours.grad.double(), ref.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_keeps_fp32_residual(dtype):
    x, res, w = _inputs((4, 64), dtype, True, seed=3)
    out_t, res_t = add_rms_norm(x, res, w, backend="triton")
    out_r, res_r = add_rms_norm(x, res, w, backend="reference")
    assert out_t.dtype == dtype and res_t.dtype == torch.float32
    torch.testing.assert_close(res_t, res_r, rtol=0, atol=0)  # the add is exact in fp32
    torch.testing.assert_close(out_t.float(), out_r.float(), rtol=1e-2, atol=1e-2)


def test_residual_in_input_dtype_when_asked():
    x, _, w = _inputs((4, 32), torch.bfloat16, False)
    res = torch.randn(4, 32).to(DEVICE, torch.bfloat16)
    for backend in ("reference", "triton"):
        _, new_res = add_rms_norm(x, res, w, residual_in_fp32=False, backend=backend)
        assert new_res.dtype == torch.bfloat16


def test_bad_inputs_are_named():
    x, res, w = _inputs((2, 8), torch.float32, True)
    with pytest.raises(ValueError, match="residual must have x's shape"):
        add_rms_norm(x, res[:, :4], w)
    with pytest.raises(ValueError, match=r"weight must have shape \(dim,\) = \(8,\)"):
        add_rms_norm(x, res, w[:4])
    with pytest.raises(ValueError, match="eps must be a positive"):
        add_rms_norm(x, res, w, eps=0)
    with pytest.raises(TypeError, match="x must be a float"):
        add_rms_norm(x.long(), None, w)
    with pytest.raises(TypeError, match="float64"):
        add_rms_norm(x.double(), None, w.double(), backend="triton")
    if importlib.util.find_spec("mamba_ssm") is None:  # the peer's norm is refused clearly when it is absent
        with pytest.raises(RuntimeError, match="mamba-ssm"):
            add_rms_norm(x, res, w, backend="mamba_ssm")


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_backward_is_bitwise_reproducible(backend):
    """The weight gradient is summed from per-program partials in a fixed order (no atomics)."""
    grads = []
    for _ in range(2):
        x, res, w = _inputs((5, 33, 64), torch.float32, True, seed=7)
        out, new_res = add_rms_norm(x, res, w, backend=backend)
        (out.sum() + new_res.square().sum()).backward()
        grads.append([t.grad.clone() for t in (x, res, w)])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


@pytest.mark.parametrize("used", ["out", "residual"])
def test_gradient_through_one_output_only(used):
    """A loss on one of the two outputs: the other's gradient is None (not a zeros tensor) and the result still
    matches the float64 formula."""
    x, res, w = _inputs((6, 40), torch.float32, True, seed=5)
    out, new_res = add_rms_norm(x, res, w, 1e-5, backend="triton")
    x64, res64, w64 = (t.detach().double().requires_grad_() for t in (x, res, w))
    ref_out, ref_res = _formula64(x64, res64, w64, 1e-5)
    (out if used == "out" else new_res).double().pow(2).sum().backward()
    (ref_out if used == "out" else ref_res).pow(2).sum().backward()
    for ours, ref in ((x, x64), (res, res64)):
        torch.testing.assert_close(ours.grad.double(), ref.grad, rtol=1e-4, atol=1e-4)
    if used == "out":
        torch.testing.assert_close(w.grad.double(), w64.grad, rtol=1e-4, atol=1e-4)
    else:
        assert w.grad is None or not w.grad.any()


def test_unused_residual_output_sends_no_gradient(monkeypatch):
    """With only `out` in the loss, the residual output's gradient reaches the backward as None (the kernel then
    skips it), and rstd is non-differentiable."""
    import mambasuite.kernels.triton.add_rms_norm as triton_norm

    x, res, w = _inputs((4, 32), torch.float32, True, seed=9)
    _, _, rstd = triton_norm._fwd(x, res, w, 1e-5, torch.float32)
    assert not rstd.requires_grad
    seen = []
    real_bwd = triton_norm._bwd
    monkeypatch.setattr(triton_norm, "_bwd", lambda g, gr, *rest: seen.append(gr) or real_bwd(g, gr, *rest))
    add_rms_norm(x, res, w, 1e-5, backend="triton")[0].sum().backward()
    assert seen == [None]
