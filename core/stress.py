"""Numerics at extreme length: bf16 forward + backward of a bidirectional backbone vs an fp32 run.

    python -m mambasuite.core.stress --tokens 1048576 --d_model 256 --n_layer 2 --out DIR

Builds a :class:`~mambasuite.core.blocks.MambaBackbone` (``mixer="bimamba"``, fp32 weights), feeds one
random sequence of ``--tokens`` tokens, and runs forward + backward twice with the same weights, input and
output cotangent: once in true fp32 (TF32 off) and once under ``torch.autocast(bfloat16)`` (what bf16-mixed
training does). It checks that the bf16 output and every gradient (input and parameters) are finite, and
compares each with the fp32 run:

* ``norm_rel``: ``||bf16 - fp32|| / ||fp32||`` (the pass criterion, ``--tolerance``, default 5e-2);
* ``max_rel``: ``max |bf16 - fp32| / max |fp32|`` (reported).

Writes ``DIR/stress.json`` (configuration, finiteness, per-tensor errors, worst error, pass/fail, time and
peak memory of each run) and ``DIR/stress.md``; exits 1 when a value is non-finite or an error exceeds the
tolerance. ``--device cpu`` with a small ``--tokens`` is a smoke test of the script itself.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

from .blocks import MambaBackbone
from .files import atomic_write
from .benchtools import package_versions

__all__ = ["main", "run_stress"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fwd_bwd(model: MambaBackbone, x: torch.Tensor, cotangent: torch.Tensor, bf16: bool) -> dict:
    """One forward + backward; returns output, input grad, parameter grads (fp32), seconds, peak MiB."""
    device = x.device
    model.zero_grad(set_to_none=True)
    leaf = x.detach().clone().requires_grad_()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(leaf)
    (out.float() * cotangent).sum().backward()
    _sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None
    grads = {"input": leaf.grad.detach()}
    grads.update({name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None})
    return {"out": out.detach(), "grads": grads, "seconds": seconds, "peak_mem_mb": peak}


def _errors(ours: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    diff = ours.float() - ref.float()
    ref_norm = ref.float().norm().item()
    ref_max = ref.float().abs().max().item()
    return {"norm_rel": diff.norm().item() / max(ref_norm, 1e-30),
            "max_rel": diff.abs().max().item() / max(ref_max, 1e-30)}


def run_stress(tokens: int, d_model: int, n_layer: int, *, batch: int = 1, d_state: int = 16, expand: int = 2,
               mixer: str = "bimamba", device: str = "cuda", seed: int = 0, grad_checkpointing: bool = False,
               tolerance: float = 5e-2) -> dict:
    """Run the fp32 and bf16 passes and return the report dict (see the module docstring)."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available (use --device cpu for a smoke run)")
    if tokens < 1 or batch < 1:
        raise ValueError(f"tokens and batch must be >= 1, got tokens={tokens}, batch={batch}")
    torch.manual_seed(seed)
    # A true fp32 reference: TF32 matmuls would already round to ~10 mantissa bits.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = MambaBackbone(d_model=d_model, n_layer=n_layer, d_state=d_state, expand=expand, mixer=mixer,
                          grad_checkpointing=grad_checkpointing).to(dev).train()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, tokens, d_model, generator=g).to(dev)
    cotangent = (torch.randn(batch, tokens, d_model, generator=g) / math.sqrt(batch * tokens)).to(dev)

    ref = _fwd_bwd(model, x, cotangent, bf16=False)
    low = _fwd_bwd(model, x, cotangent, bf16=True)
    finite = {"bf16_out": bool(torch.isfinite(low["out"]).all()),
              "bf16_grads": all(bool(torch.isfinite(t).all()) for t in low["grads"].values()),
              "fp32_out": bool(torch.isfinite(ref["out"]).all()),
              "fp32_grads": all(bool(torch.isfinite(t).all()) for t in ref["grads"].values())}
    errors = {"out": _errors(low["out"], ref["out"])}
    errors.update({f"grad:{k}": _errors(low["grads"][k], ref["grads"][k]) for k in ref["grads"]})
    worst_name = max(errors, key=lambda k: errors[k]["norm_rel"])
    worst = errors[worst_name]["norm_rel"]
    passed = all(finite.values()) and math.isfinite(worst) and worst <= tolerance
    return {
        "config": {"tokens": tokens, "batch": batch, "d_model": d_model, "n_layer": n_layer, "d_state": d_state,
                   "expand": expand, "mixer": mixer, "grad_checkpointing": grad_checkpointing, "seed": seed,
                   "backend": "auto (triton on CUDA, reference on CPU)",
                   "parameters": sum(p.numel() for p in model.parameters())},
        "finite": finite, "errors": errors, "worst": {"tensor": worst_name, "norm_rel": worst,
                                                        "max_rel": max(e["max_rel"] for e in errors.values())},
        "tolerance": tolerance, "passed": passed,
        "cases": [
            {"name": f"{mixer} L={tokens} d{d_model} x{n_layer} fp32", "impl": "ours", "shape": {"tokens": tokens},
             "status": "ok", "fwd_bwd_ms": ref["seconds"] * 1e3, "peak_mem_mb": ref["peak_mem_mb"]},
            {"name": f"{mixer} L={tokens} d{d_model} x{n_layer} bf16-autocast", "impl": "ours",
             "shape": {"tokens": tokens}, "status": "ok", "fwd_bwd_ms": low["seconds"] * 1e3,
             "peak_mem_mb": low["peak_mem_mb"]},
        ],
    }


def _markdown(report: dict) -> str:
    c = report["config"]
    lines = [f"# Stress: {c['mixer']} backbone, {c['tokens']:,} tokens, d_model {c['d_model']}, {c['n_layer']} layers",
             "", f"{report['date']} · {report['device']} · torch {report['versions']['torch']}", "",
             f"`{report['command']}`", "",
             f"- finite: {report['finite']}",
             f"- worst ||bf16 - fp32|| / ||fp32||: {report['worst']['norm_rel']:.2e} ({report['worst']['tensor']}); "
             f"tolerance {report['tolerance']:.0e}; worst max-abs relative {report['worst']['max_rel']:.2e}",
             f"- result: {'PASS' if report['passed'] else 'FAIL'}", "",
             "| run | fwd+bwd ms | peak MiB |", "|---|---|---|"]
    for case in report["cases"]:
        peak = f"{case['peak_mem_mb']:.0f}" if case["peak_mem_mb"] is not None else "-"
        lines.append(f"| {case['name']} | {case['fwd_bwd_ms']:.0f} | {peak} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; 0 when everything is finite and within tolerance, 1 otherwise."""
    parser = argparse.ArgumentParser(prog="python -m mambasuite.core.stress", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1 << 20)
    parser.add_argument("--d_model", type=int, default=256)
    parser.add_argument("--n_layer", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--d_state", type=int, default=16)
    parser.add_argument("--expand", type=int, default=2)
    parser.add_argument("--mixer", default="bimamba", choices=MambaBackbone.MIXERS)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grad_checkpointing", action="store_true", help="recompute blocks in backward")
    parser.add_argument("--tolerance", type=float, default=5e-2)
    parser.add_argument("--out", required=True, help="folder for stress.json and stress.md")
    args = parser.parse_args(argv)
    try:
        report = run_stress(args.tokens, args.d_model, args.n_layer, batch=args.batch, d_state=args.d_state,
                            expand=args.expand, mixer=args.mixer, device=args.device, seed=args.seed,
                            grad_checkpointing=args.grad_checkpointing, tolerance=args.tolerance)
    except torch.cuda.OutOfMemoryError as err:
        # Recorded, not a crash: the JSON says which size did not fit (retry with --grad_checkpointing).
        report = {"config": vars(args), "status": "OOM", "passed": False, "error": str(err).splitlines()[0],
                  "finite": {}, "errors": {}, "worst": {}, "tolerance": args.tolerance, "cases": []}
    except (RuntimeError, ValueError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    dev = torch.device(args.device)
    versions = package_versions("triton")
    report = {"benchmark": "stress", "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
              "versions": versions,
              "command": " ".join(["python -m mambasuite.core.stress", *(argv if argv is not None else sys.argv[1:])]),
              **report}
    out = Path(args.out)
    atomic_write(out / "stress.json", json.dumps(report, indent=2) + "\n")
    text = _markdown(report) if report.get("status") != "OOM" else f"# Stress: OOM\n\n{report['error']}\n"
    atomic_write(out / "stress.md", text)
    print(text)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
