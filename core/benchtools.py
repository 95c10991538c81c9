"""Pieces every `mamba-suite bench ...` script shares: timing, out-of-memory detection, cleanup, versions.

Benchmarks measure ours and the peer in one process; these helpers make the measurement the same everywhere
(CUDA events on a GPU, perf_counter on a CPU) and record what ran (package versions) in the result JSON.
"""

from __future__ import annotations

import gc
import platform
import time
from importlib.metadata import PackageNotFoundError, version

import torch

__all__ = ["elapsed_ms", "failed_cases", "free_memory", "is_oom", "package_versions", "write_result"]


def is_oom(err: BaseException) -> bool:
    """True when `err` is an out-of-memory failure (CUDA's, or the CPU allocator's)."""
    text = str(err).lower()
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def elapsed_ms(fn, device: torch.device) -> float:
    """Time of one call of `fn` in ms: CUDA events (synchronised at the end) on a GPU, perf_counter on a CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def free_memory(device: torch.device) -> None:
    """Drop unreachable tensors and, on a GPU, the allocator's cache (between cases, so peaks do not leak over)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def package_versions(*packages: str) -> dict[str, str | None]:
    """python, torch and CUDA versions plus each named package's installed version (None when absent)."""
    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__,
                                  "cuda": torch.version.cuda}
    for name in packages:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def write_result(out_dir, name: str, result: dict, table: str) -> None:
    """Write `<out_dir>/<name>.json` and `<name>.md` (atomically), then print the table and where it went."""
    import json
    from pathlib import Path

    from .files import atomic_write

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / f"{name}.json", json.dumps(result, indent=2) + "\n")
    atomic_write(out / f"{name}.md", table + "\n")
    print(table)
    print(f"\nwrote {out / (name + '.json')} and {out / (name + '.md')}")


def failed_cases(result: dict) -> list[dict]:
    """Our cases that errored (not OOM, not skipped for the time budget): a bench exits non-zero on any."""
    return [c for c in result["cases"] if c.get("impl") == "ours" and c.get("status") == "error"
            and not c.get("error", "").startswith("skipped")]
