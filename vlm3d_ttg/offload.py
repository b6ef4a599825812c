"""Keeping idle models in CPU memory on a GPU run: one phase's models on the device at a time.

A guided run has three heavy models that never compute at the same time: the conditioner
(once, at the start), the DiT (every step) and the critic (at guided steps). `IdleOffload`
moves the models of the phase about to run onto the compute device and the others to the CPU,
counts the seconds spent copying, and puts every model back where it found it on `restore()`
(the sampler calls it in a `finally`).

Written by hand rather than with accelerate's offload hooks because the phases are explicit in
the loop (hooks would move the DiT back at its next forward, which is what we want, but would
also move it during the critic's backward in `grad_mode="xt"`, where the DiT's graph must stay
on the device). That is also why offloading refuses `grad_mode="xt"`: the DiT's autograd graph
holds device copies of its weights until the critic's backward has run, so moving the DiT would
free nothing.
"""

from __future__ import annotations

import logging
import time
from typing import Iterable

import torch

logger = logging.getLogger(__name__)


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); CPU for a module with neither."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


class IdleOffload:
    """Phase-by-phase placement of models: `activate(phase)` brings that phase's models to `device`.

    `phases` maps a phase name to the modules it runs; a module may appear in one phase only.
    With `enabled=False` (CPU runs, or offloading not asked for) every call is a no-op, so the
    sampler has one code path.
    """

    def __init__(
        self,
        phases: dict[str, Iterable[torch.nn.Module | None]],
        device: torch.device | str,
        *,
        offload_device: torch.device | str = "cpu",
        enabled: bool = True,
    ):
        self.phases = {name: [m for m in modules if m is not None] for name, modules in phases.items()}
        seen: set[int] = set()
        for modules in self.phases.values():
            for module in modules:
                if id(module) in seen:
                    raise ValueError("A module may belong to one offload phase only.")
                seen.add(id(module))
        self.device = torch.device(device)
        self.offload_device = torch.device(offload_device)
        self.enabled = enabled
        self.active: str | None = None
        self.seconds = 0.0  # all host<->device copies so far
        self.moves = 0
        self._home = {id(m): module_device(m) for modules in self.phases.values() for m in modules}

    def activate(self, phase: str) -> float:
        """Put `phase`'s models on the device and every other phase's on the offload device; returns
        the seconds this switch spent copying (0 when already in place or disabled)."""
        if phase not in self.phases:
            raise KeyError(f"unknown offload phase {phase!r}; known: {sorted(self.phases)}")
        if not self.enabled or phase == self.active:
            return 0.0
        tic = time.perf_counter()
        for name, modules in self.phases.items():
            if name != phase:
                self._move(modules, self.offload_device)
        self._move(self.phases[phase], self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.active = phase
        seconds = time.perf_counter() - tic
        self.seconds += seconds
        return seconds

    def restore(self) -> None:
        """Every model back on the device it was on when this object was made."""
        if not self.enabled:
            return
        for modules in self.phases.values():
            for module in modules:
                home = self._home[id(module)]
                if module_device(module) != home:
                    module.to(home)
                    self.moves += 1
        self.active = None

    def placement(self) -> dict[str, list[torch.device]]:
        """Where each phase's models are now (for tests and logs)."""
        return {name: [module_device(m) for m in modules] for name, modules in self.phases.items()}

    def _move(self, modules: list[torch.nn.Module], device: torch.device) -> None:
        for module in modules:
            if module_device(module) != device:
                module.to(device)
                self.moves += 1
