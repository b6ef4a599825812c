"""GuidedSampler: Hunyuan3D-2's flow-matching loop with VLM test-time guidance inserted.

hy3dgen's pipeline `__call__` runs under `torch.inference_mode()`, so nothing inside it can be
differentiated. This sampler runs the same loop itself, reusing the pipeline's own parts
(image processor, conditioner, scheduler, DiT, CFG rule, VAE and export), and inserts one thing:
at guided steps, the gradient of the critic's log-odds w.r.t. the predicted clean latent moves
the latent after the Euler step. With guidance off it reproduces the pipeline's latents.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import EmptySurfaceError, InvalidInputError, SkippedStepError, UnsupportedModelError
from .guidance import (
    GuidanceConfig,
    LatentReward,
    RewardEvaluation,
    StepRecord,
    guided_step,
    predicted_clean_latent,
)
from .export import latents_to_mesh
from .offload import IdleOffload
from .precision import LossScale, is_half
from .search import (
    CandidateRecord,
    Compute,
    SearchOptions,
    SearchRecord,
    candidate_seeds,
    check_search_with_guidance,
    expand_condition,
    guided_steps_with_search,
    select_candidates,
    selection_step,
)

logger = logging.getLogger(__name__)


@dataclass
class SamplerOutput:
    """The result of a run: final latents, the decoded mesh, and the per-step record."""

    latents: torch.Tensor
    mesh: Any | None  # trimesh.Trimesh, or None for output_type="latent" or an empty surface
    records: list[StepRecord]
    seconds: float
    seed: int | None
    camera_seed: int | None = None
    offload_seconds: float = 0.0  # host<->device copies of --offload-idle, all steps together
    loss_scale_overflows: int = 0  # half-precision backwards redone at a smaller loss scale
    search: SearchRecord | None = None  # the candidates of a search (None: one sample)
    compute: Compute = field(default_factory=Compute)


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

__all__ = ["GuidedSampler", "LatentReward", "RewardEvaluation", "SamplerOutput", "SamplingContext", "derive_camera_seed"]


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

    def schedule(self, num_inference_steps: int) -> list[float]:
        """σ of each step of a run with `num_inference_steps` (plus the scheduler's appended σ = 1)."""
        from hy3dgen.shapegen.pipelines import retrieve_timesteps

        pipe = self.pipeline
        retrieve_timesteps(pipe.scheduler, num_inference_steps, pipe.device, sigmas=np.linspace(0, 1, num_inference_steps))
        return [float(s) for s in _scheduler_sigmas(pipe.scheduler)]

    def guided_steps(self, num_inference_steps: int, search: SearchOptions | None = None) -> list[int]:
        """The steps a run with `num_inference_steps` (and `search`) will guide (none without a reward)."""
        if self.reward is None:
            return []
        return guided_steps_with_search(self.schedule(num_inference_steps), self.config, search or SearchOptions())

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
        seed: int | None = None,
        generator: torch.Generator | None = None,
        camera_seed: int | None = None,
        output_type: str = "trimesh",
        octree_resolution: int = 384,
        num_chunks: int = 8000,
        mc_level: float = 0.0,
        box_v: float = 1.01,
        callback_on_step_end: StepCallback | None = None,
        progress: bool = True,
        search: SearchOptions | None = None,
    ) -> SamplerOutput:
        """Run the (guided) flow loop for one conditioning image; return latents, mesh and records.

        `guidance_scale` is the shape model's classifier-free guidance (hy3dgen's name); the
        critic's strength is `GuidanceConfig.scale`. `callback_on_step_end(sampler, step, sigma,
        state)` is called after every step with state {"latents", "record", "displacement" (the
        guidance added at this step, float32, or None), "evaluation" (the critic's
        RewardEvaluation at a guided step: r, the views it saw, ...; or None), "candidates" (the
        indices of the live candidates, the rows of "latents")}; it may return {"latents": tensor}
        to replace the latents. Camera jitter draws from its own stream, seeded by `camera_seed`
        or else derived from the run's generator (its state before the noise is drawn): same
        seed → same cameras, different generators → different cameras; the seed used is in
        `SamplerOutput.camera_seed`.

        `seed` (default 0) and `generator` are two ways to give the noise; giving both is refused
        (one would be ignored). With `output_type="trimesh"` a final latent that decodes to no
        surface raises EmptySurfaceError, whose `.output` holds this SamplerOutput (records included).

        `search` (vlm3d_ttg.search) samples several candidates and keeps the critic's favourite;
        with one candidate (the default) the run is exactly the plain loop. With several, the
        callback's "record" and "evaluation" are the first live candidate's.
        """
        _check_call(image, num_inference_steps, guidance_scale, seed, generator, camera_seed,
                    dict(octree_resolution=octree_resolution, num_chunks=num_chunks, mc_level=mc_level, box_v=box_v))
        seed = 0 if seed is None and generator is None else seed  # the documented default: seed 0
        image = str(image) if isinstance(image, PurePath) else image  # hy3dgen reads str paths, not Path
        if output_type not in ("trimesh", "latent"):
            raise InvalidInputError(f"output_type must be 'trimesh' or 'latent', got {output_type!r}")
        search = (search or SearchOptions()).validate()
        check_search_with_guidance(search, self.config)
        if search.searching and self.reward is None:
            raise InvalidInputError("Candidate search needs a reward (critic) to choose among the candidates.")
        started = time.perf_counter()
        pipe, config, offload = self.pipeline, self.config, self.offload
        if generator is None and seed is not None:
            generator = torch.Generator(device="cpu").manual_seed(seed)
        if camera_seed is None:
            camera_seed = derive_camera_seed(generator)
        # Camera jitter draws from its own stream so guidance never shifts the sampler's noise.
        camera_generator = torch.Generator(device="cpu").manual_seed(camera_seed)
        loss_scale = LossScale.for_half_backward(self._half_backward())
        compute = Compute()
        found: SearchRecord | None = None
        try:
            # 1. Encode the condition; draw the initial noise (one row per candidate).
            offload.activate("condition")
            tic = time.perf_counter()
            context = self.prepare(image, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
            compute.add_time("condition", time.perf_counter() - tic)
            offload.activate("denoise")
            if context.batch_size != 1 and (config.enabled or search.searching):
                raise InvalidInputError("Guided sampling and candidate search take one conditioning image (or one "
                                        "multi-view dict) per call.")
            if search.searching:
                seeds = candidate_seeds(seed, generator, search.candidates)
                latents = torch.cat([pipe.prepare_latents(1, pipe.dtype, pipe.device, torch.Generator().manual_seed(s))
                                     for s in seeds])
                found = SearchRecord(search, selection_step(context.sigmas, search.select_at), None,
                                     [CandidateRecord(index=j, seed=s) for j, s in enumerate(seeds)])
            else:
                latents = pipe.prepare_latents(context.batch_size, pipe.dtype, pipe.device, generator)
            select_step = found.select_step if found is not None else None
            # The live candidates (rows of `latents`) and each one's step records.
            alive = list(range(latents.shape[0] if found is not None else 1))
            records_of: dict[int, list[StepRecord]] = {j: [] for j in alive}
            row_contexts: dict[int, SamplingContext] = {}  # conditioning per candidate-chunk size
            guided = set(guided_steps_with_search(context.sigmas, config, search)) if self.reward is not None else set()

            bar = tqdm(total=len(context.timesteps), desc="guided sampling" if guided else "sampling",
                       disable=not progress, leave=False)
            for i, t in enumerate(context.timesteps):
                sigma = context.sigmas[i]
                step_records = {j: StepRecord(step=i, sigma=sigma, guided=i in guided) for j in alive}
                record = step_records[alive[0]]
                exact_gradient = record.guided and config.grad_mode == "xt"

                # 2. The DiT's velocity (with a graph only for the exact gradient), candidates in batches.
                record.timings["offload"] = offload.activate("denoise")
                tic = time.perf_counter()
                with torch.set_grad_enabled(exact_gradient):
                    # xt: a float32 leaf, so the (loss-scaled) gradient reaches it in float32.
                    latents_in = latents.detach().float().requires_grad_(True) if exact_gradient else latents
                    velocity = self._batched_velocity(latents_in.to(pipe.dtype), i, context, search.batch(), compute,
                                                     row_contexts)
                record.timings["dit"] = time.perf_counter() - tic
                compute.add_time("dit", record.timings["dit"])
                for other in step_records.values():  # one batched call: every candidate's step shares it
                    other.timings.setdefault("dit", record.timings["dit"])
                    other.timings.setdefault("offload", record.timings["offload"])

                # 3. The sampler's own step (hy3dgen's scheduler: x + (σ_next − σ)·v).
                next_latents = pipe.scheduler.step(velocity.detach(), t, latents).prev_sample

                # 3b. Search: the critic scores every candidate's x̂ (forward only); the best continue.
                if i == select_step:
                    offload.activate("critic")
                    rows = self._select(found, alive, latents, velocity, sigma, compute)
                    latents, velocity, next_latents = latents[rows], velocity[rows], next_latents[rows]
                    alive = [alive[row] for row in rows]
                    record = step_records[alive[0]]

                # 4. Guidance: x_next = Sampler(x, σ) + d(∇r)   (paper eq. 10; guidance.guided_step)
                displacement, evaluation = None, None
                if record.guided:
                    record.timings["offload"] += offload.activate("critic")
                    tic = time.perf_counter()
                    moved = []
                    for row, j in enumerate(alive):
                        one = slice(row, row + 1) if len(alive) > 1 else slice(None)
                        step_displacement, step_evaluation = self._guide(
                            step_records[j], latents[one], latents_in if len(alive) == 1 else None, velocity[one],
                            next_latents[one], sigma, camera_generator, loss_scale, compute)
                        if step_displacement is not None:
                            moved.append(next_latents[one] + step_displacement.to(next_latents.dtype))
                        else:
                            moved.append(next_latents[one])
                        if row == 0:
                            displacement, evaluation = step_displacement, step_evaluation
                    next_latents = moved[0] if len(moved) == 1 else torch.cat(moved)
                    compute.add_time("guidance", time.perf_counter() - tic)
                latents = next_latents.detach()
                for j in alive:
                    records_of[j].append(step_records[j])

                # 5. The step callback (diffusers' callback_on_step_end).
                if callback_on_step_end is not None:
                    state = {"latents": latents, "record": record, "displacement": displacement,
                             "evaluation": evaluation, "candidates": list(alive)}
                    replaced = callback_on_step_end(self, i, sigma, state)
                    if replaced and "latents" in replaced:
                        latents = replaced["latents"]
                bar.set_postfix(_progress_postfix(record), refresh=False)
                bar.update(1)
            bar.close()

            # 6. Decode the final latent to a mesh (hy3dgen's export, with its VAE next to the DiT);
            #    several live candidates: decode each, keep the one whose mesh the critic likes best.
            mesh, winner = None, 0
            if len(alive) > 1:
                winner, mesh = self._select_final(found, alive, latents, output_type, compute, dict(
                    box_v=box_v, mc_level=mc_level, num_chunks=num_chunks, octree_resolution=octree_resolution))
            elif output_type == "trimesh":
                offload.activate("denoise")
                tic = time.perf_counter()
                mesh = latents_to_mesh(pipe, latents, box_v=box_v, mc_level=mc_level, num_chunks=num_chunks,
                                       octree_resolution=octree_resolution)
                compute.add_time("decode", time.perf_counter() - tic)
            latents = latents[winner:winner + 1] if len(alive) > 1 else latents
            if found is not None:
                found.chosen = alive[winner]
                found.candidates[alive[winner]].chosen = True
        finally:
            # Every model back where it was, also when a step raised or the user pressed Ctrl-C.
            offload.restore()
        result = SamplerOutput(
            latents=latents,
            mesh=mesh,
            records=records_of[alive[winner]],
            seconds=time.perf_counter() - started,
            seed=seed,
            camera_seed=camera_seed,
            offload_seconds=offload.seconds,
            loss_scale_overflows=loss_scale.overflows,
            search=found,
            compute=compute,
        )
        if output_type == "trimesh" and mesh is None:  # never a silent mesh=None
            error = EmptySurfaceError("The final latent decodes to no surface (empty mesh) at mc_level "
                                      f"{mc_level}; lower --cfg-scale or try another seed.")
            error.output = result  # type: ignore[attr-defined]
            raise error
        return result

    def _batched_velocity(
        self, latents: torch.Tensor, step: int, context: SamplingContext, batch: int, compute: Compute,
        contexts: dict[int, SamplingContext],
    ) -> torch.Tensor:
        """`velocity` for a batch of candidates, `batch` rows per DiT call (one row: the plain call).

        `contexts` holds the conditioning repeated for each chunk size, built once per run rather
        than at every step."""
        parts = []
        for start in range(0, latents.shape[0], batch):
            chunk = latents[start:start + batch]
            rows = chunk.shape[0]
            compute.dit_calls += 1
            compute.dit_rows += rows * (2 if context.do_cfg else 1)
            if rows not in contexts:
                contexts[rows] = context if rows == 1 else _context_for_rows(context, rows)
            parts.append(self.velocity(chunk, step, contexts[rows]))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    # ----------------------------------------------------------------- search
    def _select(
        self, found: SearchRecord, alive: list[int], latents: torch.Tensor, velocity: torch.Tensor, sigma: float,
        compute: Compute,
    ) -> list[int]:
        """Score every live candidate's x̂ at σ_s (forward only, un-jittered cameras); return the rows
        of the best `keep`, best first, and fill the candidates' records."""
        tic = time.perf_counter()
        found.select_sigma = sigma
        with torch.no_grad():
            clean = predicted_clean_latent(latents.float(), velocity.detach().float(), sigma)
        scores: list[float | None] = []
        for row, j in enumerate(alive):
            candidate = found.candidates[j]
            outcome = self._score_latent(clean[row:row + 1], compute)
            if isinstance(outcome, str):
                candidate.skipped = outcome
                scores.append(None)
                continue
            candidate.r, candidate.p_yes = float(outcome.r), outcome.p_yes
            if outcome.images is not None:
                found.views[j] = (outcome.images[:1].clamp(0, 1) * 255).round().to(torch.uint8).cpu()
            scores.append(candidate.r)
        rows = select_candidates(scores, found.options.keep)
        for row in rows:
            found.candidates[alive[row]].kept = True
        logger.info("search at σ=%.3f: kept candidate(s) %s of %d (r %s)", sigma, [alive[r] for r in rows],
                    len(alive), ", ".join("n/a" if s is None else f"{s:+.3f}" for s in scores))
        compute.add_time("selection", time.perf_counter() - tic)
        return rows

    def _select_final(
        self, found: SearchRecord, alive: list[int], latents: torch.Tensor, output_type: str, compute: Compute,
        export: dict[str, Any],
    ) -> tuple[int, Any]:
        """Decode every live candidate, score its mesh from the un-jittered cameras; return (row of
        the best, its mesh or None for output_type 'latent')."""
        assert self.reward is not None
        meshes, scores = [], []
        for row, j in enumerate(alive):
            self.offload.activate("denoise")
            tic = time.perf_counter()
            mesh = latents_to_mesh(self.pipeline, latents[row:row + 1], **export)
            compute.add_time("decode", time.perf_counter() - tic)
            meshes.append(mesh)
            candidate = found.candidates[j]
            candidate.kept = candidate.kept or found.select_step is None
            if mesh is None or not len(mesh.faces):
                candidate.skipped = candidate.skipped or "empty_surface"
                scores.append(None)
                continue
            self.offload.activate("critic")
            tic = time.perf_counter()
            try:
                evaluation = self.reward.score_mesh(mesh.vertices, mesh.faces)
            except (EmptySurfaceError, SkippedStepError) as exc:
                logger.warning("candidate %d: its final mesh could not be scored: %s", j, exc)
                scores.append(None)
                continue
            finally:
                compute.add_time("final_selection", time.perf_counter() - tic)
            compute.critic_forwards += 1
            candidate.final_r, candidate.final_p_yes = float(evaluation.r), evaluation.p_yes
            scores.append(candidate.final_r)
        (best,) = select_candidates(scores, 1)
        return best, meshes[best] if output_type == "trimesh" else None

    def _score_latent(self, clean: torch.Tensor, compute: Compute) -> RewardEvaluation | str:
        """The critic's forward-only verdict on a latent from the un-jittered cameras, or why it failed."""
        assert self.reward is not None
        score = getattr(self.reward, "score_latent", None)
        try:
            with torch.no_grad():
                evaluation = score(clean) if score is not None else self.reward(clean)
        except EmptySurfaceError:
            return "empty_surface"
        except SkippedStepError as exc:
            return exc.reason
        finally:
            compute.critic_forwards += 1
        evaluation.r = evaluation.r.detach()
        return evaluation

    # ----------------------------------------------------------------- precision
    def _half_backward(self) -> bool:
        """Whether any backward of this run's guidance passes through float16 (then it is loss-scaled)."""
        if self.reward is None or not self.config.enabled:
            return False
        dit_half = self.config.grad_mode == "xt" and is_half(self.pipeline.dtype)
        return dit_half or bool(getattr(self.reward, "half_backward", False))

    # ----------------------------------------------------------------- guidance
    def _guide(
        self,
        record: StepRecord,
        latents: torch.Tensor,
        latents_in: torch.Tensor,
        velocity: torch.Tensor,
        sampler_next: torch.Tensor,
        sigma: float,
        camera_generator: torch.Generator,
        loss_scale: LossScale,
        compute: Compute,
    ) -> tuple[torch.Tensor | None, RewardEvaluation | None]:
        """Ask the critic at x̂ and build this step's displacement (summed over inner steps); fill the
        record, or mark the step skipped. Returns (displacement or None, the first evaluation)."""
        config = self.config
        assert self.reward is not None
        record.sampler_step_norm = float(torch.linalg.vector_norm(sampler_next.float() - latents.float(), dtype=torch.float64))
        if config.grad_mode == "xt":
            # Exact: r(x̂(x)) differentiated through the DiT's velocity to x.
            clean = predicted_clean_latent(latents_in, velocity.float(), sigma)
            target = latents_in
        else:
            # Straight-through: g = ∇_x̂ r applied to x (∂x̂/∂x ≈ I); no DiT backward.
            clean = predicted_clean_latent(latents.float(), velocity.detach().float(), sigma).requires_grad_(True)
            target = clean
        total = torch.zeros_like(clean, dtype=torch.float32)
        first = None
        for inner in range(config.inner_steps):
            outcome = self._reward_gradient(clean + total if inner else clean, target, camera_generator, loss_scale,
                                            compute)
            if isinstance(outcome, str):
                record.skipped = outcome
                break
            evaluation, gradient = outcome
            try:
                step = guided_step(latents, sampler_next, velocity.detach(), sigma, gradient, config)
            except SkippedStepError as exc:
                record.skipped = exc.reason
                logger.warning("step %d (σ=%.3f): skipped (%s): %s", record.step, sigma, exc.reason, exc)
                break
            total = total + step.displacement
            grad_norm = float(torch.linalg.vector_norm(gradient, dtype=torch.float64))
            summary = {"r": float(evaluation.r.detach()), "p_yes": evaluation.p_yes, "grad_norm": grad_norm,
                       "capped": step.capped, "timings": evaluation.timings, **evaluation.info}
            if inner == 0:
                first = evaluation
                record.r, record.p_yes, record.grad_norm, record.capped = summary["r"], evaluation.p_yes, grad_norm, step.capped
                record.loss_scale = loss_scale.value if loss_scale.enabled else None
                record.reward_info = dict(evaluation.info)
                record.timings.update(evaluation.timings)
            else:
                record.inner.append(summary)
            if grad_norm == 0.0:
                # Nothing the critic saw depends on the latent (or it underflowed): say so, never
                # pass it off as a guided step.
                record.skipped = "zero_gradient"
                logger.warning("step %d (σ=%.3f): skipped, the reward gradient is exactly zero", record.step, sigma)
                break
        if record.skipped and not total.any():
            return None, first
        record.applied_norm = float(torch.linalg.vector_norm(total, dtype=torch.float64))
        return total.detach(), first

    def _reward_gradient(
        self, clean: torch.Tensor, target: torch.Tensor, camera_generator: torch.Generator, loss_scale: LossScale,
        compute: Compute,
    ) -> tuple[RewardEvaluation, torch.Tensor] | str:
        """(the critic's evaluation at `clean`, ∇_target r in float32), or the reason the step is skipped."""
        try:
            compute.critic_forwards += 1
            evaluation = self.reward(clean, generator=camera_generator)
            tic = time.perf_counter()
            compute.critic_backwards += 1
            with deterministic_backward(target.device):
                gradient = loss_scale.gradient(evaluation.r, target)
            evaluation.timings["backward"] = time.perf_counter() - tic
            # Drop the reward's graph now (the loss scale kept it for retries): the critic's saved
            # activations (~11 GiB on the 7B) must not outlive the step through the callback's state.
            evaluation.r = evaluation.r.detach()
            if not bool(torch.isfinite(gradient).all()):
                raise SkippedStepError("non_finite_gradient", "the reward gradient is not finite at any loss scale")
        except EmptySurfaceError as exc:
            logger.info("guided step skipped: %s", exc)
            return "empty_surface"
        except SkippedStepError as exc:
            logger.warning("guided step skipped (%s): %s", exc.reason, exc)
            return exc.reason
        return evaluation, gradient


@contextmanager
def deterministic_backward(device: torch.device) -> Iterator[None]:
    """On the CPU, torch's deterministic kernels for the reward's backward, then the previous mode.

    The CPU renderer's backward accumulates vertex gradients with multi-threaded scatter-adds whose
    summation order varies run to run (differences of ~1e-10); the guided trajectory amplifies
    them, so two runs with the same seed ended with different meshes. The deterministic kernels
    make same seed → same mesh. Not on CUDA: nvdiffrast's backward uses atomics either way, and
    deterministic cuBLAS needs an environment variable set before CUDA starts.
    """
    if device.type != "cpu":
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn_only)


def _check_call(image: Any, steps: Any, guidance_scale: Any, seed: Any, generator: Any, camera_seed: Any,
                export: dict[str, Any]) -> None:
    """The sampler's inputs, checked at the API boundary (not deep inside hy3dgen): what the CLI checks."""
    import os

    from PIL import Image

    from .images import check_object, open_image
    from .preflight import bound_problem

    def whole(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def finite(value: Any) -> bool:
        return not isinstance(value, bool) and isinstance(value, (int, float)) and bool(np.isfinite(value))

    if not (isinstance(image, (str, os.PathLike, Image.Image)) or (isinstance(image, dict) and image)):
        raise InvalidInputError(
            "image must be a path, a PIL.Image.Image (RGBA with a transparent background is best; see "
            "vlm3d_ttg.inputs.prepare_condition_image) or, for multi-view models, a dict of views; "
            f"got {type(image).__name__}."
        )
    for view in (image.values() if isinstance(image, dict) else [image]):  # readable, an object to see
        rgba = open_image(view, what="Conditioning image")
        if rgba.getchannel("A").getextrema()[0] < 250:
            check_object(rgba, view, what="Conditioning image")
    if not whole(steps) or steps < 2:
        raise InvalidInputError(f"num_inference_steps must be an integer ≥ 2, got {steps!r}")
    if not finite(guidance_scale) or guidance_scale < 0:
        raise InvalidInputError(f"guidance_scale (the shape model's CFG) must be a finite number ≥ 0, got {guidance_scale!r}")
    if generator is not None and seed is not None:
        raise InvalidInputError(f"Give seed or generator, not both: seed={seed!r} would be ignored (the generator "
                                "draws the noise). Pass seed=None with a generator.")
    octree = export["octree_resolution"]
    if not whole(octree) or octree < 16:
        raise InvalidInputError(f"octree_resolution must be an integer ≥ 16, got {octree!r}")
    for problem in (bound_problem("steps", steps), bound_problem("octree_resolution", octree)):  # the CLI's bounds
        if problem:
            raise InvalidInputError(problem)
    if not whole(export["num_chunks"]) or export["num_chunks"] < 1:
        raise InvalidInputError(f"num_chunks must be an integer ≥ 1, got {export['num_chunks']!r}")
    if not finite(export["mc_level"]) or not -1 < export["mc_level"] < 1:
        raise InvalidInputError(f"mc_level must be a finite number in (-1, 1), got {export['mc_level']!r}")
    if not finite(export["box_v"]) or export["box_v"] <= 0:
        raise InvalidInputError(f"box_v must be a finite number > 0, got {export['box_v']!r}")
    for name, value in (("seed", seed), ("camera_seed", camera_seed)):
        if value is not None and (not whole(value) or not 0 <= value < 2**64):
            raise InvalidInputError(f"{name} must be an integer in [0, 2^64) or None, got {value!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InvalidInputError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def _context_for_rows(context: SamplingContext, rows: int) -> SamplingContext:
    """The context of one conditioning image, repeated for a DiT call on `rows` candidates."""
    embedding = context.guidance_embedding
    return dataclasses.replace(
        context,
        cond=expand_condition(context.cond, rows, context.do_cfg),
        guidance_embedding=embedding.repeat_interleave(rows, 0) if embedding is not None else None,
        batch_size=rows,
    )


def _progress_postfix(record: StepRecord) -> dict[str, str]:
    postfix = {"σ": f"{record.sigma:.2f}"}
    if record.r is not None:
        postfix["r"] = f"{record.r:+.3f}"
    if record.skipped:
        postfix["skip"] = record.skipped
    return postfix


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
