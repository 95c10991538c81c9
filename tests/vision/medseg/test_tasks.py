"""SegmentationTask (loss, deep supervision, sliding window, metrics logging, optimiser) and the metric helpers."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from mambasuite.vision.medseg.metrics import case_metrics, spacing_from_affine
from mambasuite.vision.medseg.tasks import SegmentationTask, warmup_poly
from mambasuite.vision.models.umamba import UMamba


def _net(**kw):
    args = dict(spatial_dims=3, in_chans=1, num_classes=3, widths=(4, 8, 8), strides=(1, 2, 2), placement="bottleneck",
                mixer="tri", d_state=4)
    args.update(kw)
    return UMamba(**args)


def _task(**kw):
    args = dict(network=_net(), num_classes=3, roi_size=(16, 16, 16), sw_batch_size=2)
    args.update(kw)
    return SegmentationTask(**args)


def test_warmup_poly_schedule():
    assert warmup_poly(0, 4, 100) == 0.25 and warmup_poly(3, 4, 100) == 1.0
    assert warmup_poly(4, 4, 100) == 1.0
    assert math.isclose(warmup_poly(52, 4, 100), 0.5 ** 0.9)
    assert warmup_poly(100, 4, 100) == 0.0 and warmup_poly(100, 4, 100, min_lr_ratio=0.01) == 0.01
    assert warmup_poly(500, 0, None) == 1.0


def test_dice_matches_a_numpy_count():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 3, (2, 1, 10, 9, 8))
    pred = np.where(rng.random(label.shape) < 0.8, label, rng.integers(0, 3, label.shape))
    got = case_metrics(torch.from_numpy(pred), torch.from_numpy(label), 3, hd95=False)["dice"]
    for b in range(2):
        for c in (1, 2):
            p, g = pred[b] == c, label[b] == c
            assert got[b, c - 1].item() == pytest.approx(2 * (p & g).sum() / (p.sum() + g.sum()), rel=1e-6)


def test_distance_metrics_scale_with_spacing_and_vanish_for_identical_masks():
    label = torch.zeros(1, 1, 20, 20, 20)
    label[..., 5:12, 5:12, 5:12] = 1
    pred = torch.roll(label, shifts=2, dims=2)  # shifted by 2 voxels along the first axis
    same = case_metrics(label, label, 2, spacing=[[1.0, 1.0, 1.0]])
    assert same["dice"].item() == 1.0 and same["hd95"].item() == 0.0 and same["nsd"].item() == 1.0
    iso = case_metrics(pred, label, 2, spacing=[[1.0, 1.0, 1.0]], nsd_tolerance=1.0)
    doubled = case_metrics(pred, label, 2, spacing=[[2.0, 2.0, 2.0]], nsd_tolerance=2.0)
    assert 0 < iso["hd95"].item() <= 2.0
    assert doubled["hd95"].item() == pytest.approx(2 * iso["hd95"].item())
    assert doubled["nsd"].item() == pytest.approx(iso["nsd"].item())  # tolerance scaled with the voxels
    assert 0 < iso["nsd"].item() < 1


def test_empty_classes_are_nan():
    label = torch.zeros(1, 1, 8, 8, 8)
    label[..., 2:5, 2:5, 2:5] = 1  # class 2 absent from both
    metrics = case_metrics(torch.zeros_like(label), label, 3)
    assert metrics["dice"][0, 0].item() == 0.0 and math.isnan(metrics["dice"][0, 1].item())
    assert math.isnan(metrics["hd95"][0, 1].item())


def test_metric_input_errors():
    with pytest.raises(ValueError, match=r"\(batch, 1, \*spatial\)"):
        case_metrics(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5), 2)
    with pytest.raises(ValueError, match="nsd_tolerance"):
        case_metrics(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), 3, nsd_tolerance=[1.0])


def test_spacing_from_affine():
    affine = torch.tensor([[-1.5, 0, 0, 3], [0, 0, 2.0, 1], [0, -0.5, 0, 2], [0, 0, 0, 1]])
    assert spacing_from_affine(affine, 3) == [[1.5, 0.5, 2.0]]
    assert spacing_from_affine(affine[None].repeat(2, 1, 1), 2) == [[1.5, 0.5]] * 2
    with pytest.raises(ValueError, match="affine"):
        spacing_from_affine(torch.eye(3), 3)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_training_step_with_deep_supervision_gives_finite_loss_and_gradients():
    torch.manual_seed(0)
    task = _task(network=_net(deep_supervision=True))
    batch = {"image": torch.randn(2, 1, 16, 16, 16), "label": torch.randint(0, 3, (2, 1, 16, 16, 16)).float()}
    loss = task.training_step(batch, 0)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert all(p.grad is not None for p in task.network.parameters())


def test_deep_supervision_loss_weights_every_scale():
    # MONAI's DeepSupervisionLoss ("exp" weights 1, 1/2, ...): the loss of a two-output list is the
    # weighted sum of DiceCE at full resolution and against the nearest-downsampled label.
    task = _task()
    label = torch.randint(0, 3, (1, 1, 8, 8, 8)).float()
    full, half = torch.randn(1, 3, 8, 8, 8), torch.randn(1, 3, 4, 4, 4)
    expected = task.dice_ce(full, label) + 0.5 * task.dice_ce(half, nn.functional.interpolate(label, (4, 4, 4),
                                                                                              mode="nearest-exact"))
    torch.testing.assert_close(task.loss([full, half], label), expected)


def test_sliding_window_inference_covers_any_volume_size():
    task = _task().eval()
    with torch.no_grad():
        logits = task.infer(torch.randn(1, 1, 20, 18, 36))
    assert logits.shape == (1, 3, 20, 18, 36)
    with pytest.raises(ValueError, match="spatial dims"):
        task.infer(torch.randn(1, 1, 20, 18))


def test_validation_logs_dice_per_class_and_mean():
    # A network whose logits are the one-hot label gives Dice 1 for every class.
    class Oracle(nn.Module):
        def forward(self, x):
            return nn.functional.one_hot(x[:, 0].round().long(), 3).movedim(-1, 1).float() * 10

    task = _task(network=Oracle(), val_hd95=True)
    logged = {}
    task.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    label = torch.zeros(1, 1, 16, 16, 16)
    label[..., 2:8, 2:8, 2:8], label[..., 10:14, 10:14, 10:14] = 1, 2
    task.validation_step({"image": label.clone(), "label": label}, 0)
    task.on_validation_epoch_end()
    assert logged["val/dice"] == 1.0 and logged["val/dice_class1"] == logged["val/dice_class2"] == 1.0
    assert logged["val/hd95"] == 0.0 and logged["val/nsd"] == 1.0 and logged["val/loss"] < 0.1


def test_wrong_output_channels_are_named():
    task = _task(network=_net(num_classes=5))
    batch = {"image": torch.randn(1, 1, 16, 16, 16), "label": torch.zeros(1, 1, 16, 16, 16)}
    with pytest.raises(ValueError, match="outputs 5 channels but num_classes=3"):
        task.training_step(batch, 0)


def test_data_class_count_mismatch_is_named():
    task = _task()
    task.trainer = type("T", (), {"datamodule": type("DM", (), {"num_classes": 4, "class_names": []})()})()
    with pytest.raises(ValueError, match="num_classes=3 does not match the data's num_classes=4"):
        task.setup("fit")


@pytest.mark.parametrize("kwargs, error", [
    (dict(num_classes=1), ValueError), (dict(roi_size=(16,)), ValueError), (dict(schedule="step"), ValueError),
    (dict(sw_overlap=1.0), ValueError), (dict(lr=0.0), ValueError), (dict(network="umamba"), TypeError),
    (dict(class_names=["bg"]), ValueError),
])
def test_bad_arguments(kwargs, error):
    with pytest.raises(error):
        _task(**kwargs)


def test_optimizer_skips_decay_on_ssm_parameters():
    task = _task(weight_decay=0.1)
    opt = task.configure_optimizers()["optimizer"]
    no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    for name, p in task.network.named_parameters():
        if name.rsplit(".", 1)[-1] in ("A_log", "A_b_log", "D", "D_b") or p.ndim <= 1:
            assert id(p) in no_decay, name
        else:
            assert id(p) not in no_decay, name
