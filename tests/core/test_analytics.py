"""Selective-mechanism analytics: the mixers' capture hook, the statistics against a direct computation, the
Lightning callback (CSV logger, stride, jsonl), bad inputs, and (slow) the selective-copying analysis end to end."""

from __future__ import annotations

import csv
import json
import math
import subprocess
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mambasuite.core.analytics import STATS, SelectiveAnalytics, SelectiveCapture, scanning_mixers, selective_stats
from mambasuite.core.blocks import MambaBackbone
from mambasuite.core.mixers import SS2D, BiMamba, Mamba


def _direct_branch(mixer, hidden: torch.Tensor, s: str, reverse: bool):
    """Delta (batch, d, L), z, A and the final state of one branch, computed here from the parameters with a
    plain loop over time (no kernels): the reference the captured statistics are checked against."""
    xz = hidden @ mixer.in_proj.weight.t()
    x, z = xz.transpose(1, 2).chunk(2, dim=1)  # (batch, d, L)
    conv = getattr(mixer, f"conv1d{s}")
    xin = x.flip(-1) if reverse else x
    xc = F.conv1d(xin, conv.weight, conv.bias, padding=mixer.d_conv - 1, groups=mixer.d_inner)
    xc = F.silu(xc[..., :x.shape[-1]])
    xc = xc.flip(-1) if reverse else xc
    dt, B, C = (xc.transpose(1, 2) @ getattr(mixer, f"x_proj{s}").weight.t()).split(
        [mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1)
    delta = F.softplus(getattr(mixer, f"dt_proj{s}")(dt)).transpose(1, 2)  # (batch, d, L)
    A = -torch.exp(getattr(mixer, f"A{s}_log"))
    h = torch.zeros(x.shape[0], mixer.d_inner, mixer.d_state, dtype=x.dtype)
    order = range(x.shape[-1] - 1, -1, -1) if reverse else range(x.shape[-1])
    for t in order:
        h = torch.exp(delta[:, :, t, None] * A) * h + delta[:, :, t, None] * B[:, t, None, :] * xc[:, :, t, None]
    return delta, z, A, h


def _expected_stats(delta, z, A, h, reset_at=2.3, skip_at=0.01) -> dict[str, float]:
    s = delta * A.abs().mean(-1)[:, None]
    q = torch.tensor([0.05, 0.5, 0.95], dtype=delta.dtype)
    dq, sq = torch.quantile(delta.flatten(), q), torch.quantile(s.flatten(), q)
    g = F.silu(z)
    norms = h.norm(dim=-1)
    return {"delta_mean": delta.mean(), "delta_std": delta.std(), "delta_q05": dq[0], "delta_q50": dq[1],
            "delta_q95": dq[2], "horizon_q05": 1 / sq[2], "horizon_q50": 1 / sq[1], "horizon_q95": 1 / sq[0],
            "frac_reset": (s > reset_at).double().mean(), "frac_skip": (s < skip_at).double().mean(),
            "gate_mean": g.mean(), "gate_off_frac": (g.abs() < 0.05).double().mean(), "state_norm_mean": norms.mean(),
            "state_norm_max": norms.max()}


@pytest.mark.parametrize("mixer_kind", ["mamba", "bimamba"])
def test_captured_statistics_match_a_direct_computation(mixer_kind):
    torch.manual_seed(0)
    mixer = (Mamba(8, d_state=4) if mixer_kind == "mamba" else BiMamba(8, d_state=4)).double()
    with torch.no_grad():  # spread Delta so that the reset / skip fractions are not trivially 0
        mixer.dt_proj.weight.mul_(30)
    hidden = torch.randn(3, 40, 8, dtype=torch.float64)
    out_plain = mixer(hidden)
    with SelectiveCapture(mixer, reset_at=0.5, skip_at=0.02) as cap:
        out_captured = mixer(hidden)
    torch.testing.assert_close(out_captured, out_plain)  # capturing does not change the forward
    assert "capture" not in mixer.__dict__  # hook removed on exit
    got = cap.as_dict()
    branches = [("", False, "fwd")] + ([("_b", True, "rev")] if mixer_kind == "bimamba" else [])
    assert set(got) == {f"{type(mixer).__name__}/{b}/{stat}" for *_, b in branches for stat in STATS}
    for s, reverse, name in branches:
        with torch.no_grad():
            expected = _expected_stats(*_direct_branch(mixer, hidden, s, reverse), reset_at=0.5, skip_at=0.02)
        for stat, value in expected.items():
            assert got[f"{type(mixer).__name__}/{name}/{stat}"] == pytest.approx(float(value), rel=1e-4, abs=1e-6), stat
    fractions = [got[f"{type(mixer).__name__}/fwd/{k}"] for k in ("frac_reset", "frac_skip")]
    assert all(0 < f < 1 for f in fractions), fractions


def test_per_token_maps_and_backbone_names():
    torch.manual_seed(0)
    net = MambaBackbone(8, 2, d_state=4, mixer="bimamba")
    x = torch.randn(2, 11, 8)
    with SelectiveCapture(net, per_token=True) as cap:
        net(x)
    assert [name for name, _ in scanning_mixers(net)] == ["layers.0", "layers.1"]
    assert set(cap.tokens) == {(f"layers.{i}", b) for i in range(2) for b in ("fwd", "rev")}
    maps = cap.tokens[("layers.1", "rev")]
    assert maps["delta"].shape == maps["horizon"].shape == maps["gate"].shape == (2, 11)
    # channel means of the per-token maps agree with the whole-tensor mean
    assert maps["delta"].mean().item() == pytest.approx(cap.as_dict()["layers.1/rev/delta_mean"], rel=1e-5)


def test_ss2d_routes_external_bimamba_and_checkpointing():
    torch.manual_seed(0)
    with SelectiveCapture(SS2D(8, d_state=2)) as cap:
        cap.mixers[0][1](torch.randn(1, 3, 5, 8))
    assert sorted(b for _, b in cap.stats) == ["col", "col_rev", "row", "row_rev"]
    assert "SS2D/row/gate_mean" not in cap.as_dict()  # no z inside the scan: no gate statistics
    ext = BiMamba(8, d_state=2, variant="external")
    assert [n for n, _ in scanning_mixers(ext)] == ["mamba_fwd", "mamba_rev"]
    net = MambaBackbone(8, 2, d_state=2, grad_checkpointing=True).train()
    with SelectiveCapture(net) as cap:
        net(torch.randn(2, 6, 8, requires_grad=True)).sum().backward()  # recomputation must not add entries
    assert len(cap.stats) == 2


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="no core Mamba"):
        SelectiveCapture(nn.Linear(3, 3))
    with pytest.raises(TypeError, match="nn.Module"):
        SelectiveCapture("model")
    with pytest.raises(ValueError, match="every_n_steps"):
        SelectiveAnalytics(every_n_steps=0)
    with pytest.raises(ValueError, match="unknown names"):
        SelectiveAnalytics(stats=["delta_mean", "entropy"])
    with pytest.raises(ValueError, match="reset_at"):
        SelectiveAnalytics(reset_at=0.001, skip_at=0.01)


class _TinyTask(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(6, 8)
        self.backbone = MambaBackbone(8, 2, d_state=4)
        self.head = nn.Linear(8, 6)

    def forward(self, tokens):
        return self.head(self.backbone(self.embedding(tokens)))

    def training_step(self, batch, batch_idx):
        tokens, = batch
        return F.cross_entropy(self(tokens).flatten(0, 1), tokens.flatten())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)  # weights stay fixed: logged values are reproducible


def test_callback_logs_on_its_stride_to_csv_and_jsonl(tmp_path):
    torch.manual_seed(0)
    tokens = torch.randint(0, 6, (4, 12))
    task = _TinyTask()
    callback = SelectiveAnalytics(every_n_steps=2, stats=["delta_mean", "horizon_q50", "state_norm_mean"])
    trainer = pl.Trainer(max_steps=5, accelerator="cpu", logger=pl.loggers.CSVLogger(tmp_path, name="run"),
                         callbacks=[callback], enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(task, DataLoader(TensorDataset(tokens), batch_size=4))  # the same batch at every step
    assert [h["step"] for h in callback.history] == [0, 2, 4]
    with SelectiveCapture(task) as cap:
        task(tokens)
    direct = {f"analytics/{k}": v for k, v in cap.as_dict().items() if k.rsplit("/", 1)[1] in callback.stats}
    assert len(direct) == 2 * 3
    rows = list(csv.DictReader((Path(trainer.logger.log_dir) / "metrics.csv").open()))
    logged = [r for r in rows if r.get("analytics/backbone.layers.0/fwd/delta_mean")]
    assert [int(r["step"]) for r in logged] == [0, 2, 4]
    lines = [json.loads(x) for x in (Path(trainer.logger.log_dir) / "analytics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 2, 4]
    for row, line in zip(logged, lines):
        for key, value in direct.items():
            assert float(row[key]) == pytest.approx(value, rel=1e-5)
            assert line[key] == pytest.approx(value, rel=1e-5)
    assert not any("capture" in m.__dict__ for _, m in scanning_mixers(task))


def test_selective_stats_handle_a_missing_gate():
    delta, bias = torch.zeros(1, 2, 5), torch.zeros(2)
    A, state = -torch.ones(2, 3), torch.ones(1, 2, 3)
    values = selective_stats(delta, bias, A, None, state)
    named = dict(zip(STATS, values.tolist()))
    assert named["delta_mean"] == pytest.approx(math.log(2))  # softplus(0)
    assert named["horizon_q50"] == pytest.approx(1 / math.log(2))  # 1 / (Delta * |A|), |A| = 1
    assert math.isnan(named["gate_mean"]) and named["state_norm_mean"] == pytest.approx(math.sqrt(3))


@pytest.mark.slow
def test_selective_copying_delta_differs_on_data_tokens(selective_copying_run):
    """Analyse the checkpoint of the selective-copying training with the analytics and resource callbacks (the
    session's shared run, tests/core/conftest.py) and render the run report: Delta following data tokens must
    clearly exceed Delta following noise tokens."""
    fit = selective_copying_run
    cmd, cwd, run, config = fit.cmd, fit.cwd, fit.run, fit.config
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metrics"]["val/acc"] >= 0.95, summary["line"]
    analyze = subprocess.run([*cmd, "analyze", "-c", str(config), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
                              "--out", str(run / "analyze")], capture_output=True, text=True, timeout=600,
                             cwd=cwd)
    assert analyze.returncode == 0, analyze.stderr[-2000:]
    report = json.loads((run / "analyze" / "analysis.json").read_text())
    assert report["contrast_groups"] == ["data", "noise"]
    best = max(report["contrast"].values(), key=lambda c: c["max_ratio"])
    print("\n" + json.dumps(report["contrast"], indent=1))
    assert best["max_ratio"] >= 2.0, report["contrast"]
    rendered = subprocess.run([*cmd, "report", str(run)], capture_output=True, text=True, timeout=600, cwd=cwd)
    assert rendered.returncode == 0, rendered.stderr[-2000:]
    html = (run / "report.html").read_text()
    assert "Selective-mechanism analytics" in html and "resources/tokens_per_s" in html
    assert html.count("data:image/png;base64,") >= 5
