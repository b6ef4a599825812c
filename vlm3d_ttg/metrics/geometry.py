"""Geometry score: one number in [0, 1] for how broken a mesh is (0 = clean, lower is better).

This score is **our definition** (the paper reports a "Geo." column without defining it). It is
computed on the mesh's connectivity after two normalisations, so that neither the file format
nor the units change it:

1. the mesh is translated and scaled to a bounding-box diagonal of 1 (scale invariance);
2. vertices closer than `MERGE_TOLERANCE` (in those units) are merged, so a GLB whose vertices
   were duplicated along UV seams is seen as the closed surface it is.

Seven components, each mapped to [0, 1] (0 = no defect), and the score is their weighted mean.
`saturate(x, h) = x / (x + h)` maps a non-negative measurement to [0, 1), reaching 1/2 at x = h.

| component         | measurement                                                             | map                  | weight |
|-------------------|-------------------------------------------------------------------------|----------------------|--------|
| floaters          | number of components, other than the largest, with < 1 % of the area    | saturate(n, 3)       | 0.20   |
| fragmentation     | 1 − area of the largest component / area of all non-floater components  | identity             | 0.15   |
| open_surface      | boundary length / √(total area) (edges with one face)                   | saturate(x, 1)       | 0.20   |
| non_manifold      | share of faces on a non-manifold edge (> 2 faces) or vertex (> 1 fan)   | saturate(s, 0.001)   | 0.15   |
| self_intersection | share of faces that intersect a non-adjacent face (pymeshlab)           | saturate(s, 0.001)   | 0.15   |
| orientation       | share of faces whose winding disagrees with their component's majority  | saturate(s, 0.001)   | 0.10   |
| degenerate        | share of faces with a repeated vertex or ~zero area                     | saturate(s, 0.01)    | 0.05   |

Why these weights: floaters and holes are what generative meshes most often get wrong and what a
viewer sees first; non-manifold, self-intersecting and mis-oriented faces break downstream use
(printing, booleans, shading) but are often invisible in a render; degenerate faces are common
and mostly harmless in marching-cubes output. The half-points are first choices, to be calibrated
on real outputs. Two equal disjoint bodies give fragmentation 0.5; a sphere with one tiny ball
beside it gives floaters 0.25; a hemisphere gives open_surface ≈ 0.71.

Notes on the measurements:
- Components are faces joined by shared edges (including non-manifold edges), not by vertices.
- Orientation: within a component, faces are 2-coloured along manifold edges (two faces that
  traverse their shared edge in the same direction disagree); the minority colour is counted.
  On non-orientable surfaces this is an upper bound. A consistently inside-out mesh is not
  penalised (no component here can tell inside from outside on an open surface).
- Holes are measured by boundary length rather than by pymeshlab's `number_holes`, which is −1
  on non-manifold meshes.
- Non-manifold faces, not edges, are counted so the measure is a share of the surface.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import trimesh
from scipy import sparse
from scipy.sparse import csgraph

logger = logging.getLogger(__name__)

# Vertices closer than this (in units of the bounding-box diagonal) are one vertex. At 1e-6 the
# quantised coordinates fit in 21 bits each, so a vertex packs into one int64 key.
MERGE_TOLERANCE = 1e-6
# A component other than the largest with less than this share of the area is a floater.
FLOATER_AREA_SHARE = 0.01
# A face with area below this fraction of the mean face area is degenerate.
DEGENERATE_AREA_FRACTION = 1e-10

# Half-points of saturate() per component (see the module docstring).
FLOATER_HALF_COUNT = 3.0
OPEN_HALF_RATIO = 1.0
NON_MANIFOLD_HALF_SHARE = 1e-3
SELF_INTERSECTION_HALF_SHARE = 1e-3
ORIENTATION_HALF_SHARE = 1e-3
DEGENERATE_HALF_SHARE = 1e-2

COMPONENT_NAMES = (
    "floaters",
    "fragmentation",
    "open_surface",
    "non_manifold",
    "self_intersection",
    "orientation",
    "degenerate",
)


@dataclass(frozen=True)
class GeometryWeights:
    """Weights of the geometry score's components; they are normalised to sum to 1."""

    floaters: float = 0.20
    fragmentation: float = 0.15
    open_surface: float = 0.20
    non_manifold: float = 0.15
    self_intersection: float = 0.15
    orientation: float = 0.10
    degenerate: float = 0.05

    def normalised(self) -> dict[str, float]:
        """The weights as a dict over COMPONENT_NAMES, summing to 1."""
        raw = {name: float(getattr(self, name)) for name in COMPONENT_NAMES}
        total = sum(raw.values())
        if total <= 0 or any(w < 0 for w in raw.values()):
            raise ValueError(f"Geometry weights must be non-negative with a positive sum, got {raw}")
        return {name: w / total for name, w in raw.items()}


@dataclass(frozen=True)
class GeometryReport:
    """The geometry score, its components (each in [0, 1]) and the raw measurements behind them."""

    score: float
    components: dict[str, float]
    measurements: dict[str, float]
    weights: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-serialisable dict of the report."""
        return asdict(self)


def saturate(x: float, half: float) -> float:
    """Map x ≥ 0 to [0, 1): 0 at 0, 1/2 at `half`, → 1 as x → ∞."""
    if x <= 0:
        return 0.0
    return float(x / (x + half))


def normalise_and_weld(vertices: np.ndarray, faces: np.ndarray, tolerance: float = MERGE_TOLERANCE) -> tuple[np.ndarray, np.ndarray]:
    """Scale the mesh to a unit bounding-box diagonal (centred) and merge vertices closer than `tolerance`.

    Returns (vertices, faces) of the welded mesh; unreferenced vertices are kept (they change nothing).
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    used = vertices[np.unique(faces)] if faces.size else vertices
    low, high = used.min(axis=0), used.max(axis=0)
    diagonal = float(np.linalg.norm(high - low))
    if not np.isfinite(diagonal) or diagonal <= 0:
        raise ValueError("Mesh has no extent (all vertices coincide or are not finite)")
    unit = (vertices - (low + high) / 2.0) / diagonal
    quantised = np.round(unit / tolerance).astype(np.int64)
    span = int(np.abs(quantised).max()) + 1
    # One int64 key per vertex (a 1-D unique is several times faster than a row-wise one).
    keys = ((quantised[:, 0] + span) * (2 * span + 1) + (quantised[:, 1] + span)) * (2 * span + 1) + (quantised[:, 2] + span)
    if (2 * span + 1) ** 3 >= 2**63:
        raise ValueError(f"Merge tolerance {tolerance} is too fine to pack vertex keys into 64 bits")
    _, first_index, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return unit[first_index], inverse.reshape(-1)[faces]


@dataclass(frozen=True)
class _EdgeTopology:
    """Undirected edges of a triangle mesh and how faces use them."""

    edges: np.ndarray  # (E, 2) vertex ids, sorted within each row
    face_edges: np.ndarray  # (F, 3) edge id of face corner k → k+1
    face_edge_forward: np.ndarray  # (F, 3) True when the face traverses the edge from low to high id
    edge_face_count: np.ndarray  # (E,)


def _edge_topology(faces: np.ndarray) -> _EdgeTopology:
    directed = np.stack([faces, np.roll(faces, -1, axis=1)], axis=2).reshape(-1, 2)  # (3F, 2): k → k+1
    forward = directed[:, 0] < directed[:, 1]
    low = np.minimum(directed[:, 0], directed[:, 1])
    high = np.maximum(directed[:, 0], directed[:, 1])
    n_vertices = int(faces.max()) + 1 if faces.size else 1
    keys, inverse, counts = np.unique(low * n_vertices + high, return_inverse=True, return_counts=True)
    edges = np.stack(np.divmod(keys, n_vertices), axis=1)
    return _EdgeTopology(edges, inverse.reshape(-1, 3), forward.reshape(-1, 3), counts)


def _face_components(topology: _EdgeTopology, n_faces: int) -> np.ndarray:
    """Label faces by connected component, faces joined by any shared edge."""
    n_edges = len(topology.edges)
    rows = np.repeat(np.arange(n_faces), 3)
    cols = n_faces + topology.face_edges.reshape(-1)
    graph = sparse.coo_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(n_faces + n_edges,) * 2)
    _, labels = csgraph.connected_components(graph, directed=False)
    _, face_labels = np.unique(labels[:n_faces], return_inverse=True)
    return face_labels


def _half_edges_by_edge(topology: _EdgeTopology) -> tuple[np.ndarray, np.ndarray]:
    """Half-edges (as flat face-corner ids 3f+k) sorted by their undirected edge, and that edge per half-edge."""
    edge_of_half = topology.face_edges.reshape(-1)
    order = np.argsort(edge_of_half, kind="stable")
    return order, edge_of_half[order]


def _consecutive_same_edge_pairs(topology: _EdgeTopology) -> tuple[np.ndarray, np.ndarray]:
    # Chaining consecutive half-edges of the same edge joins all faces around that edge.
    order, edge_sorted = _half_edges_by_edge(topology)
    same = edge_sorted[1:] == edge_sorted[:-1]
    return order[:-1][same], order[1:][same]


def _non_manifold_vertex_mask(faces: np.ndarray, topology: _EdgeTopology, n_vertices: int) -> np.ndarray:
    """Vertices whose incident faces form more than one edge-connected fan (e.g. a bow-tie)."""
    n_corners = faces.size
    half_a, half_b = _consecutive_same_edge_pairs(topology)
    # Half-edge h = 3f+k runs from corner 3f+k to corner 3f+(k+1)%3. Two half-edges of the same edge
    # share both end vertices; match corners by vertex id.
    def corners_of(half: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        face, k = np.divmod(half, 3)
        return 3 * face + k, 3 * face + (k + 1) % 3

    a_start, a_end = corners_of(half_a)
    b_start, b_end = corners_of(half_b)
    flat = faces.reshape(-1)
    same_direction = flat[a_start] == flat[b_start]
    b_match_start = np.where(same_direction, b_start, b_end)  # corner in b with a_start's vertex
    b_match_end = np.where(same_direction, b_end, b_start)
    rows = np.concatenate([a_start, a_end])
    cols = np.concatenate([b_match_start, b_match_end])
    graph = sparse.coo_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(n_corners, n_corners))
    _, fan_label = csgraph.connected_components(graph, directed=False)
    vertex_fan = np.unique(flat.astype(np.int64) * n_corners + fan_label)
    fans_per_vertex = np.bincount(vertex_fan // n_corners, minlength=n_vertices)
    return fans_per_vertex > 1


def _misoriented_face_count(topology: _EdgeTopology, n_faces: int) -> int:
    """Faces in the minority winding of their patch (faces joined by manifold edges).

    Two neighbours agree when they traverse their shared edge in opposite directions. On the
    double cover (each face f as nodes (f, 0) and (f, 1); agreeing neighbours join equal copies,
    disagreeing ones opposite copies) an orientable patch splits into two components, one per
    winding class, and the smaller class is the count. A non-orientable patch stays connected;
    there the faces touching a disagreeing edge are counted, capped at half the patch.
    """
    manifold_edge = topology.edge_face_count == 2
    half_a, half_b = _consecutive_same_edge_pairs(topology)
    keep = manifold_edge[topology.face_edges.reshape(-1)[half_a]]
    half_a, half_b = half_a[keep], half_b[keep]
    forward = topology.face_edge_forward.reshape(-1)
    disagree = (forward[half_a] == forward[half_b]).astype(np.int64)
    face_a, face_b = half_a // 3, half_b // 3
    rows = np.concatenate([2 * face_a, 2 * face_a + 1])
    cols = np.concatenate([2 * face_b + disagree, 2 * face_b + 1 - disagree])
    cover = sparse.coo_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(2 * n_faces, 2 * n_faces))
    _, cover_labels = csgraph.connected_components(cover, directed=False)
    copy0, copy1 = cover_labels[0::2], cover_labels[1::2]
    orientable = copy0 != copy1

    patch = np.minimum(copy0, copy1)[orientable]
    in_lower_class = (copy0 < copy1)[orientable]
    _, patch_index = np.unique(patch, return_inverse=True)
    lower_count = np.bincount(patch_index, weights=in_lower_class)
    patch_size = np.bincount(patch_index)
    misoriented = int(np.minimum(lower_count, patch_size - lower_count).sum())

    if not orientable.all():
        touches_disagreement = np.zeros(n_faces, dtype=bool)
        touches_disagreement[face_a[disagree == 1]] = True
        touches_disagreement[face_b[disagree == 1]] = True
        _, patch_index = np.unique(copy0[~orientable], return_inverse=True)
        touching = np.bincount(patch_index, weights=touches_disagreement[~orientable])
        misoriented += int(np.minimum(touching, np.bincount(patch_index) / 2).sum())
        logger.debug("orientation: %d faces lie on non-orientable patches", int((~orientable).sum()))
    return misoriented


def _self_intersecting_face_count(vertices: np.ndarray, faces: np.ndarray) -> int:
    import pymeshlab

    if len(faces) == 0:
        return 0
    meshset = pymeshlab.MeshSet()
    meshset.add_mesh(pymeshlab.Mesh(vertex_matrix=vertices, face_matrix=faces.astype(np.int32)))
    meshset.compute_selection_by_self_intersections_per_face()
    return int(meshset.current_mesh().selected_face_number())


def _as_arrays(mesh: trimesh.Trimesh | str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(mesh, (str, os.PathLike)):
        mesh = trimesh.load(Path(mesh), force="mesh", process=False)
    if not isinstance(mesh, trimesh.Trimesh):
        raise TypeError(f"Expected a trimesh.Trimesh or a mesh file path, got {type(mesh).__name__}")
    return np.asarray(mesh.vertices), np.asarray(mesh.faces)


def geometry_measurements(mesh: trimesh.Trimesh | str | os.PathLike) -> dict[str, float]:
    """The raw defect measurements of a mesh (counts, shares, ratios), after normalising and welding."""
    raw_vertices, raw_faces = _as_arrays(mesh)
    if len(raw_faces) == 0:
        raise ValueError("Mesh has no faces")
    vertices, faces = normalise_and_weld(raw_vertices, raw_faces)
    n_faces_total = len(faces)

    repeated_vertex = (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (faces[:, 2] == faces[:, 0])
    corners = vertices[faces]
    areas = 0.5 * np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
    mean_area = float(areas.mean())
    degenerate = repeated_vertex | (areas <= DEGENERATE_AREA_FRACTION * mean_area)

    # Faces with a repeated vertex have no well-defined edges; the topology is read without them.
    faces_t = faces[~repeated_vertex]
    areas_t = areas[~repeated_vertex]
    if len(faces_t) == 0:
        raise ValueError("Every face of the mesh repeats a vertex after merging: there is no surface to score")
    total_area = float(areas_t.sum())
    topology = _edge_topology(faces_t)
    labels = _face_components(topology, len(faces_t))

    component_area = np.bincount(labels, weights=areas_t)
    share = component_area / total_area if total_area > 0 else np.zeros_like(component_area)
    largest = int(np.argmax(share))
    is_floater = share < FLOATER_AREA_SHARE
    is_floater[largest] = False
    body_area = component_area[~is_floater].sum()

    boundary = topology.edge_face_count == 1
    boundary_edges = topology.edges[boundary]
    boundary_length = float(np.linalg.norm(vertices[boundary_edges[:, 0]] - vertices[boundary_edges[:, 1]], axis=1).sum())

    non_manifold_edge = topology.edge_face_count > 2
    non_manifold_vertex = _non_manifold_vertex_mask(faces_t, topology, len(vertices))
    non_manifold_face = non_manifold_edge[topology.face_edges].any(axis=1) | non_manifold_vertex[faces_t].any(axis=1)

    return {
        "n_faces": float(n_faces_total),
        "n_components": float(len(component_area)),
        "n_floaters": float(is_floater.sum()),
        "largest_component_share_of_body": float(component_area[largest] / body_area) if body_area > 0 else 1.0,
        "boundary_edges": float(boundary.sum()),
        "boundary_length_over_sqrt_area": boundary_length / np.sqrt(total_area) if total_area > 0 else 0.0,
        "non_manifold_edges": float(non_manifold_edge.sum()),
        "non_manifold_vertices": float(non_manifold_vertex.sum()),
        "non_manifold_face_share": float(non_manifold_face.sum()) / n_faces_total,
        "self_intersecting_face_share": _self_intersecting_face_count(vertices, faces_t) / n_faces_total,
        "misoriented_face_share": _misoriented_face_count(topology, len(faces_t)) / n_faces_total,
        "degenerate_face_share": float(degenerate.sum()) / n_faces_total,
    }


def components_from_measurements(measurements: dict[str, float]) -> dict[str, float]:
    """Map raw measurements to the seven components, each in [0, 1] (0 = no defect)."""
    return {
        "floaters": saturate(measurements["n_floaters"], FLOATER_HALF_COUNT),
        "fragmentation": float(1.0 - measurements["largest_component_share_of_body"]),
        "open_surface": saturate(measurements["boundary_length_over_sqrt_area"], OPEN_HALF_RATIO),
        "non_manifold": saturate(measurements["non_manifold_face_share"], NON_MANIFOLD_HALF_SHARE),
        "self_intersection": saturate(measurements["self_intersecting_face_share"], SELF_INTERSECTION_HALF_SHARE),
        "orientation": saturate(measurements["misoriented_face_share"], ORIENTATION_HALF_SHARE),
        "degenerate": saturate(measurements["degenerate_face_share"], DEGENERATE_HALF_SHARE),
    }


def geometry_score(
    mesh: trimesh.Trimesh | str | os.PathLike, weights: GeometryWeights | None = None
) -> GeometryReport:
    """The geometry score of a mesh (or mesh file) in [0, 1], lower is better, with its components.

    See the module docstring for the definition; it is ours, not the paper's.
    """
    normalised_weights = (weights or GeometryWeights()).normalised()
    measurements = geometry_measurements(mesh)
    components = components_from_measurements(measurements)
    score = float(sum(normalised_weights[name] * components[name] for name in COMPONENT_NAMES))
    return GeometryReport(score=score, components=components, measurements=measurements, weights=normalised_weights)
