"""Causal depthwise conv1d: Triton (CPU: Triton's interpreter) and the reference vs a float64 tap-sum formula.

Outputs and gradients (x, weight, bias, initial_states, through final_states too), W in 2..4, odd L down to
L=1 and L < W-1, bias/SiLU on and off, reverse, channel-first and channel-last x, fp32/bf16/fp16, streaming
in chunks, several tiles per row (forced small tiles), bad inputs. Shapes stay tiny: the interpreter runs
every program in Python.

On a CUDA machine (conftest.py leaves TRITON_INTERPRET unset: 0) the same tests run the compiled kernels. Inputs
are drawn on CPU from seeded generators and then moved to DEVICE, so both devices see the same values; the float64
formula runs on DEVICE from those values. The few checks about CPU tensors use CPU tensors on either machine.
"""

import pytest
import torch

from mambasuite.kernels import causal_conv1d

pytest.importorskip("triton")

SILU = "silu"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _formula64(x, weight, bias, activation, reverse, h0):
    """out (and final states) in float64 as an explicit sum over the W taps (no conv op)."""
    batch, dim, length = x.shape
    width = weight.shape[1]
    x, w = x.double(), weight.double()
    pad = x.new_zeros(batch, dim, width - 1)
    if reverse:  # out[t] = sum_k w[k] x[t + W-1-k]
        xs = torch.cat([x, pad], dim=-1)
        out = sum(w[:, k, None] * xs[..., width - 1 - k: width - 1 - k + length] for k in range(width))
    else:  # out[t] = sum_k w[k] xs[t + k], xs = cat(h0, x)
        xs = torch.cat([h0.double() if h0 is not None else pad, x], dim=-1)
        out = sum(w[:, k, None] * xs[..., k: k + length] for k in range(width))
    if bias is not None:
        out = out + bias.double()[:, None]
    if activation == SILU:
        out = out * torch.sigmoid(out)
    return out, xs[..., length: length + width - 1]


def _make(batch, dim, length, width, *, channel_last, bias, h0, dtype=torch.float32, wdtype=torch.float32, seed=0,
          device=DEVICE):
    """x, weight, bias, initial_states (leaves on `device`), drawn on CPU: the same values on every device."""
    g = torch.Generator().manual_seed(seed)
    if channel_last:  # the transposed view of a (batch, L, dim) tensor
        x = torch.randn(batch, length, dim, generator=g).to(dtype).to(device).transpose(1, 2)
    else:
        x = torch.randn(batch, dim, length, generator=g).to(dtype).to(device)
    w = (torch.randn(dim, width, generator=g) * 0.5).to(wdtype).to(device)
    b = torch.randn(dim, generator=g).to(wdtype).to(device) if bias else None
    s = torch.randn(batch, dim, width - 1, generator=g).to(dtype).to(device) if h0 else None
    return [t.requires_grad_() if t is not None else None for t in (x, w, b, s)]


def _detached(tensors, dtype=None):
    """Fresh leaves on the tensors' own device (float64 copies for the formula)."""
    return [t.detach().to(dtype or t.dtype).requires_grad_() if t is not None else None for t in tensors]


def _run(inputs, activation, reverse, final, backend):
    x, w, b, s = inputs
    res = causal_conv1d(x, w, b, activation, reverse=reverse, initial_states=s, return_final_states=final,
                        backend=backend)
    return res if final else (res, None)


def _backward(out, final, seed=1):
    """A random float64 projection of out (and final), drawn on CPU, then moved to the outputs' device."""
    g = torch.Generator().manual_seed(seed)

    def rnd(t):
        return torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device)

    loss = (out.double() * rnd(out)).sum()
    if final is not None:
        loss = loss + (final.double() * rnd(final)).sum()
    loss.backward()


# (W, L, bias, silu, reverse, channel_last, initial_states, final_states): every W with L = 1, L < W-1,
# odd L; each option on and off somewhere, each layout with and without streaming states.
CASES = [
    (4, 37, True, True, False, False, True, True),
    (4, 2, True, True, False, True, True, True),
    (4, 1, False, False, False, False, False, True),
    (4, 19, True, True, True, True, False, False),
    (3, 1, True, True, False, True, True, True),
    (3, 9, False, True, True, False, False, False),
    (3, 33, True, False, False, True, False, True),
    (2, 1, True, False, True, False, False, False),
    (2, 7, False, True, False, False, True, True),
    (2, 13, True, True, False, True, True, False),
]


def _case_id(case):
    return "W{}-L{}-bias{:d}-silu{:d}-rev{:d}-cl{:d}-h0{:d}-hn{:d}".format(*case)


@pytest.mark.parametrize("run", [4, 8])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_float64_formula_and_reference(monkeypatch, case, run):
    """run: steps per thread run in the kernels (8 needs tiles of >= 8 steps, so L >= 5 here)."""
    width, length, bias, silu, reverse, channel_last, h0, final = case
    if run == 8 and length < 5:
        pytest.skip("runs of 8 need tiles of at least 8 steps")
    monkeypatch.setenv("MAMBASUITE_CONV_RUN", str(run))
    act = SILU if silu else None
    ins = _make(2, 6, length, width, channel_last=channel_last, bias=bias, h0=h0, seed=length)
    ref64 = _detached(ins, torch.float64)
    exp_out, exp_final = _formula64(*ref64[:3], act, reverse, ref64[3])
    _backward(exp_out, exp_final if final else None)
    results = {}
    for backend in ("reference", "triton"):
        mine = _detached(ins)
        out, fin = _run(mine, act, reverse, final, backend)
        assert out.dtype == torch.float32 and out.shape == (2, 6, length)
        _backward(out, fin)
        results[backend] = (out, fin, mine)
        torch.testing.assert_close(out.double(), exp_out, rtol=1e-5, atol=1e-5)
        if final:
            assert fin.shape == (2, 6, width - 1)
            torch.testing.assert_close(fin.double(), exp_final, rtol=0, atol=1e-7)  # a copy of inputs
        for name, ours, exp in zip(("x", "weight", "bias", "initial_states"), mine, ref64):
            if ours is not None:
                torch.testing.assert_close(ours.grad.double(), exp.grad, rtol=1e-5, atol=1e-5, msg=name)
    (out_t, _, tri), (out_r, _, ref) = results["triton"], results["reference"]
    torch.testing.assert_close(out_t, out_r, rtol=1e-6, atol=1e-6)
    for ours, theirs in zip(tri, ref):
        if ours is not None:
            torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-5, atol=1e-5)
    if channel_last:  # the Triton output (and dx) follow x's layout
        assert out_t.stride(1) == 1 and tri[0].grad.stride(1) == 1


@pytest.mark.parametrize("channel_last", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("tiles", [1, 2])
@pytest.mark.parametrize("run", [4, 8])
def test_many_tiles_per_row(monkeypatch, channel_last, reverse, tiles, run):
    """Forced one-run x 2-channel tiles: halos across tile edges, partial sums of many programs, the initial
    states handled by the first tile and the final states by the last one. tiles=2: each backward program
    loops over two tiles (3 tiles of 4 steps for L=11: the second program's second tile lies wholly past L)."""
    monkeypatch.setenv("MAMBASUITE_CONV_BLOCK_L", str(run))
    monkeypatch.setenv("MAMBASUITE_CONV_RUN", str(run))
    monkeypatch.setenv("MAMBASUITE_CONV_BLOCK_D", "2")
    monkeypatch.setenv("MAMBASUITE_CONV_BWD_TILES", str(tiles))
    streaming = not reverse
    ins = _make(2, 5, 11, 4, channel_last=channel_last, bias=True, h0=streaming, seed=3)
    ref64 = _detached(ins, torch.float64)
    exp_out, exp_final = _formula64(*ref64[:3], SILU, reverse, ref64[3])
    _backward(exp_out, exp_final if streaming else None)
    out, fin = _run(ins, SILU, reverse, streaming, "triton")
    _backward(out, fin)
    torch.testing.assert_close(out.double(), exp_out, rtol=1e-5, atol=1e-5)
    if streaming:
        torch.testing.assert_close(fin.double(), exp_final, rtol=0, atol=1e-7)
    for name, ours, exp in zip(("x", "weight", "bias", "initial_states"), ins, ref64):
        if ours is not None:
            torch.testing.assert_close(ours.grad.double(), exp.grad, rtol=1e-5, atol=1e-5, msg=name)


def test_strided_views_and_broadcast_gradient():
    """x, weight and bias that are strided views (no unit stride on x at all) are read through their strides;
    out.sum() hands backward a zero-stride gradient."""
    g = torch.Generator().manual_seed(9)
    # (views taken after the move, so that the strides are the same on every device)
    x = torch.randn(2, 10, 23, generator=g).to(DEVICE)[:, ::2, 1::2].requires_grad_()  # (2, 5, 11), (230, 46, 2)
    w = torch.randn(5, 8, generator=g).to(DEVICE)[:, ::2].requires_grad_()  # (5, 4), strides (8, 2)
    b = torch.randn(10, generator=g).to(DEVICE)[::2].requires_grad_()
    out = causal_conv1d(x, w, b, SILU, backend="triton")
    out.sum().backward()
    ref64 = _detached([x, w, b], torch.float64)
    exp, _ = _formula64(*ref64, SILU, False, None)
    exp.sum().backward()
    torch.testing.assert_close(out.double(), exp, rtol=1e-5, atol=1e-5)
    for ours, theirs in zip((x, w, b), ref64):
        torch.testing.assert_close(ours.grad.double(), theirs.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channel_last", [False, True])
def test_half_precision_matches_reference(dtype, channel_last):
    """Half inputs with fp32 weights (the autocast case): both backends compute in fp32, round once."""
    ins = _make(2, 8, 21, 4, channel_last=channel_last, bias=True, h0=True, dtype=dtype, seed=5)
    res = {}
    for backend in ("reference", "triton"):
        mine = _detached(ins)
        out, fin = _run(mine, SILU, False, True, backend)
        assert out.dtype == dtype and fin.dtype == dtype
        _backward(out, fin)
        res[backend] = (out, fin, mine)
    (out_t, fin_t, tri), (out_r, fin_r, ref) = res["triton"], res["reference"]
    torch.testing.assert_close(out_t.float(), out_r.float(), rtol=1e-2, atol=1e-2)
    assert torch.equal(fin_t, fin_r)
    x64 = _detached(ins, torch.float64)  # the fp32 math is close to exact: compare to the float64 formula
    exp, _ = _formula64(*x64[:3], SILU, False, x64[3])
    torch.testing.assert_close(out_t.double(), exp, rtol=1e-2, atol=1e-2)
    for ours, theirs in zip(tri, ref):
        assert ours.grad.dtype == ours.dtype
        torch.testing.assert_close(ours.grad.float(), theirs.grad.float(), rtol=2e-2, atol=2e-2)


def test_half_weights():
    ins = _make(1, 4, 9, 3, channel_last=False, bias=True, h0=False, dtype=torch.bfloat16, wdtype=torch.bfloat16)
    outs = [_run(_detached(ins), SILU, True, False, b)[0] for b in ("reference", "triton")]
    torch.testing.assert_close(outs[0].float(), outs[1].float(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("channel_last", [False, True])
def test_streaming_in_chunks_equals_one_shot(backend, channel_last):
    """Chunks of 1, 2 (< W-1: its final states reach back into the previous chunk) and 8 steps, each started
    from the previous chunk's final states, give the one-shot output and gradients."""
    ins = _make(2, 6, 11, 4, channel_last=channel_last, bias=True, h0=True, seed=7)
    one = _detached(ins)
    out, _ = _run(one, SILU, False, False, backend)
    _backward(out, None)
    chunked = _detached(ins)
    x, w, b, state = chunked
    pieces = []
    for lo, hi in ((0, 1), (1, 3), (3, 11)):
        y, state = causal_conv1d(x[..., lo:hi], w, b, SILU, initial_states=state, return_final_states=True,
                                 backend=backend)
        pieces.append(y)
    _backward(torch.cat(pieces, dim=-1), None)
    torch.testing.assert_close(torch.cat(pieces, dim=-1), out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(state, ins[0][..., -3:].detach(), rtol=0, atol=0)
    for ours, theirs in zip(chunked, one):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-5, atol=1e-5)


def test_final_states_without_initial_states_are_zero_padded():
    x, w, _, _ = _make(1, 3, 2, 4, channel_last=False, bias=False, h0=False)
    for backend in ("reference", "triton"):
        _, fin = causal_conv1d(x, w, return_final_states=True, backend=backend)
        assert torch.equal(fin[..., 0], torch.zeros(1, 3, device=DEVICE)) and torch.equal(fin[..., 1:], x.detach())


def _conv_grads(ins, deterministic, monkeypatch):
    monkeypatch.setenv("MAMBASUITE_DETERMINISTIC", "1" if deterministic else "0")
    out, fin = _run(ins, SILU, False, True, "triton")
    _backward(out, fin)
    return [t.grad for t in ins]


def test_backward_is_bitwise_reproducible_in_deterministic_mode(monkeypatch):
    """Deterministic mode: dweight/dbias are per-program partials summed in a fixed order (no atomics)."""
    monkeypatch.setenv("MAMBASUITE_CONV_BLOCK_L", "8")
    grads = [_conv_grads(_make(3, 4, 29, 4, channel_last=False, bias=True, h0=True, seed=11), True, monkeypatch)
             for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*grads))


@pytest.mark.parametrize("channel_last", [False, True])
def test_atomic_weight_sums_match_the_fixed_order_sums(channel_last, monkeypatch):
    """The default mode adds each program's dweight/dbias into one total atomically (no reduction launch): the
    same sums as deterministic mode's partials up to fp32 rounding, with ten programs (8-step tiles) adding."""
    monkeypatch.setenv("MAMBASUITE_CONV_BLOCK_L", "8")
    monkeypatch.setenv("MAMBASUITE_CONV_BWD_TILES", "1")
    ins = _make(2, 3, 33, 4, channel_last=channel_last, bias=True, h0=True, seed=12)
    atomic = _conv_grads(ins, False, monkeypatch)  # the next backward makes new grad tensors: no clone needed
    for t in ins:
        t.grad = None
    fixed = _conv_grads(ins, True, monkeypatch)
    assert torch.equal(atomic[0], fixed[0])  # dx has no cross-program sum
    for a, f in zip(atomic[1:], fixed[1:]):
        torch.testing.assert_close(a, f, rtol=1e-5, atol=1e-6)


def test_auto_is_the_reference_on_cpu(monkeypatch):
    """CPU tensors on either machine: with a GPU present too, 'auto' keeps CPU tensors on the reference."""
    import mambasuite.kernels.triton.causal_conv1d as tri

    def refuse(*args, **kwargs):
        raise AssertionError("backend='auto' must not reach Triton on CPU")

    monkeypatch.setattr(tri, "causal_conv1d_triton", refuse)
    x, w, b, _ = _make(1, 4, 5, 3, channel_last=False, bias=True, h0=False, device="cpu")
    assert torch.equal(causal_conv1d(x, w, b, SILU), causal_conv1d(x, w, b, SILU, backend="reference"))


@pytest.mark.parametrize("channel_last", [False, True])
def test_custom_ops_pass_opcheck(channel_last):
    """Schema, fake (meta) implementations with the real output layouts, autograd registration and AOT
    dispatch of the ops; the outputs never alias each other or an input."""
    import mambasuite.kernels.triton.causal_conv1d as tri

    x, w, b, s = _make(2, 4, 5, 3, channel_last=channel_last, bias=True, h0=True)
    torch.library.opcheck(tri._fwd_op, (x, w, b, s, True, False, True))
    out, fin = tri._fwd_op(x, w, b, s, True, False, False)
    assert fin.numel() == 0 and fin.data_ptr() != out.data_ptr()


def test_bad_inputs_are_named(monkeypatch):
    x, w, b, s = (t.detach() if t is not None else None for t in
                  _make(2, 4, 5, 3, channel_last=False, bias=True, h0=True))
    with pytest.raises(ValueError, match="weight width must be in 2..4, got 5"):
        causal_conv1d(x, torch.randn(4, 5, device=DEVICE))
    with pytest.raises(ValueError, match="weight width must be in 2..4, got 1"):
        causal_conv1d(x, torch.randn(4, 1, device=DEVICE), backend="triton")
    with pytest.raises(ValueError, match=r"weight must have shape \(dim, width\) with dim=4"):
        causal_conv1d(x, torch.randn(3, 4, device=DEVICE))
    with pytest.raises(TypeError, match="x must be a float16/bfloat16/float32/float64 tensor"):
        causal_conv1d(x.long(), w)
    with pytest.raises(TypeError, match="initial_states must have x's dtype torch.float32"):
        causal_conv1d(x, w, initial_states=s.half())
    with pytest.raises(ValueError, match=r"initial_states must have shape \(batch, dim, W-1\) = \(2, 4, 2\)"):
        causal_conv1d(x, w, initial_states=s[..., :1])
    with pytest.raises(ValueError, match="weight on meta"):
        causal_conv1d(x, w.to("meta"))
    with pytest.raises(ValueError, match="initial_states on meta"):
        causal_conv1d(x, w, b, initial_states=s.to("meta"))
    for kwargs in (dict(initial_states=s), dict(return_final_states=True)):
        for backend in ("reference", "triton"):
            with pytest.raises(ValueError, match="not supported with reverse=True"):
                causal_conv1d(x, w, reverse=True, backend=backend, **kwargs)
    with pytest.raises(ValueError, match="activation must be None, 'silu' or 'swish'"):
        causal_conv1d(x, w, activation="gelu")
    with pytest.raises(ValueError, match="backend must be one of"):
        causal_conv1d(x, w, backend="cuda")
    with pytest.raises(TypeError, match="float64"):
        causal_conv1d(x.double(), w, backend="triton")
    # CPU tensors on either machine (.cpu() is a no-op on CPU): the peer and compiled Triton refuse them
    with pytest.raises(RuntimeError, match="runs on CUDA tensors only"):
        causal_conv1d(x.cpu(), w.cpu(), backend="mamba_ssm")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        causal_conv1d(x.cpu(), w.cpu(), backend="triton")


@pytest.mark.parametrize("used", ["out", "final"])
def test_gradient_through_one_output_only(used):
    """With return_final_states, a loss on one output alone: the other's gradient is None (not a zeros tensor),
    and the Triton gradients still match the reference's."""
    inputs = _make(2, 6, 11, 4, channel_last=False, bias=True, h0=True, seed=7)
    grads = {}
    for backend in ("triton", "reference"):
        ins = _detached(inputs)
        out, final = _run(ins, SILU, False, True, backend)
        (out if used == "out" else final).double().pow(2).sum().backward()
        grads[backend] = [t.grad for t in ins]
    for ours, ref in zip(grads["triton"], grads["reference"]):
        if ref is None or ours is None:
            assert (ref is None or not ref.any()) and (ours is None or not ours.any())
        else:
            torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_unused_final_states_send_no_gradient(monkeypatch):
    """With return_final_states and only `out` in the loss, the final states' gradient reaches the backward as
    None (no zeros tensor allocated and read by the kernel)."""
    import mambasuite.kernels.triton.causal_conv1d as triton_conv

    x, w, b, s = _make(1, 4, 9, 3, channel_last=False, bias=True, h0=True, seed=11)
    seen = []
    real_bwd = triton_conv._bwd
    monkeypatch.setattr(triton_conv, "_bwd", lambda x_, w_, b_, s_, dout, dfinal, *rest: seen.append(dfinal)
                        or real_bwd(x_, w_, b_, s_, dout, dfinal, *rest))
    out, _ = causal_conv1d(x, w, b, SILU, initial_states=s, return_final_states=True, backend="triton")
    out.sum().backward()
    assert seen == [None]


@pytest.mark.parametrize("name,value,message", [
    ("MAMBASUITE_CONV_BLOCK_L", "6", "expected a power of two >= 4"),
    ("MAMBASUITE_CONV_BLOCK_L", "2", "expected a power of two >= 4"),
    ("MAMBASUITE_CONV_BWD_WARPS", "four", "expected an integer"),
    ("MAMBASUITE_CONV_BWD_TILES", "0", "expected a power of two >= 1"),
    ("MAMBASUITE_CONV_RUN", "16", "expected 4 or 8"),
    ("MAMBASUITE_CONV_RUN", "3", "expected a power of two >= 4"),
])
def test_bad_tile_override_is_named(monkeypatch, name, value, message):
    """A malformed tile override raises an error naming the variable (never a silent fallback)."""
    monkeypatch.setenv(name, value)
    x, w, b, _ = _make(1, 4, 9, 3, channel_last=False, bias=True, h0=False)
    with pytest.raises(ValueError, match=f"{name}=.*{message}"):
        causal_conv1d(x, w, b, SILU, backend="triton").sum().backward()


def test_default_tiles_keep_weight_partials_small():
    """The backward groups L tiles per program so that dweight/dbias partials stay a few per row: at
    (2, 1024, 131072) channel-last they were one per 16-step tile (335 MB) before grouping."""
    import mambasuite.kernels.triton.causal_conv1d as tri

    x = torch.empty(2, 131072, 1024, dtype=torch.bfloat16, device=DEVICE).transpose(1, 2)
    _, block_l, _, n_lt, _, _ = tri._plan(x, backward=True)
    tiles = tri._tiles_per_program(n_lt)
    assert n_lt == 131072 // block_l and tiles == 16 and -(-n_lt // tiles) <= 512
    assert tri._tiles_per_program(8) == 1 and tri._tiles_per_program(128) == 2


def test_run_longer_than_the_tile_is_refused(monkeypatch):
    """An explicit run of 8 on a 4-step tile (L = 3) is refused, not shortened."""
    monkeypatch.setenv("MAMBASUITE_CONV_RUN", "8")
    x, w, b, _ = _make(1, 4, 3, 3, channel_last=False, bias=True, h0=False)
    with pytest.raises(ValueError, match="MAMBASUITE_CONV_RUN=8: expected 4 or 8, at most the tile's 4 steps"):
        causal_conv1d(x, w, b, SILU, backend="triton")


def test_plan_defaults_and_short_tiles(monkeypatch):
    """Runs of 8 steps by default (4 in the channel-last forward), cut to a short sequence's tile; the backward's
    own overrides take precedence over the shared ones."""
    import mambasuite.kernels.triton.causal_conv1d as tri

    first = torch.empty(2, 1024, 4096, dtype=torch.bfloat16, device=DEVICE)
    last = torch.empty(2, 4096, 1024, dtype=torch.bfloat16, device=DEVICE).transpose(1, 2)
    assert tri._plan(first, backward=False) == (4, 512, 256, 8, 4, 8)
    assert tri._plan(first, backward=True) == (8, 256, 128, 16, 8, 8)
    assert tri._plan(last, backward=False) == (64, 32, 16, 128, 4, 4)
    assert tri._plan(last, backward=True) == (128, 16, 8, 256, 4, 8)
    short = torch.empty(1, 4, 3, device=DEVICE)
    assert tri._plan(short, backward=True)[1::4] == (4, 4)  # L = 3: one 4-step tile, runs of 4
    monkeypatch.setenv("MAMBASUITE_CONV_BLOCK_L", "64")
    monkeypatch.setenv("MAMBASUITE_CONV_BWD_BLOCK_L", "32")
    assert tri._plan(first, backward=False)[1] == 64 and tri._plan(first, backward=True)[1] == 32
