"""Lightning tasks built on the core Mamba backbone."""

from __future__ import annotations

import math
from typing import Literal

import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from mambasuite.core.blocks import MambaBackbone
from mambasuite.core.data import IGNORE_INDEX


def _check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a number {bound}, got {value!r}")


def warmup_cosine(step: int, warmup_steps: int, total_steps: int | None, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup to 1, then cosine decay to ``min_lr_ratio`` at ``total_steps``.

    With ``total_steps=None`` (no known horizon) the multiplier stays at 1 after warmup.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps is None or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def tag_no_weight_decay(module: torch.nn.Module, names=()) -> torch.nn.Module:
    """Mark the parameters that must not be weight-decayed with `_no_weight_decay = True`: every 1-D parameter
    (biases, norm weights, A_log/D vectors), every `*.bias`, and the exact names in `names`.

    Call it in a task's `__init__`, before any strategy wraps the model: FSDP flattens parameters to 1-D views, so a
    shape test made later (in `configure_optimizers`) would put every weight in the no-decay group. The tags stay on
    the Parameter objects, which the wrapping keeps.
    """
    names = set(names)
    for name, p in module.named_parameters():
        if p.ndim <= 1 or name.endswith(".bias") or name in names:
            p._no_weight_decay = True
    return module


def split_by_decay_tag(groups: list[dict], weight_decay: float) -> list[dict]:
    """Re-split optimizer parameter groups by the `_no_weight_decay` tags (see `tag_no_weight_decay`): tagged
    parameters get weight_decay 0, the others `weight_decay`; other group keys (lr_scale, ...) are kept."""
    out = []
    for group in groups:
        params = [p for p in group["params"] if p.requires_grad]
        for tagged, wd in ((False, weight_decay), (True, 0.0)):
            chosen = [p for p in params if bool(getattr(p, "_no_weight_decay", False)) == tagged]
            if chosen:
                out.append({**group, "params": chosen, "weight_decay": wd})
    return out


class SequenceModelTask(pl.LightningModule):
    """Token sequence → token predictions: embedding → :class:`MambaBackbone` → linear head.

    Batches are ``(tokens, targets)``, both ``(batch, L)`` int64. Loss (cross-entropy) and token accuracy only
    count positions whose target is not ``ignore_index``, so one task serves copying, LM-style and
    per-position classification data. ``predict_step`` returns the argmax ids ``(batch, L)`` at every position.

    Args:
        input_vocab_size: input vocabulary (embedding rows), e.g. ``datamodule.num_input_tokens``. (Named so
            it cannot clash with a datamodule's ``vocab_size`` hparam when Lightning merges both.)
        num_classes: output classes of the head; defaults to ``input_vocab_size``.
        d_model: model width.
        n_layer: number of Mamba blocks.
        d_state: SSM state size ``N``.
        d_conv: depthwise causal conv width.
        expand: inner width factor (``d_inner = expand * d_model``).
        mixer: sequence mixer of every block.
        selective: ``False`` gives the LTI ablation (Δ, B, C independent of the input).
        drop_path_rate: stochastic depth, linearly increasing over the blocks.
        backend: scan backend (``"auto"`` picks the PyTorch reference on CPU).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW decay; never applied to biases, norms or ``_no_weight_decay`` parameters (A_log, D).
        betas: AdamW betas.
        warmup_steps: linear warmup steps.
        max_lr_steps: cosine horizon in optimizer steps; ``None`` uses the trainer's estimate (``max_steps``).
        min_lr_ratio: final LR as a fraction of ``lr``.
        ignore_index: target value that marks positions without a label.
    """

    def __init__(
        self,
        input_vocab_size: int,
        num_classes: int | None = None,
        d_model: int = 64,
        n_layer: int = 2,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        mixer: Literal["mamba", "bimamba", "bimamba_external"] = "mamba",
        selective: bool = True,
        drop_path_rate: float = 0.0,
        backend: Literal["auto", "triton", "reference", "mamba_ssm"] = "auto",
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 100,
        max_lr_steps: int | None = None,
        min_lr_ratio: float = 0.1,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        num_classes = input_vocab_size if num_classes is None else num_classes
        for name, value in (("input_vocab_size", input_vocab_size), ("num_classes", num_classes), ("d_model", d_model),
                            ("n_layer", n_layer), ("lr", lr)):
            _check_positive(name, value)
        for name, value in (("weight_decay", weight_decay), ("warmup_steps", warmup_steps),
                            ("min_lr_ratio", min_lr_ratio), ("drop_path_rate", drop_path_rate)):
            _check_positive(name, value, allow_zero=True)
        self.save_hyperparameters()

        self.embedding = nn.Embedding(input_vocab_size, d_model)
        self.backbone = MambaBackbone(
            d_model=d_model, n_layer=n_layer, d_state=d_state, d_conv=d_conv, expand=expand, mixer=mixer,
            selective=selective, drop_path_rate=drop_path_rate, backend=backend,
        )
        self.head = nn.Linear(d_model, num_classes)
        # One metric object per stage: torchmetrics keeps separate state and syncs it across ranks itself.
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens (batch, L) int64`` → hidden states ``(batch, L, d_model)`` (final norm applied)."""
        return self.backbone(self.embedding(tokens))

    def setup(self, stage: str) -> None:
        """Fail early with a clear message when the data's vocabulary does not fit the model."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        hp = self.hparams
        if dm is not None and getattr(dm, "num_input_tokens", hp.input_vocab_size) > hp.input_vocab_size:
            raise ValueError(
                f"model input_vocab_size={hp.input_vocab_size} is smaller than the data's input vocabulary "
                f"({dm.num_input_tokens}); set model.init_args.input_vocab_size >= {dm.num_input_tokens}"
            )
        if dm is not None and getattr(dm, "num_classes", hp.num_classes) != hp.num_classes:
            raise ValueError(
                f"model num_classes={hp.num_classes} does not match the data's num_classes={dm.num_classes}"
            )

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        tokens, targets = batch
        hidden = self(tokens)
        mask = targets != self.hparams.ignore_index
        # The head only runs where there is a label: (n_labelled, num_classes).
        logits = self.head(hidden[mask])
        labels = targets[mask]
        loss = F.cross_entropy(logits, labels)
        metric = getattr(self, f"{stage}_acc")
        metric(logits.detach(), labels)
        on_step = stage == "train"
        batch_size = tokens.shape[0]
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, sync_dist=True, prog_bar=on_step,
                 batch_size=batch_size)
        self.log(f"{stage}/acc", metric, on_step=on_step, on_epoch=True, sync_dist=True, prog_bar=not on_step,
                 batch_size=batch_size)
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: torch.Tensor | tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        """Predicted ids ``(batch, L)`` int64 at every position (answers sit where targets are labelled)."""
        tokens = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.head(self(tokens)).argmax(dim=-1)

    def _param_groups(self) -> list[dict]:
        decay, no_decay = [], []
        for param in self.parameters():
            if not param.requires_grad:
                continue
            # Biases and norm gains (ndim < 2) and SSM parameters flagged by the mixer (A_log, D) are not decayed.
            if getattr(param, "_no_weight_decay", False) or param.ndim < 2:
                no_decay.append(param)
            else:
                decay.append(param)
        return [
            {"params": decay, "weight_decay": self.hparams.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def configure_optimizers(self):
        """AdamW with linear warmup and cosine decay, stepped every optimizer step."""
        hp = self.hparams
        optimizer = torch.optim.AdamW(self._param_groups(), lr=hp.lr, betas=tuple(hp.betas))
        total = hp.max_lr_steps
        if total is None and self._trainer is not None:
            estimate = self.trainer.estimated_stepping_batches
            total = int(estimate) if math.isfinite(estimate) else None
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, hp.warmup_steps, total, hp.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
