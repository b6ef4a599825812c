"""`vlm3d-ttg score`: score views (or a mesh) with the guiding critic, without generating anything.

This is the critic that guides `generate` (the same family and query), so its r is what
guidance pushes up — not a held-out measure of quality. An independent judge (another query or
another model) is the benchmark's `vlm3d_ttg.metrics.judge`.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import InvalidInputError
from ..generation import GenerationOptions
from ..options import option_help
from ..presets import PRESETS
from ..scoring import IMAGE_SUFFIXES, SCORABLE_MESH_SUFFIXES

logger = logging.getLogger(__name__)

#: --preset's choices: the offline presets (the real critic is --vlm).
OFFLINE_PRESETS = tuple(name for name, preset in PRESETS.items() if preset.offline)


def _check_inputs(paths: list[Path], preset: Optional[str], vlm: Optional[str]) -> tuple[list[Path], list[Path]]:
    """Split the inputs into images and meshes and check everything that needs no model."""
    if not paths:
        raise InvalidInputError("Give at least one image (or a mesh).")
    images, meshes = [], []
    for path in paths:
        if not path.is_file():
            raise InvalidInputError(f"Input '{path}' does not exist or is not a file.")
        suffix = path.suffix.lower()
        if suffix in SCORABLE_MESH_SUFFIXES:
            meshes.append(path)
        elif suffix in IMAGE_SUFFIXES:
            images.append(path)
        else:
            raise InvalidInputError(
                f"Input '{path}' is neither an image ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                f"nor a mesh ({', '.join(sorted(SCORABLE_MESH_SUFFIXES))})."
            )
    if images and meshes:
        raise InvalidInputError("Give either images or one mesh, not both.")
    if len(meshes) > 1:
        raise InvalidInputError("Give one mesh at a time.")
    if preset is not None and preset not in OFFLINE_PRESETS:
        raise InvalidInputError(f"Unknown preset '{preset}'; choose from {list(OFFLINE_PRESETS)}.")
    if preset is not None and vlm is not None:
        raise InvalidInputError("Give either --preset or --vlm, not both.")
    return images, meshes


def _query_variants(query: str) -> dict[str, str]:
    """{variant name: query} for --query: a variant name, 'all', or a user template (named 'custom')."""
    from ..critic.queries import QUERY_TEMPLATES, resolve_query

    key = query.strip().lower()
    if key == "all":
        return {name: name for name in QUERY_TEMPLATES}
    if key in QUERY_TEMPLATES:
        return {key: key}
    return {"custom": resolve_query(query)}


def score(
    inputs: list[Path] = typer.Argument(..., help="Views of one object (PNG/JPG, same size), or one mesh (GLB/OBJ).", show_default=False),
    prompt: str = typer.Option(..., "--prompt", "-p", help="What the object should be, e.g. 'a wooden chair'.", show_default=False),
    query: str = typer.Option(
        "dual", "--query", "-q", help="dual | content | geometry | all, or your own question with a '{description}' slot."
    ),
    vlm: Optional[str] = typer.Option(None, "--vlm", help="Qwen2.5-VL or Qwen3-VL hub id or local folder (default: Qwen/Qwen2.5-VL-7B-Instruct)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="'tiny': the offline tiny critic (of --critic-family); 'realsize': Qwen2.5-VL-7B's sizes at depth 1, random weights "
                                                                      "(meaningless scores; for smoke tests)."),
    critic_family: Optional[str] = typer.Option(None, "--critic-family", help=option_help(GenerationOptions, "critic_family")),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16 (default: bf16 on CUDA, fp32 on CPU)."),
    views: int = typer.Option(4, "--views", help="Views to render when the input is a mesh."),
    resolution: int = typer.Option(448, "--resolution", help="Render size when the input is a mesh (a multiple of the critic's 28 or 32 px)."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object (for scripts) instead of a table."),
) -> None:
    """Score views (or a mesh) with the guiding critic: r = logit(Yes) - logit(No) and P(yes) per query.

    This is the critic that guides `generate` (same model, same query): it measures what guidance optimises, not held-out quality. For that, use another query or another model (the quality benchmark's independent judge).

    A mesh inside hy3dgen's ±1 cube is rendered as it is; any other mesh is first centred and scaled into it.
    """
    import torch

    from ..critic.families import build_critic, check_family_view_size
    from ..critic.queries import normalize_description
    from ..logs import quiet_transformers
    from ..models import DEFAULT_VLM, critic_family_for, load_vlm, resolve_device
    from ..render import orbit_cameras
    from ..scoring import check_views_show_the_mesh, load_mesh_for_scoring, load_view_files

    image_paths, mesh_paths = _check_inputs(list(inputs), preset, vlm)
    resolve_device(device)  # an unknown or unavailable device is refused before any work
    from ..preflight import bound_problem

    if views < 1:  # with view files too: a bad value is refused whatever the input
        raise InvalidInputError(f"--views must be at least 1, got {views}.")
    for name, value, flag in (("num_views", views, "--views"), ("view_size", resolution, "--resolution")):
        if bound_problem(name, value):
            raise InvalidInputError(f"{flag}: {bound_problem(name, value)}")
    description = normalize_description(prompt)
    variants = _query_variants(query)
    family = critic_family_for(vlm or DEFAULT_VLM, preset or "real", critic_family)
    reframed = False
    if image_paths:
        pixels = load_view_files(image_paths)
    else:  # render before loading the model: a bad mesh should not cost a model load
        if views < 1:
            raise InvalidInputError(f"--views must be at least 1, got {views}.")
        check_family_view_size(family, resolution)
        mesh = load_mesh_for_scoring(mesh_paths[0])
        reframed = mesh.reframed
        render_device = resolve_device(device)
        pixels = check_views_show_the_mesh(mesh.render(orbit_cameras(views, image_size=resolution, device=render_device)),
                                           str(mesh_paths[0]))

    from ..presets import critic_checkpoint

    model_id: str = critic_checkpoint(preset or "real", vlm or DEFAULT_VLM, family=family,
                                      depth=GenerationOptions().realsize_depth)
    quiet_transformers()
    model, processor = load_vlm(model_id, device=device, dtype=dtype)

    results = []
    with torch.no_grad():
        for name, variant_query in variants.items():
            critic = build_critic(model, processor, description, variant_query)
            output = critic(pixels)
            # Enough to recompute r with transformers' own processor and model (README, "Qwen3-VL as the critic").
            results.append({"query": name, "r": float(output.r), "p_yes": float(output.p_yes), "checkpoint": model_id,
                            "chat_text": critic.chat_text(int(pixels.shape[0])), "yes_id": critic.yes_id, "no_id": critic.no_id})
            logger.info("query %s: r=%.4f", name, results[-1]["r"])

    if json_output:
        report: dict[str, Any] = {
            "prompt": prompt,
            "model": model_id,
            "critic_family": critic.family,
            "inputs": [str(path) for path in inputs],
            "num_views": int(pixels.shape[0]),
            "image_size": [int(pixels.shape[2]), int(pixels.shape[3])],
            "results": results,
        }
        if mesh_paths:
            report["mesh_reframed"] = reframed
        typer.echo(json.dumps(report, indent=2))
        return
    if reframed:
        typer.echo(f"note: {mesh_paths[0]} reaches outside hy3dgen's ±1 cube; it was centred and scaled into it.", err=True)
    typer.echo(f"model: {model_id}   views: {pixels.shape[0]} x {pixels.shape[3]}x{pixels.shape[2]}   prompt: {prompt!r}")
    typer.echo(f"{'query':<10} {'r':>9} {'P(yes)':>8}")
    for row in results:
        typer.echo(f"{row['query']:<10} {row['r']:>+9.4f} {row['p_yes']:>8.4f}")


# The former name of `score`, hidden from --help: existing scripts keep working with a one-line
# note, while the word "judge" is left to the benchmark's independent judge. Remove in a later release.
# (functools.wraps gives typer score's parameters, and this function score's docstring.)
@functools.wraps(score)
def judge_deprecated(*args: Any, **kwargs: Any) -> None:
    typer.secho("note: `vlm3d-ttg judge` is now `vlm3d-ttg score` (the guiding critic's score); 'judge' will be removed.", err=True)
    score(*args, **kwargs)
