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

import os
from pathlib import Path
from typing import Any

from ..critic.families import register_offline_writer
from ..critic.tokens import QWEN_ADDED_TOKENS
from .qwen import _TEXT as _QWEN2_5_TEXT
from .qwen import _VISION as _QWEN2_5_VISION
from .qwen import build_tiny_tokenizer, qwen_chat_template, seeded_model, tiny_qwen_config, write_tiny_checkpoint

#: Qwen3's added (non-special) tokens beyond Qwen2.5's, in the order of the real vocabulary.
QWEN3_ADDED_TOKENS: tuple[str, ...] = QWEN_ADDED_TOKENS + ("<tool_response>", "</tool_response>", "<think>", "</think>")

#: Qwen3-VL-Instruct's chat format (see the module docstring): no default system turn.
QWEN3_VL_CHAT_TEMPLATE = qwen_chat_template(None)

# Qwen3-VL's preprocessing (patch 16, merge 2, temporal 2, mean = std = 0.5) with small pixel
# bounds: 1024 merged tokens at most, so a ~1 Mpx test image is already "huge" (the real maximum is
# 16777216 px), and 32² the least (the real minimum is 65536 px = 256², which would upsample every
# tiny test view).
TINY_MIN_PIXELS = 32 * 32
TINY_MAX_PIXELS = 32 * 32 * 1024

# The tiny Qwen2.5-VL's widths, heads and norms; what differs is Qwen3-VL's own: 16-px patches, learned
# position embeddings (an 8x8 grid, interpolated to each image's patch grid), deepstack after blocks
# 0 and 1 (into decoder layers 0 and 1), no windows; a third decoder layer (one not fed by deepstack),
# explicit head_dim, and interleaved M-RoPE.
_VISION = {key: value for key, value in _QWEN2_5_VISION.items() if key not in ("window_size", "fullatt_block_indexes",
                                                                                "tokens_per_second")}
_VISION.update(depth=3, patch_size=16, num_position_embeddings=64, deepstack_visual_indexes=[0, 1])
_TEXT = dict(_QWEN2_5_TEXT, num_hidden_layers=3, head_dim=16, rope_parameters={
    "rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [4, 2, 2], "mrope_interleaved": True})


def build_tiny_qwen3_processor(tokenizer: Any | None = None) -> Any:
    """The real `Qwen3VLProcessor` (torchvision image processor + video processor) around the tiny tokenizer."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer(
        added_tokens=QWEN3_ADDED_TOKENS, chat_template=QWEN3_VL_CHAT_TEMPLATE
    )
    constants = dict(size={"shortest_edge": TINY_MIN_PIXELS, "longest_edge": TINY_MAX_PIXELS}, patch_size=16,
                     temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return Qwen3VLProcessor(image_processor=Qwen2VLImageProcessor(**constants), tokenizer=tokenizer,
                            video_processor=Qwen3VLVideoProcessor(**constants), chat_template=QWEN3_VL_CHAT_TEMPLATE)


def tiny_qwen3_config(tokenizer: Any) -> Any:
    """The tiny `Qwen3VLConfig`, with its token ids taken from `tokenizer`."""
    from transformers import Qwen3VLConfig

    # Untied embeddings as the 8B (the 4B ties them; the critic reads the head's rows either way).
    return tiny_qwen_config(Qwen3VLConfig, tokenizer, _TEXT, _VISION, tie_word_embeddings=False)


def build_tiny_qwen3_vl(seed: int = 0) -> tuple[Any, Any]:
    """Build the tiny Qwen3-VL (model, processor) in memory; the same seed gives the same weights."""
    from transformers import Qwen3VLForConditionalGeneration

    processor = build_tiny_qwen3_processor()
    return seeded_model(Qwen3VLForConditionalGeneration, tiny_qwen3_config(processor.tokenizer), seed), processor


def write_tiny_qwen3_vl(folder: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write the tiny Qwen3-VL `save_pretrained` folder at `folder` (if missing); return its path.

    Loadable by `vlm3d_ttg.load_vlm(folder)` exactly like a real checkpoint. Same seed, same bytes;
    the folder appears atomically.
    """
    return write_tiny_checkpoint(folder, build_tiny_qwen3_vl, seed, "Qwen3-VL")


register_offline_writer("qwen3-vl", write_tiny_qwen3_vl)  # the offline checkpoint of the family it serves

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
