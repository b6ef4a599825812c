"""Orbit cameras around the cube hy3dgen decodes into, as OpenGL-convention matrices.

World frame: hy3dgen's decoding space, +y up, the front of an object facing +z. Azimuth 0 looks
at the front (camera on +z), azimuth 90° puts the camera on +x (to the right of a viewer facing
the front), i.e. azimuth turns counter-clockwise about +y seen from above; positive elevation is
above the object. Same angles as hy3dgen's texture pipeline (azimuth 0 = the front view).

Camera frame (OpenGL): x right, y up, the camera looks down -z. Clip space: the standard OpenGL
perspective projection, so x/w and y/w lie in [-1, 1] on screen with y up. Image rows are
top-down everywhere in this package (row 0 is the top of the picture).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import InvalidInputError

# The critic's default view side; the renderer itself renders any positive size (the critic's
# multiple-of-28 rule is checked where critic views are configured: `vlm3d_ttg.critic.check_view_size`).
DEFAULT_IMAGE_SIZE = 448
DEFAULT_AZIMUTHS = (0.0, 90.0, 180.0, 270.0)
DEFAULT_ELEVATION = 20.0
# A sphere of radius distance·sin(fov/2) = 1.20 fits in view: room for objects filling the ±1 box
# in most directions while the object still covers a good part of the picture.
DEFAULT_DISTANCE = 3.5
DEFAULT_FOV = 40.0
# Everything hy3dgen can decode lies within the ±1.01 cube, i.e. within this radius of the origin.
_SCENE_RADIUS = 1.01 * math.sqrt(3.0)


@dataclass(frozen=True)
class CameraJitter:
    """Random perturbation of orbit cameras, drawn afresh at every call (against reward hacking).

    azimuth_deg / elevation_deg: each view moves by U(-x, x) independently.
    shared_azimuth_deg: all views additionally turn together by U(-x, x) (360 = any direction).
    No defaults: guidance's amounts are declared once, in GuidanceConfig.
    """

    azimuth_deg: float
    elevation_deg: float
    shared_azimuth_deg: float = 0.0


@dataclass(frozen=True)
class Cameras:
    """N pinhole cameras: world→camera `view` (N, 4, 4) and `projection` (N, 4, 4), square images."""

    view: torch.Tensor
    projection: torch.Tensor
    image_size: int
    azimuth_deg: tuple[float, ...]
    elevation_deg: tuple[float, ...]
    distance: float
    fov_deg: float

    def __len__(self) -> int:
        return int(self.view.shape[0])

    @property
    def mvp(self) -> torch.Tensor:
        """World → clip space, (N, 4, 4)."""
        return self.projection @ self.view

    @property
    def rotation(self) -> torch.Tensor:
        """World → camera rotation (N, 3, 3)."""
        return self.view[:, :3, :3]

    @property
    def positions(self) -> torch.Tensor:
        """Camera centres in world space (N, 3)."""
        rotation = self.rotation
        return -(rotation.transpose(1, 2) @ self.view[:, :3, 3:4])[..., 0]

    @property
    def labels(self) -> list[str]:
        """One short label per view, e.g. 'az 90° el 20°'."""
        return [f"az {a:.0f}° el {e:.0f}°" for a, e in zip(self.azimuth_deg, self.elevation_deg)]

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Cameras":
        """The same cameras with matrices on `device` / in `dtype`."""
        return Cameras(
            view=self.view.to(device=device, dtype=dtype),
            projection=self.projection.to(device=device, dtype=dtype),
            image_size=self.image_size,
            azimuth_deg=self.azimuth_deg,
            elevation_deg=self.elevation_deg,
            distance=self.distance,
            fov_deg=self.fov_deg,
        )

    def pixel_rays(self) -> tuple[torch.Tensor, torch.Tensor]:
        """World-space ray origins (N, H·W, 3) and unit directions through every pixel centre, rows top-down."""
        size = self.image_size
        dtype = self.view.dtype
        ndc = (2 * torch.arange(size, dtype=dtype, device=self.view.device) + 1) / size - 1
        tan_half = math.tan(math.radians(self.fov_deg) / 2)
        y, x = torch.meshgrid(-ndc, ndc, indexing="ij")  # row 0 is the top: y = +1 - 1/size
        camera_dirs = torch.stack([x * tan_half, y * tan_half, -torch.ones_like(x)], dim=-1).reshape(-1, 3)
        directions = torch.einsum("nji,pj->npi", self.rotation, camera_dirs)
        directions = directions / directions.norm(dim=-1, keepdim=True)
        origins = self.positions[:, None, :].expand_as(directions)
        return origins, directions


def check_image_size(image_size: int) -> int:
    """Return `image_size` if it is a positive whole number of pixels, else raise InvalidInputError."""
    if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral) or image_size < 1:
        raise InvalidInputError(f"Image side must be a positive whole number of pixels, got {image_size!r}.")
    return int(image_size)


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """World → camera matrices (N, 4, 4) for cameras at `eye` (N, 3) looking at `target`, y up."""
    forward = target - eye
    forward = forward / forward.norm(dim=-1, keepdim=True)
    right = torch.linalg.cross(forward, up.expand_as(forward), dim=-1)
    right = right / right.norm(dim=-1, keepdim=True)
    true_up = torch.linalg.cross(right, forward, dim=-1)
    rotation = torch.stack([right, true_up, -forward], dim=1)  # rows: camera axes in world coords
    view = torch.zeros(eye.shape[0], 4, 4, dtype=eye.dtype, device=eye.device)
    view[:, :3, :3] = rotation
    view[:, :3, 3] = -(rotation @ eye[..., None])[..., 0]
    view[:, 3, 3] = 1
    return view


def perspective(fov_deg: float, near: float, far: float, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """OpenGL perspective projection (4, 4) for a square image with vertical field of view `fov_deg`."""
    focal = 1.0 / math.tan(math.radians(fov_deg) / 2)
    projection = torch.zeros(4, 4, dtype=dtype, device=device)
    projection[0, 0] = focal
    projection[1, 1] = focal
    projection[2, 2] = -(far + near) / (far - near)
    projection[2, 3] = -2.0 * far * near / (far - near)
    projection[3, 2] = -1.0
    return projection


def orbit_position(azimuth_deg: torch.Tensor, elevation_deg: torch.Tensor, distance: float) -> torch.Tensor:
    """Camera centres on a sphere around the origin (see the module docstring for the angles)."""
    azimuth = torch.deg2rad(azimuth_deg)
    elevation = torch.deg2rad(elevation_deg)
    return distance * torch.stack(
        [torch.cos(elevation) * torch.sin(azimuth), torch.sin(elevation), torch.cos(elevation) * torch.cos(azimuth)],
        dim=-1,
    )


def orbit_cameras(
    count: int | None = None,
    *,
    azimuths_deg: Sequence[float] | None = None,
    elevation_deg: float | Sequence[float] = DEFAULT_ELEVATION,
    distance: float = DEFAULT_DISTANCE,
    fov_deg: float = DEFAULT_FOV,
    image_size: int = DEFAULT_IMAGE_SIZE,
    jitter: CameraJitter | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Cameras:
    """Cameras on an orbit around the origin, all looking at it.

    By default 4 views at azimuth 0/90/180/270° (front, +x side, back, -x side), elevation 20°.
    `count` alone spaces that many views evenly from azimuth 0; `azimuths_deg` gives them
    explicitly. With `jitter`, angles are perturbed with `generator` (reproducible per seed).
    """
    check_image_size(image_size)
    if azimuths_deg is None:
        count = len(DEFAULT_AZIMUTHS) if count is None else count
        if count < 1:
            raise InvalidInputError(f"Need at least one view, got count={count}.")
        azimuths = [360.0 * i / count for i in range(count)]
    else:
        azimuths = [float(a) for a in azimuths_deg]
        if count is not None and count != len(azimuths):
            raise InvalidInputError(f"count={count} but {len(azimuths)} azimuths were given.")
        if not azimuths:
            raise InvalidInputError("Need at least one view, got no azimuths.")
    n = len(azimuths)
    if isinstance(elevation_deg, (int, float)):
        elevations = [float(elevation_deg)] * n
    else:
        elevations = [float(e) for e in elevation_deg]
        if len(elevations) != n:
            raise InvalidInputError(f"{len(elevations)} elevations for {n} views.")
    if not 0 < fov_deg < 180:
        raise InvalidInputError(f"fov_deg must be in (0, 180), got {fov_deg}.")
    if distance <= _SCENE_RADIUS:
        raise InvalidInputError(
            f"Camera distance {distance} is inside the decoded cube (radius {_SCENE_RADIUS:.2f}); "
            "the renderers do not clip against the near plane."
        )

    azimuth = torch.tensor(azimuths, dtype=torch.float64)
    elevation = torch.tensor(elevations, dtype=torch.float64)
    if jitter is not None:
        azimuth = azimuth + _uniform(n, jitter.azimuth_deg, generator)
        azimuth = azimuth + _uniform(1, jitter.shared_azimuth_deg, generator)
        elevation = elevation + _uniform(n, jitter.elevation_deg, generator)
    # Keep clear of the poles, where "y up" and the viewing direction become parallel.
    elevation = elevation.clamp(-89.0, 89.0)

    eye = orbit_position(azimuth, elevation, distance)
    view = look_at(eye, torch.zeros_like(eye), torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    near = max(distance - _SCENE_RADIUS, 1e-2)
    far = distance + _SCENE_RADIUS
    projection = perspective(fov_deg, near, far, dtype=torch.float64).expand(n, 4, 4).clone()
    return Cameras(
        view=view.to(device=device, dtype=dtype),
        projection=projection.to(device=device, dtype=dtype),
        image_size=image_size,
        azimuth_deg=tuple(float(a) for a in azimuth),
        elevation_deg=tuple(float(e) for e in elevation),
        distance=float(distance),
        fov_deg=float(fov_deg),
    )


def _uniform(n: int, half_width: float, generator: torch.Generator | None) -> torch.Tensor:
    if half_width <= 0:
        return torch.zeros(n, dtype=torch.float64)
    return (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * half_width
