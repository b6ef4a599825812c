"""`generate --compare` (issue 27, item 3): after the guided run, the unguided run on the same seed and settings
is written beside it with its manifest, and a contact sheet of both — all as one unit, refused before any work
when it would compare nothing, and never half-written nor destroying earlier outputs when the second run stops.
Mechanics on the tiny preset (meaningless shapes, every code path)."""

from __future__ import annotations

import errno
import json
import signal
from pathlib import Path

import pytest
from PIL import Image

from test_generate import run_cli
from test_nothing_lost import snapshot

#: Small tiny-preset runs: 4 steps of which 2 guided (σ window 0.1-0.9, every step), 2 views of 56 px.
SMALL = ["--steps", "4", "--views", "2", "--view-size", "56", "--grid", "32", "--octree-resolution", "32",
         "--sigma-window", "0.1,0.9", "--every", "1", "--quiet"]


@pytest.fixture()
def cache_env(tiny_cache, monkeypatch):
    monkeypatch.setenv("VLM3D_TTG_CACHE", str(tiny_cache))


def _generate(image, out, *extra):
    """The command line of a small tiny-preset run; an option of SMALL given in `extra` replaces SMALL's."""
    small = list(SMALL)
    for flag in set(extra) & set(SMALL[::2]):
        del small[small.index(flag):small.index(flag) + 2]
    return ["generate", image, "--prompt", "a robot", "--preset", "tiny", "--out", out, "--seed", "5", *small, *extra]


def _names(out: Path) -> dict[str, Path]:
    """Every file a `--compare --plot` run with --out `out` writes."""
    stem = out.with_name(out.stem)
    return {"mesh": out, "manifest": Path(f"{out}.json"), "plot": Path(f"{out}.r.png"),
            "mask": Path(f"{out}.silhouette.png"), "sheet": Path(f"{out}.compare.png"),
            "unguided": Path(f"{stem}.unguided.glb"), "unguided_manifest": Path(f"{stem}.unguided.glb.json"),
            "unguided_mask": Path(f"{stem}.unguided.glb.silhouette.png")}


def test_compare_writes_both_meshes_the_sheet_and_manifests_and_the_unguided_mesh_is_a_plain_unguided_run(
        rgba_image, tmp_path, cache_env, capsys):
    out = tmp_path / "run" / "robot.glb"
    code, stdout, stderr = run_cli(_generate(rgba_image, out, "--compare", "--plot"), capsys)
    assert code == 0, stderr
    names = _names(out)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(p.name for p in names.values())
    guided, unguided = (json.loads(names[key].read_text()) for key in ("manifest", "unguided_manifest"))
    # The same seed and settings; guidance on in one, off in the other, and only the guided run guided steps.
    assert guided["guidance"]["enabled"] and not unguided["guidance"]["enabled"]
    assert {k: v for k, v in guided["guidance"].items() if k != "enabled"} == \
           {k: v for k, v in unguided["guidance"].items() if k != "enabled"}
    assert guided["seed"] == unguided["seed"] == 5 and guided["options"] == unguided["options"]
    assert any(r["guided"] for r in guided["records"]) and not any(r["guided"] for r in unguided["records"])
    # Each manifest names the other and the sheet; the guided one lists them among its outputs.
    assert guided["compare"] == {"unguided": str(names["unguided"]), "unguided_manifest": str(names["unguided_manifest"]),
                                 "unguided_final_r": unguided["final_r"], "sheet": str(names["sheet"])}
    assert unguided["compare"]["guided"] == str(out) and unguided["compare"]["guided_final_r"] == guided["final_r"]
    assert guided["outputs"]["unguided"] == str(names["unguided"])
    assert guided["outputs"]["compare_sheet"] == str(names["sheet"])
    # The sheet: two rows (unguided, guided) of the 2 views, each view drawn larger than the critic's 56 px.
    sheet = Image.open(names["sheet"])
    assert sheet.size[0] > 2 * 200 and sheet.size[1] > 2 * 200, sheet.size
    assert f"unguided  {names['unguided']}" in stdout and f"compare   {names['sheet']}" in stdout
    assert f"final r = {unguided['final_r']:+.3f}" in stdout
    # The unguided mesh is, byte for byte, what a plain --no-guidance run on the same seed writes.
    plain = tmp_path / "plain" / "robot.glb"
    code, _, stderr = run_cli(_generate(rgba_image, plain, "--no-guidance"), capsys)
    assert code == 0, stderr
    assert names["unguided"].read_bytes() == plain.read_bytes()
    assert json.loads(Path(f"{plain}.json").read_text())["final_r"] == unguided["final_r"]
    assert not [p for p in tmp_path.rglob(".*")]  # no staging file left


@pytest.mark.parametrize("extra,said", [
    (["--no-guidance"], "with --no-guidance there is no guided run"),
    (["--scale", "0"], "with --scale 0 nothing is guided"),
    (["--candidates", "2"], "with --candidates the critic would pick each run's seed"),
    (["--sigma-window", "0.96,0.99"], "no step of this run falls in the σ window"),
])
def test_a_comparison_of_nothing_is_refused_before_any_model_loads(extra, said, rgba_image, tmp_path, cache_env, capsys,
                                                                    no_model_loads):
    code, _, stderr = run_cli(_generate(rgba_image, tmp_path / "a.glb", "--compare", *extra), capsys)
    assert code == 2 and said in stderr, stderr
    assert list(tmp_path.iterdir()) == []


def test_an_unguided_output_onto_another_output_or_the_input_is_refused_before_any_model_loads(
        rgba_image, tmp_path, cache_env, capsys, no_model_loads):
    # --manifest at the unguided mesh's own manifest: two outputs, one file.
    code, _, stderr = run_cli(_generate(rgba_image, tmp_path / "a.glb", "--compare", "--manifest",
                                        tmp_path / "a.unguided.glb.json"), capsys)
    assert code == 2 and "the unguided run's manifest" in stderr and "--manifest" in stderr, stderr
    # The input picture where the unguided mesh would go.
    image = tmp_path / "b.unguided.glb"
    image.write_bytes(Path(rgba_image).read_bytes())
    before = snapshot(tmp_path)
    code, _, stderr = run_cli(_generate(image, tmp_path / "b.glb", "--compare"), capsys)
    assert code == 2 and "the unguided run's out" in stderr and "destroy the input" in stderr, stderr
    assert snapshot(tmp_path) == before


@pytest.fixture()
def earlier_outputs(tmp_path):
    """Files at every path a `--compare --plot` run of o/a.glb writes, from an earlier run (their bytes are checked)."""
    out = tmp_path / "o" / "a.glb"
    out.parent.mkdir()
    for name, path in _names(out).items():
        path.write_bytes(f"earlier {name}".encode())
    return out


def test_an_interrupted_unguided_run_writes_nothing_and_keeps_the_earlier_outputs(
        earlier_outputs, rgba_image, tmp_path, cache_env, capsys, monkeypatch):
    """Ctrl-C during the second (unguided) run, after the guided run finished: nothing of either run is written,
    the earlier files at those paths are untouched, no staging file is left."""
    from vlm3d_ttg.run import Run

    sample = Run.sample

    def interrupted_when_unguided(self, **kwargs):
        if not self.guidance.enabled:
            def stop(sampler, step, sigma, state):
                if step == 1:
                    signal.raise_signal(signal.SIGINT)
            self.capture.then = stop
        return sample(self, **kwargs)

    monkeypatch.setattr(Run, "sample", interrupted_when_unguided)
    before = snapshot(tmp_path)
    code, _, stderr = run_cli(_generate(rgba_image, earlier_outputs, "--compare", "--plot"), capsys)
    assert code == 130 and "nothing of this run was written" in stderr, stderr
    assert snapshot(tmp_path) == before


def test_a_write_failing_on_the_unguided_mesh_writes_nothing_and_keeps_the_earlier_outputs(
        earlier_outputs, rgba_image, tmp_path, cache_env, capsys, monkeypatch):
    import vlm3d_ttg.generation as generation

    save_mesh = generation.save_mesh

    def disk_full_on_the_unguided_mesh(mesh, path):
        if ".unguided" in Path(path).name:
            Path(path).write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return save_mesh(mesh, path)

    monkeypatch.setattr(generation, "save_mesh", disk_full_on_the_unguided_mesh)
    before = snapshot(tmp_path)
    code, _, stderr = run_cli(_generate(rgba_image, earlier_outputs, "--compare", "--plot"), capsys)
    assert code == 2 and "No space left on device" in stderr, stderr
    assert f"({_names(earlier_outputs)['unguided']})" in stderr and "nothing of this run was written" in stderr, stderr
    assert snapshot(tmp_path) == before


def test_compare_is_a_declared_option_in_the_help(capsys):
    code, stdout, _ = run_cli(["generate", "--help"], capsys)
    assert code == 0 and "--compare" in stdout and "OUT.compare.png" in stdout.replace("\n", " ")


def test_the_apps_baseline_refuses_a_comparison_of_nothing_with_the_same_message_before_any_work(tmp_path, no_model_loads):
    pytest.importorskip("gradio", reason="the app needs the [app] extra")
    from vlm3d_ttg.app.runs import RunFolders
    from vlm3d_ttg.app.server import AppRunner

    runner = AppRunner(None, preset="tiny", defaults={}, runs=RunFolders(tmp_path / "runs"))
    events = list(runner.run_events("session", image=None, prompt="a robot", values={"enabled": False},
                                    export_format="glb", baseline=True))
    assert [e.kind for e in events] == ["error"]
    assert "with --no-guidance there is no guided run" in events[0].message
    assert "the unguided baseline" in events[0].message
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())  # no run folder
