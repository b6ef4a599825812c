"""Tiny random metric models in the real on-disk formats: CLIP, the VLM judge, Inception-v3 weights.

They let the metric code run offline through the same loaders as the real models:
- CLIP: a `save_pretrained` folder of a tiny `CLIPModel` with a character-level `CLIPTokenizer`
  and a `CLIPImageProcessor`, read by `vlm3d_ttg.metrics.load_clip` like `openai/clip-vit-base-patch32`;
- judge: a tiny `Gemma3ForConditionalGeneration` (SigLIP vision tower, Gemma-3 language model)
  with a `Gemma3Processor`, a `GemmaTokenizer` carrying Gemma-3's special tokens, and a chat
  template equivalent to Gemma-3's, read by `vlm3d_ttg.metrics.load_judge`;
- Inception-v3: a state-dict file of torchvision's (fixed-size) architecture with random weights,
  read by `vlm3d_ttg.metrics.load_inception` like torchvision's ImageNet checkpoint.

Same seed, same bytes. Folders and files appear atomically (written aside, then renamed). The
numbers these models produce are meaningless; only the code paths are real.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..io import write_directory_atomic

# Gemma-3's chat template, reduced to what the judge sends (a system turn is folded into the
# first user turn as Gemma-3 does; images become <start_of_image>, which the processor expands).
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

# Characters the tiny tokenizers know as whole tokens (everything else falls back to bytes or <unk>).
_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.,:;?!'\"()-_/"


def tiny_clip_tokenizer():
    """A character-level CLIPTokenizer: CLIP's byte-level BPE with no merges over a small vocabulary."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # sorted: the library returns it in hash order
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in alphabet:
        vocab.setdefault(char, len(vocab))
    # CLIP marks the last piece of each word with '</w>'.
    for char in alphabet:
        vocab.setdefault(char + "</w>", len(vocab))
    return CLIPTokenizer(vocab=dict(sorted(vocab.items(), key=lambda kv: kv[1])), merges=[])


def write_tiny_clip(folder: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write a tiny random CLIPModel + CLIPProcessor `save_pretrained` folder; return its path."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    def write(staging: Path) -> None:
        tokenizer = tiny_clip_tokenizer()
        image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(staging)
        config = CLIPConfig(
            text_config={
                "vocab_size": len(tokenizer),
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "max_position_embeddings": 77,
                "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id,
                "pad_token_id": tokenizer.pad_token_id,
            },
            vision_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": 32,
                "patch_size": 8,
            },
            projection_dim=16,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = CLIPModel(config)
        model.save_pretrained(staging)

    return write_directory_atomic(Path(folder), write)


def tiny_gemma3_tokenizer():
    """A character-level GemmaTokenizer with Gemma-3's chat and image special tokens."""
    from tokenizers import AddedToken
    from transformers import GemmaTokenizer

    named = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    turn = ["<start_of_turn>", "<end_of_turn>"]
    image = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    vocab = {token: i for i, token in enumerate(named + turn + image)}
    for byte in range(256):  # Gemma's byte fallback
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for char in "▁\n" + _CHARS:
        vocab.setdefault(char, len(vocab))
    tokenizer = GemmaTokenizer(
        vocab=vocab,
        merges=[],
        extra_special_tokens={"boi_token": image[0], "eoi_token": image[1], "image_token": image[2]},
    )
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in turn], special_tokens=True)
    return tokenizer


def write_tiny_judge(folder: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write a tiny random Gemma-3 judge (model, processor, tokenizer, chat template) folder; return its path."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor

    image_size, patch_size, tokens_per_image = 28, 7, 4  # 4×4 patches pooled to 2×2 image tokens

    def write(staging: Path) -> None:
        tokenizer = tiny_gemma3_tokenizer()
        image_processor = Gemma3ImageProcessor(size={"height": image_size, "width": image_size})
        processor = Gemma3Processor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            chat_template=GEMMA3_CHAT_TEMPLATE,
            image_seq_length=tokens_per_image,
        )
        processor.save_pretrained(staging)
        config = Gemma3Config(
            text_config={
                "vocab_size": len(tokenizer),
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                "head_dim": 16,
                "query_pre_attn_scalar": 16,
                # One sliding and one global layer, like Gemma-3's pattern; the window is shorter than the
                # judge's prompt so both attention kinds matter, and the global layer lets images reach the answer.
                "sliding_window": 64,
                "layer_types": ["sliding_attention", "full_attention"],
                "max_position_embeddings": 2048,
                "pad_token_id": tokenizer.pad_token_id,
                "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id,
            },
            vision_config={
                "model_type": "siglip_vision_model",
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "image_size": image_size,
                "patch_size": patch_size,
            },
            mm_tokens_per_image=tokens_per_image,
            boi_token_index=tokenizer.boi_token_id,
            eoi_token_index=tokenizer.eoi_token_id,
            image_token_index=tokenizer.image_token_id,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Gemma3ForConditionalGeneration(config)
            # The projector starts at zero (Gemma-3's init); random weights let images reach the logits.
            projector = model.model.multi_modal_projector.mm_input_projection_weight
            with torch.no_grad():
                projector.normal_(0.0, 0.5)
        model.save_pretrained(staging)

    return write_directory_atomic(Path(folder), write)


def write_random_inception_weights(path: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write a state dict of torchvision's Inception-v3 with random weights (safetensors); return its path.

    The architecture has a fixed size (~24M parameters, ~100 MB), so "tiny" here means random,
    not small.
    """
    from safetensors.torch import save_file
    from torchvision.models import inception_v3

    from ..io import atomic_path

    target = Path(path)
    if target.is_file():
        return target
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = inception_v3(weights=None, aux_logits=True, init_weights=False)
        # PyTorch's default conv init shrinks activations ~1.7× per layer, leaving pool3 features
        # near 1e-8 after Inception's depth; He init keeps them O(1) so they carry signal.
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
    state = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    with atomic_path(target) as tmp:
        # One metadata key only: safetensors writes metadata in hash-map order, so two keys would
        # make the bytes differ from run to run.
        save_file(state, str(tmp), metadata={"format": "pt"})
    return target


def ensure_tiny_metric_models(cache_dir: str | os.PathLike, *, seed: int = 0) -> dict[str, Path]:
    """Write (if missing) the tiny CLIP, judge and random Inception weights under `cache_dir`; return their paths."""
    root = Path(cache_dir)
    return {
        "clip": write_tiny_clip(root / "clip", seed=seed),
        "judge": write_tiny_judge(root / "judge", seed=seed),
        "inception": write_random_inception_weights(root / "inception_v3_random.safetensors", seed=seed),
    }
