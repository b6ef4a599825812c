"""The quality benchmark's runner: generate every (item, configuration), render it, measure it, merge.

Work is split by item over processes (accelerate's `PartialState`; one process per GPU, or
several on a CPU). Each process runs three phases on its items, then all meet at a barrier and
the main process merges (`vlm3d_ttg.bench.report`):

0. input images for rows without one (hy3dgen's text-to-image + background removal);
1. generation: for each configuration, `generate_mesh` (mesh, manifest with per-step records,
   contact sheets of what the critic saw), then renders of the final mesh from the *evaluation*
   cameras (fixed, the same for every configuration, not the jittered guidance cameras) and
   `record.json`. All of it is written into a hidden staging folder that is renamed into place
   when complete: a configuration's folder exists only when all its outputs were written;
2. evaluation: per item, CLIP-D of every configuration, Inception and CLIP features of the front
   view and of the input image (the FID reference), the geometry score of each mesh, and the
   pairwise judge of each configuration against base; `eval.json` is written last.

On restart, finished configurations and evaluations are skipped; stale staging folders are
removed. A cached result made with other settings (another guidance scale, another prompt in the
set, ...) is an error, not silently mixed in (`redo_stale=True` regenerates it).

Layout of the output folder:

    run.json                     settings of the latest run
    inputs/<id>.png              text-to-image inputs of rows without an image
    items/<id>/<config>/         mesh.glb, manifest.json, record.json, eval_views/view_XX.png,
                                 critic_views/*.png (what the critic saw), r.png (guided only)
    items/<id>/eval.json         per-item metrics; features.npz (front-view and reference features)
    items/<id>/compare.png       the evaluation views of every configuration, one row each
    results.md / results.json / results.png   written by the main process after the barrier
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from ..errors import EmptySurfaceError, InvalidInputError
from ..io import atomic_path, write_text_atomic
from ..manifest import package_versions, write_manifest
from .benchset import BenchItem, BenchSet
from .configs import BASE, BenchConfig
from .text2image import DEFAULT_TEXT_TO_IMAGE_MODEL, check_text_to_image

if TYPE_CHECKING:
    from ..render import Cameras

logger = logging.getLogger(__name__)

RECORD_FILE = "record.json"
EVAL_FILE = "eval.json"
FEATURES_FILE = "features.npz"
STAGING_MARK = ".partial-"
# Bump when what phase 1 or phase 2 writes changes meaning, so old caches are recomputed.
GENERATION_FORMAT = 1
EVAL_FORMAT = 1

Preset = Literal["real", "tiny"]


@dataclass(frozen=True)
class EvalViews:
    """The fixed evaluation cameras: `num_views` around the object from azimuth 0 (the front, view 0)."""

    num_views: int = 6
    image_size: int = 448
    elevation: float = 10.0

    def cameras(self, device: Any = None) -> "Cameras":
        """The orbit cameras (un-jittered, the same for every configuration)."""
        from ..render import orbit_cameras

        return orbit_cameras(self.num_views, elevation_deg=self.elevation, image_size=self.image_size, device=device)

    def validate(self) -> "EvalViews":
        """Raise InvalidInputError on a bad value; return self."""
        from ..render import check_image_size

        if self.num_views < 1:
            raise InvalidInputError(f"--eval-views must be ≥ 1, got {self.num_views}")
        check_image_size(self.image_size)
        if not -89 <= self.elevation <= 89:
            raise InvalidInputError(f"--eval-elevation must be within ±89°, got {self.elevation}")
        return self


@dataclass(frozen=True)
class GenerationSettings:
    """How shapes are generated (shared by every configuration) and where the models come from."""

    preset: Preset = "real"
    seed: int = 0
    steps: int = 50
    cfg: float = 5.0
    octree_resolution: int = 384
    shape_model: str = "tencent/Hunyuan3D-2"
    shape_subfolder: str | None = None
    vlm: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    dtype: str = "auto"
    vlm_dtype: str = "auto"
    checkpointing: bool = False
    text_to_image_model: str = DEFAULT_TEXT_TO_IMAGE_MODEL
    cache_dir: str | None = None  # tiny checkpoints ($VLM3D_TTG_CACHE when None)

    def models_key(self) -> dict[str, Any]:
        """What identifies the generating models (part of every cached result's fingerprint)."""
        if self.preset == "tiny":
            return {"preset": "tiny"}
        return {"preset": "real", "shape": self.shape_model, "subfolder": self.shape_subfolder, "critic": self.vlm,
                "dtype": self.dtype, "vlm_dtype": self.vlm_dtype}


@dataclass(frozen=True)
class MetricSettings:
    """Which metric models to use (None: that metric is off) and how to summarise."""

    clip: str | None = None
    inception: str | None = None
    judge: str | None = None
    n_resamples: int = 1000
    confidence: float = 0.95

    def eval_key(self, eval_views: EvalViews) -> dict[str, Any]:
        """What identifies a per-item evaluation (recomputed when it changes)."""
        return {"format": EVAL_FORMAT, "clip": self.clip, "inception": self.inception, "judge": self.judge,
                "eval_views": dataclasses.asdict(eval_views)}


@dataclass
class RunPaths:
    """Where everything of a run lives (see the module docstring)."""

    root: Path

    @property
    def items(self) -> Path:
        """Folder of the per-item outputs."""
        return self.root / "items"

    @property
    def inputs(self) -> Path:
        """Folder of the text-to-image inputs."""
        return self.root / "inputs"

    def item(self, item_id: str) -> Path:
        """An item's folder."""
        return self.items / item_id

    def config(self, item_id: str, config_name: str) -> Path:
        """An (item, configuration)'s folder (present only when finished)."""
        return self.items / item_id / config_name

    def generated_input(self, item_id: str) -> Path:
        """Where text-to-image writes an item's input image."""
        return self.inputs / f"{item_id}.png"


@dataclass
class ShardStats:
    """What one process did: counts per phase (generated vs found finished)."""

    generated: int = 0
    skipped: int = 0
    evaluated: int = 0
    eval_skipped: int = 0
    images_made: int = 0
    empty: int = 0
    items_done_before: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Fingerprints: what a cached result was made from.


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def item_image_key(item: BenchItem, settings: GenerationSettings) -> str:
    """The conditioning image's identity: its bytes' hash, or how text-to-image will make it."""
    if item.image is None:
        return f"text-to-image:{settings.text_to_image_model}:seed={item.seed_for(settings.seed)}"
    return f"sha256:{file_sha256(item.image)}"


# What an unguided run's outputs depend on among the guidance fields: only the final scoring by
# the critic (views, query, renderer). Changing λ or the window must not invalidate a cached base.
UNGUIDED_FINGERPRINT_FIELDS = ("enabled", "num_views", "view_size", "elevation", "query", "backend")


def generation_fingerprint(
    item: BenchItem, config: BenchConfig, settings: GenerationSettings, eval_views: EvalViews, image_key: str
) -> dict[str, Any]:
    """Everything that decides an (item, configuration)'s outputs; compared on restart."""
    described = config.to_dict()
    if not config.guided:
        described["guidance"] = {k: described["guidance"][k] for k in UNGUIDED_FINGERPRINT_FIELDS}
    described.pop("description", None)
    return {
        "format": GENERATION_FORMAT,
        "item": {"id": item.id, "prompt": item.prompt, "image": image_key, "seed": item.seed_for(settings.seed)},
        "config": described,
        "generation": {"steps": settings.steps, "cfg": settings.cfg, "octree_resolution": settings.octree_resolution,
                       "models": settings.models_key()},
        "eval_views": dataclasses.asdict(eval_views),
    }


def _json_roundtrip(value: Any) -> Any:
    return json.loads(json.dumps(value))


def fingerprint_differences(cached: Any, expected: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two fingerprints differ, with both values."""
    if isinstance(cached, dict) and isinstance(expected, dict):
        out: list[str] = []
        for key in sorted(set(cached) | set(expected)):
            out += fingerprint_differences(cached.get(key), expected.get(key), f"{prefix}{key}.")
        return out
    if cached != expected:
        return [f"{prefix.rstrip('.')}: cached {cached!r}, now {expected!r}"]
    return []


def read_record(folder: Path) -> dict[str, Any] | None:
    """The record of a finished configuration folder, or None if it is not finished."""
    path = folder / RECORD_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------
# Checks before any heavy work.


def _hub_model_missing(model: str) -> bool:
    if Path(os.path.expanduser(model)).is_dir():
        return False
    from huggingface_hub import try_to_load_from_cache

    return not isinstance(try_to_load_from_cache(model, "config.json"), str)


def check_metric_models(metrics: MetricSettings) -> None:
    """Raise ModelNotFoundError for a metric model that is neither a local folder/file nor in the hub cache."""
    from ..errors import ModelNotFoundError
    from ..metrics.features import find_inception_weights

    if metrics.inception is not None:
        find_inception_weights(metrics.inception)
    for model, what in ((metrics.clip, "CLIP"), (metrics.judge, "judge")):
        if model is not None and _hub_model_missing(model):
            from huggingface_hub.constants import HF_HUB_CACHE

            raise ModelNotFoundError(
                model,
                [os.path.expanduser(model), f"{HF_HUB_CACHE} (hub cache)"],
                f"on a machine with hub access run `huggingface-cli download {model}`, or pass a local "
                f"save_pretrained folder ({what}); or turn the metric off (--no-{'clip' if what == 'CLIP' else 'judge'}).",
            )


def find_stale(
    bench: BenchSet, configs: list[BenchConfig], settings: GenerationSettings, eval_views: EvalViews, paths: RunPaths
) -> list[tuple[str, str, str]]:
    """Finished (item, configuration) folders whose fingerprint differs from this run's: (item, config, how)."""
    stale = []
    for item in bench.items:
        image_key = item_image_key(item, settings)
        for config in configs:
            record = read_record(paths.config(item.id, config.name))
            if record is None:
                continue
            expected = _json_roundtrip(generation_fingerprint(item, config, settings, eval_views, image_key))
            differences = fingerprint_differences(record.get("fingerprint"), expected)
            if differences:
                stale.append((item.id, config.name, "; ".join(differences[:3])))
    return stale


def check_run(
    bench: BenchSet,
    configs: list[BenchConfig],
    settings: GenerationSettings,
    eval_views: EvalViews,
    metrics: MetricSettings,
    paths: RunPaths,
    *,
    redo_stale: bool = False,
) -> list[tuple[str, str, str]]:
    """Everything that can be checked before models load; returns the stale (item, config, how) triples.

    Raises InvalidInputError / ModelNotFoundError for: rows without an image when text-to-image is
    unavailable, missing metric models, and stale cached results (unless `redo_stale`).
    """
    eval_views.validate()
    if settings.steps < 2:
        raise InvalidInputError(f"--steps must be ≥ 2, got {settings.steps}")
    if settings.octree_resolution < 16:
        raise InvalidInputError(f"--octree-resolution must be ≥ 16, got {settings.octree_resolution}")
    if not 0.0 < metrics.confidence < 1.0:
        raise InvalidInputError(f"--confidence must be in (0, 1), got {metrics.confidence}")
    if paths.root.exists() and not paths.root.is_dir():
        raise InvalidInputError(f"--out '{paths.root}' exists and is not a folder.")
    missing_images = [item.id for item in bench.items_without_image if not paths.generated_input(item.id).is_file()]
    check_text_to_image(missing_images, settings.text_to_image_model)
    check_metric_models(metrics)
    stale = find_stale(bench, configs, settings, eval_views, paths)
    if stale and not redo_stale:
        listed = "\n".join(f"  - {i}/{c}: {how}" for i, c, how in stale[:10]) + (f"\n  ... and {len(stale) - 10} more" if len(stale) > 10 else "")
        raise InvalidInputError(
            f"{len(stale)} cached result(s) in '{paths.root}' were made with other settings:\n{listed}\n"
            "Fix: use a new --out folder, or pass --redo-stale to regenerate them."
        )
    return stale


def remove_staging_folders(paths: RunPaths) -> int:
    """Delete staging folders left by an interrupted run (call on the main process, before work starts)."""
    removed = 0
    if not paths.items.is_dir():
        return 0
    for item_dir in paths.items.iterdir():
        if not item_dir.is_dir():
            continue
        for child in item_dir.iterdir():
            if child.is_dir() and STAGING_MARK in child.name:
                shutil.rmtree(child, ignore_errors=True)
                removed += 1
    return removed


# ---------------------------------------------------------------------------------------------
# Phase 0: input images.


def condition_image(item: BenchItem, paths: RunPaths) -> Path:
    """The conditioning image of an item: its own, or the one text-to-image made for it."""
    return item.image if item.image is not None else paths.generated_input(item.id)


def make_missing_images(items: list[BenchItem], settings: GenerationSettings, paths: RunPaths, device: str, stats: ShardStats) -> None:
    """Phase 0: text-to-image inputs for this shard's rows without an image (skipping those already made)."""
    todo = [item for item in items if item.image is None and not paths.generated_input(item.id).is_file()]
    if not todo:
        return
    from .text2image import TextToImage

    started = time.perf_counter()
    maker = TextToImage.load(settings.text_to_image_model, device=device)
    for item in todo:
        maker(item.prompt, paths.generated_input(item.id), seed=item.seed_for(settings.seed))
        stats.images_made += 1
        logger.info("made the input image of %s by text-to-image", item.id)
    del maker
    _free_memory()
    stats.seconds["images"] = time.perf_counter() - started


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# Phase 1: generation.


def load_generation_models(settings: GenerationSettings, device: str) -> Any:
    """The shape pipeline and critic (`LoadedModels`) for this run's preset."""
    from ..generation import load_models

    return load_models(
        tiny=settings.preset == "tiny",
        shape_model=settings.shape_model,
        shape_subfolder=settings.shape_subfolder,
        vlm=settings.vlm,
        device=device,
        dtype=settings.dtype,
        vlm_dtype=settings.vlm_dtype,
        cache_dir=settings.cache_dir,
    )


def render_eval_views(mesh_path: Path | None, eval_views: EvalViews, device: Any) -> torch.Tensor:
    """Images (V, 3, S, S) in [0, 1] of a mesh file from the evaluation cameras (blank background if no mesh)."""
    from ..render import ShadingConfig
    from ..scoring import render_mesh_file

    size = eval_views.image_size
    if mesh_path is None:
        return torch.full((eval_views.num_views, 3, size, size), float(ShadingConfig().background))
    return render_mesh_file(mesh_path, eval_views.cameras(device=device), device=device).cpu()


def save_views(folder: Path, images: torch.Tensor) -> list[Path]:
    """Write views (V, 3, H, W) in [0, 1] as PNGs view_00.png, ... (lossless, uint8)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    written = []
    for index, array in enumerate(pixels):
        path = folder / f"view_{index:02d}.png"
        with atomic_path(path) as tmp:
            Image.fromarray(np.ascontiguousarray(array), "RGB").save(tmp, format="PNG")
        written.append(path)
    return written


def load_views(folder: Path) -> torch.Tensor:
    """The views saved by `save_views`, as (V, 3, H, W) float in [0, 1]."""
    from PIL import Image

    files = sorted(folder.glob("view_*.png"))
    if not files:
        raise FileNotFoundError(f"No views in {folder}")
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


class ReferenceScorer:
    """r of final meshes under one fixed critic setting (dual query, base's views), so configurations compare.

    For a configuration whose critic setting is that one already, the manifest's final r *is*
    this number and is reused; other configurations (content-only, single-view, ...) are re-scored.
    """

    def __init__(self, models: Any, prompt: str, base_guidance: Any):
        self.models = models
        self.prompt = prompt
        self.guidance = dataclasses.replace(base_guidance, query="dual")
        self._reward = None

    def same_setting(self, guidance: Any) -> bool:
        """True when a configuration's final scoring equals the reference scoring."""
        keys = ("query", "num_views", "view_size", "elevation", "backend")
        return all(getattr(guidance, k) == getattr(self.guidance, k) for k in keys)

    def score(self, mesh_path: Path) -> float:
        """The reference r of a mesh file."""
        from ..critic import VLMCritic
        from ..reward import VLMReward
        from ..scoring import load_mesh_for_scoring

        if self._reward is None:
            critic = VLMCritic(self.models.vlm, self.models.processor, self.prompt, "dual")
            self._reward = VLMReward.from_config(self.models.pipeline.vae, critic, self.guidance)
        mesh = load_mesh_for_scoring(mesh_path)
        return float(self._reward.score_mesh(mesh.vertices, mesh.faces).r)


def generate_one(
    item: BenchItem,
    config: BenchConfig,
    *,
    models: Any,
    settings: GenerationSettings,
    eval_views: EvalViews,
    paths: RunPaths,
    fingerprint: dict[str, Any],
    reference: ReferenceScorer,
    device: Any,
) -> dict[str, Any]:
    """Generate one (item, configuration) into a staging folder and rename it into place; return its record."""
    from ..generation import generate_mesh

    target = paths.config(item.id, config.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{config.name}{STAGING_MARK}{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    started = time.perf_counter()
    seed = item.seed_for(settings.seed) + config.seed_offset
    status, final_r, final_p_yes, faces, error = "ok", None, None, 0, None
    mesh_path: Path | None = staging / "mesh.glb"
    try:
        try:
            result = generate_mesh(
                models,
                image=condition_image(item, paths),
                prompt=item.prompt,
                out=mesh_path,
                manifest_path=staging / "manifest.json",
                guidance=config.guidance,
                seed=seed,
                steps=settings.steps,
                cfg=settings.cfg,
                octree_resolution=settings.octree_resolution,
                checkpointing=settings.checkpointing,
                views_dir=staging / "critic_views",
                keep_views="summary" if config.guided else "none",
                plot_path=staging / "r.png" if config.guided else None,
                progress=False,
            )
            final_r, final_p_yes, faces = result.final_r, result.final_p_yes, result.faces
        except EmptySurfaceError as exc:
            status, error, mesh_path = "empty", str(exc), None
            logger.warning("%s/%s: the final shape is empty (counted as a failure in every metric)", item.id, config.name)
        images = render_eval_views(mesh_path, eval_views, device)
        save_views(staging / "eval_views", images)
        if status == "ok" and reference.same_setting(config.guidance):
            final_r_reference = final_r
        elif status == "ok":
            final_r_reference = reference.score(mesh_path)
        else:
            final_r_reference = None
        record = {
            "id": uuid.uuid4().hex,
            "item": item.id,
            "config": config.name,
            "status": status,
            "error": error,
            "seed": seed,
            "final_r": final_r,
            "final_p_yes": final_p_yes,
            "final_r_reference": final_r_reference,
            "faces": faces,
            "seconds": time.perf_counter() - started,
            "fingerprint": fingerprint,
        }
        write_manifest(staging / RECORD_FILE, record)
        if target.exists():  # a stale result being regenerated (--redo-stale): replace it
            shutil.rmtree(target)
        os.rename(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return record


def generate_shard(
    items: list[BenchItem],
    configs: list[BenchConfig],
    settings: GenerationSettings,
    eval_views: EvalViews,
    paths: RunPaths,
    device: str,
    stats: ShardStats,
    *,
    redo_stale: bool = False,
) -> None:
    """Phase 1 on this process's items: every unfinished (item, configuration), models loaded only if needed."""
    started = time.perf_counter()
    models = None
    reference: ReferenceScorer | None = None
    base_guidance = next(c.guidance for c in configs if c.name == BASE)
    for item in items:
        image_key = item_image_key(item, settings)
        reference = None
        for config in configs:
            fingerprint = _json_roundtrip(generation_fingerprint(item, config, settings, eval_views, image_key))
            record = read_record(paths.config(item.id, config.name))
            if record is not None and (not redo_stale or not fingerprint_differences(record.get("fingerprint"), fingerprint)):
                stats.skipped += 1
                logger.info("%s/%s: finished earlier, skipped", item.id, config.name)
                continue
            if models is None:
                models = load_generation_models(settings, device)
            if reference is None:
                reference = ReferenceScorer(models, item.prompt, base_guidance)
            record = generate_one(item, config, models=models, settings=settings, eval_views=eval_views, paths=paths,
                                  fingerprint=fingerprint, reference=reference, device=device)
            stats.generated += 1
            stats.empty += record["status"] == "empty"
            logger.info("%s/%s: generated in %.1f s (final r %s)", item.id, config.name, record["seconds"],
                        "n/a" if record["final_r"] is None else f"{record['final_r']:+.3f}")
    del models, reference  # the scorer holds the models too
    _free_memory()
    stats.seconds["generation"] = time.perf_counter() - started


# ---------------------------------------------------------------------------------------------
# Phase 2: per-item evaluation.


@dataclass
class MetricModels:
    """The loaded metric models (None where a metric is off)."""

    clip: Any = None
    inception: Any = None
    judge: Any = None


def load_metric_models(metrics: MetricSettings, device: str) -> MetricModels:
    """Load CLIP, Inception-v3 and the judge from local paths / the hub cache (never downloads)."""
    from ..metrics import load_clip, load_inception, load_judge

    return MetricModels(
        clip=load_clip(metrics.clip, device=device) if metrics.clip else None,
        inception=load_inception(metrics.inception, device=device) if metrics.inception else None,
        judge=load_judge(metrics.judge, device=device) if metrics.judge else None,
    )


def reference_image(path: Path, size: int) -> torch.Tensor:
    """The FID reference of an item: its input image over white, padded to a square, resized to `size` (3, S, S)."""
    from PIL import Image

    with Image.open(path) as opened:
        rgba = opened.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    side = max(rgb.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(rgb, ((side - rgb.size[0]) // 2, (side - rgb.size[1]) // 2))
    square = square.resize((size, size), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(square).copy()).permute(2, 0, 1).float() / 255.0


def evaluate_item(
    item: BenchItem,
    configs: list[BenchConfig],
    records: dict[str, dict[str, Any]],
    metric_models: MetricModels,
    eval_views: EvalViews,
    paths: RunPaths,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Per-item metrics of every configuration (JSON-ready) and the features FID/KID need."""
    from ..metrics import clip_distance, geometry_score, judge_pair

    views = {c.name: load_views(paths.config(item.id, c.name) / "eval_views") for c in configs}
    reference = reference_image(condition_image(item, paths), eval_views.image_size)
    per_config: dict[str, dict[str, Any]] = {}
    features: dict[str, np.ndarray] = {}
    text_embedding = metric_models.clip.text_embeddings(item.prompt)[0] if metric_models.clip else None
    # FID / CLIP-FID / KID features: the front view (view 0) of every configuration and the reference, one batch.
    front = torch.stack([views[c.name][0] for c in configs] + [reference])
    feature_names = [c.name for c in configs] + ["reference"]
    for model_name, extract in (("clip", metric_models.clip.image_features if metric_models.clip else None),
                                ("inception", metric_models.inception)):
        if extract is not None:
            rows = extract(front)
            for k, name in enumerate(feature_names):
                features[f"{model_name}/{name}"] = rows[k : k + 1]
    for config in configs:
        record = records[config.name]
        entry: dict[str, Any] = {"status": record["status"], "record_id": record["id"]}
        if metric_models.clip is not None:
            entry["clip_d"] = clip_distance(text_embedding, metric_models.clip.image_embeddings(views[config.name]))
        if record["status"] == "ok":
            entry["geometry"] = geometry_score(paths.config(item.id, config.name) / "mesh.glb").to_dict()
        else:
            entry["geometry"] = None
        per_config[config.name] = entry
    judge: dict[str, dict[str, float]] = {}
    if metric_models.judge is not None:
        for config in configs:
            if config.name == BASE:
                continue
            pair = judge_pair(metric_models.judge, item.prompt, views[BASE], views[config.name])
            judge[config.name] = {"diff_guided_first": pair.diff_guided_first, "diff_base_first": pair.diff_base_first,
                                  "outcome": pair.outcome}
    write_compare_sheet(paths.item(item.id) / "compare.png", configs, views, records, per_config, reference)
    return {"configs": per_config, "judge": judge}, features


def write_compare_sheet(path: Path, configs: list[BenchConfig], views: dict[str, torch.Tensor],
                        records: dict[str, dict[str, Any]], per_config: dict[str, dict[str, Any]],
                        reference: torch.Tensor | None = None) -> Path:
    """A PNG: the input image, then the evaluation views of each configuration in a row, labelled with its numbers."""
    from PIL import Image, ImageDraw, ImageFont

    label_width, margin = 170, 4
    n_views, size = views[configs[0].name].shape[0], views[configs[0].name].shape[-1]
    cell = max(size, 112)  # small renders are enlarged (nearest) so the sheet stays readable
    rows: list[tuple[list[str], torch.Tensor]] = []
    if reference is not None:
        rows.append((["input image", "(FID reference)"], reference[None]))
    for config in configs:
        record, entry = records[config.name], per_config[config.name]
        lines = [config.name]
        if record.get("final_r_reference") is not None:
            lines.append(f"final r {record['final_r_reference']:+.3f}")
        lines.append(f"Geo {entry['geometry']['score']:.3f}" if entry.get("geometry") else "EMPTY shape")
        if entry.get("clip_d") is not None:
            lines.append(f"CLIP-D {entry['clip_d']:.3f}")
        rows.append((lines, views[config.name]))
    sheet = Image.new("RGB", (label_width + n_views * (cell + margin) + margin, len(rows) * (cell + margin) + margin), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default()
    for row, (lines, images) in enumerate(rows):
        y = margin + row * (cell + margin)
        draw.multiline_text((margin, y + 4), "\n".join(lines), fill="black", font=font)
        pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for k, array in enumerate(pixels):
            image = Image.fromarray(np.ascontiguousarray(array), "RGB").resize((cell, cell), Image.Resampling.NEAREST)
            sheet.paste(image, (label_width + margin + k * (cell + margin), y))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path


def evaluate_shard(
    items: list[BenchItem],
    configs: list[BenchConfig],
    metrics: MetricSettings,
    eval_views: EvalViews,
    paths: RunPaths,
    device: str,
    stats: ShardStats,
) -> None:
    """Phase 2 on this process's items: evaluate those whose evaluation is missing or outdated."""
    started = time.perf_counter()
    key = _json_roundtrip(metrics.eval_key(eval_views))
    metric_models: MetricModels | None = None
    for item in items:
        records = {c.name: read_record(paths.config(item.id, c.name)) for c in configs}
        missing = [name for name, record in records.items() if record is None]
        if missing:
            raise RuntimeError(f"{item.id}: configurations {missing} were not generated; cannot evaluate")
        record_ids = {name: record["id"] for name, record in records.items()}  # type: ignore[index]
        eval_path = paths.item(item.id) / EVAL_FILE
        if evaluation_is_current(paths.item(item.id), key, records):
            stats.eval_skipped += 1
            continue
        if metric_models is None:
            metric_models = load_metric_models(metrics, device)
        evaluation, features = evaluate_item(item, configs, records, metric_models, eval_views, paths)  # type: ignore[arg-type]
        feature_path = paths.item(item.id) / FEATURES_FILE
        with atomic_path(feature_path) as tmp:
            np.savez(tmp, **{k.replace("/", "__"): v for k, v in features.items()})
        content = {"item": item.id, "prompt": item.prompt, "eval_key": key, "record_ids": record_ids,
                   "features_sha256": file_sha256(feature_path), **evaluation}
        write_manifest(eval_path, content)  # written last: its presence means the item is evaluated
        stats.evaluated += 1
        logger.info("%s: evaluated", item.id)
    del metric_models
    _free_memory()
    stats.seconds["evaluation"] = time.perf_counter() - started


def load_features(item_dir: Path) -> dict[str, np.ndarray]:
    """The features an evaluation wrote, keyed 'inception/<config>', 'clip/reference', ..."""
    with np.load(item_dir / FEATURES_FILE) as data:
        return {k.replace("__", "/"): data[k] for k in data.files}


# ---------------------------------------------------------------------------------------------
# The whole run.


def evaluation_is_current(item_dir: Path, key: dict[str, Any], records: dict[str, dict[str, Any] | None]) -> bool:
    """True when the item's eval.json exists, used this metric setup and evaluated exactly these records."""
    eval_path = item_dir / EVAL_FILE
    if not eval_path.is_file() or any(r is None for r in records.values()):
        return False
    cached = json.loads(eval_path.read_text())
    return cached.get("eval_key") == key and cached.get("record_ids") == {n: r["id"] for n, r in records.items()}  # type: ignore[index]


def unfinished_items(
    bench: BenchSet, configs: list[BenchConfig], metrics: MetricSettings, eval_views: EvalViews, paths: RunPaths,
    stale_items: set[str] = frozenset(),  # type: ignore[assignment]
) -> list[BenchItem]:
    """Items with a configuration not generated yet (or stale), or an evaluation missing or outdated."""
    key = _json_roundtrip(metrics.eval_key(eval_views))
    out = []
    for item in bench.items:
        records = {c.name: read_record(paths.config(item.id, c.name)) for c in configs}
        if item.id in stale_items or not evaluation_is_current(paths.item(item.id), key, records):
            out.append(item)
    return out


def write_run_file(paths: RunPaths, bench: BenchSet, configs: list[BenchConfig], settings: GenerationSettings,
                   eval_views: EvalViews, metrics: MetricSettings, num_processes: int) -> Path:
    """run.json: the settings of this run (overwritten by each run; records keep their own fingerprints)."""
    content = {
        "set": {"path": str(bench.path), "name": bench.name, "items": [i.id for i in bench.items]},
        "configs": [c.to_dict() for c in configs],
        "generation": dataclasses.asdict(settings),
        "eval_views": dataclasses.asdict(eval_views),
        "metrics": dataclasses.asdict(metrics),
        "num_processes": num_processes,
        "versions": package_versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return write_text_atomic(paths.root / "run.json", json.dumps(content, indent=2) + "\n")


def prepare_tiny_models(settings: GenerationSettings) -> dict[str, Path]:
    """Write the tiny shape/critic checkpoints and tiny metric models once; return the metric models' paths."""
    from ..tiny import ensure_tiny_shape_model, ensure_tiny_vlm, tiny_cache_dir
    from ..tiny.metric_models import ensure_tiny_metric_models

    ensure_tiny_shape_model(settings.cache_dir)
    ensure_tiny_vlm(settings.cache_dir)
    return ensure_tiny_metric_models(tiny_cache_dir(settings.cache_dir) / "metric_models")


def run_shard(
    state: Any,
    bench: BenchSet,
    configs: list[BenchConfig],
    settings: GenerationSettings,
    eval_views: EvalViews,
    metrics: MetricSettings,
    paths: RunPaths,
    *,
    redo_stale: bool = False,
    stale_items: set[str] = frozenset(),  # type: ignore[assignment]
) -> ShardStats:
    """This process's share of the work (phases 0–2); `state` is accelerate's PartialState.

    Call it on every process after `check_run` (whose stale items, if regenerated, are `stale_items`);
    the pending items are listed and split between barriers, so every process sees the same list.
    """
    state.wait_for_everyone()
    pending = unfinished_items(bench, configs, metrics, eval_views, paths, stale_items)
    state.wait_for_everyone()  # nobody finishes an item before everyone has listed the pending ones
    stats = ShardStats(items_done_before=len(bench.items) - len(pending))
    with state.split_between_processes(pending) as mine:
        mine = list(mine)
    device = str(state.device)
    logger.info("process %d/%d (pid %d): %d of %d pending items on %s", state.process_index, state.num_processes,
                os.getpid(), len(mine), len(pending), device)
    make_missing_images(mine, settings, paths, device, stats)
    generate_shard(mine, configs, settings, eval_views, paths, device, stats, redo_stale=redo_stale)
    evaluate_shard(mine, configs, metrics, eval_views, paths, device, stats)
    return stats
