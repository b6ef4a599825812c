"""GuidedSampler: the pipeline's own loop when unguided; guidance as one insertion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlm3d_ttg.errors import InvalidInputError
from vlm3d_ttg.guidance import GuidanceConfig, guidance_displacement, guided_steps, schedule_weight
from vlm3d_ttg.sampler import GuidedSampler


def disc_image(size: int = 96) -> Image.Image:
    yy, xx = np.mgrid[:size, :size]
    inside = (xx - size / 2) ** 2 + ((yy - size / 2) * 1.3) ** 2 < (size / 3) ** 2
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[inside] = (90, 140, 200, 255)
    return Image.fromarray(rgba, "RGBA")


@pytest.mark.parametrize("steps,cfg", [(8, 5.0), (5, 2.0)])
def test_unguided_sampler_reproduces_hy3dgen_latents(tiny_pipeline, steps, cfg):
    image = disc_image()
    reference = tiny_pipeline(
        image=image, num_inference_steps=steps, guidance_scale=cfg,
        generator=torch.Generator().manual_seed(11), output_type="latent", enable_pbar=False,
    )
    sampler = GuidedSampler(tiny_pipeline, reward=None, config=GuidanceConfig(enabled=False))
    ours = sampler(image, num_inference_steps=steps, guidance_scale=cfg, seed=11, output_type="latent", progress=False)
    assert ours.latents.shape == reference.shape
    assert torch.equal(ours.latents, reference)
    assert [r.guided for r in ours.records] == [False] * steps


def test_unguided_sampler_reproduces_guidance_distilled_variant(tiny_cache):
    from vlm3d_ttg import load_shape_pipeline
    from vlm3d_ttg.tiny import ensure_tiny_shape_model

    ref = ensure_tiny_shape_model(tiny_cache, subfolder="hunyuan3d-dit-v2-0-fast")
    pipe = load_shape_pipeline(ref.repo_id, ref.subfolder, models_dir=ref.models_dir, device="cpu")
    image = disc_image()
    reference = pipe(image=image, num_inference_steps=5, generator=torch.Generator().manual_seed(2),
                     output_type="latent", enable_pbar=False)
    ours = GuidedSampler(pipe, config=GuidanceConfig(enabled=False))(
        image, num_inference_steps=5, seed=2, output_type="latent", progress=False)
    assert torch.equal(ours.latents, reference)


def test_guided_steps_window_and_every_k():
    sigmas = list(np.linspace(0, 1, 11)) + [1.0]
    cfg = GuidanceConfig(sigma_window=(0.2, 0.85), every=2)
    assert guided_steps(sigmas, cfg) == [2, 4, 6, 8]
    assert guided_steps(sigmas, GuidanceConfig(sigma_window=(0.0, 1.0), every=1)) == list(range(10))  # not σ=1→1
    assert guided_steps(sigmas, GuidanceConfig(enabled=False)) == []
    decay = GuidanceConfig(schedule="linear_decay", sigma_window=(0.2, 0.8))
    assert schedule_weight(0.2, decay) == 1.0 and schedule_weight(0.8, decay) == 0.0
    assert schedule_weight(0.5, decay) == pytest.approx(0.5)


def test_guidance_displacement_norms_and_cap():
    g = torch.randn(1, 32, 8, generator=torch.Generator().manual_seed(0))
    clean = 3.0 * torch.randn(1, 32, 8, generator=torch.Generator().manual_seed(1))
    step = 0.01 * torch.randn(1, 32, 8, generator=torch.Generator().manual_seed(2))
    raw, _ = guidance_displacement(g, predicted_clean_latent=clean, sampler_step=step, scale=0.5,
                                   step_norm="raw", max_step_ratio=None)
    assert torch.allclose(raw, 0.5 * g)
    rel, _ = guidance_displacement(g, predicted_clean_latent=clean, sampler_step=step, scale=0.05,
                                   step_norm="latent_rms", max_step_ratio=None)
    assert rel.pow(2).mean().sqrt() == pytest.approx(0.05 * clean.pow(2).mean().sqrt().item(), rel=1e-5)
    # The same direction whatever the scale of g (scale-free in r).
    rel_big, _ = guidance_displacement(1e4 * g, predicted_clean_latent=clean, sampler_step=step, scale=0.05,
                                       step_norm="latent_rms", max_step_ratio=None)
    assert torch.allclose(rel, rel_big, rtol=1e-5)
    capped, was_capped = guidance_displacement(g, predicted_clean_latent=clean, sampler_step=step, scale=0.05,
                                               step_norm="latent_rms", max_step_ratio=0.5)
    assert was_capped and capped.norm() == pytest.approx(0.5 * step.norm().item(), rel=1e-5)
    rel_step, _ = guidance_displacement(g, predicted_clean_latent=clean, sampler_step=step, scale=0.3,
                                        step_norm="sampler_step", max_step_ratio=None)
    assert rel_step.norm() == pytest.approx(0.3 * step.norm().item(), rel=1e-5)


@pytest.mark.parametrize("bad", [
    dict(scale=-1.0), dict(scale=float("nan")), dict(step_norm="l2"), dict(sigma_window=(0.9, 0.1)),
    dict(every=0), dict(inner_steps=0), dict(grad_mode="x1"), dict(view_size=100), dict(num_views=0),
    dict(query="is it good?"), dict(max_step_ratio=0.0),
])
def test_invalid_guidance_options_are_rejected(bad):
    with pytest.raises(InvalidInputError):
        GuidanceConfig(**bad).validate()


def test_guidance_without_reward_is_an_error(tiny_pipeline):
    with pytest.raises(InvalidInputError, match="no reward"):
        GuidedSampler(tiny_pipeline, reward=None, config=GuidanceConfig())
