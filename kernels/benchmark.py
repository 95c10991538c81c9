"""Selective-scan benchmarks: `mamba-suite bench scan` (GPU, vs mamba-ssm) and `bench scan-cpu`.

Every figure is measured in one process, so ratios compare like with like. Results go to a JSON
file and a markdown table in the output folder; the table is also printed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from . import selective_scan

ANCHOR_SHAPES = "64x768x197x16,8x3072x2048x16,8x768x4096x16,2x512x131072x16"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_shapes(text: str) -> list[tuple[int, int, int, int]]:
    """'64x768x197x16,...' -> [(batch, dim, L, N), ...]."""
    shapes = []
    for item in text.split(","):
        parts = item.lower().split("x")
        if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"--shapes: expected BxDxLxN with positive integers, got {item!r}")
        shapes.append(tuple(int(p) for p in parts))
    return shapes


def make_inputs(shape, dtype, device, requires_grad=True, seed=0):
    """The benchmark's inputs: z, D, delta_bias, softplus, time-variable B/C (mamba-ssm's layout)."""
    batch, dim, length, n = shape
    g = torch.Generator(device=device).manual_seed(seed)

    def rnd(*s, dt=dtype, scale=1.0):
        return (torch.randn(*s, generator=g, device=device, dtype=torch.float32) * scale).to(dt)

    tensors = dict(
        u=rnd(batch, dim, length), delta=rnd(batch, dim, length, scale=0.5),
        A=-torch.rand(dim, n, generator=g, device=device).add(0.5).mul(n / 4),
        B=rnd(batch, n, length), C=rnd(batch, n, length), D=rnd(dim, dt=torch.float32),
        z=rnd(batch, dim, length), delta_bias=rnd(dim, dt=torch.float32, scale=0.5) - 4.0,
    )
    if requires_grad:
        for t in tensors.values():
            t.requires_grad_(True)
    return tensors


def _run(inputs, backend, softplus=True):
    return selective_scan(**inputs, delta_softplus=softplus, backend=backend)


def _exp2_rate(device) -> float:
    """exp2 per second of the GPU's special-function units, measured with a Triton loop."""
    import triton
    import triton.language as tl

    @triton.jit
    def exp2_loop(out_ptr, ITERS: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x0 = offs.to(tl.float32) * 1e-9
        x1 = x0 + 0.25
        x2 = x0 + 0.5
        x3 = x0 + 0.75
        for _ in range(ITERS):  # four independent chains keep the pipes busy
            x0 = tl.exp2(x0) * 0.5
            x1 = tl.exp2(x1) * 0.5
            x2 = tl.exp2(x2) * 0.5
            x3 = tl.exp2(x3) * 0.5
        tl.store(out_ptr + offs, x0 + x1 + x2 + x3)

    # 64 programs per SM of the device at hand (not a hard-coded H100/H200 SM count)
    progs, block, iters = torch.cuda.get_device_properties(device).multi_processor_count * 64, 256, 1024
    out = torch.empty(progs * block, device=device)
    ms = triton.testing.do_bench(lambda: exp2_loop[(progs,)](out, ITERS=iters, BLOCK=block))
    return progs * block * iters * 4 / (ms * 1e-3)


def _copy_bandwidth(device) -> float:
    import triton

    src = torch.empty(1 << 28, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src))
    return 2 * src.numel() / (ms * 1e-3)


def _peak_mib(fn, device) -> float:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def check_against_reference(shape, dtype, device, backend="triton") -> dict:
    """Output and all gradients of `backend` vs the fp32 PyTorch reference on the same inputs."""
    ins = make_inputs(shape, dtype, device, seed=1)
    ref_ins = {k: v.detach().clone().requires_grad_(True) for k, v in ins.items()}
    out = _run(ins, backend)
    ref = _run(ref_ins, "reference")
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    errs = {"out": _max_rel(out, ref)}
    for k in ins:
        errs["d" + k] = _max_rel(ins[k].grad, ref_ins[k].grad)
    tol = 3e-2 if dtype in (torch.bfloat16, torch.float16) else 6e-4
    return {"shape": list(shape), "max_rel_err": errs, "tolerance": tol, "pass": max(errs.values()) <= tol}


def check_determinism(shape, dtype, device) -> bool:
    """Two deterministic-mode backward passes give bitwise-identical gradients."""
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        grads = []
        for _ in range(2):
            ins = make_inputs(shape, dtype, device, seed=2)
            _run(ins, "triton").sum().backward()
            grads.append([ins[k].grad.clone() for k in sorted(ins)])
        return all(torch.equal(a, b) for a, b in zip(*grads))
    finally:
        torch.use_deterministic_algorithms(prev)


def bench_gpu(shapes, dtype, backends, check: bool, device="cuda") -> dict:
    import triton

    device = torch.device(device)
    result = {
        "date": _dt.date.today().isoformat(), "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__, "triton": triton.__version__, "dtype": str(dtype).replace("torch.", ""),
        "inputs": "z, D, delta_bias, softplus, variable B/C; A/D/delta_bias fp32",
        "exp2_per_s": _exp2_rate(device), "copy_bytes_per_s": _copy_bandwidth(device), "cases": [],
    }
    try:
        import mamba_ssm  # noqa: F401  (version for the record, when installed)
        from importlib.metadata import version
        result["mamba_ssm"] = version("mamba_ssm")
    except Exception:  # noqa: BLE001 - optional peer
        result["mamba_ssm"] = None
    for shape in shapes:
        case = {"shape": list(shape), "backends": {}}
        batch, dim, length, n = shape
        case["exp2_floor_ms"] = batch * dim * length * n / result["exp2_per_s"] * 1e3
        for backend in backends:
            ins = make_inputs(shape, dtype, device)
            grad = torch.randn(batch, dim, length, device=device, dtype=dtype)
            try:
                with torch.no_grad():
                    fwd = triton.testing.do_bench(lambda: _run(ins, backend), return_mode="median")
                fwd_bwd = triton.testing.do_bench(lambda: _run(ins, backend).backward(grad),
                                                  grad_to_none=list(ins.values()), return_mode="median")
                peak = _peak_mib(lambda: _run(ins, backend).backward(grad), device)
                case["backends"][backend] = {"fwd_ms": fwd, "fwd_bwd_ms": fwd_bwd, "peak_mib": peak}
            except (RuntimeError, torch.OutOfMemoryError) as err:
                case["backends"][backend] = {"error": str(err).splitlines()[0][:200]}
            del ins, grad
            torch.cuda.empty_cache()
        if check:
            case["check"] = check_against_reference(shape, dtype, device)
        result["cases"].append(case)
    if check:
        result["deterministic_bitwise"] = check_determinism(shapes[0], dtype, device)
    return result


def markdown_gpu(result: dict) -> str:
    lines = [
        f"{result['device']} · {result['date']} · torch {result['torch']} · triton {result['triton']} · "
        f"mamba-ssm {result.get('mamba_ssm')} · {result['dtype']} inputs ({result['inputs']}) · "
        f"exp2 {result['exp2_per_s']:.3g}/s · copy {result['copy_bytes_per_s'] / 1e12:.2f} TB/s",
        "",
        "| shape (B, D, L, N) | backend | fwd ms | fwd+bwd ms | peak MiB | fwd+bwd vs mamba-ssm | fwd vs mamba-ssm "
        "| exp2 floor ms (fwd / fwd+bwd x3) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for case in result["cases"]:
        peer = case["backends"].get("mamba_ssm", {})
        for name, r in case["backends"].items():
            shape = "(" + ", ".join(map(str, case["shape"])) + ")"
            if "error" in r:
                lines.append(f"| {shape} | {name} | error: {r['error']} | | | | | |")
                continue
            speed = fspeed = ""
            if name != "mamba_ssm" and "fwd_bwd_ms" in peer:
                speed = f"{peer['fwd_bwd_ms'] / r['fwd_bwd_ms']:.2f}x"
                fspeed = f"{peer['fwd_ms'] / r['fwd_ms']:.2f}x"
            floor = case["exp2_floor_ms"]
            lines.append(f"| {shape} | {name} | {r['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f} | {r['peak_mib']:.0f} "
                         f"| {speed} | {fspeed} | {floor:.3f} / {3 * floor:.3f} |")
    checks = [c for c in result["cases"] if "check" in c]
    if checks:
        lines += ["", "Correctness vs the fp32 PyTorch reference on the GPU (max relative error over out and "
                  "every gradient):", ""]
        for c in checks:
            worst = max(c["check"]["max_rel_err"].items(), key=lambda kv: kv[1])
            lines.append(f"- {tuple(c['shape'])}: {'pass' if c['check']['pass'] else 'FAIL'} "
                         f"(worst {worst[0]} {worst[1]:.2e}, tolerance {c['check']['tolerance']})")
        lines.append(f"- deterministic mode, two backward runs bitwise equal: {result.get('deterministic_bitwise')}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- CPU
def loop_over_length_scan(u, delta, A, B, C):
    """The design of mamba-ssm's `selective_scan_ref`, written here as the CPU baseline: materialise
    exp(delta*A) and delta*B*u as (batch, dim, L, N), then a Python loop over L."""
    decay = torch.exp(delta[..., None] * A[:, None, :])  # (b, d, L, N)
    drive = (delta * u)[..., None] * B.transpose(1, 2)[:, None]  # (b, d, L, N)
    state = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        state = decay[:, :, t] * state + drive[:, :, t]
        ys.append(torch.einsum("bdn,bn->bd", state, C[:, :, t]))
    return torch.stack(ys, dim=2)


def bench_cpu(shape, repeats: int) -> dict:
    batch, dim, length, n = shape
    g = torch.Generator().manual_seed(0)
    base = dict(u=torch.randn(batch, dim, length, generator=g), delta=torch.rand(batch, dim, length, generator=g) * 0.1,
                A=-torch.rand(dim, n, generator=g) - 0.1, B=torch.randn(batch, n, length, generator=g),
                C=torch.randn(batch, n, length, generator=g))

    def timed(fn):
        times = []
        for _ in range(repeats):
            ins = {k: v.clone().requires_grad_(True) for k, v in base.items()}
            start = time.perf_counter()
            fn(ins).sum().backward()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    ours = timed(lambda i: selective_scan(**i, backend="reference"))
    loop = timed(lambda i: loop_over_length_scan(**i))
    return {"date": _dt.date.today().isoformat(), "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "shape": list(shape), "dtype": "fp32",
            "repeats": repeats, "reference_fwd_bwd_s": ours, "loop_fwd_bwd_s": loop, "speedup": loop / ours}


def markdown_cpu(r: dict) -> str:
    return (f"CPU ({r['cpu']}, {r['threads']} threads) · {r['date']} · torch {r['torch']} · fp32 · shape "
            f"{tuple(r['shape'])} · median of {r['repeats']}\n\n"
            "| implementation | fwd+bwd s |\n|---|---:|\n"
            f"| loop over L, materialised exp(δA) (mamba-ssm `selective_scan_ref` design) | {r['loop_fwd_bwd_s']:.2f} |\n"
            f"| mamba-suite reference (chunked, hand-written backward) | {r['reference_fwd_bwd_s']:.2f} |\n"
            f"| **speed-up** | **{r['speedup']:.1f}x** |")


def _write(out_dir: Path, stem: str, result: dict, table: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (out_dir / f"{stem}.md").write_text(table + "\n")
    print(table)
    print(f"\nwrote {out_dir / (stem + '.json')} and {out_dir / (stem + '.md')}")


def main_scan(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="mamba-suite bench scan", description="Selective-scan speed on a GPU, "
                                "ours vs mamba-ssm's CUDA kernel, same process.")
    p.add_argument("--shapes", default=ANCHOR_SHAPES, help="comma-separated BxDxLxN (default: the anchor shapes)")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--backends", default="triton,mamba_ssm", help="comma-separated: triton, mamba_ssm, reference")
    p.add_argument("--check", action="store_true", help="also check correctness vs the fp32 reference")
    p.add_argument("--out", default="runs/bench", help="output folder for scan.json / scan.md")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU; for the CPU reference use `mamba-suite bench scan-cpu`")
    shapes = parse_shapes(args.shapes)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    result = bench_gpu(shapes, DTYPES[args.dtype], backends, args.check)
    _write(Path(args.out), "scan", result, markdown_gpu(result))
    failed = [c for c in result["cases"] if "check" in c and not c["check"]["pass"]]
    return 1 if failed else 0


def main_scan_cpu(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="mamba-suite bench scan-cpu", description="The PyTorch reference scan vs a "
                                "loop-over-L implementation, forward+backward on CPU, fp32.")
    p.add_argument("--shape", default="64x768x197x16", help="BxDxLxN")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="runs/bench")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    result = bench_cpu(parse_shapes(args.shape)[0], args.repeats)
    _write(Path(args.out), "scan_cpu", result, markdown_cpu(result))
    return 0


