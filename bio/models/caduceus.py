"""Caduceus (Schiff et al. 2024) and a causal Mamba DNA LM, composed from core mixers and blocks.

* Caduceus-Ph: embedding -> `MambaBackbone` of weight-tied external BiMamba mixers (combine "add") ->
  tied LM head. RC handling is post hoc (RC augmentation in training, `conjoin` at inference).
* Caduceus-PS: RC-equivariant by parameter sharing (RCPS). Hidden states have 2*d_model channels: the
  first half is the forward strand, the second the RC strand stored flipped along length *and* channels,
  so RC of a hidden tensor h (batch, L, 2d) is `h.flip(-2, -1)`. Every layer f satisfies
  f(rc(h)) = rc(f(h)): the embedding is [E(x), rc(E(rc(x)))], each mixer and norm runs on the first half
  and, conjugated by rc, on the second (`RCPS`), and the tied head sums both strands' logits with the
  complement permutation. Hence logits(rc(x)) = flip_L(logits(x))[..., complement_map].
* Mamba DNA LM (`bidirectional=False`): causal Mamba mixers for next-token prediction.

Sub-module names follow the Hugging Face Caduceus layout where it costs nothing (`mamba_fwd`/`mamba_rev`,
`submodule`, `embeddings.word_embeddings`, `complement_map`), so a converter is mostly renames.

The PS stack keeps the two halves in order at every block by default (Caduceus' unfused add+norm path).
The official *fused* add+norm path (`fused_add_norm: true`, used by the released checkpoints) hands the
second half to the "forward" norm and the flipped first half to the "RC" norm, so the residual stream's
halves are exchanged at every block: `swap_halves=True` reproduces that (`mamba-suite convert caduceus`
sets it). Both orderings are RC-equivariant (the swap commutes with rc) but give different outputs for
the same weights. The final norm keeps the halves in order on both official paths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ...core.blocks import MambaBackbone
from ...core.hub import PretrainedMixin
from ...core.mixers import check_choice, check_positive_int
from ..tokenizer import COMPLEMENT_MAP, PAD_ID, VOCAB_SIZE

__all__ = [
    "RCPS", "RCPSEmbedding", "Caduceus", "CaduceusForMaskedLM", "CaduceusForSequenceClassification",
    "rc_hidden", "swap_halves", "caduceus_ph_tiny", "caduceus_ps_tiny", "mamba_dna_tiny",
    "caduceus_ph_118_4l", "caduceus_ps_118_4l", "caduceus_ph_256_4l", "caduceus_ps_256_4l",
    "caduceus_ph_256_16l", "caduceus_ps_256_16l",
]


def rc_hidden(h: torch.Tensor) -> torch.Tensor:
    """Reverse complement of an RCPS hidden tensor: (batch, L, C) flipped along L and C."""
    return h.flip(-2, -1)


def swap_halves(h: torch.Tensor) -> torch.Tensor:
    """Exchange the two channel halves of an RCPS tensor: [h_f, h_r] -> [h_r, h_f]; (batch, L, 2d) -> same.

    This is what the official fused add+norm path does to the residual stream at every block. It commutes
    with `rc_hidden`, so it keeps the model RC-equivariant.
    """
    h_f, h_r = h.chunk(2, dim=-1)
    return torch.cat([h_r, h_f], dim=-1)


class RCPS(nn.Module):
    """Wrap a channel-last module m (batch, L, d) -> (batch, L, d) into an RC-equivariant one on 2d channels:
    h = [h_f, h_r] -> [m(h_f), rc(m(rc(h_r)))]. Shapes: (batch, L, 2d) -> (batch, L, 2d)."""

    def __init__(self, submodule: nn.Module) -> None:
        super().__init__()
        self.submodule = submodule

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h_f, h_r = h.chunk(2, dim=-1)
        return torch.cat([self.submodule(h_f), rc_hidden(self.submodule(rc_hidden(h_r)))], dim=-1)


class RCPSEmbedding(nn.Module):
    """RC-equivariant token embedding: ids (batch, L) -> (batch, L, 2*d_model) = [E(x), rc(E(rc(x)))]."""

    def __init__(self, vocab_size: int, d_model: int, complement_map: torch.Tensor) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.register_buffer("complement_map", complement_map.clone().long(), persistent=True)

    def rc_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(batch, L) -> reversed and complemented ids (batch, L)."""
        return self.complement_map[ids.flip(-1)]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.embedding(ids), rc_hidden(self.embedding(self.rc_ids(ids)))], dim=-1)


class _Embeddings(nn.Module):
    """Holds `word_embeddings` (nn.Embedding or RCPSEmbedding) under Caduceus' key name."""

    def __init__(self, word_embeddings: nn.Module) -> None:
        super().__init__()
        self.word_embeddings = word_embeddings

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.word_embeddings(ids)


def _complement_tensor(complement_map, vocab_size: int) -> torch.Tensor:
    cmap = list(COMPLEMENT_MAP if complement_map is None else complement_map)
    cmap = cmap[:vocab_size] + list(range(len(cmap), vocab_size))  # identity on padded ids
    t = torch.tensor(cmap, dtype=torch.long)
    if sorted(cmap) != list(range(vocab_size)) or not torch.equal(t[t], torch.arange(vocab_size)):
        raise ValueError(f"complement_map must be an involutive permutation of 0..{vocab_size - 1}, got {cmap}")
    return t


class Caduceus(PretrainedMixin, nn.Module):
    """DNA backbone: token ids (batch, L) int64 -> hidden states (batch, L, hidden_size).

    hidden_size = 2*d_model with rcps=True (forward half, then the flipped RC half), else d_model.

    Args:
        d_model, n_layer: width and depth (released: 256 x 16, 256 x 4, 118 x 4).
        vocab_size: embedding rows (16: the tokenizer's 12 tokens padded).
        rcps: Caduceus-PS (RC-equivariant) instead of Caduceus-Ph.
        bidirectional: BiMamba mixers (Caduceus); False = causal Mamba mixers (Mamba DNA LM, needs rcps=False).
        bidirectional_strategy: "add" | "ew_multiply" (Caduceus' names for the two directions' combination).
        bidirectional_weight_tie: tie mamba_rev's in/out projections to mamba_fwd's.
        d_state, d_conv, expand: mixer sizes. complement_map: None = the tokenizer's.
        residual_in_fp32, norm_eps, drop_path_rate, backend: see `MambaBackbone`.
        swap_halves: (rcps only) exchange the residual stream's halves before every block, as the official
            fused add+norm path does; needed to reproduce the released PS checkpoints (see the module docs).
        grad_checkpointing: recompute each block in backward (activation memory of one block, not all).
    """

    def __init__(self, d_model: int = 256, n_layer: int = 4, vocab_size: int = VOCAB_SIZE, rcps: bool = False,
                 bidirectional: bool = True, bidirectional_strategy: str = "add",
                 bidirectional_weight_tie: bool = True, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 complement_map: list[int] | None = None, residual_in_fp32: bool = False, norm_eps: float = 1e-5,
                 drop_path_rate: float = 0.0, backend: str = "auto", swap_halves: bool = False,
                 grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.d_model = check_positive_int("d_model", d_model)
        self.vocab_size = check_positive_int("vocab_size", vocab_size)
        check_choice("bidirectional_strategy", bidirectional_strategy, ("add", "ew_multiply"))
        if rcps and not bidirectional:
            raise ValueError("rcps=True needs bidirectional=True (an RC-equivariant model sees both directions)")
        if swap_halves and not rcps:
            raise ValueError("swap_halves=True needs rcps=True (it reorders the two RCPS channel halves)")
        self.rcps, self.bidirectional, self.swap_halves = bool(rcps), bool(bidirectional), bool(swap_halves)
        self.hidden_size = 2 * d_model if rcps else d_model
        cmap = _complement_tensor(complement_map, vocab_size)
        self.register_buffer("complement_map", cmap, persistent=False)
        if rcps:
            self.embeddings = _Embeddings(RCPSEmbedding(vocab_size, d_model, cmap))
        else:
            self.embeddings = _Embeddings(nn.Embedding(vocab_size, d_model))
        mixer_args = {}
        if bidirectional:
            mixer_args = dict(mixer="bimamba_external", share_projections=bidirectional_weight_tie,
                              bimamba_combine="add" if bidirectional_strategy == "add" else "mul")
        self.backbone = MambaBackbone(d_model, n_layer, d_state=d_state, d_conv=d_conv, expand=expand,
                                      drop_path_rate=drop_path_rate, residual_in_fp32=residual_in_fp32,
                                      norm_eps=norm_eps, backend=backend, grad_checkpointing=grad_checkpointing,
                                      **(mixer_args or dict(mixer="mamba")))
        if rcps:
            # Same parameters, used on both strands: wrap every norm and mixer of the core stack.
            for layer in self.backbone.layers:
                layer.mixer, layer.norm = RCPS(layer.mixer), RCPS(layer.norm)
            self.backbone.norm_f = RCPS(self.backbone.norm_f)
        nn.init.normal_(self.word_embedding_weight, std=0.02)

    @property
    def word_embedding_weight(self) -> nn.Parameter:
        """The (vocab_size, d_model) embedding matrix (shared by both strands and the tied LM head)."""
        emb = self.embeddings.word_embeddings
        return emb.embedding.weight if self.rcps else emb.weight

    def rc_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Reverse complement of token ids: (batch, L) -> (batch, L)."""
        return self.complement_map[ids.flip(-1)]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turn per-block activation checkpointing on or off (timm's method name)."""
        self.backbone.set_grad_checkpointing(enable)

    def pool(self, input_ids: torch.Tensor, pooling: str = "mean", conjoin: bool = False) -> torch.Tensor:
        """RC-aware per-sequence embedding: input_ids (batch, L) int64 -> (batch, d_model).

        Pools ("mean" or "max") over non-[PAD] positions. With rcps, the forward half and the RC half (turned
        back to forward orientation) are pooled separately and averaged, so the result is RC-invariant; with
        `conjoin` (Ph) the same is done post hoc with a second pass on rc(input_ids).
        """
        check_choice("pooling", pooling, ("mean", "max"))
        mask = input_ids != PAD_ID

        def pooled(h: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            if pooling == "mean":
                w = m.unsqueeze(-1).to(h.dtype)
                return (h * w).sum(1) / w.sum(1).clamp(min=1.0)
            return h.masked_fill(~m.unsqueeze(-1), float("-inf")).amax(1)

        h = self(input_ids)
        if self.rcps:
            h_f, h_r = h.chunk(2, dim=-1)
            # rc(h_r) holds the RC strand's features in forward orientation, aligned with the flipped mask.
            return (pooled(h_f, mask) + pooled(rc_hidden(h_r), mask.flip(-1))) / 2
        out = pooled(h, mask)
        if conjoin:
            out = (out + pooled(self(self.rc_ids(input_ids)), mask.flip(-1))) / 2
        return out

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (batch, L) int64 -> (batch, L, hidden_size) after the final norm."""
        if input_ids.dim() != 2 or input_ids.dtype != torch.long:
            raise ValueError(f"Caduceus: input_ids must be (batch, L) int64, got {tuple(input_ids.shape)} "
                             f"{input_ids.dtype}")
        h = self.embeddings(input_ids)
        if not self.rcps:
            return self.backbone(h)
        # Same add+norm loop as MambaBackbone.forward, on 2*d_model channels (its input check is for d_model).
        bb, residual = self.backbone, None
        use_ckpt = bb.grad_checkpointing and self.training and torch.is_grad_enabled()
        for layer in bb.layers:
            if self.swap_halves:
                # Block computes residual + h; swapping both inputs swaps the sum (the official fused path).
                h, residual = swap_halves(h), None if residual is None else swap_halves(residual)
            if use_ckpt:
                h, residual = checkpoint(layer, h, residual, use_reentrant=False)
            else:
                h, residual = layer(h, residual)
        residual = residual + bb.drop_path_f(h)
        if bb.residual_in_fp32:
            residual = residual.float()
        return bb.norm_f(residual).to(h.dtype)


class CaduceusForMaskedLM(PretrainedMixin, nn.Module):
    """Caduceus backbone + LM head tied to the embedding: input_ids (batch, L) -> logits (batch, L, vocab_size).

    With rcps the head is RC-equivariant: logits = W h_f + W[complement_map] flip_C(h_r). With
    bidirectional=False this is the causal Mamba DNA LM (train it on next-token targets). Args: as `Caduceus`.
    """

    def __init__(self, d_model: int = 256, n_layer: int = 4, vocab_size: int = VOCAB_SIZE, rcps: bool = False,
                 bidirectional: bool = True, bidirectional_strategy: str = "add",
                 bidirectional_weight_tie: bool = True, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 complement_map: list[int] | None = None, residual_in_fp32: bool = False, norm_eps: float = 1e-5,
                 drop_path_rate: float = 0.0, backend: str = "auto", swap_halves: bool = False,
                 grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.caduceus = Caduceus(**self.config)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch, L) int64 -> (batch, L, vocab_size) logits."""
        h = self.caduceus(input_ids)
        w = self.caduceus.word_embedding_weight
        if not self.caduceus.rcps:
            return F.linear(h, w)
        h_f, h_r = h.chunk(2, dim=-1)
        return F.linear(h_f, w) + F.linear(h_r.flip(-1), w[self.caduceus.complement_map])


class CaduceusForSequenceClassification(PretrainedMixin, nn.Module):
    """Caduceus backbone + pooling + linear score: input_ids (batch, L) -> logits (batch, num_labels).

    logits = score(Caduceus.pool(input_ids)): pooling ("mean" over non-[PAD] tokens, or "max") runs per
    strand; with rcps the forward half and the flipped RC half are pooled and averaged, which makes the
    prediction RC-invariant. `conjoin` (Ph) does the same post hoc with a pass on rc(x). (`score` is linear
    without bias, so this equals averaging the two strands' logits, as Caduceus does.)

    Args: num_labels, pooling, conjoin, then as `Caduceus`.
    """

    def __init__(self, num_labels: int = 2, pooling: str = "mean", conjoin: bool = False, d_model: int = 256,
                 n_layer: int = 4, vocab_size: int = VOCAB_SIZE, rcps: bool = False, bidirectional: bool = True,
                 bidirectional_strategy: str = "add", bidirectional_weight_tie: bool = True, d_state: int = 16,
                 d_conv: int = 4, expand: int = 2, complement_map: list[int] | None = None,
                 residual_in_fp32: bool = False, norm_eps: float = 1e-5, drop_path_rate: float = 0.0,
                 backend: str = "auto", swap_halves: bool = False, grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.num_labels = check_positive_int("num_labels", num_labels)
        self.pooling = check_choice("pooling", pooling, ("mean", "max"))
        self.conjoin = bool(conjoin)
        backbone_args = {k: v for k, v in self.config.items() if k not in ("num_labels", "pooling", "conjoin")}
        self.caduceus = Caduceus(**backbone_args)
        self.score = nn.Linear(d_model, num_labels, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch, L) int64 -> (batch, num_labels) logits."""
        return self.score(self.caduceus.pool(input_ids, self.pooling, self.conjoin))

    def backbone_state_from(self, source: Caduceus) -> None:
        """Copy a pretrained `Caduceus` backbone's weights (strict) into this model's backbone."""
        self.caduceus.load_state_dict(source.state_dict(), strict=True)


# ------------------------------------------------------------------------------------------------
# Factories (timm style). The released checkpoints' sizes, and tiny sizes for tests.
# ------------------------------------------------------------------------------------------------

def _lm(d_model: int, n_layer: int, rcps: bool, **kwargs) -> CaduceusForMaskedLM:
    return CaduceusForMaskedLM(d_model=d_model, n_layer=n_layer, rcps=rcps, **kwargs)


def caduceus_ph_tiny(**kwargs) -> CaduceusForMaskedLM:
    """Caduceus-Ph, d_model 32 x 2 layers (tests, CPU demos)."""
    return _lm(32, 2, False, **kwargs)


def caduceus_ps_tiny(**kwargs) -> CaduceusForMaskedLM:
    """Caduceus-PS, d_model 32 x 2 layers (tests, CPU demos)."""
    return _lm(32, 2, True, **kwargs)


def mamba_dna_tiny(**kwargs) -> CaduceusForMaskedLM:
    """Causal Mamba DNA LM, d_model 32 x 2 layers."""
    return _lm(32, 2, False, bidirectional=False, **kwargs)


def caduceus_ph_118_4l(**kwargs) -> CaduceusForMaskedLM:
    """Caduceus-Ph d_model 118 x 4 layers (~0.47M params; released 1k model used for Genomic Benchmarks)."""
    return _lm(118, 4, False, **kwargs)


def caduceus_ps_118_4l(**kwargs) -> CaduceusForMaskedLM:
    """Caduceus-PS d_model 118 x 4 layers."""
    return _lm(118, 4, True, **kwargs)


def caduceus_ph_256_4l(**kwargs) -> CaduceusForMaskedLM:
    """Caduceus-Ph d_model 256 x 4 layers (released seqlen-1k model)."""
    return _lm(256, 4, False, **kwargs)


def caduceus_ps_256_4l(**kwargs) -> CaduceusForMaskedLM:
    """Caduceus-PS d_model 256 x 4 layers (released seqlen-1k model)."""
    return _lm(256, 4, True, **kwargs)


def caduceus_ph_256_16l(**kwargs) -> CaduceusForMaskedLM:
    """Caduceus-Ph d_model 256 x 16 layers (released seqlen-131k model, ~7.73M params)."""
    return _lm(256, 16, False, **kwargs)


def caduceus_ps_256_16l(**kwargs) -> CaduceusForMaskedLM:
    """Caduceus-PS d_model 256 x 16 layers (released seqlen-131k model, ~7.73M params)."""
    return _lm(256, 16, True, **kwargs)
