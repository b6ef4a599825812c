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

from vlm3d_ttg.sizes import HUNYUAN3D_2, PROMPT_TEXT_TOKENS
from vlm3d_ttg.sizes import QWEN2_5_VL_7B as QWEN2_5_VL_7B_SIZES

GIB = 1024**3

# The real sizes are written once, in vlm3d_ttg/sizes.py (the backbone's and the critic family's `sizes`).
_SHAPE = HUNYUAN3D_2  # HunyuanBackbone.sizes

# --- Hunyuan3D-2 (hunyuan3d-dit-v2-0) --------------------------------------------------------
DIT_HIDDEN, DIT_DOUBLE, DIT_SINGLE, DIT_MLP = _SHAPE.dit_hidden, _SHAPE.dit_double_blocks, _SHAPE.dit_single_blocks, _SHAPE.dit_mlp_ratio
LATENT_TOKENS, LATENT_CHANNELS = _SHAPE.latent_tokens, _SHAPE.latent_channels
COND_TOKENS, COND_DIM = _SHAPE.condition_tokens, _SHAPE.condition_dim  # DINOv2-giant at 518 px: 37x37 patches + CLS
DIT_PARAMS = _SHAPE.dit_params  # hunyuan3d-dit-v2-0
VAE_WIDTH, VAE_LAYERS, VAE_FREQ_FEATURES = _SHAPE.vae_width, _SHAPE.vae_layers, _SHAPE.vae_freq_features
VAE_PARAMS = _SHAPE.vae_params  # decoder side used here: post_kl + 16 layers + geo-decoder
DINO_PARAMS = _SHAPE.conditioner_params

# --- Qwen2.5-VL-7B ------------------------------------------------------------------------------
_CRITIC = QWEN2_5_VL_7B_SIZES  # critic.families.QWEN2_5_VL.sizes
VIS_LAYERS, VIS_HIDDEN, VIS_MLP = _CRITIC.vision_layers, _CRITIC.vision_hidden, _CRITIC.vision_mlp
VIS_FULL_LAYERS, VIS_WINDOW = _CRITIC.vision_full_layers, _CRITIC.vision_window  # window 112 px = 8x8 patches
LLM_LAYERS, LLM_HIDDEN, LLM_MLP, LLM_KV = _CRITIC.llm_layers, _CRITIC.llm_hidden, _CRITIC.llm_mlp, _CRITIC.llm_kv  # GQA: 4 kv heads x 128
QWEN_PARAMS = _CRITIC.params


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
    silhouette: bool = False  # --silhouette-weight > 0: one more view rendered at view_size, soft IoU fwd + bwd
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


@dataclass(frozen=True)
class CriticShape:
    """The sizes of a critic checkpoint that its cost depends on (from its published config.json).

    Vision tower: `vis_layers` blocks of width `vis_hidden` with an MLP of `vis_mlp` (`vis_mlp_mats`
    matrices: 3 for Qwen2.5-VL's SwiGLU, 2 for Qwen3-VL's GELU MLP), `patch`-px patches merged 2×2;
    all but `vis_full_layers` blocks attend within windows of `vis_window` patches (Qwen2.5-VL), or
    all attend to the whole image (`vis_window=None`, Qwen3-VL). Decoder: `llm_layers` layers of width
    `llm_hidden`, MLP `llm_mlp`, attention width `llm_q` (heads × head_dim) and K/V width `llm_kv`.
    Patch mergers (and Qwen3-VL's deepstack mergers) are not counted: < 1 % of the forward.
    """

    name: str
    vis_layers: int
    vis_hidden: int
    vis_mlp: int
    vis_mlp_mats: int
    vis_full_layers: int
    vis_window: int | None
    patch: int
    llm_layers: int
    llm_hidden: int
    llm_mlp: int
    llm_q: int
    llm_kv: int
    vocab: int
    tied_embeddings: bool


# From the checkpoints' config.json. Confirmed against stored public copies of those configs (read
# through the project's code search): Qwen2.5-VL-3B (text 2048 × 36 layers, MLP 11008, 16 heads /
# 2 KV; vision 32 × 1280, MLP 3420, full attention in blocks 7/15/23/31, window 112 px; tied
# embeddings), Qwen3-VL-4B (text 2560 × 36, MLP 9728, 32 heads × 128 / 8 KV; vision 24 × 1024, MLP 4096,
# patch 16, deepstack 5/11/17; tied embeddings) and Qwen3-VL-8B (text 4096 × 36, MLP 12288, 32 × 128 /
# 8 KV; vision 27 × 1152, MLP 4304, deepstack 8/16/24; untied). Qwen2.5-VL-7B: the constants above
# (docs/design.md §4), as in every other table here.
QWEN2_5_VL_7B = CriticShape("Qwen2.5-VL-7B", VIS_LAYERS, VIS_HIDDEN, VIS_MLP, 3, VIS_FULL_LAYERS, VIS_WINDOW, 14,
                            LLM_LAYERS, LLM_HIDDEN, LLM_MLP, LLM_HIDDEN, LLM_KV, _CRITIC.vocab, False)
CRITIC_SHAPES = (
    CriticShape("Qwen2.5-VL-3B", 32, 1280, 3420, 3, 4, 64, 14, 36, 2048, 11008, 16 * 128, 2 * 128, 151936, True),
    QWEN2_5_VL_7B,
    CriticShape("Qwen3-VL-4B", 24, 1024, 4096, 2, 24, None, 16, 36, 2560, 9728, 32 * 128, 8 * 128, 151936, True),
    CriticShape("Qwen3-VL-8B", 27, 1152, 4304, 2, 27, None, 16, 36, 4096, 12288, 32 * 128, 8 * 128, 151936, False),
)


def critic_params(shape: CriticShape) -> float:
    """Parameters counted from the shape (linear layers and embeddings; norms, biases and mergers left out)."""
    vision = shape.vis_layers * (4 * shape.vis_hidden**2 + shape.vis_mlp_mats * shape.vis_hidden * shape.vis_mlp)
    llm = shape.llm_layers * (shape.llm_hidden * (2 * shape.llm_q + 2 * shape.llm_kv) + 3 * shape.llm_hidden * shape.llm_mlp)
    embeddings = shape.vocab * shape.llm_hidden * (1 if shape.tied_embeddings else 2)
    return vision + llm + embeddings


def critic_forward_flops(views: int, size: int, shape: CriticShape = QWEN2_5_VL_7B) -> float:
    """One critic forward for `views` separate square views of side `size` (the paper's layout)."""
    return critic_images_forward_flops([size] * views, shape=shape)


def critic_images_forward_flops(sides: list[int], cached_sides: list[int] | None = None, *,
                                shape: CriticShape = QWEN2_5_VL_7B) -> float:
    """One critic forward for square images of these sides in one prompt (views or their tile), plus
    images whose vision features are cached (`cached_sides`: the reference) and cost only their tokens."""
    s = shape
    vis_linear = 2 * (4 * s.vis_hidden**2 + s.vis_mlp_mats * s.vis_hidden * s.vis_mlp)
    vision = 0.0
    for side in sides:  # full-attention layers attend within each image only
        patches = (side // s.patch) ** 2
        windowed = s.vis_layers - s.vis_full_layers
        vis_attn = (windowed * 4 * (s.vis_window or 0) + s.vis_full_layers * 4 * patches) * s.vis_hidden
        vision += patches * (s.vis_layers * vis_linear + vis_attn)
    tokens = critic_image_tokens(sides + (cached_sides or []), shape) + PROMPT_TEXT_TOKENS
    llm_linear = 2 * (s.llm_hidden * (s.llm_q + 2 * s.llm_kv) + s.llm_q * s.llm_hidden + 3 * s.llm_hidden * s.llm_mlp)
    llm = tokens * s.llm_layers * (llm_linear + 4 * tokens * s.llm_q)
    return vision + llm


def critic_image_tokens(sides: list[int], shape: CriticShape = QWEN2_5_VL_7B) -> int:
    """Vision tokens in the critic's prompt (patches merged 2×2) for square images of these sides."""
    return sum((side // (2 * shape.patch)) ** 2 for side in sides)


def critic_activation_gib_counted(shape: CriticShape, sides: list[int], checkpointing: bool, cached_sides: list[int] | None = None) -> float:
    """Saved activations (bf16) of the input-only backward, counted per layer from the shape.

    Without checkpointing, per layer and position: the inputs of the two norms, of q/k/v and o, of
    the MLP's matrices, and its intermediate tensors (vision and decoder alike; attention
    probabilities are not kept by fused attention); with it, each layer's input only. For the 7B at
    4 × 448² this counts ~10 GiB where docs/design.md §4 estimates 11.
    """
    s = shape
    patches = sum((side // s.patch) ** 2 for side in sides)
    tokens = critic_image_tokens(sides + (cached_sides or []), s) + PROMPT_TEXT_TOKENS
    if checkpointing:
        vision, llm = s.vis_hidden, s.llm_hidden
    else:
        vision = 6 * s.vis_hidden + 2 * s.vis_hidden + s.vis_mlp_mats * s.vis_mlp
        llm = 5 * s.llm_hidden + s.llm_q + 2 * s.llm_kv + 3 * s.llm_mlp
    return (patches * s.vis_layers * vision + tokens * s.llm_layers * llm) * 2 / GIB


def critic_sides(views: int, size: int, *, layout: str = "separate") -> list[int]:
    """Sides of the images the vision tower encodes at every call: the views, or their one tile of the view size (layout "grid")."""
    return [size] if layout == "grid" else [size] * views


def reference_sides(size: int, reference: bool) -> list[int]:
    """Sides of the images whose features are computed once per run: the reference, made at the view size."""
    return [size] if reference else []


def llm_saved_gib_per_token(checkpointing: bool) -> float:
    """Activations the LLM keeps per prompt token for the input backward (bf16).

    Without checkpointing, per layer: the inputs of the two norms, of q/k/v and o, of gate/up, and
    the gate, up and activated MLP tensors; with it, each layer's input only.
    """
    per_layer = LLM_HIDDEN if checkpointing else 6 * LLM_HIDDEN + 2 * LLM_KV + 3 * LLM_MLP
    return LLM_LAYERS * per_layer * 2 / GIB


def critic_activation_gib(views: int, size: int, checkpointing: bool, *, layout: str = "separate", reference: bool = False) -> float:
    """Saved activations for the input-only backward, from docs/design.md §4's 4 × 448² figures.

    Those figures are split into the LLM's share (per token, `llm_saved_gib_per_token`) and the
    vision tower's (the rest), which scales with the pixels it encodes. The reference's features
    are cached, so it adds only its tokens' LLM activations.
    """
    paper_tokens = critic_image_tokens([448] * 4) + PROMPT_TEXT_TOKENS
    per_token = llm_saved_gib_per_token(checkpointing)
    vision_at_paper = (0.6 if checkpointing else 11.0) - per_token * paper_tokens
    pixels = sum(side**2 for side in critic_sides(views, size, layout=layout))
    tokens = critic_image_tokens(critic_sides(views, size, layout=layout) + reference_sides(size, reference)) + PROMPT_TEXT_TOKENS
    return vision_at_paper * pixels / (4 * 448**2) + per_token * tokens


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
    if run.silhouette:
        rows.append(("silhouette term (soft IoU fwd + bwd)", silhouette_term_flops(run.view_size),
                     f"1 × {run.view_size}² coverage; its render is one more view for the renderer"))
    if run.grad_mode == "xt":
        rows.append(("DiT backward (grad_mode xt)", 2 * dit_forward_flops(2), "through the CFG batch"))
    if run.checkpointing:
        rows.append(("critic recompute (checkpointing)", critic_forward_flops(run.views, run.view_size), "one extra forward"))
    return [(name, flops / 1e12, note) for name, flops, note in rows]


def silhouette_term_flops(size: int) -> float:
    """The soft IoU Σm·t / Σ(m + t − m·t) over one size² view: ~4 FLOPs a pixel forward, ~8 backward."""
    return 12.0 * size * size


def silhouette_measure_flops(run: RunShape) -> float:
    """Once per run without the term in the reward (weight 0, --no-guidance): x̂ at the first scheduled step
    needs one more DiT forward (CFG batch) and one decode to a grid (the camera search itself is renders only)."""
    grid_queries = (run.grid + 1) ** 3 / run.coarse_to_fine_reduction
    return dit_forward_flops(2) + vae_transformer_flops() + grid_queries * geo_decoder_flops_per_query()


def extra_tflop_per_run(run: RunShape) -> float:
    """Guidance's added TFLOP over the whole run (the DiT forward is not extra)."""
    per_step = sum(t for name, t, _ in stage_table(run) if not name.startswith("DiT forward"))
    return per_step * run.guided_steps()


def unit_costs(run: RunShape) -> tuple[float, float, float]:
    """TFLOP of (one DiT latent row, one forward-only critic score of a latent, what a guided step
    adds to that forward): the weights of vlm3d_ttg.compute.CostWeights."""
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
    from vlm3d_ttg.compute import CostWeights, compute_tflop, planned_compute
    from vlm3d_ttg.search import SearchOptions

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


# Sustained bf16 throughput used to turn TFLOP into seconds (an A100 at ~40% of peak; see markdown()).
PLANNING_TFLOP_PER_S = 120.0


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


if __name__ == "__main__":
    print(markdown())
    print()
    print(critic_layout_markdown())
    print()
    print(critic_sizes_markdown())
