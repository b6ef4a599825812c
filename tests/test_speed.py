"""Speed presets (`--speed`, vlm3d_ttg.speed): one option expanding to knob values, between the run preset's
defaults and the flags given; shown in --help and recorded in the manifest; refused where it means nothing."""

from __future__ import annotations

import dataclasses
import json

import pytest

from vlm3d_ttg.cli import main
from vlm3d_ttg.guidance import GuidanceConfig
from vlm3d_ttg.requests import validate_settings
from vlm3d_ttg.search import guided_steps_with_search, SearchOptions
from vlm3d_ttg.speed import SPEEDS, describe_speeds

CHEAPER = [name for name in SPEEDS if name != "quality"]


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("preset", ["real", "mini"])
@pytest.mark.parametrize("speed", CHEAPER)
def test_a_speed_sets_its_knobs_over_the_preset_and_under_the_flags(speed, preset):
    plain = validate_settings({}, preset=preset).guidance
    fast = validate_settings({"speed": speed}, preset=preset).guidance
    knobs = SPEEDS[speed]
    assert knobs, "a speed other than quality changes something"
    for name, value in knobs.items():
        assert getattr(fast, name) == value, name
    # Everything else is the preset's (mini's 112-px views stay mini's).
    untouched = {f.name for f in dataclasses.fields(GuidanceConfig)} - set(knobs) - {"speed"}
    assert {n: getattr(fast, n) for n in untouched} == {n: getattr(plain, n) for n in untouched}
    assert fast.speed == speed and plain.speed == "quality"
    # A flag given wins over the speed's value for it.
    name, value = next(iter(knobs.items()))
    given = {"every": 1, "num_views": 3, "view_layout": "separate", "grid_resolution": 64}.get(name)
    if given is not None and given != value:
        assert getattr(validate_settings({"speed": speed, name: given}, preset=preset).guidance, name) == given


@pytest.mark.parametrize("speed", list(SPEEDS))
def test_for_speed_is_what_the_command_line_builds(speed):
    from_cli = validate_settings({"speed": speed}, preset="real").guidance
    assert GuidanceConfig.for_speed(speed) == from_cli
    assert GuidanceConfig.for_speed(speed, every=1).every == 1


def test_quality_is_the_default_run():
    assert GuidanceConfig() == GuidanceConfig.for_speed("quality")
    assert SPEEDS["quality"] == {}


def test_every_cheaper_speed_guides_fewer_steps_or_with_fewer_views():
    quality = GuidanceConfig()
    sigmas = [i / 49 for i in range(50)]
    for speed in CHEAPER:
        config = GuidanceConfig.for_speed(speed)
        fewer_steps = (len(guided_steps_with_search(sigmas, config, SearchOptions()))
                       < len(guided_steps_with_search(sigmas, quality, SearchOptions())))
        assert fewer_steps or config.num_views < quality.num_views or config.view_layout == "grid", speed


def test_help_names_every_speed_and_its_knobs(capsys):
    code, out, _ = run_cli(["generate", "--help"], capsys)
    assert code == 0
    flat = " ".join(out.replace("│", " ").split())
    assert "--speed" in flat
    for name, knobs in SPEEDS.items():
        assert name in flat
        for knob in knobs:
            assert knob in flat, knob
    assert " ".join(describe_speeds().split()) in flat


def test_unknown_speed_and_speed_without_guidance_are_refused(tmp_path, rgba_image, capsys, monkeypatch):
    import vlm3d_ttg.generation as generation

    def must_not_load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(generation, "load_models", must_not_load)  # refused before any model loads
    code, _, err = run_cli(["generate", rgba_image, "--prompt", "a pot", "--preset", "tiny", "--out", tmp_path / "a.glb",
                            "--speed", "turbo"], capsys)
    assert code == 2 and "--speed" in err and "turbo" in err
    code, _, err = run_cli(["generate", rgba_image, "--prompt", "a pot", "--preset", "tiny", "--out", tmp_path / "b.glb",
                            "--speed", "fast", "--no-guidance"], capsys)
    assert code == 2 and "--speed fast" in err and "--no-guidance" in err
    assert not list(tmp_path.iterdir())


def test_a_fast_run_records_its_speed_and_guides_as_it_says(tmp_path, rgba_image, tiny_cache, monkeypatch, capsys):
    monkeypatch.setenv("VLM3D_TTG_CACHE", str(tiny_cache))
    out = tmp_path / "fast.glb"
    code, _, err = run_cli(["generate", rgba_image, "--prompt", "a pot", "--preset", "tiny", "--out", out, "--speed", "fast",
                            "--steps", "10", "--view-size", "56", "--grid", "32", "--octree-resolution", "48",
                            "--sigma-window", "0,1", "--quiet"], capsys)
    assert code == 0, err
    manifest = json.loads(out.with_name(out.name + ".json").read_text())
    assert manifest["guidance"]["speed"] == "fast"
    for name, value in SPEEDS["fast"].items():
        recorded = manifest["guidance"][name]
        assert (tuple(recorded) if isinstance(recorded, list) else recorded) == value, name
    guided = [r["step"] for r in manifest["records"] if r["guided"]]
    config = GuidanceConfig.for_speed("fast", sigma_window=(0.0, 1.0))
    sigmas = [i / 9 for i in range(10)]
    assert guided == guided_steps_with_search(sigmas, config, SearchOptions())


def test_the_quality_benchmark_expands_speed_as_generate_does():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "quality.py"
    spec = importlib.util.spec_from_file_location("quality_for_speed", path)
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    for speed in SPEEDS:
        args = quality.parse_args(["--out", "x", "--speed", speed])
        assert quality.guidance_from_args(args, {}) == GuidanceConfig.for_speed(speed)
    args = quality.parse_args(["--out", "x", "--speed", "fast", "--every", "1"])
    assert quality.guidance_from_args(args, {}) == GuidanceConfig.for_speed("fast", every=1)
