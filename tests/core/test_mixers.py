"""Mixers (Mamba, BiMamba, SS2D) against independent float64 loop references written here.

The references share no code with the package: their own conv loop, their own sequential scan, and
torch.flip / permute for the reversed and 2D routes (the package uses the kernels' reverse mode).
"""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

import mambasuite.core.mixers as mixers_module
from mambasuite.core import SS2D, BiMamba, Mamba

F64 = torch.float64


# ----------------------------------------------------------------------------------------------
# Independent float64 references.
# ----------------------------------------------------------------------------------------------

def softplus(x):
    return torch.log1p(torch.exp(x))


def ref_causal_conv(x, w, b):
    """x (batch, E, L), w (E, W), b (E,) or None: out[t] = b + sum_k w[k] x[t - (W-1) + k]."""
    length, width = x.shape[-1], w.shape[1]
    out = torch.zeros_like(x)
    for t in range(length):
        for k in range(width):
            src = t - (width - 1) + k
            if src >= 0:
                out[:, :, t] += w[:, k] * x[:, :, src]
    return out if b is None else out + b[:, None]


def ref_scan(u, delta, A, B, C, D):
    """Sequential scan. u, delta (batch, E, L); A (E, N); B, C (batch, N, L) or (E, N); D (E,)."""
    batch, e, length = u.shape
    h = torch.zeros(batch, e, A.shape[1], dtype=F64)
    ys = []
    for t in range(length):
        Bt = B[:, None, :, t] if B.dim() == 3 else B[None]
        Ct = C[:, None, :, t] if C.dim() == 3 else C[None]
        dt = delta[:, :, t, None]
        h = torch.exp(dt * A) * h + dt * Bt * u[:, :, t, None]
        ys.append((h * Ct).sum(-1))
    return torch.stack(ys, dim=-1) + D[:, None] * u


def branch_params(m, s=""):
    """One direction's tensors, read from a 1D mixer by name (s = "" or "_b")."""
    get = lambda name: getattr(m, name)  # noqa: E731
    p = dict(conv_w=get(f"conv1d{s}").weight[:, 0], conv_b=get(f"conv1d{s}").bias,
             A_log=get(f"A{s}_log"), D=get(f"D{s}"))
    if m.selective:
        p.update(x_proj=get(f"x_proj{s}").weight, dt_w=get(f"dt_proj{s}").weight, dt_b=get(f"dt_proj{s}").bias)
    else:
        p.update(dt_bias=get(f"dt_bias{s}"), B=get(f"B{s}"), C=get(f"C{s}"))
    return p


def ref_branch(p, x, z, d_state, dt_rank):
    """Forward-direction branch: x, z (batch, E, L) -> (batch, E, L)."""
    u = F.silu(ref_causal_conv(x, p["conv_w"], p["conv_b"]))
    if "x_proj" in p:
        x_dbl = torch.einsum("bel,ce->bcl", u, p["x_proj"])
        dt, B, C = x_dbl[:, :dt_rank], x_dbl[:, dt_rank:dt_rank + d_state], x_dbl[:, dt_rank + d_state:]
        delta = softplus(torch.einsum("brl,er->bel", dt, p["dt_w"]) + p["dt_b"][:, None])
    else:
        delta = softplus(p["dt_bias"])[None, :, None].expand_as(u)
        B, C = p["B"], p["C"]
    y = ref_scan(u, delta, -torch.exp(p["A_log"]), B, C, p["D"])
    return y * F.silu(z)


def ref_in_proj(m, h):
    xz = (h @ m.in_proj.weight.t()).transpose(1, 2)
    return xz.chunk(2, dim=1)


def ref_mamba(m, h):
    x, z = ref_in_proj(m, h)
    y = ref_branch(branch_params(m), x, z, m.d_state, m.dt_rank)
    return y.transpose(1, 2) @ m.out_proj.weight.t()


def ref_bimamba_internal(m, h, combine):
    x, z = ref_in_proj(m, h)
    y_f = ref_branch(branch_params(m, ""), x, z, m.d_state, m.dt_rank).transpose(1, 2)
    y_b = ref_branch(branch_params(m, "_b"), x.flip(-1), z.flip(-1), m.d_state, m.dt_rank).flip(-1).transpose(1, 2)
    W = m.out_proj.weight.t()
    if combine == "add":
        return (y_f + y_b) @ W
    if combine == "mean":
        return (y_f + y_b) / 2 @ W
    return (y_f @ W) * (y_b @ W)


def make_double(module_cls, *args, seed=0, **kwargs):
    torch.manual_seed(seed)
    return module_cls(*args, backend="reference", **kwargs).double()


# ----------------------------------------------------------------------------------------------
# Mamba
# ----------------------------------------------------------------------------------------------

def test_mamba_output_shape_and_dtype():
    m = Mamba(16, d_state=4)
    out = m(torch.randn(3, 7, 16))
    assert out.shape == (3, 7, 16) and out.dtype == torch.float32


@pytest.mark.parametrize("selective", [True, False])
def test_mamba_matches_float64_loop_reference(selective):
    m = make_double(Mamba, 16, d_state=4, selective=selective)
    h = torch.randn(2, 9, 16, dtype=F64)
    torch.testing.assert_close(m(h), ref_mamba(m, h), rtol=0, atol=1e-10)


def test_mamba_gradients_reach_every_parameter():
    torch.manual_seed(0)
    m = Mamba(16, d_state=4, bias=True)
    m(torch.randn(2, 6, 16)).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_mamba_deterministic_with_seed():
    x = torch.randn(2, 5, 16)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        outs.append(Mamba(16, d_state=4)(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    torch.manual_seed(124)
    assert not torch.allclose(Mamba(16, d_state=4)(x), outs[0])


def test_mamba_initialisation_matches_mamba_ssm():
    torch.manual_seed(0)
    m = Mamba(40, d_state=8, expand=2)  # d_inner 80, dt_rank ceil(40/16) = 3
    assert m.dt_rank == 3 and m.d_inner == 80
    expected_A_log = torch.log(torch.arange(1, 9, dtype=torch.float32)).expand(80, 8)
    assert m.A_log.dtype == torch.float32
    torch.testing.assert_close(m.A_log, expected_A_log, rtol=0, atol=0)
    torch.testing.assert_close(m.D, torch.ones(80), rtol=0, atol=0)
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert dt.max() / dt.min() > 10  # log-uniform over two decades, not a constant
    bound = 3 ** -0.5
    assert m.dt_proj.weight.abs().max() <= bound and m.dt_proj.weight.abs().max() > 0.5 * bound
    assert m.A_log._no_weight_decay and m.D._no_weight_decay and m.dt_proj.bias._no_reinit
    assert m.in_proj.bias is None and m.out_proj.bias is None and m.x_proj.bias is None
    assert m.conv1d.bias is not None and m.conv1d.weight.shape == (80, 1, 4)


def test_mamba_dt_floor_and_constant_init():
    torch.manual_seed(0)
    m = Mamba(16, dt_min=1e-6, dt_max=1e-5, dt_init_floor=1e-4, dt_init="constant", dt_scale=2.0)
    torch.testing.assert_close(F.softplus(m.dt_proj.bias), torch.full((32,), 1e-4), rtol=1e-4, atol=0)
    torch.testing.assert_close(m.dt_proj.weight, torch.full_like(m.dt_proj.weight, 2.0 * m.dt_rank ** -0.5))


def test_mamba_parameter_count_matches_hand_count():
    # d_model 32, d_state 16, d_conv 4, expand 2 -> d_inner 64, dt_rank 2:
    # in_proj 32*128 + conv 64*4+64 + x_proj 64*(2+32) + dt_proj 2*64+64 + A_log 64*16 + D 64 + out_proj 64*32
    hand = 4096 + 320 + 2176 + 192 + 1024 + 64 + 2048
    assert hand == 9920
    assert sum(p.numel() for p in Mamba(32).parameters()) == hand
    # LTI: no x_proj/dt_proj; dt_bias 64 + B 64*16 + C 64*16 instead.
    assert sum(p.numel() for p in Mamba(32, selective=False).parameters()) == hand - 2176 - 192 + 64 + 2 * 1024


def test_mamba_lti_has_no_input_dependent_projections():
    m = Mamba(16, d_state=4, selective=False)
    assert not hasattr(m, "x_proj") and not hasattr(m, "dt_proj")
    assert m.B.shape == (32, 4) and m.C.shape == (32, 4) and m.dt_bias.shape == (32,)


def test_mamba_lti_scan_arguments_do_not_depend_on_input(monkeypatch):
    seen = []
    real = mixers_module.selective_scan

    def spy(u, delta, A, B, C, *args, **kwargs):
        seen.append((delta.detach().clone(), B, C))
        return real(u, delta, A, B, C, *args, **kwargs)

    monkeypatch.setattr(mixers_module, "selective_scan", spy)
    for selective in (False, True):
        seen.clear()
        torch.manual_seed(0)
        m = Mamba(16, d_state=4, selective=selective)
        m(torch.randn(2, 6, 16))
        m(torch.randn(2, 6, 16))
        (d1, B1, C1), (d2, B2, C2) = seen
        if selective:  # input-dependent (batch, N, L) B/C and delta
            assert B1.shape == (2, 4, 6) and not torch.equal(B1, B2) and not torch.equal(d1, d2)
        else:  # time-invariant parameters, delta fixed (only delta_bias = dt_bias matters)
            assert B1 is m.B and C1 is m.C and B2 is m.B and C2 is m.C
            assert torch.equal(d1, d2) and d1.abs().max() == 0


@pytest.mark.parametrize("reverse", [False, True])
def test_mamba_causality(reverse):
    m = make_double(Mamba, 16, d_state=4, reverse=reverse)
    x = torch.randn(1, 12, 16, dtype=F64)
    t = 6
    x2 = x.clone()
    x2[:, t] += 1.0
    diff = (m(x2) - m(x)).abs().amax(dim=(0, 2))
    untouched = slice(0, t) if not reverse else slice(t + 1, None)
    touched = slice(t, None) if not reverse else slice(0, t + 1)
    assert diff[untouched].max() == 0
    assert (diff[touched] > 0).all()


def test_mamba_reverse_equals_flipped_forward():
    fwd = make_double(Mamba, 16, d_state=4)
    rev = make_double(Mamba, 16, d_state=4, reverse=True)
    rev.load_state_dict(fwd.state_dict())
    x = torch.randn(2, 10, 16, dtype=F64)
    torch.testing.assert_close(rev(x), fwd(x.flip(1)).flip(1), rtol=0, atol=1e-12)


def test_mamba_names_match_mamba_ssm():
    names = set(Mamba(16).state_dict())
    assert names == {"in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
                     "dt_proj.bias", "A_log", "D", "out_proj.weight"}


# ----------------------------------------------------------------------------------------------
# BiMamba
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("combine", ["add", "mean", "mul"])
def test_bimamba_internal_matches_flip_reference(combine):
    m = make_double(BiMamba, 16, d_state=4, combine=combine)
    h = torch.randn(2, 8, 16, dtype=F64)
    torch.testing.assert_close(m(h), ref_bimamba_internal(m, h, combine), rtol=0, atol=1e-10)


def test_bimamba_internal_lti_matches_flip_reference():
    m = make_double(BiMamba, 16, d_state=4, selective=False, combine="mean")
    h = torch.randn(2, 8, 16, dtype=F64)
    torch.testing.assert_close(m(h), ref_bimamba_internal(m, h, "mean"), rtol=0, atol=1e-10)
    assert {"dt_bias", "dt_bias_b", "B", "B_b", "C", "C_b"} <= set(m.state_dict())


def test_bimamba_has_vim_v2_parameter_names():
    names = set(BiMamba(16).state_dict())
    assert names == {
        "in_proj.weight", "out_proj.weight",
        "conv1d.weight", "conv1d.bias", "conv1d_b.weight", "conv1d_b.bias",
        "x_proj.weight", "x_proj_b.weight",
        "dt_proj.weight", "dt_proj.bias", "dt_proj_b.weight", "dt_proj_b.bias",
        "A_log", "A_b_log", "D", "D_b",
    }


def test_bimamba_directions_have_separate_parameters_and_both_get_gradients():
    torch.manual_seed(0)
    m = BiMamba(16, d_state=4)
    assert m.conv1d.weight is not m.conv1d_b.weight and m.A_log is not m.A_b_log
    m(torch.randn(2, 6, 16)).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bimamba_is_bidirectional():
    m = make_double(BiMamba, 16, d_state=4)
    x = torch.randn(1, 10, 16, dtype=F64)
    x2 = x.clone()
    x2[:, 5] += 1.0
    diff = (m(x2) - m(x)).abs().amax(dim=(0, 2))
    assert (diff > 0).all()  # every position sees position 5


@pytest.mark.parametrize("combine", ["add", "mul"])
def test_bimamba_external_tied_equals_internal(combine):
    """Caduceus' weight-tied BiMambaWrapper layout equals the internal variant with the same weights."""
    ext = make_double(BiMamba, 16, d_state=4, variant="external", share_projections=True, combine=combine)
    assert ext.mamba_rev.in_proj.weight is ext.mamba_fwd.in_proj.weight
    assert ext.mamba_rev.out_proj.weight is ext.mamba_fwd.out_proj.weight
    assert ext.mamba_fwd.conv1d.weight is not ext.mamba_rev.conv1d.weight
    internal = make_double(BiMamba, 16, d_state=4, combine=combine)
    rename = {"mamba_fwd.": "", "mamba_rev.": "_b"}
    state = {}
    for key, value in ext.state_dict().items():
        prefix, name = key.split(".", 1)
        module, _, leaf = name.partition(".")
        if module in ("in_proj", "out_proj"):
            state[name] = value
        elif module == "A_log":
            state["A" + rename[prefix + "."] + "_log"] = value
        elif leaf:
            state[f"{module}{rename[prefix + '.']}.{leaf}"] = value
        else:
            state[module + rename[prefix + "."]] = value
    internal.load_state_dict(state)
    h = torch.randn(2, 8, 16, dtype=F64)
    torch.testing.assert_close(ext(h), internal(h), rtol=0, atol=1e-10)


def test_bimamba_external_concat_matches_flip_reference():
    m = make_double(BiMamba, 16, d_state=4, variant="external")
    assert m.combine == "concat" and m.out_proj.weight.shape == (16, 32) and m.out_proj.bias is not None
    assert m.mamba_rev.in_proj.weight is not m.mamba_fwd.in_proj.weight
    h = torch.randn(2, 8, 16, dtype=F64)
    out_f = ref_mamba(m.mamba_fwd, h)
    out_b = ref_mamba(m.mamba_rev, h.flip(1)).flip(1)  # the rev mixer's weights, run forward on flip(x)
    expected = torch.cat([out_f, out_b], dim=-1) @ m.out_proj.weight.t() + m.out_proj.bias
    torch.testing.assert_close(m(h), expected, rtol=0, atol=1e-10)
    assert m(h).shape == (2, 8, 16)
    assert (m.d_state, m.d_inner, m.dt_rank) == (4, 32, 1)


# ----------------------------------------------------------------------------------------------
# SS2D
# ----------------------------------------------------------------------------------------------

def ref_ss2d(m, x):
    """VMamba's SS2D with explicit permute/flip routes and a float64 loop scan per direction."""
    batch, height, width, _ = x.shape
    e, n, r = m.d_inner, m.d_state, m.dt_rank
    xz = x @ m.in_proj.weight.t()
    if m.gate:
        x_in, z = xz[..., :e], xz[..., e:]
    else:
        x_in, z = xz, None
    u = x_in.permute(0, 3, 1, 2)
    if m.conv2d is not None:
        u = F.conv2d(u, m.conv2d.weight, m.conv2d.bias, padding=m.d_conv // 2, groups=e)
    u = F.silu(u)
    row = u.reshape(batch, e, height * width)
    col = u.transpose(2, 3).reshape(batch, e, height * width)
    routes = [row, col, row.flip(-1), col.flip(-1)]
    A = -torch.exp(m.A_logs).view(4, e, n)
    Ds = m.Ds.view(4, e)
    outs = []
    for k, seq in enumerate(routes):
        x_dbl = torch.einsum("bdl,cd->bcl", seq, m.x_proj_weight[k])
        dt, B, C = x_dbl[:, :r], x_dbl[:, r:r + n], x_dbl[:, r + n:]
        delta = softplus(torch.einsum("brl,dr->bdl", dt, m.dt_projs_weight[k]) + m.dt_projs_bias[k][:, None])
        outs.append(ref_scan(seq, delta, A[k], B, C, Ds[k]))
    to_grid_row = lambda y: y.reshape(batch, e, height, width)  # noqa: E731
    to_grid_col = lambda y: y.reshape(batch, e, width, height).transpose(2, 3)  # noqa: E731
    y = (to_grid_row(outs[0]) + to_grid_col(outs[1]) + to_grid_row(outs[2].flip(-1))
         + to_grid_col(outs[3].flip(-1)))
    y = F.layer_norm(y.permute(0, 2, 3, 1), (e,), m.out_norm.weight, m.out_norm.bias, m.out_norm.eps)
    if z is not None:
        y = y * F.silu(z)
    return y @ m.out_proj.weight.t()


@pytest.mark.parametrize("d_state", [1, 16])
@pytest.mark.parametrize("gate", [False, True])
def test_ss2d_shape_for_non_square_input(d_state, gate):
    m = SS2D(24, d_state=d_state, gate=gate)
    out = m(torch.randn(2, 3, 5, 24))
    assert out.shape == (2, 3, 5, 24)


def test_ss2d_vmamba_v2_defaults_and_stacked_parameter_shapes():
    m = SS2D(96)  # VMamba v2 tiny: d_state 1, ssm_ratio 1, dt_rank ceil(96/16) = 6, 3x3 conv, no bias, no z
    e, n, r = 96, 1, 6
    assert (m.d_inner, m.d_state, m.dt_rank) == (e, n, r)
    assert m.in_proj.weight.shape == (e, 96) and m.conv2d.weight.shape == (e, 1, 3, 3) and m.conv2d.bias is None
    assert m.x_proj_weight.shape == (4, r + 2 * n, e)
    assert m.dt_projs_weight.shape == (4, e, r) and m.dt_projs_bias.shape == (4, e)
    assert m.A_logs.shape == (4 * e, n) and m.Ds.shape == (4 * e,)
    assert m.out_norm.weight.shape == (e,) and m.out_proj.weight.shape == (96, e)
    dt = F.softplus(m.dt_projs_bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    gated = SS2D(96, ssm_ratio=2.0, gate=True)
    assert gated.in_proj.weight.shape == (4 * 96, 96)


@pytest.mark.parametrize(("d_state", "gate", "conv_bias", "hw"),
                         [(1, False, False, (3, 5)), (16, True, True, (4, 2)), (4, False, True, (1, 6))])
def test_ss2d_matches_float64_permute_flip_reference(d_state, gate, conv_bias, hw):
    m = make_double(SS2D, 16, d_state=d_state, gate=gate, conv_bias=conv_bias, ssm_ratio=1.5)
    with torch.no_grad():  # non-trivial norm and D so that every piece is checked
        m.out_norm.weight.uniform_(0.5, 1.5)
        m.out_norm.bias.uniform_(-0.5, 0.5)
        m.Ds.uniform_(0.5, 1.5)
    x = torch.randn(2, *hw, 16, dtype=F64)
    torch.testing.assert_close(m(x), ref_ss2d(m, x), rtol=0, atol=1e-10)


def test_ss2d_every_direction_matters_and_gets_gradients():
    torch.manual_seed(0)
    m = SS2D(16, d_state=4)
    m(torch.randn(2, 3, 4, 16)).square().sum().backward()
    for k in range(4):
        assert m.x_proj_weight.grad[k].abs().sum() > 0, k
        assert m.dt_projs_weight.grad[k].abs().sum() > 0, k
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_ss2d_without_conv():
    m = make_double(SS2D, 16, d_conv=1)
    assert m.conv2d is None
    x = torch.randn(1, 2, 3, 16, dtype=F64)
    torch.testing.assert_close(m(x), ref_ss2d(m, x), rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# Validation at the public boundary
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["d_model", "d_state", "expand"])
@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "16"])
def test_mamba_rejects_bad_sizes(name, bad):
    kwargs = dict(d_model=16, d_state=4, expand=2)
    kwargs[name] = bad
    with pytest.raises(ValueError, match=f"{name} must be a positive int, got {bad!r}"):
        Mamba(**kwargs)


@pytest.mark.parametrize("bad", [0, -1, "full", 1.5])
def test_dt_rank_validation(bad):
    with pytest.raises(ValueError, match="dt_rank"):
        Mamba(16, dt_rank=bad)
    assert Mamba(16, dt_rank=5).dt_rank == 5


def test_d_conv_must_fit_the_kernels():
    with pytest.raises(ValueError, match="d_conv must be in 2..4"):
        Mamba(16, d_conv=5)
    with pytest.raises(ValueError, match="d_conv must be odd"):
        SS2D(16, d_conv=4)


def test_unknown_options_name_argument_value_and_choices():
    with pytest.raises(ValueError, match=r"variant must be one of \('internal', 'external'\), got 'outer'"):
        BiMamba(16, variant="outer")
    with pytest.raises(ValueError, match=r"combine .*must be one of \('add', 'mean', 'mul'\), got 'concat'"):
        BiMamba(16, combine="concat")
    with pytest.raises(ValueError, match=r"combine .*got 'max'"):
        BiMamba(16, variant="external", combine="max")
    with pytest.raises(ValueError, match="share_projections=False needs variant='external'"):
        BiMamba(16, share_projections=False)
    with pytest.raises(ValueError, match="dt_init must be one of"):
        Mamba(16, dt_init="uniform")
    with pytest.raises(ValueError, match="ssm_ratio"):
        SS2D(16, ssm_ratio=0)
    for cls in (Mamba, BiMamba, SS2D):
        with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'reference', 'triton', "
                                             r"'mamba_ssm'\), got 'cuda'"):
            cls(16, backend="cuda")


@pytest.mark.parametrize("shape", [(2, 16), (2, 5, 8), (1, 2, 5, 16)])
@pytest.mark.parametrize("cls", [Mamba, BiMamba])
def test_1d_mixers_reject_wrong_input_shape(cls, shape):
    m = cls(16, d_state=4)
    seen = re.escape(str(tuple(shape)))
    with pytest.raises(ValueError, match=rf"\(batch, L, d_model=16\), got {seen}"):
        m(torch.randn(*shape))


def test_ss2d_rejects_sequence_input():
    with pytest.raises(ValueError, match=r"\(batch, H, W, d_model=16\), got \(2, 5, 16\)"):
        SS2D(16)(torch.randn(2, 5, 16))


def test_mixers_run_in_bfloat16():
    torch.manual_seed(0)
    for m, x in ((Mamba(16, d_state=4), torch.randn(2, 6, 16)), (BiMamba(16, d_state=4), torch.randn(2, 6, 16)),
                 (SS2D(16, d_state=4), torch.randn(2, 3, 2, 16))):
        ref = m(x)
        out = m.to(torch.bfloat16)(x.to(torch.bfloat16))
        assert out.dtype == torch.bfloat16
        assert math.isfinite(out.float().abs().max().item())
        torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.05)


# ----------------------------------------------------------------------------------------------
# Triton backend (interpreter on CPU): the fused bidirectional and 2D scans inside the mixers.
# ----------------------------------------------------------------------------------------------

def _same_module_twice(cls, *args, **kwargs):
    torch.manual_seed(0)
    ref = cls(*args, backend="reference", **kwargs)
    ours = cls(*args, backend="triton", **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.parametrize("combine", ["mean", "mul"])
def test_bimamba_triton_backend_matches_reference(combine):
    pytest.importorskip("triton")
    ref, ours = _same_module_twice(BiMamba, 16, d_state=4, combine=combine)
    x = torch.randn(2, 19, 16)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y_ours = ref(x_ref), ours(x_ours)
    torch.testing.assert_close(y_ours, y_ref, rtol=1e-4, atol=1e-5)
    y_ref.square().sum().backward()
    y_ours.square().sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    for (name, p_ref), p_ours in zip(ref.named_parameters(), ours.parameters()):
        torch.testing.assert_close(p_ours.grad, p_ref.grad, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("fused_scan", [False, True])
def test_ss2d_triton_backend_matches_reference(fused_scan):
    pytest.importorskip("triton")
    ref, ours = _same_module_twice(SS2D, 16, d_state=4, fused_scan=fused_scan)
    x = torch.randn(2, 3, 5, 16)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y_ours = ref(x_ref), ours(x_ours)
    torch.testing.assert_close(y_ours, y_ref, rtol=1e-4, atol=1e-5)
    y_ref.square().sum().backward()
    y_ours.square().sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    for (name, p_ref), p_ours in zip(ref.named_parameters(), ours.parameters()):
        torch.testing.assert_close(p_ours.grad, p_ref.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_ss2d_fused_and_route_pair_paths_agree():
    """The fused 2D scan (the default) and the stacked route-pair path (the analytics path) are one mixer."""
    torch.manual_seed(1)
    m = SS2D(16, d_state=4, fused_scan=True)
    x = torch.randn(2, 4, 3, 16, dtype=F64)
    m = m.double()
    fused = m(x)
    m.fused_scan = False
    torch.testing.assert_close(m(x), fused, rtol=0, atol=1e-12)
    m.fused_scan, m.capture = True, lambda *args, **kwargs: None  # analytics always take the route-pair path
    torch.testing.assert_close(m(x), fused, rtol=0, atol=1e-12)


def test_ss2d_runs_the_fused_scan_by_default(monkeypatch):
    """Without analytics, a default SS2D scans through one `cross_scan_2d` call (H200: faster than route pairs at
    every VMamba stage shape, BENCHMARKS.md session 12); with `fused_scan=False` it does not call it."""
    calls = []
    real = mixers_module.cross_scan_2d
    monkeypatch.setattr(mixers_module, "cross_scan_2d", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    x = torch.randn(1, 3, 4, 8)
    SS2D(8, d_state=2)(x)
    assert len(calls) == 1
    SS2D(8, d_state=2, fused_scan=False)(x)
    assert len(calls) == 1
