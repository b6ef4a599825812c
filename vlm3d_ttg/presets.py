"""Presets: which checkpoints a run loads, each one record.

    PRESETS["tiny"].offline                  # True: it writes its own checkpoints, needs no hub
    get_preset("tiny").export_resolution     # its export grid unless --octree-resolution says otherwise
    offline_checkpoints(preset).critic(cache_dir, family="qwen2.5-vl", depth=1)   # its critic's folder

- `real`: the real models (the hub, $HY3DGEN_MODELS or local folders), as --shape-model / --vlm name them.
- `tiny`: tiny offline checkpoints in the real formats (meaningless shapes; exercises the pipeline).
- `realsize`: offline random-weight checkpoints of the real models' sizes, --realsize-depth blocks of each kind.

An offline preset's checkpoints are written by the module its record names (`writers`), which
registers them here on import (`register_offline_checkpoints`): the library never imports those
writers itself. Adding a preset is one entry in PRESETS (plus its writers, for an offline one).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import InvalidInputError


@dataclass(frozen=True)
class Preset:
    """One preset: where its models come from and the defaults that follow from them."""

    name: str
    offline: bool  # writes its own checkpoints (no hub, no --shape-model / --vlm / --text-to-image)
    help: str  # one line for --preset's help
    shape_variants: bool  # --shape-model picks a variant (hy3dgen's -fast/-turbo/-mv); False: one fixed shape model
    critic_families: tuple[str, ...] | None = None  # the critic families it can bring; None: any (real: --vlm's own)
    critic_note: str = ""  # why only `critic_families` (said when another is asked for)
    writers: str | None = None  # the module that registers its offline checkpoints (offline presets)
    label: str = ""  # how a loaded checkpoint's name is marked ("tiny"; "{depth}": the realsize depth)
    export_resolution: int | None = None  # the export grid unless --octree-resolution says otherwise (None: the backbone's)

    def describe(self, *, depth: int) -> str:
        """The mark added to a checkpoint's name in the manifest ('' for the real preset)."""
        return f" ({self.label.format(depth=depth)})" if self.label else ""


@dataclass(frozen=True)
class ShapeCheckpoint:
    """Where an offline preset's shape model lives, in the terms `models.load_shape_pipeline` takes."""

    models_dir: Path  # the $HY3DGEN_MODELS root
    repo_id: str
    subfolder: str


@dataclass(frozen=True)
class OfflineCheckpoints:
    """How an offline preset writes its checkpoints (each written once, then loaded from its folder)."""

    folder: Callable[[str | os.PathLike | None], Path]  # cache_dir → the root all of them live under
    shape: Callable[..., ShapeCheckpoint]  # (cache_dir, *, subfolder, depth) → the shape model
    critic: Callable[..., Path]  # (cache_dir, *, family, depth) → the critic's save_pretrained folder


#: Every preset by name (the order --preset lists them in).
PRESETS: dict[str, Preset] = {preset.name: preset for preset in (
    Preset("real", offline=False, help="the real models (hub or local), as --shape-model and --vlm name them",
           shape_variants=True),
    Preset("tiny", offline=True, help="offline tiny checkpoints (meaningless shapes, exercises the pipeline)",
           shape_variants=True, writers="vlm3d_ttg.tiny", label="tiny", export_resolution=128),
    Preset("realsize", offline=True, help="offline random-weight checkpoints of the real models' sizes, "
                                          "--realsize-depth blocks of each kind",
           shape_variants=False, critic_families=("qwen2.5-vl",),
           critic_note="Qwen2.5-VL-7B's shapes only", writers="vlm3d_ttg.tiny.realsize",
           label="realsize, depth {depth}"),
)}

_OFFLINE: dict[str, OfflineCheckpoints] = {}


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the offline presets write their checkpoints: `cache_dir`, else $VLM3D_TTG_CACHE, else ~/.cache/vlm3d-ttg."""
    base = cache_dir if cache_dir is not None else os.environ.get("VLM3D_TTG_CACHE", "~/.cache/vlm3d-ttg")
    return Path(os.path.expanduser(str(base)))


def get_preset(name: str | Preset) -> Preset:
    """The preset called `name` (a Preset passes through); InvalidInputError naming the choices otherwise."""
    if isinstance(name, Preset):
        return name
    if name not in PRESETS:
        raise InvalidInputError(f"Unknown preset {name!r}; use one of {', '.join(PRESETS)}.")
    return PRESETS[name]


def register_offline_checkpoints(preset: str, checkpoints: OfflineCheckpoints) -> None:
    """Register how offline `preset` writes its checkpoints (called by its writers' module on import)."""
    _OFFLINE[preset] = checkpoints


def offline_checkpoints(preset: str | Preset) -> OfflineCheckpoints:
    """The checkpoint writers of offline `preset`, importing its writers' module (which registers them)."""
    record = get_preset(preset)
    if not record.offline or record.writers is None:
        raise InvalidInputError(f"--preset {record.name} loads the real models; it writes no offline checkpoints.")
    if record.name not in _OFFLINE:
        importlib.import_module(record.writers)  # registers them (a module the library does not import itself)
    return _OFFLINE[record.name]


def critic_checkpoint(preset: str | Preset, vlm: str | os.PathLike, *, family: str, depth: int,
                      cache_dir: str | os.PathLike | None = None) -> str:
    """The critic checkpoint `preset` loads: `vlm` for the real preset, else the offline one it writes
    (of `family`, at `depth` where the preset has one)."""
    record = get_preset(preset)
    if not record.offline:
        return str(vlm)
    return str(offline_checkpoints(record).critic(cache_dir, family=family, depth=depth))


def check_critic_family(preset: str | Preset, asked: str | None) -> None:
    """Refuse a --critic-family the preset cannot bring (InvalidInputError naming the fix)."""
    record = get_preset(preset)
    if record.critic_families is not None and asked is not None and asked not in record.critic_families:
        raise InvalidInputError(f"--preset {record.name} has {record.critic_note}; drop --critic-family.")


__all__ = ["OfflineCheckpoints", "PRESETS", "Preset", "ShapeCheckpoint", "cache_root", "check_critic_family", "critic_checkpoint",
           "get_preset", "offline_checkpoints", "register_offline_checkpoints"]
