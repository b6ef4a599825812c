"""The tiny app server the app's tests share: `vlm3d-ttg app` in a subprocess on a free localhost port.

A helper module, not a test module: conftest's `server` fixture and the browser tests import it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVER_ARGS = ["--steps", "4", "--views", "2", "--view-size", "56", "--grid", "32", "--octree-resolution", "64"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running `vlm3d-ttg app` process."""

    def __init__(self, url: str, runs: Path, process: subprocess.Popen, log: Path):
        self.url, self.runs, self.process, self.log = url, runs, process, log

    def run_folders(self) -> list[Path]:
        return sorted(p for p in self.runs.iterdir() if p.is_dir()) if self.runs.is_dir() else []

    def record(self, folder: Path) -> dict:
        return json.loads((folder / "run.json").read_text())


# What the app prints when its port was taken between _free_port() and its own bind: by another xdist worker's
# server, say (`make test` runs the app's test files in parallel); the start is then retried on a new port.
PORT_TAKEN = ("it is in use", "Cannot find empty port")


def serve(base: Path, cache: Path, args: list[str]):
    """Start `vlm3d-ttg app ARGS` on a free localhost port with its runs and Gradio's files under `base`; yield
    the Server once it answers, stop it afterwards."""
    env = {**os.environ, "VLM3D_TTG_CACHE": str(cache), "GRADIO_TEMP_DIR": str(base / "gradio"),
           "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    log = base / "server.log"
    runs = base / "runs"
    for attempt in range(3):
        port = _free_port()
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "vlm3d_ttg.cli", "app", *args, "--port", str(port), "--runs-dir", str(runs)],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=base)
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 240
        while process.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                pytest.fail(f"the app did not answer within 240 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        if process.poll() is None:
            break
        output = log.read_text()
        if attempt == 2 or not any(taken in output for taken in PORT_TAKEN):
            pytest.fail(f"the app exited with {process.returncode}:\n{output[-3000:]}")
    try:
        yield Server(url, runs, process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
