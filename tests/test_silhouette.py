"""The input-silhouette term: soft IoU and its gradient, the camera estimate, and the recorded camera
re-projecting the exported mesh file (numpy only) onto the mask the run wrote.

Real renderer, real hy3dgen image processor, tiny checkpoints; no stand-ins.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from vlm3d_ttg.errors import InvalidInputError
from vlm3d_ttg.generation import GenerationOptions, LoadedModels, generate_mesh
from vlm3d_ttg.guidance import GuidanceConfig
from vlm3d_ttg.render import orbit_cameras, render_mesh
from vlm3d_ttg.silhouette import (
    ReferenceCamera,
    SilhouetteTerm,
    binary_iou,
    estimate_reference_camera,
    soft_iou,
)
from vlm3d_ttg.terms import Views
from vlm3d_ttg.backbones.hunyuan3d2 import condition_foreground as foreground_mask, export_frame_matrix


def test_soft_iou_is_the_iou_on_binary_masks_and_its_gradient_matches_finite_differences():
    generator = torch.Generator().manual_seed(0)
    a = (torch.rand(12, 12, generator=generator) > 0.5).double()
    b = (torch.rand(12, 12, generator=generator) > 0.4).double()
    assert float(soft_iou(a, b)) == pytest.approx(binary_iou(a.numpy(), b.numpy()), abs=1e-6)
    coverage = torch.rand(12, 12, generator=generator, dtype=torch.float64).requires_grad_(True)
    target = torch.rand(12, 12, generator=generator, dtype=torch.float64)
    (grad,) = torch.autograd.grad(soft_iou(coverage, target), coverage)
    h = 1e-6
    for index in [(0, 0), (3, 7), (11, 5)]:
        plus, minus = coverage.detach().clone(), coverage.detach().clone()
        plus[index] += h
        minus[index] -= h
        numeric = (float(soft_iou(plus, target)) - float(soft_iou(minus, target))) / (2 * h)
        assert float(grad[index]) == pytest.approx(numeric, rel=1e-5, abs=1e-9)


def _object() -> trimesh.Trimesh:
    """An asymmetric object (a box with a ball on one corner and a post on another): one best camera."""
    body = trimesh.creation.box((0.9, 0.5, 0.4))
    ball = trimesh.creation.icosphere(2, 0.22).apply_translation((0.45, 0.35, 0.1))
    post = trimesh.creation.box((0.12, 0.6, 0.12)).apply_translation((-0.4, 0.4, -0.12))
    return trimesh.util.concatenate([body, ball, post])


def _picture(mesh: trimesh.Trimesh, azimuth: float, elevation: float, size: int = 200) -> Image.Image:
    cameras = orbit_cameras(azimuths_deg=[azimuth], elevation_deg=elevation, image_size=size)
    result = render_mesh(torch.tensor(mesh.vertices, dtype=torch.float32), torch.tensor(mesh.faces), cameras)
    alpha = (result.masks[0, 0].numpy() > 0.5).astype(np.uint8) * 255
    rgb = np.full((size, size, 3), 120, np.uint8)
    return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")


def test_the_camera_estimate_finds_a_side_view_through_hy3dgens_preprocessing(tiny_pipeline):
    """The input is the object from az 60°, el 15° (not a front view), then recentred by hy3dgen's
    own processor; the estimate on the object's mesh finds that view and fits it closely."""
    mesh = _object()
    target = foreground_mask(tiny_pipeline.image_processor, _picture(mesh, 60.0, 15.0), 112)
    camera = estimate_reference_camera(torch.tensor(mesh.vertices, dtype=torch.float32), torch.tensor(mesh.faces), target)
    assert camera.azimuth_deg == pytest.approx(60.0, abs=5.0)
    assert camera.elevation_deg == pytest.approx(15.0, abs=5.0)
    assert camera.fit_iou > 0.9
    # hy3dgen's recentring made the object larger than our orbit camera shows it: the fit says so.
    assert camera.scale > 1.0


def test_the_term_follows_its_camera_and_its_vertex_gradient_matches_finite_differences():
    """d softIoU / d(shift of the mesh) through the renderer's antialiased coverage."""
    mesh = trimesh.creation.icosphere(3, 0.5)
    vertices = torch.tensor(mesh.vertices, dtype=torch.float64)
    faces = torch.tensor(mesh.faces)
    camera = ReferenceCamera(0.0, 0.0, 1.0, (0.0, 0.0), 48, 1.0)
    cameras = camera.cameras(dtype=torch.float64)
    target = render_mesh((vertices + torch.tensor([0.15, 0.0, 0.0], dtype=torch.float64)).float(), faces,
                         camera.cameras()).masks[0, 0].double()
    term = SilhouetteTerm(target, camera)
    assert term.cameras(orbit_cameras(2)) is term.cameras(orbit_cameras(2))

    def value(shift: torch.Tensor) -> torch.Tensor:
        moved = vertices + torch.stack([shift, torch.zeros_like(shift), torch.zeros_like(shift)])
        rendered = render_mesh(moved, faces, cameras)
        return term(Views(rendered.images, rendered.masks, cameras)).value

    shift = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(value(shift), shift)
    h = 2e-3
    numeric = (float(value(torch.tensor(0.05 + h, dtype=torch.float64)))
               - float(value(torch.tensor(0.05 - h, dtype=torch.float64)))) / (2 * h)
    assert float(grad) > 0  # moving towards the target raises the IoU
    assert float(grad) == pytest.approx(numeric, rel=0.1)


def test_bad_weights_are_refused():
    with pytest.raises(InvalidInputError, match="silhouette_weight"):
        GuidanceConfig(silhouette_weight=-1.0).validate()
    with pytest.raises(InvalidInputError, match="silhouette_weight"):
        GuidanceConfig(silhouette_weight=float("nan")).validate()
    assert GuidanceConfig().silhouette_weight == 0.0


def _rasterise(vertices: np.ndarray, faces: np.ndarray, view: np.ndarray, projection: np.ndarray, size: int) -> np.ndarray:
    """Coverage of a mesh at pixel centres (numpy only, no package code): a pixel is covered when its
    centre lies inside a projected triangle."""
    homogeneous = np.c_[vertices, np.ones(len(vertices))] @ (projection @ view).T
    ndc = homogeneous[:, :2] / homogeneous[:, 3:4]
    xy = np.c_[(ndc[:, 0] + 1) * size / 2 - 0.5, (1 - ndc[:, 1]) * size / 2 - 0.5]  # pixel centres at integers
    covered = np.zeros((size, size), bool)
    for tri in xy[faces]:
        lo = np.clip(np.ceil(tri.min(0)), 0, size - 1).astype(int)
        hi = np.clip(np.floor(tri.max(0)), -1, size - 1).astype(int)
        if (hi < lo).any():
            continue
        cols, rows = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1))
        edges = [(tri[c, 0] - tri[a, 0]) * (rows - tri[a, 1]) - (tri[c, 1] - tri[a, 1]) * (cols - tri[a, 0])
                 for a, c in ((0, 1), (1, 2), (2, 0))]
        inside = np.all([e >= 0 for e in edges], 0) | np.all([e <= 0 for e in edges], 0)
        covered[rows[inside], cols[inside]] = True
    return covered


@pytest.fixture
def dit_calls(monkeypatch):
    """The step of every DiT velocity call the tiny Hunyuan backbone makes, in order."""
    from vlm3d_ttg.backbones.hunyuan3d2 import HunyuanBackbone

    calls = []
    velocity = HunyuanBackbone.velocity

    def counted(self, latents, step, context):
        calls.append(step)
        return velocity(self, latents, step, context)

    monkeypatch.setattr(HunyuanBackbone, "velocity", counted)
    return calls


def test_a_weight_0_guided_run_fixes_its_camera_on_the_first_guided_shape_without_another_dit_call(
        tmp_path, tiny_pipeline, tiny_vlm, dit_calls, rgba_image):
    """The silhouette term watches the guided x̂s also at weight 0 (an observer of the reward), so the camera
    comes from the first guided step itself: one DiT call per step, none after sampling."""
    calls = dit_calls
    models = LoadedModels(tiny_pipeline, *tiny_vlm, "tiny", "tiny", preset="tiny")
    out = tmp_path / "m.glb"
    config = GuidanceConfig(num_views=1, view_size=56, grid_resolution=32, sigma_window=(0.1, 0.9))
    generate_mesh(models, image=rgba_image, prompt="a pot", out=out, options=GenerationOptions(seed=1, steps=6, octree_resolution=32),
                  manifest_path=out.with_name("m.json"), guidance=config, progress=False)
    manifest = json.loads(out.with_name("m.json").read_text())
    assert calls == list(range(6)), calls
    first_guided = min(r["step"] for r in manifest["records"] if r["guided"])
    assert manifest["silhouette"]["camera"]["estimated_at"]["step"] == first_guided
    assert manifest["final_silhouette_iou"] is not None and set(manifest["final_terms"]) == {"vlm"}


def test_a_run_that_guides_nothing_shows_the_term_the_first_observation_steps_shape_in_the_loop(
        tmp_path, tiny_pipeline, tiny_vlm, dit_calls, rgba_image):
    """--no-guidance: the reward keeps the weight-0 term as an observer and the sampler shows it x̂ of the first
    step the guidance schedule would guide (one DiT call more, at that step, on candidate 0's latent), so the
    camera is fitted there; nothing after sampling."""
    from vlm3d_ttg.search import observation_steps

    calls = dit_calls
    models = LoadedModels(tiny_pipeline, *tiny_vlm, "tiny", "tiny", preset="tiny")
    out = tmp_path / "m.glb"
    config = GuidanceConfig(enabled=False, num_views=1, view_size=56, grid_resolution=32, sigma_window=(0.1, 0.9))
    generate_mesh(models, image=rgba_image, prompt="a pot", out=out, options=GenerationOptions(seed=1, steps=6, octree_resolution=32),
                  manifest_path=out.with_name("m.json"), guidance=config, progress=False)
    manifest = json.loads(out.with_name("m.json").read_text())
    first = observation_steps(models.backbone.schedule(6), config, None)[0]
    assert calls == sorted([*range(6), first]), calls  # the loop's calls, and one more at the first observation step
    assert manifest["silhouette"]["camera"]["estimated_at"]["step"] == first and manifest["final_silhouette_iou"] is not None


def test_guided_and_unguided_runs_share_the_camera_that_reprojects_the_exported_mesh(
        tmp_path, tiny_pipeline, tiny_vlm, capsys, rgba_image):
    from vlm3d_ttg.commands.generate import _print_summary

    guided, base = tmp_path / "guided.glb", tmp_path / "base.glb"
    models = LoadedModels(tiny_pipeline, *tiny_vlm, "tiny", "tiny", preset="tiny")
    options = GenerationOptions(seed=1, steps=6, octree_resolution=32)
    settings = dict(num_views=1, view_size=56, grid_resolution=32, sigma_window=(0.1, 0.9))
    results = {}
    for path, config in ((guided, GuidanceConfig(silhouette_weight=2.0, **settings)),
                         (base, GuidanceConfig(enabled=False, **settings))):  # the unguided baseline, same seed
        results[path] = generate_mesh(models, image=rgba_image, prompt="a pot", out=path, options=options,
                                      manifest_path=path.with_name(path.name + ".json"), guidance=config, progress=False)
    _print_summary(results[guided], GuidanceConfig(silhouette_weight=2.0, **settings), 1.0)
    stdout = capsys.readouterr().out
    assert "silhouette final IoU" in stdout and "silhouette = " in stdout
    g = json.loads(guided.with_name(guided.name + ".json").read_text())
    b = json.loads(base.with_name(base.name + ".json").read_text())

    # One camera for both runs: estimated on the same x̂ (the first of the guidance schedule).
    assert g["silhouette"]["camera"] == b["silhouette"]["camera"]
    camera = g["silhouette"]["camera"]
    assert camera["estimated_at"]["step"] == min(r["step"] for r in g["records"] if r["guided"])
    steps = [r for r in g["records"] if r["guided"] and not r["skipped"]]
    assert steps and all(set(r["terms"]) == {"vlm", "silhouette"} for r in steps)
    assert set(g["final_terms"]) == {"vlm", "silhouette"} and set(b["final_terms"]) == {"vlm"}

    for manifest, mesh_path in ((g, guided), (b, base)):
        mask_path = mesh_path.with_name(mesh_path.name + ".silhouette.png")
        assert manifest["outputs"]["silhouette_mask"] == str(mask_path)
        target = np.asarray(Image.open(mask_path)) >= 128  # 0.5 and above, as the IoU counts it
        size = camera["image_size"]
        assert target.shape == (size, size) and target.any()
        # The mesh file as users load it, projected with the recorded matrices by numpy alone.
        mesh = trimesh.load(mesh_path, force="mesh")
        projected = _rasterise(np.asarray(mesh.vertices), np.asarray(mesh.faces), np.array(camera["world_to_camera"]),
                               np.array(camera["projection"]), size)
        assert binary_iou(projected, target) == pytest.approx(manifest["final_silhouette_iou"], abs=0.004)
        assert 0.0 < manifest["final_silhouette_iou"] <= 1.0


def test_the_export_frame_map_takes_hy3dgens_exported_mesh_onto_the_decoded_surface(tiny_pipeline):
    """The same latent through hy3dgen's export and through our surface extraction on the same grid:
    `export_frame_matrix` maps the exported vertices onto ours (without it they are off by ~a cell)."""
    from scipy.spatial import cKDTree

    from vlm3d_ttg.backbones import as_backbone
    from vlm3d_ttg.surface import SurfaceConfig, extract_surface

    resolution = 32
    backbone = as_backbone(tiny_pipeline)
    latent = torch.randn(1, 32, 8, generator=torch.Generator().manual_seed(4))
    exported = backbone.to_mesh(latent, octree_resolution=resolution, num_chunks=8000, bounds=1.01, level=0.0)
    ours = extract_surface(backbone.occupancy_field(latent), SurfaceConfig(resolution=resolution, coarse_resolution=None))
    assert np.allclose(backbone.export_frame(resolution), export_frame_matrix(resolution))
    tree = cKDTree(ours.vertices.detach().numpy())
    mapped = (np.c_[exported.vertices, np.ones(len(exported.vertices))] @ export_frame_matrix(resolution).T)[:, :3]
    assert np.median(tree.query(mapped)[0]) < 1e-3 * 2.02 / resolution
    assert np.median(tree.query(np.asarray(exported.vertices))[0]) > 0.1 * 2.02 / resolution
