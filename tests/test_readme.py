"""Every Python example of README.md runs (issue 29, item 7), read from the README itself, so an
edited example is what is tested.

- The examples that load models run, in README order and in one namespace (a later example may use
  an earlier one's names, as the reward-term example does), on the tiny preset: each loading line
  `models = load_models(...)` is replaced by the offline line the README documents, nothing else in
  the example is changed. To keep them cheap the test lowers the *defaults* they leave alone (steps,
  views, view size, grids) and never overrides a value an example writes; the README says so.
- The HTTP API example runs against a real `vlm3d-ttg app --preset tiny` (tests/test_readme_app.py).
- The plug-in example's files (a python block whose first line names its file, `# package/module.py`)
  and its pyproject.toml are installed as pip would leave them (test_plugins' way): the registries
  must find both, and the backbone class must have every member the protocol and the CLI ask for.

A python block none of these covers fails `test_every_python_block_is_run`.
"""

from __future__ import annotations

import inspect
import math
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LOADING_LINE = re.compile(r"^models = load_models\(.*\)(\s*#.*)?$", re.M)
# Where the README documents the offline line: "replace the loading line with `models = ...`".
DOCUMENTED_SWAP = re.compile(r"replace the loading line with\s+`(models = load_models\([^`]*\))`")
PLUGIN_FILE = re.compile(r"\A# ([\w/]+\.py)\n")
# The sizes the examples run at in this test: defaults they do not set, lowered (README, "Python API").
SMALL_GUIDANCE = dict(num_views=2, view_size=56, grid_resolution=32)
SMALL_SAMPLING = dict(num_inference_steps=6, octree_resolution=64)
CLI_SMALL = ["--steps", "6", "--views", "2", "--view-size", "56", "--grid", "32", "--octree-resolution", "64"]


@dataclass(frozen=True)
class Block:
    """One fenced code block of the README."""

    language: str
    code: str
    heading: str  # the nearest heading above it
    line: int  # where its code starts in README.md

    @property
    def plugin_file(self) -> str | None:
        match = PLUGIN_FILE.match(self.code)
        return match.group(1) if match else None

    @property
    def talks_to_the_app(self) -> bool:
        return "gradio_client" in self.code


def readme_blocks(text: str | None = None) -> list[Block]:
    """Every fenced block of the README, in order."""
    text = README.read_text(encoding="utf-8") if text is None else text
    blocks, heading, fence, start, body = [], "", None, 0, []
    for number, line in enumerate(text.splitlines(), start=1):
        if fence is None and line.startswith("#") and not line.startswith("#!"):
            heading = line.lstrip("#").strip()
        elif fence is None and line.startswith("```"):
            fence, start, body = line[3:].strip(), number + 1, []
        elif fence is not None and line.startswith("```"):
            blocks.append(Block(fence, "\n".join(body) + "\n", heading, start))
            fence = None
        elif fence is not None:
            body.append(line)
    return blocks


def python_blocks() -> list[Block]:
    return [block for block in readme_blocks() if block.language == "python"]


def program_blocks() -> list[Block]:
    """The examples run as programs here (not plug-in files, not the app client)."""
    return [b for b in python_blocks() if b.plugin_file is None and not b.talks_to_the_app]


def offline_line() -> str:
    """The one line the README tells readers to swap in to run the examples offline."""
    prose = re.sub(r"```.*?```", "", README.read_text(encoding="utf-8"), flags=re.S)
    found = DOCUMENTED_SWAP.findall(" ".join(prose.split()))
    assert len(found) == 1, "README.md must document the offline loading line once ('replace the loading line with `…`')"
    return found[0]


def offline(code: str) -> str:
    """`code` with every loading line replaced by the documented offline line."""
    return LOADING_LINE.sub(offline_line(), code)


def lower_defaults(monkeypatch, function, **values) -> None:
    """Set the defaults of `function`'s parameters `values` (restored after the test)."""
    parameters = inspect.signature(function).parameters
    positional = [p.name for p in parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    defaults, keyword = list(function.__defaults__ or ()), dict(function.__kwdefaults__ or {})
    with_defaults = positional[len(positional) - len(defaults):]
    for name, value in values.items():
        assert name in parameters, f"{function.__qualname__} has no parameter {name!r}"
        if name in keyword:
            keyword[name] = value
        else:
            defaults[with_defaults.index(name)] = value
    monkeypatch.setattr(function, "__defaults__", tuple(defaults))
    monkeypatch.setattr(function, "__kwdefaults__", keyword or None)


@pytest.fixture
def example_folder(tmp_path, tiny_cache, monkeypatch):
    """A working folder with the repository's examples/, this session's tiny checkpoints and small
    defaults, as a reader's shell in a checkout would be."""
    from vlm3d_ttg.guidance import GuidanceConfig
    from vlm3d_ttg.sampler import GuidedSampler

    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VLM3D_TTG_CACHE", str(tiny_cache))
    lower_defaults(monkeypatch, GuidanceConfig.__init__, **SMALL_GUIDANCE)
    lower_defaults(monkeypatch, GuidedSampler.__call__, **SMALL_SAMPLING)
    return tmp_path


# ---- what each example must have done (by the heading it sits under) -----------------------------------


def _api_example_ran(names: dict) -> None:
    result, final = names["result"], names["final"]
    guided = [r for r in result.records if r.guided]
    assert guided and all(r.skipped is None and math.isfinite(r.r) for r in guided)  # guidance ran
    assert math.isfinite(float(final.r)) and Path("robot.glb").stat().st_size > 1000


def _term_example_ran(names: dict) -> None:
    result = names["result"]
    scored = names["reward"].score_mesh(result.mesh.vertices, result.mesh.faces)
    assert set(scored.terms) == {"vlm", "slim"} and -1.0 <= scored.terms["slim"] < 0.0  # the new term counts


def _reprojection_ran(names: dict) -> None:
    pixels, size = np.asarray(names["pixels"]), names["cam"]["image_size"]
    assert pixels.shape == (len(names["mesh"].vertices), 2)
    assert np.isfinite(pixels).all() and (pixels >= 0).all() and (pixels <= size).all()  # the mesh is in view


def _write_robot_manifest(names: dict) -> None:
    """What the README's `vlm3d-ttg generate examples/toy_robot.png … --out robot.glb` leaves (tiny preset)."""
    from vlm3d_ttg.cli import main

    assert main(["generate", "examples/toy_robot.png", "--prompt", "a small toy robot with a round head",
                 "--out", "robot.glb", "--preset", "tiny", "--quiet", *CLI_SMALL]) == 0


SETUP = {"Staying faithful to the input picture": _write_robot_manifest}
CHECKS = {"Python API": _api_example_ran, "Rewards are sums of terms": _term_example_ran,
          "Staying faithful to the input picture": _reprojection_ran}


def _for(table: dict, heading: str):
    return [action for key, action in table.items() if heading.startswith(key)]


# ---- the tests --------------------------------------------------------------------------------------------


def test_every_python_block_is_run():
    blocks = python_blocks()
    runs_here = program_blocks()
    plugin_files = [b for b in blocks if b.plugin_file]
    app = [b for b in blocks if b.talks_to_the_app]
    assert len(runs_here) + len(plugin_files) + len(app) == len(blocks)
    assert len(runs_here) >= 3 and len(plugin_files) == 2 and len(app) == 1
    checked = {key for block in runs_here for key in CHECKS if block.heading.startswith(key)}
    assert checked == set(CHECKS), f"an example the checks expect is gone: {sorted(set(CHECKS) - checked)}"
    assert any(LOADING_LINE.search(b.code) for b in runs_here) and offline_line().startswith("models = ")


def test_the_python_examples_run_on_the_tiny_preset(example_folder, capsys):
    names: dict = {"__name__": "__readme__"}
    ran = []
    for block in program_blocks():
        for setup in _for(SETUP, block.heading):
            setup(names)
        exec(compile(offline(block.code), f"README.md:{block.line}", "exec"), names)  # noqa: S102 - the README's own code
        for check in _for(CHECKS, block.heading):
            check(names)
        ran.append(block.heading)
    assert names["models"].preset == "tiny"  # the swap took effect: no real model was asked for
    assert "robot.glb" in str(sorted(p.name for p in example_folder.iterdir()))
    assert len(ran) == len(program_blocks())


# ---- the plug-in example ----------------------------------------------------------------------------------


def _protocol_members(protocol: type) -> set[str]:
    return set(getattr(protocol, "__annotations__", {})) | {
        name for name, value in vars(protocol).items() if not name.startswith("_") and (callable(value) or isinstance(value, property))}


def _class_members_the_cli_asks_for() -> set[str]:
    """What the library asks of a backbone class itself (`backbone_class(...).NAME`), read from its source."""
    asked = set()
    for path in (ROOT / "vlm3d_ttg").rglob("*.py"):
        asked |= set(re.findall(r"backbone_class\([^)]*\)\.(\w+)", path.read_text(encoding="utf-8")))
    return asked


def install_plugin_example(root: Path) -> str:
    """The README's plug-in files and its pyproject's entry points, as `pip install` would leave them."""
    project = tomllib.loads(next(b.code for b in readme_blocks() if b.language == "toml" and "entry-points" in b.code))
    for block in python_blocks():
        if block.plugin_file:
            path = root / block.plugin_file
            path.parent.mkdir(parents=True, exist_ok=True)
            (path.parent / "__init__.py").touch()
            path.write_text(block.code)
    name = project["project"]["name"].replace("-", "_")
    info = root / f"{name}-{project['project']['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {project['project']['version']}\n")
    groups = project["project"]["entry-points"]
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{key} = {target}\n" for key, target in entries.items()) + "\n"
        for group, entries in groups.items()))
    return name


@pytest.fixture
def plugin_example(tmp_path, monkeypatch):
    from vlm3d_ttg.backbones import BACKBONES
    from vlm3d_ttg.critic.families import FAMILIES

    saved = dict(BACKBONES), dict(FAMILIES)
    install_plugin_example(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for registry, before in zip((BACKBONES, FAMILIES), saved):
        registry.clear()
        registry.update(before)
    for module in [m for m in sys.modules if m.split(".")[0] == "my_generator"]:
        del sys.modules[module]


def test_the_plugin_example_is_found_and_complete(plugin_example):
    from vlm3d_ttg.backbones import Backbone, backbone_class, load_backbone_plugins
    from vlm3d_ttg.critic.families import check_family_view_size, family_of, get_family, load_critic_plugins

    load_backbone_plugins()
    load_critic_plugins()
    cls = backbone_class("my-generator")
    assert cls.__module__ == "my_generator.backbone"
    missing = (_protocol_members(Backbone) | _class_members_the_cli_asks_for()) - set(dir(cls))
    assert not missing, f"the README's backbone skeleton lacks {sorted(missing)}"
    for name, member in vars(Backbone).items():  # same parameters as the protocol's methods
        if inspect.isfunction(member) and not name.startswith("_"):
            assert list(inspect.signature(getattr(cls, name)).parameters) == list(inspect.signature(member).parameters), name
    assert isinstance(cls(model=None), Backbone)
    family = get_family("my-vlm")
    assert family_of({"model_type": "my_vlm"}) is family and family.critic_class.family == "my-vlm"
    assert check_family_view_size("my-vlm", 56) == 56


def test_the_design_docs_plugin_example_is_the_readmes():
    """docs/design.md §11 quotes the same complete example (so the checked one is the documented one)."""
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    section = design[design.index("## §11 "):]
    quoted = [b for b in readme_blocks() if b.plugin_file or (b.language == "toml" and "entry-points" in b.code)]
    assert len(quoted) == 3
    for block in quoted:
        assert f"```{block.language}\n{block.code}```" in section, f"docs/design.md §11 differs from README.md:{block.line}"
