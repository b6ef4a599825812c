"""benchmarks/bench_speed.py: the cost–effect map's statistics and settings (the runs themselves are
bench_steering's and bench_language's, tested there)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def speed():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_speed_under_test", ROOT / "benchmarks" / "bench_speed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_relative_effect_pairs_each_setting_run_with_the_default_on_the_same_pair(speed):
    rng = np.random.default_rng(0)
    default = {(f"t{k}", seed): -0.05 + rng.normal(0, 0.01) for k in range(8) for seed in range(3)}
    half = {pair: 0.5 * value for pair, value in default.items()}
    value, low, high, n = speed.relative_effect(half, default)
    assert n == 24 and value == pytest.approx(0.5) and low == pytest.approx(0.5) and high == pytest.approx(0.5)
    # Pairs the default lacks are left out, not compared with other pairs.
    extra = {**half, ("other", 0): -5.0}
    assert speed.relative_effect(extra, default)[0] == pytest.approx(0.5)
    noisy = {pair: value + rng.normal(0, 0.02) for pair, value in default.items()}
    value, low, high, _ = speed.relative_effect(noisy, default)
    assert low < value < high and high - low > 0.1


def test_pairs_are_guided_minus_base_of_the_same_target_and_seed(speed):
    rows = [{"reward": "base", "target": "a", "seed": 0, "overrides": {}, "chamfer": 0.10},
            {"reward": "base", "target": "a", "seed": 1, "overrides": {}, "chamfer": 0.30},
            {"reward": "oracle", "target": "a", "seed": 0, "overrides": {}, "chamfer": 0.07},
            {"reward": "oracle", "target": "a", "seed": 1, "overrides": {"every": 4}, "chamfer": 0.20},
            {"reward": "oracle", "target": "a", "seed": 1, "overrides": {}, "chamfer": 0.25}]
    deltas = speed._pairs(rows, ("target", "seed"), "oracle", speed._key({}), "base", "chamfer")
    assert deltas == pytest.approx({("a", 0): -0.03, ("a", 1): -0.05})
    every4 = speed._pairs(rows, ("target", "seed"), "oracle", speed._key({"every": 4}), "base", "chamfer")
    assert every4 == pytest.approx({("a", 1): -0.10})


def test_pareto_keeps_only_the_undominated(speed):
    points = [("default", 1.99, 1.0), ("every 3", 1.68, 0.84), ("worse", 1.70, 0.80), ("fast", 1.28, 0.8),
              ("same cost, less", 1.28, 0.5), ("twin of fast", 1.28, 0.8)]
    assert speed.pareto(points) == {"default", "every 3", "fast", "twin of fast"}  # a tie dominates neither


def test_a_setting_means_the_same_on_mini_and_at_the_real_sizes(speed):
    half = speed.by_name("view side ½")
    assert half.overrides(448)["view_size"] == 224 and half.overrides(112)["view_size"] == 56
    combined = speed.by_name("every 4 + 2 views + reuse")
    assert combined.oracle_overrides(112) == {"every": 4, "reuse_displacement": 1.0}  # the oracle has its own cameras
    assert combined.overrides(112)["num_views"] == 2
    assert len({s.name for s in speed.SETTINGS}) == len(speed.SETTINGS)


def test_every_speed_preset_is_on_the_map(speed):
    """The presets are chosen from the map: each one's knobs are a setting the map measured."""
    from vlm3d_ttg.speed import SPEEDS

    measured = [s.overrides(448) for s in speed.SETTINGS]
    for name, knobs in SPEEDS.items():
        assert knobs in measured, name
