"""Crash and resume: resumable data order, per-step seeding, the CLI's `last` checkpoint, and a SIGKILLed
`mamba-suite fit` that resumes bit-exactly (weights and logged validation metrics) on CPU."""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from mambasuite.core import cli
from mambasuite.core.resumable import ResumableDataLoader, ResumableSampler, StepSeeder, mix_seed

REPO = Path(__file__).resolve().parents[2]
SELECTIVE = REPO / "configs" / "core" / "selective_copying.yaml"


class _Augmenting(Dataset):
    """Item i -> (i, a draw from each of torch / random / numpy), like a random augmentation."""

    def __len__(self) -> int:
        return 23

    def __getitem__(self, i: int):
        return torch.tensor([float(i), torch.rand(()).item(), random.random(), float(np.random.rand())])


def _epoch(loader: ResumableDataLoader, epoch: int) -> list[torch.Tensor]:
    loader._position.set_epoch(epoch)
    return list(loader)


def test_order_is_a_seeded_permutation_per_epoch():
    loader = ResumableDataLoader(_Augmenting(), batch_size=5, seed=3)
    e0, e0_again, e1 = _epoch(loader, 0), _epoch(loader, 0), _epoch(loader, 1)
    ids = torch.cat([b[:, 0] for b in e0]).long()
    assert sorted(ids.tolist()) == list(range(23)) and ids.tolist() != list(range(23))
    assert all(torch.equal(a, b) for a, b in zip(e0, e0_again))
    assert torch.cat([b[:, 0] for b in e1]).tolist() != ids.tolist()
    other_seed = ResumableDataLoader(_Augmenting(), batch_size=5, seed=4)
    assert torch.cat([b[:, 0] for b in _epoch(other_seed, 0)]).tolist() != ids.tolist()


def test_augmentation_draws_depend_on_sample_and_epoch_only():
    by_index = {}
    for batch_size in (5, 7):
        for b in _epoch(ResumableDataLoader(_Augmenting(), batch_size=batch_size, seed=1), 2):
            for row in b:
                by_index.setdefault(int(row[0]), []).append(row[1:])
    assert all(torch.equal(v[0], v[1]) for v in by_index.values())  # same draw whatever the batch/position
    e3 = {int(r[0]): r[1:] for b in _epoch(ResumableDataLoader(_Augmenting(), batch_size=5, seed=1), 3) for r in b}
    assert not torch.equal(e3[0], by_index[0][0])


def test_fetching_does_not_disturb_global_generators():
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    loader = ResumableDataLoader(_Augmenting(), batch_size=4, seed=0)
    for _ in loader:
        pass
    got = (torch.rand(3), random.random(), np.random.rand())
    # iter() of any DataLoader draws its base seed from torch's generator; random and numpy stay untouched
    assert got[1:] == expected[1:]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_state_dict_resumes_mid_epoch_with_the_same_batches(num_workers):
    make = lambda: ResumableDataLoader(_Augmenting(), batch_size=4, seed=5, drop_last=True,  # noqa: E731
                                       num_workers=num_workers)
    full = _epoch(make(), 1)
    first = make()
    first.sampler.set_epoch(1)
    it = iter(first)
    seen = [next(it) for _ in range(3)]
    state = first.state_dict()
    assert state == {"epoch": 1, "batches": 3, "batch_size": 4, "seed": 5, "num_replicas": 1, "dataset_len": 23}
    del it
    resumed = make()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(1)  # Lightning sets the epoch again before iterating
    rest = list(resumed)
    assert len(seen) + len(rest) == len(full) == 23 // 4
    assert all(torch.equal(a, b) for a, b in zip(seen + rest, full))
    assert resumed.state_dict()["batches"] == len(full)
    # the skip applied once: the next pass over epoch 1 is whole again
    assert len(list(resumed)) == len(full)


class _Buckets(torch.utils.data.Sampler):
    """Fixed batches of uneven size, reordered per epoch from a seed (like a length-bucketing sampler)."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.batches = [list(range(i, min(i + 2 + i % 3, n))) for i in range(0, n, 3)]
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        order = torch.randperm(len(self.batches), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        return iter([self.batches[i] for i in order.tolist()])


def test_custom_batch_sampler_resumes_at_batch_k():
    make = lambda: ResumableDataLoader(_Augmenting(), batch_sampler=_Buckets(23), seed=9)  # noqa: E731
    full = _epoch(make(), 2)
    first = make()
    first.batch_sampler.set_epoch(2)
    it = iter(first)
    seen = [next(it) for _ in range(4)]
    state = first.state_dict()
    assert state["batches"] == 4 and state["epoch"] == 2 and state["batch_size"] == 0
    resumed = make()
    resumed.load_state_dict(state)
    resumed.batch_sampler.sampler.set_epoch(2)  # where Lightning's set_epoch lands for batch samplers
    assert all(torch.equal(a, b) for a, b in zip(seen + list(resumed), full)) and len(full) == 8
    with pytest.raises(TypeError, match="set_epoch"):
        ResumableDataLoader(_Augmenting(), batch_sampler=[[0, 1], [2]])


def test_pending_skip_only_applies_to_its_epoch():
    loader = ResumableDataLoader(_Augmenting(), batch_size=5, seed=0)
    loader.load_state_dict({"epoch": 0, "batches": 5, "batch_size": 5, "seed": 0, "num_replicas": 1,
                            "dataset_len": 23})  # epoch 0 was finished
    assert len(_epoch(loader, 1)) == 5  # epoch 1 is complete


def test_changed_settings_are_refused_by_name():
    state = ResumableDataLoader(_Augmenting(), batch_size=4, seed=0).state_dict()
    with pytest.raises(ValueError, match="batch_size 4 -> 8"):
        ResumableDataLoader(_Augmenting(), batch_size=8, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="lacks"):
        ResumableDataLoader(_Augmenting(), batch_size=4).load_state_dict({"epoch": 0})
    with pytest.raises(TypeError, match="sampler"):
        ResumableDataLoader(_Augmenting(), sampler=[0, 1])


def test_ranks_partition_the_epoch():
    parts = [list(ResumableSampler(_Augmenting(), seed=2, num_replicas=2, rank=r)) for r in (0, 1)]
    indices = [i for part in parts for i, _ in part]
    assert len(parts[0]) == len(parts[1]) == 12 and set(indices) == set(range(23))  # one index repeated to pad
    assert all(s == mix_seed(2, 0, i) for part in parts for i, s in part)


def test_step_seeder_depends_on_epoch_batch_and_rank():
    seeder = StepSeeder(seed=7)

    def draw(epoch, batch_idx, rank):
        trainer = types.SimpleNamespace(current_epoch=epoch, global_rank=rank)
        torch.manual_seed(123)  # whatever came before must not matter
        seeder.on_train_batch_start(trainer, None, None, batch_idx)
        return torch.rand(2), random.random(), np.random.rand()

    a = draw(0, 5, 0)
    assert torch.equal(a[0], draw(0, 5, 0)[0]) and a[1:] == draw(0, 5, 0)[1:]
    for other in (draw(1, 5, 0), draw(0, 6, 0), draw(0, 5, 1)):
        assert not torch.equal(a[0], other[0])


def test_mix_seed_rejects_non_integers():
    assert mix_seed(1, 2) != mix_seed(2, 1) and 0 <= mix_seed(0) < 2 ** 63
    with pytest.raises(TypeError, match="integers"):
        mix_seed(1.5)


# ------------------------------------------------------------------------------------------------- CLI
SMALL = ["--data.init_args.n_train=128", "--data.init_args.n_val=64", "--trainer.enable_progress_bar=false",
         "--trainer.limit_val_batches=1", "--trainer.enable_model_summary=false"]


@pytest.fixture
def run_main(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mamba-suite"])
    return cli.main


def test_last_checkpoint_every_n_steps_and_at_fit_end(run_main, tmp_path):
    assert run_main(["fit", "-c", str(SELECTIVE), *SMALL, "--trainer.max_steps=5", "--trainer.val_check_interval=2",
                     "--last_checkpoint.every_n_train_steps=2"]) == 0
    ckpt_dir = tmp_path / "runs/selective_copying/version_0/checkpoints"
    last = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    assert last["global_step"] == 5  # the final state, not the step-4 save
    assert not list(ckpt_dir.glob("last-v*.ckpt"))  # one writer of last.ckpt
    loader_state = last["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert loader_state["batches"] == 1 and loader_state["epoch"] == 2  # 2 batches per epoch, step 5 = epoch 2
    assert any(k.startswith("NonFiniteGuard") for k in last["callbacks"])


def test_ckpt_path_last_without_checkpoint(run_main, tmp_path, capsys):
    assert run_main(["fit", "-c", str(SELECTIVE), *SMALL, "--trainer.max_steps=1", "--ckpt_path", "last"]) == 0
    assert "no last.ckpt" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        run_main(["validate", "-c", str(SELECTIVE), *SMALL, "--ckpt_path", "last",
                  "--trainer.default_root_dir=elsewhere"])
    assert exc.value.code == 2


def test_ckpt_path_last_picks_the_newest_version_and_logs_into_a_new_one(run_main, tmp_path, capsys):
    base = ["fit", "-c", str(SELECTIVE), *SMALL, "--trainer.val_check_interval=2"]
    assert run_main([*base, "--trainer.max_steps=2"]) == 0
    assert run_main([*base, "--trainer.max_steps=4", "--ckpt_path", "last"]) == 0
    assert "resuming from runs/selective_copying/version_0/checkpoints/last.ckpt" in capsys.readouterr().err
    assert run_main([*base, "--trainer.max_steps=6", "--ckpt_path", "last"]) == 0
    assert "version_1/checkpoints/last.ckpt" in capsys.readouterr().err
    steps = [torch.load(tmp_path / f"runs/selective_copying/version_{v}/checkpoints/last.ckpt",
                        weights_only=True)["global_step"] for v in range(3)]
    assert steps == [2, 4, 6]


def test_existing_run_version_is_not_overwritten(run_main, tmp_path, capsys):
    version = tmp_path / "runs/selective_copying/version_0"
    version.mkdir(parents=True)
    (version / "metrics.csv").write_text("step,val/acc\n0,0.5\n")
    args = ["fit", "-c", str(SELECTIVE), *SMALL, "--trainer.max_steps=1", "--trainer.logger.init_args.version=0"]
    with pytest.raises(SystemExit) as exc:
        run_main(args)
    assert exc.value.code == 2 and "already exists" in capsys.readouterr().err
    assert (version / "metrics.csv").read_text() == "step,val/acc\n0,0.5\n"
    assert run_main([*args, "--overwrite_run=true"]) == 0
    assert (version / "metrics.csv").read_text() != "step,val/acc\n0,0.5\n"


def test_new_versions_are_reserved_past_existing_ones(run_main, tmp_path):
    for v in (0, 1, 4):
        (tmp_path / f"runs/selective_copying/version_{v}").mkdir(parents=True)
    assert run_main(["fit", "-c", str(SELECTIVE), *SMALL, "--trainer.max_steps=1"]) == 0
    assert (tmp_path / "runs/selective_copying/version_5/metrics.csv").is_file()


def test_checkpoint_dirpath_with_files_is_refused(run_main, tmp_path, capsys):
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(SystemExit) as exc:
        run_main(["fit", "-c", str(SELECTIVE), *SMALL, "--trainer.max_steps=1", "--last_checkpoint.dirpath=ck"])
    assert exc.value.code == 2 and "last_checkpoint.dirpath" in capsys.readouterr().err


# -------------------------------------------------------------------------------- SIGKILL and resume
STEPS_PER_EPOCH = 6  # n_train 384 / batch 64
RUN = ["--data.init_args.n_train=384", "--data.init_args.n_val=64", "--trainer.max_steps=22",
       "--trainer.val_check_interval=4", "--trainer.deterministic=true", "--trainer.log_every_n_steps=1",
       "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
       "--model.init_args.warmup_steps=5", "--model.init_args.drop_path_rate=0.1"]  # drop-path: random per step


def _cli(cwd: Path, extra: list[str]) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    script = Path(sys.executable).parent / "mamba-suite"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "mambasuite.core.cli"]
    return subprocess.Popen([*cmd, "fit", "-c", str(SELECTIVE), *RUN, *extra], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return out


def _versions(cwd: Path) -> list[Path]:
    return sorted((cwd / "runs/selective_copying").glob("version_*"), key=lambda p: int(p.name[8:]))


def _val_rows(version: Path) -> dict[int, tuple[str, str]]:
    rows = csv.DictReader((version / "metrics.csv").open())
    return {int(r["step"]): (r["val/acc"], r["val/loss"]) for r in rows if r.get("val/acc")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("uninterrupted")
    _finish(_cli(cwd, []))
    return _versions(cwd)[0]


@pytest.mark.slow
@pytest.mark.parametrize(("every", "kill_at"), [(4, 10), (STEPS_PER_EPOCH, 9)],
                         ids=["mid-epoch-after-validation", "epoch-boundary"])
def test_sigkill_then_resume_is_bit_exact(uninterrupted, tmp_path, every, kill_at):
    marker = tmp_path / "paused"
    pause = f'{{"class_path": "resume_helpers.PauseAtStep", "init_args": {{"step": {kill_at}, "marker": "{marker}"}}}}'
    proc = _cli(tmp_path, [f"--last_checkpoint.every_n_train_steps={every}", f"--trainer.callbacks+={pause}"])
    deadline = time.monotonic() + 600
    while not marker.exists():
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)  # no cleanup, no final checkpoint: like a preempted job
    proc.communicate()
    killed = _versions(tmp_path)[0]
    saved = torch.load(killed / "checkpoints/last.ckpt", weights_only=True)
    assert saved["global_step"] == (kill_at // every) * every < kill_at

    out = _finish(_cli(tmp_path, [f"--last_checkpoint.every_n_train_steps={every}", "--ckpt_path", "last"]))
    assert "resuming from" in out and "not resumable" not in out  # Lightning's mid-epoch warning is gone
    resumed = _versions(tmp_path)[-1]
    assert resumed != killed

    want = torch.load(uninterrupted / "checkpoints/last.ckpt", weights_only=True)
    got = torch.load(resumed / "checkpoints/last.ckpt", weights_only=True)
    assert got["global_step"] == want["global_step"] == 22
    assert want["state_dict"].keys() == got["state_dict"].keys()
    for key, value in want["state_dict"].items():
        assert torch.equal(value, got["state_dict"][key]), key
    for a, b in zip(want["optimizer_states"][0]["state"].values(), got["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)

    # Validation metrics: the killed run logged up to its checkpoint, the resumed run the rest; the same strings.
    full, before, after = _val_rows(uninterrupted), _val_rows(killed), _val_rows(resumed)
    last_step = saved["global_step"] - 1  # metrics.csv counts logged steps from 0
    combined = {**{s: v for s, v in before.items() if s <= last_step}, **after}
    assert combined == full and len(full) == 5
    assert all(s > last_step for s in after)
