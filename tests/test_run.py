"""A run as an object (vlm3d_ttg.run): the output plan is checked as one before anything loads, a built
run samples into a RunOutput without writing anything, and `describe` is the manifest generate_mesh writes."""

from __future__ import annotations

import json

import pytest

from vlm3d_ttg.errors import InvalidInputError
from vlm3d_ttg.generation import GenerationOptions, LoadedModels, generate_mesh
from vlm3d_ttg.guidance import GuidanceConfig
from vlm3d_ttg.run import OutputPlan, build_run, describe

CONFIG = GuidanceConfig(num_views=2, view_size=56, grid_resolution=32, sigma_window=(0.1, 0.9), every=2)


def test_output_plan_lists_every_file_and_refuses_clashes(tmp_path):
    plan = OutputPlan(tmp_path / "m.glb", tmp_path / "m.glb.json", plot=tmp_path / "m.glb.r.png",
                      views_dir=tmp_path / "views", view_steps={4, 2}, candidates=True)
    files = plan.files()
    assert files["the failed-run record"] == tmp_path / "m.glb.failed.json"
    assert files["the silhouette mask"] == plan.silhouette_mask
    assert [p.name for label, p in files.items() if label.startswith("--save-views")] == [
        "step_002.png", "step_004.png", "final.png", "candidates.png"]
    plan.check({"IMAGE": tmp_path / "in.png"})  # a plan with nothing in the way passes
    with pytest.raises(InvalidInputError, match="destroy the input"):
        plan.check({"IMAGE": tmp_path / "m.glb.r.png"})
    with pytest.raises(InvalidInputError, match="must be a .json file"):
        OutputPlan(tmp_path / "m.glb", tmp_path / "m.txt").check()
    (tmp_path / "views").write_text("a file where the views folder goes")
    with pytest.raises(InvalidInputError, match="exists and is not a folder"):
        plan.check()


def test_a_built_run_samples_without_writing_and_describe_is_the_manifest(tmp_path, tiny_pipeline, tiny_vlm, rgba_image):
    model, processor = tiny_vlm
    models = LoadedModels(tiny_pipeline, model, processor, "tiny shape", "tiny critic", preset="tiny")
    options = GenerationOptions(seed=3, steps=6, octree_resolution=32)
    run = build_run(models, prompt="a pot", guidance=CONFIG, options=options, image=rgba_image, octree_resolution=32)
    output = run.sample(progress=False)
    assert list(tmp_path.iterdir()) == []  # building and sampling write nothing
    assert output.mesh is not None and output.final_r is not None
    plan = OutputPlan(tmp_path / "m.glb", tmp_path / "m.glb.json")
    content = describe(run, output, plan)
    assert describe(run, output, plan) == content  # pure: the same run described twice is the same record
    generate_mesh(models, image=rgba_image, prompt="a pot", out=plan.out, manifest_path=plan.manifest,
                  guidance=CONFIG, options=options, progress=False)
    written = json.loads(plan.manifest.read_text())
    timing = {"sampling_seconds", "compute", "memory", "records", "outputs", "total_seconds"}
    same = {k: v for k, v in json.loads(json.dumps(content)).items() if k not in timing}
    assert same == {k: v for k, v in written.items() if k not in timing}
    assert set(written) - set(content) == {"outputs", "total_seconds"}
    assert [r["step"] for r in written["records"]] == [r.step for r in output.sampled.records]
    assert written["final_r"] == pytest.approx(output.final_r)
