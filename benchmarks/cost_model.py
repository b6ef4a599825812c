"""The cost model's tables (RESULTS.md) and the price of a run, counted with the REAL model sizes.

The counting (FLOPs and memory per stage, the knobs of a run, its price) is the library's
`vlm3d_ttg.cost`, which the preflight uses too; this script prints its Markdown tables and prices a
run's manifest: its settings applied to the real models (Hunyuan3D-2 + a Qwen-VL critic), guided
against unguided.

    python benchmarks/cost_model.py                      # prints the Markdown tables
    python benchmarks/cost_model.py --price RUN.glb.json # a run's settings priced at the real sizes;
                                                         # ends with one line guided/unguided=<ratio>
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlm3d_ttg.cost import (  # noqa: E402,F401  (the names other benchmarks and tests read here)
    COND_DIM, COND_TOKENS, CRITIC_SHAPES, DINO_PARAMS, DIT_DOUBLE, DIT_HIDDEN, DIT_MLP, DIT_PARAMS, DIT_SINGLE, GIB,
    LATENT_CHANNELS, LATENT_TOKENS, LLM_HIDDEN, LLM_KV, LLM_LAYERS, LLM_MLP, PCIE_GB_PER_S, PLANNING_TFLOP_PER_S,
    QWEN2_5_VL_7B, QWEN_PARAMS, VAE_FREQ_FEATURES, VAE_LAYERS, VAE_PARAMS, VAE_WIDTH, VIS_FULL_LAYERS, VIS_HIDDEN,
    VIS_LAYERS, VIS_MLP, VIS_WINDOW, CriticShape, Price, RunShape, critic_activation_gib, critic_activation_gib_counted,
    critic_forward_flops, critic_image_tokens, critic_images_forward_flops, critic_params, critic_sides,
    dit_forward_flops, extra_tflop_per_run, geo_decoder_flops_per_query, geo_decoder_kv_flops_per_call, memory_table,
    offload_peak_gib, offload_table, price_manifest, reference_sides, search_tflop, silhouette_measure_flops,
    silhouette_term_flops, stage_table, unit_costs, vae_transformer_flops)
from vlm3d_ttg.errors import InvalidInputError  # noqa: E402
from vlm3d_ttg.sizes import PROMPT_TEXT_TOKENS  # noqa: E402


def search_table() -> list[tuple[str, float]]:
    """(configuration, TFLOP per run) for the search knobs at the default guidance knobs."""
    base = RunShape()
    rows = [("unguided, 1 candidate", replace(base, window=None)), ("guided (default)", base)]
    for n in (2, 4, 8):
        rows.append((f"best-of-{n} on final meshes, unguided", replace(base, window=None, candidates=n)))
    for n, at in ((4, 0.3), (8, 0.3), (8, 0.2), (8, 0.5)):
        rows.append((f"search {n} at σ_s={at}, keep 1, then guided", replace(base, candidates=n, select_at=at)))
        rows.append((f"search {n} at σ_s={at}, keep 1, unguided", replace(base, window=None, candidates=n, select_at=at)))
    return [(name, search_tflop(run)) for name, run in rows]



def markdown() -> str:
    """The cost-model section of RESULTS.md."""
    base = RunShape()
    lines = ["### Per guided step, real sizes (default knobs)", "", "| stage | TFLOP | note |", "|---|---:|---|"]
    for name, tflop, note in stage_table(base):
        lines.append(f"| {name} | {tflop:.2f} | {note} |")
    lines += ["", f"Guided steps at the defaults: {base.guided_steps()} of {base.steps}. "
              f"Unguided run: {base.steps} × {dit_forward_flops(2) / 1e12:.1f} = {base.steps * dit_forward_flops(2) / 1e12:.0f} TFLOP "
              f"(+ export). Guidance adds {extra_tflop_per_run(base):.0f} TFLOP "
              f"(the guided run costs ×{1 + extra_tflop_per_run(base) * 1e12 / (base.steps * dit_forward_flops(2)):.2f} the unguided run's FLOPs).", ""]
    lines += ["### What each knob saves (guidance's added TFLOP per run)", "", "| knob | value | added TFLOP | vs default |", "|---|---|---:|---:|"]
    ref = extra_tflop_per_run(base)
    knobs = [
        ("every", [1, 2, 4]), ("grid", [64, 128]), ("views", [1, 2, 4, 6]), ("view_size", [224, 336, 448]),
        ("grad_mode", ["x0", "xt"]), ("checkpointing", [False, True]), ("silhouette", [False, True]),
    ]
    for field, values in knobs:
        for value in values:
            cost = extra_tflop_per_run(replace(base, **{field: value}))
            lines.append(f"| {field} | {value} | {cost:.0f} | ×{cost / ref:.2f} |")
    lines += ["", f"The input-silhouette term (`--silhouette-weight`) adds {silhouette_term_flops(base.view_size) / 1e12:.1e} "
              "TFLOP per guided step (a soft IoU over one view) plus the render of that one view, next to the critic's "
              f"{2 * critic_forward_flops(base.views, base.view_size) / 1e12:.1f}; its camera is estimated once per run "
              "from renders alone. Runs without the term (weight 0, --no-guidance) still measure "
              "`final_silhouette_iou`: that costs one more DiT forward and decode per run "
              f"({silhouette_measure_flops(base) / 1e12:.2f} TFLOP, once)."]
    lines += ["", "### GPU memory with everything resident (GiB)", "", "| item | default | checkpointing | 2 views × 336² + checkpointing |", "|---|---:|---:|---:|"]
    light = memory_table(replace(base, checkpointing=True))
    lighter = memory_table(replace(base, checkpointing=True, views=2, view_size=336))
    total = [0.0, 0.0, 0.0]
    for (name, a), (_, b), (_, c) in zip(memory_table(base), light, lighter):
        lines.append(f"| {name} | {a:.1f} | {b:.1f} | {c:.1f} |")
        total = [total[0] + a, total[1] + b, total[2] + c]
    lines.append(f"| **total** | **{total[0]:.1f}** | **{total[1]:.1f}** | **{total[2]:.1f}** |")
    lines += ["", "### --offload-idle: what it saves and what it costs per guided step", "",
              "| item | GiB copied | seconds at ~12 GB/s (pageable memory over PCIe) |", "|---|---:|---:|"]
    copies = offload_table(base)
    for name, gib, seconds in copies:
        lines.append(f"| {name} | {gib:.1f} | {seconds:.2f} |")
    per_step = sum(seconds for _, _, seconds in copies)
    lines += ["", f"Per guided step {per_step:.1f} s of copies, {per_step * base.guided_steps():.0f} s over the "
              f"{base.guided_steps()} guided steps of a default run; the GPU peak drops to "
              f"{offload_peak_gib(base):.1f} GiB ({offload_peak_gib(replace(base, checkpointing=True)):.1f} GiB with "
              "checkpointing). Measured copy seconds are in each step's `timings.offload` in the manifest. "
              "Not available with grad_mode xt (the DiT's graph would keep its weights on the GPU)."]
    lines += ["", "### Candidate search (vlm3d_ttg.search): TFLOP per run", "",
              "Counts from `planned_compute` (the same function the benchmark uses to set best-of-N's N), "
              "priced with the unit costs above: a DiT latent row "
              f"{unit_costs(base)[0]:.2f}, a forward-only critic score (decode, grid, render, critic) "
              f"{unit_costs(base)[1]:.2f}, a guided step's backward on top {unit_costs(base)[2]:.2f} TFLOP. "
              "Each run includes the final mesh's score.", "",
              "| configuration | TFLOP | vs guided |", "|---|---:|---:|"]
    table = search_table()
    guided_cost = dict(table)["guided (default)"]
    for name, tflop in table:
        lines.append(f"| {name} | {tflop:.0f} | ×{tflop / guided_cost:.2f} |")
    lines += ["", "Early selection is cheap per candidate only when σ_s is early: a candidate costs its DiT rows up "
              "to σ_s plus one forward-only score. At the default knobs the guided run costs about two unguided "
              "runs, so best-of-N at equal compute is best-of-2."]
    lines += ["", "Time: divide TFLOP by your GPU's sustained throughput (e.g. ~120 TFLOP/s for bf16 "
              "on an A100 at ~40% of peak: the default guided step's "
              f"{sum(t for _, t, _ in stage_table(base)):.0f} TFLOP ≈ "
              f"{sum(t for _, t, _ in stage_table(base)) / 120:.2f} s). Estimates, not measurements: nobody on "
              "this project has run the real models yet."]
    return "\n".join(lines)



def critic_layout_table(run: RunShape) -> list[tuple[str, int, float, float, float]]:
    """(setting, vision tokens, TFLOP of forward + input backward, seconds at PLANNING_TFLOP_PER_S,
    saved activations GiB without checkpointing) of one critic call, for both layouts with and without the reference."""
    rows = []
    for reference in (False, True):
        for layout in ("separate", "grid"):
            sides, cached = critic_sides(run.views, run.view_size, layout=layout), reference_sides(run.view_size, reference)
            tflop = 2 * critic_images_forward_flops(sides, cached) / 1e12
            name = f"{layout}{' + reference' if reference else ''}"
            rows.append((name, critic_image_tokens(sides + cached), tflop, tflop / PLANNING_TFLOP_PER_S,
                         critic_activation_gib(run.views, run.view_size, False, layout=layout, reference=reference)))
    return rows


def critic_layout_markdown() -> str:
    """The cost-model table of the critic's view layouts and reference image (RESULTS.md)."""
    base = RunShape()
    lines = [f"### Critic: view layout and reference image ({base.views} views × {base.view_size}², Qwen2.5-VL-7B)", "",
             "| critic sees | vision tokens | critic TFLOP per guided step (fwd + input bwd) | s at ~120 TFLOP/s | "
             "saved activations (GiB) | critic TFLOP per run | whole guided step TFLOP (all stages) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    step = sum(t for _, t, _ in stage_table(base))
    paper_critic = 2 * critic_forward_flops(base.views, base.view_size) / 1e12
    for name, tokens, tflop, seconds, gib in critic_layout_table(base):
        lines.append(f"| {name} | {tokens} | {tflop:.2f} | {seconds:.3f} | {gib:.1f} | "
                     f"{tflop * base.guided_steps():.0f} | {step - paper_critic + tflop:.0f} (×{(step - paper_critic + tflop) / step:.2f}) |")
    checkpointed = [critic_activation_gib(base.views, base.view_size, True, layout=layout, reference=reference)
                    for reference in (False, True) for layout in ("separate", "grid")]
    lines += ["", f"Plus ~{PROMPT_TEXT_TOKENS} text tokens per prompt; {base.guided_steps()} guided steps per run. The "
              "reference is made at the view size (`critic/reference.py`), so it has one view's tokens; its vision "
              "features are computed once per run and cached, so at each step it costs only its tokens in the LLM "
              "(forward, backward and their activations). Activations: the LLM's share is counted per token, the "
              "vision tower's scaled by the pixels it encodes, from the 4 × 448² figures of docs/design.md §4; with "
              "checkpointing: " + ", ".join(f"{gib:.2f}" for gib in checkpointed) + " GiB in the order of the table. "
              "The grid's tile has the view size and its "
              "views are rendered at the cell size (223² of 448² with 2-px separators), so each view is seen at "
              "about half its side; the renderer's saving is not counted."]
    return "\n".join(lines)


def critic_sizes_table(run: RunShape) -> list[tuple[str, float, float, float, float, float, float, float]]:
    """(critic, parameters in billions, weights GiB in bf16, TFLOP of forward + input backward, saved activations
    GiB, same with checkpointing, for the views separate and tiled into one grid) per guided step at `run`'s views."""
    rows = []
    for shape in CRITIC_SHAPES:
        separate, grid = critic_sides(run.views, run.view_size), critic_sides(run.views, run.view_size, layout="grid")
        rows.append((shape.name, critic_params(shape) / 1e9, critic_params(shape) * 2 / GIB,
                     2 * critic_images_forward_flops(separate, shape=shape) / 1e12,
                     2 * critic_images_forward_flops(grid, shape=shape) / 1e12,
                     critic_activation_gib_counted(shape, separate, False), critic_activation_gib_counted(shape, grid, False),
                     critic_activation_gib_counted(shape, separate, True)))
    return rows


def critic_sizes_markdown() -> str:
    """The cost-model table of the critic sizes people pick (RESULTS.md)."""
    base = RunShape()
    columns = [("critic", "{}"), ("params (B, counted)", "{:.2f}"), ("weights bf16 (GiB)", "{:.1f}"),
               ("TFLOP fwd + input bwd, separate", "{:.1f}"), ("TFLOP, grid", "{:.1f}"), ("activations GiB, separate", "{:.1f}"),
               ("activations GiB, grid", "{:.1f}"), ("activations GiB, separate + checkpointing", "{:.2f}")]
    table = ["| " + " | ".join(title for title, _ in columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]
    table += ["| " + " | ".join(form.format(value) for (_, form), value in zip(columns, row)) + " |"
              for row in critic_sizes_table(base)]
    note = ("Counted from each checkpoint's config (`CRITIC_SHAPES` in benchmarks/cost_model.py; which configs were "
            f"checked against stored copies is said there), with ~{PROMPT_TEXT_TOKENS} text tokens. Qwen3-VL's 16-px "
            "patches give 196 merged tokens per 448² view (Qwen2.5-VL's 14-px: 256), but its vision tower attends over "
            "the whole image in every block (Qwen2.5-VL: windows of 8 × 8 patches in all but 4 blocks). Parameters leave "
            "out norms, biases and the patch mergers; activations are counted per layer (the 7B's §4 estimate of 11 GiB "
            f"is counted here as ~10). Times: TFLOP ÷ ~{PLANNING_TFLOP_PER_S:.0f} TFLOP/s.")
    title = f"### Critic sizes: per guided step at {base.views} × {base.view_size}² (separate views, or one grid tile)"
    return "\n".join([title, "", *table, "", note])


def price_report(result: Price, source: str) -> str:
    """The text `--price` prints: the settings that matter for cost, each stage's TFLOP per guided step, the
    counts, unguided vs guided TFLOP and peak GiB, and last the one line `guided/unguided=<ratio>`."""
    s = result.settings
    on = lambda flag: "on" if flag else "off"  # noqa: E731
    critic = f"{result.critic}" + (" (assumed: the run names no priced critic)" if result.critic_assumed else "")
    lines = [f"Priced at the real sizes (Hunyuan3D-2 + {result.critic}): {source}",
             "The run's own settings applied to the real models, as they are (a tiny/mini run's steps, views, "
             "view size and grid are priced as set).", "",
             "Settings that matter for cost:",
             f"  steps {s['steps']}; guidance {on(s['guidance'])}; σ window {s['sigma_window'][0]:g},{s['sigma_window'][1]:g}; "
             f"every {s['every']}; inner steps {s['inner_steps']}; grad mode {s['grad_mode']}",
             f"  views {s['views']} × {s['view_size']}²; layout {s['view_layout']}; reference {on(s['reference'])}; "
             f"guidance grid {s['grid_resolution']}³; silhouette weight {s['silhouette_weight']:g}",
             f"  critic {critic}; checkpointing {on(s['checkpointing'])}; offload idle {on(s['offload_idle'])}",
             f"  candidates {s['candidates']} (select at σ {s['select_at']:g}, keep {s['keep']}); "
             f"reuse displacement {s.get('reuse_displacement') or 0:g}; stop r {s.get('stop_r') if s.get('stop_r') is not None else 'off'}",
             "", "Per guided step (TFLOP; the DiT forward is paid by every step, guided or not):"]
    width = max(len(name) for name, _, _ in result.stages)
    lines += [f"  {name:<{width}}  {tflop:8.2f}  {note}" for name, tflop, note in result.stages]
    c = result.counts
    lines += ["", f"Work {'planned from the settings' if result.planned else 'the run counted'}: {c['dit_rows']} DiT rows, "
              f"{c['critic_forwards']} critic forwards, {c['critic_backwards']} critic backwards (guided steps that called the critic; "
              "the final mesh's one score is left out of both runs' TFLOP)"]
    lines += [f"Note: {note}" for note in result.notes]
    lines += ["", f"unguided: {result.unguided_tflop:9.1f} TFLOP, peak {result.unguided_peak_gib:5.1f} GiB resident (shape model only)",
              f"this run: {result.guided_tflop:9.1f} TFLOP, peak {result.guided_peak_gib:5.1f} GiB resident ({result.settings['guided_steps']} guided steps)",
              f"guided/unguided={result.ratio:.2f}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the tables, or price a run's manifest (`--price`); a bad manifest: a message and exit 2."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--price", metavar="RUN.glb.json", type=Path,
                        help="a run's manifest: price its settings at the real sizes (last line guided/unguided=<ratio>)")
    args = parser.parse_args(argv)
    if args.price is None:
        print(markdown())
        print()
        print(critic_layout_markdown())
        print()
        print(critic_sizes_markdown())
        return 0
    try:
        result = price_manifest(args.price)
    except InvalidInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(price_report(result, str(args.price)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
