"""Speech models (timm style); importing this package registers them with timm.

Example: `timm.create_model("conmamba_ctc_small", num_classes=29)`.
"""

from .conmamba import ConMamba

__all__ = ["ConMamba"]
