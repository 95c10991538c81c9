"""`mamba-suite report RUN_DIR`: one markdown page and one self-contained HTML page for a run directory.

Everything found under RUN_DIR (recursively) is rendered, in this order:

* `summary.json` (written after fit): the one-line result;
* each `metrics.csv` (CSVLogger): last / min / max of every metric, and curves per group (train, val, test,
  resources, ...), drawn to `report_files/`; `analytics/...` columns are left to the next section;
* the selective-mechanism analytics: `analytics.jsonl` (core.analytics; or the analytics columns of
  metrics.csv): the values at the last logged step per layer/branch and Delta / horizon curves over training;
* `analysis.md` pages written by `mamba-suite analyze`, and benchmark results (`*.json` in the suite's benchmark
  schema, with their `.md` tables when present), included with their headings demoted;
* any other PNG.

Output: `report.md` (images by relative path) and `report.html` (images inlined as base64) in `--out`
(default RUN_DIR).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import os
import re
from pathlib import Path

from .markdown_html import markdown_to_html

__all__ = ["build_report", "main", "read_metrics_csv"]

PLOTS_DIR = "report_files"
OWN_OUTPUTS = ("report.md", "report.html")
TABLE_STATS = ("delta_mean", "horizon_q50", "frac_reset", "frac_skip", "gate_mean", "state_norm_mean")


def read_metrics_csv(path: Path) -> dict[str, list[tuple[float, float]]]:
    """{metric: [(step, value), ...]} from a CSVLogger file (sparse rows; empty cells skipped).

    Raises ValueError naming the file when it has no `step` column or a value is not a number.
    """
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "step" not in reader.fieldnames:
            raise ValueError(f"{path}: not a CSVLogger metrics file (no 'step' column)")
        series: dict[str, list[tuple[float, float]]] = {}
        for n, row in enumerate(reader, start=2):
            for key, value in row.items():
                if key in ("step", "epoch") or key is None or value in (None, ""):
                    continue
                try:
                    series.setdefault(key, []).append((float(row["step"]), float(value)))
                except ValueError:
                    raise ValueError(f"{path}, line {n}: {key}={value!r} is not a number") from None
    return series


def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "--"
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"


def _plot_series(series: dict[str, list[tuple[float, float]]], path: Path, title: str, log_y: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, points in series.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 50 else None,
                label=name, linewidth=1)
    ax.set_xlabel("step")
    ax.set_title(title, fontsize=10)
    if log_y and all(p[1] > 0 for pts in series.values() for p in pts):
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    if len(series) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "run"


def _metrics_section(path: Path, run_dir: Path, out: Path) -> tuple[list[str], dict]:
    """Markdown lines for one metrics.csv, and its analytics columns (for the analytics section)."""
    series = read_metrics_csv(path)
    rel = path.relative_to(run_dir)
    analytics = {k: v for k, v in series.items() if k.startswith("analytics/")}
    plain = {k: v for k, v in series.items() if not k.startswith("analytics/")}
    lines = [f"## Metrics: `{rel}`", ""]
    if not plain:
        return lines + ["(no metrics logged)", ""], analytics
    lines += ["| metric | last | min | max | points |", "|---|---:|---:|---:|---:|"]
    for name, points in plain.items():
        values = [p[1] for p in points]
        lines.append(f"| {name} | {_fmt(values[-1])} | {_fmt(min(values))} | {_fmt(max(values))} | {len(values)} |")
    groups: dict[str, dict] = {}
    for name, points in plain.items():
        groups.setdefault(name.split("/", 1)[0] if "/" in name else "other", {})[name] = points
    lines.append("")
    for group, members in groups.items():
        image = out / PLOTS_DIR / f"{_slug(str(rel.parent))}_{_slug(group)}.png"
        _plot_series(members, image, f"{group} ({rel.parent})", log_y=group == "resources")
        lines += [f"![{group}]({os.path.relpath(image, out)})", ""]
    return lines, analytics


def _read_jsonl(path: Path) -> dict[str, list[tuple[float, float]]]:
    series: dict[str, list[tuple[float, float]]] = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = float(record.pop("step"))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise ValueError(f"{path}, line {n}: expected a JSON object with a 'step'") from None
        for key, value in record.items():
            if isinstance(value, (int, float)):
                series.setdefault(key, []).append((step, float(value)))
    return series


def _analytics_section(series: dict[str, list[tuple[float, float]]], source: str, out: Path) -> list[str]:
    """Table of the last logged values per layer/branch, and Delta / horizon curves over training."""
    rows: dict[str, dict[str, float]] = {}
    last_step = max(p[0] for pts in series.values() for p in pts)
    for key, points in series.items():
        parts = key.removeprefix("analytics/").rsplit("/", 1)
        if len(parts) == 2:
            rows.setdefault(parts[0], {})[parts[1]] = points[-1][1]
    lines = ["## Selective-mechanism analytics", "", f"Source `{source}`; values at step {last_step:.0f} "
             "(Delta = softplus(dt + bias); horizon = 1 / (Delta mean|A|) steps; reset / skip: fraction of tokens "
             "that overwrite / keep the state).", "",
             "| layer/branch | " + " | ".join(TABLE_STATS) + " |", "|---|" + "---:|" * len(TABLE_STATS)]
    for row, stats in rows.items():
        lines.append(f"| {row} | " + " | ".join(_fmt(stats.get(s)) for s in TABLE_STATS) + " |")
    lines.append("")
    for stat in ("delta_mean", "horizon_q50"):
        members = {k.removeprefix("analytics/").rsplit("/", 1)[0]: v for k, v in series.items()
                   if k.endswith("/" + stat)}
        if members:
            image = out / PLOTS_DIR / f"analytics_{stat}.png"
            _plot_series(members, image, f"{stat} per layer/branch over training", log_y=True)
            lines += [f"![{stat}]({os.path.relpath(image, out)})", ""]
    return lines


def _include_markdown(path: Path, out: Path, demote: int = 1) -> list[str]:
    """The lines of a markdown file with headings demoted and relative image paths rebased onto `out`."""
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            line = "#" * demote + line
        m = re.match(r"^!\[([^\]]*)\]\(([^)\s]+)\)\s*$", line.strip())
        if m and not Path(m.group(2)).is_absolute() and "://" not in m.group(2):
            line = f"![{m.group(1)}]({os.path.relpath(path.parent / m.group(2), out)})"
        lines.append(line)
    return lines + [""]


def _bench_files(run_dir: Path) -> list[tuple[Path, dict]]:
    found = []
    for path in sorted(run_dir.rglob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # other JSON files (hparams, configs) are not benchmark results
        if isinstance(data, dict) and "benchmark" in data and isinstance(data.get("cases"), list):
            found.append((path, data))
    return found


def _bench_section(path: Path, data: dict, run_dir: Path, out: Path) -> list[str]:
    rel = path.relative_to(run_dir)
    lines = [f"## Benchmark `{data['benchmark']}`: `{rel}`", "",
             f"{data.get('device', '?')} · {data.get('date', '?')} · command `{data.get('command', '?')}`", ""]
    table = path.with_suffix(".md")
    if table.is_file():
        return lines + _include_markdown(table, out, demote=2)
    fields = sorted({k for c in data["cases"] for k in c if k.endswith(("_ms", "_mb"))})
    lines += ["| case | status | " + " | ".join(fields) + " |", "|---|---|" + "---:|" * len(fields)]
    for c in data["cases"]:
        lines.append(f"| {c['name']} | {c.get('status', '?')} | "
                     + " | ".join(_fmt(c.get(f)) if isinstance(c.get(f), (int, float)) else "--" for f in fields)
                     + " |")
    ratios = data.get("ratios") or []
    if ratios:
        lines += ["", "| ratio | metric | peer / ours |", "|---|---|---:|"]
        lines += [f"| {r['name']} | {r.get('metric', '?')} | {r['ratio']:.3f} |" for r in ratios]
    return lines + [""]


def build_report(run_dir: Path, out: Path) -> str:
    """The markdown page for `run_dir` (plots drawn into `out/report_files`); ValueError when nothing is found."""
    run_dir, out = Path(run_dir), Path(out)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    skip = {out / name for name in OWN_OUTPUTS}
    lines = [f"# Run report: `{run_dir}`", "", f"Generated {_dt.datetime.now().isoformat(timespec='seconds')}.", ""]
    used_images: set[Path] = set()
    found_any = False
    for path in sorted(run_dir.rglob("summary.json")):
        summary = json.loads(path.read_text())
        if isinstance(summary, dict) and "line" in summary:
            lines += [f"**Result** (`{path.relative_to(run_dir)}`): {summary['line']}", ""]
            found_any = True
    analytics_series, analytics_source = {}, None
    for path in sorted(run_dir.rglob("metrics.csv")):
        section, analytics = _metrics_section(path, run_dir, out)
        lines += section
        found_any = True
        if analytics and not analytics_series:
            analytics_series, analytics_source = analytics, str(path.relative_to(run_dir))
    for path in sorted(run_dir.rglob("analytics.jsonl")):
        analytics_series, analytics_source = _read_jsonl(path), str(path.relative_to(run_dir))
    if analytics_series:
        lines += _analytics_section(analytics_series, analytics_source, out)
        found_any = True
    for path in sorted(run_dir.rglob("analysis.md")):
        lines += [f"## Analysis: `{path.relative_to(run_dir)}`", ""] + _include_markdown(path, out, demote=2)
        used_images |= set(path.parent.glob("*.png"))
        found_any = True
    for path, data in _bench_files(run_dir):
        lines += _bench_section(path, data, run_dir, out)
        used_images |= set(path.parent.glob(f"{path.stem}*.png"))
        found_any = True
    others = [p for p in sorted(run_dir.rglob("*.png"))
              if p not in used_images and PLOTS_DIR not in p.relative_to(run_dir).parts and p not in skip]
    if others:
        lines += ["## Other plots", ""]
        for p in others:
            lines += [f"![{p.name}]({os.path.relpath(p, out)})", ""]
        found_any = True
    if not found_any:
        raise ValueError(f"nothing to report in {run_dir}: no metrics.csv, analytics.jsonl, analysis.md, "
                         "benchmark JSON or PNG found")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry (see the module docstring); returns 0, or 2 on a missing / empty run directory."""
    p = argparse.ArgumentParser(prog="mamba-suite report", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a run directory, e.g. runs/selective_copying/version_0 (searched recursively)")
    p.add_argument("--out", help="output folder (default: RUN_DIR)")
    args = p.parse_args(argv)
    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else run_dir
    try:
        markdown = build_report(run_dir, out)
    except (FileNotFoundError, ValueError) as err:
        p.error(str(err))
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown + "\n")
    (out / "report.html").write_text(markdown_to_html(markdown, out, f"mamba-suite report: {run_dir}"))
    print(f"wrote {out / 'report.md'} and {out / 'report.html'}")
    return 0
