"""DINOv2 weight names across transformers versions.

Hunyuan3D-2's checkpoints hold the conditioner's DINOv2 under transformers' original module names
(`attention.attention.query`, `attention.output.dense`, `mlp.weights_in`, `mlp.weights_out`).
Newer transformers 5.x releases (5.24 here; 5.17 still has the old names) renamed Dinov2's modules
(`attention.q_proj`, `attention.o_proj`, `mlp.gate_proj` + `mlp.up_proj`, `mlp.down_proj`) and
translate old names only inside their own `from_pretrained`. hy3dgen builds the conditioner itself
and calls `load_state_dict`, which then fails on the real checkpoint. This module translates a
state dict's DINOv2 keys to whichever names the installed transformers uses, in both directions,
so that every checkpoint loads under every supported transformers, and so that the offline
presets can write the real on-disk names whatever transformers writes them.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

# (checkpoint name, renamed module name); the SwiGLU input projection is one matrix in the
# checkpoint (gate rows first, then up rows: the old module split its output in that order) and two
# in the renamed module.
_RENAMES = (
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
    ("mlp.weights_out.", "mlp.down_proj."),
)
_SWIGLU_IN, _GATE, _UP = "mlp.weights_in.", "mlp.gate_proj.", "mlp.up_proj."


def uses_renamed_modules(model: torch.nn.Module) -> bool:
    """True when this Dinov2 module has the renamed submodules (`attention.q_proj`, ...)."""
    return any(name.endswith("attention.q_proj") for name, _ in model.named_modules())


def to_renamed(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict with checkpoint DINOv2 names under `prefix` turned into the renamed ones."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            out[key] = value
            continue
        if _SWIGLU_IN in key:
            gate, up = value.chunk(2, dim=0)
            out[key.replace(_SWIGLU_IN, _GATE)], out[key.replace(_SWIGLU_IN, _UP)] = gate, up
            continue
        for old, new in _RENAMES:
            key = key.replace(old, new)
        out[key] = value
    return out


def to_checkpoint_names(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict with renamed DINOv2 names under `prefix` turned back into the checkpoint's."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            out[key] = value
            continue
        if _UP in key:  # joined with its gate rows below
            continue
        if _GATE in key:
            out[key.replace(_GATE, _SWIGLU_IN)] = torch.cat([value, state[key.replace(_GATE, _UP)]], dim=0)
            continue
        for old, new in _RENAMES:
            key = key.replace(new, old)
        out[key] = value
    return out


def translate_on_load(module: torch.nn.Module) -> None:
    """Make `module.load_state_dict` accept either naming for every Dinov2 model inside it."""
    from transformers import Dinov2Model

    for child in module.modules():
        if isinstance(child, Dinov2Model):
            renamed = uses_renamed_modules(child)

            def translate(state_dict, prefix, *_args, renamed=renamed):
                converted = to_renamed(state_dict, prefix) if renamed else to_checkpoint_names(state_dict, prefix)
                if converted.keys() != state_dict.keys():
                    state_dict.clear()  # in place: torch goes on loading the children from this dict
                    state_dict.update(converted)

            child._register_load_state_dict_pre_hook(translate)


@contextmanager
def hy3dgen_accepts_both_dinov2_namings() -> Iterator[None]:
    """While active, every module hy3dgen's pipeline loader builds translates DINOv2 names on load."""
    import hy3dgen.shapegen.pipelines as pipelines

    original = pipelines.instantiate_from_config

    def instantiate(config, **kwargs):
        made = original(config, **kwargs)
        if isinstance(made, torch.nn.Module):
            translate_on_load(made)
        return made

    pipelines.instantiate_from_config = instantiate
    try:
        yield
    finally:
        pipelines.instantiate_from_config = original
