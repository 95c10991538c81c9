"""Selective-scan benchmarks: `mamba-suite bench scan` (GPU, vs mamba-ssm) and `bench scan-cpu`.

Every figure is measured in one process, so ratios compare like with like. Results go to a JSON
file and a markdown table in the output folder; the table is also printed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
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
    ms = triton.testing.do_bench(lambda: exp2_loop[(progs,)](out, ITERS=iters, BLOCK=block), return_mode="median")
    return progs * block * iters * 4 / (ms * 1e-3)


def _copy_bandwidth(device) -> float:
    import triton

    src = torch.empty(1 << 28, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
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


def parse_configs(text: str) -> list[tuple[tuple[int, ...], ...]]:
    """'256:8:4,1024:1:1/256:2:1:128' -> [((256, 8, 4),), ((1024, 1, 1), (256, 2, 1, 128))].

    A config is the forward's tile BLOCK_T:BLOCK_D:WARPS[:MAXNREG], and the backward's after a '/' (without one
    the forward's tile serves both kernels). MAXNREG caps the kernel's registers per thread (Triton's `maxnreg`).
    """
    configs = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        halves = [half.split(":") for half in item.split("/")]
        if len(halves) > 2 or not all(len(h) in (3, 4) and all(p.isdigit() and int(p) > 0 for p in h)
                                      for h in halves):
            raise ValueError(f"--configs: expected BLOCK_T:BLOCK_D:WARPS[:MAXNREG][/BWD_T:BWD_D:BWD_WARPS[:MAXNREG]] "
                             f"with positive integers, got {item!r}")
        configs.append(tuple(tuple(int(p) for p in h) for h in halves))
    return configs


def config_label(config: tuple[tuple[int, ...], ...]) -> str:
    """((256, 8, 4),) -> '256:8:4'; two tiles -> 'fwd/bwd'."""
    return "/".join(":".join(map(str, half)) for half in config)


_TILE_KEYS = ("MAMBASUITE_SCAN_BLOCK_T", "MAMBASUITE_SCAN_BLOCK_D", "MAMBASUITE_SCAN_WARPS", "MAMBASUITE_SCAN_MAXNREG",
              "MAMBASUITE_SCAN_BWD_BLOCK_T", "MAMBASUITE_SCAN_BWD_BLOCK_D", "MAMBASUITE_SCAN_BWD_WARPS",
              "MAMBASUITE_SCAN_BWD_MAXNREG")


@contextlib.contextmanager
def _tile_override(config: tuple[tuple[int, ...], ...] | None):
    """Set the scan's tile environment overrides for the duration of one measurement."""
    saved = {k: os.environ.get(k) for k in _TILE_KEYS}
    try:
        if config is not None:
            for k in _TILE_KEYS:
                os.environ.pop(k, None)
            for keys, half in zip((_TILE_KEYS[:4], _TILE_KEYS[4:]), config):
                os.environ.update({k: str(v) for k, v in zip(keys, half)})
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _min_bytes(shape, dtype, backward: bool) -> int:
    """Bytes a scan must move at least: fwd reads u, delta, z, B, C and writes out; the backward also
    reads dout and writes du, ddelta, dz, dB, dC (a lower bound: no re-reads, no checkpoints)."""
    batch, dim, length, n = shape
    elt = torch.tensor([], dtype=dtype).element_size()
    rows, bc = batch * dim * length * elt, 2 * batch * n * length * elt
    fwd = 4 * rows + bc
    return fwd + (fwd + 4 * rows + bc if backward else 0)


def bench_gpu(shapes, dtype, backends, check: bool, device="cuda", configs=()) -> dict:
    """Time each backend (and each Triton tile config) at each shape; flat `cases` in the bench schema."""
    import triton

    device = torch.device(device)
    result = {
        "benchmark": "scan", "date": _dt.date.today().isoformat(), "device": torch.cuda.get_device_name(device),
        "versions": {"torch": torch.__version__, "triton": triton.__version__},
        "dtype": str(dtype).replace("torch.", ""),
        "inputs": "z, D, delta_bias, softplus, variable B/C; A/D/delta_bias fp32",
        "exp2_per_s": _exp2_rate(device), "copy_bytes_per_s": _copy_bandwidth(device), "cases": [], "checks": [],
        "ratios": [],
    }
    try:
        from importlib.metadata import version
        result["versions"]["mamba_ssm"] = version("mamba_ssm")
    except Exception:  # noqa: BLE001 - optional peer
        result["versions"]["mamba_ssm"] = None
    variants = [(b, None) for b in backends if not (b == "triton" and configs)]
    variants += [("triton", c) for c in configs] if "triton" in backends else []
    for shape in shapes:
        batch, dim, length, n = shape
        shape_txt = "x".join(map(str, shape))
        exp2_floor_ms = batch * dim * length * n / result["exp2_per_s"] * 1e3
        for backend, config in variants:
            impl = backend if config is None else f"triton[{config_label(config)}]"
            case = {"name": f"{shape_txt}/{impl}", "impl": impl, "backend": backend,
                    "shape": dict(batch=batch, dim=dim, L=length, N=n), "status": "ok"}
            ins = make_inputs(shape, dtype, device)
            grad = torch.randn(batch, dim, length, device=device, dtype=dtype)
            try:
                with _tile_override(config):
                    with torch.no_grad():
                        fwd = triton.testing.do_bench(lambda: _run(ins, backend), return_mode="median")
                    fwd_bwd = triton.testing.do_bench(lambda: _run(ins, backend).backward(grad),
                                                      grad_to_none=list(ins.values()), return_mode="median")
                    peak = _peak_mib(lambda: _run(ins, backend).backward(grad), device)
                case.update(fwd_ms=fwd, fwd_bwd_ms=fwd_bwd, peak_mem_mb=peak,
                            fwd_bytes_per_s=_min_bytes(shape, dtype, False) / (fwd * 1e-3),
                            fwd_bwd_bytes_per_s=_min_bytes(shape, dtype, True) / (fwd_bwd * 1e-3),
                            fwd_exp2_per_s=batch * dim * length * n / (fwd * 1e-3),
                            floor={"exp2_ms": exp2_floor_ms})  # a bound, not a measurement: not gated
            except torch.OutOfMemoryError:
                case["status"] = "OOM"
            except RuntimeError as err:
                case.update(status="error", error=str(err).splitlines()[0][:200])
            result["cases"].append(case)
            del ins, grad
            torch.cuda.empty_cache()
        if check:
            result["checks"].append(check_against_reference(shape, dtype, device))
    peers = {c["name"].split("/")[0]: c for c in result["cases"] if c["impl"] == "mamba_ssm" and c["status"] == "ok"}
    for c in result["cases"]:
        peer = peers.get(c["name"].split("/")[0])
        if c["backend"] == "triton" and c["status"] == "ok" and peer:
            for metric in ("fwd_ms", "fwd_bwd_ms"):
                result["ratios"].append({"name": f"{c['name']}:{metric}", "ours": c["name"], "peer": peer["name"],
                                         "metric": metric, "ratio": peer[metric] / c[metric]})
    if check:
        result["deterministic_bitwise"] = check_determinism(shapes[0], dtype, device)
    return result


def markdown_gpu(result: dict) -> str:
    """The benchmark as a markdown table: times, same-run speed vs mamba-ssm and hardware utilisation."""
    v = result["versions"]
    lines = [
        f"{result['device']} · {result['date']} · torch {v['torch']} · triton {v['triton']} · "
        f"mamba-ssm {v.get('mamba_ssm')} · {result['dtype']} inputs ({result['inputs']}) · "
        f"ceilings measured in this run: exp2 {result['exp2_per_s']:.3g}/s, copy {result['copy_bytes_per_s'] / 1e12:.2f} TB/s",
        "",
        "| shape (B, D, L, N) | impl | fwd ms | fwd+bwd ms | peak MiB | fwd+bwd speed vs mamba-ssm "
        "| fwd speed vs mamba-ssm | fwd TB/s (% copy) | fwd exp2/s (% ceiling) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratio = {(r["ours"], r["metric"]): r["ratio"] for r in result["ratios"]}
    for c in result["cases"]:
        s = c["shape"]
        shape = f"({s['batch']}, {s['dim']}, {s['L']}, {s['N']})"
        if c["status"] != "ok":
            lines.append(f"| {shape} | {c['impl']} | {c['status']} {c.get('error', '')} | | | | | | |")
            continue
        speed = f"{ratio[(c['name'], 'fwd_bwd_ms')]:.2f}x" if (c["name"], "fwd_bwd_ms") in ratio else ""
        fspeed = f"{ratio[(c['name'], 'fwd_ms')]:.2f}x" if (c["name"], "fwd_ms") in ratio else ""
        bw = c["fwd_bytes_per_s"]
        ex = c["fwd_exp2_per_s"]
        lines.append(f"| {shape} | {c['impl']} | {c['fwd_ms']:.3f} | {c['fwd_bwd_ms']:.3f} | {c['peak_mem_mb']:.0f} "
                     f"| {speed} | {fspeed} | {bw / 1e12:.2f} ({100 * bw / result['copy_bytes_per_s']:.0f}%) "
                     f"| {ex:.3g} ({100 * ex / result['exp2_per_s']:.0f}%) |")
    if result["checks"]:
        lines += ["", "Correctness vs the fp32 PyTorch reference on the GPU (max relative error over out and "
                  "every gradient):", ""]
        for c in result["checks"]:
            worst = max(c["max_rel_err"].items(), key=lambda kv: kv[1])
            lines.append(f"- {tuple(c['shape'])}: {'pass' if c['pass'] else 'FAIL'} "
                         f"(worst {worst[0]} {worst[1]:.2e}, tolerance {c['tolerance']})")
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
    p.add_argument("--configs", default="", help="Triton tile configs to sweep instead of the default plan, "
                   "comma-separated BLOCK_T:BLOCK_D:WARPS[:MAXNREG], optionally /BWD_T:BWD_D:BWD_WARPS[:MAXNREG] for "
                   "the backward; MAXNREG caps registers per thread (e.g. 256:8:4,1024:1:1/64:2:1:128)")
    p.add_argument("--out", default="runs/bench", help="output folder for scan.json / scan.md")
    args = p.parse_args(argv)
    try:
        configs = parse_configs(args.configs)
    except ValueError as err:
        p.error(str(err))
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU; for the CPU reference use `mamba-suite bench scan-cpu`")
    shapes = parse_shapes(args.shapes)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    result = bench_gpu(shapes, DTYPES[args.dtype], backends, args.check, configs=configs)
    result["command"] = "mamba-suite bench scan " + " ".join(argv)
    _write(Path(args.out), "scan", result, markdown_gpu(result))
    failed = [c for c in result["checks"] if not c["pass"]]
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




def _eager_add_rms_norm(x, residual, weight, eps=1e-5):
    """The unfused composition a block runs without the fused op (what `add_rms_norm` replaces)."""
    r = residual + x.float()
    return (r * torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + eps) * weight).to(x.dtype), r


def main_norm(argv: list[str]) -> int:
    """`mamba-suite bench norm`: fused add + RMSNorm (Triton) vs the eager torch composition, fwd and fwd+bwd."""
    import triton

    from . import add_rms_norm

    p = argparse.ArgumentParser(prog="mamba-suite bench norm", description=main_norm.__doc__)
    p.add_argument("--shapes", default="64x197x192,64x197x384,8x2048x768,2x131072x256",
                   help="comma-separated BATCHxLxDIM (default: Vim-Ti/S tokens, an LM, a 131k DNA sequence)")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--out", default="runs/bench")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU")
    dtype, device = DTYPES[args.dtype], torch.device("cuda")
    result = {"benchmark": "norm", "date": _dt.date.today().isoformat(), "device": torch.cuda.get_device_name(),
              "versions": {"torch": torch.__version__, "triton": triton.__version__}, "dtype": args.dtype,
              "command": "mamba-suite bench norm " + " ".join(argv), "cases": [], "ratios": []}
    impls = {"triton": lambda x, r, w: add_rms_norm(x, r, w, backend="triton"),
             "eager": _eager_add_rms_norm}
    for item in args.shapes.split(","):
        batch, length, dim = (int(v) for v in item.split("x"))
        x = torch.randn(batch, length, dim, device=device, dtype=dtype, requires_grad=True)
        res = torch.randn(batch, length, dim, device=device, dtype=torch.float32, requires_grad=True)
        w = torch.ones(dim, device=device, requires_grad=True)
        g = torch.randn_like(x)
        names = {}
        for impl, fn in impls.items():
            with torch.no_grad():
                fwd = triton.testing.do_bench(lambda: fn(x, res, w), return_mode="median")

            def step():
                out, new_res = fn(x, res, w)
                torch.autograd.backward([out, new_res], [g, torch.ones_like(new_res)])

            fwd_bwd = triton.testing.do_bench(step, grad_to_none=[x, res, w], return_mode="median")
            name = f"{item}/{impl}"
            names[impl] = name
            result["cases"].append({"name": name, "impl": impl, "shape": dict(batch=batch, L=length, dim=dim),
                                    "status": "ok", "fwd_ms": fwd, "fwd_bwd_ms": fwd_bwd})
        by_name = {c["name"]: c for c in result["cases"]}
        for metric in ("fwd_ms", "fwd_bwd_ms"):
            result["ratios"].append({"name": f"{item}:{metric}", "ours": names["triton"], "peer": names["eager"],
                                     "metric": metric,
                                     "ratio": by_name[names["eager"]][metric] / by_name[names["triton"]][metric]})
    lines = [f"{result['device']} · {result['date']} · torch {torch.__version__} · {args.dtype} x, fp32 residual",
             "", "| shape (B, L, D) | triton fwd ms | eager fwd ms | fwd speed-up | triton fwd+bwd ms "
             "| eager fwd+bwd ms | fwd+bwd speed-up |", "|---|---:|---:|---:|---:|---:|---:|"]
    by_name = {c["name"]: c for c in result["cases"]}
    for item in args.shapes.split(","):
        t, e = by_name[f"{item}/triton"], by_name[f"{item}/eager"]
        lines.append(f"| {item} | {t['fwd_ms']:.3f} | {e['fwd_ms']:.3f} | {e['fwd_ms'] / t['fwd_ms']:.2f}x "
                     f"| {t['fwd_bwd_ms']:.3f} | {e['fwd_bwd_ms']:.3f} | {e['fwd_bwd_ms'] / t['fwd_bwd_ms']:.2f}x |")
    _write(Path(args.out), "norm", result, "\n".join(lines))
    return 0
