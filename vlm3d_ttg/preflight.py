"""Before anything loads: will this run fit? Sane bounds for every option that scales the work, and an
estimate of the run's peak memory (host and device) checked against what the machine has.

One entry for every front end — the CLI, the benchmark (per row, before any generation) and the
app/API: `check_generation(run_options, guidance, search, prompt=..., preset=...)`. It takes the same
option dataclasses the CLI builds, returns the `RunEstimate` (for display) and raises
`ResourceLimitError` (an `InvalidInputError`, exit 2) with the estimate, the limit and the option to
lower when the run cannot fit.

The estimate is a model, not a measurement: the parts that scale with the options (the export grid
of `--octree-resolution`, the guidance grid of `--grid`, the renders of `--views` × `--view-size`,
the critic's tokens and activations, the candidates' latents) are counted from their tensor shapes,
the fixed parts (the Python runtime and the libraries, model weights by preset) from measured or
published sizes. `benchmarks/bench_preflight.py` puts the estimate beside the measured peak RSS of
tiny runs on the CPU (benchmarks/RESULTS.md).

This module imports nothing of the package above `errors` (it is called by `generation`, `guidance`,
`search` and the sampler for the bounds, and by every front end for the estimate).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidInputError

GIB = 1024**3
MIB = 1024**2

# ---------------------------------------------------------------------------------------------
# Sane bounds (docs/bad_inputs.md): beyond these a value is a typo or an attack, whatever the machine.

#: field name → (largest accepted value, why). The same numbers are listed in docs/bad_inputs.md.
SANE_BOUNDS: dict[str, tuple[int, str]] = {
    "steps": (1000, "20× hy3dgen's default of 50"),
    "octree_resolution": (1024, "the export grid is (N+1)³ values: 4.3 GB of float32 at 1024; hy3dgen's default is 384"),
    "num_views": (16, "the paper uses 4"),
    "view_size": (1792, "4× the default 448 per side; Qwen2.5-VL reads 28-px cells, 4096 of them per view at 1792"),
    "grid_resolution": (512, "8× the default 64 per side"),
    "inner_steps": (16, "the default is 1"),
    "candidates": (64, "best-of-N beyond 64 is a sweep, not a run"),
}


def bound_problem(name: str, value: Any) -> str | None:
    """'NAME must be ≤ N (…), got V' when `value` exceeds the sane bound of field `name`; else None."""
    if name not in SANE_BOUNDS or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    limit, why = SANE_BOUNDS[name]
    if value > limit:
        return f"{name} must be ≤ {limit} (a sane bound: {why}; docs/bad_inputs.md), got {value}"
    return None
