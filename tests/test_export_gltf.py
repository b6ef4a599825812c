"""Mesh export writes exactly one file per output: .gltf embeds its buffers, so exports cannot clobber each other."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import trimesh
from PIL import Image

from vlm3d_ttg.export import MESH_SUFFIXES, save_mesh
from vlm3d_ttg.io import atomic_path


def _shape(kind: str) -> trimesh.Trimesh:
    # Two meshes with different vertex and face counts: a buffer of one read as the other's is detected.
    if kind == "box":
        return trimesh.creation.box(extents=(1.0, 0.5, 0.25))
    return trimesh.creation.icosphere(subdivisions=2, radius=0.7)


def test_two_gltf_exports_into_one_folder_both_load(tmp_path):
    meshes = {"first.gltf": _shape("box"), "second.gltf": _shape("sphere")}
    for name, mesh in meshes.items():
        # As generation.py does: written to a staged temp path that is renamed onto the output.
        with atomic_path(tmp_path / name) as staged:
            save_mesh(mesh, staged)
    # Nothing but the two outputs: no buffer side files (with fixed names) next to them.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(meshes)
    for name, mesh in meshes.items():
        header = json.loads((tmp_path / name).read_text())
        uris = [buffer["uri"] for buffer in header["buffers"]]
        assert uris and all(uri.startswith("data:application/octet-stream;base64,") for uri in uris)
        base64.b64decode(uris[0].split(",", 1)[1], validate=True)
        loaded = trimesh.load(tmp_path / name, force="mesh", process=False)
        assert loaded.vertices.shape == mesh.vertices.shape and loaded.faces.shape == mesh.faces.shape
        np.testing.assert_allclose(loaded.vertices, mesh.vertices, atol=1e-6)
        np.testing.assert_array_equal(loaded.faces, mesh.faces)


def test_every_format_is_one_file_that_round_trips(tmp_path):
    mesh = _shape("sphere")
    for suffix in MESH_SUFFIXES:
        folder = tmp_path / suffix.lstrip(".")
        save_mesh(mesh, folder / f"mesh{suffix}")
        assert [p.name for p in folder.iterdir()] == [f"mesh{suffix}"], suffix
        loaded = trimesh.load(folder / f"mesh{suffix}", force="mesh", process=False)
        # STL stores triangle soup; compare the surface instead of vertex lists.
        assert loaded.area == pytest.approx(mesh.area, rel=1e-4), suffix


def test_textured_obj_writes_no_material_side_files(tmp_path):
    mesh = _shape("box")
    mesh.visual = trimesh.visual.TextureVisuals(uv=np.random.default_rng(0).random((len(mesh.vertices), 2)),
                                                image=Image.new("RGB", (4, 4), (200, 30, 30)))
    save_mesh(mesh, tmp_path / "a.obj")
    save_mesh(_shape("sphere"), tmp_path / "b.obj")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.obj", "b.obj"]
    assert len(trimesh.load(tmp_path / "a.obj", force="mesh", process=False).faces) == len(mesh.faces)
