"""Quality benchmark: base vs guided Hunyuan3D-2 on a set of prompts, measured like the paper's Table 2.

    # one process (CPU or one GPU)
    python benchmarks/quality.py --out runs/quality

    # several GPUs: one process per GPU, items sharded between them
    accelerate launch --multi_gpu --num_processes 4 benchmarks/quality.py --out runs/quality

    # offline smoke test with tiny random models, 2 processes on a CPU
    accelerate launch --multi_gpu --num_processes 2 benchmarks/quality.py --preset tiny --out /tmp/q

(On a machine without CUDA, `--multi_gpu` makes accelerate start N processes and they run on the
CPU; accelerate's `--cpu` flag alone starts one process unless MPI is set up.)

Interrupted runs resume: finished (item, configuration) pairs are skipped. Writes
results.md, results.json and results.png into --out. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SET = HERE / "sets" / "shapes.json"

# Sizes for --preset tiny when not given: small enough for a CPU in seconds per shape.
TINY_DEFAULTS = dict(steps=8, num_views=2, view_size=56, grid_resolution=32, octree_resolution=64, eval_views=2, eval_size=56)
REAL_DEFAULTS = dict(octree_resolution=384, eval_views=6, eval_size=448)
# Options of `vlm3d-ttg generate` the benchmark does not take, and why: the configurations decide
# whether a run is guided; --seed here is the set's base seed (its own option); processes and
# devices come from accelerate (--cpu); the runner keeps every model resident; the benchmark has no
# realsize preset (random weights at the real sizes: minutes per shape for meaningless scores).
BENCH_EXCLUDED_GUIDANCE = ("enabled",)
BENCH_EXCLUDED_GENERATION = ("seed", "device", "offload_idle", "realsize_depth")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, parsed."""
    from vlm3d_ttg.shards import BARRIER_TIMEOUT_HOURS

    parser = argparse.ArgumentParser(
        description="Base vs VLM-guided Hunyuan3D-2 on a benchmark set: CLIP-D, FID, CLIP-FID, KID, geometry score, "
        "an independent VLM judge and the critic's r, with bootstrap CIs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run = parser.add_argument_group("run")
    run.add_argument("--set", type=Path, default=DEFAULT_SET, help="Benchmark set (JSON or CSV; see benchmarks/README.md).")
    run.add_argument("--out", type=Path, required=True, help="Output folder (resumes what is already there).")
    run.add_argument("--preset", choices=("real", "tiny"), default="real",
                     help="'tiny': offline tiny random models for every part (meaningless numbers, exercises the pipeline).")
    run.add_argument("--configs", default="base,guided",
                     help="Comma-separated configurations: base, guided, content_only, geometry_only, single_view, guided_reference, "
                     "or names from --config-file. base is always included.")
    run.add_argument("--config-file", type=Path, help="JSON {name: {GuidanceConfig field: value}} of custom configurations.")
    run.add_argument("--noise-floor", action="store_true", help="Also run base with seed + 1 (base_seed2): the seed-vs-seed noise floor.")
    run.add_argument("--items", help="Comma-separated item ids to run (default: all).")
    run.add_argument("--limit", type=int, help="Run only the first N items.")
    run.add_argument("--seed", type=int, default=0, help="Base seed; each item's seed is this plus a hash of its id unless the set gives one.")
    run.add_argument("--redo-stale", action="store_true", help="Regenerate cached results made with other settings (default: error).")
    run.add_argument("--report-only", action="store_true", help="Only merge finished results into the report.")
    run.add_argument("--cpu", action="store_true", help="Run on the CPU even where CUDA is available.")
    run.add_argument("--barrier-timeout-hours", type=float, default=BARRIER_TIMEOUT_HOURS,
                     help="How long processes wait for each other (the slowest shard) before giving up.")
    run.add_argument("--cache-dir", help="Root of the tiny checkpoints (default $VLM3D_TTG_CACHE or ~/.cache/vlm3d-ttg).")
    run.add_argument("--verbose", action="store_true", help="Debug logging.")

    # Generation and guidance options are declared once, on the library's dataclasses
    # (vlm3d_ttg.options): the same flags, defaults and help as `vlm3d-ttg generate`.
    from vlm3d_ttg.generation import GenerationOptions
    from vlm3d_ttg.guidance import GuidanceConfig
    from vlm3d_ttg.options import add_argparse_options

    gen = parser.add_argument_group("generation (shared by every configuration)")
    add_argparse_options(gen, GenerationOptions, exclude=BENCH_EXCLUDED_GENERATION,
                         default_note={"steps": "50; tiny 8", "octree_resolution": "384; tiny 64"})

    guide = parser.add_argument_group("guidance (the guided configurations' shared options)")
    add_argparse_options(guide, GuidanceConfig, exclude=BENCH_EXCLUDED_GUIDANCE,
                         default_note={"num_views": "4; tiny 2", "view_size": "448; tiny 56", "grid_resolution": "64; tiny 32"})

    ev = parser.add_argument_group("evaluation")
    ev.add_argument("--eval-views", type=int, help="Evaluation views from azimuth 0 (default 6; tiny 2).")
    ev.add_argument("--eval-size", type=int, help="Evaluation view side, a multiple of 28 (default 448; tiny 56).")
    ev.add_argument("--eval-elevation", type=float, default=10.0, help="Evaluation camera elevation (degrees).")
    ev.add_argument("--clip", default=None, help="CLIP model for CLIP-D and CLIP-FID (default openai/clip-vit-base-patch32).")
    ev.add_argument("--inception-weights", default=None,
                    help="Inception-v3 state dict for FID/KID (default $VLM3D_TTG_INCEPTION_WEIGHTS or torchvision's cache).")
    ev.add_argument("--judge", default=None, help="Judge VLM, another family than the critic (default google/gemma-3-12b-it).")
    ev.add_argument("--no-clip", action="store_true", help="No CLIP-D / CLIP-FID.")
    ev.add_argument("--no-fid", action="store_true", help="No FID / KID.")
    ev.add_argument("--no-judge", action="store_true", help="No VLM judge.")
    ev.add_argument("--no-judge-reference", action="store_true",
                    help="The judge sees only the renders and the prompt, not each item's input image.")
    ev.add_argument("--judge-layout", choices=("separate", "grid"), default=None,
                    help="Each object's views as separate images (default), or tiled into one image per object "
                         "(fewer images in the judge's prompt; calibrate both with --calibrate-judge before choosing).")
    ev.add_argument("--calibrate-judge", action="store_true",
                    help="Also calibrate the judge on the base meshes: base vs base (expect 0.5) and base vs clearly "
                         "degraded copies (holes, a part removed, surface noise, coarsened; expect ≈ 1), with CIs.")
    ev.add_argument("--bootstrap", type=int, default=1000, help="Bootstrap resamples for the CIs.")
    ev.add_argument("--confidence", type=float, default=0.95, help="Confidence level of the CIs.")
    return parser.parse_args(argv)


def _metric_settings(args: argparse.Namespace, tiny_paths: dict[str, Path] | None):
    """Which metric models to use: explicit options, else the tiny ones (--preset tiny), else the defaults."""
    from vlm3d_ttg.bench import MetricSettings
    from vlm3d_ttg.metrics import DEFAULT_CLIP_MODEL, DEFAULT_JUDGE_MODEL, find_inception_weights

    if tiny_paths is not None:
        clip, inception, judge = (str(tiny_paths[k]) for k in ("clip", "inception", "judge"))
    else:
        clip, inception, judge = DEFAULT_CLIP_MODEL, None, DEFAULT_JUDGE_MODEL
    if not args.no_fid:
        inception = args.inception_weights or inception or str(find_inception_weights(None))
    return MetricSettings(
        clip=None if args.no_clip else (args.clip or clip),
        inception=None if args.no_fid else inception,
        judge=None if args.no_judge else (args.judge or judge),
        judge_reference=not args.no_judge_reference,
        calibrate_judge=args.calibrate_judge and not args.no_judge,
        judge_layout=args.judge_layout or MetricSettings.judge_layout,
        n_resamples=args.bootstrap,
        confidence=args.confidence,
    )


def _setup_logging(rank: int, verbose: bool) -> None:
    logging.basicConfig(level=logging.WARNING, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("vlm3d_ttg.bench").setLevel(logging.DEBUG if verbose else logging.INFO)
    # The report lists the small-N caveats once; the metric library would repeat them per resample call.
    logging.getLogger("vlm3d_ttg.metrics.frechet").setLevel(logging.DEBUG if verbose else logging.ERROR)
    logging.getLogger("vlm3d_ttg.bench.report").setLevel(logging.DEBUG if verbose else logging.WARNING)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def run(args: argparse.Namespace) -> int:
    """Check, generate and evaluate this process's share, then (main process) merge and report; the exit code."""
    import torch
    from vlm3d_ttg.bench import (
        BenchRun,
        EvalViews,
        GenerationSettings,
        RunPaths,
        check_run,
        load_bench_set,
        load_config_file,
        prepare_tiny_models,
        remove_staging_folders,
        resolve_configs,
        run_shard,
        write_report,
        write_run_file,
    )
    from vlm3d_ttg.generation import GenerationOptions
    from vlm3d_ttg.guidance import GuidanceConfig
    from vlm3d_ttg.logs import quiet_hy3dgen
    from vlm3d_ttg.options import from_namespace
    from vlm3d_ttg.shards import process_state

    use_cpu = args.cpu or not torch.cuda.is_available()
    state = process_state(cpu=use_cpu, barrier_timeout_hours=args.barrier_timeout_hours)
    _setup_logging(state.process_index, args.verbose)
    quiet_hy3dgen()
    say = print if state.is_main_process else (lambda *a, **k: None)

    defaults = TINY_DEFAULTS if args.preset == "tiny" else REAL_DEFAULTS
    pick = lambda name: getattr(args, name) if getattr(args, name) is not None else defaults[name]  # noqa: E731

    bench = load_bench_set(args.set, ids=args.items.split(",") if args.items else None, limit=args.limit)
    guidance = guidance_from_args(args, defaults)
    options = from_namespace(GenerationOptions, args, defaults=defaults, seed=args.seed).validate()
    custom = load_config_file(args.config_file, guidance) if args.config_file else None
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    configs = resolve_configs(names, guidance, noise_floor=args.noise_floor, custom=custom, steps=options.steps)
    settings = GenerationSettings(
        preset=args.preset, options=options,
        cache_dir=args.cache_dir,
    )
    eval_views = EvalViews(num_views=pick("eval_views"), image_size=pick("eval_size"), elevation=args.eval_elevation)
    paths = RunPaths(args.out)

    tiny_paths = None
    if args.preset == "tiny":
        if state.is_main_process:
            prepare_tiny_models(settings)  # written once, before any other process reads them
        state.wait_for_everyone()
        tiny_paths = prepare_tiny_models(settings)
    metrics = _metric_settings(args, tiny_paths)
    bench_run = BenchRun(bench, configs, settings, eval_views, metrics, paths)

    say(f"set {bench.path} ({len(bench.items)} items), configs {[c.name for c in configs]}, "
        f"{state.num_processes} process(es) on {'cpu' if use_cpu else 'cuda'}, out {paths.root}")
    if not args.report_only:
        stale = check_run(bench_run, redo_stale=args.redo_stale)
        if state.is_main_process:
            paths.root.mkdir(parents=True, exist_ok=True)
            removed = remove_staging_folders(paths)
            if removed:
                say(f"removed {removed} unfinished staging folder(s) of an interrupted run")
            write_run_file(bench_run, state.num_processes)
        started = time.perf_counter()
        stats = run_shard(state, bench_run, redo_stale=args.redo_stale, stale_items={i for i, _, _ in stale})
        print(f"[rank {state.process_index}] {stats.items_done_before} item(s) finished earlier (not redone); "
              f"this process generated {stats.generated} and skipped {stats.skipped} finished (item, config) pairs, "
              f"evaluated {stats.evaluated} item(s) in {time.perf_counter() - started:.1f} s", flush=True)
        state.wait_for_everyone()
    if not state.is_main_process:
        return 0
    files, summary = write_report(bench, configs, paths, n_resamples=metrics.n_resamples, confidence=metrics.confidence)
    table = files.markdown.read_text().split("\n\n")
    main_table = next((block for block in table if block.startswith("| config")), "")
    say("\n" + main_table + "\n")
    for warning in summary["warnings"]:
        say(f"warning: {warning}")
    say(f"results   {files.markdown}\njson      {files.json}\nfigure    {files.figure}")
    return 0


def guidance_from_args(args: argparse.Namespace, defaults: dict) -> "GuidanceConfig":
    """The run's guidance options: the flags given, over the knobs of --speed (vlm3d_ttg.speed), over `defaults`
    (the preset's), as `vlm3d-ttg generate` layers them."""
    from vlm3d_ttg.guidance import GuidanceConfig
    from vlm3d_ttg.options import from_namespace
    from vlm3d_ttg.speed import speed_knobs

    return from_namespace(GuidanceConfig, args, defaults={**defaults, **speed_knobs(getattr(args, "speed", None) or "quality")}).validate()


def main(argv: list[str] | None = None) -> int:
    """Entry point: the exit code (2 for bad input or a missing model, with one clear message)."""
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from vlm3d_ttg.errors import Vlm3dError

    try:
        return run(args)
    except Vlm3dError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except ImportError as exc:
        if "accelerate" in str(exc):
            print("error: the benchmark needs accelerate: pip install 'vlm3d-ttg[bench]'", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
