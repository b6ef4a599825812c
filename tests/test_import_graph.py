"""The package's imports point one way: no module of `vlm3d_ttg` imports itself through others.

The graph is read from the source with `ast`, not by importing: every `import` and `from ... import`
that names a `vlm3d_ttg` module counts, wherever it is written (module level, inside a function,
under `if TYPE_CHECKING`), because a deferred import only hides a cycle, it does not remove it.
An edge points at the module the statement names (a package means its `__init__`), as import
linters count it; `from .pkg import sub` points at the submodule when `sub` is one.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "vlm3d_ttg"
ROOT = Path(__file__).resolve().parents[1]


def _module_files() -> dict[str, Path]:
    """{dotted module name: file} for every module of the package."""
    modules = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a `from X import ...` statement names (relative levels resolved)."""
    if node.level == 0:
        return node.module or ""
    # Level 1 is the package the module lives in (the module itself for an __init__).
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """{module: the package modules it imports}, from the source of every module of the package."""
    files = _module_files()
    graph: dict[str, set[str]] = {name: set() for name in files}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _resolve_from(module, is_package, node)
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    targets.append(submodule if submodule in files else source)
            for target in targets:
                if target != PACKAGE and not target.startswith(PACKAGE + "."):
                    continue
                # `import vlm3d_ttg.a.b` names module a.b; a symbol path falls back to its module.
                while target not in files:
                    target = target.rsplit(".", 1)[0]
                if target != module:
                    graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_reader_sees_relative_deferred_and_package_imports():
    # The reader itself, on imports known to exist: a relative import at module level, a relative
    # import inside a function, and `from .pkg import submodule`.
    graph = import_graph()
    assert "vlm3d_ttg.render.cameras" in graph["vlm3d_ttg.render.renderer"]  # from .cameras import Cameras
    assert "vlm3d_ttg.commands.score" in graph["vlm3d_ttg.cli"]  # inside _register_commands
    assert "vlm3d_ttg.logs" in graph["vlm3d_ttg.cli"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycle():
    cycles = _cycles(import_graph())
    assert cycles == [], "import cycles (each a set of modules that import each other): " + "; ".join(
        " ↔ ".join(cycle) for cycle in cycles
    )


def test_cli_and_commands_do_not_import_each_other():
    graph = import_graph()
    commands = [name for name in graph if name.startswith("vlm3d_ttg.commands.")]
    assert commands
    for command in commands:
        assert "vlm3d_ttg.cli" not in graph[command], f"{command} imports the CLI module"


def test_reward_imports_nothing_from_the_sampler():
    # The reward protocol and its result type live where both import them (issue 10, item 2):
    # the reward must not depend on the loop that calls it.
    assert "vlm3d_ttg.sampler" not in import_graph()["vlm3d_ttg.reward"]


# Where hy3dgen may be imported, and why (issue 21): the generator lives behind the backbone protocol.
HY3DGEN_MODULES = {
    "vlm3d_ttg.backbones.hunyuan3d2": "the Hunyuan3D-2 backbone: hy3dgen's pipeline parts behind the protocol",
    "vlm3d_ttg.backbones.hunyuan3d2_models": "the Hunyuan3D-2 backbone's loader: hy3dgen's own from_pretrained",
    "vlm3d_ttg.tiny.hunyuan": "writes the tiny checkpoint with hy3dgen's classes, in its format",
    "vlm3d_ttg.tiny.realsize": "writes and builds the realsize checkpoint with hy3dgen's classes",
    "vlm3d_ttg.dinov2_names": "lets hy3dgen's loader read the checkpoint's DINOv2 names (used by the loader)",
    "vlm3d_ttg.logs": "quiets hy3dgen's own logger",
    "vlm3d_ttg.inputs": "hy3dgen's background remover (rembg) for input images, not the shape model",
    "vlm3d_ttg.text2image": "hy3dgen's text-to-image recipe and background remover, not the shape model",
    "vlm3d_ttg.export": "hy3dgen's mesh postprocessors, which act on any trimesh",
}
# The guidance path sees only the backbone protocol.
GUIDANCE_PATH = ("sampler", "search", "compute", "reward", "surface", "guidance", "terms", "generation")


def _hy3dgen_importers() -> set[str]:
    """Modules of the package with an import statement naming hy3dgen (anywhere in the file)."""
    found = set()
    for module, path in _module_files().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            if any(name == "hy3dgen" or name.startswith("hy3dgen.") for name in names):
                found.add(module)
    return found


def test_hy3dgen_is_imported_only_behind_the_backbone_and_by_the_loaders():
    importers = _hy3dgen_importers()
    assert "vlm3d_ttg.backbones.hunyuan3d2" in importers  # the reader sees hy3dgen imports
    assert importers <= set(HY3DGEN_MODULES), f"hy3dgen imported outside its places: {sorted(importers - set(HY3DGEN_MODULES))}"
    for name in GUIDANCE_PATH:
        assert f"vlm3d_ttg.{name}" not in importers, f"vlm3d_ttg.{name} imports hy3dgen"


def test_the_sampling_loop_reaches_no_hy3dgen_module_through_its_imports():
    """The loop, search, reward and surface reach hy3dgen only through the registry (a name, imported
    when a Hunyuan backbone is asked for), never through an import statement."""
    graph = import_graph()
    importers = _hy3dgen_importers()
    for name in ("sampler", "search", "compute", "reward", "surface", "guidance", "terms"):
        seen, todo = set(), [f"vlm3d_ttg.{name}"]
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo.extend(graph[module])
        assert not seen & importers, f"vlm3d_ttg.{name} reaches hy3dgen through {sorted(seen & importers)}"


# Who may import the offline test-checkpoint writers (`vlm3d_ttg.tiny`), and why (issue 29, item 6):
# only the loaders that build an offline preset's models, never the library they feed. The offline
# presets' own checkpoints are reached by name (`presets.Preset.writers`, imported when such a preset loads).
TINY_IMPORTERS = {
    "vlm3d_ttg.text2image": "make_input_image(tiny=True) loads the tiny text-to-image pipeline",
    "vlm3d_ttg.bench.runner": "the benchmark's offline metric models (tiny CLIP, judge, Inception)",
    "vlm3d_ttg.miniworld.critic_model": "the mini critics are built on the tiny Qwen recipe (its tokenizer and chat template)",
}


def test_the_library_never_imports_the_offline_checkpoint_writers():
    graph = import_graph()
    importers = {module for module, targets in graph.items() if not module.startswith("vlm3d_ttg.tiny")
                 and any(t == "vlm3d_ttg.tiny" or t.startswith("vlm3d_ttg.tiny.") for t in targets)}
    assert "vlm3d_ttg.text2image" in importers  # the reader sees the sanctioned loaders
    assert importers <= set(TINY_IMPORTERS), f"vlm3d_ttg.tiny imported by library code: {sorted(importers - set(TINY_IMPORTERS))}"
    # tiny imports the critic (to register its writers), never the reverse: no module of these reaches tiny.
    for name in ("critic", "backbones", "sampler", "search", "compute", "reward", "terms", "surface", "render",
                 "guidance", "models"):
        seen, todo = set(), [module for module in graph if module == f"vlm3d_ttg.{name}" or module.startswith(f"vlm3d_ttg.{name}.")]
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo.extend(graph[module])
        assert not any(m.startswith("vlm3d_ttg.tiny") for m in seen), f"vlm3d_ttg.{name} reaches vlm3d_ttg.tiny"
