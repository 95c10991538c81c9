"""`mamba-suite bench conv`: the causal depthwise conv1d in front of every Mamba scan.

Ours (the Triton kernel) vs causal-conv1d's CUDA op (`backend="mamba_ssm"`, the conv mamba-ssm's Mamba block
runs) vs torch (F.conv1d on the left-padded input, then SiLU: what a block runs without a fused kernel).
Width 4, bias, SiLU; bf16 x under bf16 autocast with fp32 weight and bias (a Mamba block's setting), x
channel-first (batch, dim, L) and channel-last (the transposed view of a (batch, L, dim) tensor). Forward
and forward+backward median ms (triton.testing.do_bench, CUDA events after warm-up) and the peak memory of a
forward+backward step, all in one process, so the ratios (peer / ours) compare like with like.

Writes `<out>/conv.json` (the suite's bench schema) and `<out>/conv.md`, and prints the table last.
`--device cpu --smoke` runs tiny shapes on CPU (Triton's interpreter; times are meaningless) for tests.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
import torch.nn.functional as F

from .benchmark import _max_rel
from .benchmark import _peak_mib as peak_mib_cuda

DEFAULT_SHAPES = "64x384x197,8x1536x2048,2x1024x131072"  # Vim-Ti tokens, an LM batch, a 131k DNA sequence
SMOKE_SHAPES = "2x16x33,1x8x5"
LAYOUTS = ("channel_first", "channel_last")
IMPLS = ("ours", "causal_conv1d", "torch")
PEERS = ("causal_conv1d", "torch")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    """'64x384x197,...' -> [(batch, dim, L), ...]."""
    shapes = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        parts = item.lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"--shapes: expected BATCHxDIMxL with positive integers, got {item!r}")
        shapes.append(tuple(int(p) for p in parts))
    if not shapes:
        raise ValueError("--shapes: no shape given")
    return shapes


def torch_conv(x, weight, bias, activation="silu"):
    """The unfused PyTorch path: F.conv1d on the input padded with W-1 zeros on the left, then SiLU."""
    width = weight.shape[1]
    out = F.conv1d(F.pad(x, (width - 1, 0)), weight[:, None, :], bias, groups=x.shape[1])
    return F.silu(out) if activation else out


def _impl(name: str):
    """impl name -> fn(x, weight, bias) -> out (x: (batch, dim, L), weight: (dim, W), bias: (dim,))."""
    from . import causal_conv1d

    if name == "torch":
        return torch_conv
    backend = {"ours": "triton", "causal_conv1d": "mamba_ssm"}[name]
    return lambda x, w, b: causal_conv1d(x, w, b, "silu", backend=backend)


def make_inputs(shape, layout: str, dtype, width: int, device, seed: int = 0):
    """x (and the output gradient) in `layout` and `dtype`; weight (dim, W) and bias (dim,) fp32, as
    nn.Conv1d parameters are; all leaves require grad."""
    batch, dim, length = shape
    g = torch.Generator(device=device).manual_seed(seed)

    def rnd(*size, scale=1.0):
        return torch.randn(*size, generator=g, device=device) * scale

    if layout == "channel_last":
        x = rnd(batch, length, dim).to(dtype).transpose(1, 2)
        grad = rnd(batch, length, dim).to(dtype).transpose(1, 2)
    else:
        x = rnd(batch, dim, length).to(dtype)
        grad = rnd(batch, dim, length).to(dtype)
    weight = rnd(dim, width, scale=width ** -0.5)
    bias = rnd(dim, scale=0.1)
    return [t.requires_grad_() for t in (x, weight, bias)], grad


def _median_ms(fn, device, repeats: int, leaves=()) -> float:
    """Median milliseconds of fn(): CUDA events after warm-up (do_bench), or wall clock on CPU."""
    if device.type == "cuda":
        import triton

        return triton.testing.do_bench(fn, grad_to_none=list(leaves) or None, return_mode="median")
    fn()  # warm-up (compiles / traces)
    times = []
    for _ in range(repeats):
        for t in leaves:
            t.grad = None
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _peak_mib(fn, device) -> float | None:
    """Peak memory above what was allocated before fn() (None on CPU: not tracked)."""
    if device.type != "cuda":
        fn()
        return None
    return peak_mib_cuda(fn, device)


def bench_case(shape, layout: str, impl: str, dtype, width: int, device, repeats: int, check: bool) -> dict:
    """One (shape, layout, impl) case in the bench schema; OOM and errors are recorded, not raised."""
    batch, dim, length = shape
    shape_txt = "x".join(map(str, shape))
    case = {"name": f"{shape_txt}/{layout}/{impl}", "impl": impl, "layout": layout,
            "shape": {"batch": batch, "dim": dim, "L": length, "W": width}, "status": "ok",
            "fwd_ms": None, "fwd_bwd_ms": None, "peak_mem_mb": None}
    leaves, grad = make_inputs(shape, layout, dtype, width, device)
    fn = _impl(impl)
    autocast = torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32)

    def fwd():
        with autocast:
            return fn(*leaves)

    def fwd_bwd():
        fwd().backward(grad)

    try:
        with torch.no_grad():
            case["fwd_ms"] = _median_ms(fwd, device, repeats)
        case["fwd_bwd_ms"] = _median_ms(fwd_bwd, device, repeats, leaves)
        for t in leaves:
            t.grad = None
        case["peak_mem_mb"] = _peak_mib(fwd_bwd, device)
        elt = torch.finfo(dtype).bits // 8
        rows = batch * dim * length * elt  # fwd reads x, writes out; bwd reads x and dout, writes dx
        case["fwd_bytes_per_s"] = 2 * rows / (case["fwd_ms"] * 1e-3)
        case["fwd_bwd_bytes_per_s"] = 5 * rows / (case["fwd_bwd_ms"] * 1e-3)
        if check:
            case["max_rel_err"] = check_against_reference(leaves, grad, fn, autocast)
    except torch.OutOfMemoryError:
        case["status"] = "OOM"
    except Exception as err:  # noqa: BLE001 - a missing peer or a failing kernel is a result, not a crash
        case.update(status="error", error=f"{type(err).__name__}: {str(err).splitlines()[0][:300]}")
    return case


def check_against_reference(leaves, grad, fn, autocast) -> dict:
    """Max relative error of out, dx, dweight, dbias vs the fp32 PyTorch reference on the same inputs."""
    from . import causal_conv1d

    for t in leaves:
        t.grad = None
    with autocast:
        out = fn(*leaves)
    out.backward(grad)
    ours = [out.detach()] + [t.grad.clone() for t in leaves]
    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    ref = causal_conv1d(*ref_leaves, "silu", backend="reference")
    ref.backward(grad)
    expected = [ref.detach()] + [t.grad for t in ref_leaves]
    return {name: _max_rel(a, b) for name, a, b in zip(("out", "dx", "dweight", "dbias"), ours, expected)}


def _versions() -> dict:
    found = {"torch": torch.__version__}
    for key, dist in (("triton", "triton"), ("causal_conv1d", "causal-conv1d")):
        try:
            found[key] = version(dist)
        except PackageNotFoundError:
            found[key] = None
    return found


def run(shapes, layouts, impls, dtype_name: str, width: int, device, repeats: int, check: bool) -> dict:
    """Every (shape, layout, impl) case, then the peer/ours ratios per shape and layout."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    result = {"benchmark": "conv", "date": _dt.datetime.now().isoformat(timespec="seconds"), "device": name,
              "versions": _versions(), "dtype": dtype_name, "width": width, "bias": True, "activation": "silu",
              "inputs": f"x {dtype_name} under {dtype_name} autocast, weight and bias fp32", "cases": [],
              "ratios": []}
    for shape in shapes:
        for layout in layouts:
            for impl in impls:
                case = bench_case(shape, layout, impl, DTYPES[dtype_name], width, device, repeats, check)
                if device.type == "cuda":  # the case's tensors are gone: hand their memory back
                    torch.cuda.empty_cache()
                result["cases"].append(case)
                print(f"{case['name']}: {case['status']} fwd {case['fwd_ms']} ms, fwd+bwd {case['fwd_bwd_ms']} ms",
                      flush=True)
    by_name = {c["name"]: c for c in result["cases"]}
    for c in result["cases"]:
        if c["impl"] != "ours" or c["status"] != "ok":
            continue
        stem = c["name"].rsplit("/", 1)[0]
        for peer in PEERS:
            other = by_name.get(f"{stem}/{peer}")
            if other is None or other["status"] != "ok":
                continue
            for metric in ("fwd_ms", "fwd_bwd_ms"):
                result["ratios"].append({"name": f"{stem}/{peer}:{metric}", "ours": c["name"], "peer": other["name"],
                                         "metric": metric, "ratio": other[metric] / c[metric]})
    return result


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def markdown(result: dict) -> str:
    """The cases as a markdown table: times, peak memory, and speed-ups of ours over each peer."""
    v = result["versions"]
    lines = [f"{result['device']} · {result['date']} · torch {v['torch']} · triton {v['triton']} · causal-conv1d "
             f"{v['causal_conv1d']} · W={result['width']}, bias, SiLU · {result['inputs']}", "",
             "| shape (B, D, L) | layout | impl | fwd ms | fwd+bwd ms | peak MiB | fwd TB/s | fwd+bwd TB/s "
             "| ours vs it: fwd | ours vs it: fwd+bwd |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    ratio = {(r["peer"], r["metric"]): r["ratio"] for r in result["ratios"]}
    for c in result["cases"]:
        s = c["shape"]
        head = f"| ({s['batch']}, {s['dim']}, {s['L']}) | {c['layout']} | {c['impl']} |"
        if c["status"] != "ok":
            lines.append(f"{head} {c['status']} {c.get('error', '')} | | | | | | |")
            continue
        speed = [f"{ratio[(c['name'], m)]:.2f}x" if (c["name"], m) in ratio else "" for m in ("fwd_ms", "fwd_bwd_ms")]
        lines.append(f"{head} {c['fwd_ms']:.3f} | {c['fwd_bwd_ms']:.3f} | {_fmt(c['peak_mem_mb'], '.0f')} "
                     f"| {c['fwd_bytes_per_s'] / 1e12:.2f} | {c['fwd_bwd_bytes_per_s'] / 1e12:.2f} "
                     f"| {speed[0]} | {speed[1]} |")
    lines += ["", "TB/s: the minimum bytes (fwd: read x, write out; bwd adds read x and dout, write dx) over the "
              "median time. 'ours vs it' = its time / ours (> 1: ours is faster)."]
    checks = [c for c in result["cases"] if "max_rel_err" in c]
    if checks:
        lines += ["", "Max relative error vs the fp32 PyTorch reference (out, dx, dweight, dbias):", ""]
        lines += [f"- {c['name']}: " + ", ".join(f"{k} {v:.1e}" for k, v in c["max_rel_err"].items()) for c in checks]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """`mamba-suite bench conv [--shapes ...] [--out DIR] [--device cuda|cpu] [--smoke] [--check]`."""
    p = argparse.ArgumentParser(prog="mamba-suite bench conv", description="Causal depthwise conv1d (W=4, bias, "
                                "SiLU): ours (Triton) vs causal-conv1d's CUDA op vs torch F.conv1d, same process.")
    p.add_argument("--shapes", default=None, help=f"comma-separated BATCHxDIMxL (default {DEFAULT_SHAPES}; "
                   f"with --smoke {SMOKE_SHAPES})")
    p.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated: channel_first, channel_last")
    p.add_argument("--impls", default=",".join(IMPLS), help="comma-separated: ours, causal_conv1d, torch")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--width", type=int, default=4, choices=(2, 3, 4))
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --smoke: Triton's interpreter)")
    p.add_argument("--smoke", action="store_true", help="tiny shapes and few repeats (a test that the script runs)")
    p.add_argument("--repeats", type=int, default=None, help="CPU timing repeats (default 5, 2 with --smoke)")
    p.add_argument("--check", action="store_true", help="also record each impl's error vs the fp32 reference")
    p.add_argument("--out", default="runs/bench", help="output folder for conv.json / conv.md")
    args = p.parse_args(argv)
    try:
        shapes = parse_shapes(args.shapes or (SMOKE_SHAPES if args.smoke else DEFAULT_SHAPES))
    except ValueError as err:
        p.error(str(err))
    layouts = [s.strip() for s in args.layouts.split(",") if s.strip()]
    impls = [s.strip() for s in args.impls.split(",") if s.strip()]
    for label, given, allowed in (("--layouts", layouts, LAYOUTS), ("--impls", impls, IMPLS)):
        bad = [g for g in given if g not in allowed]
        if bad or not given:
            p.error(f"{label}: expected a comma-separated subset of {', '.join(allowed)}, got {given}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA GPU is available here (use --device cpu --smoke for a CPU run)")
    if device.type not in ("cuda", "cpu"):
        p.error(f"--device must be cuda or cpu, got {args.device!r}")
    if device.type == "cpu":
        # Ours runs on CPU in Triton's interpreter; the flag is read when the kernels module is first imported.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if device.type == "cpu" and not (args.smoke or args.shapes):
        p.error("--device cpu runs ours in Triton's interpreter: pass --smoke (or small --shapes)")
    repeats = args.repeats if args.repeats is not None else (2 if args.smoke else 5)
    if repeats < 1:
        p.error(f"--repeats must be >= 1, got {repeats}")
    result = run(shapes, layouts, impls, args.dtype, args.width, device, repeats, args.check)
    result["command"] = "mamba-suite bench conv " + " ".join(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(result)
    (out / "conv.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "conv.md").write_text(table + "\n")
    print(f"\nwrote {out / 'conv.json'} and {out / 'conv.md'}\n")
    print(table)
    return 0


__all__ = ["main", "make_inputs", "parse_shapes", "run", "torch_conv"]
