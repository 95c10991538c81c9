"""Regression gate for benchmark results: compare a run's bench JSON with a baseline, case by case.

`mamba-suite bench NAME ... --compare baseline.json [--threshold 0.05]` (wired in core.bench) runs the benchmark,
then compares `<out>/NAME.json` with the baseline: for every case name present in both and every time field
(`*_ms`) measured in both, ratio = current / baseline; a ratio above 1 + threshold is a slowdown. A case that was
"ok" in the baseline and is now "OOM" or "error" also fails. Memory fields (`*_mb`) are printed beside the times
but do not gate. Cases only in one file are listed, not failed (a time budget may skip points).

Both files must follow the suite's benchmark schema (`{"benchmark", "cases": [{"name", "status", ...}]}`).
Standalone: `python -m mambasuite.core.regression CURRENT.json BASELINE.json [--threshold 0.05]`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["compare", "format_rows", "gate", "load_bench_json"]

DEFAULT_THRESHOLD = 0.05


def load_bench_json(path: str | Path, what: str = "benchmark file") -> dict:
    """Read and validate a bench JSON; FileNotFoundError / ValueError name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} {path} is not valid JSON: {err}") from None
    cases = data.get("cases") if isinstance(data, dict) else None
    if not isinstance(cases, list) or not all(isinstance(c, dict) and "name" in c for c in cases):
        raise ValueError(f"{what} {path} does not follow the benchmark schema: expected a 'cases' list of objects "
                         "with a 'name'")
    names = [c["name"] for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{what} {path} has duplicate case names: {duplicates[:5]}")
    return data


def _numeric(case: dict, suffix: str) -> dict[str, float]:
    return {k: float(v) for k, v in case.items()
            if k.endswith(suffix) and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0}


def compare(current: dict, baseline: dict, threshold: float = DEFAULT_THRESHOLD) -> tuple[list[dict], bool]:
    """Per-case comparison rows and whether the gate passed.

    Each row: {"name", "verdict": "ok" | "slower" | "faster" | "broken" | "new" | "missing", "times": {field:
    ratio}, "memory": {field: ratio}, "status": (baseline status, current status)}. "slower" and "broken" fail.
    """
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold!r}")
    if current.get("benchmark") and baseline.get("benchmark") and current["benchmark"] != baseline["benchmark"]:
        raise ValueError(f"the baseline is a {baseline['benchmark']!r} benchmark, the current run "
                         f"{current['benchmark']!r}")
    base = {c["name"]: c for c in baseline["cases"]}
    cur = {c["name"]: c for c in current["cases"]}
    rows = []
    for name in [*base, *(n for n in cur if n not in base)]:
        b, c = base.get(name), cur.get(name)
        if b is None or c is None:
            rows.append({"name": name, "verdict": "new" if b is None else "missing", "times": {}, "memory": {},
                         "status": (b and b.get("status"), c and c.get("status"))})
            continue
        status = (b.get("status", "ok"), c.get("status", "ok"))
        row = {"name": name, "status": status, "times": {}, "memory": {}}
        if status[0] == "ok" and status[1] != "ok":
            row["verdict"] = "broken"
        else:
            for key, suffix in (("times", "_ms"), ("memory", "_mb")):
                bv, cv = _numeric(b, suffix), _numeric(c, suffix)
                row[key] = {k: cv[k] / bv[k] for k in bv if k in cv}
            worst = max(row["times"].values(), default=1.0)
            best = min(row["times"].values(), default=1.0)
            row["verdict"] = "slower" if worst > 1 + threshold else ("faster" if best < 1 - threshold else "ok")
        rows.append(row)
    passed = not any(r["verdict"] in ("slower", "broken") for r in rows)
    return rows, passed


def format_rows(rows: list[dict], threshold: float) -> str:
    """A plain-text table: one line per case with its time ratios (current / baseline) and verdict."""
    width = max([len(r["name"]) for r in rows] + [4])
    lines = [f"{'case':<{width}}  verdict  ratios current/baseline (time gates at {1 + threshold:.2f}x; memory "
             "informational)"]
    for r in rows:
        ratios = ", ".join(f"{k} {v:.3f}x" for k, v in r["times"].items())
        mem = ", ".join(f"{k} {v:.3f}x" for k, v in r["memory"].items())
        detail = ratios + (f" | {mem}" if mem else "")
        if r["verdict"] in ("broken", "new", "missing"):
            detail = f"status baseline={r['status'][0]} current={r['status'][1]}"
        lines.append(f"{r['name']:<{width}}  {r['verdict']:<7}  {detail}")
    return "\n".join(lines)


def gate(current_path: str | Path, baseline_path: str | Path, threshold: float = DEFAULT_THRESHOLD) -> int:
    """Compare two bench JSON files, print the table and a verdict; returns 0 (pass), 1 (slower/broken) or 2
    (unreadable input)."""
    try:
        current = load_bench_json(current_path, "current benchmark file")
        baseline = load_bench_json(baseline_path, "baseline file")
        rows, passed = compare(current, baseline, threshold)
    except (FileNotFoundError, ValueError) as err:
        print(f"regression check: error: {err}", file=sys.stderr)
        return 2
    print(format_rows(rows, threshold))
    failed = [r["name"] for r in rows if r["verdict"] in ("slower", "broken")]
    compared = sum(r["verdict"] in ("ok", "slower", "faster", "broken") for r in rows)
    if not compared:
        print("regression check: error: no case name is common to both files", file=sys.stderr)
        return 2
    if failed:
        print(f"REGRESSION: {len(failed)} of {compared} case(s) slower than {threshold:.0%} or broken: "
              f"{', '.join(failed)}")
        return 1
    print(f"no regression: {compared} case(s) within {threshold:.0%} of the baseline")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m mambasuite.core.regression CURRENT BASELINE [--threshold T]`."""
    p = argparse.ArgumentParser(prog="python -m mambasuite.core.regression", description=__doc__.split("\n\n")[0])
    p.add_argument("current")
    p.add_argument("baseline")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    args = p.parse_args(argv)
    if args.threshold < 0:
        p.error(f"--threshold must be >= 0, got {args.threshold}")
    return gate(args.current, args.baseline, args.threshold)


if __name__ == "__main__":
    sys.exit(main())
