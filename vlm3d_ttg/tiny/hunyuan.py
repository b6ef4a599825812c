"""A tiny Hunyuan3D-2 shape checkpoint in hy3dgen's real on-disk format.

Written to `<root>/<repo_id>/<subfolder>/{config.yaml, model.fp16.safetensors}` exactly where
hy3dgen's `smart_load_model` looks when `$HY3DGEN_MODELS=<root>`, with keys prefixed `model.`,
`vae.` and `conditioner.`, and loaded by `vlm3d_ttg.load_shape_pipeline` like the real model.

Every module is hy3dgen's own class (Hunyuan3DDiT, ShapeVAE, SingleImageEncoder over a tiny
Dinov2, FlowMatchEulerDiscreteScheduler, ImageProcessorV2). The DiT and the image encoder have
random weights. The ShapeVAE's geo-decoder does not: with random weights its occupancy field is
noise (hundreds of thousands of faces of fragments), so nothing downstream could be exercised.
Instead its weights are set analytically so that the decoder computes

    logit(x; z) = k · f / σ(x, z),    f(x; z) = R(x; z) - c · Σ_i (1 - cos(π x_i)),
    R(x; z)     = R0 + ρ · Σ_j softmax_j(⟨q(x/|x|), key(z_j)⟩) · u(z_j),

i.e. a lumpy closed blob whose radius in each direction is an attention-weighted average of
per-latent-token "radius" values u(z_j), with the attention keys (token directions) also coming
from the latent. σ > 0 is the LayerNorm scale that `ln_post` introduces, so the zero level set
is exactly {f = 0}. Because R stays within (0, 2c) for any latent (LayerNorm bounds u), the
surface is never empty and never touches the ±1.01 box: it is one smooth closed surface whose
shape changes with the latent. |∇ₓ logit| is ≈ 10–40 near the surface, not 1 — like the real
model's logits, which are not a distance either. Everything the construction does not use
(second attention head, MLPs, the VAE transformer) gets small random weights so that every code
path still carries signal and gradient.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from ..io import write_directory_atomic

TINY_SHAPE_REPO = "vlm3d-ttg/tiny-Hunyuan3D-2"
TINY_SHAPE_SUBFOLDER = "hunyuan3d-dit-v2-0"

# Sizes: small enough for a 50-step CPU run in seconds, large enough to exercise every reshape
# (2 heads, >1 token, RoPE-free DiT with both block kinds).
_EMBED_DIM = 8  # latent channels (real: 64)
_NUM_LATENTS = 32  # latent tokens (real: 3072)
_VAE_WIDTH = 32  # (real: 1024)
_VAE_HEADS = 2
_NUM_FREQS = 8
_DIT_HIDDEN = 32
_DIT_HEADS = 2
_COND_DIM = 32  # tiny Dinov2 hidden size = DiT context_in_dim
_COND_IMAGE_SIZE = 56  # 4 x 4 patches of 14 px
_PREPROCESS_SIZE = 64

# Constants of the analytic decoder (see the module docstring).
_C_BOWL = 1.0  # c: the bowl c·Σ(1 - cos πx) reaches 2c at the middle of a box face
_R0 = 1.0  # mean "radius²-like" level: the surface sits at |x| ≈ 0.45–0.75
_RHO = 0.35  # how much the latent moves it (|u| ≤ 4 bounds R; typical |Σ w u| ≲ 1.5)
_ANCHOR = 1.0  # constant channels that keep LayerNorm scales away from zero
_DIR_GAIN = 1.0
_ATTN_SHARPNESS = 10.0
_KEY_GAIN = 2.0
_OUT_GAIN = 4.0
_NOISE = 0.02  # scale of the small random weights on paths the construction does not use


def tiny_shape_config(*, guidance_embed: bool = False, multiview: bool = False, turbo: bool = False) -> dict:
    """The config.yaml content of the tiny shape model, in hy3dgen's format."""
    dino = {
        "hidden_size": _COND_DIM,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 2 * _COND_DIM,
        "patch_size": 14,
        "image_size": _COND_IMAGE_SIZE,
        "layerscale_value": 1.0,
    }
    encoder_kwargs = {"config": dino, "image_size": _COND_IMAGE_SIZE, "use_cls_token": True}
    if multiview:
        encoder_kwargs["view_num"] = 4
    scheduler = (
        {"target": "hy3dgen.shapegen.schedulers.ConsistencyFlowMatchEulerDiscreteScheduler",
         "params": {"num_train_timesteps": 1000, "pcm_timesteps": 100}}
        if turbo
        else {"target": "hy3dgen.shapegen.schedulers.FlowMatchEulerDiscreteScheduler",
              "params": {"num_train_timesteps": 1000}}
    )
    return {
        "model": {
            "target": "hy3dgen.shapegen.models.Hunyuan3DDiT",
            "params": {
                "in_channels": _EMBED_DIM,
                "context_in_dim": _COND_DIM,
                "hidden_size": _DIT_HIDDEN,
                "mlp_ratio": 2.0,
                "num_heads": _DIT_HEADS,
                "depth": 1,
                "depth_single_blocks": 1,
                "axes_dim": [_DIT_HIDDEN // _DIT_HEADS],
                "theta": 10000,
                "qkv_bias": True,
                "guidance_embed": guidance_embed,
            },
        },
        "vae": {
            "target": "hy3dgen.shapegen.models.ShapeVAE",
            "params": {
                "num_latents": _NUM_LATENTS,
                "embed_dim": _EMBED_DIM,
                "width": _VAE_WIDTH,
                "heads": _VAE_HEADS,
                "num_decoder_layers": 1,
                "num_freqs": _NUM_FREQS,
                "include_pi": True,
                "qkv_bias": True,
                "qk_norm": True,
                # Deliberately far from 1 (real: 0.99909) so a missing `/ scale_factor` shows.
                "scale_factor": 0.8,
            },
        },
        "conditioner": {
            "target": "hy3dgen.shapegen.models.SingleImageEncoder",
            "params": {
                "main_image_encoder": {
                    "type": "DinoImageEncoderMV" if multiview else "DinoImageEncoder",
                    "kwargs": encoder_kwargs,
                }
            },
        },
        "scheduler": scheduler,
        "image_processor": {
            "target": "hy3dgen.shapegen.preprocessors." + ("MVImageProcessorV2" if multiview else "ImageProcessorV2"),
            "params": {"size": _PREPROCESS_SIZE, "border_ratio": 0.15},
        },
    }


@dataclass(frozen=True)
class _AnalyticScale:
    """The sizes of one ShapeVAE and the analytic construction's constants rescaled to them
    (`_set_analytic_geo_decoder`), plus the seeded generator every random weight is drawn from."""

    width: int  # residual channels of the VAE (tiny 32, real 1024)
    embed_dim: int  # latent channels
    head_dim: int
    num_freqs: int
    noise: float  # scale of the small random weights
    rho: float  # how much the latent moves the surface
    bowl: float  # c of the bowl c·Σ(1 - cos f0·x)
    generator: torch.Generator

    @classmethod
    def of(cls, vae: torch.nn.Module, generator: torch.Generator) -> "_AnalyticScale":
        width, embed_dim = vae.post_kl.out_features, vae.post_kl.in_features
        include_pi = float(vae.fourier_embedder.frequencies[0]) > 1.5
        return cls(
            width=width, embed_dim=embed_dim, head_dim=width // vae.geo_decoder.cross_attn_decoder.attn.heads,
            num_freqs=vae.fourier_embedder.num_freqs,
            noise=_NOISE * (_VAE_WIDTH / width),
            rho=_RHO * math.sqrt((_VAE_WIDTH / (2 * _EMBED_DIM)) / (width / (2 * embed_dim))),
            bowl=_C_BOWL if include_pi else _C_BOWL * 2.0 / (1.0 - math.cos(1.0)),
            generator=generator,
        )

    def small(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Small random weights for a path the construction does not use (it still carries signal)."""
        return torch.randn(shape, generator=self.generator) * self.noise

    def mixing(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Unit-gain random weights (a random projection of `width` channels)."""
        return torch.randn(shape, generator=self.generator) / math.sqrt(self.width)


def _zero_bias(lin: torch.nn.Linear) -> None:
    if lin.bias is not None:  # the real config has qkv_bias: false
        lin.bias.zero_()


def _set_analytic_geo_decoder(vae: torch.nn.Module, generator: torch.Generator) -> None:
    """Give a ShapeVAE the analytic occupancy field described in the module docstring.

    Sizes are read from `vae`, so the same construction serves the tiny model and the realsize
    one (width 1024, 64 latent channels, no π in the Fourier features). The constants above are
    tuned at the tiny sizes; at other sizes three of them are rescaled so that the field keeps
    the same typical magnitudes (for the tiny sizes every factor is exactly 1, same bytes):
    - the small random weights by tiny_width / width: their sums over `width` (and 4·width MLP)
      LayerNorm-amplified channels would otherwise swamp the construction;
    - ρ by the typical |u_j| ratio: u_j = LN(post_kl(z_j))[3] has typical size √(width / 2·embed_dim);
    - the bowl c by 2 / (1 - cos 1) without π, so the bowl still reaches 2c-equivalent (= 2) at
      the middle of a box face and the surface stays inside the box.
    The steps run in this order because they draw from one generator (same seed, same bytes).
    """
    scale = _AnalyticScale.of(vae, generator)
    decoder = vae.geo_decoder
    with torch.no_grad():
        _set_latent_channels(vae.post_kl, scale)
        _set_near_identity_transformer(vae.transformer, scale)
        _set_query_field(decoder.query_proj, scale)
        _set_radius_attention(decoder.cross_attn_decoder.attn, scale)
        _set_small_mlp(decoder.cross_attn_decoder.mlp, scale)
        _set_logit_readout(decoder.output_proj)


def _set_latent_channels(post: torch.nn.Linear, scale: _AnalyticScale) -> None:
    """post_kl: token z_j -> [z_j + b, -(z_j + b), 0, ...]; the mirrored copy keeps the LayerNorm mean
    at ~0 so LN(data_j)[:embed_dim] is a scaled direction of z_j."""
    embed_dim = scale.embed_dim
    post.weight.zero_()
    post.bias.zero_()
    eye = torch.eye(embed_dim)
    post.weight[:embed_dim] = eye
    post.weight[embed_dim : 2 * embed_dim] = -eye
    offset = torch.randn(embed_dim, generator=scale.generator) * 0.3  # breaks scale invariance in z
    post.bias[:embed_dim] = offset
    post.bias[embed_dim : 2 * embed_dim] = -offset
    post.weight.add_(scale.small(post.weight.shape))


def _set_near_identity_transformer(transformer: torch.nn.Module, scale: _AnalyticScale) -> None:
    """VAE transformer: near-identity residual blocks (small random residual branches)."""
    for block in transformer.resblocks:
        for lin in (block.attn.c_qkv, block.mlp.c_fc):
            lin.weight.copy_(scale.mixing(lin.weight.shape))
            _zero_bias(lin)
        for lin in (block.attn.c_proj, block.mlp.c_proj):
            lin.weight.copy_(scale.small(lin.weight.shape))
            _zero_bias(lin)


def _set_query_field(query_proj: torch.nn.Linear, scale: _AnalyticScale) -> None:
    """query_proj: Fourier features -> residual channels
    ch0 = R0 - c Σ(1 - cos f0·x) (the bowl; f0 = π or 1), ch1 = -ch0, ch2/ch3 = ±anchor,
    ch4..6 = g·x, ch7..9 = -g·x."""
    bowl, num_freqs = scale.bowl, scale.num_freqs
    query_proj.weight.zero_()
    query_proj.bias.zero_()
    for i in range(3):
        cos_index = 3 + 3 * num_freqs + i * num_freqs  # cos(f0 · x_i): the lowest frequency
        query_proj.weight[0, cos_index] = bowl
        query_proj.weight[1, cos_index] = -bowl
        query_proj.weight[4 + i, i] = _DIR_GAIN
        query_proj.weight[7 + i, i] = -_DIR_GAIN
    query_proj.bias[0] = _R0 - 3 * bowl
    query_proj.bias[1] = -(_R0 - 3 * bowl)
    query_proj.bias[2] = _ANCHOR
    query_proj.bias[3] = -_ANCHOR


def _set_radius_attention(attn: torch.nn.Module, scale: _AnalyticScale) -> None:
    """The cross-attention's head 0 computes R(x; z): a softmax over tokens of ⟨q(x/|x|), key(z_j)⟩
    averaging the tokens' radius values u_j, added to ch0 (and subtracted from ch1) by ρ."""
    # c_q: head 0's query = sharpness · LN(q)[4:7] (a direction of x).
    attn.c_q.weight.copy_(scale.small(attn.c_q.weight.shape))
    _zero_bias(attn.c_q)
    attn.c_q.weight[0:3, 4:7] = _ATTN_SHARPNESS * torch.eye(3)
    # c_kv: per head h, channels [h·2d, h·2d+d) are keys and [h·2d+d, (h+1)·2d) values.
    # Head 0: key = LN(data_j)[0:3] (a direction from the latent), value[0] = LN(data_j)[3] = u_j.
    attn.c_kv.weight.copy_(scale.small(attn.c_kv.weight.shape))
    _zero_bias(attn.c_kv)
    attn.c_kv.weight[0:3, 0:3] = _KEY_GAIN * torch.eye(3)
    attn.c_kv.weight[scale.head_dim, 3] = 1.0
    # c_proj: residual ch0 += ρ·(head-0 value 0), ch1 -= the same: f = R - c Σ(1 - cos f0·x).
    attn.c_proj.weight.copy_(scale.small(attn.c_proj.weight.shape))
    attn.c_proj.bias.zero_()
    attn.c_proj.weight[0, 0] = scale.rho
    attn.c_proj.weight[1, 0] = -scale.rho
    attn.c_proj.weight[0:2, 1:] = 0.0


def _set_small_mlp(mlp: torch.nn.Module, scale: _AnalyticScale) -> None:
    """The MLP after the cross-attention: a small random perturbation of the field."""
    mlp.c_fc.weight.copy_(scale.mixing(mlp.c_fc.weight.shape))
    mlp.c_fc.bias.zero_()
    mlp.c_proj.weight.copy_(scale.small(mlp.c_proj.weight.shape))
    mlp.c_proj.bias.zero_()


def _set_logit_readout(out: torch.nn.Linear) -> None:
    """output_proj: k · (LN(x)[0] - LN(x)[1]) / 2 = k · f / σ."""
    out.weight.zero_()
    out.bias.zero_()
    out.weight[0, 0] = _OUT_GAIN / 2
    out.weight[0, 1] = -_OUT_GAIN / 2


def build_tiny_shape_state(config: dict, seed: int) -> dict[str, torch.Tensor]:
    """Instantiate the hy3dgen modules from `config` with seeded weights; return the prefixed state dict."""
    from hy3dgen.shapegen.pipelines import instantiate_from_config

    from ..dinov2_names import to_checkpoint_names

    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dit = instantiate_from_config(config["model"])
        vae = instantiate_from_config(config["vae"])
        conditioner = instantiate_from_config(config["conditioner"])
    _set_analytic_geo_decoder(vae, generator)
    state: dict[str, torch.Tensor] = {}
    for prefix, module in (("model", dit), ("vae", vae), ("conditioner", conditioner)):
        # DINOv2 under the checkpoint's names (the real on-disk format), whatever transformers calls them.
        weights = to_checkpoint_names(module.state_dict()) if prefix == "conditioner" else module.state_dict()
        for key, value in weights.items():
            state[f"{prefix}.{key}"] = value.detach().to(torch.float16).contiguous()
    return state


def write_tiny_shape_model(
    root: str | os.PathLike,
    *,
    repo_id: str = TINY_SHAPE_REPO,
    subfolder: str = TINY_SHAPE_SUBFOLDER,
    seed: int = 0,
    guidance_embed: bool = False,
    multiview: bool = False,
    turbo: bool = False,
) -> Path:
    """Write the tiny shape checkpoint under `root` (an $HY3DGEN_MODELS folder); return its folder.

    Same arguments, same bytes. The folder appears atomically (written elsewhere, then renamed),
    so a concurrent reader never sees half a checkpoint.
    """
    from safetensors.torch import save_file

    config = tiny_shape_config(guidance_embed=guidance_embed, multiview=multiview, turbo=turbo)

    def write(staging: Path) -> None:
        (staging / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        # One metadata key: safetensors writes its metadata map in per-process hash order.
        save_file(build_tiny_shape_state(config, seed), str(staging / "model.fp16.safetensors"), metadata={"format": "pt"})

    return write_directory_atomic(Path(root) / repo_id / subfolder, write)


def folder_digest(folder: str | os.PathLike) -> str:
    """SHA-256 over the names and bytes of every file in `folder` (for same-seed-same-bytes checks)."""
    digest = hashlib.sha256()
    base = Path(folder)
    for path in sorted(p for p in base.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(base)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
