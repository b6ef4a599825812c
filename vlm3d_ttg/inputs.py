"""Conditioning images: checked before any model loads; background removed only when needed.

Reading and checking the image itself is `vlm3d_ttg.images`' job (the loader the scoring command
uses too); this module adds what conditioning needs on top: background removal.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from PIL import Image

from .errors import InvalidInputError
from .images import MIN_IMAGE_SIDE, check_object, describe_source, has_useful_alpha, open_image

logger = logging.getLogger(__name__)

__all__ = [
    "MIN_IMAGE_SIDE",
    "background_removal_model",
    "check_condition_image",
    "has_useful_alpha",
    "prepare_condition_image",
]


def default_background_removal_session() -> tuple[str, type] | None:
    """(name, session class) of the model hy3dgen's `BackgroundRemover` loads: rembg's default
    session (u2net up to rembg 2.0.6x, bria-rmbg since), or None when rembg is missing."""
    try:
        import inspect

        from rembg import new_session
        from rembg.sessions import sessions

        name = inspect.signature(new_session).parameters["model_name"].default
        return name, sessions[name]
    except Exception:  # rembg missing or its layout changed
        return None


def background_removal_model() -> str | None:
    """Path of the model hy3dgen's background remover uses (rembg's default session) if it is already on disk."""
    default = default_background_removal_session()
    if default is not None:
        name, session = default
        try:
            found = session.resolve_existing(f"{name}.onnx")
            if found:
                return found
        except Exception:  # an older rembg without resolve_existing: fall back to the classic location
            pass
    legacy = Path(os.path.expanduser(os.environ.get("U2NET_HOME", "~/.u2net"))) / f"{default[0] if default else 'u2net'}.onnx"
    return str(legacy) if legacy.is_file() else None


def check_condition_image(image: str | os.PathLike | Image.Image) -> tuple[Image.Image, bool]:
    """Open and check a conditioning image (a path or a PIL image); return (RGBA image, needs background removal).

    Any PIL mode is accepted (see `vlm3d_ttg.images.to_rgba`). Raises InvalidInputError for another
    type, a missing/unreadable/too small image, a fully transparent one or one whose object is too
    small, and for an image without a useful alpha channel when hy3dgen's background remover
    (rembg's background-removal model) is not on disk.
    """
    rgba = open_image(image, what="Input image")
    alpha_low, _ = rgba.getchannel("A").getextrema()
    needs_removal = not has_useful_alpha(rgba)
    if alpha_low < 250:  # the image has transparency: it must leave an object
        check_object(rgba, image)
    if needs_removal and background_removal_model() is None:
        raise InvalidInputError(
            f"Input image {describe_source(image)} has no transparent background, and background removal is unavailable "
            "(rembg's background-removal model is not on disk and cannot be downloaded here). Fix: give an RGBA "
            "image whose background is transparent, or on a machine with internet run "
            "`python -c \"import rembg; rembg.new_session()\"` once to fetch the model."
        )
    return rgba, needs_removal


def prepare_condition_image(image: Any) -> Image.Image:
    """The RGBA conditioning image for hy3dgen, with the background removed if it had none.

    `image` is a file path (str or os.PathLike) or a PIL image; anything else (a numpy array, a
    tensor, a list) raises InvalidInputError naming what is accepted.
    """
    rgba, needs_removal = check_condition_image(image)
    if needs_removal:
        from hy3dgen.rembg import BackgroundRemover

        logger.info("removing the background of %s", describe_source(image))
        rgba = BackgroundRemover()(rgba.convert("RGB")).convert("RGBA")
        after = " after removing its background"
        check_object(rgba, image, after=after)
        if not has_useful_alpha(rgba):
            raise InvalidInputError(
                f"No object found in {describe_source(image)}: background removal left it fully opaque "
                "(it found no background). Give an RGBA image whose background is transparent."
            )
    return rgba
