"""Host side of the scan core: one forward and one backward launcher for 1, 2 or 4 directions.

Every op built on the scan kernels (the single scan, the bidirectional scan, the 2D cross-scan) goes through
these two functions. A launch runs all directions at once: the grid's third axis is the direction, and each
direction finds its tensors at a fixed element offset from direction 0's (`direction_step`), so separate
tensors (the two branches of a bidirectional mixer) and slices of one stacked tensor (the four routes of a
2D map) are both read in place, without stacking or flipping copies.

Outputs that belong to one direction are allocated stacked, with a leading direction axis. Inputs the
directions share (z; u of a 2D map) get gradients accumulated across directions: fp32 atomics, or, in
deterministic mode with more than two directions, per-direction slots summed in a fixed order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .launcher import launch
from .scan_kernels import selective_scan_bwd_kernel, selective_scan_fwd_kernel
from .scan_plan import LaunchPlan, plan_launch


@dataclass(frozen=True)
class ScanInputs:
    """One direction's inputs in the kernels' layout: u, delta (batch, dim, L); A (dim, N) fp32; B, C (dim, N),
    (batch, N, L) or (batch, G, N, L); D, delta_bias (dim,) or None."""

    u: torch.Tensor
    delta: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor | None
    delta_bias: torch.Tensor | None


def bc_view(t: torch.Tensor) -> tuple[torch.Tensor, bool, int, tuple[int, int, int, int]]:
    """(tensor, is_variable, groups, strides s0..s3) of B or C in the layout the kernels index: (batch, G, N, L)
    strides for a variable B/C ((batch, N, L) is one group), (0, channel, state, 0) for a (dim, N) one. The strides
    are computed, not read off an unsqueezed view (a view is host time on every call)."""
    if t.dim() == 2:  # (dim, N): channel stride in s1, state stride in s2
        return t, False, 1, (0, t.stride(0), t.stride(1), 0)
    if t.dim() == 3:  # (batch, N, L): one group; its stride is never used (group index 0)
        s0, s1, s2 = t.stride()
        return t, True, 1, (s0, 0, s1, s2)
    return t, True, t.shape[1], tuple(t.stride())


def plan_for(u: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, directions: int = 1) -> LaunchPlan:
    """The launch plan of a call on u (batch, dim, L) with these A, B, C, for `directions` scans in one launch."""
    batch, dim, length = u.shape
    return plan_launch(batch, dim, length, A.shape[1], max(bc_view(B)[2], bc_view(C)[2]), u.device, directions)


def state_shapes(u: torch.Tensor, A: torch.Tensor, plan: LaunchPlan, directions: int = 1):
    """Shapes of the checkpoints (K, batch, dim, n_tiles, N) and segment products (K, batch, n_seg, dim, N)."""
    batch, dim, _ = u.shape
    seg = (directions, batch, plan.n_seg, dim, A.shape[1]) if plan.n_seg > 1 else (0,)
    return (directions, batch, dim, plan.n_tiles, A.shape[1]), seg


def _strides3(t: torch.Tensor | None) -> tuple[int, int, int]:
    return tuple(t.stride()) if t is not None else (0, 0, 0)


def direction_offsets(tensors: list[torch.Tensor | None], name: str) -> tuple[int, int]:
    """(step, col): direction k's tensor starts k * step elements after direction 0's, plus col for the column routes
    (1 and 3) of a 2D launch; (0, 0) with one direction or a tensor every direction shares.

    So the tensors must have one dtype, shape, strides and device, and be spaced in memory as slices of one stacked
    tensor are (col = 0), or (four routes) as the row routes' slices of one tensor and the column routes' of another
    (u: the map and its column-major copy).
    """
    first = tensors[0]
    if len(tensors) == 1 or first is None:
        if any(t is not None for t in tensors[1:]):
            raise ValueError(f"{name}: given for some directions but not for direction 0")
        return 0, 0
    for k, t in enumerate(tensors[1:], 1):
        if t is None:
            raise ValueError(f"{name}: given for direction 0 but not for direction {k}")
        if t.dtype != first.dtype or t.shape != first.shape or t.stride() != first.stride() or t.device != first.device:
            raise ValueError(f"{name}: every direction's tensor must have the same dtype, shape, strides and device; "
                             f"direction 0 has {first.dtype} {tuple(first.shape)} strides {first.stride()}, "
                             f"direction {k} has {t.dtype} {tuple(t.shape)} strides {t.stride()}")
    size = first.element_size()
    gaps = [(t.data_ptr() - first.data_ptr()) // size for t in tensors]
    if len(tensors) == 2:
        return gaps[1], 0
    step, col = gaps[2] // 2, gaps[1] - gaps[2] // 2
    if len(tensors) != 4 or gaps[2] % 2 or gaps[3] != 3 * step + col:
        raise ValueError(f"{name}: the {len(tensors)} directions' tensors must be laid out as slices of one stacked "
                         "tensor (or, four routes, rows and columns as slices of two)")
    return step, col


def direction_step(tensors: list[torch.Tensor | None], name: str) -> int:
    """`direction_offsets` of a tensor the kernels address without column offsets: the step, and col must be 0."""
    step, col = direction_offsets(tensors, name)
    if col:
        raise ValueError(f"{name}: the {len(tensors)} directions' tensors must be evenly spaced in memory "
                         "(slices of one stacked tensor)")
    return step


def _scaled_steps(steps: dict[str, int]) -> dict:
    """The dir_* offsets as the kernels take them, plus DIR_SCALE: when every offset is a multiple of 16 elements
    (separate allocations are 512-byte aligned, so this is the usual case) they are passed divided by 16 and the
    kernels multiply by a constant 16, which tells the compiler that direction k's pointers keep direction 0's
    alignment, so loads and stores stay vectorised. Unspecialised offsets alone lose that: the fused bidirectional
    scan at (2, 512, 131072, 16) took 108.0 ms fwd+bwd without the scale and 58.3 ms with it (session 5, H200, the
    same script in two calls)."""
    scale = 16 if all(v % 16 == 0 for v in steps.values()) else 1
    return {**{k: v // scale for k, v in steps.items()}, "DIR_SCALE": scale}


def _tile_options(tile) -> dict:
    """Launch options of a kernel tile: warps, and the register cap when the plan sets one."""
    return dict(num_warps=tile.num_warps, **({"maxnreg": tile.max_regs} if tile.max_regs else {}))


def _gather_flip(tile) -> bool:
    """Whether the kernels reverse tiles with tl.gather for right-to-left scans: inside one warp a gather is a few
    shuffles, while across warps it goes through shared memory and barriers (then Triton's own reverse scan)."""
    return tile.num_warps == 1


_INPUT_STEPS = dict(delta="dir_dt", A="dir_A", B="dir_B", C="dir_C", D="dir_D", delta_bias="dir_bias")
_NO_STEPS = {**{key: 0 for key in _INPUT_STEPS.values()}, "dir_u": 0, "col_u": 0}


def _input_steps(dirs: list[ScanInputs]) -> dict[str, int]:
    """dir_* offsets of the inputs, and col_u (only u may differ between the row and column routes)."""
    if len(dirs) == 1:
        return dict(_NO_STEPS)
    steps = {key: direction_step([getattr(d, name) for d in dirs], name) for name, key in _INPUT_STEPS.items()}
    steps["dir_u"], steps["col_u"] = direction_offsets([d.u for d in dirs], "u")
    return steps


@dataclass(frozen=True)
class Directions:
    """The inputs of one launch's directions: direction 0's tensors (`first`), how many directions there are, and
    each input's element offsets from direction 0's to direction k's (dir_u, col_u, dir_dt, dir_A, dir_B, dir_C, dir_D,
    dir_bias: see `direction_offsets`).

    `Directions.of` derives the offsets from a list of per-direction inputs and checks that they are laid out the way
    the kernels address them. An op whose directions are slices of stacked tensors by construction (the 2D routes)
    builds its Directions from the strides instead: the same offsets, without taking 4 x 7 slices apart again on every
    call (host time is what a small eager call waits for).
    """

    first: ScanInputs
    count: int
    steps: dict

    @classmethod
    def of(cls, dirs: list[ScanInputs]) -> Directions:
        return cls(dirs[0], len(dirs), _input_steps(dirs))


def _zeroed_direction_views(k_dirs: int, shapes: dict[str, tuple[int, ...] | None], device
                            ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(k_dirs, *shape) contiguous fp32 views of one zero-filled buffer, one per shape (None: skipped), in the dict's
    order, so that the sums a launch adds into atomically cost one fill launch, not one each. Each direction's row is
    padded to a multiple of 32 elements (128 bytes), so that the per-direction offsets stay multiples of 16
    (`_scaled_steps`). Returns the buffer and the views."""
    spans, total = {}, 0
    for name, shape in shapes.items():
        if shape is not None:
            row = -(-math.prod(shape) // 32) * 32
            inner = tuple(math.prod(shape[i + 1:]) for i in range(len(shape)))  # contiguous strides
            spans[name] = ((k_dirs, *shape), (row, *inner), total)
            total += k_dirs * row
    flat = torch.zeros(total, dtype=torch.float32, device=device)
    return flat, {name: flat.as_strided(size, stride, offset) for name, (size, stride, offset) in spans.items()}


@dataclass(frozen=True)
class ForwardState:
    """What the forward keeps for the backward: ckpt (K, batch, dim, n_tiles, N) tile-entry states and seg_p
    (K, batch, n_seg, dim, N) segment decay products (empty with one segment); last (K, batch, dim, N)."""

    last: torch.Tensor
    ckpt: torch.Tensor
    seg_p: torch.Tensor


def _flags(first: ScanInputs, z, softplus: bool, b_var: bool, c_var: bool) -> dict:
    return dict(HAS_D=first.D is not None, HAS_Z=z is not None, HAS_BIAS=first.delta_bias is not None,
                SOFTPLUS=softplus, B_VAR=b_var, C_VAR=c_var)


def launch_forward(dirs: list[ScanInputs] | Directions, z: torch.Tensor | None, h0: torch.Tensor | None,
                   out: torch.Tensor, out_step: int, *, plan: LaunchPlan, softplus: bool, reverse: bool = False
                   ) -> ForwardState:
    """Run the forward scan of every direction in `dirs` (1, 2 or 4) in one launch (two with segments).

    out: direction 0's output (batch, dim, L); direction k writes at out + k * out_step elements, in its scan order.
    z (batch, dim, L) is shared. h0: (K, batch, dim, N) fp32 contiguous or None. reverse applies to a single direction
    (K = 2 runs forward then reverse; K = 4 runs the routes of a 2D map: rows, columns, rows reversed, columns
    reversed, each direction's tensors in its scan order, see `direction_offsets`).
    """
    dirs = dirs if isinstance(dirs, Directions) else Directions.of(dirs)
    k_dirs, first = dirs.count, dirs.first
    batch, dim, length = first.u.shape
    d_state = first.A.shape[1]
    Bv, b_var, b_groups, sb = bc_view(first.B)
    Cv, c_var, c_groups, sc = bc_view(first.C)
    dev = first.u.device
    f32 = dict(dtype=torch.float32, device=dev)
    ckpt = torch.empty(k_dirs, batch, dim, plan.n_tiles, d_state, **f32)
    last = torch.empty(k_dirs, batch, dim, d_state, **f32)
    seg_shape = (k_dirs, batch, plan.n_seg, dim, d_state) if plan.n_seg > 1 else (0,)
    seg_p = torch.empty(seg_shape, **f32)
    seg_h = torch.empty(seg_shape, **f32) if plan.n_seg > 1 else seg_p  # one segment: never touched
    steps = dict(dirs.steps)
    steps.update(dir_state=batch * dim * d_state, dir_out=out_step, dir_ckpt=ckpt.numel() // k_dirs,
                 dir_seg=seg_h.numel() // k_dirs if plan.n_seg > 1 else 0)
    steps = _scaled_steps(steps)
    tile = plan.fwd
    grid = (batch * tile.n_dtiles, plan.n_seg, k_dirs)
    common = (
        dim, length, d_state, dim // b_groups, dim // c_groups, plan.seg_len, plan.n_seg, tile.n_dtiles,
        plan.n_tiles, *first.u.stride(), *first.delta.stride(), *_strides3(z), *out.stride(),
        *first.A.stride(), *sb, *sc,
    )
    meta = dict(_flags(first, z, softplus, b_var, c_var), BLOCK_D=tile.block_d,
                BLOCK_T=tile.block_t, N_PAD=plan.n_pad, DIRECTIONS=k_dirs, REVERSE=reverse, **_tile_options(tile),
                UNROLL_N=plan.fwd_unroll, GATHER_FLIP=_gather_flip(tile), CKPT_T=plan.ckpt_len,
                SEQUENTIAL=plan.fwd_sequential, SEQ_STAGES=plan.fwd_stages,
                SEQ_AHEAD=plan.fwd_seq_ahead, SEQ_SPLIT=plan.fwd_seq_split)
    dummy = out  # placeholder pointer for absent optional tensors (never read: the flag is off)
    ptrs = [first.u, first.delta, first.A, Bv, Cv, first.D if first.D is not None else dummy,
            z if z is not None else dummy, first.delta_bias if first.delta_bias is not None else dummy]
    if plan.n_seg > 1:  # pass 1: each segment's end state from a zero start, and its decay product
        launch(selective_scan_fwd_kernel, grid, *ptrs, dummy, out, ckpt, last, seg_h, seg_p, *common,
               HAS_H0=False, STATE_ONLY=True, SEG_MODE=0, **steps, **meta)
    launch(selective_scan_fwd_kernel, grid, *ptrs, h0 if h0 is not None else dummy, out, ckpt, last, seg_h, seg_p,
           *common, HAS_H0=h0 is not None, STATE_ONLY=False, SEG_MODE=1 if plan.n_seg > 1 else 0, **steps, **meta)
    return ForwardState(last=last, ckpt=ckpt, seg_p=seg_p)


@dataclass(frozen=True)
class Gradients:
    """Stacked per-direction gradients (leading axis K) plus those of the shared inputs.

    du: (K, batch, dim, L), fp32 for the 2D routes' shared u (route k's part in its scan order: the caller merges);
    ddelta (K, batch, dim, L), or (batch, 4, dim, L) for the 2D routes;
    dA (K, dim, N); dB, dC (K, *B.shape), or (batch, 4, N, L) for the 2D routes; dD, dbias (K, dim) or None;
    dh0 (K, batch, dim, N) fp32 or None; dz (batch, dim, L) (fp32 when several directions share z) or None.
    """

    du: torch.Tensor
    ddelta: torch.Tensor
    dA: torch.Tensor
    dB: torch.Tensor
    dC: torch.Tensor
    dD: torch.Tensor | None
    dbias: torch.Tensor | None
    dh0: torch.Tensor | None
    dz: torch.Tensor | None


def launch_backward(dirs: list[ScanInputs] | Directions, z: torch.Tensor | None, dout: torch.Tensor, dout_step: int,
                    dlast: torch.Tensor | None, state: ForwardState, *, plan: LaunchPlan, softplus: bool,
                    deterministic: bool, reverse: bool = False, shared_u: bool = False, dout_col: int = 0,
                    need_dh0: bool = False) -> Gradients:
    """Backward of `launch_forward` for the same directions, in one launch (two with segments).

    dout: direction 0's output gradient (batch, dim, L) with L contiguous; direction k's is at dout +
    k * dout_step (0: all directions receive the same gradient), plus dout_col for the column routes of a 2D launch.
    dlast: (K, batch, dim, N) fp32 contiguous or None. shared_u: the four 2D routes read one map (the column routes
    its column-major copy): du comes back as an fp32 slot per route for the caller to merge, and ddelta in the
    (batch, 4, dim, L) layout of the routes' delta (see Gradients). need_dh0: compute the gradient of an initial
    state (else Gradients.dh0 is None and nothing is allocated for it).
    """
    dirs = dirs if isinstance(dirs, Directions) else Directions.of(dirs)
    k_dirs, first = dirs.count, dirs.first
    batch, dim, length = first.u.shape
    d_state = first.A.shape[1]
    Bv, b_var, b_groups, sb = bc_view(first.B)
    Cv, c_var, c_groups, sc = bc_view(first.C)
    dev = first.u.device
    f32 = dict(dtype=torch.float32, device=dev)
    rows_len = batch * dim * length
    # u shared by the 2D routes: an fp32 slot per route, which the caller merges (no atomics, no zero fill).
    # Two directions sharing z add into it atomically: a + b == b + a in fp32, so two addends are reproducible.
    du = torch.empty(k_dirs, batch, dim, length, **(f32 if shared_u else dict(dtype=first.u.dtype, device=dev)))
    if shared_u:  # the 2D routes' ddelta in their delta's layout, (batch, 4, dim, L): no transposed copy after
        ddelta = torch.empty(batch, k_dirs, dim, length, dtype=first.delta.dtype, device=dev)
        ddt_step, ddt_batch = dim * length, k_dirs * dim * length
    else:
        ddelta = torch.empty(k_dirs, batch, dim, length, dtype=first.delta.dtype, device=dev)
        ddt_step, ddt_batch = rows_len, dim * length
    if z is not None and k_dirs > 2:
        raise ValueError("a z gate shared by more than two scan directions is not supported")
    atomic_dz = z is not None and k_dirs == 2
    atomic_bc = not deterministic
    has_d, has_bias = first.D is not None, first.delta_bias is not None
    n_dtiles = plan.bwd.n_dtiles
    parts = batch * plan.n_seg
    # The per-channel sums (dA, dD, dbias, invariant dB/dC): added atomically into one sum each, all cut from one
    # zero-filled buffer (one fill, and no reduction launches after: host time at small shapes), or (deterministic)
    # written as a partial per (batch, segment) and summed in a fixed order after the launch.
    rows = {name: (var, groups) for name, var, groups in (("dB", b_var, b_groups), ("dC", c_var, c_groups))}
    per_channel = {"dA": (dim, d_state), "dD": (dim,) if has_d else None, "dbias": (dim,) if has_bias else None,
                   **{name: None if var else (dim, d_state) for name, (var, _) in rows.items()}}
    # Time-variable dB/dC: summed over the channel tile in registers, then added atomically into (batch, group)
    # rows (cut from the same zero-filled buffer as the per-channel sums, after them: one fill for all) or
    # (deterministic) written as a partial per channel tile. In the 2D layout (shared_u) they come as (batch, 4, ...)
    # like the routes' B and C: the kernels' rows per batch then span all four routes.
    flat_rows = atomic_bc and not shared_u
    if atomic_bc:
        flat, bufs = _zeroed_direction_views(k_dirs, {**per_channel, **{
            name: (batch, groups, d_state, length) for name, (var, groups) in rows.items() if var and flat_rows}}, dev)
    else:
        bufs = {name: torch.empty(k_dirs, parts, *shape, **f32) for name, shape in per_channel.items()
                if shape is not None}
    bc_rows, row_step = {}, {}  # the kernels' DB_ROWS / DC_ROWS and dir_dB / dir_dC
    for name, (var, groups) in rows.items():
        if not var:
            bc_rows[name], row_step[name] = 0, bufs[name].stride(0)
            continue
        per_batch = groups if atomic_bc else n_dtiles
        if flat_rows:
            bc_rows[name], row_step[name] = per_batch, bufs[name].stride(0)
            continue
        alloc = torch.zeros if atomic_bc else torch.empty
        if shared_u:
            bufs[name] = alloc(batch, k_dirs, per_batch, d_state, length, **f32)
            bc_rows[name], row_step[name] = k_dirs * per_batch, per_batch * d_state * length
        else:
            bufs[name] = alloc(k_dirs, batch, per_batch, d_state, length, **f32)
            bc_rows[name], row_step[name] = per_batch, bufs[name].stride(0)
    if z is None:
        dz = None
    elif atomic_dz:
        dz = torch.zeros(batch, dim, length, **f32)
    else:
        dz = torch.empty(batch, dim, length, dtype=z.dtype, device=dev)
    dummy = ddelta  # placeholder pointer for absent tensors (never touched: the flag is off)
    dh0 = torch.empty(k_dirs, batch, dim, d_state, **f32) if need_dh0 else dummy
    # each segment's dh carry (pass 1); one segment: never touched
    seg_e = torch.empty(k_dirs, batch, plan.n_seg, dim, d_state, **f32) if plan.n_seg > 1 else dummy
    steps = dict(dirs.steps)
    steps.update(dir_g=dout_step, dir_state=batch * dim * d_state, dir_ckpt=state.ckpt.numel() // k_dirs,
                 dir_seg=seg_e.numel() // k_dirs if plan.n_seg > 1 else 0, dir_du=rows_len, dir_ddt=ddt_step, dir_dz=0,
                 dir_part=bufs["dA"].stride(0), dir_dB=row_step["dB"], dir_dC=row_step["dC"],
                 dir_row=bufs["dD"].stride(0) if has_d else bufs["dbias"].stride(0) if has_bias else 0,
                 col_g=dout_col)
    steps = _scaled_steps(steps)
    tile = plan.bwd
    grid = (batch * tile.n_dtiles, plan.n_seg, k_dirs)
    common = (
        # length twice: L, and BC_LEN, the dB/dC rows' length (a separate argument for ptxas; see the kernel)
        dim, length, length, d_state, dim // b_groups, dim // c_groups, bc_rows["dB"], bc_rows["dC"], plan.seg_len,
        plan.n_seg, tile.n_dtiles, plan.n_tiles, *first.u.stride(), *first.delta.stride(), *_strides3(z),
        *dout.stride(), ddt_batch, *first.A.stride(), *sb, *sc,
    )
    meta = dict(_flags(first, z, softplus, b_var, c_var), ATOMIC_BC=atomic_bc,
                ATOMIC_DZ=atomic_dz, NEED_DH0=need_dh0, BLOCK_D=tile.block_d, BLOCK_T=tile.block_t,
                N_PAD=plan.n_pad, CKPT_RATIO=plan.ckpt_ratio, DIRECTIONS=k_dirs, REVERSE=reverse,
                GATHER_FLIP=_gather_flip(tile) * (2 if plan.bwd_shift_a else 1), PREFETCH=plan.bwd_prefetch,
                **_tile_options(tile))
    ptrs = [first.u, first.delta, first.A, Bv, Cv, first.D if has_d else dummy,
            z if z is not None else dummy, first.delta_bias if has_bias else dummy, dout]
    outs = [du, ddelta, dz if dz is not None else dummy, bufs["dA"], bufs["dB"], bufs["dC"],
            bufs.get("dD", dummy), bufs.get("dbias", dummy), dh0]
    if plan.n_seg > 1:  # pass 1: each segment's dh carry from a zero carry
        launch(selective_scan_bwd_kernel, grid, *ptrs, dummy, state.ckpt, seg_e, state.seg_p, *outs, *common,
               HAS_DLAST=False, CARRY_ONLY=True, SEG_MODE=0, **steps, **meta)
    launch(selective_scan_bwd_kernel, grid, *ptrs, dlast if dlast is not None else dummy, state.ckpt, seg_e,
           state.seg_p, *outs, *common, HAS_DLAST=dlast is not None, CARRY_ONLY=False,
           SEG_MODE=1 if plan.n_seg > 1 else 0, **steps, **meta)

    if flat_rows and b_var and c_var and first.B.dtype == first.C.dtype != torch.float32:
        # Variable dB and dC are neighbours in the flat buffer: one cast covers both (one launch, not two).
        start = bufs["dB"].storage_offset()
        both = flat[start:bufs["dC"].storage_offset() + k_dirs * bufs["dC"].stride(0)].to(first.B.dtype)
        for name in ("dB", "dC"):
            bufs[name] = both.as_strided(bufs[name].shape, bufs[name].stride(), bufs[name].storage_offset() - start)

    def finish(name: str, like: torch.Tensor | None) -> torch.Tensor | None:
        """A gradient from its buffer: as it is (atomic sums), or its partials summed in a fixed order."""
        if like is None:
            return None
        buf = bufs[name]
        var, groups = rows.get(name, (False, 1))
        if var and shared_u:  # (batch, K, G = 1, N, L), or the channel tiles' partials (batch, K, n_dtiles, N, L)
            buf = buf.squeeze(2) if atomic_bc else buf.sum(2)
        elif var:  # (K, batch, G, N, L), or (K, batch, n_dtiles, N, L): the partials of each group's tiles
            if not atomic_bc:
                buf = buf.view(k_dirs, batch, groups, n_dtiles // groups, d_state, length).sum(3)
            buf = buf.view(k_dirs, *like.shape)
        elif not atomic_bc:
            buf = buf.sum(1)
        return buf if buf.dtype == like.dtype else buf.to(like.dtype)  # (a same-dtype .to is host time too)

    return Gradients(
        du=du, ddelta=ddelta, dA=finish("dA", first.A), dB=finish("dB", first.B), dC=finish("dC", first.C),
        dD=finish("dD", first.D), dbias=finish("dbias", first.delta_bias), dh0=dh0 if need_dh0 else None, dz=dz,
    )
