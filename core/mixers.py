"""Sequence mixers built on the selective-scan kernels: `Mamba`, `BiMamba` and `SS2D`.

Every mixer maps channel-last activations to the same shape -- (batch, L, d_model) for the 1D mixers,
(batch, H, W, d_model) for `SS2D` -- and takes `backend` ("auto" | "reference" | "triton" |
"mamba_ssm"), which is passed unchanged to every kernel call.

Parameter names follow the checkpoints they have to load: `Mamba` uses mamba-ssm's names, the
internal `BiMamba` uses Vim's "bimamba v2" names (`conv1d_b`, `A_b_log`, ...), the external `BiMamba`
uses Caduceus' `mamba_fwd`/`mamba_rev`, and `SS2D` stores its four directions stacked like VMamba.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..kernels import BACKENDS, bidirectional_scan, causal_conv1d, cross_scan_2d, selective_scan, to_route_order

__all__ = ["BiMamba", "Mamba", "SS2D"]


# ----------------------------------------------------------------------------------------------
# Validation at the public boundary (also used by core.blocks).
# ----------------------------------------------------------------------------------------------

def _shape_str(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def check_positive_int(name: str, value) -> int:
    """Return `value` if it is a positive int (bools are rejected), else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_choice(name: str, value, allowed: tuple) -> str:
    """Return `value` if it is one of `allowed`, else raise ValueError naming the allowed values."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_channel_last(x: torch.Tensor, d_model: int, owner: str, layout: str = "(batch, L, d_model)") -> None:
    """Raise ValueError unless `x` is a tensor of rank len(layout) whose last dim is d_model."""
    rank = layout.count(",") + 1
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner}: input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != rank or x.shape[-1] != d_model:
        expected = layout.replace("d_model", f"d_model={d_model}")
        raise ValueError(f"{owner}: input must have shape {expected}, got {_shape_str(x)}")


def _resolve_dt_rank(dt_rank, d_model: int) -> int:
    if dt_rank == "auto":
        return math.ceil(d_model / 16)
    if isinstance(dt_rank, str):
        raise ValueError(f"dt_rank must be 'auto' or a positive int, got {dt_rank!r}")
    return check_positive_int("dt_rank", dt_rank)


def _check_dt_init(dt_min: float, dt_max: float, dt_init: str, dt_scale: float, dt_init_floor: float) -> None:
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"dt_min and dt_max must satisfy 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    check_choice("dt_init", dt_init, ("random", "constant"))
    if not dt_scale > 0:
        raise ValueError(f"dt_scale must be > 0, got {dt_scale!r}")
    if not dt_init_floor >= 0:
        raise ValueError(f"dt_init_floor must be >= 0, got {dt_init_floor!r}")


# ----------------------------------------------------------------------------------------------
# mamba-ssm initialisation pieces.
# ----------------------------------------------------------------------------------------------

def _inverse_softplus_dt(n: int, dt_min: float, dt_max: float, dt_init_floor: float) -> torch.Tensor:
    """(n,) biases b with softplus(b) = dt, dt log-uniform in [dt_min, dt_max] and >= dt_init_floor."""
    log_dt = torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
    dt = torch.exp(log_dt).clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))  # inverse of softplus, stable for small dt


def _s4d_real_A_log(n_rows: int, d_state: int) -> torch.Tensor:
    """(n_rows, d_state) fp32 log(1..N) per row: S4D-real init, A = -exp(A_log) = -(1..N)."""
    return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(n_rows, 1).contiguous()


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """fp32 copy of low-precision parameters (the kernels want fp32 A/D/bias); float64 stays float64."""
    return t if t.dtype == torch.float64 else t.float()


# ----------------------------------------------------------------------------------------------
# The per-direction SSM branch shared by Mamba and BiMamba.
# ----------------------------------------------------------------------------------------------

class _SSMBranches(nn.Module):
    """Base of the 1D mixers: owns per-direction SSM branches and runs them (the one scan call site).

    A branch is depthwise causal conv1d + SiLU -> x_proj -> dt_proj -> selective scan with A, D and
    the z gate. Its parameters are registered flat on the mixer under mamba-ssm names plus a
    direction suffix -- `conv1d{s}`, `x_proj{s}`, `dt_proj{s}`, `A{s}_log`, `D{s}` -- so that the
    suffix "" gives mamba-ssm's keys and "_b" gives Vim's (`conv1d_b`, `A_b_log`, `D_b`, ...). A child
    module per direction would nest the keys (`fwd.conv1d.weight`) and break that correspondence.

    In LTI mode (`selective=False`) delta, B and C do not depend on the input: the branch holds
    `dt_bias{s}` (d_inner,), `B{s}` and `C{s}` (d_inner, N) instead of x_proj/dt_proj.

    `capture` is an optional analytics hook (used by `core.analytics`); see `_call_capture`.
    """

    capture = None  # None: no analytics, nothing extra is computed

    def _setup_ssm(self, d_model: int, d_state: int, d_conv: int, expand: int, dt_rank, *, selective: bool,
                   dt_min: float, dt_max: float, dt_init: str, dt_scale: float, dt_init_floor: float,
                   conv_bias: bool, backend: str) -> None:
        self.d_model = check_positive_int("d_model", d_model)
        self.d_state = check_positive_int("d_state", d_state)
        self.d_conv = check_positive_int("d_conv", d_conv)
        if not 2 <= d_conv <= 4:
            raise ValueError(f"d_conv must be in 2..4 (the causal_conv1d kernels' widths), got {d_conv}")
        self.expand = check_positive_int("expand", expand)
        self.d_inner = expand * d_model
        self.dt_rank = _resolve_dt_rank(dt_rank, d_model)
        _check_dt_init(dt_min, dt_max, dt_init, dt_scale, dt_init_floor)
        self.selective = bool(selective)
        self.backend = check_choice("backend", backend, BACKENDS)
        self._dt_init_args = dict(dt_min=dt_min, dt_max=dt_max, dt_init=dt_init, dt_scale=dt_scale,
                                  dt_init_floor=dt_init_floor)
        self._conv_bias = conv_bias

    def _add_ssm_branch(self, s: str) -> None:
        """Create the parameters of one direction, named with suffix `s`, with mamba-ssm's init."""
        e, n, r = self.d_inner, self.d_state, self.dt_rank
        dt = self._dt_init_args
        self.add_module(f"conv1d{s}", nn.Conv1d(e, e, self.d_conv, groups=e, padding=self.d_conv - 1,
                                                bias=self._conv_bias))
        if self.selective:
            self.add_module(f"x_proj{s}", nn.Linear(e, r + 2 * n, bias=False))
            dt_proj = nn.Linear(r, e, bias=True)
            std = r ** -0.5 * dt["dt_scale"]
            with torch.no_grad():
                if dt["dt_init"] == "constant":
                    dt_proj.weight.fill_(std)
                else:
                    dt_proj.weight.uniform_(-std, std)
                dt_proj.bias.copy_(_inverse_softplus_dt(e, dt["dt_min"], dt["dt_max"], dt["dt_init_floor"]))
            dt_proj.bias._no_reinit = True  # the LM init zeroes Linear biases; not this one
            self.add_module(f"dt_proj{s}", dt_proj)
        else:
            # LTI ablation: one learned step per channel (same dt init) and time-invariant B, C.
            dt_bias = nn.Parameter(_inverse_softplus_dt(e, dt["dt_min"], dt["dt_max"], dt["dt_init_floor"]))
            dt_bias._no_weight_decay = True
            self.register_parameter(f"dt_bias{s}", dt_bias)
            # Our choice (mamba-ssm has no LTI mode): B = 1 and C ~ N(0, 1/N), so that y = C.h keeps
            # the scale of h as N grows.
            self.register_parameter(f"B{s}", nn.Parameter(torch.ones(e, n)))
            self.register_parameter(f"C{s}", nn.Parameter(torch.randn(e, n) * n ** -0.5))
        A_log = nn.Parameter(_s4d_real_A_log(e, n))
        A_log._no_weight_decay = True
        self.register_parameter(f"A{s}_log", A_log)
        D = nn.Parameter(torch.ones(e))
        D._no_weight_decay = True
        self.register_parameter(f"D{s}", D)

    def _branch_inputs(self, x: torch.Tensor, s: str, reverse: bool) -> dict[str, torch.Tensor | None]:
        """Direction `s`'s scan inputs from x (batch, d_inner, L): conv + SiLU -> u, x_proj/dt_proj -> delta, B, C,
        plus A, D and delta_bias (fp32), keyed like `selective_scan`'s arguments.

        reverse=True makes the conv anti-causal (the scan then runs from the end): the same result as flipping
        x, running the forward branch, and flipping back -- without the copies.
        """
        length = x.shape[-1]
        conv = getattr(self, f"conv1d{s}")
        # `backend` selects the conv's kernel as well as the scan's ("mamba_ssm" = causal-conv1d's CUDA conv).
        x = causal_conv1d(x, rearrange(conv.weight, "d 1 w -> d w"), conv.bias, activation="silu",
                          reverse=reverse, backend=self.backend)
        if self.selective:
            x_dbl = getattr(self, f"x_proj{s}")(rearrange(x, "b d l -> (b l) d"))  # (b*l, R + 2N)
            dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
            dt_proj = getattr(self, f"dt_proj{s}")
            # dt_proj's bias enters the scan as delta_bias (added before the softplus, in fp32).
            delta = rearrange(dt_proj.weight @ dt.t(), "d (b l) -> b d l", l=length)
            B = rearrange(B, "(b l) n -> b n l", l=length).contiguous()
            C = rearrange(C, "(b l) n -> b n l", l=length).contiguous()
            delta_bias = dt_proj.bias
        else:
            delta = torch.zeros_like(x)  # softplus(0 + dt_bias): a per-channel, input-independent step
            B, C = getattr(self, f"B{s}"), getattr(self, f"C{s}")
            delta_bias = getattr(self, f"dt_bias{s}")
        return dict(u=x, delta=delta, A=-torch.exp(_at_least_fp32(getattr(self, f"A{s}_log"))), B=B, C=C,
                    D=_at_least_fp32(getattr(self, f"D{s}")), delta_bias=_at_least_fp32(delta_bias))

    def _ssm_branch(self, x: torch.Tensor, z: torch.Tensor | None, s: str, reverse: bool) -> torch.Tensor:
        """Run direction `s`: x, z (batch, d_inner, L) -> gated scan output (batch, d_inner, L)."""
        inputs = self._branch_inputs(x, s, reverse)
        out = selective_scan(**inputs, z=z, delta_softplus=True, return_last_state=self.capture is not None,
                             reverse=reverse, backend=self.backend)
        if self.capture is None:
            return out
        out, last_state = out
        _call_capture(self, "rev" if reverse else "fwd", inputs["delta"], inputs["delta_bias"], inputs["A"], z,
                      last_state)
        return out

    def _in_proj_xz(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, L, d_model) -> x, z each (batch, d_inner, L), with L contiguous (the kernels' layout)."""
        length = hidden_states.shape[1]
        xz = rearrange(self.in_proj.weight @ rearrange(hidden_states, "b l d -> d (b l)"),
                       "d (b l) -> b d l", l=length)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(xz.dtype)[:, None]
        return xz.chunk(2, dim=1)


class Mamba(_SSMBranches):
    """Mamba-1 mixer (Gu & Dao 2023), with mamba-ssm's parameter names and initialisation.

    in_proj (d_model -> 2*d_inner: x and z) -> depthwise causal conv1d (d_conv) + SiLU -> x_proj
    (d_inner -> dt_rank + 2*d_state) -> dt_proj (dt_rank -> d_inner) -> selective scan (softplus delta,
    dt_proj.bias as delta_bias, D skip, z gate) -> out_proj (d_inner -> d_model). d_inner = expand * d_model.

    Args:
        d_model: model width; d_state: SSM state size N; d_conv: conv width (2..4); expand: d_inner / d_model.
        dt_rank: rank of the delta projection; "auto" = ceil(d_model / 16).
        selective: False gives the LTI ablation: delta, B and C are learned parameters that do not
            depend on the input (`dt_bias` (d_inner,), `B`, `C` (d_inner, N)); no x_proj/dt_proj exist.
        reverse: run anti-causally (output t depends on inputs t..L-1), via the kernels' reverse mode.
        dt_min, dt_max, dt_init, dt_scale, dt_init_floor: mamba-ssm's delta init (log-uniform dt in
            [dt_min, dt_max], floored; dt_proj.weight uniform(+-dt_scale / sqrt(dt_rank)) or constant).
        conv_bias: bias of the conv; bias: biases of in_proj/out_proj.
        backend: selective-scan backend ("auto" | "reference" | "triton" | "mamba_ssm").

    Shapes: forward (batch, L, d_model) -> (batch, L, d_model), in the input's dtype.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", *, selective: bool = True, reverse: bool = False,
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_init: str = "random", dt_scale: float = 1.0,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False,
                 backend: str = "auto") -> None:
        super().__init__()
        self._setup_ssm(d_model, d_state, d_conv, expand, dt_rank, selective=selective, dt_min=dt_min,
                        dt_max=dt_max, dt_init=dt_init, dt_scale=dt_scale, dt_init_floor=dt_init_floor,
                        conv_bias=conv_bias, backend=backend)
        self.reverse = bool(reverse)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self._add_ssm_branch("")
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(batch, L, d_model) -> (batch, L, d_model)."""
        check_channel_last(hidden_states, self.d_model, type(self).__name__)
        x, z = self._in_proj_xz(hidden_states)
        y = self._ssm_branch(x, z, "", reverse=self.reverse)
        return self.out_proj(rearrange(y, "b d l -> b l d"))


class BiMamba(_SSMBranches):
    """Bidirectional Mamba mixer: one class covering Vim v2, Caduceus BiMamba and ExtBiMamba.

    variant="internal" (Vim "bimamba v2", Caduceus, speech InnBiMamba): one in_proj producing x and z,
    one out_proj, and two SSM branches with separate conv1d / x_proj / dt_proj / A_log / D. The
    reverse branch runs anti-causally (kernels' reverse mode, no flips). Both branches are gated by
    the same z. Parameter names are Vim's: `in_proj`, `conv1d`/`conv1d_b`, `x_proj`/`x_proj_b`,
    `dt_proj`/`dt_proj_b`, `A_log`/`A_b_log`, `D`/`D_b`, `out_proj`. combine (y_f, y_b: branch outputs):
      "add":  out_proj(y_f + y_b)
      "mean": out_proj((y_f + y_b) / 2)              -- Vim v2 with if_divide_out=True
      "mul":  out_proj(y_f) * out_proj(y_b)
    variant="external" (speech ExtBiMamba; Caduceus' BiMambaWrapper layout): two full `Mamba` mixers,
    `mamba_fwd` and `mamba_rev` (reverse=True). combine "concat" (default here) concatenates their
    outputs and applies `out_proj`, a Linear(2*d_model -> d_model) with bias, as in ExtBiMamba;
    "add" / "mean" / "mul" combine the two outputs directly. share_projections=True ties
    mamba_rev.in_proj / out_proj to mamba_fwd's (same Parameter objects).

    How the published models map here:
      * Vim v2: internal, combine="mean". Vim flips xz for its backward path, so that path's z is the
        flipped z; after flipping back each position is gated by its own z, i.e. z is shared.
      * Caduceus BiMamba (bidirectional_weight_tie=True): the reverse Mamba runs on the flipped input
        with tied in_proj, so its z is flip(z) -- the same z after flipping back, as here. Its output
        fwd(x) + flip(rev(flip(x))) = out_proj(y_f) + out_proj(y_b) = out_proj(y_f + y_b) because
        out_proj is linear (and bias-free in every Caduceus config; with bias=True the internal "add"
        adds the bias once), so strategy "add" = internal "add" and "ew_multiply" = internal "mul".
        The key-for-key equivalent is variant="external", share_projections=True, which reproduces
        BiMambaWrapper's `mamba_fwd.*` / `mamba_rev.*` names (tied keys saved once); with
        share_projections=False it is bidirectional_weight_tie=False.
      * Speech ExtBiMamba: external, combine="concat" (its `output_proj` is our `out_proj`).

    Args: as `Mamba` (d_model, d_state, d_conv, expand, dt_rank, selective, dt_*, conv_bias, bias,
        backend), plus variant "internal" | "external", combine (None = "add" for internal, "concat"
        for external) and share_projections (external only; None = False).

    Shapes: forward (batch, L, d_model) -> (batch, L, d_model).
    """

    VARIANTS = ("internal", "external")
    COMBINES = {"internal": ("add", "mean", "mul"), "external": ("concat", "add", "mean", "mul")}

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", *, variant: str = "internal", combine: str | None = None,
                 share_projections: bool | None = None, selective: bool = True, dt_min: float = 1e-3,
                 dt_max: float = 0.1, dt_init: str = "random", dt_scale: float = 1.0,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False,
                 backend: str = "auto") -> None:
        super().__init__()
        self.variant = check_choice("variant", variant, self.VARIANTS)
        if combine is None:
            combine = "add" if variant == "internal" else "concat"
        self.combine = check_choice(f"combine (variant={variant!r})", combine, self.COMBINES[variant])
        ssm_args = dict(selective=selective, dt_min=dt_min, dt_max=dt_max, dt_init=dt_init, dt_scale=dt_scale,
                        dt_init_floor=dt_init_floor, conv_bias=conv_bias, backend=backend)
        if variant == "internal":
            if share_projections is False:
                raise ValueError("share_projections=False needs variant='external' (the internal variant "
                                 "always shares in_proj/out_proj between directions)")
            self._setup_ssm(d_model, d_state, d_conv, expand, dt_rank, **ssm_args)
            self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
            self._add_ssm_branch("")
            self._add_ssm_branch("_b")
            self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        else:
            self.d_model = check_positive_int("d_model", d_model)
            self.mamba_fwd = Mamba(d_model, d_state, d_conv, expand, dt_rank, reverse=False, bias=bias, **ssm_args)
            self.mamba_rev = Mamba(d_model, d_state, d_conv, expand, dt_rank, reverse=True, bias=bias, **ssm_args)
            if share_projections:
                # Module sharing: both names hold the same Parameters (Caduceus' weight tying).
                self.mamba_rev.in_proj = self.mamba_fwd.in_proj
                self.mamba_rev.out_proj = self.mamba_fwd.out_proj
            if combine == "concat":
                self.out_proj = nn.Linear(2 * d_model, d_model)
            for size in ("d_state", "d_conv", "expand", "d_inner", "dt_rank", "selective"):
                setattr(self, size, getattr(self.mamba_fwd, size))
        self.share_projections = variant == "internal" or bool(share_projections)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(batch, L, d_model) -> (batch, L, d_model)."""
        check_channel_last(hidden_states, self.d_model, type(self).__name__)
        if self.variant == "external":
            out_f, out_b = self.mamba_fwd(hidden_states), self.mamba_rev(hidden_states)
            if self.combine == "concat":
                return self.out_proj(torch.cat([out_f, out_b], dim=-1))
            return _combine(out_f, out_b, self.combine)
        x, z = self._in_proj_xz(hidden_states)
        if self.capture is not None:  # analytics need each direction's last state: one scan call per direction
            y_f = rearrange(self._ssm_branch(x, z, "", reverse=False), "b d l -> b l d")
            y_b = rearrange(self._ssm_branch(x, z, "_b", reverse=True), "b d l -> b l d")
            if self.combine == "mul":
                return self.out_proj(y_f) * self.out_proj(y_b)
            return self.out_proj(_combine(y_f, y_b, self.combine))
        fwd, rev = self._branch_inputs(x, "", reverse=False), self._branch_inputs(x, "_b", reverse=True)
        pairs = {name: (fwd[name], rev[name]) for name in fwd}
        # Both directions in one bidirectional scan (one launch on the Triton backend, no flipped copies).
        # "mul" multiplies the *projected* directions (out_proj is not linear in a product), so the scan returns
        # them stacked.
        y = bidirectional_scan(**pairs, z=z, combine="stack" if self.combine == "mul" else self.combine,
                               delta_softplus=True, backend=self.backend)
        if self.combine == "mul":
            return self.out_proj(rearrange(y[0], "b d l -> b l d")) * self.out_proj(rearrange(y[1], "b d l -> b l d"))
        return self.out_proj(rearrange(y, "b d l -> b l d"))


def _call_capture(mixer: nn.Module, branch: str, delta: torch.Tensor, delta_bias: torch.Tensor,
                  A: torch.Tensor, z: torch.Tensor | None, last_state: torch.Tensor) -> None:
    """Analytics hook point: hand one scan's selective quantities, detached, to `mixer.capture`.

    When a mixer's `capture` attribute is set to a callable (`core.analytics` does this on the steps it
    samples), each scan calls `capture(mixer, branch, delta=..., delta_bias=..., A=..., z=...,
    last_state=...)` with
        delta: (batch, d, L) the step *before* bias and softplus (Delta = softplus(delta + delta_bias));
        delta_bias: (d,) fp32;  A: (d, N) fp32 (negative);  z: (batch, d, L) gate input, or None;
        last_state: (batch, d, N) fp32, the scan's state after its last step (free: the kernels keep it).
    branch names the scan direction: "fwd" / "rev" for the 1D mixers, "row", "col", "row_rev", "col_rev"
    for SS2D (positions then run in that route's scan order). With `capture = None` (the default) the
    forward is unchanged.
    """
    mixer.capture(mixer, branch, delta=delta.detach(), delta_bias=delta_bias.detach(), A=A.detach(),
                  z=None if z is None else z.detach(), last_state=last_state.detach())


def _combine(a: torch.Tensor, b: torch.Tensor, how: str) -> torch.Tensor:
    if how == "add":
        return a + b
    if how == "mean":
        return (a + b) / 2
    return a * b


# ----------------------------------------------------------------------------------------------
# SS2D: VMamba's 2D selective scan.
# ----------------------------------------------------------------------------------------------

class SS2D(nn.Module):
    """VMamba's 2D selective-scan mixer (SS2D), defaults = VMamba v2 "v05_noz" (tiny).

    in_proj (d_model -> d_inner, or 2*d_inner with the z gate) -> depthwise d_conv x d_conv Conv2d ->
    SiLU -> four scans over the H*W tokens: k=0 row-major, k=1 column-major, k=2 row-major reversed,
    k=3 column-major reversed (the reversed routes use the kernels' reverse mode, no flips) -> undo
    the transposes and sum -> out_norm (LayerNorm(d_inner)) -> optional y * silu(z) -> out_proj.

    Per-direction parameters are stacked like VMamba's checkpoints: x_proj_weight (4, R + 2N, d_inner),
    dt_projs_weight (4, d_inner, R), dt_projs_bias (4, d_inner), A_logs (4*d_inner, N), Ds (4*d_inner).
    in_proj, conv2d, out_norm and out_proj are shared by the four directions.

    Args:
        d_model: channels; d_state: N (1 in VMamba v2, 16 in v0); ssm_ratio: d_inner = int(ssm_ratio * d_model).
        dt_rank: "auto" = ceil(d_model / 16), or a positive int.
        d_conv: odd kernel size of the depthwise conv; 1 disables the conv (VMamba's d_conv <= 1 rule).
        conv_bias: bias of the conv (False in v2, True in v0); gate: z branch (False = "_noz").
        bias: biases of in_proj/out_proj. dt_*: mamba-ssm's delta init. backend: kernel backend.
        fused_scan: run the four routes through `kernels.cross_scan_2d` (one launch, one column-major copy of the
            map instead of stacked route copies; the default) instead of two grouped scans over stacked route pairs.
            Measured on the H200 (BENCHMARKS.md, session 12, call 5): SS2D fwd+bwd at batch 64, ssm_ratio 2, bf16
            autocast, was 1.64 / 1.32 / 1.60 / 1.53x faster fused at d_model 96 / 192 / 384 / 768 on 56 / 28 / 14 / 7
            maps (N=1) and 1.09x at d_model 96, 56x56, N=16; on CPU (the reference path) the two take the same time.

    Shapes: forward (batch, H, W, d_model) -> (batch, H, W, d_model); H and W may differ.

    `capture` is the optional analytics hook of the 1D mixers (see `_call_capture`); the z gate acts
    after the merge, so captures carry z=None.
    """

    K = 4  # scan routes
    capture = None  # None: no analytics, nothing extra is computed

    def __init__(self, d_model: int, d_state: int = 1, ssm_ratio: float = 1.0, dt_rank: int | str = "auto",
                 d_conv: int = 3, *, conv_bias: bool = False, gate: bool = False, bias: bool = False,
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_init: str = "random", dt_scale: float = 1.0,
                 dt_init_floor: float = 1e-4, backend: str = "auto", fused_scan: bool = True) -> None:
        super().__init__()
        self.d_model = check_positive_int("d_model", d_model)
        self.d_state = check_positive_int("d_state", d_state)
        self.fused_scan = bool(fused_scan)
        if isinstance(ssm_ratio, bool) or not isinstance(ssm_ratio, (int, float)) or not ssm_ratio > 0:
            raise ValueError(f"ssm_ratio must be a positive number, got {ssm_ratio!r}")
        self.d_inner = int(ssm_ratio * d_model)
        if self.d_inner < 1:
            raise ValueError(f"ssm_ratio * d_model must be >= 1, got {ssm_ratio} * {d_model}")
        self.dt_rank = _resolve_dt_rank(dt_rank, d_model)
        if check_positive_int("d_conv", d_conv) % 2 == 0:
            raise ValueError(f"d_conv must be odd (a centred 2D kernel), got {d_conv}")
        _check_dt_init(dt_min, dt_max, dt_init, dt_scale, dt_init_floor)
        self.d_conv, self.gate = d_conv, bool(gate)
        self.backend = check_choice("backend", backend, BACKENDS)
        e, n, r, k = self.d_inner, self.d_state, self.dt_rank, self.K

        self.in_proj = nn.Linear(d_model, 2 * e if gate else e, bias=bias)
        self.conv2d = (nn.Conv2d(e, e, d_conv, padding=(d_conv - 1) // 2, groups=e, bias=conv_bias)
                       if d_conv > 1 else None)
        # Same init as K separate nn.Linear layers (uniform +-1/sqrt(fan_in)), stacked.
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, e).uniform_(-(e ** -0.5), e ** -0.5))
        std = r ** -0.5 * dt_scale
        dt_w = torch.full((k, e, r), std) if dt_init == "constant" else torch.empty(k, e, r).uniform_(-std, std)
        self.dt_projs_weight = nn.Parameter(dt_w)
        self.dt_projs_bias = nn.Parameter(_inverse_softplus_dt(k * e, dt_min, dt_max, dt_init_floor).view(k, e))
        self.A_logs = nn.Parameter(_s4d_real_A_log(k * e, n))
        self.Ds = nn.Parameter(torch.ones(k * e))
        self.A_logs._no_weight_decay = True
        self.Ds._no_weight_decay = True
        self.out_norm = nn.LayerNorm(e)
        self.out_proj = nn.Linear(e, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, H, W, d_model) -> (batch, H, W, d_model)."""
        check_channel_last(x, self.d_model, type(self).__name__, layout="(batch, H, W, d_model)")
        batch, height, width, _ = x.shape
        xz = self.in_proj(x)
        if self.gate:
            x, z = xz.chunk(2, dim=-1)
        else:
            x, z = xz, None
        x = rearrange(x, "b h w d -> b d h w")
        if self.conv2d is not None:
            x = self.conv2d(x)
        x = F.silu(x)
        # (b, d_inner, h, w): one fused 2D scan, or per-route-pair calls (also when analytics need the last states)
        y = self._cross_scan_merge(x) if self.fused_scan and self.capture is None else self._cross_scan_merge_pairs(x)
        y = self.out_norm(rearrange(y, "b d h w -> b h w d"))
        if z is not None:
            y = y * F.silu(z)
        return self.out_proj(y)

    def _cross_scan_merge(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, d_inner, H, W) -> sum of the four directional scans, (batch, d_inner, H, W), in x's dtype.

        x_proj and dt_proj act on each token alone, so every route's delta, B and C are computed at each pixel
        of the row-major map (the same values VMamba computes on its permuted copies). The small x_proj output
        (R + 2N channels per route) is put in route order, so that delta comes out of dt_proj in it with no copy
        of its own; `cross_scan_2d` reads x in each route's order and merges the routes in one pass.
        """
        batch, e, height, width = x.shape
        n, r = self.d_state, self.dt_rank
        u = x.reshape(batch, e, height * width)
        x_dbl = to_route_order(torch.einsum("bdl,kcd->bkcl", u, self.x_proj_weight), height)  # (b, 4, R + 2N, H*W)
        dts, Bs, Cs = torch.split(x_dbl, [r, n, n], dim=2)
        delta = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)  # (b, 4, d_inner, H*W)
        A = -torch.exp(_at_least_fp32(self.A_logs)).view(self.K, e, n)
        return cross_scan_2d(x, delta, A, Bs, Cs, _at_least_fp32(self.Ds).view(self.K, e),
                             _at_least_fp32(self.dt_projs_bias), delta_softplus=True, backend=self.backend)

    def _cross_scan_merge_pairs(self, x: torch.Tensor) -> torch.Tensor:
        """`_cross_scan_merge` through two grouped `selective_scan` calls over stacked route pairs (VMamba's
        layout); they also return the last states that `capture` hands to the analytics."""
        batch, e, height, width = x.shape
        n, r, length = self.d_state, self.dt_rank, height * width
        # Routes 0 and 1 (and their reversals 2 and 3) read the same two sequences.
        seqs = torch.stack([rearrange(x, "b d h w -> b d (h w)"), rearrange(x, "b d h w -> b d (w h)")], dim=1)
        A = -torch.exp(_at_least_fp32(self.A_logs)).view(self.K, e, n)
        Ds = _at_least_fp32(self.Ds).view(self.K, e)
        delta_bias = _at_least_fp32(self.dt_projs_bias)
        merged = None
        for ks, reverse in ((slice(0, 2), False), (slice(2, 4), True)):
            x_dbl = torch.einsum("bkdl,kcd->bkcl", seqs, self.x_proj_weight[ks])
            dts, Bs, Cs = torch.split(x_dbl, [r, n, n], dim=2)
            delta = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight[ks])
            ys = selective_scan(
                rearrange(seqs, "b k d l -> b (k d) l"), rearrange(delta, "b k d l -> b (k d) l"),
                rearrange(A[ks], "k d n -> (k d) n"), Bs.contiguous(), Cs.contiguous(),  # grouped: G = 2
                D=Ds[ks].reshape(-1), delta_bias=delta_bias[ks].reshape(-1), delta_softplus=True,
                return_last_state=self.capture is not None, reverse=reverse, backend=self.backend,
            )
            if self.capture is not None:
                ys, last_state = ys
                for j, route in enumerate(("row", "col")):
                    _call_capture(self, route + ("_rev" if reverse else ""), delta[:, j], delta_bias[ks][j],
                                  A[ks][j], None, last_state[:, j * e:(j + 1) * e])
            ys = ys.view(batch, 2, e, length)
            merged = ys if merged is None else merged + ys
        # Route pairs summed; bring the column-major pair back to row-major order and add.
        rows = rearrange(merged[:, 0], "b d (h w) -> b d h w", h=height)
        cols = rearrange(merged[:, 1], "b d (w h) -> b d h w", h=height)
        return rows + cols
