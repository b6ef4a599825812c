"""Presets: which checkpoints a run loads, each one record.

    PRESETS["tiny"].offline                  # True: it writes its own checkpoints, needs no hub
    get_preset("mini").defaults              # {"view_size": 112, ...}: option defaults a run of it starts from
    offline_checkpoints(preset).critic(cache_dir, family="qwen2.5-vl", depth=1)   # its critic's folder

- `real`: the real models (the hub, $HY3DGEN_MODELS or local folders), as --shape-model / --vlm name them.
- `tiny`: tiny offline checkpoints in the real formats (meaningless shapes; exercises the pipeline).
- `realsize`: offline random-weight checkpoints of the real models' sizes, --realsize-depth blocks of each kind.
- `mini`: the trained miniature world (`vlm3d_ttg.miniworld`): small real architectures that know its shapes.

A preset's `defaults` are option defaults (field name → command-line value) that hold unless the user
gives that option: they sit above the backbone's own (`backbones.backbone_defaults`) and below what the
user gives (`requests.validate_settings` applies them; `--preset`'s help lists them). The preflight
reads a preset's model sizes from its record (`small_models`, `depth_scaled`), never from its name.

An offline preset's checkpoints are written by the module its record names (`writers`), which
registers them here on import (`register_offline_checkpoints`): the library never imports those
writers itself. Adding a preset is one entry in PRESETS (plus its writers, for an offline one).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import InvalidInputError


MIB = 1024**2


@dataclass(frozen=True)
class SmallModels:
    """An offline preset's models as the preflight counts them when they are small (measured, not scaled
    from the real models' sizes): weights in memory and the critic's saved activations."""

    shape_bytes: int  # the shape model's weights in memory
    critic_bytes: int  # the critic's weights in memory
    critic_token_bytes: int  # the critic's saved activations per token, all layers
    vision_pixel_bytes: int  # the critic's vision tower, per rendered pixel
    candidate_bytes: int  # working memory of one more candidate in a batch


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
    defaults: Mapping[str, Any] = field(default_factory=dict, hash=False)  # option → default unless given (module docstring)
    note: str = ""  # what its shapes mean, for front ends that say which preset runs ("" for the real models)
    small_models: SmallModels | None = None  # its models' memory, measured (None: the real models' sizes)
    depth_scaled: bool = False  # the real models' sizes at --realsize-depth blocks of each kind
    text_to_image_from: str | None = None  # the offline preset whose text-to-image model makes its input from a prompt
    example: str | None = None  # "module:NAME" of its demo example (the app opens with it; `example()` loads it)
    compare_by_default: bool = False  # the app runs the unguided baseline beside the guided run unless unticked

    def demo_example(self) -> Any:
        """Its demo example (e.g. `miniworld.example.MINI_EXAMPLE`: a picture, description, seed and option values),
        imported from the module its record names; None when it has none."""
        if self.example is None:
            return None
        module, name = self.example.split(":")
        return getattr(importlib.import_module(module), name)

    @property
    def export_resolution(self) -> int | None:
        """Its export grid unless --octree-resolution says otherwise (None: the backbone's)."""
        return self.defaults.get("octree_resolution")

    def defaults_text(self) -> str:
        """Its option defaults as flags ('--view-size 112, ...'; '' when it has none), for --preset's help."""
        return ", ".join(f"--{name.replace('_', '-')} {value:g}" if isinstance(value, float) else
                         f"--{name.replace('_', '-')} {value}" for name, value in self.defaults.items())

    def describe(self, *, depth: int) -> str:
        """The mark added to a checkpoint's name in the manifest ('' for the real preset)."""
        return f" ({self.label.format(depth=depth)})" if self.label else ""


@dataclass(frozen=True)
class ShapeCheckpoint:
    """Where an offline preset's shape model lives, in the terms `backbones.hunyuan3d2_models.load_shape_pipeline` takes."""

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
           shape_variants=True, writers="vlm3d_ttg.tiny", label="tiny", defaults={"octree_resolution": 128},
           note="offline random-weight models, meaningless shapes", text_to_image_from="tiny",
           small_models=SmallModels(shape_bytes=4 * MIB, critic_bytes=4 * MIB,
                                    critic_token_bytes=64 * 2 * 40 * 4,  # hidden 64, 2 layers, ~40 saved values, float32
                                    vision_pixel_bytes=32 * 4, candidate_bytes=16 * MIB)),
    Preset("realsize", offline=True, help="offline random-weight checkpoints of the real models' sizes, "
                                          "--realsize-depth blocks of each kind",
           shape_variants=False, critic_families=("qwen2.5-vl",),
           critic_note="Qwen2.5-VL-7B's shapes only", writers="vlm3d_ttg.tiny.realsize",
           label="realsize, depth {depth}", note="random weights at the real sizes, meaningless shapes",
           depth_scaled=True, text_to_image_from="tiny"),
    # The mini world's critic was trained on 4 views of 112 px at elevation 20° ± 5°, azimuth ± 15°, from
    # the reward's own orbit and renderer (miniworld.render_input.critic_views); its shape model decodes a
    # small grid. tests/test_mini_preset.py checks these against what it was trained on.
    Preset("mini", offline=True, help="the trained miniature world: small real architectures trained on the "
                                      "project's own shapes (offline; vlm3d_ttg.miniworld)",
           shape_variants=False, critic_families=("qwen2.5-vl",), critic_note="its trained Qwen2.5-VL critic only",
           writers="vlm3d_ttg.miniworld.checkpoints", label="mini",
           defaults={"octree_resolution": 64, "num_views": 4, "view_size": 112, "elevation": 20.0,
                     "azimuth_jitter": 15.0, "elevation_jitter": 5.0},
           note="the trained miniature world: small models trained on 13 classes of simple procedural shapes, not a "
                "general 3D generator", text_to_image_from="tiny",
           example="vlm3d_ttg.miniworld.example:MINI_EXAMPLE", compare_by_default=True,
           small_models=SmallModels(shape_bytes=8 * MIB, critic_bytes=8 * MIB,
                                    critic_token_bytes=128 * 4 * 40 * 4,  # hidden 128, 4 layers, float32
                                    vision_pixel_bytes=64 * 4, candidate_bytes=16 * MIB)),
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


__all__ = ["OfflineCheckpoints", "PRESETS", "Preset", "ShapeCheckpoint", "SmallModels", "cache_root", "check_critic_family", "critic_checkpoint",
           "get_preset", "offline_checkpoints", "register_offline_checkpoints"]
