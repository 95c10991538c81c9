"""Every medseg config parses, instantiates and runs a few steps (fast_dev_run); the real-data ones on a fake task."""

import json
from pathlib import Path

import pytest

from mambasuite.core.cli import main as cli_main
from mambasuite.vision.medseg.synthetic import write_synthetic_decathlon

from .conftest import SMALL_2D, SMALL_3D

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "vision"
MEDSEG = ("seg3d_synthetic.yaml", "seg2d_synthetic.yaml", "seg2d_vmamba.yaml", "msd_spleen.yaml", "btcv.yaml")
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
# CPU-sized overrides for the GPU recipes: 32^3 patches, one patch per case, fp32.
CPU = ["--trainer.accelerator=cpu", "--trainer.precision=32", "--data.init_args.patch_size=[32,32,32]",
       "--model.init_args.roi_size=[32,32,32]", "--data.init_args.num_samples=1", "--data.init_args.num_workers=0",
       "--data.init_args.a_min=0", "--data.init_args.a_max=1"]


def _fit(config: str, tmp_path, *extra: str) -> None:
    assert cli_main(["fit", "-c", str(CONFIGS / config), "--trainer.fast_dev_run=2",
                     f"--trainer.default_root_dir={tmp_path / 'run'}", *QUIET, *extra]) == 0


def test_medseg_configs_exist():
    assert all((CONFIGS / name).is_file() for name in MEDSEG)


@pytest.mark.parametrize("config, synthetic", [("seg3d_synthetic.yaml", SMALL_3D), ("seg2d_synthetic.yaml", SMALL_2D),
                                               ("seg2d_vmamba.yaml", SMALL_2D)])
def test_synthetic_configs_fast_dev_run(config, synthetic, tmp_path):
    small = {**synthetic, "size": 64} if config == "seg2d_vmamba.yaml" else synthetic  # VMamba: sides of 32k
    _fit(config, tmp_path, f"--data.init_args.cache_dir={tmp_path / 'cache'}",
         f"--data.init_args.synthetic={json.dumps(small)}", "--data.init_args.num_samples=1")
    assert len(list((tmp_path / "cache").glob("*/dataset.json"))) == 1


def test_msd_spleen_config_on_a_task09_layout(tmp_path):
    task = write_synthetic_decathlon(tmp_path / "Task09_Spleen", **{**SMALL_3D, "num_classes": 1})
    _fit("msd_spleen.yaml", tmp_path, f"--data.init_args.data_dir={task}", *CPU)


def test_btcv_config_on_a_validation_split_file(tmp_path):
    task = write_synthetic_decathlon(tmp_path / "BTCV", **{**SMALL_3D, "num_classes": 13, "num_objs": 14})
    meta = json.loads((task / "dataset.json").read_text())
    meta["validation"], meta["training"] = meta["training"][:2], meta["training"][2:]
    (task / "dataset_0.json").write_text(json.dumps(meta))
    (task / "dataset.json").unlink()
    _fit("btcv.yaml", tmp_path, f"--data.init_args.data_dir={task}", *CPU)


def test_wrong_class_count_in_config_is_named(tmp_path):
    task = write_synthetic_decathlon(tmp_path / "Task09_Spleen", **{**SMALL_3D, "num_classes": 2})
    with pytest.raises(ValueError, match="num_classes=2 does not match the data's num_classes=3"):
        _fit("msd_spleen.yaml", tmp_path, f"--data.init_args.data_dir={task}", *CPU)
