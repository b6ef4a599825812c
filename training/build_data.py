"""Build the miniature world's data set (regenerable; not committed).

    python training/build_data.py --out /work/mini-train/data --seed 0 --stage geometry
    python training/build_data.py --out /work/mini-train/data --seed 0 --stage inputs

Resumable: each shape is one file, skipped when present; `stack` files are rebuilt at the end of
a stage. `--classes` / `--variants` build a subset (tests).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("build_data")


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def build_geometry(out: Path, specs, seed: int) -> None:
    from vlm3d_ttg.miniworld.dataset import build_shape, split_of

    (out / "shapes").mkdir(parents=True, exist_ok=True)
    start = time.time()
    for i, spec in enumerate(specs):
        path = out / "shapes" / f"{spec.name}.npz"
        if not path.exists():
            _save_npz(path, **build_shape(spec, seed))
        if i % 50 == 0:
            logger.info("geometry %d/%d (%.0f s)", i, len(specs), time.time() - start)
    for split in ("train", "val", "test"):
        names = [s.name for s in specs if split_of(s.variant) == split]
        if not names:
            continue
        points, occ = [], []
        for name in names:
            with np.load(out / "shapes" / f"{name}.npz") as z:
                points.append(z["points"])
                occ.append(z["occ"])
        np.save(out / f"{split}_points.npy", np.stack(points))
        np.save(out / f"{split}_occ.npy", np.stack(occ))


def build_inputs(out: Path, specs, seed: int) -> None:
    from hy3dgen.shapegen.preprocessors import ImageProcessorV2
    from PIL import Image

    from vlm3d_ttg.miniworld.config import BORDER_RATIO, PREPROCESS_SIZE
    from vlm3d_ttg.miniworld.dataset import input_views, load_mesh, split_of
    from vlm3d_ttg.miniworld.render_input import render_input_images
    from vlm3d_ttg.render import Renderer

    processor = ImageProcessorV2(PREPROCESS_SIZE, BORDER_RATIO)
    renderer = Renderer("cpu")
    (out / "inputs").mkdir(parents=True, exist_ok=True)
    start = time.time()
    for i, spec in enumerate(specs):
        path = out / "inputs" / f"{spec.name}.npz"
        if not path.exists():
            views = input_views(spec, seed)
            rgba = render_input_images(load_mesh(out, spec.name), views, renderer=renderer)
            processed = []
            for picture in rgba:
                # Exactly what the pipeline does to an input image (the backbone calls it so).
                image = processor(Image.fromarray(picture, mode="RGBA"))["image"][0]
                processed.append(((image + 1.0) / 2.0 * 255.0).round().clamp(0, 255).to(dtype=__import__("torch").uint8).numpy())
            _save_npz(path, views=np.asarray(views, np.float32), processed=np.stack(processed), rgba=rgba)
        if i % 50 == 0:
            logger.info("inputs %d/%d (%.0f s)", i, len(specs), time.time() - start)
    for split in ("train", "val", "test"):
        names = [s.name for s in specs if split_of(s.variant) == split]
        if not names:
            continue
        stack = []
        for name in names:
            with np.load(out / "inputs" / f"{name}.npz") as z:
                stack.append(z["processed"])
        np.save(out / f"{split}_inputs.npy", np.stack(stack))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stage", choices=["geometry", "inputs", "all"], default="all")
    parser.add_argument("--classes", default=None, help="comma-separated subset of classes")
    parser.add_argument("--variants", type=int, default=None, help="variants per class (default: the world's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import torch

    torch.set_num_threads(1)
    from vlm3d_ttg.miniworld.dataset import VARIANTS, world_specs, write_meta
    from vlm3d_ttg.miniworld.shapes import CLASSES

    specs = world_specs(args.seed, args.variants or VARIANTS)
    if args.classes:
        wanted = args.classes.split(",")
        unknown = [c for c in wanted if c not in CLASSES]
        if unknown:
            print(f"error: unknown classes {unknown}; known: {', '.join(CLASSES)}", file=sys.stderr)
            return 2
        specs = [s for s in specs if s.cls in wanted]
    args.out.mkdir(parents=True, exist_ok=True)
    write_meta(args.out, specs, args.seed)
    if args.stage in ("geometry", "all"):
        build_geometry(args.out, specs, args.seed)
    if args.stage in ("inputs", "all"):
        build_inputs(args.out, specs, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
