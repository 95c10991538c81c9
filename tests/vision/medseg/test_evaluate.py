"""`mamba-suite evaluate` for segmentation: masks in the input's space (affine, shape, voxels), metrics, PNGs."""

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from mambasuite.core.cli import main as cli_main
from mambasuite.vision.medseg.evaluate import evaluate_cases
from mambasuite.vision.medseg.tasks import SegmentationTask

from .conftest import SMALL_3D, datamodule

CONFIG = str(Path(__file__).resolve().parents[3] / "configs" / "vision" / "seg3d_synthetic.yaml")


class _RoundOracle(nn.Module):
    """Logits whose argmax is round(3 * x): exact on images holding label / 3."""

    def forward(self, x):
        return -(3 * x - torch.arange(4, dtype=x.dtype).view(1, 4, 1, 1, 1)).abs()


@pytest.fixture
def label_images(task_copy):
    """The 3D task with every image replaced by its own label map (float), same affine."""
    for label_path in (task_copy / "labelsTr").glob("*.nii.gz"):
        label = nib.load(label_path)
        nib.save(nib.Nifti1Image(np.asarray(label.dataobj).astype(np.float32), label.affine),
                 task_copy / "imagesTr" / label_path.name)
    return task_copy


@pytest.mark.parametrize("pixdim, exact", [((1.5, 1.5, 2.0), True), ((1.0, 1.2, 1.5), False)])
def test_masks_are_restored_to_the_input_space(label_images, tmp_path, pixdim, exact):
    # Orientationd flips the synthetic files' x/y axes, Spacingd resamples (second case) and
    # CropForegroundd crops; Invertd must undo all three for the saved mask to line up with the input.
    dm = datamodule(label_images, pixdim=pixdim, a_min=0.0, a_max=3.0)
    dm.setup("validate")
    task = SegmentationTask(_RoundOracle(), num_classes=4, roi_size=(16, 16, 16))
    summary = evaluate_cases(task, dm.val_files, dm.transforms(train=False), tmp_path / "eval", 4, dm.class_names,
                             torch.device("cpu"), overlays=False)
    assert summary["n_cases"] == len(dm.val_files) == 2
    for case in dm.val_files:
        name = Path(case["image"]).name.replace(".nii.gz", "_seg.nii.gz")
        mask, image, label = (nib.load(p) for p in (tmp_path / "eval" / "masks" / name, case["image"], case["label"]))
        np.testing.assert_array_equal(mask.affine, image.affine)
        assert mask.shape == image.shape and mask.get_data_dtype() == np.uint8
        agreement = (np.asarray(mask.dataobj) == np.asarray(label.dataobj)).mean()
        assert agreement == 1.0 if exact else agreement > 0.95
    if exact:
        assert summary["mean_dice"] == 1.0 and summary["mean_hd95"] == 0.0


def _fit_tiny(tmp_path) -> Path:
    synthetic = json.dumps({**SMALL_3D, "num_train": 4})
    args = ["fit", "-c", CONFIG, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1", f"--trainer.default_root_dir={tmp_path / 'run'}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            f"--data.init_args.cache_dir={tmp_path / 'cache'}", f"--data.init_args.synthetic={synthetic}",
            "--data.init_args.patch_size=[16,16,16]", "--model.init_args.roi_size=[16,16,16]",
            "--data.init_args.num_samples=1"]
    assert cli_main(args) == 0
    (ckpt,) = (tmp_path / "run").glob("version_*/checkpoints/last.ckpt")
    return ckpt, args[-4:]


def test_evaluate_command_writes_masks_metrics_and_overlays(tmp_path):
    ckpt, data_args = _fit_tiny(tmp_path)
    out = tmp_path / "eval"
    assert cli_main(["evaluate", "-c", CONFIG, f"--ckpt_path={ckpt}", f"--out={out}", *data_args]) == 0
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1  # one held-out case of four
    assert {"dice_class1", "hd95_class3", "nsd_class2", "mean_dice"} <= set(rows[0])
    assert 0.0 <= float(rows[0]["mean_dice"]) <= 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == 1 and summary["split"] == "val" and set(summary["dice_per_class"]) == {
        "class1", "class2", "class3"}
    (mask,) = (out / "masks").glob("*_seg.nii.gz")
    source = Path(rows[0]["image"])
    np.testing.assert_array_equal(nib.load(mask).affine, nib.load(source).affine)
    assert (out / "overlays" / f"{rows[0]['case']}.png").stat().st_size > 2000
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["masks/" + mask.name, "metrics.csv", f"overlays/{rows[0]['case']}.png", "summary.json"]

    # Evaluating into the same folder again is refused (naming what is there) unless --overwrite=true.
    with pytest.raises(SystemExit) as exc:
        cli_main(["evaluate", "-c", CONFIG, f"--ckpt_path={ckpt}", f"--out={out}", *data_args])
    assert exc.value.code == 2

    test_out = tmp_path / "eval_test"
    assert cli_main(["evaluate", "-c", CONFIG, f"--ckpt_path={ckpt}", f"--out={test_out}", "--split=test",
                     "--overlays=false", *data_args]) == 0
    assert len(list((test_out / "masks").glob("*_seg.nii.gz"))) == 1
    assert "mean_dice" not in json.loads((test_out / "summary.json").read_text())


def test_evaluate_missing_checkpoint_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["evaluate", "-c", CONFIG, f"--ckpt_path={tmp_path / 'gone.ckpt'}"])
    assert "gone.ckpt" in capsys.readouterr().err


def test_atomic_mask_writer_keeps_the_nifti_format(tmp_path):
    """nibabel picks the format from the name; the writer stages under a .nii.gz name and renames onto the target."""
    from monai.data import MetaTensor

    from mambasuite.vision.medseg.evaluate import AtomicNibabelWriter

    affine = torch.diag(torch.tensor([-1.5, -1.5, 2.0, 1.0]))
    mask = MetaTensor(torch.arange(24, dtype=torch.uint8).view(1, 2, 3, 4), affine=affine)
    writer = AtomicNibabelWriter(output_dtype=np.uint8)
    writer.set_data_array(mask, channel_dim=0)
    writer.set_metadata({"affine": affine, "original_affine": affine}, resample=False)
    writer.write(tmp_path / "case_seg.nii.gz")
    saved = nib.load(tmp_path / "case_seg.nii.gz")
    np.testing.assert_array_equal(np.asarray(saved.dataobj), np.arange(24).reshape(2, 3, 4))
    np.testing.assert_array_equal(saved.affine, affine.numpy())
    assert [p.name for p in tmp_path.iterdir()] == ["case_seg.nii.gz"]  # nothing staged is left behind


class _RunsCode:
    """A pickle payload whose __reduce__ would create a marker file (a harmless stand-in for os.system)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_existing_report_and_malicious_checkpoint_are_refused(tmp_path, capsys):
    out = tmp_path / "eval"
    (out / "masks").mkdir(parents=True)
    (out / "masks" / "case_seg.nii.gz").write_bytes(b"an earlier mask")
    with pytest.raises(SystemExit) as exc:
        cli_main(["evaluate", "-c", CONFIG, f"--ckpt_path={CONFIG}", f"--out={out}"])
    assert exc.value.code == 2 and "already holds a report (masks/case_seg.nii.gz)" in capsys.readouterr().err
    marker, evil = tmp_path / "pwned", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": _RunsCode(marker)}}, evil)
    with pytest.raises(SystemExit) as exc:
        cli_main(["evaluate", "-c", CONFIG, f"--ckpt_path={evil}", f"--out={tmp_path / 'eval2'}",
                  f"--data.init_args.cache_dir={tmp_path / 'cache'}"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "evil.ckpt" in err and "not a weights-only checkpoint" in err
    assert not marker.exists() and not (tmp_path / "eval2").exists() and not (tmp_path / "cache").exists()
