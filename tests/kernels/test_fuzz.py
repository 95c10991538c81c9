"""Property-based fuzzing of the selective scan (hypothesis) against the float64 loop oracle, per-op determinism,
and a smoke run of the `python -m mambasuite.kernels.fuzz` sweep.

On CPU the Triton kernels run in Triton's interpreter (seconds per call), so the Triton property is bounded to 25
small examples; the reference is fast and gets more. Examples are derandomised so CI sees the same cases every
run; the random sweep on the GPU (`mambasuite.kernels.fuzz`) supplies the breadth.
"""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mambasuite.kernels import causal_conv1d, selective_scan
from mambasuite.kernels.fuzz import DTYPES, FORMS, LAYOUTS, SCALE_FLOOR, TOLERANCE, ScanCase, main, make_scan_inputs
from scan_oracle import selective_scan_loop

F64 = torch.float64
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@st.composite
def scan_cases(draw, max_length: int, max_dim: int, dtypes=tuple(DTYPES)) -> ScanCase:
    """A small ScanCase: L from 1 (odd sizes, across the 64-step tile), N from 1 to 256, every form/option."""
    length = draw(st.integers(1, max_length))
    dim = draw(st.integers(1, max_dim))
    d_state = draw(st.sampled_from([1, 2, 3, 5, 8, 16])) if length > 4 else draw(st.sampled_from([1, 7, 64, 256]))
    dtype = draw(st.sampled_from(dtypes))
    return ScanCase(
        seed=draw(st.integers(0, 2 ** 31 - 1)), batch=draw(st.integers(1, 2)), dim=dim, length=length,
        d_state=d_state, b_form=draw(st.sampled_from(FORMS)), c_form=draw(st.sampled_from(FORMS)),
        groups=draw(st.sampled_from([g for g in range(1, dim + 1) if dim % g == 0])), dtype=dtype,
        bc_dtype=draw(st.sampled_from([dtype, "float32"])), has_D=draw(st.booleans()), has_z=draw(st.booleans()),
        has_delta_bias=draw(st.booleans()), has_initial_state=draw(st.booleans()),
        delta_softplus=draw(st.booleans()), reverse=draw(st.booleans()), with_dlast=draw(st.booleans()),
        layout=draw(st.sampled_from(LAYOUTS)),
    )


def _check_against_oracle(case: ScanCase, backend: str) -> None:
    inputs = {k: v for k, v in make_scan_inputs(case, DEVICE).items() if v is not None}
    ours = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    ref = {k: v.detach().to(F64).requires_grad_() for k, v in inputs.items()}
    out, last = selective_scan(**ours, delta_softplus=case.delta_softplus, return_last_state=True,
                               reverse=case.reverse, backend=backend)
    ref_out, ref_last = selective_scan_loop(**ref, delta_softplus=case.delta_softplus, return_last_state=True,
                                            reverse=case.reverse)
    assert out.shape == ref_out.shape and out.dtype == inputs["u"].dtype
    assert last.shape == (case.batch, case.dim, case.d_state)
    g = torch.Generator().manual_seed(case.seed)
    w = torch.randn(out.shape, generator=g, dtype=F64).to(DEVICE)
    wl = torch.randn(last.shape, generator=g, dtype=F64).to(DEVICE) if case.with_dlast else None
    ((out.to(F64) * w).sum() + ((last.to(F64) * wl).sum() if wl is not None else 0)).backward()
    ((ref_out * w).sum() + ((ref_last * wl).sum() if wl is not None else 0)).backward()

    def err(a, b):
        assert torch.isfinite(a).all()
        return ((a.to(F64) - b).abs().max() / b.abs().max().clamp_min(SCALE_FLOOR)).item()

    errors = {"out": err(out, ref_out), "last_state": err(last, ref_last)}
    errors.update({f"d{k}": err(ours[k].grad, ref[k].grad) for k in inputs})
    tol = TOLERANCE[case.dtype]
    bad = {k: v for k, v in errors.items() if v > tol}
    assert not bad, f"{case}: errors above {tol}: {bad}"


@pytest.mark.slow
@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=scan_cases(max_length=70, max_dim=6))
def test_triton_scan_matches_float64_oracle(case):
    pytest.importorskip("triton")
    _check_against_oracle(case, "triton")


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=scan_cases(max_length=150, max_dim=10))
def test_reference_scan_matches_float64_oracle(case):
    _check_against_oracle(case, "reference")


def _scan_grads(backend: str, case: ScanCase) -> list[torch.Tensor]:
    inputs = {k: v.detach().clone().requires_grad_() for k, v in make_scan_inputs(case, DEVICE).items()
              if v is not None}
    selective_scan(**inputs, delta_softplus=True, backend=backend).float().pow(2).sum().backward()
    return [inputs[k].grad for k in sorted(inputs)]


_DET_CASE = ScanCase(seed=3, batch=2, dim=8, length=70, d_state=4, b_form="grouped", c_form="variable", groups=2,
                     dtype="float32", bc_dtype="float32", has_D=True, has_z=True, has_delta_bias=True,
                     has_initial_state=True, delta_softplus=True, reverse=False, with_dlast=False,
                     layout="contiguous")


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_backward_is_bitwise_reproducible_under_torch_deterministic_flag(backend):
    """What `--trainer.deterministic=true` sets (torch.use_deterministic_algorithms) reaches every scan backend."""
    if backend == "triton":
        pytest.importorskip("triton")
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = [_scan_grads(backend, _DET_CASE) for _ in range(3)]
    finally:
        torch.use_deterministic_algorithms(before)
    assert all(torch.equal(a, b) for run in runs[1:] for a, b in zip(runs[0], run))


def test_causal_conv1d_backward_is_bitwise_reproducible():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        grads = []
        for _ in range(3):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(2, 6, 37, generator=g).to(DEVICE).requires_grad_()
            w = torch.randn(6, 4, generator=g).to(DEVICE).requires_grad_()
            b = torch.randn(6, generator=g).to(DEVICE).requires_grad_()
            causal_conv1d(x, w, b, "silu").square().sum().backward()
            grads.append((x.grad, w.grad, b.grad))
    finally:
        torch.use_deterministic_algorithms(before)
    assert all(torch.equal(a, b) for other in grads[1:] for a, b in zip(grads[0], other))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_deterministic_mode_on_gpu_large_grouped():
    """Many channel tiles add into the same dB/dC slots: atomics would reorder, the deterministic path must not."""
    case = dataclass_replace(_DET_CASE, batch=2, dim=1024, length=8192, d_state=16, groups=4)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = [_scan_grads("triton", case) for _ in range(3)]
    finally:
        torch.use_deterministic_algorithms(before)
    assert all(torch.equal(a, b) for run in runs[1:] for a, b in zip(runs[0], run))


def dataclass_replace(case: ScanCase, **changes) -> ScanCase:
    import dataclasses

    return dataclasses.replace(case, **changes)


def test_trainer_deterministic_flag_reaches_the_triton_backward(monkeypatch, tmp_path):
    """`mamba-suite fit --trainer.deterministic=true` with the Triton backend runs the deterministic backward."""
    pytest.importorskip("triton")
    import sys
    from pathlib import Path

    import mambasuite.kernels.triton.selective_scan as triton_scan
    from mambasuite.core import cli

    seen = []
    original = triton_scan.deterministic_mode
    monkeypatch.setattr(triton_scan, "deterministic_mode", lambda: seen.append(original()) or seen[-1])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mamba-suite"])
    config = Path(__file__).resolve().parents[2] / "configs/core/selective_copying.yaml"
    assert cli.main(["fit", "-c", str(config), "--trainer.deterministic=true", "--trainer.max_steps=1",
                     "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
                     "--model.init_args.backend=triton", "--model.init_args.d_model=8",
                     "--model.init_args.n_layer=1", "--data.init_args.seq_len=8", "--data.init_args.n_tokens=2",
                     "--data.init_args.n_train=4", "--data.init_args.n_val=4", "--data.init_args.batch_size=2"]) == 0
    assert seen and all(seen)


def test_fuzz_script_writes_well_formed_json(tmp_path):
    assert main(["--cases", "4", "--device", "cpu", "--backend", "reference", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "fuzz.json").read_text())
    assert result["cases_run"] == 4 and result["mismatch_count"] == 0 and result["mismatches"] == []
    assert set(result["by_dtype"]) <= set(DTYPES) and sum(r["cases"] for r in result["by_dtype"].values()) == 4
    assert (tmp_path / "fuzz.md").read_text().startswith("# Selective-scan fuzz")
    with pytest.raises(SystemExit):
        main(["--cases", "0", "--device", "cpu", "--out", str(tmp_path)])
