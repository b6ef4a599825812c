"""The quality benchmark: set format, configurations, and the runner end to end (tiny preset).

The end-to-end test launches `benchmarks/quality.py` with `accelerate launch` (2 CPU processes);
rank 0 SIGKILLs itself at a known point (the runner's fault-injection hook: after its first item,
in the middle of the next), the launcher stops the other rank, and a restart must complete the
run without redoing finished work. The cache tests run the real runner in this process on one
item, damage one cached file each, rerun, and check that the file is named and its work redone.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlm3d_ttg.bench import (
    BASE,
    NOISE_FLOOR,
    BenchRun,
    EvalViews,
    GenerationSettings,
    MetricSettings,
    RunPaths,
    check_run,
    load_bench_set,
    load_config_file,
    resolve_configs,
)
from vlm3d_ttg.bench.generate import KILL_AFTER_ENV
from vlm3d_ttg.errors import InvalidInputError
from vlm3d_ttg.guidance import GuidanceConfig

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "quality.py"
SHAPES = REPO / "benchmarks" / "sets" / "shapes.json"
# 6 steps with this window give 2 guided steps (an r curve, not a point); the export grid is the
# smallest that keeps every tiny shape non-empty and costs a third of 48's (hy3dgen's dense decode
# was most of an unguided configuration's time).
TINY = ["--preset", "tiny", "--steps", "6", "--views", "2", "--view-size", "56", "--grid", "32",
        "--octree-resolution", "32", "--eval-views", "2", "--eval-size", "56", "--sigma-window", "0.1,0.9",
        "--bootstrap", "200", "--cpu"]


def rgba(path: Path, size: int = 64) -> Path:
    array = np.zeros((size, size, 4), np.uint8)
    array[16:48, 16:48] = (200, 120, 40, 255)
    Image.fromarray(array, "RGBA").save(path)
    return path


# --- the set format ------------------------------------------------------------------------------


def test_committed_set_is_valid_with_small_rgba_images():
    bench = load_bench_set(SHAPES)
    assert len(bench.items) == 8 and len({i.id for i in bench.items}) == 8
    for item in bench.items:
        assert item.image is not None and item.image.is_file()
        assert item.image.stat().st_size < 40_000
        image = Image.open(item.image)
        assert image.mode == "RGBA" and image.size == (252, 252)
        alpha = np.asarray(image)[..., 3]
        assert 0.05 < (alpha > 0).mean() < 0.7  # an object on a transparent background


def test_make_images_reproduces_the_committed_pictures(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks" / "sets"))
    try:
        import make_images
    finally:
        sys.path.pop(0)
    for name in ("mug", "desk_lamp"):
        made = np.asarray(make_images.render_object(make_images.OBJECTS[name]()), dtype=np.int16)
        committed = np.asarray(Image.open(REPO / "benchmarks" / "sets" / "images" / f"{name}.png"), dtype=np.int16)
        assert made.shape == committed.shape
        # Tolerant at silhouette pixels (renderer details such as antialiasing may change); any change
        # of an object's parts, colours or framing moves far more than this.
        assert (made[..., 3] == committed[..., 3]).mean() > 0.99
        assert np.abs(made - committed).mean() < 1.0


def test_json_and_csv_sets_load_with_optional_fields(tmp_path):
    image = rgba(tmp_path / "pot.png")
    (tmp_path / "set.json").write_text(json.dumps(
        [{"id": "pot", "prompt": " a clay pot ", "image": "pot.png", "seed": 7, "notes": "x"},
         {"id": "cup", "prompt": "a cup", "image": str(image)}]))
    bench = load_bench_set(tmp_path / "set.json")
    assert [i.id for i in bench.items] == ["pot", "cup"]
    assert bench.items[0].prompt == "a clay pot" and bench.items[0].image == image.absolute()
    assert bench.items[0].seed_for(100) == 7
    assert bench.items[1].seed_for(0) == bench.items[1].seed_for(0) != bench.items[1].seed_for(1)
    (tmp_path / "set.csv").write_text('id,prompt,image\npot,"a pot, glazed",pot.png\nvase,a vase,\n')
    bench = load_bench_set(tmp_path / "set.csv")
    assert bench.items[0].prompt == "a pot, glazed" and bench.items[1].image is None
    assert [i.id for i in bench.items_without_image] == ["vase"]
    assert [i.id for i in bench.select(["vase"]).items] == ["vase"]
    with pytest.raises(InvalidInputError, match="Unknown item id"):
        bench.select(["nope"])


def test_every_bad_row_is_reported_with_its_row_number(tmp_path, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "no-u2net"))
    monkeypatch.setenv("REMBG_HOME", str(tmp_path / "no-rembg"))
    rgba(tmp_path / "ok.png")
    Image.new("RGB", (64, 64), (200, 10, 10)).save(tmp_path / "opaque.jpg")
    rows = [
        {"id": "a", "prompt": "fine", "image": "ok.png"},
        {"id": "a", "prompt": "again"},
        {"id": "b/c", "prompt": "x"},
        {"id": "d", "prompt": "  "},
        {"id": "e", "prompt": "x", "image": "missing.png"},
        {"id": "f", "prompt": "x", "imgae": "ok.png"},
        {"id": "g", "prompt": "x", "seed": "soon"},
        {"id": "h", "prompt": "x", "image": "opaque.jpg"},
        "not a row",
    ]
    (tmp_path / "bad.json").write_text(json.dumps({"name": "bad", "items": rows}))
    with pytest.raises(InvalidInputError) as error:
        load_bench_set(tmp_path / "bad.json")
    message = str(error.value)
    for expected in ["8 problem(s)", "row 2 (id 'a'): duplicate id (first used in row 1)", "row 3 (id 'b/c'): id must be",
                     "row 4 (id 'd'): 'prompt' is missing", "row 5 (id 'e'): Input image", "does not exist",
                     "row 6 (id 'f'): unknown field(s) ['imgae']", "row 7 (id 'g'): seed must be an integer",
                     "row 8 (id 'h'):", "no transparent background", "row 9: expected an object"]:
        assert expected in message, expected
    (tmp_path / "bad.csv").write_text("id,text\na,b\n")
    with pytest.raises(InvalidInputError, match=r"lacks column\(s\) \['prompt'\]"):
        load_bench_set(tmp_path / "bad.csv")
    (tmp_path / "set.yaml").write_text("")
    with pytest.raises(InvalidInputError, match=".json or .csv"):
        load_bench_set(tmp_path / "set.yaml")


def test_rows_without_image_fail_before_any_work_when_text_to_image_is_unavailable(tmp_path, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "no-u2net"))
    monkeypatch.setenv("REMBG_HOME", str(tmp_path / "no-rembg"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    (tmp_path / "set.csv").write_text("id,prompt,image\nvase,a vase,\nbowl,a bowl,\n")
    bench = load_bench_set(tmp_path / "set.csv")
    configs = resolve_configs(["guided"], GuidanceConfig())
    with pytest.raises(InvalidInputError) as error:
        check_run(BenchRun(bench, configs, GenerationSettings(preset="tiny"), EvalViews(2, 56), MetricSettings(),
                           RunPaths(tmp_path / "out")))
    message = str(error.value)
    assert "2 benchmark row(s) have no image (vase, bowl)" in message
    from vlm3d_ttg.inputs import default_background_removal_session

    remover = default_background_removal_session()[0]  # rembg's default: u2net, or bria-rmbg since 2.0.7x
    assert "HunyuanDiT" in message and "huggingface-cli download" in message and f"({remover})" in message
    assert "Fix: give those rows an 'image'" in message
    assert not (tmp_path / "out").exists()


def test_configurations_base_first_noise_floor_last_and_custom_file(tmp_path):
    guidance = GuidanceConfig(num_views=3)
    configs = resolve_configs(["single_view", "content_only"], guidance, noise_floor=True)
    assert [c.name for c in configs] == [BASE, "single_view", "content_only", NOISE_FLOOR]
    by_name = {c.name: c for c in configs}
    assert not by_name[BASE].guided and not by_name[NOISE_FLOOR].guided
    assert by_name[NOISE_FLOOR].seed_offset == 1 and by_name[BASE].seed_offset == 0
    assert by_name["single_view"].guidance.num_views == 1 and by_name["content_only"].guidance.query == "content"
    assert by_name["content_only"].guidance.num_views == 3
    with pytest.raises(InvalidInputError, match="Unknown configuration 'fancy'"):
        resolve_configs(["fancy"], guidance)
    (tmp_path / "c.json").write_text(json.dumps({"strong": {"scale": 0.1, "sigma_window": [0.3, 0.7]}}))
    custom = load_config_file(tmp_path / "c.json", guidance)
    assert custom["strong"].guidance.scale == 0.1 and custom["strong"].guidance.sigma_window == (0.3, 0.7)
    assert [c.name for c in resolve_configs(["strong"], guidance, custom=custom)] == [BASE, "strong"]
    (tmp_path / "bad.json").write_text(json.dumps({"x": {"scael": 1}}))
    with pytest.raises(InvalidInputError, match=r"unknown field\(s\) \['scael'\]"):
        load_config_file(tmp_path / "bad.json", guidance)
    (tmp_path / "bad2.json").write_text(json.dumps({"x": {"view_size": 100}}))
    with pytest.raises(InvalidInputError, match="multiple of 28"):
        load_config_file(tmp_path / "bad2.json", guidance)


# --- end to end ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_command(out: Path, extra: list[str] = ()) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()), str(SCRIPT),
            "--set", str(SHAPES), "--limit", "3", "--out", str(out), *TINY, *extra]


def _env(tiny_cache: Path, **extra: str) -> dict[str, str]:
    return dict(os.environ, VLM3D_TTG_CACHE=str(tiny_cache), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)


def _run_launcher(command: list[str], env: dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run `accelerate launch` in its own process group, so a timeout can kill the workers too."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"accelerate launch did not end within {timeout} s:\n{output}")
    return subprocess.CompletedProcess(command, process.returncode, output, "")


def _finished(out: Path, item: str, configs=("base", "guided")) -> bool:
    return all((out / "items" / item / c / "record.json").is_file() for c in configs)


def _snapshot(out: Path) -> dict[tuple[str, str], tuple[str, int]]:
    """Per finished (item, config): the record's id and the mesh's mtime (both change if it is regenerated)."""
    snap = {}
    for record in out.glob("items/*/*/record.json"):
        folder = record.parent
        snap[(folder.parent.name, folder.name)] = (json.loads(record.read_text())["id"], (folder / "mesh.glb").stat().st_mtime_ns)
    return snap


def _load_quality_script():
    spec = importlib.util.spec_from_file_location("quality_benchmark_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _runner_state_restored():
    """Undo what an in-process run of the script changes globally: logging setup and accelerate's state."""
    from accelerate import PartialState

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    names = ("vlm3d_ttg.bench", "vlm3d_ttg.bench.report", "vlm3d_ttg.metrics.frechet")
    levels = {name: logging.getLogger(name).level for name in names}
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        for name, value in levels.items():
            logging.getLogger(name).setLevel(value)
        PartialState._reset_state()


def _run_in_process(script, argv: list[str], capsys) -> tuple[int, str]:
    """The script's exit code and its stdout + stderr (logs included), run in this process (no start-up cost)."""
    capsys.readouterr()
    with _runner_state_restored():
        code = script.main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


CALIBRATE = ["--calibrate-judge"]


def test_quality_benchmark_two_processes_killed_and_resumed(tiny_cache, tmp_path, capsys):
    out = tmp_path / "run"
    items = [i.id for i in load_bench_set(SHAPES).items[:3]]
    # accelerate gives rank 0 the first two items and rank 1 the third.
    first_of_rank0, second_of_rank0 = items[0], items[1]

    # 1. Rank 0 SIGKILLs itself after committing 2 (item, config) folders (its first item), in the
    #    middle of the next one; no cleanup code runs. The launcher then stops rank 1 wherever it is.
    first = _run_launcher(_launch_command(out, CALIBRATE), _env(tiny_cache, **{KILL_AFTER_ENV: "2"}), tmp_path, timeout=300)
    assert first.returncode != 0, first.stdout
    assert re.search(rf"\[rank 0\] WARNING .*{KILL_AFTER_ENV}=2: SIGKILLing this process", first.stdout), first.stdout
    assert _finished(out, first_of_rank0)
    assert not list(out.glob(f"items/{second_of_rank0}/*/record.json"))
    partial = list(out.glob(f"items/{second_of_rank0}/.base.partial-*"))
    assert len(partial) == 1 and (partial[0] / "mesh.glb").is_file(), "the kill did not land inside a staging folder"
    snapshot = _snapshot(out)  # every (item, config) pair finished at the kill
    assert 2 <= len(snapshot) <= 4 and not (out / "results.md").exists()

    # 2. Restart: finished items are not redone, the rest is completed and merged.
    second = _run_launcher(_launch_command(out, CALIBRATE), _env(tiny_cache), tmp_path, timeout=300)
    output = second.stdout
    assert second.returncode == 0, output
    after = _snapshot(out)
    assert {pair: after[pair] for pair in snapshot} == snapshot, "a finished (item, config) was regenerated"
    assert len(after) == 2 * len(items)
    assert not list(out.rglob("*.partial-*")), "staging folders of the killed run were left behind"
    # Counters of the restart: exactly the (item, config) pairs not finished at the kill were generated,
    # by both processes together; the finished ones were skipped (or, if already evaluated, not even listed).
    counts = re.findall(r"\[rank (\d)\] (\d+) item\(s\) finished earlier \(not redone\); this process generated (\d+) "
                        r"and skipped (\d+)", output)
    assert sorted(rank for rank, *_ in counts) == ["0", "1"], output
    assert sum(int(generated) for _, _, generated, _ in counts) == 2 * len(items) - len(snapshot)
    evaluated_before = int(counts[0][1])
    assert sum(int(skipped) for *_, skipped in counts) + 2 * evaluated_before == len(snapshot)
    ranks = re.findall(r"process (\d+)/2 \(pid \d+\): (\d+) of (\d+) pending", output)
    assert sorted(r for r, _, _ in ranks) == ["0", "1"]
    assert sum(int(mine) for _, mine, _ in ranks) == int(ranks[0][2]) == len(items) - evaluated_before

    # 3. The results: table, JSON and figure.
    results = json.loads((out / "results.json").read_text())
    assert results["n_items"] == 3 and results["items"] == items
    assert [c["name"] for c in results["configs"]] == ["base", "guided"]
    assert results["run"]["num_processes"] == 2
    for name in ("base", "guided"):
        metrics = results["metrics"][name]
        assert metrics["n_items"] == 3
        for key in ("clip_d", "geometry", "final_r"):
            entry = metrics[key]
            assert entry["n"] == 3 and entry["ci_low"] <= entry["value"] <= entry["ci_high"], (name, key, entry)
        assert 0.0 <= metrics["geometry"]["value"] <= 1.0 and 0.0 <= metrics["clip_d"]["value"] <= 2.0
        for key in ("fid", "clip_fid"):
            assert metrics[key]["value"] >= 0 and metrics[key]["n_generated"] == metrics[key]["n_reference"] == 3
            assert metrics[key]["full_rank"] is False
        assert metrics["kid"]["n_generated"] == 3 and np.isfinite(metrics["kid"]["value"])
    judge = results["metrics"]["guided"]["judge"]
    assert judge["wins"] + judge["ties"] + judge["losses"] == 3 and 0.0 <= judge["win_rate"] <= 1.0
    assert results["metrics"]["base"]["judge"] is None
    # The judge's calibration on the base meshes, reported next to its win rate.
    calibration = results["judge_calibration"]
    base_vs_base = calibration["base_vs_base"]
    assert base_vs_base["n_items"] == 3 and base_vs_base["ties"] == 3 and base_vs_base["win_rate"] == 0.5
    assert len(calibration["clear_gap"]) == 4 and all(g["n_items"] == 3 for g in calibration["clear_gap"].values())
    paired = results["paired_vs_base"]["guided"]
    clip_deltas = [results["per_item"]["guided"][i]["clip_d"] - results["per_item"]["base"][i]["clip_d"] for i in items]
    assert paired["clip_d"]["value"] == pytest.approx(np.mean(clip_deltas))
    assert paired["fid"]["value"] == pytest.approx(results["metrics"]["guided"]["fid"]["value"] - results["metrics"]["base"]["fid"]["value"])
    warnings = " ".join(results["warnings"])
    assert "Only N = 3 items" in warnings and "rank-deficient" in warnings and "Preset tiny" in warnings
    assert "No seed-vs-seed noise floor" in warnings

    markdown = (out / "results.md").read_text()
    assert ("| config | N | CLIP-D ↓ | FID ↓ | CLIP-FID ↓ | KID ↓ | Geo ↓ | judge win vs base ↑ (W/T/L) | final r ↑ "
            "| compute TFLOP/item |") in markdown
    # Compute per item beside the metrics: the guided runs' critic work costs more than base's DiT-only runs.
    assert results["metrics"]["guided"]["compute_tflop"] > results["metrics"]["base"]["compute_tflop"] > 0
    guided_row = next(line for line in markdown.splitlines() if line.startswith("| guided | 3 |"))
    assert f"{results['metrics']['guided']['clip_d']['value']:.3f}" in guided_row
    assert "cal. base/base 0.50 [0.50, 0.50]" in guided_row and "N=3" in guided_row
    assert "## Judge calibration" in markdown and "clear gap: holes×6" in markdown
    assert "our definition" in markdown and "input images" in markdown
    figure = Image.open(out / "results.png")
    assert figure.size[0] > 800 and figure.size[1] > 600
    for item in items:
        assert Image.open(out / "items" / item / "compare.png").size[1] > 2 * 112
        assert len(list((out / "items" / item / "guided" / "eval_views").glob("view_*.png"))) == 2

    # 4. Different settings on the same folder: an error before any model loads, nothing changed.
    #    (In this process: an uncaught exception would fail the test, as a traceback would.)
    code, output = _run_in_process(_load_quality_script(), ["--set", str(SHAPES), "--limit", "3", "--out", str(out),
                                                            *TINY, *CALIBRATE, "--cache-dir", str(tiny_cache), "--scale", "0.5"], capsys)
    assert code == 2, output
    assert "made with other settings" in output and "config.guidance.scale: cached 0.03, now 0.5" in output
    assert "--redo-stale" in output
    assert _snapshot(out) == after


# --- the cache reads defensively ----------------------------------------------------------------

# The smallest real run that writes every kind of cached file: one item, base only; no judge (it only
# compares configurations with base) and no FID/KID (not reported below 2 items; Inception-v3 is
# the slowest metric model on a CPU). CLIP still writes the features file.
ONE_ITEM = ["--set", str(SHAPES), "--limit", "1", "--configs", "base", "--no-judge", "--no-fid", *TINY]


@pytest.fixture(scope="module")
def quality_script():
    """benchmarks/quality.py, imported once."""
    return _load_quality_script()


@pytest.fixture(scope="module")
def finished_one_item_run(quality_script, tiny_cache, tmp_path_factory):
    """A finished one-item run folder (never modified: tests work on copies)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    argv = [*ONE_ITEM, "--out", str(out), "--cache-dir", str(tiny_cache)]
    with _runner_state_restored():
        assert quality_script.main(argv) == 0
    return out


def _item_dir(out: Path) -> Path:
    (item_dir,) = (out / "items").iterdir()
    return item_dir


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    # name: (file relative to the item folder, how it is damaged, is the configuration regenerated?)
    "truncated_record": ("base/record.json", _truncate, True),
    "deleted_mesh": ("base/mesh.glb", Path.unlink, True),
    "truncated_view": ("base/eval_views/view_01.png", _truncate, True),
    "corrupt_evaluation": ("eval.json", lambda p: p.write_text('{"configs": '), False),
    "replaced_features": ("features.npz", lambda p: p.write_bytes(b"not numpy"), False),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_cache_file_is_named_and_its_work_redone(damage, quality_script, finished_one_item_run, tiny_cache,
                                                           tmp_path, capsys):
    relative, spoil, regenerated = DAMAGE[damage]
    out = tmp_path / "run"
    shutil.copytree(finished_one_item_run, out)
    item_dir = _item_dir(out)
    record_before = json.loads((item_dir / "base" / "record.json").read_text())
    spoil(item_dir / relative)

    code, output = _run_in_process(quality_script, [*ONE_ITEM, "--out", str(out), "--cache-dir", str(tiny_cache)], capsys)

    assert code == 0 and "Traceback" not in output, output
    assert re.search(rf"WARNING vlm3d_ttg\.bench\.cache: cached file {re.escape(str(item_dir / relative))} is "
                     r"(missing|unreadable|not |truncated)", output), output
    record_after = json.loads((item_dir / "base" / "record.json").read_text())
    stats = re.search(r"this process generated (\d+) and skipped (\d+) .* evaluated (\d+) item", output)
    assert stats is not None, output
    if regenerated:
        assert stats.groups() == ("1", "0", "1")
        assert record_after["id"] != record_before["id"]
        assert (item_dir / "base" / "mesh.glb").stat().st_size > 0
    else:
        assert stats.groups() == ("0", "1", "1")
        assert record_after == record_before
    evaluation_after = json.loads((item_dir / "eval.json").read_text())
    assert evaluation_after["record_ids"] == {"base": record_after["id"]}
    assert len(list((item_dir / "base" / "eval_views").glob("view_*.png"))) == 2
    assert json.loads((out / "results.json").read_text())["n_items"] == 1


def test_results_cached_before_a_renderer_change_are_stale(quality_script, finished_one_item_run, tiny_cache, tmp_path,
                                                           monkeypatch, capsys):
    from vlm3d_ttg.render import renderer

    out = tmp_path / "run"
    shutil.copytree(finished_one_item_run, out)
    record_before = (_item_dir(out) / "base" / "record.json").read_text()
    version = renderer.RENDERER_VERSION
    monkeypatch.setattr(renderer, "RENDERER_VERSION", version + 1)

    code, output = _run_in_process(quality_script, [*ONE_ITEM, "--out", str(out), "--cache-dir", str(tiny_cache)], capsys)

    assert code == 2, output
    assert f"renderer: cached {version}, now {version + 1}" in output and "--redo-stale" in output
    assert (_item_dir(out) / "base" / "record.json").read_text() == record_before
