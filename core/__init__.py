"""Shared building blocks: Mamba mixers, residual blocks, the backbone and the save/load convention.

Heavy, optional pieces (the Lightning CLI, data modules, tasks) live in their own submodules and are
not imported here.
"""

from .blocks import Block, DropPath, MambaBackbone, RMSNorm
from .hub import PretrainedMixin
from .mixers import SS2D, BiMamba, Mamba

__all__ = ["SS2D", "BiMamba", "Block", "DropPath", "Mamba", "MambaBackbone", "PretrainedMixin", "RMSNorm"]
