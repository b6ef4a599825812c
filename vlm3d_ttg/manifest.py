"""The run manifest: everything needed to know what produced a mesh, as JSON next to it."""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from .io import write_text_atomic


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages whose behaviour the result depends on."""
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("vlm3d-ttg", "torch", "torchvision", "transformers", "hy3dgen", "trimesh", "scikit-image", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def manifest_path_for(mesh_path: str | os.PathLike) -> Path:
    """Default manifest location: the mesh's full name plus `.json` ('robot.glb' → 'robot.glb.json'),
    so that meshes differing only in format never share (and overwrite) one manifest."""
    path = Path(mesh_path)
    return path.with_name(path.name + ".json")


def plot_path_for(mesh_path: str | os.PathLike) -> Path:
    """Default location of the r plot: the mesh's full name plus `.r.png` ('robot.glb' → 'robot.glb.r.png')."""
    path = Path(mesh_path)
    return path.with_name(path.name + ".r.png")


def write_manifest(path: str | os.PathLike, content: dict[str, Any]) -> Path:
    """Write the manifest atomically (pretty JSON, non-finite numbers as null)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
            return None
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    return write_text_atomic(path, json.dumps(clean(content), indent=2, allow_nan=False) + "\n")
