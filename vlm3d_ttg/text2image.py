"""Text-to-3D's front end: an input image made from the prompt (text-to-image + background removal).

By default this is hy3dgen's own text-to-3D front end: HunyuanDiT (`hy3dgen.text2image.
HunyuanDiTPipeline`'s recipe: diffusers' `AutoPipelineForText2Image` with perturbed-attention
guidance on blocks 16-19, hy3dgen's style suffix and negative prompt, 25 steps, 1024²), then
`hy3dgen.rembg.BackgroundRemover`. Any other diffusers text-to-image folder (a `model_index.json`
whose pipeline is not HunyuanDiT) runs with its own defaults. Both models must already be on disk;
`text_to_image_unavailable_reasons` says what is missing, and how to get it, before any heavy work.

One difference from hy3dgen's wrapper, on purpose: it always loads float16; here float16 is used on
CUDA and float32 on the CPU, where half precision is emulated and takes minutes per step.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .env import environment_variable
from .errors import InvalidInputError
from .io import atomic_path

logger = logging.getLogger(__name__)

# hy3dgen 2.0.2's default text-to-image model (see hy3dgen/text2image.py).
DEFAULT_TEXT_TO_IMAGE_MODEL = "Tencent-Hunyuan/HunyuanDiT-v1.1-Diffusers-Distilled"
HUNYUAN_DIT_PIPELINES = ("HunyuanDiTPipeline", "HunyuanDiTPAGPipeline")
# hy3dgen.text2image.HunyuanDiTPipeline's loading and sampling settings (2.0.2).
HUNYUAN_PAG_LAYERS = ["blocks.(16|17|18|19)"]
HUNYUAN_STEPS = 25
HUNYUAN_PAG_SCALE = 1.3
HUNYUAN_SIZE = 1024
HUNYUAN_PROMPT_CHARS = 60  # hy3dgen keeps the first 60 characters of the prompt


def _local_folder(model: str) -> Path | None:
    folder = Path(os.path.expanduser(model))
    return folder if (folder / "model_index.json").is_file() else None


def _model_index(model: str) -> dict | None:
    """The diffusers `model_index.json` of a local folder or a hub-cached repo (None if neither)."""
    folder = _local_folder(model)
    if folder is not None:
        path: str | Path | None = folder / "model_index.json"
    else:
        from huggingface_hub import try_to_load_from_cache

        try:
            found = try_to_load_from_cache(model, "model_index.json")
        except ValueError:  # not a repo id either (e.g. a folder that does not exist)
            found = None
        path = found if isinstance(found, str) else None
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def is_hunyuan_dit(model: str) -> bool:
    """Whether `model`'s diffusers pipeline is HunyuanDiT (then hy3dgen's recipe applies)."""
    index = _model_index(model) or {}
    return index.get("_class_name") in HUNYUAN_DIT_PIPELINES or model == DEFAULT_TEXT_TO_IMAGE_MODEL


def background_remover_model() -> str | None:
    """Path of the model hy3dgen's background remover will load (rembg's default session) if it is on disk."""
    from .inputs import background_removal_model

    return background_removal_model()


def text_to_image_unavailable_reasons(model: str = DEFAULT_TEXT_TO_IMAGE_MODEL) -> list[str]:
    """What stops text-to-image + background removal from running here (empty list: nothing)."""
    reasons = []
    if importlib.util.find_spec("diffusers") is None:
        reasons.append("the `diffusers` package is not installed (pip install diffusers)")
    if _model_index(model) is None:
        reasons.append(
            f"the text-to-image model '{model}' is neither a local diffusers folder nor in the hub cache "
            f"(on a machine with hub access: `huggingface-cli download {model}`, or pass a local folder with --text-to-image)"
        )
    if background_remover_model() is None:
        from .inputs import default_background_removal_session

        default = default_background_removal_session()
        reasons.append(
            f"rembg's background-removal model ({default[0] if default else 'rembg is not installed'}) is not on disk "
            "(on a machine with internet: `python -c \"import rembg; rembg.new_session()\"`)"
        )
    return reasons


def check_text_to_image(item_ids: list[str], model: str = DEFAULT_TEXT_TO_IMAGE_MODEL) -> None:
    """Raise InvalidInputError if benchmark rows `item_ids` (which have no image) cannot get one by text-to-image."""
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


def check_text_to_image_model(model: str) -> None:
    """Raise InvalidInputError (before any model loads) when `generate` without an image cannot make one."""
    reasons = text_to_image_unavailable_reasons(model)
    if reasons:
        raise InvalidInputError(
            "No input image was given, so one must be made from --prompt by text-to-image, which is unavailable:\n"
            + "\n".join(f"  - {r}" for r in reasons)
            + "\nFix: give an IMAGE (RGBA with a transparent background), make the models above available, "
            "or try the whole path offline with --preset tiny."
        )


def rembg_home(folder: str | os.PathLike | None) -> contextlib.AbstractContextManager[None]:
    """Point rembg at `folder` (its U2NET_HOME) for the duration of the block; None: leave it alone."""
    return environment_variable("U2NET_HOME", folder)


@dataclass
class TextToImage:
    """A loaded text-to-image pipeline and background remover: prompt → RGBA image with a transparent background.

    steps / size: None keeps the recipe's own (hy3dgen's 25 steps at 1024² for HunyuanDiT, the
    pipeline's defaults otherwise); the tiny preset passes fewer steps.
    """

    pipeline: Any
    remover: Any
    hunyuan: bool
    model: str
    steps: int | None = None

    @classmethod
    def load(cls, model: str = DEFAULT_TEXT_TO_IMAGE_MODEL, *, device: str = "cuda", steps: int | None = None,
             remover_home: str | os.PathLike | None = None) -> "TextToImage":
        """Load both models (check with `text_to_image_unavailable_reasons` first). `remover_home`: where
        rembg finds its model (default: rembg's own home)."""
        import torch
        from diffusers import AutoPipelineForText2Image
        from hy3dgen.rembg import BackgroundRemover

        from .models import resolve_device

        torch_device = resolve_device(device)
        dtype = torch.float16 if torch_device.type == "cuda" else torch.float32
        hunyuan = is_hunyuan_dit(model)
        path = str(_local_folder(model) or model)
        logger.info("Loading text-to-image model %s on %s (%s)", model, torch_device, dtype)
        extra: dict[str, Any] = {"enable_pag": True, "pag_applied_layers": HUNYUAN_PAG_LAYERS} if hunyuan else {}
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()  # the library logs; no loading bars on the user's terminal
        try:
            pipeline = AutoPipelineForText2Image.from_pretrained(path, torch_dtype=dtype, **extra).to(torch_device)
        finally:
            diffusers_logging.enable_progress_bar()
        pipeline.set_progress_bar_config(disable=True)
        with rembg_home(remover_home):
            remover = BackgroundRemover()  # the session reads its model now
        return cls(pipeline, remover, hunyuan, model, steps)

    def generate_rgb(self, prompt: str, *, seed: int = 0) -> Any:
        """The text-to-image output for `prompt` (a PIL image, before background removal)."""
        import torch

        generator = torch.Generator(device=self.pipeline.device).manual_seed(int(seed))
        if self.hunyuan:
            # hy3dgen.text2image.HunyuanDiTPipeline.__call__'s arguments.
            from hy3dgen.text2image import seed_everything

            seed_everything(seed)
            kwargs: dict[str, Any] = dict(
                prompt=prompt[:HUNYUAN_PROMPT_CHARS] + HUNYUAN_STYLE_SUFFIX, negative_prompt=HUNYUAN_NEGATIVE_PROMPT,
                num_inference_steps=self.steps or HUNYUAN_STEPS, pag_scale=HUNYUAN_PAG_SCALE,
                width=HUNYUAN_SIZE, height=HUNYUAN_SIZE)
        else:
            kwargs = {"prompt": prompt}
            if self.steps:
                kwargs["num_inference_steps"] = self.steps
        return self.pipeline(generator=generator, return_dict=False, **kwargs)[0][0]

    def image(self, prompt: str, *, seed: int = 0) -> Any:
        """An RGBA PIL image of `prompt` with its background removed; InvalidInputError if no object is left."""
        from .images import check_object
        from .inputs import has_useful_alpha

        rgb = self.generate_rgb(prompt, seed=seed)
        rgba = self.remover(rgb.convert("RGB")).convert("RGBA")
        if not has_useful_alpha(rgba):
            raise InvalidInputError(f"Background removal found no object in the text-to-image output for '{prompt}'.")
        check_object(rgba, f"the text-to-image output for '{prompt}'", after=" after removing its background")
        return rgba

    def __call__(self, prompt: str, out: str | os.PathLike, *, seed: int = 0) -> Path:
        """Make an RGBA image (transparent background) of `prompt` and write it to `out` (PNG) atomically."""
        rgba = self.image(prompt, seed=seed)
        with atomic_path(out) as tmp:
            rgba.save(tmp, format="PNG")
        return Path(out)


# The tiny preset's text-to-image steps (its pipeline is random: more steps would only cost time).
TINY_STEPS = 1


@dataclass
class GeneratedInput:
    """An input image made from the prompt, to be saved next to the run's outputs and recorded in its manifest."""

    image: Any  # RGBA PIL image, background removed
    path: Path  # where the run saves it
    model: str
    seed: int
    steps: int | None

    def to_dict(self) -> dict:
        """What the manifest records about it."""
        return {"generated": True, "path": str(self.path), "text_to_image_model": self.model, "seed": self.seed,
                "steps": self.steps, "background_removal": "hy3dgen.rembg.BackgroundRemover"}


def make_input_image(prompt: str, path: str | os.PathLike, *, model: str = DEFAULT_TEXT_TO_IMAGE_MODEL,
                     device: str = "auto", seed: int = 0, tiny: bool = False,
                     cache_dir: str | os.PathLike | None = None) -> GeneratedInput:
    """Make the input image of a text-to-3D run (kept in memory; the run writes it to `path` with its
    other outputs). `tiny`: the offline tiny text-to-image and background-removal models instead of `model`.
    The models are released before returning."""
    import gc

    remover_home = None
    steps = None
    if tiny:
        from .tiny import ensure_tiny_text_to_image

        ref = ensure_tiny_text_to_image(cache_dir)
        model, remover_home, steps = str(ref.model), ref.rembg_home, TINY_STEPS
    maker = TextToImage.load(model, device=device, steps=steps, remover_home=remover_home)
    try:
        image = maker.image(prompt, seed=seed)
    finally:
        del maker
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the shape model and critic load next
    return GeneratedInput(image, Path(path), model, seed, steps)


def input_image_path_for(out: str | os.PathLike) -> Path:
    """Where a text-to-3D run saves the image it made: next to the mesh ('chair.glb' → 'chair.glb.input.png')."""
    path = Path(out)
    return path.with_name(path.name + ".input.png")


# hy3dgen 2.0.2's HunyuanDiT prompt suffix ("white background, 3D style, best quality") and negative
# prompt, verbatim (tests check them against hy3dgen's own wrapper).
HUNYUAN_STYLE_SUFFIX = ",白色背景,3D风格,最佳质量"
HUNYUAN_NEGATIVE_PROMPT = (
    "文本,特写,裁剪,出框,最差质量,低质量,JPEG伪影,PGLY,重复,病态,"
    "残缺,多余的手指,变异的手,画得不好的手,画得不好的脸,变异,畸形,模糊,脱水,糟糕的解剖学,"
    "糟糕的比例,多余的肢体,克隆的脸,毁容,恶心的比例,畸形的肢体,缺失的手臂,缺失的腿,"
    "额外的手臂,额外的腿,融合的手指,手指太多,长脖子"
)

__all__ = [
    "DEFAULT_TEXT_TO_IMAGE_MODEL",
    "GeneratedInput",
    "TextToImage",
    "input_image_path_for",
    "make_input_image",
    "check_text_to_image",
    "check_text_to_image_model",
    "is_hunyuan_dit",
    "text_to_image_unavailable_reasons",
]
