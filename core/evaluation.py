"""The command-line front of every checkpoint evaluator (`mamba-suite evaluate`, `mamba-suite analyze`).

They all read the YAML used for `fit` (`-c`), build its model and data, load `--ckpt_path` and write a report to
`--out`. `checkpoint_parser` holds those shared arguments once; each evaluator adds its own options to it.
"""

from __future__ import annotations

# Sections of a fit config (including the config.yaml a run saves) that evaluation reads past.
FIT_ONLY_SECTIONS = ("trainer", "checkpoint", "last_checkpoint", "nonfinite_guard", "overwrite_run",
                     "seed_everything", "optimizer", "lr_scheduler")

__all__ = ["FIT_ONLY_SECTIONS", "checkpoint_parser"]


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
