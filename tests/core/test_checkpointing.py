"""Atomic writes (also under SIGKILL during a large save) and weights-only loading that refuses pickled code."""

from __future__ import annotations

import os
import pickle
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from mambasuite.core.checkpointing import AtomicCheckpointIO
from mambasuite.core.files import UnsafeCheckpointError, atomic_write, safe_torch_load

PWNED = "mambasuite_pwned_marker"


class _RunsCode:
    """A pickle payload whose __reduce__ would create a marker file (harmless stand-in for os.system)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _malicious_checkpoint(path: Path, marker: Path) -> Path:
    # A Lightning-looking checkpoint with one poisoned entry, written with torch.save (zip format)...
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"evil": _RunsCode(marker)}}, path)
    return path


def test_atomic_write_bytes_str_and_callable(tmp_path):
    target = tmp_path / "sub" / "report.json"
    atomic_write(target, '{"a": 1}\n')
    assert target.read_text() == '{"a": 1}\n'
    atomic_write(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    atomic_write(tmp_path / "t.pt", lambda tmp: torch.save({"x": torch.arange(3)}, tmp))
    assert torch.equal(torch.load(tmp_path / "t.pt", weights_only=True)["x"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["report.json", "t.pt"]  # no temporaries


def test_atomic_write_keeps_suffix_for_format_sniffing_writers(tmp_path):
    seen = []
    atomic_write(tmp_path / "fig.png", lambda tmp: (seen.append(tmp.suffix), tmp.write_bytes(b"png")))
    assert seen == [".png"] and (tmp_path / "fig.png").read_bytes() == b"png"


def test_atomic_write_respects_umask_permissions(tmp_path):
    atomic_write(tmp_path / "a.txt", "x")
    mode = stat.S_IMODE((tmp_path / "a.txt").stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # not mkstemp's 0600


def test_failed_writer_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")

    def broken(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_overwrite_false_and_bad_data(tmp_path):
    (tmp_path / "r.md").write_text("keep")
    with pytest.raises(FileExistsError, match="r.md"):
        atomic_write(tmp_path / "r.md", "new", overwrite=False)
    assert (tmp_path / "r.md").read_text() == "keep"
    with pytest.raises(TypeError, match="bytes, str or a callable"):
        atomic_write(tmp_path / "x", 3)


def test_stale_temporary_of_a_dead_writer_is_removed(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(proc.stdout)  # that process has exited
    import socket

    host = socket.gethostname().replace(".", "_").replace("-", "_")
    stale = tmp_path / f".last.ckpt.{host}-{dead_pid}-abcd1234.tmp.ckpt"
    stale.write_bytes(b"partial")
    atomic_write(tmp_path / "last.ckpt", b"new")
    assert not stale.exists() and (tmp_path / "last.ckpt").read_bytes() == b"new"


_WRITER = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from mambasuite.core.checkpointing import AtomicCheckpointIO
    target, marker = Path(sys.argv[1]), Path(sys.argv[2])
    io = AtomicCheckpointIO()
    # ~64 MB of tensors, written again and again with a new version number each time.
    blob = {f"layer{i}": torch.full((256, 1024), float(i)) for i in range(64)}
    version = 1
    while True:
        io.save_checkpoint({"version": version, "state_dict": blob}, target)
        marker.write_text(str(version))
        version += 1
""")


@pytest.mark.parametrize("kill_after_temp_bytes", [1, 20_000_000])
def test_sigkill_during_large_checkpoint_save_leaves_previous_loadable(tmp_path, kill_after_temp_bytes):
    target, marker = tmp_path / "last.ckpt", tmp_path / "saved"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target), str(marker)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():  # first complete save
            assert proc.poll() is None and time.monotonic() < deadline, "writer died or never saved"
            time.sleep(0.01)
        while True:  # then kill it while the next save is half written
            temps = [p for p in tmp_path.glob(".last.ckpt.*") if p.is_file()]
            sizes = [p.stat().st_size for p in temps if p.exists()]
            if sizes and max(sizes) >= kill_after_temp_bytes:
                break
            assert proc.poll() is None and time.monotonic() < deadline, "no save in progress caught"
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert any(p.name.startswith(".last.ckpt.") for p in tmp_path.iterdir()), "the kill hit no save in progress"
    ckpt = AtomicCheckpointIO().load_checkpoint(target)  # the previous complete checkpoint
    assert ckpt["version"] >= 1 and len(ckpt["state_dict"]) == 64
    assert torch.equal(ckpt["state_dict"]["layer63"], torch.full((256, 1024), 63.0))
    # The next save clears the dead writer's temporary and replaces the file.
    AtomicCheckpointIO().save_checkpoint({"version": -1}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "saved"]


def test_malicious_pickle_is_refused_without_running_code(tmp_path):
    marker = tmp_path / PWNED
    path = _malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.ckpt.*not a weights-only checkpoint"):
        safe_torch_load(path)
    with pytest.raises(UnsafeCheckpointError, match="evil.ckpt"):
        AtomicCheckpointIO().load_checkpoint(path)
    # A plain (non-zip) pickle of the same payload.
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_RunsCode(marker), protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="evil.pkl"):
        safe_torch_load(raw)
    assert not marker.exists(), "the pickled payload ran"


def test_allow_list_admits_only_the_named_class(tmp_path):
    import argparse

    path = tmp_path / "ns.pt"
    torch.save({"args": argparse.Namespace(lr=0.1), "w": torch.ones(1)}, path)
    with pytest.raises(UnsafeCheckpointError, match="Namespace"):
        safe_torch_load(path)
    assert safe_torch_load(path, safe_globals=["argparse.Namespace"])["args"].lr == 0.1
    assert AtomicCheckpointIO(safe_globals=["argparse.Namespace"]).load_checkpoint(path)["args"].lr == 0.1
    with pytest.raises(ValueError, match="no.such"):
        AtomicCheckpointIO(safe_globals=["no.such.Class"])


def test_weights_only_false_is_refused(tmp_path):
    torch.save({"w": torch.ones(1)}, tmp_path / "a.ckpt")
    with pytest.raises(ValueError, match="weights_only=True only"):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "a.ckpt", weights_only=False)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None], ids=["empty", "text", "truncated"])
def test_corrupt_checkpoints_name_the_file(tmp_path, content):
    path = tmp_path / "bad.ckpt"
    if content is None:
        torch.save({"w": torch.randn(1000)}, path)
        path.write_bytes(path.read_bytes()[:300])
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="bad.ckpt"):
        safe_torch_load(path)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        safe_torch_load(tmp_path / "missing.ckpt")


def test_cli_refuses_malicious_resume_checkpoint(tmp_path, monkeypatch):
    """`mamba-suite fit --ckpt_path EVIL` stops with the clear error and never runs the payload."""
    from mambasuite.core import cli

    repo = Path(__file__).resolve().parents[2]
    marker = tmp_path / PWNED
    evil = _malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mamba-suite"])
    with pytest.raises(UnsafeCheckpointError, match="evil.ckpt"):
        cli.main(["fit", "-c", str(repo / "configs/core/selective_copying.yaml"), "--ckpt_path", str(evil),
                  "--data.init_args.n_train=64", "--data.init_args.n_val=64", "--trainer.max_steps=1",
                  "--trainer.enable_progress_bar=false"])
    assert not marker.exists()


def test_vision_read_checkpoint_refuses_malicious_pickle(tmp_path):
    from mambasuite.vision.models._helpers import read_checkpoint

    marker = tmp_path / PWNED
    with pytest.raises(UnsafeCheckpointError, match="evil.pth"):
        read_checkpoint(_malicious_checkpoint(tmp_path / "evil.pth", marker))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{truncated")
    with pytest.raises(ValueError, match="bad.safetensors"):
        read_checkpoint(bad)
    assert not marker.exists()


def test_vision_convert_refuses_malicious_pickle(tmp_path):
    from mambasuite.vision.convert import main

    marker = tmp_path / PWNED
    evil = _malicious_checkpoint(tmp_path / "evil.pth", marker)
    with pytest.raises(SystemExit) as exc:
        main(["vim", str(evil), str(tmp_path / "out.safetensors")])
    assert exc.value.code == 2 and not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_bio_convert_refuses_malicious_pickle(tmp_path):
    from mambasuite.bio.convert import main

    marker = tmp_path / PWNED
    evil = _malicious_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises((SystemExit, ValueError, pickle.UnpicklingError)):
        main(["caduceus", str(evil), str(tmp_path / "out")])
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_save_pretrained_is_atomic_and_from_pretrained_names_corrupt_files(tmp_path):
    from mambasuite.core.blocks import MambaBackbone

    model = MambaBackbone(d_model=8, n_layer=1, d_state=4)
    out = model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="model.safetensors"):
        MambaBackbone.from_pretrained(out)
    (out / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        MambaBackbone.from_pretrained(out)
