"""The input-silhouette reward term: the shape's coverage at the input's camera vs the input's foreground.

Image-to-3D methods keep a result faithful to its picture with a reference-view mask term
(Magic123, DreamGaussian); a reference-free VLM critic can pull the shape away from it. This term
is that mask term for guidance (docs/design.md §3, §5):

    silhouette = softIoU(coverage at the reference camera, foreground of the conditioning image)

- **The target** is the conditioning image's alpha *after hy3dgen's own preprocessing* (cropped to
  the object, recentred, scaled to 85 % of the side: what the DiT sees), from the pipeline's image
  processor, area-resampled to the term's image size (`foreground_mask`).
- **Soft IoU (Jaccard), not Dice**: Σ m·t / Σ (m + t − m·t) over pixels with fractional coverage m
  and target t. On binary masks it *is* the IoU the run reports (`final_silhouette_iou`), so what
  guidance follows and what is measured share one unit; Dice = 2·IoU/(1+IoU) ranks shapes the same
  but would report a different number than the metric.
- **The reference camera is estimated, not assumed** (`estimate_reference_camera`): an orbit camera
  (azimuth, elevation; the orbit's distance and field of view) followed by hy3dgen's own
  recentring applied to the render — an image-plane scale and offset that map the rendered
  silhouette's bounding box onto the target's (longest side to longest side, centre to centre).
  That is the minimum that makes the fit honest: the angles decide the silhouette's shape, the
  scale/offset are exactly what the preprocessing did to the input picture. Azimuth and elevation
  come from a grid search (every 20° of azimuth, elevation −15°…45° in 15° steps, at 64 px; then a 3 × 3 pattern search at the term's size with steps of 10°, 5° and 2.5°)
  maximising the IoU; ties go to the candidate nearest the front view. An input that is not a front
  view simply lands at another azimuth/elevation; a symmetric object is ambiguous between mirrored
  views (the tie rule picks the one nearest the front); an input from outside the searched
  elevations gets the best camera inside them, and the recorded `fit_iou` says how good that is.
- **Once per run, then fixed**: the estimate runs on the first predicted clean shape x̂ of the
  guidance schedule that has a surface (`search.observation_steps`). The term is a plain reward term:
  with weight μ it sees every x̂ the reward decodes; with weight 0 the reward keeps it as an observer
  (it sees them without entering r), and a run that guides nothing shows its observers the x̂ of those
  steps all the same (the sampler's `ObserveHook`, candidate 0's x̂ recomputed on one row), which is
  the guided run's first x̂ bit for bit because nothing has been guided before it — so guided and
  unguided runs on a seed share the camera and their `final_silhouette_iou` compare on equal terms.
  The final IoU is measured where the final mesh is scored (`VLMReward.measure_mesh` → `measure_final`).
- **Frames**: the term renders in the decode frame (the guidance surface's). hy3dgen's export maps
  grid index i to −b + i·2b/(R + 1) while the decoder sampled −b + i·2b/R, so the exported mesh is
  the decoded one shrunk by R/(R + 1) towards the corner (−b, −b, −b); `export_frame_matrix` is that
  map, and the recorded `world_to_camera` includes it, so the manifest's matrices project the mesh
  file as `trimesh.load(path, force="mesh")` returns it (tests/test_silhouette.py re-projects it
  with numpy).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import EmptySurfaceError, InvalidInputError
from .images import to_uint8
from .render import Cameras, orbit_cameras
from .render.cameras import DEFAULT_DISTANCE, DEFAULT_FOV
from .render.raster_cpu import clip_positions
from .terms import TermValue, Views

logger = logging.getLogger(__name__)

#: The coarse search: every 20° of azimuth at these elevations; then a pattern search with these steps (degrees).
SEARCH_AZIMUTHS = tuple(float(a) for a in range(0, 360, 20))
SEARCH_ELEVATIONS = (-15.0, 0.0, 15.0, 30.0, 45.0)
REFINE_STEPS = (10.0, 5.0, 2.5)
#: The side at which the coarse search renders (the refinement renders at the term's own side).
SEARCH_SIZE = 64


def soft_iou(coverage: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Soft IoU (Jaccard) Σ m·t / Σ (m + t − m·t) of coverage `m` and target `t` in [0, 1] (same shape);
    the IoU itself on binary masks. Differentiable in both."""
    intersection = (coverage * target).sum()
    union = (coverage + target - coverage * target).sum()
    return intersection / (union + eps)


def binary_iou(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """IoU of two masks, a pixel counting where its value is ≥ 0.5 (1.0 when both are empty)."""
    a = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a) >= 0.5
    b = np.asarray(b.detach().cpu() if isinstance(b, torch.Tensor) else b) >= 0.5
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _image_affine(scale: float, offset: tuple[float, float]) -> torch.Tensor:
    """Clip-space matrix of an image-plane similarity: NDC x' = s·x + tx, y' = s·y + ty."""
    affine = torch.eye(4, dtype=torch.float64)
    affine[0, 0] = affine[1, 1] = scale
    affine[0, 3], affine[1, 3] = offset
    return affine


@dataclass(frozen=True)
class ReferenceCamera:
    """The estimated camera of the input picture: an orbit camera plus hy3dgen's recentring (scale, offset in NDC)."""

    azimuth_deg: float
    elevation_deg: float
    scale: float
    offset: tuple[float, float]
    image_size: int
    fit_iou: float  # IoU of the estimating shape's silhouette with the target at this camera
    distance: float = DEFAULT_DISTANCE
    fov_deg: float = DEFAULT_FOV
    estimated_at: dict[str, Any] = field(default_factory=dict)  # {"step", "sigma"} of the x̂ it was fitted on

    def cameras(self, *, image_size: int | None = None, device: Any = None, dtype: torch.dtype = torch.float32) -> Cameras:
        """The camera as a one-view `Cameras` in the decode frame (projection = recentring · perspective)."""
        base = orbit_cameras(azimuths_deg=[self.azimuth_deg], elevation_deg=self.elevation_deg, distance=self.distance,
                             fov_deg=self.fov_deg, image_size=image_size or self.image_size, dtype=torch.float64)
        projection = _image_affine(self.scale, self.offset) @ base.projection[0]
        return Cameras(base.view.to(device=device, dtype=dtype), projection[None].to(device=device, dtype=dtype),
                       base.image_size, base.azimuth_deg, base.elevation_deg, base.distance, base.fov_deg)

    def matrices(self, frame: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(world_to_camera, projection) 4 × 4 in float64, OpenGL convention; with `frame` (the backbone's
        `export_frame`: exported-mesh frame → decode frame), in the exported mesh's frame (else the decode frame)."""
        cams = self.cameras(dtype=torch.float64)
        view = cams.view[0].numpy()
        if frame is not None:
            view = view @ frame
        return view, cams.projection[0].numpy()

    def to_dict(self, frame: np.ndarray | None = None) -> dict[str, Any]:
        """JSON-ready: the parameters, and the matrices in the exported mesh's frame (see `matrices`)."""
        view, projection = self.matrices(frame)
        return {
            "azimuth_deg": self.azimuth_deg, "elevation_deg": self.elevation_deg, "scale": self.scale,
            "offset": list(self.offset), "distance": self.distance, "fov_deg": self.fov_deg,
            "image_size": self.image_size, "fit_iou": self.fit_iou, "estimated_at": dict(self.estimated_at),
            "frame": ("the exported mesh as trimesh.load(path, force='mesh') returns it" if frame is not None
                      else "hy3dgen's decode frame"),
            "convention": "OpenGL: clip = projection @ world_to_camera @ [x, y, z, 1]; NDC y up, image rows top-down",
            "world_to_camera": view.tolist(), "projection": projection.tolist(),
        }


def coverage_masks(vertices: torch.Tensor, faces: torch.Tensor, cameras: Cameras, *, batch: int = 1 << 22) -> torch.Tensor:
    """Binary coverage (N, H, W) of a mesh through cameras, no grad: a pixel is covered when its centre lies
    in a projected triangle (the renderer's sampling rule, without depth: coverage needs none).

    All views' triangles are rasterised together, binned by their bounding-box side, so the many
    camera candidates of the estimate cost about as much as one batched pass.
    """
    size = cameras.image_size
    n_views = len(cameras)
    out = torch.zeros(n_views * size * size, dtype=torch.bool, device=vertices.device)
    faces = faces.to(vertices.device, torch.long)
    if faces.shape[0] == 0:
        return out.view(n_views, size, size).float()
    with torch.no_grad():
        cams = cameras.to(vertices.device, torch.float32)
        clip = clip_positions(vertices.detach().float(), cams.mvp)  # (N, V, 4)
        w = clip[..., 3]
        xy = torch.stack([(clip[..., 0] / w + 1) * (size / 2) - 0.5, (1 - clip[..., 1] / w) * (size / 2) - 0.5], -1)
        tri = xy[:, faces].reshape(-1, 3, 2)  # (N·F, 3, 2): every view's triangles together
        view = torch.arange(n_views, device=vertices.device).repeat_interleave(faces.shape[0])
        lo = tri.amin(dim=1).ceil().clamp(0, size - 1)
        hi = tri.amax(dim=1).floor().clamp(-1, size - 1)
        extent = (hi - lo + 1).long()
        usable = (w[:, faces].reshape(-1, 3) > 1e-6).all(dim=1) & (extent > 0).all(dim=1)
        usable &= (tri.amax(dim=1) >= 0).all(dim=1) & (tri.amin(dim=1) <= size - 1).all(dim=1)
        side = extent.amax(dim=1).clamp_min(1)
        bucket = torch.ceil(torch.log2(side.float())).long()
        for b in torch.unique(bucket[usable]).tolist():
            span = 1 << b
            members = (usable & (bucket == b)).nonzero()[:, 0]
            offsets = torch.arange(span, device=vertices.device)
            for chunk in members.split(max(1, batch // (span * span))):
                column = lo[chunk, 0].long()[:, None, None] + offsets[None, None, :]
                row = lo[chunk, 1].long()[:, None, None] + offsets[None, :, None]
                column, row = torch.broadcast_tensors(column, row)
                inside = (column <= hi[chunk, 0].long()[:, None, None]) & (row <= hi[chunk, 1].long()[:, None, None])
                v = tri[chunk][:, None, None]  # (f, 1, 1, 3, 2)
                px, py = column.float(), row.float()
                signs = []
                for a, c in ((0, 1), (1, 2), (2, 0)):
                    ax, ay, cx, cy = v[..., a, 0], v[..., a, 1], v[..., c, 0], v[..., c, 1]
                    signs.append((cx - ax) * (py - ay) - (cy - ay) * (px - ax))
                e0, e1, e2 = signs
                inside &= ((e0 >= 0) & (e1 >= 0) & (e2 >= 0)) | ((e0 <= 0) & (e1 <= 0) & (e2 <= 0))
                flat = (view[chunk][:, None, None] * size + row) * size + column
                out[flat[inside]] = True
    return out.view(n_views, size, size).float()


def _bbox_ndc(masks: torch.Tensor) -> torch.Tensor:
    """Per mask (N, S, S): [x_min, x_max, y_min, y_max] of the covered pixels in NDC (pixel edges), NaN if empty."""
    n, size, _ = masks.shape
    out = torch.full((n, 4), float("nan"), dtype=torch.float64)
    for k in range(n):
        rows = torch.nonzero(masks[k].any(dim=1))[:, 0]
        cols = torch.nonzero(masks[k].any(dim=0))[:, 0]
        if rows.numel() == 0:
            continue
        out[k, 0] = 2.0 * float(cols.min()) / size - 1.0
        out[k, 1] = 2.0 * float(cols.max() + 1) / size - 1.0
        out[k, 2] = 1.0 - 2.0 * float(rows.max() + 1) / size
        out[k, 3] = 1.0 - 2.0 * float(rows.min()) / size
    return out


def _fit(vertices: torch.Tensor, faces: torch.Tensor, target: torch.Tensor, angles: Sequence[tuple[float, float]],
         size: int, chunk: int = 64) -> list[tuple[float, float, float, tuple[float, float], float]]:
    """(azimuth, elevation, scale, offset, IoU) per candidate angle pair, recentred as hy3dgen would recentre
    a picture of the mesh: the bounding box of the projected mesh onto the target's (longest side, centre)."""
    target_small = F.interpolate(target[None, None].float(), size=(size, size), mode="area")[0, 0] >= 0.5
    (t_box,) = _bbox_ndc(target_small[None])
    t_long = max(float(t_box[1] - t_box[0]), float(t_box[3] - t_box[2]))
    t_centre = (float(t_box[0] + t_box[1]) / 2, float(t_box[2] + t_box[3]) / 2)
    results = []
    for start in range(0, len(angles), chunk):
        part = angles[start:start + chunk]
        base = orbit_cameras(azimuths_deg=[a for a, _ in part], elevation_deg=[e for _, e in part], image_size=size,
                             dtype=torch.float64)
        clip = clip_positions(vertices.detach().double().cpu(), base.mvp)
        ndc = clip[..., :2] / clip[..., 3:4]  # (N, V, 2): the silhouette's bounding box is the vertices'
        low, high = ndc.amin(dim=1), ndc.amax(dim=1)
        projections = []
        for k in range(len(part)):
            scale = t_long / max(float(high[k, 0] - low[k, 0]), float(high[k, 1] - low[k, 1]), 1e-9)
            offset = (t_centre[0] - scale * float(low[k, 0] + high[k, 0]) / 2,
                      t_centre[1] - scale * float(low[k, 1] + high[k, 1]) / 2)
            projections.append(_image_affine(scale, offset) @ base.projection[k])
            results.append([part[k][0], part[k][1], scale, offset, 0.0])
        aligned = Cameras(base.view, torch.stack(projections), size, base.azimuth_deg, base.elevation_deg,
                          base.distance, base.fov_deg)
        masks = coverage_masks(vertices, faces, aligned).cpu()
        for k in range(len(part)):
            results[start + k][4] = binary_iou(masks[k], target_small)
    return [tuple(r) for r in results]


def _front_distance(azimuth: float, elevation: float) -> float:
    wrapped = (azimuth + 180.0) % 360.0 - 180.0
    return abs(wrapped) + abs(elevation)


def estimate_reference_camera(
    vertices: torch.Tensor, faces: torch.Tensor, target: torch.Tensor, *, image_size: int | None = None,
    azimuths: Sequence[float] = SEARCH_AZIMUTHS, elevations: Sequence[float] = SEARCH_ELEVATIONS,
) -> ReferenceCamera:
    """The camera through which the mesh's silhouette, recentred like hy3dgen's preprocessing, best matches `target`.

    `target` (S, S) in [0, 1] is the preprocessed foreground (`foreground_mask`); the result renders at
    `image_size` (default S). A grid search over azimuth × elevation (coarse at SEARCH_SIZE px, then a
    pattern search at full size), scale/offset from the bounding boxes (module docstring);
    ties go to the view nearest the front. Raises EmptySurfaceError when the mesh is seen from nowhere.
    """
    size = image_size or int(target.shape[-1])
    if faces.shape[0] == 0:
        raise EmptySurfaceError("The mesh has no faces to fit a camera to.")
    target = target.detach().float().cpu()
    vertices = vertices.detach().float()
    coarse_angles = sorted(((a, e) for a in azimuths for e in elevations), key=lambda ae: _front_distance(*ae))
    coarse = _fit(vertices, faces, target, coarse_angles, min(SEARCH_SIZE, size))
    best = max(coarse, key=lambda fit: fit[4])  # max keeps the first of equals: the one nearest the front
    # Pattern search at the term's own size: move to the best 3 × 3 neighbour until the centre is best,
    # then halve the step (10° → 5° → 2.5°).
    seen: dict[tuple[float, float], tuple] = {}
    centre = (best[0], best[1])
    for step in REFINE_STEPS:
        while True:
            around = [((centre[0] + da) % 360.0, float(np.clip(centre[1] + de, -89.0, 89.0)))
                      for de in (0.0, -step, step) for da in (0.0, -step, step)]
            new = [ae for ae in dict.fromkeys(around) if ae not in seen]
            for fit in _fit(vertices, faces, target, new, size) if new else []:
                seen[(fit[0], fit[1])] = fit
            best = max((seen[ae] for ae in dict.fromkeys(around)), key=lambda fit: fit[4])  # centre first on ties
            if (best[0], best[1]) == centre:
                break
            centre = (best[0], best[1])
    azimuth, elevation, scale, offset, iou = best
    return ReferenceCamera(float(azimuth), float(elevation), float(scale), (float(offset[0]), float(offset[1])), size,
                           float(iou))


class SilhouetteTerm:
    """The reward term "silhouette": soft IoU of the coverage at the reference camera with the input's foreground.

    `target` (S, S) in [0, 1] (the backbone's `input_foreground`). The camera is estimated on the first
    mesh the reward shows the term (`observe`, called with the detached mesh before the term's cameras
    are asked for) and then kept; `camera` may also be given (or set) up front; `estimated_at` is the
    step whose x̂ fitted it (`end_of_step`). Parts: the binary "iou". `measure_final` is the exported
    mesh's IoU at that camera (`final_iou`), `record` the manifest's entry.
    """

    name = "silhouette"

    def __init__(self, target: torch.Tensor, camera: ReferenceCamera | None = None):
        if target.ndim != 2 or target.shape[0] != target.shape[1]:
            raise InvalidInputError(f"The silhouette target must be a square (S, S) mask, got {tuple(target.shape)}.")
        self.target = target.detach().float().cpu()
        self.camera = camera
        self.estimated_at: dict[str, Any] = {}
        self.final_iou: float | None = None
        self._cameras: Cameras | None = None

    @property
    def wants_shape(self) -> bool:
        """True until a mesh has fixed the camera."""
        return self.camera is None

    def end_of_step(self, step: int, sigma: float) -> None:
        """A sampler step ended: the first one after which a camera is set is the one it was fitted at."""
        if self.camera is not None and not self.estimated_at:
            self.estimated_at = {"step": step, "sigma": float(sigma)}

    def observe(self, vertices: torch.Tensor, faces: torch.Tensor) -> None:
        """Estimate the reference camera on this mesh unless one is set (the first mesh wins)."""
        if self.camera is None:
            self.camera = estimate_reference_camera(vertices, faces, self.target)
            logger.info("silhouette: reference camera az %.0f° el %.0f° scale %.3f (fit IoU %.3f)",
                        self.camera.azimuth_deg, self.camera.elevation_deg, self.camera.scale, self.camera.fit_iou)

    def cameras(self, orbit: Cameras) -> Cameras:
        """The one reference camera (raises if it was never estimated)."""
        if self.camera is None:
            raise InvalidInputError("The silhouette term has no reference camera yet (observe a mesh first).")
        if self._cameras is None or self._cameras.view.device != orbit.view.device:
            self._cameras = self.camera.cameras(device=orbit.view.device)
        return self._cameras

    def __call__(self, views: Views) -> TermValue:
        """Soft IoU of the rendered coverage with the target."""
        coverage = views.masks[0, 0].clamp(0.0, 1.0)
        target = self.target.to(coverage.device, coverage.dtype)
        value = soft_iou(coverage, target)
        return TermValue(value, {"iou": binary_iou(coverage, target)})

    def modules(self) -> list[torch.nn.Module]:
        """No model weights."""
        return []

    def measure_final(self, vertices: np.ndarray, faces: np.ndarray, frame: np.ndarray) -> dict[str, float]:
        """{"final_iou": the exported mesh's IoU at the reference camera} (`frame`: the backbone's `export_frame`,
        exported-mesh frame → decode frame); {} without a camera. Kept as `final_iou` for the record."""
        if self.camera is None:
            return {}
        self.final_iou = final_silhouette_iou(vertices, faces, self.camera, self.target, frame)
        return {"final_iou": self.final_iou}

    def record(self, weight: float, frame: np.ndarray, mask_path: Any) -> dict[str, Any]:
        """The manifest's "silhouette" entry: the weight, the metric, the mask file and the camera in the
        exported mesh's frame (`frame`: the backbone's `export_frame`), or a note saying why there is none."""
        camera = self.camera
        return {
            "weight": float(weight),
            "metric": "soft IoU (Jaccard) of the coverage at the reference camera with the preprocessed input's foreground",
            "mask": str(mask_path),
            "camera": camera.to_dict(frame) | {"estimated_at": dict(self.estimated_at)} if camera is not None else None,
            "note": None if camera is not None else
            "no predicted shape of the guidance schedule had a surface: no camera was estimated",
        }


def final_silhouette_iou(vertices: np.ndarray, faces: np.ndarray, camera: ReferenceCamera, target: torch.Tensor,
                         frame: np.ndarray) -> float:
    """IoU of an exported mesh's silhouette at the reference camera with the target; `frame` maps the
    exported mesh's frame to the decode frame (the backbone's `export_frame`)."""
    view, projection = camera.matrices(frame)
    cams = Cameras(torch.tensor(view[None]), torch.tensor(projection[None]), camera.image_size,
                   (camera.azimuth_deg,), (camera.elevation_deg,), camera.distance, camera.fov_deg)
    mask = coverage_masks(torch.as_tensor(np.asarray(vertices), dtype=torch.float64).float(),
                          torch.as_tensor(np.asarray(faces, dtype=np.int64)), cams)
    return binary_iou(mask[0], target)


def silhouette_path_for(mesh_path: Any) -> Any:
    """Where a run writes the mask its silhouette term used: OUT.silhouette.png next to the mesh."""
    from pathlib import Path

    path = Path(mesh_path)
    return path.with_name(path.name + ".silhouette.png")


def write_mask_png(path: Any, mask: torch.Tensor) -> None:
    """The mask (S, S) in [0, 1] as an 8-bit greyscale PNG (white = foreground) at `path` (already staged)."""
    from PIL import Image

    pixels = to_uint8(mask).cpu().numpy()
    Image.fromarray(pixels, "L").save(path, format="PNG")


__all__ = [
    "ReferenceCamera", "SilhouetteTerm", "binary_iou", "coverage_masks", "estimate_reference_camera",
    "final_silhouette_iou", "silhouette_path_for", "soft_iou", "write_mask_png",
]
