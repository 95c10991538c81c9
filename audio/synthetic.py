"""The embedded speech corpora: spoken digits and command words synthesised with espeak-ng.

* `espeak_asr_corpus`: short sentences (1-4 words from the 10 digits + 10 Speech-Commands words) as
  16 kHz WAV + JSONL manifests (`train.jsonl`, `val.jsonl`, `test.jsonl`: `audio_filepath`, `text`,
  `duration`, plus `voice`, `speed`, `pitch`), read back by `mambasuite.audio.data` like any corpus.
* `espeak_keyword_corpus`: single words in the Speech Commands layout (`<word>/<voice>_nohash_<n>.wav`,
  `validation_list.txt`, `testing_list.txt`), read back by the Speech Commands loader.

A voice is an espeak-ng accent plus a voice variant (`en-gb-scotland+f2`). Training uses 48 voices; the
validation and test splits use accents *and* variants that never occur in training (held-out voices).
Each utterance also draws a speed (wpm), pitch, word gap, gain and a white-noise floor (20-40 dB SNR).
Generation is seeded (espeak-ng itself is deterministic). A corpus is built in a temporary folder and
renamed into place, so an interrupted run never leaves a half-written cache, and a finished one is reused.
espeak-ng is a system package (`apt-get install espeak-ng`), not a Python one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .io import read_audio, write_audio

__all__ = ["COMMANDS", "DIGITS", "ESPEAK_INSTALL_HINT", "TEST_VOICES", "TRAIN_VOICES", "VAL_VOICES", "WORDS",
           "espeak_asr_corpus", "espeak_available", "espeak_keyword_corpus", "require_espeak", "synthesize"]

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")  # Speech Commands' core ten
WORDS = DIGITS + COMMANDS

_TRAIN_ACCENTS = ("en-us", "en-gb", "en-gb-x-rp", "en-029", "en-gb-scotland", "en-us-nyc")
_TRAIN_VARIANTS = ("m1", "m2", "m3", "m4", "m6", "f1", "f2", "f4")
TRAIN_VOICES = tuple(f"{a}+{v}" for a in _TRAIN_ACCENTS for v in _TRAIN_VARIANTS)
# Held out: accents (Lancaster, West Midlands) and variants (m5, m7, f3, f5) absent from training.
VAL_VOICES = ("en-gb-x-gbclan+m5", "en-gb-x-gbcwmd+f3")
TEST_VOICES = ("en-gb-x-gbclan+f5", "en-gb-x-gbcwmd+m7")

ESPEAK_INSTALL_HINT = ("espeak-ng is needed to synthesise the embedded speech corpus but was not found on PATH. "
                       "Install it with `sudo apt-get install espeak-ng` (Debian/Ubuntu; `make install` does this), "
                       "`brew install espeak-ng` (macOS) or `sudo dnf install espeak-ng` (Fedora), or train on your "
                       "own data (dataset: librispeech or manifest).")
_VERSION = 1  # bump when the generation recipe changes: old caches are then ignored


def espeak_available() -> bool:
    """True when the `espeak-ng` executable is on PATH."""
    return shutil.which("espeak-ng") is not None


def require_espeak() -> str:
    """Path of the espeak-ng executable; FileNotFoundError with install instructions if missing."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise FileNotFoundError(ESPEAK_INSTALL_HINT)
    return exe


def synthesize(text: str, path: str | os.PathLike, voice: str = "en-us", speed: int = 160, pitch: int = 50,
               gap: int = 0, gain: float = 0.7, snr_db: float | None = None, sample_rate: int = 16000,
               seed: int = 0) -> float:
    """Speak `text` with espeak-ng and write it to `path` as mono PCM-16 audio at `sample_rate`.

    espeak-ng's 22.05 kHz output is resampled (torchaudio), peak-normalised to `gain`, and, with `snr_db`,
    white noise at that signal-to-noise ratio is added (seeded by `seed`). Returns the duration in seconds.
    Raises FileNotFoundError without espeak-ng, ValueError if espeak-ng rejects the voice or arguments.
    """
    exe = require_espeak()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_name(path.stem + ".espeak.wav")
    cmd = [exe, "-v", voice, "-s", str(int(speed)), "-p", str(int(pitch)), "-g", str(int(gap)), "-w", str(raw), text]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 or not raw.is_file() or raw.stat().st_size <= 44:
        raise ValueError(f"espeak-ng failed for voice {voice!r}, text {text!r}: {proc.stderr.strip() or 'no audio'}")
    wav, _ = read_audio(raw, sample_rate)
    raw.unlink()
    wav = wav.numpy().astype(np.float64)
    wav *= gain / max(np.abs(wav).max(), 1e-6)
    if snr_db is not None:
        rng = np.random.default_rng(seed)
        noise_power = np.mean(wav ** 2) / 10 ** (snr_db / 10)
        wav = wav + rng.normal(0.0, np.sqrt(noise_power), wav.shape)
    write_audio(path, wav.astype(np.float32), sample_rate)
    return len(wav) / sample_rate


def _draw_style(rng: np.random.Generator) -> dict:
    """One utterance's speaking style: speed (wpm), pitch (0-99), word gap (10 ms units), gain, SNR (dB)."""
    return dict(speed=int(rng.integers(130, 186)), pitch=int(rng.integers(25, 76)), gap=int(rng.integers(0, 6)),
                gain=float(rng.uniform(0.3, 0.9)), snr_db=float(rng.uniform(20.0, 40.0)))


def _build_once(final: Path, build) -> Path:
    """Run build(tmp_dir) in a temporary sibling of `final` and rename it to `final` (atomic publish).

    If another process published `final` first, its copy is kept and ours is discarded.
    """
    if (final / "corpus.json").is_file():
        return final
    require_espeak()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
    try:
        build(tmp)
        if final.exists() and not (final / "corpus.json").is_file():
            shutil.rmtree(final)  # a stale folder without the completion marker
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "corpus.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _run_jobs(jobs: list[dict], workers: int) -> list[float]:
    """Synthesise every job (kwargs of `synthesize`) with a few espeak-ng processes in flight."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda job: synthesize(**job), jobs))


def espeak_asr_corpus(cache_dir: str | os.PathLike, n_train: int = 1600, n_val: int = 200, n_test: int = 200,
                      max_words: int = 4, sample_rate: int = 16000, seed: int = 0, workers: int = 4) -> Path:
    """Build (once) the sentence corpus and return its folder (train/val/test `.jsonl` manifests + `wav/`).

    Each sentence is 1..`max_words` words drawn uniformly from `WORDS`; train utterances use
    `TRAIN_VOICES`, val `VAL_VOICES`, test `TEST_VOICES` (held-out accents and variants). Audio paths in
    the manifests are relative to the folder, so the cache can be moved.
    """
    for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test), ("max_words", max_words)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    params = dict(kind="asr", version=_VERSION, n_train=n_train, n_val=n_val, n_test=n_test, max_words=max_words,
                  sample_rate=sample_rate, seed=seed)
    final = Path(cache_dir).expanduser() / (f"espeak_asr_v{_VERSION}_{n_train}-{n_val}-{n_test}_w{max_words}"
                                            f"_sr{sample_rate}_seed{seed}")

    def build(tmp: Path) -> None:
        rng = np.random.default_rng(seed)
        jobs, rows = [], {}
        for split, count, voices in (("train", n_train, TRAIN_VOICES), ("val", n_val, VAL_VOICES),
                                     ("test", n_test, TEST_VOICES)):
            rows[split] = []
            for i in range(count):
                words = rng.choice(WORDS, size=int(rng.integers(1, max_words + 1)))
                text = " ".join(words)
                voice = voices[int(rng.integers(len(voices)))]
                style = _draw_style(rng)
                rel = f"wav/{split}_{i:05d}.wav"
                jobs.append(dict(text=text, path=tmp / rel, voice=voice, sample_rate=sample_rate,
                                 seed=seed * 1_000_003 + len(jobs), **style))
                rows[split].append(dict(audio_filepath=rel, text=text, voice=voice, speed=style["speed"],
                                        pitch=style["pitch"]))
        (tmp / "wav").mkdir()
        durations = iter(_run_jobs(jobs, workers))
        for split, split_rows in rows.items():
            with (tmp / f"{split}.jsonl").open("w") as f:
                for row in split_rows:
                    row = dict(row, duration=round(next(durations), 4))
                    f.write(json.dumps(row) + "\n")
        (tmp / "corpus.json").write_text(json.dumps(dict(params, words=WORDS, train_voices=TRAIN_VOICES,
                                                         val_voices=VAL_VOICES, test_voices=TEST_VOICES), indent=2))

    return _build_once(final, build)


def espeak_keyword_corpus(cache_dir: str | os.PathLike, words: tuple[str, ...] = WORDS, per_voice: int = 2,
                          sample_rate: int = 16000, seed: int = 0, workers: int = 4) -> Path:
    """Build (once) one-word clips in the Speech Commands layout and return its folder.

    Every word is spoken `per_voice` times by every train, val and test voice (random style each time):
    `<word>/<voice>_nohash_<n>.wav`; `validation_list.txt` / `testing_list.txt` list the held-out voices'
    clips (paths relative to the folder), everything else is training data. Clips are padded with
    silence to at least 1 s, like the real corpus.
    """
    if not words or any(not w or "/" in w for w in words):
        raise ValueError(f"words must be non-empty names without '/', got {words!r}")
    if isinstance(per_voice, bool) or not isinstance(per_voice, int) or per_voice < 1:
        raise ValueError(f"per_voice must be a positive int, got {per_voice!r}")
    params = dict(kind="kws", version=_VERSION, words=list(words), per_voice=per_voice, sample_rate=sample_rate,
                  seed=seed)
    tag = "all" if tuple(words) == WORDS else hashlib.sha1(" ".join(words).encode()).hexdigest()[:8]
    final = Path(cache_dir).expanduser() / f"espeak_kws_v{_VERSION}_{tag}_x{per_voice}_sr{sample_rate}_seed{seed}"

    def build(tmp: Path) -> None:
        rng = np.random.default_rng(seed)
        jobs, lists = [], {"val": [], "test": []}
        for split, voices in (("train", TRAIN_VOICES), ("val", VAL_VOICES), ("test", TEST_VOICES)):
            for voice in voices:
                speaker = voice.replace("+", "-")
                for word in words:
                    for n in range(per_voice):
                        rel = f"{word}/{speaker}_nohash_{n}.wav"
                        jobs.append(dict(text=word, path=tmp / rel, voice=voice, sample_rate=sample_rate,
                                         seed=seed * 1_000_003 + len(jobs), **_draw_style(rng)))
                        if split != "train":
                            lists[split].append(rel)
        _run_jobs(jobs, workers)
        for job in jobs:  # Speech Commands clips are 1 s long; pad short ones with trailing silence
            wav, _ = read_audio(job["path"])
            if len(wav) < sample_rate:
                write_audio(job["path"], np.pad(wav.numpy(), (0, sample_rate - len(wav))), sample_rate)
        (tmp / "validation_list.txt").write_text("\n".join(lists["val"]) + "\n")
        (tmp / "testing_list.txt").write_text("\n".join(lists["test"]) + "\n")
        (tmp / "corpus.json").write_text(json.dumps(params, indent=2))

    return _build_once(final, build)
