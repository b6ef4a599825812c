"""`--preset mini` (issue 26, item 2): the trained miniature world runs offline from the command line,
guided by its trained critic, with the preset's own option defaults (the critic's training views, the
shape model's small grid) wherever the user gives none; a damaged asset and a critic it cannot bring
are refused before any heavy work (exit 2)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from vlm3d_ttg.cli import main
from vlm3d_ttg.presets import get_preset
from vlm3d_ttg.requests import validate_settings

PROMPT = "a mug with a handle"


def _run(args: list, capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def mug_image(tmp_path_factory):
    """An input picture of a mug of the mini world's shape set, in its training style."""
    from vlm3d_ttg.miniworld import make_spec, render_input_image, shape_sdf
    from vlm3d_ttg.miniworld.geometry import mesh_from_sdf

    path = tmp_path_factory.mktemp("mini-input") / "mug.png"
    render_input_image(mesh_from_sdf(shape_sdf(make_spec("mug", 2)), 48), 30.0, 20.0).save(path)
    return path


@pytest.fixture(scope="module")
def mini_run(mug_image, tmp_path_factory):
    """One guided mini run from the CLI: --octree-resolution (and, for speed, --grid) given, the view options
    left to the preset."""
    folder = tmp_path_factory.mktemp("mini-run")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLM3D_TTG_CACHE", str(folder / "cache"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        out = folder / "mug.glb"
        code = main(["generate", str(mug_image), "--prompt", PROMPT, "--preset", "mini", "--steps", "6",
                     "--octree-resolution", "48", "--grid", "32", "--out", str(out), "--quiet"])
    return code, out


def test_mini_generates_offline_guided_by_its_critic_with_its_defaults(mini_run):
    code, out = mini_run
    assert code == 0 and out.is_file()
    manifest = json.loads(out.with_name("mug.glb.json").read_text())
    models = manifest["models"]
    assert models["preset"] == "mini" and models["critic_family"] == "qwen2.5-vl" and models["shape"].endswith("(mini)")
    guidance = manifest["guidance"]
    # The preset's defaults where the user gave none (the command line's own default view size is 448) ...
    assert (guidance["num_views"], guidance["view_size"], guidance["elevation"]) == (4, 112, 20.0)
    assert (guidance["azimuth_jitter"], guidance["elevation_jitter"]) == (15.0, 5.0)
    # ... and the user's value where one was given (the preset's export grid is 64).
    assert manifest["options"]["octree_resolution"] == 48 == manifest["export"]["octree_resolution"]
    guided = [record for record in manifest["records"] if record["guided"]]
    scored = [record["r"] for record in guided if record["r"] is not None]
    assert guided and scored and all(np.isfinite(scored))
    assert np.isfinite(manifest["final_r"])


def test_the_preset_defaults_hold_unless_the_user_gives_the_option():
    mini = validate_settings({}, preset="mini")
    assert (mini.options.octree_resolution, mini.guidance.view_size, mini.guidance.num_views) == (64, 112, 4)
    given = validate_settings({"view_size": 448, "octree_resolution": 96}, preset="mini")
    assert (given.options.octree_resolution, given.guidance.view_size) == (96, 448)
    tiny = validate_settings({}, preset="tiny")
    assert (tiny.options.octree_resolution, tiny.guidance.view_size, tiny.options.steps) == (128, 448, 50)


def test_the_mini_defaults_render_what_its_critic_was_trained_on():
    """Guidance's views under the mini defaults are the critic's training views (miniworld.render_input.critic_views:
    the same cameras, size, jitter, distance and background), pixel for pixel on the same generator."""
    from analytic_backbone import AnalyticBackbone
    from vlm3d_ttg.miniworld import critic_views, make_spec, shape_sdf
    from vlm3d_ttg.miniworld.geometry import mesh_from_sdf
    from vlm3d_ttg.reward import VLMReward

    from vlm3d_ttg.terms import TermValue

    class Seen:  # a reward term that keeps the views the reward hands it (where the critic's term gets them)
        name = "seen"

        def cameras(self, orbit):
            return orbit

        def __call__(self, views):
            self.images = views.images.detach()
            return TermValue(views.masks.mean(), {})

        def modules(self):
            return []

    mesh = mesh_from_sdf(shape_sdf(make_spec("table", 1)), 32)
    seen = Seen()
    reward = VLMReward(AnalyticBackbone(), None, validate_settings({}, preset="mini").guidance, terms=[(1.0, seen)])
    reward.evaluate(torch.from_numpy(mesh.vertices), torch.from_numpy(mesh.faces),
                    reward.cameras(generator=torch.Generator().manual_seed(7)))
    trained = critic_views(mesh, generator=torch.Generator().manual_seed(7))
    assert seen.images.shape == trained.shape == (4, 3, 112, 112)
    assert torch.equal(seen.images, trained)


def test_a_damaged_mini_asset_is_refused_before_anything_loads(mug_image, tmp_path, monkeypatch, capsys, no_model_loads):
    import vlm3d_ttg.miniworld.checkpoints as checkpoints

    damaged = tmp_path / "assets"
    shutil.copytree(checkpoints.ASSETS, damaged)
    weights = bytearray((damaged / "critic_guide.fp16.safetensors").read_bytes())
    weights[-3] ^= 0xFF
    (damaged / "critic_guide.fp16.safetensors").write_bytes(bytes(weights))
    monkeypatch.setattr(checkpoints, "ASSETS", damaged)
    cache = tmp_path / "cache"
    monkeypatch.setenv("VLM3D_TTG_CACHE", str(cache))
    code, err = _run(["generate", mug_image, "--prompt", PROMPT, "--preset", "mini", "--steps", "6",
                      "--out", tmp_path / "out" / "m.glb"], capsys)
    assert code == 2 and "critic_guide.fp16.safetensors" in err and "sha256" in err, err
    assert not cache.exists() and not (tmp_path / "out").exists()  # nothing written, nothing loaded


@pytest.mark.parametrize("extra,said", [
    (["--vlm", "Qwen/Qwen2.5-VL-3B-Instruct"], "--vlm would be ignored with --preset mini"),
    (["--critic-family", "qwen3-vl"], "--preset mini has its trained Qwen2.5-VL critic only; drop --critic-family"),
])
def test_mini_refuses_a_critic_it_cannot_bring(extra, said, mug_image, tmp_path, capsys, no_model_loads):
    code, err = _run(["generate", mug_image, "--prompt", PROMPT, "--preset", "mini", *extra, "--out", tmp_path / "m.glb"],
                     capsys)
    assert code == 2 and said in err, err
    assert not list(tmp_path.iterdir())


def test_a_damaged_mini_cache_folder_is_named_with_how_to_rebuild_it(tmp_path, monkeypatch):
    from vlm3d_ttg.models import offline_cache_folder, rebuild_advice

    monkeypatch.setenv("VLM3D_TTG_CACHE", str(tmp_path))
    folder = tmp_path / "mini-0123456789ab" / "critic"
    folder.mkdir(parents=True)
    assert offline_cache_folder(folder / "model.safetensors") == folder
    assert "--preset real / tiny / realsize / mini" not in rebuild_advice(folder)  # 'real' writes nothing offline
    assert f"delete the folder '{folder}'" in rebuild_advice(folder) and "mini" in rebuild_advice(folder)
    assert get_preset("mini").defaults_text().startswith("--octree-resolution 64")


def test_score_with_the_mini_preset_uses_its_view_defaults_unless_given(mini_run, tmp_path, capsys, monkeypatch):
    code, out = mini_run
    assert code == 0
    monkeypatch.setenv("VLM3D_TTG_CACHE", str(out.parent / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["score", str(out), "--prompt", PROMPT, "--preset", "mini", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and (report["num_views"], report["image_size"]) == (4, [112, 112])  # not 4 x 448 (prompt too long)
    assert np.isfinite(report["results"][0]["r"])
    code = main(["score", str(out), "--prompt", PROMPT, "--preset", "mini", "--views", "2", "--view-size", "56", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and (report["num_views"], report["image_size"]) == (2, [56, 56])  # the user's values win
