"""Benchmark sets: which prompts (and input images) a quality benchmark runs on.

A set is a JSON or CSV file of rows with the fields

| field  | required | meaning                                                                          |
|--------|----------|----------------------------------------------------------------------------------|
| id     | yes      | unique name of the item; letters, digits, `_`, `-`, `.` (it becomes a folder)    |
| prompt | yes      | the text description the critic, CLIP-D and the judge check the shape against    |
| image  | no       | conditioning image, relative to the set file's folder (RGBA with a transparent   |
|        |          | background is best); empty or missing: made from the prompt by text-to-image     |
| seed   | no       | sampler seed of this item (default: derived from the run's --seed and the id)    |
| notes  | no       | free text, ignored                                                               |

JSON: either a list of row objects, or an object `{"name": ..., "description": ..., "items": [rows]}`.
CSV: a header line naming the columns (`id,prompt` at least), one row per item.

`load_bench_set` checks every row it keeps (fields, ids, prompt text: markup, control characters and
length as the critic checks them, images: present, readable, usable as a condition) and reports all
problems at once, each with its row number, before any model is loaded. With `limit`, rows after
the first `limit` are not read. A line break inside a quoted CSV cell is kept (and so refused in a
prompt, with its row number), never dropped.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError

REQUIRED_FIELDS = ("id", "prompt")
OPTIONAL_FIELDS = ("image", "seed", "notes")
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
# How many problems one error message lists before "... and N more".
MAX_LISTED_PROBLEMS = 20


@dataclass(frozen=True)
class BenchItem:
    """One benchmark item: a prompt, and the conditioning image (None: to be made by text-to-image)."""

    id: str
    prompt: str
    image: Path | None = None
    seed: int | None = None
    notes: str = ""

    def seed_for(self, run_seed: int) -> int:
        """The sampler seed of this item: its own, else `run_seed` plus a stable hash of the id."""
        if self.seed is not None:
            return self.seed
        return (run_seed + zlib.crc32(self.id.encode("utf-8"))) % (2**31 - 1)


@dataclass(frozen=True)
class BenchSet:
    """A validated benchmark set: its items in file order, and where it came from."""

    path: Path
    name: str
    items: list[BenchItem]
    description: str = ""

    @property
    def items_without_image(self) -> list[BenchItem]:
        """Items whose conditioning image must come from text-to-image."""
        return [item for item in self.items if item.image is None]

    def select(self, ids: list[str] | None = None, limit: int | None = None) -> "BenchSet":
        """The set restricted to `ids` (in set order; unknown ids are an error) and/or its first `limit` items."""
        items = self.items
        if ids:
            known = {item.id for item in items}
            unknown = [i for i in ids if i not in known]
            if unknown:
                raise InvalidInputError(f"Unknown item id(s) {unknown} in {self.path}; known: {sorted(known)}")
            wanted = set(ids)
            items = [item for item in items if item.id in wanted]
        if limit is not None:
            if limit < 1:
                raise InvalidInputError(f"--limit must be ≥ 1, got {limit}")
            items = items[:limit]
        return BenchSet(self.path, self.name, list(items), self.description)


def _read_rows(path: Path) -> tuple[list[dict[str, Any]], str, str]:
    """Rows (as dicts) of a JSON or CSV set file, with the set's name and description."""
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheets often write a BOM
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"Benchmark set '{path}' is not UTF-8 text ({exc}).") from None
    if suffix == ".json":
        try:
            content = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"Benchmark set '{path}' is not valid JSON: {exc}") from None
        except RecursionError:
            raise InvalidInputError(
                f"Benchmark set '{path}' nests lists or objects too deeply to be a set (rows are objects in one list)."
            ) from None
        name, description = path.stem, ""
        if isinstance(content, dict):
            if "items" not in content:
                raise InvalidInputError(
                    f"Benchmark set '{path}': a JSON object needs an 'items' list (or give a top-level list of rows)."
                )
            extra = sorted(set(content) - {"name", "description", "items"})
            if extra:
                raise InvalidInputError(
                    f"Benchmark set '{path}': unknown top-level keys {extra}; allowed: name, description, items."
                )
            name = str(content.get("name", name))
            description = str(content.get("description", ""))
            content = content["items"]
        if not isinstance(content, list):
            raise InvalidInputError(f"Benchmark set '{path}': expected a list of rows, got {type(content).__name__}.")
        return content, name, description
    if suffix == ".csv":
        # newline="" keeps a line break inside a quoted cell as part of the cell (the text-hygiene check
        # then refuses it with its row number); splitting the text into lines first would drop it.
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if reader.fieldnames is None:
            raise InvalidInputError(f"Benchmark set '{path}' is empty; the first line must name the columns (id,prompt[,image]).")
        header = [h.strip() for h in reader.fieldnames]
        missing = [f for f in REQUIRED_FIELDS if f not in header]
        if missing:
            raise InvalidInputError(
                f"Benchmark set '{path}': the header {header} lacks column(s) {missing}; "
                f"columns are {list(REQUIRED_FIELDS + OPTIONAL_FIELDS)}."
            )
        rows = []
        try:
            raws = list(reader)
        except csv.Error as exc:
            raise InvalidInputError(f"Benchmark set '{path}' is not valid CSV: {exc}") from None
        for raw in raws:
            if None in raw:  # more cells than header columns
                rows.append({"__extra_cells__": raw[None], **{k.strip(): v for k, v in raw.items() if k is not None}})
            else:
                rows.append({k.strip(): v for k, v in raw.items()})
        return rows, path.stem, ""
    raise InvalidInputError(f"Benchmark set '{path}' must be a .json or .csv file.")


def _check_row(row: Any, number: int, base: Path, seen: dict[str, int]) -> tuple[BenchItem | None, list[str]]:
    """The item of one row, or None with the problems found (each prefixed with the row number)."""
    where = f"row {number}"
    if not isinstance(row, dict):
        return None, [f"{where}: expected an object with id and prompt, got {type(row).__name__}"]
    problems: list[str] = []
    raw_id = row.get("id")
    item_id = str(raw_id).strip() if raw_id is not None else ""
    if item_id:
        where = f"row {number} (id '{item_id}')"
    if "__extra_cells__" in row:
        problems.append(f"{where}: more cells than header columns (quote cells that contain commas)")
    unknown = sorted(set(row) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS) - {"__extra_cells__"})
    if unknown:
        problems.append(f"{where}: unknown field(s) {unknown}; fields are {list(REQUIRED_FIELDS + OPTIONAL_FIELDS)}")
    if not item_id:
        problems.append(f"{where}: 'id' is missing or empty")
    elif not ID_PATTERN.match(item_id):
        problems.append(f"{where}: id must be 1–100 letters, digits, '_', '-' or '.', starting with a letter or digit")
    elif item_id in seen:
        problems.append(f"{where}: duplicate id (first used in row {seen[item_id]})")
    else:
        seen[item_id] = number

    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        problems.append(f"{where}: 'prompt' is missing or empty")
    else:
        from ..critic.queries import normalize_description

        try:  # the critic's own checks (markup, control characters, length), now rather than mid-run
            normalize_description(prompt)
        except InvalidInputError as exc:
            problems.append(f"{where}: {exc}")

    seed: int | None = None
    raw_seed = row.get("seed")
    if raw_seed not in (None, ""):
        try:
            if isinstance(raw_seed, bool) or (isinstance(raw_seed, float) and not raw_seed.is_integer()):
                raise ValueError
            seed = int(raw_seed)
            if not 0 <= seed < 2**31 - 1:
                raise ValueError
        except (TypeError, ValueError):
            problems.append(f"{where}: seed must be an integer in [0, 2^31 - 1), got {raw_seed!r}")

    image: Path | None = None
    raw_image = row.get("image")
    if raw_image not in (None, ""):
        if not isinstance(raw_image, str):
            problems.append(f"{where}: image must be a path string, got {type(raw_image).__name__}")
        else:
            image = Path(os.path.expanduser(raw_image.strip()))
            if not image.is_absolute():
                image = base / image

    notes = row.get("notes") or ""
    if problems:
        return None, problems
    return BenchItem(item_id, prompt.strip(), image, seed, str(notes)), []


def _image_problems(image: Path) -> list[str]:
    """Why `image` cannot condition the shape model (empty list: it can)."""
    from ..inputs import check_condition_image

    try:
        check_condition_image(image)
    except InvalidInputError as exc:
        return [str(exc)]
    return []


def load_bench_set(path: str | os.PathLike, *, ids: list[str] | None = None, limit: int | None = None) -> BenchSet:
    """Read and validate a benchmark set file (JSON or CSV, see the module docstring).

    `ids` keeps those rows (in set order), `limit` the first `limit` of them; with a limit and no
    ids, rows after the first `limit` are not read at all, so `--limit` bounds the work on a huge set.
    Every kept row is checked fully (fields, id, prompt text, image) before any row runs.
    Raises InvalidInputError listing every problem found, each with its row number.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidInputError(f"--limit must be an integer ≥ 1, got {limit!r}")
    set_path = Path(os.path.expanduser(str(path))).absolute()
    if not set_path.is_file():
        raise InvalidInputError(f"Benchmark set '{set_path}' does not exist (or is not a file).")
    rows, name, description = _read_rows(set_path)
    if not rows:
        raise InvalidInputError(f"Benchmark set '{set_path}' has no rows.")
    wanted = set(ids) if ids else None
    seen: dict[str, int] = {}
    items: list[tuple[int, BenchItem]] = []
    problems: list[str] = []
    for number, row in enumerate(rows, start=1):
        if wanted is None and limit is not None and number > limit:
            break  # --limit: the rows after the first `limit` are never read
        if wanted is not None and not (isinstance(row, dict) and str(row.get("id", "")).strip() in wanted):
            continue
        item, row_problems = _check_row(row, number, set_path.parent, seen)
        problems += row_problems
        if item is not None:
            items.append((number, item))
    if wanted is not None:
        unknown = [i for i in ids or [] if i not in seen]
        if unknown:
            raise InvalidInputError(f"Unknown item id(s) {unknown} in {set_path}.")
    if limit is not None:
        items = items[:limit]
    for number, item in items:  # the costly check (reading each image), for the rows that will run
        if item.image is not None:
            problems += [f"row {number} (id '{item.id}'): {message}" for message in _image_problems(item.image)]
    if problems:
        listed = problems[:MAX_LISTED_PROBLEMS]
        more = len(problems) - len(listed)
        raise InvalidInputError(
            f"Benchmark set '{set_path}' has {len(problems)} problem(s):\n"
            + "\n".join(f"  - {p}" for p in listed)
            + (f"\n  ... and {more} more" if more else "")
        )
    return BenchSet(set_path, name, [item for _, item in items], description)
