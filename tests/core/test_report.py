"""`mamba-suite report RUN_DIR`: markdown numbers read back, self-contained HTML, and bad run directories."""

from __future__ import annotations

import base64
import json
import re

import pytest

from mambasuite.core import report
from mambasuite.core.markdown_html import markdown_to_html


def _png(path, value=0.5):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, value])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    logs = run / "version_0"
    logs.mkdir(parents=True)
    rows = ["epoch,step,train/loss_step,val/<acc>,resources/step_ms,analytics/layers.0/fwd/delta_mean"]
    for step in range(10):
        val = f"{0.5 + step / 20:.2f}" if step % 5 == 4 else ""
        rows.append(f"0,{step},{2.0 - step / 10:.1f},{val},{10 + step},")
    (logs / "metrics.csv").write_text("\n".join(rows) + "\n")
    jsonl = [{"step": s, "analytics/layers.0/fwd/delta_mean": 0.01 * (s + 1), "analytics/layers.0/fwd/horizon_q50":
              50.0 - s, "analytics/layers.0/fwd/frac_reset": 0.1} for s in (0, 5)]
    (logs / "analytics.jsonl").write_text("\n".join(json.dumps(x) for x in jsonl) + "\n")
    (logs / "summary.json").write_text(json.dumps({"line": "run: val/acc 95.0% after 10 steps"}))
    (logs / "hparams.json").write_text("{}")  # JSON that is not a benchmark: ignored
    analyze = run / "analyze"
    _png(analyze / "delta_heatmap.png")
    (analyze / "analysis.md").write_text("# Analysis\n\n| a | b |\n|---|---:|\n| x | 3.5 |\n\n"
                                         "![heat](delta_heatmap.png)\n")
    bench = run / "bench"
    bench.mkdir()
    (bench / "fake.json").write_text(json.dumps({
        "benchmark": "fake", "device": "cpu", "date": "2026-01-01", "command": "mamba-suite bench fake",
        "cases": [{"name": "case-1", "status": "ok", "fwd_ms": 1.25, "peak_mem_mb": 7.0},
                  {"name": "case-2", "status": "OOM", "fwd_ms": None}],
        "ratios": [{"name": "r", "ours": "case-1", "peer": "case-2", "metric": "fwd_ms", "ratio": 2.5}]}))
    _png(bench / "fake_plot.png")
    _png(run / "extra.png", 0.9)
    return run


def test_report_renders_every_source(run_dir, capsys):
    assert report.main([str(run_dir)]) == 0
    md = (run_dir / "report.md").read_text()
    assert "**Result** (`version_0/summary.json`): run: val/acc 95.0% after 10 steps" in md
    assert "| train/loss_step | 1.1 | 1.1 | 2 | 10 |" in md  # last, min, max, points
    assert "| val/<acc> | 0.95 | 0.7 | 0.95 | 2 |" in md
    assert "| resources/step_ms | 19 | 10 | 19 | 10 |" in md
    assert "analytics/layers.0" not in md.split("## Selective")[0]  # analytics columns are not in the metrics table
    # analytics at the last logged step (5) from analytics.jsonl
    assert "values at step 5" in md and "| layers.0/fwd | 0.06 | 45 | 0.1 | -- | -- | -- |" in md
    assert "## Analysis: `analyze/analysis.md`" in md and "### Analysis" in md and "| x | 3.5 |" in md
    assert "![heat](analyze/delta_heatmap.png)" in md  # image path rebased onto the report folder
    assert "| case-1 | ok | 1.25 | 7 |" in md and "| case-2 | OOM | -- | -- |" in md and "| 2.500 |" in md
    assert "## Other plots" in md and "![extra.png](extra.png)" in md
    assert md.count("fake_plot.png") == 0  # belongs to the benchmark, so not listed under other plots

    html = (run_dir / "report.html").read_text()
    sources = re.findall(r'<img alt="[^"]*" src="([^"]+)"', html)
    assert len(sources) == md.count("![") and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "image not found" not in html
    heat = (run_dir / "analyze" / "delta_heatmap.png").read_bytes()
    assert any(base64.b64decode(s.split(",", 1)[1]) == heat for s in sources)
    assert "val/&lt;acc&gt;" in html and "val/<acc>" not in html  # text is escaped
    assert "wrote" in capsys.readouterr().out


def test_report_out_folder_and_rerun_ignore_own_outputs(run_dir, tmp_path):
    assert report.main([str(run_dir)]) == 0
    first = (run_dir / "report.md").read_text()
    assert report.main([str(run_dir)]) == 0  # its own plots and pages are not reported again
    second = (run_dir / "report.md").read_text()
    assert first.split("\n", 3)[3] == second.split("\n", 3)[3]  # identical apart from the timestamp
    out = tmp_path / "elsewhere"
    assert report.main([str(run_dir), "--out", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert "image not found" not in html and html.count("data:image/png;base64,") >= 6


def test_bad_run_directories(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        report.main([str(tmp_path / "missing")])
    assert exc.value.code == 2 and "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        report.main([str(tmp_path)])
    assert "nothing to report" in capsys.readouterr().err
    (tmp_path / "metrics.csv").write_text("epoch,step,loss\n0,1,abc\n")
    with pytest.raises(SystemExit):
        report.main([str(tmp_path)])
    assert "metrics.csv, line 2: loss='abc' is not a number" in capsys.readouterr().err


def test_markdown_subset_to_html(tmp_path):
    page = markdown_to_html("# Title <x>\n\nsome `code` and **bold** [link](http://a.b)\n\n- one\n- two\n\n"
                            "| k | v |\n|---|---:|\n| a | 1 |\n\n![missing](nope.png)\n|not a table\n", tmp_path, "t")
    assert "<h1>Title &lt;x&gt;</h1>" in page
    assert "<code>code</code>" in page and "<strong>bold</strong>" in page and '<a href="http://a.b">link</a>' in page
    assert "<ul><li>one</li><li>two</li></ul>" in page
    assert '<td>a</td><td class="num">1</td>' in page
    assert "image not found: nope.png" in page and "<p>|not a table</p>" in page
