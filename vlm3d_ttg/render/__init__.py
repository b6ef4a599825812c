"""Differentiable rendering of meshes into the views the critic sees.

Cameras and shading are shared by both backends (nvdiffrast on CUDA, a torch/Embree CPU path);
see `renderer` for the entry points.
"""

from .cameras import (
    DEFAULT_AZIMUTHS,
    DEFAULT_DISTANCE,
    DEFAULT_ELEVATION,
    DEFAULT_FOV,
    DEFAULT_IMAGE_SIZE,
    CameraJitter,
    Cameras,
    check_image_size,
    orbit_cameras,
)
from .contact_sheet import contact_sheet, write_contact_sheet
from .nvdiffrast_backend import NvdiffrastRasterizer, nvdiffrast_unavailable_reason
from .renderer import RENDERER_VERSION, Renderer, RenderResult, render_mesh, resolve_backend
from .shading import Light, ShadingConfig, face_normals, lambert_reference, shade, vertex_normals

__all__ = [
    "DEFAULT_AZIMUTHS",
    "DEFAULT_DISTANCE",
    "DEFAULT_ELEVATION",
    "DEFAULT_FOV",
    "DEFAULT_IMAGE_SIZE",
    "CameraJitter",
    "Cameras",
    "Light",
    "NvdiffrastRasterizer",
    "RENDERER_VERSION",
    "RenderResult",
    "Renderer",
    "ShadingConfig",
    "check_image_size",
    "contact_sheet",
    "face_normals",
    "lambert_reference",
    "nvdiffrast_unavailable_reason",
    "orbit_cameras",
    "render_mesh",
    "resolve_backend",
    "shade",
    "vertex_normals",
    "write_contact_sheet",
]
