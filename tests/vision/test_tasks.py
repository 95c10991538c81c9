"""ImageClassifier: optimizer groups, schedule, mixup/EMA steps and pretrained fine-tuning."""

import pytest
import torch

from mambasuite.vision.tasks import ImageClassifier

from .conftest import official_vim_state_dict

SMALL = dict(model_name="test_vim", num_classes=4, model_kwargs=dict(img_size=16, depth=2))


def test_param_groups_weight_decay_rules():
    task = ImageClassifier(**SMALL, weight_decay=0.1)
    groups = task.param_groups()
    by_name = {id(p): n for n, p in task.model.named_parameters()}
    no_decay = {by_name[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert {"pos_embed", "cls_token", "layers.0.mixer.A_log", "layers.1.mixer.A_b_log",
            "layers.0.mixer.D_b", "layers.0.norm.weight", "head.bias"} <= no_decay
    assert "layers.0.mixer.in_proj.weight" not in no_decay


def test_layer_decay_scales_lr():
    task = ImageClassifier(**SMALL, lr=1e-3, layer_decay=0.5)
    lrs = sorted({g["lr"] for g in task.param_groups()})
    assert lrs[-1] == pytest.approx(1e-3) and lrs[0] == pytest.approx(1e-3 * 0.5 ** 3)  # stem, 2 blocks, head


@pytest.mark.parametrize("mix", [dict(), dict(mixup_alpha=0.8, cutmix_alpha=1.0, ema_decay=0.9)])
def test_training_step_learns_something(mix):
    torch.manual_seed(0)
    task = ImageClassifier(**SMALL, **mix, lr=3e-3)
    opt = torch.optim.AdamW(task.param_groups())
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % 4
    task.log = lambda *a, **k: None  # no trainer attached
    head0 = task.model.head.weight.detach().clone()
    losses = []
    for _ in range(15):
        loss = task.training_step((x, y), 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        task.on_train_batch_end(None, None, 0)
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    if "ema_decay" in mix:
        # the EMA copy follows the trained weights (timm warms the decay up from 0 at step 0)
        assert not torch.equal(task.ema.module.head.weight, head0)


def test_finetune_from_official_file_resets_head(tmp_path):
    sd = official_vim_state_dict(dim=32, depth=3, grid=8, d_state=8, patch=4, num_classes=1000)
    torch.save({"model": sd}, tmp_path / "vim.pth")
    task = ImageClassifier("test_vim", num_classes=5, pretrained_file=str(tmp_path / "vim.pth"), reset_head=True)
    torch.testing.assert_close(task.model.layers[2].mixer.x_proj_b.weight, sd["layers.2.mixer.x_proj_b.weight"])
    assert task.model.head.out_features == 5


def test_bad_arguments():
    with pytest.raises(ValueError, match="not a timm model"):
        ImageClassifier("no_such_model_xyz")
    with pytest.raises(ValueError, match="num_classes"):
        ImageClassifier(num_classes=0)
    with pytest.raises(ValueError, match="layer_decay"):
        ImageClassifier(layer_decay=1.5)


def test_trainer_logs_metric_names_and_ema(tmp_path):
    import pytorch_lightning as pl

    from mambasuite.vision.data import ImageDataModule

    from .conftest import write_image_folder

    write_image_folder(tmp_path / "data", classes=("a", "b", "c"), per_class=4)
    dm = ImageDataModule("imagefolder", data_dir=str(tmp_path / "data"), img_size=16, batch_size=4)
    task = ImageClassifier("test_vim", num_classes=3, model_kwargs=dict(img_size=16), ema_decay=0.5,
                           mixup_alpha=0.8, cutmix_alpha=1.0, warmup_epochs=1)
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(task, dm)
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "val/acc_top5", "val/acc_ema"} <= set(
        trainer.callback_metrics)
    assert trainer.global_step == 6
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert 0 < lr < 1e-3  # warmed up over epoch 1, then cosine-decayed


def test_num_classes_mismatch_with_data_is_reported(tmp_path):
    import pytorch_lightning as pl

    from mambasuite.vision.data import ImageDataModule

    from .conftest import write_image_folder

    write_image_folder(tmp_path / "data")
    dm = ImageDataModule("imagefolder", data_dir=str(tmp_path / "data"), img_size=16, batch_size=4)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    with pytest.raises(ValueError, match="num_classes=2"):
        trainer.fit(ImageClassifier("test_vim", num_classes=5, model_kwargs=dict(img_size=16)), dm)
