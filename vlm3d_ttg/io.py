"""Atomic file output: a failed run never leaves a half-written file behind, and a run's outputs
commit as one unit (`OutputSet`) after `check_output_plan` has checked them against each other and
against the run's inputs."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import InvalidInputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    The temporary file keeps `path`'s suffix so that writers which infer the format from the
    extension (trimesh, PIL) work unchanged.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _staging_file(target)
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
    nearest_writable_folder(target.parent if str(target.parent) else Path("."), f"Cannot write '{target}'")
    return target


def nearest_writable_folder(path: str | os.PathLike, what: str) -> Path:
    """The nearest existing folder at or above `path` (where new folders would be made); InvalidInputError
    starting with `what` when it is a file or cannot be written."""
    existing = Path(path)
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise InvalidInputError(f"{what}: '{existing}' is a file, not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidInputError(f"{what}: folder '{existing}' is not writable.")
    return existing


def write_directory_atomic(target: str | os.PathLike, write: Callable[[Path], None], *,
                           required: tuple[str, ...] = ()) -> Path:
    """Create the folder `target` by running `write(staging)` in a sibling temp folder, then renaming it.

    A folder that already exists and is not empty is kept as it is (it was written the same way),
    so concurrent writers and readers never see half a folder; the loser of a race discards its copy.
    `required`: files `write` must have made, else RuntimeError and nothing is renamed into place.
    """
    folder = Path(target)
    if folder.is_dir() and any(folder.iterdir()):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        write(staging)
        missing = [name for name in required if not (staging / name).is_file()]
        if missing:
            raise RuntimeError(f"writing {folder} made no {', '.join(missing)}")
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
    before anything is written: one would silently replace the other (`check_output_plan` without inputs)."""
    check_output_plan(outputs)


# ---------------------------------------------------------------------------------------------
# A run's outputs as one unit.


@dataclass
class _Staged:
    target: Path  # the user's path
    temp: Path  # where it is written first (a hidden file in the target's folder)
    backup: Path | None = None  # the previous file at `target`, kept until the commit is over
    last: bool = False  # committed after every other output (the manifest)


class OutputSet:
    """All outputs of one run, staged next to their destinations and committed as one unit.

    Use it as a context manager: `stage(path)` returns a hidden temporary path (same folder, same
    suffix) to write `path`'s content to; when the block ends without an exception every staged
    file is renamed onto its destination, the one staged with `last=True` (the manifest) after all
    others. If anything fails — a writer inside the block, or a rename during the commit — every
    destination is left exactly as it was before: files already renamed are rolled back from
    hidden backups, staged files are removed, and folders created for the run are removed again.
    OSErrors are re-raised naming the user's path, never a staging file.

    One API for every output of a run (mesh, manifest, plot, view sheets, generated input image,
    failed-run record). A new output is one line inside the block, e.g. a silhouette mask:
    `mask.save(outputs.stage(silhouette_path), format="PNG")` — and one entry in the plan that
    `check_output_plan` checks before the run starts.
    """

    def __init__(self) -> None:
        self._staged: list[_Staged] = []
        self._created: list[Path] = []  # folders this run created, outermost first
        self.committed: list[Path] = []

    # -- staging -----------------------------------------------------------------------------
    def stage(self, path: str | os.PathLike, *, last: bool = False) -> Path:
        """A temporary path to write `path`'s content to; it lands on `path` at commit."""
        target = Path(path)
        if any(entry.target == target for entry in self._staged):
            raise InvalidInputError(f"'{target}' is staged twice in one run; give the outputs different paths.")
        from .interrupts import check

        check()  # a stop signal that some library swallowed: nothing is staged after it
        self._make_folder(target.parent if str(target.parent) else Path("."))
        temp = _staging_file(target)
        self._staged.append(_Staged(target, temp, last=last))
        return temp

    def write_bytes(self, path: str | os.PathLike, data: bytes, *, last: bool = False) -> Path:
        """Stage `data` as the content of `path`; return `path`."""
        self.stage(path, last=last).write_bytes(data)
        return Path(path)

    def write_text(self, path: str | os.PathLike, text: str, *, last: bool = False) -> Path:
        """Stage `text` (UTF-8) as the content of `path`; return `path`."""
        return self.write_bytes(path, text.encode("utf-8"), last=last)

    def _make_folder(self, folder: Path) -> None:
        missing: list[Path] = []
        probe = folder
        while not probe.exists():
            missing.append(probe)
            if probe.parent == probe:
                break
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            raise InvalidInputError(f"Cannot write into '{folder}': '{probe}' is a file, not a folder.")
        for created in reversed(missing):
            try:
                created.mkdir()
            except FileExistsError:
                if created.is_dir():
                    continue  # another process (a batch rank) made it first: it is not ours to remove on rollback
                raise
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, str(created)) from None
            self._created.append(created)

    # -- commit and rollback -------------------------------------------------------------------
    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> bool:
        if kind is None:
            self.commit()
            return False
        translated = self._translate(error) if isinstance(error, OSError) else error
        self.discard()
        if translated is not error:
            raise translated from error
        return False

    def commit(self) -> list[Path]:
        """Rename every staged file onto its destination (the `last` ones after all others); all or nothing."""
        from .interrupts import check, note_committed

        order = [e for e in self._staged if not e.last] + [e for e in self._staged if e.last]
        try:
            check()  # a stop signal that arrived while the outputs were written: nothing moves
        except BaseException:
            self.discard()
            raise
        for entry in order:  # known refusals before anything moves
            if entry.target.is_dir():
                self.discard()
                raise InvalidInputError(f"Cannot write '{entry.target}': it is a folder. Nothing of this run was written.")
        done: list[_Staged] = []
        try:
            for entry in order:
                if entry.target.exists() or entry.target.is_symlink():
                    entry.backup = _backup_name(entry.target)
                    _keep_copy(entry.target, entry.backup)
                _set_plain_permissions(entry.temp)
                os.replace(entry.temp, entry.target)
                done.append(entry)
        except BaseException as exc:
            for entry in reversed(done):
                with contextlib.suppress(OSError):
                    if entry.backup is not None:
                        os.replace(entry.backup, entry.target)
                    else:
                        entry.target.unlink()
            translated = self._translate(exc) if isinstance(exc, OSError) else exc
            self.discard()
            if translated is not exc:
                raise translated from exc
            raise
        for entry in order:
            if entry.backup is not None:
                with contextlib.suppress(OSError):
                    entry.backup.unlink()
        self.committed = [entry.target for entry in order]
        note_committed(self.committed)
        self._staged, self._created = [], []
        return self.committed

    def discard(self) -> None:
        """Remove every staged file, backup and folder this run created; destinations stay as they were."""
        for entry in self._staged:
            for leftover in (entry.temp, entry.backup):
                if leftover is not None:
                    with contextlib.suppress(OSError):
                        leftover.unlink()
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: never removes anything the run did not make
        self._staged, self._created = [], []

    def _translate(self, error: OSError) -> OSError:
        """`error` naming the user's path instead of a staging or backup file."""
        names = {}
        for entry in self._staged:
            names[str(entry.temp)] = str(entry.target)
            if entry.backup is not None:
                names[str(entry.backup)] = str(entry.target)
        filename = getattr(error, "filename", None)
        if filename is None and self._staged:  # a write that failed without a name (disk full: EFBIG, ENOSPC)
            return type(error)(error.errno, error.strerror or str(error), str(self._staged[-1].target))
        if filename is None or str(filename) not in names:
            return error
        return type(error)(error.errno, error.strerror, names[str(filename)])


def _staging_file(target: Path) -> Path:
    """A new empty hidden file next to `target` to write its content to: `.<stem>.<pid>.<random>.tmp<suffix>`
    (the suffix kept: writers infer the format from it). Leftovers of this name from a process killed
    outright are removed first (`interrupts.forget_staging_leftovers`)."""
    from .interrupts import forget_staging_leftovers

    forget_staging_leftovers(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.{os.getpid()}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    return Path(tmp)


def _backup_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.bak")


def _keep_copy(target: Path, backup: Path) -> None:
    """A copy of `target` at `backup` (a hard link where the file system allows: no bytes copied)."""
    try:
        os.link(target, backup, follow_symlinks=False)
    except OSError:
        shutil.copy2(target, backup, follow_symlinks=False)


def _set_plain_permissions(path: Path) -> None:
    # mkstemp creates 0600 files; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


# ---------------------------------------------------------------------------------------------
# Outputs against outputs and inputs, before a run starts.


def _case_insensitive(folder: str) -> bool:
    """Whether names in `folder` are compared without case (probed on the folder itself)."""
    head, name = os.path.split(folder)
    swapped = name.swapcase()
    if not name or swapped == name or not head:
        return False
    other = os.path.join(head, swapped)
    try:
        return os.path.exists(other) and os.path.samefile(other, folder)
    except OSError:
        return False


def _plan_key(path: str | os.PathLike) -> tuple[str, ...]:
    """The components of `path` as the file system will see them: symlinks followed, and case folded
    in folders that ignore case."""
    resolved = os.path.realpath(os.path.expanduser(os.fspath(path)))
    parts: list[str] = []
    folder, name = os.path.split(resolved)
    fold = _case_insensitive(folder) if os.path.isdir(folder) else False
    parts.append(name.casefold() if fold else name)
    while True:
        head, name = os.path.split(folder)
        if not name:
            break
        parts.append(name)
        folder = head
    return tuple(reversed(parts))


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output_plan(
    outputs: dict[str, str | os.PathLike | None],
    inputs: dict[str, str | os.PathLike | None] | None = None,
    *,
    owned_folders: dict[str, str | os.PathLike | None] | None = None,
    read_folders: dict[str, str | os.PathLike | None] | None = None,
) -> None:
    """Refuse (InvalidInputError, before anything runs) a plan in which one path would replace another.

    `outputs` (label → file path) are every file the run may write — the contents of an output
    folder listed one by one (e.g. '--save-views (final.png)'); `inputs` (label → path) every file
    it reads. Refused: two outputs at the same file, an output that is another output's folder, an
    output onto an input (symlinks and hard links followed, case as the file system compares it),
    and an input inside one of `owned_folders` (folders whose contents the run replaces wholesale).
    `read_folders` (label → folder) are folders whose every file the run may read (model checkpoints,
    caches): an output inside one, or at one of its files by another name (a symlink or hard link,
    compared by device and inode), is refused too, whether or not the folder exists yet.
    Existing folders where a file goes, and files where a folder is needed, are refused too.
    """
    plan = {label: Path(path) for label, path in outputs.items() if path is not None}
    sources = {label: Path(path) for label, path in (inputs or {}).items() if path is not None}
    keys = {label: _plan_key(path) for label, path in plan.items()}
    _check_each_output_is_a_file(plan)
    _check_outputs_apart(plan, keys)
    _check_outputs_spare_inputs(plan, keys, sources)
    for folder_label, folder in (read_folders or {}).items():
        if folder is not None:
            _check_outputs_spare_read_folder(plan, keys, folder_label, Path(folder))
    for folder_label, folder in (owned_folders or {}).items():
        if folder is not None:
            _check_inputs_outside_owned_folder(sources, folder_label, folder)


def _inside(key: tuple[str, ...], folder_key: tuple[str, ...]) -> bool:
    """Whether the path with components `key` is `folder_key` or lies under it."""
    return key[: len(folder_key)] == folder_key


def _check_each_output_is_a_file(plan: dict[str, Path]) -> None:
    """No output where a folder exists, and none below a file where its folder should be."""
    for label, path in plan.items():
        if path.is_dir():
            raise InvalidInputError(f"{label} '{path}' is an existing folder; give a file name.")
        probe = path.parent
        while str(probe) not in ("", ".") and not probe.exists() and probe.parent != probe:
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            raise InvalidInputError(f"Cannot write {label} '{path}': '{probe}' is a file, not a folder.")


def _check_outputs_apart(plan: dict[str, Path], keys: dict[str, tuple[str, ...]]) -> None:
    """No two outputs at the same file, and none inside another (which is a file)."""
    labels = list(plan)
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            if keys[a] == keys[b] or _same_file(plan[a], plan[b]):
                raise InvalidInputError(f"{a} and {b} are the same file ('{plan[a]}'); give them different paths.")
            for outer, inner in ((a, b), (b, a)):
                if _inside(keys[inner], keys[outer]):
                    raise InvalidInputError(
                        f"{inner} '{plan[inner]}' would be inside {outer} '{plan[outer]}', which is a file; "
                        "give them different paths.")


def _check_outputs_spare_inputs(plan: dict[str, Path], keys: dict[str, tuple[str, ...]],
                                sources: dict[str, Path]) -> None:
    """No output onto an input, by any of its names."""
    for label, path in plan.items():
        for source_label, source in sources.items():
            if keys[label] == _plan_key(source) or _same_file(path, source):
                raise InvalidInputError(
                    f"{label} '{path}' is the input {source_label} '{source}': writing it would destroy the input. "
                    "Give the output another path.")


def _check_outputs_spare_read_folder(plan: dict[str, Path], keys: dict[str, tuple[str, ...]], folder_label: str,
                                     folder: Path) -> None:
    """No output inside a folder the run loads from, nor at one of its files by another name
    (a symlink: same resolved path; a hard link: same device and inode)."""
    folder_key = _plan_key(folder)
    for label, key in keys.items():
        if _inside(key, folder_key):
            raise InvalidInputError(
                f"{label} '{plan[label]}' lies inside {folder_label} ('{folder}'), which this run loads: writing "
                "there could replace a model file. Give the output another path.")
    files = _files_under(folder)
    by_key = {_plan_key(path): path for path in files}
    by_inode = {}
    for path in files:
        with contextlib.suppress(OSError):
            info = os.stat(path)
            by_inode[(info.st_dev, info.st_ino)] = path
    for label, path in plan.items():
        hit = by_key.get(keys[label])
        if hit is None:
            with contextlib.suppress(OSError):
                info = os.stat(path)
                hit = by_inode.get((info.st_dev, info.st_ino))
        if hit is not None:
            raise InvalidInputError(
                f"{label} '{path}' is the file '{hit}' of {folder_label}, which this run loads (a link or another "
                "name for it): writing it would break the model. Give the output another path.")


def _check_inputs_outside_owned_folder(sources: dict[str, Path], folder_label: str,
                                       folder: str | os.PathLike) -> None:
    """No input inside a folder whose contents the run replaces wholesale."""
    folder_key = _plan_key(folder)
    for source_label, source in sources.items():
        if _inside(_plan_key(source), folder_key):
            raise InvalidInputError(
                f"The input {source_label} '{source}' lies inside {folder_label} '{folder}', whose contents the run "
                "replaces. Move the input elsewhere or choose another output folder.")


def _files_under(folder: Path) -> list[Path]:
    """Every file under `folder` (links to files included, links to folders not followed); [] if none."""
    found = []
    for root, _, names in os.walk(folder):
        found += [Path(root) / name for name in names]
    return found
