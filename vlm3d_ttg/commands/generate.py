"""`vlm3d-ttg generate`: image + description → (guided) Hunyuan3D-2 mesh, manifest, pictures."""

from __future__ import annotations

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


def generate(
    image: Path = typer.Argument(..., help="Conditioning image (RGBA with a transparent background is best)."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="Text description the critic checks the shape against."),
    out: Path = typer.Option(..., "--out", "-o", help="Output mesh (.glb, .obj, .ply, .stl, .off)."),
    manifest: Optional[Path] = typer.Option(None, help="Run manifest JSON (default: OUT with .json)."),
    preset: Preset = typer.Option(Preset.real, help="'tiny': offline tiny checkpoints (meaningless shapes, exercises the pipeline)."),
    shape_model: str = typer.Option("tencent/Hunyuan3D-2", help="hy3dgen shape model: repo id or variant name (e.g. hunyuan3d-2mini)."),
    shape_subfolder: Optional[str] = typer.Option(None, help="Subfolder of the shape repo (default: the repo's main DiT)."),
    vlm: str = typer.Option("Qwen/Qwen2.5-VL-7B-Instruct", help="Critic: Qwen2.5-VL hub id or local folder."),
    device: str = typer.Option("auto", help="cuda, cpu or auto."),
    dtype: str = typer.Option("auto", help="Shape model dtype (auto: float16 on CUDA, float32 on CPU)."),
    vlm_dtype: str = typer.Option("auto", help="Critic dtype (auto: bfloat16 on CUDA, float32 on CPU)."),
    seed: int = typer.Option(0, help="Random seed (noise and camera jitter)."),
    steps: int = typer.Option(50, help="Sampler steps."),
    cfg: float = typer.Option(5.0, "--cfg", help="Classifier-free guidance scale of the shape model."),
    no_guidance: bool = typer.Option(False, "--no-guidance", help="The unguided baseline on the same seed."),
    scale: float = typer.Option(0.03, "--scale", "--lambda", help="Guidance strength λ (see --step-norm)."),
    step_norm: str = typer.Option("latent_rms", help="raw (λ·∇r, the paper), latent_rms or sampler_step (scale-free)."),
    max_step_ratio: float = typer.Option(1.0, help="Cap on the guidance step relative to the sampler's step (0: no cap)."),
    schedule: str = typer.Option("constant", help="constant or linear_decay (across the σ window)."),
    sigma_window: str = typer.Option("0.2,0.85", help="Guide only for σ in LO,HI (σ: 0 noise → 1 data)."),
    every: int = typer.Option(2, help="Guide every k-th step inside the window."),
    inner_steps: int = typer.Option(1, help="Gradient steps per guided sampler step."),
    grad_mode: str = typer.Option("x0", help="x0 (straight-through, default) or xt (through the DiT, exact, slower)."),
    views: int = typer.Option(4, help="Views rendered for the critic."),
    view_size: int = typer.Option(448, help="View side in pixels (a multiple of 28)."),
    elevation: float = typer.Option(20.0, help="Camera elevation in degrees."),
    azimuth_jitter: float = typer.Option(15.0, help="Per-step random azimuth offset (±degrees)."),
    elevation_jitter: float = typer.Option(5.0, help="Per-step random elevation offset (±degrees)."),
    grid: int = typer.Option(64, help="Occupancy grid resolution for guidance (power-of-two multiple of 32, or ≤ 32)."),
    query: str = typer.Option("dual", help="dual (paper), content, geometry, or a template with {description}."),
    render_backend: str = typer.Option("auto", help="auto, cpu or nvdiffrast."),
    checkpointing: bool = typer.Option(False, help="Activation checkpointing in the critic (saves memory on the 7B)."),
    offload_idle: bool = typer.Option(False, help="Keep the idle model (DiT or critic) in CPU memory on a GPU run."),
    octree_resolution: Optional[int] = typer.Option(None, help="Export grid (default 384; 128 with --preset tiny)."),
    remove_floaters: bool = typer.Option(False, help="Remove small disconnected parts (hy3dgen's FloaterRemover)."),
    remove_degenerate: bool = typer.Option(False, help="Remove degenerate faces (hy3dgen's DegenerateFaceRemover)."),
    max_faces: Optional[int] = typer.Option(None, help="Reduce to at most this many faces (hy3dgen's FaceReducer)."),
    save_views: Optional[Path] = typer.Option(None, help="Folder for contact sheets of what the critic saw."),
    views_at: str = typer.Option("summary", help="Guided steps to save views of: summary, all, none, or 4,10,20."),
    plot: bool = typer.Option(False, help="Also write a plot of r over the steps (OUT with _r.png)."),
    quiet: bool = typer.Option(False, help="No progress bar."),
) -> None:
    """Generate a mesh from IMAGE with Hunyuan3D-2, guided by Qwen2.5-VL's judgement of PROMPT."""
    from ..export import PostprocessConfig, check_mesh_path
    from ..guidance import GuidanceConfig, parse_sigma_window
    from ..inputs import check_condition_image
    from ..io import check_writable
    from ..manifest import manifest_path_for

    # ---- everything that can be wrong is checked before any model loads --------------------
    if not prompt.strip():
        raise InvalidInputError("--prompt is empty; describe the object (e.g. 'a wooden chair with four legs').")
    from ..critic.queries import normalize_description, resolve_query

    # Chat markup in the prompt or a user template is refused now, not after the models load.
    normalize_description(prompt)
    resolve_query(query)
    if steps < 2:
        raise InvalidInputError(f"--steps must be ≥ 2, got {steps}")
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
    guidance = GuidanceConfig(
        enabled=not no_guidance,
        scale=scale,
        step_norm=step_norm,  # type: ignore[arg-type]
        max_step_ratio=max_step_ratio if max_step_ratio > 0 else None,
        schedule=schedule,  # type: ignore[arg-type]
        sigma_window=parse_sigma_window(sigma_window),
        every=every,
        inner_steps=inner_steps,
        grad_mode=grad_mode,  # type: ignore[arg-type]
        num_views=views,
        view_size=view_size,
        elevation=elevation,
        azimuth_jitter=azimuth_jitter,
        elevation_jitter=elevation_jitter,
        grid_resolution=grid,
        query=query,
        backend=render_backend,
    ).validate()
    postprocess = PostprocessConfig(remove_floaters, remove_degenerate, max_faces).validate()
    keep_views = _parse_views_at(views_at) if save_views is not None else "none"
    if octree_resolution is None:
        octree_resolution = 128 if preset == Preset.tiny else 384
    if octree_resolution < 16:
        raise InvalidInputError(f"--octree-resolution must be ≥ 16, got {octree_resolution}")
    check_condition_image(image)
    if render_backend not in ("auto", "cpu", "nvdiffrast"):
        raise InvalidInputError(f"--render-backend must be auto, cpu or nvdiffrast, got {render_backend!r}")

    from ..logs import quiet_hy3dgen
    from ..generation import generate_mesh, load_models

    quiet_hy3dgen()

    started = time.perf_counter()
    models = load_models(
        tiny=preset == Preset.tiny,
        shape_model=shape_model,
        shape_subfolder=shape_subfolder,
        vlm=vlm,
        device=device,
        dtype=dtype,
        vlm_dtype=vlm_dtype,
        offload_idle=offload_idle,
    )
    result = generate_mesh(
        models,
        image=image,
        prompt=prompt,
        out=out,
        manifest_path=manifest_path,
        guidance=guidance,
        postprocess=postprocess,
        seed=seed,
        steps=steps,
        cfg=cfg,
        octree_resolution=octree_resolution,
        checkpointing=checkpointing,
        offload_idle=offload_idle,
        views_dir=save_views,
        keep_views=keep_views,
        plot_path=plot_path,
        progress=not quiet,
    )
    _print_summary(result, time.perf_counter() - started)


def _print_summary(result, seconds: float) -> None:
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
    else:
        typer.echo("guidance  off")
    if result.final_r is not None:
        typer.echo(f"critic    final r = {result.final_r:+.3f}  P(yes) = {result.final_p_yes:.3f}")
    typer.echo(f"time      {seconds:.1f} s")
