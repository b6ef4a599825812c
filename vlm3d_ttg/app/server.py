"""The web app: a Gradio page and its HTTP API over the same run as `vlm3d-ttg generate`.

Every request goes through `requests.validate_request` (the CLI's checks and messages), then
`generation.generate_mesh` in a worker thread with a step callback that streams the critic's views,
σ and r to the page and stops the run at the next step boundary when its session cancels. Each run
writes into its own folder (`runs.RunFolders`, which also says when old folders go).

Endpoints (Gradio's API, for `gradio_client`): `/generate` (image or text → mesh, manifest, final r,
and the unguided baseline when asked) and `/cancel` (cancels the calling session's runs).
"""

import html
import inspect
import io
import logging
import os
import queue
import shutil
import threading
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no analytics or version calls

import gradio as gr  # noqa: E402

from ..errors import InvalidInputError, Vlm3dError  # noqa: E402
from ..export import PostprocessConfig  # noqa: E402
from ..generation import GenerationOptions, GenerationResult, LoadedModels, generate_compared, generate_mesh  # noqa: E402
from ..guidance import GuidanceConfig  # noqa: E402
from ..manifest import manifest_path_for  # noqa: E402
from ..options import cli_default, declared, flag_of, value_type  # noqa: E402
from ..generation import export_resolution  # noqa: E402
from ..requests import RunRequest, validate_request  # noqa: E402
from ..run import OutputPlan  # noqa: E402
from ..search import SearchOptions  # noqa: E402
from .runs import CancelToken, RunCancelled, RunFolders, Sessions, utc_now, write_run_record  # noqa: E402

logger = logging.getLogger(__name__)

#: The dataclasses whose declared options a request carries.
OPTION_CLASSES = (GenerationOptions, GuidanceConfig, SearchOptions, PostprocessConfig)
#: The options the page shows in its "Advanced" group, by field name, in this order. Their labels,
#: defaults, help, choices and ranges come from the declarations (vlm3d_ttg/options.py); a name
#: that no dataclass declares (e.g. an option of a branch not merged yet) is skipped.
ADVANCED = ("enabled", "scale", "sigma_window", "every", "num_views", "view_size", "view_layout", "reference",
            "silhouette_weight", "grid_resolution", "candidates", "steps", "octree_resolution", "cfg_scale")
EXPORT_FORMATS = ("glb", "obj", "ply", "stl")
TITLE = "vlm3d-ttg: Hunyuan3D-2 guided by a vision-language critic"


@dataclass(frozen=True)
class FormField:
    """One declared option as the page shows it."""

    name: str
    owner: type
    kind: type  # bool, int, float or str (the command line's type)
    default: Any  # in command-line form
    help: str
    flag: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None


def form_fields(names: tuple[str, ...] = ADVANCED, defaults: dict[str, Any] | None = None) -> list[FormField]:
    """The declared options named in `names` (those that exist), with their defaults (`defaults`
    overrides the declared ones: the server's command line), help, choices and ranges."""
    found: dict[str, FormField] = {}
    for cls in OPTION_CLASSES:
        hints = typing.get_type_hints(cls)
        for f, spec in declared(cls):
            if f.name not in names:
                continue
            hint = hints.get(f.name)
            choices = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None
            default = (defaults or {}).get(f.name, cli_default(f, spec))
            found[f.name] = FormField(f.name, cls, value_type(f, spec), default, spec.help, flag_of(f, spec),
                                      tuple(choices) if choices else None, spec.minimum, spec.maximum)
    return [found[name] for name in names if name in found]


def _widget(spec: FormField, *, preset: str) -> gr.components.Component:
    info = f"{spec.help} ({spec.flag})"
    common = dict(label=spec.name, info=info, elem_id=f"opt-{spec.name}")
    if spec.choices:
        return gr.Dropdown(choices=list(spec.choices), value=spec.default, **common)
    if spec.kind is bool:
        return gr.Checkbox(value=bool(spec.default), **common)
    if spec.kind in (int, float):
        value = spec.default
        if value is None and spec.name == "octree_resolution":
            value = export_resolution(preset)
        return gr.Number(value=value, precision=0 if spec.kind is int else None, minimum=spec.minimum,
                         maximum=spec.maximum, **common)
    return gr.Textbox(value="" if spec.default is None else str(spec.default), **common)


def _coerce(spec: FormField, value: Any) -> Any:
    """A raw widget/API value in the option's command-line type (numbers arrive as JSON floats)."""
    if spec.kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if spec.kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if spec.kind is int and isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def client_message(message: str, *, image: str | None = None, folder: Path | None = None) -> str:
    """`message` as a client may read it: the server's paths replaced by what the client knows (its
    upload's file name, 'the run folder'), so an error never tells a client which server files exist."""
    replacements = []
    if image:
        name = Path(image).name or "the image"
        replacements += [(os.path.realpath(image), name), (str(Path(image).resolve()), name), (str(image), name)]
    if folder is not None:
        replacements += [(os.path.realpath(folder), "the run folder"), (str(folder), "the run folder")]
    for server_path, shown in sorted(set(replacements), key=lambda pair: -len(pair[0])):
        if server_path:
            message = message.replace(server_path, shown)
    return message


def _upload_path(payload: Any) -> str | None:
    """The server-side path of an uploaded file (a Gradio FileData dict, or a path string)."""
    if payload is None or payload == "":
        return None
    if isinstance(payload, dict):
        return payload.get("path")
    return str(payload)


# ---- the run ---------------------------------------------------------------------------------------


@dataclass
class RunEvent:
    """One thing a run tells its page: kind is input, step, phase, warning, done, cancelled or error."""

    kind: str
    message: str = ""
    image: Any = None  # kind "input": the conditioning image (background removed)
    phase: str = ""  # "guided" or "baseline"
    step: int | None = None
    total: int | None = None
    sigma: float | None = None
    r: float | None = None
    views: list | None = None  # the critic's views at this step (PIL images), when it looked
    points: list[tuple[float, float]] = field(default_factory=list)  # (σ, r) of the guided steps so far
    result: GenerationResult | None = None
    baseline: GenerationResult | None = None
    sheet: Path | None = None  # kind "done" with a baseline: the contact sheet of both meshes (vlm3d_ttg.compare)
    seconds: float = 0.0

    @property
    def final(self) -> bool:
        """Whether this event ends the run."""
        return self.kind in ("done", "cancelled", "error")


class StepRelay:
    """The step callback of one run: stop if cancelled, else pass σ, r and the critic's views on."""

    def __init__(self, events: "queue.Queue[RunEvent]", token: CancelToken, *, phase: str, total: int):
        self.events, self.token, self.phase, self.total = events, token, phase, total
        self.points: list[tuple[float, float]] = []

    def __call__(self, sampler: Any, step: int, sigma: float, state: dict[str, Any]) -> None:
        self.token.check(step)
        record = state.get("record")
        r = getattr(record, "r", None)
        if r is not None:
            self.points.append((float(sigma), float(r)))
        evaluation = state.get("evaluation")
        views = None
        if evaluation is not None and getattr(evaluation, "images", None) is not None:
            views = _to_pictures(evaluation.images)
        self.events.put(RunEvent("step", phase=self.phase, step=step, total=self.total, sigma=float(sigma), r=r,
                                 views=views, points=list(self.points)))
        return None


def _to_pictures(images: Any) -> list:
    from PIL import Image

    from ..images import to_uint8

    array = to_uint8(images).cpu().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in array]


def r_plot(points: list[tuple[float, float]], final_r: float | None = None, baseline_r: float | None = None) -> Any:
    """The run's r plot (`generation.r_plot_png`, the `--plot` drawing) as a PIL picture."""
    from PIL import Image

    from ..generation import r_plot_png

    return Image.open(io.BytesIO(r_plot_png(points, final_r=final_r, baseline_r=baseline_r))).convert("RGB")


class AppRunner:
    """Runs requests on models loaded once; one worker thread per run, one folder per run."""

    def __init__(self, models: LoadedModels, *, preset: str, defaults: dict[str, Any], runs: RunFolders):
        self.models = models
        self.preset = preset
        self.defaults = dict(defaults)
        self.runs = runs
        self.sessions = Sessions()

    def values(self, page: dict[str, Any]) -> dict[str, Any]:
        """The request's option values: the server's defaults with the page's (or API call's) values on top."""
        return {**self.defaults, **page}

    def run_events(self, session: str, *, image: str | None, prompt: str, values: dict[str, Any],
                   export_format: str, baseline: bool) -> Iterator[RunEvent]:
        """Check the request, then run it in a worker thread, yielding what happens until it ends.
        If the caller stops listening (the page went away), the run is cancelled at its next step."""
        token = self.sessions.start(session)
        thread = None
        try:
            try:
                for name, value, kind, what in (("description", prompt, str, "text"),
                                                ("baseline", baseline, bool, "true or false")):
                    if not isinstance(value, kind):
                        raise InvalidInputError(f"Invalid value for '{name}': expected {what}, got "
                                                f"{type(value).__name__} {value!r}.")
                request = validate_request(self.values(values), prompt=prompt, preset=self.preset, image=image,
                                           baseline=self.defaults)
                if baseline:
                    from ..compare import check_compare

                    check_compare(request.guidance, request.search, request.guided_steps, asked="the unguided baseline")
                if export_format not in EXPORT_FORMATS:
                    raise InvalidInputError(f"Export format must be one of {', '.join(EXPORT_FORMATS)}, got {export_format!r}.")
            except Vlm3dError as exc:
                yield RunEvent("error", message=client_message(str(exc), image=image))
                return
            for warning in request.warnings:
                yield RunEvent("warning", message=warning)
            folder = self.runs.new()
            events: queue.Queue[RunEvent] = queue.Queue()
            thread = threading.Thread(target=self._work, args=(request, folder, export_format, baseline, token, events),
                                      name=f"vlm3d-run-{folder.name}", daemon=True)
            thread.start()
            while True:
                event = events.get()
                if event.message:
                    event.message = client_message(event.message, image=image, folder=folder)
                yield event
                if event.final:
                    break
        finally:
            if thread is not None and thread.is_alive():
                token.cancel()  # nobody is listening any more: stop at the next step boundary
                thread.join()
            self.sessions.finish(session, token)

    def _work(self, request: RunRequest, folder: Path, export_format: str, baseline: bool, token: CancelToken,
              events: "queue.Queue[RunEvent]") -> None:
        started = time.perf_counter()
        record: dict[str, Any] = {"status": "running", "started": utc_now(), "prompt": request.prompt,
                                  "image": str(request.image) if request.image else None, "preset": self.preset,
                                  "export_format": export_format, "baseline": baseline,
                                  "options": request.options.to_dict(), "guidance": request.guidance.to_dict(),
                                  "search": request.search.to_dict()}
        write_run_record(folder, record)
        final: RunEvent
        try:
            final = self._runs(request, folder, export_format, baseline, token, events)
        except RunCancelled as exc:
            final = RunEvent("cancelled", message=str(exc), step=exc.step)
        except Vlm3dError as exc:
            final = RunEvent("error", message=str(exc))
        except OSError as exc:
            where = getattr(exc, "filename", None) or "the file system"
            final = RunEvent("error", message=f"{exc.strerror or exc} ({where}); nothing of this run was written")
        except Exception as exc:  # a bug or a fault: this run fails, the server and other runs go on
            logger.exception("run in %s failed", folder)
            final = RunEvent("error", message=f"unexpected {type(exc).__name__}: {exc} (the server log has the traceback)")
        final.seconds = time.perf_counter() - started
        record.update(status={"done": "done", "cancelled": "cancelled"}.get(final.kind, "failed"),
                      finished=utc_now(), seconds=final.seconds, message=final.message or None)
        try:
            write_run_record(folder, record)
        except OSError:
            logger.exception("could not write the run record in %s", folder)
        self.runs.release(folder)
        events.put(final)

    def _runs(self, request: RunRequest, folder: Path, export_format: str, baseline: bool, token: CancelToken,
              events: "queue.Queue[RunEvent]") -> RunEvent:
        """The request's runs in `folder` (guided, then the unguided baseline when asked), every output
        plan checked before any work; the "done" event."""
        from ..generation import checkpoint_folders

        image = None if request.image is None else folder / f"upload{request.image.suffix.lower() or '.png'}"
        plan = run_plan(folder, export_format, text_only=image is None, baseline=baseline)
        read_folders = checkpoint_folders(request.options, self.preset, text_to_3d=image is None,
                                          cache_dir=self.models.cache_dir)
        plan.check({"image": request.image, "the run's copy of the image": image}, read_folders=read_folders)
        generated = self._input(request, image, plan.input_image, events)
        token.check()
        run = dict(image=image, generated_input=generated, prompt=request.prompt, out=plan.out,
                   manifest_path=plan.manifest, guidance=request.guidance, postprocess=request.postprocess,
                   options=request.options, progress=False, step_callback=self._relay(request, token, events, "guided"))
        if not baseline:
            return RunEvent("done", result=generate_mesh(self.models, **run, search=request.search))
        # The unguided run on the same seed and settings, written with the guided one as one unit, with the
        # contact sheet of both (generation.generate_compared, as `generate --compare`).
        guided, base, sheet = generate_compared(self.models, **run,
                                                unguided_callback=self._relay(request, token, events, "baseline"))
        return RunEvent("done", result=guided, baseline=base, sheet=sheet)

    def _input(self, request: RunRequest, image: Path | None, generated_path: Path | None,
               events: "queue.Queue[RunEvent]") -> Any:
        """Copy the upload to `image` (the run's own copy), or make the input image from the description
        (text2image.GeneratedInput, returned); tell the page what the model will see."""
        if image is not None:
            from ..inputs import prepare_condition_image

            shutil.copyfile(request.image, image)
            events.put(RunEvent("input", image=prepare_condition_image(image)))
            return None
        from ..presets import get_preset
        from ..text2image import make_input_image

        events.put(RunEvent("phase", message="making the input image from the description "
                                             "(text-to-image, then background removal)"))
        generated = make_input_image(request.prompt, generated_path, model=request.options.text_to_image,
                                     device=request.options.device, seed=request.options.seed,
                                     tiny=get_preset(self.preset).offline)
        events.put(RunEvent("input", image=generated.image))
        return generated

    @staticmethod
    def _relay(request: RunRequest, token: CancelToken, events: "queue.Queue[RunEvent]", phase: str) -> StepRelay:
        return StepRelay(events, token, phase=phase, total=request.options.steps)


def run_plan(folder: Path, export_format: str, *, text_only: bool, baseline: bool) -> OutputPlan:
    """The output plan (`run.OutputPlan`, as `generate`'s) of one request: the guided mesh in the run folder with
    its manifest beside it, for text-to-3D the input image made from the description, and with `baseline` the
    unguided run's mesh and manifest and the contact sheet of both (as `generate --compare`'s)."""
    out = folder / f"guided.{export_format}"
    make = OutputPlan.compared if baseline else OutputPlan
    return make(out, manifest_path_for(out), input_image=folder / "input.png" if text_only else None)


# ---- the page --------------------------------------------------------------------------------------


def _status(text: str, *, fraction: float | None = None, kind: str = "running") -> str:
    bar = ""
    if fraction is not None:
        bar = (f'<div class="vlm3d-bar"><div class="vlm3d-fill" style="width:{100 * fraction:.1f}%"></div></div>')
    return f'<div id="vlm3d-status" data-state="{kind}">{bar}<p>{html.escape(text)}</p></div>'


CSS = """
.vlm3d-bar { width: 100%; height: 12px; background: #e5e7eb; border-radius: 6px; overflow: hidden; }
.vlm3d-fill { height: 100%; background: #f97316; }
#vlm3d-status[data-state=error] p { color: #b91c1c; white-space: pre-wrap; }
#vlm3d-status[data-state=cancelled] p { color: #92400e; }
"""


@dataclass
class Page:
    """The page's components that the handlers read or write (built by `_layout`)."""

    fields: list[FormField]  # the options' widgets in `inputs` order: seed, then the Advanced group
    inputs: list  # image, description, the fields' widgets, export format, baseline (the API's parameters)
    status: Any
    condition: Any
    views: Any
    plot: Any
    guided_mesh: Any
    baseline_mesh: Any
    sheet: Any  # the contact sheet of both meshes (with the baseline)
    final_r: Any
    meshes: Any  # gr.State: (guided mesh, baseline mesh) of this session's last run
    downloads: Any
    api_outputs: list  # mesh, manifest, final r, baseline mesh, baseline manifest, baseline final r (hidden)
    run_button: Any
    cancel_button: Any
    cancel_note: Any
    api_button: Any

    @property
    def streamed(self) -> list:
        """What a page run streams into."""
        return [self.status, self.condition, self.views, self.plot, self.meshes, self.sheet, self.final_r, self.downloads]

    @property
    def parameter_names(self) -> list[str]:
        """The API's parameter names (gradio_client keywords): the widgets' labels, i.e. the option names."""
        return ["image", "description", *(spec.name for spec in self.fields), "export_format", "baseline"]


def _layout(runner: AppRunner) -> Page:
    """Lay out the page (inside a gr.Blocks context): the request column, the run's outputs, the API's
    hidden outputs."""
    preset = runner.preset
    from ..presets import get_preset  # the preset's own note (presets.Preset.note)

    note = f" ({preset} preset: {get_preset(preset).note})" if get_preset(preset).note else ""
    gr.Markdown(f"## {TITLE}{note}\nGive an image (or only a description for text-to-3D) and a description; "
                "the critic judges renders of the shape at the guided steps and pushes it towards the description.")
    with gr.Row():
        with gr.Column(scale=1):
            request = _request_column(runner)
        with gr.Column(scale=2):
            shown = _output_column()
    # The API's outputs: plain files and numbers (hidden on the page).
    with gr.Row(visible=False):
        api_outputs = [gr.File(label="mesh"), gr.File(label="manifest"), gr.Number(label="final_r"),
                       gr.File(label="baseline_mesh"), gr.File(label="baseline_manifest"),
                       gr.Number(label="baseline_final_r")]
        api_button = gr.Button(visible=False)
    return Page(**request, **shown, api_outputs=api_outputs, api_button=api_button)


def _request_column(runner: AppRunner) -> dict[str, Any]:
    """The request's widgets (image, description, seed, the Advanced options, format, baseline) and buttons."""
    from ..presets import get_preset

    preset = runner.preset
    record = get_preset(preset)
    example = record.demo_example()  # the page opens with the preset's example (the demo's; its seed and options
    fields = [*form_fields(("seed",), runner.defaults), *form_fields(ADVANCED, runner.defaults)]  # are the defaults)
    image = gr.Image(example.picture() if example is not None else None, type="filepath", label="image",
                     sources=["upload", "clipboard"], elem_id="input-image", height=260)
    description = gr.Textbox(example.prompt if example is not None else None, label="description", elem_id="description",
                             placeholder="e.g. a small toy robot with a round head")
    seed = _widget(fields[0], preset=preset)
    with gr.Accordion("Advanced", open=False, elem_id="advanced"):
        widgets = [_widget(spec, preset=preset) for spec in fields[1:]]
    export_format = gr.Dropdown(list(EXPORT_FORMATS), value="glb", label="export_format", elem_id="export-format")
    baseline = gr.Checkbox(record.compare_by_default, label="baseline", elem_id="baseline",
                           info="Also run the unguided baseline on the same seed and settings (one more, unguided, run) "
                                "and show both meshes and a sheet of both from the same cameras.")
    with gr.Row():
        run_button = gr.Button("Generate", variant="primary", elem_id="run")
        cancel_button = gr.Button("Cancel", variant="stop", elem_id="cancel")
    cancel_note = gr.Markdown(elem_id="cancel-note")
    return dict(fields=fields, inputs=[image, description, seed, *widgets, export_format, baseline],
                run_button=run_button, cancel_button=cancel_button, cancel_note=cancel_note)


def _output_column() -> dict[str, Any]:
    """What a run shows: status, the model's input, the critic's views, the r plot, the meshes, final r, files."""
    status = gr.HTML(_status("Ready.", kind="idle"), elem_id="run-status")
    with gr.Row():
        condition = gr.Image(label="input after background removal", interactive=False, elem_id="condition", height=220)
        views = gr.Gallery(label="critic's views (latest guided step)", elem_id="critic-views", columns=4, height=220,
                           interactive=False)
        plot = gr.Image(label="r per step", interactive=False, elem_id="r-plot", height=220)
    with gr.Row():
        guided_mesh = gr.Model3D(label="guided mesh", elem_id="guided-mesh", height=320,
                                 clear_color=(0.95, 0.95, 0.95, 1.0))
        baseline_mesh = gr.Model3D(label="unguided baseline (same seed)", elem_id="baseline-mesh", height=320,
                                   clear_color=(0.95, 0.95, 0.95, 1.0))
    sheet = gr.Image(label="unguided (top) and guided (bottom), same seed, same cameras", interactive=False,
                     elem_id="compare-sheet")
    final_r = gr.HTML(elem_id="final-r")
    downloads = gr.File(label="downloads (mesh and manifest)", file_count="multiple", elem_id="downloads",
                        interactive=False)
    return dict(status=status, condition=condition, views=views, plot=plot, guided_mesh=guided_mesh,
                baseline_mesh=baseline_mesh, sheet=sheet, final_r=final_r, meshes=gr.State(None), downloads=downloads)


def parse_request(fields: list[FormField], raw: tuple) -> dict[str, Any]:
    """The keyword arguments of `AppRunner.run_events` from the raw values of the page's (or an API call's)
    inputs, in `Page.inputs` order."""
    image_payload, prompt, *option_values = raw
    chosen_format, want_baseline = option_values[-2:]
    values = {spec.name: _coerce(spec, value) for spec, value in zip(fields, option_values[:-2])}
    return dict(image=_upload_path(image_payload), prompt="" if prompt is None else prompt, values=values,
                export_format=chosen_format, baseline=bool(want_baseline) if want_baseline is None else want_baseline)


class PageStream:
    """What the page shows while one run streams: each RunEvent as an update {component: value} (components
    left out keep what they show), with the guided run's (σ, r) points and each phase's latest r."""

    def __init__(self, page: Page):
        self.page = page
        self.points: list[tuple[float, float]] = []
        self.last_r: dict[str, tuple[int, float]] = {}  # phase → (step, r) of its latest guided step

    def start(self) -> dict:
        """The page at the start of a run: checking, last run's outputs cleared."""
        page = self.page
        return {page.status: _status("Checking the request…", fraction=0.0), page.condition: None, page.views: None,
                page.plot: None, page.meshes: None, page.sheet: None, page.final_r: "", page.downloads: None}

    def update(self, event: RunEvent) -> dict:
        """The page's update for `event` (empty for an event it does not show)."""
        status = self.page.status
        if event.kind == "error":
            return {status: _status(f"error: {event.message}", kind="error")}
        if event.kind == "warning":
            gr.Warning(event.message)
            return {status: _status(f"warning: {event.message}", kind="running")}
        if event.kind == "phase":
            return {status: _status(event.message, fraction=0.0)}
        if event.kind == "input":
            return {self.page.condition: event.image}
        if event.kind == "step":
            return self._step(event)
        if event.kind == "cancelled":
            return {status: _status(f"Cancelled: {event.message}.", kind="cancelled")}
        if event.kind == "done":
            return self._done(event)
        return {}

    def _step(self, event: RunEvent) -> dict:
        if event.r is not None:
            self.last_r[event.phase] = (event.step, event.r)
        seen = self.last_r.get(event.phase)
        r_text = "" if seen is None else f" · r = {seen[1]:+.4f}" + (
            "" if seen[0] == event.step else f" (at step {seen[0] + 1})")
        text = f"{event.phase} run: step {event.step + 1}/{event.total} · σ = {event.sigma:.3f}{r_text}"
        update = {self.page.status: _status(text, fraction=(event.step + 1) / event.total)}
        if event.phase == "guided":
            self.points = event.points
        if event.views:
            update[self.page.views] = event.views
        if event.r is not None and event.phase == "guided":
            update[self.page.plot] = r_plot(self.points)
        return update

    def _done(self, event: RunEvent) -> dict:
        page, result, base = self.page, event.result, event.baseline
        files = [str(result.mesh_path), str(result.manifest_path)]
        if base is not None:
            files += [str(base.mesh_path), str(base.manifest_path)]
        if event.sheet is not None:
            files.append(str(event.sheet))
        # The meshes go to the viewers in the follow-up event (show_meshes), not in this stream.
        return {page.status: _status(f"Done in {event.seconds:.1f} s.", fraction=1.0, kind="done"),
                page.plot: r_plot(self.points, result.final_r, base.final_r if base else None),
                page.meshes: (str(result.mesh_path), str(base.mesh_path) if base is not None else None),
                page.sheet: str(event.sheet) if event.sheet is not None else None,
                page.final_r: _final_html(result, base), page.downloads: files}


def api_result(page: Page, event: RunEvent) -> dict:
    """The API's answer for a finished run: mesh, manifest and final r, and the baseline's (None without one)."""
    result, base = event.result, event.baseline
    values = (str(result.mesh_path), str(result.manifest_path), result.final_r,
              str(base.mesh_path) if base else None, str(base.manifest_path) if base else None,
              base.final_r if base else None)
    return dict(zip(page.api_outputs, values))


def build_app(runner: AppRunner, *, concurrency: int = 1) -> gr.Blocks:
    """The Blocks page over `runner`, with the named API endpoints `/generate` and `/cancel`."""
    with gr.Blocks(title=TITLE, delete_cache=(3600, int(runner.runs.max_age_hours * 3600))) as demo:
        page = _layout(runner)
        _wire(page, runner, concurrency)
    return demo


def _wire(page: Page, runner: AppRunner, concurrency: int) -> None:
    """The page's and the API's event handlers."""

    def run_page(request: gr.Request, *raw: Any) -> Iterator[dict]:
        stream = PageStream(page)
        yield stream.start()
        for event in runner.run_events(request.session_hash, **parse_request(page.fields, raw)):
            update = stream.update(event)
            if update:
                yield update
            if event.final:
                return

    def run_api(request: gr.Request, *raw: Any) -> Iterator[Any]:
        # A generator, not a function: between two events Gradio sees whether the client is still
        # there, and when it is gone it closes this generator, which closes `run_events`, which
        # cancels the run at its next step boundary (a plain function would run to the end).
        for event in runner.run_events(request.session_hash, **parse_request(page.fields, raw)):
            if event.kind == "error":
                raise gr.Error(event.message, duration=None)
            if event.kind == "cancelled":
                raise gr.Error(f"Cancelled: {event.message}.", duration=None)
            if event.kind == "done":
                yield api_result(page, event)
                return
            yield gr.skip()  # nothing new for an API client; the chance to notice it left
        raise gr.Error("the run ended without a result")  # not reached: every run ends with one of the above

    for fn in (run_page, run_api):  # named parameters for the API (gradio_client keywords)
        fn.__signature__ = inspect.Signature(
            [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request)]
            + [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in page.parameter_names])

    def cancel(request: gr.Request) -> str:
        count = runner.sessions.cancel(request.session_hash)
        return "Cancelling at the next step…" if count else "Nothing to cancel."

    def show_meshes(meshes: tuple | None) -> tuple:
        return tuple(meshes) if meshes else (None, None)

    # Gradio 6.31's 3D viewer drops a model that a streaming event sets (its viewer loads lazily and
    # the stream's final message sets the value again): the meshes reach the viewers in one plain update.
    viewers = [page.guided_mesh, page.baseline_mesh]
    page.run_button.click(lambda: (None, None), outputs=viewers, concurrency_limit=None, api_visibility="undocumented",
                          show_progress="hidden").then(
        run_page, inputs=page.inputs, outputs=page.streamed, preprocess=False, concurrency_limit=concurrency,
        concurrency_id="gpu", api_visibility="undocumented", show_progress="hidden").then(
        show_meshes, inputs=page.meshes, outputs=viewers, concurrency_limit=None, api_visibility="undocumented",
        show_progress="hidden")
    page.api_button.click(run_api, inputs=page.inputs, outputs=page.api_outputs, preprocess=False,
                          concurrency_limit=concurrency, concurrency_id="gpu", api_name="generate")
    page.cancel_button.click(cancel, inputs=None, outputs=page.cancel_note, concurrency_limit=None, api_name="cancel",
                             show_progress="hidden")


def _final_html(result: GenerationResult, base: GenerationResult | None) -> str:
    def r_of(x: GenerationResult) -> str:
        return "n/a" if x.final_r is None else f"{x.final_r:+.4f}"

    text = f'final r (guided): <b id="final-r-guided">{r_of(result)}</b>'
    if base is not None:
        text += f' · final r (unguided baseline): <b id="final-r-baseline">{r_of(base)}</b>'
    return f"<p>{text} <small>(the critic's score of each final mesh, from fixed cameras)</small></p>"


def api_exception_handlers() -> dict:
    """FastAPI exception handlers for the app's server (Gradio's `launch(app_kwargs=...)`): a call to an API
    endpoint that does not exist is a client's mistake (404 naming the endpoints), not a server error (500)."""
    from fastapi.responses import JSONResponse
    from gradio.route_utils import FnIndexInferError

    def unknown_endpoint(request: Any, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=404, content={
            "detail": "No such API endpoint; this app has /generate and /cancel (see the page's 'Use via API')."})

    return {FnIndexInferError: unknown_endpoint}


def app_theme() -> gr.themes.Base:
    """Gradio's default look with system fonts (the default theme fetches web fonts; the app works offline)."""
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


__all__ = ["ADVANCED", "AppRunner", "api_exception_handlers", "api_result", "client_message", "EXPORT_FORMATS", "FormField",
           "Page", "PageStream", "RunEvent", "StepRelay", "app_theme", "build_app", "form_fields", "parse_request", "r_plot",
           "run_plan"]
