"""The cheaper-guidance knobs (issue 28): reuse_displacement (--reuse-displacement) and stop_r (--stop-at-r),
on the tiny Hunyuan3D-2 and the tiny Qwen2.5-VL critic (real models, no mocks).

The runs: 8 steps, σ window (0.2, 0.85), every 2 → steps 2 and 4 are guided, 3 and 5 are the window's
unguided steps (6 lies above the window)."""

from __future__ import annotations

import json

import pytest
import torch

from vlm3d_ttg.cli import main
from vlm3d_ttg.errors import InvalidInputError
from vlm3d_ttg.guidance import GuidanceConfig, reused_displacement
from vlm3d_ttg.sampler import GuidedSampler
from vlm3d_ttg.search import SearchOptions

from test_sampler import disc_image

GUIDED, REUSING = [2, 4], [3, 5]
SMALL = dict(num_views=1, view_size=56, grid_resolution=32)


def tiny_run(pipeline, vlm, *, search: SearchOptions | None = None, **knobs):
    """(output, per-step callback states) of a tiny guided run with `knobs` on GuidanceConfig."""
    from vlm3d_ttg.critic import VLMCritic
    from vlm3d_ttg.reward import VLMReward

    config = GuidanceConfig(**SMALL, **knobs)
    reward = VLMReward.from_config(pipeline, VLMCritic(*vlm, "a blue robot", config.query), config)
    states: list[dict] = []

    def keep(sampler, step, sigma, state):
        states.append({"latents": state["latents"].clone(), "displacement": state["displacement"],
                       "record": state["record"]})

    output = GuidedSampler(pipeline, reward, config)(disc_image(), num_inference_steps=8, seed=3, output_type="latent",
                                                     progress=False, callback_on_step_end=keep, search=search,
                                                     octree_resolution=32)  # a search decodes its finishers
    return output, states


def plain(records) -> list[dict]:
    """The records without their timings (which differ run to run)."""
    return [{k: v for k, v in r.to_dict().items() if k != "timings"} for r in records]


@pytest.fixture(scope="module")
def default_run(tiny_pipeline, tiny_vlm):
    """Today's run: no knob given."""
    return tiny_run(tiny_pipeline, tiny_vlm)


def test_reuse_adds_the_last_guided_displacement_at_the_windows_unguided_steps(default_run, tiny_pipeline, tiny_vlm):
    base, base_states = default_run
    assert [r.step for r in base.records if r.guided] == GUIDED
    out, states = tiny_run(tiny_pipeline, tiny_vlm, reuse_displacement=1.0, max_step_ratio=None)
    # Up to the first reused step both runs are one trajectory; there the latent is the sampler's own
    # step (the default run's, which added nothing) plus step 2's applied displacement, exactly.
    for i in range(3):
        assert torch.equal(states[i]["latents"], base_states[i]["latents"])
    assert base_states[3]["displacement"] is None
    displacement = states[2]["displacement"]
    assert torch.equal(states[3]["latents"], base_states[3]["latents"] + displacement)
    assert torch.equal(states[3]["displacement"], displacement)
    for step in REUSING:
        record = out.records[step]
        assert not record.guided and record.r is None and record.reused["from_step"] == step - 1
        assert record.reused["norm"] == pytest.approx(out.records[step - 1].applied_norm, rel=1e-6)
        assert not record.reused["capped"]
    # Nothing outside the window (steps 0, 1, 6, 7) or at a guided step; no critic call more.
    assert [r.step for r in out.records if r.reused] == REUSING
    assert out.compute.critic_forwards == base.compute.critic_forwards == len(GUIDED)
    assert out.compute.critic_backwards == base.compute.critic_backwards


def test_no_knob_and_the_knobs_off_are_todays_run(default_run, tiny_pipeline, tiny_vlm):
    base, base_states = default_run
    # reuse 0 (off) and a stop level r never reaches: today's latents and records, bit for bit
    off, _ = tiny_run(tiny_pipeline, tiny_vlm, reuse_displacement=0.0, stop_r=1e6)
    assert torch.equal(off.latents, base.latents)
    assert plain(off.records) == plain(base.records)
    assert off.guidance_stopped_at_step is None and base.guidance_stopped_at_step is None
    # The default records keep today's keys: no reused/stopped marks; unguided steps add nothing.
    assert all("reused" not in r and "stopped" not in r for r in plain(base.records))
    assert all(s["displacement"] is None for s in base_states if not s["record"].guided)


def test_a_reused_displacement_is_capped_at_this_steps_sampler_step(tiny_pipeline, tiny_vlm):
    ratio = 0.3
    out, states = tiny_run(tiny_pipeline, tiny_vlm, reuse_displacement=1.0, max_step_ratio=ratio, scale=0.1)
    reused = [r for r in out.records if r.reused]
    assert [r.step for r in reused] == REUSING
    for record in reused:
        assert record.reused["norm"] <= ratio * record.sampler_step_norm * (1 + 1e-6)
    capped = [r for r in reused if r.reused["capped"]]
    assert capped, "the cap never bound: pick a smaller ratio"
    for record in capped:
        assert record.reused["norm"] == pytest.approx(ratio * record.sampler_step_norm, rel=1e-5)
        now, then = states[record.step]["displacement"], states[record.reused["from_step"]]["displacement"]
        assert float(torch.linalg.vector_norm(now)) < float(torch.linalg.vector_norm(then))  # rescaled down ...
        assert float(torch.nn.functional.cosine_similarity(now.flatten(), then.flatten(), dim=0)) == pytest.approx(1, abs=1e-5)


def test_reused_displacement_scales_and_caps():
    d, step = torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 2.0]])  # ‖d‖ = 5, ‖Δx‖ = 2
    half, capped = reused_displacement(d, step, 0.5, None)
    assert torch.allclose(half, d / 2) and not capped
    small, capped = reused_displacement(d, step, 1.0, 1.0)
    assert torch.allclose(small, d * 2 / 5) and capped
    fits, capped = reused_displacement(d, step, 0.2, 1.0)
    assert torch.allclose(fits, d * 0.2) and not capped


def test_stop_r_stops_guidance_after_the_first_guided_step(default_run, tiny_pipeline, tiny_vlm):
    base, base_states = default_run
    out, states = tiny_run(tiny_pipeline, tiny_vlm, stop_r=-1e6, reuse_displacement=1.0)  # any r reaches it
    # Step 2 is guided as always, then guidance stops: one critic call in all, nothing reused after it.
    assert out.compute.critic_forwards == 1 and out.compute.critic_backwards == 1
    assert out.guidance_stopped_at_step == 2
    assert torch.equal(states[2]["latents"], base_states[2]["latents"]) and out.records[2].guided
    stopped = out.records[4]
    assert stopped.stopped and not stopped.guided and stopped.r is None and stopped.skipped is None
    assert "guidance" not in stopped.timings and states[4]["displacement"] is None
    assert [r.step for r in out.records if r.stopped] == [4] and not any(r.reused for r in out.records)


def test_each_candidate_stops_and_reuses_on_its_own(tiny_pipeline, tiny_vlm):
    """With several guided candidates (select at 1: all finish), the knobs act per candidate row."""
    search = SearchOptions(candidates=2)
    stop, _ = tiny_run(tiny_pipeline, tiny_vlm, search=search, stop_r=-1e6)
    assert stop.guidance_stopped_at_step == 2 and [r.step for r in stop.records if r.stopped] == [4]
    # one guided step per candidate, then each candidate's final mesh is not scored (latent output): 2 backwards
    assert stop.compute.critic_backwards == 2
    reuse, _ = tiny_run(tiny_pipeline, tiny_vlm, search=search, reuse_displacement=0.5, max_step_ratio=None)
    assert [r.step for r in reuse.records if r.reused] == REUSING
    for step in REUSING:
        assert reuse.records[step].reused["norm"] == pytest.approx(0.5 * reuse.records[step - 1].applied_norm, rel=1e-6)


@pytest.mark.parametrize("knobs, flag", [
    (dict(reuse_displacement=1.5), "--reuse-displacement"), (dict(reuse_displacement=-0.1), "--reuse-displacement"),
    (dict(stop_r=float("nan")), "--stop-at-r"), (dict(stop_r=float("inf")), "--stop-at-r"), (dict(stop_r="1"), "--stop-at-r"),
])
def test_bad_knob_values_are_refused_naming_the_flag(knobs, flag):
    with pytest.raises(InvalidInputError, match=flag):
        GuidanceConfig(**knobs).validate()


def test_the_cli_refuses_a_bad_knob_before_any_model_loads(tmp_path, rgba_image, no_model_loads, capsys):
    code = main(["generate", str(rgba_image), "--prompt", "a pot", "--preset", "tiny", "--reuse-displacement", "2",
                 "--out", str(tmp_path / "pot.glb")])
    assert code == 2 and "--reuse-displacement" in capsys.readouterr().err


def test_the_knobs_reach_help_and_the_manifest(rgba_image, tmp_path, tiny_cache, tiny_pipeline, tiny_vlm, monkeypatch, capsys):
    assert main(["generate", "--help"]) == 0
    shown = capsys.readouterr().out
    assert "--reuse-displacement" in shown and "--stop-at-r" in shown
    monkeypatch.setenv("VLM3D_TTG_CACHE", str(tiny_cache))
    out = tmp_path / "pot.glb"
    assert main(["generate", str(rgba_image), "--prompt", "a clay pot", "--preset", "tiny", "--steps", "8", "--views", "1",
                 "--view-size", "56", "--grid", "32", "--octree-resolution", "32", "--quiet", "--stop-at-r", "-1000000",
                 "--reuse-displacement", "0.5", "--out", str(out)]) == 0, capsys.readouterr().err
    manifest = json.loads(out.with_name(out.name + ".json").read_text())
    assert manifest["guidance"]["reuse_displacement"] == 0.5 and manifest["guidance"]["stop_r"] == -1e6
    assert manifest["guidance_stopped_at_step"] == 2
    assert [r["step"] for r in manifest["records"] if r.get("stopped")] == [4]
    assert manifest["compute"]["critic_backwards"] == 1
