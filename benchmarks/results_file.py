"""benchmarks/RESULTS.md is shared: each script rewrites only its own marked section."""

from __future__ import annotations

from pathlib import Path

from vlm3d_ttg.io import write_text_atomic

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_results_section(begin: str, end: str, text: str, path: Path = RESULTS) -> None:
    """Replace the text between the `begin` and `end` markers (which `text` carries) or append it."""
    current = path.read_text() if path.exists() else "# Benchmark results\n"
    section = text.rstrip("\n")
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        tail = rest.split(end, 1)[1]
        updated = head + section + tail
    else:
        updated = current.rstrip("\n") + "\n\n" + section + "\n"
    write_text_atomic(path, updated)
