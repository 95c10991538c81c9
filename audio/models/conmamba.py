"""ConMamba (Jiang et al. 2024, "Speech Slytherin"; xi-j/Mamba-ASR), timm style, on the core bidirectional mixer.

Log-mel features (batch, T, n_mels) -> 2-D conv subsampling (two 3x3 stride-2 convs, x4 in time and
frequency, channels 64 then 32) -> linear to d_model -> `depth` ConMamba layers -> head. A layer is the
Conformer macaron layout with self-attention replaced by core's `BiMamba`:

    x = x + 1/2 FFN(x);  x = x + BiMamba(LN(x));  x = x + ConvModule(x);  x = x + 1/2 FFN(x);  x = LN(x)

ConvModule = LN -> pointwise conv (2 d) -> GLU -> depthwise conv (kernel 31) -> norm -> SiLU -> pointwise conv.
The head is a linear layer per frame (CTC; `global_pool=""`) or after masked mean pooling over time
(classification, e.g. keyword spotting; `global_pool="avg"`).

Padding: every module that mixes time steps sees padded frames as exact zeros, and the mixers' depthwise
convs have no bias, so the backward scan starts from a zero state at each utterance's own end. An
utterance's outputs are therefore the same alone or padded inside a batch (eval mode; `conv_norm="batch"`
uses batch statistics while training).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from timm.models import register_model
from torch import nn
from torch.utils.checkpoint import checkpoint

from mambasuite.core.blocks import DropPath
from mambasuite.core.mixers import BiMamba

__all__ = ["ConMamba", "ConMambaLayer", "ConvModule", "Conv2dSubsampling", "FeedForward", "subsampled_lengths"]


def subsampled_lengths(lengths: torch.Tensor, times: int = 2) -> torch.Tensor:
    """Frame counts after `times` stride-2 convs with kernel 3 and padding 1: ceil(len / 2) per conv."""
    for _ in range(times):
        lengths = torch.div(lengths + 1, 2, rounding_mode="floor")
    return lengths


def _mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class Conv2dSubsampling(nn.Module):
    """x4 subsampling in time: two Conv2d(3x3, stride 2, padding 1) + ReLU over (time, freq), then Linear.

    (batch, T, n_mels) -> (batch, ceil(ceil(T / 2) / 2), d_model); the Linear sees channels[-1] *
    ceil(ceil(n_mels / 2) / 2) features (32 x 20 = 640 for 80 mels). Padded frames are zeroed after each
    conv (and the input's padded frames first), so the last valid frames see the same zeros an unpadded
    utterance gets from the conv padding.
    """

    def __init__(self, n_mels: int, d_model: int, channels: Sequence[int] = (64, 32)) -> None:
        super().__init__()
        if len(channels) != 2 or any(int(c) < 1 for c in channels):
            raise ValueError(f"channels must be two positive ints, got {channels!r}")
        c1, c2 = int(channels[0]), int(channels[1])
        self.conv1 = nn.Conv2d(1, c1, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        freq = (((n_mels + 1) // 2) + 1) // 2
        self.out = nn.Linear(c2 * freq, d_model)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = (x * _mask(lengths, x.shape[1])[..., None].to(x.dtype)).unsqueeze(1)  # (batch, 1, T, n_mels)
        for conv in (self.conv1, self.conv2):
            h = F.relu(conv(h))
            lengths = subsampled_lengths(lengths, 1)
            h = h * _mask(lengths, h.shape[2])[:, None, :, None].to(h.dtype)
        b, c, t, f = h.shape
        return self.out(h.permute(0, 2, 1, 3).reshape(b, t, c * f)), lengths


class FeedForward(nn.Module):
    """Pre-norm position-wise FFN: LN -> Linear(d, d_ffn) -> SiLU -> Dropout -> Linear(d_ffn, d) -> Dropout.

    (batch, T, d_model) -> (batch, T, d_model).
    """

    def __init__(self, d_model: int, d_ffn: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, d_ffn)
        self.fc2 = nn.Linear(d_ffn, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.silu(self.fc1(self.norm(x))))))


class ConvModule(nn.Module):
    """Conformer convolution module: LN -> pointwise conv (d -> 2d) -> GLU -> depthwise conv (kernel k, same
    padding) -> norm ("batch": BatchNorm1d, "layer": LayerNorm) -> SiLU -> pointwise conv -> Dropout.

    forward(x (batch, T, d_model), mask (batch, T) bool) -> (batch, T, d_model).
    """

    def __init__(self, d_model: int, kernel_size: int = 31, norm: str = "layer", dropout: float = 0.1) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"conv_kernel must be odd (centred 'same' padding), got {kernel_size}")
        if norm not in ("batch", "layer"):
            raise ValueError(f"conv_norm must be 'batch' or 'layer', got {norm!r}")
        self.norm_in = nn.LayerNorm(d_model)
        self.pointwise1 = nn.Conv1d(d_model, 2 * d_model, 1)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel_size, padding=kernel_size // 2, groups=d_model)
        self.norm_kind = norm
        self.norm = nn.BatchNorm1d(d_model) if norm == "batch" else nn.LayerNorm(d_model)
        self.pointwise2 = nn.Conv1d(d_model, d_model, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = F.glu(self.pointwise1(self.norm_in(x).transpose(1, 2)), dim=1)  # (batch, d, T)
        h = self.depthwise(h * mask[:, None, :].to(h.dtype))
        h = self.norm(h) if self.norm_kind == "batch" else self.norm(h.transpose(1, 2)).transpose(1, 2)
        return self.drop(self.pointwise2(F.silu(h)).transpose(1, 2))


class ConMambaLayer(nn.Module):
    """One ConMamba layer (macaron FFNs around BiMamba and the conv module, final LayerNorm).

    forward(x (batch, T, d_model), mask (batch, T) bool) -> (batch, T, d_model).
    """

    def __init__(self, d_model: int, d_ffn: int, mixer: nn.Module, conv_kernel: int = 31, conv_norm: str = "layer",
                 dropout: float = 0.1, drop_path: float = 0.0) -> None:
        super().__init__()
        self.ffn1 = FeedForward(d_model, d_ffn, dropout)
        self.norm_mixer = nn.LayerNorm(d_model)
        self.mixer = mixer
        self.drop_mixer = nn.Dropout(dropout)
        self.conv = ConvModule(d_model, conv_kernel, conv_norm, dropout)
        self.ffn2 = FeedForward(d_model, d_ffn, dropout)
        self.norm_out = nn.LayerNorm(d_model)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.drop_path(self.ffn1(x))
        # Zeroed padding + bias-free in_proj and mixer convs keep the reverse scan's state at 0 until each
        # utterance's last frame (see the module docstring).
        h = self.norm_mixer(x).masked_fill(~mask[..., None], 0.0)
        x = x + self.drop_path(self.drop_mixer(self.mixer(h)))
        x = x + self.drop_path(self.conv(x, mask))
        x = x + 0.5 * self.drop_path(self.ffn2(x))
        return self.norm_out(x)


class ConMamba(nn.Module):
    """ConMamba encoder with a CTC (per-frame) or classification (mean-pooled) head.

    Args:
        n_mels: input feature bins. num_classes: head outputs (CTC: tokens incl. blank; 0 = no head).
        d_model, depth, d_ffn: width, number of layers, FFN hidden width.
        conv_kernel: depthwise kernel of the conv module (31); conv_norm: "layer" | "batch".
        subsampling_channels: channels of the two subsampling convs.
        d_state, d_conv, expand: BiMamba sizes (d_inner = expand * d_model, dt_rank = ceil(d_model / 16)).
        bimamba_variant: "internal" (Vim v2 / Mamba-ASR: shared in/out projections) or "external"
            (ExtBiMamba: two full Mamba mixers). bimamba_combine: None = "mean" for internal (Mamba-ASR
            averages the directions), "concat" for external; see `BiMamba`.
        dropout: dropout in FFNs, conv module, after the mixer and before the head.
        drop_path_rate: stochastic depth, linear over layers from 0 to this rate.
        global_pool: "" (per-frame logits, CTC) or "avg" (masked mean over frames, classification).
        backend: selective-scan backend of every mixer ("auto" = Triton on CUDA, reference on CPU).

    forward(features (batch, T, n_mels) float, lengths (batch,) int) ->
        ("" pool) logits (batch, T', num_classes) and lengths (batch,), T' = ceil(ceil(T / 2) / 2);
        ("avg" pool) logits (batch, num_classes) and the same lengths.
    """

    def __init__(self, n_mels: int = 80, num_classes: int = 29, d_model: int = 256, depth: int = 18,
                 d_ffn: int = 1024, conv_kernel: int = 31, conv_norm: str = "layer",
                 subsampling_channels: Sequence[int] = (64, 32), d_state: int = 16, d_conv: int = 4,
                 expand: int = 2, bimamba_variant: str = "internal", bimamba_combine: str | None = None,
                 dropout: float = 0.1, drop_path_rate: float = 0.0, global_pool: str = "",
                 backend: str = "auto") -> None:
        super().__init__()
        for name, value in (("n_mels", n_mels), ("d_model", d_model), ("depth", depth), ("d_ffn", d_ffn)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        if global_pool not in ("", "avg"):
            raise ValueError(f"global_pool must be '' (per-frame, CTC) or 'avg' (mean pooled), got {global_pool!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if bimamba_combine is None:
            bimamba_combine = "mean" if bimamba_variant == "internal" else "concat"
        self.n_mels, self.num_classes, self.global_pool = n_mels, num_classes, global_pool
        self.num_features = self.head_hidden_size = self.d_model = d_model
        self.grad_checkpointing = False
        self.subsample = Conv2dSubsampling(n_mels, d_model, subsampling_channels)
        self.drop_in = nn.Dropout(dropout)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.layers = nn.ModuleList(
            ConMambaLayer(d_model, d_ffn,
                          BiMamba(d_model, d_state, d_conv, expand, variant=bimamba_variant, combine=bimamba_combine,
                                  conv_bias=False, bias=False, backend=backend),
                          conv_kernel, conv_norm, dropout, dpr[i])
            for i in range(depth))
        self.head_drop = nn.Dropout(dropout)
        self.head = nn.Linear(d_model, num_classes) if num_classes > 0 else nn.Identity()

    @staticmethod
    def output_lengths(lengths: torch.Tensor) -> torch.Tensor:
        """(batch,) feature-frame counts -> (batch,) encoder-frame counts (x4 subsampling, rounded up)."""
        return subsampled_lengths(lengths, 2)

    def _check_input(self, features: torch.Tensor, lengths: torch.Tensor) -> None:
        name = type(self).__name__
        if not isinstance(features, torch.Tensor) or not features.is_floating_point():
            raise TypeError(f"{name}: features must be a float tensor, got "
                            f"{features.dtype if isinstance(features, torch.Tensor) else type(features).__name__}")
        if features.dim() != 3 or features.shape[-1] != self.n_mels:
            raise ValueError(f"{name}: features must have shape (batch, T, n_mels={self.n_mels}), "
                             f"got {tuple(features.shape)}")
        if (not isinstance(lengths, torch.Tensor) or lengths.dim() != 1 or lengths.shape[0] != features.shape[0]
                or lengths.is_floating_point()):
            got = (f"{tuple(lengths.shape)} {lengths.dtype}" if isinstance(lengths, torch.Tensor)
                   else type(lengths).__name__)
            raise ValueError(f"{name}: lengths must be an int tensor (batch={features.shape[0]},), got {got}")
        if (lengths < 1).any() or (lengths > features.shape[1]).any():
            raise ValueError(f"{name}: lengths must lie in [1, T={features.shape[1]}], got {lengths.tolist()}")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each layer in backward instead of storing its activations (long utterances)."""
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New head with `num_classes` outputs (0 = none); optionally switch `global_pool` ("" or "avg")."""
        if global_pool is not None:
            if global_pool not in ("", "avg"):
                raise ValueError(f"global_pool must be '' or 'avg', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.d_model, num_classes) if num_classes > 0 else nn.Identity()

    def no_weight_decay(self) -> set[str]:
        """Parameter names without weight decay: the SSM's A_log and D (norms and biases are excluded by ndim)."""
        return {n for n, p in self.named_parameters() if getattr(p, "_no_weight_decay", False)}

    def forward_features(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, T, n_mels), (batch,) -> encoder output (batch, T', d_model), lengths (batch,) T' frames."""
        self._check_input(features, lengths)
        x, lengths = self.subsample(features, lengths)
        x = self.drop_in(x)
        mask = _mask(lengths, x.shape[1])
        for layer in self.layers:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(layer, x, mask, use_reentrant=False)
            else:
                x = layer(x, mask)
        return x, lengths

    def forward_head(self, x: torch.Tensor, lengths: torch.Tensor | None = None,
                     pre_logits: bool = False) -> torch.Tensor:
        """(batch, T', d_model) -> per-frame logits (batch, T', C), or with "avg" pooling over the valid
        frames (lengths required) -> (batch, C). pre_logits=True returns the (pooled) features instead."""
        if self.global_pool == "avg":
            if lengths is None:
                raise ValueError("forward_head: global_pool='avg' needs the encoder lengths")
            m = _mask(lengths, x.shape[1])[..., None].to(x.dtype)
            x = (x * m).sum(1) / lengths[:, None].to(x.dtype)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = self.forward_features(features, lengths)
        return self.forward_head(x, lengths), lengths


def _create(pretrained: bool, defaults: dict, kwargs: dict) -> ConMamba:
    if pretrained:
        raise ValueError("no pretrained ConMamba weights are published; use pretrained=False and train, or load "
                         "a Lightning checkpoint")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # passed by timm.create_model
        kwargs.pop(key, None)
    return ConMamba(**{**defaults, **kwargs})


@register_model
def conmamba_ctc_tiny(pretrained: bool = False, **kwargs) -> ConMamba:
    """Tiny CPU-trainable ConMamba: d_model 96, 3 layers, d_ffn 192, conv kernel 15, d_state 8 (~0.5M params;
    the embedded espeak-ng task)."""
    args = dict(d_model=96, depth=3, d_ffn=192, conv_kernel=15, d_state=8, subsampling_channels=(32, 16),
                dropout=0.1)
    return _create(pretrained, args, kwargs)


@register_model
def conmamba_ctc_small(pretrained: bool = False, **kwargs) -> ConMamba:
    """ConMamba-CTC small: d_model 192, 12 layers, d_ffn 1024, kernel 31, d_state 16 (~14M params at 29 tokens)."""
    return _create(pretrained, dict(d_model=192, depth=12, d_ffn=1024), kwargs)


@register_model
def conmamba_ctc_large(pretrained: bool = False, **kwargs) -> ConMamba:
    """ConMamba-CTC large (Mamba-ASR `hparams/CTC/conmamba_large.yaml`): d_model 256, 18 layers, d_ffn 1024,
    kernel 31, d_state 16 (~31.6M params at 31 tokens, as the paper's CTC model)."""
    return _create(pretrained, dict(d_model=256, depth=18, d_ffn=1024), kwargs)
