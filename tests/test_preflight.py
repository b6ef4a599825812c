"""The resource preflight (issue #19): work that cannot fit never starts. Options past their sane
bounds are refused by the options' own validation; a run within bounds whose estimated peak memory
exceeds the machine's is refused with the estimate, the limit and the option to lower — exit 2,
before any model loads, for `generate`, `score` and the benchmark alike."""

from __future__ import annotations

import pytest

from test_generate import FAST, run_cli  # shared helpers (rgba_image is a conftest fixture)
from vlm3d_ttg.errors import InvalidInputError
from vlm3d_ttg.generation import GenerationOptions
from vlm3d_ttg.guidance import GuidanceConfig
from vlm3d_ttg.preflight import SANE_BOUNDS, ResourceLimitError, check_generation, estimate_run
from vlm3d_ttg.search import SearchOptions

MIB = 2**20


@pytest.fixture()
def cache_env(tiny_cache, monkeypatch):
    monkeypatch.setenv("VLM3D_TTG_CACHE", str(tiny_cache))


@pytest.mark.parametrize("flag,value,field", [
    ("--view-size", "99988", "view_size"),
    ("--grid", "65536", "grid_resolution"),
    ("--octree-resolution", "100000", "octree_resolution"),
    ("--steps", "99999999999999999999", "steps"),
    ("--views", "1000", "num_views"),
    ("--inner-steps", "1000", "inner_steps"),
    ("--candidates", "100000", "candidates"),
])
def test_values_past_their_sane_bound_are_refused_before_anything_loads(flag, value, field, rgba_image, tmp_path, cache_env, capsys, no_model_loads):
    args = ["generate", rgba_image, "-p", "a pot", "--preset", "tiny", "-o", tmp_path / "m.glb", *FAST]
    args = [a for i, a in enumerate(args) if a != flag and (i == 0 or args[i - 1] != flag)] + [flag, value]
    code, _, stderr = run_cli(args, capsys)
    assert code == 2 and f"{field} ({flag}) must be ≤ {SANE_BOUNDS[field][0]}" in stderr, stderr
    assert "unexpected" not in stderr and not list(tmp_path.iterdir())


def test_score_bounds_its_render_size(rgba_image, capsys, tmp_path):
    import trimesh

    mesh = tmp_path / "box.glb"
    trimesh.creation.box().export(mesh)
    code, _, stderr = run_cli(["score", mesh, "-p", "a box", "--preset", "tiny", "--resolution", "99988"], capsys)
    assert code == 2 and "--resolution: view_size must be ≤ 1792" in stderr, stderr


def test_a_run_that_cannot_fit_the_host_is_refused_with_the_estimate_and_the_limit(rgba_image, tmp_path, cache_env,
                                                                                  capsys, monkeypatch, no_model_loads):
    import vlm3d_ttg.preflight as preflight

    monkeypatch.setattr(preflight, "host_memory_available", lambda: 2048 * MIB)  # a 2 GiB machine
    args = ["generate", rgba_image, "-p", "a pot", "--preset", "tiny", "-o", tmp_path / "m.glb", *FAST]
    args[args.index("--octree-resolution") + 1] = "1024"  # within the bound: (1025)³ points ≈ 45 GB
    code, _, stderr = run_cli(args, capsys)
    assert code == 2, stderr
    assert "needs about" in stderr and "more than the 2.0 GiB available" in stderr and "Lower --octree-resolution" in stderr
    assert "export grid" in stderr and not list(tmp_path.iterdir())
    # control: the same run with the small grid fits the same 2 GiB machine (only the grid changed)
    assert preflight.check_generation(GenerationOptions(octree_resolution=48, steps=8, device="cpu"),
                                      GuidanceConfig(num_views=2, view_size=56, grid_resolution=32), preset="tiny")


def test_the_estimate_grows_with_every_option_that_scales_the_work():
    base = dict(preset="tiny", steps=8, octree_resolution=16, grid_resolution=32, num_views=2, view_size=56)
    reference = estimate_run(**base).host_bytes
    for change in (dict(octree_resolution=256), dict(grid_resolution=128), dict(num_views=8), dict(view_size=448),
                   dict(candidates=8), dict(prompt_chars=1000)):
        assert estimate_run(**{**base, **change}).host_bytes > reference, change
    real = estimate_run(preset="real", device="cuda:0")
    assert real.device_parts["model weights"] > 15 * 2**30  # the 7B critic in bf16 alone is ~15.5 GiB
    offloaded = estimate_run(preset="real", device="cuda:0", offload_idle=True)
    assert offloaded.device_bytes < real.device_bytes


def test_the_device_limit_and_the_api_entry(monkeypatch):
    options, guidance = GenerationOptions(device="cpu", octree_resolution=128), GuidanceConfig()
    estimate = check_generation(options, guidance, SearchOptions(), prompt="a chair", preset="real",
                                host_limit=2**50)
    assert estimate.work["export_points"] == 129**3 and "critic activations" in estimate.host_parts
    with pytest.raises(ResourceLimitError, match="host memory") as error:
        check_generation(options, guidance, prompt="a chair", preset="real", host_limit=8 * 2**30)
    assert error.value.limit == 8 * 2**30 and error.value.estimate.host_bytes > error.value.limit
    assert isinstance(error.value, InvalidInputError)  # exit 2 in every front end
    import vlm3d_ttg.preflight as preflight

    cuda = preflight.estimate_run(preset="real", device="cuda:0")
    with pytest.raises(ResourceLimitError, match="cuda:0 memory"):
        preflight.check_run_fits(cuda, host_limit=2**50, device_limit=8 * 2**30)


def test_each_part_of_the_estimate_scales_as_its_cause():
    """Each part pinned, not only the total: renders and the critic's vision memory grow with view size²,
    the export grid with (N+1)³, the guidance grid with (G+1)³ (a part that ignored its option — renders
    at a fixed size, say — would still let the total grow through the others)."""
    base = dict(preset="real", device="cpu", num_views=2, view_size=224, octree_resolution=32)  # the guided step is the peak

    def part(name, **change):
        return estimate_run(**{**base, **change}).host_parts[name]

    assert part("renders", view_size=448) == 4 * part("renders")
    assert part("renders", num_views=4) == 2 * part("renders")
    # The critic's activations: a per-token part (image tokens ∝ size², text tokens) plus the vision tower's
    # (∝ pixels). The per-token cost is read off the text tokens; what remains is the vision tower's.
    per_token = (part("critic activations", prompt_chars=1000) - part("critic activations")) / 1000

    def vision(size):
        estimate = estimate_run(**{**base, "view_size": size})
        tokens = estimate.work["critic_image_tokens"] + estimate.work["critic_text_tokens"]
        return estimate.host_parts["critic activations"] - tokens * per_token

    assert vision(224) > 0 and vision(448) == pytest.approx(4 * vision(224), rel=1e-6)
    exports = [estimate_run(preset="tiny", guided=False, octree_resolution=n).host_parts["export grid"] for n in (63, 127)]
    assert exports[1] / exports[0] == pytest.approx((128 / 64) ** 3)
    grids = [part("guidance grid", grid_resolution=g) for g in (31, 63)]
    assert grids[1] / grids[0] == pytest.approx((64 / 32) ** 3)
