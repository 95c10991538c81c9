"""The embedded default data set: synthetic ball phantoms written once as a Medical Segmentation Decathlon task.

Each case comes from MONAI's `create_test_image_3d` (or `_2d`): `num_objs` random balls, each labelled
1..`num_classes` (later balls overwrite earlier ones), image = label value, then uniform noise combined
by max and the image rescaled to [0, 1]. With `noise_max` > 1 / num_classes the noise reaches the
intensity of class 1, so a voxel-wise threshold is not enough and the network has to use context.

The cases are written as NIfTI (nibabel) in the Decathlon layout -- `imagesTr/`, `labelsTr/`, `imagesTs/`
and a `dataset.json` -- with an LPS-like affine (negative x/y spacing, an offset origin), so that the
pipeline's `Orientationd("RAS")` really reorients and evaluation really has to invert it. The task is
built in a temporary sibling folder and renamed into place, so an interrupted run never leaves a
half-written cache, and later runs reuse it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["SYNTHETIC_DEFAULTS", "synthetic_affine", "write_synthetic_decathlon"]

SYNTHETIC_DEFAULTS = dict(spatial_dims=3, num_train=30, num_test=2, size=48, num_classes=3, num_objs=10,
                          rad_min=4, rad_max=11, noise_max=0.4, spacing=(1.5, 1.5, 2.0), seed=0)
_DONE = ".complete"


def synthetic_affine(spacing, origin_shift: float = 10.0) -> np.ndarray:
    """(4, 4) voxel-to-world affine with spacing `spacing` and flipped x/y axes (LPS-like), offset origin."""
    affine = np.eye(4)
    signs = (-1.0, -1.0, 1.0)
    for axis, s in enumerate(spacing):
        affine[axis, axis] = signs[axis] * float(s)
        affine[axis, 3] = origin_shift * (axis + 1)
    return affine


def _case(rng: np.random.RandomState, p: dict) -> tuple[np.ndarray, np.ndarray]:
    from monai.data.synthetic import create_test_image_2d, create_test_image_3d

    size = p["size"]
    common = dict(num_objs=p["num_objs"], rad_max=p["rad_max"], rad_min=p["rad_min"], noise_max=p["noise_max"],
                  num_seg_classes=p["num_classes"], random_state=rng)
    if p["spatial_dims"] == 3:
        return create_test_image_3d(size, size, size, **common)
    return create_test_image_2d(size, size, **common)


def _check_params(p: dict) -> None:
    unknown = set(p) - set(SYNTHETIC_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown synthetic data options {sorted(unknown)}; known: {sorted(SYNTHETIC_DEFAULTS)}")
    if p["spatial_dims"] not in (2, 3):
        raise ValueError(f"synthetic spatial_dims must be 2 or 3, got {p['spatial_dims']!r}")
    if len(p["spacing"]) < p["spatial_dims"]:
        raise ValueError(f"synthetic spacing needs {p['spatial_dims']} values, got {p['spacing']!r}")
    for key in ("num_train", "size", "num_classes", "num_objs"):
        if isinstance(p[key], bool) or not isinstance(p[key], int) or p[key] < 1:
            raise ValueError(f"synthetic {key} must be a positive int, got {p[key]!r}")
    if p["size"] <= 2 * p["rad_max"]:
        raise ValueError(f"synthetic size ({p['size']}) must exceed 2 * rad_max ({2 * p['rad_max']})")


def write_synthetic_decathlon(root: str | Path, **params) -> Path:
    """Write the synthetic task under `root` once (see the module docstring) and return `root`.

    Args (keyword, defaults in SYNTHETIC_DEFAULTS): spatial_dims 2 | 3; num_train labelled cases
    (training list) and num_test unlabelled ones (test list); size (side in voxels); num_classes
    foreground classes; num_objs, rad_min, rad_max: balls per case and their radii; noise_max:
    MONAI's noise level; spacing: voxel size in mm; seed: case i uses RandomState(seed * 100003 + i).
    """
    p = {**SYNTHETIC_DEFAULTS, **params}
    _check_params(p)
    root = Path(root).expanduser()
    if (root / _DONE).is_file():
        return root
    import nibabel as nib

    dims = p["spatial_dims"]
    affine = synthetic_affine(p["spacing"][:dims])
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp", dir=root.parent))
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (tmp / folder).mkdir()
    training, test = [], []
    for i in range(p["num_train"] + p["num_test"]):
        image, label = _case(np.random.RandomState(p["seed"] * 100003 + i), p)
        name = f"synth_{i:03d}.nii.gz"
        split = "imagesTr" if i < p["num_train"] else "imagesTs"
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), tmp / split / name)
        if i < p["num_train"]:
            nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), tmp / "labelsTr" / name)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            test.append(f"./imagesTs/{name}")
    labels = {"0": "background", **{str(c): f"class{c}" for c in range(1, p["num_classes"] + 1)}}
    meta = {
        "name": f"Synthetic{dims}D", "description": "MONAI create_test_image balls; generated by mamba-suite",
        "reference": "monai.data.synthetic", "licence": "CC0", "release": "1.0",
        "tensorImageSize": f"{dims}D", "modality": {"0": "synthetic"}, "labels": labels,
        "numTraining": len(training), "numTest": len(test), "training": training, "test": test,
        "generator": {k: list(v) if isinstance(v, tuple) else v for k, v in p.items()},
    }
    (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    (tmp / _DONE).write_text("complete\n")
    if (root / _DONE).is_file():  # another process finished while this one was writing
        shutil.rmtree(tmp, ignore_errors=True)
        return root
    if root.exists():  # a stale, unfinished tree (no marker) from an interrupted run
        shutil.rmtree(root)
    try:
        tmp.rename(root)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
        if not (root / _DONE).is_file():
            raise
    return root
