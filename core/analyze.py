"""`mamba-suite analyze -c CONFIG --ckpt_path CKPT`: what the selective mechanism does in a trained model.

Builds the config's model and data (the YAML used for fit; dotted overrides work), loads the checkpoint's weights
strictly (`safe_torch_load`, weights only), runs `--batches` batches of the `--split` loader through the model with
`core.analytics.SelectiveCapture` on, and writes into `--out` (default `runs/<config stem>/analyze/`):

* `delta_heatmap.png`: layer x position heatmaps of Delta (channel mean) for one sequence and the batch mean;
* `horizon_heatmap.png`: the same for the per-token memory horizon (geometric channel mean of 1 / (Delta mean|A|));
* `delta_by_token.png` (integer-token inputs): per layer, mean Delta k = 0..`--max_lag` steps after a token of each
  group (the causal conv before each scan lets a token steer Delta at its own and the next d_conv - 1 positions);
* `analysis.json`, `analysis.md`: the per-layer statistics of core.analytics, the token-group table and the contrast
  of the first two groups (Delta after data tokens / after noise tokens for selective copying) per lag.

Token groups: for the selective-copying data they are "data" (ids < vocab_size), "noise" and "marker"; for other
integer inputs, the 8 most frequent ids; inputs that are not integer tokens get no groups.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .analytics import STATS, SelectiveCapture
from .files import safe_torch_load
from .evaluation import checkpoint_parser

__all__ = ["contrast", "group_means", "main", "token_groups"]

MAX_ID_GROUPS = 8


def _parser():
    parser = checkpoint_parser("mamba-suite analyze", __doc__.split("\n\n")[0], out_help="output folder",
                               overwrite=False)
    parser.add_argument("--split", type=str, default="val", help="val | test | train")
    parser.add_argument("--batches", type=int, default=1, help="batches to run (statistics are averaged)")
    parser.add_argument("--sample", type=int, default=0, help="index of the sequence shown in the per-sample maps")
    parser.add_argument("--max_lag", type=int, default=3, help="token-group Delta at lags 0..max_lag")
    return parser


def token_groups(tokens: torch.Tensor, data) -> dict[str, torch.Tensor]:
    """{group name: bool mask like `tokens`} for integer token inputs (batch, L); {} for other inputs."""
    if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8) or tokens.dim() != 2:
        return {}
    from .data import SelectiveCopyingDataModule

    if isinstance(data, SelectiveCopyingDataModule):
        vocab = data.hparams.vocab_size
        return {"data": tokens < vocab, "noise": tokens == vocab, "marker": tokens == vocab + 1}
    ids, counts = torch.unique(tokens, return_counts=True)
    top = ids[counts.argsort(descending=True)[:MAX_ID_GROUPS]].tolist()
    return {f"token {i}": tokens == i for i in sorted(top)}


def _after(mask: torch.Tensor, lag: int, reverse: bool) -> torch.Tensor:
    """Positions `lag` steps after a masked token in scan order (before it for a reverse scan); mask (batch, L)."""
    shifted = torch.zeros_like(mask)
    length = mask.shape[1]
    if lag >= length:
        return shifted
    if reverse:
        shifted[:, : length - lag] = mask[:, lag:]
    else:
        shifted[:, lag:] = mask[:, : length - lag]
    return shifted


def group_means(per_token: dict, groups: dict[str, torch.Tensor], max_lag: int = 3) -> dict[str, dict[str, dict]]:
    """Delta and horizon by token group and lag.

    Returns {"<layer>/<branch>": {group: {"delta": [mean Delta at lag 0..max_lag], "horizon": [geometric-mean
    horizon at lag 0..max_lag], "count": tokens}}}, where lag k means the positions k steps after a token of the
    group in the branch's scan direction (lag 0: the token itself). Lags matter because each mixer's causal conv
    (width d_conv) lets a token steer Delta at its own and the next d_conv - 1 positions.
    """
    table = {}
    for (layer, branch), maps in per_token.items():
        row = {}
        for name, mask in groups.items():
            count = int(mask.sum())
            if count == 0 or mask.shape != maps["delta"].shape:
                continue
            deltas, horizons = [], []
            for lag in range(max_lag + 1):
                at = _after(mask, lag, branch.endswith("rev"))
                if not at.any():
                    break
                deltas.append(float(maps["delta"][at].mean()))
                horizons.append(float(torch.exp(torch.log(maps["horizon"][at]).mean())))
            row[name] = {"delta": deltas, "horizon": horizons, "count": count}
        table[f"{layer}/{branch}"] = row
    return table


def contrast(table: dict, first: str, second: str) -> dict[str, dict]:
    """{"<layer>/<branch>": {"ratio": [Delta(first) / Delta(second) per lag], "max_ratio", "at_lag"}}."""
    out = {}
    for row, per in table.items():
        if first in per and second in per:
            ratios = [a / b for a, b in zip(per[first]["delta"], per[second]["delta"]) if b > 0]
            if ratios:
                k = max(range(len(ratios)), key=lambda i: max(ratios[i], 1 / ratios[i]))
                out[row] = {"ratio": ratios, "max_ratio": ratios[k], "at_lag": k}
    return out


def _heatmaps(per_token: dict, key: str, sample: int, groups: dict, path: Path, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    rows = [f"{layer}/{branch}" for layer, branch in per_token]
    maps = [per_token[k][key] for k in per_token]
    one = torch.stack([m[sample] for m in maps]).numpy()
    mean = torch.stack([m.mean(dim=0) for m in maps]).numpy()
    norm = LogNorm(vmin=max(min(one.min(), mean.min()), 1e-12), vmax=max(one.max(), mean.max()))
    has_strip = bool(groups)
    fig, axes = plt.subplots(2 + has_strip, 1, figsize=(min(4 + one.shape[1] * 0.08, 24), 2 + 0.5 * len(rows) * 2),
                             gridspec_kw={"height_ratios": [len(rows), len(rows)] + [1] * has_strip}, squeeze=False)
    axes = axes[:, 0]
    for ax, data, title in ((axes[0], one, f"{label}, sequence {sample}"), (axes[1], mean, f"{label}, batch mean")):
        im = ax.imshow(data, aspect="auto", norm=norm, cmap="viridis", interpolation="nearest")
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01)
    if has_strip:
        names = list(groups)
        strip = torch.full(groups[names[0]].shape[1:], -1.0)
        for i, name in enumerate(names):
            strip[groups[name][sample]] = i
        from matplotlib.patches import Patch

        cmap = plt.get_cmap("tab10")
        axes[2].imshow(strip[None].numpy(), aspect="auto", cmap=cmap, vmin=-0.5, vmax=9.5, interpolation="nearest")
        axes[2].set_yticks([])
        axes[2].set_title(f"token group at each position of sequence {sample}", fontsize=8)
        axes[2].legend(handles=[Patch(color=cmap(i), label=n) for i, n in enumerate(names)], fontsize=7,
                       loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    axes[-1].set_xlabel("position")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _lag_profiles(table: dict, path: Path) -> None:
    """One panel per layer/branch: mean Delta k steps after a token of each group, k = 0..max_lag."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(table)
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows) + 1, 3.2), squeeze=False, sharey=True)
    for ax, row in zip(axes[0], rows):
        for name, entry in table[row].items():
            ax.plot(range(len(entry["delta"])), entry["delta"], "o-", label=name, markersize=4)
        ax.set_title(row, fontsize=8)
        ax.set_xlabel("lag (steps after the token)")
        ax.set_xticks(range(max(len(e["delta"]) for e in table[row].values())))
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("mean Delta")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _markdown(report: dict) -> str:
    lines = [f"# Selective-mechanism analysis of `{report['ckpt_path']}`", "",
             f"config `{report['config']}`, split {report['split']}, {report['n_batches']} batch(es) of input shape "
             f"{tuple(report['input_shape'])}, device {report['device']}", "",
             "Delta = softplus(dt + bias); horizon = 1 / (Delta mean|A|) steps; reset: Delta mean|A| > "
             f"{report['reset_at']}; skip: < {report['skip_at']}; gate = silu(z).", "",
             "| layer/branch | Delta mean | Delta q05 / q50 / q95 | horizon q50 | reset | skip | gate mean | "
             "state norm |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row, s in report["layers"].items():
        gate = f"{s['gate_mean']:.3f}" if "gate_mean" in s else "--"
        lines.append(f"| {row} | {s['delta_mean']:.4g} | {s['delta_q05']:.3g} / {s['delta_q50']:.3g} / "
                     f"{s['delta_q95']:.3g} | {s['horizon_q50']:.3g} | {s['frac_reset']:.1%} | {s['frac_skip']:.1%} | "
                     f"{gate} | {s['state_norm_mean']:.3g} |")
    groups = report.get("token_groups") or {}
    names = list(next(iter(groups.values()), {}))
    if names:
        lines += ["", "Mean Delta (channel mean) at lag 0, 1, 2, ... steps after a token of each group (lag 0 = at "
                  "the token; the mixers' causal conv lets a token steer Delta over the next d_conv - 1 steps):", "",
                  "| layer/branch | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for row, per in groups.items():
            cells = [" / ".join(f"{v:.3g}" for v in per[n]["delta"]) if n in per else "--" for n in names]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
    cmp = report.get("contrast") or {}
    if cmp:
        first, second = report["contrast_groups"]
        lines += ["", f"Contrast, Delta after {first} tokens / after {second} tokens, per lag:", "",
                  "| layer/branch | ratio per lag | largest |", "|---|---|---:|"]
        for row, c in cmp.items():
            lines.append(f"| {row} | {' / '.join(f'{r:.2f}x' for r in c['ratio'])} | "
                         f"**{c['max_ratio']:.2f}x at lag {c['at_lag']}** |")
    lines += ["", "![Delta heatmap](delta_heatmap.png)", "", "![horizon heatmap](horizon_heatmap.png)", ""]
    if names:
        lines += ["![Delta by lag after each token group](delta_by_token.png)", ""]
    return "\n".join(lines)


def _load(parser, cfg):
    ckpt_path = Path(cfg.ckpt_path)
    if not ckpt_path.is_file():
        parser.error(f"--ckpt_path: checkpoint file not found: {ckpt_path}")
    init = parser.instantiate_classes(cfg)
    module, data = init.model, init.data
    try:
        state = safe_torch_load(ckpt_path)
    except ValueError as err:  # UnsafeCheckpointError (a pickle that would run code), truncated or corrupt file
        parser.error(f"--ckpt_path: {err}")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        parser.error(f"--ckpt_path: {ckpt_path} holds no state dict")
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        parser.error(f"{ckpt_path} does not match the config's model: missing {result.missing_keys}, "
                     f"unexpected {result.unexpected_keys}")
    return module, data


def main(argv: list[str] | None = None) -> int:
    """CLI entry (see the module docstring); returns 0 and prints the output folder."""
    parser = _parser()
    cfg = parser.parse_args(argv)
    if cfg.split not in ("val", "test", "train"):
        parser.error(f"--split must be val, test or train, got {cfg.split!r}")
    if cfg.batches < 1:
        parser.error(f"--batches must be >= 1, got {cfg.batches}")
    if cfg.max_lag < 0:
        parser.error(f"--max_lag must be >= 0, got {cfg.max_lag}")
    module, data = _load(parser, cfg)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    module = module.to(device).eval()
    try:
        capture = SelectiveCapture(module, per_token=True)
    except ValueError as err:
        parser.error(str(err))
    data.prepare_data()
    data.setup({"val": "validate", "test": "test", "train": "fit"}[cfg.split])
    loader = getattr(data, f"{cfg.split}_dataloader")()
    inputs, stats, per_token = [], [], {}
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if i >= cfg.batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if not isinstance(x, torch.Tensor):
                parser.error(f"the {cfg.split} loader yields {type(x).__name__} inputs; analyze needs a tensor "
                             "(or a tuple whose first item is the model input)")
            with capture:
                module(x.to(device))
            stats.append(capture.as_dict())
            for key, maps in capture.tokens.items():
                per_token.setdefault(key, []).append(maps)
            inputs.append(x.cpu())
    if not inputs:
        parser.error(f"the {cfg.split} loader produced no batch")
    if not 0 <= cfg.sample < inputs[0].shape[0]:
        parser.error(f"--sample {cfg.sample} is outside the first batch (size {inputs[0].shape[0]})")
    # Per-token maps of all batches side by side; batches of another length (variable-length data) are left out.
    same = [i for i, x in enumerate(inputs) if x.shape[1:] == inputs[0].shape[1:]]
    tokens = torch.cat([inputs[i] for i in same])
    merged = {key: {m: None if maps[0][m] is None else torch.cat([maps[i][m] for i in same]) for m in maps[0]}
              for key, maps in per_token.items()}
    groups = token_groups(tokens, data)
    layers: dict[str, dict] = {}
    for key in stats[0]:
        row, stat = key.rsplit("/", 1)
        values = [s[key] for s in stats if key in s]
        layers.setdefault(row, {})[stat] = sum(values) / len(values)

    config_paths = [str(p) for p in (cfg.get("config") or [])]
    stem = Path(config_paths[0]).stem if config_paths else "default"
    out = Path(cfg.out) if cfg.out else Path("runs") / stem / "analyze"
    out.mkdir(parents=True, exist_ok=True)
    report = {"ckpt_path": str(cfg.ckpt_path), "config": ", ".join(config_paths) or None, "split": cfg.split,
              "n_batches": len(inputs), "input_shape": list(tokens.shape), "device": str(device),
              "reset_at": capture.reset_at, "skip_at": capture.skip_at, "stats": list(STATS), "layers": layers,
              "token_groups": group_means(merged, groups, cfg.max_lag) if groups else {}}
    names = list(groups)
    if len(names) >= 2:  # the first two groups: data vs noise for selective copying
        report["contrast_groups"] = names[:2]
        report["contrast"] = contrast(report["token_groups"], names[0], names[1])
    (out / "analysis.json").write_text(json.dumps(_json_safe(report), indent=2) + "\n")
    _heatmaps(merged, "delta", cfg.sample, groups, out / "delta_heatmap.png", "Delta (channel mean)")
    _heatmaps(merged, "horizon", cfg.sample, groups, out / "horizon_heatmap.png", "memory horizon (steps)")
    if groups:
        _lag_profiles(report["token_groups"], out / "delta_by_token.png")
    (out / "analysis.md").write_text(_markdown(report))
    print(f"analysed {len(layers)} layer/branch scans on {len(inputs)} batch(es) -> {out}")
    return 0


def _json_safe(value):
    """Non-finite floats (an infinite horizon where Delta underflows to 0) become null, as strict JSON wants."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
