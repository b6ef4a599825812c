"""Evidence for the miniature world: does each trained part know its job?

    python training/evaluate_mini.py decoder --data D --decoder /work/mini-train/decoder/ckpt.pt --out R.json
    python training/evaluate_mini.py dit     --data D --models CACHE --out R.json
    python training/evaluate_mini.py critic  --data D --views V --critic /work/mini-train/critic/ckpt.pt --out R.json

decoder: IoU of training shapes from their learned codes and of validation shapes from codes
    fitted with the decoder frozen (each fit starts from the training code that reproduces the shape's
    samples best; `--init mean`: from the mean code); whether each attribute (handle genus, legs, back,
    fins) survives.
dit: unguided samples from test shapes' input renders through the shipped pipeline (hy3dgen's own
    loader and sampling loop): class of the nearest training shape (Chamfer; `ShapeClassifier`),
    volumetric IoU to the true shape next to a wrong-class baseline, attribute agreement.
critic: held-out Yes/No accuracy per description on test-shape view sets (balanced as in training).
class-rule: how often rules for naming a shape's class name the true shapes of a split (the check that
    chose the nearest training shape over the mean distance to a class's shapes).
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
    from train_decoder import build_vae, checkpoint_width

    state = torch.load(ckpt, weights_only=False)
    vae = build_vae(0, checkpoint_width(state))
    vae.load_state_dict(state["vae"])
    vae.eval()
    return vae, state["codes"].float()


def evaluate_decoder(args) -> dict:
    from vlm3d_ttg.miniworld.autodecoder import decode_grid, fit_codes, nearest_codes
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
    # Validation shapes: codes fitted with the decoder frozen, from the mean training code or from the
    # training code that reproduces the shape's own samples best.
    val_points = torch.from_numpy(np.load(args.data / "val_points.npy")).float()
    val_occ = torch.from_numpy(np.load(args.data / "val_occ.npy"))
    start = time.time()
    if args.init == "nearest":
        init = nearest_codes(vae, codes, val_points, val_occ)
    else:
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
    return {"summary": summary, "fit_seconds": fit_seconds, "decoder_step": state["step"], "init": args.init, "rows": rows,
            "fitted_val_codes": None}


def _surface_points(grid_logits: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray | None:
    from vlm3d_ttg.miniworld.geometry import mesh_from_values

    try:
        mesh = mesh_from_values(grid_logits, 0.0, inside_above=True)
    except Exception:
        return None
    return mesh.vertices[rng.choice(len(mesh.vertices), count)]


def training_references(data: Path, records: list, per_class: int | None, rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    """1500 surface points of each of the first `per_class` training shapes of every class (all if None)."""
    from vlm3d_ttg.miniworld.dataset import load_mesh

    classes = sorted({r.cls for r in records})
    meshes = {c: [load_mesh(data, r.name).vertices for r in records if r.split == "train" and r.cls == c][:per_class] for c in classes}
    return {c: [v[rng.choice(len(v), 1500)] for v in vs] for c, vs in meshes.items()}


#: Ways to name a class from the distances to its references, compared by `class-rule`.
CLASS_RULES = {"nearest training shape": np.min, "mean distance to 8 per class": lambda d: np.mean(d[:8]),
               "mean distance to all per class": np.mean, "mean of the 3 nearest per class": lambda d: np.mean(np.sort(d)[:3])}


def evaluate_class_rule(args) -> dict:
    from vlm3d_ttg.miniworld.dataset import load_grid, load_meta
    from vlm3d_ttg.miniworld.geometry import ShapeClassifier

    records = load_meta(args.data)
    rng = np.random.default_rng(0)
    classifier = ShapeClassifier(training_references(args.data, records, None, rng))
    named = defaultdict(list)
    for rec in (r for r in records if r.split == args.split):
        truth = load_grid(args.data, rec.name).astype(np.float32) - 0.5  # surface points as a sample's are taken
        distances = classifier.distances(_surface_points(truth, 1500, rng))
        for rule, reduce in CLASS_RULES.items():
            named[rule].append(min(distances, key=lambda c: reduce(distances[c])) == rec.cls)
    return {"split": args.split, "shapes": len(named["nearest training shape"]),
            "right": {rule: float(np.mean(right)) for rule, right in named.items()}}


def evaluate_dit(args) -> dict:
    from PIL import Image

    from vlm3d_ttg.miniworld.autodecoder import decode_grid
    from vlm3d_ttg.miniworld.checkpoints import ensure_mini_models
    from vlm3d_ttg.miniworld.dataset import load_grid, load_meta
    from vlm3d_ttg.miniworld.geometry import ShapeClassifier, detect_attribute, iou
    from vlm3d_ttg.miniworld.shapes import ATTRIBUTES
    from vlm3d_ttg.backbones.hunyuan3d2_models import load_shape_pipeline

    records = load_meta(args.data)
    rng = np.random.default_rng(0)
    models = ensure_mini_models(args.models, assets=args.assets)
    pipeline = load_shape_pipeline(models.shape.repo_id, models.shape.subfolder, models_dir=models.shape.models_dir,
                                   device="cpu", dtype="float32")
    vae = pipeline.vae
    test = [r for r in records if r.split == args.split]
    classes = sorted({r.cls for r in records})
    classifier = ShapeClassifier(training_references(args.data, records, args.refs_per_class, rng))
    rows = []
    start = time.time()
    for k, rec in enumerate(test):
        with np.load(args.data / "inputs" / f"{rec.name}.npz") as z:
            rgba, views = z["rgba"], z["views"]
        view_ids = [0] + ([6] if rec.cls in ATTRIBUTES else [])  # a random view; the view hiding the attribute
        truth = load_grid(args.data, rec.name)
        for view_id in view_ids:
            image = Image.fromarray(rgba[view_id], mode="RGBA")
            latent = pipeline(image=image, num_inference_steps=args.steps, guidance_scale=args.cfg,
                              generator=torch.Generator().manual_seed(k), output_type="latent", enable_pbar=False)
            code = latent[0] / vae.scale_factor
            logits = decode_grid(vae, code.float(), 64)
            grid = logits > 0
            points = _surface_points(logits, 1500, rng)
            distances = classifier.distances(points) if points is not None else None
            predicted = ShapeClassifier.nearest(distances) if distances else None
            others = [r for r in test if r.cls != rec.cls]
            wrong = [iou(grid, load_grid(args.data, o.name)) for o in rng.choice(others, 6, replace=False)]
            rows.append({"name": rec.name, "cls": rec.cls, "view": view_id, "hiding_view": view_id == 6,
                         "view_angles": views[view_id].tolist(), "predicted_cls": predicted,
                         "class_distances": {c: np.round(d, 5).tolist() for c, d in distances.items()} if distances else None,
                         "iou": iou(grid, truth), "wrong_class_iou": float(np.mean(wrong)),
                         "attr_true": detect_attribute(rec.cls, truth), "attr_sample": detect_attribute(rec.cls, grid)})
        logger.info("%d/%d %s -> %s iou %.3f (%.0f s)", k + 1, len(test), rec.name, rows[-len(view_ids)]["predicted_cls"],
                    rows[-len(view_ids)]["iou"], time.time() - start)
    main_rows = [r for r in rows if not r["hiding_view"]]
    attr_rows = [r for r in main_rows if r["attr_true"] is not None]
    hid_rows = [r for r in rows if r["hiding_view"]]
    summary = {
        "samples": len(main_rows),
        "class_right": float(np.mean([r["predicted_cls"] == r["cls"] for r in main_rows])),
        "mean_iou": float(np.mean([r["iou"] for r in main_rows])),
        "wrong_class_iou": float(np.mean([r["wrong_class_iou"] for r in main_rows])),
        "attribute_right_visible_view": float(np.mean([r["attr_true"] == r["attr_sample"] for r in attr_rows])) if attr_rows else None,
        "attribute_right_hiding_view": float(np.mean([r["attr_true"] == r["attr_sample"] for r in hid_rows])) if hid_rows else None,
        "per_class_right": {c: float(np.mean([r["predicted_cls"] == c for r in main_rows if r["cls"] == c])) for c in classes},
        "per_class_iou": {c: float(np.mean([r["iou"] for r in main_rows if r["cls"] == c])) for c in classes},
        "steps": args.steps, "cfg": args.cfg, "seconds": time.time() - start,
    }
    return {"summary": summary, "rows": rows}


def load_critic(ckpt_path: Path):
    """A VLMCritic of train_critic.py's ckpt.pt, or of an exported critic (export_mini.py's
    critic_<role>.fp16.safetensors); and the facts of it (size, seed, step)."""
    from vlm3d_ttg.critic.vlm_critic import VLMCritic
    from vlm3d_ttg.miniworld.checkpoints import load_exported_critic
    from vlm3d_ttg.miniworld.critic_model import build_mini_critic

    if ckpt_path.suffix == ".safetensors":
        model, processor, state = load_exported_critic(ckpt_path)
    else:
        state = torch.load(ckpt_path, weights_only=False)
        model, processor = build_mini_critic(state["size"], state["seed"])
        model.load_state_dict(state["model"])
    return VLMCritic(model, processor, "a mug", "dual", max_cached_prompts=64), state


def evaluate_critic(args) -> dict:
    from vlm3d_ttg.miniworld.dataset import load_meta

    critic, state = load_critic(args.critic)
    worlds = [(args.data, args.views)] + [(Path(data), Path(views)) for data, views in args.extra_world]
    views, desc, cls, broken = [], [], [], []
    for data, views_dir in worlds:  # one pool of every world's held-out view sets, each with its own labels
        records = load_meta(data)
        index = np.load(views_dir / f"{args.split}_index.npz")
        views.append(np.load(views_dir / f"{args.split}_views.npy", mmap_mode="r"))
        desc += [records[r].description for r in index["shape_row"]]
        cls += [records[r].cls for r in index["shape_row"]]
        broken.append(index["broken"])
    views = views[0] if len(views) == 1 else np.concatenate(views)
    desc, cls, broken = np.asarray(desc), np.asarray(cls), np.concatenate(broken)
    rng = np.random.default_rng(1)
    per_description = {}
    start = time.time()
    for description in sorted(set(desc[broken == 0].tolist())):
        positives = np.nonzero((desc == description) & (broken == 0))[0]
        the_cls = cls[positives[0]]
        groups = {
            "yes": positives,
            "no_other_attribute": np.nonzero((cls == the_cls) & (desc != description) & (broken == 0))[0],
            "no_broken": np.nonzero((desc == description) & (broken == 1))[0],
            "no_other_class": rng.choice(np.nonzero(cls != the_cls)[0], len(positives), replace=False),
        }
        result = {}
        for name, ids in groups.items():
            if len(ids) == 0:
                continue
            rs = []
            for chunk in np.array_split(ids, max(1, len(ids) // 8)):
                with torch.no_grad():
                    images = torch.from_numpy(np.ascontiguousarray(views[chunk])).float() / 255.0
                    rs.append(critic(images, descriptions=[description] * len(chunk)).r.float().numpy())
            r = np.concatenate(rs)
            right = (r > 0) if name == "yes" else (r <= 0)
            result[name] = {"n": int(len(ids)), "accuracy": float(right.mean()), "mean_r": float(r.mean())}
        yes_acc = result["yes"]["accuracy"]
        no = [v for k, v in result.items() if k != "yes"]
        no_acc = float(np.sum([v["accuracy"] * v["n"] for v in no]) / np.sum([v["n"] for v in no]))
        result["balanced_accuracy"] = (yes_acc + no_acc) / 2.0
        per_description[description] = result
        logger.info("%s: %s", description, {k: (v["accuracy"] if isinstance(v, dict) else v) for k, v in result.items()})
    summary = {
        # A run started from an exported critic counts on from that critic's step.
        "critic_step": int(state["step"]) + int((state.get("init") or {}).get("step", 0)),
        "size": state["size"], "seed": int(state["seed"]), "split": args.split,
        "critic": str(args.critic), "worlds": [str(views) for _, views in worlds],
        "min_balanced_accuracy": float(min(v["balanced_accuracy"] for v in per_description.values())),
        "mean_balanced_accuracy": float(np.mean([v["balanced_accuracy"] for v in per_description.values()])),
        "seconds": time.time() - start,
    }
    return {"summary": summary, "per_description": per_description}


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
    dec.add_argument("--init", choices=["nearest", "mean"], default="nearest",
                     help="a validation code's fit starts from the training code that reproduces its samples best, or the mean code")
    dit = sub.add_parser("dit")
    dit.add_argument("--data", required=True, type=Path)
    dit.add_argument("--models", required=True, type=Path, help="cache folder for ensure_mini_models")
    dit.add_argument("--assets", type=Path, default=Path(__file__).resolve().parent.parent / "vlm3d_ttg" / "assets" / "mini")
    dit.add_argument("--out", required=True, type=Path)
    dit.add_argument("--split", default="test")
    dit.add_argument("--steps", type=int, default=30)
    dit.add_argument("--cfg", type=float, default=5.0)
    dit.add_argument("--refs-per-class", type=int, default=None, help="training shapes per class the class is read against (default: all)")
    crit = sub.add_parser("critic")
    crit.add_argument("--data", required=True, type=Path)
    crit.add_argument("--views", required=True, type=Path)
    crit.add_argument("--critic", required=True, type=Path,
                      help="train_critic.py's ckpt.pt, or an exported critic_<role>.fp16.safetensors")
    crit.add_argument("--out", required=True, type=Path)
    crit.add_argument("--split", default="test")
    crit.add_argument("--extra-world", nargs=2, action="append", default=[], metavar=("DATA", "VIEWS"),
                      help="also score another world's held-out view sets of --split (build_critic_data.py --data DATA "
                           "--splits val,test): more shapes, a finer estimate; repeatable")
    rule = sub.add_parser("class-rule")
    rule.add_argument("--data", required=True, type=Path)
    rule.add_argument("--out", required=True, type=Path)
    rule.add_argument("--split", default="val")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    if args.what == "decoder":
        _write(args.out, evaluate_decoder(args))
    elif args.what == "dit":
        _write(args.out, evaluate_dit(args))
    elif args.what == "class-rule":
        _write(args.out, evaluate_class_rule(args))
    else:
        _write(args.out, evaluate_critic(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
