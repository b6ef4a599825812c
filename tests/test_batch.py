"""`vlm3d-ttg batch ITEMS.jsonl --out DIR` on the tiny preset: one run per line (image or text-only),
models loaded once, resumable, failures recorded while the rest go on, bad lines refused before any
model loads, and the items split between processes as `accelerate launch` starts them."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vlm3d_ttg.cli import main

# Unguided, 2 steps: what is tested here is the batch around the runs (generate's tests test the runs).
FAST = ["--preset", "tiny", "--steps", "2", "--no-guidance", "--views", "2", "--view-size", "56", "--octree-resolution",
        "32", "--quiet"]


@pytest.fixture()
def cache_env(tiny_cache, monkeypatch):
    monkeypatch.setenv("VLM3D_TTG_CACHE", str(tiny_cache))


@pytest.fixture(autouse=True)
def _fresh_process_state():
    """accelerate's PartialState is a process-wide singleton: each in-process run starts from none."""
    from accelerate import PartialState

    PartialState._reset_state()
    yield
    PartialState._reset_state()


def _write_items(folder: Path, rgba_image: Path, lines: list[dict]) -> Path:
    (folder / "object.png").write_bytes(rgba_image.read_bytes())
    path = folder / "items.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "batch.jsonl").read_text().splitlines()]


def _state(out: Path, ids) -> dict[str, tuple[int, bytes]]:
    return {i: ((out / f"{i}.glb").stat().st_mtime_ns, (out / f"{i}.glb").read_bytes()) for i in ids}


ITEMS = [
    {"id": "pot", "image": "object.png", "prompt": "a clay pot"},
    {"image": "object.png", "prompt": "a small vase", "seed": 4},  # id from its line: item-0002
    {"id": "robot", "prompt": "a toy robot"},  # text-only: the input image is made from the prompt
    # A CFG scale so large that the latents overflow: the final shape is empty, the item fails.
    {"id": "broken", "image": "object.png", "prompt": "a pot", "cfg_scale": 1e30},
]


def test_batch_runs_each_item_records_a_failure_and_a_rerun_redoes_only_what_is_unfinished(
        rgba_image, tmp_path, cache_env, capsys):
    items, out = _write_items(tmp_path, rgba_image, ITEMS), tmp_path / "out"
    code, stdout, stderr = run_cli(["batch", items, "--out", out, *FAST], capsys)
    assert code == 1, stderr  # not every item finished
    done = ["pot", "item-0002", "robot"]
    for item_id, seed in zip(done, (0, 4, 0)):
        manifest = json.loads((out / f"{item_id}.glb.json").read_text())
        assert manifest["outputs"]["mesh"] == str(out / f"{item_id}.glb") and manifest["faces"] > 0
        assert manifest["seed"] == seed and len(manifest["records"]) == 2
    assert json.loads((out / "robot.glb.json").read_text())["input_image"]["generated"] is True
    assert (out / "robot.glb.input.png").is_file() and not (out / "pot.glb.input.png").exists()
    assert not (out / "broken.glb").exists() and (out / "broken.glb.failed.json").is_file()
    records = {r["id"]: r for r in _records(out)}
    assert {i: records[i]["status"] for i in records} == {"pot": "ok", "item-0002": "ok", "robot": "ok", "broken": "empty"}
    assert "final shape is empty" in records["broken"]["error"]
    assert "3 finished (3 this run, 0 earlier), 1 failed" in stdout and "failed    broken (line 4)" in stdout

    # Rerun after a kill: "pot" lost its manifest (written last: the unit never committed) and
    # "item-0002"'s manifest is cut short; "robot" is finished and must not be touched.
    (out / "pot.glb.json").unlink()
    (out / "pot.glb").write_bytes(b"half a mesh")
    manifest = out / "item-0002.glb.json"
    manifest.write_bytes(manifest.read_bytes()[:100])
    before = _state(out, ["robot"])
    code, stdout, stderr = run_cli(["batch", items, "--out", out, *FAST], capsys)
    assert code == 1, stderr
    assert _state(out, ["robot"]) == before
    assert f"skipped   robot (line 3): finished earlier ({out / 'robot.glb.json'})" in stdout
    assert "skipped   pot" not in stdout and "skipped   item-0002" not in stdout
    assert "4 item(s): 3 finished (2 this run, 1 earlier), 1 failed" in stdout, stdout
    assert json.loads((out / "pot.glb.json").read_text())["faces"] > 0
    assert (out / "pot.glb").read_bytes()[:4] == b"glTF"
    assert json.loads(manifest.read_text())["seed"] == 4
    assert [r["id"] for r in _records(out)][4:] == ["pot", "item-0002", "broken"]


def test_bad_lines_are_listed_with_their_numbers_before_any_model_loads(rgba_image, tmp_path, cache_env, capsys,
                                                                         no_model_loads):
    items = _write_items(tmp_path, rgba_image, [
        {"id": "ok", "image": "object.png", "prompt": "a pot"},
        {"id": "OK", "prompt": "a second item of the same id (in another case: one file on some file systems)"},
        {"prompt": "a pot", "view_size": 112},  # not a per-item option
        {"image": "missing.png", "prompt": "a pot"},
        {"prompt": "a pot", "seed": -1},
        {"image": "object.png"},
    ])
    with items.open("a") as handle:
        handle.write("\n{not json\n")
    out = tmp_path / "out"
    code, _, stderr = run_cli(["batch", items, "--out", out, *FAST], capsys)
    assert code == 2
    assert "has 6 bad line(s); nothing was run" in stderr
    lines = dict(re.findall(r"line (\d+): (.*)", stderr))
    assert sorted(map(int, lines)) == [2, 3, 4, 5, 6, 8]
    assert "also line 1's" in lines["2"] and "'view_size' cannot be set per item" in lines["3"]
    assert "does not exist" in lines["4"] and "--seed" in lines["5"] and "no 'prompt'" in lines["6"]
    assert "not JSON" in lines["8"]
    assert not out.exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_split_the_items_disjointly_and_cover_them(rgba_image, tmp_path, tiny_cache):
    """Two processes started with the environment `accelerate launch` gives its workers (RANK,
    WORLD_SIZE, LOCAL_RANK, the rendezvous address): each runs its own share, none twice."""
    ids = ["a", "b", "c"]
    items = _write_items(tmp_path, rgba_image, [{"id": i, "image": "object.png", "prompt": "a pot"} for i in ids])
    out = tmp_path / "out"
    port = str(_free_port())
    repo = Path(__file__).resolve().parents[1]
    workers = []
    for rank in (0, 1):
        env = dict(os.environ, VLM3D_TTG_CACHE=str(tiny_cache), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
                   PYTHONPATH=str(repo), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        workers.append(subprocess.Popen([sys.executable, "-m", "vlm3d_ttg.cli", "batch", str(items), "--out", str(out),
                                         *FAST, "--device", "cpu"], env=env, cwd=tmp_path, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outputs = []
    for worker in workers:
        try:
            outputs.append(worker.communicate(timeout=300)[0])
        finally:
            worker.kill()
    assert [w.returncode for w in workers] == [0, 0], outputs
    by_process = {}
    for record in _records(out):
        by_process.setdefault(record["process"], []).append(record["id"])
    assert by_process == {0: ["a", "b"], 1: ["c"]}  # accelerate's split: the first process takes one more
    assert "[rank 0] batch     3 item(s): 3 finished (3 this run, 0 earlier), 0 failed" in outputs[0]
    assert "[rank 1] [1/1] c:" in outputs[1]
    assert all((out / f"{i}.glb.json").is_file() for i in ids)
