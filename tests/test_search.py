"""Candidate search (vlm3d_ttg.search): N seeds in one DiT batch, the critic's forward-only choice at
σ_s, the survivor guided as a plain run would be; best-of-N on the final meshes; the CLI and manifest."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from vlm3d_ttg.cli import main
from vlm3d_ttg.errors import InvalidInputError
from vlm3d_ttg.guidance import GuidanceConfig, LatentFunctionReward, RewardEvaluation
from vlm3d_ttg.sampler import GuidedSampler
from vlm3d_ttg.compute import planned_compute
from vlm3d_ttg.search import (
    SearchOptions,
    candidate_seeds,
    check_search_with_guidance,
    select_candidates,
    selection_step,
)


def disc_image(size: int = 96) -> Image.Image:
    yy, xx = np.mgrid[:size, :size]
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[(xx - size / 2) ** 2 + ((yy - size / 2) * 1.3) ** 2 < (size / 3) ** 2] = (90, 140, 200, 255)
    return Image.fromarray(rgba, "RGBA")


class LinearReward(LatentFunctionReward):
    """r = Σ w·latent for latents; r of a mesh = the mean x of its vertices (a cheap, deterministic,
    non-constant score, so that which candidate wins is decided by the shapes)."""

    def __init__(self, weights: torch.Tensor):
        self.weights = weights
        self.calls = 0

    def __call__(self, latent, *, generator=None):
        self.calls += 1
        r = (self.weights.to(latent.dtype) * latent).sum()
        return RewardEvaluation(r=r, p_yes=float(torch.sigmoid(r.detach())))

    def score_mesh(self, vertices, faces):
        r = torch.tensor(float(np.asarray(vertices)[:, 0].mean()))
        return RewardEvaluation(r=r, p_yes=float(torch.sigmoid(r)))


WEIGHTS = 1e-2 * torch.randn(1, 32, 8, generator=torch.Generator().manual_seed(3))


def test_selection_rules_are_deterministic_and_rank_unscored_last():
    assert select_candidates([0.1, 0.5, None, 0.5, float("nan"), -1.0], 3) == [1, 3, 0]  # tie → lower index
    assert select_candidates([None, float("nan")], 1) == [0]
    seeds = candidate_seeds(42, None, 5)
    assert seeds[0] == 42 and len(set(seeds)) == 5 and seeds == candidate_seeds(42, None, 5)
    assert candidate_seeds(43, None, 5)[1:] != seeds[1:]
    generator = torch.Generator().manual_seed(7)
    assert candidate_seeds(None, generator, 3) == candidate_seeds(None, torch.Generator().manual_seed(7), 3)
    sigmas = list(np.linspace(0, 1, 8)) + [1.0]
    assert selection_step(sigmas, 0.3) == 3 and sigmas[3] >= 0.3 > sigmas[2]
    assert selection_step(sigmas, 1.0) is None


@pytest.mark.parametrize("bad,flag", [
    (dict(candidates=0), "--candidates"), (dict(candidates=4, select_at=0.0), "--select-at"),
    (dict(candidates=4, select_at=1.5), "--select-at"), (dict(candidates=4, select_at=0.3, keep=5), "--keep"),
    (dict(candidates=4, select_at=0.3, keep=4), "--keep"), (dict(select_at=0.5), "--select-at"),
    (dict(candidates=4, keep=2), "--keep"), (dict(candidates=4, candidate_batch=-1), "--candidate-batch"),
    (dict(candidates=2.0), "--candidates"), (dict(candidates=3, select_at=float("nan")), "--select-at"),
])
def test_bad_search_options_are_refused_naming_the_flag(bad, flag):
    with pytest.raises(InvalidInputError, match=flag):
        SearchOptions(**bad).validate()


def test_exact_gradient_cannot_guide_several_candidates():
    with pytest.raises(InvalidInputError, match="grad-mode"):
        check_search_with_guidance(SearchOptions(candidates=3, select_at=0.5, keep=2), GuidanceConfig(grad_mode="xt"))
    check_search_with_guidance(SearchOptions(candidates=3, select_at=0.5), GuidanceConfig(grad_mode="xt"))


def test_the_survivor_is_the_plain_guided_run_from_its_seed(tiny_pipeline):
    """Batches of one: the kept candidate's whole run (noise from its recorded seed, unguided search
    phase, guidance after σ_s) is bit-identical to the plain guided sampler on that seed; the kept
    one has the highest recorded r; the compute counters add up."""
    config = GuidanceConfig(scale=0.05, sigma_window=(0.5, 0.95), every=1)
    search = SearchOptions(candidates=4, select_at=0.3, candidate_batch=1)
    sampler = GuidedSampler(tiny_pipeline, LinearReward(WEIGHTS), config)
    found = sampler(disc_image(), num_inference_steps=8, seed=5, camera_seed=9, output_type="latent",
                    progress=False, search=search)
    record = found.search
    scores = [c.r for c in record.candidates]
    assert len(set(scores)) == 4 and record.chosen == int(np.argmax(scores))
    assert [c.kept for c in record.candidates] == [c.index == record.chosen for c in record.candidates]
    assert record.select_step == 3 and record.candidates[0].seed == 5
    winner = record.candidates[record.chosen]
    plain = GuidedSampler(tiny_pipeline, LinearReward(WEIGHTS), config)(
        disc_image(), num_inference_steps=8, seed=winner.seed, camera_seed=9, output_type="latent", progress=False)
    assert torch.equal(found.latents, plain.latents)
    assert [r.to_dict() | {"timings": {}} for r in found.records] == [r.to_dict() | {"timings": {}} for r in plain.records]
    guided = [r.step for r in found.records if r.guided]
    assert guided and min(guided) > record.select_step
    # 4 candidates × 4 steps (to σ_s, CFG rows ×2), then 1 × 4 steps; 4 selection forwards + 1 per guided step.
    assert found.compute.dit_calls == 4 * 4 + 4 and found.compute.dit_rows == 2 * (4 * 4 + 4)
    assert found.compute.critic_forwards == 4 + len(guided) and found.compute.critic_backwards == len(guided)
    assert plain.compute.dit_rows == 2 * 8 and plain.compute.critic_forwards == plain.compute.critic_backwards


def test_one_batch_matches_batches_of_one(tiny_pipeline):
    """All candidates in one CFG batch (conditioning repeated in hy3dgen's [cond…, uncond…] order)
    give the per-candidate results up to float rounding, and the same choice."""
    config = GuidanceConfig(enabled=False)
    runs = [GuidedSampler(tiny_pipeline, LinearReward(WEIGHTS), config)(
        disc_image(), num_inference_steps=6, seed=1, output_type="latent", octree_resolution=32, progress=False,
        search=SearchOptions(candidates=3, select_at=0.5, keep=2, candidate_batch=batch)) for batch in (0, 1)]
    batched, single = (run.search for run in runs)
    assert [c.r for c in batched.candidates] == pytest.approx([c.r for c in single.candidates], rel=1e-4, abs=1e-5)
    assert [c.kept for c in batched.candidates] == [c.kept for c in single.candidates]
    assert batched.chosen == single.chosen
    assert torch.allclose(runs[0].latents, runs[1].latents, atol=1e-4)
    assert runs[0].compute.dit_calls < runs[1].compute.dit_calls and runs[0].compute.dit_rows == runs[1].compute.dit_rows


@pytest.mark.parametrize("select_at,keep", [(1.0, 1), (0.5, 2)])
def test_several_finishers_keep_the_best_final_mesh(tiny_pipeline, select_at, keep):
    """σ_s = 1 (plain best-of-N) and keep > 1: every finisher's exported mesh is scored and the
    best one is the output, with its latents."""
    sampler = GuidedSampler(tiny_pipeline, LinearReward(WEIGHTS), GuidanceConfig(enabled=False))
    out = sampler(disc_image(), num_inference_steps=4, seed=2, octree_resolution=32, progress=False,
                  search=SearchOptions(candidates=3, select_at=select_at, keep=keep))
    finished = [c for c in out.search.candidates if c.kept]
    assert len(finished) == (3 if select_at == 1.0 else 2)
    assert all(c.final_r is not None for c in finished)
    assert not any(c.final_r is not None for c in out.search.candidates if not c.kept)
    best = max(finished, key=lambda c: c.final_r)
    assert out.search.chosen == best.index and best.chosen
    assert float(np.asarray(out.mesh.vertices)[:, 0].mean()) == pytest.approx(best.final_r)
    alone = GuidedSampler(tiny_pipeline, config=GuidanceConfig(enabled=False))(
        disc_image(), num_inference_steps=4, seed=best.seed, output_type="latent", progress=False)
    assert torch.allclose(out.latents, alone.latents, atol=1e-4)  # its own seed's run (batched DiT: rounding)


FAST = ["--steps", "6", "--views", "1", "--view-size", "56", "--grid", "32", "--octree-resolution", "32",
        "--sigma-window", "0.1,0.9", "--every", "2", "--quiet"]


@pytest.fixture(scope="module")
def rgba_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("search_img") / "pot.png"
    disc_image().save(path)
    return path


def test_cli_search_keeps_the_best_candidate_and_a_rerun_picks_it_again(rgba_path, tmp_path, tiny_cache, tiny_pipeline,
                                                                         tiny_vlm, monkeypatch, capsys):
    monkeypatch.setenv("VLM3D_TTG_CACHE", str(tiny_cache))
    out = tmp_path / "pot.glb"
    args = ["generate", str(rgba_path), "--prompt", "a clay pot", "--preset", "tiny", "--seed", "4",
            "--candidates", "8", "--select-at", "0.3", *FAST]
    assert main([*args, "--out", str(out), "--save-views", str(tmp_path / "views")]) == 0, capsys.readouterr().err
    manifest = json.loads(out.with_name(out.name + ".json").read_text())
    candidates = manifest["search"]["candidates"]
    assert len(candidates) == 8 and len({c["seed"] for c in candidates}) == 8 and candidates[0]["seed"] == 4
    assert all(math.isfinite(c["r"]) and 0 < c["p_yes"] < 1 for c in candidates)
    chosen = manifest["search"]["chosen"]
    assert chosen == max(range(8), key=lambda j: candidates[j]["r"])
    assert [c["kept"] for c in candidates] == [j == chosen for j in range(8)] and candidates[chosen]["chosen"]
    compute = manifest["compute"]
    guided = sum(r["guided"] for r in manifest["records"])
    # 8 σ_s forwards (at step 2, σ = 0.4), one per guided step, one for the final mesh; DiT rows:
    # 8 × 3 steps then 1 × 3, CFG × 2 -- as planned_compute foresees.
    assert manifest["search"]["select_step"] == 2 and guided >= 1
    assert compute["critic_forwards"] == 8 + guided + 1 and compute["critic_backwards"] == guided
    assert compute["dit_rows"] == 2 * (8 * 3 + 3) and compute["seconds"]["selection"] > 0
    planned = planned_compute(6, GuidanceConfig(sigma_window=(0.1, 0.9)), SearchOptions(candidates=8, select_at=0.3))
    assert {k: v for k, v in planned.to_dict().items() if k != "seconds"} == {
        k: v for k, v in compute.items() if k != "seconds"}
    sheet = Image.open(tmp_path / "views" / "candidates.png")
    assert sheet.size[0] > 4 * 56 and str(tmp_path / "views" / "candidates.png") in manifest["outputs"]["views"]
    assert f"kept #{chosen}" in capsys.readouterr().out
    # A rerun on the same seed scores the same candidates alike and picks the same one. (In process
    # and unguided, to stay cheap: the choice is made before any guidance.)
    from vlm3d_ttg.critic import VLMCritic
    from vlm3d_ttg.inputs import prepare_condition_image
    from vlm3d_ttg.reward import VLMReward

    config = GuidanceConfig(**manifest["guidance"] | {"enabled": False, "sigma_window": (0.1, 0.9)})
    critic = VLMCritic(*tiny_vlm, "a clay pot", config.query)
    rerun = GuidedSampler(tiny_pipeline, VLMReward.from_config(tiny_pipeline, critic, config), config)(
        prepare_condition_image(rgba_path), num_inference_steps=6, seed=4, output_type="latent", progress=False,
        search=SearchOptions(candidates=8, select_at=0.3)).search
    assert rerun.chosen == chosen
    assert [c.r for c in rerun.candidates] == [c["r"] for c in candidates]


@pytest.mark.parametrize("flags,message", [
    (["--candidates", "0"], "--candidates"), (["--candidates", "8", "--select-at", "0"], "--select-at"),
    (["--candidates", "8", "--select-at", "1.2"], "--select-at"),
    (["--candidates", "8", "--select-at", "0.3", "--keep", "9"], "--keep"),
])
def test_cli_bad_search_values_exit_2_before_loading(flags, message, rgba_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VLM3D_TTG_CACHE", str(tmp_path / "empty-cache"))  # loading would have to write here
    out = tmp_path / "mesh.glb"
    code = main(["generate", str(rgba_path), "--prompt", "a pot", "--preset", "tiny", "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("error:") == 1
    assert not out.exists() and not (tmp_path / "empty-cache").exists()


def test_the_search_phase_is_never_guided_and_the_cli_says_so_before_loading(rgba_path, tmp_path, monkeypatch, capsys):
    """Steps up to σ_s's are forward-only: they are not in the run's guided steps, `--views-at` may not
    name them, and a window that lies inside the search phase draws the no-guidance warning."""
    from vlm3d_ttg.search import guided_steps_with_search

    sigmas = [i / 9 for i in range(10)] + [1.0]
    config = GuidanceConfig(sigma_window=(0.1, 0.9), every=1)
    plain = guided_steps_with_search(sigmas, config, SearchOptions())
    searched = guided_steps_with_search(sigmas, config, SearchOptions(candidates=4, select_at=0.5))
    assert plain == list(range(1, 9)) and searched == [i for i in plain if i > selection_step(sigmas, 0.5)] == [6, 7, 8]
    assert guided_steps_with_search(sigmas, config, SearchOptions(candidates=4)) == plain  # σ_s = 1: final meshes

    monkeypatch.setenv("VLM3D_TTG_CACHE", str(tmp_path / "empty-cache"))
    common = ["generate", str(rgba_path), "--prompt", "a pot", "--preset", "tiny", "--out", str(tmp_path / "m.glb"),
              "--steps", "10", "--candidates", "4", "--select-at", "0.5"]
    assert main([*common, "--save-views", str(tmp_path / "views"), "--views-at", "2"]) == 2
    assert "not guided" in capsys.readouterr().err and not (tmp_path / "empty-cache").exists()
    assert main([*common, "--sigma-window", "0.1,0.4", "--views-at", "2", "--save-views", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert "after the candidate search" in err and "will not be guided" in err


def test_cost_weights_follow_the_cost_model_and_best_of_n_matches_guided_compute():
    import importlib.util
    from pathlib import Path

    from vlm3d_ttg.compute import REAL_SIZE_COST, compute_tflop, equal_compute_candidates

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "cost_model.py"
    spec = importlib.util.spec_from_file_location("cost_model_for_search", path)
    cost_model = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = cost_model  # its dataclasses look their module up
    spec.loader.exec_module(cost_model)
    assert cost_model.unit_costs(cost_model.RunShape()) == pytest.approx(
        (REAL_SIZE_COST.dit_row, REAL_SIZE_COST.critic_forward, REAL_SIZE_COST.critic_backward), abs=1e-3)
    guided = GuidanceConfig()
    for steps in (20, 50):
        n = equal_compute_candidates(steps, guided, SearchOptions(candidates=2), GuidanceConfig(enabled=False))
        target = compute_tflop(planned_compute(steps, guided, SearchOptions()))
        costs = [compute_tflop(planned_compute(steps, GuidanceConfig(enabled=False), SearchOptions(candidates=m)))
                 for m in (n - 1, n, n + 1)]
        assert abs(costs[1] - target) <= min(abs(costs[0] - target), abs(costs[2] - target))


class CameraDependentReward(LatentFunctionReward):
    """r = Σ w·tanh(x̂)·u with u drawn from the camera stream: nonlinear in the latent and consuming
    the camera generator the way the renderer's jitter does."""

    def __call__(self, latent, *, generator=None):
        u = torch.rand((), generator=generator) + 0.5
        r = (WEIGHTS.to(latent.dtype) * torch.tanh(latent)).sum() * u
        return RewardEvaluation(r=r, p_yes=float(torch.sigmoid(r.detach())))


def plain_guided_loop(pipeline, reward, config, image, *, steps: int, seed: int, camera_seed: int) -> torch.Tensor:
    """The guided loop written out from its public parts (paper eq. 10 at each guided step, x0 mode):
    what the sampler with one candidate must equal bit for bit."""
    from vlm3d_ttg.guidance import guided_step, guided_steps, predicted_clean_latent

    parts = GuidedSampler(pipeline, reward, config)  # only its conditioning and velocity
    context = parts.prepare(image, num_inference_steps=steps, guidance_scale=5.0)
    latents = pipeline.prepare_latents(1, pipeline.dtype, pipeline.device, torch.Generator().manual_seed(seed))
    cameras = torch.Generator().manual_seed(camera_seed)
    guided = set(guided_steps(context.sigmas, config))
    for i, t in enumerate(context.condition.timesteps):  # hy3dgen's own timesteps (HunyuanCondition)
        sigma = context.sigmas[i]
        velocity = parts.velocity(latents, i, context)
        sampler_next = pipeline.scheduler.step(velocity, t, latents).prev_sample
        if i in guided:
            clean = predicted_clean_latent(latents.float(), velocity.float(), sigma).requires_grad_(True)
            (gradient,) = torch.autograd.grad(reward(clean, generator=cameras).r, clean)
            sampler_next = guided_step(latents, sampler_next, velocity, sigma, gradient, config).next_latents
        latents = sampler_next
    return latents


@pytest.mark.parametrize("search", [None, SearchOptions(candidates=1)], ids=["default", "candidates=1"])
def test_one_candidate_is_exactly_the_plain_guided_loop(tiny_pipeline, search):
    """N = 1 adds nothing to the loop: the sampler's latents equal the written-out guided loop's bit for bit."""
    config = GuidanceConfig(scale=0.05, sigma_window=(0.3, 0.95), every=1)
    reward = CameraDependentReward()
    ours = GuidedSampler(tiny_pipeline, reward, config)(
        disc_image(), num_inference_steps=8, seed=5, camera_seed=9, output_type="latent", progress=False, search=search)
    assert sum(r.guided and not r.skipped for r in ours.records) >= 3
    expected = plain_guided_loop(tiny_pipeline, reward, config, disc_image(), steps=8, seed=5, camera_seed=9)
    assert torch.equal(ours.latents, expected)
    unguided = plain_guided_loop(tiny_pipeline, reward, GuidanceConfig(enabled=False), disc_image(), steps=8, seed=5,
                                 camera_seed=9)
    assert not torch.equal(ours.latents, unguided)  # the guidance did move it


class GradModeRecordingReward(LinearReward):
    """LinearReward that records, per call, whether autograd was recording and the input had a graph."""

    def __init__(self, weights):
        super().__init__(weights)
        self.modes: list[tuple[bool, bool]] = []

    def __call__(self, latent, *, generator=None):
        self.modes.append((torch.is_grad_enabled(), latent.requires_grad or latent.grad_fn is not None))
        return super().__call__(latent, generator=generator)


def test_candidate_scoring_is_forward_only_and_keeps_no_graph(tiny_pipeline):
    """The N selection scores run with autograd off on graph-free latents; only the survivor's guided
    steps build a graph (one per guided step); nothing returned holds one."""
    config = GuidanceConfig(scale=0.05, sigma_window=(0.3, 0.95), every=1)
    reward = GradModeRecordingReward(WEIGHTS)
    out = GuidedSampler(tiny_pipeline, reward, config)(
        disc_image(), num_inference_steps=8, seed=5, camera_seed=9, output_type="latent", progress=False,
        search=SearchOptions(candidates=4, select_at=0.3))
    guided = [r for r in out.records if r.guided and not r.skipped]
    assert reward.modes[:4] == [(False, False)] * 4  # the four candidates' scores at σ_s
    assert reward.modes[4:] == [(True, True)] * len(guided) and guided
    assert out.latents.grad_fn is None and not out.latents.requires_grad
