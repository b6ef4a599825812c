"""The `realsize` preset: random-weight checkpoints with the REAL models' shapes, in their real formats.

Every dimension equals the real checkpoint's except depth (the number of blocks/layers of each kind,
a parameter): Hunyuan3D-2's `hunyuan3d-dit-v2-0` (DiT, ShapeVAE with its geo-decoder, DINOv2-giant
conditioner, scheduler, image processor) and Qwen2.5-VL-7B-Instruct (vision tower with window and
full attention, language model, processor constants, tokenizer special ids). The numbers and where
they come from are in the constants below; docs/realsize.md lists them.

What is NOT real: the weights (random, seeded; the ShapeVAE geo-decoder gets tiny.hunyuan's
analytic closed-surface construction, rescaled to width 1024, so the decoded surface is one closed
blob whose shape follows the latent instead of noise or nothing), the depth, and the tokenizer's
merges (a byte-level BPE learned here like the tiny one; its special and added tokens sit at the
real ids 151643–151664, the ids in between are filler entries no text can produce).

Written once per depth to `<cache>/realsize-<version>/depth-<d>/` ($VLM3D_TTG_CACHE, default
~/.cache/vlm3d-ttg), in half precision on disk like the real checkpoints (fp16 shape model, bf16
critic), and loaded through exactly the real loaders (`load_shape_pipeline`, `load_vlm`).
At depth 1 the critic is ~1.4 B parameters (2.8 GB): the untied 152064 × 3584 embedding and
lm_head are 1.1 B of them whatever the depth. At full depth (gpu_check) the models are built
directly in GPU memory from the same configs instead (`build_realsize_pipeline`, `build_realsize_vlm`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from ..io import write_directory_atomic
from ..sizes import HUNYUAN3D_2, QWEN2_5_VL_7B

logger = logging.getLogger(__name__)

# Bump when the realsize models change, so a stale cache is never loaded.
REALSIZE_VERSION = "v2"
REALSIZE_SHAPE_REPO = "vlm3d-ttg/realsize-Hunyuan3D-2"
REALSIZE_SHAPE_SUBFOLDER = "hunyuan3d-dit-v2-0"
DEFAULT_REALSIZE_DEPTH = 1

# ---- Hunyuan3D-2, hunyuan3d-dit-v2-0/config.yaml (tencent/Hunyuan3D-2 on the hub; public mirrors of
# the file, e.g. ComfyUI's Hunyuan3Dv2 and sglang's Hunyuan3DDiTArchConfig defaults, agree). The sizes
# are `sizes.HUNYUAN3D_2`'s (written once, also read by the cost model and the preflight); the rest
# of each config is the file's. Depth entries: the real value, replaced by `depth`.
_SHAPE = HUNYUAN3D_2
REAL_DIT = dict(in_channels=_SHAPE.latent_channels, context_in_dim=_SHAPE.condition_dim, hidden_size=_SHAPE.dit_hidden,
                mlp_ratio=_SHAPE.dit_mlp_ratio, num_heads=_SHAPE.dit_heads, depth=_SHAPE.dit_double_blocks,
                depth_single_blocks=_SHAPE.dit_single_blocks, axes_dim=[64], theta=10000, qkv_bias=True,
                guidance_embed=False)
REAL_VAE = dict(num_latents=_SHAPE.latent_tokens, embed_dim=_SHAPE.latent_channels, num_freqs=8, include_pi=False,
                heads=_SHAPE.vae_heads, width=_SHAPE.vae_width, num_decoder_layers=_SHAPE.vae_layers, qkv_bias=False,
                qk_norm=True, scale_factor=0.9990943042622529)
# The conditioner: DINOv2-giant (facebook/dinov2-giant's config, as embedded in the same config.yaml).
REAL_DINO = dict(attention_probs_dropout_prob=0.0, drop_path_rate=0.0, hidden_act="gelu", hidden_dropout_prob=0.0,
                 hidden_size=_SHAPE.condition_dim, image_size=_SHAPE.conditioner_image_size, initializer_range=0.02,
                 layer_norm_eps=1e-6, layerscale_value=1.0, mlp_ratio=4, model_type="dinov2", num_attention_heads=24,
                 num_channels=3, num_hidden_layers=_SHAPE.conditioner_layers, patch_size=14, qkv_bias=True,
                 use_swiglu_ffn=True)
REAL_DINO_IMAGE_SIZE = _SHAPE.conditioner_image_size  # 37 × 37 patches + CLS = 1370 context tokens
REAL_PREPROCESS = dict(size=512, border_ratio=0.15)  # ImageProcessorV2
REAL_SCHEDULER_TIMESTEPS = 1000  # FlowMatchEulerDiscreteScheduler

# ---- Qwen2.5-VL-7B-Instruct, config.json (Qwen/Qwen2.5-VL-7B-Instruct on the hub; the printed module
# tree of the real model — Linear(1280, 3840) qkv, Linear(1280, 3420) MLP, merger 5120 → 3584,
# Embedding(152064, 3584), q/k/v 3584/512/512 — confirms the sizes).
# The sizes: `sizes.QWEN2_5_VL_7B`'s.
_CRITIC = QWEN2_5_VL_7B
REAL_VISION = dict(depth=_CRITIC.vision_layers, hidden_size=_CRITIC.vision_hidden, intermediate_size=_CRITIC.vision_mlp,
                   num_heads=16, in_channels=3, out_hidden_size=_CRITIC.llm_hidden, patch_size=14, spatial_merge_size=2,
                   temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2,
                   hidden_act="silu")
REAL_TEXT = dict(hidden_size=_CRITIC.llm_hidden, intermediate_size=_CRITIC.llm_mlp, num_hidden_layers=_CRITIC.llm_layers,
                 num_attention_heads=_CRITIC.llm_heads, num_key_value_heads=_CRITIC.llm_kv_heads,
                 max_position_embeddings=128000, rms_norm_eps=1e-6, hidden_act="silu",
                 max_window_layers=_CRITIC.llm_layers, sliding_window=32768, use_sliding_window=False,
                 vocab_size=_CRITIC.vocab,
                 rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]})
REAL_TOKEN_IDS = dict(bos_token_id=151643, eos_token_id=151645, vision_start_token_id=151652,
                      vision_end_token_id=151653, vision_token_id=151654, image_token_id=151655, video_token_id=151656)
REAL_FIRST_SPECIAL_ID = 151643  # <|endoftext|>: the regular BPE vocabulary is ids 0..151642
REAL_INITIALIZER_RANGE = 0.02
# preprocessor_config.json: Qwen2VLImageProcessor, CLIP mean/std (its defaults), these pixel bounds.
REAL_MIN_PIXELS = 3136
REAL_MAX_PIXELS = 12845056


def realsize_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Root of the realsize checkpoints: `cache_dir`, else $VLM3D_TTG_CACHE, else ~/.cache/vlm3d-ttg."""
    from ..presets import cache_root

    return cache_root(cache_dir) / f"realsize-{REALSIZE_VERSION}"


def _check_depth(depth: int) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        from ..errors import InvalidInputError

        raise InvalidInputError(f"realsize depth must be an integer ≥ 1, got {depth!r}")
    return depth


# ---------------------------------------------------------------------------------------------
# Hunyuan3D-2


def realsize_shape_config(depth: int = DEFAULT_REALSIZE_DEPTH) -> dict:
    """hunyuan3d-dit-v2-0's config.yaml with `depth` double blocks, single blocks, VAE layers and DINOv2 layers.

    `depth=None`-like full size: pass the real counts through `full_depth_shape_config()`.
    """
    _check_depth(depth)
    return _shape_config(dit_double=depth, dit_single=depth, vae_layers=depth, dino_layers=depth)


def full_depth_shape_config() -> dict:
    """The real hunyuan3d-dit-v2-0 config.yaml content, every depth included."""
    return _shape_config(dit_double=REAL_DIT["depth"], dit_single=REAL_DIT["depth_single_blocks"],
                         vae_layers=REAL_VAE["num_decoder_layers"], dino_layers=REAL_DINO["num_hidden_layers"])


def _shape_config(*, dit_double: int, dit_single: int, vae_layers: int, dino_layers: int) -> dict:
    dit = dict(REAL_DIT, depth=dit_double, depth_single_blocks=dit_single)
    vae = dict(REAL_VAE, num_decoder_layers=vae_layers)
    dino = dict(REAL_DINO, num_hidden_layers=dino_layers)
    return {
        "model": {"target": "hy3dgen.shapegen.models.Hunyuan3DDiT", "params": dit},
        "vae": {"target": "hy3dgen.shapegen.models.ShapeVAE", "params": vae},
        "conditioner": {
            "target": "hy3dgen.shapegen.models.SingleImageEncoder",
            "params": {"main_image_encoder": {"type": "DinoImageEncoder", "kwargs": {
                "config": dino, "image_size": REAL_DINO_IMAGE_SIZE, "use_cls_token": True}}},
        },
        "scheduler": {"target": "hy3dgen.shapegen.schedulers.FlowMatchEulerDiscreteScheduler",
                      "params": {"num_train_timesteps": REAL_SCHEDULER_TIMESTEPS}},
        "image_processor": {"target": "hy3dgen.shapegen.preprocessors.ImageProcessorV2", "params": dict(REAL_PREPROCESS)},
    }


@dataclass(frozen=True)
class RealsizeShapeModel:
    """Where a realsize shape checkpoint lives, in the terms `load_shape_pipeline` takes."""

    models_dir: Path  # the $HY3DGEN_MODELS root
    repo_id: str
    subfolder: str
    depth: int


def ensure_realsize_shape_model(cache_dir: str | os.PathLike | None = None, *, depth: int = DEFAULT_REALSIZE_DEPTH,
                                seed: int = 0) -> RealsizeShapeModel:
    """Write the realsize Hunyuan3D-2 checkpoint at `depth` once (if missing) and say where it is."""
    from safetensors.torch import save_file

    from .hunyuan import build_tiny_shape_state

    _check_depth(depth)
    root = realsize_cache_dir(cache_dir) / f"depth-{depth}" / "hy3dgen"
    config = realsize_shape_config(depth)

    def write(staging: Path) -> None:
        (staging / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        # hy3dgen's own modules with seeded random weights and the analytic geo-decoder, in fp16
        # like the real model.fp16.safetensors.
        save_file(build_tiny_shape_state(config, seed), str(staging / "model.fp16.safetensors"), metadata={"format": "pt"})
        logger.info("Wrote the realsize Hunyuan3D-2 (depth %d, seed %d) to %s", depth, seed, staging)

    write_directory_atomic(root / REALSIZE_SHAPE_REPO / REALSIZE_SHAPE_SUBFOLDER, write)
    return RealsizeShapeModel(root, REALSIZE_SHAPE_REPO, REALSIZE_SHAPE_SUBFOLDER, depth)


def build_realsize_pipeline(depth: int | None = None, *, device: str | torch.device = "cpu",
                            dtype: torch.dtype = torch.float16, seed: int = 0) -> Any:
    """A `Hunyuan3DDiTFlowMatchingPipeline` of the realsize config built directly on `device` (no checkpoint).

    `depth=None` is the real depth (16 + 32 DiT blocks, 16 VAE layers, 40 DINOv2 layers). For the GPU
    check: writing ~5 GB of random weights only to read them back would measure the disk, not the
    models; the loaders are exercised at small depth by `ensure_realsize_shape_model`.
    """
    from hy3dgen.shapegen.pipelines import Hunyuan3DDiTFlowMatchingPipeline, instantiate_from_config

    from ..backbones.hunyuan3d2_models import ShapeVariant
    from ..models import freeze

    config = full_depth_shape_config() if depth is None else realsize_shape_config(depth)
    torch_device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(torch_device):  # default initialisation on the GPU: seconds, not minutes
            dit = instantiate_from_config(config["model"])
            conditioner = instantiate_from_config(config["conditioner"])
    vae = build_realsize_vae(depth, seed=seed)
    scheduler = instantiate_from_config(config["scheduler"])
    image_processor = instantiate_from_config(config["image_processor"])
    pipeline = Hunyuan3DDiTFlowMatchingPipeline(vae=vae, model=dit, scheduler=scheduler, conditioner=conditioner,
                                                image_processor=image_processor, device=str(torch_device), dtype=dtype)
    pipeline.to(str(torch_device), dtype)
    pipeline.variant_spec = ShapeVariant(REALSIZE_SHAPE_REPO, REALSIZE_SHAPE_SUBFOLDER)
    freeze(pipeline.model, pipeline.vae, pipeline.conditioner)
    return pipeline


def build_realsize_vae(depth: int | None = None, *, seed: int = 0) -> torch.nn.Module:
    """The realsize ShapeVAE (float32, CPU) with seeded random weights and the analytic closed-surface geo-decoder.

    Built on the CPU even for a GPU run (0.2 B parameters at full depth): the analytic decoder is
    written with a CPU generator, exactly as in the checkpoint writer.
    """
    from hy3dgen.shapegen.pipelines import instantiate_from_config

    from .hunyuan import _set_analytic_geo_decoder

    config = full_depth_shape_config() if depth is None else realsize_shape_config(depth)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = instantiate_from_config(config["vae"])
    _set_analytic_geo_decoder(vae, torch.Generator().manual_seed(seed))
    return vae


# ---------------------------------------------------------------------------------------------
# Qwen2.5-VL-7B-Instruct


def realsize_vision_config(depth: int | None) -> dict:
    """The vision tower's config with `depth` window-attention blocks AND `depth` full-attention blocks.

    The real tower has 28 window blocks (window 112 px = 8 × 8 patches) and 4 full-attention blocks
    (indices 7, 15, 23, 31: each closes a run of 7 window blocks). At `depth` d the tower keeps both
    kinds: 2d blocks, alternating window, full (indices 1, 3, ...), so per-block costs of either kind
    can be measured and extrapolated to 28 + 4. `None`: the real 32 blocks.
    """
    if depth is None:
        return dict(REAL_VISION)
    _check_depth(depth)
    return dict(REAL_VISION, depth=2 * depth, fullatt_block_indexes=[2 * k + 1 for k in range(depth)])


def build_realsize_tokenizer() -> Any:
    """A byte-level BPE `Qwen2Tokenizer` whose special and added tokens have the real ids (151643–151664).

    Merges as the tiny tokenizer's ("Yes"/"No" single tokens); ids from there up to 151642 are
    filler entries that no merge produces, so no text ever maps to them.
    """
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    from ..critic.tokens import QWEN_ADDED_TOKENS, QWEN_SPECIAL_TOKENS
    from .qwen import QWEN2_5_VL_CHAT_TEMPLATE, _NUM_MERGES, _bytes_to_unicode, _learn_merges

    byte_chars = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for byte in sorted(byte_chars, key=lambda b: ord(byte_chars[b])):
        vocab[byte_chars[byte]] = len(vocab)
    merges = _learn_merges(_NUM_MERGES)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    filler = 0
    while len(vocab) < REAL_FIRST_SPECIAL_ID:
        vocab[f"<|realsize_filler_{filler}|>"] = len(vocab)
        filler += 1
    for token in QWEN_SPECIAL_TOKENS + QWEN_ADDED_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=list(merges), unk_token=None, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>", errors="replace", model_max_length=131072,
                               clean_up_tokenization_spaces=False, split_special_tokens=False)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS], special_tokens=True)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN_ADDED_TOKENS])
    tokenizer.chat_template = QWEN2_5_VL_CHAT_TEMPLATE
    expected = {"<|endoftext|>": REAL_TOKEN_IDS["bos_token_id"], "<|im_end|>": REAL_TOKEN_IDS["eos_token_id"],
                "<|vision_start|>": REAL_TOKEN_IDS["vision_start_token_id"],
                "<|vision_end|>": REAL_TOKEN_IDS["vision_end_token_id"], "<|vision_pad|>": REAL_TOKEN_IDS["vision_token_id"],
                "<|image_pad|>": REAL_TOKEN_IDS["image_token_id"], "<|video_pad|>": REAL_TOKEN_IDS["video_token_id"]}
    for token, token_id in expected.items():
        if tokenizer.convert_tokens_to_ids(token) != token_id:
            raise RuntimeError(f"realsize tokenizer: {token} has id {tokenizer.convert_tokens_to_ids(token)}, not {token_id}")
    return tokenizer


def build_realsize_processor(tokenizer: Any | None = None) -> Any:
    """The real `Qwen2_5_VLProcessor` with Qwen2.5-VL-7B-Instruct's preprocessing constants."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    from .qwen import QWEN2_5_VL_CHAT_TEMPLATE

    tokenizer = tokenizer if tokenizer is not None else build_realsize_tokenizer()
    size = {"shortest_edge": REAL_MIN_PIXELS, "longest_edge": REAL_MAX_PIXELS}
    kwargs = dict(size=size, patch_size=REAL_VISION["patch_size"], temporal_patch_size=REAL_VISION["temporal_patch_size"],
                  merge_size=REAL_VISION["spatial_merge_size"])
    return Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**kwargs), tokenizer=tokenizer,
                               video_processor=Qwen2VLVideoProcessor(**kwargs), chat_template=QWEN2_5_VL_CHAT_TEMPLATE)


def realsize_vlm_config(depth: int | None = DEFAULT_REALSIZE_DEPTH) -> Any:
    """Qwen2.5-VL-7B-Instruct's `Qwen2_5_VLConfig` with `depth` LM layers and 2·`depth` vision blocks (None: real)."""
    from transformers import Qwen2_5_VLConfig

    text = dict(REAL_TEXT, initializer_range=REAL_INITIALIZER_RANGE,
                bos_token_id=REAL_TOKEN_IDS["bos_token_id"], eos_token_id=REAL_TOKEN_IDS["eos_token_id"],
                pad_token_id=REAL_TOKEN_IDS["bos_token_id"])
    if depth is not None:
        text.update(num_hidden_layers=_check_depth(depth), max_window_layers=depth)
    vision = dict(realsize_vision_config(depth), initializer_range=REAL_INITIALIZER_RANGE)
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False,
                            **{k: v for k, v in REAL_TOKEN_IDS.items() if k not in ("bos_token_id", "eos_token_id")})


def _fill_random_(model: torch.nn.Module, seed: int) -> None:
    """Random weights in place: N(0, 0.02²) matrices (the real initializer_range), unit norms, zero biases.

    On the CPU, drawing 1.4 B Gaussians takes ~30 s on two cores; there each matrix row is a
    window of one seeded Gaussian sequence at offset 3·row (windows of white noise at different
    offsets are uncorrelated), so the cost is one copy. On a GPU they are drawn directly.
    Same seed and device, same weights.
    """
    with torch.no_grad():
        for index, (name, param) in enumerate(model.named_parameters()):
            if name.endswith("bias"):
                param.zero_()
            elif param.dim() == 1:  # RMSNorm / LayerNorm scales
                param.fill_(1.0)
            elif param.device.type != "cpu":
                generator = torch.Generator(device=param.device).manual_seed(seed * 100003 + index)
                param.normal_(0.0, REAL_INITIALIZER_RANGE, generator=generator)
            else:
                generator = torch.Generator().manual_seed(seed * 100003 + index)
                rows, cols = param.shape[0], param[0].numel()
                stride = 3
                pool = torch.empty(stride * (rows - 1) + cols).normal_(0.0, REAL_INITIALIZER_RANGE, generator=generator)
                param.copy_(pool.to(param.dtype).as_strided((rows, cols), (stride, 1)).view(param.shape))


def build_realsize_vlm(depth: int | None = DEFAULT_REALSIZE_DEPTH, *, seed: int = 0, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.bfloat16) -> tuple[Any, Any]:
    """The realsize (model, processor) in memory on `device` in `dtype`; `depth=None` is the real 28 + 32 layers.

    The model is allocated without transformers' default initialisation (minutes for 8 B parameters
    on a CPU) and filled by `_fill_random_`.
    """
    from transformers import Qwen2_5_VLForConditionalGeneration

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers
        from transformers.modeling_utils import no_init_weights

    processor = build_realsize_processor()
    config = realsize_vlm_config(depth)
    with no_init_weights(), torch.device(torch.device(device)):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    _fill_random_(model, seed)
    model.eval()
    return model, processor


def ensure_realsize_vlm(cache_dir: str | os.PathLike | None = None, *, depth: int = DEFAULT_REALSIZE_DEPTH, seed: int = 0) -> Path:
    """Write the realsize Qwen2.5-VL `save_pretrained` folder at `depth` once (if missing); return its path.

    bf16 safetensors like the real checkpoint (~2.8 GB at depth 1, 0.5 GB more per layer).
    """
    _check_depth(depth)
    folder = realsize_cache_dir(cache_dir) / f"depth-{depth}" / "qwen2_5_vl"

    def write(staging: Path) -> None:
        model, processor = build_realsize_vlm(depth, seed=seed)
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        logger.info("Wrote the realsize Qwen2.5-VL (depth %d, seed %d) to %s", depth, seed, staging)

    return write_directory_atomic(folder, write)


def _register() -> None:
    """Register the realsize preset's checkpoint writers (`presets.offline_checkpoints("realsize")`)."""
    from ..presets import OfflineCheckpoints, register_offline_checkpoints

    register_offline_checkpoints("realsize", OfflineCheckpoints(
        folder=realsize_cache_dir,
        shape=lambda cache_dir, *, subfolder, depth: ensure_realsize_shape_model(cache_dir, depth=depth),
        critic=lambda cache_dir, *, family, depth: ensure_realsize_vlm(cache_dir, depth=depth),
    ))


_register()

__all__ = [
    "DEFAULT_REALSIZE_DEPTH",
    "REALSIZE_SHAPE_REPO",
    "REALSIZE_SHAPE_SUBFOLDER",
    "RealsizeShapeModel",
    "build_realsize_pipeline",
    "build_realsize_processor",
    "build_realsize_tokenizer",
    "build_realsize_vae",
    "build_realsize_vlm",
    "ensure_realsize_shape_model",
    "ensure_realsize_vlm",
    "full_depth_shape_config",
    "realsize_cache_dir",
    "realsize_shape_config",
    "realsize_vision_config",
    "realsize_vlm_config",
]
