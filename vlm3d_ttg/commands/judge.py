"""`vlm3d-ttg judge`: score images (or a mesh) with the critic, without guidance."""

from __future__ import annotations

import typer


def judge() -> None:
    """Score images with the VLM critic (not implemented yet)."""
    raise typer.Exit(1)
