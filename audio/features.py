"""Acoustic features (torchaudio): log-mel or Kaldi fbank, mean/variance normalisation, SpecAugment, speed perturbation.

Features are computed inside the model's task (on the training device) from padded waveform batches.
Frames are "snip edges" frames (no centring): frame t covers samples [t * hop, t * hop + n_fft), so an
utterance's frames do not depend on how much padding its batch added, and padded frames are zeroed.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

__all__ = ["FeatureFrontend", "GlobalMeanVarNorm", "SpecAugment", "SpeedPerturb", "frame_lengths", "length_mask"]


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(batch,) lengths -> (batch, max_len) bool, True on valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def frame_lengths(num_samples: torch.Tensor, n_fft: int, hop_length: int) -> torch.Tensor:
    """Number of whole frames per utterance: (num_samples - n_fft) // hop + 1, 0 if shorter than n_fft."""
    return torch.div(num_samples - n_fft, hop_length, rounding_mode="floor").add(1).clamp(min=0)


def _check_batch(waveforms: torch.Tensor, lengths: torch.Tensor, owner: str) -> None:
    if not isinstance(waveforms, torch.Tensor) or not waveforms.is_floating_point() or waveforms.dim() != 2:
        got = tuple(waveforms.shape) if isinstance(waveforms, torch.Tensor) else type(waveforms).__name__
        raise ValueError(f"{owner}: waveforms must be a float tensor (batch, num_samples), got {got}")
    if not isinstance(lengths, torch.Tensor) or lengths.dim() != 1 or lengths.shape[0] != waveforms.shape[0]:
        got = tuple(lengths.shape) if isinstance(lengths, torch.Tensor) else type(lengths).__name__
        raise ValueError(f"{owner}: lengths must be a tensor (batch={waveforms.shape[0]},), got {got}")
    if lengths.is_floating_point() or (lengths > waveforms.shape[1]).any() or (lengths < 1).any():
        raise ValueError(f"{owner}: lengths must be integers in [1, {waveforms.shape[1]}], got {lengths.tolist()}")


class GlobalMeanVarNorm(nn.Module):
    """Per-bin mean/variance normalisation with corpus statistics accumulated while training.

    In training mode every call adds the batch's valid frames to running sums (float64 buffers, saved in the
    checkpoint) and normalises with the statistics so far; in eval mode the stored statistics are used
    unchanged (identity before any training). Under DDP the buffers follow rank 0 (DDP broadcasts buffers).
    x: (batch, T, n_bins), mask: (batch, T) bool -> same shape as x.
    """

    def __init__(self, n_bins: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("sum", torch.zeros(n_bins, dtype=torch.float64))
        self.register_buffer("sum_sq", torch.zeros(n_bins, dtype=torch.float64))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.training:
            valid = x.detach()[mask].double()
            self.count += valid.shape[0]
            self.sum += valid.sum(0)
            self.sum_sq += valid.pow(2).sum(0)
        if self.count == 0:
            return x
        mean = self.sum / self.count
        var = (self.sum_sq / self.count - mean.pow(2)).clamp(min=0)
        return (x - mean.to(x.dtype)) / (var + self.eps).sqrt().to(x.dtype)


class FeatureFrontend(nn.Module):
    """Padded waveforms -> normalised log filterbank features.

    Args:
        sample_rate: input rate in Hz (the data module resamples everything to it).
        n_mels: filterbank bins (80 as in ConMamba / Conformer recipes).
        n_fft, hop_length: frame length and shift in samples (400 / 160 = 25 ms / 10 ms at 16 kHz).
        kind: "mel" (torchaudio MelSpectrogram, power, log(x + 1e-6)) or "fbank" (Kaldi-compatible
            `torchaudio.compliance.kaldi.fbank`, per utterance, no dither).
        normalize: "utterance" (each utterance's own per-bin mean/std over its valid frames), "global"
            (`GlobalMeanVarNorm`, corpus statistics) or "none".

    forward(waveforms (batch, num_samples) float, lengths (batch,) int) ->
        (features (batch, T, n_mels) float32 with padded frames set to 0, frame_lengths (batch,) int64),
        T = max of the per-utterance frame counts. Utterances shorter than n_fft samples raise ValueError.
    """

    KINDS = ("mel", "fbank")
    NORMS = ("utterance", "global", "none")

    def __init__(self, sample_rate: int = 16000, n_mels: int = 80, n_fft: int = 400, hop_length: int = 160,
                 kind: str = "mel", normalize: str = "utterance") -> None:
        super().__init__()
        import torchaudio

        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        if normalize not in self.NORMS:
            raise ValueError(f"normalize must be one of {self.NORMS}, got {normalize!r}")
        for name, value in (("sample_rate", sample_rate), ("n_mels", n_mels), ("n_fft", n_fft),
                            ("hop_length", hop_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.sample_rate, self.n_mels, self.n_fft, self.hop_length = sample_rate, n_mels, n_fft, hop_length
        self.kind, self.normalize = kind, normalize
        self.mel = (torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=hop_length,
                                                         n_mels=n_mels, center=False, power=2.0)
                    if kind == "mel" else None)
        self.global_norm = GlobalMeanVarNorm(n_mels) if normalize == "global" else None

    def output_lengths(self, num_samples: torch.Tensor) -> torch.Tensor:
        """(batch,) sample counts -> (batch,) frame counts."""
        return frame_lengths(num_samples, self.n_fft, self.hop_length)

    def _fbank(self, waveforms: torch.Tensor, lengths: torch.Tensor, frames: int) -> torch.Tensor:
        from torchaudio.compliance.kaldi import fbank

        out = waveforms.new_zeros(waveforms.shape[0], frames, self.n_mels)
        for i, n in enumerate(lengths.tolist()):
            feats = fbank(waveforms[i:i + 1, :n] * 32768.0, num_mel_bins=self.n_mels, sample_frequency=self.sample_rate,
                          frame_length=1000.0 * self.n_fft / self.sample_rate,
                          frame_shift=1000.0 * self.hop_length / self.sample_rate, dither=0.0, snip_edges=True)
            out[i, :feats.shape[0]] = feats
        return out

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_batch(waveforms, lengths, type(self).__name__)
        lengths = lengths.long()
        n_frames = self.output_lengths(lengths)
        if (n_frames < 1).any():
            short = lengths[n_frames < 1].tolist()
            raise ValueError(f"{type(self).__name__}: utterances need at least n_fft={self.n_fft} samples, got "
                             f"lengths {short}")
        frames = int(n_frames.max())
        waveforms = waveforms.float()
        if self.kind == "mel":
            # Trim the batch to the samples the longest utterance's frames use (less FFT work).
            used = (frames - 1) * self.hop_length + self.n_fft
            feats = torch.log(self.mel(waveforms[:, :used]) + 1e-6).transpose(1, 2)  # (batch, T, n_mels)
        else:
            feats = self._fbank(waveforms, lengths, frames)
        mask = length_mask(n_frames, frames)
        if self.normalize == "utterance":
            m = mask[..., None].to(feats.dtype)
            count = n_frames[:, None, None].to(feats.dtype)
            mean = (feats * m).sum(1, keepdim=True) / count
            var = ((feats - mean).pow(2) * m).sum(1, keepdim=True) / count
            feats = (feats - mean) / (var + 1e-5).sqrt()
        elif self.normalize == "global":
            feats = self.global_norm(feats, mask)
        return feats.masked_fill(~mask[..., None], 0.0), n_frames


class SpecAugment(nn.Module):
    """SpecAugment (Park et al. 2019) with torchaudio's FrequencyMasking / TimeMasking, independent per utterance.

    Args:
        freq_masks, freq_width: number of frequency masks and their maximum width in bins (F).
        time_masks, time_width: number of time masks and their maximum width in frames (T).
        time_ratio: a time mask is also at most this fraction of the (padded) length (torchaudio's `p`).

    forward(features (batch, T, n_bins), lengths (batch,)) -> masked features (same shape, padded frames
    stay 0). Identity in eval mode.
    """

    def __init__(self, freq_masks: int = 2, freq_width: int = 27, time_masks: int = 2, time_width: int = 40,
                 time_ratio: float = 0.2) -> None:
        super().__init__()
        import torchaudio

        for name, value in (("freq_masks", freq_masks), ("freq_width", freq_width), ("time_masks", time_masks),
                            ("time_width", time_width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if not 0.0 < time_ratio <= 1.0:
            raise ValueError(f"time_ratio must be in (0, 1], got {time_ratio!r}")
        self.freq = nn.ModuleList(torchaudio.transforms.FrequencyMasking(freq_width, iid_masks=True)
                                  for _ in range(freq_masks if freq_width > 0 else 0))
        self.time = nn.ModuleList(torchaudio.transforms.TimeMasking(time_width, iid_masks=True, p=time_ratio)
                                  for _ in range(time_masks if time_width > 0 else 0))

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if not self.training or (not self.freq and not self.time):
            return features
        spec = features.transpose(1, 2).unsqueeze(1)  # (batch, 1, n_bins, T): iid masks need a channel dim
        for mask in (*self.freq, *self.time):
            spec = mask(spec)
        out = spec.squeeze(1).transpose(1, 2)
        return out.masked_fill(~length_mask(lengths, out.shape[1])[..., None], 0.0)


class SpeedPerturb(nn.Module):
    """Random speed perturbation of one waveform (torchaudio SpeedPerturbation: resampling, pitch shifts too).

    Args:
        sample_rate: rate of the waveforms; factors: speeds to draw from uniformly (e.g. 0.9, 1.0, 1.1).
    forward(waveform (num_samples,)) -> (round(num_samples / factor),) in training mode; identity in eval.
    """

    def __init__(self, sample_rate: int = 16000, factors: Sequence[float] = (0.9, 1.0, 1.1)) -> None:
        super().__init__()
        import torchaudio

        factors = [float(f) for f in factors]
        if not factors or any(not (0.0 < f and math.isfinite(f)) for f in factors):
            raise ValueError(f"factors must be a non-empty list of positive speeds, got {factors!r}")
        self.factors = factors
        self.perturb = torchaudio.transforms.SpeedPerturbation(sample_rate, factors)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return waveform
        if waveform.dim() != 1:
            raise ValueError(f"SpeedPerturb: waveform must be (num_samples,), got {tuple(waveform.shape)}")
        return self.perturb(waveform)[0]
