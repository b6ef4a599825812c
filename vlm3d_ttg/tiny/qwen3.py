"""A tiny Qwen3-VL checkpoint in transformers' real `save_pretrained` format.

Everything is the real thing except the sizes and the weights:
- `Qwen3VLForConditionalGeneration` with a tiny `Qwen3VLConfig`: a vision tower of 16-px patches
  merged 2×2 (temporal patch 2) with learned position embeddings interpolated to each image's grid,
  2-D axial rope, and **deepstack** mergers after two of its blocks whose features are added to the
  first decoder layers' image tokens; a decoder with grouped KV heads, q/k norms and interleaved
  3-D multimodal rope (`mrope_interleaved`, sections [4, 2, 2] of 8 frequencies like the real
  [24, 20, 20] of 64). Random weights from a fixed seed.
- The tiny byte-level BPE tokenizer of `tiny.qwen` (the same merges, so "Yes"/"No" are single
  tokens as in the real vocabulary) with Qwen3's added tokens after Qwen's special ones
  (<tool_response>, </tool_response>, <think>, </think>).
- A chat template producing Qwen3-VL-Instruct's prompt format, written for this project. Assumed
  from the Instruct checkpoints' template: unlike Qwen2.5-VL there is **no default system turn**,
  images are <|vision_start|><|image_pad|><|vision_end|>, and the generation prompt is
  "<|im_start|>assistant\\n" with no "<think>" block (the Thinking variants open one; the critic
  reads the first answer token, so a Thinking checkpoint is not a good critic).
- The real `Qwen3VLProcessor` with the real `Qwen2VLImageProcessor` (torchvision; what transformers
  maps qwen3_vl to) and `Qwen3VLVideoProcessor`, with Qwen3-VL's constants (patch 16, merge 2,
  mean = std = 0.5) except smaller pixel bounds so that "huge image" paths run on small images.

The answers such a model gives are meaningless; it exists to run the real code paths offline.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..io import write_directory_atomic
from .qwen import QWEN_ADDED_TOKENS, build_tiny_tokenizer

logger = logging.getLogger(__name__)

#: Qwen3's added (non-special) tokens beyond Qwen2.5's, in the order of the real vocabulary.
QWEN3_ADDED_TOKENS: tuple[str, ...] = QWEN_ADDED_TOKENS + ("<tool_response>", "</tool_response>", "<think>", "</think>")

# Qwen3-VL-Instruct's chat format (see the module docstring), written for this project: a system
# turn only when the conversation has one; images and videos as vision_start/pad/end; turns closed
# by <|im_end|> and a newline; the generation prompt opens the assistant turn.
QWEN3_VL_CHAT_TEMPLATE = (
    "{% set counts = namespace(image=0, video=0) %}"
    "{% for message in messages %}"
    "<|im_start|>{{ message.role }}\n"
    "{% if message.content is string %}"
    "{{ message.content }}"
    "{% else %}"
    "{% for part in message.content %}"
    "{% if part.type == 'image' or 'image' in part or 'image_url' in part %}"
    "{% set counts.image = counts.image + 1 %}"
    "{% if add_vision_id %}Picture {{ counts.image }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part.type == 'video' or 'video' in part %}"
    "{% set counts.video = counts.video + 1 %}"
    "{% if add_vision_id %}Video {{ counts.video }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}"
    "{{ part.text }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)

# Qwen3-VL's preprocessing (patch 16, merge 2, temporal 2, mean = std = 0.5) with small pixel
# bounds: 1024 merged tokens at most, so a ~1 Mpx test image is already "huge" (the real maximum is
# 16777216 px), and 32² the least (the real minimum is 65536 px = 256², which would upsample every
# tiny test view).
TINY_MIN_PIXELS = 32 * 32
TINY_MAX_PIXELS = 32 * 32 * 1024

_VISION = dict(
    depth=3,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    in_channels=3,
    patch_size=16,
    spatial_merge_size=2,
    temporal_patch_size=2,
    num_position_embeddings=64,  # an 8x8 learned grid, interpolated to each image's patch grid
    deepstack_visual_indexes=[0, 1],  # features after blocks 0 and 1 go to decoder layers 0 and 1
)
_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=4096,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [4, 2, 2], "mrope_interleaved": True},
)
_INITIALIZER_RANGE = 0.05  # larger than the real 0.02 so that r reacts visibly to the pixels


def build_tiny_qwen3_processor(tokenizer: Any | None = None) -> Any:
    """The real `Qwen3VLProcessor` (torchvision image processor + video processor) around the tiny tokenizer."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer(
        added_tokens=QWEN3_ADDED_TOKENS, chat_template=QWEN3_VL_CHAT_TEMPLATE
    )
    size = {"shortest_edge": TINY_MIN_PIXELS, "longest_edge": TINY_MAX_PIXELS}
    half = [0.5, 0.5, 0.5]
    image_processor = Qwen2VLImageProcessor(
        size=size, patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=half, image_std=half
    )
    video_processor = Qwen3VLVideoProcessor(
        size=size, patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=half, image_std=half
    )
    return Qwen3VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor, chat_template=QWEN3_VL_CHAT_TEMPLATE
    )


def tiny_qwen3_config(tokenizer: Any) -> Any:
    """The tiny `Qwen3VLConfig`, with its token ids taken from `tokenizer`."""
    from transformers import Qwen3VLConfig

    def token_id(token: str) -> int:
        return int(tokenizer.convert_tokens_to_ids(token))

    vocab_size = (len(tokenizer) + 63) // 64 * 64  # rounded up like the real 151936, so some rows are unused
    text = dict(
        _TEXT,
        vocab_size=vocab_size,
        bos_token_id=token_id("<|endoftext|>"),
        eos_token_id=token_id("<|im_end|>"),
        pad_token_id=token_id("<|endoftext|>"),
        initializer_range=_INITIALIZER_RANGE,
    )
    vision = dict(_VISION, out_hidden_size=_TEXT["hidden_size"], initializer_range=_INITIALIZER_RANGE)
    return Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        tie_word_embeddings=False,  # as the 8B (the 4B ties them; the critic reads the head's rows either way)
    )


def build_tiny_qwen3_vl(seed: int = 0) -> tuple[Any, Any]:
    """Build the tiny Qwen3-VL (model, processor) in memory; the same seed gives the same weights."""
    from transformers import Qwen3VLForConditionalGeneration

    processor = build_tiny_qwen3_processor()
    config = tiny_qwen3_config(processor.tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(config)
    model.eval()
    return model, processor


def write_tiny_qwen3_vl(folder: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write the tiny Qwen3-VL `save_pretrained` folder at `folder` (if missing); return its path.

    Loadable by `vlm3d_ttg.load_vlm(folder)` exactly like a real checkpoint. Same seed, same bytes;
    the folder appears atomically.
    """

    def write(staging: Path) -> None:
        model, processor = build_tiny_qwen3_vl(seed)
        model.save_pretrained(staging)
        processor.save_pretrained(staging)

    target = write_directory_atomic(folder, write)
    logger.info("Wrote tiny Qwen3-VL (seed %d) to %s", seed, target)
    return target


__all__ = [
    "QWEN3_ADDED_TOKENS",
    "QWEN3_VL_CHAT_TEMPLATE",
    "TINY_MAX_PIXELS",
    "TINY_MIN_PIXELS",
    "build_tiny_qwen3_processor",
    "build_tiny_qwen3_vl",
    "tiny_qwen3_config",
    "write_tiny_qwen3_vl",
]
