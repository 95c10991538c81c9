"""`mamba-suite evaluate -c CONFIG --ckpt_path CKPT [--out DIR] [--decoder greedy|beam]` for speech checkpoints.

Builds the config's model and data (the YAML used for fit; dotted overrides such as
`--data.init_args.data_dir=...` work), loads the Lightning checkpoint's weights strictly
(`safe_torch_load`: weights only, a pickle that would run code is refused), runs one split (`--split val|test`,
default val) and writes into `--out` (default `runs/<config stem>/eval[_<decoder>]/`; a folder that already holds
a report is refused unless `--overwrite=true`; every file is written atomically):

* speech recognition (`SpeechRecognizer`): `hypotheses.jsonl` (per utterance: id, ref, hyp, word and
  character errors), `metrics.json` (corpus WER / CER, sentence error rate, decoder settings, real-time
  factor), `report.md` (summary and the `--worst` utterances with the most character errors);
* keyword spotting (`KeywordSpotter`): `metrics.json` (accuracy, per-class accuracy, confusion matrix) and
  `report.md`.
"""

from __future__ import annotations

import json
import time

import torch

from mambasuite.core.files import atomic_write
from ..core.evaluation import checkpoint_file, checkpoint_parser, load_trained_weights, report_folder

__all__ = ["ASR_REPORT_FILES", "KWS_REPORT_FILES", "evaluate_asr", "evaluate_kws", "main"]

ASR_REPORT_FILES = ("hypotheses.jsonl", "metrics.json", "report.md")
KWS_REPORT_FILES = ("metrics.json", "report.md")


def _parser():
    parser = checkpoint_parser("mamba-suite evaluate", __doc__.split("\n\n")[0], out_help="report folder")
    parser.add_argument("--split", type=str, default="val", help="val | test")
    parser.add_argument("--decoder", type=str, default="greedy", help="greedy | beam (speech recognition)")
    parser.add_argument("--beam_size", type=int | None, default=None, help="overrides model.beam.beam_size")
    parser.add_argument("--lexicon", type=str | None, default=None,
                        help="'train' (training words), 'none' (lexicon-free) or a lexicon file; overrides the model's")
    parser.add_argument("--lm", type=str | None, default=None, help="KenLM file for beam search")
    parser.add_argument("--lm_weight", type=float | None, default=None)
    parser.add_argument("--word_score", type=float | None, default=None)
    parser.add_argument("--worst", type=int, default=20, help="utterances listed in report.md")
    parser.add_argument("--max_batches", type=int | None, default=None, help="stop after this many batches")
    return parser


def _edits(ref: list, hyp: list) -> int:
    from torchaudio.functional import edit_distance

    return int(edit_distance(ref, hyp))


def evaluate_asr(module, loader, device: torch.device, decoder: str = "greedy",
                 max_batches: int | None = None) -> tuple[list[dict], dict]:
    """Transcribe every batch of `loader` with `module` (a SpeechRecognizer with a tokenizer).

    Returns (rows, metrics): one row per utterance {id, ref, hyp, word_errors, ref_words, char_errors,
    ref_chars}, and corpus metrics {wer, cer, ser, word_errors, ref_words, char_errors, ref_chars,
    n_utterances, audio_seconds, compute_seconds, rtf}. WER/CER are total edits over total reference
    words/characters (spaces count as characters), as torchmetrics computes them.
    """
    from torchmetrics.text import CharErrorRate, WordErrorRate

    module = module.to(device).eval()
    wer_metric, cer_metric = WordErrorRate(), CharErrorRate()
    rows, audio_s, compute_s = [], 0.0, 0.0
    rate = module.frontend.sample_rate
    with torch.inference_mode():
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            start = time.perf_counter()
            log_probs, lengths = module(batch["audio"].to(device), batch["audio_lengths"].to(device))
            hyps = module.transcribe(log_probs, lengths, decoder)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            compute_s += time.perf_counter() - start
            audio_s += batch["audio_lengths"].sum().item() / rate
            wer_metric.update(hyps, batch["texts"])
            cer_metric.update(hyps, batch["texts"])
            for utt_id, ref, hyp in zip(batch["ids"], batch["texts"], hyps):
                rows.append(dict(id=utt_id, ref=ref, hyp=hyp, word_errors=_edits(ref.split(), hyp.split()),
                                 ref_words=len(ref.split()), char_errors=_edits(list(ref), list(hyp)),
                                 ref_chars=len(ref)))
    if not rows:
        raise ValueError("the evaluation loader produced no utterances")
    totals = {k: sum(r[k] for r in rows) for k in ("word_errors", "ref_words", "char_errors", "ref_chars")}
    metrics = dict(wer=float(wer_metric.compute()), cer=float(cer_metric.compute()),
                   ser=sum(r["hyp"] != r["ref"] for r in rows) / len(rows), **totals, n_utterances=len(rows),
                   audio_seconds=audio_s, compute_seconds=compute_s,
                   rtf=compute_s / audio_s if audio_s > 0 else None)
    return rows, metrics


def evaluate_kws(module, loader, classes: list[str], device: torch.device, max_batches: int | None = None) -> dict:
    """Accuracy, per-class accuracy and confusion matrix (rows: true class) of a KeywordSpotter."""
    module = module.to(device).eval()
    n = len(classes)
    confusion = torch.zeros(n, n, dtype=torch.long)
    with torch.inference_mode():
        for i, (audio, labels) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            pred = module(audio.to(device)).argmax(-1).cpu()
            confusion += torch.bincount(labels * n + pred, minlength=n * n).view(n, n)
    total = int(confusion.sum())
    if total == 0:
        raise ValueError("the evaluation loader produced no clips")
    per_class = (confusion.diag().float() / confusion.sum(1).clamp(min=1).float()).tolist()
    return dict(accuracy=confusion.diag().sum().item() / total, n_clips=total, classes=classes,
                per_class_accuracy=dict(zip(classes, per_class)), confusion=confusion.tolist())


def _asr_markdown(metrics: dict, rows: list[dict], worst: int) -> str:
    m = metrics
    lines = [f"# Speech recognition: `{m['ckpt_path']}`", "",
             f"config `{m['config']}`, split `{m['split']}`, {m['n_utterances']} utterances "
             f"({m['audio_seconds']:.1f} s of audio), decoder **{m['decoder']}**"
             + (f" ({json.dumps(m['beam'])})" if m["decoder"] == "beam" else "") + f", device {m['device']}", "",
             "| metric | value |", "|---|---|",
             f"| WER | {100 * m['wer']:.2f}% ({m['word_errors']} / {m['ref_words']} words) |",
             f"| CER | {100 * m['cer']:.2f}% ({m['char_errors']} / {m['ref_chars']} characters) |",
             f"| sentence error rate | {100 * m['ser']:.2f}% |",
             f"| real-time factor (forward + decoding) | {m['rtf']:.4f} |", "",
             f"## Worst {min(worst, len(rows))} utterances (most character errors)", "",
             "| id | char errors | CER | reference | hypothesis |", "|---|---:|---:|---|---|"]
    ranked = sorted(rows, key=lambda r: (-r["char_errors"], -r["char_errors"] / max(r["ref_chars"], 1), r["id"]))
    for r in ranked[:worst]:
        cer = r["char_errors"] / max(r["ref_chars"], 1)
        lines.append(f"| {r['id']} | {r['char_errors']} | {100 * cer:.1f}% | {r['ref'] or '(empty)'} "
                     f"| {r['hyp'] or '(empty)'} |")
    return "\n".join(lines) + "\n"


def _kws_markdown(m: dict) -> str:
    lines = [f"# Keyword spotting: `{m['ckpt_path']}`", "",
             f"config `{m['config']}`, split `{m['split']}`, {m['n_clips']} clips, device {m['device']}", "",
             f"Accuracy: **{100 * m['accuracy']:.2f}%**", "", "| class | accuracy |", "|---|---:|"]
    lines += [f"| {c} | {100 * a:.1f}% |" for c, a in m["per_class_accuracy"].items()]
    return "\n".join(lines) + "\n"


def _beam_overrides(cfg) -> dict:
    beam = {}
    if cfg.beam_size is not None:
        beam["beam_size"] = cfg.beam_size
    if cfg.lexicon is not None:
        beam["lexicon"] = None if cfg.lexicon.lower() == "none" else cfg.lexicon
    for key in ("lm", "lm_weight", "word_score"):
        if cfg.get(key) is not None:
            beam[key] = cfg.get(key)
    return beam


def main(argv: list[str] | None = None) -> int:
    """CLI entry (see the module docstring). Returns 0 and prints the report folder."""
    from .tasks import KeywordSpotter, SpeechRecognizer

    parser = _parser()
    cfg = parser.parse_args(argv)
    if cfg.split not in ("val", "test"):
        parser.error(f"--split must be 'val' or 'test', got {cfg.split!r}")
    if cfg.decoder not in ("greedy", "beam"):
        parser.error(f"--decoder must be 'greedy' or 'beam', got {cfg.decoder!r}")
    ckpt_path = checkpoint_file(parser, cfg)
    init = parser.instantiate_classes(cfg)
    module, data = init.model, init.data
    if not isinstance(module, (SpeechRecognizer, KeywordSpotter)):
        parser.error(f"model {type(module).__name__} is not a speech task (SpeechRecognizer or KeywordSpotter)")
    config_paths = [str(p) for p in (cfg.get("config") or [])]
    kws = isinstance(module, KeywordSpotter)
    out = report_folder(parser, cfg, KWS_REPORT_FILES if kws else ASR_REPORT_FILES,
                        "eval" if kws else f"eval_{cfg.decoder}")
    load_trained_weights(parser, module, ckpt_path)
    data.prepare_data()
    data.setup("validate")
    loader = data.val_dataloader() if cfg.split == "val" else data.test_dataloader()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    common = dict(ckpt_path=str(ckpt_path), config=", ".join(config_paths) or None, split=cfg.split,
                  device=str(device))
    if kws:
        metrics = dict(evaluate_kws(module, loader, list(data.classes), device, cfg.max_batches), **common)
        atomic_write(out / "report.md", _kws_markdown(metrics))
        atomic_write(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        print(f"accuracy {100 * metrics['accuracy']:.2f}% ({metrics['n_clips']} clips) -> {out}")
        return 0
    module.hparams.beam = {**(module.hparams.beam or {}), **_beam_overrides(cfg)}
    lexicon = str(data.lexicon_path()) if module.hparams.beam.get("lexicon") == "train" else None
    module.set_tokenizer(data.tokenizer, lexicon)
    rows, metrics = evaluate_asr(module, loader, device, cfg.decoder, cfg.max_batches)
    metrics.update(common, decoder=cfg.decoder, beam=dict(module.hparams.beam) if cfg.decoder == "beam" else None,
                   lexicon_file=lexicon if cfg.decoder == "beam" else None)
    atomic_write(out / "hypotheses.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    atomic_write(out / "report.md", _asr_markdown(metrics, rows, cfg.worst))
    atomic_write(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")  # last: its presence means complete
    print(f"{cfg.decoder}: WER {100 * metrics['wer']:.2f}%  CER {100 * metrics['cer']:.2f}%  "
          f"({metrics['n_utterances']} utterances) -> {out}")
    return 0
