"""`mamba-suite bench <what>`: benchmarks shipped in the package (never timed tests).

Each benchmark measures ours and its peer in one process and writes JSON + a markdown table.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, function, one-line help); modules are imported only when their benchmark runs.
BENCHMARKS: dict[str, tuple[str, str, str]] = {
    "scan": ("mambasuite.kernels.benchmark", "main_scan",
             "selective scan on a GPU: Triton vs mamba-ssm CUDA (fwd, fwd+bwd, peak memory, exp2 floor)"),
    "scan-cpu": ("mambasuite.kernels.benchmark", "main_scan_cpu",
                 "selective scan on CPU: the PyTorch reference vs a loop-over-L implementation"),
    "scaling": ("mambasuite.core.scaling", "main",
                "Mamba backbone vs an equal-size Transformer over sequence lengths / resolutions (time, memory, plots)"),
    "vision": ("mambasuite.vision.bench", "main",
               "Vim / VMamba vs timm DeiT-Ti and MambaOut: train-step time, throughput, peak memory"),
    "seg3d": ("mambasuite.vision.medseg.bench", "main",
              "3D Mamba segmentation net vs MONAI SwinUNETR / SegResNet: train-step time and peak memory"),
    "audio": ("mambasuite.audio.bench", "main",
              "ConMamba encoder vs torchaudio Conformer at 10/30/120 s: fwd+bwd time and peak memory"),
    "bio": ("mambasuite.bio.bench", "main",
            "Caduceus backbone vs a Transformer of equal size over DNA lengths: time and peak memory"),
}


def _usage() -> str:
    width = max(map(len, BENCHMARKS)) + 2
    rows = "\n".join(f"  {name:<{width}}{text}" for name, (_, _, text) in BENCHMARKS.items())
    return f"usage: mamba-suite bench <benchmark> [options]\n\nbenchmarks:\n{rows}\n"


def main(argv: list[str]) -> int:
    """Dispatch `mamba-suite bench <benchmark> ...`; returns the exit status."""
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"mamba-suite bench: error: unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}",
              file=sys.stderr)
        return 2
    module, func, _ = BENCHMARKS[name]
    return int(getattr(importlib.import_module(module), func)(rest) or 0)
