"""CPU rasterisation: which triangle each pixel sees (no grad), then differentiable barycentrics.

Visibility is point-sampled at pixel centres, like nvdiffrast: pixel (row i, column j) of an
S×S image samples NDC x = (2j + 1)/S - 1, y = 1 - (2i + 1)/S (rows top-down). Two visibility
back-ends give the same face ids:

- "zbuffer": a pure-torch z-buffer. Triangles are binned by the size of their pixel bounding
  box; each bin tests its candidate pixels with edge functions and keeps the nearest fragment
  with one `scatter_reduce(amin)` over packed (depth, face) keys. Runs on any torch device.
- "embree": first-hit ray casting with Intel Embree through trimesh (`embreex`), CPU only.

Given the face per pixel, perspective-correct barycentrics are recomputed from the clip-space
vertex positions *with* grad, so d(image)/d(vertices) exists wherever visibility does not change;
the silhouette term comes from `antialias` (on by default in the renderer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .cameras import Cameras

# Candidate (face, pixel) pairs processed at once by the z-buffer: bounds its memory (~0.5 GB).
_ZBUFFER_BATCH = 1 << 22
# Vertices this close to (or behind) the camera plane are not rasterised (no near-plane clipping).
_MIN_W = 1e-6


def clip_positions(vertices: torch.Tensor, mvp: torch.Tensor) -> torch.Tensor:
    """Homogeneous clip-space positions (N, V, 4) of world vertices (V, 3) for N cameras."""
    homogeneous = torch.cat([vertices, torch.ones_like(vertices[:, :1])], dim=-1)
    return torch.einsum("nij,vj->nvi", mvp.to(vertices.dtype), homogeneous)


def pixel_coordinates(clip: torch.Tensor, size: int) -> torch.Tensor:
    """Continuous pixel coordinates (..., 2) as (column, row), pixel centres at integers, rows top-down."""
    ndc = clip[..., :2] / clip[..., 3:4]
    column = (ndc[..., 0] + 1) * (size / 2) - 0.5
    row = (1 - ndc[..., 1]) * (size / 2) - 0.5
    return torch.stack([column, row], dim=-1)


def _edge(a: torch.Tensor, b: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Twice the signed area of (a, b, p): the 2-D cross product (b - a) × (p - a)."""
    return (b[..., 0] - a[..., 0]) * (p[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (p[..., 0] - a[..., 0])


def _canonical_edge(
    a: torch.Tensor, b: torch.Tensor, ia: torch.Tensor, ib: torch.Tensor, p: torch.Tensor
) -> torch.Tensor:
    """Edge function evaluated from the lower-indexed vertex, so the two triangles sharing an
    edge compute bit-identical values of opposite sign: no pixel on a shared edge is lost."""
    swap = ia > ib
    start = torch.where(swap[..., None], b, a)
    end = torch.where(swap[..., None], a, b)
    value = _edge(start, end, p)
    return torch.where(swap, -value, value)


@torch.no_grad()
def zbuffer_face_ids(clip: torch.Tensor, faces: torch.Tensor, size: int) -> torch.Tensor:
    """Index of the nearest triangle at every pixel centre (N, size, size), -1 where none."""
    n_views = clip.shape[0]
    out = torch.full((n_views, size * size), -1, dtype=torch.long, device=clip.device)
    if faces.shape[0] == 0:
        return out.view(n_views, size, size)
    empty_key = torch.iinfo(torch.int64).max
    for view in range(n_views):
        xy = pixel_coordinates(clip[view].to(torch.float64), size)
        w = clip[view, :, 3].to(torch.float64)
        tri_xy = xy[faces]  # (F, 3, 2)
        tri_w = w[faces]
        lo = tri_xy.amin(dim=1).ceil().clamp(0, size - 1)
        hi = tri_xy.amax(dim=1).floor().clamp(-1, size - 1)
        extent = (hi - lo + 1).long()
        area = _edge(tri_xy[:, 0], tri_xy[:, 1], tri_xy[:, 2])
        usable = (tri_w > _MIN_W).all(dim=1) & (extent > 0).all(dim=1) & (area != 0)
        # Completely off-screen triangles have lo > hi after clamping and drop out above.
        usable &= (tri_xy.amax(dim=1) >= 0).all(dim=1) & (tri_xy.amin(dim=1) <= size - 1).all(dim=1)
        span = extent.amax(dim=1).clamp_min(1)
        bucket = torch.ceil(torch.log2(span.to(torch.float64))).long()
        keys = torch.full((size * size,), empty_key, dtype=torch.long, device=clip.device)
        for b in torch.unique(bucket[usable]).tolist():
            side = 1 << b
            members = (usable & (bucket == b)).nonzero()[:, 0]
            per_batch = max(1, _ZBUFFER_BATCH // (side * side))
            for chunk in members.split(per_batch):
                _rasterize_bin(keys, chunk, side, faces, tri_xy, tri_w, lo, hi, size)
        hit = keys != empty_key
        out[view, hit] = keys[hit] & 0xFFFFFFFF
    return out.view(n_views, size, size)


def _rasterize_bin(
    keys: torch.Tensor,
    face_index: torch.Tensor,
    side: int,
    faces: torch.Tensor,
    tri_xy: torch.Tensor,
    tri_w: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    size: int,
) -> None:
    """Scatter the nearest (depth, face) keys of the candidate pixels of one bin into `keys`."""
    offsets = torch.arange(side, device=keys.device)
    column = lo[face_index, 0].long()[:, None, None] + offsets[None, None, :]
    row = lo[face_index, 1].long()[:, None, None] + offsets[None, :, None]
    column, row = torch.broadcast_tensors(column, row)
    in_box = (column <= hi[face_index, 0].long()[:, None, None]) & (row <= hi[face_index, 1].long()[:, None, None])
    p = torch.stack([column, row], dim=-1).to(torch.float64)
    v = tri_xy[face_index][:, None, None]  # (f, 1, 1, 3, 2)
    ids = faces[face_index][:, None, None]
    area = _canonical_edge(v[..., 0, :], v[..., 1, :], ids[..., 0], ids[..., 1], v[..., 2, :])
    lam0 = _canonical_edge(v[..., 1, :], v[..., 2, :], ids[..., 1], ids[..., 2], p) / area
    lam1 = _canonical_edge(v[..., 2, :], v[..., 0, :], ids[..., 2], ids[..., 0], p) / area
    lam2 = _canonical_edge(v[..., 0, :], v[..., 1, :], ids[..., 0], ids[..., 1], p) / area
    inside = in_box & (lam0 >= 0) & (lam1 >= 0) & (lam2 >= 0)
    w = tri_w[face_index][:, None, None]
    inverse_depth = lam0 / w[..., 0] + lam1 / w[..., 1] + lam2 / w[..., 2]
    depth = (1.0 / inverse_depth[inside]).to(torch.float32)
    # Positive float32 bit patterns sort like the floats: pack (depth, face) into one int64.
    depth_bits = depth.view(torch.int32).to(torch.int64)
    face = face_index[:, None, None].expand_as(inside)[inside]
    key = (depth_bits << 32) | face
    pixel = (row * size + column)[inside]
    keys.scatter_reduce_(0, pixel, key, reduce="amin")


@torch.no_grad()
def embree_face_ids(vertices: torch.Tensor, faces: torch.Tensor, cameras: Cameras) -> torch.Tensor:
    """Index of the first triangle hit by each pixel-centre ray (N, size, size), -1 where none (Embree)."""
    import numpy as np
    import trimesh
    from trimesh.ray.ray_pyembree import RayMeshIntersector

    size = cameras.image_size
    mesh = trimesh.Trimesh(
        vertices.detach().to(torch.float64).cpu().numpy(), faces.cpu().numpy(), process=False, validate=False
    )
    intersector = RayMeshIntersector(mesh)
    origins, directions = cameras.to("cpu", torch.float64).pixel_rays()
    hit = intersector.intersects_first(
        np.ascontiguousarray(origins.reshape(-1, 3).numpy()), np.ascontiguousarray(directions.reshape(-1, 3).numpy())
    )
    return torch.from_numpy(hit.astype(np.int64)).view(len(cameras), size, size).to(vertices.device)


@dataclass
class Fragments:
    """The visible surface point of every covered pixel, differentiable in the vertex positions.

    view, pixel: which image and which flat pixel index (row·size + column) each fragment is in.
    face: the visible triangle; bary: perspective-correct barycentrics (M, 3) of its 3 vertices.
    front_facing: the triangle is counter-clockwise on screen (its right-hand normal faces the camera).
    inverse_depth: 1/w of the visible point (no grad): larger is nearer (what antialiasing compares).
    """

    view: torch.Tensor
    pixel: torch.Tensor
    face: torch.Tensor
    bary: torch.Tensor
    front_facing: torch.Tensor
    inverse_depth: torch.Tensor


def fragments_from_face_ids(clip: torch.Tensor, faces: torch.Tensor, face_ids: torch.Tensor) -> Fragments:
    """Perspective-correct barycentrics (with grad w.r.t. `clip`) at the pixels where `face_ids` ≥ 0."""
    n_views, size, _ = face_ids.shape
    flat = face_ids.reshape(n_views, -1)
    view, pixel = (flat >= 0).nonzero(as_tuple=True)
    face = flat[view, pixel]
    tri = clip[view[:, None], faces[face]]  # (M, 3, 4)
    ndc = tri[..., :2] / tri[..., 3:4]
    row = torch.div(pixel, size, rounding_mode="floor")
    column = pixel - row * size
    sample = torch.stack(
        [(2 * column + 1).to(clip.dtype) / size - 1, 1 - (2 * row + 1).to(clip.dtype) / size], dim=-1
    )
    area = _edge(ndc[:, 0], ndc[:, 1], ndc[:, 2])
    screen = torch.stack(
        [_edge(ndc[:, 1], ndc[:, 2], sample), _edge(ndc[:, 2], ndc[:, 0], sample), _edge(ndc[:, 0], ndc[:, 1], sample)],
        dim=-1,
    ) / area[:, None]
    # Screen-space barycentrics → barycentrics of the 3-D point: weight each by 1/w and renormalise.
    weighted = screen / tri[..., 3]
    inverse_depth = weighted.sum(dim=-1, keepdim=True)  # 1/w interpolates linearly on screen
    bary = weighted / inverse_depth
    return Fragments(
        view=view,
        pixel=pixel,
        face=face,
        bary=bary,
        front_facing=(area > 0).detach(),
        inverse_depth=inverse_depth[:, 0].detach(),
    )
