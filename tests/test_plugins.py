"""Plug-ins by entry points (issue 29, item 2): a throw-away package, installed the way pip installs one
(a `.dist-info` with `entry_points.txt` on a `sys.path` entry), adds a backbone (the analytic one of
tests/analytic_backbone.py, copied in as the package's own file) and a critic family; the registries
find both without a line edited here, and guided sampling runs on the plug-in backbone."""

from __future__ import annotations

import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from vlm3d_ttg.backbones import BACKBONES, BUILTIN_BACKBONES, backbone_class, load_backbone_plugins
from vlm3d_ttg.critic.families import FAMILIES, check_family_view_size, family_of, get_family, load_critic_plugins
from vlm3d_ttg.errors import InvalidInputError, UnsupportedModelError
from vlm3d_ttg.guidance import GuidanceConfig, LatentFunctionReward, RewardEvaluation
from vlm3d_ttg.plugins import BACKBONE_GROUP, CRITIC_GROUP
from vlm3d_ttg.sampler import GuidedSampler

from test_backbones import ellipse_image

PLUGIN = "vlm3d_ttg_demo_plugin"


def write_plugin(root: Path) -> None:
    """The plug-in package and its installed metadata (what `pip install` of its pyproject.toml leaves)."""
    package = root / PLUGIN
    package.mkdir()
    (package / "__init__.py").write_text("")
    shutil.copy(Path(__file__).with_name("analytic_backbone.py"), package / "backbone.py")
    (package / "critic.py").write_text(textwrap.dedent("""
        from vlm3d_ttg.critic.families import CriticFamily
        from vlm3d_ttg.critic.vlm_critic import VLMCritic

        # A family of Qwen2.5-VL-architecture checkpoints that call themselves "toy_vl".
        TOY_VL = CriticFamily("toy-vl", ("toy_vl",), VLMCritic, "Qwen2_5_VLForConditionalGeneration", "example/toy-vl")
    """))
    info = root / f"{PLUGIN}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PLUGIN}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{BACKBONE_GROUP}]\nanalytic = {PLUGIN}.backbone:AnalyticBackbone\n\n"
        f"[{CRITIC_GROUP}]\ntoy-vl = {PLUGIN}.critic:TOY_VL\n")


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """The plug-in on sys.path, the registries re-read; afterwards both registries as they were."""
    backbones, families = dict(BACKBONES), dict(FAMILIES)
    write_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # also invalidates the import caches
    yield
    for registry, before in ((BACKBONES, backbones), (FAMILIES, families)):
        registry.clear()
        registry.update(before)
    for name in [name for name in sys.modules if name.split(".")[0] == PLUGIN]:
        del sys.modules[name]  # the next test's copy is imported afresh


class MeanReward(LatentFunctionReward):
    """r = the latent's mean: a reward whose gradient is never zero."""

    def __call__(self, latent, *, generator=None):
        return RewardEvaluation(r=latent.float().mean(), p_yes=None)


def test_an_installed_plugin_adds_a_backbone_and_a_critic_family(installed_plugin):
    assert "analytic" not in BACKBONES and "toy-vl" not in FAMILIES  # nothing of it before discovery
    load_backbone_plugins()
    load_critic_plugins()
    assert set(BUILTIN_BACKBONES) < set(BACKBONES)  # ours stay
    backbone = backbone_class("analytic")()
    assert type(backbone).__module__ == f"{PLUGIN}.backbone"  # the plug-in's own file, not the tests' copy
    family = get_family("toy-vl")
    assert family_of({"model_type": "toy_vl"}) is family and check_family_view_size("toy-vl", 56) == 56
    with pytest.raises(InvalidInputError, match="no offline"):
        family.offline_writer  # no tiny writer registered: optional, said so when asked for

    # Guided sampling on the plug-in backbone: the guided steps move the latent.
    config = GuidanceConfig(sigma_window=(0.1, 0.95), every=1)
    image = ellipse_image()
    run = dict(num_inference_steps=6, seed=3, output_type="latent", progress=False)
    guided = GuidedSampler(backbone, MeanReward(), config)(image, **run)
    plain = GuidedSampler(backbone, config=GuidanceConfig(enabled=False))(image, **run)
    steps = [r for r in guided.records if r.guided]
    assert steps and all(r.skipped is None and r.grad_norm > 0 and r.applied_norm > 0 for r in steps)
    assert guided.latents.mean() > plain.latents.mean()  # guidance raised the reward


def test_a_broken_plugin_is_left_out_and_the_rest_still_works(installed_plugin, tmp_path, caplog):
    (tmp_path / PLUGIN / "critic.py").write_text("raise ImportError('a missing dependency of the plug-in')\n")
    (tmp_path / PLUGIN / "backbone.py").write_text("raise ImportError('a missing dependency of the plug-in')\n")
    before = set(FAMILIES)
    assert set(load_critic_plugins()) == before  # logged and left out
    assert "toy-vl" in caplog.text and "missing dependency" in caplog.text
    load_backbone_plugins()
    with pytest.raises(UnsupportedModelError, match="cannot be loaded"):
        backbone_class("analytic")
    assert backbone_class("hunyuan3d-2").__name__ == "HunyuanBackbone"  # ours unaffected


def test_our_own_are_registered_by_entry_points_as_a_plugin_would_be():
    """pyproject.toml registers our backbone and critic families in the same groups, and the in-code table
    (for source trees run without their own install) says the same."""
    import importlib
    import tomllib

    from vlm3d_ttg.critic.families import QWEN2_5_VL, QWEN3_VL

    groups = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["entry-points"]
    assert groups[BACKBONE_GROUP] == BUILTIN_BACKBONES
    assert set(groups[CRITIC_GROUP]) == {QWEN2_5_VL.name, QWEN3_VL.name}
    for name, target in groups[CRITIC_GROUP].items():
        module, _, attribute = target.partition(":")
        assert getattr(importlib.import_module(module), attribute) is FAMILIES[name]


def test_the_cli_runs_a_plugin_backbone_on_its_own_schedule(installed_plugin, tiny_vlm_path, tiny_cache, tmp_path,
                                                            monkeypatch, capsys):
    """From the command line: `--backbone analytic --preset tiny` runs guided on the plug-in; --views-at takes
    exactly the steps the backbone's own σ schedule guides (not hy3dgen's), the manifest names the backbone,
    and `--preset real` stops with the backbone's own "model missing" message (exit 2)."""
    import json

    from vlm3d_ttg.cli import main
    from vlm3d_ttg.generation import GenerationOptions
    from vlm3d_ttg.requests import validate_settings

    monkeypatch.setenv("VLM3D_TTG_CACHE", str(tiny_cache))  # this session's tiny critic
    load_backbone_plugins()
    theirs = validate_settings({"steps": 10, "backbone": "analytic"}, preset="tiny").guided_steps
    hy3dgen = validate_settings({"steps": 10}, preset="tiny").guided_steps
    assert theirs and theirs != hy3dgen  # the two schedules guide different steps
    image = tmp_path / "ellipse.png"
    ellipse_image(image)
    common = [str(image), "--prompt", "an orange ellipsoid", "--backbone", "analytic", "--steps", "10", "--quiet",
              "--octree-resolution", "32", "--views", "2", "--view-size", "56"]  # small: the test is the wiring

    assert main(["generate", *common, "--out", str(tmp_path / "b.glb")]) == 2  # --preset real
    assert "the analytic backbone has no real model" in capsys.readouterr().err

    not_theirs = sorted(set(hy3dgen) - set(theirs))
    assert main(["generate", *common, "--preset", "tiny", "--out", str(tmp_path / "x.glb"), "--save-views",
                 str(tmp_path / "x_views"), "--views-at", ",".join(map(str, not_theirs))]) == 2
    assert f"this run guides steps {theirs}" in capsys.readouterr().err

    out = tmp_path / "a.glb"
    assert main(["generate", *common, "--preset", "tiny", "--out", str(out), "--save-views", str(tmp_path / "views"),
                 "--views-at", ",".join(map(str, theirs))]) == 0, capsys.readouterr().err
    manifest = json.loads(out.with_name("a.glb.json").read_text())
    assert manifest["models"]["backbone"] == "analytic" and manifest["options"]["backbone"] == "analytic"
    assert [r["step"] for r in manifest["records"] if r["guided"]] == theirs
    assert sorted(path.name for path in (tmp_path / "views").glob("step_*.png")) == [f"step_{s:03d}.png" for s in theirs]

    assert GenerationOptions().backbone == "hunyuan3d-2"
