"""Qwen3-VL as the critic: the evidence the Qwen2.5-VL critic has (tests/test_critic.py,
tests/test_critic_reference.py), for the second family — preprocessing equal to the real processor,
prompt ids, grids and 3-D positions equal to the processor's and the model's own for mixed image
sizes, r equal to the plain processor + model path, gradients against finite differences — and the
family's plumbing: registry, view-size rule, a guided tiny run from the CLI, `score --json`."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from vlm3d_ttg.critic import (
    FAMILIES,
    Qwen3VLCritic,
    QwenCritic,
    VLMCritic,
    build_critic,
    check_family_view_size,
    family_of,
    qwen_resized_size,
)
from vlm3d_ttg.critic.layout import tile_views
from vlm3d_ttg.errors import InvalidInputError, UnsupportedModelError

from critic_stock import NO_RESIZE_TOLERANCE, RESIZE_TOLERANCE, pixel_value_differences, stock_inputs, stock_r

DESCRIPTION = "a wooden chair"
VIEWS = (3, 64, 64)  # N, H, W: multiples of 32, so the views reach the model unresampled
REFERENCE_SIZE = (50, 100)  # not a multiple of 32, not square: the processor resizes it (to 64x96)


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return 0.1 + 0.8 * torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def qwen3_path(tiny_cache):
    """The tiny Qwen3-VL `save_pretrained` folder, written once into this session's cache."""
    from vlm3d_ttg.tiny import ensure_tiny_vlm

    return ensure_tiny_vlm(tiny_cache, family="qwen3-vl")


@pytest.fixture(scope="module")
def qwen3(qwen3_path):
    """(model, processor) of the tiny Qwen3-VL, loaded by `load_vlm` like any checkpoint (fp32, CPU)."""
    from vlm3d_ttg import load_vlm

    model, processor = load_vlm(qwen3_path, device="cpu")
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"  # loaded by the family its config names
    return model, processor


@pytest.fixture(scope="module")
def reference() -> torch.Tensor:
    return _rand(3, *REFERENCE_SIZE, seed=11)


def _model_images(critic, views: torch.Tensor) -> list[torch.Tensor]:
    """What the stock path is given for this critic: the reference, then the views or their tile."""
    shown = [tile_views(views, critic.tile_size(*views.shape[:1], *views.shape[-2:]))] if critic.layout == "grid" else list(views)
    return ([critic.reference] if critic.reference is not None else []) + shown


def _qwen3_positions_by_hand(input_ids: torch.Tensor, image_token_id: int, grids: list[list[int]], merge: int) -> torch.Tensor:
    """Qwen3-VL's 3-D positions of one sequence, written from its rule rather than its code.

    Text advances all three axes by one. An image of rows x columns merged patches starting at
    position s gives patch (row, column) the positions (s, s + row, s + column); the text after it
    continues at s + max(rows, columns) (Qwen2.5-VL's continues one further).
    """
    positions, start, token, image = [], 0, 0, 0
    ids = input_ids.tolist()
    while token < len(ids):
        if ids[token] != image_token_id:
            positions.append([start] * 3)
            start, token = start + 1, token + 1
            continue
        _, height, width = grids[image]
        rows, columns = height // merge, width // merge
        positions += [[start, start + row, start + column] for row in range(rows) for column in range(columns)]
        start, token, image = start + max(rows, columns), token + rows * columns, image + 1
    assert image == len(grids)
    return torch.tensor(positions).T


# --------------------------------------------------------------------------------------------
# Preprocessing equals the real processor


def _processor_real_constants():
    from transformers import Qwen2VLImageProcessor

    # Qwen3-VL-8B-Instruct's preprocessor_config.json: patch 16, merge 2, temporal 2, mean = std = 0.5,
    # shortest_edge 65536 (256²), longest_edge 16777216 (4096²).
    half = [0.5, 0.5, 0.5]
    return Qwen2VLImageProcessor(size={"shortest_edge": 65536, "longest_edge": 16777216}, patch_size=16,
                                 temporal_patch_size=2, merge_size=2, image_mean=half, image_std=half)


# Per processor: {name: (N, H, W, resized?)}. "resized": the processor resamples (smart_resize changes the size).
SIZES = {
    "tiny": {"square-64": (2, 64, 64, False), "non-square-64x96": (2, 64, 96, False), "non-multiple-50x70": (2, 50, 70, True),
             "tiny-20x30-upsampled": (1, 20, 30, True),
             "huge-1000x1200-downsampled": (1, 1000, 1200, True)},  # > the tiny processor's max_pixels
    "real-constants": {"square-448": (2, 448, 448, False), "500-to-512": (1, 500, 500, True),
                       "200-upsampled-to-min-pixels": (1, 200, 200, True)},
}


@pytest.mark.parametrize("which", list(SIZES))
def test_pixel_values_equal_real_processor(qwen3, which):
    processor = qwen3[1].image_processor if which == "tiny" else _processor_real_constants()
    assert (processor.patch_size, processor.merge_size, list(processor.image_mean)) == (16, 2, [0.5] * 3)
    cases = [(name, _rand(n, 3, h, w, seed=seed), resized) for seed, (name, (n, h, w, resized)) in enumerate(SIZES[which].items())]
    report = pixel_value_differences(processor, cases, resize_tolerance=RESIZE_TOLERANCE, exact_tolerance=NO_RESIZE_TOLERANCE)
    print(f"\nqwen_pixel_values vs the Qwen3-VL {which} processor, max abs diff: " + "; ".join(report))


def test_view_size_rule_is_exactly_the_sides_the_processor_keeps():
    # A side passes the qwen3-vl family's check iff the real processor feeds it to the model unresampled
    # (from its min_pixels = 256² up; smaller sides grow).
    processor = _processor_real_constants()
    assert FAMILIES["qwen3-vl"].view_multiple == 32 == int(processor.patch_size) * int(processor.merge_size)
    for side in range(256, 1100):
        kept = qwen_resized_size(side, side, processor) == (side, side)
        try:
            accepted = check_family_view_size("qwen3-vl", side) == side
        except InvalidInputError as exc:
            accepted = False
            assert "multiple of 32" in str(exc)
        assert accepted == kept, side
    assert check_family_view_size("qwen3-vl", 448) == check_family_view_size("qwen2.5-vl", 448) == 448


# --------------------------------------------------------------------------------------------
# Prompt, answer tokens, positions


def test_chat_text_and_answer_tokens(qwen3):
    model, processor = qwen3
    critic = build_critic(model, processor, DESCRIPTION)
    assert isinstance(critic, Qwen3VLCritic) and (critic.family, critic.view_multiple) == ("qwen3-vl", 32)
    messages = [{"role": "user", "content": [{"type": "image"}] * 2 + [{"type": "text", "text": critic.question}]}]
    assert critic.chat_text(2) == processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # Qwen3-VL-Instruct's format: no default system turn, no <think> block after the assistant tag.
    assert critic.chat_text(2) == (
        "<|im_start|>user\n" + "<|vision_start|><|image_pad|><|vision_end|>" * 2 + critic.question
        + "<|im_end|>\n<|im_start|>assistant\n"
    )
    tokenizer = processor.tokenizer
    assert tokenizer.encode("Yes", add_special_tokens=False) == [critic.yes_id]
    assert tokenizer.encode("No", add_special_tokens=False) == [critic.no_id] != [critic.yes_id]
    # Qwen3's added tokens are markup the critic refuses in a description.
    with pytest.raises(InvalidInputError, match="<think>"):
        build_critic(model, processor, "a chair <think>")


@pytest.mark.parametrize("with_reference,layout", [(False, "separate"), (True, "separate"), (True, "grid"), (False, "grid")])
def test_prompt_positions_and_r_equal_the_processor_and_model(qwen3, reference, with_reference, layout):
    """Mixed image sizes (a resized reference before 64² views, or their tile): the critic's cached
    ids, grids and positions are the processor's and the model's own `get_rope_index`'s (and the
    rule written by hand), and r is the plain processor + model path's."""
    model, processor = qwen3
    critic = build_critic(model, processor, DESCRIPTION, reference=reference if with_reference else None, layout=layout)
    views = _rand(VIEWS[0], 3, *VIEWS[1:], seed=1)
    prompt = critic.prompt_inputs(*VIEWS)
    text, stock = stock_inputs(processor, critic.question, _model_images(critic, views))
    assert prompt.chat_texts == (text,)
    assert torch.equal(prompt.input_ids.cpu(), stock["input_ids"])
    assert torch.equal(prompt.image_grid_thw.cpu(), stock["image_grid_thw"])
    if with_reference:
        assert stock["image_grid_thw"][0].tolist() != stock["image_grid_thw"][1].tolist()  # mixed sizes
    model_positions, _ = model.model.get_rope_index(
        stock["input_ids"], mm_token_type_ids=stock["mm_token_type_ids"], image_grid_thw=stock["image_grid_thw"])
    assert torch.equal(prompt.position_ids.cpu(), model_positions)
    by_hand = _qwen3_positions_by_hand(stock["input_ids"][0], model.config.image_token_id,
                                       stock["image_grid_thw"].tolist(), int(processor.image_processor.merge_size))
    assert torch.equal(prompt.position_ids[:, 0].cpu(), by_hand)
    with torch.no_grad():
        r = float(critic(views).r)
    assert abs(r - stock_r(model, processor, critic.question, _model_images(critic, views))) < 1e-5


@pytest.mark.parametrize("count,height,width", [(2, 50, 70), (1, 128, 96)], ids=["2x50x70-resized", "1x128x96"])
def test_r_equals_stock_path(qwen3, count, height, width):
    model, processor = qwen3
    critic = build_critic(model, processor, DESCRIPTION)
    images = _rand(count, 3, height, width, seed=count)
    output = critic(images)
    assert output.r.shape == () and output.r.dtype == torch.float32
    assert torch.allclose(output.r, output.logit_yes - output.logit_no)
    assert abs(float(output.r) - stock_r(model, processor, critic.question, list(images))) < 1e-5


def test_batched_descriptions_equal_single_calls(qwen3):
    """One view set judged against several descriptions (the vision tower runs once; its merged and
    deepstack features are handed back, repeated per sequence) equals separate critics, which pass
    pixels and let the model compute every feature itself."""
    model, processor = qwen3
    critic = build_critic(model, processor, DESCRIPTION)
    views = _rand(*VIEWS[:1], 3, *VIEWS[1:], seed=4)
    descriptions = ["a chair", "a very tall wooden chair with four legs and a round seat"]
    with torch.no_grad():
        shared = critic(views, descriptions=descriptions).r
        singles = torch.stack([build_critic(model, processor, text)(views).r for text in descriptions])
    assert torch.allclose(shared, singles, atol=1e-5)


def test_gradient_matches_finite_differences(qwen3, reference):
    """dr/d(views) · v against central differences (Richardson) along random directions, float64 model:
    plain views that the processor resizes, and 64² views after the reference (precomputed features)."""
    model, processor = qwen3
    model64 = copy.deepcopy(model).to(torch.float64)
    generator = torch.Generator().manual_seed(2)
    errors = []
    for with_reference, (count, height, width) in ((False, (2, 50, 70)), (True, (2, 64, 64))):
        critic = build_critic(model64, processor, DESCRIPTION, reference=reference if with_reference else None)
        images = (0.2 + 0.6 * torch.rand(count, 3, height, width, generator=generator)).double()
        leaf = images.clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(critic(leaf).r, leaf)
        analytic, numeric = [], []
        for _ in range(2):
            direction = torch.randn(images.shape, generator=generator, dtype=torch.float64)
            direction /= direction.abs().max()

            def central(eps: float) -> float:
                with torch.no_grad():
                    return float(critic(images + eps * direction).r - critic(images - eps * direction).r) / (2 * eps)

            numeric.append((4 * central(0.02) - central(0.04)) / 3)
            analytic.append(float((gradient * direction).sum()))
        scale = max(abs(a) for a in analytic)
        assert scale > 0
        errors += [abs(a - n) / scale for a, n in zip(analytic, numeric)]
    print(f"\nFD check (qwen3-vl): relative errors {', '.join(f'{e:.1e}' for e in errors)}")
    assert max(errors) < 1e-3


# --------------------------------------------------------------------------------------------
# The family registry and the view-size rule


def test_family_comes_from_the_checkpoint_config(qwen3, tiny_vlm):
    model3, processor3 = qwen3
    model25, processor25 = tiny_vlm
    assert type(model3).__name__ == "Qwen3VLForConditionalGeneration" and type(processor3).__name__ == "Qwen3VLProcessor"
    assert family_of(model3.config).name == "qwen3-vl" and family_of(model25.config).name == "qwen2.5-vl"
    assert family_of({"model_type": "qwen3_vl"}) is FAMILIES["qwen3-vl"]
    assert type(build_critic(model25, processor25, DESCRIPTION)) is VLMCritic
    assert all(issubclass(family.critic_class, QwenCritic) for family in FAMILIES.values())
    with pytest.raises(UnsupportedModelError, match="'gemma3'"):
        family_of({"model_type": "gemma3"})
    # A family's critic refuses another family's checkpoint (its patches would be cut at the wrong size).
    with pytest.raises(UnsupportedModelError, match="32-px multiple"):
        Qwen3VLCritic(model25, processor25, DESCRIPTION)
    with pytest.raises(UnsupportedModelError, match="28-px multiple"):
        VLMCritic(model3, processor3, DESCRIPTION)


def test_view_size_is_checked_against_the_critics_family(qwen3, tiny_pipeline):
    from vlm3d_ttg.guidance import GuidanceConfig
    from vlm3d_ttg.reward import VLMReward

    assert GuidanceConfig(view_size=64).validate(critic_family="qwen3-vl").view_size == 64
    assert GuidanceConfig(view_size=56).validate(critic_family="qwen2.5-vl").view_size == 56
    with pytest.raises(InvalidInputError, match="multiple of 32"):
        GuidanceConfig(view_size=56).validate(critic_family="qwen3-vl")
    with pytest.raises(InvalidInputError, match="multiple of 28"):
        GuidanceConfig(view_size=64).validate(critic_family="qwen2.5-vl")
    with pytest.raises(InvalidInputError, match=r"multiple of 28 \(qwen2.5-vl's patch × merge\) or 32"):
        GuidanceConfig(view_size=100).validate()
    # The reward checks the size against the critic it is given.
    critic = build_critic(*qwen3, DESCRIPTION)
    with pytest.raises(InvalidInputError, match="qwen3-vl critic"):
        VLMReward(tiny_pipeline, critic, GuidanceConfig(view_size=56))


# --------------------------------------------------------------------------------------------
# From the command line


def _cli(args: list, capsys) -> tuple[int, str, str]:
    from vlm3d_ttg.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_guided_tiny_run_with_qwen3_from_the_cli(qwen3_path, qwen3, tiny_pipeline, rgba_image, tmp_path, tiny_cache,
                                                 monkeypatch, capsys):
    """`generate --preset tiny --critic-family qwen3-vl`: guided by the tiny Qwen3-VL, and its final r is
    that critic's score of the mesh it wrote."""
    import trimesh

    from vlm3d_ttg.guidance import GuidanceConfig
    from vlm3d_ttg.reward import VLMReward

    monkeypatch.setenv("VLM3D_TTG_CACHE", str(tiny_cache))
    out = tmp_path / "pot.glb"
    code, _, stderr = _cli(["generate", rgba_image, "--prompt", "a small clay pot", "--preset", "tiny", "--critic-family",
                            "qwen3-vl", "--steps", "6", "--views", "2", "--view-size", "64", "--grid", "32",
                            "--octree-resolution", "64", "--sigma-window", "0.1,0.9", "--out", out, "--quiet"], capsys)
    assert code == 0, stderr
    manifest = json.loads(out.with_name(out.name + ".json").read_text())
    assert manifest["models"]["critic_family"] == "qwen3-vl" and manifest["models"]["critic"].startswith(str(qwen3_path))
    guided = [record for record in manifest["records"] if record["guided"]]
    assert guided and all(record["grad_norm"] > 0 and not record["skipped"] for record in guided)
    mesh = trimesh.load(out, force="mesh")
    guidance = GuidanceConfig(**{**manifest["guidance"], "sigma_window": tuple(manifest["guidance"]["sigma_window"])})
    critic = build_critic(*qwen3, "a small clay pot")
    with torch.no_grad():
        rescored = float(VLMReward(tiny_pipeline, critic, guidance).score_mesh(mesh.vertices, mesh.faces).r)
    assert abs(rescored - manifest["final_r"]) < 1e-4


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--preset", "tiny", "--critic-family", "qwen3-vl", "--view-size", "56"], "multiple of 32"),
        (["--preset", "tiny", "--view-size", "64"], "multiple of 28"),
        (["--preset", "tiny", "--critic-family", "qwen4"], "Unknown critic family 'qwen4'"),
        (["--preset", "realsize", "--critic-family", "qwen3-vl"], "realsize has Qwen2.5-VL-7B's shapes only"),
        (["--vlm", "{qwen3}", "--critic-family", "qwen2.5-vl"], "is a qwen3-vl checkpoint"),
        (["--vlm", "{gemma}"], "model type 'gemma3' cannot be the critic"),
    ],
    ids=["qwen3-56", "qwen2.5-64", "unknown", "realsize-qwen3", "real-mismatch", "not-a-critic"],
)
def test_bad_family_options_are_refused_before_models_load(qwen3_path, rgba_image, tmp_path, capsys, extra, message):
    gemma = tmp_path / "gemma"  # a checkpoint's config.json of another model type (no weights needed: refused first)
    gemma.mkdir()
    (gemma / "config.json").write_text(json.dumps({"model_type": "gemma3"}))
    folders = {"{qwen3}": str(qwen3_path), "{gemma}": str(gemma)}
    args = ["generate", rgba_image, "--prompt", "a pot", "--out", tmp_path / "x.glb"]
    code, _, stderr = _cli(args + [folders.get(a, a) for a in extra], capsys)
    assert code == 2 and message in " ".join(stderr.split()), stderr
    assert not (tmp_path / "x.glb").exists()


def test_score_json_lets_anyone_recompute_r_with_transformers(qwen3_path, tiny_cache, tmp_path, monkeypatch, capsys):
    """Each query's reported chat_text, yes/no ids and checkpoint give the reported r back through
    transformers' own AutoProcessor + AutoModelForImageTextToText, with nothing of this package."""
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    monkeypatch.setenv("VLM3D_TTG_CACHE", str(tiny_cache))
    files = []
    for index in range(2):
        path = tmp_path / f"view{index}.png"
        Image.fromarray((_rand(64, 64, 3, seed=20 + index) * 255).round().to(torch.uint8).numpy()).save(path)
        files.append(path)
    code, stdout, stderr = _cli(["score", *files, "--prompt", "a chair", "--preset", "tiny", "--critic-family", "qwen3-vl",
                                 "--query", "all", "--json"], capsys)
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["critic_family"] == "qwen3-vl" and len(report["results"]) == 3
    images = [torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255
              for path in files]
    for result in report["results"]:
        assert result["checkpoint"] == str(qwen3_path)
        processor = AutoProcessor.from_pretrained(result["checkpoint"])
        model = AutoModelForImageTextToText.from_pretrained(result["checkpoint"]).eval()
        inputs = processor(text=[result["chat_text"]], images=images, do_rescale=False, return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1]
        assert abs(float(logits[result["yes_id"]] - logits[result["no_id"]]) - result["r"]) < 1e-5, result["query"]
