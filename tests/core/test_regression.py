"""Regression gate: per-case comparison, the exit status on a constructed slowdown, and `bench --compare` wiring."""

from __future__ import annotations

import json
import sys
import types

import pytest

from mambasuite.core import bench
from mambasuite.core.regression import compare, gate, load_bench_json


def _result(times: dict[str, float], status: dict[str, str] | None = None, mem: float = 100.0) -> dict:
    status = status or {}
    return {"benchmark": "fake", "cases": [
        {"name": n, "impl": "ours", "status": status.get(n, "ok"), "fwd_ms": t, "step_ms": 2 * t,
         "fwd_bwd_ms": None, "peak_mem_mb": mem} for n, t in times.items()]}


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_ratios_and_verdicts():
    base = _result({"a": 10.0, "b": 10.0, "c": 10.0, "gone": 1.0})
    cur = _result({"a": 10.4, "b": 11.0, "c": 8.0, "new": 1.0}, mem=150.0)
    rows, passed = compare(cur, base, threshold=0.05)
    by = {r["name"]: r for r in rows}
    assert by["a"]["verdict"] == "ok" and by["a"]["times"] == pytest.approx({"fwd_ms": 1.04, "step_ms": 1.04})
    assert by["b"]["verdict"] == "slower" and by["c"]["verdict"] == "faster"
    assert by["gone"]["verdict"] == "missing" and by["new"]["verdict"] == "new"
    assert by["a"]["memory"] == pytest.approx({"peak_mem_mb": 1.5})  # reported, does not gate
    assert not passed
    _, passed = compare(cur, base, threshold=0.15)
    assert passed


def test_a_case_that_broke_fails_the_gate():
    rows, passed = compare(_result({"a": 1.0}, {"a": "OOM"}), _result({"a": 1.0}))
    assert rows[0]["verdict"] == "broken" and not passed
    _, passed = compare(_result({"a": 1.0}), _result({"a": 1.0}, {"a": "OOM"}))  # fixed: fine
    assert passed


def test_gate_exit_status(tmp_path, capsys):
    base = _write(tmp_path / "base.json", _result({"x": 10.0, "y": 5.0}))
    slow = _write(tmp_path / "slow.json", _result({"x": 10.0, "y": 5.6}))
    same = _write(tmp_path / "same.json", _result({"x": 10.2, "y": 4.9}))
    assert gate(slow, base) == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "y" in out and "1.120x" in out
    assert gate(same, base) == 0
    assert "no regression: 2 case(s)" in capsys.readouterr().out
    assert gate(slow, base, threshold=0.2) == 0
    assert gate(tmp_path / "nope.json", base) == 2
    assert "not found" in capsys.readouterr().err
    other = _write(tmp_path / "other.json", _result({"z": 1.0}))
    assert gate(other, base) == 2  # nothing in common: not a silent pass


@pytest.mark.parametrize(("content", "message"), [
    ("{", "not valid JSON"), ('{"cases": 3}', "schema"), ('{"cases": [{"time": 1}]}', "schema"),
    ('{"cases": [{"name": "a"}, {"name": "a"}]}', "duplicate"),
])
def test_bad_files_are_named(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_bench_json(path)


def test_mismatched_benchmarks_are_refused():
    other = dict(_result({"a": 1.0}), benchmark="other")
    with pytest.raises(ValueError, match="'other'"):
        compare(_result({"a": 1.0}), other)


def test_split_compare_args():
    assert bench.split_compare_args(["--out", "d", "--compare", "b.json", "--threshold=0.1", "--x"]) == (
        ["--out", "d", "--x"], "b.json", 0.1)
    assert bench.split_compare_args(["--compare=b.json"]) == ([], "b.json", None)
    for argv, message in ((["--threshold", "0.1"], "only applies"), (["--compare"], "needs a value"),
                          (["--compare", "b", "--threshold", "x"], "number"),
                          (["--compare", "b", "--threshold", "-1"], ">= 0")):
        with pytest.raises(ValueError, match=message):
            bench.split_compare_args(argv)


@pytest.fixture
def fake_bench(monkeypatch):
    """A registered benchmark `fake` whose step times come from the `--scale` option."""
    seen = {}

    def main(argv):
        seen["argv"] = argv
        out = argv[argv.index("--out") + 1]
        scale = float(argv[argv.index("--scale") + 1]) if "--scale" in argv else 1.0
        from pathlib import Path

        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "fake.json").write_text(json.dumps(_result({"a": 10.0 * scale, "b": 3.0})))
        return 0

    monkeypatch.setitem(sys.modules, "fake_bench_module", types.SimpleNamespace(main=main))
    monkeypatch.setitem(bench.BENCHMARKS, "fake", ("fake_bench_module", "main", "a test benchmark"))
    return seen


def test_bench_compare_exits_nonzero_on_a_slowdown(tmp_path, fake_bench, capsys, monkeypatch):
    baseline = _write(tmp_path / "baseline.json", _result({"a": 10.0, "b": 3.0}))
    out = tmp_path / "run"
    assert bench.main(["fake", "--out", str(out), "--compare", str(baseline)]) == 0
    assert fake_bench["argv"] == ["--out", str(out)]  # --compare is not passed to the benchmark
    assert bench.main(["fake", "--out", str(out), "--scale", "1.08", "--compare", str(baseline)]) == 1
    assert bench.main(["fake", "--out", str(out), "--scale", "1.08", "--compare", str(baseline),
                       "--threshold", "0.1"]) == 0
    assert "no regression" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)  # without --out the common default is passed explicitly
    assert bench.main(["fake", "--compare", str(baseline)]) == 0
    assert fake_bench["argv"] == ["--out", "runs/bench"] and (tmp_path / "runs/bench/fake.json").is_file()
    assert bench.main(["fake", "--compare", str(tmp_path / "missing.json")]) == 2
    assert "baseline file not found" in capsys.readouterr().err


def test_bench_compare_with_the_real_scaling_benchmark(tmp_path):
    out = tmp_path / "scaling"
    args = ["scaling", "--device", "cpu", "--smoke", "--preset", "dna-256", "--max_len", "64", "--out", str(out)]
    assert bench.main(args) == 0
    baseline = json.loads((out / "scaling.json").read_text())
    for case in baseline["cases"]:  # a baseline 3x faster than anything this machine does
        case["fwd_ms"] /= 3
        case["step_ms"] /= 3
    _write(tmp_path / "fast.json", baseline)
    assert bench.main([*args, "--compare", str(tmp_path / "fast.json")]) == 1
    for case in baseline["cases"]:  # and one 100x slower
        case["fwd_ms"] *= 300
        case["step_ms"] *= 300
    _write(tmp_path / "slow.json", baseline)
    assert bench.main([*args, "--compare", str(tmp_path / "slow.json")]) == 0
