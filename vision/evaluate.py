"""`mamba-suite evaluate -c CONFIG --ckpt_path CKPT`: a classification report for a trained checkpoint.

Builds the config's model and data (the same YAML as `fit`, dotted overrides such as
`--data.init_args.data_dir=...` work), loads the Lightning checkpoint's weights strictly
(`safe_torch_load`: weights only, a pickle that would run code is refused), runs the validation split and
writes into `--out` (default `runs/<config stem>/eval/`; a folder that already holds a report is refused unless
`--overwrite=true`; every file is written atomically):

* `report.json`, `report.md`: top-1 / top-5, per-class accuracy, throughput (images/s of the model
  forward, data loading excluded), peak memory (CUDA: max allocated; CPU: the process's peak RSS),
  device, batch size, checkpoint and config paths;
* `confusion_matrix.png` (rows: true class, columns: predicted; counts).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from mambasuite.core.files import atomic_write
from ..core.evaluation import checkpoint_file, checkpoint_parser, load_trained_weights, report_folder

__all__ = ["REPORT_FILES", "evaluate", "main"]

REPORT_FILES = ("report.json", "report.md", "confusion_matrix.png")


def _parser():
    parser = checkpoint_parser("mamba-suite evaluate", __doc__.split("\n\n")[0], out_help="report folder")
    parser.add_argument("--ema", type=bool, default=False, help="evaluate the EMA weights (model.ema)")
    parser.add_argument("--max_batches", type=int | None, default=None, help="stop after this many batches")
    return parser


def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "CUDA max allocated"
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, "process peak RSS"


def evaluate(model: torch.nn.Module, loader, num_classes: int, device: torch.device,
             max_batches: int | None = None) -> dict:
    """Run `model` ((B, C, H, W) -> logits (B, num_classes)) over `loader` ((images, labels) batches).

    Returns a dict with top1, top5, per_class_accuracy (list), confusion (num_classes x num_classes
    list, rows = true class), n_images, images_per_second (model forward only) and peak memory.
    """
    model = model.to(device).eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    top5_hits, n, forward_s = 0, 0, 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        for i, (images, labels) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            images = images.to(device, non_blocking=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            logits = model(images)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            forward_s += time.perf_counter() - start
            logits = logits.float().cpu()
            pred = logits.argmax(dim=-1)
            confusion += torch.bincount(labels * num_classes + pred, minlength=num_classes ** 2).view(
                num_classes, num_classes)
            k = min(5, num_classes)
            top5_hits += (logits.topk(k, dim=-1).indices == labels[:, None]).any(dim=-1).sum().item()
            n += len(labels)
    if n == 0:
        raise ValueError("the evaluation loader produced no images")
    per_class = (confusion.diag().float() / confusion.sum(dim=1).clamp(min=1).float()).tolist()
    peak, peak_kind = _peak_memory_mb(device)
    return {"top1": confusion.diag().sum().item() / n, "top5": top5_hits / n, "n_images": n,
            "per_class_accuracy": per_class, "confusion": confusion.tolist(),
            "images_per_second": n / forward_s if forward_s > 0 else float("inf"),
            "peak_memory_mb": peak, "peak_memory_kind": peak_kind}


def _plot_confusion(confusion: list[list[int]], classes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = min(4 + 0.35 * len(classes), 30)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(confusion, cmap="Blues")
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=90, fontsize=8)
    ax.set_yticks(ticks, classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(classes) <= 30:  # counts are readable only for small matrices
        for r, row in enumerate(confusion):
            for c, v in enumerate(row):
                if v:
                    ax.text(c, r, str(v), ha="center", va="center", fontsize=7)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100))  # the temporary name keeps ".png"
    finally:
        plt.close(fig)


def _markdown(report: dict) -> str:
    lines = [f"# Evaluation of `{report['ckpt_path']}`", "",
             f"config `{report['config']}`, {report['n_images']} images, device {report['device']}, "
             f"batch size {report['batch_size']}", "",
             "| metric | value |", "|---|---|",
             f"| top-1 | {100 * report['top1']:.2f}% |", f"| top-5 | {100 * report['top5']:.2f}% |",
             f"| throughput (forward only) | {report['images_per_second']:.1f} img/s |",
             f"| peak memory ({report['peak_memory_kind']}) | {report['peak_memory_mb']:.0f} MiB |",
             "", "| class | accuracy |", "|---|---|"]
    lines += [f"| {c} | {100 * a:.2f}% |" for c, a in zip(report["classes"], report["per_class_accuracy"])]
    lines += ["", "![confusion matrix](confusion_matrix.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry (see the module docstring). Returns 0 and prints the report folder."""
    parser = _parser()
    cfg = parser.parse_args(argv)
    ckpt_path = checkpoint_file(parser, cfg)
    config_paths = [str(p) for p in (cfg.get("config") or [])]
    out = report_folder(parser, cfg, REPORT_FILES)
    init = parser.instantiate_classes(cfg)
    module, data = init.model, init.data
    load_trained_weights(parser, module, ckpt_path)
    net = module.ema.module if cfg.ema else module
    if cfg.ema and getattr(module, "ema", None) is None:
        parser.error("--ema: the model was not trained with ema_decay")
    data.prepare_data()
    data.setup("validate")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    classes = list(getattr(data, "classes", None) or range(module.hparams.num_classes))
    report = evaluate(net, data.val_dataloader(), len(classes), device, cfg.max_batches)
    report.update(ckpt_path=str(ckpt_path), config=", ".join(config_paths) or None, device=str(device),
                  batch_size=getattr(data.hparams, "batch_size", None), classes=[str(c) for c in classes],
                  ema=cfg.ema)
    _plot_confusion(report["confusion"], report["classes"], out / "confusion_matrix.png")
    atomic_write(out / "report.md", _markdown(report))
    atomic_write(out / "report.json", json.dumps(report, indent=2) + "\n")  # last: its presence means complete
    print(f"top-1 {100 * report['top1']:.2f}%  top-5 {100 * report['top5']:.2f}%  "
          f"({report['images_per_second']:.1f} img/s) -> {out}")
    return 0
