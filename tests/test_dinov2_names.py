"""DINOv2 weight names: Hunyuan3D-2's checkpoints use transformers' original names, newer transformers
renamed the modules; both must load, exactly as transformers' own loader reads them."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import Dinov2Config, Dinov2Model

from vlm3d_ttg.dinov2_names import to_checkpoint_names, to_renamed, translate_on_load, uses_renamed_modules


def _config(swiglu: bool) -> Dinov2Config:
    return Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        use_swiglu_ffn=swiglu, image_size=28, patch_size=14)


@pytest.mark.parametrize("swiglu", [True, False], ids=["swiglu (dinov2-giant)", "mlp"])
def test_checkpoint_names_load_as_transformers_own_loader_reads_them(swiglu, tmp_path):
    """A state dict in the checkpoint's names loads (through translate_on_load) into the installed
    Dinov2Model to the same function as transformers' from_pretrained of the same file gives."""
    torch.manual_seed(0)
    source = Dinov2Model(_config(swiglu)).eval()
    checkpoint = to_checkpoint_names(source.state_dict())
    assert any(".attention.attention.query." in k for k in checkpoint)
    assert not any(".q_proj." in k or "gate_proj" in k for k in checkpoint)
    assert any(".mlp.weights_in." in k for k in checkpoint) == swiglu
    save_file({k: v.contiguous() for k, v in checkpoint.items()}, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    _config(swiglu).save_pretrained(tmp_path)
    theirs = Dinov2Model.from_pretrained(tmp_path).eval()

    torch.manual_seed(1)
    ours = Dinov2Model(_config(swiglu)).eval()
    translate_on_load(ours)
    ours.load_state_dict(checkpoint)  # strict: every name matched
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        expected = source(pixel_values=pixels).last_hidden_state
        assert torch.equal(ours(pixel_values=pixels).last_hidden_state, theirs(pixel_values=pixels).last_hidden_state)
        torch.testing.assert_close(ours(pixel_values=pixels).last_hidden_state, expected)


def test_the_two_namings_translate_into_each_other_losslessly():
    torch.manual_seed(0)
    state = Dinov2Model(_config(True)).state_dict()
    checkpoint = to_checkpoint_names(state)
    renamed = to_renamed(checkpoint)
    assert to_checkpoint_names(checkpoint).keys() == checkpoint.keys()  # already in checkpoint names: unchanged
    assert to_checkpoint_names(renamed).keys() == checkpoint.keys()
    for key, value in checkpoint.items():
        assert torch.equal(to_checkpoint_names(renamed)[key], value)
    if uses_renamed_modules(Dinov2Model(_config(True))):
        assert renamed.keys() == state.keys() and all(torch.equal(renamed[k], state[k]) for k in state)
    # Keys outside the prefix are left alone, also those that look like renamed ones.
    other = {"dit.mlp.up_proj.weight": torch.ones(2)}
    assert to_checkpoint_names({**other, **{f"enc.{k}": v for k, v in state.items()}}, "enc.").keys() >= other.keys()


def test_the_tiny_shape_model_is_written_in_the_checkpoint_names_and_loads(tiny_shape_ref, tiny_pipeline):
    """The tiny Hunyuan3D-2 on disk names DINOv2 like the real checkpoint, and hy3dgen's loader (with
    the translation) reads it under the installed transformers."""
    from pathlib import Path

    path = next(Path(tiny_shape_ref.models_dir).rglob("model*.safetensors"))
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        on_disk = {k[len("conditioner."):]: f.get_tensor(k) for k in keys if k.startswith("conditioner.")}
    conditioner = [k for k in keys if k.startswith("conditioner.") and ".encoder.layer." in k]
    assert conditioner and any(".attention.attention.query." in k for k in conditioner)
    assert not any(".q_proj." in k or ".gate_proj." in k for k in conditioner)
    encoder = tiny_pipeline.conditioner.main_image_encoder.model
    assert isinstance(encoder, Dinov2Model)
    # What was loaded is what is on disk, under the installed names (fp16 file, fp32 pipeline).
    expected = to_renamed(on_disk) if uses_renamed_modules(encoder) else on_disk
    loaded = tiny_pipeline.conditioner.state_dict()
    assert expected.keys() == loaded.keys()
    assert all(torch.equal(loaded[k].half(), v) for k, v in expected.items())
