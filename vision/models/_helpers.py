"""Pieces shared by the vision model files: checkpoint reading and pretrained loading.

Official checkpoints are pickles with training state besides the weights (Vim: an `argparse.Namespace`;
VMamba: a yacs `CfgNode`). They are read with `torch.load(weights_only=True)` and an explicit allow-list
of those two classes -- never with blind unpickling.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from mambasuite.core.files import safe_torch_load

__all__ = ["read_checkpoint", "load_pretrained_into", "load_strict", "unwrap_state_dict", "use_own_loader"]


# yacs' CfgNode (a dict subclass with a few private flags) is rebuilt as an OrderedDict, one of the
# few types the weights-only unpickler can fill with items, so VMamba's `config` reads without yacs.
_SAFE_GLOBALS = [argparse.Namespace, (OrderedDict, "yacs.config.CfgNode")]


def read_checkpoint(path: str | Path) -> dict:
    """Read a `.safetensors` file or a torch pickle (`.pth`/`.pt`/`.bin`/`.ckpt`) into a dict.

    Raises FileNotFoundError naming `path` if it is missing, ValueError naming it if it cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as err:
            raise ValueError(f"cannot read checkpoint {path}: {err}") from err
    # weights_only=True plus the allow-list above; a pickle asking for anything else raises UnsafeCheckpointError
    # (a ValueError naming the file), truncated or foreign files a ValueError naming it.
    return safe_torch_load(path, safe_globals=_SAFE_GLOBALS, map_location="cpu")


def unwrap_state_dict(ckpt: dict, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The weights inside a training checkpoint: `model_ema` (if use_ema), `model`, `state_dict` or
    the dict itself; a leading `module.` (DDP) is stripped."""
    if not isinstance(ckpt, dict):
        raise TypeError(f"checkpoint must be a dict, got {type(ckpt).__name__}")
    keys = (("model_ema", "state_dict_ema") if use_ema else ()) + ("model", "state_dict")
    for key in keys:
        if isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    else:
        if use_ema:
            raise KeyError("use_ema=True but the checkpoint has no 'model_ema' or 'state_dict_ema' entry")
    return {k.removeprefix("module."): v for k, v in ckpt.items() if isinstance(v, torch.Tensor)}


def load_pretrained_into(model: nn.Module, path: str | Path, filter_fn, head_keys: tuple[str, ...]) -> None:
    """Load a checkpoint file into `model` strictly, after `filter_fn(state_dict, model)`.

    The only keys allowed to be missing are `head_keys`, and only when the checkpoint's classifier
    shape differs from the model's (fine-tuning with another num_classes): the head then keeps its
    fresh initialisation. Any other mismatch raises ValueError listing the keys.
    """
    state_dict = filter_fn(read_checkpoint(path), model)
    own = model.state_dict()
    dropped = [k for k in head_keys if k in state_dict and (k not in own or own[k].shape != state_dict[k].shape)]
    for k in dropped:
        del state_dict[k]
    load_strict(model, state_dict, str(path), allow_missing=head_keys if dropped else ())


def load_strict(model: nn.Module, state_dict: dict, source: str, allow_missing: tuple[str, ...] = ()) -> None:
    """`model.load_state_dict` that first checks keys and shapes and raises one ValueError naming
    `source` and every missing, unexpected and mis-shaped key (except `allow_missing`)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict) - set(allow_missing))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(f"{k}: {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or shapes:
        raise ValueError(f"{source} does not match {type(model).__name__}: missing keys {missing}, "
                         f"unexpected keys {unexpected}, shape mismatches {shapes}")
    model.load_state_dict(state_dict, strict=False)

def use_own_loader(kwargs: dict) -> dict:
    """Route `pretrained_cfg_overlay=dict(file=...)` to the model's `load_pretrained`.

    timm resets `custom_load` to False whenever an overlay names a weight source, which would send an
    official `.pth` through its generic loader (no allow-list for the pickled args, non-strict head
    handling). Unless the caller set `custom_load` explicitly, it is set to True here.
    """
    overlay = kwargs.get("pretrained_cfg_overlay")
    if isinstance(overlay, dict) and overlay.get("file") and "custom_load" not in overlay:
        kwargs["pretrained_cfg_overlay"] = {**overlay, "custom_load": True}
    return kwargs
