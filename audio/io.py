"""Audio file I/O with soundfile (libsndfile: WAV, FLAC, OGG, ...), resampling with torchaudio.

torchaudio 2.11's `load`/`save` need torchcodec + FFmpeg, so reading and writing go through soundfile;
torchaudio is only used for the resampling math. Every reader error names the file.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

__all__ = ["audio_info", "read_audio", "resample", "write_audio"]


def _check_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    return path


def audio_info(path: str | os.PathLike) -> tuple[int, int]:
    """(num_frames, sample_rate) from the file header, without decoding the samples.

    Raises FileNotFoundError if `path` is missing, ValueError naming it if libsndfile cannot parse it.
    """
    import soundfile as sf

    path = _check_file(path)
    try:
        info = sf.info(str(path))
    except RuntimeError as err:  # soundfile.LibsndfileError is a RuntimeError
        raise ValueError(f"cannot read audio file {path}: {err}") from err
    return int(info.frames), int(info.samplerate)


@lru_cache(maxsize=16)
def _resampler(orig_freq: int, new_freq: int):
    import torchaudio

    # The windowed-sinc kernel is built once per rate pair and reused.
    return torchaudio.transforms.Resample(orig_freq, new_freq)


def resample(waveform: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    """Resample (..., num_samples) float audio from `orig_freq` to `new_freq` Hz (torchaudio, sinc)."""
    for name, value in (("orig_freq", orig_freq), ("new_freq", new_freq)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int (Hz), got {value!r}")
    if orig_freq == new_freq:
        return waveform
    return _resampler(orig_freq, new_freq)(waveform)


def read_audio(path: str | os.PathLike, sample_rate: int | None = None) -> tuple[torch.Tensor, int]:
    """Read an audio file as mono float32 in [-1, 1].

    Multi-channel files are averaged to mono. With `sample_rate` set and different from the file's,
    the samples are resampled to it.

    Returns:
        (waveform (num_samples,) float32, sample_rate).
    Raises:
        FileNotFoundError if `path` is missing; ValueError naming the file if it cannot be decoded, holds
        no samples, or holds non-finite (NaN/inf) samples.
    """
    import soundfile as sf

    path = _check_file(path)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except RuntimeError as err:  # soundfile.LibsndfileError is a RuntimeError
        raise ValueError(f"cannot read audio file {path}: {err}") from err
    if data.shape[0] == 0:
        raise ValueError(f"audio file {path} holds no samples")
    if not np.isfinite(data).all():  # float WAV/FLAC can store NaN/inf; they would poison the loss silently
        raise ValueError(f"audio file {path} holds non-finite samples (NaN or inf)")
    wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if sample_rate is not None and rate != sample_rate:
        wav = resample(wav, int(rate), int(sample_rate))
        rate = sample_rate
    return wav, int(rate)


def write_audio(path: str | os.PathLike, waveform: torch.Tensor | np.ndarray, sample_rate: int,
                subtype: str = "PCM_16") -> Path:
    """Write mono audio (num_samples,) in [-1, 1] to `path`; the format follows the suffix (.wav, .flac).

    Values outside [-1, 1] are clipped (PCM cannot hold them). Returns the path.
    """
    import soundfile as sf

    data = waveform.detach().cpu().numpy() if isinstance(waveform, torch.Tensor) else np.asarray(waveform)
    if data.ndim != 1:
        raise ValueError(f"write_audio: waveform must be 1-D (num_samples,), got shape {tuple(data.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(data.astype(np.float32), -1.0, 1.0), int(sample_rate), subtype=subtype)
    return path
