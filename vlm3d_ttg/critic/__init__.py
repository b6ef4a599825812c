"""The VLM critic: Qwen2.5-VL's yes/no log-odds r = logit(Yes) - logit(No), differentiable w.r.t. pixels."""

from .preprocess import VIEW_SIDE_MULTIPLE, check_view_size, qwen_image_grid, qwen_pixel_values, qwen_resized_size
from .protocol import Critic, check_critic_view_size
from .queries import CONTENT_QUERY, DUAL_QUERY, GEOMETRY_QUERY, QUERY_TEMPLATES, format_query, resolve_query
from .vlm_critic import CriticOutput, PromptInputs, VLMCritic, answer_token_ids

__all__ = [
    "CONTENT_QUERY",
    "Critic",
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
