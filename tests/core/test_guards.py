"""NonFiniteGuard: detects non-finite losses and gradients, names the layer, skips the update or stops."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mambasuite.core.guards import NonFiniteError, NonFiniteGuard, first_nonfinite_module


class _Blowup(nn.Module):
    """Multiplies by inf while `active` (an overflow in one layer)."""

    active = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * float("inf") if self.active else x


class _NaNGrad(torch.autograd.Function):
    """Identity forward, NaN gradient backward (a finite loss with a poisoned backward)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


class _Task(pl.LightningModule):
    """Linear -> BatchNorm -> Blowup -> Linear; the blow-up (or NaN grad) fires at `bad_step`."""

    def __init__(self, bad_step: int = 2, mode: str = "forward") -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), _Blowup(), nn.Linear(8, 1))
        self.bad_step, self.mode = bad_step, mode
        self.logged: list[float] = []

    def on_train_batch_start(self, batch, batch_idx):
        self.body[2].active = self.mode == "forward" and self.global_step == self.bad_step

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.mode == "input" and self.global_step == self.bad_step:
            x = x.clone()
            x[0, 0] = float("nan")
            batch[0].copy_(x)  # the batch the guard sees is the poisoned one
        h = self.body[:3](x)
        if self.mode == "backward" and self.global_step == self.bad_step:
            h = _NaNGrad.apply(h)
        loss = nn.functional.mse_loss(self.body[3](h), y)
        self.log("train/loss", loss)
        self.logged.append(float(loss.detach()))
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


class _Snapshot(Callback):
    """Records parameters and BatchNorm statistics around each optimizer step."""

    def __init__(self) -> None:
        self.before, self.after, self.bn_before_guard, self.bn_after = {}, {}, {}, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before[trainer.global_step] = [p.detach().clone() for p in pl_module.parameters()]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.bn_before_guard[trainer.global_step] = pl_module.body[1].running_mean.clone()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step - 1
        self.after[step] = [p.detach().clone() for p in pl_module.parameters()]
        self.bn_after[step] = pl_module.body[1].running_mean.clone()


def _fit(task: _Task, guard: NonFiniteGuard | None, steps: int = 5) -> _Snapshot:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    snap = _Snapshot()
    callbacks = [snap] + ([guard] if guard is not None else [])
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    trainer.fit(task, DataLoader(data, batch_size=8))
    return snap


def test_nonfinite_forward_is_skipped_and_the_layer_named():
    guard = NonFiniteGuard(max_skips=2)
    task = _Task(bad_step=2)
    with pytest.warns(UserWarning, match="body.2"):
        snap = _fit(task, guard)
    assert guard.skipped == 1 and len(guard.reports) == 1
    report = guard.reports[0]
    assert "step 2" in report and "loss: NON-FINITE" in report
    assert "module 'body.2' (_Blowup); its inputs were finite" in report
    assert all(torch.equal(a, b) for a, b in zip(snap.before[2], snap.after[2]))  # the update was dropped
    assert not all(torch.equal(a, b) for a, b in zip(snap.before[3], snap.after[3]))  # training went on
    assert all(torch.isfinite(p).all() for p in task.parameters())
    # The diagnostic replay left BatchNorm statistics and logging alone.
    assert torch.equal(snap.bn_before_guard[2], snap.bn_after[2])
    assert len(task.logged) == 6  # 5 steps + the replay of step 2 (with self.log silenced, then restored)
    assert "log" not in vars(task) and "log_dict" not in vars(task)


def test_stops_with_the_report_after_max_skips():
    with pytest.raises(NonFiniteError, match=r"(?s)module 'body.2'.*max_skips=0"):
        _fit(_Task(bad_step=1), NonFiniteGuard(max_skips=0))


def test_nonfinite_gradient_with_finite_loss_names_parameters():
    guard = NonFiniteGuard(max_skips=1)
    with pytest.warns(UserWarning, match="non-finite gradients"):
        _fit(_Task(bad_step=1, mode="backward"), guard)
    report = guard.reports[0]
    assert "loss: finite" in report
    assert "body.0.weight" in report and "body.1.weight" in report and "body.3.weight" not in report
    assert "every module output was finite" in report


def test_nonfinite_input_batch_is_reported():
    guard = NonFiniteGuard(max_skips=1)
    with pytest.warns(UserWarning):
        _fit(_Task(bad_step=1, mode="input"), guard)
    assert "input batch itself contains non-finite values" in guard.reports[0]


def test_without_the_guard_the_weights_are_poisoned():
    task = _Task(bad_step=1)
    _fit(task, NonFiniteGuard(check_every_n_steps=0))  # switched off
    assert not all(torch.isfinite(p).all() for p in task.parameters())


def test_state_and_arguments():
    guard = NonFiniteGuard(max_skips=3)
    guard.skipped = 2
    other = NonFiniteGuard(max_skips=3)
    other.load_state_dict(guard.state_dict())
    assert other.skipped == 2
    for bad in (dict(max_skips=-1), dict(check_every_n_steps=-2), dict(max_skips=True)):
        with pytest.raises(ValueError):
            NonFiniteGuard(**bad)


def test_first_nonfinite_module_helper():
    model = nn.Sequential(nn.Linear(2, 2), _Blowup(), nn.Sequential(nn.ReLU()))
    model[1].active = True
    found = first_nonfinite_module(model, lambda: model(torch.ones(1, 2)))
    assert found == {"name": "1", "type": "_Blowup", "inputs_finite": True}
    model[1].active = False
    assert first_nonfinite_module(model, lambda: model(torch.ones(1, 2))) is None
    assert not model[1]._forward_hooks  # hooks removed
