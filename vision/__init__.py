"""mamba-suite vision: Vim and VMamba classifiers (registered with timm on import), Lightning task and data."""

from . import models  # noqa: F401  (registers the timm models)
