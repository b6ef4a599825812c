"""Render the example input image (examples/toy_robot.png) from a procedural toy robot.

The demo needs an RGBA image with a transparent background (no background-removal model
offline). This builds a small robot from primitives and renders it with vlm3d-ttg's own CPU
renderer, colouring each part; alpha comes from the renderer's mask.

    python examples/make_example_image.py [OUT.png]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image

from vlm3d_ttg.render import orbit_cameras, render_mesh

PARTS = [  # (mesh, RGB)
    (trimesh.creation.box((0.60, 0.70, 0.40)), (0.85, 0.35, 0.20)),  # body
    (trimesh.creation.icosphere(3, 0.26).apply_translation((0, 0.62, 0)), (0.80, 0.80, 0.85)),  # head
    (trimesh.creation.cylinder(0.07, 0.55).apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, (1, 0, 0))).apply_translation((-0.17, -0.62, 0)), (0.25, 0.30, 0.40)),  # legs
    (trimesh.creation.cylinder(0.07, 0.55).apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, (1, 0, 0))).apply_translation((0.17, -0.62, 0)), (0.25, 0.30, 0.40)),
    (trimesh.creation.box((0.12, 0.5, 0.12)).apply_translation((-0.40, 0.05, 0)), (0.25, 0.30, 0.40)),  # arms
    (trimesh.creation.box((0.12, 0.5, 0.12)).apply_translation((0.40, 0.05, 0)), (0.25, 0.30, 0.40)),
    (trimesh.creation.icosphere(2, 0.06).apply_translation((-0.09, 0.66, 0.23)), (0.10, 0.10, 0.10)),  # eyes
    (trimesh.creation.icosphere(2, 0.06).apply_translation((0.09, 0.66, 0.23)), (0.10, 0.10, 0.10)),
]


def main(out: Path) -> None:
    meshes = [mesh for mesh, _ in PARTS]
    robot = trimesh.util.concatenate(meshes)
    robot.apply_scale(0.9 / np.abs(robot.vertices).max())
    face_colour = np.concatenate([np.tile(colour, (len(mesh.faces), 1)) for mesh, colour in PARTS])
    cameras = orbit_cameras(azimuths_deg=[30.0], elevation_deg=15.0, image_size=504)
    result = render_mesh(torch.tensor(robot.vertices, dtype=torch.float32), torch.tensor(robot.faces), cameras)
    shade = result.images[0].mean(0).numpy()  # grey Lambert shading
    face_ids = result.face_ids[0].numpy()
    mask = result.masks[0, 0].numpy() > 0.5
    rgb = np.ones((*shade.shape, 3))
    rgb[mask] = face_colour[face_ids[mask]] * (0.35 + 0.75 * shade[mask, None])
    rgba = np.dstack([np.clip(rgb, 0, 1) * 255, mask * 255]).astype(np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgba, "RGBA").save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("toy_robot.png"))
