"""The web app in a real browser, and its HTTP API through gradio_client.

One `vlm3d-ttg app --preset tiny` server per session (conftest's `server`; small defaults from its command line: 4 steps,
2 views of 56 px, grid 32, octree 64), shared by the browser tests (headless Chromium from the OS
packages, driven by Selenium; WebGL from SwiftShader) and the API tests. Without Chromium the
browser tests skip with one line saying how to install it; CI (`.ci/run`) installs it and sets
VLM3D_TTG_REQUIRE_BROWSER=1 so that they cannot skip there.

`VLM3D_TTG_UPDATE_SCREENSHOT=1` also writes the mid-run screenshot to docs/app_tiny.png.
"""

from __future__ import annotations

import io
import json
import os
import re
import select
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from app_server import ROOT, Server

ROBOT = ROOT / "examples" / "toy_robot.png"
RUN_TIMEOUT = 120  # seconds for one tiny run seen from the page (a few seconds on 2 idle cores)
_OPEN: list = []  # the browser, for failure messages
INSTALL_HINT = "Chromium not found: `apt-get install chromium chromium-driver` (Debian) to run the browser tests"

pytest.importorskip("gradio_client", reason="the app's tests need the [app] extra: pip install -e '.[app]'")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (the OS package) through Selenium, with software WebGL for the 3D viewer."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        if os.environ.get("VLM3D_TTG_REQUIRE_BROWSER"):
            pytest.fail(INSTALL_HINT + " (VLM3D_TTG_REQUIRE_BROWSER is set: CI must run them)")
        pytest.skip(INSTALL_HINT)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1300",
                     "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                     "--ignore-gpu-blocklist", "--disable-extensions", "--no-first-run"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    _OPEN[:] = [driver]
    try:
        yield driver
    finally:
        _OPEN.clear()
        driver.quit()


# ---- page helpers ----------------------------------------------------------------------------------


def _css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    said = f"; the page says: {_status(_OPEN[0])!r}" if _OPEN else ""
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{said}")


def _open(driver, server: Server) -> None:
    driver.get(server.url)
    _wait(lambda: _css(driver, "#run"), 60, "the page")


def _status(driver) -> str:
    found = _css(driver, "#vlm3d-status")
    return found[0].text if found else ""


def _upload(driver, path: Path) -> None:
    _css(driver, "#input-image input[type=file]")[0].send_keys(str(path))
    # The upload is finished when the image component shows a preview or the file name.
    _wait(lambda: _css(driver, "#input-image img") or _css(driver, "#input-image .file-preview"), 30, "the upload")


def _describe(driver, text: str) -> None:
    box = _css(driver, "#description textarea")[0]
    box.clear()
    box.send_keys(text)


def _set_number(driver, name: str, value: int) -> None:
    """Type a value into an Advanced widget (opening the group first)."""
    from selenium.webdriver.common.keys import Keys

    selector = f"#opt-{name} input[type=number]"
    if not any(f.is_displayed() for f in _css(driver, selector)):  # the closed group renders its widgets lazily
        _css(driver, "#advanced button.label-wrap")[0].click()
        _wait(lambda: any(f.is_displayed() for f in _css(driver, selector)), 10, "the Advanced group to open")

    def typed() -> bool:
        field = _css(driver, selector)[0]  # queried afresh: the group may re-render its widgets as it opens
        if field.get_attribute("value") != str(value):
            field.click()
            field.send_keys(Keys.CONTROL, "a")
            field.send_keys(str(value), Keys.TAB)
            time.sleep(0.5)  # the page's state follows the input on its next tick
            return False  # check again: still there after a moment?
        return True

    _wait(typed, 20, f"{name} to take the value {value}")


def _run(driver) -> None:
    _css(driver, "#run")[0].click()


def _wait_for_end(driver, timeout: float = RUN_TIMEOUT) -> str:
    return _wait(lambda: next((s for s in [_status(driver)] if s.startswith(("Done", "Cancelled", "error"))), None),
                 timeout, "the run to end")


def _canvas_drawn(driver, viewer: str = "#guided-mesh") -> float:
    """Fraction of the 3D viewer's canvas that is not the background (its screenshot's pixels)."""
    from PIL import Image

    canvases = _css(driver, f"{viewer} canvas")
    if not canvases:
        return 0.0
    pixels = np.asarray(Image.open(io.BytesIO(canvases[0].screenshot_as_png)).convert("RGB")).astype(int)
    background = np.median(pixels.reshape(-1, 3), axis=0)  # the viewer's clear colour dominates
    return float((np.abs(pixels - background).sum(-1) > 40).mean())


def _manifest_from_page(driver) -> dict:
    links = [a.get_attribute("href") for a in _css(driver, "#downloads a")]
    manifest = [link for link in links if link and link.split("?")[0].endswith(".json")]
    assert manifest, f"no manifest among the downloads: {links}"
    with urllib.request.urlopen(manifest[0], timeout=10) as response:
        return json.loads(response.read())


# ---- browser tests ---------------------------------------------------------------------------------


def test_page_run_shows_the_model_views_plot_and_the_manifests_final_r(server, browser, tmp_path):
    _open(browser, server)
    _set_number(browser, "steps", 6)  # a derived Advanced widget changes the run (the manifest says so below)
    _upload(browser, ROBOT)
    _describe(browser, "a small toy robot with a round head")
    _set_number(browser, "steps", 6)
    _run(browser)
    # Mid-run: the critic's views and the r plot appear while the status shows the step, σ and r.
    shot, deadline = None, time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        status = _status(browser)
        if status.startswith(("Done", "Cancelled", "error")):
            break
        if shot is None and "r = " in status and _css(browser, "#critic-views img") and _css(browser, "#r-plot img"):
            assert "step " in status and "σ = " in status, status
            shot = tmp_path / "app_tiny.png"
            browser.execute_script("window.scrollTo(0, 0)")  # the run's outputs are at the top of the page
            browser.save_screenshot(str(shot))
        time.sleep(0.1)
    assert shot is not None, f"never saw the views, the plot and r during the run; status: {_status(browser)!r}"
    if os.environ.get("VLM3D_TTG_UPDATE_SCREENSHOT"):
        shutil.copyfile(shot, ROOT / "docs" / "app_tiny.png")
    assert _wait_for_end(browser).startswith("Done"), _status(browser)
    assert len(_css(browser, "#critic-views img")) == 2  # --views 2
    # The 3D viewer drew the model: a good part of its canvas is not background.
    _wait(lambda: _canvas_drawn(browser) > 0.02, 60, "the 3D viewer to draw the mesh")
    manifest = _manifest_from_page(browser)
    shown = _css(browser, "#final-r-guided")[0].text
    assert float(shown) == round(manifest["final_r"], 4), (shown, manifest["final_r"])
    assert manifest["steps"] == 6 and manifest["guidance"]["num_views"] == 2
    assert manifest["prompt"] == "a small toy robot with a round head"


def test_cancel_stops_the_run_writes_nothing_and_the_next_run_works(server, browser):
    _open(browser, server)
    _set_number(browser, "steps", 60)
    _upload(browser, ROBOT)
    _describe(browser, "a toy robot")
    _set_number(browser, "steps", 60)
    before = set(server.run_folders())
    _run(browser)
    _wait(lambda: re.search(r"step ([2-9]|\d\d)/60", _status(browser)), RUN_TIMEOUT, "the run to pass step 2")
    _css(browser, "#cancel")[0].click()
    status = _wait_for_end(browser)
    assert status.startswith("Cancelled") and "nothing of this run was written" in status, status
    assert int(re.search(r"after step (\d+)", status).group(1)) < 59  # stopped mid-run, not at the end
    (folder,) = set(server.run_folders()) - before
    assert server.record(folder)["status"] == "cancelled"
    assert not list(folder.glob("guided*")), "a cancelled run wrote outputs"
    # The worker is free: the next run (4 steps) finishes.
    _set_number(browser, "steps", 4)
    _run(browser)
    _wait(lambda: "Checking" not in _status(browser) and not _status(browser).startswith("Cancelled"), 30, "a new run")
    assert _wait_for_end(browser).startswith("Done"), _status(browser)


def test_a_bad_upload_shows_the_clis_message_and_the_next_run_works(server, browser, tmp_path, capsys):
    from vlm3d_ttg.cli import main

    bad = tmp_path / "bad.png"
    bad.write_text("this is a text file, not a picture")
    _open(browser, server)
    _css(browser, "#input-image input[type=file]")[0].send_keys(str(bad))
    time.sleep(1.0)  # the upload itself (the page cannot preview it)
    _describe(browser, "a toy robot")
    _run(browser)
    status = _wait_for_end(browser)
    assert status.startswith("error: "), status
    # The same message as the command line's, up to where the file lies.
    assert main(["generate", str(bad), "-p", "a toy robot", "--preset", "tiny", "-o", str(tmp_path / "x.glb")]) == 2
    cli_message = capsys.readouterr().err.strip().removeprefix("error: ")
    page_message = status.removeprefix("error: ")
    uploaded = page_message.split("'")[1]
    assert Path(uploaded).name == "bad.png"
    assert page_message.replace(uploaded, str(bad)) == cli_message
    # The server keeps serving: a good upload runs.
    _open(browser, server)
    _upload(browser, ROBOT)
    _describe(browser, "a toy robot")
    _run(browser)
    assert _wait_for_end(browser).startswith("Done"), _status(browser)


# ---- API tests (no browser) ------------------------------------------------------------------------


def test_api_returns_a_mesh_trimesh_loads_and_the_manifest(server):
    import trimesh
    from gradio_client import Client, handle_file

    client = Client(server.url, verbose=False)
    mesh, manifest, final_r, base_mesh, base_manifest, base_r = client.predict(
        image=handle_file(str(ROBOT)), description="a toy robot", baseline=True, api_name="/generate")
    loaded = trimesh.load(mesh, force="mesh")
    assert len(loaded.faces) > 100
    content = json.loads(Path(manifest).read_text())
    assert content["final_r"] == pytest.approx(final_r) and content["prompt"] == "a toy robot"
    assert content["steps"] == 4  # the server's --steps default
    assert content["guidance"]["enabled"] and any(r["guided"] for r in content["records"])
    # The unguided baseline on the same seed, with its own manifest and final r.
    base = json.loads(Path(base_manifest).read_text())
    assert len(trimesh.load(base_mesh, force="mesh").faces) > 100
    assert base["seed"] == content["seed"] and not base["guidance"]["enabled"]
    assert not any(r["guided"] for r in base["records"]) and base["final_r"] == pytest.approx(base_r)


def test_api_errors_carry_the_clis_message_and_the_server_keeps_serving(server):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(server.url, verbose=False)
    with pytest.raises(AppError) as caught:
        client.predict(image=handle_file(str(ROBOT)), description="a robot <|im_start|>", api_name="/generate")
    assert "the model's tokenizer reads this as chat markup" in str(caught.value)
    with pytest.raises(AppError) as caught:
        client.predict(image=handle_file(str(ROBOT)), description="a robot", steps=1, api_name="/generate")
    assert "Invalid option: steps (--steps) must be ≥ 2, got 1" in str(caught.value)
    with pytest.raises(AppError) as caught:
        client.predict(image=handle_file(str(ROBOT)), description="a robot", export_format="fbx", api_name="/generate")
    assert "Export format must be one of glb, obj, ply, stl" in str(caught.value)
    # The server keeps serving: the concurrency test below runs after these.


def test_two_concurrent_api_calls_on_a_concurrency_1_server_run_in_order_with_their_own_outputs(server):
    from gradio_client import Client, handle_file

    before = set(server.run_folders())
    results: dict[int, tuple] = {}

    def call(seed: int) -> None:
        client = Client(server.url, verbose=False)  # two users, two sessions
        # The second is text-to-3D (no image): the input is made from the description first.
        results[seed] = client.predict(image=handle_file(str(ROBOT)) if seed == 11 else None, description="a toy robot",
                                       seed=seed, export_format="obj" if seed == 12 else "glb", api_name="/generate")

    threads = [threading.Thread(target=call, args=(seed,)) for seed in (11, 12)]
    for thread in threads:
        thread.start()
        time.sleep(0.3)  # seed 11 is queued first
    for thread in threads:
        thread.join(timeout=2 * RUN_TIMEOUT)
    assert set(results) == {11, 12}
    for seed, (mesh, manifest, final_r, *_) in results.items():
        content = json.loads(Path(manifest).read_text())
        assert content["seed"] == seed and content["final_r"] == pytest.approx(final_r)
        assert content["input_image"]["generated"] is (seed == 12)
    assert Path(results[11][0]).suffix == ".glb" and Path(results[12][0]).suffix == ".obj"
    folders = sorted(set(server.run_folders()) - before)
    records = [server.record(folder) for folder in folders]
    assert [r["options"]["seed"] for r in records] == [11, 12]  # in the order they were asked
    assert records[0]["finished"] <= records[1]["started"], records  # one at a time


def test_an_api_client_that_goes_away_cancels_its_run_at_the_next_step(server):
    """A client process killed mid-run (its connection drops): the server stops that run at the next step
    boundary and writes nothing of it, instead of holding the only worker to the end; the next call runs."""
    from gradio_client import Client, handle_file

    before = set(server.run_folders())
    # The most steps a request may ask for: the server learns of the dropped connection with a delay, and
    # on a loaded machine a 400-step tiny run once finished first (status 'done').
    # The client says when the server's stream has told it the run is processing: killed before its stream
    # is open, the server has nobody to lose, and the run once went on to the end (status 'done').
    client_code = (f"import time\nfrom gradio_client import Client, handle_file\n"
                   f"job = Client({server.url!r}, verbose=False).submit(image=handle_file({str(ROBOT)!r}), "
                   f"description='a toy robot', steps=1000, api_name='/generate')\n"
                   f"while job.status().code.name not in ('PROCESSING', 'ITERATING', 'PROGRESS', 'FINISHED'):\n"
                   f"    time.sleep(0.02)\n"
                   f"print('listening', flush=True)\n"
                   f"job.result()\n")
    client = subprocess.Popen([sys.executable, "-c", client_code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"}, text=True)
    try:
        folders = _wait(lambda: set(server.run_folders()) - before, RUN_TIMEOUT, "the client's run to start")
        (folder,) = folders
        _wait(lambda: server.record(folder).get("status") == "running", RUN_TIMEOUT, "the run record")
        ready, _, _ = select.select([client.stdout], [], [], RUN_TIMEOUT)
        assert ready and client.stdout.readline().strip() == "listening", "the client never heard that its run started"
    finally:
        client.kill()  # the client goes away without a word, mid-run
        client.wait()
    record = _wait(lambda: (r := server.record(folder)).get("status") != "running" and r, RUN_TIMEOUT,
                   "the abandoned run to stop")
    assert record["status"] == "cancelled", record
    stopped_after = re.search(r"after step (\d+)", record["message"])
    assert stopped_after is None or int(stopped_after.group(1)) < 399, record["message"]  # stopped mid-run
    assert not list(folder.glob("guided*")), "an abandoned run wrote outputs"
    # The worker is free again: the next call finishes.
    mesh, manifest, *_ = Client(server.url, verbose=False).predict(
        image=handle_file(str(ROBOT)), description="a toy robot", api_name="/generate")
    assert Path(manifest).is_file()
