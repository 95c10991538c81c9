"""PyTorch references of every op: same signatures as the public ops, any device."""

from .add_rms_norm import add_rms_norm_ref
from .causal_conv1d import causal_conv1d_ref
from .selective_scan import selective_scan_ref

__all__ = ["add_rms_norm_ref", "causal_conv1d_ref", "selective_scan_ref"]
