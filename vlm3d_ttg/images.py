"""The one loader for images users hand us: conditioning images and views to score.

Whatever the file holds — any PIL mode (1, L, LA, La, I;16*, I, F, P with or without transparency,
PA, RGB, RGBA, RGBa, RGBX, CMYK, YCbCr), an animation, an EXIF orientation tag — it comes out as an
upright 8-bit RGBA image of the first frame, alpha 255 where the file has no transparency. High bit
depths are scaled, not clipped (a 16-bit grey PNG is not read as white). The checks of what an image
shows (an object at all, big enough) are here too, so conditioning and scoring reject the same
inputs with the same words.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InvalidInputError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# Smallest image side accepted (a thumbnail this small carries no shape to reconstruct or judge).
MIN_IMAGE_SIDE = 16
# An object (the pixels with alpha above ALPHA_BACKGROUND) must span at least this many pixels on
# its longer side — no less than the smallest image — and 2 on its shorter: hy3dgen divides by the
# object's extent (last minus first row/column), which is 0 for a one-pixel-wide object.
MIN_OBJECT_SIDE = MIN_IMAGE_SIDE
MIN_OBJECT_THICKNESS = 2
# Alpha at or below this is background (anti-aliasing dust); at or above ALPHA_OPAQUE it is opaque.
ALPHA_BACKGROUND = 5
ALPHA_OPAQUE = 250

ACCEPTED_IMAGE_TYPES = "a file path (str or os.PathLike) or a PIL.Image.Image"

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# Errors PIL raises for files it cannot decode (truncated, corrupt, unsupported, absurdly large).
_READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def describe_source(source: Any) -> str:
    """How an image source (a path or a PIL image) is named in messages."""
    if isinstance(source, Image.Image):
        return f"(a {source.mode} PIL image of {source.size[0]}×{source.size[1]} px)"
    return f"'{source}'"


def _first_frame(image: Image.Image) -> Image.Image:
    """A copy of the first frame of `image` (an animation's later frames are ignored)."""
    if getattr(image, "n_frames", 1) > 1 and image.tell() != 0:
        position = image.tell()
        image.seek(0)
        try:
            return image.copy()
        finally:
            image.seek(position)  # leave a caller's image where it was
    return image.copy()


def _grey_to_8bit(values: np.ndarray, scale: float) -> Image.Image:
    """A greyscale array scaled by 255/`scale` (`scale` = the format's white) as an 8-bit L image."""
    grey = np.clip(np.asarray(values, dtype=np.float64) * (255.0 / scale), 0.0, 255.0)
    return Image.fromarray(np.round(grey).astype(np.uint8), mode="L")


def to_rgba(image: Image.Image, source: Any = None) -> Image.Image:
    """`image` (any PIL mode) as 8-bit RGBA: first frame, EXIF orientation applied, depth scaled.

    Integer greyscale (I;16*, I) is read as 16-bit data — white is 65535, Pillow's own convention
    for 16-bit PNG/TIFF — and float greyscale (F) as 0..1. Transparency comes from an alpha band
    or from a transparent colour key (`info['transparency']`, e.g. a palette PNG's tRNS); without
    either, alpha is 255 everywhere. Raises InvalidInputError for a mode PIL cannot convert.
    """
    name = describe_source(image if source is None else source)
    frame = _first_frame(image)
    try:
        frame = ImageOps.exif_transpose(frame)
    except Exception as exc:  # a corrupt EXIF block: use the pixels as stored rather than fail
        logger.warning("Ignoring the unreadable EXIF orientation of %s (%s).", name, exc)
    mode = frame.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        values = np.asarray(frame)
        grey = _grey_to_8bit(values, 65535.0)
        key = frame.info.get("transparency")
        if isinstance(key, int):  # a 16-bit grey PNG's tRNS colour key
            rgba = grey.convert("RGBA")
            rgba.putalpha(Image.fromarray(np.where(values == key, 0, 255).astype(np.uint8), mode="L"))
            return rgba
        return grey.convert("RGBA")
    if mode == "F":
        return _grey_to_8bit(np.nan_to_num(np.asarray(frame), nan=0.0), 1.0).convert("RGBA")
    try:
        if "A" in frame.getbands() or "a" in frame.getbands() or "transparency" in frame.info:
            return frame.convert("RGBA")  # also un-premultiplies RGBa / La
        return frame.convert("RGB").convert("RGBA")
    except (ValueError, OSError) as exc:
        raise InvalidInputError(
            f"Cannot use {name}: its colour mode '{mode}' cannot be converted to RGB ({exc}). "
            "Save it as an RGB or RGBA PNG."
        ) from None


def open_image(source: Any, *, what: str = "Input image") -> Image.Image:
    """The image at `source` (a path, or a PIL image) as upright 8-bit RGBA; see `to_rgba`.

    Raises InvalidInputError — naming `what` and the source — for any other type, a missing or
    unreadable file, or an image smaller than MIN_IMAGE_SIDE on a side.
    """
    if isinstance(source, Image.Image):
        try:  # a lazily opened image still reads its file here
            image = to_rgba(source)
        except InvalidInputError:
            raise
        except _READ_ERRORS as exc:
            raise InvalidInputError(f"Cannot read image {describe_source(source)} ({type(exc).__name__}: {exc}).") from None
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise InvalidInputError(f"{what} '{path}' does not exist.")
        if not path.is_file():
            raise InvalidInputError(f"{what} '{path}' is not a file.")
        try:
            with Image.open(path) as opened:
                opened.load()
                image = to_rgba(opened, path)
        except InvalidInputError:
            raise
        except _READ_ERRORS as exc:
            raise InvalidInputError(f"Cannot read image '{path}' ({type(exc).__name__}: {exc}).") from None
    else:
        kind = type(source).__name__
        shape = getattr(source, "shape", None)
        detail = f" of shape {tuple(shape)}" if shape is not None else ""
        raise InvalidInputError(f"{what} must be {ACCEPTED_IMAGE_TYPES}; got a {kind}{detail}.")
    width, height = image.size
    if min(width, height) < MIN_IMAGE_SIDE:
        raise InvalidInputError(
            f"{what} {describe_source(source)} is {width}×{height} px; need at least {MIN_IMAGE_SIDE} px per side."
        )
    return image


def has_useful_alpha(image: Image.Image) -> bool:
    """True if the image carries an alpha channel that actually separates object from background."""
    if "A" not in image.getbands():
        return False
    alpha = np.asarray(image.getchannel("A"))
    return bool((alpha < ALPHA_OPAQUE).any() and (alpha > ALPHA_BACKGROUND).any())


def object_box(image: Image.Image) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) — inclusive — of the pixels with alpha above ALPHA_BACKGROUND; None if none."""
    alpha = np.asarray(image.getchannel("A")) if "A" in image.getbands() else None
    if alpha is None:
        return (0, 0, image.size[0] - 1, image.size[1] - 1)
    rows = np.flatnonzero((alpha > ALPHA_BACKGROUND).any(axis=1))
    columns = np.flatnonzero((alpha > ALPHA_BACKGROUND).any(axis=0))
    if len(rows) == 0:
        return None
    return int(columns[0]), int(rows[0]), int(columns[-1]), int(rows[-1])


def check_object(image: Image.Image, source: Any, *, what: str = "Input image", after: str = "") -> None:
    """Raise InvalidInputError unless the RGBA `image` shows an object: not fully transparent, not tiny.

    `after` (e.g. " after removing its background") is added to the message to say at which stage
    the object went missing.
    """
    box = object_box(image)
    if box is None:
        raise InvalidInputError(
            f"{what} {describe_source(source)} is fully transparent{after}: there is no object in it. "
            "Give an image whose object is opaque on a transparent (or plain) background."
        )
    width, height = box[2] - box[0] + 1, box[3] - box[1] + 1
    if max(width, height) < MIN_OBJECT_SIDE or min(width, height) < MIN_OBJECT_THICKNESS:
        raise InvalidInputError(
            f"The object in {what.lower()} {describe_source(source)} is only {width}×{height} px{after} "
            f"(its non-transparent pixels); need at least {MIN_OBJECT_SIDE} px on its longer side and "
            f"{MIN_OBJECT_THICKNESS} on its shorter. Crop the image closer or use a larger one."
        )


def check_not_blank(image: Image.Image, source: Any, *, what: str = "Image") -> None:
    """Raise InvalidInputError if the RGB content of `image` is one flat colour (nothing to judge)."""
    extrema = image.convert("RGB").getextrema()
    if all(low == high for low, high in extrema):
        colour = tuple(low for low, _ in extrema)
        raise InvalidInputError(f"{what} {describe_source(source)} is a single flat colour {colour}: there is nothing in it.")


def composite_on_white(image: Image.Image) -> Image.Image:
    """The RGBA `image` over a white background (the renders' background), as RGB."""
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")


def load_view(source: Any, *, what: str = "Image") -> Any:
    """An image to score, as a float tensor (3, H, W) in [0, 1]: transparency composited over white.

    Rejected (InvalidInputError): unreadable or too small images, fully transparent ones, ones whose
    object is too small, and ones that are a single flat colour once composited.
    """
    image = open_image(source, what=what)
    return view_tensor(image, source, what=what)


def view_tensor(image: Image.Image, source: Any, *, what: str = "Image") -> Any:
    """An opened RGBA image (see `open_image`) checked for content and as a float tensor (3, H, W) in [0, 1]."""
    import torch

    if "A" in image.getbands() and (np.asarray(image.getchannel("A")) < ALPHA_OPAQUE).any():
        check_object(image, source, what=what)
    rgb = composite_on_white(image)
    check_not_blank(rgb, source, what=what)
    array = np.asarray(rgb, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def to_uint8(images: "torch.Tensor") -> "torch.Tensor":
    """Float images in [0, 1] (any shape; values outside are clamped) as uint8 in [0, 255], rounded, detached."""
    import torch

    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


__all__ = [
    "to_uint8",
    "ACCEPTED_IMAGE_TYPES",
    "MIN_IMAGE_SIDE",
    "MIN_OBJECT_SIDE",
    "check_not_blank",
    "check_object",
    "composite_on_white",
    "describe_source",
    "has_useful_alpha",
    "load_view",
    "object_box",
    "open_image",
    "to_rgba",
    "view_tensor",
]
