"""A second backbone that is not hy3dgen: a small pure-torch flow model with an analytic field.

It proves the backbone seam (`vlm3d_ttg.backbones.Backbone`): guided sampling, candidate search,
the reward (surface, renders, critic) and the manifest run on it unchanged. It is a real, if
trivial, generator, not a stand-in for hy3dgen, and it deliberately differs from hy3dgen where
generators differ (docs/design.md "Adding a backbone"):

- its own time runs from t = 1 (noise) to t = 0 (data), as in diffusers' rectified-flow
  schedulers; it reports σ = 1 − t and the velocity dx/dσ = −dx/dt to the loop;
- its CFG batch is ordered [uncond, cond] (diffusers' order; hy3dgen's is [cond, uncond]);
- its schedule has no zero-length final step (σ = linspace(0, 1, steps + 1));
- latents are 16 tokens × 4 channels.

The model: the condition is a target latent x₁ computed from the image (its mean colour and
coverage shift a fixed pattern); the conditional velocity points from x to x₁, the unconditional
one to 0, so the CFG velocity is v = w·x₁ − x and an Euler run ends at
x_T = w·x₁ + (1 − h)^T (x₀ − w·x₁) for T steps of length h. The occupancy field of a clean latent
is an ellipsoid whose three semi-axes are 0.5 + 0.2·tanh(token-mean of channels 0–2):
logits k·(1 − |p / a|), inside positive, level 0, in the cube ±1.01.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vlm3d_ttg.backbones import SINGLE_VIEW, SamplingContext
from vlm3d_ttg.errors import EmptySurfaceError, ModelNotFoundError
from vlm3d_ttg.images import composite_on_white, open_image
from vlm3d_ttg.reward import coarse_resolution_for
from vlm3d_ttg.surface import OccupancyField, SurfaceConfig, extract_surface_from_field

TOKENS, CHANNELS = 16, 4
FIELD_GAIN = 8.0


@dataclass
class AnalyticCondition:
    target: torch.Tensor  # x₁ (rows, TOKENS, CHANNELS)
    guidance_scale: float
    native_times: list[float]  # t = 1 (noise) → 0 (data), one per σ


def ellipsoid_logits(points: torch.Tensor, axes: torch.Tensor) -> torch.Tensor:
    """k·(1 − |p / a|): positive inside the ellipsoid with semi-axes `axes` (3,)."""
    return FIELD_GAIN * (1.0 - (points / axes.to(points.dtype)).norm(dim=-1))


class AnalyticBackbone:
    """The analytic flow model of this module behind the Backbone protocol."""

    name = "analytic"
    views = SINGLE_VIEW
    bounds = 1.01
    level = 0.0
    device = torch.device("cpu")
    dtype = torch.float32
    decode_dtype = torch.float32

    def __init__(self, seed: int = 0):
        self.pattern = 0.3 * torch.randn(TOKENS, CHANNELS, generator=torch.Generator().manual_seed(seed))

    # ----------------------------------------------------------------- sampling
    def target(self, image: Any) -> torch.Tensor:
        """x₁ of an image: the pattern shifted by its mean colour (channels 0–2) and coverage (channel 3)."""
        rgba = np.asarray(open_image(image), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:]
        coverage = float(alpha.mean())
        colour = (rgba[..., :3] * alpha).sum((0, 1)) / max(float(alpha.sum()), 1e-6)
        shift = torch.tensor([*(colour - 0.5), coverage - 0.25], dtype=torch.float32)
        return (self.pattern + shift).unsqueeze(0)

    @staticmethod
    def planned_schedule(num_inference_steps: int) -> list[float]:
        native = np.linspace(1.0, 0.0, num_inference_steps + 1)  # t: noise → data
        return [float(1.0 - t) for t in native]

    def schedule(self, num_inference_steps: int) -> list[float]:
        return self.planned_schedule(num_inference_steps)

    # ----------------------------------------------------------------- loading (what the CLI asks the class)
    @classmethod
    def load(cls, options: Any, preset: Any, *, device: Any, dtype: Any, cache_dir: Any = None) -> tuple[Any, str]:
        """Built from nothing for an offline preset (it has no checkpoint); the real preset has no model."""
        if not preset.offline:
            cls.check_present(options)
        return cls(seed=0), f"analytic ({preset.name})"

    @staticmethod
    def check_present(options: Any) -> None:
        raise ModelNotFoundError("analytic", [], "the analytic backbone has no real model: it builds itself from "
                                 "nothing; run it with --preset tiny.")

    def prepare(self, image: Any, *, num_inference_steps: int, guidance_scale: float) -> SamplingContext:
        sigmas = self.schedule(num_inference_steps)
        condition = AnalyticCondition(self.target(image), float(guidance_scale), [1.0 - s for s in sigmas])
        return SamplingContext(condition, sigmas, batch_size=1, rows_per_latent=2)

    def noise(self, rows: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randn((rows, TOKENS, CHANNELS), generator=generator, dtype=self.dtype)

    def velocity(self, latents: torch.Tensor, step: int, context: SamplingContext) -> torch.Tensor:
        condition = context.condition
        # The model's own convention: a batch [uncond, cond], velocity dx/dt in its time t (1 → 0).
        batch = torch.cat([latents, latents])
        targets = torch.cat([torch.zeros_like(condition.target), condition.target]).to(latents.dtype)
        native = batch - targets  # dx/dt = −(target − x): moving toward t = 0 moves toward the target
        uncond, cond = native.chunk(2)
        native = uncond + condition.guidance_scale * (cond - uncond)
        return -native  # the loop's dx/dσ, σ = 1 − t

    def step(self, velocity: torch.Tensor, step: int, latents: torch.Tensor, context: SamplingContext) -> torch.Tensor:
        return latents + (context.sigmas[step + 1] - context.sigmas[step]) * velocity

    def for_rows(self, context: SamplingContext, rows: int) -> SamplingContext:
        condition = replace(context.condition, target=context.condition.target.expand(rows, -1, -1))
        return replace(context, condition=condition, batch_size=rows)

    # ----------------------------------------------------------------- decoding
    def occupancy_field(self, latent: torch.Tensor) -> OccupancyField:
        axes = 0.5 + 0.2 * torch.tanh(latent.reshape(-1, CHANNELS)[:, :3].mean(0))
        return OccupancyField(ellipsoid_logits, axes)

    def to_mesh(self, latent: torch.Tensor, *, octree_resolution: int, num_chunks: int = 8000,
                bounds: float = 1.01, level: float = 0.0) -> Any | None:
        field = self.occupancy_field(latent.float())
        config = SurfaceConfig(resolution=octree_resolution, coarse_resolution=coarse_resolution_for(octree_resolution),
                               bounds=bounds, level=level, chunk_size=num_chunks)
        try:
            with torch.no_grad():
                return extract_surface_from_field(field.query, field.params, config).to_trimesh()
        except EmptySurfaceError:
            return None

    def offload_groups(self) -> dict[str, list[torch.nn.Module]]:
        return {"condition": [], "denoise": []}

    def input_foreground(self, image: Any, size: int) -> torch.Tensor:
        alpha = np.asarray(open_image(image).convert("RGBA"), dtype=np.float32)[..., 3] / 255.0
        mask = torch.from_numpy(alpha)[None, None]
        return F.interpolate(mask, size=(size, size), mode="area")[0, 0].clamp(0, 1)

    def export_frame(self, octree_resolution: int) -> np.ndarray:
        return np.eye(4)  # to_mesh extracts the field's own surface: the frames agree

    def reference_image(self, image: Any, side: int) -> torch.Tensor:
        rgb = np.asarray(composite_on_white(open_image(image)).convert("RGB"), dtype=np.float32) / 255.0
        pixels = torch.from_numpy(rgb).permute(2, 0, 1)[None]
        return F.interpolate(pixels, size=(side, side), mode="bilinear", align_corners=False)[0].clamp(0, 1)
