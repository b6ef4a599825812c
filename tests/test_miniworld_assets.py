"""The shipped miniature models: their bytes match the manifest, they load through the project's
loaders, the decoder still reconstructs the shipped probe shapes (a shuffled decoder does not) and the
generator makes the class of the shape in its input picture (it does not with its image encoder shuffled)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from vlm3d_ttg.errors import CheckpointError
from vlm3d_ttg.miniworld.autodecoder import decode_grid
from vlm3d_ttg.miniworld.checkpoints import ASSETS, ensure_mini_models, read_manifest
from vlm3d_ttg.miniworld.geometry import (
    ShapeClassifier,
    detect_attribute,
    iou,
    mesh_from_sdf,
    mesh_from_values,
    occupancy_grid,
)
from vlm3d_ttg.miniworld.render_input import render_input_image
from vlm3d_ttg.miniworld.shapes import CLASSES, make_spec, shape_sdf

GRID = 32
#: The shipped decoder's probes reach a mean IoU of 0.99 at 32³ (the width-128 decoder of session 13; the
#: width-64 one before it, 0.84: RESULTS, "The miniature world").
MIN_PROBE_IOU = 0.9


def test_shipped_weights_match_their_manifest(tmp_path):
    manifest = read_manifest()
    assert {"shape.fp16.safetensors", "probes.safetensors", "critic_guide.fp16.safetensors"} <= set(manifest["sha256"])
    assert sum((ASSETS / name).stat().st_size for name in manifest["sha256"]) < 20e6
    damaged = tmp_path / "assets"
    shutil.copytree(ASSETS, damaged)
    data = bytearray((damaged / "shape.fp16.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (damaged / "shape.fp16.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        read_manifest(damaged)


@pytest.fixture(scope="module")
def mini_models(tmp_path_factory):
    return ensure_mini_models(tmp_path_factory.mktemp("mini-cache"))


@pytest.fixture(scope="module")
def mini_pipeline(mini_models):
    from vlm3d_ttg.backbones.hunyuan3d2_models import load_shape_pipeline

    models = mini_models
    return load_shape_pipeline(models.shape.repo_id, models.shape.subfolder, models_dir=models.shape.models_dir,
                               device="cpu", dtype="float32")


def _probes() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(ASSETS / "probes.safetensors"))


def _reconstruction(vae: torch.nn.Module, name: str, code: torch.Tensor) -> tuple[float, bool]:
    cls, variant = name.rsplit("_", 1)
    spec = make_spec(cls, int(variant))
    truth = occupancy_grid(shape_sdf(spec), GRID)
    grid = decode_grid(vae, code, GRID) > 0
    attribute = detect_attribute(cls, grid)
    return iou(grid, truth), attribute is None or attribute == next(iter(spec.attributes.values()))


def test_shipped_decoder_reconstructs_the_probe_shapes(mini_pipeline):
    vae = mini_pipeline.vae
    probes = _probes()
    results = {name: _reconstruction(vae, name, code) for name, code in probes.items()}
    assert np.mean([r[0] for r in results.values()]) > MIN_PROBE_IOU, results
    assert all(r[1] for r in results.values()), results  # handle, legs, back, fins survive the decoder
    # A decoder whose geo-decoder weights are shuffled fails the same check.
    saved = {k: v.clone() for k, v in vae.geo_decoder.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    try:
        with torch.no_grad():
            for tensor in vae.geo_decoder.parameters():
                flat = tensor.view(-1)
                flat.copy_(flat[torch.randperm(flat.numel(), generator=generator)])
        shuffled = {name: _reconstruction(vae, name, probes[name]) for name in ("mug_000", "table_000", "torus_000")}
    finally:
        vae.geo_decoder.load_state_dict(saved)
    assert np.mean([r[0] for r in shuffled.values()]) < MIN_PROBE_IOU



def _shuffle_(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Permute every weight of `module` in place (seeded); returns the state to restore."""
    saved = {k: v.clone() for k, v in module.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in module.parameters():
            flat = tensor.view(-1)
            flat.copy_(flat[torch.randperm(flat.numel(), generator=generator)])
    return saved


def test_the_shipped_generator_makes_the_class_in_its_input_picture(mini_pipeline):
    # RESULTS ("class right"): unguided samples from the 78 test pictures are named right on 0.81 (20
    # steps, read against every training shape); here six test shapes of classes that differ in outline,
    # 6 steps, read against two training shapes per class.
    rng = np.random.default_rng(0)

    def points(mesh) -> np.ndarray:
        return mesh.vertices[rng.choice(len(mesh.vertices), 400)]

    classifier = ShapeClassifier({c: [points(mesh_from_sdf(shape_sdf(make_spec(c, v)), 28)) for v in range(2)] for c in CLASSES})

    def named(cls: str) -> str:
        picture = render_input_image(mesh_from_sdf(shape_sdf(make_spec(cls, 50)), 48), 30.0, 20.0)  # a test variant
        latent = mini_pipeline(image=picture, num_inference_steps=6, guidance_scale=5.0, output_type="latent",
                               generator=torch.Generator().manual_seed(0), enable_pbar=False)
        logits = decode_grid(mini_pipeline.vae, latent[0] / mini_pipeline.vae.scale_factor, GRID)
        return classifier(points(mesh_from_values(logits, 0.0, inside_above=True)))

    probes = ("sphere", "torus", "table", "bottle", "snowman", "lamp")
    assert sum(named(cls) == cls for cls in probes) >= 5
    # With its image encoder's weights shuffled the same DiT no longer sees the picture.
    saved = _shuffle_(mini_pipeline.conditioner)
    try:
        assert sum(named(cls) == cls for cls in probes) <= 2
    finally:
        mini_pipeline.conditioner.load_state_dict(saved)


def test_mini_critic_loads_and_r_is_differentiable_in_the_views(mini_models):
    from vlm3d_ttg.critic.vlm_critic import VLMCritic
    from vlm3d_ttg.miniworld.geometry import mesh_from_sdf
    from vlm3d_ttg.miniworld.render_input import critic_views
    from vlm3d_ttg.models import load_vlm

    model, processor = load_vlm(str(mini_models.critic))
    critic = VLMCritic(model.double(), processor, "a torus", "dual")
    mesh = mesh_from_sdf(shape_sdf(make_spec("torus", 0)), 40)
    views = critic_views(mesh, generator=torch.Generator().manual_seed(0)).double().requires_grad_(True)
    (gradient,) = torch.autograd.grad(critic(views).r, views)
    generator = torch.Generator().manual_seed(1)
    direction = torch.randn(views.shape, generator=generator, dtype=torch.float64)
    direction = direction * ((views > 0.01) & (views < 0.99)).detach()  # stay inside [0, 1]
    # r carries float32 rounding noise of ~3e-7 even with a float64 model (measured: the central difference's
    # error grows as 3e-7 / (2 eps) below eps 1e-4); at 1e-3 that noise is 1.5e-4 and the truncation error less.
    eps = 1e-3
    with torch.no_grad():
        finite = (critic(views + eps * direction).r - critic(views - eps * direction).r) / (2 * eps)
    analytic = (gradient * direction).sum()
    assert abs(float(finite)) > 1e-6  # r does depend on the pixels
    assert abs(float(finite - analytic)) <= 1e-3 * max(1.0, abs(float(finite)))  # measured: 1.4e-4


def test_the_judge_ships_as_another_critic_and_tells_the_classes_apart(mini_models):
    """Issue 26 item 3: a second critic of another seed and size, used only to judge. On clean renders of shapes
    of four classes it says Yes most to the shape's own description (a judge with shuffled weights does not)."""
    from vlm3d_ttg.critic.vlm_critic import VLMCritic
    from vlm3d_ttg.miniworld.geometry import mesh_from_sdf
    from vlm3d_ttg.miniworld.render_input import critic_views
    from vlm3d_ttg.models import load_vlm

    critics = read_manifest()["critics"]
    assert set(critics) == {"guide", "judge"} and mini_models.judge is not None
    assert (critics["judge"]["size"], critics["judge"]["seed"]) != (critics["guide"]["size"], critics["guide"]["seed"])
    assert critics["judge"]["seed"] != critics["guide"]["seed"]
    model, processor = load_vlm(str(mini_models.judge))
    descriptions = ["a torus", "a snowman", "a bowl", "a rocket with fins"]
    judges = {d: VLMCritic(model, processor, d, "dual") for d in descriptions}
    for own in descriptions:
        spec = make_spec(own.split()[1], 0)  # variant 0: the rocket has fins
        assert spec.cls != "rocket" or spec.attributes["fins"] == 1
        views = critic_views(mesh_from_sdf(shape_sdf(spec), 48), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            scores = {d: float(judge(views).r) for d, judge in judges.items()}
        assert max(scores, key=scores.get) == own, (own, scores)


def _guide_answers(model, processor, question_sets) -> dict[str, list[bool]]:
    """For each (views, description, expected Yes) whether the critic's r has the expected sign, by kind."""
    from vlm3d_ttg.critic.vlm_critic import VLMCritic

    critics: dict[str, VLMCritic] = {}
    right: dict[str, list[bool]] = {}
    for kind, views, description, yes in question_sets:
        critic = critics.setdefault(description, VLMCritic(model, processor, description, "dual"))
        with torch.no_grad():
            r = float(critic(views).r)
        right.setdefault(kind, []).append((r > 0) == yes)
    return right


def test_the_shipped_guide_critic_answers_on_test_shapes(mini_models):
    """Issue 26 item 3, "the critic answers": on renders of test-split shapes (never trained on), as guidance
    renders them, the guide critic says Yes to the shape's own description and No to the other attribute
    value, to another class and to a broken variant (RESULTS: 0.97 balanced accuracy over 234 test shapes);
    the same critic with its weights shuffled does not."""
    from vlm3d_ttg.miniworld.broken import break_mesh
    from vlm3d_ttg.miniworld.render_input import critic_views
    from vlm3d_ttg.models import load_vlm

    opposite = {"a mug with a handle": "a mug without a handle", "a table with four legs": "a table with three legs",
                "a chair with a back": "a chair without a back", "a rocket with fins": "a rocket without fins"}
    opposite.update({v: k for k, v in opposite.items()})
    other_class = {"mug": "a torus", "table": "a box", "chair": "a lamp", "rocket": "a bottle", "torus": "a bowl",
                   "snowman": "a sphere", "bottle": "a cone", "lamp": "a chair with a back"}
    rng = np.random.default_rng(0)
    question_sets = []
    for cls in other_class:
        for variant in (50, 53):  # test variants (dataset.split_of)
            spec = make_spec(cls, variant)
            mesh = mesh_from_sdf(shape_sdf(spec), 48)
            generator = torch.Generator().manual_seed(variant)
            views = critic_views(mesh, generator=generator)
            description = spec.descriptions()[0]
            question_sets.append(("yes", views, description, True))
            if description in opposite:
                question_sets.append(("other attribute", views, opposite[description], False))
            question_sets.append(("other class", views, other_class[cls], False))
            question_sets.append(("broken", critic_views(break_mesh(mesh, "fracture", rng), generator=generator),
                                  description, False))
    model, processor = load_vlm(str(mini_models.critic))
    right = _guide_answers(model, processor, question_sets)
    accuracy = {kind: float(np.mean(answers)) for kind, answers in right.items()}
    assert min(accuracy.values()) >= 0.75 and np.mean(sum(right.values(), [])) >= 0.9, accuracy
    # The same critic with every weight shuffled answers no better than a coin on one of the kinds.
    saved = _shuffle_(model)
    try:
        shuffled = {kind: float(np.mean(answers)) for kind, answers in _guide_answers(model, processor, question_sets).items()}
    finally:
        model.load_state_dict(saved)
    assert min(shuffled.values()) < 0.75, shuffled
