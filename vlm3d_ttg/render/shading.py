"""Shading shared by every backend: grey Lambertian under camera-fixed lights, or normal maps.

Normals are the mesh's own (area-weighted vertex normals, interpolated and re-normalised), so
they are differentiable in the vertex positions and identical for every backend. Lights are
fixed to the camera, so every view of the object is lit the same way.

Camera-space convention: x right, y up, z towards the viewer (OpenGL).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError


@dataclass(frozen=True)
class Light:
    """A directional light: `direction` points from the surface towards the light, in camera space."""

    direction: tuple[float, float, float]
    intensity: float


def _default_lights() -> tuple[Light, ...]:
    # A key light from the upper left front and a weaker fill from the right, both near the
    # camera so that every visible part is lit; albedo·(ambient + Σ intensity) ≤ 1, no clipping.
    return (Light((-0.4, 0.5, 1.0), 0.55), Light((0.7, 0.1, 0.7), 0.2))


@dataclass(frozen=True)
class ShadingConfig:
    """How visible surface points become colours.

    mode: "lambert" (grey diffuse) or "normals" (camera-space normal map, (n + 1) / 2).
    albedo / ambient / lights: shade = albedo · (ambient + Σ intensity · max(0, ⟨n, l⟩)).
    background: grey level of empty pixels (1 = white).
    smooth: interpolate vertex normals (True) or use flat face normals.
    two_sided: shade back faces (seen through holes, or wrongly wound) with the flipped normal.
    """

    mode: Literal["lambert", "normals"] = "lambert"
    albedo: float = 0.8
    ambient: float = 0.25
    lights: tuple[Light, ...] = field(default_factory=_default_lights)
    background: float = 1.0
    smooth: bool = True
    two_sided: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("lambert", "normals"):
            raise InvalidInputError(f"Shading mode must be 'lambert' or 'normals', got {self.mode!r}.")
        if not 0.0 <= self.background <= 1.0:
            raise InvalidInputError(f"Background must be in [0, 1], got {self.background}.")

    def lambert(self, cos_terms: list[float]) -> float:
        """The Lambert value for the given ⟨n, l⟩ per light (for checks and documentation)."""
        return self.albedo * (self.ambient + sum(l.intensity * max(0.0, c) for l, c in zip(self.lights, cos_terms)))

    def light_directions(self, *, dtype=torch.float32, device=None) -> torch.Tensor:
        """Unit light directions (L, 3) in camera space."""
        if not self.lights:
            return torch.zeros(0, 3, dtype=dtype, device=device)
        directions = torch.tensor([l.direction for l in self.lights], dtype=dtype, device=device)
        return directions / directions.norm(dim=-1, keepdim=True)


def face_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted face normals (F, 3): the cross product of two edges (right-hand rule)."""
    tri = vertices[faces]
    return torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Unit vertex normals (V, 3): area-weighted sums of the adjacent faces' normals."""
    per_face = face_normals(vertices, faces)
    summed = torch.zeros_like(vertices).index_add(0, faces.reshape(-1), per_face.repeat_interleave(3, dim=0))
    return F.normalize(summed, dim=-1, eps=1e-20)


def shade(normals_camera: torch.Tensor, config: ShadingConfig) -> torch.Tensor:
    """Colours (..., 3) in [0, 1] of surface points with unit camera-space normals (..., 3)."""
    if config.mode == "normals":
        return (normals_camera + 1) * 0.5
    lights = config.light_directions(dtype=normals_camera.dtype, device=normals_camera.device)
    intensities = torch.tensor([l.intensity for l in config.lights], dtype=normals_camera.dtype, device=normals_camera.device)
    diffuse = (normals_camera @ lights.T).clamp_min(0) @ intensities if len(config.lights) else 0
    grey = (config.albedo * (config.ambient + diffuse)).clamp(0, 1)
    return grey.unsqueeze(-1).expand(*grey.shape, 3)


def lambert_reference(normal_camera: tuple[float, float, float], config: ShadingConfig) -> float:
    """Lambert shade for one camera-space normal, computed in plain Python (independent check)."""
    norm = math.sqrt(sum(c * c for c in normal_camera))
    n = [c / norm for c in normal_camera]
    cosines = []
    for light in config.lights:
        lnorm = math.sqrt(sum(c * c for c in light.direction))
        cosines.append(sum(a * b / lnorm for a, b in zip(n, light.direction)))
    return config.lambert(cosines)
