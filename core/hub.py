"""One save/load convention for every mamba-suite model: `model.safetensors` + `config.json`.

A class that mixes in `PretrainedMixin` records its constructor arguments when it is built, so
`save_pretrained(dir)` can write them next to the weights and `from_pretrained(dir)` can rebuild the
same model. `config.json` looks like::

    {"architecture": "mambasuite.core.blocks.MambaBackbone",
     "mambasuite_version": "0.1.0",
     "init_args": {"d_model": 256, "n_layer": 4, ...}}

`from_pretrained` is offline-first: a local directory, else a Hugging Face repo id looked up in the
local cache only. It never downloads unless called with `local_files_only=False`.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from .files import atomic_write

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "PretrainedMixin"]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _record_init_args(cls: type, args: tuple, kwargs: dict) -> dict[str, Any] | None:
    """Bind a constructor call to cls.__init__'s signature; None if it does not bind (e.g. unpickling)."""
    try:
        bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
    except TypeError:
        return None  # __init__ will raise the real error, or __dict__ is about to be restored
    bound.apply_defaults()
    config: dict[str, Any] = {}
    for i, (name, value) in enumerate(bound.arguments.items()):
        if i == 0:
            continue  # self
        kind = bound.signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            config.update(value)  # **kwargs are recorded flat, as the keywords they were passed as
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            config[f"*{name}"] = list(value)  # refused by save_pretrained with a clear message
        else:
            config[name] = value
    return config


class PretrainedMixin:
    """`save_pretrained` / `from_pretrained` for an nn.Module subclass (list it before nn.Module).

    The constructor arguments (defaults filled in, **kwargs flattened) are captured in `__new__`,
    before `__init__` runs, so the subclass needs no decorator and its `__init__` signature stays
    untouched for introspection (LightningCLI / jsonargparse). They are available as `self.config`.
    """

    _mambasuite_config: dict[str, Any] | None = None

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        config = _record_init_args(cls, args, kwargs)
        if config is not None:
            object.__setattr__(obj, "_mambasuite_config", config)
        return obj

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments this model was built with (a copy)."""
        return dict(self._mambasuite_config or {})

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write `model.safetensors` and `config.json` into `save_directory` (created if needed).

        Tied parameters are stored once (safetensors forbids shared storage) and re-tied on load by
        the constructor. Raises TypeError naming the key if a constructor argument is not
        JSON-serialisable. Returns the directory.
        """
        if self._mambasuite_config is None:
            raise RuntimeError(f"{type(self).__name__} has no recorded constructor arguments to save")
        init_args = {}
        for key, value in self._mambasuite_config.items():
            if key.startswith("*"):
                raise TypeError(f"{type(self).__name__}: positional varargs {key!r} cannot be saved in "
                                f"config.json; take keyword arguments instead")
            try:
                json.dumps(value)
            except (TypeError, ValueError) as err:
                raise TypeError(f"{type(self).__name__}: constructor argument {key!r} = {value!r} "
                                f"(type {type(value).__name__}) is not JSON-serialisable, so it cannot be "
                                f"saved in config.json") from err
            init_args[key] = value
        from .. import __version__

        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"architecture": _class_path(type(self)), "mambasuite_version": __version__,
                  "init_args": init_args}
        # Each file is replaced atomically (a kill leaves the old or the new file, never a torn one); weights
        # first, so a config.json never describes weights that were not written.
        atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_model(self, str(tmp), metadata={"format": "pt"}))
        atomic_write(directory / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, dir_or_hub_id: str | os.PathLike, *, strict: bool = True,
                        map_location: str | torch.device = "cpu", local_files_only: bool = True,
                        revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                        **overrides):
        """Build the saved model and load its weights; returns it in eval mode on `map_location`.

        Args:
            dir_or_hub_id: a directory written by `save_pretrained`, or a Hugging Face repo id
                ("org/name") already in the local HF cache.
            strict: require the file's keys to match the model's exactly (ValueError listing the
                missing and unexpected keys otherwise).
            map_location: device to put the model on.
            local_files_only: True (default) never touches the network; False lets huggingface_hub
                download a missing repo (still refused when HF_HUB_OFFLINE=1).
            revision, cache_dir: passed to `huggingface_hub.snapshot_download`.
            **overrides: constructor arguments replacing the saved ones (e.g. backend="reference").
        """
        directory = _resolve_directory(dir_or_hub_id, local_files_only=local_files_only, revision=revision,
                                       cache_dir=cache_dir)
        config_file, weights_file = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for f in (config_file, weights_file):
            if not f.is_file():
                raise FileNotFoundError(f"{dir_or_hub_id}: expected {f.name} in {directory}, not found")
        try:
            config = json.loads(config_file.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"{config_file} is not valid JSON: {err}") from err
        if not isinstance(config, dict) or "architecture" not in config or "init_args" not in config:
            raise ValueError(f"{config_file} is not a mamba-suite config (needs 'architecture' and 'init_args')")
        target = _architecture_class(cls, config["architecture"])
        init_args = dict(config["init_args"])
        _check_overrides(target, overrides)
        init_args.update(overrides)
        model = target(**init_args)
        try:
            missing, unexpected = load_model(model, str(weights_file), strict=False, device="cpu")
        except SafetensorError as err:  # truncated or not a safetensors file
            raise ValueError(f"cannot read {weights_file}: {err}") from err
        if strict and (missing or unexpected):
            raise ValueError(
                f"{weights_file} does not match {target.__name__}: missing keys {sorted(missing)}, "
                f"unexpected keys {sorted(unexpected)}. Pass strict=False to load the matching keys only."
            )
        return model.to(map_location).eval()


def _architecture_class(cls: type, architecture: str) -> type:
    """The class to build: `cls` itself, or the saved mamba-suite subclass of `cls`."""
    if architecture == _class_path(cls):
        return cls
    if architecture.startswith("mambasuite."):
        module_name, _, name = architecture.rpartition(".")
        try:
            target = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError):
            target = None
        if isinstance(target, type) and issubclass(target, cls):
            return target
    raise ValueError(f"the checkpoint was saved by architecture {architecture!r}, which is not "
                     f"{_class_path(cls)} or a subclass of it; load it with that class")


def _check_overrides(target: type, overrides: dict) -> None:
    params = inspect.signature(target.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return  # extra keywords are legal; the constructor validates them
    unknown = sorted(set(overrides) - set(params) - {"self"})
    if unknown:
        raise TypeError(f"from_pretrained: unknown overrides {unknown} for {target.__name__}; "
                        f"valid constructor arguments: {sorted(set(params) - {'self'})}")


def _resolve_directory(dir_or_hub_id, *, local_files_only: bool, revision: str | None, cache_dir) -> Path:
    """A local directory, or the local snapshot of a Hugging Face repo id (offline unless asked)."""
    path = Path(dir_or_hub_id)
    if path.is_dir():
        return path
    repo_id = str(dir_or_hub_id)
    if path.exists() or repo_id.startswith((".", "/", "~")) or repo_id.count("/") > 1:
        raise FileNotFoundError(f"{repo_id!r} is not a directory (save_pretrained writes a directory)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        snapshot = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                                     local_files_only=local_files_only,
                                     allow_patterns=[CONFIG_NAME, WEIGHTS_NAME])
    except HFValidationError as err:
        raise FileNotFoundError(f"{repo_id!r} is neither a local directory nor a valid Hugging Face repo id "
                                f"({err})") from err
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
        raise FileNotFoundError(
            f"{repo_id!r} is not a local directory and is not in the local Hugging Face cache. mamba-suite "
            f"does not download by default: fetch it once with `hf download {repo_id}` (older "
            f"huggingface_hub: `huggingface-cli download {repo_id}`) on a machine with network access, or "
            f"call from_pretrained(..., local_files_only=False) with HF_HUB_OFFLINE unset to let it download."
        ) from err
    return Path(snapshot)
