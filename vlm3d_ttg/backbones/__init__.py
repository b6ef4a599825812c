"""Backbones: the flow-matching 3D generators the guided loop can drive, by family name.

`base.Backbone` is the protocol (and its conventions); each family is one file here that
implements it, plus one line in `BACKBONES`. Adding a generator: docs/design.md "Adding a backbone".
Nothing here imports a generator's package until that family is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from ..errors import InvalidInputError, UnsupportedModelError
from .base import (
    EXPORT_RESOLUTION,
    SINGLE_VIEW,
    TINY_EXPORT_RESOLUTION,
    VIEW_NAMES,
    Backbone,
    SamplingContext,
    check_views,
    front_view,
)

#: family name → its backbone class ("module:Class", imported when first used, or the class itself).
#: A class takes the family's loaded model(s) in its constructor and has a static `wraps(model)`
#: saying whether it drives a given loaded model (what `as_backbone` asks).
BACKBONES: dict[str, str | Callable[..., Backbone]] = {
    "hunyuan3d-2": "vlm3d_ttg.backbones.hunyuan3d2:HunyuanBackbone",
}


def backbone_class(name: str) -> Callable[..., Backbone]:
    """The backbone class registered under `name` (InvalidInputError naming the known ones)."""
    try:
        entry = BACKBONES[name]
    except KeyError:
        raise InvalidInputError(f"Unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}.") from None
    if isinstance(entry, str):
        module, _, attribute = entry.partition(":")
        entry = getattr(importlib.import_module(module), attribute)
    return entry


def as_backbone(model: Any) -> Backbone:
    """`model` if it is a Backbone, else the registered backbone that wraps it (e.g. a loaded hy3dgen
    pipeline becomes a HunyuanBackbone); UnsupportedModelError when none does."""
    if isinstance(model, Backbone):
        return model
    for name in BACKBONES:
        cls = backbone_class(name)
        wraps = getattr(cls, "wraps", None)
        if wraps is not None and wraps(model):
            return cls(model)
    raise UnsupportedModelError(
        f"{type(model).__name__} is not a backbone: pass a vlm3d_ttg.backbones.Backbone or a model one of "
        f"{sorted(BACKBONES)} wraps (e.g. a hy3dgen Hunyuan3DDiTFlowMatchingPipeline)."
    )


__all__ = [
    "BACKBONES",
    "EXPORT_RESOLUTION",
    "TINY_EXPORT_RESOLUTION",
    "Backbone",
    "SINGLE_VIEW",
    "SamplingContext",
    "VIEW_NAMES",
    "as_backbone",
    "backbone_class",
    "check_views",
    "front_view",
]
