"""soundfile I/O: WAV and FLAC, mono mixdown, resampling, unreadable files."""

import numpy as np
import pytest
import soundfile as sf
import torch

from mambasuite.audio.io import audio_info, read_audio, resample, write_audio

from .conftest import tone


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_read_written_audio(tmp_path, suffix):
    wav = tone(0.5)
    path = write_audio(tmp_path / f"a{suffix}", wav, 16000)
    out, rate = read_audio(path)
    assert rate == 16000 and out.dtype == torch.float32 and out.shape == (8000,)
    np.testing.assert_allclose(out.numpy(), wav, atol=1 / 32768 + 1e-6)  # PCM-16 quantisation
    assert audio_info(path) == (8000, 16000)


def test_stereo_is_averaged(tmp_path):
    left, right = tone(0.1, freq=300), tone(0.1, freq=500)
    sf.write(tmp_path / "s.wav", np.stack([left, right], 1), 16000, subtype="FLOAT")
    out, _ = read_audio(tmp_path / "s.wav")
    np.testing.assert_allclose(out.numpy(), (left + right) / 2, atol=1e-6)


def test_resampling_keeps_duration_and_pitch(tmp_path):
    sf.write(tmp_path / "lo.wav", tone(1.0, rate=8000, freq=1000), 8000)
    out, rate = read_audio(tmp_path / "lo.wav", sample_rate=16000)
    assert rate == 16000 and abs(len(out) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(out.numpy()))
    assert abs(np.argmax(spectrum) * 16000 / len(out) - 1000) < 2
    x = torch.randn(100)
    assert resample(x, 16000, 16000) is x
    with pytest.raises(ValueError, match="orig_freq must be a positive int"):
        resample(x, 0, 16000)


def test_unreadable_audio_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        read_audio(tmp_path / "missing.wav")
    (tmp_path / "junk.wav").write_bytes(b"RIFF....not really")
    with pytest.raises(ValueError, match="cannot read audio file .*junk.wav"):
        read_audio(tmp_path / "junk.wav")
    with pytest.raises(ValueError, match="junk.wav"):
        audio_info(tmp_path / "junk.wav")
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(ValueError, match="holds no samples"):
        read_audio(tmp_path / "empty.wav")
    with pytest.raises(ValueError, match="1-D"):
        write_audio(tmp_path / "x.wav", np.zeros((2, 10)), 16000)
