"""What a run costs: the work counted as it happens, and its price in real-size TFLOP.

The sampler counts DiT rows and critic calls (`Compute`, the manifest's "compute") through wrappers
around the backbone and the reward (`MeteredBackbone`, `MeteredReward`) and times its phases with
`Compute.timed`, so the loop itself holds no counters; the benchmark
prices the counts with the real models' unit costs (`compute_tflop`), foresees a configuration's
counts without running it (`planned_compute`) and sets best-of-N's N to match a guided run's
compute (`equal_compute_candidates`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from .search import FINAL, SearchOptions, selection_step


@dataclass
class Compute:
    """The work a run did, counted as it happens (the manifest's "compute").

    dit_rows counts latent rows through the DiT (a CFG call on B candidates is 2B rows); critic
    forwards/backwards count calls of the critic on one candidate's views (a backward redone at a
    smaller loss scale is in `precision.loss_scale_overflows`, not here). Seconds are wall time by phase.
    """

    dit_calls: int = 0
    dit_rows: int = 0
    critic_forwards: int = 0
    critic_backwards: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def add_time(self, phase: str, seconds: float) -> None:
        """Add `seconds` to a phase's wall time."""
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    @contextmanager
    def timed(self, phase: str, record: Any = None) -> Iterator[None]:
        """Add the block's wall time to `phase` (and to `record.timings[phase]`, a step record's)."""
        tic = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - tic
            self.add_time(phase, seconds)
            if record is not None:
                record.timings[phase] = seconds

    def to_dict(self) -> dict:
        """A JSON-ready copy."""
        return dataclasses.asdict(self)


class MeteredBackbone:
    """A backbone whose velocity calls are counted in a `Compute` (calls, and latent rows through the
    model); everything else is the backbone's own."""

    def __init__(self, backbone: Any, compute: Compute):
        self._backbone = backbone
        self._compute = compute

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backbone, name)

    def velocity(self, latents: Any, step: int, context: Any) -> Any:
        """The backbone's velocity, counted: one call, `rows × context.rows_per_latent` model rows."""
        self._compute.dit_calls += 1
        self._compute.dit_rows += latents.shape[0] * context.rows_per_latent
        return self._backbone.velocity(latents, step, context)


class MeteredReward:
    """A reward (`guidance.LatentReward`) whose critic calls are counted in a `Compute`: a forward per
    evaluation (also one that raises), a backward per gradient, a mesh score when it succeeds."""

    def __init__(self, reward: Any, compute: Compute):
        self._reward = reward
        self._compute = compute

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reward, name)

    def __call__(self, latent: Any, *, generator: Any = None) -> Any:
        """The reward's differentiable evaluation (one critic forward)."""
        self._compute.critic_forwards += 1
        return self._reward(latent, generator=generator)

    def gradient(self, evaluation: Any, target: Any, loss_scale: Any) -> Any:
        """∇_target r of an evaluation (one critic backward, loss-scaled when half precision needs it);
        its wall time goes to `evaluation.timings["backward"]`."""
        tic = time.perf_counter()
        self._compute.critic_backwards += 1
        gradient = loss_scale.gradient(evaluation.r, target)
        evaluation.timings["backward"] = time.perf_counter() - tic
        return gradient

    def score_latent(self, latent: Any) -> Any:
        """The reward's forward-only verdict from the un-jittered cameras (one critic forward)."""
        try:
            return self._reward.score_latent(latent)
        finally:
            self._compute.critic_forwards += 1

    def score_mesh(self, vertices: Any, faces: Any) -> Any:
        """The reward's verdict on a mesh (one critic forward, counted when it succeeds)."""
        evaluation = self._reward.score_mesh(vertices, faces)
        self._compute.critic_forwards += 1
        return evaluation


@dataclass(frozen=True)
class CostWeights:
    """Real-size TFLOP of one unit of each kind of counted work (Hunyuan3D-2 + Qwen2.5-VL-7B at the
    default knobs: 4 views × 448², 64³ guidance grid). From benchmarks/cost_model.py
    (`unit_costs`); tests/test_search.py keeps the two in step.

    dit_row: one latent row through the DiT (a CFG call on one candidate is 2 rows).
    critic_forward: decode + grid + vertex query + render + critic forward (a forward-only score).
    critic_backward: what a guided step adds to its forward (ShapeVAE and vertex backward, the
    critic's input backward).
    """

    dit_row: float = 9.245
    critic_forward: float = 27.352
    critic_backward: float = 29.609


REAL_SIZE_COST = CostWeights()


def compute_tflop(compute: Compute | dict, weights: CostWeights = REAL_SIZE_COST) -> float:
    """A run's counted work in real-size TFLOP: what the same counts cost with the real models.

    This is the benchmark's compute unit: on the tiny models it compares configurations by the
    work they would cost for real, not by the tiny models' CPU seconds.
    """
    counts = compute.to_dict() if isinstance(compute, Compute) else compute
    return (counts["dit_rows"] * weights.dit_row + counts["critic_forwards"] * weights.critic_forward
            + counts["critic_backwards"] * weights.critic_backward)


def planned_compute(steps: int, guidance: Any, search: SearchOptions, *, cfg: bool = True) -> Compute:
    """The counts a `vlm3d-ttg generate` run will spend (no skipped step; the final mesh scored once
    more after export). `cfg`: the shape model runs classifier-free guidance (2 rows per latent)."""
    from .guidance import guided_steps

    sigmas = [index / (steps - 1) for index in range(steps)] + [1.0]
    rows_per = 2 if cfg else 1
    select = selection_step(sigmas, search.select_at) if search.searching else None
    guided = guided_steps(sigmas, guidance)
    if select is None:
        finishers = search.candidates
        rows = finishers * rows_per * steps
        forwards = 0
    else:
        finishers = search.keep
        rows = search.candidates * rows_per * (select + 1) + finishers * rows_per * (steps - select - 1)
        forwards = search.candidates
        guided = [i for i in guided if i > select]
    backwards = finishers * len(guided) * guidance.inner_steps
    forwards += backwards + (finishers if finishers > 1 else 0) + 1
    calls_per_step = 1 if not search.searching else math.ceil(search.candidates / search.batch())
    calls = calls_per_step * steps if select is None else calls_per_step * (select + 1) + (
        math.ceil(finishers / search.batch()) if finishers > 1 else 1) * (steps - select - 1)
    return Compute(dit_calls=calls, dit_rows=rows, critic_forwards=forwards, critic_backwards=backwards)


def equal_compute_candidates(steps: int, reference: Any, search: SearchOptions, guidance: Any,
                             weights: CostWeights = REAL_SIZE_COST, *, minimum: int = 2) -> int:
    """The number of candidates for which a search (`search` with `guidance`) costs closest to a run
    with `reference` guidance and one candidate (at least `minimum`), in real-size TFLOP."""
    target = compute_tflop(planned_compute(steps, reference, SearchOptions()), weights)
    best, best_gap = minimum, math.inf
    for count in range(minimum, 257):
        trial = dataclasses.replace(search, candidates=count, keep=min(search.keep, count - 1) if search.select_at < FINAL else 1)
        gap = abs(compute_tflop(planned_compute(steps, guidance, trial), weights) - target)
        if gap < best_gap:
            best, best_gap = count, gap
    return best


__all__ = ["REAL_SIZE_COST", "Compute", "CostWeights", "MeteredBackbone", "MeteredReward", "compute_tflop", "equal_compute_candidates", "planned_compute"]
