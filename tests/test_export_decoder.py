"""`--export-decoder` (issue 28): the final export through hy3dgen's coarse-to-fine volume decoders, on the
tiny preset's real hy3dgen checkpoints.

Tolerances, measured on this latent at the tiny preset's export grid (128): hierarchical decodes the same
field on FlashVDM's grid (126 cells: its coarse grid is rounded to blocks of 4), so its vertices lie within
0.79 of a cell of the dense export's and the volume IoU is 1.000; flashvdm attends to the top third of
the tiny VAE's 32 latent tokens per chunk (an approximation, much coarser than the real model's 1024 of
3072), measured IoU 0.954, mean vertex distance 0.64 cell. Hierarchical makes 402 254 decoder queries,
18.7 % of the dense grid's 129³.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from vlm3d_ttg.backbones.hunyuan3d2 import export_volume_decoder, latents_to_mesh, shapevae_occupancy_field
from vlm3d_ttg.cli import main

RESOLUTION = 128  # the tiny preset's export grid: two levels (64, 128) for the coarse-to-fine decoders
CELL = 2 * 1.01 / RESOLUTION


@pytest.fixture(scope="module")
def final_latent(tiny_pipeline, rgba_image):
    """A final latent of the tiny pipeline (its own sampler, 6 steps) that decodes to a surface."""
    from vlm3d_ttg.inputs import prepare_condition_image

    return tiny_pipeline(image=prepare_condition_image(rgba_image), num_inference_steps=6, output_type="latent",
                         generator=torch.Generator().manual_seed(0))


class QueryCounter:
    """Counts the points the VAE's geo-decoder is asked about while installed (wraps its forward)."""

    def __init__(self, geo_decoder):
        self.geo_decoder, self.count = geo_decoder, 0

    def __enter__(self):
        forward = self.geo_decoder.forward

        def counted(queries=None, **kwargs):
            self.count += queries.shape[0] * queries.shape[1]
            return forward(queries=queries, **kwargs)

        self.geo_decoder.forward = counted
        return self

    def __exit__(self, *exc):
        del self.geo_decoder.forward  # the class's forward again


@pytest.fixture(scope="module")
def exports(tiny_pipeline, final_latent):
    """{decoder: (mesh, decoder queries)} for the three decoders of the same final latent ("dense": no
    decoder given, the default)."""
    found = {}
    for decoder in ("dense", "hierarchical", "flashvdm"):
        chosen = {} if decoder == "dense" else {"decoder": decoder}
        with QueryCounter(tiny_pipeline.vae.geo_decoder) as counter:
            mesh = latents_to_mesh(tiny_pipeline, final_latent, octree_resolution=RESOLUTION, **chosen)
        found[decoder] = (mesh, counter.count)
    return found


def _volume_iou(a, b) -> float:
    points = np.random.default_rng(0).uniform(-1.01, 1.01, (20000, 3))
    inside_a, inside_b = a.contains(points), b.contains(points)
    return float((inside_a & inside_b).sum() / (inside_a | inside_b).sum())


def _vertex_distances(a, b) -> np.ndarray:
    """Each vertex's distance to the other mesh's nearest vertex, both ways, in cells of the export grid."""
    return np.concatenate([cKDTree(b.vertices).query(a.vertices)[0], cKDTree(a.vertices).query(b.vertices)[0]]) / CELL


def test_hierarchical_export_is_the_dense_mesh_from_a_fifth_of_the_queries(exports):
    dense, dense_queries = exports["dense"]
    mesh, queries = exports["hierarchical"]
    assert dense_queries == (RESOLUTION + 1) ** 3
    assert queries < 0.25 * dense_queries
    assert _volume_iou(dense, mesh) > 0.99
    assert _vertex_distances(dense, mesh).max() < 1.0  # the same field; marching cubes on a grid 2 cells coarser
    assert np.allclose(mesh.bounds, dense.bounds, atol=CELL)  # in the dense export's frame (export_frame_matrix)


def test_flashvdm_export_is_close_to_the_dense_mesh(exports):
    dense, dense_queries = exports["dense"]
    mesh, queries = exports["flashvdm"]
    assert queries < 0.25 * dense_queries
    assert _volume_iou(dense, mesh) > 0.9
    assert _vertex_distances(dense, mesh).mean() < 1.0


def test_the_dense_default_is_hy3dgens_own_export_byte_for_byte(tiny_pipeline, final_latent, exports):
    """No decoder given = "dense" = hy3dgen's own latents2mesh with its own (vanilla) volume decoder."""
    from hy3dgen.shapegen.pipelines import export_to_trimesh

    vae = tiny_pipeline.vae
    with torch.no_grad():
        outputs = vae.latents2mesh(vae(1.0 / vae.scale_factor * final_latent), bounds=1.01, mc_level=0.0, num_chunks=8000,
                                   octree_resolution=RESOLUTION, mc_algo=None, enable_pbar=False)
    own, default = export_to_trimesh(outputs)[0], exports["dense"][0]
    assert default.vertices.tobytes() == own.vertices.tobytes() and default.faces.tobytes() == own.faces.tobytes()


def test_a_flashvdm_export_leaves_the_guidance_decode_as_it_was(tiny_pipeline, final_latent):
    """The VAE's own volume decoder, surface extractor and cross-attention processor (the object) are back
    after the export, and the reward's occupancy field gives the same values bit for bit."""
    vae = tiny_pipeline.vae
    attention = vae.geo_decoder.cross_attn_decoder.attn.attention
    before = vae.volume_decoder, vae.surface_extractor, attention.attn_processor
    points = torch.rand(500, 3) * 2 - 1
    field = shapevae_occupancy_field(vae, final_latent)
    values = field.query(points, field.params)
    assert latents_to_mesh(tiny_pipeline, final_latent, octree_resolution=RESOLUTION, decoder="flashvdm") is not None
    assert (vae.volume_decoder, vae.surface_extractor, attention.attn_processor) == before
    assert attention.attn_processor is before[2]
    after = shapevae_occupancy_field(vae, final_latent)
    assert torch.equal(after.query(points, after.params), values)
    # ... also when the export fails inside.
    with pytest.raises(RuntimeError), export_volume_decoder(vae, "flashvdm"):
        vae.volume_decoder(vae(final_latent / vae.scale_factor), vae.geo_decoder, octree_resolution=64, enable_pbar=False)
        assert type(attention.attn_processor).__name__ == "FlashVDMCrossAttentionProcessor"
        raise RuntimeError("the export failed")
    assert attention.attn_processor is before[2] and vae.volume_decoder is before[0]


def test_the_sampler_exports_with_the_decoder_it_is_given(tiny_pipeline, rgba_image, exports):
    """GuidedSampler's `export_decoder` reaches the backbone's export (the queries say which decoder ran);
    a bad one is refused before sampling."""
    from vlm3d_ttg.errors import InvalidInputError
    from vlm3d_ttg.guidance import GuidanceConfig
    from vlm3d_ttg.inputs import prepare_condition_image
    from vlm3d_ttg.sampler import GuidedSampler

    sampler = GuidedSampler(tiny_pipeline, reward=None, config=GuidanceConfig(enabled=False))
    image = prepare_condition_image(rgba_image)
    with QueryCounter(tiny_pipeline.vae.geo_decoder) as counter:
        output = sampler(image, num_inference_steps=6, seed=0, octree_resolution=RESOLUTION, progress=False,
                         export_decoder="hierarchical")
    assert output.mesh is not None and counter.count < 0.25 * exports["dense"][1]
    with pytest.raises(InvalidInputError, match="export_decoder"):
        sampler(image, num_inference_steps=6, seed=0, progress=False, export_decoder="sparse")


def test_a_bad_export_decoder_is_refused_before_models_load(no_model_loads, rgba_image, tmp_path, capsys):
    code = main(["generate", str(rgba_image), "--prompt", "a chair", "--preset", "tiny", "--export-decoder", "octree",
                 "--out", str(tmp_path / "a.glb")])
    assert code == 2
    assert "--export-decoder" in capsys.readouterr().err
    assert main(["generate", "--help"]) == 0
    assert "--export-decoder" in capsys.readouterr().out


def test_the_mini_preset_exports_with_flashvdm(tmp_path, monkeypatch):
    """A mini run with --export-decoder flashvdm (its export grid, 64: FlashVDM on 63 cells, rescaled): a mesh, and the option in its manifest."""
    from vlm3d_ttg.miniworld import make_spec, render_input_image, shape_sdf
    from vlm3d_ttg.miniworld.geometry import mesh_from_sdf

    image = tmp_path / "mug.png"
    render_input_image(mesh_from_sdf(shape_sdf(make_spec("mug", 2)), 48), 30.0, 20.0).save(image)
    monkeypatch.setenv("VLM3D_TTG_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "mug.glb"
    code = main(["generate", str(image), "--prompt", "a mug", "--preset", "mini", "--steps", "6", "--no-guidance",
                 "--export-decoder", "flashvdm", "--out", str(out), "--quiet"])
    assert code == 0 and out.stat().st_size > 0
    manifest = json.loads(out.with_name("mug.glb.json").read_text())
    assert manifest["options"]["export_decoder"] == "flashvdm"
