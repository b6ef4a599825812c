"""`vlm3d-ttg` command line: parses, loads and calls the Python API; talks to people."""

from __future__ import annotations

import logging
import os
import sys

import typer

from .errors import Vlm3dError

app = typer.Typer(
    name="vlm3d-ttg",
    help="Vision-language test-time guidance for Hunyuan3D-2 (critic: Qwen2.5-VL).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register_commands() -> None:
    from .commands import generate, judge

    app.command(name="generate")(generate.generate)
    app.command(name="judge")(judge.judge)


def _log_level() -> str:
    return os.environ.get("VLM3D_TTG_LOG", "WARNING").upper()


def _configure_logging() -> None:
    logging.basicConfig(level=_log_level(), format="%(levelname)s %(name)s: %(message)s")


def quiet_hy3dgen() -> None:
    """Tame hy3dgen's logger, which sets itself to INFO with its own console handler at import."""
    from hy3dgen.shapegen.utils import logger as hy3dgen_logger

    hy3dgen_logger.setLevel(_log_level())
    hy3dgen_logger.propagate = False  # its own handler already prints; root would print twice
    quiet_transformers()


def quiet_transformers() -> None:
    """No per-load progress bars from transformers unless logging is turned up."""
    if _log_level() not in ("DEBUG", "INFO"):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code (2 for bad input)."""
    _configure_logging()
    _register_commands()
    try:
        # Standalone mode: typer/click report usage errors themselves (exit 2) and end with SystemExit.
        app(args=argv, standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Vlm3dError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        return 2
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        return 130
    except Exception as exc:
        if os.environ.get("VLM3D_TTG_DEBUG"):
            raise
        typer.secho(
            f"error: unexpected {type(exc).__name__}: {exc} (set VLM3D_TTG_DEBUG=1 for the traceback)",
            err=True,
            fg=typer.colors.RED,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
