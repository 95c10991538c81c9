"""The Triton selective scan against the independent float64 loop (CPU: Triton's interpreter).

Small shapes: the interpreter runs every program in Python. Tolerances are mamba-ssm's (fp32 rtol
6e-4 / atol 2e-3, bf16 3e-2 / 5e-2) applied to the max error relative to the output's scale.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

import mambasuite.kernels.triton.selective_scan as triton_scan  # noqa: E402
from mambasuite.kernels import selective_scan  # noqa: E402
from scan_oracle import selective_scan_loop  # noqa: E402

F64 = torch.float64
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 6e-4, torch.bfloat16: 3e-2, torch.float16: 3e-3}


def _inputs(batch, dim, length, n, form, *, groups=1, dtype=torch.float32, h0=False, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, dt=dtype, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dt).to(DEVICE)

    shapes = {"invariant": (dim, n), "variable": (batch, n, length), "grouped": (batch, groups, n, length)}
    bc_dt = torch.float32 if form == "invariant" else dtype
    return dict(u=rnd(batch, dim, length), delta=rnd(batch, dim, length, scale=0.5),
                A=(-torch.rand(dim, n, generator=g) - 0.1).to(DEVICE), B=rnd(*shapes[form], dt=bc_dt),
                C=rnd(*shapes[form], dt=bc_dt), D=rnd(dim, dt=torch.float32), z=rnd(batch, dim, length),
                delta_bias=rnd(dim, dt=torch.float32, scale=0.5),
                initial_state=rnd(batch, dim, n, dt=torch.float32) if h0 else None)


def _compare(inp, *, reverse=False, dtype=torch.float32, with_dlast=True):
    names = [k for k, v in inp.items() if v is not None]
    ours = {k: inp[k].clone().requires_grad_() for k in names}
    ref = {k: inp[k].detach().to(F64).requires_grad_() for k in names}
    out, last = selective_scan(**ours, delta_softplus=True, return_last_state=True, reverse=reverse,
                               backend="triton")
    ref_out, ref_last = selective_scan_loop(**ref, delta_softplus=True, return_last_state=True, reverse=reverse)
    assert out.dtype == inp["u"].dtype and last.dtype == torch.float32
    w = torch.randn(out.shape, dtype=F64, device=out.device)
    wl = torch.randn(last.shape, dtype=F64, device=out.device) if with_dlast else torch.zeros(last.shape, dtype=F64)
    ((out.to(F64) * w).sum() + (last.to(F64) * wl.to(out.device)).sum()).backward()
    ((ref_out * w).sum() + (ref_last * wl.to(out.device)).sum()).backward()
    tol = TOL[dtype]

    def err(a, b):
        # Relative to the tensor's scale, floored at 1e-2: a gradient that is exactly zero in float64 (dA at L = 1
        # without an initial state) comes out of fp32 FMA arithmetic on the GPU as rounding noise (~1e-7).
        return ((a.to(F64) - b).abs().max() / b.abs().max().clamp_min(1e-2)).item()

    errors = {"out": err(out, ref_out), "last_state": err(last, ref_last)}
    errors.update({f"d{k}": err(ours[k].grad, ref[k].grad) for k in names})
    bad = {k: v for k, v in errors.items() if v > tol}
    assert not bad, f"errors above {tol}: {bad}"


@pytest.mark.parametrize("length,n,form,reverse", [
    (1, 4, "variable", False),
    (37, 1, "invariant", True),
    (70, 16, "variable", False),
    (70, 4, "grouped", True),
    (130, 64, "variable", True),
])
def test_triton_matches_float64_loop(length, n, form, reverse):
    batch, dim = (1, 4) if n >= 64 else (2, 8)  # the interpreter's time grows with programs x states
    _compare(_inputs(batch, dim, length, n, form, groups=2, h0=length > 1, seed=length), reverse=reverse)


@pytest.mark.parametrize("reverse", [False, True])
def test_segments_pass_state_exactly(monkeypatch, reverse):
    """A long sequence split into segments that run in parallel (state-passing passes) stays exact."""
    monkeypatch.setattr(triton_scan.scan_plan, "FORCE_SEG_LEN", 64)
    _compare(_inputs(2, 4, 200, 4, "variable", h0=True, seed=11), reverse=reverse)


@pytest.mark.parametrize("reverse,seg", [(False, None), (True, None), (False, 64), (True, 64)])
def test_backward_tile_spanning_several_forward_tiles(monkeypatch, reverse, seg):
    """The backward may use its own tile (a multiple of the forward's, reading every k-th checkpoint) and its own
    channel tile / warps; with reverse scans the entry checkpoint is the rightmost forward tile's."""
    for key, value in dict(BLOCK_T=16, BLOCK_D=4, WARPS=1, BWD_BLOCK_T=32, BWD_BLOCK_D=2, BWD_WARPS=2).items():
        monkeypatch.setenv(f"MAMBASUITE_SCAN_{key}", str(value))
    monkeypatch.setattr(triton_scan.scan_plan, "FORCE_SEG_LEN", seg)
    plan = triton_scan.plan_launch(1, 4, 100, 4, 1, torch.device(DEVICE))
    assert (plan.fwd.block_t, plan.bwd.block_t, plan.ckpt_ratio) == (16, 32, 2)
    assert (plan.fwd.block_d, plan.bwd.block_d, plan.bwd.n_dtiles) == (4, 2, 2) and plan.n_tiles == 7
    assert plan.n_seg == (1 if seg is None else 2)
    _compare(_inputs(1, 4, 100, 4, "variable", h0=True, seed=21), reverse=reverse)


@pytest.mark.parametrize("reverse,seg,fwd_warps,bwd_warps", [
    (False, None, 2, 1), (True, None, 2, 1), (False, 64, 1, 2), (True, 64, 1, 2)])
def test_forward_tile_spanning_several_backward_tiles(monkeypatch, reverse, seg, fwd_warps, bwd_warps):
    """A forward tile longer than the backward's checkpoints the state at every backward tile's start (several
    checkpoints per forward tile, the ones past L masked); reverse scans walk them right to left. One-warp programs
    reverse tiles with tl.gather, wider ones with Triton's reverse scan: both run here, in both kernels."""
    for key, value in dict(BLOCK_T=64, BLOCK_D=2, WARPS=fwd_warps, BWD_BLOCK_T=16, BWD_BLOCK_D=4,
                           BWD_WARPS=bwd_warps).items():
        monkeypatch.setenv(f"MAMBASUITE_SCAN_{key}", str(value))
    monkeypatch.setattr(triton_scan.scan_plan, "FORCE_SEG_LEN", seg)
    plan = triton_scan.plan_launch(1, 4, 100, 4, 1, torch.device(DEVICE))
    assert (plan.fwd.block_t, plan.bwd.block_t, plan.ckpt_len, plan.ckpt_ratio, plan.n_tiles) == (64, 16, 16, 1, 7)
    assert plan.n_seg == (1 if seg is None else 2) and plan.seg_len % 64 == 0
    _compare(_inputs(1, 4, 100, 4, "variable", h0=True, seed=23), reverse=reverse)


def test_forward_and_backward_tiles_must_divide_one_another(monkeypatch):
    monkeypatch.setenv("MAMBASUITE_SCAN_BLOCK_T", "32")
    monkeypatch.setenv("MAMBASUITE_SCAN_BWD_BLOCK_T", "48")
    with pytest.raises(ValueError, match="must divide one another"):
        triton_scan.plan_launch(2, 8, 150, 4, 1, torch.device(DEVICE))


def test_memoised_plans_follow_overrides_and_forced_segments(monkeypatch):
    """Plans are cached; a tile override or a forced segment length set later must still take effect."""
    device = torch.device(DEVICE)
    default = triton_scan.plan_launch(2, 8, 150, 4, 1, device)
    assert triton_scan.plan_launch(2, 8, 150, 4, 1, device) is default  # served from the cache
    monkeypatch.setenv("MAMBASUITE_SCAN_BLOCK_T", "16")
    monkeypatch.setenv("MAMBASUITE_SCAN_BLOCK_D", "2")
    overridden = triton_scan.plan_launch(2, 8, 150, 4, 1, device)
    assert (overridden.fwd.block_t, overridden.fwd.block_d, overridden.n_tiles) == (16, 2, 10)
    monkeypatch.setattr(triton_scan.scan_plan, "FORCE_SEG_LEN", 32)
    assert triton_scan.plan_launch(2, 8, 150, 4, 1, device).n_seg == 5
    monkeypatch.delenv("MAMBASUITE_SCAN_BLOCK_T")
    monkeypatch.delenv("MAMBASUITE_SCAN_BLOCK_D")
    monkeypatch.setattr(triton_scan.scan_plan, "FORCE_SEG_LEN", None)
    assert triton_scan.plan_launch(2, 8, 150, 4, 1, device) == default


def test_plan_unrolls_the_forward_of_single_direction_long_tiles_only(monkeypatch):
    """The forward's loop over states is unrolled 4x for single-direction scans past L = 256 and for the 2D routes
    (faster there on the H200), not at short L and not in bidirectional launches (slower there);
    MAMBASUITE_SCAN_FWD_UNROLL overrides."""
    device = torch.device(DEVICE)
    assert triton_scan.plan_launch(2, 8, 197, 4, 1, device).fwd_unroll == 1
    assert triton_scan.plan_launch(2, 8, 2048, 4, 1, device).fwd_unroll == 4
    long_plan = triton_scan.plan_launch(2, 8, 131072, 4, 1, device)
    assert (long_plan.fwd_unroll, long_plan.fwd.block_t, long_plan.fwd.num_warps) == (4, 1024, 1)
    bidir = triton_scan.plan_launch(2, 8, 131072, 4, 1, device, directions=2)
    assert (bidir.fwd_unroll, bidir.fwd.block_t, bidir.bwd.block_t, bidir.bwd.block_d) == (1, 1024, 256, 1)
    assert triton_scan.plan_launch(2, 8, 2048, 4, 1, device, directions=2).fwd_unroll == 1
    assert triton_scan.plan_launch(2, 8, 3136, 4, 1, device, directions=4).fwd_unroll == 4
    monkeypatch.setenv("MAMBASUITE_SCAN_FWD_UNROLL", "2")
    assert triton_scan.plan_launch(2, 8, 197, 4, 1, device).fwd_unroll == 2


def test_register_caps_from_the_plan_and_overrides(monkeypatch):
    """Short sequences cap the backward at 168 registers per thread and the tiled forward at 128 (faster on the
    H200; the default short forward is the step-by-step one, uncapped); an overridden tile drops the default cap unless
    MAMBASUITE_SCAN_MAXNREG / _BWD_MAXNREG set one; mid lengths leave registers to ptxas."""
    device = torch.device(DEVICE)
    short = triton_scan.plan_launch(2, 8, 197, 4, 1, device)
    assert (short.fwd_sequential, short.fwd.max_regs, short.bwd.max_regs) == (True, 0, 168)
    monkeypatch.setenv("MAMBASUITE_SCAN_SEQ", "0")
    tiled = triton_scan.plan_launch(2, 8, 197, 4, 1, device)
    assert (tiled.fwd_sequential, tiled.fwd.max_regs, tiled.bwd.max_regs) == (False, 128, 168)
    assert triton_scan.plan_launch(2, 8, 2048, 4, 1, device).bwd.max_regs == 0
    monkeypatch.setenv("MAMBASUITE_SCAN_BWD_BLOCK_T", "32")
    overridden = triton_scan.plan_launch(2, 8, 197, 4, 1, device)
    assert (overridden.fwd.max_regs, overridden.bwd.block_t, overridden.bwd.max_regs) == (128, 32, 0)
    monkeypatch.setenv("MAMBASUITE_SCAN_BWD_MAXNREG", "96")
    assert triton_scan.plan_launch(2, 8, 197, 4, 1, device).bwd.max_regs == 96


def test_sequential_forward_plan_and_overrides(monkeypatch):
    """Short rows run the step-by-step forward (one direction or several), checkpointing every backward tile;
    longer rows the tiled one. MAMBASUITE_SCAN_SEQ=0 forces the tiled forward, D:W[:S] the step-by-step one with
    that channel tile, warps and pipeline stages; a forward tile set through the environment is honoured (tiled)
    unless MAMBASUITE_SCAN_SEQ is set as well."""
    device = torch.device(DEVICE)
    short = triton_scan.plan_launch(2, 8, 197, 4, 1, device)
    assert short.fwd_sequential and short.ckpt_len == short.bwd.block_t == short.fwd.block_t == 32
    assert (short.fwd.block_d, short.fwd.num_warps, short.fwd_stages, short.fwd.n_dtiles) == (64, 4, 1, 1)
    assert triton_scan.plan_launch(2, 8, 197, 4, 1, device, directions=2).fwd_sequential
    assert not triton_scan.plan_launch(2, 8, 197, 32, 1, device).fwd_sequential  # states unrolled: N <= 16 only
    assert not triton_scan.plan_launch(2, 8, 2048, 4, 1, device).fwd_sequential
    monkeypatch.setenv("MAMBASUITE_SCAN_SEQ", "16:2:3")
    forced = triton_scan.plan_launch(2, 40, 2048, 4, 1, device)
    assert forced.fwd_sequential and (forced.fwd.block_d, forced.fwd.num_warps, forced.fwd_stages) == (16, 2, 3)
    assert forced.fwd.n_dtiles == 3 and forced.ckpt_len == forced.bwd.block_t
    assert triton_scan.plan_launch(2, 40, 2048, 4, 4, device).fwd.block_d == 2  # groups of 10 channels
    monkeypatch.setenv("MAMBASUITE_SCAN_SEQ", "0")
    assert not triton_scan.plan_launch(2, 8, 197, 4, 1, device).fwd_sequential
    monkeypatch.delenv("MAMBASUITE_SCAN_SEQ")
    monkeypatch.setenv("MAMBASUITE_SCAN_BLOCK_T", "32")
    assert not triton_scan.plan_launch(2, 8, 197, 4, 1, device).fwd_sequential
    monkeypatch.setenv("MAMBASUITE_SCAN_SEQ", "8:1")
    both = triton_scan.plan_launch(2, 8, 197, 4, 1, device)
    assert both.fwd_sequential and (both.fwd.block_d, both.fwd_stages, both.ckpt_len) == (8, 1, 32)


@pytest.mark.parametrize("value", ["32", "a:1", "32:1:2:4", "24:1", "32:3", "0:1"])
def test_malformed_sequential_override_is_named(monkeypatch, value):
    monkeypatch.setenv("MAMBASUITE_SCAN_SEQ", value)
    with pytest.raises(ValueError, match=f"MAMBASUITE_SCAN_SEQ='{value}'"):
        triton_scan.plan_launch(2, 8, 197, 4, 1, torch.device(DEVICE))


def test_sequential_forward_refuses_too_many_states(monkeypatch):
    monkeypatch.setenv("MAMBASUITE_SCAN_SEQ", "32:1")
    assert triton_scan.plan_launch(2, 8, 197, 64, 1, torch.device(DEVICE)).fwd_sequential
    with pytest.raises(ValueError, match="MAMBASUITE_SCAN_SEQ='32:1'.*d_state <= 64, got 128"):
        triton_scan.plan_launch(2, 8, 197, 128, 1, torch.device(DEVICE))


@pytest.mark.parametrize("length,form,reverse,seg,seq", [
    (300, "variable", False, None, "8:1"),   # past the short plan row: forced
    (300, "grouped", True, 64, "4:2:2"),     # segments (state-only pass + entry), reverse, groups
    (150, "invariant", True, None, "16:1"),  # time-invariant B/C, reverse, a partial last interval
    (150, "variable", False, 32, "8:1"),     # segments shorter than the default backward tile
    (70, "variable", True, None, "0"),       # the tiled forward at short L stays covered
])
def test_sequential_forward_matches_float64_loop(monkeypatch, length, form, reverse, seg, seq):
    """The step-by-step forward writes what the tiled one writes (out, last state, the checkpoints the shared
    backward starts from, segment states): every output and gradient matches the float64 loop."""
    monkeypatch.setenv("MAMBASUITE_SCAN_SEQ", seq)
    monkeypatch.setattr(triton_scan.scan_plan, "FORCE_SEG_LEN", seg)
    plan = triton_scan.plan_launch(2, 8, length, 4, 2 if form == "grouped" else 1, torch.device(DEVICE))
    assert plan.fwd_sequential == (seq != "0") and plan.n_seg == (1 if seg is None else -(-length // seg))
    _compare(_inputs(2, 8, length, 4, form, groups=2, h0=True, seed=length + 7), reverse=reverse)


@pytest.mark.parametrize("dtype,reverse", [(torch.bfloat16, False), (torch.float16, True)])
def test_sequential_forward_hands_half_b_c_over_exactly(dtype, reverse):
    """16-bit B and C reach every channel of the step-by-step forward packed two to a 32-bit word (one shuffle per
    state for both). Unpacked they must be the exact fp32 values, in their places: the outputs equal those of the same
    B and C given as fp32 (unpacked path), bitwise under the interpreter. Swapped halves, or a half read as the wrong
    type, would differ by far more."""
    assert triton_scan.plan_launch(2, 8, 45, 4, 1, torch.device(DEVICE)).fwd_sequential
    inp = {k: v for k, v in _inputs(2, 8, 45, 4, "variable", seed=11).items() if v is not None}
    half = dict(inp, B=inp["B"].to(dtype), C=inp["C"].to(dtype))
    wide = dict(inp, B=half["B"].float(), C=half["C"].float())
    outs = [selective_scan(**x, delta_softplus=True, return_last_state=True, reverse=reverse, backend="triton")
            for x in (half, wide)]
    tol = 0.0 if DEVICE == "cpu" else 1e-6
    for got, want in zip(*outs):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("ahead,length,reverse,seg", [
    ("2", 1, False, None),   # a row shorter than the loads in flight
    ("3", 2, True, None),
    ("3", 75, False, 32),    # segments: each pass starts its own loads ahead
    ("4", 45, True, 32),
])
def test_sequential_forward_loads_steps_ahead(monkeypatch, ahead, length, reverse, seg):
    """The step-by-step forward with each step's loads issued 2-4 steps before it: every output and gradient matches
    the float64 loop, rows shorter than the loads in flight included (their extra loads are masked off)."""
    monkeypatch.setenv("MAMBASUITE_SCAN_SEQ_AHEAD", ahead)
    monkeypatch.setattr(triton_scan.scan_plan, "FORCE_SEG_LEN", seg)
    plan = triton_scan.plan_launch(2, 8, length, 4, 1, torch.device(DEVICE))
    assert plan.fwd_sequential and plan.fwd_seq_ahead == int(ahead)
    _compare(_inputs(2, 8, length, 4, "variable", h0=True, seed=length + 3), reverse=reverse)


def test_seq_split_and_ahead_from_the_plan_rows_and_overrides(monkeypatch):
    """The short rows' step-by-step forward takes its lanes per channel and loads-ahead from the plan row (single:
    64 channels on 4 warps, 2 lanes each, loads 1 step ahead; bidirectional: 8 on 1 warp, 4 lanes, 3 ahead), caps the
    split at d_state's power of two, drops both with a tile set through MAMBASUITE_SCAN_SEQ, and honours
    MAMBASUITE_SCAN_SEQ_SPLIT / _SEQ_AHEAD over either."""
    device = torch.device(DEVICE)

    def seq(d_state=16, directions=1):
        p = triton_scan.plan_launch(2, 768, 197, d_state, 1, device, directions=directions)
        return p.fwd.block_d, p.fwd.num_warps, p.fwd_seq_split, p.fwd_seq_ahead

    assert seq() == (64, 4, 2, 1)
    assert seq(directions=2) == (8, 1, 4, 3)
    assert seq(d_state=1, directions=2) == (8, 1, 2, 3)  # 2 states padded: at most 2 lanes
    monkeypatch.setenv("MAMBASUITE_SCAN_SEQ", "32:1")
    assert seq() == (32, 1, 1, 1)
    monkeypatch.setenv("MAMBASUITE_SCAN_SEQ_SPLIT", "4")
    monkeypatch.setenv("MAMBASUITE_SCAN_SEQ_AHEAD", "2")
    assert seq() == (32, 1, 4, 2)
    monkeypatch.delenv("MAMBASUITE_SCAN_SEQ")
    assert seq(directions=2) == (8, 1, 4, 2)


@pytest.mark.parametrize("value", ["0", "5", "two"])
def test_malformed_seq_ahead_is_named(monkeypatch, value):
    monkeypatch.setenv("MAMBASUITE_SCAN_SEQ_AHEAD", value)
    with pytest.raises(ValueError, match=f"MAMBASUITE_SCAN_SEQ_AHEAD='{value}'"):
        triton_scan.plan_launch(2, 8, 197, 16, 1, torch.device(DEVICE))


@pytest.mark.parametrize("split,seq,length,n,form,reverse,seg,dtype", [
    ("2", "16:1", 45, 16, "variable", False, None, torch.float32),
    ("2", "16:1", 45, 16, "variable", True, None, torch.bfloat16),  # B/C packed two to a word
    ("4", "8:1", 70, 4, "grouped", True, 32, torch.float32),        # segments, groups: one state per lane
    ("8", "4:1", 33, 16, "invariant", False, None, torch.float32),  # time-invariant B/C
    ("2", "8:1", 40, 3, "variable", True, None, torch.float32),     # the second lane: one state and one pad
    ("2", "16:1", 21, 1, "variable", False, 16, torch.float32),     # the second lane holds no state at all
])
def test_sequential_forward_splits_states_over_lanes(monkeypatch, split, seq, length, n, form, reverse, seg, dtype):
    """SPLIT lanes share a channel, each scanning its share of the states, and sum their parts of y at every step:
    every output and gradient matches the float64 loop, for shares that are partly or wholly padding too."""
    monkeypatch.setenv("MAMBASUITE_SCAN_SEQ_SPLIT", split)
    monkeypatch.setenv("MAMBASUITE_SCAN_SEQ", seq)
    monkeypatch.setattr(triton_scan.scan_plan, "FORCE_SEG_LEN", seg)
    plan = triton_scan.plan_launch(2, 8, length, n, 2 if form == "grouped" else 1, torch.device(DEVICE))
    assert plan.fwd_sequential and plan.fwd_seq_split == int(split)
    inp = _inputs(2, 8, length, n, form, groups=2, dtype=dtype, h0=True, seed=length + n)
    _compare(inp, reverse=reverse, dtype=dtype, with_dlast=dtype == torch.float32)


@pytest.mark.parametrize("value,d_state", [("3", 16), ("16", 16), ("4", 1), ("0", 16)])
def test_malformed_seq_split_is_named(monkeypatch, value, d_state):
    monkeypatch.setenv("MAMBASUITE_SCAN_SEQ_SPLIT", value)
    with pytest.raises(ValueError, match=f"MAMBASUITE_SCAN_SEQ_SPLIT='{value}'"):
        triton_scan.plan_launch(2, 8, 197, d_state, 1, torch.device(DEVICE))


@pytest.mark.parametrize("shift,reverse,seg", [("1", False, None), ("1", True, 64), ("0", False, 64), ("0", True, None)])
def test_backward_a_next_by_shift_or_exp2(monkeypatch, shift, reverse, seg):
    """One-warp backward tiles take a_{t+1} either as a shifted by a gather (MAMBASUITE_SCAN_SHIFT_A=1, the default) or
    from a second exp2 of the next step's delta (=0): both exact, across tiles (the shift never crosses one), masked
    tails (L = 100 in 16-step tiles) and segment boundaries, in both scan directions."""
    monkeypatch.setenv("MAMBASUITE_SCAN_SHIFT_A", shift)
    for key, value in dict(BLOCK_T=16, BLOCK_D=2, WARPS=1, BWD_BLOCK_T=16, BWD_BLOCK_D=2, BWD_WARPS=1).items():
        monkeypatch.setenv(f"MAMBASUITE_SCAN_{key}", str(value))
    monkeypatch.setattr(triton_scan.scan_plan, "FORCE_SEG_LEN", seg)
    plan = triton_scan.plan_launch(1, 4, 100, 4, 1, torch.device(DEVICE))
    assert plan.bwd_shift_a == (shift == "1") and plan.n_seg == (1 if seg is None else 2)
    _compare(_inputs(1, 4, 100, 4, "variable", h0=True, seed=29), reverse=reverse)


@pytest.mark.parametrize("reverse,form,seg,dtype", [
    (False, "variable", None, torch.bfloat16), (True, "grouped", None, torch.float16),
    (False, "grouped", 512, torch.bfloat16), (True, "variable", 512, torch.float32)])
def test_long_tiles_match_float64_loop(monkeypatch, reverse, form, seg, dtype):
    """The long-row tiles at their real lengths: a 512-step forward tile takes its two 256-step intervals' exit states
    by a gather (forward in time) or a masked sum (reverse), and a 256-step one-warp backward tile takes a_{t+1} and
    its dh carry by gathers. Exact with a masked tail (L = 600), groups, 16-bit and fp32 inputs, both scan directions
    and segments."""
    for key, value in dict(BLOCK_T=512, BLOCK_D=1, WARPS=1, BWD_BLOCK_T=256, BWD_BLOCK_D=2, BWD_WARPS=1).items():
        monkeypatch.setenv(f"MAMBASUITE_SCAN_{key}", str(value))
    monkeypatch.setattr(triton_scan.scan_plan, "FORCE_SEG_LEN", seg)
    groups = 2 if form == "grouped" else 1
    plan = triton_scan.plan_launch(1, 4, 600, 4, groups, torch.device(DEVICE))
    assert (plan.fwd.block_t, plan.bwd.block_t, plan.ckpt_len, plan.n_tiles) == (512, 256, 256, 3)
    assert plan.n_seg == (1 if seg is None else 2)
    _compare(_inputs(1, 4, 600, 4, form, groups=groups, h0=True, dtype=dtype, seed=59), reverse=reverse, dtype=dtype)


@pytest.mark.parametrize("reverse,form,seg", [
    (False, "variable", None), (True, "grouped", 64), (True, "invariant", None), (False, "grouped", 32)])
def test_backward_loads_one_state_ahead(monkeypatch, reverse, form, seg):
    """MAMBASUITE_SCAN_BWD_PREFETCH=1: the backward loads each state's A, B, C and entry checkpoint during the state
    before it. Exact in both scan directions, for every B/C form, across tiles with a masked tail (L = 100 in 16-step
    tiles) and in the segment carry pass (which loads no B and no checkpoint)."""
    monkeypatch.setenv("MAMBASUITE_SCAN_BWD_PREFETCH", "1")
    for key, value in dict(BLOCK_T=16, BLOCK_D=2, WARPS=1, BWD_BLOCK_T=16, BWD_BLOCK_D=2, BWD_WARPS=1).items():
        monkeypatch.setenv(f"MAMBASUITE_SCAN_{key}", str(value))
    monkeypatch.setattr(triton_scan.scan_plan, "FORCE_SEG_LEN", seg)
    groups = 2 if form == "grouped" else 1
    plan = triton_scan.plan_launch(2, 4, 100, 4, groups, torch.device(DEVICE))
    assert plan.bwd_prefetch and plan.n_seg == (1 if seg is None else -(-100 // seg))
    _compare(_inputs(2, 4, 100, 4, form, groups=groups, h0=True, seed=53), reverse=reverse)


def test_backward_prefetch_default_and_override(monkeypatch):
    """The plan loads one state ahead only for rows longer than 16384 steps (where it was measured to pay), single or
    multi-direction; MAMBASUITE_SCAN_BWD_PREFETCH=0/1 overrides, and anything else is refused by name."""
    device = torch.device(DEVICE)
    assert triton_scan.plan_launch(2, 8, 20000, 4, 1, device).bwd_prefetch
    assert triton_scan.plan_launch(2, 8, 20000, 4, 1, device, directions=2).bwd_prefetch
    for directions in (1, 2, 4):
        assert not any(triton_scan.plan_launch(2, 8, length, 4, 1, device, directions=directions).bwd_prefetch
                       for length in (197, 2048, 16384))
    monkeypatch.setenv("MAMBASUITE_SCAN_BWD_PREFETCH", "0")
    assert not triton_scan.plan_launch(2, 8, 20000, 4, 1, device).bwd_prefetch
    monkeypatch.setenv("MAMBASUITE_SCAN_BWD_PREFETCH", "1")
    assert triton_scan.plan_launch(2, 8, 197, 4, 1, device).bwd_prefetch
    monkeypatch.setenv("MAMBASUITE_SCAN_BWD_PREFETCH", "yes")
    with pytest.raises(ValueError, match="MAMBASUITE_SCAN_BWD_PREFETCH='yes'"):
        triton_scan.plan_launch(2, 8, 197, 4, 1, device)


def test_tiled_forward_pipeline_stages(monkeypatch):
    """Single-direction and 2D tiled forwards pipeline their loop over states 2 stages (bidirectional launches 1; the
    step-by-step forward keeps its own stages); MAMBASUITE_SCAN_FWD_STAGES overrides, and a pipelined launch stays
    exact (the CPU interpreter runs the loop as written, so on CPU this checks the plumbing)."""
    device = torch.device(DEVICE)
    assert triton_scan.plan_launch(2, 8, 2048, 4, 1, device).fwd_stages == 2
    assert triton_scan.plan_launch(2, 8, 2048, 4, 1, device, directions=2).fwd_stages == 1
    assert triton_scan.plan_launch(2, 8, 784, 4, 1, device, directions=4).fwd_stages == 2
    assert triton_scan.plan_launch(2, 8, 197, 4, 1, device).fwd_stages == 1  # step by step, 32:1:1
    monkeypatch.setenv("MAMBASUITE_SCAN_FWD_STAGES", "3")
    assert triton_scan.plan_launch(2, 8, 2048, 4, 1, device, directions=4).fwd_stages == 3
    monkeypatch.setenv("MAMBASUITE_SCAN_SEQ", "0")
    _compare(_inputs(2, 4, 40, 4, "variable", h0=True, seed=41), reverse=True)
    monkeypatch.setenv("MAMBASUITE_SCAN_FWD_STAGES", "two")
    with pytest.raises(ValueError, match="MAMBASUITE_SCAN_FWD_STAGES='two'"):
        triton_scan.plan_launch(2, 8, 2048, 4, 1, device)


def test_shift_a_default_and_override(monkeypatch):
    """The shift is the default of one-warp backward tiles only (a gather across warps goes through shared memory);
    any value but 0 or 1 is refused by name."""
    device = torch.device(DEVICE)
    assert triton_scan.plan_launch(2, 8, 197, 4, 1, device).bwd_shift_a
    monkeypatch.setenv("MAMBASUITE_SCAN_BWD_WARPS", "2")
    assert not triton_scan.plan_launch(2, 8, 197, 4, 1, device).bwd_shift_a
    monkeypatch.delenv("MAMBASUITE_SCAN_BWD_WARPS")
    monkeypatch.setenv("MAMBASUITE_SCAN_SHIFT_A", "0")
    assert not triton_scan.plan_launch(2, 8, 197, 4, 1, device).bwd_shift_a
    monkeypatch.setenv("MAMBASUITE_SCAN_SHIFT_A", "2")
    with pytest.raises(ValueError, match="MAMBASUITE_SCAN_SHIFT_A='2'"):
        triton_scan.plan_launch(2, 8, 197, 4, 1, device)


@pytest.mark.parametrize("key,value", [("MAMBASUITE_SCAN_BWD_MAXNREG", "lots"), ("MAMBASUITE_SCAN_BLOCK_T", "-64")])
def test_malformed_tile_override_is_named(monkeypatch, key, value):
    monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=f"{key}='{value}': expected a non-negative integer"):
        triton_scan.plan_launch(2, 8, 197, 4, 1, torch.device(DEVICE))


def test_register_capped_launch_matches_float64_loop(monkeypatch):
    """The cap reaches the launch as Triton's `maxnreg` option (checked against the kernels' parameters by the
    launcher); the compiled kernels must stay exact under it."""
    from mambasuite.kernels.triton import scan_launch

    seen = []
    real = scan_launch.launch
    monkeypatch.setattr(scan_launch, "launch", lambda kernel, grid, *a, **kw: (seen.append(kw.get("maxnreg")),
                                                                               real(kernel, grid, *a, **kw)))
    for key, value in dict(BLOCK_T=16, BLOCK_D=2, WARPS=1, MAXNREG=128, BWD_MAXNREG=96).items():
        monkeypatch.setenv(f"MAMBASUITE_SCAN_{key}", str(value))
    _compare(_inputs(2, 4, 40, 4, "variable", h0=True, seed=37), reverse=False)
    assert 128 in seen and 96 in seen


def test_segment_target_override(monkeypatch):
    """Long rows are split into segments only when there are fewer backward programs than the device's target;
    MAMBASUITE_SCAN_PROGRAMS sets that target (segments stay >= 4096 steps and hold whole tiles of both kernels)."""
    device = torch.device(DEVICE)
    if DEVICE == "cpu":  # the interpreter's target is 1 program: no segments unless asked for
        assert triton_scan.plan_launch(1, 8, 65536, 4, 1, device).n_seg == 1
    monkeypatch.setenv("MAMBASUITE_SCAN_PROGRAMS", "64")
    plan = triton_scan.plan_launch(1, 8, 65536, 4, 1, device)  # 8 one-channel backward programs per row
    assert plan.n_seg == 8 and plan.seg_len == 8192
    assert plan.seg_len % plan.fwd.block_t == 0 and plan.seg_len % plan.bwd.block_t == 0


def test_unrolled_forward_matches_float64_loop(monkeypatch):
    """An unroll factor that does not divide N (3 into 4 states) leaves a remainder iteration: still exact. (The CPU
    interpreter ignores the unroll factor, so on CPU this checks the plumbing; compiled, it checks the unrolled loop.)"""
    monkeypatch.setenv("MAMBASUITE_SCAN_FWD_UNROLL", "3")
    _compare(_inputs(2, 4, 40, 4, "variable", h0=True, seed=31), reverse=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype):
    _compare(_inputs(2, 8, 40, 4, "variable", dtype=dtype, seed=3), dtype=dtype, with_dlast=False)


def test_non_contiguous_inputs():
    inp = _inputs(2, 8, 33, 4, "variable", seed=4)
    inp = {k: (v.transpose(-1, -2).contiguous().transpose(-1, -2) if v is not None and v.dim() == 3 else v)
           for k, v in inp.items()}
    assert not inp["u"].is_contiguous()
    _compare(inp)


def test_deterministic_mode_is_bitwise_reproducible(monkeypatch):
    monkeypatch.setenv("MAMBASUITE_DETERMINISTIC", "1")
    grads = []
    for _ in range(2):
        inp = {k: v.requires_grad_() for k, v in _inputs(2, 8, 70, 4, "grouped", groups=2, seed=5).items()
               if v is not None}
        selective_scan(**inp, delta_softplus=True, backend="triton").sum().backward()
        grads.append([inp[k].grad.clone() for k in sorted(inp)])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


@pytest.mark.parametrize("h0", [False, True])
def test_initial_state_gradient_is_computed_only_when_needed(monkeypatch, h0):
    """Without an initial state the backward allocates and writes no dh0 (a (batch, dim, N) fp32 tensor: 3 MiB at
    (64, 768, 197, 16)); with one, its gradient matches the float64 loop (test_triton_matches_float64_loop)."""
    from mambasuite.kernels.triton import scan_launch

    seen = []
    real = scan_launch.launch_backward
    monkeypatch.setattr(triton_scan, "launch_backward", lambda *a, **kw: seen.append(real(*a, **kw)) or seen[-1])
    inp = _inputs(2, 4, 40, 4, "variable", h0=h0, seed=41)
    leaves = {k: v.clone().requires_grad_() for k, v in inp.items() if v is not None}
    selective_scan(**leaves, delta_softplus=True, backend="triton").sum().backward()
    assert (seen[0].dh0 is not None) == h0
    assert (leaves.get("initial_state") is not None and leaves["initial_state"].grad is not None) == h0


def test_triton_refuses_float64_and_bad_devices():
    inp = _inputs(1, 2, 3, 2, "variable")
    with pytest.raises(TypeError, match="float64"):
        selective_scan(**{k: (v.double() if v is not None and k not in ("A",) else v) for k, v in inp.items()},
                       backend="triton")


def test_triton_backend_without_interpreter_or_gpu_is_refused(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        selective_scan(**_inputs(1, 2, 3, 2, "variable"), backend="triton")


def test_custom_op_has_fake_impl_for_torch_compile():
    """The op traces under FakeTensorMode (what torch.compile does) with the right output shapes."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    inp = _inputs(2, 8, 70, 4, "variable")
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = {k: mode.from_tensor(v) for k, v in inp.items() if v is not None}
        out, last, ckpt, _ = torch.ops.mambasuite.selective_scan_fwd(
            fake["u"], fake["delta"], fake["A"], fake["B"], fake["C"], fake["D"], fake["z"], fake["delta_bias"],
            None, True, False)
    assert out.shape == (2, 8, 70) and last.shape == (2, 8, 4) and ckpt.shape[:3] == (1, 2, 8)


def test_without_optional_inputs():
    """No D, z or delta_bias: the backward op must return a distinct (empty) tensor for each absent gradient
    (torch rejects custom-op outputs that alias each other); found by the H200 fuzz sweep."""
    inp = _inputs(2, 5, 34, 3, "variable", seed=12)
    for key in ("D", "z", "delta_bias"):
        inp[key] = None
    _compare(inp)


@pytest.mark.parametrize("used", ["out", "last_state"])
def test_gradient_through_one_output_only(used):
    """Gradients of unused outputs are not materialised (the checkpoints are internal, out or last_state may go
    unused): a loss on one output alone still matches the float64 loop."""
    inp = {k: v for k, v in _inputs(2, 4, 45, 4, "variable", seed=41).items() if v is not None}
    ours = {k: v.clone().requires_grad_() for k, v in inp.items()}
    ref = {k: v.detach().to(F64).requires_grad_() for k, v in inp.items()}
    if used == "out":
        selective_scan(**ours, delta_softplus=True, backend="triton").sum().backward()
        selective_scan_loop(**ref, delta_softplus=True).sum().backward()
    else:
        selective_scan(**ours, delta_softplus=True, return_last_state=True, backend="triton")[1].sum().backward()
        selective_scan_loop(**ref, delta_softplus=True, return_last_state=True)[1].sum().backward()
    for k in inp:  # z and D do not reach last_state: no gradient in float64, zeros (or none) from the kernel
        want = ref[k].grad if ref[k].grad is not None else torch.zeros_like(ref[k])
        got = ours[k].grad.to(F64) if ours[k].grad is not None else torch.zeros_like(want)
        err = ((got - want).abs().max() / want.abs().max().clamp_min(1e-2)).item()
        assert err < TOL[torch.float32], (k, err)


def test_checkpoints_carry_no_gradient_and_unused_outputs_send_none(monkeypatch):
    """The forward's checkpoints and segment products are internal (non-differentiable), and the gradient of an
    output the loss does not use reaches the backward as None, not as a materialised zeros tensor."""
    inp = {k: v.requires_grad_() for k, v in _inputs(1, 4, 20, 4, "variable", seed=43).items() if v is not None}
    _, last, ckpt, seg_p = triton_scan._fwd(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"], inp["z"],
                                            inp["delta_bias"], None, True, False)
    assert last.requires_grad and not ckpt.requires_grad and not seg_p.requires_grad
    seen = []
    real_bwd = triton_scan._bwd
    monkeypatch.setattr(triton_scan, "_bwd", lambda dout, dlast, *rest: seen.append(dlast) or real_bwd(dout, dlast,
                                                                                                      *rest))
    selective_scan(**inp, delta_softplus=True, backend="triton").sum().backward()
    assert seen == [None]


def test_every_triton_atomic_is_relaxed():
    """Triton's default atomic ordering (acq_rel) puts a GPU-wide fence after each atomic; the kernels' atomics are
    independent adds and must say sem="relaxed". (The CPU interpreter ignores memory ordering, so this reads the
    kernel sources.)"""
    import pathlib
    import re

    import mambasuite.kernels.triton as kernels_pkg

    calls = []
    for path in pathlib.Path(kernels_pkg.__file__).parent.glob("*.py"):
        text = path.read_text()
        for match in re.finditer(r"tl\.atomic_\w+\(", text):
            depth, end = 0, match.end() - 1
            for end in range(match.end() - 1, len(text)):  # the call's closing parenthesis
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            calls.append((path.name, text[match.start():end + 1]))
    assert calls, "no atomics found: the scan's backward uses them"
    bad = [(name, call) for name, call in calls if 'sem="relaxed"' not in call]
    assert not bad, bad
