"""What the rest of the package may ask of a critic: views in, r = logit(Yes) − logit(No) out.

A critic family (Qwen2.5-VL: `vlm_critic.VLMCritic`; Qwen3-VL: `qwen3_vl.Qwen3VLCritic`; the
registry: `families`) implements `Critic`. The reward, the
CLI and the benchmark talk to this protocol only, so adding a family means one new module plus its
tiny checkpoint writer; nothing here knows how a family tokenizes, patches or positions its inputs.

What differs between families and therefore belongs to the critic, not to its callers:
- the **view-side multiple** (`view_multiple`): the side at which a view reaches the model without
  resampling (Qwen2.5-VL: 14-px patches merged 2×2 → 28; Qwen3-VL: 16-px patches merged 2×2 → 32);
- the **reference image** shown before the views, and the **layout** of the views (separate
  images or one tiled grid);
- the answer tokens, the chat template and the positions of multimodal tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import torch


@dataclass(frozen=True)
class CriticOutput:
    """What the critic says about one or several view sets.

    `r` = logit(Yes) - logit(No) (fp32; differentiable w.r.t. the images), `p_yes` = sigmoid(r) =
    P(Yes | the answer is Yes or No). Scalars for one view set, shape (B,) for a batch.
    """

    r: torch.Tensor
    p_yes: torch.Tensor
    logit_yes: torch.Tensor
    logit_no: torch.Tensor


@runtime_checkable
class Critic(Protocol):
    """A differentiable yes/no critic of one object's rendered views.

    `__call__(images)` with images (N, 3, H, W) in [0, 1] returns a `CriticOutput` whose `r` is
    differentiable w.r.t. the images (B view sets: (B, N, 3, H, W) → r of shape (B,)). The weights
    are frozen: gradients reach the pixels only.
    """

    #: A short family name recorded in manifests, e.g. "qwen2.5-vl".
    family: str
    #: Views whose side is a multiple of this reach the model unresampled (see the module docstring).
    view_multiple: int
    #: "separate" (one image per view) or "grid" (all views tiled into one image).
    layout: str
    #: The image shown before the views (3, H, W) in [0, 1], or None (the paper's reference-free critic).
    reference: torch.Tensor | None
    yes_id: int
    no_id: int

    def __call__(self, images: torch.Tensor, descriptions: Sequence[str] | None = None) -> CriticOutput:
        """r, P(yes) and the two answer logits for views (N, 3, H, W) or view sets (B, N, 3, H, W)."""
        ...

    def chat_text(self, num_images: int, description: str | None = None) -> str:
        """The exact text handed to the processor for `num_images` images (after the chat template,
        before image-token expansion), so anyone can recompute r with the family's own processor."""
        ...

    def modules(self) -> list[torch.nn.Module]:
        """The critic's weights as modules (what an idle-offload moves, what decides its dtype)."""
        ...


def check_critic_view_size(critic: Critic | type, view_size: int) -> int:
    """Return `view_size` if this critic (or critic class) sees views of that side unresampled, else raise InvalidInputError."""
    from .preprocess import check_view_size

    why = f"the side at which the {critic.family} critic sees a view without resampling"
    return check_view_size(view_size, int(critic.view_multiple), why)


__all__ = ["Critic", "CriticOutput", "check_critic_view_size"]
