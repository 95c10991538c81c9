"""Lightning image classification on any timm model (including the mamba-suite Vim / VMamba)."""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import timm
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

import mambasuite.vision  # noqa: F401  (registers the vision models with timm)
from mambasuite.core.tasks import split_by_decay_tag, tag_no_weight_decay, warmup_cosine

__all__ = ["ImageClassifier"]


class ImageClassifier(pl.LightningModule):
    """Image classifier: `timm.create_model(model_name, ...)` trained with cross-entropy.

    Batches are (images (B, C, H, W) float, labels (B,) int64); forward returns logits (B, num_classes).
    Logged: `train/loss`, `train/acc`, `val/loss`, `val/acc`, `val/acc_top5` (and `val/acc_ema`
    with EMA), the same for `test/`.

    Args:
        model_name: any timm model name (e.g. "test_vim", "vim_tiny_patch16_224", "vmamba_tiny", "resnet18").
        num_classes: classes of the head.
        model_kwargs: more `timm.create_model` arguments (img_size, embed_dim, depth, drop_path_rate, ...).
        pretrained_file: local weights to start from (official Vim/VMamba `.pth`, converted `.safetensors`
            or a plain state dict), loaded through timm's `pretrained_cfg_overlay=dict(file=...)`. A head
            whose shape differs from the file's is left freshly initialised.
        reset_head: re-initialise the classifier after loading `pretrained_file` even if shapes match.
        lr: peak AdamW learning rate. weight_decay: AdamW decay; never on biases, norms or the model's
            `no_weight_decay()` names (A_log, D, pos_embed, cls_token, ...). betas: AdamW betas.
        warmup_epochs: linear warmup length in epochs (converted with the trainer's steps per epoch);
            warmup_steps: in optimizer steps (added to it).
        min_lr_ratio: final lr of the cosine decay as a fraction of lr (horizon = the trainer's steps).
        layer_decay: layer-wise lr decay factor for fine-tuning (timm's `param_groups_layer_decay`,
            using the model's `group_matcher`); None = off.
        label_smoothing: cross-entropy label smoothing.
        mixup_alpha, cutmix_alpha, mixup_prob, mixup_switch_prob: timm Mixup/CutMix (off when both alphas are 0).
        ema_decay: decay of a timm `ModelEmaV3` copy updated every step and validated as `val/acc_ema`; None = off.
        grad_checkpointing: `model.set_grad_checkpointing(True)`.
    """

    def __init__(self, model_name: str = "test_vim", num_classes: int = 10, model_kwargs: dict[str, Any] | None = None,
                 pretrained_file: str | None = None, reset_head: bool = False, lr: float = 1e-3,
                 weight_decay: float = 0.05, betas: tuple[float, float] = (0.9, 0.999), warmup_epochs: float = 0.0,
                 warmup_steps: int = 0, min_lr_ratio: float = 0.01, layer_decay: float | None = None,
                 label_smoothing: float = 0.1, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 mixup_prob: float = 1.0, mixup_switch_prob: float = 0.5, ema_decay: float | None = None,
                 grad_checkpointing: bool = False) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1] or None, got {layer_decay!r}")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) or None, got {ema_decay!r}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        self.save_hyperparameters()
        kwargs = dict(model_kwargs or {})
        if pretrained_file is not None:
            kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(pretrained_file)))
        try:
            self.model = timm.create_model(model_name, num_classes=num_classes, **kwargs)
        except RuntimeError as err:
            if "Unknown model" in str(err):
                raise ValueError(f"model_name={model_name!r} is not a timm model ({err})") from err
            raise
        if pretrained_file is not None and reset_head:
            self.model.reset_classifier(num_classes)
        if grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        nwd = self.model.no_weight_decay() if hasattr(self.model, "no_weight_decay") else set()
        tag_no_weight_decay(self.model, nwd)
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            from timm.data import Mixup

            self.mixup = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=mixup_prob,
                               switch_prob=mixup_switch_prob, label_smoothing=label_smoothing, num_classes=num_classes)
        self.ema = None
        if ema_decay is not None:
            from timm.utils import ModelEmaV3

            # The copy is only run in validation, where Lightning puts the whole module in eval mode; keeping
            # it in train mode otherwise avoids Lightning's "modules in eval mode" warning at fit start.
            self.ema = ModelEmaV3(self.model, decay=ema_decay).train()
        top5 = min(5, num_classes)
        self.metrics = torch.nn.ModuleDict({
            "train_acc": MulticlassAccuracy(num_classes, average="micro"),
            "val_acc": MulticlassAccuracy(num_classes, average="micro"),
            "val_acc_top5": MulticlassAccuracy(num_classes, top_k=top5, average="micro"),
            "val_acc_ema": MulticlassAccuracy(num_classes, average="micro"),
            "test_acc": MulticlassAccuracy(num_classes, average="micro"),
            "test_acc_top5": MulticlassAccuracy(num_classes, top_k=top5, average="micro"),
        })

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> logits (B, num_classes)."""
        return self.model(images)

    def setup(self, stage: str) -> None:
        """Fail early when the data's class count does not match the head."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        n = getattr(dm, "num_classes", None) if dm is not None else None
        if n is not None and n != self.hparams.num_classes:
            raise ValueError(f"model num_classes={self.hparams.num_classes} does not match the data's "
                             f"num_classes={n}; set model.init_args.num_classes={n}")

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        if self.mixup is not None:
            images, soft = self.mixup(images, labels)
            logits = self(images)
            loss = torch.sum(-soft * F.log_softmax(logits, dim=-1), dim=-1).mean()
        else:
            logits = self(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)
        acc = self.metrics["train_acc"]
        acc(logits.detach(), labels)  # against the un-mixed labels: a rough progress signal under Mixup
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(labels))
        self.log("train/acc", acc, on_step=True, on_epoch=True, batch_size=len(labels))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)

    def _eval_step(self, batch, stage: str) -> None:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        n = len(labels)
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=n)
        for name in ("acc", "acc_top5"):
            metric = self.metrics[f"{stage}_{name}"]
            metric(logits, labels)
            self.log(f"{stage}/{name}", metric, on_epoch=True, prog_bar=name == "acc", batch_size=n)
        if stage == "val" and self.ema is not None:
            metric = self.metrics["val_acc_ema"]
            metric(self.ema.module(images), labels)
            self.log("val/acc_ema", metric, on_epoch=True, batch_size=n)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        """Predicted class ids (B,) int64."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(images).argmax(dim=-1)

    def param_groups(self) -> list[dict]:
        """AdamW parameter groups: weight decay rules, plus per-layer `lr_scale` with layer_decay."""
        from timm.optim import param_groups_layer_decay, param_groups_weight_decay

        hp = self.hparams
        nwd = self.model.no_weight_decay() if hasattr(self.model, "no_weight_decay") else set()
        if hp.layer_decay is not None:
            groups = param_groups_layer_decay(self.model, weight_decay=hp.weight_decay, no_weight_decay_list=nwd,
                                              layer_decay=hp.layer_decay)
        else:
            groups = param_groups_weight_decay(self.model, weight_decay=hp.weight_decay, no_weight_decay_list=nwd)
        # timm decides decay by shape; re-split by the tags set at construction, which survive FSDP's flattening
        groups = split_by_decay_tag(groups, hp.weight_decay)
        for g in groups:
            g["lr"] = hp.lr * g.get("lr_scale", 1.0)
        return groups

    def configure_optimizers(self):
        """AdamW with linear warmup and cosine decay over the trainer's steps, stepped every step."""
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.param_groups(), lr=hp.lr, betas=tuple(hp.betas))
        total, warmup = None, hp.warmup_steps
        if self._trainer is not None:
            estimate = self.trainer.estimated_stepping_batches
            total = int(estimate) if math.isfinite(estimate) else None
            epochs = self.trainer.max_epochs
            if hp.warmup_epochs and total and epochs and epochs > 0:
                warmup += int(round(hp.warmup_epochs * total / epochs))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, warmup, total, hp.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
