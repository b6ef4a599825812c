"""Final mesh: hy3dgen's postprocessors (optional) and an atomic write in the format of the suffix."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import trimesh

from .errors import InvalidInputError
from .io import atomic_path

logger = logging.getLogger(__name__)

MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")


@dataclass
class PostprocessConfig:
    """Optional clean-up of the exported mesh with hy3dgen's own postprocessors."""

    remove_floaters: bool = False
    remove_degenerate_faces: bool = False
    max_faces: int | None = None

    def validate(self) -> "PostprocessConfig":
        """Raise InvalidInputError on a bad value; return self."""
        if self.max_faces is not None and self.max_faces < 4:
            raise InvalidInputError(f"max_faces must be ≥ 4, got {self.max_faces}")
        return self


def check_mesh_path(path: str | os.PathLike) -> Path:
    """The output path, checked for a supported mesh suffix (before any work starts)."""
    target = Path(path)
    if target.suffix.lower() not in MESH_SUFFIXES:
        raise InvalidInputError(
            f"Unsupported mesh format '{target.suffix or '(none)'}' for '{target}'; use one of {', '.join(MESH_SUFFIXES)}."
        )
    return target


def postprocess_mesh(mesh: trimesh.Trimesh, config: PostprocessConfig) -> trimesh.Trimesh:
    """Apply hy3dgen's FloaterRemover, DegenerateFaceRemover and FaceReducer as configured."""
    if not (config.remove_floaters or config.remove_degenerate_faces or config.max_faces):
        return mesh
    from hy3dgen.shapegen.postprocessors import DegenerateFaceRemover, FaceReducer, FloaterRemover

    faces_before = len(mesh.faces)
    if config.remove_floaters:
        mesh = FloaterRemover()(mesh)
    if config.remove_degenerate_faces:
        mesh = DegenerateFaceRemover()(mesh)
    if config.max_faces:
        mesh = FaceReducer()(mesh, max_facenum=config.max_faces)
    logger.info("postprocessing: %d -> %d faces", faces_before, len(mesh.faces))
    return mesh


def save_mesh(mesh: trimesh.Trimesh, path: str | os.PathLike) -> Path:
    """Write `mesh` to `path` atomically, in the format its suffix names."""
    target = check_mesh_path(path)
    with atomic_path(target) as tmp:
        mesh.export(str(tmp), file_type=target.suffix.lower().lstrip("."))
    return target
