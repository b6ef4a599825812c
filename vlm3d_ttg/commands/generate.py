"""`vlm3d-ttg generate`: image + description → (guided) Hunyuan3D-2 mesh, manifest, pictures."""

from __future__ import annotations

import inspect
import time
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from ..errors import InvalidInputError
from ..presets import PRESETS

#: --preset's choices (vlm3d_ttg.presets.PRESETS).
Preset = Enum("Preset", {name: name for name in PRESETS}, type=str)
#: --preset's help: each preset's own line, with the option defaults it brings (unless given).
PRESET_HELP = "; ".join(f"'{p.name}': {p.help}" + (f" (defaults: {p.defaults_text()})" if p.defaults else "")
                        for p in PRESETS.values()) + "."


def given_options(values: dict[str, object], context: typer.Context | None) -> dict[str, object]:
    """The options of `values` the user gave (on the command line or through the environment), without those
    that only hold their declared default: the preset's and the backbone's defaults apply to the rest
    (`generation.option_defaults`). All of `values` without a command's `context`."""
    if context is None:
        return dict(values)

    def defaulted(name: str) -> bool:
        source = context.get_parameter_source(name)  # click's ParameterSource (typer's own copy of click)
        return source is not None and source.name in ("DEFAULT", "DEFAULT_MAP")

    return {name: value for name, value in values.items() if not defaulted(name)}


def _parse_views_at(text: str) -> str | list[int]:
    if text in ("summary", "all", "none"):
        return text
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidInputError(f"--views-at takes summary, all, none or step numbers like 4,10,20; got {text!r}") from None


def _generate(
    context: typer.Context,
    image: Optional[Path] = typer.Argument(
        None, help="Conditioning image (RGBA with a transparent background is best). Without it, text-to-3D: the "
                   "image is made from --prompt by text-to-image + background removal and saved as OUT.input.png."),
    left: Optional[Path] = typer.Option(None, help="Multi-view models (e.g. --shape-model hunyuan3d-2mv): the object seen "
                                                   "from its left (IMAGE is the front)."),
    back: Optional[Path] = typer.Option(None, help="Multi-view models: the object seen from the back."),
    right: Optional[Path] = typer.Option(None, help="Multi-view models: the object seen from its right."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="Text description the critic checks the shape against."),
    out: Path = typer.Option(..., "--out", "-o", help="Output mesh (.glb, .gltf, .obj, .ply, .stl, .off)."),
    manifest: Optional[Path] = typer.Option(None, help="Run manifest JSON (default: OUT.json, e.g. robot.glb.json)."),
    preset: Preset = typer.Option(Preset.real, help=PRESET_HELP),
    save_views: Optional[Path] = typer.Option(None, help="Folder for contact sheets of what the critic saw."),
    views_at: Optional[str] = typer.Option(
        None, help="Guided steps to save views of (with --save-views): summary (default), all, none, or 4,10,20."),
    plot: bool = typer.Option(False, help="Also write a plot of r over the steps (OUT.r.png)."),
    compare: bool = typer.Option(
        False, help="Then run again on the same seed and settings with guidance off, and write that mesh beside the "
                    "guided one (robot.glb → robot.unguided.glb, with its manifest) and a contact sheet of both from "
                    "the same cameras with their final r (OUT.compare.png): what guidance changed."),
    quiet: bool = typer.Option(False, help="No progress bar."),
    verbose: bool = typer.Option(False, help="Debug logging, with hy3dgen's and transformers' own messages and tracebacks."),
    **options: object,
) -> None:
    """Generate a mesh from IMAGE (or, without one, from PROMPT alone) with Hunyuan3D-2, guided by a VLM critic's judgement of PROMPT (Qwen2.5-VL, or Qwen3-VL)."""
    # ---- everything that can be wrong is checked before any model loads --------------------
    # The request itself (prompt, options, preset, input image): the one check the app shares.
    from ..requests import validate_request

    request = validate_request(given_options(options, context), prompt=prompt, preset=preset.value, image=image,
                               views={"left": left, "back": back, "right": right})
    if save_views is None and views_at is not None:
        raise InvalidInputError("--views-at chooses which views --save-views writes; give --save-views DIR too.")
    keep_views = _parse_views_at(views_at or "summary") if save_views is not None else "none"
    for warning in request.warnings:
        typer.secho(f"warning: {warning}", err=True)
    if isinstance(keep_views, list) and not set(keep_views) <= set(request.guided_steps):
        raise InvalidInputError(f"--views-at names steps that are not guided: {sorted(set(keep_views) - set(request.guided_steps))}; "
                                f"this run guides steps {request.guided_steps}.")
    if compare:
        from ..compare import check_compare

        check_compare(request.guidance, request.search, request.guided_steps)
    plan = _output_plan(request, out=out, manifest=manifest, plot=plot, save_views=save_views, keep_views=keep_views,
                        preset=preset.value, compare=compare)

    from ..logs import be_verbose, quiet_hy3dgen
    from ..generation import generate_compared, generate_mesh

    if verbose:
        be_verbose()
    quiet_hy3dgen()
    started = time.perf_counter()
    generated_input, models = _load(request, plan, preset)
    run = dict(image=image, views=request.views or None, generated_input=generated_input, prompt=prompt, out=plan.out,
               manifest_path=plan.manifest, guidance=request.guidance, postprocess=request.postprocess,
               options=request.options, views_dir=plan.views_dir, keep_views=keep_views, plot_path=plan.plot,
               progress=not quiet)
    if not compare:
        result = generate_mesh(models, **run, search=request.search)
        _print_summary(result, request.guidance, time.perf_counter() - started)
        return
    result, unguided, sheet = generate_compared(models, **run)
    _print_summary(result, request.guidance, time.perf_counter() - started, unguided=unguided, sheet=sheet)


def _output_plan(request, *, out: Path, manifest: Optional[Path], plot: bool, save_views: Optional[Path],
                 keep_views: str | list[int], preset: str, compare: bool = False):
    """Where this run writes (every file, one plan; with `compare` the unguided run's and the compare sheet
    too), checked: writable, and nothing of the user's, no other output and no file of a checkpoint or cache
    the run will load (not loaded yet) replaced by an output."""
    from ..generation import checkpoint_folders
    from ..manifest import manifest_path_for, plot_path_for
    from ..run import OutputPlan, steps_to_keep
    from ..text2image import input_image_path_for

    image = request.image
    view_steps = steps_to_keep(keep_views, request.guided_steps) if save_views is not None else set()
    make = OutputPlan.compared if compare else OutputPlan
    plan = make(out, manifest or manifest_path_for(out), plot=plot_path_for(out) if plot else None,
                views_dir=save_views, view_steps=view_steps, candidates=request.search.searching,
                input_image=input_image_path_for(out) if image is None else None)
    plan.check({"IMAGE": image, **{f"--{name}": path for name, path in request.views.items()}},
               read_folders=checkpoint_folders(request.options, preset, text_to_3d=image is None))
    return plan


def _load(request, plan, preset: Preset):
    """The input image made from the prompt (when there is none; None otherwise), then the models."""
    from ..generation import load_models
    from ..interrupts import check

    generated_input = None
    if plan.input_image is not None:
        from ..text2image import make_input_image

        # Made (and its models released) before the shape model and critic load: never all three at once.
        # The offline presets have no real text-to-image model: they use the tiny one.
        run_options = request.options
        generated_input = make_input_image(request.prompt, plan.input_image, model=run_options.text_to_image,
                                           device=run_options.device, seed=run_options.seed,
                                           tiny=PRESETS[preset.value].offline)
    models = load_models(request.options, preset=preset.value)
    check()  # a stop signal swallowed while the models loaded (a loader's `except BaseException`)
    return generated_input, models


def _derived_signature() -> inspect.Signature:
    """`_generate`'s own parameters followed by every declared option of the run, postprocessing and
    guidance dataclasses (one declaration each: vlm3d_ttg.options)."""
    from ..export import PostprocessConfig
    from ..generation import GenerationOptions
    from ..guidance import GuidanceConfig
    from ..options import typer_parameters
    from ..search import SearchOptions

    own = [p for p in inspect.signature(_generate, eval_str=True).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    derived = [*typer_parameters(GenerationOptions), *typer_parameters(PostprocessConfig), *typer_parameters(GuidanceConfig),
               *typer_parameters(SearchOptions)]
    return inspect.Signature(own + derived)


def generate(**values: object) -> None:
    """Generate a mesh from IMAGE (or, without one, from PROMPT alone) with Hunyuan3D-2, guided by a VLM critic's judgement of PROMPT (Qwen2.5-VL, or Qwen3-VL)."""
    _generate(**values)


generate.__signature__ = _derived_signature()  # type: ignore[attr-defined]
generate.__annotations__ = {}


def _print_summary(result, guidance, seconds: float, *, unguided=None, sheet: Path | None = None) -> None:
    guided = [r for r in result.records if r.guided]
    skipped = [r for r in guided if r.skipped]
    scored = [r.r for r in guided if r.r is not None]
    typer.echo(f"mesh      {result.mesh_path}  ({result.faces} faces)")
    if result.input_image_path is not None:
        typer.echo(f"input     {result.input_image_path}  (made from the prompt by text-to-image)")
    typer.echo(f"manifest  {result.manifest_path}")
    for path in result.view_sheets:
        typer.echo(f"views     {path}")
    if result.plot_path:
        typer.echo(f"plot      {result.plot_path}")
    if guided:
        first = f"{scored[0]:+.3f}" if scored else "n/a"
        typer.echo(f"guidance  {len(guided)} guided steps, {len(skipped)} skipped; r at first guided step {first}")
        stopped, reused = sum(r.stopped for r in result.records), sum(r.reused is not None for r in result.records)
        if stopped:
            typer.echo(f"          stopped after step {guided[-1].step} (r ≥ --stop-at-r): {stopped} planned guided steps not guided")
        if reused:
            typer.echo(f"          {reused} unguided steps reused the last guided displacement (--reuse-displacement)")
    elif not guidance.active:
        typer.echo("guidance  off (--no-guidance or --scale 0)")
    else:
        typer.echo(f"guidance  on, but no step of this run fell in the σ window {guidance.sigma_window}: nothing was guided")
    if result.search is not None:
        chosen = result.search.candidates[result.search.chosen]
        where = "final meshes" if result.search.select_step is None else f"σ={result.search.select_sigma:.2f}"
        typer.echo(f"search    {len(result.search.candidates)} candidates, selected at {where}: "
                   f"kept #{chosen.index} (seed {chosen.seed})")
    if result.final_r is not None:
        typer.echo(f"critic    final r = {result.final_r:+.3f}  P(yes) = {result.final_p_yes:.3f}")
    if set(result.final_terms) - {"vlm"}:
        typer.echo("terms     " + "  ".join(f"{name} = {value:+.3f}" for name, value in result.final_terms.items()))
    camera = result.silhouette_camera
    if camera is not None and result.final_silhouette_iou is not None:
        typer.echo(f"silhouette final IoU = {result.final_silhouette_iou:.3f} at the input's estimated camera "
                   f"(az {camera['azimuth_deg']:.0f}°, el {camera['elevation_deg']:.0f}°; mask {result.silhouette_mask_path})")
    elif camera is None:
        typer.echo("silhouette not measured: no camera could be estimated (see the manifest)")
    if unguided is not None:
        typer.echo(f"unguided  {unguided.mesh_path}  ({unguided.faces} faces; manifest {unguided.manifest_path}): "
                   f"the same seed and settings, guidance off")
        if unguided.final_r is not None:
            typer.echo(f"critic    final r = {unguided.final_r:+.3f}  P(yes) = {unguided.final_p_yes:.3f} (unguided)")
        typer.echo(f"compare   {sheet}  (unguided and guided meshes from the same cameras)")
    typer.echo(f"time      {seconds:.1f} s")
