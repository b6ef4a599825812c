"""The real models' sizes, written once: what the cost model, the preflight and the realsize preset read.

A backbone exposes its generator's sizes (`HunyuanBackbone.sizes`), a critic family its default
checkpoint's (`CriticFamily.sizes`); these are the records they point at. The numbers are the
published checkpoints' (their config.json / config.yaml; parameter counts as published).
`benchmarks/cost_model.py` counts FLOPs and memory from them, `preflight.py` estimates a run's
memory from them, and `tiny/realsize.py` builds random-weight checkpoints of exactly these shapes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ShapeModelSizes:
    """A flow-matching shape model's sizes: its DiT, its VAE's decoder side, its image conditioner."""

    name: str
    dit_params: float
    vae_params: float  # the decoder side the guidance runs: post-KL + transformer + geo-decoder
    conditioner_params: float
    dit_hidden: int
    dit_double_blocks: int
    dit_single_blocks: int
    dit_mlp_ratio: float
    dit_heads: int
    latent_tokens: int
    latent_channels: int
    condition_tokens: int  # the conditioner's output tokens (DINOv2 at its image size: patches + CLS)
    condition_dim: int
    conditioner_layers: int
    conditioner_image_size: int
    vae_width: int
    vae_layers: int
    vae_heads: int
    vae_freq_features: int  # Fourier features of a query point fed to the geo-decoder

    @property
    def depths(self) -> dict[str, int]:
        """Blocks / layers of each kind: {"dit", "vae", "dino"} (what the realsize preset's depth replaces)."""
        return {"dit": self.dit_double_blocks + self.dit_single_blocks, "vae": self.vae_layers,
                "dino": self.conditioner_layers}


@dataclass(frozen=True)
class CriticSizes:
    """A vision-language critic's sizes: its vision tower and its decoder."""

    name: str
    params: float
    vision_layers: int
    vision_hidden: int
    vision_mlp: int
    vision_full_layers: int  # blocks with full attention; the others attend within windows
    vision_window: int  # patches per attention window (112 px = 8 × 8 patches of 14 px)
    llm_layers: int
    llm_hidden: int
    llm_mlp: int
    llm_heads: int
    llm_kv_heads: int
    head_dim: int
    vocab: int

    @property
    def llm_kv(self) -> int:
        """The K/V projection width (grouped-query attention: kv heads × head dim)."""
        return self.llm_kv_heads * self.head_dim

    @property
    def embeddings(self) -> int:
        """Parameters of the input embeddings and the (untied) LM head: not scaled by depth."""
        return 2 * self.vocab * self.llm_hidden

    @property
    def depth(self) -> int:
        """Vision blocks plus decoder layers."""
        return self.vision_layers + self.llm_layers


#: Hunyuan3D-2 (hunyuan3d-dit-v2-0, its ShapeVAE, DINOv2-giant at 518 px: 37 × 37 patches + CLS).
HUNYUAN3D_2 = ShapeModelSizes(
    name="Hunyuan3D-2", dit_params=1.1e9, vae_params=0.21e9, conditioner_params=1.1e9,
    dit_hidden=1024, dit_double_blocks=16, dit_single_blocks=32, dit_mlp_ratio=4.0, dit_heads=16,
    latent_tokens=3072, latent_channels=64, condition_tokens=1370, condition_dim=1536, conditioner_layers=40,
    conditioner_image_size=518, vae_width=1024, vae_layers=16, vae_heads=16, vae_freq_features=51,
)

#: Qwen2.5-VL-7B-Instruct (the paper's critic).
QWEN2_5_VL_7B = CriticSizes(
    name="Qwen2.5-VL-7B", params=8.29e9, vision_layers=32, vision_hidden=1280, vision_mlp=3420, vision_full_layers=4,
    vision_window=64, llm_layers=28, llm_hidden=3584, llm_mlp=18944, llm_heads=28, llm_kv_heads=4, head_dim=128,
    vocab=152064,
)

#: Text tokens of the critic's prompt besides the description (its template and chat markup).
PROMPT_TEXT_TOKENS = 200

__all__ = ["HUNYUAN3D_2", "PROMPT_TEXT_TOKENS", "QWEN2_5_VL_7B", "CriticSizes", "ShapeModelSizes"]
