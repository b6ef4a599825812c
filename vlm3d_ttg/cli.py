"""`vlm3d-ttg` command line: parses, loads and calls the Python API; talks to people."""

from __future__ import annotations

import os
import signal
import sys

from . import interrupts

if __name__ == "__main__" or os.path.basename(sys.argv[0] or "") == "vlm3d-ttg":
    interrupts.record_early()  # the command's process: a stop signal during the imports below is kept for main()

import typer  # noqa: E402

from .errors import Vlm3dError  # noqa: E402
from .logs import configure_logging, log_level, quiet_libraries  # noqa: E402

app = typer.Typer(
    name="vlm3d-ttg",
    help="Vision-language test-time guidance for Hunyuan3D-2 (critic: Qwen2.5-VL).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Plain click help: rich's option tables cut long flags ("--cfg-scale,--…") at 80 columns.
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"vlm3d-ttg {version('vlm3d-ttg')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            typer.echo("vlm3d-ttg (not installed: no package metadata)")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Vision-language test-time guidance for Hunyuan3D-2 (critic: Qwen2.5-VL)."""


def _register_commands() -> None:
    """Attach the commands to `app` once per process (imported late: `--help` and errors stay fast)."""
    # typer appends on every `app.command(...)`; registering per call made each later `main()` in one
    # process build every earlier copy of every command (a library user calling main() in a loop).
    if app.registered_commands:
        return
    from .commands import app as app_command
    from .commands import batch, generate, score

    app.command(name="generate")(generate.generate)
    app.command(name="score")(score.score)
    app.command(name="app")(app_command.app)
    app.command(name="batch")(batch.batch)
    app.command(name="judge", hidden=True)(score.judge_deprecated)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code (2 for bad input, 130/143 when
    stopped by Ctrl-C / SIGTERM)."""
    # First: a stop signal during the imports below must stop the command, not vanish in a library's
    # `except BaseException` (vlm3d_ttg.interrupts records it and raises it again at the next check).
    previous_handlers = interrupts.install()
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        try:
            interrupts.check()  # a signal that arrived while this module was imported
            from .env import check_environment

            check_environment()  # environment variables are checked like options (exit 2)
            configure_logging()
            if "--verbose" not in args and log_level() not in ("DEBUG", "INFO"):
                quiet_libraries()  # other libraries' warnings are for developers, not for the user's terminal
            _register_commands()
            interrupts.check()
            _refuse_repeated_options(args)
            # Standalone mode: typer/click report usage errors themselves (exit 2) and end with SystemExit.
            app(args=args, standalone_mode=True)
            interrupts.check()
        except SystemExit as exc:
            interrupts.check()
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except KeyboardInterrupt:  # a library turned our signal into its own KeyboardInterrupt
            raise interrupts.Interrupted(interrupts.received() or signal.SIGINT) from None
    except interrupts.Interrupted as stop:
        return _say_interrupted(stop)
    except BaseException as exc:
        if interrupts.received() is not None:  # a library turned the stop signal into an error of its own
            return _say_interrupted(interrupts.Interrupted(interrupts.received()))
        if isinstance(exc, (KeyboardInterrupt, SystemExit)) or not isinstance(exc, Exception):
            raise
        return _say_error(exc)
    finally:
        interrupts.restore(previous_handlers)
    return 0


def _say_interrupted(stop: interrupts.Interrupted) -> int:
    written = interrupts.committed()
    what = (f"the outputs were already written ({', '.join(str(p) for p in written)})" if written else
            "nothing of this run was written; earlier outputs are untouched")
    typer.secho(f"interrupted by {stop}: {what}", err=True)
    return stop.exit_code


def _say_error(exc: Exception) -> int:
    """Print `exc` as the user's (exit 2: our refusals, and the machine's OSErrors) or as a fault of ours
    (exit 1; VLM3D_TTG_DEBUG=1 re-raises it for the traceback); return the exit code."""
    if isinstance(exc, Vlm3dError):
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        return 2
    if os.environ.get("VLM3D_TTG_DEBUG"):
        raise exc
    if isinstance(exc, OSError):  # the machine said no (disk full, permission, read-only file system)
        where = getattr(exc, "filename", None) or "the file system"
        typer.secho(f"error: {exc.strerror or exc} ({where}); nothing of this run was written", err=True,
                    fg=typer.colors.RED)
        return 2
    typer.secho(f"error: unexpected {type(exc).__name__}: {exc} (set VLM3D_TTG_DEBUG=1 for the traceback)", err=True,
                fg=typer.colors.RED)
    return 1


def _refuse_repeated_options(argv: list[str]) -> None:
    """Raise InvalidInputError when any option (one that does not take several values) is given twice, by
    any of its spellings (`--guidance --no-guidance` too): click would silently keep the last one
    (`generate -p.png -p 'a toy robot'` took '.png' for nothing; `--left a.png --left b.png` dropped a.png).
    One rule for every option of every command."""
    from .errors import InvalidInputError

    group = typer.main.get_command(app)  # typer may bring its own copy of click: duck-typed below
    if not argv or argv[0] not in getattr(group, "commands", {}):
        return
    options = {}
    for param in group.commands[argv[0]].params:
        if getattr(param, "param_type_name", "") == "option":
            for name in [*param.opts, *param.secondary_opts]:
                options[name] = param
    seen: dict[str, list[str]] = {}
    tokens = iter(argv[1:])
    for token in tokens:
        if token == "--":
            break
        if not token.startswith("-") or token == "-":
            continue
        name = token.split("=", 1)[0] if token.startswith("--") else token[:2]
        param = options.get(name)
        if param is None:
            continue
        takes_value = not param.is_flag and not param.count
        attached = ("=" in token) if token.startswith("--") else len(token) > 2
        if takes_value and not attached:
            next(tokens, None)  # its value, even one that starts with '-'
        if param.multiple or param.count:
            continue
        seen.setdefault(param.name, []).append(token if attached else name)
    for name, spellings in seen.items():
        if len(spellings) > 1:
            raise InvalidInputError(
                f"{' and '.join(repr(s) for s in spellings)} give the same option {len(spellings)} times; give it once "
                "(the last one would silently win)."
            )


if __name__ == "__main__":
    sys.exit(main())
