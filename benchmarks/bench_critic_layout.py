"""What the critic's view layout and the reference image cost: tokens, time and activation memory.

    .venv/bin/python benchmarks/bench_critic_layout.py [--repeats 5] [--write]

Measures, in one run on this machine, one critic call (forward + backward to the views) on the tiny
Qwen2.5-VL at the default view size 448 in the four settings: 4 views of 448² as separate images
(the paper's) or 4 views of 223² (what generation renders for the grid) tiled into one 448² image
(`--view-layout grid`), each without and with the reference image (`--critic-reference`, made at
the view size as generation does):
- the prompt's vision tokens and total length (the same numbers the 7B gets: both follow the
  processor's 14-px patches merged 2×2);
- the wall time of a call, settings alternating run by run, and the ratio to the paper's setting;
- the activations autograd saves for the backward (bytes of the distinct tensors the forward
  saves), the quantity the cost model scales for the 7B;
- the tiling itself (forward + backward of `tile_views`): placing views rendered at the cell size,
  and resampling 448² views into the cells (what a caller with full-size views pays).
With --write the results replace this script's section of benchmarks/RESULTS.md. The 7B's figures
are the cost model's (`cost_model.py`, "Critic: view layout and reference image").
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from machine import machine_description
from results_file import write_results_section

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vlm3d_ttg.critic import VLMCritic  # noqa: E402
from vlm3d_ttg.critic.layout import square_cell_tile, tile_views  # noqa: E402

SECTION_BEGIN = "<!-- bench_critic_layout:begin -->"
SECTION_END = "<!-- bench_critic_layout:end -->"
DESCRIPTION = "a wooden chair"
VIEWS, SIDE = 4, 448
SETTINGS = [("separate", False), ("grid", False), ("separate", True), ("grid", True)]


def saved_activation_bytes(function: Callable[[], torch.Tensor]) -> int:
    """Bytes of the distinct tensors autograd saves for the backward while `function` runs its forward."""
    seen: dict[tuple[int, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        function()
    return sum(seen.values())


def best_times_ms(functions: list[Callable[[], object]], repeats: int) -> list[float]:
    """Best wall time (ms) of each function over `repeats` rounds, run alternately after one warm-up each.

    The best, not the median: on shared cores the spread comes from other jobs.
    """
    for function in functions:
        function()
    samples: list[list[float]] = [[] for _ in functions]
    for _ in range(repeats):
        for function, bucket in zip(functions, samples):
            start = time.perf_counter()
            function()
            bucket.append(time.perf_counter() - start)
    return [1000 * min(bucket) for bucket in samples]


def bench(model, processor, repeats: int) -> list[str]:
    generator = torch.Generator().manual_seed(0)
    cell = square_cell_tile(VIEWS, SIDE)[2]
    full_views = torch.rand(VIEWS, 3, SIDE, SIDE, generator=generator)
    cell_views = torch.rand(VIEWS, 3, cell, cell, generator=generator)
    reference = torch.rand(3, SIDE, SIDE, generator=generator)
    critics = [VLMCritic(model, processor, DESCRIPTION, reference=reference if with_reference else None, layout=layout,
                         grid_size=SIDE) for layout, with_reference in SETTINGS]
    inputs = [cell_views if layout == "grid" else full_views for layout, _ in SETTINGS]

    def call(critic: VLMCritic, views: torch.Tensor) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            leaf = views.clone().requires_grad_(True)
            (gradient,) = torch.autograd.grad(critic(leaf).r, leaf)
            return gradient
        return run

    times = best_times_ms([call(critic, views) for critic, views in zip(critics, inputs)], repeats)
    image_token_id = model.config.image_token_id
    rows = [
        "| critic sees | rendered views | images | vision tokens | prompt tokens | fwd + bwd (ms) | vs separate | saved activations (MiB) | vs separate |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base_time, base_bytes = times[0], None
    for (layout, with_reference), critic, views, elapsed in zip(SETTINGS, critics, inputs, times):
        side = int(views.shape[-1])
        prompt = critic.prompt_inputs(VIEWS, side, side)
        tokens = int((prompt.input_ids == image_token_id).sum())
        saved = saved_activation_bytes(lambda: critic(views.clone().requires_grad_(True)).r)
        base_bytes = base_bytes or saved
        rows.append(
            f"| {layout}{' + reference' if with_reference else ''} | {VIEWS} × {side}² | {len(critic.image_sizes(VIEWS, side, side))} | {tokens} | "
            f"{prompt.sequence_length} | {elapsed:.0f} | ×{elapsed / base_time:.2f} | {saved / 2**20:.1f} | ×{saved / base_bytes:.2f} |"
        )
    def tiling(views: torch.Tensor) -> Callable[[], None]:
        leaf = views.clone().requires_grad_(True)
        return lambda: torch.autograd.grad(tile_views(leaf, SIDE).sum(), leaf)

    placed, resampled = best_times_ms([tiling(cell_views), tiling(full_views)], repeats)
    rows += ["", f"Tiling into one {SIDE}² image (`tile_views`), forward + backward: {placed:.1f} ms for {VIEWS} × {cell}² "
             f"views (placed), {resampled:.1f} ms for {VIEWS} × {SIDE}² views (antialiased resampling into the cells)."]
    return rows


NOTES = [
    "Notes:",
    "- Tokens are the 7B's too (same processor rule). The grid cuts the views' tokens exactly 4× at 4 "
    "views; the reference adds one view's worth (256 at 448²). The reference's vision features are "
    "computed once per critic (before the timed runs) and cached, so a call pays only its tokens in the LLM.",
    "- On the tiny model the vision tower's patch embedding and the pixel preprocessing dominate, so "
    "time and saved activations follow the pixels the critic sees (grid: ¼ of the views' pixels); for "
    "the 7B the cost model's figures are the ones to plan with. Rendering 4 × 223² instead of 4 × 448² "
    "also saves renderer time, not counted here.",
    "- Generation renders the grid's views at the cell size (`VLMReward`), so they are placed, not "
    "resampled: the resampling row is what tiling full-size views would add on this CPU.",
    "- What the grid costs in judgement (each view at ~223² instead of 448²) is not measured here: the "
    "tiny critic is random and cannot tell.",
]


def main() -> None:
    from bench_critic import critic_bench_arguments, tiny_critic_model

    args = critic_bench_arguments(__doc__)
    machine = machine_description()
    with tiny_critic_model(args.cache_dir) as (model, processor):
        rows = bench(model, processor, args.repeats)
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        SECTION_BEGIN,
        "## Critic view layout and reference image (`benchmarks/bench_critic_layout.py`)",
        "",
        f"Machine: {machine}; load average at end {load_end:.1f}. One critic call on the tiny Qwen2.5-VL, "
        f"{VIEWS} views × {SIDE}², best of {args.repeats} runs after a warm-up, settings alternating run by run, CPU.",
        "",
        *rows,
        "",
        *NOTES,
        "",
        SECTION_END,
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_results_section(SECTION_BEGIN, SECTION_END, text)


if __name__ == "__main__":
    main()
