"""The critic families: name → critic class, the checkpoints' `model_type`, the transformers model class, the tiny writer.

Everything outside `critic/` builds a critic through `build_critic` and asks a family's properties
(its view-side multiple) through `get_family`; the family of a loaded model comes from its config
(`family_of`). Adding a family is one module with its `QwenCritic` subclass (or any `Critic`), a
tiny checkpoint writer in `tiny/`, and one line in `FAMILIES`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import InvalidInputError, UnsupportedModelError
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
    tiny_writer: Callable[..., Path]  # writes the tiny offline checkpoint: tiny_writer(folder, seed=...)
    default_checkpoint: str  # the hub id used when none is given

    @property
    def view_multiple(self) -> int:
        """Views whose side is a multiple of this reach the model unresampled (patch × merge)."""
        return int(self.critic_class.view_multiple)

    @property
    def tiny_folder(self) -> str:
        """The tiny checkpoint's folder name in the tiny cache."""
        return self.model_types[0]


def _tiny_qwen2_5_vl(folder: str | os.PathLike, *, seed: int = 0) -> Path:
    from ..tiny.qwen import write_tiny_vlm

    return write_tiny_vlm(folder, seed=seed)


def _tiny_qwen3_vl(folder: str | os.PathLike, *, seed: int = 0) -> Path:
    from ..tiny.qwen3 import write_tiny_qwen3_vl

    return write_tiny_qwen3_vl(folder, seed=seed)


FAMILIES: dict[str, CriticFamily] = {
    family.name: family
    for family in (
        CriticFamily("qwen2.5-vl", ("qwen2_5_vl",), VLMCritic, "Qwen2_5_VLForConditionalGeneration", _tiny_qwen2_5_vl,
                     "Qwen/Qwen2.5-VL-7B-Instruct"),
        CriticFamily("qwen3-vl", ("qwen3_vl",), Qwen3VLCritic, "Qwen3VLForConditionalGeneration", _tiny_qwen3_vl,
                     "Qwen/Qwen3-VL-8B-Instruct"),
    )
}
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


__all__ = ["DEFAULT_FAMILY", "FAMILIES", "CriticFamily", "build_critic", "check_family_view_size", "family_of", "get_family"]
