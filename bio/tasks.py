"""Lightning tasks for DNA: masked-LM pretraining and sequence classification with Caduceus models.

Both use AdamW (no decay on biases, norms, A_log, D) with linear warmup + cosine decay, and log
`train/loss`, `val/loss`, `val/acc`, `test/acc`.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from ..core.tasks import warmup_cosine
from .models.caduceus import Caduceus, CaduceusForMaskedLM, CaduceusForSequenceClassification
from .tokenizer import MASK_ID, N_ID, NUCLEOTIDE_IDS, VOCAB_SIZE

__all__ = ["mask_tokens", "DNAMaskedLM", "DNASequenceClassifier"]

IGNORE = -100


def mask_tokens(ids: torch.Tensor, mlm_probability: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of nucleotide positions (A C G T N; never specials or [PAD]).

    Each eligible position is selected with `mlm_probability`; selected ones become [MASK] (80%), a random
    base A/C/G/T (10%; Caduceus draws from the whole vocabulary, specials included -- we keep it to bases)
    or stay (10%). ids (batch, L) int64 -> (masked ids (batch, L), targets (batch, L) with -100 where not
    selected).
    """
    eligible = (ids >= NUCLEOTIDE_IDS[0]) & (ids <= N_ID)
    u = torch.rand(ids.shape, generator=generator, device=ids.device)
    selected = eligible & (u < mlm_probability)
    targets = ids.masked_fill(~selected, IGNORE)
    r = torch.rand(ids.shape, generator=generator, device=ids.device)
    out = ids.masked_fill(selected & (r < 0.8), MASK_ID)
    random_base = torch.randint(NUCLEOTIDE_IDS[0], NUCLEOTIDE_IDS[-1] + 1, ids.shape, generator=generator,
                                device=ids.device)
    swap = selected & (r >= 0.8) & (r < 0.9)
    out = torch.where(swap, random_base, out)
    return out, targets


class _DNATask(pl.LightningModule):
    """Optimiser and schedule shared by the DNA tasks."""

    def _param_groups(self) -> list[dict]:
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (no_decay if getattr(p, "_no_weight_decay", False) or p.ndim < 2 else decay).append(p)
        return [{"params": decay, "weight_decay": self.hparams.weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.AdamW(self._param_groups(), lr=hp.lr, betas=tuple(hp.betas))
        total = None
        if self._trainer is not None:
            est = self.trainer.estimated_stepping_batches
            total = int(est) if math.isfinite(est) else None
        warmup = hp.warmup_steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, total, hp.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class DNAMaskedLM(_DNATask):
    """Masked-LM pretraining of a Caduceus (Ph or PS) model on batches (input_ids (batch, L), _).

    Loss: cross-entropy on the masked positions only (`mask_tokens`); `val/acc` is masked-token accuracy.
    `export_dir`: after fit, the backbone (`Caduceus`) is saved there with `save_pretrained`, for
    `DNASequenceClassifier(pretrained=...)`.
    """

    def __init__(self, d_model: int = 64, n_layer: int = 2, rcps: bool = False, d_state: int = 16,
                 expand: int = 2, mlm_probability: float = 0.15, lr: float = 8e-3, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 50, min_lr_ratio: float = 0.1,
                 export_dir: str | None = None, backend: str = "auto") -> None:
        super().__init__()
        if not 0 < mlm_probability < 1:
            raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
        self.save_hyperparameters()
        self.model = CaduceusForMaskedLM(d_model=d_model, n_layer=n_layer, rcps=rcps, d_state=d_state,
                                         expand=expand, backend=backend)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch, L) int64 -> logits (batch, L, 16)."""
        return self.model(input_ids)

    def _step(self, batch, stage: str) -> torch.Tensor:
        ids = batch[0]
        gen = None
        if stage != "train":  # same masks every validation pass, so val/loss curves are comparable
            gen = torch.Generator(device=ids.device).manual_seed(1234 + int(ids.sum()))
        masked, targets = mask_tokens(ids, self.hparams.mlm_probability, gen)
        logits = self(masked)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), targets.reshape(-1), ignore_index=IGNORE)
        sel = targets != IGNORE
        acc = (logits.argmax(-1)[sel] == targets[sel]).float().mean()
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=ids.shape[0])
        self.log(f"{stage}/acc", acc, on_step=on_step, on_epoch=True, batch_size=ids.shape[0])
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def on_fit_end(self) -> None:
        if self.hparams.export_dir and self.trainer.is_global_zero:
            self.model.caduceus.save_pretrained(Path(self.hparams.export_dir))


class DNASequenceClassifier(_DNATask):
    """Sequence classification with `CaduceusForSequenceClassification` on (input_ids (batch, L), labels (batch,)).

    Pooling over non-[PAD] tokens: "mean" (default, as Caduceus) or "max" (better for detecting a short
    motif anywhere in the window, used by configs/bio/dna_synthetic_cls.yaml). RC-invariant with
    rcps=True; `conjoin` averages the logits of x and rc(x) (Caduceus-Ph's post-hoc conjoining).
    `pretrained`: a directory written by `Caduceus.save_pretrained` (e.g. DNAMaskedLM's export_dir); its
    architecture arguments replace d_model / n_layer / rcps / d_state / expand.
    """

    def __init__(self, num_classes: int = 2, d_model: int = 64, n_layer: int = 2, rcps: bool = False,
                 d_state: int = 16, expand: int = 2, pooling: str = "mean", conjoin: bool = False,
                 pretrained: str | None = None, lr: float = 8e-3, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 50, min_lr_ratio: float = 0.1,
                 backend: str = "auto") -> None:
        super().__init__()
        self.save_hyperparameters()
        arch = dict(d_model=d_model, n_layer=n_layer, rcps=rcps, d_state=d_state, expand=expand)
        source = None
        if pretrained is not None:
            source = Caduceus.from_pretrained(pretrained, backend=backend)
            arch = {k: source.config[k] for k in ("d_model", "n_layer", "rcps", "d_state", "expand")}
        self.model = CaduceusForSequenceClassification(num_labels=num_classes, pooling=pooling, conjoin=conjoin,
                                                       backend=backend, **arch)
        if source is not None:
            self.model.backbone_state_from(source)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch, L) int64 -> logits (batch, num_classes)."""
        return self.model(input_ids)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        n = getattr(dm, "num_classes", self.hparams.num_classes)
        if n != self.hparams.num_classes:
            raise ValueError(f"model num_classes={self.hparams.num_classes} does not match the data's num_classes={n}")

    def _step(self, batch, stage: str) -> torch.Tensor:
        ids, labels = batch
        logits = self(ids)
        loss = F.cross_entropy(logits, labels)
        acc = (logits.argmax(-1) == labels).float().mean()
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=on_step, batch_size=ids.shape[0])
        self.log(f"{stage}/acc", acc, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=ids.shape[0])
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def predict_step(self, batch, batch_idx):
        """Class probabilities (batch, num_classes)."""
        ids = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(ids).softmax(-1)
