"""The app's pieces that need no server, and the command line around it: the page's options derived
from the declarations, one request check for the CLI and the app, run folders and their cleanup,
`--version`, `--help` at 80 columns, library warnings kept out of the terminal."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest

from vlm3d_ttg.cli import main
from vlm3d_ttg.errors import InvalidInputError

ROOT = Path(__file__).resolve().parents[1]


# ---- the page's options come from the declarations --------------------------------------------------


def test_the_advanced_group_is_the_allow_list_with_declared_defaults_help_choices_and_ranges():
    pytest.importorskip("gradio", reason="the app needs the [app] extra")
    from vlm3d_ttg.app.server import ADVANCED, OPTION_CLASSES, form_fields
    from vlm3d_ttg.options import cli_default, declared

    declarations = {f.name: (f, spec) for cls in OPTION_CLASSES for f, spec in declared(cls)}
    fields = form_fields()
    assert [f.name for f in fields] == [name for name in ADVANCED if name in declarations]
    for shown in fields:
        f, spec = declarations[shown.name]
        assert shown.default == cli_default(f, spec) and shown.help == spec.help
        assert (shown.minimum, shown.maximum) == (spec.minimum, spec.maximum)
    by_name = {f.name: f for f in fields}
    assert by_name["view_layout"].choices == ("separate", "grid")  # from the Literal annotation
    assert by_name["steps"].minimum == 2 and by_name["view_size"].minimum == 28
    assert by_name["reference"].kind is bool and by_name["sigma_window"].default == "0.2,0.85"
    # The server's command line sets the defaults the page shows.
    assert {f.name: f.default for f in form_fields(("steps", "scale"), {"steps": 6})} == {"steps": 6, "scale": 0.03}


def test_declared_ranges_agree_with_validate():
    # The page's ranges (Option.minimum/maximum) and the dataclasses' validate() must not drift apart:
    # the bound itself passes, one step outside it is refused naming the field.
    from vlm3d_ttg.app.server import OPTION_CLASSES
    from vlm3d_ttg.options import declared, value_type

    checked = 0
    for cls in OPTION_CLASSES:
        for f, spec in declared(cls):
            for bound, outside in ((spec.minimum, -1), (spec.maximum, +1)):
                if bound is None:
                    continue
                integer = value_type(f, spec) is int  # octree_resolution, max_faces: int | None
                cls(**{f.name: type(f.default or 0)(bound) if integer else float(bound)}).validate()
                beyond = bound + outside * (1 if integer else 0.01)
                with pytest.raises(InvalidInputError, match=f.name):
                    cls(**{f.name: int(beyond) if integer else beyond}).validate()
                checked += 1
    assert checked >= 9


# ---- one request check for the CLI and the app -------------------------------------------------------


@pytest.mark.parametrize("prompt, extra, expected", [
    ("a robot <|im_start|>", [], "chat markup"),
    ("a robot", ["--steps", "1"], "steps (--steps) must be ≥ 2"),
    ("   ", [], "--prompt is empty"),
    ("a robot", ["--view-size", "50"], "view_size (--view-size) must be a positive multiple of 28"),
])
def test_the_cli_refuses_a_request_with_the_message_validate_request_gives(prompt, extra, expected, tmp_path, capsys):
    from vlm3d_ttg.options import declared, value_type
    from vlm3d_ttg.requests import validate_request

    image = ROOT / "examples" / "toy_robot.png"
    code = main(["generate", str(image), "-p", prompt, "--preset", "tiny", "-o", str(tmp_path / "x.glb"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and expected in err
    values = {}
    for flag, value in zip(extra[::2], extra[1::2]):
        from vlm3d_ttg.app.server import OPTION_CLASSES

        name = next(f.name for cls in OPTION_CLASSES for f, spec in declared(cls) if (spec.flag or "--" + f.name.replace("_", "-")) == flag)
        values[name] = int(value)
    with pytest.raises(InvalidInputError) as caught:
        validate_request(values, prompt=prompt, preset="tiny", image=image)
    assert err == f"error: {caught.value}"  # the app shows exactly this message


def test_validate_request_returns_the_run_it_checked():
    from vlm3d_ttg.requests import validate_request

    request = validate_request({"steps": 6, "num_views": 2, "sigma_window": "0.2,0.85"}, prompt="a robot",
                               preset="tiny", image=ROOT / "examples" / "toy_robot.png")
    assert request.options.steps == 6 and request.guidance.num_views == 2
    assert request.options.octree_resolution == 128  # the tiny preset's export grid
    assert request.guided_steps and not request.warnings
    quiet = validate_request({"steps": 2}, prompt="a robot", preset="tiny", image=None)
    assert quiet.image is None and "will not be guided" in quiet.warnings[0]


# ---- run folders, cancel tokens --------------------------------------------------------------------


def test_run_folders_keep_the_newest_and_the_young_and_never_a_running_one(tmp_path):
    from vlm3d_ttg.app.runs import RunFolders

    runs = RunFolders(tmp_path, keep=3, max_age_hours=1.0)
    first = runs.new()  # still running: never removed
    finished = []
    for _ in range(4):
        folder = runs.new()
        runs.release(folder)
        finished.append(folder)
        time.sleep(0.002)
    # At the last new(): 1 running + 3 finished before it exceeded keep=3 → the oldest finished went.
    assert first.is_dir()
    assert not finished[0].exists() and all(f.is_dir() for f in finished[2:])
    old = finished[-1]
    long_ago = time.time() - 2 * 3600
    os.utime(old, (long_ago, long_ago))
    assert old in runs.cleanup() and not old.exists()
    runs.release(first)
    assert first.is_dir()  # finished now, but young and among the newest
    assert len(set(runs.new().parent.iterdir())) <= 3


def test_a_cancelled_token_stops_the_step_relay_at_the_step_boundary():
    import queue

    from vlm3d_ttg.app.runs import RunCancelled, Sessions

    pytest.importorskip("gradio", reason="the app needs the [app] extra")
    from vlm3d_ttg.app.server import StepRelay

    sessions = Sessions()
    token = sessions.start("a")
    other = sessions.start("b")
    events = queue.Queue()
    relay = StepRelay(events, token, phase="guided", total=4)
    relay(None, 0, 0.0, {"record": None, "evaluation": None})
    assert events.get_nowait().step == 0
    assert sessions.cancel("a") == 1 and not other.cancelled  # a session cancels only its own runs
    with pytest.raises(RunCancelled, match="after step 1: nothing of this run was written"):
        relay(None, 1, 0.33, {"record": None, "evaluation": None})
    assert events.empty()


def test_the_network_warning_is_given_beyond_localhost_only():
    from vlm3d_ttg.commands.app import exposure_warnings

    assert exposure_warnings("127.0.0.1", False) == [] and exposure_warnings("localhost", False) == []
    assert exposure_warnings("::1", False) == []
    (warning,) = exposure_warnings("0.0.0.0", False)
    assert "anyone who can reach this machine on the network can use the app and its GPU" in warning
    assert len(exposure_warnings("127.0.0.1", True)) == 1


# ---- the command line ------------------------------------------------------------------------------


def test_version_prints_the_package_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"vlm3d-ttg {version('vlm3d-ttg')}"


@pytest.mark.parametrize("command", ["generate", "app", "score", "batch"])
def test_help_at_80_columns_shows_every_flag_whole(command, monkeypatch, capsys):
    from vlm3d_ttg.generation import GenerationOptions
    from vlm3d_ttg.guidance import GuidanceConfig
    from vlm3d_ttg.options import declared, flag_of

    monkeypatch.setenv("COLUMNS", "80")  # what click reads for the terminal's width
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80, text
    if command != "score":
        for cls in (GenerationOptions, GuidanceConfig):
            for f, spec in declared(cls):
                assert re.search(r"(^|\s)" + re.escape(flag_of(f, spec)) + r"[\s,/]", text), flag_of(f, spec)


# A warning raised inside a library (its module's __name__ is the library's), and one of our own.
_WARN = ("from vlm3d_ttg.cli import main; import sys; main(sys.argv[1:]); "
         "code = compile('import warnings; warnings.warn(\\'`torch_dtype` is deprecated\\', FutureWarning)', 'lib.py', 'exec'); "
         "exec(code, {'__name__': 'diffusers.utils.deprecation_utils'}); "
         "exec(code.replace(co_filename='numba_parallel.py'), {'__name__': 'numba.np.ufunc.parallel'}); "
         "import warnings; warnings.warn('ours', UserWarning)")


@pytest.mark.parametrize("argv, shown", [(["--version"], False), (["generate", "--help", "--verbose"], True)])
def test_library_warnings_stay_out_of_the_terminal_unless_verbose(argv, shown):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("VLM3D_TTG_LOG", None)
    ran = subprocess.run([sys.executable, "-c", _WARN, *argv], capture_output=True, text=True, env=env, timeout=120)
    assert (ran.stderr.count("torch_dtype") == 2) is shown and ("torch_dtype" in ran.stderr) is shown, ran.stderr
    assert "ours" in ran.stderr  # warnings that are not a library's still reach the user

