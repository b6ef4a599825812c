"""Meshes, occupancy samples and attribute detectors for the miniature world.

Grids span hy3dgen's decoding cube ±1.01 (`BOUNDS`); grid point i sits at −b + i·2b/(R − 1) on
each axis. The detectors read an occupancy grid (True inside), so the same code judges a ground
truth shape and a decoder's reconstruction. `detect_attribute` reads the grid's largest connected
piece only: a decoder leaves stray specks (floaters) that are no part of the shape — a speck below a
table moved the slice `count_legs` reads and a near-perfect table reconstruction (IoU 0.98) read as
0 legs — and a leg or back that broke off the body is not a leg or a back:
- handle: genus of the largest component, from its Euler characteristic (χ = 1 − genus for a solid
  without cavities; a mug is a ball, a mug with a handle a solid torus);
- legs: connected components of a horizontal slice a quarter of the way up the shape;
- back: occupied volume above the highest wide horizontal slice (a chair's seat);
- fins: how far the bottom slice reaches beyond the body's radius at mid-height.

`ShapeClassifier` names a shape's class by the nearest reference shape (symmetric Chamfer of surface
points): the mean distance to a class's references misnames a fifth of the true shapes (cylinders,
boxes: a class's random proportions spread it wider than the gaps between classes), the nearest one
only 1 in 40 (RESULTS, "class right").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError
from .shapes import ATTRIBUTES, SDF

BOUNDS = 1.01


def grid_points(resolution: int, bounds: float = BOUNDS) -> np.ndarray:
    """The (R³, 3) points of a regular grid over ±bounds, x-major (index = (i·R + j)·R + k)."""
    axis = np.linspace(-bounds, bounds, resolution)
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)


def occupancy_grid(sdf: SDF, resolution: int = 64, bounds: float = BOUNDS) -> np.ndarray:
    """(R, R, R) bool grid, True where the SDF is negative."""
    return (sdf(grid_points(resolution, bounds)) < 0.0).reshape(resolution, resolution, resolution)


@dataclass
class Mesh:
    """A triangle mesh: vertices (V, 3) float32, faces (F, 3) int64, counter-clockwise seen from outside."""

    vertices: np.ndarray
    faces: np.ndarray


def mesh_from_values(values: np.ndarray, level: float, bounds: float = BOUNDS, *, inside_above: bool) -> Mesh:
    """Marching cubes of a (R, R, R) value grid over ±bounds at `level`.

    inside_above: True when the inside is where values > level (occupancy logits), False where
    values < level (signed distances). Faces come out wound counter-clockwise seen from outside.
    """
    from skimage.measure import marching_cubes

    resolution = values.shape[0]
    vol = values if inside_above else -values
    lvl = level if inside_above else -level
    if not (vol.max() > lvl > vol.min()):
        raise InvalidInputError("The field has no surface at this level (empty or full grid).")
    verts, faces, _, _ = marching_cubes(vol.astype(np.float32), level=lvl)
    verts = verts * (2 * bounds / (resolution - 1)) - bounds
    # skimage's winding faces the gradient direction (increasing values = inside): flip to outward.
    faces = faces[:, ::-1]
    return Mesh(verts.astype(np.float32), np.ascontiguousarray(faces).astype(np.int64))


def mesh_from_sdf(sdf: SDF, resolution: int = 96, bounds: float = BOUNDS) -> Mesh:
    """The SDF's zero level set as a mesh (marching cubes on a resolution³ grid over ±bounds)."""
    values = sdf(grid_points(resolution, bounds)).reshape(resolution, resolution, resolution)
    return mesh_from_values(values, 0.0, bounds, inside_above=False)


def occupancy_samples(sdf: SDF, mesh: Mesh, rng: np.random.Generator, *, count: int = 16384,
                      near_fraction: float = 0.75, bounds: float = BOUNDS) -> tuple[np.ndarray, np.ndarray]:
    """Training samples: points (count, 3) float32 and occupancy (count,) bool.

    `near_fraction` of them are surface points displaced by N(0, 0.01²) or N(0, 0.04²) (half each),
    the rest uniform in the cube.
    """
    n_near = int(count * near_fraction)
    n_uniform = count - n_near
    tri = mesh.vertices[mesh.faces]
    areas = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    choice = rng.choice(len(tri), size=n_near, p=areas / areas.sum())
    uv = rng.random((n_near, 2))
    flip = uv.sum(axis=1) > 1
    uv[flip] = 1 - uv[flip]
    t = tri[choice]
    surface = t[:, 0] + uv[:, :1] * (t[:, 1] - t[:, 0]) + uv[:, 1:] * (t[:, 2] - t[:, 0])
    sigma = np.where(np.arange(n_near) < n_near // 2, 0.01, 0.04)[:, None]
    near = surface + rng.normal(size=surface.shape) * sigma
    uniform = rng.uniform(-bounds, bounds, size=(n_uniform, 3))
    points = np.clip(np.concatenate([near, uniform]), -bounds, bounds).astype(np.float32)
    return points, sdf(points) < 0.0


# --------------------------------------------------------------------------------------------
# Attribute detectors (occupancy grid → value)


def largest_component(grid: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a bool grid (empty grid → itself)."""
    from scipy import ndimage

    labels, count = ndimage.label(grid)
    if count <= 1:
        return grid
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def genus(grid: np.ndarray) -> int:
    """Genus of the largest component (1 − χ, cavities filled first): 0 for a ball, 1 for a solid torus."""
    from scipy import ndimage
    from skimage.measure import euler_number

    solid = ndimage.binary_fill_holes(largest_component(grid))
    if not solid.any():
        return 0
    return int(1 - euler_number(np.pad(solid, 1), connectivity=1))


def count_legs(grid: np.ndarray, height_fraction: float = 0.25, min_pixels: int = 2) -> int:
    """Connected blobs in the horizontal slice `height_fraction` of the way up the occupied extent."""
    from scipy import ndimage

    ys = np.nonzero(grid.any(axis=(0, 2)))[0]
    if len(ys) == 0:
        return 0
    level = int(round(ys[0] + height_fraction * (ys[-1] - ys[0])))
    labels, count = ndimage.label(grid[:, level, :])
    sizes = np.bincount(labels.ravel())[1:]
    return int((sizes >= min_pixels).sum())


def has_back(grid: np.ndarray, min_fraction: float = 0.04) -> bool:
    """True when more than `min_fraction` of the volume lies above the seat (the highest wide horizontal slice)."""
    areas = grid.sum(axis=(0, 2))
    if areas.sum() == 0:
        return False
    # The seat's top: the highest slice at least half as wide as the widest one.
    seat_top = int(np.nonzero(areas >= 0.5 * areas.max())[0].max())
    above = grid[:, seat_top + 2 :, :].sum()
    return bool(above > min_fraction * grid.sum())


def has_fins(grid: np.ndarray, ratio: float = 1.3) -> bool:
    """True when the shape's bottom reaches `ratio` × farther from the vertical axis than its middle does."""
    ys = np.nonzero(grid.any(axis=(0, 2)))[0]
    if len(ys) == 0:
        return False
    res = grid.shape[0]
    idx = np.arange(res) - (res - 1) / 2.0
    rr = np.sqrt(idx[:, None] ** 2 + idx[None, :] ** 2)

    def reach(level: int) -> float:
        sl = grid[:, level, :]
        return float(np.percentile(rr[sl], 99)) if sl.any() else 0.0

    bottom = ys[0] + max(1, int(0.08 * (ys[-1] - ys[0])))
    middle = ys[0] + int(0.5 * (ys[-1] - ys[0]))
    return reach(bottom) > ratio * max(reach(middle), 1e-6)


def detect_attribute(cls: str, grid: np.ndarray) -> int | None:
    """The attribute value a grid shows for `cls` (handle/back/fins 0/1, legs 3/4); None for classes without one."""
    name = ATTRIBUTES.get(cls)
    if name is None:
        return None
    grid = largest_component(grid)
    if name == "handle":
        return int(genus(grid) >= 1)
    if name == "legs":
        return count_legs(grid)
    if name == "back":
        return int(has_back(grid))
    return int(has_fins(grid))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Volumetric IoU of two bool grids."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def chamfer(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric Chamfer distance of two (N, 3) point sets: the mean of both directions' mean nearest-neighbour distance."""
    from scipy.spatial import cKDTree

    return float(cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean()) / 2.0


class ShapeClassifier:
    """Names a shape's class by its nearest reference shape, by `chamfer` of surface points.

    `references` maps each class to the surface point sets of some of its shapes (the training
    shapes, for an evaluation); `distances` gives every reference's distance, so other rules can
    be read off the same numbers.
    """

    def __init__(self, references: Mapping[str, Sequence[np.ndarray]]) -> None:
        from scipy.spatial import cKDTree

        if not references or any(len(points) == 0 for points in references.values()):
            raise InvalidInputError("ShapeClassifier needs at least one reference shape for every class")
        self._references = {cls: [(np.asarray(p), cKDTree(p)) for p in sets] for cls, sets in references.items()}

    @property
    def classes(self) -> list[str]:
        """The classes it can name."""
        return list(self._references)

    def distances(self, points: np.ndarray) -> dict[str, np.ndarray]:
        """Each class's Chamfer distances from `points` to its references, in the references' order."""
        from scipy.spatial import cKDTree

        points = np.asarray(points)
        tree = cKDTree(points)
        return {cls: np.array([(ref_tree.query(points)[0].mean() + tree.query(ref)[0].mean()) / 2.0 for ref, ref_tree in refs])
                for cls, refs in self._references.items()}

    @staticmethod
    def nearest(distances: Mapping[str, np.ndarray]) -> str:
        """The class whose reference is nearest, from `distances`' output."""
        return min(distances, key=lambda cls: distances[cls].min())

    def __call__(self, points: np.ndarray) -> str:
        """The class of the reference shape nearest to `points`."""
        return self.nearest(self.distances(points))
