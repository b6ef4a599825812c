"""The miniature world: shapes and their attribute detectors, the input-picture style, and the
training scripts (a few steps on a tiny subset lower their loss). No training beyond that here."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vlm3d_ttg.errors import InvalidInputError
from vlm3d_ttg.miniworld.geometry import (
    ShapeClassifier,
    count_legs,
    detect_attribute,
    genus,
    has_back,
    has_fins,
    mesh_from_sdf,
    occupancy_grid,
)
from vlm3d_ttg.miniworld.render_input import INPUT_DISTANCE, render_input_image
from vlm3d_ttg.miniworld.shapes import CLASSES, EXTENT, describe, make_spec, shape_sdf

ROOT = Path(__file__).resolve().parents[1]


def _grid(cls: str, variant: int) -> np.ndarray:
    return occupancy_grid(shape_sdf(make_spec(cls, variant)), 64)


def test_shapes_are_seeded_normalised_and_labelled():
    a, b = make_spec("mug", 3), make_spec("mug", 3)
    assert a == b and make_spec("mug", 3, seed=1) != a
    points = np.random.default_rng(0).uniform(-1.01, 1.01, (20000, 3))
    for cls in ("table", "snowman"):
        sdf = shape_sdf(make_spec(cls, 0))
        inside = points[sdf(points) < 0]
        half_extent = (inside.max(axis=0) - inside.min(axis=0)).max() / 2
        assert EXTENT - 0.08 < half_extent <= EXTENT + 0.02
    assert describe("table", {"legs": 3}) == "a table with three legs"
    assert describe("mug", {"handle": 0}) == "a mug without a handle"
    assert len(CLASSES) >= 10


def test_the_attribute_is_read_from_the_shape_not_from_specks_beside_it():
    # Decoders leave specks: one under a table moved the slice the legs are counted in; one above a
    # backless chair's seat, or low beside a finless rocket, read as a back or fins.
    def speck(grid: np.ndarray, x: int, y: int, z: int, size: int = 2) -> np.ndarray:
        out = grid.copy()
        out[x : x + size, y : y + size, z : z + size] = True
        return out

    def extent(grid: np.ndarray) -> tuple[int, int]:
        ys = np.nonzero(grid.any(axis=(0, 2)))[0]
        return int(ys[0]), int(ys[-1])

    table, chair, rocket = _grid("table", 1), _grid("chair", 1), _grid("rocket", 1)
    assert detect_attribute("table", speck(table, 30, 0, 30)) == 3
    assert detect_attribute("chair", speck(chair, 1, extent(chair)[1] + 3, 1, size=12)) == 0
    bottom, top = extent(rocket)
    assert detect_attribute("rocket", speck(rocket, 1, bottom + max(1, int(0.08 * (top - bottom))), 1)) == 0


def test_attribute_detectors_read_the_attribute_of_known_shapes():
    # Variant parity sets the attribute: even variants have the handle / back / fins / four legs.
    assert genus(_grid("mug", 0)) == 1 and genus(_grid("mug", 1)) == 0
    assert genus(_grid("torus", 0)) == 1 and genus(_grid("sphere", 0)) == 0
    assert count_legs(_grid("table", 0)) == 4 and count_legs(_grid("table", 1)) == 3
    assert has_back(_grid("chair", 0)) and not has_back(_grid("chair", 1))
    assert has_fins(_grid("rocket", 0)) and not has_fins(_grid("rocket", 1))
    for cls, variant in (("mug", 2), ("table", 5), ("chair", 7), ("rocket", 4)):
        spec = make_spec(cls, variant)
        assert detect_attribute(cls, _grid(cls, variant)) == next(iter(spec.attributes.values()))
    assert detect_attribute("bowl", _grid("bowl", 0)) is None


def test_the_shape_classifier_names_held_out_shapes_of_classes_whose_proportions_overlap():
    # Cylinders, boxes, spheres, mugs and bottles with random proportions: the mean distance to a
    # class's shapes names only 13 of these 20 (cylinders go to boxes and mugs), the nearest shape 18.
    rng = np.random.default_rng(0)

    def points(cls: str, variant: int) -> np.ndarray:
        vertices = mesh_from_sdf(shape_sdf(make_spec(cls, variant)), 28).vertices
        return vertices[rng.choice(len(vertices), 300)]

    classes = ("cylinder", "box", "sphere", "mug", "bottle")
    classifier = ShapeClassifier({cls: [points(cls, v) for v in range(6)] for cls in classes})  # training variants
    named = [(cls, classifier(points(cls, v))) for cls in classes for v in (50, 51, 52, 53)]  # test variants
    assert sum(cls == name for cls, name in named) >= 17, named
    query = points("box", 0)
    distances = classifier.distances(query)
    assert sorted(distances) == sorted(classes) and all(len(d) == 6 for d in distances.values())
    assert distances["box"][0] == min(d.min() for d in distances.values())  # another sampling of reference box 0
    with pytest.raises(InvalidInputError, match="every class"):
        ShapeClassifier({"box": [query], "sphere": []})


def test_render_input_image_alpha_is_the_mesh_silhouette():
    # A sphere's silhouette from an orbit camera is a disk of known size at the picture's centre.
    radius, size, fov = 0.6, 96, 40.0
    sdf = lambda p: np.linalg.norm(p, axis=-1) - radius  # noqa: E731
    mesh = mesh_from_sdf(sdf, 48)
    image = render_input_image(mesh, 30.0, 15.0, size=size)
    assert image.mode == "RGBA" and image.size == (size, size)
    rgba = np.asarray(image)
    alpha = rgba[..., 3] >= 128
    disk_radius = math.tan(math.asin(radius / INPUT_DISTANCE)) / math.tan(math.radians(fov / 2)) * size / 2
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    disk = (xx - size / 2) ** 2 + (yy - size / 2) ** 2 <= disk_radius**2
    assert (alpha & disk).sum() / (alpha | disk).sum() > 0.95
    assert rgba[alpha][:, 0].mean() > rgba[alpha][:, 2].mean()  # the clay tint: warmer than grey


# --------------------------------------------------------------------------------------------
# Training scripts: a few steps on a tiny subset


def _training_module(name: str):
    sys.path.insert(0, str(ROOT / "training"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("miniworld")
    assert _training_module("build_data").main(["--out", str(data), "--classes", "mug,torus", "--variants", "2"]) == 0
    return data


def _history(run: Path) -> list[dict]:
    return json.loads((run / "history.json").read_text())


def test_build_data_writes_every_split_file(tiny_world):
    assert np.load(tiny_world / "train_points.npy").shape == (4, 16384, 3)
    inputs = np.load(tiny_world / "train_inputs.npy")
    assert inputs.shape[:3] == (4, 8, 3) and inputs.dtype == np.uint8
    meta = json.loads((tiny_world / "meta.json").read_text())
    assert [s["description"] for s in meta["shapes"]][:2] == ["a mug with a handle", "a mug without a handle"]


def test_decoder_and_dit_training_lower_their_loss(tiny_world, tmp_path):
    decoder_run = tmp_path / "decoder"
    args = ["--data", str(tiny_world), "--run", str(decoder_run), "--steps", "40", "--batch-shapes", "4",
            "--batch-points", "256", "--log-every", "10"]
    assert _training_module("train_decoder").main(args) == 0
    history = _history(decoder_run)
    assert history[-1]["bce"] < history[0]["bce"] - 0.02
    dit_run = tmp_path / "dit"
    args = ["--data", str(tiny_world), "--decoder", str(decoder_run / "ckpt.pt"), "--run", str(dit_run),
            "--steps", "40", "--batch", "8", "--lr", "2e-3", "--log-every", "10"]
    assert _training_module("train_dit").main(args) == 0
    history = _history(dit_run)
    assert history[-1]["loss"] < history[0]["loss"] - 0.05


def test_training_scripts_refuse_missing_data_with_exit_2(tmp_path, capsys):
    assert _training_module("train_decoder").main(["--data", str(tmp_path), "--run", str(tmp_path / "r")]) == 2
    assert "build_data.py" in capsys.readouterr().err


def test_the_decoder_can_go_on_learning_with_the_codes_the_dit_was_trained_on_frozen(tiny_world, tmp_path):
    run = tmp_path / "decoder"
    common = ["--data", str(tiny_world), "--run", str(run), "--batch-shapes", "4", "--batch-points", "256"]
    assert _training_module("train_decoder").main(common + ["--steps", "10"]) == 0
    before = torch.load(run / "ckpt.pt", weights_only=False)
    assert _training_module("train_decoder").main(common + ["--steps", "20", "--freeze-codes-from", "10"]) == 0
    after = torch.load(run / "ckpt.pt", weights_only=False)
    assert after["step"] == 20
    assert torch.equal(after["codes"], before["codes"])  # bit-identical: the DiT's training targets
    moved = [name for name, value in after["vae"].items() if not torch.equal(value, before["vae"][name])]
    assert moved  # the decoder itself kept learning


def test_a_validation_shapes_fit_starts_from_the_code_that_reproduces_its_samples():
    from vlm3d_ttg.miniworld.autodecoder import decode_logits, nearest_codes

    vae = _training_module("train_decoder").build_vae(0).eval()
    with torch.no_grad():  # a trained decoder is sure of its shapes (|logit| ~ 10); a random one is not
        vae.geo_decoder.output_proj.weight.mul_(30)
        vae.geo_decoder.output_proj.bias.mul_(30)
    generator = torch.Generator().manual_seed(0)
    codes = torch.randn(8, 64, 8, generator=generator) * 3
    points = torch.rand(3, 2000, 3, generator=generator) * 2 - 1
    made_by = [5, 2, 7]
    with torch.no_grad():
        occupancy = decode_logits(vae, codes[made_by], points) > 0
    chosen = nearest_codes(vae, codes, points, occupancy, chunk=3)  # chunks of 3 codes: the search spans them
    assert [int(torch.nonzero((codes == code).flatten(1).all(dim=1))) for code in chosen] == made_by


def test_a_decoder_trained_at_another_width_loads_and_exports_at_that_width(tiny_world, tmp_path, capsys):
    from vlm3d_ttg.miniworld.config import VAE_WIDTH

    run = tmp_path / "decoder"
    common = ["--data", str(tiny_world), "--run", str(run), "--batch-shapes", "4", "--batch-points", "128"]
    width = VAE_WIDTH // 2
    assert _training_module("train_decoder").main(common + ["--steps", "3", "--width", str(width)]) == 0
    state = torch.load(run / "ckpt.pt", weights_only=False)
    vae, codes = _training_module("evaluate_mini").load_decoder(run / "ckpt.pt")
    assert vae.geo_decoder.query_proj.out_features == width
    assert torch.equal(codes, state["codes"].float())
    # The export writes the width the decoder was trained at into the config the loaders read.
    dit = {"scale_factor": 1.0, "dit": _mini_dit_state(), "conditioner": _mini_conditioner_state()}
    config, weights = _training_module("export_mini").shape_state(state, dit)
    assert config["vae"]["params"]["width"] == width
    assert weights["vae.geo_decoder.query_proj.weight"].shape[0] == width
    # Resuming at another width is refused before any step, with the width it was trained at.
    assert _training_module("train_decoder").main(common + ["--steps", "6"]) == 2
    assert f"--width {width}" in capsys.readouterr().err
    assert torch.load(run / "ckpt.pt", weights_only=False)["step"] == 3


def _mini_dit_state() -> dict:
    from hy3dgen.shapegen.pipelines import instantiate_from_config

    from vlm3d_ttg.miniworld.config import mini_shape_config

    return instantiate_from_config(mini_shape_config()["model"]).state_dict()


def _mini_conditioner_state() -> dict:
    from hy3dgen.shapegen.pipelines import instantiate_from_config

    from vlm3d_ttg.miniworld.config import mini_shape_config

    return instantiate_from_config(mini_shape_config()["conditioner"]).state_dict()


#: A four-shape world for the critic's batches: 2 classes of 2 descriptions each, one intact and one broken
#: view set per shape (descriptions, classes, each view set's shape row, each view set's broken flag).
FOUR_SHAPES = (["a mug with a handle", "a mug without a handle", "a table with four legs", "a table with three legs"],
               ["mug", "mug", "table", "table"], np.repeat(np.arange(4), 2), np.tile([0, 1], 4))


def test_mixed_critic_batches_ask_each_pair_its_own_description():
    train_critic = _training_module("train_critic")
    descriptions, classes, shape_row, broken = FOUR_SHAPES
    views = np.zeros((8, 1, 3, 4, 4), np.uint8)
    batches = train_critic.CriticBatches(views, shape_row, broken, descriptions, classes, seed=0)
    distinct = []
    for _ in range(6):
        images, texts, labels = batches.sample(8, mixed=True)
        assert images.shape[0] == len(texts) == len(labels) == 8
        for pair in range(4):
            yes, no = 2 * pair, 2 * pair + 1
            assert texts[yes] == texts[no] and labels[yes] == 1 and labels[no] == 0
        distinct.append(len(set(texts)))
    assert max(distinct) >= 2  # one batch asks about several descriptions (one-description batches: always 1)
    _, texts, _ = batches.sample(8)
    assert len(set(texts)) == 1


def test_negative_shares_choose_what_kind_of_no_view_set_is_asked():
    train_critic = _training_module("train_critic")
    descriptions, classes, shape_row, broken = FOUR_SHAPES
    views = np.arange(8, dtype=np.uint8).reshape(8, 1, 1, 1, 1) * np.ones((1, 1, 3, 4, 4), np.uint8)  # each set shows its index

    def kinds(shares: tuple[float, float, float]) -> dict[str, int]:
        batches = train_critic.CriticBatches(views, shape_row, broken, descriptions, classes, seed=0)
        batches.negative_shares = shares
        counts = {"sibling": 0, "broken": 0, "other": 0}
        for _ in range(40):
            images, texts, labels = batches.sample(8, mixed=True)
            for image, text, label in zip(images, texts, labels):
                if label == 1:
                    continue
                row = int(round(float(image[0, 0, 0, 0]) * 255))
                shape = shape_row[row]
                kind = ("broken" if broken[row] and descriptions[shape] == text else
                        "other" if classes[shape] != classes[descriptions.index(text)] else "sibling")
                counts[kind] += 1
        return counts

    assert train_critic.DEFAULT_NEGATIVE_SHARES == (0.35, 0.30, 0.35)
    only_broken = kinds((0.0, 1.0, 0.0))
    assert only_broken["broken"] == 160 and only_broken["sibling"] == only_broken["other"] == 0
    only_sibling = kinds((1.0, 0.0, 0.0))
    assert only_sibling["sibling"] == 160
    mixed = kinds((0.2, 0.6, 0.2))
    assert 0.5 < mixed["broken"] / 160 < 0.7 and mixed["sibling"] > 10 and mixed["other"] > 10
    # Shares that do not sum to 1 are refused by the parser (exit 2).
    with pytest.raises(SystemExit) as stop:
        train_critic.main(["--data", "x", "--views", "y", "--run", "z", "--negative-shares", "0.5,0.5,0.5"])
    assert stop.value.code == 2


def test_a_second_worlds_view_sets_join_the_training_pool_with_their_own_labels():
    train_critic = _training_module("train_critic")
    descriptions, classes, shape_row, broken = FOUR_SHAPES

    def world(value: int, order: list[int]):
        # Each view set's pixels say which world and which shape it is: value + 10 · shape, +5 when broken.
        views = np.stack([np.full((1, 3, 2, 2), value + 10 * r + 5 * b, np.uint8) for r, b in zip(shape_row, broken)])
        return train_critic.CriticBatches(views, shape_row, broken, [descriptions[i] for i in order],
                                          [classes[i] for i in order], seed=0)

    # The second world lists its shapes in another order: a view set keeps its own world's description.
    pool = train_critic.CriticBatches.pooled([world(0, [0, 1, 2, 3]), world(100, [1, 0, 3, 2])], seed=0)
    seen = set()
    for _ in range(40):
        images, texts, labels = pool.sample(8, mixed=True)
        for image, text, label in zip(images, texts, labels):
            pixel = round(float(image[0, 0, 0, 0]) * 255)
            world_of, shape, was_broken = pixel // 100, (pixel % 100) // 10, pixel % 10 == 5
            seen.add(world_of)
            own = descriptions[[[0, 1, 2, 3], [1, 0, 3, 2]][world_of][shape]]
            assert bool(label) == (own == text and not was_broken)
    assert seen == {0, 1}
    named, targets = pool.sample_named(16)
    for image, target in zip(named, targets):
        pixel = round(float(image[0, 0, 0, 0]) * 255)
        assert pool.all_descriptions[target] == descriptions[[[0, 1, 2, 3], [1, 0, 3, 2]][pixel // 100][(pixel % 100) // 10]]
    other = train_critic.CriticBatches(np.zeros((2, 1, 3, 2, 2), np.uint8), np.arange(2), np.zeros(2, int),
                                       ["a bowl", "a cone"], ["bowl", "cone"], seed=0)
    with pytest.raises(ValueError, match="describe their shapes differently"):
        train_critic.CriticBatches.pooled([world(0, [0, 1, 2, 3]), other], seed=0)
    # A world of some of the classes joins: its view sets add Yes answers to its descriptions only.
    tables = train_critic.CriticBatches(np.full((2, 1, 3, 2, 2), 200, np.uint8), np.arange(2), np.zeros(2, int),
                                        ["a table with four legs", "a table with three legs"], ["table", "table"], seed=0)
    pool = train_critic.CriticBatches.pooled([world(0, [0, 1, 2, 3]), tables], seed=0)
    for _ in range(20):
        images, texts, labels = pool.sample(8, mixed=True)
        for image, text, label in zip(images, texts, labels):
            if round(float(image[0, 0, 0, 0]) * 255) == 200 and label:
                assert text.startswith("a table")


def test_a_missing_extra_world_is_refused_before_training(tmp_path, capsys):
    views = tmp_path / "views"
    views.mkdir()
    np.save(views / "train_views.npy", np.zeros(1, np.uint8))
    run = tmp_path / "run"
    code = _training_module("train_critic").main(["--data", str(tmp_path), "--views", str(views), "--run", str(run),
                                                  "--extra-world", str(tmp_path / "world1"), str(tmp_path / "views1")])
    assert code == 2
    assert f"--data {tmp_path / 'world1'} --splits train" in capsys.readouterr().err
    assert not (run / "ckpt.pt").exists()


def test_focus_asks_each_description_in_proportion_to_its_validation_error():
    train_critic = _training_module("train_critic")
    descriptions = ["a mug with a handle", "a mug without a handle", "a table with four legs", "a table with three legs"]
    accuracy = {"a mug with a handle": 1.0, "a mug without a handle": 0.95, "a table with four legs": 0.95,
                "a table with three legs": 0.8}
    evaluation = {"summary": {"split": "val"},
                  "per_description": {d: {"balanced_accuracy": a} for d, a in accuracy.items()}}
    weights = train_critic.focus_weights(evaluation, descriptions)
    # Half even (0.125 each), half by error (0, 0.05, 0.05, 0.2 of 0.3).
    assert weights == pytest.approx([0.125, 0.125 + 0.5 / 6, 0.125 + 0.5 / 6, 0.125 + 0.5 * 2 / 3])
    classes = ["mug", "mug", "table", "table"]
    batches = train_critic.CriticBatches(np.zeros((8, 1, 3, 2, 2), np.uint8), np.repeat(np.arange(4), 2),
                                         np.tile([0, 1], 4), descriptions, classes, seed=0)
    batches.description_weights = weights
    asked = [text for _ in range(200) for text in batches.sample(8, mixed=True)[1][::2]]
    share = {d: asked.count(d) / len(asked) for d in descriptions}
    assert share["a table with three legs"] == pytest.approx(weights[3], abs=0.04)
    assert share["a mug with a handle"] == pytest.approx(weights[0], abs=0.03)
    # The test split's errors must not steer training.
    with pytest.raises(ValueError, match="test split"):
        train_critic.focus_weights({**evaluation, "summary": {"split": "test"}}, descriptions)
    with pytest.raises(ValueError, match="no accuracy"):
        train_critic.focus_weights(evaluation, descriptions + ["a bowl"])


def test_a_critic_run_starts_from_an_exported_critic_and_exports_with_the_rest_kept(tiny_world, tmp_path, capsys):
    from safetensors.torch import load_file

    from vlm3d_ttg.miniworld.checkpoints import ASSETS, read_manifest

    views = tmp_path / "views"
    assert _training_module("build_critic_data").main(["--data", str(tiny_world), "--out", str(views), "--splits", "train",
                                                      "--intact", "1", "--broken", "0"]) == 0
    shipped = read_manifest(ASSETS)
    train_critic = _training_module("train_critic")
    common = ["--data", str(tiny_world), "--views", str(views), "--steps", "0"]
    # A critic of another size is refused before anything is written.
    wrong = tmp_path / "wrong"
    assert train_critic.main(common + ["--run", str(wrong), "--size", "judge",
                                       "--init-from", str(ASSETS / "critic_guide.fp16.safetensors")]) == 2
    assert "not a judge one" in capsys.readouterr().err and not (wrong / "ckpt.pt").exists()
    run = tmp_path / "run"
    assert train_critic.main(common + ["--run", str(run), "--init-from", str(ASSETS / "critic_guide.fp16.safetensors")]) == 0
    ckpt = torch.load(run / "ckpt.pt", weights_only=False)
    assert ckpt["init"]["step"] == shipped["critics"]["guide"]["step"]
    exported = tmp_path / "assets"
    assert _training_module("export_mini").main(["--critic", str(run / "ckpt.pt"), "--keep-from", str(ASSETS),
                                                "--out", str(exported)]) == 0
    manifest = read_manifest(exported)  # every sha256 checked
    # No training step: the exported guide critic is the shipped one, tensor for tensor, and counts its steps on.
    assert manifest["critics"]["guide"]["step"] == shipped["critics"]["guide"]["step"]
    assert manifest["critics"]["guide"]["continued_from_step"] == shipped["critics"]["guide"]["step"]
    ours, theirs = (load_file(str(folder / "critic_guide.fp16.safetensors")) for folder in (exported, ASSETS))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    # The parts not given are kept byte for byte.
    for name in ("shape.fp16.safetensors", "probes.safetensors", "shape_config.yaml", "critic_judge.fp16.safetensors"):
        assert manifest["sha256"][name] == shipped["sha256"][name]
    assert manifest["critics"]["judge"] == shipped["critics"]["judge"] and manifest["training"] == shipped["training"]
    # An export that fails part way (a changed guide critic is written, then the judge checkpoint is
    # unreadable) leaves the earlier export exactly as it was, with no staging files beside it.
    changed = torch.load(run / "ckpt.pt", weights_only=False)
    first = next(iter(changed["model"]))
    changed["model"][first] = changed["model"][first] + 1.0
    torch.save(changed, tmp_path / "changed.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    before = {path.name: path.read_bytes() for path in exported.iterdir()}
    assert _training_module("export_mini").main(["--critic", str(tmp_path / "changed.pt"), "--judge", str(tmp_path / "garbage.pt"),
                                                "--keep-from", str(exported), "--out", str(exported)]) == 1
    assert "nothing was written" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in exported.iterdir()} == before
    # The evaluation reads the exported critic and pools another world's view sets with their own labels
    # (here the same world again: every Yes group doubles and keeps its accuracy).
    evaluate = _training_module("evaluate_mini")
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    base = ["critic", "--data", str(tiny_world), "--views", str(views), "--critic", str(ASSETS / "critic_guide.fp16.safetensors"),
            "--split", "train"]
    assert evaluate.main(base + ["--out", str(one)]) == 0
    assert evaluate.main(base + ["--extra-world", str(tiny_world), str(views), "--out", str(two)]) == 0
    one, two = (json.loads(path.read_text()) for path in (one, two))
    assert one["summary"]["critic_step"] == shipped["critics"]["guide"]["step"] and one["summary"]["split"] == "train"
    assert one["per_description"].keys() == two["per_description"].keys()
    for description, result in one["per_description"].items():
        assert two["per_description"][description]["yes"]["n"] == 2 * result["yes"]["n"]
        assert two["per_description"][description]["yes"]["accuracy"] == result["yes"]["accuracy"]
    # Without --keep-from the shape model must be given.
    assert _training_module("export_mini").main(["--critic", str(run / "ckpt.pt"), "--out", str(tmp_path / "x")]) == 2
    assert "--keep-from" in capsys.readouterr().err


def test_averaged_snapshots_hold_the_mean_weights_and_refuse_another_model(tmp_path, capsys):
    average = _training_module("average_checkpoints")

    def snapshot(step: int, scale: float, size: str = "guide") -> Path:
        path = tmp_path / f"snap_{step}_{size}.pt"
        torch.save({"model": {"w": torch.full((2, 3), scale), "b": torch.arange(3.0) * scale}, "step": step,
                    "size": size, "seed": 0, "init": {"sha256": "abc", "step": 100}, "history": []}, path)
        return path

    out = tmp_path / "averaged.pt"
    assert average.main([str(snapshot(10, 1.0)), str(snapshot(30, 2.0)), str(snapshot(20, 6.0)), "--out", str(out)]) == 0
    state = torch.load(out, weights_only=False)
    assert torch.equal(state["model"]["w"], torch.full((2, 3), 3.0))
    assert torch.equal(state["model"]["b"], torch.arange(3.0) * 3.0)
    assert state["step"] == 30 and state["averaged_steps"] == [10, 20, 30] and state["init"]["step"] == 100
    assert average.main([str(snapshot(10, 1.0)), str(snapshot(40, 1.0, "judge")), "--out", str(tmp_path / "x.pt")]) == 2
    assert "differ in size" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()
