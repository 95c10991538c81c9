"""`mamba-suite evaluate` on speech checkpoints: per-utterance hypotheses, WER/CER JSON, worst-utterance report."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from mambasuite.core.cli import main as cli_main
from mambasuite.audio.evaluate import main as evaluate_main
from mambasuite.audio.tasks import KeywordSpotter, SpeechRecognizer

from .conftest import write_manifest_corpus, write_speech_commands

TINY = dict(d_model=16, depth=1, d_ffn=32, conv_kernel=5, d_state=4, subsampling_channels=[4, 4], dropout=0.0)


def _asr_config(tmp_path, manifest):
    cfg = {"model": {"class_path": "mambasuite.audio.tasks.SpeechRecognizer",
                     "init_args": {"model_kwargs": TINY, "features": {"n_mels": 16}, "beam": {"beam_size": 4}}},
           "data": {"class_path": "mambasuite.audio.data.ASRDataModule",
                    "init_args": {"dataset": "manifest", "train_manifest": str(manifest),
                                  "val_manifest": str(manifest), "cache_dir": str(tmp_path / "cache"),
                                  "max_frames": 120}},
           "trainer": {"max_epochs": 1}}
    path = tmp_path / "asr.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("decoder", ["greedy", "beam"])
def test_asr_report(tmp_path, decoder):
    manifest = write_manifest_corpus(tmp_path, texts=("go left", "three four", "yes", "stop no up", "go"))
    config = _asr_config(tmp_path, manifest)
    torch.manual_seed(0)
    module = SpeechRecognizer(model_kwargs=TINY, features={"n_mels": 16})
    torch.save({"state_dict": module.state_dict()}, tmp_path / "m.ckpt")
    out = tmp_path / "eval"
    # Through the suite's dispatcher (core.dispatch picks mambasuite.audio.evaluate from the model's class path).
    assert cli_main(["evaluate", "-c", str(config), "--ckpt_path", str(tmp_path / "m.ckpt"), "--out", str(out),
                     "--decoder", decoder, "--worst", "3"]) == 0
    rows = [json.loads(line) for line in (out / "hypotheses.jsonl").read_text().splitlines()]
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(r["ref"] for r in rows) == sorted(["go left", "three four", "yes", "stop no up", "go"])
    assert metrics["n_utterances"] == 5 and metrics["decoder"] == decoder
    assert metrics["ref_words"] == 9 and metrics["ref_chars"] == sum(len(r["ref"]) for r in rows)
    # Corpus rates are total edits over total reference units (torchmetrics and the per-utterance rows agree).
    assert metrics["wer"] == pytest.approx(sum(r["word_errors"] for r in rows) / 9)
    assert metrics["cer"] == pytest.approx(sum(r["char_errors"] for r in rows) / metrics["ref_chars"])
    for r in rows:
        assert r["char_errors"] >= abs(len(r["ref"]) - len(r["hyp"]))
    report = (out / "report.md").read_text()
    assert "## Worst 3 utterances" in report and f"decoder **{decoder}**" in report
    assert report.count("\n| data:") == 3


def test_asr_evaluate_errors(tmp_path, capsys):
    manifest = write_manifest_corpus(tmp_path, texts=("go",))
    config = _asr_config(tmp_path, manifest)
    with pytest.raises(SystemExit):
        evaluate_main(["-c", str(config), "--ckpt_path", str(tmp_path / "missing.ckpt")])
    assert "checkpoint file not found" in capsys.readouterr().err
    other = SpeechRecognizer(model_kwargs=dict(TINY, d_model=24), features={"n_mels": 16})
    torch.save({"state_dict": other.state_dict()}, tmp_path / "other.ckpt")
    with pytest.raises(SystemExit):
        evaluate_main(["-c", str(config), "--ckpt_path", str(tmp_path / "other.ckpt")])
    assert "does not match the config's model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate_main(["-c", str(config), "--ckpt_path", str(tmp_path / "other.ckpt"), "--decoder", "viterbi"])
    assert "--decoder must be" in capsys.readouterr().err


def test_kws_report(tmp_path):
    root = write_speech_commands(tmp_path / "sc")
    cfg = {"model": {"class_path": "mambasuite.audio.tasks.KeywordSpotter",
                     "init_args": {"num_classes": 2, "model_kwargs": TINY, "features": {"n_mels": 16}}},
           "data": {"class_path": "mambasuite.audio.data.KWSDataModule",
                    "init_args": {"dataset": "speechcommands", "data_dir": str(root), "batch_size": 2}}}
    (tmp_path / "kws.yaml").write_text(yaml.safe_dump(cfg))
    module = KeywordSpotter(num_classes=2, model_kwargs=TINY, features={"n_mels": 16})
    torch.save({"state_dict": module.state_dict()}, tmp_path / "k.ckpt")
    assert evaluate_main(["-c", str(tmp_path / "kws.yaml"), "--ckpt_path", str(tmp_path / "k.ckpt"),
                          "--out", str(tmp_path / "ev"), "--split", "test"]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n_clips"] == 2 and metrics["classes"] == ["no", "yes"]
    confusion = torch.tensor(metrics["confusion"])
    assert confusion.sum() == 2 and metrics["accuracy"] == pytest.approx(confusion.diag().sum().item() / 2)
    assert "Accuracy:" in (tmp_path / "ev" / "report.md").read_text()
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == ["metrics.json", "report.md"]  # no temporaries


def _kws_setup(tmp_path):
    root = write_speech_commands(tmp_path / "sc")
    cfg = {"model": {"class_path": "mambasuite.audio.tasks.KeywordSpotter",
                     "init_args": {"num_classes": 2, "model_kwargs": TINY, "features": {"n_mels": 16}}},
           "data": {"class_path": "mambasuite.audio.data.KWSDataModule",
                    "init_args": {"dataset": "speechcommands", "data_dir": str(root), "batch_size": 2}}}
    (tmp_path / "kws.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "kws.yaml"


def test_existing_report_is_kept_unless_overwrite(tmp_path, capsys):
    config = _kws_setup(tmp_path)
    torch.save({"state_dict": KeywordSpotter(num_classes=2, model_kwargs=TINY, features={"n_mels": 16}).state_dict()},
               tmp_path / "k.ckpt")
    argv = ["evaluate", "-c", str(config), "--ckpt_path", str(tmp_path / "k.ckpt"), "--out", str(tmp_path / "ev")]
    assert cli_main(argv) == 0
    (tmp_path / "ev" / "metrics.json").write_text("{}\n")  # stands for an earlier run's report
    with pytest.raises(SystemExit) as exc:
        cli_main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "already holds a report (metrics.json, report.md)" in err
    assert (tmp_path / "ev" / "metrics.json").read_text() == "{}\n"
    assert cli_main([*argv, "--overwrite=true"]) == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["n_clips"] == 2


class _RunsCode:
    """A pickle payload whose __reduce__ would create a marker file (a harmless stand-in for os.system)."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("content", ["payload", "truncated"])
def test_malicious_or_corrupt_checkpoint_is_refused_naming_it(tmp_path, capsys, content):
    config = _kws_setup(tmp_path)
    marker, evil = tmp_path / "pwned", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(300)}, "hyper_parameters": {"x": _RunsCode(marker)}}, evil)
    if content == "truncated":
        evil.write_bytes(evil.read_bytes()[:200])
    with pytest.raises(SystemExit) as exc:
        cli_main(["evaluate", "-c", str(config), "--ckpt_path", str(evil), "--out", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "evil.ckpt" in err and not marker.exists() and not (tmp_path / "ev").exists()
    assert ("not a weights-only checkpoint" if content == "payload" else "cannot read checkpoint") in err
