"""Input images for benchmark rows that have none: hy3dgen's text-to-image (HunyuanDiT) + background removal.

This is hy3dgen's own text-to-3D front end (`hy3dgen.text2image.HunyuanDiTPipeline`, then
`hy3dgen.rembg.BackgroundRemover`). Both models must already be on disk; `check_text_to_image`
says so before any heavy work, naming what is missing and how to get it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from ..io import atomic_path

logger = logging.getLogger(__name__)

# hy3dgen 2.0.2's default text-to-image model (see hy3dgen/text2image.py).
DEFAULT_TEXT_TO_IMAGE_MODEL = "Tencent-Hunyuan/HunyuanDiT-v1.1-Diffusers-Distilled"


def _is_local_diffusers_folder(model: str) -> bool:
    return (Path(os.path.expanduser(model)) / "model_index.json").is_file()


def _in_hub_cache(model: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model, "model_index.json"), str)


def text_to_image_unavailable_reasons(model: str = DEFAULT_TEXT_TO_IMAGE_MODEL) -> list[str]:
    """What stops text-to-image + background removal from running here (empty list: nothing)."""
    from ..inputs import background_removal_model

    reasons = []
    if importlib.util.find_spec("diffusers") is None:
        reasons.append("the `diffusers` package is not installed (pip install diffusers)")
    if not (_is_local_diffusers_folder(model) or _in_hub_cache(model)):
        reasons.append(
            f"the text-to-image model '{model}' is neither a local diffusers folder nor in the hub cache "
            f"(on a machine with hub access: `huggingface-cli download {model}`, or pass a local folder with --text-to-image)"
        )
    if background_removal_model() is None:
        reasons.append(
            "rembg's u2net background-removal model is not on disk "
            "(on a machine with internet: `python -c \"import rembg; rembg.new_session()\"`)"
        )
    return reasons


def check_text_to_image(item_ids: list[str], model: str = DEFAULT_TEXT_TO_IMAGE_MODEL) -> None:
    """Raise InvalidInputError if rows `item_ids` (which have no image) cannot get one by text-to-image."""
    if not item_ids:
        return
    reasons = text_to_image_unavailable_reasons(model)
    if reasons:
        shown = ", ".join(item_ids[:10]) + (f" and {len(item_ids) - 10} more" if len(item_ids) > 10 else "")
        raise InvalidInputError(
            f"{len(item_ids)} benchmark row(s) have no image ({shown}) and text-to-image is unavailable:\n"
            + "\n".join(f"  - {r}" for r in reasons)
            + "\nFix: give those rows an 'image' (RGBA with a transparent background), or make the models above available."
        )


@dataclass
class TextToImage:
    """hy3dgen's HunyuanDiT pipeline and background remover, loaded once."""

    pipeline: Any
    remover: Any

    @classmethod
    def load(cls, model: str = DEFAULT_TEXT_TO_IMAGE_MODEL, *, device: str = "cuda") -> "TextToImage":
        """Load both models (checked with `check_text_to_image` first)."""
        from hy3dgen.rembg import BackgroundRemover
        from hy3dgen.text2image import HunyuanDiTPipeline

        logger.info("Loading text-to-image model %s on %s", model, device)
        return cls(HunyuanDiTPipeline(model_path=os.path.expanduser(model), device=device), BackgroundRemover())

    def __call__(self, prompt: str, out: str | os.PathLike, *, seed: int = 0) -> Path:
        """Make an RGBA image (transparent background) of `prompt` and write it to `out` (PNG) atomically."""
        from ..inputs import has_useful_alpha

        rgb = self.pipeline(prompt, seed=seed)
        rgba = self.remover(rgb.convert("RGB"))
        if not has_useful_alpha(rgba):
            raise InvalidInputError(f"Background removal found no object in the text-to-image output for '{prompt}'.")
        with atomic_path(out) as tmp:
            rgba.save(tmp, format="PNG")
        return Path(out)
