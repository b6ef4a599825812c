"""GuidedSampler: a flow-matching loop with VLM test-time guidance inserted, over any backbone.

The loop sees a `backbones.Backbone` (condition, velocity with its CFG, σ schedule and Euler step,
noise, the occupancy field of a clean latent, the export) and a `guidance.LatentReward`; it holds
latents, σ and records. It reads like the generator's own loop — condition, then for each σ:
velocity → the sampler's step → step hooks — and inserts one thing, as a hook: at guided steps
the gradient of the reward w.r.t. the predicted clean latent moves the latent after the Euler step
(`GuidanceHook`, around the pure `guidance.guided_step`, paper eq. 10). Candidate search
(`search.sample_candidates`) is a function around the loop; counting and timing are wrappers
(`compute.MeteredBackbone`, `compute.MeteredReward`, `Compute.timed`). With guidance off it
reproduces the generator's latents (hy3dgen's, bit for bit: its pipeline's `__call__` runs under
`torch.inference_mode()`, which is why this loop exists).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .backbones import (DEFAULT_BACKBONE, EXPORT_DECODERS, EXPORT_RESOLUTION, Backbone, SamplingContext, as_backbone, backbone_class,
                        ExportDecoder, backbone_defaults, check_views)
from .compute import Compute, MeteredBackbone, MeteredReward
from .errors import EmptySurfaceError, InvalidInputError, SkippedStepError
from .guidance import (
    GuidanceConfig,
    LatentReward,
    RewardEvaluation,
    StepRecord,
    guided_step,
    predicted_clean_latent,
    reused_displacement,
    window_steps,
)
from .offload import IdleOffload
from .options import declared_option, option, range_problem
from .presets import PRESETS
from .precision import LossScale, is_half
from .search import (
    Candidates,
    SearchOptions,
    SearchRecord,
    check_search_with_guidance,
    guided_steps_with_search,
    observation_steps,
    sample_candidates,
)

logger = logging.getLogger(__name__)

MAX_SEED = 2**64  # torch generators take seeds in [0, 2^64)
#: The default backbone's own defaults (steps, CFG scale, export grid): the options' declared defaults.
BACKBONE_DEFAULTS = backbone_defaults(backbone_class(DEFAULT_BACKBONE))


def _preset_defaults_help(name: str) -> str:
    """'; --preset tiny: 128, mini: 64' — the presets with their own default for option `name`, for its help."""
    found = [f"{preset.name}: {preset.defaults[name]}" for preset in PRESETS.values() if name in preset.defaults]
    return f"; --preset {', '.join(found)}" if found else ""



@dataclass
class SamplingOptions:
    """The sampler's own options (seed, steps, the shape model's CFG, the export grid), declared once with
    their ranges: the command line's (`generation.GenerationOptions` extends this) and the ones
    `GuidedSampler` checks its Python arguments against."""

    seed: int = option(0, "Random seed (noise; the camera-jitter stream is derived from it).", minimum=0, below=MAX_SEED)
    steps: int = option(BACKBONE_DEFAULTS["steps"], f"Sampler steps (default: the backbone's own; {DEFAULT_BACKBONE}: "
                        f"{BACKBONE_DEFAULTS['steps']}).", minimum=2, maximum=1000, why="20× hy3dgen's default of 50")
    cfg_scale: float = option(BACKBONE_DEFAULTS["cfg_scale"], "Classifier-free guidance scale of the shape model (default: "
                              f"the backbone's own; {DEFAULT_BACKBONE}: {BACKBONE_DEFAULTS['cfg_scale']}).",
                              aliases=("--cfg",), minimum=0)
    octree_resolution: int | None = option(
        None, f"Export grid (default: the preset's, else the backbone's; {DEFAULT_BACKBONE}: "
              f"{BACKBONE_DEFAULTS['octree_resolution']}{_preset_defaults_help('octree_resolution')}).",
        cli_type=int, minimum=16, maximum=1024,
        why="the export grid is (N+1)³ values: 4.3 GB of float32 at 1024; hy3dgen's default is 384")
    export_decoder: ExportDecoder = option(
        "dense", "The export's volume decoder: dense (hy3dgen's full grid), hierarchical (a coarse grid, then only "
        "near the surface: the same field, ~1/5 of the queries) or flashvdm (hierarchical, each chunk attending to "
        "its top-k latent tokens: hy3dgen's FlashVDM, an approximation). The guidance decode is unaffected.")


@dataclass(kw_only=True)
class RunRecord:
    """What a run recorded, whether or not it produced a mesh: the per-step records, the seeds, the costs."""

    records: list[StepRecord]
    seconds: float
    seed: int | None
    camera_seed: int | None = None
    offload_seconds: float = 0.0  # host<->device copies of --offload-idle, all steps together
    loss_scale_overflows: int = 0  # half-precision backwards redone at a smaller loss scale
    search: SearchRecord | None = None  # the candidates of a search (None: one sample)
    compute: Compute = field(default_factory=Compute)
    guidance_stopped_at_step: int | None = None  # the guided step whose r reached --stop-at-r (None: never stopped)


@dataclass(kw_only=True)
class SamplerOutput(RunRecord):
    """The result of a run: final latents, the decoded mesh, and what the run recorded."""

    latents: torch.Tensor
    mesh: Any | None  # trimesh.Trimesh, or None for output_type="latent"


class EmptyOutputError(EmptySurfaceError):
    """The run finished but its final latent decodes to no surface (no mesh to return).

    What the run recorded is attached as data: `run` (a RunRecord: step records, seeds, compute)
    and `records` (its step records), e.g. for a failed-run record.
    """

    def __init__(self, message: str, run: RunRecord):
        super().__init__(message)
        self.run = run

    @property
    def records(self) -> list[StepRecord]:
        """The failed run's step records."""
        return self.run.records


StepCallback = Callable[["GuidedSampler", int, float, dict[str, Any]], dict[str, Any] | None]

__all__ = ["EmptyOutputError", "GuidanceHook", "GuidedSampler", "LatentReward", "RewardEvaluation", "RunRecord",
           "SamplerOutput", "SamplingCall", "SamplingContext", "derive_camera_seed"]


@dataclass
class ExportOptions:
    """How the final latent becomes a mesh (None: the backbone's own level / cube)."""

    octree_resolution: int = EXPORT_RESOLUTION
    num_chunks: int = 8000
    mc_level: float | None = None
    box_v: float | None = None
    decoder: str = "dense"  # SamplingOptions.export_decoder

    def for_backbone(self, backbone: Backbone) -> dict[str, Any]:
        """`Backbone.to_mesh`'s keyword arguments (`decoder` only when not the dense default, which every
        backbone's export is)."""
        return dict(octree_resolution=self.octree_resolution, num_chunks=self.num_chunks,
                    bounds=backbone.bounds if self.box_v is None else self.box_v,
                    level=backbone.level if self.mc_level is None else self.mc_level,
                    **({} if self.decoder == "dense" else {"decoder": self.decoder}))


@dataclass
class SamplingCall:
    """One call of `GuidedSampler` (its keyword arguments, by hy3dgen's names there), checked by `GuidedSampler.check`.

    `image` is one image, or for a multi-view backbone a dict of views ("front" required).
    `guidance_scale` is the shape model's classifier-free guidance (hy3dgen's name); the critic's
    strength is `GuidanceConfig.scale`. `callback(sampler, step, sigma, state)` (hy3dgen's
    `callback_on_step_end`) is called after every step with state {"latents", "record",
    "displacement" (the guidance added at this step, float32, or None), "evaluation" (the critic's
    RewardEvaluation at a guided step: r, the views it saw, ...; or None), "candidates" (the indices
    of the live candidates, the rows of "latents")}; it may return {"latents": tensor} to replace
    the latents. Camera jitter draws from its own stream, seeded by `camera_seed` or else derived
    from the run's generator (its state before the noise is drawn): same seed → same cameras,
    different generators → different cameras; the seed used is in `SamplerOutput.camera_seed`.
    `export.box_v` and `export.mc_level` (the export's cube and level) default to the backbone's.

    `seed` (default 0) and `generator` are two ways to give the noise; giving both is refused (one
    would be ignored). `search` (vlm3d_ttg.search) samples several candidates and keeps the critic's
    favourite; with one candidate (the default) the run is exactly the plain loop. With several, the
    callback's "record" and "evaluation" are the first live candidate's.
    """

    image: Any
    steps: int = 50
    guidance_scale: float = 5.0
    seed: int | None = None
    generator: torch.Generator | None = None
    camera_seed: int | None = None
    output_type: str = "trimesh"
    export: ExportOptions = field(default_factory=ExportOptions)
    search: SearchOptions | None = None
    callback: StepCallback | None = None
    progress: bool = True


@dataclass
class Step:
    """One step of the loop as the hooks see it: σ, the records of the live candidates, and the tensors
    computed so far (`next_latents` is what the step lands on; hooks may replace it)."""

    index: int
    sigma: float
    records: dict[int, StepRecord]
    live: Candidates
    latents_in: torch.Tensor | None = None  # what the velocity was computed from (a float32 leaf for "xt")
    velocity: torch.Tensor | None = None
    next_latents: torch.Tensor | None = None
    displacement: torch.Tensor | None = None  # the guidance added (the first live candidate's)
    evaluation: RewardEvaluation | None = None  # the critic's verdict at a guided step (the first candidate's)

    @property
    def record(self) -> StepRecord:
        """The first live candidate's record (the one the callback and progress bar show)."""
        return self.records[self.live.alive[0]]


@dataclass
class GuidanceMemory:
    """What guidance keeps of one candidate from one step to the next (the cheaper-guidance knobs, issue 28)."""

    displacement: torch.Tensor | None = None  # the last guided step's applied displacement (for reuse_displacement)
    from_step: int | None = None  # the step that displacement was applied at
    stopped_at: int | None = None  # the guided step whose r reached stop_r: nothing is guided or reused after it


@dataclass
class Run:
    """One call's state between the hooks: the condition, the latents (a row per live candidate), the meters."""

    call: SamplingCall
    context: SamplingContext
    latents: torch.Tensor
    live: Candidates
    backbone: MeteredBackbone  # the backbone, its DiT calls counted
    reward: MeteredReward | None  # the reward, its critic calls counted
    compute: Compute
    offload: IdleOffload
    camera_generator: torch.Generator
    loss_scale: LossScale
    guided: set[int]
    row_contexts: dict[int, SamplingContext] = field(default_factory=dict)  # conditioning per candidate-chunk size
    observed: set[int] = field(default_factory=set)  # the steps whose x̂ the reward's observers are shown (ObserveHook)
    window: set[int] = field(default_factory=set)  # the σ window's steps (reuse_displacement acts at the unguided ones)
    memory: dict[int, GuidanceMemory] = field(default_factory=dict)  # per candidate index (GuidanceHook)

    def decode(self, latents: torch.Tensor) -> Any | None:
        """The exported mesh of one final latent (the backbone's export, its VAE next to the DiT)."""
        self.offload.activate("denoise")
        with self.compute.timed("decode"):
            return self.backbone.to_mesh(latents, **self.call.export.for_backbone(self.backbone))


StepHook = Callable[[Run, Step], None]


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
        self.guidance_hook = GuidanceHook(self.config)
        self.observe_hook = ObserveHook(self)

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

    # ----------------------------------------------------------------- the run
    def __call__(self, image: Any, *, num_inference_steps: int = 50, guidance_scale: float = 5.0,
                 seed: int | None = None, generator: torch.Generator | None = None, camera_seed: int | None = None,
                 output_type: str = "trimesh", octree_resolution: int = EXPORT_RESOLUTION, num_chunks: int = 8000,
                 mc_level: float | None = None, box_v: float | None = None,
                 callback_on_step_end: StepCallback | None = None, progress: bool = True,
                 search: SearchOptions | None = None, export_decoder: str = "dense") -> SamplerOutput:
        """Run the (guided) flow loop for one conditioning input; return latents, mesh and records.

        The arguments are hy3dgen's pipeline's plus the run's own; `SamplingCall` says what each does.
        With `output_type="trimesh"` a final latent that decodes to no surface raises EmptyOutputError
        (an EmptySurfaceError) with the run's records attached as data (`.run`, `.records`).
        """
        call = self.check(SamplingCall(image, num_inference_steps, guidance_scale, seed, generator, camera_seed,
                                       output_type, ExportOptions(octree_resolution, num_chunks, mc_level, box_v,
                                                     export_decoder),
                                       search, callback_on_step_end, progress))
        started = time.perf_counter()
        compute, loss_scale = Compute(), LossScale.for_half_backward(self.half_backward)
        try:
            run = self._start(call, compute, loss_scale)  # 1. the condition and the initial noise
            if call.search.searching:  # best-of-N: a function around the loop (search.py), its own step 6
                winner, mesh = sample_candidates(self._loop, run, [self.guidance_hook, self.observe_hook])
            else:
                self._loop(run, [self.guidance_hook, self.observe_hook])  # 2.–5., every step
                # 6. Decode the final latent to a mesh (the backbone's export, with its VAE next to the DiT).
                winner, mesh = 0, run.decode(run.latents) if call.output_type == "trimesh" else None
        finally:
            # Every model back where it was, also when a step raised or the user pressed Ctrl-C.
            self.offload.restore()
        chosen = run.live.alive[winner]
        recorded = RunRecord(records=run.live.records[chosen], seconds=time.perf_counter() - started,
                             seed=call.seed, camera_seed=call.camera_seed, offload_seconds=self.offload.seconds,
                             loss_scale_overflows=loss_scale.overflows, search=run.live.found, compute=compute,
                             guidance_stopped_at_step=run.memory[chosen].stopped_at if chosen in run.memory else None)
        if call.output_type == "trimesh" and mesh is None:  # never a silent mesh=None
            raise EmptyOutputError("The final latent decodes to no surface (empty mesh) at mc_level "
                                   f"{call.export.mc_level}; lower --cfg-scale or try another seed.", recorded)
        return SamplerOutput(latents=run.latents, mesh=mesh, **vars(recorded))

    def check(self, call: SamplingCall) -> SamplingCall:
        """The call's inputs checked at the API boundary (what the CLI checks) and its defaults filled in:
        seed 0 when neither seed nor generator is given, the noise generator and the camera seed."""
        _check_call(call)
        if call.seed is None and call.generator is None:
            call.seed = 0  # the documented default: seed 0
        call.image = str(call.image) if isinstance(call.image, PurePath) else call.image  # hy3dgen reads str paths
        if call.output_type not in ("trimesh", "latent"):
            raise InvalidInputError(f"output_type must be 'trimesh' or 'latent', got {call.output_type!r}")
        check_views(call.image, self.backbone.views)
        call.search = (call.search or SearchOptions()).validate()
        check_search_with_guidance(call.search, self.config)
        if call.search.searching and self.reward is None:
            raise InvalidInputError("Candidate search needs a reward (critic) to choose among the candidates.")
        if call.generator is None and call.seed is not None:
            call.generator = torch.Generator(device="cpu").manual_seed(call.seed)
        if call.camera_seed is None:
            call.camera_seed = derive_camera_seed(call.generator)
        return call

    def _start(self, call: SamplingCall, compute: Compute, loss_scale: LossScale) -> Run:
        """1. Encode the condition; draw the initial noise (one row; search draws its own, one per candidate)."""
        self.offload.activate("condition")
        with compute.timed("condition"):
            context = self.prepare(call.image, num_inference_steps=call.steps, guidance_scale=call.guidance_scale)
        self.offload.activate("denoise")
        if context.batch_size != 1 and (self.config.active or call.search.searching):
            raise InvalidInputError("Guided sampling and candidate search take one conditioning image (or one "
                                    "multi-view dict) per call.")
        latents = None if call.search.searching else self.backbone.noise(context.batch_size, call.generator)
        guided = (set(guided_steps_with_search(context.sigmas, self.config, call.search))
                  if self.reward is not None else set())
        observed = set(observation_steps(context.sigmas, self.config, call.search)) if self.reward is not None else set()
        window = set(window_steps(context.sigmas, self.config)) if guided else set()
        return Run(call, context, latents, Candidates.start(1, None), MeteredBackbone(self.backbone, compute),
                   MeteredReward(self.reward, compute) if self.reward is not None else None, compute, self.offload,
                   # Camera jitter draws from its own stream so guidance never shifts the sampler's noise.
                   torch.Generator(device="cpu").manual_seed(call.camera_seed), loss_scale, guided, observed=observed,
                   window=window)

    # ----------------------------------------------------------------- the loop
    def _loop(self, run: Run, hooks: Sequence[StepHook]) -> None:
        """The flow loop: for each σ, the velocity, the sampler's own step, then the step hooks."""
        steps = len(run.context.sigmas) - 1
        bar = tqdm(total=steps, desc="guided sampling" if run.guided else "sampling", disable=not run.call.progress,
                   leave=False)
        for i in range(steps):
            sigma = run.context.sigmas[i]
            step = Step(i, sigma, run.live.new_records(i, sigma, i in run.guided), run.live)
            # After --stop-at-r was reached, a planned guided step is an unguided one (before the velocity:
            # the exact gradient's graph is built only for guided steps).
            self.guidance_hook.mark_stopped(run, step)

            # 2. The velocity (with a graph only for the exact gradient), candidates in batches.
            self._velocity(run, step)

            # 3. The sampler's own step (the backbone's Euler step: x + (σ_next − σ)·v).
            step.next_latents = self.backbone.step(step.velocity.detach(), i, run.latents, run.context)

            # 3b. Search: the critic scores every candidate's x̂ (forward only); the best continue.
            # 4. Guidance: x_next = Sampler(x, σ) + d(∇r)   (paper eq. 10; guidance.guided_step);
            #    at the window's unguided steps, with --reuse-displacement, a part of the last d.
            for hook in hooks:
                hook(run, step)
            run.latents = step.next_latents.detach()
            run.live.append(step.records)

            # 5. The step callback (diffusers' callback_on_step_end).
            if run.call.callback is not None:
                state = {"latents": run.latents, "record": step.record, "displacement": step.displacement,
                         "evaluation": step.evaluation, "candidates": list(run.live.alive)}
                replaced = run.call.callback(self, i, sigma, state)
                if replaced and "latents" in replaced:
                    run.latents = replaced["latents"]
            bar.set_postfix(_progress_postfix(step.record), refresh=False)
            bar.update(1)
        bar.close()

    def _velocity(self, run: Run, step: Step) -> None:
        """Fill `step.latents_in` (a float32 leaf for the exact gradient) and `step.velocity`; the timings go
        to every live candidate's record (one batched call serves them all)."""
        record = step.record
        exact_gradient = record.guided and self.config.grad_mode == "xt"
        record.timings["offload"] = self.offload.activate("denoise")
        with run.compute.timed("dit", record), torch.set_grad_enabled(exact_gradient):
            # xt: a float32 leaf, so the (loss-scaled) gradient reaches it in float32.
            step.latents_in = run.latents.detach().float().requires_grad_(True) if exact_gradient else run.latents
            step.velocity = _batched_velocity(run, step.latents_in.to(self.backbone.dtype), step.index)
        for other in step.records.values():
            other.timings.setdefault("dit", record.timings["dit"])
            other.timings.setdefault("offload", record.timings["offload"])


def _batched_velocity(run: Run, latents: torch.Tensor, step: int) -> torch.Tensor:
    """The velocity for a batch of candidates, the search's batch of rows per DiT call (one row: the
    plain call). The conditioning repeated for each chunk size is built once per run."""
    batch, parts = run.call.search.batch(), []
    for start in range(0, latents.shape[0], batch):
        chunk = latents[start:start + batch]
        rows = chunk.shape[0]
        if rows not in run.row_contexts:
            run.row_contexts[rows] = run.backbone.for_rows(run.context, rows)
        parts.append(run.backbone.velocity(chunk, step, run.row_contexts[rows]))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class ObserveHook:
    """A step hook after guidance for the reward's observers (weight-0 terms that fit something to the first
    shape they see, such as the silhouette term's camera): in a run that guides nothing, the x̂ of the
    observation steps (`search.observation_steps`) is shown to those still waiting for a shape — candidate
    0's, recomputed on one row at the run's condition, as a guided run's first x̂ is — and every step's end
    is told to the reward (`end_of_step`: where such a fit happened). No DiT call is counted: it is a record's."""

    def __init__(self, sampler: "GuidedSampler"):
        self.sampler = sampler

    def __call__(self, run: Run, step: Step) -> None:
        reward = self.sampler.reward
        if reward is None:
            return
        waiting = any(getattr(observer, "wants_shape", False) for observer in getattr(reward, "observers", ()))
        if waiting and not run.guided and step.index in run.observed and run.live.alive[0] == 0:
            self._show(run, step, reward)
        end_of_step = getattr(reward, "end_of_step", None)
        if end_of_step is not None:
            end_of_step(step.index, step.sigma)

    def _show(self, run: Run, step: Step, reward: Any) -> None:
        sampler, latents = self.sampler, run.latents[:1].detach()
        with torch.no_grad():
            sampler.offload.activate("denoise")
            velocity = sampler.velocity(latents.to(sampler.backbone.dtype), step.index, run.context)
            clean = predicted_clean_latent(latents.float(), velocity.float(), step.sigma)
            try:
                reward.observe(clean)
            except EmptySurfaceError:
                pass  # no surface at this step: the next observation step's x̂ may have one


class GuidanceHook:
    """Step 4 of the loop as a step hook: at a guided step, ask the critic at each live candidate's x̂
    and move its next latent by the displacement of `guidance.guided_step` (paper eq. 10). Two cheaper
    knobs act here too, per candidate and without a critic call: `reuse_displacement` adds a part of the
    last guided displacement at the window's unguided steps; `stop_r` ends guidance once r reached it."""

    def __init__(self, config: GuidanceConfig):
        self.config = config

    def __call__(self, run: Run, step: Step) -> None:
        """Guide the step, or reuse the last displacement (a no-op at any other step)."""
        alive = run.live.alive
        guiding = any(step.records[j].guided for j in alive)
        if not guiding and not any(self._reusable(run, step, j) for j in alive):
            return
        if guiding:
            step.record.timings["offload"] += run.offload.activate("critic")
        with run.compute.timed("guidance") if guiding else nullcontext():
            moved = []
            for row, j in enumerate(alive):
                rows = slice(row, row + 1) if len(alive) > 1 else slice(None)
                record = step.records[j]
                if record.guided:
                    displacement, evaluation = self.guide(run, step, rows, record)
                    self._remember(run, step.index, j, displacement, record)
                else:
                    displacement, evaluation = self.reuse(run, step, rows, j), None
                next_row = step.next_latents[rows]
                moved.append(next_row if displacement is None else next_row + displacement.to(next_row.dtype))
                if row == 0:
                    step.displacement, step.evaluation = displacement, evaluation
            step.next_latents = moved[0] if len(moved) == 1 else torch.cat(moved)

    def mark_stopped(self, run: Run, step: Step) -> None:
        """Make this step unguided (`record.stopped`) for the candidates whose guidance stopped at stop_r."""
        for j, record in step.records.items():
            memory = run.memory.get(j)
            if record.guided and memory is not None and memory.stopped_at is not None:
                record.guided, record.stopped = False, True

    def _remember(self, run: Run, index: int, j: int, displacement: torch.Tensor | None, record: StepRecord) -> None:
        """Keep candidate j's displacement for reuse (None: the step applied none, so none is reused) and
        stop its guidance when the step's r reached stop_r."""
        config = self.config
        if config.reuse_displacement == 0 and config.stop_r is None:
            return
        memory = run.memory.setdefault(j, GuidanceMemory())
        if config.reuse_displacement > 0:
            memory.displacement, memory.from_step = displacement, index
        if config.stop_r is not None and record.r is not None and record.r >= config.stop_r:
            memory.stopped_at = index
            logger.info("step %d (σ=%.3f): r = %+.3f ≥ stop_r %+.3f, guidance stops here", index, record.sigma,
                        record.r, config.stop_r)

    def _reusable(self, run: Run, step: Step, j: int) -> bool:
        """Whether candidate j reuses a displacement at this unguided step: reuse on, a step inside the σ window,
        a displacement from an earlier guided step of this candidate, guidance not stopped."""
        memory = run.memory.get(j)
        return (self.config.reuse_displacement > 0 and step.index in run.window and memory is not None
                and memory.displacement is not None and memory.stopped_at is None)

    def reuse(self, run: Run, step: Step, rows: slice, j: int) -> torch.Tensor | None:
        """reuse_displacement × candidate j's last guided displacement, capped by max_step_ratio at this step's
        sampler step (`guidance.reused_displacement`), recorded on its record; None when nothing is reused."""
        if not self._reusable(run, step, j):
            return None
        memory, record = run.memory[j], step.records[j]
        sampler_step = step.next_latents[rows].float() - run.latents[rows].float()
        displacement, capped = reused_displacement(memory.displacement, sampler_step, self.config.reuse_displacement,
                                                   self.config.max_step_ratio)
        record.sampler_step_norm = float(torch.linalg.vector_norm(sampler_step, dtype=torch.float64))
        record.reused = {"norm": float(torch.linalg.vector_norm(displacement, dtype=torch.float64)),
                         "from_step": memory.from_step, "capped": capped}
        return displacement

    def guide(self, run: Run, step: Step, rows: slice, record: StepRecord
              ) -> tuple[torch.Tensor | None, RewardEvaluation | None]:
        """Ask the critic at x̂ of the candidate in `rows` and build its displacement (summed over inner
        steps); fill its record, or mark the step skipped. Returns (displacement or None, the first evaluation)."""
        config, sigma = self.config, step.sigma
        latents, velocity, sampler_next = run.latents[rows], step.velocity[rows], step.next_latents[rows]
        record.sampler_step_norm = float(torch.linalg.vector_norm(sampler_next.float() - latents.float(), dtype=torch.float64))
        if config.grad_mode == "xt":
            # Exact: r(x̂(x)) differentiated through the DiT's velocity to x.
            latents_in = step.latents_in if len(run.live.alive) == 1 else None
            clean = predicted_clean_latent(latents_in, velocity.float(), sigma)
            target = latents_in
        else:
            # Straight-through: g = ∇_x̂ r applied to x (∂x̂/∂x ≈ I); no DiT backward.
            clean = predicted_clean_latent(latents.float(), velocity.detach().float(), sigma).requires_grad_(True)
            target = clean
        total = torch.zeros_like(clean, dtype=torch.float32)
        first = None
        for inner in range(config.inner_steps):
            outcome = _reward_gradient(run, clean + total if inner else clean, target)
            if isinstance(outcome, str):
                record.skipped = outcome
                break
            evaluation, gradient = outcome
            try:
                moved = guided_step(latents, sampler_next, velocity.detach(), sigma, gradient, config)
            except SkippedStepError as exc:
                record.skipped = exc.reason
                logger.warning("step %d (σ=%.3f): skipped (%s): %s", record.step, sigma, exc.reason, exc)
                break
            total = total + moved.displacement
            grad_norm = float(torch.linalg.vector_norm(gradient, dtype=torch.float64))
            if inner == 0:
                first = evaluation
                _record_first(record, evaluation, grad_norm, moved.capped, run.loss_scale)
            else:
                record.inner.append({"r": float(evaluation.r.detach()), "p_yes": evaluation.p_yes,
                                     "grad_norm": grad_norm, "capped": moved.capped, "terms": dict(evaluation.terms),
                                     "timings": evaluation.timings, **evaluation.info})
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


def _record_first(record: StepRecord, evaluation: RewardEvaluation, grad_norm: float, capped: bool,
                  loss_scale: LossScale) -> None:
    """A guided step's record from its first (outer) evaluation."""
    record.r, record.p_yes, record.grad_norm, record.capped = float(evaluation.r.detach()), evaluation.p_yes, grad_norm, capped
    record.loss_scale = loss_scale.value if loss_scale.enabled else None
    record.reward_info = dict(evaluation.info)
    record.terms = dict(evaluation.terms)
    record.timings.update(evaluation.timings)


def _reward_gradient(run: Run, clean: torch.Tensor, target: torch.Tensor) -> tuple[RewardEvaluation, torch.Tensor] | str:
    """(the critic's evaluation at `clean`, ∇_target r in float32), or the reason the step is skipped."""
    assert run.reward is not None
    try:
        evaluation = run.reward(clean, generator=run.camera_generator)
        with deterministic_backward(target.device):
            gradient = run.reward.gradient(evaluation, target, run.loss_scale)
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


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and bool(np.isfinite(value))


def _check_declared(field_name: str, value: Any, *, name: str | None = None, none_allowed: bool = False) -> None:
    """Refuse a Python argument outside the range its option declares (SamplingOptions: what the CLI checks)."""
    problem = range_problem(*declared_option(SamplingOptions, field_name), value, name=name, say_kind=True,
                            none_allowed=none_allowed)
    if problem:
        raise InvalidInputError(problem)


def _check_call(call: SamplingCall) -> None:
    """The sampler's inputs, checked at the API boundary (not deep inside hy3dgen): what the CLI checks."""
    import os

    from PIL import Image

    from .images import check_object, open_image

    image = call.image
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
    steps = call.steps
    _check_declared("steps", steps, name="num_inference_steps")
    _check_declared("cfg_scale", call.guidance_scale, name="guidance_scale (the shape model's CFG)")
    if call.generator is not None and call.seed is not None:
        raise InvalidInputError(f"Give seed or generator, not both: seed={call.seed!r} would be ignored (the generator "
                                "draws the noise). Pass seed=None with a generator.")
    _check_export(call.export)
    for name, value in (("seed", call.seed), ("camera_seed", call.camera_seed)):
        _check_declared("seed", value, name=name, none_allowed=True)
    if call.generator is not None and not isinstance(call.generator, torch.Generator):
        raise InvalidInputError(f"generator must be a torch.Generator or None, got {type(call.generator).__name__}")


def _check_export(export: ExportOptions) -> None:
    """The export options."""
    _check_declared("octree_resolution", export.octree_resolution)
    if export.decoder not in EXPORT_DECODERS:
        raise InvalidInputError(f"export_decoder must be one of {', '.join(EXPORT_DECODERS)}; got {export.decoder!r}.")
    if not _whole(export.num_chunks) or export.num_chunks < 1:
        raise InvalidInputError(f"num_chunks must be an integer ≥ 1, got {export.num_chunks!r}")
    # None: the backbone's own level and cube (Backbone.level / Backbone.bounds).
    if export.mc_level is not None and (not _finite(export.mc_level) or not -1 < export.mc_level < 1):
        raise InvalidInputError(f"mc_level must be a finite number in (-1, 1) or None, got {export.mc_level!r}")
    if export.box_v is not None and (not _finite(export.box_v) or export.box_v <= 0):
        raise InvalidInputError(f"box_v must be a finite number > 0 or None, got {export.box_v!r}")


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
