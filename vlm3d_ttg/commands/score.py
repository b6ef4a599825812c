"""`vlm3d-ttg score`: score views (or a mesh) with the guiding critic, without generating anything.

This is the critic that guides `generate` (the same family and query), so its r is what
guidance pushes up — not a held-out measure of quality. An independent judge (another query or
another model) is the benchmark's `vlm3d_ttg.metrics.judge`.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import InvalidInputError
from ..generation import GenerationOptions
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


#: score's options taken from generate's declarations (the same help, ranges and checks), by owner.
#: --backbone: a mesh file is framed in the cube its backbone decodes into (`Backbone.bounds`), where
#: the critic saw that backbone's meshes during guidance (vlm3d_ttg.scoring); score decodes nothing.
DERIVED = {"guidance": ("num_views", "view_size"), "run": ("backbone", "critic_family", "device", "vlm_dtype")}
#: Flags score keeps from before its options were derived: --resolution (= --view-size), --dtype (= --vlm-dtype).
FLAGS = {"view_size": ("--resolution", "--view-size"), "vlm_dtype": ("--vlm-dtype", "--dtype")}


@dataclass(frozen=True)
class _Settings:
    """score's checked options."""

    run: GenerationOptions  # backbone, critic_family, device, vlm_dtype (the rest: defaults)
    num_views: int
    view_size: int
    family: str


def _score(
    context: typer.Context,
    inputs: list[Path] = typer.Argument(..., help="Views of one object (PNG/JPG, same size), or one mesh (GLB/OBJ).", show_default=False),
    prompt: str = typer.Option(..., "--prompt", "-p", help="What the object should be, e.g. 'a wooden chair'.", show_default=False),
    query: str = typer.Option(
        "dual", "--query", "-q", help="dual | content | geometry | all, or your own question with a '{description}' slot."
    ),
    vlm: Optional[str] = typer.Option(None, "--vlm", help="Qwen2.5-VL or Qwen3-VL hub id or local folder (default: Qwen/Qwen2.5-VL-7B-Instruct)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="'tiny': the offline tiny critic (of --critic-family); 'realsize': Qwen2.5-VL-7B's sizes at depth 1, random weights "
                                                                      "(meaningless scores; for smoke tests); 'mini': the trained miniature world's critic, "
                                                                      "at its own view defaults."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object (for scripts) instead of a table."),
    **options: Any,
) -> None:
    """Score views (or a mesh) with the guiding critic: r = logit(Yes) - logit(No) and P(yes) per query."""
    import torch

    from ..critic.families import build_critic
    from ..critic.queries import normalize_description
    from ..logs import quiet_transformers
    from ..models import DEFAULT_VLM, load_vlm
    from ..presets import critic_checkpoint

    image_paths, mesh_paths = _check_inputs(list(inputs), preset, vlm)
    settings = _check_options(_with_preset_defaults(options, context, preset), preset=preset, vlm=vlm)
    description = normalize_description(prompt)
    variants = _query_variants(query)
    pixels, reframed = _views_to_score(image_paths, mesh_paths, settings)
    model_id: str = critic_checkpoint(preset or "real", vlm or DEFAULT_VLM, family=settings.family,
                                      depth=settings.run.realsize_depth)
    quiet_transformers()
    model, processor = load_vlm(model_id, device=settings.run.device, dtype=settings.run.vlm_dtype)
    results = []
    with torch.no_grad():
        for name, variant_query in variants.items():
            critic = build_critic(model, processor, description, variant_query)
            output = critic(pixels)
            # Enough to recompute r with transformers' own processor and model (README, "Qwen3-VL as the critic").
            results.append({"query": name, "r": float(output.r), "p_yes": float(output.p_yes), "checkpoint": model_id,
                            "chat_text": critic.chat_text(int(pixels.shape[0])), "yes_id": critic.yes_id, "no_id": critic.no_id})
            logger.info("query %s: r=%.4f", name, results[-1]["r"])
    report = {"prompt": prompt, "model": model_id, "critic_family": critic.family, "inputs": [str(path) for path in inputs],
              "num_views": int(pixels.shape[0]), "image_size": [int(pixels.shape[2]), int(pixels.shape[3])], "results": results}
    if mesh_paths:
        report["mesh_reframed"] = reframed
    _print_report(report, json_output=json_output, reframed_mesh=mesh_paths[0] if reframed else None)


def _with_preset_defaults(values: dict[str, Any], context: typer.Context, preset: Optional[str]) -> dict[str, Any]:
    """score's options with the preset's (and the backbone's) defaults where the user gave none, as generate's
    (the mini critic, e.g., reads 4 views of 112 px: at generate's 448 px its prompt outgrows its context)."""
    from ..generation import option_defaults
    from .generate import given_options

    own = option_defaults(preset or "real", values["backbone"])
    return {**values, **{name: value for name, value in own.items() if name in values}, **given_options(values, context)}


def _check_options(values: dict[str, Any], *, preset: Optional[str], vlm: Optional[str]) -> _Settings:
    """score's derived options checked as generate checks them (the same declarations), before any work."""
    from ..guidance import GuidanceConfig
    from ..models import DEFAULT_VLM, critic_family_for, resolve_device
    from ..options import declared_option, flag_of, from_values, range_problem

    run = from_values(GenerationOptions, {name: values[name] for name in DERIVED["run"]}).validate()
    resolve_device(run.device)  # an unknown or unavailable device is refused before any work
    for name in DERIVED["guidance"]:  # with view files too: a bad value is refused whatever the input
        field, spec = declared_option(GuidanceConfig, name)
        problem = range_problem(field, spec, values[name])
        if problem:
            raise InvalidInputError(f"{FLAGS.get(name, (flag_of(field, spec),))[0]}: {problem}")
    family = critic_family_for(vlm or DEFAULT_VLM, preset or "real", run.critic_family)
    return _Settings(run, values["num_views"], values["view_size"], family)


def _views_to_score(image_paths: list[Path], mesh_paths: list[Path], settings: _Settings) -> tuple[Any, bool]:
    """The views the critic scores (N, 3, H, W) and whether a mesh was reframed: the view files, or the
    mesh rendered from orbit cameras (before loading the model: a bad mesh should not cost a model load)."""
    from ..backbones import backbone_class
    from ..critic.families import check_family_view_size
    from ..models import resolve_device
    from ..render import orbit_cameras
    from ..scoring import check_views_show_the_mesh, load_mesh_for_scoring, load_view_files

    if image_paths:
        return load_view_files(image_paths), False
    check_family_view_size(settings.family, settings.view_size)
    mesh = load_mesh_for_scoring(mesh_paths[0], cube=backbone_class(settings.run.backbone).bounds)
    cameras = orbit_cameras(settings.num_views, image_size=settings.view_size, device=resolve_device(settings.run.device))
    return check_views_show_the_mesh(mesh.render(cameras), str(mesh_paths[0])), mesh.reframed


def _print_report(report: dict[str, Any], *, json_output: bool, reframed_mesh: Optional[Path]) -> None:
    if json_output:
        typer.echo(json.dumps(report, indent=2))
        return
    if reframed_mesh is not None:
        typer.echo(f"note: {reframed_mesh} reaches outside hy3dgen's ±1 cube; it was centred and scaled into it.", err=True)
    views, (height, width) = report["num_views"], report["image_size"]
    typer.echo(f"model: {report['model']}   views: {views} x {width}x{height}   prompt: {report['prompt']!r}")
    typer.echo(f"{'query':<10} {'r':>9} {'P(yes)':>8}")
    for row in report["results"]:
        typer.echo(f"{row['query']:<10} {row['r']:>+9.4f} {row['p_yes']:>8.4f}")


def _derived_signature() -> inspect.Signature:
    """`_score`'s own parameters followed by the options it shares with generate (DERIVED), from their declarations."""
    from ..guidance import GuidanceConfig
    from ..options import typer_parameters

    own = [p for p in inspect.signature(_score, eval_str=True).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    derived = [*typer_parameters(GuidanceConfig, only=DERIVED["guidance"], flags=FLAGS),
               *typer_parameters(GenerationOptions, only=DERIVED["run"], flags=FLAGS)]
    return inspect.Signature(own + derived)


def score(**values: Any) -> None:
    """Score views (or a mesh) with the guiding critic: r = logit(Yes) - logit(No) and P(yes) per query.

    This is the critic that guides `generate` (same model, same query): it measures what guidance optimises, not held-out quality. For that, use another query or another model (the quality benchmark's independent judge).

    A mesh inside hy3dgen's ±1 cube (the --backbone's decoding cube) is rendered as it is; any other mesh is first centred and scaled into it.
    """
    _score(**values)


score.__signature__ = _derived_signature()  # type: ignore[attr-defined]
score.__annotations__ = {}


# The former name of `score`, hidden from --help: existing scripts keep working with a one-line
# note, while the word "judge" is left to the benchmark's independent judge. Remove in a later release.
# (functools.wraps gives typer score's parameters, and this function score's docstring.)
@functools.wraps(score)
def judge_deprecated(*args: Any, **kwargs: Any) -> None:
    typer.secho("note: `vlm3d-ttg judge` is now `vlm3d-ttg score` (the guiding critic's score); 'judge' will be removed.", err=True)
    score(*args, **kwargs)
