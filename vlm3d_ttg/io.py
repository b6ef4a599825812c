"""Atomic file output: a failed run never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from .errors import InvalidInputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    The temporary file keeps `path`'s suffix so that writers which infer the format from the
    extension (trimesh, PIL) work unchanged.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically and return the path."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def check_writable(path: str | os.PathLike) -> Path:
    """Check, before any work, that `path` can be created; raise InvalidInputError if not."""
    from .errors import InvalidInputError

    target = Path(path)
    if target.exists() and target.is_dir():
        raise InvalidInputError(f"Output path '{target}' is a directory; give a file name.")
    parent = target.parent if str(target.parent) else Path(".")
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InvalidInputError(f"Cannot write '{target}': '{existing}' is a file, not a directory.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidInputError(f"Cannot write '{target}': directory '{existing}' is not writable.")
    return target


def write_directory_atomic(target: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Create the folder `target` by running `write(staging)` in a sibling temp folder, then renaming it.

    A folder that already exists and is not empty is kept as it is (it was written the same way),
    so concurrent writers and readers never see half a folder; the loser of a race discards its copy.
    """
    folder = Path(target)
    if folder.is_dir() and any(folder.iterdir()):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        write(staging)
        try:
            os.rename(staging, folder)
        except OSError:
            if not (folder.is_dir() and any(folder.iterdir())):  # not a lost race to another writer
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return folder


def check_distinct_outputs(outputs: dict[str, str | os.PathLike | None]) -> None:
    """Raise InvalidInputError when two of a run's outputs (name → path) resolve to the same file,
    before anything is written: one would silently replace the other."""
    seen: dict[Path, str] = {}
    for name, path in outputs.items():
        if path is None:
            continue
        resolved = Path(path).expanduser().resolve()
        if resolved in seen:
            raise InvalidInputError(
                f"{seen[resolved]} and {name} are the same file ({resolved}); give them different paths."
            )
        seen[resolved] = name
