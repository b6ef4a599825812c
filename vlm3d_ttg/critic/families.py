"""The critic families: name → critic class, the checkpoints' `model_type`, the transformers model class.

Everything outside `critic/` builds a critic through `build_critic` and asks a family's properties
(its view-side multiple) through `get_family`; the family of a loaded model comes from its config
(`family_of`). Families are plug-ins: `FAMILIES` holds ours and every installed entry point of the
`vlm3d_ttg.critics` group (`vlm3d_ttg.plugins`); adding one is a `CriticFamily` in a package of its
own (docs/design.md §11). An offline (tiny) checkpoint writer is optional: the writers register
themselves with the family they serve (`register_offline_writer`; ours live in `vlm3d_ttg.tiny`,
which imports this module, never the reverse).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import InvalidInputError, UnsupportedModelError
from ..plugins import CRITIC_GROUP, entry_point_targets
from ..sizes import QWEN2_5_VL_7B, CriticSizes
from .protocol import check_critic_view_size
from .qwen3_vl import Qwen3VLCritic
from .vlm_critic import VLMCritic


@dataclass(frozen=True)
class CriticFamily:
    """One critic family: how its checkpoints are recognised and loaded, and which critic runs them."""

    name: str  # what --critic-family takes and manifests record, e.g. "qwen2.5-vl"
    model_types: tuple[str, ...]  # config.json's "model_type" values of its checkpoints
    critic_class: type  # built as critic_class(model, processor, description, query, **options)
    model_class: str  # the transformers class `load_vlm` loads its checkpoints with
    default_checkpoint: str  # the hub id used when none is given
    sizes: CriticSizes | None = None  # the default checkpoint's sizes (cost model, preflight), where known

    @property
    def view_multiple(self) -> int:
        """Views whose side is a multiple of this reach the model unresampled (patch × merge)."""
        return int(self.critic_class.view_multiple)

    @property
    def tiny_folder(self) -> str:
        """The tiny checkpoint's folder name in the tiny cache."""
        return self.model_types[0]

    @property
    def offline_writer(self) -> Callable[..., Path]:
        """The writer of its offline (tiny) checkpoint, `writer(folder, seed=...)` → folder, as registered
        with `register_offline_writer`; InvalidInputError when none is."""
        writer = OFFLINE_WRITERS.get(self.name)
        if writer is None:
            raise InvalidInputError(f"The critic family {self.name!r} has no offline (tiny) checkpoint writer; "
                                    "the offline presets need one (critic.families.register_offline_writer).")
        return writer


logger = logging.getLogger(__name__)

QWEN2_5_VL = CriticFamily("qwen2.5-vl", ("qwen2_5_vl",), VLMCritic, "Qwen2_5_VLForConditionalGeneration",
                          "Qwen/Qwen2.5-VL-7B-Instruct", QWEN2_5_VL_7B)
QWEN3_VL = CriticFamily("qwen3-vl", ("qwen3_vl",), Qwen3VLCritic, "Qwen3VLForConditionalGeneration",
                        "Qwen/Qwen3-VL-8B-Instruct")
#: family name → the family: ours, then the installed `vlm3d_ttg.critics` entry points (`load_critic_plugins`).
FAMILIES: dict[str, CriticFamily] = {family.name: family for family in (QWEN2_5_VL, QWEN3_VL)}
#: family name → the writer of its offline checkpoint (registered by the writer's own module).
OFFLINE_WRITERS: dict[str, Callable[..., Path]] = {}


def register_offline_writer(family: str, writer: Callable[..., Path]) -> None:
    """Make `writer(folder, seed=...)` → folder the offline (tiny) checkpoint writer of the family `family`."""
    OFFLINE_WRITERS[family] = writer


def load_critic_plugins() -> dict[str, CriticFamily]:
    """Add every installed `vlm3d_ttg.critics` entry point (a `CriticFamily`) not yet in FAMILIES; return
    FAMILIES. A plug-in that fails to load is logged and left out (the others still work)."""
    for name, target in entry_point_targets(CRITIC_GROUP).items():
        if name in FAMILIES:
            continue
        module, _, attribute = target.partition(":")
        try:
            family = getattr(importlib.import_module(module), attribute)
        except Exception as exc:  # a broken plug-in must not take the built-in critics down with it
            logger.warning("critic plug-in %r (%s) could not be loaded: %s", name, target, exc)
            continue
        if not isinstance(family, CriticFamily) or family.name != name:
            logger.warning("critic plug-in %r (%s) is not a CriticFamily named %r; left out", name, target, name)
            continue
        FAMILIES[name] = family
    return FAMILIES


#: The paper's critic.
DEFAULT_FAMILY = "qwen2.5-vl"


def get_family(name: str) -> CriticFamily:
    """The family called `name` (e.g. "qwen3-vl"); InvalidInputError naming the known ones otherwise."""
    family = FAMILIES.get(str(name).strip().lower()) if isinstance(name, str) else None
    if family is None:
        raise InvalidInputError(f"Unknown critic family {name!r}; use one of {', '.join(FAMILIES)}.")
    return family


def family_of(config: Any) -> CriticFamily:
    """The family of a checkpoint from its config (a transformers config, or config.json as a dict).

    Raises UnsupportedModelError for a model type no family reads.
    """
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    known = ", ".join(f"{f.name} ({'/'.join(f.model_types)})" for f in FAMILIES.values())
    raise UnsupportedModelError(
        f"A checkpoint of model type {model_type!r} cannot be the critic; the critic families are {known}."
    )


def check_family_view_size(family: str | CriticFamily, view_size: int) -> int:
    """Return `view_size` if the family's critic sees views of that side unresampled, else raise InvalidInputError."""
    family = family if isinstance(family, CriticFamily) else get_family(family)
    return check_critic_view_size(family.critic_class, view_size)


def build_critic(model: Any, processor: Any, description: str, query: str = "dual", **options: Any) -> Any:
    """The critic of the loaded `model`'s family (from its config), with the options every family takes
    (`reference`, `layout`, `grid_size`, `activation_checkpointing`, ...; see `QwenCritic`)."""
    return family_of(model.config).critic_class(model, processor, description, query, **options)


load_critic_plugins()

__all__ = ["DEFAULT_FAMILY", "FAMILIES", "OFFLINE_WRITERS", "QWEN2_5_VL", "QWEN3_VL", "CriticFamily", "build_critic",
           "check_family_view_size", "family_of", "get_family", "load_critic_plugins", "register_offline_writer"]
