"""A tiny Qwen2.5-VL checkpoint in transformers' real `save_pretrained` format.

Everything is the real thing except the sizes and the weights:
- `Qwen2_5_VLForConditionalGeneration` with a tiny `Qwen2_5_VLConfig` (2 vision blocks with window
  and full attention, patch 14, spatial merge 2, temporal patch 2; 2 decoder layers with grouped
  KV heads and 3-D multimodal RoPE); random weights from a fixed seed.
- A byte-level BPE tokenizer (`Qwen2Tokenizer`, Qwen's pre-tokenizer regex) whose merges are
  learned here, deterministically, from the critic's queries and chat words, so prompts are short
  and "Yes"/"No" are single tokens as in the real vocabulary. Qwen's special tokens follow the
  regular vocabulary in Qwen's order (<|endoftext|>, <|im_start|>, <|im_end|>, ..., <|vision_start|>,
  <|vision_end|>, <|vision_pad|>, <|image_pad|>, <|video_pad|>); the config's token ids point at them.
- A chat template producing Qwen2.5-VL's prompt format (default system prompt "You are a helpful
  assistant.", images as <|vision_start|><|image_pad|><|vision_end|>), written for this project.
- The real `Qwen2_5_VLProcessor` with the real `Qwen2VLImageProcessor` (torchvision backend) and
  `Qwen2VLVideoProcessor`, using the 7B's preprocessing constants except a smaller `max_pixels`
  so that "huge image" code paths can be exercised with small test images.

The answers such a model gives are meaningless; it exists to run the real code paths offline.
"""

from __future__ import annotations

import collections
import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..critic.families import register_offline_writer
from ..critic.tokens import QWEN_ADDED_TOKENS, QWEN_SPECIAL_TOKENS
from ..io import write_directory_atomic

logger = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

def qwen_chat_template(default_system_prompt: str | None) -> str:
    """A Qwen-VL chat template, written for this project: `default_system_prompt` as a system turn when the
    conversation does not start with one (None: no default turn, as Qwen3-VL); each image as
    <|vision_start|><|image_pad|><|vision_end|> (optionally preceded by "Picture k: " with
    add_vision_id), each video likewise with <|video_pad|>; turns closed by <|im_end|> and a newline;
    the generation prompt opens the assistant turn. No whitespace control: every newline in the
    template is part of the prompt (transformers renders templates with trim_blocks, which only drops
    a newline right after a tag; there is none here)."""
    default_turn = (
        "{% if loop.first and message.role != 'system' %}"
        "<|im_start|>system\n" + default_system_prompt + "<|im_end|>\n"
        "{% endif %}"
    ) if default_system_prompt is not None else ""
    return (
        "{% set counts = namespace(image=0, video=0) %}"
        "{% for message in messages %}"
        + default_turn
        + "<|im_start|>{{ message.role }}\n"
        "{% if message.content is string %}"
        "{{ message.content }}"
        "{% else %}"
        "{% for part in message.content %}"
        "{% if part.type == 'image' or 'image' in part or 'image_url' in part %}"
        "{% set counts.image = counts.image + 1 %}"
        "{% if add_vision_id %}Picture {{ counts.image }}: {% endif %}"
        "<|vision_start|><|image_pad|><|vision_end|>"
        "{% elif part.type == 'video' or 'video' in part %}"
        "{% set counts.video = counts.video + 1 %}"
        "{% if add_vision_id %}Video {{ counts.video }}: {% endif %}"
        "<|vision_start|><|video_pad|><|vision_end|>"
        "{% elif 'text' in part %}"
        "{{ part.text }}"
        "{% endif %}"
        "{% endfor %}"
        "{% endif %}"
        "<|im_end|>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}"
        "<|im_start|>assistant\n"
        "{% endif %}"
    )


#: Qwen2.5-VL's chat format: a default system turn "You are a helpful assistant.".
QWEN2_5_VL_CHAT_TEMPLATE = qwen_chat_template(DEFAULT_SYSTEM_PROMPT)

# Preprocessing constants of Qwen2.5-VL-7B-Instruct, except max_pixels (real: 12845056): 1024 merged
# tokens per image keeps 4 x 448^2 views unresized while a ~1 Mpx test image is already "huge".
TINY_MIN_PIXELS = 56 * 56
TINY_MAX_PIXELS = 28 * 28 * 1024

# Sizes: a forward + backward over 4 x 448^2 views runs in about a second on 2 CPU cores, while
# every reshape of the real model is exercised (several heads, grouped KV, windows + full attention).
_VISION = dict(
    depth=2,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    in_channels=3,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    tokens_per_second=2,
    window_size=56,  # 2 x 2 merged tokens per window, so 448^2 images have many windows
    fullatt_block_indexes=[1],
)
_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    rms_norm_eps=1e-6,
    # head_dim 16 -> 8 rotary frequencies split over (t, h, w) like the real [16, 24, 24] of 64.
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
)
_INITIALIZER_RANGE = 0.05  # larger than the real 0.02 so that r reacts visibly to the pixels
_NUM_MERGES = 600


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map that byte-level BPE vocabularies use."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(code) for byte, code in zip(printable, chars)}


# Text the merges are learned from: the wording of the critic's questions and of the chat frame.
# Kept here (not imported from the critic) so that editing a query never changes the tiny bytes.
_CORPUS_TEXT = (
    "Carefully evaluate the provided images, which show multiple views of a single 3D object. "
    "Does the underlying 3D object, considering all views together, meet all of the following "
    "criteria simultaneously? 1. Content Match: The object corresponds to the description. "
    "2. Geometric Quality: Based on all views combined, the object appears geometrically sound and "
    "consistent. There are no visible signs of major flaws such as multiple faces on one part "
    "(Janus-faced issue), broken surfaces, intersecting geometry, or highly unrealistic polygonal "
    "facets when considering the object from these different perspectives. "
    "Strictly respond with only 'Yes' or 'No'. "
    "a chair, a table, a car, a lamp, a mug, a cat, a dog, an airplane, a wooden chair with four legs."
)


def _tokenizer_corpus() -> list[tuple[str, int]]:
    """Texts the merges are learned from, with weights."""
    return [
        (_CORPUS_TEXT, 4),
        ("system\nuser\nassistant\n" + DEFAULT_SYSTEM_PROMPT, 8),
        ("Picture Video", 2),
        # The answers must be single tokens (no leading space: they follow "assistant\n").
        ("Yes\nNo\n", 1000),
    ]


def _learn_merges(num_merges: int, extra_corpus: tuple[tuple[str, int], ...] = ()) -> list[tuple[str, str]]:
    """Byte-level BPE merges learned from `_tokenizer_corpus` (plus `extra_corpus`); ties broken by the pair
    itself, so deterministic."""
    from tokenizers import Regex, pre_tokenizers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    word_counts: collections.Counter[str] = collections.Counter()
    for text, weight in _tokenizer_corpus() + list(extra_corpus):
        for word, _ in pre_tokenizer.pre_tokenize_str(text):
            word_counts[word] += weight
    words = {word: list(word) for word in sorted(word_counts)}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pair_counts: collections.Counter[tuple[str, str]] = collections.Counter()
        for word, symbols in words.items():
            for pair in zip(symbols, symbols[1:]):
                pair_counts[pair] += word_counts[word]
        if not pair_counts:
            break
        best = min(pair_counts, key=lambda pair: (-pair_counts[pair], pair))
        if pair_counts[best] < 2:
            break
        merges.append(best)
        merged = best[0] + best[1]
        for word, symbols in words.items():
            out: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            words[word] = out
    return merges


def build_tiny_tokenizer(
    num_merges: int = _NUM_MERGES,
    *,
    added_tokens: tuple[str, ...] = QWEN_ADDED_TOKENS,
    chat_template: str = QWEN2_5_VL_CHAT_TEMPLATE,
    extra_corpus: tuple[tuple[str, int], ...] = (),
) -> Any:
    """The tiny byte-level BPE `Qwen2Tokenizer` with Qwen's special tokens and chat template.

    With the default merges "Yes" and "No" are single tokens; `num_merges=0` gives a pure byte-level
    tokenizer (every character its own token), useful to check what happens when they are not.
    `added_tokens` (non-special, after the special ones) and `chat_template` default to Qwen2.5-VL's;
    another Qwen family passes its own (`tiny.qwen3`). `extra_corpus` ((text, weight) pairs) adds text
    the merges are learned from (the miniature world's descriptions); empty keeps the tiny bytes.
    """
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    byte_chars = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for byte in sorted(byte_chars, key=lambda b: ord(byte_chars[b])):
        vocab[byte_chars[byte]] = len(vocab)
    merges = _learn_merges(num_merges, tuple(extra_corpus)) if num_merges > 0 else []
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    # Specials get explicit ids right after the regular vocabulary, in the real order.
    for token in QWEN_SPECIAL_TOKENS + tuple(added_tokens):
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=list(merges),
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        errors="replace",
        model_max_length=_TEXT["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False) for token in QWEN_SPECIAL_TOKENS], special_tokens=True)
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in added_tokens])
    tokenizer.chat_template = chat_template
    for token in QWEN_SPECIAL_TOKENS:
        if tokenizer.convert_tokens_to_ids(token) != vocab[token]:
            raise RuntimeError(f"tiny tokenizer: {token} did not keep its id {vocab[token]}")
    return tokenizer


def build_tiny_processor(tokenizer: Any | None = None) -> Any:
    """The real `Qwen2_5_VLProcessor` (torchvision image processor + video processor) around the tiny tokenizer."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    size = {"shortest_edge": TINY_MIN_PIXELS, "longest_edge": TINY_MAX_PIXELS}
    image_processor = Qwen2VLImageProcessor(size=size, patch_size=14, temporal_patch_size=2, merge_size=2)
    video_processor = Qwen2VLVideoProcessor(size=size, patch_size=14, temporal_patch_size=2, merge_size=2)
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    )


def tiny_qwen_config(config_class: type, tokenizer: Any, text: dict, vision: dict, **extra: Any) -> Any:
    """A tiny Qwen-VL config of `config_class` from the `text` and `vision` sizes, with its token ids taken
    from `tokenizer` (what every tiny Qwen family shares; `extra` are top-level fields)."""

    def token_id(token: str) -> int:
        return int(tokenizer.convert_tokens_to_ids(token))

    # Round up like the real checkpoint does (151665 tokens, vocab_size 152064) so that the
    # embedding has rows no token uses.
    vocab_size = (len(tokenizer) + 63) // 64 * 64
    text = dict(
        text,
        vocab_size=vocab_size,
        bos_token_id=token_id("<|endoftext|>"),
        eos_token_id=token_id("<|im_end|>"),
        pad_token_id=token_id("<|endoftext|>"),
        initializer_range=_INITIALIZER_RANGE,
    )
    vision = dict(vision, out_hidden_size=text["hidden_size"], initializer_range=_INITIALIZER_RANGE)
    return config_class(
        text_config=text,
        vision_config=vision,
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        **extra,
    )


def tiny_vlm_config(tokenizer: Any) -> Any:
    """The tiny `Qwen2_5_VLConfig`, with its token ids taken from `tokenizer`."""
    from transformers import Qwen2_5_VLConfig

    return tiny_qwen_config(Qwen2_5_VLConfig, tokenizer, _TEXT, _VISION, tie_word_embeddings=False)


def seeded_model(model_class: type, config: Any, seed: int) -> Any:
    """`model_class(config)` with random weights from `seed` (the global RNG is left as it was), in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    return model.eval()


def build_tiny_vlm(seed: int = 0) -> tuple[Any, Any]:
    """Build the tiny (model, processor) in memory; the same seed gives the same weights."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    processor = build_tiny_processor()
    return seeded_model(Qwen2_5_VLForConditionalGeneration, tiny_vlm_config(processor.tokenizer), seed), processor


def write_tiny_checkpoint(folder: str | os.PathLike, build: Any, seed: int, what: str) -> Path:
    """Write `build(seed)`'s (model, processor) as a `save_pretrained` folder at `folder` (if missing); return its path.

    The folder appears atomically (written elsewhere, then renamed): a concurrent reader never sees
    half a checkpoint.
    """

    def write(staging: Path) -> None:
        model, processor = build(seed)
        model.save_pretrained(staging)
        processor.save_pretrained(staging)

    # In a process of a torch.distributed group other than rank 0, transformers' save_pretrained
    # writes no weights and no config (only the processor): such a folder must never become the checkpoint.
    target = write_directory_atomic(folder, write, required=("config.json", "model.safetensors"))
    logger.info("Wrote tiny %s (seed %d) to %s", what, seed, target)
    return target


def write_tiny_vlm(folder: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write the tiny Qwen2.5-VL `save_pretrained` folder at `folder` (if missing); return its path.

    Loadable by `vlm3d_ttg.load_vlm(folder)` exactly like a real checkpoint. Same seed, same bytes.
    """
    return write_tiny_checkpoint(folder, build_tiny_vlm, seed, "Qwen2.5-VL")


register_offline_writer("qwen2.5-vl", write_tiny_vlm)  # the offline checkpoint of the family it serves

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "QWEN2_5_VL_CHAT_TEMPLATE",
    "QWEN_ADDED_TOKENS",
    "QWEN_SPECIAL_TOKENS",
    "TINY_MAX_PIXELS",
    "TINY_MIN_PIXELS",
    "build_tiny_processor",
    "build_tiny_tokenizer",
    "build_tiny_vlm",
    "qwen_chat_template",
    "seeded_model",
    "tiny_qwen_config",
    "tiny_vlm_config",
    "write_tiny_checkpoint",
    "write_tiny_vlm",
]
