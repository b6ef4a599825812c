"""Nothing lost, ever (issue #19): a run's outputs commit as one unit, and no output may replace
another output or an input. Each reproduction from the issue runs on the real chain (tiny preset):
the earlier outputs and the inputs are byte-identical after the refused or failed run, no folder is
left behind, and the message names the user's paths."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from test_generate import FAST, run_cli  # shared helpers (rgba_image is a conftest fixture)
from vlm3d_ttg.errors import InvalidInputError
from vlm3d_ttg.io import OutputSet, check_output_plan


@pytest.fixture()
def cache_env(tiny_cache, monkeypatch):
    monkeypatch.setenv("VLM3D_TTG_CACHE", str(tiny_cache))


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under `root`."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _generate(image, out, *extra):
    return ["generate", image, "--prompt", "a robot", "--preset", "tiny", "--out", out, *FAST, *extra]


@pytest.fixture()
def earlier_run(rgba_image, tmp_path, cache_env, capsys):
    """`generate img.png -p robot -o o/a.glb --seed 1`: the earlier outputs a later run must not touch."""
    shutil.copy(rgba_image, tmp_path / "img.png")
    out = tmp_path / "o" / "a.glb"
    code, _, stderr = run_cli(_generate(tmp_path / "img.png", out, "--seed", "1"), capsys)
    assert code == 0, stderr
    return out


@pytest.mark.parametrize("out,views,plot,names", [
    ("o/a.glb", "o/a.glb.r.png", True, ("--save-views", "r plot")),  # the reproduction: views folder = the plot
    ("o/b.glb", "o/b.glb", False, ("--save-views", "--out")),         # views folder = this run's mesh
    ("o/b.glb", "o/b.glb.json", False, ("--save-views", "--manifest")),  # views folder = this run's manifest
])
def test_a_views_folder_on_another_output_is_refused_and_changes_nothing(
        earlier_run, out, views, plot, names, tmp_path, capsys, no_model_loads):
    before = snapshot(tmp_path)
    extra = ["--seed", "2", "--save-views", tmp_path / views] + (["--plot"] if plot else [])
    code, _, stderr = run_cli(_generate(tmp_path / "img.png", tmp_path / out, *extra), capsys)
    assert code == 2, stderr
    assert all(name in stderr for name in names), stderr
    assert "unexpected" not in stderr
    assert snapshot(tmp_path) == before  # the seed-1 manifest, mesh and no new folder


def test_an_output_onto_the_input_image_is_refused(rgba_image, tmp_path, cache_env, capsys, no_model_loads):
    image = tmp_path / "input_as.glb"  # a PNG under a mesh's name
    shutil.copy(rgba_image, image)
    before = snapshot(tmp_path)
    code, _, stderr = run_cli(_generate(image, image), capsys)
    assert code == 2 and "destroy the input" in stderr and "input_as.glb" in stderr, stderr
    assert snapshot(tmp_path) == before


def test_a_views_folder_holding_the_input_is_refused(rgba_image, tmp_path, cache_env, capsys, no_model_loads):
    (tmp_path / "vin").mkdir()
    image = tmp_path / "vin" / "final.png"  # the name of the final contact sheet
    shutil.copy(rgba_image, image)
    before = snapshot(tmp_path)
    code, _, stderr = run_cli(_generate(image, tmp_path / "m.glb", "--save-views", tmp_path / "vin"), capsys)
    assert code == 2 and "destroy the input" in stderr and "final.png" in stderr, stderr
    assert snapshot(tmp_path) == before


def test_a_write_failing_mid_run_leaves_the_earlier_outputs_and_no_folder(earlier_run, tmp_path, capsys, monkeypatch):
    """A writer fails after the mesh and the view sheets were staged: nothing moves, the new views
    folder is gone, and the message names the user's path, not a staging file."""
    import vlm3d_ttg.generation as generation

    def disk_full(path, records, *, final_r=None, baseline_r=None):
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(generation, "write_r_plot", disk_full)
    before = snapshot(tmp_path)
    code, _, stderr = run_cli(_generate(tmp_path / "img.png", earlier_run, "--seed", "2", "--plot",
                                        "--save-views", tmp_path / "o" / "new_views"), capsys)
    assert code == 2, stderr
    assert "No space left on device" in stderr and f"({tmp_path / 'o' / 'a.glb.r.png'})" in stderr, stderr
    assert ".tmp" not in stderr and "nothing of this run was written" in stderr
    assert snapshot(tmp_path) == before


# ---- the transactional writer on its own ---------------------------------------------------------


def test_a_rename_failing_mid_commit_rolls_back_the_renamed_files(tmp_path, monkeypatch):
    first, second, manifest = tmp_path / "a.glb", tmp_path / "a.glb.r.png", tmp_path / "a.glb.json"
    for path in (first, manifest):
        path.write_bytes(b"earlier " + path.name.encode())
    before = snapshot(tmp_path)
    real_replace = os.replace

    def refuse_second(src, dst):
        if Path(dst) == second:
            raise OSError(errno.EIO, "Input/output error", str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", refuse_second)
    with pytest.raises(OSError) as error:
        with OutputSet() as outputs:
            outputs.write_bytes(manifest, b"new manifest", last=True)
            outputs.write_bytes(first, b"new mesh")
            outputs.write_bytes(second, b"new plot")
    assert error.value.filename == str(second)  # the user's path, not the staging file
    assert snapshot(tmp_path) == before  # the mesh renamed first is back; the manifest never moved


def test_the_manifest_commits_last_and_new_folders_appear_only_with_the_commit(tmp_path, monkeypatch):
    order: list[str] = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (order.append(Path(dst).name), real_replace(src, dst))[1])
    with OutputSet() as outputs:
        outputs.write_text(tmp_path / "m.json", "{}", last=True)
        outputs.write_text(tmp_path / "m.glb", "mesh")
        outputs.write_text(tmp_path / "views" / "final.png", "png")
    assert order[-1] == "m.json" and set(order) == {"m.json", "m.glb", "final.png"}
    assert not [p for p in tmp_path.rglob(".*")]  # no staging or backup file left

    with pytest.raises(RuntimeError):
        with OutputSet() as outputs:
            outputs.write_text(tmp_path / "new" / "deeper" / "x.png", "png")
            raise RuntimeError("a writer failed")
    assert not (tmp_path / "new").exists()


def test_the_plan_compares_real_paths(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "in.png").write_bytes(b"x")
    with pytest.raises(InvalidInputError, match="destroy the input"):
        check_output_plan({"--out": tmp_path / "link" / "in.png"}, {"IMAGE": tmp_path / "real" / "in.png"})
    os.link(tmp_path / "real" / "in.png", tmp_path / "hard.png")  # a hard link is the same file too
    with pytest.raises(InvalidInputError, match="destroy the input"):
        check_output_plan({"--out": tmp_path / "hard.png"}, {"IMAGE": tmp_path / "real" / "in.png"})
    with pytest.raises(InvalidInputError, match="lies inside"):
        check_output_plan({}, {"IMAGE": tmp_path / "real" / "in.png"}, owned_folders={"items": tmp_path / "link"})
    check_output_plan({"--out": tmp_path / "real" / "out.glb"}, {"IMAGE": tmp_path / "real" / "in.png"})  # control


def test_a_folder_another_process_makes_first_is_used_and_never_removed(tmp_path, monkeypatch):
    """Two batch ranks write into the same new --out folder: the one that loses the race to create it goes on
    writing into it, and a failed run does not remove the folder the other rank made."""
    from pathlib import Path

    from vlm3d_ttg.io import OutputSet

    folder = tmp_path / "out"
    real_mkdir = Path.mkdir

    def other_process_wins(self, *args, **kwargs):
        if self == folder and not folder.exists():
            real_mkdir(self)  # the other rank made it between our check and our mkdir
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", other_process_wins)
    try:
        with OutputSet() as outputs:
            outputs.write_text(folder / "sub" / "b.json", "{}")
            raise RuntimeError("the run fails")
    except RuntimeError:
        pass
    assert folder.is_dir() and not (folder / "sub").exists()  # ours removed, the other rank's kept
    folder.rmdir()
    with OutputSet() as outputs:
        outputs.write_text(folder / "a.json", "{}")
    assert (folder / "a.json").read_text() == "{}"
