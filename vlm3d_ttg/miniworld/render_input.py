"""Input pictures in the miniature world's one training style, from any mesh.

The style: the package's CPU renderer (`render/`: orbit cameras, Lambertian shading with the
default camera-fixed lights), tinted a warm clay colour, on a transparent background (alpha = the
antialiased coverage), so the shape model's image processor finds the object by its alpha
exactly as it does for a photo with its background removed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import InvalidInputError
from ..render import Renderer, orbit_cameras

#: Side of the training input renders, pixels.
INPUT_SIZE = 160
#: Camera distance of the input renders (closer than the critic's orbit: the object fills more of the picture).
INPUT_DISTANCE = 3.2
#: Per-channel multiplier of the grey shading: the input style's clay tint.
CLAY_TINT = (1.0, 0.82, 0.66)


def _mesh_arrays(mesh: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(mesh, tuple) and len(mesh) == 2:
        vertices, faces = mesh
    elif hasattr(mesh, "vertices") and hasattr(mesh, "faces"):
        vertices, faces = mesh.vertices, mesh.faces
    else:
        raise InvalidInputError(f"Expected a mesh (trimesh.Trimesh, miniworld Mesh or (vertices, faces)); got {type(mesh).__name__}.")
    vertices = np.asarray(vertices, dtype=np.float32)
    faces = np.asarray(faces, dtype=np.int64)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise InvalidInputError(f"A mesh needs vertices (V, 3) and faces (F, 3), got {vertices.shape} and {faces.shape}.")
    return vertices, faces


def render_input_images(mesh: Any, views: list[tuple[float, float]], *, size: int = INPUT_SIZE,
                        renderer: Renderer | None = None) -> np.ndarray:
    """RGBA uint8 pictures (N, size, size, 4) of `mesh` (in hy3dgen's frame) from (azimuth, elevation) degree pairs."""
    vertices, faces = _mesh_arrays(mesh)
    if not views:
        raise InvalidInputError("Give at least one (azimuth, elevation) view.")
    cameras = orbit_cameras(azimuths_deg=[a for a, _ in views], elevation_deg=[e for _, e in views],
                            distance=INPUT_DISTANCE, image_size=size)
    renderer = renderer or Renderer("cpu")
    with torch.no_grad():
        result = renderer(torch.from_numpy(vertices), torch.from_numpy(faces), cameras)
    tint = torch.tensor(CLAY_TINT).view(1, 3, 1, 1)
    rgb = (result.images * tint).clamp(0, 1)
    alpha = result.masks.clamp(0, 1)
    rgba = torch.cat([rgb, alpha], dim=1).permute(0, 2, 3, 1)
    return (rgba * 255.0 + 0.5).to(torch.uint8).numpy()


def render_input_image(mesh: Any, azimuth: float, elevation: float, *, size: int = INPUT_SIZE) -> Image.Image:
    """An RGBA input picture of `mesh` (trimesh, miniworld Mesh or (vertices, faces), hy3dgen's frame:
    +y up, front +z) from `azimuth`/`elevation` degrees, in the miniature world's training style."""
    return Image.fromarray(render_input_images(mesh, [(azimuth, elevation)], size=size)[0], mode="RGBA")


def critic_views(mesh: Any, *, generator: torch.Generator | None = None, size: int = 112, num_views: int = 4,
                 elevation: float = 20.0, azimuth_jitter: float = 15.0, elevation_jitter: float = 5.0,
                 renderer: Renderer | None = None) -> torch.Tensor:
    """Views (num_views, 3, size, size) in [0, 1] of `mesh` exactly as guidance's reward renders them
    (`VLMReward.cameras`: orbit cameras with jitter, grey Lambertian shading, white background)."""
    from ..render import CameraJitter

    vertices, faces = _mesh_arrays(mesh)
    jitter = CameraJitter(azimuth_deg=azimuth_jitter, elevation_deg=elevation_jitter) if (azimuth_jitter or elevation_jitter) else None
    cameras = orbit_cameras(num_views, elevation_deg=elevation, image_size=size, jitter=jitter, generator=generator)
    renderer = renderer or Renderer("cpu")
    with torch.no_grad():
        return renderer(torch.from_numpy(vertices), torch.from_numpy(faces), cameras).images.clamp(0, 1)
