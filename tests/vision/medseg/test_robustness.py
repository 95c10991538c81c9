"""Reliability of the segmentation data path: the training loader resumes mid-epoch with the same patches, and bad
or hostile dataset.json and NIfTI files give an error naming the file; bounded hypothesis fuzz of the dataset.json
parser and of the NIfTI reading steps."""

from __future__ import annotations

import gzip
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mambasuite.vision.medseg.data import (CaseError, ReseededTransforms, _unwrap_case_error, build_transforms,
                                           check_cases, read_dataset_json)
from mambasuite.vision.medseg.synthetic import synthetic_affine

from .conftest import SMALL_3D, datamodule

# Bounded in CI; MAMBASUITE_FUZZ_EXAMPLES=4000 runs the larger sweep (same seed, more cases).
FUZZ = settings(max_examples=int(os.environ.get("MAMBASUITE_FUZZ_EXAMPLES", 50)), deadline=None, derandomize=True,
                database=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------- resumable loader
def _batches(loader, epoch: int, stop: int | None = None) -> list[dict]:
    loader.sampler.set_epoch(epoch)  # what Lightning does at every epoch start
    out = []
    for batch in loader:
        out.append({k: batch[k].as_tensor().clone() for k in ("image", "label")})
        if stop is not None and len(out) == stop:
            break
    return out


def _assert_same(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert torch.equal(g["image"], w["image"]) and torch.equal(g["label"], w["label"])


def test_train_loader_resumes_mid_epoch_with_the_same_patches(task3d):
    dm = datamodule(task3d, batch_size=1, seed=11)
    dm.setup("fit")
    reference = _batches(dm.train_dataloader(), epoch=2)
    assert len(reference) == 4 and reference[0]["image"].shape == (2, 1, 16, 16, 16)  # 2 patches per case
    first = dm.train_dataloader()
    head = _batches(first, epoch=2, stop=2)
    state = first.state_dict()
    assert (state["epoch"], state["batches"]) == (2, 2)
    fresh = datamodule(task3d, batch_size=1, seed=11)  # a restarted process: new module, new transforms
    fresh.setup("fit")
    resumed = fresh.train_dataloader()
    resumed.load_state_dict(state)
    _assert_same(head + [{k: b[k].as_tensor() for k in ("image", "label")} for b in resumed], reference)
    # The random crops / flips are drawn per (seed, epoch, case): another epoch gives other patches.
    other = _batches(dm.train_dataloader(), epoch=3)
    assert any(not torch.equal(o["image"], r["image"]) for o, r in zip(other, reference))


def test_train_patches_do_not_depend_on_the_worker_count(task3d):
    dm = datamodule(task3d, batch_size=2, seed=4)
    dm.setup("fit")
    in_process = _batches(dm.train_dataloader(), epoch=0)
    workers = datamodule(task3d, batch_size=2, seed=4, num_workers=2)
    workers.setup("fit")
    _assert_same(_batches(workers.train_dataloader(), epoch=0), in_process)


def test_reseeded_transforms_need_a_monai_dataset():
    with pytest.raises(TypeError, match="set_random_state"):
        ReseededTransforms([1, 2, 3])


# ------------------------------------------------------------------------------------------------ synthetic task
def test_interrupted_synthetic_task_leaves_nothing_behind(tmp_path, monkeypatch):
    import mambasuite.vision.medseg.synthetic as synthetic

    real_case, calls = synthetic._case, []

    def dies_on_the_third_case(rng, p):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # a user's Ctrl-C (or a kill) in the middle of writing the cases
        return real_case(rng, p)

    monkeypatch.setattr(synthetic, "_case", dies_on_the_third_case)
    with pytest.raises(KeyboardInterrupt):
        synthetic.write_synthetic_decathlon(tmp_path / "task", **{**SMALL_3D, "num_train": 4, "num_test": 0})
    assert list(tmp_path.iterdir()) == []  # neither the task folder nor the temporary sibling
    monkeypatch.setattr(synthetic, "_case", real_case)
    root = synthetic.write_synthetic_decathlon(tmp_path / "task", **{**SMALL_3D, "num_train": 4, "num_test": 0})
    assert len(read_dataset_json(root / "dataset.json")["training"]) == 4 and [p.name for p in tmp_path.iterdir()] == [
        "task"]


# --------------------------------------------------------------------------------------------------- dataset.json
def _valid_meta() -> dict:
    return {"labels": {"0": "background", "1": "organ"}, "training": [{"image": "./imagesTr/a.nii.gz",
                                                                       "label": "./labelsTr/a.nii.gz"}],
            "test": ["./imagesTs/b.nii.gz"]}


@pytest.mark.parametrize("content, message", [
    (b"", "is not valid JSON"),
    (json.dumps(_valid_meta()).replace("organ", "\u00e9").encode("latin-1"), "is not valid JSON"),
    (b"[" * 50_000, "is not valid JSON"),
    (b"[]", "must hold a JSON object"),
    (json.dumps({**_valid_meta(), "labels": {"0": "bg", "01": "organ"}}).encode(), "0..K-1"),
    (json.dumps({**_valid_meta(), "labels": {"0": "bg", "\u00b9": "organ"}}).encode(), "0..K-1"),
    (json.dumps({**_valid_meta(), "labels": {"0": "bg", " 1": "organ"}}).encode(), "0..K-1"),
    (json.dumps({**_valid_meta(), "training": [{"image": 5, "label": "x.nii.gz"}]}).encode(),
     r"training\[0\]\['image'\] must be a non-empty path"),
    (json.dumps({**_valid_meta(), "training": [{"image": "a.nii.gz", "label": ["x.nii.gz"]}]}).encode(),
     r"training\[0\]\['label'\] must be a non-empty path"),
    (json.dumps({**_valid_meta(), "training": [{"image": "a\u0000.nii.gz", "label": "x.nii.gz"}]}).encode(),
     r"training\[0\]\['image'\] must be a non-empty path"),
    (json.dumps({**_valid_meta(), "training": [{"image": ["a.nii.gz", "b.nii.gz"], "label": "x.nii.gz"}]}).encode(),
     r"training\[0\]\['image'\] must be a non-empty path \(one NIfTI file"),
    (json.dumps({**_valid_meta(), "test": "imagesTs/b.nii.gz"}).encode(), "'test' must be a list"),
    (json.dumps({**_valid_meta(), "test": [{"label": "b.nii.gz"}]}).encode(), r"test\[0\] must be a path"),
    (json.dumps({**_valid_meta(), "validation": {"image": "a"}}).encode(), "'validation' must be a"),
], ids=["empty", "latin-1", "deep nesting", "list", "leading zero", "superscript", "space", "image int",
        "label list", "nul", "image list", "test str", "test dict", "validation dict"])
def test_bad_dataset_json_names_the_file(tmp_path, content, message):
    path = tmp_path / "dataset.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"dataset.json.*{message}"):
        read_dataset_json(path)


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                  max_size=3),
                     max_leaves=8)
_PATHS = st.text(min_size=1, max_size=10)
_ITEMS = st.lists(st.fixed_dictionaries({"image": _PATHS, "label": _PATHS}), min_size=1, max_size=3)
_GOOD_META = st.fixed_dictionaries(
    {"labels": st.integers(1, 4).map(lambda k: {str(i): f"class{i}" for i in range(k)}), "training": _ITEMS},
    optional={"validation": _ITEMS, "test": st.lists(_PATHS | st.fixed_dictionaries({"image": _PATHS}), max_size=2),
              "name": st.text(max_size=6)})
_FIELDS = st.sampled_from(["labels", "training", "validation", "test"])


def _replace(meta: dict, key: str, value) -> dict:
    return {**meta, key: value}


def _replace_item_field(meta: dict, field: str, value) -> dict:
    training = [dict(item) for item in meta["training"]]
    training[0][field] = value
    return {**meta, "training": training}


# Valid tasks (so the checks after parsing run too), tasks with one list/field replaced by any JSON value, and any
# object at all.
_META = st.one_of(
    _GOOD_META,
    st.builds(_replace, _GOOD_META, _FIELDS, _JSON | st.lists(_JSON, max_size=3)),
    st.builds(_replace_item_field, _GOOD_META, st.sampled_from(["image", "label"]), _JSON),
    st.builds(_replace, _GOOD_META, st.just("labels"),
              st.dictionaries(st.sampled_from(["0", "1", "2", "01", "x", "-1", "\u00b2"]), _JSON, max_size=3)),
    st.dictionaries(st.text(max_size=8), _JSON, max_size=4))


@FUZZ
@given(meta=_META, cut=st.integers(0, 300), junk=st.binary(max_size=12))
def test_fuzz_dataset_json(tmp_path, meta, cut, junk):
    """Whatever the file holds, the parser either refuses it naming the file or returns a task that MONAI's list
    reader and the data module's label lookup accept."""
    from monai.data import load_decathlon_datalist

    text = json.dumps(meta).encode()
    for content in (text, text[:cut] + junk):
        path = tmp_path / "dataset.json"
        path.write_bytes(content)
        try:
            parsed = read_dataset_json(path)
        except ValueError as err:
            assert str(path) in str(err), err
            event("refused")
            continue
        event("accepted")
        assert [str(parsed["labels"][str(i)]) for i in range(len(parsed["labels"]))]
        assert len(load_decathlon_datalist(str(path), True, "training", base_dir=str(tmp_path))) == len(
            parsed["training"])
        if parsed.get("test"):
            load_decathlon_datalist(str(path), False, "test", base_dir=str(tmp_path))
        if parsed.get("validation"):
            load_decathlon_datalist(str(path), True, "validation", base_dir=str(tmp_path))


# ---------------------------------------------------------------------------------------------------------- NIfTI
def _nifti_bytes(gz: bool, size: int = 8) -> bytes:
    data = np.random.default_rng(0).random((size, size, size), dtype=np.float32)
    image = nib.Nifti1Image(data, synthetic_affine((1.5, 1.5, 2.0)))
    raw = image.to_bytes()
    return gzip.compress(raw, mtime=0) if gz else raw


_NII, _NII_GZ = _nifti_bytes(False), _nifti_bytes(True)


def _load_case(path, label=None):
    """What setup does for one case: header checks, then the deterministic evaluation transforms."""
    case = {"image": str(path)} if label is None else {"image": str(path), "label": str(label)}
    check_cases([case], 3)
    keys = tuple(case)
    transform = build_transforms(False, spatial_dims=3, num_classes=2, axcodes="RAS", pixdim=(1.5, 1.5, 2.0),
                                 a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True, crop_foreground=True,
                                 patch_size=(8, 8, 8), num_samples=1, pos=1.0, neg=1.0, flip_prob=0.5,
                                 rot90_prob=0.2, keys=keys)
    try:
        return transform(case)
    except RuntimeError as err:  # MONAI wraps transform errors; the data module surfaces the CaseError inside
        raise _unwrap_case_error(err) from err


@pytest.mark.parametrize("name, content", [
    ("empty.nii.gz", b""),
    ("text.nii.gz", b"not a NIfTI file at all"),
    ("gz_of_text.nii.gz", gzip.compress(b"not a NIfTI header" * 40)),
    ("cut_header.nii", _NII[:200]),
    ("cut_voxels.nii", _NII[: len(_NII) // 2]),
    ("cut_stream.nii.gz", _NII_GZ[: len(_NII_GZ) // 2]),
    ("bad_magic.nii", _NII[:344] + b"xx1\x00" + _NII[348:]),
    ("huge_dims.nii.gz", gzip.compress(_NII[:42] + np.array([30000, 30000, 30000], "<i2").tobytes() + _NII[48:])),
])
def test_bad_nifti_files_name_the_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"NIfTI file .*{name}"):
        _load_case(path)


def test_non_finite_affine_is_named(tmp_path):
    data = np.zeros((8, 8, 8), np.float32)
    affine = synthetic_affine((1.5, 1.5, 2.0))
    affine[0, 3] = np.nan
    image = nib.Nifti1Image(data, affine)
    nib.save(image, tmp_path / "nan_affine.nii.gz")
    with pytest.raises(ValueError, match="nan_affine.nii.gz"):
        _load_case(tmp_path / "nan_affine.nii.gz")


def test_absurd_voxel_size_is_named(tmp_path):
    """Found by the fuzz below: a flipped pixdim byte makes the voxels 1.7e18 mm wide; resampling to 1.5 mm then
    fails inside MONAI's Spacingd, whose own error says only "applying transform <Spacingd object at 0x...>"."""
    raw = bytearray(_NII)
    raw[83] ^= 98
    (tmp_path / "wide.nii").write_bytes(bytes(raw))
    with pytest.raises(CaseError, match=r"case .*wide.nii: "):
        _load_case(tmp_path / "wide.nii")


@FUZZ
@given(gz=st.booleans(), cut=st.one_of(st.just(len(_NII)), st.integers(0, len(_NII))),
       junk=st.binary(max_size=16), flips=st.lists(st.tuples(st.integers(0, 351), st.integers(1, 255)), max_size=3))
def test_fuzz_nifti_reading(tmp_path, gz, cut, junk, flips):
    raw = bytearray(_NII[:cut] + junk)
    for pos, xor in flips:  # corrupt header fields (dims, datatype, scaling, affine, magic, vox_offset)
        if pos < len(raw):
            raw[pos] ^= xor
    path = tmp_path / ("fuzz.nii.gz" if gz else "fuzz.nii")
    path.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))
    try:
        data = _load_case(path)
    except (ValueError, FileNotFoundError) as err:
        assert str(path) in str(err), err
        event(f"refused: {type(err).__name__}")
    else:
        assert data["image"].dim() == 4 and torch.isfinite(data["image"]).all()
        event("read")
