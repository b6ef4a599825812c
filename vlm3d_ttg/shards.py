"""Work split over processes the way `accelerate launch` starts them: one process per GPU (or several on
a CPU), each taking its share of the pending items. The quality benchmark and `vlm3d-ttg batch` both
split their work here.

Without `accelerate launch` (no RANK/WORLD_SIZE/LOCAL_RANK in the environment) there is one process
and it takes everything; the barriers cost nothing then.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable, TypeVar

Item = TypeVar("Item")

#: How long a process waits at a barrier for the others (the slowest process's share of the work).
BARRIER_TIMEOUT_HOURS = 72.0


def process_state(*, cpu: bool, barrier_timeout_hours: float = BARRIER_TIMEOUT_HOURS) -> Any:
    """accelerate's `PartialState` for this process (rank, process count, device, barriers); `cpu`: the
    processes run on the CPU (gloo barriers) even where a GPU is visible."""
    from accelerate import PartialState

    return PartialState(cpu=cpu, timeout=datetime.timedelta(hours=barrier_timeout_hours))


def split_pending(state: Any, list_pending: Callable[[], list[Item]]) -> tuple[list[Item], list[Item]]:
    """This process's share of the pending items, and all of them: every process lists them between two
    barriers (so all see the same list: nobody has finished an item yet), then takes its contiguous part
    (accelerate's `split_between_processes`: the first processes take one more when it does not divide)."""
    state.wait_for_everyone()
    pending = list(list_pending())
    state.wait_for_everyone()  # nobody finishes an item before everyone has listed the pending ones
    with state.split_between_processes(pending) as mine:
        mine = list(mine)
    return mine, pending


__all__ = ["BARRIER_TIMEOUT_HOURS", "process_state", "split_pending"]
