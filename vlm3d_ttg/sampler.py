"""GuidedSampler: Hunyuan3D-2's flow-matching loop with VLM test-time guidance inserted.

hy3dgen's pipeline `__call__` runs under `torch.inference_mode()`, so nothing inside it can be
differentiated. This sampler runs the same loop itself, reusing the pipeline's own parts
(image processor, conditioner, scheduler, DiT, CFG rule, VAE and export), and inserts one thing:
at guided steps, the gradient of the critic's log-odds w.r.t. the predicted clean latent moves
the latent after the Euler step. With guidance off it reproduces the pipeline's latents.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import EmptySurfaceError, InvalidInputError, SkippedStepError, UnsupportedModelError
from .guidance import GuidanceConfig, StepRecord, guidance_displacement, guided_steps, schedule_weight
from .offload import IdleOffload
from .precision import LossScale, is_half

logger = logging.getLogger(__name__)


@dataclass
class RewardEvaluation:
    """One critic evaluation of a latent: r is differentiable w.r.t. the latent it was given."""

    r: torch.Tensor
    p_yes: float
    faces: int
    images: torch.Tensor | None = None  # (N, 3, H, W) what the critic saw, detached
    timings: dict[str, float] = field(default_factory=dict)


class LatentReward(Protocol):
    """What the sampler needs from a critic: score a latent (differentiably) and a final mesh."""

    def __call__(self, latent: torch.Tensor, *, generator: torch.Generator | None = None) -> RewardEvaluation: ...

    def score_mesh(self, vertices: np.ndarray, faces: np.ndarray) -> RewardEvaluation: ...


@dataclass
class SamplerOutput:
    """The result of a run: final latents, the exported mesh, and the per-step record."""

    latents: torch.Tensor
    mesh: Any | None  # trimesh.Trimesh, or None for output_type="latent"
    records: list[StepRecord]
    final: RewardEvaluation | None
    views: dict[int, torch.Tensor]  # step -> images the critic saw at that step (uint8, N,3,H,W)
    seconds: float
    seed: int | None
    camera_seed: int | None = None
    offload_seconds: float = 0.0  # host<->device copies of --offload-idle, all steps together
    loss_scale_overflows: int = 0  # half-precision backwards redone at a smaller loss scale


@dataclass
class SamplingContext:
    """Everything a run fixes before its first step: conditioning, CFG mode and the σ schedule."""

    cond: Any
    do_cfg: bool
    guidance_scale: float
    guidance_embedding: torch.Tensor | None
    timesteps: torch.Tensor
    sigmas: list[float]  # σ of each step, plus the scheduler's appended final σ = 1
    batch_size: int


StepCallback = Callable[["GuidedSampler", int, float, dict[str, Any]], dict[str, Any] | None]


def predicted_clean_latent(latents: torch.Tensor, velocity: torch.Tensor, sigma: float) -> torch.Tensor:
    """x̂ = x + (1 − σ)·v: where the straight flow from x ends at σ = 1 (data)."""
    return latents + (1.0 - sigma) * velocity


def classifier_free_guidance(velocity_batch: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """v = v_uncond + w·(v_cond − v_uncond) for a batch ordered [cond, uncond] (hy3dgen's order)."""
    cond, uncond = velocity_batch.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def _scheduler_sigmas(scheduler: Any) -> torch.Tensor:
    # The consistency scheduler (-turbo) keeps its per-run sigmas in `sigmas_`.
    return getattr(scheduler, "sigmas_", scheduler.sigmas)


class GuidedSampler:
    """Drop-in guided sampler around a loaded hy3dgen `Hunyuan3DDiTFlowMatchingPipeline`.

    `reward` scores a latent (see `vlm3d_ttg.reward.VLMReward`); without it, or with
    `config.enabled=False`, the sampler is the pipeline's own loop. `offload_idle` keeps the
    model that is not running on the CPU (only meaningful on a GPU).
    """

    def __init__(
        self,
        pipeline: Any,
        reward: LatentReward | None = None,
        config: GuidanceConfig | None = None,
        *,
        offload_idle: bool = False,
    ):
        from hy3dgen.shapegen.pipelines import Hunyuan3DDiTFlowMatchingPipeline

        if not isinstance(pipeline, Hunyuan3DDiTFlowMatchingPipeline):
            raise UnsupportedModelError(
                f"GuidedSampler drives hy3dgen's Hunyuan3DDiTFlowMatchingPipeline, got {type(pipeline).__name__}."
            )
        self.pipeline = pipeline
        self.reward = reward
        # Keep whichever model is idle in CPU memory: the DiT and conditioner while the critic
        # runs, the critic while the DiT runs. Saves GPU memory at the price of host<->device
        # copies at every guided step (the 7B critic is ~15.5 GiB in bf16).
        self.offload_idle = offload_idle
        self.config = (config or GuidanceConfig()).validate()
        if self.config.enabled and self.config.scale > 0 and reward is None:
            raise InvalidInputError("Guidance is enabled but no reward (critic) was given; pass one or disable guidance.")
        if offload_idle and self.config.enabled and self.config.grad_mode == "xt":
            raise InvalidInputError(
                "offload_idle cannot be combined with grad_mode='xt': the DiT's autograd graph keeps its weights "
                "on the GPU until the critic's backward, so offloading would free nothing. Use grad_mode='x0' "
                "(the default) or drop offload_idle."
            )
        critic_models = reward.offload_modules() if reward is not None and hasattr(reward, "offload_modules") else []
        self.offload = IdleOffload(
            {"condition": [pipeline.conditioner], "denoise": [pipeline.model], "critic": critic_models},
            pipeline.device,
            enabled=offload_idle and pipeline.device.type != "cpu",
        )

    # ----------------------------------------------------------------- setup and model call
    def prepare(self, image: Any, *, num_inference_steps: int = 50, guidance_scale: float = 5.0) -> SamplingContext:
        """Encode the conditioning image and set the scheduler's timesteps, as hy3dgen's pipeline does."""
        from hy3dgen.shapegen.pipelines import retrieve_timesteps

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
        timesteps, _ = retrieve_timesteps(
            pipe.scheduler, num_inference_steps, pipe.device, sigmas=np.linspace(0, 1, num_inference_steps)
        )
        guidance_embedding = (
            torch.tensor([guidance_scale] * batch_size, device=pipe.device, dtype=pipe.dtype) if distilled else None
        )
        sigmas = [float(s) for s in _scheduler_sigmas(pipe.scheduler)]
        return SamplingContext(cond, do_cfg, guidance_scale, guidance_embedding, timesteps, sigmas, batch_size)

    def velocity(self, latents: torch.Tensor, step: int, context: SamplingContext) -> torch.Tensor:
        """The DiT's (CFG-combined) velocity at `latents` for step `step`, exactly as hy3dgen computes it."""
        pipe = self.pipeline
        t = context.timesteps[step]
        model_input = torch.cat([latents] * 2) if context.do_cfg else latents
        timestep = t.expand(model_input.shape[0]).to(latents.dtype) / pipe.scheduler.config.num_train_timesteps
        velocity = pipe.model(model_input, timestep, context.cond, guidance=context.guidance_embedding)
        return classifier_free_guidance(velocity, context.guidance_scale) if context.do_cfg else velocity

    # ----------------------------------------------------------------- the loop
    def __call__(
        self,
        image: Any,
        *,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
        camera_seed: int | None = None,
        output_type: str = "trimesh",
        octree_resolution: int = 384,
        num_chunks: int = 8000,
        mc_level: float = 0.0,
        box_v: float = 1.01,
        keep_views: str | list[int] = "summary",
        callback_on_step_end: StepCallback | None = None,
        progress: bool = True,
    ) -> SamplerOutput:
        """Run the (guided) flow loop for one conditioning image; return latents, mesh and records.

        `keep_views`: which guided steps' renders to return ("summary" = first, middle and last
        guided step, "all", "none", or a list of step indices). `callback_on_step_end(sampler,
        step, sigma, state)` is called after every step with state {"latents", "record",
        "displacement" (the guidance added at this step, float32, or None)}; it may
        return {"latents": tensor} to replace the latents. Camera jitter draws from its own
        stream, seeded by `camera_seed` or else derived from the run's generator (its state
        before the noise is drawn), so same seed → same cameras and different generators →
        different cameras; the seed used is in `SamplerOutput.camera_seed`.
        """
        if num_inference_steps < 2:
            raise InvalidInputError(f"num_inference_steps must be ≥ 2, got {num_inference_steps}")
        if output_type not in ("trimesh", "latent"):
            raise InvalidInputError(f"output_type must be 'trimesh' or 'latent', got {output_type!r}")
        started = time.perf_counter()
        pipe = self.pipeline
        cfg = self.config
        device, dtype = pipe.device, pipe.dtype
        if generator is None and seed is not None:
            generator = torch.Generator(device="cpu").manual_seed(seed)
        if camera_seed is None:
            camera_seed = derive_camera_seed(generator)
        # Camera jitter draws from its own stream so guidance never shifts the sampler's noise.
        camera_generator = torch.Generator(device="cpu").manual_seed(camera_seed)
        loss_scale = LossScale.for_half_backward(self._half_backward())

        offload = self.offload
        try:
            offload.activate("condition")
            context = self.prepare(image, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
            offload.activate("denoise")
            if context.batch_size != 1 and cfg.enabled:
                raise InvalidInputError("Guided sampling takes one conditioning image (or one multi-view dict) per call.")
            latents = pipe.prepare_latents(context.batch_size, dtype, device, generator)
            timesteps, sigmas = context.timesteps, context.sigmas
            guided = set(guided_steps(sigmas, cfg)) if self.reward is not None else set()
            keep = self._steps_to_keep(keep_views, sorted(guided))

            records: list[StepRecord] = []
            views: dict[int, torch.Tensor] = {}
            bar = tqdm(total=len(timesteps), desc="guided sampling" if guided else "sampling", disable=not progress, leave=False)
            for i, t in enumerate(timesteps):
                sigma = sigmas[i]
                record = StepRecord(step=i, sigma=sigma, guided=i in guided)
                exact_gradient = record.guided and cfg.grad_mode == "xt"
                record.timings["offload"] = offload.activate("denoise")
                tic = time.perf_counter()
                with torch.set_grad_enabled(exact_gradient):
                    # xt: a float32 leaf, so the (loss-scaled) gradient reaches it in float32.
                    latents_in = latents.detach().float().requires_grad_(True) if exact_gradient else latents
                    velocity = self.velocity(latents_in.to(dtype), i, context)
                record.timings["dit"] = time.perf_counter() - tic

                # The sampler's own step (hy3dgen's scheduler: x + (σ_next − σ)·v).
                next_latents = pipe.scheduler.step(velocity.detach(), t, latents).prev_sample

                displacement = None
                if record.guided:
                    # --- guidance: the one insertion into the loop --------------------------------
                    record.timings["offload"] += offload.activate("critic")
                    displacement = self._guidance_displacement(
                        record, latents_in, velocity, next_latents - latents, sigma, camera_generator, keep, views,
                        loss_scale,
                    )
                    if displacement is not None:
                        next_latents = next_latents + displacement.to(next_latents.dtype)
                latents = next_latents.detach()
                records.append(record)

                if callback_on_step_end is not None:
                    replaced = callback_on_step_end(
                        self, i, sigma, {"latents": latents, "record": record, "displacement": displacement}
                    )
                    if replaced and "latents" in replaced:
                        latents = replaced["latents"]
                postfix = {"σ": f"{sigma:.2f}"}
                if record.r is not None:
                    postfix["r"] = f"{record.r:+.3f}"
                if record.skipped:
                    postfix["skip"] = record.skipped
                bar.set_postfix(postfix, refresh=False)
                bar.update(1)
            bar.close()

            mesh, final = None, None
            if output_type == "trimesh":
                offload.activate("denoise")  # the export decodes with the pipeline's VAE, next to the DiT
                with torch.no_grad():
                    meshes = pipe._export(
                        latents, "trimesh", box_v, mc_level, num_chunks, octree_resolution, None, enable_pbar=False
                    )
                mesh = meshes[0]
                if mesh is None or len(mesh.faces) == 0:
                    logger.warning("The final latent decodes to no surface (empty mesh).")
                    mesh = None
                elif self.reward is not None:
                    offload.activate("critic")
                    final = self.reward.score_mesh(np.asarray(mesh.vertices), np.asarray(mesh.faces))
        finally:
            # Every model back where it was, also when a step raised or the user pressed Ctrl-C.
            offload.restore()
        return SamplerOutput(
            latents=latents,
            mesh=mesh,
            records=records,
            final=final,
            views=views,
            seconds=time.perf_counter() - started,
            seed=seed,
            camera_seed=camera_seed,
            offload_seconds=offload.seconds,
            loss_scale_overflows=loss_scale.overflows,
        )

    # ----------------------------------------------------------------- memory and precision
    def _half_backward(self) -> bool:
        """Whether any backward of this run's guidance passes through float16 (then it is loss-scaled)."""
        if self.reward is None or not self.config.enabled:
            return False
        dit_half = self.config.grad_mode == "xt" and is_half(self.pipeline.dtype)
        return dit_half or bool(getattr(self.reward, "half_backward", False))

    # ----------------------------------------------------------------- guidance
    def _guidance_displacement(
        self,
        record: StepRecord,
        latents_in: torch.Tensor,
        velocity: torch.Tensor,
        sampler_step: torch.Tensor,
        sigma: float,
        camera_generator: torch.Generator,
        keep: set[int],
        views: dict[int, torch.Tensor],
        loss_scale: LossScale,
    ) -> torch.Tensor | None:
        """Evaluate the critic at x̂ and turn ∇r into a displacement; record or skip the step."""
        cfg = self.config
        assert self.reward is not None
        scale = cfg.scale * schedule_weight(sigma, cfg)
        record.sampler_step_norm = float(torch.linalg.vector_norm(sampler_step, dtype=torch.float64))
        if cfg.grad_mode == "xt":
            # Exact: r(x̂(x)) differentiated through the DiT's velocity to x.
            target = latents_in
            clean = predicted_clean_latent(latents_in, velocity.float(), sigma)
        else:
            # Straight-through: g = ∇_x̂ r applied to x (∂x̂/∂x ≈ I); no DiT backward.
            clean = predicted_clean_latent(latents_in.detach().float(), velocity.detach().float(), sigma).requires_grad_(True)
            target = clean
        total = torch.zeros_like(latents_in, dtype=torch.float32)
        for inner in range(cfg.inner_steps):
            try:
                evaluation = self.reward(clean + total if inner else clean, generator=camera_generator)
                tic = time.perf_counter()
                gradient = loss_scale.gradient(evaluation.r, target)
                evaluation.timings["backward"] = time.perf_counter() - tic
                if not bool(torch.isfinite(gradient).all()):
                    raise SkippedStepError("non_finite_gradient", "the reward gradient is not finite")
            except EmptySurfaceError as exc:
                record.skipped = "empty_surface"
                logger.info("step %d (σ=%.3f): skipped, %s", record.step, sigma, exc)
                break
            except SkippedStepError as exc:
                record.skipped = exc.reason
                logger.warning("step %d (σ=%.3f): skipped (%s): %s", record.step, sigma, exc.reason, exc)
                break
            r_value = float(evaluation.r.detach())
            grad_norm = float(torch.linalg.vector_norm(gradient, dtype=torch.float64))
            if grad_norm == 0.0:
                # Nothing the critic saw depends on the latent (or it underflowed): say so, never
                # pass it off as a guided step.
                record.skipped = "zero_gradient"
                logger.warning("step %d (σ=%.3f): skipped, the reward gradient is exactly zero", record.step, sigma)
            step, capped = guidance_displacement(
                gradient,
                predicted_clean_latent=clean.detach(),
                sampler_step=sampler_step,
                scale=scale,
                step_norm=cfg.step_norm,
                max_step_ratio=cfg.max_step_ratio,
            )
            total = total + step.float()
            info = {"r": r_value, "p_yes": evaluation.p_yes, "grad_norm": grad_norm, "faces": evaluation.faces,
                    "capped": capped, "timings": evaluation.timings}
            if inner == 0:
                record.r, record.p_yes, record.grad_norm, record.faces = r_value, evaluation.p_yes, grad_norm, evaluation.faces
                record.capped = capped
                record.loss_scale = loss_scale.value if loss_scale.enabled else None
                for key, value in evaluation.timings.items():
                    record.timings[key] = value
                if record.step in keep and evaluation.images is not None:
                    views[record.step] = (evaluation.images.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
            else:
                record.inner.append(info)
            if grad_norm == 0.0:
                break
        if record.skipped and not total.any():
            return None
        record.applied_norm = float(torch.linalg.vector_norm(total, dtype=torch.float64))
        return total.detach()

    @staticmethod
    def _steps_to_keep(keep_views: str | list[int], guided: list[int]) -> set[int]:
        if isinstance(keep_views, (list, tuple, set)):
            return {int(s) for s in keep_views}
        if keep_views == "all":
            return set(guided)
        if keep_views == "none" or not guided:
            return set()
        if keep_views == "summary":
            return {guided[0], guided[len(guided) // 2], guided[-1]}
        raise InvalidInputError(f"keep_views must be 'summary', 'all', 'none' or a list of steps, got {keep_views!r}")


def derive_camera_seed(generator: torch.Generator | None) -> int:
    """A 63-bit seed for the camera-jitter stream, derived from a generator's current state.

    Hashing the state (rather than drawing from the generator) leaves the noise stream untouched,
    so guided and unguided runs on one seed start from the same noise. Without a generator the
    seed is fresh randomness (recorded in the output, so the run can still be repeated).
    """
    if generator is None:
        return secrets.randbits(63)
    state = generator.get_state().cpu().numpy().tobytes()
    digest = hashlib.sha256(b"vlm3d-ttg camera jitter\0" + state).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)
