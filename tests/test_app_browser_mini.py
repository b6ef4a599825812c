"""The app on the trained miniature world (`vlm3d-ttg app --preset mini`, issue 27 item 3), in a real browser:
the page opens with the demo's example (the mini mug, its description and seed) and the unguided baseline ticked;
one click on Generate shows the guided and the unguided mesh side by side in two 3D viewers, their final r, and
the contact sheet of both from the same cameras.

Small runs for speed (--steps 6 and a 48³ export grid, given on the command line, win over the example's options). Headless Chromium as in
tests/test_app_browser.py (skips without it, unless VLM3D_TTG_REQUIRE_BROWSER=1).
`VLM3D_TTG_UPDATE_SCREENSHOT=1` also writes the finished page to docs/app_mini.png.
"""

from __future__ import annotations

import io
import json
import os
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from app_server import ROOT, serve
from test_app_browser import _canvas_drawn, _css, _open, _status, _wait, _wait_for_end, browser  # noqa: F401

SERVER_ARGS = ["--preset", "mini", "--steps", "6", "--octree-resolution", "48"]
RUN_TIMEOUT = 400  # seconds for the two small mini runs seen from the page (well under a minute on 2 idle cores)

pytest.importorskip("gradio_client", reason="the app's tests need the [app] extra: pip install -e '.[app]'")


@pytest.fixture(scope="module")
def mini_server(tmp_path_factory, tiny_cache):
    yield from serve(tmp_path_factory.mktemp("app-mini"), tiny_cache, SERVER_ARGS)


def _image_of(driver, selector: str):
    """The picture an <img> of the page shows, fetched from the server."""
    source = _css(driver, selector)[0].get_attribute("src")
    with urllib.request.urlopen(source, timeout=10) as response:
        return Image.open(io.BytesIO(response.read())).convert("RGB")


def test_the_mini_page_opens_with_the_example_and_shows_unguided_beside_guided(mini_server, browser):
    from vlm3d_ttg.miniworld.example import MINI_EXAMPLE

    _open(browser, mini_server)
    # What a newcomer sees before touching anything: what the mini world is, the example, the baseline ticked.
    assert "not a general 3D generator" in browser.find_element("tag name", "body").text
    _wait(lambda: _css(browser, "#input-image img"), 30, "the example picture")
    example = np.asarray(_image_of(browser, "#input-image img"))
    assert example.shape[:2] == MINI_EXAMPLE.picture().size[::-1]
    assert _css(browser, "#description textarea")[0].get_attribute("value") == MINI_EXAMPLE.prompt
    assert _css(browser, "#baseline input[type=checkbox]")[0].is_selected()
    _css(browser, "#run")[0].click()
    assert _wait_for_end(browser, RUN_TIMEOUT).startswith("Done"), _status(browser)
    # Both meshes, each in its own labelled 3D viewer, drawn.
    body = browser.find_element("tag name", "body").text
    assert "guided mesh" in body and "unguided baseline (same seed)" in body
    for viewer in ("#guided-mesh", "#baseline-mesh"):
        _wait(lambda: _canvas_drawn(browser, viewer) > 0.02, 60, f"the 3D viewer {viewer} to draw its mesh")
    # Their final r, as the manifests say.
    guided_r, baseline_r = (float(_css(browser, f"#final-r-{k}")[0].text) for k in ("guided", "baseline"))
    links = [a.get_attribute("href") for a in _css(browser, "#downloads a")]
    manifests = {}
    for link in links:
        name = link.split("?")[0].rsplit("/", 1)[-1]
        if name.endswith(".json"):
            with urllib.request.urlopen(link, timeout=10) as response:
                manifests[name] = json.loads(response.read())
    assert set(manifests) == {"guided.glb.json", "guided.unguided.glb.json"}, links
    guided, unguided = manifests["guided.glb.json"], manifests["guided.unguided.glb.json"]
    assert guided_r == round(guided["final_r"], 4) and baseline_r == round(unguided["final_r"], 4)
    assert guided["prompt"] == unguided["prompt"] == MINI_EXAMPLE.prompt
    assert guided["seed"] == unguided["seed"] == MINI_EXAMPLE.seed
    assert guided["guidance"]["enabled"] and not unguided["guidance"]["enabled"]
    assert guided["models"]["preset"] == "mini"
    # The example's steps are the page's default, but an option given on the command line wins over it.
    assert guided["options"]["steps"] == unguided["options"]["steps"] == 6 != MINI_EXAMPLE.options["steps"]
    # The contact sheet of both: two rows of the critic's 4 views, larger than its 112 px.
    _wait(lambda: _css(browser, "#compare-sheet img"), 30, "the compare sheet")
    sheet = _image_of(browser, "#compare-sheet img")
    assert sheet.size[0] > 4 * 200 and sheet.size[1] > 2 * 200, sheet.size
    assert any(link.split("?")[0].endswith("guided.glb.compare.png") for link in links), links
    if os.environ.get("VLM3D_TTG_UPDATE_SCREENSHOT"):
        size = browser.get_window_size()
        browser.set_window_size(1400, 1700)  # tall enough for the sheet under the viewers
        browser.execute_script("window.scrollTo(0, 0)")
        time.sleep(2.0)
        shot = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
        shot.quantize(256).save(ROOT / "docs" / "app_mini.png", optimize=True)  # a palette keeps the repository small
        browser.set_window_size(size["width"], size["height"])
