"""`mamba-suite convert caduceus SRC DST_DIR`: Hugging Face Caduceus-Ph weights -> a `Caduceus` backbone dir.

SRC is a directory with the HF `config.json` + `model.safetensors`, or a bare .safetensors / state-dict
file; the sizes (d_model, n_layer, d_state, expand, d_conv, vocab) are read off the tensor shapes. Keys under `caduceus.backbone.`,
`backbone.` or `model.caduceus.backbone.` map to ours by renaming (`embeddings.*` moves up one level).
Tied tensors (`mamba_rev.in_proj/out_proj`, `lm_head`) are dropped after checking they equal their
source, since our modules re-tie them. The result is loaded *strictly* and written with `save_pretrained`,
so `Caduceus.from_pretrained(DST_DIR)` (and `DNASequenceClassifier(pretrained=DST_DIR)`) read it.

Only Caduceus-Ph (rcps=false) is converted. RCPS checkpoints are refused: the published RCPS code combines
the two strands differently from our channel-split layout at some revisions (averaged halves; and the fused
add+norm path swaps halves per block), so a key rename would load but not reproduce the model.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

__all__ = ["convert_state_dict", "convert", "main"]

_PREFIXES = ("model.caduceus.backbone.", "caduceus.backbone.", "backbone.")
_TIED = ("in_proj.weight", "in_proj.bias", "out_proj.weight", "out_proj.bias")


def convert_state_dict(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """HF Caduceus-Ph state dict -> (our `Caduceus` state dict, constructor kwargs read off the shapes).

    Raises ValueError naming the offending keys for RCPS checkpoints, unknown keys, or tied tensors that
    differ from their source.
    """
    if any("submodule" in k or k.endswith("word_embeddings.embedding.weight") for k in sd):
        raise ValueError("this is a Caduceus-PS (RCPS) checkpoint; only Caduceus-Ph is supported (see module docs)")
    out, tied_copies, unknown = {}, {}, []
    for key, value in sd.items():
        prefix = next((p for p in _PREFIXES if key.startswith(p)), None)
        if key in ("lm_head.weight",) or key.startswith("score."):
            tied_copies[key] = value
            continue
        if prefix is None:
            unknown.append(key)
            continue
        rest = key[len(prefix):]
        m = re.match(r"layers\.\d+\.mixer\.mamba_rev\.(.+)$", rest)
        if m and m.group(1) in _TIED:
            tied_copies[rest] = value
            continue
        if rest.startswith("embeddings."):
            out[rest] = value
        elif rest.startswith(("layers.", "norm_f.")):
            out["backbone." + rest] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unexpected keys (not a Caduceus-Ph backbone?): {unknown[:8]}")
    emb = out.get("embeddings.word_embeddings.weight")
    if emb is None:
        raise ValueError("missing key embeddings.word_embeddings.weight under any of " + ", ".join(_PREFIXES))
    for key, value in tied_copies.items():
        if key.startswith("score."):
            continue
        source = emb if key == "lm_head.weight" else out.get("backbone." + key.replace("mamba_rev", "mamba_fwd"))
        if source is None or source.shape != value.shape or not torch.equal(source, value):
            raise ValueError(f"{key} is stored separately and differs from the tensor it is tied to "
                             f"(bidirectional_weight_tie=False checkpoints are not supported)")
    vocab_size, d_model = emb.shape
    n_layer = 1 + max(int(re.match(r"backbone\.layers\.(\d+)\.", k).group(1)) for k in out if k.startswith("backbone.layers."))
    a_log = out["backbone.layers.0.mixer.mamba_fwd.A_log"]
    kwargs = dict(d_model=d_model, n_layer=n_layer, vocab_size=vocab_size, rcps=False, d_state=a_log.shape[1],
                  expand=a_log.shape[0] // d_model,
                  d_conv=out["backbone.layers.0.mixer.mamba_fwd.conv1d.weight"].shape[-1])
    return out, kwargs


def _read(src: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors.torch import load_file

    hf_config = {}
    if src.is_dir():
        if (src / "config.json").is_file():
            hf_config = json.loads((src / "config.json").read_text())
        src = src / "model.safetensors"
    if not src.is_file():
        raise FileNotFoundError(f"no checkpoint at {src}")
    if src.suffix == ".safetensors":
        return load_file(str(src)), hf_config
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    return (ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt), hf_config


def convert(src: str | Path, dst: str | Path, backend: str = "auto") -> Path:
    """Convert SRC (HF dir, .safetensors or state-dict file) into a `save_pretrained` directory DST."""
    from .models.caduceus import Caduceus

    sd, hf_config = _read(Path(src))
    if hf_config.get("rcps"):
        raise ValueError(f"{src}: config.json has rcps=true; only Caduceus-Ph is supported (see module docs)")
    if hf_config.get("bidirectional_strategy", "add") != "add":
        raise ValueError(f"{src}: bidirectional_strategy {hf_config['bidirectional_strategy']!r} is not supported")
    ours, kwargs = convert_state_dict(sd)
    if "complement_map" in hf_config:
        cmap = hf_config["complement_map"]
        kwargs["complement_map"] = [int(cmap[str(i)]) for i in range(len(cmap))]
    for name in ("norm_epsilon", "residual_in_fp32"):
        if name in hf_config:
            kwargs["norm_eps" if name == "norm_epsilon" else name] = hf_config[name]
    model = Caduceus(**kwargs, backend=backend)
    missing, unexpected = model.load_state_dict(ours, strict=False)
    # mamba_rev's in/out projections *are* mamba_fwd's Parameters (tied), so loading fwd filled them too.
    missing = [k for k in missing if not re.search(r"mixer\.mamba_rev\.(in|out)_proj\.", k)]
    if missing or unexpected:
        raise ValueError(f"{src}: converted weights do not match Caduceus({kwargs}): missing {sorted(missing)[:8]}, "
                         f"unexpected {sorted(unexpected)[:8]}")
    return model.save_pretrained(dst)


def main(argv: list[str] | None = None) -> int:
    """CLI: `mamba-suite convert caduceus SRC DST_DIR` (core.dispatch passes argv with the family first)."""
    argv = list(argv or [])
    if argv[:1] == ["caduceus"]:
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="mamba-suite convert caduceus", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="HF Caduceus-Ph directory (config.json + model.safetensors) or weights file")
    parser.add_argument("dst", help="output directory (model.safetensors + config.json, mamba-suite format)")
    args = parser.parse_args(argv)
    try:
        out = convert(args.src, args.dst)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"mamba-suite convert caduceus: error: {err}\n")
    print(f"wrote {out}; load with mambasuite.bio.models.Caduceus.from_pretrained({str(out)!r})")
    return 0
