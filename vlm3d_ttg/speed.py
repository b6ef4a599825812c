"""Speed presets: one word (`--speed fast|balanced|quality`) for a set of guidance knob values.

    SPEEDS["fast"]                      # {"every": 4, ...}: GuidanceConfig field values
    speed_knobs("fast")                 # the same, checked
    GuidanceConfig.for_speed("fast")    # the Python form; explicit knobs win: for_speed("fast", every=2)

On the command line a preset's values sit between the run preset's defaults and what the user gives:
declared defaults < backbone < --preset < --speed < the flags given (`generation.with_defaults`). The
values were chosen from the cost–effect map of issue #28 (benchmarks/bench_speed.py; RESULTS, "Speed
presets"): the cost counted at the real sizes (Hunyuan3D-2 + Qwen2.5-VL-7B, 50 steps), the effect
measured on the trained miniature world. `quality` is the defaults, unchanged.
"""

from __future__ import annotations

from typing import Any, Literal

Speed = Literal["quality", "balanced", "fast"]

#: Each preset's GuidanceConfig field values (only the knobs it changes).
SPEEDS: dict[str, dict[str, Any]] = {
    "quality": {},
    # Guide every 4th step and reuse the last displacement at the steps between (the critic's views unchanged).
    "balanced": {"every": 4, "reuse_displacement": 1.0},
    # Every 5th step, the last displacement reused between, and 2 views: ≤ ×1.3 the unguided run, counted. On the
    # mini world it keeps the oracle's steering effect but not the guide critic's own r (RESULTS): no setting this
    # cheap kept both there.
    "fast": {"every": 5, "num_views": 2, "reuse_displacement": 1.0},
}


def speed_knobs(name: str) -> dict[str, Any]:
    """The GuidanceConfig field values of speed preset `name`; InvalidInputError for an unknown name."""
    if name not in SPEEDS:
        from .errors import InvalidInputError

        raise InvalidInputError(f"speed (--speed) must be {', '.join(SPEEDS)}, got {name!r}")
    return dict(SPEEDS[name])


def describe_speeds() -> str:
    """The presets in words, for --help: 'quality: the defaults; balanced: every 3; …'."""
    def words(knobs: dict[str, Any]) -> str:
        return ", ".join(f"{name} {_show(value)}" for name, value in knobs.items()) or "the defaults"

    return "; ".join(f"{name}: {words(knobs)}" for name, knobs in SPEEDS.items())


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


__all__ = ["SPEEDS", "Speed", "describe_speeds", "speed_knobs"]
