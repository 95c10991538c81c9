"""`mamba-suite convert caduceus SRC DST_DIR`: Hugging Face Caduceus (Ph or PS) weights -> a `Caduceus` backbone dir.

SRC is a directory with the HF `config.json` + `model.safetensors`, or a bare .safetensors / state-dict
file (a Lightning .ckpt of the training repo works too). Keys under `caduceus.backbone.`, `backbone.` or
`model.caduceus.backbone.` map to ours by renaming (`embeddings.*` moves up one level, the rest goes under
`backbone.`); the sizes (d_model, n_layer, d_state, expand, d_conv, vocab) are read off the tensor shapes.

* Caduceus-PS (rcps): `layers.{i}.mixer.submodule.mamba_{fwd,rev}.*`, the `RCPSEmbedding`
  (`embeddings.word_embeddings.embedding.weight` + its `complement_map`) and the RCPS LM head
  (`lm_head.lm_head.weight`, `lm_head.complement_map`). With the fused add+norm layout (norms stored as
  `layers.{i}.norm.weight` / `norm_f.weight`, config.json `fused_add_norm: true`, as released) the model
  is built with `swap_halves=True`, which reproduces the official per-block half swap; the unfused layout
  (`norm.submodule.weight`) keeps the halves in order. config.json, when present, must agree with the keys.
* Tied tensors (`mamba_rev.in_proj/out_proj`, the LM head) may be stored once or repeated: repeats are
  checked equal to their source and dropped, since our modules re-tie them. Separately stored, different
  mamba_rev projections mean `bidirectional_weight_tie=false`, and are then kept.
* A bare `mamba_fwd` (no `mamba_rev`) is the unidirectional model (`bidirectional=false`).

The result is loaded *strictly* and written with `save_pretrained`, so `Caduceus.from_pretrained(DST_DIR)`
(and `DNASequenceClassifier(pretrained=DST_DIR)`) read it. LayerNorm models (`rms_norm: false`) and the
`ew_multiply` strategy are refused. One RCPS revision of the reference code (averaging rather than
concatenating the strands) has the same keys and shapes; it cannot be told apart from the file and is
not supported (the released checkpoints use the concatenating code).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

from ..core.files import safe_torch_load

__all__ = ["convert_state_dict", "convert", "main"]

_PREFIXES = ("model.caduceus.backbone.", "caduceus.backbone.", "backbone.")
_PROJ = ("in_proj.weight", "in_proj.bias", "out_proj.weight", "out_proj.bias")
_MIXER = re.compile(r"layers\.(\d+)\.mixer\.(submodule\.)?(mamba_fwd|mamba_rev)\.(.+)$")
_NORM = re.compile(r"(layers\.\d+\.norm|norm_f)\.(submodule\.)?(weight|bias)$")
_HEADS = ("lm_head.weight", "lm_head.lm_head.weight", "lm_head.complement_map")


def _strip_prefix(key: str) -> str | None:
    prefix = next((p for p in _PREFIXES if key.startswith(p)), None)
    return None if prefix is None else key[len(prefix):]


def convert_state_dict(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """HF Caduceus state dict -> (our `Caduceus` state dict, constructor kwargs read off keys and shapes).

    Raises ValueError naming the offending keys for unknown keys, mixed fused/unfused norm layouts, LayerNorm
    biases, or tied copies (LM head, complement maps) that differ from their source.
    """
    rcps = any(k.endswith("word_embeddings.embedding.weight") for k in sd)
    bidirectional = any(".mamba_rev." in k for k in sd)
    out, rev_proj, heads, unknown, norm_layouts = {}, {}, {}, [], set()
    for key, value in sd.items():
        if key in _HEADS or key.startswith("score."):
            heads[key] = value  # tied LM head (checked below) or a classification head (not a backbone weight)
            continue
        rest = _strip_prefix(key)
        if rest is None:
            unknown.append(key)
            continue
        mixer, norm = _MIXER.match(rest), _NORM.match(rest)
        if rest.startswith("embeddings."):
            out[rest] = value
        elif mixer:
            layer, wrapped, direction, name = mixer.groups()
            if bool(wrapped) != rcps:
                unknown.append(key)  # a PS mixer key in a Ph file or the reverse
                continue
            if direction == "mamba_rev" and name in _PROJ:
                rev_proj[rest] = value
                continue
            inner = f"{direction}.{name}" if bidirectional else name  # unidirectional: a bare Mamba mixer
            out[f"backbone.layers.{layer}.mixer.{'submodule.' if rcps else ''}{inner}"] = value
        elif norm:
            module, wrapped, param = norm.groups()
            if param == "bias":
                raise ValueError(f"{key}: the norms have a bias (LayerNorm, rms_norm=false); only RMSNorm "
                                 f"Caduceus checkpoints are supported")
            if rcps:
                norm_layouts.add("unfused" if wrapped else "fused")
                out[f"backbone.{module}.submodule.weight"] = value
            elif wrapped:
                unknown.append(key)
            else:
                out[f"backbone.{module}.weight"] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unexpected keys (not a Caduceus-{'PS' if rcps else 'Ph'} backbone?): {unknown[:8]}")
    if len(norm_layouts) > 1:
        raise ValueError("the norms mix the fused (`norm.weight`) and unfused (`norm.submodule.weight`) RCPS "
                         "layouts; a checkpoint has one or the other")
    emb_key = "embeddings.word_embeddings.embedding.weight" if rcps else "embeddings.word_embeddings.weight"
    emb = out.get(emb_key)
    if emb is None:
        raise ValueError(f"missing key {emb_key} under any of " + ", ".join(_PREFIXES))
    weight_tie = _check_rev_projections(rev_proj, out, rcps)
    _check_heads(heads, emb, out.get("embeddings.word_embeddings.complement_map"))
    vocab_size, d_model = emb.shape
    layer_keys = [k for k in out if k.startswith("backbone.layers.")]
    if not layer_keys:
        raise ValueError("no `layers.{i}` keys found: not a Caduceus backbone")
    n_layer = 1 + max(int(re.match(r"backbone\.layers\.(\d+)\.", k).group(1)) for k in layer_keys)
    fwd = "backbone.layers.0.mixer." + ("submodule." if rcps else "") + ("mamba_fwd." if bidirectional else "")
    a_log, x_proj = out[fwd + "A_log"], out[fwd + "x_proj.weight"]
    d_state, expand = a_log.shape[1], a_log.shape[0] // d_model
    dt_rank = x_proj.shape[0] - 2 * d_state
    if dt_rank != -(-d_model // 16):
        raise ValueError(f"{fwd}x_proj.weight has dt_rank {dt_rank}; only dt_rank='auto' = ceil(d_model/16) = "
                         f"{-(-d_model // 16)} is supported")
    kwargs = dict(d_model=d_model, n_layer=n_layer, vocab_size=vocab_size, rcps=rcps, bidirectional=bidirectional,
                  bidirectional_weight_tie=weight_tie, d_state=d_state, expand=expand,
                  d_conv=out[fwd + "conv1d.weight"].shape[-1], swap_halves=rcps and norm_layouts == {"fused"})
    if rcps and "embeddings.word_embeddings.complement_map" in out:
        kwargs["complement_map"] = out["embeddings.word_embeddings.complement_map"].tolist()
    if not weight_tie:
        out.update((f"backbone.{k}", v) for k, v in rev_proj.items())
    return out, kwargs


def _check_rev_projections(rev_proj: dict, out: dict, rcps: bool) -> bool:
    """True (tied) when every stored mamba_rev in/out projection equals mamba_fwd's; False when all differ."""
    same = {}
    for key, value in rev_proj.items():
        source = out.get("backbone." + key.replace("mamba_rev", "mamba_fwd"))
        same[key] = source is not None and source.shape == value.shape and torch.equal(source, value)
    if all(same.values()):
        return True
    if any(same.values()):
        raise ValueError(f"some mamba_rev projections equal mamba_fwd's and others differ (e.g. "
                         f"{next(k for k, v in same.items() if not v)}); expected all tied or none")
    return False


def _check_heads(heads: dict, emb: torch.Tensor, cmap: torch.Tensor | None) -> None:
    for key, value in heads.items():
        if key.startswith("score."):
            continue
        source = cmap if key == "lm_head.complement_map" else emb
        if source is None or source.shape != value.shape or not torch.equal(source, value):
            raise ValueError(f"{key} is stored separately and differs from the tensor it is tied to "
                             f"({'the embedding complement_map' if source is cmap else 'the word embedding'})")


def _read(src: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, HF config.json or {}) of SRC; FileNotFoundError / ValueError name the file at fault.

    Pickles go through `safe_torch_load` (weights only): one whose pickle would run code raises
    UnsafeCheckpointError (a ValueError) without running it.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    hf_config = {}
    if src.is_dir():
        config = src / "config.json"
        if config.is_file():
            try:
                hf_config = json.loads(config.read_bytes().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
                raise ValueError(f"{config} is not valid JSON: {err}") from None
            if not isinstance(hf_config, dict):
                raise ValueError(f"{config} must hold a JSON object, got {type(hf_config).__name__}")
        src = src / "model.safetensors"
    if not src.is_file():
        raise FileNotFoundError(f"no checkpoint at {src}")
    if src.suffix == ".safetensors":
        try:
            return load_file(str(src)), hf_config
        except SafetensorError as err:
            raise ValueError(f"cannot read checkpoint {src}: {err}") from err
    ckpt = safe_torch_load(src)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{src} does not hold a state dict of tensors (got {type(state).__name__})")
    return state, hf_config


def _check_config(src, hf_config: dict, kwargs: dict) -> None:
    """config.json (when present) must describe the same model as the keys."""
    if not hf_config.get("rms_norm", True):
        raise ValueError(f"{src}: config.json has rms_norm=false (LayerNorm); only RMSNorm models are supported")
    if hf_config.get("bidirectional_strategy", "add") not in ("add", None):
        raise ValueError(f"{src}: bidirectional_strategy {hf_config['bidirectional_strategy']!r} is not supported")
    checks = [("rcps", kwargs["rcps"]), ("bidirectional", kwargs["bidirectional"]),
              ("bidirectional_weight_tie", kwargs["bidirectional_weight_tie"])]
    if kwargs["rcps"]:
        checks.append(("fused_add_norm", kwargs["swap_halves"]))
    for name, from_keys in checks:
        if name in hf_config and bool(hf_config[name]) != from_keys:
            raise ValueError(f"{src}: config.json has {name}={hf_config[name]!r} but the weights' keys say "
                             f"{name}={from_keys} (see `mamba-suite convert caduceus --help`)")
    if "complement_map" in hf_config:
        cmap = hf_config["complement_map"]
        listed = [int(cmap[str(i)]) for i in range(len(cmap))]
        listed += list(range(len(listed), kwargs["vocab_size"]))  # the model pads the map with the identity
        if kwargs.get("complement_map", listed) != listed:
            raise ValueError(f"{src}: config.json complement_map differs from the stored complement_map buffer")
        kwargs["complement_map"] = listed
    for name, ours in (("norm_epsilon", "norm_eps"), ("residual_in_fp32", "residual_in_fp32")):
        if name in hf_config:
            kwargs[ours] = hf_config[name]


def convert(src: str | Path, dst: str | Path, backend: str = "auto") -> Path:
    """Convert SRC (HF dir, .safetensors or state-dict file) into a `save_pretrained` directory DST."""
    from .models.caduceus import Caduceus

    sd, hf_config = _read(Path(src))
    ours, kwargs = convert_state_dict(sd)
    _check_config(src, hf_config, kwargs)
    cmap_key = "embeddings.word_embeddings.complement_map"
    if kwargs["rcps"] and cmap_key not in ours:
        if "complement_map" not in kwargs:
            raise ValueError(f"{src}: the weights lack {cmap_key} and there is no config.json complement_map")
        ours[cmap_key] = torch.tensor(kwargs["complement_map"], dtype=torch.long)
    model = Caduceus(**kwargs, backend=backend)
    missing, unexpected = model.load_state_dict(ours, strict=False)
    if kwargs["bidirectional_weight_tie"]:
        # mamba_rev's in/out projections *are* mamba_fwd's Parameters (tied), so loading fwd filled them too.
        missing = [k for k in missing if not re.search(r"mixer\.(submodule\.)?mamba_rev\.(in|out)_proj\.", k)]
    if missing or unexpected:
        raise ValueError(f"{src}: converted weights do not match Caduceus({kwargs}): missing {sorted(missing)[:8]}, "
                         f"unexpected {sorted(unexpected)[:8]}")
    return model.save_pretrained(dst)


def main(argv: list[str] | None = None) -> int:
    """CLI: `mamba-suite convert caduceus SRC DST_DIR` (core.dispatch passes argv with the family first)."""
    argv = list(argv or [])
    if argv[:1] == ["caduceus"]:
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="mamba-suite convert caduceus", description=__doc__.split("\n\n")[0],
                                     epilog="Ph and PS checkpoints; the PS fused add+norm layout is converted "
                                            "with swap_halves=True (see mambasuite.bio.convert).")
    parser.add_argument("src", help="HF Caduceus directory (config.json + model.safetensors) or weights file")
    parser.add_argument("dst", help="output directory (model.safetensors + config.json, mamba-suite format)")
    args = parser.parse_args(argv)
    try:
        out = convert(args.src, args.dst)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"mamba-suite convert caduceus: error: {err}\n")
    print(f"wrote {out}; load with mambasuite.bio.models.Caduceus.from_pretrained({str(out)!r})")
    return 0
