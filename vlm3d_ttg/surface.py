"""Differentiable surface of an occupancy field: latent → logits grid → mesh → vertices with gradients.

The mesh is extracted without gradients (coarse-to-fine grid, then marching cubes); gradients are
re-attached to the vertices with the implicit-function theorem (MeshSDF). A vertex v0 on the level
set s(v0; θ) = level moves with θ, to first order along the field normal, as

    ∂v/∂θ = -(∂s/∂θ) · ∇ₓs / |∇ₓs|²

(the |∇ₓs|² matters: occupancy logits are not a distance). Only the normal component of the motion
is defined by the shape; tangential sliding is an artefact of the grid, so this is the right
gradient for rendering losses, not for per-vertex losses.

How the reward uses it::

    x0 = x0_hat.detach().requires_grad_(True)      # the predicted clean latent
    field = backbone.occupancy_field(x0)           # e.g. the ShapeVAE transformer, once
    surface = extract_surface(field)               # grid without grad
    views = renderer(surface.vertices, surface.faces, cameras)
    reward = critic(views.images)
    reward.backward()                               # or torch.autograd.grad(reward, x0)
    x0.grad                                         # d reward / d x0

The backbone decodes the latent once (e.g. hy3dgen's ShapeVAE transformer, with its graph kept
when the latent requires grad; `backbones/hunyuan3d2.py`). The decoder is re-queried at the vertices only inside `backward`, in chunks, and
only at vertices that received a non-zero gradient (those the renderer saw); the per-chunk
gradients are summed on the transformer output and pushed back through the transformer once.
∇ₓs comes from autograd at the vertex (exact; one extra decoder backward per chunk) or, with
`normal_source="grid"`, from central differences of the logits grid (free, but biased by 1–10%
where logits saturate).

Gradient semantics: re-running marching cubes on a perturbed latent would also slide vertices
along grid edges and jitter the shading normals built from them; that is discretisation noise,
not shape change, and it is deliberately not part of this gradient (see tests/test_surface.py).

Index → space: grid point i sits at -bounds + i·(2·bounds/resolution), exactly the points hy3dgen's
volume decoders query. (hy3dgen's own `MCSurfaceExtractor` divides by resolution + 1 instead, which
shrinks its exported mesh by resolution/(resolution+1); here the vertex we render is the point we
re-query.)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F

from .errors import EmptySurfaceError, InvalidInputError

if TYPE_CHECKING:
    import trimesh

logger = logging.getLogger(__name__)

#: An implicit field: (points (P, 3), parameters) → logits (P,). Inside is where logits > level.
ImplicitField = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Refinement rounds per level before giving up on closing the band around the surface. Each round
# grows the evaluated band by `dilation` cells, so this bounds how far (in fine cells) the true
# surface may lie from the one interpolated from the coarser level.
_MAX_CLOSURE_ROUNDS = 16


@dataclass(frozen=True)
class SurfaceConfig:
    """How the occupancy field is sampled and turned into a mesh.

    resolution: cells per axis of the finest grid (the grid has resolution + 1 points per axis).
    bounds: half side of the cube that is sampled (hy3dgen's default 1.01).
    level: the iso-level of the surface (hy3dgen's `mc_level`, 0 for logits).
    chunk_size: decoder queries per forward call on the grid (no grad).
    vertex_chunk_size: vertices re-queried per chunk in backward (with grad: bounds its memory).
    coarse_resolution: resolution of the first, dense level; each next level doubles it up to
        `resolution`, evaluating only a band around the surface. None (or == resolution): dense.
    dilation: cells of margin around every cell with a sign change, at every level (≥ 1, so that
        the central differences at the corners of a crossing cell use evaluated values only).
    normal_source: where ∇ₓs for the implicit gradient comes from: "grid" (central differences
        of the logits grid, free) or "autograd" (exact, one extra decoder backward per chunk).
    """

    resolution: int = 128
    bounds: float = 1.01
    level: float = 0.0
    chunk_size: int = 32768
    vertex_chunk_size: int = 8192
    coarse_resolution: int | None = 32
    dilation: int = 1
    normal_source: Literal["grid", "autograd"] = "autograd"

    def __post_init__(self) -> None:
        if self.resolution < 2:
            raise InvalidInputError(f"SurfaceConfig.resolution must be ≥ 2, got {self.resolution}.")
        if not self.bounds > 0:
            raise InvalidInputError(f"SurfaceConfig.bounds must be > 0, got {self.bounds}.")
        if self.chunk_size < 1 or self.vertex_chunk_size < 1:
            raise InvalidInputError(
                f"SurfaceConfig chunk sizes must be ≥ 1, got {self.chunk_size} and {self.vertex_chunk_size}."
            )
        if self.dilation < 1:
            raise InvalidInputError(f"SurfaceConfig.dilation must be ≥ 1, got {self.dilation}.")
        if self.normal_source not in ("grid", "autograd"):
            raise InvalidInputError(
                f"SurfaceConfig.normal_source must be 'grid' or 'autograd', got {self.normal_source!r}."
            )
        coarse = self.coarse_resolution
        if coarse is not None and coarse != self.resolution:
            ratio = self.resolution // coarse if coarse > 0 else 0
            if coarse < 2 or self.resolution % coarse or ratio & (ratio - 1):
                raise InvalidInputError(
                    f"SurfaceConfig.coarse_resolution ({coarse}) must be ≥ 2 and resolution ({self.resolution}) "
                    "must be coarse_resolution times a power of two."
                )

    @property
    def spacing(self) -> float:
        """Distance between neighbouring grid points."""
        return 2.0 * self.bounds / self.resolution

    @property
    def levels(self) -> list[int]:
        """Resolutions evaluated, coarsest first."""
        if self.coarse_resolution is None or self.coarse_resolution == self.resolution:
            return [self.resolution]
        out = [self.coarse_resolution]
        while out[-1] < self.resolution:
            out.append(out[-1] * 2)
        return out


@dataclass
class SurfaceStats:
    """What an extraction cost. Vertex-query fields are filled in when gradients flow back."""

    grid_queries: int = 0
    queries_per_level: dict[int, int] = field(default_factory=dict)  # resolution → decoder queries
    dense_queries: int = 0  # what a dense grid at the final resolution would have cost
    vertex_queries: int = 0  # decoder queries made by backward passes (visible vertices only)
    backward_calls: int = 0
    seconds_transformer: float = 0.0
    seconds_grid: float = 0.0
    seconds_marching_cubes: float = 0.0
    seconds_vertex_backward: float = 0.0

    @property
    def query_reduction(self) -> float:
        """Dense queries / grid queries actually made (≥ 1 means coarse-to-fine saved work)."""
        return self.dense_queries / max(self.grid_queries, 1)


@dataclass
class OccupancyGrid:
    """Logits on the (resolution + 1)³ grid; `evaluated` marks values the decoder computed."""

    logits: torch.Tensor  # (R+1, R+1, R+1), axis order (x, y, z)
    evaluated: torch.Tensor  # bool, same shape; the rest is interpolated from a coarser level
    queries_per_level: dict[int, int]


@dataclass
class Surface:
    """A triangle mesh of the level set whose vertices carry gradients to the field parameters.

    vertices: (V, 3) world positions; differentiable w.r.t. the latent (or field parameters) when
        those required grad. Values are exactly the marching-cubes vertices on the grid.
    faces: (F, 3) int64, counter-clockwise seen from outside (right-hand normals point out).
    grid: the logits grid the mesh was extracted from (detached).
    touches_bounds: the level set reaches the sampled cube, so the mesh is open there.
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    grid: OccupancyGrid
    config: SurfaceConfig
    stats: SurfaceStats
    touches_bounds: bool

    def to_trimesh(self) -> "trimesh.Trimesh":
        """The mesh as a trimesh.Trimesh (detached, float32), same winding."""
        import trimesh

        return trimesh.Trimesh(
            self.vertices.detach().cpu().numpy().astype(np.float32),
            self.faces.cpu().numpy(),
            process=False,
        )


# --------------------------------------------------------------------------------------------
# A decoded field


@dataclass
class OccupancyField:
    """The occupancy field of one latent, as a backbone decodes it (`backbones.Backbone.occupancy_field`).

    query: (points (P, 3), params) → logits (P,); inside is where logits exceed the level.
    params: what the field is computed from (e.g. the ShapeVAE transformer's tokens), carrying the
        graph back to the latent when the latent required grad. The surface treats it as a leaf
        in its vertex re-queries and pushes their gradient through that graph once.
    seconds: what decoding `params` took (reported in `SurfaceStats.seconds_transformer`).
    """

    query: ImplicitField
    params: torch.Tensor
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------
# Grid evaluation (no grad)


def grid_axis(resolution: int, bounds: float, *, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Coordinates of the resolution + 1 grid points along one axis: -bounds + i·2·bounds/resolution."""
    index = torch.arange(resolution + 1, dtype=torch.float64, device=device)
    return (-bounds + index * (2.0 * bounds / resolution)).to(dtype)


def index_to_world(index: torch.Tensor, resolution: int, bounds: float) -> torch.Tensor:
    """Grid index (fractional allowed) → world position."""
    return -bounds + index * (2.0 * bounds / resolution)


def evaluate_points(field_fn: ImplicitField, params: torch.Tensor, points: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Field logits at `points` (P, 3), evaluated in chunks; returns (P,)."""
    if points.shape[0] == 0:
        return points.new_zeros(0)
    return torch.cat([field_fn(chunk, params).to(points.dtype) for chunk in points.split(chunk_size)])


def _reduce_neighbour_pairs(volume: torch.Tensor, op) -> torch.Tensor:
    """Combine each pair of neighbours along every axis: (n+1)³ point values → n³ cell values."""
    for axis in range(3):
        n = volume.shape[axis] - 1
        volume = op(volume.narrow(axis, 0, n), volume.narrow(axis, 1, n))
    return volume


def crossing_cells(logits: torch.Tensor, level: float) -> torch.Tensor:
    """Cells (R, R, R) whose 8 corners are not all on one side of the level."""
    # Separable min/max over the 2×2×2 corners (CPU max_pool3d is ~20× slower here).
    corner_max = _reduce_neighbour_pairs(logits, torch.maximum)
    corner_min = _reduce_neighbour_pairs(logits, torch.minimum)
    return (corner_max >= level) & (corner_min <= level)


def dilate_cells(cells: torch.Tensor, radius: int) -> torch.Tensor:
    """Cells within `radius` cells (Chebyshev distance) of a marked cell."""
    for axis in range(3):
        n = cells.shape[axis]
        grown = cells.clone()
        for shift in range(1, min(radius, n - 1) + 1):
            grown.narrow(axis, shift, n - shift).logical_or_(cells.narrow(axis, 0, n - shift))
            grown.narrow(axis, 0, n - shift).logical_or_(cells.narrow(axis, shift, n - shift))
        cells = grown
    return cells


def cell_corner_points(cells: torch.Tensor) -> torch.Tensor:
    """Grid points (R+1)³ that are a corner of at least one marked cell (R³)."""
    for axis in range(3):
        n = cells.shape[axis]
        shape = list(cells.shape)
        shape[axis] = n + 1
        points = torch.zeros(shape, dtype=torch.bool, device=cells.device)
        points.narrow(axis, 0, n).logical_or_(cells)
        points.narrow(axis, 1, n).logical_or_(cells)
        cells = points
    return cells


def upsample_grid(logits: torch.Tensor) -> torch.Tensor:
    """Trilinear interpolation of an (n+1)³ grid onto the (2n+1)³ grid of half the spacing."""
    size = 2 * (logits.shape[0] - 1) + 1
    return F.interpolate(logits[None, None], size=(size,) * 3, mode="trilinear", align_corners=True)[0, 0]


def _evaluate_masked(
    field_fn: ImplicitField,
    params: torch.Tensor,
    logits: torch.Tensor,
    evaluated: torch.Tensor,
    mask: torch.Tensor,
    axis: torch.Tensor,
    chunk_size: int,
) -> int:
    """Evaluate the field at grid points in `mask`, in place; returns the number of queries."""
    index = mask.nonzero()
    if index.shape[0] == 0:
        return 0
    points = axis[index]  # (P, 3): axis values per coordinate
    values = evaluate_points(field_fn, params, points, chunk_size)
    logits[index[:, 0], index[:, 1], index[:, 2]] = values.to(logits.dtype)
    evaluated[index[:, 0], index[:, 1], index[:, 2]] = True
    return int(index.shape[0])


def evaluate_occupancy_grid(
    field_fn: ImplicitField, params: torch.Tensor, config: SurfaceConfig, *, dtype: torch.dtype = torch.float32
) -> OccupancyGrid:
    """Logits on the final grid, coarse-to-fine, without grad; every cell marching cubes sees exactly.

    The first level is evaluated densely. Each finer level starts from the trilinear upsampling
    of the previous one and evaluates the corners of every cell with a sign change, dilated by
    `config.dilation` cells, repeating until that band is fully evaluated (so a surface that
    wanders out of the interpolated band is followed). No value is left undefined (no NaN): the
    rest keeps its interpolated value, whose sign is right away from the surface.
    """
    device = params.device
    queries: dict[int, int] = {}
    with torch.no_grad():
        first = config.levels[0]
        axis = grid_axis(first, config.bounds, dtype=dtype, device=device)
        logits = torch.empty((first + 1,) * 3, dtype=dtype, device=device)
        evaluated = torch.zeros_like(logits, dtype=torch.bool)
        queries[first] = _evaluate_masked(
            field_fn, params, logits, evaluated, torch.ones_like(evaluated), axis, config.chunk_size
        )
        _check_finite(logits)
        for resolution in config.levels[1:]:
            axis = grid_axis(resolution, config.bounds, dtype=dtype, device=device)
            coarse_evaluated = evaluated
            logits = upsample_grid(logits)
            evaluated = torch.zeros_like(logits, dtype=torch.bool)
            evaluated[::2, ::2, ::2] = coarse_evaluated  # shared points keep their exact values
            count = 0
            for _ in range(_MAX_CLOSURE_ROUNDS):
                band = dilate_cells(crossing_cells(logits, config.level), config.dilation)
                missing = cell_corner_points(band) & ~evaluated
                if not bool(missing.any()):
                    break
                count += _evaluate_masked(field_fn, params, logits, evaluated, missing, axis, config.chunk_size)
            else:
                logger.warning(
                    "Surface band at resolution %d not closed after %d rounds; some cells use interpolated logits.",
                    resolution,
                    _MAX_CLOSURE_ROUNDS,
                )
            queries[resolution] = count
            _check_finite(logits)
    return OccupancyGrid(logits=logits, evaluated=evaluated, queries_per_level=queries)


def _check_finite(logits: torch.Tensor) -> None:
    if not bool(torch.isfinite(logits).all()):
        bad = int((~torch.isfinite(logits)).sum())
        raise EmptySurfaceError(
            f"The occupancy logits contain {bad} non-finite values (the latent has probably diverged); "
            "no surface can be extracted."
        )


# --------------------------------------------------------------------------------------------
# Marching cubes and the implicit gradient


def marching_cubes(logits: torch.Tensor, config: SurfaceConfig) -> tuple[np.ndarray, np.ndarray]:
    """Level-set mesh of a logits grid: (vertex grid indices (V, 3) float64, faces (F, 3) int64).

    Faces are re-wound to be counter-clockwise seen from outside: skimage's Lewiner output winds
    the other way for an inside-positive field (the reason hy3dgen flips faces on export).
    """
    from skimage import measure

    volume = logits.detach().to(torch.float64).cpu().numpy()
    lo, hi = float(volume.min()), float(volume.max())
    if not lo < config.level < hi:
        raise EmptySurfaceError(
            f"No surface: the logits on the {config.resolution}³ grid lie in [{lo:.3g}, {hi:.3g}], "
            f"all on one side of the level {config.level}."
        )
    verts, faces, _normals, _values = measure.marching_cubes(volume, config.level, method="lewiner")
    faces = np.ascontiguousarray(faces[:, ::-1]).astype(np.int64)
    return verts.astype(np.float64), faces


def trilinear(grid: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Trilinear interpolation of a (C, n, n, n) grid at fractional grid indices (P, 3) → (P, C)."""
    size = torch.tensor(grid.shape[1:], device=index.device)
    base = index.floor().long().clamp(min=torch.zeros_like(size), max=size - 2)
    frac = (index - base.to(index.dtype)).to(grid.dtype)
    out = 0
    for corner in range(8):
        offset = torch.tensor([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1], device=index.device)
        c = base + offset
        weight = torch.where(offset.bool(), frac, 1 - frac).prod(dim=1)
        out = out + grid[:, c[:, 0], c[:, 1], c[:, 2]].T * weight[:, None]
    return out


def grid_gradient(logits: torch.Tensor, spacing: float) -> torch.Tensor:
    """∇ₓ logits on the grid by central differences (one-sided at the faces): (3, n, n, n)."""
    return torch.stack(torch.gradient(logits, spacing=spacing, edge_order=1))


def implicit_vertex_weights(grad_vertices: torch.Tensor, field_gradient: torch.Tensor) -> torch.Tensor:
    """dL/ds at each vertex from dL/dv, by the implicit-function theorem: -⟨dL/dv, ∇s⟩ / |∇s|².

    Where ∇s vanishes (a singular point of the level set) the surface motion is undefined; those
    vertices contribute nothing rather than an unbounded gradient.
    """
    squared_norm = (field_gradient * field_gradient).sum(-1)
    floor = 1e-12 * squared_norm.mean() + torch.finfo(squared_norm.dtype).tiny
    regular = squared_norm > floor
    weights = -(grad_vertices * field_gradient).sum(-1) / torch.where(regular, squared_norm, 1.0)
    return torch.where(regular, weights, 0.0)


class _ImplicitVertices(torch.autograd.Function):
    """Identity on vertex values; backward maps dL/dv to dL/dparams through re-queried logits."""

    @staticmethod
    def forward(ctx, params, vertices, grid_normals, field_fn, config, stats):
        ctx.save_for_backward(params.detach(), vertices, grid_normals)
        ctx.field_fn = field_fn
        ctx.config = config
        ctx.stats = stats
        return vertices.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_vertices):
        params, vertices, grid_normals = ctx.saved_tensors
        config: SurfaceConfig = ctx.config
        stats: SurfaceStats = ctx.stats
        start = time.perf_counter()
        # Accumulate in float32 at least: fp16 tokens would lose small per-chunk contributions.
        accumulate_dtype = torch.promote_types(params.dtype, torch.float32)
        grad_params = torch.zeros_like(params, dtype=accumulate_dtype)
        # Vertices nobody looked at get no gradient: skip their decoder queries.
        active = (grad_vertices != 0).any(dim=1).nonzero()[:, 0]
        leaf = params.detach().requires_grad_(True)
        # No vertex got gradient (nothing visible depended on the shape): the gradient is zero,
        # and an empty chunk must not reach the decoder (hy3dgen cannot embed 0 points).
        chunks = active.split(config.vertex_chunk_size) if active.numel() else ()
        with torch.enable_grad():
            for chunk in chunks:
                g_v = grad_vertices[chunk].to(vertices.dtype)
                if config.normal_source == "autograd":
                    points = vertices[chunk].detach().requires_grad_(True)
                    s = ctx.field_fn(points, leaf)
                    (normals,) = torch.autograd.grad(s.sum(), points, retain_graph=True)
                else:
                    points = vertices[chunk]
                    s = ctx.field_fn(points, leaf)
                    normals = grid_normals[chunk]
                weights = implicit_vertex_weights(g_v, normals.to(g_v.dtype))
                (g_params,) = torch.autograd.grad(s, leaf, grad_outputs=weights.to(s.dtype))
                grad_params += g_params.to(accumulate_dtype)
        stats.vertex_queries += int(active.numel())
        stats.backward_calls += 1
        stats.seconds_vertex_backward += time.perf_counter() - start
        return grad_params.to(params.dtype), None, None, None, None, None


def extract_surface_from_field(
    field_fn: ImplicitField,
    params: torch.Tensor,
    config: SurfaceConfig | None = None,
    *,
    stats: SurfaceStats | None = None,
) -> Surface:
    """The level set of `field_fn(·, params)` as a mesh whose vertices are differentiable in `params`.

    Raises EmptySurfaceError when the field has no level crossing on the grid, is not finite, or
    marching cubes yields no triangle of non-zero area.
    """
    config = config or SurfaceConfig()
    stats = stats or SurfaceStats()
    dtype = torch.float64 if params.dtype == torch.float64 else torch.float32

    start = time.perf_counter()
    grid = evaluate_occupancy_grid(field_fn, params.detach(), config, dtype=dtype)
    stats.seconds_grid += time.perf_counter() - start
    stats.queries_per_level = dict(grid.queries_per_level)
    stats.grid_queries = sum(grid.queries_per_level.values())
    stats.dense_queries = (config.resolution + 1) ** 3

    start = time.perf_counter()
    vertex_index_np, faces_np = marching_cubes(grid.logits, config)
    stats.seconds_marching_cubes += time.perf_counter() - start

    device = params.device
    vertex_index = torch.from_numpy(vertex_index_np).to(device=device, dtype=dtype)
    faces = torch.from_numpy(faces_np).to(device)
    vertices = index_to_world(vertex_index, config.resolution, config.bounds)
    _check_not_degenerate(vertices, faces, config)

    grid_normals = None
    if config.normal_source == "grid":
        grid_normals = trilinear(grid_gradient(grid.logits, config.spacing), vertex_index)
    touches = bool((vertex_index <= 0).any() or (vertex_index >= config.resolution).any())
    if touches:
        logger.info("The surface reaches the ±%.3g sampling cube; the mesh is open there.", config.bounds)

    if params.requires_grad and torch.is_grad_enabled():
        vertices = _ImplicitVertices.apply(params, vertices, grid_normals, field_fn, config, stats)
    logger.debug(
        "Surface: %d vertices, %d faces, %d grid queries (%.1fx fewer than dense %d³)",
        vertices.shape[0],
        faces.shape[0],
        stats.grid_queries,
        stats.query_reduction,
        config.resolution,
    )
    return Surface(vertices=vertices, faces=faces, grid=grid, config=config, stats=stats, touches_bounds=touches)


def _check_not_degenerate(vertices: torch.Tensor, faces: torch.Tensor, config: SurfaceConfig) -> None:
    if faces.shape[0] == 0:
        raise EmptySurfaceError(f"Marching cubes produced no triangles on the {config.resolution}³ grid.")
    tri = vertices[faces]
    doubled_area = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=-1)
    if not bool((doubled_area > 1e-12 * config.spacing**2).any()):
        raise EmptySurfaceError("Marching cubes produced only zero-area triangles: the surface is degenerate.")


def extract_surface(field: OccupancyField, config: SurfaceConfig | None = None) -> Surface:
    """The level set of a decoded field as a mesh differentiable w.r.t. the latent it was decoded from.

    The grid is evaluated without grad; `surface.vertices` carry the implicit-function gradient,
    so a loss on anything rendered from them backpropagates to the latent with `loss.backward()`.
    Raises EmptySurfaceError when there is no surface to render.
    """
    stats = SurfaceStats(seconds_transformer=field.seconds)
    return extract_surface_from_field(field.query, field.params, config, stats=stats)
