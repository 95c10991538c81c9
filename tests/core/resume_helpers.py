"""Callbacks that the resume tests inject into `mamba-suite fit` subprocesses (tests/core is put on PYTHONPATH)."""

from __future__ import annotations

import time
from pathlib import Path

from pytorch_lightning.callbacks import Callback


class PauseAtStep(Callback):
    """After optimizer step `step`, write `marker` and hang, so the test can SIGKILL the process right there."""

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, marker

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            Path(self.marker).write_text(f"{trainer.global_step} {trainer.current_epoch} {batch_idx}\n")
            while True:
                time.sleep(1)
