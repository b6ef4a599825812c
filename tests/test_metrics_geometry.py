"""Geometry score: each defect raises its own component; the score ignores scale and UV seams."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from PIL import Image

from vlm3d_ttg.metrics.geometry import COMPONENT_NAMES, GeometryWeights, geometry_score


def sphere(subdivisions: int = 3, radius: float = 1.0, center=(0.0, 0.0, 0.0)) -> trimesh.Trimesh:
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    mesh.apply_translation(center)
    return mesh


def combine(*meshes: trimesh.Trimesh) -> trimesh.Trimesh:
    return trimesh.util.concatenate(list(meshes))


def with_faces(mesh: trimesh.Trimesh, faces: np.ndarray, vertices: np.ndarray | None = None) -> trimesh.Trimesh:
    return trimesh.Trimesh(mesh.vertices if vertices is None else vertices, faces, process=False)


def nonzero(report) -> set[str]:
    return {name for name, value in report.components.items() if value > 1e-9}


def test_clean_sphere_scores_zero():
    report = geometry_score(sphere())
    assert report.score == pytest.approx(0.0, abs=1e-12)
    assert set(report.components) == set(COMPONENT_NAMES)
    assert report.measurements["n_components"] == 1 and report.measurements["boundary_edges"] == 0


def test_marching_cubes_sphere_is_nearly_clean():
    from skimage.measure import marching_cubes

    axis = np.linspace(-1.0, 1.0, 48)
    grid = np.linalg.norm(np.stack(np.meshgrid(axis, axis, axis, indexing="ij")), axis=0) - 0.7
    vertices, faces, _, _ = marching_cubes(grid, level=0.0)
    report = geometry_score(trimesh.Trimesh(vertices, faces, process=False))
    assert nonzero(report) <= {"degenerate"}  # marching cubes may emit zero-area faces, nothing else
    assert report.score < 0.01


def test_two_disjoint_spheres_raise_fragmentation_only():
    report = geometry_score(combine(sphere(), sphere(center=(3.0, 0.0, 0.0))))
    assert nonzero(report) == {"fragmentation"}
    assert report.components["fragmentation"] == pytest.approx(0.5, abs=1e-9)  # two equal bodies


def test_tiny_floater_raises_floaters_not_fragmentation():
    report = geometry_score(combine(sphere(), sphere(subdivisions=1, radius=0.05, center=(1.5, 0.0, 0.0))))
    assert nonzero(report) == {"floaters"}
    assert report.measurements["n_floaters"] == 1


def test_sphere_with_a_hole_raises_open_surface_only():
    mesh = sphere()
    open_mesh = with_faces(mesh, mesh.faces[mesh.triangles_center[:, 2] < 0.9])
    report = geometry_score(open_mesh)
    assert nonzero(report) == {"open_surface"}
    hemisphere = with_faces(mesh, mesh.faces[mesh.triangles_center[:, 2] < 0.0])
    assert geometry_score(hemisphere).components["open_surface"] > report.components["open_surface"]


def test_interpenetrating_spheres_raise_self_intersection():
    # Offset chosen so that no vertex of one sphere coincides with a vertex of the other.
    report = geometry_score(combine(sphere(), sphere(center=(0.7, 0.05, 0.03))))
    assert "self_intersection" in nonzero(report)
    assert report.measurements["self_intersecting_face_share"] > 0.01
    assert {"open_surface", "non_manifold", "orientation", "floaters"}.isdisjoint(nonzero(report))
    assert geometry_score(combine(sphere(), sphere(center=(3.0, 0.0, 0.0)))).components["self_intersection"] == 0.0


def test_flipped_faces_raise_orientation_only():
    mesh = sphere()
    faces = mesh.faces.copy()
    flipped = np.random.default_rng(0).choice(len(faces), size=len(faces) // 20, replace=False)
    faces[flipped] = faces[flipped][:, ::-1]
    report = geometry_score(with_faces(mesh, faces))
    assert nonzero(report) == {"orientation"}
    assert report.measurements["misoriented_face_share"] == pytest.approx(len(flipped) / len(faces))


def test_inside_out_sphere_is_consistently_oriented():
    mesh = sphere()
    assert geometry_score(with_faces(mesh, mesh.faces[:, ::-1].copy())).score == pytest.approx(0.0, abs=1e-12)


def test_non_manifold_edge_and_vertex_raise_non_manifold():
    mesh = sphere()
    edge = mesh.edges_unique[0]
    fin_vertices = np.vstack([mesh.vertices, [[2.0, 0.0, 0.0]]])
    fin_faces = np.vstack([mesh.faces, [[edge[0], edge[1], len(mesh.vertices)]]])
    fin = geometry_score(with_faces(mesh, fin_faces, fin_vertices))
    assert fin.measurements["non_manifold_edges"] == 1 and fin.components["non_manifold"] > 0

    # Two closed boxes touching at one corner: a non-manifold vertex, no non-manifold edge.
    corner_touch = combine(trimesh.creation.box(), trimesh.creation.box().apply_translation([1.0, 1.0, 1.0]))
    bowtie = geometry_score(corner_touch)
    assert bowtie.measurements["non_manifold_vertices"] == 1 and bowtie.measurements["non_manifold_edges"] == 0
    assert bowtie.components["non_manifold"] > 0 and bowtie.components["open_surface"] == 0


def test_degenerate_faces_raise_degenerate():
    mesh = sphere()
    a, b = mesh.faces[0][:2]
    midpoint = (mesh.vertices[a] + mesh.vertices[b]) / 2.0
    vertices = np.vstack([mesh.vertices, [midpoint]])
    # A face with a repeated vertex, and a zero-area face on three collinear points.
    faces = np.vstack([mesh.faces, [[0, 0, 1]], [[a, len(mesh.vertices), b]]])
    report = geometry_score(with_faces(mesh, faces, vertices))
    assert "degenerate" in nonzero(report)
    assert report.measurements["degenerate_face_share"] == pytest.approx(2 / len(faces))


def broken_mesh() -> trimesh.Trimesh:
    """A sphere with a hole and flipped faces, plus a floater and an interpenetrating second body."""
    mesh = sphere()
    faces = mesh.faces[mesh.triangles_center[:, 2] < 0.8].copy()
    faces[:10] = faces[:10, ::-1]
    body = with_faces(mesh, faces)
    return combine(body, sphere(subdivisions=1, radius=0.04, center=(1.6, 0.0, 0.0)), sphere(2, 0.6, (0.9, 0.05, 0.03)))


@pytest.mark.parametrize("scale", [1e-3, 7.3, 1e3])
def test_score_does_not_change_with_scale_or_position(scale):
    reference = geometry_score(broken_mesh())
    moved = broken_mesh()
    moved.apply_scale(scale)
    moved.apply_translation([5.0 * scale, -2.0, 0.5])
    report = geometry_score(moved)
    assert len(nonzero(reference)) >= 5  # the comparison covers most components
    assert report.score == pytest.approx(reference.score, rel=1e-9, abs=1e-12)
    for name in COMPONENT_NAMES:
        assert report.components[name] == pytest.approx(reference.components[name], rel=1e-9, abs=1e-12), name


def test_score_is_the_weighted_mean_of_components():
    report = geometry_score(broken_mesh())
    assert 0.0 < report.score < 1.0
    assert all(0.0 <= value <= 1.0 for value in report.components.values())
    assert report.score == pytest.approx(sum(report.weights[n] * report.components[n] for n in COMPONENT_NAMES))
    assert sum(report.weights.values()) == pytest.approx(1.0)
    only_floaters = geometry_score(broken_mesh(), GeometryWeights(**{n: float(n == "floaters") for n in COMPONENT_NAMES}))
    assert only_floaters.score == pytest.approx(report.components["floaters"])


def uv_seamed_sphere() -> trimesh.Trimesh:
    """A sphere with a spherical UV map, vertices duplicated wherever a corner's UV differs (the seam)."""
    mesh = sphere()
    corners = mesh.vertices[mesh.faces]  # (F, 3, 3)
    u = np.arctan2(corners[..., 1], corners[..., 0]) / (2 * np.pi) + 0.5
    v = np.arccos(np.clip(corners[..., 2], -1.0, 1.0)) / np.pi
    crosses_seam = (u.max(axis=1) - u.min(axis=1)) > 0.5
    u = np.where(crosses_seam[:, None] & (u < 0.5), u + 1.0, u)
    keys = np.stack([mesh.faces.reshape(-1), np.round(u.reshape(-1), 9), np.round(v.reshape(-1), 9)], axis=1)
    unique_keys, corner_to_vertex = np.unique(keys, axis=0, return_inverse=True)
    vertices = mesh.vertices[unique_keys[:, 0].astype(int)]
    uv = unique_keys[:, 1:]
    texture = trimesh.visual.TextureVisuals(uv=uv, image=Image.new("RGB", (8, 8), (200, 120, 40)))
    return trimesh.Trimesh(vertices, corner_to_vertex.reshape(-1, 3), visual=texture, process=False)


def test_glb_split_at_uv_seams_is_not_called_open(tmp_path):
    path = tmp_path / "seamed.glb"
    uv_seamed_sphere().export(path)
    loaded = trimesh.load(path, force="mesh")
    as_stored = trimesh.Trimesh(loaded.vertices, loaded.faces, process=False)
    assert len(loaded.vertices) > len(sphere().vertices)  # the file really has split vertices
    assert not as_stored.is_watertight  # so a check without merging would call it open
    report = geometry_score(path)
    assert report.components["open_surface"] == 0.0
    assert report.score == pytest.approx(0.0, abs=1e-12)
