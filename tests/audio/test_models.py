"""ConMamba: shapes, CTC output lengths, official sizes, gradients, padding invariance, variants, bad inputs."""

import math

import pytest
import timm
import torch

from mambasuite.audio.models.conmamba import ConMamba, subsampled_lengths
from mambasuite.core.mixers import BiMamba


def tiny(**kwargs) -> ConMamba:
    args = dict(n_mels=16, num_classes=7, d_model=16, depth=2, d_ffn=32, conv_kernel=5, d_state=4,
                subsampling_channels=(4, 4), dropout=0.0)
    return ConMamba(**{**args, **kwargs})


@pytest.mark.parametrize("frames", [1, 2, 3, 4, 5, 7, 8, 9, 64, 101])
def test_ctc_output_length_is_ceil_quarter(frames):
    torch.manual_seed(0)
    model = tiny().eval()
    logits, lengths = model(torch.randn(2, frames, 16), torch.tensor([frames, max(1, frames // 2)]))
    # Independent arithmetic: two convs (kernel 3, stride 2, padding 1) each give floor((n + 2 - 3) / 2) + 1.
    expected = [frames, max(1, frames // 2)]
    for _ in range(2):
        expected = [(n - 1) // 2 + 1 for n in expected]
    assert logits.shape == (2, expected[0], 7)
    assert lengths.tolist() == expected
    assert expected[0] == math.ceil(frames / 4)
    assert subsampled_lengths(torch.tensor([frames])).item() == math.ceil(frames / 4)


def test_official_sizes_parameter_counts():
    # 29 outputs = 28 characters + blank; 31 = SpeechBrain's character set (the anchor reports 31.6M).
    small = timm.create_model("conmamba_ctc_small", num_classes=29)
    large = timm.create_model("conmamba_ctc_large", num_classes=29)
    large31 = timm.create_model("conmamba_ctc_large", num_classes=31)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (small.d_model, len(small.layers)) == (192, 12)
    assert (large.d_model, len(large.layers)) == (256, 18)
    assert count(small) == 14_422_589
    assert count(large) == 31_529_661
    assert count(large31) == 31_530_175
    assert abs(count(large31) / 1e6 - 31.6) < 0.1
    assert abs(count(small) / 1e6 - 14.0) < 0.5


def test_pretrained_weights_are_not_available():
    with pytest.raises(ValueError, match="no pretrained ConMamba weights"):
        timm.create_model("conmamba_ctc_small", pretrained=True)


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = tiny()
    logits, lengths = model(torch.randn(3, 40, 16), torch.tensor([40, 33, 17]))
    loss = torch.nn.functional.ctc_loss(logits.log_softmax(-1).transpose(0, 1), torch.tensor([[1, 2], [3, 3], [4, 0]]),
                                        lengths, torch.tensor([2, 2, 1]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize("variant", ["internal", "external"])
@pytest.mark.parametrize("conv_norm", ["layer", "batch"])
def test_padding_does_not_change_an_utterance(variant, conv_norm):
    torch.manual_seed(0)
    model = tiny(bimamba_variant=variant, conv_norm=conv_norm).eval()
    feats = torch.randn(3, 50, 16)
    lengths = torch.tensor([50, 37, 13])  # odd lengths: the padded frames fall inside the conv windows
    batched, out_len = model(feats, lengths)
    for i in (1, 2):
        alone, _ = model(feats[i:i + 1, :lengths[i]], lengths[i:i + 1])
        torch.testing.assert_close(alone[0], batched[i, :out_len[i]], atol=1e-5, rtol=1e-5)
    # Garbage in the padding does not matter either.
    noisy = feats.clone()
    noisy[2, 13:] = 100.0
    again, _ = model(noisy, lengths)
    torch.testing.assert_close(again[2, :out_len[2]], batched[2, :out_len[2]], atol=1e-5, rtol=1e-5)


def test_bimamba_variant_is_core_bimamba_and_selectable():
    internal, external = tiny(), tiny(bimamba_variant="external")
    for model, variant, combine in ((internal, "internal", "mean"), (external, "external", "concat")):
        mixer = model.layers[0].mixer
        assert isinstance(mixer, BiMamba) and mixer.variant == variant and mixer.combine == combine
    assert "layers.0.mixer.A_b_log" in internal.state_dict()
    assert "layers.0.mixer.mamba_rev.A_log" in external.state_dict()
    assert tiny(bimamba_combine="add").layers[1].mixer.combine == "add"


def test_classification_head_pools_valid_frames():
    torch.manual_seed(0)
    model = tiny(global_pool="avg", num_classes=5).eval()
    feats = torch.randn(2, 24, 16)
    logits, lengths = model(feats, torch.tensor([24, 10]))
    assert logits.shape == (2, 5)
    alone, _ = model(feats[1:, :10], torch.tensor([10]))
    torch.testing.assert_close(alone[0], logits[1], atol=1e-5, rtol=1e-5)
    enc, enc_len = model.forward_features(feats, torch.tensor([24, 10]))
    pooled = model.forward_head(enc, enc_len, pre_logits=True)
    torch.testing.assert_close(pooled[1], enc[1, :enc_len[1]].mean(0))
    with pytest.raises(ValueError, match="needs the encoder lengths"):
        model.forward_head(enc)
    model.reset_classifier(3)
    assert model(feats, torch.tensor([24, 10]))[0].shape == (2, 3)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = tiny()
    feats, lengths = torch.randn(2, 30, 16), torch.tensor([30, 21])
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(ckpt)
        model(feats, lengths)[0].sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_bad_inputs_raise_clear_errors():
    model = tiny()
    with pytest.raises(ValueError, match=r"\(batch, T, n_mels=16\)"):
        model(torch.randn(2, 10, 8), torch.tensor([10, 10]))
    with pytest.raises(TypeError, match="float tensor"):
        model(torch.ones(2, 10, 16, dtype=torch.long), torch.tensor([10, 10]))
    with pytest.raises(ValueError, match="lengths must be an int tensor"):
        model(torch.randn(2, 10, 16), torch.tensor([10.0, 10.0]))
    with pytest.raises(ValueError, match="lengths must be an int tensor"):
        model(torch.randn(2, 10, 16), torch.tensor([10]))
    with pytest.raises(ValueError, match=r"lie in \[1, T=10\]"):
        model(torch.randn(2, 10, 16), torch.tensor([11, 3]))
    with pytest.raises(ValueError, match="global_pool"):
        tiny(global_pool="max")
    with pytest.raises(ValueError, match="conv_kernel must be odd"):
        tiny(conv_kernel=4)
    with pytest.raises(ValueError, match="variant"):
        tiny(bimamba_variant="sideways")
    with pytest.raises(ValueError, match="depth must be a positive int"):
        tiny(depth=0)
