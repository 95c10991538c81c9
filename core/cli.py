"""The ``mamba-suite`` command line.

``mamba-suite fit|validate|test|predict -c CONFIG [--key=value ...]`` runs a LightningCLI in which the YAML picks the
LightningModule (``model: {class_path, init_args}``) and the LightningDataModule (``data: ...``). Other commands
(``bench``, later ``convert``/``evaluate``) are plain functions dispatched on ``argv[0]`` before Lightning is imported:
add a row to :data:`EXTRA_COMMANDS`. Nothing heavy is imported at module level, so ``mamba-suite --help`` is fast.

Defaults a run gets (each overridable from the YAML or the command line):

* run directory ``runs/<config stem>/`` with a :class:`~pytorch_lightning.loggers.CSVLogger`
  (``runs/<stem>/version_N/{metrics.csv,config.yaml,hparams.yaml,checkpoints/}``); ``--trainer.default_root_dir``
  moves all of it;
* a ``checkpoint:`` group (:class:`~pytorch_lightning.callbacks.ModelCheckpoint`, slash-free file names) for the
  best checkpoints, and a ``last_checkpoint:`` group (:class:`~mambasuite.core.checkpointing.LastCheckpoint`) that
  writes ``last.ckpt`` every ``every_n_train_steps`` (default 100) optimizer steps and at the end of fit; both are
  dropped when ``trainer.enable_checkpointing`` is false;
* checkpoints written atomically and read weights-only
  (:class:`~mambasuite.core.checkpointing.AtomicCheckpointIO`, unless ``trainer.plugins`` names another CheckpointIO);
* crash-safe resume: ``fit --ckpt_path last`` picks the newest ``last.ckpt`` of this run name (any ``version_N``);
  the training data order resumes mid-epoch (:mod:`mambasuite.core.resumable`) and
  :class:`~mambasuite.core.resumable.StepSeeder` reseeds every training batch, so the resumed run matches an
  uninterrupted one; the resumed run logs into a new ``version_N``;
* a ``nonfinite_guard:`` group (:class:`~mambasuite.core.guards.NonFiniteGuard`) while fitting;
* no overwriting: a fresh ``version_N`` is reserved atomically (concurrent runs never share one); an explicit
  ``trainer.logger.init_args.version`` or checkpoint ``dirpath`` that already holds files is refused unless
  ``--overwrite_run=true``;
* :class:`~pytorch_lightning.callbacks.RichProgressBar` unless another progress bar is configured or
  ``trainer.enable_progress_bar`` is false;
* ``seed_everything: 0``; a one-line result after ``fit`` (:class:`~mambasuite.core.callbacks.FitSummary`); a
  ``predictions.pt`` after ``predict`` (:class:`~mambasuite.core.callbacks.PredictionWriter`).

``main(args)`` can be called in-process (tests do), but ``--trainer.strategy=ddp`` re-launches ``sys.argv`` for the
other ranks, so run DDP through the console script.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

PROG = "mamba-suite"
RUNS_DIR = "runs"
DEFAULT_SEED = 0
LAST_EVERY_N_STEPS = 100  # default interval of last.ckpt in optimizer steps

# Lightning subcommands and the one-line help shown by `mamba-suite --help`.
LIGHTNING_COMMANDS: dict[str, str] = {
    "fit": "Train a model, validating along the way.",
    "validate": "Run one evaluation epoch on the validation split.",
    "test": "Run one evaluation epoch on the test split.",
    "predict": "Run inference and write predictions.pt into the run directory.",
}

# Plain subcommands: name -> ("module" or "module:function", one-line help); the function (default `main`) takes
# argv (list[str]) and returns the exit status or None.
# Modules are imported only when their command runs.
EXTRA_COMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("mambasuite.core.bench", "Benchmark kernels and models against their peers (JSON + markdown)."),
    "convert": ("mambasuite.core.dispatch:convert_main",
                "Convert official checkpoints (Vim, VMamba, Caduceus) to safetensors."),
    "evaluate": ("mambasuite.core.dispatch:evaluate_main",
                 "Evaluate a checkpoint on a config's data; writes the domain's report (JSON, markdown, plots)."),
    "analyze": ("mambasuite.core.analytics:analyze_main",
                "Selective-mechanism heatmaps and report (delta, memory horizon) for a trained checkpoint."),
    "report": ("mambasuite.core.report:main", "Render a run directory (metrics, analytics, benchmarks) as markdown + HTML."),
}

_CONFIG_FLAGS = ("-c", "--config")


def _usage() -> str:
    width = max(map(len, [*LIGHTNING_COMMANDS, *EXTRA_COMMANDS])) + 2
    lines = [
        f"usage: {PROG} <command> [options]",
        "",
        "Mamba backbones with Triton kernels and Lightning pipelines.",
        "",
        f"training commands ({PROG} <command> -c CONFIG.yaml [--section.key=value ...]):",
        *(f"  {name:<{width}}{text}" for name, text in LIGHTNING_COMMANDS.items()),
        "",
        "other commands:",
        *(f"  {name:<{width}}{text}" for name, (_, text) in EXTRA_COMMANDS.items()),
        "",
        f"'{PROG} <command> --help' lists a command's options; '--print_config' shows the resolved config.",
        f"example: {PROG} fit -c configs/core/selective_copying.yaml",
        f"Runs are written to {RUNS_DIR}/<config name>/version_N/ (metrics.csv, config.yaml, checkpoints/).",
    ]
    return "\n".join(lines)


def _fail(message: str) -> None:
    """Print a CLI error the way argparse does and exit with status 2."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _config_paths(argv: Sequence[str]) -> list[str]:
    """The values given to ``-c``/``--config`` in ``argv`` (both ``--config X`` and ``--config=X``)."""
    paths = []
    for i, arg in enumerate(argv):
        if arg in _CONFIG_FLAGS and i + 1 < len(argv):
            paths.append(argv[i + 1])
        elif arg.startswith("--config="):
            paths.append(arg.split("=", 1)[1])
    return paths


def _run_extra(command: str, argv: list[str]) -> int:
    target, _ = EXTRA_COMMANDS[command]
    module_name, _, func = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise  # the command exists but one of its own dependencies is missing: show the real error
        _fail(f"'{command}' is not available in this installation ({module_name} is missing)")
    return int(getattr(module, func or "main")(argv) or 0)


class _DropLitLoggerTip(logging.Filter):
    """Drops Lightning's per-Trainer "💡 Tip: ... litlogger" INFO line; other INFO lines stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def _quiet_lightning() -> None:
    log = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not any(isinstance(f, _DropLitLoggerTip) for f in log.filters):
        log.addFilter(_DropLitLoggerTip())


@lru_cache(maxsize=None)
def _cli_class() -> type:
    """Build the LightningCLI subclass on first use (keeps Lightning out of ``--help``)."""
    from jsonargparse import Namespace
    from pytorch_lightning.callbacks import BasePredictionWriter, ModelCheckpoint, ProgressBar, RichProgressBar
    from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
    from lightning_fabric.plugins import CheckpointIO

    from mambasuite.core.callbacks import FitSummary, PredictionWriter
    from mambasuite.core.checkpointing import AtomicCheckpointIO, LastCheckpoint
    from mambasuite.core.guards import NonFiniteGuard
    from mambasuite.core.resumable import StepSeeder

    csv_logger = "pytorch_lightning.loggers.CSVLogger"

    class MambaSuiteParser(LightningArgumentParser):
        """jsonargparse prints the full usage (~70 lines) before every error; one line keeps the error visible."""

        def print_usage(self, file=None) -> None:
            (file or sys.stdout).write(f"usage: {self.prog} -c CONFIG.yaml [--section.key=value ...]\n")

    class MambaSuiteCLI(LightningCLI):
        """LightningCLI with the suite's run-directory, checkpoint, progress-bar and summary defaults."""

        def __init__(self, run_name: str, default_root_dir: str, **kwargs: Any) -> None:
            self.run_name = run_name
            self.default_root_dir = default_root_dir
            kwargs.setdefault("parser_class", MambaSuiteParser)
            super().__init__(**kwargs)

        def _parse_ckpt_path(self) -> None:
            # LightningCLI reads the checkpoint's hyperparameters weights-only; turn a refusal into our clear error.
            import pickle

            try:
                super()._parse_ckpt_path()
            except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
                from mambasuite.core.files import safe_torch_load

                safe_torch_load(self.config[self.config.subcommand].get("ckpt_path"))  # raises, naming the file
                raise err

        def add_arguments_to_parser(self, parser) -> None:
            # A dedicated group (not a trainer_defaults callback) so its fields are configurable and it can be
            # switched off with trainer.enable_checkpointing=false.
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
            parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
            parser.add_lightning_class_args(NonFiniteGuard, "nonfinite_guard")
            parser.set_defaults({
                # last.ckpt comes from last_checkpoint (two writers would make PL version it as last-v1.ckpt).
                "checkpoint.save_last": False,
                "checkpoint.auto_insert_metric_name": False,
                # Metric names such as "val/acc" would create sub-folders if inserted automatically.
                "checkpoint.filename": "epoch{epoch:03d}-step{step:06d}",
                "last_checkpoint.every_n_train_steps": LAST_EVERY_N_STEPS,
            })
            parser.add_argument("--overwrite_run", type=bool, default=False,
                                help="Allow writing into an existing, non-empty run version or checkpoint folder.")

        def before_instantiate_classes(self) -> None:
            # Let --trainer.default_root_dir move the default CSV logger too.
            cfg = self.config[self.subcommand] if self.subcommand else self.config
            trainer = cfg.trainer
            logger = trainer.get("logger")
            if (
                isinstance(logger, Namespace)
                and logger.get("class_path") == csv_logger
                and str(logger.init_args.save_dir) == self.default_root_dir
                and trainer.default_root_dir
                and str(trainer.default_root_dir) != self.default_root_dir
            ):
                logger.init_args.save_dir = str(trainer.default_root_dir)
            if cfg.get("ckpt_path") == "last":
                cfg.ckpt_path = resolve_last_checkpoint(cfg, required=self.subcommand != "fit")
            check_run_dirs(cfg, resuming=bool(cfg.get("ckpt_path")))
            if isinstance(logger, Namespace) and logger.get("class_path") == csv_logger and not trainer.fast_dev_run:
                reserve_version(logger.init_args)

        def instantiate_trainer(self, **kwargs: Any):
            config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
            user_callbacks = config.get("callbacks") or []
            user_callbacks = user_callbacks if isinstance(user_callbacks, list) else [user_callbacks]
            # Before the guard, so the guard's replay sees the batch's seeded random state.
            extra = [StepSeeder()] if self.subcommand == "fit" else []
            for key in self._parser(self.subcommand).callback_keys:
                # Checkpoints only matter while fitting (elsewhere the callback just warns that its dirpath moved);
                # fast_dev_run is documented to disable them, but PL 2.6 still writes last.ckpt.
                if key in ("checkpoint", "last_checkpoint") and (
                    self.subcommand != "fit" or config.get("enable_checkpointing") is False or config.get("fast_dev_run")
                ):
                    continue
                if key == "nonfinite_guard" and self.subcommand != "fit":
                    continue
                extra.append(self._get(self.config_init, key))
            plugins = config.get("plugins")
            plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
            if not any(isinstance(p, CheckpointIO) for p in plugins):
                plugins.append(AtomicCheckpointIO())
            config["plugins"] = plugins
            if config.get("enable_progress_bar") is not False and not any(
                isinstance(cb, ProgressBar) for cb in user_callbacks
            ):
                extra.append(RichProgressBar())
            if self.subcommand == "fit":
                extra.append(FitSummary(name=self.run_name))
            if self.subcommand == "predict" and not any(isinstance(cb, BasePredictionWriter) for cb in user_callbacks):
                extra.append(PredictionWriter())
            return self._instantiate_trainer(config, extra)

    return MambaSuiteCLI


def _logger_versions_root(cfg) -> Path | None:
    """``<save_dir>/<name>`` of the configured logger (where its ``version_N`` folders live), if it has one."""
    from jsonargparse import Namespace

    logger = cfg.trainer.get("logger")
    if not isinstance(logger, Namespace) or not isinstance(logger.get("init_args"), Namespace):
        return None
    args = logger.init_args
    save_dir = args.get("save_dir") or args.get("root_dir")
    if not save_dir:
        return None
    name = args.get("name")
    return Path(str(save_dir)) / ("lightning_logs" if name is None else str(name))


def resolve_last_checkpoint(cfg, required: bool = False) -> str | None:
    """The newest ``last.ckpt`` of this run (checkpoint dirpaths, every logger ``version_*``, default_root_dir).

    When there is none yet: with ``required`` (validate/test/predict) a CLI error; otherwise ``None``, a fresh
    start after a printed note, so ``fit --ckpt_path last`` can be set on the first run of a re-queued job.
    """
    candidates = []
    for group in ("last_checkpoint", "checkpoint"):
        dirpath = cfg.get(group) and cfg[group].get("dirpath")
        if dirpath:
            candidates.append(Path(str(dirpath)) / "last.ckpt")
    root = _logger_versions_root(cfg)
    if root is not None and root.is_dir():
        candidates += root.glob("*/checkpoints/last.ckpt")
    candidates.append(Path(str(cfg.trainer.default_root_dir)) / "checkpoints" / "last.ckpt")
    found = [p for p in candidates if p.is_file()]
    if not found and required:
        _fail(f"--ckpt_path last: no last.ckpt under {root or cfg.trainer.default_root_dir}")
    if not found:
        print(f"{PROG}: --ckpt_path last: no last.ckpt under {root or cfg.trainer.default_root_dir} yet; "
              f"starting a new run", file=sys.stderr, flush=True)
        return None
    newest = max(found, key=lambda p: p.stat().st_mtime)
    print(f"{PROG}: resuming from {newest}", file=sys.stderr, flush=True)
    return str(newest)


def _non_empty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def check_run_dirs(cfg, resuming: bool) -> None:
    """Refuse (exit 2) to write into an explicit logger version or checkpoint folder that already holds files.

    Lightning would delete that version's ``metrics.csv`` and overwrite same-named checkpoints. A resumed run
    may reuse its checkpoint folder; ``--overwrite_run=true`` allows everything.
    """
    if cfg.get("overwrite_run"):
        return
    root = _logger_versions_root(cfg)
    version = cfg.trainer.logger.init_args.get("version") if root is not None else None
    if version is not None:
        folder = root / (version if isinstance(version, str) else f"version_{version}")
        if _non_empty_dir(folder):
            _fail(f"run folder {folder} already exists and is not empty; drop trainer.logger.init_args.version "
                  f"to get a new version_N (a resumed run writes a new one too), or pass --overwrite_run=true")
    if resuming:
        return
    for group in ("last_checkpoint", "checkpoint"):
        dirpath = cfg.get(group) and cfg[group].get("dirpath")
        if dirpath and _non_empty_dir(Path(str(dirpath))):
            _fail(f"{group}.dirpath {dirpath} already holds files; resume with --ckpt_path, choose another "
                  f"folder, or pass --overwrite_run=true")


def _is_rank_zero() -> bool:
    """Whether this process is the first of its job (launchers set these before Lightning starts)."""
    return all(int(os.environ.get(var, "0") or 0) == 0 for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK"))


def reserve_version(init_args) -> None:
    """Give a CSV logger without a version the next free ``version_N``, created with ``mkdir`` (atomic).

    Lightning picks ``max(existing) + 1`` without creating it, so two runs started together can pick the same
    folder and the second deletes the first one's metrics. Only the first rank reserves; the others follow it
    through Lightning's broadcast of the log dir.
    """
    if init_args.get("version") is not None or not _is_rank_zero():
        return
    root = Path(str(init_args.save_dir)) / str(init_args.get("name") or "")
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name[8:]) for p in root.glob("version_*") if p.name[8:].isdigit()]
    version = max(taken, default=-1) + 1
    while True:
        try:
            (root / f"version_{version}").mkdir()
        except FileExistsError:
            version += 1
            continue
        init_args.version = version
        return


def _run_lightning(argv: list[str], pass_args: bool) -> None:
    configs = _config_paths(argv)
    for path in configs:
        if not Path(path).is_file():
            _fail(f"config file not found: {path}")
    run_name = Path(configs[0]).stem if configs else "default"
    default_root_dir = str(Path(RUNS_DIR) / run_name)

    _quiet_lightning()
    from pytorch_lightning import LightningDataModule, LightningModule

    _cli_class()(
        run_name=run_name,
        default_root_dir=default_root_dir,
        model_class=LightningModule,
        datamodule_class=LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=DEFAULT_SEED,
        parser_kwargs={"prog": PROG, "description": "Mamba suite: Lightning training driven by a YAML config."},
        trainer_defaults={
            "default_root_dir": default_root_dir,
            "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                       "init_args": {"save_dir": default_root_dir, "name": ""}},
        },
        args=argv if pass_args else None,
    )


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of the ``mamba-suite`` console script; returns the exit status.

    Args:
        args: command line without the program name; ``None`` reads ``sys.argv[1:]``.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from mambasuite import __version__

        print(f"{PROG} {__version__}")
        return 0
    command = argv[0]
    if command in EXTRA_COMMANDS:
        return _run_extra(command, argv[1:])
    if command not in LIGHTNING_COMMANDS:
        choices = ", ".join([*LIGHTNING_COMMANDS, *EXTRA_COMMANDS])
        _fail(f"unknown command {command!r} (choose from {choices}); see '{PROG} --help'")
    # Passing args explicitly while sys.argv holds other words makes Lightning warn; only pass them when given.
    try:
        _run_lightning(argv, pass_args=args is not None)
    finally:
        _release_process_group()
    return 0


def _release_process_group() -> None:
    """Destroy the torch.distributed process group a DDP run leaves initialised (Lightning keeps it for reuse).

    Left to interpreter exit, gloo's threads can be torn down in the wrong order and abort a run that had
    finished ("terminate called without an active exception", exit status != 0: seen once in the CPU DDP test
    of the bio task, 2026-11-30); destroying the group while the interpreter is whole avoids that path.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
