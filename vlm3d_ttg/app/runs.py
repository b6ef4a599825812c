"""What the app keeps per run: its own output folder (and when old ones go), and a cancel token
per session that the run's step callback checks at every step boundary.

Cleanup policy (`RunFolders`): when a run starts, finished run folders older than `max_age_hours`
(default 24 h) are removed, and of the rest only the newest `keep` (default 20) are kept. A folder
whose run is still going is never removed.

The app deletes only what it made: a run folder is the app's when its name is the app's
(`<UTC start>-<8 hex>`), it is a real folder (not a link), and it holds a `run.json` (a real file)
that says `"made_by": "vlm3d-ttg app"` — written when the folder is created, before anything else.
Everything else under the runs folder (the user's files and folders of any age, links to elsewhere)
is left alone: a runs folder that holds other things is used side by side with them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import stat
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import Vlm3dError
from ..io import write_text_atomic

logger = logging.getLogger(__name__)

#: The app's record of a run in its folder: status, start and end times (UTC ISO), what was asked.
RUN_RECORD = "run.json"
#: The mark in RUN_RECORD that says the app made the folder (cleanup removes nothing without it).
MADE_BY = "vlm3d-ttg app"
#: The name of a run folder the app makes: UTC start time, then 8 random hex digits.
RUN_FOLDER_NAME = re.compile(r"\d{8}T\d{12}Z-[0-9a-f]{8}")


class RunCancelled(Vlm3dError):
    """The user cancelled the run; raised from the step callback at a step boundary, so nothing is written."""

    def __init__(self, step: int | None = None):
        self.step = step
        where = f" after step {step}" if step is not None else ""
        super().__init__(f"cancelled{where}: nothing of this run was written")


class CancelToken:
    """A run's cancel flag: set from another thread (the cancel button), checked by the run."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the run to stop at its next step boundary."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        """Whether cancel() was called."""
        return self._event.is_set()

    def check(self, step: int | None = None) -> None:
        """Raise RunCancelled if the run was cancelled (`step`: the step just finished, for the message)."""
        if self._event.is_set():
            raise RunCancelled(step)


class Sessions:
    """The cancel tokens of the runs in progress, by browser/client session: a session can cancel
    only its own runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, set[CancelToken]] = {}

    def start(self, session: str) -> CancelToken:
        """A fresh token for a run of `session`."""
        token = CancelToken()
        with self._lock:
            self._tokens.setdefault(session, set()).add(token)
        return token

    def finish(self, session: str, token: CancelToken) -> None:
        """Forget a run's token (its run ended, however)."""
        with self._lock:
            tokens = self._tokens.get(session, set())
            tokens.discard(token)
            if not tokens:
                self._tokens.pop(session, None)

    def cancel(self, session: str) -> int:
        """Cancel every run of `session`; return how many were running."""
        with self._lock:
            tokens = list(self._tokens.get(session, ()))
        for token in tokens:
            token.cancel()
        return len(tokens)

    def running(self, session: str) -> int:
        """How many runs `session` has in progress."""
        with self._lock:
            return len(self._tokens.get(session, ()))


class RunFolders:
    """One folder per run under `root`, named by start time (UTC) and a random suffix, with the
    cleanup policy of this module's docstring."""

    def __init__(self, root: str | os.PathLike, *, keep: int = 20, max_age_hours: float = 24.0):
        if keep < 1:
            raise ValueError(f"keep must be ≥ 1, got {keep}")
        if not (isinstance(max_age_hours, (int, float)) and math.isfinite(max_age_hours) and max_age_hours > 0):
            raise ValueError(f"max_age_hours must be a finite number > 0, got {max_age_hours!r}")
        self.root = Path(root)
        self.keep = keep
        self.max_age_hours = max_age_hours
        self._lock = threading.Lock()
        self._active: set[Path] = set()

    def new(self) -> Path:
        """Create the folder of a new run (after cleaning up old ones) and mark it in use."""
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            self._cleanup_locked()
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
            folder = self.root / f"{stamp}-{uuid.uuid4().hex[:8]}"
            folder.mkdir()
            self._active.add(folder)
            write_run_record(folder, {"status": "starting", "started": utc_now()})  # the mark, before anything else
        return folder

    def release(self, folder: Path) -> None:
        """The run in `folder` has ended: the folder may be cleaned up later."""
        with self._lock:
            self._active.discard(folder)

    def cleanup(self) -> list[Path]:
        """Remove what the policy says must go now; return the folders removed."""
        with self._lock:
            return self._cleanup_locked()

    def _cleanup_locked(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        folders = sorted((p for p in self.root.iterdir() if p not in self._active and made_by_the_app(p)),
                         key=lambda p: p.name, reverse=True)  # names start with the UTC start time: newest first
        now = time.time()
        removed = []
        for rank, folder in enumerate(folders):
            try:
                age_hours = (now - folder.lstat().st_mtime) / 3600
            except FileNotFoundError:
                continue
            if rank + len(self._active) >= self.keep or age_hours > self.max_age_hours:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        if removed:
            logger.info("removed %d old run folder(s) under %s", len(removed), self.root)
        return removed


def made_by_the_app(folder: Path) -> bool:
    """Whether `folder` is a run folder the app made (this module's docstring): never a link, never
    a folder without the app's mark, whatever its name or age."""
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode) or not RUN_FOLDER_NAME.fullmatch(folder.name):
            return False
        record = folder / RUN_RECORD
        if not stat.S_ISREG(os.lstat(record).st_mode):
            return False
        content = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and content.get("made_by") == MADE_BY


def write_run_record(folder: Path, content: dict[str, Any]) -> Path:
    """Write (or rewrite) the app's record of the run in `folder` (atomically), with the app's mark."""
    return write_text_atomic(folder / RUN_RECORD, json.dumps({**content, "made_by": MADE_BY}, indent=2, default=str))


def utc_now() -> str:
    """The current time, UTC, ISO 8601 with microseconds (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


__all__ = ["CancelToken", "MADE_BY", "RUN_RECORD", "made_by_the_app", "RunCancelled", "RunFolders", "Sessions", "utc_now", "write_run_record"]
