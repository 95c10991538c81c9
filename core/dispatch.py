"""`mamba-suite convert` and `mamba-suite evaluate`: route to the domain that owns the work.

Domains never import each other, so the routing lives here as *module names* (strings), imported only when
the command runs. A new domain adds a row to :data:`CONVERTERS` or :data:`EVALUATORS`.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

# checkpoint family (first word after `convert`) -> module exposing main(argv) for `convert FAMILY ...`
CONVERTERS: dict[str, str] = {
    "vim": "mambasuite.vision.convert",
    "vmamba": "mambasuite.vision.convert",
    "caduceus": "mambasuite.bio.convert",
}

# prefix of the config's `model.class_path` -> module exposing main(argv); the longest matching prefix wins.
EVALUATORS: dict[str, str] = {
    "mambasuite.vision.medseg": "mambasuite.vision.medseg.evaluate",
    "mambasuite.vision": "mambasuite.vision.evaluate",
    "mambasuite.audio": "mambasuite.audio.evaluate",
    "mambasuite.bio": "mambasuite.bio.evaluate",
}


def _error(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def convert_main(argv: list[str]) -> int:
    """`mamba-suite convert FAMILY SRC DST ...`: hands the whole argv to the family's converter."""
    prog = "mamba-suite convert"
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {prog} {{{','.join(CONVERTERS)}}} SRC DST [options]\n"
              f"'{prog} FAMILY --help' lists a family's options.")
        return 0 if argv else 2
    if argv[0] not in CONVERTERS:
        return _error(prog, f"unknown checkpoint family {argv[0]!r}; choose from {', '.join(CONVERTERS)}")
    return int(importlib.import_module(CONVERTERS[argv[0]]).main(argv) or 0)


def _model_class_path(config_paths: list[str]) -> str | None:
    """`model.class_path` of the last config that sets one (later configs override earlier ones)."""
    import yaml

    found = None
    for path in config_paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        cfg = yaml.safe_load(Path(path).read_text()) or {}
        model = cfg.get("model") if isinstance(cfg, dict) else None
        if isinstance(model, dict) and model.get("class_path"):
            found = str(model["class_path"])
    return found


def evaluate_main(argv: list[str]) -> int:
    """`mamba-suite evaluate -c CONFIG --ckpt_path CKPT ...`: picks the evaluator from the config's model."""
    from mambasuite.core.cli import _config_paths

    prog = "mamba-suite evaluate"
    configs = _config_paths(argv)
    if not configs:
        if argv and argv[0] in ("-h", "--help"):
            print(f"usage: {prog} -c CONFIG.yaml --ckpt_path CKPT [options]\n"
                  f"The evaluator is chosen from the config's model.class_path: {', '.join(EVALUATORS)}.")
            return 0
        return _error(prog, "-c/--config is required (the YAML used for fit)")
    try:
        class_path = _model_class_path(configs)
    except FileNotFoundError as err:
        return _error(prog, str(err))
    if class_path is None:
        return _error(prog, f"no model.class_path in {', '.join(configs)}")
    matches = [prefix for prefix in EVALUATORS if class_path == prefix or class_path.startswith(prefix + ".")]
    if not matches:
        return _error(prog, f"no evaluator for model {class_path!r}; known domains: {', '.join(EVALUATORS)}")
    module = importlib.import_module(EVALUATORS[max(matches, key=len)])
    return int(module.main(argv) or 0)
