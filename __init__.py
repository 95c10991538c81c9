"""mamba-suite: Mamba backbones with Triton kernels and Lightning pipelines."""

__version__ = "0.1.0"
