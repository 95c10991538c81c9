"""`mamba-suite bench scaling` and its Transformer peer: a small CPU sweep read back from disk, the slope and
crossover analysis on constructed numbers, OOM / time-budget handling, and option errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mambasuite.core import scaling
from mambasuite.core.scaling_analysis import crossover, describe_crossover, fit_slope, sweep_summary
from mambasuite.core.transformer import SelfAttention, TransformerBackbone, count_parameters


# ------------------------------------------------------------------------------------------ the Transformer peer
@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_a_softmax_reference(causal):
    torch.manual_seed(0)
    attn = SelfAttention(12, n_head=3, causal=causal).double()
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    q, k, v = attn.qkv(x).split(12, dim=-1)
    heads = [t.view(2, 7, 3, 4).transpose(1, 2) for t in (q, k, v)]
    scores = heads[0] @ heads[1].transpose(-1, -2) / math.sqrt(4)
    if causal:
        scores = scores.masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1), float("-inf"))
    expected = attn.proj((scores.softmax(-1) @ heads[2]).transpose(1, 2).reshape(2, 7, 12))
    torch.testing.assert_close(attn(x), expected)


def test_transformer_shapes_gradients_and_parameter_count():
    d, layers = 16, 3
    net = TransformerBackbone(d, layers, n_head=2)
    x = torch.randn(2, 9, d, requires_grad=True)
    out = net(x)
    assert out.shape == (2, 9, d)
    out.sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in net.parameters())
    # 12 d^2 + 13 d per block (qkv, proj, two MLP linears, two LayerNorms) plus the final LayerNorm
    assert count_parameters(net) == layers * (12 * d * d + 13 * d) + 2 * d


def test_transformer_bad_arguments_are_named():
    with pytest.raises(ValueError, match="n_head"):
        TransformerBackbone(10, 2, n_head=3)
    with pytest.raises(ValueError, match="d_model=8"):
        TransformerBackbone(8, 1, n_head=2)(torch.randn(1, 4, 6))


# ------------------------------------------------------------------------------------------ analysis on known data
def _case(model, length, **values):
    return {"name": f"p/len/L{length}/{model}", "model": model, "status": values.pop("status", "ok"),
            "shape": {"batch": 1, "length": length}, **values}


def test_slope_and_crossover_of_linear_vs_quadratic_costs():
    lengths = [2 ** k for k in range(6, 15)]
    cases = [_case("mamba", n, step_ms=1e-3 * n, fwd_ms=2e-3 * n) for n in lengths]
    cases += [_case("transformer", n, step_ms=1e-6 * n * n, fwd_ms=1e-6 * n * n) for n in lengths]
    summary = sweep_summary(cases)
    assert summary["fits"]["mamba"]["step_ms"]["slope"] == pytest.approx(1.0)
    assert summary["fits"]["transformer"]["step_ms"]["slope"] == pytest.approx(2.0)
    # equal at 1e-3 n = 1e-6 n^2 -> n = 1000 (log-linear interpolation is exact for power laws)
    assert summary["crossover"]["step_ms"]["kind"] == "interpolated"
    assert summary["crossover"]["step_ms"]["length"] == pytest.approx(1000.0)
    assert summary["crossover"]["fwd_ms"]["length"] == pytest.approx(2000.0)
    assert summary["crossover"]["peak_mem_mb"]["kind"] == "insufficient"


def test_crossover_edge_cases_and_peer_oom():
    faster = [_case("mamba", n, step_ms=1.0) for n in (64, 128)] + [_case("transformer", n, step_ms=2.0)
                                                                    for n in (64, 128)]
    assert crossover(faster, "step_ms") == {"metric": "step_ms", "length": 64.0, "kind": "below_range"}
    slower = [_case("mamba", n, step_ms=3.0) for n in (64, 128)] + [_case("transformer", n, step_ms=2.0)
                                                                    for n in (64, 128)]
    assert crossover(slower, "step_ms")["kind"] == "not_reached"
    assert "ours_lower_until" not in crossover(slower, "step_ms")
    # Mamba lower at the short end only (peak memory of a flash-attention Transformer): said so, not hidden
    memory = [_case("mamba", n, peak_mem_mb=m) for n, m in ((64, 1.0), (128, 2.0), (256, 4.2))]
    memory += [_case("transformer", n, peak_mem_mb=m) for n, m in ((64, 1.5), (128, 2.1), (256, 4.0))]
    result = crossover(memory, "peak_mem_mb")
    assert result["kind"] == "not_reached" and result["longest"] == 256.0 and result["ours_lower_until"] == 128.0
    assert describe_crossover(result) == ("the Transformer's peak memory is lower at the longest length both ran "
                                          "(256); Mamba's is lower up to 128 tokens")
    # a late dip back below does not count: the crossover is where Mamba *stays* lower
    wobbly = [_case("mamba", n, step_ms=1.0) for n in (64, 128, 256, 512)]
    wobbly += [_case("transformer", n, step_ms=t) for n, t in ((64, 2.0), (128, 0.5), (256, 2.0), (512, 4.0))]
    result = crossover(wobbly, "step_ms")
    assert result["kind"] == "interpolated" and 128 < result["length"] < 256
    oom = slower + [_case("mamba", 256, step_ms=3.0), _case("transformer", 256, status="OOM")]
    assert crossover(oom, "step_ms")["peer_oom_from"] == 256.0


def test_fit_uses_the_longest_points_and_needs_two():
    assert fit_slope([100], [1.0]) is None
    # flat (overhead-bound) short lengths are left out of the fit
    fit = fit_slope([1, 2, 4, 8, 16, 32], [5.0, 5.0, 5.0, 8.0, 16.0, 32.0])
    assert fit["slope"] == pytest.approx(1.0) and fit["from_length"] == 8 and fit["n_points"] == 3
    assert fit_slope([32, 64], [1.0, 4.0])["slope"] == pytest.approx(2.0)


# ------------------------------------------------------------------------------------------ the CPU sweep
def test_cpu_smoke_sweep_writes_json_markdown_and_plots(tmp_path, capsys):
    assert scaling.main(["--device", "cpu", "--smoke", "--preset", "vim-ti", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "scaling.json").read_text())
    assert result["benchmark"] == "scaling" and result["versions"]["torch"] == torch.__version__
    assert result["device"].startswith("CPU") and not result["skipped"]
    cases = result["cases"]
    assert len({c["name"] for c in cases}) == len(cases) == 2 * (4 + 3)  # 4 lengths + 3 resolutions, two models
    for sweep in ("len", "res"):
        for model in ("mamba", "transformer"):
            rows = [c for c in cases if c["model"] == model and f"/{sweep}" in c["name"]]
            lengths = [c["shape"]["length"] for c in rows]
            assert all(b > a for a, b in zip(lengths, lengths[1:])), lengths  # strictly increasing token counts
            if sweep == "len":
                assert lengths == [32, 64, 128, 256]
            else:
                assert lengths == [(r // 16) ** 2 + 1 for r in (32, 64, 128)]
            for c in rows:
                assert c["status"] == "ok" and c["impl"] == ("ours" if model == "mamba" else "transformer")
                assert c["fwd_ms"] > 0 and c["step_ms"] > 0 and c["peak_mem_mb"] is None  # no CUDA memory on CPU
                tokens = c["shape"]["batch"] * c["shape"]["length"]
                assert c["tokens_per_s"] == pytest.approx(tokens / c["fwd_ms"] * 1e3)
                assert c["train_tokens_per_s"] == pytest.approx(tokens / c["step_ms"] * 1e3)
    (cfg,) = [dict(v, preset=k) for k, v in result["settings"]["presets"].items()]
    for model in ("mamba", "transformer"):
        assert {c["params"] for c in cases if c["model"] == model} == {
            count_parameters(scaling.build_model(model, cfg))}
    by_name = {c["name"]: c for c in cases}
    assert len(result["ratios"]) == 2 * 7
    for r in result["ratios"]:
        assert r["ratio"] == pytest.approx(by_name[r["peer"]][r["metric"]] / by_name[r["ours"]][r["metric"]])
    for sweep in result["sweeps"]:
        rows = [c for c in cases if c["name"].startswith(f"{sweep['preset']}/{sweep['sweep'][:3]}")]
        for model in ("mamba", "transformer"):
            fit = sweep["fits"][model]["step_ms"]
            # recompute independently: least squares in log-log over the three longest lengths
            pts = sorted((c["shape"]["length"], c["step_ms"]) for c in rows if c["model"] == model)
            keep = pts[-3:]
            slope = np.polyfit(np.log([p[0] for p in keep]), np.log([p[1] for p in keep]), 1)[0]
            assert math.isfinite(fit["slope"]) and fit["slope"] == pytest.approx(slope)
        assert sweep["crossover"]["step_ms"] == crossover(rows, "step_ms")
    markdown = (tmp_path / "scaling.md").read_text()
    assert "| 256 |" in markdown and "(res // 16)" not in markdown and "crossover (step_ms)" in markdown
    import matplotlib.image as mpimg

    for sweep in ("length", "resolution"):
        image = mpimg.imread(tmp_path / f"scaling_vim-ti_{sweep}.png")
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 800
        assert image[..., :3].std() > 0.05  # not a blank canvas
    assert "crossover" in capsys.readouterr().out  # the table is printed last


def test_oom_is_marked_and_stops_that_model(monkeypatch):
    real = scaling.measure_point

    def fake(net, opt, shape, cfg, device):
        if isinstance(net, TransformerBackbone) and shape["length"] >= 64:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(net, opt, shape, cfg, device)

    monkeypatch.setattr(scaling, "measure_point", fake)
    parser = scaling._parser()
    parser.set_defaults(**scaling.SMOKE)
    (cfg,) = scaling.resolve_configs(parser.parse_args(["--preset", "dna-256"]), parser)
    cfg["amp"] = "none"
    (_, points), = scaling.sweeps_of(cfg)
    cases, skipped = scaling.run_group("transformer", points, cfg, torch.device("cpu"), math.inf, log=lambda s: None)
    assert [c["status"] for c in cases] == ["ok", "OOM"] and not skipped  # nothing is run after the OOM
    assert cases[1]["step_ms"] is None and cases[1]["shape"]["length"] == 64


def test_time_budget_skips_points_that_cannot_fit(monkeypatch):
    parser = scaling._parser()
    parser.set_defaults(**scaling.SMOKE)
    (cfg,) = scaling.resolve_configs(parser.parse_args(["--preset", "dna-256"]), parser)
    cfg["amp"] = "none"
    (_, points), = scaling.sweeps_of(cfg)
    names = [f"dna-256/len/L{n}/mamba" for n in (32, 64, 128, 256)]
    cases, skipped = scaling.run_group("mamba", points, cfg, torch.device("cpu"), deadline=0.0, log=lambda s: None)
    assert cases == [] and skipped == names  # budget already spent: nothing runs
    # the first point has no prediction and runs; the next is predicted (here: an hour) past the deadline
    monkeypatch.setattr(scaling, "_predict_s", lambda history, length, model, cfg: 3600.0 if history else 0.0)
    deadline = scaling.time.monotonic() + 600
    cases, skipped = scaling.run_group("mamba", points, cfg, torch.device("cpu"), deadline, log=lambda s: None)
    assert [c["name"] for c in cases] == names[:1] and skipped == names[1:]
    monkeypatch.undo()
    # call times grow with the step's exponent between the last two points, clipped to [1, 2]; a measurement of
    # calls longer than target_s makes warm-up + 2 timed + 1 memory call = 4 calls with warmup=1
    cfg = {"warmup": 1, "repeats": 10, "target_s": 0.1}
    assert scaling._predict_s([(100, 0.5, 1.0), (200, 1.0, 4.0)], 400, "mamba", cfg) == pytest.approx(4 * (4 + 16))
    assert scaling._predict_s([(100, 1.0, 1.0), (200, 1.0, 1.0)], 400, "transformer", cfg) == pytest.approx(4 * 4)
    assert scaling._predict_s([(100, 1.0, 1.0)], 400, "transformer", cfg) == pytest.approx(4 * 32)
    assert scaling._predict_s([], 400, "mamba", cfg) == 0.0


def test_resolution_tokens_follow_vim():
    assert scaling.resolution_tokens(224) == 197 and scaling.resolution_tokens(2048) == 16385
    with pytest.raises(ValueError, match="patch"):
        scaling.resolution_tokens(8)


@pytest.mark.parametrize(("argv", "message"), [
    (["--device", "cuda"], "no CUDA device"),
    (["--device", "cpu", "--min_len", "512", "--max_len", "256"], "--min_len"),
    (["--device", "cpu", "--preset", "vit-h"], "unknown preset 'vit-h'"),
    (["--device", "cpu", "--resolutions", "224,abc"], "--resolutions"),
    (["--device", "cpu", "--batch", "0"], "--batch must be >= 1"),
    (["--device", "cpu", "--time_budget", "-1"], "--time_budget"),
    (["--device", "cpu", "--n_head", "5"], "--n_head 5"),
    (["--device", "cpu", "--preset", "dna-256", "--sweep", "resolution"], "nothing to run"),
])
def test_bad_options_exit_with_a_named_error(argv, message, capsys, tmp_path):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit) as exc:
        scaling.main([*argv, "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_time_ms_reports_kernels_compiled_while_timing(monkeypatch):
    """A point whose timed calls compiled kernels is flagged (its time includes compilation)."""
    counter = {"n": 0}
    monkeypatch.setattr(scaling, "compiled_kernel_variants", lambda: counter["n"])

    def fn():
        counter["n"] += 1  # every call "compiles" one variant

    ms, compiled = scaling.time_ms(fn, torch.device("cpu"), warmup=2, repeats=3, target_s=0.0)
    assert ms >= 0 and compiled == 2  # two timed calls (the minimum), each compiled
    counter["n"] = 0
    _, compiled = scaling.time_ms(lambda: None, torch.device("cpu"), warmup=2, repeats=3, target_s=0.0)
    assert compiled == 0


def test_markdown_marks_points_timed_with_compilation():
    from mambasuite.core.scaling_analysis import markdown_sweep

    def case(model, length, compiled):
        return dict(model=model, status="ok", shape=dict(length=length), fwd_ms=1.0, step_ms=2.0,
                    train_tokens_per_s=1.0, peak_mem_mb=1.0, compiled_while_timing=compiled)

    cases = [case("mamba", 256, 0), case("transformer", 256, 0), case("mamba", 512, 3), case("transformer", 512, 0)]
    summary = {"fits": {"mamba": {}, "transformer": {}}, "crossover": {}}
    text = markdown_sweep("t", cases, summary, None)
    rows = [line for line in text.splitlines() if line.startswith("| 5") or line.startswith("| 2")]
    assert "†" not in rows[0] and rows[1].count("†") >= 2
    assert "include" in text and "compilation" in text


def test_compiled_variants_counts_every_cache_entry(monkeypatch):
    pytest.importorskip("triton")
    from mambasuite.kernels.triton import compile_stats

    class FakeKernel:
        device_caches = {0: ({"a": 1, "b": 2}, {}, None, None, None), 1: ({"c": 3}, {}, None, None, None)}

    monkeypatch.setattr(compile_stats, "_jit_kernels", lambda: iter([FakeKernel(), object()]))
    assert compile_stats.compiled_variants() == 3
