"""What should run on this node: the allocations the server sent, against the runners this
agent has, turned into a list of actions (pure; ``Agent.sync`` executes them in order).

For each allocation the server sent:

============================================  ==========================================
the allocation                                the action
============================================  ==========================================
desired ``stop``, a runner has it             ``Stop`` (drain after the watch's revision)
desired ``stop``, no runner, still active     ``ReportStopped`` (nothing runs it here)
desired ``run``, ``pending``, no runner,      ``Start``
its driver is here
desired ``run``, ``starting``/``running``,    ``ReportLost``: started by an earlier agent
no runner                                     process whose handle did not survive
============================================  ==========================================

then, for each runner: ``Forget`` it once it is done; ``StopUnknown`` when the server no
longer has its allocation. Anything else needs no action.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from elastin.model.cluster import Allocation

ACTIVE = ("pending", "starting", "running")


@dataclass(frozen=True)
class Start:
    alloc: Allocation


@dataclass(frozen=True)
class Stop:
    alloc_id: str
    drain_after: int  # the revision at which the server stopped it


@dataclass(frozen=True)
class ReportStopped:
    alloc_id: str
    reason: str


@dataclass(frozen=True)
class ReportLost:
    alloc_id: str
    reason: str = "lost track of the instance across an agent restart"


@dataclass(frozen=True)
class Forget:
    alloc_id: str


@dataclass(frozen=True)
class StopUnknown:
    alloc_id: str
    reason: str = "the server no longer has this allocation"


Action = Start | Stop | ReportStopped | ReportLost | Forget | StopUnknown


def reconcile(
    allocs: Sequence[Allocation],
    runners: Mapping[str, bool],
    drivers: Collection[str],
    index: int = 0,
) -> list[Action]:
    """``runners``: this agent's runners, allocation id -> whether it is done; ``drivers``:
    the kinds this node runs; ``index``: the revision of the allocations watched."""
    actions: list[Action] = []
    seen: set[str] = set()
    for a in allocs:
        seen.add(a.id)
        has_runner = a.id in runners
        if a.desired == "stop":
            if has_runner:
                actions.append(Stop(a.id, index))
            elif a.status in ACTIVE:
                actions.append(ReportStopped(a.id, a.reason or "stopped"))
        elif has_runner:
            continue
        elif a.kind in drivers and a.status == "pending":
            actions.append(Start(a))
        elif a.status in ("starting", "running"):
            actions.append(ReportLost(a.id))
    for alloc_id, done in runners.items():
        if done:
            actions.append(Forget(alloc_id))
        elif alloc_id not in seen:
            actions.append(StopUnknown(alloc_id))
    return actions
