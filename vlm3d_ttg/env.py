"""The process environment in one place: whether the hub is off, and a variable set for one block.

Some libraries read their settings only from environment variables (hy3dgen's $HY3DGEN_MODELS,
rembg's $U2NET_HOME); `environment_variable` sets one for the duration of a call and restores it,
so no global state outlives the call.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator


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


__all__ = ["environment_variable", "hub_offline"]
