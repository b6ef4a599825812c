"""Final mesh: hy3dgen's postprocessors (optional) and an atomic write in the format of the suffix.

The decode of a final latent to a mesh is the backbone's (`Backbone.to_mesh`)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import trimesh

from .errors import InvalidInputError
from .io import atomic_path
from .options import Checks, option

logger = logging.getLogger(__name__)

MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")



@dataclass
class PostprocessConfig:
    """Optional clean-up of the exported mesh with hy3dgen's own postprocessors."""

    remove_floaters: bool = option(False, "Remove small disconnected parts (hy3dgen's FloaterRemover).",
                                   negative="--keep-floaters")
    remove_degenerate_faces: bool = option(False, "Remove degenerate faces (hy3dgen's DegenerateFaceRemover).",
                                           flag="--remove-degenerate", negative="--keep-degenerate")
    max_faces: int | None = option(None, "Reduce to at most this many faces (hy3dgen's FaceReducer).", cli_type=int,
                                   minimum=4)

    def validate(self) -> "PostprocessConfig":
        """Raise InvalidInputError on a bad value; return self."""
        Checks(self, "Invalid postprocessing option").declared()
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


# Options that make trimesh put everything in one file. Left to itself it writes side files with
# fixed names next to the output (a .gltf's `gltf_buffer_0.bin`, a textured .obj's `material.mtl`
# and `material_0.png`): outside the atomic staging, missing from the manifest, and overwritten by
# the next export into the same folder, which silently corrupts the first. A .gltf therefore embeds
# its buffers as base64 data URIs (a third larger than binary; .glb is the compact choice), and an
# .obj is written without material files (the meshes we export carry no texture).
_SINGLE_FILE_OPTIONS: dict[str, dict] = {
    "gltf": {"embed_buffers": True, "merge_buffers": True},
    "obj": {"include_texture": False},
}


def mesh_file_bytes(mesh: trimesh.Trimesh, file_type: str) -> bytes:
    """The complete file of `mesh` in `file_type` (a suffix without the dot), as one self-contained blob."""
    exported = mesh.export(file_type=file_type, **_SINGLE_FILE_OPTIONS.get(file_type, {}))
    if isinstance(exported, dict):
        if len(exported) != 1:  # a trimesh change brought back side files: refuse rather than lose them
            raise RuntimeError(f"trimesh exported .{file_type} as several files {sorted(exported)}; expected one")
        exported = next(iter(exported.values()))
    return exported.encode("utf-8") if isinstance(exported, str) else bytes(exported)


def save_mesh(mesh: trimesh.Trimesh, path: str | os.PathLike) -> Path:
    """Write `mesh` to `path` atomically, in the format its suffix names, as exactly one file."""
    target = check_mesh_path(path)
    data = mesh_file_bytes(mesh, target.suffix.lower().lstrip("."))
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return target
