"""What guidance changed: the unguided run (same seed and settings, guidance off) beside the guided one.

`generate --compare` (and the app) write the unguided mesh next to the guided one, `OUT` →
`OUT-stem.unguided.SUFFIX` with its own manifest, and one contact sheet of both, `OUT.compare.png`:
the two final meshes rendered by the reward's renderer from the same cameras (the critic's un-jittered
orbit, at a readable size), one row each, captioned with each mesh's final r and the prompt.
The runs themselves are `generation.generate_compared`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .errors import InvalidInputError

#: Side of each view in the compare sheet, pixels (the critic's own views may be much smaller).
COMPARE_VIEW_SIZE = 224


def unguided_path_for(mesh_path: str | os.PathLike) -> Path:
    """Where the unguided twin of a mesh goes: 'robot.glb' → 'robot.unguided.glb' (its format kept)."""
    path = Path(mesh_path)
    return path.with_name(f"{path.stem}.unguided{path.suffix}")


def compare_sheet_path_for(mesh_path: str | os.PathLike) -> Path:
    """Where the contact sheet of both meshes goes: 'robot.glb' → 'robot.glb.compare.png'."""
    path = Path(mesh_path)
    return path.with_name(path.name + ".compare.png")


def unguided_config(guidance: Any) -> Any:
    """The guided run's GuidanceConfig with guidance off and every other setting equal (a `--no-guidance` run)."""
    return dataclasses.replace(guidance, enabled=False)


def check_compare(guidance: Any, search: Any, guided_steps: Sequence[int], *, asked: str = "--compare") -> None:
    """Refuse, before any work, a comparison that would compare nothing: guidance off (--no-guidance or
    --scale 0), no step in the σ window, or a candidate search (whose critic-chosen seed would differ
    between the two runs). Raises InvalidInputError naming the fix; `asked` is how the user asked for the
    comparison (the app's "baseline")."""
    if not guidance.enabled:
        raise InvalidInputError(f"{asked} writes the unguided run beside the guided one; with --no-guidance there "
                                f"is no guided run. Drop --no-guidance (or {asked}).")
    if not guidance.active:
        raise InvalidInputError(f"{asked} writes the unguided run beside the guided one; with --scale 0 nothing is "
                                f"guided and both runs would be the same. Give --scale > 0 (or drop {asked}).")
    if not guided_steps:
        raise InvalidInputError(f"{asked}: no step of this run falls in the σ window {guidance.sigma_window}, so the "
                                "guided and unguided meshes would be the same. Widen --sigma-window or give more --steps.")
    if search is not None and search.searching:
        raise InvalidInputError(f"{asked} compares one seed with and without guidance; with --candidates the critic "
                                f"would pick each run's seed. Drop --candidates (or {asked}).")


def compare_views(reward: Any, meshes: Sequence[Any], *, size: int = COMPARE_VIEW_SIZE) -> torch.Tensor:
    """Views (len(meshes) × num_views, 3, size, size) in [0, 1] of each mesh (trimesh-like: vertices, faces) in
    turn, from the reward's un-jittered orbit cameras at `size` px, rendered by the reward's renderer."""
    from .render import orbit_cameras

    device = reward.backbone.device
    cameras = orbit_cameras(reward.num_views, elevation_deg=reward.elevation, image_size=size, device=device)
    rows = []
    with torch.no_grad():
        for mesh in meshes:
            vertices = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32, device=device)
            faces = torch.as_tensor(np.asarray(mesh.faces, dtype=np.int64), device=device)
            rows.append(reward.renderer(vertices, faces, cameras).images.detach().float().clamp(0, 1).cpu())
    return torch.cat(rows)


def compare_sheet(views: torch.Tensor, rows: Sequence[tuple[str, float | None]], *, prompt: str, seed: int,
                  azimuths: Sequence[float]) -> Any:
    """The contact sheet (PIL image) of `views` (one row per entry of `rows`: (label, final r), each of
    len(azimuths) views), every view captioned with its row's label, final r and azimuth, under a title
    with the prompt and the seed."""
    from .render.contact_sheet import contact_sheet

    columns = len(azimuths)
    if views.shape[0] != columns * len(rows):
        raise InvalidInputError(f"{views.shape[0]} views for {len(rows)} rows of {columns}.")
    labels = [f"{label}  r={'n/a' if r is None else f'{r:+.3f}'}  az {azimuth:.0f}"
              for label, r in rows for azimuth in azimuths]
    title = f"\"{prompt}\"  seed {seed}  rows: " + ", ".join(label for label, _ in rows) + "  (r: the critic's final log-odds)"
    return contact_sheet(views, labels, columns=columns, title=title)


__all__ = ["COMPARE_VIEW_SIZE", "check_compare", "compare_sheet", "compare_sheet_path_for", "compare_views",
           "unguided_config", "unguided_path_for"]
