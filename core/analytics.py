"""Selective-mechanism analytics for any model built from core's mixers (Mamba, BiMamba, SS2D).

What is measured, per mixer ("layer") and scan direction ("branch"), from the quantities each scan already has:

* Delta = softplus(dt + dt_bias), (batch, d_inner, L): mean, std, 5/50/95% quantiles.
* decay rate s = Delta * a, with a = mean_n |A[d, n]| the channel's average |A|: one step multiplies the state by
  exp(-Delta |A|), so a state survives about 1 / s steps -- the *memory horizon*. Its quantiles are 1 / (those of
  s): horizon_q05 (short-memory tokens) = 1 / s_q95, horizon_q50 = 1 / s_q50, horizon_q95 = 1 / s_q05.
* frac_reset: fraction of (token, channel) pairs with s > reset_at (default 2.3: < 10% of the state survives the
  step, the token overwrites it); frac_skip: s < skip_at (default 0.01: > 99% survives and the input enters with
  weight ~Delta, i.e. the token is ignored).
* gate activity, g = silu(z) (batch, d_inner, L) for the gated mixers: gate_mean and gate_off_frac = P(|g| < 0.05).
* state_norm_mean / state_norm_max: the L2 norm over N of the scan's final state (batch, d_inner, N).

`SelectiveCapture` is the context manager that switches the mixers' `capture` hook (core.mixers) on;
`SelectiveAnalytics` is the Lightning callback that does so every `every_n_steps` training steps and sends the
numbers to every logger (CSV, TensorBoard, ...) as `analytics/<layer>/<branch>/<stat>`, plus one JSON line per
logged step in `<log_dir>/analytics.jsonl`. `analyze_main` is `mamba-suite analyze` (see core.analyze).

Switching the callbacks on for any config from the command line (or list them under trainer.callbacks in the YAML):

    mamba-suite fit -c configs/core/selective_copying.yaml \
        --trainer.callbacks+=mambasuite.core.analytics.SelectiveAnalytics --trainer.callbacks.every_n_steps=50 \
        --trainer.callbacks+=mambasuite.core.resources.ResourceMonitor
    mamba-suite analyze -c configs/core/selective_copying.yaml \
        --ckpt_path runs/selective_copying/version_0/checkpoints/last.ckpt
    mamba-suite report runs/selective_copying/version_0
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback
from torch import nn

from .mixers import SS2D, BiMamba, Mamba

__all__ = ["STATS", "SelectiveAnalytics", "SelectiveCapture", "analyze_main", "scanning_mixers", "selective_stats"]

STATS = ("delta_mean", "delta_std", "delta_q05", "delta_q50", "delta_q95", "horizon_q05", "horizon_q50",
         "horizon_q95", "frac_reset", "frac_skip", "gate_mean", "gate_off_frac", "state_norm_mean", "state_norm_max")
QUANTILE_SAMPLE = 1 << 16  # quantiles are taken on an evenly strided subsample of at most this many values
GATE_OFF = 0.05


def scanning_mixers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every mixer in `model` that runs scans itself, in module order.

    An external BiMamba delegates to its two `Mamba` children, which are listed instead. Names drop a trailing
    ".mixer" (so "backbone.layers.3.mixer" is reported as "backbone.layers.3").
    """
    found = []
    for name, module in model.named_modules():
        if isinstance(module, BiMamba) and module.variant == "external":
            continue
        if isinstance(module, (Mamba, BiMamba, SS2D)):
            found.append((name.removesuffix(".mixer") or type(module).__name__, module))
    return found


def _subsample(t: torch.Tensor) -> torch.Tensor:
    flat = t.reshape(-1)
    step = max(1, math.ceil(flat.numel() / QUANTILE_SAMPLE))
    return flat[::step]


def selective_stats(delta: torch.Tensor, delta_bias: torch.Tensor, A: torch.Tensor, z: torch.Tensor | None,
                    last_state: torch.Tensor, reset_at: float = 2.3, skip_at: float = 0.01) -> torch.Tensor:
    """The `STATS` of one scan as a float32 tensor (len(STATS),) on the input's device (NaN where undefined).

    Args: delta (batch, d, L) before bias and softplus; delta_bias (d,); A (d, N); z (batch, d, L) or None;
    last_state (batch, d, N); thresholds on s = Delta * mean_n|A| (see the module docstring).
    """
    dt = F.softplus(delta.float() + delta_bias.float()[:, None])  # (batch, d, L)
    s = dt * A.float().abs().mean(dim=-1)[:, None]  # decay per step, (batch, d, L)
    q = torch.tensor([0.05, 0.5, 0.95], device=dt.device)
    dq = torch.quantile(_subsample(dt), q)
    sq = torch.quantile(_subsample(s), q)
    nan = torch.tensor(float("nan"), device=dt.device)
    if z is not None:
        g = F.silu(z.float())
        gate = (g.mean(), (g.abs() < GATE_OFF).float().mean())
    else:
        gate = (nan, nan)
    norms = last_state.float().norm(dim=-1)  # (batch, d)
    return torch.stack([dt.mean(), dt.std(), dq[0], dq[1], dq[2], 1 / sq[2], 1 / sq[1], 1 / sq[0],
                        (s > reset_at).float().mean(), (s < skip_at).float().mean(), *gate, norms.mean(),
                        norms.max()])


class SelectiveCapture:
    """Context manager: while active, the scanning mixers of `model` report their selective quantities.

    `with SelectiveCapture(model) as cap: model(x)` leaves in `cap.stats` a dict
    {(layer, branch): tensor (len(STATS),)} (see `selective_stats`); with `per_token=True`, `cap.tokens` also
    holds {(layer, branch): {"delta": (batch, L) channel-mean Delta, "horizon": (batch, L) geometric channel-mean
    of 1 / s, "gate": (batch, L) channel-mean silu(z) or None}} for heatmaps. Only the first call per
    (layer, branch) counts, so activation checkpointing's recomputation does not duplicate it. The mixers'
    previous hooks are restored on exit.
    """

    def __init__(self, model: nn.Module, per_token: bool = False, reset_at: float = 2.3,
                 skip_at: float = 0.01) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not reset_at > skip_at > 0:
            raise ValueError(f"need reset_at > skip_at > 0, got reset_at={reset_at}, skip_at={skip_at}")
        self.mixers = scanning_mixers(model)
        if not self.mixers:
            raise ValueError(f"{type(model).__name__} contains no core Mamba / BiMamba / SS2D mixer to analyse")
        self.per_token, self.reset_at, self.skip_at = per_token, reset_at, skip_at
        self.stats: dict[tuple[str, str], torch.Tensor] = {}
        self.tokens: dict[tuple[str, str], dict] = {}
        self._saved: list = []

    def _hook(self, layer: str):
        def capture(mixer, branch, *, delta, delta_bias, A, z, last_state):
            key = (layer, branch)
            if key in self.stats:
                return
            self.stats[key] = selective_stats(delta, delta_bias, A, z, last_state, self.reset_at, self.skip_at)
            if self.per_token:
                dt = F.softplus(delta.float() + delta_bias.float()[:, None])
                log_s = torch.log(dt * A.float().abs().mean(dim=-1)[:, None])
                self.tokens[key] = {"delta": dt.mean(dim=1).cpu(), "horizon": torch.exp(-log_s.mean(dim=1)).cpu(),
                                    "gate": None if z is None else F.silu(z.float()).mean(dim=1).cpu()}
        return capture

    def __enter__(self) -> "SelectiveCapture":
        self.stats.clear()
        self.tokens.clear()
        self._saved = [(module, module.__dict__.get("capture")) for _, module in self.mixers]
        for layer, module in self.mixers:
            module.capture = self._hook(layer)
        return self

    def __exit__(self, *exc) -> None:
        for module, previous in self._saved:
            if previous is None:
                module.__dict__.pop("capture", None)
            else:
                module.capture = previous
        self._saved = []

    def as_dict(self) -> dict[str, float]:
        """{"<layer>/<branch>/<stat>": value} with one device-to-host copy; NaN stats (no gate) are left out."""
        if not self.stats:
            return {}
        keys = list(self.stats)
        values = torch.stack([self.stats[k] for k in keys]).cpu().tolist()
        return {f"{layer}/{branch}/{stat}": v for (layer, branch), row in zip(keys, values)
                for stat, v in zip(STATS, row) if not math.isnan(v)}


class SelectiveAnalytics(Callback):
    """Logs the selective-mechanism statistics (module docstring) of the training batch every `every_n_steps`.

    Values go to every attached logger as `analytics/<layer>/<branch>/<stat>` at the trainer's global step, and,
    with `jsonl=True`, as one JSON object per logged step to `<log_dir>/analytics.jsonl` (read by `mamba-suite
    report`). Cost: nothing on other steps; on a logged step, a few reductions per scan and one host copy.

    Args:
        every_n_steps: logging stride in optimizer steps (step 0 included).
        stats: subset of `STATS` to log (None = all).
        reset_at, skip_at: thresholds on Delta * mean|A| for frac_reset / frac_skip.
        jsonl: also append to analytics.jsonl in the trainer's log dir.
    """

    def __init__(self, every_n_steps: int = 50, stats: list[str] | None = None, reset_at: float = 2.3,
                 skip_at: float = 0.01, jsonl: bool = True) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive int, got {every_n_steps!r}")
        unknown = sorted(set(stats or ()) - set(STATS))
        if unknown:
            raise ValueError(f"stats: unknown names {unknown}; choose from {list(STATS)}")
        if not reset_at > skip_at > 0:
            raise ValueError(f"need reset_at > skip_at > 0, got reset_at={reset_at}, skip_at={skip_at}")
        self.every_n_steps, self.stats = every_n_steps, tuple(stats or STATS)
        self.reset_at, self.skip_at, self.jsonl = reset_at, skip_at, jsonl
        self._capture: SelectiveCapture | None = None
        self._last_step = -1
        self._jsonl_path: Path | None = None
        self.history: list[dict] = []  # what was logged, for programmatic use

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        SelectiveCapture(pl_module)  # fail at the start (no mixers) rather than at the first logged step
        if self.jsonl and stage == "fit":
            # trainer.log_dir is a collective under DDP: every rank asks, rank 0 writes.
            log_dir = trainer.log_dir or trainer.default_root_dir
            self._jsonl_path = Path(log_dir) / "analytics.jsonl" if trainer.is_global_zero else None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        step = trainer.global_step  # the optimizer step this batch contributes to
        if step % self.every_n_steps == 0 and step != self._last_step:  # once per step under grad accumulation
            self._last_step = step
            self._capture = SelectiveCapture(pl_module, reset_at=self.reset_at, skip_at=self.skip_at).__enter__()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if self._capture is None:
            return
        capture, self._capture = self._capture, None
        capture.__exit__(None, None, None)
        step = self._last_step
        metrics = {f"analytics/{k}": v for k, v in capture.as_dict().items() if k.rsplit("/", 1)[1] in self.stats}
        if not metrics:
            return
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        self.history.append({"step": step, **metrics})
        if self._jsonl_path is not None:
            self._jsonl_path.parent.mkdir(parents=True, exist_ok=True)
            with self._jsonl_path.open("a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._capture is not None:
            self._capture.__exit__(None, None, None)
            self._capture = None


def analyze_main(argv: list[str] | None = None) -> int:
    """`mamba-suite analyze -c CONFIG --ckpt_path CKPT [--out DIR]`: heatmaps and report (core.analyze)."""
    from .analyze import main

    return main(argv)
