"""The quality benchmark's runner: check a run, then generate, render and measure this process's share.

Work is split by item over processes (`vlm3d_ttg.shards`: accelerate's `PartialState`; one process per GPU, or
several on a CPU). Each process runs three phases on its items, then all meet at a barrier and
the main process merges (`vlm3d_ttg.bench.report`):

0. input images for rows without one (`generate.make_missing_images`);
1. generation of every (item, configuration) into a staging folder renamed into place when
   complete (`generate.generate_shard`);
2. evaluation: per-item metrics and the comparison sheet (`evaluate.evaluate_shard`).

The modules of `vlm3d_ttg.bench`, one idea each: `settings` (what a run is: `BenchRun` and its
parts), `cache` (fingerprints, reading cached files and checking they are whole), `generate`,
`evaluate`, this module (checks before any model loads, and the order of the phases), `report`.

On restart, finished configurations and evaluations are skipped; stale staging folders are
removed. A cached result made with other settings (another guidance scale, another prompt in the
set, another renderer version, ...) is an error, not silently mixed in (`redo_stale=True`
regenerates it). A damaged cached file is named in a warning and its work redone.

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
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from ..io import write_text_atomic
from ..manifest import package_versions
from ..shards import split_pending
from .benchset import BenchItem
from .cache import evaluation_is_current, evaluation_key, find_stale, finished_record, json_roundtrip
from .evaluate import evaluate_shard
from .generate import generate_shard, make_missing_images
from .settings import BenchRun, GenerationSettings, MetricSettings, ShardStats
from ..text2image import check_text_to_image

logger = logging.getLogger(__name__)


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


def check_run(run: BenchRun, *, redo_stale: bool = False) -> list[tuple[str, str, str]]:
    """Everything that can be checked before models load; returns the stale (item, config, how) triples.

    Raises InvalidInputError / ModelNotFoundError for: rows without an image when text-to-image is
    unavailable, missing metric models, and stale cached results (unless `redo_stale`).
    """
    settings, metrics, paths = run.settings, run.metrics, run.paths
    run.eval_views.validate()
    settings.options.validate()  # the one validation path of generation options
    from ..models import critic_family_for

    # The run's view size must suit the critic family (read from --vlm's config with real checkpoints).
    family = critic_family_for(settings.options.vlm, settings.preset, settings.options.critic_family)
    for config in run.configs:
        config.guidance.validate(critic_family=family)
    if not 0.0 < metrics.confidence < 1.0:
        raise InvalidInputError(f"--confidence must be in (0, 1), got {metrics.confidence}")
    if paths.root.exists() and not paths.root.is_dir():
        raise InvalidInputError(f"--out '{paths.root}' exists and is not a folder.")
    check_bench_outputs(run)
    check_bench_resources(run)
    missing_images = [item.id for item in run.bench.items_without_image if not paths.generated_input(item.id).is_file()]
    check_text_to_image(missing_images, settings.text_to_image_model)
    check_metric_models(metrics)
    stale = find_stale(run)
    if stale and not redo_stale:
        listed = "\n".join(f"  - {i}/{c}: {how}" for i, c, how in stale[:10]) + (f"\n  ... and {len(stale) - 10} more" if len(stale) > 10 else "")
        raise InvalidInputError(
            f"{len(stale)} cached result(s) in '{paths.root}' were made with other settings:\n{listed}\n"
            "Fix: use a new --out folder, or pass --redo-stale to regenerate them."
        )
    return stale


def check_bench_resources(run: BenchRun) -> None:
    """The preflight of every (row, configuration) before any generation: the estimated peak memory of
    its run (`vlm3d_ttg.preflight.check_generation`). Rows differ only by their prompt's length, and the
    estimate grows with it, so the row with the longest prompt stands for all; a refusal names it."""
    from ..preflight import check_generation

    if not run.bench.items:
        return
    number, item = max(enumerate(run.bench.items, start=1), key=lambda pair: len(pair[1].prompt))
    for config in run.configs:
        try:
            check_generation(run.settings.options, config.guidance, config.search, prompt=item.prompt,
                             preset=run.settings.preset)
        except InvalidInputError as exc:
            raise InvalidInputError(f"Benchmark row {number} (id '{item.id}'), configuration '{config.name}': {exc}") from None


def check_bench_outputs(run: BenchRun) -> None:
    """Refuse a run whose outputs would replace one of its inputs (the set file, a row's image) or
    each other, or that would replace the folder an input lives in (`vlm3d_ttg.io.check_output_plan`)."""
    from ..io import check_output_plan

    paths = run.paths
    outputs: dict[str, object] = {"run.json": paths.root / "run.json"}
    for name in ("results.md", "results.json", "results.png"):
        outputs[name] = paths.root / name
    for item in run.bench.items_without_image:
        outputs[f"the text-to-image input of row '{item.id}'"] = paths.generated_input(item.id)
    inputs: dict[str, object] = {"--set": run.bench.path}
    inputs.update({f"image of row '{item.id}'": item.image for item in run.bench.items if item.image is not None})
    check_output_plan(outputs, inputs, owned_folders={"the run's items folder": paths.items})


# ---------------------------------------------------------------------------------------------
# The whole run.


def unfinished_items(run: BenchRun, stale_items: set[str] = frozenset()) -> list[BenchItem]:  # type: ignore[assignment]
    """Items with a configuration not generated yet, stale or damaged, or an evaluation missing, damaged or outdated."""
    key = json_roundtrip(evaluation_key(run.metrics, run.eval_views))
    out = []
    for item in run.bench.items:
        # Silent here: every process lists; the process that redoes the item names the damaged file.
        records = {c.name: finished_record(run.paths.config(item.id, c.name), run.eval_views, warn=False)
                   for c in run.configs}
        if item.id in stale_items or not evaluation_is_current(run.paths.item(item.id), key, records, warn=False):
            out.append(item)
    return out


def write_run_file(run: BenchRun, num_processes: int) -> Path:
    """run.json: the settings of this run (overwritten by each run; records keep their own fingerprints)."""
    content = {
        "set": {"path": str(run.bench.path), "name": run.bench.name, "items": [i.id for i in run.bench.items]},
        "configs": [c.to_dict() for c in run.configs],
        # Flat: the report reads steps, cfg_scale and seed next to the preset.
        "generation": {**{k: v for k, v in dataclasses.asdict(run.settings).items() if k != "options"},
                       **run.settings.options.to_dict()},
        "eval_views": dataclasses.asdict(run.eval_views),
        "metrics": dataclasses.asdict(run.metrics),
        "num_processes": num_processes,
        "versions": package_versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return write_text_atomic(run.paths.root / "run.json", json.dumps(content, indent=2) + "\n")


def prepare_tiny_models(settings: GenerationSettings) -> dict[str, Path]:
    """Write the tiny shape/critic checkpoints and tiny metric models once; return the metric models' paths."""
    from ..tiny import ensure_tiny_shape_model, ensure_tiny_vlm, tiny_cache_dir
    from ..tiny.metric_models import ensure_tiny_metric_models

    ensure_tiny_shape_model(settings.cache_dir)
    ensure_tiny_vlm(settings.cache_dir)
    return ensure_tiny_metric_models(tiny_cache_dir(settings.cache_dir) / "metric_models")


def run_shard(
    state: Any,
    run: BenchRun,
    *,
    redo_stale: bool = False,
    stale_items: set[str] = frozenset(),  # type: ignore[assignment]
) -> ShardStats:
    """This process's share of the work (phases 0–2); `state` is accelerate's PartialState.

    Call it on every process after `check_run` (whose stale items, if regenerated, are `stale_items`);
    the pending items are listed and split between barriers, so every process sees the same list.
    """
    mine, pending = split_pending(state, lambda: unfinished_items(run, stale_items))
    stats = ShardStats(items_done_before=len(run.bench.items) - len(pending))
    device = str(state.device)
    logger.info("process %d/%d (pid %d): %d of %d pending items on %s", state.process_index, state.num_processes,
                os.getpid(), len(mine), len(pending), device)
    make_missing_images(mine, run.settings, run.paths, device, stats)
    generate_shard(mine, run, device, stats, redo_stale=redo_stale)
    evaluate_shard(mine, run, device, stats)
    return stats
