"""Benchmarks of the fused multi-direction scans: `mamba-suite bench bidir` and `mamba-suite bench cross2d`.

bidir: both directions of a bidirectional scan (bf16, z shared, combine "add") three ways, same process:
  ours-fused      `bidirectional_scan(backend="triton")`: one launch, reverse indexing;
  ours-two-calls  two calls of our single scan (forward, reverse mode);
  mamba_ssm-flip  what Vim and Caduceus run: two mamba-ssm CUDA calls, the reverse one on torch.flip copies
                  of u, delta, B, C and z, its output flipped back.
cross2d: VMamba's four-route scan over a (batch, dim, H, W) map:
  ours-fused      `cross_scan_2d(backend="triton")`: one launch; the column routes read one column-major copy of
                  the map, each route writes an fp32 slot in its order, one pass merges the four;
  mamba_ssm-pipe  VMamba's pipeline from pieces: a torch cross-scan copy of x to (batch, 4, dim, H*W), one
                  mamba-ssm call over the stacked routes (B/C grouped by route, delta/B/C already in route
                  order, as VMamba's projections produce them), a torch merge back to the map;
  ours-pipe       the same pipeline with our single scan in place of mamba-ssm's.
Times are medians of `triton.testing.do_bench` (fwd, and fwd+bwd of a sum); peak memory over fwd+bwd.
--check also compares the fused op's output and every input gradient with the PyTorch reference run in fp32 on
the same inputs and the same output gradient (max error relative to the reference's largest magnitude; bf16
tolerance 3e-2, the scan issue's).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import statistics
import time
from pathlib import Path

import torch

from . import bidirectional_scan, cross_scan_2d, selective_scan
from .benchmark import _max_rel, _peak_mib, _write

BIDIR_SHAPES = "64x768x197x16,2x512x131072x16"
CROSS_SHAPES = "64x192x56x56x1,64x192x56x56x16,64x384x28x28x1"


def _parse(text: str, parts: int, what: str) -> list[tuple[int, ...]]:
    shapes = []
    for item in text.split(","):
        fields = item.lower().split("x")
        if len(fields) != parts or not all(f.isdigit() and int(f) > 0 for f in fields):
            raise ValueError(f"--shapes: expected {what} with positive integers, got {item!r}")
        shapes.append(tuple(int(f) for f in fields))
    return shapes


def _rnd(g, *shape, dtype=torch.bfloat16, scale=1.0, device="cuda"):
    return (torch.randn(*shape, generator=g, device=device) * scale).to(dtype)


def _direction(g, batch, dim, length, n, device):
    return dict(u=_rnd(g, batch, dim, length, device=device),
                delta=_rnd(g, batch, dim, length, scale=0.5, device=device),
                A=-torch.rand(dim, n, generator=g, device=device).add(0.5).mul(n / 4),
                B=_rnd(g, batch, n, length, device=device), C=_rnd(g, batch, n, length, device=device),
                D=_rnd(g, dim, dtype=torch.float32, device=device),
                delta_bias=_rnd(g, dim, dtype=torch.float32, scale=0.5, device=device) - 4.0)


def _leaves(tensors):
    return [t.requires_grad_() for t in tensors if t is not None and t.is_floating_point()]


def _time(fn, leaves, device):
    """(fwd ms, fwd+bwd ms, peak MiB): do_bench medians on CUDA; on CPU (the --smoke check, Triton's interpreter)
    one timed call each and no memory figure."""
    def fwd_bwd():
        fn().float().sum().backward()

    if device.type != "cuda":
        def median_ms(f):
            times = []
            for _ in range(1):
                start = time.perf_counter()
                f()
                times.append((time.perf_counter() - start) * 1e3)
            return statistics.median(times)

        with torch.no_grad():
            fwd = median_ms(fn)
        return fwd, median_ms(fwd_bwd), None
    import triton

    with torch.no_grad():
        fwd = triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")
    # (do_bench returns the mean unless told otherwise; until session 11 these figures were means, see BENCHMARKS.md)
    fwd_bwd_ms = triton.testing.do_bench(fwd_bwd, grad_to_none=leaves, warmup=10, rep=50, return_mode="median")
    return fwd, fwd_bwd_ms, _peak_mib(fwd_bwd, device)


def _case(result, name, impl, shape, run, leaves, device):
    try:
        fwd, fwd_bwd, peak = _time(run, leaves, device)
        result["cases"].append(dict(name=name, impl=impl, shape=shape, status="ok", fwd_ms=fwd, fwd_bwd_ms=fwd_bwd,
                                    peak_mem_mb=peak))
    except torch.cuda.OutOfMemoryError:
        result["cases"].append(dict(name=name, impl=impl, shape=shape, status="OOM"))
    except Exception as err:  # noqa: BLE001 - a missing peer is reported, not fatal
        result["cases"].append(dict(name=name, impl=impl, shape=shape, status="error", error=str(err)[:300]))
    if device.type == "cuda":
        torch.cuda.empty_cache()


CHECK_TOL = 3e-2  # bf16 inputs, as `bench scan --check`


def _check(label: str, op, tensors: dict, device) -> dict:
    """op(tensors, backend) with backend "triton" on `tensors` vs "reference" on fp32 copies: output and the
    gradient of every floating tensor, for one random output gradient (rounded to the output's dtype, so that
    both sides receive the same values)."""
    ours = {k: v.detach().clone().requires_grad_() for k, v in tensors.items()}
    ref = {k: v.detach().float().clone().requires_grad_() for k, v in tensors.items()}
    out = op(ours, "triton")
    expected = op(ref, "reference")
    g = torch.Generator(device=device).manual_seed(7)
    grad = torch.randn(expected.shape, generator=g, device=device).to(out.dtype)
    out.backward(grad)
    expected.backward(grad.float())
    errs = {"out": _max_rel(out, expected)}
    errs.update({"d" + k: _max_rel(ours[k].grad, ref[k].grad) for k in tensors})
    worst = max(errs, key=errs.get)
    result = dict(shape=label, max_rel_err=errs, worst=worst, tolerance=CHECK_TOL, **{"pass": errs[worst] <= CHECK_TOL})
    del ours, ref, out, expected
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def _header(what: str, device) -> dict:
    import triton

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (Triton interpreter, smoke run)"
    versions = {"torch": torch.__version__, "triton": triton.__version__}
    try:
        from importlib.metadata import version
        versions["mamba_ssm"] = version("mamba_ssm")
    except Exception:  # noqa: BLE001 - optional peer
        versions["mamba_ssm"] = None
    return {"benchmark": what, "date": _dt.date.today().isoformat(), "device": name,
            "versions": versions, "dtype": "bfloat16 (A, D, delta_bias fp32)", "cases": [], "ratios": [],
            "checks": []}


def _ratios(result, ours: str, peers: list[str]):
    by_name = {c["name"]: c for c in result["cases"]}
    for c in result["cases"]:
        if c["impl"] != ours or c["status"] != "ok":
            continue
        for peer in peers:
            p = by_name.get(c["name"].replace(ours, peer))
            for metric in ("fwd_ms", "fwd_bwd_ms", "peak_mem_mb"):
                if p is not None and p["status"] == "ok" and p.get(metric) and c.get(metric):
                    result["ratios"].append(dict(name=f"{c['name']}:{metric}:{peer}", ours=c["name"], peer=p["name"],
                                                 metric=metric, ratio=p[metric] / c[metric]))


def _markdown(result: dict, title: str) -> str:
    lines = [f"{title} · {result['device']} · {result['date']} · torch {result['versions']['torch']} · triton "
             f"{result['versions']['triton']} · mamba-ssm {result['versions']['mamba_ssm']} · {result['dtype']}", "",
             "| shape | impl | fwd ms | fwd+bwd ms | peak MiB | status |", "|---|---|---:|---:|---:|---|"]
    for c in result["cases"]:
        f = lambda k: f"{c[k]:.3f}" if c.get(k) is not None else "-"  # noqa: E731
        # an error names its cause in the table too (e.g. the peer not installed), not only in the JSON
        reason = c["error"].splitlines()[0][:120].replace("|", "/") if c.get("error") else ""  # "|" would end the cell
        status = f"{c['status']}: {reason}" if reason else c["status"]
        lines.append(f"| {c['shape']} | {c['impl']} | {f('fwd_ms')} | {f('fwd_bwd_ms')} | "
                     f"{f('peak_mem_mb')} | {status} |")
    lines += ["", "| case | metric | peer | peer / ours |", "|---|---|---|---:|"]
    for r in result["ratios"]:
        lines.append(f"| {r['ours']} | {r['metric']} | {r['peer']} | {r['ratio']:.2f}x |")
    if result["checks"]:
        lines += ["", "Fused op vs the fp32 PyTorch reference (max relative error over the output and every gradient):",
                  ""]
        for c in result["checks"]:
            verdict = "pass" if c["pass"] else "FAIL"
            lines.append(f"- {c['shape']}: {verdict} (worst {c['worst']} {c['max_rel_err'][c['worst']]:.2e}, "
                         f"tolerance {c['tolerance']})")
    return "\n".join(lines)


def bench_bidir(shapes, device="cuda", check: bool = False) -> dict:
    device = torch.device(device)
    result = _header("bidir", device)
    for shape in shapes:
        batch, dim, length, n = shape
        g = torch.Generator(device=device).manual_seed(0)
        fwd, rev = _direction(g, batch, dim, length, n, device), _direction(g, batch, dim, length, n, device)
        z = _rnd(g, batch, dim, length, device=device)
        leaves = _leaves(list(fwd.values()) + list(rev.values()) + [z])
        pairs = {k: (fwd[k], rev[k]) for k in fwd}
        label = "x".join(map(str, shape))

        def fused():
            return bidirectional_scan(**pairs, z=z, combine="add", delta_softplus=True, backend="triton")

        def two_calls():
            return (selective_scan(**fwd, z=z, delta_softplus=True, backend="triton")
                    + selective_scan(**rev, z=z, delta_softplus=True, reverse=True, backend="triton"))

        def flips():
            flip = lambda t: t.flip(-1)  # noqa: E731
            y_b = selective_scan(flip(rev["u"]), flip(rev["delta"]), rev["A"], flip(rev["B"]), flip(rev["C"]),
                                 rev["D"], flip(z), rev["delta_bias"], delta_softplus=True, backend="mamba_ssm")
            return selective_scan(**fwd, z=z, delta_softplus=True, backend="mamba_ssm") + flip(y_b)

        for impl, run in (("ours-fused", fused), ("ours-two-calls", two_calls), ("mamba_ssm-flip", flips)):
            _case(result, f"{label}/{impl}", impl, label, run, leaves, device)
        if check:
            named = {f"{k}_{side}": pair[i] for k, pair in pairs.items() for i, side in enumerate(("fwd", "rev"))}
            named["z"] = z

            def op(t, backend):
                return bidirectional_scan(**{k: (t[f"{k}_fwd"], t[f"{k}_rev"]) for k in pairs}, z=t["z"],
                                          combine="add", delta_softplus=True, backend=backend)
            result["checks"].append(_check(label, op, named, device))
    _ratios(result, "ours-fused", ["ours-two-calls", "mamba_ssm-flip"])
    return result


def bench_cross2d(shapes, device="cuda", check: bool = False) -> dict:
    device = torch.device(device)
    result = _header("cross2d", device)
    for shape in shapes:
        batch, dim, height, width, n = shape
        hw = height * width
        g = torch.Generator(device=device).manual_seed(0)
        x = _rnd(g, batch, dim, height, width, device=device)
        delta = _rnd(g, batch, 4, dim, hw, scale=0.5, device=device)
        A = -torch.rand(4, dim, n, generator=g, device=device).add(0.5)
        B, C = _rnd(g, batch, 4, n, hw, device=device), _rnd(g, batch, 4, n, hw, device=device)
        D = _rnd(g, 4, dim, dtype=torch.float32, device=device)
        bias = _rnd(g, 4, dim, dtype=torch.float32, scale=0.5, device=device) - 4.0
        leaves = _leaves([x, delta, A, B, C, D, bias])
        label = "x".join(map(str, shape))

        def fused():
            return cross_scan_2d(x, delta, A, B, C, D, bias, delta_softplus=True, backend="triton")

        def pipeline(backend):
            def run():
                # VMamba: cross-scan copy of x; delta/B/C arrive in route order from its projections of that copy
                # (here the same tensors stand in for them: their layout, not their values, sets the cost).
                xs = torch.stack([x.flatten(2), x.transpose(2, 3).flatten(2), x.flatten(2).flip(-1),
                                  x.transpose(2, 3).flatten(2).flip(-1)], dim=1)
                ys = selective_scan(xs.flatten(1, 2), delta.flatten(1, 2), A.flatten(0, 1), B, C, D.flatten(),
                                    delta_bias=bias.flatten(), delta_softplus=True, backend=backend)
                ys = ys.view(batch, 4, dim, hw)
                rows = ys[:, 0] + ys[:, 2].flip(-1)
                cols = ys[:, 1] + ys[:, 3].flip(-1)
                cols = cols.view(batch, dim, width, height).transpose(2, 3).reshape(batch, dim, hw)
                return (rows + cols).view(batch, dim, height, width)
            return run

        for impl, run in (("ours-fused", fused), ("mamba_ssm-pipe", pipeline("mamba_ssm")),
                          ("ours-pipe", pipeline("triton"))):
            _case(result, f"{label}/{impl}", impl, label, run, leaves, device)
        if check:
            def op(t, backend):
                return cross_scan_2d(t["x"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["delta_bias"],
                                     delta_softplus=True, backend=backend)
            result["checks"].append(_check(label, op, dict(x=x, delta=delta, A=A, B=B, C=C, D=D, delta_bias=bias),
                                           device))
    _ratios(result, "ours-fused", ["mamba_ssm-pipe", "ours-pipe"])
    return result


def _main(argv, what, default_shapes, smoke_shapes, parts, shape_help, bench, title) -> int:
    p = argparse.ArgumentParser(prog=f"mamba-suite bench {what}", description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=None, help=f"comma-separated {shape_help} (default {default_shapes})")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --smoke: Triton's interpreter)")
    p.add_argument("--smoke", action="store_true", help=f"tiny shapes ({smoke_shapes}): a check that the script runs")
    p.add_argument("--out", default="runs/bench", help=f"output folder for {what}.json / {what}.md")
    p.add_argument("--check", action="store_true", help="also check the fused op's output and gradients against "
                   "the fp32 PyTorch reference on the same inputs")
    args = p.parse_args(argv)
    try:
        shapes = _parse(args.shapes or (smoke_shapes if args.smoke else default_shapes), parts, shape_help)
    except ValueError as err:
        p.error(str(err))
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("needs a CUDA GPU (the fused scans are Triton kernels); `--device cpu --smoke` checks the script")
    if args.device == "cpu":
        if not args.smoke:
            p.error("--device cpu runs Triton's interpreter: only with --smoke")
        os.environ["TRITON_INTERPRET"] = "1"  # must be set before triton is first imported to take effect
    result = bench(shapes, args.device, check=args.check)
    result["command"] = f"mamba-suite bench {what} " + " ".join(argv)
    _write(Path(args.out), what, result, _markdown(result, title))
    fused_ran = all(c["status"] == "ok" or c["impl"] != "ours-fused" for c in result["cases"])
    return 0 if fused_ran and all(c["pass"] for c in result["checks"]) else 1


def main_bidir(argv: list[str]) -> int:
    return _main(argv, "bidir", BIDIR_SHAPES, "1x4x9x2", 4, "BxDxLxN", bench_bidir, "Bidirectional scan")


def main_cross2d(argv: list[str]) -> int:
    return _main(argv, "cross2d", CROSS_SHAPES, "1x4x3x4x2", 5, "BxDxHxWxN", bench_cross2d, "2D cross-scan")
