"""How loud the package and the libraries it drives are: one level from $VLM3D_TTG_LOG for all of them.

Kept apart from the CLI so that commands, benchmarks and library code can quiet hy3dgen and
transformers without importing the command-line module (which imports the commands).
"""

from __future__ import annotations

import logging
import os
import warnings

#: Libraries whose Python warnings (deprecations, numba's threading-layer notice) are kept out of the
#: user's terminal unless logging is turned up (a command's --verbose, or $VLM3D_TTG_LOG=DEBUG/INFO).
QUIETED_LIBRARIES = ("numba", "diffusers", "transformers", "hy3dgen", "torch", "timm", "gradio", "huggingface_hub",
                     "onnxruntime", "pymatting", "rembg", "trimesh", "skimage", "accelerate")

#: Environment variable naming the log level (DEBUG, INFO, WARNING, ...); WARNING when unset.
LOG_LEVEL_VARIABLE = "VLM3D_TTG_LOG"


def log_level() -> str:
    """The log level asked for in $VLM3D_TTG_LOG (upper case), WARNING when unset."""
    return os.environ.get(LOG_LEVEL_VARIABLE, "WARNING").strip().upper() or "WARNING"


def configure_logging() -> None:
    """Root logging at `log_level()`, one line per record (for console scripts, not for library use)."""
    logging.basicConfig(level=log_level(), format="%(levelname)s %(name)s: %(message)s")


def be_verbose() -> None:
    """Debug logging for this process (a command's --verbose): the same as VLM3D_TTG_LOG=DEBUG."""
    os.environ[LOG_LEVEL_VARIABLE] = "DEBUG"
    logging.getLogger().setLevel(logging.DEBUG)


def quiet_hy3dgen() -> None:
    """Tame hy3dgen's logger, which sets itself to INFO with its own console handler at import."""
    from hy3dgen.shapegen.utils import logger as hy3dgen_logger

    hy3dgen_logger.setLevel(log_level())
    hy3dgen_logger.propagate = False  # its own handler already prints; root would print twice
    quiet_transformers()


def quiet_transformers() -> None:
    """No per-load progress bars from transformers unless logging is turned up."""
    if log_level() not in ("DEBUG", "INFO"):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def quiet_libraries() -> None:
    """Hide other libraries' Python warnings in this process (ours still show): for console scripts
    run without --verbose. Their log records follow $VLM3D_TTG_LOG already (hy3dgen's own console
    handler: `quiet_hy3dgen`)."""
    pattern = r"(" + "|".join(QUIETED_LIBRARIES) + r")(\.|$)"
    warnings.filterwarnings("ignore", module=pattern)
