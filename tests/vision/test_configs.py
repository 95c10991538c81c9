"""Every shipped vision config parses, instantiates and runs a few steps (fast_dev_run)."""

from pathlib import Path

import pytest
import torch

from mambasuite.core.cli import main as cli_main

from .conftest import official_vim_state_dict, write_image_folder

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "vision"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def _fit(config: str, tmp_path, *extra: str) -> None:
    assert cli_main(["fit", "-c", str(CONFIGS / config), "--trainer.fast_dev_run=2",
                     f"--trainer.default_root_dir={tmp_path / 'run'}", *QUIET, *extra]) == 0


def test_all_configs_are_covered():
    assert {p.name for p in CONFIGS.glob("*.yaml")} == {
        "vim_digits.yaml", "vmamba_digits.yaml", "vim_tiny_imagenet.yaml", "finetune_vim_imagefolder.yaml",
        "vim_small_fsdp.yaml",  # run by tests/vision/test_ddp.py
        # medical segmentation configs, run by tests/vision/medseg/test_configs.py
        "seg3d_synthetic.yaml", "seg2d_synthetic.yaml", "seg2d_vmamba.yaml", "msd_spleen.yaml", "btcv.yaml"}


@pytest.mark.parametrize("config", ["vim_digits.yaml", "vmamba_digits.yaml"])
def test_digits_configs_fast_dev_run(config, tmp_path):
    _fit(config, tmp_path, f"--data.init_args.cache_dir={tmp_path / 'digits'}")
    assert (tmp_path / "digits" / ".complete").is_file()


def test_imagenet_recipe_on_a_fixture_folder(tmp_path):
    write_image_folder(tmp_path / "imagenet", classes=("n01", "n02", "n03"))
    _fit("vim_tiny_imagenet.yaml", tmp_path, f"--data.init_args.data_dir={tmp_path / 'imagenet'}",
         "--trainer.devices=1", "--trainer.strategy=auto", "--model.init_args.model_name=test_vim",
         "--model.init_args.num_classes=3", '--model.init_args.model_kwargs={"img_size": 16, "drop_path_rate": 0.1}',
         "--data.init_args.img_size=16", "--data.init_args.batch_size=4", "--data.init_args.num_workers=0")


def test_finetune_config_loads_the_checkpoint(tmp_path):
    write_image_folder(tmp_path / "data")
    sd = official_vim_state_dict(dim=32, depth=3, grid=8, d_state=8, patch=4)
    torch.save({"model": sd}, tmp_path / "vim.pth")
    _fit("finetune_vim_imagefolder.yaml", tmp_path, f"--data.init_args.data_dir={tmp_path / 'data'}",
         f"--model.init_args.pretrained_file={tmp_path / 'vim.pth'}", "--model.init_args.model_name=test_vim",
         "--model.init_args.num_classes=2", '--model.init_args.model_kwargs={"img_size": 32}',
         "--data.init_args.img_size=32", "--data.init_args.batch_size=4", "--data.init_args.num_workers=0")
