"""The benchmark's on-disk cache: what a cached result was made from, and whether it is intact.

Every finished (item, configuration) folder holds a `record.json` with a *fingerprint*:
everything its outputs depend on (item, configuration, generation settings, evaluation cameras,
renderer version). A rerun compares fingerprints, so results made with other settings are never
silently mixed in. A per-item `eval.json` names the metric setup and the record ids it evaluated.

Files are read defensively: a cached file that is missing, truncated or unreadable (a record, a
mesh, a manifest, an evaluation view, `eval.json`, `features.npz`) is named in a log warning and
treated as not done, so the runner redoes that (item, configuration) or evaluation instead of
failing with a traceback. Damaged folders are not deleted while reading (every process lists
pending work concurrently); the redo replaces them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import atomic_path
from ..images import to_uint8
from ..render import renderer as _renderer
from .benchset import BenchItem
from .configs import BenchConfig
from .settings import BenchRun, EvalViews, GenerationSettings, MetricSettings, RunPaths

logger = logging.getLogger(__name__)

RECORD_FILE = "record.json"
EVAL_FILE = "eval.json"
FEATURES_FILE = "features.npz"
MESH_FILE = "mesh.glb"
MANIFEST_FILE = "manifest.json"
EVAL_VIEWS_DIR = "eval_views"
CRITIC_VIEWS_DIR = "critic_views"  # contact sheets of what the critic saw (the run's --save-views)
R_PLOT = "r.png"  # r over σ (guided configurations; the run's --plot)
STAGING_MARK = ".partial-"
# Bump when what phase 1 or phase 2 writes changes meaning, so old caches are recomputed.
GENERATION_FORMAT = 1
EVAL_FORMAT = 1
RECORD_STATUSES = ("ok", "empty")


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
        "generation": {"steps": settings.options.steps, "cfg_scale": settings.options.cfg_scale,
                       "octree_resolution": settings.options.octree_resolution, "models": settings.models_key()},
        "eval_views": dataclasses.asdict(eval_views),
        # Read at call time (not imported as a value) so that a bump is seen by every later fingerprint.
        "renderer": _renderer.RENDERER_VERSION,
    }


def evaluation_key(metrics: MetricSettings, eval_views: EvalViews) -> dict[str, Any]:
    """What identifies a per-item evaluation (recomputed when it changes)."""
    return {"format": EVAL_FORMAT, "clip": metrics.clip, "inception": metrics.inception, "judge": metrics.judge,
            "judge_reference": metrics.judge_reference, "calibrate_judge": metrics.calibrate_judge,
            "judge_layout": metrics.judge_layout,
            "eval_views": dataclasses.asdict(eval_views)}


def json_roundtrip(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists, ...), so it compares with a cached copy."""
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


def find_stale(run: BenchRun) -> list[tuple[str, str, str]]:
    """Finished (item, configuration) folders whose fingerprint differs from this run's: (item, config, how)."""
    stale = []
    for item in run.bench.items:
        image_key = item_image_key(item, run.settings)
        for config in run.configs:
            # Damage is reported (and the folder redone) by the process that owns the item.
            record = read_record(run.paths.config(item.id, config.name), warn=False)
            if record is None:
                continue
            expected = json_roundtrip(generation_fingerprint(item, config, run.settings, run.eval_views, image_key))
            differences = fingerprint_differences(record.get("fingerprint"), expected)
            if differences:
                stale.append((item.id, config.name, "; ".join(differences[:3])))
    return stale


# ---------------------------------------------------------------------------------------------
# Reading cached files, checking that they are whole.


def _discard(path: Path, why: str, warn: bool) -> None:
    if warn:
        logger.warning("cached file %s is %s: discarded, it will be redone", path, why)


def _read_json(path: Path) -> tuple[Any, str | None]:
    """(content, None), or (None, why it cannot be used); a missing file is (None, 'missing')."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except FileNotFoundError:
        return None, "missing"
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, f"unreadable ({type(exc).__name__}: {exc})"


def read_record(folder: Path, *, warn: bool = True) -> dict[str, Any] | None:
    """The record of a finished configuration folder; None if there is none or it is damaged (logged)."""
    path = folder / RECORD_FILE
    record, why = _read_json(path)
    if why == "missing":
        return None
    if why is None and not (
        isinstance(record, dict) and isinstance(record.get("id"), str) and record.get("status") in RECORD_STATUSES
        and isinstance(record.get("fingerprint"), dict)
    ):
        why = "not a benchmark record (no id, status or fingerprint)"
    if why is not None:
        _discard(path, why, warn)
        return None
    return record


def glb_damage(path: Path) -> str | None:
    """Why a binary glTF file is not whole (None if its header and length are right).

    Checks the 12-byte header (magic 'glTF', total length) against the file size: this catches
    truncation and foreign files without parsing the mesh.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            header = handle.read(12)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc})"
    if len(header) < 12 or header[:4] != b"glTF":
        return "not a binary glTF file"
    declared = struct.unpack("<I", header[8:12])[0]
    if declared != size:
        return f"truncated or padded ({size} bytes, header says {declared})"
    return None


def views_damage(folder: Path, eval_views: EvalViews) -> tuple[Path, str] | None:
    """(file, why) for the first evaluation view that is missing or does not decode at the expected size."""
    from PIL import Image

    expected = [folder / f"view_{index:02d}.png" for index in range(eval_views.num_views)]
    for path in expected:
        try:
            with Image.open(path) as image:
                image.load()  # decodes every byte: a truncated PNG fails here, not at open()
                size = image.size
        except FileNotFoundError:
            return path, "missing"
        except Exception as exc:  # noqa: BLE001 - PIL raises many types (OSError, SyntaxError, ValueError, ...)
            return path, f"unreadable ({type(exc).__name__}: {exc})"
        if size != (eval_views.image_size, eval_views.image_size):
            return path, f"{size[0]}×{size[1]} instead of {eval_views.image_size}×{eval_views.image_size}"
    return None


def finished_record(folder: Path, eval_views: EvalViews, *, warn: bool = True) -> dict[str, Any] | None:
    """The record of a finished configuration folder whose files are all whole, else None.

    Whole means: the record reads; for a non-empty shape the mesh and the manifest are intact; every
    evaluation view decodes at the evaluation size. A damaged file is named in a warning (if `warn`).
    """
    record = read_record(folder, warn=warn)
    if record is None:
        return None
    if record["status"] == "ok":
        why = glb_damage(folder / MESH_FILE)
        if why is not None:
            _discard(folder / MESH_FILE, why, warn)
            return None
        _, why = _read_json(folder / MANIFEST_FILE)
        if why is not None:
            _discard(folder / MANIFEST_FILE, why, warn)
            return None
    damage = views_damage(folder / EVAL_VIEWS_DIR, eval_views)
    if damage is not None:
        _discard(*damage, warn)
        return None
    return record


def read_evaluation(item_dir: Path, *, warn: bool = True) -> dict[str, Any] | None:
    """An item's evaluation (eval.json) if present and whole, its features file included; else None."""
    path = item_dir / EVAL_FILE
    evaluation, why = _read_json(path)
    if why == "missing":
        return None
    if why is None and not (
        isinstance(evaluation, dict) and isinstance(evaluation.get("configs"), dict)
        and isinstance(evaluation.get("record_ids"), dict) and "eval_key" in evaluation
    ):
        why = "not a benchmark evaluation (no configs, record ids or key)"
    if why is not None:
        _discard(path, why, warn)
        return None
    features = item_dir / FEATURES_FILE
    try:
        matches = file_sha256(features) == evaluation.get("features_sha256")
    except OSError as exc:
        _discard(features, f"unreadable ({exc})", warn)
        return None
    if not matches:
        _discard(features, "not the file its evaluation wrote (checksum differs)", warn)
        return None
    return evaluation


def evaluation_is_current(
    item_dir: Path, key: dict[str, Any], records: dict[str, dict[str, Any] | None], *, warn: bool = True
) -> bool:
    """True when the item's eval.json is whole, used this metric setup and evaluated exactly these records."""
    if any(r is None for r in records.values()):
        return False
    cached = read_evaluation(item_dir, warn=warn)
    if cached is None:
        return False
    return cached.get("eval_key") == key and cached.get("record_ids") == {n: r["id"] for n, r in records.items()}  # type: ignore[index]


def load_features(item_dir: Path) -> dict[str, np.ndarray]:
    """The features an evaluation wrote, keyed 'inception/<config>', 'clip/reference', ..."""
    with np.load(item_dir / FEATURES_FILE) as data:
        return {k.replace("__", "/"): data[k] for k in data.files}


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """A configuration's generation manifest, or None when it has none or it does not read."""
    content, why = _read_json(folder / MANIFEST_FILE)
    if why is not None and why != "missing":
        _discard(folder / MANIFEST_FILE, why, True)
    return content if isinstance(content, dict) else None


# ---------------------------------------------------------------------------------------------
# View files and staging folders.


def save_views(folder: Path, images: torch.Tensor) -> list[Path]:
    """Write views (V, 3, H, W) in [0, 1] as PNGs view_00.png, ... (lossless, uint8)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    pixels = to_uint8(images).permute(0, 2, 3, 1).numpy()
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
