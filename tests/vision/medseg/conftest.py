"""Medseg test helpers: small synthetic Decathlon tasks written once per session."""

import json
import shutil

import pytest

from mambasuite.vision.medseg.synthetic import write_synthetic_decathlon

# 32^3 volumes, 3 foreground classes: big enough for 16^3 patches and a stride-8 net, small enough for CPU tests.
SMALL_3D = dict(spatial_dims=3, num_train=6, num_test=1, size=32, num_objs=6, rad_min=3, rad_max=7, noise_max=0.4)
SMALL_2D = dict(spatial_dims=2, num_train=6, num_test=1, size=32, num_objs=4, rad_min=3, rad_max=7, noise_max=0.4,
                spacing=(1.5, 1.5))


@pytest.fixture(scope="session")
def task3d(tmp_path_factory):
    """A 6-case 3D synthetic task (plus one unlabelled test image)."""
    return write_synthetic_decathlon(tmp_path_factory.mktemp("task3d") / "Task00", **SMALL_3D)


@pytest.fixture(scope="session")
def task2d(tmp_path_factory):
    return write_synthetic_decathlon(tmp_path_factory.mktemp("task2d") / "Task00", **SMALL_2D)


@pytest.fixture
def task_copy(task3d, tmp_path):
    """A writable copy of the 3D task (tests that corrupt files)."""
    return shutil.copytree(task3d, tmp_path / "Task00")


def edit_json(task, fn) -> None:
    """Apply fn to the task's dataset.json dict and write it back."""
    path = task / "dataset.json"
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


def datamodule(task, **overrides):
    """A DecathlonDataModule on `task` with small patches."""
    from mambasuite.vision.medseg.data import DecathlonDataModule

    kwargs = dict(data_dir=str(task), spatial_dims=3, axcodes="RAS", pixdim=(1.5, 1.5, 2.0), patch_size=(16, 16, 16),
                  num_samples=2, batch_size=2, val_frac=0.34)
    kwargs.update(overrides)
    return DecathlonDataModule(**kwargs)
