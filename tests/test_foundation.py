"""Foundation: tiny checkpoints in the real formats, loaded by the real loaders; clear errors."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import trimesh
import yaml
from PIL import Image
from safetensors import safe_open

from vlm3d_ttg import load_shape_pipeline
from vlm3d_ttg.errors import ModelNotFoundError
from vlm3d_ttg.backbones.hunyuan3d2_models import SHAPE_VARIANTS, resolve_shape_model
from vlm3d_ttg.models import resolve_dtype
from vlm3d_ttg.tiny import ensure_tiny_shape_model, folder_digest, write_tiny_shape_model


def _disc_rgba(size: int = 96) -> Image.Image:
    yy, xx = np.mgrid[:size, :size]
    inside = (xx - size / 2) ** 2 + (yy - size / 2) ** 2 < (size / 3) ** 2
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[inside] = (200, 120, 60, 255)
    return Image.fromarray(rgba, "RGBA")


def test_tiny_shape_checkpoint_is_in_hy3dgen_format(tiny_shape_ref):
    folder = tiny_shape_ref.models_dir / tiny_shape_ref.repo_id / tiny_shape_ref.subfolder
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["model"]["target"] == "hy3dgen.shapegen.models.Hunyuan3DDiT"
    assert config["vae"]["target"] == "hy3dgen.shapegen.models.ShapeVAE"
    assert config["scheduler"]["target"] == "hy3dgen.shapegen.schedulers.FlowMatchEulerDiscreteScheduler"
    with safe_open(str(folder / "model.fp16.safetensors"), "pt") as f:
        keys = list(f.keys())
        prefixes = {k.split(".")[0] for k in keys}
        assert prefixes == {"model", "vae", "conditioner"}
        assert all(f.get_tensor(k).dtype == torch.float16 for k in keys[:20])


def test_same_seed_same_bytes_and_different_seed_differs(tmp_path):
    a = write_tiny_shape_model(tmp_path / "a", seed=3)
    b = write_tiny_shape_model(tmp_path / "b", seed=3)
    c = write_tiny_shape_model(tmp_path / "c", seed=4)
    assert folder_digest(a) == folder_digest(b)
    assert folder_digest(a) != folder_digest(c)
    # No staging folders left behind.
    assert [p.name for p in a.parent.iterdir()] == [a.name]


def test_hy3dgen_pipeline_runs_end_to_end_on_tiny_checkpoint(tiny_pipeline):
    from hy3dgen.shapegen import Hunyuan3DDiTFlowMatchingPipeline

    assert isinstance(tiny_pipeline, Hunyuan3DDiTFlowMatchingPipeline)
    meshes = tiny_pipeline(
        image=_disc_rgba(),
        num_inference_steps=6,
        generator=torch.Generator().manual_seed(0),
        octree_resolution=48,
        num_chunks=50_000,
        enable_pbar=False,
    )
    mesh = meshes[0]
    assert isinstance(mesh, trimesh.Trimesh)
    assert len(mesh.faces) > 100
    assert np.isfinite(mesh.vertices).all()
    assert np.abs(mesh.vertices).max() < 1.01


def test_tiny_shape_vae_gives_a_nonempty_smooth_surface_for_random_latents(tiny_pipeline):
    """The >= 95% non-empty rate, over random latents of several scales, at a 48^3 grid."""
    vae = tiny_pipeline.vae
    generator = torch.Generator().manual_seed(123)
    scales = (0.3, 1.0, 3.0)
    results = []
    for i in range(45):
        latent = torch.randn(1, *vae.latent_shape, generator=generator) * scales[i % 3]
        with torch.no_grad():
            tokens = vae(latent / vae.scale_factor)
            out = vae.latents2mesh(
                tokens, bounds=1.01, mc_level=0.0, num_chunks=200_000, octree_resolution=48, enable_pbar=False
            )[0]
        if out is None or len(out.mesh_f) == 0:
            results.append(None)
            continue
        # hy3dgen's export flips skimage's winding; with it the normals must point outwards.
        mesh = trimesh.Trimesh(out.mesh_v, out.mesh_f[:, ::-1], process=False)
        results.append((len(mesh.faces), len(mesh.split(only_watertight=False)), mesh.volume))
    non_empty = [r for r in results if r is not None]
    rate = len(non_empty) / len(results)
    assert rate >= 0.95, f"non-empty rate {rate:.2f}"
    faces = np.array([r[0] for r in non_empty])
    components = np.array([r[1] for r in non_empty])
    volumes = np.array([r[2] for r in non_empty])
    assert components.max() <= 5  # a handful of components, not fragments
    assert faces.max() < 20_000  # renderable in milliseconds
    assert (volumes > 0).all()  # outward orientation after hy3dgen's flip: positive logits are inside
    assert volumes.std() / volumes.mean() > 0.05  # the shape really changes with the latent


def test_tiny_shape_decoder_depends_on_latent_scale_factor(tiny_pipeline):
    """scale_factor is far from 1 in the tiny model, so forgetting `/ scale_factor` is visible."""
    vae = tiny_pipeline.vae
    assert abs(vae.scale_factor - 1.0) > 0.1
    latent = torch.randn(1, *vae.latent_shape, generator=torch.Generator().manual_seed(0))
    queries = torch.rand(1, 256, 3, generator=torch.Generator().manual_seed(1)) * 1.2 - 0.6
    with torch.no_grad():
        a = vae.geo_decoder(queries=queries, latents=vae(latent / vae.scale_factor))
        b = vae.geo_decoder(queries=queries, latents=vae(latent))
    assert (a - b).abs().max() > 1e-3


def test_missing_shape_model_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        load_shape_pipeline("nobody/NoSuchModel", "hunyuan3d-dit-v2-0", models_dir=tmp_path, device="cpu")
    message = str(info.value)
    assert "nobody/NoSuchModel" in message
    assert str(tmp_path) in message
    assert "huggingface-cli download" in message


def test_missing_shape_model_with_unreachable_hub_is_a_clear_error(tmp_path, monkeypatch):
    # A closed local port stands in for an unreachable hub: the real hub client tries and fails.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(ModelNotFoundError) as info:
        load_shape_pipeline("nobody/NoSuchModel", "hunyuan3d-dit-v2-0", models_dir=tmp_path, device="cpu")
    assert "Download attempt" in str(info.value)


def test_missing_vlm_offline_is_a_clear_error(monkeypatch, tmp_path):
    from vlm3d_ttg import load_vlm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError) as info:
        load_vlm("nobody/NoSuchVLM", device="cpu")
    assert "nobody/NoSuchVLM" in str(info.value)


def test_variants_and_dtype_policy():
    assert resolve_shape_model("hunyuan3d-2mini-turbo").subfolder == "hunyuan3d-dit-v2-mini-turbo"
    assert resolve_shape_model("tencent/Hunyuan3D-2").subfolder == "hunyuan3d-dit-v2-0"
    assert resolve_shape_model("tencent/Hunyuan3D-2mv", "hunyuan3d-dit-v2-mv-fast").guidance_distilled
    assert all(v.repo_id.startswith("tencent/") for v in SHAPE_VARIANTS.values())
    assert resolve_dtype(torch.device("cpu")) == torch.float32
    assert resolve_dtype(torch.device("cuda")) == torch.float16
    assert resolve_dtype(torch.device("cuda"), half=torch.bfloat16) == torch.bfloat16
    assert resolve_dtype(torch.device("cpu"), "bf16") == torch.bfloat16


@pytest.mark.parametrize("subfolder", ["hunyuan3d-dit-v2-0-fast", "hunyuan3d-dit-v2-mv", "hunyuan3d-dit-v2-0-turbo"])
def test_tiny_variants_load_through_the_same_loader(tiny_cache, subfolder):
    ref = ensure_tiny_shape_model(tiny_cache, subfolder=subfolder)
    pipeline = load_shape_pipeline(ref.repo_id, ref.subfolder, models_dir=ref.models_dir, device="cpu")
    assert pipeline.variant_spec.guidance_distilled == subfolder.endswith("-fast")
    assert pipeline.variant_spec.multiview == ("-mv" in subfolder)
    assert getattr(pipeline.model, "guidance_embed", False) == subfolder.endswith("-fast")
