"""One generation request checked before any heavy work: the checks `vlm3d-ttg generate` and the
app share, so both refuse the same things with the same message.

    request = validate_request(values, prompt="a toy robot", preset="mini", image="robot.png")
    request.options, request.guidance, request.postprocess, request.search   # validated dataclasses

`values` are option values keyed by field name, in their command-line form (`"0.2,0.85"` for the
σ window, 0 for "no cap"), as typer or the app's widgets give them; fields not given take the
preset's and the backbone's defaults (`generation.option_defaults`), then their declared ones.
Output paths are the CLI's business (the app writes into its own run folders).
"""

from __future__ import annotations

import dataclasses
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .errors import InvalidInputError
from .export import PostprocessConfig
from .generation import GenerationOptions, export_resolution, with_defaults
from .guidance import GuidanceConfig
from .options import from_values
from .presets import get_preset
from .search import SearchOptions, check_search_with_guidance, guided_steps_with_search

#: Guidance options that change nothing in a run without guidance (--no-guidance): given with it, refused.
#: (Accepted: the views, query and reference also set the final mesh's score; the σ window and --every
#: choose the step whose x̂ fixes the silhouette camera in every run; a candidate search ranks by the
#: reward's terms, so --silhouette-weight counts with --candidates.)
GUIDANCE_ONLY = ("scale", "step_norm", "max_step_ratio", "schedule", "inner_steps", "grad_mode", "silhouette_weight",
                 "reuse_displacement", "stop_r")

@dataclass(frozen=True)
class RunRequest:
    """A request that passed every check: what `generation.generate_mesh` is called with."""

    prompt: str
    preset: str
    image: Path | None  # None: text-to-3D, the input image is made from the prompt
    views: dict[str, Path]  # a multi-view model's extra views ("left", "back", "right"); IMAGE is the front
    options: GenerationOptions
    guidance: GuidanceConfig
    postprocess: PostprocessConfig
    search: SearchOptions
    guided_steps: list[int]  # the sampler steps this run will guide
    warnings: tuple[str, ...] = ()  # things the user should hear that do not stop the run


def visible_text(text: str) -> bool:
    """Whether `text` has a character a reader can see (a letter, digit, punctuation or symbol): a prompt
    of spaces, zero-width or other invisible characters only is empty."""
    return any(unicodedata.category(char)[0] in "LNPS" for char in text)


def check_guidance_knobs(values: Mapping[str, Any], guidance: GuidanceConfig, search: SearchOptions,
                         baseline: Mapping[str, Any] | None = None) -> None:
    """Refuse a guidance option set away from its default (or from `baseline`'s value: the app's server
    options) in a run without guidance (--no-guidance): it would change nothing, and the user believes
    it did. Raises InvalidInputError naming both."""
    if guidance.enabled:
        return
    if guidance.speed != "quality":
        raise InvalidInputError(f"--speed {guidance.speed} chooses how often and with how many views the critic is asked; "
                                "with --no-guidance nothing is guided: drop --speed or drop --no-guidance.")
    from .options import declared, flag_of

    defaults = from_values(GuidanceConfig, dict(baseline or {}))
    given = []
    for f, spec in declared(GuidanceConfig):
        if f.name not in GUIDANCE_ONLY or f.name not in values:
            continue
        if f.name == "silhouette_weight" and search.searching:
            continue  # the candidate search ranks by the whole reward, this term included
        if getattr(guidance, f.name) != getattr(defaults, f.name):
            given.append(flag_of(f, spec))
    if given:
        raise InvalidInputError(f"{', '.join(given)} {'has' if len(given) == 1 else 'have'} no effect with --no-guidance "
                                f"(nothing is guided); drop {'it' if len(given) == 1 else 'them'} or drop --no-guidance.")


@dataclass(frozen=True)
class RunSettings:
    """Every option of a run checked against each other and the preset (no prompt, no image): what the
    app checks at start for its defaults, and what every request starts from."""

    options: GenerationOptions
    guidance: GuidanceConfig
    postprocess: PostprocessConfig
    search: SearchOptions
    guided_steps: list[int]
    warnings: tuple[str, ...] = ()


def validate_settings(values: Mapping[str, Any], *, preset: str, baseline: Mapping[str, Any] | None = None) -> RunSettings:
    """The option dataclasses from command-line-form `values`, validated one by one and against each
    other and `preset` (options the combination would ignore are refused naming both; `baseline`: the
    values a request starts from, the app's server options); raises InvalidInputError with the message
    the user sees. Options not in `values` take the preset's and the backbone's defaults
    (`generation.option_defaults`), then their declared ones."""
    from .backbones import backbone_class

    record = get_preset(preset)
    values = with_defaults(values, preset)
    options, guidance, postprocess, search = validate_options(values, preset=preset)
    if options.octree_resolution is None:
        options = dataclasses.replace(options, octree_resolution=export_resolution(preset, options.backbone))
    _check_offline_options(options, record)
    check_guidance_knobs(values, guidance, search, with_defaults(baseline or {}, preset))
    # Options that would do nothing: said now, not discovered in the manifest afterwards.
    # The steps the chosen backbone's own σ schedule puts in the guidance window.
    planned = guided_steps_with_search(backbone_class(options.backbone).planned_schedule(options.steps), guidance, search)
    warnings: list[str] = []
    if guidance.active and not planned:
        after_search = f" after the candidate search at σ ≥ {search.select_at:g}" if search.searching else ""
        warnings.append(f"guidance is on, but no step of a {options.steps}-step run falls in the σ window "
                        f"{guidance.sigma_window} (every {guidance.every}){after_search}: this run will not be guided")
    return RunSettings(options, guidance, postprocess, search, planned, tuple(warnings))


def _check_offline_options(options: GenerationOptions, record: Any) -> None:
    """Refuse what `record` (a `presets.Preset`) would ignore: the model options of an offline preset (a variant
    name where it has a copy of each variant excepted), --realsize-depth where it has no depth."""
    from .backbones import backbone_class, backbone_variants
    from .presets import PRESETS

    defaults = GenerationOptions()
    if record.offline:
        variant_ok = record.shape_variants and options.shape_model.lower() in backbone_variants(backbone_class(options.backbone))
        ignored = [flag for flag, name in (("--shape-model", "shape_model"), ("--shape-subfolder", "shape_subfolder"),
                                           ("--vlm", "vlm"), ("--text-to-image", "text_to_image"))
                   if getattr(options, name) != getattr(defaults, name) and not (name == "shape_model" and variant_ok)]
        with_variants = [f"--preset {p.name}" for p in PRESETS.values() if p.offline and p.shape_variants]
        if ignored:
            raise InvalidInputError(f"{', '.join(ignored)} would be ignored with --preset {record.name} (it uses "
                                    f"its own offline checkpoints; {' and '.join(with_variants)} take a variant name as "
                                    "--shape-model, e.g. hunyuan3d-2mv); drop them or use --preset real.")
    if not record.depth_scaled and options.realsize_depth != defaults.realsize_depth:
        scaled = " or ".join(f"--preset {p.name}" for p in PRESETS.values() if p.depth_scaled)
        raise InvalidInputError(f"--realsize-depth only applies to {scaled}; drop it or add {scaled}.")


def validate_request(
    values: Mapping[str, Any],
    *,
    prompt: str,
    preset: str,
    image: str | os.PathLike | None,
    views: Mapping[str, str | os.PathLike | None] | None = None,
    baseline: Mapping[str, Any] | None = None,
) -> RunRequest:
    """Check a whole request (prompt, every option, preset, the input image and a multi-view model's
    extra `views`, or the text-to-image models) and return it validated; raise InvalidInputError (or
    ModelNotFoundError) with the message the user sees, before any model loads or any output is written.
    `baseline`: the values the request starts from (the app's server options; see `validate_settings`)."""
    from .critic.queries import normalize_description

    record = get_preset(preset)
    if isinstance(prompt, str):
        from .critic.queries import check_encoding

        check_encoding(prompt, "prompt")  # before "empty": undecodable bytes are not invisible text
    if not isinstance(prompt, str) or not visible_text(prompt):
        raise InvalidInputError("--prompt is empty (no visible characters); describe the object (e.g. 'a wooden chair "
                                "with four legs').")
    normalize_description(prompt)  # chat markup in the prompt is refused now, not after the models load
    settings = validate_settings(values, preset=preset, baseline=baseline)
    options, guidance, postprocess, search = settings.options, settings.guidance, settings.postprocess, settings.search
    planned, warnings = settings.guided_steps, list(settings.warnings)
    defaults = GenerationOptions()
    if image is not None and options.text_to_image != defaults.text_to_image:
        raise InvalidInputError("--text-to-image makes the input image when no IMAGE is given; with IMAGE it would "
                                "be ignored: drop one of them.")
    extra_views = check_views(image, dict(views or {}), options, preset)
    if image is not None:
        from .inputs import check_condition_image

        check_condition_image(image)
        for name, view in extra_views.items():
            try:
                check_condition_image(view)
            except InvalidInputError as exc:
                raise InvalidInputError(f"--{name}: {exc}") from None
    elif not record.offline:
        from .text2image import check_text_to_image_model

        check_text_to_image_model(options.text_to_image)
    if not record.offline:  # a missing model comes before whether it fits (the offline presets write theirs)
        from .generation import check_models_present

        check_models_present(options)
    _preflight(options, guidance, search, prompt=prompt, preset=preset)
    return RunRequest(prompt=prompt, preset=preset, image=Path(image) if image is not None else None, views=extra_views,
                      options=options, guidance=guidance, postprocess=postprocess, search=search, guided_steps=planned,
                      warnings=tuple(warnings))


def check_views(image: str | os.PathLike | None, given: Mapping[str, str | os.PathLike | None], options: GenerationOptions,
                preset: str) -> dict[str, Path]:
    """The extra views given ({name: path}), checked against the inputs the backbone takes for these options
    (`backbones.backbone_conditioning`) before it loads: a multi-view model takes IMAGE (the front) plus at
    least one of its other views; any other model takes none of them."""
    from .backbones import backbone_class, backbone_conditioning

    views = {name: Path(path) for name, path in given.items() if path is not None}
    record = get_preset(preset)
    conditioning = backbone_conditioning(backbone_class(options.backbone), options, record)
    multiview = conditioning.multiview
    flags = ", ".join(f"--{name}" for name in views)
    if views and not multiview:
        model = f"the {record.name} preset's model" if not record.shape_variants else f"'{options.shape_model}'"
        hint = f", e.g. {conditioning.multiview_hint}" if conditioning.multiview_hint else ""
        raise InvalidInputError(f"{flags}: {model} takes one image. Extra views need a multi-view model{hint}.")
    unknown = [name for name in views if name not in conditioning.views]
    if multiview and unknown:
        raise InvalidInputError(f"{', '.join('--' + name for name in unknown)}: this model takes the views "
                                f"{', '.join(conditioning.views)} only.")
    if image is None and not conditioning.text_to_image:
        raise InvalidInputError("A multi-view model needs the front IMAGE plus --left/--back/--right; text-to-3D "
                                "(no IMAGE) makes one view only: use a single-view --shape-model." if multiview else
                                "This shape model needs IMAGE: it takes no prompt alone (text-to-3D).")
    if multiview and not views:
        raise InvalidInputError(f"'{options.shape_model}' is a multi-view model: give IMAGE (the front) plus at "
                                "least one of --left, --back, --right.")
    if image is not None and views:
        paths = {"IMAGE": image, **{f"--{name}": path for name, path in views.items()}}
        seen: dict[Any, str] = {}
        for flag, path in paths.items():  # different files: by device and inode (hard links), else by real path
            try:
                info = os.stat(path)
                identity: Any = (info.st_dev, info.st_ino)
            except OSError:
                identity = os.path.realpath(path)
            if identity in seen:
                raise InvalidInputError(f"{seen[identity]} and {flag} are the same file ('{paths[seen[identity]]}', "
                                        f"'{path}'): the views must be different files, each a picture of the object "
                                        "from its side.")
            seen[identity] = flag
    return views


def validate_options(
    values: Mapping[str, Any], *, preset: str = "real",
) -> tuple[GenerationOptions, GuidanceConfig, PostprocessConfig, SearchOptions]:
    """The four option dataclasses from command-line-form `values`, each validated (the view size
    against the critic family the run will use, search against guidance); raises InvalidInputError
    naming the first bad option."""
    from .models import critic_family_for

    options = from_values(GenerationOptions, dict(values)).validate()
    # The view size must suit the critic's family (28 px for Qwen2.5-VL, 32 for Qwen3-VL), read now from --vlm's config.
    family = critic_family_for(options.vlm, preset, options.critic_family)
    query = values.get("query")
    if isinstance(query, str):
        from .critic.queries import QUERY_TEMPLATES, resolve_query

        if query.strip().lower() not in QUERY_TEMPLATES:
            resolve_query(query)  # the template's own check: names a format spec or conversion as such (as `score`)
    guidance = from_values(GuidanceConfig, dict(values)).validate(critic_family=family)
    postprocess = from_values(PostprocessConfig, dict(values)).validate()
    search = from_values(SearchOptions, dict(values)).validate()
    check_search_with_guidance(search, guidance)
    return options, guidance, postprocess, search


def _preflight(options: GenerationOptions, guidance: GuidanceConfig, search: SearchOptions, *, prompt: str,
               preset: str) -> None:
    """Will it fit? The run's estimated peak memory against the host's and the device's, and its work
    against the sane bounds (`preflight.check_generation`), before anything loads: an InvalidInputError
    subclass (`ResourceLimitError`) for a run that cannot fit."""
    from .preflight import check_generation

    check_generation(options, guidance, search, prompt=prompt, preset=preset)


__all__ = ["GUIDANCE_ONLY", "RunRequest", "RunSettings", "check_guidance_knobs", "check_views", "validate_options",
           "validate_request", "validate_settings", "visible_text"]
