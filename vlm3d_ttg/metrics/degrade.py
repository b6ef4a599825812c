"""Clearly degraded copies of a mesh, for calibrating a judge: a good shape against a worse copy of itself.

Four kinds, each a parameterised, seeded, visible defect (lengths are fractions of the mesh's
bounding-box diagonal, so one setting means the same on any mesh):

| kind        | strength                                  | what it does                                             |
|-------------|-------------------------------------------|----------------------------------------------------------|
| holes       | number of holes (radius HOLE_RADIUS)      | removes the faces within a radius of random surface points |
| remove_part | share of the extent cut off               | removes everything beyond a plane along a random direction |
| noise       | displacement RMS                          | moves each (welded) vertex along its normal, Gaussian       |
| coarsen     | share of faces kept                       | quadric edge-collapse decimation (pymeshlab): detail lost   |

A judge that cannot tell a shape from its degraded copy (win rate of the original near 0.5) cannot
be trusted to tell guided from base either: see `vlm3d_ttg.metrics.calibration`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("holes", "remove_part", "noise", "coarsen")
HOLE_RADIUS = 0.08  # of the bounding-box diagonal


def _diagonal(vertices: np.ndarray) -> float:
    return float(np.linalg.norm(vertices.max(axis=0) - vertices.min(axis=0)))


def _drop_unused(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    used = np.unique(faces)
    remap = np.full(len(vertices), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return vertices[used], remap[faces]


def cut_holes(vertices: np.ndarray, faces: np.ndarray, count: int, *, radius: float = HOLE_RADIUS,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Remove the faces whose centroid lies within `radius` (× diagonal) of `count` random face centroids."""
    rng = np.random.default_rng(seed)
    centroids = vertices[faces].mean(axis=1)
    centres = centroids[rng.choice(len(faces), size=int(count), replace=False)]
    distance = np.linalg.norm(centroids[:, None, :] - centres[None, :, :], axis=2).min(axis=1)
    keep = distance > radius * _diagonal(vertices)
    return _drop_unused(vertices, faces[keep])


def random_direction(seed: int) -> np.ndarray:
    """A unit vector drawn uniformly from the sphere (reproducible from `seed`)."""
    direction = np.random.default_rng(seed).normal(size=3)
    return direction / np.linalg.norm(direction)


def remove_part(vertices: np.ndarray, faces: np.ndarray, share: float, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Remove the faces beyond a plane that cuts `share` of the mesh's extent off along a random direction."""
    direction = random_direction(seed)
    height = vertices @ direction
    cut = height.max() - share * (height.max() - height.min())
    keep = (vertices[faces] @ direction).max(axis=1) <= cut
    return _drop_unused(vertices, faces[keep])


def add_surface_noise(vertices: np.ndarray, faces: np.ndarray, rms: float, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Move each vertex along its normal by Gaussian noise of RMS `rms` × diagonal (vertices welded first,
    so the surface stays closed where it was)."""
    import trimesh

    mesh = trimesh.Trimesh(vertices, faces, process=True)  # merges duplicated (seam) vertices
    welded = np.asarray(mesh.vertices, dtype=np.float64)
    offsets = np.random.default_rng(seed).normal(0.0, rms * _diagonal(welded), size=len(welded))
    moved = welded + offsets[:, None] * np.asarray(mesh.vertex_normals, dtype=np.float64)
    return moved, np.asarray(mesh.faces, dtype=np.int64)


def coarsen(vertices: np.ndarray, faces: np.ndarray, keep: float) -> tuple[np.ndarray, np.ndarray]:
    """Quadric edge-collapse decimation to about `keep` of the faces: the coarse shape stays, detail goes."""
    import pymeshlab

    meshes = pymeshlab.MeshSet()
    meshes.add_mesh(pymeshlab.Mesh(np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int32)))
    meshes.meshing_merge_close_vertices()
    meshes.meshing_decimation_quadric_edge_collapse(targetfacenum=max(4, int(round(keep * len(faces)))),
                                                    preservetopology=True)
    result = meshes.current_mesh()
    return np.asarray(result.vertex_matrix(), dtype=np.float64), np.asarray(result.face_matrix(), dtype=np.int64)


@dataclass(frozen=True)
class Degradation:
    """One kind of damage at one strength (see the module table); `seed` picks where it lands."""

    kind: str
    strength: float
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Unknown degradation '{self.kind}'; choose from {KINDS}")
        ranges = {"holes": (1, 1000), "remove_part": (0.0, 1.0), "noise": (0.0, 1.0), "coarsen": (0.0, 1.0)}
        low, high = ranges[self.kind]
        if not low <= self.strength <= high or (self.kind == "coarsen" and self.strength == 0):
            raise ValueError(f"{self.kind} strength must be in [{low}, {high}]" + (" and > 0" if self.kind == "coarsen" else "")
                             + f", got {self.strength}")

    @property
    def name(self) -> str:
        """A short label, e.g. 'holes×6' or 'noise 0.01'."""
        return f"holes×{int(self.strength)}" if self.kind == "holes" else f"{self.kind} {self.strength:g}"

    def apply(self, vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The degraded copy (vertices float64, faces int64); the input is left as it is."""
        vertices = np.asarray(vertices, dtype=np.float64)
        faces = np.asarray(faces, dtype=np.int64)
        if self.kind == "holes":
            return cut_holes(vertices, faces, int(self.strength), seed=self.seed)
        if self.kind == "remove_part":
            return remove_part(vertices, faces, self.strength, seed=self.seed)
        if self.kind == "noise":
            return add_surface_noise(vertices, faces, self.strength, seed=self.seed)
        return coarsen(vertices, faces, self.strength)


# Clear gaps: each defect is plain in 448² renders of a generated object (the calibration expects the
# original to win almost always; a judge that does not is not worth its win rates).
DEFAULT_DEGRADATIONS = (
    Degradation("holes", 6),
    Degradation("remove_part", 0.3),
    Degradation("noise", 0.01),
    Degradation("coarsen", 0.02),
)

__all__ = ["DEFAULT_DEGRADATIONS", "Degradation", "KINDS", "add_surface_noise", "coarsen", "cut_holes", "remove_part"]
