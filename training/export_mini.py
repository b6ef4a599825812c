"""Write the trained miniature models into the package as fp16 safetensors with a sha256 manifest.

    python training/export_mini.py --decoder /work/mini-train/decoder/ckpt.pt --dit /work/mini-train/dit/ckpt.pt \
        --critic /work/mini-train/critic/ckpt.pt --judge /work/mini-train/judge/ckpt.pt \
        --data /work/mini-train/data --out vlm3d_ttg/assets/mini
    python training/export_mini.py --critic /work/mini-train/critic/ckpt.pt \
        --keep-from vlm3d_ttg/assets/mini --out vlm3d_ttg/assets/mini   # a new guide critic, the rest kept

`vlm3d_ttg.miniworld.checkpoints.ensure_mini_models` turns these into the hy3dgen and transformers
folders the loaders read.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
import yaml


#: Training shapes whose codes ship as probes (one per attribute class, and two plain ones).
PROBES = ("mug_000", "table_000", "chair_000", "rocket_000", "snowman_000", "torus_000")


def shape_state(decoder_ckpt: dict, dit_ckpt: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.yaml content, prefixed fp16 state dict) of the mini shape model."""
    from hy3dgen.shapegen.pipelines import instantiate_from_config

    from vlm3d_ttg.dinov2_names import to_checkpoint_names
    from vlm3d_ttg.miniworld.config import mini_shape_config

    from train_decoder import checkpoint_width

    config = mini_shape_config(float(dit_ckpt["scale_factor"]), vae_width=checkpoint_width(decoder_ckpt))
    dit = instantiate_from_config(config["model"])
    vae = instantiate_from_config(config["vae"])
    conditioner = instantiate_from_config(config["conditioner"])
    dit.load_state_dict(dit_ckpt["dit"])
    vae.load_state_dict(decoder_ckpt["vae"])
    conditioner.load_state_dict(dit_ckpt["conditioner"])
    state: dict[str, torch.Tensor] = {}
    for prefix, module in (("model", dit), ("vae", vae), ("conditioner", conditioner)):
        weights = to_checkpoint_names(module.state_dict()) if prefix == "conditioner" else module.state_dict()
        for key, value in weights.items():
            state[f"{prefix}.{key}"] = value.detach().to(torch.float16).contiguous()
    return config, state


SHAPE_FILES = ("shape_config.yaml", "shape.fp16.safetensors", "probes.safetensors")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decoder", type=Path, default=None, help="train_decoder.py's ckpt.pt (with --dit)")
    parser.add_argument("--dit", type=Path, default=None, help="train_dit.py's ckpt.pt, trained on that decoder's codes")
    parser.add_argument("--critic", type=Path, default=None, help="the guide critic's ckpt.pt (train_critic.py)")
    parser.add_argument("--judge", type=Path, default=None, help="the judge critic's ckpt.pt (omitted: none is shipped)")
    parser.add_argument("--keep-from", type=Path, default=None,
                        help="an earlier export (sha256-checked): each part not given is kept from it byte for byte "
                             "(the shape model without --decoder/--dit, a critic without --critic/--judge); may be --out")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--data", type=Path, default=None, help="the data folder the decoder was trained on (with --decoder)")
    parser.add_argument("--notes", type=Path, default=None, help="a JSON file of training facts to record in the manifest")
    args = parser.parse_args(argv)
    for name in ("decoder", "dit", "critic", "judge", "keep_from"):
        path = getattr(args, name)
        if path is not None and not path.exists():
            print(f"error: --{name.replace('_', '-')} {path} does not exist", file=sys.stderr)
            return 2
    if (args.decoder is None) != (args.dit is None):
        print("error: --decoder and --dit go together (the DiT is trained on the decoder's codes)", file=sys.stderr)
        return 2
    if args.keep_from is None and (args.decoder is None or args.critic is None):
        print("error: --decoder, --dit and --critic are needed (or --keep-from an earlier export for the parts not given)",
              file=sys.stderr)
        return 2
    if args.decoder is not None and args.data is None:
        print("error: --data is needed with --decoder (the probe codes are read by shape name)", file=sys.stderr)
        return 2

    from vlm3d_ttg.errors import Vlm3dError
    from vlm3d_ttg.miniworld.checkpoints import MANIFEST, read_manifest

    kept: dict = {"critics": {}, "notes": {}}
    if args.keep_from is not None:
        try:
            kept = read_manifest(args.keep_from)
        except Vlm3dError as exc:
            print(f"error: --keep-from {args.keep_from}: {exc}", file=sys.stderr)
            return 2

    try:
        files = _export(args, kept)
    except Exception as exc:  # noqa: BLE001 - reported with the promise that nothing changed
        print(f"error: {type(exc).__name__}: {exc}\nnothing was written: {args.out} is as it was", file=sys.stderr)
        return 1
    for name in files + [MANIFEST]:
        (args.out / name).chmod(0o644)  # the package ships them readable whatever the umask
    total = sum((args.out / name).stat().st_size for name in files)
    print(f"wrote {len(files)} files, {total / 1e6:.1f} MB, to {args.out}")
    return 0


def _export(args: argparse.Namespace, kept: dict) -> list[str]:
    """Write the export's files and manifest into `args.out`; the names of the files."""
    from safetensors.torch import save_file

    from vlm3d_ttg.io import OutputSet
    from vlm3d_ttg.miniworld.checkpoints import MANIFEST, sha256_file

    # Every file is staged beside its destination and the set commits as one unit, the manifest last:
    # a failure anywhere (an unreadable checkpoint, a full disk) leaves the earlier export as it was.
    staged: dict[str, Path] = {}  # file name -> where its bytes are now (staged, or kept in place)
    with OutputSet() as outputs:
        def keep(name: str) -> None:
            if args.keep_from.resolve() == args.out.resolve():
                staged[name] = args.out / name
            else:
                staged[name] = outputs.stage(args.out / name)
                shutil.copyfile(args.keep_from / name, staged[name])

        if args.decoder is not None:
            decoder = torch.load(args.decoder, weights_only=False)
            dit = torch.load(args.dit, weights_only=False)
            config, state = shape_state(decoder, dit)
            staged["shape_config.yaml"] = outputs.stage(args.out / "shape_config.yaml")
            staged["shape_config.yaml"].write_text(yaml.safe_dump(config, sort_keys=False))
            staged["shape.fp16.safetensors"] = outputs.stage(args.out / "shape.fp16.safetensors")
            save_file(state, str(staged["shape.fp16.safetensors"]), metadata={"format": "pt"})
            # Probe codes: a few training shapes' learned codes, so a test can check the shipped decoder
            # still reconstructs them (and a broken decoder fails).
            from vlm3d_ttg.miniworld.dataset import load_meta

            records = [r for r in load_meta(args.data) if r.split == "train"]
            probes = {}
            for name in PROBES:
                row = next(i for i, r in enumerate(records) if r.name == name)
                probes[name] = decoder["codes"][row].detach().float().contiguous()
            staged["probes.safetensors"] = outputs.stage(args.out / "probes.safetensors")
            save_file(probes, str(staged["probes.safetensors"]), metadata={"format": "pt"})
            training = {"decoder_step": int(decoder["step"]), "dit_step": int(dit["step"]),
                        "scale_factor": float(dit["scale_factor"])}
        else:
            for name in SHAPE_FILES:
                keep(name)
            training = kept["training"]
        critics = {}
        for role, path in (("guide", args.critic), ("judge", args.judge)):
            file = f"critic_{role}.fp16.safetensors"
            if path is None:
                if role in kept["critics"]:
                    keep(kept["critics"][role]["file"])
                    critics[role] = kept["critics"][role]
                continue
            ckpt = torch.load(path, weights_only=False)
            weights = {k: v.detach().to(torch.float16).contiguous() for k, v in ckpt["model"].items()}
            # Tied or shared tensors are stored once each (safetensors refuses aliases).
            staged[file] = outputs.stage(args.out / file)
            save_file({k: v.clone() for k, v in weights.items()}, str(staged[file]), metadata={"format": "pt"})
            # A run started from an exported critic (train_critic.py --init-from) counts on from its step.
            init = ckpt.get("init") or {}
            critics[role] = {"file": file, "size": ckpt["size"], "seed": int(ckpt["seed"]),
                             "step": int(ckpt["step"]) + int(init.get("step", 0))}
            if init:
                critics[role]["continued_from_step"] = int(init["step"])
        files = list(SHAPE_FILES) + [c["file"] for c in critics.values()]
        manifest = {
            "sha256": {name: sha256_file(staged[name]) for name in files},
            "critics": critics,
            "training": training,
            "notes": json.loads(args.notes.read_text()) if args.notes else kept["notes"],
        }
        outputs.write_text(args.out / MANIFEST, json.dumps(manifest, indent=1) + "\n", last=True)
    return files


if __name__ == "__main__":
    sys.exit(main())
