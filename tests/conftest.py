"""Shared fixtures: tiny offline checkpoints written once per test session into a temp dir."""

from __future__ import annotations

import logging
import os

import pytest

# Tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
logging.getLogger("hy3dgen.shapgen").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """A fresh cache root for this session's tiny checkpoints (hermetic: no ~/.cache)."""
    return tmp_path_factory.mktemp("vlm3d_cache")


@pytest.fixture(scope="session")
def tiny_shape_ref(tiny_cache):
    from vlm3d_ttg.tiny import ensure_tiny_shape_model

    return ensure_tiny_shape_model(tiny_cache)


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_shape_ref):
    """The tiny Hunyuan3D-2 pipeline, loaded by the same function as the real model (fp32, CPU)."""
    from vlm3d_ttg import load_shape_pipeline

    return load_shape_pipeline(
        tiny_shape_ref.repo_id, tiny_shape_ref.subfolder, models_dir=tiny_shape_ref.models_dir, device="cpu"
    )


@pytest.fixture(scope="session")
def tiny_vlm_path(tiny_cache):
    from vlm3d_ttg.tiny import ensure_tiny_vlm

    return ensure_tiny_vlm(tiny_cache)


@pytest.fixture(scope="session")
def tiny_vlm(tiny_vlm_path):
    """(model, processor) of the tiny Qwen2.5-VL, loaded by `load_vlm` (fp32, CPU)."""
    from vlm3d_ttg import load_vlm

    return load_vlm(tiny_vlm_path, device="cpu")


@pytest.fixture(scope="session")
def session_tiny_judge_path(tiny_cache):
    """The tiny Gemma-3 judge folder, written once per session (several test modules load it)."""
    from vlm3d_ttg.tiny.metric_models import write_tiny_judge

    return write_tiny_judge(tiny_cache / "judge", seed=0)


@pytest.fixture(scope="session")
def rgba_image(tmp_path_factory):
    """A 96² RGBA picture of one orange ellipse on transparency: a valid condition image."""
    import numpy as np
    from PIL import Image

    size = 96
    yy, xx = np.mgrid[:size, :size]
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[(xx - 48) ** 2 + ((yy - 48) * 1.2) ** 2 < 900] = (180, 90, 40, 255)
    path = tmp_path_factory.mktemp("img") / "object.png"
    Image.fromarray(rgba, "RGBA").save(path)
    return path


@pytest.fixture()
def no_model_loads(monkeypatch):
    """Every model loader raises: a refusal "before any model loads" must not reach one."""
    import vlm3d_ttg.generation as generation
    import vlm3d_ttg.backbones.hunyuan3d2_models as hunyuan3d2_models
    import vlm3d_ttg.models as models
    import vlm3d_ttg.text2image as text2image
    import vlm3d_ttg.tiny as tiny

    def loaded(*args, **kwargs):
        raise AssertionError("a model loaded (or a checkpoint was written) before the refusal")

    for module, name in ((generation, "load_models"), (generation, "load_vlm"),
                         (hunyuan3d2_models, "load_shape_pipeline"), (models, "load_vlm"), (text2image, "make_input_image"),
                         (tiny, "ensure_tiny_shape_model"), (tiny, "ensure_tiny_vlm")):
        monkeypatch.setattr(module, name, loaded)


@pytest.fixture(scope="session")
def server(tmp_path_factory, tiny_cache):
    """`vlm3d-ttg app --preset tiny` with small defaults (app_server.SERVER_ARGS) on a free localhost port, started
    once for every module that uses it (each start costs ~5-10 s); their tests only add runs and read their own."""
    pytest.importorskip("gradio_client", reason="the app's tests need the [app] extra: pip install -e '.[app]'")
    from app_server import SERVER_ARGS, serve

    yield from serve(tmp_path_factory.mktemp("app"), tiny_cache, ["--preset", "tiny", *SERVER_ARGS])
