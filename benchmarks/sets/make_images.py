"""Render the input images of the `shapes` benchmark set (benchmarks/sets/images/*.png).

Each object is built from trimesh primitives and rendered with vlm3d-ttg's own CPU renderer
(as examples/make_example_image.py does for the demo robot): grey Lambert shading tinted with a
colour per part, alpha from the renderer's mask, 252 × 252 RGBA with a transparent background.
Same script, same bytes; nothing is downloaded.

    python benchmarks/sets/make_images.py [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import trimesh
from PIL import Image

from vlm3d_ttg.io import atomic_path
from vlm3d_ttg.render import orbit_cameras, render_mesh

IMAGE_SIZE = 252  # a multiple of 28, like every render in this package
Part = tuple[trimesh.Trimesh, tuple[float, float, float]]

box = trimesh.creation.box
sphere = trimesh.creation.icosphere
cylinder = trimesh.creation.cylinder
cone = trimesh.creation.cone
torus = trimesh.creation.torus


def upright(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Turn a primitive whose axis is +z (trimesh's cylinders and cones) to stand along +y."""
    return mesh.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, (1, 0, 0)))


def at(mesh: trimesh.Trimesh, x: float, y: float, z: float) -> trimesh.Trimesh:
    """The mesh moved by (x, y, z)."""
    return mesh.apply_translation((x, y, z))


def toy_robot() -> list[Part]:
    """The demo robot: box body, ball head, cylinder legs, box arms."""
    body, metal, dark = (0.85, 0.35, 0.20), (0.80, 0.80, 0.85), (0.25, 0.30, 0.40)
    return [
        (box((0.60, 0.70, 0.40)), body),
        (at(sphere(3, 0.26), 0, 0.62, 0), metal),
        (at(upright(cylinder(0.07, 0.55)), -0.17, -0.62, 0), dark),
        (at(upright(cylinder(0.07, 0.55)), 0.17, -0.62, 0), dark),
        (at(box((0.12, 0.5, 0.12)), -0.40, 0.05, 0), dark),
        (at(box((0.12, 0.5, 0.12)), 0.40, 0.05, 0), dark),
        (at(sphere(2, 0.06), -0.09, 0.66, 0.23), (0.1, 0.1, 0.1)),
        (at(sphere(2, 0.06), 0.09, 0.66, 0.23), (0.1, 0.1, 0.1)),
    ]


def mug() -> list[Part]:
    """A mug: cylinder, coffee disc, torus handle."""
    ceramic = (0.20, 0.45, 0.75)
    return [
        (upright(cylinder(0.35, 0.80, sections=48)), ceramic),
        (at(upright(cylinder(0.30, 0.02, sections=48)), 0, 0.40, 0), (0.30, 0.18, 0.10)),  # coffee
        (at(torus(0.22, 0.06, major_sections=32, minor_sections=12), 0.36, 0.0, 0), ceramic),
    ]


def table() -> list[Part]:
    """A table: thin box top, four box legs."""
    wood = (0.60, 0.40, 0.22)
    legs = [(at(box((0.08, 0.60, 0.08)), x, -0.32, z), wood) for x in (-0.52, 0.52) for z in (-0.30, 0.30)]
    return [(box((1.20, 0.06, 0.75)), wood), *legs]


def chair() -> list[Part]:
    """A chair: seat, backrest, four legs."""
    wood, cushion = (0.55, 0.35, 0.20), (0.75, 0.20, 0.20)
    legs = [(at(box((0.06, 0.50, 0.06)), x, -0.28, z), wood) for x in (-0.24, 0.24) for z in (-0.24, 0.24)]
    return [
        (box((0.56, 0.06, 0.56)), cushion),
        (at(box((0.56, 0.60, 0.06)), 0, 0.33, -0.25), wood),
        *legs,
    ]


def snowman() -> list[Part]:
    """A snowman: three balls, cone nose, top hat, eyes."""
    snow, black = (0.95, 0.95, 0.97), (0.10, 0.10, 0.12)
    nose = cone(0.05, 0.22, sections=24)  # +z: points towards the viewer
    return [
        (at(sphere(3, 0.40), 0, -0.45, 0), snow),
        (at(sphere(3, 0.30), 0, 0.17, 0), snow),
        (at(sphere(3, 0.21), 0, 0.62, 0), snow),
        (at(nose, 0, 0.62, 0.19), (0.95, 0.50, 0.10)),
        (at(upright(cylinder(0.25, 0.03, sections=32)), 0, 0.80, 0), black),
        (at(upright(cylinder(0.15, 0.22, sections=32)), 0, 0.92, 0), black),
        (at(sphere(2, 0.035), -0.07, 0.70, 0.18), black),
        (at(sphere(2, 0.035), 0.07, 0.70, 0.18), black),
    ]


def mushroom() -> list[Part]:
    """A mushroom: cylinder stem, flattened dome cap with spots."""
    cap = sphere(3, 0.55)
    cap = trimesh.Trimesh(cap.vertices * (1.0, 0.55, 1.0), cap.faces)  # a flattened dome
    return [
        (at(upright(cylinder(0.16, 0.60, sections=32)), 0, -0.25, 0), (0.92, 0.90, 0.82)),
        (at(cap, 0, 0.12, 0), (0.85, 0.12, 0.10)),
        *[(at(sphere(2, 0.07), x, y, z), (0.98, 0.98, 0.95)) for x, y, z in
          ((0.0, 0.40, 0.12), (0.25, 0.30, 0.25), (-0.28, 0.28, 0.22), (0.10, 0.24, 0.42))],
    ]


def rocket() -> list[Part]:
    """A rocket: cylinder hull, cone nose, window, three fins."""
    hull, red = (0.85, 0.85, 0.88), (0.80, 0.15, 0.12)
    fins = []
    for angle in (0.0, 2 * np.pi / 3, 4 * np.pi / 3):
        fin = at(box((0.02, 0.30, 0.22)), 0, -0.45, 0.26)
        fins.append((fin.apply_transform(trimesh.transformations.rotation_matrix(angle, (0, 1, 0))), red))
    return [
        (upright(cylinder(0.18, 1.00, sections=40)), hull),
        (at(upright(cone(0.18, 0.40, sections=40)), 0, 0.50, 0), red),
        (at(sphere(2, 0.07), 0, 0.20, 0.16), (0.20, 0.45, 0.80)),  # window
        *fins,
    ]


def desk_lamp() -> list[Part]:
    """A desk lamp: disc base, pole, cone shade, bulb."""
    metal, shade = (0.25, 0.25, 0.28), (0.95, 0.80, 0.20)
    shade_mesh = at(cone(0.30, 0.35, sections=40), 0, 0, -0.175)
    shade_mesh.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, (1, 0, 0)))  # apex up, opening down
    return [
        (at(upright(cylinder(0.32, 0.06, sections=40)), 0, -0.62, 0), metal),
        (at(upright(cylinder(0.035, 1.00, sections=16)), 0, -0.10, 0), metal),
        (at(shade_mesh, 0, 0.45, 0), shade),
        (at(sphere(2, 0.06), 0, 0.40, 0), (1.0, 1.0, 0.85)),
    ]


OBJECTS: dict[str, Callable[[], list[Part]]] = {
    "toy_robot": toy_robot,
    "mug": mug,
    "table": table,
    "chair": chair,
    "snowman": snowman,
    "mushroom": mushroom,
    "rocket": rocket,
    "desk_lamp": desk_lamp,
}


def render_object(parts: list[Part], *, azimuth: float = 30.0, elevation: float = 15.0) -> Image.Image:
    """An RGBA picture of the parts (coloured Lambert shading, transparent background)."""
    combined = trimesh.util.concatenate([mesh for mesh, _ in parts])
    centre = (combined.vertices.max(axis=0) + combined.vertices.min(axis=0)) / 2
    vertices = combined.vertices - centre
    vertices = vertices * (0.9 / np.abs(vertices).max())
    face_colour = np.concatenate([np.tile(colour, (len(mesh.faces), 1)) for mesh, colour in parts])
    cameras = orbit_cameras(azimuths_deg=[azimuth], elevation_deg=elevation, image_size=IMAGE_SIZE)
    result = render_mesh(torch.tensor(vertices, dtype=torch.float32), torch.tensor(combined.faces), cameras)
    shade = result.images[0].mean(0).numpy()
    face_ids = result.face_ids[0].numpy()
    mask = result.masks[0, 0].numpy() > 0.5
    rgb = np.ones((*shade.shape, 3))
    rgb[mask] = face_colour[face_ids[mask]] * (0.35 + 0.75 * shade[mask, None])
    return Image.fromarray(np.dstack([np.clip(rgb, 0, 1) * 255, mask * 255]).round().astype(np.uint8), "RGBA")


def main(out_dir: Path) -> None:
    """Write every object's picture into `out_dir`."""
    for name, build in OBJECTS.items():
        path = out_dir / f"{name}.png"
        with atomic_path(path) as tmp:
            render_object(build()).save(tmp, format="PNG", optimize=True)
        print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "images")
