"""Is the preflight's memory estimate honest? Its host-peak estimate beside the measured peak RSS of
tiny runs on the CPU, for three settings that move different parts (export grid, guidance grid,
renders). Each setting runs `vlm3d-ttg generate --preset tiny` in a fresh process, whose own peak
RSS (getrusage ru_maxrss) is the measurement.

    python benchmarks/bench_preflight.py            # ~2-3 minutes on 2 CPU cores; writes RESULTS.md
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

SETTINGS = [
    {"name": "small", "steps": 4, "views": 2, "view_size": 56, "grid": 32, "octree": 64},
    {"name": "export-heavy", "steps": 4, "views": 2, "view_size": 56, "grid": 32, "octree": 160},
    {"name": "guidance-heavy", "steps": 4, "views": 4, "view_size": 224, "grid": 96, "octree": 64},
]
BEGIN, END = "<!-- bench_preflight begin -->", "<!-- bench_preflight end -->"


def _argv(setting: dict, out: Path) -> list[str]:
    return ["generate", str(ROOT / "examples" / "toy_robot.png"), "--prompt", "a small toy robot", "--preset", "tiny",
            "--out", str(out), "--quiet", "--steps", str(setting["steps"]), "--views", str(setting["views"]),
            "--view-size", str(setting["view_size"]), "--grid", str(setting["grid"]),
            "--octree-resolution", str(setting["octree"]), "--sigma-window", "0.1,0.9", "--every", "1"]


def run_one(setting: dict) -> dict:
    """In this process: the estimate, then the run; returns both and the measured peak RSS."""
    import resource

    from vlm3d_ttg.cli import main
    from vlm3d_ttg.generation import GenerationOptions
    from vlm3d_ttg.guidance import GuidanceConfig
    from vlm3d_ttg.preflight import check_generation

    estimate = check_generation(
        GenerationOptions(steps=setting["steps"], octree_resolution=setting["octree"], device="cpu"),
        GuidanceConfig(num_views=setting["views"], view_size=setting["view_size"], grid_resolution=setting["grid"]),
        prompt="a small toy robot", preset="tiny")
    with tempfile.TemporaryDirectory() as folder:
        tic = time.perf_counter()
        code = main(_argv(setting, Path(folder) / "m.glb"))
        seconds = time.perf_counter() - tic
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"setting": setting, "code": code, "seconds": seconds, "measured": peak, "estimate": estimate.to_dict()}


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print("RESULT " + json.dumps(run_one(json.loads(sys.argv[2]))), flush=True)
        return 0
    rows = []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    for setting in SETTINGS:
        done = subprocess.run([sys.executable, __file__, "--one", json.dumps(setting)], env=env, capture_output=True,
                              text=True, check=True)
        result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
        rows.append(result)
        print(setting["name"], result["code"], f"{result['seconds']:.1f} s", result["measured"] / 2**20,
              result["estimate"]["host_bytes"] / 2**20, flush=True)
    gib = 2**20
    lines = [BEGIN, "## Preflight: estimated vs measured peak memory (`benchmarks/bench_preflight.py`)", "",
             "`vlm3d-ttg generate --preset tiny` on the CPU, one fresh process per setting; measured = the process's "
             "peak RSS (getrusage), estimated = `preflight.check_generation`'s host peak. Largest parts of the estimate "
             "in the last column.", "",
             "| setting | steps | views × size | grid | octree | estimated (MiB) | measured (MiB) | estimate / measured "
             "| run (s) | largest estimated parts (MiB) |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        s, e = row["setting"], row["estimate"]
        parts = sorted(e["host_parts"].items(), key=lambda kv: -kv[1])[:3]
        lines.append(f"| {s['name']} | {s['steps']} | {s['views']} × {s['view_size']}² | {s['grid']} | {s['octree']} | "
                     f"{e['host_bytes'] / gib:.0f} | {row['measured'] / gib:.0f} | {e['host_bytes'] / row['measured']:.2f} | "
                     f"{row['seconds']:.1f} | " + ", ".join(f"{k} {v / gib:.0f}" for k, v in parts) + " |")
    lines += ["", "How the constants were set: the guidance grid, render and critic factors are counted from the "
              "tensors the code allocates (`vlm3d_ttg/preflight.py`). A first run of this script (settings small, "
              "export-heavy at octree 192 and guidance-heavy; estimates from counted factors alone) measured "
              "1293 / 2109 / 1337 MiB against estimates of 1120 / 1410 / 1207 (0.87 / 0.67 / 0.90): the runtime "
              "constant was 180 MiB low, and the export grid costs 124 B per point, not the 32-44 B of its tensors, "
              "because marching cubes' output and the final mesh's scoring grow with the tiny model's noisy surface. "
              "`RUNTIME_BYTES` (1280 MiB) and `EXPORT_BYTES_PER_POINT` (124) were set from that run; the table above "
              "is a second run with export-heavy at octree 160, a size the calibration did not see. Its estimate is 1.31× the measurement: the surface-dependent part of the export varies with the shape (the octree-192 run took 104 s and 2109 MiB, the octree-160 run 12 s), and the factor is that of the heavier case. The preflight "
              "refuses a run only when the estimate exceeds the available memory, so an estimate a little above "
              "the measurement errs on the safe side.", END]
    from results_file import write_results_section

    write_results_section(BEGIN, END, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
