"""Selective copying: the data generator, the task module, and (slow) the acceptance trainings via the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mambasuite.core.data import (
    IGNORE_INDEX,
    SelectiveCopyingDataModule,
    SelectiveCopyingDataset,
    make_selective_copying,
)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "core"
BUDGET_S = 300.0  # acceptance: 5 minutes of wall time on 2 CPU cores, CLI start-up included


def _make(n=200, seq_len=32, n_tokens=6, vocab_size=5, seed=0):
    return make_selective_copying(n, seq_len, n_tokens, vocab_size, torch.Generator().manual_seed(seed))


def test_layout_and_targets_are_the_data_tokens_in_order():
    seq_len, n_tokens, vocab = 32, 6, 5
    tokens, targets = _make(seq_len=seq_len, n_tokens=n_tokens, vocab_size=vocab)
    assert tokens.shape == targets.shape == (200, seq_len + n_tokens)
    assert tokens.dtype == targets.dtype == torch.int64
    noise, marker = vocab, vocab + 1
    assert (tokens[:, seq_len:] == marker).all()
    assert (targets[:, :seq_len] == IGNORE_INDEX).all()
    region = tokens[:, :seq_len]
    assert (region != marker).all()
    for row, target in zip(region, targets[:, seq_len:]):
        data = row[row != noise]
        assert data.numel() == n_tokens  # exactly n_tokens data tokens, the rest noise
        assert torch.equal(data, target)  # the answers are the data tokens, in order of appearance
    assert 0 <= int(targets[:, seq_len:].min()) and int(targets[:, seq_len:].max()) < vocab


def test_positions_and_symbols_are_random():
    seq_len = 32
    tokens, _ = _make(n=2000, seq_len=seq_len, vocab_size=5)
    is_data = tokens[:, :seq_len] < 5
    # Every slot of the region holds data in some sequence, with roughly uniform frequency (6/32 per slot).
    freq = is_data.float().mean(0)
    assert (freq > 0.12).all() and (freq < 0.26).all(), freq
    assert len({tuple(r.nonzero().flatten().tolist()) for r in is_data}) > 1900  # placements rarely repeat
    counts = torch.bincount(tokens[:, :seq_len][is_data], minlength=5).float()
    assert (counts / counts.sum() - 0.2).abs().max() < 0.03  # symbols uniform over the vocabulary


def test_seed_determinism_and_independent_splits():
    a, b = _make(seed=3), _make(seed=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = _make(seed=4)
    assert not torch.equal(a[0], c[0])

    dm1 = SelectiveCopyingDataModule(seq_len=16, n_tokens=4, vocab_size=4, n_train=100, n_val=50, n_test=50, seed=7)
    dm2 = SelectiveCopyingDataModule(seq_len=16, n_tokens=4, vocab_size=4, n_train=300, n_val=50, n_test=50, seed=7)
    dm1.setup("fit"), dm2.setup("fit")
    # The validation split does not depend on n_train, and differs from the training split.
    assert torch.equal(dm1.datasets["val"].tokens, dm2.datasets["val"].tokens)
    assert not torch.equal(dm1.datasets["train"].tokens[:50], dm1.datasets["val"].tokens)


def test_datamodule_batches_and_sizes():
    dm = SelectiveCopyingDataModule(seq_len=16, n_tokens=4, vocab_size=6, n_train=70, n_val=20, n_test=10,
                                    batch_size=32)
    assert dm.num_input_tokens == 8 and dm.num_classes == 6
    dm.setup("fit")
    assert set(dm.datasets) == {"train", "val"}  # only what the stage needs is generated
    tokens, targets = next(iter(dm.train_dataloader()))
    assert tokens.shape == targets.shape == (32, 20)
    assert len(dm.train_dataloader()) == 3 and len(dm.val_dataloader()) == 1
    dm.setup("predict")
    assert len(dm.predict_dataloader().dataset) == 10
    assert isinstance(dm.datasets["test"], SelectiveCopyingDataset)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"n_tokens": 17}, "n_tokens"), ({"vocab_size": 1}, "vocab_size"), ({"seq_len": 0}, "seq_len"),
     ({"batch_size": 0}, "batch_size"), ({"seed": -1}, "seed"), ({"n_train": 0}, "n_train")],
)
def test_bad_args_name_the_argument(kwargs, name):
    args = {"seq_len": 16, "n_tokens": 4, "vocab_size": 4, **kwargs}
    with pytest.raises(ValueError, match=name):
        SelectiveCopyingDataModule(**args)


@pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")
def test_task_loss_only_on_labelled_positions_and_no_decay_groups():
    from mambasuite.core.tasks import SequenceModelTask

    torch.manual_seed(0)
    task = SequenceModelTask(input_vocab_size=6, num_classes=4, d_model=16, n_layer=1, d_state=4)
    tokens, targets = _make(n=4, seq_len=12, n_tokens=3, vocab_size=4)
    loss = task._step((tokens, targets), "train")
    assert loss.ndim == 0 and torch.isfinite(loss)
    # The loss is the cross-entropy over the 3 answer positions only.
    logits = task.head(task(tokens))[:, 12:]
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 4), targets[:, 12:].reshape(-1))
    torch.testing.assert_close(loss, expected)
    preds = task.predict_step((tokens, targets), 0)
    assert preds.shape == tokens.shape and preds.dtype == torch.int64 and int(preds.max()) < 4

    groups = task._param_groups()
    no_decay = {id(p) for p in groups[1]["params"]}
    names = {n for n, p in task.named_parameters() if id(p) in no_decay}
    assert any(n.endswith("A_log") for n in names) and any(n.endswith(".D") for n in names)
    assert all(p.ndim >= 2 for p in groups[0]["params"])
    assert "embedding.weight" not in names and "head.weight" not in names


@pytest.mark.slow
def test_selective_config_solves_the_task_within_budget(selective_copying_run):
    # The shared run (tests/core/conftest.py) keeps the config's max_time and has the analytics and resource
    # callbacks on: solving the task within budget with their overhead is the stricter check.
    run = selective_copying_run
    assert run.acc >= 0.99, f"val/acc {run.acc:.4f} at step {run.step}"
    assert run.wall <= BUDGET_S, f"took {run.wall:.0f} s"


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the fit's own subprocess timeout below, not the suite's 900 s, bounds this test
def test_lti_config_fails_within_the_same_budget(cli_fit, tmp_path):
    # Same config and step budget (800 steps) as the selective run; the time cap is lifted so that a busy CPU
    # cannot make LTI "fail" merely by running fewer steps (on 2 idle cores it needs ~150 s).
    fit = cli_fit(CONFIGS / "selective_copying_lti.yaml", tmp_path, "--trainer.max_time=null", timeout=1800)
    acc, step = fit.acc, fit.step
    assert step + 1 == 800, f"LTI stopped at step {step + 1}, expected the full 800"
    # Chance is 1/8. The LTI ablation in the Mamba block reaches ~61% here, in line with the paper's Table 1
    # (Mamba block with an S4 layer: 56.4%, with S6: 99.8%); 0.75 leaves room for numerics.
    assert acc < 0.75, f"LTI reached val/acc {acc:.4f} at step {step}"
