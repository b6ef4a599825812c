"""One module per CLI command; each only parses, loads and calls the library."""

from __future__ import annotations

import inspect
from typing import Callable


def with_run_options(command: Callable[..., None]) -> inspect.Signature:
    """`command`'s own parameters followed by every declared option of a run (generation, postprocessing,
    guidance and search dataclasses: one declaration each, vlm3d_ttg.options), for a typer command that
    takes the run options as `**options`."""
    from ..export import PostprocessConfig
    from ..generation import GenerationOptions
    from ..guidance import GuidanceConfig
    from ..options import typer_parameters
    from ..search import SearchOptions

    own = [p for p in inspect.signature(command, eval_str=True).parameters.values()
           if p.kind is not inspect.Parameter.VAR_KEYWORD]
    derived = [*typer_parameters(GenerationOptions), *typer_parameters(PostprocessConfig), *typer_parameters(GuidanceConfig),
               *typer_parameters(SearchOptions)]
    return inspect.Signature(own + derived)
