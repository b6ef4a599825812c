"""Cost model of a guided run with the REAL model sizes (docs/design.md §6): FLOPs and memory per stage.

Nothing here runs a model: it counts multiply-adds of the architectures (2 FLOPs each) from their
published sizes, so that users can see what a guided step costs before they rent a GPU, and what
each knob (every-k, grid size, views, view size, grad mode, checkpointing) saves. Measured CPU
timings of the same stages on the tiny models are in bench_sampler.py; together they are the
breakdown in RESULTS.md.

    python benchmarks/cost_model.py            # prints the Markdown tables
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

GIB = 1024**3

# --- Hunyuan3D-2 (hunyuan3d-dit-v2-0) --------------------------------------------------------
DIT_HIDDEN, DIT_DOUBLE, DIT_SINGLE, DIT_MLP = 1024, 16, 32, 4.0
LATENT_TOKENS, LATENT_CHANNELS = 3072, 64
COND_TOKENS, COND_DIM = 1370, 1536  # DINOv2-giant at 518 px: 37x37 patches + CLS
DIT_PARAMS = 1.1e9  # hunyuan3d-dit-v2-0
VAE_WIDTH, VAE_LAYERS, VAE_FREQ_FEATURES = 1024, 16, 51
VAE_PARAMS = 0.21e9  # decoder side used here: post_kl + 16 layers + geo-decoder
DINO_PARAMS = 1.1e9

# --- Qwen2.5-VL-7B ------------------------------------------------------------------------------
VIS_LAYERS, VIS_HIDDEN, VIS_MLP, VIS_FULL_LAYERS, VIS_WINDOW = 32, 1280, 3420, 4, 64  # window 112 px = 8x8 patches
LLM_LAYERS, LLM_HIDDEN, LLM_MLP, LLM_KV = 28, 3584, 18944, 512  # GQA: 4 kv heads x 128
QWEN_PARAMS = 8.29e9
PROMPT_TEXT_TOKENS = 200


@dataclass(frozen=True)
class RunShape:
    """The knobs of a guided run."""

    steps: int = 50
    window: tuple[float, float] | None = (0.2, 0.85)  # None: unguided
    every: int = 2
    grid: int = 64
    coarse_to_fine_reduction: float = 6.0  # decoder-query saving of coarse-to-fine (measured on the tiny model)
    visible_vertices: int = 60_000
    views: int = 4
    view_size: int = 448
    grad_mode: str = "x0"
    checkpointing: bool = False
    # Candidate search (vlm3d_ttg.search): N candidates, selection at σ_s (1: among final meshes), k kept.
    candidates: int = 1
    select_at: float = 1.0
    keep: int = 1

    def guided_steps(self) -> int:
        if self.window is None:
            return 0
        sigmas = [i / (self.steps - 1) for i in range(self.steps)]
        lo, hi = self.window
        return len([i for i, s in enumerate(sigmas[:-1]) if lo <= s <= hi][:: self.every])


def dit_forward_flops(batch: int) -> float:
    """One DiT call (batch = 2 with CFG): ~2 FLOPs per parameter per token plus joint attention."""
    tokens = LATENT_TOKENS + COND_TOKENS
    per_token_block = 2 * 12 * DIT_HIDDEN**2 + 4 * tokens * DIT_HIDDEN
    return batch * (DIT_DOUBLE + DIT_SINGLE) * tokens * per_token_block


def vae_transformer_flops() -> float:
    per_token_layer = 2 * 12 * VAE_WIDTH**2 + 4 * LATENT_TOKENS * VAE_WIDTH
    return VAE_LAYERS * LATENT_TOKENS * per_token_layer


def geo_decoder_flops_per_query() -> float:
    d = VAE_WIDTH
    return 2 * (VAE_FREQ_FEATURES * d + 2 * d * d + 8 * d * d) + 4 * LATENT_TOKENS * d


def geo_decoder_kv_flops_per_call() -> float:
    """c_kv over all latent tokens, recomputed by every decoder call (per chunk)."""
    return 2 * LATENT_TOKENS * VAE_WIDTH * 2 * VAE_WIDTH


def critic_forward_flops(views: int, size: int) -> float:
    patches = views * (size // 14) ** 2
    vis_linear = 2 * (4 * VIS_HIDDEN**2 + 3 * VIS_HIDDEN * VIS_MLP)
    vis_attn = ((VIS_LAYERS - VIS_FULL_LAYERS) * 4 * VIS_WINDOW + VIS_FULL_LAYERS * 4 * (size // 14) ** 2) * VIS_HIDDEN
    vision = patches * (VIS_LAYERS * vis_linear + vis_attn)
    tokens = patches // 4 + PROMPT_TEXT_TOKENS
    llm_linear = 2 * (LLM_HIDDEN * (LLM_HIDDEN + 2 * LLM_KV) + LLM_HIDDEN**2 + 3 * LLM_HIDDEN * LLM_MLP)
    llm = tokens * LLM_LAYERS * (llm_linear + 4 * tokens * LLM_HIDDEN)
    return vision + llm


def critic_activation_gib(views: int, size: int, checkpointing: bool) -> float:
    """Saved activations for the input-only backward, scaled from docs/design.md §4's 4x448² figures."""
    scale = views * (size / 448) ** 2 / 4
    return (0.6 if checkpointing else 11.0) * scale


def stage_table(run: RunShape) -> list[tuple[str, float, str]]:
    """(stage, TFLOP per guided step, note) for one guided step."""
    grid_queries = (run.grid + 1) ** 3 / run.coarse_to_fine_reduction
    chunks = math.ceil(grid_queries / 8000)
    rows = [
        ("DiT forward (CFG batch 2; every step anyway)", dit_forward_flops(2), "not extra: the sampler pays it"),
        ("ShapeVAE transformer fwd + bwd", 3 * vae_transformer_flops(), "once per guided step"),
        ("occupancy grid (no grad)", grid_queries * geo_decoder_flops_per_query() + chunks * geo_decoder_kv_flops_per_call(),
         f"{run.grid}³ grid, coarse-to-fine /{run.coarse_to_fine_reduction:g}"),
        ("vertex re-query fwd + bwd", 3 * run.visible_vertices * geo_decoder_flops_per_query(), f"{run.visible_vertices} visible vertices"),
        ("critic forward + input backward", 2 * critic_forward_flops(run.views, run.view_size), f"{run.views} × {run.view_size}²"),
    ]
    if run.grad_mode == "xt":
        rows.append(("DiT backward (grad_mode xt)", 2 * dit_forward_flops(2), "through the CFG batch"))
    if run.checkpointing:
        rows.append(("critic recompute (checkpointing)", critic_forward_flops(run.views, run.view_size), "one extra forward"))
    return [(name, flops / 1e12, note) for name, flops, note in rows]


def extra_tflop_per_run(run: RunShape) -> float:
    """Guidance's added TFLOP over the whole run (the DiT forward is not extra)."""
    per_step = sum(t for name, t, _ in stage_table(run) if not name.startswith("DiT forward"))
    return per_step * run.guided_steps()


def unit_costs(run: RunShape) -> tuple[float, float, float]:
    """TFLOP of (one DiT latent row, one forward-only critic score of a latent, what a guided step
    adds to that forward): the weights of vlm3d_ttg.search.CostWeights."""
    grid_queries = (run.grid + 1) ** 3 / run.coarse_to_fine_reduction
    chunks = math.ceil(grid_queries / 8000)
    forward = (vae_transformer_flops() + grid_queries * geo_decoder_flops_per_query()
               + chunks * geo_decoder_kv_flops_per_call() + run.visible_vertices * geo_decoder_flops_per_query()
               + critic_forward_flops(run.views, run.view_size))
    guided = sum(t for name, t, _ in stage_table(run) if not name.startswith("DiT forward")) * 1e12
    return dit_forward_flops(1) / 1e12, forward / 1e12, (guided - forward) / 1e12


def search_tflop(run: RunShape) -> float:
    """A whole run's TFLOP (DiT, guidance, candidate scoring, final scoring) with the search knobs."""
    from vlm3d_ttg.guidance import GuidanceConfig
    from vlm3d_ttg.search import CostWeights, SearchOptions, compute_tflop, planned_compute

    guidance = GuidanceConfig(enabled=run.window is not None, sigma_window=run.window or (0.2, 0.85),
                              every=run.every, grad_mode=run.grad_mode)
    search = SearchOptions(candidates=run.candidates, select_at=run.select_at, keep=run.keep)
    return compute_tflop(planned_compute(run.steps, guidance, search), CostWeights(*unit_costs(run)))


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


def memory_table(run: RunShape) -> list[tuple[str, float]]:
    """(item, GiB) resident on the GPU when everything stays there."""
    return [
        ("DiT weights (fp16)", DIT_PARAMS * 2 / GIB),
        ("ShapeVAE weights (fp16; the export)", VAE_PARAMS * 2 / GIB),
        ("ShapeVAE guidance-decode copy (fp32, precision policy)", VAE_PARAMS * 4 / GIB),
        ("DINOv2-giant conditioner (fp16; idle after encoding)", DINO_PARAMS * 2 / GIB),
        ("Qwen2.5-VL-7B weights (bf16)", QWEN_PARAMS * 2 / GIB),
        ("critic saved activations", critic_activation_gib(run.views, run.view_size, run.checkpointing)),
        ("ShapeVAE transformer activations (fp32, kept for the latent backward)", VAE_LAYERS * LATENT_TOKENS * VAE_WIDTH * 12 * 4 / GIB),
        ("DiT activations (grad_mode xt only)", (2 * (DIT_DOUBLE + DIT_SINGLE) * (LATENT_TOKENS + COND_TOKENS) * DIT_HIDDEN * 16 * 2 / GIB) if run.grad_mode == "xt" else 0.0),
    ]


# Host<->device copies of --offload-idle. Pageable (not pinned) host memory over PCIe 4/5 x16
# typically sustains 10-25 GB/s; 12 GB/s is the planning figure, not a measurement.
PCIE_GB_PER_S = 12.0


def offload_table(run: RunShape) -> list[tuple[str, float, float]]:
    """(item, GiB copied per guided step, seconds at PCIE_GB_PER_S) for --offload-idle."""
    dit, critic = DIT_PARAMS * 2, QWEN_PARAMS * 2
    rows = [
        ("DiT off and back (fp16)", 2 * dit),
        ("critic on and off (bf16)", 2 * critic),
    ]
    return [(name, nbytes / GIB, nbytes / (PCIE_GB_PER_S * 1e9)) for name, nbytes in rows]


def offload_peak_gib(run: RunShape) -> float:
    """GPU memory peak with --offload-idle: the resident parts plus the larger phase."""
    table = dict(memory_table(run))
    resident = table["ShapeVAE weights (fp16; the export)"] + table["ShapeVAE guidance-decode copy (fp32, precision policy)"]
    resident += table["ShapeVAE transformer activations (fp32, kept for the latent backward)"]
    denoise = table["DiT weights (fp16)"]
    critic = table["Qwen2.5-VL-7B weights (bf16)"] + table["critic saved activations"]
    return resident + max(denoise, critic)


def markdown() -> str:
    """The cost-model section of RESULTS.md."""
    base = RunShape()
    lines = ["### Per guided step, real sizes (default knobs)", "", "| stage | TFLOP | note |", "|---|---:|---|"]
    for name, tflop, note in stage_table(base):
        lines.append(f"| {name} | {tflop:.2f} | {note} |")
    lines += ["", f"Guided steps at the defaults: {base.guided_steps()} of {base.steps}. "
              f"Unguided run: {base.steps} × {dit_forward_flops(2) / 1e12:.1f} = {base.steps * dit_forward_flops(2) / 1e12:.0f} TFLOP "
              f"(+ export). Guidance adds {extra_tflop_per_run(base):.0f} TFLOP "
              f"(the guided run costs ×{1 + extra_tflop_per_run(base) / (base.steps * dit_forward_flops(2)):.2f} the unguided run's FLOPs).", ""]
    lines += ["### What each knob saves (guidance's added TFLOP per run)", "", "| knob | value | added TFLOP | vs default |", "|---|---|---:|---:|"]
    ref = extra_tflop_per_run(base)
    knobs = [
        ("every", [1, 2, 4]), ("grid", [64, 128]), ("views", [1, 2, 4, 6]), ("view_size", [224, 336, 448]),
        ("grad_mode", ["x0", "xt"]), ("checkpointing", [False, True]),
    ]
    for field, values in knobs:
        for value in values:
            cost = extra_tflop_per_run(replace(base, **{field: value}))
            lines.append(f"| {field} | {value} | {cost:.0f} | ×{cost / ref:.2f} |")
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


if __name__ == "__main__":
    print(markdown())
