"""`vlm3d-ttg generate`: image + description → (guided) Hunyuan3D-2 mesh, manifest, pictures."""

from __future__ import annotations

import dataclasses
import inspect
import time
from enum import Enum
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from ..errors import InvalidInputError


class Preset(str, Enum):
    real = "real"
    tiny = "tiny"
    realsize = "realsize"


def _parse_views_at(text: str) -> str | list[int]:
    if text in ("summary", "all", "none"):
        return text
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidInputError(f"--views-at takes summary, all, none or step numbers like 4,10,20; got {text!r}") from None


def _generate(
    image: Optional[Path] = typer.Argument(
        None, help="Conditioning image (RGBA with a transparent background is best). Without it, text-to-3D: the "
                   "image is made from --prompt by text-to-image + background removal and saved as OUT.input.png."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="Text description the critic checks the shape against."),
    out: Path = typer.Option(..., "--out", "-o", help="Output mesh (.glb, .gltf, .obj, .ply, .stl, .off)."),
    manifest: Optional[Path] = typer.Option(None, help="Run manifest JSON (default: OUT.json, e.g. robot.glb.json)."),
    preset: Preset = typer.Option(Preset.real, help="'tiny': offline tiny checkpoints (meaningless shapes, exercises the pipeline); 'realsize': offline "
                                              "random-weight checkpoints of the real models' sizes, --realsize-depth blocks of each kind."),
    save_views: Optional[Path] = typer.Option(None, help="Folder for contact sheets of what the critic saw."),
    views_at: Optional[str] = typer.Option(
        None, help="Guided steps to save views of (with --save-views): summary (default), all, none, or 4,10,20."),
    plot: bool = typer.Option(False, help="Also write a plot of r over the steps (OUT.r.png)."),
    quiet: bool = typer.Option(False, help="No progress bar."),
    verbose: bool = typer.Option(False, help="Debug logging, with hy3dgen's and transformers' own messages and tracebacks."),
    **options: object,
) -> None:
    """Generate a mesh from IMAGE (or, without one, from PROMPT alone) with Hunyuan3D-2, guided by Qwen2.5-VL's judgement of PROMPT."""
    from ..export import PostprocessConfig, check_mesh_path
    from ..generation import GenerationOptions
    from ..guidance import GuidanceConfig
    from ..inputs import check_condition_image
    from ..generation import failed_run_path
    from ..io import check_output_plan, check_writable
    from ..manifest import manifest_path_for, plot_path_for
    from ..options import from_values

    # ---- everything that can be wrong is checked before any model loads --------------------
    if not prompt.strip():
        raise InvalidInputError("--prompt is empty; describe the object (e.g. 'a wooden chair with four legs').")
    from ..critic.queries import normalize_description

    normalize_description(prompt)  # chat markup in the prompt is refused now, not after the models load
    guidance = from_values(GuidanceConfig, options).validate()
    postprocess = from_values(PostprocessConfig, options).validate()
    run_options = from_values(GenerationOptions, options).validate()
    from ..search import SearchOptions, check_search_with_guidance, guided_steps_with_search

    search = from_values(SearchOptions, options).validate()
    check_search_with_guidance(search, guidance)
    if run_options.octree_resolution is None:
        run_options = dataclasses.replace(run_options, octree_resolution=128 if preset == Preset.tiny else 384)
    check_writable(out)
    check_mesh_path(out)
    manifest_path = manifest or manifest_path_for(out)
    if manifest_path.suffix.lower() != ".json":
        raise InvalidInputError(f"--manifest must be a .json file, got '{manifest_path}'.")
    check_writable(manifest_path)
    if save_views is not None:
        if save_views.exists() and not save_views.is_dir():
            raise InvalidInputError(f"--save-views '{save_views}' exists and is not a folder.")
        check_writable(save_views / "probe.png")
    elif views_at is not None:
        raise InvalidInputError("--views-at chooses which views --save-views writes; give --save-views DIR too.")
    from ..text2image import check_text_to_image_model, input_image_path_for

    input_image_path = input_image_path_for(out) if image is None else None
    if input_image_path is not None:
        check_writable(input_image_path)
    plot_path = plot_path_for(out) if plot else None
    if plot_path is not None:
        check_writable(plot_path)
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InvalidInputError("--plot needs matplotlib: pip install matplotlib") from None
    if preset in (Preset.tiny, Preset.realsize):
        ignored = [flag for flag, name in (("--shape-model", "shape_model"), ("--shape-subfolder", "shape_subfolder"),
                                           ("--vlm", "vlm"), ("--text-to-image", "text_to_image")) if getattr(run_options, name) != GenerationOptions().__dict__[name]]
        if ignored:
            raise InvalidInputError(f"{', '.join(ignored)} would be ignored with --preset {preset.value} (it uses "
                                    f"its own offline checkpoints); drop them or use --preset real.")
    if preset != Preset.realsize and run_options.realsize_depth != GenerationOptions().realsize_depth:
        raise InvalidInputError("--realsize-depth only applies to --preset realsize; drop it or add --preset realsize.")
    keep_views = _parse_views_at(views_at or "summary") if save_views is not None else "none"
    # Options that would do nothing: said now, not discovered in the manifest afterwards.
    planned = guided_steps_with_search(list(np.linspace(0.0, 1.0, run_options.steps)) + [1.0], guidance, search)
    if guidance.enabled and not planned:
        after_search = f" after the candidate search at σ ≥ {search.select_at:g}" if search.searching else ""
        typer.secho(f"warning: guidance is on, but no step of a {run_options.steps}-step run falls in the σ window "
                    f"{guidance.sigma_window} (every {guidance.every}){after_search}: this run will not be guided", err=True)
    if isinstance(keep_views, list) and not set(keep_views) <= set(planned):
        raise InvalidInputError(f"--views-at names steps that are not guided: {sorted(set(keep_views) - set(planned))}; "
                                f"this run guides steps {planned}.")
    # Every file this run may write, against each other and against every input: nothing of the
    # user's may be replaced by an output, and no output by another (a views folder included).
    from ..generation import output_plan, steps_to_keep

    planned_outputs = output_plan(out, manifest_path, plot_path=plot_path, views_dir=save_views,
                                  view_steps=steps_to_keep(keep_views, planned) if save_views is not None else (),
                                  candidates=search.searching, input_image_path=input_image_path)
    check_output_plan(planned_outputs, {"IMAGE": image})
    if image is not None and run_options.text_to_image != GenerationOptions().text_to_image:
        raise InvalidInputError("--text-to-image makes the input image when no IMAGE is given; with IMAGE it would "
                                "be ignored: drop one of them.")
    if image is not None:
        check_condition_image(image)
    elif preset == Preset.real:  # the offline presets write their own models
        from ..generation import check_models_present

        check_text_to_image_model(run_options.text_to_image)
        check_models_present(run_options)

    if image is not None and preset == Preset.real:  # offline, a missing model comes before whether it fits
        from ..generation import check_models_present

        check_models_present(run_options)
    from ..preflight import check_generation

    # Will it fit? The estimated peak memory against the host's and the device's, before anything loads.
    check_generation(run_options, guidance, search, prompt=prompt, preset=preset.value)

    from ..logs import be_verbose, quiet_hy3dgen
    from ..generation import generate_mesh, load_models

    if verbose:
        be_verbose()
    quiet_hy3dgen()

    started = time.perf_counter()
    generated_input = None
    if input_image_path is not None:
        from ..text2image import make_input_image

        # Made (and its models released) before the shape model and critic load: never all three at once.
        # The offline presets have no real text-to-image model: both use the tiny one.
        generated_input = make_input_image(prompt, input_image_path, model=run_options.text_to_image, device=run_options.device,
                                           seed=run_options.seed, tiny=preset in (Preset.tiny, Preset.realsize))
    models = load_models(run_options, preset=preset.value)
    result = generate_mesh(
        models,
        image=image,
        generated_input=generated_input,
        prompt=prompt,
        out=out,
        manifest_path=manifest_path,
        guidance=guidance,
        postprocess=postprocess,
        options=run_options,
        views_dir=save_views,
        keep_views=keep_views,
        plot_path=plot_path,
        progress=not quiet,
        search=search,
    )
    _print_summary(result, guidance, time.perf_counter() - started)


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
    """Generate a mesh from IMAGE (or, without one, from PROMPT alone) with Hunyuan3D-2, guided by Qwen2.5-VL's judgement of PROMPT."""
    _generate(**values)


generate.__signature__ = _derived_signature()  # type: ignore[attr-defined]
generate.__annotations__ = {}


def _print_summary(result, guidance, seconds: float) -> None:
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
    elif not guidance.enabled:
        typer.echo("guidance  off (--no-guidance)")
    else:
        typer.echo(f"guidance  on, but no step of this run fell in the σ window {guidance.sigma_window}: nothing was guided")
    if result.search is not None:
        chosen = result.search.candidates[result.search.chosen]
        where = "final meshes" if result.search.select_step is None else f"σ={result.search.select_sigma:.2f}"
        typer.echo(f"search    {len(result.search.candidates)} candidates, selected at {where}: "
                   f"kept #{chosen.index} (seed {chosen.seed})")
    if result.final_r is not None:
        typer.echo(f"critic    final r = {result.final_r:+.3f}  P(yes) = {result.final_p_yes:.3f}")
    typer.echo(f"time      {seconds:.1f} s")
