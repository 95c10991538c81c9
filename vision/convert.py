"""`mamba-suite convert vim|vmamba SRC DST.safetensors`: official checkpoints -> our timm models.

The source (official Vim `.pth` with model / model_ema / args, official VMamba `.pth` with new or
legacy key names, or any state dict of ours) is read with the allow-listed `torch.load`, mapped by
the family's `checkpoint_filter_fn`, loaded *strictly* into the matching timm model (inferred from
the tensor shapes, or `--model`), and written as safetensors with the model name in the metadata.
Use the result with `timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=DST))`.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

__all__ = ["convert", "infer_model_name", "main"]

_VIM_SIZES = {192: "vim_tiny", 384: "vim_small", 768: "vim_base"}
# (stage-0 width, blocks in stage 2, d_inner / width) -> name, from the official v2 configs.
_VMAMBA_SIZES = {(96, 8, 1): "vmamba_tiny", (96, 15, 2): "vmamba_small", (128, 15, 2): "vmamba_base"}


def infer_model_name(family: str, sd: dict[str, torch.Tensor]) -> tuple[str, dict]:
    """Model name and create_model kwargs (num_classes, img_size) read off an (already filtered)
    state dict; raises ValueError when the shapes match no registered size (then pass --model)."""
    head = sd.get("head.weight" if family == "vim" else "classifier.head.weight")
    kwargs = {"num_classes": head.shape[0] if head is not None else 0}
    if family == "vim":
        dim = sd["cls_token"].shape[-1]
        depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"layers\.(\d+)\.", k)))
        side = round((sd["pos_embed"].shape[1] - 1) ** 0.5)
        stride = {14: 16, 27: 8}.get(side)
        if dim not in _VIM_SIZES or depth != 24 or stride is None:
            raise ValueError(f"no registered Vim with embed_dim={dim}, depth={depth}, {side}x{side} tokens; "
                             f"pass --model")
        return _VIM_SIZES[dim] + ("_patch16_stride8_224" if stride == 8 else "_patch16_224"), kwargs
    width = sd["patch_embed.7.weight"].shape[0]
    blocks = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"layers\.2\.blocks\.(\d+)\.", k)))
    ratio = sd["layers.0.blocks.0.op.in_proj.weight"].shape[0] // width
    key = (width, blocks, ratio)
    if key not in _VMAMBA_SIZES:
        raise ValueError(f"no registered VMamba with width {width}, {blocks} stage-2 blocks, ssm_ratio {ratio}; "
                         f"pass --model")
    return _VMAMBA_SIZES[key], kwargs


def convert(family: str, src: str | Path, dst: str | Path, model_name: str | None = None,
            use_ema: bool = False) -> str:
    """Convert `src` into `dst` (.safetensors); returns the model name it was validated against.

    Raises ValueError (naming the keys) when the weights do not load strictly into the model.
    """
    import timm
    from safetensors.torch import save_file

    import mambasuite.vision  # noqa: F401
    from mambasuite.core.files import atomic_write
    from mambasuite.vision.models import vim, vmamba
    from mambasuite.vision.models._helpers import load_strict, read_checkpoint, unwrap_state_dict

    if family not in ("vim", "vmamba"):
        raise ValueError(f"family must be 'vim' or 'vmamba', got {family!r}")
    if Path(dst).suffix != ".safetensors":
        raise ValueError(f"destination must end in .safetensors, got {dst}")
    ckpt = read_checkpoint(src)
    sd = unwrap_state_dict(ckpt, use_ema=use_ema)
    filter_fn = vim.checkpoint_filter_fn if family == "vim" else vmamba.checkpoint_filter_fn
    renamed = vmamba.rename_legacy_keys(sd) if family == "vmamba" else sd
    if model_name is None:
        model_name, kwargs = infer_model_name(family, renamed)
    else:
        head = renamed.get("head.weight" if family == "vim" else "classifier.head.weight")
        kwargs = {"num_classes": head.shape[0] if head is not None else 0}
    name = model_name
    model = timm.create_model(name, **kwargs)
    sd = filter_fn(sd, model)
    load_strict(model, sd, f"{src} (as {name})")
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": "pt", "architecture": name, "num_classes": str(kwargs["num_classes"])}
    atomic_write(dst, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))  # a kill leaves no torn file
    return name


def main(argv: list[str] | None = None) -> int:
    """CLI: `mamba-suite convert {vim,vmamba} SRC DST.safetensors [--model NAME] [--ema]`.

    core.dispatch routes `convert vim|vmamba ...` here with the family still in argv.
    """
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="mamba-suite convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("family", choices=("vim", "vmamba"))
    parser.add_argument("src", help="official checkpoint (.pth) or state dict")
    parser.add_argument("dst", help="output .safetensors file")
    parser.add_argument("--model", default=None, help="timm model name (default: inferred from the shapes)")
    parser.add_argument("--ema", action="store_true", help="convert the EMA weights (model_ema)")
    args = parser.parse_args(argv)
    try:
        name = convert(args.family, args.src, args.dst, args.model, use_ema=args.ema)
    except (FileNotFoundError, ValueError, KeyError) as err:
        parser.exit(2, f"mamba-suite convert: error: {err}\n")
    print(f"wrote {args.dst} ({name}); load with timm.create_model({name!r}, pretrained=True, "
          f"pretrained_cfg_overlay=dict(file={str(args.dst)!r}))")
    return 0
