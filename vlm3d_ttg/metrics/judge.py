"""An independent VLM judge: pairwise base vs guided, asked in both orders, win rate with a bootstrap CI.

The guiding critic is Qwen2.5-VL or Qwen3-VL; a critic that grades its own guidance would reward what it was
pushed towards. The judge is therefore from another family. Default: Gemma-3 (`google/gemma-3-12b-it`,
SigLIP vision tower + Gemma language model, trained independently of Qwen; gated on the hub, so
accept its licence before downloading). Any image-text-to-text model whose processor takes
`{"type": "image"}` chat items and whose tokenizer has single-token "A" and "B" works
(e.g. Llama-3.2-Vision, Idefics3, Pixtral); a Qwen-family judge is refused with a warning.

Protocol per item: the judge sees the two shapes' views as "Object A" then "Object B" and is
asked which is better; its decision is the sign of d = z_A − z_B, the next-token logits of the
answer letters (the log-odds of A over B restricted to the two answers). It is asked twice, with
the objects swapped. Verdict for guided:
- win  if guided is preferred in both orders,
- loss if base is preferred in both orders,
- tie  otherwise (order-inconsistent: the answer followed the position, not the object).
Win rate = (wins + ties / 2) / N, with a percentile bootstrap CI over items; the tie rate is
reported. A judge that always prefers position A yields ties only, i.e. 0.5, whatever the
candidates: position bias cancels instead of leaking into the win rate. Calibrate with base vs
base (expect ≈ 0.5) and with clear gaps (a shape against a degraded copy of itself, expect ≈ 1):
`vlm3d_ttg.metrics.calibration`.

Reference: when the item has an input image, the judge sees it first, as the picture both objects
were made from, and is asked which object matches it (and the description) better. Judging against
words alone rewards clean but wrong shapes that fit the words and not the picture.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import InvalidInputError
from ..images import to_uint8
from .bootstrap import bootstrap_ci
from .features import ImagesInput, images_to_tensor, load_pretrained_local_first

logger = logging.getLogger(__name__)

DEFAULT_JUDGE_MODEL = "google/gemma-3-12b-it"
# How each object's views reach the judge: one image per view (default), or tiled into one image.
# The default stays 'separate' until a calibration of the real judge (--calibrate-judge, both layouts)
# shows 'grid' keeps its clear-gap win rates; see the README's "Calibrating the judge".
JUDGE_LAYOUTS = ("separate", "grid")
DEFAULT_JUDGE_LAYOUT = "separate"
ANSWER_LETTERS = ("A", "B")
# Families that share weights or training lineage with the guiding critic (Qwen2.5-VL, Qwen3-VL).
CRITIC_FAMILY_MODEL_TYPES = ("qwen", "internvl")

JUDGE_QUESTION = (
    'Both objects were generated as 3D shapes for the description: "{prompt}". Each is shown as '
    "untextured renders from several viewpoints. Which object is better: does it match the description "
    "more closely, and is its 3D geometry more plausible (no broken or missing surfaces, floating pieces, "
    "duplicated parts such as multiple faces, or intersecting geometry)? "
    "Answer with only the letter A or B."
)

JUDGE_QUESTION_WITH_REFERENCE = (
    'Both objects were generated as 3D shapes from the reference image above, which shows "{prompt}". '
    "Each object is shown as untextured renders from several viewpoints. Which object is better: does it "
    "match the reference image's shape more closely, and is its 3D geometry more plausible (no broken or "
    "missing surfaces, floating pieces, duplicated parts such as multiple faces, or intersecting geometry)? "
    "Answer with only the letter A or B."
)


def reference_image(image: Any) -> torch.Tensor:
    """An input image (path or PIL, any mode) as the judge's reference: (3, H, W) in [0, 1], transparent
    background composited onto white like the renders'."""
    from PIL import Image

    from ..images import open_image

    rgba = open_image(image, what="Reference image")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    return torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1).float() / 255.0


# ---------------------------------------------------------------------------------------------
# Aggregation: small pure functions, no model.


def preference_for_first(logit_difference: float) -> int:
    """+1 if the judge prefers the object shown first (A), −1 if the second (B), 0 if exactly tied."""
    return int(np.sign(logit_difference))


def combine_orders(diff_guided_first: float, diff_base_first: float) -> float:
    """Guided's outcome from both orders: 1 win, 0 loss, 0.5 tie (order-inconsistent or undecided).

    `diff_guided_first` is z_A − z_B with guided shown as A; `diff_base_first` with base as A.
    """
    guided_preferred_when_first = preference_for_first(diff_guided_first)
    guided_preferred_when_second = -preference_for_first(diff_base_first)
    if guided_preferred_when_first > 0 and guided_preferred_when_second > 0:
        return 1.0
    if guided_preferred_when_first < 0 and guided_preferred_when_second < 0:
        return 0.0
    return 0.5


@dataclass(frozen=True)
class JudgeSummary:
    """Pairwise judge results over items: guided's win rate with CI, counts, and the position bias seen."""

    win_rate: float
    ci_low: float
    ci_high: float
    confidence: float
    wins: int
    losses: int
    ties: int
    tie_rate: float  # share of items whose two orders disagreed (or were exactly undecided)
    first_position_rate: float  # share of all 2N answers that chose position A (0.5 = no position bias)
    n_items: int

    def to_dict(self) -> dict:
        """A JSON-serialisable dict of the summary."""
        return asdict(self)


def summarize_judgements(
    diffs_guided_first: Sequence[float],
    diffs_base_first: Sequence[float],
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> JudgeSummary:
    """Aggregate per-item logit differences of both orders into guided's win rate with a bootstrap CI."""
    first = np.asarray(diffs_guided_first, dtype=np.float64)
    second = np.asarray(diffs_base_first, dtype=np.float64)
    if first.shape != second.shape or first.ndim != 1 or len(first) == 0:
        raise ValueError(f"Need two equal-length, non-empty 1-D sequences, got {first.shape} and {second.shape}")
    outcomes = np.array([combine_orders(a, b) for a, b in zip(first, second)])
    ci = bootstrap_ci(outcomes, np.mean, n_resamples=n_resamples, confidence=confidence, seed=seed)
    answers_a = np.concatenate([first, second]) > 0
    return JudgeSummary(
        win_rate=ci.value,
        ci_low=ci.low,
        ci_high=ci.high,
        confidence=confidence,
        wins=int((outcomes == 1.0).sum()),
        losses=int((outcomes == 0.0).sum()),
        ties=int((outcomes == 0.5).sum()),
        tie_rate=float((outcomes == 0.5).mean()),
        first_position_rate=float(answers_a.mean()),
        n_items=len(outcomes),
    )


# ---------------------------------------------------------------------------------------------
# The model call.


@dataclass
class VlmJudge:
    """A loaded judge: model, processor, and the token ids of the answer letters."""

    model: Any
    processor: Any
    device: torch.device
    answer_token_ids: tuple[int, int]


def answer_token_ids(tokenizer: Any, letters: Sequence[str] = ANSWER_LETTERS) -> tuple[int, int]:
    """Token ids of the answer letters, each asserted to be exactly one token."""
    ids = []
    for letter in letters:
        encoded = tokenizer.encode(letter, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(f"Answer '{letter}' is {len(encoded)} tokens ({encoded}) for this tokenizer; the judge needs one")
        ids.append(int(encoded[0]))
    if ids[0] == ids[1]:
        raise ValueError(f"Answers {letters} map to the same token id {ids[0]}")
    return ids[0], ids[1]


def load_judge(
    model: str | os.PathLike = DEFAULT_JUDGE_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    revision: str | None = None,
    allow_download: bool = False,
) -> VlmJudge:
    """Load the judge VLM and its processor from a local folder or the hub cache (bf16 on CUDA, fp32 on CPU)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..models import resolve_device, resolve_dtype

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(torch_device, dtype, half=torch.bfloat16)

    def load(model_id: str, **kwargs: Any) -> tuple[Any, Any]:
        processor = AutoProcessor.from_pretrained(model_id, **kwargs)
        return AutoModelForImageTextToText.from_pretrained(model_id, dtype=torch_dtype, **kwargs), processor

    judge_model, processor = load_pretrained_local_first(
        model, load, allow_download=allow_download, revision=revision, what="image-text-to-text model + processor"
    )
    model_type = str(getattr(judge_model.config, "model_type", ""))
    if model_type.startswith(CRITIC_FAMILY_MODEL_TYPES):
        logger.warning(
            "Judge model type '%s' is of the guiding critic's family (Qwen-VL); its verdicts are not independent.",
            model_type,
        )
    judge_model.eval().requires_grad_(False).to(torch_device)
    ids = answer_token_ids(processor.tokenizer)
    logger.info("Loaded judge %s (%s) on %s, answer ids %s", model, model_type, torch_device, ids)
    return VlmJudge(judge_model, processor, torch_device, ids)


def judge_messages(prompt: str, n_views_a: int, n_views_b: int, *, reference: bool = False) -> list[dict]:
    """The chat the judge is asked: [the reference image,] Object A's views, Object B's views, then the question."""
    content: list[dict] = []
    if reference:
        content += [{"type": "text", "text": "Reference image:"}, {"type": "image"}]
    content += [{"type": "text", "text": "Object A:"}]
    content += [{"type": "image"} for _ in range(n_views_a)]
    content += [{"type": "text", "text": "Object B:"}]
    content += [{"type": "image"} for _ in range(n_views_b)]
    question = JUDGE_QUESTION_WITH_REFERENCE if reference else JUDGE_QUESTION
    content += [{"type": "text", "text": question.format(prompt=prompt)}]
    return [{"role": "user", "content": content}]


@torch.inference_mode()
def lay_out_views(views: torch.Tensor, layout: str) -> torch.Tensor:
    """An object's views as the judge sees them: unchanged ('separate'), or tiled into one image of the
    views' size ('grid', `critic.layout.tile_views`: fewer images in the prompt, less resolution each)."""
    if layout == "separate":
        return views
    if layout == "grid":
        from ..critic.layout import tile_views

        return tile_views(views, (views.shape[-2], views.shape[-1]))[None]
    raise InvalidInputError(f"Judge layout must be one of {JUDGE_LAYOUTS}, got {layout!r}.")


def judge_logit_difference(judge: VlmJudge, prompt: str, views_a: ImagesInput, views_b: ImagesInput,
                           reference: torch.Tensor | None = None, *, layout: str = "separate") -> float:
    """z_A − z_B: the judge's next-token logit for answering "A" minus for "B" (> 0 prefers Object A).

    `reference`: the item's input image (see `reference_image`), shown first; None: text only.
    `layout`: each object's views as separate images, or tiled into one ('grid')."""
    from ..critic.queries import check_plain_text, markup_tokens

    # The prompt must stay text: a special token of the judge's tokenizer in it (an end-of-turn, an
    # image marker) would change the chat's layout; it is rejected, as for the critic (see
    # critic/queries.py for why rejected rather than escaped).
    markup = markup_tokens(judge.processor)
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidInputError(f"The judge's prompt must be a non-empty string, got {prompt!r}.")
    check_plain_text(prompt, markup, "prompt")
    images_a = lay_out_views(images_to_tensor(views_a), layout)
    images_b = lay_out_views(images_to_tensor(views_b), layout)
    messages = judge_messages(prompt, len(images_a), len(images_b), reference=reference is not None)
    check_plain_text(messages[0]["content"][-1]["text"], markup, "judge question (with the prompt filled in)")
    chat = judge.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    shown = ([reference] if reference is not None else []) + list(torch.cat([images_a, images_b]))
    pixels = [to_uint8(image) for image in shown]
    # The chat template already starts with the BOS token; don't let the tokenizer add another.
    inputs = judge.processor(text=[chat], images=[pixels], return_tensors="pt", add_special_tokens=False)
    inputs = {key: value.to(judge.device) for key, value in inputs.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(judge.model.dtype)
    logits = judge.model(**inputs, logits_to_keep=1).logits[0, -1].float()
    id_a, id_b = judge.answer_token_ids
    return float(logits[id_a] - logits[id_b])


@dataclass(frozen=True)
class PairwiseJudgement:
    """One item judged in both orders: z_A − z_B with guided first, and with base first."""

    diff_guided_first: float
    diff_base_first: float

    @property
    def outcome(self) -> float:
        """Guided's outcome: 1 win, 0 loss, 0.5 tie (see `combine_orders`)."""
        return combine_orders(self.diff_guided_first, self.diff_base_first)


def judge_pair(judge: VlmJudge, prompt: str, base_views: ImagesInput, guided_views: ImagesInput,
               reference: torch.Tensor | None = None, *, layout: str = "separate") -> PairwiseJudgement:
    """Ask the judge about base vs guided in both orders (with the item's input image as `reference`, if
    given; each object's views laid out as `layout`)."""
    return PairwiseJudgement(
        diff_guided_first=judge_logit_difference(judge, prompt, guided_views, base_views, reference, layout=layout),
        diff_base_first=judge_logit_difference(judge, prompt, base_views, guided_views, reference, layout=layout),
    )
