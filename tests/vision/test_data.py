"""Image DataModule: embedded digits written as an ImageFolder, user folders and clear errors."""

import pytest
import torch

from mambasuite.vision.data import ImageDataModule, write_digits_imagefolder

from .conftest import write_image_folder


def test_digits_written_once_and_read_as_imagefolder(tmp_path):
    root = write_digits_imagefolder(tmp_path / "digits")
    pngs = sorted(root.glob("*/*/*.png"))
    assert len(pngs) == 1797 and (root / ".complete").is_file()
    first = pngs[0].stat().st_mtime_ns
    write_digits_imagefolder(tmp_path / "digits")  # cached: nothing rewritten
    assert pngs[0].stat().st_mtime_ns == first
    dm = ImageDataModule(cache_dir=str(tmp_path / "digits"), img_size=16, batch_size=32, hflip=0.0)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.num_classes == 10 and dm.classes == [str(i) for i in range(10)]
    assert len(dm.train_set) == 1437 and len(dm.val_set) == 360
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (32, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    # validation data is deterministic; training data is augmented
    x2, _ = next(iter(dm.val_dataloader()))
    torch.testing.assert_close(x, x2)
    assert len(list(dm.train_dataloader())) == 1437 // 32  # drop_last


def test_user_imagefolder(tmp_path):
    write_image_folder(tmp_path / "data")
    dm = ImageDataModule("imagefolder", data_dir=str(tmp_path / "data"), img_size=16, batch_size=4)
    dm.setup("fit")
    assert dm.classes == ["cat", "dog"]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 16, 16) and set(y.tolist()) <= {0, 1}


def test_corrupt_image_error_names_the_file(tmp_path):
    write_image_folder(tmp_path / "data")
    bad = tmp_path / "data" / "val" / "dog" / "broken.png"
    bad.write_bytes(b"not a png at all")
    dm = ImageDataModule("imagefolder", data_dir=str(tmp_path / "data"), img_size=16, batch_size=16)
    dm.setup("fit")
    with pytest.raises(ValueError, match="broken.png"):
        list(dm.val_dataloader())


def test_missing_folders_are_named(tmp_path):
    dm = ImageDataModule("imagefolder", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere/train"):
        dm.setup("fit")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="empty/train"):
        ImageDataModule("imagefolder", data_dir=str(tmp_path / "empty")).setup("fit")
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        ImageDataModule("cifar10", data_dir=str(tmp_path)).setup("fit")


def test_argument_errors():
    with pytest.raises(ValueError, match="needs data_dir"):
        ImageDataModule("imagefolder")
    with pytest.raises(ValueError, match="dataset must be"):
        ImageDataModule("mnist")
    with pytest.raises(ValueError, match="img_size"):
        ImageDataModule(img_size=0)


def _write_cifar(root, name, n_train=10, n_test=6):
    import pickle

    import numpy as np

    rng = np.random.default_rng(0)
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)
    key = b"labels" if name == "cifar10" else b"fine_labels"
    n_classes = 10 if name == "cifar10" else 100

    def batch(n):
        return {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), key: [i % n_classes for i in range(n)]}

    files = {f"data_batch_{i}": batch(n_train // 5) for i in range(1, 6)} if name == "cifar10" else {"train": batch(n_train)}
    files["test_batch" if name == "cifar10" else "test"] = batch(n_test)
    names_key = b"label_names" if name == "cifar10" else b"fine_label_names"
    files["batches.meta" if name == "cifar10" else "meta"] = {names_key: [f"c{i}".encode() for i in range(n_classes)]}
    for fname, obj in files.items():
        with open(folder / fname, "wb") as f:
            pickle.dump(obj, f, protocol=2)
    return folder


@pytest.mark.parametrize("name, n_classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_python_archive(tmp_path, name, n_classes):
    _write_cifar(tmp_path, name)
    dm = ImageDataModule(name, data_dir=str(tmp_path), img_size=32, batch_size=2, hflip=0.5)
    dm.setup("fit")
    assert len(dm.train_set) == 10 and len(dm.val_set) == 6 and dm.num_classes == n_classes
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [0, 1]


def test_cifar_refuses_foreign_pickle_globals(tmp_path):
    import pickle

    folder = _write_cifar(tmp_path, "cifar10")
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": ValueError("x"), b"labels": []}, f)
    with pytest.raises(ValueError, match="test_batch.*not allowed"):
        ImageDataModule("cifar10", data_dir=str(tmp_path)).setup("fit")
