"""`mamba-suite evaluate -c CONFIG --ckpt_path CKPT [--out DIR]`: segmentation masks, metrics and overlays.

Builds the config's model and data (the YAML used for `fit`; dotted overrides such as
`--data.init_args.data_dir=...` work), loads the Lightning checkpoint strictly (`safe_torch_load`:
weights only, a pickle that would run code is refused) and, for every case of the split (`--split val`: the
held-out labelled cases; `--split test`: dataset.json's unlabelled test list), runs the evaluation transforms,
sliding-window inference and argmax, then maps the mask back to the input's space with `Invertd`
(orientation, spacing and crop undone; nearest interpolation) and writes into `--out`
(default `runs/<config stem>/eval/`; a folder that already holds a report is refused unless `--overwrite=true`;
every file is written under a temporary name and renamed, so none is ever half-written):

* `masks/<case>_seg.nii.gz` (SaveImaged, uint8) with the input image's affine and shape;
* `metrics.csv`: per case and foreground class Dice, HD95 (mm) and surface Dice, computed in the
  input's space against the label file, and the case's mean Dice (labelled splits only);
* `summary.json`: means per class and overall, case count, timings, checkpoint and config;
* `overlays/<case>.png`: the middle slice (last axis) of image, ground truth and prediction.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from monai.data import NibabelWriter

from mambasuite.core.files import atomic_write

from .metrics import METRICS, case_metrics, spacing_from_affine
from ...core.evaluation import checkpoint_file, checkpoint_parser, load_trained_weights, report_folder

__all__ = ["REPORT_FILES", "evaluate_cases", "main"]

REPORT_FILES = ("metrics.csv", "summary.json", "masks/*_seg.nii.gz", "overlays/*.png")


def _parser():
    parser = checkpoint_parser("mamba-suite evaluate", __doc__.split("\n\n")[0], out_help="output folder")
    parser.add_argument("--split", type=str, default="val", help="val (labelled, held out) | test (unlabelled)")
    parser.add_argument("--max_cases", type=int | None, default=None, help="stop after this many cases")
    parser.add_argument("--overlays", type=bool, default=True, help="write PNG overlays")
    return parser


def _case_id(path: str) -> str:
    name = Path(path).name
    for ext in (".nii.gz", ".nii", ".gz"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def _overlay(image: np.ndarray, label: np.ndarray | None, pred: np.ndarray, num_classes: int, title: str,
             path: Path) -> None:
    """PNG of the middle slice along the last axis: image, ground truth (if any), prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def middle(a):
        return a[..., a.shape[-1] // 2] if a.ndim == 3 else a

    img = middle(image)
    panels = [("image", None)] + ([("ground truth", middle(label))] if label is not None else [])
    panels.append(("prediction", middle(pred)))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    cmap = plt.get_cmap("tab10", max(num_classes, 2))
    for ax, (name, mask) in zip(np.atleast_1d(axes), panels):
        ax.imshow(img.T, cmap="gray", origin="lower")  # transpose: array axis 0 runs left-right
        if mask is not None:
            ax.imshow(np.ma.masked_equal(mask.T, 0), cmap=cmap, vmin=0, vmax=max(num_classes - 1, 1), alpha=0.5,
                      origin="lower", interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80))  # the temporary name keeps ".png"
    finally:
        plt.close(fig)


class AtomicNibabelWriter(NibabelWriter):
    """MONAI's NibabelWriter, but the file appears complete or not at all (temporary name, then rename).

    nibabel picks the format from the file name, and `atomic_write`'s temporary name keeps only the last
    suffix (".gz"), so the image is saved under that name plus ".nii.gz" and moved onto it.
    """

    def write(self, filename, verbose: bool = False, **obj_kwargs) -> None:
        def save(tmp: Path) -> None:
            staged = tmp.with_name(tmp.name + ".nii.gz")
            try:
                NibabelWriter.write(self, staged, verbose=verbose, **obj_kwargs)
                os.replace(staged, tmp)
            finally:
                staged.unlink(missing_ok=True)

        atomic_write(filename, save)


def evaluate_cases(task, files: list[dict], transform, out: Path, num_classes: int, class_names: list[str],
                   device: torch.device, nsd_tolerance=2.0, overlays: bool = True) -> dict:
    """Predict, invert, save and score every case of `files` (see the module docstring).

    Args:
        task: a module with `infer(images (1, C, *S)) -> logits (1, K, *S)` (e.g. SegmentationTask).
        files: [{"image": path, "label": path (optional)}]; transform: the evaluation Compose for
            exactly those keys (Invertd inverts it). out: output folder. class_names: K names.
    Returns the summary dict (also written to summary.json).
    """
    from monai.data import MetaTensor
    from monai.transforms import Invertd, LoadImage, SaveImaged

    out = Path(out)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    if overlays:
        (out / "overlays").mkdir(exist_ok=True)
    invert = Invertd(keys="pred", transform=transform, orig_keys="image", nearest_interp=True, to_tensor=True)
    save = SaveImaged(keys="pred", output_dir=str(out / "masks"), output_postfix="seg", separate_folder=False,
                      resample=False, output_dtype=np.uint8, print_log=False, writer=AtomicNibabelWriter)
    load = LoadImage(image_only=True, ensure_channel_first=True)
    fg = [str(c) for c in class_names[1:]]
    rows, per_case, seconds = [], [], []
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu",
                                                                                                          enabled=False)
    task = task.to(device).eval()
    for item in files:
        start = time.perf_counter()
        data = transform(dict(item))
        with torch.no_grad(), autocast:
            logits = task.infer(data["image"][None].to(device))
        # (1, *S) in the preprocessed space; Invertd gives it the image's metadata and undoes its transforms
        data["pred"] = MetaTensor(logits.argmax(1).to(torch.uint8).cpu())
        data = invert(data)
        save(data)
        seconds.append(time.perf_counter() - start)
        case = _case_id(item["image"])
        pred = data["pred"]
        row = {"case": case, "image": item["image"], "seconds": round(seconds[-1], 3)}
        label = None
        if "label" in item:
            label = load(item["label"])
            if tuple(label.shape[1:]) != tuple(pred.shape[1:]):
                raise ValueError(f"inverted prediction {tuple(pred.shape[1:])} does not match label {item['label']} "
                                 f"{tuple(label.shape[1:])}")
            spacing = spacing_from_affine(label.affine, label.dim() - 1)
            scores = case_metrics(pred[None], label[None], num_classes, spacing, nsd_tolerance)
            per_case.append(torch.stack([scores[m][0] for m in METRICS]))
            for m in METRICS:
                row.update({f"{m}_{c}": float(v) for c, v in zip(fg, scores[m][0])})
            row["mean_dice"] = float(np.nanmean(scores["dice"][0].numpy())) if not scores["dice"].isnan().all() \
                else math.nan
        rows.append(row)
        if overlays:
            image = load(item["image"])[0].numpy()
            _overlay(image, None if label is None else label[0].numpy(), pred[0].numpy(), num_classes,
                     f"{case}" + (f"  mean Dice {row['mean_dice']:.3f}" if "mean_dice" in row else ""),
                     out / "overlays" / f"{case}.png")
    if rows:
        table_text = io.StringIO(newline="")
        writer = csv.DictWriter(table_text, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(out / "metrics.csv", table_text.getvalue())
    summary = {"n_cases": len(rows), "classes": list(class_names), "seconds_per_case": float(np.mean(seconds)) if
               seconds else None, "device": str(device), "masks": str(out / "masks")}
    if per_case:
        table = torch.stack(per_case).nanmean(dim=0)  # (metric, class), NaN cases ignored
        for i, m in enumerate(METRICS):
            summary[f"{m}_per_class"] = {c: _finite(v) for c, v in zip(fg, table[i].tolist())}
            summary[f"mean_{m}"] = _finite(float(table[i].nanmean()))
    atomic_write(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _finite(value: float) -> float | None:
    """JSON has no NaN: undefined means (every case empty) become null."""
    return None if math.isnan(value) else value


def main(argv: list[str] | None = None) -> int:
    """CLI entry (see the module docstring). Returns 0 and prints the output folder."""
    parser = _parser()
    cfg = parser.parse_args(argv)
    ckpt_path = checkpoint_file(parser, cfg)
    if cfg.split not in ("val", "test"):
        parser.error(f"--split must be 'val' or 'test', got {cfg.split!r}")
    config_paths = [str(p) for p in (cfg.get("config") or [])]
    out = report_folder(parser, cfg, REPORT_FILES)
    init = parser.instantiate_classes(cfg)
    task, data = init.model, init.data
    if not hasattr(task, "infer"):
        parser.error(f"model {type(task).__name__} has no infer(); use mambasuite.vision.medseg.tasks.SegmentationTask")
    load_trained_weights(parser, task, ckpt_path)
    data.prepare_data()
    data.setup("validate")
    if cfg.split == "val":
        files, keys = data.val_files, ("image", "label")
    else:
        files, keys = [{"image": f["image"]} for f in data.test_files], ("image",)
        if not files:
            parser.error("--split test: dataset.json has no 'test' list")
    files = files[: cfg.max_cases] if cfg.max_cases else files
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    summary = evaluate_cases(task, files, data.transforms(train=False, keys=keys), out, data.num_classes,
                             data.class_names, device, task.hparams.nsd_tolerance, cfg.overlays)
    summary.update(ckpt_path=str(ckpt_path), config=", ".join(config_paths) or None, split=cfg.split)
    atomic_write(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    dice = summary.get("mean_dice")
    print(f"{summary['n_cases']} cases" + (f", mean foreground Dice {dice:.4f}" if dice is not None else "")
          + f" -> {out}")
    return 0
