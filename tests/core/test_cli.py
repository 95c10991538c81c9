"""The `mamba-suite` command line: help, dispatch, config errors, and every shipped core config smoke-run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from mambasuite.core import cli

REPO = Path(__file__).resolve().parents[2]
CORE_CONFIGS = sorted((REPO / "configs" / "core").glob("*.yaml"))
SELECTIVE = REPO / "configs" / "core" / "selective_copying.yaml"
# Shrink the data so smoke runs spend their time on the model, not on generating 40k sequences.
SMALL_DATA = ["--data.init_args.n_train=256", "--data.init_args.n_val=64", "--data.init_args.n_test=64"]


def cli_command() -> list[str]:
    """The installed console script, or the module entry when the script is not on this interpreter."""
    script = Path(sys.executable).parent / "mamba-suite"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mambasuite.core.cli"]


@pytest.fixture
def run_main(monkeypatch, tmp_path):
    """Call `cli.main(args)` in-process inside tmp_path, with sys.argv clean (as the console script sees it)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mamba-suite"])
    return cli.main


def test_top_level_help_lists_commands_and_starts_fast():
    start = time.perf_counter()
    proc = subprocess.run([*cli_command(), "--help"], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    for command in ("fit", "validate", "test", "predict", "bench"):
        assert f"\n  {command} " in proc.stdout, f"{command!r} missing from --help:\n{proc.stdout}"
    # Lightning must not be imported for the top-level help (it alone takes ~2.5 s here).
    assert elapsed < 5.0, f"`mamba-suite --help` took {elapsed:.1f} s"


def test_help_does_not_import_lightning(capsys):
    code = "import sys; from mambasuite.core.cli import main; main(['--help']); print('pl' , 'pytorch_lightning' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("pl False")


def test_no_arguments_prints_usage(run_main, capsys):
    assert run_main([]) == 0
    assert "usage: mamba-suite" in capsys.readouterr().out


def test_unknown_command_is_an_error(run_main, capsys):
    with pytest.raises(SystemExit) as exc:
        run_main(["fitt", "-c", str(SELECTIVE)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown command 'fitt'" in err and "fit" in err


def test_extra_command_dispatch(run_main, monkeypatch):
    seen = {}

    def fake_main(argv):
        seen["argv"] = argv
        return 3

    monkeypatch.setitem(sys.modules, "fake_suite_cmd", types.SimpleNamespace(main=fake_main))
    monkeypatch.setitem(cli.EXTRA_COMMANDS, "frob", ("fake_suite_cmd", "a test command"))
    assert run_main(["frob", "--x", "1"]) == 3
    assert seen["argv"] == ["--x", "1"]


def test_missing_extra_command_module_is_a_clear_error(run_main, monkeypatch, capsys):
    monkeypatch.setitem(cli.EXTRA_COMMANDS, "frob", ("mambasuite.core.no_such_module", "missing"))
    with pytest.raises(SystemExit) as exc:
        run_main(["frob"])
    assert exc.value.code == 2
    assert "'frob' is not available" in capsys.readouterr().err


def test_missing_config_file(run_main, capsys, tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SystemExit) as exc:
        run_main(["fit", "-c", str(missing)])
    assert exc.value.code != 0
    assert f"config file not found: {missing}" in capsys.readouterr().err


def test_unknown_key_in_config_names_it(run_main, capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    text = SELECTIVE.read_text()
    assert "\n    d_conv: 4\n" in text
    bad.write_text(text.replace("\n    d_conv: 4\n", "\n    d_conv: 4\n    d_stat: 8\n"))
    with pytest.raises(SystemExit) as exc:
        run_main(["fit", "-c", str(bad), "--trainer.fast_dev_run=true"])
    assert exc.value.code != 0
    assert "d_stat" in capsys.readouterr().err


def test_unknown_key_on_command_line_names_it(run_main, capsys):
    with pytest.raises(SystemExit) as exc:
        run_main(["fit", "-c", str(SELECTIVE), "--trainer.max_stepz=3"])
    assert exc.value.code != 0
    assert "max_stepz" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "name"),
    [("--data.init_args.n_tokens=65", "n_tokens"), ("--data.init_args.vocab_size=1", "vocab_size"),
     ("--model.init_args.d_model=0", "d_model")],
)
def test_bad_task_args_raise_value_error_naming_them(run_main, override, name):
    with pytest.raises(ValueError, match=name):
        run_main(["fit", "-c", str(SELECTIVE), override, "--trainer.fast_dev_run=true"])


def test_model_data_vocab_mismatch_is_reported(run_main):
    with pytest.raises(ValueError, match="input_vocab_size"):
        run_main(["fit", "-c", str(SELECTIVE), "--data.init_args.vocab_size=12", *SMALL_DATA,
                  "--trainer.fast_dev_run=true"])


@pytest.mark.parametrize("config", CORE_CONFIGS, ids=lambda p: p.stem)
def test_config_fast_dev_run(run_main, config, capsys, tmp_path):
    assert run_main(["fit", "-c", str(config), "--trainer.fast_dev_run=true", *SMALL_DATA]) == 0
    out = capsys.readouterr()
    assert f"{config.stem}: val/acc" in out.out  # the one-line result
    assert "litlogger" not in out.out + out.err  # the per-Trainer tip is filtered
    assert not (tmp_path / "runs").exists()  # fast_dev_run writes no logs or checkpoints


def test_fit_then_validate_test_predict_from_checkpoint(run_main, tmp_path, capsys):
    short = [*SMALL_DATA, "--trainer.max_steps=4", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
             "--trainer.enable_progress_bar=false"]
    assert run_main(["fit", "-c", str(SELECTIVE), *short]) == 0
    run_dir = tmp_path / "runs" / "selective_copying" / "version_0"
    for name in ("metrics.csv", "config.yaml", "hparams.yaml", "summary.json"):
        assert (run_dir / name).is_file(), name
    ckpt_dir = run_dir / "checkpoints"
    files = sorted(p.name for p in ckpt_dir.iterdir())
    # save_last plus one best file named without "/" sub-folders (val/acc -> val_acc).
    assert "last.ckpt" in files and all(p.is_file() for p in ckpt_dir.iterdir()), files
    assert any(re.fullmatch(r"step\d{6}-val_acc\d\.\d{4}\.ckpt", name) for name in files), files

    last = str(ckpt_dir / "last.ckpt")
    assert run_main(["validate", "-c", str(SELECTIVE), *SMALL_DATA, "--ckpt_path", last]) == 0
    assert run_main(["test", "-c", str(SELECTIVE), *SMALL_DATA, "--ckpt_path", last]) == 0
    assert "test/acc" in capsys.readouterr().out
    assert run_main(["predict", "-c", str(SELECTIVE), *SMALL_DATA, "--ckpt_path", last]) == 0
    pred_files = list((tmp_path / "runs" / "selective_copying").glob("version_*/predictions.pt"))
    assert len(pred_files) == 1
    saved = torch.load(pred_files[0], weights_only=True)
    preds = torch.cat(saved["predictions"])
    assert preds.shape == (64, 64 + 8) and preds.dtype == torch.int64
    assert int(preds.min()) >= 0 and int(preds.max()) < 8


def test_default_root_dir_moves_logger(run_main, tmp_path):
    target = tmp_path / "elsewhere"
    assert run_main(["fit", "-c", str(SELECTIVE), *SMALL_DATA, "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
                     "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={target}"]) == 0
    assert (target / "version_0" / "metrics.csv").is_file()
    assert not (tmp_path / "runs").exists()


def test_console_script_fast_dev_run_subprocess(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([*cli_command(), "fit", "-c", str(SELECTIVE), "--trainer.fast_dev_run=true", *SMALL_DATA],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "selective_copying: val/acc" in proc.stdout
