"""The price of a run at the real sizes (vlm3d_ttg.cost): `cost_model.py --price RUN.glb.json` on real
manifests of tiny runs, the knobs it counts, bad files, and the preflight's price lines."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest

from vlm3d_ttg.cost import (RunShape, critic_shape_for, dit_forward_flops, extra_tflop_per_run, price, price_manifest,
                            search_tflop, unit_costs)
from vlm3d_ttg.guidance import GuidanceConfig
from vlm3d_ttg.search import SearchOptions

ROOT = Path(__file__).resolve().parents[1]
# A short tiny run whose settings differ from the defaults in the priced knobs (steps, views, view size, grid, every).
STEPS = 5  # 2 guided steps (σ 0.25 and 0.75) and, for the search, one after its selection at 0.5
RUN = ["--steps", str(STEPS), "--views", "2", "--view-size", "56", "--grid", "32", "--octree-resolution", "48",
       "--sigma-window", "0.1,0.9", "--every", "2", "--quiet"]


@pytest.fixture(scope="module")
def manifests(tiny_cache, rgba_image, tmp_path_factory) -> dict[str, Path]:
    """Manifests of three tiny generate runs: guided, --no-guidance on the same seed, and a guided search."""
    from vlm3d_ttg.cli import main

    folder = tmp_path_factory.mktemp("priced")
    paths = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLM3D_TTG_CACHE", str(tiny_cache))
        for name, extra in (("guided", []), ("unguided", ["--no-guidance"]),
                            ("search", ["--candidates", "2", "--select-at", "0.5", "--keep", "1"])):
            out = folder / f"{name}.glb"
            assert main(["generate", str(rgba_image), "--prompt", "a pot", "--preset", "tiny", "--out", str(out),
                         *RUN, *extra]) == 0
            paths[name] = out.with_name(out.name + ".json")
    return paths


@pytest.fixture()
def cost_model(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import cost_model

    return cost_model


def priced_line(cost_model, path: Path, capsys) -> tuple[int, str]:
    code = cost_model.main(["--price", str(path)])
    return code, capsys.readouterr().out.rstrip("\n").splitlines()[-1]


def test_price_of_a_tiny_runs_manifest_is_the_librarys_for_its_settings(manifests, cost_model, capsys):
    code, last = priced_line(cost_model, manifests["guided"], capsys)
    assert code == 0 and last.startswith("guided/unguided=")
    # The same settings priced by the library from the settings alone (the run skipped no step: planned = counted).
    settings = GuidanceConfig(num_views=2, view_size=56, grid_resolution=32, sigma_window=(0.1, 0.9), every=2)
    expected = price(settings, STEPS, critic_model="Qwen/Qwen2.5-VL-7B-Instruct")
    assert last == f"guided/unguided={expected.ratio:.2f}" and expected.ratio > 1.0
    priced = price_manifest(manifests["guided"])
    assert not priced.planned and priced.counts == expected.counts
    # The unguided run on the same seed costs what the unguided baseline does.
    code, last = priced_line(cost_model, manifests["unguided"], capsys)
    assert (code, last) == (0, "guided/unguided=1.00")


def test_a_search_runs_manifest_is_priced_with_its_search(manifests, cost_model, capsys):
    code, last = priced_line(cost_model, manifests["search"], capsys)
    settings = GuidanceConfig(num_views=2, view_size=56, grid_resolution=32, sigma_window=(0.1, 0.9), every=2)
    searched = price(settings, STEPS, SearchOptions(candidates=2, select_at=0.5, keep=1))
    assert code == 0 and last == f"guided/unguided={searched.ratio:.2f}"
    priced = price_manifest(manifests["search"])
    assert priced.counts == searched.counts and priced.settings["candidates"] == 2
    assert priced.ratio > price(settings, STEPS).ratio  # the second candidate's rows and score cost more


def test_a_manifest_is_priced_by_the_critic_calls_the_run_made(manifests, tmp_path):
    """A run that called the critic fewer times than planned (a stop rule, a skipped step) costs less."""
    manifest = json.loads(manifests["guided"].read_text())
    full = price_manifest(manifest)
    manifest["compute"]["critic_backwards"] -= 1
    manifest["compute"]["critic_forwards"] -= 1
    fewer = price_manifest(manifest)
    assert fewer.ratio < full.ratio and fewer.settings["guided_steps"] == full.settings["guided_steps"] - 1


@pytest.mark.parametrize("content, message", [
    (None, "no such file"), ("{not json", "not JSON"), (json.dumps({"tool": "something else"}), "not a run manifest"),
    (json.dumps([1, 2]), "not a run manifest")])
def test_a_bad_file_is_refused_with_exit_2(content, message, tmp_path, cost_model, capsys):
    path = tmp_path / "run.glb.json"
    if content is not None:
        path.write_text(content)
    assert cost_model.main(["--price", str(path)]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and str(path) in captured.err and captured.out == ""


def test_the_script_exits_2_on_a_missing_manifest(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cost_model.py"), "--price", str(tmp_path / "no.json")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and "no such file" in done.stderr and "Traceback" not in done.stderr


def test_the_default_knobs_price_at_the_cost_models_x1_99():
    """The default run's price is RESULTS' guided ÷ unguided (1 + guidance's added TFLOP ÷ the unguided run's)."""
    default = price(GuidanceConfig(), 50)
    base = RunShape()
    assert default.ratio == pytest.approx(1 + extra_tflop_per_run(base) * 1e12 / (base.steps * dit_forward_flops(2)), rel=1e-9)
    assert default.summary() == (f"counted at the real sizes: guided/unguided ×{default.ratio:.2f} "
                                 f"({default.guided_tflop:.0f} TFLOP vs {default.unguided_tflop:.0f})")
    assert default.critic == "Qwen2.5-VL-7B" and default.critic_assumed


def test_the_knobs_move_the_price_the_way_they_cut_the_work():
    default = price(GuidanceConfig(), 50)
    every4 = price(GuidanceConfig(every=4), 50)
    assert every4.guided_tflop < default.guided_tflop and every4.unguided_tflop == default.unguided_tflop
    # The grid layout lowers the critic's stage (one view-size image instead of four) and nothing else.
    stages = {name: t for name, t, _ in default.stages}
    grid = {name: t for name, t, _ in price(GuidanceConfig(view_layout="grid"), 50).stages}
    critic = "critic forward + input backward"
    assert grid[critic] < stages[critic] and {k: v for k, v in grid.items() if k != critic} == {
        k: v for k, v in stages.items() if k != critic}
    # More inner steps, the reference, a larger guidance grid and xt each cost more; a smaller critic less.
    for knob in ({"inner_steps": 2}, {"reference": True}, {"grid_resolution": 128}, {"grad_mode": "xt"}):
        assert price(GuidanceConfig(**knob), 50).ratio > default.ratio, knob
    small = price(GuidanceConfig(), 50, critic_model="Qwen/Qwen2.5-VL-3B-Instruct")
    assert small.critic == "Qwen2.5-VL-3B" and not small.critic_assumed and small.ratio < default.ratio
    assert small.guided_peak_gib < default.guided_peak_gib
    assert price(GuidanceConfig(), 50, checkpointing=True).guided_peak_gib < default.guided_peak_gib
    assert price(GuidanceConfig(enabled=False), 50).ratio == 1.0


def test_critic_ids_name_their_shape_or_the_7b_is_assumed():
    assert critic_shape_for("Qwen/Qwen3-VL-8B-Instruct")[0].name == "Qwen3-VL-8B"
    assert critic_shape_for("/models/qwen3-vl-4b")[0].name == "Qwen3-VL-4B"
    assert critic_shape_for("Qwen/Qwen2.5-VL-32B-Instruct") == (critic_shape_for(None)[0], True)
    assert "priced as Qwen2.5-VL-7B" in " ".join(price(GuidanceConfig(), 50, critic_model="my/critic").notes)


def test_search_runs_are_priced_with_the_search_counts():
    search = SearchOptions(candidates=4, select_at=0.3, keep=1)
    shape = RunShape(candidates=4, select_at=0.3)
    searched = price(GuidanceConfig(), 50, search)
    # search_tflop counts the final mesh's score too; the price leaves it out of both runs.
    assert searched.guided_tflop == pytest.approx(search_tflop(shape) - unit_costs(shape)[1], rel=1e-9)
    assert searched.ratio > price(GuidanceConfig(), 50).ratio


def test_a_stop_rule_is_priced_as_an_upper_bound_in_a_plan():
    """stop_r (a knob GuidanceConfig may not have yet): a plan counts every scheduled guided step, and says so."""
    config = GuidanceConfig()
    with_stop = types.SimpleNamespace(**{**config.to_dict(), "stop_r": 2.0, "reuse_displacement": 0.5}, active=True)
    priced = price(with_stop, 50)
    assert priced.ratio == price(config, 50).ratio
    assert any("upper bound" in note for note in priced.notes) and any("reuse_displacement" in n for n in priced.notes)


def test_the_preflight_prices_the_run_and_each_speed_preset():
    from vlm3d_ttg.generation import GenerationOptions
    from vlm3d_ttg.preflight import check_generation, price_lines

    options = GenerationOptions()
    speeds = {"fast": {"every": 4, "view_layout": "grid", "not_a_knob": 1}, "quality": {}}
    lines = price_lines(options, GuidanceConfig(), None, speeds)
    assert lines[0] == price(GuidanceConfig(), 50, critic_model=options.vlm).summary()
    fast = price(GuidanceConfig(every=4, view_layout="grid"), 50).ratio
    assert lines[1] == (f"  speed fast: guided/unguided ×{fast:.2f} ({price(GuidanceConfig(every=4, view_layout='grid'), 50).guided_tflop:.0f}"
                        f" TFLOP vs {price(GuidanceConfig(), 50).unguided_tflop:.0f})")
    assert lines[2].startswith(f"  speed quality: guided/unguided ×{price(GuidanceConfig(), 50).ratio:.2f}")
    # A preset is priced from the defaults with its values, whatever the run's own guidance knobs.
    assert price_lines(options, GuidanceConfig(every=8), None, {"quality": {}})[1] == lines[2]
    estimate = check_generation(replace(options, device="cpu"), GuidanceConfig(), SearchOptions(), preset="tiny")
    assert lines[0] in estimate.describe()
