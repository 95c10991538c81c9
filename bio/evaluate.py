"""`mamba-suite evaluate -c CONFIG --ckpt_path CKPT`: a report for a trained DNA checkpoint.

Builds the config's model and data (the same YAML as `fit`; dotted overrides such as
`--data.init_args.gb_dir=...` work), loads the Lightning checkpoint's weights strictly (`safe_torch_load`:
weights only, a pickle that would run code is refused), runs one split (`--split`, default test) and writes
into `--out` (default `runs/<config stem>/eval/`; a folder that already holds a report is refused unless
`--overwrite=true`; every file is written atomically) `report.json` and `report.md`:

* `DNASequenceClassifier`: accuracy, per-class accuracy, macro F1, Matthews correlation (the Nucleotide
  Transformer tasks' metrics), AUROC (binary: of class 1; multiclass: macro one-vs-rest), RC consistency
  (share of sequences whose predicted class is unchanged when the input is reverse-complemented: 1.0 by
  construction for PS and conjoined Ph models), sequences/s of the forward, peak memory, and
  `confusion_matrix.png`;
* `DNAMaskedLM` / `DNACausalLM`: loss, perplexity and token accuracy (masked tokens with fixed masks, or
  next tokens), tokens/s, peak memory.

Variant-effect scoring and embedding export run through `mamba-suite predict` (configs/bio/variant_effect.yaml,
configs/bio/dna_embeddings.yaml).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..core.files import atomic_write
from ..core.evaluation import checkpoint_file, checkpoint_parser, load_trained_weights, report_folder

__all__ = ["REPORT_FILES", "evaluate_classifier", "evaluate_lm", "main"]

REPORT_FILES = ("report.json", "report.md", "confusion_matrix.png")


def _parser():
    parser = checkpoint_parser("mamba-suite evaluate", __doc__.split("\n\n")[0], out_help="report folder")
    parser.add_argument("--split", type=str, default="test", help="test | val")
    parser.add_argument("--max_batches", type=int | None, default=None, help="stop after this many batches")
    return parser


def _timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "CUDA max allocated"
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, "process peak RSS"


def evaluate_classifier(module, loader, num_classes: int, device: torch.device, max_batches: int | None = None) -> dict:
    """Run a DNASequenceClassifier over (input_ids (B, L), labels (B,)) batches; returns the report metrics."""
    from sklearn.metrics import f1_score, matthews_corrcoef, roc_auc_score

    module = module.to(device).eval()
    cmap = module.model.caduceus.complement_map
    labels, probs, rc_same, seconds = [], [], 0, 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        for i, (ids, y) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            ids = ids.to(device)
            logits, dt = _timed(lambda: module(ids), device)
            seconds += dt
            # RC of the real tokens only (left padding stays left): flip each row's non-pad suffix.
            rc = torch.stack([_rc_unpadded(row, cmap) for row in ids])
            rc_same += (module(rc).argmax(-1) == logits.argmax(-1)).sum().item()
            probs.append(logits.float().softmax(-1).cpu())
            labels.append(y)
    if not labels:
        raise ValueError("the evaluation loader produced no batches")
    p, y = torch.cat(probs), torch.cat(labels)
    pred = p.argmax(-1)
    confusion = torch.bincount(y * num_classes + pred, minlength=num_classes ** 2).view(num_classes, num_classes)
    present = sorted(set(y.tolist()))
    auroc = None
    if len(present) == num_classes:
        auroc = float(roc_auc_score(y, p[:, 1]) if num_classes == 2 else roc_auc_score(y, p, multi_class="ovr"))
    peak, kind = _peak_memory_mb(device)
    n = len(y)
    return {"accuracy": (pred == y).float().mean().item(), "n_sequences": n,
            "per_class_accuracy": (confusion.diag() / confusion.sum(1).clamp(min=1)).tolist(),
            "f1_macro": float(f1_score(y, pred, average="macro")), "mcc": float(matthews_corrcoef(y, pred)),
            "auroc": auroc, "rc_consistency": rc_same / n, "confusion": confusion.tolist(),
            "sequences_per_second": n / seconds if seconds > 0 else math.inf,
            "peak_memory_mb": peak, "peak_memory_kind": kind}


def _rc_unpadded(row: torch.Tensor, cmap: torch.Tensor) -> torch.Tensor:
    """Reverse complement of one (L,) id row's real tokens; its left padding stays on the left."""
    from .tokenizer import PAD_ID

    out = row.clone()
    keep = row != PAD_ID
    out[keep] = cmap[row[keep].flip(0)]
    return out


def evaluate_lm(module, loader, device: torch.device, max_batches: int | None = None) -> dict:
    """Run a DNAMaskedLM / DNACausalLM over (input_ids, _) batches: summed cross-entropy over scored tokens."""
    module = module.to(device).eval()
    loss_sum, correct, count, seconds, tokens = 0.0, 0, 0, 0.0, 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            ids = batch[0].to(device)
            gen = torch.Generator(device=device).manual_seed(1234 + i)  # fixed masks: reproducible reports
            (logits, targets), dt = _timed(lambda: module.logits_and_targets(ids, gen), device)
            seconds, tokens = seconds + dt, tokens + ids.numel()
            sel = targets != -100
            loss_sum += F.cross_entropy(logits.float()[sel], targets[sel], reduction="sum").item()
            correct += (logits.argmax(-1)[sel] == targets[sel]).sum().item()
            count += sel.sum().item()
    if count == 0:
        raise ValueError("the evaluation loader produced no scored tokens")
    peak, kind = _peak_memory_mb(device)
    loss = loss_sum / count
    return {"loss": loss, "perplexity": math.exp(loss), "token_accuracy": correct / count, "scored_tokens": count,
            "tokens_per_second": tokens / seconds if seconds > 0 else math.inf,
            "peak_memory_mb": peak, "peak_memory_kind": kind}


def _plot_confusion(confusion: list[list[int]], classes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3 + 0.5 * len(classes), 3 + 0.5 * len(classes)))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=90)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for r, row in enumerate(confusion):
        for c, v in enumerate(row):
            ax.text(c, r, str(v), ha="center", va="center", fontsize=8)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100))  # the temporary name keeps ".png"
    finally:
        plt.close(fig)


def _markdown(report: dict) -> str:
    head = [f"# Evaluation of `{report['ckpt_path']}`", "",
            f"config `{report['config']}`, split {report['split']}, device {report['device']}", "",
            "| metric | value |", "|---|---|"]
    skip = {"confusion", "per_class_accuracy", "classes", "ckpt_path", "config", "split", "device", "task"}
    rows = [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in report.items() if k not in skip]
    lines = head + rows
    if "per_class_accuracy" in report:
        lines += ["", "| class | accuracy |", "|---|---|"]
        lines += [f"| {c} | {100 * a:.2f}% |" for c, a in zip(report["classes"], report["per_class_accuracy"])]
        lines += ["", "![confusion matrix](confusion_matrix.png)"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """CLI entry (see the module docstring). Returns 0 and prints the report folder."""
    from .tasks import DNACausalLM, DNAMaskedLM, DNASequenceClassifier

    parser = _parser()
    cfg = parser.parse_args(argv)
    ckpt_path = checkpoint_file(parser, cfg)
    if cfg.split not in ("test", "val"):
        parser.error(f"--split must be 'test' or 'val', got {cfg.split!r}")
    config_paths = [str(p) for p in (cfg.get("config") or [])]
    out = report_folder(parser, cfg, REPORT_FILES)
    init = parser.instantiate_classes(cfg)
    module, data = init.model, init.data
    if not isinstance(module, (DNASequenceClassifier, DNAMaskedLM, DNACausalLM)):
        parser.error(f"no bio evaluator for {type(module).__name__}; use mamba-suite predict for "
                     f"embeddings and variant scores")
    load_trained_weights(parser, module, ckpt_path)
    data.prepare_data()
    data.setup("test" if cfg.split == "test" else "validate")
    loader = data.test_dataloader() if cfg.split == "test" else data.val_dataloader()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    meta = dict(task=type(module).__name__, ckpt_path=str(ckpt_path), config=", ".join(config_paths) or None,
                split=cfg.split, device=str(device))
    if isinstance(module, DNASequenceClassifier):
        n = module.hparams.num_classes
        report = {**meta, **evaluate_classifier(module, loader, n, device, cfg.max_batches)}
        report["classes"] = [str(c) for c in (getattr(data, "classes", None) or range(n))]
        _plot_confusion(report["confusion"], report["classes"], out / "confusion_matrix.png")
        line = f"accuracy {100 * report['accuracy']:.2f}%  MCC {report['mcc']:.3f}"
    else:
        report = {**meta, **evaluate_lm(module, loader, device, cfg.max_batches)}
        line = f"loss {report['loss']:.4f}  perplexity {report['perplexity']:.3f}"
    atomic_write(out / "report.md", _markdown(report))
    atomic_write(out / "report.json", json.dumps(report, indent=2) + "\n")  # last: its presence means complete
    print(f"{line} -> {out}")
    return 0
