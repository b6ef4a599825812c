"""Hunyuan3D-2 (hy3dgen 2.0.2) as a backbone: every variant of `hunyuan3d2_models.SHAPE_VARIANTS`.

hy3dgen's pipeline `__call__` runs under `torch.inference_mode()`, so nothing inside it can be
differentiated; the guided loop runs the same loop itself, and this file hands it the pipeline's
own parts: image processor and conditioner (`prepare`), `retrieve_timesteps` (the σ schedule),
the DiT with hy3dgen's CFG rule (`velocity`), the scheduler's Euler step (`step`),
`prepare_latents` (`noise`), the ShapeVAE (`occupancy_field`) and the export (`to_mesh`). With
guidance off the loop reproduces the pipeline's latents bit for bit (tests/test_sampler.py).

hy3dgen's conventions (docs/design.md §2): σ = linspace(0, 1, T) from noise to data, the DiT gets
t = σ (the scheduler's timestep / 1000), the scheduler appends σ = 1; CFG batch [cond, uncond],
`v = v_uncond + w (v_cond − v_uncond)`; latents (1, 3072, 64) at the real size; decode
`vae(x̂ / scale_factor)` then `geo_decoder(points, tokens)` → occupancy logits, level 0, cube
±1.01. Variants: '-fast' folds CFG into a guidance embedding (one row per latent), '-turbo' uses
the consistency scheduler (its σ in `sigmas_`), '-mv' conditions on a dict of views.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidInputError, UnsupportedModelError
from ..precision import decode_dtype, upcast_copy
from ..sizes import HUNYUAN3D_2
from ..surface import OccupancyField, Surface, SurfaceConfig, extract_surface
from .base import EXPORT_DECODERS, SINGLE_VIEW, VIEW_NAMES, Conditioning, SamplingContext

logger = logging.getLogger(__name__)

#: hy3dgen's decode cube and iso-level (its `box_v` and `mc_level` defaults).
BOUNDS = 1.01
LEVEL = 0.0


@dataclass
class HunyuanCondition:
    """hy3dgen's encoded condition and what its DiT call needs besides the latents."""

    cond: Any  # the conditioner's output, [cond…, uncond…] along dim 0 under CFG
    do_cfg: bool
    guidance_scale: float
    guidance_embedding: torch.Tensor | None  # '-fast' variants: CFG as an embedding
    timesteps: torch.Tensor


def classifier_free_guidance(velocity_batch: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """v = v_uncond + w·(v_cond − v_uncond) for a batch ordered [cond, uncond] (hy3dgen's order)."""
    cond, uncond = velocity_batch.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def expand_condition(cond: Any, rows: int, do_cfg: bool) -> Any:
    """The conditioning of one image repeated for `rows` latents, kept in hy3dgen's [cond…, uncond…]
    order when classifier-free guidance doubles the batch."""
    if isinstance(cond, torch.Tensor):
        if do_cfg:
            positive, negative = cond.chunk(2)
            return torch.cat([positive.repeat_interleave(rows, 0), negative.repeat_interleave(rows, 0)])
        return cond.repeat_interleave(rows, 0)
    if isinstance(cond, dict):
        return {key: expand_condition(value, rows, do_cfg) for key, value in cond.items()}
    return cond


def _scheduler_sigmas(scheduler: Any) -> torch.Tensor:
    # The consistency scheduler (-turbo) keeps its per-run sigmas in `sigmas_`.
    return getattr(scheduler, "sigmas_", scheduler.sigmas)


# --------------------------------------------------------------------------------------------
# The field of a hy3dgen ShapeVAE


def shapevae_tokens(vae: torch.nn.Module, latent: torch.Tensor) -> torch.Tensor:
    """The ShapeVAE transformer output for a diffusion latent (post_kl + transformer), (1, L, W)."""
    return vae(latent / vae.scale_factor)


def shapevae_field(vae: torch.nn.Module):
    """The ShapeVAE geo-decoder as an ImplicitField over transformer tokens (1, L, W)."""
    geo_decoder = vae.geo_decoder

    def field_fn(points: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        # Queries stay in float32/64: the Fourier features are computed before the cast to the
        # tokens' dtype, so fp16 tokens do not round the positions we render.
        return geo_decoder(queries=points.unsqueeze(0), latents=tokens)[0, :, 0]

    return field_fn


@contextlib.contextmanager
def plain_cross_attention(vae: torch.nn.Module) -> Iterator[None]:
    """Use hy3dgen's plain cross-attention and no KV cache inside the block, then restore.

    FlashVDM's processor keeps `topk` state from its own chunking, and a KV cache would serve
    stale tokens; both are wrong for arbitrary query sets and for gradients.
    """
    from hy3dgen.shapegen.models.autoencoders.attention_processors import CrossAttentionProcessor

    attn = vae.geo_decoder.cross_attn_decoder.attn
    saved_processor = attn.attention.attn_processor
    saved_cache = getattr(attn, "kv_cache", False)
    # hy3dgen's own reset assigns the class, not an instance; subclasses (FlashVDM) keep state.
    swap = type(saved_processor) is not CrossAttentionProcessor
    try:
        if swap:
            attn.attention.attn_processor = CrossAttentionProcessor()  # an instance (hy3dgen's setter assigns the class)
        attn.kv_cache = False
        yield
    finally:
        attn.attention.attn_processor = saved_processor
        attn.kv_cache = saved_cache


class _PlainAttentionField:
    """The ShapeVAE field, evaluated with plain cross-attention (also when called from backward)."""

    def __init__(self, vae: torch.nn.Module):
        self.vae = vae
        self.field_fn = shapevae_field(vae)

    def __call__(self, points: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        with plain_cross_attention(self.vae):
            return self.field_fn(points, tokens)


def shapevae_occupancy_field(vae: torch.nn.Module, latent: torch.Tensor) -> OccupancyField:
    """The occupancy field of a Hunyuan3D-2 latent (1, L, C) or (L, C) through `vae` (in its dtype).

    The VAE transformer runs once here, keeping its graph only if `latent` requires grad.
    """
    if latent.dim() == 2:
        latent = latent.unsqueeze(0)
    if latent.dim() != 3 or latent.shape[0] != 1:
        raise InvalidInputError(
            f"The occupancy field is decoded from one latent of shape (1, L, C) or (L, C); got {tuple(latent.shape)}. "
            "Decode once per batch item."
        )
    start = time.perf_counter()
    with torch.set_grad_enabled(latent.requires_grad and torch.is_grad_enabled()):
        tokens = shapevae_tokens(vae, latent)
    return OccupancyField(_PlainAttentionField(vae), tokens, time.perf_counter() - start)


def extract_shapevae_surface(vae: torch.nn.Module, latent: torch.Tensor, config: SurfaceConfig | None = None) -> Surface:
    """Decode a Hunyuan3D-2 latent (1, L, C) or (L, C) with `vae` to a mesh differentiable w.r.t. the latent."""
    return extract_surface(shapevae_occupancy_field(vae, latent), config)


@contextlib.contextmanager
def export_volume_decoder(vae: torch.nn.Module, decoder: str) -> Iterator[None]:
    """Inside the block `vae.latents2mesh` decodes with `decoder` (EXPORT_DECODERS); then the VAE's own
    volume decoder, surface extractor and geo-decoder cross-attention processor are back, also on errors.

    "flashvdm" is hy3dgen's FlashVDM decoding (`enable_flashvdm_decoder`: coarse grid, then only near
    the surface, each chunk attending to its top-k latent tokens, topk_mode "mean"); "hierarchical"
    queries the same points with exact attention (FlashVDM's traversal with hy3dgen's plain processor:
    hy3dgen 2.0.2's own HierarchicalVolumeDecoding places every fine query at the box corner, its grid
    indices cast to integers before scaling). Marching cubes stays hy3dgen's "mc" (no CUDA needed).
    """
    from hy3dgen.shapegen.models.autoencoders.attention_processors import CrossAttentionProcessor

    if decoder not in EXPORT_DECODERS:
        raise InvalidInputError(f"The export decoder must be one of {', '.join(EXPORT_DECODERS)}; got {decoder!r}.")
    if decoder == "dense":
        yield
        return
    attention = vae.geo_decoder.cross_attn_decoder.attn.attention
    saved = vae.volume_decoder, vae.surface_extractor, attention.attn_processor
    try:
        vae.enable_flashvdm_decoder(True, adaptive_kv_selection=True, topk_mode="mean", mc_algo="mc")
        if decoder == "hierarchical":
            # FlashVDM's decoder installs its `processor` on every call and sets its `topk` (ignored here).
            vae.volume_decoder.processor = CrossAttentionProcessor()
        yield
    finally:
        vae.volume_decoder, vae.surface_extractor, attention.attn_processor = saved


def latents_to_mesh(
    pipeline: Any,
    latents: torch.Tensor,
    *,
    box_v: float = BOUNDS,
    mc_level: float = LEVEL,
    num_chunks: int = 8000,
    octree_resolution: int,
    decoder: str = "dense",
) -> Any | None:
    """Decode a final latent (1, L, C) to a mesh exactly as hy3dgen's pipeline does at the end of a run.

    The same operations as the pipeline's (private) `_export`, through its public parts: the
    ShapeVAE, `latents2mesh` (hy3dgen's volume decoder + marching cubes) and `export_to_trimesh`.
    `decoder` picks the volume decoder (EXPORT_DECODERS; "dense": the pipeline's own full grid; see
    `export_volume_decoder`). None when the latent decodes to no surface.
    """
    from hy3dgen.shapegen.pipelines import export_to_trimesh

    vae = pipeline.vae
    # hy3dgen prints its own traceback to stderr when marching cubes finds no surface; keep it
    # for --verbose (debug log) instead of showing a stranger's traceback before our message.
    hy3dgen_said = io.StringIO()
    with torch.no_grad(), contextlib.redirect_stderr(hy3dgen_said):
        tokens = vae(1.0 / vae.scale_factor * latents)
        if decoder == "dense":
            outputs = vae.latents2mesh(
                tokens, bounds=box_v, mc_level=mc_level, num_chunks=num_chunks, octree_resolution=octree_resolution,
                mc_algo=None, enable_pbar=False,
            )
        else:
            outputs = _hierarchical_latents2mesh(vae, tokens, decoder, box_v=box_v, mc_level=mc_level,
                                                 num_chunks=num_chunks, octree_resolution=octree_resolution)
    if hy3dgen_said.getvalue():
        logger.debug("hy3dgen's surface extractor reported:\n%s", hy3dgen_said.getvalue())
    mesh = export_to_trimesh(outputs)[0]
    if mesh is None or len(mesh.faces) == 0:
        logger.warning("The final latent decodes to no surface (empty mesh).")
        return None
    return mesh


def _hierarchical_latents2mesh(vae: torch.nn.Module, tokens: torch.Tensor, decoder: str, *, box_v: float,
                               mc_level: float, num_chunks: int, octree_resolution: int) -> list[Any]:
    """`vae.latents2mesh` with a coarse-to-fine decoder, its mesh placed in the dense export's frame.

    FlashVDM's finest grid has R' = 63·2^k cells (380 for 384: its coarse grid is rounded to blocks of 4)
    while hy3dgen's marching cubes scales vertex indices by the requested R; rescaling by R / R' puts
    the vertices where the dense export of R puts them (so `export_frame_matrix(R)` holds for both).
    """
    kwargs = dict(bounds=box_v, mc_level=mc_level, num_chunks=num_chunks, octree_resolution=octree_resolution,
                  mc_algo=None, enable_pbar=False)
    with export_volume_decoder(vae, decoder):
        grid_logits = vae.volume_decoder(tokens, vae.geo_decoder, **kwargs)
        outputs = vae.surface_extractor(grid_logits, **kwargs)
    decoded_resolution = grid_logits.shape[-1] - 1
    for output in outputs:
        if output is not None and decoded_resolution != octree_resolution:
            output.mesh_v = ((output.mesh_v + box_v) * (octree_resolution / decoded_resolution) - box_v).astype(np.float32)
    return outputs


# --------------------------------------------------------------------------------------------
# The backbone


def condition_foreground(image_processor: Callable[[Any], dict[str, Any]], image: Any, size: int) -> torch.Tensor:
    """The conditioning image's foreground (size, size) in [0, 1] as hy3dgen's preprocessing leaves it.

    `image_processor` is the shape pipeline's (`pipeline.image_processor`: image → {"image", "mask"},
    the mask (1, 1, S, S) in [−1, 1], recentred and rescaled like the image the DiT sees); `image` what
    the pipeline is given. Area-resampled to `size`, so edge pixels keep fractional coverage.
    """
    processed = image_processor(image)
    mask = processed.get("mask") if isinstance(processed, dict) else None
    if not isinstance(mask, torch.Tensor) or mask.ndim != 4 or mask.shape[:2] != (1, 1):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise InvalidInputError(f"The shape model's image processor returned a mask {shape}, not (1, 1, S, S).")
    mask = ((mask.detach().float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0)
    if tuple(mask.shape[-2:]) != (size, size):
        mask = F.interpolate(mask, size=(size, size), mode="area")
    if not bool((mask >= 0.5).any()):
        raise InvalidInputError("The conditioning image has no foreground after hy3dgen's preprocessing.")
    return mask[0, 0]


def export_frame_matrix(octree_resolution: int, bounds: float = 1.01) -> np.ndarray:
    """4 × 4 map from hy3dgen's exported-mesh frame to the decode frame: p = −b + (q + b)·(R + 1)/R.

    hy3dgen's `MCSurfaceExtractor` divides grid indices by R + 1 where its grid spacing is 2b/R.
    """
    ratio = (octree_resolution + 1) / octree_resolution
    matrix = np.eye(4)
    matrix[:3, :3] *= ratio
    matrix[:3, 3] = bounds * (ratio - 1.0)
    return matrix


class HunyuanBackbone:
    """A loaded hy3dgen `Hunyuan3DDiTFlowMatchingPipeline` (any variant) behind `backbones.Backbone`.

    Precision (docs/design.md §7): the guidance decode runs in at least float32 — a float32 copy
    of a half-precision ShapeVAE is made once, at the first decode (`precision.upcast_copy`) —
    while the pipeline keeps its own VAE for the export.
    """

    name = "hunyuan3d-2"
    bounds = BOUNDS
    level = LEVEL
    sizes = HUNYUAN3D_2  # the real model's sizes (cost model, preflight, realsize preset)
    #: hy3dgen's own defaults: 50 steps, guidance_scale 5.0, octree_resolution 384 (its pipeline __call__'s).
    defaults = {"steps": 50, "cfg_scale": 5.0, "octree_resolution": 384}

    def __init__(self, pipeline: Any, *, decode_dtype: torch.dtype | None = None):
        """`decode_dtype` overrides the precision policy of the guidance decode (None: the policy;
        benchmarks/bench_precision.py measures what float16 would do)."""
        from hy3dgen.shapegen.pipelines import Hunyuan3DDiTFlowMatchingPipeline
        from hy3dgen.shapegen.preprocessors import MVImageProcessorV2

        if not isinstance(pipeline, Hunyuan3DDiTFlowMatchingPipeline):
            raise UnsupportedModelError(
                f"HunyuanBackbone wraps hy3dgen's Hunyuan3DDiTFlowMatchingPipeline, got {type(pipeline).__name__}."
            )
        self.pipeline = pipeline
        self.views = VIEW_NAMES if isinstance(pipeline.image_processor, MVImageProcessorV2) else SINGLE_VIEW
        self._decode_vae: torch.nn.Module | None = None
        self._decode_dtype = decode_dtype

    # ----------------------------------------------------------------- what the class knows before loading
    @staticmethod
    def planned_schedule(num_inference_steps: int) -> list[float]:
        """The σ list `schedule(num_inference_steps)` gives, known before any model loads: hy3dgen's
        linspace(0, 1, steps) plus the scheduler's appended σ = 1 (what the guided steps are planned on)."""
        return list(np.linspace(0.0, 1.0, num_inference_steps)) + [1.0]

    @staticmethod
    def load(options: Any, preset: Any, *, device: Any, dtype: Any, cache_dir: Any = None) -> tuple[Any, str]:
        """The shape model of `options` (its --shape-model / --shape-subfolder) for `preset` (a `presets.Preset`),
        loaded by hy3dgen's own from_pretrained: the real one, or the offline preset's checkpoint of that
        variant (written once under `cache_dir`); returns (pipeline, the name the manifest gives it)."""
        from .hunyuan3d2_models import load_shape_pipeline, resolve_shape_model
        from ..presets import offline_checkpoints

        if not preset.offline:
            pipeline = load_shape_pipeline(options.shape_model, options.shape_subfolder, device=device, dtype=dtype)
            spec = pipeline.variant_spec
            return pipeline, f"{spec.repo_id}/{spec.subfolder}"
        # The preset's checkpoint of the variant asked for (e.g. --shape-model hunyuan3d-2mv: the tiny -mv one).
        subfolder = resolve_shape_model(options.shape_model, options.shape_subfolder).subfolder
        ref = offline_checkpoints(preset).shape(cache_dir, subfolder=subfolder, depth=options.realsize_depth)
        pipeline = load_shape_pipeline(ref.repo_id, ref.subfolder, models_dir=ref.models_dir, device=device, dtype=dtype)
        return pipeline, f"{ref.repo_id}/{ref.subfolder}{preset.describe(depth=options.realsize_depth)}"

    @staticmethod
    def check_present(options: Any) -> None:
        """Offline (HF_HUB_OFFLINE=1), raise the loader's own ModelNotFoundError now if the real shape model
        of `options` is not on disk (online it may download; nothing is checked)."""
        from ..env import hub_offline
        from .hunyuan3d2_models import hy3dgen_models_dir, load_shape_pipeline, resolve_shape_model

        if not hub_offline():
            return
        spec = resolve_shape_model(options.shape_model, options.shape_subfolder)
        if not (hy3dgen_models_dir() / spec.repo_id / spec.subfolder / "config.yaml").is_file():
            load_shape_pipeline(options.shape_model, options.shape_subfolder, device="cpu")  # raises, naming the fix

    @staticmethod
    def conditioning(options: Any, preset: Any) -> Conditioning:
        """The inputs of the variant `options` names (--shape-model / --shape-subfolder) under `preset`: a
        dict of views for the -mv variants (a preset with one fixed shape model: one image); a prompt alone
        goes through text-to-image for the single-view ones."""
        from .hunyuan3d2_models import resolve_shape_model

        multiview = preset.shape_variants and resolve_shape_model(options.shape_model, options.shape_subfolder).multiview
        hint = "--shape-model hunyuan3d-2mv (with --preset tiny: its tiny offline copy)"
        return Conditioning(VIEW_NAMES if multiview else SINGLE_VIEW, text_to_image=not multiview, multiview_hint=hint)

    @staticmethod
    def variant_names() -> tuple[str, ...]:
        """hy3dgen's variant names (hunyuan3d2_models.SHAPE_VARIANTS): an offline preset with variants has a copy of each."""
        from .hunyuan3d2_models import SHAPE_VARIANTS

        return tuple(SHAPE_VARIANTS)

    @staticmethod
    def checkpoint_folders(options: Any) -> dict[str, Any]:
        """The real shape model's folder: $HY3DGEN_MODELS/<repo>/<subfolder> of the variant `options` names."""
        from .hunyuan3d2_models import hy3dgen_models_dir, resolve_shape_model

        spec = resolve_shape_model(options.shape_model, options.shape_subfolder)
        return {"the shape model": hy3dgen_models_dir() / spec.repo_id / spec.subfolder}

    @staticmethod
    def wraps(model: Any) -> bool:
        """Whether `model` is a hy3dgen pipeline this backbone drives (for `backbones.as_backbone`)."""
        from hy3dgen.shapegen.pipelines import Hunyuan3DDiTFlowMatchingPipeline

        return isinstance(model, Hunyuan3DDiTFlowMatchingPipeline)

    # ----------------------------------------------------------------- devices and dtypes
    @property
    def device(self) -> torch.device:
        """The pipeline's device."""
        return self.pipeline.device

    @property
    def dtype(self) -> torch.dtype:
        """The pipeline's dtype (the DiT's and the latents')."""
        return self.pipeline.dtype

    @property
    def decode_dtype(self) -> torch.dtype:
        """At least float32 (precision.decode_dtype of the ShapeVAE's dtype), unless overridden."""
        return self._decode_dtype or decode_dtype(next(self.pipeline.vae.parameters()).dtype)

    @property
    def decode_vae(self) -> torch.nn.Module:
        """The ShapeVAE the guidance decode runs: the pipeline's, or its float32 copy when it is half."""
        vae = self.pipeline.vae
        if self.decode_dtype == next(vae.parameters()).dtype:
            return vae
        if self._decode_vae is None:
            self._decode_vae = upcast_copy(vae, self.decode_dtype)
            logger.info("Guidance decodes with a %s copy of the %s ShapeVAE", self.decode_dtype,
                        next(vae.parameters()).dtype)
        return self._decode_vae

    # ----------------------------------------------------------------- sampling
    def _retrieve_timesteps(self, num_inference_steps: int) -> torch.Tensor:
        from hy3dgen.shapegen.pipelines import retrieve_timesteps

        pipe = self.pipeline
        timesteps, _ = retrieve_timesteps(pipe.scheduler, num_inference_steps, pipe.device,
                                          sigmas=np.linspace(0, 1, num_inference_steps))
        return timesteps

    def prepare(self, image: Any, *, num_inference_steps: int, guidance_scale: float) -> SamplingContext:
        """Encode the conditioning image(s) and set the scheduler's timesteps, as hy3dgen's pipeline does."""
        pipe = self.pipeline
        distilled = getattr(pipe.model, "guidance_embed", False) is True
        do_cfg = guidance_scale >= 0 and not distilled
        with torch.no_grad():
            cond_inputs = pipe.prepare_image(image)
            cond_image = cond_inputs.pop("image")
            cond = pipe.encode_cond(
                image=cond_image, additional_cond_inputs=cond_inputs, do_classifier_free_guidance=do_cfg, dual_guidance=False
            )
        batch_size = cond_image.shape[0]
        timesteps = self._retrieve_timesteps(num_inference_steps)
        guidance_embedding = (
            torch.tensor([guidance_scale] * batch_size, device=pipe.device, dtype=pipe.dtype) if distilled else None
        )
        sigmas = [float(s) for s in _scheduler_sigmas(pipe.scheduler)]
        condition = HunyuanCondition(cond, do_cfg, guidance_scale, guidance_embedding, timesteps)
        return SamplingContext(condition, sigmas, batch_size, rows_per_latent=2 if do_cfg else 1)

    def schedule(self, num_inference_steps: int) -> list[float]:
        """σ of each step of a run with `num_inference_steps` (plus the scheduler's appended σ = 1)."""
        self._retrieve_timesteps(num_inference_steps)
        return [float(s) for s in _scheduler_sigmas(self.pipeline.scheduler)]

    def noise(self, rows: int, generator: torch.Generator | None) -> torch.Tensor:
        """hy3dgen's `prepare_latents`: Gaussian noise (rows, L, C) in the pipeline's dtype."""
        pipe = self.pipeline
        return pipe.prepare_latents(rows, pipe.dtype, pipe.device, generator)

    def velocity(self, latents: torch.Tensor, step: int, context: SamplingContext) -> torch.Tensor:
        """The DiT's (CFG-combined) velocity at `latents` for step `step`, exactly as hy3dgen computes it."""
        pipe, condition = self.pipeline, context.condition
        t = condition.timesteps[step]
        model_input = torch.cat([latents] * 2) if condition.do_cfg else latents
        timestep = t.expand(model_input.shape[0]).to(latents.dtype) / pipe.scheduler.config.num_train_timesteps
        velocity = pipe.model(model_input, timestep, condition.cond, guidance=condition.guidance_embedding)
        return classifier_free_guidance(velocity, condition.guidance_scale) if condition.do_cfg else velocity

    def step(self, velocity: torch.Tensor, step: int, latents: torch.Tensor, context: SamplingContext) -> torch.Tensor:
        """hy3dgen's scheduler step (x + (σ_next − σ)·v, in its own arithmetic)."""
        return self.pipeline.scheduler.step(velocity, context.condition.timesteps[step], latents).prev_sample

    def for_rows(self, context: SamplingContext, rows: int) -> SamplingContext:
        """The context of one conditioning image, repeated for a DiT call on `rows` candidates."""
        if rows == 1:
            return context
        condition = context.condition
        embedding = condition.guidance_embedding
        repeated = dataclasses.replace(
            condition,
            cond=expand_condition(condition.cond, rows, condition.do_cfg),
            guidance_embedding=embedding.repeat_interleave(rows, 0) if embedding is not None else None,
        )
        return dataclasses.replace(context, condition=repeated, batch_size=rows)

    # ----------------------------------------------------------------- decoding
    def occupancy_field(self, latent: torch.Tensor) -> OccupancyField:
        """The ShapeVAE field of a clean latent, decoded in `decode_dtype` with plain cross-attention."""
        return shapevae_occupancy_field(self.decode_vae, latent.to(self.decode_dtype))

    def to_mesh(
        self, latent: torch.Tensor, *, octree_resolution: int, num_chunks: int = 8000, bounds: float = BOUNDS,
        level: float = LEVEL, decoder: str = "dense",
    ) -> Any | None:
        """hy3dgen's export of a final latent (its volume decoder, `decoder` of EXPORT_DECODERS, and marching cubes)."""
        return latents_to_mesh(self.pipeline, latent, box_v=bounds, mc_level=level, num_chunks=num_chunks,
                               octree_resolution=octree_resolution, decoder=decoder)

    def offload_groups(self) -> dict[str, list[torch.nn.Module]]:
        """The conditioner while encoding, the DiT while denoising (the VAE stays with the device)."""
        return {"condition": [self.pipeline.conditioner], "denoise": [self.pipeline.model]}

    def input_foreground(self, image: Any, size: int) -> torch.Tensor:
        """The front view's foreground as hy3dgen's image processor leaves it (cropped, recentred, rescaled)."""
        return condition_foreground(self._single_view_processor(), image, size)

    def export_frame(self, octree_resolution: int) -> np.ndarray:
        """hy3dgen's export divides grid indices by R + 1: see `export_frame_matrix`."""
        return export_frame_matrix(octree_resolution, BOUNDS)

    def _single_view_processor(self) -> Callable[[Any], dict[str, Any]]:
        """hy3dgen's image processor for one (front) view, also for a multi-view model."""
        processor = self.pipeline.image_processor
        if self.views == SINGLE_VIEW:
            return processor

        def front_only(single: Any) -> dict[str, Any]:
            processed = processor({"front": single})
            return {key: value[:, 0] for key, value in processed.items() if key in ("image", "mask")}

        return front_only

    def reference_image(self, image: Any, side: int) -> torch.Tensor:
        """The front view as hy3dgen's image processor prepares it (cropped, recentred, on white)."""
        from ..critic.reference import reference_from_condition

        processor = self.pipeline.image_processor
        if self.views != SINGLE_VIEW:
            multiview = processor

            def processor(single: Any) -> dict[str, Any]:  # one view through the multi-view processor
                return {"image": multiview({"front": single})["image"][:, 0]}

        # The side is the critic's view size, checked against the critic's own rule where the critic is built.
        return reference_from_condition(processor, image, side, multiple=1)


__all__ = [
    "BOUNDS",
    "condition_foreground",
    "export_frame_matrix",
    "HunyuanBackbone",
    "HunyuanCondition",
    "LEVEL",
    "classifier_free_guidance",
    "expand_condition",
    "extract_shapevae_surface",
    "export_volume_decoder",
    "latents_to_mesh",
    "plain_cross_attention",
    "shapevae_field",
    "shapevae_occupancy_field",
    "shapevae_tokens",
]
