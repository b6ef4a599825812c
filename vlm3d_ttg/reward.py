"""The VLM reward of a latent: latent → surface → views → critic → r, differentiable end to end.

This is the only place that knows how the pieces connect; the sampler sees a `LatentReward`,
the critic sees images, the renderer sees a mesh.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch

from .errors import EmptySurfaceError, InvalidInputError, SkippedStepError
from .guidance import GuidanceConfig, RewardEvaluation
from .precision import decode_dtype, is_half, upcast_copy
from .render import CameraJitter, Cameras, Renderer, orbit_cameras
from .surface import SurfaceConfig, extract_surface

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
    """r_VLM of a Hunyuan3D-2 latent: decode with the pipeline's ShapeVAE, render orbit views, ask the critic.

    `critic` is a `vlm3d_ttg.VLMCritic` (or anything mapping images (N,3,H,W) in [0,1] to an
    output with `.r` and `.p_yes`). Cameras are re-drawn with jitter at every call (against
    reward hacking); `score_mesh` uses the un-jittered cameras, so final scores are comparable.

    Precision (`vlm3d_ttg.precision`): the guidance decode runs in at least float32 — a float32
    copy of a half-precision VAE is made once — so the implicit-function weights neither overflow
    nor underflow; renders are float32 and clamped into [0, 1] before the critic.
    Faults in the chain (no surface, a non-finite or broken render, a non-finite critic answer)
    raise `SkippedStepError`/`EmptySurfaceError` for the sampler to skip and record the step.
    """

    def __init__(
        self,
        vae: torch.nn.Module,
        critic: Any,
        config: GuidanceConfig | None = None,
        *,
        surface_config: SurfaceConfig | None = None,
    ):
        if not isinstance(vae, torch.nn.Module) or not callable(critic):  # the API checks what the CLI checks
            raise InvalidInputError("VLMReward needs the pipeline's ShapeVAE (a torch module) and a critic (e.g. "
                                    f"vlm3d_ttg.VLMCritic); got {type(vae).__name__} and {type(critic).__name__}.")
        config = (config or GuidanceConfig()).validate()
        self.vae = vae
        vae_dtype = next(vae.parameters()).dtype
        self.decode_dtype = decode_dtype(vae_dtype)
        if self.decode_dtype != vae_dtype:
            # The pipeline keeps its half-precision VAE for the export; guidance decodes with a copy.
            self.decode_vae = upcast_copy(vae, self.decode_dtype)
            logger.info("Guidance decodes with a %s copy of the %s ShapeVAE", self.decode_dtype, vae_dtype)
        else:
            self.decode_vae = vae
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
        self.surface_config = surface_config or SurfaceConfig(resolution=grid, coarse_resolution=coarse_resolution_for(grid))
        self.renderer = Renderer(config.backend)

    @classmethod
    def from_config(cls, vae: torch.nn.Module, critic: Any, config: GuidanceConfig) -> "VLMReward":
        """The reward with the views, cameras, grid and backend a GuidanceConfig asks for (= the constructor)."""
        return cls(vae, critic, config)

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
        surface = extract_surface(self.decode_vae, latent.to(self.decode_dtype), self.surface_config)
        timings["surface"] = time.perf_counter() - tic

        tic = time.perf_counter()
        cameras = self.cameras(generator=generator, jitter=jitter, device=surface.vertices.device)
        views = self.renderer(surface.vertices.float(), surface.faces, cameras)
        images = checked_render(views.images)
        timings["render"] = time.perf_counter() - tic

        tic = time.perf_counter()
        output = self.critic(images)
        timings["critic"] = time.perf_counter() - tic
        r = output.r.reshape(())
        if not math.isfinite(float(r.detach())):
            raise SkippedStepError("non_finite_critic", f"The critic's log-odds r is {float(r.detach())}.")
        return RewardEvaluation(
            r=r,
            p_yes=float(output.p_yes.detach()),
            images=images.detach(),
            info={"faces": int(surface.faces.shape[0])},
            timings=timings,
        )

    @property
    def half_backward(self) -> bool:
        """Whether a float16 backward is on this reward's gradient path (then the sampler loss-scales)."""
        return is_half(self.decode_dtype) or is_half(next(self.critic.model.parameters()).dtype)

    def offload_modules(self) -> list[torch.nn.Module]:
        """The heavy models this reward owns, for `vlm3d_ttg.offload.IdleOffload` (the critic's)."""
        return [self.critic.model]

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
        tic = time.perf_counter()
        device = next(self.vae.parameters()).device
        vertices_t = torch.as_tensor(np.asarray(vertices), dtype=torch.float32, device=device)
        faces_t = torch.as_tensor(np.asarray(faces, dtype=np.int64), device=device)
        views = self.renderer(vertices_t, faces_t, self.cameras(jitter=False, device=device))
        images = checked_render(views.images)
        render_seconds = time.perf_counter() - tic
        tic = time.perf_counter()
        output = self.critic(images)
        return RewardEvaluation(
            r=output.r.reshape(()).detach(),
            p_yes=float(output.p_yes.detach()),
            images=images,
            info={"faces": int(faces_t.shape[0])},
            timings={"render": render_seconds, "critic": time.perf_counter() - tic},
        )


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
