"""What the app keeps per run: its own output folder (and when old ones go), and a cancel token
per session that the run's step callback checks at every step boundary.

Cleanup policy (`RunFolders`): when a run starts, finished run folders older than `max_age_hours`
(default 24 h) are removed, and of the rest only the newest `keep` (default 20) are kept. A folder
whose run is still going is never removed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
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
        folders = sorted((p for p in self.root.iterdir() if p.is_dir() and p not in self._active),
                         key=lambda p: p.name, reverse=True)  # names start with the UTC start time: newest first
        now = time.time()
        removed = []
        for rank, folder in enumerate(folders):
            try:
                age_hours = (now - folder.stat().st_mtime) / 3600
            except FileNotFoundError:
                continue
            if rank + len(self._active) >= self.keep or age_hours > self.max_age_hours:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        if removed:
            logger.info("removed %d old run folder(s) under %s", len(removed), self.root)
        return removed


def write_run_record(folder: Path, content: dict[str, Any]) -> Path:
    """Write (or rewrite) the app's record of the run in `folder` (atomically)."""
    return write_text_atomic(folder / RUN_RECORD, json.dumps(content, indent=2, default=str))


def utc_now() -> str:
    """The current time, UTC, ISO 8601 with microseconds (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


__all__ = ["CancelToken", "RUN_RECORD", "RunCancelled", "RunFolders", "Sessions", "utc_now", "write_run_record"]
