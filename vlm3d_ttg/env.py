"""The process environment in one place: whether the hub is off, and a variable set for one block.

Some libraries read their settings only from environment variables (hy3dgen's $HY3DGEN_MODELS,
rembg's $U2NET_HOME); `environment_variable` sets one for the duration of a call and restores it,
so no global state outlives the call.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator


#: Variables that name a folder: set, they must not be empty (an empty one would mean the current folder).
FOLDER_VARIABLES = ("VLM3D_TTG_CACHE", "HY3DGEN_MODELS", "U2NET_HOME", "HF_HOME", "HF_HUB_CACHE")
#: Log levels $VLM3D_TTG_LOG accepts.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: Values of switch variables ($HF_HUB_OFFLINE, $VLM3D_TTG_DEBUG).
SWITCH_VALUES = ("", "0", "1", "false", "true", "no", "yes", "off", "on")


def check_environment(environ: dict[str, str] | None = None) -> None:
    """Check the environment variables the package reads as options are checked: an unknown log level,
    an empty folder variable or a switch that is neither on nor off raises InvalidInputError naming the
    variable, its value and what it accepts."""
    from .errors import InvalidInputError

    env = os.environ if environ is None else environ
    level = env.get("VLM3D_TTG_LOG")
    if level is not None and level.strip().upper() not in LOG_LEVELS:
        raise InvalidInputError(f"VLM3D_TTG_LOG={level!r} is not a log level; use one of {', '.join(LOG_LEVELS)} "
                                "(or unset it: WARNING).")
    for name in FOLDER_VARIABLES:
        value = env.get(name)
        if value is not None and not value.strip():
            raise InvalidInputError(f"{name} is set but empty; set it to a folder or unset it (an empty value would "
                                    "put files in the current folder).")
    for name in ("HF_HUB_OFFLINE", "VLM3D_TTG_DEBUG"):
        value = env.get(name)
        if value is not None and value.strip().lower() not in SWITCH_VALUES:
            raise InvalidInputError(f"{name}={value!r} is neither on nor off; use 1 or 0 (or unset it).")


def hub_offline() -> bool:
    """Whether the Hugging Face hub is off (HF_HUB_OFFLINE=1/true/yes): load from local files only."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


@contextlib.contextmanager
def environment_variable(name: str, value: str | os.PathLike | None) -> Iterator[None]:
    """`name` set to `value` inside the block, then as it was (unset if it was unset); None: untouched."""
    if value is None:
        yield
        return
    previous = os.environ.get(name)
    os.environ[name] = str(value)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


__all__ = ["FOLDER_VARIABLES", "LOG_LEVELS", "check_environment", "environment_variable", "hub_offline"]
