"""`vlm3d-ttg batch ITEMS.jsonl --out DIR`: one `generate` run per line, models loaded once.

Each line of ITEMS.jsonl is a JSON object: `prompt` (required), `image` (a path, relative to the
ITEMS file's folder; null or absent: text-to-3D), `id` (the output's name, default `item-<line>`),
and optionally per-item values of the options in `PER_ITEM` (by field name, e.g. `"seed": 3`).
Every other option is the command's (generate's options, declared once) and applies to all items.

Every line is checked before any model loads, each item's outputs too (`run.OutputPlan`, as
`generate` checks its own). An item writes DIR/<id>.glb, its manifest DIR/<id>.glb.json (last, as
one unit with the rest) and its silhouette mask (and, text-only, DIR/<id>.glb.input.png). An item
whose manifest is there and whole is finished: a rerun skips it. One that fails (an empty surface, an
error) is recorded in DIR/batch.jsonl and the others go on; the exit code is 0 only when every item
is finished. Under `accelerate launch` the pending items are split between the processes
(`vlm3d_ttg.shards`, as the quality benchmark splits its items).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from ..errors import InvalidInputError, Vlm3dError
from . import with_run_options
from .generate import PRESET_HELP, Preset, given_options

logger = logging.getLogger(__name__)

#: The options an item may set for itself; the others are the batch's (the models load once for all).
PER_ITEM = ("seed", "steps", "cfg_scale", "scale")
#: What a line may hold besides PER_ITEM.
ITEM_FIELDS = ("id", "image", "prompt")
#: An item id: the start of its output files' names.
ITEM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
#: The record of every item run (appended, one JSON object a line) in the output folder.
BATCH_LOG = "batch.jsonl"


@dataclass
class BatchItem:
    """One line of the items file, checked: its run's request and output plan."""

    line: int
    id: str
    request: Any  # requests.RunRequest
    plan: Any  # run.OutputPlan


def _parse_line(text: str, line: int, folder: Path) -> tuple[str, Path | None, Any, dict[str, Any]]:
    """(id, image, prompt, per-item option values) of one line; InvalidInputError says what is wrong."""
    try:
        entry = json.loads(text)
    except ValueError as exc:
        raise InvalidInputError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(entry, dict):
        raise InvalidInputError(f"expected a JSON object, got {type(entry).__name__}")
    unknown = sorted(set(entry) - set(ITEM_FIELDS) - set(PER_ITEM))
    if unknown:
        raise InvalidInputError(f"{', '.join(map(repr, unknown))} cannot be set per item (an item has "
                                f"{', '.join(ITEM_FIELDS)} and may set {', '.join(PER_ITEM)}; the other options are "
                                "the command's, for every item)")
    if "prompt" not in entry:
        raise InvalidInputError("no 'prompt'")
    item_id = entry.get("id", f"item-{line:04d}")
    if not isinstance(item_id, str) or not ITEM_ID.fullmatch(item_id):
        raise InvalidInputError(f"'id' must be text of letters, digits, '.', '_' or '-' (not first), at most 100, "
                                f"got {item_id!r}")
    image = entry.get("image")
    if image is not None and (not isinstance(image, str) or not image.strip()):
        raise InvalidInputError(f"'image' must be a path (text) or null, got {image!r}")
    path = None if image is None else folder / os.path.expanduser(image)
    return item_id, path, entry["prompt"], {name: entry[name] for name in PER_ITEM if name in entry}


def read_items(path: Path, out: Path, values: dict[str, Any], *, preset: str, options: Any) -> list[BatchItem]:
    """Every item of the JSONL file at `path`, each request validated (`requests.validate_request`, the
    batch's `values` with the item's own on top) and its outputs under `out` checked
    (`run.OutputPlan.check`); raise InvalidInputError listing every bad line, before any model loads.
    `options`: the batch's validated GenerationOptions (which checkpoints the run loads)."""
    from ..generation import checkpoint_folders
    from ..manifest import manifest_path_for
    from ..requests import validate_request
    from ..run import OutputPlan
    from ..text2image import input_image_path_for

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"ITEMS '{path}' is not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    items: list[BatchItem] = []
    errors: list[str] = []
    seen: dict[str, int] = {}
    read_folders: dict[bool, Any] = {}  # text-only or not → the checkpoint folders no output may land in
    for line, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            item_id, image, prompt, own = _parse_line(text, line, path.parent)
            if item_id.casefold() in seen:  # casefold: one file on a case-insensitive file system
                raise InvalidInputError(f"id {item_id!r} is also line {seen[item_id.casefold()]}'s")
            seen[item_id.casefold()] = line
            request = validate_request({**values, **own}, prompt=prompt, preset=preset, image=image, baseline=values)
            out_file = out / f"{item_id}.glb"
            plan = OutputPlan(out_file, manifest_path_for(out_file),
                              input_image=input_image_path_for(out_file) if image is None else None)
            text_only = image is None
            if text_only not in read_folders:
                read_folders[text_only] = checkpoint_folders(options, preset, text_to_3d=text_only)
            plan.check({"ITEMS": path, "its image": image}, read_folders=read_folders[text_only])
            items.append(BatchItem(line, item_id, request, plan))
        except Vlm3dError as exc:  # a bad value, a missing image or text-to-image model, an output in the way
            errors.append(f"  line {line}: {exc}")
    if errors:
        raise InvalidInputError(f"ITEMS '{path}' has {len(errors)} bad line(s); nothing was run:\n" + "\n".join(errors))
    if not items:
        raise InvalidInputError(f"ITEMS '{path}' has no items (one JSON object a line, e.g. "
                                '{"image": "chair.png", "prompt": "a wooden chair"}).')
    return items


def item_finished(item: BatchItem) -> bool:
    """Whether the item's outputs are complete and its own: its manifest (written last) is whole JSON, names
    its mesh and was made for the item's prompt and seed, and the mesh is there."""
    try:
        content = json.loads(item.plan.manifest.read_text(encoding="utf-8"))
        mesh = Path(content["outputs"]["mesh"])
        return (mesh.name == item.plan.out.name and item.plan.out.stat().st_size > 0
                and content["prompt"] == item.request.prompt and content["seed"] == item.request.options.seed)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _batch(
    context: typer.Context,
    items: Path = typer.Argument(..., help="JSONL file: one item a line, e.g. {\"id\": \"chair\", \"image\": \"chair.png\", "
                                           "\"prompt\": \"a wooden chair\"}; no image: text-to-3D; per item also "
                                           f"{', '.join(PER_ITEM)}."),
    out: Path = typer.Option(..., "--out", "-o", help=f"Output folder: <id>.glb and <id>.glb.json per item, {BATCH_LOG}."),
    preset: Preset = typer.Option(Preset.real, help=PRESET_HELP),
    quiet: bool = typer.Option(False, help="No progress bar."),
    verbose: bool = typer.Option(False, help="Debug logging, with hy3dgen's and transformers' own messages and tracebacks."),
    **options: object,
) -> None:
    """Generate one mesh per line of ITEMS (image or text + prompt), models loaded once; resumable, and split
    over the processes of `accelerate launch`."""
    from ..io import check_output_plan, check_writable
    from ..requests import validate_settings

    # ---- everything that can be wrong is checked before any model loads --------------------
    if not items.is_file():
        raise InvalidInputError(f"ITEMS '{items}' is not a file.")
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out '{out}' exists and is not a folder.")
    given = given_options(options, context)  # the preset's and the backbone's defaults apply to the rest
    settings = validate_settings(given, preset=preset.value)  # the batch's options, said once
    checked = read_items(items, out, given, preset=preset.value, options=settings.options)
    check_writable(out / BATCH_LOG)
    check_output_plan({BATCH_LOG: out / BATCH_LOG}, {"ITEMS": items})
    _say_warnings(checked)

    from ..logs import be_verbose, quiet_hy3dgen
    from ..shards import process_state, split_pending

    if verbose:
        be_verbose()
    quiet_hy3dgen()
    # An offline preset's critic is written before the process group exists: inside one, transformers'
    # save_pretrained writes weights on rank 0 only.
    from ..presets import critic_checkpoint
    from ..models import critic_family_for

    critic_checkpoint(preset.value, settings.options.vlm, depth=settings.options.realsize_depth,
                      family=critic_family_for(settings.options.vlm, preset.value, settings.options.critic_family))
    state = process_state(cpu=_on_cpu(settings.options.device))
    talk = _Talk(state)
    mine, pending = split_pending(state, lambda: [item for item in checked if not item_finished(item)])
    if state.is_main_process:
        pending_ids = {item.id for item in pending}
        for item in checked:
            if item.id not in pending_ids:
                talk(f"skipped   {item.id} (line {item.line}): finished earlier ({item.plan.manifest})")
    talk(f"batch     {len(mine)} of {len(pending)} pending item(s) in this process "
         f"({state.process_index + 1}/{state.num_processes})", every=True)
    failures = run_share(mine, out, preset=preset.value, device=_device(state, settings.options.device),
                         progress=not quiet, talk=talk)
    state.wait_for_everyone()
    if state.is_main_process:
        failures = _summary(checked, pending, out, talk)
    if failures:
        raise typer.Exit(code=1)


def _on_cpu(device: str) -> bool:
    """Whether the processes run on the CPU (no CUDA here, or --device cpu)."""
    import torch

    return device == "cpu" or not torch.cuda.is_available()


def _device(state: Any, device: str) -> str:
    """The device of this process's runs: its own GPU under `accelerate launch` (with --device auto)."""
    return str(state.device) if state.num_processes > 1 and device == "auto" else device


class _Talk:
    """The command's lines on stdout, each marked with its process under `accelerate launch`."""

    def __init__(self, state: Any):
        self.state = state

    def __call__(self, text: str, *, every: bool = False) -> None:
        if self.state.num_processes == 1:
            typer.echo(text)
        elif every or self.state.is_main_process:
            typer.echo(f"[rank {self.state.process_index}] {text}")


def _say_warnings(items: list[BatchItem]) -> None:
    """Each request warning once, with the lines it applies to."""
    lines: dict[str, list[int]] = {}
    for item in items:
        for warning in item.request.warnings:
            lines.setdefault(warning, []).append(item.line)
    for warning, where in lines.items():
        typer.secho(f"warning: {warning} (line{'s' if len(where) > 1 else ''} {', '.join(map(str, where))})", err=True)


def run_share(mine: list[BatchItem], out: Path, *, preset: str, device: str, progress: bool, talk: Any) -> int:
    """Run this process's items (input images of text-only items first, then the models load once);
    record each in DIR/batch.jsonl; return how many failed."""
    if not mine:
        return 0
    from ..generation import load_models

    mine = [dataclasses.replace(item, request=dataclasses.replace(
        item.request, options=dataclasses.replace(item.request.options, device=device))) for item in mine]
    failed: dict[str, dict[str, Any]] = {}
    failures = 0
    generated = _make_input_images([item for item in mine if item.request.image is None], preset, failed)
    models = load_models(mine[0].request.options, preset=preset)
    for number, item in enumerate(mine, start=1):
        record = failed.get(item.id) or _run_item(item, models, generated.get(item.id), progress=progress)
        record.update(process=talk.state.process_index, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        _append_record(out / BATCH_LOG, record)
        failures += record["status"] != "ok"
        what = (f"{record['faces']} faces, final r {_signed(record['final_r'])}" if record["status"] == "ok"
                else f"{record['status'].upper()}: {record['error']}")
        talk(f"[{number}/{len(mine)}] {item.id}: {item.plan.out} ({what}; {record['seconds']:.1f} s)", every=True)
    return failures


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def _make_input_images(items: list[BatchItem], preset: str, failed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The input images of text-only items (text-to-image, before the shape model and critic load: never
    all at once), by id; an item whose image cannot be made is put in `failed`."""
    from ..presets import get_preset
    from ..text2image import make_input_image

    made = {}
    for item in items:
        options, started = item.request.options, time.perf_counter()
        try:
            made[item.id] = make_input_image(item.request.prompt, item.plan.input_image, model=options.text_to_image,
                                             device=options.device, seed=options.seed, tiny=get_preset(preset).offline)
        except Exception as exc:  # this item fails; the others go on
            logger.debug("making the input image of %s failed", item.id, exc_info=True)
            failed[item.id] = _record(item, "failed", started, error=f"text-to-image: {type(exc).__name__}: {exc}")
    return made


def _record(item: BatchItem, status: str, started: float, **values: Any) -> dict[str, Any]:
    """An item's line in DIR/batch.jsonl."""
    return {"id": item.id, "line": item.line, "status": status, "prompt": item.request.prompt,
            "image": None if item.request.image is None else str(item.request.image), "seed": item.request.options.seed,
            "mesh": str(item.plan.out), "manifest": str(item.plan.manifest), "faces": None, "final_r": None,
            "error": None, **values, "seconds": time.perf_counter() - started}


def _run_item(item: BatchItem, models: Any, generated: Any, *, progress: bool) -> dict[str, Any]:
    """One item's run through `generation.generate_mesh` (the `generate` path); its record, never an exception
    (an interrupt excepted)."""
    from ..errors import EmptySurfaceError
    from ..generation import generate_mesh

    request, plan, started = item.request, item.plan, time.perf_counter()
    try:
        result = generate_mesh(models, image=request.image, generated_input=generated, prompt=request.prompt,
                               out=plan.out, manifest_path=plan.manifest, guidance=request.guidance,
                               postprocess=request.postprocess, options=request.options, progress=progress,
                               search=request.search)
    except EmptySurfaceError as exc:
        return _record(item, "empty", started, error=str(exc))
    except Exception as exc:  # a fault in one item (the disk, a bug): recorded, and the next item runs
        logger.debug("item %s failed", item.id, exc_info=True)
        return _record(item, "failed", started, error=f"{type(exc).__name__}: {exc}")
    return _record(item, "ok", started, faces=result.faces, final_r=result.final_r)


def _append_record(log: Path, record: dict[str, Any]) -> None:
    """Append one line to the batch log (one write: processes of one batch append side by side)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(record, default=str) + "\n").encode("utf-8")
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _last_records(out: Path) -> dict[str, dict[str, Any]]:
    """The latest record of each item id in DIR/batch.jsonl (a damaged line is passed over)."""
    found = {}
    try:
        lines = (out / BATCH_LOG).read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    for text in lines:
        try:
            record = json.loads(text)
            found[record["id"]] = record
        except (ValueError, KeyError, TypeError):
            continue
    return found


def _summary(items: list[BatchItem], pending: list[BatchItem], out: Path, talk: Any) -> int:
    """Say what the batch holds now (finished items, this run's and earlier, and failed ones with why);
    return how many items are not finished."""
    unfinished = [item for item in items if not item_finished(item)]
    records = _last_records(out)
    earlier = len(items) - len(pending)
    talk(f"batch     {len(items)} item(s): {len(items) - len(unfinished)} finished ({len(pending) - len(unfinished)} "
         f"this run, {earlier} earlier), {len(unfinished)} failed")
    for item in unfinished:
        why = records.get(item.id, {}).get("error") or "no record"
        talk(f"failed    {item.id} (line {item.line}): {why}")
    talk(f"log       {out / BATCH_LOG}")
    return len(unfinished)


def batch(**values: object) -> None:
    """Generate one mesh per line of ITEMS (image or text + prompt), models loaded once; resumable, and split
    over the processes of `accelerate launch`."""
    _batch(**values)


batch.__signature__ = with_run_options(_batch)  # type: ignore[attr-defined]
batch.__annotations__ = {}
