"""Suite-wide test setup."""

import os

import torch

# Without a GPU, Triton kernels run in Triton's CPU interpreter. The flag must be set before any
# @triton.jit function is created, i.e. before mambasuite.kernels.triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
