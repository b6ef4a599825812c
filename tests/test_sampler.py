"""GuidedSampler: the pipeline's own loop when unguided; guidance as one insertion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlm3d_ttg.errors import InvalidInputError
from vlm3d_ttg.guidance import GuidanceConfig, LatentFunctionReward, guidance_displacement, guided_steps, schedule_weight
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


class LinearLatentReward(LatentFunctionReward):
    """r = Σ w·latent: a smooth reward of the latent, to check the sampler's gradient plumbing
    (the real critic path is checked end to end in test_generate.py and against finite
    differences piece by piece in test_surface/test_render/test_critic)."""

    def __init__(self, weights: torch.Tensor):
        self.weights = weights

    def __call__(self, latent, *, generator=None):
        from vlm3d_ttg.guidance import RewardEvaluation

        r = (self.weights.to(latent.dtype) * latent).sum()
        return RewardEvaluation(r=r, p_yes=float(torch.sigmoid(r.detach())))


@pytest.fixture(scope="module")
def pipeline64(tiny_shape_ref):
    from vlm3d_ttg import load_shape_pipeline

    return load_shape_pipeline(tiny_shape_ref.repo_id, tiny_shape_ref.subfolder,
                               models_dir=tiny_shape_ref.models_dir, device="cpu", dtype="float64")


def test_xt_gradient_through_the_dit_matches_finite_differences(pipeline64):
    from vlm3d_ttg.sampler import predicted_clean_latent

    sampler = GuidedSampler(pipeline64, config=GuidanceConfig(enabled=False))
    context = sampler.prepare(disc_image(), num_inference_steps=10, guidance_scale=5.0)
    step = 4
    sigma = context.sigmas[step]
    generator = torch.Generator().manual_seed(5)
    weights = torch.randn(1, 32, 8, generator=generator, dtype=torch.float64)
    x = torch.randn(1, 32, 8, generator=generator, dtype=torch.float64)

    def objective(latents):
        return (weights * predicted_clean_latent(latents, sampler.velocity(latents, step, context), sigma)).sum()

    leaf = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(objective(leaf), leaf)
    errors = []
    with torch.no_grad():
        for _ in range(4):
            direction = torch.randn(x.shape, generator=generator, dtype=torch.float64)
            # hy3dgen's RMSNorm and timestep embedding compute in float32 even in a float64 model,
            # so round-off (~1e-7 relative) sets the floor: eps = 1e-3 balances it against the
            # O(eps²) truncation error (measured: ≤ 7e-6 relative at 1e-3; 9e-5 at 1e-5 and 1e-2).
            eps = 1e-3
            fd = (objective(x + eps * direction) - objective(x - eps * direction)) / (2 * eps)
            errors.append(abs(float(fd) - float((gradient * direction).sum())) / abs(float(fd)))
    assert max(errors) < 1e-4, errors
    # The DiT Jacobian matters: the exact gradient is far from the straight-through one (w).
    assert (gradient - weights).norm() / weights.norm() > 0.05


@pytest.mark.parametrize("grad_mode", ["x0", "xt"])
def test_guided_step_applies_the_reward_gradient(pipeline64, grad_mode):
    """With raw steps, λ = 1 and no cap, the guided step adds exactly ∇r (x0: ∇_x̂ r = w; xt: through the DiT)."""
    from vlm3d_ttg.sampler import predicted_clean_latent

    image = disc_image()
    weights = 1e-3 * torch.randn(1, 32, 8, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    config = GuidanceConfig(scale=1.0, step_norm="raw", max_step_ratio=None, sigma_window=(0.4, 0.6), every=1,
                            grad_mode=grad_mode)
    captured = {}

    def capture(sampler, step, sigma, state):
        captured[step] = state["latents"].clone()

    base = GuidedSampler(pipeline64, config=GuidanceConfig(enabled=False))(
        image, num_inference_steps=3, seed=1, output_type="latent", callback_on_step_end=capture, progress=False)
    guided = GuidedSampler(pipeline64, LinearLatentReward(weights), config)(
        image, num_inference_steps=3, seed=1, output_type="latent", progress=False)
    assert [r.step for r in guided.records if r.guided] == [1]
    # Steps: σ = 0 → 0.5 (unguided), 0.5 → 1 (guided), 1 → 1 (zero length): the difference is the displacement.
    displacement = guided.latents - base.latents
    if grad_mode == "x0":
        expected = weights
    else:
        sampler = GuidedSampler(pipeline64, config=GuidanceConfig(enabled=False))
        context = sampler.prepare(image, num_inference_steps=3, guidance_scale=5.0)
        leaf = captured[0].clone().requires_grad_(True)
        clean = predicted_clean_latent(leaf, sampler.velocity(leaf, 1, context), context.sigmas[1])
        (expected,) = torch.autograd.grad((weights * clean).sum(), leaf)
    # hy3dgen's scheduler computes each Euler step in float32, so latents carry float32 rounding
    # (~1e-7 × |x|) even in a float64 pipeline; the displacement itself is ~1e-3.
    assert torch.allclose(displacement, expected, rtol=0, atol=1e-6)
    assert (displacement - expected).norm() / expected.norm() < 1e-3
    record = next(r for r in guided.records if r.guided)
    assert record.applied_norm == pytest.approx(float(expected.norm()), rel=1e-6)


@pytest.mark.parametrize("subfolder", ["hunyuan3d-dit-v2-mv", "hunyuan3d-dit-v2-0-turbo"])
def test_unguided_sampler_reproduces_multiview_and_turbo_variants(tiny_cache, subfolder):
    from vlm3d_ttg import load_shape_pipeline
    from vlm3d_ttg.tiny import ensure_tiny_shape_model

    ref = ensure_tiny_shape_model(tiny_cache, subfolder=subfolder)
    pipe = load_shape_pipeline(ref.repo_id, ref.subfolder, models_dir=ref.models_dir, device="cpu")
    image = {"front": disc_image(), "back": disc_image(80)} if "-mv" in subfolder else disc_image()
    reference = pipe(image=image, num_inference_steps=6, generator=torch.Generator().manual_seed(4),
                     output_type="latent", enable_pbar=False)
    ours = GuidedSampler(pipe, config=GuidanceConfig(enabled=False))(
        image, num_inference_steps=6, seed=4, output_type="latent", progress=False)
    assert torch.equal(ours.latents, reference)


def test_a_huge_lambda_or_gradient_moves_the_latent_by_exactly_the_cap():
    """Float32 norms of λ·g overflowed to inf and the cap then applied nothing (or NaN); the length is
    now computed in float64 from the unit direction."""
    g = torch.randn(1, 64, 8, generator=torch.Generator().manual_seed(0))
    clean = torch.randn(1, 64, 8, generator=torch.Generator().manual_seed(1))
    step = 0.01 * torch.randn(1, 64, 8, generator=torch.Generator().manual_seed(2))
    for scale, gradient, norm in [(1e39, g, "raw"), (1e30, g, "latent_rms"), (1.0, g * 1e37, "raw"), (1.0, g * 1e-40, "raw")]:
        d, capped = guidance_displacement(gradient, predicted_clean_latent=clean, sampler_step=step, scale=scale,
                                          step_norm=norm, max_step_ratio=1.0)
        assert torch.isfinite(d).all()
        if scale * float(gradient.double().norm()) > float(step.norm()) or norm == "latent_rms":
            assert capped and float(d.norm()) == pytest.approx(float(step.norm()), rel=1e-5)
            cosine = torch.nn.functional.cosine_similarity(d.flatten(), g.flatten(), dim=0)
            assert cosine == pytest.approx(1.0, abs=1e-5)  # the gradient's direction, kept
        else:  # a tiny gradient: a tiny, uncapped, still non-zero step
            length = float(torch.linalg.vector_norm(d, dtype=torch.float64))  # float32 squares would underflow
            assert not capped and 0 < length < float(step.norm())


def test_an_infinite_uncapped_step_is_skipped_not_applied():
    from vlm3d_ttg.errors import SkippedStepError

    g = torch.ones(1, 4, 2)
    with pytest.raises(SkippedStepError) as info:
        guidance_displacement(g * 1e300, predicted_clean_latent=g, sampler_step=g, scale=1e300, step_norm="raw",
                              max_step_ratio=None)
    assert info.value.reason == "non_finite_step"


def test_a_guided_run_is_reproducible_bit_for_bit(tiny_pipeline, tiny_vlm):
    """Same seed → the same latents, guided, on the CPU with several threads: the reward's backward
    (the renderer's scatter-adds) runs with deterministic kernels (sampler.deterministic_backward)."""
    from vlm3d_ttg.critic import VLMCritic
    from vlm3d_ttg.reward import VLMReward

    model, processor = tiny_vlm
    config = GuidanceConfig(num_views=4, view_size=112, grid_resolution=48, sigma_window=(0.1, 0.9), every=1)
    reward = VLMReward.from_config(tiny_pipeline, VLMCritic(model, processor, "a blue robot", config.query), config)
    sampler = GuidedSampler(tiny_pipeline, reward, config)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))  # several threads whatever the machine's default: what could race
    try:
        # 8 steps, 6 of them guided: without deterministic_backward the two runs' latents differed in 4 of 4 tries.
        runs = [sampler(disc_image(), num_inference_steps=8, seed=3, output_type="latent", progress=False) for _ in range(2)]
    finally:
        torch.set_num_threads(threads)
    assert sum(r.guided and not r.skipped for r in runs[0].records) >= 6
    assert torch.are_deterministic_algorithms_enabled() is False  # the previous mode is back
    assert torch.equal(runs[0].latents, runs[1].latents)
