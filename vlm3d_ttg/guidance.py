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
from typing import Any, Literal, Protocol

import torch

from .errors import InvalidInputError, SkippedStepError
from .options import Checks, option
from .speed import Speed, describe_speeds, speed_knobs

StepNorm = Literal["raw", "latent_rms", "sampler_step"]
Schedule = Literal["constant", "linear_decay"]
GradMode = Literal["x0", "xt"]
ViewLayout = Literal["separate", "grid"]  # the values of critic.layout.VIEW_LAYOUTS
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
    - `silhouette_weight` 0: the paper's reward, the critic alone (vlm3d_ttg.silhouette; RESULTS.md).
    - `reference` off, `view_layout` "separate": the paper's reference-free critic, one image per
      view. The reference image costs one more image in the critic's prompt (+256 tokens at 448 px);
      the grid cuts the views' tokens N-fold at 1/√N of their resolution (README, RESULTS.md).
    - `reuse_displacement` 0, `stop_r` None: the cheaper-guidance knobs (issue 28) are off, so a
      default run is today's. Reuse adds a fraction of the last guided displacement at the steps
      `every` skips; the stop rule ends guidance once r reached a level. Neither calls the critic.
    """

    enabled: bool = option(True, "Guide with the critic; --no-guidance is the unguided baseline on the same seed.",
                           flag="--guidance", negative="--no-guidance")
    speed: Speed = option("quality", "Speed preset: a set of the knobs below, chosen on the cost–effect map (RESULTS, "
                          f"'Speed presets'): {describe_speeds()}. Knobs given as flags override it.")
    scale: float = option(0.03, "Guidance strength λ (its unit depends on --step-norm).", aliases=("--lambda",), minimum=0)
    step_norm: StepNorm = option("latent_rms", "raw (λ·∇r, the paper), latent_rms or sampler_step (scale-free).")
    max_step_ratio: float | None = option(
        1.0, "Cap on the guidance step relative to the sampler's own step (0: no cap).",
        parse=lambda value: None if value == 0 else value, show=lambda value: 0.0 if value is None else value,
        above=0, note="None: no cap")
    schedule: Schedule = option("constant", "constant, or linear_decay across the σ window.")
    sigma_window: tuple[float, float] = option(
        (0.2, 0.85), "Guide only for σ in LO,HI (σ: 0 noise → 1 data).",
        parse=lambda text: parse_sigma_window(text), show=lambda window: f"{window[0]:g},{window[1]:g}", cli_type=str)
    every: int = option(2, "Guide every k-th step inside the window.", minimum=1)
    inner_steps: int = option(1, "Gradient steps per guided sampler step.", minimum=1, maximum=16, why="the default is 1")
    grad_mode: GradMode = option("x0", "x0 (straight-through, default) or xt (through the DiT, exact, slower).")
    num_views: int = option(4, "Views rendered for the critic.", flag="--views", minimum=1, maximum=16,
                            why="the paper uses 4")
    view_size: int = option(448, "View side in pixels: a multiple of the critic's patch × merge (28 for Qwen2.5-VL, "
                                 "32 for Qwen3-VL; 448 suits both).", minimum=28, maximum=1792,
                            why="4× the default 448 per side; Qwen2.5-VL reads 28-px cells, 4096 of them per view at 1792")
    elevation: float = option(20.0, "Camera elevation in degrees.", above=-90, below=90, note="degrees")
    azimuth_jitter: float = option(15.0, "Per-step random azimuth offset (±degrees).", minimum=0, maximum=180, note="degrees")
    elevation_jitter: float = option(5.0, "Per-step random elevation offset (±degrees).", minimum=0, below=90, note="degrees")
    grid_resolution: int = option(64, "Occupancy grid for guidance (32 · 2^k, or ≤ 32).", flag="--grid", minimum=16,
                                  maximum=512, why="8× the default 64 per side")
    query: str = option("dual", "dual (the paper's), content, geometry, or a template with {description}.")
    reference: bool = option(
        False, "Show the critic the conditioning image before the views (the built-in queries name it the reference).",
        flag="--critic-reference", negative="--no-critic-reference")
    view_layout: ViewLayout = option(
        "separate", "separate (one image per view) or grid (all views tiled into one view-size image: ~N× fewer critic tokens).")
    backend: str = option("auto", "Renderer: auto, cpu or nvdiffrast.", flag="--render-backend")
    silhouette_weight: float = option(
        0.0, "Weight μ of the input-silhouette term: soft IoU of the shape's coverage at the input's (estimated) "
        "camera with the input's foreground (0: off; the IoU is measured either way).", minimum=0)
    reuse_displacement: float = option(
        0.0, "At the unguided steps inside the σ window (those --every skips), add this fraction of the last guided "
        "step's displacement (no critic call; capped by --max-step-ratio at that step; 0: off).",
        minimum=0, maximum=1, note="0: off")
    stop_r: float | None = option(
        None, "Stop guiding for the rest of the run after the first guided step whose r (the critic's log-odds) is "
        "≥ this; the remaining guided steps cost no critic call (0: never; in Python None is never and any "
        "finite number, 0 included, is a threshold).", flag="--stop-at-r",
        parse=lambda value: None if value == 0 else value, show=lambda value: 0.0 if value is None else value,
        cli_type=float, note="None: never")

    @classmethod
    def for_speed(cls, speed: str, **knobs: Any) -> "GuidanceConfig":
        """The options of speed preset `speed` (vlm3d_ttg.speed.SPEEDS), with `knobs` (field values) over them."""
        return cls(**{**speed_knobs(speed), **knobs, "speed": speed})

    def validate(self, critic_family: str | None = None) -> "GuidanceConfig":
        """Raise InvalidInputError naming the first bad field and what it accepts; return self.

        The one validation path of guidance options (CLI, benchmark and Python callers alike), run
        before any model loads: the declared kinds, choices and ranges (vlm3d_ttg.options), then the
        rules no single range says: the view size for the critic, the σ window, the renderer, the
        grid layout and the query template. The view size must suit `critic_family` (a
        `critic.families` name) — without one, some family; the reward checks it against its critic again.
        """
        check = Checks(self, "Invalid guidance option")
        self._check_view_size(check, critic_family)
        check.declared()
        window = self.sigma_window
        if not (isinstance(window, (tuple, list)) and len(window) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in window)):
            check.bad(f"sigma_window must be two numbers (lo, hi), got {window!r}")
        if not (0.0 <= window[0] < window[1] <= 1.0):
            check.bad(f"sigma_window must satisfy 0 ≤ lo < hi ≤ 1 (a window of zero width guides nothing), got {window}")
        if self.backend not in ("auto", "cpu", "nvdiffrast"):
            check.bad(f"backend must be auto, cpu or nvdiffrast, got {self.backend!r}")
        self._check_layout_and_query(check)
        return self

    def _check_view_size(self, check: Checks, critic_family: str | None) -> None:
        """A whole view size that is no multiple of the critic's cell (other kinds: `Checks.declared`)."""
        from .critic.families import FAMILIES, get_family

        size = self.view_size
        families = [get_family(critic_family)] if critic_family is not None else list(FAMILIES.values())
        if isinstance(size, int) and not isinstance(size, bool) and (size < 1 or all(size % f.view_multiple for f in families)):
            rules = " or ".join(f"{family.view_multiple} ({family.name}'s patch × merge)" for family in families)
            check.bad(f"view_size must be a positive multiple of {rules}, got {size}")

    def _check_layout_and_query(self, check: Checks) -> None:
        """The grid layout fits the views; the query is a built-in one or a template the critic accepts."""
        from .critic.layout import square_cell_tile
        from .critic.queries import resolve_query  # the critic's own template check

        if self.view_layout == "grid":
            try:
                square_cell_tile(self.num_views, self.view_size)
            except InvalidInputError as exc:
                check.bad(f"view_layout grid: {exc}")
        if not isinstance(self.query, str):
            check.bad(f"query must be a string, got {self.query!r}")
        if self.query not in QUERIES and "{description}" not in self.query:
            check.bad(f"query must be one of {QUERIES} or a template containing '{{description}}', got {self.query!r}")
        try:
            resolve_query(self.query)  # a user template: the critic's own checks, now rather than after loading
        except InvalidInputError as exc:
            check.bad(f"query: {exc}")

    @property
    def active(self) -> bool:
        """Whether the critic's gradient can move the latent at all: enabled with λ > 0 (the one rule)."""
        return self.enabled and self.scale > 0

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
    if not config.active:
        return []
    return window_steps(sigmas, config)[:: config.every]


def window_steps(sigmas: list[float], config: GuidanceConfig) -> list[int]:
    """Indices of the sampler steps inside the σ window (of nonzero length): `guided_steps` takes every k-th,
    `reuse_displacement` acts at the others."""
    lo, hi = config.sigma_window
    return [i for i in range(len(sigmas) - 1) if lo <= sigmas[i] <= hi and sigmas[i + 1] > sigmas[i]]


def schedule_weight(sigma: float, config: GuidanceConfig) -> float:
    """The schedule's multiplier of λ at σ: 1 (constant) or decaying linearly to 0 across the window."""
    if config.schedule == "constant":
        return 1.0
    lo, hi = config.sigma_window
    if hi <= lo:
        return 1.0
    return float(min(1.0, max(0.0, (hi - sigma) / (hi - lo))))


def rms(x: torch.Tensor) -> torch.Tensor:
    """Root mean square over all elements (in float32 at least)."""
    return x.to(torch.promote_types(x.dtype, torch.float32)).pow(2).mean().sqrt()


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

    Computed as a length times the unit direction g/‖g‖, in float64, so that neither a huge λ nor
    a huge or tiny gradient overflows into "no guidance": a cap that binds moves the latent by
    exactly the cap. Raises SkippedStepError('non_finite_step') when the uncapped length is not
    finite (e.g. an enormous λ with no cap).
    """
    g = gradient.double()
    g_norm = float(torch.linalg.vector_norm(g))
    if g_norm == 0.0:
        return torch.zeros_like(gradient, dtype=torch.float32), False
    step_length = float(torch.linalg.vector_norm(sampler_step, dtype=torch.float64))
    if step_norm == "raw":
        length = scale * g_norm
    elif step_norm == "latent_rms":
        # ‖λ · RMS(x̂) · g / RMS(g)‖ = λ · RMS(x̂) · √n
        length = scale * float(rms(predicted_clean_latent.double())) * math.sqrt(g.numel())
    elif step_norm == "sampler_step":
        length = scale * step_length
    else:
        raise InvalidInputError(f"unknown step_norm {step_norm!r}")
    capped = False
    if max_step_ratio is not None and length > max_step_ratio * step_length:
        length, capped = max_step_ratio * step_length, True
    if not math.isfinite(length):
        raise SkippedStepError(
            "non_finite_step", f"the guidance step's length is {length} (λ = {scale:g} with no cap); lower λ or set a cap"
        )
    return (g * (length / g_norm)).float(), capped


def reused_displacement(displacement: torch.Tensor, sampler_step: torch.Tensor, fraction: float,
                        max_step_ratio: float | None) -> tuple[torch.Tensor, bool]:
    """`fraction` × an earlier guided step's displacement for a step that is not guided; returns (d, capped).

    The cap is this step's: with `max_step_ratio` set, ‖d‖ ≤ max_step_ratio · ‖Δx‖ for this step's sampler
    step Δx (rescaled down when longer), as a guided step's own displacement is (guidance_displacement).
    """
    reused = displacement.double() * fraction
    length = float(torch.linalg.vector_norm(reused))
    if max_step_ratio is not None:
        limit = max_step_ratio * float(torch.linalg.vector_norm(sampler_step, dtype=torch.float64))
        if length > limit:
            return (reused * (limit / length)).float(), True
    return reused.float(), False


def predicted_clean_latent(latents: torch.Tensor, velocity: torch.Tensor, sigma: float) -> torch.Tensor:
    """x̂ = x + (1 − σ)·v: where the straight flow from x ends at σ = 1 (data)."""
    return latents + (1.0 - sigma) * velocity


@dataclass(frozen=True)
class GuidedStep:
    """What one guided step did: the next latents, the displacement added, and whether it was capped."""

    next_latents: torch.Tensor
    displacement: torch.Tensor  # float32
    capped: bool


def guided_step(
    latents: torch.Tensor,
    sampler_next: torch.Tensor,
    velocity: torch.Tensor,
    sigma: float,
    reward_gradient: torch.Tensor,
    config: GuidanceConfig,
) -> GuidedStep:
    """Paper eq. 10: x_next = Sampler(x, σ) + d, with d built from g = ∇r (see guidance_displacement).

    `sampler_next` is the sampler's own step from `latents` (hy3dgen's scheduler: x + (σ_next − σ)·v,
    computed by the scheduler so that an unguided run stays bit-identical to hy3dgen's);
    `velocity` is the DiT's velocity at `latents`; λ is `config.scale` times the schedule's weight
    at σ.
    """
    displacement, capped = guidance_displacement(
        reward_gradient,
        predicted_clean_latent=predicted_clean_latent(latents.float(), velocity.float(), sigma),
        sampler_step=sampler_next.float() - latents.float(),
        scale=config.scale * schedule_weight(sigma, config),
        step_norm=config.step_norm,
        max_step_ratio=config.max_step_ratio,
    )
    displacement = displacement.float()
    return GuidedStep(sampler_next + displacement.to(sampler_next.dtype), displacement, capped)


@dataclass
class RewardEvaluation:
    """One evaluation of a latent (or a mesh): `r` is differentiable w.r.t. the latent it was given.

    `r` is the reward guidance follows: the weighted sum of the reward's terms (`vlm3d_ttg.terms`;
    by default the VLM critic's log-odds alone). `terms` holds each term's own (unweighted) value,
    `p_yes` the VLM critic's P(yes) when a critic term ran (else None). `images` (N, 3, H, W,
    detached) are the orbit views the critic saw; `info` holds facts that go into the step's record
    as they are (e.g. the guidance mesh's face count, each term's named parts as "term.part").
    """

    r: torch.Tensor
    p_yes: float | None
    images: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    terms: dict[str, float] = field(default_factory=dict)


class LatentReward(Protocol):
    """Everything the sampler and search call on a reward: a differentiable score of a latent.

    Raise `errors.SkippedStepError` (or `EmptySurfaceError`) for a latent that cannot be scored;
    the sampler skips that step and records why. `vlm3d_ttg.reward.VLMReward` is the implementation
    (surface → renders → weighted reward terms); tests use small analytic ones.
    """

    def __call__(self, latent: torch.Tensor, *, generator: torch.Generator | None = None) -> RewardEvaluation:
        """r at a latent (1, L, C), differentiable w.r.t. it; cameras jittered from `generator`."""
        ...

    def score_latent(self, latent: torch.Tensor) -> RewardEvaluation:
        """r at a latent from fixed (un-jittered) cameras, forward only: how candidate search ranks x̂."""
        ...

    def score_mesh(self, vertices: Any, faces: Any) -> RewardEvaluation:
        """r of a finished mesh from fixed cameras (no gradient): final scores and final candidate choice."""
        ...

    def offload_modules(self) -> list[torch.nn.Module]:
        """The heavy models this reward runs (what `--offload-idle` moves between phases)."""
        ...

    @property
    def half_backward(self) -> bool:
        """Whether a float16 backward lies on this reward's gradient path (the sampler then loss-scales)."""
        ...


class LatentFunctionReward:
    """A base for rewards that are plain functions of the latent (no renders, no models).

    Subclasses define `__call__(latent, *, generator=None) -> RewardEvaluation`; the rest of
    `LatentReward` follows: a forward-only `score_latent`, nothing to offload, no half-precision
    backward. `score_mesh` is for rewards that can also judge a finished mesh (search's final
    choice among several survivors); this base cannot.
    """

    def __call__(self, latent: torch.Tensor, *, generator: torch.Generator | None = None) -> RewardEvaluation:
        """r at a latent, differentiable w.r.t. it."""
        raise NotImplementedError

    def score_latent(self, latent: torch.Tensor) -> RewardEvaluation:
        """r at a latent, forward only."""
        with torch.no_grad():
            return self(latent)

    def score_mesh(self, vertices: Any, faces: Any) -> RewardEvaluation:
        """Not available for a function of the latent: raises UnsupportedModelError."""
        from .errors import UnsupportedModelError

        raise UnsupportedModelError(f"{type(self).__name__} scores latents, not meshes.")

    def offload_modules(self) -> list[torch.nn.Module]:
        """No models."""
        return []

    @property
    def half_backward(self) -> bool:
        """Whatever precision the latent has, no float16 model lies on the path."""
        return False


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
    # A step `every` skipped that added `reuse_displacement` × the last guided displacement: its norm, the
    # step it came from, whether --max-step-ratio rescaled it (None: nothing reused). Not a guided step.
    reused: dict[str, Any] | None = None
    stopped: bool = False  # a planned guided step left unguided because --stop-at-r was reached (no critic call)
    loss_scale: float | None = None  # the loss scale of a half-precision backward (None: unscaled)
    reward_info: dict[str, Any] = field(default_factory=dict)  # RewardEvaluation.info (e.g. faces)
    terms: dict[str, float] = field(default_factory=dict)  # each reward term's value (r is their weighted sum)
    timings: dict[str, float] = field(default_factory=dict)
    inner: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        """A JSON-ready copy. `reused` and `stopped` appear only where set (the cheaper-guidance knobs' marks),
        so a run without those knobs records what it always did."""
        record = dataclasses.asdict(self)
        for key in ("reused", "stopped"):
            if not record[key]:
                del record[key]
        return record
