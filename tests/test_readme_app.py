"""The README's HTTP API example runs, as written, against a real `vlm3d-ttg app --preset tiny`
(conftest's `server`: small defaults from its command line); only the address is the test
server's instead of the app's default http://127.0.0.1:7860/ (another process may hold that port)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from test_readme import ROOT, python_blocks

DEFAULT_ADDRESS = "http://127.0.0.1:7860/"


def test_the_api_example_gets_a_mesh_its_manifest_and_r(server, tmp_path, monkeypatch, capsys):
    (example,) = [block for block in python_blocks() if block.talks_to_the_app]
    assert DEFAULT_ADDRESS in example.code
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    names: dict = {"__name__": "__readme__"}
    exec(compile(example.code.replace(DEFAULT_ADDRESS, server.url), f"README.md:{example.line}", "exec"), names)  # noqa: S102
    mesh, manifest, final_r = names["mesh"], names["manifest"], names["final_r"]
    assert Path(mesh).stat().st_size > 1000 and math.isfinite(final_r)
    content = json.loads(Path(manifest).read_text())
    assert content["final_r"] == pytest.approx(final_r) and content["prompt"] == "a small toy robot with a round head"
    assert str(final_r) in capsys.readouterr().out  # what the example prints
