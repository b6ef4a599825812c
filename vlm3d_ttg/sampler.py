"""GuidedSampler: a flow-matching loop with VLM test-time guidance inserted, over any backbone.

The loop sees a `backbones.Backbone` (condition, velocity with its CFG, σ schedule and Euler step,
noise, the occupancy field of a clean latent, the export) and a `guidance.LatentReward`; it holds
latents, σ and records. It inserts one thing into the generator's own loop: at guided steps, the
gradient of the reward w.r.t. the predicted clean latent moves the latent after the Euler step.
With guidance off it reproduces the generator's latents (hy3dgen's, bit for bit: its pipeline's
`__call__` runs under `torch.inference_mode()`, which is why this loop exists).
"""

from __future__ import annotations

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

from .backbones import EXPORT_RESOLUTION, Backbone, SamplingContext, as_backbone, check_views
from .compute import Compute
from .errors import EmptySurfaceError, InvalidInputError, SkippedStepError
from .guidance import (
    GuidanceConfig,
    LatentReward,
    RewardEvaluation,
    StepRecord,
    guided_step,
    predicted_clean_latent,
)
from .offload import IdleOffload
from .precision import LossScale, is_half
from .search import (
    CandidateRecord,
    SearchOptions,
    SearchRecord,
    candidate_seeds,
    check_search_with_guidance,
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


StepCallback = Callable[["GuidedSampler", int, float, dict[str, Any]], dict[str, Any] | None]

__all__ = ["GuidedSampler", "LatentReward", "RewardEvaluation", "SamplerOutput", "SamplingContext", "derive_camera_seed"]


@dataclass
class _Candidates:
    """The live candidates of a run (the rows of the latents, by candidate index) and each one's step records."""

    alive: list[int]
    records: dict[int, list[StepRecord]]
    found: SearchRecord | None  # None: one sample, no search

    @classmethod
    def start(cls, rows: int, found: SearchRecord | None) -> "_Candidates":
        alive = list(range(rows if found is not None else 1))
        return cls(alive, {j: [] for j in alive}, found)

    def new_records(self, step: int, sigma: float, guided: bool) -> dict[int, StepRecord]:
        """One fresh record per live candidate for this step."""
        return {j: StepRecord(step=step, sigma=sigma, guided=guided) for j in self.alive}

    def keep(self, rows: list[int]) -> None:
        """Only these rows (best first) stay alive."""
        self.alive = [self.alive[row] for row in rows]

    def append(self, step_records: dict[int, StepRecord]) -> None:
        for j in self.alive:
            self.records[j].append(step_records[j])


@contextmanager
def _timed(compute: Compute, phase: str, record: StepRecord | None = None) -> Iterator[None]:
    """Add the block's wall time to `compute`'s phase (and to the step record's timings)."""
    tic = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - tic
        compute.add_time(phase, seconds)
        if record is not None:
            record.timings[phase] = seconds


class GuidedSampler:
    """Drop-in guided sampler around a backbone (`vlm3d_ttg.backbones`; a loaded hy3dgen pipeline is
    wrapped in its backbone).

    `reward` scores a latent (see `vlm3d_ttg.reward.VLMReward`); without it, or with guidance
    inactive (`GuidanceConfig.active`), the sampler is the generator's own loop. `offload_idle`
    keeps the model that is not running on the CPU (only meaningful on a GPU).
    """

    def __init__(
        self,
        backbone: Backbone | Any,
        reward: LatentReward | None = None,
        config: GuidanceConfig | None = None,
        *,
        offload_idle: bool = False,
    ):
        self.backbone = as_backbone(backbone)
        self.reward = reward
        # Keep whichever model is idle in CPU memory: the DiT and conditioner while the critic
        # runs, the critic while the DiT runs. Saves GPU memory at the price of host<->device
        # copies at every guided step (the 7B critic is ~15.5 GiB in bf16).
        self.offload_idle = offload_idle
        self.config = (config or GuidanceConfig()).validate()
        if self.config.active and reward is None:
            raise InvalidInputError("Guidance is enabled but no reward (critic) was given; pass one or disable guidance.")
        if offload_idle and self.config.active and self.config.grad_mode == "xt":
            raise InvalidInputError(
                "offload_idle cannot be combined with grad_mode='xt': the DiT's autograd graph keeps its weights "
                "on the GPU until the critic's backward, so offloading would free nothing. Use grad_mode='x0' "
                "(the default) or drop offload_idle."
            )
        critic_models = reward.offload_modules() if reward is not None else []
        device = torch.device(self.backbone.device)
        self.offload = IdleOffload({**self.backbone.offload_groups(), "critic": critic_models}, device,
                                   enabled=offload_idle and device.type != "cpu")

    # ----------------------------------------------------------------- setup and model call
    def prepare(self, image: Any, *, num_inference_steps: int = 50, guidance_scale: float = 5.0) -> SamplingContext:
        """Encode the conditioning image(s) and fix the σ schedule (the backbone's `prepare`)."""
        check_views(image, self.backbone.views)
        return self.backbone.prepare(image, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)

    def schedule(self, num_inference_steps: int) -> list[float]:
        """σ of each step of a run with `num_inference_steps` (plus the final σ the last step lands on)."""
        return self.backbone.schedule(num_inference_steps)

    def guided_steps(self, num_inference_steps: int, search: SearchOptions | None = None) -> list[int]:
        """The steps a run with `num_inference_steps` (and `search`) will guide (none without a reward)."""
        if self.reward is None:
            return []
        return guided_steps_with_search(self.schedule(num_inference_steps), self.config, search or SearchOptions())

    def velocity(self, latents: torch.Tensor, step: int, context: SamplingContext) -> torch.Tensor:
        """The backbone's (CFG-combined) velocity at `latents` for step `step`."""
        return self.backbone.velocity(latents, step, context)

    @property
    def half_backward(self) -> bool:
        """Whether any backward of this run's guidance passes through float16 (then it is loss-scaled)."""
        if self.reward is None or not self.config.active:
            return False
        dit_half = self.config.grad_mode == "xt" and is_half(self.backbone.dtype)
        return dit_half or bool(self.reward.half_backward)

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
        octree_resolution: int = EXPORT_RESOLUTION,
        num_chunks: int = 8000,
        mc_level: float | None = None,
        box_v: float | None = None,
        callback_on_step_end: StepCallback | None = None,
        progress: bool = True,
        search: SearchOptions | None = None,
    ) -> SamplerOutput:
        """Run the (guided) flow loop for one conditioning input; return latents, mesh and records.

        `image` is one image, or for a multi-view backbone a dict of views ("front" required).
        `guidance_scale` is the shape model's classifier-free guidance (hy3dgen's name); the
        critic's strength is `GuidanceConfig.scale`. `callback_on_step_end(sampler, step, sigma,
        state)` is called after every step with state {"latents", "record", "displacement" (the
        guidance added at this step, float32, or None), "evaluation" (the critic's
        RewardEvaluation at a guided step: r, the views it saw, ...; or None), "candidates" (the
        indices of the live candidates, the rows of "latents")}; it may return {"latents": tensor}
        to replace the latents. Camera jitter draws from its own stream, seeded by `camera_seed`
        or else derived from the run's generator (its state before the noise is drawn): same
        seed → same cameras, different generators → different cameras; the seed used is in
        `SamplerOutput.camera_seed`. `box_v` and `mc_level` (the export's cube and level) default
        to the backbone's.

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
        check_views(image, self.backbone.views)
        search = (search or SearchOptions()).validate()
        check_search_with_guidance(search, self.config)
        if search.searching and self.reward is None:
            raise InvalidInputError("Candidate search needs a reward (critic) to choose among the candidates.")
        started = time.perf_counter()
        config, offload = self.config, self.offload
        if generator is None and seed is not None:
            generator = torch.Generator(device="cpu").manual_seed(seed)
        if camera_seed is None:
            camera_seed = derive_camera_seed(generator)
        # Camera jitter draws from its own stream so guidance never shifts the sampler's noise.
        camera_generator = torch.Generator(device="cpu").manual_seed(camera_seed)
        loss_scale = LossScale.for_half_backward(self.half_backward)
        compute = Compute()
        export = dict(octree_resolution=octree_resolution, num_chunks=num_chunks,
                      bounds=self.backbone.bounds if box_v is None else box_v,
                      level=self.backbone.level if mc_level is None else mc_level)
        try:
            # 1. Encode the condition; draw the initial noise (one row per candidate).
            offload.activate("condition")
            with _timed(compute, "condition"):
                context = self.prepare(image, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
            offload.activate("denoise")
            if context.batch_size != 1 and (config.active or search.searching):
                raise InvalidInputError("Guided sampling and candidate search take one conditioning image (or one "
                                        "multi-view dict) per call.")
            latents, found = self._initial_latents(context, search, seed, generator)
            live = _Candidates.start(latents.shape[0], found)
            select_step = found.select_step if found is not None else None
            row_contexts: dict[int, SamplingContext] = {}  # conditioning per candidate-chunk size
            guided = set(guided_steps_with_search(context.sigmas, config, search)) if self.reward is not None else set()
            steps = len(context.sigmas) - 1
            bar = tqdm(total=steps, desc="guided sampling" if guided else "sampling", disable=not progress, leave=False)
            for i in range(steps):
                sigma = context.sigmas[i]
                step_records = live.new_records(i, sigma, i in guided)
                record = step_records[live.alive[0]]

                # 2. The velocity (with a graph only for the exact gradient), candidates in batches.
                latents_in, velocity = self._velocity_step(latents, i, context, record, step_records, search,
                                                           compute, row_contexts)

                # 3. The sampler's own step (the backbone's Euler step: x + (σ_next − σ)·v).
                next_latents = self.backbone.step(velocity.detach(), i, latents, context)

                # 3b. Search: the critic scores every candidate's x̂ (forward only); the best continue.
                if i == select_step:
                    offload.activate("critic")
                    rows = self._select(found, live.alive, latents, velocity, sigma, compute)
                    latents, velocity, next_latents = latents[rows], velocity[rows], next_latents[rows]
                    live.keep(rows)
                    record = step_records[live.alive[0]]

                # 4. Guidance: x_next = Sampler(x, σ) + d(∇r)   (paper eq. 10; guidance.guided_step)
                displacement, evaluation = None, None
                if record.guided:
                    record.timings["offload"] += offload.activate("critic")
                    with _timed(compute, "guidance"):
                        next_latents, displacement, evaluation = self._guide_candidates(
                            live.alive, step_records, latents, latents_in, velocity, next_latents, sigma,
                            camera_generator, loss_scale, compute)
                latents = next_latents.detach()
                live.append(step_records)

                # 5. The step callback (diffusers' callback_on_step_end).
                if callback_on_step_end is not None:
                    state = {"latents": latents, "record": record, "displacement": displacement,
                             "evaluation": evaluation, "candidates": list(live.alive)}
                    replaced = callback_on_step_end(self, i, sigma, state)
                    if replaced and "latents" in replaced:
                        latents = replaced["latents"]
                bar.set_postfix(_progress_postfix(record), refresh=False)
                bar.update(1)
            bar.close()

            # 6. Decode the final latent to a mesh (the backbone's export, with its VAE next to the DiT);
            #    several live candidates: decode each, keep the one whose mesh the critic likes best.
            latents, mesh, winner = self._finish(live, latents, output_type, compute, export)
        finally:
            # Every model back where it was, also when a step raised or the user pressed Ctrl-C.
            offload.restore()
        result = SamplerOutput(
            latents=latents,
            mesh=mesh,
            records=live.records[live.alive[winner]],
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

    # ----------------------------------------------------------------- the loop's steps
    def _finish(
        self, live: _Candidates, latents: torch.Tensor, output_type: str, compute: Compute, export: dict[str, Any]
    ) -> tuple[torch.Tensor, Any, int]:
        """(the output's latents, its mesh or None, the index of its row among the live candidates)."""
        mesh, winner = None, 0
        if len(live.alive) > 1:
            winner, mesh = self._select_final(live.found, live.alive, latents, output_type, compute, export)
            latents = latents[winner:winner + 1]
        elif output_type == "trimesh":
            self.offload.activate("denoise")
            with _timed(compute, "decode"):
                mesh = self.backbone.to_mesh(latents, **export)
        if live.found is not None:
            live.found.chosen = live.alive[winner]
            live.found.candidates[live.alive[winner]].chosen = True
        return latents, mesh, winner

    def _initial_latents(
        self, context: SamplingContext, search: SearchOptions, seed: int | None, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, SearchRecord | None]:
        """The starting noise: one row from the run's generator, or one row per candidate from its own
        seed (then also the search's record)."""
        if not search.searching:
            return self.backbone.noise(context.batch_size, generator), None
        seeds = candidate_seeds(seed, generator, search.candidates)
        latents = torch.cat([self.backbone.noise(1, torch.Generator().manual_seed(s)) for s in seeds])
        found = SearchRecord(search, selection_step(context.sigmas, search.select_at), None,
                             [CandidateRecord(index=j, seed=s) for j, s in enumerate(seeds)])
        return latents, found

    def _velocity_step(
        self, latents: torch.Tensor, step: int, context: SamplingContext, record: StepRecord,
        step_records: dict[int, StepRecord], search: SearchOptions, compute: Compute,
        row_contexts: dict[int, SamplingContext],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the latents the velocity was computed from — a float32 leaf for the exact gradient —, the
        velocity); the timings go to every live candidate's record (one batched call serves them all)."""
        exact_gradient = record.guided and self.config.grad_mode == "xt"
        record.timings["offload"] = self.offload.activate("denoise")
        with _timed(compute, "dit", record), torch.set_grad_enabled(exact_gradient):
            # xt: a float32 leaf, so the (loss-scaled) gradient reaches it in float32.
            latents_in = latents.detach().float().requires_grad_(True) if exact_gradient else latents
            velocity = self._batched_velocity(latents_in.to(self.backbone.dtype), step, context, search.batch(),
                                              compute, row_contexts)
        for other in step_records.values():
            other.timings.setdefault("dit", record.timings["dit"])
            other.timings.setdefault("offload", record.timings["offload"])
        return latents_in, velocity

    def _guide_candidates(
        self, alive: list[int], step_records: dict[int, StepRecord], latents: torch.Tensor, latents_in: torch.Tensor,
        velocity: torch.Tensor, next_latents: torch.Tensor, sigma: float, camera_generator: torch.Generator,
        loss_scale: LossScale, compute: Compute,
    ) -> tuple[torch.Tensor, torch.Tensor | None, RewardEvaluation | None]:
        """Guide each live candidate's step; return (the next latents, the first candidate's displacement
        and evaluation)."""
        moved, displacement, evaluation = [], None, None
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
        return (moved[0] if len(moved) == 1 else torch.cat(moved)), displacement, evaluation

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
            compute.dit_rows += rows * context.rows_per_latent
            if rows not in contexts:
                contexts[rows] = self.backbone.for_rows(context, rows)
            parts.append(self.velocity(chunk, step, contexts[rows]))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    # ----------------------------------------------------------------- search
    def _select(
        self, found: SearchRecord, alive: list[int], latents: torch.Tensor, velocity: torch.Tensor, sigma: float,
        compute: Compute,
    ) -> list[int]:
        """Score every live candidate's x̂ at σ_s (forward only, un-jittered cameras); return the rows
        of the best `keep`, best first, and fill the candidates' records."""
        with _timed(compute, "selection"):
            return self._select_timed(found, alive, latents, velocity, sigma, compute)

    def _select_timed(
        self, found: SearchRecord, alive: list[int], latents: torch.Tensor, velocity: torch.Tensor, sigma: float,
        compute: Compute,
    ) -> list[int]:
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
            with _timed(compute, "decode"):
                mesh = self.backbone.to_mesh(latents[row:row + 1], **export)
            meshes.append(mesh)
            candidate = found.candidates[j]
            candidate.kept = candidate.kept or found.select_step is None
            if mesh is None or not len(mesh.faces):
                candidate.skipped = candidate.skipped or "empty_surface"
                scores.append(None)
                continue
            self.offload.activate("critic")
            try:
                with _timed(compute, "final_selection"):
                    evaluation = self.reward.score_mesh(mesh.vertices, mesh.faces)
            except (EmptySurfaceError, SkippedStepError) as exc:
                logger.warning("candidate %d: its final mesh could not be scored: %s", j, exc)
                scores.append(None)
                continue
            compute.critic_forwards += 1
            candidate.final_r, candidate.final_p_yes = float(evaluation.r), evaluation.p_yes
            scores.append(candidate.final_r)
        (best,) = select_candidates(scores, 1)
        return best, meshes[best] if output_type == "trimesh" else None

    def _score_latent(self, clean: torch.Tensor, compute: Compute) -> RewardEvaluation | str:
        """The critic's forward-only verdict on a latent from the un-jittered cameras, or why it failed."""
        assert self.reward is not None
        try:
            with torch.no_grad():
                evaluation = self.reward.score_latent(clean)
        except EmptySurfaceError:
            return "empty_surface"
        except SkippedStepError as exc:
            return exc.reason
        finally:
            compute.critic_forwards += 1
        evaluation.r = evaluation.r.detach()
        return evaluation

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
                       "capped": step.capped, "terms": dict(evaluation.terms), "timings": evaluation.timings,
                       **evaluation.info}
            if inner == 0:
                first = evaluation
                record.r, record.p_yes, record.grad_norm, record.capped = summary["r"], evaluation.p_yes, grad_norm, step.capped
                record.loss_scale = loss_scale.value if loss_scale.enabled else None
                record.reward_info = dict(evaluation.info)
                record.terms = dict(evaluation.terms)
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
    # None: the backbone's own level and cube (Backbone.level / Backbone.bounds).
    if export["mc_level"] is not None and (not finite(export["mc_level"]) or not -1 < export["mc_level"] < 1):
        raise InvalidInputError(f"mc_level must be a finite number in (-1, 1) or None, got {export['mc_level']!r}")
    if export["box_v"] is not None and (not finite(export["box_v"]) or export["box_v"] <= 0):
        raise InvalidInputError(f"box_v must be a finite number > 0 or None, got {export['box_v']!r}")
    for name, value in (("seed", seed), ("camera_seed", camera_seed)):
        if value is not None and (not whole(value) or not 0 <= value < 2**64):
            raise InvalidInputError(f"{name} must be an integer in [0, 2^64) or None, got {value!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InvalidInputError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


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
