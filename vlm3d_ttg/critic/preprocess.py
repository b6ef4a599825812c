"""Differentiable torch twin of the Qwen-VL image preprocessing (`Qwen2VLImageProcessor`, Qwen2.5-VL's and Qwen3-VL's).

Given the same float images in [0, 1], `qwen_pixel_values` returns what the real processor returns
with `do_rescale=False` — same `image_grid_thw`, same `pixel_values` — but as a differentiable
function of the images, on any device. Every constant is read from the processor object.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError, UnsupportedModelError

MAX_ASPECT_RATIO = 200  # smart_resize refuses anything more elongated

#: Qwen2.5-VL cuts images into 14-px patches merged 2×2: a view whose side is a multiple of 28
#: (within the processor's pixel bounds) reaches the model unresampled, so what the critic judges
#: is exactly what was rendered. Views we render for the critic are therefore sized by this rule;
#: images handed to the critic from elsewhere may have any size (they are smart-resized).
VIEW_SIDE_MULTIPLE = 28


def check_view_size(view_size: int, multiple: int = VIEW_SIDE_MULTIPLE, why: str = "Qwen2.5-VL's 14-px patches merged 2×2") -> int:
    """Return `view_size` if it is a positive multiple of `multiple` (a side the critic sees unresampled), else raise InvalidInputError.

    The default is Qwen2.5-VL's 28; `protocol.check_critic_view_size` passes a critic's own multiple.
    """
    if isinstance(view_size, bool) or not isinstance(view_size, numbers.Integral) or view_size < 1 or view_size % multiple:
        raise InvalidInputError(
            f"View side {view_size} is not a positive multiple of {multiple} ({why}); use e.g. 448 "
            "(a multiple of every critic family's)."
        )
    return int(view_size)


def _field(obj: Any, name: str) -> Any:
    # `size` is a plain dict on the PIL processor and a SizeDict (items and attributes) on the torchvision one.
    if isinstance(obj, dict):
        return obj.get(name)
    try:
        value = obj[name]
    except (KeyError, TypeError, IndexError):
        value = None
    return value if value is not None else getattr(obj, name, None)


def pixel_bounds(image_processor: Any) -> tuple[int, int]:
    """(min_pixels, max_pixels) of the processor's smart resize."""
    size = getattr(image_processor, "size", None) or {}
    min_pixels = _field(size, "shortest_edge") or _field(size, "min_pixels") or getattr(image_processor, "min_pixels", None)
    max_pixels = _field(size, "longest_edge") or _field(size, "max_pixels") or getattr(image_processor, "max_pixels", None)
    if not min_pixels or not max_pixels:
        raise UnsupportedModelError(
            f"{type(image_processor).__name__} has no min/max pixel bounds (size={size!r}); "
            "a Qwen2-VL/Qwen2.5-VL image processor is needed."
        )
    return int(min_pixels), int(max_pixels)


def qwen_resized_size(height: int, width: int, image_processor: Any) -> tuple[int, int]:
    """The (height, width) the processor resizes an image of this size to (Qwen's smart resize)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    if height < 1 or width < 1:
        raise InvalidInputError(f"Images must be at least 1x1 pixels, got {height}x{width}.")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise InvalidInputError(
            f"Image aspect ratio {max(height, width) / min(height, width):.1f} ({height}x{width}) exceeds "
            f"Qwen-VL's limit of {MAX_ASPECT_RATIO}."
        )
    factor = int(image_processor.patch_size) * int(image_processor.merge_size)
    min_pixels, max_pixels = pixel_bounds(image_processor)
    if not getattr(image_processor, "do_resize", True):
        if height % factor or width % factor:
            raise InvalidInputError(
                f"The image processor does not resize, so images must be multiples of {factor} px; got {height}x{width}."
            )
        return height, width
    # Reuse transformers' own function: the sizes must be the processor's, not a re-derivation.
    return smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


def _interpolation_mode(image_processor: Any) -> str:
    resample = getattr(image_processor, "resample", None)
    mode = getattr(resample, "value", resample)  # InterpolationMode -> "bicubic"; PILImageResampling -> 3
    mode = {2: "bilinear", 3: "bicubic"}.get(mode, mode)
    if mode not in ("bicubic", "bilinear"):
        raise UnsupportedModelError(
            f"The image processor resamples with {resample!r}; only bicubic and bilinear are reproduced here."
        )
    return mode


def check_image_shape(images: Any) -> torch.Tensor:
    """Check that `images` is a float tensor (N, 3, H, W) with N >= 1; return it."""
    if not isinstance(images, torch.Tensor):
        raise InvalidInputError(f"Images must be a torch.Tensor (N, 3, H, W), got {type(images).__name__}.")
    if images.ndim != 4:
        raise InvalidInputError(f"Images must have shape (N, 3, H, W); got {tuple(images.shape)}.")
    if images.shape[1] != 3:
        raise InvalidInputError(f"Images must have 3 (RGB) channels in dim 1; got shape {tuple(images.shape)}.")
    if images.shape[0] == 0:
        raise InvalidInputError("No images given (N = 0); the critic needs at least one view.")
    if not images.is_floating_point():
        raise InvalidInputError(f"Images must be floating point in [0, 1], got dtype {images.dtype}.")
    return images


def qwen_pixel_values(images: torch.Tensor, image_processor: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2.5-VL's `(pixel_values, image_grid_thw)` for float images (N, 3, H, W) in [0, 1], differentiably.

    Equal to `image_processor(images, do_rescale=False)` (the torchvision `Qwen2VLImageProcessor`):
    smart resize within the processor's min/max pixels, bicubic antialiased resampling, mean/std
    normalisation, repetition along the temporal patch axis and the processor's patch order.
    `pixel_values` has shape (N * h/14 * w/14, 3 * 2 * 14 * 14) on the images' device, in float64 for
    float64 input and float32 otherwise (the processor always returns float32); `image_grid_thw`
    is a CPU long tensor (N, 3) like the processor's.
    """
    check_image_shape(images)
    num_images, channels, height, width = images.shape
    patch = int(image_processor.patch_size)
    merge = int(image_processor.merge_size)
    temporal = int(image_processor.temporal_patch_size)
    new_height, new_width = qwen_resized_size(height, width, image_processor)

    compute_dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    pixels = images.to(compute_dtype)
    if (new_height, new_width) != (height, width):
        # Same kernel torchvision's resize calls for float tensors (align_corners=False, antialias).
        pixels = F.interpolate(
            pixels, size=(new_height, new_width), mode=_interpolation_mode(image_processor), align_corners=False, antialias=True
        )
    if getattr(image_processor, "do_normalize", True):
        mean = torch.as_tensor(image_processor.image_mean, dtype=compute_dtype, device=pixels.device).view(1, -1, 1, 1)
        std = torch.as_tensor(image_processor.image_std, dtype=compute_dtype, device=pixels.device).view(1, -1, 1, 1)
        pixels = (pixels - mean) / std

    grid_h, grid_w = new_height // patch, new_width // patch
    patches = pixels.reshape(num_images, channels, grid_h // merge, merge, patch, grid_w // merge, merge, patch)
    # -> (image, merge-row, merge-col, in-window row, in-window col, C, 14, 14): the order in which the
    # vision tower's patch merger expects 2x2 neighbourhoods to be consecutive rows.
    patches = patches.permute(0, 2, 5, 3, 6, 1, 4, 7)
    # A still image is its own video of `temporal` identical frames; features are ordered (C, T, 14, 14).
    patches = patches.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, temporal, -1, -1)
    pixel_values = patches.reshape(num_images * grid_h * grid_w, channels * temporal * patch * patch)
    image_grid_thw = torch.tensor([qwen_image_grid(height, width, image_processor)] * num_images, dtype=torch.long)
    return pixel_values, image_grid_thw


def qwen_image_grid(height: int, width: int, image_processor: Any) -> tuple[int, int, int]:
    """The processor's `image_grid_thw` row (1, h/14, w/14) for one image of this size."""
    new_height, new_width = qwen_resized_size(height, width, image_processor)
    patch = int(image_processor.patch_size)
    return 1, new_height // patch, new_width // patch


__all__ = ["check_image_shape", "pixel_bounds", "qwen_image_grid", "qwen_pixel_values", "qwen_resized_size"]
