"""How the critic's views are laid out: one image per view, or all views tiled into one image.

Tiling N views into a single image of the configured size cuts the critic's vision tokens about
N-fold (4 × 448² views are 1024 tokens after Qwen's 2×2 merge; one 448² tile of them is 256) and
is the usual remedy for a VLM judge degraded by many images in one prompt. What it costs is
resolution: each view is resampled down to its cell.
"""

from __future__ import annotations

import math
import numbers
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError

ViewLayout = Literal["separate", "grid"]
VIEW_LAYOUTS: tuple[str, ...] = ("separate", "grid")

#: Width in pixels of the lines between cells: thin, but wide enough to survive the critic's
#: 14-px patches as an edge rather than blending two neighbouring views into one object.
DEFAULT_SEPARATOR = 2
#: Grey level of the separator lines and of unused cells. Black, because the renders' background
#: is white (render/shading.py): a white line would merge the cells into one white field.
DEFAULT_SEPARATOR_VALUE = 0.0


def grid_shape(num_views: int) -> tuple[int, int]:
    """(rows, columns) of the tile for `num_views` views: as square as possible, columns ≥ rows (4 → 2×2, 3 → 2×2, 6 → 2×3)."""
    if isinstance(num_views, bool) or not isinstance(num_views, numbers.Integral) or num_views < 1:
        raise InvalidInputError(f"The number of views to tile must be a positive integer, got {num_views!r}.")
    columns = math.ceil(math.sqrt(num_views))
    rows = math.ceil(num_views / columns)
    return rows, columns


def _split(total: int, parts: int) -> list[int]:
    # Cell sides that add up to `total` exactly; the first `total % parts` cells are a pixel larger.
    base, extra = divmod(total, parts)
    return [base + (1 if index < extra else 0) for index in range(parts)]


def grid_cell_sizes(num_views: int, size: int | tuple[int, int], separator: int = DEFAULT_SEPARATOR) -> tuple[list[int], list[int]]:
    """(heights of the rows, widths of the columns) of the cells when `num_views` views are tiled into an image of `size`.

    `size` is a side (square) or (height, width). Raises InvalidInputError if a cell would be
    empty (the image is too small for the views and separators).
    """
    height, width = (size, size) if isinstance(size, numbers.Integral) else size
    rows, columns = grid_shape(num_views)
    if isinstance(separator, bool) or not isinstance(separator, numbers.Integral) or separator < 0:
        raise InvalidInputError(f"The separator width must be a non-negative integer, got {separator!r}.")
    free_height, free_width = int(height) - (rows - 1) * separator, int(width) - (columns - 1) * separator
    if free_height < rows or free_width < columns:
        raise InvalidInputError(
            f"A {height}x{width} image cannot hold {num_views} views in a {rows}x{columns} grid with "
            f"{separator}-px separators; use a larger view size or fewer views."
        )
    return _split(free_height, rows), _split(free_width, columns)


def tile_views(
    views: torch.Tensor,
    size: int | tuple[int, int],
    *,
    separator: int = DEFAULT_SEPARATOR,
    separator_value: float = DEFAULT_SEPARATOR_VALUE,
) -> torch.Tensor:
    """Tile views (..., N, C, H, W) into one image (..., C, height, width) per view set, differentiably.

    The views fill a `grid_shape(N)` grid in row-major order (view i at row i // columns, column
    i % columns), each resampled to its cell (bilinear, antialiased; untouched when it already has
    the cell's size), with `separator`-px lines of grey level `separator_value` between cells and in
    unused cells. `size` is a side (square) or (height, width). The result has the views' dtype and
    device, and its gradient w.r.t. every view is exact (resampling and placement are linear).
    """
    if not isinstance(views, torch.Tensor) or views.ndim < 4:
        shape = tuple(views.shape) if isinstance(views, torch.Tensor) else type(views).__name__
        raise InvalidInputError(f"Views to tile must be a tensor (..., N, C, H, W); got {shape}.")
    if not views.is_floating_point():
        raise InvalidInputError(f"Views to tile must be floating point, got dtype {views.dtype}.")
    *batch, num_views, channels, view_height, view_width = views.shape
    rows, columns = grid_shape(num_views)
    row_heights, column_widths = grid_cell_sizes(num_views, size, separator)
    height = sum(row_heights) + (rows - 1) * separator
    width = sum(column_widths) + (columns - 1) * separator
    flat = views.reshape(-1, num_views, channels, view_height, view_width)

    row_bands = []
    for row in range(rows):
        cell_height = row_heights[row]
        pieces = []
        for column in range(columns):
            cell_width = column_widths[column]
            index = row * columns + column
            if index < num_views:
                cell = flat[:, index]
                if (view_height, view_width) != (cell_height, cell_width):
                    cell = F.interpolate(cell, size=(cell_height, cell_width), mode="bilinear", align_corners=False, antialias=True)
            else:
                cell = flat.new_full((flat.shape[0], channels, cell_height, cell_width), separator_value)
            pieces.append(cell)
            if column < columns - 1 and separator:
                pieces.append(flat.new_full((flat.shape[0], channels, cell_height, separator), separator_value))
        row_bands.append(torch.cat(pieces, dim=-1))
        if row < rows - 1 and separator:
            row_bands.append(flat.new_full((flat.shape[0], channels, separator, width), separator_value))
    tiled = torch.cat(row_bands, dim=-2)
    return tiled.reshape(*batch, channels, height, width)


__all__ = [
    "DEFAULT_SEPARATOR",
    "DEFAULT_SEPARATOR_VALUE",
    "VIEW_LAYOUTS",
    "ViewLayout",
    "grid_cell_sizes",
    "grid_shape",
    "tile_views",
]
