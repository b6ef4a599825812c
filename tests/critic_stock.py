"""What the critic tests compare with: transformers' own path, processor(text, images) → model(**inputs),
and the real image processor's pixel values (shared by the tests of every critic family)."""

from __future__ import annotations

from typing import Any

import torch

from vlm3d_ttg.critic import qwen_pixel_values


# Where the processor resamples, both sides call the same ATen kernel (bicubic, antialias,
# align_corners=False) on the same float32 values, and on one CPU the results are bit-identical.
# The bound allows another implementation of that kernel (a GPU, other vectorisation): float32
# bicubic resampling is itself only accurate to ~3e-5 of the [0, 1] range (against float64:
# 3.1e-5 measured), i.e. ~1.2e-4 after division by CLIP's std (~0.27; Qwen3-VL's 0.5 halves it);
# two such implementations can disagree by up to about twice that.
RESIZE_TOLERANCE = 2.5e-4
NO_RESIZE_TOLERANCE = 1e-5


def stock_inputs(processor: Any, question: str, images: list[torch.Tensor], *, with_positions: bool = True) -> tuple[str, Any]:
    """(chat text, processor output) for `images` then `question`, as transformers' documentation builds them.

    `with_positions=False` drops `mm_token_type_ids`, what a transformers-4.x-era caller passes.
    """
    messages = [{"role": "user", "content": [{"type": "image"}] * len(images) + [{"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=list(images), do_rescale=False, return_tensors="pt")
    if not with_positions:
        inputs.pop("mm_token_type_ids")
    return text, inputs


def stock_r(model: Any, processor: Any, question: str, images: list[torch.Tensor], *, with_positions: bool = True) -> float:
    """r = logit(Yes) − logit(No) at the last position of `model(**processor(...))`."""
    _, inputs = stock_inputs(processor, question, images, with_positions=with_positions)
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1]
    yes, no = (processor.tokenizer.convert_tokens_to_ids(word) for word in ("Yes", "No"))
    return float(logits[yes] - logits[no])


def pixel_value_differences(image_processor: Any, sizes: list[tuple[str, torch.Tensor, bool]], *, resize_tolerance: float,
                            exact_tolerance: float) -> list[str]:
    """Check `qwen_pixel_values` against the real `image_processor` for each (name, images, resized?) and
    return a line per size with the largest difference.

    Grids must be equal, the processor must resample exactly where `resized` says, and pixel values
    must agree within `resize_tolerance` where it resamples, `exact_tolerance` where it does not.
    """
    patch = int(image_processor.patch_size)
    report = []
    for name, images, resized in sizes:
        expected = image_processor(list(images), do_rescale=False, return_tensors="pt")
        pixel_values, grid = qwen_pixel_values(images, image_processor)
        assert torch.equal(grid, expected["image_grid_thw"]), name
        assert ((int(grid[0, 1]) * patch, int(grid[0, 2]) * patch) != tuple(images.shape[-2:])) == resized, name
        assert pixel_values.shape == expected["pixel_values"].shape and pixel_values.dtype == torch.float32, name
        diff = float((pixel_values - expected["pixel_values"]).abs().max())
        assert diff <= (resize_tolerance if resized else exact_tolerance), f"{name}: max abs diff {diff}"
        report.append(f"{name}: {diff:.2e}")
    return report
