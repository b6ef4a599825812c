"""`vlm3d-ttg generate`: image + description -> guided Hunyuan3D-2 mesh."""

from __future__ import annotations

import typer


def generate() -> None:
    """Generate a mesh (not implemented yet)."""
    raise typer.Exit(1)
