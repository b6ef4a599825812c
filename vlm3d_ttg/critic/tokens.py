"""Token facts of the Qwen-VL families that the critic needs: the strings their tokenizers read as structure.

The prompt checks (`critic.queries.qwen_markup_tokens`) refuse user text that contains any of them, and
the offline tiny checkpoints (`vlm3d_ttg.tiny`) build their vocabularies from the same lists, so the
two can never disagree. The lists live here, with the critic, because the critic is what needs them
in production; the tiny writers import them from here (never the reverse).
"""

from __future__ import annotations

# Qwen2.5-VL's special tokens, in the order of the real vocabulary (there they start at id 151643).
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Added (non-special) tokens of the real vocabulary, kept so that tool-call prompts tokenize alike.
QWEN_ADDED_TOKENS: tuple[str, ...] = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)

__all__ = ["QWEN_ADDED_TOKENS", "QWEN_SPECIAL_TOKENS"]
