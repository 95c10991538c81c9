"""The command-line front of every checkpoint evaluator (`mamba-suite evaluate`, `mamba-suite analyze`).

They all read the YAML used for `fit` (`-c`), build its model and data, load `--ckpt_path` and write a report to
`--out`. `checkpoint_parser` holds those shared arguments once; each evaluator adds its own options to it.
"""

from __future__ import annotations

# Sections of a fit config (including the config.yaml a run saves) that evaluation reads past.
FIT_ONLY_SECTIONS = ("trainer", "checkpoint", "last_checkpoint", "nonfinite_guard", "overwrite_run",
                     "seed_everything", "optimizer", "lr_scheduler")

__all__ = ["FIT_ONLY_SECTIONS", "checkpoint_file", "checkpoint_parser", "load_trained_weights", "report_folder"]


def checkpoint_parser(prog: str, description: str, *, out_help: str = "report folder", overwrite: bool = True):
    """A jsonargparse parser with `-c/--config`, `model`, `data`, `--ckpt_path`, `--out`, `--device`
    (auto | cpu | cuda | cuda:N) and, when `overwrite`, `--overwrite`; the fit-only sections are accepted and ignored.
    """
    from jsonargparse import ActionConfigFile, ArgumentParser
    from pytorch_lightning import LightningDataModule, LightningModule

    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="the YAML used for fit")
    parser.add_subclass_arguments(LightningModule, "model", required=True)
    parser.add_subclass_arguments(LightningDataModule, "data", required=True)
    parser.add_argument("--ckpt_path", type=str, required=True, help="Lightning .ckpt written by fit")
    parser.add_argument("--out", type=str | None, default=None, help=out_help)
    if overwrite:
        parser.add_argument("--overwrite", type=bool, default=False, help="replace the report already in --out")
    parser.add_argument("--device", type=str, default="auto", help="auto | cpu | cuda | cuda:N")
    for section in FIT_ONLY_SECTIONS:
        parser.add_argument(f"--{section}", type=dict | int | bool | None, default=None)
    return parser


def checkpoint_file(parser, cfg):
    """`--ckpt_path` as a Path; a parser error (exit 2) naming it when the file does not exist."""
    from pathlib import Path

    path = Path(cfg.ckpt_path)
    if not path.is_file():
        parser.error(f"--ckpt_path: checkpoint file not found: {path}")
    return path


def report_folder(parser, cfg, report_files, default_name: str = "eval"):
    """The report folder: `--out`, else runs/<first config's stem>/<default_name>. Unless `--overwrite`, a folder
    that already holds any of `report_files` is refused with a parser error naming them (nothing is replaced)."""
    from pathlib import Path

    from .files import refuse_existing_outputs

    config_paths = [str(p) for p in (cfg.get("config") or [])]
    stem = Path(config_paths[0]).stem if config_paths else "default"
    out = Path(cfg.out) if cfg.out else Path("runs") / stem / default_name
    if not cfg.get("overwrite", False):
        try:
            refuse_existing_outputs(out, report_files, "pass --overwrite=true to replace it, or choose another --out")
        except FileExistsError as err:
            parser.error(str(err))
    return out


def load_trained_weights(parser, module, ckpt_path) -> None:
    """Load a Lightning checkpoint's state_dict into `module` through the safe loader; a parser error naming the
    file when it is unsafe, corrupt, or does not match the module (missing, unexpected or mis-shaped keys)."""
    from .files import safe_torch_load

    try:
        state = safe_torch_load(ckpt_path)
    except ValueError as err:  # UnsafeCheckpointError (a pickle that would run code), truncated or corrupt file
        parser.error(f"--ckpt_path: {err}")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches raise even with strict=False
        parser.error(f"{ckpt_path} does not match the config's model: {' '.join(str(err).splitlines()[1:3])}")
    if result.missing_keys or result.unexpected_keys:
        parser.error(f"{ckpt_path} does not match the config's model: missing {result.missing_keys[:8]}, "
                     f"unexpected {result.unexpected_keys[:8]}")
