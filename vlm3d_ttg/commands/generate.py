"""`vlm3d-ttg generate`: image + description → (guided) Hunyuan3D-2 mesh, manifest, pictures."""

from __future__ import annotations

import dataclasses
import inspect
import time
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from ..errors import InvalidInputError


class Preset(str, Enum):
    real = "real"
    tiny = "tiny"


def _parse_views_at(text: str) -> str | list[int]:
    if text in ("summary", "all", "none"):
        return text
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidInputError(f"--views-at takes summary, all, none or step numbers like 4,10,20; got {text!r}") from None


def _generate(
    image: Path = typer.Argument(..., help="Conditioning image (RGBA with a transparent background is best)."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="Text description the critic checks the shape against."),
    out: Path = typer.Option(..., "--out", "-o", help="Output mesh (.glb, .gltf, .obj, .ply, .stl, .off)."),
    manifest: Optional[Path] = typer.Option(None, help="Run manifest JSON (default: OUT with .json)."),
    preset: Preset = typer.Option(Preset.real, help="'tiny': offline tiny checkpoints (meaningless shapes, exercises the pipeline)."),
    save_views: Optional[Path] = typer.Option(None, help="Folder for contact sheets of what the critic saw."),
    views_at: str = typer.Option("summary", help="Guided steps to save views of: summary, all, none, or 4,10,20."),
    plot: bool = typer.Option(False, help="Also write a plot of r over the steps (OUT with _r.png)."),
    quiet: bool = typer.Option(False, help="No progress bar."),
    **options: object,
) -> None:
    """Generate a mesh from IMAGE with Hunyuan3D-2, guided by Qwen2.5-VL's judgement of PROMPT."""
    from ..export import PostprocessConfig, check_mesh_path
    from ..generation import GenerationOptions
    from ..guidance import GuidanceConfig
    from ..inputs import check_condition_image
    from ..io import check_writable
    from ..manifest import manifest_path_for
    from ..options import from_values

    # ---- everything that can be wrong is checked before any model loads --------------------
    if not prompt.strip():
        raise InvalidInputError("--prompt is empty; describe the object (e.g. 'a wooden chair with four legs').")
    from ..critic.queries import normalize_description

    normalize_description(prompt)  # chat markup in the prompt is refused now, not after the models load
    guidance = from_values(GuidanceConfig, options).validate()
    postprocess = from_values(PostprocessConfig, options).validate()
    run_options = from_values(GenerationOptions, options).validate()
    if run_options.octree_resolution is None:
        run_options = dataclasses.replace(run_options, octree_resolution=128 if preset == Preset.tiny else 384)
    check_writable(out)
    check_mesh_path(out)
    manifest_path = manifest or manifest_path_for(out)
    check_writable(manifest_path)
    if save_views is not None:
        if save_views.exists() and not save_views.is_dir():
            raise InvalidInputError(f"--save-views '{save_views}' exists and is not a folder.")
        check_writable(save_views / "probe.png")
    plot_path = out.with_name(out.stem + "_r.png") if plot else None
    if plot_path is not None:
        check_writable(plot_path)
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InvalidInputError("--plot needs matplotlib: pip install matplotlib") from None
    keep_views = _parse_views_at(views_at) if save_views is not None else "none"
    check_condition_image(image)

    from ..logs import quiet_hy3dgen
    from ..generation import generate_mesh, load_models

    quiet_hy3dgen()

    started = time.perf_counter()
    models = load_models(run_options, tiny=preset == Preset.tiny)
    result = generate_mesh(
        models,
        image=image,
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
    )
    _print_summary(result, guidance, time.perf_counter() - started)


def _derived_signature() -> inspect.Signature:
    """`_generate`'s own parameters followed by every declared option of the run, postprocessing and
    guidance dataclasses (one declaration each: vlm3d_ttg.options)."""
    from ..export import PostprocessConfig
    from ..generation import GenerationOptions
    from ..guidance import GuidanceConfig
    from ..options import typer_parameters

    own = [p for p in inspect.signature(_generate, eval_str=True).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    derived = [*typer_parameters(GenerationOptions), *typer_parameters(PostprocessConfig), *typer_parameters(GuidanceConfig)]
    return inspect.Signature(own + derived)


def generate(**values: object) -> None:
    """Generate a mesh from IMAGE with Hunyuan3D-2, guided by Qwen2.5-VL's judgement of PROMPT."""
    _generate(**values)


generate.__signature__ = _derived_signature()  # type: ignore[attr-defined]
generate.__annotations__ = {}


def _print_summary(result, guidance, seconds: float) -> None:
    guided = [r for r in result.records if r.guided]
    skipped = [r for r in guided if r.skipped]
    scored = [r.r for r in guided if r.r is not None]
    typer.echo(f"mesh      {result.mesh_path}  ({result.faces} faces)")
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
    if result.final_r is not None:
        typer.echo(f"critic    final r = {result.final_r:+.3f}  P(yes) = {result.final_p_yes:.3f}")
    typer.echo(f"time      {seconds:.1f} s")
