"""Residual blocks and the shared Mamba backbone: `RMSNorm`, `DropPath`, `Block`, `MambaBackbone`.

The residual convention is mamba-ssm's "fused add + norm" (also Vim's and Caduceus'): a block gets
the previous mixer output and the running residual, adds them (optionally in fp32), normalises,
and runs its mixer. The residual stream is only closed after the last block, before the final norm.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..kernels import add_rms_norm
from .hub import PretrainedMixin
from .mixers import BiMamba, Mamba, check_channel_last, check_choice, check_positive_int

__all__ = ["Block", "DropPath", "MambaBackbone", "RMSNorm"]


class RMSNorm(nn.Module):
    """Root-mean-square norm with a weight and no bias (mamba-ssm's RMSNorm).

    y = x / sqrt(mean(x^2) + eps) * weight, computed in fp32 (at least); x: (..., dim) -> same shape
    and dtype.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x if x.dtype == torch.float64 else x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.to(xf.dtype)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class _LayerNormFP32(nn.LayerNorm):
    """nn.LayerNorm (same parameter names) computed in fp32, so a low-precision model can normalise
    the fp32 residual stream; x: (..., dim) -> same shape and dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        w = self.weight.to(dtype) if self.weight is not None else None
        b = self.bias.to(dtype) if self.bias is not None else None
        return F.layer_norm(x.to(dtype), self.normalized_shape, w, b, self.eps).to(x.dtype)


def make_norm(norm: str, dim: int, eps: float = 1e-5) -> nn.Module:
    """"rms" -> RMSNorm(dim), "layer" -> LayerNorm(dim); both keep the input dtype."""
    check_choice("norm", norm, ("rms", "layer"))
    return RMSNorm(dim, eps) if norm == "rms" else _LayerNormFP32(dim, eps=eps)


class DropPath(nn.Module):
    """Stochastic depth per sample: in training, zero a sample's branch with probability p and scale
    the kept ones by 1 / (1 - p); identity in eval or when p = 0. x: (batch, ...) -> same shape."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability p must be in [0, 1), got {p!r}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Block(nn.Module):
    """Pre-norm residual block with mamba-ssm's "add + norm" convention.

    forward(hidden_states, residual=None) -> (hidden_states, residual):
        residual = hidden_states                                  if residual is None (first block)
                   residual + drop_path(hidden_states)            otherwise
        residual = residual.float()                               if residual_in_fp32
        hidden_states = mixer(norm(residual).to(input dtype))
    `hidden_states` is the previous block's mixer output (or the embeddings), so `drop_path` drops
    the *previous* mixer's contribution; the owner closes the stream after the last block.

    Args:
        dim: channels; mixer: a module (batch, L, dim) -> (batch, L, dim) (any shape with channels
        last works); norm: "rms" | "layer"; drop_path: probability; residual_in_fp32: keep the
        residual stream in fp32 (mamba-ssm's default in its LMs); norm_eps: the norm's epsilon.
    Shapes: hidden_states (batch, L, dim) in any float dtype; residual (batch, L, dim), fp32 if
        residual_in_fp32. Returns hidden_states in the input dtype and the updated residual.
    """

    def __init__(self, dim: int, mixer: nn.Module, norm: str = "rms", drop_path: float = 0.0, *,
                 residual_in_fp32: bool = True, norm_eps: float = 1e-5) -> None:
        super().__init__()
        if not isinstance(mixer, nn.Module):
            raise TypeError(f"mixer must be an nn.Module, got {type(mixer).__name__}")
        self.norm = make_norm(norm, check_positive_int("dim", dim), norm_eps)
        self.mixer = mixer
        self.drop_path = DropPath(drop_path)
        self.residual_in_fp32 = residual_in_fp32

    def forward(self, hidden_states: torch.Tensor,
                residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        in_dtype = hidden_states.dtype
        if isinstance(self.norm, RMSNorm):
            # One fused op (kernels.add_rms_norm): the add, the fp32 residual and the norm in one pass.
            if residual is not None:
                hidden_states = self.drop_path(hidden_states)
            normed, residual = add_rms_norm(hidden_states, residual, self.norm.weight, self.norm.eps,
                                            self.residual_in_fp32, backend=norm_backend(self.mixer))
            return self.mixer(normed.to(in_dtype)), residual
        residual = hidden_states if residual is None else residual + self.drop_path(hidden_states)
        if self.residual_in_fp32:
            residual = residual.float()
        return self.mixer(self.norm(residual).to(in_dtype)), residual


def norm_backend(mixer: nn.Module) -> str:
    """Backend for a block's fused add + norm: the mixer's own ("mamba_ssm" gives mamba-ssm's own fused norm, so
    a peer block is built from the peer's ops throughout), "auto" for mixers without one."""
    return getattr(mixer, "backend", "auto")


def _init_weights(module: nn.Module, n_layer: int, rescale_prenorm_residual: bool = True,
                  n_residuals_per_layer: int = 1) -> None:
    """mamba-ssm's LM init (GPT-2 style), applied to every submodule.

    Linear biases are zeroed unless flagged `_no_reinit` (dt_proj.bias). Each residual-branch output
    projection (`out_proj.weight` of a module) is re-drawn with PyTorch's Linear init and divided by
    sqrt(n_residuals_per_layer * n_layer), so the residual stream's variance does not grow with depth.
    """
    if isinstance(module, nn.Linear) and module.bias is not None:
        if not getattr(module.bias, "_no_reinit", False):
            nn.init.zeros_(module.bias)
    if rescale_prenorm_residual:
        for name, p in module.named_parameters():
            if name in ("out_proj.weight", "fc2.weight"):
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))
                with torch.no_grad():
                    p /= math.sqrt(n_residuals_per_layer * n_layer)


class MambaBackbone(PretrainedMixin, nn.Module):
    """A stack of `Block`s with Mamba / BiMamba mixers, a final add + norm; mamba-ssm's MixerModel
    without the embedding.

    Args:
        d_model, n_layer: width and depth.
        d_state, d_conv, expand: mixer sizes (see `Mamba`).
        mixer: "mamba" | "bimamba" (BiMamba internal, Vim/Caduceus) | "bimamba_external" (ExtBiMamba).
        bimamba_combine: BiMamba's combine; None = that variant's default ("add" internal, "concat"
            external). Must be None for mixer="mamba".
        selective: False = LTI ablation in every mixer.
        drop_path_rate: stochastic depth of mixer i's output is drop_path_rate * i / (n_layer - 1)
            (linear from 0; the last mixer's output is dropped before the final norm), as in Vim.
        norm: "rms" | "layer"; norm_eps: epsilon of every norm.
        residual_in_fp32: keep the residual stream in fp32.
        grad_checkpointing: recompute each block in backward (torch.utils.checkpoint, non-reentrant).
        rescale_prenorm_residual: mamba-ssm's 1/sqrt(n_layer) rescale of every out_proj.
        backend: kernel backend of every mixer.
        **mixer_kwargs: more mixer arguments (dt_rank, dt_min, dt_max, conv_bias, bias,
            share_projections, ...).

    Shapes: forward (batch, L, d_model) -> (batch, L, d_model) in the input's dtype.
    """

    MIXERS = ("mamba", "bimamba", "bimamba_external")

    def __init__(self, d_model: int, n_layer: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 mixer: str = "mamba", bimamba_combine: str | None = None, selective: bool = True,
                 drop_path_rate: float = 0.0, norm: str = "rms", residual_in_fp32: bool = True,
                 backend: str = "auto", *, norm_eps: float = 1e-5, grad_checkpointing: bool = False,
                 rescale_prenorm_residual: bool = True, **mixer_kwargs) -> None:
        super().__init__()
        self.d_model = check_positive_int("d_model", d_model)
        self.n_layer = check_positive_int("n_layer", n_layer)
        check_choice("mixer", mixer, self.MIXERS)
        check_choice("norm", norm, ("rms", "layer"))
        if mixer == "mamba" and bimamba_combine is not None:
            raise ValueError(f"bimamba_combine={bimamba_combine!r} only applies to mixer='bimamba' or "
                             f"'bimamba_external', not mixer='mamba'")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
        self.grad_checkpointing = grad_checkpointing

        def make_mixer() -> nn.Module:
            sizes = dict(d_state=d_state, d_conv=d_conv, expand=expand, selective=selective, backend=backend)
            if mixer == "mamba":
                return Mamba(d_model, **sizes, **mixer_kwargs)
            variant = "internal" if mixer == "bimamba" else "external"
            return BiMamba(d_model, **sizes, variant=variant, combine=bimamba_combine, **mixer_kwargs)

        # Mixer i's output is dropped at rate dpr[i] when block i + 1 (or the final add) adds it.
        dpr = [drop_path_rate * i / max(n_layer - 1, 1) for i in range(n_layer)]
        self.layers = nn.ModuleList(
            Block(d_model, make_mixer(), norm, drop_path=dpr[i - 1] if i > 0 else 0.0,
                  residual_in_fp32=residual_in_fp32, norm_eps=norm_eps)
            for i in range(n_layer)
        )
        self.drop_path_f = DropPath(dpr[-1])
        self.norm_f = make_norm(norm, d_model, norm_eps)
        self.residual_in_fp32 = residual_in_fp32
        self.apply(partial(_init_weights, n_layer=n_layer, rescale_prenorm_residual=rescale_prenorm_residual))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turn per-block activation checkpointing on or off (timm's method name)."""
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Names of parameters flagged `_no_weight_decay` (A_log, D, ...), for optimizer param groups."""
        return {name for name, p in self.named_parameters() if getattr(p, "_no_weight_decay", False)}

    def forward(self, hidden_states: torch.Tensor,
                return_all: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """(batch, L, d_model) -> (batch, L, d_model).

        return_all=True returns a list of n_layer + 1 tensors in the Hugging Face convention: the
        input, the residual stream after each of the first n_layer - 1 blocks (input + mixer outputs
        so far, in the input dtype), and the final normalised output (the usual return value).
        """
        check_channel_last(hidden_states, self.d_model, type(self).__name__)
        in_dtype = hidden_states.dtype
        all_hidden = [hidden_states] if return_all else None
        residual = None
        use_ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            if use_ckpt:
                hidden_states, residual = checkpoint(layer, hidden_states, residual, use_reentrant=False)
            else:
                hidden_states, residual = layer(hidden_states, residual)
            if return_all and i < self.n_layer - 1:
                all_hidden.append((residual + hidden_states).to(in_dtype))
        residual = residual + self.drop_path_f(hidden_states)
        if self.residual_in_fp32:
            residual = residual.float()
        out = self.norm_f(residual).to(in_dtype)
        if return_all:
            all_hidden.append(out)
            return all_hidden
        return out
