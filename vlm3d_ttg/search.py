"""Candidate search: sample N seeds together, let the critic pick the best early, guide the survivor.

Best-of-N / noise search (Ma et al. 2025, "inference-time scaling for diffusion models") spends the
critic on forward passes only: N candidates from seeds derived from the run's seed run through the
DiT as one batch up to σ_s; there each candidate's predicted clean latent x̂ is scored with the
critic from the un-jittered cameras (no graph kept), and the best k continue (with or without
guidance, per GuidanceConfig). σ_s = 1 skips the early selection: every candidate runs to the
end, and the exported meshes are scored (plain best-of-N).

What comes out when k > 1: one mesh. The k survivors all run to the end and the one whose
exported mesh scores best is the output: the final mesh is what users get and what the critic
judges most reliably (r of an early x̂ correlates only partly with the final r; RESULTS.md), so
k > 1 buys a second, better-informed selection among the early favourites. σ_s = 1 is the same
rule with k = N.

Guidance and the search phase: steps before the selection step are not guided (the search is
forward-only); with σ_s = 1 there is no search phase and every candidate is guided.

This module holds the options (declared once, for the CLI and the benchmark), the pure
selection rules, the records, and the search itself as a function around the sampler's flow loop
(`sample_candidates`: one noise row per candidate, a selection hook at σ_s, the final selection);
the loop is in `vlm3d_ttg.sampler`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import secrets
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .errors import EmptySurfaceError, InvalidInputError, SkippedStepError
from .guidance import RewardEvaluation, StepRecord, guided_steps, predicted_clean_latent
from .images import to_uint8
from .options import Checks, option

logger = logging.getLogger(__name__)

FINAL = 1.0  # select_at = 1: select among the finished meshes


@dataclass
class SearchOptions:
    """How many candidates a run samples, where the critic chooses among them, and how many survive."""

    candidates: int = option(1, "Candidates sampled together from seeds derived from --seed (best-of-N search); "
                                "1: one sample, exactly the plain sampler.", minimum=1,
                                maximum=64, why="best-of-N beyond 64 is a sweep, not a run", note="1 is the plain sampler")
    select_at: float = option(1.0, "σ at which the critic scores each candidate's predicted clean shape (forward "
                                   "only) and the best --keep continue; 1: run all to the end, keep the best mesh.",
                           above=0, maximum=1, note="σ: 0 noise → 1 data; 1 selects among the final meshes")
    keep: int = option(1, "Candidates that survive the selection at --select-at; with more than one, all run to "
                          "the end and the best final mesh is the output.", minimum=1)
    candidate_batch: int = option(0, "Candidates per DiT batch (0: all at once); lower it to fit GPU memory.",
                                  minimum=0, note="0: all candidates in one batch")

    def validate(self) -> "SearchOptions":
        """Raise InvalidInputError naming the first bad field and what it accepts; return self."""

        check = Checks(self, "Invalid search option")
        bad = check.bad
        check.declared()  # kinds and declared ranges (the sane bound of candidates included)
        if self.keep > self.candidates:
            bad(f"keep must be ≤ candidates ({self.candidates}), got {self.keep}")
        if self.candidates == 1 and self.select_at != FINAL:
            bad(f"select_at ({self.select_at}) chooses among candidates; give candidates > 1 too")
        if self.candidates > 1 and self.select_at < FINAL and self.keep == self.candidates:
            bad(f"keep must be < candidates when select_at < 1 (keeping all {self.candidates} selects nothing; "
                "use select_at 1 for best-of-N on the final meshes)")
        if self.select_at == FINAL and self.keep != 1:
            bad(f"keep ({self.keep}) applies to the selection at select_at < 1; with select_at 1 the best final "
                "mesh is kept")
        return self

    @property
    def searching(self) -> bool:
        """True when the run samples more than one candidate."""
        return self.candidates > 1

    def batch(self) -> int:
        """Candidates per DiT call."""
        return self.candidate_batch or self.candidates

    def to_dict(self) -> dict:
        """A JSON-ready copy (for manifests)."""
        return dataclasses.asdict(self)


def check_search_with_guidance(search: SearchOptions, guidance: Any) -> None:
    """Refuse search combined with guidance options it cannot serve (before any model loads)."""
    if not search.searching:
        return
    several_guided = search.keep > 1 or search.select_at == FINAL
    if several_guided and guidance.active and guidance.grad_mode == "xt":
        raise InvalidInputError(
            "grad_mode xt (--grad-mode) differentiates through one DiT call per guided sample; it cannot guide "
            "several candidates at once (--keep > 1 or --select-at 1). Use --grad-mode x0 or --keep 1 with "
            "--select-at below 1.")


def candidate_seeds(seed: int | None, generator: torch.Generator | None, count: int) -> list[int]:
    """The noise seeds of `count` candidates: the run's seed first (candidate 0 starts from the
    plain run's noise), then seeds hashed from it, so the same --seed gives the same candidates.
    Without a seed they are hashed from the generator's state (or fresh randomness)."""
    if seed is None:
        if generator is None:
            root = secrets.token_bytes(16)
        else:
            root = generator.get_state().cpu().numpy().tobytes()
        first = None
    else:
        root, first = int(seed).to_bytes(8, "little"), int(seed)
    seeds: list[int] = [] if first is None else [first]
    index = len(seeds)
    while len(seeds) < count:
        digest = hashlib.sha256(b"vlm3d-ttg candidate\0" + root + index.to_bytes(4, "little")).digest()
        seeds.append(int.from_bytes(digest[:8], "little") & (2**63 - 1))
        index += 1
    return seeds


def selection_step(sigmas: Sequence[float], select_at: float) -> int | None:
    """The step at which candidates are scored: the first whose σ is ≥ `select_at` (its x̂ is the
    prediction from there), or None for select_at = 1 (selection among the final meshes)."""
    if select_at >= FINAL:
        return None
    for index, sigma in enumerate(sigmas):
        if sigma >= select_at:
            return index
    return len(sigmas) - 1


def guided_steps_with_search(sigmas: Sequence[float], config: Any, search: "SearchOptions") -> list[int]:
    """The steps a run guides (`guidance.guided_steps`) without the search phase: the steps up to and
    including the selection step are forward-only."""
    steps = guided_steps(list(sigmas), config)
    select = selection_step(sigmas, search.select_at) if search.searching else None
    return steps if select is None else [i for i in steps if i > select]


def observation_steps(sigmas: Sequence[float], config: Any, search: "SearchOptions | None") -> list[int]:
    """The steps whose x̂ a run that guides shows the reward's observers first, in order: the selection step
    of a search with σ_s < 1, then the guidance schedule (σ window, every k) as if guidance were on. A run
    that guides none of them shows them these x̂ all the same (sampler.ObserveHook)."""
    search = search or SearchOptions()
    steps = guided_steps_with_search(sigmas, dataclasses.replace(config, enabled=True, scale=config.scale or 1.0), search)
    if search.searching and search.select_at < 1.0:
        steps = [selection_step(sigmas, search.select_at)] + steps
    return steps


def select_candidates(scores: Sequence[float | None], keep: int) -> list[int]:
    """Indices of the `keep` best scores, best first; unscored (None or NaN) rank last; ties go to
    the lower index, so the choice is deterministic."""
    if keep < 1:
        raise InvalidInputError(f"keep must be ≥ 1, got {keep}")

    def key(index: int) -> tuple[int, float, int]:
        score = scores[index]
        if score is None or not math.isfinite(score):
            return (1, 0.0, index)
        return (0, -score, index)

    return sorted(range(len(scores)), key=key)[:keep]


@dataclass
class CandidateRecord:
    """One candidate of a search: its seed, the critic's verdicts, and whether it survived."""

    index: int
    seed: int
    r: float | None = None  # at the selection step (None: not scored there, or scoring failed)
    p_yes: float | None = None
    skipped: str | None = None  # why scoring at σ_s failed (e.g. empty_surface): ranked last
    kept: bool = False  # survived the selection at σ_s (all do when select_at = 1)
    final_r: float | None = None  # its exported mesh's r (when several ran to the end)
    final_p_yes: float | None = None
    chosen: bool = False  # the run's output

    def to_dict(self) -> dict:
        """A JSON-ready copy."""
        return dataclasses.asdict(self)


@dataclass
class SearchRecord:
    """What a search did: where it selected and what became of every candidate."""

    options: SearchOptions
    select_step: int | None
    select_sigma: float | None
    candidates: list[CandidateRecord]
    chosen: int | None = None
    views: dict[int, torch.Tensor] = field(default_factory=dict)  # candidate → uint8 view 0 at σ_s (not in JSON)

    def to_dict(self) -> dict:
        """A JSON-ready copy (without the views)."""
        return {"options": self.options.to_dict(), "select_step": self.select_step, "select_sigma": self.select_sigma,
                "chosen": self.chosen, "candidates": [c.to_dict() for c in self.candidates]}


@dataclass
class Candidates:
    """The live candidates of a run (the rows of the latents, by candidate index) and each one's step records."""

    alive: list[int]
    records: dict[int, list[StepRecord]]
    found: SearchRecord | None  # None: one sample, no search

    @classmethod
    def start(cls, rows: int, found: SearchRecord | None) -> "Candidates":
        """`rows` candidates (one without a search), none with records yet."""
        alive = list(range(rows if found is not None else 1))
        return cls(alive, {j: [] for j in alive}, found)

    def new_records(self, step: int, sigma: float, guided: bool) -> dict[int, StepRecord]:
        """One fresh record per live candidate for this step."""
        return {j: StepRecord(step=step, sigma=sigma, guided=guided) for j in self.alive}

    def keep(self, rows: list[int]) -> None:
        """Only these rows (best first) stay alive."""
        self.alive = [self.alive[row] for row in rows]

    def append(self, step_records: dict[int, StepRecord]) -> None:
        """Add a step's records to the live candidates' histories."""
        for j in self.alive:
            self.records[j].append(step_records[j])


#: The sampler's flow loop as the search calls it: loop(run, hooks) runs every step on run's latents.
FlowLoop = Callable[[Any, Sequence[Callable[[Any, Any], None]]], None]


def sample_candidates(loop: FlowLoop, run: Any, hooks: Sequence[Callable[[Any, Any], None]]) -> tuple[int, Any]:
    """Best-of-N around the sampler's flow loop: one noise row per candidate, the critic's selection at σ_s
    as a step hook before `hooks` (guidance), then the final selection among the survivors' meshes.

    `run` is the sampler's `Run` (its call, context, backbone, reward, meters; its latents and live
    candidates are set here). Returns (the output's row among the live candidates, its mesh or None
    for output_type "latent"); `run.latents` ends as the output's row."""
    options, call = run.call.search, run.call
    seeds = candidate_seeds(call.seed, call.generator, options.candidates)
    run.latents = torch.cat([run.backbone.noise(1, torch.Generator().manual_seed(s)) for s in seeds])
    found = SearchRecord(options, selection_step(run.context.sigmas, options.select_at), None,
                         [CandidateRecord(index=j, seed=s) for j, s in enumerate(seeds)])
    run.live = Candidates.start(run.latents.shape[0], found)
    loop(run, [SelectionHook(found), *hooks])
    # 6. Decode the final latent(s): several live candidates: decode each, keep the one whose mesh the
    #    critic likes best.
    winner, mesh = 0, None
    if len(run.live.alive) > 1:
        winner, mesh = select_final(run, found)
        run.latents = run.latents[winner:winner + 1]
    elif call.output_type == "trimesh":
        mesh = run.decode(run.latents)
    found.chosen = run.live.alive[winner]
    found.candidates[run.live.alive[winner]].chosen = True
    return winner, mesh


class SelectionHook:
    """Step 3b of the loop as a step hook: at the selection step, the critic scores every live candidate's
    x̂ (forward only, un-jittered cameras) and only the best `keep` rows continue."""

    def __init__(self, found: SearchRecord):
        self.found = found

    def __call__(self, run: Any, step: Any) -> None:
        """Select (a no-op at every other step)."""
        if step.index != self.found.select_step:
            return
        run.offload.activate("critic")
        with run.compute.timed("selection"):
            rows = self.select(run, step)
        run.latents, step.velocity, step.next_latents = run.latents[rows], step.velocity[rows], step.next_latents[rows]
        run.live.keep(rows)

    def select(self, run: Any, step: Any) -> list[int]:
        """The rows of the best `keep` candidates, best first; fills the candidates' records."""
        found, alive, sigma = self.found, run.live.alive, step.sigma
        found.select_sigma = sigma
        with torch.no_grad():
            clean = predicted_clean_latent(run.latents.float(), step.velocity.detach().float(), sigma)
        scores: list[float | None] = []
        for row, j in enumerate(alive):
            candidate = found.candidates[j]
            outcome = _score_latent(run.reward, clean[row:row + 1])
            if isinstance(outcome, str):
                candidate.skipped = outcome
                scores.append(None)
                continue
            candidate.r, candidate.p_yes = float(outcome.r), outcome.p_yes
            if outcome.images is not None:
                found.views[j] = to_uint8(outcome.images[:1]).cpu()
            scores.append(candidate.r)
        rows = select_candidates(scores, found.options.keep)
        for row in rows:
            found.candidates[alive[row]].kept = True
        logger.info("search at σ=%.3f: kept candidate(s) %s of %d (r %s)", sigma, [alive[r] for r in rows],
                    len(alive), ", ".join("n/a" if s is None else f"{s:+.3f}" for s in scores))
        return rows


def _score_latent(reward: Any, clean: torch.Tensor) -> RewardEvaluation | str:
    """The critic's forward-only verdict on a latent from the un-jittered cameras, or why it failed."""
    try:
        with torch.no_grad():
            evaluation = reward.score_latent(clean)
    except EmptySurfaceError:
        return "empty_surface"
    except SkippedStepError as exc:
        return exc.reason
    evaluation.r = evaluation.r.detach()
    return evaluation


def select_final(run: Any, found: SearchRecord) -> tuple[int, Any]:
    """Decode every live candidate, score its mesh from the un-jittered cameras; return (row of the best,
    its mesh or None for output_type 'latent')."""
    meshes, scores = [], []
    for row, j in enumerate(run.live.alive):
        mesh = run.decode(run.latents[row:row + 1])
        meshes.append(mesh)
        candidate = found.candidates[j]
        candidate.kept = candidate.kept or found.select_step is None
        if mesh is None or not len(mesh.faces):
            candidate.skipped = candidate.skipped or "empty_surface"
            scores.append(None)
            continue
        run.offload.activate("critic")
        try:
            with run.compute.timed("final_selection"):
                evaluation = run.reward.score_mesh(mesh.vertices, mesh.faces)
        except (EmptySurfaceError, SkippedStepError) as exc:
            logger.warning("candidate %d: its final mesh could not be scored: %s", j, exc)
            scores.append(None)
            continue
        candidate.final_r, candidate.final_p_yes = float(evaluation.r), evaluation.p_yes
        scores.append(candidate.final_r)
    (best,) = select_candidates(scores, 1)
    return best, meshes[best] if run.call.output_type == "trimesh" else None


__all__ = ["CandidateRecord", "Candidates", "SearchOptions", "SearchRecord", "SelectionHook", "candidate_seeds",
           "check_search_with_guidance", "sample_candidates", "select_candidates", "select_final", "selection_step"]
