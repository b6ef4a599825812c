"""The miniature critics: transformers' Qwen2.5-VL at miniature sizes, with the tiny models' tokenizer recipe.

Everything but the sizes is the tiny critic's (`tiny.qwen`): `Qwen2_5_VLForConditionalGeneration`,
a byte-level BPE `Qwen2Tokenizer` whose merges are learned from the critic's queries, the chat words
and — here — the miniature world's descriptions, Qwen2.5-VL's chat template and the real
`Qwen2_5_VLProcessor`. Two sizes: the guide (used for guidance) and the judge (another seed and
size, trained the same way, never used for guidance).
"""

from __future__ import annotations

from typing import Any

from .shapes import all_descriptions

#: The critic's view side in the mini world (a multiple of 28: the views reach the model unresampled).
CRITIC_VIEW_SIZE = 112

_SIZES: dict[str, dict[str, dict]] = {
    "guide": {
        "vision": dict(depth=4, hidden_size=64, intermediate_size=128, num_heads=4, in_channels=3, patch_size=14,
                       spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2, window_size=56,
                       fullatt_block_indexes=[1, 3]),
        "text": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-6,
                     rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]}),
    },
    "judge": {
        "vision": dict(depth=2, hidden_size=48, intermediate_size=96, num_heads=2, in_channels=3, patch_size=14,
                       spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2, window_size=56,
                       fullatt_block_indexes=[1]),
        "text": dict(hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-6,
                     rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 5, 5]}),
    },
}
CRITIC_SIZES = tuple(_SIZES)


def mini_tokenizer_corpus() -> tuple[tuple[str, int], ...]:
    """Extra text the mini tokenizer's merges are learned from: every description and the questions around it."""
    from ..critic.queries import DUAL_QUERY

    descriptions = all_descriptions()
    return ((" ".join(descriptions), 20), (DUAL_QUERY, 4))


def build_mini_critic(size: str = "guide", seed: int = 0) -> tuple[Any, Any]:
    """An untrained miniature critic (model, processor) of `size` ('guide' or 'judge') with seeded weights."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from ..errors import InvalidInputError
    from ..tiny.qwen import build_tiny_processor, build_tiny_tokenizer, seeded_model, tiny_qwen_config

    if size not in _SIZES:
        raise InvalidInputError(f"Unknown mini critic size {size!r}; use one of {CRITIC_SIZES}.")
    tokenizer = build_tiny_tokenizer(900, extra_corpus=mini_tokenizer_corpus())
    processor = build_tiny_processor(tokenizer)
    config = tiny_qwen_config(Qwen2_5_VLConfig, tokenizer, _SIZES[size]["text"], _SIZES[size]["vision"],
                              tie_word_embeddings=False)
    return seeded_model(Qwen2_5_VLForConditionalGeneration, config, seed), processor
