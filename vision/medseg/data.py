"""Medical Segmentation Decathlon data through MONAI: one pipeline for the synthetic default and real tasks.

`dataset.json` (MSD layout: `labels`, `training: [{image, label}]`, optional `test`, optional
`validation`) is read with `monai.data.load_decathlon_datalist`. Before anything is cached, every case
is checked from its NIfTI header (file exists and is readable, image and label spatial shapes agree,
the label has the task's dimensionality) and every problem raises an error naming the file.

Transforms (MONAI dictionary transforms, keys "image" and "label"):

* shared: LoadImaged -> EnsureChannelFirstd -> Orientationd (axcodes) -> Spacingd (pixdim; bilinear
  image, nearest label) -> ScaleIntensityRanged (a_min..a_max -> b_min..b_max) -> CropForegroundd;
* training adds SpatialPadd (to the patch) -> RandCropByPosNegLabeld (num_samples patches per case)
  -> RandFlipd on every axis -> RandRotate90d (first two axes);
* validation / test use the whole (preprocessed) volume: the task runs sliding-window inference.

The deterministic prefix is cached in memory by `CacheDataset`. Batches are dicts with "image"
(B, C, *S) float32 and "label" (B, 1, *S) float32 MetaTensors (affine and the applied transforms in
their metadata, which `Invertd` uses to map predictions back to the input's space).

The training loader is a `ResumableDataLoader`: its order and position are saved in checkpoints, and the
random transforms of each case are reseeded from (seed, epoch, case), so a resumed run draws the same
patches and flips as an uninterrupted one, whatever the worker count.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, MapTransform
from torch.utils.data import Dataset

from mambasuite.core.resumable import ResumableDataLoader

from .synthetic import SYNTHETIC_DEFAULTS, write_synthetic_decathlon

__all__ = ["CaseCompose", "CaseError", "DecathlonDataModule", "ReseededTransforms", "build_transforms",
           "check_cases", "read_dataset_json"]

KEYS = ("image", "label")
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # explicit: MONAI 1.6 changed Orientationd's default


class CaseError(ValueError):
    """A case's file cannot be used (unreadable data, bad label values); the message names the file."""


_LABEL_ID = re.compile(r"0|[1-9][0-9]*")  # canonical decimals only: "01", " 1", "¹" would not round-trip


def _is_path(value) -> bool:
    return isinstance(value, str) and bool(value.strip()) and "\x00" not in value


def _check_items(path: Path, key: str, items, need_label: bool) -> None:
    """Each item of a dataset.json list is {image: path, label: path} (test lists: paths, or {image} objects)."""
    if not isinstance(items, list) or (key == "training" and not items):
        what = "{image, label} objects" if need_label else "paths or {image} objects"
        raise ValueError(f"{path}: {key!r} must be a {'non-empty ' if key == 'training' else ''}list of {what}, "
                         f"got {type(items).__name__}")
    if not need_label and len({isinstance(item, str) for item in items}) > 1:  # MONAI reads one form or the other
        raise ValueError(f"{path}: {key!r} must list either paths or {{image}} objects, not both")
    for i, item in enumerate(items):
        if not need_label and _is_path(item):
            continue
        if not isinstance(item, dict) or "image" not in item or (need_label and "label" not in item):
            raise ValueError(f"{path}: {key}[{i}] " + ("must have 'image' and 'label' entries" if need_label else
                                                       "must be a path or have an 'image' entry")
                             + f", got {str(item)[:80]}")
        if not _is_path(item["image"]):  # one file per image; modalities are its trailing channel axis
            raise ValueError(f"{path}: {key}[{i}]['image'] must be a non-empty path (one NIfTI file, modalities "
                             f"stacked on its last axis), got {str(item['image'])[:80]}")
        if "label" in item and not _is_path(item["label"]):
            raise ValueError(f"{path}: {key}[{i}]['label'] must be a non-empty path, got {str(item['label'])[:80]}")


def read_dataset_json(path: str | Path) -> dict:
    """Parse an MSD `dataset.json` and check the keys the pipeline needs: "labels" ({"0": name, ..., "K-1": name}),
    "training" ({image, label} items), optional "validation" (same) and "test" (paths or {image} items).
    Raises FileNotFoundError / ValueError naming `path`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset.json not found: {path}")
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    except RecursionError:
        raise ValueError(f"{path} is not valid JSON: nested too deeply") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(meta).__name__}")
    missing = [k for k in ("labels", "training") if k not in meta]
    if missing:
        raise ValueError(f"{path} is missing the key(s) {missing} (Decathlon layout: labels, training, ...)")
    if not isinstance(meta["labels"], dict) or not meta["labels"]:
        raise ValueError(f"{path}: 'labels' must be a non-empty object {{\"0\": \"background\", ...}}")
    keys = list(meta["labels"])
    if not all(_LABEL_ID.fullmatch(k) for k in keys) or sorted(map(int, keys)) != list(range(len(keys))):
        raise ValueError(f"{path}: 'labels' keys must be the integers 0..K-1, got {keys[:10]}")
    _check_items(path, "training", meta["training"], need_label=True)
    for key, need_label in (("validation", True), ("test", False)):
        if meta.get(key) is not None:  # null counts as absent, as in the data module
            _check_items(path, key, meta[key], need_label)
    return meta


def _header(path: str):
    import nibabel as nib

    if not Path(path).is_file():
        raise FileNotFoundError(f"NIfTI file not found: {path}")
    try:
        image = nib.load(path)
        affine = image.affine  # computed from the qform/sform fields, which a corrupt header may garble
    except Exception as err:  # nibabel raises ImageFileError, OSError, EOFError, ... for corrupt files
        raise ValueError(f"cannot read NIfTI file {path}: {err}") from err
    if affine is None or not np.isfinite(affine).all():
        raise ValueError(f"NIfTI file {path} has a non-finite affine (corrupt qform/sform or pixdim)")
    return image


def check_cases(cases: Sequence[dict], spatial_dims: int) -> int:
    """Check each case from its NIfTI headers; return the image channel count (all cases must agree).

    Raises FileNotFoundError for a missing file and ValueError (naming the files) for an unreadable
    header, a label that is not `spatial_dims`-D, image/label spatial shape mismatch, or images whose
    channel counts differ.
    """
    channels = None
    for case in cases:
        image = _header(case["image"])
        shape = tuple(image.shape)
        if len(shape) not in (spatial_dims, spatial_dims + 1):
            raise ValueError(f"image {case['image']} has shape {shape}; expected {spatial_dims} spatial dims "
                             f"(+ an optional trailing channel axis)")
        n = shape[spatial_dims] if len(shape) > spatial_dims else 1
        if channels is not None and n != channels:
            raise ValueError(f"image {case['image']} has {n} channels, other cases have {channels}")
        channels = n
        if "label" in case:
            label_shape = tuple(_header(case["label"]).shape)
            squeezed = label_shape[:spatial_dims] + tuple(s for s in label_shape[spatial_dims:] if s != 1)
            if len(squeezed) != spatial_dims:
                raise ValueError(f"label {case['label']} has shape {label_shape}; expected {spatial_dims}-D")
            if squeezed != shape[:spatial_dims]:
                raise ValueError(f"image/label shape mismatch: {case['image']} is {shape[:spatial_dims]} but "
                                 f"{case['label']} is {squeezed}")
    return channels or 1


class _CheckedLoadd(MapTransform):
    """LoadImaged + EnsureChannelFirstd that names the file in every read error, and checks label values.

    A deterministic MONAI transform (so CacheDataset caches its output): payload errors (truncated or
    corrupt data) become CaseError("cannot read NIfTI file <path>: ..."), label values outside 0..num_classes-1 become
    CaseError naming the label file.
    """

    def __init__(self, keys: Sequence[str], num_classes: int) -> None:
        super().__init__(keys)
        self.num_classes = num_classes
        self.load = {k: LoadImaged(k, image_only=True) for k in self.keys}
        self.channel_first = EnsureChannelFirstd(self.keys)

    def __call__(self, data: dict) -> dict:
        data = dict(data)
        for key in self.keys:
            if key not in data:
                continue
            try:
                data = self.load[key](data)
            except Exception as err:  # noqa: BLE001 - reader errors vary by format and library
                raise CaseError(f"cannot read NIfTI file {data[key]}: {err}") from err
        data = self.channel_first(data)
        if "label" in data:
            label = data["label"]
            low, high = float(label.min()), float(label.max())
            if low < 0 or high > self.num_classes - 1 or not np.allclose(label.numpy(), np.round(label.numpy())):
                raise CaseError(f"label {label.meta.get('filename_or_obj')} has values in [{low}, {high}]; expected "
                                 f"integers 0..{self.num_classes - 1} (dataset.json lists {self.num_classes} labels)")
        return data


def _unwrap_case_error(err: BaseException) -> BaseException:
    """MONAI wraps transform errors in RuntimeError("applying transform ..."); return the CaseError inside."""
    inner = err
    while inner.__cause__ is not None:
        inner = inner.__cause__
        if isinstance(inner, CaseError):
            return inner
    return err


def _case_files(data) -> str:
    """The file names of a case dict: the paths before loading, MetaTensor metadata after."""
    names = []
    for key in KEYS:
        value = data.get(key) if isinstance(data, dict) else None
        if value is None and isinstance(data, list) and data:  # num_samples patches of one case
            return _case_files(data[0])
        if isinstance(value, str):
            names.append(value)
        elif getattr(value, "meta", None) is not None and value.meta.get("filename_or_obj"):
            names.append(str(value.meta["filename_or_obj"]))
    return ", ".join(names) or "(unknown files)"


class CaseCompose(Compose):
    """MONAI `Compose` whose failures name the case's files.

    MONAI reports a failing transform as RuntimeError("applying transform <object at 0x...>"), which does not
    say which case was at fault; this re-raises any error as a CaseError "case <image>, <label>: <cause>" (a
    CaseError raised inside, e.g. by the loader, passes through as it is). Inversion (`Invertd`) is unchanged.
    """

    def __call__(self, data, *args, **kwargs):
        try:
            return super().__call__(data, *args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any transform can fail on a hostile file; name the case
            inner = _unwrap_case_error(err)
            if isinstance(inner, CaseError):
                raise inner from err
            cause = err
            while cause.__cause__ is not None:
                cause = cause.__cause__
            raise CaseError(f"case {_case_files(data)}: {type(cause).__name__}: {str(cause)[:300]}") from err


def build_transforms(train: bool, *, spatial_dims: int, num_classes: int, axcodes: str | None,
                     pixdim: Sequence[float] | None, a_min: float, a_max: float, b_min: float, b_max: float,
                     clip: bool, crop_foreground: bool, patch_size: Sequence[int], num_samples: int,
                     pos: float, neg: float, flip_prob: float, rot90_prob: float, keys: Sequence[str] = KEYS):
    """The MONAI Compose (a CaseCompose) for training (random patches) or evaluation (whole volumes); see the
    module doc."""
    from monai import transforms as T

    keys = tuple(keys)
    interp = tuple("bilinear" if k == "image" else "nearest" for k in keys)
    steps = [_CheckedLoadd(keys, num_classes)]
    if axcodes:
        steps.append(T.Orientationd(keys, axcodes=axcodes, labels=RAS_LABELS))
    if pixdim:
        steps.append(T.Spacingd(keys, pixdim=tuple(pixdim), mode=interp))
    steps.append(T.ScaleIntensityRanged("image", a_min=a_min, a_max=a_max, b_min=b_min, b_max=b_max, clip=clip))
    if crop_foreground:
        steps.append(T.CropForegroundd(keys, source_key="image", allow_smaller=True))
    if train:
        steps += [
            T.SpatialPadd(keys, spatial_size=tuple(patch_size)),
            T.RandCropByPosNegLabeld(keys, label_key="label", spatial_size=tuple(patch_size), pos=pos, neg=neg,
                                     num_samples=num_samples, image_key="image", image_threshold=b_min),
            *(T.RandFlipd(keys, prob=flip_prob, spatial_axis=a) for a in range(spatial_dims)),
            T.RandRotate90d(keys, prob=rot90_prob, max_k=3, spatial_axes=(0, 1)),
        ]
    steps.append(T.EnsureTyped(keys, dtype=np.float32, track_meta=True))
    return CaseCompose(steps)


class ReseededTransforms(Dataset):
    """A MONAI dataset whose random transforms are reseeded from NumPy's global generator before each item.

    MONAI's Rand* transforms draw from their own `RandomState`s, not from the global generators that
    `ResumableDataLoader` seeds per sample; this makes them follow that seed, so item `i` of a given
    (seed, epoch) always gets the same patches and flips.

    Args:
        dataset: a MONAI `Dataset` / `CacheDataset` with a `transform` (a `Compose`).
    """

    def __init__(self, dataset) -> None:
        if not callable(getattr(getattr(dataset, "transform", None), "set_random_state", None)):
            raise TypeError(f"ReseededTransforms needs a MONAI dataset whose transform has set_random_state, "
                            f"got {type(dataset).__name__}")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        # uint32 range: what MONAI's set_random_state accepts
        self.dataset.transform.set_random_state(seed=int(np.random.randint(0, 2**32, dtype=np.uint64)))
        return self.dataset[index]


class DecathlonDataModule(pl.LightningDataModule):
    """MSD-layout segmentation data (synthetic by default) with MONAI transforms and CacheDataset.

    Args:
        data_dir: folder holding `dataset_json` (e.g. `.../Task09_Spleen`); None = the synthetic task,
            generated once under `cache_dir` (options in `synthetic`, see `write_synthetic_decathlon`).
        dataset_json: file name (or absolute path) of the task description.
        spatial_dims: 2 or 3.
        val_key: list in dataset.json used for validation when present (MONAI's BTCV json has
            "validation"); otherwise `val_frac` of "training" is held out, chosen with `split_seed`.
        axcodes: Orientationd target ("RAS" for 3D, "RA" for 2D, None = keep). pixdim: Spacingd
            target voxel size (None = keep). a_min, a_max, b_min, b_max, clip: ScaleIntensityRanged
            (CT: the HU window). crop_foreground: CropForegroundd on image > b_min.
        patch_size: training patch (RandCropByPosNegLabeld) and the task's sliding-window ROI.
        num_samples, pos, neg: patches per case and the foreground / background centre ratio.
        flip_prob, rot90_prob: augmentation probabilities.
        batch_size: cases per training batch (each gives num_samples patches). num_workers: loader
            workers. cache_rate: fraction of cases cached after the deterministic transforms.
        seed: training order and augmentation seed (None = the run's `seed_everything`, else 0).
        synthetic: options for the synthetic task (merged over SYNTHETIC_DEFAULTS). cache_dir: its home.

    After `setup`: `num_classes` (labels in dataset.json, background included), `in_channels`,
    `class_names`, `train_files`, `val_files`, `test_files`, and `transforms(train, keys)` (the
    evaluation Compose is what `Invertd` inverts).
    """

    def __init__(self, data_dir: str | None = None, dataset_json: str = "dataset.json", spatial_dims: int = 3,
                 val_key: str | None = "validation", val_frac: float = 0.2, split_seed: int = 0,
                 axcodes: str | None = "RAS", pixdim: Sequence[float] | None = None, a_min: float = 0.0,
                 a_max: float = 1.0, b_min: float = 0.0, b_max: float = 1.0, clip: bool = True,
                 crop_foreground: bool = True, patch_size: Sequence[int] = (96, 96, 96), num_samples: int = 2,
                 pos: float = 1.0, neg: float = 1.0, flip_prob: float = 0.5, rot90_prob: float = 0.2,
                 batch_size: int = 2, num_workers: int = 0, cache_rate: float = 1.0,
                 synthetic: dict | None = None, cache_dir: str = "~/.cache/mambasuite/medseg",
                 seed: int | None = None) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        if len(patch_size) != spatial_dims:
            raise ValueError(f"patch_size must have {spatial_dims} entries, got {list(patch_size)}")
        if pixdim is not None and len(pixdim) != spatial_dims:
            raise ValueError(f"pixdim must have {spatial_dims} entries, got {list(pixdim)}")
        if axcodes is not None and len(axcodes) != spatial_dims:
            raise ValueError(f"axcodes must have {spatial_dims} letters, got {axcodes!r}")
        if not 0.0 < val_frac < 1.0:
            raise ValueError(f"val_frac must be in (0, 1), got {val_frac!r}")
        if data_dir is None and synthetic and synthetic.get("spatial_dims", 3) != spatial_dims:
            raise ValueError(f"synthetic.spatial_dims={synthetic['spatial_dims']} differs from "
                             f"spatial_dims={spatial_dims}")
        self.save_hyperparameters()
        self.num_classes = self.in_channels = None
        self.class_names: list[str] = []
        self.train_files: list[dict] = []
        self.val_files: list[dict] = []
        self.test_files: list[dict] = []

    # ---- locating and reading the task ------------------------------------------------------------

    def _synthetic_params(self) -> dict:
        return {**SYNTHETIC_DEFAULTS, "spatial_dims": self.hparams.spatial_dims, **(self.hparams.synthetic or {})}

    def task_dir(self) -> Path:
        """The folder of dataset.json: `data_dir`, or the synthetic task's cache folder (keyed by its options)."""
        if self.hparams.data_dir is not None:
            return Path(self.hparams.data_dir).expanduser()
        params = json.dumps(self._synthetic_params(), sort_keys=True, default=list)
        digest = hashlib.sha1(params.encode()).hexdigest()[:10]
        return Path(self.hparams.cache_dir).expanduser() / f"synthetic{self.hparams.spatial_dims}d_{digest}"

    def prepare_data(self) -> None:
        """Write the synthetic task once (no-op for real data)."""
        if self.hparams.data_dir is None:
            write_synthetic_decathlon(self.task_dir(), **self._synthetic_params())

    def _json_path(self) -> Path:
        path = Path(self.hparams.dataset_json).expanduser()
        return path if path.is_absolute() else self.task_dir() / path

    def setup(self, stage: str | None = None) -> None:
        """Read dataset.json, split, check every case's headers and build the cached datasets."""
        if self.num_classes is not None:
            return
        from monai.data import load_decathlon_datalist

        hp = self.hparams
        if hp.data_dir is not None and not self.task_dir().is_dir():
            raise FileNotFoundError(f"data_dir not found: {self.task_dir()} (expected the folder of {hp.dataset_json})")
        path = self._json_path()
        meta = read_dataset_json(path)
        self.num_classes = len(meta["labels"])
        self.class_names = [str(meta["labels"][str(i)]) for i in range(self.num_classes)]
        base = str(path.parent)
        cases = load_decathlon_datalist(str(path), True, "training", base_dir=base)
        if hp.val_key and meta.get(hp.val_key):
            self.train_files = cases
            self.val_files = load_decathlon_datalist(str(path), True, hp.val_key, base_dir=base)
        else:
            if len(cases) < 2:
                raise ValueError(f"{path}: need at least 2 training cases to hold out validation, got {len(cases)}")
            order = np.random.default_rng(hp.split_seed).permutation(len(cases))
            n_val = max(1, int(round(hp.val_frac * len(cases))))
            self.val_files = [cases[i] for i in sorted(order[:n_val])]
            self.train_files = [cases[i] for i in sorted(order[n_val:])]
        self.test_files = (load_decathlon_datalist(str(path), False, "test", base_dir=base)
                           if meta.get("test") else [])
        self.in_channels = check_cases(self.train_files + self.val_files + self.test_files, hp.spatial_dims)
        self._datasets = {"train": self._dataset(self.train_files, self.transforms(train=True)),
                          "val": self._dataset(self.val_files, self.transforms(train=False))}

    def transforms(self, train: bool, keys: Sequence[str] = KEYS):
        """The training (random patches) or evaluation (whole volume) Compose for `keys`; needs `setup`."""
        if self.num_classes is None:
            raise RuntimeError("DecathlonDataModule.transforms needs setup() first (it reads dataset.json)")
        hp = self.hparams
        return build_transforms(train, spatial_dims=hp.spatial_dims, num_classes=self.num_classes, axcodes=hp.axcodes,
                                pixdim=hp.pixdim, a_min=hp.a_min, a_max=hp.a_max, b_min=hp.b_min, b_max=hp.b_max,
                                clip=hp.clip, crop_foreground=hp.crop_foreground, patch_size=hp.patch_size,
                                num_samples=hp.num_samples, pos=hp.pos, neg=hp.neg, flip_prob=hp.flip_prob,
                                rot90_prob=hp.rot90_prob, keys=keys)

    def _dataset(self, files: list[dict], transform):
        from monai.data import CacheDataset

        try:
            return CacheDataset(files, transform, cache_rate=self.hparams.cache_rate, num_workers=None,
                                progress=False)
        except RuntimeError as err:  # surface "cannot read NIfTI file X" instead of "applying transform ..."
            inner = _unwrap_case_error(err)
            if inner is err:
                raise
            raise inner from err

    # ---- loaders ----------------------------------------------------------------------------------

    def _loader(self, dataset, batch_size: int, shuffle: bool):
        from monai.data import DataLoader

        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=self.hparams.num_workers,
                          persistent_workers=self.hparams.num_workers > 0)

    def train_dataloader(self):
        """Shuffled, resumable batches of random patches (see the module docstring)."""
        from monai.data import list_data_collate

        hp = self.hparams
        # list_data_collate flattens the num_samples patches of each case into the batch, as MONAI's DataLoader.
        return ResumableDataLoader(ReseededTransforms(self._datasets["train"]), batch_size=hp.batch_size,
                                   shuffle=True, seed=hp.seed, collate_fn=list_data_collate,
                                   num_workers=hp.num_workers, persistent_workers=hp.num_workers > 0)

    def val_dataloader(self):
        # Whole volumes differ in size after cropping: one case per batch.
        return self._loader(self._datasets["val"], 1, shuffle=False)

    def test_dataloader(self):
        """The held-out validation cases (MSD test lists have no labels)."""
        return self.val_dataloader()

    def predict_dataloader(self):
        """The unlabelled "test" list when dataset.json has one, else the validation cases (images only)."""
        from monai.data import Dataset

        files = self.test_files or [{"image": c["image"]} for c in self.val_files]
        return self._loader(Dataset(files, self.transforms(train=False, keys=("image",))), 1, shuffle=False)
