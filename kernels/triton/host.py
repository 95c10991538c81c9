"""Cheap host-side helpers for the launchers.

At small shapes an eager step waits on host time, not on the GPU (BENCHMARKS.md, "Host time"), and on the H200's
host every microsecond of Python counts several times over. Two everyday calls were surprisingly dear there:
`triton.cdiv` / `triton.next_power_of_2` are `ConstexprFunction`s in Triton 3.6 (about 1.5 us a call on the dev
machine against 0.05 us for the integer arithmetic), and `os.environ.get` encodes and decodes on every call (0.5 us;
the launchers read up to eleven override variables per call).
"""

from __future__ import annotations

import os


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for positive integers."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, n - 1).bit_length()


_RAW_ENV = getattr(os.environ, "_data", None)  # CPython's live dict behind os.environ: bytes keys and values on POSIX


def env_reader(*names: str):
    """A function returning the current values of the environment variables `names` (None when unset), as a tuple.

    On POSIX it reads os.environ's own dict with the keys encoded once; os.environ[...] = / del / monkeypatch.setenv
    all update that dict, so the values are always current. Elsewhere it falls back to os.environ.get."""
    if os.name == "posix" and isinstance(_RAW_ENV, dict):
        keys = tuple(os.fsencode(n) for n in names)

        def read() -> tuple[str | None, ...]:
            return tuple(None if v is None else os.fsdecode(v) for v in map(_RAW_ENV.get, keys))
    else:
        def read() -> tuple[str | None, ...]:
            return tuple(os.environ.get(n) for n in names)
    return read


__all__ = ["cdiv", "next_pow2", "env_reader"]
