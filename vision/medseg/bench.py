"""`mamba-suite bench seg3d`: our 3D Mamba U-Nets vs MONAI SwinUNETR and SegResNet, in one run.

For every network and cubic patch size: a training step (bf16 autocast forward, DiceCE loss, backward,
AdamW step) on a batch of random volumes with 14 output classes (BTCV's), its forward-only time
(no grad) and forward+backward time, and the peak memory of the training step
(`torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`: weights, AdamW state and
activations). Times are medians of `--iters` runs after `--warmup` steps, taken with CUDA events.
The peers are sized to comparable parameter counts (SwinUNETR feature_size 48: 62.2M; SegResNet
init_filters 56: 57.6M; ours 48-52M). An out-of-memory case is marked "OOM" and the run goes on.

Writes `<out>/seg3d.json` (the suite's benchmark schema, with peer/ours ratios of step time and
peak memory) and `<out>/seg3d.md`, and prints the table. `--device cpu --smoke` runs tiny versions
of every network on one 64^3 patch (for tests).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import statistics
import sys
from pathlib import Path

import torch
from ...core.benchtools import elapsed_ms, package_versions

__all__ = ["main", "build_network", "NETWORKS"]

NAME = "seg3d"
NUM_CLASSES = 14
# network -> ("ours" | peer name, full-size kwargs, smoke kwargs)
NETWORKS = {
    "umamba_bot_3d": ("ours", {}, {"widths": (8, 16, 32, 64), "strides": (1, 2, 2, 2), "encoder_blocks": 1}),
    "segmamba_3d": ("ours", {}, {"widths": (8, 16, 32, 64), "strides": (1, 2, 2, 2), "encoder_blocks": 1,
                                 "placement": [1, 2, 3], "d_state": 8}),
    "swinunetr": ("monai", {"feature_size": 48}, {"feature_size": 12, "depths": (1, 1, 1, 1)}),
    "segresnet": ("monai", {"init_filters": 56}, {"init_filters": 8}),
}


def build_network(name: str, smoke: bool = False) -> torch.nn.Module:
    """One of NETWORKS with 1 input channel and NUM_CLASSES outputs (tiny with smoke=True)."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; choose from {', '.join(NETWORKS)}")
    impl, full, tiny = NETWORKS[name]
    kwargs = tiny if smoke else full
    if impl == "ours":
        import timm

        import mambasuite.vision.models.umamba  # noqa: F401  (registers the factories)

        return timm.create_model(name, in_chans=1, num_classes=NUM_CLASSES, **kwargs)
    from monai.networks.nets import SegResNet, SwinUNETR

    if name == "swinunetr":
        return SwinUNETR(in_channels=1, out_channels=NUM_CLASSES, spatial_dims=3, **kwargs)
    return SegResNet(spatial_dims=3, in_channels=1, out_channels=NUM_CLASSES, **kwargs)


class _Timer:
    """Milliseconds of a callable on `device` (core.benchtools.elapsed_ms)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self, fn) -> float:
        return elapsed_ms(fn, self.device)


def bench_case(name: str, size: int, batch: int, device: torch.device, warmup: int, iters: int,
               smoke: bool) -> dict:
    """Time one network at one patch size; returns a case dict of the suite's schema."""
    from monai.losses import DiceCELoss

    impl = NETWORKS[name][0]
    case = {"name": f"{name}@{size}^3xb{batch}", "impl": "ours" if impl == "ours" else name,
            "shape": {"batch": batch, "channels": 1, "patch": [size] * 3, "classes": NUM_CLASSES},
            "status": "ok", "fwd_ms": None, "fwd_bwd_ms": None, "step_ms": None, "peak_mem_mb": None}
    model = optimizer = None
    try:
        torch.manual_seed(0)
        model = build_network(name, smoke).to(device).train()
        case["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        x = torch.randn(batch, 1, size, size, size, device=device)
        y = torch.randint(0, NUM_CLASSES, (batch, 1, size, size, size), device=device).float()
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

        def fwd_bwd():
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                out = model(x)
            loss_fn(out.float(), y).backward()

        def step():
            fwd_bwd()
            optimizer.step()

        def fwd():
            with torch.no_grad(), autocast:
                model(x)

        for _ in range(warmup):
            step()
        timer = _Timer(device)
        for key, fn in (("step_ms", step), ("fwd_bwd_ms", fwd_bwd), ("fwd_ms", fwd)):
            case[key] = statistics.median(timer(fn) for _ in range(iters))
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            step()
            torch.cuda.synchronize()
            case["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    except torch.OutOfMemoryError:
        case["status"] = "OOM"
    except (RuntimeError, ValueError) as err:  # a shape a network does not support: the other cases still run
        case.update(status="error", error=str(err).splitlines()[0][:300])
    finally:
        del model, optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return case


def _ratios(cases: list[dict]) -> list[dict]:
    """peer / ours for step time and peak memory, per patch size, for every (ours, peer) pair that ran."""
    ratios = []
    ok = [c for c in cases if c["status"] == "ok"]
    for ours in (c for c in ok if c["impl"] == "ours"):
        for peer in (c for c in ok if c["impl"] != "ours" and c["shape"] == ours["shape"]):
            for metric in ("step_ms", "peak_mem_mb"):
                if ours.get(metric) and peer.get(metric):
                    ratios.append({"name": f"{peer['name']} / {ours['name']} ({metric})", "ours": ours["name"],
                                   "peer": peer["name"], "metric": metric, "ratio": peer[metric] / ours[metric]})
    return ratios


def _versions() -> dict:
    return package_versions("monai", "timm", "triton")


def _fmt(value, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def markdown(result: dict) -> str:
    """The results as a markdown table plus the ratio lines."""
    lines = [f"# seg3d: 3D segmentation training step ({result['device']}, {result['date']})", "",
             f"`{result['command']}` · torch {result['versions']['torch']} · MONAI {result['versions']['monai']} · "
             f"{result['precision']}, batch {result['batch']}, {NUM_CLASSES} classes, median of {result['iters']}", "",
             "| network | impl | patch | params (M) | step ms | fwd+bwd ms | fwd ms | peak MiB | status |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for c in result["cases"]:
        net = c["name"].split("@")[0]
        lines.append(f"| {net} | {c['impl']} | {c['shape']['patch'][0]}^3 | {_fmt(c.get('params_m'), 2)} | "
                     f"{_fmt(c['step_ms'])} | {_fmt(c['fwd_bwd_ms'])} | {_fmt(c['fwd_ms'])} | "
                     f"{_fmt(c['peak_mem_mb'], 0)} | {c['status']} |")
    if result["ratios"]:
        lines += ["", "| peer / ours | metric | ratio (> 1: ours is faster / smaller) |", "|---|---|---:|"]
        lines += [f"| {r['peer']} / {r['ours']} | {r['metric']} | {r['ratio']:.2f} |" for r in result["ratios"]]
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mamba-suite bench seg3d", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/bench", help="output folder for seg3d.json and seg3d.md")
    p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (cpu only makes sense with --smoke)")
    p.add_argument("--networks", default=",".join(NETWORKS), help=f"comma list from {', '.join(NETWORKS)}")
    p.add_argument("--sizes", default="96,128", help="cubic patch sides, comma separated (multiples of 32)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--smoke", action="store_true", help="tiny networks, one 64^3 patch, 1 warm-up, 1 timed run each")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (2 for bad arguments or a missing device)."""
    parser = _parser()
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here (use --device cpu --smoke for a CPU check)")
    networks = [n.strip() for n in args.networks.split(",") if n.strip()]
    unknown = [n for n in networks if n not in NETWORKS]
    if unknown:
        parser.error(f"--networks: unknown {unknown}; choose from {', '.join(NETWORKS)}")
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    if args.smoke:
        sizes, args.batch, args.warmup, args.iters = [64], 1, 1, 1
    if any(s < 32 or s % 32 for s in sizes):
        parser.error(f"--sizes must be positive multiples of 32 (SwinUNETR's and our nets' total stride), got {sizes}")
    cases = []
    for size in sizes:
        for name in networks:
            case = bench_case(name, size, args.batch, device, args.warmup, args.iters, args.smoke)
            print(f"{case['name']}: {case['status']} step {_fmt(case['step_ms'])} ms, "
                  f"peak {_fmt(case['peak_mem_mb'], 0)} MiB", flush=True)
            cases.append(case)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    result = {"benchmark": NAME, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "device": device_name, "versions": _versions(),
              "command": "mamba-suite bench seg3d " + " ".join(argv if argv is not None else sys.argv[1:]),
              "precision": "bf16 autocast" if device.type == "cuda" else "fp32", "batch": args.batch,
              "iters": args.iters, "cases": cases, "ratios": _ratios(cases)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{NAME}.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (out / f"{NAME}.md").write_text(table)
    print(table)
    return 0
