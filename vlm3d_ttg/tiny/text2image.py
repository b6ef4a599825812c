"""Tiny offline stand-ins for text-to-3D's front end, in the real on-disk formats.

- A tiny HunyuanDiT text-to-image pipeline: a diffusers `save_pretrained` folder with the same
  components as `Tencent-Hunyuan/HunyuanDiT-v1.1-Diffusers-Distilled` (BERT + T5 text encoders and
  tokenizers, a `HunyuanDiT2DModel`, an `AutoencoderKL`, a DDPM scheduler), small and random. It is
  loaded and run by `vlm3d_ttg.text2image.TextToImage` with hy3dgen's HunyuanDiT recipe (diffusers'
  `AutoPipelineForText2Image` with PAG on blocks 16-19, 1024²), exactly as the real model is, except
  for fewer steps. It has 20 DiT blocks so hy3dgen's PAG layers
  exist, patches of 8 latent pixels (16×16 tokens at 1024²) and no attention in its VAE, so 1024² stays
  cheap on a CPU.
- A tiny background-removal model: an ONNX file with the signature of rembg's default session (u2net,
  or bria-rmbg since rembg 2.0.7x: one image in, saliency maps out), placed where rembg looks for it,
  so hy3dgen's `BackgroundRemover` (rembg + onnxruntime) runs unchanged. rembg's real models (176 MB and
  more) are downloaded on first use and cannot exist offline. The tiny one is not trained: its
  saliency map is a fixed centred ellipse plus a small input-dependent term, i.e. it always "finds" an
  object in the middle of the picture. That is the only thing it fakes; the code that reads the model,
  normalises its output, cuts the background out and checks the result is the real one.

Same seed, same bytes. Folders appear atomically (written aside, then renamed). The images these
models make are meaningless; only the code paths are real.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_path, write_directory_atomic

# The fixed input size each rembg session resizes to (its `predict`), for the sessions that can be
# rembg's default (u2net up to rembg 2.0.6x, bria-rmbg since).
REMOVER_INPUT_SIZES = {"u2net": 320, "u2netp": 320, "silueta": 320, "bria-rmbg": 1024}

_WORD_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


def write_tiny_hunyuan_dit(folder: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write a tiny random HunyuanDiT diffusers pipeline folder (model_index.json and components); return its path."""
    from diffusers import AutoencoderKL, DDPMScheduler, HunyuanDiT2DModel, HunyuanDiTPipeline
    from transformers import BertConfig, BertModel, BertTokenizer, T5Config, T5EncoderModel, T5Tokenizer

    def write(staging: Path) -> None:
        bert_vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_WORD_CHARS])}
        tokenizer = BertTokenizer(vocab=bert_vocab)
        # T5's sentencepiece vocabulary as a Unigram list: <pad>, </s>, <unk> first (T5's ids 0, 1, 2).
        t5_vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
        t5_vocab += [(char, -3.0) for char in _WORD_CHARS] + [("▁" + char, -4.0) for char in _WORD_CHARS]
        tokenizer_2 = T5Tokenizer(vocab=t5_vocab, extra_ids=0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            text_encoder = BertModel(BertConfig(
                vocab_size=len(bert_vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=128))
            text_encoder_2 = T5EncoderModel(T5Config(
                vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2))
            transformer = HunyuanDiT2DModel(
                num_attention_heads=2, attention_head_dim=8, in_channels=4, patch_size=8, hidden_size=16,
                num_layers=20, cross_attention_dim=32, cross_attention_dim_t5=32, pooled_projection_dim=16,
                text_len=77, text_len_t5=256, sample_size=128)
            vae = AutoencoderKL(
                in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4,
                block_out_channels=(4, 4, 4, 4), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, sample_size=1024, mid_block_add_attention=False)
        pipeline = HunyuanDiTPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
            scheduler=DDPMScheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)
        pipeline.save_pretrained(staging)

    return write_directory_atomic(Path(folder), write)


# ---------------------------------------------------------------------------------------------
# A minimal ONNX writer: ONNX files are protobuf messages, and the `onnx` package (which would write
# them) is not a dependency. Field numbers are those of onnx.proto (ModelProto, GraphProto, ...).


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _field_int(number: int, value: int) -> bytes:
    return _varint(number << 3 | 0) + _varint(value)


def _string(number: int, text: str) -> bytes:
    return _field_bytes(number, text.encode("utf-8"))


_FLOAT = 1  # TensorProto.FLOAT


def _tensor(name: str, array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype="<f4")
    dims = b"".join(_field_int(1, d) for d in array.shape)
    return dims + _field_int(2, _FLOAT) + _string(8, name) + _field_bytes(9, array.tobytes())


def _value_info(name: str, shape: tuple[int, ...]) -> bytes:
    dims = b"".join(_field_bytes(1, _field_int(1, d)) for d in shape)
    tensor_type = _field_int(1, _FLOAT) + _field_bytes(2, dims)
    return _string(1, name) + _field_bytes(2, _field_bytes(1, tensor_type))


def _node(op_type: str, inputs: list[str], outputs: list[str]) -> bytes:
    return (b"".join(_string(1, i) for i in inputs) + b"".join(_string(2, o) for o in outputs)
            + _string(3, outputs[0]) + _string(4, op_type))


def tiny_saliency_onnx(size: int, *, seed: int = 0) -> bytes:
    """An ONNX model with u2net's signature: input.1 (1, 3, size, size) → d0 (1, 3, size, size) in (0, 1).

    d0 = sigmoid(prior + w · x), prior a centred ellipse (≈ +6 inside, −6 outside), w small random
    per-channel weights; rembg reads channel 0 of the first output as the saliency map.
    """
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    inside = 1.0 - (xx / 0.55) ** 2 - (yy / 0.7) ** 2
    prior = np.clip(12.0 * inside, -6.0, 6.0)[None, None].astype(np.float32)
    weights = np.random.default_rng(seed).normal(0.0, 0.1, size=(1, 3, 1, 1)).astype(np.float32)
    graph = (
        _field_bytes(1, _node("Mul", ["input.1", "w"], ["weighted"]))
        + _field_bytes(1, _node("Add", ["weighted", "prior"], ["logits"]))
        + _field_bytes(1, _node("Sigmoid", ["logits"], ["d0"]))
        + _string(2, "tiny_u2net")
        + _field_bytes(5, _tensor("w", weights))
        + _field_bytes(5, _tensor("prior", prior))
        + _field_bytes(11, _value_info("input.1", (1, 3, size, size)))
        + _field_bytes(12, _value_info("d0", (1, 3, size, size)))
    )
    opset = _string(1, "") + _field_int(2, 13)
    return _field_int(1, 8) + _string(2, "vlm3d-ttg tiny") + _field_bytes(7, graph) + _field_bytes(8, opset)


def write_tiny_background_remover(rembg_home: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write a tiny model for rembg's default session as `<rembg_home>/<name>.onnx` (found there when
    rembg's U2NET_HOME is `rembg_home`); return its path."""
    from ..inputs import default_background_removal_session

    default = default_background_removal_session()
    if default is None or default[0] not in REMOVER_INPUT_SIZES:
        raise RuntimeError(f"No tiny stand-in for rembg's default background-removal session {default and default[0]!r}; "
                           f"known: {sorted(REMOVER_INPUT_SIZES)}")
    name = default[0]
    target = Path(rembg_home) / f"{name}.onnx"
    if target.is_file():
        return target
    with atomic_path(target) as tmp:
        tmp.write_bytes(tiny_saliency_onnx(REMOVER_INPUT_SIZES[name], seed=seed))
    return target


__all__ = ["REMOVER_INPUT_SIZES", "tiny_saliency_onnx", "write_tiny_background_remover", "write_tiny_hunyuan_dit"]
