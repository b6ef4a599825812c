"""Degraded copies do what they say (measured with the geometry score and mesh statistics, and seen in
renders), and the judge's calibration mechanics on the tiny judge."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from vlm3d_ttg.metrics.degrade import DEFAULT_DEGRADATIONS, Degradation, random_direction
from vlm3d_ttg.metrics.geometry import geometry_score


@pytest.fixture(scope="module")
def bumpy_sphere() -> tuple[np.ndarray, np.ndarray]:
    """A closed sphere (radius 0.5) with fine radial bumps: detail that coarsening should lose."""
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    v = np.asarray(sphere.vertices)
    radius = 0.5 * (1.0 + 0.04 * np.sin(12 * v[:, 0]) * np.sin(12 * v[:, 1]) * np.sin(12 * v[:, 2]))
    return v * radius[:, None], np.asarray(sphere.faces)


def _render(vertices: np.ndarray, faces: np.ndarray) -> torch.Tensor:
    from vlm3d_ttg.render import orbit_cameras
    from vlm3d_ttg.scoring import ScoringMesh

    mesh = ScoringMesh(vertices.astype(np.float32), faces.astype(np.int64), False, "test")
    return mesh.render(orbit_cameras(2, image_size=56, device="cpu"), backend="cpu")


def _area(vertices: np.ndarray, faces: np.ndarray) -> float:
    return float(trimesh.Trimesh(vertices, faces, process=False).area)


def _radial_roughness(vertices: np.ndarray) -> float:
    return float(np.linalg.norm(vertices, axis=1).std())


def _bump_detail(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Correlation between the surface's radial deviation and the bump pattern, on uniform surface samples
    (1: the bumps are all there; 0: none of them is)."""
    points, _ = trimesh.sample.sample_surface(trimesh.Trimesh(vertices, faces, process=False), 4000, seed=0)
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    bump = np.sin(12 * unit[:, 0]) * np.sin(12 * unit[:, 1]) * np.sin(12 * unit[:, 2])
    return float(np.corrcoef(np.linalg.norm(points, axis=1), bump)[0, 1])


def test_holes_open_the_surface_and_remove_some_area(bumpy_sphere):
    v, f = bumpy_sphere
    before = geometry_score(trimesh.Trimesh(v, f))
    dv, df = Degradation("holes", 6, seed=1).apply(v, f)
    after = geometry_score(trimesh.Trimesh(dv, df, process=False))
    assert before.components["open_surface"] == 0 and after.components["open_surface"] > 0.3
    assert after.measurements["boundary_edges"] > 0
    assert 0.6 < _area(dv, df) / _area(v, f) < 0.97
    assert after.measurements["n_components"] == 1  # holes, not pieces


def test_remove_part_cuts_the_extent_along_its_direction(bumpy_sphere):
    v, f = bumpy_sphere
    dv, df = Degradation("remove_part", 0.3, seed=2).apply(v, f)
    direction = random_direction(2)
    extent = lambda x: float((x @ direction).max() - (x @ direction).min())  # noqa: E731
    assert extent(dv) / extent(v) == pytest.approx(0.7, abs=0.04)
    assert geometry_score(trimesh.Trimesh(dv, df, process=False)).components["open_surface"] > 0.3


def test_noise_moves_vertices_by_the_rms_asked_and_keeps_the_surface_closed(bumpy_sphere):
    v, f = bumpy_sphere
    rms = 0.01
    dv, df = Degradation("noise", rms, seed=3).apply(v, f)
    assert len(df) == len(f) and len(dv) == len(v)  # an icosphere has no duplicated vertices to weld
    diagonal = float(np.linalg.norm(v.max(0) - v.min(0)))
    moved = np.linalg.norm(dv - v, axis=1)
    assert np.sqrt((moved ** 2).mean()) / diagonal == pytest.approx(rms, rel=0.1)
    assert geometry_score(trimesh.Trimesh(dv, df, process=False)).components["open_surface"] == 0
    assert _radial_roughness(dv) > 2 * _radial_roughness(v)


def test_coarsen_keeps_the_shape_and_drops_faces_and_detail(bumpy_sphere):
    v, f = bumpy_sphere
    dv, df = Degradation("coarsen", 0.02).apply(v, f)
    assert len(df) == pytest.approx(0.02 * len(f), rel=0.1)
    assert np.abs(dv.max(0) - v.max(0)).max() < 0.05  # same size and place
    assert _bump_detail(v, f) > 0.95 and _bump_detail(dv, df) < 0.6  # most of the bumps are gone
    assert geometry_score(trimesh.Trimesh(dv, df, process=False)).components["open_surface"] == 0


@pytest.mark.parametrize("degradation", [Degradation("holes", 6, seed=1), Degradation("remove_part", 0.3, seed=2),
                                         Degradation("noise", 0.01, seed=3), Degradation("coarsen", 0.05)],
                         ids=lambda d: d.kind)
def test_each_degradation_is_visible_in_renders(bumpy_sphere, degradation):
    v, f = bumpy_sphere
    original = _render(v, f)
    degraded = _render(*degradation.apply(v, f))
    assert (original - degraded).abs().mean() > 0.002
    assert (original - _render(v, f)).abs().max() == 0  # rendering itself is deterministic


def test_bad_degradation_parameters_are_refused():
    with pytest.raises(ValueError, match="Unknown degradation"):
        Degradation("melt", 1)
    with pytest.raises(ValueError, match="remove_part strength"):
        Degradation("remove_part", 1.5)
    with pytest.raises(ValueError, match="coarsen strength"):
        Degradation("coarsen", 0)


# ---------------------------------------------------------------------------------------------
# Calibration mechanics on the tiny judge (its verdicts are meaningless; the bookkeeping is not).


@pytest.fixture(scope="module")
def tiny_judge(session_tiny_judge_path):
    from vlm3d_ttg.metrics import load_judge

    return load_judge(session_tiny_judge_path, device="cpu")


CHECKED = DEFAULT_DEGRADATIONS[1:3]  # two of the four keep the fixture cheap; the benchmark test runs all four


@pytest.fixture(scope="module")
def calibration(tiny_judge, bumpy_sphere):
    from vlm3d_ttg.metrics.calibration import CalibrationItem, calibration_judgements

    box = trimesh.creation.box(extents=(0.8, 0.5, 0.6)).subdivide().subdivide()
    reference = torch.rand(3, 40, 30, generator=torch.Generator().manual_seed(0))  # another size than the views
    items = [CalibrationItem("sphere", "a ball", *bumpy_sphere, reference=reference),
             CalibrationItem("box", "a box", np.asarray(box.vertices), np.asarray(box.faces))]
    return items, calibration_judgements(tiny_judge, items, _render, CHECKED)


def test_base_vs_base_is_exactly_one_half_all_ties(calibration):
    from vlm3d_ttg.metrics.calibration import summarize_calibration

    items, answers = calibration
    summary = summarize_calibration(answers, n_resamples=200)
    b = summary.base_vs_base
    # The same views in both orders: whatever the judge prefers, it is a position, so every item ties.
    assert b.n_items == len(items) and b.ties == len(items) and b.win_rate == 0.5 and b.ci_low == b.ci_high == 0.5
    assert list(summary.clear_gap) == [d.name for d in CHECKED]
    for s in summary.clear_gap.values():
        assert s.n_items == len(items) and 0.0 <= s.ci_low <= s.win_rate <= s.ci_high <= 1.0
    lines = summary.lines()
    assert lines[0].startswith("base vs base") and "N=2" in lines[0] and "[0.50, 0.50]" in lines[0]
    assert all("N=2" in line and "expect ≈ 1" in line for line in lines[1:])


def test_clear_gap_puts_the_original_on_the_guided_side_with_its_reference(calibration, tiny_judge):
    from vlm3d_ttg.metrics.judge import judge_logit_difference

    items, answers = calibration
    item, degradation = items[0], CHECKED[0]
    original, degraded = _render(item.vertices, item.faces), _render(*degradation.apply(item.vertices, item.faces))
    recorded = answers[degradation.name][0]
    assert recorded.diff_guided_first == judge_logit_difference(tiny_judge, item.prompt, original, degraded, item.reference)
    assert recorded.diff_base_first == judge_logit_difference(tiny_judge, item.prompt, degraded, original, item.reference)
    # The reference reaches the judge: without it the answer differs.
    assert recorded.diff_guided_first != judge_logit_difference(tiny_judge, item.prompt, original, degraded)


def test_reference_chat_shows_the_input_image_first_and_asks_about_it(tiny_judge):
    from vlm3d_ttg.metrics.judge import judge_messages

    plain, with_reference = judge_messages("a ball", 2, 2), judge_messages("a ball", 2, 2, reference=True)
    images = lambda m: sum(1 for c in m[0]["content"] if c["type"] == "image")  # noqa: E731
    assert images(plain) == 4 and images(with_reference) == 5
    assert with_reference[0]["content"][1] == {"type": "image"} and "Reference" in with_reference[0]["content"][0]["text"]
    assert "reference image" in with_reference[0]["content"][-1]["text"]
    assert "reference" not in plain[0]["content"][-1]["text"]


def test_trustworthy_needs_one_half_inside_base_and_every_clear_gap_above():
    from vlm3d_ttg.metrics.calibration import JudgeCalibration
    from vlm3d_ttg.metrics.judge import summarize_judgements

    half = summarize_judgements([1.0, -1.0], [1.0, -1.0], n_resamples=100)  # ties: 0.5
    wins = summarize_judgements([1.0] * 8, [-1.0] * 8, n_resamples=100)  # always the original: 1.0
    mixed = summarize_judgements([1.0, -1.0] * 4, [-1.0, 1.0] * 4, n_resamples=100)  # half won, half lost
    assert JudgeCalibration(half, {"holes×6": wins}).trustworthy()
    assert not JudgeCalibration(half, {"holes×6": wins, "noise 0.01": mixed}).trustworthy()
    assert not JudgeCalibration(wins, {"holes×6": wins}).trustworthy()


def test_grid_layout_shows_each_object_as_one_tiled_image(tiny_judge, bumpy_sphere):
    from vlm3d_ttg.critic.layout import tile_views
    from vlm3d_ttg.metrics.judge import judge_logit_difference

    a = _render(*bumpy_sphere)
    b = _render(*Degradation("remove_part", 0.3, seed=2).apply(*bumpy_sphere))
    grid = judge_logit_difference(tiny_judge, "a ball", a, b, layout="grid")
    # The same as handing the judge one pre-tiled image per object (the critic's tiler, at the views' size).
    tiled_a, tiled_b = tile_views(a, (56, 56))[None], tile_views(b, (56, 56))[None]
    assert grid == judge_logit_difference(tiny_judge, "a ball", tiled_a, tiled_b)
    assert grid != judge_logit_difference(tiny_judge, "a ball", a, b)
    with pytest.raises(Exception, match="layout"):
        judge_logit_difference(tiny_judge, "a ball", a, b, layout="mosaic")
