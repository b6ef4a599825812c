"""The VLM reward of a latent: latent → surface → views → critic → r, differentiable end to end.

This is the only place that knows how the pieces connect; the sampler sees a `LatentReward`,
the critic sees images, the renderer sees a mesh.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from .errors import EmptySurfaceError
from .guidance import GuidanceConfig
from .render import CameraJitter, Cameras, Renderer, orbit_cameras
from .sampler import RewardEvaluation
from .surface import SurfaceConfig, extract_surface


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
    """

    def __init__(
        self,
        vae: torch.nn.Module,
        critic: Any,
        *,
        num_views: int = 4,
        view_size: int = 448,
        elevation: float = 20.0,
        azimuth_jitter: float = 15.0,
        elevation_jitter: float = 5.0,
        grid_resolution: int = 64,
        backend: str = "auto",
        surface_config: SurfaceConfig | None = None,
    ):
        self.vae = vae
        self.critic = critic
        self.num_views = num_views
        self.view_size = view_size
        self.elevation = elevation
        self.jitter = (
            CameraJitter(azimuth_deg=azimuth_jitter, elevation_deg=elevation_jitter)
            if (azimuth_jitter or elevation_jitter)
            else None
        )
        self.surface_config = surface_config or SurfaceConfig(
            resolution=grid_resolution, coarse_resolution=coarse_resolution_for(grid_resolution)
        )
        self.renderer = Renderer(backend)

    @classmethod
    def from_config(cls, vae: torch.nn.Module, critic: Any, config: GuidanceConfig) -> "VLMReward":
        """The reward with the views, cameras, grid and backend a GuidanceConfig asks for."""
        return cls(
            vae,
            critic,
            num_views=config.num_views,
            view_size=config.view_size,
            elevation=config.elevation,
            azimuth_jitter=config.azimuth_jitter,
            elevation_jitter=config.elevation_jitter,
            grid_resolution=config.grid_resolution,
            backend=config.backend,
        )

    def cameras(self, *, generator: torch.Generator | None = None, jitter: bool = True, device: Any = None) -> Cameras:
        """The orbit cameras of one evaluation (jittered with `generator` unless `jitter=False`)."""
        return orbit_cameras(
            self.num_views,
            elevation_deg=self.elevation,
            image_size=self.view_size,
            jitter=self.jitter if jitter else None,
            generator=generator,
            device=device,
        )

    def __call__(self, latent: torch.Tensor, *, generator: torch.Generator | None = None) -> RewardEvaluation:
        """Evaluate r at a latent (1, L, C); r is differentiable w.r.t. `latent`.

        Raises EmptySurfaceError when the latent decodes to no surface.
        """
        timings: dict[str, float] = {}
        tic = time.perf_counter()
        vae_dtype = next(self.vae.parameters()).dtype
        surface = extract_surface(self.vae, latent.to(vae_dtype), self.surface_config)
        timings["surface"] = time.perf_counter() - tic

        tic = time.perf_counter()
        cameras = self.cameras(generator=generator, device=surface.vertices.device)
        views = self.renderer(surface.vertices.float(), surface.faces, cameras)
        timings["render"] = time.perf_counter() - tic

        tic = time.perf_counter()
        output = self.critic(views.images)
        timings["critic"] = time.perf_counter() - tic
        return RewardEvaluation(
            r=output.r.reshape(()),
            p_yes=float(output.p_yes.detach()),
            faces=int(surface.faces.shape[0]),
            images=views.images.detach(),
            timings=timings,
        )

    def to(self, device: torch.device | str) -> "VLMReward":
        """Move the critic's model (the only heavy part the reward owns) to `device`."""
        self.critic.model.to(device)
        return self

    @torch.no_grad()
    def score_mesh(self, vertices: np.ndarray, faces: np.ndarray) -> RewardEvaluation:
        """r of a finished mesh from the un-jittered cameras (no gradient)."""
        if len(faces) == 0:
            raise EmptySurfaceError("The mesh has no faces.")
        tic = time.perf_counter()
        device = next(self.vae.parameters()).device
        vertices_t = torch.as_tensor(np.asarray(vertices), dtype=torch.float32, device=device)
        faces_t = torch.as_tensor(np.asarray(faces, dtype=np.int64), device=device)
        views = self.renderer(vertices_t, faces_t, self.cameras(jitter=False, device=device))
        render_seconds = time.perf_counter() - tic
        tic = time.perf_counter()
        output = self.critic(views.images)
        return RewardEvaluation(
            r=output.r.reshape(()).detach(),
            p_yes=float(output.p_yes.detach()),
            faces=int(faces_t.shape[0]),
            images=views.images,
            timings={"render": render_seconds, "critic": time.perf_counter() - tic},
        )
