"""Bad and hostile files in the image loaders: truncated, empty, wrong-format, decompression-bomb and pickle-payload
files give a ValueError naming the file; a bounded hypothesis fuzz of the image and CIFAR readers."""

from __future__ import annotations

import io
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mambasuite.vision.data import CifarDataset, ImageDataModule, load_rgb

from .conftest import write_image_folder
from .test_data import _write_cifar


def _png_bytes(size=(40, 30)) -> bytes:
    """A valid PNG of noise (incompressible, so cutting the file cuts pixel data)."""
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def _png_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    """A tiny PNG whose header claims 3.6 G pixels (PIL refuses it before decoding)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


_PNG = _png_bytes()
BAD_IMAGES = {
    "empty.png": b"",
    "truncated.png": _png_bytes()[:len(_png_bytes()) // 2],
    "text.jpg": b"<html>not an image</html>",
    "bomb.png": _png_bomb(),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_image_files_name_the_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(BAD_IMAGES[name])
    with pytest.raises(ValueError, match=f"cannot read image file .*{name}"):
        load_rgb(str(path))


@pytest.mark.parametrize("split", ["train", "val"])
def test_bad_image_in_a_loader_names_the_file(tmp_path, split):
    write_image_folder(tmp_path / "data")
    (tmp_path / "data" / split / "cat" / "bomb.png").write_bytes(_png_bomb())
    dm = ImageDataModule("imagefolder", data_dir=str(tmp_path / "data"), img_size=16, batch_size=1)
    dm.setup("fit")
    loader = dm.train_dataloader() if split == "train" else dm.val_dataloader()
    with pytest.raises(ValueError, match="bomb.png"):
        list(loader)


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _cifar_variants(marker: Path) -> dict[str, bytes]:
    good = {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 1]}
    return {
        "empty": b"",
        "truncated": pickle.dumps(good, protocol=2)[:40],
        "text": b"this is not a pickle",
        "payload": pickle.dumps({b"data": _RunsCode(marker), b"labels": [0]}, protocol=2),
        "no data key": pickle.dumps({b"labels": [0, 1]}, protocol=2),
        "wrong dtype": pickle.dumps({b"data": np.zeros((2, 3072), dtype=np.float32), b"labels": [0, 1]}, protocol=2),
        "wrong width": pickle.dumps({b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]}, protocol=2),
        "label count": pickle.dumps({b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0]}, protocol=2),
        "label range": pickle.dumps({b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 99]}, protocol=2),
        "not a dict": pickle.dumps([1, 2, 3], protocol=2),
    }


@pytest.mark.parametrize("variant", ["empty", "truncated", "text", "payload", "no data key", "wrong dtype",
                                     "wrong width", "label count", "label range", "not a dict"])
def test_bad_cifar_batches_name_the_file(tmp_path, variant):
    folder = _write_cifar(tmp_path, "cifar10")
    marker = tmp_path / "pwned"
    (folder / "test_batch").write_bytes(_cifar_variants(marker)[variant])
    with pytest.raises(ValueError, match="cifar-10-batches-py"):
        CifarDataset(tmp_path, "cifar10", train=False)
    assert not marker.exists()


def test_bad_cifar_meta_names_the_file(tmp_path):
    folder = _write_cifar(tmp_path, "cifar10")
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": "cat"}, protocol=2))
    with pytest.raises(ValueError, match="batches.meta"):
        CifarDataset(tmp_path, "cifar10", train=False)


def test_concurrent_digits_writers_keep_one_complete_tree(tmp_path, monkeypatch):
    """Two ranks building the default dataset at once: the second finds the first's tree and keeps it."""
    import mambasuite.vision.data as vdata

    root = tmp_path / "digits"
    real_rename = Path.rename
    calls = []

    def racing_rename(self, target):
        if not calls:  # another process finishes first, just before our rename
            calls.append(1)
            vdata.write_digits_imagefolder(root)
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", racing_rename)
    vdata.write_digits_imagefolder(root)
    assert (root / ".complete").is_file() and len(list(root.glob("*/*/*.png"))) == 1797
    assert [p.name for p in tmp_path.iterdir()] == ["digits"]  # our temporary tree was discarded


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=300),
                      st.builds(lambda cut, junk: _PNG[:cut] + junk, st.integers(0, 4000), st.binary(max_size=40))))
def test_fuzz_image_reader(tmp_path, data):
    path = tmp_path / "fuzz.png"
    path.write_bytes(data)
    try:
        img = load_rgb(str(path))
    except ValueError as err:
        assert str(path) in str(err)
    else:
        assert img.mode == "RGB" and img.size[0] * img.size[1] > 0


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=200),
                      st.builds(lambda cut, junk: pickle.dumps({b"data": np.zeros((1, 3072), np.uint8),
                                                                b"labels": [0]}, protocol=2)[:cut] + junk,
                                st.integers(0, 120), st.binary(max_size=20))))
def test_fuzz_cifar_reader(tmp_path, data):
    folder = tmp_path / "cifar-10-batches-py"
    if not folder.exists():
        _write_cifar(tmp_path, "cifar10")
    (folder / "test_batch").write_bytes(data)
    try:
        ds = CifarDataset(tmp_path, "cifar10", train=False)
    except ValueError as err:
        assert "test_batch" in str(err)
    else:
        assert len(ds) == len(ds.targets) and ds.images.shape[1:] == (32, 32, 3)
