"""Speed of the VLM critic: where a call's time goes, and what caching the prompt saves.

    .venv/bin/python benchmarks/bench_critic.py [--repeats 5] [--write]

Measures, in one run on this machine:
1. Preprocessing at the real model's sizes (Qwen2.5-VL-7B's processor constants, 4 views of 448²
   and of 512², which is resampled to 504²): our differentiable `qwen_pixel_values` (forward, and
   forward + backward) against the real `Qwen2VLImageProcessor` call, with the max abs difference.
2. One critic call on the tiny Qwen2.5-VL, split into preprocessing / model forward / backward to
   the pixels, for 4 views of 224² and 448².
3. Our cached path against what the paper's code does every step — chat template + processor(text,
   images) + model(**inputs) — as a ratio (forward only: the stock path cannot backpropagate to pixels).
4. Batching: 4 view sets in one call vs 4 calls; the same views with 3 descriptions (vision tower once)
   vs 3 calls; activation checkpointing on vs off.
With --write the results replace this script's section of benchmarks/RESULTS.md.

The tiny model's absolute times say little about the 7B (where the model dominates); the ratios
of the input-preparation costs and the preprocessing times at real sizes do carry over.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from machine import machine_description
from results_file import write_results_section

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vlm3d_ttg import load_vlm  # noqa: E402
from vlm3d_ttg.critic import VLMCritic, qwen_pixel_values  # noqa: E402
from vlm3d_ttg.tiny import ensure_tiny_vlm  # noqa: E402

SECTION_BEGIN = "<!-- bench_critic:begin -->"
SECTION_END = "<!-- bench_critic:end -->"
DESCRIPTION = "a wooden chair"


# What the tables mean; true of every run so far on this CPU (check them against the numbers above).
NOTES = [
    "Notes:",
    "- r equals the stock path to float32 rounding; the stock path without 3-D positions (no "
    "`mm_token_type_ids`, as 4.x-era code calls it) gives a different r — the silent trap of docs/design.md §4.",
    "- The cached path saves the per-step input preparation (chat template, tokenisation, image "
    "processing) that calling the processor every step repeats; the whole-step ratio shrinks as the "
    "model's share grows, and with the 7B on a GPU it approaches 1. The cached path matters because it "
    "is differentiable and carries the 3-D positions; the speed is a bonus.",
    "- Batching several view sets does not pay on this CPU: the vision patch embedding's Conv3d backward "
    "(oneDNN) grows faster than linearly with the number of images (profiled: 124 ms for 16 images vs "
    "4 × 21 ms); everything else costs the same. Not measured on a GPU.",
    "- The same views judged against several descriptions pays: the vision tower runs once.",
    "- Activation checkpointing costs a re-run of each layer's forward in the backward; what it buys is "
    "memory (estimated ~11 GiB → ~0.6 GiB of activations for the 7B at 4 × 448², docs/design.md §4), not "
    "measured here.",
    "- The backward at 4 × 448² is mostly that Conv3d backward on CPU; the tiny model's absolute times "
    "say little about the 7B, the preprocessing times at real sizes do.",
]


def timed(function: Callable[[], object], repeats: int) -> float:
    """Best wall time of `function` in ms over `repeats` runs after one warm-up.

    The best, not the median: on cores shared with other jobs the spread comes from them, and the
    minimum is the least disturbed estimate of what the code itself costs.
    """
    function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return 1000 * min(samples)


def timed_pair(first: Callable[[], object], second: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Best wall times (ms) of two functions run alternately, so both see the same outside load."""
    first(), second()
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for function, bucket in ((first, samples[0]), (second, samples[1])):
            start = time.perf_counter()
            function()
            bucket.append(time.perf_counter() - start)
    return 1000 * min(samples[0]), 1000 * min(samples[1])



def images(count: int, size: int | tuple[int, int], seed: int = 0) -> torch.Tensor:
    height, width = (size, size) if isinstance(size, int) else size
    return torch.rand(count, 3, height, width, generator=torch.Generator().manual_seed(seed))


def bench_preprocessing(repeats: int) -> list[str]:
    from transformers import Qwen2VLImageProcessor

    processor = Qwen2VLImageProcessor(size={"shortest_edge": 3136, "longest_edge": 12845056})  # the 7B's
    rows = [
        "| views | resized to | ours, forward (ms) | ours, forward + backward (ms) | real processor (ms) | max abs diff |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for size in (448, 512):
        views = images(4, size)
        leaf = views.clone().requires_grad_(True)
        expected = processor(list(views), do_rescale=False, return_tensors="pt")
        ours, grid = qwen_pixel_values(views, processor)
        diff = float((ours - expected["pixel_values"]).abs().max())

        def forward_backward() -> None:
            pixel_values, _ = qwen_pixel_values(leaf, processor)
            torch.autograd.grad(pixel_values.sum(), leaf)

        forward, real = timed_pair(
            lambda: qwen_pixel_values(views, processor),
            lambda: processor(list(views), do_rescale=False, return_tensors="pt"),
            repeats,
        )
        both = timed(forward_backward, repeats)
        resized = f"{int(grid[0, 1]) * 14}²"
        rows.append(f"| 4 × {size}² | {resized} | {forward:.1f} | {both:.1f} | {real:.1f} | {diff:.1e} |")
    return rows


def bench_equality(model, processor) -> list[str]:
    """Not a timing: how far our path is from the real one (pixel values; r)."""
    from transformers import Qwen2VLImageProcessor

    processors = {
        "tiny (max_pixels 802816)": processor.image_processor,
        "7B constants": Qwen2VLImageProcessor(size={"shortest_edge": 3136, "longest_edge": 12845056}),
    }
    rows = ["| processor | input size | resized to | max abs diff of pixel_values |", "|---|---|---|---:|"]
    for name, image_processor in processors.items():
        for height, width in ((448, 448), (224, 336), (250, 333), (20, 30), (1000, 1200), (512, 512)):
            views = images(2, (height, width))
            expected = image_processor(list(views), do_rescale=False, return_tensors="pt")
            ours, grid = qwen_pixel_values(views, image_processor)
            assert torch.equal(grid, expected["image_grid_thw"])
            diff = float((ours - expected["pixel_values"]).abs().max())
            rows.append(f"| {name} | {height}×{width} | {int(grid[0, 1]) * 14}×{int(grid[0, 2]) * 14} | {diff:.1e} |")
    critic = VLMCritic(model, processor, DESCRIPTION)
    yes, no = critic.yes_id, critic.no_id
    rows += ["", "| tiny model, views | r (ours) | r (stock) − r (ours) | r with 1-D positions − r (ours) |", "|---|---:|---:|---:|"]
    for count, height, width in ((4, 448, 448), (3, 56, 84), (2, 50, 70)):
        views = images(count, (height, width), seed=count)
        with torch.no_grad():
            ours_r = float(critic(views).r)
            messages = [{"role": "user", "content": [{"type": "image"}] * count + [{"type": "text", "text": critic.question}]}]
            text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            inputs = processor(text=[text], images=list(views), do_rescale=False, return_tensors="pt")
            logits = model(**inputs).logits[0, -1]
            inputs.pop("mm_token_type_ids")
            logits_1d = model(**inputs).logits[0, -1]
        stock, one_d = float(logits[yes] - logits[no]), float(logits_1d[yes] - logits_1d[no])
        rows.append(f"| {count} × {height}×{width} | {ours_r:+.6f} | {stock - ours_r:+.1e} | {one_d - ours_r:+.1e} |")
    return rows


def split_call(critic: VLMCritic, views: torch.Tensor, repeats: int) -> tuple[float, float, float]:
    """Best ms of (preprocessing, model forward, backward to the pixels) of one critic call."""
    prompt = critic.prompt_inputs(views.shape[0], views.shape[2], views.shape[3])
    pre, fwd, bwd = [], [], []
    for index in range(repeats + 1):
        leaf = views.clone().requires_grad_(True)
        start = time.perf_counter()
        pixel_values, grid = critic.preprocess(leaf)
        after_pre = time.perf_counter()
        z_yes, z_no = critic._answer_logits(prompt, pixel_values, grid, view_sets=1, repeats=1)
        r = (z_yes - z_no)[0]
        after_forward = time.perf_counter()
        torch.autograd.grad(r, leaf)
        end = time.perf_counter()
        if index:  # the first run warms up
            pre.append(after_pre - start)
            fwd.append(after_forward - after_pre)
            bwd.append(end - after_forward)
    return tuple(1000 * min(samples) for samples in (pre, fwd, bwd))  # type: ignore[return-value]


def bench_tiny_split(model, processor, repeats: int) -> list[str]:
    critic = VLMCritic(model, processor, DESCRIPTION)
    rows = [
        "| views | tokens | preprocessing (ms) | forward (ms) | backward (ms) | total (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for size in (224, 448):
        views = images(4, size)
        pre, fwd, bwd = split_call(critic, views, repeats)
        tokens = critic.prompt_inputs(4, size, size).sequence_length
        rows.append(f"| 4 × {size}² | {tokens} | {pre:.1f} | {fwd:.1f} | {bwd:.1f} | {pre + fwd + bwd:.1f} |")
    return rows


def bench_cached_vs_stock(model, processor, repeats: int) -> list[str]:
    critic = VLMCritic(model, processor, DESCRIPTION)
    rows = [
        "| views | ours: inputs (ms) | stock: inputs (ms) | ratio | ours: step (ms) | stock: step (ms) | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for size in (224, 448):
        views = images(4, size)

        def ours_inputs() -> None:
            critic.prompt_inputs(4, size, size)  # cached after the first call
            critic.preprocess(views)

        def stock_inputs() -> dict:
            messages = [{"role": "user", "content": [{"type": "image"}] * 4 + [{"type": "text", "text": critic.question}]}]
            text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return processor(text=[text], images=list(views), do_rescale=False, return_tensors="pt")

        def ours_step() -> None:
            with torch.no_grad():
                critic(views)

        def stock_step() -> None:
            with torch.no_grad():
                model(**stock_inputs(), use_cache=False, logits_to_keep=1)

        ours_in, stock_in = timed_pair(ours_inputs, stock_inputs, repeats)
        ours_st, stock_st = timed_pair(ours_step, stock_step, repeats)
        rows.append(
            f"| 4 × {size}² | {ours_in:.1f} | {stock_in:.1f} | {stock_in / ours_in:.1f}× | "
            f"{ours_st:.1f} | {stock_st:.1f} | {stock_st / ours_st:.2f}× |"
        )
    return rows


def bench_batching(model, processor, repeats: int) -> list[str]:
    critic = VLMCritic(model, processor, DESCRIPTION)
    descriptions = ["a wooden chair", "a red sports car", "a ceramic mug with a handle"]
    view_sets = torch.rand(4, 4, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    shared_views = view_sets[0]

    def backward_of(make_r: Callable[[torch.Tensor], torch.Tensor], tensor: torch.Tensor) -> Callable[[], None]:
        def run() -> None:
            leaf = tensor.clone().requires_grad_(True)
            torch.autograd.grad(make_r(leaf).sum(), leaf)

        return run

    batched, sequential = timed_pair(
        backward_of(lambda x: critic(x).r, view_sets),
        backward_of(lambda x: torch.stack([critic(v).r for v in x]), view_sets),
        repeats,
    )
    critics = [VLMCritic(model, processor, text) for text in descriptions]
    shared, separate = timed_pair(
        backward_of(lambda x: critic(x, descriptions=descriptions).r, shared_views),
        backward_of(lambda x: torch.stack([c(x).r for c in critics]), shared_views),
        repeats,
    )
    model_ckpt = copy.deepcopy(model)
    checkpointed = VLMCritic(model_ckpt, processor, DESCRIPTION, activation_checkpointing=True)
    plain_time, ckpt_time = timed_pair(
        backward_of(lambda x: critic(x).r, shared_views), backward_of(lambda x: checkpointed(x).r, shared_views), repeats
    )
    return [
        "| forward + backward, tiny model, 224² views | time (ms) |",
        "|---|---:|",
        f"| 4 view sets × 4 views, one batched call | {batched:.1f} |",
        f"| 4 view sets × 4 views, 4 calls | {sequential:.1f} |",
        f"| 4 views × 3 descriptions, one call (vision tower once) | {shared:.1f} |",
        f"| 4 views × 3 descriptions, 3 calls | {separate:.1f} |",
        f"| 4 views, plain | {plain_time:.1f} |",
        f"| 4 views, activation checkpointing | {ckpt_time:.1f} |",
    ]


def critic_bench_arguments(description: str) -> argparse.Namespace:
    """The tiny-critic benchmarks' common flags (--repeats, --threads, --cache-dir, --write), applied."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--cache-dir", default=None, help="where the tiny checkpoint is written (default: a temp dir)")
    parser.add_argument("--write", action="store_true", help="replace this benchmark's section of benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return args


@contextmanager
def tiny_critic_model(cache_dir: str | None) -> Iterator[tuple[Any, Any]]:
    """(model, processor) of the tiny Qwen2.5-VL on the CPU, written to `cache_dir` or a temp dir."""
    with tempfile.TemporaryDirectory() as temp:
        yield load_vlm(ensure_tiny_vlm(cache_dir or temp), device="cpu")


def main() -> None:
    args = critic_bench_arguments(__doc__)
    machine = machine_description()
    with tiny_critic_model(args.cache_dir) as (model, processor):
        sections = [
            ("Equality with the real processor and the stock path (not timings)", bench_equality(model, processor)),
            ("Preprocessing at the 7B's sizes (4 views; processor constants of Qwen2.5-VL-7B-Instruct)", bench_preprocessing(args.repeats)),
            ("One critic call on the tiny Qwen2.5-VL, split", bench_tiny_split(model, processor, args.repeats)),
            (
                "Cached path vs the real processor every step (tiny model; 'inputs' = everything before the model, "
                "'step' = inputs + forward)",
                bench_cached_vs_stock(model, processor, args.repeats),
            ),
            ("Batching and checkpointing (tiny model)", bench_batching(model, processor, args.repeats)),
        ]
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        SECTION_BEGIN,
        "## VLM critic (`benchmarks/bench_critic.py`)",
        "",
        f"Machine: {machine}; load average at end {load_end:.1f}. Best of {args.repeats} runs after a warm-up (compared variants alternate run by run), CPU.",
        "",
    ]
    for title, rows in sections:
        lines += [f"**{title}**", "", *rows, ""]
    lines += [*NOTES, "", SECTION_END]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_results_section(SECTION_BEGIN, SECTION_END, text)


if __name__ == "__main__":
    main()
