"""Cost model of a guided run with the REAL model sizes (docs/design.md §6): FLOPs and memory per stage,
and the price of a run's settings (`price`, `price_manifest`): guided ÷ unguided TFLOP at the real sizes.

Nothing here runs a model: it counts multiply-adds of the architectures (2 FLOPs each) from their
published sizes, so that users can see what a guided step costs before they rent a GPU, and what
each knob (every-k, grid size, views, view size, view layout, reference, grad mode, inner steps,
checkpointing, critic size, candidates) saves. `benchmarks/cost_model.py` prints the tables of
RESULTS.md from these counts and prices a run's manifest (`--price RUN.glb.json`); the preflight
prints the price of the run it checks. Measured CPU timings of the same stages on the tiny models
are in bench_sampler.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import InvalidInputError
from .sizes import HUNYUAN3D_2, PROMPT_TEXT_TOKENS
from .sizes import QWEN2_5_VL_7B as QWEN2_5_VL_7B_SIZES

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


@dataclass(frozen=True)
class RunShape:
    """The knobs of a guided run that its cost depends on (the defaults: `vlm3d-ttg generate`'s)."""

    steps: int = 50
    window: tuple[float, float] | None = (0.2, 0.85)  # None: unguided
    every: int = 2
    grid: int = 64
    coarse_to_fine_reduction: float = 6.0  # decoder-query saving of coarse-to-fine (measured on the tiny model)
    visible_vertices: int = 60_000
    views: int = 4
    view_size: int = 448
    grad_mode: str = "x0"
    inner_steps: int = 1  # critic forward + backward per guided step
    layout: str = "separate"  # "grid": the views tiled into one view_size image (critic_sides)
    reference: bool = False  # the conditioning image in the prompt too (features cached: its tokens only)
    critic: CriticShape = QWEN2_5_VL_7B
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
        ("critic forward + input backward", 2 * _critic_call_flops(run), _critic_note(run)),
    ]
    if run.silhouette:
        rows.append(("silhouette term (soft IoU fwd + bwd)", silhouette_term_flops(run.view_size),
                     f"1 × {run.view_size}² coverage; its render is one more view for the renderer"))
    if run.grad_mode == "xt":
        rows.append(("DiT backward (grad_mode xt)", 2 * dit_forward_flops(2), "through the CFG batch"))
    if run.checkpointing:
        rows.append(("critic recompute (checkpointing)", _critic_call_flops(run), "one extra forward"))
    return [(name, flops / 1e12, note) for name, flops, note in rows]


def _critic_call_flops(run: RunShape) -> float:
    """One critic forward with the run's views, layout, reference and critic."""
    return critic_images_forward_flops(critic_sides(run.views, run.view_size, layout=run.layout),
                                       reference_sides(run.view_size, run.reference), shape=run.critic)


def _critic_note(run: RunShape) -> str:
    """The critic row's note: the views it sees (the layout, reference and critic named when not the defaults)."""
    note = f"{run.views} × {run.view_size}²"
    if run.layout == "grid":
        note += f" tiled into one {run.view_size}² image"
    if run.reference:
        note += " + the reference (cached features)"
    if run.critic != QWEN2_5_VL_7B:
        note += f", {run.critic.name}"
    return note


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
    return per_step * run.guided_steps() * run.inner_steps


def unit_costs(run: RunShape) -> tuple[float, float, float]:
    """TFLOP of (one DiT latent row, one forward-only critic score of a latent, what a guided step
    adds to that forward): the weights of vlm3d_ttg.compute.CostWeights."""
    grid_queries = (run.grid + 1) ** 3 / run.coarse_to_fine_reduction
    chunks = math.ceil(grid_queries / 8000)
    forward = (vae_transformer_flops() + grid_queries * geo_decoder_flops_per_query()
               + chunks * geo_decoder_kv_flops_per_call() + run.visible_vertices * geo_decoder_flops_per_query()
               + _critic_call_flops(run))
    guided = sum(t for name, t, _ in stage_table(run) if not name.startswith("DiT forward")) * 1e12
    return dit_forward_flops(1) / 1e12, forward / 1e12, (guided - forward) / 1e12


def search_tflop(run: RunShape) -> float:
    """A whole run's TFLOP (DiT, guidance, candidate scoring, final scoring) with the search knobs."""
    from vlm3d_ttg.guidance import GuidanceConfig
    from vlm3d_ttg.compute import CostWeights, compute_tflop, planned_compute
    from vlm3d_ttg.search import SearchOptions

    guidance = GuidanceConfig(enabled=run.window is not None, sigma_window=run.window or (0.2, 0.85),
                              every=run.every, grad_mode=run.grad_mode, inner_steps=run.inner_steps)
    search = SearchOptions(candidates=run.candidates, select_at=run.select_at, keep=run.keep)
    return compute_tflop(planned_compute(run.steps, guidance, search), CostWeights(*unit_costs(run)))


def critic_weight_bytes(shape: CriticShape) -> float:
    """The critic's weights in bf16: the published parameter count for Qwen2.5-VL-7B, the counted one for the others."""
    return (QWEN_PARAMS if shape == QWEN2_5_VL_7B else critic_params(shape)) * 2


def _critic_saved_gib(run: RunShape) -> float:
    """The critic's saved activations of a guided step: the 7B's from docs/design.md §4's figures, the others counted."""
    if run.critic == QWEN2_5_VL_7B:
        return critic_activation_gib(run.views, run.view_size, run.checkpointing, layout=run.layout, reference=run.reference)
    return critic_activation_gib_counted(run.critic, critic_sides(run.views, run.view_size, layout=run.layout),
                                         run.checkpointing, reference_sides(run.view_size, run.reference))


def memory_table(run: RunShape) -> list[tuple[str, float]]:
    """(item, GiB) resident on the GPU when everything stays there."""
    return [
        ("DiT weights (fp16)", DIT_PARAMS * 2 / GIB),
        ("ShapeVAE weights (fp16; the export)", VAE_PARAMS * 2 / GIB),
        ("ShapeVAE guidance-decode copy (fp32, precision policy)", VAE_PARAMS * 4 / GIB),
        ("DINOv2-giant conditioner (fp16; idle after encoding)", DINO_PARAMS * 2 / GIB),
        (f"{run.critic.name} weights (bf16)", critic_weight_bytes(run.critic) / GIB),
        ("critic saved activations", _critic_saved_gib(run)),
        ("ShapeVAE transformer activations (fp32, kept for the latent backward)", VAE_LAYERS * LATENT_TOKENS * VAE_WIDTH * 12 * 4 / GIB),
        ("DiT activations (grad_mode xt only)", (2 * (DIT_DOUBLE + DIT_SINGLE) * (LATENT_TOKENS + COND_TOKENS) * DIT_HIDDEN * 16 * 2 / GIB) if run.grad_mode == "xt" else 0.0),
    ]


# Host<->device copies of --offload-idle. Pageable (not pinned) host memory over PCIe 4/5 x16
# typically sustains 10-25 GB/s; 12 GB/s is the planning figure, not a measurement.
PCIE_GB_PER_S = 12.0


def offload_table(run: RunShape) -> list[tuple[str, float, float]]:
    """(item, GiB copied per guided step, seconds at PCIE_GB_PER_S) for --offload-idle."""
    dit, critic = DIT_PARAMS * 2, critic_weight_bytes(run.critic)
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
    critic = table[f"{run.critic.name} weights (bf16)"] + table["critic saved activations"]
    return resident + max(denoise, critic)


# Sustained bf16 throughput used to turn TFLOP into seconds (an A100 at ~40% of peak; see markdown()).
PLANNING_TFLOP_PER_S = 120.0



# ---------------------------------------------------------------------------------------------
# The price of a run's settings: guided ÷ unguided TFLOP at the real sizes.

#: The critic priced when the run's critic id names none of CRITIC_SHAPES (the default critic).
DEFAULT_CRITIC = QWEN2_5_VL_7B


def critic_shape_for(model_id: str | None) -> tuple[CriticShape, bool]:
    """The CRITIC_SHAPES entry a critic checkpoint id names ('Qwen/Qwen2.5-VL-3B-Instruct' → Qwen2.5-VL-3B) and
    whether it was assumed instead (True: the id names none of them, Qwen2.5-VL-7B is priced)."""
    key = (model_id or "").lower().replace("_", "-")
    for shape in CRITIC_SHAPES:
        if shape.name.lower() in key:
            return shape, False
    return DEFAULT_CRITIC, True


def run_shape(guidance: Any, steps: int, *, critic: CriticShape = DEFAULT_CRITIC, checkpointing: bool = False) -> RunShape:
    """The cost model's knobs for a run with these guidance settings (a `GuidanceConfig`) and sampler steps.

    The guidance grid sets the decode's cost: coarse-to-fine from 32³ above 32 (the measured /6 of the
    64³ grid), dense at or below it, and the visible vertices scale with the surface (grid²).
    """
    grid = int(guidance.grid_resolution)
    return RunShape(
        steps=steps, window=tuple(guidance.sigma_window) if guidance.active else None, every=guidance.every,
        grid=grid, coarse_to_fine_reduction=RunShape.coarse_to_fine_reduction if grid > 32 else 1.0,
        visible_vertices=round(RunShape.visible_vertices * (grid / RunShape.grid) ** 2), views=guidance.num_views,
        view_size=guidance.view_size, grad_mode=guidance.grad_mode, inner_steps=guidance.inner_steps,
        layout=guidance.view_layout, reference=bool(guidance.reference), critic=critic, checkpointing=checkpointing,
        silhouette=guidance.silhouette_weight > 0)


@dataclass(frozen=True)
class Price:
    """A run's counted cost at the real sizes (Hunyuan3D-2 + a Qwen-VL critic), guided and unguided.

    `guided_tflop` is the whole run as set (DiT rows, every critic call, candidates); `unguided_tflop` the
    plain unguided run with the same steps and one candidate. Neither counts what both runs do alike (the
    export, the final mesh's one score). Peaks are GPU memory with everything resident (bf16/fp16 weights).
    """

    guided_tflop: float
    unguided_tflop: float
    guided_peak_gib: float
    unguided_peak_gib: float
    critic: str
    critic_assumed: bool
    stages: tuple[tuple[str, float, str], ...]  # (stage, TFLOP per guided step, note)
    counts: dict[str, int]  # dit_rows, critic_forwards, critic_backwards (planned, or the manifest's)
    planned: bool  # True: counts foreseen from the settings; False: the counts a run made
    settings: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def ratio(self) -> float:
        """Guided ÷ unguided TFLOP."""
        return self.guided_tflop / self.unguided_tflop

    def summary(self) -> str:
        """One line: 'counted at the real sizes: guided/unguided ×N.NN (X TFLOP vs Y)'."""
        return (f"counted at the real sizes: guided/unguided ×{self.ratio:.2f} "
                f"({self.guided_tflop:.0f} TFLOP vs {self.unguided_tflop:.0f})")


def _shape_model_gib() -> float:
    """The unguided run's resident weights: DiT, ShapeVAE (the export) and DINOv2 in fp16."""
    return (DIT_PARAMS + VAE_PARAMS + DINO_PARAMS) * 2 / GIB


def price(guidance: Any, steps: int, search: Any = None, *, critic_model: str | None = None,
          checkpointing: bool = False, offload_idle: bool = False, counts: Any = None) -> Price:
    """The counted cost of a run with these settings at the real sizes (a `GuidanceConfig`, sampler steps,
    `SearchOptions` or None), with the critic `critic_model` names (Qwen2.5-VL-7B when it names none of
    CRITIC_SHAPES). `counts` (a `Compute` or the manifest's "compute" dict): the work a run made; without
    them the work is planned from the settings (`planned_compute`), where `stop_r` counts every scheduled
    guided step (an upper bound)."""
    from .compute import Compute, CostWeights, compute_tflop, planned_compute
    from .search import SearchOptions

    critic, assumed = critic_shape_for(critic_model)
    shape = run_shape(guidance, steps, critic=critic, checkpointing=checkpointing)
    weights = CostWeights(*unit_costs(shape))
    search = search if search is not None else SearchOptions()
    notes = []
    planned = counts is None
    if planned:
        counts = planned_compute(steps, guidance, search)
    counts = counts.to_dict() if isinstance(counts, Compute) else dict(counts)
    counts = {key: int(counts[key]) for key in ("dit_rows", "critic_forwards", "critic_backwards")}
    # The final mesh's one score is made by guided and unguided runs alike: left out of both.
    final_score = weights.critic_forward if counts["critic_forwards"] > 0 else 0.0
    guided = compute_tflop(counts, weights) - final_score
    unguided = compute_tflop({"dit_rows": 2 * steps, "critic_forwards": 0, "critic_backwards": 0}, weights)
    stop_r = getattr(guidance, "stop_r", None)
    if stop_r is not None and planned:
        notes.append(f"stop_r {stop_r:g}: every scheduled guided step counted (an upper bound; a run stops when r ≥ stop_r)")
    if getattr(guidance, "reuse_displacement", 0.0):
        notes.append("reuse_displacement: the last displacement reused at unguided steps costs no counted FLOPs")
    if assumed:
        notes.append(f"critic {critic_model!r} is none of {', '.join(s.name for s in CRITIC_SHAPES)}: "
                     f"priced as {critic.name}")
    if not guidance.active:
        memory = _shape_model_gib()  # the final mesh's score (critic weights) is left out, as its TFLOP are
    else:
        memory = offload_peak_gib(shape) if offload_idle else sum(gib for _, gib in memory_table(shape))
    finishers = search.keep if search.searching and search.select_at < 1 else search.candidates
    settings = {
        "steps": steps, "guidance": guidance.active, "sigma_window": tuple(guidance.sigma_window), "every": guidance.every,
        "guided_steps": counts["critic_backwards"] // (guidance.inner_steps * finishers),
        "inner_steps": guidance.inner_steps, "grad_mode": guidance.grad_mode, "views": guidance.num_views,
        "view_size": guidance.view_size, "view_layout": guidance.view_layout, "reference": bool(guidance.reference),
        "grid_resolution": guidance.grid_resolution, "silhouette_weight": guidance.silhouette_weight,
        "critic": critic.name, "checkpointing": checkpointing, "offload_idle": offload_idle,
        "candidates": search.candidates, "select_at": search.select_at, "keep": search.keep,
        "reuse_displacement": getattr(guidance, "reuse_displacement", 0.0), "stop_r": stop_r,
    }
    return Price(guided_tflop=guided, unguided_tflop=unguided, guided_peak_gib=memory, unguided_peak_gib=_shape_model_gib(),
                 critic=critic.name, critic_assumed=assumed, stages=tuple(stage_table(shape)), counts=counts,
                 planned=planned, settings=settings, notes=tuple(notes))


def read_manifest(path: str | Path) -> dict[str, Any]:
    """A `vlm3d-ttg generate` manifest (RUN.glb.json) as a dict; InvalidInputError for a file that is missing,
    unreadable, not JSON or not a generate manifest."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: no such file (give the manifest a generate run wrote, e.g. RUN.glb.json)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{path}: cannot read it ({exc})") from None
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{path}: not JSON ({exc.msg} at line {exc.lineno}); give a run's manifest, RUN.glb.json") from None
    if not (isinstance(manifest, dict) and isinstance(manifest.get("guidance"), dict)
            and isinstance(manifest.get("options"), dict) and isinstance(manifest["options"].get("steps"), int)):
        raise InvalidInputError(f"{path}: not a run manifest (no 'guidance' and 'options.steps'); give the RUN.glb.json "
                                "that `vlm3d-ttg generate` wrote next to the mesh")
    return manifest


def price_manifest(manifest: dict[str, Any] | str | Path) -> Price:
    """The counted cost of the run a manifest records (a path or the read dict): its settings at the real
    sizes, with the work it actually made (its "compute" counts: guided steps that called the critic,
    candidates scored) when the manifest has them."""
    import dataclasses

    from .guidance import GuidanceConfig
    from .search import SearchOptions

    if not isinstance(manifest, dict):
        manifest = read_manifest(manifest)
    options = manifest["options"]
    known = {f.name for f in dataclasses.fields(GuidanceConfig)}
    values = {k: v for k, v in manifest["guidance"].items() if k in known}
    if "sigma_window" in values:
        values["sigma_window"] = tuple(values["sigma_window"])
    try:
        guidance = GuidanceConfig(**values)
        search_values = (manifest.get("search") or {}).get("options") or {}  # run.py: SearchRecord.to_dict()
        search_known = {f.name for f in dataclasses.fields(SearchOptions)}
        search = SearchOptions(**{k: v for k, v in search_values.items() if k in search_known}) if isinstance(search_values, dict) else None
    except TypeError as exc:
        raise InvalidInputError(f"the manifest's guidance or search settings are not this version's: {exc}") from None
    critic_model = options.get("vlm") or (manifest.get("models") or {}).get("critic")
    compute = manifest.get("compute")
    counts = compute if isinstance(compute, dict) and {"dit_rows", "critic_forwards", "critic_backwards"} <= set(compute) else None
    result = price(guidance, options["steps"], search, critic_model=critic_model,
                   checkpointing=bool(options.get("checkpointing")), offload_idle=bool(options.get("offload_idle")),
                   counts=counts)
    extra = dict(result.settings)
    for key in ("reuse_displacement", "stop_r"):  # a newer manifest's knobs this version's GuidanceConfig lacks
        if key in manifest["guidance"]:
            extra[key] = manifest["guidance"][key]
    preset = (manifest.get("models") or {}).get("preset")
    notes = list(result.notes)
    if preset and preset != "real":
        notes.append(f"a {preset}-preset run: its own settings (steps, views, view size, grid) priced as they are on the real models")
    if counts is None:
        notes.append("the manifest has no compute counts: the work is planned from its settings")
    return replace(result, settings={**extra, "preset": preset}, notes=tuple(notes))
