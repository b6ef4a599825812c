"""The whole reward chain (latent → surface → views → critic) on the tiny models, end to end.

The pieces are checked against finite differences one by one in test_surface, test_render,
test_antialias and test_critic; this checks that, composed, following ∇r raises r.
"""

from __future__ import annotations

import pytest
import torch

from vlm3d_ttg.critic import VLMCritic
from vlm3d_ttg.guidance import GuidanceConfig
from vlm3d_ttg.reward import VLMReward, coarse_resolution_for


@pytest.fixture(scope="module")
def reward(tiny_pipeline, tiny_vlm):
    critic = VLMCritic(*tiny_vlm, "a toy robot")
    # Fixed cameras: the same function is evaluated at every point.
    return VLMReward(tiny_pipeline, critic, GuidanceConfig(num_views=2, view_size=112, grid_resolution=64,
                                                               azimuth_jitter=0.0, elevation_jitter=0.0))


def _r(reward, latent):
    with torch.no_grad():
        return float(reward(latent).r)


def test_reward_gradient_predicts_the_change_of_r(reward):
    """Along g/|g|, the finite-difference slope of r matches |g| (the directional derivative)."""
    generator = torch.Generator().manual_seed(0)
    slopes, predicted = [], []
    for _ in range(3):
        latent = torch.randn(1, 32, 8, generator=generator)
        leaf = latent.clone().requires_grad_(True)
        evaluation = reward(leaf)
        (gradient,) = torch.autograd.grad(evaluation.r, leaf)
        direction = gradient / gradient.norm()
        eps = 0.05  # large enough to average over marching-cubes grid noise, small for curvature
        slopes.append((_r(reward, latent + eps * direction) - _r(reward, latent - eps * direction)) / (2 * eps))
        predicted.append(float(gradient.norm()))
    assert all(s > 0 for s in slopes), (slopes, predicted)
    ratios = [s / p for s, p in zip(slopes, predicted)]
    print(f"\nslope / |g| along g: {', '.join(f'{q:.4f}' for q in ratios)}")
    # Measured 0.97, 0.89, 1.05 (marching-cubes grid noise at this eps): each within 20 %, their mean
    # within 10 % — a gradient 15 % too large or too small fails.
    assert all(0.8 < q < 1.2 for q in ratios), ratios
    assert 0.9 < sum(ratios) / len(ratios) < 1.1, ratios


def test_gradient_ascent_on_the_latent_raises_r(reward):
    latent = torch.randn(1, 32, 8, generator=torch.Generator().manual_seed(1))
    values = []
    for _ in range(4):
        leaf = latent.clone().requires_grad_(True)
        evaluation = reward(leaf)
        (gradient,) = torch.autograd.grad(evaluation.r, leaf)
        values.append(float(evaluation.r.detach()))
        latent = latent + 0.3 * gradient / gradient.norm()
    values.append(_r(reward, latent))
    assert values[-1] > values[0], values
    assert sum(b > a for a, b in zip(values, values[1:])) >= 3, values


def test_reward_reports_what_the_critic_saw(reward):
    evaluation = reward(torch.randn(1, 32, 8, generator=torch.Generator().manual_seed(2)))
    assert evaluation.images.shape == (2, 3, 112, 112)
    assert evaluation.info["faces"] > 100
    assert 0.0 < evaluation.p_yes < 1.0
    assert abs(evaluation.p_yes - float(torch.sigmoid(evaluation.r))) < 1e-6
    assert set(evaluation.timings) == {"surface", "render", "critic"}
    # The views reported are the ones the critic scored: the critic on them gives the reward's r.
    with torch.no_grad():
        assert abs(float(reward.critic(evaluation.images).r) - float(evaluation.r)) < 1e-5


@pytest.mark.parametrize("resolution,coarse", [(64, 32), (128, 32), (256, 32), (96, 24), (48, 24), (32, None), (33, None)])
def test_coarse_level_for_the_guidance_grid(resolution, coarse):
    """Halve while above 32; a grid that cannot be halved at all is decoded densely (None)."""
    assert coarse_resolution_for(resolution) == coarse
