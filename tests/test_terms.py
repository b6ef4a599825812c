"""Reward terms compose like losses: r = Σ w·term, each term's value recorded, the default unchanged.

On the tiny models and the real renderer (no stand-ins): a term with its own cameras gets renders
from those cameras; a zero weight changes nothing bit for bit; the sampler records every term.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlm3d_ttg.critic import VLMCritic
from vlm3d_ttg.errors import InvalidInputError
from vlm3d_ttg.guidance import GuidanceConfig
from vlm3d_ttg.render import orbit_cameras
from vlm3d_ttg.reward import VLMReward
from vlm3d_ttg.sampler import GuidedSampler
from vlm3d_ttg.terms import RewardTerm, TermValue

CONFIG = dict(num_views=2, view_size=56, grid_resolution=32, azimuth_jitter=0.0, elevation_jitter=0.0)


class Coverage:
    """Mean coverage of the views it looks at: from its own single front camera, or the orbit's."""

    def __init__(self, own_cameras: bool):
        self.name = "coverage"
        self.own = orbit_cameras(1, elevation_deg=0.0, image_size=40) if own_cameras else None
        self.seen: list[tuple[int, int]] = []  # (number of views, side) of every call

    def cameras(self, orbit):
        return self.own.to(orbit.view.device) if self.own is not None else orbit

    def __call__(self, views):
        self.seen.append((int(views.masks.shape[0]), int(views.masks.shape[-1])))
        coverage = views.masks.mean()
        return TermValue(coverage, {"covered": float(coverage.detach())})

    def modules(self):
        return []


@pytest.fixture(scope="module")
def critic(tiny_vlm):
    return VLMCritic(*tiny_vlm, "a toy robot")


def _latent(seed: int) -> torch.Tensor:
    return torch.randn(1, 32, 8, generator=torch.Generator().manual_seed(seed))


def test_the_sum_is_what_the_gradient_follows(tiny_pipeline, critic):
    """r = r_vlm + w·coverage in value and in gradient; the term sees its own cameras' renders."""
    config = GuidanceConfig(**CONFIG)
    term = Coverage(own_cameras=True)
    vlm_only = VLMReward(tiny_pipeline, critic, config)
    both = VLMReward(tiny_pipeline, critic, config, terms=[(3.0, term)])
    latent = _latent(0).requires_grad_(True)
    alone = vlm_only(latent)
    combined = both(latent)
    assert term.seen == [(1, 40)]  # its own camera and size, not the critic's 2 × 56²
    assert combined.images.shape == (2, 3, 56, 56)  # the critic's orbit views are still what is shown
    assert set(combined.terms) == {"vlm", "coverage"}
    assert combined.terms["vlm"] == pytest.approx(float(alone.r.detach()), abs=1e-6)
    assert 0.0 < combined.terms["coverage"] < 1.0
    assert float(combined.r) == pytest.approx(combined.terms["vlm"] + 3.0 * combined.terms["coverage"], abs=1e-6)
    assert combined.info["coverage.covered"] == pytest.approx(combined.terms["coverage"])
    assert combined.p_yes == pytest.approx(float(torch.sigmoid(alone.r)), abs=1e-6)
    (g_both,) = torch.autograd.grad(combined.r, latent)
    (g_vlm,) = torch.autograd.grad(vlm_only(latent).r, latent)
    coverage_only = VLMReward(tiny_pipeline, None, config, terms=[(1.0, Coverage(own_cameras=True))])
    (g_cov,) = torch.autograd.grad(coverage_only(latent).r, latent)
    assert float(g_cov.norm()) > 0
    torch.testing.assert_close(g_both, g_vlm + 3.0 * g_cov, rtol=1e-4, atol=1e-6)


def test_terms_on_the_orbit_share_its_render(tiny_pipeline, critic):
    term = Coverage(own_cameras=False)
    evaluation = VLMReward(tiny_pipeline, critic, GuidanceConfig(**CONFIG), terms=[(1.0, term)])(_latent(1))
    assert term.seen == [(2, 56)]
    assert set(evaluation.timings) == {"surface", "render", "critic", "term.coverage"}


def test_bad_term_lists_are_refused(tiny_pipeline, critic):
    config = GuidanceConfig(**CONFIG)
    with pytest.raises(InvalidInputError, match="nothing to score"):
        VLMReward(tiny_pipeline, None, config)
    with pytest.raises(InvalidInputError, match="nothing to score"):
        VLMReward(tiny_pipeline, None, config, terms=[(0.0, Coverage(False))])
    with pytest.raises(InvalidInputError, match="not a reward term"):
        VLMReward(tiny_pipeline, critic, config, terms=[(1.0, object())])
    with pytest.raises(InvalidInputError, match="finite"):
        VLMReward(tiny_pipeline, critic, config, terms=[(float("nan"), Coverage(False))])
    named_vlm = Coverage(False)
    named_vlm.name = "vlm"
    with pytest.raises(InvalidInputError, match="unique"):
        VLMReward(tiny_pipeline, critic, config, terms=[(1.0, named_vlm)])
    assert isinstance(Coverage(False), RewardTerm)


def _disc() -> Image.Image:
    size = 64
    yy, xx = np.mgrid[:size, :size]
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[(xx - 32) ** 2 + ((yy - 32) * 1.3) ** 2 < 400] = (90, 140, 200, 255)
    return Image.fromarray(rgba, "RGBA")


def test_a_zero_weight_term_changes_nothing_and_records_carry_every_term(tiny_pipeline, critic):
    config = GuidanceConfig(scale=0.05, sigma_window=(0.3, 0.95), every=1, **CONFIG)
    run = dict(num_inference_steps=6, seed=3, output_type="latent", progress=False)
    default = GuidedSampler(tiny_pipeline, VLMReward(tiny_pipeline, critic, config), config)(_disc(), **run)
    zero = GuidedSampler(tiny_pipeline, VLMReward(tiny_pipeline, critic, config, terms=[(0.0, Coverage(True))]),
                         config)(_disc(), **run)
    assert torch.equal(default.latents, zero.latents)
    guided = [r for r in default.records if r.guided and not r.skipped]
    assert guided and all(set(r.terms) == {"vlm"} and r.terms["vlm"] == r.r for r in guided)

    weighted = GuidedSampler(tiny_pipeline, VLMReward(tiny_pipeline, critic, config, terms=[(2.0, Coverage(True))]),
                             config)(_disc(), **run)
    steps = [r for r in weighted.records if r.guided and not r.skipped]
    assert steps and all(set(r.terms) == {"vlm", "coverage"} for r in steps)
    assert all(r.r == pytest.approx(r.terms["vlm"] + 2.0 * r.terms["coverage"], abs=1e-5) for r in steps)
    assert not torch.equal(default.latents, weighted.latents)
