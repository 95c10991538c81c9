"""`mamba-suite bench <what>`: benchmarks shipped in the package (never timed tests).

Each benchmark measures ours and its peer in one process and writes JSON + a markdown table.
`--compare BASELINE.json [--threshold 0.05]` (taken off the benchmark's own arguments) then gates the run on
core.regression: the exit status is non-zero when a case got slower than the threshold.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

# name -> (module, function, one-line help); modules are imported only when their benchmark runs.
BENCHMARKS: dict[str, tuple[str, str, str]] = {
    "scan": ("mambasuite.kernels.benchmark", "main_scan",
             "selective scan on a GPU: Triton vs mamba-ssm CUDA (fwd, fwd+bwd, peak memory, exp2 floor)"),
    "scan-cpu": ("mambasuite.kernels.benchmark", "main_scan_cpu",
                 "selective scan on CPU: the PyTorch reference vs a loop-over-L implementation"),
    "norm": ("mambasuite.kernels.benchmark", "main_norm",
             "fused residual add + RMSNorm (Triton) vs the eager torch composition, fwd and fwd+bwd"),
    "conv": ("mambasuite.kernels.bench_conv", "main",
             "causal depthwise conv1d (W=4, bias, SiLU, bf16): Triton vs causal-conv1d CUDA vs torch F.conv1d"),
    "bidir": ("mambasuite.kernels.bench_multi", "main_bidir",
              "bidirectional scan: fused one-launch Triton vs two own calls vs two mamba-ssm calls with flips"),
    "cross2d": ("mambasuite.kernels.bench_multi", "main_cross2d",
                "VMamba 2D four-route scan: fused Triton vs the cross-scan copy + scan + merge pipeline"),
    "block": ("mambasuite.core.bench_block", "main",
              "one Vim-Ti block (BiMamba + fused add-norm), ours vs the same block on mamba-ssm + causal-conv1d ops"),
    "scaling": ("mambasuite.core.scaling", "main",
                "Mamba backbone vs an equal-size Transformer over sequence lengths / resolutions (time, memory, plots)"),
    "vision": ("mambasuite.vision.bench", "main",
               "Vim / VMamba vs timm DeiT-Ti and MambaOut: train-step time, throughput, peak memory"),
    "seg3d": ("mambasuite.vision.medseg.bench", "main",
              "3D Mamba segmentation net vs MONAI SwinUNETR / SegResNet: train-step time and peak memory"),
    "audio": ("mambasuite.audio.bench", "main",
              "ConMamba encoder vs torchaudio Conformer at 10/30/120 s: fwd+bwd time and peak memory"),
    "bio": ("mambasuite.bio.bench", "main",
            "Caduceus-PS train step at 131k tokens: Triton vs mamba-ssm scan; longest trainable length at batch 1"),
}


DEFAULT_OUT = "runs/bench"  # the benchmarks' common --out default, passed explicitly when comparing


def _usage() -> str:
    width = max(map(len, BENCHMARKS)) + 2
    rows = "\n".join(f"  {name:<{width}}{text}" for name, (_, _, text) in BENCHMARKS.items())
    return (f"usage: mamba-suite bench <benchmark> [options] [--compare BASELINE.json [--threshold 0.05]]\n\n"
            f"benchmarks:\n{rows}\n\n--compare: after the run, compare <out>/<benchmark>.json with the baseline "
            f"case by case and exit non-zero if a case is slower by more than --threshold (default 0.05).\n")


def split_compare_args(argv: list[str]) -> tuple[list[str], str | None, float | None]:
    """Take `--compare PATH` and `--threshold T` (or `--opt=value`) out of argv.

    Returns (the benchmark's own argv, baseline path or None, threshold or None); ValueError on a missing or bad
    value.
    """
    rest, found = [], {"--compare": None, "--threshold": None}
    i = 0
    while i < len(argv):
        arg = argv[i]
        key, eq, value = arg.partition("=")
        if key in found:
            if not eq:
                if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                    raise ValueError(f"{key} needs a value")
                value = argv[i + 1]
                i += 1
            found[key] = value
        else:
            rest.append(arg)
        i += 1
    threshold = found["--threshold"]
    if threshold is not None:
        try:
            threshold = float(threshold)
        except ValueError:
            raise ValueError(f"--threshold must be a number, got {threshold!r}") from None
        if threshold < 0:
            raise ValueError(f"--threshold must be >= 0, got {threshold}")
        if found["--compare"] is None:
            raise ValueError("--threshold only applies with --compare BASELINE.json")
    return rest, found["--compare"], threshold


def _out_dir(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--out" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--out="):
            return arg.split("=", 1)[1]
    return None


def _compare(name: str, argv: list[str], run, baseline: str, threshold: float | None) -> int:
    """Run the benchmark with an explicit --out, then gate its JSON against `baseline`."""
    from .regression import DEFAULT_THRESHOLD, gate

    if not Path(baseline).is_file():  # fail before spending the benchmark's time
        print(f"mamba-suite bench: error: --compare: baseline file not found: {baseline}", file=sys.stderr)
        return 2
    out = _out_dir(argv)
    if out is None:
        out = DEFAULT_OUT
        argv = [*argv, "--out", out]
    started = time.time()
    status = run(argv)
    candidates = [Path(out) / f"{stem}.json" for stem in dict.fromkeys((name, name.replace("-", "_")))]
    written = [p for p in candidates if p.is_file() and p.stat().st_mtime >= started - 1]
    if not written:
        print(f"mamba-suite bench: error: --compare: the benchmark wrote no {candidates[0]} in this run",
              file=sys.stderr)
        return status or 2
    print(f"\ncomparing {written[0]} with {baseline}")
    verdict = gate(written[0], baseline, DEFAULT_THRESHOLD if threshold is None else threshold)
    return status or verdict


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
    try:
        rest, baseline, threshold = split_compare_args(rest)
    except ValueError as err:
        print(f"mamba-suite bench: error: {err}", file=sys.stderr)
        return 2
    module, func, _ = BENCHMARKS[name]

    def run(args: list[str]) -> int:
        return int(getattr(importlib.import_module(module), func)(args) or 0)

    if baseline is None:
        return run(rest)
    return _compare(name, rest, run, baseline, threshold)
