"""Before anything loads: will this run fit? Sane bounds for every option that scales the work, and an
estimate of the run's peak memory (host and device) checked against what the machine has.

One entry for every front end — the CLI, the benchmark (per row, before any generation) and the
app/API: `check_generation(run_options, guidance, search, prompt=..., preset=...)`. It takes the same
option dataclasses the CLI builds, returns the `RunEstimate` (for display) and raises
`ResourceLimitError` (an `InvalidInputError`, exit 2) with the estimate, the limit and the option to
lower when the run cannot fit.

The estimate is a model, not a measurement: the parts that scale with the options (the export grid
of `--octree-resolution`, the guidance grid of `--grid`, the renders of `--views` × `--view-size`,
the critic's tokens and activations, the candidates' latents) are counted from their tensor shapes,
the fixed parts (the Python runtime and the libraries, model weights by preset) from measured or
published sizes. `benchmarks/bench_preflight.py` puts the estimate beside the measured peak RSS of
tiny runs on the CPU (benchmarks/RESULTS.md).

This module reads the option dataclasses (their declared sane bounds) and is called by every front end
for the estimate; a preset's model sizes are fields of its record (`presets.Preset.small_models`, `depth_scaled`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from .cost import Price, price
from .errors import InvalidInputError
from .generation import GenerationOptions
from .guidance import GuidanceConfig
from .options import declared
from .search import SearchOptions
from .presets import Preset, get_preset
from .sizes import HUNYUAN3D_2, PROMPT_TEXT_TOKENS, QWEN2_5_VL_7B

GIB = 1024**3
MIB = 1024**2
logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Sane bounds (docs/bad_inputs.md): beyond these a value is a typo or an attack, whatever the machine.
# Declared on the options themselves (`Option.maximum` with its `why`) and checked by their validate().

#: field name → (largest accepted value, why), as the options declare them.
SANE_BOUNDS: dict[str, tuple[float, str]] = {
    f.name: (spec.maximum, spec.why) for cls in (GenerationOptions, GuidanceConfig, SearchOptions)
    for f, spec in declared(cls) if spec.why}


# ---------------------------------------------------------------------------------------------
# The estimate.

#: The Python process with torch, transformers, diffusers and hy3dgen imported and the tiny models
#: loaded: measured on the CPU (benchmarks/bench_preflight.py, the smallest setting). A fixed part of
#: every run's host peak.
RUNTIME_BYTES = 1280 * MIB
#: Bytes per point of hy3dgen's dense export grid ((N+1)³ points). Counted from the tensors: the
#: meshgrid (3 × float32), its stacked copy (3 × float32), the chunked logits and their concatenation
#: (2 × float32) = 32 B; marching cubes' copies and its output, and the final mesh's scoring render,
#: grow with the surface, which on the tiny model's noisy shapes grows almost with the volume: the
#: measured difference between octree 64 and 192 is 124 B per point (RESULTS.md, "Preflight"), so the
#: factor is the measured one — an upper bound for smooth real shapes.
EXPORT_BYTES_PER_POINT = 124
#: Bytes per point of the guidance grid (vlm3d_ttg.surface): query points, logits, their coarse-to-fine
#: band masks and the marching-cubes copies; the differentiable vertex re-query is chunked (bounded).
GRID_BYTES_PER_POINT = 40
#: Bytes per rendered pixel and view on the CPU renderer: z-buffer, face ids, barycentrics, shaded
#: RGBA, normals and their gradients in float32 (render/raster_cpu.py, antialias.py).
RENDER_BYTES_PER_PIXEL = 160
# The real models' sizes (sizes.py: the backbone's and the critic family's `sizes`) and per-token activation sizes.
_SHAPE, _CRITIC = HUNYUAN3D_2, QWEN2_5_VL_7B
_VISION_BYTES_PER_PIXEL_LAYER = _CRITIC.vision_hidden * 12  # vision tower: saved activations per pixel/196 per layer (approx.)


@dataclass(frozen=True)
class RunEstimate:
    """A run's estimated peak memory (bytes) on the host and on the device, by part, and its size of work."""

    device: str
    host_bytes: int
    device_bytes: int
    host_parts: dict[str, int] = field(default_factory=dict)
    device_parts: dict[str, int] = field(default_factory=dict)
    work: dict[str, int] = field(default_factory=dict)
    price: str = ""  # the run's counted price at the real sizes (and the speed presets'), lines of `price_lines`

    def describe(self) -> str:
        """One line per part, largest first, in GiB (then the counted price, when the preflight priced the run)."""
        lines = [f"host peak ≈ {self.host_bytes / GIB:.2f} GiB"]
        lines += [f"  {name}: {value / GIB:.2f} GiB" for name, value in sorted(self.host_parts.items(), key=lambda kv: -kv[1])]
        if self.device != "cpu":
            lines.append(f"{self.device} peak ≈ {self.device_bytes / GIB:.2f} GiB")
            lines += [f"  {name}: {value / GIB:.2f} GiB"
                      for name, value in sorted(self.device_parts.items(), key=lambda kv: -kv[1])]
        if self.price:
            lines.append(self.price)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """A JSON-ready copy (for manifests and the app)."""
        return {"device": self.device, "host_bytes": self.host_bytes, "device_bytes": self.device_bytes,
                "host_parts": dict(self.host_parts), "device_parts": dict(self.device_parts), "work": dict(self.work)}


#: Which option to lower for each part of the estimate (named in the refusal).
LOWER: dict[str, str] = {
    "export grid": "--octree-resolution",
    "guidance grid": "--grid",
    "renders": "--views / --view-size",
    "critic activations": "--views / --view-size (or --checkpointing)",
    "candidates": "--candidates / --candidate-batch",
    "model weights": "a smaller --shape-model / --vlm, or --offload-idle",
    "runtime": "nothing (the libraries themselves)",
}


def _weights(record: Preset, realsize_depth: int, shape_bytes: int, critic_bytes: int) -> dict[str, int]:
    """Bytes of model weights by model for preset `record`: its small models' measured sizes, else the
    published sizes (at --realsize-depth blocks of each kind for a depth-scaled preset)."""
    if record.small_models is not None:
        return {"shape model": record.small_models.shape_bytes, "critic": record.small_models.critic_bytes}
    depths = {**_SHAPE.depths, "critic": _CRITIC.depth}
    scale = {name: 1.0 for name in depths}
    if record.depth_scaled:
        scale = {name: min(1.0, realsize_depth / depth) for name, depth in depths.items()}
    shape = ((_SHAPE.dit_params * scale["dit"] + _SHAPE.conditioner_params * scale["dino"]) * shape_bytes
             + _SHAPE.vae_params * scale["vae"] * (shape_bytes + 4))
    body = max(_CRITIC.params - _CRITIC.embeddings, 0) * scale["critic"]
    critic = (body + _CRITIC.embeddings) * critic_bytes
    return {"shape model": int(shape), "critic": int(critic)}


def _critic_activations(record: Preset, pixels: int, realsize_depth: int, checkpointing: bool,
                        critic_bytes: int) -> tuple[int, int]:
    """The critic's saved activations of a guided step: (bytes per token, bytes of the vision tower for
    `pixels` rendered pixels), from the preset's small models or the real critic's sizes (depth-scaled)."""
    small = record.small_models
    if small is not None:
        return small.critic_token_bytes, pixels * small.vision_pixel_bytes
    layers = max(1, realsize_depth) if record.depth_scaled else _CRITIC.llm_layers
    hidden = _CRITIC.llm_hidden
    per_layer = hidden if checkpointing else 6 * hidden + 2 * _CRITIC.llm_kv + 3 * _CRITIC.llm_mlp
    vision_layers = max(1, realsize_depth) if record.depth_scaled else _CRITIC.vision_layers
    vision = int(pixels / 196 * (1 if checkpointing else vision_layers) * _VISION_BYTES_PER_PIXEL_LAYER * critic_bytes)
    return layers * per_layer * critic_bytes, vision


def estimate_run(
    *,
    preset: str | Preset = "real",
    device: str = "cpu",
    steps: int = 50,
    octree_resolution: int = 384,
    grid_resolution: int = 64,
    num_views: int = 4,
    view_size: int = 448,
    view_layout: str = "separate",
    reference: bool = False,
    inner_steps: int = 1,
    guided: bool = True,
    candidates: int = 1,
    candidate_batch: int = 0,
    prompt_chars: int = 0,
    checkpointing: bool = False,
    offload_idle: bool = False,
    realsize_depth: int = 1,
    shape_dtype_bytes: int | None = None,
    critic_dtype_bytes: int | None = None,
) -> RunEstimate:
    """The estimated peak memory of one run, from the sizes that scale it (a pure function).

    Host and device peaks are the resident parts (runtime, weights) plus the largest phase: a guided
    step (guidance grid, renders, critic activations) or the export (the dense grid). On the CPU
    the device is the host. The numbers are a model (see the module docstring), checked against
    measured peaks in benchmarks/RESULTS.md.
    """
    record = get_preset(preset)
    on_cuda = device.startswith("cuda")
    shape_bytes = shape_dtype_bytes or (2 if on_cuda else 4)
    critic_bytes = critic_dtype_bytes or (2 if on_cuda else 4)
    weights = _weights(record, realsize_depth, shape_bytes, critic_bytes)
    export = (octree_resolution + 1) ** 3 * EXPORT_BYTES_PER_POINT
    views = 1 if view_layout == "grid" else num_views
    pixels = num_views * view_size**2 if view_layout == "separate" else view_size**2
    image_tokens = views * (view_size // 28) ** 2 + (((view_size // 28) ** 2) if reference else 0)
    text_tokens = PROMPT_TEXT_TOKENS + prompt_chars  # at most one token per character
    tokens = image_tokens + text_tokens
    guidance: dict[str, int] = {}
    if guided:
        guidance["guidance grid"] = (grid_resolution + 1) ** 3 * GRID_BYTES_PER_POINT
        guidance["renders"] = pixels * RENDER_BYTES_PER_PIXEL
        per_token, vision = _critic_activations(record, pixels, realsize_depth, checkpointing, critic_bytes)
        guidance["critic activations"] = tokens * per_token + vision
    batch = candidate_batch or candidates
    per_candidate = record.small_models.candidate_bytes if record.small_models is not None else 400 * MIB
    searching = {"candidates": candidates * 64 * 4096 * 4 + (batch - 1) * per_candidate} if candidates > 1 else {}
    phase_guided = sum(guidance.values()) + sum(searching.values())
    largest = max(("guided step", phase_guided), ("export", export), key=lambda kv: kv[1])[0]
    phase_parts = {**guidance, **searching} if largest == "guided step" else {"export grid": export}
    resident_weights = sum(weights.values())
    if on_cuda:
        device_weights = max(weights.values()) if offload_idle else resident_weights
        device_parts = {"model weights": int(device_weights), **phase_parts}
        # On the host: the runtime, a model's weights while it loads (and the idle one, offloaded),
        # and marching cubes' copy of the export grid.
        host_parts = {"runtime": RUNTIME_BYTES, "model weights": int(max(weights.values()) if not offload_idle else resident_weights),
                      "export grid": (octree_resolution + 1) ** 3 * 12}
    else:
        device_parts = {}
        host_parts = {"runtime": RUNTIME_BYTES, "model weights": int(resident_weights), **phase_parts}
    work = {"steps": steps, "dit_rows": steps * candidates, "critic_image_tokens": image_tokens,
            "critic_text_tokens": text_tokens, "export_points": (octree_resolution + 1) ** 3,
            "guidance_grid_points": (grid_resolution + 1) ** 3 if guided else 0, "inner_steps": inner_steps}
    return RunEstimate(device="cpu" if not on_cuda else device, host_bytes=int(sum(host_parts.values())),
                       device_bytes=int(sum(device_parts.values())), host_parts=host_parts, device_parts=device_parts,
                       work=work)


# ---------------------------------------------------------------------------------------------
# Limits and the check.


class ResourceLimitError(InvalidInputError):
    """The run cannot fit the machine: the message gives the estimate, the limit and what to lower."""

    def __init__(self, message: str, estimate: RunEstimate, limit: int, where: str):
        self.estimate = estimate
        self.limit = limit
        self.where = where
        super().__init__(message)


def host_memory_available() -> int | None:
    """Memory the host can still give this process, in bytes (MemAvailable; psutil where installed)."""
    try:
        import psutil  # type: ignore[import-not-found]

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def device_memory_available(device: str) -> int | None:
    """Free memory of a CUDA device in bytes (None on the CPU or where it cannot be asked)."""
    if not device.startswith("cuda"):
        return None
    try:
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    except Exception:  # no CUDA here, or the driver refused: no device limit to check against
        return None


def check_run_fits(estimate: RunEstimate, *, host_limit: int | None = None, device_limit: int | None = None) -> RunEstimate:
    """Raise ResourceLimitError when the estimate exceeds the host's or the device's memory (limits
    default to what is available now); return the estimate otherwise."""
    host_limit = host_limit if host_limit is not None else host_memory_available()
    device_limit = device_limit if device_limit is not None else device_memory_available(estimate.device)
    for where, need, limit, parts in (("host", estimate.host_bytes, host_limit, estimate.host_parts),
                                      (estimate.device, estimate.device_bytes, device_limit, estimate.device_parts)):
        if limit is None or not parts or need <= limit:
            continue
        name, size = max(parts.items(), key=lambda kv: kv[1])
        raise ResourceLimitError(
            f"This run needs about {need / GIB:.1f} GiB of {'host' if where == 'host' else where} memory, more than "
            f"the {limit / GIB:.1f} GiB available: its largest part is the {name} ({size / GIB:.1f} GiB). Lower "
            f"{LOWER.get(name, name)}.\nEstimate:\n{estimate.describe()}",
            estimate, limit, where)
    return estimate


# ---------------------------------------------------------------------------------------------
# The price: guided ÷ unguided TFLOP at the real sizes (vlm3d_ttg.cost), for the run and the speed presets.


def speed_presets() -> dict[str, dict[str, Any]]:
    """The speed presets (`vlm3d_ttg.speed.SPEEDS`: name → GuidanceConfig field values), or none where this
    version has no speed module."""
    try:
        from .speed import SPEEDS  # type: ignore[import-not-found]
    except ImportError:
        return {}
    return dict(SPEEDS)


def price_run(run_options: Any, guidance: Any, search: Any = None) -> Price:
    """The counted price of a run (the option dataclasses the CLI builds) at the real sizes: its planned
    work (a `stop_r` counts every scheduled guided step: an upper bound), its critic from `--vlm`."""
    return price(guidance, run_options.steps, search, critic_model=getattr(run_options, "vlm", None),
                 checkpointing=bool(getattr(run_options, "checkpointing", False)),
                 offload_idle=bool(getattr(run_options, "offload_idle", False)))


def price_speeds(run_options: Any, guidance: Any, search: Any = None,
                 speeds: dict[str, dict[str, Any]] | None = None) -> dict[str, Price]:
    """Each speed preset's counted price: the guidance defaults with the preset's GuidanceConfig values
    (`speeds`: name → values; default `speed_presets()`), at the run's steps, critic and search; a value no
    GuidanceConfig field takes is skipped."""
    names = {f.name for f in dataclasses.fields(guidance)}
    presets = speed_presets() if speeds is None else speeds
    return {name: price_run(run_options, type(guidance)(**{k: v for k, v in values.items() if k in names}), search)
            for name, values in presets.items()}


def price_lines(run_options: Any, guidance: Any, search: Any = None,
                speeds: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """The preflight's price lines: 'counted at the real sizes: guided/unguided ×N.NN (X TFLOP vs Y)' for the
    run, then one per speed preset (`speeds`, default `speed_presets()`)."""
    lines = [price_run(run_options, guidance, search).summary()]
    for name, result in price_speeds(run_options, guidance, search, speeds).items():
        lines.append(f"  speed {name}: guided/unguided ×{result.ratio:.2f} ({result.guided_tflop:.0f} TFLOP vs "
                     f"{result.unguided_tflop:.0f})")
    return lines


def check_generation(run_options: Any, guidance: Any, search: Any = None, *, prompt: str = "", preset: str = "real",
                     host_limit: int | None = None, device_limit: int | None = None) -> RunEstimate:
    """The one preflight of a generation run (CLI, benchmark per row, app): the sane bounds (through
    each dataclass's `validate`), then the estimated peak memory against the machine. Takes the option
    dataclasses the CLI builds (`GenerationOptions`, `GuidanceConfig`, `SearchOptions`); returns the
    estimate (with the run's counted price at the real sizes, `price_lines`, also logged) or raises
    InvalidInputError / ResourceLimitError before anything loads."""
    run_options.validate()
    guidance.validate()
    if search is not None:
        search.validate()
    device = run_options.device
    if device == "auto":
        try:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            device = "cpu"
    # Options as requests.validate_settings resolves them; a caller's None: the preset's grid, else estimate_run's.
    octree = run_options.octree_resolution or get_preset(preset).defaults.get("octree_resolution")
    estimate = estimate_run(
        preset=preset, device=device, steps=run_options.steps, **({"octree_resolution": octree} if octree else {}),
        grid_resolution=guidance.grid_resolution, num_views=guidance.num_views, view_size=guidance.view_size,
        view_layout=guidance.view_layout, reference=guidance.reference, inner_steps=guidance.inner_steps,
        guided=bool(guidance.enabled and guidance.scale > 0) or bool(search is not None and search.searching),
        candidates=search.candidates if search is not None else 1,
        candidate_batch=search.candidate_batch if search is not None else 0,
        prompt_chars=len(prompt), checkpointing=run_options.checkpointing, offload_idle=run_options.offload_idle,
        realsize_depth=run_options.realsize_depth,
    )
    priced = price_lines(run_options, guidance, search)
    for line in priced:
        logger.info("preflight: %s", line)
    estimate = dataclasses.replace(estimate, price="\n".join(priced))
    return check_run_fits(estimate, host_limit=host_limit, device_limit=device_limit)
