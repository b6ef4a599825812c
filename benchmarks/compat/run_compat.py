"""Run the test suite against old dependency versions: the floors in pyproject.toml, and a common GPU image.

For each named environment this creates a virtual environment (outside the repository by default),
installs the project with `pip install -e .[dev]` plus the environment's pins, checks that pip
installed exactly the pinned versions, runs the test suite in it, and prints one line per
environment. It is not part of `make test`: each environment downloads several GB (the registry's
Linux torch wheels are CUDA builds, which also run on CPU) and the suite takes a while.

Environments:
  floor      torch / torchvision / transformers / numpy at the `>=` floors read from pyproject.toml,
             so this checks exactly what pyproject.toml promises.
  gpu-image  torch 2.11.0 + torchvision 0.26.0 + transformers 5.17.0, a common preinstalled GPU image.

    python3 benchmarks/compat/run_compat.py                      # both, venvs in $VLM3D_COMPAT_VENVS
    python3 benchmarks/compat/run_compat.py --envs floor --reuse # keep an existing venv if its pins match
    python3 benchmarks/compat/run_compat.py --write-results      # also rewrite its section of RESULTS.md

Everything else (the other dependencies) resolves as pip decides for those pins. Logs (pip, pytest)
and a JSON summary go to the venv root.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[2]
PINNED = ("torch", "torchvision", "transformers", "numpy")
# What a common preinstalled CUDA image ships; torchvision 0.26 is torch 2.11's companion release.
GPU_IMAGE = {"torch": "2.11.0", "torchvision": "0.26.0", "transformers": "5.17.0"}
DEFAULT_VENV_ROOT = Path(os.environ.get("VLM3D_COMPAT_VENVS", Path.home() / ".cache" / "vlm3d-ttg-compat"))
DEFAULT_PYTEST_ARGS = "-q -p no:cacheprovider"

SECTION_BEGIN = "<!-- compat:begin -->"
SECTION_END = "<!-- compat:end -->"


def floor_pins(pyproject: Path = REPO / "pyproject.toml") -> dict[str, str]:
    """{package: version} from the `name>=version` floors of PINNED in pyproject.toml."""
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pins = {}
    for requirement in dependencies:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*(\[[^]]*\])?\s*>=\s*([0-9][0-9A-Za-z.]*)\s*(,.*)?", requirement)
        if match and match.group(1).lower() in PINNED:
            pins[match.group(1).lower()] = match.group(3)
    missing = set(PINNED) - set(pins)
    if missing:
        raise SystemExit(f"pyproject.toml has no '>=' floor for {sorted(missing)}")
    return pins


def environments() -> dict[str, dict[str, str]]:
    return {"floor": floor_pins(), "gpu-image": dict(GPU_IMAGE)}


def _run(command: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    with log.open("a") as out:
        out.write(f"\n$ {shlex.join(command)}\n")
        out.flush()
        return subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env).returncode


def installed_versions(python: Path) -> dict[str, str]:
    """{name: version} of everything in the venv (pip's normalised lower-case names)."""
    freeze = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True, text=True, check=True,
    )
    return {item["name"].lower().replace("_", "-"): item["version"] for item in json.loads(freeze.stdout)}


def _same_version(installed: str | None, pinned: str) -> bool:
    # "2.4" pins 2.4.0; a local tag (+cu121) is the same release.
    if installed is None:
        return False
    release = installed.split("+")[0].split(".")
    wanted = pinned.split(".")
    width = max(len(release), len(wanted))
    return release + ["0"] * (width - len(release)) == wanted + ["0"] * (width - len(wanted))


def _pins_match(python: Path, pins: dict[str, str]) -> bool:
    if not python.exists():
        return False
    versions = installed_versions(python)
    return all(_same_version(versions.get(name), version) for name, version in pins.items())


def parse_summary(output: str) -> dict[str, int | float]:
    """Counts from pytest's last summary line ('3 failed, 120 passed, 2 skipped in 95.1s')."""
    lines = [line for line in output.splitlines() if re.search(r"\b(passed|failed|error|errors|no tests ran)\b", line)]
    counts: dict[str, int | float] = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0, "xfailed": 0, "xpassed": 0}
    if not lines:
        return counts
    summary = lines[-1]
    for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)", summary):
        counts["errors" if word.startswith("error") else word] = int(number)
    return counts


def run_environment(name: str, pins: dict[str, str], root: Path, *, reuse: bool, python: str, pytest_args: str) -> dict:
    venv = root / name
    py = venv / "bin" / "python"
    install_log, test_log = root / f"{name}.pip.log", root / f"{name}.pytest.log"
    result: dict = {"environment": name, "pins": pins, "venv": str(venv)}
    started = time.monotonic()
    result["reused"] = reuse and _pins_match(py, pins)
    if not result["reused"]:
        install_log.write_text("")
        if _run([python, "-m", "venv", "--clear", str(venv)], install_log):
            return result | {"status": "venv creation failed", "log": str(install_log)}
        install = [str(py), "-m", "pip", "install", "--progress-bar", "off", "-e", f"{REPO}[dev]"]
        install += [f"{package}=={version}" for package, version in pins.items()]
        if _run(install, install_log):
            return result | {"status": "install failed", "log": str(install_log)}
    result["install_seconds"] = round(time.monotonic() - started, 1)
    versions = installed_versions(py)
    result["versions"] = {
        package: versions.get(package, "missing")
        for package in (*PINNED, "hy3dgen", "diffusers", "accelerate", "huggingface-hub", "tokenizers")
    }
    wrong = {p: versions.get(p) for p, v in pins.items() if not _same_version(versions.get(p), v)}
    if wrong:
        return result | {"status": f"pip installed other versions than pinned: {wrong}", "log": str(install_log)}

    command = [str(py), "-m", "pytest", *shlex.split(pytest_args)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO))
    test_log.write_text("")
    started = time.monotonic()
    returncode = _run(command, test_log, env)
    result["test_seconds"] = round(time.monotonic() - started, 1)
    result["counts"] = parse_summary(test_log.read_text())
    result["status"] = "passed" if returncode == 0 else f"failed (pytest exit {returncode})"
    result["command"] = f"HF_HUB_OFFLINE=1 PYTHONPATH=<repo> {venv}/bin/python -m pytest {pytest_args}"
    result["log"] = str(test_log)
    return result


def one_line(result: dict) -> str:
    versions = " ".join(f"{k}={v}" for k, v in result.get("versions", {}).items() if k in PINNED)
    counts = result.get("counts")
    told = ", ".join(f"{n} {k}" for k, n in counts.items() if n) if counts else ""
    timing = f" in {result['test_seconds']:.0f}s" if "test_seconds" in result else ""
    return f"{result['environment']:10s} {result['status']}: {told}{timing} [{versions}]"


def results_section(results: list[dict]) -> str:
    machine = f"{platform.machine()}, {os.cpu_count()} logical CPUs, no GPU used (CPU tests), Python {platform.python_version()}"
    lines = [
        SECTION_BEGIN,
        "## Version floors (`benchmarks/compat/run_compat.py`)",
        "",
        f"Written {datetime.date.today().isoformat()}. Machine: {machine}; the cores are shared with other jobs,",
        "so wall times are indicative only. Each environment is a fresh venv with `pip install -e .[dev]`",
        "plus the pins below; everything else resolved by pip. The suite is the whole `tests/` folder.",
        "",
        "| environment | torch | torchvision | transformers | numpy | other resolved | suite | passed | failed | skipped | errors | wall time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        versions = result.get("versions", {})
        others = ", ".join(f"{k} {versions[k]}" for k in versions if k not in PINNED)
        counts = result.get("counts", {})
        wall = f"{result['test_seconds']:.0f} s" if "test_seconds" in result else "—"
        lines.append(
            f"| {result['environment']} | "
            + " | ".join(versions.get(p, "—") for p in PINNED)
            + f" | {others} | {result['status']} | "
            + " | ".join(str(counts.get(k, "—")) for k in ("passed", "failed", "skipped", "errors"))
            + f" | {wall} |"
        )
    lines += ["", "Commands (each environment's run, then what the script ran in it):", "", "```bash"]
    for result in results:
        pins = " ".join(f"{p}=={v}" for p, v in result["pins"].items())
        lines += [
            f"# {result['environment']} ({result.get('date', 'date unknown')}):",
            result.get("invocation", ""),
            f"python3 -m venv {result['venv']}",
            f"{result['venv']}/bin/python -m pip install -e '.[dev]' {pins}"
            + ("  # earlier: --reuse kept this venv, its pins matched" if result.get("reused") else ""),
        ]
        if "command" in result:
            lines.append(result["command"])
    lines += ["```", "", SECTION_END]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", default="floor,gpu-image", help="comma-separated, from: floor, gpu-image")
    parser.add_argument("--venv-root", type=Path, default=DEFAULT_VENV_ROOT, help="where the venvs go (default %(default)s, or $VLM3D_COMPAT_VENVS)")
    parser.add_argument("--reuse", action="store_true", help="keep an existing venv whose pinned packages already match")
    parser.add_argument("--python", default=sys.executable, help="interpreter the venvs are made from")
    parser.add_argument("--pytest-args", default=DEFAULT_PYTEST_ARGS)
    parser.add_argument("--write-results", action="store_true", help="rewrite this script's section of benchmarks/RESULTS.md")
    parser.add_argument(
        "--report-only", action="store_true",
        help="run nothing: take each environment's saved result (<venv-root>/<name>.result.json), e.g. with --write-results",
    )
    args = parser.parse_args(argv)

    known = environments()
    names = [name.strip() for name in args.envs.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        parser.error(f"unknown environment(s) {unknown}; choose from {sorted(known)}")
    root = args.venv_root.expanduser().resolve()
    if root == REPO or REPO in root.parents:
        parser.error(f"--venv-root {root} is inside the repository; put the venvs elsewhere")
    root.mkdir(parents=True, exist_ok=True)

    invocation = shlex.join(["python3", "benchmarks/compat/run_compat.py", *(argv if argv is not None else sys.argv[1:])])
    results = []
    for name in names:
        saved = root / f"{name}.result.json"
        if args.report_only:
            if not saved.exists():
                parser.error(f"--report-only: no saved result {saved}; run the environment first")
            result = json.loads(saved.read_text())
            if result["pins"] != known[name]:
                parser.error(f"--report-only: {saved} was made with {result['pins']}, pyproject now says {known[name]}")
        else:
            print(f"{name}: {known[name]} -> {root / name}", flush=True)
            result = run_environment(name, known[name], root, reuse=args.reuse, python=args.python, pytest_args=args.pytest_args)
            result["date"] = datetime.date.today().isoformat()
            result["invocation"] = invocation
            saved.write_text(json.dumps(result, indent=2) + "\n")
        results.append(result)
        print(one_line(result), flush=True)
    if args.write_results:
        sys.path.insert(0, str(REPO))
        sys.path.insert(0, str(REPO / "benchmarks"))
        from results_file import write_results_section

        write_results_section(SECTION_BEGIN, SECTION_END, results_section(results))
    return 0 if all(result["status"] == "passed" for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
