"""Helpers of the multi-process tests: run `mamba-suite` or the FSDP worker in a subprocess, and a callback the
subprocess loads. Run as a script, this file is `mamba-suite` as a torchrun worker (see `_cli_as_launched_worker`).

DDP re-launches ``sys.argv`` for rank 1, so a DDP fit cannot run inside pytest's own process (the child would be a
second pytest): the CLI runs in a subprocess with a timeout. tests/core is put on the child's PYTHONPATH, so its
YAML/command line can name ``ddp_helpers.RankWeights`` as a callback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from pytorch_lightning.callbacks import Callback

HELPERS_DIR = Path(__file__).resolve().parent


def run_command(cmd: list[str], cwd: Path, timeout: float = 300, **env: str) -> str:
    """Run ``cmd`` in ``cwd`` in its own process group, with one OpenMP thread per process, tests/core on
    PYTHONPATH and ``env`` added to the environment; return stdout + stderr, failing the test on a non-zero exit.

    On timeout the whole group is killed, so a hung rank that a launcher started does not outlive the test.
    """
    path = os.pathsep.join(p for p in (str(HELPERS_DIR), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": path, **env}
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        raise AssertionError(f"{' '.join(cmd[:3])} ... timed out after {timeout} s:\n{output[-5000:]}") from None
    assert proc.returncode == 0, output[-5000:]
    return output


def _cpu_state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


class RankWeights(Callback):
    """At the end of fit, every rank writes ``<out_dir>/rank<global_rank>.pt``.

    The file holds ``{"world_size": int, "global_step": int, "initial": state_dict, "final": state_dict}`` (CPU
    tensors) of the LightningModule as this rank sees it at the start of training and at the end of fit, so a test
    can check that all ranks ended with the same weights (DDP all-reduced the gradients), compare them with a
    single-process run, and check that training moved them.
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.initial: dict[str, torch.Tensor] | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial = _cpu_state(pl_module)

    def on_fit_end(self, trainer, pl_module) -> None:
        out = Path(self.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        torch.save({"world_size": trainer.world_size, "global_step": trainer.global_step, "initial": self.initial,
                    "final": _cpu_state(pl_module)}, out / f"rank{trainer.global_rank}.pt")


def rank_weights_callback(out_dir: Path) -> str:
    """The ``--trainer.callbacks+=...`` value that adds :class:`RankWeights` writing into ``out_dir``."""
    return f'--trainer.callbacks+={{"class_path": "ddp_helpers.RankWeights", "init_args": {{"out_dir": "{out_dir}"}}}}'


def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> str:
    """Run the ``mamba-suite`` console script with ``args`` in ``cwd`` (see :func:`run_command`); return its output."""
    script = Path(sys.executable).parent / "mamba-suite"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "mambasuite.core.cli"]
    return run_command([*cmd, *args], cwd, timeout)


def fit_ddp_and_single(config: Path, args: list[str], per_rank_batch: int,
                       tmp_path: Path) -> tuple[str, list[dict], dict]:
    """``mamba-suite fit`` of ``config`` twice: DDP on 2 CPU ranks (gloo) with ``per_rank_batch`` samples per rank,
    then one process with the same global batch (2 x ``per_rank_batch``).

    Returns the DDP run's output, its two :class:`RankWeights` records and the single process's one. The DDP run
    works in ``tmp_path / "ddp"`` (its run folder is ``runs/<config stem>/version_0`` there).
    """
    ddp_out = run_cli(["fit", "-c", str(config), *args, "--trainer.accelerator=cpu", "--trainer.strategy=ddp",
                       "--trainer.devices=2", f"--data.init_args.batch_size={per_rank_batch}",
                       rank_weights_callback(tmp_path / "ddp_weights")], tmp_path / "ddp")
    run_cli(["fit", "-c", str(config), *args, "--trainer.accelerator=cpu", "--trainer.devices=1",
             f"--data.init_args.batch_size={2 * per_rank_batch}", rank_weights_callback(tmp_path / "single_weights")],
            tmp_path / "single")
    (single,) = load_rank_weights(tmp_path / "single_weights", 1)
    return ddp_out, load_rank_weights(tmp_path / "ddp_weights", 2), single


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference over the floating-point entries of two state dicts with the same keys."""
    assert a.keys() == b.keys(), sorted(a.keys() ^ b.keys())
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


def load_rank_weights(out_dir: Path, world_size: int) -> list[dict]:
    """The :class:`RankWeights` files of ranks ``0 .. world_size - 1`` (each must exist)."""
    files = [out_dir / f"rank{r}.pt" for r in range(world_size)]
    missing = [str(f) for f in files if not f.is_file()]
    assert not missing, f"ranks wrote no weights: {missing}"
    return [torch.load(f, weights_only=True) for f in files]


def run_fsdp_worker(config: Path, model_overrides: dict, batch: tuple, tmp_path: Path, timeout: float = 300) -> dict:
    """Run :mod:`fsdp_worker` on 2 CPU ranks (torchrun, gloo) for ``config``'s model; return rank 0's JSON result.

    ``batch`` is the global ``(inputs, labels)``; each rank trains on its half. Triton kernels run in Triton's CPU
    interpreter (TRITON_INTERPRET=1) when the overrides ask for ``backend="triton"``.
    """
    torch.save(batch, tmp_path / "batch.pt")
    spec = {"config": str(config), "model": model_overrides, "batch": str(tmp_path / "batch.pt"),
            "out": str(tmp_path / "fsdp.json")}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HELPERS_DIR / "fsdp_worker.py"), str(tmp_path / "spec.json")]
    run_command(cmd, tmp_path, timeout, TRITON_INTERPRET="1")
    return json.loads((tmp_path / "fsdp.json").read_text())


def _cli_as_launched_worker() -> None:
    """``mamba-suite`` (``sys.argv[1:]``) as a worker of an outside launcher (torchrun), then a direct exit.

    gloo (CPU) sometimes aborts a rank in the interpreter's teardown after everything has finished ("terminate
    called without an active exception", SIGABRT; about 1 run in 8 here, see pytorch/pytorch#179291), which torchrun
    reports as a failed job. Leaving with ``os._exit`` after destroying the process group avoids it.
    """
    import torch.distributed as dist

    from mambasuite.core.cli import main

    status = main()
    if dist.is_initialized():
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    _cli_as_launched_worker()
