"""Multi-view input for the -mv variants: `generate FRONT --left L --back B --right R` end to end on the
tiny hunyuan3d-2mv (its tiny checkpoint in hy3dgen's real format, through the same loader), recorded in
the manifest; refused before any model loads for a single-view model or a bad view."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vlm3d_ttg.cli import main

FAST = ["--steps", "4", "--views", "1", "--view-size", "56", "--grid", "32", "--octree-resolution", "32",
        "--sigma-window", "0.1,0.9", "--every", "2", "--quiet"]


def blob(path, squash: float) -> str:
    yy, xx = np.mgrid[:96, :96]
    rgba = np.zeros((96, 96, 4), np.uint8)
    rgba[(xx - 48) ** 2 + ((yy - 48) * squash) ** 2 < 30**2] = (90, 140, 200, 255)
    Image.fromarray(rgba, "RGBA").save(path)
    return str(path)


def test_generate_multiview_tiny_end_to_end(tmp_path, tiny_cache, tiny_vlm_path, monkeypatch, capsys):
    monkeypatch.setenv("VLM3D_TTG_CACHE", str(tiny_cache))
    front, left, back = (blob(tmp_path / f"{name}.png", squash) for name, squash in
                         (("front", 1.3), ("left", 0.8), ("back", 1.2)))
    out = tmp_path / "mv.glb"
    code = main(["generate", front, "--left", left, "--back", back, "--prompt", "a blue vase", "--preset", "tiny",
                 "--shape-model", "hunyuan3d-2mv", "--critic-reference", "--out", str(out), *FAST])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads(out.with_name(out.name + ".json").read_text())
    assert manifest["image"] == front and manifest["views"] == {"left": left, "back": back}
    assert manifest["conditioned_on"] == ["front", "left", "back"]
    assert "hunyuan3d-dit-v2-mv" in manifest["models"]["shape"] and manifest["models"]["backbone"] == "hunyuan3d-2"
    guided = [r for r in manifest["records"] if r["guided"]]
    assert guided and all(r["skipped"] is None and r["applied_norm"] > 0 for r in guided)
    assert manifest["faces"] > 0 and out.is_file()


@pytest.mark.parametrize("extra,message", [
    (["--left", "{left}"], "--left: 'tencent/Hunyuan3D-2' takes one image"),
    (["--back", "{left}", "--preset", "tiny"], "Extra views need a multi-view model"),
    (["--shape-model", "hunyuan3d-2mv", "--preset", "tiny"], "at least one of --left, --back, --right"),
    (["--shape-model", "hunyuan3d-2mv", "--preset", "tiny", "--right", "{text}"], "--right"),
    (["--shape-model", "hunyuan3d-2mv", "--preset", "tiny", "--back", "{front}"], "must be different files"),
])
def test_views_are_checked_before_any_model_loads(extra, message, tmp_path, monkeypatch, capsys):
    import vlm3d_ttg.generation as generation

    def must_not_load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(generation, "load_models", must_not_load)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    values = dict(front=blob(tmp_path / "front.png", 1.3), left=blob(tmp_path / "left.png", 0.8), text=text)
    code = main(["generate", values["front"], "--prompt", "x", "--out", str(tmp_path / "m.glb"),
                 *[a.format(**values) for a in extra]])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Traceback" not in err
