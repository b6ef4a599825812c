"""The tiny Qwen2.5-VL checkpoint: real classes and formats, deterministic bytes, Qwen's prompt format."""

from __future__ import annotations

import torch

from vlm3d_ttg.tiny import folder_digest
from vlm3d_ttg.tiny.qwen import QWEN_SPECIAL_TOKENS, build_tiny_tokenizer, write_tiny_vlm

# Qwen2.5-VL-7B-Instruct's prompt for two images and a question, as its own chat template renders it.
EXPECTED_TWO_IMAGE_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|image_pad|><|vision_end|>"
    "Is this a chair?<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def _two_image_messages(text: str = "Is this a chair?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": text}]}]


def test_same_seed_same_bytes_and_atomic_write(tmp_path):
    first = write_tiny_vlm(tmp_path / "a", seed=0)
    second = write_tiny_vlm(tmp_path / "b", seed=0)
    other_seed = write_tiny_vlm(tmp_path / "c", seed=1)
    assert folder_digest(first) == folder_digest(second)
    assert folder_digest(first) != folder_digest(other_seed)
    # No staging folders left behind; a second call on an existing folder does not rewrite it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]
    before = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}
    assert write_tiny_vlm(first, seed=0) == first
    assert {p.name: p.stat().st_mtime_ns for p in first.iterdir()} == before
    files = sorted(p.name for p in first.iterdir())
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "processor_config.json", "chat_template.jinja"):
        assert name in files


def test_loads_with_real_classes_and_consistent_ids(tiny_vlm):
    from transformers import (
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2Tokenizer,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    model, processor = tiny_vlm
    assert type(model) is Qwen2_5_VLForConditionalGeneration
    assert type(processor) is Qwen2_5_VLProcessor
    assert type(processor.image_processor) is Qwen2VLImageProcessor  # the torchvision one
    assert type(processor.video_processor) is Qwen2VLVideoProcessor
    assert isinstance(processor.tokenizer, Qwen2Tokenizer)
    assert not model.training and not any(p.requires_grad for p in model.parameters())

    config, tokenizer = model.config, processor.tokenizer
    vision = config.vision_config
    assert (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size) == (14, 2, 2)
    image_processor = processor.image_processor
    assert (image_processor.patch_size, image_processor.merge_size, image_processor.temporal_patch_size) == (14, 2, 2)
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert config.vision_end_token_id == tokenizer.convert_tokens_to_ids("<|vision_end|>")
    assert processor.image_token_id == config.image_token_id
    assert config.get_text_config().vocab_size >= len(tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == config.get_text_config().vocab_size


def test_special_tokens_are_single_unsplit_tokens(tiny_vlm):
    _, processor = tiny_vlm
    tokenizer = processor.tokenizer
    ids = [tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS]
    assert ids == list(range(ids[0], ids[0] + len(QWEN_SPECIAL_TOKENS)))  # Qwen's order, consecutive
    for token, token_id in zip(QWEN_SPECIAL_TOKENS, ids):
        assert tokenizer.encode(f"a{token}b", add_special_tokens=False)[1] == token_id
    for word in ("Yes", "No"):
        assert len(tokenizer.encode(word, add_special_tokens=False)) == 1
    # Byte-level: any text round-trips, including characters the merges never saw.
    text = "Ünïcode ✓ 3D-Objekt\n\tend"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_byte_only_tokenizer_splits_the_answers():
    tokenizer = build_tiny_tokenizer(num_merges=0)
    assert len(tokenizer.encode("Yes", add_special_tokens=False)) == 3
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") != tokenizer.unk_token_id


def test_chat_template_reproduces_qwen_format(tiny_vlm):
    _, processor = tiny_vlm
    prompt = processor.apply_chat_template(_two_image_messages(), tokenize=False, add_generation_prompt=True)
    assert prompt == EXPECTED_TWO_IMAGE_PROMPT
    # The tokenizer carries the same template (as the real checkpoint's tokenizer_config does).
    assert processor.tokenizer.apply_chat_template(_two_image_messages(), tokenize=False, add_generation_prompt=True) == prompt
    # An explicit system turn replaces the default one; vision ids label pictures when asked.
    with_system = [{"role": "system", "content": "Be terse."}] + _two_image_messages()
    assert processor.apply_chat_template(with_system, tokenize=False, add_generation_prompt=True).startswith(
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
    )
    labelled = processor.apply_chat_template(_two_image_messages(), tokenize=False, add_generation_prompt=True, add_vision_id=True)
    assert "Picture 1: <|vision_start|><|image_pad|><|vision_end|>Picture 2: <|vision_start|>" in labelled
    # Without the generation prompt the conversation ends with the user turn.
    assert processor.apply_chat_template(_two_image_messages(), tokenize=False).endswith("Is this a chair?<|im_end|>\n")


def test_stock_processor_and_model_run_end_to_end(tiny_vlm):
    model, processor = tiny_vlm
    prompt = processor.apply_chat_template(_two_image_messages(), tokenize=False, add_generation_prompt=True)
    images = list(torch.rand(2, 3, 56, 84, generator=torch.Generator().manual_seed(0)))
    inputs = processor(text=[prompt], images=images, do_rescale=False, return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 6], [1, 4, 6]]
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 2 * 4 * 6 // 4
    with torch.no_grad():
        logits = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert logits.shape == (1, inputs["input_ids"].shape[1], model.config.get_text_config().vocab_size)
    assert torch.isfinite(logits).all()
    assert generated.shape == (1, inputs["input_ids"].shape[1] + 2)
