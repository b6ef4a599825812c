"""Backbones: the flow-matching 3D generators the guided loop can drive, by family name.

`base.Backbone` is the protocol (and its conventions). Backbones are plug-ins: `BACKBONES` holds
ours and every installed entry point of the `vlm3d_ttg.backbones` group (`vlm3d_ttg.plugins`), so a
generator is added by a package of its own, nothing edited here (docs/design.md §11 "Adding a
backbone"). Nothing here imports a generator's package until that family is asked for.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Callable

from ..errors import InvalidInputError, UnsupportedModelError
from ..plugins import BACKBONE_GROUP, entry_point_targets
from .base import (
    EXPORT_DECODERS,
    SINGLE_VIEW,
    VIEW_NAMES,
    Backbone,
    Conditioning,
    ExportDecoder,
    SamplingContext,
    backbone_checkpoint_folders,
    backbone_conditioning,
    backbone_defaults,
    backbone_variants,
    check_views,
    front_view,
)

logger = logging.getLogger(__name__)

#: Our own backbones, as pyproject.toml registers them in the `vlm3d_ttg.backbones` entry-point group
#: (also here because a source tree run through PYTHONPATH with another install's metadata sees no
#: entry points of its own).
BUILTIN_BACKBONES: dict[str, str] = {
    "hunyuan3d-2": "vlm3d_ttg.backbones.hunyuan3d2:HunyuanBackbone",
}
#: family name → its backbone class ("module:Class", imported when first used, or the class itself):
#: ours, then the installed entry points (`load_backbone_plugins`). A class takes the family's loaded
#: model(s) in its constructor and may have a static `wraps(model)` saying whether it drives a given
#: loaded model (what `as_backbone` asks).
BACKBONES: dict[str, str | Callable[..., Backbone]] = dict(BUILTIN_BACKBONES)
#: The backbone a run uses unless --backbone names another; its defaults are the options' declared ones.
DEFAULT_BACKBONE = "hunyuan3d-2"


def load_backbone_plugins() -> dict[str, str | Callable[..., Backbone]]:
    """Add every installed `vlm3d_ttg.backbones` entry point not yet in BACKBONES (by its "module:Class",
    imported when first asked for); return BACKBONES."""
    for name, target in entry_point_targets(BACKBONE_GROUP).items():
        BACKBONES.setdefault(name, target)
    return BACKBONES


def backbone_class(name: str) -> Callable[..., Backbone]:
    """The backbone class registered under `name` (InvalidInputError naming the known ones)."""
    try:
        entry = BACKBONES[name]
    except KeyError:
        raise InvalidInputError(f"Unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}.") from None
    if isinstance(entry, str):
        module, _, attribute = entry.partition(":")
        try:
            entry = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as exc:
            raise UnsupportedModelError(f"The backbone {name!r} ({entry}) cannot be loaded: {exc}") from exc
    return entry


def as_backbone(model: Any) -> Backbone:
    """`model` if it is a Backbone, else the registered backbone that wraps it (e.g. a loaded hy3dgen
    pipeline becomes a HunyuanBackbone); UnsupportedModelError when none does."""
    if isinstance(model, Backbone):
        return model
    for name in list(BACKBONES):
        try:
            cls = backbone_class(name)
        except UnsupportedModelError as exc:  # a broken plug-in must not stop the others from wrapping
            logger.warning("%s", exc)
            continue
        wraps = getattr(cls, "wraps", None)
        if wraps is not None and wraps(model):
            return cls(model)
    raise UnsupportedModelError(
        f"{type(model).__name__} is not a backbone: pass a vlm3d_ttg.backbones.Backbone or a model one of "
        f"{sorted(BACKBONES)} wraps (e.g. a hy3dgen Hunyuan3DDiTFlowMatchingPipeline)."
    )


load_backbone_plugins()

#: Cells per axis of the export grid (`Backbone.to_mesh`) unless a run says otherwise: the default backbone's.
EXPORT_RESOLUTION: int = backbone_defaults(backbone_class(DEFAULT_BACKBONE))["octree_resolution"]

__all__ = [
    "BACKBONES",
    "BUILTIN_BACKBONES",
    "DEFAULT_BACKBONE",
    "EXPORT_DECODERS",
    "EXPORT_RESOLUTION",
    "ExportDecoder",
    "Backbone",
    "Conditioning",
    "SINGLE_VIEW",
    "SamplingContext",
    "VIEW_NAMES",
    "as_backbone",
    "backbone_checkpoint_folders",
    "backbone_class",
    "backbone_conditioning",
    "backbone_defaults",
    "backbone_variants",
    "check_views",
    "front_view",
    "load_backbone_plugins",
]
