"""Reliability of the speech data path: training loaders resume mid-epoch in the same order (with the same speed
perturbation), and bad or hostile files -- JSONL manifests, LibriSpeech transcripts, WAV/FLAC audio -- give an error
naming the file; bounded hypothesis fuzz of the manifest and transcript parsers and of the audio reader."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mambasuite.audio.data import ASRDataModule, KWSDataModule, read_librispeech, read_manifest, write_manifest
from mambasuite.audio.io import audio_info, read_audio

from .conftest import tone, write_librispeech, write_manifest_corpus, write_speech_commands

GOOD_ROW = '{"audio_filepath": "a.wav", "text": "go", "duration": 1.5}\n'
# Bounded in CI; MAMBASUITE_FUZZ_EXAMPLES=4000 runs the larger sweep (same seed, more cases).
FUZZ = settings(max_examples=int(os.environ.get("MAMBASUITE_FUZZ_EXAMPLES", 60)), deadline=None, derandomize=True,
                database=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------ resumable loaders
def _set_epoch(loader, epoch: int) -> None:
    """What Lightning does at every epoch start (it reaches batch_sampler.sampler or sampler)."""
    (loader.batch_sampler.sampler if loader.batch_size is None else loader.sampler).set_epoch(epoch)


def _resume_after(make_loader, k: int) -> tuple[list, list]:
    """(batches of an uninterrupted epoch 1, the first k batches of epoch 1 + the rest from a *fresh* loader that
    loaded the state saved after them)."""
    full = make_loader()
    _set_epoch(full, 1)
    reference = list(full)
    first = make_loader()
    _set_epoch(first, 1)
    head = []
    for batch in first:
        head.append(batch)
        if len(head) == k:
            break
    state = first.state_dict()
    assert state["epoch"] == 1 and state["batches"] == k
    resumed = make_loader()
    resumed.load_state_dict(state)
    return reference, head + list(resumed)


def test_asr_train_loader_resumes_mid_epoch_with_the_same_batches_and_perturbation(tmp_path):
    texts = ("go left", "three four", "yes", "stop no up", "no", "up down", "left", "go go")
    train = write_manifest_corpus(tmp_path, texts=texts, name="train")
    dm = ASRDataModule(dataset="manifest", train_manifest=str(train), val_manifest=str(train),
                       cache_dir=str(tmp_path / "cache"), max_frames=150, speed_perturb=[0.9, 1.0, 1.1], seed=3)
    dm.setup("fit")
    reference, resumed = _resume_after(dm.train_dataloader, 2)
    assert len(reference) >= 4
    assert [b["ids"] for b in resumed] == [b["ids"] for b in reference]
    for got, want in zip(resumed, reference):
        torch.testing.assert_close(got["audio"], want["audio"], rtol=0, atol=0)  # same speed draws, bit for bit
    # The speed perturbation really is random per utterance: lengths differ from the unperturbed audio somewhere.
    plain = {u.id: round(u.duration * 16000) for u in dm.splits["train"].utterances}
    assert any(int(n) != plain[i] for b in reference for i, n in zip(b["ids"], b["audio_lengths"]))
    # Another epoch is another order.
    other = dm.train_dataloader()
    _set_epoch(other, 2)
    assert [b["ids"] for b in other] != [b["ids"] for b in reference]


def test_kws_train_loader_resumes_mid_epoch_with_the_same_order(tmp_path):
    root = write_speech_commands(tmp_path / "sc", words=("yes", "no", "up", "down"),
                                 speakers=("aa11", "bb22", "cc33", "dd44", "ee55"))
    dm = KWSDataModule(dataset="speechcommands", data_dir=str(root), batch_size=2, seed=5)
    dm.setup("fit")
    reference, resumed = _resume_after(dm.train_dataloader, 3)
    assert len(reference) == len(resumed) == 6  # 4 words x 3 training speakers, in batches of 2
    for (audio, labels), (want_audio, want_labels) in zip(resumed, reference):
        assert torch.equal(labels, want_labels) and torch.equal(audio, want_audio)


def test_resume_state_from_other_settings_is_refused(tmp_path):
    train = write_manifest_corpus(tmp_path, name="train")
    dm = ASRDataModule(dataset="manifest", train_manifest=str(train), val_manifest=str(train),
                       cache_dir=str(tmp_path / "cache"), max_frames=150, seed=0)
    dm.setup("fit")
    state = dm.train_dataloader().state_dict()
    with pytest.raises(ValueError, match="seed 7 -> 0"):
        dm.train_dataloader().load_state_dict({**state, "seed": 7})


# ------------------------------------------------------------------------------------------- generated corpora
def test_interrupted_corpus_build_leaves_nothing_behind(tmp_path, monkeypatch):
    """The espeak corpora are built in a temporary sibling folder and renamed into place only when complete."""
    import mambasuite.audio.synthetic as synthetic

    monkeypatch.setattr(synthetic, "require_espeak", lambda: "espeak-ng")
    final = tmp_path / "cache" / "corpus"

    def dies_half_way(folder):
        (folder / "train.jsonl").write_text(GOOD_ROW)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synthetic._build_once(final, dies_half_way)
    assert list((tmp_path / "cache").iterdir()) == []

    def completes(folder):
        (folder / "train.jsonl").write_text(GOOD_ROW)
        (folder / "corpus.json").write_text("{}")

    assert synthetic._build_once(final, completes) == final
    assert sorted(p.name for p in final.iterdir()) == ["corpus.json", "train.jsonl"]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["corpus"]
    assert synthetic._build_once(final, dies_half_way) == final  # built once: a finished corpus is reused


# --------------------------------------------------------------------------------------------------- manifests
@pytest.mark.parametrize("content, message", [
    (b"", "holds no utterances"),
    (b"\n \n", "holds no utterances"),
    (GOOD_ROW.encode() + b'{"audio_filepath": "b.wav", "text": "caf\xe9", "duration": 1}\n', "not UTF-8"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not UTF-8"),
    (GOOD_ROW.encode() + b'{"audio_filepath": "b.wav", "text": "x", "duration": Infinity}\n',
     ":2: duration must be a positive, finite"),
    (GOOD_ROW.encode() + b'{"audio_filepath": "b.wav", "text": "x", "duration": NaN}\n', ":2: duration must be"),
    (GOOD_ROW.encode() + b'{"audio_filepath": "b.wav", "text": "x", "duration": 1' + b"0" * 400 + b"}\n",
     ":2: duration must be a positive, finite"),
    (b'{"audio_filepath": "a\\u0000.wav", "text": "x", "duration": 1}\n', ":1: audio_filepath must be"),
    (b'{"audio_filepath": "~no_such_user_xyz/a.wav", "text": "x", "duration": 1}\n', ":1: audio_filepath"),
    (b'{"audio_filepath": "a.wav", "text": "x", "duration": "1.5"}\n', ":1: duration must be"),
    (b'{"audio_filepath": "a.wav", "text": "x", "duration": true}\n', ":1: duration must be"),
    (b"[" * 50_000 + b"\n", ":1: not a JSON object"),
], ids=["empty", "blank", "latin-1", "binary", "infinite", "nan", "huge int", "nul", "unknown user", "string",
        "bool", "deep nesting"])
def test_bad_manifests_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"bad.jsonl.*{message}"):
        read_manifest(path)


def test_manifest_lines_split_only_on_newlines(tmp_path):
    """A raw U+2028 inside a JSON string is valid JSON (and NeMo reads it); it must not split the record."""
    path = tmp_path / "m.jsonl"
    path.write_text('{"audio_filepath": "a.wav", "text": "go\u2028left", "duration": 1}\r\n', encoding="utf-8")
    (utt,) = read_manifest(path)
    assert utt.text == "go\u2028left"


def test_write_manifest_is_atomic_and_round_trips(tmp_path, monkeypatch):
    utts = read_manifest(write_manifest_corpus(tmp_path))
    target = write_manifest(utts, tmp_path / "out" / "copy.jsonl")
    assert read_manifest(target) == utts
    assert [p.name for p in target.parent.iterdir()] == ["copy.jsonl"]  # no temporaries left behind
    # A crash while writing (here: an unserialisable record) keeps the previous file intact.
    before = target.read_bytes()
    monkeypatch.setattr(json, "dumps", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        write_manifest(utts, target)
    assert target.read_bytes() == before and [p.name for p in target.parent.iterdir()] == ["copy.jsonl"]


_JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                         max_size=3),
                            max_leaves=6)
# Mostly well-formed records (so the checks after parsing run too), some with one field replaced by any JSON value,
# some with keys missing.
_GOOD_ROWS = st.fixed_dictionaries({"audio_filepath": st.text(min_size=1, max_size=12), "text": st.text(max_size=12),
                                    "duration": st.floats(0.01, 30)}, optional={"id": st.text(max_size=6)})
_ROWS = st.one_of(
    _GOOD_ROWS,
    st.builds(lambda row, key, value: {**row, key: value}, _GOOD_ROWS,
              st.sampled_from(["audio_filepath", "text", "duration", "id"]), _JSON_VALUES),
    st.fixed_dictionaries({}, optional={"audio_filepath": _JSON_VALUES, "text": _JSON_VALUES,
                                        "duration": _JSON_VALUES}))


def _check_manifest_outcome(path):
    try:
        utts = read_manifest(path)
    except ValueError as err:
        assert str(path) in str(err), err
        event("refused")
    else:
        event("accepted")
        assert utts and all(isinstance(u.audio_path, str) and u.audio_path and isinstance(u.text, str)
                            and np.isfinite(u.duration) and u.duration > 0 for u in utts)


@FUZZ
@given(rows=st.lists(_ROWS, min_size=0, max_size=4), junk=st.binary(max_size=40), cut=st.integers(0, 400))
def test_fuzz_manifest_parser(tmp_path, rows, junk, cut):
    text = "".join(json.dumps(r) + "\n" for r in rows).encode()
    for content in (text, text[:cut] + junk):
        path = tmp_path / "fuzz.jsonl"
        path.write_bytes(content)
        _check_manifest_outcome(path)


# ------------------------------------------------------------------------------------------------- LibriSpeech
def _trans(root):
    return root / "LibriSpeech" / "dev-clean" / "19" / "198" / "19-198.trans.txt"


@pytest.mark.parametrize("content, error, message", [
    (b"19-198-0000 GO LEFT\n19-198-0001 CAF\xc9\n", ValueError, "19-198.trans.txt is not UTF-8"),
    (b"19-198-0000 GO LEFT\n../../26-495-0000 GO\n", ValueError, "19-198.trans.txt:2: expected"),
    (b"19-198-0000 GO LEFT\n19--0000 GO\n", ValueError, "19-198.trans.txt:2: expected"),
    (b"19-198-0000 GO LEFT\n19-198-9999 GO\n", FileNotFoundError, "19-198.trans.txt:2: audio file not found"),
], ids=["latin-1", "path in id", "empty part", "missing flac"])
def test_bad_librispeech_transcripts_name_the_file(tmp_path, content, error, message):
    write_librispeech(tmp_path / "ls", speakers=((19, 198),), per_chapter=2)
    _trans(tmp_path / "ls").write_bytes(content)
    with pytest.raises(error, match=message):
        read_librispeech(tmp_path / "ls", "dev-clean")


def test_corrupt_librispeech_flac_is_named_or_skipped(tmp_path):
    write_librispeech(tmp_path / "ls", speakers=((19, 198),), per_chapter=3)
    flac = _trans(tmp_path / "ls").parent / "19-198-0001.flac"
    flac.write_bytes(flac.read_bytes()[:30])  # inside the STREAMINFO header
    with pytest.raises(ValueError, match=r"19-198.trans.txt:2: cannot read audio file .*19-198-0001.flac"):
        read_librispeech(tmp_path / "ls", "dev-clean")
    assert [u.id for u in read_librispeech(tmp_path / "ls", "dev-clean", on_error="skip")] == [
        "19-198-0000", "19-198-0002"]


@FUZZ
@given(lines=st.lists(st.one_of(st.just("19-198-0000 GO LEFT"), st.text(max_size=30)), max_size=5),
       junk=st.binary(max_size=20))
def test_fuzz_librispeech_transcripts(tmp_path, lines, junk):
    root = tmp_path / "ls"
    if not root.exists():
        write_librispeech(root, speakers=((19, 198),), per_chapter=1)
    trans = _trans(root)
    trans.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass") + junk)
    try:
        utts = read_librispeech(root, "dev-clean", on_error="raise")
    except (ValueError, FileNotFoundError) as err:
        assert str(trans) in str(err), err
        event("refused")
    else:
        event("accepted")
        assert all(u.id == "19-198-0000" and u.duration > 0 for u in utts)


# ------------------------------------------------------------------------------------------------- WAV / FLAC
def _audio_bytes(fmt: str, subtype: str = "PCM_16", seconds: float = 0.1) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, tone(seconds), 16000, format=fmt, subtype=subtype)
    return buf.getvalue()


_WAV, _FLAC, _FLOAT_WAV = _audio_bytes("WAV"), _audio_bytes("FLAC"), _audio_bytes("WAV", "FLOAT")


@pytest.mark.parametrize("name, content", [
    ("empty.wav", b""),
    ("header_only.wav", _WAV[:44]),
    ("cut_header.wav", _WAV[:20]),
    ("empty.flac", b""),
    ("cut_header.flac", _FLAC[:30]),
    ("text.flac", b"this is a transcript, not audio\n"),
    ("png.wav", b"\x89PNG\r\n\x1a\n" + bytes(100)),
    ("flac_named.wav", b"RIFF" + _FLAC[4:]),
])
def test_bad_audio_files_name_the_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"{name}"):
        read_audio(path)


def test_non_finite_samples_are_refused(tmp_path):
    wav = tone(0.1)
    wav[100] = np.nan
    sf.write(tmp_path / "nan.wav", wav, 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match="nan.wav .*non-finite"):
        read_audio(tmp_path / "nan.wav")


def test_truncated_audio_reads_what_is_there_or_names_the_file(tmp_path):
    """libsndfile reads a WAV/FLAC cut inside its samples up to the cut (as players do); never garbage."""
    for name, data in (("cut.wav", _WAV), ("cut.flac", _FLAC)):
        path = tmp_path / name
        path.write_bytes(data[: len(data) * 2 // 3])
        try:
            wav, rate = read_audio(path)
        except ValueError as err:
            assert name in str(err)
        else:
            assert rate == 16000 and 0 < len(wav) < 1600 and torch.isfinite(wav).all()


@FUZZ
@given(base=st.sampled_from(["wav", "flac", "float_wav"]), cut=st.integers(0, 4000), junk=st.binary(max_size=30),
       flips=st.lists(st.tuples(st.integers(0, 80), st.integers(1, 255)), max_size=3))
def test_fuzz_audio_reader(tmp_path, base, cut, junk, flips):
    data = bytearray({"wav": _WAV, "flac": _FLAC, "float_wav": _FLOAT_WAV}[base][:cut] + junk)
    for pos, xor in flips:  # corrupt header bytes
        if pos < len(data):
            data[pos] ^= xor
    path = tmp_path / f"fuzz.{'flac' if base == 'flac' else 'wav'}"
    path.write_bytes(bytes(data))
    try:
        frames, rate = audio_info(path)
        wav, rate2 = read_audio(path)
    except ValueError as err:
        assert str(path) in str(err), err
        event("refused")
    else:
        event("read")
        assert wav.dtype == torch.float32 and wav.dim() == 1 and len(wav) > 0 and torch.isfinite(wav).all()
        assert rate == rate2 > 0
