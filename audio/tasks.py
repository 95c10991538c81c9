"""Lightning tasks for speech: CTC recognition (WER/CER) and keyword spotting (accuracy) on a ConMamba encoder.

Both take raw waveform batches; the log-mel front end (and SpecAugment while training) runs inside the
module, on the training device, so a checkpoint holds everything from audio to tokens (including the
global normalisation statistics when used). AdamW (no decay on biases, norms, A_log, D), linear warm-up
then cosine decay, stepped every optimizer step.
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import timm
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.text import CharErrorRate, WordErrorRate

import mambasuite.audio.models  # noqa: F401  (registers the ConMamba models with timm)
from mambasuite.core.tasks import split_by_decay_tag, tag_no_weight_decay, warmup_cosine

from .decoding import CTCBeamSearch, greedy_ctc
from .features import FeatureFrontend, SpecAugment

__all__ = ["KeywordSpotter", "SpeechRecognizer"]


def _create_model(model_name: str, num_classes: int, n_mels: int, **kwargs) -> torch.nn.Module:
    try:
        return timm.create_model(model_name, num_classes=num_classes, n_mels=n_mels, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(f"model_name={model_name!r} is not a registered model ({err})") from err
        raise


class _AudioTask(pl.LightningModule):
    """Front end, encoder and optimiser shared by the speech tasks (subclasses set the head and the losses)."""

    def _build(self, model_name: str, num_classes: int, model_kwargs: dict | None, features: dict | None,
               spec_augment: dict | None, **head_kwargs) -> None:
        for name, value in (("lr", self.hparams.lr),):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        self.frontend = FeatureFrontend(**(features or {}))
        self.spec_augment = SpecAugment(**spec_augment) if spec_augment is not None else None
        self.model = _create_model(model_name, num_classes, self.frontend.n_mels, **dict(model_kwargs or {}),
                                   **head_kwargs)
        tag_no_weight_decay(self.model)

    def encode(self, audio: torch.Tensor, audio_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, num_samples) waveforms -> model output and encoder lengths (see `ConMamba.forward`)."""
        feats, frames = self.frontend(audio, audio_lengths)
        if self.spec_augment is not None and self.training:
            feats = self.spec_augment(feats, frames)
        return self.model(feats, frames)

    def _param_groups(self) -> list[dict]:
        # by the tags set at construction, not by shape: FSDP flattens parameters before this runs
        return split_by_decay_tag([{"params": list(self.parameters())}], self.hparams.weight_decay)

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(self._param_groups(), lr=hp.lr, betas=tuple(hp.betas))
        total = None
        if self._trainer is not None:
            estimate = self.trainer.estimated_stepping_batches
            total = int(estimate) if math.isfinite(estimate) else None
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, hp.warmup_steps, total, hp.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class SpeechRecognizer(_AudioTask):
    """CTC speech recognition: waveform -> features -> ConMamba -> per-frame token log-probabilities.

    Batches are `collate_audio_text` dicts (audio, audio_lengths, targets, target_lengths, texts, ids).
    Logged: `train/loss`, `val/loss`, `val/wer`, `val/cer` (greedy decoding), the same for `test/` (decoded
    with `decoder`). `predict_step` returns [{"id", "hyp"}] per batch. The tokenizer comes from the data
    module (`setup`) or `set_tokenizer`.

    Args:
        model_name: a registered ConMamba ("conmamba_ctc_tiny" | "conmamba_ctc_small" | "conmamba_ctc_large").
        vocab_size: CTC outputs (tokens + blank); must equal the data module's `vocab_size`.
        model_kwargs: more model arguments (depth, d_model, bimamba_variant, drop_path_rate, ...).
        features: `FeatureFrontend` arguments (n_mels, kind, normalize, ...).
        spec_augment: `SpecAugment` arguments, or None for no masking.
        decoder: "greedy" or "beam" for the test metrics (validation always decodes greedily).
        beam: `CTCBeamSearch` arguments (beam_size, lexicon, lm, lm_weight, word_score, sil_score);
            lexicon "train" uses the data module's training words.
        lr, weight_decay, betas, warmup_steps, min_lr_ratio: AdamW and the warm-up + cosine schedule.
    """

    def __init__(self, model_name: str = "conmamba_ctc_tiny", vocab_size: int = 29,
                 model_kwargs: dict[str, Any] | None = None, features: dict[str, Any] | None = None,
                 spec_augment: dict[str, Any] | None = None, decoder: str = "greedy",
                 beam: dict[str, Any] | None = None, lr: float = 1e-3, weight_decay: float = 1e-2,
                 betas: tuple[float, float] = (0.9, 0.98), warmup_steps: int = 500, min_lr_ratio: float = 0.05) -> None:
        super().__init__()
        if decoder not in ("greedy", "beam"):
            raise ValueError(f"decoder must be 'greedy' or 'beam', got {decoder!r}")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
            raise ValueError(f"vocab_size must be an int >= 2 (tokens + blank), got {vocab_size!r}")
        self.save_hyperparameters()
        self._build(model_name, vocab_size, model_kwargs, features, spec_augment)
        if getattr(self.model, "global_pool", "") != "":
            raise ValueError("SpeechRecognizer needs per-frame outputs: model global_pool must be ''")
        self.tokenizer = None
        self._beam: CTCBeamSearch | None = None
        self._lexicon = None
        self.metrics = torch.nn.ModuleDict({f"{s}_{m}": (WordErrorRate() if m == "wer" else CharErrorRate())
                                            for s in ("val", "test") for m in ("wer", "cer")})

    def set_tokenizer(self, tokenizer, lexicon: str | None = None) -> None:
        """Use `tokenizer` (and a lexicon path for beam search's lexicon="train") for decoding."""
        if tokenizer.vocab_size != self.hparams.vocab_size:
            raise ValueError(f"model vocab_size={self.hparams.vocab_size} does not match the tokenizer's "
                             f"vocab_size={tokenizer.vocab_size}; set model.init_args.vocab_size="
                             f"{tokenizer.vocab_size}")
        self.tokenizer, self._lexicon, self._beam = tokenizer, lexicon, None

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and getattr(dm, "tokenizer", None) is None and hasattr(dm, "setup"):
            dm.setup(stage)
        if dm is not None and getattr(dm, "tokenizer", None) is not None:
            lexicon = None
            if (self.hparams.beam or {}).get("lexicon") == "train" and hasattr(dm, "lexicon_path"):
                lexicon = str(dm.lexicon_path())
            self.set_tokenizer(dm.tokenizer, lexicon)

    def forward(self, audio: torch.Tensor, audio_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, num_samples), (batch,) -> log-probabilities (batch, T', vocab_size) float32, lengths (batch,)."""
        logits, lengths = self.encode(audio, audio_lengths)
        return F.log_softmax(logits.float(), dim=-1), lengths

    def ctc_loss(self, log_probs: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor,
                 target_lengths: torch.Tensor) -> torch.Tensor:
        """Mean CTC loss (per target token, then over the batch); infeasible alignments count 0."""
        return F.ctc_loss(log_probs.transpose(0, 1), targets, lengths, target_lengths, blank=0, reduction="mean",
                          zero_infinity=True)

    def beam_search(self) -> CTCBeamSearch:
        """The beam-search decoder built from `beam` (lazily, once per tokenizer)."""
        if self.tokenizer is None:
            raise ValueError("no tokenizer: fit with an ASRDataModule or call set_tokenizer() first")
        if self._beam is None:
            args = dict(self.hparams.beam or {})
            if args.get("lexicon") == "train":
                if self._lexicon is None:
                    raise ValueError("beam lexicon='train' needs the data module's training words (or pass a path)")
                args["lexicon"] = self._lexicon
            self._beam = CTCBeamSearch(self.tokenizer, **args)
        return self._beam

    def transcribe(self, log_probs: torch.Tensor, lengths: torch.Tensor, decoder: str = "greedy") -> list[str]:
        """Decode (batch, T', vocab) log-probabilities into transcripts ("greedy" | "beam")."""
        if self.tokenizer is None:
            raise ValueError("no tokenizer: fit with an ASRDataModule or call set_tokenizer() first")
        if decoder == "beam":
            return self.beam_search()(log_probs, lengths)
        if decoder != "greedy":
            raise ValueError(f"decoder must be 'greedy' or 'beam', got {decoder!r}")
        return [self.tokenizer.decode(ids) for ids in greedy_ctc(log_probs, lengths)]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        log_probs, lengths = self(batch["audio"], batch["audio_lengths"])
        loss = self.ctc_loss(log_probs, lengths, batch["targets"], batch["target_lengths"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["ids"]))
        return loss

    def _eval_step(self, batch: dict, stage: str, decoder: str) -> None:
        log_probs, lengths = self(batch["audio"], batch["audio_lengths"])
        n = len(batch["ids"])
        loss = self.ctc_loss(log_probs, lengths, batch["targets"], batch["target_lengths"])
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=n)
        hyps = self.transcribe(log_probs, lengths, decoder)
        for name in ("wer", "cer"):
            metric = self.metrics[f"{stage}_{name}"]
            metric.update(hyps, batch["texts"])
            self.log(f"{stage}/{name}", metric, on_epoch=True, prog_bar=True, batch_size=n)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val", "greedy")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.hparams.decoder)

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        log_probs, lengths = self(batch["audio"], batch["audio_lengths"])
        hyps = self.transcribe(log_probs, lengths, self.hparams.decoder)
        return [{"id": i, "hyp": h} for i, h in zip(batch["ids"], hyps)]


class KeywordSpotter(_AudioTask):
    """Keyword spotting: waveform -> features -> ConMamba -> masked mean pooling -> class logits.

    Batches are (audio (B, num_samples), labels (B,)). Logged: `train/loss`, `train/acc`, `val/loss`,
    `val/acc`, `test/acc`. Args as `SpeechRecognizer` (model, features, spec_augment, optimiser), with
    `num_classes` instead of the vocabulary and `label_smoothing` for the cross-entropy.
    """

    def __init__(self, model_name: str = "conmamba_ctc_tiny", num_classes: int = 20,
                 model_kwargs: dict[str, Any] | None = None, features: dict[str, Any] | None = None,
                 spec_augment: dict[str, Any] | None = None, label_smoothing: float = 0.0, lr: float = 1e-3,
                 weight_decay: float = 1e-2, betas: tuple[float, float] = (0.9, 0.98), warmup_steps: int = 100,
                 min_lr_ratio: float = 0.05) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.save_hyperparameters()
        self._build(model_name, num_classes, model_kwargs, features, spec_augment, global_pool="avg")
        self.metrics = torch.nn.ModuleDict({f"{s}_acc": MulticlassAccuracy(num_classes, average="micro")
                                            for s in ("train", "val", "test")})

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        n = getattr(dm, "num_classes", None) if dm is not None else None
        if n is not None and n != self.hparams.num_classes:
            raise ValueError(f"model num_classes={self.hparams.num_classes} does not match the data's "
                             f"num_classes={n}; set model.init_args.num_classes={n}")

    def forward(self, audio: torch.Tensor, audio_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, num_samples) [, (batch,)] -> logits (batch, num_classes)."""
        if audio_lengths is None:
            audio_lengths = torch.full((audio.shape[0],), audio.shape[-1], dtype=torch.long, device=audio.device)
        return self.encode(audio, audio_lengths)[0]

    def _step(self, batch, stage: str) -> torch.Tensor:
        audio, labels = batch
        logits = self(audio)
        loss = F.cross_entropy(logits.float(), labels,
                               label_smoothing=self.hparams.label_smoothing if stage == "train" else 0.0)
        metric = self.metrics[f"{stage}_acc"]
        metric(logits.detach(), labels)
        train = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=train, on_epoch=True, prog_bar=train, sync_dist=not train,
                 batch_size=len(labels))
        self.log(f"{stage}/acc", metric, on_step=train, on_epoch=True, prog_bar=not train, batch_size=len(labels))
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        """Predicted class ids (B,)."""
        audio = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(audio).argmax(dim=-1)
