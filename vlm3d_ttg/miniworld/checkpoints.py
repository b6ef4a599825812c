"""The trained miniature models: committed fp16 weights → the real on-disk formats in a cache folder.

    models = ensure_mini_models()          # checks every asset's sha256 against the manifest first
    load_shape_pipeline(models.shape.repo_id, models.shape.subfolder, models_dir=models.shape.models_dir)
    load_vlm(models.critic)                # the guiding critic (Qwen2.5-VL, save_pretrained folder)
    load_vlm(models.judge)                 # the judge critic: another seed and size, never for guidance

Assets (`vlm3d_ttg/assets/mini/`, written by `training/export_mini.py`): `shape.fp16.safetensors`
(keys `model.` / `vae.` / `conditioner.`, DINOv2 under the checkpoint names) with its
`shape_config.yaml`, `critic_guide.fp16.safetensors`, `critic_judge.fp16.safetensors` (Qwen2.5-VL
state dicts; config, tokenizer and processor are rebuilt by `critic_model.build_mini_critic` from
the size and seed the manifest names) and `manifest.json` (sha256 of each file, training facts).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, InvalidInputError, ModelNotFoundError
from ..io import write_directory_atomic
from ..presets import ShapeCheckpoint
from .config import MINI_SHAPE_REPO, MINI_SHAPE_SUBFOLDER

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "mini"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class MiniModels:
    """The miniature world's models as folders the project's loaders read."""

    shape: ShapeCheckpoint
    critic: Path  # save_pretrained folder of the guiding critic
    judge: Path | None  # save_pretrained folder of the judge critic (None: not shipped)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(assets: str | os.PathLike = ASSETS) -> dict:
    """The manifest of the committed mini weights, with every listed file's sha256 checked.

    Raises ModelNotFoundError when the manifest or a file is missing, CheckpointError when a file's bytes differ.
    """
    assets = Path(assets)
    path = assets / MANIFEST
    if not path.is_file():
        raise ModelNotFoundError("vlm3d-ttg mini models", [str(path)],
                                 "reinstall vlm3d-ttg, or run training/export_mini.py to write the assets")
    manifest = json.loads(path.read_text())
    for name, expected in manifest["sha256"].items():
        file = assets / name
        if not file.is_file():
            raise ModelNotFoundError("vlm3d-ttg mini models", [str(file)], "reinstall vlm3d-ttg")
        actual = sha256_file(file)
        if actual != expected:
            raise CheckpointError(str(file), f"its sha256 is {actual[:16]}…, the manifest says {expected[:16]}…",
                                  "reinstall vlm3d-ttg (or rerun training/export_mini.py)")
    return manifest


def _cache_root(cache_dir: str | os.PathLike | None, manifest: dict) -> Path:
    base = cache_dir if cache_dir is not None else os.environ.get("VLM3D_TTG_CACHE", "~/.cache/vlm3d-ttg")
    # Named by the weights' own hash: new weights never load a stale cache.
    version = hashlib.sha256(json.dumps(manifest["sha256"], sort_keys=True).encode()).hexdigest()[:12]
    return Path(os.path.expanduser(str(base))) / f"mini-{version}"


def load_critic_weights(model: Any, weights: str | os.PathLike, size: str) -> None:
    """Load an exported mini critic's fp16 state dict (`critic_<role>.fp16.safetensors`) into `model`, a
    `build_mini_critic(size, …)` model, as float32.

    Raises CheckpointError when the weights do not fit that size's model.
    """
    from safetensors.torch import load_file

    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    # The rotary tables are buffers rebuilt from the config, not weights: they are not exported.
    if unexpected or [k for k in missing if "rotary" not in k]:
        raise CheckpointError(str(weights), f"it does not fit the mini {size} critic (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})", "rerun training/export_mini.py")


def exported_critic_entry(weights: str | os.PathLike, size: str | None = None) -> dict:
    """The manifest entry (file, size, seed, step) of an exported critic file and its sha256, its folder's
    sha256s checked.

    Raises InvalidInputError when the file is not a critic in its folder's manifest, or (with `size`)
    is a critic of another size.
    """
    weights = Path(weights)
    manifest = read_manifest(weights.parent)
    entry = next((e for e in manifest["critics"].values() if e["file"] == weights.name), None)
    if entry is None:
        raise InvalidInputError(f"{weights.name} is not a critic in {weights.parent / MANIFEST}.")
    if size is not None and entry["size"] != size:
        raise InvalidInputError(f"{weights} is a {entry['size']} critic, not a {size} one.")
    return {**entry, "sha256": manifest["sha256"][weights.name]}


def load_exported_critic(weights: str | os.PathLike, size: str | None = None) -> tuple[Any, Any, dict]:
    """(model, processor, manifest entry) of an exported mini critic file (`critic_<role>.fp16.safetensors`,
    sha256-checked), the model in float32.

    Raises InvalidInputError (not a critic of its manifest, or not of `size`) or CheckpointError.
    """
    from .critic_model import build_mini_critic

    entry = exported_critic_entry(weights, size)
    model, processor = build_mini_critic(entry["size"], entry["seed"])
    load_critic_weights(model, weights, entry["size"])
    return model, processor, entry


def _write_critic(folder: Path, weights: Path, size: str, seed: int) -> Path:
    def write(staging: Path) -> None:
        from .critic_model import build_mini_critic

        model, processor = build_mini_critic(size, seed)
        load_critic_weights(model, weights, size)
        model.save_pretrained(staging)
        processor.save_pretrained(staging)

    # Not rank 0 of a torch.distributed group: save_pretrained writes no weights (see tiny.qwen).
    return write_directory_atomic(folder, write, required=("config.json", "model.safetensors"))


def ensure_mini_models(cache_dir: str | os.PathLike | None = None, *, assets: str | os.PathLike = ASSETS) -> MiniModels:
    """Write the mini shape model (hy3dgen format) and the two mini critics (transformers format) into
    `cache_dir` (default $VLM3D_TTG_CACHE or ~/.cache/vlm3d-ttg) once, from the committed weights
    (sha256-checked); say where they are."""
    assets = Path(assets)
    manifest = read_manifest(assets)
    root = _cache_root(cache_dir, manifest)
    models_dir = root / "hy3dgen"

    def write_shape(staging: Path) -> None:
        shutil.copyfile(assets / "shape_config.yaml", staging / "config.yaml")
        shutil.copyfile(assets / "shape.fp16.safetensors", staging / "model.fp16.safetensors")

    write_directory_atomic(models_dir / MINI_SHAPE_REPO / MINI_SHAPE_SUBFOLDER, write_shape)
    critics = manifest["critics"]
    critic = _write_critic(root / "critic", assets / critics["guide"]["file"], critics["guide"]["size"], critics["guide"]["seed"])
    judge = (_write_critic(root / "judge", assets / critics["judge"]["file"], critics["judge"]["size"], critics["judge"]["seed"])
             if "judge" in critics else None)
    return MiniModels(ShapeCheckpoint(models_dir, MINI_SHAPE_REPO, MINI_SHAPE_SUBFOLDER), critic, judge)


def mini_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder the mini preset's checkpoints are written under (named by the committed weights' hash,
    which `read_manifest` checks first)."""
    return _cache_root(cache_dir, read_manifest(ASSETS))


def _register() -> None:
    """Register the mini preset's checkpoint writers (`presets.offline_checkpoints("mini")`): every one
    reads the committed assets (`ASSETS`, looked up when called) and checks their sha256 first."""
    from ..presets import OfflineCheckpoints, register_offline_checkpoints

    register_offline_checkpoints("mini", OfflineCheckpoints(
        folder=mini_cache_dir,
        shape=lambda cache_dir, *, subfolder, depth: ensure_mini_models(cache_dir, assets=ASSETS).shape,
        critic=lambda cache_dir, *, family, depth: ensure_mini_models(cache_dir, assets=ASSETS).critic,
    ))


_register()
