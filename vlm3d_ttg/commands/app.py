"""`vlm3d-ttg app`: the web app and its HTTP API, models loaded once with `generate`'s loaders and options."""

from __future__ import annotations

import inspect
import ipaddress
import tempfile
from pathlib import Path
from typing import Optional

import typer

from ..errors import InvalidInputError
from .generate import Preset

LOOPBACK_NOTE = "bound to this machine only; --host 0.0.0.0 opens it to the network"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warnings(host: str, share: bool) -> list[str]:
    """What the user must hear before the app serves beyond this machine (empty on 127.0.0.1 without --share)."""
    warnings = []
    if not _is_loopback(host):
        warnings.append(f"serving on {host}: anyone who can reach this machine on the network can use the app and "
                        "its GPU, with no login. Use --host 127.0.0.1 (the default) unless you mean that.")
    if share:
        warnings.append("--share opens a public link through Gradio's share servers: anyone with the link can use "
                        "the app and its GPU.")
    return warnings


def _app(
    preset: Preset = typer.Option(Preset.real, help="real, tiny (offline tiny checkpoints, meaningless shapes) or realsize."),
    host: str = typer.Option("127.0.0.1", help="Address to serve on. 127.0.0.1: this machine only."),
    port: int = typer.Option(7860, help="Port to serve on."),
    share: bool = typer.Option(False, help="Also open a public Gradio share link (needs internet)."),
    concurrency: int = typer.Option(1, help="Runs at the same time (each holds the models' working memory)."),
    max_queue: int = typer.Option(8, help="Requests that may wait; more are refused until the queue has room."),
    runs_dir: Optional[Path] = typer.Option(None, help="Where each run's folder goes (default: a vlm3d-ttg-app folder "
                                                      "in the temp dir)."),
    keep_runs: int = typer.Option(20, help="Finished run folders kept (the newest); older ones are removed when a run starts."),
    max_age_hours: float = typer.Option(24.0, help="Finished run folders older than this are removed when a run starts."),
    verbose: bool = typer.Option(False, help="Debug logging, with hy3dgen's, transformers' and Gradio's own messages."),
    **options: object,
) -> None:
    """Serve the web app: image or text + description → guided mesh in a 3D viewer, with the critic's
    views and r streaming while it runs; the same run as `generate`, also as an HTTP API."""
    from ..logs import be_verbose, quiet_hy3dgen, quiet_libraries
    from ..requests import validate_options

    if concurrency < 1:
        raise InvalidInputError(f"--concurrency must be ≥ 1, got {concurrency}.")
    if max_queue < 1:
        raise InvalidInputError(f"--max-queue must be ≥ 1, got {max_queue}.")
    if keep_runs < 1 or not max_age_hours > 0:
        raise InvalidInputError("--keep-runs must be ≥ 1 and --max-age-hours > 0.")
    if not 0 < port < 65536:
        raise InvalidInputError(f"--port must be in 1..65535, got {port}.")
    # The command line's options are the defaults of every request: checked now, as a request's are.
    run_options = validate_options(options)[0]
    if verbose:
        be_verbose()
    else:
        quiet_libraries()
    quiet_hy3dgen()
    for warning in exposure_warnings(host, share):
        typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW)

    from ..app.runs import RunFolders
    from ..app.server import AppRunner, app_theme, build_app, CSS
    from ..generation import load_models

    folder = runs_dir or Path(tempfile.gettempdir()) / "vlm3d-ttg-app"
    runs = RunFolders(folder, keep=keep_runs, max_age_hours=max_age_hours)
    typer.echo(f"loading the models ({preset.value} preset)…")
    models = load_models(run_options, preset=preset.value)
    runner = AppRunner(models, preset=preset.value, defaults=dict(options), runs=runs)
    demo = build_app(runner, concurrency=concurrency)
    demo.queue(max_size=max_queue, default_concurrency_limit=concurrency)
    typer.echo(f"runs go to {folder} (the newest {keep_runs} kept, none older than {max_age_hours:g} h)")
    where = LOOPBACK_NOTE if _is_loopback(host) else "OPEN TO THE NETWORK"
    typer.echo(f"serving on http://{host}:{port}  ({where}; Ctrl-C stops it)")
    demo.launch(server_name=host, server_port=port, share=share, show_error=True, quiet=True, ssr_mode=False,
                allowed_paths=[str(folder)], theme=app_theme(), css=CSS, mcp_server=False, footer_links=["api"])


def _derived_signature() -> inspect.Signature:
    """`_app`'s own parameters followed by every declared option of `generate` (the request defaults)."""
    from ..export import PostprocessConfig
    from ..generation import GenerationOptions
    from ..guidance import GuidanceConfig
    from ..options import typer_parameters
    from ..search import SearchOptions

    own = [p for p in inspect.signature(_app, eval_str=True).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    derived = [*typer_parameters(GenerationOptions), *typer_parameters(PostprocessConfig), *typer_parameters(GuidanceConfig),
               *typer_parameters(SearchOptions)]
    return inspect.Signature(own + derived)


def app(**values: object) -> None:
    """Serve the web app and its HTTP API (Gradio): image or text + description → guided mesh, with the
    critic's views and r while it runs. Every option of `generate` sets the page's defaults."""
    _app(**values)


app.__signature__ = _derived_signature()  # type: ignore[attr-defined]
app.__annotations__ = {}
