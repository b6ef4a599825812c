"""`vlm3d-ttg generate` end to end on the tiny preset; skipped steps; bad input before any model loads."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
import trimesh
from PIL import Image

from vlm3d_ttg.cli import main
from vlm3d_ttg.guidance import GuidanceConfig
from vlm3d_ttg.sampler import GuidedSampler

FAST = ["--steps", "8", "--views", "2", "--view-size", "56", "--grid", "32", "--octree-resolution", "48",
        "--sigma-window", "0.1,0.9", "--every", "2", "--quiet"]


@pytest.fixture()
def cache_env(tiny_cache, monkeypatch):
    monkeypatch.setenv("VLM3D_TTG_CACHE", str(tiny_cache))


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_tiny_end_to_end(rgba_image, tmp_path, cache_env, capsys):
    out = tmp_path / "run" / "mesh.glb"
    views = tmp_path / "run" / "views"
    code, stdout, stderr = run_cli(
        ["generate", rgba_image, "--prompt", "a small clay pot", "--preset", "tiny", "--out", out,
         "--save-views", views, "--plot", "--seed", "3", *FAST], capsys)
    assert code == 0, stderr
    mesh = trimesh.load(out, force="mesh")
    assert len(mesh.faces) > 0
    manifest = json.loads(out.with_name(out.name + ".json").read_text())
    records = manifest["records"]
    assert len(records) == 8
    guided = [r for r in records if r["guided"]]
    assert guided and all(r["r"] is not None and r["grad_norm"] > 0 for r in guided)
    assert all(r["applied_norm"] > 0 and not r["skipped"] for r in guided)
    assert manifest["final_r"] is not None and manifest["seed"] == 3
    assert manifest["versions"]["hy3dgen"] == "2.0.2"
    sheets = sorted(p.name for p in views.iterdir())
    assert "final.png" in sheets and len(sheets) >= 2
    assert Image.open(views / "final.png").size[0] > 56
    assert (tmp_path / "run" / "mesh.glb.r.png").is_file()
    assert "final r" in stdout
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    # No temp files left behind.
    assert not [p for p in (tmp_path / "run").rglob(".*")]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_no_guidance_baseline_matches_unguided_latents_and_is_scored(rgba_image, tmp_path, cache_env, capsys,
                                                                     tiny_pipeline, tiny_vlm):
    """--no-guidance writes hy3dgen's own mesh for the same image, seed and settings, and its final_r is
    the critic's score of that mesh."""
    from vlm3d_ttg.critic import VLMCritic
    from vlm3d_ttg.inputs import prepare_condition_image
    from vlm3d_ttg.reward import VLMReward

    out = tmp_path / "base.glb"
    code, _, stderr = run_cli(["generate", rgba_image, "--prompt", "a pot", "--preset", "tiny", "--out", out,
                               "--no-guidance", *FAST], capsys)
    assert code == 0, stderr
    manifest = json.loads(out.with_name(out.name + ".json").read_text())
    assert not any(r["guided"] for r in manifest["records"])
    ours = trimesh.load(out, force="mesh", process=False)
    # hy3dgen's own pipeline call with the run's seed, steps, CFG and export grid.
    (theirs,) = tiny_pipeline(image=prepare_condition_image(rgba_image), num_inference_steps=8, guidance_scale=5.0,
                              generator=torch.Generator().manual_seed(0), octree_resolution=48, output_type="trimesh",
                              enable_pbar=False)
    assert len(theirs.faces) > 0 and ours.faces.shape == theirs.faces.shape
    assert (ours.faces == theirs.faces).all()
    assert abs(ours.vertices - theirs.vertices).max() < 1e-5  # float32 in the GLB
    # The baseline is scored by the same critic: final_r is its score of the mesh written.
    guidance = GuidanceConfig(**{**manifest["guidance"], "sigma_window": tuple(manifest["guidance"]["sigma_window"])})
    with torch.no_grad():
        scored = VLMReward(tiny_pipeline, VLMCritic(*tiny_vlm, "a pot"), guidance).score_mesh(ours.vertices, ours.faces)
    assert abs(float(scored.r) - manifest["final_r"]) < 1e-4


BAD_INPUTS = [
    (["generate", "{missing}", "--prompt", "x", "--preset", "tiny", "--out", "{out}"], "does not exist"),
    (["generate", "{image}", "--prompt", "   ", "--preset", "tiny", "--out", "{out}"], "--prompt is empty"),
    (["generate", "{image}", "--prompt", "x", "--preset", "tiny", "--out", "{dir}/mesh.xyz"], "Unsupported mesh format"),
    (["generate", "{image}", "--prompt", "x", "--preset", "tiny", "--out", "{dir}"], "is a directory"),
    (["generate", "{image}", "--prompt", "x", "--preset", "tiny", "--out", "{out}", "--scale", "-1"], "scale"),
    (["generate", "{image}", "--prompt", "x", "--preset", "tiny", "--out", "{out}", "--view-size", "100"], "multiple of 28"),
    (["generate", "{image}", "--prompt", "x", "--preset", "tiny", "--out", "{out}", "--sigma-window", "0.9"], "sigma-window"),
    (["generate", "{image}", "--prompt", "x", "--preset", "tiny", "--out", "{out}", "--grad-mode", "exact"], "grad_mode"),
    (["generate", "{image}", "--prompt", "x", "--preset", "tiny", "--out", "{out}", "--steps", "1"], "--steps"),
    (["generate", "{noalpha}", "--prompt", "x", "--preset", "tiny", "--out", "{out}"], "no transparent background"),
    (["generate", "{text}", "--prompt", "x", "--preset", "tiny", "--out", "{out}"], "Cannot read"),
    (["generate", "{image}", "--prompt", "x", "--preset", "tiny", "--out", "{text}/mesh.glb"], "not a folder"),
    (["generate", "{image}", "--prompt", "x", "--preset", "tiny", "--out", "{out}", "--save-views", "{text}"],
     "not a folder"),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS)
def test_bad_input_is_one_clear_message_and_no_output(args, message, rgba_image, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "no-u2net"))
    monkeypatch.setenv("REMBG_HOME", str(tmp_path / "no-rembg"))
    noalpha = tmp_path / "rgb.jpg"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(noalpha)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    out = tmp_path / "mesh.glb"
    values = dict(missing=tmp_path / "nope.png", image=rgba_image, out=out, dir=tmp_path, noalpha=noalpha, text=text)
    filled = [a.format(**values) for a in args]
    code, stdout, stderr = run_cli(filled, capsys)
    assert code != 0
    assert message in stderr
    assert stderr.count("error:") == 1 and "Traceback" not in stderr
    assert not out.exists() and not out.with_name(out.name + ".json").exists()


def test_missing_real_model_is_a_clear_error_with_nonzero_exit(rgba_image, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    # Empty model folders: hy3dgen's ($HY3DGEN_MODELS, read at load time) and the hub cache.
    monkeypatch.setenv("HY3DGEN_MODELS", str(tmp_path / "models"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    out = tmp_path / "mesh.glb"
    code, _, stderr = run_cli(["generate", rgba_image, "--prompt", "x", "--out", out, "--device", "cpu"], capsys)
    assert code == 2, stderr
    assert "tencent/Hunyuan3D-2" in stderr and "huggingface-cli download" in stderr
    assert "Traceback" not in stderr
    assert not out.exists() and not list(tmp_path.glob("mesh*"))


class _NaNGradientOnce:
    """Wraps the real reward; at one call, adds a term whose gradient is NaN (r stays finite)."""

    def __init__(self, reward, bad_call: int):
        self.reward, self.bad_call, self.calls = reward, bad_call, 0

    def __call__(self, latent, *, generator=None):
        evaluation = self.reward(latent, generator=generator)
        self.calls += 1
        if self.calls == self.bad_call:
            # d/dx sqrt(|0·x|) = 0·inf = NaN, while the value added is exactly 0.
            evaluation.r = evaluation.r + (latent.sum() * 0.0).abs().sqrt()
        return evaluation

    # The rest of guidance.LatentReward: the wrapped reward's.
    def score_latent(self, latent):
        return self.reward.score_latent(latent)

    def score_mesh(self, vertices, faces):
        return self.reward.score_mesh(vertices, faces)

    def offload_modules(self):
        return self.reward.offload_modules()

    @property
    def half_backward(self):
        return self.reward.half_backward


def test_empty_surface_and_non_finite_gradient_steps_are_skipped_and_recorded(tiny_pipeline, tiny_vlm):
    from vlm3d_ttg.critic import VLMCritic
    from vlm3d_ttg.reward import VLMReward

    config = GuidanceConfig(num_views=2, view_size=56, grid_resolution=32, sigma_window=(0.1, 0.9), every=1)
    reward = VLMReward.from_config(tiny_pipeline, VLMCritic(*tiny_vlm, "a pot"), config)
    wrapped = _NaNGradientOnce(reward, bad_call=2)
    normal_surface = reward.surface_config

    def callback(sampler, step, sigma, state):
        # Before the 4th guided step, ask for the level set at a logit no point reaches: the real
        # surface extractor then finds no surface. Restore it afterwards.
        reward.surface_config = dataclasses.replace(normal_surface, level=1e6) if step == 3 else normal_surface

    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    image.paste((200, 100, 50, 255), (16, 16, 48, 48))
    output = GuidedSampler(tiny_pipeline, wrapped, config)(
        image, num_inference_steps=8, seed=0, octree_resolution=32, callback_on_step_end=callback, progress=False)
    by_step = {r.step: r for r in output.records}
    guided = [r for r in output.records if r.guided]
    assert [r.step for r in guided] == [1, 2, 3, 4, 5, 6]
    assert by_step[2].skipped == "non_finite_gradient" and by_step[2].applied_norm is None
    assert by_step[4].skipped == "empty_surface" and by_step[4].r is None
    assert all(r.skipped is None and r.applied_norm > 0 for r in guided if r.step not in (2, 4))
    assert output.mesh is not None and len(output.mesh.faces) > 0
    assert torch.isfinite(output.latents).all()


def test_usage_errors_exit_2_with_typers_message(capsys):
    code, _, stderr = run_cli(["generate", "img.png", "--out", "x.glb"], capsys)
    assert code == 2
    assert "Missing option" in stderr and "--prompt" in stderr


def test_main_registers_each_command_once_however_often_it_is_called(capsys):
    """`main()` called again in one process (scripts, notebooks, these tests) keeps one copy of each
    command: a copy per call made every later call rebuild all earlier ones (seconds each after hundreds)."""
    from vlm3d_ttg.cli import app

    for _ in range(3):
        assert main(["--version"]) == 0
    names = [info.name for info in app.registered_commands]
    assert sorted(names) == ["app", "batch", "generate", "judge", "score"], names
