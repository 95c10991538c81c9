"""Weight-decay groups follow tags set at construction, so they survive FSDP flattening parameters to 1-D."""

import torch
from torch import nn

from mambasuite.core.tasks import split_by_decay_tag, tag_no_weight_decay


def _toy():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2, bias=False))
    model.register_parameter("pos_embed", nn.Parameter(torch.zeros(1, 3, 8)))
    return model


def test_tags_biases_norms_and_named_parameters_only():
    model = tag_no_weight_decay(_toy(), names={"pos_embed"})
    tagged = {n for n, p in model.named_parameters() if getattr(p, "_no_weight_decay", False)}
    assert tagged == {"0.bias", "1.weight", "1.bias", "pos_embed"}


def test_groups_survive_flattening_like_fsdp():
    model = tag_no_weight_decay(_toy(), names={"pos_embed"})
    for p in model.parameters():  # what FSDP's use_orig_params views look like to configure_optimizers
        p.data = p.data.flatten()
    groups = split_by_decay_tag([{"params": list(model.parameters()), "lr_scale": 0.5}], weight_decay=0.1)
    decay = {id(p) for g in groups if g["weight_decay"] == 0.1 for p in g["params"]}
    assert decay == {id(model[0].weight), id(model[2].weight)}
    assert all(g["lr_scale"] == 0.5 for g in groups)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
