"""One generation run, end to end: load models, sample with guidance, write mesh, manifest and pictures.

`vlm3d-ttg generate` is a thin parser over `generate_mesh`; scripts (benchmarks) call it too.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .errors import EmptySurfaceError, InvalidInputError
from .backbones import DEFAULT_BACKBONE, backbone_class, backbone_defaults
from .export import PostprocessConfig, save_mesh
from .guidance import GuidanceConfig, StepRecord
from .io import OutputSet, atomic_path
from .run import failed_run_path, view_sheet_names  # noqa: F401  (re-exported: the run's file names)
from .options import Checks, option
from .presets import PRESETS
from .manifest import write_manifest
from .sampler import BACKBONE_DEFAULTS, SamplingOptions, StepCallback
from .text2image import DEFAULT_TEXT_TO_IMAGE_MODEL
from .search import SearchOptions, SearchRecord
from .models import critic_family_for, load_vlm, resolve_device, resolve_dtype

logger = logging.getLogger(__name__)


@dataclass
class GenerationOptions(SamplingOptions):
    """How one run samples and which models it uses: the options besides guidance and postprocessing.

    Declared once here (name, default, help, validation; the sampler's own first, `SamplingOptions`);
    `vlm3d-ttg generate` and the quality benchmark derive their flags from these fields.
    """

    backbone: str = option(DEFAULT_BACKBONE, "The shape generator: a registered backbone (hunyuan3d-2, or one an installed "
                           "plug-in adds; docs/design.md §11).")
    shape_model: str = option("tencent/Hunyuan3D-2", "hy3dgen shape model: repo id or variant name (e.g. hunyuan3d-2mini).")
    shape_subfolder: str | None = option(None, "Subfolder of the shape repo (default: the repo's main DiT).", cli_type=str)
    vlm: str = option("Qwen/Qwen2.5-VL-7B-Instruct", "Critic: a Qwen2.5-VL or Qwen3-VL hub id or local folder (its config "
                      "names the family).")
    critic_family: str | None = option(None, "qwen2.5-vl (default) or qwen3-vl: the critic of an offline preset (as it allows); with "
                                       "--preset real the --vlm checkpoint's family, and another one given here is refused.",
                                       cli_type=str)
    text_to_image: str = option(DEFAULT_TEXT_TO_IMAGE_MODEL, "Text-to-image model that makes the input image when none is "
                                "given: hub id or local diffusers folder (hy3dgen's HunyuanDiT by default).")
    device: str = option("auto", "cuda, cuda:N, cpu or auto.")
    dtype: str = option("auto", "Shape model dtype (auto: float16 on CUDA, float32 on CPU).")
    vlm_dtype: str = option("auto", "Critic dtype (auto: bfloat16 on CUDA, float32 on CPU).")
    checkpointing: bool = option(False, "Activation checkpointing in the critic (saves memory on the 7B).",
                                 negative="--no-checkpointing")
    offload_idle: bool = option(False, "Keep the idle model (DiT or critic) in CPU memory on a GPU run.",
                                negative="--no-offload-idle")
    realsize_depth: int = option(1, "With --preset realsize: blocks/layers of each kind (the real models' widths, "
                                 "random weights; the real depths are 16+32 DiT, 16 VAE, 40 DINOv2, 32 vision, 28 LM).",
                                 minimum=1)

    def validate(self) -> "GenerationOptions":
        """Raise InvalidInputError naming the first bad field and what it accepts; return self."""
        from .models import resolve_dtype

        check = Checks(self, "Invalid option")
        bad = check.bad
        check.declared()  # kinds and declared ranges (sane bounds included)
        from .models import DEVICE_FORMS, parse_device

        try:
            parse_device(self.device)  # the one device parser (mps, meta, gpu0, ... refused)
        except InvalidInputError:
            bad(f"device must be {DEVICE_FORMS}, got {self.device!r}")
        for name in ("dtype", "vlm_dtype"):
            resolve_dtype(torch.device("cpu"), getattr(self, name))  # raises naming the accepted dtypes
        from .backbones import BACKBONES, load_backbone_plugins

        if not isinstance(self.backbone, str) or self.backbone not in load_backbone_plugins():
            bad(f"backbone: unknown backbone {self.backbone!r}; use one of {', '.join(sorted(BACKBONES))}")
        if self.critic_family is not None:
            from .critic.families import get_family

            try:
                get_family(self.critic_family)
            except InvalidInputError as exc:
                bad(f"critic_family: {exc}")
        return self

    def to_dict(self) -> dict:
        """A JSON-ready copy (for manifests)."""
        return dataclasses.asdict(self)


@dataclass
class LoadedModels:
    """The shape model (a backbone) and the critic's model + processor, with where they came from.

    `backbone` is a `backbones.Backbone`; a model one wraps (e.g. a loaded pipeline) is wrapped.
    """

    backbone: Any
    vlm: Any
    processor: Any
    shape_id: str
    vlm_id: str
    preset: str = "real"  # a presets.PRESETS name
    cache_dir: str | os.PathLike | None = None  # where an offline preset's checkpoints were written (None: the default)

    def __post_init__(self) -> None:
        from .backbones import as_backbone

        self.backbone = as_backbone(self.backbone)


@dataclass
class GenerationResult:
    """What a run wrote and what the critic thought of the result."""

    mesh_path: Path
    manifest_path: Path
    faces: int
    records: list[StepRecord]
    final_r: float | None
    final_p_yes: float | None
    final_terms: dict[str, float] = field(default_factory=dict)  # each reward term's value on the final mesh
    final_silhouette_iou: float | None = None  # the final mesh's IoU with the input at its estimated camera
    silhouette_camera: dict[str, Any] | None = None  # that camera (vlm3d_ttg.silhouette.ReferenceCamera.to_dict)
    silhouette_mask_path: Path | None = None
    view_sheets: list[Path] = field(default_factory=list)
    plot_path: Path | None = None
    input_image_path: Path | None = None  # the input image text-to-image made (text-to-3D runs)
    search: SearchRecord | None = None


def _write_view_sheets(
    views_dir: str | os.PathLike, records: list[StepRecord], views: dict[int, torch.Tensor], final: Any,
    staged: Callable[[Path], Path],
) -> list[Path]:
    """Contact sheets of the views the critic saw at the kept steps and of the final mesh; returns
    their final paths (each is written to `staged(path)`)."""
    from .render import write_contact_sheet

    folder = Path(views_dir)
    by_step = {r.step: r for r in records}
    sheets: list[Path] = []
    for step, images in sorted(views.items()):
        record = by_step[step]
        labels = [f"view {k}" for k in range(images.shape[0])]
        title = f"step {step}  sigma={record.sigma:.2f}  r={record.r:+.3f}  P(yes)={_maybe(record.p_yes)}" + _terms_text(record.terms)
        path = folder / view_sheet_names([step])[0]
        write_contact_sheet(staged(path), images.float() / 255, labels, title=title)
        sheets.append(path)
    if final is not None and final.images is not None:
        title = f"final mesh  r={float(final.r):+.3f}  P(yes)={_maybe(final.p_yes)}" + _terms_text(final.terms)
        labels = [f"view {k}" for k in range(final.images.shape[0])]
        write_contact_sheet(staged(folder / "final.png"), final.images.clamp(0, 1), labels, title=title)
        sheets.append(folder / "final.png")
    return sheets


def option_defaults(preset: str, backbone: str = DEFAULT_BACKBONE) -> dict[str, Any]:
    """The option values (command-line form, by field name) a run of `preset` on `backbone` starts from
    where the user gives none: the backbone's own defaults, the preset's over them (`presets.Preset.defaults`)."""
    from .presets import get_preset

    # An unknown backbone brings no defaults: validate() then refuses it with the options' own message.
    try:
        own = backbone_defaults(backbone_class(backbone))
    except InvalidInputError:
        own = {}
    return {**own, **get_preset(preset).defaults}


def with_defaults(values: Mapping[str, Any], preset: str) -> dict[str, Any]:
    """`values` (the options the user gave) over the knobs of the speed preset they name (`speed.SPEEDS`),
    over the defaults of `preset` and of the backbone they name."""
    from .speed import SPEEDS

    # An unknown speed brings no knobs: validate() then refuses it with the options' own message.
    speed = values.get("speed", "quality")
    knobs = SPEEDS.get(speed, {}) if isinstance(speed, str) else {}
    return {**option_defaults(preset, values.get("backbone", DEFAULT_BACKBONE)), **_command_line_form(knobs), **values}


def _command_line_form(knobs: Mapping[str, Any]) -> dict[str, Any]:
    """Field values (a speed preset's) in the command-line form `values` carry ((0.3, 0.7) → "0.3,0.7")."""
    from .guidance import GuidanceConfig
    from .options import declared

    shown = {f.name: spec for f, spec in declared(GuidanceConfig)}
    out = {}
    for name, value in knobs.items():
        spec = shown.get(name)
        out[name] = spec.show(value) if spec is not None and spec.show is not None else value
    return out


def export_resolution(preset: str, backbone: str = DEFAULT_BACKBONE) -> int:
    """The export grid a run of `preset` on `backbone` uses unless --octree-resolution says otherwise."""
    return option_defaults(preset, backbone).get("octree_resolution") or BACKBONE_DEFAULTS["octree_resolution"]


def _maybe(p_yes: float | None) -> str:
    return "n/a" if p_yes is None else f"{p_yes:.3f}"


def _terms_text(terms: dict[str, float]) -> str:
    """The terms of a reward with more than the critic, for a sheet's title ('' for the critic alone)."""
    return "" if set(terms) <= {"vlm"} else "  " + "  ".join(f"{name}={value:+.3f}" for name, value in terms.items())



def _write_candidate_sheet(views_dir: str | os.PathLike, found: SearchRecord, staged: Callable[[Path], Path]) -> Path:
    """A contact sheet of every candidate's first view at the selection step, captioned with its
    index, r (and P(yes) when the views are wide enough) and whether it was kept; returns its final path."""
    from .render import write_contact_sheet

    path = Path(views_dir) / "candidates.png"
    shown = [c for c in found.candidates if c.index in found.views]
    images = torch.cat([found.views[c.index] for c in shown]).float() / 255
    wide = images.shape[-1] >= 160  # room for P(yes) under the view
    labels = [f"#{c.index} {c.r:+.2f}" + (f" P={c.p_yes:.2f}" if wide else "") + ("*" if c.chosen else "+" if c.kept else "")
              for c in shown]
    title = f"candidates, sigma={found.select_sigma:.2f}: r (+ kept, * output)"
    write_contact_sheet(staged(path), images, labels, title=title)
    return path


def load_models(
    options: GenerationOptions | None = None,
    *,
    preset: str = "real",
    cache_dir: str | os.PathLike | None = None,
) -> LoadedModels:
    """Load the shape model (through the backbone `options.backbone` names) and the critic of `preset`
    (a `presets.PRESETS` name).

    The offline presets write their checkpoints once under `cache_dir` ($VLM3D_TTG_CACHE,
    ~/.cache/vlm3d-ttg) and load them through the same loaders as the real models; a preset with
    variants (`Preset.shape_variants`) writes its copy of the variant `options.shape_model` names.

    With `offload_idle` on a GPU the critic is loaded into CPU memory (in the dtype it will run
    in on the GPU) and the sampler brings it over at the first guided step, so loading never
    holds both models on the GPU at once.
    """
    options = (options or GenerationOptions()).validate()
    torch_device = resolve_device(options.device)
    dtype = options.dtype
    critic_device = torch.device("cpu") if options.offload_idle else torch_device
    critic_dtype = resolve_dtype(torch_device, options.vlm_dtype, half=torch.bfloat16)
    from .presets import critic_checkpoint, get_preset

    record = get_preset(preset)
    critic_family = critic_family_for(options.vlm, preset, options.critic_family)
    shape_model, shape_id = backbone_class(options.backbone).load(options, record, device=torch_device, dtype=dtype,
                                                                  cache_dir=cache_dir)
    vlm_path = critic_checkpoint(record, options.vlm, family=critic_family, depth=options.realsize_depth,
                                 cache_dir=cache_dir)
    model, processor = load_vlm(vlm_path, device=critic_device, dtype=critic_dtype)
    return LoadedModels(shape_model, model, processor, shape_id, f"{vlm_path}{record.describe(depth=options.realsize_depth)}",
                        preset=record.name, cache_dir=cache_dir)


def checkpoint_folders(options: Any, preset: str, *, text_to_3d: bool = False,
                       cache_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Every folder whose files a run of `options` with `preset` loads (label → folder), known before
    anything loads or is written: the offline presets' cache folders, or the backbone's real shape
    model folders (`backbones.backbone_checkpoint_folders`), the critic's local folder or hub-cache
    repo, and for text-to-3D the text-to-image model's. An output may not land in any of them (`io.check_output_plan`)."""
    from .backbones import backbone_checkpoint_folders
    from .models import hub_cache_folder
    from .presets import get_preset, offline_checkpoints

    record = get_preset(preset)
    if record.offline:
        found = {f"the {record.name} checkpoints": offline_checkpoints(record).folder(cache_dir)}
        source = record.text_to_image_from
        if text_to_3d and source is not None:  # the preset whose offline text-to-image model makes the input image
            found.setdefault(f"the {source} checkpoints", offline_checkpoints(source).folder(cache_dir))
        return found
    found = backbone_checkpoint_folders(backbone_class(options.backbone), options)
    models = [("the critic (--vlm)", options.vlm)] + ([("the text-to-image model", options.text_to_image)] if text_to_3d else [])
    for label, model in models:
        local = Path(os.path.expanduser(str(model)))
        if local.is_dir():
            found[label] = local
        else:
            snapshot = hub_cache_folder(str(model), None, filename="config.json" if label.startswith("the critic")
                                         else "model_index.json")
            if snapshot is not None:  # the repo's whole cache folder: snapshots link into its blobs
                found[label] = snapshot.parent.parent
    return found


def check_models_present(options: GenerationOptions) -> None:
    """Raise the backbone's own error now if its shape model is missing (`check_present`; the
    Hunyuan3D-2 backbone checks offline only) and, offline (HF_HUB_OFFLINE=1), the loader's
    ModelNotFoundError if the critic is not on disk: a text-to-3D run makes its input image before they
    load, and that work should not be wasted on a run that cannot finish. Online, nothing is checked (they may download)."""
    from huggingface_hub import try_to_load_from_cache

    from .backbones import backbone_class
    from .env import hub_offline

    backbone_class(options.backbone).check_present(options)  # the backbone's own check and message
    if not hub_offline():
        return
    vlm = os.path.expanduser(options.vlm)
    try:
        cached = Path(vlm).is_dir() or isinstance(try_to_load_from_cache(vlm, "config.json"), str)
    except ValueError:  # neither a folder nor a repo id
        cached = False
    if not cached:
        load_vlm(options.vlm, device="cpu")  # raises, naming the fix


def r_plot_png(points: list[tuple[float, float]], *, skipped: list[float] = (), final_r: float | None = None,
               baseline_r: float | None = None) -> bytes:
    """The r plot (the one drawing, for `--plot` and the app) as PNG bytes: r at the guided steps
    over σ (`points`: (σ, r)), skipped steps' σ as red lines, the final mesh's r (and a baseline
    run's) as horizontal lines."""
    from io import BytesIO

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.2), dpi=120)  # no pyplot: the app draws from worker threads
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label="r at guided steps (jittered views)")
    for sigma in skipped:
        ax.axvline(sigma, color="red", alpha=0.3, lw=1)
    if final_r is not None:
        ax.axhline(final_r, color="green", ls="--", label=f"final mesh r = {final_r:+.3f}")
    if baseline_r is not None:
        ax.axhline(baseline_r, color="grey", ls=":", label=f"final mesh r, baseline = {baseline_r:+.3f}")
    ax.set_xlabel("σ (0 = noise, 1 = data)")
    ax.set_ylabel("r = logit(Yes) − logit(No)")
    ax.set_title("critic log-odds over the run" + (f" ({len(skipped)} skipped steps in red)" if skipped else ""))
    ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def write_r_plot(path: str | os.PathLike, records: list[StepRecord], *, final_r: float | None = None,
                 baseline_r: float | None = None) -> Path:
    """Write the r plot of a run's step records (`r_plot_png`; `baseline_r`: an unguided run's final r) to `path`."""
    points = [(r.sigma, r.r) for r in records if r.r is not None]
    png = r_plot_png(points, skipped=[r.sigma for r in records if r.skipped], final_r=final_r, baseline_r=baseline_r)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(png)
    return Path(path)


def generate_mesh(
    models: LoadedModels,
    *,
    image: str | os.PathLike | None = None,
    prompt: str,
    out: str | os.PathLike,
    manifest_path: str | os.PathLike,
    guidance: GuidanceConfig,
    postprocess: PostprocessConfig | None = None,
    options: GenerationOptions | None = None,
    views_dir: str | os.PathLike | None = None,
    keep_views: str | list[int] = "summary",
    plot_path: str | os.PathLike | None = None,
    progress: bool = True,
    step_callback: StepCallback | None = None,
    generated_input: Any | None = None,
    search: SearchOptions | None = None,
    views: dict[str, str | os.PathLike] | None = None,
) -> GenerationResult:
    """Run one (guided) generation and write its outputs atomically; see `vlm3d-ttg generate --help`.

    `step_callback` is the sampler's `callback_on_step_end`. `generated_input` (a
    `text2image.GeneratedInput`): the input image was made from the prompt; it is the conditioning
    image, is saved with the other outputs and recorded in the manifest. `search` samples several
    candidates and keeps the critic's favourite (vlm3d_ttg.search). `views` ({"left"/"back"/"right":
    image}) are the extra views of a multi-view backbone, `image` being the front; the critic's
    reference uses the front. Raises EmptySurfaceError (after
    writing the manifest) when the final latent has no surface.
    """
    from .run import OutputPlan

    started = time.perf_counter()
    options = (options or GenerationOptions()).validate()
    run = _build(models, image=image, prompt=prompt, guidance=guidance, options=options, postprocess=postprocess,
                 generated_input=generated_input, views=views, search=search, keep_views=keep_views,
                 step_callback=step_callback)
    plan = OutputPlan(out, manifest_path, plot=plot_path, views_dir=views_dir, view_steps=run.capture.keep,
                      candidates=bool(search and search.searching),
                      input_image=generated_input.path if generated_input is not None else None)
    _check_plan(plan, models, options, image=image, views=views)
    output, content = _sample(run, plan, started, progress)
    outputs, sheets = _write_outputs(run, output, plan, content, started)
    return _result(run, output, plan, content, sheets)


def generate_compared(
    models: LoadedModels,
    *,
    image: str | os.PathLike | None = None,
    prompt: str,
    out: str | os.PathLike,
    manifest_path: str | os.PathLike,
    guidance: GuidanceConfig,
    postprocess: PostprocessConfig | None = None,
    options: GenerationOptions | None = None,
    views_dir: str | os.PathLike | None = None,
    keep_views: str | list[int] = "summary",
    plot_path: str | os.PathLike | None = None,
    progress: bool = True,
    step_callback: StepCallback | None = None,
    unguided_callback: StepCallback | None = None,
    generated_input: Any | None = None,
    views: dict[str, str | os.PathLike] | None = None,
) -> tuple[GenerationResult, GenerationResult, Path]:
    """The guided run of `generate_mesh` (same arguments, no candidate search) and then the unguided run on
    the same seed and settings (guidance off, `compare.unguided_config`), written together as one unit: the
    guided outputs, the unguided mesh and manifest beside them (`compare.unguided_path_for`) and the contact
    sheet of both (`compare.compare_sheet_path_for`); each manifest names the other. Returns (guided result,
    unguided result, sheet path). Nothing is written unless both runs finish: a run without a final surface
    writes its failed-run record and raises EmptySurfaceError; earlier outputs stay as they were.
    `unguided_callback` is the unguided run's step callback (`step_callback` the guided run's)."""
    from .compare import check_compare, compare_sheet, compare_views, unguided_config
    from .run import OutputPlan

    started = time.perf_counter()
    options = (options or GenerationOptions()).validate()
    common = dict(image=image, prompt=prompt, options=options, postprocess=postprocess, generated_input=generated_input,
                  views=views, search=None)
    run = _build(models, guidance=guidance, keep_views=keep_views, step_callback=step_callback, **common)
    check_compare(guidance, None, run.sampler.guided_steps(options.steps, None))
    twin = _build(models, guidance=unguided_config(guidance), keep_views="none", step_callback=unguided_callback, **common)
    plan = OutputPlan.compared(out, manifest_path, plot=plot_path, views_dir=views_dir, view_steps=run.capture.keep,
                               input_image=generated_input.path if generated_input is not None else None)
    _check_plan(plan, models, options, image=image, views=views)
    output, content = _sample(run, plan, started, progress)
    twin_started = time.perf_counter()
    twin_output, twin_content = _sample(twin, plan.unguided, twin_started, progress)
    rows = [("unguided", twin_output.final_r), ("guided", output.final_r)]
    pictures = compare_views(run.reward, [twin_output.mesh, output.mesh])
    azimuths = [360.0 * k / run.reward.num_views for k in range(run.reward.num_views)]
    sheet = compare_sheet(pictures, rows, prompt=prompt, seed=options.seed, azimuths=azimuths)
    content["compare"] = {"unguided": str(plan.unguided.out), "unguided_manifest": str(plan.unguided.manifest),
                          "unguided_final_r": twin_output.final_r, "sheet": str(plan.compare_sheet)}
    twin_content["compare"] = {"guided": str(plan.out), "guided_manifest": str(plan.manifest),
                               "guided_final_r": output.final_r, "sheet": str(plan.compare_sheet)}
    with OutputSet() as staging:
        sheet.save(staging.stage(plan.compare_sheet), format="PNG")
        _, twin_sheets = _stage_outputs(twin, twin_output, plan.unguided, twin_content, twin_started, staging)
        outputs, sheets = _stage_outputs(run, output, plan, content, started, staging, baseline_r=twin_output.final_r,
                                         extra={"unguided": str(plan.unguided.out), "compare_sheet": str(plan.compare_sheet)})
    return (_result(run, output, plan, content, sheets), _result(twin, twin_output, plan.unguided, twin_content, twin_sheets),
            plan.compare_sheet)


def _build(models: LoadedModels, *, image: Any, prompt: str, guidance: GuidanceConfig, options: GenerationOptions,
           postprocess: PostprocessConfig | None, generated_input: Any, views: Any, search: SearchOptions | None,
           keep_views: str | list[int], step_callback: StepCallback | None) -> Any:
    """One run built on the loaded models (`run.build_run`), with the export grid of the preset unless given."""
    from .run import build_run

    return build_run(models, prompt=prompt, guidance=guidance, options=options, postprocess=postprocess, image=image,
                     generated_input=generated_input, views=views, search=search, keep_views=keep_views,
                     step_callback=step_callback,
                     octree_resolution=options.octree_resolution or export_resolution(models.preset, options.backbone))


def _check_plan(plan: Any, models: LoadedModels, options: GenerationOptions, *, image: Any, views: Any) -> None:
    """The CLI's output-plan check, for API callers (`run.OutputPlan.check`, without the writability probes)."""
    plan.check({"image": image if isinstance(image, (str, os.PathLike)) else None,  # the CLI's check, for API callers
                **{f"--{name}": path for name, path in (views or {}).items() if isinstance(path, (str, os.PathLike))}},
               read_folders=checkpoint_folders(options, models.preset, text_to_3d=image is None, cache_dir=models.cache_dir),
               writable=False)


def _sample(run: Any, plan: Any, started: float, progress: bool) -> tuple[Any, dict[str, Any]]:
    """Sample `run` and describe it (its manifest content); a final latent without a surface writes the run's
    failed-run record (never over an earlier run's manifest) and raises EmptySurfaceError."""
    from .run import describe

    output = run.sample(progress=progress)
    content = describe(run, output, plan)
    if output.mesh is None:
        # A failed run must not touch what an earlier run wrote (its mesh and manifest belong
        # together): its record goes to a file of its own.
        with OutputSet() as failed:
            write_manifest(failed.stage(plan.failed_record, last=True), content | {"total_seconds": time.perf_counter() - started})
        raise EmptySurfaceError(f"The final shape is empty (no surface at the export level); nothing was written to {plan.out}. "
                                f"The run's step records are in {plan.failed_record}.")
    return output, content


def _result(run: Any, output: Any, plan: Any, content: dict[str, Any], sheets: list[Path]) -> GenerationResult:
    return GenerationResult(
        mesh_path=plan.out, manifest_path=plan.manifest, faces=content["faces"], records=output.sampled.records,
        final_r=output.final_r, final_p_yes=content["final_p_yes"], final_terms=content["final_terms"],
        final_silhouette_iou=run.silhouette.final_iou, silhouette_camera=content["silhouette"]["camera"],
        silhouette_mask_path=plan.silhouette_mask, view_sheets=sheets, plot_path=plan.plot,
        input_image_path=plan.input_image, search=output.sampled.search)


def _write_outputs(run: Any, output: Any, plan: Any, content: dict[str, Any], started: float) -> tuple[dict, list[Path]]:
    """Every output of `plan`, committed as one unit (`_stage_outputs` in one `io.OutputSet`)."""
    with OutputSet() as staging:
        return _stage_outputs(run, output, plan, content, started, staging)


def _stage_outputs(run: Any, output: Any, plan: Any, content: dict[str, Any], started: float, staging: OutputSet, *,
                   baseline_r: float | None = None, extra: dict[str, Any] | None = None) -> tuple[dict, list[Path]]:
    """Stage every output of `plan` in `staging` (committed as one unit when its block ends), the manifest
    (`content` plus the outputs, and `extra` outputs staged by the caller) last: a failure at any point leaves
    the earlier outputs exactly as they were (vlm3d_ttg.io.OutputSet). A new output is one entry in
    `run.OutputPlan` and one line here. `baseline_r`: an unguided run's final r, drawn in the r plot."""
    from .silhouette import write_mask_png

    outputs: dict[str, Any] = {}
    sampled, generated = output.sampled, run.generated_input
    staged = staging.stage
    save_mesh(output.mesh, staged(plan.out))
    outputs["mesh"] = str(plan.out)
    write_mask_png(staged(plan.silhouette_mask), run.silhouette.target)
    outputs["silhouette_mask"] = str(plan.silhouette_mask)
    if generated is not None and plan.input_image is not None:
        generated.image.save(staged(generated.path), format="PNG")
        outputs["input_image"] = str(generated.path)
    sheets = (_write_view_sheets(plan.views_dir, sampled.records, run.capture.views, output.final, staged)
              if plan.views_dir is not None else [])
    if plan.views_dir is not None and sampled.search is not None and sampled.search.views:
        sheets.append(_write_candidate_sheet(plan.views_dir, sampled.search, staged))
    if sheets:
        outputs["views"] = [str(p) for p in sheets]
    if plan.plot is not None:
        write_r_plot(staged(plan.plot), sampled.records, final_r=output.final_r, baseline_r=baseline_r)
        outputs["plot"] = str(plan.plot)
    outputs.update(extra or {})
    content.update(outputs=outputs, total_seconds=time.perf_counter() - started)
    write_manifest(staging.stage(plan.manifest, last=True), content)
    return outputs, sheets
