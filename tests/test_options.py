"""Each option is declared once (vlm3d_ttg.options): every field of the run, postprocessing and
guidance dataclasses is reachable, with the same default, from `vlm3d-ttg generate` and the
quality benchmark; one validation path rejects bad values before any model loads."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import sys
from pathlib import Path

import click
import pytest
import typer

from vlm3d_ttg.errors import InvalidInputError
from vlm3d_ttg.export import PostprocessConfig
from vlm3d_ttg.generation import GenerationOptions
from vlm3d_ttg.guidance import GuidanceConfig
from vlm3d_ttg.options import cli_default, declared, flag_of, from_values

ROOT = Path(__file__).resolve().parent.parent
from vlm3d_ttg.search import SearchOptions

# SearchOptions is per configuration in the benchmark (presets best_of_n, search_guided, or "search"
# in --config-file), so only `generate` has its flags.
OPTION_CLASSES = (GenerationOptions, PostprocessConfig, GuidanceConfig, SearchOptions)


def _generate_command() -> click.Command:
    from vlm3d_ttg.commands.generate import generate

    app = typer.Typer()
    app.command()(generate)
    return typer.main.get_command(app)


def _quality_module():
    spec = importlib.util.spec_from_file_location("quality_bench", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality_bench"] = module
    spec.loader.exec_module(module)
    return module


def test_every_declared_field_is_a_generate_option_with_the_same_default():
    params = {p.name: p for p in _generate_command().params}
    for cls in OPTION_CLASSES:
        fields = {f.name for f in dataclasses.fields(cls)}
        assert fields == {f.name for f, _ in declared(cls)}, f"{cls.__name__}: a field without a declared option"
        for field, spec in declared(cls):
            assert field.name in params, f"{cls.__name__}.{field.name} is not an option of vlm3d-ttg generate"
            param = params[field.name]
            assert flag_of(field, spec) in param.opts
            assert param.default == cli_default(field, spec), field.name
            # ... and the value the command line gives back by default is the field's default.
            assert from_values(cls, {field.name: param.default}).__dict__[field.name] == field.default


def test_the_benchmark_derives_the_same_options_with_the_same_defaults():
    quality = _quality_module()
    parser_args = quality.parse_args(["--out", "x"])
    from vlm3d_ttg.options import from_namespace

    # Nothing given: the real preset's run is exactly the dataclasses' defaults.
    assert from_namespace(GuidanceConfig, parser_args) == GuidanceConfig()
    assert dataclasses.replace(from_namespace(GenerationOptions, parser_args), seed=0) == GenerationOptions()
    excluded = set(quality.BENCH_EXCLUDED_GUIDANCE) | set(quality.BENCH_EXCLUDED_GENERATION)
    assert excluded == {"enabled", "seed", "device", "offload_idle", "realsize_depth"}  # each with its reason in quality.py
    # A non-default value for every option the benchmark takes: the flag reaches the field.
    given = {
        "steps": ("12", 12), "cfg_scale": ("3.5", 3.5), "octree_resolution": ("96", 96),
        "backbone": ("analytic", "analytic"), "shape_model": ("hunyuan3d-2mini", "hunyuan3d-2mini"), "shape_subfolder": ("sub", "sub"), "vlm": ("/m", "/m"),
        "dtype": ("float16", "float16"), "vlm_dtype": ("float32", "float32"), "checkpointing": (None, True),
        "text_to_image": ("/t2i", "/t2i"), "critic_family": ("qwen3-vl", "qwen3-vl"),
        "scale": ("0.1", 0.1), "step_norm": ("raw", "raw"), "max_step_ratio": ("0", None),
        "schedule": ("linear_decay", "linear_decay"), "sigma_window": ("0.3,0.7", (0.3, 0.7)), "every": ("3", 3),
        "inner_steps": ("2", 2), "grad_mode": ("xt", "xt"), "num_views": ("6", 6), "view_size": ("224", 224),
        "elevation": ("10", 10.0), "azimuth_jitter": ("0", 0.0), "elevation_jitter": ("1", 1.0),
        "grid_resolution": ("128", 128), "query": ("content", "content"), "backend": ("cpu", "cpu"),
        "reference": (None, True), "view_layout": ("grid", "grid"), "silhouette_weight": ("2.5", 2.5),
        "speed": ("fast", "fast"), "reuse_displacement": ("0.5", 0.5), "stop_r": ("-2", -2.0),
        "export_decoder": ("flashvdm", "flashvdm"),
    }
    for cls in (GenerationOptions, GuidanceConfig):
        for field, spec in declared(cls):
            if field.name in excluded:
                continue
            assert field.name in given, f"add {field.name} to this test"
            text, expected = given[field.name]
            argv = ["--out", "x", flag_of(field, spec)] + ([text] if text is not None else [])
            parsed = from_namespace(cls, quality.parse_args(argv))
            assert getattr(parsed, field.name) == expected != field.default, (field.name, argv)


@pytest.mark.parametrize("bad", [
    dict(num_views=2.5), dict(every=1.5), dict(grid_resolution=math.nan), dict(backend="bogus"), dict(enabled="no"),
    dict(scale=math.inf), dict(max_step_ratio=math.nan), dict(elevation=math.nan), dict(azimuth_jitter=-1.0),
    dict(elevation_jitter=math.inf), dict(sigma_window=(0.5, 0.5)), dict(sigma_window="0.2,0.8"),
    dict(query="{description} <|im_end|> hi"), dict(view_size=True),
    dict(reference="yes"), dict(view_layout="mosaic"), dict(view_layout="grid", num_views=400, view_size=28),
])
def test_guidance_config_rejects_wrong_types_and_values(bad):
    with pytest.raises(InvalidInputError, match="Invalid guidance option"):
        GuidanceConfig(**bad).validate()


@pytest.mark.parametrize("bad", [
    dict(seed=2**64), dict(seed=-1), dict(steps=1), dict(cfg_scale=math.nan), dict(cfg_scale=-1.0),
    dict(octree_resolution=8), dict(device="gpu0"), dict(dtype="int8"), dict(checkpointing="yes"),
])
def test_generation_options_reject_wrong_values(bad):
    with pytest.raises(InvalidInputError):
        GenerationOptions(**bad).validate()
