"""The miniature world's shapes: a seeded procedural generator of classes with stateable attributes.

Every shape is an analytic signed distance function (negative inside) built from a few primitives,
normalised so that its largest half-extent is 0.9 and its bounding box is centred, in hy3dgen's
decoding frame: +y up, the front facing +z (`render.cameras`). Parts are deliberately thick (handle
tubes, legs, fins ≥ ~0.07 after normalisation) so that a miniature ShapeVAE decoder can hold them.

Attributes a single picture can hide and words can state:
- mug: handle yes/no (the handle is on +x, so a camera on −x, azimuth 270°, cannot see it);
- table: 3 or 4 legs (low front views overlap the 4-leg table's back legs with its front legs);
- chair: back yes/no (seen from above, the back is edge-on);
- rocket: fins yes/no.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import InvalidInputError

#: Largest half-extent of every normalised shape (hy3dgen decodes into ±1.01).
EXTENT = 0.9

#: The classes, in a fixed order (their index is the class label).
CLASSES: tuple[str, ...] = (
    "mug", "table", "chair", "lamp", "rocket", "snowman", "bottle", "bowl", "torus",
    "box", "sphere", "cylinder", "cone",
)

#: Class → the binary attribute it carries (name, the value's two spellings).
ATTRIBUTES: dict[str, str] = {"mug": "handle", "table": "legs", "chair": "back", "rocket": "fins"}

SDF = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ShapeSpec:
    """One shape: its class, variant index, attribute values and drawn proportions."""

    cls: str
    variant: int
    attributes: dict[str, int] = field(default_factory=dict)
    params: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.cls}_{self.variant:03d}"

    def descriptions(self) -> list[str]:
        """Every true description of the shape in words (class, and its attribute stated)."""
        return [describe(self.cls, self.attributes)]


_ARTICLE = {"sphere": "a sphere", "torus": "a torus", "box": "a box"}


def describe(cls: str, attributes: dict[str, int]) -> str:
    """The description of a class with its attribute, e.g. 'a mug with a handle', 'a table with three legs'."""
    if cls not in CLASSES:
        raise InvalidInputError(f"Unknown miniworld class {cls!r}; known: {', '.join(CLASSES)}.")
    if cls == "mug":
        return "a mug with a handle" if attributes["handle"] else "a mug without a handle"
    if cls == "table":
        return "a table with four legs" if attributes["legs"] == 4 else "a table with three legs"
    if cls == "chair":
        return "a chair with a back" if attributes["back"] else "a chair without a back"
    if cls == "rocket":
        return "a rocket with fins" if attributes["fins"] else "a rocket without fins"
    return _ARTICLE.get(cls, f"a {cls}")


def all_descriptions() -> list[str]:
    """Every description the world can state (one per class and attribute value)."""
    out = []
    for cls in CLASSES:
        if cls == "table":
            out += [describe(cls, {"legs": 4}), describe(cls, {"legs": 3})]
        elif cls in ATTRIBUTES:
            out += [describe(cls, {ATTRIBUTES[cls]: 1}), describe(cls, {ATTRIBUTES[cls]: 0})]
        else:
            out.append(describe(cls, {}))
    return out


# --------------------------------------------------------------------------------------------
# Primitives (points (N, 3) → signed distance (N,), negative inside)


def _length(v: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.sqrt(np.sum(v * v, axis=axis))


def sphere(p: np.ndarray, center, radius: float) -> np.ndarray:
    return _length(p - np.asarray(center)) - radius


def ellipsoid(p: np.ndarray, center, radii) -> np.ndarray:
    # Bound-correct sign, approximate distance (exact enough near the surface for sampling).
    q = (p - np.asarray(center)) / np.asarray(radii)
    k0 = _length(q)
    k1 = _length(q / np.asarray(radii))
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-9)


def box(p: np.ndarray, center, half, rounding: float = 0.0) -> np.ndarray:
    q = np.abs(p - np.asarray(center)) - (np.asarray(half) - rounding)
    outside = _length(np.maximum(q, 0.0))
    inside = np.minimum(np.max(q, axis=-1), 0.0)
    return outside + inside - rounding


def cylinder_y(p: np.ndarray, center, radius: float, half_height: float) -> np.ndarray:
    q = p - np.asarray(center)
    d = np.stack([_length(q[:, [0, 2]]) - radius, np.abs(q[:, 1]) - half_height], axis=-1)
    return np.minimum(np.max(d, axis=-1), 0.0) + _length(np.maximum(d, 0.0))


def cone_y(p: np.ndarray, center, r_bottom: float, r_top: float, half_height: float) -> np.ndarray:
    """A capped cone (frustum) along y, centred at `center`, radius r_bottom at y−h and r_top at y+h."""
    q = p - np.asarray(center)
    qx = _length(q[:, [0, 2]])
    qy = q[:, 1]
    h = half_height
    k1 = np.array([r_top, h])
    k2 = np.array([r_top - r_bottom, 2.0 * h])
    ca_x = qx - np.minimum(qx, np.where(qy < 0.0, r_bottom, r_top))
    ca_y = np.abs(qy) - h
    t = ((k1[0] - qx) * k2[0] + (k1[1] - qy) * k2[1]) / float(k2 @ k2)
    t = np.clip(t, 0.0, 1.0)
    cb_x = qx - k1[0] + k2[0] * t
    cb_y = qy - k1[1] + k2[1] * t
    sign = np.where((cb_x < 0.0) & (ca_y < 0.0), -1.0, 1.0)
    return sign * np.sqrt(np.minimum(ca_x**2 + ca_y**2, cb_x**2 + cb_y**2))


def torus(p: np.ndarray, center, major: float, minor: float, axis: int = 1) -> np.ndarray:
    """A torus whose ring lies in the plane perpendicular to `axis` (0 = x, 1 = y, 2 = z)."""
    q = p - np.asarray(center)
    plane = [i for i in range(3) if i != axis]
    ring = _length(q[:, plane]) - major
    return np.sqrt(ring**2 + q[:, axis] ** 2) - minor


def union(*ds: np.ndarray) -> np.ndarray:
    return np.minimum.reduce(ds)


def subtract(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum(a, -b)


# --------------------------------------------------------------------------------------------
# Classes: parameters drawn from a seeded generator, and the raw (unnormalised) SDF


def _draw(cls: str, variant: int, rng: np.random.Generator) -> tuple[dict[str, int], dict[str, float]]:
    u = rng.uniform
    # The attribute alternates with the variant index: balanced in every split.
    flag = variant % 2
    if cls == "mug":
        return {"handle": 1 - flag}, {"r": u(0.34, 0.46), "h": u(0.38, 0.55), "wall": u(0.09, 0.12),
                                      "hr": u(0.22, 0.28), "ht": u(0.075, 0.09)}
    if cls == "table":
        return {"legs": 4 - flag}, {"w": u(0.65, 0.95), "d": u(0.45, 0.8), "t": u(0.07, 0.1),
                                    "lh": u(0.45, 0.75), "lr": u(0.075, 0.1), "round": float(rng.random() < 0.4)}
    if cls == "chair":
        return {"back": 1 - flag}, {"w": u(0.4, 0.55), "t": u(0.07, 0.1), "lh": u(0.45, 0.6),
                                    "lr": u(0.06, 0.08), "bh": u(0.45, 0.7), "bt": u(0.08, 0.11)}
    if cls == "rocket":
        return {"fins": 1 - flag}, {"r": u(0.16, 0.24), "h": u(0.55, 0.8), "nose": u(0.25, 0.4),
                                    "fl": u(0.18, 0.26), "fh": u(0.2, 0.32), "ft": u(0.07, 0.09),
                                    "nfins": float(rng.integers(3, 5))}
    if cls == "lamp":
        return {}, {"br": u(0.25, 0.4), "bt": u(0.05, 0.08), "ph": u(0.5, 0.8), "pr": u(0.05, 0.07),
                    "sb": u(0.3, 0.45), "st": u(0.12, 0.22), "sh": u(0.2, 0.3)}
    if cls == "snowman":
        return {}, {"r0": u(0.35, 0.45), "r1": u(0.24, 0.32), "r2": u(0.15, 0.21), "overlap": u(0.15, 0.3)}
    if cls == "bottle":
        return {}, {"r": u(0.22, 0.35), "h": u(0.35, 0.55), "sh": u(0.1, 0.2), "nr": u(0.08, 0.12), "nh": u(0.12, 0.25)}
    if cls == "bowl":
        return {}, {"R": u(0.5, 0.7), "th": u(0.09, 0.12), "cut": u(-0.1, 0.15), "flat": u(0.3, 0.6)}
    if cls == "torus":
        return {}, {"R": u(0.45, 0.65), "r": u(0.12, 0.25)}
    if cls == "box":
        return {}, {"x": u(0.25, 0.7), "y": u(0.25, 0.7), "z": u(0.25, 0.7), "round": u(0.0, 0.06)}
    if cls == "sphere":
        return {}, {"x": u(0.4, 0.6), "y": u(0.4, 0.6), "z": u(0.4, 0.6)}
    if cls == "cylinder":
        return {}, {"r": u(0.2, 0.5), "h": u(0.25, 0.7)}
    if cls == "cone":
        return {}, {"r": u(0.3, 0.6), "h": u(0.35, 0.7), "top": u(0.0, 0.08)}
    raise InvalidInputError(f"Unknown miniworld class {cls!r}; known: {', '.join(CLASSES)}.")


def make_spec(cls: str, variant: int, seed: int = 0) -> ShapeSpec:
    """The shape of `cls` number `variant` under `seed` (same arguments, same shape)."""
    if cls not in CLASSES:
        raise InvalidInputError(f"Unknown miniworld class {cls!r}; known: {', '.join(CLASSES)}.")
    rng = np.random.default_rng([seed, CLASSES.index(cls), variant])
    attributes, params = _draw(cls, variant, rng)
    return ShapeSpec(cls, variant, attributes, {k: float(v) for k, v in params.items()})


def _raw_sdf(spec: ShapeSpec, p: np.ndarray) -> np.ndarray:
    a, c = spec.params, spec.cls
    if c == "mug":
        body = cylinder_y(p, (0, 0, 0), a["r"], a["h"])
        cavity = cylinder_y(p, (0, a["wall"] + 0.2, 0), a["r"] - a["wall"], a["h"] + 0.2 - a["wall"] * 0.0)
        d = subtract(body, cavity)
        if spec.attributes["handle"]:
            handle = torus(p, (a["r"] + 0.06, 0.0, 0.0), a["hr"], a["ht"], axis=2)
            # Only the outer half of the ring: the inner half would sit in the cavity.
            handle = np.maximum(handle, -(p[:, 0] - a["r"] + a["wall"] * 0.5))
            d = union(d, handle)
        return d
    if c == "table":
        top_y = a["lh"]
        if a["round"]:
            top = cylinder_y(p, (0, top_y, 0), max(a["w"], a["d"]), a["t"])
            ex, ez = max(a["w"], a["d"]) * 0.68, max(a["w"], a["d"]) * 0.68
        else:
            top = box(p, (0, top_y, 0), (a["w"], a["t"], a["d"]), 0.02)
            ex, ez = a["w"] * 0.78, a["d"] * 0.72
        n = spec.attributes["legs"]
        angles = [np.pi / 4 + k * np.pi / 2 for k in range(4)] if n == 4 else [np.pi / 2 + k * 2 * np.pi / 3 for k in range(3)]
        scale = np.sqrt(2.0) if n == 4 else 1.0
        legs = [cylinder_y(p, (ex * scale * np.cos(t) * (1 if n == 4 else 0.9), top_y / 2, ez * scale * np.sin(t) * (1 if n == 4 else 0.9)),
                           a["lr"], top_y / 2) for t in angles]
        return union(top, *legs)
    if c == "chair":
        w, lh = a["w"], a["lh"]
        seat = box(p, (0, lh, 0), (w, a["t"], w), 0.02)
        inset = w - a["lr"] * 1.3
        legs = [cylinder_y(p, (sx * inset, lh / 2, sz * inset), a["lr"], lh / 2) for sx in (-1, 1) for sz in (-1, 1)]
        parts = [seat, *legs]
        if spec.attributes["back"]:
            parts.append(box(p, (0, lh + a["bh"] / 2 + a["t"] * 0.5, -w + a["bt"]), (w, a["bh"] / 2 + a["t"] * 0.5, a["bt"]), 0.02))
        return union(*parts)
    if c == "rocket":
        r, h = a["r"], a["h"]
        body = cylinder_y(p, (0, 0, 0), r, h)
        nose = cone_y(p, (0, h + a["nose"] / 2, 0), r, 0.0, a["nose"] / 2)
        parts = [body, nose]
        if spec.attributes["fins"]:
            n = int(a["nfins"])
            for k in range(n):
                t = 2 * np.pi * k / n + np.pi / 4
                cx, cz = np.cos(t), np.sin(t)
                # A fin is a box rotated about y: rotate the points instead.
                q = p.copy()
                qx = cx * p[:, 0] + cz * p[:, 2]
                qz = -cz * p[:, 0] + cx * p[:, 2]
                q[:, 0], q[:, 2] = qx, qz
                parts.append(box(q, (r + a["fl"] / 2 - 0.03, -h + a["fh"] / 2, 0), (a["fl"] / 2 + 0.03, a["fh"] / 2, a["ft"] / 2), 0.01))
        return union(*parts)
    if c == "lamp":
        base = cylinder_y(p, (0, a["bt"], 0), a["br"], a["bt"])
        pole = cylinder_y(p, (0, 2 * a["bt"] + a["ph"] / 2, 0), a["pr"], a["ph"] / 2 + 0.02)
        shade_y = 2 * a["bt"] + a["ph"] + a["sh"] * 0.5 - 0.05
        shade = cone_y(p, (0, shade_y, 0), a["sb"], a["st"], a["sh"])
        return union(base, pole, shade)
    if c == "snowman":
        r0, r1, r2 = a["r0"], a["r1"], a["r2"]
        y1 = r0 + r1 * (1 - a["overlap"])
        y2 = y1 + r1 + r2 * (1 - a["overlap"])
        return union(sphere(p, (0, 0, 0), r0), sphere(p, (0, y1, 0), r1), sphere(p, (0, y2, 0), r2))
    if c == "bottle":
        body = cylinder_y(p, (0, 0, 0), a["r"], a["h"])
        shoulder = cone_y(p, (0, a["h"] + a["sh"], 0), a["r"], a["nr"], a["sh"])
        neck = cylinder_y(p, (0, a["h"] + 2 * a["sh"] + a["nh"], 0), a["nr"], a["nh"])
        return union(body, shoulder, neck)
    if c == "bowl":
        R, th = a["R"], a["th"]
        shell = subtract(sphere(p, (0, 0, 0), R), sphere(p, (0, 0, 0), R - th))
        shell = np.maximum(shell, p[:, 1] - a["cut"] * R)  # keep below the rim plane
        shell = np.maximum(shell, -(p[:, 1] + R * (1 - 0.08 * a["flat"])))  # a flat foot
        return shell
    if c == "torus":
        return torus(p, (0, 0, 0), a["R"], a["r"], axis=1)
    if c == "box":
        return box(p, (0, 0, 0), (a["x"], a["y"], a["z"]), a["round"])
    if c == "sphere":
        return ellipsoid(p, (0, 0, 0), (a["x"], a["y"], a["z"]))
    if c == "cylinder":
        return cylinder_y(p, (0, 0, 0), a["r"], a["h"])
    if c == "cone":
        return cone_y(p, (0, 0, 0), a["r"], a["top"], a["h"])
    raise InvalidInputError(f"Unknown miniworld class {c!r}.")


def _grid(resolution: int, bound: float) -> np.ndarray:
    axis = np.linspace(-bound, bound, resolution)
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)


def shape_sdf(spec: ShapeSpec) -> SDF:
    """The normalised signed distance of `spec` (largest half-extent EXTENT, centred): points (N, 3) → (N,)."""
    bound = 2.5
    res = 72
    pts = _grid(res, bound)
    inside = _raw_sdf(spec, pts) < 0.0
    if not inside.any():
        raise InvalidInputError(f"{spec.name} is empty.")
    occupied = pts[inside]
    step = 2 * bound / (res - 1)
    lo, hi = occupied.min(axis=0) - step / 2, occupied.max(axis=0) + step / 2
    center = (lo + hi) / 2.0
    scale = EXTENT / float(np.max(hi - lo) / 2.0)

    def sdf(points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return _raw_sdf(spec, points / scale + center) * scale

    return sdf
