"""Nothing lost, part two (issue #25): the reproductions of the second adversarial run, kept as
regression tests. The app deletes only what it made; no output overwrites a file the run reads (model
checkpoints included); Ctrl-C and SIGTERM stop a run at any moment; damaged checkpoints, conflicting
options and hostile text are refused with exit 2 before any model loads; the app fails fast."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from vlm3d_ttg.errors import InvalidInputError


def _age(path: Path, hours: float) -> None:
    """Set `path`'s (not a link's target's) times to `hours` ago."""
    then = time.time() - hours * 3600
    os.utime(path, (then, then), follow_symlinks=False)


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every entry under `root` (links not followed): file bytes, None for folders, the target for links."""
    found = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        found[key] = ("link:" + os.readlink(path)) if path.is_symlink() else (path.read_bytes() if path.is_file() else None)
    return found


# ---- 1. the app deletes only what it made ------------------------------------------------------------


def test_app_cleanup_removes_only_its_own_marked_run_folders(tmp_path):
    from vlm3d_ttg.app.runs import MADE_BY, RUN_RECORD, RunFolders, made_by_the_app

    runs_dir, outside = tmp_path / "D", tmp_path / "outside"
    (runs_dir / "photos").mkdir(parents=True)
    (runs_dir / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    (runs_dir / "notes.txt").write_text("mine")
    # Named like a run folder, but not marked by the app (no run.json / a run.json that is not the app's).
    (runs_dir / "20200101T000000000000Z-0123abcd").mkdir()
    (runs_dir / "20200101T000000000000Z-0123abcd" / "thesis.tex").write_text("years of work")
    forged = runs_dir / "20200101T000000000001Z-4567abcd"
    forged.mkdir()
    (forged / RUN_RECORD).write_text(json.dumps({"status": "done"}))
    # A link out of the runs folder, to a folder that even carries the app's mark.
    outside.mkdir()
    (outside / RUN_RECORD).write_text(json.dumps({"made_by": MADE_BY}))
    (outside / "data.bin").write_bytes(b"precious")
    (runs_dir / "20200101T000000000002Z-89abcdef").symlink_to(outside, target_is_directory=True)
    # A real folder named like a run, marked, whose run.json is a link (not the app's writing).
    linked_record = runs_dir / "20200101T000000000003Z-aaaabbbb"
    linked_record.mkdir()
    (linked_record / RUN_RECORD).symlink_to(outside / RUN_RECORD)
    for entry in runs_dir.iterdir():
        _age(entry, 72)  # three days old: past every age limit
    users = _tree(runs_dir)
    outside_before = _tree(outside)

    runs = RunFolders(runs_dir, keep=1, max_age_hours=1.0)
    first = runs.new()
    assert made_by_the_app(first) and json.loads((first / RUN_RECORD).read_text())["made_by"] == MADE_BY
    runs.release(first)
    second = runs.new()
    runs.release(second)
    assert runs.cleanup() == [first] and second.is_dir()  # keep=1: the first (young) goes by count
    _age(second, 72)
    assert runs.cleanup() == [second]  # by age; and of all the old entries, only the app's own
    left = _tree(runs_dir)
    assert {k: v for k, v in left.items() if k in users} == users  # every user entry, byte for byte
    assert _tree(outside) == outside_before
    for entry in (runs_dir / "photos", runs_dir / "20200101T000000000002Z-89abcdef", forged, linked_record):
        assert not made_by_the_app(entry)


def test_app_run_records_keep_the_mark_through_every_rewrite(tmp_path):
    from vlm3d_ttg.app.runs import RunFolders, made_by_the_app, write_run_record

    runs = RunFolders(tmp_path, keep=5)
    folder = runs.new()
    write_run_record(folder, {"status": "done", "made_by": "someone else"})  # the app's mark always wins
    assert made_by_the_app(folder)
    with pytest.raises(ValueError, match="finite"):
        RunFolders(tmp_path, max_age_hours=float("inf"))


# ---- shared: the CLI in-process, with every model loader made to fail ----------------------------------

from test_generate import FAST, run_cli  # noqa: E402  (shared helpers; rgba_image is a conftest fixture)


@pytest.fixture()
def cache_env(tiny_cache, monkeypatch):
    monkeypatch.setenv("VLM3D_TTG_CACHE", str(tiny_cache))


def _generate(image, out, *extra):
    return ["generate", image, "--prompt", "a robot", "--preset", "tiny", "--out", out, *FAST, *extra]


# ---- 2. no output overwrites a file the run reads: checkpoints included ---------------------------------


def test_an_output_onto_a_checkpoint_file_is_refused_before_any_model_loads(
        tiny_vlm_path, tiny_shape_ref, rgba_image, tmp_path, cache_env, no_model_loads, capsys):
    config = Path(tiny_vlm_path) / "config.json"
    weights = sorted(Path(tiny_shape_ref.models_dir).rglob("*.safetensors"))[0]
    before = {p: p.read_bytes() for p in (config, weights)}
    hard_link, soft_link = tmp_path / "linked.json", tmp_path / "soft.json"
    os.link(config, hard_link)
    soft_link.symlink_to(config)
    cases = [
        (["--manifest", config], "the tiny checkpoints"),                       # the reproduction
        (["--manifest", hard_link], "the tiny checkpoints"),                    # the same file by a hard link
        (["--manifest", soft_link], "the tiny checkpoints"),                    # ... and by a symlink
        (["--manifest", config.parent / "new.json"], "lies inside"),            # a new file among the model's
    ]
    for extra, expected in cases:
        code, _, stderr = run_cli(_generate(rgba_image, tmp_path / "r.glb", *extra), capsys)
        assert code == 2 and expected in stderr, (extra, stderr)
    # the mesh itself, over the shape model's weights (same suffix rules do not matter: refused as an input)
    code, _, stderr = run_cli(_generate(rgba_image, weights.with_suffix(".glb")), capsys)
    assert code == 2 and "lies inside" in stderr, stderr
    assert {p: p.read_bytes() for p in before} == before and not (config.parent / "new.json").exists()


def test_the_real_preset_checkpoint_folders_are_the_ones_it_loads(tmp_path, monkeypatch):
    from vlm3d_ttg.generation import GenerationOptions
    from vlm3d_ttg.io import check_output_plan
    from vlm3d_ttg.generation import checkpoint_folders

    monkeypatch.setenv("HY3DGEN_MODELS", str(tmp_path / "hy"))
    shape = tmp_path / "hy" / "tencent" / "Hunyuan3D-2" / "hunyuan3d-dit-v2-0"
    shape.mkdir(parents=True)
    (shape / "model.fp16.safetensors").write_bytes(b"weights")
    critic = tmp_path / "my-critic"
    critic.mkdir()
    (critic / "tokenizer.json").write_text("{}")
    folders = checkpoint_folders(GenerationOptions(vlm=str(critic)), "real")
    assert folders == {"the shape model": shape, "the critic (--vlm)": critic}
    os.link(critic / "tokenizer.json", tmp_path / "out.json")
    for outputs in ({"--out": shape / "model.fp16.safetensors"}, {"--manifest": tmp_path / "out.json"}):
        with pytest.raises(InvalidInputError, match="which this run loads"):
            check_output_plan(outputs, read_folders=folders)
    check_output_plan({"--out": tmp_path / "fine.glb"}, read_folders=folders)


# ---- 3. signals ----------------------------------------------------------------------------------------


def _earlier_outputs(out: Path) -> None:
    """What an earlier run left at `out` (a later run must leave it byte-identical)."""
    for path in (out, out.with_name(out.name + ".json"), out.with_name(out.name + ".silhouette.png")):
        path.write_bytes(b"earlier " + path.name.encode())


def _swallowing(signum, then):
    """`then`, after a stop signal whose exception a library swallows (as an `except BaseException` in an
    import did in the issue's reproduction)."""
    import signal as signals

    def call(*args, **kwargs):
        try:
            signals.raise_signal(signum)
        except BaseException:  # noqa: BLE001  (the third-party code being imitated)
            pass
        return then(*args, **kwargs)
    return call


@pytest.mark.parametrize("where,signum,code", [("imports", "SIGINT", 130), ("loading", "SIGTERM", 143)])
def test_a_stop_signal_a_library_swallows_still_stops_the_run(where, signum, code, rgba_image, tmp_path, cache_env,
                                                              monkeypatch, capsys):
    import signal as signals

    import vlm3d_ttg.cli as cli
    import vlm3d_ttg.generation as generation

    out = tmp_path / "robot.glb"
    _earlier_outputs(out)
    before = _tree(tmp_path)
    number = getattr(signals, signum)
    if where == "imports":
        monkeypatch.setattr(cli, "_register_commands", _swallowing(number, cli._register_commands))
    else:
        monkeypatch.setattr(generation, "load_models", _swallowing(number, generation.load_models))
    result, _, stderr = run_cli(_generate(rgba_image, out, "--seed", "3"), capsys)
    assert result == code, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted by" in lines[0] and "earlier outputs are untouched" in lines[0]
    assert _tree(tmp_path) == before  # earlier outputs byte-identical, no temporaries


def test_sigterm_during_the_commit_rolls_back_and_leaves_no_temporaries(rgba_image, tmp_path, cache_env, monkeypatch,
                                                                        capsys):
    import signal as signals

    import vlm3d_ttg.io as io

    out = tmp_path / "x.glb"
    _earlier_outputs(out)
    before = _tree(tmp_path)
    real_replace, calls = os.replace, []

    def replace_then_terminated(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        calls.append(dst)
        if len(calls) == 2:  # the mesh and the silhouette mask moved; the manifest not yet
            signals.raise_signal(signals.SIGTERM)

    monkeypatch.setattr(io.os, "replace", replace_then_terminated)
    code, _, stderr = run_cli(_generate(rgba_image, out, "--seed", "2"), capsys)
    monkeypatch.setattr(io.os, "replace", real_replace)
    assert code == 143 and "SIGTERM" in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert len(calls) >= 2 and _tree(tmp_path) == before


def test_a_leftover_of_a_killed_run_is_removed_by_the_next_run_on_the_same_outputs(tmp_path):
    import subprocess
    import sys

    from vlm3d_ttg.io import OutputSet

    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()  # its pid runs no more: what a `kill -9` leaves
    out = tmp_path / "x.glb"
    dead = tmp_path / f".x.{finished.pid}.k3j4h5_q.tmp.glb"
    dead_mask = tmp_path / f".x.glb.silhouette.{finished.pid}.a1b2c3d4.tmp.png"
    alive = tmp_path / f".x.{os.getppid()}.zzzzzzzz.tmp.glb"  # a running process's: never touched
    other = tmp_path / f".y.{finished.pid}.zzzzzzzz.tmp.glb"  # another output's: not this run's business
    for path in (dead, dead_mask, alive, other):
        path.write_bytes(b"half a file")
    with OutputSet() as outputs:  # what every run commits through
        outputs.write_bytes(out, b"mesh")
        outputs.write_bytes(out.with_name("x.glb.silhouette.png"), b"mask")
    assert not dead.exists() and not dead_mask.exists() and alive.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, other.name, "x.glb", "x.glb.silhouette.png"])


def test_sigterm_while_the_models_load_exits_143_in_a_real_process(rgba_image, tmp_path, tiny_cache, tiny_vlm_path):
    """A real process and a real signal, sent once the process says (an INFO log line) it is loading."""
    import signal as signals
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "x.glb"
    out.write_bytes(b"the earlier mesh")
    env = {**os.environ, "VLM3D_TTG_CACHE": str(tiny_cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(root),
           "VLM3D_TTG_LOG": "INFO"}
    process = subprocess.Popen([sys.executable, "-m", "vlm3d_ttg.cli", *map(str, _generate(rgba_image, out))], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = b""
    while b"Loading shape model" not in seen:
        chunk = os.read(process.stderr.fileno(), 4096)
        if not chunk:
            break
        seen += chunk
    process.send_signal(signals.SIGTERM)
    _, rest = process.communicate(timeout=300)
    text = (seen + rest).decode()
    assert b"Loading shape model" in seen, text
    assert process.returncode == 143, text
    assert [line for line in text.splitlines() if "interrupted" in line] == [
        "interrupted by SIGTERM: nothing of this run was written; earlier outputs are untouched"]
    assert "Traceback" not in text
    assert out.read_bytes() == b"the earlier mesh" and sorted(p.name for p in tmp_path.iterdir()) == ["x.glb"]


# ---- 5. conflicts refused: one repeated-option rule for every option; different files by inode ---------


def _every_option():
    """(command, the option's first spelling, takes a value) for every option of every command, from the
    commands' own declarations (typer builds them from the dataclass options)."""
    import typer

    from vlm3d_ttg.cli import _register_commands, app

    _register_commands()
    group = typer.main.get_command(app)
    found = []
    for command_name, command in sorted(group.commands.items()):
        for param in command.params:
            if getattr(param, "param_type_name", "") != "option" or param.multiple or param.count:
                continue
            if param.name in ("help", "version"):
                continue
            found.append((command_name, param.opts[0], not param.is_flag))
    return found


def test_every_option_given_twice_is_refused_naming_it(capsys):
    from vlm3d_ttg.cli import main

    options = _every_option()
    assert len(options) > 60 and ("generate", "--left", True) in options and ("app", "--runs-dir", True) in options
    for command, flag, takes_value in options:
        twice = [flag, "1", flag, "1"] if takes_value else [flag, flag]
        code = main([command, *twice])
        stderr = capsys.readouterr().err
        assert code == 2 and "give it once" in stderr and flag in stderr, (command, flag, stderr)
    # two spellings of one option (a switch and its negation) are the same option
    assert main(["generate", "--guidance", "--no-guidance"]) == 2 and "give it once" in capsys.readouterr().err


def test_a_hard_link_of_the_image_is_not_a_second_view(rgba_image, tmp_path, cache_env, no_model_loads, capsys):
    left = tmp_path / "left.png"
    os.link(rgba_image, left)
    code, _, stderr = run_cli(["generate", rgba_image, "--left", left, "-p", "a robot", "--preset", "tiny",
                               "--shape-model", "hunyuan3d-2mv", "-o", tmp_path / "m.glb", *FAST], capsys)
    assert code == 2 and "IMAGE and --left are the same file" in stderr and "must be different files" in stderr, stderr


@pytest.mark.parametrize("extra,prompt,expected", [
    (["--no-guidance", "--scale", "0.5"], "a robot", ["--scale", "no effect with --no-guidance"]),
    (["--no-guidance", "--silhouette-weight", "2"], "a robot", ["--silhouette-weight", "--no-guidance"]),
    (["--no-guidance", "--inner-steps", "4"], "a robot", ["--inner-steps", "--no-guidance"]),
    ([], "\u200b", ["--prompt is empty (no visible characters)"]),
    ([], "a robot \u202e tob", ["U+202E RIGHT-TO-LEFT OVERRIDE"]),
    ([], "a \u2066robot", ["U+2066 LEFT-TO-RIGHT ISOLATE"]),
    ([], "\udcff\udcfe robot", ["not valid UTF-8 (byte 0xFF at position 0)"]),  # how Python hands over bad bytes
    (["--query", "Is it {description!r}?"], "a robot", ["format specs (':…') and conversions"]),
    (["--vlm", "foo"], "a robot", ["--vlm would be ignored with --preset tiny"]),
    (["--left", "{image}"], "a robot", ["--left: 'tencent/Hunyuan3D-2' takes one image"]),
])
def test_conflicts_and_hostile_text_are_refused_before_any_model_loads(extra, prompt, expected, rgba_image, tmp_path,
                                                                       cache_env, no_model_loads, capsys):
    extra = [str(rgba_image) if e == "{image}" else e for e in extra]
    argv = ["generate", rgba_image, "--prompt", prompt, "--preset", "tiny", "--out", tmp_path / "m.glb", *FAST, *extra]
    code, _, stderr = run_cli(argv, capsys)
    assert code == 2, stderr
    assert all(text in stderr for text in expected), stderr
    assert not list(tmp_path.iterdir())


def test_the_joiners_of_ordinary_scripts_stay_accepted():
    from vlm3d_ttg.critic.queries import normalize_description

    assert normalize_description("a \u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645 chair") .endswith("chair")  # ZWNJ


def test_score_refuses_a_negative_view_count_whatever_the_input(rgba_image, capsys):
    from vlm3d_ttg.cli import main

    assert main(["score", str(rgba_image), "-p", "a pot", "--preset", "tiny", "--views", "-3"]) == 2
    assert "--views: num_views must be ≥ 1, got -3" in capsys.readouterr().err


@pytest.mark.parametrize("variable,value,expected", [
    ("VLM3D_TTG_LOG", "LOUD", "VLM3D_TTG_LOG='LOUD' is not a log level"),
    ("VLM3D_TTG_CACHE", "", "VLM3D_TTG_CACHE is set but empty"),
    ("HY3DGEN_MODELS", " ", "HY3DGEN_MODELS is set but empty"),
    ("HF_HUB_OFFLINE", "maybe", "HF_HUB_OFFLINE='maybe' is neither on nor off"),
])
def test_environment_variables_are_checked_like_options(variable, value, expected, monkeypatch, capsys):
    from vlm3d_ttg.cli import main

    monkeypatch.setenv(variable, value)
    assert main(["--version"]) == 2
    assert expected in capsys.readouterr().err


# ---- 4. every file of a cached checkpoint is checked: exit 2, the file, the fix for where it lives ------


def _damage(cache: Path, case: str) -> Path:
    """Damage one file of the copied tiny cache as the issue did; return the file named in the refusal."""
    import torch
    from safetensors.torch import load_file, save_file

    from vlm3d_ttg.tiny.hunyuan import TINY_SHAPE_REPO, TINY_SHAPE_SUBFOLDER

    critic = cache / "tiny-v2" / "qwen2_5_vl"
    shape = cache / "tiny-v2" / "hy3dgen" / TINY_SHAPE_REPO / TINY_SHAPE_SUBFOLDER  # the variant a default run loads

    def edit(path, change):
        tensors = load_file(path)
        key = sorted(k for k in tensors if tensors[k].ndim == 2 and tensors[k].is_floating_point())[0]
        tensors[key] = change(tensors[key].clone())
        save_file(tensors, path, metadata={"format": "pt"})
        return path

    def nan(t):
        t.view(-1)[0] = float("nan")
        return t

    if case == "config holds []":
        (critic / "config.json").write_text("[]")
        return critic / "config.json"
    if case == "tokenizer deleted":
        (critic / "tokenizer.json").unlink()
        return critic / "tokenizer.json"
    if case == "critic weights deleted":
        (critic / "model.safetensors").unlink()
        return critic / "model.safetensors"
    if case == "flipped bytes in the critic":
        return edit(critic / "model.safetensors", nan)
    if case == "a critic tensor of the wrong shape":
        return edit(critic / "model.safetensors", lambda t: torch.zeros(t.shape[0] + 1, t.shape[1], dtype=t.dtype))
    if case == "a shape tensor of the wrong shape":
        return edit(shape / "model.fp16.safetensors", lambda t: torch.zeros(t.shape[0] + 1, t.shape[1], dtype=t.dtype))
    if case == "flipped bytes in the shape model":
        return edit(shape / "model.fp16.safetensors", nan)
    raise KeyError(case)


@pytest.mark.parametrize("case,problem", [
    ("config holds []", "holds no table of settings"),
    ("tokenizer deleted", "it is missing"),
    ("critic weights deleted", "it is missing"),
    ("flipped bytes in the critic", "holds NaN or infinite values"),
    ("a critic tensor of the wrong shape", "size mismatch"),
    ("a shape tensor of the wrong shape", "size mismatch"),
    ("flipped bytes in the shape model", "holds NaN or infinite values"),
])
def test_a_damaged_tiny_cache_is_refused_naming_the_file_and_its_fix(case, problem, tiny_cache, tiny_vlm_path,
                                                                    tiny_shape_ref, rgba_image, tmp_path, monkeypatch,
                                                                    capsys):
    import shutil

    copy = tmp_path / "cache"
    shutil.copytree(Path(tiny_cache) / "tiny-v2", copy / "tiny-v2", ignore=shutil.ignore_patterns("hunyuan_dit", "rembg"))
    damaged = _damage(copy, case)
    monkeypatch.setenv("VLM3D_TTG_CACHE", str(copy))
    code, _, stderr = run_cli(_generate(rgba_image, tmp_path / "m.glb"), capsys)
    assert code == 2, stderr
    folder = damaged.parent
    assert f"'{damaged}' cannot be read: " in stderr and problem in stderr, stderr
    assert f"Fix: delete the folder '{folder}' and rerun" in stderr, stderr
    assert "huggingface-cli" not in stderr and not (tmp_path / "m.glb").exists()


def test_a_hub_checkpoint_gets_the_real_repo_id_to_download_again(tmp_path):
    from vlm3d_ttg import load_shape_pipeline
    from vlm3d_ttg.errors import CheckpointError
    from vlm3d_ttg.models import rebuild_advice

    folder = tmp_path / "hy" / "tencent" / "Hunyuan3D-2" / "hunyuan3d-dit-v2-0"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("model: {}\n")
    with pytest.raises(CheckpointError) as refused:
        load_shape_pipeline("hunyuan3d-2", models_dir=tmp_path / "hy", device="cpu")
    message = str(refused.value)
    assert f"'{folder / 'model.fp16.safetensors'}' cannot be read: it is missing" in message
    assert (f"huggingface-cli download tencent/Hunyuan3D-2 --include 'hunyuan3d-dit-v2-0/*' "
            f"--local-dir {tmp_path / 'hy' / 'tencent' / 'Hunyuan3D-2'}") in message
    assert "huggingface-cli download Qwen/Qwen2.5-VL-7B-Instruct --force-download" in rebuild_advice(
        tmp_path / "snapshot", "Qwen/Qwen2.5-VL-7B-Instruct")


# ---- 6. the app fails fast, before loading models, and speaks like the CLI --------------------------------


def test_the_app_refuses_settings_no_request_could_run_before_loading(tmp_path, cache_env, no_model_loads, monkeypatch,
                                                                      capsys):
    import socket

    import vlm3d_ttg.preflight as preflight
    from vlm3d_ttg.cli import main

    a_file = tmp_path / "runs.txt"
    a_file.write_text("not a folder")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    cases = [
        (["--vlm", "foo"], "--vlm would be ignored with --preset tiny"),
        (["--shape-model", "hunyuan3d-2mv"], "is a multi-view model, and the app takes one image"),
        (["--runs-dir", a_file], f"--runs-dir '{a_file}': '{a_file}' is a file, not a folder"),
        (["--runs-dir", a_file / "sub"], "is a file, not a folder"),
        (["--max-age-hours", "inf"], "--max-age-hours must be a number in (0, 87600], got inf"),
        (["--max-age-hours", "nan"], "--max-age-hours must be a number"),
        (["--port", str(port)], f"Cannot serve on 127.0.0.1:{port}: it is in use"),
        (["--no-guidance", "--scale", "0.5"], "--scale has no effect with --no-guidance"),
    ]
    try:
        for extra, expected in cases:
            code = main(["app", "--preset", "tiny", *map(str, extra)])
            stderr = capsys.readouterr().err
            assert code == 2 and expected in stderr, (extra, stderr)
    finally:
        busy.close()
    # defaults that cannot fit: the preflight runs at start
    monkeypatch.setattr(preflight, "host_memory_available", lambda: 64 * 1024**2)
    assert main(["app", "--preset", "tiny"]) == 2 and "more than the" in capsys.readouterr().err


def test_api_values_of_the_wrong_kind_get_the_cli_message_and_no_server_path(tmp_path, no_model_loads):
    pytest.importorskip("gradio", reason="the app needs the [app] extra")
    from vlm3d_ttg.app.runs import RunFolders
    from vlm3d_ttg.app.server import AppRunner

    runner = AppRunner(None, preset="tiny", defaults={}, runs=RunFolders(tmp_path / "runs"))

    def first_error(**asked):
        events = list(runner.run_events("session", **{"image": None, "prompt": "a robot", "values": {},
                                                      "export_format": "glb", "baseline": False, **asked}))
        assert events[-1].kind == "error", events
        return events[-1].message

    message = first_error(values={"sigma_window": 5})
    assert "'--sigma-window' (sigma_window): expected text like '0.2,0.85', got int 5" in message
    assert "expected an integer" in first_error(values={"steps": "many"})
    assert "expected true or false" in first_error(values={"enabled": "yes"})
    assert "Invalid value for 'baseline': expected true or false, got str 'yes'" in first_error(baseline="yes")
    assert "Invalid value for 'description': expected text, got int 5" in first_error(prompt=5)
    upload = tmp_path / "gradio-uploads" / "0123abcd" / "hostname"
    upload.parent.mkdir(parents=True)
    upload.write_text("a text file, not an image")
    message = first_error(image=str(upload))
    assert "'hostname'" in message and str(upload.parent) not in message and "gradio-uploads" not in message
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())  # no run folder for a refusal


def test_a_write_that_fails_without_a_file_name_names_the_output(tmp_path):
    """Disk full / `ulimit -f` ("File too large") raise OSErrors without a file name: the error names the
    output being written (the docs promise the path), and nothing is left behind."""
    import errno

    from vlm3d_ttg.io import OutputSet

    out = tmp_path / "m.glb"
    with pytest.raises(OSError) as failed:
        with OutputSet() as outputs:
            outputs.stage(out)
            raise OSError(errno.EFBIG, "File too large")
    assert failed.value.filename == str(out) and failed.value.errno == errno.EFBIG
    assert not list(tmp_path.iterdir())


def test_an_unknown_api_endpoint_is_a_404_not_a_server_error(tmp_path):
    pytest.importorskip("gradio", reason="the app needs the [app] extra")
    from fastapi.testclient import TestClient
    from gradio.routes import App

    from vlm3d_ttg.app.runs import RunFolders
    from vlm3d_ttg.app.server import AppRunner, api_exception_handlers, build_app

    demo = build_app(AppRunner(None, preset="tiny", defaults={}, runs=RunFolders(tmp_path / "runs")))
    demo.queue()
    client = TestClient(App.create_app(demo, app_kwargs={"exception_handlers": api_exception_handlers()}))
    answer = client.post("/gradio_api/call/nope", json={"data": []})
    assert answer.status_code == 404 and "/generate and /cancel" in answer.json()["detail"]


def test_a_signal_during_the_console_scripts_own_imports_is_kept_for_main(tmp_path, capsys):
    """The console script records stop signals from the top of vlm3d_ttg.cli (before typer and the commands
    import; `interrupts.record_early`), and main() raises what arrived: exit 130, one line."""
    import signal as signals

    from vlm3d_ttg import interrupts
    from vlm3d_ttg.cli import main

    saved = {signum: signals.getsignal(signum) for signum in interrupts.STOP_SIGNALS}
    try:
        interrupts.record_early()
        signals.raise_signal(signals.SIGINT)  # recorded, not raised: no handler could catch it yet
        code = main(["--version"])
    finally:
        for signum, handler in saved.items():
            signals.signal(signum, handler)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and lines == ["interrupted by Ctrl-C (SIGINT): nothing of this run was written; earlier outputs "
                                     "are untouched"], lines
    assert interrupts.received() is None  # forgotten again: a later library call in this process is not stopped


def test_generate_mesh_from_python_refuses_an_output_onto_a_checkpoint_file(tiny_pipeline, tiny_vlm, tiny_vlm_path,
                                                                             tiny_cache, rgba_image, tmp_path):
    """The library entry checks outputs against the files its models came from, as the CLI does, before sampling."""
    from vlm3d_ttg.errors import InvalidInputError
    from vlm3d_ttg.generation import GenerationOptions, LoadedModels, generate_mesh
    from vlm3d_ttg.guidance import GuidanceConfig

    model, processor = tiny_vlm
    models = LoadedModels(tiny_pipeline, model, processor, "tiny shape", str(tiny_vlm_path), preset="tiny",
                          cache_dir=tiny_cache)
    config = Path(tiny_vlm_path) / "config.json"
    before = config.read_bytes()
    steps: list[int] = []
    with pytest.raises(InvalidInputError, match="the tiny checkpoints"):
        generate_mesh(models, image=str(rgba_image), prompt="a toy robot", out=tmp_path / "r.glb", manifest_path=config,
                      guidance=GuidanceConfig(), options=GenerationOptions(steps=4), step_callback=lambda *a: steps.append(1))
    assert config.read_bytes() == before and not steps and not (tmp_path / "r.glb").exists()
