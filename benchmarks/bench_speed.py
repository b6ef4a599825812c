"""What guidance's speed knobs cost and what they keep: the cost–effect map of issue #28.

    python benchmarks/bench_speed.py steering --seeds 3            # the oracle's effect under each schedule setting (mini)
    python benchmarks/bench_speed.py language --seeds 2            # the guide critic's effect under each critic setting (mini)
    python benchmarks/bench_speed.py report [--write-results]      # the Pareto table → RESULTS.md, docs/speed_map.png

Each setting is a set of guidance knobs applied on top of a preset's defaults. Its *cost* is counted at
the real sizes (Hunyuan3D-2 + Qwen2.5-VL-7B, 50 steps: `vlm3d_ttg.cost`) as guided ÷ unguided TFLOP,
and measured on this CPU on the mini preset as guided ÷ unguided wall time of the runs of this benchmark
(the same process, targets and seeds). Its *effect* is measured on the trained miniature world with
what guidance does there that is measurable (RESULTS, "Language constrains geometry?": the attribute
rate does not move, so it cannot be the axis):

- `steering`: the oracle reward (bench_steering: the target's own silhouettes, 6 fixed cameras) on the
  shapes set, 8 targets × seeds; effect = paired Δ Chamfer (and volume IoU) to the target vs the
  unguided run of the same seed. It sees every schedule knob (every, σ window, guidance grid, view size,
  reused displacements) but not the critic's (views, layout: the oracle has its own cameras).
- `language`: the mini guide critic on the language experiment's items (true statements); effect =
  paired Δ of the guide critic's r of the final mesh, scored at the preset's default views whatever the
  setting (so a setting cannot win by changing the ruler), and the judge critic's Δ. It sees the critic's
  knobs (views, view size, grid layout) and the stop rule.

Relative effect = mean Δ(setting) ÷ mean Δ(default) over the same pairs, with a paired bootstrap CI.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

logger = logging.getLogger("bench_speed")
BEGIN, END = "<!-- bench_speed:begin -->", "<!-- bench_speed:end -->"
STEERING_OUT = HERE / "speed_steering.jsonl"
LANGUAGE_OUT = HERE / "speed_language.jsonl"
LANGUAGE_JUDGED = HERE / "speed_language_judge.json"


@dataclasses.dataclass(frozen=True)
class Setting:
    """Guidance knobs on top of a preset's defaults. `view_scale` scales the preset's view side (0.5: 448 → 224 at
    the real sizes, 112 → 56 on mini), so one setting means the same thing on both."""

    name: str
    knobs: dict[str, Any]
    view_scale: float = 1.0

    def overrides(self, view_size: int) -> dict[str, Any]:
        """The GuidanceConfig field values of this setting for a preset whose view side is `view_size`."""
        out = dict(self.knobs)
        if self.view_scale != 1.0:
            out["view_size"] = int(round(view_size * self.view_scale / 28)) * 28
        return out

    def oracle_overrides(self, view_size: int) -> dict[str, Any]:
        """The overrides the oracle can see (the critic's own knobs dropped)."""
        return {name: value for name, value in self.overrides(view_size).items() if name not in CRITIC_ONLY}


#: Knobs only the critic sees: the oracle (its own 6 cameras) is blind to them, so a setting's oracle runs are
#: those of its other knobs ("every 4 + 2 views" on the oracle axis is "every 4").
CRITIC_ONLY = ("num_views", "view_layout", "stop_r")  # stop_r: a level of the critic's r (the oracle's r is a soft IoU)
SETTINGS = [
    Setting("default", {}),
    Setting("every 3", {"every": 3}),
    Setting("every 4", {"every": 4}),
    Setting("every 5", {"every": 5}),
    Setting("every 6", {"every": 6}),
    Setting("σ 0.3–0.7", {"sigma_window": (0.3, 0.7)}),
    Setting("guidance grid 32", {"grid_resolution": 32}),
    Setting("view side ½", {}, view_scale=0.5),
    Setting("2 views", {"num_views": 2}),
    Setting("grid layout", {"view_layout": "grid"}),
    Setting("every 4 + 2 views", {"every": 4, "num_views": 2}),
    Setting("every 5 + 2 views", {"every": 5, "num_views": 2}),
    Setting("every 4 + guidance grid 32", {"every": 4, "grid_resolution": 32}),
    Setting("every 4 + 2 views + guidance grid 32", {"every": 4, "num_views": 2, "grid_resolution": 32}),
    Setting("every 4 + grid layout", {"every": 4, "view_layout": "grid"}),
    Setting("every 4 + view side ½", {"every": 4}, view_scale=0.5),
    # The new ways (issue #28): the last displacement reused at the skipped steps; guidance stopped once r is high.
    Setting("reuse", {"reuse_displacement": 1.0}),
    Setting("every 3 + reuse", {"every": 3, "reuse_displacement": 1.0}),
    Setting("every 4 + reuse", {"every": 4, "reuse_displacement": 1.0}),
    Setting("every 5 + reuse", {"every": 5, "reuse_displacement": 1.0}),
    Setting("every 6 + reuse", {"every": 6, "reuse_displacement": 1.0}),
    Setting("every 8 + reuse", {"every": 8, "reuse_displacement": 1.0}),
    Setting("every 4 + 2 views + reuse", {"every": 4, "num_views": 2, "reuse_displacement": 1.0}),
    Setting("every 5 + 2 views + reuse", {"every": 5, "num_views": 2, "reuse_displacement": 1.0}),
    Setting("every 4 + guidance grid 32 + reuse", {"every": 4, "grid_resolution": 32, "reuse_displacement": 1.0}),
    Setting("every 4 + 2 views + guidance grid 32 + reuse",
            {"every": 4, "num_views": 2, "grid_resolution": 32, "reuse_displacement": 1.0}),
    Setting("stop at r ≥ 1", {"stop_r": 1.0}),
]


def chosen_settings(args) -> list[Setting]:
    """The settings --settings names (comma-separated), or all of them."""
    return [by_name(name) for name in args.settings.split(",")] if args.settings else SETTINGS


def by_name(name: str) -> Setting:
    for setting in SETTINGS:
        if setting.name == name:
            return setting
    raise SystemExit(f"unknown setting {name!r}; known: {', '.join(s.name for s in SETTINGS)}")


# ----------------------------------------------------------------------------------------- runs
def run_steering(args) -> None:
    """The oracle under each setting and the unguided runs, on the mini preset (bench_steering's MINI settings)."""
    import torch

    import bench_steering as steering

    torch.set_num_threads(args.threads)
    models = steering.load("mini")
    targets = steering.load_targets(None)
    seeds = list(range(args.seeds))
    chosen = chosen_settings(args)
    # Unguided first, then each setting: all in this one process, so their wall times compare.
    steering.run_grid(models, targets, ["base"], seeds, steering.MINI, {}, args.steering_out)
    seen = set()
    for setting in chosen:
        overrides = setting.oracle_overrides(steering.MINI["view_size"])
        if _key(overrides) in seen:
            continue
        seen.add(_key(overrides))
        settings = dict(steering.MINI, view_size=overrides.get("view_size", steering.MINI["view_size"]))
        steering.run_grid(models, targets, ["oracle"], seeds, settings, overrides, args.steering_out)


def run_language(args) -> None:
    """The mini guide critic under each setting on the language experiment's true statements (bench_language)."""
    import bench_language as language

    chosen = chosen_settings(args)
    mini_view = 112  # the mini preset's view side (presets.PRESETS["mini"].defaults)
    for setting in chosen:
        overrides = setting.overrides(mini_view)
        conditions = ["base", "guided"] if setting.name == "default" else ["guided"]
        grid_args = argparse.Namespace(threads=args.threads, classes=args.classes, statements="true", per_class=args.per_class,
                                       seeds=args.seeds, steps=20, keep=str(args.keep), refs_per_class=language.REFS_PER_CLASS)
        language.run_grid(grid_args, conditions, overrides, args.language_out)


def run_timing(args) -> None:
    """Wall time of each setting's guided run ÷ the unguided run on this CPU (mini preset, the mini guide critic):
    for each of a few items, the unguided and the guided run back to back in this one process, so that a change
    of the machine's load falls on both."""
    import torch

    import bench_language as language

    torch.set_num_threads(args.threads)
    models, settings = language.load()
    chosen = chosen_settings(args)
    picked = [item for item in language.items(tuple(args.classes.split(",")), "true", 1)]
    done = {(r["setting"], r["item"]) for r in read_rows(args.timing_out)}
    for setting in chosen:
        overrides = setting.overrides(112)
        for item in picked:
            if (setting.name, item.key) in done:
                continue
            image = language.input_image(item.spec, item.view)
            base = language.sample(models, settings, item, "base", 0, 20, {}, image)
            guided = language.sample(models, settings, item, "guided", 0, 20, overrides, image)
            row = dict(setting=setting.name, item=item.key, base_seconds=base.row["seconds"],
                       guided_seconds=guided.row["seconds"], guided=guided.row.get("guided"))
            with args.timing_out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(f"{setting.name:40s} {item.key:35s} base {row['base_seconds']:.1f}s guided {row['guided_seconds']:.1f}s", flush=True)


def run_realsize(args) -> None:
    """One guided and one unguided step of each speed preset at the real widths and token counts (realsize preset,
    depth 1, random weights; 448-px views), timed on this CPU, and the 50-step run's ratio they make:
    1 + G·(guided step − unguided step) ÷ (50 · unguided step), with G the preset's guided steps of 50."""
    import time

    import torch
    from PIL import Image

    import bench_steering as steering
    from vlm3d_ttg.cost import price
    from vlm3d_ttg.critic import VLMCritic
    from vlm3d_ttg.guidance import GuidanceConfig
    from vlm3d_ttg.reward import VLMReward
    from vlm3d_ttg.sampler import GuidedSampler
    from vlm3d_ttg.speed import SPEEDS

    torch.set_num_threads(args.threads)
    models = steering.load("realsize", depth=1)
    image = Image.open(ROOT / "examples" / "toy_robot.png")
    rows = read_rows(args.realsize_out)
    for speed in SPEEDS:
        if any(r["speed"] == speed for r in rows):
            continue
        # 4 steps (σ 0, ⅓, ⅔): the step at σ ⅓ guided, the one at ⅔ not; the preset's critic knobs as they are.
        config = GuidanceConfig.for_speed(speed, sigma_window=(0.2, 0.5), every=1)
        critic = VLMCritic(models.vlm, models.processor, "a small toy robot", config.query, layout=config.view_layout,
                           grid_size=config.view_size)
        sampler = GuidedSampler(models.backbone, VLMReward.from_config(models.backbone, critic, config), config)
        ends: list[float] = []
        sampler(image, num_inference_steps=4, seed=0, progress=False, octree_resolution=32, output_type="latent",
                callback_on_step_end=lambda *_: ends.append(time.perf_counter()))
        guided, unguided = ends[1] - ends[0], ends[2] - ends[1]
        planned = price(GuidanceConfig.for_speed(speed), 50)
        run_ratio = 1 + planned.settings["guided_steps"] * (guided - unguided) / (50 * unguided)
        row = dict(speed=speed, guided_step=guided, unguided_step=unguided, guided_steps_of_50=planned.settings["guided_steps"],
                   measured_run_ratio=run_ratio, counted_ratio=planned.ratio, views=config.num_views, view_size=config.view_size)
        rows.append(row)
        print(row, flush=True)
        from vlm3d_ttg.io import write_text_atomic

        write_text_atomic(args.realsize_out, "".join(json.dumps(r) + "\n" for r in rows))


def timing_ratios(rows: list[dict]) -> dict[str, float]:
    """Per setting: Σ guided seconds ÷ Σ unguided seconds of its back-to-back pairs."""
    out = {}
    for name in {r["setting"] for r in rows}:
        mine = [r for r in rows if r["setting"] == name]
        out[name] = sum(r["guided_seconds"] for r in mine) / sum(r["base_seconds"] for r in mine)
    return out


def export_queries(args) -> list[dict[str, Any]]:
    """How many decoder queries the final export makes at the real export grids: hy3dgen's vanilla dense grid
    (what `generate` runs) against the hierarchical decoding of its FlashVDM decoder (a dense grid at ¼ of the
    side, then only the points near the surface at each doubling; FlashVDM's adaptive KV selection on top is
    not counted). Counted on the final latents of unguided mini runs: the near-surface band comes from the
    decoded field at each coarser level (decoded densely here: a slight overcount where the band has holes)."""
    import torch
    import torch.nn.functional as F

    import bench_language as language
    from vlm3d_ttg.backbones.hunyuan3d2 import BOUNDS, LEVEL

    torch.set_num_threads(args.threads)
    models, settings = language.load()
    vae = models.backbone.pipeline.vae
    from hy3dgen.shapegen.models.autoencoders.volume_decoders import VanillaVolumeDecoder

    def near_surface(logits: torch.Tensor) -> torch.Tensor:
        # hy3dgen's rule: a point whose sign differs from a 6-neighbour's, or whose |logit| < 0.95.
        inside = logits > LEVEL
        band = logits.abs() < 0.95
        for axis in range(3):
            differs = inside.narrow(axis, 1, inside.shape[axis] - 1) != inside.narrow(axis, 0, inside.shape[axis] - 1)
            band.narrow(axis, 1, inside.shape[axis] - 1).logical_or_(differs)
            band.narrow(axis, 0, inside.shape[axis] - 1).logical_or_(differs)
        return band

    def dilate(mask: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(mask[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0

    def refined_points(mask: torch.Tensor, expand: int) -> int:
        for _ in range(expand):
            mask = dilate(mask)
        finer = torch.zeros([2 * (n - 1) + 1 for n in mask.shape], dtype=torch.bool)
        finer[::2, ::2, ::2] = mask
        for _ in range(2 - expand):
            finer = dilate(finer)
        return int(finer.sum())

    rows = []
    for item in language.items(tuple(args.classes.split(",")), "true", 2):
        image = language.input_image(item.spec, item.view)
        done = language.sample(models, settings, item, "base", 0, 20, {}, image)
        with torch.no_grad():
            tokens = vae(1.0 / vae.scale_factor * done.latents)
            for resolution in (256, 384):
                levels = []
                side = resolution
                while side >= 63:
                    levels.append(side)
                    side //= 2
                levels.reverse()
                queries = (levels[0] + 1) ** 3
                for k, side in enumerate(levels[1:]):
                    coarse = VanillaVolumeDecoder()(tokens, vae.geo_decoder, bounds=BOUNDS, num_chunks=100_000,
                                                    octree_resolution=levels[k], enable_pbar=False)[0]
                    queries += refined_points(near_surface(coarse), 0 if side == levels[-1] else 1)
                rows.append(dict(item=item.key, octree=resolution, levels=levels, hierarchical=queries,
                                 dense=(resolution + 1) ** 3))
                print(rows[-1], f"{queries / (resolution + 1) ** 3:.3%}", flush=True)
    from vlm3d_ttg.io import write_text_atomic

    write_text_atomic(args.export_out, json.dumps(rows, indent=1))
    return rows


# ----------------------------------------------------------------------------------------- the critic's accuracy
#: The critic's view settings whose accuracy is checked: (name, views kept of the 4, side, layout).
CRITIC_VIEWS = [("4 views × 112 (default)", (0, 1, 2, 3), 112, "separate"), ("2 views × 112", (0, 2), 112, "separate"),
                ("4 views × 56 (view side ½)", (0, 1, 2, 3), 56, "separate"),
                ("4 views tiled in one 112 image (grid layout)", (0, 1, 2, 3), 112, "grid"),
                ("2 views × 56", (0, 2), 56, "separate")]


#: The critic settings whose gradient direction is compared with the default's (name, GuidanceConfig overrides on mini).
DIRECTION_SETTINGS = [("default (another camera draw)", {}), ("2 views", {"num_views": 2}), ("3 views", {"num_views": 3}),
                      ("view side ½", {"view_size": 56}), ("grid layout", {"view_layout": "grid"}),
                      ("2 views × ½", {"num_views": 2, "view_size": 56})]


def gradient_directions(args) -> list[dict[str, Any]]:
    """How well a cheaper critic setting's gradient points where the default's does: at predicted clean latents x̂
    of unguided runs (σ ≈ 0.3, 0.5, 0.7 of the window, the language items' true statements), the cosine between
    one draw of the setting's ∇_x̂ r (jittered cameras, as a guided step has) and the mean of 4 independent draws
    at the default settings. The default's own next draw is the ceiling: camera jitter alone keeps it below 1.
    The sampler normalises the step's length (latent_rms, the cap), so the direction is what guidance keeps."""
    import dataclasses as dc

    import torch

    import bench_language as language
    from vlm3d_ttg.critic import VLMCritic
    from vlm3d_ttg.guidance import predicted_clean_latent
    from vlm3d_ttg.reward import VLMReward
    from vlm3d_ttg.sampler import GuidedSampler

    torch.set_num_threads(args.threads)
    models, settings = language.load()
    backbone = models.backbone
    base = dc.replace(settings.guidance)
    rows = []
    for item in language.items(tuple(args.classes.split(",")), "true", args.per_class):
        image = language.input_image(item.spec, item.view)
        sampler = GuidedSampler(backbone, None, dc.replace(base, enabled=False))
        context = sampler.prepare(image, num_inference_steps=20)
        sigmas = context.sigmas
        wanted = {min(range(len(sigmas) - 1), key=lambda i: abs(sigmas[i] - target)) for target in (0.3, 0.5, 0.7)}
        captured: dict[int, torch.Tensor] = {}

        def keep(_sampler, i, _sigma, state):
            if i + 1 in wanted:
                captured[i + 1] = state["latents"].detach().clone()
            return None

        sampler(image, num_inference_steps=20, seed=0, progress=False, octree_resolution=settings.options.octree_resolution,
                callback_on_step_end=keep, output_type="latent")

        def gradient(config, clean, seed):
            critic = VLMCritic(models.vlm, models.processor, item.statement, config.query, layout=config.view_layout,
                               grid_size=config.view_size)
            reward = VLMReward.from_config(backbone, critic, config.validate())
            leaf = clean.detach().clone().requires_grad_(True)
            evaluation = reward(leaf, generator=torch.Generator().manual_seed(seed))
            evaluation.r.sum().backward()
            return leaf.grad.detach().flatten().double()

        for index, latents in sorted(captured.items()):
            with torch.no_grad():
                velocity = sampler.velocity(latents.to(backbone.dtype), index, context).float()
            clean = predicted_clean_latent(latents.float(), velocity, sigmas[index])
            try:
                reference = torch.stack([gradient(base, clean, 100 + k) for k in range(4)]).mean(0)
                row = dict(item=item.key, step=index, sigma=sigmas[index])
                for name, overrides in DIRECTION_SETTINGS:
                    g = gradient(dc.replace(base, **overrides), clean, 200)
                    row[name] = float(torch.nn.functional.cosine_similarity(g, reference, dim=0))
            except Exception as error:  # an x̂ with no surface or views out of range: said, and left out
                print(f"{item.key} step {index}: left out ({type(error).__name__}: {error})", flush=True)
                continue
            rows.append(row)
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
            from vlm3d_ttg.io import write_text_atomic

            write_text_atomic(args.directions_out, json.dumps(rows, indent=1))
    return rows


def critic_accuracy(args) -> list[dict[str, Any]]:
    """The mini guide critic's held-out balanced accuracy per description (yes: renders of test shapes with it;
    no: the same class with the other attribute value, its broken variants, other classes), under each view
    setting: views dropped, resampled to a smaller side, or tiled into one image (as the reward renders them)."""
    import torch
    import torch.nn.functional as F

    import bench_language as language
    from vlm3d_ttg.critic import VLMCritic
    from vlm3d_ttg.critic.layout import square_cell_tile
    from vlm3d_ttg.miniworld.dataset import load_meta

    torch.set_num_threads(args.threads)
    models, _ = language.load()
    records = load_meta(args.data)
    index = np.load(args.critic_views / "test_index.npz")
    views = np.load(args.critic_views / "test_views.npy", mmap_mode="r")
    shape_row, broken = index["shape_row"], index["broken"]
    desc = np.asarray([records[r].description for r in shape_row])
    cls = np.asarray([records[r].cls for r in shape_row])
    rows = []
    for name, kept, side, layout in CRITIC_VIEWS:
        cell = square_cell_tile(len(kept), side)[2] if layout == "grid" else side
        rng = np.random.default_rng(1)
        accuracies = {}
        for description in sorted(set(desc[broken == 0].tolist())):
            critic = VLMCritic(models.vlm, models.processor, description, "dual", layout=layout,
                               grid_size=side if layout == "grid" else None)
            positives = np.nonzero((desc == description) & (broken == 0))[0]
            the_cls = cls[positives[0]]
            groups = {"yes": positives,
                      "no": np.concatenate([np.nonzero((cls == the_cls) & (desc != description) & (broken == 0))[0],
                                            np.nonzero((desc == description) & (broken == 1))[0],
                                            rng.choice(np.nonzero(cls != the_cls)[0], len(positives), replace=False)])}
            right = {}
            for group, ids in groups.items():
                scores = []
                for shape in ids:
                    images = torch.from_numpy(np.ascontiguousarray(views[shape][list(kept)])).float() / 255.0
                    if cell != images.shape[-1]:
                        images = F.interpolate(images, size=(cell, cell), mode="area")
                    with torch.no_grad():
                        scores.append(float(critic(images).r.float().mean()))
                scores = np.array(scores)
                right[group] = float(((scores > 0) if group == "yes" else (scores <= 0)).mean())
            accuracies[description] = (right["yes"] + right["no"]) / 2
        values = np.array(list(accuracies.values()))
        rows.append(dict(setting=name, mean=float(values.mean()), min=float(values.min()),
                         at_least_90=int((values >= 0.9).sum()), descriptions=len(values), per_description=accuracies))
        print(f"{name:45s} mean {values.mean():.3f} min {values.min():.3f} ≥0.90: {(values >= 0.9).sum()}/{len(values)}", flush=True)
    from vlm3d_ttg.io import write_text_atomic

    write_text_atomic(args.critic_out, json.dumps(rows, indent=1))
    return rows


# ----------------------------------------------------------------------------------------- statistics
def _key(overrides: dict) -> str:
    return json.dumps(overrides, sort_keys=True, default=list)


def _pairs(rows: list[dict], unit: tuple[str, ...], guided_name: str, guided_key: str, base_name: str, metric: str
           ) -> dict[tuple, float]:
    """Per pair (`unit` fields): Δ metric = guided − base."""
    name_field = "reward" if "reward" in rows[0] else "condition"
    base = {tuple(r[u] for u in unit): r for r in rows if r[name_field] == base_name}
    guided = {tuple(r[u] for u in unit): r for r in rows
              if r[name_field] == guided_name and _key(r["overrides"]) == guided_key}
    # Sorted: the bootstrap draws pairs by position, so the order must not depend on the process's hash seed.
    return {p: guided[p][metric] - base[p][metric] for p in sorted(set(base) & set(guided))
            if guided[p].get(metric) is not None and base[p].get(metric) is not None}


def relative_effect(setting: dict[tuple, float], default: dict[tuple, float], resamples: int = 4000, seed: int = 0
                    ) -> tuple[float, float, float, int] | None:
    """mean Δ(setting) ÷ mean Δ(default) over the pairs both have, with a paired percentile bootstrap 95 % CI."""
    common = sorted(set(setting) & set(default))
    if len(common) < 2:
        return None
    a = np.array([setting[p] for p in common])
    b = np.array([default[p] for p in common])
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(common), size=(resamples, len(common)))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = a[index].mean(axis=1) / b[index].mean(axis=1)
    low, high = np.nanpercentile(ratios, [2.5, 97.5])
    return float(a.mean() / b.mean()), float(low), float(high), len(common)


def mean_ci(deltas: dict[tuple, float], resamples: int = 4000, seed: int = 0) -> tuple[float, float, float, int] | None:
    """Mean Δ with a percentile bootstrap 95 % CI."""
    if not deltas:
        return None
    values = np.array(list(deltas.values()))
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(values.mean()), float(low), float(high), len(values)


REAL_VIEW, REAL_STEPS = 448, 50  # GuidanceConfig's default view side, the real model's default steps


def counted(setting: Setting):
    """The setting's counted cost at the real sizes (`vlm3d_ttg.cost.price`, 50 steps, Qwen2.5-VL-7B)."""
    from vlm3d_ttg.cost import price
    from vlm3d_ttg.guidance import GuidanceConfig

    return price(GuidanceConfig(**setting.overrides(REAL_VIEW)), REAL_STEPS)


def steering_effects(rows: list[dict]) -> dict[str, dict[str, Any]]:
    """Per setting: the oracle's paired Δ Chamfer / volume IoU vs unguided, relative to the default's, and
    the wall time of its runs ÷ the unguided runs' (same process, targets and seeds)."""
    out: dict[str, dict[str, Any]] = {}
    unit = ("target", "seed")
    default_key = _key({})
    defaults = {m: _pairs(rows, unit, "oracle", default_key, "base", m) for m in ("chamfer", "volume_iou")}
    base_seconds = {(r["target"], r["seed"]): r["seconds"] for r in rows if r["reward"] == "base"}
    for setting in SETTINGS:
        key = _key(setting.oracle_overrides(112))
        chamfer = _pairs(rows, unit, "oracle", key, "base", "chamfer")
        if not chamfer:
            continue
        volume = _pairs(rows, unit, "oracle", key, "base", "volume_iou")
        seconds = {(r["target"], r["seed"]): r["seconds"] for r in rows if r["reward"] == "oracle" and _key(r["overrides"]) == key}
        if not seconds:
            continue
        common = sorted(set(seconds) & set(base_seconds))
        guided_steps = [r["guided"] for r in rows if r["reward"] == "oracle" and _key(r["overrides"]) == key]
        out[setting.name] = dict(chamfer=mean_ci(chamfer), chamfer_rel=relative_effect(chamfer, defaults["chamfer"]),
                                 volume=mean_ci(volume), volume_rel=relative_effect(volume, defaults["volume_iou"]),
                                 wall=float(np.mean([seconds[p] for p in common]) / np.mean([base_seconds[p] for p in common])),
                                 guided=float(np.mean(guided_steps)))
    return out


def language_effects(rows: list[dict]) -> dict[str, dict[str, Any]]:
    """Per setting: the guide critic's paired Δ r (scored at the preset's default views) and the judge's Δ r,
    each relative to the default's on the same pairs."""
    out: dict[str, dict[str, Any]] = {}
    unit = ("item", "seed")
    default_key = _key({})
    defaults = {m: _pairs(rows, unit, "guided", default_key, "base", m) for m in ("final_r", "judge_r")}
    for setting in SETTINGS:
        key = _key(setting.overrides(112))
        r = _pairs(rows, unit, "guided", key, "base", "final_r")
        if not r:
            continue
        judge = _pairs(rows, unit, "guided", key, "base", "judge_r")
        guided_steps = [row["guided"] for row in rows if row["condition"] == "guided" and _key(row["overrides"]) == key]
        out[setting.name] = dict(r=mean_ci(r), r_rel=relative_effect(r, defaults["final_r"]), judge=mean_ci(judge),
                                 judge_rel=relative_effect(judge, defaults["judge_r"]), guided=float(np.mean(guided_steps)))
    return out


def baselines_markdown(export_rows: list[dict]) -> str:
    """Each speed preset counted against the baselines a user may run: the DiT alone (the count of the map),
    with the export `generate` makes (hy3dgen's dense 384³ grid), with FlashVDM's hierarchical export, and
    hy3dgen's turbo model at its 5 steps with that export (the fastest)."""
    from vlm3d_ttg.cost import dit_forward_flops, geo_decoder_flops_per_query, price, vae_transformer_flops
    from vlm3d_ttg.guidance import GuidanceConfig
    from vlm3d_ttg.speed import SPEEDS

    fractions = [r["hierarchical"] / r["dense"] for r in export_rows if r["octree"] == 384]
    fraction = float(np.median(fractions)) if fractions else float("nan")
    dense = (385 ** 3 * geo_decoder_flops_per_query() + vae_transformer_flops()) / 1e12
    hierarchical = (fraction * 385 ** 3 * geo_decoder_flops_per_query() + vae_transformer_flops()) / 1e12
    baselines = [("50 steps, DiT only (the map's count)", 50, 0.0),
                 ("50 steps + the export `generate` makes (dense 385³)", 50, dense),
                 ("50 steps + FlashVDM's hierarchical export", 50, hierarchical),
                 ("turbo, 5 steps + hierarchical export (hy3dgen's fastest)", 5, hierarchical)]
    lines = ["| preset | " + " | ".join(name for name, _, _ in baselines) + " |", "|---|" + "---:|" * len(baselines)]
    for speed, knobs in SPEEDS.items():
        cells = []
        for _, steps, export in baselines:
            cost = price(GuidanceConfig.for_speed(speed), steps)
            added = cost.guided_tflop - cost.unguided_tflop
            unguided = steps * dit_forward_flops(2) / 1e12 + export
            cells.append(f"×{(unguided + added) / unguided:.2f} ({cost.settings['guided_steps']} guided)")
        lines.append(f"| {speed} | " + " | ".join(cells) + " |")
    lines += ["", f"Unguided TFLOP: DiT {50 * dit_forward_flops(2) / 1e12:.0f} (50 steps) or "
              f"{5 * dit_forward_flops(2) / 1e12:.0f} (5 turbo steps, CFG batch 2 as our turbo variant runs); "
              f"export {dense:.0f} dense, {hierarchical:.0f} hierarchical — the queries near the surface were "
              f"{100 * min(fractions):.0f}–{100 * max(fractions):.0f} % (median {100 * fraction:.0f} %) of the dense "
              f"grid's on {len(fractions)} mini shapes (`bench_speed.py export`); FlashVDM's adaptive KV selection "
              "cuts each query further and is not counted. Guided steps on the turbo schedule: the σ window and "
              "--every applied to its 5 steps."]
    return "\n".join(lines)


def _ci(stats: tuple | None, digits: int = 3) -> str:
    if stats is None:
        return "–"
    value, low, high, _ = stats
    return f"{value:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def _pct(stats: tuple | None) -> str:
    if stats is None:
        return "–"
    value, low, high, _ = stats
    return f"{100 * value:.0f} % [{100 * low:.0f}, {100 * high:.0f}]"


def pareto(points: list[tuple[str, float, float]]) -> set[str]:
    """The names not dominated: no other point is at most as costly and at least as effective, one of them strictly."""
    keep = set()
    for name, cost, effect in points:
        if not any((c <= cost and e >= effect) and (c < cost or e > effect) for n, c, e in points if n != name):
            keep.add(name)
    return keep


def report(args) -> str:
    """The cost–effect map as Markdown (and the figure)."""
    from machine import machine_description

    steering = steering_effects(read_rows(args.steering_out))
    language_rows = read_rows(args.language_out)
    judged = json.loads(LANGUAGE_JUDGED.read_text()) if LANGUAGE_JUDGED.exists() else {}
    language_rows = [dict(r, judge_r=judged.get(f"{r.get('grid')}|{r['statement']}", r.get("judge_r"))) for r in language_rows]
    language = language_effects(language_rows)
    timing = timing_ratios(read_rows(args.timing_out))
    default_guided = language.get("default", {}).get("guided")
    lines = [BEGIN, "", "### The cost–effect map (`benchmarks/bench_speed.py`)", "",
             f"Machine: {machine_description()}.", "",
             "Effect: paired Δ (guided − unguided, same seed) with bootstrap 95 % CIs; *kept* = the setting's mean Δ ÷ the "
             "default's over the same pairs, with a paired bootstrap CI. Oracle: 8 targets × 3 seeds of the shapes set; "
             "guide critic: the language experiment's 20 true statements × 2 seeds (its r of the final mesh scored at the "
             "default views; the judge is the other critic). Cost: counted at the real sizes (50 steps, Qwen2.5-VL-7B at "
             "448 px, `vlm3d_ttg.cost.price`), and measured here as guided ÷ unguided wall time of back-to-back runs on "
             "the mini preset with its critic (`timing`; 4 items, 1 seed).", "",
             "| setting (on the preset's defaults) | guided steps of 50 (real) | counted guided ÷ unguided | "
             "peak GiB guided (unguided 4.5) | measured wall ÷ unguided (mini, CPU) | oracle: Δ Chamfer [CI] | oracle effect kept | "
             "guide critic: Δ r [CI] | critic effect kept | judge Δ r [CI] |",
             "|---|---:|---:|---:|---:|---|---|---|---|---|"]
    points_oracle, points_critic = [], []
    for setting in SETTINGS:
        cost = counted(setting)
        ratio, steps = cost.ratio, f"{cost.settings['guided_steps']}"
        st, la = steering.get(setting.name), language.get(setting.name)
        if st is None and la is None:
            continue
        if "stop_r" in setting.knobs and la and default_guided:
            # A stop rule's work depends on the run: the planned guided steps scaled by the share the mini runs made.
            share = la["guided"] / default_guided
            ratio = 1 + (cost.ratio - 1) * share
            steps = f"{cost.settings['guided_steps'] * share:.1f}*"
        critic_knobs = any(name in CRITIC_ONLY for name in setting.knobs)
        # A smaller view is the critic's knob too (its tokens): the oracle alone cannot say it keeps the effect.
        if st and st["chamfer_rel"] and not critic_knobs and setting.view_scale == 1.0:
            points_oracle.append((setting.name, ratio, *st["chamfer_rel"][:3]))
        if la and la["r_rel"]:
            points_critic.append((setting.name, ratio, la["r_rel"][0]))
        measured = f"×{timing[setting.name]:.2f}" if setting.name in timing else "–"
        oracle_cells = (f"{_ci(st['chamfer'])} | {_pct(st['chamfer_rel'])}" if st and not critic_knobs else
                        f"as «{_same_for_the_oracle(setting)}» | –" if st else "– | –")
        lines.append(f"| {setting.name} | {steps} | ×{ratio:.2f} | {cost.guided_peak_gib:.1f} | {measured} | "
                     f"{oracle_cells} | "
                     f"{_ci(la['r'], 2) if la else '–'} | {_pct(la['r_rel']) if la else '–'} | "
                     f"{_ci(la['judge'], 2) if la else '–'} |")
    front_oracle = pareto([(name, cost, effect) for name, cost, effect, *_ in points_oracle])
    front_critic = pareto(points_critic)
    lines += ["", "\\* stop rule: the planned guided steps × the share of them the mini runs made before r reached the "
              "level (its counted cost is the same share of guidance's).", "",
              "On the Pareto front (cheapest for its effect): oracle axis — " + ", ".join(sorted(front_oracle)) +
              ". The critic's knobs (views, layout, the stop level) do not act on the oracle, which has its own cameras "
              "(«as …»: the oracle's runs of the setting's other knobs); a smaller view side acts on both (the oracle's "
              "column is its renders at that side) and is left off the front, since the critic cannot read it (below). "
              "The guide critic's columns rank little: its effect-kept CIs span a hundred per cent or more (40 pairs per "
              "setting; 100 for the default, the presets and every 8 + reuse).", ""]
    presets = []
    for speed_name, knobs in speed_presets().items():
        setting = next((x for x in SETTINGS if x.overrides(REAL_VIEW) == knobs), None)
        st = steering.get(_same_for_the_oracle(setting)) if setting else None
        if st and st["chamfer_rel"]:
            presets.append((f"--speed {speed_name}", counted(setting).ratio, *st["chamfer_rel"][:3]))
    figure(points_oracle, front_oracle, ROOT / "docs" / "speed_map.png", presets)
    lines += ["![Effect kept vs counted cost](../docs/speed_map.png)", ""]
    realsize = read_rows(args.realsize_out)
    if realsize:
        lines += ["**Measured at the real widths and token counts** (`realsize`: realsize preset, depth 1 — one block of each "
                  "kind, random weights — 448-px views, this CPU; one guided and one unguided step timed, the 50-step run's "
                  "ratio made from them)", "",
                  "| preset | views | guided step (s) | unguided step (s) | guided steps of 50 | measured run ratio, depth 1 | "
                  "counted ratio, real depth |", "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['speed']} | {r['views']} × {r['view_size']} | {r['guided_step']:.1f} | {r['unguided_step']:.1f} | "
                  f"{r['guided_steps_of_50']} | ×{r['measured_run_ratio']:.2f} | ×{r['counted_ratio']:.2f} |" for r in realsize]
        lines += ["", "At depth 1 the DiT keeps 2 of its 48 blocks, the critic 3 of its 60 (2 vision, 1 language) and the ShapeVAE 1 of 16, so a "
                  "guided step's share is not the real one; the ordering of the presets and their ratios to each other are "
                  "what this row measures. gpu_check part f times the presets at the real depth on a GPU.", ""]
    critic = json.loads(args.critic_out.read_text()) if args.critic_out.exists() else []
    if critic:
        lines += ["**Fewer image tokens: the mini guide critic's held-out accuracy** (`critic`: balanced accuracy per "
                  "description on renders of test shapes, 17 descriptions)", "",
                  "| views the critic reads | mean | min | descriptions ≥ 0.90 |", "|---|---:|---:|---:|"]
        lines += [f"| {row['setting']} | {row['mean']:.3f} | {row['min']:.3f} | {row['at_least_90']}/{row['descriptions']} |"
                  for row in critic]
        lines.append("")
    directions = json.loads(args.directions_out.read_text()) if args.directions_out.exists() else []
    if directions:
        lines += [f"**Where one draw of the gradient points** (`directions`: {len(directions)} predicted clean shapes of "
                  "unguided runs; cosine of one draw of ∇r with the mean of 4 draws at the default settings; mean [95 % CI])",
                  "", "| setting | cosine |", "|---|---|"]
        for name, _ in DIRECTION_SETTINGS:
            lines.append(f"| {name} | {_ci(mean_ci({k: row[name] for k, row in enumerate(directions)}), 2)} |")
        lines.append("")
    export = json.loads(args.export_out.read_text()) if args.export_out.exists() else []
    if export:
        lines += ["**Against the baselines a user may run** (counted; `export` measured the hierarchical decoding's "
                  "queries)", "", baselines_markdown(export), ""]
    lines.append(END)
    return "\n".join(lines)


def _same_for_the_oracle(setting: Setting) -> str:
    """The name of the setting the oracle cannot tell `setting` from (its knobs without the critic's)."""
    key = _key(setting.oracle_overrides(112))
    return next((other.name for other in SETTINGS if _key(other.overrides(112)) == key), key)


def speed_presets() -> dict[str, dict[str, Any]]:
    """The shipped speed presets (vlm3d_ttg.speed.SPEEDS)."""
    from vlm3d_ttg.speed import SPEEDS

    return SPEEDS


def figure(points: list, front: set, path: Path, presets: list = ()) -> None:
    """The oracle's effect kept (% of the default's, 95 % CI) against the counted guided ÷ unguided cost; the speed
    presets as stars (a preset with the critic's knobs at its cost, with the oracle's effect of its other knobs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name, cost, effect, low, high in points:
        color = "C3" if name in front else "C0"
        ax.errorbar(cost, 100 * effect, yerr=[[100 * (effect - low)], [100 * (high - effect)]], fmt="o", color=color,
                    capsize=3, zorder=3)
        ax.annotate(name, (cost, 100 * effect), fontsize=8, xytext=(5, 3), textcoords="offset points")
    for name, cost, effect, low, high in presets:
        ax.errorbar(cost, 100 * effect, yerr=[[100 * (effect - low)], [100 * (high - effect)]], fmt="*", markersize=14,
                    color="C2", capsize=3, zorder=4)
        ax.annotate(name, (cost, 100 * effect), fontsize=9, color="C2", xytext=(6, -12), textcoords="offset points")
    ax.axvline(1.3, color="grey", linestyle="--", linewidth=1)
    ax.axhline(80, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("counted guided ÷ unguided at the real sizes (Hunyuan3D-2 + Qwen2.5-VL-7B, 50 steps)")
    ax.set_ylabel("oracle steering effect kept, % of the default's (Δ Chamfer)")
    ax.set_title("Speed knobs on the mini world: effect kept vs cost\n(red: Pareto front; green stars: the --speed presets; "
                 "dashed: ×1.3; dotted: 80 %)", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    from vlm3d_ttg.io import write_bytes_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, buffer.getvalue())


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def run_judge(args) -> None:
    """The judge critic's r of every language run's final shape (bench_language.rejudge), into LANGUAGE_JUDGED."""
    import bench_language as language

    language.rejudge(args.language_out, args.keep, language.load_judge(None), LANGUAGE_JUDGED)


def write_report(args) -> None:
    """Print the map; with --write-results also into RESULTS.md."""
    text = report(args)
    print(text)
    if args.write_results:
        from results_file import write_results_section

        write_results_section(BEGIN, END, text)


COMMANDS = {"steering": run_steering, "language": run_language,
            "judge": run_judge, "critic": critic_accuracy,
            "timing": run_timing, "export": export_queries,
            "directions": gradient_directions, "realsize": run_realsize,
            "report": write_report}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=tuple(COMMANDS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--settings", default="", help="names of SETTINGS, separated by commas (default: all of the axis)")
    parser.add_argument("--classes", default="mug,table,chair,rocket")
    parser.add_argument("--per-class", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--keep", type=Path, default=HERE / "language_grids")
    parser.add_argument("--steering-out", type=Path, default=STEERING_OUT)
    parser.add_argument("--language-out", type=Path, default=LANGUAGE_OUT)
    parser.add_argument("--write-results", action="store_true")
    parser.add_argument("--data", type=Path, default=None, help="critic: the mini data set (training/build_data.py's output)")
    parser.add_argument("--critic-views", type=Path, default=None,
                        help="critic: the critics' held-out renders (training/build_critic_data.py's output)")
    parser.add_argument("--critic-out", type=Path, default=HERE / "speed_critic.json")
    parser.add_argument("--timing-out", type=Path, default=HERE / "speed_timing.jsonl")
    parser.add_argument("--export-out", type=Path, default=HERE / "speed_export.json")
    parser.add_argument("--directions-out", type=Path, default=HERE / "speed_directions.json")
    parser.add_argument("--realsize-out", type=Path, default=HERE / "speed_realsize.jsonl")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.command == "critic" and (args.data is None or args.critic_views is None):
        parser.error("critic needs --data and --critic-views (training/build_data.py's and build_critic_data.py's outputs)")
    COMMANDS[args.command](args)

if __name__ == "__main__":
    main()
