"""The realsize preset: the real models' shapes (depth 1), random weights, real formats, real loaders, end to end.

The checkpoints (~3 GB) are written once per machine into pytest's base temp parent
(/tmp/pytest-of-$USER/vlm3d-realsize-cache, kept across sessions; atomic writes) or into
$VLM3D_TTG_REALSIZE_TEST_CACHE.
"""

from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
import yaml

from vlm3d_ttg.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import cost_model  # noqa: E402


@pytest.fixture(scope="session")
def realsize_cache(tmp_path_factory) -> Path:
    explicit = os.environ.get("VLM3D_TTG_REALSIZE_TEST_CACHE")
    if explicit:
        return Path(explicit)
    base = tmp_path_factory.getbasetemp()  # /tmp/pytest-of-$USER/pytest-N, or .../pytest-N/popen-gwK under xdist
    session = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    return session.parent / "vlm3d-realsize-cache"  # kept across sessions, shared by xdist's workers


def test_the_real_sizes_are_written_once_and_exposed_by_their_owners():
    """The backbone and the critic family expose the one record of their real sizes; the cost model and the
    realsize preset read it rather than restating the parameter counts."""
    from vlm3d_ttg.backbones.hunyuan3d2 import HunyuanBackbone
    from vlm3d_ttg.critic.families import QWEN2_5_VL
    from vlm3d_ttg.sizes import HUNYUAN3D_2, QWEN2_5_VL_7B

    assert HunyuanBackbone.sizes is HUNYUAN3D_2 and QWEN2_5_VL.sizes is QWEN2_5_VL_7B
    assert (cost_model.DIT_PARAMS, cost_model.VAE_PARAMS, cost_model.DINO_PARAMS, cost_model.QWEN_PARAMS) == (
        HUNYUAN3D_2.dit_params, HUNYUAN3D_2.vae_params, HUNYUAN3D_2.conditioner_params, QWEN2_5_VL_7B.params)
    root = Path(__file__).resolve().parents[1]
    counts = {8.29e9, 1.1e9, 0.21e9, 18944, 152064, 1370}  # parameter counts and sizes only these models have
    for reader in ("benchmarks/cost_model.py", "vlm3d_ttg/cost.py", "vlm3d_ttg/tiny/realsize.py", "vlm3d_ttg/compute.py"):
        tree = ast.parse((root / reader).read_text(encoding="utf-8"))
        restated = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
                    and isinstance(node.value, (int, float)) and not isinstance(node.value, bool) and node.value in counts}
        assert not restated, f"{reader} restates the real sizes {sorted(restated)} in its code; read vlm3d_ttg.sizes"


def test_realsize_configs_are_the_real_ones_except_depth():
    """The numbers agree with the cost model's (both read `vlm3d_ttg.sizes`, so the checks here are that the
    configs put each size in its place, and that derived ones such as DINOv2's token count agree), at any depth."""
    from vlm3d_ttg.tiny.realsize import full_depth_shape_config, realsize_shape_config, realsize_vlm_config

    full, small = full_depth_shape_config(), realsize_shape_config(2)
    dit, vae = full["model"]["params"], full["vae"]["params"]
    dino = full["conditioner"]["params"]["main_image_encoder"]["kwargs"]["config"]
    assert (dit["hidden_size"], dit["depth"], dit["depth_single_blocks"]) == (cost_model.DIT_HIDDEN, cost_model.DIT_DOUBLE, cost_model.DIT_SINGLE)
    assert (vae["num_latents"], vae["embed_dim"], vae["width"], vae["num_decoder_layers"]) == (
        cost_model.LATENT_TOKENS, cost_model.LATENT_CHANNELS, cost_model.VAE_WIDTH, cost_model.VAE_LAYERS)
    assert dino["hidden_size"] == dit["context_in_dim"] == cost_model.COND_DIM
    assert (full["conditioner"]["params"]["main_image_encoder"]["kwargs"]["image_size"] // 14) ** 2 + 1 == cost_model.COND_TOKENS
    # Depth is the only difference.
    for part in ("model", "vae"):
        differing = {k for k in full[part]["params"] if full[part]["params"][k] != small[part]["params"][k]}
        assert differing <= {"depth", "depth_single_blocks", "num_decoder_layers"}
    real, two = realsize_vlm_config(None), realsize_vlm_config(2)
    text, vision = real.text_config, real.vision_config
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.vocab_size) == (
        cost_model.LLM_HIDDEN, cost_model.LLM_MLP, cost_model.LLM_LAYERS, 152064)
    assert text.num_key_value_heads * text.hidden_size // text.num_attention_heads == cost_model.LLM_KV
    assert (vision.hidden_size, vision.intermediate_size, vision.depth) == (cost_model.VIS_HIDDEN, cost_model.VIS_MLP, cost_model.VIS_LAYERS)
    assert (vision.window_size // vision.patch_size) ** 2 == cost_model.VIS_WINDOW
    assert vision.fullatt_block_indexes == [7, 15, 23, 31] and len(vision.fullatt_block_indexes) == cost_model.VIS_FULL_LAYERS
    assert two.text_config.num_hidden_layers == 2 and two.vision_config.depth == 4
    assert two.vision_config.fullatt_block_indexes == [1, 3] and two.vision_config.window_size == 112
    assert (real.image_token_id, real.video_token_id, real.vision_start_token_id, real.vision_end_token_id) == (151655, 151656, 151652, 151653)


def test_generate_realsize_end_to_end_through_the_real_loaders(rgba_image, realsize_cache, tmp_path, monkeypatch, capsys):
    """`vlm3d-ttg generate --preset realsize` at depth 1: one guided step at the real widths, a closed mesh."""
    monkeypatch.setenv("VLM3D_TTG_CACHE", str(realsize_cache))
    out = tmp_path / "mesh.glb"
    # Two steps with the window opened to σ = 0 give one guided step. The faster CPU dtype: bf16 runs ~4x
    # faster than fp32 on AVX-512 CPUs, but ~8x slower where it is emulated (AVX2 EPYC: 18 vs 140 GFLOP/s
    # for a 4442 × 2048 × 8192 matmul; the end-to-end run 389 s vs 82 s). Half precision on disk is
    # checked below either way; the half-precision run path is test_precision's.
    dtype = "bfloat16" if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else "float32"
    code = main(["generate", str(rgba_image), "--prompt", "a clay pot", "--preset", "realsize", "--out", str(out),
                 "--steps", "2", "--sigma-window", "0,0.9", "--views", "2", "--view-size", "56", "--grid", "16",
                 "--octree-resolution", "16", "--dtype", dtype, "--vlm-dtype", dtype, "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    manifest = json.loads(out.with_name(out.name + ".json").read_text())
    assert manifest["models"]["preset"] == "realsize" and "depth 1" in manifest["models"]["shape"]
    guided = [r for r in manifest["records"] if r["guided"]]
    assert len(guided) == 1 and not guided[0]["skipped"]
    assert np.isfinite(guided[0]["r"]) and guided[0]["grad_norm"] > 0 and guided[0]["applied_norm"] > 0
    assert manifest["final_r"] is not None and np.isfinite(manifest["final_r"])
    mesh = trimesh.load(out, force="mesh")
    # The analytic geo-decoder's closed surface: one watertight body with (almost) every face. At a
    # 16³ export grid marching cubes may leave a few stray single faces, depending on the weights
    # (they differ with the transformers that wrote them: module init order), so those are allowed.
    body = max(mesh.split(only_watertight=False), key=lambda part: len(part.faces))
    assert len(body.faces) > 100 and body.is_watertight and len(body.faces) >= 0.98 * len(mesh.faces)

    # What was loaded is what was written: the real sizes on disk, in half precision.
    depth_dir = realsize_cache / "realsize-v2" / "depth-1"
    shape_config = yaml.safe_load(next(depth_dir.rglob("config.yaml")).read_text())
    assert shape_config["vae"]["params"]["num_latents"] == 3072 and shape_config["model"]["params"]["depth"] == 1
    vlm_config = json.loads((depth_dir / "qwen2_5_vl" / "config.json").read_text())
    assert vlm_config["vision_config"]["window_size"] == 112 and vlm_config["text_config"]["hidden_size"] == 3584
    from safetensors import safe_open

    with safe_open(str(next(depth_dir.rglob("model.fp16.safetensors"))), "pt") as f:
        assert f.get_slice("vae.post_kl.weight").get_dtype() == "F16"
    shapes = {}
    for shard in (depth_dir / "qwen2_5_vl").glob("*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            shapes.update({k: (f.get_slice(k).get_shape(), f.get_slice(k).get_dtype()) for k in f.keys()})
    embed = next(v for k, v in shapes.items() if k.endswith("embed_tokens.weight"))
    head = next(v for k, v in shapes.items() if k.endswith("lm_head.weight"))
    assert embed == head == ([152064, 3584], "BF16")  # untied, like the real checkpoint


def test_realsize_depth_without_the_realsize_preset_is_refused_before_loading(rgba_image, tmp_path, capsys):
    code = main(["generate", str(rgba_image), "--prompt", "a pot", "--preset", "tiny", "--out", str(tmp_path / "m.glb"),
                 "--realsize-depth", "2"])
    assert code == 2 and "--realsize-depth only applies to --preset realsize" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    code = main(["generate", str(rgba_image), "--prompt", "a pot", "--preset", "realsize", "--out", str(tmp_path / "m.glb"),
                 "--realsize-depth", "0"])
    assert code == 2 and "realsize-depth" in capsys.readouterr().err
