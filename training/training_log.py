"""What the three training scripts share: running means logged and kept in the history, and a
checkpoint every few minutes (so a job stopped at any moment loses minutes, not hours)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

class TrainingLog:
    """Running means of named values, logged and appended to `history` every `log_every` steps;
    `checkpoint()` called whenever `minutes` have passed since the last one."""

    def __init__(self, history: list[dict], *, log_every: int, minutes: float, checkpoint: Callable[[], None],
                 logger: logging.Logger):
        self.logger = logger
        self.history, self.log_every, self.minutes, self.checkpoint = history, log_every, minutes, checkpoint
        self.running: list[dict[str, float]] = []
        self.start = self.last_checkpoint = time.time()

    def record(self, step: int, **values: float) -> None:
        """Add this step's values; log their means at every `log_every`-th step; checkpoint when due."""
        self.running.append(values)
        if step % self.log_every == 0:
            names = dict.fromkeys(name for row in self.running for name in row)  # steps may log different values
            means = {name: float(np.mean([row[name] for row in self.running if name in row])) for name in names}
            elapsed = time.time() - self.start
            self.history.append({"step": step, **means, "seconds": elapsed})
            self.logger.info("step %d %s (%.2f s/step)", step, " ".join(f"{name} {value:.4f}" for name, value in means.items()),
                        elapsed / self.log_every)
            self.running.clear()
            self.start = time.time()
        if time.time() - self.last_checkpoint > self.minutes * 60:
            self.checkpoint()
            self.last_checkpoint = time.time()

    def finish(self, step: int, run: Path) -> None:
        """The last checkpoint and the history as `run/history.json`."""
        self.checkpoint()
        (run / "history.json").write_text(json.dumps(self.history))
        self.logger.info("done at step %d", step)


def save_atomic(state: dict, path: Path) -> None:
    """`torch.save` to a temporary file, then rename: a job stopped mid-write keeps its last checkpoint."""
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def add_run_arguments(parser: argparse.ArgumentParser, *, log_every: int) -> None:
    """The options every training script has: checkpoint interval, log interval, seed, threads."""
    parser.add_argument("--ckpt-minutes", type=float, default=3.0)
    parser.add_argument("--log-every", type=int, default=log_every)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)


def start_run(args: argparse.Namespace) -> None:
    """Log lines with their time, and the CPU threads asked for (training shares the machine)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
