"""Speech data: LibriSpeech folders, JSONL manifests and Speech Commands folders, length-bucketed batches, data modules.

Every corpus becomes a list of `Utterance`s (audio path, transcript, duration) and is read by the same
dataset class. Without user paths, the data modules first synthesise the embedded espeak-ng corpora
(`mambasuite.audio.synthetic`) into `cache_dir` and then read those files like any other corpus.

* JSONL manifest (NeMo's format): one object per line with `audio_filepath` (absolute, or relative to the
  manifest's folder), `text` and `duration` (seconds); other keys are ignored.
* LibriSpeech: `<root>/[LibriSpeech/]<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt` with
  lines `<utt id> <TRANSCRIPT>` and the audio in `<utt id>.flac`. A subset is converted once into a
  manifest under `cache_dir` (durations come from the FLAC headers).
* Speech Commands: `<root>/<word>/<speaker>_nohash_<n>.wav` + `validation_list.txt` / `testing_list.txt`
  (paths relative to root); every other clip is training data; `_background_noise_` is not a word.

Bad records -- unreadable or missing audio, empty transcripts, characters outside the tokenizer,
audio shorter than `min_duration` -- raise a ValueError/FileNotFoundError naming the record with
`on_error="raise"` (default), or are dropped, counted and logged (WARNING, with examples) with
`on_error="skip"`. Utterances longer than `max_duration` are always a counted, logged skip (a filter).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mambasuite.core.files import atomic_write
from mambasuite.core.resumable import ResumableDataLoader

from .io import audio_info, read_audio
from .text import OutOfVocabularyError, build_tokenizer, normalize_text

__all__ = ["ASRDataModule", "AudioTextDataset", "BucketBatchSampler", "KWSDataModule", "KeywordDataset",
           "Utterance", "collate_audio_text", "filter_utterances", "read_librispeech", "read_manifest",
           "read_speech_commands", "write_manifest"]

log = logging.getLogger(__name__)

FRAMES_PER_SECOND = 100  # feature frames per second (10 ms hop): the unit of the batch budget
ON_ERROR = ("raise", "skip")


@dataclass(frozen=True)
class Utterance:
    """One labelled recording: `id`, `audio_path`, `text` (raw transcript or label), `duration` in seconds."""
    id: str
    audio_path: str
    text: str
    duration: float


# ------------------------------------------------------------------------------------------------ readers
def _text_lines(path: Path, what: str) -> list[str]:
    """The lines of a UTF-8 text file, split on "\n" only (a JSON string may hold U+2028 and friends, which
    `str.splitlines` would also split on); a trailing "\r" is dropped. ValueError naming `path` if not UTF-8."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    return [line.removesuffix("\r") for line in text.split("\n")]


def _seconds(value) -> float | None:
    """`value` as a positive, finite float of seconds, or None (bools, strings, NaN, inf, 1e400 are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        seconds = float(value)
    except OverflowError:  # an integer too large for a float
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def _audio_path(audio, manifest: Path, where: str) -> str:
    """The record's audio path: `~` expanded, relative paths resolved against the manifest's folder."""
    if not isinstance(audio, str) or not audio.strip() or "\x00" in audio:
        raise ValueError(f"{where}: audio_filepath must be a non-empty path string without NUL characters, "
                         f"got {audio!r}")
    try:
        audio_path = Path(audio).expanduser()
    except RuntimeError as err:  # "~someone/..." for a user this machine does not know
        raise ValueError(f"{where}: audio_filepath {audio!r} cannot be expanded ({err})") from None
    return str(audio_path if audio_path.is_absolute() else manifest.parent / audio_path)


def read_manifest(path: str | os.PathLike) -> list[Utterance]:
    """Read a JSONL manifest; errors name `path:line`. Relative audio paths resolve against the manifest's folder."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    out = []
    for lineno, line in enumerate(_text_lines(path, "manifest"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not a JSON object ({err.msg})") from None
        except RecursionError:
            raise ValueError(f"{where}: not a JSON object (nested too deeply)") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in ("audio_filepath", "text", "duration") if k not in row]
        if missing:
            raise ValueError(f"{where}: missing key(s) {missing} (need audio_filepath, text, duration)")
        text, duration = row["text"], _seconds(row["duration"])
        audio_path = _audio_path(row["audio_filepath"], path, where)
        if not isinstance(text, str):
            raise ValueError(f"{where}: text must be a string, got {type(text).__name__}")
        if duration is None:
            raise ValueError(f"{where}: duration must be a positive, finite number of seconds, "
                             f"got {str(row['duration'])[:40]}")
        out.append(Utterance(str(row.get("id", f"{path.stem}:{lineno}")), audio_path, text, duration))
    if not out:
        raise ValueError(f"manifest {path} holds no utterances")
    return out


def write_manifest(utterances: Sequence[Utterance], path: str | os.PathLike) -> Path:
    """Write utterances as a JSONL manifest (`atomic_write`: temporary file, fsync, rename). Returns the path."""
    lines = [json.dumps(dict(id=u.id, audio_filepath=u.audio_path, text=u.text, duration=u.duration)) + "\n"
             for u in utterances]
    return atomic_write(path, "".join(lines))


def _librispeech_subset_dir(root: Path, subset: str) -> Path:
    for candidate in (root / subset, root / "LibriSpeech" / subset):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"LibriSpeech subset {subset!r} not found under {root} (looked for {root / subset} and "
                            f"{root / 'LibriSpeech' / subset})")


def read_librispeech(root: str | os.PathLike, subset: str, cache_dir: str | os.PathLike | None = None,
                     on_error: str = "raise") -> list[Utterance]:
    """Utterances of one LibriSpeech subset (e.g. "train-clean-100"), sorted by id.

    Transcript lines must read `<speaker>-<chapter>-<n> TEXT`; the FLAC must exist next to the transcript.
    With `cache_dir` the subset is stored as a manifest there (keyed by its absolute path) and re-read
    from it next time, which skips the header reads. A FLAC that is missing or whose header cannot be read
    raises (`on_error="raise"`) or is skipped, counted and logged.
    """
    subset_dir = _librispeech_subset_dir(Path(root).expanduser(), subset)
    cached = None
    if cache_dir is not None:
        key = hashlib.sha1(str(subset_dir.resolve()).encode()).hexdigest()[:10]
        cached = Path(cache_dir).expanduser() / "librispeech" / f"{subset}_{key}.jsonl"
        if cached.is_file():
            return read_manifest(cached)
    transcripts = sorted(subset_dir.glob("*/*/*.trans.txt"))
    if not transcripts:
        raise FileNotFoundError(f"no *.trans.txt files under {subset_dir} (expected <speaker>/<chapter>/ folders)")
    out, skipped = [], defaultdict(list)
    for trans in transcripts:
        for lineno, line in enumerate(_text_lines(trans, "LibriSpeech transcript"), start=1):
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            parts = utt_id.split("-")
            # The id names the FLAC beside the transcript: no empty parts, no path separators.
            if len(parts) != 3 or not all(parts) or any(c in utt_id for c in "/\\\x00"):
                raise ValueError(f"{trans}:{lineno}: expected '<speaker>-<chapter>-<n> TRANSCRIPT', got {line[:80]!r}")
            flac = trans.parent / f"{utt_id}.flac"
            try:
                frames, rate = audio_info(flac)
            except (FileNotFoundError, ValueError) as err:
                if on_error == "raise":
                    raise type(err)(f"{trans}:{lineno}: {err}") from err
                skipped["unreadable audio"].append(utt_id)
                continue
            out.append(Utterance(utt_id, str(flac), text, frames / rate))
    _log_skips(f"LibriSpeech {subset}", skipped, len(out))
    if cached is not None:
        write_manifest(out, cached)
    return out


def _speech_commands_root(root: Path) -> Path:
    for candidate in (root, root / "speech_commands_v0.02", root / "SpeechCommands" / "speech_commands_v0.02",
                      root / "speech_commands_v0.01", root / "SpeechCommands" / "speech_commands_v0.01"):
        if (candidate / "validation_list.txt").is_file():
            return candidate
    raise FileNotFoundError(f"no Speech Commands folder under {root} (expected validation_list.txt, "
                            f"testing_list.txt and <word>/*.wav)")


def read_speech_commands(root: str | os.PathLike, split: str) -> list[Utterance]:
    """Clips of one split ("train" | "val" | "test") of a Speech Commands folder; `text` holds the word."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    root = _speech_commands_root(Path(root).expanduser())
    listed = {}
    for name, key in (("validation_list.txt", "val"), ("testing_list.txt", "test")):
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"Speech Commands list not found: {path}")
        listed[key] = {line.strip() for line in _text_lines(path, "Speech Commands list") if line.strip()}
    if split == "train":
        held_out = listed["val"] | listed["test"]
        rels = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.wav")
                      if not p.parent.name.startswith("_") and p.relative_to(root).as_posix() not in held_out)
    else:
        rels = sorted(listed[split])
    out = []
    for rel in rels:
        word = rel.split("/")[0]
        out.append(Utterance(rel, str(root / rel), word, 1.0))
    if not out:
        raise ValueError(f"Speech Commands folder {root} has no {split} clips")
    return out


# ----------------------------------------------------------------------------------------------- checking
def _log_skips(what: str, skipped: dict, kept: int) -> None:
    if skipped:
        detail = "; ".join(f"{reason}: {len(ids)} (e.g. {', '.join(map(str, ids[:3]))})"
                           for reason, ids in skipped.items())
        log.warning("%s: skipped %d record(s), kept %d -- %s", what, sum(map(len, skipped.values())), kept, detail)


def filter_utterances(utterances: Sequence[Utterance], tokenizer=None, on_error: str = "raise",
                      min_duration: float = 0.05, max_duration: float | None = None, check_audio: bool = True,
                      what: str = "data") -> tuple[list[Utterance], dict[str, list[str]]]:
    """Validate utterances; returns (kept, skipped {reason: [ids]}).

    Checks: audio header readable (when `check_audio`), transcript non-empty after normalisation and
    encodable by `tokenizer` (when given), duration >= min_duration. A failure raises ValueError /
    FileNotFoundError naming the utterance (`on_error="raise"`) or is skipped and counted ("skip").
    Durations above `max_duration` are always skipped and counted. Skips are logged as one WARNING.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    kept, skipped = [], defaultdict(list)

    def bad(reason: str, u: Utterance, err: Exception) -> None:
        if on_error == "raise":
            raise type(err)(f"{what}: utterance {u.id} ({u.audio_path}): {err}") from err
        skipped[reason].append(u.id)

    for u in utterances:
        if max_duration is not None and u.duration > max_duration:
            skipped[f"longer than max_duration={max_duration}s"].append(u.id)
            continue
        if u.duration < min_duration:
            bad("too short", u, ValueError(f"duration {u.duration:.3f}s < min_duration={min_duration}s"))
            continue
        if tokenizer is not None:
            if not normalize_text(u.text):
                bad("empty transcript", u, ValueError("empty transcript"))
                continue
            try:
                tokenizer.encode(u.text)
            except OutOfVocabularyError as err:
                bad("out-of-vocabulary characters", u, err)
                continue
        if check_audio:
            try:
                audio_info(u.audio_path)
            except (FileNotFoundError, ValueError) as err:
                bad("unreadable audio", u, err)
                continue
        kept.append(u)
    _log_skips(what, skipped, len(kept))
    if not kept:
        raise ValueError(f"{what}: no usable utterances left (skipped: "
                         f"{ {k: len(v) for k, v in skipped.items()} })")
    return kept, dict(skipped)


# ----------------------------------------------------------------------------------------------- datasets
class AudioTextDataset(Dataset):
    """Utterances -> {"id", "audio" (num_samples,) float32, "tokens" (U,) int64, "text" (normalised)}.

    Audio is read with soundfile and resampled to `sample_rate`; `speed_perturb` (a `SpeedPerturb`, in
    training) changes its speed. Decoding errors raise ValueError naming the file.
    """

    def __init__(self, utterances: Sequence[Utterance], tokenizer, sample_rate: int = 16000,
                 speed_perturb: torch.nn.Module | None = None) -> None:
        self.utterances = list(utterances)
        self.tokenizer, self.sample_rate, self.speed_perturb = tokenizer, sample_rate, speed_perturb

    def __len__(self) -> int:
        return len(self.utterances)

    def frames(self) -> list[int]:
        """Approximate feature frames per utterance (the bucketing key)."""
        return [max(1, int(u.duration * FRAMES_PER_SECOND)) for u in self.utterances]

    def __getitem__(self, i: int) -> dict:
        u = self.utterances[i]
        wav, _ = read_audio(u.audio_path, self.sample_rate)
        if self.speed_perturb is not None:
            wav = self.speed_perturb(wav)
        return {"id": u.id, "audio": wav, "tokens": torch.tensor(self.tokenizer.encode(u.text), dtype=torch.long),
                "text": self.tokenizer.normalize(u.text)}


def collate_audio_text(items: list[dict]) -> dict:
    """Pad a list of `AudioTextDataset` items into a batch dict:
    audio (B, S_max) float32, audio_lengths (B,), targets (B, U_max) int64 (0-padded), target_lengths (B,),
    texts (list of str), ids (list of str)."""
    audio_lengths = torch.tensor([len(it["audio"]) for it in items], dtype=torch.long)
    target_lengths = torch.tensor([len(it["tokens"]) for it in items], dtype=torch.long)
    audio = torch.zeros(len(items), int(audio_lengths.max()))
    targets = torch.zeros(len(items), max(1, int(target_lengths.max())), dtype=torch.long)
    for i, it in enumerate(items):
        audio[i, :len(it["audio"])] = it["audio"]
        targets[i, :len(it["tokens"])] = it["tokens"]
    return {"audio": audio, "audio_lengths": audio_lengths, "targets": targets, "target_lengths": target_lengths,
            "texts": [it["text"] for it in items], "ids": [it["id"] for it in items]}


class KeywordDataset(Dataset):
    """Clips -> (audio (clip_samples,) float32, label int64): padded with zeros or cropped (centre) to the clip."""

    def __init__(self, utterances: Sequence[Utterance], classes: Sequence[str], sample_rate: int = 16000,
                 clip_seconds: float = 1.0) -> None:
        self.utterances, self.classes = list(utterances), list(classes)
        self.index = {c: i for i, c in enumerate(self.classes)}
        self.sample_rate, self.clip = sample_rate, int(round(clip_seconds * sample_rate))

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.utterances[i]
        wav, _ = read_audio(u.audio_path, self.sample_rate)
        if len(wav) >= self.clip:
            start = (len(wav) - self.clip) // 2
            wav = wav[start:start + self.clip]
        else:
            wav = torch.nn.functional.pad(wav, (0, self.clip - len(wav)))
        return wav, torch.tensor(self.index[u.text], dtype=torch.long)


# ----------------------------------------------------------------------------------------------- batching
class BucketBatchSampler(Sampler[list[int]]):
    """Length-bucketed batches under a padded-frames budget.

    Items are sorted by length (ties in a seeded random order) and cut greedily into batches whose padded
    size, batch size x longest item, stays within `max_frames` (and `max_batch_size` items); an item longer
    than the budget forms a batch of its own. The batches are fixed; with `shuffle` their order is
    re-drawn every epoch (`set_epoch`, called by Lightning). Under torch.distributed each rank takes every
    world-size-th batch; for training (`shuffle`) the batch count is cut to a multiple of the world size so
    every rank runs the same number of steps.

    Args:
        lengths: length of each item (feature frames). max_frames: padded frames per batch.
    """

    def __init__(self, lengths: Sequence[int], max_frames: int, max_batch_size: int | None = None,
                 shuffle: bool = True, seed: int = 0) -> None:
        if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
            raise ValueError(f"max_frames must be a positive int, got {max_frames!r}")
        if max_batch_size is not None and (not isinstance(max_batch_size, int) or max_batch_size < 1):
            raise ValueError(f"max_batch_size must be a positive int or None, got {max_batch_size!r}")
        if len(lengths) == 0:
            raise ValueError("BucketBatchSampler: no items")
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(lengths), generator=g).tolist()
        order.sort(key=lambda i: lengths[i])  # stable: equal lengths keep the random order
        self.batches, batch, longest = [], [], 0
        cap = max_batch_size or len(lengths)
        for i in order:
            new_longest = max(longest, lengths[i])
            if batch and ((len(batch) + 1) * new_longest > max_frames or len(batch) >= cap):
                self.batches.append(batch)
                batch, new_longest = [], lengths[i]
            batch.append(i)
            longest = new_longest
        self.batches.append(batch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @staticmethod
    def _world() -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size(), torch.distributed.get_rank()
        return 1, 0

    def _rank_batches(self) -> list[list[int]]:
        order = list(range(len(self.batches)))
        if self.shuffle:
            order = torch.randperm(len(order), generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        world, rank = self._world()
        if world > 1 and self.shuffle:
            order = order[:max(world, len(order) // world * world)]
        return [self.batches[b] for b in order[rank::world]]

    def __iter__(self):
        return iter(self._rank_batches())

    def __len__(self) -> int:
        return len(self._rank_batches())


# ------------------------------------------------------------------------------------------ data modules
def _as_list(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, (str, os.PathLike)) else list(value)


class ASRDataModule(pl.LightningDataModule):
    """Speech recognition data: batches from `collate_audio_text` in length buckets.

    Args:
        dataset: "espeak" (embedded corpus, synthesised once into cache_dir), "librispeech" (data_dir with
            the subsets below) or "manifest" (train/val/test_manifest JSONL files; a list concatenates).
        data_dir: LibriSpeech root (holding `LibriSpeech/<subset>` or `<subset>`).
        train_subsets, val_subsets, test_subsets: LibriSpeech subsets per split.
        train_manifest, val_manifest, test_manifest: manifest path(s) per split (test optional: val is used).
        cache_dir: espeak corpus, LibriSpeech manifests and BPE models are kept here.
        espeak_counts: (train, val, test) utterances of the embedded corpus.
        sample_rate: audio is resampled to this rate.
        tokenizer: "char" (default; `alphabet`) or "bpe" (SentencePiece trained on the training transcripts,
            `bpe_vocab_size` pieces).
        max_frames: padded feature frames (10 ms) per batch; max_batch_size: cap on utterances per batch.
        min_duration, max_duration: duration limits in seconds (see the module docstring).
        speed_perturb: speeds drawn per training utterance (e.g. [0.9, 1.0, 1.1]); None = off.
        on_error: "raise" | "skip" (see the module docstring). check_audio: read every audio header at setup.
        num_workers: DataLoader workers. seed: batch composition and order.
    """

    def __init__(self, dataset: Literal["espeak", "librispeech", "manifest"] = "espeak", data_dir: str | None = None,
                 train_subsets: Sequence[str] = ("train-clean-100",), val_subsets: Sequence[str] = ("dev-clean",),
                 test_subsets: Sequence[str] = ("test-clean",), train_manifest: str | list[str] | None = None,
                 val_manifest: str | list[str] | None = None, test_manifest: str | list[str] | None = None,
                 cache_dir: str = "~/.cache/mambasuite/speech", espeak_counts: tuple[int, int, int] = (1600, 200, 200),
                 sample_rate: int = 16000, tokenizer: Literal["char", "bpe"] = "char", bpe_vocab_size: int = 256,
                 alphabet: str = " 'abcdefghijklmnopqrstuvwxyz", max_frames: int = 20000,
                 max_batch_size: int | None = None, min_duration: float = 0.05, max_duration: float | None = None,
                 speed_perturb: list[float] | None = None, on_error: Literal["raise", "skip"] = "raise",
                 check_audio: bool = True, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        if dataset not in ("espeak", "librispeech", "manifest"):
            raise ValueError(f"dataset must be 'espeak', 'librispeech' or 'manifest', got {dataset!r}")
        if dataset == "librispeech" and not data_dir:
            raise ValueError("dataset='librispeech' needs data_dir (the folder holding the LibriSpeech subsets)")
        if dataset == "manifest" and not (train_manifest and val_manifest):
            raise ValueError("dataset='manifest' needs train_manifest and val_manifest")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if tokenizer not in ("char", "bpe"):
            raise ValueError(f"tokenizer must be 'char' or 'bpe', got {tokenizer!r}")
        self.save_hyperparameters()
        self.tokenizer = None
        self.splits: dict[str, AudioTextDataset] = {}
        self.skipped: dict[str, dict[str, list[str]]] = {}

    # -- corpus
    def _espeak_root(self) -> Path:
        from .synthetic import espeak_asr_corpus

        n_train, n_val, n_test = self.hparams.espeak_counts
        return espeak_asr_corpus(Path(self.hparams.cache_dir).expanduser() / "espeak", n_train, n_val, n_test,
                                 sample_rate=self.hparams.sample_rate, seed=self.hparams.seed)

    def _utterances(self, split: str) -> list[Utterance]:
        hp = self.hparams
        if hp.dataset == "espeak":
            return read_manifest(self._espeak_root() / f"{split}.jsonl")
        if hp.dataset == "manifest":
            return [u for p in _as_list(getattr(hp, f"{split}_manifest")) for u in read_manifest(p)]
        subsets = _as_list(getattr(hp, f"{split}_subsets"))
        if not subsets:
            raise ValueError(f"no LibriSpeech subsets given for the {split} split")
        return [u for s in subsets for u in read_librispeech(hp.data_dir, s, hp.cache_dir, hp.on_error)]

    def prepare_data(self) -> None:
        if self.hparams.dataset == "espeak":
            self._espeak_root()
        elif self.hparams.dataset == "librispeech":
            for split in ("train", "val", "test"):
                if _as_list(getattr(self.hparams, f"{split}_subsets")):
                    self._utterances(split)  # writes the cached manifests once

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is not None:
            return
        hp = self.hparams
        has_test = {"espeak": True, "manifest": bool(_as_list(hp.test_manifest)),
                    "librispeech": bool(_as_list(hp.test_subsets))}[hp.dataset]
        raw = {split: self._utterances(split) for split in ("train", "val", "test") if split != "test" or has_test}
        train_texts = [u.text for u in raw["train"] if normalize_text(u.text)]
        self.tokenizer = build_tokenizer(hp.tokenizer, train_texts, hp.bpe_vocab_size,
                                         Path(hp.cache_dir).expanduser() / "tokenizers", hp.alphabet)
        speed = None
        if hp.speed_perturb:
            from .features import SpeedPerturb

            speed = SpeedPerturb(hp.sample_rate, hp.speed_perturb)
        for split, utts in raw.items():
            kept, skipped = filter_utterances(utts, self.tokenizer, hp.on_error, hp.min_duration,
                                              hp.max_duration if split == "train" else None, hp.check_audio,
                                              what=f"{hp.dataset} {split}")
            self.skipped[split] = skipped
            self.splits[split] = AudioTextDataset(kept, self.tokenizer, hp.sample_rate,
                                                  speed if split == "train" else None)
        self.splits.setdefault("test", self.splits["val"])

    @property
    def vocab_size(self) -> int:
        """CTC outputs (tokens + blank), after setup."""
        if self.tokenizer is None:
            self.setup()
        return self.tokenizer.vocab_size

    def training_words(self) -> list[str]:
        """Distinct words of the (kept) training transcripts, e.g. for a decoding lexicon."""
        if self.tokenizer is None:
            self.setup()
        return sorted({w for u in self.splits["train"].utterances for w in normalize_text(u.text).split()})

    def lexicon_path(self) -> Path:
        """A lexicon of the training words, written once under cache_dir (keyed by words and tokenizer)."""
        from .decoding import write_lexicon

        words = self.training_words()
        key = hashlib.sha1(("\n".join(words) + "\n" + "|".join(self.tokenizer.ctc_tokens)).encode()).hexdigest()[:12]
        path = Path(self.hparams.cache_dir).expanduser() / "lexicons" / f"train_words_{key}.txt"
        return path if path.is_file() else write_lexicon(words, self.tokenizer, path)

    def _loader(self, split: str) -> DataLoader:
        hp = self.hparams
        ds = self.splits[split]
        train = split == "train"
        sampler = BucketBatchSampler(ds.frames(), hp.max_frames, hp.max_batch_size, shuffle=train, seed=hp.seed)
        common = dict(collate_fn=collate_audio_text, num_workers=hp.num_workers,
                      persistent_workers=hp.num_workers > 0, pin_memory=torch.cuda.is_available())
        if train:  # batch order, position and per-utterance speed draws resume from checkpoints
            return ResumableDataLoader(ds, batch_sampler=sampler, seed=hp.seed, **common)
        return DataLoader(ds, batch_sampler=sampler, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")


class KWSDataModule(pl.LightningDataModule):
    """Keyword spotting data in the Speech Commands layout; batches are (audio (B, clip samples), labels (B,)).

    Args:
        dataset: "espeak" (embedded one-word clips, synthesised once into cache_dir) or "speechcommands"
            (data_dir: the extracted corpus; torchaudio's `SpeechCommands/speech_commands_v0.02` works too).
        labels: words to classify (None = every word folder of the training split); clips of other words
            are dropped and counted in the log.
        clip_seconds: clips are padded / centre-cropped to this length. sample_rate: resampling target.
        espeak_per_voice: clips per word and voice of the embedded corpus.
        on_error: "raise" | "skip" for unreadable clips. batch_size, num_workers: DataLoader settings.
    """

    def __init__(self, dataset: Literal["espeak", "speechcommands"] = "espeak", data_dir: str | None = None,
                 labels: list[str] | None = None, cache_dir: str = "~/.cache/mambasuite/speech",
                 clip_seconds: float = 1.0, sample_rate: int = 16000, espeak_per_voice: int = 2,
                 on_error: Literal["raise", "skip"] = "raise", batch_size: int = 64, num_workers: int = 0,
                 seed: int = 0) -> None:
        super().__init__()
        if dataset not in ("espeak", "speechcommands"):
            raise ValueError(f"dataset must be 'espeak' or 'speechcommands', got {dataset!r}")
        if dataset == "speechcommands" and not data_dir:
            raise ValueError("dataset='speechcommands' needs data_dir (the extracted Speech Commands folder)")
        if not clip_seconds > 0:
            raise ValueError(f"clip_seconds must be > 0, got {clip_seconds!r}")
        self.save_hyperparameters()
        self.splits: dict[str, KeywordDataset] = {}
        self.classes: list[str] = []

    def _root(self) -> Path:
        hp = self.hparams
        if hp.dataset == "espeak":
            from .synthetic import espeak_keyword_corpus

            return espeak_keyword_corpus(Path(hp.cache_dir).expanduser() / "espeak", per_voice=hp.espeak_per_voice,
                                         sample_rate=hp.sample_rate, seed=hp.seed)
        return Path(hp.data_dir).expanduser()

    def prepare_data(self) -> None:
        self._root()

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        hp = self.hparams
        root = self._root()
        raw = {split: read_speech_commands(root, split) for split in ("train", "val", "test")}
        self.classes = list(hp.labels) if hp.labels else sorted({u.text for u in raw["train"]})
        wanted = set(self.classes)
        for split, utts in raw.items():
            others = [u.id for u in utts if u.text not in wanted]
            if others:
                log.warning("%s %s: dropped %d clip(s) of words outside labels (e.g. %s)", hp.dataset, split,
                            len(others), ", ".join(others[:3]))
            utts = [u for u in utts if u.text in wanted]
            kept, _ = filter_utterances(utts, None, hp.on_error, min_duration=0.0, what=f"{hp.dataset} {split}")
            self.splits[split] = KeywordDataset(kept, self.classes, hp.sample_rate, hp.clip_seconds)

    @property
    def num_classes(self) -> int:
        if not self.splits:
            self.setup()
        return len(self.classes)

    def _loader(self, split: str) -> DataLoader:
        hp = self.hparams
        common = dict(batch_size=hp.batch_size, num_workers=hp.num_workers, persistent_workers=hp.num_workers > 0,
                      pin_memory=torch.cuda.is_available())
        if split == "train":  # order and position resume from checkpoints
            return ResumableDataLoader(self.splits[split], shuffle=True, seed=hp.seed, **common)
        return DataLoader(self.splits[split], shuffle=False, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")
