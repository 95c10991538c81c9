"""`mamba-suite bench bio`: Caduceus-PS training steps at long DNA lengths, our Triton scan vs mamba-ssm's.

One process, one model definition (`CaduceusForMaskedLM`, rcps, d_model 256 x 16 layers by default), bf16
autocast, AdamW, masked-LM loss on 15% of the tokens:

1. backends: a full training step (forward + backward + optimizer) at 131,072 tokens, batch 2 and 8, with
   the selective scan on `backend="triton"` (ours, impl "ours") and on `backend="mamba_ssm"` (the peer's
   CUDA kernel, impl "mamba_ssm"); everything else in the model is identical. Activation checkpointing
   per block is on by default (`--grad_ckpt`), since 8 x 131k tokens does not fit without it.
2. max length: batch 1 on our backend, doubling L from --min_len until a step runs out of memory or
   --max_len is reached (goal: >= 1M tokens).

Timing: CUDA events around each step after `--warmup` steps, median of `--iters` (one timed step in the
length sweep); peak memory = torch.cuda.max_memory_allocated over the timed steps (weights, gradients, AdamW
state and activations). An OOM is recorded as status "OOM", other failures as "error" (message kept),
never a crash. `--time_budget` skips what would start after the budget (status "error", reason
"skipped: time budget"). Writes `<out>/bio.json` (the suite's benchmark schema) and `<out>/bio.md`, and
prints the table last. `--device cpu --smoke` runs a tiny model at tiny lengths (fp32, reference scan)
to check the script itself.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from ..core.benchtools import elapsed_ms, failed_cases, free_memory, is_oom, package_versions, write_result

__all__ = ["main", "run", "markdown"]

IMPLS = {"triton": "ours", "reference": "ours", "mamba_ssm": "mamba_ssm"}  # backend -> impl


def _versions() -> dict:
    return package_versions("triton", "mamba_ssm")


class _Step:
    """One MLM training step of a fresh Caduceus-PS model (same seed, hence same weights, for every case)."""

    def __init__(self, d_model: int, n_layer: int, batch: int, length: int, backend: str, grad_ckpt: bool,
                 dtype: torch.dtype | None, device: torch.device) -> None:
        from .models.caduceus import CaduceusForMaskedLM
        from .tasks import mask_tokens

        torch.manual_seed(0)
        self.model = CaduceusForMaskedLM(d_model=d_model, n_layer=n_layer, rcps=True, backend=backend,
                                         grad_checkpointing=grad_ckpt).to(device).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=device.type == "cuda")
        g = torch.Generator(device="cpu").manual_seed(1)
        ids = torch.randint(7, 11, (batch, length), generator=g)
        masked, targets = mask_tokens(ids, 0.15, g)
        self.ids, self.targets = masked.to(device), targets.to(device)
        self.dtype, self.device = dtype, device

    def __call__(self) -> None:
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            logits = self.model(self.ids)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), self.targets.reshape(-1),
                                   ignore_index=-100)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def measure(make_step, device: torch.device, warmup: int, iters: int) -> dict:
    """Build a step, warm it up, time `iters` calls: {"status", "step_ms" (median), "peak_mem_mb"} or OOM/error."""
    step = None
    try:
        step = make_step()
        for _ in range(warmup):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        times = [elapsed_ms(step, device) for _ in range(iters)]
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        return {"status": "ok", "step_ms": statistics.median(times), "peak_mem_mb": peak}
    except Exception as err:  # noqa: BLE001 - every failure becomes a row, the run goes on
        if is_oom(err):
            return {"status": "OOM", "step_ms": None, "peak_mem_mb": None}
        return {"status": "error", "step_ms": None, "peak_mem_mb": None,
                "error": f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"}
    finally:
        del step
        free_memory(device)


def run(args: argparse.Namespace, device: torch.device, command: str) -> dict:
    """All cases of the benchmark -> the schema's dict (see the module docs)."""
    dtype = None if args.dtype == "fp32" else torch.bfloat16
    deadline = time.perf_counter() + args.time_budget
    tag = f"ps{args.d_model}x{args.n_layer}"
    ckpt = "ckpt" if args.grad_ckpt else "nockpt"
    cases, ratios = [], []

    def case(name: str, impl: str, shape: dict, backend: str, warmup: int, iters: int) -> dict:
        row = {"name": name, "impl": impl, "shape": shape, "backend": backend, "grad_ckpt": bool(args.grad_ckpt)}
        if time.perf_counter() > deadline:
            row.update(status="error", step_ms=None, peak_mem_mb=None, error="skipped: time budget")
        else:
            row.update(measure(lambda: _Step(args.d_model, args.n_layer, shape["batch"], shape["length"], backend,
                                             args.grad_ckpt, dtype, device), device, warmup, iters))
        if row["step_ms"]:
            row["tokens_per_s"] = shape["batch"] * shape["length"] / (row["step_ms"] / 1e3)
        cases.append(row)
        mem = f", {row['peak_mem_mb']:.0f} MB" if row["peak_mem_mb"] else ""
        print(f"  {name}: {row['status']}" + (f" {row['step_ms']:.1f} ms{mem}" if row["step_ms"]
                                                else f" {row.get('error', '')}"), flush=True)
        return row

    for batch in args.batches:
        shape = {"batch": batch, "length": args.length, "d_model": args.d_model, "n_layer": args.n_layer}
        rows = {b: case(f"{tag}_L{args.length}_b{batch}_{b}_{ckpt}", IMPLS[b], shape, b, args.warmup, args.iters)
                for b in args.backends}
        ours = rows.get(args.backends[0])
        for b, peer in rows.items():
            if b != args.backends[0] and ours["step_ms"] and peer["step_ms"]:
                for metric in ("step_ms", "peak_mem_mb"):
                    if ours.get(metric) and peer.get(metric):
                        ratios.append({"name": f"{peer['name']} / {ours['name']} ({metric})", "ours": ours["name"],
                                       "peer": peer["name"], "metric": metric, "ratio": peer[metric] / ours[metric]})
    longest, length = None, args.min_len
    while length <= args.max_len:
        shape = {"batch": 1, "length": length, "d_model": args.d_model, "n_layer": args.n_layer}
        row = case(f"{tag}_L{length}_b1_{args.backends[0]}_{ckpt}_maxlen", IMPLS[args.backends[0]], shape,
                   args.backends[0], 1, 1)
        if row["status"] != "ok":
            break
        longest, length = length, length * 2
    return {"benchmark": "bio", "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "versions": _versions(), "command": command, "dtype": args.dtype,
            "model": f"Caduceus-PS d_model {args.d_model} x {args.n_layer} layers (rcps, MLM head), AdamW",
            "max_trained_length": longest, "max_len_cap": args.max_len, "cases": cases, "ratios": ratios}


def markdown(result: dict) -> str:
    """The result as a markdown table (+ the ratios and the longest trained length)."""
    lines = [f"{result['device']} · {result['date']} · torch {result['versions']['torch']} · triton "
             f"{result['versions'].get('triton')} · mamba-ssm {result['versions'].get('mamba_ssm')} · "
             f"{result['dtype']} · {result['model']}", "",
             "| case | impl | batch x length | status | step ms | tokens/s | peak MB |", "|---|---|---|---|---:|---:|---:|"]
    for c in result["cases"]:
        s = c["shape"]
        ms = f"{c['step_ms']:.1f}" if c["step_ms"] else ""
        tps = f"{c['tokens_per_s']:.3g}" if c.get("tokens_per_s") else ""
        mem = f"{c['peak_mem_mb']:.0f}" if c.get("peak_mem_mb") else ""
        status = c["status"] if c["status"] != "error" else f"error: {c.get('error', '')[:80]}"
        lines.append(f"| {c['name']} | {c['impl']} | {s['batch']} x {s['length']:,} | {status} | {ms} | {tps} | {mem} |")
    if result["ratios"]:
        lines += ["", "| ratio (peer / ours; > 1: ours is faster / smaller) | value |", "|---|---:|"]
        lines += [f"| {r['name']} | {r['ratio']:.2f}x |" for r in result["ratios"]]
    longest = result["max_trained_length"]
    lines += ["", f"Longest sequence that trains at batch 1: {longest:,} tokens" if longest else
              "Longest sequence that trains at batch 1: none of the tried lengths",
              f"(doubling up to the cap {result['max_len_cap']:,})"]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mamba-suite bench bio", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) | cuda:N | cpu (with --smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny model and lengths (CPU check of the script)")
    p.add_argument("--d_model", type=int, default=256)
    p.add_argument("--n_layer", type=int, default=16)
    p.add_argument("--length", type=int, default=131072, help="tokens per sequence for the backend comparison")
    p.add_argument("--batches", default="2,8", help="comma-separated batch sizes for the backend comparison")
    p.add_argument("--backends", default="triton,mamba_ssm", help="ours first, then peers (comma-separated)")
    p.add_argument("--min_len", type=int, default=131072, help="first length of the batch-1 sweep")
    p.add_argument("--max_len", type=int, default=4194304, help="cap of the batch-1 doubling sweep")
    p.add_argument("--grad_ckpt", type=int, choices=(0, 1), default=1, help="per-block activation checkpointing")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="autocast dtype (fp32: no autocast)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--time_budget", type=float, default=240.0, help="seconds; later cases are skipped")
    p.add_argument("--out", default="runs/bench", help="folder for bio.json and bio.md")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry: 1 when one of our cases failed with an error (not OOM, not skipped), else 0; a missing or
    failing peer shows in the table without failing the run."""
    parser = _parser()
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available (use --device cpu --smoke to check the script on CPU)")
    if device.type != "cuda" and not args.smoke:
        parser.error("on CPU only --smoke sizes make sense; add --smoke")
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in args.backends if b not in IMPLS]
    if unknown or not args.backends:
        parser.error(f"--backends: unknown {unknown}; choose from {sorted(IMPLS)}")
    if args.smoke:
        args.d_model, args.n_layer, args.length, args.min_len = 16, 2, 64, 64
        args.max_len, args.batches, args.warmup, args.iters = min(args.max_len, 256), "1,2", 1, 1
        if device.type == "cpu":
            args.backends, args.dtype = ["reference"], "fp32"
    try:
        args.batches = [int(b) for b in str(args.batches).split(",") if b.strip()]
    except ValueError:
        parser.error(f"--batches: expected comma-separated ints, got {args.batches!r}")
    if min(args.batches + [args.length, args.min_len, args.max_len, args.d_model, args.n_layer]) < 1:
        parser.error("sizes must be positive")
    command = "mamba-suite bench bio " + " ".join(argv if argv is not None else sys.argv[3:])
    result = run(args, device, command.strip())
    write_result(args.out, "bio", result, markdown(result))
    return 1 if failed_cases(result) else 0
