"""docs/design.md is the document the code cites: every cited section exists, and its module map
names every module of the package (and nothing that is gone)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "design.md"
# Where citations live: the package, the benchmarks, the tests and the README.
CITING_FILES = sorted(
    [*ROOT.joinpath("vlm3d_ttg").rglob("*.py"), *ROOT.joinpath("benchmarks").rglob("*.py"),
     *ROOT.joinpath("benchmarks").rglob("*.md"), *ROOT.joinpath("tests").rglob("*.py"), ROOT / "README.md"]
)
CITATION = re.compile(r"docs/design\.md §(\d+)")
# The planning card's form ("DESIGN §4") named a file that is not in the repository.
UNRESOLVABLE = re.compile("DESIGN" + r" §\d")


def _sections() -> dict[int, str]:
    """{number: title} of the '## §N Title' headings."""
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^## §(\d+) (.+)$", DOC.read_text(encoding="utf-8"), re.M)}


def _section_text(number: int) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = re.search(rf"^## §{number} .*$", text, re.M)
    assert start is not None
    following = re.search(r"^## §\d+ ", text[start.end():], re.M)
    return text[start.end(): start.end() + following.start()] if following else text[start.end():]


def test_sections_are_numbered_from_one_without_gaps():
    numbers = list(_sections())
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 8


def test_every_citation_names_an_existing_section():
    sections = _sections()
    citations = []
    for path in CITING_FILES:
        text = path.read_text(encoding="utf-8")
        for match in CITATION.finditer(text):
            citations.append((path.relative_to(ROOT), int(match.group(1))))
    assert len(citations) >= 5  # the reader finds the citations the code is known to make
    missing = [f"{path}: §{number}" for path, number in citations if number not in sections]
    assert not missing, f"citations of sections docs/design.md does not have: {missing}"
    # Cross-references inside the document itself ("(§2)") must resolve too.
    inner = {int(n) for n in re.findall(r"§(\d+)", DOC.read_text(encoding="utf-8"))}
    assert inner <= set(sections), f"docs/design.md refers to missing sections {sorted(inner - set(sections))}"


def test_no_citation_names_a_document_outside_the_repository():
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in CITING_FILES
        if path != Path(__file__).resolve()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if UNRESOLVABLE.search(line)
    ]
    assert not offenders, f"cite 'docs/design.md §N' instead: {offenders}"


def test_module_map_lists_exactly_the_package_modules():
    module_map = _section_text(8)
    listed = set(re.findall(r"^- `(vlm3d_ttg/[\w/]+\.py)`", module_map, re.M))
    present = {str(path.relative_to(ROOT)) for path in ROOT.joinpath("vlm3d_ttg").rglob("*.py")}
    assert not present - listed, f"modules missing from docs/design.md §8: {sorted(present - listed)}"
    assert not listed - present, f"docs/design.md §8 lists modules that do not exist: {sorted(listed - present)}"
