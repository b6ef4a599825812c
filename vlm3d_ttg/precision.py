"""The precision policy of the gradient path, and the loss-scaled gradient it needs.

Which part runs in which dtype on CUDA (the defaults of `models.resolve_dtype`), and why:

| part                                   | dtype          | why                                             |
|----------------------------------------|----------------|-------------------------------------------------|
| DiT + conditioner (sampling)           | float16        | Hunyuan3D-2's checkpoints are fp16; no gradient |
|                                        |                | flows through them in the default x0 mode       |
| guidance decode: ShapeVAE transformer, | float32        | the implicit weights −⟨g,∇s⟩/|∇s|² exceed fp16's|
| grid, vertex re-queries, implicit      | (a copy of the | 65504 and small vertex gradients underflow; the |
| weights (`decode_dtype`)               | fp16 VAE)      | ShapeVAE is small (~0.2 B parameters)          |
| renderer                               | float32        | barycentrics and silhouettes need the mantissa  |
| critic (Qwen2.5-VL)                    | bfloat16       | fp16 activations overflow in Qwen2.5-VL; bf16   |
|                                        |                | has fp32's exponent range, so its backward      |
|                                        |                | neither overflows nor underflows unscaled       |
| the two answer logits, r               | float32        | r is a difference of two large logits           |
| reward gradient, displacement, norms   | float32/64     | see `guidance.guidance_displacement`            |

A half-precision backward remains in two cases: `grad_mode="xt"` through an fp16 DiT, and a
critic the user loaded in fp16. There the gradient is computed as ∇(S·r)/S with a dynamic loss
scale S (`LossScale`): large enough that small gradients do not flush to zero in fp16, halved
(and the backward repeated) when the scaled gradient overflows. Only a gradient that is still
non-finite at S = 1 is reported as non-finite, and the step is skipped with that reason.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

#: Loss scale a half-precision backward starts from (what torch.amp's GradScaler starts from).
INITIAL_LOSS_SCALE = 2.0**16
#: Each overflow divides the scale by this factor before the backward is repeated.
BACKOFF = 2.0**4
#: After this many finite gradients in a row the scale grows again by a factor of 2.
GROWTH_INTERVAL = 4


def decode_dtype(module_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the guidance decode for a ShapeVAE stored in `module_dtype`: at least float32."""
    return torch.promote_types(module_dtype, torch.float32)


def upcast_copy(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A frozen copy of `module` in `dtype` (wider than its own), equal to building it in `dtype`.

    Weights loaded from a half-precision checkpoint upcast exactly; buffers that hy3dgen computes
    at construction do not: the ShapeVAE's Fourier frequencies (π·2^k with `include_pi`) were
    rounded when the pipeline was cast to float16, which shifts every query position's features by
    up to 4e-3 (measured on the tiny VAE: it turned the guidance gradient by cos 0.97). They are
    recomputed here.
    """
    wide = copy.deepcopy(module).to(dtype)
    wide.requires_grad_(False)
    for name, sub in wide.named_modules():
        if type(sub).__name__ == "FourierEmbedder" and isinstance(getattr(sub, "frequencies", None), torch.Tensor):
            rounded = sub.frequencies
            powers = 2.0 ** torch.arange(rounded.numel(), dtype=torch.float64)
            for candidate in (powers, powers * math.pi):  # logspace, without / with include_pi
                if torch.allclose(rounded.double().cpu(), candidate, rtol=2e-3):
                    sub.frequencies = candidate.to(device=rounded.device, dtype=torch.float32)
                    break
            else:
                logger.warning("%s: unrecognised Fourier frequencies; keeping them as upcast from %s", name, rounded.dtype)
    return wide


def is_half(dtype: torch.dtype) -> bool:
    """True for float16, the one dtype whose backward needs loss scaling (bfloat16 does not)."""
    return dtype == torch.float16


@dataclass
class LossScale:
    """A dynamic loss scale that lives across the guided steps of one run.

    `value` is 1 when nothing on the gradient path runs in float16 (then `gradient` is a plain
    autograd call).
    """

    value: float = 1.0
    enabled: bool = False
    finite_in_a_row: int = 0
    overflows: int = 0

    @classmethod
    def for_half_backward(cls, half_backward: bool) -> "LossScale":
        """A scale starting at INITIAL_LOSS_SCALE when a float16 backward is on the path, else a no-op."""
        return cls(INITIAL_LOSS_SCALE, True) if half_backward else cls()

    def gradient(self, r: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """∇_target r in float32, computed as ∇(S·r)/S; S backs off and the backward is redone on overflow.

        Returns a non-finite gradient only when it stays non-finite at S = 1 (the caller skips
        the step). The graph of `r` is kept (retain_graph) so a retry and further inner steps can
        reuse it; it is freed with `r`.
        """
        while True:
            (scaled,) = torch.autograd.grad(r * self.value if self.enabled else r, target, retain_graph=True)
            gradient = scaled.float() / self.value if self.enabled else scaled.float()
            finite = bool(torch.isfinite(gradient).all())
            if finite or not self.enabled or self.value <= 1.0:
                break
            self.overflows += 1
            self.finite_in_a_row = 0
            new_value = max(1.0, self.value / BACKOFF)
            logger.info("Loss scale %.0f overflowed in the half-precision backward; retrying at %.0f", self.value, new_value)
            self.value = new_value
        if self.enabled and finite:
            self.finite_in_a_row += 1
            if self.finite_in_a_row >= GROWTH_INTERVAL and self.value < INITIAL_LOSS_SCALE:
                self.value *= 2.0
                self.finite_in_a_row = 0
        return gradient


__all__ = ["BACKOFF", "INITIAL_LOSS_SCALE", "LossScale", "decode_dtype", "is_half", "upcast_copy"]
