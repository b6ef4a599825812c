"""Guided vs unguided sampling on the tiny models: time ratio, per-stage breakdown, λ sweep.

    python benchmarks/bench_sampler.py timing            # one run each, same seed, side by side
    python benchmarks/bench_sampler.py sweep --seeds 20  # final_r guided vs unguided per λ

The tiny models' scores are meaningless as quality; what this measures is the mechanics: that
following ∇r raises the critic's score of the *final exported mesh* (scored from fixed cameras,
not the jittered guidance cameras), how often, by how much, and what a guided step costs.
Prints Markdown for benchmarks/RESULTS.md; `--json PATH` also writes the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from machine import machine_description
from vlm3d_ttg.critic import VLMCritic
from vlm3d_ttg.generation import GenerationOptions, load_models
from vlm3d_ttg.guidance import GuidanceConfig
from vlm3d_ttg.reward import VLMReward
from vlm3d_ttg.sampler import GuidedSampler

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "toy_robot.png"
PROMPT = "a small toy robot with a round head"


def parse_value(text: str):
    """A GuidanceConfig field value from the command line: None, a number, a σ window 'lo/hi', or text."""
    if text == "None":
        return None
    if "/" in text:
        return tuple(float(part) for part in text.split("/"))
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@dataclass
class Run:
    """One run's step records and the critic's score of its final mesh (fixed cameras)."""

    records: list
    final: object


def run(models, config: GuidanceConfig, *, seed: int, steps: int, octree: int) -> Run:
    critic = VLMCritic(models.vlm, models.processor, PROMPT, config.query)
    reward = VLMReward.from_config(models.backbone, critic, config)
    sampler = GuidedSampler(models.backbone, reward, config)
    image = Image.open(EXAMPLE)
    output = sampler(image, num_inference_steps=steps, seed=seed, octree_resolution=octree, progress=False)
    final = reward.score_mesh(output.mesh.vertices, output.mesh.faces) if output.mesh is not None else None
    return Run(output.records, final)


def timing(models, base: GuidanceConfig, args) -> str:
    """Guided vs unguided total time, measured back to back on the same seed, and the stage breakdown."""
    rows = []
    results = {}
    for repeat in range(args.repeats):
        for name, config in (("unguided", replace(base, enabled=False)), ("guided", base)):
            tic = time.perf_counter()
            out = run(models, config, seed=0, steps=args.steps, octree=args.octree)
            results.setdefault(name, []).append(time.perf_counter() - tic)
            if name == "guided":
                rows.extend(r for r in out.records if r.guided and not r.skipped)
    unguided, guided = min(results["unguided"]), min(results["guided"])
    stages = ["dit", "surface", "render", "critic", "backward"]
    mean = {k: statistics.mean(r.timings.get(k, 0.0) for r in rows) for k in stages}
    total = sum(mean.values())
    lines = [
        f"Machine: {machine_description()}. Tiny models, {args.steps} steps, {base.num_views} views × {base.view_size}², "
        f"grid {base.grid_resolution}, export octree {args.octree}; best of {args.repeats}.",
        "",
        "| run | seconds | ratio |",
        "|---|---:|---:|",
        f"| unguided | {unguided:.2f} | 1.00 |",
        f"| guided ({len(rows) // args.repeats} guided steps) | {guided:.2f} | {guided / unguided:.2f} |",
        "",
        "Per guided step (mean):",
        "",
        "| stage | ms | share |",
        "|---|---:|---:|",
    ]
    lines += [f"| {k} | {1000 * v:.1f} | {100 * v / total:.0f}% |" for k, v in mean.items()]
    lines.append(f"| **total** | **{1000 * total:.1f}** | |")
    return "\n".join(lines), {"unguided_s": results["unguided"], "guided_s": results["guided"], "stages_ms": {k: 1000 * v for k, v in mean.items()}}


def sweep(models, base: GuidanceConfig, args) -> tuple[str, dict]:
    """final_r of guided vs unguided runs over seeds, for several λ (and jitter on/off)."""
    seeds = list(range(args.seeds))
    baseline = {}
    for seed in seeds:
        out = run(models, replace(base, enabled=False), seed=seed, steps=args.steps, octree=args.octree)
        baseline[seed] = float(out.final.r)
    variants = []
    for scale in args.scales:
        variants.append((f"λ={scale:g}", replace(base, scale=scale)))
    if args.no_jitter_too:
        variants.append((f"λ={args.scales[-1]:g}, no jitter", replace(base, scale=args.scales[-1], azimuth_jitter=0.0, elevation_jitter=0.0)))
    for spec in args.variant:
        name, _, fields = spec.partition(":")
        variants.append((name, replace(base, **{k: parse_value(v) for k, v in (f.split("=", 1) for f in fields.split(",") if f)})))
    lines = [
        f"Machine: {machine_description()}. {len(seeds)} seeds; tiny models; {args.steps} steps; {base.num_views} views × "
        f"{base.view_size}²; grid {base.grid_resolution}; step_norm {base.step_norm}, cap {base.max_step_ratio}, "
        f"window {base.sigma_window}, every {base.every}. final_r: critic log-odds of the exported mesh from fixed, un-jittered cameras.",
        "",
        "| config | guided > unguided | mean Δ final_r | 95% CI of mean Δ | mean guided r | skipped steps |",
        "|---|---:|---:|---:|---:|---:|",
        f"| unguided | — | — | — | {np.mean(list(baseline.values())):+.4f} | — |",
    ]
    raw = {"baseline": baseline, "variants": {}}
    rng = np.random.default_rng(0)
    for name, config in variants:
        finals, skipped = {}, 0
        for seed in seeds:
            out = run(models, config, seed=seed, steps=args.steps, octree=args.octree)
            finals[seed] = float(out.final.r)
            skipped += sum(1 for r in out.records if r.skipped)
        deltas = np.array([finals[s] - baseline[s] for s in seeds])
        boot = np.array([rng.choice(deltas, len(deltas)).mean() for _ in range(2000)])
        lo, hi = np.percentile(boot, [2.5, 97.5])
        wins = int((deltas > 0).sum())
        lines.append(
            f"| {name} | {wins}/{len(seeds)} ({100 * wins / len(seeds):.0f}%) | {deltas.mean():+.4f} | "
            f"[{lo:+.4f}, {hi:+.4f}] | {np.mean(list(finals.values())):+.4f} | {skipped} |"
        )
        raw["variants"][name] = {"finals": finals, "deltas": deltas.tolist()}
        print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines), raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["timing", "sweep"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--view-size", type=int, default=112)
    parser.add_argument("--grid", type=int, default=64)
    parser.add_argument("--octree", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.01, 0.03, 0.1])
    parser.add_argument("--max-step-ratio", type=float, default=1.0)
    parser.add_argument("--no-jitter-too", action="store_true")
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME:field=value,... a GuidanceConfig variant, e.g. 'cap 3:scale=0.1,max_step_ratio=3'")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("hy3dgen.shapgen").setLevel(logging.WARNING)
    models = load_models(GenerationOptions(device="cpu"), preset="tiny")
    base = GuidanceConfig(num_views=args.views, view_size=args.view_size, grid_resolution=args.grid,
                          max_step_ratio=args.max_step_ratio or None)
    text, raw = timing(models, base, args) if args.what == "timing" else sweep(models, base, args)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2))


if __name__ == "__main__":
    main()
