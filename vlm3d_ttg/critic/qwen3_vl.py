"""Qwen3-VL as the critic: the `QwenCritic` base plus what Qwen3-VL does differently.

Read from transformers' `models/qwen3_vl/` (5.25) before writing this:
- **Pixels**: transformers maps qwen3_vl to the same `Qwen2VLImageProcessor` as Qwen2.5-VL, with
  Qwen3-VL's constants: 16-px patches merged 2×2 (sides are smart-resized to multiples of 32),
  temporal patch 2, mean = std = 0.5. `preprocess.qwen_pixel_values` reads every constant from
  the processor, so the same differentiable twin serves (tested equal to the processor).
- **Positions**: the model's own `get_rope_index` (cached with the prompt, as for Qwen2.5-VL) — a
  different rule: an image's merged patches take (t, h, w) = (s, s + row, s + column) from the
  current position s, and the text after it continues at s + max(rows, columns) (Qwen2.5-VL
  continues past that by one more). The decoder applies them as interleaved M-RoPE.
- **Deepstack**: the vision tower also returns the features after some of its blocks (each through
  its own merger); the model adds them to the image tokens' hidden states in the first decoder
  layers. When the critic hands precomputed features back (the reference image's cached ones, or
  one view set for several descriptions), those per-layer features must travel with the merged
  ones, in the same image order: `_image_features` / `_encoder_outputs` below.
- The vision tower attends within each image (no windows), so the reference's features do not
  depend on the views, as the base assumes.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .vlm_critic import ImageFeatures, QwenCritic

#: 16-px patches merged 2×2: a view whose side is a multiple of 32 reaches Qwen3-VL unresampled.
QWEN3_VL_VIEW_MULTIPLE = 32


class Qwen3VLCritic(QwenCritic):
    """Qwen3-VL as a differentiable yes/no critic; built and called like `VLMCritic` (see `QwenCritic`)."""

    family = "qwen3-vl"
    view_multiple = QWEN3_VL_VIEW_MULTIPLE

    def _image_features(self, pixel_values: torch.Tensor, grid: torch.Tensor) -> list[ImageFeatures]:
        """Per image: its merged features, then its features from each deepstack layer."""
        output = self.model.model.get_image_features(pixel_values, grid.to(pixel_values.device), return_dict=True)
        layers = output.deepstack_features or []
        return [(merged, *(layer[index] for layer in layers)) for index, merged in enumerate(output.pooler_output)]

    def _encoder_outputs(self, features: Sequence[ImageFeatures]) -> Any:
        """The vision output the model takes back: merged features and each deepstack layer's, per image in prompt order."""
        from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

        layers = len(features[0]) - 1
        return BaseModelOutputWithDeepstackFeatures(
            pooler_output=tuple(image[0] for image in features),
            deepstack_features=[tuple(image[1 + layer] for image in features) for layer in range(layers)],
        )


__all__ = ["QWEN3_VL_VIEW_MULTIPLE", "Qwen3VLCritic"]
