"""Broken variants of a mesh: what the critic's geometric-quality criterion must answer "No" to.

- holes: faces removed within a few balls on the surface (open surfaces, interior seen through them);
- fracture: the mesh cut by a random plane, one side moved away (a crack with open edges);
- floaters: small detached blobs scattered around the object (fragmentation).
"""

from __future__ import annotations

import numpy as np

from .geometry import Mesh

BREAKS = ("holes", "fracture", "floaters")


def _holes(mesh: Mesh, rng: np.random.Generator) -> Mesh:
    centroids = mesh.vertices[mesh.faces].mean(axis=1)
    keep = np.ones(len(mesh.faces), bool)
    for _ in range(int(rng.integers(3, 6))):
        center = mesh.vertices[rng.integers(len(mesh.vertices))]
        keep &= np.linalg.norm(centroids - center, axis=1) > rng.uniform(0.2, 0.3)
    return Mesh(mesh.vertices, mesh.faces[keep])


def _fracture(mesh: Mesh, rng: np.random.Generator) -> Mesh:
    normal = rng.normal(size=3)
    normal /= np.linalg.norm(normal)
    offset = float(rng.uniform(-0.2, 0.2))
    side = mesh.vertices @ normal > offset
    crossing = side[mesh.faces].any(axis=1) & ~side[mesh.faces].all(axis=1)
    vertices = mesh.vertices.copy()
    shift = normal * rng.uniform(0.15, 0.25) + rng.normal(size=3) * 0.08
    vertices[side] += shift
    return Mesh(vertices.astype(np.float32), mesh.faces[~crossing])


def _sphere_mesh(center: np.ndarray, radius: float) -> Mesh:
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=2, radius=radius)
    return Mesh((sphere.vertices + center).astype(np.float32), np.asarray(sphere.faces, np.int64))


def _floaters(mesh: Mesh, rng: np.random.Generator) -> Mesh:
    parts = [mesh]
    lo, hi = mesh.vertices.min(axis=0), mesh.vertices.max(axis=0)
    for _ in range(int(rng.integers(4, 9))):
        center = rng.uniform(np.maximum(lo - 0.2, -0.95), np.minimum(hi + 0.2, 0.95))
        parts.append(_sphere_mesh(center, float(rng.uniform(0.08, 0.14))))
    vertices, faces, base = [], [], 0
    for part in parts:
        vertices.append(part.vertices)
        faces.append(part.faces + base)
        base += len(part.vertices)
    return Mesh(np.concatenate(vertices).astype(np.float32), np.concatenate(faces))


def break_mesh(mesh: Mesh, kind: str, rng: np.random.Generator) -> Mesh:
    """A broken copy of `mesh`: kind is one of BREAKS."""
    return {"holes": _holes, "fracture": _fracture, "floaters": _floaters}[kind](mesh, rng)
