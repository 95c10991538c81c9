"""Lightning module for 2D/3D medical segmentation with MONAI losses, metrics and sliding-window inference."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import pytorch_lightning as pl
import torch
from torch import nn

from mambasuite.core.tasks import split_by_decay_tag, tag_no_weight_decay, warmup_cosine

from .metrics import METRICS, case_metrics, spacing_from_affine

__all__ = ["SegmentationTask", "warmup_poly"]


def warmup_poly(step: int, warmup_steps: int, total_steps: int | None, power: float = 0.9,
                min_lr_ratio: float = 0.0) -> float:
    """LR multiplier: linear warmup to 1, then nnU-Net's poly decay (1 - progress) ** power, floored
    at `min_lr_ratio`. With total_steps=None (no known horizon) it stays at 1 after warmup."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps is None or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return max(min_lr_ratio, (1.0 - progress) ** power)


def _plain(t: torch.Tensor) -> torch.Tensor:
    """A MetaTensor as a plain tensor (MONAI's metadata tracking slows every op down on small volumes)."""
    return t.as_tensor() if hasattr(t, "as_tensor") else t


class SegmentationTask(pl.LightningModule):
    """Semantic segmentation of 2D/3D images with any network (B, C, *S) -> logits (B, K, *S).

    Training: DiceCELoss (softmax, one-hot labels, background included), wrapped in MONAI's
    DeepSupervisionLoss so that a network returning a list of logits (full resolution first) is
    supervised at every scale. Validation / test: `sliding_window_inference` over the whole volume,
    argmax, then per-case Dice, HD95 and surface Dice per foreground class (mm, from the affine).

    Logged: `train/loss`; `{val,test}/loss`, `{val,test}/dice` (mean foreground Dice: per class over
    cases, then over classes), `{val,test}/dice_<class>`, `{val,test}/hd95`, `{val,test}/nsd`.

    Args:
        network: the segmentation network (e.g. `mambasuite.vision.models.umamba.UMamba`, or MONAI's
            SwinUNETR / SegResNet for baselines).
        num_classes: output classes including background; must match the data's dataset.json labels.
        roi_size: sliding-window ROI (usually the training patch size).
        sw_batch_size, sw_overlap, sw_mode: sliding-window batch, overlap and blending ("gaussian" | "constant").
        lambda_dice, lambda_ce: DiceCELoss weights.
        lr, weight_decay, betas: AdamW (no decay on biases, norms and the network's `no_weight_decay()`).
        schedule: "poly" (nnU-Net, power `poly_power`) or "cosine", after `warmup_steps` linear warmup,
            down to `min_lr_ratio` of lr over the trainer's steps.
        nsd_tolerance: surface-Dice tolerance in mm (one value, or one per foreground class).
        val_hd95: compute HD95 / surface Dice in validation too (test always does).
        class_names: names for the logs; default: the datamodule's dataset.json labels.
    """

    def __init__(self, network: nn.Module, num_classes: int, roi_size: Sequence[int], sw_batch_size: int = 4,
                 sw_overlap: float = 0.25, sw_mode: Literal["gaussian", "constant"] = "gaussian",
                 lambda_dice: float = 1.0, lambda_ce: float = 1.0, lr: float = 1e-3, weight_decay: float = 1e-5,
                 betas: tuple[float, float] = (0.9, 0.999), schedule: Literal["poly", "cosine"] = "poly",
                 poly_power: float = 0.9, warmup_steps: int = 0, min_lr_ratio: float = 0.0,
                 nsd_tolerance: float | list[float] = 2.0, val_hd95: bool = True,
                 class_names: list[str] | None = None) -> None:
        super().__init__()
        if not isinstance(network, nn.Module):
            raise TypeError(f"network must be an nn.Module, got {type(network).__name__}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2 (background + foreground), got {num_classes!r}")
        if len(roi_size) not in (2, 3) or any(int(s) < 1 for s in roi_size):
            raise ValueError(f"roi_size must be 2 or 3 positive sizes, got {list(roi_size)}")
        if schedule not in ("poly", "cosine"):
            raise ValueError(f"schedule must be 'poly' or 'cosine', got {schedule!r}")
        if not 0.0 <= sw_overlap < 1.0:
            raise ValueError(f"sw_overlap must be in [0, 1), got {sw_overlap!r}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names needs {num_classes} names (background first), got {class_names!r}")
        self.save_hyperparameters(ignore=["network"])
        from monai.losses import DeepSupervisionLoss, DiceCELoss
        from monai.metrics import Cumulative

        self.network = network
        tag_no_weight_decay(network, network.no_weight_decay() if hasattr(network, "no_weight_decay") else ())
        self.dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=lambda_dice, lambda_ce=lambda_ce)
        self.loss = DeepSupervisionLoss(self.dice_ce)
        self.class_names = list(class_names) if class_names else [f"class{i}" for i in range(num_classes)]
        self._cases = {stage: Cumulative() for stage in ("val", "test")}  # (cases, metric, class) rows, DDP-synced

    def setup(self, stage: str) -> None:
        """Fail early when the data's classes do not match; take the class names from dataset.json."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        n = getattr(dm, "num_classes", None)
        if n is not None and n != self.hparams.num_classes:
            raise ValueError(f"model num_classes={self.hparams.num_classes} does not match the data's "
                             f"num_classes={n} (dataset.json labels); set model.init_args.num_classes={n}")
        names = getattr(dm, "class_names", None)
        if names and not self.hparams.class_names:
            self.class_names = list(names)

    def forward(self, images: torch.Tensor):
        """(B, C, *S) -> logits (B, K, *S) (a list, full resolution first, in training with deep supervision)."""
        return self.network(images)

    def infer(self, images: torch.Tensor) -> torch.Tensor:
        """Sliding-window logits over whole images: (B, C, *S) -> (B, K, *S), any S."""
        from monai.inferers import sliding_window_inference

        hp = self.hparams
        images = _plain(images)
        if images.dim() != len(hp.roi_size) + 2:
            raise ValueError(f"images must be (batch, channels, *spatial) with {len(hp.roi_size)} spatial dims "
                             f"(roi_size {list(hp.roi_size)}), got {tuple(images.shape)}")
        return sliding_window_inference(images, tuple(hp.roi_size), hp.sw_batch_size, self.network,
                                        overlap=hp.sw_overlap, mode=hp.sw_mode)

    def _check_logits(self, logits: torch.Tensor) -> None:
        if logits.shape[1] != self.hparams.num_classes:
            raise ValueError(f"the network outputs {logits.shape[1]} channels but num_classes="
                             f"{self.hparams.num_classes}; set the network's out channels to match")

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images, labels = _plain(batch["image"]), _plain(batch["label"])
        out = self(images)
        self._check_logits(out[0] if isinstance(out, (list, tuple)) else out)
        loss = self.loss(out, labels)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=images.shape[0])
        return loss

    def _eval_step(self, batch: dict, stage: str) -> None:
        images, labels = batch["image"], _plain(batch["label"])
        logits = self.infer(images)
        self._check_logits(logits)
        self.log(f"{stage}/loss", self.dice_ce(logits.float(), labels), on_epoch=True, sync_dist=True,
                 batch_size=images.shape[0])
        spacing = spacing_from_affine(images.affine, images.dim() - 2) if hasattr(images, "affine") else None
        metrics = case_metrics(logits.argmax(1, keepdim=True), labels, self.hparams.num_classes, spacing,
                               self.hparams.nsd_tolerance, hd95=stage == "test" or self.hparams.val_hd95)
        rows = torch.stack([metrics.get(m, torch.full_like(metrics["dice"], math.nan)) for m in METRICS], dim=1)
        self._cases[stage].extend(rows.to(self.device))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _log_epoch(self, stage: str) -> None:
        buffer = self._cases[stage]
        rows = buffer.get_buffer()
        buffer.reset()
        if rows is None or len(rows) == 0:
            return
        per_class = rows.float().nanmean(dim=0)  # (metric, class): mean over cases, NaN cases ignored
        for i, name in enumerate(METRICS):
            value = per_class[i].nanmean()
            if not torch.isnan(value) or name == "dice":
                self.log(f"{stage}/{name}", value, prog_bar=name == "dice")
        for c, name in enumerate(self.class_names[1:]):
            self.log(f"{stage}/dice_{name}", per_class[0, c])

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """Class map (B, 1, *S) uint8 in the preprocessed space (`mamba-suite evaluate` writes input-space NIfTI)."""
        return self.infer(batch["image"]).argmax(1, keepdim=True).to(torch.uint8)

    def configure_optimizers(self):
        """AdamW with warmup + poly or cosine decay over the trainer's steps, stepped every step."""
        from timm.optim import param_groups_weight_decay

        hp = self.hparams
        nwd = self.network.no_weight_decay() if hasattr(self.network, "no_weight_decay") else set()
        groups = param_groups_weight_decay(self.network, weight_decay=hp.weight_decay, no_weight_decay_list=nwd)
        groups = split_by_decay_tag(groups, hp.weight_decay)  # tags survive FSDP's flattening; shapes do not
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas))
        total = None
        if self._trainer is not None:
            estimate = self.trainer.estimated_stepping_batches
            total = int(estimate) if math.isfinite(estimate) else None
        if hp.schedule == "poly":
            def schedule(step):
                return warmup_poly(step, hp.warmup_steps, total, hp.poly_power, hp.min_lr_ratio)
        else:
            def schedule(step):
                return warmup_cosine(step, hp.warmup_steps, total, hp.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
