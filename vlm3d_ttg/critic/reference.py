"""The reference image the critic sees with `--critic-reference`: the conditioning image as the shape model sees it.

hy3dgen's image processor crops the object, recentres it with a border and composites it on white
before the DiT conditions on it. The critic's reference is that same image (not the raw upload),
so what the critic compares the views with is what the shape was generated from, on the same white
background as the renders, at the views' side so that it costs the tokens of one view.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError
from .preprocess import VIEW_SIDE_MULTIPLE, check_view_size


def reference_from_condition(
    image_processor: Callable[[Any], dict[str, Any]], image: Any, side: int, multiple: int = VIEW_SIDE_MULTIPLE
) -> torch.Tensor:
    """The critic's reference (3, side, side) in [0, 1] from a conditioning image, through the shape pipeline's `image_processor`.

    `image_processor` is hy3dgen's (`pipeline.image_processor`: image → {"image": (1, 3, S, S) in
    [-1, 1], ...}); `image` is what the pipeline is given (an RGBA PIL image or a path); `side` the
    view size, a multiple of the critic's `multiple` (Qwen2.5-VL: 28, Qwen3-VL: 32).
    """
    side = check_view_size(side, multiple, "the critic's view-side multiple")
    processed = image_processor(image)
    pixels = processed.get("image") if isinstance(processed, dict) else None
    if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4 or pixels.shape[:2] != (1, 3):
        shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
        raise InvalidInputError(f"The shape model's image processor returned {shape}, not one RGB image (1, 3, S, S).")
    # hy3dgen's processor maps [0, 255] to [-1, 1].
    pixels = ((pixels.detach().float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0)
    if tuple(pixels.shape[-2:]) != (side, side):
        pixels = F.interpolate(pixels, size=(side, side), mode="bicubic", align_corners=False, antialias=True).clamp(0.0, 1.0)
    return pixels[0]


__all__ = ["reference_from_condition"]
