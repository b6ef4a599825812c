"""`vlm3d-ttg app`: the web app and its HTTP API, models loaded once with `generate`'s loaders and options."""

from __future__ import annotations

import errno
import ipaddress
import math
import socket
import tempfile
from pathlib import Path
from typing import Optional

import typer

from ..errors import InvalidInputError
from . import with_run_options
from .generate import PRESET_HELP, Preset, given_options

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
    context: typer.Context,
    preset: Preset = typer.Option(Preset.real, help=PRESET_HELP),
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

    if concurrency < 1:
        raise InvalidInputError(f"--concurrency must be ≥ 1, got {concurrency}.")
    if max_queue < 1:
        raise InvalidInputError(f"--max-queue must be ≥ 1, got {max_queue}.")
    if keep_runs < 1:
        raise InvalidInputError(f"--keep-runs must be ≥ 1, got {keep_runs}.")
    if not (math.isfinite(max_age_hours) and 0 < max_age_hours <= MAX_AGE_HOURS):
        raise InvalidInputError(f"--max-age-hours must be a number in (0, {MAX_AGE_HOURS}], got {max_age_hours:g}.")
    if not 0 < port < 65536:
        raise InvalidInputError(f"--port must be in 1..65535, got {port}.")
    # Everything a request could find wrong with the server's own settings is found now, before the
    # models load: the options (as `generate` checks them), what the API cannot express, the preflight.
    from ..generation import with_defaults
    from ..presets import get_preset

    given = given_options(options, context)
    example = get_preset(preset.value).demo_example()
    if example is not None:  # the page opens with the preset's example: its seed and options, unless given
        given = {"seed": example.seed, **example.options, **given}
    options = with_defaults(given, preset.value)  # every request's defaults: the preset's too
    run_options = check_app_settings(options, preset=preset.value)
    folder = check_runs_dir(runs_dir)
    check_port_free(host, port)
    if verbose:
        be_verbose()
    else:
        quiet_libraries()
    quiet_hy3dgen()
    for warning in exposure_warnings(host, share):
        typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW)

    from ..app.runs import RunFolders
    from ..app.server import AppRunner, CSS, api_exception_handlers, app_theme, build_app
    from ..generation import load_models

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
                allowed_paths=[str(folder)], theme=app_theme(), css=CSS, mcp_server=False, footer_links=["api"],
                app_kwargs={"exception_handlers": api_exception_handlers()})


#: --max-age-hours' bound (10 years): larger values overflow the clock arithmetic of cleanup and Gradio's cache.
MAX_AGE_HOURS = 24 * 365 * 10


def check_app_settings(options: dict, *, preset: str) -> object:
    """The server's options (the defaults of every request) checked as `generate` checks a run's, plus
    what the app's API cannot express; returns the validated GenerationOptions or raises InvalidInputError."""
    from ..backbones import backbone_class, backbone_conditioning
    from ..presets import get_preset
    from ..requests import validate_settings, _preflight

    settings = validate_settings(options, preset=preset)
    run_options, record = settings.options, get_preset(preset)
    if backbone_conditioning(backbone_class(run_options.backbone), run_options, record).multiview:
        raise InvalidInputError(f"--shape-model {run_options.shape_model} is a multi-view model, and the app takes one "
                                "image per request (no left/back/right views): use a single-view --shape-model, or "
                                "`vlm3d-ttg generate` with --left/--back/--right.")
    if not record.offline:
        from ..generation import check_models_present

        check_models_present(run_options)
    _preflight(run_options, settings.guidance, settings.search, prompt="", preset=preset)  # each request's again
    return run_options


def check_runs_dir(runs_dir: Path | None) -> Path:
    """The folder the app's run folders go in (default: a folder of its own in the temp dir), refused when
    it is a file or cannot be written; the app shares it with whatever else is there and removes only
    its own run folders (vlm3d_ttg.app.runs)."""
    from ..io import nearest_writable_folder

    folder = runs_dir if runs_dir is not None else Path(tempfile.gettempdir()) / "vlm3d-ttg-app"
    nearest_writable_folder(folder, f"--runs-dir '{folder}'")
    return folder


def check_port_free(host: str, port: int) -> None:
    """Raise InvalidInputError when `host`:`port` cannot be served on (in use, or not an address of this
    machine), found before the models load rather than after."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InvalidInputError(f"--host {host!r} is not an address this machine can serve on ({exc.strerror}).") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds (a closing port is free)
        try:
            probe.bind(address)
        except OSError as exc:
            why = "it is in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise InvalidInputError(f"Cannot serve on {host}:{port}: {why}. Choose another --port "
                                    "(or stop what is serving there).") from None


def app(**values: object) -> None:
    """Serve the web app and its HTTP API (Gradio): image or text + description → guided mesh, with the
    critic's views and r while it runs. Every option of `generate` sets the page's defaults."""
    _app(**values)


app.__signature__ = with_run_options(_app)  # type: ignore[attr-defined]
app.__annotations__ = {}
