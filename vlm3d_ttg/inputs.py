"""Conditioning images: checked before any model loads; background removed only when needed."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InvalidInputError

logger = logging.getLogger(__name__)

MIN_IMAGE_SIDE = 16


def has_useful_alpha(image: Image.Image) -> bool:
    """True if the image carries an alpha channel that actually separates object from background."""
    if "A" not in image.getbands():
        return False
    alpha = np.asarray(image.getchannel("A"))
    return bool((alpha < 250).any() and (alpha > 5).any())


def background_removal_model() -> str | None:
    """Path of rembg's u2net model if it is already on disk (hy3dgen's background remover uses it)."""
    try:
        from rembg.sessions.u2net import U2netSession

        found = U2netSession.resolve_existing("u2net.onnx")
        if found:
            return found
    except Exception:  # rembg missing or its layout changed: fall back to the classic location
        pass
    legacy = Path(os.path.expanduser(os.environ.get("U2NET_HOME", "~/.u2net"))) / "u2net.onnx"
    return str(legacy) if legacy.is_file() else None


def check_condition_image(path: str | os.PathLike) -> tuple[Image.Image, bool]:
    """Open and check a conditioning image; return (RGBA image, needs background removal).

    Raises InvalidInputError for a missing/unreadable/too small image, and for an image without
    a useful alpha channel when hy3dgen's background remover (rembg's u2net model) is not on disk.
    """
    source = Path(path)
    if not source.exists():
        raise InvalidInputError(f"Input image '{source}' does not exist.")
    if not source.is_file():
        raise InvalidInputError(f"Input image '{source}' is not a file.")
    try:
        with Image.open(source) as opened:
            opened.load()
            image = opened.copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidInputError(f"Cannot read '{source}' as an image ({exc}).") from None
    if min(image.size) < MIN_IMAGE_SIDE:
        raise InvalidInputError(f"Input image '{source}' is {image.size[0]}×{image.size[1]}; need at least {MIN_IMAGE_SIDE} px per side.")
    needs_removal = not has_useful_alpha(image)
    if needs_removal and background_removal_model() is None:
        raise InvalidInputError(
            f"'{source}' has no transparent background, and background removal is unavailable "
            "(rembg's u2net model is not on disk and cannot be downloaded here). Fix: give an RGBA "
            "image whose background is transparent, or on a machine with internet run "
            "`python -c \"import rembg; rembg.new_session()\"` once to fetch the model."
        )
    return image.convert("RGBA"), needs_removal


def prepare_condition_image(path: str | os.PathLike) -> Image.Image:
    """The RGBA conditioning image for hy3dgen, with the background removed if it had none."""
    image, needs_removal = check_condition_image(path)
    if needs_removal:
        from hy3dgen.rembg import BackgroundRemover

        logger.info("removing the background of %s", path)
        image = BackgroundRemover()(image.convert("RGB"))
    if not has_useful_alpha(image):
        raise InvalidInputError(f"No object found in '{path}': its alpha channel is empty or fully opaque.")
    return image
