"""`mamba-suite bench vision`: Vim-Ti and VMamba-T vs timm's DeiT-Ti and MambaOut-Tiny, same process.

Models are built through timm (`import mambasuite.vision` registers ours), 1000 classes, random weights:
`vim_tiny_patch16_224` and `vmamba_tiny` (ours, selective scan on `backend="triton"`), `deit_tiny_patch16_224`
(img_size set to each resolution, so its position embedding has the right grid; attention through
`F.scaled_dot_product_attention`, i.e. FlashAttention for bf16 on Hopper) and `mambaout_tiny` (Gated-CNN
blocks, no SSM). Per resolution and batch (default 224/128, 512/32, 1024/8, 1248/4), bf16 autocast:

* inference: forward under `torch.inference_mode`, img/s = batch / median time, and its peak memory;
* training: forward + cross-entropy + backward + SGD (momentum 0.9) step, img/s, and its peak memory.

Plus Vim-Ti with `backend="mamba_ssm"` (the peer's CUDA scan, same model otherwise) at 224 and 1248.
Timing: CUDA events after `--warmup` calls, median of `--iters`; peak = torch.cuda.max_memory_allocated
after reset_peak_memory_stats (weights included). An OOM becomes status "OOM", another failure "error" (with
the message); `--time_budget` skips cases that would start after it. Writes `<out>/vision.json` (the
suite's benchmark schema: fwd_ms = inference forward, step_ms = training step, peak_mem_mb = training peak,
infer_peak_mem_mb, infer_img_s, train_img_s) and `<out>/vision.md`, and prints the table last.
`--device cpu --smoke` runs the tiny test models at 32 px, fp32, reference scan (a check of the script).
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

# label -> (timm name, impl, takes a scan backend)
MODELS = {
    "vim_ti": ("vim_tiny_patch16_224", "ours", True),
    "vmamba_t": ("vmamba_tiny", "ours", True),
    "deit_ti": ("deit_tiny_patch16_224", "deit", False),
    "mambaout_t": ("mambaout_tiny", "mambaout", False),
}
SMOKE_NAMES = {"vim_ti": "test_vim", "vmamba_t": "test_vmamba"}
DEFAULT_SIZES = "224:128,512:32,1024:8,1248:4"


def _timed(fn, device: torch.device, warmup: int, iters: int) -> tuple[float, float | None]:
    """(median ms over `iters` calls after `warmup` calls, peak MB over the timed calls or None on CPU)."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    ms = statistics.median(elapsed_ms(fn, device) for _ in range(iters))
    return ms, (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None)


def build(label: str, resolution: int, backend: str, smoke: bool):
    """timm model for a label at one resolution (ours get the scan backend)."""
    import timm

    import mambasuite.vision  # noqa: F401  (registers vim_* / vmamba_* with timm)

    name, _, takes_backend = MODELS[label]
    kwargs = {"num_classes": 1000}
    if smoke and label in SMOKE_NAMES:
        name = SMOKE_NAMES[label]
    if takes_backend:
        kwargs["backend"] = backend
    if label in ("vim_ti", "deit_ti"):
        kwargs["img_size"] = resolution
    return timm.create_model(name, **kwargs)


def measure(label: str, resolution: int, batch: int, backend: str, args, device: torch.device) -> dict:
    """Inference and training numbers of one model at one size: a dict of the schema's fields."""
    dtype = None if args.dtype == "fp32" else torch.bfloat16
    out = {"status": "ok", "fwd_ms": None, "step_ms": None, "peak_mem_mb": None, "infer_peak_mem_mb": None}
    model = opt = None
    try:
        torch.manual_seed(0)
        model = build(label, resolution, backend, args.smoke).to(device)
        images = torch.randn(batch, 3, resolution, resolution, device=device)
        labels = torch.randint(0, 1000, (batch,), device=device)
        autocast = dict(device_type=device.type, dtype=dtype, enabled=dtype is not None)

        def infer():
            with torch.inference_mode(), torch.autocast(**autocast):
                model(images)

        model.eval()
        out["fwd_ms"], out["infer_peak_mem_mb"] = _timed(infer, device, args.warmup, args.iters)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def train_step():
            with torch.autocast(**autocast):
                loss = F.cross_entropy(model(images).float(), labels)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        out["step_ms"], out["peak_mem_mb"] = _timed(train_step, device, args.warmup, args.iters)
    except Exception as err:  # noqa: BLE001 - each failure becomes a row; the run goes on
        out["status"] = "OOM" if is_oom(err) else "error"
        if out["status"] == "error":
            out["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
    finally:
        del model, opt
        free_memory(device)
    for field, key in (("fwd_ms", "infer_img_s"), ("step_ms", "train_img_s")):
        if out[field]:
            out[key] = batch / (out[field] / 1e3)
    return out


def _ratio_rows(ours: dict, peer: dict) -> list[dict]:
    rows = []
    for metric in ("fwd_ms", "step_ms", "peak_mem_mb"):
        if ours.get(metric) and peer.get(metric):
            rows.append({"name": f"{peer['name']} / {ours['name']} ({metric})", "ours": ours["name"],
                         "peer": peer["name"], "metric": metric, "ratio": peer[metric] / ours[metric]})
    return rows


def run(args, device: torch.device, command: str) -> dict:
    """Every case of the benchmark -> the schema's dict (see the module docs)."""
    deadline = time.perf_counter() + args.time_budget
    cases, ratios, by_key = [], [], {}

    def case(label: str, resolution: int, batch: int, backend: str) -> dict:
        impl = MODELS[label][1] if backend != "mamba_ssm" else "mamba_ssm"
        suffix = f"_{backend}" if MODELS[label][2] else ""
        row = {"name": f"{label}{suffix}_{resolution}px_b{batch}", "impl": impl, "model": label,
               "shape": {"resolution": resolution, "batch": batch}, "backend": backend if MODELS[label][2] else None}
        if time.perf_counter() > deadline:
            row.update(status="error", fwd_ms=None, step_ms=None, peak_mem_mb=None, error="skipped: time budget")
        else:
            row.update(measure(label, resolution, batch, backend, args, device))
        cases.append(row)
        by_key[(label, backend, resolution)] = row
        shown = (f"infer {row.get('infer_img_s', 0):.0f} img/s, train {row.get('train_img_s', 0):.0f} img/s"
                 if row["status"] == "ok" else row.get("error", row["status"]))
        print(f"  {row['name']}: {row['status']} {shown}", flush=True)
        return row

    ours_backend = args.backends[0]
    for resolution, batch in args.sizes:
        for label in args.models:
            case(label, resolution, batch, ours_backend)
        for peer_backend in args.backends[1:]:
            if resolution in args.backend_sizes and "vim_ti" in args.models:
                peer = case("vim_ti", resolution, batch, peer_backend)
                ratios += _ratio_rows(by_key[("vim_ti", ours_backend, resolution)], peer)
        for mine in ("vim_ti", "vmamba_t"):
            for other in ("deit_ti", "mambaout_t"):
                if (mine, ours_backend, resolution) in by_key and (other, ours_backend, resolution) in by_key:
                    ratios += _ratio_rows(by_key[(mine, ours_backend, resolution)],
                                          by_key[(other, ours_backend, resolution)])
    return {"benchmark": "vision", "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "versions": _versions(), "command": command, "dtype": args.dtype, "cases": cases, "ratios": ratios}


def _versions() -> dict:
    return package_versions("timm", "triton", "mamba_ssm")


def markdown(result: dict) -> str:
    """Table of every case, then the same-run ratios (peer / ours: > 1 means ours is faster or smaller)."""
    v = result["versions"]
    lines = [f"{result['device']} · {result['date']} · torch {v['torch']} · timm {v.get('timm')} · triton "
             f"{v.get('triton')} · mamba-ssm {v.get('mamba_ssm')} · {result['dtype']}", "",
             "| case | impl | res | batch | status | infer img/s | train img/s | infer peak MB | train peak MB |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|"]

    def num(x, fmt="{:.0f}"):
        return fmt.format(x) if x else ""

    for c in result["cases"]:
        status = c["status"] if c["status"] != "error" else f"error: {c.get('error', '')[:60]}"
        lines.append(f"| {c['name']} | {c['impl']} | {c['shape']['resolution']} | {c['shape']['batch']} | {status} | "
                     f"{num(c.get('infer_img_s'))} | {num(c.get('train_img_s'))} | {num(c.get('infer_peak_mem_mb'))} | "
                     f"{num(c.get('peak_mem_mb'))} |")
    if result["ratios"]:
        lines += ["", "| ratio (peer / ours; > 1: ours faster / smaller) | value |", "|---|---:|"]
        lines += [f"| {r['name']} | {r['ratio']:.2f}x |" for r in result["ratios"]]
    return "\n".join(lines)


def _sizes(text: str, what: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        res, _, batch = item.partition(":")
        if not (res.strip().isdigit() and batch.strip().isdigit() and int(res) > 0 and int(batch) > 0):
            raise ValueError(f"{what}: expected RES:BATCH pairs of positive ints, got {item!r}")
        out.append((int(res), int(batch)))
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mamba-suite bench vision", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) | cuda:N | cpu (with --smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny test models at 32 px (CPU check of the script)")
    p.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated RESOLUTION:BATCH")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--backends", default="triton,mamba_ssm", help="ours first, then peers for Vim-Ti")
    p.add_argument("--backend_sizes", default="224,1248", help="resolutions of the Vim-Ti backend comparison")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="autocast dtype (fp32: no autocast)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--time_budget", type=float, default=300.0, help="seconds; later cases are skipped")
    p.add_argument("--out", default="runs/bench", help="folder for vision.json and vision.md")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry: 1 when one of our cases failed with an error (not OOM, not skipped), else 0."""
    parser = _parser()
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available (use --device cpu --smoke to check the script on CPU)")
    if device.type != "cuda" and not args.smoke:
        parser.error("on CPU only --smoke sizes make sense; add --smoke")
    try:
        args.sizes = _sizes("32:2" if args.smoke else args.sizes, "--sizes")
        args.backend_sizes = {int(r) for r in ("32" if args.smoke else args.backend_sizes).split(",") if r.strip()}
    except ValueError as err:
        parser.error(str(err))
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if unknown := [m for m in args.models if m not in MODELS]:
        parser.error(f"--models: unknown {unknown}; choose from {list(MODELS)}")
    from ..kernels import BACKENDS

    if unknown := [b for b in args.backends if b not in BACKENDS]:
        parser.error(f"--backends: unknown {unknown}; choose from {list(BACKENDS)}")
    if args.smoke:
        args.warmup, args.iters = 1, 1
        if device.type == "cpu":
            args.backends, args.dtype = ["reference"], "fp32"
    if not args.backends or args.warmup < 0 or args.iters < 1:
        parser.error("need at least one backend, --warmup >= 0 and --iters >= 1")
    command = "mamba-suite bench vision " + " ".join(argv if argv is not None else sys.argv[3:])
    result = run(args, device, command.strip())
    write_result(args.out, "vision", result, markdown(result))
    return 1 if failed_cases(result) else 0
