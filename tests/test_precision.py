"""The configuration users run: half precision, frozen models, loss-scaled half backwards, offload
bookkeeping and camera streams (issue: correct in the configuration users actually run)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlm3d_ttg.critic import VLMCritic
from vlm3d_ttg.errors import InvalidInputError
from vlm3d_ttg.guidance import GuidanceConfig
from vlm3d_ttg.backbones.hunyuan3d2_models import load_shape_pipeline
from vlm3d_ttg.models import load_vlm
from vlm3d_ttg.offload import IdleOffload
from vlm3d_ttg.precision import INITIAL_LOSS_SCALE, LossScale
from vlm3d_ttg.reward import VLMReward
from vlm3d_ttg.sampler import GuidedSampler, derive_camera_seed

# Small but real: every guided step of an 8-step run in the window, 2 views of 112².
SMALL = dict(num_views=2, view_size=112, grid_resolution=32, sigma_window=(0.2, 0.85), every=1)


def robot_image() -> Image.Image:
    image = Image.new("RGBA", (96, 96), (0, 0, 0, 0))
    image.paste((90, 140, 200, 255), (28, 20, 68, 80))
    image.paste((200, 120, 60, 255), (38, 8, 58, 24))
    return image


def guided_sampler(shape_ref, vlm_path, shape_dtype, critic_dtype, config, **kwargs) -> GuidedSampler:
    pipeline = load_shape_pipeline(
        shape_ref.repo_id, shape_ref.subfolder, models_dir=shape_ref.models_dir, device="cpu", dtype=shape_dtype
    )
    model, processor = load_vlm(vlm_path, device="cpu", dtype=critic_dtype)
    reward = VLMReward.from_config(pipeline, VLMCritic(model, processor, "a blue robot", config.query), config)
    return GuidedSampler(pipeline, reward, config, **kwargs)


def run_collecting(sampler: GuidedSampler, *, steps: int, forced: dict | None = None, **kwargs):
    """Run; return (output, displacement per guided step, latents after each step)."""
    displacements, latents_after = {}, {}

    def callback(_sampler, step, _sigma, state):
        if state["displacement"] is not None:
            displacements[step] = state["displacement"].float().clone()
        latents_after[step] = state["latents"].float().clone()
        if forced is not None:
            return {"latents": forced[step].to(state["latents"].dtype)}
        return None

    output = sampler(robot_image(), num_inference_steps=steps, seed=0, octree_resolution=48,
                     callback_on_step_end=callback, progress=False, **kwargs)
    return output, displacements, latents_after


@pytest.fixture(scope="module")
def float32_run(tiny_shape_ref, tiny_vlm_path):
    config = GuidanceConfig(**SMALL)
    sampler = guided_sampler(tiny_shape_ref, tiny_vlm_path, torch.float32, torch.float32, config)
    return run_collecting(sampler, steps=8)


def test_half_precision_gradient_path_matches_float32(tiny_shape_ref, tiny_vlm_path, float32_run):
    """The gradient path of guidance (decode, implicit weights, render, critic, backward) with the
    shape pipeline loaded in float16 and the critic in bfloat16 (the CUDA defaults), at the same
    latents and cameras as in float32: ∇r within cos ≥ 0.98 and ±5 % in norm at every evaluation."""
    _, _, latents_after = float32_run
    config = GuidanceConfig(**SMALL)
    rewards = {
        name: guided_sampler(tiny_shape_ref, tiny_vlm_path, shape_dtype, critic_dtype, config).reward
        for name, shape_dtype, critic_dtype in (("fp32", torch.float32, torch.float32),
                                                 ("half", torch.float16, torch.bfloat16))
    }
    assert rewards["half"].decode_dtype == torch.float32 and not rewards["half"].half_backward
    for step in (2, 4, 6, 7):  # from noisy to nearly clean latents
        gradients = {}
        for name, reward in rewards.items():
            latent = latents_after[step].clone().requires_grad_(True)
            evaluation = reward(latent, generator=torch.Generator().manual_seed(step))
            gradients[name] = LossScale.for_half_backward(reward.half_backward).gradient(evaluation.r, latent)
        g_half, g_ref = gradients["half"], gradients["fp32"]
        assert torch.isfinite(g_half).all() and g_half.norm() > 0
        cosine = float(torch.nn.functional.cosine_similarity(g_half.flatten(), g_ref.flatten(), dim=0))
        assert cosine >= 0.98, (step, cosine)
        assert float(g_half.norm() / g_ref.norm()) == pytest.approx(1.0, abs=0.05), step


def test_half_precision_guided_steps_follow_float32(tiny_cache):
    """The whole guided step in half precision (fp16 shape model, bf16 critic), restarted every step
    from the float32 run's latents (benchmarks/bench_precision.py's teacher forcing): no skipped
    step, finite non-zero gradients, displacement norms within ±5 %, and directions as close to
    float32's as float32's own are to themselves when its x̂ is moved as far as the float16 DiT
    moves it. The reward gradient is not smooth at that distance in any precision (pixels flip
    between triangles and background), so the direction is compared with that, averaged over the
    guided steps, not with a fixed per-step bound (benchmarks/RESULTS.md, "Half precision")."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_precision

    run = dict(steps=8, seed=0, config=GuidanceConfig(**SMALL), cache_dir=str(tiny_cache), octree_resolution=48)
    reference = bench_precision.guided_run(torch.float32, torch.float32, **run)
    forced = bench_precision.guided_run(torch.float16, torch.bfloat16, forced_latents=reference.latents_after, **run)
    assert forced.reward.decode_dtype == torch.float32
    guided = [r for r in forced.output.records if r.guided]
    assert [r.step for r in guided] == [r.step for r in reference.output.records if r.guided] and len(guided) == 4
    for record in guided:
        assert record.skipped is None, record
        assert record.grad_norm is not None and 0 < record.grad_norm < float("inf")
    rows = bench_precision.sensitivity_rows(reference, forced, seed=0)
    assert len(rows) == 4 and all(0 < r["moved"] < 0.01 for r in rows)  # the DiT's float16 error, not a bug
    for row in rows:
        assert row["norm_ratio"] == pytest.approx(1.0, abs=0.05), row
    half = np.mean([r["half"] for r in rows])
    float32_itself = np.mean([r["fp32_moved"] for r in rows])
    assert half >= min(0.98, float32_itself) - 0.05, rows
    assert forced.output.mesh is not None


def test_half_precision_free_run_ends_close_to_float32(tiny_shape_ref, tiny_vlm_path, float32_run):
    """Both runs end to end on their own: the final meshes are close and no step is skipped."""
    from scipy.spatial import cKDTree

    reference, _, _ = float32_run
    config = GuidanceConfig(**SMALL)
    sampler = guided_sampler(tiny_shape_ref, tiny_vlm_path, torch.float16, torch.bfloat16, config)
    reference_sampler = guided_sampler(tiny_shape_ref, tiny_vlm_path, torch.float32, torch.float32, config)
    half, _, _ = run_collecting(sampler, steps=8)
    assert all(r.skipped is None and r.applied_norm > 0 for r in half.records if r.guided)
    # The control: float32 throughout, the latents only rounded to float16 (the initial noise and
    # after every step, as the half run stores them) — how far perturbations of half precision's
    # size carry a free-running trajectory with no half-precision arithmetic at all (the reward
    # gradient is not smooth; see benchmarks/RESULTS.md, "Half precision vs float32").
    control_sampler = guided_sampler(tiny_shape_ref, tiny_vlm_path, torch.float32, torch.float32, config)
    exact_noise = control_sampler.backbone.pipeline.prepare_latents
    control_sampler.backbone.pipeline.prepare_latents = lambda *a, **k: exact_noise(*a, **k).half().float()
    control = control_sampler(robot_image(), num_inference_steps=8, seed=0, octree_resolution=48, progress=False,
                              callback_on_step_end=lambda _s, _i, _sigma, state: {"latents": state["latents"].half().float()})

    def chamfer(first, second) -> float:
        a, b = first.mesh.sample(4000, seed=0), second.mesh.sample(4000, seed=0)
        return 0.5 * (cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())

    # The shape pipeline's own float16 (hy3dgen's, unguided) moves the final mesh too, by an amount
    # that depends on torch's CPU half-precision kernels (≈ 0.005 on torch 2.15, 0.04-0.08 on
    # torch 2.11 here). Guided half precision may stray as far as that plus twice the control's
    # chaos; a wrong dtype on the guidance path (e.g. fp16 implicit weights) moves whole parts.
    unguided = GuidanceConfig(**{**SMALL, "enabled": False})
    plain = [guided_sampler(tiny_shape_ref, tiny_vlm_path, dtype, torch.float32, unguided)(
        robot_image(), num_inference_steps=8, seed=0, octree_resolution=48, progress=False)
        for dtype in (torch.float32, torch.float16)]
    half_distance, control_distance = chamfer(reference, half), chamfer(reference, control)
    pipeline_distance = chamfer(*plain)
    assert half_distance < max(0.03, pipeline_distance + 2 * control_distance), (
        half_distance, pipeline_distance, control_distance)
    final_r = [float(s.reward.score_mesh(out.mesh.vertices, out.mesh.faces).r) for s, out in
               ((sampler, half), (reference_sampler, reference))]
    assert abs(final_r[0] - final_r[1]) < 0.05


def test_models_are_frozen_and_no_parameter_gets_a_gradient(tiny_shape_ref, tiny_vlm_path):
    """Both loaders freeze; even the exact (xt) mode, which backpropagates through the DiT, leaves
    every parameter without `.grad`."""
    config = GuidanceConfig(**{**SMALL, "grad_mode": "xt"})
    sampler = guided_sampler(tiny_shape_ref, tiny_vlm_path, torch.float32, torch.float32, config)
    pipe = sampler.backbone.pipeline
    modules = [pipe.model, pipe.vae, pipe.conditioner, sampler.reward.critic.model]
    for module in modules:
        assert not any(p.requires_grad for p in module.parameters())
        assert not module.training
    output = sampler(robot_image(), num_inference_steps=5, seed=0, output_type="latent", progress=False)
    assert any(r.applied_norm for r in output.records if r.guided)
    assert all(p.grad is None for module in modules for p in module.parameters())


def test_loss_scale_rescues_a_float16_gradient_that_would_underflow():
    """A float16 chain whose true gradient (~2e-9) is below fp16's smallest subnormal (6e-8)."""
    x = torch.full((8,), 0.5, dtype=torch.float32, requires_grad=True)
    w = torch.full((8,), 3e-5, dtype=torch.float16)

    def reward() -> torch.Tensor:
        return ((x.half() * w) * 1e-4).float().sum()  # dr/dx = 3e-5 · 1e-4 = 3e-9

    unscaled = LossScale.for_half_backward(False).gradient(reward(), x)
    assert torch.count_nonzero(unscaled) == 0  # what an unscaled fp16 backward gives: silently nothing
    scaled = LossScale.for_half_backward(True).gradient(reward(), x)
    assert torch.allclose(scaled, torch.full_like(scaled, 3e-9), rtol=0.02)


def test_loss_scale_backs_off_on_overflow_and_reports_a_truly_non_finite_gradient():
    x = torch.full((4,), 1.0, requires_grad=True)
    # dr/dx = 8 in fp16: finite unscaled, but 8 · 2^16 overflows fp16's 65504.
    scale = LossScale.for_half_backward(True)
    gradient = scale.gradient((x.half() * 8.0).float().sum(), x)
    assert torch.equal(gradient, torch.full_like(gradient, 8.0))
    assert scale.overflows >= 1 and scale.value < INITIAL_LOSS_SCALE
    # A gradient that is NaN at every scale comes back NaN (the sampler then skips the step).
    y = torch.full((4,), -1.0, requires_grad=True)
    nan_gradient = LossScale.for_half_backward(True).gradient(torch.sqrt(y.half()).float().sum(), y)
    assert torch.isnan(nan_gradient).all()


def test_xt_mode_through_a_float16_dit_is_loss_scaled_and_finite(tiny_shape_ref, tiny_vlm_path):
    config = GuidanceConfig(**{**SMALL, "grad_mode": "xt"})
    sampler = guided_sampler(tiny_shape_ref, tiny_vlm_path, torch.float16, torch.bfloat16, config)
    output = sampler(robot_image(), num_inference_steps=6, seed=0, output_type="latent", progress=False)
    guided = [r for r in output.records if r.guided]
    assert guided and all(r.skipped is None and 0 < r.grad_norm < float("inf") for r in guided)
    assert all(r.loss_scale is not None and r.loss_scale >= 1 for r in guided)


def test_offload_refuses_exact_gradients(tiny_pipeline, tiny_vlm):
    reward = VLMReward.from_config(tiny_pipeline, VLMCritic(*tiny_vlm, "a pot"), GuidanceConfig(**SMALL))
    with pytest.raises(InvalidInputError, match="offload_idle cannot be combined with grad_mode='xt'"):
        GuidedSampler(tiny_pipeline, reward, GuidanceConfig(**{**SMALL, "grad_mode": "xt"}), offload_idle=True)


def test_offload_phases_follow_the_loop_and_placement_is_restored_after_a_failure(tiny_pipeline, tiny_vlm):
    """The bookkeeping of --offload-idle, on the CPU: which phase is active at each step, which models
    each switch sends where, and that a failure mid-run still restores the placement.

    The compute device is the CPU, so the test gives the offload a distinct target ("meta") and spies
    on the moves it asks for (a real move to meta would lose the weights of this session's models);
    `IdleOffload`'s own moves and `restore` are tested with real moves below.
    """
    config = GuidanceConfig(**SMALL)
    reward = VLMReward.from_config(tiny_pipeline, VLMCritic(*tiny_vlm, "a pot"), config)
    sampler = GuidedSampler(tiny_pipeline, reward, config, offload_idle=True)
    offload = sampler.offload
    assert not offload.enabled  # a CPU run: nothing to offload
    offload.enabled = True  # exercise the bookkeeping anyway
    offload.offload_device = torch.device("meta")
    phase_of = {id(m): name for name, modules in offload.phases.items() for m in modules}
    moves, restores = [], []

    def spy_move(modules, device):
        moves.append((sorted({phase_of[id(m)] for m in modules}), device.type))

    real_restore = offload.restore
    offload._move = spy_move
    offload.restore = lambda: (restores.append(offload.active), real_restore())
    seen = []

    def callback(s, step, sigma, state):
        seen.append((step, state["record"].guided, s.offload.active))
        if step == 4:
            raise RuntimeError("injected failure")

    with pytest.raises(RuntimeError, match="injected failure"):
        sampler(robot_image(), num_inference_steps=8, seed=0, callback_on_step_end=callback, progress=False)
    assert [(guided, phase) for _, guided, phase in seen] == [
        (False, "denoise"), (False, "denoise"), (True, "critic"), (True, "critic"), (True, "critic")]

    def switch(to: str) -> list:  # (the phases of the modules moved, where to); a phase with no modules moves none
        away = [([name] if modules else [], "meta") for name, modules in offload.phases.items() if name != to]
        return away + [([to], "cpu")]

    # conditioning, then the DiT, then the critic at the first guided step: each switch sends every
    # other phase's models to the offload device and the new phase's to the compute device.
    expected = switch("condition") + switch("denoise") + switch("critic")
    assert moves[:len(expected)] == expected, moves
    assert restores == ["critic"] and offload.active is None  # restored in the sampler's `finally`


def test_idle_offload_counts_moves_and_rejects_shared_modules():
    """Real moves between two devices (CPU and meta; `Movable` can come back from meta, without its values)."""

    class Movable(torch.nn.Linear):
        def to(self, device):
            return self.to_empty(device=device) if self.weight.is_meta else super().to(device)

    a, b = Movable(2, 2), Movable(2, 2)
    with pytest.raises(ValueError, match="one offload phase"):
        IdleOffload({"x": [a], "y": [a]}, "cpu")
    offload = IdleOffload({"x": [a], "y": [b, None]}, "cpu", offload_device="meta")
    seconds = offload.activate("x")
    assert offload.active == "x" and offload.moves == 1 and seconds > 0 and offload.seconds == seconds
    assert offload.placement() == {"x": [torch.device("cpu")], "y": [torch.device("meta")]}
    assert offload.activate("x") == 0.0 and offload.moves == 1  # already in place: nothing moves
    offload.activate("y")
    assert offload.moves == 3 and offload.placement() == {"x": [torch.device("meta")], "y": [torch.device("cpu")]}
    with pytest.raises(KeyError):
        offload.activate("z")
    offload.restore()
    assert offload.active is None and offload.moves == 4
    assert offload.placement() == {"x": [torch.device("cpu")], "y": [torch.device("cpu")]}
    disabled = IdleOffload({"x": [a], "y": [b]}, "cpu", offload_device="meta", enabled=False)
    assert disabled.activate("y") == 0.0 and disabled.moves == 0 and a.weight.device.type == "cpu"


def test_x0_mode_keeps_no_dit_weights_in_any_autograd_graph(tiny_pipeline, tiny_vlm):
    """In the default mode the DiT runs without a graph, so offloading it frees its memory; the
    exact mode saves DiT weights for its backward (the control: this check can fail)."""
    dit_storages = {p.untyped_storage().data_ptr() for p in tiny_pipeline.model.parameters()}

    def saved_dit_weights(grad_mode: str) -> int:
        config = GuidanceConfig(**{**SMALL, "grad_mode": grad_mode})
        reward = VLMReward.from_config(tiny_pipeline, VLMCritic(*tiny_vlm, "a pot"), config)
        count = 0

        def pack(tensor):
            nonlocal count
            count += tensor.untyped_storage().data_ptr() in dit_storages
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            GuidedSampler(tiny_pipeline, reward, config)(
                robot_image(), num_inference_steps=4, seed=0, output_type="latent", progress=False)
        return count

    assert saved_dit_weights("x0") == 0
    assert saved_dit_weights("xt") > 0


def test_camera_stream_follows_the_runs_generator(tiny_pipeline, tiny_vlm):
    seeded = [derive_camera_seed(torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    assert seeded[0] == seeded[1] != seeded[2]
    config = GuidanceConfig(**{**SMALL, "sigma_window": (0.4, 0.6)})
    reward = VLMReward.from_config(tiny_pipeline, VLMCritic(*tiny_vlm, "a pot"), config)
    sampler = GuidedSampler(tiny_pipeline, reward, config)
    drawn = []  # the jittered cameras of every guided evaluation (the reward's own `cameras`, recorded)
    real_cameras = reward.cameras

    def recording_cameras(**kwargs):
        cameras = real_cameras(**kwargs)
        drawn.append(cameras.view.detach().clone())
        return cameras

    reward.cameras = recording_cameras

    def run(**kwargs):
        drawn.clear()
        out = sampler(robot_image(), num_inference_steps=6, output_type="latent", progress=False, **kwargs)
        assert drawn  # guided steps drew cameras
        return out.camera_seed, [r.r for r in out.records if r.guided], torch.stack(drawn)

    def same(a, b) -> bool:
        return a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])

    by_seed = run(seed=5)
    assert same(run(seed=5), by_seed)  # same seed: same cameras, same scores
    first = run(generator=torch.Generator().manual_seed(123))
    second = run(generator=torch.Generator().manual_seed(456))
    # Different generators: different camera seeds, cameras and scores.
    assert first[0] != second[0] and first[1] != second[1] and not torch.equal(first[2], second[2])
    explicit = run(seed=5, camera_seed=first[0])
    # An explicit camera seed gives that stream's cameras whatever the noise seed; the noise (and so r) is seed 5's.
    assert explicit[0] == first[0] and torch.equal(explicit[2], first[2]) and not torch.equal(explicit[2], by_seed[2])
    assert explicit[1] != first[1]


def test_no_reward_graph_outlives_its_guided_step(tiny_pipeline, tiny_vlm):
    """The loss scale keeps the graph for retries; once the gradient is taken, the evaluation the
    callback sees holds no graph, so the critic's activations are freed before the next DiT call."""
    config = GuidanceConfig(**SMALL)
    reward = VLMReward.from_config(tiny_pipeline, VLMCritic(*tiny_vlm, "a pot"), config)
    seen = []

    def callback(sampler, step, sigma, state):
        evaluation = state["evaluation"]
        if evaluation is not None:
            seen.append(step)
            assert evaluation.r.grad_fn is None and not evaluation.images.requires_grad

    GuidedSampler(tiny_pipeline, reward, config)(
        robot_image(), num_inference_steps=6, seed=0, output_type="latent", callback_on_step_end=callback, progress=False)
    assert seen  # guided steps were seen
