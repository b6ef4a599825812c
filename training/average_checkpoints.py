"""Average the weights of several snapshots of one critic run (Polyak averaging of the schedule's tail).

    python training/average_checkpoints.py /work/mini-train/critic/snap_6000.pt /work/mini-train/critic/snap_6500.pt \
        /work/mini-train/critic/snap_7000.pt --out /work/mini-train/critic/averaged.pt

Snapshots near the end of a cosine schedule sit around one minimum; their mean usually generalises at
least as well as any one of them and is less noisy. The result is a `train_critic.py` checkpoint (no
optimizer state) that `evaluate_mini.py critic` and `export_mini.py` read; it keeps the latest step
and lists the averaged steps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from training_log import save_atomic  # noqa: E402  (training/ is on sys.path when a script runs)


def average_states(states: list[dict]) -> dict:
    """One checkpoint whose weights are the element-wise mean of `states`' (train_critic.py checkpoints of
    the same model); its step is the latest and `averaged_steps` lists them all.

    Raises ValueError when the checkpoints are of different models (size, seed, start or weight names).
    """
    first = states[0]
    for state in states[1:]:
        for key in ("size", "seed"):
            if state[key] != first[key]:
                raise ValueError(f"the checkpoints differ in {key}: {first[key]!r} vs {state[key]!r}")
        if (state.get("init") or {}).get("sha256") != (first.get("init") or {}).get("sha256"):
            raise ValueError("the checkpoints were started from different critics (--init-from)")
        if state["model"].keys() != first["model"].keys():
            raise ValueError("the checkpoints hold different weights")
    model = {name: torch.stack([s["model"][name].float() for s in states]).mean(dim=0).to(first["model"][name].dtype)
             for name in first["model"]}
    latest = max(states, key=lambda s: s["step"])
    return {key: value for key, value in latest.items() if key not in ("model", "optimizer")} | {
        "model": model, "averaged_steps": sorted(int(s["step"]) for s in states)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path, help="train_critic.py checkpoints of one run")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    missing = [str(path) for path in args.checkpoints if not path.is_file()]
    if missing:
        print(f"error: no such checkpoint: {', '.join(missing)}", file=sys.stderr)
        return 2
    if len(args.checkpoints) < 2:
        print("error: give two checkpoints or more to average", file=sys.stderr)
        return 2
    try:
        averaged = average_states([torch.load(path, weights_only=False) for path in args.checkpoints])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    save_atomic(averaged, args.out)
    print(f"averaged steps {averaged['averaged_steps']} into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
