"""Vision backbones (timm style); importing this package registers them with timm."""

from .vim import VisionMamba
from .vmamba import VMamba

__all__ = ["VMamba", "VisionMamba"]
