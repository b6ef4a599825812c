"""Evidence for the miniature world: does each trained part know its job?

    python training/evaluate_mini.py decoder --data D --decoder /work/mini-train/decoder/ckpt.pt --out R.json
    python training/evaluate_mini.py dit     --data D --models CACHE --out R.json
    python training/evaluate_mini.py critic  --data D --views V --critic /work/mini-train/critic/ckpt.pt --out R.json

decoder: IoU of training shapes from their learned codes and of validation shapes from codes
    fitted with the decoder frozen; whether each attribute (handle genus, legs, back, fins) survives.
dit: unguided samples from test shapes' input renders through the shipped pipeline (hy3dgen's own
    loader and sampling loop): class by nearest class (mean Chamfer to the class's training shapes),
    volumetric IoU to the true shape next to a wrong-class baseline, attribute agreement.
critic: held-out Yes/No accuracy per description on test-shape view sets (balanced as in training).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger("evaluate_mini")


def _write(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, (list, dict)) or k.startswith("summary")}, indent=1))


def load_decoder(ckpt: Path) -> tuple[torch.nn.Module, torch.Tensor]:
    sys.path.insert(0, str(Path(__file__).parent))
    from train_decoder import build_vae

    state = torch.load(ckpt, weights_only=False)
    vae = build_vae(0)
    vae.load_state_dict(state["vae"])
    vae.eval()
    return vae, state["codes"].float()


def evaluate_decoder(args) -> dict:
    from vlm3d_ttg.miniworld.autodecoder import decode_grid, fit_codes
    from vlm3d_ttg.miniworld.dataset import load_grid, load_meta
    from vlm3d_ttg.miniworld.geometry import detect_attribute, iou

    records = load_meta(args.data)
    vae, codes = load_decoder(args.decoder)
    train = [r for r in records if r.split == "train"]
    val = [r for r in records if r.split == "val"]
    rows = []
    # Training shapes: their learned codes (a few per class).
    per_class = defaultdict(int)
    for i, rec in enumerate(train):
        if per_class[rec.cls] >= args.train_per_class:
            continue
        per_class[rec.cls] += 1
        grid = decode_grid(vae, codes[i], 64) > 0
        truth = load_grid(args.data, rec.name)
        rows.append({"name": rec.name, "split": "train", "cls": rec.cls, "iou": iou(grid, truth),
                     "attr_true": detect_attribute(rec.cls, truth), "attr_recon": detect_attribute(rec.cls, grid)})
    # Validation shapes: codes fitted with the decoder frozen, from the mean training code.
    val_points = torch.from_numpy(np.load(args.data / "val_points.npy")).float()
    val_occ = torch.from_numpy(np.load(args.data / "val_occ.npy"))
    start = time.time()
    init = codes.mean(dim=0, keepdim=True).expand(len(val), -1, -1)
    fitted = fit_codes(vae, val_points, val_occ, init, steps=args.fit_steps, batch_points=args.fit_points)
    fit_seconds = time.time() - start
    for i, rec in enumerate(val):
        grid = decode_grid(vae, fitted[i], 64) > 0
        truth = load_grid(args.data, rec.name)
        rows.append({"name": rec.name, "split": "val", "cls": rec.cls, "iou": iou(grid, truth),
                     "attr_true": detect_attribute(rec.cls, truth), "attr_recon": detect_attribute(rec.cls, grid)})
    summary = {}
    for split in ("train", "val"):
        sel = [r for r in rows if r["split"] == split]
        attr = [r for r in sel if r["attr_true"] is not None]
        summary[split] = {
            "shapes": len(sel),
            "mean_iou": float(np.mean([r["iou"] for r in sel])),
            "attribute_survival": float(np.mean([r["attr_true"] == r["attr_recon"] for r in attr])) if attr else None,
            "per_class_attribute_survival": {
                c: float(np.mean([r["attr_true"] == r["attr_recon"] for r in attr if r["cls"] == c]))
                for c in sorted({r["cls"] for r in attr})},
            "per_class_iou": {c: float(np.mean([r["iou"] for r in sel if r["cls"] == c])) for c in sorted({r["cls"] for r in sel})},
        }
    state = torch.load(args.decoder, weights_only=False)
    return {"summary": summary, "fit_seconds": fit_seconds, "decoder_step": state["step"], "rows": rows,
            "fitted_val_codes": None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    dec = sub.add_parser("decoder")
    dec.add_argument("--data", required=True, type=Path)
    dec.add_argument("--decoder", required=True, type=Path)
    dec.add_argument("--out", required=True, type=Path)
    dec.add_argument("--train-per-class", type=int, default=4)
    dec.add_argument("--fit-steps", type=int, default=150)
    dec.add_argument("--fit-points", type=int, default=1024)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    if args.what == "decoder":
        _write(args.out, evaluate_decoder(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
