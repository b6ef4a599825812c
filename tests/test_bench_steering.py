"""benchmarks/bench_steering.py runs on the current API: one (target, seed) pair on the tiny preset, the
oracle against the unguided run, resumable, and its report table. (The benchmark's numbers in
RESULTS come from this code; a benchmark that no longer runs is a result nobody can reproduce.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_the_oracle_steers_one_pair_and_a_rerun_resumes(tmp_path, tiny_cache, monkeypatch, capsys):
    monkeypatch.setenv("VLM3D_TTG_CACHE", str(tiny_cache))
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("bench_steering", None)
    import bench_steering

    out = tmp_path / "rows.jsonl"
    args = ["main", "--targets", "toy_robot", "--seeds", "1", "--rewards", "base,oracle", "--out", str(out)]
    bench_steering.main(args)
    rows = {r["reward"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"base", "oracle"}
    base, oracle = rows["base"], rows["oracle"]
    assert base["guided"] == 0 and oracle["guided"] > 0 and oracle["skipped"] == 0
    # Both runs measure at one camera, estimated on the same x̂ (the oracle run's silhouette term has weight 0).
    assert oracle["camera"] == base["camera"] and base["camera"] is not None
    # The oracle knows the target: on this pair it moves the shape toward it by every held-out measure.
    assert oracle["chamfer"] < base["chamfer"] and oracle["held_out_iou"] > base["held_out_iou"]
    assert oracle["volume_iou"] > base["volume_iou"]

    bench_steering.main(args)  # resumable: the finished runs are not run again
    assert len(out.read_text().splitlines()) == 2

    capsys.readouterr()
    bench_steering.main(["report", "--out", str(out)])
    table = capsys.readouterr().out
    oracle_row = next(line for line in table.splitlines() if line.startswith("| oracle |"))
    assert f"{oracle['chamfer'] - base['chamfer']:+.4f}" in oracle_row and "1/1" in oracle_row
