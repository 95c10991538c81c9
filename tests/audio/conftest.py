"""Audio test helpers: fixture corpora written with soundfile (LibriSpeech, JSONL manifest, Speech Commands)."""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (apt-get install espeak-ng)")


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny tensors: one intra-op thread avoids OpenMP spin contention on shared 2-core runners.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tone(seconds: float, rate: int = 16000, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    """A sine plus a little noise, float32 in [-1, 1]."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    return (0.5 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)


def write_librispeech(root, subset="dev-clean", speakers=((19, 198), (26, 495)), per_chapter=3, rate=16000):
    """root/LibriSpeech/<subset>/<spk>/<chapter>/ with FLACs and a .trans.txt; returns {utt id: transcript}."""
    texts = {}
    for spk, chapter in speakers:
        folder = root / "LibriSpeech" / subset / str(spk) / str(chapter)
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for n in range(per_chapter):
            utt = f"{spk}-{chapter}-{n:04d}"
            text = ["GO LEFT", "THREE FOUR", "IT'S ON"][n % 3]
            sf.write(folder / f"{utt}.flac", tone(0.5 + 0.25 * n, rate, 300 + 50 * n, n), rate)
            lines.append(f"{utt} {text}")
            texts[utt] = text
        (folder / f"{spk}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return texts


def write_manifest_corpus(root, texts=("go left", "three four", "yes", "stop no up"), rate=16000, name="data",
                          suffix=".wav"):
    """root/<name>.jsonl (relative audio paths) + root/audio/*; returns the manifest path."""
    rows = []
    for i, text in enumerate(texts):
        rel = f"audio/{name}_{i}{suffix}"
        (root / "audio").mkdir(parents=True, exist_ok=True)
        wav = tone(0.4 + 0.2 * i, rate, 250 + 40 * i, i)
        sf.write(root / rel, wav, rate)
        rows.append(dict(audio_filepath=rel, text=text, duration=len(wav) / rate))
    path = root / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_speech_commands(root, words=("yes", "no"), speakers=("aa11", "bb22", "cc33"), rate=16000):
    """root/<word>/<speaker>_nohash_0.wav + lists (speaker bb22 -> val, cc33 -> test) + _background_noise_."""
    val, test = [], []
    for w, word in enumerate(words):
        for s, spk in enumerate(speakers):
            rel = f"{word}/{spk}_nohash_0.wav"
            (root / word).mkdir(parents=True, exist_ok=True)
            sf.write(root / rel, tone(0.8 if s == 0 else 1.0, rate, 200 + 100 * w, s), rate)
            (val if spk == "bb22" else test if spk == "cc33" else []).append(rel)
    (root / "_background_noise_").mkdir(exist_ok=True)
    sf.write(root / "_background_noise_" / "white.wav", tone(2.0, rate), rate)
    (root / "validation_list.txt").write_text("\n".join(val) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    return root
