"""Analytic silhouette antialiasing with gradients w.r.t. vertex positions (the CPU backend's `antialias`).

A point-sampled rendering is piecewise constant in the vertex positions wherever a pixel flips
between object and background: the silhouette has no gradient. Following nvdiffrast's antialias
operation (Laine et al. 2020, "Modular Primitives for High-Performance Differentiable Rendering",
§4), pairs of horizontally or vertically adjacent pixels that see different triangles are
examined. Let C be the pixel whose surface is nearer and O the other one, and walk from C's centre
towards O's over C's triangle. If the walk leaves the surface through a *silhouette edge* (an edge
between a triangle facing the camera and one facing away, or a mesh boundary) at distance
d ∈ [0, 1] (in pixels, along the pair), the two colours are blended by how far the edge lies past
the midpoint:

    d < 1/2:  C += s · (1/2 - d) · (O - C)        (C is only partly covered)
    d > 1/2:  O += s · (d - 1/2) · (C - O)        (O is partly covered)

i.e. one pixel receives `s · (1/2 - d) · (O - C)`. This is continuous in the vertex positions (at
d = 1/2 nothing changes; when the edge crosses O's centre, O's own pairs take over), and d is a
differentiable function of the edge's screen-space end points, so d(image)/d(vertices) includes
the silhouette. s = `pair_share` splits each edge between the horizontal and the vertical pairs so
that d(Σ mask)/d(motion) is the length of the moving silhouette, as for box-filtered coverage.

Departures from nvdiffrast, each for a reason:
- Walking on: if the edge where the walk leaves C's triangle is not a silhouette, nvdiffrast stops
  (no blend). Near a smooth limb the surface is seen edge-on, so the last pixel of it holds many
  foreshortened slivers that cover no pixel centre: at 4 × 448², the silhouette lies on C's own
  triangle for 5% of the object/background pairs of a 20k-face icosphere and 1–3% on
  marching-cubes meshes of 46k–120k faces. The walk continues over the neighbouring triangles of
  the same surface (up to `max_walk`; walks of ~30 occur on marching-cubes meshes, and with them
  every such pair is found). `max_walk=0` is nvdiffrast's rule.
- Smooth split: nvdiffrast gives an edge wholly to the horizontal pairs if it is steeper than 45°,
  else to the vertical ones; the image then jumps whenever an edge turns through 45° (common on
  marching-cubes meshes, whose edges are grid diagonals). Here s = cos² / sin² of the edge's angle.
- Candidates first: pairs are examined only if a silhouette edge passes between their centres
  (found by sweeping the few silhouette edges over pixel rows and columns), instead of every pair
  of differing triangles (mostly neighbouring triangles inside the surface).
- Which edges are silhouettes comes from a sorted edge table (`edge_topology`), not a hash.
- All decisions run without grad; only d and s of the pairs that blend are recomputed with grad,
  so the backward costs little.

What stays as in nvdiffrast: colours are sampled at pixel centres, so when a pixel flips the
blend switches from its own colour to its neighbour's, a jump of about half the colour change
across one pixel (masks have no such jump); a pixel blended from several sides can leave [0, 1]
by a little.

Pixel convention as in `raster_cpu`: pixel (row i, column j) has its centre at continuous pixel
coordinates (column j, row i); rows are top-down.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..errors import InvalidInputError
from .raster_cpu import _MIN_W, fragments_from_face_ids, pixel_coordinates

logger = logging.getLogger(__name__)

# Walk over at most this many triangles past the one seen at the nearer pixel (0 = nvdiffrast).
DEFAULT_MAX_WALK = 64
# Crossings this far outside [0, 1] pixel (rounding between the visibility test and the crossing
# computation) are still accepted and clamped; nvdiffrast allows 1/16 for float32 rasterisation.
_CROSSING_SLACK = 1.0 / 16.0
# Edge k of a triangle joins corners k+1 and k+2 (it lies opposite corner k).
_EDGE_START = (1, 2, 0)
_EDGE_END = (2, 0, 1)


@dataclass(frozen=True)
class EdgeTopology:
    """Edge adjacency of a triangle mesh, per half-edge (face f, edge k opposite corner k).

    neighbour: (F, 3) the face across edge k of face f, -1 on a boundary edge, on an edge shared by
        more than two faces, and on the edges of degenerate faces (all treated as silhouettes).
    flipped: (F, 3) the neighbour runs along the shared edge in the same direction as f (the two
        faces are wound inconsistently), which inverts the silhouette test for that edge.
    """

    neighbour: torch.Tensor
    flipped: torch.Tensor


@dataclass(frozen=True)
class SilhouetteCrossings:
    """The pixel pairs that blend, and the silhouette edge between them (no grad).

    view: image index; near / far: flat pixel index (row · size + column) of the pixel that sees the
    nearer surface, and of its neighbour; axis: 0 for a horizontal pair, 1 for a vertical one;
    step: +1 if the far pixel is right of / below the near one, else -1; edge: (M, 2) vertex ids of
    the silhouette edge crossed between the two pixel centres.
    """

    view: torch.Tensor
    near: torch.Tensor
    far: torch.Tensor
    axis: torch.Tensor
    step: torch.Tensor
    edge: torch.Tensor

    def __len__(self) -> int:
        return int(self.view.shape[0])


def edge_topology(faces: torch.Tensor, num_vertices: int | None = None) -> EdgeTopology:
    """Which face lies across each edge of each face (F, 3), from a sort of the undirected edges."""
    faces = faces.long()
    n_faces = faces.shape[0]
    if num_vertices is None:
        num_vertices = int(faces.max()) + 1 if n_faces else 0
    start = faces[:, _EDGE_START].reshape(-1)
    end = faces[:, _EDGE_END].reshape(-1)
    keys = torch.minimum(start, end) * num_vertices + torch.maximum(start, end)
    # Edges of degenerate faces (a repeated vertex) get unique negative keys: they pair with
    # nothing, and do not make a real edge they overlap look shared by three faces.
    degenerate = (start == end).view(n_faces, 3).any(dim=1).repeat_interleave(3).nonzero()[:, 0]
    keys[degenerate] = -1 - degenerate

    sorted_keys, order = torch.sort(keys)
    same = sorted_keys[1:] == sorted_keys[:-1]  # entry i equals entry i + 1
    no = torch.zeros(1, dtype=torch.bool, device=faces.device)
    # Only edges shared by exactly two faces have a neighbour: runs of length two in the sort.
    pair = same & ~torch.cat([no, same[:-1]]) & ~torch.cat([same[1:], no])
    first = pair.nonzero()[:, 0]
    a, b = order[first], order[first + 1]
    partner = torch.full_like(keys, -1)
    partner[a] = b
    partner[b] = a

    paired = partner >= 0
    neighbour = torch.where(paired, torch.div(partner, 3, rounding_mode="floor"), -1)
    # Consistent winding traverses a shared edge in opposite directions.
    flipped = paired & (start[partner.clamp_min(0)] == start)
    return EdgeTopology(neighbour=neighbour.view(n_faces, 3), flipped=flipped.view(n_faces, 3))


def screen_orientation(pixel_xy: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(N, F) True where a face's corners run one way round on screen (the sign of its area)."""
    x, y = pixel_xy[..., 0].contiguous(), pixel_xy[..., 1].contiguous()
    x0, x1, x2 = (x.index_select(1, faces[:, k]) for k in range(3))
    y0, y1, y2 = (y.index_select(1, faces[:, k]) for k in range(3))
    return (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0) > 0


def is_silhouette(
    orientation: torch.Tensor, topology: EdgeTopology, view: torch.Tensor, face: torch.Tensor, edge: torch.Tensor
) -> torch.Tensor:
    """Whether edge `edge` of face `face` is a silhouette in view `view` (all (M,)).

    A silhouette edge has the two faces on it turned opposite ways on screen (one faces the
    camera, the other away), or has only one face.
    """
    # Flat index_select: several times faster than 2-D advanced indexing for small M on CPU.
    half_edge = face * 3 + edge
    neighbour = topology.neighbour.view(-1).index_select(0, half_edge)
    n_faces = orientation.shape[1]
    flat = orientation.view(-1)
    differ = flat.index_select(0, view * n_faces + face) ^ flat.index_select(0, view * n_faces + neighbour.clamp_min(0))
    return (neighbour < 0) | (differ ^ topology.flipped.view(-1).index_select(0, half_edge))


def silhouette_edges(
    orientation: torch.Tensor, topology: EdgeTopology, faces: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every silhouette edge of every view, once: (view (S,), vertex ids (S, 2))."""
    n_faces = faces.shape[0]
    face = torch.arange(n_faces, device=faces.device)[:, None].expand(n_faces, 3)
    # Each shared edge appears as two half-edges; keep the one in the lower-numbered face.
    once = (topology.neighbour < 0) | (face < topology.neighbour)
    face, edge = once.nonzero(as_tuple=True)
    neighbour = topology.neighbour[face, edge]
    differ = orientation.index_select(1, face) ^ orientation.index_select(1, neighbour.clamp_min(0))  # (N, E)
    silhouette = (neighbour < 0) | (differ ^ topology.flipped[face, edge])
    view, index = silhouette.nonzero(as_tuple=True)
    face, edge = face[index], edge[index]
    ends = torch.stack([faces[face, (edge + 1) % 3], faces[face, (edge + 2) % 3]], dim=-1)
    return view, ends


def _pairs_crossed_by_edges(
    view: torch.Tensor, ends_xy: torch.Tensor, n_views: int, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean maps of the horizontal (N, S, S-1) and vertical (N, S-1, S) pixel pairs whose
    centres lie on either side of one of the edges (ends_xy (E, 2, 2), pixel coordinates): the
    pair around the edge's crossing of every pixel row, and of every pixel column, it spans."""
    horizontal = torch.zeros(n_views, size, size - 1, dtype=torch.bool, device=view.device)
    vertical = torch.zeros(n_views, size - 1, size, dtype=torch.bool, device=view.device)
    for sweep, marks in ((1, horizontal), (0, vertical)):
        # sweep: the coordinate whose integer lines the edge crosses (rows for horizontal pairs).
        a, b = ends_xy[:, 0], ends_xy[:, 1]
        low = torch.minimum(a[:, sweep], b[:, sweep]).clamp(-1, size)
        high = torch.maximum(a[:, sweep], b[:, sweep]).clamp(-1, size)
        # Lines with low < line <= high: the same half-open rule as the walk's straddle test.
        first = torch.floor(low).long() + 1
        count = (torch.floor(high).long() - first + 1).clamp_min(0)
        edge_index = torch.repeat_interleave(torch.arange(count.shape[0], device=view.device), count)
        run_start = torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
        line = first[edge_index] + torch.arange(edge_index.shape[0], device=view.device) - run_start
        a, b = a[edge_index], b[edge_index]
        t = (line.to(a.dtype) - a[:, sweep]) / (b[:, sweep] - a[:, sweep])
        lower = torch.floor(a[:, 1 - sweep] + t * (b[:, 1 - sweep] - a[:, 1 - sweep])).long()
        valid = (line >= 0) & (line < size) & (lower >= 0) & (lower < size - 1)
        v, line, lower = view[edge_index][valid], line[valid], lower[valid]
        if sweep == 1:
            marks[v, line, lower] = True
        else:
            marks[v, lower, line] = True
    return horizontal, vertical


def _candidate_pairs(
    face_ids: torch.Tensor, crossed_horizontal: torch.Tensor, crossed_vertical: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Adjacent pixel pairs that see different faces and have a silhouette edge between their
    centres: (view, first, second, axis) with flat pixel indices, second right of / below first."""
    n_views, size, _ = face_ids.shape
    found = []
    neighbours = (
        (face_ids[:, :, :-1], face_ids[:, :, 1:], crossed_horizontal),
        (face_ids[:, :-1, :], face_ids[:, 1:, :], crossed_vertical),
    )
    for axis, (a, b, crossed) in enumerate(neighbours):
        view, row, column = ((a != b) & crossed).nonzero(as_tuple=True)
        first = row * size + column
        second = first + (1 if axis == 0 else size)
        found.append((view, first, second, torch.full_like(view, axis)))
    return tuple(torch.cat(parts) for parts in zip(*found))


def crossing_distance(
    along_a: torch.Tensor, across_a: torch.Tensor, along_b: torch.Tensor, across_b: torch.Tensor
) -> torch.Tensor:
    """Where the line through a and b crosses the pair's axis (across = 0), as a distance along it."""
    return along_a - across_a * (along_b - along_a) / (across_b - across_a)


@torch.no_grad()
def find_silhouette_crossings(
    face_ids: torch.Tensor,
    clip_positions: torch.Tensor,
    faces: torch.Tensor,
    inverse_depth: torch.Tensor,
    *,
    topology: EdgeTopology | None = None,
    max_walk: int = DEFAULT_MAX_WALK,
) -> SilhouetteCrossings:
    """The adjacent pixel pairs with a silhouette edge between their centres, and that edge.

    face_ids (N, S, S), -1 on background; clip_positions (N, V, 4); faces (F, 3); inverse_depth
    (N, S, S): 1/w of the visible surface at each pixel centre (0 on background), which decides
    which pixel of a pair is nearer.
    """
    n_views, size, _ = face_ids.shape
    device = face_ids.device
    faces = faces.long()
    if topology is None:
        topology = edge_topology(faces, clip_positions.shape[1])
    pixel_xy = pixel_coordinates(clip_positions.detach().to(torch.float64), size)  # (N, V, 2)
    orientation = screen_orientation(pixel_xy, faces)

    # Candidates: pairs that see different faces with a silhouette edge between them. Most pairs
    # that see different faces are neighbouring triangles inside the surface; this skips them all.
    edge_view, edge_ends = silhouette_edges(orientation, topology, faces)
    # Like the z-buffer, ignore geometry at or behind the camera plane (no near-plane clipping).
    in_front = (clip_positions[..., 3] > _MIN_W)[edge_view[:, None], edge_ends].all(dim=1)
    edge_view, edge_ends = edge_view[in_front], edge_ends[in_front]
    crossed = _pairs_crossed_by_edges(edge_view, pixel_xy[edge_view[:, None], edge_ends], n_views, size)
    view, first, second, axis = _candidate_pairs(face_ids, *crossed)
    flat_ids = face_ids.reshape(n_views, -1)
    flat_depth = inverse_depth.reshape(n_views, -1)
    second_nearer = flat_depth[view, second] > flat_depth[view, first]  # background has 1/w = 0
    near = torch.where(second_nearer, second, first)
    far = torch.where(second_nearer, first, second)
    step = torch.where(second_nearer, -1, 1)
    centre = torch.stack([near % size, torch.div(near, size, rounding_mode="floor")], dim=-1).to(torch.float64)
    frame = _pair_frames(axis, step)

    # Walk all candidates at once; `alive` indexes the candidates still walking.
    alive = torch.arange(view.shape[0], device=device)
    face = flat_ids[view, near]
    flat_xy = pixel_xy.reshape(-1, 2)
    n_vertices = pixel_xy.shape[1]
    found: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for _ in range(max_walk + 1):
        if alive.numel() == 0:
            break
        walking_view = view.index_select(0, alive)
        corner_index = (walking_view * n_vertices)[:, None] + faces.index_select(0, face)
        corners = flat_xy.index_select(0, corner_index.view(-1)).view(-1, 3, 2) - centre.index_select(0, alive)[:, None]
        local = torch.einsum("mij,mkj->mki", frame.index_select(0, alive), corners)  # (M, 3, [along, across])
        a, b = local[:, _EDGE_START], local[:, _EDGE_END]  # the two ends of edges 0, 1, 2
        straddles = (a[..., 1] >= 0) != (b[..., 1] >= 0)
        distance = torch.where(straddles, crossing_distance(a[..., 0], a[..., 1], b[..., 0], b[..., 1]), -torch.inf)
        # The walk leaves the (convex) triangle where its line crosses the farthest edge.
        exit_distance, exit_edge = distance.max(dim=1)
        silhouette = is_silhouette(orientation, topology, walking_view, face, exit_edge)
        blend = silhouette & (exit_distance > -_CROSSING_SLACK) & (exit_distance < 1 + _CROSSING_SLACK)
        found.append((alive[blend], face[blend], exit_edge[blend]))
        # Not a silhouette and short of the far pixel's centre: continue on the neighbouring face.
        going_on = (~silhouette & (exit_distance < 1) & (exit_distance > -torch.inf)).nonzero()[:, 0]
        alive = alive.index_select(0, going_on)
        exit_half_edge = face.index_select(0, going_on) * 3 + exit_edge.index_select(0, going_on)
        face = topology.neighbour.view(-1).index_select(0, exit_half_edge)

    if alive.numel():
        logger.debug("%d silhouette searches stopped after %d triangles (max_walk)", alive.numel(), max_walk + 1)
    index, face, edge = (torch.cat(parts) for parts in zip(*found)) if found else (alive[:0], alive[:0], alive[:0])
    ends = torch.stack([faces[face, (edge + 1) % 3], faces[face, (edge + 2) % 3]], dim=-1)
    return SilhouetteCrossings(view[index], near[index], far[index], axis[index], step[index], ends)


def _pair_frames(axis: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """(M, 2, 2) maps from pixel offsets (column, row) to (along, across) a pair: `along` points
    from the near pixel to the far one, `across` is the other pixel axis."""
    frame = torch.zeros(axis.shape[0], 2, 2, dtype=torch.float64, device=axis.device)
    horizontal = axis == 0
    frame[:, 0, 0] = torch.where(horizontal, step, 0).to(torch.float64)
    frame[:, 0, 1] = torch.where(horizontal, 0, step).to(torch.float64)
    frame[:, 1, 0] = (~horizontal).to(torch.float64)
    frame[:, 1, 1] = horizontal.to(torch.float64)
    return frame


def pair_share(rise: torch.Tensor, run: torch.Tensor) -> torch.Tensor:
    """The part of an edge's coverage change that a pair along `run` carries: cos² of the angle
    between the edge's normal and the pair (the perpendicular pairs carry the rest, sin²).

    Rows of horizontal pairs alone already count the whole length of a moving edge (|n_x| rows per
    unit length, each moving 1/|n_x| pixels), and so do columns of vertical pairs: any split
    summing to one keeps d(Σ mask) equal to the edge length times its normal motion. nvdiffrast
    splits by a hard switch at 45°, which makes the image jump when an edge turns through 45°;
    cos²/sin² is continuous and leaves the nearly parallel (ill-conditioned) direction nothing.
    """
    return rise * rise / (rise * rise + run * run)


def crossing_weights(
    crossings: SilhouetteCrossings, clip_positions: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per blending pair: distance d (M,) in pixels from the near pixel's centre to the silhouette
    edge along the pair, clamped to [0, 1], and the pair's share of the edge (`pair_share`);
    both differentiable in `clip_positions` (N, V, 4)."""
    # float64 and the search's own frame reproduce its arithmetic exactly: the edge's ends are on
    # either side of the pair's axis, so neither division below can be 0/0.
    ends = clip_positions[crossings.view[:, None], crossings.edge].to(torch.float64)  # (M, 2, 4)
    ends_xy = pixel_coordinates(ends, size)
    centre = torch.stack([crossings.near % size, torch.div(crossings.near, size, rounding_mode="floor")], dim=-1)
    frame = _pair_frames(crossings.axis, crossings.step)
    local = torch.einsum("mij,mkj->mki", frame, ends_xy - centre.to(ends_xy.dtype)[:, None])  # (M, 2, [along, across])
    a, b = local[:, 0], local[:, 1]
    distance = crossing_distance(a[:, 0], a[:, 1], b[:, 0], b[:, 1]).clamp(0.0, 1.0)
    share = pair_share(b[:, 1] - a[:, 1], b[:, 0] - a[:, 0])
    return distance, share


def blend_pairs(
    images: torch.Tensor, crossings: SilhouetteCrossings, distance: torch.Tensor, share: torch.Tensor
) -> torch.Tensor:
    """Add share · (1/2 - d) · (far - near) to the near pixel if d < 1/2, else to the far one."""
    n_views, channels, size, _ = images.shape
    flat = images.reshape(n_views, channels, size * size)
    near_colour = flat[crossings.view, :, crossings.near]  # (M, C)
    far_colour = flat[crossings.view, :, crossings.far]
    delta = (share * (0.5 - distance)).to(images.dtype)[:, None] * (far_colour - near_colour)
    target = torch.where(distance < 0.5, crossings.near, crossings.far)
    channel = torch.arange(channels, device=images.device)
    out = flat.index_put((crossings.view[:, None], channel[None, :], target[:, None]), delta, accumulate=True)
    return out.view_as(images)


def visible_inverse_depth(clip_positions: torch.Tensor, faces: torch.Tensor, face_ids: torch.Tensor) -> torch.Tensor:
    """1/w of the visible surface at every pixel centre (N, S, S), 0 on background (no grad)."""
    n_views, size, _ = face_ids.shape
    with torch.no_grad():
        frags = fragments_from_face_ids(clip_positions.detach(), faces.long(), face_ids)
        out = torch.zeros(n_views * size * size, dtype=clip_positions.dtype, device=clip_positions.device)
        out[frags.view * (size * size) + frags.pixel] = frags.inverse_depth
    return out.view(n_views, size, size)


def antialias(
    images: torch.Tensor,
    face_ids: torch.Tensor,
    clip_positions: torch.Tensor,
    faces: torch.Tensor,
    *,
    inverse_depth: torch.Tensor | None = None,
    topology: EdgeTopology | None = None,
    max_walk: int = DEFAULT_MAX_WALK,
) -> torch.Tensor:
    """Blend the pixel pairs across silhouette edges (nvdiffrast's `antialias`, on any torch device).

    images: (N, C, S, S) any channels (colours, masks, ...); face_ids: (N, S, S) visible face per
    pixel centre, -1 on background; clip_positions: (N, V, 4) homogeneous clip-space vertices, the
    tensor gradients flow to; faces: (F, 3). inverse_depth: (N, S, S) 1/w of the visible surface
    (0 on background), recomputed from the inputs when not given; topology: `edge_topology(faces)`
    if it is reused across calls; max_walk: triangles the search for a silhouette edge may cross
    past the one seen at a pixel (0 = nvdiffrast's rule).

    Returns images of the same shape, equal to the input except at pixels next to a silhouette.
    Gradients reach the input colours and, through where each silhouette edge crosses between two
    pixel centres, the clip positions of that edge's two vertices. A pixel blended from several
    sides can leave the input range by a little (as with nvdiffrast).
    """
    if images.dim() != 4 or images.shape[-1] != images.shape[-2] or images.shape[-2:] != face_ids.shape[-2:]:
        raise InvalidInputError(
            f"images must be (N, C, S, S) matching face_ids {tuple(face_ids.shape)}, got {tuple(images.shape)}."
        )
    if faces.shape[0] == 0:
        return images
    if inverse_depth is None:
        inverse_depth = visible_inverse_depth(clip_positions, faces, face_ids)
    crossings = find_silhouette_crossings(
        face_ids, clip_positions, faces, inverse_depth, topology=topology, max_walk=max_walk
    )
    if len(crossings) == 0:
        return images
    distance, share = crossing_weights(crossings, clip_positions, face_ids.shape[-1])
    return blend_pairs(images, crossings, distance, share)
