"""Text-to-3D: `generate` without an image makes one from the prompt (tiny HunyuanDiT + tiny background
remover, through the real loaders), saves it next to the outputs and records it in the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from vlm3d_ttg.cli import main

# A short unguided run: guidance is tested elsewhere; here the front end is what is new.
FAST = ["--steps", "3", "--views", "2", "--view-size", "56", "--grid", "32", "--octree-resolution", "48", "--quiet"]


@pytest.fixture()
def cache_env(tiny_cache, monkeypatch):
    monkeypatch.setenv("VLM3D_TTG_CACHE", str(tiny_cache))


@pytest.fixture(scope="module")
def tiny_text_to_image(tiny_cache):
    from vlm3d_ttg.tiny import ensure_tiny_text_to_image

    return ensure_tiny_text_to_image(tiny_cache)


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_prompt_alone_makes_the_input_image_saves_and_records_it(tmp_path, cache_env, capsys):
    out = tmp_path / "chair.glb"
    code, stdout, stderr = run_cli(["generate", "--prompt", "a wooden chair", "--preset", "tiny", "--out", out,
                                    "--no-guidance", *FAST], capsys)
    assert code == 0, stderr
    assert len(trimesh.load(out, force="mesh").faces) > 0
    saved = out.with_name("chair.glb.input.png")
    image = Image.open(saved)
    # Background removed: RGBA, with both a transparent background and an opaque object.
    assert image.mode == "RGBA" and image.size == (1024, 1024)
    alpha = np.asarray(image.getchannel("A"))
    assert alpha[0, 0] == 0 and alpha[512, 512] > 250
    assert 0.1 < (alpha > 127).mean() < 0.9
    manifest = json.loads(out.with_name("chair.glb.json").read_text())
    assert manifest["image"] == str(saved)
    record = manifest["input_image"]
    assert record["generated"] is True and record["path"] == str(saved) and record["seed"] == 0
    assert Path(record["text_to_image_model"]).name == "hunyuan_dit"
    assert manifest["outputs"]["input_image"] == str(saved)
    assert "chair.glb.input.png" in stdout
    assert not [p for p in tmp_path.rglob(".*")]  # staged: no temp files left


def test_recipe_is_hy3dgens(tiny_text_to_image):
    """The HunyuanDiT recipe here is hy3dgen's: same pipeline class (PAG), PAG layers, prompt suffix, negative prompt."""
    from hy3dgen.text2image import HunyuanDiTPipeline

    from vlm3d_ttg import text2image

    theirs = HunyuanDiTPipeline(model_path=str(tiny_text_to_image.model), device="cpu")
    ours = text2image.TextToImage.load(str(tiny_text_to_image.model), device="cpu",
                                       remover_home=tiny_text_to_image.rembg_home)
    assert ours.hunyuan and text2image.is_hunyuan_dit(str(tiny_text_to_image.model))
    assert type(ours.pipeline) is type(theirs.pipe)
    assert ours.pipeline.pag_applied_layers == theirs.pipe.pag_applied_layers
    assert text2image.HUNYUAN_STYLE_SUFFIX == theirs.pos_txt
    assert text2image.HUNYUAN_NEGATIVE_PROMPT == theirs.neg_txt


def test_missing_text_to_image_model_is_a_clear_error_before_any_model_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "no-u2net"))
    monkeypatch.setenv("REMBG_HOME", str(tmp_path / "no-rembg"))
    out = tmp_path / "chair.glb"
    code, _, stderr = run_cli(["generate", "--prompt", "a chair", "--out", out, "--device", "cpu",
                               "--text-to-image", tmp_path / "no-such-model"], capsys)
    assert code == 2
    assert "no-such-model" in stderr and "--text-to-image" in stderr and "background-removal model" in stderr
    assert "--preset tiny" in stderr and stderr.count("error:") == 1
    assert not list(tmp_path.glob("chair*"))


def test_text_to_image_option_with_the_tiny_preset_is_refused(tmp_path, capsys):
    code, _, stderr = run_cli(["generate", "--prompt", "a chair", "--preset", "tiny", "--out", tmp_path / "c.glb",
                               "--text-to-image", "some/model"], capsys)
    assert code == 2 and "--text-to-image" in stderr and "--preset tiny" in stderr


def test_missing_shape_model_is_reported_before_text_to_image_runs(tmp_path, capsys, monkeypatch):
    # Text-to-image is "available" (a model index and a remover file exist, neither loadable), the
    # shape model is not: the shape model's error must come first, so no image is made in vain.
    folder = tmp_path / "t2i"
    folder.mkdir()
    (folder / "model_index.json").write_text('{"_class_name": "HunyuanDiTPipeline"}')
    from vlm3d_ttg.inputs import default_background_removal_session

    (tmp_path / "rembg").mkdir()
    (tmp_path / "rembg" / f"{default_background_removal_session()[0]}.onnx").write_bytes(b"")
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "rembg"))
    monkeypatch.setenv("HY3DGEN_MODELS", str(tmp_path / "no-models"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "chair.glb"
    code, _, stderr = run_cli(["generate", "--prompt", "a chair", "--out", out, "--device", "cpu",
                               "--text-to-image", folder], capsys)
    assert code == 2 and "tencent/Hunyuan3D-2" in stderr and "was not found" in stderr
    assert not list(tmp_path.glob("chair*"))


def test_text_to_image_option_with_an_image_is_refused(tmp_path, capsys):
    image = tmp_path / "object.png"
    Image.new("RGBA", (64, 64), (200, 10, 10, 255)).save(image)
    code, _, stderr = run_cli(["generate", image, "--prompt", "a chair", "--device", "cpu", "--out", tmp_path / "c.glb",
                               "--text-to-image", "some/model"], capsys)
    assert code == 2 and "--text-to-image" in stderr and "IMAGE" in stderr
