"""Numerical guards: each fault injected into the real chain (renderer, critic, backward) skips that
guided step with its reason, and the run completes and writes its outputs."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from vlm3d_ttg.generation import GenerationOptions, LoadedModels, generate_mesh
from vlm3d_ttg.guidance import GuidanceConfig
from vlm3d_ttg.render.shading import ShadingConfig
from vlm3d_ttg.reward import checked_render

CONFIG = GuidanceConfig(num_views=2, view_size=56, grid_resolution=32, sigma_window=(0.1, 0.9), every=1)
FAULT_STEP = 3  # the third guided step of an 8-step run (guided: 1..6)


def _image(tmp_path):
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    image.paste((200, 100, 50, 255), (16, 16, 48, 48))
    path = tmp_path / "in.png"
    image.save(path)
    return path


def _run_with_fault(tmp_path, tiny_pipeline, tiny_vlm, install_fault, remove_fault):
    """A real generation run in which `install_fault(critic, reward)` is active at FAULT_STEP only."""
    model, processor = tiny_vlm
    models = LoadedModels(tiny_pipeline, model, processor, "tiny shape", "tiny critic", preset="tiny")
    state = {}

    def before_step(sampler, step, sigma, _state):
        # Runs after step `step`: arm the fault for the next step, disarm it after.
        if step == FAULT_STEP - 1:
            state["reward"] = sampler.reward
            state["handle"] = install_fault(sampler.reward)
        elif step == FAULT_STEP:
            remove_fault(sampler.reward, state.pop("handle"))

    try:
        result = generate_mesh(
            models, image=_image(tmp_path), prompt="a pot", out=tmp_path / "out.glb",
            manifest_path=tmp_path / "out.json", guidance=CONFIG, options=GenerationOptions(steps=8, octree_resolution=48), progress=False,
            step_callback=before_step,
        )
    finally:  # the models are shared with other tests: never leave a fault installed
        if "handle" in state:
            remove_fault(state["reward"], state.pop("handle"))
    manifest = json.loads((tmp_path / "out.json").read_text())
    assert (tmp_path / "out.glb").stat().st_size > 0 and result.faces > 0
    records = {r["step"]: r for r in manifest["records"]}
    others = [r for r in manifest["records"] if r["guided"] and r["step"] != FAULT_STEP]
    assert len(others) == 5 and all(r["skipped"] is None and r["applied_norm"] > 0 for r in others)
    return records[FAULT_STEP]


def _set_shading(shading):
    def install(reward):
        previous = reward.renderer.shading
        reward.renderer.shading = shading
        return previous

    def remove(reward, previous):
        reward.renderer.shading = previous

    return install, remove


def _background(level: float) -> ShadingConfig:
    shading = ShadingConfig()
    object.__setattr__(shading, "background", level)  # past the config's own check: a renderer bug
    return shading


@pytest.mark.parametrize("shading,reason", [
    (ShadingConfig(ambient=float("nan")), "non_finite_render"),
    (_background(3.0), "render_out_of_range"),
    # Over-bright lighting saturates every object pixel at white: the views no longer depend on
    # the shape, the gradient is exactly zero, and the step says so instead of passing for guided.
    (ShadingConfig(ambient=3.0), "zero_gradient"),
])
def test_broken_render_skips_the_step(tmp_path, tiny_pipeline, tiny_vlm, shading, reason):
    record = _run_with_fault(tmp_path, tiny_pipeline, tiny_vlm, *_set_shading(shading))
    assert record["skipped"] == reason and not record["applied_norm"]


def test_non_finite_critic_answer_skips_the_step(tmp_path, tiny_pipeline, tiny_vlm):
    """The language model's final norm returns NaN for one call: r is NaN."""

    def install(reward):
        norm = reward.critic.model.model.language_model.norm
        return norm.register_forward_hook(lambda module, args, output: output * float("nan"))

    record = _run_with_fault(tmp_path, tiny_pipeline, tiny_vlm, install, lambda reward, handle: handle.remove())
    assert record["skipped"] == "non_finite_critic" and record["r"] is None


def test_non_finite_gradient_skips_the_step(tmp_path, tiny_pipeline, tiny_vlm):
    """The forward is fine, but the gradient through the vision tower's output turns to inf."""

    def poison_backward(module, args, output):
        tensor = output if isinstance(output, torch.Tensor) else output[0]
        tensor.register_hook(lambda grad: grad * float("inf"))

    def install(reward):
        return reward.critic.model.model.visual.blocks[-1].register_forward_hook(poison_backward)

    record = _run_with_fault(tmp_path, tiny_pipeline, tiny_vlm, install, lambda reward, handle: handle.remove())
    assert record["skipped"] == "non_finite_gradient" and record["applied_norm"] is None
    assert record["r"] is None  # nothing of a skipped step is passed off as a score


def test_checked_render_clamps_small_excursions_and_keeps_their_gradient():
    images = torch.tensor([[-1e-3, 0.5, 1.0 + 1e-3]], requires_grad=True)
    clamped = checked_render(images)
    assert torch.equal(clamped.detach(), torch.tensor([[0.0, 0.5, 1.0]]))
    (gradient,) = torch.autograd.grad(clamped.sum(), images)
    assert torch.equal(gradient, torch.tensor([[0.0, 1.0, 0.0]]))  # passes where the clamp does not bind
