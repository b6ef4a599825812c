"""Guidance configuration and the small pure functions of the guided step.

Conventions (hy3dgen 2.0.2, docs/design.md §2): σ runs from 0 (noise) to 1 (data); the Euler step is
x_next = x + (σ_next − σ)·v; the predicted clean latent is x̂ = x + (1 − σ)·v. The guided step
adds a displacement `d` built from g = ∇ r (r = the critic's Yes/No log-odds) after the
sampler's own step: x_next = Sampler(x, σ) + d  (paper eq. 10).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from .errors import InvalidInputError

StepNorm = Literal["raw", "latent_rms", "sampler_step"]
Schedule = Literal["constant", "linear_decay"]
GradMode = Literal["x0", "xt"]
QUERIES = ("dual", "content", "geometry")


@dataclass
class GuidanceConfig:
    """Everything that decides where and how hard the critic's gradient pushes the latent.

    Defaults and why. The numbers are the λ sweep on the tiny models (20 seeds, mean gain of the
    final mesh's r over the unguided run on the same seed; benchmarks/RESULTS.md). Tiny models
    check the mechanics, not what is best for the real ones; where the tiny sweep cannot speak
    (reward hacking, real geometry), the literature starting points of docs/design.md §1 decide.
    - `step_norm="latent_rms"`, `scale` 0.03: the step is 3% of the latent's RMS whatever the
      scale of the log-odds. Gain +0.038 at 0.01, +0.063 at 0.03, +0.065 at 0.1: it saturates
      from 0.03 on because the cap binds. Raw steps (the paper's λ·∇r) at λ=1 gained +0.026 and
      lost on 1/20 seeds: their size follows r's scale, which differs per model and prompt.
    - `max_step_ratio` 1.0: guidance never moves the latent further than the sampler's own step.
      A 3× cap gained more on the tiny models (+0.085) and no cap lost a seed and doubled the
      spread; the tiny critic cannot show reward hacking, so the conservative cap stays.
    - `sigma_window` (0.2, 0.85), `every` 2: early x̂ is a blob and late guidance invites
      high-frequency hacks (docs/design.md §1). Every step gained +0.076 vs +0.060 at twice the critic
      cost; the full window +0.074; a linear decay less (+0.048).
    - `inner_steps` 1: two gained +0.075 at twice the cost per guided step.
    - `grad_mode` "x0": straight-through ∇_x̂ r, no backward through the DiT ("xt" is exact but
      costs a DiT backward with the CFG batch and gained +0.057 vs +0.060 on the tiny models).
    - 4 views at 448 px with ±15° azimuth / ±5° elevation jitter: ≥ 4 views and fresh cameras at
      every step work against reward hacking (jitter cost nothing measurable on the tiny models:
      +0.063 with, +0.059 without); 448 = 16·28 needs no resampling in the critic.
    - `grid_resolution` 64: coarse-to-fine from 32³; the guidance mesh only has to be good enough
      to render the critic's views, the export uses hy3dgen's 384³.
    """

    enabled: bool = True
    scale: float = 0.03
    step_norm: StepNorm = "latent_rms"
    max_step_ratio: float | None = 1.0
    schedule: Schedule = "constant"
    sigma_window: tuple[float, float] = (0.2, 0.85)
    every: int = 2
    inner_steps: int = 1
    grad_mode: GradMode = "x0"
    num_views: int = 4
    view_size: int = 448
    elevation: float = 20.0
    azimuth_jitter: float = 15.0
    elevation_jitter: float = 5.0
    grid_resolution: int = 64
    query: str = "dual"
    backend: str = "auto"

    def validate(self) -> "GuidanceConfig":
        """Raise InvalidInputError naming the first bad field; return self."""
        def bad(msg: str) -> None:
            raise InvalidInputError(f"Invalid guidance option: {msg}")

        if not math.isfinite(self.scale) or self.scale < 0:
            bad(f"scale (λ) must be a finite number ≥ 0, got {self.scale}")
        if self.step_norm not in ("raw", "latent_rms", "sampler_step"):
            bad(f"step_norm must be raw, latent_rms or sampler_step, got {self.step_norm!r}")
        if self.max_step_ratio is not None and not (self.max_step_ratio > 0):
            bad(f"max_step_ratio must be > 0 or None, got {self.max_step_ratio}")
        if self.schedule not in ("constant", "linear_decay"):
            bad(f"schedule must be constant or linear_decay, got {self.schedule!r}")
        lo, hi = self.sigma_window
        if not (0.0 <= lo <= hi <= 1.0):
            bad(f"sigma_window must satisfy 0 ≤ lo ≤ hi ≤ 1, got {self.sigma_window}")
        if self.every < 1:
            bad(f"every must be ≥ 1, got {self.every}")
        if self.inner_steps < 1:
            bad(f"inner_steps must be ≥ 1, got {self.inner_steps}")
        if self.grad_mode not in ("x0", "xt"):
            bad(f"grad_mode must be x0 or xt, got {self.grad_mode!r}")
        if self.num_views < 1:
            bad(f"num_views must be ≥ 1, got {self.num_views}")
        if self.view_size < 28 or self.view_size % 28:
            bad(f"view_size must be a positive multiple of 28 (Qwen2.5-VL's patch 14 × merge 2), got {self.view_size}")
        if self.grid_resolution < 16:
            bad(f"grid_resolution must be ≥ 16, got {self.grid_resolution}")
        if self.query not in QUERIES and "{description}" not in self.query:
            bad(f"query must be one of {QUERIES} or a template containing '{{description}}', got {self.query!r}")
        if self.azimuth_jitter < 0 or self.elevation_jitter < 0:
            bad("camera jitter must be ≥ 0")
        return self

    def to_dict(self) -> dict:
        """A JSON-ready copy (for manifests)."""
        return dataclasses.asdict(self)


def parse_sigma_window(text: str) -> tuple[float, float]:
    """A σ window from the command line: 'LO,HI' (e.g. '0.2,0.85')."""
    try:
        lo, hi = (float(part) for part in text.split(","))
    except ValueError:
        raise InvalidInputError(f"--sigma-window takes 'LO,HI' (e.g. 0.2,0.85), got {text!r}") from None
    return lo, hi


def guided_steps(sigmas: list[float], config: GuidanceConfig) -> list[int]:
    """Indices of the sampler steps that get guidance: σ inside the window, then every k-th.

    `sigmas[i]` is the σ at which step i evaluates the model, `sigmas[i + 1]` where its Euler
    step lands (the scheduler appends σ = 1). A step of zero length (hy3dgen's last one,
    σ = 1 → 1) is never guided: the cap relative to the sampler's step would make it a no-op.
    """
    if not config.enabled or config.scale == 0:
        return []
    lo, hi = config.sigma_window
    in_window = [
        i for i in range(len(sigmas) - 1) if lo <= sigmas[i] <= hi and sigmas[i + 1] > sigmas[i]
    ]
    return in_window[:: config.every]


def schedule_weight(sigma: float, config: GuidanceConfig) -> float:
    """The schedule's multiplier of λ at σ: 1 (constant) or decaying linearly to 0 across the window."""
    if config.schedule == "constant":
        return 1.0
    lo, hi = config.sigma_window
    if hi <= lo:
        return 1.0
    return float(min(1.0, max(0.0, (hi - sigma) / (hi - lo))))


def rms(x: torch.Tensor) -> torch.Tensor:
    """Root mean square over all elements, in float32."""
    return x.float().pow(2).mean().sqrt()


def guidance_displacement(
    gradient: torch.Tensor,
    *,
    predicted_clean_latent: torch.Tensor,
    sampler_step: torch.Tensor,
    scale: float,
    step_norm: StepNorm,
    max_step_ratio: float | None,
) -> tuple[torch.Tensor, bool]:
    """The latent displacement d for a reward gradient g; returns (d, capped).

    raw:          d = λ · g                                   (the paper)
    latent_rms:   d = λ · RMS(x̂) · g / RMS(g)                  (scale-free in r)
    sampler_step: d = λ · ‖Δx‖ · g / ‖g‖                       (relative to the sampler's step Δx)
    then, if `max_step_ratio` is set, ‖d‖ ≤ max_step_ratio · ‖Δx‖.
    """
    g = gradient.float()
    if step_norm == "raw":
        d = scale * g
    elif step_norm == "latent_rms":
        d = scale * rms(predicted_clean_latent) * g / rms(g).clamp_min(1e-30)
    elif step_norm == "sampler_step":
        d = scale * sampler_step.float().norm() * g / g.norm().clamp_min(1e-30)
    else:
        raise InvalidInputError(f"unknown step_norm {step_norm!r}")
    capped = False
    if max_step_ratio is not None:
        limit = max_step_ratio * sampler_step.float().norm()
        norm = d.norm()
        if norm > limit:
            d = d * (limit / norm.clamp_min(1e-30))
            capped = True
    return d.to(gradient.dtype), capped


@dataclass
class StepRecord:
    """What happened at one sampler step (one entry of the manifest's per-step records)."""

    step: int
    sigma: float
    guided: bool
    r: float | None = None
    p_yes: float | None = None
    grad_norm: float | None = None
    applied_norm: float | None = None
    sampler_step_norm: float | None = None
    capped: bool = False
    skipped: str | None = None  # why the step applied no guidance (see errors.SkippedStepError)
    loss_scale: float | None = None  # the loss scale of a half-precision backward (None: unscaled)
    faces: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    inner: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        """A JSON-ready copy."""
        return dataclasses.asdict(self)
