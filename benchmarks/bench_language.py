"""Does language constrain geometry? The paper's claim, tested on the trained miniature world (issue 27).

    python benchmarks/bench_language.py run    --seeds 5                     # 24 items × 2 statements × 5 seeds
    python benchmarks/bench_language.py run    --seeds 2 --classes mug --conditions base,guided   # a pilot
    python benchmarks/bench_language.py sweep  --seeds 3 --set scale=0.1 --set every=1           # one knob setting
    python benchmarks/bench_language.py report                                # tables → benchmarks/RESULTS.md
    python benchmarks/bench_language.py sheets                                # pictures → docs/language.png

Items: every test-split shape (variants the generator and the critics never trained on) of the four
classes with an attribute a picture can hide — the mug's handle, the table's legs, the chair's back,
the rocket's fins — rendered in the training style (`miniworld.render_input_image`) from the view
that hides it (`miniworld.dataset.hiding_views`: the mug from the side opposite its handle, the
table level so its legs overlap, the chair and the rocket from above). Each picture is run with two
statements: the true one ("a mug with a handle") and, on the same picture, the opposite ("a mug
without a handle"): guidance must be able to remove, not only add.

Conditions, on the same seeds: `base` (unguided; the mini DiT sees only the picture, so one base run
serves both statements), `guided` (the mini guide critic, the paper's dual query, the mini preset's
defaults), `guided+silhouette` (plus the input-silhouette term: faithfulness) and `best_of_n`
(unguided candidates, the best final mesh by the same critic, N chosen so that its compute matches
the guided run's: `bench.configs.preset_config`).

Judged only by what guidance never sees: the attribute measured on the final shape (decoded on the
data set's 64³ grid: a handle as genus ≥ 1 of the largest component, legs as blobs of a low
horizontal slice, a back as volume above the seat, fins as a wide bottom: `miniworld.geometry`);
volumetric IoU and Chamfer to the true shape *with the stated attribute* (the same proportions, the
attribute set as stated); the class by nearest training shapes (Chamfer); the judge critic's r (the
separately trained Qwen2.5-VL of another seed and size) on its own views of the final mesh; and
faithfulness to the input (silhouette IoU at the input's estimated camera). Paired Δ = condition −
base per (item, statement, seed), bootstrap 95 % CI of the mean, and pairs improved.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from machine import machine_description  # noqa: E402
from results_file import write_results_section  # noqa: E402

from vlm3d_ttg.bench.configs import preset_config  # noqa: E402
from vlm3d_ttg.critic import VLMCritic  # noqa: E402
from vlm3d_ttg.errors import EmptySurfaceError, SkippedStepError  # noqa: E402
from vlm3d_ttg.metrics.bootstrap import bootstrap_ci  # noqa: E402
from vlm3d_ttg.miniworld import critic_views, describe, make_spec, render_input_image, shape_sdf  # noqa: E402
from vlm3d_ttg.miniworld.dataset import TRAIN, VAL, VARIANTS, hiding_views  # noqa: E402
from vlm3d_ttg.miniworld.geometry import (  # noqa: E402
    Mesh,
    ShapeClassifier,
    chamfer,
    detect_attribute,
    grid_points,
    iou,
    mesh_from_sdf,
    mesh_from_values,
    occupancy_grid,
)
from vlm3d_ttg.miniworld.shapes import ATTRIBUTES, CLASSES, ShapeSpec  # noqa: E402
from vlm3d_ttg.reward import VLMReward  # noqa: E402
from vlm3d_ttg.sampler import GuidedSampler  # noqa: E402
from vlm3d_ttg.silhouette import SilhouetteTerm  # noqa: E402

logger = logging.getLogger("bench_language")
BEGIN, END = "<!-- bench_language:begin -->", "<!-- bench_language:end -->"
OUT = HERE / "language_main.jsonl"
CONDITIONS = ("base", "guided", "guided+silhouette", "best_of_n")
ATTRIBUTE_CLASSES = tuple(ATTRIBUTES)
GRID = 64  # the data set's truth grid (miniworld.dataset.GRID)
SILHOUETTE_WEIGHT = 10.0  # as the steering benchmark's vlm+silhouette
REFS_PER_CLASS = 16  # training shapes per class: the nearest names 0.96 of the true test shapes (8: 0.95, 4: 0.91)
CLASS_RULE = "nearest reference"  # rows carry it; `remeasure` renames the classes of rows named by an older rule
# Rows carry it; `remeasure` re-reads the attribute of rows read by an older rule (before session 12 the
# detectors read every voxel, and a decoder's specks moved the reading: vlm3d_ttg.miniworld.geometry).
ATTRIBUTE_RULE = "largest piece"


# ----------------------------------------------------------------------------------------- items
@dataclasses.dataclass(frozen=True)
class Item:
    """One input picture (a test shape from the view hiding its attribute) and one statement about it."""

    spec: ShapeSpec
    view: tuple[float, float]
    stated: int  # the attribute value the statement states

    @property
    def attribute(self) -> str:
        return ATTRIBUTES[self.spec.cls]

    @property
    def statement(self) -> str:
        return describe(self.spec.cls, {self.attribute: self.stated})

    @property
    def truthful(self) -> bool:
        return self.stated == self.spec.attributes[self.attribute]

    @property
    def key(self) -> str:
        return f"{self.spec.name}|{self.statement}"

    def stated_spec(self) -> ShapeSpec:
        """The same proportions with the attribute as stated: the shape the statement describes."""
        return dataclasses.replace(self.spec, attributes={self.attribute: self.stated})


def opposite(cls: str, value: int) -> int:
    """The other value of `cls`'s attribute (legs: 3 ↔ 4; the rest 0 ↔ 1)."""
    return 7 - value if ATTRIBUTES[cls] == "legs" else 1 - value


def items(classes: tuple[str, ...] = ATTRIBUTE_CLASSES, statements: str = "both", per_class: int = VARIANTS - TRAIN - VAL) -> list[Item]:
    """The first `per_class` test shapes of each of `classes`, from the first view hiding the attribute, with the
    true and/or the opposite statement."""
    out = []
    for cls in classes:
        for variant in range(TRAIN + VAL, min(VARIANTS, TRAIN + VAL + per_class)):
            spec = make_spec(cls, variant)
            value = spec.attributes[ATTRIBUTES[cls]]
            values = {"both": [value, opposite(cls, value)], "true": [value], "opposite": [opposite(cls, value)]}[statements]
            out += [Item(spec, hiding_views(cls)[0], stated) for stated in values]
    return out


_MESHES: dict[str, Any] = {}


def input_image(spec: ShapeSpec, view: tuple[float, float]):
    """The input picture of a shape from a view, in the training style (the shape's mesh made once per spec)."""
    key = repr(spec)
    if key not in _MESHES:
        _MESHES[key] = mesh_from_sdf(shape_sdf(spec), 80)
    return render_input_image(_MESHES[key], *view)


def framed_silhouette(image: Any, size: int = 128) -> np.ndarray:
    """A picture's alpha mask cropped to its bounding box and resized: the silhouette as the generator's own
    preprocessing (which recentres and rescales the object) leaves it."""
    from PIL import Image

    alpha = np.asarray(image)[..., 3] > 0
    ys, xs = np.nonzero(alpha)
    crop = alpha[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return np.asarray(Image.fromarray(crop.astype(np.uint8) * 255).resize((size, size))) > 127


def hiding(item: Item) -> float:
    """How much the input picture hides the attribute: IoU of the framed silhouettes of the shape and of the same
    shape with the other attribute value, from the item's view (1: the picture cannot tell them apart)."""
    a = framed_silhouette(input_image(item.spec, item.view))
    b = framed_silhouette(input_image(dataclasses.replace(item.spec, attributes={item.attribute: opposite(item.spec.cls, item.spec.attributes[item.attribute])}), item.view))
    return float((a & b).sum() / (a | b).sum())


# ----------------------------------------------------------------------------------------- measures
class Measures:
    """What judges a final shape: the truth grids, the class references, the judge critic (cached per shape)."""

    def __init__(self, judge: tuple[Any, Any] | None, references: int = REFS_PER_CLASS) -> None:
        self.judge = judge
        self._grids: dict[str, np.ndarray] = {}
        self._points: dict[str, np.ndarray] = {}
        rng = np.random.default_rng(0)
        self.classifier = None
        if references:  # a few training shapes per class: the nearest one names the class
            meshes = {cls: [mesh_from_sdf(shape_sdf(make_spec(cls, v)), 48) for v in range(references)] for cls in CLASSES}
            self.classifier = ShapeClassifier({cls: [m.vertices[rng.choice(len(m.vertices), 1500)] for m in ms]
                                               for cls, ms in meshes.items()})

    def truth(self, spec: ShapeSpec) -> tuple[np.ndarray, np.ndarray]:
        """The occupancy grid and surface points of a shape."""
        key = json.dumps([spec.cls, spec.variant, spec.attributes], sort_keys=True)
        if key not in self._grids:
            sdf = shape_sdf(spec)
            self._grids[key] = occupancy_grid(sdf, GRID)
            mesh = mesh_from_sdf(sdf, 80)
            self._points[key] = mesh.vertices[np.random.default_rng(1).choice(len(mesh.vertices), 3000)]
        return self._grids[key], self._points[key]

    def shape(self, item: Item, logits: np.ndarray, mesh: Mesh | None) -> dict[str, Any]:
        """The attribute, class, IoU / Chamfer to the stated shape and the judge's r of one final shape."""
        grid = logits > 0
        stated_grid, stated_points = self.truth(item.stated_spec())
        true_grid, _ = self.truth(item.spec)
        measured = detect_attribute(item.spec.cls, grid)
        row: dict[str, Any] = {"attribute": measured, "has_stated": int(measured == item.stated), "attribute_rule": ATTRIBUTE_RULE,
                               "fragments": fragments(grid),
                               "iou_stated": iou(grid, stated_grid), "iou_true": iou(grid, true_grid)}
        if mesh is None or not len(mesh.faces):
            row.update(chamfer_stated=None, predicted_class=None, class_right=0, judge_r=None)
            return row
        points = surface_sample(mesh)
        row["chamfer_stated"] = chamfer(points, stated_points)
        row.update(self.shape_class(points, item.spec.cls))
        row["judge_r"] = self.judge_r(mesh, item.statement) if self.judge is not None else None
        return row

    def shape_class(self, points: np.ndarray, true_class: str) -> dict[str, Any]:
        """The class the nearest reference shape names for a final mesh's `surface_sample`, and whether it is
        `true_class`."""
        predicted = self.classifier(points[:1500])
        return {"predicted_class": predicted, "class_right": int(predicted == true_class), "class_rule": CLASS_RULE}

    def judge_r(self, mesh: Mesh, statement: str) -> float:
        """The judge's mean r over two draws of its own (jittered) views of the mesh."""
        model, processor = self.judge
        critic = VLMCritic(model, processor, statement, "dual")
        rs = []
        for draw in range(2):
            views = critic_views(mesh, generator=torch.Generator().manual_seed(1000 + draw))
            with torch.no_grad():
                rs.append(float(critic(views).r.float().mean()))
        return float(np.mean(rs))


def surface_sample(mesh: Mesh) -> np.ndarray:
    """3000 of a final mesh's vertices, drawn with a fixed seed (so that a remeasure draws the same)."""
    return mesh.vertices[np.random.default_rng(2).choice(len(mesh.vertices), 3000)]


def fragments(grid: np.ndarray, min_voxels: int = 8) -> int:
    """Pieces of the shape besides its largest (6-connected components of ≥ `min_voxels` voxels, minus one):
    0 for a shape in one piece; floating fragments count."""
    from scipy import ndimage

    labels, count = ndimage.label(grid)
    if count == 0:
        return 0
    sizes = np.bincount(labels.ravel())[1:]
    return int(max(0, (sizes >= min_voxels).sum() - 1))


def remeasure(path: Path, kept: Path, references: int = REFS_PER_CLASS) -> None:
    """Fill the measures later versions added or changed into rows that lack them, from the kept grids:
    `fragments`, the class by the nearest reference shape (rows without `class_rule` were named by the
    mean distance to a class's references, which misnames true shapes), and the attribute read from the
    shape's largest piece (rows without `attribute_rule` were read from every voxel, specks included)."""
    from vlm3d_ttg.io import write_text_atomic

    rows, pieces, attributes, classes = read_rows(path), {}, {}, {}
    stale = [r for r in rows if r.get("grid") and r.get("attribute") is not None and r.get("attribute_rule") != ATTRIBUTE_RULE]
    missing = sum(not (kept / r["grid"]).is_file() for r in stale)
    # All or none: one table must not mix two readings of the attribute.
    reread = missing == 0
    measures = Measures(None, references) if any(r.get("grid") and r.get("class_rule") != CLASS_RULE for r in rows) else None

    @functools.lru_cache(maxsize=1)  # a row's measures read its grid once
    def logits(name: str) -> np.ndarray:
        return np.load(kept / name).astype(np.float32)

    gone = set()
    for row in rows:
        name = row.get("grid")
        if not name:
            continue
        if not (kept / name).is_file():  # its measures stay as they are; the attribute's all-or-none rule is above
            gone.add(name)
            continue
        if "fragments" not in row:
            if name not in pieces:
                pieces[name] = fragments(logits(name) > 0)
            row["fragments"] = pieces[name]
        if reread and row.get("attribute_rule") != ATTRIBUTE_RULE and row.get("attribute") is not None:
            if name not in attributes:
                attributes[name] = detect_attribute(row["cls"], logits(name) > 0)
            row.update(attribute=attributes[name], has_stated=int(attributes[name] == row["stated"]), attribute_rule=ATTRIBUTE_RULE)
        if row.get("class_rule") != CLASS_RULE and row.get("predicted_class") is not None:
            if name not in classes:
                mesh = mesh_from_values(logits(name), 0.0, inside_above=True)
                classes[name] = measures.shape_class(surface_sample(mesh), row["cls"])
            row.update(classes[name])
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
    if gone:
        print(f"{len(gone)} grids are not in {kept}: the rows of those runs keep their earlier measures", file=sys.stderr)
    if missing:
        print(f"the attribute of {len(stale)} rows was not re-read ({missing} of their grids are not in {kept}); "
              "they keep the older reading, which the report names", file=sys.stderr)


def attribute_rule_note(rows: list[dict]) -> str:
    """The line that says how the rows' stated attribute was read (the rule before session 12, where rows keep it)."""
    older = sum(r.get("attribute") is not None and r.get("attribute_rule") != ATTRIBUTE_RULE for r in rows)
    if not older:
        return "Stated attribute: read from the shape's largest piece (specks and broken-off parts are not parts)."
    return (f"Stated attribute: {older} of {len(rows)} rows read from every voxel, specks included (the rule before "
            "session 12; their grids were not kept, so `remeasure` could not re-read them).")


def decoded_grid(backbone: Any, latents: torch.Tensor) -> np.ndarray:
    """The final latent's occupancy logits (minus the backbone's level) on the data set's 64³ grid."""
    points = torch.from_numpy(grid_points(GRID)).float()
    with torch.no_grad():
        field = backbone.occupancy_field(latents[:1])
        device, dtype = field.params.device, backbone.decode_dtype
        logits = torch.cat([field.query(chunk.to(device, dtype), field.params).float().cpu()
                            for chunk in points.split(32768)])
    return (logits - backbone.level).numpy().reshape(GRID, GRID, GRID)


# ----------------------------------------------------------------------------------------- runs
def load():
    """The mini preset's models and its option defaults."""
    from vlm3d_ttg.generation import load_models
    from vlm3d_ttg.requests import validate_settings

    settings = validate_settings({}, preset="mini")
    return load_models(settings.options, preset="mini"), settings


def load_judge(checkpoint: Path | None) -> tuple[Any, Any]:
    """The judge critic: the shipped one, or (while it trains) a training checkpoint."""
    from vlm3d_ttg.miniworld import ensure_mini_models
    from vlm3d_ttg.models import load_vlm

    if checkpoint is not None:
        from vlm3d_ttg.miniworld.critic_model import build_mini_critic

        state = torch.load(checkpoint, weights_only=False)
        model, processor = build_mini_critic(state["size"], state["seed"])
        model.load_state_dict(state["model"])
        return model.eval(), processor
    shipped = ensure_mini_models().judge
    if shipped is None:
        raise SystemExit("No judge ships with the mini assets yet; pass --judge CHECKPOINT.")
    return load_vlm(shipped, device=torch.device("cpu"), dtype=torch.float32)


def rejudge(path: Path, kept: Path, judge: tuple[Any, Any], judged: Path) -> None:
    """The judge's r of every run's final shape against its statement, from the kept grids, into `judged`
    (a JSON map "grid|statement" → r; runs already judged are skipped, so it can follow a running `run`)."""
    from vlm3d_ttg.io import write_text_atomic

    measures = Measures(judge, references=0)
    scores = json.loads(judged.read_text()) if judged.exists() else {}
    todo = {(r["grid"], r["statement"]) for r in read_rows(path) if r.get("grid")} - {tuple(k.split("|", 1)) for k in scores}
    for k, (grid, statement) in enumerate(sorted(todo)):
        mesh = mesh_from_values(np.load(kept / grid).astype(np.float32), 0.0, inside_above=True)
        scores[f"{grid}|{statement}"] = measures.judge_r(mesh, statement)
        if k % 50 == 49:
            write_text_atomic(judged, json.dumps(scores, indent=0))
            print(f"judged {k + 1}/{len(todo)}", flush=True)
    write_text_atomic(judged, json.dumps(scores, indent=0))


def with_judge(rows: list[dict], judged: Path) -> list[dict]:
    """The rows with judge_r filled from `rejudge`'s map (where it has them)."""
    scores = json.loads(judged.read_text()) if judged.exists() else {}
    return [dict(r, judge_r=scores.get(f"{r.get('grid')}|{r['statement']}", r.get("judge_r"))) for r in rows]


@dataclasses.dataclass
class Sample:
    """A finished run: its exported mesh, the final latent decoded on the truth grid, and its record."""

    row: dict[str, Any]
    mesh_export: Any = None
    logits: np.ndarray | None = None
    latents: Any = None  # the final latent (1, L, C)


def reward_for(models: Any, config: Any, statement: str, image: Any) -> tuple[VLMReward, SilhouetteTerm]:
    """The guide critic's reward for `statement` (and the silhouette term at weight `config.silhouette_weight`)."""
    silhouette = SilhouetteTerm(models.backbone.input_foreground(image, config.view_size))
    # The critic reads the views as the reward lays them out (one tile for view_layout "grid"), as generate builds it.
    critic = VLMCritic(models.vlm, models.processor, statement, config.query, layout=config.view_layout,
                       grid_size=config.view_size)
    return VLMReward.from_config(models.backbone, critic, config, terms=[(config.silhouette_weight, silhouette)]), silhouette


def condition_config(settings: Any, condition: str, steps: int, overrides: dict[str, Any]):
    """The guidance options and search of a condition, on the mini preset's defaults with `overrides`."""
    guidance = dataclasses.replace(settings.guidance, **overrides)
    bench = preset_config({"best_of_n": "best_of_n", "base": "base"}.get(condition, "guided"), guidance, steps=steps)
    weight = SILHOUETTE_WEIGHT if condition == "guided+silhouette" else 0.0
    return dataclasses.replace(bench.guidance, silhouette_weight=weight), bench.search


def sample(models: Any, settings: Any, item: Item, condition: str, seed: int, steps: int,
           overrides: dict[str, Any], image: Any) -> Sample:
    """One (item, condition, seed) run of the sampler."""
    backbone = models.backbone
    config, search = condition_config(settings, condition, steps, overrides)
    reward, silhouette = reward_for(models, config, item.statement, image)
    sampler = GuidedSampler(backbone, reward, config)
    row: dict[str, Any] = {"shape": item.spec.name, "cls": item.spec.cls, "condition": condition, "seed": seed,
                           "overrides": overrides, "steps": steps, "candidates": search.candidates if search else 1}
    tic = time.perf_counter()
    try:
        output = sampler(image, num_inference_steps=steps, seed=seed, octree_resolution=settings.options.octree_resolution,
                         progress=False, search=search)
    except EmptySurfaceError:
        row.update(seconds=time.perf_counter() - tic, empty=True)
        return Sample(row)
    row["seconds"] = time.perf_counter() - tic
    # Faithfulness: the silhouette term (weight 0 unless guided+silhouette) estimated the input's camera during the run.
    octree = settings.options.octree_resolution
    reward.measure_mesh(output.mesh.vertices, output.mesh.faces, backbone.export_frame(octree))
    guided = [r for r in output.records if r.guided]
    row.update(empty=False, input_iou=silhouette.final_iou, guided=len(guided), skipped=sum(1 for r in guided if r.skipped),
               capped=sum(1 for r in guided if r.capped))
    return Sample(row, output.mesh, decoded_grid(backbone, output.latents), output.latents)


def measure(models: Any, settings: Any, item: Item, done: Sample, image: Any, measures: Measures) -> dict[str, Any]:
    """The row of a finished run judged against `item`'s statement."""
    row = dict(done.row, item=item.key, statement=item.statement, truthful=item.truthful, stated=item.stated)
    if done.logits is None:
        return dict(row, attribute=None, has_stated=0, class_right=0)
    config, _ = condition_config(settings, "base", row["steps"], {})
    reward, _ = reward_for(models, config, item.statement, image)
    try:
        row["final_r"] = float(reward.score_mesh(done.mesh_export.vertices, done.mesh_export.faces).r.mean())
    except SkippedStepError as error:  # the final mesh cannot be scored (e.g. its render is out of range): said, not hidden
        row["final_r"], row["final_r_error"] = None, str(error)
        logger.warning("%s %s seed %s: final r not measured: %s", item.key, row["condition"], row["seed"], error)
    try:
        mesh = mesh_from_values(done.logits, 0.0, inside_above=True)
    except (ValueError, RuntimeError):
        mesh = None
    row.update(measures.shape(item, done.logits, mesh))
    return row


def run_grid(args, conditions: list[str], overrides: dict[str, Any], out: Path) -> None:
    """Every (item, condition, seed), one JSON line each, appended to `out` (resumable: done runs are skipped)."""
    torch.set_num_threads(args.threads)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["item"], r["condition"], r["seed"], json.dumps(r["overrides"], sort_keys=True)))
    key = json.dumps(overrides, sort_keys=True)
    chosen = items(tuple(args.classes.split(",")), args.statements, args.per_class)
    if all((item.key, condition, seed, key) in done for seed in range(args.seeds) for item in chosen for condition in conditions):
        print(f"every run is already in {out}", flush=True)
        return  # resuming a finished grid loads nothing
    models, settings = load()
    measures = Measures(None, args.refs_per_class)  # the judge scores the kept grids afterwards (`rejudge`), with the judge that ships
    keep = Path(args.keep) if args.keep else None
    images: dict[str, Any] = {}
    base_runs: dict[tuple[str, int], Sample] = {}
    for seed in range(args.seeds):
        for item in chosen:
            image = images.setdefault(item.spec.name, input_image(item.spec, item.view))
            for condition in conditions:
                if (item.key, condition, seed, key) in done:
                    continue
                if condition == "base":
                    # The mini DiT sees only the picture: one unguided run per (shape, seed), judged against each statement.
                    if (item.spec.name, seed) not in base_runs:
                        base_runs[(item.spec.name, seed)] = sample(models, settings, item, condition, seed, args.steps, overrides, image)
                    finished = base_runs[(item.spec.name, seed)]
                else:
                    finished = sample(models, settings, item, condition, seed, args.steps, overrides, image)
                row = measure(models, settings, item, finished, image, measures)
                done.add((item.key, condition, seed, key))
                if keep is not None and finished.logits is not None:
                    keep.mkdir(parents=True, exist_ok=True)
                    stated = item.spec.attributes[item.attribute] if condition == "base" else item.stated
                    row["grid"] = f"{item.spec.name}_{stated}_{condition}_{seed}_{_short(key)}.npy"
                    np.save(keep / row["grid"], finished.logits.astype(np.float16))
                with out.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(f"{item.key:40s} {condition:18s} seed {seed} attr {row.get('attribute')} "
                      f"stated {row.get('has_stated')} iou {row.get('iou_stated') or float('nan'):.3f} "
                      f"r {row.get('final_r') or float('nan'):+.2f} judge {row.get('judge_r')} "
                      f"inIoU {row.get('input_iou')} {row['seconds']:.1f}s", flush=True)


def _short(text: str) -> str:
    import hashlib

    return hashlib.sha1(text.encode()).hexdigest()[:8]


# ----------------------------------------------------------------------------------------- report
METRICS = [("has_stated", "stated attribute present ↑", 1), ("judge_r", "judge r ↑", 1), ("fragments", "loose pieces ↓", -1), ("iou_stated", "IoU to stated shape ↑", 1),
           ("chamfer_stated", "Chamfer to stated ↓", -1), ("class_right", "class right ↑", 1),
           ("input_iou", "input silhouette IoU ↑", 1), ("final_r", "guide critic r ↑", 1)]


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def paired(rows: list[dict], condition: str, *, truthful: bool | None, cls: str | None = None,
           overrides: dict | None = None, base_overrides: dict | None = None, baseline: str = "base") -> dict[str, dict]:
    """Per metric: Δ = condition − baseline over the (item, seed) pairs both have; mean, CI, pairs improved."""
    key, base_key = json.dumps(overrides or {}, sort_keys=True), json.dumps(base_overrides or {}, sort_keys=True)
    def chosen(r: dict, name: str, k: str) -> bool:
        return (r["condition"] == name and json.dumps(r["overrides"], sort_keys=True) == k
                and (truthful is None or r["truthful"] == truthful) and (cls is None or r["cls"] == cls))
    base = {(r["item"], r["seed"]): r for r in rows if chosen(r, baseline, base_key)}
    pairs = [(base[(r["item"], r["seed"])], r) for r in rows if chosen(r, condition, key) and (r["item"], r["seed"]) in base]
    out = {}
    for metric, _, sign in METRICS:
        both = [(b[metric], g[metric]) for b, g in pairs if g.get(metric) is not None and b.get(metric) is not None]
        if not both:
            continue
        deltas = np.array([g - b for b, g in both], dtype=float)
        ci = bootstrap_ci(deltas)
        out[metric] = dict(n=len(deltas), mean=ci.value, low=ci.low, high=ci.high, base=float(np.mean([b for b, _ in both])),
                           improved=int((sign * deltas > 0).sum()), worse=int((sign * deltas < 0).sum()))
    return out


def _cell(stats: dict | None, digits: int = 2) -> str:
    if not stats:
        return "–"
    return (f"{stats['base']:.{digits}f} → {stats['base'] + stats['mean']:.{digits}f}: Δ {stats['mean']:+.{digits}f} "
            f"[{stats['low']:+.{digits}f}, {stats['high']:+.{digits}f}] ({stats['improved']}↑ {stats['worse']}↓ of {stats['n']})")


def report(rows: list[dict], overrides: dict | None = None) -> str:
    """The RESULTS section: per condition and statement kind, paired Δs overall and per attribute."""
    lines = [BEGIN, "### Language constrains geometry? (bench_language, mini world)", "",
             f"Machine: {machine_description()}", "",
             f"Class right: the class of the nearest of {REFS_PER_CLASS} training shapes per class (Chamfer of surface points).",
             attribute_rule_note(rows), ""]
    conditions = [c for c in CONDITIONS[1:] if any(r["condition"] == c for r in rows)]
    shown = [m for m in METRICS if m[0] in ("has_stated", "judge_r", "iou_stated", "class_right", "input_iou", "fragments", "final_r")]
    for truthful, kind in ((True, "true statement (the picture hides what it states)"),
                           (False, "opposite statement (on the same picture)")):
        lines += [f"**{kind}** — each cell: base → condition, paired Δ [95 % CI] (pairs better↑ / worse↓ of n)", "",
                  "| condition | classes | " + " | ".join(label for _, label, _ in shown) + " |",
                  "|---|---|" + "---|" * len(shown)]
        for condition in conditions:
            for cls in (None,) + ATTRIBUTE_CLASSES:
                stats = paired(rows, condition, truthful=truthful, cls=cls, overrides=overrides)
                if not stats:
                    continue
                lines.append(f"| {condition} | {cls or '**all**'} | " + " | ".join(_cell(stats.get(m)) for m, _, _ in shown) + " |")
        lines.append("")
    if any(r["condition"] == "best_of_n" for r in rows) and any(r["condition"] == "guided" for r in rows):
        lines += ["**guided − best-of-N at equal compute** (paired, same items and seeds)", "",
                  "| statements | " + " | ".join(label for _, label, _ in shown) + " |", "|---|" + "---|" * len(shown)]
        for truthful, kind in ((True, "true"), (False, "opposite")):
            stats = paired(rows, "guided", truthful=truthful, baseline="best_of_n", overrides=overrides, base_overrides=overrides)
            lines.append(f"| {kind} | " + " | ".join(_cell(stats.get(m)) for m, _, _ in shown) + " |")
        lines.append("")
    lines += [END]
    return "\n".join(lines)


def hiding_table(chosen: list[Item]) -> str:
    """Per class: how much the items' pictures hide the attribute (framed-silhouette IoU with vs without it)."""
    lines = ["| class | attribute | view (azimuth°, elevation°) | silhouette IoU with vs without, mean [min, max] |",
             "|---|---|---|---|"]
    for cls in ATTRIBUTE_CLASSES:
        these = [i for i in chosen if i.spec.cls == cls and i.truthful]
        if these:
            values = [hiding(i) for i in these]
            lines.append(f"| {cls} | {ATTRIBUTES[cls]} | {these[0].view} | {np.mean(values):.2f} [{min(values):.2f}, {max(values):.2f}] |")
    return "\n".join(lines)


def sweep_report(rows: list[dict]) -> str:
    """Per guidance setting: paired Δ against the unguided runs of the same items and seeds."""
    shown = [m for m in METRICS if m[0] in ("has_stated", "judge_r", "iou_stated", "class_right", "input_iou", "final_r")]
    lines = [attribute_rule_note(rows), "", "| setting | " + " | ".join(label for _, label, _ in shown) + " |",
             "|---|" + "---|" * len(shown)]
    settings = []
    for r in rows:
        if r["condition"] == "guided" and r["overrides"] not in settings:
            settings.append(r["overrides"])
    for overrides in settings:
        stats = paired(rows, "guided", truthful=None, overrides=overrides)
        name = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "defaults (λ 0.03, cap 1, every 2)"
        lines.append(f"| {name} | " + " | ".join(_cell(stats.get(m)) for m, _, _ in shown) + " |")
    return "\n".join(lines)


def contact_sheet(kept: Path, out: Path, rows: list[tuple[Item, int]], conditions: tuple[str, ...] = ("base", "guided"),
                  tag: str = "", records: list[dict] | None = None) -> None:
    """One row per (item, seed): the input picture, then each condition's final shape from the critic's four
    (un-jittered) cameras, labelled with what was measured (`records`: the benchmark's rows); from the grids
    `run --keep` saved."""
    measured = {(r["item"], r["condition"], r["seed"]): r for r in records or [] if not r["overrides"]}
    from PIL import Image, ImageDraw

    size, pictures = 112, []
    for item, seed in rows:
        tiles = [input_image(item.spec, item.view).convert("RGBA").resize((size, size))]
        labels = [item.statement]
        for condition in conditions:
            stated = item.spec.attributes[item.attribute] if condition == "base" else item.stated
            found = sorted(kept.glob(f"{item.spec.name}_{stated}_{condition}_{seed}_{tag}*.npy"))
            if not found:
                raise FileNotFoundError(f"no kept grid for {item.key} {condition} seed {seed} in {kept}")
            mesh = mesh_from_values(np.load(found[0]).astype(np.float32), 0.0, inside_above=True)
            views = critic_views(mesh, generator=torch.Generator().manual_seed(0), size=size, azimuth_jitter=0, elevation_jitter=0)
            tiles += [Image.fromarray((v.permute(1, 2, 0).numpy() * 255).astype(np.uint8)) for v in views]
            record = measured.get((item.key, condition, seed))
            labels.append(condition if record is None else
                          f"{condition}: {item.attribute} {record['attribute']}, r {record['final_r']:+.1f}"
                          + (f", judge {record['judge_r']:+.1f}" if record.get("judge_r") is not None else ""))
        row = Image.new("RGB", (size * len(tiles), size + 14), "white")
        for k, tile in enumerate(tiles):
            row.paste(tile, (k * size, 14), tile if tile.mode == "RGBA" else None)
        draw = ImageDraw.Draw(row)
        draw.text((2, 1), labels[0], fill="black")
        for k, label in enumerate(labels[1:]):
            draw.text(((1 + 4 * k) * size + 2, 1), f"{label} (seed {seed})", fill="black")
        pictures.append(row)
    sheet = Image.new("RGB", (pictures[0].width, sum(p.height for p in pictures)), "white")
    y = 0
    for picture in pictures:
        sheet.paste(picture, (0, y))
        y += picture.height
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)


# ----------------------------------------------------------------------------------------- main
def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """--set name=value pairs → GuidanceConfig field values (numbers parsed, sigma_window as lo,hi)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name == "sigma_window":
            out[name] = tuple(float(v) for v in value.split(","))
        else:
            for parse in (int, float, str):
                try:
                    out[name] = parse(value)
                    break
                except ValueError:
                    continue
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("run", "sweep", "rejudge", "remeasure", "report", "sheets"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="sampler steps (the mini preset runs 50; 20 keeps the grid "
                        "affordable on 2 CPU cores, 7 of them guided)")
    parser.add_argument("--classes", default=",".join(ATTRIBUTE_CLASSES))
    parser.add_argument("--per-class", type=int, default=5, help="test shapes per class (6 exist)")
    parser.add_argument("--refs-per-class", type=int, default=REFS_PER_CLASS, help="training shapes per class that decide "
                        "a shape's class (nearest by Chamfer)")
    parser.add_argument("--statements", choices=("both", "true", "opposite"), default="both")
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument("--set", action="append", default=[], help="a guidance option for every guided condition, name=value")
    parser.add_argument("--judge", type=Path, default=None, help="a judge training checkpoint (default: the shipped judge)")
    parser.add_argument("--keep", default=str(HERE / "language_grids"), help="folder for the decoded grids of every run "
                        "(for rejudge and sheets)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (more than the idle cores thrashes: ×10 slower on a loaded 2-core machine)")
    parser.add_argument("--write-results", action="store_true", help="report: also write the tables into RESULTS.md")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--judged", type=Path, default=HERE / "language_judge.json", help="rejudge/report: the judge's scores")
    parser.add_argument("--pick", default="mug_052:1:1", help="sheets: SHAPE:STATED:SEED,... (STATED: the stated value)")
    parser.add_argument("--sheet", type=Path, default=ROOT / "docs" / "language.png", help="sheets: the picture to write")
    parser.add_argument("--sweep-judged", type=Path, default=HERE / "language_sweep_judge.json", help="report: the judge's "
                        "scores of the sweep's runs (rejudge --out SWEEP --judged THIS)")
    parser.add_argument("--sweep-out", type=Path, default=HERE / "language_sweep.jsonl", help="report: the sweep's rows")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.command in ("run", "sweep"):
        run_grid(args, args.conditions.split(","), parse_overrides(args.set), args.out)
    elif args.command == "rejudge":
        rejudge(args.out, Path(args.keep), load_judge(args.judge), args.judged)
    elif args.command == "remeasure":
        remeasure(args.out, Path(args.keep), args.refs_per_class)
    elif args.command == "sheets":
        by_key = {i.key.split("|")[0] + "|" + str(i.stated): i for i in items(per_class=VARIANTS)}
        picks = [(by_key[f"{shape}|{stated}"], int(seed)) for shape, stated, seed in (p.split(":") for p in args.pick.split(","))]
        contact_sheet(Path(args.keep), args.sheet, picks, records=with_judge(read_rows(args.out), args.judged))
    elif args.command == "report":
        text = report(with_judge(read_rows(args.out), args.judged))
        if args.sweep_out.exists():
            text = text.replace(END, "**Sweep** (" + str(args.sweep_out.name) + "):\n\n" + sweep_report(with_judge(read_rows(args.sweep_out), args.sweep_judged)) + "\n\n" + END)
        text = text.replace(END, "**How much the pictures hide the attribute**\n\n" + hiding_table(items(tuple(args.classes.split(",")), per_class=args.per_class)) + "\n\n" + END)
        print(text)
        if args.write_results:
            write_results_section(BEGIN, END, text)


if __name__ == "__main__":
    main()
