"""The VLM critic: preprocessing equal to the real processor, r equal to the stock path, exact gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from vlm3d_ttg.critic import (
    CONTENT_QUERY,
    DUAL_QUERY,
    GEOMETRY_QUERY,
    VIEW_SIDE_MULTIPLE,
    VLMCritic,
    check_view_size,
    format_query,
    qwen_pixel_values,
    qwen_resized_size,
    resolve_query,
)
from vlm3d_ttg.errors import InvalidInputError, UnsupportedModelError

from critic_stock import NO_RESIZE_TOLERANCE, RESIZE_TOLERANCE, pixel_value_differences, stock_r

DESCRIPTION = "a wooden chair"

# The paper's dual query (§4.2) for DESCRIPTION, typed from the paper.
PAPER_DUAL_QUERY = (
    "Carefully evaluate the provided images, which show multiple views of a single 3D object. Does the "
    "underlying 3D object, considering all views together, meet all of the following criteria simultaneously?\n"
    "1. Content Match: The object corresponds to the description: a wooden chair.\n"
    "2. Geometric Quality: Based on all views combined, the object appears geometrically sound and consistent. "
    "There are no visible signs of major flaws such as multiple faces on one part (Janus-faced issue), broken "
    "surfaces, intersecting geometry, or highly unrealistic polygonal facets when considering the object from "
    "these different perspectives.\n\n"
    "Strictly respond with only 'Yes' or 'No'."
)


def _images(*shape: int, seed: int = 0, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(*shape, generator=generator)


@pytest.fixture(scope="module")
def critic(tiny_vlm):
    model, processor = tiny_vlm
    return VLMCritic(model, processor, DESCRIPTION)


def _stock_r(model, processor, question: str, images: torch.Tensor, *, with_positions: bool = True) -> float:
    """r the way transformers' documentation runs the model: processor(text, images) -> model(**inputs)."""
    return stock_r(model, processor, question, list(images), with_positions=with_positions)


# --------------------------------------------------------------------------------------------
# Queries


def test_dual_query_is_the_papers_text():
    assert format_query(DUAL_QUERY, DESCRIPTION) == PAPER_DUAL_QUERY
    assert format_query(DUAL_QUERY, f"  {DESCRIPTION}. ") == PAPER_DUAL_QUERY  # no doubled period
    assert resolve_query("dual") == DUAL_QUERY


def test_ablation_queries_keep_one_criterion():
    content = format_query(CONTENT_QUERY, DESCRIPTION)
    geometry = format_query(GEOMETRY_QUERY, DESCRIPTION)
    assert "Content Match: The object corresponds to the description: a wooden chair." in content
    assert "Geometric Quality" not in content
    assert "Geometric Quality: Based on all views combined" in geometry
    assert "Content Match" not in geometry and DESCRIPTION not in geometry
    for text in (content, geometry):
        assert text.endswith("Strictly respond with only 'Yes' or 'No'.")


def test_user_templates_are_validated():
    template = "Is this {description}? Answer Yes or No."
    assert format_query(resolve_query(template), "a mug") == "Is this a mug? Answer Yes or No."
    assert format_query("Literal {{braces}} and {description}", "x") == "Literal {braces} and x"
    for bad in ("no slot at all {{}}", "{description} and {description}", "{description} {other}", "{descr", "{0} {description}", "   "):
        with pytest.raises(InvalidInputError):
            resolve_query(bad)
    with pytest.raises(InvalidInputError, match="Unknown query"):
        resolve_query("duel")
    for empty in ("", "  ", " . "):
        with pytest.raises(InvalidInputError, match="description is empty"):
            format_query(DUAL_QUERY, empty)


# --------------------------------------------------------------------------------------------
# Preprocessing equals the real processor


def _processor_7b_constants():
    from transformers import Qwen2VLImageProcessor

    # Qwen2.5-VL-7B-Instruct's preprocessor_config.json: min_pixels 3136, max_pixels 12845056.
    return Qwen2VLImageProcessor(size={"shortest_edge": 3136, "longest_edge": 12845056})


# (name, N, H, W, resized?) — "resized" means the processor resamples (smart_resize changes the size).
SIZES_TINY = [
    ("square-448", 2, 448, 448, False),
    ("non-square-224x336", 2, 224, 336, False),
    ("non-multiple-250x333", 2, 250, 333, True),
    ("tiny-20x30-upsampled", 1, 20, 30, True),
    ("huge-1000x1200-downsampled", 1, 1000, 1200, True),  # > the tiny processor's max_pixels
    ("thin-3x500", 1, 3, 500, True),
]
SIZES_7B = [
    ("square-448", 4, 448, 448, False),
    ("512-to-504", 1, 512, 512, True),
    ("256-to-252", 1, 256, 256, True),
    ("tiny-20x30-upsampled", 1, 20, 30, True),
]


@pytest.mark.parametrize("which", ["tiny", "7b"])
def test_pixel_values_equal_real_processor(tiny_vlm, which):
    processor = tiny_vlm[1].image_processor if which == "tiny" else _processor_7b_constants()
    sizes = SIZES_TINY if which == "tiny" else SIZES_7B
    cases = [(name, _images(count, 3, height, width, seed=index), resized)
             for index, (name, count, height, width, resized) in enumerate(sizes)]
    report = pixel_value_differences(processor, cases, resize_tolerance=RESIZE_TOLERANCE, exact_tolerance=NO_RESIZE_TOLERANCE)
    for name, images, resized in cases:
        # float64 in -> float64 out, closer to exact than the processor's float32: equal to float32
        # rounding without resize, to float32 resampling accuracy (see RESIZE_TOLERANCE) with it.
        expected = processor(list(images), do_rescale=False, return_tensors="pt")
        pixel_values64, _ = qwen_pixel_values(images.double(), processor)
        assert pixel_values64.dtype == torch.float64
        diff64 = float((pixel_values64 - expected["pixel_values"].double()).abs().max())
        assert diff64 <= (RESIZE_TOLERANCE if resized else 2e-6), f"{name} (float64): max abs diff {diff64}"
    print(f"\nqwen_pixel_values vs {which} processor, max abs diff: " + "; ".join(report))


def test_view_size_rule_is_exactly_the_sides_the_processor_keeps():
    # The rule the renderer no longer knows: a side passes check_view_size iff the real 7B processor
    # would feed it to the model unresampled (above its min_pixels = 56², where smaller sides grow).
    processor = _processor_7b_constants()
    assert VIEW_SIDE_MULTIPLE == int(processor.patch_size) * int(processor.merge_size)
    for side in range(56, 1100):
        kept = qwen_resized_size(side, side, processor) == (side, side)
        try:
            accepted = check_view_size(side) == side
        except InvalidInputError as exc:
            accepted = False
            assert "multiple of 28" in str(exc)
        assert accepted == kept, side
    for bad in (0, -28, 28.0, True):
        with pytest.raises(InvalidInputError):
            check_view_size(bad)


def test_pixel_values_are_differentiable_through_resize(tiny_vlm):
    images = _images(1, 3, 50, 70).requires_grad_(True)
    pixel_values, _ = qwen_pixel_values(images, tiny_vlm[1].image_processor)
    (gradient,) = torch.autograd.grad(pixel_values.square().sum(), images)
    assert gradient.shape == images.shape and float(gradient.abs().min()) > 0


# --------------------------------------------------------------------------------------------
# The critic equals the stock path


def test_chat_text_equals_processor_template(critic, tiny_vlm):
    _, processor = tiny_vlm
    for count in (1, 4):
        messages = [{"role": "user", "content": [{"type": "image"}] * count + [{"type": "text", "text": PAPER_DUAL_QUERY}]}]
        expected = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert critic.chat_text(count) == expected
    assert critic.chat_text(2) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        + "<|vision_start|><|image_pad|><|vision_end|>" * 2
        + PAPER_DUAL_QUERY
        + "<|im_end|>\n<|im_start|>assistant\n"
    )


def test_yes_no_are_single_tokens(critic, tiny_vlm):
    tokenizer = tiny_vlm[1].tokenizer
    assert tokenizer.encode("Yes", add_special_tokens=False) == [critic.yes_id]
    assert tokenizer.encode("No", add_special_tokens=False) == [critic.no_id]
    assert critic.yes_id != critic.no_id


def test_tokenizer_without_single_token_answers_is_refused(tiny_vlm):
    from vlm3d_ttg.tiny.qwen import build_tiny_processor, build_tiny_tokenizer

    model, _ = tiny_vlm
    processor = build_tiny_processor(build_tiny_tokenizer(num_merges=0))
    with pytest.raises(UnsupportedModelError, match="splits 'Yes' into 3 tokens"):
        VLMCritic(model, processor, DESCRIPTION)


@pytest.mark.parametrize(
    "count,height,width",
    [(3, 56, 84), (2, 50, 70), (1, 448, 448)],
    ids=["3x56x84", "2x50x70-resized", "1x448"],
)
def test_r_equals_stock_path(critic, tiny_vlm, count, height, width):
    model, processor = tiny_vlm
    images = _images(count, 3, height, width, seed=count)
    output = critic(images)
    stock = _stock_r(model, processor, critic.question, images)
    assert output.r.shape == () and output.r.dtype == torch.float32
    assert abs(float(output.r) - stock) < 1e-5, (float(output.r), stock)
    assert torch.allclose(output.p_yes, torch.sigmoid(output.r))
    assert torch.allclose(output.r, output.logit_yes - output.logit_no)
    # The silent trap: without 3-D positions the same model gives another r. (If the critic passed
    # no position_ids it would match this one instead of the stock value above.)
    one_d = _stock_r(model, processor, critic.question, images, with_positions=False)
    assert abs(one_d - stock) > 1e-3


def test_every_query_variant_equals_stock_path(tiny_vlm):
    model, processor = tiny_vlm
    images = _images(2, 3, 56, 56, seed=7)
    for query in ("dual", "content", "geometry", "Is this {description}? Say Yes or No."):
        critic = VLMCritic(model, processor, DESCRIPTION, query)
        assert abs(float(critic(images).r) - _stock_r(model, processor, critic.question, images)) < 1e-5, query


def test_prompt_inputs_are_cached(critic):
    images = _images(2, 3, 56, 84)
    first = critic.prompt_inputs(2, 56, 84)
    critic(images)
    assert critic.prompt_inputs(2, 56, 84) is first
    assert critic.prompt_inputs(2, 56, 112) is not first
    assert first.position_ids.shape == (3, 1, first.sequence_length)
    # Image tokens carry 2-D (h, w) positions, so the 3 rope axes differ on them.
    assert not torch.equal(first.position_ids[1], first.position_ids[2])


def test_gradient_matches_finite_differences(tiny_vlm):
    """dr/d(images) · v against central differences along random directions v (float64 model).

    Central differences at eps and eps/2 are combined by Richardson extrapolation (error O(eps^4)).
    transformers' RMSNorm computes in float32 even for a float64 model, so r carries ~1e-8 of
    rounding noise; the tolerance is relative to the typical directional derivative.
    """
    model, processor = tiny_vlm
    model64 = copy.deepcopy(model).to(torch.float64)
    critic64 = VLMCritic(model64, processor, DESCRIPTION)
    generator = torch.Generator().manual_seed(1)
    errors = []
    for height, width in ((56, 84), (50, 70)):  # exact patch grid / bicubic resize
        images = (0.2 + 0.6 * torch.rand(2, 3, height, width, generator=generator)).double()
        leaf = images.clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(critic64(leaf).r, leaf)
        analytic, numeric = [], []
        for _ in range(3):
            direction = torch.randn(images.shape, generator=generator, dtype=torch.float64)
            direction /= direction.abs().max()  # keeps images ± eps·v inside [0, 1]

            def central(eps: float) -> float:
                with torch.no_grad():
                    return float(critic64(images + eps * direction).r - critic64(images - eps * direction).r) / (2 * eps)

            eps = 0.04
            numeric.append((4 * central(eps / 2) - central(eps)) / 3)
            analytic.append(float((gradient * direction).sum()))
        scale = max(abs(a) for a in analytic)
        errors += [abs(a - n) / scale for a, n in zip(analytic, numeric)]
    print(f"\nFD check: max relative error {max(errors):.2e} (per direction: {', '.join(f'{e:.1e}' for e in errors)})")
    assert max(errors) < 1e-3


def test_batched_view_sets_and_descriptions_equal_single_calls(critic, tiny_vlm):
    model, processor = tiny_vlm
    view_sets = _images(3, 2, 3, 56, 84, seed=3)
    descriptions = ["a chair", "a very tall wooden chair with four legs and a round seat", "a mug"]
    with torch.no_grad():
        batched = critic(view_sets, descriptions=descriptions)
        singles = [VLMCritic(model, processor, text)(views).r for text, views in zip(descriptions, view_sets)]
        same_description = critic(view_sets).r
    assert batched.r.shape == (3,)
    assert torch.allclose(batched.r, torch.stack(singles), atol=1e-5)
    assert critic.prompt_inputs(2, 56, 84, descriptions, batch=3).attention_mask is not None  # padded
    assert torch.allclose(same_description, torch.stack([critic(views).r for views in view_sets]), atol=1e-5)

    # Same views, several descriptions: the vision tower runs once, results as if repeated.
    views = view_sets[0].clone().requires_grad_(True)
    vision_calls = []
    hook = model.model.visual.register_forward_pre_hook(lambda *args: vision_calls.append(1))
    try:
        shared = critic(views, descriptions=descriptions)
    finally:
        hook.remove()
    assert len(vision_calls) == 1  # on every supported transformers (mm_encoder_outputs or its fallback)
    (shared_gradient,) = torch.autograd.grad(shared.r.sum(), views)
    repeated_views = view_sets[0].clone().requires_grad_(True)
    repeated = critic(repeated_views.expand(3, -1, -1, -1, -1), descriptions=descriptions)
    (repeated_gradient,) = torch.autograd.grad(repeated.r.sum(), repeated_views)
    assert torch.allclose(shared.r, repeated.r, atol=1e-6)
    assert torch.allclose(shared_gradient, repeated_gradient, atol=1e-6)


def test_activation_checkpointing_recomputes_and_changes_nothing(tiny_vlm):
    model, processor = tiny_vlm
    model_ckpt = copy.deepcopy(model)
    plain = VLMCritic(model, processor, DESCRIPTION)
    checkpointed = VLMCritic(model_ckpt, processor, DESCRIPTION, activation_checkpointing=True)
    calls = []
    # A pre-hook: the recompute stops early once it has what the backward needs (torch's checkpoint
    # early stop), so a hook at the end of the layer might never fire.
    model_ckpt.model.language_model.layers[0].self_attn.register_forward_pre_hook(lambda *args: calls.append(1))
    images = _images(2, 3, 56, 84, seed=5)
    leaf_plain, leaf_ckpt = images.clone().requires_grad_(True), images.clone().requires_grad_(True)
    r_plain = plain(leaf_plain).r
    r_ckpt = checkpointed(leaf_ckpt).r
    assert len(calls) == 1 and not model_ckpt.training  # back in eval mode after the call
    (gradient_plain,) = torch.autograd.grad(r_plain, leaf_plain)
    (gradient_ckpt,) = torch.autograd.grad(r_ckpt, leaf_ckpt)
    assert len(calls) == 2  # the layer ran again in the backward pass: activations were not stored
    assert r_plain.item() == pytest.approx(r_ckpt.item(), abs=1e-6)
    assert torch.allclose(gradient_plain, gradient_ckpt, atol=1e-7)


def test_any_dtype_and_bf16_model_give_fp32_r(critic, tiny_vlm):
    model, processor = tiny_vlm
    images = _images(2, 3, 56, 84, seed=9)
    reference = float(critic(images).r)
    assert float(critic(images.double()).r) == pytest.approx(reference, abs=1e-5)
    critic_bf16 = VLMCritic(copy.deepcopy(model).to(torch.bfloat16), processor, DESCRIPTION)
    leaf = images.clone().requires_grad_(True)
    output = critic_bf16(leaf)
    assert output.r.dtype == torch.float32 and output.logit_yes.dtype == torch.float32
    (gradient,) = torch.autograd.grad(output.r, leaf)
    assert gradient.dtype == torch.float32 and torch.isfinite(gradient).all() and float(gradient.abs().max()) > 0
    assert output.r.item() == pytest.approx(reference, abs=0.05)  # bf16 rounding on a random model


# --------------------------------------------------------------------------------------------
# Bad input: a clear error, before the model runs


@pytest.fixture()
def model_calls(tiny_vlm):
    model, _ = tiny_vlm
    calls = []
    handles = [
        module.register_forward_pre_hook(lambda *args: calls.append(1))
        for module in (model.model.visual, model.model.language_model)
    ]
    yield calls
    for handle in handles:
        handle.remove()


def _nan_images():
    images = _images(2, 3, 56, 56)
    images[1, 2, 3, 4] = float("nan")
    return images


BAD_INPUTS = {
    "no views (N=0)": (lambda: torch.zeros(0, 3, 56, 56), None, "N = 0"),
    "no view sets (B=0)": (lambda: torch.zeros(0, 2, 3, 56, 56), None, "B = 0"),
    "rank 3": (lambda: _images(3, 56, 56), None, r"\(N, 3, H, W\)"),
    "rank 6": (lambda: _images(1, 1, 1, 3, 8, 8), None, r"\(N, 3, H, W\)"),
    "one channel": (lambda: _images(2, 1, 56, 56), None, "3 \\(RGB\\) channels"),
    "four channels": (lambda: _images(2, 4, 56, 56), None, "3 \\(RGB\\) channels"),
    "channels last": (lambda: _images(2, 56, 56, 3), None, "3 \\(RGB\\) channels"),
    "uint8 values": (lambda: (255 * _images(2, 3, 56, 56)).to(torch.uint8), None, "floating point"),
    "0..255 floats": (lambda: 255 * _images(2, 3, 56, 56), None, r"\[0, 1\]"),
    "negative values": (lambda: _images(2, 3, 56, 56) - 0.5, None, r"\[0, 1\]"),
    "NaN": (_nan_images, None, "NaN or infinite"),
    "inf": (lambda: _images(2, 3, 56, 56).index_fill(0, torch.tensor([0]), float("inf")), None, "NaN or infinite"),
    "aspect ratio > 200": (lambda: _images(1, 3, 2, 450), None, "aspect ratio"),
    "not a tensor": (lambda: [[0.5]], None, "torch.Tensor"),
    "empty description in batch": (lambda: _images(2, 3, 56, 56), ["a chair", " "], "description is empty"),
    "descriptions vs view sets": (lambda: _images(3, 2, 3, 56, 56), ["a", "b"], "2 descriptions for 3 view sets"),
    "description as a string": (lambda: _images(2, 3, 56, 56), "a chair", "list of strings"),
    # The description's own length bound (critic/queries.py) comes before the context check.
    "description over the 1,000-character bound": (lambda: _images(1, 3, 56, 56), ["chair " * 5000],
                                                    "characters long; at most 1,000"),
    "too many image tokens": (lambda: torch.full((5, 3, 896, 896), 0.5), None, "longer than the model's context"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_before_the_model_runs(critic, model_calls, case):
    make_images, descriptions, message = BAD_INPUTS[case]
    with pytest.raises(InvalidInputError, match=message):
        critic(make_images(), descriptions=descriptions)
    assert model_calls == []


def test_bad_construction_is_refused(tiny_vlm):
    model, processor = tiny_vlm
    with pytest.raises(InvalidInputError, match="description is empty"):
        VLMCritic(model, processor, "   ")
    with pytest.raises(InvalidInputError, match="exactly once"):
        VLMCritic(model, processor, DESCRIPTION, "no slot {here}")
    with pytest.raises(InvalidInputError, match="Unknown query"):
        VLMCritic(model, processor, DESCRIPTION, "dualx")


def test_values_a_hair_outside_the_range_are_accepted(critic):
    images = _images(1, 3, 56, 56)
    images[0, 0, 0, 0] = 1.0 + 1e-6  # renderer round-off
    assert torch.isfinite(critic(images).r)
