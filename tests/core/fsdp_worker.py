"""torchrun worker of the FSDP tests: shard a config's model one unit per wrap-policy class, on CPU, and compare it
with an unsharded copy.

Lightning's ``FSDPStrategy`` (FSDP1) refuses CPU, and so does FSDP1 itself ("FSDP needs a non-CPU accelerator
device"), but FSDP2's ``fully_shard`` runs on gloo. So this worker takes the config's strategy section as Lightning
would parse it (``auto_wrap_policy`` and ``activation_checkpointing_policy``: sets of module classes), applies the same
units with ``fully_shard`` (activation checkpointing first, as torch recommends), runs one forward/backward/SGD step
on its half of a global batch, and checks the sharded gradients and weights against an unsharded copy of the model
that runs the whole batch with the PyTorch reference kernels.

    torchrun --standalone --nproc_per_node=2 fsdp_worker.py SPEC.json

SPEC: ``{"config": YAML path, "model": {init_args overrides}, "batch": torch.save'd (inputs, labels), "out": path}``.
Rank 0 writes ``out`` as JSON (see :func:`main`).
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn

POLICY_KEYS = ("auto_wrap_policy", "activation_checkpointing_policy")


def _config(path: str | Path) -> dict:
    text = Path(path).read_text()
    config = yaml.safe_load(text)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a YAML mapping, got {type(config).__name__}")
    return config


def strategy_policies(config_path: str | Path) -> dict[str, set[type]]:
    """The config's ``trainer.strategy`` wrap policies as Lightning receives them: ``{key: set of classes}``.

    Parsed by jsonargparse against ``FSDPStrategy.__init__``'s signature, as ``mamba-suite fit`` does; a policy the
    config does not set maps to an empty set. Raises ValueError when the strategy is not given as a class_path.
    """
    from jsonargparse import ArgumentParser
    from pytorch_lightning.strategies import Strategy

    strategy = _config(config_path).get("trainer", {}).get("strategy")
    if not isinstance(strategy, dict) or "class_path" not in strategy:
        raise ValueError(f"{config_path}: trainer.strategy must be a class_path/init_args mapping, got {strategy!r}")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--strategy", type=Strategy)
    init_args = parser.parse_object({"strategy": strategy}).strategy.init_args
    policies = {}
    for key in POLICY_KEYS:
        value = init_args.get(key)
        if value is not None and not isinstance(value, set):
            raise ValueError(f"{config_path}: {key} should parse to a set of classes, got {value!r}")
        policies[key] = value or set()
    return policies


def build_model(config_path: str | Path, overrides: dict[str, Any]) -> nn.Module:
    """The config's LightningModule (``model:`` class_path/init_args, ``overrides`` replacing init_args keys)."""
    from jsonargparse import ArgumentParser
    from pytorch_lightning import LightningModule

    section = copy.deepcopy(_config(config_path)["model"])
    section.setdefault("init_args", {}).update(overrides)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--model", type=LightningModule)
    return parser.instantiate(parser.parse_object({"model": section})).model


def _use_reference_kernels(model: nn.Module) -> None:
    for module in model.modules():
        if hasattr(module, "backend"):
            module.backend = "reference"


def _clean(name: str) -> str:
    return name.replace("_checkpoint_wrapped_module.", "")


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (batch, classes) logits vs (batch,) labels, or (batch, L, vocab) vs (batch, L)."""
    if logits.dim() == 3:
        logits, labels = logits.flatten(0, 1), labels.flatten()
    return F.cross_entropy(logits.float(), labels)


def main(argv: list[str]) -> None:
    """Rank 0 writes ``{"world_size", "wrap_classes", "units", "checkpointed", "sharded_params", "missing_grads",
    "loss", "ref_loss", "grad_err", "grad_scale", "param_err", "param_change"}`` (errors: max abs difference to the
    unsharded reference; scale/change: max abs gradient and max abs weight update of the reference)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing
    from torch.distributed.fsdp import FSDPModule, fully_shard

    spec = json.loads(Path(argv[0]).read_text())
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    policies = strategy_policies(spec["config"])
    wrap, ckpt = tuple(policies["auto_wrap_policy"]), tuple(policies["activation_checkpointing_policy"])
    if not wrap:
        raise ValueError(f"{spec['config']}: the strategy sets no auto_wrap_policy")

    torch.manual_seed(0)
    model = build_model(spec["config"], spec["model"]).model  # the task's network: inputs -> logits
    reference = copy.deepcopy(model)
    _use_reference_kernels(reference)
    if ckpt:
        apply_activation_checkpointing(model, check_fn=lambda m: isinstance(m, ckpt))
    units = [m for m in model.modules() if isinstance(m, wrap)]
    for unit in units:
        fully_shard(unit)
    fully_shard(model)

    inputs, labels = torch.load(spec["batch"], weights_only=True)
    local_inputs, local_labels = inputs.chunk(world)[rank], labels.chunk(world)[rank]
    loss = _loss(model(local_inputs), local_labels)
    loss.backward()
    ref_loss = _loss(reference(inputs), labels)
    ref_loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    mean_loss /= world

    params = {_clean(n): p for n, p in model.named_parameters()}
    ref_params = dict(reference.named_parameters())
    if params.keys() != ref_params.keys():
        raise RuntimeError(f"parameter names differ after sharding: {sorted(params.keys() ^ ref_params.keys())}")
    missing, grad_err, grad_scale = [], 0.0, 0.0
    for name, p in params.items():  # same order on every rank: full_tensor() is a collective
        ref = ref_params[name]
        if p.grad is None or ref.grad is None:
            missing.append(name)
            continue
        grad_err = max(grad_err, (_full(p.grad) - ref.grad).abs().max().item())
        grad_scale = max(grad_scale, ref.grad.abs().max().item())

    before = {n: p.detach().clone() for n, p in ref_params.items()}
    for net in (model, reference):
        # Plain SGD: the update is lr * gradient, so a wrongly scaled or misplaced shard shows (Adam's first step
        # would hide a scale error).
        torch.optim.SGD(net.parameters(), lr=0.1).step()
    param_err = max((_full(p.detach()) - ref_params[n].detach()).abs().max().item() for n, p in params.items())
    change = max((ref_params[n].detach() - before[n]).abs().max().item() for n in params)
    sharded = sum(1 for p in params.values() if hasattr(p, "full_tensor") and p.to_local().numel() < p.numel())

    if rank == 0:
        result = {
            "world_size": world, "wrap_classes": sorted(f"{c.__module__}.{c.__qualname__}" for c in wrap),
            "units": sum(isinstance(m, FSDPModule) for m in units),
            "checkpointed": sum(type(m).__name__ == "CheckpointWrapper" for m in model.modules()),
            "sharded_params": sharded, "missing_grads": missing, "loss": mean_loss.item(),
            "ref_loss": ref_loss.item(), "grad_err": grad_err, "grad_scale": grad_scale, "param_err": param_err,
            "param_change": change,
        }
        Path(spec["out"]).write_text(json.dumps(result, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
    # Leave without the interpreter's teardown: in about 1 run in 12 here a gloo rank aborted there ("terminate
    # called without an active exception", SIGABRT, pytorch/pytorch#179291) after all its work was done; with this
    # direct exit, 0 in 60.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
