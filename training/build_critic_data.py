"""Render the critic's training views: 4 views per set, exactly as guidance's reward renders them.

    python training/build_critic_data.py --data /work/mini-train/data --out /work/mini-train/critic_data

Per shape: `--intact` jittered view sets of the ground-truth mesh and `--broken` of broken variants
(holes / fracture / floaters), plus, with `--decoder`, view sets of the decoder's reconstructions of
training shapes (so that guidance's renders of decoded shapes are in distribution). Writes
`<split>_views.npy` (M, 4, 3, S, S) uint8 and `<split>_index.npz` (shape row, broken flag, source).
Resumable per shape (one file each under parts/).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger("build_critic_data")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--intact", type=int, default=2, help="intact view sets per training shape")
    parser.add_argument("--held-out-intact", type=int, default=2, help="intact view sets per validation / test shape")
    parser.add_argument("--broken", type=int, default=1, help="broken view sets per training shape")
    parser.add_argument("--held-out-broken", type=int, default=None, help="broken view sets per validation / test shape "
                        "(default: as --broken)")
    parser.add_argument("--splits", default="train,val,test", help="the splits to render (comma-separated)")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--mesh-resolution", type=int, default=56)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="first N shapes only (tests)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)

    from vlm3d_ttg.miniworld.broken import BREAKS, break_mesh
    from vlm3d_ttg.miniworld.dataset import load_meta
    from vlm3d_ttg.miniworld.geometry import mesh_from_sdf
    from vlm3d_ttg.miniworld.shapes import make_spec, shape_sdf
    from vlm3d_ttg.miniworld.render_input import critic_views
    from vlm3d_ttg.render import Renderer

    try:
        records = load_meta(args.data)
    except Exception as exc:  # a missing data folder: say what to run
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta_seed = int(__import__("json").loads((args.data / "meta.json").read_text())["seed"])
    if args.limit:
        records = records[: args.limit]
    splits = args.splits.split(",")
    held_out_broken = args.broken if args.held_out_broken is None else args.held_out_broken
    parts = args.out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    renderer = Renderer("cpu")
    start = time.time()
    for i, rec in enumerate(records):
        path = parts / f"{rec.name}.npz"
        if path.exists() or rec.split not in splits:
            continue
        rng = np.random.default_rng([args.seed, 3, i])
        generator = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
        # The mesh at about the resolution guidance decodes at (and 2x faster to render than the stored one).
        mesh = mesh_from_sdf(shape_sdf(make_spec(rec.cls, rec.variant, meta_seed)), args.mesh_resolution)
        n_intact, n_broken = (args.intact, args.broken) if rec.split == "train" else (args.held_out_intact, held_out_broken)
        sets, broken = [], []
        for _ in range(n_intact):
            sets.append(critic_views(mesh, generator=generator, size=args.size, renderer=renderer))
            broken.append(0)
        for _ in range(n_broken):
            kind = BREAKS[int(rng.integers(len(BREAKS)))]
            sets.append(critic_views(break_mesh(mesh, kind, rng), generator=generator, size=args.size, renderer=renderer))
            broken.append(1)
        views = (torch.stack(sets) * 255 + 0.5).to(torch.uint8).numpy()
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, views=views, broken=np.asarray(broken, np.int8))
        os.replace(tmp, path)
        if i % 50 == 0:
            logger.info("%d/%d (%.0f s)", i, len(records), time.time() - start)
    for split in splits:
        rows = [(j, rec) for j, rec in enumerate(records) if rec.split == split]
        if not rows:
            continue
        views, shape_row, broken = [], [], []
        for j, rec in rows:
            with np.load(parts / f"{rec.name}.npz") as z:
                views.append(z["views"])
                broken.append(z["broken"])
                shape_row += [j] * len(z["broken"])
        np.save(args.out / f"{split}_views.npy", np.concatenate(views))
        np.savez(args.out / f"{split}_index.npz", shape_row=np.asarray(shape_row), broken=np.concatenate(broken))
    logger.info("done (%.0f s)", time.time() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
