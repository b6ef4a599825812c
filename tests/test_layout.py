"""The view tiler: where each view lands, what fills the rest, and an exact gradient (finite differences)."""

from __future__ import annotations

import pytest
import torch

from vlm3d_ttg.critic.layout import grid_cell_sizes, grid_shape, tile_views
from vlm3d_ttg.errors import InvalidInputError


@pytest.mark.parametrize("count,shape", [(1, (1, 1)), (2, (1, 2)), (3, (2, 2)), (4, (2, 2)), (5, (2, 3)), (6, (2, 3)), (9, (3, 3))])
def test_grid_is_as_square_as_possible(count, shape):
    assert grid_shape(count) == shape


def test_views_land_in_row_major_cells_between_separators():
    # 3 views of exactly the cell size (a 2x2 grid of 5x7 cells with 2-px lines is 12x16): no
    # resampling, so each cell must be its view bit for bit.
    views = torch.rand(3, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    tiled = tile_views(views, (12, 16), separator=2, separator_value=0.25)
    assert tiled.shape == (3, 12, 16)
    assert torch.equal(tiled[:, 0:5, 0:7], views[0])
    assert torch.equal(tiled[:, 0:5, 9:16], views[1])
    assert torch.equal(tiled[:, 7:12, 0:7], views[2])
    assert torch.all(tiled[:, 7:12, 9:16] == 0.25)  # the unused fourth cell
    assert torch.all(tiled[:, 5:7, :] == 0.25) and torch.all(tiled[:, :, 7:9] == 0.25)  # the lines


def test_views_are_resampled_into_cells_that_fill_the_size_exactly():
    # 448 with a 2-px line leaves 446 = 2 x 223: each 448² view is shrunk to 223².
    views = torch.stack([torch.full((3, 448, 448), value) for value in (0.1, 0.4, 0.7, 0.9)])
    tiled = tile_views(views, 448)
    assert tiled.shape == (3, 448, 448)
    assert grid_cell_sizes(4, 448) == ([223, 223], [223, 223])
    # A constant view stays that constant after resampling (the filter's weights sum to one).
    for index, (top, left) in enumerate([(0, 0), (0, 225), (225, 0), (225, 225)]):
        assert torch.allclose(tiled[:, top:top + 223, left:left + 223], views[index, :, :223, :223], atol=1e-6)
    # An odd remainder goes to the first cells: 3 columns in 100 px with 2-px lines -> 32, 32, 32.
    assert grid_cell_sizes(5, (60, 101), separator=2) == ([29, 29], [33, 32, 32])


def test_batched_view_sets_tile_independently():
    view_sets = torch.rand(2, 4, 3, 20, 30, generator=torch.Generator().manual_seed(1))
    tiled = tile_views(view_sets, (28, 42))
    assert tiled.shape == (2, 3, 28, 42)
    for index in range(2):
        assert torch.equal(tiled[index], tile_views(view_sets[index], (28, 42)))


def test_gradient_matches_finite_differences():
    # float64 so that torch's central differences are accurate; views resampled (9x8 -> 7x6 and 7x5
    # cells); fast mode compares random projections u·J·v of the Jacobian with central differences.
    views = torch.rand(2, 3, 1, 9, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    views.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: tile_views(v, (16, 13), separator=2), (views,), eps=1e-6, atol=1e-8, fast_mode=True)
    # Every view receives gradient, the separators none.
    (gradient,) = torch.autograd.grad(tile_views(views, (16, 13)).sum(), views)
    assert all(float(gradient[:, index].abs().sum()) > 0 for index in range(3))


@pytest.mark.parametrize(
    "views,size,message",
    [
        (torch.rand(3, 8, 8), 16, "tensor"),
        (torch.zeros(4, 3, 8, 8, dtype=torch.uint8), 16, "floating point"),
        (torch.rand(4, 3, 8, 8), 2, "cannot hold"),
    ],
    ids=["no-view-axis", "integer", "too-small"],
)
def test_bad_input_is_refused(views, size, message):
    with pytest.raises(InvalidInputError, match=message):
        tile_views(views, size)
