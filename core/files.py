"""Crash-safe file writing and weights-only checkpoint reading (torch only; no Lightning import).

* :func:`atomic_write` writes a file under a temporary name in the target's folder, flushes and fsyncs it,
  then ``os.replace``-s it over the target (and fsyncs the folder). A reader, or a run killed at any
  instant, sees either the previous file or the complete new one, never a torn one. Checkpoints,
  converted weights, evaluation reports and generated datasets all go through it.
* :func:`safe_torch_load` is ``torch.load(weights_only=True)`` with an optional explicit allow-list of
  extra classes; a pickle that asks for anything else (e.g. a ``__reduce__`` that calls ``os.system``)
  is refused with :class:`UnsafeCheckpointError` naming the file and the global.
"""

from __future__ import annotations

import importlib
import os
import pickle
import secrets
import socket
from pathlib import Path
from typing import Any, Callable, Iterable, Union

import torch

__all__ = ["UnsafeCheckpointError", "atomic_write", "refuse_existing_outputs", "safe_torch_load"]

WriteData = Union[bytes, bytearray, memoryview, str, Callable[[Path], Any]]
_TMP_MARK = ".tmp"


class UnsafeCheckpointError(ValueError):
    """A pickle asked for a global that is not on the weights-only allow-list (it was not executed)."""


def _temporary_name(path: Path) -> Path:
    """``.<name>.<host>-<pid>-<random>.tmp<suffix>`` beside ``path``.

    The leading dot keeps Lightning's ``last*.ckpt`` lookup and globbing tools away from it; the real suffix
    is kept last because some writers pick the format from it (``savefig``, ``np.save``).
    """
    host = socket.gethostname().replace(".", "_").replace("-", "_")
    return path.with_name(f".{path.name}.{host}-{os.getpid()}-{secrets.token_hex(4)}{_TMP_MARK}{path.suffix}")


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries of ``path`` left by killed writers on this host (their pid no longer exists)."""
    host = socket.gethostname().replace(".", "_").replace("-", "_")
    prefix = f".{path.name}.{host}-"
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(_TMP_MARK + path.suffix)):
            continue
        pid_text = name[len(prefix):].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            entry.unlink(missing_ok=True)  # its writer is gone: the file can never be completed
        except OSError:
            pass  # alive under another user, or not ours to judge


def _fsync_path(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:
            return  # platforms that cannot open folders (Windows) rely on the rename alone
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: WriteData, *, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` so that ``path`` is always either the old file or the complete new one.

    Args:
        path: the destination file; its folder is created if needed.
        data: ``bytes``/``str`` (UTF-8) to write, or a callable ``writer(tmp_path)`` that writes the file itself
            (``torch.save(obj, tmp)``, ``safetensors.torch.save_file(t, tmp)``, ``fig.savefig(tmp)``); the temporary
            name keeps ``path``'s suffix.
        overwrite: ``False`` raises ``FileExistsError`` when ``path`` already exists.

    Returns:
        ``path`` as a ``Path``.

    The temporary file lives in the destination folder (a rename is atomic only within one file system), is
    fsynced before the rename, and the folder is fsynced after it, so the new name survives a power loss.
    """
    path = Path(path)
    if not (isinstance(data, (bytes, bytearray, memoryview, str)) or callable(data)):
        raise TypeError(f"atomic_write({path}): data must be bytes, str or a callable writer(path), "
                        f"got {type(data).__name__}")
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} already exists; refusing to overwrite it (pass overwrite=True to replace it)")
    if path.is_dir():
        raise IsADirectoryError(f"atomic_write: {path} is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = _temporary_name(path)
    try:
        if callable(data):
            data(tmp)
            if not tmp.is_file():
                raise FileNotFoundError(f"atomic_write({path}): the writer did not create {tmp}")
        else:
            payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
            # O_EXCL: never write through a file someone else created under our (random) name.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_path(path.parent, directory=True)
    return path


def refuse_existing_outputs(folder: str | os.PathLike, patterns: Iterable[str], hint: str = "") -> None:
    """Raise ``FileExistsError`` naming the files under ``folder`` that match the glob ``patterns``.

    Commands that write a report folder (``"report.json"``, ``"masks/*.nii.gz"``, ...) call this before doing any
    work unless told to overwrite, so an earlier report is never silently replaced or mixed with a new one.
    ``hint`` (e.g. "pass --overwrite=true") ends the message.
    """
    folder = Path(folder)
    found = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()}) if folder.is_dir() else []
    if found:
        names = ", ".join(str(p.relative_to(folder)) for p in found[:5])
        more = f" and {len(found) - 5} more" if len(found) > 5 else ""
        raise FileExistsError(f"{folder} already holds a report ({names}{more}); refusing to overwrite it"
                              + (f": {hint}" if hint else ""))


def import_global(name: str) -> Any:
    """The object named by a dotted path "module.Name"; ValueError naming it if it cannot be imported."""
    module_name, _, attr = name.rpartition(".")
    if not module_name:
        raise ValueError(f"safe global {name!r} must be a dotted path 'module.Name'")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"safe global {name!r} cannot be imported: {err}") from err


def _unpickler_reason(text: str) -> str:
    """The informative line of torch's weights-only refusal (the global it refused, or the opcode)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line:
            return line
    for i, line in enumerate(lines):
        if line.endswith("WeightsUnpickler error:") and i + 1 < len(lines):
            return lines[i + 1]
    return lines[0] if lines else text


def safe_torch_load(path: str | os.PathLike, *, safe_globals: Iterable[Any] = (), map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with an explicit allow-list; never runs pickled code.

    Args:
        path: a torch pickle (``.pt``/``.pth``/``.ckpt``/``.bin``).
        safe_globals: extra classes (objects, ``"module.Name"`` strings, or ``(object, "pickled.name")`` pairs as
            in ``torch.serialization.safe_globals``) the file may reference besides tensors and containers.
        map_location: passed to ``torch.load``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: the pickle references a global outside the allow-list (nothing was executed).
        ValueError: the file is truncated, empty or not a torch pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    allowed = [import_global(g) if isinstance(g, str) else g for g in safe_globals]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "weights_only" in text or "Unsupported global" in text or "not an allowed global" in text.lower():
            first = _unpickler_reason(text)
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it is not a weights-only checkpoint ({first[:300]}); unpickling it could "
                f"run code from the file. If you trust the file and the class is harmless, add it to the allow-list "
                f"(safe_globals / AtomicCheckpointIO(safe_globals=[...]))."
            ) from None
        raise ValueError(f"cannot read checkpoint {path}: {err}") from err
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, KeyError, TypeError) as err:
        # Truncated zip archives, empty files, legacy non-zip pickles that end early, ...
        raise ValueError(f"cannot read checkpoint {path} (truncated, empty or not a torch checkpoint): "
                         f"{type(err).__name__}: {err}") from err


