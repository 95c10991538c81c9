"""Launch plan of the selective-scan kernels: tiles, segments and warps for a call's shapes.

Kept apart from the launchers so that every op built on the scan core (single, bidirectional, 2D) plans the same way.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

# Tile shapes (time steps, channels, warps), forward and backward separately, from the H200 sweeps of 2026-11-29
# (BENCHMARKS.md). One-warp programs make the forward fastest (no cross-warp barriers in the scans and
# reductions); the backward keeps more live tiles and wants fewer elements per thread. A backward tile is a
# whole number of forward tiles, because it starts from the forward's tile-entry checkpoints.
#
# The forward's loop over states is unrolled UNROLL times (tl.range's loop_unroll_factor): 4 sped the forward up at
# L >= 2048 (session 5: 0.94 -> 0.91 ms at (8, 3072, 2048, 16), 0.57 -> 0.51 ms at (8, 768, 4096, 16)) and slowed it
# at L = 197 (0.59 -> 0.70 ms). Unrolling the backward's loop was slower at every shape (more live registers).
TILE_PLANS = (
    # (max L, max rows or None, forward (T, D, W), backward (T, D, W), forward UNROLL)
    (256, None, (128, 4, 1), (128, 4, 1), 1),          # short sequences (Vim at 224 px: L = 197); session-3 sweep
    (16384, None, (1024, 1, 1), (1024, 2, 4), 4),      # mid lengths; session-3 sweep
    # long sequences: two-warp forward programs give the parallelism without segments (session 5, at (2, 512,
    # 131072, 16): 5.80 / 29.6 ms fwd / fwd+bwd against 7.64 / 32.2 with the earlier 256-step tiles and segments)
    (None, None, (1024, 1, 2), (1024, 2, 4), 4),
)
# Launches of several directions (bidirectional: 2, 2D routes: 4) keep the session-3 tiles without unrolling: the 2D
# four-route forward at (64, 192, 56, 56, 16) took 16.0 ms with the forward unrolled 4 times against 12.8 ms without
# (session 5, same H200 call). The single-direction plan's long tiles were not measured on multi-direction launches.
MULTI_DIRECTION_PLANS = (
    (256, None, (128, 4, 1), (128, 4, 1), 1),
    (16384, None, (1024, 1, 1), (1024, 2, 4), 1),
    (None, None, (256, 1, 1), (256, 2, 1), 1),
)


def deterministic_mode() -> bool:
    """True when backward must be bitwise reproducible (torch flag or MAMBASUITE_DETERMINISTIC=1)."""
    return torch.are_deterministic_algorithms_enabled() or os.environ.get("MAMBASUITE_DETERMINISTIC") == "1"


@dataclass(frozen=True)
class KernelTile:
    """One kernel's program shape: block_d channels x block_t steps, num_warps warps, n_dtiles channel tiles."""

    block_t: int
    block_d: int
    num_warps: int
    n_dtiles: int


@dataclass(frozen=True)
class LaunchPlan:
    """How one call is cut into programs.

    fwd / bwd: the two kernels' tiles (bwd.block_t = ckpt_ratio x fwd.block_t). fwd_unroll: unroll factor of the
    forward's loop over states. n_tiles: forward tiles
    per row (= checkpoints per row). Segments of seg_len steps (a multiple of bwd.block_t) run in parallel.
    """

    fwd: KernelTile
    bwd: KernelTile
    fwd_unroll: int
    ckpt_ratio: int
    n_tiles: int
    seg_len: int
    n_seg: int
    n_pad: int


def _default_tiles(rows: int, length: int, directions: int) -> tuple[tuple[int, int, int], tuple[int, int, int], int]:
    for max_len, max_rows, fwd, bwd, unroll in TILE_PLANS if directions == 1 else MULTI_DIRECTION_PLANS:
        if (max_len is None or length <= max_len) and (max_rows is None or rows <= max_rows):
            return fwd, bwd, unroll
    raise AssertionError("every plan table must end with a catch-all row")


def _largest_pow2_divisor(n: int, cap: int) -> int:
    p = 1
    while p * 2 <= cap and n % (p * 2) == 0:
        p *= 2
    return p


@functools.lru_cache(maxsize=None)
def _target_programs(device: torch.device) -> int:
    # Two backward programs fill an SM (the backward uses ~255 registers a thread), and a segment costs a second
    # pass over its steps: at (2, 512, 131072, 16) two segments made the backward 29.2 ms against 23.8 without.
    if device.type == "cuda":
        return 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # interpreter: segments only when a test forces them


# Tests force small segments through this hook; None = choose from the device's size.
FORCE_SEG_LEN: int | None = None


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


_TILE_ENV = tuple(f"MAMBASUITE_SCAN_{k}" for k in ("BLOCK_T", "BLOCK_D", "WARPS", "BWD_BLOCK_T", "BWD_BLOCK_D",
                                                     "BWD_WARPS", "FWD_UNROLL"))


def _env_tile(values: tuple[str | None, ...], default: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(int(v or 0) or d for v, d in zip(values, default))


def plan_launch(batch: int, dim: int, length: int, d_state: int, groups: int, device: torch.device,
                directions: int = 1) -> LaunchPlan:
    """Pick both kernels' tiles, the segment length and warps for a call (deterministic in the shapes).

    Tiles come from TILE_PLANS (H200 sweeps). Overrides: MAMBASUITE_SCAN_BLOCK_T / _BLOCK_D / _WARPS set the
    forward tile (and the backward's, unless MAMBASUITE_SCAN_BWD_BLOCK_T / _BWD_BLOCK_D / _BWD_WARPS are set),
    MAMBASUITE_SCAN_FWD_UNROLL the forward's unroll factor;
    `mamba-suite bench scan --configs` sweeps them. `directions` scans run in the same launch (bidirectional: 2,
    2D routes: 4), so fewer segments are needed to fill the GPU.
    """
    # Plans are memoised: every scan call plans (forward and backward), and at small shapes the host time of a
    # call is what a user waits for. The overrides are part of the key, so changing them takes effect at once.
    overrides = tuple(os.environ.get(k) for k in _TILE_ENV)
    return _plan(batch, dim, length, d_state, groups, device, directions, overrides, FORCE_SEG_LEN)


@functools.lru_cache(maxsize=1024)
def _plan(batch: int, dim: int, length: int, d_state: int, groups: int, device: torch.device, directions: int,
          overrides: tuple[str | None, ...], force_seg_len: int | None) -> LaunchPlan:
    fwd_default, bwd_default, unroll = _default_tiles(batch * dim, length, directions)
    env_fwd = any(overrides[:3])
    fwd_t, fwd_d, fwd_w = _env_tile(overrides[:3], fwd_default)
    bwd_t, bwd_d, bwd_w = _env_tile(overrides[3:6], (fwd_t, fwd_d, fwd_w) if env_fwd else bwd_default)
    unroll = int(overrides[6] or 0) or unroll
    cap = max(16, _next_pow2(length))
    if force_seg_len is not None:  # tests: segments shorter than a tile need shorter tiles
        cap = min(cap, _next_pow2(force_seg_len))
    fwd_t, bwd_t = min(fwd_t, cap), min(bwd_t, cap)
    if bwd_t % fwd_t:
        raise ValueError(f"selective scan tiles: the backward's {bwd_t} steps must be a multiple of the "
                         f"forward's {fwd_t}")
    if groups > 1:  # a tile must not straddle two groups of B/C
        fwd_d = _largest_pow2_divisor(dim // groups, fwd_d)
        bwd_d = _largest_pow2_divisor(dim // groups, bwd_d)
    n_tiles = -(-length // fwd_t)
    bwd_tiles = -(-length // bwd_t)
    if force_seg_len is not None:
        seg_tiles = max(1, force_seg_len // bwd_t)
    else:
        # Enough programs to fill the GPU; each segment costs a state pass, so keep them >= 4096 steps.
        rows = batch * -(-dim // bwd_d) * directions
        wanted = max(1, -(-_target_programs(device) // rows))
        seg_tiles = max(-(-4096 // bwd_t), -(-bwd_tiles // wanted))
    seg_tiles = min(seg_tiles, bwd_tiles)
    n_seg = -(-bwd_tiles // seg_tiles)
    return LaunchPlan(
        fwd=KernelTile(fwd_t, fwd_d, fwd_w, -(-dim // fwd_d)), bwd=KernelTile(bwd_t, bwd_d, bwd_w, -(-dim // bwd_d)),
        fwd_unroll=unroll, ckpt_ratio=bwd_t // fwd_t, n_tiles=n_tiles, seg_len=seg_tiles * bwd_t, n_seg=n_seg,
        n_pad=max(2, _next_pow2(d_state)))
