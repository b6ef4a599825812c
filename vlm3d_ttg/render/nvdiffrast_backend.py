"""The nvdiffrast backend: rasterize → interpolate → shade → antialias, on CUDA.

Written from nvdiffrast's documentation (it has not been run on a GPU by us yet):

- `rasterize(ctx, pos, tri, resolution)` takes clip-space positions (N, V, 4) float32 and
  triangles (F, 3) int32, both contiguous on the GPU, and returns (N, H, W, 4) holding
  (u, v, z/w, triangle_id + 1); u weights the first vertex of the triangle, v the second and
  1 - u - v the third; 0 everywhere marks an empty pixel.
- Images are **bottom-up** (OpenGL): row 0 is the bottom. We flip rows once at the end.
- `interpolate(attr, rast, tri)` with attr (1, V, C) broadcasts over the views.
- `antialias(color, rast, pos, tri)` blends across silhouette edges. We do not use it: our own
  `render.antialias` (same idea, but it finds silhouette edges beyond the pixel's own triangle)
  is applied to the flipped, top-down images, so both backends share one silhouette gradient.

Installing on a GPU machine: `pip install diffrp-nvdiffrast` (the unchanged nvdiffrast source).
It JIT-compiles on first use (~5 min on 2 cores); with torch ≥ 2.14 it has needed `CUDA_HOME`
set to the CUDA toolkit, the pip `nvidia/cu13/include` folder on `CPATH`, and the build folder on
`sys.path`.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from types import ModuleType

import torch

from ..errors import InvalidInputError
from . import antialias as aa
from .cameras import Cameras
from .raster_cpu import _edge, clip_positions
from .shading import ShadingConfig, face_normals, shade, vertex_normals

logger = logging.getLogger(__name__)


def nvdiffrast_unavailable_reason(device: torch.device | None = None) -> str | None:
    """Why the nvdiffrast backend cannot run here (None when it can)."""
    if not torch.cuda.is_available():
        return "CUDA is not available on this machine"
    if device is not None and torch.device(device).type != "cuda":
        return f"the mesh is on {device}, not on a CUDA device"
    if importlib.util.find_spec("nvdiffrast") is None:
        return "the 'nvdiffrast' package is not installed (pip install diffrp-nvdiffrast)"
    return None


class NvdiffrastRasterizer:
    """Renders with nvdiffrast on one CUDA device; holds the rasterizer context between calls.

    `dr` may be given a module with nvdiffrast.torch's interface (for testing the wiring);
    by default the real `nvdiffrast.torch` is imported and CUDA is required.
    """

    def __init__(self, device: torch.device | str | None = None, *, dr: ModuleType | None = None):
        if dr is None:
            reason = nvdiffrast_unavailable_reason(torch.device(device) if device is not None else None)
            if reason is not None:
                raise InvalidInputError(
                    f"The nvdiffrast renderer cannot run: {reason}. Use backend='cpu' (or 'auto')."
                )
            dr = importlib.import_module("nvdiffrast.torch")
            device = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
            self.context = dr.RasterizeCudaContext(device=device)
        else:
            device = torch.device(device) if device is not None else torch.device("cpu")
            self.context = dr.RasterizeCudaContext(device=device)
        self.dr = dr
        self.device = device

    def render(
        self, vertices: torch.Tensor, faces: torch.Tensor, cameras: Cameras, shading: ShadingConfig
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images (N, 3, H, W), masks (N, 1, H, W) and face ids (N, H, W) (-1 = background), rows top-down."""
        dr = self.dr
        size = cameras.image_size
        cams = cameras.to(self.device, torch.float32)
        verts = vertices.to(self.device, torch.float32)
        tri = faces.to(self.device, torch.int32).contiguous()
        clip = clip_positions(verts, cams.mvp).contiguous()
        rast, _ = dr.rasterize(self.context, clip, tri, resolution=(size, size))
        covered = rast[..., 3:4] > 0
        face_id = rast[..., 3].long() - 1  # -1 where empty

        if shading.smooth:
            normals, _ = dr.interpolate(vertex_normals(verts, tri.long())[None].contiguous(), rast, tri)
        else:
            per_face = torch.nn.functional.normalize(face_normals(verts, tri.long()), dim=-1, eps=1e-20)
            normals = per_face[face_id.clamp_min(0)]
        normals = torch.einsum("nij,nhwj->nhwi", cams.rotation, normals)
        normals = torch.nn.functional.normalize(normals, dim=-1, eps=1e-20)
        if shading.two_sided:
            normals = normals * _facing_sign(clip, tri, face_id)[..., None]

        color = shade(normals, shading)
        color = torch.where(covered, color, torch.full_like(color, shading.background))

        # nvdiffrast rows are bottom-up; everything else here is top-down.
        images = color.flip(1).permute(0, 3, 1, 2)
        masks = covered.flip(1).permute(0, 3, 1, 2).to(images.dtype)
        face_id = face_id.flip(1)
        # Silhouettes: our antialias op (pure torch, runs on CUDA too) rather than nvdiffrast's
        # `dr.antialias`, which only looks for the silhouette edge on the pixel's own triangle and
        # so, on marching-cubes meshes, found 118 of 4,924 object/background pairs (measured on the
        # CPU; see antialias.py). Colours and coverage blend in one pass, as on the CPU backend.
        blended = aa.antialias(torch.cat([images, masks], dim=1), face_id, clip, tri.long())
        return blended[:, :3].contiguous(), blended[:, 3:].contiguous(), face_id


def _facing_sign(clip: torch.Tensor, tri: torch.Tensor, face_id: torch.Tensor) -> torch.Tensor:
    """+1 where the visible triangle is counter-clockwise on screen (front), -1 where it is a back face."""
    with torch.no_grad():
        ndc = clip[:, :, :2] / clip[:, :, 3:4]  # (N, V, 2)
        tri_ndc = ndc[:, tri.long()]  # (N, F, 3, 2)
        area = _edge(tri_ndc[..., 0, :], tri_ndc[..., 1, :], tri_ndc[..., 2, :])  # (N, F)
        front = torch.gather(area, 1, face_id.clamp_min(0).flatten(1)).view_as(face_id) >= 0
    return torch.where(front | (face_id < 0), 1.0, -1.0).to(clip.dtype)
