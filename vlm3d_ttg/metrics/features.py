"""Image and text features for the quality metrics: Inception-v3 pool3 (FID) and CLIP (CLIP-D, CLIP-FID).

Every model is read from a local path or the local hub cache; nothing is downloaded unless the
caller passes `allow_download=True`. A missing model raises ModelNotFoundError saying how to get it.

- Inception-v3: torchvision's architecture, weights from a state-dict file (torchvision's
  ImageNet checkpoint `inception_v3_google-*.pth`, or any file with the same keys, .pth or
  .safetensors). Features are the 2048-d pool3 activations. Note: FID values computed with
  torchvision's weights are not comparable to values computed with the TF-Inception weights of
  pytorch-fid / clean-fid; compare only numbers computed here, at the same N and reference set.
- CLIP: transformers' CLIPModel (default `openai/clip-vit-base-patch32`). Embeddings are the
  projected `pooler_output` of `get_text_features` / `get_image_features` (transformers 5.x
  returns an output object, not a tensor).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..env import hub_offline
from ..errors import ModelNotFoundError
from ..images import to_uint8
from ..models import resolve_device

logger = logging.getLogger(__name__)

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
INCEPTION_WEIGHTS_ENV = "VLM3D_TTG_INCEPTION_WEIGHTS"
INCEPTION_INPUT_SIZE = 299
INCEPTION_FEATURE_DIM = 2048

ImageInput = Union[Any, np.ndarray, torch.Tensor]  # a PIL image, an HWC/NHWC array, a CHW/NCHW tensor
ImagesInput = Union[ImageInput, Sequence[ImageInput]]


def _one_image_to_chw(image: ImageInput) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
    else:
        array = np.asarray(image.convert("RGB")) if hasattr(image, "convert") else np.asarray(image)
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        tensor = torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1)  # a copy: inputs may be read-only
    if tensor.ndim != 3:
        raise ValueError(f"Expected one image (3 dims), got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 4:  # RGBA → RGB (renders are on an opaque background)
        tensor = tensor[:3]
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    if tensor.dtype == torch.uint8:
        return tensor.float() / 255.0
    return tensor.float().clamp(0.0, 1.0)


def images_to_tensor(images: ImagesInput) -> torch.Tensor:
    """Images as one float (N, 3, H, W) tensor in [0, 1], on the CPU.

    Accepts PIL images, numpy arrays in image layout (HWC, or NHWC; uint8 or float in [0, 1]) and
    torch tensors in torch layout (CHW, or NCHW; uint8 or float in [0, 1]), alone or in a list.
    All images must have the same size.
    """
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        items: list = list(images)
    elif isinstance(images, np.ndarray) and images.ndim == 4:
        items = list(images)
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        items = [images]
    if not items:
        raise ValueError("No images given")
    return torch.stack([_one_image_to_chw(image) for image in items])


# ---------------------------------------------------------------------------------------------
# Inception-v3 pool3


def _inception_how_to_get() -> str:
    from torchvision.models import Inception_V3_Weights

    hub_checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    return (
        "on a machine with internet run `python -c \"import torchvision; "
        "torchvision.models.inception_v3(weights='IMAGENET1K_V1')\"` (the file lands in "
        f"{hub_checkpoints}), or download {Inception_V3_Weights.IMAGENET1K_V1.url} yourself; then pass the "
        f"file's path (weights_path=..., or ${INCEPTION_WEIGHTS_ENV})."
    )


def find_inception_weights(weights_path: str | os.PathLike | None = None) -> Path:
    """The Inception-v3 state-dict file to use: `weights_path`, else $VLM3D_TTG_INCEPTION_WEIGHTS, else torchvision's cached checkpoint.

    Raises ModelNotFoundError when none exists (nothing is downloaded).
    """
    from torchvision.models import Inception_V3_Weights

    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(Inception_V3_Weights.IMAGENET1K_V1.url).name
    candidates = [Path(os.path.expanduser(str(weights_path)))] if weights_path is not None else []
    if weights_path is None and os.environ.get(INCEPTION_WEIGHTS_ENV):
        candidates.append(Path(os.path.expanduser(os.environ[INCEPTION_WEIGHTS_ENV])))
    if weights_path is None:
        candidates.append(cached)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ModelNotFoundError("torchvision inception_v3 (IMAGENET1K_V1)", [str(c) for c in candidates], _inception_how_to_get())


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


@dataclass
class InceptionFeatures:
    """Inception-v3 with its classifier removed: images → 2048-d pool3 features."""

    model: torch.nn.Module
    device: torch.device
    batch_size: int = 32

    @torch.inference_mode()
    def __call__(self, images: ImagesInput) -> np.ndarray:
        """Pool3 features (N, 2048) in float64 of images in [0, 1] (resized to 299², bilinear, antialiased)."""
        pixels = images_to_tensor(images)
        chunks = []
        for start in range(0, len(pixels), self.batch_size):
            batch = pixels[start : start + self.batch_size].to(self.device)
            batch = F.interpolate(batch, size=(INCEPTION_INPUT_SIZE,) * 2, mode="bilinear", align_corners=False, antialias=True)
            # The Google Inception weights expect pixels in [-1, 1] (what torchvision's transform_input
            # produces from ImageNet-normalised input).
            chunks.append(self.model(2.0 * batch - 1.0).double().cpu())
        return torch.cat(chunks).numpy()


def load_inception(
    weights_path: str | os.PathLike | None = None, *, device: str | torch.device | None = None, batch_size: int = 32
) -> InceptionFeatures:
    """Load the Inception-v3 pool3 feature extractor from a local state-dict file (see `find_inception_weights`)."""
    from torchvision.models import inception_v3

    path = find_inception_weights(weights_path)
    state = _load_state_dict(path)
    has_aux = any(key.startswith("AuxLogits.") for key in state)
    model = inception_v3(weights=None, aux_logits=has_aux, init_weights=False, transform_input=False)
    model.load_state_dict(state, strict=True)
    model.fc = torch.nn.Identity()  # pool3 → (dropout, identity in eval) → features
    torch_device = resolve_device(device)
    model.eval().requires_grad_(False).to(torch_device)
    logger.info("Loaded Inception-v3 weights from %s on %s", path, torch_device)
    return InceptionFeatures(model, torch_device, batch_size)


# ---------------------------------------------------------------------------------------------
# CLIP


@dataclass
class ClipEmbedder:
    """A CLIP model and its processor: images and texts → embeddings in the joint space."""

    model: Any
    processor: Any
    device: torch.device
    batch_size: int = 32

    @torch.inference_mode()
    def image_embeddings(self, images: ImagesInput, *, normalize: bool = False) -> torch.Tensor:
        """Projected image embeddings (N, D), float32 on the CPU; L2-normalised if `normalize`."""
        pixels = images_to_tensor(images)
        # Quantise to uint8 like a saved PNG, so the processor's resize/rescale path is the standard one.
        as_uint8 = to_uint8(pixels)
        chunks = []
        for start in range(0, len(as_uint8), self.batch_size):
            inputs = self.processor.image_processor(images=list(as_uint8[start : start + self.batch_size]), return_tensors="pt")
            output = self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device))
            chunks.append(output.pooler_output.float().cpu())
        embeddings = torch.cat(chunks)
        return F.normalize(embeddings, dim=-1) if normalize else embeddings

    @torch.inference_mode()
    def text_embeddings(self, texts: str | Sequence[str], *, normalize: bool = False) -> torch.Tensor:
        """Projected text embeddings (N, D), float32 on the CPU; L2-normalised if `normalize`. Texts are truncated to CLIP's context."""
        batch = [texts] if isinstance(texts, str) else list(texts)
        max_length = int(self.model.config.text_config.max_position_embeddings)
        inputs = self.processor.tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        output = self.model.get_text_features(
            input_ids=inputs["input_ids"].to(self.device), attention_mask=inputs["attention_mask"].to(self.device)
        )
        embeddings = output.pooler_output.float().cpu()
        return F.normalize(embeddings, dim=-1) if normalize else embeddings

    def image_features(self, images: ImagesInput) -> np.ndarray:
        """CLIP-FID features: unnormalised projected image embeddings (N, D) in float64 (as clean-fid uses)."""
        return self.image_embeddings(images).double().numpy()


def load_pretrained_local_first(
    model: str | os.PathLike,
    load: Any,
    *,
    allow_download: bool,
    revision: str | None,
    what: str,
) -> Any:
    """Call `load(model_id, **kwargs)` on a local folder or the hub cache; download only if `allow_download`.

    Turns a missing model into ModelNotFoundError, naming where it looked and how to get it.
    """
    model_id = os.path.expanduser(str(model))
    is_local = Path(model_id).is_dir()
    local_only = is_local or not allow_download or hub_offline()
    kwargs: dict[str, Any] = {"local_files_only": local_only}
    if revision is not None:
        kwargs["revision"] = revision
    try:
        return load(model_id, **kwargs)
    except OSError as exc:
        from huggingface_hub.constants import HF_HUB_CACHE

        looked = [model_id] if is_local else [f"{HF_HUB_CACHE} (hub cache)"]
        if not is_local:
            looked.append("the Hugging Face hub" + ("" if not local_only else " (not tried: downloads need allow_download=True and no HF_HUB_OFFLINE)"))
        raise ModelNotFoundError(
            model_id,
            looked,
            f"on a machine with hub access run `huggingface-cli download {model_id}` (it lands in the hub cache), "
            f"or pass a local folder written by save_pretrained ({what}).",
            cause=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
        ) from exc


def load_clip(
    model: str | os.PathLike = DEFAULT_CLIP_MODEL,
    *,
    device: str | torch.device | None = None,
    revision: str | None = None,
    allow_download: bool = False,
    batch_size: int = 32,
) -> ClipEmbedder:
    """Load a CLIP model and processor from a local folder or the hub cache (default ViT-B/32), frozen, float32."""
    from transformers import AutoProcessor, CLIPModel

    def load(model_id: str, **kwargs: Any) -> tuple[Any, Any]:
        return CLIPModel.from_pretrained(model_id, **kwargs), AutoProcessor.from_pretrained(model_id, **kwargs)

    clip_model, processor = load_pretrained_local_first(
        model, load, allow_download=allow_download, revision=revision, what="CLIPModel + CLIPProcessor"
    )
    torch_device = resolve_device(device)
    clip_model.eval().requires_grad_(False).to(torch_device)
    logger.info("Loaded CLIP %s on %s", model, torch_device)
    return ClipEmbedder(clip_model, processor, torch_device, batch_size)
