"""What the critic scores when it is handed files: views of one object, or a mesh file it renders.

One place decides how a mesh file is read, framed and rendered for scoring, so `vlm3d-ttg score`
and the benchmark see the same file the same way.

Framing rule (`load_mesh_for_scoring`): a mesh that lies within hy3dgen's decoding cube (±1.01)
is rendered exactly as it is; a mesh that reaches outside it is centred on its bounding box and
scaled uniformly so that its longest side is 1.9 (it then lies within ±0.95).

- Every mesh this package generates lies in that cube, and the critic saw it there during
  guidance: left untouched, a generated GLB scored from a file gets the views (and so the r) it got
  in memory, and the benchmark's re-scored meshes compare with the r its manifests hold.
- Any other mesh (centimetres, off-centre, a scan) would otherwise surround the cameras or fill
  none of the picture, and its score would be meaningless without any sign of it.
- Always normalising would change the apparent size of generated objects (a small generated
  object would be enlarged) and break the equality above; never normalising breaks the second
  point. The two rules agree on every mesh inside the cube, which is all the benchmark renders.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .errors import InvalidInputError
from .export import MESH_SUFFIXES
from .images import open_image, view_tensor

logger = logging.getLogger(__name__)

#: Image files accepted as views to score.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
#: Mesh files accepted for scoring: the formats this package writes, which trimesh also reads.
SCORABLE_MESH_SUFFIXES = MESH_SUFFIXES
#: hy3dgen decodes shapes into this cube (its bounds are ±1.01); meshes inside are not reframed.
DECODED_CUBE_HALF_SIDE = 1.01
#: Half the longest side of a reframed mesh: inside the cube with a margin, like a generated object.
REFRAMED_HALF_SIDE = 0.95


@dataclass(frozen=True)
class ScoringMesh:
    """A triangle mesh framed for scoring: vertices (V, 3) float32, faces (F, 3) int64.

    `reframed` says whether the file reached outside hy3dgen's cube and was centred and scaled.
    """

    vertices: np.ndarray
    faces: np.ndarray
    reframed: bool
    source: str

    def render(
        self,
        cameras: Any,
        *,
        device: torch.device | str | None = None,
        backend: str = "auto",
        shading: Any = None,
    ) -> torch.Tensor:
        """The views from `cameras` as float32 images (N, 3, H, W) in [0, 1], without gradients.

        Rendered on `device` (default: the cameras' device) with `backend` ('auto': nvdiffrast on
        CUDA where installed, else the CPU renderer) and `shading` (default: the critic's).
        """
        from .render import Renderer

        device = torch.device(device) if device is not None else cameras.view.device
        vertices = torch.as_tensor(self.vertices, dtype=torch.float32, device=device)
        faces = torch.as_tensor(self.faces, dtype=torch.long, device=device)
        with torch.no_grad():
            result = Renderer(backend, shading, device=device)(vertices, faces, cameras.to(device))
        return result.images.detach().float().clamp(0, 1)


def load_mesh_for_scoring(path: str | os.PathLike, *, cube: float = DECODED_CUBE_HALF_SIDE) -> ScoringMesh:
    """A mesh file (GLB, glTF, OBJ, PLY, STL, OFF) read and framed for scoring (see the module docstring)
    in the cube ±`cube` a backbone decodes into (`Backbone.bounds`; hy3dgen's by default).

    Raises InvalidInputError for an unreadable file, a file without triangles, non-finite
    coordinates, or a mesh outside the cube that has no extent to scale.
    """
    import trimesh

    path = Path(path)
    try:
        # process=False: vertices stay as written (no merging or reordering), so the framing is the file's.
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as exc:  # trimesh raises many types for unreadable files
        if path.suffix.lower() == ".gltf" and isinstance(exc, (KeyError, FileNotFoundError)):
            missing = exc.args[0] if isinstance(exc, KeyError) and exc.args else getattr(exc, "filename", None) or exc
            raise InvalidInputError(
                f"Cannot read mesh '{path}': it refers to the side file '{missing}', which is not next to it. A .gltf "
                "may keep its buffers in separate files: copy them along, or use a .glb (one file)."
            ) from None
        raise InvalidInputError(f"Cannot read mesh '{path}' ({type(exc).__name__}: {exc}).") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise InvalidInputError(f"Mesh '{path}' has no triangles.")
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if not np.isfinite(vertices).all():
        raise InvalidInputError(f"Mesh '{path}' has non-finite vertex coordinates.")
    reframed = bool(np.abs(vertices).max() > cube)
    if reframed:
        low, high = vertices.min(axis=0), vertices.max(axis=0)
        longest = float((high - low).max())
        if not longest > 0:
            raise InvalidInputError(f"Mesh '{path}' lies outside the ±1 cube and has no extent to scale.")
        half = REFRAMED_HALF_SIDE if cube >= DECODED_CUBE_HALF_SIDE else REFRAMED_HALF_SIDE * cube / DECODED_CUBE_HALF_SIDE
        vertices = (vertices - (low + high) / 2) * (2 * half / longest)
        logger.info("Mesh %s reaches outside the decoding cube ±%.2f; centred and scaled into it.", path, cube)
    return ScoringMesh(vertices.astype(np.float32), faces, reframed, str(path))


def check_views_show_the_mesh(views: torch.Tensor, source: str) -> torch.Tensor:
    """Return `views` (N, 3, H, W) unless every one of them is a single flat colour (the mesh is not
    visible from any camera: degenerate, or too thin or small to cover a pixel); then raise
    InvalidInputError, as a blank image would be refused. Views where only some are blank pass
    (a thin object seen edge-on), with a log line naming them."""
    flat = [bool((view.amax(dim=(1, 2)) - view.amin(dim=(1, 2))).max() < 1.0 / 255) for view in views]
    if all(flat):
        raise InvalidInputError(
            f"Mesh '{source}' renders as empty views: none of the {len(flat)} cameras sees any of it (its triangles "
            "have no area, or it is too small or thin to cover a pixel). There is nothing for the critic to judge."
        )
    if any(flat):
        logger.warning("Mesh %s is not visible in view(s) %s.", source, [k for k, f in enumerate(flat) if f])
    return views


def render_mesh_file(
    path: str | os.PathLike,
    cameras: Any,
    *,
    device: torch.device | str | None = None,
    backend: str = "auto",
    shading: Any = None,
) -> torch.Tensor:
    """A mesh file's views from `cameras` for scoring: `load_mesh_for_scoring(path).render(...)`."""
    return load_mesh_for_scoring(path).render(cameras, device=device, backend=backend, shading=shading)


def load_view_files(paths: Sequence[str | os.PathLike]) -> torch.Tensor:
    """Image files of one object, all of one size, as views (N, 3, H, W) in [0, 1].

    Transparency is composited over white (the renders' background); each file is read and
    checked by the shared image loader (`vlm3d_ttg.images`). Raises InvalidInputError for no
    files, unreadable or empty images, or files of different sizes.
    """
    if not paths:
        raise InvalidInputError("No image files given; the critic needs at least one view.")
    paths = [Path(path) for path in paths]
    # Sizes are compared before the content checks: a set of mismatched files is the first thing to fix.
    images = [open_image(path, what="Image") for path in paths]
    sizes = {image.size for image in images}
    if len(sizes) > 1:
        listed = ", ".join(f"{path.name}: {image.size[0]}x{image.size[1]}" for path, image in zip(paths, images))
        raise InvalidInputError(f"All images must have the same size (they are views of one object); got {listed}.")
    return torch.stack([view_tensor(image, path, what="Image") for path, image in zip(paths, images)])


__all__ = [
    "DECODED_CUBE_HALF_SIDE",
    "IMAGE_SUFFIXES",
    "REFRAMED_HALF_SIDE",
    "SCORABLE_MESH_SUFFIXES",
    "ScoringMesh",
    "check_views_show_the_mesh",
    "load_mesh_for_scoring",
    "load_view_files",
    "render_mesh_file",
]
