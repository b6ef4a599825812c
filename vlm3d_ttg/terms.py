"""Reward terms: each a differentiable scalar of what the renderer produced; guidance follows their weighted sum.

Terms compose like losses in a training loop (docs/design.md §3): the reward decodes the latent to
a surface once, renders it through each camera set the terms ask for (once per distinct set), and
hands every term its renders:

    r = Σ_k  w_k · term_k(views_k)

The gradient of r is what the sampler follows. Each term also returns named parts for the record
(the VLM term's P(yes), a silhouette term's IoU, ...). The sampler, search and manifest see only
r and the per-term values, never a term itself.

A term of your own (Python API):

    class Roundness:                       # prefers shapes that cover much of each view
        name = "coverage"
        def cameras(self, orbit):          # look through the critic's (jittered) orbit cameras
            return orbit
        def __call__(self, views):
            coverage = views.masks.mean()  # (N, 1, H, W) coverage, differentiable in the latent
            return TermValue(coverage, {"coverage": float(coverage.detach())})
        def modules(self):                 # no model weights of its own
            return []

    reward = VLMReward.from_config(backbone, critic, config, terms=[(0.5, Roundness())])

A term may also define `observe(vertices, faces)`: the reward calls it with the detached mesh before
asking for the term's cameras, at every evaluation (the silhouette term fits its camera to the first
mesh it is shown, `vlm3d_ttg.silhouette`). It is optional and not part of `RewardTerm`'s check. A
weight-0 term with `observe` is kept as an observer: it sees every shape without entering r. Two more
optional hooks: `end_of_step(step, sigma)` (a sampler step ended) and `measure_final(vertices, faces,
frame)` (what it measures of the exported mesh besides r, `VLMReward.measure_mesh`).

Cameras cross this boundary as plain 4 × 4 matrices (`Cameras.view`, world → camera, and
`Cameras.projection`, OpenGL clip convention), so a term can re-project anything with numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from .critic.protocol import Critic
from .errors import SkippedStepError
from .render import Cameras


@dataclass(frozen=True)
class Views:
    """Renders of the current shape through one camera set: what a term looks at.

    `images` (N, 3, H, W) in [0, 1] and `masks` (N, 1, H, W) coverage in [0, 1] (fractional at
    antialiased silhouette pixels) are both differentiable w.r.t. the latent being guided.
    """

    images: torch.Tensor
    masks: torch.Tensor
    cameras: Cameras


@dataclass
class TermValue:
    """One term's verdict: a differentiable scalar (higher is better) and named parts for the record."""

    value: torch.Tensor
    parts: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class RewardTerm(Protocol):
    """One differentiable reward term; see the module docstring for an example."""

    #: Unique within a reward: the key of this term's value in step records and the manifest.
    name: str

    def cameras(self, orbit: Cameras) -> Cameras:
        """The cameras this term looks through: `orbit` itself (the critic's views at this evaluation,
        jittered during guidance and fixed for final scores) or a camera set of its own."""
        ...

    def __call__(self, views: Views) -> TermValue:
        """The term's value for these renders (a scalar, differentiable w.r.t. the images and masks)."""
        ...

    def modules(self) -> list[torch.nn.Module]:
        """Model weights this term runs (for idle offload and the precision policy); [] for none."""
        ...


class CriticTerm:
    """The VLM critic as a reward term: r = logit(Yes) − logit(No) of the orbit views (the paper's reward)."""

    name = "vlm"

    def __init__(self, critic: Critic):
        self.critic = critic

    def cameras(self, orbit: Cameras) -> Cameras:
        """The critic judges the orbit views."""
        return orbit

    def __call__(self, views: Views) -> TermValue:
        """r of the views; a non-finite answer skips the step (`non_finite_critic`)."""
        output = self.critic(views.images)
        r = output.r.reshape(())
        if not math.isfinite(float(r.detach())):
            raise SkippedStepError("non_finite_critic", f"The critic's log-odds r is {float(r.detach())}.")
        return TermValue(r, {"p_yes": float(output.p_yes.detach())})

    def modules(self) -> list[torch.nn.Module]:
        """The critic's model."""
        return self.critic.modules()


def weighted_sum(weights_and_values: list[tuple[float, torch.Tensor]]) -> torch.Tensor:
    """Σ w_k · v_k. A weight of exactly 1 is not multiplied, so a reward of one unit-weight term is that
    term's value bit for bit (the default VLM-only reward equals the critic's r)."""
    total: torch.Tensor | None = None
    for weight, value in weights_and_values:
        weighted = value if weight == 1.0 else weight * value
        total = weighted if total is None else total + weighted
    if total is None:
        raise ValueError("weighted_sum of no terms")
    return total


__all__ = ["CriticTerm", "RewardTerm", "TermValue", "Views", "weighted_sum"]
