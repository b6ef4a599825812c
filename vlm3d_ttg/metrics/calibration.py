"""Calibrating the pairwise judge before trusting its win rates.

Two checks on the same meshes (the benchmark's base meshes), each a win rate with its bootstrap CI and N:
- base vs base: a mesh against itself. Expect ≈ 0.5; anything else is a bug or a leak of position.
- clear gap, per degradation: the mesh ("guided" side) against a clearly degraded copy of itself
  (`vlm3d_ttg.metrics.degrade`, "base" side). Expect ≈ 1 (a published protocol saw 0.83-1.0). A judge
  whose clear-gap CI reaches down to 0.5 cannot tell a broken shape from a sound one, and a guided-vs-base
  win rate from it means little.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .degrade import DEFAULT_DEGRADATIONS, Degradation
from .judge import JudgeSummary, PairwiseJudgement, judge_pair, summarize_judgements

Renderer = Callable[[np.ndarray, np.ndarray], torch.Tensor]  # (vertices, faces) → views (V, 3, H, W) in [0, 1]


@dataclass(frozen=True)
class CalibrationItem:
    """One mesh to calibrate on: its prompt, geometry, and input image (the judge's reference; None: none)."""

    id: str
    prompt: str
    vertices: np.ndarray
    faces: np.ndarray
    reference: torch.Tensor | None = None


@dataclass(frozen=True)
class JudgeCalibration:
    """Base-vs-base and per-degradation clear-gap win rates (each with its CI and N)."""

    base_vs_base: JudgeSummary
    clear_gap: dict[str, JudgeSummary]

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return {"base_vs_base": self.base_vs_base.to_dict(),
                "clear_gap": {name: summary.to_dict() for name, summary in self.clear_gap.items()}}

    def lines(self) -> list[str]:
        """Human-readable lines: each win rate with its CI and N, and what to expect."""
        def row(label: str, s: JudgeSummary, expect: str) -> str:
            return (f"{label:<22} {s.win_rate:.2f} [{s.ci_low:.2f}, {s.ci_high:.2f}]  N={s.n_items}  "
                    f"W/T/L {s.wins}/{s.ties}/{s.losses}  (expect {expect})")

        out = [row("base vs base", self.base_vs_base, "≈ 0.5")]
        out += [row(f"clear gap: {name}", s, "≈ 1") for name, s in self.clear_gap.items()]
        return out

    def trustworthy(self) -> bool:
        """Whether the judge passes: base vs base's CI contains 0.5, and every clear gap's CI lies above 0.5."""
        b = self.base_vs_base
        return b.ci_low <= 0.5 <= b.ci_high and all(s.ci_low > 0.5 for s in self.clear_gap.values())


def calibration_judgements(judge: Any, items: Sequence[CalibrationItem], render: Renderer,
                           degradations: Sequence[Degradation] = DEFAULT_DEGRADATIONS,
                           *, use_reference: bool = True, layout: str = "separate") -> dict[str, list[PairwiseJudgement]]:
    """The judge's answers: {"base_vs_base": [...], degradation name: [...]}, one judgement per item,
    the original mesh on the "guided" side and its copy (itself, or degraded) on the "base" side."""
    answers: dict[str, list[PairwiseJudgement]] = {"base_vs_base": []}
    for degradation in degradations:
        answers[degradation.name] = []
    for item in items:
        reference = item.reference if use_reference else None
        views = render(item.vertices, item.faces)
        answers["base_vs_base"].append(judge_pair(judge, item.prompt, views, views, reference, layout=layout))
        for degradation in degradations:
            degraded = render(*degradation.apply(item.vertices, item.faces))
            answers[degradation.name].append(judge_pair(judge, item.prompt, degraded, views, reference, layout=layout))
    return answers


def summarize_calibration(answers: dict[str, list[PairwiseJudgement]], *, n_resamples: int = 1000,
                          confidence: float = 0.95, seed: int = 0) -> JudgeCalibration:
    """Win rates with bootstrap CIs from `calibration_judgements`' answers."""
    def summary(judgements: list[PairwiseJudgement]) -> JudgeSummary:
        return summarize_judgements([j.diff_guided_first for j in judgements], [j.diff_base_first for j in judgements],
                                    n_resamples=n_resamples, confidence=confidence, seed=seed)

    return JudgeCalibration(summary(answers["base_vs_base"]),
                            {name: summary(js) for name, js in answers.items() if name != "base_vs_base"})


def calibrate_judge(judge: Any, items: Sequence[CalibrationItem], render: Renderer,
                    degradations: Sequence[Degradation] = DEFAULT_DEGRADATIONS, *, use_reference: bool = True,
                    layout: str = "separate", n_resamples: int = 1000, confidence: float = 0.95,
                    seed: int = 0) -> JudgeCalibration:
    """Calibrate `judge` on `items` (see the module docstring); `render` draws a mesh from the evaluation cameras."""
    if not items:
        raise ValueError("Judge calibration needs at least one mesh")
    answers = calibration_judgements(judge, items, render, degradations, use_reference=use_reference, layout=layout)
    return summarize_calibration(answers, n_resamples=n_resamples, confidence=confidence, seed=seed)


__all__ = ["CalibrationItem", "JudgeCalibration", "calibrate_judge", "calibration_judgements", "summarize_calibration"]
