"""Train the miniature ShapeVAE decoder as an auto-decoder (one learned latent code per training shape).

    nice -n 10 python training/train_decoder.py --data /work/mini-train/data --run /work/mini-train/decoder

Loss: BCE of occupancy + code L2, with ~5 % Gaussian noise on the codes (so nearby codes decode
to nearby shapes, which the DiT's imperfect samples need). Every code starts from one shared
template plus a little noise, so token j plays a similar role in every shape (canonically ordered
latents: the DiT need not learn a permutation per shape). Each code is in a batch only
batch/N of the steps, so codes get a learning rate 30x the decoder's. Resumable: `ckpt.pt` in --run is
rewritten every --ckpt-minutes; rerunning the command continues from it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from training_log import TrainingLog, add_run_arguments, save_atomic, start_run  # noqa: E402  (training/ is on sys.path when a script runs)

logger = logging.getLogger("train_decoder")


def build_vae(seed: int, width: int | None = None) -> torch.nn.Module:
    """hy3dgen's ShapeVAE at the mini config's sizes (`width`: the decoder's width; None = the config's)."""
    from hy3dgen.shapegen.pipelines import instantiate_from_config

    from vlm3d_ttg.miniworld.config import VAE_WIDTH, mini_shape_config

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return instantiate_from_config(mini_shape_config(vae_width=width or VAE_WIDTH)["vae"])


def checkpoint_width(state: dict) -> int:
    """The decoder width a train_decoder.py checkpoint was trained at (checkpoints before --width: the config's)."""
    from vlm3d_ttg.miniworld.config import VAE_WIDTH

    return int(state["args"].get("width") or VAE_WIDTH)


def template_codes(count: int, seed: int) -> torch.Tensor:
    """Initial codes: one shared template (L, C) for all shapes plus 10 % noise."""
    from vlm3d_ttg.miniworld.config import EMBED_DIM, NUM_LATENTS

    g = torch.Generator().manual_seed(seed + 1)
    template = torch.randn(NUM_LATENTS, EMBED_DIM, generator=g)
    return template.expand(count, -1, -1) + 0.1 * torch.randn(count, NUM_LATENTS, EMBED_DIM, generator=g)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--run", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--batch-shapes", type=int, default=16)
    parser.add_argument("--batch-points", type=int, default=2048)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--code-lr", type=float, default=3e-2)
    parser.add_argument("--code-l2", type=float, default=1e-4)
    parser.add_argument("--code-noise", type=float, default=0.05)
    parser.add_argument("--freeze-codes-from", type=int, default=None,
                        help="from this step on only the decoder learns: the codes (which the DiT is trained on) stay fixed")
    parser.add_argument("--width", type=int, default=None,
                        help="the decoder's width (default: vlm3d_ttg.miniworld.config.VAE_WIDTH); kept in the checkpoint")
    parser.add_argument("--limit-shapes", type=int, default=None, help="train on the first N shapes only (tests)")
    add_run_arguments(parser, log_every=50)
    args = parser.parse_args(argv)
    start_run(args)
    if not (args.data / "train_points.npy").is_file():
        print(f"error: {args.data}/train_points.npy is missing: run training/build_data.py --out {args.data} first",
              file=sys.stderr)
        return 2

    from vlm3d_ttg.miniworld.autodecoder import decode_logits, occupancy_loss
    from vlm3d_ttg.miniworld.config import VAE_WIDTH

    points = torch.from_numpy(np.load(args.data / "train_points.npy")).float()
    occ = torch.from_numpy(np.load(args.data / "train_occ.npy"))
    if args.limit_shapes:
        points, occ = points[: args.limit_shapes], occ[: args.limit_shapes]
    n_shapes = points.shape[0]
    args.run.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.run / "ckpt.pt"

    vae = build_vae(args.seed, args.width)
    codes = torch.nn.Parameter(template_codes(n_shapes, args.seed))
    optimizer = torch.optim.Adam([{"params": vae.parameters(), "lr": args.lr},
                                  {"params": [codes], "lr": args.code_lr}])
    step = 0
    history: list[dict] = []
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        if checkpoint_width(state) != (args.width or VAE_WIDTH):
            print(f"error: {ckpt_path} was trained at --width {checkpoint_width(state)}; resume it with that width "
                  f"or start a new --run", file=sys.stderr)
            return 2
        vae.load_state_dict(state["vae"])
        codes.data.copy_(state["codes"])
        optimizer.load_state_dict(state["optimizer"])
        step, history = state["step"], state["history"]
        logger.info("resumed at step %d", step)

    generator = torch.Generator().manual_seed(args.seed * 1000 + step)

    def checkpoint() -> None:
        save_atomic({"vae": vae.state_dict(), "codes": codes.detach(), "optimizer": optimizer.state_dict(),
                     "step": step, "history": history, "args": vars(args) | {"data": str(args.data), "run": str(args.run)}},
                    ckpt_path)

    log = TrainingLog(history, log_every=args.log_every, minutes=args.ckpt_minutes, checkpoint=checkpoint, logger=logger)

    while step < args.steps:
        for group, base in zip(optimizer.param_groups, (args.lr, args.code_lr)):
            group["lr"] = base * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / args.steps)))
        if args.freeze_codes_from is not None and step >= args.freeze_codes_from:
            optimizer.param_groups[1]["lr"] = 0.0  # Adam's step is lr-scaled: the codes stay bit-identical
        shape_idx = torch.randint(0, n_shapes, (min(args.batch_shapes, n_shapes),), generator=generator)
        point_idx = torch.randint(0, points.shape[1], (len(shape_idx), args.batch_points), generator=generator)
        pts = points[shape_idx.unsqueeze(1), point_idx]
        target = occ[shape_idx.unsqueeze(1), point_idx]
        batch_codes = codes[shape_idx]
        noisy = batch_codes + args.code_noise * batch_codes.detach().std() * torch.randn(batch_codes.shape, generator=generator)
        logits = decode_logits(vae, noisy, pts)
        bce = occupancy_loss(logits, target)
        loss = bce + args.code_l2 * batch_codes.pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        log.record(step, bce=float(bce), acc=float(((logits > 0) == target).float().mean()))
    log.finish(step, args.run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
