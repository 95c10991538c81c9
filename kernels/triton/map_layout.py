"""Layout changes of the 2D cross-scan's maps: a column-major copy, and the merge of row- and column-major outputs.

The column routes of `cross_scan_2d` scan a column-major copy of the map and write column-major outputs, so every
call makes one copy of x (and of the output gradient) and merges route outputs of both layouts back into one map.
Done with torch, a transposed operand is read (or written) one element per thread with a stride of H or W; these
kernels move a (BLOCK, BLOCK) tile of a plane at a time, contiguous on both sides (Triton transposes the tile in
registers and shared memory).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .host import cdiv
from .launcher import launch

BLOCK = 32  # tile side; a 28x28 map (VMamba's third stage) fits one tile per plane


@triton.jit
def _map_layout_kernel(out_ptr, rows_ptr, cols_ptr, H, W, part_stride, ROW_PARTS: tl.constexpr,
                       COL_PARTS: tl.constexpr, OUT_COLUMNS: tl.constexpr, BLOCK: tl.constexpr):
    """One (BLOCK, BLOCK) tile of one (H, W) plane: out = sum of ROW_PARTS row-major inputs + sum of COL_PARTS
    column-major inputs (part k at k * part_stride elements), summed in fp32, stored row-major (or column-major with
    OUT_COLUMNS) in out's dtype. Planes are H * W elements apart in every tensor."""
    plane = tl.program_id(0).to(tl.int64)
    n_tw = tl.cdiv(W, BLOCK)
    offs_h = (tl.program_id(1) // n_tw) * BLOCK + tl.arange(0, BLOCK)
    offs_w = (tl.program_id(1) % n_tw) * BLOCK + tl.arange(0, BLOCK)
    base = plane * H * W
    by_row = offs_h[:, None] * W + offs_w[None, :]  # (h, w) tile, contiguous along w
    by_col = offs_w[:, None] * H + offs_h[None, :]  # (w, h) tile, contiguous along h
    mask_row = (offs_h[:, None] < H) & (offs_w[None, :] < W)
    mask_col = (offs_w[:, None] < W) & (offs_h[None, :] < H)
    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)  # (h, w)
    for k in tl.static_range(ROW_PARTS):
        acc += tl.load(rows_ptr + k * part_stride + base + by_row, mask=mask_row, other=0.0).to(tl.float32)
    for k in tl.static_range(COL_PARTS):
        part = tl.load(cols_ptr + k * part_stride + base + by_col, mask=mask_col, other=0.0).to(tl.float32)
        acc += tl.trans(part)
    if OUT_COLUMNS:
        tl.store(out_ptr + base + by_col, tl.trans(acc).to(out_ptr.dtype.element_ty), mask=mask_col)
    else:
        tl.store(out_ptr + base + by_row, acc.to(out_ptr.dtype.element_ty), mask=mask_row)


def _launch(out, rows, cols, height, width, part_stride, row_parts, col_parts, out_columns):
    planes = out.numel() // (height * width)
    grid = (planes, cdiv(height, BLOCK) * cdiv(width, BLOCK))  # (host.cdiv: triton.cdiv is dear on the host)
    launch(_map_layout_kernel, grid, out, rows, cols, height, width, part_stride, ROW_PARTS=row_parts,
           COL_PARTS=col_parts, OUT_COLUMNS=out_columns, BLOCK=BLOCK, num_warps=4)


def column_major(t: torch.Tensor, height: int) -> torch.Tensor:
    """(..., H*W) contiguous, by pixel -> a new contiguous (..., W*H) copy in column-major pixel order."""
    if not t.is_contiguous() or t.shape[-1] % height:
        raise ValueError(f"column_major: expected a contiguous (..., H*W) tensor with H = {height} dividing H*W, "
                         f"got {tuple(t.shape)} (contiguous: {t.is_contiguous()})")
    out = torch.empty_like(t)
    if t.numel():
        _launch(out, t, t, height, t.shape[-1] // height, 0, 1, 0, True)
    return out


def merge_layouts(rows: torch.Tensor, cols: torch.Tensor, height: int, dtype: torch.dtype) -> torch.Tensor:
    """rows (P, batch, dim, H*W) by pixel and cols (P, batch, dim, W*H) column-major -> (batch, dim, H*W) by pixel in
    dtype: the sum of all 2P parts, in fp32. Each part must be contiguous; the parts may be spaced any way (slots[0::2]
    of a stacked tensor) as long as rows and cols share their strides."""
    parts, batch, dim, length = rows.shape
    if (cols.shape != rows.shape or cols.stride() != rows.stride() or not rows[0].is_contiguous()
            or length % height):
        raise ValueError(f"merge_layouts: expected two (P, batch, dim, H*W) tensors of one shape and strides, each "
                         f"part contiguous, with H = {height} dividing H*W; got {tuple(rows.shape)} strides "
                         f"{rows.stride()} and {tuple(cols.shape)} strides {cols.stride()}")
    out = torch.empty(batch, dim, length, dtype=dtype, device=rows.device)
    if out.numel():
        _launch(out, rows, cols, height, length // height, rows.stride(0), parts, parts, False)
    return out
