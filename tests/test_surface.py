"""Surface extraction and its implicit-function gradient (vlm3d_ttg.surface).

Finite-difference conventions used below: the implicit-function gradient describes how the
*surface* moves, i.e. the motion of each vertex along its normal. Re-running marching cubes on a
perturbed latent also slides vertices along grid edges (a grid artefact, not a shape change), so
the reference for per-vertex comparisons is the displacement of the perturbed level set along the
fixed vertex normal (found by Newton's method on the field), and marching cubes' own vertex motion
is compared only in aggregate (smooth weights).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from vlm3d_ttg.errors import EmptySurfaceError, InvalidInputError
from vlm3d_ttg.render import orbit_cameras, render_mesh
from vlm3d_ttg.backbones.hunyuan3d2 import extract_shapevae_surface as extract_surface
from vlm3d_ttg.backbones.hunyuan3d2 import plain_cross_attention, shapevae_field, shapevae_tokens
from vlm3d_ttg.surface import SurfaceConfig, evaluate_occupancy_grid, extract_surface_from_field


def sphere_logits(scale: float, shape: str = "linear"):
    """An analytic field with the radius as its parameter: inside positive, |∇s| = scale at the surface."""

    def field(points: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
        distance = radius - points.norm(dim=-1)
        if shape == "tanh":  # occupancy-like: saturates at ±4 away from the surface
            return 4.0 * torch.tanh(scale / 4.0 * distance)
        return scale * distance

    return field


@pytest.fixture(scope="module")
def vae64(tiny_pipeline):
    """A float64 copy of the tiny ShapeVAE (the session pipeline is left untouched)."""
    return copy.deepcopy(tiny_pipeline.vae).to(torch.float64)


@pytest.fixture(scope="module")
def latent64(vae64):
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, *vae64.latent_shape, generator=generator, dtype=torch.float64)


def field_normals(vae, latent, vertices):
    """Outward unit normals -∇s/|∇s| of the decoder field at `vertices` (autograd, detached)."""
    field = shapevae_field(vae)
    with torch.no_grad():
        tokens = shapevae_tokens(vae, latent)
    points = vertices.detach().clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(field(points, tokens).sum(), points)
    return -gradient / gradient.norm(dim=-1, keepdim=True)


def level_set_offsets(vae, latent, origins, directions, iterations=8):
    """t such that s(origin + t·direction; latent) = 0 for every vertex (Newton along fixed lines)."""
    field = shapevae_field(vae)
    with torch.no_grad():
        tokens = shapevae_tokens(vae, latent)
    t = torch.zeros(origins.shape[0], dtype=origins.dtype)
    for _ in range(iterations):
        points = (origins + t[:, None] * directions).requires_grad_(True)
        values = field(points, tokens)
        (gradient,) = torch.autograd.grad(values.sum(), points)
        t = (t - values.detach() / (gradient * directions).sum(-1)).detach()
    return t


# --------------------------------------------------------------------------------------------
# Analytic sphere: d(vertices)/d(radius)


@pytest.mark.parametrize(
    "scale, shape, normal_source, tolerance",
    [
        (1.0, "linear", "autograd", 1e-9),  # a true SDF
        (25.0, "linear", "autograd", 1e-9),  # logits with |∇s| = 25: the 1/|∇s|² matters
        (25.0, "linear", "grid", 2e-3),  # ∇s from central differences of the grid
        (40.0, "tanh", "autograd", 1e-9),  # occupancy-like, saturating logits
        # Central differences over 2 cells underestimate |∇s| where the logits saturate (≈5% here):
        # why the exact autograd normal is the default.
        (40.0, "tanh", "grid", 1e-1),
    ],
)
def test_sphere_vertices_move_with_radius_as_the_analytic_normal(scale, shape, normal_source, tolerance):
    radius = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    config = SurfaceConfig(resolution=48, coarse_resolution=12, normal_source=normal_source)
    surface = extract_surface_from_field(sphere_logits(scale, shape), radius, config)
    vertices = surface.vertices
    # A sphere whose radius grows by dr moves every surface point by dr along its outward normal.
    analytic = vertices.detach() / vertices.detach().norm(dim=-1, keepdim=True)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        weights = torch.randn(vertices.shape, generator=generator, dtype=torch.float64)
        (gradient,) = torch.autograd.grad((vertices * weights).sum(), radius, retain_graph=True)
        expected = (weights * analytic).sum()
        assert abs(gradient - expected) <= tolerance * weights.abs().sum(), (float(gradient), float(expected))
    # Per-vertex: the radial component of dv/dr is 1 at every vertex.
    (radial,) = torch.autograd.grad((vertices * analytic).sum(), radius)
    assert radial.item() == pytest.approx(vertices.shape[0], rel=tolerance)


def test_unit_normal_formula_would_be_off_by_the_gradient_norm():
    """Why |∇s|² and not the unit normal: with s = k(r - |x|) the unit-normal form gives k·n̂."""
    radius = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    scale = 30.0
    surface = extract_surface_from_field(sphere_logits(scale), radius, SurfaceConfig(resolution=32, coarse_resolution=None))
    outward = surface.vertices.detach() / surface.vertices.detach().norm(dim=-1, keepdim=True)
    (radial,) = torch.autograd.grad((surface.vertices * outward).sum(), radius)
    per_vertex = radial.item() / surface.vertices.shape[0]
    assert per_vertex == pytest.approx(1.0, rel=1e-9)
    assert abs(per_vertex * scale - 1.0) > 1.0  # what dividing by |∇s| once would have returned


# --------------------------------------------------------------------------------------------
# Geometry of the extracted mesh


def test_vertices_lie_on_grid_edges_at_the_level_set(vae64, latent64):
    config = SurfaceConfig(resolution=40, coarse_resolution=None)
    surface = extract_surface(vae64, latent64, config)
    index = (surface.vertices.detach() + config.bounds) / config.spacing
    on_grid = (index - index.round()).abs() < 1e-9
    # Each marching-cubes vertex lies on a grid edge: at least two coordinates are grid values,
    # with spacing 2·bounds/resolution (not hy3dgen's 2·bounds/(resolution + 1)).
    assert bool((on_grid.sum(dim=1) >= 2).all())
    # ... and (to marching cubes' linear-interpolation accuracy) on the level set we re-query.
    field = shapevae_field(vae64)
    with torch.no_grad():
        tokens = shapevae_tokens(vae64, latent64)
        values = field(surface.vertices.detach(), tokens)
    normals = field_normals(vae64, latent64, surface.vertices)
    assert normals.shape == surface.vertices.shape
    assert float(values.abs().max()) < 0.05 * float(surface.grid.logits.abs().max())


def test_faces_are_wound_outward(vae64, latent64):
    surface = extract_surface(vae64, latent64, SurfaceConfig(resolution=40, coarse_resolution=10))
    vertices = surface.vertices.detach()
    tri = vertices[surface.faces]
    right_hand = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    outward = field_normals(vae64, latent64, tri.mean(dim=1))
    agreement = (right_hand * outward).sum(-1) > 0
    assert bool(agreement.all()), f"{int((~agreement).sum())} faces wound inward"
    signed_volume = torch.linalg.det(tri).sum() / 6
    assert signed_volume > 0
    mesh = surface.to_trimesh()
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0


def test_coarse_to_fine_gives_the_dense_mesh_with_far_fewer_queries(vae64, latent64):
    dense = extract_surface(vae64, latent64, SurfaceConfig(resolution=48, coarse_resolution=None))
    sparse = extract_surface(vae64, latent64, SurfaceConfig(resolution=48, coarse_resolution=12))
    # Same mesh: identical triangles and vertices (every cell with a sign change was evaluated
    # exactly), identical occupancy (IoU of {logits > 0} over the grid = 1), Chamfer distance 0.
    assert torch.equal(dense.faces, sparse.faces)
    assert torch.allclose(dense.vertices, sparse.vertices, atol=1e-12)
    inside_dense = dense.grid.logits > 0
    inside_sparse = sparse.grid.logits > 0
    iou = (inside_dense & inside_sparse).sum() / (inside_dense | inside_sparse).sum()
    assert iou.item() == 1.0
    assert bool(torch.isfinite(sparse.grid.logits).all())  # no NaN cells, unlike hy3dgen's hierarchical decoder
    assert dense.stats.grid_queries == 49**3
    assert sparse.stats.grid_queries * 4 <= dense.stats.grid_queries
    assert sparse.stats.query_reduction >= 4
    assert set(sparse.stats.queries_per_level) == {12, 24, 48}


def test_coarse_to_fine_follows_a_surface_the_coarse_level_misplaces():
    """A lumpy field whose coarse interpolation is off by several fine cells is still recovered."""
    radius = torch.tensor(0.55, dtype=torch.float64)

    def lumpy(points, r):
        x, y, z = points.unbind(-1)
        return 20 * (r + 0.08 * torch.sin(9 * x) * torch.sin(9 * y) * torch.sin(9 * z) - points.norm(dim=-1))

    dense = evaluate_occupancy_grid(lumpy, radius, SurfaceConfig(resolution=64, coarse_resolution=None), dtype=torch.float64)
    sparse = evaluate_occupancy_grid(lumpy, radius, SurfaceConfig(resolution=64, coarse_resolution=8), dtype=torch.float64)
    assert torch.equal(dense.logits > 0, sparse.logits > 0)


# --------------------------------------------------------------------------------------------
# Gradients through the tiny hy3dgen decoder


def test_vertex_gradient_matches_finite_differences_through_the_decoder(vae64, latent64):
    config = SurfaceConfig(resolution=48, coarse_resolution=12)
    latent = latent64.clone().requires_grad_(True)
    surface = extract_surface(vae64, latent, config)
    v0 = surface.vertices.detach()
    normals = field_normals(vae64, latent64, v0)
    generator = torch.Generator().manual_seed(2)
    amplitude = torch.randn(v0.shape[0], generator=generator, dtype=torch.float64)
    weights = amplitude[:, None] * normals  # Σ w·v with w along the normals: the shape's motion
    (gradient,) = torch.autograd.grad((surface.vertices * weights).sum(), latent)
    eps = 1e-5
    for _ in range(2):
        direction = torch.randn(latent64.shape, generator=generator, dtype=torch.float64)
        plus = level_set_offsets(vae64, latent64 + eps * direction, v0, normals)
        minus = level_set_offsets(vae64, latent64 - eps * direction, v0, normals)
        finite_difference = ((plus - minus) * amplitude).sum() / (2 * eps)
        analytic = (gradient * direction).sum()
        assert analytic.item() == pytest.approx(finite_difference.item(), rel=1e-2)


def test_marching_cubes_vertices_follow_the_gradient_in_aggregate(vae64, latent64):
    """Re-extracting on a perturbed latent moves the mesh as predicted, up to grid sliding."""
    config = SurfaceConfig(resolution=64, coarse_resolution=16)
    latent = latent64.clone().requires_grad_(True)
    surface = extract_surface(vae64, latent, config)
    v0 = surface.vertices.detach()
    weights = field_normals(vae64, latent64, v0) * (1.0 + v0[:, :1])  # smooth in space
    (gradient,) = torch.autograd.grad((surface.vertices * weights).sum(), latent)
    generator = torch.Generator().manual_seed(3)
    direction = torch.randn(latent64.shape, generator=generator, dtype=torch.float64)
    eps = 1e-5
    with torch.no_grad():
        plus = extract_surface(vae64, latent64 + eps * direction, config)
        minus = extract_surface(vae64, latent64 - eps * direction, config)
    assert torch.equal(plus.faces, surface.faces) and torch.equal(minus.faces, surface.faces)
    finite_difference = ((plus.vertices - minus.vertices) * weights).sum() / (2 * eps)
    assert (gradient * direction).sum().item() == pytest.approx(finite_difference.item(), rel=2e-2)


def test_image_gradient_matches_finite_differences_on_interior_pixels(vae64, latent64):
    config = SurfaceConfig(resolution=48, coarse_resolution=12)
    cameras = orbit_cameras(image_size=112, dtype=torch.float64)
    latent = latent64.clone().requires_grad_(True)
    surface = extract_surface(vae64, latent, config)
    views = render_mesh(surface.vertices, surface.faces, cameras, backend="cpu")
    v0 = surface.vertices.detach()
    normals = field_normals(vae64, latent64, v0)
    rest = level_set_offsets(vae64, latent64, v0, normals)

    generator = torch.Generator().manual_seed(4)
    direction = torch.randn(latent64.shape, generator=generator, dtype=torch.float64)
    eps = 1e-5
    moved = {}
    for sign in (1, -1):
        offsets = level_set_offsets(vae64, latent64 + sign * eps * direction, v0, normals) - rest
        moved[sign] = render_mesh(v0 + offsets[:, None] * normals, surface.faces, cameras, backend="cpu")
    # Interior pixels: covered, same visible triangle in all three renders, and so are their 8
    # neighbours (no silhouette, no visibility change within the finite-difference step).
    same = (views.face_ids >= 0) & (moved[1].face_ids == views.face_ids) & (moved[-1].face_ids == views.face_ids)
    interior = torch.nn.functional.max_pool2d((~same).to(torch.float64).unsqueeze(1), 3, 1, 1) == 0
    assert interior.sum() > 0.2 * views.masks.sum()
    pixel_weights = torch.randn(views.images.shape, generator=generator, dtype=torch.float64) * interior
    (gradient,) = torch.autograd.grad((views.images * pixel_weights).sum(), latent)
    finite_difference = ((moved[1].images - moved[-1].images) * pixel_weights).sum() / (2 * eps)
    assert (gradient * direction).sum().item() == pytest.approx(finite_difference.item(), rel=1e-2)


def test_backward_queries_visible_vertices_only_and_runs_the_transformer_once(tiny_pipeline):
    vae = tiny_pipeline.vae
    calls = {"forward": 0, "backward": 0}
    hooks = [
        vae.transformer.register_forward_hook(lambda *a: calls.__setitem__("forward", calls["forward"] + 1)),
        vae.transformer.register_full_backward_hook(lambda *a: calls.__setitem__("backward", calls["backward"] + 1)),
    ]
    try:
        generator = torch.Generator().manual_seed(5)
        latent = torch.randn(1, *vae.latent_shape, generator=generator).requires_grad_(True)
        config = SurfaceConfig(resolution=48, coarse_resolution=12, vertex_chunk_size=300)
        surface = extract_surface(vae, latent, config)
        surface.vertices.retain_grad()
        views = render_mesh(surface.vertices, surface.faces, orbit_cameras(count=1, image_size=112))
        views.images.mean().backward()
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == {"forward": 1, "backward": 1}
    # Vertices of visible triangles, and their neighbours (they move the smooth normals), get a
    # gradient; only those are re-queried, and that is far from all of them with one view.
    with_gradient = (surface.vertices.grad != 0).any(dim=1)
    seen = torch.unique(surface.faces[views.face_ids[views.face_ids >= 0]])
    assert bool(with_gradient[seen].all())
    assert surface.stats.vertex_queries == int(with_gradient.sum()) < 0.7 * surface.vertices.shape[0]
    assert surface.stats.backward_calls == 1
    assert latent.grad is not None and bool(torch.isfinite(latent.grad).all()) and latent.grad.abs().sum() > 0

    # The chunked backward sums to the same gradient as a single chunk.
    latent_b = latent.detach().clone().requires_grad_(True)
    surface_b = extract_surface(vae, latent_b, SurfaceConfig(resolution=48, coarse_resolution=12, vertex_chunk_size=10**6))
    render_mesh(surface_b.vertices, surface_b.faces, orbit_cameras(count=1, image_size=112)).images.mean().backward()
    assert torch.allclose(latent.grad, latent_b.grad, rtol=1e-4, atol=1e-8)


def test_no_graph_without_requires_grad(tiny_pipeline):
    latent = torch.randn(1, *tiny_pipeline.vae.latent_shape, generator=torch.Generator().manual_seed(6))
    surface = extract_surface(tiny_pipeline.vae, latent, SurfaceConfig(resolution=32, coarse_resolution=None))
    assert not surface.vertices.requires_grad
    assert surface.faces.dtype == torch.int64 and surface.vertices.shape[1] == 3


def test_flashvdm_processor_and_kv_cache_are_bypassed_and_restored(tiny_pipeline):
    from hy3dgen.shapegen.models.autoencoders.attention_processors import FlashVDMCrossAttentionProcessor

    vae = tiny_pipeline.vae
    attn = vae.geo_decoder.cross_attn_decoder.attn
    processor = FlashVDMCrossAttentionProcessor()
    reference_latent = torch.randn(1, *vae.latent_shape, generator=torch.Generator().manual_seed(7))
    config = SurfaceConfig(resolution=32, coarse_resolution=None)
    reference = extract_surface(vae, reference_latent, config)
    vae.geo_decoder.set_cross_attention_processor(processor)
    attn.kv_cache, attn.data = True, None
    try:
        with plain_cross_attention(vae):
            assert type(attn.attention.attn_processor).__name__ == "CrossAttentionProcessor"
            assert attn.kv_cache is False
        surface = extract_surface(vae, reference_latent, config)
        assert attn.attention.attn_processor is processor and attn.kv_cache is True
    finally:
        vae.geo_decoder.set_cross_attention_processor(_plain_processor())
        attn.kv_cache, attn.data = False, None
    assert torch.equal(surface.faces, reference.faces)


def _plain_processor():
    from hy3dgen.shapegen.models.autoencoders.attention_processors import CrossAttentionProcessor

    return CrossAttentionProcessor()


# --------------------------------------------------------------------------------------------
# Empty and degenerate surfaces, configuration


@pytest.mark.parametrize(
    "field, why",
    [
        (lambda p, r: -torch.ones_like(p[:, 0]) + 0 * r, "all outside"),
        (lambda p, r: torch.ones_like(p[:, 0]) + 0 * r, "all inside"),
        # A sphere of radius 0.004 centred between grid points (spacing 2.02/32 = 0.063): no sample inside.
        (lambda p, r: 1e3 * (r - (p - 0.0316).norm(dim=-1)), "smaller than a grid cell"),
        (lambda p, r: torch.full_like(p[:, 0], float("nan")) + 0 * r, "not finite"),
    ],
)
def test_no_surface_raises_empty_surface_error(field, why):
    radius = torch.tensor(0.004, dtype=torch.float64, requires_grad=True)
    with pytest.raises(EmptySurfaceError):
        extract_surface_from_field(field, radius, SurfaceConfig(resolution=32, coarse_resolution=8))


def test_diverged_latent_raises_empty_surface_error(tiny_pipeline):
    latent = torch.full((1, *tiny_pipeline.vae.latent_shape), float("nan"))
    with pytest.raises(EmptySurfaceError):
        extract_surface(tiny_pipeline.vae, latent, SurfaceConfig(resolution=16, coarse_resolution=None))


def test_surface_reaching_the_box_is_reported_open():
    radius = torch.tensor(1.3, dtype=torch.float64)
    surface = extract_surface_from_field(sphere_logits(5.0), radius, SurfaceConfig(resolution=24, coarse_resolution=None))
    assert surface.touches_bounds


@pytest.mark.parametrize(
    "kwargs",
    [
        {"resolution": 1},
        {"resolution": 100, "coarse_resolution": 30},
        {"resolution": 96, "coarse_resolution": 32},  # ratio 3 is not a power of two
        {"dilation": 0},
        {"chunk_size": 0},
        {"vertex_chunk_size": 0},
        {"normal_source": "finite"},
        {"bounds": -1.0},
    ],
)
def test_invalid_config_is_rejected(kwargs):
    with pytest.raises(InvalidInputError):
        SurfaceConfig(**kwargs)


def test_batched_latent_is_rejected(tiny_pipeline):
    with pytest.raises(InvalidInputError):
        extract_surface(tiny_pipeline.vae, torch.zeros(2, *tiny_pipeline.vae.latent_shape))


def test_stats_report_queries_and_timings(tiny_pipeline):
    latent = torch.randn(1, *tiny_pipeline.vae.latent_shape, generator=torch.Generator().manual_seed(8))
    surface = extract_surface(tiny_pipeline.vae, latent, SurfaceConfig(resolution=32, coarse_resolution=8))
    stats = surface.stats
    assert stats.grid_queries == sum(stats.queries_per_level.values()) > 0
    assert stats.queries_per_level[8] == 9**3
    assert stats.dense_queries == 33**3
    assert min(stats.seconds_transformer, stats.seconds_grid, stats.seconds_marching_cubes) >= 0
    assert stats.seconds_grid > 0
    assert np.isfinite(stats.query_reduction)
