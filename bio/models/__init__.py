"""Genomics models: Caduceus-Ph, Caduceus-PS (RCPS) and the causal Mamba DNA LM."""

from .caduceus import *  # noqa: F401,F403
from .caduceus import __all__  # noqa: F401
