"""Analysis of a scaling sweep: log-log slopes, the crossover length, the markdown table and the PNG plots.

Works on the case dicts that `core.scaling` writes (the suite's benchmark JSON schema); every function here is pure
apart from `plot_sweep`, so tests can recompute the numbers from a JSON file read back from disk.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

__all__ = ["crossover", "fit_slope", "markdown_sweep", "plot_sweep", "sweep_summary"]

OURS, PEER = "mamba", "transformer"  # `model` field of a case; ours is `impl: "ours"` in the JSON schema


def _points(cases: list[dict], model: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, values) of the ok cases of `model` that have `metric`, sorted by length."""
    rows = sorted((c["shape"]["length"], c[metric]) for c in cases
                  if c["model"] == model and c["status"] == "ok" and c.get(metric) is not None)
    return np.array([r[0] for r in rows], float), np.array([r[1] for r in rows], float)


FIT_POINTS = 3  # the slope is fitted on this many longest lengths


def fit_slope(lengths, values, n_points: int = FIT_POINTS) -> dict | None:
    """Least-squares fit of log(value) = slope * log(length) + intercept over the `n_points` longest lengths.

    Short lengths are dominated by launch and framework overhead (flat curves), so only the longest points enter
    the fit: the asymptotic exponent, ~1 for linear and ~2 for quadratic cost. Returns {"slope", "intercept",
    "from_length", "to_length", "n_points"}, or None with fewer than 2 distinct lengths.
    """
    lengths, values = np.asarray(lengths, float), np.asarray(values, float)
    keep = values > 0
    lengths, values = lengths[keep], values[keep]
    order = np.argsort(lengths)[-n_points:]
    lengths, values = lengths[order], values[order]
    if len(np.unique(lengths)) < 2:
        return None
    slope, intercept = np.polyfit(np.log(lengths), np.log(values), 1)
    return {"slope": float(slope), "intercept": float(intercept), "from_length": float(lengths.min()),
            "to_length": float(lengths.max()), "n_points": int(len(lengths))}


def crossover(cases: list[dict], metric: str) -> dict:
    """Length from which Mamba's `metric` stays below the Transformer's, over the lengths both measured.

    With d_i = log(peer_i / ours_i) at common lengths L_i (ascending), the crossover is the first L_i after which
    every d_j > 0, interpolated log-linearly between L_{i-1} and L_i. Returns {"length": float | None, "kind"}:
    kind "interpolated", "below_range" (Mamba already lower at the shortest length), "not_reached" (the
    Transformer is lower at the longest common length) or "insufficient" (no common length). "peer_oom_from"
    gives the first length at which the Transformer ran out of memory while Mamba did not (if any).
    """
    ours = dict(zip(*_points(cases, OURS, metric)))
    peer = dict(zip(*_points(cases, PEER, metric)))
    common = sorted(set(ours) & set(peer))
    result: dict = {"metric": metric, "length": None}
    peer_oom = sorted(c["shape"]["length"] for c in cases if c["model"] == PEER and c["status"] == "OOM")
    ours_ok = {c["shape"]["length"] for c in cases if c["model"] == OURS and c["status"] == "ok"}
    oom_while_ours_ok = [length for length in peer_oom if length in ours_ok]
    if oom_while_ours_ok:
        result["peer_oom_from"] = float(oom_while_ours_ok[0])
    if not common:
        result["kind"] = "insufficient"
        return result
    d = [math.log(peer[length] / ours[length]) for length in common]
    if d[-1] <= 0:
        result.update(kind="not_reached", longest=float(common[-1]))
        if d[0] > 0:  # Mamba lower at the short end, the Transformer from some length on
            first_not = next(i for i, v in enumerate(d) if v <= 0)
            result["ours_lower_until"] = float(common[first_not - 1])
        return result
    i = len(d) - 1
    while i > 0 and d[i - 1] > 0:
        i -= 1
    if i == 0:
        result.update(kind="below_range", length=float(common[0]))
        return result
    x0, x1 = math.log(common[i - 1]), math.log(common[i])
    frac = (0.0 - d[i - 1]) / (d[i] - d[i - 1])
    result.update(kind="interpolated", length=float(math.exp(x0 + frac * (x1 - x0))))
    return result


def sweep_summary(cases: list[dict], metrics=("fwd_ms", "step_ms", "peak_mem_mb")) -> dict:
    """Slopes per model and metric, and crossovers per metric, for the cases of one sweep."""
    fits = {model: {m: fit_slope(*_points(cases, model, m)) for m in metrics} for model in (OURS, PEER)}
    return {"fits": fits, "crossover": {m: crossover(cases, m) for m in metrics}}


def describe_crossover(c: dict) -> str:
    """One readable sentence for a `crossover` result."""
    what = {"fwd_ms": "forward time", "step_ms": "training-step time", "peak_mem_mb": "peak memory"}.get(
        c["metric"], c["metric"])
    text = {
        "interpolated": f"Mamba's {what} is lower from ~{c.get('length') or 0:,.0f} tokens on",
        "below_range": f"Mamba's {what} is lower at every measured length (from {c.get('length') or 0:,.0f})",
        "not_reached": f"the Transformer's {what} is lower at the longest length both ran "
                       f"({c.get('longest') or 0:,.0f})",
        "insufficient": f"no length where both models have a {what}",
    }[c["kind"]]
    if "ours_lower_until" in c:
        text += f"; Mamba's is lower up to {c['ours_lower_until']:,.0f} tokens"
    if "peer_oom_from" in c:
        text += f"; the Transformer runs out of memory from {c['peer_oom_from']:,.0f} tokens"
    return text


def _fmt(value, digits=3) -> str:
    if value is None:
        return "--"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"


def markdown_sweep(title: str, cases: list[dict], summary: dict, image: str | None, detail: str = "") -> str:
    """A markdown section: one row per length, Mamba and Transformer side by side, then slopes and crossovers."""
    by_len: dict[int, dict[str, dict]] = {}
    for c in cases:
        by_len.setdefault(c["shape"]["length"], {})[c["model"]] = c
    has_res = any("resolution" in c["shape"] for c in cases)
    head = ("| res " if has_res else "") + ("| tokens | mamba fwd ms | TF fwd ms | mamba step ms | TF step ms "
                                            "| step TF/mamba | mamba tok/s (train) | TF tok/s (train) "
                                            "| mamba peak MB | TF peak MB |")
    lines = [f"### {title}", "", *([detail, ""] if detail else []), head, "|" + "---:|" * (head.count("|") - 1)]

    def cell(c: dict | None, key: str) -> str:
        if c is None:
            return "not run"
        if c["status"] != "ok":
            return c["status"]
        # † = Triton compiled kernels during this point's timed calls: the figure includes compilation
        return _fmt(c.get(key)) + (" †" if c.get("compiled_while_timing") else "")

    for length in sorted(by_len):
        ours, peer = by_len[length].get(OURS), by_len[length].get(PEER)
        ratio = "--"
        if ours and peer and ours["status"] == peer["status"] == "ok":
            ratio = f"{peer['step_ms'] / ours['step_ms']:.2f}x"
        any_case = ours or peer
        row = (f"| {any_case['shape']['resolution']} " if has_res else "") + (
            f"| {length:,} | {cell(ours, 'fwd_ms')} | {cell(peer, 'fwd_ms')} | {cell(ours, 'step_ms')} "
            f"| {cell(peer, 'step_ms')} | {ratio} | {cell(ours, 'train_tokens_per_s')} "
            f"| {cell(peer, 'train_tokens_per_s')} | {cell(ours, 'peak_mem_mb')} | {cell(peer, 'peak_mem_mb')} |")
        lines.append(row)
    lines.append("")
    if any(c.get("compiled_while_timing") for c in cases):
        lines += ["† kernels were compiled during the timed calls of this point: the time includes compilation.", ""]
    for model in (OURS, PEER):
        parts = []
        for metric, fit in summary["fits"][model].items():
            if fit is not None:
                parts.append(f"{metric} slope {fit['slope']:.2f} ({fit['from_length']:,.0f}-{fit['to_length']:,.0f})")
        lines.append(f"- {model} log-log slopes: {', '.join(parts) if parts else 'too few points'}")
    for c in summary["crossover"].values():
        lines.append(f"- crossover ({c['metric']}): {describe_crossover(c)}")
    if image:
        lines += ["", f"![{title}]({image})"]
    return "\n".join(lines) + "\n"


def plot_sweep(title: str, cases: list[dict], summary: dict, path: Path) -> None:
    """Two log-log panels (time vs tokens, peak memory vs tokens) with fitted lines, OOM marks and crossovers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = {OURS: "tab:blue", PEER: "tab:orange"}
    for model in (OURS, PEER):
        for metric, style in (("step_ms", "o-"), ("fwd_ms", "s:")):
            x, y = _points(cases, model, metric)
            if len(x):
                fit = summary["fits"][model].get(metric)
                label = f"{model} {'train step' if metric == 'step_ms' else 'forward'}"
                if fit:
                    label += f" (slope {fit['slope']:.2f})"
                    xs = np.array([fit["from_length"], fit["to_length"]])
                    ax_t.plot(xs, np.exp(fit["intercept"]) * xs ** fit["slope"], "--", color=colors[model],
                              alpha=0.5, linewidth=1)
                ax_t.plot(x, y, style, color=colors[model], label=label, markersize=4)
        x, y = _points(cases, model, "peak_mem_mb")
        if len(x):
            fit = summary["fits"][model].get("peak_mem_mb")
            label = model + (f" (slope {fit['slope']:.2f})" if fit else "")
            ax_m.plot(x, y, "o-", color=colors[model], label=label, markersize=4)
        for c in cases:
            if c["model"] == model and c["status"] == "OOM":
                for ax in (ax_t, ax_m):
                    ax.axvline(c["shape"]["length"], color=colors[model], linestyle=":", alpha=0.7)
                    ax.text(c["shape"]["length"], 0.97, f" {model} OOM", color=colors[model], fontsize=8,
                            rotation=90, va="top", transform=ax.get_xaxis_transform())
    for ax, metric in ((ax_t, "step_ms"), (ax_m, "peak_mem_mb")):
        cross = summary["crossover"][metric]
        if cross["kind"] == "interpolated":
            ax.axvline(cross["length"], color="black", linewidth=1)
            ax.text(cross["length"], 0.03, f" crossover ~{cross['length']:,.0f}", fontsize=8,
                    transform=ax.get_xaxis_transform())
        if ax.lines:
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlabel("sequence length (tokens)")
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    ax_t.set_ylabel("time (ms)")
    ax_m.set_ylabel("peak memory (MB)")
    if not ax_m.lines:
        ax_m.text(0.5, 0.5, "peak memory is measured on CUDA only", ha="center", transform=ax_m.transAxes)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
