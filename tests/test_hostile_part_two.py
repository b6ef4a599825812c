"""Nothing lost, part two (issue #25): the reproductions of the second adversarial run, kept as
regression tests. The app deletes only what it made; no output overwrites a file the run reads (model
checkpoints included); Ctrl-C and SIGTERM stop a run at any moment; damaged checkpoints, conflicting
options and hostile text are refused with exit 2 before any model loads; the app fails fast."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from vlm3d_ttg.errors import InvalidInputError


def _age(path: Path, hours: float) -> None:
    """Set `path`'s (not a link's target's) times to `hours` ago."""
    then = time.time() - hours * 3600
    os.utime(path, (then, then), follow_symlinks=False)


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every entry under `root` (links not followed): file bytes, None for folders, the target for links."""
    found = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        found[key] = ("link:" + os.readlink(path)) if path.is_symlink() else (path.read_bytes() if path.is_file() else None)
    return found


# ---- 1. the app deletes only what it made ------------------------------------------------------------


def test_app_cleanup_removes_only_its_own_marked_run_folders(tmp_path):
    from vlm3d_ttg.app.runs import MADE_BY, RUN_RECORD, RunFolders, made_by_the_app

    runs_dir, outside = tmp_path / "D", tmp_path / "outside"
    (runs_dir / "photos").mkdir(parents=True)
    (runs_dir / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    (runs_dir / "notes.txt").write_text("mine")
    # Named like a run folder, but not marked by the app (no run.json / a run.json that is not the app's).
    (runs_dir / "20200101T000000000000Z-0123abcd").mkdir()
    (runs_dir / "20200101T000000000000Z-0123abcd" / "thesis.tex").write_text("years of work")
    forged = runs_dir / "20200101T000000000001Z-4567abcd"
    forged.mkdir()
    (forged / RUN_RECORD).write_text(json.dumps({"status": "done"}))
    # A link out of the runs folder, to a folder that even carries the app's mark.
    outside.mkdir()
    (outside / RUN_RECORD).write_text(json.dumps({"made_by": MADE_BY}))
    (outside / "data.bin").write_bytes(b"precious")
    (runs_dir / "20200101T000000000002Z-89abcdef").symlink_to(outside, target_is_directory=True)
    # A real folder named like a run, marked, whose run.json is a link (not the app's writing).
    linked_record = runs_dir / "20200101T000000000003Z-aaaabbbb"
    linked_record.mkdir()
    (linked_record / RUN_RECORD).symlink_to(outside / RUN_RECORD)
    for entry in runs_dir.iterdir():
        _age(entry, 72)  # three days old: past every age limit
    users = _tree(runs_dir)
    outside_before = _tree(outside)

    runs = RunFolders(runs_dir, keep=1, max_age_hours=1.0)
    first = runs.new()
    assert made_by_the_app(first) and json.loads((first / RUN_RECORD).read_text())["made_by"] == MADE_BY
    runs.release(first)
    second = runs.new()
    runs.release(second)
    assert runs.cleanup() == [first] and second.is_dir()  # keep=1: the first (young) goes by count
    _age(second, 72)
    assert runs.cleanup() == [second]  # by age; and of all the old entries, only the app's own
    left = _tree(runs_dir)
    assert {k: v for k, v in left.items() if k in users} == users  # every user entry, byte for byte
    assert _tree(outside) == outside_before
    for entry in (runs_dir / "photos", runs_dir / "20200101T000000000002Z-89abcdef", forged, linked_record):
        assert not made_by_the_app(entry)


def test_app_run_records_keep_the_mark_through_every_rewrite(tmp_path):
    from vlm3d_ttg.app.runs import RunFolders, made_by_the_app, write_run_record

    runs = RunFolders(tmp_path, keep=5)
    folder = runs.new()
    write_run_record(folder, {"status": "done", "made_by": "someone else"})  # the app's mark always wins
    assert made_by_the_app(folder)
    with pytest.raises(ValueError, match="finite"):
        RunFolders(tmp_path, max_age_hours=float("inf"))
