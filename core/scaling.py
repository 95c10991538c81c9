"""`mamba-suite bench scaling`: a Mamba backbone against a Transformer of equal width and depth, over lengths.

For each preset the study runs two sweeps -- sequence lengths doubling from `--min_len` to `--max_len`, and (vision
presets) image resolutions mapped to Vim's token count (res / 16)^2 + 1 -- and measures, per model and length,
the forward time (inference mode), the training-step time (forward + backward + AdamW step, loss = mean(out^2)),
tokens/s of both, and the peak CUDA memory of the step. A model's sweep stops at its first out-of-memory point
(marked "OOM"); `--time_budget` splits the remaining time over the sweeps still to run and skips a point whose
predicted cost (extrapolated from the previous points) does not fit.

Inputs are random activations (batch, L, d_model): patch/token embeddings and heads are left out, so the study
measures the backbones only. On CUDA the models run under bf16 autocast with fp32 weights; the Mamba scan uses the
`--backend` kernels ("auto" = Triton) and attention uses SDPA (FlashAttention when the dtype and head size allow).

Output in `--out`: scaling.json (the suite's benchmark schema, plus per-sweep slopes and crossovers),
scaling.md, and one PNG per sweep (log-log time and memory vs tokens, fitted slopes, crossover marked).

    mamba-suite bench scaling --preset vim-ti,dna-256 --time_budget 330 --out runs/bench
    mamba-suite bench scaling --device cpu --smoke --out /tmp/scaling
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import platform
import shlex
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from .blocks import MambaBackbone
from .scaling_analysis import OURS, PEER, markdown_sweep, plot_sweep, sweep_summary
from .transformer import TransformerBackbone, count_parameters
from .benchtools import elapsed_ms, is_oom, package_versions

__all__ = ["PRESETS", "main", "resolution_tokens"]

# Backbone presets. Vim-Ti: bimamba v2 ("mean"), Caduceus: BiMamba "add" with tied projections; both d_state 16,
# expand 2. The Transformer gets the same width and depth, heads of 64 (DeiT-Ti: 3 heads at d_model 192).
PRESETS: dict[str, dict] = {
    "vim-ti": dict(d_model=192, n_layer=24, mixer="bimamba", bimamba_combine="mean", vision=True),
    "dna-256": dict(d_model=256, n_layer=16, mixer="bimamba", bimamba_combine="add", vision=False),
    "lm-768": dict(d_model=768, n_layer=24, mixer="mamba", bimamba_combine=None, vision=False),
}
SMOKE = dict(d_model=32, n_layer=2, min_len=32, max_len=256, resolutions="32,64,128", warmup=1, repeats=2,
             target_s=0.2, batch=1, res_batch=2)
AMP = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


def resolution_tokens(resolution: int, patch: int = 16) -> int:
    """Vim's token count for a square image: (resolution // patch)^2 patches + 1 class token."""
    if resolution < patch:
        raise ValueError(f"resolution {resolution} is smaller than the patch size {patch}")
    return (resolution // patch) ** 2 + 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compiled_kernel_variants() -> int:
    """Compiled variants of the package's Triton kernels so far (0 without Triton or under its interpreter)."""
    try:
        from ..kernels.triton.compile_stats import compiled_variants
    except ImportError:
        return 0
    return compiled_variants()


def time_ms(fn, device: torch.device, warmup: int, repeats: int, target_s: float) -> tuple[float, int]:
    """(median time of `fn` in ms after warm-up, kernel variants compiled during the timed calls).

    The first call may compile kernels, so with warmup >= 2 a second call always follows it, and that call's time
    sizes the rest: further warm-ups only when a call is short (< 0.2 s), and as many timed repeats as fit in
    `target_s` (at least 2, at most `repeats`). A non-zero second value means the median includes compilation.
    """
    call = elapsed_ms(fn, device)
    if warmup >= 2:
        call = elapsed_ms(fn, device)
    for _ in range(warmup - 2 if call < 200 else 0):
        fn()
    n = max(2, min(repeats, int(target_s * 1e3 / max(call, 1e-3))))
    before = compiled_kernel_variants()
    median = statistics.median(elapsed_ms(fn, device) for _ in range(n))
    return median, compiled_kernel_variants() - before


def peak_memory_mb(fn, device: torch.device) -> tuple[float | None, float | None]:
    """(peak allocated MB during one call, the peak minus what was allocated before it); None on CPU."""
    if device.type != "cuda":
        fn()
        return None, None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    peak = torch.cuda.max_memory_allocated(device)
    return peak / 2**20, (peak - base) / 2**20


def build_model(model: str, cfg: dict) -> torch.nn.Module:
    """The Mamba backbone or its Transformer peer for a resolved preset `cfg`."""
    if model == OURS:
        return MambaBackbone(cfg["d_model"], cfg["n_layer"], d_state=cfg["d_state"], expand=cfg["expand"],
                             mixer=cfg["mixer"], bimamba_combine=cfg["bimamba_combine"], backend=cfg["backend"])
    # Causal attention only opposite a unidirectional Mamba; the bidirectional presets see the whole sequence.
    return TransformerBackbone(cfg["d_model"], cfg["tf_layers"], cfg["n_head"], causal=cfg["mixer"] == "mamba")


def measure_point(net, opt, shape: dict, cfg: dict, device: torch.device) -> dict:
    """Forward and training-step time, tokens/s and peak memory of `net` at one (batch, length)."""
    batch, length = shape["batch"], shape["length"]
    x = torch.randn(batch, length, cfg["d_model"], device=device)
    amp = AMP[cfg["amp"]]
    autocast = torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()

    def forward() -> None:
        with torch.inference_mode(), autocast:
            net(x)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast:
            out = net(x)
        out.float().pow(2).mean().backward()
        opt.step()

    timing = (device, cfg["warmup"], cfg["repeats"], cfg["target_s"])
    fwd_ms, fwd_compiles = time_ms(forward, *timing)
    fwd_peak, _ = peak_memory_mb(forward, device)
    step_ms, step_compiles = time_ms(step, *timing)
    peak, over_base = peak_memory_mb(step, device)
    tokens = batch * length
    # Kernels compiled while timing: the figures then include compilation (flagged in the report, not a speed).
    return {"fwd_ms": fwd_ms, "step_ms": step_ms, "tokens_per_s": tokens / fwd_ms * 1e3,
            "train_tokens_per_s": tokens / step_ms * 1e3, "peak_mem_mb": peak, "step_mem_over_base_mb": over_base,
            "fwd_peak_mem_mb": fwd_peak, "compiled_while_timing": fwd_compiles + step_compiles}


class Budget:
    """Wall-clock budget shared by the sweeps still to run (None = unlimited)."""

    def __init__(self, seconds: float | None) -> None:
        self.start, self.seconds = time.monotonic(), seconds

    def group_deadline(self, groups_left: int) -> float:
        """Deadline (monotonic) of the next group: an equal share of what is left; unused time carries over."""
        if self.seconds is None:
            return math.inf
        left = self.seconds - (time.monotonic() - self.start)
        return time.monotonic() + max(left, 0.0) / max(groups_left, 1)


def calls_per_measurement(call_s: float, cfg: dict) -> float:
    """How many calls `time_ms` + `peak_memory_mb` make for a call of `call_s` seconds (warm-ups included)."""
    warmups = cfg["warmup"] if call_s < 0.2 else min(cfg["warmup"], 2)
    return warmups + max(2, min(cfg["repeats"], int(cfg["target_s"] / max(call_s, 1e-6)))) + 1


def _predict_s(history: list[tuple[int, float, float]], length: int, model: str, cfg: dict) -> float:
    """Seconds the point at `length` should take, from the measured (length, fwd s, step s) of earlier points.

    Each call time is extrapolated with the growth exponent of the training step between the last two points
    (clipped to [1, 2]; with one point: 1 for Mamba, 2 for attention), then multiplied by the calls a measurement
    makes. Measured call times, not wall time, so that a first point's compilation does not count.
    """
    if not history:
        return 0.0
    length1, fwd1, step1 = history[-1]
    p = 1.0 if model == OURS else 2.0
    if len(history) >= 2:
        length0, _, step0 = history[-2]
        if length1 > length0 and step0 > 0 and step1 > 0:
            p = min(2.0, max(1.0, math.log(step1 / step0) / math.log(length1 / length0)))
    growth = (length / length1) ** p
    return sum(t * growth * calls_per_measurement(t * growth, cfg) for t in (fwd1, step1))


def run_group(model: str, points: list[dict], cfg: dict, device: torch.device, deadline: float,
              log=print) -> tuple[list[dict], list[str]]:
    """Measure `model` at each point (ascending length) until it runs out of memory or the next point is
    predicted to end past `deadline` (time.monotonic()). Returns (cases, names of the points skipped for time)."""
    torch.manual_seed(0)
    net = build_model(model, cfg).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    params = count_parameters(net)
    cases, skipped, history = [], [], []
    for i, point in enumerate(points):
        name = f"{point['prefix']}/L{point['shape']['length']}/{model}"
        predicted = _predict_s(history, point["shape"]["length"], model, cfg)
        if time.monotonic() + predicted > deadline:
            skipped += [f"{p['prefix']}/L{p['shape']['length']}/{model}" for p in points[i:]]
            log(f"  {name}: skipped (predicted {predicted:.0f} s exceeds the time budget)")
            break
        case = {"name": name, "impl": "ours" if model == OURS else PEER, "model": model,
                "shape": dict(point["shape"], d_model=cfg["d_model"],
                              n_layer=cfg["n_layer"] if model == OURS else cfg["tf_layers"]),
                "params": params, "fwd_bwd_ms": None}
        error = None
        try:
            case.update(measure_point(net, opt, point["shape"], cfg, device), status="ok")
        except Exception as err:  # noqa: BLE001 - one failing point (OOM, kernel error) must not end the study
            error = err
        if error is not None:
            status = "OOM" if is_oom(error) else "error"
            case.update(status=status, fwd_ms=None, step_ms=None, peak_mem_mb=None)
            if status == "error":
                case["error"] = str(error).splitlines()[0][:300]
            error = None
            opt.zero_grad(set_to_none=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if case["status"] == "ok":
            history.append((point["shape"]["length"], case["fwd_ms"] / 1e3, case["step_ms"] / 1e3))
        cases.append(case)
        log(f"  {name}: " + (f"fwd {case['fwd_ms']:.3g} ms, step {case['step_ms']:.3g} ms"
                             + (f", peak {case['peak_mem_mb']:.0f} MB" if case["peak_mem_mb"] else "")
                             if case["status"] == "ok" else case["status"]))
        if case["status"] == "OOM":
            break  # longer inputs only need more memory
    del net, opt
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return cases, skipped


def sweeps_of(cfg: dict) -> list[tuple[str, list[dict]]]:
    """The sweeps of a resolved preset: [(sweep id, points)], each point {"prefix", "shape"}."""
    out = []
    if cfg["vision"] and cfg["sweep"] in ("resolution", "both"):  # short sweep first: its spare time carries over
        out.append(("resolution", [{"prefix": f"{cfg['preset']}/res{r}",
                                    "shape": {"batch": cfg["res_batch"], "length": resolution_tokens(r),
                                              "resolution": r}} for r in cfg["resolutions"]]))
    if cfg["sweep"] in ("length", "both"):
        lengths, length = [], cfg["min_len"]
        while length <= cfg["max_len"]:
            lengths.append(length)
            length *= 2
        out.append(("length", [{"prefix": f"{cfg['preset']}/len", "shape": {"batch": cfg["batch"], "length": n}}
                               for n in lengths]))
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mamba-suite bench scaling", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="vim-ti,dna-256", help=f"comma-separated, from {', '.join(PRESETS)}")
    p.add_argument("--sweep", default="both", choices=("length", "resolution", "both"),
                   help="resolution sweeps run for vision presets only")
    p.add_argument("--d_model", type=int, help="override the preset's width")
    p.add_argument("--n_layer", type=int, help="override the preset's depth")
    p.add_argument("--d_state", type=int, default=16)
    p.add_argument("--expand", type=int, default=2)
    p.add_argument("--n_head", type=int, help="Transformer heads (default d_model // 64, at least 1)")
    p.add_argument("--tf_layers", type=int, help="Transformer depth (default: the Mamba depth)")
    p.add_argument("--backend", default="auto", help="Mamba scan backend: auto | triton | reference | mamba_ssm")
    p.add_argument("--min_len", type=int, default=256)
    p.add_argument("--max_len", type=int, default=1 << 20)
    p.add_argument("--resolutions", default="224,384,512,768,1024,1536,2048")
    p.add_argument("--batch", type=int, default=1, help="batch of the length sweep")
    p.add_argument("--res_batch", type=int, default=8, help="batch of the resolution sweep")
    p.add_argument("--device", default="cuda")
    p.add_argument("--amp", default="auto", choices=("auto", *AMP), help="autocast dtype; auto = bf16 on CUDA, "
                   "none on CPU")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10, help="most timed calls per measurement (median)")
    p.add_argument("--target_s", type=float, default=1.0, help="time spent on the timed calls of a measurement")
    p.add_argument("--time_budget", type=float, help="seconds for the whole run (points that would not fit are "
                   "skipped and listed)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes for a CPU check: " + ", ".join(
        f"{k}={v}" for k, v in SMOKE.items()))
    p.add_argument("--out", default="runs/bench")
    return p


def resolve_configs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[dict]:
    """One dict per preset with every size and setting resolved; errors name the bad option."""
    positive = ("d_model", "n_layer", "d_state", "expand", "n_head", "tf_layers", "min_len", "max_len", "batch",
                "res_batch", "warmup", "repeats")
    for key in positive:
        value = getattr(args, key)
        if value is not None and value < 1:
            parser.error(f"--{key} must be >= 1, got {value}")
    if args.min_len > args.max_len:
        parser.error(f"--min_len ({args.min_len}) must be <= --max_len ({args.max_len})")
    if args.time_budget is not None and args.time_budget <= 0:
        parser.error(f"--time_budget must be > 0 seconds, got {args.time_budget}")
    try:
        resolutions = [int(r) for r in str(args.resolutions).split(",") if r.strip()]
        for r in resolutions:
            resolution_tokens(r)
    except ValueError as err:
        parser.error(f"--resolutions: expected comma-separated integers >= 16, got {args.resolutions!r} ({err})")
    configs = []
    for preset in [p.strip() for p in args.preset.split(",") if p.strip()]:
        if preset not in PRESETS:
            parser.error(f"--preset: unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        cfg = dict(PRESETS[preset], preset=preset)
        for key in ("d_model", "n_layer"):
            if getattr(args, key) is not None:
                cfg[key] = getattr(args, key)
        cfg["n_head"] = args.n_head or max(1, cfg["d_model"] // 64)
        if cfg["d_model"] % cfg["n_head"]:
            parser.error(f"--n_head {cfg['n_head']} does not divide d_model {cfg['d_model']}")
        cfg["tf_layers"] = args.tf_layers or cfg["n_layer"]
        for key in ("d_state", "expand", "backend", "min_len", "max_len", "batch", "res_batch", "warmup", "repeats",
                    "target_s", "sweep"):
            cfg[key] = getattr(args, key)
        cfg["resolutions"] = resolutions
        configs.append(cfg)
    if not configs:
        parser.error("--preset: no preset given")
    return configs


def _versions(device: torch.device) -> dict:
    return package_versions("triton")


def pair_ratios(cases: list[dict]) -> list[dict]:
    """Schema `ratios`: Transformer / Mamba time at every point where both ran ("ratio" > 1: Mamba is faster)."""
    by_point: dict[str, dict] = {}
    for c in cases:
        by_point.setdefault(c["name"].rsplit("/", 1)[0], {})[c["model"]] = c
    ratios = []
    for point, pair in by_point.items():
        if all(pair.get(m, {}).get("status") == "ok" for m in (OURS, PEER)):
            for metric in ("step_ms", "fwd_ms"):
                ratios.append({"name": f"{point}/{metric}", "ours": pair[OURS]["name"], "peer": pair[PEER]["name"],
                               "metric": metric, "ratio": pair[PEER][metric] / pair[OURS][metric]})
    return ratios


def write_outputs(meta: dict, configs: list[dict], results: dict, skipped: list[str], out: Path,
                  plots: bool = True) -> tuple[dict, str]:
    """Write scaling.json, scaling.md and (with `plots`) the PNGs for the cases measured so far."""
    result = {**meta, "cases": [], "ratios": [], "sweeps": [], "skipped": skipped}
    sections = []
    amp, device_name = meta["settings"]["amp"], meta["device"]
    for cfg in configs:
        for sweep, _ in sweeps_of(cfg):
            cases = results.get((cfg["preset"], sweep), [])
            summary = sweep_summary(cases)
            image = f"scaling_{cfg['preset']}_{sweep}.png"
            params = {c["model"]: c["params"] for c in cases}
            title = f"{cfg['preset']}, {sweep} sweep"
            detail = (f"Mamba ({cfg['mixer']}, d_model {cfg['d_model']}, {cfg['n_layer']} layers, "
                      f"{params.get(OURS, 0) / 1e6:.2f}M params) vs Transformer ({cfg['n_head']} heads, "
                      f"{cfg['tf_layers']} layers, {params.get(PEER, 0) / 1e6:.2f}M params); "
                      f"batch {cfg['batch'] if sweep == 'length' else cfg['res_batch']}; {device_name}; amp {amp}")
            if plots and cases:
                plot_sweep(f"{title}\n{detail}", cases, summary, out / image)
            result["cases"] += cases
            result["ratios"] += pair_ratios(cases)
            result["sweeps"].append({"preset": cfg["preset"], "sweep": sweep, "params": params, **summary})
            sections.append(markdown_sweep(title, cases, summary, image if plots and cases else None, detail))
    header = (f"# Scaling study: Mamba vs Transformer\n\n{device_name} · {meta['date']} · "
              + " · ".join(f"{k} {v}" for k, v in meta["versions"].items())
              + f" · autocast {amp} · training step = fwd + bwd + AdamW on mean(out^2) · times are medians\n\n"
              f"Command: `{meta['command']}`\n")
    if skipped:
        header += f"\nSkipped for the time budget: {', '.join(skipped)}\n"
    table = header + "\n" + "\n".join(sections)
    (out / "scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "scaling.md").write_text(table)
    return result, table


def main(argv: list[str] | None = None) -> int:
    """Run the study (see the module docstring); returns 0, or 1 when a point failed with an error (not OOM)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.smoke:  # the smoke sizes become defaults; options given explicitly still win
        parser.set_defaults(**SMOKE)
        args = parser.parse_args(argv)
    configs = resolve_configs(args, parser)
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        parser.error(f"--device: {err}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is available; run `--device cpu --smoke` on CPU")
    amp = args.amp if args.amp != "auto" else ("bf16" if device.type == "cuda" else "none")
    for cfg in configs:
        cfg["amp"] = amp
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    groups = [(cfg, sweep, points, model) for cfg in configs for sweep, points in sweeps_of(cfg)
              for model in (OURS, PEER)]
    if not groups:
        parser.error(f"--sweep {args.sweep}: nothing to run (resolution sweeps exist for vision presets only: "
                     f"{', '.join(k for k, v in PRESETS.items() if v['vision'])})")
    budget = Budget(args.time_budget)
    results: dict[tuple[str, str], list[dict]] = {}
    skipped: list[str] = []
    meta = {"benchmark": "scaling", "date": _dt.datetime.now().isoformat(timespec="seconds"), "device": device_name,
            "versions": _versions(device),
            "command": shlex.join(["mamba-suite", "bench", "scaling", *(sys.argv[3:] if argv is None else argv)]),
            "settings": {"amp": amp, "optimizer": "AdamW", "loss": "mean(out^2)",
                         "presets": {c["preset"]: {k: v for k, v in c.items() if k != "preset"} for c in configs},
                         "time_budget_s": args.time_budget}}
    for i, (cfg, sweep, points, model) in enumerate(groups):
        print(f"[{cfg['preset']} / {sweep} / {model}]", flush=True)
        cases, group_skipped = run_group(model, points, cfg, device, budget.group_deadline(len(groups) - i),
                                         log=lambda line: print(line, flush=True))
        results.setdefault((cfg["preset"], sweep), []).extend(cases)
        skipped += group_skipped
        # Written after every group, so a run stopped from outside still leaves what it measured.
        result, table = write_outputs(meta, configs, results, skipped, out, plots=i == len(groups) - 1)
    print("\n" + table)
    print(f"wrote {out / 'scaling.json'}, {out / 'scaling.md'} and {len(result['sweeps'])} PNG(s)")
    return 1 if any(c["status"] == "error" for c in result["cases"]) else 0
