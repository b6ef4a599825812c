"""Candidate search on the tiny models: how reliable is an early choice, and guidance vs best-of-N
at equal compute.

    python benchmarks/bench_search.py --seeds 20 --candidates 8 --write

1. Selection reliability: for each seed, N candidates run to the end unguided; every candidate's
   final mesh is scored (fixed cameras), and so is its predicted clean latent x̂ at each σ_s of
   --select-at (forward only, un-jittered cameras, exactly as `--select-at` scores it). Per seed,
   the Spearman rank correlation between r(x̂ at σ_s) and r(final mesh); also how often the early
   favourite is the final favourite and the final r given up by choosing early (regret).
2. Equal compute: guided (one candidate) vs best_of_n vs search_guided (the benchmark presets,
   N set by `equal_compute_candidates`), and base, on the final mesh's r; paired differences to
   guided with bootstrap CIs; compute in real-size TFLOP per run (vlm3d_ttg.compute.compute_tflop).

Tiny models: this checks mechanics (the machinery selects, counts and compares as it claims), not
what helps with the real models. Prints Markdown; --write puts it in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from machine import machine_description
from results_file import write_results_section
from vlm3d_ttg.bench.configs import preset_config
from vlm3d_ttg.critic import VLMCritic
from vlm3d_ttg.generation import GenerationOptions, load_models
from vlm3d_ttg.guidance import GuidanceConfig, predicted_clean_latent
from vlm3d_ttg.metrics.bootstrap import bootstrap_ci
from vlm3d_ttg.reward import VLMReward
from vlm3d_ttg.sampler import GuidedSampler
from vlm3d_ttg.compute import compute_tflop
from vlm3d_ttg.search import SearchOptions, selection_step

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "toy_robot.png"
PROMPT = "a small toy robot with a round head"
BEGIN, END = "<!-- bench_search:begin -->", "<!-- bench_search:end -->"


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (no ties expected among float scores)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def ci_cell(values: list[float], seed: int, digits: int = 3) -> str:
    ci = bootstrap_ci(np.asarray(values, dtype=np.float64), n_resamples=2000, seed=seed)
    return f"{ci.value:+.{digits}f} [{ci.low:+.{digits}f}, {ci.high:+.{digits}f}]"


def reliability_seed(models, config: GuidanceConfig, args, seed: int) -> dict:
    """One seed: every candidate's r at each σ_s and its final mesh's r (unguided runs)."""
    critic = VLMCritic(models.vlm, models.processor, PROMPT, config.query)
    reward = VLMReward.from_config(models.backbone, critic, config)
    sampler = GuidedSampler(models.backbone, reward, GuidanceConfig(**{**config.__dict__, "enabled": False}))
    image = Image.open(EXAMPLE)
    sigmas = sampler.schedule(args.steps)
    steps_at = {s: selection_step(sigmas, s) for s in args.select_at}
    if True:
        trajectory: dict[int, torch.Tensor] = {}

        def keep(_sampler, step, _sigma, state):
            trajectory[step] = state["latents"].clone()  # x after step `step` = x at step + 1

        out = sampler(image, num_inference_steps=args.steps, seed=seed, octree_resolution=args.octree, progress=False,
                      callback_on_step_end=keep, search=SearchOptions(candidates=args.candidates))
        final = [c.final_r for c in out.search.candidates]
        early = {}
        for s, step in steps_at.items():
            # The velocity at `step` from the unguided Euler step it took: v = (x_next − x)/(σ_next − σ).
            x, x_next = trajectory[step - 1].float(), trajectory[step].float()
            velocity = (x_next - x) / (sigmas[step + 1] - sigmas[step])
            clean = predicted_clean_latent(x, velocity, sigmas[step])
            with torch.no_grad():
                early[s] = [float(reward.score_latent(clean[j:j + 1]).r) for j in range(args.candidates)]
        print(f"reliability seed {seed}: final r {np.round(final, 3).tolist()}", flush=True)
        return {"seed": seed, "final_r": final, "early_r": {str(s): v for s, v in early.items()},
                "steps_at": {str(s): [step, sigmas[step]] for s, step in steps_at.items()}}


def reliability_table(raw: dict) -> list[str]:
    """Spearman between r at each σ_s and the final r, over the seeds done × N candidates."""
    lines = ["| σ_s (step) | Spearman ρ, mean over seeds [95% CI] | early favourite = final favourite | "
             "regret: best final r − final r of the early favourite [95% CI] |", "|---|---|---:|---|"]
    for k, (s, (step, sigma)) in enumerate(raw["seeds"][0]["steps_at"].items()):
        rhos, hits, regrets = [], 0, []
        for entry in raw["seeds"]:
            final, early = np.asarray(entry["final_r"]), np.asarray(entry["early_r"][s])
            rhos.append(spearman(early, final))
            chosen = int(np.argmax(early))
            hits += int(chosen == int(np.argmax(final)))
            regrets.append(float(final.max() - final[chosen]))
        lines.append(f"| {float(s):g} (step {step}, σ={sigma:.2f}) | {ci_cell(rhos, 10 + k, 2)} | "
                     f"{hits}/{len(rhos)} | {ci_cell(regrets, 20 + k)} |")
    return lines


CONFIGS = ("base", "guided", "best_of_n", "search_guided")


def equal_compute_seed(models, config: GuidanceConfig, args, seed: int) -> dict:
    """One seed: final r, real-size TFLOP and CPU seconds of base, guided, best_of_n and search_guided."""
    image = Image.open(EXAMPLE)
    configs = [preset_config(name, config, steps=args.steps) for name in CONFIGS]
    critic = VLMCritic(models.vlm, models.processor, PROMPT, "dual")
    results: dict[str, dict[str, list[float]]] = {c.name: {"final_r": [], "tflop": [], "seconds": []} for c in configs}
    if True:
        for bench in configs:
            reward = VLMReward.from_config(models.backbone, critic, bench.guidance)
            sampler = GuidedSampler(models.backbone, reward, bench.guidance)
            tic = time.perf_counter()
            out = sampler(image, num_inference_steps=args.steps, seed=seed, octree_resolution=args.octree,
                          progress=False, search=bench.search)
            final = reward.score_mesh(out.mesh.vertices, out.mesh.faces)  # as generate_mesh scores the output
            out.compute.critic_forwards += 1
            results[bench.name]["final_r"].append(float(final.r))
            results[bench.name]["tflop"].append(compute_tflop(out.compute))
            results[bench.name]["seconds"].append(time.perf_counter() - tic)
        print(f"equal-compute seed {seed}: " + ", ".join(f"{n} {v['final_r'][-1]:+.3f}" for n, v in results.items()),
              flush=True)
    return {"seed": seed, "configs": {c.name: c.to_dict() for c in configs},
            "results": {name: {key: values[0] for key, values in r.items()} for name, r in results.items()}}


def equal_compute_table(raw: dict) -> list[str]:
    """Final r per configuration with CIs, paired differences to guided, compute per run."""
    seeds = raw["seeds"]
    results = {name: {key: [entry["results"][name][key] for entry in seeds] for key in ("final_r", "tflop", "seconds")}
               for name in CONFIGS}
    guided = np.asarray(results["guided"]["final_r"])
    guided_tflop = float(np.mean(results["guided"]["tflop"]))
    lines = ["| config | what | final r [95% CI] | − guided, paired [95% CI] | TFLOP/run (real sizes) | vs guided | "
             "CPU s/run (tiny) |", "|---|---|---|---|---:|---:|---:|"]
    for k, name in enumerate(CONFIGS):
        r = results[name]
        diff = (np.asarray(r["final_r"]) - guided).tolist()
        paired = ci_cell(diff, 40 + k) if name != "guided" else "—"
        tflop = float(np.mean(r["tflop"]))
        description = seeds[0]["configs"][name]["description"]
        lines.append(f"| {name} | {description} | {ci_cell(r['final_r'], 30 + k)} | {paired} | "
                     f"{tflop:.0f} | ×{tflop / guided_tflop:.2f} | {np.mean(r['seconds']):.1f} |")
    return lines


def report(raw: dict) -> str:
    """The RESULTS.md section from the per-seed results gathered so far."""
    run = raw["run"]
    done_r, done_e = len(raw["reliability"]["seeds"]), len(raw["equal_compute"]["seeds"])
    text = [BEGIN, "## Candidate search: selection reliability and guidance vs best-of-N at equal compute", "",
            f"`{run['command']}` on {run['machine']}. Tiny models, prompt '{PROMPT}' on examples/toy_robot.png: "
            "mechanics only (the tiny critic's r says nothing about quality); the real comparison needs the real models.",
            ""]
    if done_r:
        text += [f"### Selection reliability ({done_r} seeds × {run['candidates']} candidates, unguided)", "",
                 "r of each candidate's x̂ at σ_s (forward only, fixed cameras: what `--select-at` ranks by) against r "
                 "of its final exported mesh. ρ near 1: an early choice is as good as waiting for the meshes.", "",
                 *reliability_table(raw["reliability"]), ""]
    if done_e:
        text += [f"### Guided vs best-of-N vs search + guided at equal compute ({done_e} seeds)", "",
                 "Each configuration is the benchmark preset of the same name (vlm3d_ttg/bench/configs.py): N is the "
                 "count whose planned real-size TFLOP is closest to the guided run's (search_guided: at least 2). "
                 "Final r: the critic's score of the exported mesh from fixed cameras, dual query. Compute: the run's "
                 "counted DiT rows, critic forwards and backwards priced at real sizes (benchmarks/cost_model.py).",
                 "", *equal_compute_table(raw["equal_compute"]), "",
                 "N is a whole number, so 'equal' is the nearest achievable: at few steps a second candidate costs "
                 "more than guidance adds, and the search rows spend somewhat more than guided (column 'vs guided').",
                 ""]
    text += [f"Wall time {raw['seconds']:.0f} s (seeds run one after another, both parts per seed).", END]
    return "\n".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--select-at", type=float, nargs="+", default=[0.2, 0.3, 0.5, 0.7])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--views", type=int, default=1)
    parser.add_argument("--view-size", type=int, default=28)
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--octree", type=int, default=32)
    parser.add_argument("--json", type=Path, default=Path("bench_search.json"),
                        help="per-seed results, rewritten after every seed (a stopped run keeps what it finished)")
    parser.add_argument("--report-only", action="store_true", help="render the section from --json without running")
    parser.add_argument("--write", action="store_true", help="write the section into benchmarks/RESULTS.md")
    args = parser.parse_args()
    if not args.report_only:
        logging.basicConfig(level=logging.WARNING)
        models = load_models(GenerationOptions(device="cpu"), preset="tiny")
        config = GuidanceConfig(num_views=args.views, view_size=args.view_size, grid_resolution=args.grid)
        command = (f"python benchmarks/bench_search.py --seeds {args.seeds} --candidates {args.candidates} "
                   f"--steps {args.steps} --views {args.views} --view-size {args.view_size} --grid {args.grid} "
                   f"--octree {args.octree}")
        raw = {"run": {"command": command, "machine": machine_description(), "candidates": args.candidates},
               "reliability": {"seeds": []}, "equal_compute": {"seeds": []}, "seconds": 0.0}
        started = time.perf_counter()
        for seed in range(args.seeds):
            raw["reliability"]["seeds"].append(reliability_seed(models, config, args, seed))
            raw["equal_compute"]["seeds"].append(equal_compute_seed(models, config, args, seed))
            raw["seconds"] = time.perf_counter() - started
            args.json.write_text(json.dumps(raw, indent=1))
    raw = json.loads(args.json.read_text())
    text = report(raw)
    print(text)
    if args.write:
        write_results_section(BEGIN, END, text)


if __name__ == "__main__":
    main()
