"""Image classification data: one ImageFolder loader for the embedded default and for user data.

* "digits" (default): scikit-learn's `load_digits` (1797 real 8x8 handwritten digits, shipped with
  scikit-learn, no download) is written once as a PNG ImageFolder tree (`train/<class>/*.png`,
  `val/<class>/*.png`, stratified 80/20 split, seed 0) under `cache_dir`, then read back exactly
  like a user's folder.
* "imagefolder": `data_dir/train/<class>/*` and `data_dir/val/<class>/*` (torchvision ImageFolder).
* "cifar10" / "cifar100": the extracted python archives (`cifar-10-batches-py/` or
  `cifar-100-python/`) in `data_dir` (never downloads). The batches are pickles; they are read
  with an unpickler that only allows numpy's array-rebuilding globals.

Transforms are timm's `create_transform` (RandomResizedCrop + optional flip / AutoAugment /
RandomErasing for training; resize + centre crop for evaluation). Batches are
(images (B, 3, img_size, img_size) float32 normalised, labels (B,) int64).
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mambasuite.core.resumable import ResumableDataLoader

__all__ = ["CifarDataset", "ImageDataModule", "load_rgb", "write_digits_imagefolder"]

_DONE = ".complete"


def load_rgb(path: str) -> Image.Image:
    """Open an image file as RGB; raises ValueError naming the file if it is unreadable or corrupt."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as err:  # PIL raises OSError, SyntaxError, struct.error, DecompressionBombError, ...
        raise ValueError(f"cannot read image file {path}: {type(err).__name__}: {err}") from err


def write_digits_imagefolder(root: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0) -> Path:
    """Write scikit-learn's digits as `root/train/<0-9>/*.png` and `root/val/<0-9>/*.png` (once).

    8x8 grey images, pixel = value * 255 / 16. A finished tree is marked with a `.complete` file;
    the tree is built in a temporary sibling folder and renamed, so an interrupted run never leaves a
    half-written cache. Returns `root`.
    """
    root = Path(root).expanduser()
    if (root / _DONE).is_file():
        return root
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)
    idx = np.arange(len(images))
    train_idx, val_idx = train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=digits.target)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp", dir=root.parent))
    for split, ids in (("train", train_idx), ("val", val_idx)):
        for i in ids:
            folder = tmp / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], mode="L").save(folder / f"{i:04d}.png")
    (tmp / _DONE).write_text("scikit-learn load_digits, stratified split, seed %d\n" % seed)
    try:
        tmp.rename(root)
    except OSError:
        if (root / _DONE).is_file():  # another process (a DDP rank) finished first: keep its tree
            shutil.rmtree(tmp, ignore_errors=True)
            return root
        shutil.rmtree(root)  # a stale tree without the completion mark (never one of ours: we rename whole trees)
        tmp.rename(root)
    return root


def _image_folder(path: Path, transform) -> Dataset:
    from torchvision.datasets import ImageFolder

    if not path.is_dir():
        raise FileNotFoundError(f"image folder not found: {path} (expected {path}/<class name>/<image files>)")
    try:
        return ImageFolder(str(path), transform=transform, loader=load_rgb)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"no class folders with images in {path}: {err}") from err


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR python batches: only numpy's array-rebuilding globals are allowed."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.numeric", "_frombuffer"),
               ("numpy._core.numeric", "_frombuffer"),
               ("_codecs", "encode")}  # how Python 3 pickles bytes at protocol <= 2

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def _read_cifar_file(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR batch file not found: {path}")
    try:
        with path.open("rb") as f:
            return _ArraysOnlyUnpickler(f, encoding="bytes").load()
    except Exception as err:  # refused globals, truncation (EOFError), garbage (any unpickling error)
        raise ValueError(f"cannot read CIFAR batch file {path}: {type(err).__name__}: {err}") from err


def _check_cifar_batch(path: Path, batch, label_key: bytes) -> dict:
    """The batch dict if it has uint8 `data` (n, 3072) and n integer labels; ValueError naming `path` otherwise."""
    import numpy as np

    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(label_key) if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        seen = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"CIFAR batch file {path}: expected b'data' as a uint8 array (n, 3072), got {seen}")
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != data.shape[0]:
        raise ValueError(f"CIFAR batch file {path}: expected {data.shape[0]} labels under {label_key!r}, got "
                         f"{len(labels) if isinstance(labels, (list, np.ndarray)) else type(labels).__name__}")
    if not all(isinstance(t, (int, np.integer)) for t in labels):
        raise ValueError(f"CIFAR batch file {path}: labels under {label_key!r} must be integers")
    return batch


class CifarDataset(Dataset):
    """CIFAR-10/100 from the extracted python archive (`cifar-10-batches-py/` or `cifar-100-python/`).

    Items are (transform(PIL RGB 32x32 image), label int); `classes` lists the class names
    (CIFAR-100: the 100 fine labels).
    """

    def __init__(self, root: str | os.PathLike, name: str, train: bool, transform=None) -> None:
        import numpy as np

        root = Path(root)
        if name == "cifar10":
            folder = root / "cifar-10-batches-py"
            files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
            meta, label_key, names_key = "batches.meta", b"labels", b"label_names"
        else:
            folder = root / "cifar-100-python"
            files = ["train" if train else "test"]
            meta, label_key, names_key = "meta", b"fine_labels", b"fine_label_names"
        if not folder.is_dir():
            raise FileNotFoundError(f"{name}: expected the extracted python archive folder {folder}")
        batches = [_check_cifar_batch(folder / f, _read_cifar_file(folder / f), label_key) for f in files]
        self.images = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        self.targets = [int(t) for b in batches for t in b[label_key]]
        meta_dict = _read_cifar_file(folder / meta)
        names = meta_dict.get(names_key) if isinstance(meta_dict, dict) else None
        if not isinstance(names, list) or not all(isinstance(c, bytes) for c in names):
            raise ValueError(f"CIFAR meta file {folder / meta} has no list of class names under {names_key!r}")
        self.classes = [c.decode() for c in names]
        bad = sorted({t for t in self.targets if not 0 <= t < len(self.classes)})
        if bad:
            raise ValueError(f"CIFAR batches in {folder} hold labels {bad[:5]} outside 0..{len(self.classes) - 1}")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.images[i])
        return (self.transform(img) if self.transform else img), self.targets[i]


class ImageDataModule(pl.LightningDataModule):
    """Image classification DataModule (see the module docstring for the datasets).

    Args:
        dataset: "digits" | "imagefolder" | "cifar10" | "cifar100".
        data_dir: root of the user's data (required unless dataset="digits").
        cache_dir: where the digits ImageFolder tree is written (default ~/.cache/mambasuite/digits).
        img_size: side of the square model input (images are resized/cropped to it).
        batch_size, num_workers: DataLoader settings (eval batches use batch_size as well).
        scale, ratio: RandomResizedCrop ranges for training. hflip: horizontal flip probability.
        auto_augment: timm AutoAugment / RandAugment string (e.g. "rand-m9-mstd0.5-inc1") or None.
        re_prob: RandomErasing probability. crop_pct: centre-crop fraction for evaluation.
        interpolation: resize interpolation. mean, std: normalisation (default ImageNet's).
        drop_last: drop the last incomplete training batch (Mixup needs even batch sizes).
    """

    def __init__(self, dataset: Literal["digits", "imagefolder", "cifar10", "cifar100"] = "digits",
                 data_dir: str | None = None, cache_dir: str = "~/.cache/mambasuite/digits", img_size: int = 32,
                 batch_size: int = 64, num_workers: int = 0, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), hflip: float = 0.5, auto_augment: str | None = None,
                 re_prob: float = 0.0, crop_pct: float = 0.875, interpolation: str = "bicubic",
                 mean: tuple[float, ...] = (0.485, 0.456, 0.406), std: tuple[float, ...] = (0.229, 0.224, 0.225),
                 drop_last: bool = True) -> None:
        super().__init__()
        if dataset not in ("digits", "imagefolder", "cifar10", "cifar100"):
            raise ValueError(f"dataset must be 'digits', 'imagefolder', 'cifar10' or 'cifar100', got {dataset!r}")
        if dataset != "digits" and not data_dir:
            raise ValueError(f"dataset={dataset!r} needs data_dir (the folder holding the data)")
        if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
            raise ValueError(f"img_size must be a positive int, got {img_size!r}")
        self.save_hyperparameters()
        self.train_set = self.val_set = None

    @property
    def root(self) -> Path:
        """The folder the data is read from."""
        hp = self.hparams
        return Path(hp.cache_dir if hp.dataset == "digits" else hp.data_dir).expanduser()

    def _transform(self, training: bool):
        from timm.data import create_transform

        hp = self.hparams
        if training:
            return create_transform(hp.img_size, is_training=True, scale=tuple(hp.scale), ratio=tuple(hp.ratio),
                                    hflip=hp.hflip, auto_augment=hp.auto_augment, re_prob=hp.re_prob,
                                    interpolation=hp.interpolation, mean=tuple(hp.mean), std=tuple(hp.std))
        return create_transform(hp.img_size, is_training=False, crop_pct=hp.crop_pct, interpolation=hp.interpolation,
                                mean=tuple(hp.mean), std=tuple(hp.std))

    def prepare_data(self) -> None:
        if self.hparams.dataset == "digits":
            write_digits_imagefolder(self.root)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        if hp.dataset == "digits":
            write_digits_imagefolder(self.root)  # no-op when prepare_data already ran
        if hp.dataset in ("cifar10", "cifar100"):
            self.train_set = CifarDataset(self.root, hp.dataset, True, self._transform(True))
            self.val_set = CifarDataset(self.root, hp.dataset, False, self._transform(False))
        else:
            self.train_set = _image_folder(self.root / "train", self._transform(True))
            self.val_set = _image_folder(self.root / "val", self._transform(False))
            if self.train_set.classes != self.val_set.classes:
                raise ValueError(f"class folders differ between {self.root / 'train'} ({self.train_set.classes}) "
                                 f"and {self.root / 'val'} ({self.val_set.classes})")

    @property
    def num_classes(self) -> int:
        """Number of classes (after setup)."""
        if self.train_set is None:
            self.setup()
        return len(self.train_set.classes)

    @property
    def classes(self) -> list[str]:
        """Class names in label order (after setup)."""
        if self.train_set is None:
            self.setup()
        return list(self.train_set.classes)

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        hp = self.hparams
        common = dict(batch_size=hp.batch_size, num_workers=hp.num_workers, persistent_workers=hp.num_workers > 0,
                      pin_memory=torch.cuda.is_available())
        if train:  # order, position and per-image augmentation seeds resume from checkpoints
            return ResumableDataLoader(dataset, shuffle=True, drop_last=hp.drop_last, **common)
        return DataLoader(dataset, shuffle=False, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)
