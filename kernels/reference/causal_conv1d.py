"""PyTorch reference of the depthwise causal conv1d used in front of every Mamba scan."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import check_causal_conv1d_args


def causal_conv1d_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      activation: str | None = None, *, reverse: bool = False,
                      initial_states: torch.Tensor | None = None, return_final_states: bool = False):
    """Depthwise causal convolution, optionally followed by SiLU (causal-conv1d 1.7's `causal_conv1d_fn`).

    out[b, d, t] = act(bias[d] + sum_k weight[d, k] * xs[b, d, t + k])  with xs = cat(h0, x) along L,
    h0 = `initial_states` (the W-1 inputs before t=0) or zeros.

    Args:
        x: (batch, dim, L) in any memory layout (channel-first or a channel-last view).
        weight: (dim, W) with W in 2..4; bias: (dim,) or None (any float dtypes).
        activation: None, "silu" or "swish" (same thing).
        reverse: anti-causal version (out[t] looks at x[t .. t+W-1] with the taps mirrored), i.e.
            flip(conv(flip(x))) without the flips, for the reverse direction of bidirectional mixers.
            Streaming (initial/final states) is causal only.
        initial_states: (batch, dim, W-1) in x's dtype, or None (zeros).
        return_final_states: also return the last W-1 inputs of xs, (batch, dim, W-1) in x's dtype:
            the `initial_states` of the next chunk (zero-padded on the left when L < W-1 and no h0).
    Returns:
        out (batch, dim, L) in x's dtype, or (out, final_states). Computed in float32 (float64 for
        float64 x); gradients flow to x, weight, bias and initial_states.
    """
    check_causal_conv1d_args(x, weight, bias, activation, "reference", reverse=reverse,
                             initial_states=initial_states, return_final_states=return_final_states)
    width = weight.shape[1]
    compute = torch.promote_types(x.dtype, torch.float32)
    w = weight.to(compute)[:, None, :]
    b = bias.to(compute) if bias is not None else None
    xc = x.to(compute)
    if reverse:
        out = F.conv1d(F.pad(xc, (0, width - 1)), w.flip(-1), b, groups=x.shape[1])
    else:
        head = initial_states.to(compute) if initial_states is not None else xc.new_zeros(*x.shape[:2], width - 1)
        xs = torch.cat([head, xc], dim=-1)  # (batch, dim, W-1+L)
        out = F.conv1d(xs, w, b, groups=x.shape[1])
    out = (F.silu(out) if activation in ("silu", "swish") else out).to(x.dtype)
    if not return_final_states:
        return out
    return out, xs[..., xs.shape[-1] - (width - 1):].to(x.dtype)
