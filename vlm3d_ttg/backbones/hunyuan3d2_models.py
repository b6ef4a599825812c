"""hy3dgen's shape models: the Hunyuan3D-2 variants by the names users know them by, and hy3dgen's own
loader (`load_shape_pipeline`), for the Hunyuan3D-2 backbone (`backbones.hunyuan3d2`).

The same loader reads the real checkpoints (the hub, $HY3DGEN_MODELS or local folders) and the offline
presets' checkpoints in hy3dgen's format; the checks of a checkpoint on disk (missing, truncated, NaN
weights) and how to rebuild one are `vlm3d_ttg.models`' (shared with the critic's loader).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..env import environment_variable, hub_offline
from ..errors import ModelNotFoundError
from ..models import (
    raise_unloadable,
    check_checkpoint_folder,
    check_finite_weights,
    freeze,
    rebuild_advice,
    resolve_device,
    resolve_dtype,
)

logger = logging.getLogger(__name__)

DEFAULT_SHAPE_MODEL = "tencent/Hunyuan3D-2"
DEFAULT_SHAPE_SUBFOLDER = "hunyuan3d-dit-v2-0"


@dataclass(frozen=True)
class ShapeVariant:
    """A named hy3dgen shape model: hub repo, subfolder, and what its sampling loop needs."""

    repo_id: str
    subfolder: str
    multiview: bool = False  # conditioned on a dict of views (front/left/back/right)
    guidance_distilled: bool = False  # '-fast': CFG folded into a guidance embedding, batch of 1
    consistency: bool = False  # '-turbo': consistency flow-matching scheduler


# The hy3dgen 2.0.2 shape variants, by the names users know them by.
SHAPE_VARIANTS: dict[str, ShapeVariant] = {
    "hunyuan3d-2": ShapeVariant("tencent/Hunyuan3D-2", "hunyuan3d-dit-v2-0"),
    "hunyuan3d-2-fast": ShapeVariant("tencent/Hunyuan3D-2", "hunyuan3d-dit-v2-0-fast", guidance_distilled=True),
    "hunyuan3d-2-turbo": ShapeVariant("tencent/Hunyuan3D-2", "hunyuan3d-dit-v2-0-turbo", consistency=True),
    "hunyuan3d-2mini": ShapeVariant("tencent/Hunyuan3D-2mini", "hunyuan3d-dit-v2-mini"),
    "hunyuan3d-2mini-fast": ShapeVariant(
        "tencent/Hunyuan3D-2mini", "hunyuan3d-dit-v2-mini-fast", guidance_distilled=True
    ),
    "hunyuan3d-2mini-turbo": ShapeVariant("tencent/Hunyuan3D-2mini", "hunyuan3d-dit-v2-mini-turbo", consistency=True),
    "hunyuan3d-2mv": ShapeVariant("tencent/Hunyuan3D-2mv", "hunyuan3d-dit-v2-mv", multiview=True),
    "hunyuan3d-2mv-fast": ShapeVariant(
        "tencent/Hunyuan3D-2mv", "hunyuan3d-dit-v2-mv-fast", multiview=True, guidance_distilled=True
    ),
    "hunyuan3d-2mv-turbo": ShapeVariant(
        "tencent/Hunyuan3D-2mv", "hunyuan3d-dit-v2-mv-turbo", multiview=True, consistency=True
    ),
}



def hy3dgen_models_dir(models_dir: str | os.PathLike | None = None) -> Path:
    """Where hy3dgen looks for local checkpoints: `models_dir`, else $HY3DGEN_MODELS, else ~/.cache/hy3dgen."""
    base = models_dir if models_dir is not None else os.environ.get("HY3DGEN_MODELS", "~/.cache/hy3dgen")
    return Path(os.path.expanduser(str(base)))


def resolve_shape_model(model: str, subfolder: str | None = None) -> ShapeVariant:
    """Turn a variant name ('hunyuan3d-2mini-turbo') or a repo id (+ subfolder) into a ShapeVariant."""
    key = model.lower()
    if key in SHAPE_VARIANTS and subfolder is None:
        return SHAPE_VARIANTS[key]
    if subfolder is None:
        for variant in SHAPE_VARIANTS.values():
            if variant.repo_id == model:
                return variant
        subfolder = DEFAULT_SHAPE_SUBFOLDER
    for variant in SHAPE_VARIANTS.values():
        if variant.subfolder == subfolder:
            return ShapeVariant(model, subfolder, variant.multiview, variant.guidance_distilled, variant.consistency)
    sub = subfolder.lower()
    return ShapeVariant(
        model, subfolder, multiview="-mv" in sub, guidance_distilled=sub.endswith("-fast"), consistency=sub.endswith("-turbo")
    )



def load_shape_pipeline(
    model: str = DEFAULT_SHAPE_MODEL,
    subfolder: str | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    models_dir: str | os.PathLike | None = None,
    variant: str | None = "fp16",
    allow_download: bool = True,
) -> Any:
    """Load a Hunyuan3D-2 shape pipeline (`Hunyuan3DDiTFlowMatchingPipeline`) with hy3dgen's own loader.

    `model` is a hub repo id (with `subfolder`) or a variant name from `SHAPE_VARIANTS`. Local
    checkpoints are looked up where hy3dgen looks (`models_dir`/$HY3DGEN_MODELS/<repo>/<subfolder>);
    otherwise hy3dgen downloads from the hub unless `allow_download` is false or HF_HUB_OFFLINE=1.
    Raises ModelNotFoundError, naming the repo, where it looked and how to get it.
    """
    spec = resolve_shape_model(model, subfolder)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(torch_device, dtype, half=torch.float16)
    base = hy3dgen_models_dir(models_dir)
    local = base / spec.repo_id / spec.subfolder
    suffix = f".{variant}" if variant else ""
    fix = rebuild_advice(local, spec.repo_id, subfolder=spec.subfolder, local_dir=base / spec.repo_id)
    if local.is_dir() and any(local.iterdir()):  # begun on disk: every file it needs is there and readable
        check_checkpoint_folder(local, fix, required=(("config.yaml",),), weights=(f"model{suffix}.safetensors",))
    local_ok = (local / "config.yaml").is_file() and (local / f"model{suffix}.safetensors").is_file()
    how_to_get = (
        f"on a machine with hub access run `huggingface-cli download {spec.repo_id} --include '{spec.subfolder}/*' "
        f"--local-dir {base / spec.repo_id}` (or set HY3DGEN_MODELS to a folder holding "
        f"{spec.repo_id}/{spec.subfolder}/config.yaml and model{suffix}.safetensors). "
        "For an offline smoke test use the tiny preset (`--preset tiny`)."
    )
    if not local_ok and (not allow_download or hub_offline()):
        raise ModelNotFoundError(
            f"{spec.repo_id}/{spec.subfolder}",
            [str(local), "the Hugging Face hub (not tried: offline)"],
            how_to_get,
        )

    from hy3dgen.shapegen import Hunyuan3DDiTFlowMatchingPipeline

    from ..dinov2_names import hy3dgen_accepts_both_dinov2_namings

    logger.info("Loading shape model %s/%s on %s (%s)", spec.repo_id, spec.subfolder, torch_device, torch_dtype)
    try:
        # The checkpoint names DINOv2's weights as transformers did when Hunyuan3D-2 was released;
        # newer transformers renamed them (vlm3d_ttg.dinov2_names).
        # hy3dgen reads $HY3DGEN_MODELS at load time and offers no argument for it.
        with environment_variable("HY3DGEN_MODELS", base), hy3dgen_accepts_both_dinov2_namings():
            pipeline = Hunyuan3DDiTFlowMatchingPipeline.from_pretrained(
                spec.repo_id,
                subfolder=spec.subfolder,
                device=str(torch_device),
                dtype=torch_dtype,
                use_safetensors=True,
                variant=variant,
            )
    except Exception as exc:  # hub errors subclass OSError/ValueError
        if local_ok:  # the files are there but do not load (tensors of the wrong shape, ...): named, with the fix
            raise_unloadable(exc, local / f"model{suffix}.safetensors", fix)
        if not isinstance(exc, (OSError, RuntimeError, ValueError)):
            raise
        raise ModelNotFoundError(
            f"{spec.repo_id}/{spec.subfolder}",
            [str(local), "the Hugging Face hub"],
            how_to_get,
            cause=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
        ) from exc
    pipeline.variant_spec = spec
    if local_ok:
        check_finite_weights({"": pipeline.model, "vae.": pipeline.vae, "conditioner.": pipeline.conditioner}, local, fix)
    freeze(pipeline.model, pipeline.vae, pipeline.conditioner)
    return pipeline


def _missing_class(package: str, name: str, why: str) -> type:
    """A class standing for `package.name` (so type hints naming it still evaluate); instantiating it raises ImportError."""

    def refuse(self: Any, *args: Any, **kwargs: Any) -> None:
        raise ImportError(f"{package}.{name} is unavailable: {why}")

    return type(name, (), {"__init__": refuse, "__module__": package})


def allow_missing_pymeshlab() -> bool:
    """Let `import hy3dgen.shapegen` succeed where pymeshlab is not installed; True when that was needed.

    hy3dgen's package __init__ imports its mesh postprocessors (FaceReducer, FloaterRemover, ...),
    which import pymeshlab (~280 MB installed) at module level and name its classes in signatures.
    Sampling, guidance and export never use them; `--remove-floaters`-style postprocessing does.
    Where pymeshlab is missing, this registers a placeholder module whose every attribute raises
    ImportError when used, so the postprocessors fail loudly if called and nothing else changes.
    Call it before the first hy3dgen import (benchmarks/gpu_check.py does).
    """
    import importlib
    import sys
    import types

    if sys.modules.get("pymeshlab") is not None:
        return False
    try:
        importlib.import_module("pymeshlab")
        return False
    except ImportError:
        pass
    why = "pymeshlab is not installed (only hy3dgen's mesh postprocessors need it: pip install pymeshlab)"
    placeholder = types.ModuleType("pymeshlab", why)

    def missing(name: str) -> Any:
        if name.startswith("__"):  # module protocol (__file__, __path__, ...): a plain missing attribute
            raise AttributeError(name)
        return _missing_class("pymeshlab", name, why)

    placeholder.__getattr__ = missing  # type: ignore[attr-defined]
    sys.modules["pymeshlab"] = placeholder
    logger.warning("pymeshlab is not installed: hy3dgen's mesh postprocessors are unavailable (sampling is unaffected)")
    return True


__all__ = ["DEFAULT_SHAPE_MODEL", "DEFAULT_SHAPE_SUBFOLDER", "SHAPE_VARIANTS", "ShapeVariant", "allow_missing_pymeshlab",
           "hy3dgen_models_dir", "load_shape_pipeline", "resolve_shape_model"]
