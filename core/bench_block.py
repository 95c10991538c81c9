"""`mamba-suite bench block`: one whole Vim-Ti block, ours vs the same block on the peer's ops, same process.

The block is `core.Block` (fused add + RMSNorm, residual in fp32) around a Vim v2 `BiMamba` mixer (internal,
combine "mean", d_state 16, expand 2, d_conv 4) at d_model 192. The two sides differ only in `backend`:
  ours       backend="triton": Triton causal conv1d, one-launch bidirectional scan, Triton add + RMSNorm;
  mamba_ssm  backend="mamba_ssm": causal-conv1d's CUDA conv, two mamba-ssm CUDA scans (the reverse one on
             flipped copies, as Vim runs it), mamba-ssm's Triton fused add + RMSNorm.
Same weights, bf16 autocast, batch 64 x 197 tokens by default; fwd and fwd+bwd medians of
`triton.testing.do_bench`, peak memory of fwd+bwd.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import time
from pathlib import Path

import torch

from .blocks import Block
from .mixers import BiMamba

IMPLS = (("ours", "triton"), ("mamba_ssm", "mamba_ssm"))


def make_block(d_model: int, backend: str) -> Block:
    """A Vim v2 block: Block(RMSNorm) around BiMamba(internal, combine="mean")."""
    return Block(d_model, BiMamba(d_model, d_state=16, d_conv=4, expand=2, combine="mean", backend=backend))


def _timings(run, params, device: torch.device) -> dict:
    """fwd / fwd+bwd ms and peak MiB: do_bench medians on CUDA; one timed call each on CPU (the --smoke check)."""
    if device.type != "cuda":
        out = {}
        with torch.no_grad():
            start = time.perf_counter()
            run()
            out["fwd_ms"] = (time.perf_counter() - start) * 1e3
        start = time.perf_counter()
        run().backward()
        out["fwd_bwd_ms"] = (time.perf_counter() - start) * 1e3
        return out
    import triton

    out = {}
    with torch.no_grad():
        out["fwd_ms"] = triton.testing.do_bench(run, warmup=10, rep=100, return_mode="median")
    # (do_bench returns the mean unless told otherwise; until session 11 these figures were means, see BENCHMARKS.md)
    out["fwd_bwd_ms"] = triton.testing.do_bench(lambda: run().backward(), grad_to_none=params, warmup=10, rep=100,
                                                return_mode="median")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run().backward()
    torch.cuda.synchronize()
    out["peak_mem_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    return out


def bench_block(batch: int, length: int, d_model: int, device: str = "cuda") -> dict:
    import triton

    device = torch.device(device)
    torch.manual_seed(0)
    reference = make_block(d_model, "triton").to(device)
    x = torch.randn(batch, length, d_model, device=device)
    residual = torch.randn(batch, length, d_model, device=device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (Triton interpreter, smoke run)"
    result = {"benchmark": "block", "date": _dt.date.today().isoformat(), "device": name,
              "versions": {"torch": torch.__version__, "triton": triton.__version__}, "cases": [], "ratios": [],
              "setup": f"Vim v2 block, d_model {d_model}, batch {batch}, {length} tokens, bf16 autocast"}
    for impl, backend in IMPLS:
        block = make_block(d_model, backend).to(device)
        block.load_state_dict(reference.state_dict())
        xs, rs = x.clone().requires_grad_(), residual.clone().requires_grad_()

        def run():
            with torch.autocast(device.type, torch.bfloat16):
                out, new_residual = block(xs, rs)
            return out.float().sum() + new_residual.float().sum()

        case = dict(name=f"{batch}x{length}x{d_model}/{impl}", impl=impl, backend=backend,
                    shape=dict(batch=batch, L=length, d_model=d_model), status="ok")
        try:
            case.update(_timings(run, [xs, rs, *block.parameters()], device))
        except Exception as err:  # noqa: BLE001 - a missing peer is reported, not fatal
            case.update(status="error", error=str(err)[:300])
        result["cases"].append(case)
    ours, peer = result["cases"]
    if ours["status"] == peer["status"] == "ok":
        for metric in ("fwd_ms", "fwd_bwd_ms", "peak_mem_mb"):
            if ours.get(metric) and peer.get(metric):
                result["ratios"].append(dict(name=f"block:{metric}", ours=ours["name"], peer=peer["name"],
                                             metric=metric, ratio=peer[metric] / ours[metric]))
    return result


def markdown(result: dict) -> str:
    lines = [f"{result['setup']} · {result['device']} · {result['date']} · torch {result['versions']['torch']}", "",
             "| impl | fwd ms | fwd+bwd ms | peak MiB | status |", "|---|---:|---:|---:|---|"]
    for c in result["cases"]:
        f = lambda k: f"{c[k]:.3f}" if c.get(k) is not None else "-"  # noqa: E731
        lines.append(f"| {c['impl']} | {f('fwd_ms')} | {f('fwd_bwd_ms')} | {f('peak_mem_mb')} | {c['status']} |")
    lines += [""] + [f"- {r['metric']}: mamba_ssm / ours = {r['ratio']:.2f}x" for r in result["ratios"]]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    import json

    p = argparse.ArgumentParser(prog="mamba-suite bench block", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--length", type=int, default=197)
    p.add_argument("--d_model", type=int, default=192)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --smoke: Triton's interpreter)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (batch 1, 5 tokens, d_model 8): a script check")
    p.add_argument("--out", default="runs/bench")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("needs a CUDA GPU (the peer block runs mamba-ssm's CUDA kernels); `--device cpu --smoke` checks the "
                "script")
    if args.device == "cpu":
        if not args.smoke:
            p.error("--device cpu runs Triton's interpreter: only with --smoke")
        os.environ["TRITON_INTERPRET"] = "1"  # must be set before triton is first imported to take effect
    sizes = (1, 5, 8) if args.smoke else (args.batch, args.length, args.d_model)
    result = bench_block(*sizes, device=args.device)
    result["command"] = "mamba-suite bench block " + " ".join(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "block.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (out / "block.md").write_text(table + "\n")
    print(table)
    return 0 if result["cases"][0]["status"] == "ok" else 1
