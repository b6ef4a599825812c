"""A run as an object: what it writes (`OutputPlan`), what it is (`build_run` → `Run`), what it did
(`Run.sample` → `RunOutput`) and its record (`describe`, a pure manifest dict).

    plan = OutputPlan(out, manifest)                 # checked before any model loads
    plan.check(inputs)
    run = build_run(models, prompt=..., guidance=..., options=..., image=...)
    output = run.sample(progress=True)               # never raises for an empty surface: output.mesh is None
    content = describe(run, output, plan)
    ... stage every output of `plan` with io.OutputSet, the manifest last ...

`generation.generate_mesh` is these steps in order; the CLI, the app and the benchmark call it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import InvalidInputError
from .images import to_uint8
from .inputs import prepare_condition_image
from .sampler import StepCallback


def failed_run_path(manifest_path: str | os.PathLike) -> Path:
    """Where a failed run's record goes: next to the manifest, never over it ('run.json' → 'run.failed.json')."""
    path = Path(manifest_path)
    return path.with_name(path.stem + ".failed" + (path.suffix or ".json"))


def view_sheet_names(steps: set[int] | list[int], candidates: bool = False) -> list[str]:
    """The file names a run writes into its views folder: one sheet per kept guided step, the final
    mesh's, and the candidates' (with a search); known before the run, so they are checked then."""
    return [f"step_{step:03d}.png" for step in sorted(steps)] + ["final.png"] + (["candidates.png"] if candidates else [])


def steps_to_keep(keep_views: str | list[int], guided: list[int]) -> set[int]:
    """Which guided steps' views to keep: "summary" (first, middle, last guided step), "all",
    "none", or a list of step indices."""
    if isinstance(keep_views, (list, tuple, set)):
        return {int(s) for s in keep_views}
    if keep_views == "all":
        return set(guided)
    if keep_views == "none" or not guided:
        return set()
    if keep_views == "summary":
        return {guided[0], guided[len(guided) // 2], guided[-1]}
    raise InvalidInputError(f"keep_views must be 'summary', 'all', 'none' or a list of steps, got {keep_views!r}")


class ViewCapture:
    """A step callback that keeps what the critic saw at chosen guided steps (uint8, on the CPU)."""

    def __init__(self, keep_views: str | list[int], guided: list[int], then: StepCallback | None = None):
        self.keep = steps_to_keep(keep_views, guided)
        self.views: dict[int, torch.Tensor] = {}
        self.then = then

    def __call__(self, sampler: Any, step: int, sigma: float, state: dict[str, Any]) -> dict[str, Any] | None:
        from .interrupts import check

        check()  # a stop signal some library swallowed stops the run at this step boundary
        evaluation = state.get("evaluation")
        if step in self.keep and evaluation is not None and evaluation.images is not None:
            self.views[step] = to_uint8(evaluation.images).cpu()
        return self.then(sampler, step, sigma, state) if self.then is not None else None


def _condition(front: Any, views: dict[str, Any], backbone: Any) -> Any:
    """What the backbone is conditioned on: the front image, or with extra views a dict of all of
    them (each checked and prepared like the front); InvalidInputError when the backbone cannot take them."""
    from .backbones import SINGLE_VIEW, VIEW_NAMES, check_views

    if not views:
        if backbone.views != SINGLE_VIEW:
            raise InvalidInputError(f"The {backbone.name} model here is multi-view: give the front image plus at "
                                    f"least one of {', '.join(v for v in VIEW_NAMES if v != 'front')}.")
        return front
    if "front" in views:
        raise InvalidInputError("`views` holds the extra views (left, back, right); the front is the image itself.")
    condition = {"front": front, **{name: prepare_condition_image(path) for name, path in views.items()}}
    check_views(condition, backbone.views)
    return condition


@dataclass
class OutputPlan:
    """Every file one run may write, known before anything loads: checked as one (`check`) and written
    as one unit (`io.OutputSet`, the manifest last)."""

    out: Path
    manifest: Path
    plot: Path | None = None
    views_dir: Path | None = None
    view_steps: set[int] = field(default_factory=set)  # the guided steps whose view sheets are written
    candidates: bool = False  # a candidate search: its sheet is written too
    input_image: Path | None = None  # the input image text-to-image makes (text-to-3D runs)
    unguided: "OutputPlan | None" = None  # --compare: the unguided run's own plan, written with this one
    compare_sheet: Path | None = None  # --compare: the contact sheet of both meshes

    def __post_init__(self) -> None:
        self.out, self.manifest = Path(self.out), Path(self.manifest)
        self.plot = Path(self.plot) if self.plot is not None else None
        self.views_dir = Path(self.views_dir) if self.views_dir is not None else None
        self.input_image = Path(self.input_image) if self.input_image is not None else None
        self.compare_sheet = Path(self.compare_sheet) if self.compare_sheet is not None else None

    @classmethod
    def compared(cls, out: str | os.PathLike, manifest: str | os.PathLike, **outputs: Any) -> "OutputPlan":
        """The plan of a guided run with its unguided twin (`generate --compare`): the guided run's `outputs`
        as the constructor takes them, plus the unguided mesh and manifest and the compare sheet
        (`vlm3d_ttg.compare`'s names)."""
        from .compare import compare_sheet_path_for, unguided_path_for
        from .manifest import manifest_path_for

        twin = unguided_path_for(out)
        return cls(out, manifest, **outputs, unguided=cls(twin, manifest_path_for(twin)),
                   compare_sheet=compare_sheet_path_for(out))

    @property
    def failed_record(self) -> Path:
        """Where the record of a run that produced no mesh goes."""
        return failed_run_path(self.manifest)

    @property
    def silhouette_mask(self) -> Path:
        """The input-silhouette mask every run writes next to its mesh."""
        from .silhouette import silhouette_path_for

        return silhouette_path_for(self.out)

    def view_sheet(self, name: str) -> Path:
        """The path of the view sheet `name` (one of `view_sheet_names`) in the views folder."""
        if self.views_dir is None:
            raise InvalidInputError("This run saves no views (no views folder).")
        return self.views_dir / name

    def files(self) -> dict[str, Path | None]:
        """Every file the run may write (label → path; None: not written this run), each view sheet by name."""
        plan: dict[str, Path | None] = {"--out": self.out, "--manifest": self.manifest, "the r plot": self.plot,
                                        "the failed-run record": self.failed_record,
                                        "the generated input image": self.input_image,
                                        "the silhouette mask": self.silhouette_mask}
        if self.views_dir is not None:
            for name in view_sheet_names(self.view_steps, self.candidates):
                plan[f"--save-views ({name})"] = self.view_sheet(name)
        if self.unguided is not None:
            plan.update({f"the unguided run's {label.lstrip('-')}": path for label, path in self.unguided.files().items()})
            plan["the compare sheet"] = self.compare_sheet
        return plan

    def check(self, inputs: dict[str, str | os.PathLike | None] | None = None, *,
              read_folders: dict[str, str | os.PathLike | None] | None = None, writable: bool = True) -> None:
        """Raise InvalidInputError, before any work, if an output cannot be written (with `writable`: a
        folder in the way, no permission, a mesh format or manifest suffix we cannot write, --plot without
        matplotlib) or would replace another output, an input or a file of a checkpoint in `read_folders`
        (`io.check_output_plan`)."""
        from .io import check_output_plan, check_writable

        if writable:
            from .export import check_mesh_path

            check_writable(self.out)
            check_mesh_path(self.out)
            if self.manifest.suffix.lower() != ".json":
                raise InvalidInputError(f"--manifest must be a .json file, got '{self.manifest}'.")
            if self.views_dir is not None and self.views_dir.exists() and not self.views_dir.is_dir():
                raise InvalidInputError(f"--save-views '{self.views_dir}' exists and is not a folder.")
            for label, path in self.files().items():
                if path is not None and label != "--out":
                    check_writable(path)
            if self.plot is not None:
                try:
                    import matplotlib  # noqa: F401
                except ImportError:
                    raise InvalidInputError("--plot needs matplotlib: pip install matplotlib") from None
        check_output_plan(self.files(), inputs, read_folders=read_folders)


@dataclass
class Run:
    """One run, built and not yet sampled: the models' backbone, the critic, the reward (with the
    silhouette term), the sampler and the step callback that keeps views."""

    models: Any  # generation.LoadedModels
    prompt: str
    options: Any  # generation.GenerationOptions (validated)
    guidance: Any  # guidance.GuidanceConfig
    postprocess: Any  # export.PostprocessConfig | None
    search: Any  # search.SearchOptions | None
    condition: Any  # what the backbone is conditioned on (the front image, or a dict of views)
    critic: Any
    silhouette: Any  # silhouette.SilhouetteTerm (a term of `reward`, weight μ; measured in every run)
    reward: Any  # reward.VLMReward
    sampler: Any  # sampler.GuidedSampler
    capture: Any  # ViewCapture (the step callback)
    octree_resolution: int
    image: str | None = None  # the input image as the user named it
    generated_input: Any = None  # text2image.GeneratedInput (text-to-3D runs)
    views: dict[str, Any] = field(default_factory=dict)  # a multi-view run's extra views

    def sample(self, *, progress: bool = True) -> "RunOutput":
        """Sample, postprocess and score the final mesh; an empty final surface gives `mesh=None`, the
        step records kept (the caller writes the failed-run record)."""
        from .export import postprocess_mesh
        from .sampler import EmptyOutputError

        options = self.options
        try:
            output = self.sampler(self.condition, num_inference_steps=options.steps, guidance_scale=options.cfg_scale,
                                  seed=options.seed, octree_resolution=self.octree_resolution, progress=progress,
                                  callback_on_step_end=self.capture, search=self.search,
                                  export_decoder=options.export_decoder)
            mesh = output.mesh
        except EmptyOutputError as empty:  # no surface: the run's records stay, as data
            output, mesh = empty.run, None
        if mesh is not None and self.postprocess is not None:
            mesh = postprocess_mesh(mesh, self.postprocess)
        final, measures = self._score(mesh, output) if mesh is not None and len(mesh.faces) else (None, {})
        return RunOutput(sampled=output, mesh=mesh, final=final, measures=measures)

    def _score(self, mesh: Any, output: Any) -> tuple[Any, dict[str, float]]:
        """The reward's score of the mesh we write (after any postprocessing), from fixed cameras, and what
        its terms measure of it besides r (the silhouette's IoU: `VLMReward.measure_mesh`)."""
        try:
            self.sampler.offload.activate("critic")
            tic = time.perf_counter()
            final = self.reward.score_mesh(mesh.vertices, mesh.faces)
            output.compute.critic_forwards += 1
            output.compute.add_time("final_score", time.perf_counter() - tic)
        finally:
            self.sampler.offload.restore()
        frame = self.models.backbone.export_frame(self.octree_resolution)
        return final, self.reward.measure_mesh(mesh.vertices, mesh.faces, frame)


@dataclass
class RunOutput:
    """What one run produced: the sampler's output (records, search, compute), the mesh to write (None:
    the final latent had no surface) and the reward's score of it (None without a mesh)."""

    sampled: Any  # sampler.SamplerOutput
    mesh: Any
    final: Any  # reward evaluation of the final mesh
    measures: dict[str, float] = field(default_factory=dict)  # what the terms measure of it besides r

    @property
    def final_r(self) -> float | None:
        """The final mesh's r (None without one)."""
        return float(self.final.r) if self.final is not None else None


def build_run(models: Any, *, prompt: str, guidance: Any, options: Any, postprocess: Any = None,
              image: str | os.PathLike | None = None, generated_input: Any = None,
              views: dict[str, str | os.PathLike] | None = None, search: Any = None,
              keep_views: str | list[int] = "summary", step_callback: Any = None,
              octree_resolution: int) -> Run:
    """Build one run on loaded models (`generation.LoadedModels`): prepare the input, the critic, the
    reward with its silhouette term and the sampler. Exactly one of `image` and `generated_input`;
    raises InvalidInputError for inputs the backbone cannot take. `options` (generation.GenerationOptions)
    are validated; `octree_resolution` is the export grid (generation.export_resolution by default)."""
    from .critic.families import build_critic
    from .reward import VLMReward
    from .sampler import GuidedSampler
    from .silhouette import SilhouetteTerm

    if (image is None) == (generated_input is None):
        raise InvalidInputError("generate_mesh needs exactly one of `image` and `generated_input`.")
    options = options.validate()
    backbone = models.backbone
    front = prepare_condition_image(generated_input.image if generated_input is not None else image)
    condition = _condition(front, views or {}, backbone)
    reference = backbone.reference_image(front, guidance.view_size) if guidance.reference else None
    critic = build_critic(models.vlm, models.processor, prompt, guidance.query, reference=reference,
                          layout=guidance.view_layout, grid_size=guidance.view_size,
                          activation_checkpointing=options.checkpointing)
    # The input-silhouette term (weight μ; at weight 0 the reward keeps it as an observer, so its IoU is
    # measured in every run): vlm3d_ttg.silhouette.
    silhouette = SilhouetteTerm(backbone.input_foreground(front, guidance.view_size))
    reward = VLMReward.from_config(backbone, critic, guidance, terms=[(guidance.silhouette_weight, silhouette)])
    sampler = GuidedSampler(backbone, reward, guidance, offload_idle=options.offload_idle)
    capture = ViewCapture(keep_views, sampler.guided_steps(options.steps, search), then=step_callback)
    return Run(models=models, prompt=prompt, options=options, guidance=guidance, postprocess=postprocess, search=search,
               condition=condition, critic=critic, silhouette=silhouette, reward=reward, sampler=sampler, capture=capture,
               octree_resolution=octree_resolution,
               image=None if image is None else str(image), generated_input=generated_input, views=dict(views or {}))


def describe(run: Run, output: RunOutput, plan: OutputPlan) -> dict[str, Any]:
    """The run's manifest (without outputs and total time, which the writer adds): what ran, on what,
    with which settings, step by step, and what the critic and the silhouette made of the result."""
    from .manifest import package_versions

    models, backbone, options, sampled = run.models, run.models.backbone, run.options, output.sampled
    generated, final = run.generated_input, output.final
    return {
        "tool": "vlm3d-ttg generate",
        "image": str(generated.path if generated is not None else run.image),
        "input_image": generated.to_dict() if generated is not None else {"generated": False},
        "views": {name: str(path) for name, path in run.views.items()},  # a multi-view run's extra views
        "conditioned_on": list(run.condition) if isinstance(run.condition, dict) else ["front"],  # what the model saw
        "prompt": run.prompt,
        "seed": options.seed,
        "steps": options.steps,
        "cfg_scale": options.cfg_scale,
        "options": options.to_dict(),
        "device": str(backbone.device),
        "dtype": str(backbone.dtype),
        "models": {"shape": models.shape_id, "backbone": backbone.name, "critic": models.vlm_id,
                   "critic_family": run.critic.family,
                   "tiny": models.preset == "tiny",  # an older reader's key, kept: `preset` says it all
                   "preset": models.preset},
        "guidance": run.guidance.to_dict(),
        "camera_seed": sampled.camera_seed,
        "precision": {
            "shape_model": str(backbone.dtype),
            "guidance_decode": str(run.reward.decode_dtype),
            "critic": str(next(models.vlm.parameters()).dtype),
            "loss_scaled_backward": run.sampler.half_backward,
            "loss_scale_overflows": sampled.loss_scale_overflows,
        },
        "memory": {"critic_checkpointing": options.checkpointing, "offload_idle": options.offload_idle,
                   "offload_seconds": sampled.offload_seconds},
        "export": {"octree_resolution": run.octree_resolution, **(run.postprocess.__dict__ if run.postprocess else {})},
        "versions": package_versions(),
        "records": [r.to_dict() for r in sampled.records],
        "sampling_seconds": sampled.seconds,
        "search": sampled.search.to_dict() if sampled.search is not None else None,
        "compute": sampled.compute.to_dict(),
        # --stop-at-r: the guided step whose r reached it (None: never reached); absent without the rule.
        **({"guidance_stopped_at_step": sampled.guidance_stopped_at_step} if run.guidance.stop_r is not None else {}),
        "silhouette": run.silhouette.record(run.guidance.silhouette_weight, backbone.export_frame(run.octree_resolution),
                                            plan.silhouette_mask),
        "final_silhouette_iou": output.measures.get("silhouette.final_iou"),
        "final_r": output.final_r,
        "final_p_yes": final.p_yes if final is not None else None,
        "final_terms": dict(final.terms) if final is not None else {},
        **({"faces": int(len(output.mesh.faces))} if output.mesh is not None else
           {"error": "the final latent decodes to no surface"}),
    }
