"""`mamba-suite bench audio`: ConMamba encoder vs torchaudio's Conformer over utterance lengths, same run.

Both encoders get the same input -- random 80-bin log-mel features at 100 frames/s, batch `--batch` -- and
the same x4 conv subsampling front end (`Conv2dSubsampling`), so the comparison is BiMamba vs self-attention
(plus each layer's FFNs and conv module) at d_model / layers / FFN width / conv kernel in common; the
Conformer has `--heads` attention heads. Per case: forward time (eval, inference mode), forward+backward time
(train mode, sum of the outputs as the loss), peak memory of forward+backward, under bf16 autocast on CUDA.
Times are medians of `--repeats` runs after `--warmup` runs, timed with CUDA events; an out-of-memory case
is recorded as "OOM" and the run goes on. Writes `<out>/audio.json` (the suite's benchmark schema) and
`<out>/audio.md`, and prints the table last.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from ..core.benchtools import is_oom, package_versions

__all__ = ["ConformerEncoder", "main", "run_benchmark"]


class ConformerEncoder(nn.Module):
    """The peer: ConMamba's conv subsampling front end + `torchaudio.models.Conformer`.

    forward(features (batch, T, n_mels), lengths (batch,)) -> (batch, T', d_model), lengths (batch,).
    """

    def __init__(self, n_mels: int, d_model: int, depth: int, d_ffn: int, heads: int, conv_kernel: int = 31,
                 dropout: float = 0.1) -> None:
        super().__init__()
        from torchaudio.models import Conformer

        from .models.conmamba import Conv2dSubsampling

        self.subsample = Conv2dSubsampling(n_mels, d_model)
        self.conformer = Conformer(input_dim=d_model, num_heads=heads, ffn_dim=d_ffn, num_layers=depth,
                                   depthwise_conv_kernel_size=conv_kernel, dropout=dropout)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = self.subsample(features, lengths)
        return self.conformer(x, lengths)


def _implementations(args) -> dict[str, tuple[str, str] | None]:
    """Model label -> (BiMamba variant, scan backend) for ConMamba, None for the Conformer peer."""
    impls = {}
    for variant in args.variants:
        for backend in args.backends:
            impls[f"conmamba-{variant}" + ("" if backend == "auto" else f"-{backend}")] = (variant, backend)
    impls["conformer"] = None
    return impls


def _build(spec: tuple[str, str] | None, args) -> nn.Module:
    if spec is None:
        return ConformerEncoder(args.n_mels, args.d_model, args.layers, args.d_ffn, args.heads, args.conv_kernel)
    from .models.conmamba import ConMamba

    variant, backend = spec
    return ConMamba(n_mels=args.n_mels, num_classes=0, d_model=args.d_model, depth=args.layers, d_ffn=args.d_ffn,
                    conv_kernel=args.conv_kernel, d_state=args.d_state, bimamba_variant=variant, backend=backend)


def _time_ms(fn, device: torch.device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _measure(model: nn.Module, seconds: float, args, device: torch.device) -> dict:
    frames = int(round(seconds * 100))
    feats = torch.randn(args.batch, frames, args.n_mels, device=device)
    lengths = torch.full((args.batch,), frames, dtype=torch.long, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def forward():
        with torch.inference_mode(), autocast:
            model(feats, lengths)

    def forward_backward():
        with autocast:
            out, _ = model(feats, lengths)
        out.float().sum().backward()

    model.eval()
    fwd = _time_ms(forward, device, args.warmup, args.repeats)
    model.train()
    fwd_bwd = _time_ms(forward_backward, device, args.warmup, args.repeats)
    peak = None
    if device.type == "cuda":
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        forward_backward()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    return dict(fwd_ms=fwd, fwd_bwd_ms=fwd_bwd, peak_mem_mb=peak)


def run_benchmark(args, device: torch.device) -> dict:
    """Measure every (length, implementation) case; returns the benchmark JSON dict."""
    impls = _implementations(args)
    cases, ratios = [], []
    for seconds in args.seconds:
        names = {}
        for impl, spec in impls.items():
            frames = int(round(seconds * 100))
            name = f"{impl}_{seconds:g}s_b{args.batch}_d{args.d_model}_l{args.layers}"
            names[impl] = name
            case = dict(name=name, impl="ours" if spec else "torchaudio.Conformer", model=impl,
                        backend=spec[1] if spec else None, shape=dict(batch=args.batch, seconds=seconds, frames=frames,
                                               encoder_frames=-(-(-(-frames // 2)) // 2), n_mels=args.n_mels,
                                               d_model=args.d_model, layers=args.layers, d_ffn=args.d_ffn,
                                               heads=args.heads if impl == "conformer" else None),
                        status="ok", fwd_ms=None, fwd_bwd_ms=None, peak_mem_mb=None)
            model = None
            try:
                torch.manual_seed(0)
                model = _build(spec, args).to(device)
                case["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
                case.update(_measure(model, seconds, args, device))
            except (RuntimeError, torch.OutOfMemoryError) as err:
                case["status"] = "OOM" if is_oom(err) else "error"
                case["error"] = str(err).splitlines()[0][:300]
            finally:
                del model
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            cases.append(case)
            print(f"  {name}: {case['status']} fwd {case['fwd_ms']} ms, fwd+bwd {case['fwd_bwd_ms']} ms, "
                  f"peak {case['peak_mem_mb']} MiB", flush=True)
        by_name = {c["name"]: c for c in cases}
        peer = by_name[names["conformer"]]
        for impl in [i for i, spec in impls.items() if spec]:
            ours = by_name[names[impl]]
            for metric in ("fwd_bwd_ms", "fwd_ms", "peak_mem_mb"):
                if ours["status"] == "ok" and peer["status"] == "ok" and ours.get(metric) and peer.get(metric):
                    ratios.append(dict(name=f"{impl}_vs_conformer_{seconds:g}s_{metric}", ours=ours["name"],
                                       peer=peer["name"], metric=metric, ratio=peer[metric] / ours[metric]))
    return dict(benchmark="audio", date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                device=torch.cuda.get_device_name(device) if device.type == "cuda" else
                f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
                versions=_versions(), command="mamba-suite bench audio " + shlex.join(args.argv),
                settings=dict(dtype=args.dtype, batch=args.batch, warmup=args.warmup, repeats=args.repeats,
                              backends=args.backends, d_state=args.d_state, conv_kernel=args.conv_kernel),
                cases=cases, ratios=ratios)


def _versions() -> dict:
    return package_versions("torchaudio", "triton", "mamba_ssm")


def markdown(result: dict) -> str:
    """The benchmark as a markdown table plus the ratio lines."""
    s = result["settings"]
    v = result["versions"]
    lines = [f"{result['device']} · {result['date']} · torch {v['torch']} · torchaudio {v['torchaudio']} · triton "
             f"{v.get('triton')} · {s['dtype']} · batch {s['batch']} · median of {s['repeats']} after {s['warmup']} "
             "warm-up", "",
             f"`{result['command']}`", "",
             "| audio | encoder frames | model | params (M) | fwd ms | fwd+bwd ms | peak MiB (fwd+bwd) | status |",
             "|---:|---:|---|---:|---:|---:|---:|---|"]

    def fmt(v, spec=".1f"):
        return "" if v is None else format(v, spec)

    for c in result["cases"]:
        sh = c["shape"]
        lines.append(f"| {sh['seconds']:g} s | {sh['encoder_frames']} | {c['model']} "
                     f"| {fmt(c.get('params_m'), '.2f')} | {fmt(c['fwd_ms'])} | {fmt(c['fwd_bwd_ms'])} "
                     f"| {fmt(c['peak_mem_mb'], '.0f')} | {c['status']} |")
    if result["ratios"]:
        lines += ["", "Conformer / ConMamba (> 1: ConMamba is faster or smaller):", ""]
        lines += [f"- {r['name']}: {r['ratio']:.2f}x" for r in result["ratios"]]
    return "\n".join(lines) + "\n"


def _parse_args(argv: list[str]):
    p = argparse.ArgumentParser(prog="mamba-suite bench audio", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/bench", help="output folder for audio.json / audio.md")
    p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu")
    p.add_argument("--seconds", default="10,30,120", help="utterance lengths in seconds, comma-separated")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--d_model", type=int, default=256)
    p.add_argument("--layers", type=int, default=18)
    p.add_argument("--d_ffn", type=int, default=1024)
    p.add_argument("--heads", type=int, default=4, help="Conformer attention heads")
    p.add_argument("--conv_kernel", type=int, default=31)
    p.add_argument("--d_state", type=int, default=16)
    p.add_argument("--n_mels", type=int, default=80)
    p.add_argument("--variants", default="internal", help="BiMamba variants: internal, external (comma-separated)")
    p.add_argument("--backends", default="auto",
                   help="selective-scan backends of ConMamba, comma-separated: auto (Triton on CUDA), triton, "
                        "reference, mamba_ssm (needs mamba-ssm installed)")
    p.add_argument("--dtype", default=None, choices=["bf16", "fp32"], help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes for a quick CPU check (d_model 32, 2 layers, 0.5/1 s, batch 2, 1 repeat)")
    args = p.parse_args(argv)
    args.argv = list(argv)
    if args.smoke:
        args.d_model, args.layers, args.d_ffn, args.heads, args.batch = 32, 2, 64, 4, 2
        args.seconds, args.warmup, args.repeats = "0.5,1", 0, 1
    try:
        args.seconds = [float(s) for s in args.seconds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seconds: expected comma-separated numbers, got {args.seconds!r}")
    if not args.seconds or any(s <= 0 for s in args.seconds):
        p.error("--seconds: need positive lengths")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not args.variants or any(v not in ("internal", "external") for v in args.variants):
        p.error(f"--variants: choose from internal, external; got {args.variants}")
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not args.backends or any(b not in ("auto", "triton", "reference", "mamba_ssm") for b in args.backends):
        p.error(f"--backends: choose from auto, triton, reference, mamba_ssm; got {args.backends}")
    for name in ("batch", "d_model", "layers", "d_ffn", "heads", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.d_model % args.heads:
        p.error(f"--d_model ({args.d_model}) must be divisible by --heads ({args.heads})")
    return p, args


def main(argv: list[str] | None = None) -> int:
    """CLI entry; returns 0 when every case ran (OOM counts as ran), 1 if any case failed otherwise."""
    parser, args = _parse_args(list(sys.argv[1:] if argv is None else argv))
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available (use --device cpu --smoke for a CPU check)")
    args.dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    result = run_benchmark(args, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "audio.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (out / "audio.md").write_text(table)
    print(f"\nwrote {out / 'audio.json'} and {out / 'audio.md'}\n")
    print(table)
    return 1 if any(c["status"] == "error" for c in result["cases"]) else 0
