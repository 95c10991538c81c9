"""PyTorch reference of the depthwise causal conv1d used in front of every Mamba scan."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import check_causal_conv1d_args


def causal_conv1d_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      activation: str | None = None, *, reverse: bool = False) -> torch.Tensor:
    """Depthwise causal convolution, optionally followed by SiLU.

    out[b, d, t] = act(bias[d] + sum_k weight[d, k] * x[b, d, t - (W-1) + k])   (zeros before t=0)

    Args:
        x: (batch, dim, L).
        weight: (dim, W) with W in 2..4.
        bias: (dim,) or None.
        activation: None, "silu" or "swish" (same thing).
        reverse: anti-causal version (out[t] looks at x[t .. t+W-1] with the taps mirrored), i.e.
            flip(conv(flip(x))) without the flips, for the reverse direction of bidirectional mixers.
    Returns:
        (batch, dim, L) in x's dtype.
    """
    check_causal_conv1d_args(x, weight, bias, activation, "reference")
    width = weight.shape[1]
    w = weight.to(x.dtype)[:, None, :]
    b = bias.to(x.dtype) if bias is not None else None
    if reverse:
        out = F.conv1d(F.pad(x, (0, width - 1)), w.flip(-1), b, groups=x.shape[1])
    else:
        out = F.conv1d(F.pad(x, (width - 1, 0)), w, b, groups=x.shape[1])
    return F.silu(out) if activation in ("silu", "swish") else out
