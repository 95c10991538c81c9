"""Randomised differential testing of the selective scan: a backend against the float64 reference.

    python -m mambasuite.kernels.fuzz --cases 2000 --device cuda --out DIR [--seed 0] [--backend triton]

Each case draws a shape and a variant at random: L from 1 up (odd sizes, across tile and segment
boundaries), dim, N from 1 to 256, B and C each time-invariant / variable / grouped (any G dividing dim),
input dtype fp32 / bf16 / fp16, every optional input on or off (D, z, delta_bias, initial_state,
delta_softplus, reverse, a last-state cotangent), and a memory layout (contiguous, channels-last
``(batch, L, dim)`` transposed, or every other element of a larger buffer). The backend's output, last state
and every input gradient are compared with ``backend="reference"`` run in float64 on the same values; the
error is ``max |ours - ref| / max(max |ref|, 0.01)`` per tensor, against mamba-ssm's tolerances. Every
``--determinism-every``-th case also runs the backward twice under ``torch.use_deterministic_algorithms(True)``
and requires bitwise-equal gradients.

Writes ``DIR/fuzz.json`` (cases run, mismatches with their full parameters so each one can be replayed with
``--replay``, worst error per dtype, determinism checks) and ``DIR/fuzz.md``; exits 1 if anything mismatched.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import math
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import selective_scan

__all__ = ["ScanCase", "TOLERANCE", "compare_scan", "main", "make_scan_inputs", "random_case"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# mamba-ssm's selective-scan test tolerances, applied to the max error relative to the tensor's scale.
TOLERANCE = {"float32": 6e-4, "bfloat16": 3e-2, "float16": 3e-3}
FORMS = ("invariant", "variable", "grouped")
LAYOUTS = ("contiguous", "transposed", "strided")


@dataclass(frozen=True)
class ScanCase:
    """One fuzz case; :func:`make_scan_inputs` turns it into tensors deterministically (``seed``)."""

    seed: int
    batch: int
    dim: int
    length: int
    d_state: int
    b_form: str
    c_form: str
    groups: int
    dtype: str
    bc_dtype: str
    has_D: bool
    has_z: bool
    has_delta_bias: bool
    has_initial_state: bool
    delta_softplus: bool
    reverse: bool
    with_dlast: bool
    layout: str

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES or self.bc_dtype not in DTYPES:
            raise ValueError(f"dtype/bc_dtype must be one of {sorted(DTYPES)}, got {self.dtype}/{self.bc_dtype}")
        if self.b_form not in FORMS or self.c_form not in FORMS or self.layout not in LAYOUTS:
            raise ValueError(f"bad form/layout in {self}")
        if min(self.batch, self.dim, self.length, self.d_state, self.groups) < 1 or self.dim % self.groups:
            raise ValueError(f"sizes must be >= 1 and groups must divide dim: {self}")


def _log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi + 0.999)))))


def random_case(rng: random.Random, large: bool) -> ScanCase:
    """Draw a case; ``large`` (GPU) allows L up to 65536, dim up to 512 and N up to 256 on long sequences,
    otherwise sizes stay small enough for the CPU (Triton interpreter)."""
    if large:
        length = min(_log_uniform(rng, 1, 65536), 65536)
        dim = _log_uniform(rng, 1, 512)
        d_state = _log_uniform(rng, 1, 256)
        batch = rng.randint(1, 4)
        while batch * dim * length * d_state > 2 ** 30:  # bounds the float64 reference (memory and time)
            length = max(1, length // 2)
    else:
        length = _log_uniform(rng, 1, 200)
        dim = rng.randint(1, 12)
        d_state = rng.choice([1, 2, 3, 4, 7, 8, 16]) if length > 8 else _log_uniform(rng, 1, 256)
        batch = rng.randint(1, 2)
    divisors = [g for g in range(1, dim + 1) if dim % g == 0]
    dtype = rng.choice(list(DTYPES))
    return ScanCase(
        seed=rng.randrange(2 ** 31), batch=batch, dim=dim, length=length, d_state=d_state,
        b_form=rng.choice(FORMS), c_form=rng.choice(FORMS), groups=rng.choice(divisors), dtype=dtype,
        bc_dtype=rng.choice([dtype, "float32"]), has_D=rng.random() < 0.5, has_z=rng.random() < 0.5,
        has_delta_bias=rng.random() < 0.5, has_initial_state=rng.random() < 0.5, delta_softplus=rng.random() < 0.7,
        reverse=rng.random() < 0.5, with_dlast=rng.random() < 0.5, layout=rng.choice(LAYOUTS),
    )


def _laid_out(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``t`` (last dim = L) in another memory layout."""
    if layout == "transposed":  # channels-last buffer (..., L, C) viewed as (..., C, L)
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "strided":  # every other element along L of a buffer twice as long
        buf = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        buf[..., ::2] = t
        return buf[..., ::2]
    return t


def make_scan_inputs(case: ScanCase, device: str | torch.device) -> dict[str, torch.Tensor | None]:
    """Tensors for ``selective_scan(**inputs)`` (without flags), deterministic in ``case.seed``.

    Shapes: u, delta, z (batch, dim, L); A (dim, N) fp32 negative; B/C per form; D, delta_bias (dim,) fp32;
    initial_state (batch, dim, N) fp32. Absent optional inputs are ``None``.
    """
    g = torch.Generator().manual_seed(case.seed)
    dt, bc_dt = DTYPES[case.dtype], DTYPES[case.bc_dtype]

    def rnd(*shape, dtype=dt, scale=1.0, layout="contiguous"):
        return _laid_out((torch.randn(*shape, generator=g) * scale).to(dtype).to(device), layout)

    batch, dim, length, n = case.batch, case.dim, case.length, case.d_state

    def bc(form: str) -> torch.Tensor:
        if form == "invariant":
            return rnd(dim, n, dtype=torch.float32)
        shape = (batch, n, length) if form == "variable" else (batch, case.groups, n, length)
        return rnd(*shape, dtype=bc_dt, layout=case.layout)

    # Step sizes must be positive (a negative dt makes exp(dt * A) grow: overflow, not a kernel bug): softplus
    # takes care of that, otherwise delta and delta_bias are drawn positive, as mamba-ssm's tests do.
    if case.delta_softplus:
        delta = rnd(batch, dim, length, scale=0.5, layout=case.layout)
    else:
        delta = _laid_out((torch.rand(batch, dim, length, generator=g) * 0.5 + 0.01).to(dt).to(device), case.layout)
    bias = (torch.randn(dim, generator=g) * 0.5) if case.delta_softplus else torch.rand(dim, generator=g) * 0.1
    return dict(
        u=rnd(batch, dim, length, layout=case.layout),
        delta=delta,
        A=(-torch.rand(dim, n, generator=g) * 2 - 0.05).to(device),
        B=bc(case.b_form), C=bc(case.c_form),
        D=rnd(dim, dtype=torch.float32) if case.has_D else None,
        z=rnd(batch, dim, length, layout=case.layout) if case.has_z else None,
        delta_bias=bias.to(device) if case.has_delta_bias else None,
        initial_state=rnd(batch, dim, n, dtype=torch.float32) if case.has_initial_state else None,
    )


# Inputs are O(1), so every compared tensor has an O(1) scale unless it is zero by construction (dA at L=1
# without an initial state): errors are measured against max(max |ref|, SCALE_FLOOR) so that rounding noise
# (~1e-7) on an exactly-zero reference is not reported as a relative error of 1e5.
SCALE_FLOOR = 1e-2


def _relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    if not bool(torch.isfinite(ours).all()):
        return math.inf
    scale = ref.abs().max().item() if ref.numel() else 0.0
    diff = (ours.to(torch.float64) - ref).abs().max().item() if ref.numel() else 0.0
    return diff / max(scale, SCALE_FLOOR)


def _run_with_grads(inputs: dict, case: ScanCase, backend: str, cotangents: tuple[torch.Tensor, torch.Tensor | None],
                    to_f64: bool) -> dict[str, torch.Tensor]:
    """Forward + backward; returns out, last_state and the gradient of every given input."""
    leaves = {k: (v.detach().to(torch.float64) if to_f64 else v.detach().clone()).requires_grad_()
              for k, v in inputs.items() if v is not None}
    out, last = selective_scan(**leaves, delta_softplus=case.delta_softplus, return_last_state=True,
                               reverse=case.reverse, backend=backend)
    w_out, w_last = cotangents
    loss = (out.to(torch.float64) * w_out).sum()
    if w_last is not None:
        loss = loss + (last.to(torch.float64) * w_last).sum()
    loss.backward()
    result = {"out": out.detach(), "last_state": last.detach()}
    result.update({f"d{k}": v.grad for k, v in leaves.items()})
    return result


def compare_scan(case: ScanCase, device: str | torch.device, backend: str = "triton",
                 check_determinism: bool = False) -> dict:
    """Run ``case`` on ``backend`` and on the float64 reference; returns errors, tolerance and verdicts.

    Returns ``{"errors": {tensor: relative error}, "max_error", "tolerance", "ok", "deterministic": bool|None}``.
    """
    inputs = make_scan_inputs(case, device)
    g = torch.Generator().manual_seed(case.seed + 1)
    shape = (case.batch, case.dim, case.length)
    w_out = torch.randn(*shape, generator=g, dtype=torch.float64).to(device)
    w_last = (torch.randn(case.batch, case.dim, case.d_state, generator=g, dtype=torch.float64).to(device)
              if case.with_dlast else None)
    ours = _run_with_grads(inputs, case, backend, (w_out, w_last), to_f64=False)
    ref = _run_with_grads(inputs, case, "reference", (w_out, w_last), to_f64=True)
    errors = {k: _relative_error(ours[k], ref[k]) for k in ref}
    tol = TOLERANCE[case.dtype]
    deterministic = None
    if check_determinism:
        before = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            runs = [_run_with_grads(inputs, case, backend, (w_out, w_last), to_f64=False) for _ in range(2)]
        finally:
            torch.use_deterministic_algorithms(before)
        deterministic = all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    worst = max(errors.values())
    return {"errors": errors, "max_error": worst, "tolerance": tol, "ok": worst <= tol,
            "deterministic": deterministic}


def _versions() -> dict[str, str]:
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    try:
        import triton

        versions["triton"] = triton.__version__
    except ImportError:
        pass
    return versions


def _markdown(result: dict) -> str:
    lines = [f"# Selective-scan fuzz ({result['backend']} vs float64 reference)", "",
             f"{result['date']} · {result['device']} · " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
             "", f"`{result['command']}`", "",
             f"- cases run: {result['cases_run']} (seed {result['seed']}, {result['wall_s']:.0f} s)",
             f"- mismatches: {result['mismatch_count']}",
             f"- determinism: {result['determinism']['checked']} checked, "
             f"{result['determinism']['nondeterministic']} not bitwise reproducible",
             f"- largest L: {result['max_length']}, largest N: {result['max_d_state']}", "",
             "| dtype | cases | worst error | tolerance |", "|---|---|---|---|"]
    for dtype, row in sorted(result["by_dtype"].items()):
        lines.append(f"| {dtype} | {row['cases']} | {row['worst_error']:.2e} | {TOLERANCE[dtype]:.0e} |")
    for m in result["mismatches"][:20]:
        lines.append(f"\n- mismatch: `{json.dumps(m['case'])}` errors {m['errors']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns 0 when every case matched (and was deterministic where checked), else 1."""
    parser = argparse.ArgumentParser(prog="python -m mambasuite.kernels.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=200, help="number of random cases")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (Triton interpreter, small sizes)")
    parser.add_argument("--out", required=True, help="folder for fuzz.json and fuzz.md")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="triton", choices=("triton", "reference", "mamba_ssm"))
    parser.add_argument("--determinism-every", type=int, default=10,
                        help="check bitwise-reproducible backward on every N-th case (0: never)")
    parser.add_argument("--time-budget", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--replay", default=None, help="JSON of one case (from fuzz.json) to run alone")
    args = parser.parse_args(argv)
    if args.cases < 1:
        parser.error(f"--cases must be >= 1, got {args.cases}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available (use --device cpu with TRITON_INTERPRET=1)")
    rng = random.Random(args.seed)
    cases = ([ScanCase(**json.loads(args.replay))] if args.replay else
             [random_case(rng, large=device.type == "cuda") for _ in range(args.cases)])
    start = time.perf_counter()
    mismatches, by_dtype, checked, nondet, run = [], {}, 0, [], 0
    for i, case in enumerate(cases):
        if args.time_budget is not None and time.perf_counter() - start > args.time_budget:
            break
        det = args.determinism_every > 0 and i % args.determinism_every == 0 and args.backend == "triton"
        try:
            res = compare_scan(case, device, args.backend, check_determinism=det)
        except Exception as err:  # a crash is a finding, not the end of the sweep
            res = {"errors": {"exception": f"{type(err).__name__}: {err}"}, "max_error": math.inf,
                   "tolerance": TOLERANCE[case.dtype], "ok": False, "deterministic": None}
        run += 1
        row = by_dtype.setdefault(case.dtype, {"cases": 0, "worst_error": 0.0})
        row["cases"] += 1
        if math.isfinite(res["max_error"]):
            row["worst_error"] = max(row["worst_error"], res["max_error"])
        if not res["ok"]:
            mismatches.append({"case": dataclasses.asdict(case), "errors": res["errors"]})
        if res["deterministic"] is not None:
            checked += 1
            if not res["deterministic"]:
                nondet.append(dataclasses.asdict(case))
        if (i + 1) % 50 == 0:
            print(f"{i + 1}/{len(cases)} cases, {len(mismatches)} mismatches", flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    result = {
        "benchmark": "fuzz", "op": "selective_scan", "backend": args.backend,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "device": name,
        "versions": _versions(), "command": " ".join(["python -m mambasuite.kernels.fuzz", *(argv or sys.argv[1:])]),
        "seed": args.seed, "cases_run": run, "mismatch_count": len(mismatches), "mismatches": mismatches,
        "by_dtype": by_dtype, "determinism": {"checked": checked, "nondeterministic": len(nondet), "cases": nondet},
        "max_length": max((c.length for c in cases[:run]), default=0),
        "max_d_state": max((c.d_state for c in cases[:run]), default=0),
        "wall_s": round(time.perf_counter() - start, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fuzz.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "fuzz.md").write_text(_markdown(result))
    print(_markdown(result))
    return 0 if not mismatches and not nondet else 1


if __name__ == "__main__":
    sys.exit(main())
