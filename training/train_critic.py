"""Train a miniature Qwen2.5-VL critic on (4 views rendered as guidance renders them, question) → Yes / No.

    nice -n 10 python training/train_critic.py --data /work/mini-train/data \
        --views /work/mini-train/critic_data --run /work/mini-train/critic --size guide --seed 0
    (the judge: --run /work/mini-train/judge --size judge --seed 1)

The loss is the BCE of r = z_Yes − z_No computed by the project's own critic (`critic.VLMCritic`,
dual query: the same cached input_ids, 3-D positions and torch preprocessing guidance reads), so
what it learns is exactly what guidance differentiates. Each batch asks about one description:
half the view sets are Yes (an intact shape the description fits), half No — a shape of the same
class with the other attribute value, another class, or a broken variant of a fitting shape.
Resumable from `ckpt.pt` in --run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training_log import TrainingLog, add_run_arguments, save_atomic, start_run  # noqa: E402  (training/ is on sys.path when a script runs)

logger = logging.getLogger("train_critic")


#: Shares of the No view sets drawn from a sibling (same class, other attribute value), a broken
#: variant of a fitting shape, and another class.
DEFAULT_NEGATIVE_SHARES = (0.35, 0.30, 0.35)


def parse_negative_shares(text: str) -> tuple[float, float, float]:
    """'SIBLING,BROKEN,OTHER' shares of the No view sets (non-negative, summing to 1)."""
    try:
        shares = tuple(float(part) for part in text.split(","))
    except ValueError:
        shares = ()
    if len(shares) != 3 or min(shares) < 0 or abs(sum(shares) - 1.0) > 1e-6:
        raise argparse.ArgumentTypeError(f"{text!r}: give three non-negative shares that sum to 1, e.g. 0.35,0.30,0.35")
    return shares  # type: ignore[return-value]


class CriticBatches:
    """Balanced (views, description, label) batches drawn from the rendered view sets of one split."""

    def __init__(self, views: np.ndarray, shape_row: np.ndarray, broken: np.ndarray, descriptions: list[str],
                 classes: list[str], seed: int):
        self.views, self.broken = views, broken
        self.set_description = np.asarray([descriptions[r] for r in shape_row])
        self.set_class = np.asarray([classes[r] for r in shape_row])
        self.all_descriptions = sorted(set(self.set_description[broken == 0].tolist()))
        self.description_weights: np.ndarray | None = None  # None: every description equally often
        # How a No view set is chosen: the same class with the other attribute value, a broken variant
        # of a shape that fits, another class. A share whose pool is empty passes to the next kind.
        self.negative_shares = DEFAULT_NEGATIVE_SHARES
        self.rng = np.random.default_rng(seed)

    @classmethod
    def pooled(cls, parts: list["CriticBatches"], seed: int) -> "CriticBatches":
        """One pool of the view sets of several worlds' training splits; each later world describes its
        shapes with the first world's descriptions (all of them, or some: a world of a few classes adds
        shapes where the critic needs more)."""
        for part in parts[1:]:
            unknown = sorted(set(part.all_descriptions) - set(parts[0].all_descriptions))
            if unknown:
                raise ValueError(f"the worlds describe their shapes differently: {unknown} are not among {parts[0].all_descriptions}")
        # Each view set is its own row: it keeps the description and class its own world gave it.
        descriptions = np.concatenate([part.set_description for part in parts]).tolist()
        classes = np.concatenate([part.set_class for part in parts]).tolist()
        return cls(np.concatenate([np.asarray(part.views) for part in parts]), np.arange(len(descriptions)),
                   np.concatenate([part.broken for part in parts]), descriptions, classes, seed)

    def sample_named(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Intact view sets and the index of their description in `all_descriptions` (stage 1)."""
        intact = np.nonzero(self.broken == 0)[0]
        chosen = self.rng.choice(intact, batch)
        targets = torch.tensor([self.all_descriptions.index(d) for d in self.set_description[chosen]])
        return torch.from_numpy(self.views[chosen]).float() / 255.0, targets

    def sample(self, batch: int, mixed: bool = False) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        """Half Yes, half No view sets; one description for the batch, or (mixed) one per Yes/No pair.

        Mixed batches ask different questions side by side, so no feature of the question alone can
        lower the loss: only the match between question and views can.
        """
        if not mixed:
            return self._sample_one(batch, self._pick_description())
        pairs = [self._sample_one(2, self._pick_description()) for _ in range(batch // 2)]
        return (torch.cat([images for images, _, _ in pairs]), [d for _, ds, _ in pairs for d in ds],
                torch.cat([labels for _, _, labels in pairs]))

    def _pick_description(self) -> str:
        if self.description_weights is None:
            return self.all_descriptions[self.rng.integers(len(self.all_descriptions))]
        return self.all_descriptions[self.rng.choice(len(self.all_descriptions), p=self.description_weights)]

    def _sample_one(self, batch: int, description: str) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        rng = self.rng
        fits = np.nonzero((self.set_description == description) & (self.broken == 0))[0]
        cls = self.set_class[fits[0]]
        broken_fits = np.nonzero((self.set_description == description) & (self.broken == 1))[0]
        sibling = np.nonzero((self.set_class == cls) & (self.set_description != description) & (self.broken == 0))[0]
        other = np.nonzero(self.set_class != cls)[0]
        half = batch // 2
        chosen = list(rng.choice(fits, half))
        labels = [1.0] * half
        sibling_share, broken_share, _ = self.negative_shares
        for _ in range(batch - half):
            pick = rng.random()
            if pick < sibling_share and len(sibling):
                chosen.append(rng.choice(sibling))
            elif pick < sibling_share + broken_share and len(broken_fits):
                chosen.append(rng.choice(broken_fits))
            else:
                chosen.append(rng.choice(other))
            labels.append(0.0)
        images = torch.from_numpy(self.views[np.asarray(chosen)]).float() / 255.0
        return images, [description] * batch, torch.tensor(labels)


def load_split(data: Path, views_dir: Path, split: str, seed: int) -> CriticBatches:
    from vlm3d_ttg.miniworld.dataset import load_meta

    records = load_meta(data)
    index = np.load(views_dir / f"{split}_index.npz")
    views = np.load(views_dir / f"{split}_views.npy", mmap_mode="r")
    return CriticBatches(views, index["shape_row"], index["broken"], [r.description for r in records],
                         [r.cls for r in records], seed)


def focus_weights(evaluation: dict, descriptions: list[str], share: float = 0.5) -> np.ndarray:
    """How often each description is asked (sums to 1): `1 - share` spread evenly, `share` in proportion
    to the description's error (1 − balanced accuracy) in `evaluation`, an `evaluate_mini.py critic`
    result on the validation split.

    Raises ValueError for an evaluation of another split (training on test errors leaks the test) or
    one that does not cover every description.
    """
    split = evaluation.get("summary", {}).get("split")
    if split != "val":
        raise ValueError(f"the evaluation is of the {split or 'unnamed'} split: focus on validation errors only "
                         "(evaluate_mini.py critic --split val)")
    per = evaluation["per_description"]
    missing = [d for d in descriptions if d not in per]
    if missing:
        raise ValueError(f"the evaluation has no accuracy for {missing[:3]}")
    errors = np.asarray([1.0 - per[d]["balanced_accuracy"] for d in descriptions])
    even = np.full(len(descriptions), 1.0 / len(descriptions))
    if errors.sum() <= 0:
        return even
    return (1.0 - share) * even + share * errors / errors.sum()


def make_critic(model, processor, query: str = "dual"):
    from vlm3d_ttg.critic.vlm_critic import VLMCritic

    critic = VLMCritic(model, processor, "a mug", query, max_cached_prompts=64)
    model.requires_grad_(True)  # the critic freezes the model for guidance; here the weights learn
    return critic


#: Stage 1 (--name-steps): the critic names what it sees, one word per description, read at the
#: answer position through the output head (the class word; for the attribute-less variant of an
#: attribute class, the attribute's word). A signal the image alone carries — unlike Yes/No, whose
#: balanced labels cancel for any feature that ignores the description — so the vision tower and
#: the answer position learn to represent the shape before stage 2 asks about descriptions.
NAME_DESCRIPTION = "an object"


def name_word(description: str) -> str:
    """The word stage 1 teaches for a description ('a mug without a handle' → ' handle')."""
    negative = {"a mug without a handle": " handle", "a chair without a back": " back",
                "a rocket without fins": " fins", "a table with three legs": " three"}
    if description in negative:
        return negative[description]
    words = description.split()
    return " " + (words[1] if words[0] in ("a", "an") else words[0])


def name_logits(critic, images: torch.Tensor, word_ids: list[int]) -> torch.Tensor:
    """Logits (B, len(word_ids)) of the naming words at the answer position, the critic's own prompt path."""
    batch, views = images.shape[:2]
    prompt = critic.prompt_inputs(views, images.shape[-2], images.shape[-1], [NAME_DESCRIPTION] * batch, batch=batch)
    pixel_values, grid = critic.preprocess(images.reshape(-1, *images.shape[2:]))
    out = critic.model.model(input_ids=prompt.input_ids, attention_mask=prompt.attention_mask,
                             position_ids=prompt.position_ids, image_grid_thw=prompt.image_grid_thw,
                             pixel_values=pixel_values, use_cache=False)
    head = critic.model.get_output_embeddings().weight[word_ids]
    return out.last_hidden_state[:, -1] @ head.T


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--views", required=True, type=Path, help="build_critic_data.py's output folder")
    parser.add_argument("--extra-world", nargs=2, action="append", default=[], metavar=("DATA", "VIEWS"),
                        help="also train on the training view sets of another world (build_data.py --seed N --stage "
                             "geometry, then build_critic_data.py --splits train): more shapes, the same descriptions; repeatable")
    parser.add_argument("--run", required=True, type=Path)
    parser.add_argument("--size", default="guide", choices=["guide", "judge"])
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--name-steps", type=int, default=0,
                        help="stage 1: the first N steps teach the critic to name the shape (see NAME_DESCRIPTION)")
    parser.add_argument("--mixed-from", type=int, default=None,
                        help="from this step on, each batch mixes descriptions (one per Yes/No pair)")
    parser.add_argument("--name-every", type=int, default=0,
                        help="after stage 1, every Nth step is a naming step again (keeps what stage 1 taught)")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="start a new run from an exported critic (export_mini.py's critic_<role>.fp16.safetensors, "
                             "sha256-checked against its manifest) instead of seeded weights; a fresh optimizer and schedule")
    parser.add_argument("--focus-from", type=Path, default=None,
                        help="an evaluate_mini.py critic result on the validation split: descriptions are asked in "
                             "proportion to half even, half their validation error")
    parser.add_argument("--negative-shares", type=parse_negative_shares, default=DEFAULT_NEGATIVE_SHARES,
                        metavar="SIBLING,BROKEN,OTHER",
                        help="shares of the No view sets: same class with the other attribute value, broken variants "
                             "of fitting shapes, other classes (default %(default)s)")
    add_run_arguments(parser, log_every=25)
    args = parser.parse_args(argv)
    start_run(args)
    if not (args.views / "train_views.npy").is_file():
        print(f"error: {args.views}/train_views.npy is missing: run training/build_critic_data.py first", file=sys.stderr)
        return 2

    from vlm3d_ttg.miniworld.critic_model import build_mini_critic

    for data, views in args.extra_world:
        if not (Path(views) / "train_views.npy").is_file():
            print(f"error: {views}/train_views.npy is missing: run training/build_critic_data.py --data {data} --splits train",
                  file=sys.stderr)
            return 2
    batches = load_split(args.data, args.views, "train", args.seed)
    if args.extra_world:
        parts = [batches] + [load_split(Path(data), Path(views), "train", args.seed) for data, views in args.extra_world]
        try:
            batches = CriticBatches.pooled(parts, args.seed)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        logger.info("%d training view sets from %d worlds", len(batches.views), len(parts))
    batches.negative_shares = args.negative_shares
    if args.focus_from is not None:
        try:
            batches.description_weights = focus_weights(json.loads(args.focus_from.read_text()), batches.all_descriptions)
        except (OSError, ValueError, KeyError) as exc:
            print(f"error: --focus-from {args.focus_from}: {exc}", file=sys.stderr)
            return 2
        logger.info("description weights: %s", {d: round(float(w), 3) for d, w in
                                                 zip(batches.all_descriptions, batches.description_weights)})
    init = None
    if args.init_from is not None and not (args.run / "ckpt.pt").exists():
        from vlm3d_ttg.errors import Vlm3dError
        from vlm3d_ttg.miniworld.checkpoints import load_exported_critic

        try:
            model, processor, entry = load_exported_critic(args.init_from, args.size)
        except Vlm3dError as exc:
            print(f"error: --init-from {args.init_from}: {exc}", file=sys.stderr)
            return 2
        init = {"file": str(args.init_from), "sha256": entry["sha256"], "step": int(entry["step"])}
        logger.info("starting from %s (step %d)", args.init_from, init["step"])
    else:
        model, processor = build_mini_critic(args.size, args.seed)
    critic = make_critic(model, processor)
    descriptions_sorted = batches.all_descriptions
    word_ids = [processor.tokenizer.convert_tokens_to_ids(processor.tokenizer.tokenize(name_word(d))[0])
                for d in descriptions_sorted]
    if len(set(word_ids)) != len(word_ids):
        print("error: two descriptions share a naming word", file=sys.stderr)
        return 2
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    args.run.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.run / "ckpt.pt"
    step, history = 0, []
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, history, init = state["step"], state["history"], state.get("init")
        batches.rng = np.random.default_rng([args.seed, step])
        logger.info("resumed at step %d", step)

    def checkpoint() -> None:
        save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                     "history": history, "size": args.size, "seed": args.seed, "init": init,
                     "args": vars(args) | {"data": str(args.data), "views": str(args.views), "run": str(args.run)}},
                    ckpt_path)

    log = TrainingLog(history, log_every=args.log_every, minutes=args.ckpt_minutes, checkpoint=checkpoint, logger=logger)

    model.train()  # Qwen2.5-VL has no dropout: train() changes nothing but intent
    while step < args.steps:
        warm = min(1.0, (step + 1) / min(200, max(1, args.steps // 10)))
        for group in optimizer.param_groups:
            group["lr"] = args.lr * warm * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / args.steps)))
        naming = step < args.name_steps or (args.name_every > 0 and step % args.name_every == 0)
        if naming:
            images, targets = batches.sample_named(args.batch)
            logits = name_logits(critic, images, word_ids)
            loss = F.cross_entropy(logits, targets)
            r, labels = logits.argmax(dim=1).float(), targets.float()  # "acc" below: naming accuracy
        else:
            mixed = args.mixed_from is not None and step >= args.mixed_from
            images, descriptions, labels = batches.sample(args.batch, mixed=mixed)
            r = critic(images, descriptions=descriptions).r
            loss = F.binary_cross_entropy_with_logits(r, labels)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        right = (r.detach() == labels) if naming else ((r.detach() > 0).float() == labels)
        if naming and step > args.name_steps:
            log.record(step, name_loss=float(loss.detach()), name_acc=float(right.float().mean()))
        else:
            log.record(step, loss=float(loss.detach()), acc=float(right.float().mean()))
    log.finish(step, args.run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
