"""The reward of a latent: latent → surface → views → reward terms (the VLM critic first) → r, differentiable end to end.

This is the only place that knows how the pieces connect; the sampler sees a `LatentReward`,
a term sees renders, the critic sees images, the renderer sees a mesh.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Sequence

import numpy as np
import torch

from .backbones import Backbone, as_backbone
from .critic.protocol import Critic, check_critic_view_size
from .errors import EmptySurfaceError, InvalidInputError, SkippedStepError
from .guidance import GuidanceConfig, RewardEvaluation
from .precision import is_half
from .render import CameraJitter, Cameras, Renderer, orbit_cameras
from .surface import SurfaceConfig, extract_surface
from .terms import CriticTerm, RewardTerm, Views, weighted_sum

logger = logging.getLogger(__name__)

# Antialiasing blends can leave [0, 1] by a little (clamped before the critic); a render this far
# outside is broken shading, not rounding, and the step is skipped rather than clamped into sense.
RENDER_RANGE_TOLERANCE = 0.1


def coarse_resolution_for(resolution: int, finest_coarse: int = 32) -> int | None:
    """The first level of coarse-to-fine decoding for a grid: halve while > `finest_coarse`.

    None (a dense grid) when the resolution cannot be halved down to it (e.g. an odd size).
    """
    coarse = resolution
    while coarse > finest_coarse and coarse % 2 == 0:
        coarse //= 2
    return coarse if coarse < resolution else None


class VLMReward:
    """The reward of a latent: decode it through its backbone's occupancy field, render, score with reward terms.

    r = Σ w_k · term_k (`vlm3d_ttg.terms`). `critic` (a `critic.Critic`, e.g. `VLMCritic`) becomes
    the term "vlm" with weight 1 — the paper's reward, and the whole reward by default; `terms` adds
    (weight, term) pairs (a term with weight 0 is never evaluated; one with an `observe` method still
    watches, as an observer). `critic=None` is allowed only when `terms` has a non-zero weight.
    `observers` see every predicted shape the reward decodes from a latent (their `observe(vertices,
    faces)`, detached) without entering r: the silhouette term of a weight-0 run fixes its camera on
    the first guided x̂ this way (and in a run that guides nothing, on the x̂ the sampler shows them,
    `observe`). `measure_mesh` is what the terms measure of the final mesh besides r. Orbit cameras are re-drawn
    with jitter at every call (against reward hacking); `score_mesh` and `score_latent` use the
    un-jittered cameras, so final scores are comparable.

    `backbone` (a `backbones.Backbone`, or a model one wraps such as a loaded hy3dgen pipeline)
    decodes the latent: its `occupancy_field`, surface level and cube. Precision
    (`vlm3d_ttg.precision`): the backbone decodes in at least float32 (`decode_dtype`; Hunyuan3D-2
    with a float32 copy of a half-precision VAE) so the implicit-function weights neither overflow
    nor underflow; renders are float32 and clamped into [0, 1] before any term.
    Faults in the chain (no surface, a non-finite or broken render, a non-finite term) raise
    `SkippedStepError`/`EmptySurfaceError` for the sampler to skip and record the step.
    """

    def __init__(
        self,
        backbone: Backbone | Any,
        critic: Critic | None,
        config: GuidanceConfig | None = None,
        *,
        terms: Sequence[tuple[float, RewardTerm]] = (),
        observers: Sequence[Any] = (),
        surface_config: SurfaceConfig | None = None,
    ):
        if critic is not None and not callable(critic):  # the API checks what the CLI checks
            raise InvalidInputError(f"VLMReward's critic must be a critic (e.g. vlm3d_ttg.VLMCritic) or None, got "
                                    f"{type(critic).__name__}.")
        config = (config or GuidanceConfig()).validate()
        if critic is not None:
            check_critic_view_size(critic, config.view_size)  # the critic's own rule (28 or 32 px, ...)
        self.terms = _checked_terms(critic, terms)
        # A weight-0 term that watches shapes (its `observe`) is measured without being followed.
        self.observers = list(observers) + [term for weight, term in terms if weight == 0 and hasattr(term, "observe")]
        self.backbone = as_backbone(backbone)
        self.critic = critic
        # Views, cameras, grid and backend come from the config: declared once, in GuidanceConfig.
        self.num_views = config.num_views
        self.render_size = config.view_size
        if config.view_layout == "grid":
            # The critic tiles the views into one view_size image: render them at their cell's side
            # so that they are placed, not resampled (VLMCritic(layout="grid", grid_size=view_size)).
            from .critic.layout import square_cell_tile

            self.render_size = square_cell_tile(config.num_views, config.view_size)[2]
        self.elevation = config.elevation
        self.jitter = (
            CameraJitter(azimuth_deg=config.azimuth_jitter, elevation_deg=config.elevation_jitter)
            if (config.azimuth_jitter or config.elevation_jitter)
            else None
        )
        grid = config.grid_resolution
        self.surface_config = surface_config or SurfaceConfig(
            resolution=grid, coarse_resolution=coarse_resolution_for(grid), bounds=self.backbone.bounds,
            level=self.backbone.level)
        self.renderer = Renderer(config.backend)

    @classmethod
    def from_config(
        cls, backbone: Backbone | Any, critic: Critic | None, config: GuidanceConfig,
        *, terms: Sequence[tuple[float, RewardTerm]] = (), observers: Sequence[Any] = (),
    ) -> "VLMReward":
        """The reward with the views, cameras, grid and backend a GuidanceConfig asks for (= the constructor)."""
        return cls(backbone, critic, config, terms=terms, observers=observers)

    @property
    def decode_dtype(self) -> torch.dtype:
        """The dtype the guidance decode runs in (the backbone's)."""
        return self.backbone.decode_dtype

    def cameras(self, *, generator: torch.Generator | None = None, jitter: bool = True, device: Any = None) -> Cameras:
        """The orbit cameras of one evaluation (jittered with `generator` unless `jitter=False`)."""
        return orbit_cameras(
            self.num_views,
            elevation_deg=self.elevation,
            image_size=self.render_size,
            jitter=self.jitter if jitter else None,
            generator=generator,
            device=device,
        )

    def __call__(
        self, latent: torch.Tensor, *, generator: torch.Generator | None = None, jitter: bool = True
    ) -> RewardEvaluation:
        """Evaluate r at a latent (1, L, C); r is differentiable w.r.t. `latent`.

        `jitter=False` renders from the fixed cameras (as `score_mesh` does). Raises
        EmptySurfaceError when the latent decodes to no surface.
        """
        timings: dict[str, float] = {}
        tic = time.perf_counter()
        surface = extract_surface(self.backbone.occupancy_field(latent), self.surface_config)
        timings["surface"] = time.perf_counter() - tic
        for observer in self.observers:
            observer.observe(surface.vertices.detach().float(), surface.faces)
        orbit = self.cameras(generator=generator, jitter=jitter, device=surface.vertices.device)
        return self.evaluate(surface.vertices.float(), surface.faces, orbit, timings)

    def evaluate(
        self, vertices: torch.Tensor, faces: torch.Tensor, orbit: Cameras, timings: dict[str, float] | None = None
    ) -> RewardEvaluation:
        """Render the mesh through every camera set the terms ask for (once per distinct set), then
        r = Σ w_k · term_k. Gradients flow to whatever `vertices` depend on."""
        timings = {} if timings is None else timings
        rendered: dict[int, Views] = {}  # by id() of the camera set: terms sharing cameras share renders
        values: list[tuple[float, torch.Tensor]] = []
        terms: dict[str, float] = {}
        info: dict[str, Any] = {"faces": int(faces.shape[0])}
        for weight, term in self.terms:
            observe = getattr(term, "observe", None)  # optional: see the (detached) mesh before choosing cameras
            if observe is not None:
                observe(vertices.detach(), faces)
            cameras = term.cameras(orbit)
            if id(cameras) not in rendered:
                tic = time.perf_counter()
                result = self.renderer(vertices, faces, cameras)
                rendered[id(cameras)] = Views(checked_render(result.images), result.masks, cameras)
                timings["render"] = timings.get("render", 0.0) + time.perf_counter() - tic
            tic = time.perf_counter()
            outcome = term(rendered[id(cameras)])
            timings[_timing_key(term.name)] = time.perf_counter() - tic
            value = outcome.value.reshape(())
            if not math.isfinite(float(value.detach())):
                raise SkippedStepError("non_finite_reward", f"The reward term {term.name!r} is {float(value.detach())}.")
            values.append((weight, value))
            terms[term.name] = float(value.detach())
            info.update({f"{term.name}.{part}": number for part, number in outcome.parts.items()})
        orbit_views = rendered.get(id(orbit))
        return RewardEvaluation(
            r=weighted_sum(values),
            p_yes=info.get("vlm.p_yes"),
            images=orbit_views.images.detach() if orbit_views is not None else None,
            info=info,
            timings=timings,
            terms=terms,
        )

    @torch.no_grad()
    def observe(self, latent: torch.Tensor) -> None:
        """Show the observers the predicted shape of `latent` without scoring it (a run that guides nothing:
        `sampler.ObserveHook`). Raises EmptySurfaceError when it has no surface."""
        surface = extract_surface(self.backbone.occupancy_field(latent), self.surface_config)
        for observer in self.observers:
            observer.observe(surface.vertices.detach().float(), surface.faces)

    def end_of_step(self, step: int, sigma: float) -> None:
        """A sampler step ended: terms and observers that note it (an optional `end_of_step(step, σ)`) hear it."""
        for watcher in [term for _, term in self.terms] + self.observers:
            note = getattr(watcher, "end_of_step", None)
            if note is not None:
                note(step, sigma)

    def measure_mesh(self, vertices: np.ndarray, faces: np.ndarray, frame: np.ndarray) -> dict[str, float]:
        """What the terms and observers measure of the exported mesh besides r (an optional
        `measure_final(vertices, faces, frame)`, e.g. the silhouette term's IoU), keyed "name.measure";
        `frame` is the backbone's `export_frame` (exported-mesh frame → decode frame)."""
        measures: dict[str, float] = {}
        for watcher in [term for _, term in self.terms] + self.observers:
            measure = getattr(watcher, "measure_final", None)
            if measure is not None:
                measures.update({f"{watcher.name}.{key}": value for key, value in measure(vertices, faces, frame).items()})
        return measures

    @property
    def half_backward(self) -> bool:
        """Whether a float16 backward is on this reward's gradient path (then the sampler loss-scales)."""
        return is_half(self.decode_dtype) or any(
            is_half(parameter.dtype) for module in self.offload_modules() for parameter in module.parameters()
        )

    def offload_modules(self) -> list[torch.nn.Module]:
        """The heavy models this reward's terms run, for `vlm3d_ttg.offload.IdleOffload` (the critic's)."""
        return [module for _, term in self.terms for module in term.modules()]

    @torch.no_grad()
    def score_latent(self, latent: torch.Tensor) -> RewardEvaluation:
        """r at a latent from the un-jittered cameras, forward only (how candidate search ranks x̂)."""
        return self(latent, jitter=False)

    @torch.no_grad()
    def score_mesh(self, vertices: np.ndarray, faces: np.ndarray) -> RewardEvaluation:
        """r of a finished mesh from the un-jittered cameras (no gradient)."""
        if len(faces) == 0:
            raise EmptySurfaceError("The mesh has no faces.")
        if not np.isfinite(np.asarray(vertices, dtype=np.float64)).all():
            raise InvalidInputError("The mesh has non-finite (NaN or infinite) vertex coordinates; it cannot be scored.")
        device = self.backbone.device
        vertices_t = torch.as_tensor(np.asarray(vertices), dtype=torch.float32, device=device)
        faces_t = torch.as_tensor(np.asarray(faces, dtype=np.int64), device=device)
        evaluation = self.evaluate(vertices_t, faces_t, self.cameras(jitter=False, device=device))
        evaluation.r = evaluation.r.detach()
        return evaluation


def _timing_key(term_name: str) -> str:
    # The VLM term's time keeps its historical name in step records and benchmarks.
    return "critic" if term_name == "vlm" else f"term.{term_name}"


def _checked_terms(critic: Critic | None, terms: Sequence[tuple[float, RewardTerm]]) -> list[tuple[float, RewardTerm]]:
    """(weight, term) pairs with the critic first, weight-0 terms dropped; InvalidInputError for a bad list."""
    pairs: list[tuple[float, RewardTerm]] = [(1.0, CriticTerm(critic))] if critic is not None else []
    for item in terms:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise InvalidInputError(f"terms must be (weight, term) pairs, got {item!r}")
        weight, term = item
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise InvalidInputError(f"The weight of reward term {getattr(term, 'name', term)!r} must be a finite number, got {weight!r}")
        if not isinstance(term, RewardTerm):
            raise InvalidInputError(
                f"{type(term).__name__} is not a reward term: it needs `name`, `cameras(orbit)`, `__call__(views)` "
                "and `modules()` (see vlm3d_ttg.terms)."
            )
        if weight != 0:
            pairs.append((float(weight), term))
    names = [term.name for _, term in pairs]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"Reward term names must be unique, got {names}")
    if not pairs:
        raise InvalidInputError("The reward has nothing to score: give a critic or a reward term with a non-zero weight.")
    return pairs


def checked_render(images: torch.Tensor) -> torch.Tensor:
    """Renders clamped into [0, 1] for the critic; raise SkippedStepError if they are not finite or
    lie further than RENDER_RANGE_TOLERANCE outside [0, 1].

    The clamp passes gradients wherever it does not bind (antialiased pixels a few ulps outside).
    """
    with torch.no_grad():
        low, high = (float(value) for value in torch.aminmax(images.detach()))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise SkippedStepError("non_finite_render", "The rendered views contain NaN or infinite values.")
    if low < -RENDER_RANGE_TOLERANCE or high > 1 + RENDER_RANGE_TOLERANCE:
        raise SkippedStepError(
            "render_out_of_range", f"The rendered views span [{low:.3g}, {high:.3g}], far outside [0, 1]."
        )
    return images.clamp(0.0, 1.0)
