"""Synthetic Decathlon task, dataset.json / NIfTI validation and the MONAI data module."""

import gzip
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from mambasuite.vision.medseg.data import CaseError, DecathlonDataModule, check_cases, read_dataset_json
from mambasuite.vision.medseg.synthetic import synthetic_affine, write_synthetic_decathlon

from .conftest import SMALL_3D, datamodule, edit_json


def test_synthetic_task_layout(task3d):
    meta = json.loads((task3d / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "class1", "2": "class2", "3": "class3"}
    assert meta["numTraining"] == len(meta["training"]) == 6 and meta["numTest"] == len(meta["test"]) == 1
    for case in meta["training"]:
        image, label = nib.load(task3d / case["image"]), nib.load(task3d / case["label"])
        assert image.shape == label.shape == (32, 32, 32)
        np.testing.assert_allclose(image.affine, synthetic_affine((1.5, 1.5, 2.0)))
        values = np.unique(np.asarray(label.dataobj))
        assert set(values) <= {0, 1, 2, 3} and len(values) > 1
        assert 0.0 <= image.get_fdata().min() and image.get_fdata().max() <= 1.0
    assert (task3d / meta["test"][0]).is_file()
    assert not list(task3d.parent.glob("*.tmp*"))  # written atomically: no temporary folder left


def test_synthetic_task_is_written_once(tmp_path):
    root = write_synthetic_decathlon(tmp_path / "t", **{**SMALL_3D, "num_train": 2, "num_test": 0})
    stamp = (root / "dataset.json").stat().st_mtime_ns
    (root / "imagesTr" / "marker").write_text("kept")
    assert write_synthetic_decathlon(root, **SMALL_3D) == root
    assert (root / "dataset.json").stat().st_mtime_ns == stamp and (root / "imagesTr" / "marker").is_file()


def test_synthetic_task_replaces_an_unfinished_folder(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "junk").write_text("half-written")
    root = write_synthetic_decathlon(tmp_path / "t", **{**SMALL_3D, "num_train": 2, "num_test": 0})
    assert not (root / "junk").exists() and (root / "dataset.json").is_file()


@pytest.mark.parametrize("params, match", [(dict(size=10), "rad_max"), (dict(spatial_dims=4), "spatial_dims"),
                                           (dict(colour=1), "unknown")])
def test_synthetic_bad_options(tmp_path, params, match):
    with pytest.raises(ValueError, match=match):
        write_synthetic_decathlon(tmp_path / "t", **params)


def test_dataset_json_errors_name_the_file(task_copy, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere"):
        read_dataset_json(tmp_path / "nothere.json")
    path = task_copy / "dataset.json"
    meta = json.loads(path.read_text())
    path.write_text("{not json")
    with pytest.raises(ValueError, match="dataset.json is not valid JSON"):
        read_dataset_json(path)
    for key in ("labels", "training"):
        path.write_text(json.dumps({k: v for k, v in meta.items() if k != key}))
        with pytest.raises(ValueError, match=rf"dataset.json is missing the key\(s\) \['{key}'\]"):
            read_dataset_json(path)
    path.write_text(json.dumps({**meta, "training": [{"image": "a.nii.gz"}]}))
    with pytest.raises(ValueError, match=r"training\[0\] must have 'image' and 'label'"):
        read_dataset_json(path)
    path.write_text(json.dumps({**meta, "labels": {"1": "spleen"}}))
    with pytest.raises(ValueError, match="0..K-1"):
        read_dataset_json(path)


def _cases(task):
    meta = json.loads((task / "dataset.json").read_text())
    return [{"image": str(task / c["image"]), "label": str(task / c["label"])} for c in meta["training"]]


def test_check_cases_passes_and_counts_channels(task3d):
    assert check_cases(_cases(task3d), 3) == 1


def test_missing_file_is_named(task_copy):
    cases = _cases(task_copy)
    (task_copy / "labelsTr" / "synth_001.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="labelsTr/synth_001.nii.gz"):
        check_cases(cases, 3)


def test_unreadable_nifti_is_named(task_copy):
    cases = _cases(task_copy)
    (task_copy / "imagesTr" / "synth_002.nii.gz").write_bytes(b"this is not a NIfTI file")
    with pytest.raises(ValueError, match="cannot read NIfTI file .*imagesTr/synth_002.nii.gz"):
        check_cases(cases, 3)


def test_shape_mismatch_names_both_files(task_copy):
    cases = _cases(task_copy)
    label = nib.load(cases[3]["label"])
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj)[:, :, :30], label.affine), cases[3]["label"])
    with pytest.raises(ValueError, match=r"shape mismatch: .*imagesTr/synth_003.nii.gz is \(32, 32, 32\) but "
                                         r".*labelsTr/synth_003.nii.gz is \(32, 32, 30\)"):
        check_cases(cases, 3)


def test_truncated_data_is_named_at_setup(task_copy):
    path = task_copy / "imagesTr" / "synth_000.nii.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))  # the header is intact, the voxels are cut short
    with pytest.raises(CaseError, match="cannot read NIfTI file .*imagesTr/synth_000.nii.gz"):
        datamodule(task_copy).setup("fit")


def test_label_values_outside_the_classes_are_named(task_copy):
    edit_json(task_copy, lambda m: m.update(labels={"0": "background", "1": "ball"}))
    with pytest.raises(CaseError, match=r"label .*labelsTr/synth_00\d.nii.gz has values .*0..1"):
        datamodule(task_copy).setup("fit")


def test_missing_data_dir_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_dir not found: .*nowhere"):
        datamodule(tmp_path / "nowhere").setup("fit")


def test_datamodule_splits_and_batches(task3d):
    dm = datamodule(task3d)
    dm.setup("fit")
    assert (dm.num_classes, dm.in_channels) == (4, 1) and dm.class_names[1] == "class1"
    train, val = {c["image"] for c in dm.train_files}, {c["image"] for c in dm.val_files}
    assert len(train) == 4 and len(val) == 2 and not train & val
    again = datamodule(task3d)
    again.setup("fit")
    assert [c["image"] for c in again.val_files] == [c["image"] for c in dm.val_files]  # seeded split
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 16, 16, 16) and batch["label"].shape == (4, 1, 16, 16, 16)
    assert batch["image"].dtype == torch.float32
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape[:2] == (1, 1) and val["image"].shape == val["label"].shape
    # Orientationd("RAS") undid the synthetic files' flipped x/y axes: the affine's diagonal is positive.
    assert torch.all(torch.diagonal(val["image"].affine[0])[:3] > 0)
    assert set(torch.unique(val["label"]).tolist()) <= {0.0, 1.0, 2.0, 3.0}
    predict = next(iter(dm.predict_dataloader()))
    assert "label" not in predict and predict["image"].shape[:2] == (1, 1)


def test_validation_list_in_json_is_used(task_copy):
    def move(meta):
        meta["validation"] = meta["training"][:1]
        meta["training"] = meta["training"][1:]

    edit_json(task_copy, move)
    dm = datamodule(task_copy)
    dm.setup("fit")
    assert [c["image"].rsplit("/", 1)[1] for c in dm.val_files] == ["synth_000.nii.gz"] and len(dm.train_files) == 5


def test_datamodule_2d(task2d):
    dm = datamodule(task2d, spatial_dims=2, axcodes="RA", pixdim=(1.5, 1.5), patch_size=(16, 16))
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["image"].shape == (4, 1, 16, 16)


@pytest.mark.parametrize("kwargs, match", [(dict(spatial_dims=4), "spatial_dims"),
                                           (dict(patch_size=(16, 16)), "patch_size"), (dict(pixdim=(1.0,)), "pixdim"),
                                           (dict(axcodes="RA"), "axcodes"), (dict(val_frac=1.5), "val_frac")])
def test_bad_datamodule_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DecathlonDataModule(**kwargs)


def test_synthetic_default_goes_to_a_keyed_cache_folder(tmp_path):
    dm = DecathlonDataModule(cache_dir=str(tmp_path), synthetic={**SMALL_3D, "num_train": 3},
                             patch_size=(16, 16, 16), num_samples=1)
    other = DecathlonDataModule(cache_dir=str(tmp_path), synthetic={**SMALL_3D, "num_train": 4})
    assert dm.task_dir() != other.task_dir() and dm.task_dir().parent == tmp_path
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_files) + len(dm.val_files) == 3 and len(dm.test_files) == 1
