"""The backbone seam: a second generator (tests/analytic_backbone.py, pure torch, not hy3dgen) added by
one file plus one registry line runs guided sampling, candidate search, the reward and the manifest
unchanged; the registry refuses what it does not know."""

from __future__ import annotations

import dataclasses

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlm3d_ttg.backbones import BACKBONES, as_backbone, backbone_class
from vlm3d_ttg.errors import InvalidInputError, UnsupportedModelError
from vlm3d_ttg.guidance import GuidanceConfig
from vlm3d_ttg.sampler import GuidedSampler
from vlm3d_ttg.search import SearchOptions

from analytic_backbone import AnalyticBackbone


@pytest.fixture
def analytic(monkeypatch):
    """The analytic backbone, registered the way a new family is: one line in BACKBONES."""
    monkeypatch.setitem(BACKBONES, "analytic", AnalyticBackbone)
    return backbone_class("analytic")()


def ellipse_image(path=None) -> Image.Image:
    yy, xx = np.mgrid[:96, :96]
    rgba = np.zeros((96, 96, 4), np.uint8)
    rgba[(xx - 48) ** 2 + ((yy - 48) * 1.3) ** 2 < 30**2] = (200, 90, 40, 255)
    image = Image.fromarray(rgba, "RGBA")
    if path is not None:
        image.save(path)
    return image


def test_the_loop_follows_the_backbones_own_conventions(analytic):
    """Unguided, the sampler is the analytic model's own Euler loop: with v = w·x₁ − x (after its
    [uncond, cond] CFG and its reversed time) and T steps of h = 1/T, x_T = w·x₁ + (1 − h)^T (x₀ − w·x₁)."""
    steps, w = 6, 3.0
    image = ellipse_image()
    out = GuidedSampler(analytic, config=GuidanceConfig(enabled=False))(
        image, num_inference_steps=steps, guidance_scale=w, seed=4, output_type="latent", progress=False)
    x0 = analytic.noise(1, torch.Generator().manual_seed(4))
    goal = w * analytic.target(image)
    expected = goal + (1 - 1 / steps) ** steps * (x0 - goal)
    assert torch.allclose(out.latents, expected, atol=1e-5)
    assert [r.sigma for r in out.records] == pytest.approx([i / steps for i in range(steps)])
    assert out.compute.dit_rows == 2 * steps  # the backbone's CFG batch: two rows per latent


def test_guided_sampling_search_and_the_manifest_run_on_a_second_backbone(analytic, tiny_vlm, tmp_path):
    """`generate_mesh` with the analytic backbone and the tiny critic: VLMReward decodes through the
    backbone's field (surface → renders → critic), the guided steps move the latent, a 2-candidate
    search picks one, and the manifest records the backbone."""
    from vlm3d_ttg.generation import GenerationOptions, LoadedModels, generate_mesh

    model, processor = tiny_vlm
    models = LoadedModels(analytic, model, processor, "analytic (tests)", "tiny critic", preset="tiny")
    guidance = GuidanceConfig(num_views=1, view_size=56, grid_resolution=32, sigma_window=(0.1, 0.95), every=2,
                              reference=True)
    out = tmp_path / "shape.glb"
    image = ellipse_image(tmp_path / "in.png")

    def run(config, out, seen):
        def keep(sampler, step, sigma, state):
            seen[step] = (state["latents"].detach().clone(), state["displacement"])
        return generate_mesh(models, image=image, prompt="an orange egg", out=out, manifest_path=out.with_suffix(".glb.json"),
                             guidance=config, options=GenerationOptions(steps=6, octree_resolution=32), progress=False,
                             search=SearchOptions(candidates=2, select_at=0.3), step_callback=keep)

    guided_steps, unguided_steps = {}, {}
    result = run(guidance, out, guided_steps)
    run(dataclasses.replace(guidance, enabled=False), tmp_path / "unguided.glb", unguided_steps)
    # The guided steps move the latent: the guided run's latents leave the unguided run's (same seed, same
    # search) at its first guided step, by exactly the displacement the sampler recorded there.
    moved = [step for step, (_, displacement) in sorted(guided_steps.items()) if displacement is not None]
    first = moved[0]
    for step in range(first):
        assert torch.equal(guided_steps[step][0], unguided_steps[step][0]), step
    latents, displacement = guided_steps[first]
    assert float(displacement.abs().max()) > 0
    torch.testing.assert_close(latents.float() - unguided_steps[first][0].float(), displacement.float().reshape(latents.shape),
                               rtol=1e-4, atol=1e-5)
    manifest = json.loads((tmp_path / "shape.glb.json").read_text())
    assert manifest["models"]["backbone"] == "analytic"
    guided = [r for r in manifest["records"] if r["guided"]]
    assert guided and all(r["skipped"] is None and r["grad_norm"] > 0 and r["applied_norm"] > 0 for r in guided)
    assert all(r["reward_info"]["faces"] > 0 for r in guided)
    search = manifest["search"]
    assert len(search["candidates"]) == 2 and search["candidates"][search["chosen"]]["kept"]
    assert all(c["r"] is not None for c in search["candidates"])
    assert manifest["final_r"] is not None and result.faces > 0 and out.is_file()
    assert manifest["compute"]["dit_rows"] == 2 * (2 * 3 + 3)  # 2 candidates to σ_s, then 1, CFG rows × 2


def test_the_registry_refuses_unknown_backbones_and_models():
    with pytest.raises(InvalidInputError, match="Unknown backbone 'nope'.*hunyuan3d-2"):
        backbone_class("nope")
    with pytest.raises(UnsupportedModelError, match="not a backbone"):
        as_backbone(torch.nn.Linear(2, 2))
    with pytest.raises(UnsupportedModelError):
        GuidedSampler(object())


def test_a_single_view_backbone_refuses_a_dict_of_views(analytic):
    with pytest.raises(InvalidInputError, match="one image, not a dict"):
        GuidedSampler(analytic, config=GuidanceConfig(enabled=False))(
            {"front": ellipse_image(), "back": ellipse_image()}, num_inference_steps=2, output_type="latent",
            progress=False)
