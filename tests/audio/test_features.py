"""Features: log-mel vs a direct numpy computation, fbank, padding, normalisation, SpecAugment, speed perturbation."""

import numpy as np
import pytest
import torch
import torchaudio

from mambasuite.audio.features import (FeatureFrontend, GlobalMeanVarNorm, SpecAugment, SpeedPerturb, frame_lengths,
                                       length_mask)


def _numpy_log_mel(wav: np.ndarray, rate=16000, n_fft=400, hop=160, n_mels=80) -> np.ndarray:
    """Framing + periodic Hann + |rfft|^2 + HTK mel filters, written out without torchaudio's STFT."""
    n_frames = (len(wav) - n_fft) // hop + 1
    frames = np.stack([wav[t * hop:t * hop + n_fft] for t in range(n_frames)]).astype(np.float64)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    fb = torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, 0.0, rate / 2, n_mels, rate).double().numpy()
    return np.log(power @ fb + 1e-6)


def test_log_mel_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    wav = (0.3 * rng.standard_normal(4000)).astype(np.float32)
    front = FeatureFrontend(normalize="none")
    feats, n = front(torch.from_numpy(wav)[None], torch.tensor([4000]))
    ref = _numpy_log_mel(wav)
    assert n.item() == ref.shape[0] == (4000 - 400) // 160 + 1
    np.testing.assert_allclose(feats[0].numpy(), ref, atol=2e-3, rtol=1e-3)


def test_fbank_kind_is_kaldi_fbank_per_utterance():
    rng = np.random.default_rng(1)
    wav = torch.from_numpy((0.3 * rng.standard_normal(5000)).astype(np.float32))
    feats, n = FeatureFrontend(kind="fbank", normalize="none")(wav[None], torch.tensor([5000]))
    ref = torchaudio.compliance.kaldi.fbank(wav[None] * 32768.0, num_mel_bins=80, dither=0.0)
    assert feats.shape[1] == n.item() == ref.shape[0]
    torch.testing.assert_close(feats[0], ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["mel", "fbank"])
@pytest.mark.parametrize("normalize", ["utterance", "none"])
def test_padding_does_not_change_features(kind, normalize):
    torch.manual_seed(0)
    wavs = torch.randn(3, 6000) * 0.2
    lengths = torch.tensor([6000, 3217, 401])
    front = FeatureFrontend(kind=kind, normalize=normalize)
    batch, n = front(wavs, lengths)
    assert n.tolist() == frame_lengths(lengths, 400, 160).tolist() == [36, 18, 1]
    for i in (1, 2):
        alone, _ = front(wavs[i:i + 1, :lengths[i]], lengths[i:i + 1])
        torch.testing.assert_close(alone[0], batch[i, :n[i]], atol=1e-5, rtol=1e-5)
        assert (batch[i, n[i]:] == 0).all()


def test_utterance_normalisation_uses_valid_frames_only():
    torch.manual_seed(0)
    feats, n = FeatureFrontend(normalize="utterance")(torch.randn(2, 8000), torch.tensor([8000, 4000]))
    valid = feats[1, :n[1]]
    torch.testing.assert_close(valid.mean(0), torch.zeros(80), atol=1e-4, rtol=0)
    torch.testing.assert_close(valid.std(0, unbiased=False), torch.ones(80), atol=1e-3, rtol=0)


def test_global_norm_accumulates_in_training_and_freezes_in_eval():
    norm = GlobalMeanVarNorm(3)
    x1, x2 = torch.randn(2, 5, 3) * 2 + 1, torch.randn(1, 5, 3) * 3 - 2
    m1, m2 = length_mask(torch.tensor([5, 2]), 5), length_mask(torch.tensor([4]), 5)
    norm.eval()
    torch.testing.assert_close(norm(x1, m1), x1)  # no statistics yet: identity
    norm.train()
    norm(x1, m1)
    norm(x2, m2)
    frames = torch.cat([x1[m1], x2[m2]]).double()
    mean, var = frames.mean(0), frames.var(0, unbiased=False)
    norm.eval()
    out = norm(x2, m2)
    torch.testing.assert_close(out, ((x2 - mean.float()) / (var + 1e-5).sqrt().float()), atol=1e-5, rtol=1e-5)
    assert norm.count.item() == 11
    out_again = norm(x1, m1)  # eval does not update
    assert norm.count.item() == 11 and out_again.shape == x1.shape


def test_spec_augment_masks_in_training_only():
    torch.manual_seed(0)
    feats = torch.randn(4, 50, 20) + 5.0  # no natural zeros
    lengths = torch.tensor([50, 40, 30, 20])
    feats = feats.masked_fill(~length_mask(lengths, 50)[..., None], 0.0)
    aug = SpecAugment(freq_masks=2, freq_width=5, time_masks=2, time_width=8, time_ratio=1.0)
    aug.eval()
    assert torch.equal(aug(feats, lengths), feats)
    aug.train()
    out = aug(feats, lengths)
    assert out.shape == feats.shape
    masked = (out == 0) & (feats != 0)
    assert masked.any()
    # Masks are whole frequency rows / time columns: every masked value's row or column is fully masked.
    for b in range(4):
        valid = out[b, :lengths[b]]
        zero = valid == 0
        rows, cols = zero.all(0), zero.all(1)
        assert (zero == (rows[None, :] | cols[:, None])).all()
    assert (out[3, 20:] == 0).all()
    with pytest.raises(ValueError, match="time_ratio"):
        SpecAugment(time_ratio=0.0)


def test_speed_perturb_changes_length_in_training():
    torch.manual_seed(0)
    wav = torch.randn(16000)
    sp = SpeedPerturb(16000, [1.25])
    assert abs(len(sp(wav)) - 16000 / 1.25) <= 2
    sp.eval()
    assert sp(wav) is wav
    with pytest.raises(ValueError, match="positive speeds"):
        SpeedPerturb(16000, [0.0])
    with pytest.raises(ValueError, match=r"\(num_samples,\)"):
        SpeedPerturb(16000, [1.1])(torch.randn(2, 100))


def test_frontend_bad_inputs():
    front = FeatureFrontend()
    with pytest.raises(ValueError, match=r"\(batch, num_samples\)"):
        front(torch.randn(1000), torch.tensor([1000]))
    with pytest.raises(ValueError, match=r"integers in \[1, 1000\]"):
        front(torch.randn(1, 1000), torch.tensor([2000]))
    with pytest.raises(ValueError, match="at least n_fft=400 samples"):
        front(torch.randn(2, 1000), torch.tensor([1000, 399]))
    with pytest.raises(ValueError, match="kind"):
        FeatureFrontend(kind="mfcc")
    with pytest.raises(ValueError, match="normalize"):
        FeatureFrontend(normalize="batch")
