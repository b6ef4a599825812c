"""The VLM critic: a Qwen-VL model's yes/no log-odds r = logit(Yes) - logit(No), differentiable w.r.t. pixels.

Families (`families.FAMILIES`): Qwen2.5-VL (`VLMCritic`, the paper's) and Qwen3-VL (`Qwen3VLCritic`).
"""

from .preprocess import VIEW_SIDE_MULTIPLE, check_view_size, qwen_image_grid, qwen_pixel_values, qwen_resized_size
from .families import DEFAULT_FAMILY, FAMILIES, CriticFamily, build_critic, check_family_view_size, family_of, get_family
from .protocol import Critic, check_critic_view_size
from .qwen3_vl import Qwen3VLCritic
from .queries import CONTENT_QUERY, DUAL_QUERY, GEOMETRY_QUERY, QUERY_TEMPLATES, format_query, resolve_query
from .vlm_critic import CriticOutput, PromptInputs, QwenCritic, VLMCritic, answer_token_ids

__all__ = [
    "CONTENT_QUERY",
    "Critic",
    "CriticFamily",
    "DEFAULT_FAMILY",
    "FAMILIES",
    "Qwen3VLCritic",
    "QwenCritic",
    "build_critic",
    "check_family_view_size",
    "family_of",
    "get_family",
    "CriticOutput",
    "DUAL_QUERY",
    "GEOMETRY_QUERY",
    "PromptInputs",
    "QUERY_TEMPLATES",
    "VIEW_SIDE_MULTIPLE",
    "VLMCritic",
    "answer_token_ids",
    "check_critic_view_size",
    "check_view_size",
    "format_query",
    "qwen_image_grid",
    "qwen_pixel_values",
    "qwen_resized_size",
    "resolve_query",
]
