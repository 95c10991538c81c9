"""Launch plan of the selective-scan kernels: tiles, segments and warps for a call's shapes.

Kept apart from the launchers so that every op built on the scan core (single, bidirectional, 2D) plans the same way.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .host import env_reader

# Tile shapes (time steps, channels, warps), forward and backward separately, from the H200 sweeps of 2026-11-29
# (BENCHMARKS.md). One-warp programs have no cross-warp barriers, and inside one warp a right-to-left scan reverses
# its tiles with tl.gather (scan_kernels._linear_scan), so both kernels use them at every length. The forward
# checkpoints its state every min(forward, backward) steps, so the backward's tile may be shorter than the forward's.
#
# The forward's loop over states is unrolled UNROLL times (tl.range's loop_unroll_factor): 4 sped the forward up at
# L >= 2048 (session 5: 0.94 -> 0.91 ms at (8, 3072, 2048, 16), 0.57 -> 0.51 ms at (8, 768, 4096, 16)) and slowed it
# at L = 197 (0.59 -> 0.70 ms). Unrolling the backward's loop was slower at every shape (more live registers).
#
# A row may instead run the forward step by step (scan_kernels._fwd_seq_program): its last entry is then (D, W, S),
# BLOCK_D channels on W warps with the loop over steps pipelined S stages, and the forward's tile is ignored
# (checkpoints every backward tile). Session 9, one H200 call, fwd / fwd+bwd ms, tiled / step by step 32:1:1:
# (64, 768, 197, 16) 0.511 / 1.803 against 0.371 / 1.663 (16:1:1 0.499, 64:1:1 0.468, 8:1:1 0.571 fwd; two or three
# stages no faster); (8, 3072, 2048, 16) 0.988 / 4.531 against 2.003 / 5.539; (8, 768, 4096, 16) 0.546 / 2.242 against
# 2.893 / 4.619. So short rows only; with one warp the per-state gathers of B and C stay shuffles (two warps: shared
# memory and a barrier each).
TILE_PLANS = (
    # (max L, max rows or None, forward (T, D, W[, max_regs]), backward (T, D, W[, max_regs]), forward UNROLL,
    #  sequential forward (D, W, S[, SPLIT, AHEAD]) or None, backward loads one state ahead (BWD_PREFETCH))
    # short sequences (Vim at 224 px: L = 197), session 6 at (64, 768, 197, 16): fwd / fwd+bwd 0.577 / 1.941 ms,
    # against 0.580 / 2.131 with the session-3 tiles 128:4:1 / 128:4:1. Session 7 (one H200 call):
    # capping both kernels at 128 registers (16 resident warps per SM instead of 12) gave 0.518 / 1.751 ms against
    # 0.586 / 1.939 uncapped; 96 registers spill and were slower (1.991). Session 9: the step-by-step forward.
    # Backward 32 x 4 capped at 168 registers (session 9, same H200 call, fwd+bwd with the step-by-step forward):
    # 1.563 ms against 1.677 for 64 x 2 / 128 (32 x 2 / 128: 1.688; 128 x 2: 1.783; 64 x 4: 1.872); its checkpoints
    # every 32 steps cost 9 MiB more (104 MiB peak against mamba-ssm's 101), paid for by no longer allocating dh0
    # without an initial state and by one atomic dA sum instead of per-batch partials (3 MiB each).
    # Session 16 (one H200 call each, forward kernel us at (64, 768, 197, 16), step by step D:W x lanes per channel):
    # 32:1 x 1 (the row until then) 333-338; 64:4 x 2 267-272; 128:8 x 2 276; 32:2 x 2 327-331; 16:1 x 2 384-387;
    # 8:1 x 4 337; 4:1 x 8 365; 32:4 x 4 348; 64:8 x 4 378; 64:2 x 1 325-327; 128:4 x 1 317; 64:4 x 2 with the loads
    # two steps ahead 315.
    (256, None, (128, 2, 1, 128), (32, 4, 1, 168), 1, (64, 4, 1, 2, 1), False),
    # mid lengths, session 6: 0.994 / 4.205 ms at (8, 3072, 2048, 16) and 0.553 / 2.117 at (8, 768, 4096, 16),
    # against 0.833 / 5.460 and 0.477 / 2.935 with the session-3 backward tile 1024:2:4
    (16384, None, (1024, 1, 1), (256, 2, 1), 4, None, False),
    # long sequences, session 6 at (2, 512, 131072, 16): 5.030 / 15.327 ms against 4.622 / 18.149 with the backward
    # tile 1024:2:4 and 5.044 / 19.946 with 256:2:1 (half the programs). Session 10 (one H200 call, a_{t+1} shifted):
    # a one-warp forward 1024:1:1 took 2.873 / 12.585 ms against 5.033 / 14.716 for the two-warp 1024:1:2 kept since
    # session 5 (2048:1:2 3.523 / 13.269; 1024:1:2 capped at 128 registers 2.981 / 12.644); unroll 8 / 2 / 1: 2.837 /
    # 3.144 / 3.400 ms forward (call 2)
    (None, None, (1024, 1, 1), (256, 1, 1), 4, None, True),
)
# Bidirectional launches do not unroll the forward (unroll 4 was slower for the 2D routes too in session 5, when their
# column routes still read the map in place). Since the 2D column routes read a column-major copy (session 11), the 2D
# routes run the single-direction forward's unroll 4 and 2 stages (FOUR_ROUTE_FWD): one H200 call, fwd+bwd ms at
# (64, 192, 56, 56) N=1 / N=16 / (64, 384, 28, 28) N=1: 3.406 / 15.774 / 2.360 with neither, 3.405 / 15.760 / 1.957
# with both (2 stages alone: 3.403 / 15.208 / 2.194). Tiles, from session 6's same-call comparisons of fwd+bwd ms (the
# single-direction tiles / these):
MULTI_DIRECTION_PLANS = (
    # fused bidirectional (64, 768, 197, 16): 4.100 / 4.194 ms, but 203 / 179 MiB peak (two calls of mamba-ssm: 200);
    # session 9 (same call), tiled / step-by-step forward: fwd 1.115 / 1.031 ms, fwd+bwd 4.140 / 4.056
    # Session 16 (calls 3-6, `bench bidir` fused fwd / fwd+bwd ms, step by step D:W x lanes per channel, loads ahead):
    # 32:1 x 1 ahead 1 (the row until then) 0.91-0.95 / 3.33-3.40, ahead 3 0.81-0.82 / 3.26-3.27; 8:1 x 4 ahead 3
    # 0.522-0.524 / 2.97 (ahead 1 / 2: 0.541 / 0.534); 16:1 x 2 0.638; 4:1 x 8 0.747; 16:2 x 4 0.595; 32:4 x 4 0.566;
    # 64:4 x 2 0.596; 64:8 x 4 0.594 (all ahead 3).
    (256, None, (128, 4, 1), (128, 2, 1, 128), 1, (8, 1, 1, 4, 3), False),
    # 2D cross-scan (64, 192, 56, 56, 16): 41.07 ms with the session-3 backward tile 1024:2:4 against 31.83 with this
    # one; (64, 384, 28, 28, 1): 5.31 against 4.16; (64, 192, 56, 56, 1): 8.09 against 8.49
    (16384, None, (1024, 1, 1), (256, 2, 1), 1, None, False),
    # fused bidirectional (2, 512, 131072, 16): 40.37 ms with the single-direction long tiles / 32.86 with 256:1:1 /
    # 256:2:1 (session 6). Session 15, one H200 call, fwd+bwd ms (forward / backward kernel ms): 256:1:1 / 256:2:1
    # 28.98 (9.52 / 17.88); backward 256:1:1 loading one state ahead 28.70 (9.52 / 18.02), without 34.93; with the
    # forward 1024:1:1 as well 26.85 (7.73 / 17.96). (The 2D routes share this row beyond 16384 pixels; not measured
    # there.)
    (None, None, (1024, 1, 1), (256, 1, 1), 1, None, True),
)


_read_deterministic = env_reader("MAMBASUITE_DETERMINISTIC")


def deterministic_mode() -> bool:
    """True when backward must be bitwise reproducible (torch flag or MAMBASUITE_DETERMINISTIC=1)."""
    return torch.are_deterministic_algorithms_enabled() or _read_deterministic()[0] == "1"


@dataclass(frozen=True)
class KernelTile:
    """One kernel's program shape: block_d channels x block_t steps, num_warps warps, n_dtiles channel tiles;
    max_regs caps the registers per thread (Triton's `maxnreg`; 0 leaves the choice to ptxas)."""

    block_t: int
    block_d: int
    num_warps: int
    n_dtiles: int
    max_regs: int = 0


@dataclass(frozen=True)
class LaunchPlan:
    """How one call is cut into programs.

    fwd / bwd: the two kernels' tiles (one's block_t divides the other's). fwd_unroll: unroll factor of the forward's
    loop over states. fwd_sequential: the forward runs step by step (block_d channels on num_warps warps, its loop
    over steps pipelined fwd_stages stages; its block_t is the backward's; a tiled forward pipelines its loop over
    states fwd_stages stages; step by step, fwd_seq_split lanes share each channel's states and every step's loads
    are issued fwd_seq_ahead steps before it). bwd_shift_a: a one-warp backward takes a_{t+1} from a by a gather, not
    a second exp2.
    bwd_prefetch: the backward issues each state's loads during the state before it (see BWD_PREFETCH_NOTE).
    The forward checkpoints the state every ckpt_len = min(fwd, bwd block_t) steps: n_tiles checkpoints per row,
    ckpt_ratio = bwd.block_t / ckpt_len per backward tile. Segments of seg_len steps (a multiple of both tiles) run
    in parallel.
    """

    fwd: KernelTile
    bwd: KernelTile
    fwd_unroll: int
    fwd_sequential: bool
    fwd_stages: int
    bwd_shift_a: bool
    bwd_prefetch: bool
    fwd_seq_ahead: int
    fwd_seq_split: int
    ckpt_len: int
    ckpt_ratio: int
    n_tiles: int
    seg_len: int
    n_seg: int
    n_pad: int


def _default_tiles(rows: int, length: int, directions: int):
    """The plan row's forward and backward tiles as (T, D, W, max_regs), the forward's unroll factor, its
    sequential (D, W, S) or None, and whether the backward loads one state ahead."""
    for max_len, max_rows, fwd, bwd, unroll, seq, prefetch in (TILE_PLANS if directions == 1
                                                               else MULTI_DIRECTION_PLANS):
        if (max_len is None or length <= max_len) and (max_rows is None or rows <= max_rows):
            return (*fwd, 0)[:4], (*bwd, 0)[:4], unroll, seq, prefetch
    raise AssertionError("every plan table must end with a catch-all row")


def _largest_pow2_divisor(n: int, cap: int) -> int:
    p = 1
    while p * 2 <= cap and n % (p * 2) == 0:
        p *= 2
    return p


@functools.lru_cache(maxsize=None)
def _target_programs(device: torch.device) -> int:
    # A segment costs a second pass over its steps, and more programs did not pay for it: at (2, 512, 131072, 16),
    # one-warp backward tiles 256:1:1 (1024 programs), fwd+bwd took 15.3 ms in one segment against 22.0 / 21.0 ms
    # in 2 / 3 segments (session 6; session 5 with 4-warp tiles: backward 23.8 ms in one segment, 29.2 in two).
    if device.type == "cuda":
        return 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # interpreter: segments only when a test forces them


# Tests force small segments through this hook; None = choose from the device's size.
FORCE_SEG_LEN: int | None = None


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


_TILE_ENV = tuple(f"MAMBASUITE_SCAN_{k}" for k in (
    "BLOCK_T", "BLOCK_D", "WARPS", "MAXNREG", "BWD_BLOCK_T", "BWD_BLOCK_D", "BWD_WARPS", "BWD_MAXNREG", "FWD_UNROLL",
    "PROGRAMS", "SEQ", "SHIFT_A", "FWD_STAGES", "BWD_PREFETCH", "SEQ_AHEAD", "SEQ_SPLIT"))
_SEQ, _SHIFT_A, _FWD_STAGES, _BWD_PREFETCH, _SEQ_AHEAD, _SEQ_SPLIT = 10, 11, 12, 13, 14, 15  # non-tile overrides
_SEQ_ENV = _TILE_ENV[_SEQ]
_read_overrides = env_reader(*_TILE_ENV)
# One-warp backward tiles take a_{t+1} as a shifted a (a gather inside the warp) instead of a second exp2 per element;
# MAMBASUITE_SCAN_SHIFT_A=0/1 overrides. Session 10, one H200 call, fwd+bwd ms with the shift / without:
# (64, 768, 197, 16) 1.463 / 1.483; (8, 3072, 2048, 16) 3.713 / 4.189; (8, 768, 4096, 16) 1.877 / 2.046;
# (2, 512, 131072, 16) 14.716 / 15.483 (the two-warp forward of then). Offline sm_90 SASS of the 256:2:1 backward's
# loop per state: 32 -> 16 MUFU and 144 -> 128 FMUL for 110 -> 140 SHFL, and no more register spills.
BWD_SHIFT_A = True
# BWD_PREFETCH_NOTE. The plan rows' last field: the backward's loop over states loads state n's A[:, n], B_n, C_n and
# entry checkpoint during state n - 1, into registers, so that their latency overlaps the previous state's scans
# (MAMBASUITE_SCAN_BWD_PREFETCH=0/1 overrides). It costs registers, so it pays only where the tile leaves some. Session
# 15, one H200 call, backward kernel us without / with: (2, 512, 131072, 16) at 256:1:1 9,717 / 8,368 (236 -> 244
# registers, no spills); (8, 3072, 2048, 16) at 256:2:1 2,781 / 2,753 (22 bytes of spills); (8, 768, 4096, 16)
# 1,272 / 1,396; (64, 768, 197, 16) at 32:4:1 1,045 / 1,075 (141 -> 168 registers, the cap).
# The tiled forward's loop over states is software-pipelined this many stages (loads of the next states' A, B, C
# issued ahead through shared memory); MAMBASUITE_SCAN_FWD_STAGES overrides. Session 10, one H200 call, forward ms
# with 2 / 1 / 3 stages: (8, 3072, 2048, 16) 0.980 / 0.988 / 1.394; (8, 768, 4096, 16) 0.499 / 0.543 / 0.710;
# (2, 512, 131072, 16) 2.777 / 2.925 / 5.049. Multi-direction launches keep 1: with 2, the fused bidirectional forward
# at (2, 512, 131072, 16) took 14.16 ms against 9.73, the 2D one at (64, 192, 56, 56, 16) 9.96 against 8.48 (a call
# before). The backward's loop over states pipelined 2 stages was slower everywhere (1.46 -> 2.69 ms at L = 197).
TILED_FWD_STAGES = 2
FOUR_ROUTE_FWD = (4, 2)  # the 2D routes' forward (unroll, stages), replacing their plan row's (see above)
SEQ_MAX_AHEAD = 4  # MAMBASUITE_SCAN_SEQ_AHEAD: the step-by-step forward's loads issued 1 to this many steps ahead
SEQ_SPLITS = (1, 2, 4, 8)  # MAMBASUITE_SCAN_SEQ_SPLIT: lanes per channel of the step-by-step forward
SEQ_DEFAULT_MAX_STATES = 16  # plan rows with a sequential forward use it up to this d_state
SEQ_MAX_STATES = 64  # and MAMBASUITE_SCAN_SEQ up to this one (unrolled code grows with N)


def _env_tile(values: tuple[str | None, ...], default: tuple[int, ...]) -> tuple[int, ...]:
    """A tile (T, D, W, max_regs) from its four overrides. A register cap belongs to the tile it was measured with,
    so an overridden tile drops the default's cap unless the cap is overridden too."""
    if not any(values):
        return default
    tile = tuple(int(v or 0) or d for v, d in zip(values[:3], default[:3]))
    return (*tile, int(values[3] or 0))


def _env_sequential(value: str | None, default: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
    """The sequential forward's (BLOCK_D, warps, stages) from MAMBASUITE_SCAN_SEQ: "0" runs the tiled forward,
    "D:W[:S]" the step-by-step one (S defaults to 1); unset keeps `default`."""
    if value is None or not value.strip():
        return default
    if value.strip() == "0":
        return None
    parts = value.strip().split(":")
    if not 2 <= len(parts) <= 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"{_SEQ_ENV}={value!r}: expected 0 (tiled forward) or BLOCK_D:WARPS[:STAGES] with positive "
                         "integers, e.g. 32:1:2")
    block_d, warps, stages = (int(p) for p in (*parts, "1")[:3])
    if block_d & (block_d - 1) or warps & (warps - 1):
        raise ValueError(f"{_SEQ_ENV}={value!r}: BLOCK_D and WARPS must be powers of two")
    return block_d, warps, stages


def _seq_split_and_ahead(seq: tuple[int, ...] | None, overrides: tuple[str | None, ...], d_state: int
                         ) -> tuple[int, int]:
    """The step-by-step forward's lanes per channel and loads-ahead: the plan row's (fields 4 and 5 of its sequential
    entry; an entry set through MAMBASUITE_SCAN_SEQ has neither: 1 and 1), unless MAMBASUITE_SCAN_SEQ_SPLIT /
    _SEQ_AHEAD set them. A row's split is capped at d_state's power of two; an override above it is refused."""
    n_pad = max(2, _next_pow2(d_state))
    split, ahead = seq[3:5] if seq is not None and len(seq) == 5 else (1, 1)
    split = min(split, n_pad)
    if overrides[_SEQ_SPLIT]:
        split = int(overrides[_SEQ_SPLIT])
        if split not in SEQ_SPLITS or split > n_pad:
            raise ValueError(f"{_TILE_ENV[_SEQ_SPLIT]}={overrides[_SEQ_SPLIT]!r}: expected one of {SEQ_SPLITS} lanes "
                             f"per channel, at most d_state rounded up to a power of two ({n_pad})")
    if overrides[_SEQ_AHEAD]:
        ahead = int(overrides[_SEQ_AHEAD])
        if not 1 <= ahead <= SEQ_MAX_AHEAD:
            raise ValueError(f"{_TILE_ENV[_SEQ_AHEAD]}={overrides[_SEQ_AHEAD]!r}: expected 1 to {SEQ_MAX_AHEAD} steps")
    return split, ahead


def _env_switch(overrides: tuple[str | None, ...], index: int, meaning: str) -> bool | None:
    """A 0/1 override of `_TILE_ENV[index]` as a bool, None when unset; any other value is refused by name."""
    value = overrides[index]
    if not value:
        return None
    if value.strip() not in ("0", "1"):
        raise ValueError(f"{_TILE_ENV[index]}={value!r}: expected {meaning}")
    return value.strip() == "1"


def plan_launch(batch: int, dim: int, length: int, d_state: int, groups: int, device: torch.device,
                directions: int = 1) -> LaunchPlan:
    """Pick both kernels' tiles, the segment length and warps for a call (deterministic in the shapes).

    Tiles come from TILE_PLANS (H200 sweeps). Overrides: MAMBASUITE_SCAN_BLOCK_T / _BLOCK_D / _WARPS / _MAXNREG set
    the forward tile (and the backward's, unless MAMBASUITE_SCAN_BWD_BLOCK_T / _BWD_BLOCK_D / _BWD_WARPS /
    _BWD_MAXNREG are set),
    MAMBASUITE_SCAN_FWD_UNROLL the forward's unroll factor, MAMBASUITE_SCAN_PROGRAMS the backward programs below
    which long rows are split into segments, MAMBASUITE_SCAN_SEQ the step-by-step forward ("0": tiled; "D:W[:S]"),
    MAMBASUITE_SCAN_SHIFT_A the backward's a_{t+1} (0: a second exp2; 1: a shift), MAMBASUITE_SCAN_FWD_STAGES the
    tiled forward's pipeline stages, MAMBASUITE_SCAN_BWD_PREFETCH the backward's loads one state ahead (0 / 1),
    MAMBASUITE_SCAN_SEQ_SPLIT / _SEQ_AHEAD the step-by-step forward's lanes per channel and loads ahead;
    `mamba-suite bench scan --configs` sweeps them. `directions` scans run in the same launch (bidirectional: 2,
    2D routes: 4), so fewer segments are needed to fill the GPU.
    """
    # Plans are memoised: every scan call plans (forward and backward), and at small shapes the host time of a
    # call is what a user waits for. The overrides are part of the key, so changing them takes effect at once.
    overrides = _read_overrides()
    return _plan(batch, dim, length, d_state, groups, device, directions, overrides, FORCE_SEG_LEN)


@functools.lru_cache(maxsize=1024)
def _plan(batch: int, dim: int, length: int, d_state: int, groups: int, device: torch.device, directions: int,
          overrides: tuple[str | None, ...], force_seg_len: int | None) -> LaunchPlan:
    for i, (key, value) in enumerate(zip(_TILE_ENV, overrides)):  # checked once per distinct setting (cached plan)
        if value and i != _SEQ and not value.strip().isdigit():
            raise ValueError(f"{key}={value!r}: expected a non-negative integer")
    shift_a = _env_switch(overrides, _SHIFT_A, "0 (a second exp2) or 1 (a shifted by a gather)")
    prefetch_env = _env_switch(overrides, _BWD_PREFETCH, "0 (each state's loads where they are used) or 1 (one state "
                               "ahead)")
    fwd_default, bwd_default, unroll, seq, prefetch = _default_tiles(batch * dim, length, directions)
    stages = TILED_FWD_STAGES if directions == 1 else 1
    if directions == 4:
        unroll, stages = FOUR_ROUTE_FWD
    env_fwd = any(overrides[:4])
    # A forward tile set through the environment is honoured: the tiled forward runs, unless _SEQ is set as well.
    # The step-by-step forward unrolls its loop over states (a register vector each): the default only for N <= 16.
    seq = _env_sequential(overrides[_SEQ], None if env_fwd or d_state > SEQ_DEFAULT_MAX_STATES else seq)
    if seq is not None and d_state > SEQ_MAX_STATES:
        raise ValueError(f"{_SEQ_ENV}={overrides[_SEQ]!r}: the step-by-step forward unrolls its states and takes "
                         f"d_state <= {SEQ_MAX_STATES}, got {d_state}")
    seq_split, seq_ahead = _seq_split_and_ahead(seq, overrides, d_state)
    if seq is not None:
        seq = seq[:3]
    fwd_t, fwd_d, fwd_w, fwd_r = _env_tile(overrides[:4], fwd_default)
    bwd_t, bwd_d, bwd_w, bwd_r = _env_tile(overrides[4:8], (fwd_t, fwd_d, fwd_w, fwd_r) if env_fwd else bwd_default)
    unroll = int(overrides[8] or 0) or unroll
    cap = max(16, _next_pow2(length))
    if force_seg_len is not None:  # tests: segments shorter than a tile need shorter tiles
        cap = min(cap, _next_pow2(force_seg_len))
    fwd_t, bwd_t = min(fwd_t, cap), min(bwd_t, cap)
    if seq is not None:  # step by step: no forward tile; checkpoints every backward tile
        fwd_t, (fwd_d, fwd_w, fwd_stages), fwd_r = bwd_t, seq, 0
    else:  # the tiled forward's pipeline stages over states
        fwd_stages = int(overrides[_FWD_STAGES] or 0) or stages
    if max(fwd_t, bwd_t) % min(fwd_t, bwd_t):
        raise ValueError(f"selective scan tiles: the forward's {fwd_t} steps and the backward's {bwd_t} must divide "
                         "one another")
    if groups > 1:  # a tile must not straddle two groups of B/C
        fwd_d = _largest_pow2_divisor(dim // groups, fwd_d)  # (sequential forward too)
        bwd_d = _largest_pow2_divisor(dim // groups, bwd_d)
    # The forward checkpoints the state every ckpt_len steps, the shorter of the two tiles: a backward tile starts
    # from the checkpoint of the interval it begins with (ckpt_ratio intervals per backward tile).
    ckpt_len = min(fwd_t, bwd_t)
    n_tiles = -(-length // ckpt_len)
    unit = max(fwd_t, bwd_t)  # segments hold whole tiles of both kernels
    units = -(-length // unit)
    if force_seg_len is not None:
        seg_units = max(1, force_seg_len // unit)
    else:
        # Enough programs to fill the GPU; each segment costs a state pass, so keep them >= 4096 steps.
        rows = batch * -(-dim // bwd_d) * directions
        target = int(overrides[9] or 0) or _target_programs(device)
        wanted = max(1, -(-target // rows))
        seg_units = max(-(-4096 // unit), -(-units // wanted))
    seg_units = min(seg_units, units)
    n_seg = -(-units // seg_units)
    return LaunchPlan(
        fwd=KernelTile(fwd_t, fwd_d, fwd_w, -(-dim // fwd_d), fwd_r),
        bwd=KernelTile(bwd_t, bwd_d, bwd_w, -(-dim // bwd_d), bwd_r),
        fwd_unroll=unroll, fwd_sequential=seq is not None, fwd_stages=fwd_stages,
        bwd_shift_a=bwd_w == 1 and (BWD_SHIFT_A if shift_a is None else shift_a),
        bwd_prefetch=prefetch if prefetch_env is None else prefetch_env, fwd_seq_ahead=seq_ahead,
        fwd_seq_split=seq_split,
        ckpt_len=ckpt_len, ckpt_ratio=bwd_t // ckpt_len, n_tiles=n_tiles,
        seg_len=seg_units * unit, n_seg=n_seg,
        n_pad=max(2, _next_pow2(d_state)))
