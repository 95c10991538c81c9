"""Lightning tasks for DNA: masked-LM and causal-LM pretraining, sequence classification (Caduceus models).

All use AdamW (no decay on biases, norms, A_log, D) with linear warmup + cosine decay, and log
`train/loss`, `val/loss`, `val/acc`, `test/acc` (the LMs also `*/ppl`). Embedding export and variant-effect
scoring (predict-only tasks) live in `mambasuite.bio.embeddings` and `mambasuite.bio.variants`.

`kmer` (1 = characters, k > 1 = `KmerTokenizer` ids) sets the model vocabulary; it must match the data
module's `kmer` (checked at setup). `pretrained` (a `Caduceus.save_pretrained` directory: an LM's
`export_dir`, or `mamba-suite convert caduceus` output) replaces the architecture arguments.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from ..core.tasks import split_by_decay_tag, tag_no_weight_decay, warmup_cosine
from .models.caduceus import Caduceus, CaduceusForMaskedLM, CaduceusForSequenceClassification
from .tokenizer import MASK_ID, N_ID, NUCLEOTIDE_IDS, PAD_ID, make_tokenizer

__all__ = ["mask_tokens", "backbone_args", "DNAMaskedLM", "DNACausalLM", "DNASequenceClassifier"]

IGNORE = -100


def mask_tokens(ids: torch.Tensor, mlm_probability: float = 0.15, generator: torch.Generator | None = None,
                sequence_id_range: tuple[int, int] = (NUCLEOTIDE_IDS[0], N_ID),
                random_id_range: tuple[int, int] = (NUCLEOTIDE_IDS[0], NUCLEOTIDE_IDS[-1])
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of sequence tokens (ids in `sequence_id_range`, inclusive: A C G T N by default; never
    specials or [PAD]).

    Each eligible position is selected with `mlm_probability`; selected ones become [MASK] (80%), a random
    id from `random_id_range` (10%; bases A/C/G/T by default -- Caduceus draws from the whole vocabulary,
    specials included) or stay (10%). ids (batch, L) int64 -> (masked ids (batch, L), targets (batch, L)
    with -100 where not selected).
    """
    eligible = (ids >= sequence_id_range[0]) & (ids <= sequence_id_range[1])
    u = torch.rand(ids.shape, generator=generator, device=ids.device)
    selected = eligible & (u < mlm_probability)
    targets = ids.masked_fill(~selected, IGNORE)
    r = torch.rand(ids.shape, generator=generator, device=ids.device)
    out = ids.masked_fill(selected & (r < 0.8), MASK_ID)
    random_token = torch.randint(random_id_range[0], random_id_range[1] + 1, ids.shape, generator=generator,
                                 device=ids.device)
    swap = selected & (r >= 0.8) & (r < 0.9)
    out = torch.where(swap, random_token, out)
    return out, targets


def backbone_args(pretrained: str | None, kmer: int, backend: str, **arch) -> tuple[dict, Caduceus | None]:
    """`Caduceus` constructor kwargs for a task, and the loaded pretrained backbone (or None).

    Without `pretrained`: `arch` plus the vocabulary and complement map of `make_tokenizer(kmer)`. With it:
    the saved backbone's own arguments (all of them: vocabulary, swap_halves, norm_eps, ...), checked
    against `kmer`'s vocabulary size.
    """
    tok = make_tokenizer(kmer)
    if pretrained is None:
        return dict(arch, vocab_size=tok.vocab_size, complement_map=list(tok.complement_map), backend=backend), None
    source = Caduceus.from_pretrained(pretrained, backend=backend)
    args = {k: v for k, v in source.config.items() if k != "grad_checkpointing"}
    args.update(backend=backend, grad_checkpointing=arch.get("grad_checkpointing", False))
    if args.get("vocab_size") != tok.vocab_size:
        raise ValueError(f"pretrained={pretrained!r} has vocab_size {args.get('vocab_size')}, but kmer={kmer} needs "
                         f"{tok.vocab_size}")
    return args, source


class _DNATask(pl.LightningModule):
    """Optimiser, schedule and the model/data tokenizer check shared by the DNA tasks."""

    def _param_groups(self) -> list[dict]:
        # by the tags set at construction, not by shape: FSDP flattens parameters before this runs
        return split_by_decay_tag([{"params": list(self.parameters())}], self.hparams.weight_decay)

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

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data_tok = getattr(dm, "tokenizer", None)
        if data_tok is not None and data_tok.vocab_size != self.vocab_size:
            raise ValueError(f"the data's tokenizer (kmer={data_tok.k}) has vocab_size {data_tok.vocab_size}, the "
                             f"model has {self.vocab_size}: set the same kmer on model and data")

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def _lm_step(self, logits: torch.Tensor, targets: torch.Tensor, stage: str, batch_size: int) -> torch.Tensor:
        """Token cross-entropy and accuracy over targets != -100, logged with perplexity; returns the loss."""
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE)
        sel = targets != IGNORE
        acc = (logits.argmax(-1)[sel] == targets[sel]).float().mean()
        self._log_step(stage, loss, acc, batch_size, ppl=True)
        return loss

    def _log_step(self, stage: str, loss: torch.Tensor, acc: torch.Tensor, batch_size: int, ppl: bool) -> None:
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=batch_size)
        self.log(f"{stage}/acc", acc, on_step=on_step, on_epoch=True, batch_size=batch_size)
        if ppl and stage != "train":
            self.log(f"{stage}/ppl", loss.exp(), on_step=False, on_epoch=True, batch_size=batch_size)

    def on_fit_end(self) -> None:
        export = self.hparams.get("export_dir")
        if export and self.trainer.is_global_zero:
            self.model.caduceus.save_pretrained(Path(export))


class DNAMaskedLM(_DNATask):
    """Masked-LM pretraining of a Caduceus (Ph or PS) model on batches (input_ids (batch, L), _).

    Loss: cross-entropy on the masked positions only (`mask_tokens`); `val/acc` is masked-token accuracy.
    `export_dir`: after fit, the backbone (`Caduceus`) is saved there with `save_pretrained`, for
    `DNASequenceClassifier(pretrained=...)`. `grad_checkpointing` recomputes each block in backward
    (needed for 100k+ token windows).
    """

    def __init__(self, d_model: int = 64, n_layer: int = 2, rcps: bool = False, d_state: int = 16,
                 expand: int = 2, kmer: int = 1, pretrained: str | None = None, mlm_probability: float = 0.15,
                 lr: float = 8e-3, weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.95),
                 warmup_steps: int = 50, min_lr_ratio: float = 0.1, export_dir: str | None = None,
                 grad_checkpointing: bool = False, backend: str = "auto") -> None:
        super().__init__()
        if not 0 < mlm_probability < 1:
            raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
        self.save_hyperparameters()
        args, source = backbone_args(pretrained, kmer, backend, d_model=d_model, n_layer=n_layer, rcps=rcps,
                                     d_state=d_state, expand=expand, grad_checkpointing=grad_checkpointing)
        if not args.get("bidirectional", True):
            raise ValueError(f"pretrained={pretrained!r} is a causal (unidirectional) LM; use DNACausalLM")
        self.model = CaduceusForMaskedLM(**args)
        tag_no_weight_decay(self.model)
        if source is not None:
            self.model.caduceus.load_state_dict(source.state_dict(), strict=True)
        tok = make_tokenizer(kmer)
        self.vocab_size, self._ranges = tok.vocab_size, (tok.sequence_id_range, tok.random_id_range)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch, L) int64 -> logits (batch, L, vocab_size)."""
        return self.model(input_ids)

    def logits_and_targets(self, ids: torch.Tensor, generator: torch.Generator | None = None):
        """ids (batch, L) -> (logits (batch, L, V) on the masked input, targets (batch, L), -100 = not scored)."""
        masked, targets = mask_tokens(ids, self.hparams.mlm_probability, generator, *self._ranges)
        return self(masked), targets

    def _step(self, batch, stage: str) -> torch.Tensor:
        ids = batch[0]
        gen = None
        if stage != "train":  # same masks every validation pass, so val/loss curves are comparable
            gen = torch.Generator(device=ids.device).manual_seed(1234 + int(ids.sum()))
        return self._lm_step(*self.logits_and_targets(ids, gen), stage, ids.shape[0])


class DNACausalLM(_DNATask):
    """Next-token pretraining of the causal Mamba DNA LM (`Caduceus(bidirectional=False)`), the Mamba/HyenaDNA
    baseline objective: input ids[:, :-1], targets ids[:, 1:], [PAD] targets (padding, N) ignored.

    Batches: (input_ids (batch, L), _). Logs loss, next-token accuracy and perplexity (`val/ppl`). Args as
    `DNAMaskedLM` (no rcps: a causal model sees one direction).
    """

    def __init__(self, d_model: int = 64, n_layer: int = 2, d_state: int = 16, expand: int = 2, kmer: int = 1,
                 pretrained: str | None = None, lr: float = 8e-3, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 50, min_lr_ratio: float = 0.1,
                 export_dir: str | None = None, grad_checkpointing: bool = False, backend: str = "auto") -> None:
        super().__init__()
        self.save_hyperparameters()
        args, source = backbone_args(pretrained, kmer, backend, d_model=d_model, n_layer=n_layer, d_state=d_state,
                                     expand=expand, bidirectional=False, grad_checkpointing=grad_checkpointing)
        if args.get("bidirectional", True):
            raise ValueError(f"pretrained={pretrained!r} is a bidirectional model; a causal LM needs bidirectional=False")
        self.model = CaduceusForMaskedLM(**args)
        tag_no_weight_decay(self.model)
        if source is not None:
            self.model.caduceus.load_state_dict(source.state_dict(), strict=True)
        self.vocab_size = make_tokenizer(kmer).vocab_size

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch, L) int64 -> next-token logits (batch, L, vocab_size); position t predicts token t + 1."""
        return self.model(input_ids)

    def logits_and_targets(self, ids: torch.Tensor, generator: torch.Generator | None = None):
        """ids (batch, L) -> (logits (batch, L-1, V) of ids[:, :-1], targets ids[:, 1:] with [PAD] -> -100)."""
        if ids.shape[1] < 2:
            raise ValueError(f"causal LM needs sequences of at least 2 tokens, got shape {tuple(ids.shape)}")
        return self(ids[:, :-1]), ids[:, 1:].masked_fill(ids[:, 1:] == PAD_ID, IGNORE)

    def _step(self, batch, stage: str) -> torch.Tensor:
        ids = batch[0]
        return self._lm_step(*self.logits_and_targets(ids), stage, ids.shape[0])


class DNASequenceClassifier(_DNATask):
    """Sequence classification with `CaduceusForSequenceClassification` on (input_ids (batch, L), labels (batch,)).

    Pooling over non-[PAD] tokens: "mean" (default, as Caduceus) or "max" (better for detecting a short
    motif anywhere in the window, used by configs/bio/dna_synthetic_cls.yaml). RC-invariant with
    rcps=True; `conjoin` averages x and rc(x) (Caduceus-Ph's post-hoc conjoining).
    `pretrained`: a directory written by `Caduceus.save_pretrained` (e.g. DNAMaskedLM's export_dir, or a
    converted Hugging Face checkpoint); its architecture replaces d_model / n_layer / rcps / d_state / expand.
    """

    def __init__(self, num_classes: int = 2, d_model: int = 64, n_layer: int = 2, rcps: bool = False,
                 d_state: int = 16, expand: int = 2, pooling: str = "mean", conjoin: bool = False, kmer: int = 1,
                 pretrained: str | None = None, lr: float = 8e-3, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 50, min_lr_ratio: float = 0.1,
                 grad_checkpointing: bool = False, backend: str = "auto") -> None:
        super().__init__()
        self.save_hyperparameters()
        args, source = backbone_args(pretrained, kmer, backend, d_model=d_model, n_layer=n_layer, rcps=rcps,
                                     d_state=d_state, expand=expand, grad_checkpointing=grad_checkpointing)
        self.model = CaduceusForSequenceClassification(num_labels=num_classes, pooling=pooling, conjoin=conjoin,
                                                       **args)
        tag_no_weight_decay(self.model)
        if source is not None:
            self.model.backbone_state_from(source)
        self.vocab_size = make_tokenizer(kmer).vocab_size

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch, L) int64 -> logits (batch, num_classes)."""
        return self.model(input_ids)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        n = getattr(dm, "num_classes", self.hparams.num_classes)
        if n != self.hparams.num_classes:
            raise ValueError(f"model num_classes={self.hparams.num_classes} does not match the data's num_classes={n}")

    def _step(self, batch, stage: str) -> torch.Tensor:
        ids, labels = batch
        logits = self(ids)
        loss = F.cross_entropy(logits.float(), labels)
        acc = (logits.argmax(-1) == labels).float().mean()
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=on_step, batch_size=ids.shape[0])
        self.log(f"{stage}/acc", acc, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=ids.shape[0])
        return loss


    def predict_step(self, batch, batch_idx):
        """Class probabilities (batch, num_classes)."""
        ids = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(ids).softmax(-1)
