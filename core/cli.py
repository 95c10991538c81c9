"""The ``mamba-suite`` command line.

``mamba-suite fit|validate|test|predict -c CONFIG [--key=value ...]`` runs a LightningCLI in which the YAML picks the
LightningModule (``model: {class_path, init_args}``) and the LightningDataModule (``data: ...``). Other commands
(``bench``, later ``convert``/``evaluate``) are plain functions dispatched on ``argv[0]`` before Lightning is imported:
add a row to :data:`EXTRA_COMMANDS`. Nothing heavy is imported at module level, so ``mamba-suite --help`` is fast.

Defaults a run gets (each overridable from the YAML or the command line):

* run directory ``runs/<config stem>/`` with a :class:`~pytorch_lightning.loggers.CSVLogger`
  (``runs/<stem>/version_N/{metrics.csv,config.yaml,hparams.yaml,checkpoints/}``); ``--trainer.default_root_dir``
  moves all of it;
* a ``checkpoint:`` group (:class:`~pytorch_lightning.callbacks.ModelCheckpoint`, ``save_last=True``, slash-free file
  names), dropped when ``trainer.enable_checkpointing`` is false;
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
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

PROG = "mamba-suite"
RUNS_DIR = "runs"
DEFAULT_SEED = 0

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

    from mambasuite.core.callbacks import FitSummary, PredictionWriter

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

        def add_arguments_to_parser(self, parser) -> None:
            # A dedicated group (not a trainer_defaults callback) so its fields are configurable and it can be
            # switched off with trainer.enable_checkpointing=false.
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
            parser.set_defaults({
                "checkpoint.save_last": True,
                "checkpoint.auto_insert_metric_name": False,
                # Metric names such as "val/acc" would create sub-folders if inserted automatically.
                "checkpoint.filename": "epoch{epoch:03d}-step{step:06d}",
            })

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

        def instantiate_trainer(self, **kwargs: Any):
            config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
            user_callbacks = config.get("callbacks") or []
            user_callbacks = user_callbacks if isinstance(user_callbacks, list) else [user_callbacks]
            extra = []
            for key in self._parser(self.subcommand).callback_keys:
                # Checkpoints only matter while fitting (elsewhere the callback just warns that its dirpath moved);
                # fast_dev_run is documented to disable them, but PL 2.6 still writes last.ckpt.
                if key == "checkpoint" and (
                    self.subcommand != "fit" or config.get("enable_checkpointing") is False or config.get("fast_dev_run")
                ):
                    continue
                extra.append(self._get(self.config_init, key))
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
    _run_lightning(argv, pass_args=args is not None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
