"""One generation request checked before any heavy work: the checks `vlm3d-ttg generate` and the
app share, so both refuse the same things with the same message.

    request = validate_request(values, prompt="a toy robot", preset="tiny", image="robot.png")
    request.options, request.guidance, request.postprocess, request.search   # validated dataclasses

`values` are option values keyed by field name, in their command-line form (`"0.2,0.85"` for the
σ window, 0 for "no cap"), as typer or the app's widgets give them; fields not given keep their
declared defaults. Output paths are the CLI's business (the app writes into its own run folders).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import InvalidInputError
from .export import PostprocessConfig
from .generation import PRESETS, GenerationOptions
from .guidance import GuidanceConfig
from .options import from_values
from .search import SearchOptions, check_search_with_guidance, guided_steps_with_search

#: The export grid when a request leaves `octree_resolution` unset: hy3dgen's 384, 128 on the tiny preset.
DEFAULT_OCTREE = {"real": 384, "realsize": 384, "tiny": 128}


@dataclass(frozen=True)
class RunRequest:
    """A request that passed every check: what `generation.generate_mesh` is called with."""

    prompt: str
    preset: str
    image: Path | None  # None: text-to-3D, the input image is made from the prompt
    options: GenerationOptions
    guidance: GuidanceConfig
    postprocess: PostprocessConfig
    search: SearchOptions
    guided_steps: list[int]  # the sampler steps this run will guide
    warnings: tuple[str, ...] = ()  # things the user should hear that do not stop the run


def validate_request(
    values: Mapping[str, Any],
    *,
    prompt: str,
    preset: str,
    image: str | os.PathLike | None,
) -> RunRequest:
    """Check a whole request (prompt, every option, preset, the input image or the text-to-image
    models) and return it validated; raise InvalidInputError (or ModelNotFoundError) with the message
    the user sees, before any model loads or any output is written."""
    from .critic.queries import normalize_description

    if preset not in PRESETS:
        raise InvalidInputError(f"Unknown preset {preset!r}; use one of {', '.join(PRESETS)}.")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidInputError("--prompt is empty; describe the object (e.g. 'a wooden chair with four legs').")
    normalize_description(prompt)  # chat markup in the prompt is refused now, not after the models load
    options, guidance, postprocess, search = validate_options(values)
    if options.octree_resolution is None:
        options = dataclasses.replace(options, octree_resolution=DEFAULT_OCTREE[preset])
    defaults = GenerationOptions()
    if preset in ("tiny", "realsize"):
        ignored = [flag for flag, name in (("--shape-model", "shape_model"), ("--shape-subfolder", "shape_subfolder"),
                                           ("--vlm", "vlm"), ("--text-to-image", "text_to_image"))
                   if getattr(options, name) != getattr(defaults, name)]
        if ignored:
            raise InvalidInputError(f"{', '.join(ignored)} would be ignored with --preset {preset} (it uses "
                                    f"its own offline checkpoints); drop them or use --preset real.")
    if preset != "realsize" and options.realsize_depth != defaults.realsize_depth:
        raise InvalidInputError("--realsize-depth only applies to --preset realsize; drop it or add --preset realsize.")
    # Options that would do nothing: said now, not discovered in the manifest afterwards.
    planned = guided_steps_with_search(list(np.linspace(0.0, 1.0, options.steps)) + [1.0], guidance, search)
    warnings: list[str] = []
    if guidance.enabled and not planned:
        after_search = f" after the candidate search at σ ≥ {search.select_at:g}" if search.searching else ""
        warnings.append(f"guidance is on, but no step of a {options.steps}-step run falls in the σ window "
                        f"{guidance.sigma_window} (every {guidance.every}){after_search}: this run will not be guided")
    if image is not None and options.text_to_image != defaults.text_to_image:
        raise InvalidInputError("--text-to-image makes the input image when no IMAGE is given; with IMAGE it would "
                                "be ignored: drop one of them.")
    if image is not None:
        from .inputs import check_condition_image

        check_condition_image(image)
    elif preset == "real":  # the offline presets write their own models
        from .generation import check_models_present
        from .text2image import check_text_to_image_model

        check_text_to_image_model(options.text_to_image)
        check_models_present(options)
    _preflight(options, guidance, search, prompt=prompt, preset=preset)
    return RunRequest(prompt=prompt, preset=preset, image=Path(image) if image is not None else None, options=options,
                      guidance=guidance, postprocess=postprocess, search=search, guided_steps=planned,
                      warnings=tuple(warnings))


def validate_options(
    values: Mapping[str, Any],
) -> tuple[GenerationOptions, GuidanceConfig, PostprocessConfig, SearchOptions]:
    """The four option dataclasses from command-line-form `values`, each validated (and search
    against guidance); raises InvalidInputError naming the first bad option."""
    guidance = from_values(GuidanceConfig, dict(values)).validate()
    postprocess = from_values(PostprocessConfig, dict(values)).validate()
    options = from_values(GenerationOptions, dict(values)).validate()
    search = from_values(SearchOptions, dict(values)).validate()
    check_search_with_guidance(search, guidance)
    return options, guidance, postprocess, search


def _preflight(options: GenerationOptions, guidance: GuidanceConfig, search: SearchOptions, *, prompt: str,
               preset: str) -> None:
    """The resource preflight every request passes (estimated memory and work refused before it starts).

    TODO(issue #19, branch `safety`): call `preflight.check_generation(options, guidance, search,
    prompt=prompt, preset=preset)` here when that module is merged; it raises an InvalidInputError
    subclass for a run that cannot fit. Until then this hook checks nothing.
    """
    return None


__all__ = ["DEFAULT_OCTREE", "RunRequest", "validate_options", "validate_request"]
