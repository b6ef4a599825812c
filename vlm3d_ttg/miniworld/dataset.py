"""The miniature world's data set: which shapes exist, their split, and what is stored for each.

Layout of a built data folder (`training/build_data.py`, regenerable from the seed)::

    meta.json                    the shapes: name, class, variant, attributes, split, description
    shapes/<name>.npz            points (P, 3) f16, occ (P,) bool, grid (packed 64³ bool),
                                 vertices (V, 3) f32, faces (F, 3) i32
    inputs/<name>.npz            views (K, 2) azimuth/elevation, processed (K, 3, S, S) uint8: the
                                 input renders after the shape pipeline's own ImageProcessorV2
    <split>_*.npy                the same, stacked per split for training
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError
from .geometry import Mesh, mesh_from_sdf, occupancy_grid, occupancy_samples
from .shapes import CLASSES, ShapeSpec, make_spec, shape_sdf

#: Variants per class and how they split (by variant index: the first TRAIN are training shapes).
VARIANTS = 56
TRAIN = 44
VAL = 6
GRID = 64
SAMPLES = 16384
#: Input renders per shape: random views plus the class's views that hide its attribute.
RANDOM_VIEWS = 6


def split_of(variant: int) -> str:
    """'train', 'val' or 'test' for a variant index."""
    if variant < TRAIN:
        return "train"
    return "val" if variant < TRAIN + VAL else "test"


@dataclass(frozen=True)
class ShapeRecord:
    """One shape of the data set as meta.json lists it."""

    name: str
    cls: str
    variant: int
    split: str
    attributes: dict
    description: str


def world_specs(seed: int = 0, variants: int = VARIANTS) -> list[ShapeSpec]:
    """Every shape of the world under `seed`, class-major."""
    return [make_spec(cls, v, seed) for cls in CLASSES for v in range(variants)]


def record_of(spec: ShapeSpec) -> ShapeRecord:
    return ShapeRecord(spec.name, spec.cls, spec.variant, split_of(spec.variant), dict(spec.attributes),
                       spec.descriptions()[0])


def hiding_views(cls: str) -> list[tuple[float, float]]:
    """Views (azimuth, elevation) that hide `cls`'s attribute (the mug's handle sits on +x, the chair's back on −z)."""
    return {
        "mug": [(270.0, 8.0), (270.0, 25.0)],
        "table": [(0.0, 0.0), (90.0, 0.0)],
        "chair": [(0.0, 85.0), (180.0, 80.0)],
        "rocket": [(0.0, 85.0), (90.0, 80.0)],
    }.get(cls, [])


def input_views(spec: ShapeSpec, seed: int = 0) -> list[tuple[float, float]]:
    """The input-render viewpoints of a shape: RANDOM_VIEWS random ones, then the hiding ones (8 in all)."""
    rng = np.random.default_rng([seed, 7, CLASSES.index(spec.cls), spec.variant])
    views = [(float(rng.uniform(0, 360)), float(rng.uniform(-5, 40))) for _ in range(RANDOM_VIEWS)]
    hiding = hiding_views(spec.cls)
    while len(hiding) < 2:
        hiding.append((float(rng.uniform(0, 360)), float(rng.uniform(-5, 40))))
    return views + hiding


def build_shape(spec: ShapeSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """The stored arrays of one shape (see the module docstring)."""
    sdf = shape_sdf(spec)
    mesh = mesh_from_sdf(sdf, 80)
    rng = np.random.default_rng([seed, 11, CLASSES.index(spec.cls), spec.variant])
    points, occ = occupancy_samples(sdf, mesh, rng, count=SAMPLES)
    grid = occupancy_grid(sdf, GRID)
    return {"points": points.astype(np.float16), "occ": occ, "grid": np.packbits(grid.ravel()),
            "vertices": mesh.vertices, "faces": mesh.faces.astype(np.int32)}


def load_mesh(data_dir: str | os.PathLike, name: str) -> Mesh:
    """A built shape's mesh."""
    with np.load(Path(data_dir) / "shapes" / f"{name}.npz") as z:
        return Mesh(z["vertices"], z["faces"].astype(np.int64))


def load_grid(data_dir: str | os.PathLike, name: str) -> np.ndarray:
    """A built shape's 64³ occupancy grid over ±1.01."""
    with np.load(Path(data_dir) / "shapes" / f"{name}.npz") as z:
        return np.unpackbits(z["grid"])[: GRID**3].reshape(GRID, GRID, GRID).astype(bool)


def load_meta(data_dir: str | os.PathLike) -> list[ShapeRecord]:
    """The shapes of a built data folder."""
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise InvalidInputError(f"{path} is missing: build the data first (training/build_data.py --out {data_dir}).")
    return [ShapeRecord(**r) for r in json.loads(path.read_text())["shapes"]]


def write_meta(data_dir: str | os.PathLike, specs: list[ShapeSpec], seed: int) -> None:
    """Write meta.json for `specs` (atomically)."""
    path = Path(data_dir) / "meta.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"seed": seed, "classes": list(CLASSES),
                               "shapes": [asdict(record_of(s)) for s in specs]}, indent=1))
    os.replace(tmp, path)
