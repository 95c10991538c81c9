"""Per-case segmentation metrics (MONAI): Dice, HD95 and normalised surface Dice per foreground class.

One function serves the Lightning task (validation / test logging) and the evaluator (per-case CSV),
so both report the same numbers. Empty masks follow MONAI: Dice is NaN when the ground truth of a
class is empty (`ignore_empty`), HD95 and surface Dice are NaN when either mask of a class is empty.
Means over cases ignore NaNs.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

__all__ = ["METRICS", "case_metrics", "spacing_from_affine"]

METRICS = ("dice", "hd95", "nsd")


def spacing_from_affine(affine: torch.Tensor, spatial_dims: int) -> list[list[float]]:
    """Voxel sizes per case: the norms of the first `spatial_dims` columns of (B, R+1, R+1) or (R+1, R+1)
    affines (MONAI keeps 4x4 affines for 2D images too, so R can exceed spatial_dims)."""
    affine = torch.as_tensor(affine, dtype=torch.float64)
    if affine.dim() == 2:
        affine = affine[None]
    if affine.dim() != 3 or affine.shape[-1] != affine.shape[-2] or affine.shape[-1] <= spatial_dims:
        raise ValueError(f"affine must be (batch, R+1, R+1) or (R+1, R+1) with R >= {spatial_dims}, "
                         f"got {tuple(affine.shape)}")
    rank = affine.shape[-1] - 1
    return affine[:, :rank, :spatial_dims].norm(dim=1).tolist()


def case_metrics(pred: torch.Tensor, label: torch.Tensor, num_classes: int,
                 spacing: Sequence[Sequence[float]] | None = None,
                 nsd_tolerance: float | Sequence[float] = 2.0, hd95: bool = True) -> dict[str, torch.Tensor]:
    """Metrics of class-index masks per case and foreground class.

    Args:
        pred, label: (B, 1, *S) integer-valued class maps (any dtype) of the same shape.
        num_classes: classes including background (0).
        spacing: voxel size per case (mm), B lists of len(S); None = 1 per axis (voxel units).
        nsd_tolerance: surface-Dice tolerance in mm, one value or one per foreground class.
        hd95: False skips HD95 and surface Dice (both need distance transforms; Dice is cheap).
    Returns:
        {"dice": (B, K-1), "hd95": (B, K-1), "nsd": (B, K-1)} float32 on the CPU ("dice" only if not hd95).
    """
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice
    from monai.networks.utils import one_hot

    if pred.shape != label.shape or pred.dim() < 4 or pred.shape[1] != 1:
        raise ValueError(f"pred and label must both be (batch, 1, *spatial), got {tuple(pred.shape)} and "
                         f"{tuple(label.shape)}")
    n_fg = num_classes - 1
    tolerances = [float(nsd_tolerance)] * n_fg if isinstance(nsd_tolerance, (int, float)) else list(nsd_tolerance)
    if len(tolerances) != n_fg:
        raise ValueError(f"nsd_tolerance needs one value per foreground class ({n_fg}), got {nsd_tolerance!r}")
    pred_oh = one_hot(pred.detach().cpu().long(), num_classes)
    label_oh = one_hot(label.detach().cpu().long(), num_classes)
    out = {"dice": compute_dice(pred_oh, label_oh, include_background=False, ignore_empty=True).float()}
    if hd95:
        with warnings.catch_warnings():
            # Empty masks give NaN by design (documented above); MONAI warns once per class and case.
            warnings.filterwarnings("ignore", message=".*is all 0, this may result in nan/inf distance")
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
            out["hd95"] = compute_hausdorff_distance(pred_oh, label_oh, include_background=False, percentile=95,
                                                     spacing=spacing).float()
            out["nsd"] = compute_surface_dice(pred_oh, label_oh, class_thresholds=tolerances,
                                              include_background=False, spacing=spacing).float()
    return out
