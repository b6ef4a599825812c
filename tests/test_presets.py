"""Presets are one record each (`vlm3d_ttg.presets`): the checks and loaders read the record, so a new
preset is one entry, and each offline preset's checkpoints come from the writers its record names."""

from __future__ import annotations

import pytest

from vlm3d_ttg.errors import InvalidInputError
from vlm3d_ttg.presets import PRESETS, Preset, cache_root, critic_checkpoint, get_preset, offline_checkpoints


def test_each_offline_preset_names_writers_that_register_it(tmp_path):
    offline = [preset for preset in PRESETS.values() if preset.offline]
    assert {preset.name for preset in offline} == {"tiny", "realsize", "mini"}
    for preset in offline:
        folder = offline_checkpoints(preset).folder(tmp_path)  # imports preset.writers, which registers it
        assert folder.parent == cache_root(tmp_path) and folder.name.startswith(f"{preset.name}-")
    with pytest.raises(InvalidInputError, match="writes no offline checkpoints"):
        offline_checkpoints("real")
    with pytest.raises(InvalidInputError, match="Unknown preset 'small'; use one of real, tiny, realsize, mini"):
        get_preset("small")


def test_the_critic_checkpoint_follows_the_preset(tiny_cache, tiny_vlm_path):
    assert critic_checkpoint("real", "some/vlm", family="qwen2.5-vl", depth=1) == "some/vlm"
    assert critic_checkpoint("tiny", "some/vlm", family="qwen2.5-vl", depth=1, cache_dir=tiny_cache) == str(tiny_vlm_path)


def test_a_new_preset_is_one_entry(monkeypatch):
    """A preset added to PRESETS (its writers: the tiny ones) is offline everywhere the checks ask, with
    its own export grid and critic families, without another line anywhere."""
    from vlm3d_ttg.models import critic_family_for
    from vlm3d_ttg.requests import validate_settings

    small = Preset("small", offline=True, help="a test preset", shape_variants=False, critic_families=("qwen2.5-vl",),
                   critic_note="one family only", writers="vlm3d_ttg.tiny", label="small", defaults={"octree_resolution": 96})
    monkeypatch.setitem(PRESETS, "small", small)
    assert validate_settings({}, preset="small").options.octree_resolution == 96
    with pytest.raises(InvalidInputError, match="--vlm would be ignored with --preset small"):
        validate_settings({"vlm": "some/vlm"}, preset="small")
    with pytest.raises(InvalidInputError, match="--preset small has one family only; drop --critic-family"):
        critic_family_for("some/vlm", "small", "qwen3-vl")
    assert critic_family_for("some/unreadable/vlm", "small", None) == "qwen2.5-vl"


def test_the_benchmark_cache_key_names_a_backbone_other_than_the_default():
    """A cached benchmark result is keyed by its backbone (and older keys, of the default one, stay as they were)."""
    import dataclasses

    from vlm3d_ttg.bench.settings import GenerationSettings

    for preset in ("tiny", "real"):
        default = GenerationSettings(preset=preset)
        other = dataclasses.replace(default, options=dataclasses.replace(default.options, backbone="analytic"))
        assert "backbone" not in default.models_key() and other.models_key()["backbone"] == "analytic"


def test_a_backbone_declares_its_own_defaults_and_a_preset_sits_above_them(monkeypatch):
    """Options not given take the backbone's declared defaults, a preset's over those, the user's over both;
    a backbone that declares none gets the options' own (the default backbone's: hy3dgen's 50 steps, CFG 5)."""
    from analytic_backbone import AnalyticBackbone
    from vlm3d_ttg.backbones import BACKBONES
    from vlm3d_ttg.requests import validate_settings

    class Quick(AnalyticBackbone):
        defaults = {"steps": 12, "cfg_scale": 2.5, "octree_resolution": 40}

    monkeypatch.setitem(BACKBONES, "quick", Quick)
    monkeypatch.setitem(BACKBONES, "analytic", AnalyticBackbone)
    quick = validate_settings({"backbone": "quick"}, preset="real").options
    assert (quick.steps, quick.cfg_scale, quick.octree_resolution) == (12, 2.5, 40)
    assert validate_settings({"backbone": "quick"}, preset="mini").options.octree_resolution == 64  # the preset's
    assert validate_settings({"backbone": "quick", "steps": 30}, preset="mini").options.steps == 30  # the user's
    plain = validate_settings({"backbone": "analytic"}, preset="real").options
    assert (plain.steps, plain.cfg_scale, plain.octree_resolution) == (50, 5.0, 384)
