"""Shared fixtures: tiny offline checkpoints written once per test session into a temp dir."""

from __future__ import annotations

import logging
import os
import sys

import pytest

# Under pytest-xdist (`make test` runs one worker per core) each worker gets its share of the cores for torch's
# (and BLAS's) thread pools, or N workers × N threads oversubscribe the machine. Set before any test module imports
# torch; the CLI and app subprocesses the tests start inherit the variables. An explicit setting is kept.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = str(max(1, len(os.sched_getaffinity(0)) // _WORKERS))
    for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
        os.environ.setdefault(_variable, _THREADS)
    if "torch" in sys.modules:  # a plugin imported it first: its pool has been sized already
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# Tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
logging.getLogger("hy3dgen.shapgen").setLevel(logging.WARNING)


@pytest.fixture(scope="session", autouse=True)
def _system_temp_folder_inside_pytests(tmp_path_factory):
    """Point the system temp folder (tempfile's, and TMPDIR for the processes the tests start) into pytest's
    own: gradio_client leaves an empty folder there per download and Chromium (--disable-dev-shm-usage) one
    per start, in the machine's /tmp otherwise; here they go with pytest's folder."""
    import tempfile

    folder = str(tmp_path_factory.mktemp("system-temp"))
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = folder, folder
    try:
        yield folder
    finally:
        if saved[0] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[0]
        tempfile.tempdir = saved[1]


# Test files that share a session fixture too costly to build twice: under `make test` (--dist loadfile) each
# file is one unit of work for one xdist worker, and a file named here joins its partner's unit, so the fixture is
# built once. conftest's `server` (the tiny app, ~5-10 s a start): the browser tests and the README's API example.
SAME_WORKER_AS = {"tests/test_readme_app.py": "tests/test_app_browser.py"}


@pytest.hookimpl(optionalhook=True)  # an xdist hook: without the plugin (`-p no:xdist`) it is never called
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile`, with the files of SAME_WORKER_AS in one unit; other modes are xdist's own."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class LoadFileSharingFixtures(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return SAME_WORKER_AS.get(scope, scope)

    return LoadFileSharingFixtures(config, log)


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
    once for every module that uses it (each start costs ~5-10 s; under xdist, SAME_WORKER_AS keeps those modules
    in one worker); their tests only add runs and read their own."""
    pytest.importorskip("gradio_client", reason="the app's tests need the [app] extra: pip install -e '.[app]'")
    from app_server import SERVER_ARGS, serve

    yield from serve(tmp_path_factory.mktemp("app"), tiny_cache, ["--preset", "tiny", *SERVER_ARGS])
