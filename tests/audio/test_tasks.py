"""Speech tasks: CTC recogniser (loss, decoding, metrics, tokenizer checks) and keyword spotter."""

import pytest
import pytorch_lightning as pl
import torch

from mambasuite.audio.data import ASRDataModule, KWSDataModule
from mambasuite.audio.tasks import KeywordSpotter, SpeechRecognizer
from mambasuite.audio.text import CharTokenizer, build_tokenizer

from .conftest import write_manifest_corpus, write_speech_commands

TINY = dict(d_model=16, depth=1, d_ffn=32, conv_kernel=5, d_state=4, subsampling_channels=[4, 4], dropout=0.0)
FEATS = dict(n_mels=16)


def _trainer(tmp_path, **kwargs):
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(tmp_path), **kwargs)


def test_recognizer_overfits_two_utterances(tmp_path):
    torch.manual_seed(0)
    manifest = write_manifest_corpus(tmp_path, texts=("go", "up"))
    dm = ASRDataModule(dataset="manifest", train_manifest=str(manifest), val_manifest=str(manifest),
                       cache_dir=str(tmp_path / "c"), max_frames=1000)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    module = SpeechRecognizer(model_kwargs=TINY, features=FEATS)
    module.set_tokenizer(dm.tokenizer)
    log_probs, lengths = module(batch["audio"], batch["audio_lengths"])
    assert log_probs.shape == (2, lengths.max(), 29) and log_probs.dtype == torch.float32
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, lengths.max()))
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    losses = []
    for _ in range(120):
        loss = module.ctc_loss(*module(batch["audio"], batch["audio_lengths"]), batch["targets"],
                               batch["target_lengths"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    module.eval()
    with torch.no_grad():
        hyps = module.transcribe(*module(batch["audio"], batch["audio_lengths"]))
    assert hyps == batch["texts"]


def test_fit_and_validate_log_wer_and_cer(tmp_path):
    manifest = write_manifest_corpus(tmp_path)
    dm = ASRDataModule(dataset="manifest", train_manifest=str(manifest), val_manifest=str(manifest),
                       cache_dir=str(tmp_path / "c"), max_frames=200)
    module = SpeechRecognizer(model_kwargs=TINY, features=FEATS, warmup_steps=1, beam={"lexicon": "train"},
                              decoder="beam")
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=1)
    trainer.fit(module, dm)
    metrics = trainer.callback_metrics
    assert {"train/loss", "val/loss", "val/wer", "val/cer"} <= set(metrics)
    assert 0.0 <= metrics["val/cer"].item() and metrics["val/wer"].item() >= 0.0
    result = trainer.test(module, dm, verbose=False)[0]  # beam search with the training-words lexicon
    assert set(result) == {"test/loss", "test/wer", "test/cer"}
    preds = trainer.predict(module, dm)
    assert sorted(p["id"] for batch in preds for p in batch) == sorted(u.id for u in dm.splits["val"].utterances)


def test_tokenizer_and_vocab_checks(tmp_path):
    module = SpeechRecognizer(model_kwargs=TINY, features=FEATS)
    with pytest.raises(ValueError, match="no tokenizer"):
        module.transcribe(torch.zeros(1, 3, 29), torch.tensor([3]))
    bpe = build_tokenizer("bpe", ["go left", "up down"] * 5, 15, tmp_path)
    with pytest.raises(ValueError, match=f"set model.init_args.vocab_size={bpe.vocab_size}"):
        module.set_tokenizer(bpe)
    module.set_tokenizer(CharTokenizer())
    with pytest.raises(ValueError, match="decoder must be"):
        module.transcribe(torch.zeros(1, 3, 29), torch.tensor([3]), decoder="viterbi")
    needs_lexicon = SpeechRecognizer(model_kwargs=TINY, features=FEATS, beam={"lexicon": "train"})
    needs_lexicon.set_tokenizer(CharTokenizer())
    with pytest.raises(ValueError, match="lexicon='train' needs"):
        needs_lexicon.beam_search()
    with pytest.raises(ValueError, match="decoder must be"):
        SpeechRecognizer(decoder="viterbi")
    with pytest.raises(ValueError, match="vocab_size must be an int >= 2"):
        SpeechRecognizer(vocab_size=1)
    with pytest.raises(ValueError, match="global_pool must be ''"):
        SpeechRecognizer(model_kwargs=dict(TINY, global_pool="avg"), features=FEATS)
    with pytest.raises(ValueError, match="not a registered model"):
        SpeechRecognizer(model_name="conmamba_huge", features=FEATS)


def test_vocab_mismatch_with_the_data_fails_at_setup(tmp_path):
    manifest = write_manifest_corpus(tmp_path)
    dm = ASRDataModule(dataset="manifest", train_manifest=str(manifest), val_manifest=str(manifest),
                       cache_dir=str(tmp_path / "c"))
    module = SpeechRecognizer(vocab_size=31, model_kwargs=TINY, features=FEATS)
    with pytest.raises(ValueError, match="set model.init_args.vocab_size=29"):
        _trainer(tmp_path, max_steps=1).fit(module, dm)


def test_keyword_spotter(tmp_path):
    root = write_speech_commands(tmp_path / "sc")
    dm = KWSDataModule(dataset="speechcommands", data_dir=str(root), batch_size=2)
    module = KeywordSpotter(num_classes=2, model_kwargs=TINY, features=FEATS, warmup_steps=1)
    audio = torch.randn(3, 16000)
    assert module(audio).shape == (3, 2)
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=1)
    trainer.fit(module, dm)
    assert {"train/loss", "val/acc", "val/loss"} <= set(trainer.callback_metrics)
    with pytest.raises(ValueError, match="set model.init_args.num_classes=2"):
        _trainer(tmp_path, max_steps=1).fit(KeywordSpotter(num_classes=3, model_kwargs=TINY, features=FEATS), dm)
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        KeywordSpotter(num_classes=1)
