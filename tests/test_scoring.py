"""Mesh files framed and rendered for scoring: one rule for `vlm3d-ttg score` and the benchmark."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from vlm3d_ttg.errors import InvalidInputError
from vlm3d_ttg.export import save_mesh
from vlm3d_ttg.render import Renderer, orbit_cameras
from vlm3d_ttg.scoring import (
    DECODED_CUBE_HALF_SIDE,
    REFRAMED_HALF_SIDE,
    load_mesh_for_scoring,
    load_view_files,
    render_mesh_file,
)


def _lopsided_mesh() -> trimesh.Trimesh:
    # Off-centre and anisotropic, within hy3dgen's cube: a stand-in for a generated shape.
    box = trimesh.creation.box(extents=(0.9, 0.5, 0.3))
    box.apply_translation((0.4, -0.3, 0.2))
    return box


@pytest.mark.parametrize("suffix", [".glb", ".obj", ".ply"])
def test_a_mesh_inside_the_cube_keeps_its_coordinates(tmp_path, suffix):
    # A generated mesh must be scored where the critic saw it during guidance: no reframing.
    mesh = _lopsided_mesh()
    path = save_mesh(mesh, tmp_path / f"shape{suffix}")
    loaded = load_mesh_for_scoring(path)
    assert not loaded.reframed
    assert loaded.vertices.dtype == np.float32 and loaded.faces.dtype == np.int64
    assert np.allclose(loaded.vertices, mesh.vertices, atol=1e-6)
    assert np.array_equal(loaded.faces, mesh.faces)


def test_a_file_renders_like_the_mesh_in_memory(tmp_path):
    # What `score` and the benchmark see of a written GLB is what the renderer gives the mesh itself.
    mesh = _lopsided_mesh()
    path = save_mesh(mesh, tmp_path / "shape.glb")
    cameras = orbit_cameras(3, image_size=40)  # any size: the renderer has no critic rule
    from_file = render_mesh_file(path, cameras)
    direct = Renderer()(torch.as_tensor(mesh.vertices, dtype=torch.float32), torch.as_tensor(mesh.faces), cameras).images
    assert from_file.shape == (3, 3, 40, 40) and from_file.dtype == torch.float32 and not from_file.requires_grad
    assert torch.allclose(from_file, direct.clamp(0, 1), atol=1e-5)
    assert float(from_file.min()) < 0.9  # the object is in the picture


def test_a_mesh_outside_the_cube_is_centred_and_scaled_into_it(tmp_path):
    mesh = trimesh.creation.box(extents=(100.0, 40.0, 20.0))
    mesh.apply_translation((500.0, 0.0, -30.0))
    path = save_mesh(mesh, tmp_path / "centimetres.obj")
    loaded = load_mesh_for_scoring(path)
    assert loaded.reframed
    low, high = loaded.vertices.min(axis=0), loaded.vertices.max(axis=0)
    assert np.allclose((low + high) / 2, 0, atol=1e-5)
    assert float((high - low).max()) == pytest.approx(2 * REFRAMED_HALF_SIDE, rel=1e-6)
    assert np.allclose((high - low) / (high - low).max(), [1.0, 0.4, 0.2], atol=1e-6)  # uniform scale
    assert float(np.abs(loaded.vertices).max()) <= DECODED_CUBE_HALF_SIDE
    # ... and it fills the picture instead of surrounding the camera.
    views = loaded.render(orbit_cameras(1, image_size=32))
    assert float(views.min()) < 0.9


def test_the_cube_boundary_decides(tmp_path):
    inside = trimesh.creation.box(extents=(2 * DECODED_CUBE_HALF_SIDE - 1e-3,) * 3)
    outside = trimesh.creation.box(extents=(2 * DECODED_CUBE_HALF_SIDE + 1e-3,) * 3)
    assert not load_mesh_for_scoring(save_mesh(inside, tmp_path / "inside.ply")).reframed
    assert load_mesh_for_scoring(save_mesh(outside, tmp_path / "outside.ply")).reframed


def test_unusable_mesh_files_are_refused(tmp_path):
    garbage = tmp_path / "garbage.glb"
    garbage.write_bytes(b"not a mesh at all")
    with pytest.raises(InvalidInputError, match="Cannot read mesh"):
        load_mesh_for_scoring(garbage)
    points = tmp_path / "points.ply"
    trimesh.PointCloud(np.random.default_rng(0).random((10, 3))).export(points)
    with pytest.raises(InvalidInputError, match="no triangles"):
        load_mesh_for_scoring(points)
    nan_obj = tmp_path / "nan.obj"
    nan_obj.write_text("v 0 0 0\nv 1 0 0\nv nan 1 0\nf 1 2 3\n")
    with pytest.raises(InvalidInputError, match="non-finite"):
        load_mesh_for_scoring(nan_obj)
    flat_far = tmp_path / "point_far.obj"
    flat_far.write_text("v 5 5 5\nv 5 5 5\nv 5 5 5\nf 1 2 3\n")
    with pytest.raises(InvalidInputError, match="no extent"):
        load_mesh_for_scoring(flat_far)


def test_view_files_need_one_size(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    paths = []
    for index, size in enumerate([(30, 20), (30, 20), (31, 20)]):
        path = tmp_path / f"v{index}.png"
        Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(path)
    views = load_view_files(paths[:2])
    assert views.shape == (2, 3, 20, 30) and 0 <= float(views.min()) and float(views.max()) <= 1
    with pytest.raises(InvalidInputError, match="same size"):
        load_view_files(paths)
    with pytest.raises(InvalidInputError, match="No image files"):
        load_view_files([])
