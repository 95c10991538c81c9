"""Vision backbones (timm style); importing this package registers them with timm."""

from .umamba import UMamba, VMambaUNet  # noqa: F401  (registers the segmentation nets)
from .vim import VisionMamba
from .vmamba import VMamba

__all__ = ["VMamba", "VisionMamba"]
