"""The critic with the reference image first (--critic-reference) and with tiled views (--view-layout grid):
prompt layout and 3-D positions equal to the real processor's for mixed image sizes, r equal to the
stock path, gradients to the views only, and the grid's token saving."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from vlm3d_ttg.critic import DUAL_QUERY, QUERY_TEMPLATES, VLMCritic
from vlm3d_ttg.critic.layout import tile_views
from vlm3d_ttg.critic.queries import builtin_query, resolve_query
from vlm3d_ttg.errors import InvalidInputError

from critic_stock import stock_inputs, stock_r

DESCRIPTION = "a wooden chair"
VIEWS = (3, 56, 56)  # views: N, H, W
REFERENCE_SIZE = (50, 100)  # not a multiple of 28 and not square: the processor resizes it to 56x112


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return 0.1 + 0.8 * torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def reference() -> torch.Tensor:
    return _rand(3, *REFERENCE_SIZE, seed=11)


@pytest.fixture(scope="module")
def critics(tiny_vlm, reference):
    model, processor = tiny_vlm
    return {
        (with_reference, layout): VLMCritic(model, processor, DESCRIPTION, reference=reference if with_reference else None, layout=layout)
        for with_reference in (False, True)
        for layout in ("separate", "grid")
    }


def _model_images(critic: VLMCritic, views: torch.Tensor, reference: torch.Tensor) -> list[torch.Tensor]:
    """What the stock path should be given for this critic: the reference, then the views or their tile."""
    shown = [tile_views(views, critic.tile_size(*views.shape[:1], *views.shape[-2:]))] if critic.layout == "grid" else list(views)
    return ([reference] if critic.reference is not None else []) + shown


def _rope_positions_by_hand(input_ids: torch.Tensor, image_token_id: int, grids: list[list[int]], merge: int) -> torch.Tensor:
    """Qwen2.5-VL's 3-D positions of one sequence, derived from its paper's rule rather than its code.

    Text advances all three axes by one; an image's (h, w) merged patches share the next temporal
    position and take row/column offsets; the text after it starts past the image's largest side.
    """
    positions, next_position, token, image = [], 0, 0, 0
    ids = input_ids.tolist()
    while token < len(ids):
        if ids[token] != image_token_id:
            positions.append([next_position] * 3)
            next_position += 1
            token += 1
            continue
        _, height, width = grids[image]
        rows, columns = height // merge, width // merge
        positions += [[next_position, next_position + row, next_position + column] for row in range(rows) for column in range(columns)]
        next_position += max(rows, columns)
        token += rows * columns
        image += 1
    assert image == len(grids)
    return torch.tensor(positions).T


def test_builtin_queries_say_which_image_is_which():
    assert builtin_query("dual") == DUAL_QUERY  # the default stays the paper's reference-free query
    for name in QUERY_TEMPLATES:
        assert resolve_query(name) == QUERY_TEMPLATES[name]
        with_reference = builtin_query(name, reference=True)
        assert with_reference.startswith("The first image is the reference image")
        assert "the images after it" in with_reference
        assert "the second image" in builtin_query(name, reference=True, layout="grid")
        assert "tiled in a grid" in builtin_query(name, layout="grid") and "provided image," in builtin_query(name, layout="grid")
    assert "shown in the reference image" in builtin_query("content", reference=True)
    assert "reference image shows is missing" in builtin_query("geometry", reference=True)
    assert "reference" not in builtin_query("geometry", layout="grid")
    # A user template is used as written.
    assert resolve_query("Is this {description}?", reference=True, layout="grid") == "Is this {description}?"


@pytest.mark.parametrize("with_reference,layout", [(True, "separate"), (True, "grid"), (False, "grid")])
def test_prompt_and_positions_equal_the_real_processor(critics, tiny_vlm, reference, with_reference, layout):
    model, processor = tiny_vlm
    critic = critics[(with_reference, layout)]
    views = _rand(*VIEWS[:1], 3, *VIEWS[1:], seed=1)
    prompt = critic.prompt_inputs(*VIEWS)
    text, stock = stock_inputs(processor, critic.question, _model_images(critic, views, reference))
    assert prompt.chat_texts == (text,)
    assert torch.equal(prompt.input_ids.cpu(), stock["input_ids"])
    assert torch.equal(prompt.image_grid_thw.cpu(), stock["image_grid_thw"])
    if with_reference:  # mixed sizes: the reference's grid differs from the views'
        assert stock["image_grid_thw"][0].tolist() != stock["image_grid_thw"][1].tolist()
    merge = int(processor.image_processor.merge_size)
    expected = _rope_positions_by_hand(stock["input_ids"][0], model.config.image_token_id, stock["image_grid_thw"].tolist(), merge)
    assert torch.equal(prompt.position_ids[:, 0].cpu(), expected)
    image_tokens = int((stock["input_ids"] == model.config.image_token_id).sum())
    assert critic.image_token_count(*VIEWS) == image_tokens


@pytest.mark.parametrize("with_reference,layout", [(True, "separate"), (True, "grid"), (False, "grid")])
def test_r_equals_stock_path(critics, tiny_vlm, reference, with_reference, layout):
    model, processor = tiny_vlm
    critic = critics[(with_reference, layout)]
    views = _rand(*VIEWS[:1], 3, *VIEWS[1:], seed=2)
    stock = stock_r(model, processor, critic.question, _model_images(critic, views, reference))
    assert abs(float(critic(views).r) - stock) < 1e-5, (float(critic(views).r), stock)


def test_views_rendered_at_the_cell_size_are_placed_into_a_tile_of_the_grid_size(tiny_vlm, reference):
    # What generation does: 4 views rendered at 27 px (the cell of a 56-px tile with a 2-px line).
    model, processor = tiny_vlm
    critic = VLMCritic(model, processor, DESCRIPTION, reference=reference, layout="grid", grid_size=56)
    views = _rand(4, 3, 27, 27, seed=6)
    assert critic.tile_size(4, 27, 27) == (56, 56)
    tile = tile_views(views, (56, 56))
    assert torch.equal(tile[:, 29:, 29:], views[3])  # placed, not resampled
    assert abs(float(critic(views).r) - stock_r(model, processor, critic.question, [reference, tile])) < 1e-5


def test_the_reference_changes_r_and_gets_no_gradient(tiny_vlm, critics):
    model, processor = tiny_vlm
    reference = _rand(3, *REFERENCE_SIZE, seed=11).requires_grad_(True)
    critic = VLMCritic(model, processor, DESCRIPTION, reference=reference)
    views = _rand(*VIEWS[:1], 3, *VIEWS[1:], seed=3).requires_grad_(True)
    output = critic(views)
    view_gradient, reference_gradient = torch.autograd.grad(output.r, (views, reference), allow_unused=True)
    assert reference_gradient is None
    assert torch.isfinite(view_gradient).all() and all(float(view_gradient[i].abs().sum()) > 0 for i in range(VIEWS[0]))
    # The reference is seen: another picture gives another r for the same views.
    other = VLMCritic(model, processor, DESCRIPTION, reference=_rand(3, *REFERENCE_SIZE, seed=12))
    with torch.no_grad():
        assert abs(float(other(views).r) - float(output.r)) > 1e-4


def test_batched_calls_place_the_reference_before_every_view_set(critics):
    critic = critics[(True, "grid")]
    view_sets = _rand(2, *VIEWS[:1], 3, *VIEWS[1:], seed=4)
    descriptions = ["a chair", "a tall wooden chair with a round seat"]
    with torch.no_grad():
        batched = critic(view_sets).r
        shared = critic(view_sets[0], descriptions=descriptions).r  # the vision tower runs once
        singles = torch.stack([critic(views).r for views in view_sets])
        per_description = torch.stack(
            [VLMCritic(critic.model, critic.processor, text, reference=critic.reference, layout="grid")(view_sets[0]).r
             for text in descriptions]
        )
    assert torch.allclose(batched, singles, atol=1e-5)
    assert torch.allclose(shared, per_description, atol=1e-5)


def test_grid_has_four_times_fewer_image_tokens_at_four_views(critics, tiny_vlm):
    separate, grid = critics[(False, "separate")], critics[(False, "grid")]
    for side in (56, 448):
        assert separate.image_token_count(4, side, side) == 4 * grid.image_token_count(4, side, side)
    assert (separate.image_token_count(4, 448, 448), grid.image_token_count(4, 448, 448)) == (1024, 256)
    image_token_id = tiny_vlm[0].config.image_token_id
    counts = [int((c.prompt_inputs(4, 56, 56).input_ids == image_token_id).sum()) for c in (separate, grid)]
    assert counts == [16, 4]


def test_grid_r_gradient_matches_finite_differences_for_each_view(tiny_vlm):
    """dr/d(view i) · v against central differences (Richardson), for each view of a tiled set (float64 model)."""
    model, processor = tiny_vlm
    critic = VLMCritic(copy.deepcopy(model).to(torch.float64), processor, DESCRIPTION, layout="grid")
    generator = torch.Generator().manual_seed(5)
    views = (0.2 + 0.6 * torch.rand(4, 3, 56, 56, generator=generator)).double()
    leaf = views.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(critic(leaf).r, leaf)
    errors, analytic = [], []
    for index in range(4):
        direction = torch.zeros_like(views)
        direction[index] = torch.randn(views.shape[1:], generator=generator, dtype=torch.float64)
        direction /= direction.abs().max()

        def central(eps: float) -> float:
            with torch.no_grad():
                return float(critic(views + eps * direction).r - critic(views - eps * direction).r) / (2 * eps)

        numeric = (4 * central(0.02) - central(0.04)) / 3
        analytic.append(float((gradient * direction).sum()))
        errors.append((analytic[-1], numeric))
    scale = max(abs(a) for a in analytic)
    assert scale > 0
    relative = [abs(a - n) / scale for a, n in errors]
    print(f"\nFD check (grid): relative errors per view {', '.join(f'{e:.1e}' for e in relative)}")
    assert max(relative) < 1e-3


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"reference": torch.rand(1, 3, 8, 8)}, "reference image must be a tensor"),
        ({"reference": torch.full((3, 8, 8), 2.0)}, r"\[0, 1\]"),
        ({"layout": "mosaic"}, "layout must be one of"),
    ],
    ids=["batched-reference", "reference-out-of-range", "unknown-layout"],
)
def test_bad_reference_or_layout_is_refused(tiny_vlm, kwargs, message):
    model, processor = tiny_vlm
    with pytest.raises(InvalidInputError, match=message):
        VLMCritic(model, processor, DESCRIPTION, **kwargs)


def test_reference_is_the_condition_image_as_the_shape_model_sees_it(tiny_pipeline):
    # An off-centre orange disc on transparency: hy3dgen recentres it on white; the reference must too.
    import numpy as np
    from PIL import Image

    from vlm3d_ttg.critic.reference import reference_from_condition

    rgba = np.zeros((120, 160, 4), np.uint8)
    yy, xx = np.mgrid[:120, :160]
    rgba[(xx - 40) ** 2 + (yy - 30) ** 2 < 400] = (230, 120, 20, 255)
    image = Image.fromarray(rgba, "RGBA")
    reference = reference_from_condition(tiny_pipeline.image_processor, image, 56)
    assert reference.shape == (3, 56, 56) and reference.dtype == torch.float32
    assert torch.allclose(reference[:, 0, 0], torch.ones(3), atol=0.02)  # white background, like the renders
    centre = reference[:, 24:32, 24:32].mean(dim=(1, 2))
    assert torch.allclose(centre, torch.tensor([230, 120, 20]) / 255, atol=0.03)  # the object, recentred
    with pytest.raises(InvalidInputError, match="multiple of 28"):
        reference_from_condition(tiny_pipeline.image_processor, image, 50)


def test_generate_plumbs_the_reference_and_layout_to_the_critic(tiny_pipeline, tiny_vlm, rgba_image, tmp_path):
    """generate_mesh with --critic-reference --view-layout grid: its final r is the reference-aware grid
    critic's score of the mesh it wrote, not the paper critic's."""
    import dataclasses
    import json

    import trimesh
    from PIL import Image

    from vlm3d_ttg.critic.reference import reference_from_condition
    from vlm3d_ttg.generation import GenerationOptions, LoadedModels, generate_mesh
    from vlm3d_ttg.guidance import GuidanceConfig
    from vlm3d_ttg.reward import VLMReward

    model, processor = tiny_vlm
    image = rgba_image
    guidance = GuidanceConfig(reference=True, view_layout="grid", num_views=4, view_size=56, grid_resolution=32,
                              sigma_window=(0.1, 0.9))
    models = LoadedModels(tiny_pipeline, model, processor, "tiny shape", "tiny vlm", preset="tiny")
    result = generate_mesh(models, image=image, prompt="a small clay pot", out=tmp_path / "mesh.glb",
                           manifest_path=tmp_path / "mesh.glb.json", guidance=guidance,
                           options=GenerationOptions(steps=6, octree_resolution=32), keep_views="none", progress=False)
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["guidance"]["reference"] is True and manifest["guidance"]["view_layout"] == "grid"
    assert any(record["guided"] and record["grad_norm"] > 0 for record in manifest["records"])
    mesh = trimesh.load(result.mesh_path, force="mesh")
    reference = reference_from_condition(tiny_pipeline.image_processor, Image.open(image), 56)

    def score(critic_guidance: GuidanceConfig, **critic_options) -> float:
        critic = VLMCritic(model, processor, "a small clay pot", **critic_options)
        return float(VLMReward(tiny_pipeline, critic, critic_guidance).score_mesh(mesh.vertices, mesh.faces).r)

    assert abs(score(guidance, reference=reference, layout="grid", grid_size=56) - result.final_r) < 1e-4
    paper = dataclasses.replace(guidance, reference=False, view_layout="separate")
    assert abs(score(paper) - result.final_r) > 1e-4


def test_guided_reference_benchmark_config_is_rescored_by_the_papers_critic(tiny_pipeline, tiny_vlm, reference, tmp_path):
    import trimesh

    from vlm3d_ttg.bench.configs import PRESET_NAMES, preset_config
    from vlm3d_ttg.bench.generate import ReferenceScorer
    from vlm3d_ttg.generation import LoadedModels
    from vlm3d_ttg.guidance import GuidanceConfig
    from vlm3d_ttg.reward import VLMReward

    assert "guided_reference" in PRESET_NAMES
    config = preset_config("guided_reference", GuidanceConfig(enabled=False, query="content"))
    assert config.guided and config.guidance.reference and config.guidance.query == "dual"
    # Configurations compare under one critic: the paper's, even if the run's options ask for the reference/grid.
    scorer = ReferenceScorer(None, "a chair", GuidanceConfig(reference=True, view_layout="grid"))
    assert not scorer.guidance.reference and scorer.guidance.view_layout == "separate"
    assert not scorer.same_setting(config.guidance)
    assert scorer.same_setting(preset_config("guided", GuidanceConfig()).guidance)

    # The re-scoring itself: a mesh file's r under the paper's critic, not under the run's reference/grid one.
    model, processor = tiny_vlm
    run_guidance = GuidanceConfig(reference=True, view_layout="grid", num_views=2, view_size=56, azimuth_jitter=0.0,
                                  elevation_jitter=0.0)
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.6)
    mesh.vertices[:, 1] *= 1.4  # not a sphere: the views differ with the angle
    path = tmp_path / "mesh.glb"
    mesh.export(path)
    scorer = ReferenceScorer(LoadedModels(tiny_pipeline, model, processor, "tiny shape", "tiny vlm", preset="tiny"),
                             "a chair", run_guidance)
    written = trimesh.load(path, force="mesh", process=False)

    def score(guidance: GuidanceConfig, **critic_options) -> float:
        critic = VLMCritic(model, processor, "a chair", "dual", **critic_options)
        return float(VLMReward(tiny_pipeline, critic, guidance).score_mesh(written.vertices, written.faces).r)

    with torch.no_grad():
        rescored = scorer.score(path)
        paper = score(dataclasses.replace(run_guidance, reference=False, view_layout="separate"))
        as_run = score(run_guidance, reference=reference, layout="grid", grid_size=56)
    assert rescored == pytest.approx(paper, abs=1e-5) and abs(rescored - as_run) > 1e-4
