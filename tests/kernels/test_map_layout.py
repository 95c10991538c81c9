"""The 2D cross-scan's layout kernels (Triton; the interpreter on CPU) against torch's transposes and sums."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from mambasuite.kernels.triton.map_layout import BLOCK, column_major, merge_layouts  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _by_pixel(t: torch.Tensor, height: int) -> torch.Tensor:
    """A column-major (..., W*H) tensor re-indexed by pixel (..., H*W), with torch."""
    return t.unflatten(-1, (t.shape[-1] // height, height)).transpose(-1, -2).flatten(-2)


# 5x7: one masked tile; 33x40: tiles past both edges (BLOCK = 32); 1x1; 28x28 one full-ish tile per plane
@pytest.mark.parametrize("height,width", [(5, 7), (33, 40), (1, 1), (28, 28)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_column_major_is_the_transposed_copy(height, width, dtype):
    assert BLOCK == 32
    g = torch.Generator().manual_seed(height * width)
    t = torch.randn(2, 3, height * width, generator=g).to(dtype).to(DEVICE)
    got = column_major(t, height)
    expected = t.unflatten(-1, (height, width)).transpose(-1, -2).flatten(-2)
    assert got.is_contiguous() and got.dtype == dtype and torch.equal(got, expected)


@pytest.mark.parametrize("height,width,parts", [(5, 7, 1), (33, 40, 2), (28, 28, 2)])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_merge_layouts_sums_both_layouts_by_pixel(height, width, parts, out_dtype):
    g = torch.Generator().manual_seed(parts + height)
    slots = torch.randn(2 * parts, 2, 3, height * width, generator=g, dtype=torch.float64).float().to(DEVICE)
    rows, cols = slots[0::2], slots[1::2]  # route k in slot k: rows in the even slots, strided parts
    got = merge_layouts(rows, cols, height, out_dtype)
    expected = rows.double().sum(0) + _by_pixel(cols.double(), height).sum(0)
    assert got.dtype == out_dtype and got.shape == (2, 3, height * width)
    tol = 1e-6 if out_dtype == torch.float32 else 8e-3  # one rounding of an fp32 sum
    assert (got.double() - expected).abs().max() <= tol * expected.abs().max()


def test_layout_kernels_refuse_bad_shapes_by_name():
    t = torch.randn(2, 3, 12)
    with pytest.raises(ValueError, match=r"column_major: expected a contiguous \(\.\.\., H\*W\) tensor with H = 5"):
        column_major(t, 5)
    with pytest.raises(ValueError, match="column_major: .*contiguous: False"):
        column_major(t.transpose(0, 1), 3)
    parts = torch.randn(2, 2, 3, 12)
    with pytest.raises(ValueError, match="merge_layouts: expected two"):
        merge_layouts(parts, parts[:, :1], 3, torch.float32)
    with pytest.raises(ValueError, match="merge_layouts: expected two"):
        merge_layouts(parts, parts.transpose(2, 3).contiguous().transpose(2, 3), 3, torch.float32)
