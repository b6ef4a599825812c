"""Does guidance steer a *shape*? Rewards with a known, visible target, measured in 3D.

    python benchmarks/bench_steering.py main  --seeds 5                # 8 targets × 5 seeds × 5 rewards (tiny)
    python benchmarks/bench_steering.py sweep --seeds 3 --targets 4    # λ / cap / window / every on the oracle
    python benchmarks/bench_steering.py main  --preset realsize --targets mug,chair --seeds 2 --out realsize.jsonl
    python benchmarks/bench_steering.py report                          # tables → benchmarks/RESULTS.md
    python benchmarks/bench_steering.py sheets                          # contact sheets → docs/steering.png
    python benchmarks/bench_steering.py cost                            # the silhouette term's cost per step

Targets: the eight objects of `benchmarks/sets/` (their meshes rebuilt by `sets/make_images.py`, in
the frame their input pictures were rendered in). Rewards, each guiding the same seeds:
(a) `oracle`: multi-view silhouette soft IoU against the target mesh's own renders through the
    critic's (jittered) orbit cameras — benchmark only, it knows the answer;
(b) `silhouette`: the input-silhouette term alone (vlm3d_ttg.silhouette);
(c) `vlm`: the tiny VLM critic alone (the paper's reward);
(d) `vlm+silhouette`: both, the silhouette with weight μ;
and `base`, unguided, on the same seed.

Metrics none of them optimises, after one alignment (each mesh translated to its bounding-box centre
and scaled to a bounding-box diagonal of 1; no rotation): Chamfer distance (mean nearest-neighbour
distance both ways, 3000 surface samples each), volumetric IoU on a 40³ grid (target: inside any of
its primitives; generated: the decoded occupancy > 0), and silhouette IoU from eight held-out
cameras (azimuth 45/135/225/315°, elevation −10° and 40°: none of them a critic or input camera).
Also `final_silhouette_iou` at the input's estimated camera (what (b) and (d) optimise). Paired
Δ = guided − base per (target, seed), bootstrap 95 % CI of the mean, and how many pairs improve.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "sets"))
sys.path.insert(0, str(ROOT))

import make_images  # noqa: E402
from machine import machine_description  # noqa: E402
from results_file import write_results_section  # noqa: E402

from vlm3d_ttg.critic import VLMCritic  # noqa: E402
from vlm3d_ttg.guidance import GuidanceConfig  # noqa: E402
from vlm3d_ttg.metrics.bootstrap import bootstrap_ci  # noqa: E402
from vlm3d_ttg.render import orbit_cameras  # noqa: E402
from vlm3d_ttg.reward import VLMReward  # noqa: E402
from vlm3d_ttg.sampler import GuidedSampler  # noqa: E402
from vlm3d_ttg.silhouette import (  # noqa: E402
    SilhouetteTerm,
    binary_iou,
    coverage_masks,
    soft_iou,
)
from vlm3d_ttg.terms import TermValue, Views  # noqa: E402

logger = logging.getLogger("bench_steering")
SETS = HERE / "sets"
REWARDS = ("base", "oracle", "silhouette", "vlm", "vlm+silhouette", "oracle-aligned")
HELD_OUT = [(a, e) for e in (-10.0, 40.0) for a in (45.0, 135.0, 225.0, 315.0)]
BEGIN, END = "<!-- bench_steering:begin -->", "<!-- bench_steering:end -->"

# The benchmark's run settings (tiny preset): small enough for 2 CPU cores, guidance defaults otherwise.
TINY = dict(steps=12, octree=32, views=4, view_size=56, grid=32)
# Realsize (the real widths and token counts, depth 1, random weights): as small as still guides (2 guided steps).
REALSIZE = dict(steps=6, octree=32, views=2, view_size=56, grid=32)
# Mini (the trained miniature world; issue 27): the language experiment's run settings.
MINI = dict(steps=20, octree=64, views=4, view_size=112, grid=64)
VLM_SILHOUETTE_WEIGHT = 10.0


# ----------------------------------------------------------------------------------------- targets
@dataclasses.dataclass
class Target:
    """One object: its input picture, prompt, primitives and mesh in the picture's world frame."""

    name: str
    prompt: str
    image: Any
    parts: list[trimesh.Trimesh]
    mesh: trimesh.Trimesh


def load_targets(names: list[str] | None = None) -> list[Target]:
    """The `shapes` set's objects, normalised exactly as make_images renders them."""
    from PIL import Image

    items = json.loads((SETS / "shapes.json").read_text())["items"]
    out = []
    for item in items:
        if names and item["id"] not in names:
            continue
        parts = [mesh for mesh, _ in make_images.OBJECTS[item["id"]]()]
        combined = trimesh.util.concatenate(parts)
        centre = (combined.vertices.max(axis=0) + combined.vertices.min(axis=0)) / 2
        scale = 0.9 / np.abs(combined.vertices - centre).max()
        parts = [trimesh.Trimesh((p.vertices - centre) * scale, p.faces) for p in parts]
        mesh = trimesh.util.concatenate(parts)
        image = Image.open(SETS / item["image"]).convert("RGBA")
        out.append(Target(item["id"], item["prompt"], image, parts, mesh))
    return out


# ----------------------------------------------------------------------------------------- the oracle
class OracleSilhouette:
    """Benchmark-only reward term: mean soft IoU of the shape's coverage with the target mesh's own
    coverage through fixed cameras of its own (4 orbit views at elevation 20°, and 2 at 60° / −20°)."""

    name = "oracle"

    def __init__(self, mesh: trimesh.Trimesh, size: int):
        self.own = orbit_cameras(azimuths_deg=[0.0, 90.0, 180.0, 270.0, 45.0, 225.0],
                                 elevation_deg=[20.0, 20.0, 20.0, 20.0, 60.0, -20.0], image_size=size)
        self.target = coverage_masks(torch.tensor(mesh.vertices, dtype=torch.float32),
                                     torch.tensor(mesh.faces, dtype=torch.long), self.own)

    def cameras(self, orbit):
        return self.own if self.own.view.device == orbit.view.device else self.own.to(orbit.view.device)

    def __call__(self, views: Views) -> TermValue:
        target = self.target.to(views.masks.device)
        values = [soft_iou(views.masks[k, 0].clamp(0, 1), target[k].to(views.masks.dtype)) for k in range(len(target))]
        value = torch.stack(values).mean()
        return TermValue(value, {"iou": float(np.mean([binary_iou(views.masks[k, 0], target[k]) for k in range(len(target))]))})

    def modules(self):
        return []


class AlignedOracleSilhouette(OracleSilhouette):
    """The oracle with the metrics' alignment built in: before each evaluation the target mesh is moved
    and scaled onto the current shape's bounding box (centre and diagonal), so the reward asks for the
    target's *shape*, not its size or place (benchmark only; uses the `observe` hook of reward terms)."""

    name = "oracle"

    def __init__(self, mesh: trimesh.Trimesh, size: int):
        super().__init__(mesh, size)
        self.mesh_vertices = torch.tensor(mesh.vertices, dtype=torch.float32)
        self.mesh_faces = torch.tensor(mesh.faces, dtype=torch.long)
        self.target_centre, self.target_diagonal = _align(np.asarray(mesh.vertices))

    def observe(self, vertices: torch.Tensor, faces: torch.Tensor) -> None:
        centre, diagonal = _align(vertices.detach().cpu().double().numpy())
        moved = (self.mesh_vertices - torch.tensor(self.target_centre, dtype=torch.float32)) * float(
            diagonal / self.target_diagonal) + torch.tensor(centre, dtype=torch.float32)
        self.target = coverage_masks(moved, self.mesh_faces, self.own)


# ----------------------------------------------------------------------------------------- metrics
def _align(vertices: np.ndarray) -> tuple[np.ndarray, float]:
    """(bounding-box centre, diagonal) of a vertex set: the one alignment of every metric."""
    low, high = vertices.min(axis=0), vertices.max(axis=0)
    return (low + high) / 2, float(np.linalg.norm(high - low))


def _aligned(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    centre, diagonal = _align(np.asarray(mesh.vertices))
    return trimesh.Trimesh((mesh.vertices - centre) / diagonal, mesh.faces, process=False)


GRID = 40
_AXIS = (np.arange(GRID) + 0.5) / GRID * 1.2 - 0.6  # cell centres over ±0.6 (an aligned bbox lies within ±0.5)
GRID_POINTS = np.stack(np.meshgrid(_AXIS, _AXIS, _AXIS, indexing="ij"), -1).reshape(-1, 3)


def target_occupancy(target: Target) -> np.ndarray:
    """Inside-any-primitive on the aligned grid (the primitives overlap; each is watertight)."""
    centre, diagonal = _align(np.asarray(target.mesh.vertices))
    points = GRID_POINTS * diagonal + centre
    inside = np.zeros(len(points), bool)
    for part in target.parts:
        inside |= part.contains(points)
    return inside


def generated_occupancy(backbone: Any, latents: torch.Tensor, mesh_decode: trimesh.Trimesh) -> np.ndarray:
    """Decoded occupancy (logits > the backbone's level) on the aligned grid of the generated mesh (decode frame)."""
    centre, diagonal = _align(np.asarray(mesh_decode.vertices))
    points = torch.tensor(GRID_POINTS * diagonal + centre, dtype=torch.float32)
    with torch.no_grad():
        field = backbone.occupancy_field(latents[:1])
        device, dtype = field.params.device, backbone.decode_dtype
        logits = torch.cat([field.query(chunk.to(device, dtype), field.params).float().cpu()
                            for chunk in points.split(32768)])
    return (logits > backbone.level).numpy()


def chamfer(a: trimesh.Trimesh, b: trimesh.Trimesh, samples: int = 3000) -> float:
    """Symmetric Chamfer distance: mean nearest-neighbour distance from a to b plus from b to a."""
    from scipy.spatial import cKDTree

    pa = trimesh.sample.sample_surface(a, samples, seed=0)[0]
    pb = trimesh.sample.sample_surface(b, samples, seed=0)[0]
    return float(cKDTree(pb).query(pa)[0].mean() + cKDTree(pa).query(pb)[0].mean())


HELD_OUT_CAMERAS = orbit_cameras(azimuths_deg=[x for x, _ in HELD_OUT], elevation_deg=[e for _, e in HELD_OUT],
                                 image_size=96, distance=2.0)  # distance for unit-diagonal meshes


def held_out_masks(mesh: trimesh.Trimesh) -> torch.Tensor:
    """Coverage of an aligned mesh from the held-out cameras."""
    return coverage_masks(torch.tensor(mesh.vertices, dtype=torch.float32), torch.tensor(mesh.faces), HELD_OUT_CAMERAS)


def held_out_iou(masks: torch.Tensor, target_masks: torch.Tensor) -> float:
    """Mean silhouette IoU over the held-out cameras."""
    return float(np.mean([binary_iou(masks[k], target_masks[k]) for k in range(len(HELD_OUT))]))


# ----------------------------------------------------------------------------------------- runs
def load(preset: str, depth: int = 1):
    from vlm3d_ttg.generation import GenerationOptions, load_models

    return load_models(GenerationOptions(realsize_depth=depth), preset=preset)


def guidance_config(reward: str, overrides: dict[str, Any], settings: dict[str, Any]) -> GuidanceConfig:
    weight = VLM_SILHOUETTE_WEIGHT if reward == "vlm+silhouette" else (1.0 if reward == "silhouette" else 0.0)
    base = dict(num_views=settings["views"], view_size=settings["view_size"], grid_resolution=settings["grid"],
                enabled=reward != "base", silhouette_weight=weight)
    base.update(overrides)
    return GuidanceConfig(**base).validate()


def run_one(models: Any, target: Target, reward_name: str, seed: int, settings: dict[str, Any],
            overrides: dict[str, Any], target_inside: np.ndarray, target_masks: torch.Tensor) -> dict[str, Any]:
    """One (target, reward, seed) run and its metrics."""
    backbone = models.backbone
    config = guidance_config(reward_name, overrides, settings)
    silhouette = SilhouetteTerm(backbone.input_foreground(target.image, config.view_size))
    critic = None
    if reward_name in ("base", "vlm", "vlm+silhouette"):
        critic = VLMCritic(models.vlm, models.processor, target.prompt, config.query)
    terms = [(config.silhouette_weight, silhouette)]  # weight 0: an observer (its camera and IoU are measured)
    if reward_name == "oracle":
        terms.append((1.0, OracleSilhouette(target.mesh, settings["view_size"])))
    if reward_name == "oracle-aligned":
        terms.append((1.0, AlignedOracleSilhouette(target.mesh, settings["view_size"])))
    reward = VLMReward(backbone, critic, config, terms=terms)
    sampler = GuidedSampler(backbone, reward, config)
    tic = time.perf_counter()
    output = sampler(target.image, num_inference_steps=settings["steps"], seed=seed, octree_resolution=settings["octree"],
                     progress=False)
    seconds = time.perf_counter() - tic
    if output.mesh is not None and len(output.mesh.faces):
        reward.measure_mesh(output.mesh.vertices, output.mesh.faces, backbone.export_frame(settings["octree"]))
    row: dict[str, Any] = {"target": target.name, "reward": reward_name, "seed": seed, "overrides": overrides,
                           "seconds": seconds, "final_silhouette_iou": silhouette.final_iou,
                           "camera": {k: silhouette.camera.__dict__[k] for k in ("azimuth_deg", "elevation_deg", "fit_iou")}
                           if silhouette.camera else None}
    guided = [r for r in output.records if r.guided]
    row.update(guided=len(guided), skipped=sum(1 for r in guided if r.skipped), capped=sum(1 for r in guided if r.capped),
               step_ratio=float(np.mean([r.applied_norm / r.sampler_step_norm for r in guided
                                         if r.applied_norm and r.sampler_step_norm])) if guided else None,
               term_seconds=float(np.mean([r.timings.get("term.silhouette", np.nan) for r in guided]))
               if guided and reward_name in ("silhouette", "vlm+silhouette") else None,
               critic_seconds=float(np.mean([r.timings.get("critic", np.nan) for r in guided]))
               if guided and critic is not None else None)
    if output.mesh is None or not len(output.mesh.faces):
        row.update(chamfer=None, volume_iou=None, held_out_iou=None)
        return row
    decode = output.mesh.copy()
    decode.apply_transform(backbone.export_frame(settings["octree"]))
    row["chamfer"] = chamfer(_aligned(decode), _aligned(target.mesh))
    inside = generated_occupancy(backbone, output.latents, decode)
    union = np.logical_or(inside, target_inside).sum()
    row["volume_iou"] = float(np.logical_and(inside, target_inside).sum() / union) if union else None
    row["held_out_iou"] = held_out_iou(held_out_masks(_aligned(decode)), target_masks)
    row["_mesh"] = output.mesh
    return row


def run_grid(models, targets, rewards, seeds, settings, overrides, out: Path, keep_meshes: Path | None = None) -> None:
    """Run every (target, reward, seed), appending one JSON line per run to `out` (resumable: done runs are skipped)."""
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["target"], r["reward"], r["seed"], json.dumps(r["overrides"], sort_keys=True)))
    key = json.dumps(overrides, sort_keys=True)
    for target in targets:
        inside = target_occupancy(target)
        target_masks = held_out_masks(_aligned(target.mesh))
        for seed in seeds:
            for reward in rewards:
                if (target.name, reward, seed, key) in done:
                    continue
                row = run_one(models, target, reward, seed, settings, overrides, inside, target_masks)
                mesh = row.pop("_mesh", None)
                if keep_meshes is not None and mesh is not None:
                    keep_meshes.mkdir(parents=True, exist_ok=True)
                    mesh.export(keep_meshes / f"{target.name}_{seed}_{reward}_{_short(key)}.ply")
                with out.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(f"{target.name:10s} seed {seed} {reward:15s} {key:40s} chamfer {row['chamfer']}  "
                      f"vIoU {row['volume_iou']}  held-out {row['held_out_iou']}  input-IoU {row['final_silhouette_iou']}  "
                      f"{row['seconds']:.1f}s", flush=True)


def _short(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


# ----------------------------------------------------------------------------------------- report
METRICS = [("chamfer", "Chamfer ↓", -1), ("volume_iou", "volume IoU ↑", 1), ("held_out_iou", "held-out sil. IoU ↑", 1),
           ("final_silhouette_iou", "input sil. IoU ↑", 1)]


def paired(rows: list[dict], reward: str, overrides: dict | None = None, base_overrides: dict | None = None) -> dict:
    """Per metric: Δ = guided − base over the (target, seed) pairs both have; mean, CI, pairs improved."""
    key = json.dumps(overrides or {}, sort_keys=True)
    base_key = json.dumps(base_overrides or {}, sort_keys=True)
    base = {(r["target"], r["seed"]): r for r in rows if r["reward"] == "base" and json.dumps(r["overrides"], sort_keys=True) == base_key}
    guided = {(r["target"], r["seed"]): r for r in rows if r["reward"] == reward and json.dumps(r["overrides"], sort_keys=True) == key}
    out = {}
    for metric, _, sign in METRICS:
        deltas = [guided[p][metric] - base[p][metric] for p in sorted(set(base) & set(guided))
                  if guided[p][metric] is not None and base[p][metric] is not None]
        if not deltas:
            continue
        ci = bootstrap_ci(np.array(deltas))
        out[metric] = dict(n=len(deltas), mean=ci.value, low=ci.low, high=ci.high,
                           improved=int(sum(1 for d in deltas if sign * d > 0)),
                           base_mean=float(np.mean([base[p][metric] for p in sorted(set(base) & set(guided))
                                                    if base[p][metric] is not None])))
    return out


def _cell(stats: dict | None) -> str:
    if not stats:
        return "n/a"
    return (f"{stats['mean']:+.4f} [{stats['low']:+.4f}, {stats['high']:+.4f}] "
            f"{stats['improved']}/{stats['n']}")


def report(args) -> str:
    main_rows = _read(args.out)
    lines = [BEGIN, "## Steering a shape (bench_steering.py)", "",
             f"Machine: {machine_description()} — at report time; during the runs the load average was 7–16, so "
             "seconds are not comparable across rows. Raw rows: benchmarks/steering_main.jsonl, steering_sweep.jsonl "
             "(`bench_steering.py report --out benchmarks/steering_main.jsonl --sweep benchmarks/steering_sweep.jsonl`).", ""]
    settings = TINY
    lines += [f"Tiny preset, {settings['steps']} steps, {settings['views']} views at {settings['view_size']} px, guidance "
              f"grid {settings['grid']}, export octree {settings['octree']}; guidance defaults otherwise (λ 0.03 "
              f"latent_rms, cap 1× the sampler step, σ window 0.2–0.85, every 2nd step → "
              f"{_guided_steps(main_rows)} guided steps). μ = {VLM_SILHOUETTE_WEIGHT:g} for vlm+silhouette. "
              "Cells: mean paired Δ (guided − unguided, same target and seed) [bootstrap 95 % CI], then pairs "
              "improved / pairs (improved: Chamfer down, IoUs up).", ""]
    lines += ["| reward | " + " | ".join(label for _, label, _ in METRICS) + " |",
              "|---|" + "---|" * len(METRICS)]
    for reward in REWARDS[1:]:
        stats = paired(main_rows, reward)
        lines.append(f"| {reward} | " + " | ".join(_cell(stats.get(m)) for m, _, _ in METRICS) + " |")
    lines += ["", "Chamfer pairs improved per target (mean Δ): " + "; ".join(
        per_target(main_rows, reward) for reward in ("oracle", "oracle-aligned") if any(r["reward"] == reward for r in main_rows)) + "."]
    base = [r for r in main_rows if r["reward"] == "base" and not r["overrides"]]
    if base:
        lines += ["", "Unguided means: " + ", ".join(
            f"{label} {np.mean([r[m] for r in base if r[m] is not None]):.4f}" for m, label, _ in METRICS) + "."]
    sweep_rows = _read(args.sweep) if args.sweep else []
    if sweep_rows:
        lines.append(sweep_report(sweep_rows))
    lines += ["", END]
    return "\n".join(lines)


def sweep_report(rows: list[dict]) -> str:
    """The oracle under each sweep setting vs the same unguided runs (the seeds every setting ran: 0 and 1)."""
    rows = [r for r in rows if r["seed"] < 2]
    lines = ["", "### What steers best: the oracle under other λ / cap / window / every", "",
             "Targets toy_robot, mug, table, chair × seeds 0, 1 (8 pairs), same unguided baselines; each row changes the defaults (λ 0.03, cap 1, window 0.2–0.85, "
             "every 2) as stated. Step/cap: mean ‖d‖/‖Δz‖ of the applied guidance over guided steps, and the "
             "fraction of guided steps where the cap bound.", "",
             "| setting | guided steps | step/cap | Chamfer ↓ | volume IoU ↑ | held-out sil. IoU ↑ |", "|---|---|---|---|---|---|"]
    for overrides in SWEEP:
        key = json.dumps(overrides, sort_keys=True)
        runs = [r for r in rows if r["reward"] == "oracle" and json.dumps(r["overrides"], sort_keys=True) == key]
        if not runs:
            continue
        stats = paired(rows, "oracle", overrides)
        capped = np.mean([r["capped"] / max(r["guided"], 1) for r in runs])
        ratio = np.mean([r["step_ratio"] for r in runs if r["step_ratio"] is not None])
        label = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "defaults"
        lines.append(f"| {label} | {runs[0]['guided']} | {ratio:.2f} / {capped:.0%} | " +
                     " | ".join(_cell(stats.get(m)) for m in ("chamfer", "volume_iou", "held_out_iou")) + " |")
    names = sorted({r["target"] for r in rows if r["reward"] == "oracle" and r["overrides"]})
    lines += ["", "Mean Δ Chamfer per target (" + ", ".join(names) + ") under each setting:", "",
              "| setting | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    base = {(r["target"], r["seed"]): r for r in rows if r["reward"] == "base" and not r["overrides"]}
    for overrides in SWEEP:
        key = json.dumps(overrides, sort_keys=True)
        cells = []
        for name in names:
            deltas = [r["chamfer"] - base[(name, r["seed"])]["chamfer"] for r in rows
                      if r["reward"] == "oracle" and r["target"] == name and json.dumps(r["overrides"], sort_keys=True) == key
                      and (name, r["seed"]) in base and r["seed"] < 2]
            cells.append(f"{np.mean(deltas):+.4f}" if deltas else "n/a")
        lines.append(f"| {', '.join(f'{k}={v}' for k, v in overrides.items()) or 'defaults'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_target(rows: list[dict], reward: str) -> str:
    """Pairs improved in Chamfer per target."""
    base = {(r["target"], r["seed"]): r for r in rows if r["reward"] == "base" and not r["overrides"]}
    cells = []
    for name in [i["id"] for i in json.loads((SETS / "shapes.json").read_text())["items"]]:
        deltas = [r["chamfer"] - base[(name, r["seed"])]["chamfer"] for r in rows
                  if r["reward"] == reward and r["target"] == name and not r["overrides"] and (name, r["seed"]) in base]
        if deltas:
            cells.append(f"{name} {sum(d < 0 for d in deltas)}/{len(deltas)} ({np.mean(deltas):+.4f})")
    return f"{reward}: " + ", ".join(cells)


def contact_sheets(mesh_dir: Path, out: Path, names: list[str], seed: int = 0) -> None:
    """Input picture, target, unguided and guided meshes side by side, one row per target, from the input's camera."""
    from vlm3d_ttg.render import render_mesh, write_contact_sheet

    size = 168
    camera = orbit_cameras(azimuths_deg=[30.0], elevation_deg=15.0, image_size=size)  # make_images' camera
    images, labels = [], []
    for target in load_targets(names):
        picture = np.asarray(target.image.resize((size, size)), dtype=np.float32) / 255
        rgb = picture[..., :3] * picture[..., 3:] + (1 - picture[..., 3:])
        images.append(torch.tensor(rgb).permute(2, 0, 1))
        labels.append(f"{target.name}: input")
        meshes = [("target", target.mesh)] + [
            (reward, next(iter(sorted(mesh_dir.glob(f"{target.name}_{seed}_{reward}_*.ply"))), None))
            for reward in ("base", "oracle", "oracle-aligned", "silhouette", "vlm+silhouette")]
        for reward, mesh in meshes:
            if isinstance(mesh, Path):
                mesh = trimesh.load(mesh, force="mesh")
            if mesh is None:  # not run (yet)
                images.append(torch.ones(3, size, size))
            else:
                result = render_mesh(torch.tensor(mesh.vertices, dtype=torch.float32), torch.tensor(mesh.faces), camera)
                images.append(result.images[0])
            labels.append("unguided" if reward == "base" else reward)
    write_contact_sheet(out, torch.stack(images), labels, columns=7,
                        title=f"tiny preset, seed {seed}, seen from the input's camera: input, target mesh, unguided, and guided "
                              "by the oracle, the aligned oracle, the input silhouette, VLM + silhouette (defaults)")


def _guided_steps(rows):
    guided = [r["guided"] for r in rows if r["reward"] == "oracle" and not r["overrides"]]
    return guided[0] if guided else "?"


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ----------------------------------------------------------------------------------------- CLI
SWEEP = [
    {},
    {"scale": 0.1},  # 3.3× the default step: the cap (1× the sampler step) binds
    {"scale": 0.1, "max_step_ratio": 3.0},  # the same with the cap loosened: ~2.4× the sampler step
    {"every": 1, "sigma_window": (0.0, 1.0)},  # default λ at every step of the run
    {"every": 1, "sigma_window": (0.0, 1.0), "max_step_ratio": 3.0, "scale": 0.1},  # all of it
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["main", "sweep", "report", "sheets", "cost"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--targets", default="all", help="all, a number (the first N), or names separated by commas")
    parser.add_argument("--rewards", default=",".join(REWARDS))
    parser.add_argument("--preset", default="tiny", choices=["tiny", "realsize", "mini"])
    parser.add_argument("--out", type=Path, default=None, help="JSON lines of the runs (resumable)")
    parser.add_argument("--meshes", type=Path, default=None, help="keep the meshes here (for contact sheets)")
    parser.add_argument("--write-results", action="store_true")
    parser.add_argument("--sweep", type=Path, default=None, help="report: the sweep's JSON lines")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    names = None
    all_names = [i["id"] for i in json.loads((SETS / "shapes.json").read_text())["items"]]
    if args.targets != "all":
        names = all_names[: int(args.targets)] if args.targets.isdigit() else args.targets.split(",")
    args.out = args.out or HERE / ("steering_main.jsonl" if args.command in ("main", "report") else f"steering_{args.command}.jsonl")
    if args.command in ("main", "sweep"):
        models = load(args.preset)
        targets = load_targets(names)
        seeds = list(range(args.seeds))
        if args.command == "main":
            settings = {"realsize": REALSIZE, "mini": MINI}.get(args.preset, TINY)
            run_grid(models, targets, args.rewards.split(","), seeds, settings, {}, args.out, args.meshes)
        else:
            for overrides in SWEEP:
                run_grid(models, targets, ["oracle"], seeds, TINY, overrides, args.out)
            run_grid(models, targets, ["base"], seeds, TINY, {}, args.out)
    elif args.command == "sheets":
        contact_sheets(args.meshes, ROOT / "docs" / "steering.png", names or ["snowman", "rocket", "toy_robot", "mug"])
    elif args.command == "report":
        text = report(args)
        print(text)
        if args.write_results:
            write_results_section(BEGIN, END, text)


if __name__ == "__main__":
    main()
