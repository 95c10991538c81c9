"""Every shipped audio config parses, instantiates and runs a few steps (fast_dev_run) on fixture or embedded data."""

from pathlib import Path

from mambasuite.core.cli import main as cli_main

from .conftest import needs_espeak, write_librispeech, write_speech_commands

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "audio"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
ON_CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true"]


def _fit(config: str, tmp_path, *extra: str) -> None:
    assert cli_main(["fit", "-c", str(CONFIGS / config), "--trainer.fast_dev_run=2",
                     f"--trainer.default_root_dir={tmp_path / 'run'}", *QUIET, *extra]) == 0


def test_all_configs_are_covered():
    assert {p.name for p in CONFIGS.glob("*.yaml")} == {
        "asr_espeak.yaml", "librispeech_conmamba_ctc.yaml", "kws_speechcommands.yaml"}


@needs_espeak
def test_asr_espeak_fast_dev_run(tmp_path):
    _fit("asr_espeak.yaml", tmp_path, f"--data.init_args.cache_dir={tmp_path / 'cache'}",
         "--data.init_args.espeak_counts=[12,4,4]")
    assert len(list((tmp_path / "cache" / "espeak").glob("espeak_asr_*/corpus.json"))) == 1


def test_librispeech_recipe_on_a_fixture_folder(tmp_path):
    for subset in ("train-clean-100", "dev-clean", "test-clean"):
        write_librispeech(tmp_path / "ls", subset)
    _fit("librispeech_conmamba_ctc.yaml", tmp_path, *ON_CPU, "--trainer.strategy=auto",
         f"--data.init_args.data_dir={tmp_path / 'ls'}", f"--data.init_args.cache_dir={tmp_path / 'cache'}",
         "--data.init_args.train_subsets=[train-clean-100]", "--data.init_args.num_workers=0",
         "--data.init_args.max_frames=300")


def test_kws_recipe_on_a_fixture_folder(tmp_path):
    root = write_speech_commands(tmp_path / "sc", words=("yes", "no", "up"))
    _fit("kws_speechcommands.yaml", tmp_path, *ON_CPU, f"--data.init_args.data_dir={root}",
         "--data.init_args.num_workers=0", "--data.init_args.batch_size=2", "--model.init_args.num_classes=3")
