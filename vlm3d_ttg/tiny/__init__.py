"""Tiny offline checkpoints in the real on-disk formats (see `tiny.hunyuan`, `tiny.qwen` and `tiny.qwen3`).

They exist to exercise the real loading and sampling code without a GPU or a model hub; the
shapes and answers they produce are meaningless.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .hunyuan import TINY_SHAPE_REPO, TINY_SHAPE_SUBFOLDER, folder_digest, write_tiny_shape_model

# Bump when the tiny models change, so a stale cache is never loaded.
TINY_VERSION = "v2"


def tiny_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Root of the tiny checkpoints: `cache_dir`, else $VLM3D_TTG_CACHE, else ~/.cache/vlm3d-ttg."""
    from ..presets import cache_root

    return cache_root(cache_dir) / f"tiny-{TINY_VERSION}"


@dataclass(frozen=True)
class TinyShapeModel:
    """Where the tiny shape checkpoint lives, in the terms `load_shape_pipeline` takes."""

    models_dir: Path  # the $HY3DGEN_MODELS root
    repo_id: str
    subfolder: str


def ensure_tiny_shape_model(
    cache_dir: str | os.PathLike | None = None,
    *,
    subfolder: str = TINY_SHAPE_SUBFOLDER,
    seed: int = 0,
) -> TinyShapeModel:
    """Write the tiny Hunyuan3D-2 checkpoint once (if missing) and say where it is.

    `subfolder` picks the variant like the real repos do: '...-fast' has a guidance embedding,
    '...-turbo' a consistency scheduler, '...-mv' multi-view conditioning.
    """
    root = tiny_cache_dir(cache_dir) / "hy3dgen"
    write_tiny_shape_model(
        root,
        subfolder=subfolder,
        seed=seed,
        guidance_embed=subfolder.endswith("-fast"),
        turbo=subfolder.endswith("-turbo"),
        multiview="-mv" in subfolder,
    )
    return TinyShapeModel(root, TINY_SHAPE_REPO, subfolder)


def ensure_tiny_vlm(cache_dir: str | os.PathLike | None = None, *, seed: int = 0, family: str = "qwen2.5-vl") -> Path:
    """Write the tiny critic of `family` (a `critic.families` name: Qwen2.5-VL by default, or Qwen3-VL) once
    (if missing) as a `save_pretrained` folder; return its path."""
    from ..critic.families import get_family
    from . import qwen, qwen3  # noqa: F401  (each registers its writer with the family it serves)

    spec = get_family(family)
    return spec.offline_writer(tiny_cache_dir(cache_dir) / spec.tiny_folder, seed=seed)


@dataclass(frozen=True)
class TinyTextToImage:
    """Where the tiny text-to-image pipeline and background-removal model live."""

    model: Path  # a diffusers folder, passed as the text-to-image model
    rembg_home: Path  # rembg's U2NET_HOME for the tiny background remover


def ensure_tiny_text_to_image(cache_dir: str | os.PathLike | None = None, *, seed: int = 0) -> TinyTextToImage:
    """Write the tiny HunyuanDiT folder and the tiny background-removal model once (if missing); say where."""
    from .text2image import write_tiny_background_remover, write_tiny_hunyuan_dit

    root = tiny_cache_dir(cache_dir)
    model = write_tiny_hunyuan_dit(root / "hunyuan_dit", seed=seed)
    remover = write_tiny_background_remover(root / "rembg", seed=seed)
    return TinyTextToImage(model, remover.parent)


def _register() -> None:
    """Register the tiny preset's checkpoint writers (`presets.offline_checkpoints("tiny")`)."""
    from ..presets import OfflineCheckpoints, register_offline_checkpoints

    register_offline_checkpoints("tiny", OfflineCheckpoints(
        folder=tiny_cache_dir,
        shape=lambda cache_dir, *, subfolder, depth: ensure_tiny_shape_model(cache_dir, subfolder=subfolder),
        critic=lambda cache_dir, *, family, depth: ensure_tiny_vlm(cache_dir, family=family),
    ))


_register()

__all__ = [
    "TinyTextToImage",
    "ensure_tiny_text_to_image",
    "TINY_SHAPE_REPO",
    "TINY_SHAPE_SUBFOLDER",
    "TinyShapeModel",
    "ensure_tiny_shape_model",
    "ensure_tiny_vlm",
    "folder_digest",
    "tiny_cache_dir",
    "write_tiny_shape_model",
]
