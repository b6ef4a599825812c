"""A contact sheet: the N rendered views side by side with labels, as one PNG.

Shows users exactly what the critic saw (same pixels, no resampling).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..errors import InvalidInputError
from ..images import to_uint8
from ..io import atomic_path

_LABEL_HEIGHT = 22
_MARGIN = 4


def contact_sheet(
    images: torch.Tensor,
    labels: Sequence[str] | None = None,
    *,
    columns: int | None = None,
    title: str | None = None,
) -> Image.Image:
    """One RGB image with the views (N, 3, H, W) in [0, 1] on a grid, each captioned by its label."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise InvalidInputError(f"images must have shape (N, 3, H, W), got {tuple(images.shape)}.")
    n, _, height, width = images.shape
    if labels is not None and len(labels) != n:
        raise InvalidInputError(f"{len(labels)} labels for {n} images.")
    columns = columns or min(n, 4)
    rows = math.ceil(n / columns)
    title_height = _LABEL_HEIGHT if title else 0
    cell_w, cell_h = width + _MARGIN, height + _LABEL_HEIGHT + _MARGIN
    font = ImageFont.load_default()
    # Wide enough for the title (a run's title carries every reward term's value).
    title_width = int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(title, font=font)) + 2 * _MARGIN if title else 0
    sheet = Image.new("RGB", (max(columns * cell_w + _MARGIN, title_width), rows * cell_h + _MARGIN + title_height), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((_MARGIN, 4), title, fill="black", font=font)
    pixels = to_uint8(images.expand(-1, 3, -1, -1))
    pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()
    for index in range(n):
        x = _MARGIN + (index % columns) * cell_w
        y = _MARGIN + title_height + (index // columns) * cell_h
        sheet.paste(Image.fromarray(np.ascontiguousarray(pixels[index])), (x, y + _LABEL_HEIGHT))
        caption = labels[index] if labels is not None else f"view {index}"
        draw.text((x + 2, y + 4), caption, fill="black", font=font)
    return sheet


def write_contact_sheet(
    path: str | os.PathLike,
    images: torch.Tensor,
    labels: Sequence[str] | None = None,
    *,
    columns: int | None = None,
    title: str | None = None,
) -> Path:
    """Write the contact sheet of `images` as a PNG at `path`, atomically; returns the path."""
    sheet = contact_sheet(images, labels, columns=columns, title=title)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(path)
