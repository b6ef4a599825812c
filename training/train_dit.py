"""Train the miniature Hunyuan3DDiT and its Dinov2 conditioner by flow matching on the decoder's latents.

    nice -n 10 python training/train_dit.py --data /work/mini-train/data \
        --decoder /work/mini-train/decoder/ckpt.pt --run /work/mini-train/dit

hy3dgen's σ convention: x_σ = (1 − σ)·noise + σ·data, σ ∈ [0, 1] (1 = data), the DiT gets t = σ and
predicts the velocity data − noise; data = code · scale_factor with scale_factor = 1 / std of the
training codes. The condition is the input renders after the pipeline's own ImageProcessorV2 (stored
by build_data.py), through the conditioner; 10 % of the rows get the zero (unconditional) embedding,
so classifier-free guidance works. Resumable from `ckpt.pt` in --run.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training_log import TrainingLog, add_run_arguments, save_atomic, start_run  # noqa: E402  (training/ is on sys.path when a script runs)

logger = logging.getLogger("train_dit")


def build_dit_and_conditioner(scale_factor: float, seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    from hy3dgen.shapegen.pipelines import instantiate_from_config

    from vlm3d_ttg.miniworld.config import mini_shape_config

    config = mini_shape_config(scale_factor)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dit = instantiate_from_config(config["model"])
        conditioner = instantiate_from_config(config["conditioner"])
    conditioner.requires_grad_(True)  # hy3dgen freezes its image encoder: here it is trained
    return dit, conditioner


def flow_matching_loss(dit, conditioner, data: torch.Tensor, images: torch.Tensor, generator: torch.Generator,
                       drop_prob: float = 0.1) -> torch.Tensor:
    """Flow-matching loss of a batch: data latents (B, L, C), processed images (B, 3, S, S) in [−1, 1]."""
    cond = conditioner(images)["main"]
    keep = (torch.rand(cond.shape[0], generator=generator) >= drop_prob).to(cond.dtype).view(-1, 1, 1)
    cond = cond * keep  # dropped rows: the zero embedding hy3dgen uses as the unconditional one
    noise = torch.randn(data.shape, generator=generator)
    sigma = torch.rand(data.shape[0], generator=generator)
    x = (1.0 - sigma.view(-1, 1, 1)) * noise + sigma.view(-1, 1, 1) * data
    velocity = dit(x, sigma, {"main": cond})
    return F.mse_loss(velocity, data - noise)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--decoder", required=True, type=Path, help="train_decoder.py's ckpt.pt (the codes)")
    parser.add_argument("--run", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=30000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--limit-shapes", type=int, default=None)
    add_run_arguments(parser, log_every=50)
    args = parser.parse_args(argv)
    start_run(args)
    for path, hint in ((args.decoder, "train_decoder.py"), (args.data / "train_inputs.npy", "build_data.py --stage inputs")):
        if not path.is_file():
            print(f"error: {path} is missing: run training/{hint} first", file=sys.stderr)
            return 2

    codes = torch.load(args.decoder, weights_only=False)["codes"].float()
    inputs = np.load(args.data / "train_inputs.npy", mmap_mode="r")
    if args.limit_shapes:
        codes, inputs = codes[: args.limit_shapes], inputs[: args.limit_shapes]
    if len(codes) != len(inputs):
        print(f"error: {len(codes)} codes but {len(inputs)} shapes of input renders: same data folder?", file=sys.stderr)
        return 2
    inputs = torch.from_numpy(np.array(inputs))  # a writable copy in memory
    args.run.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.run / "ckpt.pt"

    scale_factor = float(1.0 / codes.std())
    data = codes * scale_factor
    dit, conditioner = build_dit_and_conditioner(scale_factor, args.seed)
    params = list(dit.parameters()) + list(conditioner.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    step, history = 0, []
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        dit.load_state_dict(state["dit"])
        conditioner.load_state_dict(state["conditioner"])
        optimizer.load_state_dict(state["optimizer"])
        step, history = state["step"], state["history"]
        logger.info("resumed at step %d", step)

    def checkpoint() -> None:
        save_atomic({"dit": dit.state_dict(), "conditioner": conditioner.state_dict(), "optimizer": optimizer.state_dict(),
                     "step": step, "history": history, "scale_factor": scale_factor,
                     "args": vars(args) | {"data": str(args.data), "run": str(args.run), "decoder": str(args.decoder)}},
                    ckpt_path)

    log = TrainingLog(history, log_every=args.log_every, minutes=args.ckpt_minutes, checkpoint=checkpoint, logger=logger)

    generator = torch.Generator().manual_seed(args.seed * 1000 + step)
    dit.train()
    conditioner.train()
    while step < args.steps:
        warm = min(1.0, (step + 1) / min(300, max(1, args.steps // 10)))
        for group in optimizer.param_groups:
            group["lr"] = args.lr * warm * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / args.steps)))
        idx = torch.randint(0, len(data), (args.batch,), generator=generator)
        view = torch.randint(0, inputs.shape[1], (args.batch,), generator=generator)
        images = inputs[idx, view].float() / 255.0 * 2.0 - 1.0
        loss = flow_matching_loss(dit, conditioner, data[idx], images, generator)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        log.record(step, loss=float(loss))
    log.finish(step, args.run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
