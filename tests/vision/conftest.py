"""Vision test helpers: synthetic state dicts with the official key names and shapes (vision.md §1.6, §2.5)."""

import math

import pytest
import torch


def official_vim_state_dict(dim: int, depth: int, grid: int, d_state: int = 16, num_classes: int = 1000,
                            patch: int = 16, in_chans: int = 3) -> dict[str, torch.Tensor]:
    """Random tensors under hustvl/Vim's `ckpt['model']` keys for a width-`dim`, `depth`-layer model."""
    e, r = 2 * dim, math.ceil(dim / 16)
    g = torch.Generator().manual_seed(0)

    def t(*shape):
        return torch.randn(*shape, generator=g) * 0.02

    sd = {"cls_token": t(1, 1, dim), "pos_embed": t(1, grid * grid + 1, dim),
          "patch_embed.proj.weight": t(dim, in_chans, patch, patch), "patch_embed.proj.bias": t(dim),
          "norm_f.weight": 1 + t(dim), "head.weight": t(num_classes, dim), "head.bias": t(num_classes)}
    for i in range(depth):
        p = f"layers.{i}."
        sd[p + "norm.weight"] = 1 + t(dim)
        sd[p + "mixer.in_proj.weight"] = t(2 * e, dim)
        sd[p + "mixer.out_proj.weight"] = t(dim, e)
        for s, a in (("", "A_log"), ("_b", "A_b_log")):
            sd[p + f"mixer.{a}"] = torch.log(torch.arange(1, d_state + 1.0)).repeat(e, 1)
            sd[p + f"mixer.D{s}"] = torch.ones(e)
            sd[p + f"mixer.conv1d{s}.weight"] = t(e, 1, 4)
            sd[p + f"mixer.conv1d{s}.bias"] = t(e)
            sd[p + f"mixer.x_proj{s}.weight"] = t(r + 2 * d_state, e)
            sd[p + f"mixer.dt_proj{s}.weight"] = t(e, r)
            sd[p + f"mixer.dt_proj{s}.bias"] = t(e)
    return sd


def official_vmamba_state_dict(dim: int, depths, ssm_ratio: float, mlp_ratio: float, d_state: int = 1,
                               num_classes: int = 1000, legacy: bool = False) -> dict[str, torch.Tensor]:
    """Random tensors under MzeroMiko/VMamba v2 (`v05_noz`, ln2d) keys; legacy=True uses the early
    release names (patch_embed.proj/norm, ln_1, self_attention, top-level norm/head)."""
    g = torch.Generator().manual_seed(0)

    def t(*shape):
        return torch.randn(*shape, generator=g) * 0.02

    dims = [dim * 2 ** i for i in range(len(depths))]
    stem0, stem2 = ("patch_embed.proj", "patch_embed.norm") if legacy else ("patch_embed.0", "patch_embed.2")
    sd = {f"{stem0}.weight": t(dim // 2, 3, 3, 3), f"{stem0}.bias": t(dim // 2),
          f"{stem2}.weight": 1 + t(dim // 2), f"{stem2}.bias": t(dim // 2),
          "patch_embed.5.weight": t(dim, dim // 2, 3, 3), "patch_embed.5.bias": t(dim),
          "patch_embed.7.weight": 1 + t(dim), "patch_embed.7.bias": t(dim)}
    for s, (depth, c) in enumerate(zip(depths, dims)):
        e, r, h = int(ssm_ratio * c), math.ceil(c / 16), int(mlp_ratio * c)
        for j in range(depth):
            p = f"layers.{s}.blocks.{j}."
            norm, op = ("ln_1", "self_attention") if legacy else ("norm", "op")
            sd.update({p + f"{norm}.weight": 1 + t(c), p + f"{norm}.bias": t(c),
                       p + f"{op}.in_proj.weight": t(e, c), p + f"{op}.conv2d.weight": t(e, 1, 3, 3),
                       p + f"{op}.x_proj_weight": t(4, r + 2 * d_state, e), p + f"{op}.dt_projs_weight": t(4, e, r),
                       p + f"{op}.dt_projs_bias": t(4, e), p + f"{op}.A_logs": torch.zeros(4 * e, d_state),
                       p + f"{op}.Ds": torch.ones(4 * e), p + f"{op}.out_norm.weight": 1 + t(e),
                       p + f"{op}.out_norm.bias": t(e), p + f"{op}.out_proj.weight": t(c, e),
                       p + "norm2.weight": 1 + t(c), p + "norm2.bias": t(c), p + "mlp.fc1.weight": t(h, c),
                       p + "mlp.fc1.bias": t(h), p + "mlp.fc2.weight": t(c, h), p + "mlp.fc2.bias": t(c)})
        if s < len(depths) - 1:
            sd.update({f"layers.{s}.downsample.1.weight": t(dims[s + 1], c, 3, 3),
                       f"layers.{s}.downsample.1.bias": t(dims[s + 1]),
                       f"layers.{s}.downsample.3.weight": 1 + t(dims[s + 1]),
                       f"layers.{s}.downsample.3.bias": t(dims[s + 1])})
    last = dims[-1]
    norm, head = ("norm", "head") if legacy else ("classifier.norm", "classifier.head")
    sd.update({f"{norm}.weight": 1 + t(last), f"{norm}.bias": t(last), f"{head}.weight": t(num_classes, last),
               f"{head}.bias": t(num_classes)})
    return sd


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny tensors: one intra-op thread avoids OpenMP spin contention on shared 2-core runners.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_image_folder(root, classes=("cat", "dog"), per_class: int = 4, size: int = 20):
    """A tiny ImageFolder tree root/{train,val}/<class>/*.png of random RGB images; returns root."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            folder = root / split / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root
