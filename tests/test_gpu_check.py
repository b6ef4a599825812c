"""benchmarks/gpu_check.py cannot rot: its --cpu-smoke run passes here; hy3dgen imports without pymeshlab."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import trimesh

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_hy3dgen_imports_without_pymeshlab_and_its_postprocessors_fail_loudly(monkeypatch):
    from vlm3d_ttg.backbones.hunyuan3d2_models import allow_missing_pymeshlab

    # pymeshlab made unimportable (None in sys.modules), hy3dgen's postprocessors module re-executed.
    monkeypatch.setitem(sys.modules, "pymeshlab", None)
    monkeypatch.delitem(sys.modules, "hy3dgen.shapegen.postprocessors", raising=False)
    assert allow_missing_pymeshlab() is True
    postprocessors = importlib.import_module("hy3dgen.shapegen.postprocessors")
    with pytest.raises(ImportError, match="pymeshlab is not installed"):
        postprocessors.FloaterRemover()(trimesh.creation.box())
    assert allow_missing_pymeshlab() is False  # the placeholder is there now: nothing more to do
    monkeypatch.delitem(sys.modules, "hy3dgen.shapegen.postprocessors")  # the next import gets the real one


def test_gpu_check_cpu_smoke_passes_every_part(tmp_path, tiny_cache, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import gpu_check

    code = gpu_check.main([str(tmp_path / "report"), "--cpu-smoke", "--cache-dir", str(tiny_cache)])
    report = json.loads((tmp_path / "report" / "gpu_check.json").read_text())
    parts = report["parts"]
    assert code == 0, {k: p.get("why") for k, p in parts.items()}
    assert {k: p["status"] for k, p in parts.items()} == {"a": "passed", "b": "passed", "c": "passed", "d": "passed",
                                                        "f": "passed"}
    # a: both decoders gave closed meshes whose vertex gradients are finite (no nvdiffrast on a CPU: recorded why).
    assert parts["a"]["render_backend_for_the_rest"] == "cpu" and "CUDA is not available" in parts["a"]["nvdiffrast"]
    assert all(m["faces"] > 0 and m["grad_finite"] for m in parts["a"]["meshes"].values())
    # b: one guided step timed by stage, beside the cost model.
    b = parts["b"]
    assert b["guided_steps"] == 1 and b["guided_s"] > 0 and b["unguided_s"] > 0
    assert {"dit", "surface", "render", "critic", "backward"} <= set(b["stage_s_per_guided_step"])
    assert b["cost_model_peak_gib"]["defaults"] > b["cost_model_peak_gib"]["offload_idle"] > 0
    # c: every guided step had a finite non-zero gradient; the half-precision step points the same way.
    assert parts["c"]["steps_without_a_finite_nonzero_gradient"] == [] and parts["c"]["guided_steps"] == 1
    # c: bench_precision's teacher-forced comparison ran here too: every guided step of the half run,
    # from the float32 latents, moves the latent the same way and as far as float32's.
    c = parts["c"]
    assert c["teacher_forced_steps"] and c["teacher_forced_min_cos"] > 0.5
    assert 0.9 < c["teacher_forced_norm_ratio_range"][0] <= c["teacher_forced_norm_ratio_range"][1] < 1.1
    assert c["gradient_path_table"][0].startswith("| gradient path") and len(c["sensitivity_table"]) > 3
    assert parts["d"]["ours_over_hy3dgen"] > 0
    # f: speed presets timed against the unguided run, each beside its counted ratio at the real sizes.
    from vlm3d_ttg.cost import price
    from vlm3d_ttg.guidance import GuidanceConfig

    speeds = parts["f"]["presets"]
    assert len(speeds) == 2 and all(row["measured_ratio"] > 0 for row in speeds.values())
    settings = report["settings"]
    for row in speeds.values():
        config = GuidanceConfig(**{"num_views": settings["views"], "view_size": settings["view_size"],
                                   "grid_resolution": settings["grid"], **row["values"]})
        assert row["counted_ratio"] == pytest.approx(price(config, settings["steps"], critic_model="Qwen2.5-VL-7B").ratio)
    assert report["summary"]["passed"] == ["a", "b", "c", "d", "f"]
    markdown = (tmp_path / "report" / "gpu_check.md").read_text()
    assert "## b. realsize run" in markdown and "stage_s_per_guided_step" in markdown
    assert "| step | ‖x̂_half − x̂_fp32‖/‖x̂_fp32‖" in markdown  # tables appear as tables
    assert "| preset | knobs | guided steps | measured guided/unguided | counted at real sizes |" in markdown
