"""Phases 0 and 1 of a benchmark run: input images, then every (item, configuration)'s shape.

Phase 0 makes input images for rows without one (hy3dgen's text-to-image + background removal).
Phase 1 runs `generate_mesh` per (item, configuration) (mesh, manifest with per-step records,
contact sheets of what the critic saw), renders the final mesh from the *evaluation* cameras
(fixed, the same for every configuration, not the jittered guidance cameras) and writes
`record.json`. All of it goes into a hidden staging folder that is renamed into place when
complete: a configuration's folder exists only when all its outputs were written.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import shutil
import signal
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import EmptySurfaceError
from ..manifest import write_manifest
from ..run import OutputPlan
from .benchset import BenchItem
from .cache import (
    CRITIC_VIEWS_DIR,
    EVAL_VIEWS_DIR,
    MANIFEST_FILE,
    MESH_FILE,
    R_PLOT,
    RECORD_FILE,
    STAGING_MARK,
    finished_record,
    fingerprint_differences,
    generation_fingerprint,
    item_image_key,
    json_roundtrip,
    save_views,
)
from .configs import BASE, BenchConfig
from .settings import BenchRun, EvalViews, GenerationSettings, RunPaths, ShardStats

logger = logging.getLogger(__name__)

# Fault injection for the resume test: with this set to N, a process SIGKILLs itself in the middle
# of its (N+1)-th (item, configuration), after N were committed and while the next one's staging
# folder holds its mesh and views but no record. The test thus interrupts at a known point instead of racing
# a poll against the workers. Unset in normal use.
KILL_AFTER_ENV = "VLM3D_TTG_BENCH_SIGKILL_AFTER"


def free_memory() -> None:
    """Release what the phase that just ended held (Python garbage, cached CUDA blocks)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
    from ..text2image import TextToImage

    started = time.perf_counter()
    maker = TextToImage.load(settings.text_to_image_model, device=device)
    for item in todo:
        maker(item.prompt, paths.generated_input(item.id), seed=item.seed_for(settings.seed))
        stats.images_made += 1
        logger.info("made the input image of %s by text-to-image", item.id)
    del maker
    free_memory()
    stats.seconds["images"] = time.perf_counter() - started


# ---------------------------------------------------------------------------------------------
# Phase 1: generation.


def load_generation_models(settings: GenerationSettings, device: str) -> Any:
    """The shape pipeline and critic (`LoadedModels`) for this run's preset."""
    from ..generation import load_models

    return load_models(settings.generation_options(device=device), preset=settings.preset, cache_dir=settings.cache_dir)


def render_eval_views(mesh_path: Path | None, eval_views: EvalViews, device: Any) -> torch.Tensor:
    """Images (V, 3, S, S) in [0, 1] of a mesh file from the evaluation cameras (blank background if no mesh)."""
    from ..render import ShadingConfig
    from ..scoring import render_mesh_file

    size = eval_views.image_size
    if mesh_path is None:
        return torch.full((eval_views.num_views, 3, size, size), float(ShadingConfig().background))
    return render_mesh_file(mesh_path, eval_views.cameras(device=device), device=device).cpu()


class ReferenceScorer:
    """r of final meshes under one fixed critic setting (dual query, base's views), so configurations compare.

    For a configuration whose critic setting is that one already, the manifest's final r *is*
    this number and is reused; other configurations (content-only, single-view, ...) are re-scored.
    """

    def __init__(self, models: Any, prompt: str, base_guidance: Any):
        self.models = models
        self.prompt = prompt
        # The paper's critic: reference-free, one image per view, whatever the run's guidance options.
        self.guidance = dataclasses.replace(base_guidance, query="dual", reference=False, view_layout="separate")
        self._reward = None

    def same_setting(self, guidance: Any) -> bool:
        """True when a configuration's final scoring equals the reference scoring."""
        keys = ("query", "num_views", "view_size", "elevation", "backend", "reference", "view_layout")
        return all(getattr(guidance, k) == getattr(self.guidance, k) for k in keys)

    def score(self, mesh_path: Path) -> float:
        """The reference r of a mesh file."""
        from ..critic.families import build_critic
        from ..reward import VLMReward
        from ..scoring import load_mesh_for_scoring

        if self._reward is None:
            critic = build_critic(self.models.vlm, self.models.processor, self.prompt, "dual")
            self._reward = VLMReward.from_config(self.models.backbone, critic, self.guidance)
        mesh = load_mesh_for_scoring(mesh_path)
        return float(self._reward.score_mesh(mesh.vertices, mesh.faces).r)


def config_plan(folder: Path, config: BenchConfig) -> OutputPlan:
    """Every file one (item, configuration) run writes into its (staging) folder, as `run.OutputPlan` (the
    plan `generate` checks and writes as one unit): the mesh, its manifest, the contact sheets of what
    the critic saw and, guided, the r plot."""
    return OutputPlan(folder / MESH_FILE, folder / MANIFEST_FILE, plot=folder / R_PLOT if config.guided else None,
                      views_dir=folder / CRITIC_VIEWS_DIR, candidates=config.search.searching)


def generate_one(
    item: BenchItem,
    config: BenchConfig,
    run: BenchRun,
    *,
    models: Any,
    fingerprint: dict[str, Any],
    reference: ReferenceScorer,
    device: Any,
    before_record: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """Generate one (item, configuration) into a staging folder and rename it into place; return its record.

    `before_record(staging)` is called when the staging folder holds everything but the record (a test hook).
    """
    target = run.paths.config(item.id, config.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{config.name}{STAGING_MARK}{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    started = time.perf_counter()
    seed = item.seed_for(run.settings.seed) + config.seed_offset
    try:
        outcome = _sample_config(item, config, run, config_plan(staging, config), models=models, seed=seed)
        images = render_eval_views(outcome["mesh_path"], run.eval_views, device)
        save_views(staging / EVAL_VIEWS_DIR, images)
        if before_record is not None:
            before_record(staging)
        if outcome["status"] != "ok":
            final_r_reference = None
        elif reference.same_setting(config.guidance):
            final_r_reference = outcome["final_r"]
        else:
            final_r_reference = reference.score(outcome["mesh_path"])
        record = {"id": uuid.uuid4().hex, "item": item.id, "config": config.name, "status": outcome["status"],
                  "error": outcome["error"], "seed": seed, "final_r": outcome["final_r"],
                  "final_p_yes": outcome["final_p_yes"], "final_r_reference": final_r_reference,
                  "faces": outcome["faces"],
                  "compute": outcome["compute"],  # the run's counted work (vlm3d_ttg.search.Compute)
                  "seconds": time.perf_counter() - started, "fingerprint": fingerprint}
        write_manifest(staging / RECORD_FILE, record)
        if target.exists():  # a stale or damaged result being regenerated: replace it
            shutil.rmtree(target)
        os.rename(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return record


def _sample_config(item: BenchItem, config: BenchConfig, run: BenchRun, plan: OutputPlan, *, models: Any,
                   seed: int) -> dict[str, Any]:
    """One (item, configuration) run through `generation.generate_mesh` (the `generate` path) into `plan`'s
    files, checked first; what the record takes from it (an empty final shape is status "empty", no mesh)."""
    from ..generation import generate_mesh

    plan.check({"the item's image": condition_image(item, run.paths)})
    outcome = {"status": "ok", "error": None, "final_r": None, "final_p_yes": None, "faces": 0, "compute": None,
               "mesh_path": plan.out}
    try:
        result = generate_mesh(models, image=condition_image(item, run.paths), prompt=item.prompt, out=plan.out,
                               manifest_path=plan.manifest, guidance=config.guidance,
                               options=run.settings.generation_options(seed=seed), views_dir=plan.views_dir,
                               keep_views="summary" if config.guided else "none", plot_path=plan.plot, progress=False,
                               search=config.search)
    except EmptySurfaceError as exc:
        logger.warning("%s/%s: the final shape is empty (counted as a failure in every metric)", item.id, config.name)
        return {**outcome, "status": "empty", "error": str(exc), "mesh_path": None}
    compute = json.loads(plan.manifest.read_text(encoding="utf-8")).get("compute")
    return {**outcome, "final_r": result.final_r, "final_p_yes": result.final_p_yes, "faces": result.faces,
            "compute": compute}


def _sigkill_hook(stats: ShardStats) -> Callable[[Path], None] | None:
    """The `before_record` hook that $VLM3D_TTG_BENCH_SIGKILL_AFTER asks for (None when unset)."""
    value = os.environ.get(KILL_AFTER_ENV)
    if not value:
        return None
    kill_after = int(value)

    def hook(staging: Path) -> None:
        if stats.generated < kill_after:
            return
        logger.warning("%s=%d: SIGKILLing this process (pid %d) with %s unfinished", KILL_AFTER_ENV, kill_after,
                       os.getpid(), staging)
        for handler in logging.getLogger().handlers:
            handler.flush()  # SIGKILL runs no cleanup: make sure the test sees why the process died
        os.kill(os.getpid(), signal.SIGKILL)

    return hook


def generate_shard(items: list[BenchItem], run: BenchRun, device: str, stats: ShardStats, *, redo_stale: bool = False) -> None:
    """Phase 1 on this process's items: every unfinished (item, configuration), models loaded only if needed.

    A finished folder is skipped when its files are whole and (with `redo_stale`) its fingerprint
    is this run's; a damaged one is named in a warning and regenerated.
    """
    started = time.perf_counter()
    sigkill_hook = _sigkill_hook(stats)
    models = None
    reference: ReferenceScorer | None = None
    base_guidance = next(c.guidance for c in run.configs if c.name == BASE)
    for item in items:
        image_key = item_image_key(item, run.settings)
        reference = None
        for config in run.configs:
            fingerprint = json_roundtrip(generation_fingerprint(item, config, run.settings, run.eval_views, image_key))
            record = finished_record(run.paths.config(item.id, config.name), run.eval_views)
            if record is not None and (not redo_stale or not fingerprint_differences(record.get("fingerprint"), fingerprint)):
                stats.skipped += 1
                logger.info("%s/%s: finished earlier, skipped", item.id, config.name)
                continue
            if models is None:
                models = load_generation_models(run.settings, device)
            if reference is None:
                reference = ReferenceScorer(models, item.prompt, base_guidance)
            record = generate_one(item, config, run, models=models, fingerprint=fingerprint, reference=reference,
                                  device=device, before_record=sigkill_hook)
            stats.generated += 1
            stats.empty += record["status"] == "empty"
            logger.info("%s/%s: generated in %.1f s (final r %s)", item.id, config.name, record["seconds"],
                        "n/a" if record["final_r"] is None else f"{record['final_r']:+.3f}")
    del models, reference  # the scorer holds the models too
    free_memory()
    stats.seconds["generation"] = time.perf_counter() - started
