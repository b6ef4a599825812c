"""One error path (issue #19): every user error is a typed error and exit 2 — devices, damaged cached
checkpoints, pathological benchmark sets, meshes that render empty, hostile text — and the Python API
checks what the CLI checks. Exit 1 ("unexpected …") would mean a bug; none of these may reach it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from test_generate import FAST, run_cli  # shared helpers (rgba_image is a conftest fixture)
from vlm3d_ttg.errors import CheckpointError, EmptySurfaceError, InvalidInputError


@pytest.fixture()
def cache_env(tiny_cache, monkeypatch):
    monkeypatch.setenv("VLM3D_TTG_CACHE", str(tiny_cache))


def refused(code: int, stderr: str, *expected: str) -> None:
    assert code == 2, stderr
    assert "unexpected" not in stderr and "Traceback" not in stderr, stderr
    for text in expected:
        assert text in stderr, (text, stderr)


# ---- devices: one parser, the same answer everywhere ---------------------------------------------


@pytest.mark.parametrize("device", ["mps", "meta", "gpu0", "cuda:x"])
def test_unsupported_devices_are_user_errors_in_generate_and_score(device, rgba_image, tmp_path, cache_env, capsys, no_model_loads):
    code, _, stderr = run_cli(["generate", rgba_image, "-p", "a pot", "--preset", "tiny", "-o", tmp_path / "m.glb",
                               "--device", device, *FAST], capsys)
    refused(code, stderr, "device", "auto, cpu, cuda or cuda:N")
    code, _, stderr = run_cli(["score", rgba_image, "-p", "a pot", "--preset", "tiny", "--device", device], capsys)
    refused(code, stderr, "auto, cpu, cuda or cuda:N")
    assert not list(tmp_path.iterdir())


# ---- damaged cached checkpoints: the file and the fix are named ----------------------------------


def test_a_truncated_critic_checkpoint_names_the_file_and_the_fix(tiny_vlm_path, rgba_image, tmp_path, capsys):
    copy = shutil.copytree(tiny_vlm_path, tmp_path / "qwen")
    weights = next(copy.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:4000])
    code, _, stderr = run_cli(["score", rgba_image, "-p", "a pot", "--vlm", copy], capsys)
    # a folder the user gave is theirs to restore (deleting it would lose it); the offline presets' folders are
    # deleted and written again (tests/test_hostile_part_two.py)
    refused(code, stderr, str(weights), "truncated", f"'{copy}' is the folder given as --vlm: restore it")


def test_a_corrupt_shape_checkpoint_names_the_file(tiny_shape_ref, tmp_path):
    from vlm3d_ttg import load_shape_pipeline

    root = shutil.copytree(tiny_shape_ref.models_dir, tmp_path / "hy3dgen")
    folder = root / tiny_shape_ref.repo_id / tiny_shape_ref.subfolder
    (folder / "model.fp16.safetensors").write_bytes(b"\xff" * 64)  # a header length larger than the file
    with pytest.raises(CheckpointError, match="model.fp16.safetensors' cannot be read: its header claims"):
        load_shape_pipeline(tiny_shape_ref.repo_id, tiny_shape_ref.subfolder, models_dir=root, device="cpu")
    (folder / "config.yaml").write_text("model: [unclosed")
    with pytest.raises(CheckpointError, match="config.yaml' cannot be read: it does not parse"):
        load_shape_pipeline(tiny_shape_ref.repo_id, tiny_shape_ref.subfolder, models_dir=root, device="cpu")


# ---- benchmark sets: pathological files, every row checked before any runs, --limit bounds the work


def test_pathological_and_hostile_sets_are_refused_with_row_numbers(tmp_path):
    from vlm3d_ttg.bench import load_bench_set

    (tmp_path / "deep.json").write_text("[" * 100_000)
    with pytest.raises(InvalidInputError, match="nests lists or objects too deeply"):
        load_bench_set(tmp_path / "deep.json")
    rows = [{"id": "a", "prompt": "a chair"}, {"id": "b", "prompt": "a chair<|im_end|>"},
            {"id": "c", "prompt": "a \x1b[31mred\x1b[0m chair"}, {"id": "d", "prompt": "x" * 5000}]
    (tmp_path / "hostile.json").write_text(json.dumps(rows))
    with pytest.raises(InvalidInputError) as error:
        load_bench_set(tmp_path / "hostile.json")
    message = str(error.value)
    assert "3 problem(s)" in message and "row 2 (id 'b')" in message and "'<|im_end|>'" in message
    assert "row 3 (id 'c')" in message and "U+001B" in message and "row 4 (id 'd')" in message and "5,000 characters" in message
    # A line break inside a quoted CSV cell is kept, and so refused with its row number — never dropped.
    (tmp_path / "newline.csv").write_text('id,prompt\nok,a stool\nchair,"a chair\nwith legs"\n')
    with pytest.raises(InvalidInputError, match=r"row 2 \(id 'chair'\): The description contains a line break"):
        load_bench_set(tmp_path / "newline.csv")


def test_limit_bounds_the_work_on_a_huge_set(tmp_path):
    from vlm3d_ttg.bench import load_bench_set

    # Row 1 is fine; every later row names an image that does not exist, and the last carries chat
    # markup. With --limit 1 they are never read.
    rows = (["id,prompt,image", "first,a chair,"] + [f"r{k},a chair,missing_{k}.png" for k in range(20_000)]
            + ["last,a chair<|im_end|>,"])
    (tmp_path / "big.csv").write_text("\n".join(rows) + "\n")
    assert [item.id for item in load_bench_set(tmp_path / "big.csv", limit=1).items] == ["first"]
    with pytest.raises(InvalidInputError, match="row 2 \\(id 'r0'\\): Input image"):
        load_bench_set(tmp_path / "big.csv", limit=2)


# ---- meshes that render empty, unreadable glTF side files -----------------------------------------


@pytest.mark.parametrize("vertices", [
    [[0, 0, 0], [0.5, 0.5, 0.5], [1, 1, 1]],          # one zero-area triangle (collinear)
    [[0, 0, 0], [1e-7, 0, 0], [0, 1e-7, 0]],          # a speck far smaller than a pixel
])
def test_score_refuses_a_mesh_no_camera_sees(vertices, tmp_path, cache_env, capsys):
    path = tmp_path / "blank.ply"
    trimesh.Trimesh(np.array(vertices, float), [[0, 1, 2]], process=False).export(path)
    code, _, stderr = run_cli(["score", path, "-p", "a chair", "--preset", "tiny", "--views", "2", "--resolution", "56"], capsys)
    refused(code, stderr, "renders as empty views", str(path))


def test_a_gltf_without_its_buffer_file_is_named(tmp_path, capsys):
    exported = trimesh.creation.box().export(file_type="gltf")
    (tmp_path / "box.gltf").write_bytes(exported["model.gltf"])  # its buffers left behind
    code, _, stderr = run_cli(["score", tmp_path / "box.gltf", "-p", "a box", "--preset", "tiny"], capsys)
    refused(code, stderr, "side file 'gltf_buffer_0.bin'", "use a .glb")


# ---- text hygiene: one rule for the CLI, the API and benchmark rows --------------------------------


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x07", "\x08", "\x7f", "\t", "\n"])
def test_control_characters_in_a_prompt_are_refused_in_the_cli_and_the_api(char, tiny_vlm, rgba_image, tmp_path, cache_env, capsys, no_model_loads):
    from vlm3d_ttg.critic import VLMCritic

    prompt = f"a wooden{char}chair"
    code, _, stderr = run_cli(["generate", rgba_image, "-p", prompt, "--preset", "tiny", "-o", tmp_path / "m.glb", *FAST], capsys)
    refused(code, stderr, f"U+{ord(char):04X}", "position 8")
    with pytest.raises(InvalidInputError, match=f"U\\+{ord(char):04X}"):
        VLMCritic(*tiny_vlm, prompt)


def test_templates_keep_their_lines_but_not_format_specs_or_control_characters():
    from vlm3d_ttg.critic.queries import resolve_query

    assert resolve_query("Look at the views.\nIs this {description}?\tAnswer Yes or No.")  # newlines, tabs: fine
    with pytest.raises(InvalidInputError, match=r"found \{description:>50000000\}: format specs"):
        resolve_query("Is this {description:>50000000}? Answer Yes or No.")
    with pytest.raises(InvalidInputError, match="found \\{description!r\\}"):
        resolve_query("Is this {description!r}? Answer Yes or No.")
    with pytest.raises(InvalidInputError, match="U\\+0000"):
        resolve_query("Is this {description}?\x00 Answer Yes or No.")


def test_a_huge_prompt_is_refused_before_any_tokenizer(tiny_vlm):
    from vlm3d_ttg.critic.queries import MAX_DESCRIPTION_TOKENS, check_description_tokens, normalize_description

    with pytest.raises(InvalidInputError, match="2,000,000 characters long; at most 1,000"):
        normalize_description("a chair " * 250_000)
    many_tokens = " ".join(f"{k:03d}" for k in range(240))  # under 1000 characters, several tokens per word
    with pytest.raises(InvalidInputError, match=f"tokens long for the critic's tokenizer; at most {MAX_DESCRIPTION_TOKENS}"):
        check_description_tokens(many_tokens, tiny_vlm[1])


def test_an_option_given_twice_is_refused(rgba_image, tmp_path, capsys):
    # `-p.png` is -p with the value '.png': click kept the last -p and ran text-to-3D on '.png' forgotten.
    code, _, stderr = run_cli(["generate", "-p.png", "-p", "a toy robot", "-o", tmp_path / "m.glb", "--preset", "tiny", *FAST], capsys)
    refused(code, stderr, "'-p.png' and '-p' give the same option 2 times")
    assert not list(tmp_path.iterdir())


# ---- the Python API checks what the CLI checks ----------------------------------------------------


def test_the_reward_and_the_condition_image_are_checked_at_the_api(tiny_pipeline, tiny_vlm, tmp_path):
    from vlm3d_ttg.critic import VLMCritic
    from vlm3d_ttg.guidance import GuidanceConfig
    from vlm3d_ttg.inputs import prepare_condition_image
    from vlm3d_ttg.reward import VLMReward

    config = GuidanceConfig(num_views=1, view_size=56, grid_resolution=16)
    with pytest.raises(InvalidInputError, match="nothing to score"):
        VLMReward.from_config(tiny_pipeline, None, config)
    with pytest.raises(InvalidInputError, match="critic must be a critic"):
        VLMReward.from_config(tiny_pipeline, "a critic", config)
    reward = VLMReward.from_config(tiny_pipeline, VLMCritic(*tiny_vlm, "a cube"), config)
    box = trimesh.creation.box(extents=(1, 1, 1))
    vertices = np.array(box.vertices, np.float32)
    assert np.isfinite(float(reward.score_mesh(vertices, box.faces).r))  # control
    vertices[0, 0] = np.nan
    with pytest.raises(InvalidInputError, match="non-finite"):
        reward.score_mesh(vertices, box.faces)
    (tmp_path / "notes.txt").write_text("not an image")
    for source, message in ((tmp_path, "is not a file"), (tmp_path / "notes.txt", "Cannot read image"),
                            (Image.new("RGBA", (64, 64)), "fully transparent")):
        with pytest.raises(InvalidInputError, match=message):
            prepare_condition_image(source)


def test_the_sampler_never_returns_mesh_none_silently(tiny_pipeline, rgba_image):
    from vlm3d_ttg.guidance import GuidanceConfig
    from vlm3d_ttg.sampler import GuidedSampler

    sampler = GuidedSampler(tiny_pipeline, config=GuidanceConfig(enabled=False))
    with pytest.raises(EmptySurfaceError, match="no surface") as error:
        sampler(rgba_image, num_inference_steps=4, guidance_scale=1e30, octree_resolution=32, progress=False)
    assert len(error.value.records) == 4 and error.value.run.records is error.value.records  # the run's records travel with it, as data
    assert not hasattr(error.value.run, "mesh") and not hasattr(error.value, "output")  # no result inside the error
    output = sampler(rgba_image, num_inference_steps=4, generator=torch.Generator().manual_seed(0),
                     octree_resolution=32, progress=False)  # a generator alone (seed=None by default) is fine
    assert output.mesh is not None


def test_a_benchmark_never_writes_over_its_inputs(rgba_image, tmp_path, monkeypatch):
    from vlm3d_ttg.bench import BenchRun, EvalViews, GenerationSettings, MetricSettings, RunPaths, load_bench_set, resolve_configs
    from vlm3d_ttg.bench.runner import check_bench_outputs, check_bench_resources
    from vlm3d_ttg.guidance import GuidanceConfig

    out = tmp_path / "out"
    (out / "items" / "old").mkdir(parents=True)
    shutil.copy(rgba_image, out / "items" / "old" / "pot.png")
    (out / "run.json").write_text(json.dumps([{"id": "pot", "prompt": "a pot", "image": "items/old/pot.png"}]))

    def run_of(set_path):
        bench = load_bench_set(set_path)
        return BenchRun(bench, resolve_configs(["guided"], GuidanceConfig()), GenerationSettings(preset="tiny"),
                        EvalViews(2, 56), MetricSettings(), RunPaths(out))

    with pytest.raises(InvalidInputError, match="run.json .* is the input --set"):  # the set file is the run's run.json
        check_bench_outputs(run_of(out / "run.json"))
    shutil.copy(out / "run.json", tmp_path / "set.json")
    (tmp_path / "items").mkdir()
    shutil.copy(rgba_image, tmp_path / "items" / "pot.png")
    (tmp_path / "set.json").write_text(json.dumps([{"id": "pot", "prompt": "a pot", "image": str(out / "items" / "old" / "pot.png")}]))
    with pytest.raises(InvalidInputError, match="lies inside the run's items folder"):  # an image the run's folders replace
        check_bench_outputs(run_of(tmp_path / "set.json"))
    (tmp_path / "set.json").write_text(json.dumps([{"id": "pot", "prompt": "a pot", "image": "items/pot.png"}]))
    check_bench_outputs(run_of(tmp_path / "set.json"))  # control: the same set, its image outside --out
    import vlm3d_ttg.preflight as preflight

    monkeypatch.setattr(preflight, "host_memory_available", lambda: 64 * 2**20)  # a 64 MiB machine
    with pytest.raises(InvalidInputError, match="Benchmark row 1 \\(id 'pot'\\), configuration 'base': This run needs"):
        check_bench_resources(run_of(tmp_path / "set.json"))
