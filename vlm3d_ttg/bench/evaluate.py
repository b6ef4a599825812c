"""Phase 2 of a benchmark run: per-item metrics of every configuration, and the comparison sheet.

Per item: CLIP-D of every configuration, Inception and CLIP features of the front view and of the
input image (the FID reference), the geometry score of each mesh, and the pairwise judge of each
configuration against base. `features.npz` is written first and `eval.json` (with the features'
checksum) last, so the presence of a whole `eval.json` means the item is evaluated.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import atomic_path
from ..manifest import write_manifest
from .benchset import BenchItem
from ..images import to_uint8
from .cache import (
    EVAL_FILE,
    EVAL_VIEWS_DIR,
    FEATURES_FILE,
    MESH_FILE,
    evaluation_is_current,
    evaluation_key,
    file_sha256,
    finished_record,
    json_roundtrip,
    load_views,
)
from .configs import BASE, BenchConfig
from .generate import condition_image, free_memory
from .settings import BenchRun, EvalViews, MetricSettings, RunPaths, ShardStats

logger = logging.getLogger(__name__)


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
    metrics: MetricSettings | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Per-item metrics of every configuration (JSON-ready) and the features FID/KID need.

    `metrics`: whether the judge sees the input image, and whether it is calibrated on this item's
    base mesh (default: MetricSettings())."""
    from ..metrics import clip_distance, geometry_score, judge_pair

    views = {c.name: load_views(paths.config(item.id, c.name) / EVAL_VIEWS_DIR) for c in configs}
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
            entry["geometry"] = geometry_score(paths.config(item.id, config.name) / MESH_FILE).to_dict()
        else:
            entry["geometry"] = None
        per_config[config.name] = entry
    metrics = metrics or MetricSettings()
    judge: dict[str, dict[str, float]] = {}
    calibration: dict[str, dict[str, float]] | None = None
    if metric_models.judge is not None:
        from ..metrics.judge import reference_image as judge_reference_image

        shown = judge_reference_image(condition_image(item, paths)) if metrics.judge_reference else None
        for config in configs:
            if config.name == BASE:
                continue
            pair = judge_pair(metric_models.judge, item.prompt, views[BASE], views[config.name], shown,
                              layout=metrics.judge_layout)
            judge[config.name] = {"diff_guided_first": pair.diff_guided_first, "diff_base_first": pair.diff_base_first,
                                  "outcome": pair.outcome}
        if metrics.calibrate_judge and records[BASE]["status"] == "ok":
            calibration = calibrate_on_base(item, metric_models.judge, eval_views, paths, shown, metrics.judge_layout)
    write_compare_sheet(paths.item(item.id) / "compare.png", configs, views, records, per_config, reference)
    result: dict[str, Any] = {"configs": per_config, "judge": judge}
    if calibration is not None:
        result["judge_calibration"] = calibration
    return result, features


def calibrate_on_base(item: BenchItem, judge: Any, eval_views: EvalViews, paths: RunPaths,
                      reference: torch.Tensor | None, layout: str = "separate") -> dict[str, dict[str, float]]:
    """The judge's answers on this item's base mesh against itself and against each default degradation
    (JSON-ready: {name: {diff_guided_first, diff_base_first}}; the original is the "guided" side)."""
    from ..metrics.calibration import CalibrationItem, calibration_judgements
    from ..scoring import ScoringMesh, load_mesh_for_scoring

    mesh = load_mesh_for_scoring(paths.config(item.id, BASE) / MESH_FILE)
    cameras = eval_views.cameras(device=judge.device)

    def render(vertices: np.ndarray, faces: np.ndarray) -> torch.Tensor:
        framed = ScoringMesh(np.asarray(vertices, np.float32), np.asarray(faces, np.int64), False, mesh.source)
        return framed.render(cameras)

    answers = calibration_judgements(judge, [CalibrationItem(item.id, item.prompt, mesh.vertices, mesh.faces, reference)],
                                     render, use_reference=reference is not None, layout=layout)
    return {name: {"diff_guided_first": js[0].diff_guided_first, "diff_base_first": js[0].diff_base_first}
            for name, js in answers.items()}


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
        pixels = to_uint8(images).permute(0, 2, 3, 1).numpy()
        for k, array in enumerate(pixels):
            image = Image.fromarray(np.ascontiguousarray(array), "RGB").resize((cell, cell), Image.Resampling.NEAREST)
            sheet.paste(image, (label_width + margin + k * (cell + margin), y))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path


def evaluate_shard(items: list[BenchItem], run: BenchRun, device: str, stats: ShardStats) -> None:
    """Phase 2 on this process's items: evaluate those whose evaluation is missing, damaged or outdated."""
    started = time.perf_counter()
    paths = run.paths
    key = json_roundtrip(evaluation_key(run.metrics, run.eval_views))
    metric_models: MetricModels | None = None
    for item in items:
        records = {c.name: finished_record(paths.config(item.id, c.name), run.eval_views) for c in run.configs}
        missing = [name for name, record in records.items() if record is None]
        if missing:
            raise RuntimeError(f"{item.id}: configurations {missing} were not generated; cannot evaluate")
        record_ids = {name: record["id"] for name, record in records.items()}  # type: ignore[index]
        if evaluation_is_current(paths.item(item.id), key, records):
            stats.eval_skipped += 1
            continue
        if metric_models is None:
            metric_models = load_metric_models(run.metrics, device)
        evaluation, features = evaluate_item(item, run.configs, records, metric_models, run.eval_views, paths,  # type: ignore[arg-type]
                                             run.metrics)
        feature_path = paths.item(item.id) / FEATURES_FILE
        with atomic_path(feature_path) as tmp:
            np.savez(tmp, **{k.replace("/", "__"): v for k, v in features.items()})
        content = {"item": item.id, "prompt": item.prompt, "eval_key": key, "record_ids": record_ids,
                   "features_sha256": file_sha256(feature_path), **evaluation}
        write_manifest(paths.item(item.id) / EVAL_FILE, content)  # written last: its presence means the item is evaluated
        stats.evaluated += 1
        logger.info("%s: evaluated", item.id)
    del metric_models
    free_memory()
    stats.seconds["evaluation"] = time.perf_counter() - started
