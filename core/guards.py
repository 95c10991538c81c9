"""NonFiniteGuard: catch a NaN/Inf loss or gradient, name the layer it came from, skip the update or stop.

Under bf16/AMP a single overflow can poison the weights: once an optimizer step applies a NaN gradient
every later step is NaN too, and the run is lost. The guard checks each optimizer step's loss and gradients
(one small reduction and one host sync per step); on a non-finite value it

1. finds where it came from: the parameters whose gradients are non-finite and, by replaying the
   forward pass of the current batch with forward hooks on every module (armed only for this replay), the
   first module whose output is non-finite while its inputs were finite;
2. drops the update (all gradients set to ``None``, so the optimizer leaves the weights and its moments
   untouched), up to ``max_skips`` times in a run, then raises :class:`NonFiniteError` with that report.

With fp16 mixed precision the ``GradScaler`` already skips steps with overflowing gradients and lowers its
scale, so only the loss is checked there.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

__all__ = ["NonFiniteError", "NonFiniteGuard", "first_nonfinite_module"]


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or gradient more often than the guard allows."""


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside nested tuples / lists / dicts (module outputs, batches)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _all_finite(obj: Any) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in _tensors(obj) if t.is_floating_point() or t.is_complex())


@contextlib.contextmanager
def _forward_probe(model: nn.Module) -> Iterator[dict[str, Any]]:
    """Forward hooks on every submodule that record the first one whose output is non-finite.

    Hooks fire when a module returns, so children report before their parents: the first report is the
    innermost module where the values turned non-finite. Yields the record dict (empty if all finite).
    """
    found: dict[str, Any] = {}

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if found or _all_finite(output):
                return
            found.update(name=name or "<root>", type=type(module).__name__, inputs_finite=_all_finite(args))
        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in model.named_modules()]
    try:
        yield found
    finally:
        for h in handles:
            h.remove()


def first_nonfinite_module(model: nn.Module, run_forward) -> dict[str, Any] | None:
    """Run ``run_forward()`` (which calls ``model``) under forward hooks; the first module with non-finite output.

    Returns ``{"name": dotted module name, "type": class name, "inputs_finite": bool}`` or ``None`` if every
    output was finite.
    """
    with _forward_probe(model) as found:
        run_forward()
    return dict(found) or None


class NonFiniteGuard(Callback):
    """Detects a non-finite loss or gradient, names its origin, and skips the step or stops the run.

    Args:
        max_skips: optimizer steps that may be dropped in one run (counted across resumes); the next
            non-finite step raises :class:`NonFiniteError`. ``0`` stops at the first one.
        check_every_n_steps: check every N-th optimizer step only (``1`` = every step; the check costs one
            host-device sync); ``0`` switches the guard off.
        diagnose: replay the current batch's forward pass with hooks to name the first non-finite module
            (automatic optimization on a single device or DDP only).

    The report (also printed as a warning for every skipped step) names the step, whether the loss and which
    parameters' gradients were non-finite, and the first non-finite module.
    """

    def __init__(self, max_skips: int = 10, check_every_n_steps: int = 1, diagnose: bool = True) -> None:
        for name, value, minimum in (("max_skips", max_skips, 0), ("check_every_n_steps", check_every_n_steps, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        self.max_skips = max_skips
        self.check_every_n_steps = check_every_n_steps
        self.diagnose = diagnose
        self.skipped = 0
        self.reports: list[str] = []
        self._loss_finite: torch.Tensor | None = None
        self._batch: Any = None
        self._batch_idx = 0
        self._rng: tuple[torch.Tensor, torch.Tensor | None] | None = None

    # ------------------------------------------------------------------------------------------ hooks
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._batch, self._batch_idx = batch, batch_idx
        if self.diagnose and self._checking(trainer):
            # The replay should draw the same dropout masks as the real forward pass.
            cuda = torch.cuda.get_rng_state() if pl_module.device.type == "cuda" else None
            self._rng = (torch.get_rng_state(), cuda)

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if not self._checking(trainer):
            return
        finite = torch.isfinite(loss.detach()).all()
        # With gradient accumulation, any non-finite micro-batch loss poisons the step.
        self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        if not self._checking(trainer):
            return
        loss_finite, self._loss_finite = self._loss_finite, None
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        grad_norms = _max_abs(params) if params and scaler is None else None
        flags = [f for f in (loss_finite, torch.isfinite(grad_norms).all() if grad_norms is not None else None)
                 if f is not None]
        if not flags:
            return
        bad = not bool(torch.stack([f.to(flags[0].device) for f in flags]).all())
        if trainer.world_size > 1:  # every rank must take the same decision
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        report = self._report(trainer, pl_module, loss_finite, params, grad_norms)
        self.reports.append(report)
        if self.skipped >= self.max_skips:
            raise NonFiniteError(f"{report}\nStopping: {self.skipped} step(s) were already skipped "
                                 f"(NonFiniteGuard max_skips={self.max_skips}).")
        self.skipped += 1
        for group in optimizer.param_groups:  # no gradient = no update, no change to Adam's moments
            for p in group["params"]:
                p.grad = None
        rank_zero_warn(f"{report}\nSkipped this optimizer step ({self.skipped}/{self.max_skips} allowed).")

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))

    # ---------------------------------------------------------------------------------------- helpers
    def _checking(self, trainer: pl.Trainer) -> bool:
        return self.check_every_n_steps > 0 and trainer.global_step % self.check_every_n_steps == 0

    def _report(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss_finite: torch.Tensor | None,
                params: list[torch.Tensor], grad_norms: torch.Tensor | None) -> str:
        where = f"step {trainer.global_step} (epoch {trainer.current_epoch}, batch {self._batch_idx})"
        lines = [f"NonFiniteGuard: non-finite values at {where}."]
        if loss_finite is not None:
            lines.append(f"  loss: {'finite' if bool(loss_finite) else 'NON-FINITE'}")
        if grad_norms is not None:
            names = {id(p): n for n, p in pl_module.named_parameters()}
            bad = [names.get(id(p), "<unnamed>") for p, ok in zip(params, torch.isfinite(grad_norms).tolist())
                   if not ok]
            if bad:
                shown = ", ".join(bad[:8]) + (f", ... ({len(bad)} of {len(params)})" if len(bad) > 8 else "")
                lines.append(f"  non-finite gradients: {shown}")
        lines.append("  " + self._diagnose(trainer, pl_module))
        return "\n".join(lines)

    def _diagnose(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
        from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy

        if not self.diagnose:
            return "forward replay: off (diagnose=False)"
        if not pl_module.automatic_optimization or not isinstance(trainer.strategy,
                                                                  (SingleDeviceStrategy, DDPStrategy)):
            return "forward replay: not available with manual optimization or sharded strategies"
        if not _all_finite(self._batch):
            return "the input batch itself contains non-finite values"
        try:
            with torch.no_grad(), _preserved_state(pl_module), _silenced_logging(pl_module), \
                    trainer.precision_plugin.train_step_context():
                if self._rng is not None:
                    torch.set_rng_state(self._rng[0])
                    if self._rng[1] is not None:
                        torch.cuda.set_rng_state(self._rng[1])
                found = first_nonfinite_module(pl_module, lambda: pl_module.training_step(self._batch,
                                                                                          self._batch_idx))
        except Exception as err:  # the diagnosis must never hide the original problem
            return f"forward replay failed ({type(err).__name__}: {err})"
        if found is None:
            return ("forward replay: every module output was finite (the non-finite values arose in the backward "
                    "pass or in an earlier micro-batch)")
        origin = "its inputs were finite" if found["inputs_finite"] else "its inputs were already non-finite"
        return f"first non-finite output: module '{found['name']}' ({found['type']}); {origin}"


def _max_abs(params: list[torch.Tensor]) -> torch.Tensor:
    """Per-tensor max |grad| as one fp32 vector (inf-norm: NaN and Inf propagate, no overflow of a 2-norm)."""
    grads = [p.grad for p in params]
    try:
        norms = torch._foreach_norm(grads, ord=float("inf"))
    except (RuntimeError, TypeError):
        norms = [g.abs().max() for g in grads]
    device = grads[0].device
    return torch.stack([n.float().to(device) for n in norms])


@contextlib.contextmanager
def _silenced_logging(pl_module: pl.LightningModule) -> Iterator[None]:
    """``self.log`` / ``self.log_dict`` become no-ops, so the replay logs nothing."""
    pl_module.log = lambda *args, **kwargs: None
    pl_module.log_dict = lambda *args, **kwargs: None
    try:
        yield
    finally:
        del pl_module.log, pl_module.log_dict


@contextlib.contextmanager
def _preserved_state(pl_module: pl.LightningModule) -> Iterator[None]:
    """Restore buffers (BatchNorm statistics), torchmetrics states and the RNG after the replay."""
    from torchmetrics import Metric

    buffers = {name: b.clone() for name, b in pl_module.named_buffers()}
    metrics = {}
    for name, module in pl_module.named_modules():
        if isinstance(module, Metric):
            metrics[name] = ({k: _copy_state(getattr(module, k)) for k in module._defaults},
                             module._update_count, module._computed)
    with torch.random.fork_rng(devices=[pl_module.device] if pl_module.device.type == "cuda" else []):
        try:
            yield
        finally:
            own = dict(pl_module.named_buffers())
            for name, value in buffers.items():
                own[name].copy_(value)
            modules = dict(pl_module.named_modules())
            for name, (state, count, computed) in metrics.items():
                for key, value in state.items():
                    setattr(modules[name], key, value)
                modules[name]._update_count, modules[name]._computed = count, computed


def _copy_state(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, list):
        return [v.clone() if isinstance(v, torch.Tensor) else v for v in value]
    return value
