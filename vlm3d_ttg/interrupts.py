"""Ctrl-C (SIGINT) and SIGTERM stop a command at any moment, and the command says so in one line.

`install()` (first thing in `cli.main`, before any heavy import) makes both signals raise
`Interrupted`. A signal is also *recorded*: third-party code that catches BaseException (some
imports do) may swallow the exception, but the next `check()` — after the imports, around model
loading, at every sampler step, before outputs commit — raises it again. Only the first signal
raises from the handler: a second one while the run cleans up (removing staged files) is recorded,
never raised inside the cleanup. `vlm3d_ttg.io.OutputSet` calls `check()` before it commits and
notes here what it committed, so the CLI's message tells the truth about what was written.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

#: The signals a command stops on, and the names its message gives them.
STOP_SIGNALS = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}

_received: int | None = None
_committed: list[Path] = []
_raising = False  # False while only recording (the console script's own imports, before main() runs)


class Interrupted(BaseException):
    """A stop signal arrived (BaseException: no `except Exception` on the way may keep the run going)."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(STOP_SIGNALS.get(signum, f"signal {signum}"))

    @property
    def exit_code(self) -> int:
        """The shell's code for a command stopped by this signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


def _handle(signum: int, frame: Any) -> None:
    global _received
    first = _received is None
    _received = signum if first else _received
    if first and _raising:
        raise Interrupted(signum)


def record_early() -> None:
    """Record (not raise) SIGINT and SIGTERM from now on: for the console script's own imports, before
    `main()` can handle an exception; `install()` then keeps what arrived and `check()` raises it."""
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, _handle)


def install() -> dict[int, Any]:
    """Make SIGINT and SIGTERM raise `Interrupted` in this (main) thread, forgetting any earlier signal
    (except one `record_early` kept); return the previous handlers for `restore`. Elsewhere than the
    main thread, nothing is installed."""
    global _received, _raising
    if threading.current_thread() is not threading.main_thread():
        return {}
    early = signal.getsignal(signal.SIGINT) is _handle and not _raising
    if not early:
        _received = None
        _committed.clear()
    _raising = True
    previous = {signum: signal.signal(signum, _handle) for signum in STOP_SIGNALS}
    return {} if early else previous


def restore(previous: dict[int, Any]) -> None:
    """Put back the handlers `install` replaced, and forget the signal (library calls after a command
    in the same process are not stopped by it)."""
    global _received, _raising
    for signum, handler in previous.items():
        signal.signal(signum, handler)
    _received, _raising = None, False
    _committed.clear()


def check() -> None:
    """Raise `Interrupted` if a stop signal arrived since `install` (even one whose exception was swallowed)."""
    if _received is not None:
        raise Interrupted(_received)


def received() -> int | None:
    """The signal that arrived since `install`, if any."""
    return _received


def note_committed(paths: list[Path]) -> None:
    """Record outputs that were just committed (for the message of an interrupt that comes after)."""
    _committed.extend(paths)


def committed() -> list[Path]:
    """The outputs committed since `install`."""
    return list(_committed)


def forget_staging_leftovers(target: Path) -> list[Path]:
    """Remove the staged temporaries of `target` that a process killed outright (kill -9) left next to it
    (names `.<stem>.<pid>.<random>.tmp<suffix>` whose pid runs no more); return those removed.
    A temporary of a process still running is never touched."""
    removed = []
    folder = target.parent if str(target.parent) else Path(".")
    prefix, suffix = f".{target.stem}.", f".tmp{target.suffix}"
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(prefix) and name.endswith(suffix)):
            continue
        pid_text, _, rest = name[len(prefix):-len(suffix)].partition(".")
        if not pid_text.isdigit() or not rest or "." in rest or _running(int(pid_text)):
            continue
        path = folder / name
        try:
            if path.is_file() and not path.is_symlink():
                path.unlink()
                removed.append(path)
        except OSError:
            pass
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


__all__ = ["Interrupted", "STOP_SIGNALS", "check", "committed", "forget_staging_leftovers", "install", "note_committed", "record_early",
           "received", "restore"]
