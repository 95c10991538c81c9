"""Loaders (manifest, LibriSpeech, Speech Commands) on fixture folders, bad-record policy, bucketing, data modules."""

import json
import logging

import pytest
import soundfile as sf
import torch

import mambasuite.audio.synthetic as synthetic
from mambasuite.audio.data import (ASRDataModule, AudioTextDataset, BucketBatchSampler, KWSDataModule, Utterance,
                                   collate_audio_text, filter_utterances, read_librispeech, read_manifest,
                                   read_speech_commands)
from mambasuite.audio.text import CharTokenizer

from .conftest import needs_espeak, tone, write_librispeech, write_manifest_corpus, write_speech_commands


# ------------------------------------------------------------------------------------------- manifests
def test_manifest_reads_relative_and_absolute_paths(tmp_path):
    path = write_manifest_corpus(tmp_path)
    utts = read_manifest(path)
    assert [u.text for u in utts] == ["go left", "three four", "yes", "stop no up"]
    assert utts[0].audio_path == str(tmp_path / "audio" / "data_0.wav")
    assert utts[1].id == "data:2" and utts[1].duration == pytest.approx(0.6)
    absolute = tmp_path / "abs.jsonl"
    absolute.write_text(json.dumps(dict(audio_filepath=utts[0].audio_path, text="x", duration=1)) + "\n")
    assert read_manifest(absolute)[0].audio_path == utts[0].audio_path


@pytest.mark.parametrize("line, message", [
    ("{not json", r"bad.jsonl:2: not a JSON object"),
    ('["a"]', r"bad.jsonl:2: expected a JSON object"),
    ('{"audio_filepath": "a.wav", "text": "x"}', r"bad.jsonl:2: missing key\(s\) \['duration'\]"),
    ('{"audio_filepath": "a.wav", "text": "x", "duration": -1}', r"bad.jsonl:2: duration must be a positive"),
    ('{"audio_filepath": "a.wav", "text": 5, "duration": 1}', r"bad.jsonl:2: text must be a string"),
])
def test_manifest_errors_name_the_line(tmp_path, line, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"audio_filepath": "a.wav", "text": "ok", "duration": 1}\n' + line + "\n")
    with pytest.raises(ValueError, match=message):
        read_manifest(bad)
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        read_manifest(tmp_path / "none.jsonl")


# ----------------------------------------------------------------------------------------- LibriSpeech
def test_librispeech_layout_and_cached_manifest(tmp_path):
    texts = write_librispeech(tmp_path / "ls")
    utts = read_librispeech(tmp_path / "ls", "dev-clean", cache_dir=tmp_path / "cache")
    assert {u.id: u.text for u in utts} == texts
    by_id = {u.id: u for u in utts}
    assert by_id["19-198-0002"].duration == pytest.approx(1.0)
    assert by_id["26-495-0000"].audio_path.endswith("LibriSpeech/dev-clean/26/495/26-495-0000.flac")
    (cached,) = (tmp_path / "cache" / "librispeech").glob("dev-clean_*.jsonl")
    assert [u.id for u in read_manifest(cached)] == [u.id for u in utts]
    # The subset folder may also sit directly under the root.
    assert len(read_librispeech(tmp_path / "ls" / "LibriSpeech", "dev-clean")) == 6
    with pytest.raises(FileNotFoundError, match="subset 'test-other' not found"):
        read_librispeech(tmp_path / "ls", "test-other")


def test_librispeech_missing_flac_raises_or_is_counted(tmp_path, caplog):
    write_librispeech(tmp_path / "ls")
    (tmp_path / "ls/LibriSpeech/dev-clean/19/198/19-198-0001.flac").unlink()
    with pytest.raises(FileNotFoundError, match=r"19-198.trans.txt:2: audio file not found"):
        read_librispeech(tmp_path / "ls", "dev-clean")
    with caplog.at_level(logging.WARNING):
        utts = read_librispeech(tmp_path / "ls", "dev-clean", on_error="skip")
    assert len(utts) == 5 and "19-198-0001" not in {u.id for u in utts}
    assert "skipped 1 record(s)" in caplog.text and "unreadable audio: 1" in caplog.text


def test_librispeech_bad_transcript_line(tmp_path):
    write_librispeech(tmp_path / "ls")
    trans = tmp_path / "ls/LibriSpeech/dev-clean/26/495/26-495.trans.txt"
    trans.write_text(trans.read_text() + "BROKEN LINE\n")
    with pytest.raises(ValueError, match=r"26-495.trans.txt:4: expected '<speaker>-<chapter>-<n> TRANSCRIPT'"):
        read_librispeech(tmp_path / "ls", "dev-clean")


# ------------------------------------------------------------------------------------- Speech Commands
def test_speech_commands_splits(tmp_path):
    root = write_speech_commands(tmp_path / "sc")
    splits = {s: read_speech_commands(root, s) for s in ("train", "val", "test")}
    assert sorted(u.id for u in splits["train"]) == ["no/aa11_nohash_0.wav", "yes/aa11_nohash_0.wav"]
    assert sorted(u.id for u in splits["val"]) == ["no/bb22_nohash_0.wav", "yes/bb22_nohash_0.wav"]
    assert {u.text for u in splits["test"]} == {"yes", "no"}
    # torchaudio's download layout is found too.
    nested = tmp_path / "t" / "SpeechCommands" / "speech_commands_v0.02"
    write_speech_commands(nested)
    assert len(read_speech_commands(tmp_path / "t", "train")) == 2
    with pytest.raises(FileNotFoundError, match="no Speech Commands folder"):
        read_speech_commands(tmp_path / "nothing", "train")
    with pytest.raises(ValueError, match="split must be"):
        read_speech_commands(root, "dev")


# ------------------------------------------------------------------------------------- bad-record policy
def _bad_utterances(tmp_path):
    good = write_manifest_corpus(tmp_path, texts=("go left",))
    ok = read_manifest(good)[0]
    (tmp_path / "junk.wav").write_bytes(b"junk")
    return [ok, Utterance("empty", ok.audio_path, "   ", 1.0), Utterance("oov", ok.audio_path, "go 4 it", 1.0),
            Utterance("unreadable", str(tmp_path / "junk.wav"), "yes", 1.0),
            Utterance("missing", str(tmp_path / "nope.wav"), "yes", 1.0),
            Utterance("short", ok.audio_path, "yes", 0.01), Utterance("long", ok.audio_path, "yes", 30.0)]


@pytest.mark.parametrize("index, message", [(1, "utterance empty .*empty transcript"),
                                            (2, r"utterance oov .*characters \['4'\]"),
                                            (3, "utterance unreadable .*cannot read audio file"),
                                            (4, "utterance missing .*audio file not found"),
                                            (5, r"utterance short .*min_duration")])
def test_bad_records_raise_with_the_utterance(tmp_path, index, message):
    utts = _bad_utterances(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        filter_utterances([utts[0], utts[index]], CharTokenizer(), what="fixture")


def test_bad_records_are_counted_and_logged_when_skipping(tmp_path, caplog):
    utts = _bad_utterances(tmp_path)
    with caplog.at_level(logging.WARNING):
        kept, skipped = filter_utterances(utts, CharTokenizer(), on_error="skip", max_duration=20.0, what="fixture")
    assert [u.id for u in kept] == [utts[0].id]
    assert skipped == {"empty transcript": ["empty"], "out-of-vocabulary characters": ["oov"],
                       "unreadable audio": ["unreadable", "missing"], "too short": ["short"],
                       "longer than max_duration=20.0s": ["long"]}
    assert "fixture: skipped 6 record(s), kept 1" in caplog.text
    with pytest.raises(ValueError, match="no usable utterances left"):
        filter_utterances(utts[1:3], CharTokenizer(), on_error="skip")
    with pytest.raises(ValueError, match="on_error must be one of"):
        filter_utterances(utts, on_error="ignore")


# ------------------------------------------------------------------------------------------- batching
def test_bucket_sampler_respects_the_budget_and_covers_everything():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(10, 300, (500,), generator=g).tolist()
    sampler = BucketBatchSampler(lengths, max_frames=2000, shuffle=True, seed=3)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(500))
    assert all(len(b) * max(lengths[i] for i in b) <= 2000 for b in batches)
    # Buckets: a batch spans a narrow length range, so padding stays small.
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded < 1.1 * sum(lengths)
    sampler.set_epoch(1)
    assert list(sampler) != batches and sorted(map(sorted, sampler)) == sorted(map(sorted, batches))
    assert len(sampler) == len(batches)
    capped = BucketBatchSampler(lengths, max_frames=10**6, max_batch_size=7, shuffle=False)
    assert max(map(len, capped)) == 7 and list(capped) == list(capped)
    lonely = BucketBatchSampler([5, 50], max_frames=20)
    assert sorted(map(tuple, lonely)) == [(0,), (1,)]  # an item over the budget gets its own batch
    with pytest.raises(ValueError, match="max_frames must be a positive int"):
        BucketBatchSampler(lengths, max_frames=0)


def test_bucket_sampler_shards_across_ranks(monkeypatch):
    lengths = list(range(1, 101))
    seen = []
    for rank in range(3):
        s = BucketBatchSampler(lengths, max_frames=120, shuffle=True)
        monkeypatch.setattr(BucketBatchSampler, "_world", staticmethod(lambda r=rank: (3, r)))
        seen.append(list(s))
    assert len({len(b) for b in seen}) == 1  # same number of steps on every rank
    flat = [i for rank_batches in seen for b in rank_batches for i in b]
    assert len(flat) == len(set(flat))  # no batch on two ranks


def test_collate_pads_audio_and_targets():
    tok = CharTokenizer()
    items = [dict(id="a", audio=torch.ones(5), tokens=torch.tensor(tok.encode("go")), text="go"),
             dict(id="b", audio=torch.ones(3), tokens=torch.tensor(tok.encode("left")), text="left")]
    batch = collate_audio_text(items)
    assert batch["audio"].shape == (2, 5) and batch["audio"][1, 3:].abs().sum() == 0
    assert batch["audio_lengths"].tolist() == [5, 3] and batch["target_lengths"].tolist() == [2, 4]
    assert batch["targets"].shape == (2, 4) and batch["targets"][0, 2:].tolist() == [0, 0]
    assert batch["texts"] == ["go", "left"] and batch["ids"] == ["a", "b"]


# ------------------------------------------------------------------------------------------ data modules
def test_asr_datamodule_on_manifests(tmp_path):
    train = write_manifest_corpus(tmp_path, name="train")
    val = write_manifest_corpus(tmp_path, texts=("go", "up down"), name="val")
    dm = ASRDataModule(dataset="manifest", train_manifest=str(train), val_manifest=str(val),
                       cache_dir=str(tmp_path / "cache"), max_frames=150, speed_perturb=[1.1])
    dm.setup("fit")
    assert dm.vocab_size == 29 and len(dm.splits["train"]) == 4 and dm.splits["test"] is dm.splits["val"]
    batches = list(dm.train_dataloader())
    assert sum(len(b["ids"]) for b in batches) == 4
    b = next(iter(dm.val_dataloader()))
    assert b["audio"].dtype == torch.float32 and b["targets"].dtype == torch.long
    # Speed perturbation (training only) shortens 1.1x; validation audio is untouched.
    item = dm.splits["train"][0]
    assert abs(len(item["audio"]) - round(0.4 * 16000 / 1.1)) <= 2
    assert len(dm.splits["val"][0]["audio"]) == round(0.4 * 16000)
    assert dm.training_words() == ["four", "go", "left", "no", "stop", "three", "up", "yes"]
    lexicon = dm.lexicon_path()
    assert lexicon.read_text().splitlines()[0] == "four\tf o u r |"


def test_asr_datamodule_bpe_and_skip_policy(tmp_path, caplog):
    train = write_manifest_corpus(tmp_path, texts=("go left", "three four", "go 4 it", "left left go"), name="train")
    with pytest.raises(ValueError, match=r"characters \['4'\]"):
        ASRDataModule(dataset="manifest", train_manifest=str(train), val_manifest=str(train),
                      cache_dir=str(tmp_path / "c")).setup()
    with caplog.at_level(logging.WARNING):
        dm = ASRDataModule(dataset="manifest", train_manifest=str(train), val_manifest=str(train),
                           cache_dir=str(tmp_path / "c"), on_error="skip")
        dm.setup()
    assert len(dm.splits["train"]) == 3 and dm.skipped["train"] == {"out-of-vocabulary characters": ["train:3"]}
    assert "out-of-vocabulary characters: 1" in caplog.text
    bpe = ASRDataModule(dataset="manifest", train_manifest=str(train), val_manifest=str(train),
                        cache_dir=str(tmp_path / "c"), tokenizer="bpe", bpe_vocab_size=20, on_error="skip")
    bpe.setup()
    assert bpe.tokenizer.kind == "bpe" and bpe.vocab_size == bpe.tokenizer.vocab_size
    assert bpe.tokenizer.decode(bpe.splits["train"][0]["tokens"].tolist()) == "go left"


def test_asr_datamodule_on_librispeech(tmp_path):
    for subset in ("train-clean-100", "dev-clean"):
        write_librispeech(tmp_path / "ls", subset)
    dm = ASRDataModule(dataset="librispeech", data_dir=str(tmp_path / "ls"), test_subsets=[],
                       cache_dir=str(tmp_path / "cache"), max_frames=400)
    dm.prepare_data()
    dm.setup()
    assert len(dm.splits["train"]) == 6 and dm.splits["test"] is dm.splits["val"]
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["texts"]) <= {"go left", "three four", "it's on"}


def test_asr_datamodule_argument_errors():
    with pytest.raises(ValueError, match="needs data_dir"):
        ASRDataModule(dataset="librispeech")
    with pytest.raises(ValueError, match="needs train_manifest and val_manifest"):
        ASRDataModule(dataset="manifest", train_manifest="a.jsonl")
    with pytest.raises(ValueError, match="dataset must be"):
        ASRDataModule(dataset="timit")
    with pytest.raises(ValueError, match="on_error must be one of"):
        ASRDataModule(on_error="ignore")


def test_kws_datamodule_on_speech_commands(tmp_path, caplog):
    root = write_speech_commands(tmp_path / "sc", words=("yes", "no", "maybe"))
    with caplog.at_level(logging.WARNING):
        dm = KWSDataModule(dataset="speechcommands", data_dir=str(root), labels=["yes", "no"], batch_size=2)
        dm.setup()
    assert dm.classes == ["yes", "no"] and dm.num_classes == 2
    assert "dropped 1 clip(s) of words outside labels" in caplog.text
    audio, labels = next(iter(dm.val_dataloader()))
    assert audio.shape == (2, 16000) and labels.tolist() == [1, 0]  # sorted ids: no/, yes/
    wav, _ = dm.splits["train"][0]  # the 0.8 s training clip is padded to 1 s
    assert wav.shape == (16000,) and wav[12800:].abs().sum() == 0
    all_words = KWSDataModule(dataset="speechcommands", data_dir=str(root))
    assert all_words.num_classes == 3


def test_missing_espeak_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic.shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="apt-get install espeak-ng"):
        ASRDataModule(cache_dir=str(tmp_path)).prepare_data()
    with pytest.raises(FileNotFoundError, match="espeak-ng"):
        KWSDataModule(cache_dir=str(tmp_path)).setup()


@needs_espeak
def test_espeak_corpus_is_built_once_with_held_out_voices(tmp_path):
    root = synthetic.espeak_asr_corpus(tmp_path, n_train=6, n_val=2, n_test=2, workers=2)
    rows = {s: [json.loads(line) for line in (root / f"{s}.jsonl").read_text().splitlines()]
            for s in ("train", "val", "test")}
    assert [len(r) for r in rows.values()] == [6, 2, 2]
    assert {r["voice"] for r in rows["val"]} <= set(synthetic.VAL_VOICES)
    assert not {r["voice"] for r in rows["val"] + rows["test"]} & set(synthetic.TRAIN_VOICES)
    for r in rows["train"]:
        assert set(r["text"].split()) <= set(synthetic.WORDS) and 1 <= len(r["text"].split()) <= 4
        info = sf.info(str(root / r["audio_filepath"]))
        assert info.samplerate == 16000 and info.frames / 16000 == pytest.approx(r["duration"], abs=1e-3)
    utts = read_manifest(root / "train.jsonl")  # the same loader as user manifests
    assert len(utts) == 6
    mtime = (root / "corpus.json").stat().st_mtime_ns
    assert synthetic.espeak_asr_corpus(tmp_path, n_train=6, n_val=2, n_test=2) == root
    assert (root / "corpus.json").stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temporary folder left behind


@needs_espeak
def test_espeak_keyword_corpus_in_speech_commands_layout(tmp_path):
    root = synthetic.espeak_keyword_corpus(tmp_path, words=("yes", "seven"), per_voice=1, workers=2)
    dm = KWSDataModule(dataset="speechcommands", data_dir=str(root))
    dm.setup()
    assert dm.classes == ["seven", "yes"]
    n_train = len(synthetic.TRAIN_VOICES) * 2
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [n_train, 4, 4]
    assert all(sf.info(u.audio_path).frames >= 16000 for u in dm.splits["val"].utterances)


@needs_espeak
def test_synthesize_rejects_unknown_voice(tmp_path):
    with pytest.raises(ValueError, match="espeak-ng failed for voice 'xx-nonexistent'"):
        synthetic.synthesize("yes", tmp_path / "a.wav", voice="xx-nonexistent")


def test_dataset_reads_and_resamples(tmp_path):
    sf.write(tmp_path / "a.wav", tone(0.5, rate=8000), 8000)
    ds = AudioTextDataset([Utterance("a", str(tmp_path / "a.wav"), "Go", 0.5)], CharTokenizer(), 16000)
    item = ds[0]
    assert item["audio"].shape == (8000,) and item["text"] == "go" and item["tokens"].tolist() == [9, 17]
    assert ds.frames() == [50]
