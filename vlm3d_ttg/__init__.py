"""vlm3d-ttg: vision-language test-time guidance for native 3D diffusion.

Heavy modules load on first use, so `import vlm3d_ttg` stays fast for the CLI.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_shape_pipeline": ".backbones.hunyuan3d2_models",
    "load_vlm": ".models",
    "GuidanceConfig": ".guidance",
    "GuidedSampler": ".sampler",
    "Backbone": ".backbones",
    "HunyuanBackbone": ".backbones.hunyuan3d2",
    "VLMReward": ".reward",
    "RewardTerm": ".terms",
    "TermValue": ".terms",
    "Views": ".terms",
    "Critic": ".critic",
    "VLMCritic": ".critic",
    "Qwen3VLCritic": ".critic",
    "build_critic": ".critic",
    "qwen_pixel_values": ".critic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
