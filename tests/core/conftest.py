"""Fixtures of the core tests: trainings through the ``mamba-suite`` CLI, one of them shared by two test modules."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SELECTIVE_CONFIG = REPO / "configs" / "core" / "selective_copying.yaml"
# The selective-copying acceptance budget is 300 s of wall time (BUDGET_S in test_selective_copying.py); a fit gets
# 120 s more before it is killed, so a run that is merely over budget fails on the wall-time assertion instead.
FIT_TIMEOUT_S = 300.0 + 120


@dataclass(frozen=True)
class FitResult:
    """What one ``mamba-suite fit`` run left behind."""

    config: Path  # the config it trained
    cmd: list[str]  # the CLI command prefix (the console script, or ``python -m mambasuite.core.cli``)
    cwd: Path  # the working directory the CLI ran in
    run: Path  # the run's version folder, ``cwd/runs/<config stem>/version_*``
    acc: float  # last logged val/acc ...
    step: int  # ... and its step, from the run's metrics.csv
    wall: float  # wall seconds of the whole command, CLI start-up included


def _cli_command() -> list[str]:
    script = Path(sys.executable).parent / "mamba-suite"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mambasuite.core.cli"]


def _final_val_acc(run: Path) -> tuple[float, int]:
    """Last logged val/acc and its step from the run's metrics.csv."""
    metrics = run / "metrics.csv"
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("val/acc")]
    assert rows, f"no val/acc in {metrics}"
    return float(rows[-1]["val/acc"]), int(rows[-1]["step"])


def _fit(config: Path, cwd: Path, *overrides: str, timeout: float = FIT_TIMEOUT_S) -> FitResult:
    """Run ``mamba-suite fit -c config *overrides`` in cwd and check that it succeeded."""
    cmd = _cli_command()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()
    proc = subprocess.run(
        [*cmd, "fit", "-c", str(config), "--trainer.enable_progress_bar=false", *overrides],
        capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env,
    )
    wall = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = (cwd / "runs" / config.stem).glob("version_*")
    acc, step = _final_val_acc(run)
    line = next(line for line in proc.stdout.splitlines() if line.startswith(f"{config.stem}: "))
    print(f"\n{line} | wall {wall:.0f} s")
    return FitResult(config=config, cmd=cmd, cwd=cwd, run=run, acc=acc, step=step, wall=wall)


@pytest.fixture
def cli_fit():
    """``_fit``: trains a config through the CLI, ``cli_fit(config, cwd, *overrides, timeout=...) -> FitResult``."""
    return _fit


@pytest.fixture(scope="session")
def selective_copying_run(tmp_path_factory) -> FitResult:
    """One training of configs/core/selective_copying.yaml, shared by the budget test (test_selective_copying.py)
    and the analytics test (test_analytics.py) so that the ~4-minute fit runs once per session, and only when one
    of them is selected.

    The analytics and resource callbacks are on, and the config's own trainer.max_time is kept: the budget test
    thus checks the stricter condition that the task is solved within budget with the callbacks' overhead.
    Tests may write into ``run`` (the analytics test adds ``analyze/`` and ``report.html``), not change it."""
    return _fit(
        SELECTIVE_CONFIG, tmp_path_factory.mktemp("selective_copying"),
        "--trainer.callbacks+=mambasuite.core.analytics.SelectiveAnalytics", "--trainer.callbacks.every_n_steps=50",
        "--trainer.callbacks+=mambasuite.core.resources.ResourceMonitor", "--trainer.callbacks.every_n_steps=50",
    )
