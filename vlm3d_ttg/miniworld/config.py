"""Sizes of the miniature world's shape model, as a hy3dgen config.yaml (built like `tiny.hunyuan`).

Every module is hy3dgen 2.0.2's own class: Hunyuan3DDiT, ShapeVAE, SingleImageEncoder over a
miniature Dinov2, FlowMatchEulerDiscreteScheduler, ImageProcessorV2.
"""

from __future__ import annotations

MINI_SHAPE_REPO = "vlm3d-ttg/mini-Hunyuan3D-2"
MINI_SHAPE_SUBFOLDER = "hunyuan3d-dit-v2-0"

NUM_LATENTS = 64  # latent tokens (real: 3072)
EMBED_DIM = 8  # latent channels (real: 64)
VAE_WIDTH = 64  # decoder width (real: 1024)
VAE_HEADS = 4
VAE_LAYERS = 2
NUM_FREQS = 8
DIT_HIDDEN = 128
DIT_HEADS = 4
DIT_DEPTH = 2
DIT_SINGLE_DEPTH = 2
COND_DIM = 96  # miniature Dinov2 hidden size = the DiT's context_in_dim
COND_LAYERS = 3
COND_HEADS = 3
COND_IMAGE_SIZE = 112  # 8 × 8 patches of 14 px
PREPROCESS_SIZE = 128  # ImageProcessorV2 size: what the input renders become before the conditioner
BORDER_RATIO = 0.15


def mini_shape_config(scale_factor: float = 1.0, vae_width: int = VAE_WIDTH) -> dict:
    """The config.yaml content of the miniature shape model (`scale_factor` = 1 / std of the training latents,
    `vae_width` = the ShapeVAE decoder's width)."""
    dino = {
        "hidden_size": COND_DIM,
        "num_hidden_layers": COND_LAYERS,
        "num_attention_heads": COND_HEADS,
        "intermediate_size": 2 * COND_DIM,
        "patch_size": 14,
        "image_size": COND_IMAGE_SIZE,
        "layerscale_value": 1.0,
    }
    return {
        "model": {
            "target": "hy3dgen.shapegen.models.Hunyuan3DDiT",
            "params": {
                "in_channels": EMBED_DIM,
                "context_in_dim": COND_DIM,
                "hidden_size": DIT_HIDDEN,
                "mlp_ratio": 2.0,
                "num_heads": DIT_HEADS,
                "depth": DIT_DEPTH,
                "depth_single_blocks": DIT_SINGLE_DEPTH,
                "axes_dim": [DIT_HIDDEN // DIT_HEADS],
                "theta": 10000,
                "qkv_bias": True,
                "guidance_embed": False,
            },
        },
        "vae": {
            "target": "hy3dgen.shapegen.models.ShapeVAE",
            "params": {
                "num_latents": NUM_LATENTS,
                "embed_dim": EMBED_DIM,
                "width": int(vae_width),
                "heads": VAE_HEADS,
                "num_decoder_layers": VAE_LAYERS,
                "num_freqs": NUM_FREQS,
                "include_pi": False,
                "qkv_bias": True,
                "qk_norm": True,
                "scale_factor": float(scale_factor),
            },
        },
        "conditioner": {
            "target": "hy3dgen.shapegen.models.SingleImageEncoder",
            "params": {
                "main_image_encoder": {
                    "type": "DinoImageEncoder",
                    "kwargs": {"config": dino, "image_size": COND_IMAGE_SIZE, "use_cls_token": True},
                }
            },
        },
        "scheduler": {"target": "hy3dgen.shapegen.schedulers.FlowMatchEulerDiscreteScheduler",
                      "params": {"num_train_timesteps": 1000}},
        "image_processor": {
            "target": "hy3dgen.shapegen.preprocessors.ImageProcessorV2",
            "params": {"size": PREPROCESS_SIZE, "border_ratio": BORDER_RATIO},
        },
    }
