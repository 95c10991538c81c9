"""Triton kernels of the selective scan (forward and backward).

Work decomposition
------------------
One program owns a tile of BLOCK_D channels of one batch row and one *segment* of the sequence.
It walks the segment in tiles of BLOCK_T time steps (tiles are aligned to BLOCK_T from t = 0), and
for every tile loops over the N states:

    a = exp2(dt * A * log2(e))          (BLOCK_D, BLOCK_T)
    x = dt * u * B_n                    (BLOCK_D, BLOCK_T)   B_n shared by the BLOCK_D channels
    h = associative_scan((a, x))        the state of every step, seeded with the tile-entry state
    y += h * C_n

so each B/C row is loaded once for BLOCK_D channels, the state lives in registers, and the exp2 is
the only transcendental per (d, t, n). The (BLOCK_D, N) state is written every CKPT_T steps (the
shorter of the two kernels' tiles) to a small checkpoint tensor (batch, dim, n_tiles, N) fp32;
backward recomputes its tile from the checkpoint instead of keeping per-step states.

Short rows (the plan decides; Vim at 224 px has L = 197) run the forward step by step instead
(`_fwd_seq_program`): each program's (BLOCK_D, N) state stays in registers, one step per loop iteration,
and it writes the same outputs and checkpoints, so the backward is the same for both.

Long sequences with few rows are split into segments that run in parallel: a cheap first pass
(STATE_ONLY) computes each segment's end state from a zero start plus its total decay
exp2(A * log2(e) * sum(dt)); the full pass then rebuilds its exact entry state by combining the
earlier segments in order (a short loop per program). Backward mirrors this for the dh carry.

Reverse scans (h_t depends on t..L-1) walk tiles and scans right to left; no flipped copies in memory.
Inside one-warp programs (GATHER_FLIP) a right-to-left scan reverses its register tiles with tl.gather,
which is cheaper than Triton's own reverse scan (see `_linear_scan`).

Several directions in one launch (the grid's third axis): `_fwd_program` / `_bwd_program` hold one direction's
work; the entry kernels call them once per direction, with direction k's tensors at k * dir_* elements from
direction 0's (the bidirectional scan: forward then reverse; the 2D cross-scan: rows, columns, both reversed).
Every direction reads its tensors in its own scan order, memory position = step. The 2D cross-scan's column
routes (1 and 3) therefore read a column-major copy of the map (and of the output gradient), and the entry kernels
add the col_* offsets to their u and dout pointers (COL_SCALE); every route writes its own output slot, in its scan
order, which the launcher merges afterwards (`map_layout.merge_layouts`). Reading the row-major map in
place along a column strides W pixels at every element, and that was the fused op's main cost (H200, 2026-11-30,
bench cross2d at (64, 192, 56, 56, N=1): 7.2 ms fwd+bwd read in place, 3.1 ms with every access row-major).
The two directions of a bidirectional scan add into the z gradient they share atomically (ATOMIC_DZ).

The backward's tile may span several checkpoint intervals (CKPT_RATIO); it starts from the checkpoint of
the first interval it covers in scan order.

Atomics are relaxed (`sem="relaxed"`): each is an independent fp32 add, and the default acq_rel ordering put a
GPU-wide memory fence after every dB/dC atomic of the backward's loop over states. At (8, 3072, 2048, 16) with
the session-5 tiles, where nothing else changed for that launch, fwd+bwd took 8.51 ms in session 5 and 5.53 ms
relaxed in session 6 (two H200 sessions, not one run).

Tails: steps outside [0, L) get dt = 0 and u = 0, i.e. the identity step (a = 1, x = 0), so the
state after the last valid step, and every checkpoint, is exact.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)  # globals used in @jit code must be constexpr

# Per-direction element offsets of the multi-direction launches (see selective_scan_fwd_kernel); the col_* offsets
# are added for the column routes of a 2D map only (u, and the backward's dout).
FWD_DIRECTION_OFFSETS = ["dir_u", "dir_dt", "dir_A", "dir_B", "dir_C", "dir_D", "dir_bias", "dir_state", "dir_out",
                         "dir_ckpt", "dir_seg", "col_u"]
BWD_DIRECTION_OFFSETS = ["dir_u", "dir_dt", "dir_A", "dir_B", "dir_C", "dir_D", "dir_bias", "dir_g", "dir_state",
                         "dir_ckpt", "dir_seg", "dir_du", "dir_ddt", "dir_dz", "dir_part", "dir_dB", "dir_dC",
                         "dir_row", "col_u", "col_g"]


@triton.jit
def _combine(a_prev, h_prev, a_next, h_next):
    # (a1, h1) then (a2, h2)  ==  (a1 * a2, a2 * h1 + h2): composition of two affine steps h -> a*h + x
    return a_prev * a_next, a_next * h_prev + h_next


@triton.jit
def _flip(x, BLOCK_T: tl.constexpr):
    """x (R, BLOCK_T) with its time axis reversed, through tl.gather: inside one warp that costs about one shuffle
    per register, against five butterfly shuffles per register for Triton's own lane reversal."""
    idx = (BLOCK_T - 1 - tl.arange(0, BLOCK_T))[None, :] + tl.zeros(x.shape, tl.int32)
    return tl.gather(x, idx, 1)


@triton.jit
def _linear_scan(a, x, REVERSE: tl.constexpr, GATHER_FLIP: tl.constexpr, BLOCK_T: tl.constexpr):
    """h_t = a_t * h_{t-1} + x_t along axis 1 of (BLOCK_D, BLOCK_T) tiles, right to left when REVERSE.

    Triton lowers a reverse scan as a forward scan between two lane reversals (butterfly shuffles). GATHER_FLIP
    (one-warp programs only: across warps a gather goes through shared memory) reverses the tiles with `_flip`
    instead. Offline sm_90 SASS of the backward at a 256-step one-warp tile: 568 -> 465 instructions per state.
    """
    if REVERSE and GATHER_FLIP:
        _, h = tl.associative_scan((_flip(a, BLOCK_T), _flip(x, BLOCK_T)), 1, _combine)
        return _flip(h, BLOCK_T)
    else:
        _, h = tl.associative_scan((a, x), 1, _combine, reverse=REVERSE)
        return h


@triton.jit
def _softplus(x):
    # softplus with threshold 20 (identity above), accurate for very negative x
    return tl.where(x > 20.0, x, tl.where(x < -15.0, tl.exp(x), tl.log(1.0 + tl.exp(x))))


@triton.jit
def _column(mat, sel):
    """Column `sel` (a (1, K) boolean one-hot) of a (R, K) tensor, as (R,)."""
    return tl.sum(tl.where(sel, mat, 0.0), axis=1)


@triton.jit
def _load_tile(ptr, b, offs_d, offs_t, s_b, s_d, s_t, mask):
    return tl.load(ptr + b * s_b + offs_d[:, None] * s_d + offs_t[None, :] * s_t, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _load_bc(ptr, b, grp, n, offs_d, offs_t, mask_d, mask_t, s0, s1, s2, s3, VARIABLE: tl.constexpr):
    """State n of B or C for the tile: (1, BLOCK_T) if time-variable, (BLOCK_D, 1) if time-invariant.

    Variable/grouped tensors are (batch, G, N, L) with strides s0..s3; time-invariant ones are (dim, N)
    with the channel stride in s1 and the state stride in s2.
    """
    if VARIABLE:
        v = tl.load(ptr + b * s0 + grp * s1 + n * s2 + offs_t * s3, mask=mask_t, other=0.0).to(tl.float32)
        return v[None, :]
    else:
        v = tl.load(ptr + offs_d * s1 + n * s2, mask=mask_d, other=0.0).to(tl.float32)
        return v[:, None]


@triton.jit
def _preceding_segment(i, n_seg, seg, FROM_LATER: tl.constexpr):
    """(s, precedes): the i-th segment in scan order, farthest first, and whether it precedes `seg`.
    FROM_LATER: the segments that precede in scan order are those with larger indices."""
    if FROM_LATER:
        s = n_seg - 1 - i
        precedes = s > seg
    else:
        s = i
        precedes = s < seg
    return s, precedes


@triton.jit
def _is_last_segment(seg, n_seg, REVERSE: tl.constexpr):
    """Whether `seg` ends the scan (the one that writes the last state)."""
    if REVERSE:
        return seg == 0
    else:
        return seg == n_seg - 1


@triton.jit
def _segment_entry(state, seg_h_ptr, seg_p_ptr, b, seg, n_seg, offs_d, offs_n, mask_dn, DIM, N,
                   FROM_LATER: tl.constexpr, SEG_MODE: tl.constexpr):
    """Fold the segments that precede `seg` in scan order into `state` (BLOCK_D, N_PAD).

    seg_h / seg_p are (batch, n_seg, dim, N): each segment's end value computed from a zero start,
    and its total decay product. SEG_MODE 0: no segments. FROM_LATER: the segments that precede in
    scan order are those with larger indices (reverse scans, and the backward carry of forward scans).
    """
    if SEG_MODE == 1:
        for i in range(n_seg):  # segments that do not precede `seg` are skipped
            s, precedes = _preceding_segment(i, n_seg, seg, FROM_LATER)
            if precedes:
                off = ((b * n_seg + s) * DIM + offs_d[:, None]) * N + offs_n[None, :]
                h_s = tl.load(seg_h_ptr + off, mask=mask_dn, other=0.0)
                p_s = tl.load(seg_p_ptr + off, mask=mask_dn, other=0.0)
                state = h_s + p_s * state
    return state


@triton.jit
def _fwd_program(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    out_ptr, ckpt_ptr, last_ptr, seg_h_ptr, seg_p_ptr,
    DIM, L, N, GROUP_B, GROUP_C, SEG_LEN, N_SEG, N_DTILES, N_TILES,
    s_ub, s_ud, s_ut, s_tb, s_td, s_tt, s_zb, s_zd, s_zt, s_ob, s_od, s_ot, s_ad, s_an,
    s_b0, s_b1, s_b2, s_b3, s_c0, s_c1, s_c2, s_c3,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
    SOFTPLUS: tl.constexpr, B_VAR: tl.constexpr, C_VAR: tl.constexpr, REVERSE: tl.constexpr,
    STATE_ONLY: tl.constexpr, SEG_MODE: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, N_PAD: tl.constexpr, UNROLL_N: tl.constexpr,
    GATHER_FLIP: tl.constexpr, CKPT_T: tl.constexpr, STAGES: tl.constexpr,
):
    """Forward scan of one (batch row, channel tile, segment).

    STAGES: the loop over states is software-pipelined that many stages (its loads of A, B, C for the next states
    are issued ahead, through shared memory); 1 leaves it as written.

    STATE_ONLY: write only the segment's end state (zero start) and its decay product into
    seg_h/seg_p. Otherwise write out, the state entering every CKPT_T-step interval (the checkpoints;
    BLOCK_T / CKPT_T of them per tile) and (last segment) last_state.
    """
    pid = tl.program_id(0)
    seg = tl.program_id(1)
    b = pid // N_DTILES
    dtile = pid % N_DTILES
    offs_d = dtile * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < DIM
    grp_b = (dtile * BLOCK_D) // GROUP_B  # a channel tile never straddles groups
    grp_c = (dtile * BLOCK_D) // GROUP_C
    offs_n = tl.arange(0, N_PAD)
    mask_dn = mask_d[:, None] & (offs_n[None, :] < N)
    cols = tl.arange(0, BLOCK_T)
    if REVERSE:  # scan order runs right to left inside a tile
        first_col = cols[None, :] == BLOCK_T - 1
        last_col = cols[None, :] == 0
    else:
        first_col = cols[None, :] == 0
        last_col = cols[None, :] == BLOCK_T - 1

    seg_start = seg * SEG_LEN
    seg_stop = tl.minimum(seg_start + SEG_LEN, L)
    tile0 = seg_start // BLOCK_T
    n_tiles = (seg_stop - seg_start + BLOCK_T - 1) // BLOCK_T

    state = tl.zeros((BLOCK_D, N_PAD), dtype=tl.float32)
    if not STATE_ONLY:
        if HAS_H0:
            state = tl.load(h0_ptr + (b * DIM + offs_d[:, None]) * N + offs_n[None, :], mask=mask_dn, other=0.0)
        state = _segment_entry(state, seg_h_ptr, seg_p_ptr, b, seg, N_SEG, offs_d, offs_n, mask_dn, DIM, N,
                               REVERSE, SEG_MODE)
    if HAS_D:
        d_skip = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    dt_sum = tl.zeros((BLOCK_D,), dtype=tl.float32)
    SUB: tl.constexpr = BLOCK_T // CKPT_T  # checkpoint intervals per tile
    ck_sub = tl.arange(0, SUB)[None, :]  # (1, SUB): the tile's intervals
    if REVERSE:  # an interval's first step ends it in scan order; its state enters the interval to its left
        ck_end = tl.arange(0, CKPT_T)[None, None, :] == 0
        ck_shift = -1
        ck_used = ck_sub >= 1
    else:
        ck_end_idx = tl.zeros((BLOCK_D, SUB, 1), tl.int32) + (CKPT_T - 1)  # each interval's last step, for a gather
        ck_end = tl.arange(0, CKPT_T)[None, None, :] == CKPT_T - 1
        ck_shift = 1
        ck_used = ck_sub < SUB - 1

    for i in range(n_tiles):
        if REVERSE:
            tile = tile0 + n_tiles - 1 - i
        else:
            tile = tile0 + i
        offs_t = tile * BLOCK_T + cols
        mask_t = offs_t < seg_stop
        m2 = mask_d[:, None] & mask_t[None, :]
        if SUB > 1:
            ck_next = tile * SUB + ck_sub + ck_shift  # (1, SUB): the checkpoint each interval's end state enters
            ck_store = ck_used & (ck_next < N_TILES)
        u = _load_tile(u_ptr, b, offs_d, offs_t, s_ub, s_ud, s_ut, m2)
        dt = _load_tile(dt_ptr, b, offs_d, offs_t, s_tb, s_td, s_tt, m2)
        if HAS_BIAS:
            dt += bias[:, None]
        if SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(m2, dt, 0.0)  # identity step outside the sequence
        dt_sum += tl.sum(dt, axis=1)
        dtu = dt * u
        y = tl.zeros((BLOCK_D, BLOCK_T), dtype=tl.float32)
        # unrolled UNROLL_N times (the plan's choice: faster at long tiles, slower at short ones) and pipelined
        for n in tl.range(0, N, loop_unroll_factor=UNROLL_N, num_stages=STAGES):
            sel = offs_n[None, :] == n
            a_n = tl.load(A_ptr + offs_d * s_ad + n * s_an, mask=mask_d, other=0.0).to(tl.float32) * LOG2E
            a = tl.exp2(dt * a_n[:, None])
            x = dtu * _load_bc(B_ptr, b, grp_b, n, offs_d, offs_t, mask_d, mask_t, s_b0, s_b1, s_b2, s_b3, B_VAR)
            h_in = _column(state, sel)
            if not STATE_ONLY:  # the entry state of the tile's first checkpoint interval in scan order
                if REVERSE:
                    first_ck = tile * SUB + SUB - 1
                else:
                    first_ck = tile * SUB
                tl.store(ckpt_ptr + ((b * DIM + offs_d) * N_TILES + first_ck) * N + n, h_in,
                         mask=mask_d & (first_ck < N_TILES))
            x = tl.where(first_col, x + a * h_in[:, None], x)
            h = _linear_scan(a, x, REVERSE, GATHER_FLIP, BLOCK_T)
            if not STATE_ONLY:
                y += h * _load_bc(C_ptr, b, grp_c, n, offs_d, offs_t, mask_d, mask_t, s_c0, s_c1, s_c2, s_c3, C_VAR)
            state = tl.where(sel, _column(h, last_col)[:, None], state)
            if SUB > 1 and not STATE_ONLY:
                # The entry checkpoints of the tile's later CKPT_T-step intervals (for a backward tile shorter than
                # the forward's): the state leaving each interval, from a (BLOCK_D, SUB, CKPT_T) view of h. Inside one
                # warp, forward in time, a gather takes it with one shuffle per interval where a masked sum costs a
                # butterfly reduction (offline sm_90 SASS of the 1024-step tile: 2,202 -> 2,047 instructions per 4
                # states; H200, session 18: forward kernel 984 -> 930 us at (8, 3072, 2048, 16)). Reverse scans keep
                # the sum (2,346 -> 2,460 with the gather). (A store of h masked to those steps converts the whole
                # tile to the store's layout through shared memory at every state.)
                h3 = tl.reshape(h, (BLOCK_D, SUB, CKPT_T))
                if GATHER_FLIP and not REVERSE:
                    ends = tl.reshape(tl.gather(h3, ck_end_idx, 2), (BLOCK_D, SUB))
                else:
                    ends = tl.sum(tl.where(ck_end, h3, 0.0), axis=2)
                tl.store(ckpt_ptr + ((b * DIM + offs_d[:, None]) * N_TILES + ck_next) * N + n, ends,
                         mask=mask_d[:, None] & ck_store)
        if not STATE_ONLY:
            if HAS_D:
                y += d_skip[:, None] * u
            if HAS_Z:
                zv = _load_tile(z_ptr, b, offs_d, offs_t, s_zb, s_zd, s_zt, m2)
                y = y * zv * tl.sigmoid(zv)
            o_ptrs = out_ptr + b * s_ob + offs_d[:, None] * s_od + offs_t[None, :] * s_ot
            tl.store(o_ptrs, y.to(out_ptr.dtype.element_ty), mask=m2)

    seg_off = ((b * N_SEG + seg) * DIM + offs_d[:, None]) * N + offs_n[None, :]
    if STATE_ONLY:
        tl.store(seg_h_ptr + seg_off, state, mask=mask_dn)
        a_full = tl.load(A_ptr + offs_d[:, None] * s_ad + offs_n[None, :] * s_an, mask=mask_dn, other=0.0)
        tl.store(seg_p_ptr + seg_off, tl.exp2(a_full.to(tl.float32) * LOG2E * dt_sum[:, None]), mask=mask_dn)
    else:
        if _is_last_segment(seg, N_SEG, REVERSE):
            tl.store(last_ptr + (b * DIM + offs_d[:, None]) * N + offs_n[None, :], state, mask=mask_dn)


@triton.jit
def _with(states, n: tl.constexpr, value):
    """The tuple `states` with entry n replaced by value."""
    return states[:n] + (value,) + states[n + 1:]


@triton.jit
def _columns(ptr, offs, n_stride, N, mask_d, N_PAD: tl.constexpr):
    """N_PAD (BLOCK_D,) fp32 vectors ptr[offs + n * n_stride] for n < N_PAD, zero for n >= N (N may be a vector)."""
    cols = (tl.load(ptr + offs, mask=mask_d & (0 < N), other=0.0).to(tl.float32),)
    for n in tl.static_range(1, N_PAD):
        cols = cols + (tl.load(ptr + offs + n * n_stride, mask=mask_d & (n < N), other=0.0).to(tl.float32),)
    return cols


@triton.jit
def _store_columns(ptr, offs, n_stride, cols, N, mask_d, N_PAD: tl.constexpr):
    for n in tl.static_range(N_PAD):
        tl.store(ptr + offs + n * n_stride, cols[n], mask=mask_d & (n < N))


@triton.jit
def _pack16(lo, hi):
    """Two 16-bit vectors of one shape as one uint32 vector: lo's bits low, hi's high."""
    lo_bits = lo.to(tl.uint16, bitcast=True).to(tl.uint32)
    hi_bits = hi.to(tl.uint16, bitcast=True).to(tl.uint32)
    return lo_bits | (hi_bits << 16)


@triton.jit
def _unpack16(words, dtype: tl.constexpr):
    """The (low, high) halves of `_pack16`'s words as fp32, each read as `dtype` (bf16: a shift or a mask)."""
    if dtype == tl.bfloat16:  # a bf16 is the top half of the fp32 of the same value
        lo = (words << 16).to(tl.float32, bitcast=True)
        hi = (words & 0xFFFF0000).to(tl.float32, bitcast=True)
    else:
        lo = (words & 0xFFFF).to(tl.uint16).to(dtype, bitcast=True).to(tl.float32)
        hi = (words >> 16).to(tl.uint16).to(dtype, bitcast=True).to(tl.float32)
    return lo, hi


@triton.jit
def _seq_loads(u_row, dt_row, z_row, b_row, c_row, t, mask_d, valid, s_ut, s_tt, s_zt, s_b2, s_b3, s_c2, s_c3, N,
               LOAD_Z: tl.constexpr, B_VAR: tl.constexpr, C_VAR: tl.constexpr, SHARED_BC: tl.constexpr,
               N_PAD: tl.constexpr):
    """Step t's raw loads for `_fwd_seq_program` (zeros where not valid): u, dt, z of the BLOCK_D channels, and B[t],
    C[t] of every state spread over the lanes, as (2 N_PAD,) B-then-C in one load when SHARED_BC (then both returned
    vectors are that one). Absent tensors come back as u (never used).

    B[t] and C[t] are loaded once per step for the whole channel tile; each channel gets state n's value by a gather
    (one shuffle inside a one-warp program). (A scalar load per state and step costs an address computation and a
    conversion each: 376 against 256 SASS instructions per step, offline sm_90 compile of a 32-channel one-warp
    program.) B and C of one dtype share one load; of different dtypes (one pointer tensor cannot hold both) they
    take one each: H200, session 9, fwd at (64, 768, 197, 16) 0.368-0.379 ms with one load (calls 1-3) and 0.413
    with two loads for every dtype (call 4), not one run.
    """
    m = mask_d & valid
    u = tl.load(u_row + t * s_ut, mask=m, other=0.0)
    dt = tl.load(dt_row + t * s_tt, mask=m, other=0.0)
    z = u
    if LOAD_Z:
        z = tl.load(z_row + t * s_zt, mask=m, other=0.0)
    b_vec = u
    c_vec = u
    if SHARED_BC:
        bc_k = tl.arange(0, 2 * N_PAD)
        nn = bc_k % N_PAD
        bc_ptr = tl.where(bc_k < N_PAD, b_row + nn * s_b2 + t * s_b3, c_row + nn * s_c2 + t * s_c3)
        b_vec = tl.load(bc_ptr, mask=(nn < N) & valid, other=0.0)
        c_vec = b_vec
    else:
        n_k = tl.arange(0, N_PAD)
        if B_VAR:
            b_vec = tl.load(b_row + n_k * s_b2 + t * s_b3, mask=(n_k < N) & valid, other=0.0)
        if C_VAR:
            c_vec = tl.load(c_row + n_k * s_c2 + t * s_c3, mask=(n_k < N) & valid, other=0.0)
    return u, dt, z, b_vec, c_vec


@triton.jit
def _fwd_seq_program(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    out_ptr, ckpt_ptr, last_ptr, seg_h_ptr, seg_p_ptr,
    DIM, L, N, GROUP_B, GROUP_C, SEG_LEN, N_SEG, N_DTILES, N_TILES,
    s_ub, s_ud, s_ut, s_tb, s_td, s_tt, s_zb, s_zd, s_zt, s_ob, s_od, s_ot, s_ad, s_an,
    s_b0, s_b1, s_b2, s_b3, s_c0, s_c1, s_c2, s_c3,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
    SOFTPLUS: tl.constexpr, B_VAR: tl.constexpr, C_VAR: tl.constexpr, REVERSE: tl.constexpr,
    STATE_ONLY: tl.constexpr, SEG_MODE: tl.constexpr,
    BLOCK_D: tl.constexpr, N_PAD: tl.constexpr, CKPT_T: tl.constexpr, SEQ_STAGES: tl.constexpr,
    SEQ_AHEAD: tl.constexpr, SPLIT: tl.constexpr,
):
    """Forward scan of one (batch row, channel tile, segment), one time step per loop iteration.

    Each lane keeps its states in registers: N_PAD / SPLIT of them, as a tuple of (LANES,) vectors with the loop over
    states unrolled, where LANES = BLOCK_D * SPLIT and lane l holds channel l // SPLIT's states from
    (l % SPLIT) * N_PAD / SPLIT on. Per step and state:

        h_n = exp2(dt * A_n * log2(e)) * h_n + (dt * u) * B_n[t]     y += h_n * C_n[t]

    then the SPLIT lanes of a channel sum their parts of y (butterfly shuffles), and the first writes it. B[t] and
    C[t] are loaded once per step for the whole program and handed to each lane by a gather: a shuffle per state in a
    one-warp program, shared memory in wider ones. Splitting a channel's states over lanes doubles or quadruples the
    programs' warps for the cost of per-channel work done on every lane of the channel; that, and wider programs that
    share each step's B/C load, is what the plan's rows pick by measurement (scan_plan.TILE_PLANS).
    There is no scan, no carry taken out of a tile, and no cross-lane reduction beyond the SPLIT lanes, which are the
    fixed costs of `_fwd_program` per tile and state; what remains is one FMA of dependency per step. That wins for
    short rows, of which there are many (Vim at 224 px: L = 197, batch x dim = 49152 rows), and loses for long ones
    (few programs, per-step latency). The unrolled states bound N_PAD (the plan uses it for N <= 16 by default).
    Outputs are `_fwd_program`'s: out, the state entering every CKPT_T-step interval in scan order (the checkpoints
    the shared backward starts from), segment states (STATE_ONLY) and the last state.
    """
    pid = tl.program_id(0)
    seg = tl.program_id(1)
    b = pid // N_DTILES
    dtile = pid % N_DTILES
    LANES: tl.constexpr = BLOCK_D * SPLIT
    NH: tl.constexpr = N_PAD // SPLIT  # states per lane
    lane = tl.arange(0, LANES)
    offs_d = dtile * BLOCK_D + lane // SPLIT
    mask_d = offs_d < DIM
    n0 = (lane % SPLIT) * NH  # the lane's first state
    n_left = N - n0  # its states n < n_left exist
    grp_b = (dtile * BLOCK_D) // GROUP_B  # a channel tile never straddles groups
    grp_c = (dtile * BLOCK_D) // GROUP_C
    seg_start = seg * SEG_LEN
    seg_stop = tl.minimum(seg_start + SEG_LEN, L)
    state_row = (b * DIM + offs_d) * N + n0  # (batch, dim, N) states: h0, last

    zero = tl.zeros((LANES,), dtype=tl.float32)
    hs = (zero,) * NH
    if not STATE_ONLY:
        if HAS_H0:
            hs = _columns(h0_ptr, state_row, 1, n_left, mask_d, NH)
        if SEG_MODE == 1:  # fold the segments that precede this one in scan order (see _segment_entry)
            for i in range(N_SEG):
                s, precedes = _preceding_segment(i, N_SEG, seg, REVERSE)
                if precedes:
                    seg_row = ((b * N_SEG + s) * DIM + offs_d) * N + n0
                    h_s = _columns(seg_h_ptr, seg_row, 1, n_left, mask_d, NH)
                    p_s = _columns(seg_p_ptr, seg_row, 1, n_left, mask_d, NH)
                    for n in tl.static_range(NH):
                        hs = _with(hs, n, h_s[n] + p_s[n] * hs[n])
    a_cols = _columns(A_ptr, offs_d * s_ad + n0 * s_an, s_an, n_left, mask_d, NH)  # exp2 takes dt * log2(e)
    if HAS_D:
        d_skip = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if not B_VAR:  # time-invariant (dim, N): loaded once
        b_cols = _columns(B_ptr, offs_d * s_b1 + n0 * s_b2, s_b2, n_left, mask_d, NH)
    if not C_VAR:
        c_cols = _columns(C_ptr, offs_d * s_c1 + n0 * s_c2, s_c2, n_left, mask_d, NH)
    u_row = u_ptr + b * s_ub + offs_d * s_ud
    dt_row = dt_ptr + b * s_tb + offs_d * s_td
    z_row = z_ptr + b * s_zb + offs_d * s_zd
    o_row = out_ptr + b * s_ob + offs_d * s_od
    b_row = B_ptr + b * s_b0 + grp_b * s_b1
    c_row = C_ptr + b * s_c0 + grp_c * s_c1
    ck_row = (b * DIM + offs_d) * N_TILES * N + n0  # (batch, dim, n_tiles, N) checkpoints
    dt_sum = zero

    # The loads of a step are issued SEQ_AHEAD steps ahead, into registers, so that their latency (L1, or L2 for a
    # third of them) overlaps earlier steps' arithmetic instead of stalling the step that needs them. (Triton's own
    # pipelining of this loop, SEQ_STAGES, did not pay: session 9.)
    SHARED_BC: tl.constexpr = B_VAR and C_VAR and B_ptr.dtype == C_ptr.dtype
    if SHARED_BC:  # B's N_PAD values, then C's: where C's start in the (2 N_PAD,) vector
        c_first = N_PAD
    else:
        c_first = 0
    n_steps = seg_stop - seg_start
    if REVERSE:
        t = seg_stop - 1
        t_step = -1
    else:
        t = seg_start
        t_step = 1
    LOAD_Z: tl.constexpr = HAS_Z and not STATE_ONLY  # a state-only pass writes no output: no z, no C
    LOAD_C: tl.constexpr = C_VAR and not STATE_ONLY
    # B[t] and C[t] of 16-bit types travel as one 32-bit word per state (B low, C high), so one gather per state
    # hands both to every lane (`_unpack16`). ncu, session 16, (64, 768, 197, 16), 32 channels on one warp: the step
    # loop stalled mostly on the short scoreboard (shuffles and exp2) with 32 shuffles per step; packed, 16, and the
    # short-scoreboard samples halved (16,294 -> 8,486), for a forward 1-2 % faster (the stalls moved to the loads).
    PACK_BC: tl.constexpr = SHARED_BC and LOAD_C and B_ptr.dtype.element_ty.primitive_bitwidth == 16
    ONE_BC_LOAD: tl.constexpr = SHARED_BC and not PACK_BC
    # `ahead` holds the loads in flight, the nearest step's first: step i + SEQ_AHEAD's are issued when step i starts.
    ahead = ()
    for k in tl.static_range(SEQ_AHEAD):
        ahead = ahead + (_seq_loads(
            u_row, dt_row, z_row, b_row, c_row, t + k * t_step, mask_d, k < n_steps, s_ut, s_tt, s_zt, s_b2, s_b3,
            s_c2, s_c3, N, LOAD_Z, B_VAR, LOAD_C, ONE_BC_LOAD, N_PAD),)
    for i in tl.range(0, n_steps, num_stages=SEQ_STAGES):
        u_raw, dt_raw, z_raw, b_raw, c_raw = ahead[0]
        ahead = ahead[1:] + (_seq_loads(
            u_row, dt_row, z_row, b_row, c_row, t + SEQ_AHEAD * t_step, mask_d, i + SEQ_AHEAD < n_steps, s_ut, s_tt,
            s_zt, s_b2, s_b3, s_c2, s_c3, N, LOAD_Z, B_VAR, LOAD_C, ONE_BC_LOAD, N_PAD),)
        if not STATE_ONLY:
            # A checkpoint holds the state entering a CKPT_T-step interval in scan order: before its first step
            # (forward) or its last (reverse; the last interval may end at L). Segments hold whole intervals.
            if REVERSE:
                entering = ((t + 1) % CKPT_T == 0) | (t == L - 1)
            else:
                entering = t % CKPT_T == 0
            if entering:
                _store_columns(ckpt_ptr, ck_row + (t // CKPT_T) * N, 1, hs, n_left, mask_d, NH)
        u = u_raw.to(tl.float32)
        dt = dt_raw.to(tl.float32)
        if HAS_BIAS:
            dt += bias
        if SOFTPLUS:
            dt = _softplus(dt)
        dt_sum += dt
        dtu = dt * u
        dt2 = dt * LOG2E
        if PACK_BC:
            bc_words = _pack16(b_raw, c_raw)
        else:
            b_vec = b_raw.to(tl.float32)
            c_vec = c_raw.to(tl.float32)
        y = zero
        for n in tl.static_range(NH):
            if PACK_BC:
                b_n, c_n = _unpack16(tl.gather(bc_words, n0 + n, 0), B_ptr.dtype.element_ty)
            elif B_VAR:
                b_n = tl.gather(b_vec, n0 + n, 0)
            else:
                b_n = b_cols[n]
            h = tl.exp2(dt2 * a_cols[n]) * hs[n] + dtu * b_n
            hs = _with(hs, n, h)
            if not STATE_ONLY:
                if not PACK_BC:  # (packed: c_n came with b_n)
                    if C_VAR:
                        c_n = tl.gather(c_vec, n0 + (c_first + n), 0)
                    else:
                        c_n = c_cols[n]
                y += h * c_n
        if not STATE_ONLY:
            # the lanes of a channel sum their parts (butterflies: every lane ends with the same bits)
            if SPLIT >= 2:
                y += tl.gather(y, lane ^ 1, 0)
            if SPLIT >= 4:
                y += tl.gather(y, lane ^ 2, 0)
            if SPLIT >= 8:
                y += tl.gather(y, lane ^ 4, 0)
            if HAS_D:
                y += d_skip * u
            if HAS_Z:
                zv = z_raw.to(tl.float32)
                y = y * zv * tl.sigmoid(zv)
            tl.store(o_row + t * s_ot, y.to(out_ptr.dtype.element_ty), mask=mask_d & (n0 == 0))
        t += t_step

    if STATE_ONLY:
        seg_row = ((b * N_SEG + seg) * DIM + offs_d) * N + n0
        _store_columns(seg_h_ptr, seg_row, 1, hs, n_left, mask_d, NH)
        for n in tl.static_range(NH):
            tl.store(seg_p_ptr + seg_row + n, tl.exp2(a_cols[n] * LOG2E * dt_sum), mask=mask_d & (n < n_left))
    else:
        if _is_last_segment(seg, N_SEG, REVERSE):
            _store_columns(last_ptr, state_row, 1, hs, n_left, mask_d, NH)


@triton.jit
def _fwd_route(
    k,
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, out_ptr, ckpt_ptr, last_ptr, seg_h_ptr,
    seg_p_ptr, DIM, L, N, GROUP_B, GROUP_C, SEG_LEN, N_SEG, N_DTILES, N_TILES, s_ub, s_ud, s_ut, s_tb,
    s_td, s_tt, s_zb, s_zd, s_zt, s_ob, s_od, s_ot, s_ad, s_an, s_b0, s_b1, s_b2, s_b3, s_c0, s_c1, s_c2, s_c3,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr, SOFTPLUS: tl.constexpr,
    B_VAR: tl.constexpr, C_VAR: tl.constexpr, STATE_ONLY: tl.constexpr, SEG_MODE: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, N_PAD: tl.constexpr,
    UNROLL_N: tl.constexpr, GATHER_FLIP: tl.constexpr, CKPT_T: tl.constexpr, dir_u, dir_dt, dir_A, dir_B, dir_C, dir_D,
    dir_bias, dir_state, dir_out, dir_ckpt, dir_seg, col_u, REVERSE: tl.constexpr, COL_SCALE: tl.constexpr,
    SEQUENTIAL: tl.constexpr, SEQ_STAGES: tl.constexpr, SEQ_AHEAD: tl.constexpr, SEQ_SPLIT: tl.constexpr,
):
    """A direction of a multi-direction launch: its tensors start k * dir_* elements after direction 0's, where k is
    the direction's index times DIR_SCALE (16 when every offset is a multiple of 16 elements, so that the compiler
    knows the direction's pointers stay 16-element aligned and keeps vectorised loads; else 1). A column route adds
    COL_SCALE (DIR_SCALE, else 0) times col_u to its u. SEQUENTIAL picks the step-by-step forward program
    (`_fwd_seq_program`) over the tiled one; both write the same outputs."""
    if SEQUENTIAL:
        _fwd_seq_program(
            u_ptr + k * dir_u + COL_SCALE * col_u, dt_ptr + k * dir_dt, A_ptr + k * dir_A, B_ptr + k * dir_B,
            C_ptr + k * dir_C, D_ptr + k * dir_D, z_ptr, bias_ptr + k * dir_bias, h0_ptr + k * dir_state,
            out_ptr + k * dir_out,
            ckpt_ptr + k * dir_ckpt, last_ptr + k * dir_state, seg_h_ptr + k * dir_seg, seg_p_ptr + k * dir_seg, DIM, L,
            N, GROUP_B, GROUP_C, SEG_LEN, N_SEG, N_DTILES, N_TILES, s_ub, s_ud, s_ut, s_tb, s_td, s_tt,
            s_zb, s_zd, s_zt, s_ob, s_od, s_ot, s_ad, s_an, s_b0, s_b1, s_b2, s_b3, s_c0, s_c1, s_c2, s_c3, HAS_D,
            HAS_Z, HAS_BIAS, HAS_H0, SOFTPLUS, B_VAR, C_VAR, REVERSE, STATE_ONLY, SEG_MODE,
            BLOCK_D, N_PAD, CKPT_T, SEQ_STAGES, SEQ_AHEAD, SEQ_SPLIT,
        )
    else:
        _fwd_program(
            u_ptr + k * dir_u + COL_SCALE * col_u, dt_ptr + k * dir_dt, A_ptr + k * dir_A, B_ptr + k * dir_B,
            C_ptr + k * dir_C, D_ptr + k * dir_D, z_ptr, bias_ptr + k * dir_bias, h0_ptr + k * dir_state,
            out_ptr + k * dir_out,
            ckpt_ptr + k * dir_ckpt, last_ptr + k * dir_state, seg_h_ptr + k * dir_seg, seg_p_ptr + k * dir_seg, DIM, L,
            N, GROUP_B, GROUP_C, SEG_LEN, N_SEG, N_DTILES, N_TILES, s_ub, s_ud, s_ut, s_tb, s_td, s_tt,
            s_zb, s_zd, s_zt, s_ob, s_od, s_ot, s_ad, s_an, s_b0, s_b1, s_b2, s_b3, s_c0, s_c1, s_c2, s_c3, HAS_D,
            HAS_Z, HAS_BIAS, HAS_H0, SOFTPLUS, B_VAR, C_VAR, REVERSE, STATE_ONLY, SEG_MODE,
            BLOCK_D, BLOCK_T, N_PAD, UNROLL_N, GATHER_FLIP, CKPT_T, SEQ_STAGES,
        )


# The dir_* offsets are distances between separate tensors (bidirectional) and change with every allocation:
# specialising on their divisibility, or typing them i32/i64 by value, would compile a new kernel whenever they
# change, so they are typed int64 and not specialised.
@triton.jit(do_not_specialize=FWD_DIRECTION_OFFSETS)
def selective_scan_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, out_ptr, ckpt_ptr, last_ptr, seg_h_ptr,
    seg_p_ptr, DIM, L, N, GROUP_B, GROUP_C, SEG_LEN, N_SEG, N_DTILES, N_TILES, s_ub, s_ud, s_ut, s_tb,
    s_td, s_tt, s_zb, s_zd, s_zt, s_ob, s_od, s_ot, s_ad, s_an, s_b0, s_b1, s_b2, s_b3, s_c0, s_c1, s_c2, s_c3,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr, SOFTPLUS: tl.constexpr,
    B_VAR: tl.constexpr, C_VAR: tl.constexpr, STATE_ONLY: tl.constexpr, SEG_MODE: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, N_PAD: tl.constexpr, UNROLL_N: tl.constexpr,
    GATHER_FLIP: tl.constexpr, CKPT_T: tl.constexpr, dir_u: tl.int64, dir_dt: tl.int64, dir_A: tl.int64,
    dir_B: tl.int64, dir_C: tl.int64, dir_D: tl.int64, dir_bias: tl.int64, dir_state: tl.int64, dir_out: tl.int64,
    dir_ckpt: tl.int64, dir_seg: tl.int64, col_u: tl.int64,
    DIRECTIONS: tl.constexpr, REVERSE: tl.constexpr, DIR_SCALE: tl.constexpr, SEQUENTIAL: tl.constexpr,
    SEQ_STAGES: tl.constexpr, SEQ_AHEAD: tl.constexpr, SEQ_SPLIT: tl.constexpr,
):
    """Forward launch: grid (batch x channel tiles, segments, DIRECTIONS). DIRECTIONS 1: one scan (REVERSE
    chooses its order); 2: a forward and a reverse scan, each with its own tensors; 4: the four routes of a
    2D map (rows, columns, both reversed). dir_* are the element offsets from one direction's tensors to the
    next's (0 for a tensor the directions share); col_u is added to the column routes' (1 and 3) u."""
    if DIRECTIONS == 1:
        _fwd_route(
            0, u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, out_ptr, ckpt_ptr, last_ptr,
            seg_h_ptr, seg_p_ptr, DIM, L, N, GROUP_B, GROUP_C, SEG_LEN, N_SEG, N_DTILES, N_TILES, s_ub,
            s_ud, s_ut, s_tb, s_td, s_tt, s_zb, s_zd, s_zt, s_ob, s_od, s_ot, s_ad, s_an, s_b0, s_b1, s_b2, s_b3, s_c0,
            s_c1, s_c2, s_c3, HAS_D, HAS_Z, HAS_BIAS, HAS_H0, SOFTPLUS, B_VAR, C_VAR, STATE_ONLY, SEG_MODE,
            BLOCK_D, BLOCK_T, N_PAD, UNROLL_N, GATHER_FLIP, CKPT_T, dir_u, dir_dt, dir_A, dir_B, dir_C, dir_D, dir_bias,
            dir_state, dir_out, dir_ckpt, dir_seg, 0, REVERSE, 0, SEQUENTIAL, SEQ_STAGES, SEQ_AHEAD, SEQ_SPLIT,
        )
    else:
        k = tl.program_id(2)
        if DIRECTIONS == 2:  # bidirectional: 0 forward in time, 1 reverse
            if k == 0:
                _fwd_route(
                    0, u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, out_ptr, ckpt_ptr, last_ptr,
                    seg_h_ptr, seg_p_ptr, DIM, L, N, GROUP_B, GROUP_C, SEG_LEN, N_SEG, N_DTILES, N_TILES,
                    s_ub, s_ud, s_ut, s_tb, s_td, s_tt, s_zb, s_zd, s_zt, s_ob, s_od, s_ot, s_ad, s_an, s_b0, s_b1,
                    s_b2, s_b3, s_c0, s_c1, s_c2, s_c3, HAS_D, HAS_Z, HAS_BIAS, HAS_H0, SOFTPLUS, B_VAR, C_VAR,
                    STATE_ONLY, SEG_MODE, BLOCK_D, BLOCK_T, N_PAD, UNROLL_N, GATHER_FLIP, CKPT_T, dir_u,
                    dir_dt, dir_A, dir_B, dir_C, dir_D, dir_bias, dir_state, dir_out, dir_ckpt, dir_seg,
                    col_u, False, 0, SEQUENTIAL, SEQ_STAGES, SEQ_AHEAD, SEQ_SPLIT,
                )
            else:
                _fwd_route(
                    1 * DIR_SCALE, u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, out_ptr,
                    ckpt_ptr, last_ptr, seg_h_ptr, seg_p_ptr, DIM, L, N, GROUP_B, GROUP_C, SEG_LEN, N_SEG, N_DTILES,
                    N_TILES, s_ub, s_ud, s_ut, s_tb, s_td, s_tt, s_zb, s_zd, s_zt, s_ob, s_od, s_ot, s_ad,
                    s_an, s_b0, s_b1, s_b2, s_b3, s_c0, s_c1, s_c2, s_c3, HAS_D, HAS_Z, HAS_BIAS, HAS_H0, SOFTPLUS,
                    B_VAR, C_VAR, STATE_ONLY, SEG_MODE, BLOCK_D, BLOCK_T, N_PAD, UNROLL_N, GATHER_FLIP,
                    CKPT_T, dir_u, dir_dt, dir_A, dir_B, dir_C, dir_D, dir_bias, dir_state, dir_out, dir_ckpt, dir_seg,
                    col_u, True, 0, SEQUENTIAL, SEQ_STAGES, SEQ_AHEAD, SEQ_SPLIT,
                )
        else:  # 2D map: 0 rows, 1 columns, 2 rows reversed, 3 columns reversed
            if k == 0:
                _fwd_route(
                    0, u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, out_ptr, ckpt_ptr, last_ptr,
                    seg_h_ptr, seg_p_ptr, DIM, L, N, GROUP_B, GROUP_C, SEG_LEN, N_SEG, N_DTILES, N_TILES,
                    s_ub, s_ud, s_ut, s_tb, s_td, s_tt, s_zb, s_zd, s_zt, s_ob, s_od, s_ot, s_ad, s_an, s_b0, s_b1,
                    s_b2, s_b3, s_c0, s_c1, s_c2, s_c3, HAS_D, HAS_Z, HAS_BIAS, HAS_H0, SOFTPLUS, B_VAR, C_VAR,
                    STATE_ONLY, SEG_MODE, BLOCK_D, BLOCK_T, N_PAD, UNROLL_N, GATHER_FLIP, CKPT_T, dir_u,
                    dir_dt, dir_A, dir_B, dir_C, dir_D, dir_bias, dir_state, dir_out, dir_ckpt, dir_seg,
                    col_u, False, 0, SEQUENTIAL, SEQ_STAGES, SEQ_AHEAD, SEQ_SPLIT,
                )
            elif k == 1:
                _fwd_route(
                    1 * DIR_SCALE, u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, out_ptr,
                    ckpt_ptr, last_ptr, seg_h_ptr, seg_p_ptr, DIM, L, N, GROUP_B, GROUP_C, SEG_LEN, N_SEG, N_DTILES,
                    N_TILES, s_ub, s_ud, s_ut, s_tb, s_td, s_tt, s_zb, s_zd, s_zt, s_ob, s_od, s_ot, s_ad,
                    s_an, s_b0, s_b1, s_b2, s_b3, s_c0, s_c1, s_c2, s_c3, HAS_D, HAS_Z, HAS_BIAS, HAS_H0, SOFTPLUS,
                    B_VAR, C_VAR, STATE_ONLY, SEG_MODE, BLOCK_D, BLOCK_T, N_PAD, UNROLL_N, GATHER_FLIP,
                    CKPT_T, dir_u, dir_dt, dir_A, dir_B, dir_C, dir_D, dir_bias, dir_state, dir_out, dir_ckpt, dir_seg,
                    col_u, False, DIR_SCALE, SEQUENTIAL, SEQ_STAGES, SEQ_AHEAD, SEQ_SPLIT,
                )
            elif k == 2:
                _fwd_route(
                    2 * DIR_SCALE, u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, out_ptr,
                    ckpt_ptr, last_ptr, seg_h_ptr, seg_p_ptr, DIM, L, N, GROUP_B, GROUP_C, SEG_LEN, N_SEG, N_DTILES,
                    N_TILES, s_ub, s_ud, s_ut, s_tb, s_td, s_tt, s_zb, s_zd, s_zt, s_ob, s_od, s_ot, s_ad,
                    s_an, s_b0, s_b1, s_b2, s_b3, s_c0, s_c1, s_c2, s_c3, HAS_D, HAS_Z, HAS_BIAS, HAS_H0, SOFTPLUS,
                    B_VAR, C_VAR, STATE_ONLY, SEG_MODE, BLOCK_D, BLOCK_T, N_PAD, UNROLL_N, GATHER_FLIP,
                    CKPT_T, dir_u, dir_dt, dir_A, dir_B, dir_C, dir_D, dir_bias, dir_state, dir_out, dir_ckpt, dir_seg,
                    col_u, True, 0, SEQUENTIAL, SEQ_STAGES, SEQ_AHEAD, SEQ_SPLIT,
                )
            else:
                _fwd_route(
                    3 * DIR_SCALE, u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, out_ptr,
                    ckpt_ptr, last_ptr, seg_h_ptr, seg_p_ptr, DIM, L, N, GROUP_B, GROUP_C, SEG_LEN, N_SEG, N_DTILES,
                    N_TILES, s_ub, s_ud, s_ut, s_tb, s_td, s_tt, s_zb, s_zd, s_zt, s_ob, s_od, s_ot, s_ad,
                    s_an, s_b0, s_b1, s_b2, s_b3, s_c0, s_c1, s_c2, s_c3, HAS_D, HAS_Z, HAS_BIAS, HAS_H0, SOFTPLUS,
                    B_VAR, C_VAR, STATE_ONLY, SEG_MODE, BLOCK_D, BLOCK_T, N_PAD, UNROLL_N, GATHER_FLIP,
                    CKPT_T, dir_u, dir_dt, dir_A, dir_B, dir_C, dir_D, dir_bias, dir_state, dir_out, dir_ckpt, dir_seg,
                    col_u, True, DIR_SCALE, SEQUENTIAL, SEQ_STAGES, SEQ_AHEAD, SEQ_SPLIT,
                )


@triton.jit
def _load_a(A_ptr, n, offs_d, s_ad, s_an, mask_d):
    """A[:, n] of the channel tile, fp32 (BLOCK_D,)."""
    return tl.load(A_ptr + offs_d * s_ad + n * s_an, mask=mask_d, other=0.0).to(tl.float32)


@triton.jit
def _load_entry(ckpt_ptr, b, n, offs_d, ckpt_tile, DIM, N_TILES, N, mask_d):
    """State n entering forward checkpoint interval `ckpt_tile`, from the (batch, dim, n_tiles, N) checkpoints."""
    return tl.load(ckpt_ptr + ((b * DIM + offs_d) * N_TILES + ckpt_tile) * N + n, mask=mask_d, other=0.0)


@triton.jit
def _bwd_state_loads(A_ptr, B_ptr, C_ptr, ckpt_ptr, b, grp_b, grp_c, n, N, offs_d, offs_t, mask_d, mask_t, ckpt_tile,
                     DIM, N_TILES, s_ad, s_an, s_b0, s_b1, s_b2, s_b3, s_c0, s_c1, s_c2, s_c3, B_VAR: tl.constexpr,
                     C_VAR: tl.constexpr, NEED_B: tl.constexpr):
    """State n's inputs of a backward tile, for PREFETCH (zeros for n >= N): A[:, n], C_n and, when NEED_B, B_n and
    the tile's entry checkpoint of state n (else C_n stands in for B_n and A[:, n] for the checkpoint, never used)."""
    in_range = n < N
    a_nat = _load_a(A_ptr, n, offs_d, s_ad, s_an, mask_d & in_range)
    c_n = _load_bc(C_ptr, b, grp_c, n, offs_d, offs_t, mask_d & in_range, mask_t & in_range, s_c0, s_c1, s_c2, s_c3,
                   C_VAR)
    b_n = c_n
    h_in = a_nat
    if NEED_B:
        b_n = _load_bc(B_ptr, b, grp_b, n, offs_d, offs_t, mask_d & in_range, mask_t & in_range, s_b0, s_b1, s_b2,
                       s_b3, B_VAR)
        h_in = _load_entry(ckpt_ptr, b, n, offs_d, ckpt_tile, DIM, N_TILES, N, mask_d & in_range)
    return a_nat, c_n, b_n, h_in


@triton.jit
def _bwd_program(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, dlast_ptr, ckpt_ptr,
    seg_e_ptr, seg_p_ptr,
    du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dh0_ptr,
    DIM, L, BC_LEN, N, GROUP_B, GROUP_C, DB_ROWS, DC_ROWS, SEG_LEN, N_SEG, N_DTILES, N_TILES,
    s_ub, s_ud, s_ut, s_tb, s_td, s_tt, s_zb, s_zd, s_zt, s_gb, s_gd, s_gt, s_xb, s_ad, s_an,
    s_b0, s_b1, s_b2, s_b3, s_c0, s_c1, s_c2, s_c3,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DLAST: tl.constexpr,
    SOFTPLUS: tl.constexpr, B_VAR: tl.constexpr, C_VAR: tl.constexpr, REVERSE: tl.constexpr,
    CARRY_ONLY: tl.constexpr, SEG_MODE: tl.constexpr, ATOMIC_BC: tl.constexpr,
    ATOMIC_DZ: tl.constexpr, NEED_DH0: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, N_PAD: tl.constexpr, CKPT_RATIO: tl.constexpr,
    GATHER_FLIP: tl.constexpr, PREFETCH: tl.constexpr,
):
    """Backward of one (batch row, channel tile, segment), tiles in reverse scan order.

    BLOCK_T spans CKPT_RATIO of the forward's checkpoint intervals (N_TILES of them per row, one every
    min(forward, backward tile) steps), so the backward has its own tile length, channel tile and warps.
    GATHER_FLIP (one-warp programs): 1 runs the right-to-left scan on tiles reversed with tl.gather (_linear_scan);
    2 also takes a_{t+1} from a by a gather (SHIFT_A) instead of a second exp2 per element. PREFETCH issues each state's
    loads (A[:, n], B_n, C_n, the entry checkpoint) during the state before it, into registers (the plan's choice:
    it pays where registers are to spare, and costs where they are not).

    The dh recurrence dh_t = g_t + a_{t+1} dh_{t+1} (g = dy * C) is carried between tiles as
    e = a_first * dh_first, and between segments like the forward state (CARRY_ONLY pass writes each
    segment's e from a zero carry into seg_e). Per-channel reductions (dA, dD, dbias, invariant dB/dC) are
    added atomically into one sum each (ATOMIC_BC) or written as per-(batch, segment) partials (deterministic);
    time-variable dB/dC are summed over the channel tile in registers, then atomically added (ATOMIC_BC) or
    written as per-channel-tile partials (deterministic).
    """
    pid = tl.program_id(0)
    seg = tl.program_id(1)
    b = pid // N_DTILES
    dtile = pid % N_DTILES
    offs_d = dtile * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < DIM
    grp_b = (dtile * BLOCK_D) // GROUP_B  # a channel tile never straddles groups
    grp_c = (dtile * BLOCK_D) // GROUP_C
    offs_n = tl.arange(0, N_PAD)
    mask_dn = mask_d[:, None] & (offs_n[None, :] < N)
    cols = tl.arange(0, BLOCK_T)
    if REVERSE:  # scan order runs right to left inside a tile
        first_col = cols[None, :] == BLOCK_T - 1
        last_col = cols[None, :] == 0
    else:
        first_col = cols[None, :] == 0
        last_col = cols[None, :] == BLOCK_T - 1

    seg_start = seg * SEG_LEN
    seg_stop = tl.minimum(seg_start + SEG_LEN, L)
    tile0 = seg_start // BLOCK_T
    n_tiles = (seg_stop - seg_start + BLOCK_T - 1) // BLOCK_T
    row_part = b * N_SEG + seg  # index of this program's (batch, segment) partial

    carry = tl.zeros((BLOCK_D, N_PAD), dtype=tl.float32)
    if not CARRY_ONLY:
        if HAS_DLAST:
            carry = tl.load(dlast_ptr + (b * DIM + offs_d[:, None]) * N + offs_n[None, :], mask=mask_dn, other=0.0)
        # the carry comes from later positions: the segments that follow in scan order
        carry = _segment_entry(carry, seg_e_ptr, seg_p_ptr, b, seg, N_SEG, offs_d, offs_n, mask_dn, DIM, N,
                               not REVERSE, SEG_MODE)
    if HAS_D:
        d_skip = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    dA_acc = tl.zeros((BLOCK_D, N_PAD), dtype=tl.float32)
    dB_acc = tl.zeros((BLOCK_D, N_PAD), dtype=tl.float32)
    dC_acc = tl.zeros((BLOCK_D, N_PAD), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)

    SHIFT_A: tl.constexpr = GATHER_FLIP == 2
    if SHIFT_A:  # where a_next (against the scan order: reversed for forward scans) takes each element from
        # Taken modulo BLOCK_T, so that each register's source register is a constant the compiler folds (a clamp,
        # as in min(BLOCK_T - j, BLOCK_T - 1), made it select among all of a thread's registers: offline sm_90 SASS of
        # the 256:2:1 backward, 810 -> 785 instructions per state). The one position that wraps is never used.
        if REVERSE:
            shift = (cols + (BLOCK_T - 1)) % BLOCK_T
        else:  # reversed position j holds step BLOCK_T - 1 - j, whose a_next is a at step BLOCK_T - j
            shift = (BLOCK_T - cols) % BLOCK_T
        shift_idx = shift[None, :] + tl.zeros((BLOCK_D, BLOCK_T), tl.int32)
    if GATHER_FLIP:  # the tile's first step in scan order, where the dh carry is taken out (a gather's index)
        first_idx = tl.zeros((BLOCK_D, 1), tl.int32) + (BLOCK_T - 1) * REVERSE

    for i in range(n_tiles):
        if REVERSE:
            tile = tile0 + i
        else:
            tile = tile0 + n_tiles - 1 - i
        offs_t = tile * BLOCK_T + cols
        mask_t = offs_t < seg_stop
        # Time-variable dB/dC rows hold BC_LEN steps, which the launcher sets to L. Segments other than the last hold
        # whole tiles, so `offs_t < BC_LEN` keeps every write of dB/dC inside its segment. (A separate argument and
        # mask, not L and mask_t, for the code ptxas makes of it: 141 registers and no spills against 168 and two
        # spills; H200, session 14, same run: backward 1,045 against 1,142 us at (64, 768, 197, 16), while writing
        # `offs_t < L` instead gave 1,129.)
        mask_bc = offs_t < BC_LEN
        m2 = mask_d[:, None] & mask_t[None, :]
        # the forward tile whose entry checkpoint is this tile's entry state (the rightmost one when reversed)
        if REVERSE:
            ckpt_tile = tl.minimum(tile * CKPT_RATIO + CKPT_RATIO - 1, N_TILES - 1)
        else:
            ckpt_tile = tile * CKPT_RATIO
        u = _load_tile(u_ptr, b, offs_d, offs_t, s_ub, s_ud, s_ut, m2)
        dt_raw = _load_tile(dt_ptr, b, offs_d, offs_t, s_tb, s_td, s_tt, m2)
        if HAS_BIAS:
            dt_raw += bias[:, None]
        if SOFTPLUS:
            dt = _softplus(dt_raw)
        else:
            dt = dt_raw
        dt = tl.where(m2, dt, 0.0)
        if not SHIFT_A:
            # dt one step later in scan order, for a_{t+1}; only its value at valid positions matters. (SHIFT_A
            # shifts a itself instead: see a_next below.)
            if REVERSE:
                offs_s = offs_t - 1
            else:
                offs_s = offs_t + 1
            m2s = mask_d[:, None] & ((offs_s >= 0) & (offs_s < L))[None, :]
            dt_next = _load_tile(dt_ptr, b, offs_d, offs_s, s_tb, s_td, s_tt, m2s)
            if HAS_BIAS:
                dt_next += bias[:, None]
            if SOFTPLUS:
                dt_next = _softplus(dt_next)
            dt_next = tl.where(m2s, dt_next, 0.0)
            if GATHER_FLIP and not REVERSE:  # the dh scan runs right to left on reversed tiles: reverse dt_next once
                dt_next = _flip(dt_next, BLOCK_T)
        dy = _load_tile(dout_ptr, b, offs_d, offs_t, s_gb, s_gd, s_gt, m2)
        if HAS_Z:
            zv = _load_tile(z_ptr, b, offs_d, offs_t, s_zb, s_zd, s_zt, m2)
            dy = dy * zv * tl.sigmoid(zv)
        dtu = dt * u
        y = tl.zeros((BLOCK_D, BLOCK_T), dtype=tl.float32)
        # du_t = dt_t * P_t and ddt_t = u_t * P_t + Q_t, with P = sum_n dh_n * B_n and Q = sum_n q_n * A_n: two FMAs
        # per state instead of four, and u is not live through the loop over states (it is reloaded after it).
        p_acc = tl.zeros((BLOCK_D, BLOCK_T), dtype=tl.float32)
        q_acc = tl.zeros((BLOCK_D, BLOCK_T), dtype=tl.float32)
        if PREFETCH:  # state 0's loads; then each state's loads are issued during the state before it
            a_pre, c_pre, b_pre, h_pre = _bwd_state_loads(
                A_ptr, B_ptr, C_ptr, ckpt_ptr, b, grp_b, grp_c, 0, N, offs_d, offs_t, mask_d, mask_t, ckpt_tile, DIM,
                N_TILES, s_ad, s_an, s_b0, s_b1, s_b2, s_b3, s_c0, s_c1, s_c2, s_c3, B_VAR, C_VAR, not CARRY_ONLY)
        for n in range(N):
            sel = offs_n[None, :] == n
            if PREFETCH:
                a_nat, c_n, b_n, h_in = a_pre, c_pre, b_pre, h_pre
                a_pre, c_pre, b_pre, h_pre = _bwd_state_loads(
                    A_ptr, B_ptr, C_ptr, ckpt_ptr, b, grp_b, grp_c, n + 1, N, offs_d, offs_t, mask_d, mask_t,
                    ckpt_tile, DIM, N_TILES, s_ad, s_an, s_b0, s_b1, s_b2, s_b3, s_c0, s_c1, s_c2, s_c3, B_VAR, C_VAR,
                    not CARRY_ONLY)
            else:
                a_nat = _load_a(A_ptr, n, offs_d, s_ad, s_an, mask_d)
            a = tl.exp2(dt * (a_nat * LOG2E)[:, None])
            if SHIFT_A:
                # a_{t+1} is a shifted one step against the scan order, by a gather inside the warp (a shuffle per
                # register, against an exp2 per element). The dh scan starts at the tile's last step in scan order,
                # where a_next is never used (the carry brings a_{t+1} dh_{t+1} from the next tile), so the index
                # there only has to stay inside the tile. Forward scans take a_next already reversed.
                a_next = tl.gather(a, shift_idx, 1)
            else:
                a_next = tl.exp2(dt_next * (a_nat * LOG2E)[:, None])
            if not PREFETCH:
                c_n = _load_bc(C_ptr, b, grp_c, n, offs_d, offs_t, mask_d, mask_t, s_c0, s_c1, s_c2, s_c3, C_VAR)
            g = dy * c_n
            g = tl.where(last_col, g + _column(carry, sel)[:, None], g)
            # dh runs against the scan order
            if GATHER_FLIP and not REVERSE:  # a_next is already reversed (see _linear_scan)
                _, dh = tl.associative_scan((a_next, _flip(g, BLOCK_T)), 1, _combine)
                dh = _flip(dh, BLOCK_T)
            else:
                dh = _linear_scan(a_next, g, not REVERSE, GATHER_FLIP, BLOCK_T)
            if GATHER_FLIP:  # a * dh at the tile's first step in scan order, by one shuffle from the lane holding it
                carry = tl.where(sel, tl.gather(a * dh, first_idx, 1), carry)
            else:  # (a masked sum: a butterfly reduction; SASS per state, 256:2:1 785 -> 764, 32:4:1 453 -> 417)
                carry = tl.where(sel, _column(a * dh, first_col)[:, None], carry)
            if not CARRY_ONLY:
                if not PREFETCH:
                    b_n = _load_bc(B_ptr, b, grp_b, n, offs_d, offs_t, mask_d, mask_t, s_b0, s_b1, s_b2, s_b3, B_VAR)
                x = dtu * b_n
                if not PREFETCH:
                    h_in = _load_entry(ckpt_ptr, b, n, offs_d, ckpt_tile, DIM, N_TILES, N, mask_d)
                h = _linear_scan(a, tl.where(first_col, x + a * h_in[:, None], x), REVERSE, GATHER_FLIP, BLOCK_T)
                if HAS_Z:
                    y += h * c_n
                q = dh * (h - x)  # = dh_t * a_t * h_{t-1}: gradient of dt_t * A
                dA_acc += tl.where(sel, tl.sum(q * dt, axis=1)[:, None], 0.0)
                q_acc += q * a_nat[:, None]
                p_acc += dh * b_n
                d_bn = dh * dtu
                d_cn = dy * h
                if B_VAR:
                    col_b = tl.sum(d_bn, axis=0)
                    # dB buffer: (batch, DB_ROWS, N, L) fp32, rows = groups (atomic) or channel tiles
                    if ATOMIC_BC:
                        tl.atomic_add(dB_ptr + ((b * DB_ROWS + grp_b) * N + n) * BC_LEN + offs_t, col_b, mask=mask_bc,
                                      sem="relaxed")
                    else:
                        tl.store(dB_ptr + ((b * DB_ROWS + dtile) * N + n) * BC_LEN + offs_t, col_b, mask=mask_bc)
                else:
                    dB_acc += tl.where(sel, tl.sum(d_bn, axis=1)[:, None], 0.0)
                if C_VAR:
                    col_c = tl.sum(d_cn, axis=0)
                    if ATOMIC_BC:
                        tl.atomic_add(dC_ptr + ((b * DC_ROWS + grp_c) * N + n) * BC_LEN + offs_t, col_c, mask=mask_bc,
                                      sem="relaxed")
                    else:
                        tl.store(dC_ptr + ((b * DC_ROWS + dtile) * N + n) * BC_LEN + offs_t, col_c, mask=mask_bc)
                else:
                    dC_acc += tl.where(sel, tl.sum(d_cn, axis=1)[:, None], 0.0)
        if not CARRY_ONLY:
            g_off = b * DIM * L + offs_d[:, None] * L + offs_t[None, :]  # du and dz are contiguous
            u = _load_tile(u_ptr, b, offs_d, offs_t, s_ub, s_ud, s_ut, m2)
            du = p_acc * dt
            ddt = p_acc * u + q_acc
            if HAS_D:
                du += dy * d_skip[:, None]
                dD_acc += tl.sum(dy * u, axis=1)
                y += d_skip[:, None] * u
            # dout, z and the raw dt are loaded again (L1/L2 hits) rather than kept live through the loop over
            # states: the backward is register-bound, and fewer live tiles means more resident warps.
            if HAS_Z:
                dout = _load_tile(dout_ptr, b, offs_d, offs_t, s_gb, s_gd, s_gt, m2)
                zv = _load_tile(z_ptr, b, offs_d, offs_t, s_zb, s_zd, s_zt, m2)
                z_sig = tl.sigmoid(zv)
                dz = dout * y * z_sig * (1.0 + zv * (1.0 - z_sig))
                if ATOMIC_DZ:  # z shared by several directions: their contributions add up (fp32 buffer)
                    tl.atomic_add(dz_ptr + g_off, dz, mask=m2, sem="relaxed")
                else:
                    tl.store(dz_ptr + g_off, dz.to(dz_ptr.dtype.element_ty), mask=m2)
            if SOFTPLUS:
                dt_raw = _load_tile(dt_ptr, b, offs_d, offs_t, s_tb, s_td, s_tt, m2)
                if HAS_BIAS:
                    dt_raw += bias[:, None]
                ddt = tl.where(dt_raw > 20.0, ddt, ddt * tl.sigmoid(dt_raw))
            ddt = tl.where(m2, ddt, 0.0)
            dbias_acc += tl.sum(ddt, axis=1)
            tl.store(du_ptr + g_off, du.to(du_ptr.dtype.element_ty), mask=m2)
            ddt_off = b * s_xb + offs_d[:, None] * L + offs_t[None, :]  # ddelta's batch stride is s_xb
            tl.store(ddt_ptr + ddt_off, ddt.to(ddt_ptr.dtype.element_ty), mask=m2)

    if CARRY_ONLY:
        tl.store(seg_e_ptr + ((b * N_SEG + seg) * DIM + offs_d[:, None]) * N + offs_n[None, :], carry, mask=mask_dn)
    else:
        # The per-channel sums: added atomically into one (dim, N) / (dim,) sum each, which the launcher hands back
        # as they are (no reduction launches: host time at small shapes, and partials per (batch, segment) were
        # 3 MiB at (64, 768, 197, 16)); deterministic: a partial per (batch, segment), summed in a fixed order.
        if ATOMIC_BC:
            sum_dn = offs_d[:, None] * N + offs_n[None, :]
            tl.atomic_add(dA_ptr + sum_dn, dA_acc, mask=mask_dn, sem="relaxed")
            if not B_VAR:
                tl.atomic_add(dB_ptr + sum_dn, dB_acc, mask=mask_dn, sem="relaxed")
            if not C_VAR:
                tl.atomic_add(dC_ptr + sum_dn, dC_acc, mask=mask_dn, sem="relaxed")
            if HAS_D:
                tl.atomic_add(dD_ptr + offs_d, dD_acc, mask=mask_d, sem="relaxed")
            if HAS_BIAS:
                tl.atomic_add(dbias_ptr + offs_d, dbias_acc, mask=mask_d, sem="relaxed")
        else:
            part_off = (row_part * DIM + offs_d[:, None]) * N + offs_n[None, :]
            tl.store(dA_ptr + part_off, dA_acc, mask=mask_dn)
            if not B_VAR:
                tl.store(dB_ptr + part_off, dB_acc, mask=mask_dn)
            if not C_VAR:
                tl.store(dC_ptr + part_off, dC_acc, mask=mask_dn)
            if HAS_D:
                tl.store(dD_ptr + row_part * DIM + offs_d, dD_acc, mask=mask_d)
            if HAS_BIAS:
                tl.store(dbias_ptr + row_part * DIM + offs_d, dbias_acc, mask=mask_d)
        if REVERSE:
            is_first = seg == N_SEG - 1
        else:
            is_first = seg == 0
        if NEED_DH0 and is_first:  # carry after the first step in scan order = a_0 * dh_0 = d(initial_state)
            tl.store(dh0_ptr + (b * DIM + offs_d[:, None]) * N + offs_n[None, :], carry, mask=mask_dn)


@triton.jit
def _bwd_route(
    k,
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, dlast_ptr, ckpt_ptr, seg_e_ptr, seg_p_ptr,
    du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dh0_ptr, DIM, L, BC_LEN, N, GROUP_B, GROUP_C,
    DB_ROWS, DC_ROWS, SEG_LEN, N_SEG, N_DTILES, N_TILES, s_ub, s_ud, s_ut, s_tb, s_td, s_tt, s_zb,
    s_zd, s_zt, s_gb, s_gd, s_gt, s_xb, s_ad, s_an, s_b0, s_b1, s_b2, s_b3, s_c0, s_c1, s_c2, s_c3, HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DLAST: tl.constexpr, SOFTPLUS: tl.constexpr,
    B_VAR: tl.constexpr, C_VAR: tl.constexpr, CARRY_ONLY: tl.constexpr,
    SEG_MODE: tl.constexpr, ATOMIC_BC: tl.constexpr, ATOMIC_DZ: tl.constexpr,
    NEED_DH0: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, N_PAD: tl.constexpr,
    CKPT_RATIO: tl.constexpr,
    GATHER_FLIP: tl.constexpr, dir_u, dir_dt,
    dir_A, dir_B, dir_C, dir_D, dir_bias, dir_g, dir_state, dir_ckpt, dir_seg, dir_du, dir_ddt, dir_dz, dir_part,
    dir_dB, dir_dC, dir_row,
    col_u, col_g, REVERSE: tl.constexpr, COL_SCALE: tl.constexpr, PREFETCH: tl.constexpr,
):
    """A direction of a multi-direction launch: its tensors start k * dir_* elements after direction 0's, where k is
    the direction's index times DIR_SCALE (16 when every offset is a multiple of 16 elements, so that the compiler
    knows the direction's pointers stay 16-element aligned and keeps vectorised loads; else 1). A column route adds
    COL_SCALE (DIR_SCALE, else 0) times col_* to its u and dout."""
    _bwd_program(
        u_ptr + k * dir_u + COL_SCALE * col_u, dt_ptr + k * dir_dt, A_ptr + k * dir_A, B_ptr + k * dir_B,
        C_ptr + k * dir_C, D_ptr + k * dir_D, z_ptr, bias_ptr + k * dir_bias, dout_ptr + k * dir_g + COL_SCALE * col_g,
        dlast_ptr + k * dir_state, ckpt_ptr + k * dir_ckpt, seg_e_ptr + k * dir_seg, seg_p_ptr + k * dir_seg,
        du_ptr + k * dir_du, ddt_ptr + k * dir_ddt, dz_ptr + k * dir_dz, dA_ptr + k * dir_part,
        dB_ptr + k * dir_dB, dC_ptr + k * dir_dC, dD_ptr + k * dir_row, dbias_ptr + k * dir_row,
        dh0_ptr + k * dir_state, DIM, L, BC_LEN, N, GROUP_B, GROUP_C, DB_ROWS, DC_ROWS, SEG_LEN, N_SEG, N_DTILES,
        N_TILES, s_ub, s_ud, s_ut, s_tb, s_td, s_tt, s_zb, s_zd, s_zt, s_gb, s_gd, s_gt, s_xb, s_ad, s_an, s_b0,
        s_b1, s_b2, s_b3, s_c0, s_c1, s_c2, s_c3, HAS_D, HAS_Z, HAS_BIAS, HAS_DLAST, SOFTPLUS, B_VAR, C_VAR, REVERSE,
        CARRY_ONLY, SEG_MODE, ATOMIC_BC, ATOMIC_DZ, NEED_DH0, BLOCK_D, BLOCK_T, N_PAD,
        CKPT_RATIO, GATHER_FLIP, PREFETCH,
    )


# The dir_* offsets are distances between separate tensors (bidirectional) and change with every allocation:
# specialising on their divisibility, or typing them i32/i64 by value, would compile a new kernel whenever they
# change, so they are typed int64 and not specialised.
@triton.jit(do_not_specialize=BWD_DIRECTION_OFFSETS)
def selective_scan_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, dlast_ptr, ckpt_ptr, seg_e_ptr, seg_p_ptr,
    du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dh0_ptr, DIM, L, BC_LEN, N, GROUP_B, GROUP_C,
    DB_ROWS, DC_ROWS, SEG_LEN, N_SEG, N_DTILES, N_TILES, s_ub, s_ud, s_ut, s_tb, s_td, s_tt, s_zb,
    s_zd, s_zt, s_gb, s_gd, s_gt, s_xb, s_ad, s_an, s_b0, s_b1, s_b2, s_b3, s_c0, s_c1, s_c2, s_c3, HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DLAST: tl.constexpr, SOFTPLUS: tl.constexpr,
    B_VAR: tl.constexpr, C_VAR: tl.constexpr, CARRY_ONLY: tl.constexpr,
    SEG_MODE: tl.constexpr, ATOMIC_BC: tl.constexpr, ATOMIC_DZ: tl.constexpr,
    NEED_DH0: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, N_PAD: tl.constexpr,
    CKPT_RATIO: tl.constexpr,
    GATHER_FLIP: tl.constexpr, dir_u: tl.int64, dir_dt: tl.int64, dir_A: tl.int64, dir_B: tl.int64, dir_C: tl.int64,
    dir_D: tl.int64, dir_bias: tl.int64, dir_g: tl.int64, dir_state: tl.int64, dir_ckpt: tl.int64, dir_seg: tl.int64,
    dir_du: tl.int64, dir_ddt: tl.int64, dir_dz: tl.int64, dir_part: tl.int64, dir_dB: tl.int64, dir_dC: tl.int64,
    dir_row: tl.int64, col_u: tl.int64, col_g: tl.int64,
    DIRECTIONS: tl.constexpr, REVERSE: tl.constexpr, DIR_SCALE: tl.constexpr, PREFETCH: tl.constexpr,
):
    """Backward launch; same grid, directions and dir_* / col_* offsets as the forward; PREFETCH: see _bwd_program."""
    if DIRECTIONS == 1:
        _bwd_route(
            0, u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, dlast_ptr, ckpt_ptr, seg_e_ptr,
            seg_p_ptr, du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dh0_ptr, DIM, L, BC_LEN, N,
            GROUP_B,
            GROUP_C, DB_ROWS, DC_ROWS, SEG_LEN, N_SEG, N_DTILES, N_TILES, s_ub, s_ud, s_ut, s_tb, s_td,
            s_tt, s_zb, s_zd, s_zt, s_gb, s_gd, s_gt, s_xb, s_ad, s_an, s_b0, s_b1, s_b2, s_b3, s_c0, s_c1, s_c2,
            s_c3, HAS_D,
            HAS_Z, HAS_BIAS, HAS_DLAST, SOFTPLUS, B_VAR, C_VAR, CARRY_ONLY, SEG_MODE, ATOMIC_BC, ATOMIC_DZ,
            NEED_DH0, BLOCK_D, BLOCK_T, N_PAD, CKPT_RATIO, GATHER_FLIP, dir_u, dir_dt, dir_A, dir_B, dir_C, dir_D,
            dir_bias, dir_g, dir_state, dir_ckpt, dir_seg, dir_du, dir_ddt, dir_dz, dir_part, dir_dB, dir_dC, dir_row,
            0, 0, REVERSE, 0,
            PREFETCH,
        )
    else:
        k = tl.program_id(2)
        if DIRECTIONS == 2:  # bidirectional: 0 forward in time, 1 reverse
            if k == 0:
                _bwd_route(
                    0, u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, dlast_ptr, ckpt_ptr,
                    seg_e_ptr, seg_p_ptr, du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dh0_ptr,
                    DIM, L, BC_LEN, N, GROUP_B, GROUP_C, DB_ROWS, DC_ROWS, SEG_LEN, N_SEG, N_DTILES, N_TILES,
                    s_ub, s_ud, s_ut, s_tb, s_td, s_tt, s_zb, s_zd, s_zt, s_gb, s_gd, s_gt, s_xb, s_ad, s_an, s_b0,
                    s_b1,
                    s_b2, s_b3, s_c0, s_c1, s_c2, s_c3, HAS_D, HAS_Z, HAS_BIAS, HAS_DLAST, SOFTPLUS, B_VAR, C_VAR,
                    CARRY_ONLY, SEG_MODE, ATOMIC_BC, ATOMIC_DZ, NEED_DH0, BLOCK_D, BLOCK_T, N_PAD,
                    CKPT_RATIO,
                    GATHER_FLIP, dir_u, dir_dt, dir_A, dir_B, dir_C, dir_D, dir_bias, dir_g, dir_state, dir_ckpt,
                    dir_seg, dir_du, dir_ddt, dir_dz, dir_part, dir_dB, dir_dC, dir_row, col_u, col_g, False, 0,
                    PREFETCH,
                )
            else:
                _bwd_route(
                    1 * DIR_SCALE, u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, dlast_ptr,
                    ckpt_ptr, seg_e_ptr, seg_p_ptr, du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
                    dh0_ptr, DIM, L, BC_LEN, N, GROUP_B, GROUP_C, DB_ROWS, DC_ROWS, SEG_LEN, N_SEG, N_DTILES, N_TILES,
                    s_ub,
                    s_ud, s_ut, s_tb, s_td, s_tt, s_zb, s_zd, s_zt, s_gb, s_gd, s_gt, s_xb, s_ad, s_an, s_b0,
                    s_b1, s_b2, s_b3, s_c0, s_c1, s_c2, s_c3, HAS_D, HAS_Z, HAS_BIAS, HAS_DLAST, SOFTPLUS, B_VAR, C_VAR,
                    CARRY_ONLY, SEG_MODE, ATOMIC_BC, ATOMIC_DZ, NEED_DH0, BLOCK_D, BLOCK_T, N_PAD,
                    CKPT_RATIO,
                    GATHER_FLIP, dir_u, dir_dt, dir_A, dir_B, dir_C, dir_D, dir_bias, dir_g, dir_state, dir_ckpt,
                    dir_seg, dir_du, dir_ddt, dir_dz, dir_part, dir_dB, dir_dC, dir_row, col_u, col_g, True, 0,
                    PREFETCH,
                )
        else:  # 2D map: 0 rows, 1 columns, 2 rows reversed, 3 columns reversed
            if k == 0:
                _bwd_route(
                    0, u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, dlast_ptr, ckpt_ptr,
                    seg_e_ptr, seg_p_ptr, du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dh0_ptr,
                    DIM, L, BC_LEN, N, GROUP_B, GROUP_C, DB_ROWS, DC_ROWS, SEG_LEN, N_SEG, N_DTILES, N_TILES,
                    s_ub, s_ud, s_ut, s_tb, s_td, s_tt, s_zb, s_zd, s_zt, s_gb, s_gd, s_gt, s_xb, s_ad, s_an, s_b0,
                    s_b1,
                    s_b2, s_b3, s_c0, s_c1, s_c2, s_c3, HAS_D, HAS_Z, HAS_BIAS, HAS_DLAST, SOFTPLUS, B_VAR, C_VAR,
                    CARRY_ONLY, SEG_MODE, ATOMIC_BC, ATOMIC_DZ, NEED_DH0, BLOCK_D, BLOCK_T, N_PAD,
                    CKPT_RATIO,
                    GATHER_FLIP, dir_u, dir_dt, dir_A, dir_B, dir_C, dir_D, dir_bias, dir_g, dir_state, dir_ckpt,
                    dir_seg, dir_du, dir_ddt, dir_dz, dir_part, dir_dB, dir_dC, dir_row, col_u, col_g, False, 0,
                    PREFETCH,
                )
            elif k == 1:
                _bwd_route(
                    1 * DIR_SCALE, u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, dlast_ptr,
                    ckpt_ptr, seg_e_ptr, seg_p_ptr, du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
                    dh0_ptr, DIM, L, BC_LEN, N, GROUP_B, GROUP_C, DB_ROWS, DC_ROWS, SEG_LEN, N_SEG, N_DTILES, N_TILES,
                    s_ub,
                    s_ud, s_ut, s_tb, s_td, s_tt, s_zb, s_zd, s_zt, s_gb, s_gd, s_gt, s_xb, s_ad, s_an, s_b0,
                    s_b1, s_b2, s_b3, s_c0, s_c1, s_c2, s_c3, HAS_D, HAS_Z, HAS_BIAS, HAS_DLAST, SOFTPLUS, B_VAR, C_VAR,
                    CARRY_ONLY, SEG_MODE, ATOMIC_BC, ATOMIC_DZ, NEED_DH0, BLOCK_D, BLOCK_T, N_PAD,
                    CKPT_RATIO,
                    GATHER_FLIP, dir_u, dir_dt, dir_A, dir_B, dir_C, dir_D, dir_bias, dir_g, dir_state, dir_ckpt,
                    dir_seg, dir_du, dir_ddt, dir_dz, dir_part, dir_dB, dir_dC, dir_row, col_u, col_g, False,
                    DIR_SCALE,
                    PREFETCH,
                )
            elif k == 2:
                _bwd_route(
                    2 * DIR_SCALE, u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, dlast_ptr,
                    ckpt_ptr, seg_e_ptr, seg_p_ptr, du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
                    dh0_ptr, DIM, L, BC_LEN, N, GROUP_B, GROUP_C, DB_ROWS, DC_ROWS, SEG_LEN, N_SEG, N_DTILES, N_TILES,
                    s_ub,
                    s_ud, s_ut, s_tb, s_td, s_tt, s_zb, s_zd, s_zt, s_gb, s_gd, s_gt, s_xb, s_ad, s_an, s_b0,
                    s_b1, s_b2, s_b3, s_c0, s_c1, s_c2, s_c3, HAS_D, HAS_Z, HAS_BIAS, HAS_DLAST, SOFTPLUS, B_VAR, C_VAR,
                    CARRY_ONLY, SEG_MODE, ATOMIC_BC, ATOMIC_DZ, NEED_DH0, BLOCK_D, BLOCK_T, N_PAD,
                    CKPT_RATIO,
                    GATHER_FLIP, dir_u, dir_dt, dir_A, dir_B, dir_C, dir_D, dir_bias, dir_g, dir_state, dir_ckpt,
                    dir_seg, dir_du, dir_ddt, dir_dz, dir_part, dir_dB, dir_dC, dir_row, col_u, col_g, True, 0,
                    PREFETCH,
                )
            else:
                _bwd_route(
                    3 * DIR_SCALE, u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, dlast_ptr,
                    ckpt_ptr, seg_e_ptr, seg_p_ptr, du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
                    dh0_ptr, DIM, L, BC_LEN, N, GROUP_B, GROUP_C, DB_ROWS, DC_ROWS, SEG_LEN, N_SEG, N_DTILES, N_TILES,
                    s_ub,
                    s_ud, s_ut, s_tb, s_td, s_tt, s_zb, s_zd, s_zt, s_gb, s_gd, s_gt, s_xb, s_ad, s_an, s_b0,
                    s_b1, s_b2, s_b3, s_c0, s_c1, s_c2, s_c3, HAS_D, HAS_Z, HAS_BIAS, HAS_DLAST, SOFTPLUS, B_VAR, C_VAR,
                    CARRY_ONLY, SEG_MODE, ATOMIC_BC, ATOMIC_DZ, NEED_DH0, BLOCK_D, BLOCK_T, N_PAD,
                    CKPT_RATIO,
                    GATHER_FLIP, dir_u, dir_dt, dir_A, dir_B, dir_C, dir_D, dir_bias, dir_g, dir_state, dir_ckpt,
                    dir_seg, dir_du, dir_ddt, dir_dz, dir_part, dir_dB, dir_dC, dir_row, col_u, col_g, True,
                    DIR_SCALE,
                    PREFETCH,
                )
