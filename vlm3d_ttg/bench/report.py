"""Merging a quality benchmark's per-item outputs into one result: a Markdown table, JSON and a figure.

Rows are configurations, columns the metrics of the paper's Table 2 plus ours, each with a
bootstrap confidence interval over items and the number of items N:

- CLIP-D (our definition): 1 − mean over the evaluation views of cos(E_text(prompt), E_image(view));
- FID / CLIP-FID: Fréchet distance between features of the front evaluation view (azimuth 0) and of
  the input images (the reference set: over white, padded square, same size), float64, no complex
  square roots; KID: unbiased MMD² with the cubic kernel on the same Inception features;
- Geo (our definition): the geometry score in [0, 1] of each mesh (`vlm3d_ttg.metrics.geometry`);
  an empty shape counts as 1;
- judge: win rate of the configuration against base by a VLM judge of another family, both
  orders, order-inconsistent answers as ties;
- final r: the guiding critic's log-odds on the final mesh, always with the dual query and base's
  un-jittered views (the critic grading itself: not an independent metric).

A second table gives paired differences to base on the same items and seeds; `base_seed2`
(base with seed + 1), when run, is the seed-vs-seed noise floor of every metric.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import Vlm3dError
from ..io import atomic_path, write_text_atomic
from ..compute import compute_tflop
from ..metrics import (
    bootstrap_ci,
    frechet_difference_with_ci,
    frechet_distance_with_ci,
    kernel_inception_distance,
    summarize_judgements,
)
from ..metrics.frechet import KID_MIN_ITEMS
from ..metrics.geometry import COMPONENT_NAMES
from .benchset import BenchSet
from .configs import BASE, NOISE_FLOOR, BenchConfig
from .cache import load_features, read_evaluation, read_manifest, read_record
from .settings import RunPaths

logger = logging.getLogger(__name__)

# Below this many items a percentile bootstrap CI is rough.
MIN_ITEMS_FOR_CI = 30
# The geometry score given to a configuration whose shape came out empty.
EMPTY_GEOMETRY_SCORE = 1.0


class IncompleteRunError(Vlm3dError):
    """The run folder does not hold finished, matching results for every item and configuration."""


@dataclass
class ConfigData:
    """Per-item values of one configuration, in set order (NaN where not available)."""

    clip_d: np.ndarray
    geometry: np.ndarray
    components: dict[str, np.ndarray]
    final_r: np.ndarray  # reference scoring (dual query, base views)
    final_r_own: np.ndarray  # the manifest's final r (the configuration's own query and views)
    empty: np.ndarray  # bool
    inception: np.ndarray | None
    clip_features: np.ndarray | None
    judge_first: np.ndarray | None = None  # z_A − z_B with this configuration as A
    judge_second: np.ndarray | None = None  # with base as A
    r_curves: list[list[tuple[float, float]]] = field(default_factory=list)  # per item: (σ, r) at guided steps
    compute_tflop: np.ndarray | None = None  # per item: real-size TFLOP of its counted work (vlm3d_ttg.compute)


@dataclass
class Collected:
    """Everything the report needs, read from the run folder."""

    items: list[str]
    prompts: list[str]
    configs: list[BenchConfig]
    data: dict[str, ConfigData]
    reference_inception: np.ndarray | None
    reference_clip: np.ndarray | None
    run: dict[str, Any]
    # Judge calibration answers per check (base vs base, each degradation): (z_A − z_B original first, degraded first)
    judge_calibration: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


def collect(bench: BenchSet, configs: list[BenchConfig], paths: RunPaths) -> Collected:
    """Read every item's records, evaluation and features; raise IncompleteRunError naming what is missing."""
    evaluations = _finished_evaluations(bench, paths)
    n = len(bench.items)
    columns = {c.name: _Columns.for_items(n) for c in configs}
    ref_inception, ref_clip = [], []
    for i, item in enumerate(bench.items):
        evaluation = evaluations[item.id]
        features = load_features(paths.item(item.id))
        for name, column in columns.items():
            record = read_record(paths.config(item.id, name))
            if record is None or evaluation["configs"].get(name, {}).get("record_id") != record["id"]:
                raise IncompleteRunError(f"{item.id}/{name}: not generated, or its evaluation is outdated; run the benchmark again to complete it.")
            column.add(i, name, record, evaluation, features, read_manifest(paths.config(item.id, name)))
        if "inception/reference" in features:
            ref_inception.append(features["inception/reference"][0])
        if "clip/reference" in features:
            ref_clip.append(features["clip/reference"][0])
    run_file = paths.root / "run.json"
    run = json.loads(run_file.read_text()) if run_file.is_file() else {}
    return Collected([i.id for i in bench.items], [i.prompt for i in bench.items], configs,
                     {name: column.config_data(n) for name, column in columns.items()},
                     _stack(ref_inception, n), _stack(ref_clip, n), run, _calibration_answers(bench, evaluations))


def _finished_evaluations(bench: BenchSet, paths: RunPaths) -> dict[str, dict[str, Any]]:
    """Every item's evaluation; IncompleteRunError naming the items without one."""
    evaluations = {item.id: read_evaluation(paths.item(item.id)) for item in bench.items}  # damaged files: logged, None
    missing = [item_id for item_id, evaluation in evaluations.items() if evaluation is None]
    if missing:
        raise IncompleteRunError(
            f"{len(missing)} item(s) are not finished: {missing[:10]}; run the benchmark again (without --report-only) to complete them."
        )
    return evaluations


def _stack(rows: list[np.ndarray], n: int) -> np.ndarray | None:
    """Per-item feature rows as one float64 array, or None unless every one of the n items has one."""
    return np.stack(rows).astype(np.float64) if len(rows) == n and n > 0 else None


@dataclass
class _Columns:
    """One configuration's per-item values while they are read (NaN where an item has none)."""

    clip_d: np.ndarray
    geometry: np.ndarray
    final_r: np.ndarray
    final_r_own: np.ndarray
    empty: np.ndarray
    components: dict[str, np.ndarray]
    judge_first: np.ndarray
    judge_second: np.ndarray
    tflop: np.ndarray
    inception: list[np.ndarray] = field(default_factory=list)
    clip: list[np.ndarray] = field(default_factory=list)
    curves: list[list[tuple[float, float]]] = field(default_factory=list)

    @classmethod
    def for_items(cls, n: int) -> "_Columns":
        def nan() -> np.ndarray:
            return np.full(n, np.nan)

        return cls(clip_d=nan(), geometry=nan(), final_r=nan(), final_r_own=nan(), empty=np.zeros(n, bool),
                   components={c: nan() for c in COMPONENT_NAMES}, judge_first=nan(), judge_second=nan(), tflop=nan())

    def add(self, i: int, name: str, record: dict, evaluation: dict, features: dict, manifest: dict | None) -> None:
        """Item i's values for configuration `name`: its record, its evaluation entry, features and r curve."""
        entry = evaluation["configs"][name]
        self.empty[i] = record["status"] != "ok"
        if record.get("compute"):
            self.tflop[i] = compute_tflop(record["compute"])
        if "clip_d" in entry:
            self.clip_d[i] = entry["clip_d"]
        if entry.get("geometry") is not None:
            self.geometry[i] = entry["geometry"]["score"]
            for c in COMPONENT_NAMES:
                self.components[c][i] = entry["geometry"]["components"][c]
        else:
            self.geometry[i] = EMPTY_GEOMETRY_SCORE
        for values, field_name in ((self.final_r, "final_r_reference"), (self.final_r_own, "final_r")):
            if record.get(field_name) is not None:
                values[i] = record[field_name]
        if f"inception/{name}" in features:
            self.inception.append(features[f"inception/{name}"][0])
        if f"clip/{name}" in features:
            self.clip.append(features[f"clip/{name}"][0])
        if name in evaluation.get("judge", {}):
            self.judge_first[i] = evaluation["judge"][name]["diff_guided_first"]
            self.judge_second[i] = evaluation["judge"][name]["diff_base_first"]
        steps = manifest.get("records", []) if manifest is not None else []
        self.curves.append([(s["sigma"], s["r"]) for s in steps if s.get("guided") and s.get("r") is not None])

    def config_data(self, n: int) -> ConfigData:
        judged = not np.isnan(self.judge_first).all()
        return ConfigData(
            clip_d=self.clip_d, geometry=self.geometry, components=self.components, final_r=self.final_r,
            final_r_own=self.final_r_own, empty=self.empty, inception=_stack(self.inception, n),
            clip_features=_stack(self.clip, n), judge_first=self.judge_first if judged else None,
            judge_second=self.judge_second if judged else None, r_curves=self.curves, compute_tflop=self.tflop,
        )


def _calibration_answers(bench: BenchSet, evaluations: dict[str, dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """The judge's calibration answers per check, in item order."""
    calibration: dict[str, list[tuple[float, float]]] = {}
    for item in bench.items:
        for check, answer in evaluations[item.id].get("judge_calibration", {}).items():
            calibration.setdefault(check, []).append((answer["diff_guided_first"], answer["diff_base_first"]))
    return calibration


# ---------------------------------------------------------------------------------------------
# Statistics.


def _ci_dict(values: np.ndarray, n_resamples: int, confidence: float, seed: int) -> dict[str, Any] | None:
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if len(finite) == 0:
        return None
    ci = bootstrap_ci(finite, np.mean, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return {"value": ci.value, "ci_low": ci.low, "ci_high": ci.high, "n": ci.n_items, "confidence": confidence}


@dataclass(frozen=True)
class _Bootstrap:
    """How every CI of one summary is drawn (each metric gets its own seed)."""

    n_resamples: int
    confidence: float

    def mean(self, values: np.ndarray, seed: int) -> dict[str, Any] | None:
        return _ci_dict(values, self.n_resamples, self.confidence, seed)

    def options(self, seed: int) -> dict[str, Any]:
        return {"n_resamples": self.n_resamples, "confidence": self.confidence, "seed": seed}


def summarize(collected: Collected, *, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """All aggregate metrics, paired differences to base and warnings, as a JSON-ready dict."""
    n = len(collected.items)
    boot = _Bootstrap(n_resamples, confidence)
    metrics: dict[str, Any] = {}
    paired: dict[str, Any] = {}
    for index, config in enumerate(collected.configs):
        s = seed + 101 * index  # this configuration's seeds: s, s + 1, ..., s + 12
        metrics[config.name] = _metric_row(collected, config.name, boot, s)
        if config.name != BASE:
            paired[config.name] = _paired_row(collected, config.name, boot, s)
    warnings = _sample_size_warnings(collected) + _configuration_warnings(collected, metrics)
    calibration, calibration_warnings = _judge_calibration(collected, metrics, boot, seed + 997)
    warnings += calibration_warnings
    for w in warnings:
        logger.info("report warning: %s", w)
    return {
        "judge_calibration": calibration,
        "n_items": n,
        "items": collected.items,
        "configs": [c.to_dict() for c in collected.configs],
        "confidence": confidence,
        "n_resamples": n_resamples,
        "metrics": metrics,
        "paired_vs_base": paired,
        "warnings": warnings,
        "per_item": per_item_table(collected),
        "definitions": DEFINITIONS,
        "run": collected.run,
    }


def _metric_row(collected: Collected, name: str, boot: _Bootstrap, s: int) -> dict[str, Any]:
    """One configuration's metrics with their CIs (seeds s … s + 7)."""
    n, d = len(collected.items), collected.data[name]
    row: dict[str, Any] = {
        "n_items": n,
        "n_empty": int(d.empty.sum()),
        "clip_d": boot.mean(d.clip_d, s),
        "geometry": boot.mean(d.geometry, s + 1),
        "geometry_components": {c: (float(np.nanmean(v)) if np.isfinite(v).any() else None) for c, v in d.components.items()},
        "final_r": boot.mean(d.final_r, s + 2),
        "final_r_own_query": boot.mean(d.final_r_own, s + 3),
        "fid": None, "clip_fid": None, "kid": None, "judge": None,
        "compute_tflop": (float(np.nanmean(d.compute_tflop))
                          if d.compute_tflop is not None and np.isfinite(d.compute_tflop).any() else None),
    }
    if n >= 2 and d.inception is not None and collected.reference_inception is not None:
        row["fid"] = frechet_distance_with_ci(d.inception, collected.reference_inception, paired=True,
                                              **boot.options(s + 4)).to_dict()
        row["kid"] = kernel_inception_distance(d.inception, collected.reference_inception, paired=True,
                                               **boot.options(s + 5)).to_dict()
    if n >= 2 and d.clip_features is not None and collected.reference_clip is not None:
        row["clip_fid"] = frechet_distance_with_ci(d.clip_features, collected.reference_clip, paired=True,
                                                   **boot.options(s + 6)).to_dict()
    if d.judge_first is not None and d.judge_second is not None:
        row["judge"] = summarize_judgements(d.judge_first, d.judge_second, **boot.options(s + 7)).to_dict()
    return row


def _paired_row(collected: Collected, name: str, boot: _Bootstrap, s: int) -> dict[str, Any]:
    """configuration − base on the same items, with CIs (seeds s + 8 … s + 12)."""
    n, d, base = len(collected.items), collected.data[name], collected.data[BASE]
    diff: dict[str, Any] = {
        "clip_d": boot.mean(d.clip_d - base.clip_d, s + 8),
        "geometry": boot.mean(d.geometry - base.geometry, s + 9),
        "final_r": boot.mean(d.final_r - base.final_r, s + 10),
        "fid": None, "clip_fid": None,
    }
    if n >= 2 and d.inception is not None and base.inception is not None and collected.reference_inception is not None:
        diff["fid"] = frechet_difference_with_ci(base.inception, d.inception, collected.reference_inception,
                                                 paired_reference=True, **boot.options(s + 11)).to_dict()
    if n >= 2 and d.clip_features is not None and base.clip_features is not None and collected.reference_clip is not None:
        diff["clip_fid"] = frechet_difference_with_ci(base.clip_features, d.clip_features, collected.reference_clip,
                                                      paired_reference=True, **boot.options(s + 12)).to_dict()
    return diff


def _sample_size_warnings(collected: Collected) -> list[str]:
    """What the number of items does to the CIs and the Fréchet distances."""
    n, warnings = len(collected.items), []
    if n < MIN_ITEMS_FOR_CI:
        warnings.append(f"Only N = {n} items: bootstrap CIs over so few items are rough; read differences against "
                        f"the noise floor (base_seed2) and prefer N ≥ {MIN_ITEMS_FOR_CI}.")
    if n < 2:
        warnings.append("FID, CLIP-FID and KID need at least 2 items; they are not reported.")
    fid_dims = {"FID": collected.reference_inception, "CLIP-FID": collected.reference_clip}
    for label, ref in fid_dims.items():
        if ref is not None and n >= 2 and n < ref.shape[1] + 1:
            warnings.append(f"{label} at N = {n} items in {ref.shape[1]} dims: the covariances are rank-deficient and the "
                            "value is biased upward; compare only at the same N and reference set, and read the paired "
                            "difference to base (second table) or KID instead of the raw value.")
    if collected.reference_inception is not None and 2 <= n < KID_MIN_ITEMS:
        warnings.append(f"KID at N = {n} < {KID_MIN_ITEMS}: unbiased but noisy; read its CI.")
    return warnings


def _configuration_warnings(collected: Collected, metrics: dict[str, Any]) -> list[str]:
    """Empty shapes, an order-following judge, no noise floor, the tiny preset."""
    n, warnings = len(collected.items), []
    for config in collected.configs:
        row = metrics[config.name]
        if row["n_empty"]:
            warnings.append(f"{config.name}: {row['n_empty']} of {n} shapes came out empty; they count as blank renders "
                            f"(CLIP-D, FID, judge) and Geo = {EMPTY_GEOMETRY_SCORE}, and have no final r.")
        if row["judge"] is not None and row["judge"]["tie_rate"] > 0.5:
            warnings.append(f"judge on {config.name}: {row['judge']['tie_rate']:.0%} of items order-inconsistent (ties); "
                            "the judge mostly follows the position, not the object.")
    if NOISE_FLOOR not in metrics:
        warnings.append("No seed-vs-seed noise floor was measured (run with --noise-floor to add base_seed2).")
    if collected.run.get("generation", {}).get("preset") == "tiny":
        warnings.append("Preset tiny: random tiny shape, critic and metric models; every number here is meaningless "
                        "and only shows that the pipeline runs.")
    return warnings


def _judge_calibration(collected: Collected, metrics: dict[str, Any], boot: _Bootstrap,
                       seed: int) -> tuple[dict[str, Any] | None, list[str]]:
    """The judge's calibration summary (None when none was run) and what it says about the win rates."""
    if not collected.judge_calibration:
        if any(metrics[c.name]["judge"] is not None for c in collected.configs):
            return None, ["The judge was not calibrated (--calibrate-judge): its win rates come without a check that it "
                          "tells a shape from a clearly degraded copy."]
        return None, []
    from ..metrics.calibration import summarize_calibration
    from ..metrics.judge import PairwiseJudgement

    answers = {check: [PairwiseJudgement(a, b) for a, b in pairs] for check, pairs in collected.judge_calibration.items()}
    judged = summarize_calibration(answers, **boot.options(seed))
    calibration = {**judged.to_dict(), "trustworthy": judged.trustworthy(), "lines": judged.lines()}
    if judged.trustworthy():
        return calibration, []
    return calibration, ["judge calibration failed (base vs base's CI misses 0.5, or a clear gap's CI reaches 0.5): "
                         "its win rates above do not tell good from bad shapes reliably."]


def per_item_table(collected: Collected) -> dict[str, dict[str, dict[str, Any]]]:
    """Per configuration and item: CLIP-D, Geo, final r, empty, judge outcome (JSON-ready, NaN → None)."""
    from ..metrics import combine_orders

    def num(x: float) -> float | None:
        return None if not np.isfinite(x) else float(x)

    out: dict[str, dict[str, dict[str, Any]]] = {}
    for config in collected.configs:
        d = collected.data[config.name]
        rows = {}
        for i, item in enumerate(collected.items):
            row = {"clip_d": num(d.clip_d[i]), "geometry": num(d.geometry[i]), "final_r": num(d.final_r[i]),
                   "final_r_own_query": num(d.final_r_own[i]), "empty": bool(d.empty[i])}
            if d.judge_first is not None and d.judge_second is not None:
                row["judge_outcome"] = combine_orders(float(d.judge_first[i]), float(d.judge_second[i]))
            rows[item] = row
        out[config.name] = rows
    return out


DEFINITIONS = {
    "CLIP-D": "1 − mean over the evaluation views of cos(E_text(prompt), E_image(view)), both L2-normalised, raw prompt; "
              "our definition (the paper gives none). Lower is better.",
    "FID": "Fréchet distance between Inception-v3 pool3 features (torchvision weights) of the front evaluation view "
           "(azimuth 0) and of the input images (reference set: composited over white, padded square, resized to the "
           "render size); float64, symmetric eigendecompositions only. Renders are untextured grey, inputs coloured: a "
           "constant offset shared by every row, so only differences between rows mean something. Biased upward at "
           "small N. Lower is better.",
    "CLIP-FID": "The same Fréchet distance on CLIP image embeddings (projected, unnormalised). Lower is better.",
    "KID": "Unbiased MMD² between the same Inception features, cubic polynomial kernel (xᵀy/d + 1)³. Lower is better.",
    "Geo": "Our geometry score in [0, 1] (lower is better): weighted mean of floaters, fragmentation, open surface, "
           "non-manifold, self-intersecting, mis-oriented and degenerate faces after merging vertices; scale-invariant. "
           "An empty shape scores 1.",
    "judge": "Win rate against base by a VLM judge of another family than the critic: pairwise, both orders; win if "
             "preferred in both, loss if base is, tie otherwise; win rate = (wins + ties/2)/N. Higher is better; "
             "base vs base_seed2 calibrates it (≈ 0.5).",
    "final r": "The guiding critic's log-odds log P(Yes) − log P(No) on the final mesh, dual query, base's un-jittered "
               "views, for every configuration. The critic grading itself: not independent evidence.",
    "CI": "Percentile bootstrap over items (FD: shifted by the bootstrap bias); paired rows resample the same items "
          "for both configurations.",
}


# ---------------------------------------------------------------------------------------------
# Markdown.


def _number_format(values: list[float | None], digits: int = 3) -> str:
    """One format for numbers shown together: fixed decimals, or scientific when they are tiny or huge."""
    finite = [abs(v) for v in values if v is not None and math.isfinite(v) and v != 0]
    if finite and (max(finite) >= 1e4 or max(finite) < 10 ** (1 - digits)):
        return f".{digits - 1}e"
    return f".{digits}f"


def _fmt(x: float | None, digits: int = 3, spec: str | None = None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return format(x, spec or _number_format([x], digits))


def _cell(entry: dict[str, Any] | None, key: str = "value", low: str = "ci_low", high: str = "ci_high", digits: int = 3) -> str:
    if entry is None:
        return "—"
    spec = _number_format([entry[key], entry[low], entry[high]], digits)
    return f"{_fmt(entry[key], spec=spec)} [{_fmt(entry[low], spec=spec)}, {_fmt(entry[high], spec=spec)}]"


def _judge_cell(judge: dict[str, Any] | None, calibration: dict[str, Any] | None = None) -> str:
    if judge is None:
        return "—"
    cell = (f"{_fmt(judge['win_rate'], 2)} [{_fmt(judge['ci_low'], 2)}, {_fmt(judge['ci_high'], 2)}] "
            f"({judge['wins']}/{judge['ties']}/{judge['losses']})")
    if calibration is None:
        return cell + " · uncalibrated"
    # The calibration next to every win rate: base vs base, and the weakest clear gap.
    b = calibration["base_vs_base"]
    gap_name, gap = min(calibration["clear_gap"].items(), key=lambda kv: kv[1]["ci_low"])
    return (cell + f" · cal. base/base {_fmt(b['win_rate'], 2)} [{_fmt(b['ci_low'], 2)}, {_fmt(b['ci_high'], 2)}], "
            f"weakest gap ({gap_name}) {_fmt(gap['win_rate'], 2)} [{_fmt(gap['ci_low'], 2)}, {_fmt(gap['ci_high'], 2)}] N={gap['n_items']}")


def markdown_report(summary: dict[str, Any], *, figure_name: str | None = None) -> str:
    """The results as Markdown: main table, paired differences, geometry components, definitions, warnings."""
    lines = _header_lines(summary) + _main_table(summary) + _paired_table(summary) + _components_table(summary)
    lines += _calibration_section(summary.get("judge_calibration"))
    if figure_name:
        lines += ["", f"![per-item differences and critic r curves]({figure_name})"]
    lines += ["", "## Definitions", ""] + [f"- **{k}**: {v}" for k, v in summary["definitions"].items()]
    lines += ["", "## Warnings", ""] + ([f"- {w}" for w in summary["warnings"]] or ["- none"])
    lines += ["", "## Configurations", ""] + [_configuration_line(config) for config in summary["configs"]]
    return "\n".join(lines) + "\n"


def _header_lines(summary: dict[str, Any]) -> list[str]:
    """The title and what the run was: set, preset, steps, evaluation views, metric models, how to read a cell."""
    run = summary.get("run", {})
    gen = run.get("generation", {})
    metric_models = run.get("metrics", {})
    eval_views = run.get("eval_views", {})
    return [
        "# Quality benchmark",
        "",
        f"Set `{run.get('set', {}).get('name', '?')}` ({summary['n_items']} items), preset `{gen.get('preset', '?')}`, "
        f"{gen.get('steps', '?')} steps, CFG {gen.get('cfg_scale', '?')}, base seed {gen.get('seed', '?')} (same seeds for every "
        "configuration). Evaluation views: "
        f"{eval_views.get('num_views', '?')} × {eval_views.get('image_size', '?')} px at elevation {eval_views.get('elevation', '?')}°, "
        "azimuth from 0 (the front view is the FID view). Metric models: CLIP "
        f"`{metric_models.get('clip')}`, Inception `{metric_models.get('inception')}`, judge `{metric_models.get('judge')}`.",
        "",
        f"Cells: value [{summary['confidence']:.0%} bootstrap CI over items]. N = items per configuration (FID/KID: N generated "
        "front views vs the N input images). ↓ lower is better, ↑ higher is better.",
        "",
        "Compute: mean real-size TFLOP per item (the run's counted DiT rows, critic forwards and backwards "
        "priced with benchmarks/cost_model.py; vlm3d_ttg.compute.compute_tflop), so configurations compare at "
        "what they would cost with the real models.",
        "",
    ]


def _main_table(summary: dict[str, Any]) -> list[str]:
    """One row per configuration: every metric with its CI, the judge with its calibration, compute."""
    metrics = summary["metrics"]
    lines = [
        "| config | N | CLIP-D ↓ | FID ↓ | CLIP-FID ↓ | KID ↓ | Geo ↓ | judge win vs base ↑ (W/T/L) | final r ↑ "
        "| compute TFLOP/item |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for config in summary["configs"]:
        name = config["name"]
        m = metrics[name]
        empty = f" ({m['n_empty']} empty)" if m["n_empty"] else ""
        lines.append(
            f"| {name} | {m['n_items']}{empty} | {_cell(m['clip_d'])} | {_cell(m['fid'])} | {_cell(m['clip_fid'])} | "
            f"{_cell(m['kid'])} | {_cell(m['geometry'])} | {_judge_cell(m['judge'], summary.get('judge_calibration'))} | {_cell(m['final_r'])} | "
            f"{_fmt(m.get('compute_tflop'), spec='.0f') if m.get('compute_tflop') is not None else '—'} |"
        )
    return lines


def _paired_table(summary: dict[str, Any]) -> list[str]:
    """Paired differences to base (nothing when base is the only configuration)."""
    metrics, paired = summary["metrics"], summary["paired_vs_base"]
    if not paired:
        return []
    lines = [
        "",
        "## Paired differences to base (configuration − base, same items and seeds)",
        "",
        "Negative is better for Δ CLIP-D, Δ FID, Δ CLIP-FID and Δ Geo; positive for Δ final r. "
        + (f"`{NOISE_FLOOR}` is base with seed + 1: its row is the seed-vs-seed noise floor."
           if NOISE_FLOOR in paired else "No noise floor was measured (`--noise-floor`)."),
        "",
        "| config | N | Δ CLIP-D | Δ FID | Δ CLIP-FID | Δ Geo | Δ final r | judge tie rate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for config in summary["configs"]:
        name = config["name"]
        if name not in paired:
            continue
        p, judge = paired[name], metrics[name]["judge"]
        lines.append(
            f"| {name} | {metrics[name]['n_items']} | {_cell(p['clip_d'])} | {_cell(p['fid'])} | {_cell(p['clip_fid'])} | "
            f"{_cell(p['geometry'])} | {_cell(p['final_r'])} | {_fmt(judge['tie_rate'], 2) if judge else '—'} |"
        )
    return lines


def _components_table(summary: dict[str, Any]) -> list[str]:
    """The geometry score's components per configuration."""
    lines = ["", "## Geometry score components (mean over non-empty shapes; 0 = no defect)", "",
             "| config | " + " | ".join(COMPONENT_NAMES) + " |", "|---" * (len(COMPONENT_NAMES) + 1) + "|"]
    for config in summary["configs"]:
        comps = summary["metrics"][config["name"]]["geometry_components"]
        lines.append(f"| {config['name']} | " + " | ".join(_fmt(comps[c]) for c in COMPONENT_NAMES) + " |")
    return lines


def _calibration_section(calibration: dict[str, Any] | None) -> list[str]:
    """The judge's calibration and whether it passes (nothing when none was run)."""
    if calibration is None:
        return []
    return ["", "## Judge calibration (the base meshes; original vs itself, and vs clearly degraded copies)", "",
            "Win rate of the original [CI] with N. Trust the judge's win rates only if base vs base is ≈ 0.5 and "
            "every clear gap is well above 0.5" + (" — it passes." if calibration["trustworthy"] else " — it does NOT pass."),
            "", "```"] + calibration["lines"] + ["```"]


def _configuration_line(config: dict[str, Any]) -> str:
    """What one configuration ran."""
    g = config["guidance"]
    what = "unguided" if not g["enabled"] else (
        f"query {g['query']}, λ {g['scale']} ({g['step_norm']}), σ window {g['sigma_window']}, every {g['every']}, "
        f"{g['num_views']} views × {g['view_size']} px, grid {g['grid_resolution']}, grad {g['grad_mode']}")
    return f"- `{config['name']}`: {config['description']}; {what}; seed offset {config['seed_offset']}"


# ---------------------------------------------------------------------------------------------
# Figure.


def write_figure(path: Path, collected: Collected, summary: dict[str, Any]) -> Path:
    """A PNG: per-item Δ CLIP-D and Δ Geo vs base, the critic's r over σ, and judge outcomes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [c.name for c in collected.configs if c.name != BASE]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), dpi=110)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {c.name: cycle[k % len(cycle)] for k, c in enumerate(collected.configs)}  # one colour per config, every panel
    _delta_strip(axes[0, 0], collected, summary, others, colors, "clip_d", "Δ CLIP-D vs base (↓ better)")
    _delta_strip(axes[0, 1], collected, summary, others, colors, "geometry", "Δ Geo vs base (↓ better)")
    _r_curves_panel(axes[1, 0], collected, summary, colors)
    _judge_panel(axes[1, 1], summary, others)
    fig.suptitle(f"Quality benchmark: {len(collected.items)} items" +
                 (" (tiny preset: meaningless numbers)" if collected.run.get("generation", {}).get("preset") == "tiny" else ""),
                 fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def _delta_strip(ax: Any, collected: Collected, summary: dict[str, Any], others: list[str], colors: dict[str, str],
                 attribute: str, label: str) -> None:
    """Per-item differences to base of one metric (dots) and their paired mean with its CI (black)."""
    base = collected.data[BASE]
    ax.axhline(0.0, color="grey", lw=0.8)
    for k, name in enumerate(others):
        delta = getattr(collected.data[name], attribute) - getattr(base, attribute)
        jitter = np.linspace(-0.15, 0.15, len(delta)) if len(delta) > 1 else np.zeros(1)
        ax.scatter(k + jitter, delta, s=18, color=colors[name], alpha=0.8)
        ci = summary["paired_vs_base"][name][attribute]
        if ci is not None:
            ax.errorbar([k + 0.3], [ci["value"]], yerr=[[ci["value"] - ci["ci_low"]], [ci["ci_high"] - ci["value"]]],
                        fmt="D", color="black", capsize=3, ms=4)
    ax.set_xticks(range(len(others)), others, rotation=20, fontsize=8)
    ax.set_ylabel(label)
    ax.set_title(f"{label} per item (dots), mean with CI (black)", fontsize=9)


def _r_curves_panel(ax: Any, collected: Collected, summary: dict[str, Any], colors: dict[str, str]) -> None:
    """The critic's r at the guided steps over σ: each item thin, the mean per σ thick; base's mean final r."""
    plotted = False
    for config in collected.configs:
        curves = [c for c in collected.data[config.name].r_curves if c]
        if not curves:
            continue
        color = colors[config.name]
        for curve in curves:
            ax.plot([s for s, _ in curve], [r for _, r in curve], color=color, alpha=0.25, lw=0.8)
        by_sigma: dict[float, list[float]] = {}
        for curve in curves:
            for s, r in curve:
                by_sigma.setdefault(round(s, 6), []).append(r)
        sigmas = sorted(by_sigma)
        ax.plot(sigmas, [np.mean(by_sigma[s]) for s in sigmas], "o-", color=color, lw=2, ms=3, label=f"{config.name} (mean)")
        plotted = True
    base_r = summary["metrics"][BASE]["final_r"]
    if base_r is not None:
        ax.axhline(base_r["value"], color="black", ls="--", lw=1, label="base: mean final r")
    ax.set_xlabel("σ (0 = noise, 1 = data)")
    ax.set_ylabel("critic r at guided steps")
    ax.set_title("critic r during guided runs, each with its own query and views (thin: items)"
                 if plotted else "no guided steps recorded", fontsize=9)
    ax.legend(fontsize=7)


def _judge_panel(ax: Any, summary: dict[str, Any], others: list[str]) -> None:
    """The judge's wins, ties and losses against base per configuration (or "judge off")."""
    judged = [n for n in others if summary["metrics"][n]["judge"] is not None]
    if not judged:
        ax.axis("off")
        ax.text(0.5, 0.5, "judge off", ha="center", va="center")
        return
    wins = np.array([summary["metrics"][n]["judge"]["wins"] for n in judged])
    ties = np.array([summary["metrics"][n]["judge"]["ties"] for n in judged])
    losses = np.array([summary["metrics"][n]["judge"]["losses"] for n in judged])
    x = np.arange(len(judged))
    ax.bar(x, wins, color="tab:green", label="win")
    ax.bar(x, ties, bottom=wins, color="lightgrey", label="tie (order-inconsistent)")
    ax.bar(x, losses, bottom=wins + ties, color="tab:red", label="loss")
    ax.set_xticks(x, judged, rotation=20, fontsize=8)
    ax.set_ylabel("items")
    ax.legend(fontsize=7)
    ax.set_title("judge vs base, both orders", fontsize=9)


@dataclass
class ReportFiles:
    """Where the merged results were written."""

    markdown: Path
    json: Path
    figure: Path


def write_report(
    bench: BenchSet, configs: list[BenchConfig], paths: RunPaths, *, n_resamples: int = 1000, confidence: float = 0.95
) -> tuple[ReportFiles, dict[str, Any]]:
    """Collect, summarise and write results.md, results.json and results.png into the run folder."""
    collected = collect(bench, configs, paths)
    summary = summarize(collected, n_resamples=n_resamples, confidence=confidence)
    files = ReportFiles(paths.root / "results.md", paths.root / "results.json", paths.root / "results.png")
    write_figure(files.figure, collected, summary)
    write_text_atomic(files.json, json.dumps(_clean(summary), indent=2, allow_nan=False) + "\n")
    write_text_atomic(files.markdown, markdown_report(summary, figure_name=files.figure.name))
    return files, summary


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _clean(value.item())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    return value
